//! The cache tier: a bounded in-process cache in front of any store.
//!
//! (The rules, caveats and examples are on the public type below,
//! where docs.rs shows them: this module is private.)

use std::{
    fmt,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use moka::sync::Cache;
use time::OffsetDateTime;

use super::{BoxFuture, Created, OwnedSession, SessionStore, Updated};
use crate::{
    error::Result,
    id::Handle,
    record::{Record, Update},
};

const GENERATIONS: usize = 64;
const DEFAULT_TTL: Duration = Duration::from_secs(5);
const DEFAULT_CAPACITY: u64 = 10_000;

/// Any [`SessionStore`] with an in-process read cache in front.
///
/// ```
/// use keyfob::{CachedStore, MemoryStore};
///
/// let store = CachedStore::new(MemoryStore::new());
/// assert_eq!(store.ttl(), std::time::Duration::from_secs(5));
/// ```
///
/// Rules:
/// - [`load`](SessionStore::load) answers from the cache when it holds the
///   record and the record is live at the caller's clock; otherwise it asks
///   the inner store and caches what that returns (misses are not cached);
/// - every write and delete made through this store (create, update, a
///   rotation's old and new handle, delete, delete-by-owner) goes to
///   the inner store first and then drops the affected entries, so this
///   process reads its own writes;
/// - a load that raced a write of the same session never leaves its
///   (possibly older) copy in the cache: writes bump a per-shard generation,
///   and a load re-checks it after caching and drops its entry if it moved;
/// - the cache holds at most [`with_capacity`](CachedStore::with_capacity)
///   sessions (default 10 000) for at most [`with_ttl`](CachedStore::with_ttl)
///   (default 5 s) each.
///
/// Caveat, plainly: writes made by **another process** (another replica, an
/// admin tool) are seen here only once the cached entry's TTL runs out. That
/// includes a logout or a "revoke all sessions" done through another
/// replica: the revoked session keeps working *on this replica* for up to
/// the TTL. Keep the TTL short (seconds), or don't cache when that matters.
/// Data written here by two replicas still merges correctly (writes always
/// go to the inner store, which applies change-sets to its current record);
/// only reads may be stale.
///
/// ```
/// use std::time::Duration;
/// use keyfob::{CachedStore, MemoryStore, SessionLayer};
///
/// let store = CachedStore::new(MemoryStore::new())
///     .with_ttl(Duration::from_secs(2))
///     .with_capacity(50_000);
/// let layer = SessionLayer::new(store);
/// # let _ = layer;
/// ```
pub struct CachedStore<S> {
    inner: S,
    cache: Cache<Handle, Arc<Record>>,
    ttl: Duration,
    capacity: u64,
    /// Bumped after each write, per shard of handles (see the module docs).
    generations: Arc<[AtomicU64; GENERATIONS]>,
}

impl<S: fmt::Debug> fmt::Debug for CachedStore<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedStore")
            .field("inner", &self.inner)
            .field("ttl", &self.ttl)
            .field("capacity", &self.capacity)
            .field("cached", &self.cache.entry_count())
            .finish()
    }
}

fn build(ttl: Duration, capacity: u64) -> Cache<Handle, Arc<Record>> {
    Cache::builder()
        .max_capacity(capacity)
        .time_to_live(ttl)
        .build()
}

fn shard(handle: &Handle) -> usize {
    usize::from(handle.as_bytes()[0]) % GENERATIONS
}

impl<S: SessionStore> CachedStore<S> {
    /// Caches `inner` with the defaults: 5 s TTL, 10 000 sessions.
    pub fn new(inner: S) -> Self {
        CachedStore {
            inner,
            cache: build(DEFAULT_TTL, DEFAULT_CAPACITY),
            ttl: DEFAULT_TTL,
            capacity: DEFAULT_CAPACITY,
            generations: Arc::new(std::array::from_fn(|_| AtomicU64::new(0))),
        }
    }

