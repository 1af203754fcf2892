//! [`SessionLayerBuilder`]: every setting, its default, and the checks
//! `build` makes before any request is served.

use std::{fmt, sync::Arc, time::Duration as StdDuration};

use time::Duration;

#[cfg(feature = "cookie-store")]
use crate::store::cookie::CookieStore;
use crate::{
    cookie::SameSite,
    error::{Error, Result},
    expiry::{Clock, Policy, SystemClock},
    keys::Keyring,
    session::Shared,
    store::{timeout::Timed, SessionStore},
};

use super::SessionLayer;

/// Configures a [`SessionLayer`]; every setting is checked by [`build`](Self::build).
///
/// ```
/// use keyfob::{MemoryStore, SameSite, SessionLayer};
///
/// let layer = SessionLayer::builder(MemoryStore::new())
///     .with_name("__Host-session")
///     .with_same_site(SameSite::Strict)
///     .build()
///     .unwrap();
/// # let _ = layer;
/// ```
#[must_use]
pub struct SessionLayerBuilder {
    store: Arc<dyn SessionStore>,
    cookie: crate::cookie::CookieConfig,
    policy: Policy,
    clock: Arc<dyn Clock>,
    save_on_server_error: bool,
    signed_ids: Option<Keyring>,
    legacy_ids: bool,
    max_sessions_per_user: Option<usize>,
    /// A setting that cannot be honoured, reported by `build`.
    refused: Option<&'static str>,
    store_timeout: Option<StdDuration>,
    #[cfg(feature = "cookie-store")]
    client: Option<CookieStore>,
    #[cfg(feature = "auth")]
    users: Option<Arc<dyn crate::auth::users::Users>>,
    #[cfg(feature = "auth")]
    client_ip: Option<crate::auth::client::ClientIp>,
}

/// The default of [`SessionLayerBuilder::with_max_sessions_per_user`].
pub const DEFAULT_MAX_SESSIONS_PER_USER: usize = 100;

/// The default of [`SessionLayerBuilder::with_store_timeout`].
pub const DEFAULT_STORE_TIMEOUT: StdDuration = StdDuration::from_secs(5);

