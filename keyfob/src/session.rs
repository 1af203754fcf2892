//! The [`Session`] handle and its change tracking.
//!
//! Rules:
//! - method names follow tower-sessions (`get`, `insert`, `remove`, `clear`,
//!   `delete`, `cycle_id`, `flush`, `id`, `expiry`, `set_expiry`, `save`,
//!   `load`), so migrating is mostly a change of `use` lines;
//! - the record is loaded lazily, at most once per request, on first use;
//! - the handle records what the request changes (set key, remove key,
//!   clear) and the layer sends only that change-set to the store, which
//!   applies it to the record it holds now;
//! - [`Key<T>`] constants carry the value type, so `session.get(USER)` cannot
//!   be read as the wrong type;
//! - a stored value that no longer deserializes into the requested type
//!   reads as absent, with a warning, instead of failing the request.
//!
//! Caveats: [`Session::delete`] deletes in the store at once (so a logout is
//! effective even if the response never completes); [`Session::id`] returns
//! the public [`Handle`], never the secret ID.
//!
//! ```
//! use axum::{routing::get, Router};
//! use keyfob::{Key, MemoryStore, Session, SessionLayer};
//!
//! const COUNTER: Key<usize> = Key::new("counter");
//!
//! async fn count(session: Session) -> Result<String, keyfob::Error> {
//!     let n = session.get(COUNTER).await?.unwrap_or(0) + 1;
//!     session.insert(COUNTER, n).await?;
//!     // session.insert(COUNTER, "three").await?; // does not compile: COUNTER holds a usize
//!     Ok(format!("{n}"))
//! }
//!
//! let app: Router = Router::new()
//!     .route("/count", get(count))
//!     .layer(SessionLayer::new(MemoryStore::new()));
//! ```

use std::{
    fmt,
    marker::PhantomData,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use serde::{de::DeserializeOwned, Serialize};
use serde_json::value::RawValue;
use time::OffsetDateTime;
use tokio::sync::{Mutex, MutexGuard};

use crate::{
    config::CookieConfig,
    error::{Error, ErrorKind, Result},
    expiry::{Clock, Expiry, Policy},
    id::{Handle, SessionId},
    keys::Keyring,
    record::{reserved, secs, ChangeSet, Data, Record, Update},
    store::{Created, SessionStore, Updated},
};
#[cfg(feature = "cookie-store")]
use crate::{config::MAX_SET_COOKIE, store::cookie::CookieStore};

/// A typed session key: a name and the type of the value stored under it.
///
/// ```
/// use keyfob::Key;
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct User { id: u64 }
///
/// const USER: Key<User> = Key::new("user");
/// assert_eq!(USER.name(), "user");
/// ```
pub struct Key<T> {
    name: &'static str,
    _type: PhantomData<fn() -> T>,
}

impl<T> Key<T> {
    /// A key named `name` holding values of type `T`.
    pub const fn new(name: &'static str) -> Self {
        Key {
            name,
            _type: PhantomData,
        }
    }

    /// The key's name in the session.
    pub const fn name(&self) -> &'static str {
        self.name
    }
}

impl<T> Clone for Key<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Key<T> {}

impl<T> fmt::Debug for Key<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({:?})", self.name)
    }
}

/// Something that names a session key holding a `T`: a string (any `T`, as
/// in tower-sessions) or a [`Key<T>`] (exactly `T`).
///
/// ```
/// use keyfob::{AsKey, Key};
///
/// fn name_of<T>(k: impl AsKey<T>) -> String { k.key_name().to_string() }
/// assert_eq!(name_of::<u8>("a"), "a");
/// assert_eq!(name_of(Key::<u8>::new("b")), "b");
/// ```
pub trait AsKey<T> {
    /// The key's name.
    fn key_name(&self) -> &str;
}

impl<T> AsKey<T> for &str {
    fn key_name(&self) -> &str {
        self
    }
}

impl<T> AsKey<T> for String {
    fn key_name(&self) -> &str {
        self
    }
}

impl<T> AsKey<T> for &String {
    fn key_name(&self) -> &str {
        self
    }
}

impl<T> AsKey<T> for Key<T> {
    fn key_name(&self) -> &str {
        self.name
    }
}

