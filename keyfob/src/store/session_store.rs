//! The [`SessionStore`] trait: what a backend must do to keep sessions.

use std::sync::Arc;

use time::OffsetDateTime;

use super::{BoxFuture, Created, OwnedSession, Updated};
use crate::{
    error::Result,
    id::Handle,
    record::{Record, Update},
};

/// A backend that keeps session records.
///
/// Five required methods, each one atomic on the backend: [`load`](Self::load),
/// [`create`](Self::create), [`update`](Self::update) (apply the change-set
/// with [`Record::apply`], or write just [`Update::changes`]),
/// [`delete`](Self::delete) and [`delete_expired`](Self::delete_expired).
/// The owner index ([`list_by_owner`](Self::list_by_owner),
/// [`delete_by_owner`](Self::delete_by_owner)), which "your sessions" and
/// "log out everywhere" need, is optional. Return
/// [`Error::store`](crate::Error::store) for backend failures.
///
/// ```
/// use keyfob::{MemoryStore, SessionStore, Handle, Record, store::Created};
/// use time::OffsetDateTime;
///
/// # tokio_test();
/// # fn tokio_test() {
/// # let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
/// # rt.block_on(async {
/// let store = MemoryStore::new();
/// let handle = Handle::from_bytes([1; 32]);
/// let now = OffsetDateTime::now_utc();
/// let record = Record::new(now, None, None);
/// assert_eq!(store.create(&handle, &record).await.unwrap(), Created::Stored);
/// assert!(store.load(&handle, now).await.unwrap().is_some());
/// # });
/// # }
/// ```
pub trait SessionStore: Send + Sync + 'static {
    /// The live record with this handle, or `None` (unknown or expired).
    fn load<'a>(
        &'a self,
        handle: &'a Handle,
        now: OffsetDateTime,
    ) -> BoxFuture<'a, Result<Option<Arc<Record>>>>;

    /// Stores a new record unless a live record already has the handle.
    fn create<'a>(
        &'a self,
        handle: &'a Handle,
        record: &'a Record,
    ) -> BoxFuture<'a, Result<Created>>;

    /// Applies `update` to the current live record, atomically, and moves it
    /// to [`Update::rename_to`] when set (the old handle then loads nothing).
    fn update<'a>(
        &'a self,
        handle: &'a Handle,
        update: &'a Update,
        now: OffsetDateTime,
    ) -> BoxFuture<'a, Result<Updated>>;

    /// Deletes the record; `true` when there was one.
    fn delete<'a>(&'a self, handle: &'a Handle) -> BoxFuture<'a, Result<bool>>;

    /// Deletes up to `batch` expired records; returns how many it deleted.
    fn delete_expired(&self, now: OffsetDateTime, batch: usize) -> BoxFuture<'_, Result<u64>>;

    /// The owner index, optional: the live sessions recorded for `owner`
    /// (see [`crate::auth`] login), at most `limit` of them (which ones,
    /// when there are more, is the store's choice), so a listing never grows
    /// with what one user piled up. The default keeps no index and answers
    /// [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported): listing and
    /// revoking a user's sessions then fail loudly instead of finding none.
    fn list_by_owner<'a>(
        &'a self,
        owner: &'a str,
        now: OffsetDateTime,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<OwnedSession>>> {
        let _ = (owner, now, limit);
        Box::pin(std::future::ready(Err(
            crate::error::Error::no_owner_index(),
        )))
    }

    /// The owner index, optional: deletes every session of `owner` except
    /// `keep`; returns how many it deleted. The default answers
    /// [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported), as
    /// [`list_by_owner`](Self::list_by_owner) does.
    fn delete_by_owner<'a>(
        &'a self,
        owner: &'a str,
        keep: Option<&'a Handle>,
    ) -> BoxFuture<'a, Result<u64>> {
        let _ = (owner, keep);
        Box::pin(std::future::ready(Err(
            crate::error::Error::no_owner_index(),
        )))
    }

    /// Whether [`update`](Self::update) wants the record the request loaded
    /// passed along with the change-set ([`Update::base`]). A store that
    /// writes by compare-and-swap on the record's [version](Record::version)
    /// (MySQL) then saves in one round trip instead of reading the row again.
    /// Default `false`, which lets the memory store update its record in place.
    fn update_uses_base(&self) -> bool {
        false
    }

    /// A short name of the backend (`memory`, `sqlite`, `postgres`, `mysql`,
    /// `redis`, `cached`, `tower-sessions`) for the `store` label of keyfob's metrics and
    /// spans. Default `custom`.
    ///
    /// ```
    /// use keyfob::{MemoryStore, SessionStore};
    /// assert_eq!(MemoryStore::new().kind(), "memory");
    /// ```
    fn kind(&self) -> &'static str {
        "custom"
    }

    /// True when the store still keeps an *expired* record with this handle
    /// (one [`delete_expired`](Self::delete_expired) has not removed yet).
    ///
    /// Asked only after [`load`](Self::load) found nothing, to log
    /// `session.expired` rather than `session.unknown`; it never makes a
    /// session load. The default answers `false` (logged as unknown).
    fn holds_expired<'a>(
        &'a self,
        handle: &'a Handle,
        now: OffsetDateTime,
    ) -> BoxFuture<'a, Result<bool>> {
        let _ = (handle, now);
        Box::pin(std::future::ready(Ok(false)))
    }
}

impl<S: SessionStore + ?Sized> SessionStore for Arc<S> {
    fn load<'a>(
        &'a self,
        handle: &'a Handle,
        now: OffsetDateTime,
    ) -> BoxFuture<'a, Result<Option<Arc<Record>>>> {
        (**self).load(handle, now)
    }
    fn create<'a>(
        &'a self,
        handle: &'a Handle,
        record: &'a Record,
    ) -> BoxFuture<'a, Result<Created>> {
        (**self).create(handle, record)
    }
    fn update<'a>(
        &'a self,
        handle: &'a Handle,
        update: &'a Update,
        now: OffsetDateTime,
    ) -> BoxFuture<'a, Result<Updated>> {
        (**self).update(handle, update, now)
    }
    fn delete<'a>(&'a self, handle: &'a Handle) -> BoxFuture<'a, Result<bool>> {
        (**self).delete(handle)
    }
    fn delete_expired(&self, now: OffsetDateTime, batch: usize) -> BoxFuture<'_, Result<u64>> {
        (**self).delete_expired(now, batch)
    }
    fn list_by_owner<'a>(
        &'a self,
        owner: &'a str,
        now: OffsetDateTime,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<OwnedSession>>> {
        (**self).list_by_owner(owner, now, limit)
    }
    fn delete_by_owner<'a>(
        &'a self,
        owner: &'a str,
        keep: Option<&'a Handle>,
    ) -> BoxFuture<'a, Result<u64>> {
        (**self).delete_by_owner(owner, keep)
    }
    fn update_uses_base(&self) -> bool {
        (**self).update_uses_base()
    }
    fn kind(&self) -> &'static str {
        (**self).kind()
    }

    fn holds_expired<'a>(
        &'a self,
        handle: &'a Handle,
        now: OffsetDateTime,
    ) -> BoxFuture<'a, Result<bool>> {
        (**self).holds_expired(handle, now)
    }
}
