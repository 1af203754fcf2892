//! The near cache: a bounded in-process copy of recently used records, kept
//! coherent by the store's own change notifications, never by a TTL.
//!
//! A store that owns one (PostgreSQL, Redis; see their docs) answers a load from it
//! only while its notification channel is subscribed ([`NearCache::start`]),
//! and refreshes it with the row each of its own writes returns. Rules:
//! - an entry is served only while the cache is *serving*: from the moment
//!   the store's listener is subscribed until the moment it notices the
//!   channel is lost ([`NearCache::stop`], which also empties the cache);
//!   everything cached before a loss is dropped, since notifications sent
//!   during it are gone;
//! - a notification names a handle and, for a write, the version it wrote:
//!   an entry already at that version or later stays (it came from this
//!   process's own write, or a later one), anything else is dropped;
//! - a load or write that raced a notification never leaves its (possibly
//!   older) copy behind: every drop moves a per-shard generation, and an
//!   entry is only put if the generation it saw before asking the store has
//!   not moved (and it is checked again after the put);
//! - copies never go back in time: an entry is replaced only by a later
//!   version of the record, whatever order concurrent loads and writes
//!   finish in, and a write of this process voids the loads in flight for
//!   its shard;
//! - bounded by entries and bytes: each entry weighs its data size, but at
//!   least `max_bytes / max_entries`, so both bounds hold; the least
//!   useful entries are evicted past them.
//!
//! quick_cache is the map; this module adds only the coherence rules above.
//! It replaced moka (still the `cache` feature's map) after a profile of a
//! SQLite `/count` flood put moka's lookups, pending-task upkeep and epoch
//! collection at about 9 % of the server's CPU: a quick_cache lookup is a
//! hash probe under its shard's read lock, with no upkeep to run.

use std::sync::{
    atomic::{AtomicBool, AtomicU64, Ordering},
    Arc,
};

use quick_cache::sync::{Cache, EntryAction, EntryResult};
use time::OffsetDateTime;

use crate::{id::Handle, record::Record};

const SHARDS: usize = 1024;

/// The default bound on cached sessions.
pub(crate) const DEFAULT_ENTRIES: u64 = 50_000;
/// The default bound on cached bytes (data plus a fixed overhead per entry).
pub(crate) const DEFAULT_BYTES: u64 = 64 * 1024 * 1024;
/// What one entry costs beyond its keys and values (map slot, record, Arc).
const OVERHEAD: u64 = 300;

/// What an entry weighs: its data plus [`OVERHEAD`], at least `floor`.
#[derive(Clone)]
struct Weight {
    floor: u64,
}

impl quick_cache::Weighter<Handle, Arc<Record>> for Weight {
    fn weight(&self, _: &Handle, record: &Arc<Record>) -> u64 {
        (record.payload_bytes() as u64 + OVERHEAD).max(self.floor)
    }
}

pub(crate) struct NearCache {
    map: Cache<Handle, Arc<Record>, Weight>,
    generations: Box<[AtomicU64]>,
    serving: AtomicBool,
    /// Moves on every start, stop, clear and void: a ticket from before
    /// is void.
    epoch: AtomicU64,
}

/// The task that keeps a near cache coherent (a listener, a tracking
/// connection): started on the store's first use, since it needs the
/// runtime; started again if it ended (its runtime shut down, a panic; it
/// stops the cache as it goes); aborted when the store is dropped.
#[cfg_attr(not(any(feature = "postgres", feature = "redis")), allow(dead_code))]
#[derive(Default)]
pub(crate) struct Keeper(std::sync::Mutex<Option<tokio::task::AbortHandle>>);

#[cfg_attr(not(any(feature = "postgres", feature = "redis")), allow(dead_code))]
impl Keeper {
    /// Starts `task()` unless it runs. Called on every load, so it never
    /// waits (whoever holds the lock is checking) and, outside a Tokio
    /// runtime, does nothing rather than panic.
    pub(crate) fn ensure<F>(&self, task: impl FnOnce() -> F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        if let (Ok(mut slot), Ok(runtime)) =
            (self.0.try_lock(), tokio::runtime::Handle::try_current())
        {
            if slot.as_ref().is_none_or(|t| t.is_finished()) {
                *slot = Some(runtime.spawn(task()).abort_handle());
            }
        }
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        if let Some(task) = self.0.lock().ok().and_then(|mut t| t.take()) {
            task.abort();
        }
    }
}

/// What a load or write saw before it asked the store.
#[derive(Clone, Copy)]
pub(crate) struct Ticket {
    generation: u64,
    epoch: u64,
}

fn shard(handle: &Handle) -> usize {
    let b = handle.as_bytes();
    (usize::from(b[0]) << 8 | usize::from(b[1])) % SHARDS
}