impl fmt::Debug for SessionLayerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionLayerBuilder")
            .field("cookie", &self.cookie)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl SessionLayerBuilder {
    pub(super) fn new(store: Arc<dyn SessionStore>) -> Self {
        SessionLayerBuilder {
            store,
            cookie: crate::cookie::CookieConfig::default(),
            policy: Policy::default(),
            clock: Arc::new(SystemClock),
            save_on_server_error: false,
            signed_ids: None,
            legacy_ids: false,
            max_sessions_per_user: Some(DEFAULT_MAX_SESSIONS_PER_USER),
            refused: None,
            store_timeout: Some(DEFAULT_STORE_TIMEOUT),
            #[cfg(feature = "cookie-store")]
            client: None,
            #[cfg(feature = "auth")]
            users: None,
            #[cfg(feature = "auth")]
            client_ip: None,
        }
    }

    #[cfg(feature = "cookie-store")]
    pub(super) fn cookie(store: CookieStore) -> Self {
        let mut builder = SessionLayerBuilder::new(store.revocation().clone());
        builder.client = Some(store);
        builder
    }

    /// Signs session IDs: the cookie carries `ID.MAC` (HMAC-SHA256 under a key
    /// derived from `keyring` for this cookie name), so a forged or guessed ID
    /// is refused before any store round trip, and an ID signed under an old
    /// key of the ring is re-issued under the current one. For server-side
    /// stores; cookie sessions are sealed already. Default off.
    ///
    /// ```
    /// use keyfob::{keys::Keyring, MemoryStore, SessionLayer};
    /// let layer = SessionLayer::builder(MemoryStore::new())
    ///     .with_signed_ids(Keyring::generate().unwrap())
    ///     .build()
    ///     .unwrap();
    /// # let _ = layer;
    /// ```
    pub fn with_signed_ids(mut self, keyring: Keyring) -> Self {
        self.signed_ids = Some(keyring);
        self
    }

    /// Accepts the cookie of a session that [`crate::migrate`] imported from
    /// tower-sessions, **once**: the first request that uses the session moves
    /// it to a new 256-bit keyfob ID and answers with that cookie, and the old
    /// cookie loads nothing from then on. The user stays logged in.
    ///
    /// Only records that carry the import mark are reachable this way, and
    /// the store keys them by the SHA-256 of the old cookie value, never the
    /// value itself. A request that does not touch the session does not
    /// rotate it (nothing is loaded). Turn it off once the imported sessions
    /// have expired: their old cookies are 128-bit values. Default `false`:
    /// a tower-sessions cookie is "no session".
    ///
    /// ```
    /// use keyfob::{MemoryStore, SessionLayer};
    /// let layer = SessionLayer::builder(MemoryStore::new())
    ///     .with_legacy_ids(true)
    ///     .build()
    ///     .unwrap();
    /// # let _ = layer;
    /// ```
    pub fn with_legacy_ids(mut self, on: bool) -> Self {
        self.legacy_ids = on;
        self
    }

    /// The most live sessions one user may have: a login past it ends that
    /// user's oldest sessions (by creation) first, so one account cannot pile
    /// up sessions without bound, and the "your sessions" list stays short.
    /// Default [`DEFAULT_MAX_SESSIONS_PER_USER`] (100); `None` for no cap;
    /// at most `auth::MAX_LISTED` (1000).
    /// A store without an owner index (cookie sessions without a revocation
    /// store, [`TowerSessionsStore`](crate::TowerSessionsStore), a store whose
    /// `list_by_owner` answers `Unsupported`) cannot count a user's
    /// sessions, so the cap does not apply to it.
    ///
    /// ```
    /// use keyfob::{MemoryStore, SessionLayer};
    /// // Allowed: at most 5 devices per user.
    /// assert!(SessionLayer::builder(MemoryStore::new())
    ///     .with_max_sessions_per_user(Some(5))
    ///     .build()
    ///     .is_ok());
    /// // Refused: a cap of zero would end every login at once.
    /// assert!(SessionLayer::builder(MemoryStore::new())
    ///     .with_max_sessions_per_user(Some(0))
    ///     .build()
    ///     .is_err());
    /// ```
    pub fn with_max_sessions_per_user(mut self, max: Option<usize>) -> Self {
        self.max_sessions_per_user = max;
        self
    }

    /// tower-sessions' `with_expiry`, for the whole layer:
    /// [`Expiry::OnInactivity(d)`](crate::Expiry::OnInactivity) sets the idle
    /// timeout to `d`; [`Expiry::OnSessionEnd`](crate::Expiry::OnSessionEnd)
    /// sends browser-session cookies (the server still ends sessions at the
    /// idle timeout). [`Expiry::AtDateTime`](crate::Expiry::AtDateTime) is
    /// per session in keyfob ([`Session::set_expiry`](crate::Session::set_expiry)):
    /// one fixed instant for every session is refused by [`build`](Self::build).
    ///
    /// ```
    /// use keyfob::{Expiry, MemoryStore, SessionLayer};
    /// use time::{Duration, OffsetDateTime};
    ///
    /// let layer = SessionLayer::builder(MemoryStore::new())
    ///     .with_expiry(Expiry::OnInactivity(Duration::minutes(10)))
    ///     .build();
    /// assert!(layer.is_ok());
    /// let refused = SessionLayer::builder(MemoryStore::new())
    ///     .with_expiry(Expiry::AtDateTime(OffsetDateTime::now_utc()))
    ///     .build();
    /// assert!(refused.is_err());
    /// ```
    pub fn with_expiry(mut self, expiry: crate::Expiry) -> Self {
        match expiry {
            crate::Expiry::OnInactivity(d) => self.policy.idle_timeout = Some(d),
            crate::Expiry::OnSessionEnd => self.policy.browser_session_cookie = true,
            crate::Expiry::AtDateTime(_) => self.refused = Some(
                "`with_expiry(Expiry::AtDateTime(..))` would end every session at one instant: \
                     call `session.set_expiry(Some(Expiry::AtDateTime(..)))` per session instead",
            ),
        }
        self
    }

    /// tower-sessions' `with_always_save`: `true` refreshes the idle deadline
    /// on every request that loads the session (a touch interval of zero).
    /// keyfob refreshes it on reads anyway, at most once per
    /// [touch interval](Self::with_touch_interval), which is what most apps
    /// that set `always_save` wanted. `false` restores the default interval
    /// (a tenth of the idle timeout, at most 1 minute).
    ///
    /// ```
    /// use keyfob::{MemoryStore, SessionLayer};
    /// let layer = SessionLayer::builder(MemoryStore::new()).with_always_save(true).build();
    /// assert!(layer.is_ok());
    /// ```
    pub fn with_always_save(mut self, on: bool) -> Self {
        self.policy.touch_interval = if on { Some(Duration::ZERO) } else { None };
        self
    }

    /// The cookie name. Default `id`.
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.cookie.name = name.into().into_boxed_str();
        self
    }

    /// The `Secure` attribute. Default `true`.
    pub fn with_secure(mut self, secure: bool) -> Self {
        self.cookie.secure = secure;
        self
    }

    /// The `HttpOnly` attribute. Default `true`.
    pub fn with_http_only(mut self, http_only: bool) -> Self {
        self.cookie.http_only = http_only;
        self
    }

    /// The `SameSite` attribute. Default [`SameSite::Lax`].
    pub fn with_same_site(mut self, same_site: SameSite) -> Self {
        self.cookie.same_site = same_site;
        self
    }

    /// The `Domain` attribute. Default none (host-only cookie).
    pub fn with_domain(mut self, domain: impl Into<String>) -> Self {
        self.cookie.domain = Some(domain.into().into_boxed_str());
        self
    }

    /// The `Path` attribute. Default `/`.
    pub fn with_path(mut self, path: impl Into<String>) -> Self {
        self.cookie.path = path.into().into_boxed_str();
        self
    }

    /// The `Partitioned` attribute (CHIPS). Default `false`.
    pub fn with_partitioned(mut self, partitioned: bool) -> Self {
        self.cookie.partitioned = partitioned;
        self
    }

    /// End sessions unused for this long. Default 2 hours.
    pub fn with_idle_timeout(mut self, idle: Duration) -> Self {
        self.policy.idle_timeout = Some(idle);
        self
    }

    /// No idle timeout: sessions end only at the absolute deadline.
    pub fn without_idle_timeout(mut self) -> Self {
        self.policy.idle_timeout = None;
        self
    }

    /// End every session this long after it was created, whatever its
    /// activity; `None` for no cap. Default 12 hours.
    pub fn with_absolute_timeout(mut self, absolute: Option<Duration>) -> Self {
        self.policy.absolute_timeout = absolute;
        self
    }

    /// Send the cookie without `Max-Age`, so the browser drops it when it
    /// closes; the server-side deadlines still apply. Default `false`.
    pub fn with_browser_session_cookie(mut self, on: bool) -> Self {
        self.policy.browser_session_cookie = on;
        self
    }

    /// Refresh the idle deadline of a read-only session at most this often.
    /// Default: a tenth of the idle timeout, at most 1 minute, so short idle
    /// timeouts work without setting this. An interval at least as long as
    /// the idle timeout is refused by [`build`](Self::build): read-only
    /// sessions would expire while in use.
    ///
    /// ```
    /// use keyfob::{MemoryStore, SessionLayer};
    /// use time::Duration;
    ///
    /// // Allowed: a 10-second idle timeout, touched every second by default.
    /// assert!(SessionLayer::builder(MemoryStore::new())
    ///     .with_idle_timeout(Duration::seconds(10))
    ///     .build()
    ///     .is_ok());
    /// // Refused: an explicit interval the idle timeout cannot outlast.
    /// assert!(SessionLayer::builder(MemoryStore::new())
    ///     .with_idle_timeout(Duration::seconds(10))
    ///     .with_touch_interval(Duration::seconds(10))
    ///     .build()
    ///     .is_err());
    /// ```
    pub fn with_touch_interval(mut self, every: Duration) -> Self {
        self.policy.touch_interval = Some(every);
        self
    }

    /// Also save when the response is a `5xx`. Default `false`: a failed
    /// request leaves the session as it was.
    pub fn with_save_on_server_error(mut self, on: bool) -> Self {
        self.save_on_server_error = on;
        self
    }

    /// Bounds every store call the layer, the [`Session`](crate::Session) and the app's own
    /// use of [`SessionLayer::store`] make: a call that takes longer is
    /// abandoned and the request gets `503 session store unavailable` with
    /// `Retry-After: 1` ([`ErrorKind::Timeout`](crate::ErrorKind::Timeout)). `None` for no limit.
    /// Default [`DEFAULT_STORE_TIMEOUT`] (5 seconds).
    ///
    /// A limit needs the Tokio time driver (`#[tokio::main]`, `#[tokio::test]`
    /// and `enable_all()` runtimes have it); on a runtime built without
    /// timers, pass `None`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use keyfob::{MemoryStore, SessionLayer};
    /// let layer = SessionLayer::builder(MemoryStore::new())
    ///     .with_store_timeout(Some(Duration::from_millis(500)))
    ///     .build()
    ///     .unwrap();
    /// // A zero limit would refuse every request:
    /// assert!(SessionLayer::builder(MemoryStore::new())
    ///     .with_store_timeout(Some(Duration::ZERO))
    ///     .build()
    ///     .is_err());
    /// # let _ = layer;
    /// ```
    pub fn with_store_timeout(mut self, limit: Option<StdDuration>) -> Self {
        self.store_timeout = limit;
        self
    }

    /// The clock that decides expiry; tests pass a [`ManualClock`](crate::ManualClock).
    /// Default the system clock.
    pub fn with_clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Looks the user behind each session up through `users` on every
    /// request that asks ([`AuthUser`](crate::auth::AuthUser),
    /// [`RequirePermission`](crate::auth::RequirePermission), …), instead of
    /// trusting a copy taken at login. See [`UserBackend`](crate::auth::UserBackend).
    /// Default: none (a copy of the user is kept in the session at login).
    ///
    /// ```
    /// use keyfob::{auth::UserBackend, MemoryStore, SessionLayer};
    ///
    /// struct Users;
    /// impl UserBackend for Users {
    ///     type User = String;
    ///     async fn user(&self, id: &str) -> Result<Option<String>, keyfob::Error> {
    ///         Ok((id == "1").then(|| "alice".to_owned()))
    ///     }
    ///     fn credential(user: &String) -> &[u8] {
    ///         user.as_bytes() // in a real app: the password hash
    ///     }
    /// }
    ///
    /// let layer = SessionLayer::builder(MemoryStore::new()).with_users(Users).build().unwrap();
    /// # let _ = layer;
    /// ```
    #[cfg(feature = "auth")]
    pub fn with_users(mut self, users: impl crate::auth::UserBackend) -> Self {
        self.users = Some(Arc::new(users));
        self
    }

    /// How to find a request's client IP address, which a login records
    /// (cut to its /24 or /48 network) so the user's session list can tell
    /// devices apart. keyfob cannot know whether a `Forwarded` header is
    /// yours or the client's, so it reads none by default: with axum, pass
    /// the peer address from `ConnectInfo`; behind your own proxy, the
    /// address it appends. Default: no IP recorded.
    ///
    /// ```
    /// use std::net::SocketAddr;
    /// use axum::extract::ConnectInfo;
    /// use keyfob::{MemoryStore, SessionLayer};
    ///
    /// let layer = SessionLayer::builder(MemoryStore::new())
    ///     .with_client_ip(|_headers, extensions| {
    ///         extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip())
    ///     })
    ///     .build()
    ///     .unwrap();
    /// # let _ = layer;
    /// ```
    #[cfg(feature = "auth")]
    pub fn with_client_ip(
        mut self,
        find: impl Fn(&http::HeaderMap, &http::Extensions) -> Option<std::net::IpAddr>
            + Send
            + Sync
            + 'static,
    ) -> Self {
        self.client_ip = Some(Arc::new(find));
        self
    }

    pub(super) fn into_shared(self) -> Shared {
        let store = Timed::new(self.store, self.store_timeout);
        Shared {
            store_dyn: Arc::new(store.clone()),
            store,
            cookie: self.cookie,
            policy: self.policy,
            clock: self.clock,
            save_on_server_error: self.save_on_server_error,
            signed_ids: self.signed_ids,
            legacy_ids: self.legacy_ids,
            max_sessions_per_user: self.max_sessions_per_user,
            #[cfg(feature = "cookie-store")]
            client: self.client.map(|c| c.time_limited(self.store_timeout)),
            #[cfg(feature = "auth")]
            users: self.users,
            #[cfg(feature = "auth")]
            client_ip: self.client_ip,
        }
    }

    /// Checks the settings and builds the layer.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) with a message that says
    /// what to change: an invalid cookie name, a cookie-prefix rule broken,
    /// `SameSite=None` without `Secure`, no timeout at all, a non-positive timeout.
    pub fn build(self) -> Result<SessionLayer> {
        self.cookie.validate()?;
        if let Some(reason) = self.refused {
            return Err(Error::config(reason));
        }
        let p = &self.policy;
        if p.idle_timeout.is_none() && p.absolute_timeout.is_none() {
            return Err(Error::config(
                "sessions need an idle or an absolute timeout, or they would never end: set one",
            ));
        }
        for (what, d) in [("idle", p.idle_timeout), ("absolute", p.absolute_timeout)] {
            if d.is_some_and(|d| d < Duration::seconds(1)) {
                return Err(Error::config(format!(
                    "the {what} timeout must be at least one second"
                )));
            }
            if d.is_some_and(|d| d > crate::expiry::MAX_TIMEOUT) {
                return Err(Error::config(format!(
                    "the {what} timeout must be at most 100 years"
                )));
            }
        }
        if self.max_sessions_per_user == Some(0) {
            return Err(Error::config(
                "a per-user cap of zero sessions would end every login at once: give at least 1, or None for no cap",
            ));
        }
        #[cfg(feature = "auth")]
        if self
            .max_sessions_per_user
            .is_some_and(|cap| cap > crate::auth::MAX_LISTED)
        {
            return Err(Error::config(format!(
                "a per-user cap above {} sessions cannot be enforced (a login looks at that many): \
                 lower it, or use None for no cap",
                crate::auth::MAX_LISTED
            )));
        }
        if self.store_timeout.is_some_and(|t| t.is_zero()) {
            return Err(Error::config(
                "a zero store timeout would refuse every request: give a positive duration, or None for no limit",
            ));
        }
        if let Some(every) = p.touch_interval {
            if every.is_negative() {
                return Err(Error::config("the touch interval may not be negative"));
            }
            if let Some(idle) = p.idle_timeout.filter(|idle| every >= *idle) {
                return Err(Error::config(format!(
                    "the touch interval ({every}) must be shorter than the idle timeout ({idle}), \
                     or read-only sessions would expire while in use: shorten it, or leave it unset \
                     to follow the idle timeout"
                )));
            }
        }
        #[cfg(feature = "cookie-store")]
        if self.client.is_some() && self.signed_ids.is_some() {
            return Err(Error::config(
                "cookie sessions are sealed already: remove `with_signed_ids`",
            ));
        }
        #[cfg(feature = "cookie-store")]
        if self.client.is_some() && self.legacy_ids {
            return Err(Error::config(
                "imported tower-sessions sessions live in a server-side store: remove `with_legacy_ids` from a cookie-session layer",
            ));
        }
        #[cfg(feature = "auth")]
        crate::auth::client::warm_up();
        Ok(SessionLayer {
            shared: Arc::new(self.into_shared()),
        })
    }
}