/// What the layer holds for every session: store, cookie and expiry settings.
pub(crate) struct Shared {
    /// The server-side store; for cookie sessions, their revocation store.
    pub(crate) store: Arc<dyn SessionStore>,
    pub(crate) cookie: CookieConfig,
    pub(crate) policy: Policy,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) save_on_server_error: bool,
    /// Session IDs carry a MAC under this keyring (server-side stores only).
    pub(crate) signed_ids: Option<Keyring>,
    /// Accept a tower-sessions cookie of a session imported by `migrate`, once.
    pub(crate) legacy_ids: bool,
    /// The most live sessions one owner may have (see `auth::login`).
    #[cfg_attr(not(feature = "auth"), allow(dead_code))]
    pub(crate) max_sessions_per_user: Option<usize>,
    /// Cookie sessions: the record lives in the cookie, sealed by this codec.
    #[cfg(feature = "cookie-store")]
    pub(crate) client: Option<CookieStore>,
}

impl Shared {
    /// Whether `store` keeps an owner index to list and revoke a user's
    /// sessions: every server-side store, and cookie sessions only with a
    /// revocation store.
    #[cfg_attr(not(feature = "auth"), allow(dead_code))]
    pub(crate) fn has_owner_index(&self) -> bool {
        #[cfg(feature = "cookie-store")]
        if let Some(client) = &self.client {
            return client.is_revocable();
        }
        true
    }
}

/// What the request's session cookie held, as the layer read it.
#[derive(Debug, Default)]
pub(crate) enum Incoming {
    #[default]
    None,
    /// A (verified, when IDs are signed) session ID; `stale` when its MAC
    /// verified under an old key, so the cookie must be re-issued.
    Id { id: SessionId, stale: bool },
    /// A tower-sessions cookie value (legacy IDs on): the handle of its imported record.
    Legacy(Handle),
    /// A cookie session's sealed value, opened on first access.
    #[cfg(feature = "cookie-store")]
    Sealed(Box<str>),
}

