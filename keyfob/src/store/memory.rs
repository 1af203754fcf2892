//! The in-process memory store: sharded, no global lock on the hot path.
//!
//! (The rules, caveats and examples are on the public type below,
//! where docs.rs shows them: this module is private.)

use std::{
    collections::HashMap,
    hash::{BuildHasherDefault, Hasher},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard,
    },
};

use time::OffsetDateTime;

use super::{BoxFuture, Created, OwnedSession, SessionStore, Updated};
use crate::{
    error::Result,
    expiry::secs,
    id::Handle,
    record::{Record, Update},
};

const SHARDS: usize = 64;
const SWEEP_EVERY: usize = 256;

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

type Map<V> = HashMap<Handle, V, BuildHasherDefault<HandleHasher>>;

#[derive(Default)]
struct Shard {
    records: Map<Arc<Record>>,
    /// owner -> handles of this shard recorded for that owner.
    owners: HashMap<Box<str>, Vec<Handle>>,
}

impl Shard {
    fn index_add(&mut self, owner: Option<&str>, handle: Handle) {
        if let Some(owner) = owner {
            let list = self.owners.entry(owner.into()).or_default();
            if !list.contains(&handle) {
                list.push(handle);
            }
        }
    }

    fn index_remove(&mut self, owner: Option<&str>, handle: &Handle) {
        if let Some(owner) = owner {
            if let Some(list) = self.owners.get_mut(owner) {
                list.retain(|h| h != handle);
                if list.is_empty() {
                    self.owners.remove(owner);
                }
            }
        }
    }

    fn remove(&mut self, handle: &Handle) -> Option<Arc<Record>> {
        let record = self.records.remove(handle)?;
        self.index_remove(record.owner(), handle);
        Some(record)
    }

    fn sweep(&mut self, now: OffsetDateTime, limit: usize) -> usize {
        let now_secs = secs(now);
        let expired: Vec<Handle> = self
            .records
            .iter()
            .filter(|(_, r)| r.expires_secs().is_some_and(|e| now_secs >= e))
            .map(|(h, _)| *h)
            .take(limit)
            .collect();
        for h in &expired {
            self.remove(h);
        }
        expired.len()
    }
}

/// Sessions kept in process memory.
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
///   every 256th create sweeps one shard, and [`SessionStore::delete_expired`]
///   (run by [`cleanup`](crate::store::cleanup)) sweeps in batches, so memory
///   cannot grow without bound even when no cleanup task runs;
/// - a rotation (`rename_to`) moves the record between shards under both
///   shard locks, taken in index order, so it is atomic.
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
pub struct MemoryStore {
    shards: Box<[RwLock<Shard>]>,
    creates: AtomicUsize,
    sweep_cursor: AtomicUsize,
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
    /// An empty store.
    pub fn new() -> Self {
        MemoryStore {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            creates: AtomicUsize::new(0),
            sweep_cursor: AtomicUsize::new(0),
        }
    }

