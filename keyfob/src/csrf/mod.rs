//! Cross-site request forgery protection: an origin check and a
//! session-bound token, on every state-changing request.
//!
//! Rules, for every method but `GET`, `HEAD` and `OPTIONS`, unless the route
//! is exempted ([`CsrfLayerBuilder::exempt_path_prefix`],
//! [`CsrfLayerBuilder::exempt_if`]):
//!
//! 1. **Origin check.** The first stage is tower-http's
//!    [`csrf`](tower_http::csrf) middleware (its port of Go 1.25's
//!    `CrossOriginProtection`), used as is: `Sec-Fetch-Site: cross-site` or
//!    `same-site` is refused unless `Origin` is a trusted origin; without
//!    `Sec-Fetch-Site`, an `Origin` whose host and port differ from `Host`
//!    is refused (`null` too); a request with neither header (a non-browser
//!    client) passes. keyfob then adds what the Go algorithm leaves out: an
//!    `Origin`, when present, must be the request's own origin or a trusted
//!    one *even when* `Sec-Fetch-Site` says `same-origin`, its scheme must
//!    match when the request names its scheme (HTTP/2, absolute-form), and
//!    it must be a bare `scheme://host[:port]`.
//! 2. **Token.** A secret of 32 random bytes lives in the session (minted on
//!    first use by [`CsrfToken`] or [`token`]). Pages get it *masked*: a
//!    fresh random mask per call, `mask || (mask XOR secret)`, base64url,
//!    so a compressed response never repeats it (BREACH). The request must
//!    send one back in the `x-csrf-token` header or the `csrf_token` field
//!    of an `application/x-www-form-urlencoded` body (read up to a limit,
//!    then handed on to the handler byte for byte). It is unmasked and
//!    compared with the secret in constant time. A missing, malformed,
//!    duplicated or wrong token, another session's token, or a token minted
//!    before [`login`](crate::auth::login) (which drops the secret) is refused.
//!
//! Refusals are `403` with the body `CSRF check failed` (see
//! [`CsrfLayerBuilder::with_rejection_body`]), carry a [`Refusal`] in the
//! response extensions, and are logged (`event = "csrf.refused"`) with the
//! [`Reason`], never with a token.
//!
//! Caveats:
//! - the origin check trusts the `Host` that reaches the app: behind a proxy
//!   that rewrites `Host`, add the public origin with
//!   [`CsrfLayerBuilder::with_trusted_origin`];
//! - over plain HTTP/1.1 the server cannot see its own scheme, so an
//!   `http://` page of the same host passes the origin check (HSTS closes
//!   this); the token still applies;
//! - there is no blanket "allow same-site" switch on purpose: a sibling
//!   subdomain is often the least trusted part of a site (user content), so
//!   sibling origins are trusted one by one;
//! - the layer needs a request body type it can rebuild from `Bytes` after
//!   reading a form (axum's `Body` is one); map a raw hyper body first;
//! - only `application/x-www-form-urlencoded` bodies are searched for the
//!   field; a `multipart/form-data` or JSON request must send the header;
//! - exempted routes get neither check. To keep the origin check but drop
//!   the token (a JSON login for non-browser clients), use
//!   [`CsrfLayerBuilder::without_token`] over the whole app and
//!   [`CsrfLayer::new`] on the routes that need the token.
//!
//! ```
//! use axum::{body::Body, http::Request, routing::{get, post}, Router};
//! use keyfob::{csrf::{CsrfLayer, CsrfToken}, MemoryStore, SessionLayer};
//! use tower::ServiceExt;
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let app: Router = Router::new()
//!     .route("/form", get(|token: CsrfToken| async move { token.to_string() }))
//!     .route("/transfer", post(|| async { "transfer accepted" }))
//!     .layer(CsrfLayer::new())
//!     .layer(SessionLayer::builder(MemoryStore::new()).with_secure(false).build().unwrap());
//!
//! // Get a token (and a session cookie) from the form page.
//! let res = app.clone().oneshot(Request::get("/form").body(Body::empty()).unwrap()).await.unwrap();
//! let cookie = res.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned();
//! let body = axum::body::to_bytes(res.into_body(), 1024).await.unwrap();
//! let token = String::from_utf8(body.to_vec()).unwrap();
//!
//! // Allowed: the session's token, from the same origin.
//! let post = |token: &str, site: &str| {
//!     Request::post("/transfer")
//!         .header("cookie", &cookie)
//!         .header("x-csrf-token", token)
//!         .header("sec-fetch-site", site)
//!         .body(Body::empty())
//!         .unwrap()
//! };
//! let res = app.clone().oneshot(post(&token, "same-origin")).await.unwrap();
//! assert_eq!(res.status(), 200);
//!
//! // Refused: the same token from another site, or no valid token at all.
//! let res = app.clone().oneshot(post(&token, "cross-site")).await.unwrap();
//! assert_eq!(res.status(), 403);
//! let res = app.clone().oneshot(post("forged", "same-origin")).await.unwrap();
//! assert_eq!(res.status(), 403);
//! # });
//! ```

use std::fmt;

use crate::{error::Result, session::Session};

mod future;
mod layer;
mod service;
mod token;

#[cfg(test)]
mod tests;

pub use self::future::ResponseFuture;
pub use self::layer::{CsrfLayer, CsrfLayerBuilder};
pub use self::service::Csrf;

