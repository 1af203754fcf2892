//! The [`Session`] handle and its change tracking.
//!
//! (The rules, caveats and examples are on the public type below,
//! where docs.rs shows them: this module is private.)

use std::{
    fmt,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use serde::{de::DeserializeOwned, Serialize};
use serde_json::value::RawValue;
use time::OffsetDateTime;
use tokio::sync::Mutex;

mod engine;
mod key;
#[cfg(feature = "cookie-store")]
mod sealed;

pub(crate) use self::engine::{CookieOut, Incoming, Shared};
pub use self::key::{AsKey, Key};

use crate::{
    error::{Error, ErrorKind, Result},
    expiry::Expiry,
    id::{Handle, SessionId},
    record::{reserved, ChangeSet, Data, Record},
};

#[derive(Default)]
struct State {
    loaded: bool,
    /// The ID the record lives under: the presented one until it fails to load.
    current: Option<SessionId>,
    /// The stored record as loaded; `None` when there is no session in the store.
    base: Option<Arc<Record>>,
    changes: ChangeSet,
    rotate_to: Option<SessionId>,
    owner: Option<Option<Box<str>>>,
    expiry: Option<Option<Expiry>>,
    /// The cookie an earlier explicit `save` decided on, for the layer to send.
    cookie: Option<CookieOut>,
    /// The presented cookie must be re-issued (it was made under an old key).
    reissue: bool,
    /// The handle of the imported tower-sessions record the request presented;
    /// once loaded, `current` is the fresh ID it moves to on commit.
    legacy: Option<Handle>,
    /// A cookie session's sealed value, until the first access opens it.
    #[cfg(feature = "cookie-store")]
    sealed: Option<Box<str>>,
}

impl State {
    fn lookup(&self, key: &str) -> Option<&str> {
        match self.changes.lookup(key) {
            Some(v) => v.map(RawValue::get),
            None if self.changes.is_cleared() => None,
            None => self.base.as_ref().and_then(|b| b.data.get(key)),
        }
    }

    fn data(&self) -> Data {
        let mut data = match &self.base {
            Some(b) => b.data.clone(),
            None => Data::default(),
        };
        self.changes.apply_to(&mut data);
        data
    }

    fn expiry(&self) -> Option<Expiry> {
        match self.expiry {
            Some(e) => e,
            None => self.base.as_ref().and_then(|b| b.expiry()),
        }
    }

    fn owner(&self) -> Option<&str> {
        match &self.owner {
            Some(o) => o.as_deref(),
            None => self.base.as_ref().and_then(|b| b.owner()),
        }
    }

    fn is_dirty(&self) -> bool {
        !self.changes.is_empty()
            || self.rotate_to.is_some()
            || self.owner.is_some()
            || self.expiry.is_some()
    }
}

struct Inner {
    shared: Arc<Shared>,
    accessed: AtomicBool,
    /// Something in this request changed the session (`is_modified`).
    modified: AtomicBool,
    state: Mutex<State>,
    /// The user looked up for this request (`auth::users`).
    #[cfg(feature = "auth")]
    user: crate::auth::users::Slot,
    /// The request's device, for a login to record.
    #[cfg(feature = "auth")]
    hints: crate::auth::client::Hints,
}

/// One request's session: a cheap, cloneable handle (an `Arc`).
///
/// Get it as an axum extractor, or from the request extensions in plain
/// tower code. Every method that reaches the store returns
/// [`Result`]; a store outage is an [`Error`] that renders as `503`.
///
/// ```
/// use keyfob::Session;
///
/// async fn handler(session: Session) -> Result<String, keyfob::Error> {
///     session.insert("greeting", "hello").await?;
///     let g: Option<String> = session.get("greeting").await?;
///     Ok(g.unwrap_or_default())
/// }
/// ```
///
/// Rules:
/// - method names follow tower-sessions (`get`, `insert`, `remove`, `clear`,
///   `delete`, `cycle_id`, `flush`, `id`, `expiry`, `set_expiry`, `save`,
///   `load`), so migrating is mostly a change of `use` lines;
/// - the record is loaded lazily, at most once per request, on first use;
/// - the handle records what the request changes (set key, remove key,
///   clear) and the layer sends only that change-set to the store, which
///   applies it to the record it holds now;
/// - [`Key<T>`] constants carry the value type, so `session.get(USER)` cannot
///   be read as the wrong type;
/// - a stored value that no longer deserializes into the requested type
///   reads as absent, with a warning, instead of failing the request.
///
/// Caveats: [`Session::delete`] deletes in the store at once (so a logout is
/// effective even if the response never completes); [`Session::id`] returns
/// the public [`Handle`], never the secret ID.
///
/// ```
/// use axum::{routing::get, Router};
/// use keyfob::{Key, MemoryStore, Session, SessionLayer};
///
/// const COUNTER: Key<usize> = Key::new("counter");
///
/// async fn count(session: Session) -> Result<String, keyfob::Error> {
///     let n = session.get(COUNTER).await?.unwrap_or(0) + 1;
///     session.insert(COUNTER, n).await?;
///     // session.insert(COUNTER, "three").await?; // does not compile: COUNTER holds a usize
///     Ok(format!("{n}"))
/// }
///
/// let app: Router = Router::new()
///     .route("/count", get(count))
///     .layer(SessionLayer::new(MemoryStore::new()));
/// ```
#[derive(Clone)]
pub struct Session {
    inner: Arc<Inner>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session").finish_non_exhaustive()
    }
}

