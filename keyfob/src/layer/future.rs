//! [`ResponseFuture`]: after the handler, commits the session and writes
//! the cookie the engine decided on.

use std::{
    future::Future,
    pin::Pin,
    task::{ready, Context, Poll},
};

use http::{
    header::{CACHE_CONTROL, SET_COOKIE, VARY},
    HeaderValue, Response,
};
use pin_project_lite::pin_project;

use crate::{
    error::{error_response, Error, Result},
    session::{CookieOut, Session, Shared},
    store::BoxFuture,
};

pin_project! {
    /// The response future of [`SessionService`].
    pub struct ResponseFuture<F, B> {
        #[pin]
        state: State<F, B>,
        // The request's `keyfob.session` span, entered on every poll so the
        // store calls of the handler and of the commit nest under it.
        span: tracing::Span,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B> {
        Inner { #[pin] fut: F, session: Option<Session> },
        Finishing {
            fut: BoxFuture<'static, Result<CookieOut>>,
            response: Option<Response<B>>,
            session: Session,
        },
    }
}

impl<F, B> ResponseFuture<F, B> {
    /// The future of a request whose handler runs as `fut` with `session`.
    pub(super) fn new(fut: F, session: Session, span: tracing::Span) -> Self {
        ResponseFuture {
            state: State::Inner {
                fut,
                session: Some(session),
            },
            span,
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: From<&'static str>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let _entered = this.span.enter();
        loop {
            match this.state.as_mut().project() {
                StateProj::Inner { fut, session } => {
                    let response = ready!(fut.poll(cx))?;
                    let Some(session) = session.take() else {
                        return Poll::Ready(Ok(response));
                    };
                    if !session.was_accessed() {
                        return Poll::Ready(Ok(response));
                    }
                    let server_error = response.status().is_server_error();
                    let s = session.clone();
                    let fut: BoxFuture<'static, Result<CookieOut>> =
                        Box::pin(async move { s.finish(server_error).await });
                    this.state.set(State::Finishing {
                        fut,
                        response: Some(response),
                        session,
                    });
                }
                StateProj::Finishing {
                    fut,
                    response,
                    session,
                } => {
                    if response.is_none() {
                        // Polled after completion (a caller bug): answer with an
                        // error rather than poll a finished future and panic.
                        return Poll::Ready(Ok(error_response(&Error::store_msg(
                            "response future polled after completion",
                        ))));
                    }
                    let out = ready!(fut.as_mut().poll(cx));
                    let Some(response) = response.take() else {
                        return Poll::Ready(Ok(error_response(&Error::store_msg(
                            "response future polled after completion",
                        ))));
                    };
                    return Poll::Ready(Ok(match out {
                        Ok(out) => apply_cookie(response, out, session.shared()),
                        Err(err) => {
                            tracing::error!(error = %err, "keyfob: saving the session failed");
                            error_response(&err)
                        }
                    }));
                }
            }
        }
    }
}

fn apply_cookie<B: From<&'static str>>(
    mut response: Response<B>,
    out: CookieOut,
    shared: &Shared,
) -> Response<B> {
    let cookie = &shared.cookie;
    let value = match out {
        CookieOut::Keep => None,
        CookieOut::Set { id, max_age } => match &shared.signed_ids {
            Some(keys) => match keys.tag_id(&cookie.name, &id.encode()) {
                Ok(value) => Some(cookie.set_cookie(&value, max_age)),
                Err(err) => return error_response(&err),
            },
            None => {
                let mut buf = [0; crate::id::ENCODED_LEN];
                Some(match id.encode_into(&mut buf) {
                    Some(value) => cookie.set_cookie(value, max_age),
                    None => cookie.set_cookie(&id.encode(), max_age),
                })
            }
        },
        #[cfg(feature = "cookie-store")]
        CookieOut::Sealed { value, max_age } => Some(cookie.set_cookie(&value, max_age)),
        CookieOut::Remove => Some(cookie.removal()),
    };
    let headers = response.headers_mut();
    add_vary_cookie(headers);
    if let Some(value) = value {
        headers.append(SET_COOKIE, value);
        if !headers.contains_key(CACHE_CONTROL) {
            headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        }
    }
    response
}

fn add_vary_cookie(headers: &mut http::HeaderMap) {
    let already = headers.get_all(VARY).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',')
                .any(|p| p.trim().eq_ignore_ascii_case("cookie") || p.trim() == "*")
        })
    });
    if !already {
        headers.append(VARY, HeaderValue::from_static("Cookie"));
    }
}