impl NearCache {
    pub(crate) fn new(max_entries: u64, max_bytes: u64) -> Self {
        let floor = (max_bytes / max_entries.max(1)).max(1);
        let estimated = usize::try_from(max_entries.min(max_bytes / floor)).unwrap_or(usize::MAX);
        let map = Cache::with_weighter(estimated, max_bytes, Weight { floor });
        NearCache {
            map,
            generations: (0..SHARDS).map(|_| AtomicU64::new(0)).collect(),
            serving: AtomicBool::new(false),
            epoch: AtomicU64::new(0),
        }
    }

    /// Whether entries are served (the store's channel is subscribed).
    pub(crate) fn is_serving(&self) -> bool {
        self.serving.load(Ordering::SeqCst)
    }

    /// The channel is subscribed: serve from now on, starting empty.
    pub(crate) fn start(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.map.clear();
        self.serving.store(true, Ordering::SeqCst);
        tracing::info!("keyfob: near cache serving (invalidation channel subscribed)");
    }

    /// The channel is lost: stop serving at once, and forget everything.
    #[cfg_attr(not(any(feature = "postgres", feature = "redis")), allow(dead_code))]
    pub(crate) fn stop(&self) {
        let was = self.serving.swap(false, Ordering::SeqCst);
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.map.clear();
        if was {
            tracing::warn!(
                "keyfob: near cache stopped: invalidation channel lost; every load goes to the store until it is back"
            );
        }
    }

    /// Voids every ticket taken so far, keeping the copies: what a load
    /// or write in flight brings back is not cached (it was not read on
    /// the channel that keeps the cache coherent).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn void(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }

    /// Drops every copy (and voids every ticket), still serving.
    pub(crate) fn clear(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.map.clear();
    }

    /// The live cached record, when serving.
    pub(crate) fn get(&self, handle: &Handle, now: OffsetDateTime) -> Option<Arc<Record>> {
        if !self.is_serving() {
            return None;
        }
        let hit = self.map.get(handle).filter(|r| !r.is_expired(now));
        if hit.is_some() {
            metrics::counter!("keyfob_cache_hits_total").increment(1);
        } else {
            metrics::counter!("keyfob_cache_misses_total").increment(1);
        }
        hit
    }

    /// Taken before asking the store, handed back to [`put`](Self::put).
    pub(crate) fn ticket(&self, handle: &Handle) -> Ticket {
        Ticket {
            generation: self.generations[shard(handle)].load(Ordering::SeqCst),
            epoch: self.epoch.load(Ordering::SeqCst),
        }
    }

    fn still(&self, handle: &Handle, ticket: Ticket) -> bool {
        self.is_serving()
            && self.epoch.load(Ordering::SeqCst) == ticket.epoch
            && self.generations[shard(handle)].load(Ordering::SeqCst) == ticket.generation
    }

    /// Inserts `record` unless the cache holds this session at the same
    /// version or a later one: copies never go back in time, whatever order
    /// concurrent loads and writes finish in.
    fn insert_newer(&self, handle: &Handle, record: Arc<Record>) {
        let mut record = Some(record);
        let vacant = self.map.entry(handle, None, |_, old| {
            if let Some(new) = record.take_if(|new| new.version > old.version) {
                *old = new;
            }
            EntryAction::Retain(())
        });
        if let (EntryResult::Vacant(slot), Some(new)) = (vacant, record) {
            let _ = slot.insert(new);
        }
    }

    /// Caches what a load read, unless something moved since `ticket`.
    pub(crate) fn put(&self, handle: &Handle, record: Arc<Record>, ticket: Ticket) {
        if !self.still(handle, ticket) {
            return;
        }
        self.insert_newer(handle, record);
        if !self.still(handle, ticket) {
            self.map.remove(handle);
        }
    }

    /// This process wrote the record and got `record` back (its new
    /// version). Loads in flight for its shard are voided, so none can put
    /// an older copy after it. With a `ticket` (taken before the write), a
    /// notification that came in meanwhile wins: the copy goes and the
    /// next load asks the store.
    pub(crate) fn written(&self, handle: &Handle, record: Arc<Record>, ticket: Option<Ticket>) {
        match ticket {
            Some(t) if !self.still(handle, t) => {
                self.forget(handle);
                return;
            }
            _ => {}
        }
        if self.is_serving() {
            self.insert_newer(handle, record);
        }
        if let Some(t) = ticket {
            if !self.still(handle, t) {
                self.map.remove(handle);
            }
        }
        self.generations[shard(handle)].fetch_add(1, Ordering::SeqCst);
    }

