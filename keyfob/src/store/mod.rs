//! The [`SessionStore`] trait and the stores that ship with keyfob.
//!
//! Rules every store keeps (and `tests/conformance` checks, for each store):
//! - records are keyed by [`Handle`] (a hash of the session ID), never the ID;
//! - an expired record is never returned, and [`SessionStore::update`] of an
//!   expired or deleted record reports it gone instead of writing it back;
//! - an update is applied to the record the store holds *now* (see
//!   [`Record::apply`]), atomically, so concurrent requests that write
//!   different keys all persist;
//! - a failure is an [`Error`] of kind [`Store`](crate::ErrorKind::Store), never a panic.
//!
//! Caveat: stores may keep expired records until [`SessionStore::delete_expired`]
//! runs; [`cleanup`] runs it periodically and keeps going after an error.
//!
//! ```
//! use std::sync::Arc;
//! use keyfob::{MemoryStore, SessionStore};
//!
//! // Any store can be shared behind an `Arc` or used as a trait object.
//! let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
//! # let _ = store;
//! ```

use std::{future::Future, pin::Pin, sync::Arc, time::Duration as StdDuration};

use time::OffsetDateTime;

use crate::{
    error::Result,
    expiry::Clock,
    id::Handle,
    record::{Record, Update},
};

#[cfg(feature = "cache")]
pub mod cached;
#[cfg(feature = "cookie-store")]
pub mod cookie;
#[cfg(feature = "memory")]
pub mod memory;
#[cfg(feature = "mysql")]
pub mod mysql;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
mod sql;
#[cfg(feature = "sqlite")]
pub mod sqlite;
pub(crate) mod timeout;

/// A boxed, sendable future: what [`SessionStore`] methods return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What [`SessionStore::create`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// The record was stored under the handle.
    Stored,
    /// A live record already has this handle; the layer draws a new ID and retries.
    Collision,
}

/// What [`SessionStore::update`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Updated {
    /// The update was applied to the current record.
    Applied,
    /// No live record has this handle (deleted, expired, revoked): nothing was
    /// written, so a logged-out session is never brought back.
    Gone,
}

/// A live session of one owner, as listed by [`SessionStore::list_by_owner`].
#[derive(Debug, Clone)]
pub struct OwnedSession {
    /// The session's public handle.
    pub handle: Handle,
    /// Its record.
    pub record: Arc<Record>,
}

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

    fn holds_expired<'a>(
        &'a self,
        handle: &'a Handle,
        now: OffsetDateTime,
    ) -> BoxFuture<'a, Result<bool>> {
        (**self).holds_expired(handle, now)
    }
}

/// Deletes expired records every `period`, in batches of `batch`, forever.
///
/// A failed pass is logged and the task carries on at the next period, so a
/// store outage never ends the cleanup. Spawn it once per process:
///
/// ```
/// use std::{sync::Arc, time::Duration};
/// use keyfob::{MemoryStore, SystemClock};
///
/// # let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
/// # rt.block_on(async {
/// let store = Arc::new(MemoryStore::new());
/// let task = tokio::spawn(keyfob::store::cleanup(store.clone(), SystemClock, Duration::from_secs(60), 1000));
/// task.abort();
/// # });
/// ```
pub async fn cleanup<S, C>(store: S, clock: C, period: StdDuration, batch: usize)
where
    S: SessionStore,
    C: Clock,
{
    let batch = batch.max(1);
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        loop {
            match store.delete_expired(clock.now(), batch).await {
                Ok(n) if (n as usize) < batch => break,
                Ok(_) => tokio::task::yield_now().await,
                Err(err) => {
                    tracing::warn!(error = %err, "keyfob: expired-session cleanup failed; retrying next period");
                    break;
                }
            }
        }
    }
}
