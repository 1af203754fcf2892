//! The in-process memory store: sharded, no global lock on the hot path.
//!
//! (The rules, caveats and examples are on the public type below,
//! where docs.rs shows them: this module is private.)

use std::{
    collections::HashMap,
    hash::{BuildHasherDefault, Hasher},
    sync::{
        atomic::{AtomicI64, AtomicUsize, Ordering},
        Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard,
    },
};

use time::OffsetDateTime;

use super::{BoxFuture, Created, OwnedSession, SessionStore, Updated};
use crate::{
    error::{Error, Result},
    expiry::secs,
    id::Handle,
    record::{Record, Update},
};

const SHARDS: usize = 64;
const SWEEP_EVERY: usize = 256;
/// What one record costs beyond its key, value and owner bytes, for the
/// byte bound: the map slot, the shared record and its data allocation, as
/// the benchmark's seeding measured it (181 B at 100k sessions, 189 B at 1M).
const RECORD_OVERHEAD: usize = 200;
/// A full shard evicts this fraction of its anonymous sessions at once (at
/// least one), the least recently used, so a flood pays for one scan per
/// many creates, not per create. A scan reads every record of the shard (a
/// cache miss each): at 1/16 it was 5 % of the CPU of a `/login` flood, so 1/8.
const EVICT_FRACTION: usize = 8;

/// The bytes a record counts for against the byte bound.
fn weight(record: &Record) -> usize {
    RECORD_OVERHEAD + record.payload_bytes()
}

/// Handles are SHA-256 output: already uniform, so hashing them again is waste.
#[derive(Default)]
struct HandleHasher(u64);

impl Hasher for HandleHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(13) ^ u64::from_le_bytes(b);
        }
    }
}

/// What a shard's map is keyed by: the first 128 bits of the handle.
///
/// A map slot holds its key and an `Arc` (24 bytes, not the 40 a whole
/// handle takes), and slots are up to half empty, so this is 16 to 34 of
/// the bytes a session costs. Handles are SHA-256 digests of random IDs: two
/// handles alike in 128 bits are a collision no one can aim for (a targeted
/// one is 2^128 work, a chance one needs about 2^64 sessions), the same
/// margin as a 128-bit session ID.
type Key = [u8; 16];

fn key_of(handle: &Handle) -> Key {
    let mut key = [0; 16];
    key.copy_from_slice(&handle.as_bytes()[..16]);
    key
}

type Map<V> = HashMap<Key, V, BuildHasherDefault<HandleHasher>>;

#[derive(Default)]
struct Shard {
    records: Map<Arc<Record>>,
    /// owner -> handles of this shard recorded for that owner (whole: the
    /// session list answers with them).
    owners: HashMap<Box<str>, Vec<Handle>>,
    /// The [`weight`] of every record held.
    bytes: usize,
}

impl Shard {
    /// Stores `record` under `handle`, replacing what was there.
    fn put(&mut self, handle: Handle, record: Arc<Record>) {
        self.index_add(record.owner(), handle);
        self.bytes += weight(&record);
        if let Some(old) = self.records.insert(key_of(&handle), record) {
            self.bytes = self.bytes.saturating_sub(weight(&old));
        }
    }

    fn over(&self, limits: &Limits, adding: usize) -> bool {
        self.records.len() + usize::from(adding > 0) > limits.sessions
            || self.bytes + adding > limits.bytes
    }