    /// How long a cached record may be served (default 5 s): the longest
    /// time another process's write can go unseen here. Clamped to at least
    /// one millisecond.
    ///
    /// ```
    /// # use keyfob::{CachedStore, MemoryStore};
    /// let store = CachedStore::new(MemoryStore::new()).with_ttl(std::time::Duration::from_secs(1));
    /// assert_eq!(store.ttl().as_secs(), 1);
    /// ```
    #[must_use]
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl.max(Duration::from_millis(1));
        self.cache = build(self.ttl, self.capacity);
        self
    }

    /// How many sessions the cache holds at most (default 10 000); the least
    /// useful entries are evicted beyond it.
    ///
    /// ```
    /// # use keyfob::{CachedStore, MemoryStore};
    /// let store = CachedStore::new(MemoryStore::new()).with_capacity(100);
    /// # let _ = store;
    /// ```
    #[must_use]
    pub fn with_capacity(mut self, sessions: u64) -> Self {
        self.capacity = sessions;
        self.cache = build(self.ttl, self.capacity);
        self
    }

    /// The configured TTL.
    ///
    /// ```
    /// # use keyfob::{CachedStore, MemoryStore};
    /// assert_eq!(CachedStore::new(MemoryStore::new()).ttl().as_secs(), 5);
    /// ```
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The wrapped store.
    ///
    /// ```
    /// # use keyfob::{CachedStore, MemoryStore};
    /// let store = CachedStore::new(MemoryStore::new());
    /// assert!(store.inner().is_empty());
    /// ```
    pub fn inner(&self) -> &S {
        &self.inner
    }

    fn generation(&self, handle: &Handle) -> u64 {
        self.generations[shard(handle)].load(Ordering::SeqCst)
    }

    /// Called after every write reached the inner store: the generation moves
    /// first, so a racing load that cached an older copy drops it again.
    fn written(&self, handle: &Handle) {
        self.generations[shard(handle)].fetch_add(1, Ordering::SeqCst);
        self.cache.invalidate(handle);
    }

    fn written_all(&self) {
        for g in self.generations.iter() {
            g.fetch_add(1, Ordering::SeqCst);
        }
        self.cache.invalidate_all();
    }

    async fn load_inner(
        &self,
        handle: &Handle,
        now: OffsetDateTime,
    ) -> Result<Option<Arc<Record>>> {
        if let Some(record) = self.cache.get(handle) {
            if !record.is_expired(now) {
                metrics::counter!("keyfob_cache_hits_total").increment(1);
                return Ok(Some(record));
            }
            // Expired here; the inner store may know a later deadline
            // (another process refreshed it), so ask it.
            self.cache.invalidate(handle);
        }
        metrics::counter!("keyfob_cache_misses_total").increment(1);
        let before = self.generation(handle);
        let found = self.inner.load(handle, now).await?;
        if let Some(record) = &found {
            self.cache.insert(*handle, record.clone());
            if self.generation(handle) != before {
                self.cache.invalidate(handle);
            }
        }
        Ok(found)
    }
}

