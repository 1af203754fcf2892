//! Client-side sessions: the whole record sealed inside the session cookie.
//!
//! (The rules, caveats and examples are on the public type below,
//! where docs.rs shows them: this module is private.)

use std::{fmt, sync::Arc};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{
    error::{Error, ErrorKind, Result},
    expiry::secs,
    id::{Handle, SessionId},
    keys::{Keyring, Purpose},
    record::{Record, Update},
    store::{BoxFuture, Created, SessionStore, Updated},
};

/// Sessions kept in the cookie itself; give it to
/// [`SessionLayer::cookie`](crate::SessionLayer::cookie). Cheap to clone:
/// keep a clone to call [`revoke_owner`](Self::revoke_owner).
///
/// ```
/// use keyfob::{keys::Keyring, CookieStore, MemoryStore};
///
/// let store = CookieStore::new(Keyring::generate().unwrap())
///     .with_revocation(MemoryStore::new());
/// assert!(store.is_revocable());
/// ```
///
/// Rules:
/// - the cookie carries the session ID and its [`Record`],
///   encrypted with AES-256-GCM under a key derived from the
///   [`Keyring`] for this purpose and cookie name, with a fresh random nonce on
///   every write ([`CookieStore::new`]); or only signed with HMAC-SHA256, so
///   the client can read but not change it ([`CookieStore::signed`]);
/// - the idle and absolute deadlines live inside the sealed value and the
///   server checks them on every request: replaying an old cookie byte for
///   byte fails once its deadline has passed, whatever its `Max-Age` said;
/// - every change re-issues the cookie, and so does a read once the touch
///   interval has passed (the idle deadline slides) or when the cookie was
///   sealed under an old key of the ring (rotation);
/// - a record whose `Set-Cookie` line would exceed 4096 bytes is an
///   [`ErrorKind::TooLarge`] error when it is
///   saved: the response is `500 session too large to store` and no
///   `Set-Cookie` is sent, so no truncated or oversized cookie ever leaves;
/// - logout ([`Session::delete`](crate::Session::delete)) clears the cookie.
///
/// Caveats, stated plainly:
/// - **Without a revocation store, a cookie session cannot be revoked.** A
///   copy of the cookie taken before a logout, a password change or an ID
///   rotation keeps working until its own idle or absolute deadline, and a
///   user's sessions cannot be listed or revoked: [`auth::list_sessions`],
///   [`auth::revoke`] (of another session), [`auth::revoke_others`] and
///   [`auth::revoke_all`] fail with [`ErrorKind::Unsupported`] rather than
///   answer "none" while the sessions go on working.
/// - **An older copy of the cookie can be replayed to roll the session's data
///   back** (a counter goes down, a flag set since comes back unset), until
///   that copy's own deadlines pass, with or without a revocation store. A
///   per-session version could refuse older copies, but concurrent requests
///   of one browser legitimately carry the copy that was current when they
///   left, so refusing them would log users out at random. Keep nothing in a
///   cookie session whose rollback matters (balances, one-time grants,
///   "already used" marks): keep it server-side.
/// - Concurrent requests of one session each carry their own copy, so the
///   last response wins: two requests writing different keys at the same
///   time lose one write.
///
/// With a server-side store given to [`CookieStore::with_revocation`]:
/// - every session with an owner (a logged-in user, see [`auth::login`]) has
///   an entry in that store under its handle: owner, created, last seen and
///   deadlines, never the data. The session is live only while the entry is,
///   so logout, ID rotation, [`auth::revoke`], [`auth::revoke_others`],
///   [`auth::revoke_all`] and [`CookieStore::revoke_owner`] end every copy of
///   the cookie, and [`auth::list_sessions`] lists them like any store's. The
///   entry is written when the cookie is (a change, or a touch once per touch
///   interval), so a logged-in cookie session costs the store what a
///   server-side one does, minus the data;
/// - a session without an owner keeps no entry (anonymous traffic writes
///   nothing to the store); its logout and rotation leave a small mark under
///   its handle until its last possible deadline, which refuses the old copies;
/// - a request that uses the session reads the store once when it opens the
///   cookie and once more before it re-issues it, so a request still in
///   flight when its session is logged out or revoked does not re-issue it.
///
/// What the revocation store must be: its entries and marks are what makes a
/// logged-out cookie stop working, so they must outlive the process and be
/// shared by every replica that accepts the cookie (SQLite on a persistent
/// disk for one host; PostgreSQL, MySQL or Redis for several). An in-process
/// [`MemoryStore`](crate::MemoryStore) forgets them on restart, and each
/// replica would keep its own: fine for tests, wrong in production.
///
/// [`auth::login`]: crate::auth::login
/// [`auth::list_sessions`]: crate::auth::list_sessions
/// [`auth::revoke`]: crate::auth::revoke
/// [`auth::revoke_others`]: crate::auth::revoke_others
/// [`auth::revoke_all`]: crate::auth::revoke_all
///
/// ```
/// use axum::{routing::get, Router};
/// use keyfob::{keys::Keyring, CookieStore, Session, SessionLayer};
///
/// let keys = Keyring::generate().unwrap();
/// let layer = SessionLayer::cookie(CookieStore::new(keys));
/// let app: Router = Router::new()
///     .route("/", get(|s: Session| async move {
///         s.insert("theme", "dark").await.map(|_| "ok")
///     }))
///     .layer(layer);
///
/// // Rejected: a key too short to seal anything.
/// assert!(Keyring::new(b"short").is_err());
/// ```
#[derive(Clone)]
pub struct CookieStore {
    keyring: Keyring,
    encrypt: bool,
    revocation: Arc<dyn SessionStore>,
    revocable: bool,
}