    /// Makes room for `adding` more bytes: drops expired sessions, then
    /// evicts the least recently used anonymous ones (by last seen, precise to
    /// the touch interval), a batch at a time; logged-in sessions are never
    /// evicted. One pass over the shard finds both kinds, so a flood pays for
    /// one scan per batch. `false` when only logged-in sessions are left to
    /// make room.
    fn make_room(&mut self, limits: &Limits, adding: usize, now: OffsetDateTime) -> bool {
        if !self.over(limits, adding) {
            return true;
        }
        let mut expired = Vec::new();
        let mut anonymous: Vec<(i64, Key)> = Vec::new();
        for (key, r) in &self.records {
            if r.is_expired(now) {
                expired.push(*key);
            } else if r.owner().is_none() {
                anonymous.push((r.last_seen, *key));
            }
        }
        for key in &expired {
            self.remove(key);
        }
        while self.over(limits, adding) {
            if anonymous.is_empty() {
                return false;
            }
            let batch = (anonymous.len() / EVICT_FRACTION).max(1);
            if batch < anonymous.len() {
                anonymous.select_nth_unstable(batch - 1);
            }
            for (_, key) in anonymous.drain(..batch) {
                self.remove(&key);
            }
            metrics::counter!("keyfob_evictions_total", "store" => "memory")
                .increment(batch as u64);
            tracing::warn!(
                event = "session.evicted",
                count = batch,
                "keyfob: memory store full: least recently used anonymous sessions evicted"
            );
        }
        true
    }

    fn index_add(&mut self, owner: Option<&str>, handle: Handle) {
        if let Some(owner) = owner {
            let list = self.owners.entry(owner.into()).or_default();
            if !list.contains(&handle) {
                list.push(handle);
            }
        }
    }

    fn index_remove(&mut self, owner: Option<&str>, key: &Key) {
        if let Some(owner) = owner {
            if let Some(list) = self.owners.get_mut(owner) {
                list.retain(|h| key_of(h) != *key);
                if list.is_empty() {
                    self.owners.remove(owner);
                }
            }
        }
    }

    fn remove(&mut self, key: &Key) -> Option<Arc<Record>> {
        let record = self.records.remove(key)?;
        self.index_remove(record.owner(), key);
        self.bytes = self.bytes.saturating_sub(weight(&record));
        Some(record)
    }

    fn sweep(&mut self, now: OffsetDateTime, limit: usize) -> usize {
        let expired: Vec<Key> = self
            .records
            .iter()
            .filter(|(_, r)| r.is_expired(now))
            .map(|(h, _)| *h)
            .take(limit)
            .collect();
        for h in &expired {
            self.remove(h);
        }
        expired.len()
    }
}

/// Sessions kept in process memory. Clones share the same sessions (as
/// tower-sessions' `MemoryStore` does), so a test can keep one to inspect.
///
/// ```
/// use keyfob::MemoryStore;
///
/// let store = MemoryStore::new();
/// assert_eq!(store.len(), 0);
/// ```
///
/// Rules:
/// - records live in 64 shards chosen by handle bits, each behind its own
///   `RwLock`; a load takes one shard's read lock and clones an `Arc`, never
///   the record;
/// - expired records are invisible at once and removed in bounded passes:
///   every 256th create (at most once a second) sweeps one shard, a full
///   shard drops its expired records before it evicts anything, and
///   [`SessionStore::delete_expired`] (run by
///   [`cleanup`](crate::store::cleanup)) sweeps in batches;
/// - a session costs about 200 bytes beyond its keys and values (181 B each
///   at 100,000 sessions, 189 B at 1,000,000, measured by `scripts/bench
///   --rss`): a map slot keyed by 128 bits of the handle, one allocation
///   for the record and one for all its keys and values;
/// - a rotation (`rename_to`) moves the record between shards under both
///   shard locks, taken in index order, so it is atomic;
/// - the store is bounded (by default 250,000 sessions or 256 MiB, see
///   [`with_capacity`](Self::with_capacity)): a flood of cookieless requests
///   evicts the least recently used anonymous sessions, never a logged-in
///   one, and once only logged-in sessions are left a new session is refused
///   with `503`, so no loop of requests can grow the process until it dies.
///
/// Caveat: sessions live as long as the process; use a persistent store to
/// keep them across restarts or share them between replicas.
///
/// ```
/// use keyfob::{MemoryStore, SessionLayer};
///
/// let layer = SessionLayer::new(MemoryStore::new());
/// # let _ = layer;
/// ```
#[derive(Clone)]
pub struct MemoryStore(Arc<Shards>);