impl<S: SessionStore> SessionStore for CachedStore<S> {
    fn kind(&self) -> &'static str {
        "cached"
    }

    fn load<'a>(
        &'a self,
        handle: &'a Handle,
        now: OffsetDateTime,
    ) -> BoxFuture<'a, Result<Option<Arc<Record>>>> {
        Box::pin(self.load_inner(handle, now))
    }

    fn create<'a>(
        &'a self,
        handle: &'a Handle,
        record: &'a Record,
    ) -> BoxFuture<'a, Result<Created>> {
        Box::pin(async move {
            let result = self.inner.create(handle, record).await;
            self.written(handle);
            result
        })
    }

    fn update<'a>(
        &'a self,
        handle: &'a Handle,
        update: &'a Update,
        now: OffsetDateTime,
    ) -> BoxFuture<'a, Result<Updated>> {
        Box::pin(async move {
            // Invalidate even on error: the write may have reached the store.
            let result = self.inner.update(handle, update, now).await;
            self.written(handle);
            if let Some(to) = update.rename_to() {
                self.written(to);
            }
            result
        })
    }

    fn delete<'a>(&'a self, handle: &'a Handle) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let result = self.inner.delete(handle).await;
            self.written(handle);
            result
        })
    }

    fn delete_expired(&self, now: OffsetDateTime, batch: usize) -> BoxFuture<'_, Result<u64>> {
        // Purged records are expired, and expired records are never served
        // from the cache, so nothing needs dropping here.
        self.inner.delete_expired(now, batch)
    }

    fn list_by_owner<'a>(
        &'a self,
        owner: &'a str,
        now: OffsetDateTime,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<OwnedSession>>> {
        self.inner.list_by_owner(owner, now, limit)
    }

    fn delete_by_owner<'a>(
        &'a self,
        owner: &'a str,
        keep: Option<&'a Handle>,
    ) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            let result = self.inner.delete_by_owner(owner, keep).await;
            // Which handles went is the inner store's business; revocations
            // are rare, so drop everything rather than serve a revoked one.
            self.written_all();
            result
        })
    }

    fn update_uses_base(&self) -> bool {
        self.inner.update_uses_base()
    }
    fn holds_expired<'a>(
        &'a self,
        handle: &'a Handle,
        now: OffsetDateTime,
    ) -> BoxFuture<'a, Result<bool>> {
        self.inner.holds_expired(handle, now)
    }
}

#[cfg(test)]
#[cfg(feature = "memory")]
mod tests {
    use super::*;
    use crate::MemoryStore;

    fn record(now: OffsetDateTime) -> Record {
        Record::new(now, Some(now + time::Duration::hours(1)), None)
    }

    #[tokio::test]
    async fn another_process_write_is_seen_only_after_the_ttl() {
        let shared = Arc::new(MemoryStore::new());
        let here = CachedStore::new(shared.clone()).with_ttl(Duration::from_millis(200));
        let now = OffsetDateTime::now_utc();
        let h = Handle::from_bytes([9; 32]);
        here.create(&h, &record(now)).await.unwrap();
        assert!(here.load(&h, now).await.unwrap().is_some());
        // "Another process" deletes it behind the cache's back.
        shared.delete(&h).await.unwrap();
        assert!(
            here.load(&h, now).await.unwrap().is_some(),
            "stale within the TTL"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            here.load(&h, now).await.unwrap().is_none(),
            "seen after the TTL"
        );
    }

    #[tokio::test]
    async fn own_writes_are_seen_at_once_and_expired_entries_never_served() {
        let store = CachedStore::new(MemoryStore::new());
        let now = OffsetDateTime::now_utc();
        let h = Handle::from_bytes([3; 32]);
        store.create(&h, &record(now)).await.unwrap();
        let v1 = store.load(&h, now).await.unwrap().unwrap().version();
        let touch = Update::touch(now, Some(now + time::Duration::hours(1)));
        store.update(&h, &touch, now).await.unwrap();
        let v2 = store.load(&h, now).await.unwrap().unwrap().version();
        assert_eq!(v2, v1 + 1);
        let later = now + time::Duration::hours(2);
        assert!(store.load(&h, later).await.unwrap().is_none());
        assert!(store.delete(&h).await.unwrap());
        assert!(store.load(&h, now).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn revoking_an_owner_drops_cached_sessions() {
        let inner = MemoryStore::new();
        let now = OffsetDateTime::now_utc();
        let h = Handle::from_bytes([5; 32]);
        let mut r = record(now);
        r.owner = Some("u1".into());
        inner.insert_record(h, r);
        let store = CachedStore::new(inner);
        assert!(store.load(&h, now).await.unwrap().is_some());
        assert_eq!(store.delete_by_owner("u1", None).await.unwrap(), 1);
        assert!(store.load(&h, now).await.unwrap().is_none());
    }
}
