//! Login, logout and the login guard.
//!
//! Rules:
//! - [`login`] rotates the session ID (so an ID fixed before login is
//!   worthless after it), drops all data if a different user was logged in,
//!   and records the owner for the store's owner index (listing and
//!   revoking a user's sessions);
//! - [`logout`] deletes the session in the store at once;
//! - [`AuthUser<U>`] extracts the logged-in user or rejects with
//!   `401 login required`.
//!
//! ```
//! use axum::{routing::{get, post}, Json, Router};
//! use keyfob::{auth::{self, AuthUser}, MemoryStore, Session, SessionLayer};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Clone, Serialize, Deserialize)]
//! struct User { id: u64, name: String }
//!
//! async fn log_in(session: Session) -> Result<&'static str, keyfob::Error> {
//!     let user = User { id: 1, name: "alice".into() };
//!     auth::login(&session, &user.id.to_string(), &user).await?;
//!     Ok("logged in")
//! }
//!
//! async fn me(AuthUser(user): AuthUser<User>) -> Json<User> {
//!     Json(user)
//! }
//!
//! let app: Router = Router::new()
//!     .route("/login", post(log_in))
//!     .route("/me", get(me))
//!     .layer(SessionLayer::new(MemoryStore::new()));
//! ```

use serde::{de::DeserializeOwned, Serialize};

use crate::{error::Result, session::Session};

/// The session key under which [`login`] keeps the user.
pub(crate) const USER_KEY: &str = "keyfob.user";

/// Logs `user` in to this session as `owner` (a stable user id).
///
/// Rotates the ID, clears the data when another owner was logged in, and
/// records the owner so the user's sessions can be listed and revoked.
pub async fn login<U: Serialize>(session: &Session, owner: &str, user: &U) -> Result<()> {
    if session.owner().await?.is_some_and(|o| o != owner) {
        session.clear().await?;
    }
    session.cycle_id().await?;
    session.set_owner(Some(owner)).await?;
    session.insert(USER_KEY, user).await?;
    Ok(())
}

/// Logs out: deletes the session in the store now and removes the cookie.
pub async fn logout(session: &Session) -> Result<()> {
    session.delete().await
}

/// The user logged in to this session, as stored by [`login`].
///
/// ```
/// use keyfob::auth::AuthUser;
///
/// async fn profile(AuthUser(name): AuthUser<String>) -> String {
///     format!("hello {name}")
/// }
/// ```
#[derive(Debug, Clone)]
pub struct AuthUser<U>(pub U);

impl<U> AuthUser<U> {
    /// The user.
    pub fn into_inner(self) -> U {
        self.0
    }
}

/// The user logged in to `session`, if any.
pub async fn current_user<U: DeserializeOwned>(session: &Session) -> Result<Option<U>> {
    session.get(USER_KEY).await
}

#[cfg(feature = "axum")]
impl<S, U> axum_core::extract::FromRequestParts<S> for AuthUser<U>
where
    S: Send + Sync,
    U: DeserializeOwned + Send,
{
    type Rejection = crate::extract::AuthRejection;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        use crate::extract::AuthRejection;
        let session =
            parts
                .extensions
                .get::<Session>()
                .cloned()
                .ok_or(AuthRejection::SessionMissing(
                    crate::extract::SessionMissing,
                ))?;
        match current_user::<U>(&session).await {
            Ok(Some(user)) => Ok(AuthUser(user)),
            Ok(None) => Err(AuthRejection::LoginRequired),
            Err(e) => Err(AuthRejection::Store(e)),
        }
    }
}