/// What a [`MemoryStore`] and its clones share.
struct Shards {
    shards: Box<[RwLock<Shard>]>,
    creates: AtomicUsize,
    sweep_cursor: AtomicUsize,
    /// When (Unix seconds) a create last swept a shard.
    last_sweep: AtomicI64,
    /// Each shard's share of the capacity.
    limits: Limits,
}

/// One shard's share of a store's capacity.
#[derive(Debug, Clone, Copy)]
struct Limits {
    sessions: usize,
    bytes: usize,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("len", &self.len())
            .finish()
    }
}

fn shard_of(handle: &Handle) -> usize {
    let b = handle.as_bytes();
    usize::from(b[31]) % SHARDS
}

impl MemoryStore {
    /// The default most sessions a store holds: 250,000 (about 60 MB of
    /// small sessions).
    pub const DEFAULT_MAX_SESSIONS: usize = 250_000;
    /// The default most bytes a store's sessions count for (their keys,
    /// values and owners as encoded, plus a fixed 200 bytes each): 256 MiB.
    pub const DEFAULT_MAX_BYTES: usize = 256 << 20;

    /// An empty store with the default capacity
    /// ([`DEFAULT_MAX_SESSIONS`](Self::DEFAULT_MAX_SESSIONS),
    /// [`DEFAULT_MAX_BYTES`](Self::DEFAULT_MAX_BYTES)).
    pub fn new() -> Self {
        Self::with_capacity(Self::DEFAULT_MAX_SESSIONS, Self::DEFAULT_MAX_BYTES)
    }

    /// An empty store that holds at most `sessions` sessions counting for at
    /// most `bytes` bytes (each session counts for its keys, values and owner
    /// as encoded, each entry with a few length digits, plus a fixed 200
    /// bytes, about what it costs in memory).
    ///
    /// When a new session would pass either bound, the store evicts the
    /// least recently used sessions that hold no logged-in user (a security
    /// event `session.evicted` in the log); when only logged-in sessions are
    /// left, the new session is refused with a store error, which the layer
    /// answers with `503` and `Retry-After`: nobody logged in is ever pushed
    /// out by anonymous traffic. The bound is kept per shard (one of 64, by
    /// handle), so it is reached a little before the total when the shards
    /// fill unevenly; each shard holds at least one session.
    ///
    /// ```
    /// use keyfob::MemoryStore;
    ///
    /// // At most 10,000 sessions or 64 MiB, whichever comes first.
    /// let store = MemoryStore::with_capacity(10_000, 64 << 20);
    /// # let _ = store;
    /// ```
    pub fn with_capacity(sessions: usize, bytes: usize) -> Self {
        MemoryStore(Arc::new(Shards {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            creates: AtomicUsize::new(0),
            sweep_cursor: AtomicUsize::new(0),
            last_sweep: AtomicI64::new(0),
            limits: Limits {
                sessions: sessions.div_ceil(SHARDS).max(1),
                bytes: bytes.div_ceil(SHARDS).max(RECORD_OVERHEAD),
            },
        }))
    }

    /// The bytes the held sessions count for against the byte bound (see
    /// [`with_capacity`](Self::with_capacity)).
    ///
    /// ```
    /// let store = keyfob::MemoryStore::new();
    /// assert_eq!(store.bytes(), 0);
    /// ```
    pub fn bytes(&self) -> usize {
        self.0.shards.iter().map(|s| read(s).bytes).sum()
    }

    /// The number of records held, expired ones not yet swept included.
    pub fn len(&self) -> usize {
        self.0.shards.iter().map(|s| read(s).records.len()).sum()
    }

    /// True when the store holds no record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Inserts a record directly, whatever the store holds under the handle.
    #[cfg(test)]
    pub(crate) fn insert_record(&self, handle: Handle, record: Record) {
        let mut shard = write(&self.0.shards[shard_of(&handle)]);
        shard.remove(&key_of(&handle));
        shard.put(handle, Arc::new(record));
    }

