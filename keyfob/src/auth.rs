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
//!   `401 login required` (for APIs); [`RequireLoginLayer`] sends HTML routes
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
/// the owner so the user's sessions can be listed and revoked, and drops the
/// CSRF secret (the next [`csrf::token`](crate::csrf) mints a new one).
///
/// ```
/// # async fn f(session: keyfob::Session) -> Result<(), keyfob::Error> {
/// keyfob::auth::login(&session, "42", &"alice").await?;
/// # Ok(()) }
/// ```
pub async fn login<U: Serialize>(session: &Session, owner: &str, user: &U) -> Result<()> {
    // A new session, not a renamed one: the pre-login ID is deleted now, and
    // the created time and absolute deadline count from this login.
    let same_user = session.owner().await?.is_none_or(|o| o == owner);
    session.restart(same_user).await?;
    make_room(session, owner).await?;
    session.set_owner(Some(owner)).await?;
    session
        .remove_reserved::<serde_json::Value>(keys::CSRF)
        .await?;
    session.insert_reserved(keys::USER, user).await?;
    Ok(())
}

/// The most sessions [`list_sessions`] returns, and the most a login looks at
/// to enforce the per-user cap: bounded work however many sessions a store
/// holds for one user (the cap keeps it far below this).
pub const MAX_LISTED: usize = 1000;

/// Ends the oldest sessions of `owner` so the login about to be stored keeps
/// the user within the layer's per-user cap.
async fn make_room(session: &Session, owner: &str) -> Result<()> {
    let shared = session.shared();
    let Some(cap) = shared.max_sessions_per_user else {
        return Ok(());
    };
    if !shared.has_owner_index() {
        return Ok(());
    }
    let now = shared.clock.now();
    let mut live = shared.store.list_by_owner(owner, now, MAX_LISTED).await?;
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
    ///
    /// ```
    /// assert_eq!(keyfob::auth::AuthUser(7).into_inner(), 7);
    /// ```
    pub fn into_inner(self) -> U {
        self.0
    }
}

/// The user logged in to `session`, if any.
///
/// ```
/// # async fn f(session: keyfob::Session) -> Result<(), keyfob::Error> {
/// let name: Option<String> = keyfob::auth::current_user(&session).await?;
/// # let _ = name; Ok(()) }
/// ```
pub async fn current_user<U: DeserializeOwned>(session: &Session) -> Result<Option<U>> {
    session.get_reserved(keys::USER).await
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

/// `next` as a redirect target if it is a same-origin relative path, else `/`.
///
/// Accepted: a path that starts with one `/` and holds no `\`, no control
/// characters and no whitespace, at most 2048 bytes. Refused (so `/`):
/// absolute URLs, scheme-relative `//host`, `/\host` (browsers read `\` as
/// `/`), and paths that become one of those once a browser strips tabs and
/// newlines.
///
/// ```
/// use keyfob::auth::safe_next;
///
/// assert_eq!(safe_next("/account?tab=keys"), "/account?tab=keys");
/// assert_eq!(safe_next("https://evil.example"), "/");
/// assert_eq!(safe_next("//evil.example"), "/");
/// assert_eq!(safe_next("/\\evil.example"), "/");
/// ```
pub fn safe_next(next: &str) -> &str {
    let ok = next.len() <= 2048
        && next.starts_with('/')
        && !next[1..].starts_with('/')
        && !next
            .chars()
            .any(|c| c == '\\' || c.is_control() || c.is_whitespace());
    if ok {
        next
    } else {
        "/"
    }
}

/// Sends requests without a logged-in user to a login page, with `next` set
/// to the path and query asked for (`303 See Other`). For HTML routes; APIs
/// use [`AuthUser`], which answers `401`. Install it inside `SessionLayer`.
///
/// ```
/// use axum::{routing::get, Router};
/// use keyfob::{auth::RequireLoginLayer, MemoryStore, SessionLayer};
///
/// let app: Router = Router::new()
///     .route("/account", get(|| async { "your account" }))
///     .layer(RequireLoginLayer::new("/login").unwrap())
///     .layer(SessionLayer::new(MemoryStore::new()));
/// ```
#[derive(Debug, Clone)]
pub struct RequireLoginLayer {
    login: Arc<str>,
}

impl RequireLoginLayer {
    /// Redirects to `login_url` (a path such as `/login`, or a URL).
    ///
    /// ```
    /// use keyfob::auth::RequireLoginLayer;
    /// assert!(RequireLoginLayer::new("/login").is_ok());
    /// assert!(RequireLoginLayer::new("").is_err());
    /// ```
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) when `login_url` is
    /// empty or cannot be a `Location` header.
    pub fn new(login_url: impl Into<String>) -> Result<Self> {
        let login: String = login_url.into();
        if login.is_empty() || HeaderValue::try_from(login.as_str()).is_err() {
            return Err(Error::config(format!(
                "login URL {login:?} must be non-empty and valid in a Location header"
            )));
        }
        Ok(RequireLoginLayer {
            login: login.into(),
        })
    }
}

