//! The services: [`Csrf`] (public) wraps tower-http's origin check around
//! keyfob's stricter origin rule and the token check (`Check`, private).

use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{
    header::{CONTENT_TYPE, HOST, ORIGIN},
    request::Parts,
    Method, Request, Response, StatusCode, Uri,
};
use http_body::Body;
use http_body_util::{BodyExt, Limited};
use tower_service::Service;

use super::{future::ResponseFuture, token, Reason, Refusal, TOKEN_FIELD, TOKEN_HEADER};
use crate::{session::Session, store::BoxFuture};

/// A request predicate for exemptions.
pub(super) type Predicate = dyn Fn(&Method, &Uri) -> bool + Send + Sync + 'static;

/// What both stages share.
pub(super) struct Config {
    pub(super) trusted: Vec<String>,
    pub(super) token: bool,
    pub(super) exempt_prefixes: Vec<String>,
    pub(super) exempt_if: Option<Arc<Predicate>>,
    pub(super) form_limit: usize,
    pub(super) body: Bytes,
}

impl Config {
    pub(super) fn is_exempt(&self, method: &Method, uri: &Uri) -> bool {
        let path = uri.path();
        self.exempt_prefixes.iter().any(|p| prefix_matches(p, path))
            || self.exempt_if.as_ref().is_some_and(|f| f(method, uri))
    }

    /// The refusal, logged with its reason and the route; never with a token.
    pub(super) fn refuse<B: From<Bytes>>(
        &self,
        reason: Reason,
        req: Option<&Parts>,
    ) -> Response<B> {
        log_refusal(reason, req.map(|p| (&p.method, p.uri.path())));
        self.refusal(reason)
    }

    /// The refusal response, not logged (the caller logs it).
    pub(super) fn refusal<B: From<Bytes>>(&self, reason: Reason) -> Response<B> {
        let mut res = Response::new(B::from(self.body.clone()));
        *res.status_mut() = StatusCode::FORBIDDEN;
        res.headers_mut().insert(
            CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        res.extensions_mut().insert(Refusal { reason });
        res
    }
}

pub(super) fn log_refusal(reason: Reason, route: Option<(&Method, &str)>) {
    metrics::counter!("keyfob_csrf_refused_total", "reason" => reason.as_str()).increment(1);
    tracing::info!(
        event = "csrf.refused",
        reason = reason.as_str(),
        method = route.map(|r| r.0.as_str()),
        path = route.map(|r| r.1),
        "keyfob: CSRF check refused the request"
    );
}

/// `/api` matches `/api` and `/api/x`, never `/apix`.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || prefix.ends_with('/') || rest.starts_with('/'),
        None => false,
    }
}