/// What the layer must do with the cookie after the request.
#[derive(Debug)]
pub(crate) enum CookieOut {
    Keep,
    Set {
        id: SessionId,
        max_age: Option<i64>,
    },
    /// A cookie session's new sealed value.
    #[cfg(feature = "cookie-store")]
    Sealed {
        value: String,
        max_age: Option<i64>,
    },
    Remove,
}

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
    fn lookup(&self, key: &str) -> Option<&RawValue> {
        match self.changes.lookup(key) {
            Some(v) => v,
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
            None => self.base.as_ref().and_then(|b| b.expiry),
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
    state: Mutex<State>,
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
                state: Mutex::new(state),
            }),
        }
    }

    fn now(&self) -> OffsetDateTime {
        self.inner.shared.clock.now()
    }

    /// Locks the state, loading the record first if this request has not yet.
    async fn state(&self) -> Result<MutexGuard<'_, State>> {
        self.inner.accessed.store(true, Ordering::Relaxed);
        let mut st = self.inner.state.lock().await;
        #[cfg(feature = "cookie-store")]
        if let (false, Some(client)) = (st.loaded, &self.inner.shared.client) {
            self.open_sealed(&mut st, client).await?;
        }
        if !st.loaded {
            if let Some(id) = &st.current {
                let handle = id.handle();
                let now = self.now();
                let found = self.inner.shared.store.load(&handle, now).await?;
                // The store must filter expired records; check again anyway,
                // since expiry is the server's to enforce whatever a store does.
                match found {
                    Some(record) if !record.is_expired(now) => st.base = Some(record),
                    found => {
                        // Only on this refused path: ask whether it was an
                        // expired session, for the security log.
                        let expired = found.is_some()
                            || self
                                .inner
                                .shared
                                .store
                                .holds_expired(&handle, now)
                                .await
                                .unwrap_or(false);
                        if expired {
                            tracing::info!(
                                event = "session.expired",
                                handle = %handle.short(),
                                "keyfob: expired session ID presented"
                            );
                        } else {
                            tracing::info!(
                                event = "session.unknown",
                                handle = %handle.short(),
                                "keyfob: unknown session ID presented"
                            );
                        }
                        st.current = None;
                    }
                }
            } else if let Some(handle) = st.legacy {
                self.load_legacy(&mut st, handle).await?;
            }
            st.loaded = true;
        }
        Ok(st)
    }

    /// Loads a record imported from tower-sessions under the handle of its old
    /// cookie. Only a record that still carries the import mark is accepted:
    /// the commit of this request moves it to a fresh ID and drops the mark,
    /// so the old cookie works exactly once.
    async fn load_legacy(&self, st: &mut State, handle: Handle) -> Result<()> {
        let now = self.now();
        let found = self.inner.shared.store.load(&handle, now).await?;
        let imported = found
            .filter(|r| !r.is_expired(now))
            .filter(|r| r.data.get(reserved::LEGACY).is_some());
        match imported {
            Some(record) => {
                st.base = Some(record);
                st.current = Some(SessionId::generate()?);
                st.changes.set(reserved::LEGACY, None);
                tracing::info!(event = "session.legacy", handle = %handle.short(), "keyfob: imported tower-sessions session presented; rotating it");
            }
            None => {
                tracing::info!(event = "session.unknown", handle = %handle.short(), "keyfob: unknown, expired or already rotated tower-sessions cookie presented");
                st.legacy = None;
            }
        }
        Ok(())
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
        let mut st = self.state().await?;
        st.changes.clear();
        if st.owner().is_some() {
            st.owner = Some(None);
        }
        Ok(())
    }

    /// True when the session holds no data.
    pub async fn is_empty(&self) -> Result<bool> {
        let st = self.state().await?;
        Ok(st.data().is_empty())
    }

    /// Deletes the session from the store now and removes the cookie.
    ///
    /// Any later write in this request starts a new session with a new ID.
    pub async fn delete(&self) -> Result<()> {
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

    /// Starts the session over under a new ID, as a login must: the stored
    /// record is deleted now (the old ID loads nothing, even if this response
    /// never arrives), and the data (when `keep_data`) is staged on a fresh
    /// session, created with this moment as its creation time and the start
    /// of its absolute deadline when the response is sent.
    #[cfg_attr(not(feature = "auth"), allow(dead_code))]
    pub(crate) async fn restart(&self, keep_data: bool) -> Result<()> {
        let (data, expiry) = {
            let st = self.state().await?;
            let data = if keep_data {
                st.data()
            } else {
                Data::default()
            };
            (data, st.expiry())
        };
        self.delete().await?;
        let mut st = self.state().await?;
        for (k, v) in data.entries() {
            st.changes.set(k, Some(v.to_owned()));
        }
        if expiry.is_some() {
            st.expiry = Some(expiry);
        }
        Ok(())
    }

    /// Gives the session a new ID, keeping its data; the old ID is retired
    /// when the response is sent. Call it on every privilege change (login).
    /// The absolute deadline does not move.
    pub async fn cycle_id(&self) -> Result<()> {
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

    /// This session's [`Expiry`] override, if one was set.
    pub async fn expiry(&self) -> Result<Option<Expiry>> {
        Ok(self.state().await?.expiry())
    }

    /// Overrides the layer's idle policy for this session (`None` restores it).
    pub async fn set_expiry(&self, expiry: Option<Expiry>) -> Result<()> {
        self.state().await?.expiry = Some(expiry);
        Ok(())
    }

    /// When the session will end if nothing else happens: the earlier of its
    /// idle and absolute deadlines, or `None` for a session not yet stored.
    pub async fn expiry_date(&self) -> Result<Option<OffsetDateTime>> {
        let st = self.state().await?;
        Ok(st.base.as_ref().and_then(|b| b.expires_at()))
    }

    /// tower-sessions' `expiry_age`: how long until the session ends if
    /// nothing else happens (zero once past), or `None` for a session not
    /// yet stored.
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

    #[cfg_attr(not(feature = "auth"), allow(dead_code))]
    pub(crate) async fn set_owner(&self, owner: Option<&str>) -> Result<()> {
        self.state().await?.owner = Some(owner.map(Into::into));
        Ok(())
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

    /// Called by the layer after the handler: saves, touches or does nothing.
    pub(crate) async fn finish(&self, server_error: bool) -> Result<CookieOut> {
        let mut st = self.inner.state.lock().await;
        if !st.loaded {
            // Untouched since an explicit `save` (which reset the state): send
            // the cookie that save decided on, if any.
            return Ok(st.cookie.take().unwrap_or(CookieOut::Keep));
        }
        let out = if server_error && !self.inner.shared.save_on_server_error {
            CookieOut::Keep
        } else {
            self.commit(&mut st).await?
        };
        Ok(match (out, st.cookie.take()) {
            (CookieOut::Keep, Some(earlier)) => earlier,
            (out, _) => out,
        })
    }

    /// Sends the pending change-set to the store and resets the state so the
    /// next access reloads.
    async fn commit(&self, st: &mut State) -> Result<CookieOut> {
        let shared = &*self.inner.shared;
        #[cfg(feature = "cookie-store")]
        if let Some(client) = &shared.client {
            return self.commit_sealed(st, client).await;
        }
        let now = self.now();
        let expiry = st.expiry();
        let browser_session = shared.policy.browser_session(expiry);
        let Some(id) = st.current.clone().filter(|_| st.base.is_some()) else {
            return self.create(st, now).await;
        };
        let base_seen = st.base.as_ref().map_or(0, |b| b.last_seen);
        let dirty = st.is_dirty();
        let touch_due = shared.policy.touch_due(expiry, base_seen, secs(now));
        let reissue = std::mem::take(&mut st.reissue);
        if !dirty && !touch_due && !reissue {
            return Ok(CookieOut::Keep);
        }
        let idle = shared.policy.idle_deadline(expiry, now).map(secs);
        // A new expiry may turn a persistent cookie into a browser-session
        // one: the browser only learns that from a fresh `Set-Cookie`.
        let expiry_changed = st.expiry.is_some();
        let rotate_to = st.rotate_to.take();
        // An imported tower-sessions record lives under its old cookie's hash;
        // this update moves it to `id` (or to `rotate_to`), which retires that cookie.
        let legacy = st.legacy.take();
        let rename_to = match (&rotate_to, legacy) {
            (Some(to), _) => Some(to.handle()),
            (None, Some(_)) => Some(id.handle()),
            (None, None) => None,
        };
        let absolute = st.base.as_ref().and_then(|b| b.absolute_deadline);
        // Drop our reference first, so a memory store can update in place;
        // hand it over to a store that writes by compare-and-swap on it.
        let base = st.base.take().filter(|_| shared.store.update_uses_base());
        let update = Update {
            changes: std::mem::take(&mut st.changes),
            seen: secs(now),
            idle_deadline: idle,
            owner: st.owner.take(),
            expiry: st.expiry.take(),
            rename_to,
            base,
        };
        st.loaded = false;
        let handle = legacy.unwrap_or_else(|| id.handle());
        match shared.store.update(&handle, &update, now).await? {
            Updated::Applied => {
                let rotated = rotate_to.is_some() || legacy.is_some();
                let new_id = rotate_to.unwrap_or(id);
                if rotated {
                    tracing::info!(
                        event = "session.rotated",
                        from = %handle.short(),
                        to = %new_id.handle().short(),
                        "keyfob: session ID rotated"
                    );
                }
                st.current = Some(new_id.clone());
                let max_age = cookie_max_age(idle, absolute, now);
                if browser_session && !rotated && !reissue && !expiry_changed {
                    Ok(CookieOut::Keep)
                } else {
                    Ok(CookieOut::Set {
                        id: new_id,
                        max_age: if browser_session { None } else { max_age },
                    })
                }
            }
            Updated::Gone => {
                // Deleted (logout, revocation), rotated by a concurrent request
                // (a double-submitted login) or expired while this request ran:
                // never write it back. Leave the cookie alone: the old ID loads
                // nothing anyway, and a removal could arrive after, and delete,
                // the cookie of the concurrent rotation.
                tracing::info!(
                    event = "session.interrupted",
                    handle = %handle.short(),
                    "keyfob: session ended during the request; its changes were dropped"
                );
                st.current = None;
                Ok(CookieOut::Keep)
            }
        }
    }

    async fn create(&self, st: &mut State, now: OffsetDateTime) -> Result<CookieOut> {
        let shared = &*self.inner.shared;
        let data = st.data();
        let owner = st.owner().map(Box::<str>::from);
        let expiry = st.expiry();
        if data.is_empty() && owner.is_none() {
            // Nothing to keep: no record, no cookie (and nothing to retire).
            st.changes = ChangeSet::default();
            st.rotate_to = None;
            st.owner = None;
            st.expiry = None;
            return Ok(CookieOut::Keep);
        }
        let idle = shared.policy.idle_deadline(expiry, now);
        let absolute = shared
            .policy
            .absolute_timeout
            .map(|d| crate::expiry::later(now, d));
        let mut record = Record::new(now, idle, absolute);
        record.data = data;
        record.owner = owner;
        record.expiry = expiry;
        let mut id = match st.rotate_to.take() {
            Some(id) => id,
            None => SessionId::generate()?,
        };
        let mut tries = 0;
        loop {
            let handle = id.handle();
            match shared.store.create(&handle, &record).await? {
                Created::Stored => {
                    tracing::info!(event = "session.created", handle = %handle.short(), "keyfob: session created");
                    break;
                }
                Created::Collision if tries < 3 => {
                    tries += 1;
                    id = SessionId::generate()?;
                }
                Created::Collision => {
                    return Err(Error::store_msg(
                        "could not find a free session ID after 4 tries",
                    ))
                }
            }
        }
        *st = State {
            current: Some(id.clone()),
            ..State::default()
        };
        let max_age = if shared.policy.browser_session(expiry) {
            None
        } else {
            cookie_max_age(record.idle_deadline, record.absolute_deadline, now)
        };
        Ok(CookieOut::Set { id, max_age })
    }
}

#[cfg(feature = "cookie-store")]
impl Session {
    /// Opens the presented sealed cookie: expired, forged or revoked → no session.
    async fn open_sealed(&self, st: &mut State, client: &CookieStore) -> Result<()> {
        st.loaded = true;
        let Some(value) = st.sealed.take() else {
            return Ok(());
        };
        let now = self.now();
        let name = &self.inner.shared.cookie.name;
        let Some((id, record, stale)) = client.open(name, &value, now) else {
            if client.was_expired(name, &value) {
                tracing::info!(
                    event = "session.expired",
                    "keyfob: expired cookie session refused"
                );
            } else {
                tracing::warn!(
                    event = "session.tampered",
                    "keyfob: cookie session refused (forged, tampered or sealed by another key)"
                );
            }
            return Ok(());
        };
        if client.is_revoked(&id, &record, now).await? {
            tracing::info!(event = "session.revoked", handle = %id.handle().short(), "keyfob: revoked cookie session presented");
            return Ok(());
        }
        st.current = Some(id);
        st.base = Some(Arc::new(record));
        st.reissue = stale;
        Ok(())
    }

    /// The cookie-session counterpart of `commit`: the new record is sealed
    /// into the cookie instead of being sent to a store.
    async fn commit_sealed(&self, st: &mut State, client: &CookieStore) -> Result<CookieOut> {
        let shared = &*self.inner.shared;
        let now = self.now();
        let expiry = st.expiry();
        let (id, base) = match (st.current.clone(), st.base.clone()) {
            (Some(id), Some(base)) => (id, base),
            _ => return self.create_sealed(st, client, now).await,
        };
        let touch_due = shared.policy.touch_due(expiry, base.last_seen, secs(now));
        if !st.is_dirty() && !touch_due && !st.reissue {
            return Ok(CookieOut::Keep);
        }
        // Logged out (or revoked) while this request ran: never re-issue it.
        if client.is_revoked(&id, &base, now).await? {
            *st = State {
                loaded: true,
                ..State::default()
            };
            return Ok(CookieOut::Remove);
        }
        let update = Update {
            changes: std::mem::take(&mut st.changes),
            seen: secs(now),
            idle_deadline: shared.policy.idle_deadline(expiry, now).map(secs),
            owner: st.owner.take(),
            expiry: st.expiry.take(),
            rename_to: None,
            base: None,
        };
        let mut record = (*base).clone();
        record.apply(&update);
        let was_owned = base.owner().is_some();
        let (new_id, new) = match st.rotate_to.take() {
            Some(new_id) => {
                let until = self.retire_until(Some(&record));
                client.retire(&id, was_owned, until, now).await?;
                (new_id, true)
            }
            None => (id, false),
        };
        self.seal_into(st, client, new_id, record, (new, was_owned), now)
            .await
    }

    /// The last instant a cookie of this session could still open: its
    /// absolute deadline, or else the latest idle deadline a re-issue could set.
    fn retire_until(&self, record: Option<&Record>) -> Option<i64> {
        let policy = &self.inner.shared.policy;
        let now = self.now();
        let sliding = policy
            .idle_timeout
            .map(|d| secs(crate::expiry::later(now, d)));
        match record.and_then(|r| r.absolute_deadline) {
            Some(abs) => Some(abs),
            None => match (record.and_then(Record::expires_secs), sliding) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            },
        }
    }

    async fn create_sealed(
        &self,
        st: &mut State,
        client: &CookieStore,
        now: OffsetDateTime,
    ) -> Result<CookieOut> {
        let shared = &*self.inner.shared;
        let data = st.data();
        let owner = st.owner().map(Box::<str>::from);
        let expiry = st.expiry();
        if data.is_empty() && owner.is_none() {
            st.changes = ChangeSet::default();
            st.rotate_to = None;
            st.owner = None;
            st.expiry = None;
            return Ok(CookieOut::Keep);
        }
        let idle = shared.policy.idle_deadline(expiry, now);
        let absolute = shared
            .policy
            .absolute_timeout
            .map(|d| crate::expiry::later(now, d));
        let mut record = Record::new(now, idle, absolute);
        record.data = data;
        record.owner = owner;
        record.expiry = expiry;
        let id = match st.rotate_to.take() {
            Some(id) => id,
            None => SessionId::generate()?,
        };
        self.seal_into(st, client, id, record, (true, false), now)
            .await
    }

    /// Seals `record`, refusing a cookie past 4096 bytes, brings its entry
    /// in the revocation store in step (`new`: under a fresh ID; `was_owned`:
    /// the session had an owner before this request), and makes it the
    /// state's current record.
    async fn seal_into(
        &self,
        st: &mut State,
        client: &CookieStore,
        id: SessionId,
        record: Record,
        (new, was_owned): (bool, bool),
        now: OffsetDateTime,
    ) -> Result<CookieOut> {
        let shared = &*self.inner.shared;
        let value = client.seal(&shared.cookie.name, &id, &record)?;
        let max_age = if shared.policy.browser_session(record.expiry) {
            None
        } else {
            cookie_max_age(record.idle_deadline, record.absolute_deadline, now)
        };
        let line = shared.cookie.set_cookie(&value, max_age).len();
        if line > MAX_SET_COOKIE {
            return Err(Error::new(
                ErrorKind::TooLarge,
                format!(
                    "the session cookie would be {line} bytes, over the {MAX_SET_COOKIE}-byte limit \
                     of browsers: keep less in a cookie session, or use a server-side store"
                ),
            ));
        }
        if !client.sync(&id, &record, new, was_owned, now).await? {
            // Revoked while this request ran: never re-issue it.
            *st = State {
                loaded: true,
                ..State::default()
            };
            return Ok(CookieOut::Remove);
        }
        tracing::debug!(event = "session.sealed", handle = %id.handle().short(), bytes = line, "keyfob: cookie session sealed");
        *st = State {
            loaded: true,
            current: Some(id),
            base: Some(Arc::new(record)),
            ..State::default()
        };
        Ok(CookieOut::Sealed { value, max_age })
    }
}

fn cookie_max_age(idle: Option<i64>, absolute: Option<i64>, now: OffsetDateTime) -> Option<i64> {
    let deadline = match (idle, absolute) {
        (Some(i), Some(a)) => Some(i.min(a)),
        (i, a) => i.or(a),
    }?;
    Some((deadline - secs(now)).max(0))
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

fn decode<T: DeserializeOwned>(key: &str, raw: Option<&RawValue>) -> Option<T> {
    let raw = raw?;
    match serde_json::from_str(raw.get()) {
        Ok(v) => Some(v),
        Err(err) => {
            tracing::warn!(key, error = %err, "keyfob: session value does not deserialize into the requested type; reading it as absent");
            None
        }
    }
}
