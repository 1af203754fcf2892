//! Client-side sessions: the whole record sealed inside the session cookie.
//!
//! Rules:
//! - the cookie carries the session ID and its [`Record`],
//!   encrypted with AES-256-GCM under a key derived from the
//!   [`Keyring`] for this purpose and cookie name, with a fresh random nonce on
//!   every write ([`CookieStore::new`]); or only signed with HMAC-SHA256, so
//!   the client can read but not change it ([`CookieStore::signed`]);
//! - the idle and absolute deadlines live inside the sealed value and the
//!   server checks them on every request: replaying an old cookie byte for
//!   byte fails once its deadline has passed, whatever its `Max-Age` said;
//! - every change re-issues the cookie, and so does a read once the touch
//!   interval has passed (the idle deadline slides) or when the cookie was
//!   sealed under an old key of the ring (rotation);
//! - a record whose `Set-Cookie` line would exceed 4096 bytes is an
//!   [`ErrorKind::TooLarge`] error when it is
//!   saved: the response is `500 session too large to store` and no
//!   `Set-Cookie` is sent, so no truncated or oversized cookie ever leaves;
//! - logout ([`Session::delete`](crate::Session::delete)) clears the cookie.
//!
//! Caveats, stated plainly: **without a revocation store, a cookie session
//! cannot be revoked.** A copy of the cookie taken before a logout, a
//! password change or an ID rotation keeps working until its own idle or
//! absolute deadline. Concurrent requests of one session each carry their own
//! copy, so the last response wins: two requests writing different keys at the
//! same time lose one write. The owner index (listing a user's sessions) does
//! not exist.
//!
//! With a server-side store given to [`CookieStore::with_revocation`]:
//! logout and ID rotation record the retired session ID (by its hash, until
//! its deadline), [`CookieStore::revoke_owner`] records "every session of this
//! owner created up to now is revoked", and every request that uses the
//! session checks both, one or two small store reads. A request still in
//! flight when its session is logged out does not re-issue it.
//!
//! ```
//! use axum::{routing::get, Router};
//! use keyfob::{keys::Keyring, CookieStore, Session, SessionLayer};
//!
//! let keys = Keyring::generate().unwrap();
//! let layer = SessionLayer::cookie(CookieStore::new(keys));
//! let app: Router = Router::new()
//!     .route("/", get(|s: Session| async move {
//!         s.insert("theme", "dark").await.map(|_| "ok")
//!     }))
//!     .layer(layer);
//!
//! // Rejected: a key too short to seal anything.
//! assert!(Keyring::new(b"short").is_err());
//! ```

use std::{fmt, sync::Arc};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::{
    error::{Error, ErrorKind, Result},
    id::{Handle, SessionId},
    keys::{Keyring, Purpose},
    record::{secs, Record, Update},
    store::{BoxFuture, Created, OwnedSession, SessionStore, Updated},
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

    /// Revokes every cookie session of `owner` created at or before `now`
    /// (a user's "log out everywhere", a password change). Precise to the second.
    ///
    /// # Errors
    /// [`ErrorKind::Config`] without a revocation
    /// store; the store's error when it fails.
    ///
    /// ```
    /// # let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    /// # rt.block_on(async {
    /// use keyfob::{keys::Keyring, CookieStore};
    /// let store = CookieStore::new(Keyring::generate().unwrap());
    /// let now = time::OffsetDateTime::now_utc();
    /// // Rejected: nowhere to keep the mark.
    /// assert!(store.revoke_owner("alice", now).await.is_err());
    /// // Allowed: with a revocation store.
    /// let store = store.with_revocation(keyfob::MemoryStore::new());
    /// store.revoke_owner("alice", now).await.unwrap();
    /// # });
    /// ```
    pub async fn revoke_owner(&self, owner: &str, now: OffsetDateTime) -> Result<()> {
        if !self.revocable {
            return Err(Error::config(
                "cookie sessions cannot be revoked without a revocation store: \
                 add `CookieStore::with_revocation(store)`",
            ));
        }
        let handle = owner_handle(owner);
        let mark = Record::new(now, None, None);
        // Replace any earlier mark: the latest instant wins.
        self.revocation.delete(&handle).await?;
        match self.revocation.create(&handle, &mark).await? {
            Created::Stored | Created::Collision => Ok(()),
        }
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

    /// True when `id` was retired or its owner revoked after it was created.
    pub(crate) async fn is_revoked(
        &self,
        id: &SessionId,
        record: &Record,
        now: OffsetDateTime,
    ) -> Result<bool> {
        if !self.revocable {
            return Ok(false);
        }
        if self.revocation.load(&id.handle(), now).await?.is_some() {
            return Ok(true);
        }
        if let Some(owner) = record.owner() {
            if let Some(mark) = self.revocation.load(&owner_handle(owner), now).await? {
                return Ok(record.created <= mark.created);
            }
        }
        Ok(false)
    }

    /// Records that `id` is retired until `until` (its last possible deadline).
    pub(crate) async fn retire(
        &self,
        id: &SessionId,
        until: Option<i64>,
        now: OffsetDateTime,
    ) -> Result<()> {
        if !self.revocable {
            return Ok(());
        }
        // A deadline is always set (the layer refuses a policy without one);
        // fall back to a day so a mark can never live forever.
        let until = until.unwrap_or(secs(now) + 86_400).max(secs(now) + 1);
        let mark = Record::new(now, None, Some(crate::record::instant(until)));
        self.revocation.create(&id.handle(), &mark).await.map(drop)
    }
}

/// Where the "revoked before" mark of an owner lives; never a session handle,
/// since handles are hashes of random IDs and this one hashes a label.
fn owner_handle(owner: &str) -> Handle {
    let mut h = Sha256::new();
    h.update(b"keyfob cookie-store revoked-owner\0");
    h.update(owner.as_bytes());
    Handle::from_bytes(h.finalize().into())
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
    fn list_by_owner<'a>(
        &'a self,
        _: &'a str,
        _: OffsetDateTime,
    ) -> BoxFuture<'a, Result<Vec<OwnedSession>>> {
        Box::pin(async { Ok(Vec::new()) })
    }
    fn delete_by_owner<'a>(
        &'a self,
        _: &'a str,
        _: Option<&'a Handle>,
    ) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async { Ok(0) })
    }
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
            .set("user", serde_json::value::to_raw_value(&"alice").unwrap());
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