impl fmt::Debug for CookieStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CookieStore")
            .field("encrypt", &self.encrypt)
            .field("revocable", &self.revocable)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize, Deserialize)]
struct Sealed {
    #[serde(rename = "k")]
    id: String,
    #[serde(rename = "r")]
    record: Record,
}

impl CookieStore {
    /// Sessions encrypted (AES-256-GCM) into the cookie: the client can
    /// neither read nor change them.
    pub fn new(keyring: Keyring) -> Self {
        CookieStore {
            keyring,
            encrypt: true,
            revocation: Arc::new(Unrevocable),
            revocable: false,
        }
    }

    /// Sessions signed (HMAC-SHA256) into the cookie: readable by the client
    /// (base64url JSON), never changeable. Only for data that is not secret.
    ///
    /// ```
    /// let store = keyfob::CookieStore::signed(keyfob::keys::Keyring::generate().unwrap());
    /// # let _ = store;
    /// ```
    pub fn signed(keyring: Keyring) -> Self {
        CookieStore {
            encrypt: false,
            ..CookieStore::new(keyring)
        }
    }

    /// Keeps revocation marks in `store` (any server-side store), so logout,
    /// ID rotation and [`revoke_owner`](Self::revoke_owner) end cookies that
    /// were already issued. Default none: see the module caveats.
    #[must_use]
    pub fn with_revocation(mut self, store: impl SessionStore) -> Self {
        self.revocation = Arc::new(store);
        self.revocable = true;
        self
    }

    /// True when a revocation store was given.
    pub fn is_revocable(&self) -> bool {
        self.revocable
    }

    /// The store that keeps revocation marks (an inert one when none was given).
    pub(crate) fn revocation(&self) -> &Arc<dyn SessionStore> {
        &self.revocation
    }

    /// The same codec with its revocation store under the layer's time
    /// limit (see [`store::timeout`](super::timeout)).
    pub(crate) fn time_limited(mut self, limit: Option<std::time::Duration>) -> Self {
        if self.revocable {
            self.revocation = Arc::new(super::timeout::Timed::new(self.revocation, limit));
        }
        self
    }

