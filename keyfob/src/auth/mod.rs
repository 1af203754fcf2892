//! Login, logout, the login guards, and a user's view of their sessions.
//!
//! Rules:
//! - [`login`] starts a new session under a new ID: the pre-login record is
//!   deleted at once (an ID fixed before login is worthless after it), its
//!   data is carried over unless a different user was logged in, the created
//!   time and the absolute deadline count from the login, the owner is
//!   recorded for the store's owner index, and the CSRF secret is dropped, so
//!   a token handed out before login is refused after it;
//! - [`logout`] deletes the session in the store at once;
//! - [`AuthUser<U>`] extracts the logged-in user or rejects with
//!   `401 login required` (for APIs). With a [`UserBackend`] on the layer
//!   (`with_users`), the user is looked up on each request that asks, at
//!   most once, and a session whose user is gone or whose credential
//!   changed is logged out; [`RequirePermission`], [`Permissions`] and
//!   [`RequirePermissionLayer`] check its permissions (`401`/`403`), and
//!   [`credentials_changed`] ends a user's other sessions after a password
//!   change. Without one, [`login`] keeps a copy of the user; [`RequireLoginLayer`] sends HTML routes
//!   to the login page with `?next=` set to the page asked for, and
//!   [`safe_next`] turns a `next` value back into a redirect target only if it
//!   is a same-origin relative path (anything else becomes `/`);
//! - [`list_sessions`], [`revoke`], [`revoke_others`], [`revoke_all`] and
//!   [`revoke_all_of`] let a user see and end their sessions. Sessions are
//!   named by their public [`Handle`], which can never be used as a cookie;
//!   [`revoke`] ends a session only if it belongs to the caller's user.
//!
//! Caveat: listing and revoking need a store with an owner index (every
//! server-side store); a revoked session ends at its next request, and a
//! request already running in it cannot write it back.
//!
//! ```
//! use axum::{body::Body, http::Request, routing::{get, post}, Json, Router};
//! use keyfob::{auth::{self, AuthUser}, MemoryStore, Session, SessionLayer};
//! use serde::{Deserialize, Serialize};
//! use tower::ServiceExt;
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
//!     .layer(SessionLayer::builder(MemoryStore::new()).with_secure(false).build().unwrap());
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! // Rejected: nobody is logged in.
//! let res = app.clone().oneshot(Request::get("/me").body(Body::empty()).unwrap()).await.unwrap();
//! assert_eq!(res.status(), 401);
//! // Allowed: after login, with the new session cookie.
//! let res = app.clone().oneshot(Request::post("/login").body(Body::empty()).unwrap()).await.unwrap();
//! let cookie = res.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned();
//! let req = Request::get("/me").header("cookie", cookie).body(Body::empty()).unwrap();
//! assert_eq!(app.oneshot(req).await.unwrap().status(), 200);
//! # });
//! ```

use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
};

use http::{header::LOCATION, HeaderValue, Request, Response, StatusCode};
use serde::{de::DeserializeOwned, Serialize, Serializer};
use time::OffsetDateTime;
use tower_layer::Layer;
use tower_service::Service;

pub(crate) mod client;
mod guard;
#[cfg(feature = "axum")]
mod permission;
mod sessions;
#[cfg(test)]
mod tests;
pub(crate) mod users;
#[cfg(test)]
mod users_tests;

pub use self::{
    guard::{safe_next, RequireLogin, RequireLoginLayer},
    sessions::{list_sessions, revoke, revoke_all, revoke_all_of, revoke_others, SessionInfo},
    users::{credentials_changed, permissions, Permission, UserBackend},
};
#[cfg(feature = "axum")]
pub use self::{
    permission::{RequirePermissionLayer, RequirePermissionService},
    users::{Permissions, RequirePermission},
};

use crate::{
    error::{Error, Result},
    id::Handle,
    record::reserved as keys,
    session::Session,
    store::{BoxFuture, SessionStore},
};