    /// This process wrote the change a request made to its copy `base_version`
    /// and got `record` back. Unlike [`written`](Self::written), the copy is
    /// put only over the entry it came from: a change made elsewhere that
    /// the write could not tell from its version (an admin's edit of the
    /// stored record) has dropped that entry, and then nothing is cached.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn written_over(
        &self,
        handle: &Handle,
        base_version: u64,
        record: Arc<Record>,
        ticket: Option<Ticket>,
    ) {
        let current = ticket.is_none_or(|t| self.still(handle, t));
        if current && self.is_serving() {
            // Absent: nothing to write over (the slot it offers is dropped).
            let _ = self.map.entry(handle, None, |_, old| {
                if old.version == base_version {
                    *old = record;
                    EntryAction::Retain(())
                } else {
                    EntryAction::Remove
                }
            });
        }
        if !current || ticket.is_some_and(|t| !self.still(handle, t)) {
            self.map.remove(handle);
        }
        self.generations[shard(handle)].fetch_add(1, Ordering::SeqCst);
    }

    /// This process changed or deleted the record in a way it has no copy
    /// of: drop it (and void the tickets of its shard).
    pub(crate) fn forget(&self, handle: &Handle) {
        self.generations[shard(handle)].fetch_add(1, Ordering::SeqCst);
        self.map.remove(handle);
    }

    /// A notification: `version` is the version a write left (`None` for a
    /// delete). An entry at that version or later is this process's own
    /// write, or a later one, and stays.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn notified(&self, handle: &Handle, version: Option<u64>) {
        if let (Some(v), Some(cached)) = (version, self.map.get(handle)) {
            if cached.version >= v {
                return;
            }
        }
        self.forget(handle);
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> u64 {
        self.map.len() as u64
    }
}

/// Parses a notification payload: the handle in hex, then `:VERSION` for a write.
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
pub(crate) fn parse_payload(payload: &str) -> Option<(Handle, Option<u64>)> {
    let (hex, version) = match payload.split_once(':') {
        Some((h, v)) => (h, Some(v.parse().ok()?)),
        None => (payload, None),
    };
    let handle = hex.parse::<Handle>().ok()?;
    Some((handle, version))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(now: OffsetDateTime, version: u64) -> Arc<Record> {
        let mut r = Record::new(now, Some(now + time::Duration::hours(1)), None);
        r.version = version;
        Arc::new(r)
    }

    #[test]
    fn nothing_is_served_before_start_or_after_stop() {
        let c = NearCache::new(100, 1 << 20);
        let now = OffsetDateTime::now_utc();
        let h = Handle::from_bytes([1; 32]);
        c.put(&h, record(now, 1), c.ticket(&h));
        assert!(c.get(&h, now).is_none(), "not serving yet");
        c.start();
        c.put(&h, record(now, 1), c.ticket(&h));
        assert!(c.get(&h, now).is_some());
        c.stop();
        assert!(c.get(&h, now).is_none());
        c.start();
        assert!(c.get(&h, now).is_none(), "a restart begins empty");
    }

    #[test]
    fn a_notification_drops_older_copies_and_keeps_own_writes() {
        let c = NearCache::new(100, 1 << 20);
        c.start();
        let now = OffsetDateTime::now_utc();
        let h = Handle::from_bytes([2; 32]);
        c.put(&h, record(now, 5), c.ticket(&h));
        c.notified(&h, Some(5));
        assert!(c.get(&h, now).is_some(), "our own write's echo");
        c.notified(&h, Some(6));
        assert!(c.get(&h, now).is_none(), "someone else's later write");
        c.put(&h, record(now, 7), c.ticket(&h));
        c.notified(&h, None);
        assert!(c.get(&h, now).is_none(), "a delete");
    }

    #[test]
    fn an_older_copy_never_replaces_a_newer_one() {
        let c = NearCache::new(100, 1 << 20);
        c.start();
        let now = OffsetDateTime::now_utc();
        let h = Handle::from_bytes([6; 32]);
        let load = c.ticket(&h);
        // Two writes finish out of order, then a slow load of v1 lands.
        c.written(&h, record(now, 3), None);
        c.written(&h, record(now, 2), None);
        c.put(&h, record(now, 1), load);
        assert_eq!(c.get(&h, now).map(|r| r.version), Some(3));
    }

    #[test]
    fn a_put_that_raced_a_notification_is_dropped() {
        let c = NearCache::new(100, 1 << 20);
        c.start();
        let now = OffsetDateTime::now_utc();
        let h = Handle::from_bytes([3; 32]);
        let t = c.ticket(&h);
        c.notified(&h, None); // a delete while the load was in flight
        c.put(&h, record(now, 1), t);
        assert!(c.get(&h, now).is_none());
    }

    #[test]
    fn entries_and_bytes_stay_bounded() {
        let c = NearCache::new(10, 1 << 20);
        c.start();
        let now = OffsetDateTime::now_utc();
        for i in 0..100u8 {
            let h = Handle::from_bytes([i; 32]);
            c.put(&h, record(now, 1), c.ticket(&h));
        }
        assert!(c.len() <= 10, "{}", c.len());
    }

    #[test]
    fn payloads_parse_or_are_ignored() {
        let h = Handle::from_bytes([4; 32]);
        assert_eq!(parse_payload(&format!("{h}:12")), Some((h, Some(12))));
        assert_eq!(parse_payload(&h.to_string()), Some((h, None)));
        assert_eq!(parse_payload("zz:1"), None);
        assert_eq!(parse_payload(&format!("{h}:x")), None);
    }
}