    /// The number of records held, expired ones not yet swept included.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| read(s).records.len()).sum()
    }

    /// True when the store holds no record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Inserts a record directly, whatever the store holds under the handle.
    #[cfg(test)]
    pub(crate) fn insert_record(&self, handle: Handle, record: Record) {
        let mut shard = write(&self.shards[shard_of(&handle)]);
        shard.remove(&handle);
        shard.index_add(record.owner(), handle);
        shard.records.insert(handle, Arc::new(record));
    }

    fn create_sync(&self, handle: &Handle, record: &Record) -> Created {
        let now = record.last_seen();
        let i = shard_of(handle);
        {
            let mut shard = write(&self.shards[i]);
            if let Some(existing) = shard.records.get(handle) {
                if !existing.is_expired(now) {
                    return Created::Collision;
                }
                shard.remove(handle);
            }
            shard.index_add(record.owner(), *handle);
            shard.records.insert(*handle, Arc::new(record.clone()));
        }
        if self.creates.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            let j = self.sweep_cursor.fetch_add(1, Ordering::Relaxed) % SHARDS;
            write(&self.shards[j]).sweep(now, usize::MAX);
        }
        Created::Stored
    }

    fn update_sync(&self, handle: &Handle, update: &Update, now: OffsetDateTime) -> Updated {
        let from = shard_of(handle);
        let target = update.rename_to().copied();
        let to = target.as_ref().map_or(from, shard_of);
        if from == to {
            let mut shard = write(&self.shards[from]);
            let Some(mut record) = take_live(&mut shard, handle, now) else {
                return Updated::Gone;
            };
            Arc::make_mut(&mut record).apply(update);
            let dest = target.unwrap_or(*handle);
            shard.index_add(record.owner(), dest);
            shard.records.insert(dest, record);
            return Updated::Applied;
        }
        // Two shards: lock in index order so two rotations cannot deadlock.
        let (mut a, mut b) = if from < to {
            let a = write(&self.shards[from]);
            (a, write(&self.shards[to]))
        } else {
            let b = write(&self.shards[to]);
            (write(&self.shards[from]), b)
        };
        let (src, dst) = (&mut *a, &mut *b);
        let Some(mut record) = take_live(src, handle, now) else {
            return Updated::Gone;
        };
        Arc::make_mut(&mut record).apply(update);
        let dest = target.unwrap_or(*handle);
        dst.index_add(record.owner(), dest);
        dst.records.insert(dest, record);
        Updated::Applied
    }
}

/// Removes and returns the live record (dropping an expired one).
fn take_live(shard: &mut Shard, handle: &Handle, now: OffsetDateTime) -> Option<Arc<Record>> {
    let record = shard.remove(handle)?;
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
    fn load<'a>(
        &'a self,
        handle: &'a Handle,
        now: OffsetDateTime,
    ) -> BoxFuture<'a, Result<Option<Arc<Record>>>> {
        let found = read(&self.shards[shard_of(handle)])
            .records
            .get(handle)
            .filter(|r| !r.is_expired(now))
            .cloned();
        Box::pin(std::future::ready(Ok(found)))
    }

    fn holds_expired<'a>(
        &'a self,
        handle: &'a Handle,
        now: OffsetDateTime,
    ) -> BoxFuture<'a, Result<bool>> {
        let expired = read(&self.shards[shard_of(handle)])
            .records
            .get(handle)
            .is_some_and(|r| r.is_expired(now));
        Box::pin(std::future::ready(Ok(expired)))
    }

    fn create<'a>(
        &'a self,
        handle: &'a Handle,
        record: &'a Record,
    ) -> BoxFuture<'a, Result<Created>> {
        Box::pin(std::future::ready(Ok(self.create_sync(handle, record))))
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
        let removed = write(&self.shards[shard_of(handle)])
            .remove(handle)
            .is_some();
        Box::pin(std::future::ready(Ok(removed)))
    }

    fn delete_expired(&self, now: OffsetDateTime, batch: usize) -> BoxFuture<'_, Result<u64>> {
        let mut left = batch;
        for _ in 0..SHARDS {
            if left == 0 {
                break;
            }
            let j = self.sweep_cursor.fetch_add(1, Ordering::Relaxed) % SHARDS;
            left -= write(&self.shards[j]).sweep(now, left);
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
        for shard in self.shards.iter() {
            let shard = read(shard);
            if let Some(handles) = shard.owners.get(owner) {
                for h in handles {
                    if out.len() >= limit {
                        break;
                    }
                    if let Some(r) = shard.records.get(h).filter(|r| !r.is_expired(now)) {
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
        let mut shards: Vec<_> = self.shards.iter().map(write).collect();
        for shard in shards.iter_mut() {
            let doomed: Vec<Handle> = match shard.owners.get(owner) {
                Some(hs) => hs.iter().filter(|h| Some(*h) != keep).copied().collect(),
                None => continue,
            };
            for h in &doomed {
                if shard.remove(h).is_some() {
                    n += 1;
                }
            }
        }
        Box::pin(std::future::ready(Ok(n)))
    }
}
