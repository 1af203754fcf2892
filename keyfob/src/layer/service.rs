//! [`SessionService`]: reads the session cookie and hands the request a
//! [`Session`], not yet loaded.

use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
};

use http::{Request, Response};
use tower_service::Service;

use crate::{
    cookie::Presented,
    id::SessionId,
    session::{Incoming, Session, Shared},
};

use super::future::ResponseFuture;

/// The service made by [`SessionLayer`](crate::SessionLayer).
#[derive(Clone)]
pub struct SessionService<S> {
    pub(super) inner: S,
    pub(super) shared: Arc<Shared>,
}

impl<S: fmt::Debug> fmt::Debug for SessionService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for SessionService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: From<&'static str>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let incoming = match self.shared.cookie.read(req.headers()) {
            Presented::None => Incoming::None,
            Presented::Value(value) => incoming(&self.shared, value),
            Presented::Invalid(reason) => {
                tracing::info!(
                    event = "session.malformed",
                    reason,
                    "keyfob: session cookie refused"
                );
                Incoming::None
            }
        };
        #[cfg(feature = "auth")]
        let hints = crate::auth::client::Hints::capture(
            self.shared.client_ip.as_ref(),
            req.headers(),
            req.extensions(),
        );
        #[cfg(not(feature = "auth"))]
        let hints = ();
        let session = Session::with_hints(self.shared.clone(), incoming, hints);
        req.extensions_mut().insert(session.clone());
        // No path or cookie in the span: either may carry what logs must not.
        let span = tracing::debug_span!("keyfob.session", method = %req.method());
        ResponseFuture::new(self.inner.call(req), session, span)
    }
}

/// What a session cookie value means under this layer's settings; anything
/// that does not fit is no session.
fn incoming(shared: &Shared, value: &[u8]) -> Incoming {
    #[cfg(feature = "cookie-store")]
    if shared.client.is_some() {
        return match std::str::from_utf8(value) {
            Ok(v) => Incoming::Sealed(v.into()),
            Err(_) => Incoming::None,
        };
    }
    if shared.legacy_ids {
        if let Some(handle) = crate::id::legacy_handle(value) {
            return Incoming::Legacy(handle);
        }
    }
    let (id, stale) = match &shared.signed_ids {
        Some(keys) => match keys.open_id(&shared.cookie.name, value) {
            Some((id, stale)) => (SessionId::parse(id), stale),
            None => {
                tracing::warn!(
                    event = "session.tampered",
                    "keyfob: session ID with a bad signature refused (forged, tampered or from another key)"
                );
                return Incoming::None;
            }
        },
        None => (SessionId::parse(value), false),
    };
    match id {
        Some(id) => Incoming::Id { id, stale },
        None => {
            tracing::info!(
                event = "session.malformed",
                reason = "malformed session cookie",
                "keyfob: session cookie refused"
            );
            Incoming::None
        }
    }
}