impl Session {
    pub(crate) fn new(shared: Arc<Shared>, presented: Incoming) -> Self {
        Self::with_hints(shared, presented, Default::default())
    }

    /// A session that knows the request's device (see `auth::client`).
    pub(crate) fn with_hints(
        shared: Arc<Shared>,
        presented: Incoming,
        #[cfg(feature = "auth")] hints: crate::auth::client::Hints,
        #[cfg(not(feature = "auth"))] _hints: (),
    ) -> Self {
        let mut state = State::default();
        match presented {
            Incoming::None => {}
            Incoming::Id { id, stale } => {
                state.current = Some(id);
                state.reissue = stale;
            }
            Incoming::Legacy(handle) => state.legacy = Some(handle),
            #[cfg(feature = "cookie-store")]
            Incoming::Sealed(value) => state.sealed = Some(value),
        }
        Session {
            inner: Arc::new(Inner {
                shared,
                accessed: AtomicBool::new(false),
                modified: AtomicBool::new(false),
                state: Mutex::new(state),
                #[cfg(feature = "auth")]
                user: Default::default(),
                #[cfg(feature = "auth")]
                hints,
            }),
        }
    }

    fn now(&self) -> OffsetDateTime {
        self.inner.shared.clock.now()
    }

    /// The value under `key`, or `None`. A value that does not deserialize
    /// into `T` reads as `None` (with a warning), and so does a key in
    /// keyfob's reserved `keyfob.` namespace.
    ///
    /// ```
    /// # async fn f(session: keyfob::Session) -> Result<(), keyfob::Error> {
    /// let n: Option<usize> = session.get("counter").await?;
    /// let n = session.get::<usize>("counter").await?;
    /// // keyfob's own keys are not the app's to read.
    /// assert_eq!(session.get::<String>("keyfob.user").await?, None);
    /// # let _ = n; Ok(()) }
    /// ```
    pub async fn get<T: DeserializeOwned>(&self, key: impl AsKey<T>) -> Result<Option<T>> {
        let name = key.key_name();
        if reserved::is_reserved(name) {
            return Ok(None);
        }
        self.get_reserved(name).await
    }

    /// The value under `key`, or `None`.
    pub async fn get_value(&self, key: &str) -> Result<Option<serde_json::Value>> {
        self.get::<serde_json::Value>(key).await
    }