impl<S> Layer<S> for RequireLoginLayer {
    type Service = RequireLogin<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireLogin {
            inner,
            login: self.login.clone(),
        }
    }
}

/// The service made by [`RequireLoginLayer`].
///
/// ```
/// use keyfob::auth::{RequireLogin, RequireLoginLayer};
/// use tower_layer::Layer;
///
/// let svc: RequireLogin<_> = RequireLoginLayer::new("/login").unwrap().layer(tower::service_fn(
///     |_req: http::Request<axum::body::Body>| async {
///         Ok::<_, std::convert::Infallible>(http::Response::new(axum::body::Body::empty()))
///     },
/// ));
/// # let _ = svc;
/// ```
#[derive(Clone)]
pub struct RequireLogin<S> {
    inner: S,
    login: Arc<str>,
}

impl<S> fmt::Debug for RequireLogin<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequireLogin")
            .field("login", &self.login)
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RequireLogin<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: From<&'static str> + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response<ResBody>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let login = self.login.clone();
        Box::pin(async move {
            let Some(session) = req.extensions().get::<Session>().cloned() else {
                tracing::error!("keyfob: RequireLogin found no session. Is `SessionLayer` installed outside it?");
                return Ok(crate::layer::error_response(&Error::config(
                    "no session in the request",
                )));
            };
            match session.get_reserved::<serde_json::Value>(keys::USER).await {
                Ok(Some(_)) => inner.call(req).await,
                Ok(None) => Ok(redirect_to_login(&login, req.uri())),
                Err(err) => Ok(crate::layer::error_response(&err)),
            }
        })
    }
}

fn redirect_to_login<B: From<&'static str>>(login: &str, uri: &http::Uri) -> Response<B> {
    let asked = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let next: String = form_urlencoded::byte_serialize(asked.as_bytes()).collect();
    let sep = if login.contains('?') { '&' } else { '?' };
    let location = format!("{login}{sep}next={next}");
    let mut res = Response::new(B::from(""));
    *res.status_mut() = StatusCode::SEE_OTHER;
    // Both parts are header-safe (checked at build, percent-encoded), so this holds.
    if let Ok(v) = HeaderValue::try_from(location) {
        res.headers_mut().insert(LOCATION, v);
    }
    res
}

/// One live session of a user, as [`list_sessions`] shows it. Serializes as
/// `{"handle","created_at","last_seen","expires_at","current"}` with RFC 3339 times.
///
/// ```
/// # async fn f(session: keyfob::Session) -> Result<(), keyfob::Error> {
/// for s in keyfob::auth::list_sessions(&session).await? {
///     println!("{} since {}{}", s.handle.short(), s.created_at, if s.current { " (this one)" } else { "" });
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct SessionInfo {
    /// The session's public handle: names it, never usable as its cookie.
    #[serde(serialize_with = "display")]
    pub handle: Handle,
    /// When it was created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When it was last used (precise to the touch interval).
    #[serde(with = "time::serde::rfc3339")]
    pub last_seen: OffsetDateTime,
    /// When it ends if unused: the earlier of its idle and absolute deadlines.
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    /// True for the session of the request that asked.
    pub current: bool,
}