    /// Ends every cookie session of `owner` (an administrator disabling an
    /// account); returns how many ended. [`auth::revoke_all_of`] over
    /// [`SessionLayer::store`](crate::SessionLayer::store) does the same.
    ///
    /// [`auth::revoke_all_of`]: crate::auth::revoke_all_of
    ///
    /// # Errors
    /// [`ErrorKind::Unsupported`] without a revocation store; the store's
    /// error when it fails.
    ///
    /// ```
    /// # let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    /// # rt.block_on(async {
    /// use keyfob::{keys::Keyring, CookieStore};
    /// let store = CookieStore::new(Keyring::generate().unwrap());
    /// // Rejected: nowhere to keep the entries.
    /// assert!(store.revoke_owner("alice").await.is_err());
    /// // Allowed: with a revocation store.
    /// let store = store.with_revocation(keyfob::MemoryStore::new());
    /// assert_eq!(store.revoke_owner("alice").await.unwrap(), 0);
    /// # });
    /// ```
    pub async fn revoke_owner(&self, owner: &str) -> Result<u64> {
        self.revocation.delete_by_owner(owner, None).await
    }

    /// Seals `record` under `id` for the cookie `name`.
    pub(crate) fn seal(&self, name: &str, id: &SessionId, record: &Record) -> Result<String> {
        let json = serde_json::to_vec(&Sealed {
            id: id.encode(),
            record: record.clone(),
        })
        .map_err(|e| Error::with_source(ErrorKind::Serialize, e))?;
        let deadline = record.expires_secs();
        if self.encrypt {
            self.keyring
                .encrypt_for(Purpose::SealedSession, name, &json, deadline)
        } else {
            self.keyring
                .sign_for(Purpose::SignedSession, name, &json, deadline)
        }
    }

    /// The ID and record sealed in a cookie value, and whether it was sealed
    /// under an old key; `None` for anything that does not open or has expired.
    pub(crate) fn open(
        &self,
        name: &str,
        value: &str,
        now: OffsetDateTime,
    ) -> Option<(SessionId, Record, bool)> {
        let opened = if self.encrypt {
            self.keyring
                .decrypt_for(Purpose::SealedSession, name, value, now)
        } else {
            self.keyring
                .verify_for(Purpose::SignedSession, name, value, now)
        }?;
        let sealed: Sealed = serde_json::from_slice(opened.value()).ok()?;
        let id = SessionId::parse(sealed.id.as_bytes())?;
        (!sealed.record.is_expired(now)).then_some((id, sealed.record, opened.is_stale()))
    }

    /// Why [`open`](Self::open) refused `value`: `true` when it is authentic
    /// but past its deadline, `false` when forged, tampered with or sealed
    /// under a key this ring does not hold. For the security log only.
    pub(crate) fn was_expired(&self, name: &str, value: &str) -> bool {
        let epoch = OffsetDateTime::UNIX_EPOCH;
        let opened = if self.encrypt {
            self.keyring
                .decrypt_for(Purpose::SealedSession, name, value, epoch)
        } else {
            self.keyring
                .verify_for(Purpose::SignedSession, name, value, epoch)
        };
        opened.is_some_and(|o| serde_json::from_slice::<Sealed>(o.value()).is_ok())
    }

    /// True when the session sealed as `record` under `id` no longer counts:
    /// an owned session whose entry is gone (logout, rotation, revocation),
    /// or an anonymous one that was retired.
    pub(crate) async fn is_revoked(
        &self,
        id: &SessionId,
        record: &Record,
        now: OffsetDateTime,
    ) -> Result<bool> {
        if !self.revocable {
            return Ok(false);
        }
        let entry = self.revocation.load(&id.handle(), now).await?;
        Ok(match record.owner() {
            Some(owner) => entry.is_none_or(|e| e.owner() != Some(owner)),
            // An anonymous session keeps no entry: anything there is a retire mark.
            None => entry.is_some(),
        })
    }