    /// Sets `key` to `value`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::ReservedKey`] for a key in keyfob's `keyfob.` namespace
    /// (nothing is written), [`ErrorKind::Serialize`] when `value` does not
    /// serialize, and a store error when the session cannot be loaded.
    ///
    /// ```
    /// # async fn f(session: keyfob::Session) -> Result<(), keyfob::Error> {
    /// session.insert("counter", 1usize).await?;
    /// // Refused: keyfob's own namespace.
    /// let err = session.insert("keyfob.user", "mallory").await.unwrap_err();
    /// assert_eq!(err.kind(), keyfob::ErrorKind::ReservedKey);
    /// # Ok(()) }
    /// ```
    pub async fn insert<T: Serialize>(&self, key: impl AsKey<T>, value: T) -> Result<()> {
        let name = key.key_name();
        writable(name)?;
        self.insert_reserved(name, &value).await
    }

    /// Removes `key`, returning its value if it held a `T`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::ReservedKey`] for a key in keyfob's `keyfob.` namespace.
    pub async fn remove<T: DeserializeOwned>(&self, key: impl AsKey<T>) -> Result<Option<T>> {
        let name = key.key_name();
        writable(name)?;
        self.remove_reserved(name).await
    }

    /// Removes `key`, returning its value as JSON.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::ReservedKey`] for a key in keyfob's `keyfob.` namespace.
    pub async fn remove_value(&self, key: &str) -> Result<Option<serde_json::Value>> {
        self.remove::<serde_json::Value>(key).await
    }

    /// [`get`](Self::get) without the namespace check, for keyfob's own modules.
    pub(crate) async fn get_reserved<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>> {
        let st = self.state().await?;
        Ok(decode(name, st.lookup(name)))
    }

    /// [`insert`](Self::insert) without the namespace check, for keyfob's own modules.
    pub(crate) async fn insert_reserved<T: Serialize + ?Sized>(
        &self,
        name: &str,
        value: &T,
    ) -> Result<()> {
        self.mark_modified();
        let raw = serde_json::value::to_raw_value(value)
            .map_err(|e| Error::with_source(ErrorKind::Serialize, e))?;
        let mut st = self.state().await?;
        st.changes.set(name, Some(raw));
        Ok(())
    }

    /// [`remove`](Self::remove) without the namespace check, for keyfob's own modules.
    pub(crate) async fn remove_reserved<T: DeserializeOwned>(
        &self,
        name: &str,
    ) -> Result<Option<T>> {
        self.mark_modified();
        let mut st = self.state().await?;
        let old = decode(name, st.lookup(name));
        st.changes.set(name, None);
        Ok(old)
    }

    /// Removes every key, keyfob's own included: a logged-in user is logged
    /// out (the session no longer counts among the user's sessions, so
    /// listing and revoking them no longer reach it) and the CSRF secret is
    /// dropped. The session itself (its ID) stays.
    pub async fn clear(&self) -> Result<()> {
        self.mark_modified();
        #[cfg(feature = "auth")]
        crate::auth::users::forget(self);
        let mut st = self.state().await?;
        st.changes.clear();
        if st.owner().is_some() {
            st.owner = Some(None);
        }
        Ok(())
    }

    /// True once this request changed the session (a key set or removed,
    /// cleared, deleted, its ID cycled, its expiry set), as tower-sessions'
    /// `is_modified`; keyfob itself decides what to write from the change-set.
    ///
    /// ```
    /// # async fn f(session: keyfob::Session) -> Result<(), keyfob::Error> {
    /// assert!(!session.is_modified());
    /// session.insert("seen", true).await?;
    /// assert!(session.is_modified());
    /// # Ok(()) }
    /// ```
    pub fn is_modified(&self) -> bool {
        self.inner.modified.load(Ordering::Relaxed)
    }

    fn mark_modified(&self) {
        self.inner.modified.store(true, Ordering::Relaxed);
    }