/// Logs `user` in to this session as `owner` (a stable user id).
///
/// Starts a new session under a new ID (created now, so the absolute
/// deadline counts from the login), carries the data over unless another
/// owner was logged in, records
/// the owner so the user's sessions can be listed and revoked, drops the
/// CSRF secret (the next [`csrf::token`](crate::csrf) mints a new one), and
/// records the device (browser, OS, truncated IP) for [`list_sessions`].
///
/// With a [`UserBackend`] on the layer, `user` is not kept: the session
/// keeps `owner` and a fingerprint of the user's credential, and every
/// later request looks the user up by `owner` (so `owner` must be the id
/// the backend knows). Pass the backend's `User` whose password you just
/// checked: its credential is the one fingerprinted, so a password changed
/// while the login was being checked ends the new session at its next
/// request (given another type, the backend's current user is looked up). Without one, a copy of `user` is kept in the
/// session and served as is until logout: a change to the account does
/// not reach the session.
///
/// ```
/// # async fn f(session: keyfob::Session) -> Result<(), keyfob::Error> {
/// keyfob::auth::login(&session, "42", &"alice").await?;
/// # Ok(()) }
/// ```
pub async fn login<U: Serialize + 'static>(session: &Session, owner: &str, user: &U) -> Result<()> {
    // A new session, not a renamed one: the pre-login ID is deleted now, and
    // the created time and absolute deadline count from this login.
    let same_user = session.owner().await?.is_none_or(|o| o == owner);
    // With a backend: the fingerprint of the credential the app checked
    // (`user`, the backend's own type), so a password changed while this
    // login was being checked ends this session at its next request. Given
    // anything else, that of the user the backend knows by `owner` now.
    let fingerprint = match session.shared().users.clone() {
        Some(users) => Some(match users.fingerprint_of(user as &dyn std::any::Any) {
            Some(checked) => checked,
            None => users::find(&*users, owner).await?.1,
        }),
        None => None,
    };
    // Room first: a store failure here leaves the pre-login session intact.
    make_room(session, owner).await?;
    session.restart(same_user).await?;
    users::forget(session);
    session.set_owner(Some(owner)).await?;
    session
        .remove_reserved::<serde_json::Value>(keys::CSRF)
        .await?;
    match fingerprint {
        Some(fingerprint) => {
            session
                .remove_reserved::<serde_json::Value>(keys::USER)
                .await?;
            session
                .insert_reserved(keys::CREDENTIAL, &fingerprint)
                .await?;
        }
        None => session.insert_reserved(keys::USER, user).await?,
    }
    session
        .insert_reserved(keys::DEVICE, &session.hints().describe())
        .await?;
    metrics::counter!("keyfob_logins_total").increment(1);
    Ok(())
}

/// The most sessions [`list_sessions`] returns, and the most a login looks at
/// to enforce the per-user cap, which may not exceed it. The cap keeps a
/// user's sessions far below this; past it (sessions stored before a cap was
/// set), which ones are listed is the store's choice.
///
/// ```
/// assert!(keyfob::DEFAULT_MAX_SESSIONS_PER_USER <= keyfob::auth::MAX_LISTED);
/// ```
pub const MAX_LISTED: usize = 1000;

/// Ends the oldest sessions of `owner` so the login about to be stored keeps
/// the user within the layer's per-user cap. The session logging in is not
/// counted: the login replaces it.
async fn make_room(session: &Session, owner: &str) -> Result<()> {
    let shared = session.shared();
    let Some(cap) = shared.max_sessions_per_user else {
        return Ok(());
    };
    let now = shared.clock.now();
    let this = session.id().await?;
    let mut live = match shared.store.list_by_owner(owner, now, MAX_LISTED).await {
        Ok(live) => live,
        // A store without an owner index (cookie sessions without a
        // revocation store, the tower-sessions adapter, …) cannot count a
        // user's sessions: the cap does not apply to it (its docs say so).
        Err(e) if e.kind() == crate::ErrorKind::Unsupported => return Ok(()),
        Err(e) => return Err(e),
    };
    live.retain(|s| Some(s.handle) != this);
    if live.len() < cap {
        return Ok(());
    }
    live.sort_by_key(|s| (s.record.created, s.handle));
    let excess = live.len() + 1 - cap;
    for s in live.iter().take(excess) {
        if shared.store.delete(&s.handle).await? {
            tracing::info!(
                event = "session.evicted",
                handle = %s.handle.short(),
                cap,
                "keyfob: oldest session of a user ended by a login past the per-user cap"
            );
        }
    }
    Ok(())
}