    /// Ends the session `id` (logout, or the old ID of a rotation): deletes
    /// the entry of an owned session, or marks an anonymous one as retired
    /// until `until` (its last possible deadline). `false` when an owned
    /// session's entry was already gone: it had been revoked.
    pub(crate) async fn retire(
        &self,
        id: &SessionId,
        owned: bool,
        until: Option<i64>,
        now: OffsetDateTime,
    ) -> Result<bool> {
        if !self.revocable {
            return Ok(true);
        }
        if owned {
            return self.revocation.delete(&id.handle()).await;
        }
        // A deadline is always set (the layer refuses a policy without one);
        // fall back to a day so a mark can never live forever.
        let until = until.unwrap_or(secs(now) + 86_400).max(secs(now) + 1);
        let mark = Record::new(now, None, Some(crate::expiry::instant(until)));
        self.revocation
            .create(&id.handle(), &mark)
            .await
            .map(|_| true)
    }

    /// Keeps the entry of session `id` in step with the `record` about to be
    /// sealed: created for a new owned session, refreshed (last seen, idle
    /// deadline) for one re-issued, deleted when the session lost its owner
    /// (`Session::clear`). `false` when the entry of an owned session was
    /// gone (revoked while this request ran): the cookie must not be issued.
    pub(crate) async fn sync(
        &self,
        id: &SessionId,
        record: &Record,
        new: bool,
        was_owned: bool,
        now: OffsetDateTime,
    ) -> Result<bool> {
        if !self.revocable {
            return Ok(true);
        }
        let handle = id.handle();
        match (record.owner(), new) {
            (Some(_), true) => {
                let entry = Record {
                    data: crate::record::Data::default(),
                    expiry: None,
                    ..record.clone()
                };
                match self.revocation.create(&handle, &entry).await? {
                    Created::Stored => Ok(true),
                    Created::Collision => Err(Error::store_msg(
                        "a cookie session's entry already exists under a fresh ID",
                    )),
                }
            }
            (Some(_), false) => {
                let update = Update {
                    changes: crate::record::ChangeSet::default(),
                    seen: record.last_seen,
                    idle_deadline: record.idle_deadline.get(),
                    owner: None,
                    expiry: None,
                    rename_to: None,
                    base: None,
                };
                let updated = self.revocation.update(&handle, &update, now).await?;
                Ok(updated == Updated::Applied)
            }
            (None, false) if was_owned => self.revocation.delete(&handle).await.map(|_| true),
            (None, _) => Ok(true),
        }
    }
}

/// The store of a cookie layer without a revocation store: keeps nothing.
struct Unrevocable;