    fn create_sync(&self, handle: &Handle, record: &Record) -> Result<Created> {
        let now = record.last_seen();
        let i = shard_of(handle);
        {
            let mut shard = write(&self.0.shards[i]);
            if let Some(existing) = shard.records.get(&key_of(handle)) {
                if !existing.is_expired(now) {
                    return Ok(Created::Collision);
                }
                shard.remove(&key_of(handle));
            }
            let adding = weight(record);
            if !shard.make_room(&self.0.limits, adding, now) {
                tracing::warn!(
                    event = "session.refused",
                    "keyfob: memory store full of logged-in sessions; new session refused"
                );
                return Err(Error::store_msg(
                    "memory store full: every session it holds belongs to a logged-in user \
                     (raise MemoryStore::with_capacity, or use a persistent store)",
                ));
            }
            shard.put(*handle, Arc::new(record.clone()));
        }
        // A sweep reads every record of a shard (a cache miss each in a big
        // store): at most one a second, whatever the rate of creates.
        if self.0.creates.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1
            && self.0.last_sweep.swap(secs(now), Ordering::Relaxed) != secs(now)
        {
            let j = self.0.sweep_cursor.fetch_add(1, Ordering::Relaxed) % SHARDS;
            write(&self.0.shards[j]).sweep(now, usize::MAX);
        }
        Ok(Created::Stored)
    }

    fn update_sync(&self, handle: &Handle, update: &Update, now: OffsetDateTime) -> Updated {
        let from = shard_of(handle);
        let target = update.rename_to().copied();
        let to = target.as_ref().map_or(from, shard_of);
        if from == to {
            let mut shard = write(&self.0.shards[from]);
            if target.is_none() && update.owner_change().is_none() {
                // The common write (`/count`, a touch): in place, unless the
                // record grew past the byte bound.
                let key = key_of(handle);
                let Some(slot) = shard.records.get_mut(&key) else {
                    return Updated::Gone;
                };
                if slot.is_expired(now) {
                    shard.remove(&key);
                    return Updated::Gone;
                }
                let before = weight(slot);
                Arc::make_mut(slot).apply(update);
                let after = weight(slot);
                shard.bytes = shard.bytes.saturating_sub(before) + after;
                if after <= before || !shard.over(&self.0.limits, 0) {
                    return Updated::Applied;
                }
                let Some(record) = shard.remove(&key) else {
                    return Updated::Gone;
                };
                shard.make_room(&self.0.limits, after, now);
                shard.put(*handle, record);
                return Updated::Applied;
            }
            let Some(mut record) = take_live(&mut shard, handle, now) else {
                return Updated::Gone;
            };
            Arc::make_mut(&mut record).apply(update);
            let dest = target.unwrap_or(*handle);
            // An update is never refused: a grown session pushes out
            // anonymous ones, a logged-in one may pass the byte bound.
            shard.make_room(&self.0.limits, weight(&record), now);
            shard.put(dest, record);
            return Updated::Applied;
        }
        // Two shards: lock in index order so two rotations cannot deadlock.
        let (mut a, mut b) = if from < to {
            let a = write(&self.0.shards[from]);
            (a, write(&self.0.shards[to]))
        } else {
            let b = write(&self.0.shards[to]);
            (write(&self.0.shards[from]), b)
        };
        let (src, dst) = (&mut *a, &mut *b);
        let Some(mut record) = take_live(src, handle, now) else {
            return Updated::Gone;
        };
        Arc::make_mut(&mut record).apply(update);
        let dest = target.unwrap_or(*handle);
        dst.make_room(&self.0.limits, weight(&record), now);
        dst.put(dest, record);
        Updated::Applied
    }
}

/// Removes and returns the live record (dropping an expired one).
fn take_live(shard: &mut Shard, handle: &Handle, now: OffsetDateTime) -> Option<Arc<Record>> {
    let record = shard.remove(&key_of(handle))?;
    (!record.is_expired(now)).then_some(record)
}