    /// True when there is no session (no ID: nothing was presented, or what
    /// was presented did not load) and no data staged, as in tower-sessions.
    /// A stored session is never empty, even after [`clear`](Self::clear).
    pub async fn is_empty(&self) -> Result<bool> {
        let st = self.state().await?;
        Ok(st.current.is_none() && st.rotate_to.is_none() && st.data().is_empty())
    }

    /// Deletes the session from the store now and removes the cookie.
    ///
    /// Any later write in this request starts a new session with a new ID.
    pub async fn delete(&self) -> Result<()> {
        self.mark_modified();
        // No user is logged in to a deleted session, for the rest of this
        // request too.
        #[cfg(feature = "auth")]
        crate::auth::users::forget(self);
        let mut st = self.state().await?;
        if let Some(id) = st.current.take() {
            let handle = st.legacy.take().unwrap_or_else(|| id.handle());
            #[cfg(feature = "cookie-store")]
            if let Some(client) = &self.inner.shared.client {
                let until = self.retire_until(st.base.as_deref());
                let owned = st.base.as_ref().is_some_and(|b| b.owner().is_some());
                client.retire(&id, owned, until, self.now()).await?;
            } else {
                self.inner.shared.store.delete(&handle).await?;
            }
            #[cfg(not(feature = "cookie-store"))]
            self.inner.shared.store.delete(&handle).await?;
            tracing::info!(event = "session.deleted", handle = %handle.short(), "keyfob: session deleted");
        }
        *st = State {
            loaded: true,
            cookie: Some(CookieOut::Remove),
            ..State::default()
        };
        Ok(())
    }

    /// Clears the data and deletes the session (tower-sessions' `flush`).
    pub async fn flush(&self) -> Result<()> {
        self.delete().await
    }

    /// Gives the session a new ID, keeping its data; the old ID is retired
    /// when the response is sent. Call it on every privilege change (login).
    /// The absolute deadline does not move.
    pub async fn cycle_id(&self) -> Result<()> {
        self.mark_modified();
        let id = SessionId::generate()?;
        self.state().await?.rotate_to = Some(id);
        Ok(())
    }

    /// The session's public [`Handle`], or `None` when there is no session
    /// (yet). After [`cycle_id`](Self::cycle_id), the new handle.
    pub async fn id(&self) -> Result<Option<Handle>> {
        let st = self.state().await?;
        Ok(st
            .rotate_to
            .as_ref()
            .or(st.current.as_ref())
            .map(SessionId::handle))
    }

    /// This session's [`Expiry`], as tower-sessions reports it: the one set
    /// by [`set_expiry`](Self::set_expiry) (in this request or before), else
    /// the layer's (`OnInactivity(idle timeout)`, or `OnSessionEnd` for
    /// browser-session cookies). `None` only for a layer with no idle timeout.
    pub async fn expiry(&self) -> Result<Option<Expiry>> {
        let own = self.state().await?.expiry();
        let policy = &self.inner.shared.policy;
        Ok(own.or_else(|| {
            if policy.browser_session(None) {
                Some(Expiry::OnSessionEnd)
            } else {
                policy.idle_timeout.map(Expiry::OnInactivity)
            }
        }))
    }

    /// Overrides the layer's idle policy for this session (`None` restores it).
    pub async fn set_expiry(&self, expiry: Option<Expiry>) -> Result<()> {
        self.mark_modified();
        self.state().await?.expiry = Some(expiry);
        Ok(())
    }

    /// When the session will end if nothing else happens: the earlier of its
    /// idle and absolute deadlines. A stored session reports its stored
    /// deadlines; an [`Expiry`] set earlier in this request counts (the
    /// deadline that set would give), and a session not yet stored reports
    /// the deadlines it would start with. `None` only when neither applies.
    pub async fn expiry_date(&self) -> Result<Option<OffsetDateTime>> {
        let st = self.state().await?;
        let now = self.now();
        let policy = &self.inner.shared.policy;
        if let (Some(base), None) = (&st.base, &st.expiry) {
            return Ok(base.expires_at());
        }
        let idle = policy.idle_deadline(st.expiry(), now);
        let absolute = match &st.base {
            Some(base) => base.absolute_deadline(),
            None => policy
                .absolute_timeout
                .map(|d| crate::expiry::later(now, d)),
        };
        Ok(match (idle, absolute) {
            (Some(i), Some(a)) => Some(i.min(a)),
            (i, a) => i.or(a),
        })
    }

