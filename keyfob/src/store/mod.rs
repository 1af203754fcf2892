//! The [`SessionStore`] trait and the stores that ship with keyfob.
//!
//! Rules every store keeps (and `tests/conformance` checks, for each store):
//! - records are keyed by [`Handle`] (a hash of the session ID), never the ID;
//! - an expired record is never returned, and [`SessionStore::update`] of an
//!   expired or deleted record reports it gone instead of writing it back;
//! - an update is applied to the record the store holds *now* (see
//!   [`Record::apply`]), atomically, so concurrent requests that write
//!   different keys all persist;
//! - a failure is an [`Error`](crate::Error) of kind [`Store`](crate::ErrorKind::Store), never a panic.
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

use crate::{expiry::Clock, id::Handle, record::Record};

#[cfg(feature = "cache")]
pub(crate) mod cached;
#[cfg(feature = "cookie-store")]
pub(crate) mod cookie;
#[cfg(feature = "memory")]
pub(crate) mod memory;
#[cfg(feature = "mysql")]
pub(crate) mod mysql;
#[cfg(any(feature = "postgres", feature = "sqlite", feature = "redis"))]
pub(crate) mod near;
#[cfg(feature = "postgres")]
pub(crate) mod postgres;
#[cfg(feature = "redis")]
pub(crate) mod redis;
pub(crate) mod session_store;
#[cfg_attr(
    not(any(
        feature = "sqlite",
        feature = "postgres",
        feature = "mysql",
        feature = "migrate"
    )),
    allow(dead_code)
)]
pub(crate) mod sql;
#[cfg(feature = "sqlite")]
pub(crate) mod sqlite;
#[cfg(feature = "sqlite")]
mod sqlite_shm;
#[cfg(feature = "sqlite")]
mod sqlite_writer;
pub(crate) mod timeout;
#[cfg(feature = "tower-sessions")]
pub(crate) mod tower;

pub(crate) use self::session_store::SessionStore;

#[cfg(feature = "redis")]
pub use self::redis::RedisConnection;

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