fn read(lock: &RwLock<Shard>) -> RwLockReadGuard<'_, Shard> {
    // A panic while holding a shard lock cannot leave a record half-written
    // (records are replaced whole), so a poisoned lock is safe to reuse.
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write(lock: &RwLock<Shard>) -> RwLockWriteGuard<'_, Shard> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

impl SessionStore for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn load<'a>(
        &'a self,
        handle: &'a Handle,
        now: OffsetDateTime,
    ) -> BoxFuture<'a, Result<Option<Arc<Record>>>> {
        let found = read(&self.0.shards[shard_of(handle)])
            .records
            .get(&key_of(handle))
            .filter(|r| !r.is_expired(now))
            .cloned();
        Box::pin(std::future::ready(Ok(found)))
    }

    fn holds_expired<'a>(
        &'a self,
        handle: &'a Handle,
        now: OffsetDateTime,
    ) -> BoxFuture<'a, Result<bool>> {
        let expired = read(&self.0.shards[shard_of(handle)])
            .records
            .get(&key_of(handle))
            .is_some_and(|r| r.is_expired(now));
        Box::pin(std::future::ready(Ok(expired)))
    }

    fn create<'a>(
        &'a self,
        handle: &'a Handle,
        record: &'a Record,
    ) -> BoxFuture<'a, Result<Created>> {
        Box::pin(std::future::ready(self.create_sync(handle, record)))
    }

    fn update<'a>(
        &'a self,
        handle: &'a Handle,
        update: &'a Update,
        now: OffsetDateTime,
    ) -> BoxFuture<'a, Result<Updated>> {
        Box::pin(std::future::ready(
            Ok(self.update_sync(handle, update, now)),
        ))
    }

    fn delete<'a>(&'a self, handle: &'a Handle) -> BoxFuture<'a, Result<bool>> {
        let removed = write(&self.0.shards[shard_of(handle)])
            .remove(&key_of(handle))
            .is_some();
        Box::pin(std::future::ready(Ok(removed)))
    }

    fn delete_expired(&self, now: OffsetDateTime, batch: usize) -> BoxFuture<'_, Result<u64>> {
        let mut left = batch;
        for _ in 0..SHARDS {
            if left == 0 {
                break;
            }
            let j = self.0.sweep_cursor.fetch_add(1, Ordering::Relaxed) % SHARDS;
            left -= write(&self.0.shards[j]).sweep(now, left);
        }
        Box::pin(std::future::ready(Ok((batch - left) as u64)))
    }

    fn list_by_owner<'a>(
        &'a self,
        owner: &'a str,
        now: OffsetDateTime,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<OwnedSession>>> {
        let mut out = Vec::new();
        for shard in self.0.shards.iter() {
            let shard = read(shard);
            if let Some(handles) = shard.owners.get(owner) {
                for h in handles {
                    if out.len() >= limit {
                        break;
                    }
                    if let Some(r) = shard.records.get(&key_of(h)).filter(|r| !r.is_expired(now)) {
                        out.push(OwnedSession {
                            handle: *h,
                            record: r.clone(),
                        });
                    }
                }
            }
        }
        Box::pin(std::future::ready(Ok(out)))
    }

    fn delete_by_owner<'a>(
        &'a self,
        owner: &'a str,
        keep: Option<&'a Handle>,
    ) -> BoxFuture<'a, Result<u64>> {
        let mut n = 0;
        // Hold every shard (in index order, as rotations do) so a session
        // moving between shards during the sweep cannot slip past it. Rare
        // call ("log out everywhere"), so the brief global pause is fine.
        let mut shards: Vec<_> = self.0.shards.iter().map(write).collect();
        for shard in shards.iter_mut() {
            let doomed: Vec<Handle> = match shard.owners.get(owner) {
                Some(hs) => hs.iter().filter(|h| Some(*h) != keep).copied().collect(),
                None => continue,
            };
            for h in &doomed {
                if shard.remove(&key_of(h)).is_some() {
                    n += 1;
                }
            }
        }
        Box::pin(std::future::ready(Ok(n)))
    }
}