    /// tower-sessions' `expiry_age`: how long until the session ends if
    /// nothing else happens (zero once past), from
    /// [`expiry_date`](Self::expiry_date).
    ///
    /// ```
    /// # async fn f(session: keyfob::Session) -> Result<(), keyfob::Error> {
    /// if let Some(age) = session.expiry_age().await? {
    ///     assert!(!age.is_negative());
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn expiry_age(&self) -> Result<Option<time::Duration>> {
        let now = self.now();
        Ok(self
            .expiry_date()
            .await?
            .map(|at| (at - now).max(time::Duration::ZERO)))
    }

    /// tower-sessions' `insert_value`: sets `key` to a JSON value and returns
    /// the value it held before, if any.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::ReservedKey`] for a key in keyfob's `keyfob.` namespace.
    ///
    /// ```
    /// # async fn f(session: keyfob::Session) -> Result<(), keyfob::Error> {
    /// let old = session.insert_value("theme", serde_json::json!("dark")).await?;
    /// # let _ = old; Ok(()) }
    /// ```
    pub async fn insert_value(
        &self,
        key: &str,
        value: serde_json::Value,
    ) -> Result<Option<serde_json::Value>> {
        writable(key)?;
        let old = self.get_reserved(key).await?;
        self.insert_reserved(key, &value).await?;
        Ok(old)
    }

    /// When the session was created, or `None` for a session not yet stored.
    pub async fn created_at(&self) -> Result<Option<OffsetDateTime>> {
        Ok(self.state().await?.base.as_ref().map(|b| b.created()))
    }

    /// The owner recorded at login (see [`crate::auth::login`]).
    pub async fn owner(&self) -> Result<Option<String>> {
        Ok(self.state().await?.owner().map(str::to_owned))
    }

    #[cfg(feature = "auth")]
    pub(crate) fn user_slot(&self) -> &crate::auth::users::Slot {
        &self.inner.user
    }

    #[cfg(feature = "auth")]
    pub(crate) fn hints(&self) -> &crate::auth::client::Hints {
        &self.inner.hints
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.inner.shared
    }

    /// Loads the record now (the first access does this anyway).
    pub async fn load(&self) -> Result<()> {
        self.state().await.map(drop)
    }

    /// Writes this request's changes to the store now instead of after the
    /// handler; for handlers that must know the write is durable before they
    /// go on. The layer still sends the cookie.
    pub async fn save(&self) -> Result<()> {
        let mut st = self.state().await?;
        let out = self.commit(&mut st).await?;
        if !matches!(out, CookieOut::Keep) {
            st.cookie = Some(out);
        }
        Ok(())
    }

    pub(crate) fn was_accessed(&self) -> bool {
        self.inner.accessed.load(Ordering::Relaxed)
    }
}

/// Refuses a key of keyfob's own namespace on the public write paths.
fn writable(key: &str) -> Result<()> {
    if reserved::is_reserved(key) {
        return Err(Error::new(
            ErrorKind::ReservedKey,
            format!(
                "session key {key:?} is reserved: keys starting with `{}` belong to keyfob; \
                 pick another name (and never take key names from the client unchecked)",
                reserved::PREFIX
            ),
        ));
    }
    Ok(())
}

fn decode<T: DeserializeOwned>(key: &str, raw: Option<&str>) -> Option<T> {
    let raw = raw?;
    match serde_json::from_str(raw) {
        Ok(v) => Some(v),
        Err(err) => {
            tracing::warn!(key, error = %err, "keyfob: session value does not deserialize into the requested type; reading it as absent");
            None
        }
    }
}