/// Logs out: deletes the session in the store now and removes the cookie.
///
/// ```
/// # async fn f(session: keyfob::Session) -> Result<(), keyfob::Error> {
/// keyfob::auth::logout(&session).await?;
/// # Ok(()) }
/// ```
pub async fn logout(session: &Session) -> Result<()> {
    session.delete().await
}

/// The user logged in to this session: looked up through the layer's
/// [`UserBackend`] (at most once per request), or without one the copy
/// stored by [`login`]. Rejects with `401 login required` when nobody is
/// logged in, including a session just logged out because its user is gone
/// or its credentials changed.
///
/// With a backend, `U` is the backend's `User` type.
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
    ///
    /// ```
    /// assert_eq!(keyfob::auth::AuthUser(7).into_inner(), 7);
    /// ```
    pub fn into_inner(self) -> U {
        self.0
    }
}

/// The user logged in to `session`, if any: through the layer's
/// [`UserBackend`] when it has one (`U` is then the backend's `User`), else
/// the copy stored by [`login`].
///
/// ```
/// # async fn f(session: keyfob::Session) -> Result<(), keyfob::Error> {
/// let name: Option<String> = keyfob::auth::current_user(&session).await?;
/// # let _ = name; Ok(()) }
/// ```
pub async fn current_user<U>(session: &Session) -> Result<Option<U>>
where
    U: DeserializeOwned + Clone + Send + Sync + 'static,
{
    if let Some(users) = session.shared().users.clone() {
        return match users::current(session, &*users).await? {
            Some(current) => current.user::<U>().map(Some),
            None => Ok(None),
        };
    }
    // Only `login` writes the user, always with the owner: a user value
    // without one did not come from a login and is not trusted.
    if session.owner().await?.is_none() {
        return Ok(None);
    }
    session.get_reserved(keys::USER).await
}

/// Whether a user is logged in to `session` (and, with a backend, still
/// exists with the credentials it logged in with).
pub(crate) async fn logged_in(session: &Session) -> Result<bool> {
    if let Some(users) = session.shared().users.clone() {
        return Ok(users::current(session, &*users).await?.is_some());
    }
    Ok(session.owner().await?.is_some()
        && session
            .get_reserved::<serde_json::Value>(keys::USER)
            .await?
            .is_some())
}

/// The request's session, or the rejection for a missing layer.
#[cfg(feature = "axum")]
pub(crate) fn request_session(
    parts: &http::request::Parts,
) -> Result<Session, crate::extract::AuthRejection> {
    parts
        .extensions
        .get::<Session>()
        .cloned()
        .ok_or(crate::extract::AuthRejection::SessionMissing(
            crate::extract::SessionMissing,
        ))
}

#[cfg(feature = "axum")]
impl<S, U> axum_core::extract::FromRequestParts<S> for AuthUser<U>
where
    S: Send + Sync,
    U: DeserializeOwned + Clone + Send + Sync + 'static,
{
    type Rejection = crate::extract::AuthRejection;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        use crate::extract::AuthRejection;
        let session = request_session(parts)?;
        match current_user::<U>(&session).await {
            Ok(Some(user)) => Ok(AuthUser(user)),
            Ok(None) => Err(AuthRejection::LoginRequired),
            Err(e) => Err(AuthRejection::Store(e)),
        }
    }
}