impl SessionStore for Unrevocable {
    fn load<'a>(
        &'a self,
        _: &'a Handle,
        _: OffsetDateTime,
    ) -> BoxFuture<'a, Result<Option<Arc<Record>>>> {
        Box::pin(async { Ok(None) })
    }
    fn create<'a>(&'a self, _: &'a Handle, _: &'a Record) -> BoxFuture<'a, Result<Created>> {
        Box::pin(async { Ok(Created::Stored) })
    }
    fn update<'a>(
        &'a self,
        _: &'a Handle,
        _: &'a Update,
        _: OffsetDateTime,
    ) -> BoxFuture<'a, Result<Updated>> {
        Box::pin(async { Ok(Updated::Gone) })
    }
    fn delete<'a>(&'a self, _: &'a Handle) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async { Ok(false) })
    }
    fn delete_expired(&self, _: OffsetDateTime, _: usize) -> BoxFuture<'_, Result<u64>> {
        Box::pin(async { Ok(0) })
    }
    // No owner index: the trait's defaults answer `ErrorKind::Unsupported`.
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::tests::{key, tampered};
    use time::Duration;

    fn record(now: OffsetDateTime) -> Record {
        let mut r = Record::new(
            now,
            Some(now + Duration::hours(1)),
            Some(now + Duration::hours(8)),
        );
        r.data
            .set("user", &serde_json::value::to_raw_value(&"alice").unwrap());
        r
    }

    #[test]
    fn tamper_matrix_reads_every_cookie_session_variant_as_absent() {
        let now = OffsetDateTime::now_utc();
        for store in [
            CookieStore::new(Keyring::new(key(1)).unwrap()),
            CookieStore::signed(Keyring::new(key(1)).unwrap()),
        ] {
            let id = SessionId::generate().unwrap();
            let value = store.seal("id", &id, &record(now)).unwrap();
            let (back, rec, stale) = store.open("id", &value, now).unwrap();
            assert!(back == id && !stale && rec.data.get("user").is_some());
            for case in tampered(&value) {
                assert!(store.open("id", &case, now).is_none(), "{case:?}");
            }
            assert!(store.open("sid", &value, now).is_none(), "another name");
            let other = CookieStore::new(Keyring::new(key(2)).unwrap());
            assert!(other.open("id", &value, now).is_none(), "another key");
        }
        // Sealed and signed values never open as each other.
        let keys = Keyring::new(key(1)).unwrap();
        let id = SessionId::generate().unwrap();
        let sealed = CookieStore::new(keys.clone())
            .seal("id", &id, &record(now))
            .unwrap();
        assert!(CookieStore::signed(keys).open("id", &sealed, now).is_none());
    }

    #[cfg(feature = "memory")]
    #[tokio::test]
    async fn retiring_an_owned_session_whose_entry_is_gone_reports_it_revoked() {
        // A rotation racing a revocation: the old entry went between the
        // request's check and its retire, so no new entry may be created.
        let now = OffsetDateTime::now_utc();
        let store = CookieStore::new(Keyring::new(key(1)).unwrap())
            .with_revocation(crate::MemoryStore::new());
        let id = SessionId::generate().unwrap();
        let mut owned = record(now);
        owned.owner = Some("u1".into());
        assert!(store.sync(&id, &owned, true, false, now).await.unwrap());
        assert!(!store.is_revoked(&id, &owned, now).await.unwrap());
        assert_eq!(store.revoke_owner("u1").await.unwrap(), 1);
        assert!(store.is_revoked(&id, &owned, now).await.unwrap());
        assert!(!store.retire(&id, true, None, now).await.unwrap());
        // An anonymous session is retired by a mark, whatever was there.
        let anon = SessionId::generate().unwrap();
        assert!(store.retire(&anon, false, None, now).await.unwrap());
        assert!(store.is_revoked(&anon, &record(now), now).await.unwrap());
    }

    #[test]
    fn sealed_session_past_a_deadline_does_not_open() {
        let now = OffsetDateTime::now_utc();
        let store = CookieStore::new(Keyring::new(key(1)).unwrap());
        let value = store
            .seal("id", &SessionId::generate().unwrap(), &record(now))
            .unwrap();
        assert!(store
            .open("id", &value, now + Duration::minutes(59))
            .is_some());
        assert!(store
            .open("id", &value, now + Duration::minutes(60))
            .is_none());
    }

    #[test]
    fn session_sealed_under_an_old_key_opens_as_stale() {
        let now = OffsetDateTime::now_utc();
        let old = CookieStore::new(Keyring::new(key(1)).unwrap());
        let value = old
            .seal("id", &SessionId::generate().unwrap(), &record(now))
            .unwrap();
        let rotated = CookieStore::new(Keyring::from_keys([key(2), key(1)]).unwrap());
        assert!(rotated.open("id", &value, now).unwrap().2);
        let retired = CookieStore::new(Keyring::new(key(2)).unwrap());
        assert!(retired.open("id", &value, now).is_none());
    }
}