/// The header a request may carry the token in.
///
/// ```
/// // fetch("/transfer", { method: "POST", headers: { "x-csrf-token": token } })
/// assert_eq!(keyfob::csrf::TOKEN_HEADER, "x-csrf-token");
/// ```
pub const TOKEN_HEADER: &str = "x-csrf-token";
/// The form field a request may carry the token in.
///
/// ```
/// let field = format!(r#"<input type="hidden" name="{}" value="…">"#, keyfob::csrf::TOKEN_FIELD);
/// assert!(field.contains("csrf_token"));
/// ```
pub const TOKEN_FIELD: &str = "csrf_token";

/// Why [`CsrfLayer`] refused a request.
///
/// ```
/// use keyfob::csrf::Reason;
/// assert_eq!(Reason::CrossSite.as_str(), "cross-site request");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reason {
    /// `Sec-Fetch-Site` was `cross-site` or `same-site`, from an untrusted origin.
    CrossSite,
    /// `Origin` was neither the request's own origin nor a trusted one.
    OriginMismatch,
    /// `Origin: null` (sandboxed frames, some redirects, `file:` pages).
    OriginNull,
    /// No token in the header or the form body.
    TokenMissing,
    /// A token of the wrong length or alphabet, or sent twice.
    TokenMalformed,
    /// A well-formed token that does not belong to this session's secret.
    TokenMismatch,
    /// The session holds no secret (no session, a new one, or just logged in).
    NoSecret,
    /// The form body was larger than the limit.
    BodyTooLarge,
    /// The form body could not be read.
    BodyUnreadable,
    /// No [`Session`] in the request: `SessionLayer` is not installed outside `CsrfLayer`.
    NoSession,
}

impl Reason {
    /// A short description, as logged.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::CrossSite => "cross-site request",
            Reason::OriginMismatch => "origin does not match",
            Reason::OriginNull => "origin is null",
            Reason::TokenMissing => "token missing",
            Reason::TokenMalformed => "token malformed",
            Reason::TokenMismatch => "token does not match the session",
            Reason::NoSecret => "session holds no token secret",
            Reason::BodyTooLarge => "form body over the limit",
            Reason::BodyUnreadable => "form body unreadable",
            Reason::NoSession => "no session (is SessionLayer installed?)",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Put in the extensions of every refusal, so outer layers and tests can
/// tell why.
///
/// ```
/// # use keyfob::csrf::{Refusal, Reason};
/// fn why(res: &http::Response<()>) -> Option<Reason> {
///     res.extensions().get::<Refusal>().map(Refusal::reason)
/// }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    reason: Reason,
}

impl Refusal {
    /// Why the request was refused.
    pub fn reason(&self) -> Reason {
        self.reason
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CSRF check failed: {}", self.reason)
    }
}

impl std::error::Error for Refusal {}

/// A freshly masked token for `session`, minting its secret if it has none
/// (which starts a session). Every call returns a different string; all of
/// them are valid until the secret changes (at [`login`](crate::auth::login)).
///
/// ```
/// # async fn f(session: keyfob::Session) -> Result<(), keyfob::Error> {
/// let token = keyfob::csrf::token(&session).await?;
/// let html = format!(r#"<input type="hidden" name="csrf_token" value="{token}">"#);
/// # let _ = html; Ok(()) }
/// ```
pub async fn token(session: &Session) -> Result<String> {
    token::masked(session).await
}

/// An extractor for the masked token of this request's session, to embed
/// in a page; see [`token`].
///
/// ```
/// use keyfob::csrf::CsrfToken;
///
/// async fn form(token: CsrfToken) -> String {
///     format!("csrf token: {token}")
/// }
/// ```
#[cfg(feature = "axum")]
#[derive(Clone)]
pub struct CsrfToken(String);

#[cfg(feature = "axum")]
impl CsrfToken {
    /// The masked token.
    ///
    /// ```
    /// async fn form(token: keyfob::csrf::CsrfToken) -> String {
    ///     token.as_str().to_owned()
    /// }
    /// ```
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(feature = "axum")]
impl fmt::Debug for CsrfToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Tokens stay out of logs.
        f.write_str("CsrfToken(..)")
    }
}

#[cfg(feature = "axum")]
impl fmt::Display for CsrfToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The rejection of [`CsrfToken`]: the session layer is missing (`500`) or
/// the store failed (`503`).
///
/// ```
/// use axum::response::IntoResponse;
/// use keyfob::{csrf::TokenRejection, extract::SessionMissing};
/// let res = TokenRejection::SessionMissing(SessionMissing).into_response();
/// assert_eq!(res.status(), 500);
/// ```
#[cfg(feature = "axum")]
#[derive(Debug)]
#[non_exhaustive]
pub enum TokenRejection {
    /// No [`SessionLayer`](crate::SessionLayer) ran before the handler.
    SessionMissing(crate::extract::SessionMissing),
    /// The store failed: `503 session store unavailable`.
    Store(crate::Error),
}

#[cfg(feature = "axum")]
impl axum_core::response::IntoResponse for TokenRejection {
    fn into_response(self) -> axum_core::response::Response {
        match self {
            TokenRejection::SessionMissing(m) => m.into_response(),
            TokenRejection::Store(e) => e.into_response(),
        }
    }
}

#[cfg(feature = "axum")]
impl<S: Send + Sync> axum_core::extract::FromRequestParts<S> for CsrfToken {
    type Rejection = TokenRejection;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        let session =
            parts
                .extensions
                .get::<Session>()
                .cloned()
                .ok_or(TokenRejection::SessionMissing(
                    crate::extract::SessionMissing,
                ))?;
        token(&session)
            .await
            .map(CsrfToken)
            .map_err(TokenRejection::Store)
    }
}