fn display<T: fmt::Display, S: Serializer>(v: &T, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// The owner and handle of `session` once its pending changes (a login in
/// this same request) are in the store, or `None` when nobody is logged in.
async fn owned(session: &Session) -> Result<Option<(String, Option<Handle>)>> {
    let Some(owner) = session.owner().await? else {
        return Ok(None);
    };
    session.save().await?;
    Ok(Some((owner, session.id().await?)))
}

/// The live sessions of the user logged in to `session`, oldest first, at
/// most [`MAX_LISTED`]; empty when nobody is logged in.
///
/// # Errors
/// A store error; [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported)
/// for cookie sessions without a revocation store, which keep no list.
///
/// ```
/// # async fn f(session: keyfob::Session) -> Result<(), keyfob::Error> {
/// let n = keyfob::auth::list_sessions(&session).await?.len();
/// # let _ = n; Ok(()) }
/// ```
pub async fn list_sessions(session: &Session) -> Result<Vec<SessionInfo>> {
    let Some((owner, current)) = owned(session).await? else {
        return Ok(Vec::new());
    };
    let shared = session.shared();
    let now = shared.clock.now();
    let mut list: Vec<SessionInfo> = shared
        .store
        .list_by_owner(&owner, now, MAX_LISTED)
        .await?
        .into_iter()
        .filter(|s| !s.record.is_expired(now))
        .map(|s| SessionInfo {
            current: Some(s.handle) == current,
            handle: s.handle,
            created_at: s.record.created(),
            last_seen: s.record.last_seen(),
            expires_at: s.record.expires_at(),
        })
        .collect();
    list.sort_by_key(|s| (s.created_at, s.handle));
    Ok(list)
}

/// Ends the session named `handle` if it belongs to the user logged in to
/// `session`; `false` ("not found") otherwise, so a handle of someone
/// else's session reveals nothing. Revoking the current session logs out.
///
/// ```
/// # async fn f(session: keyfob::Session, handle: keyfob::Handle) -> Result<(), keyfob::Error> {
/// if !keyfob::auth::revoke(&session, &handle).await? {
///     // answer 404
/// }
/// # Ok(()) }
/// ```
pub async fn revoke(session: &Session, handle: &Handle) -> Result<bool> {
    let Some((owner, current)) = owned(session).await? else {
        return Ok(false);
    };
    if current.as_ref() == Some(handle) {
        session.delete().await?;
        return Ok(true);
    }
    let shared = session.shared();
    if !shared.has_owner_index() {
        return Err(Error::no_owner_index());
    }
    let now = shared.clock.now();
    let mine = shared
        .store
        .load(handle, now)
        .await?
        .is_some_and(|r| r.owner() == Some(owner.as_str()));
    if !mine {
        return Ok(false);
    }
    let deleted = shared.store.delete(handle).await?;
    if deleted {
        tracing::info!(event = "session.revoked", handle = %handle.short(), "keyfob: session revoked by its owner");
    }
    Ok(deleted)
}

/// Ends every other session of the user logged in to `session` ("log out
/// everywhere else"); returns how many ended. This session stays.
///
/// ```
/// # async fn f(session: keyfob::Session) -> Result<(), keyfob::Error> {
/// let revoked = keyfob::auth::revoke_others(&session).await?;
/// # let _ = revoked; Ok(()) }
/// ```
pub async fn revoke_others(session: &Session) -> Result<u64> {
    let Some((owner, current)) = owned(session).await? else {
        return Ok(0);
    };
    let n = session
        .shared()
        .store
        .delete_by_owner(&owner, current.as_ref())
        .await?;
    tracing::info!(
        event = "session.revoked_others",
        count = n,
        "keyfob: other sessions of the user revoked"
    );
    Ok(n)
}

/// Ends every session of the user logged in to `session`, this one
/// included (after a password change); returns how many ended.
///
/// ```
/// # async fn f(session: keyfob::Session) -> Result<(), keyfob::Error> {
/// keyfob::auth::revoke_all(&session).await?;
/// # Ok(()) }
/// ```
pub async fn revoke_all(session: &Session) -> Result<u64> {
    let Some((owner, _)) = owned(session).await? else {
        return Ok(0);
    };
    let n = revoke_all_of(&*session.shared().store, &owner).await?;
    session.delete().await?;
    Ok(n)
}

/// Ends every session of `owner`, with no request at hand (an account
/// disabled by an administrator); returns how many ended.
///
/// ```
/// # async fn f() -> Result<(), keyfob::Error> {
/// let store = keyfob::MemoryStore::new();
/// assert_eq!(keyfob::auth::revoke_all_of(&store, "42").await?, 0);
/// # Ok(()) }
/// ```
pub async fn revoke_all_of(store: &dyn SessionStore, owner: &str) -> Result<u64> {
    let n = store.delete_by_owner(owner, None).await?;
    tracing::info!(
        event = "session.revoked_all",
        count = n,
        "keyfob: every session of a user revoked"
    );
    Ok(n)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use axum::{
        body::Body,
        extract::Query,
        response::Redirect,
        routing::{get, post},
        Router,
    };
    use tower::ServiceExt;

    use super::*;
    use crate::{MemoryStore, SessionLayer};

    #[derive(serde::Deserialize)]
    struct Next {
        next: Option<String>,
    }

    fn app() -> Router {
        let guarded = Router::new()
            .route("/account", get(|| async { "your account" }))
            .layer(RequireLoginLayer::new("/login").unwrap());
        Router::new()
            .route(
                "/login",
                post(|s: Session, Query(q): Query<Next>| async move {
                    login(&s, "1", &"alice").await?;
                    Ok::<_, Error>(Redirect::to(safe_next(q.next.as_deref().unwrap_or("/"))))
                }),
            )
            .merge(guarded)
            .layer(
                SessionLayer::builder(MemoryStore::new())
                    .with_secure(false)
                    .build()
                    .unwrap(),
            )
    }

    async fn send(
        app: &Router,
        req: Request<Body>,
    ) -> (StatusCode, Option<String>, Option<String>) {
        let res = app.clone().oneshot(req).await.unwrap();
        let header = |name| {
            res.headers()
                .get(name)
                .and_then(|v: &HeaderValue| v.to_str().ok())
                .map(str::to_owned)
        };
        let location = header(LOCATION);
        let cookie =
            header(http::header::SET_COOKIE).and_then(|c| c.split(';').next().map(str::to_owned));
        (res.status(), location, cookie)
    }

    #[tokio::test]
    async fn require_login_redirects_with_next_and_lets_the_user_through_after_login() {
        let app = app();
        let (status, location, _) = send(
            &app,
            Request::get("/account?tab=a%20b")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        assert_eq!(
            location.as_deref(),
            Some("/login?next=%2Faccount%3Ftab%3Da%2520b")
        );
        let (status, location, cookie) = send(
            &app,
            Request::post("/login?next=%2Faccount%3Ftab%3Da%2520b")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        assert_eq!(location.as_deref(), Some("/account?tab=a%20b"));
        let req = Request::get("/account")
            .header("cookie", cookie.unwrap())
            .body(Body::empty())
            .unwrap();
        assert_eq!(send(&app, req).await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn next_pointing_off_site_redirects_to_root() {
        let app = app();
        for next in [
            "https%3A%2F%2Fevil.example",
            "%2F%2Fevil.example",
            "%2F%5Cevil.example",
            "%2F%09%2Fevil.example",
            "javascript%3Aalert(1)",
        ] {
            let req = Request::post(format!("/login?next={next}"))
                .body(Body::empty())
                .unwrap();
            let (status, location, _) = send(&app, req).await;
            assert_eq!(
                (status, location.as_deref()),
                (StatusCode::SEE_OTHER, Some("/")),
                "{next}"
            );
        }
    }

    #[test]
    fn require_login_refuses_a_login_url_that_cannot_be_a_header() {
        assert!(RequireLoginLayer::new("").is_err());
        assert!(RequireLoginLayer::new("/lo\ngin").is_err());
        assert!(RequireLoginLayer::new("/login?from=app").is_ok());
        assert!(RequireLoginLayer::new("/lo\u{7f}gin").is_err());
    }

    #[test]
    fn safe_next_keeps_only_same_origin_relative_paths() {
        let cases = [
            ("/", "/"),
            ("/account", "/account"),
            ("/a/b?c=d&e=%2F%2F#f", "/a/b?c=d&e=%2F%2F#f"),
            ("https://evil.example", "/"),
            ("http://evil.example/", "/"),
            ("//evil.example", "/"),
            ("///evil.example", "/"),
            ("/\\evil.example", "/"),
            ("\\\\evil.example", "/"),
            ("/\t/evil.example", "/"),
            ("/\n/evil.example", "/"),
            (" /account", "/"),
            ("javascript:alert(1)", "/"),
            ("evil.example", "/"),
            ("", "/"),
        ];
        for (input, want) in cases {
            assert_eq!(safe_next(input), want, "{input:?}");
        }
        assert_eq!(safe_next(&format!("/{}", "a".repeat(4096))), "/");
    }
}