/// GET, HEAD and OPTIONS pass, as in tower-http and Go; every other method is checked.
pub(super) fn is_checked(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The rule tower-http does not enforce: when `Origin` is present it must
/// be the request's own origin (host and port, and scheme when the request
/// says which) or a trusted one, even if `Sec-Fetch-Site` says `same-origin`.
fn check_origin(parts: &Parts, trusted: &[String]) -> Result<(), Reason> {
    let mut values = parts.headers.get_all(ORIGIN).iter();
    let Some(origin) = values.next() else {
        return Ok(());
    };
    if values.next().is_some() {
        return Err(Reason::OriginMismatch);
    }
    let origin = origin.as_bytes();
    if origin.is_empty() {
        return Ok(());
    }
    if trusted.iter().any(|t| t.as_bytes() == origin) {
        return Ok(());
    }
    if origin == b"null" {
        return Err(Reason::OriginNull);
    }
    let Ok(uri) = Uri::try_from(origin) else {
        return Err(Reason::OriginMismatch);
    };
    let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"))
        && parts
            .uri
            .scheme_str()
            .is_none_or(|own| Some(own) == uri.scheme_str());
    // An origin is scheme://host[:port]; anything after it is not a browser's Origin.
    let bare = uri.query().is_none() && matches!(uri.path(), "" | "/") && !origin.ends_with(b"/");
    let own_host = parts
        .uri
        .authority()
        .map(|a| a.as_str().as_bytes())
        .or_else(|| parts.headers.get(HOST).map(|h| h.as_bytes()));
    let host_ok = own_host.is_some() && uri.authority().map(|a| a.as_str().as_bytes()) == own_host;
    if scheme_ok && bare && host_ok {
        Ok(())
    } else {
        Err(Reason::OriginMismatch)
    }
}

fn is_form(parts: &Parts) -> bool {
    parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| {
            m.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
}

/// The token from the header, or `Err(None)` to look in the body.
fn header_token(parts: &Parts) -> Result<Option<Vec<u8>>, Reason> {
    let mut values = parts.headers.get_all(TOKEN_HEADER).iter();
    match (values.next(), values.next()) {
        (None, _) => Ok(None),
        (Some(v), None) => Ok(Some(v.as_bytes().to_vec())),
        (Some(_), Some(_)) => Err(Reason::TokenMalformed),
    }
}

fn form_token(body: &[u8]) -> Result<Vec<u8>, Reason> {
    let mut found = None;
    for (k, v) in form_urlencoded::parse(body) {
        if k == TOKEN_FIELD {
            if found.is_some() {
                return Err(Reason::TokenMalformed);
            }
            found = Some(v.into_owned().into_bytes());
        }
    }
    found.ok_or(Reason::TokenMissing)
}

/// The inner stage: keyfob's origin rule, then the token.
pub(super) struct Check<S> {
    pub(super) inner: S,
    pub(super) config: Arc<Config>,
}

impl<S: Clone> Clone for Check<S> {
    fn clone(&self) -> Self {
        Check {
            inner: self.inner.clone(),
            config: self.config.clone(),
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Check<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Body<Data = Bytes> + From<Bytes> + Send + 'static,
    ReqBody::Error: Into<BoxError>,
    ResBody: From<Bytes> + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response<ResBody>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        // Call the instance that was driven to readiness; keep a fresh clone.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let config = self.config.clone();
        if !is_checked(req.method()) || config.is_exempt(req.method(), req.uri()) {
            return Box::pin(inner.call(req));
        }
        let (parts, body) = req.into_parts();
        if let Err(reason) = check_origin(&parts, &config.trusted) {
            return Box::pin(async move { Ok(config.refuse(reason, Some(&parts))) });
        }
        if !config.token {
            return Box::pin(inner.call(Request::from_parts(parts, body)));
        }
        Box::pin(async move {
            let Some(session) = parts.extensions.get::<Session>().cloned() else {
                tracing::error!(
                    "keyfob: CsrfLayer found no session. Is `SessionLayer` installed outside it?"
                );
                return Ok(config.refuse(Reason::NoSession, Some(&parts)));
            };
            let (presented, body) = match header_token(&parts) {
                Err(reason) => return Ok(config.refuse(reason, Some(&parts))),
                Ok(Some(t)) => (Ok(t), body),
                Ok(None) if is_form(&parts) => {
                    match Limited::new(body, config.form_limit).collect().await {
                        Ok(collected) => {
                            let bytes = collected.to_bytes();
                            (form_token(&bytes), ReqBody::from(bytes))
                        }
                        Err(err) => {
                            let reason = if err
                                .downcast_ref::<http_body_util::LengthLimitError>()
                                .is_some()
                            {
                                Reason::BodyTooLarge
                            } else {
                                Reason::BodyUnreadable
                            };
                            return Ok(config.refuse(reason, Some(&parts)));
                        }
                    }
                }
                Ok(None) => (Err(Reason::TokenMissing), body),
            };
            let presented = match presented {
                Ok(t) => t,
                Err(reason) => return Ok(config.refuse(reason, Some(&parts))),
            };
            let secret = match token::secret(&session).await {
                Ok(Some(s)) => s,
                Ok(None) => return Ok(config.refuse(Reason::NoSecret, Some(&parts))),
                Err(err) => {
                    tracing::error!(error = %err, "keyfob: CSRF check could not load the session");
                    return Ok(store_error(&err));
                }
            };
            if let Err(reason) = token::verify(&presented, &secret) {
                return Ok(config.refuse(reason, Some(&parts)));
            }
            inner.call(Request::from_parts(parts, body)).await
        })
    }
}

/// Builds keyfob's refusal for what tower-http's stage refuses.
#[derive(Clone)]
pub(super) struct Reject(pub(super) Arc<Config>);

impl<B: From<Bytes>> tower_http::csrf::ResponseForProtectionError<B> for Reject {
    fn response_for_protection_error(
        &mut self,
        error: tower_http::csrf::ProtectionError,
    ) -> Response<B> {
        let reason = match error.kind() {
            tower_http::csrf::ProtectionErrorKind::CrossOriginRequest => Reason::CrossSite,
            _ => Reason::OriginMismatch,
        };
        // Logged by `ResponseFuture`, which knows the route.
        self.0.refusal(reason)
    }
}

fn store_error<B: From<Bytes>>(err: &crate::Error) -> Response<B> {
    let res: Response<Bytes> = crate::error::error_response(err);
    let (parts, body) = res.into_parts();
    Response::from_parts(parts, B::from(body))
}

/// The service made by [`CsrfLayer`](super::CsrfLayer): tower-http's origin
/// check around keyfob's origin rule and token check.
///
/// ```
/// use keyfob::csrf::{Csrf, CsrfLayer};
/// use tower_layer::Layer;
///
/// let service: Csrf<_> = CsrfLayer::new().layer(tower::service_fn(|_req: http::Request<axum::body::Body>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(axum::body::Body::empty()))
/// }));
/// # let _ = service;
/// ```
pub struct Csrf<S> {
    pub(super) inner: tower_http::csrf::Csrf<Check<S>, Reject>,
}

impl<S: Clone> Clone for Csrf<S> {
    fn clone(&self) -> Self {
        Csrf {
            inner: self.inner.clone(),
        }
    }
}

impl<S> fmt::Debug for Csrf<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Csrf").finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Csrf<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Body<Data = Bytes> + From<Bytes> + Send + 'static,
    ReqBody::Error: Into<BoxError>,
    ResBody: From<Bytes> + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        // Only tower-http's refusals are logged by the future; keep the route for them.
        let route = is_checked(req.method())
            .then(|| (req.method().clone(), Box::<str>::from(req.uri().path())));
        ResponseFuture {
            inner: self.inner.call(req),
            route,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exempt_prefixes_match_whole_segments() {
        assert!(prefix_matches("/hooks", "/hooks"));
        assert!(prefix_matches("/hooks", "/hooks/github"));
        assert!(!prefix_matches("/hooks", "/hooksevil"));
        assert!(prefix_matches("/hooks/", "/hooks/x"));
        assert!(!prefix_matches("/hooks", "/"));
    }
}
