//! axum extractors and their rejections.
//!
//! Rules:
//! - [`Session`] extracts from the request extensions that
//!   [`SessionLayer`](crate::SessionLayer) fills; without the layer it is
//!   rejected with [`SessionMissing`], a `500` whose body asks
//!   "Is `SessionLayer` installed?";
//! - `Option<Session>` is `None` instead of rejecting;
//! - [`AuthUser<U>`](crate::auth::AuthUser) rejects with
//!   [`AuthRejection`], `401 login required` (or `503` when the store is down).
//!
//! ```
//! use axum::{routing::get, Router};
//! use keyfob::Session;
//!
//! async fn optional(session: Option<Session>) -> &'static str {
//!     if session.is_some() { "layer installed" } else { "no layer" }
//! }
//! let app: Router = Router::new().route("/", get(optional));
//! # let _ = app;
//! ```

use std::{convert::Infallible, fmt};

use axum_core::{
    extract::{FromRequestParts, OptionalFromRequestParts},
    response::{IntoResponse, Response},
};
use http::{request::Parts, StatusCode};

use crate::{error::Error, session::Session};

/// The rejection when no [`SessionLayer`](crate::SessionLayer) ran before the handler.
///
/// ```
/// use axum::response::IntoResponse;
/// let response = keyfob::extract::SessionMissing.into_response();
/// assert_eq!(response.status(), 500);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct SessionMissing;

impl fmt::Display for SessionMissing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("no session in the request extensions. Is `SessionLayer` installed?")
    }
}

impl std::error::Error for SessionMissing {}

impl IntoResponse for SessionMissing {
    fn into_response(self) -> Response {
        tracing::error!("keyfob: {self}");
        (StatusCode::INTERNAL_SERVER_ERROR, self.to_string()).into_response()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Session {
    type Rejection = SessionMissing;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Session>()
            .cloned()
            .ok_or(SessionMissing)
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for Session {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<Session>().cloned())
    }
}

/// The rejection of [`AuthUser`](crate::auth::AuthUser).
///
/// ```
/// use axum::response::IntoResponse;
/// let response = keyfob::extract::AuthRejection::LoginRequired.into_response();
/// assert_eq!(response.status(), 401);
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum AuthRejection {
    /// No user is logged in to this session: `401 login required`.
    LoginRequired,
    /// The user is logged in but lacks the permission asked for: `403 forbidden`.
    Forbidden,
    /// The session layer is missing.
    SessionMissing(SessionMissing),
    /// The store failed: `503 session store unavailable`.
    Store(Error),
}

impl IntoResponse for AuthRejection {
    fn into_response(self) -> Response {
        match self {
            AuthRejection::LoginRequired => {
                (StatusCode::UNAUTHORIZED, "login required").into_response()
            }
            AuthRejection::Forbidden => (StatusCode::FORBIDDEN, "forbidden").into_response(),
            AuthRejection::SessionMissing(m) => m.into_response(),
            AuthRejection::Store(e) => e.into_response(),
        }
    }
}
