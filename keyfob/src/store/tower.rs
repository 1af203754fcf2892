//! An adapter that runs a tower-sessions 0.14 store under keyfob.
//!
//! (The rules, caveats and examples are on the public type below, where
//! docs.rs shows them: this module is private.)

use std::{collections::HashMap, sync::Arc};

use time::OffsetDateTime;
use tower_sessions_core::{
    session::{Id, Record as TowerRecord},
    SessionStore as TowerStore,
};

use super::{BoxFuture, Created, SessionStore, Updated};
use crate::{
    error::{Error, ErrorKind, Result},
    id::Handle,
    record::{Data, Record, Update},
};

/// The key under which keyfob keeps its own fields (created, last seen,
/// deadlines, owner, expiry, version) in the tower-sessions record's data.
/// It is in keyfob's reserved namespace, so no app can write it.
const META: &str = "keyfob.meta";

/// Any `tower_sessions::SessionStore` (0.14: MongoDB, DynamoDB, SurrealDB…)
/// as a keyfob store (feature `tower-sessions`).
///
/// ```
/// use keyfob::{SessionLayer, TowerSessionsStore};
///
/// # #[derive(Debug, Clone, Default)] struct MyTowerStore;
/// # #[async_trait::async_trait]
/// # impl tower_sessions_core::SessionStore for MyTowerStore {
/// #     async fn save(&self, _: &tower_sessions_core::session::Record) -> tower_sessions_core::session_store::Result<()> { Ok(()) }
/// #     async fn load(&self, _: &tower_sessions_core::session::Id) -> tower_sessions_core::session_store::Result<Option<tower_sessions_core::session::Record>> { Ok(None) }
/// #     async fn delete(&self, _: &tower_sessions_core::session::Id) -> tower_sessions_core::session_store::Result<()> { Ok(()) }
/// # }
/// // Your community store, unchanged:
/// let layer = SessionLayer::new(TowerSessionsStore::new(MyTowerStore::default()));
/// # let _ = layer;
/// ```
///
/// Each keyfob session is one tower-sessions record, its ID taken from the
/// session's handle (the first 128 of its 256 bits; the cookie's ID never
/// reaches the store). keyfob's own fields ride in the record's data under
/// a reserved key, and the record's `expiry_date` is the session's earliest
/// deadline, so the store's own expiry (a TTL, its `ExpiredDeletion`) ends it.
///
/// What this store cannot promise, and what it does instead of pretending:
/// - **whole-record saves**: a tower-sessions store only saves whole
///   records, so an update reads the record, applies the change-set and saves
///   it back. Two requests of one session writing different keys at the same
///   moment can lose one write (every keyfob store merges them; this one
///   cannot). `create` is likewise a load, then a save;
/// - **no owner index**: [`list_by_owner`](SessionStore::list_by_owner) and
///   [`delete_by_owner`](SessionStore::delete_by_owner) answer
///   [`ErrorKind::Unsupported`] (a user's session list and "log out
///   everywhere" fail loudly, never answer "none"), and the per-user session
///   cap is not enforced;
/// - **no compare-and-swap**: a logout or ID rotation that lands between
///   another request's load and save of the same session (one store round
///   trip apart) can be undone by that save. keyfob's own stores refuse to
///   write a session back once it is gone; on this one, a revocation is as
///   strong as the backend's last writer wins;
/// - **no expired-record sweep**: [`delete_expired`](SessionStore::delete_expired)
///   answers [`ErrorKind::Unsupported`]: expire records with the store's own
///   means. Expired records are never served either way.
#[derive(Debug, Clone)]
pub struct TowerSessionsStore<S> {
    inner: S,
}

impl<S: TowerStore> TowerSessionsStore<S> {
    /// keyfob sessions kept in `store`.
    ///
    /// ```
    /// let store = keyfob::TowerSessionsStore::new(tower_sessions_memory_store::MemoryStore::default());
    /// # let _ = store;
    /// ```
    pub fn new(store: S) -> Self {
        TowerSessionsStore { inner: store }
    }

    async fn fetch(&self, handle: &Handle) -> Result<Option<Record>> {
        let found = self
            .inner
            .load(&id_of(handle))
            .await
            .map_err(Error::store)?;
        Ok(found.and_then(from_tower))
    }

    async fn put(&self, handle: &Handle, record: &Record) -> Result<()> {
        let tower = to_tower(handle, record)?;
        self.inner.save(&tower).await.map_err(Error::store)
    }

    async fn create_inner(&self, handle: &Handle, record: &Record) -> Result<Created> {
        let now = record.last_seen();
        if self
            .fetch(handle)
            .await?
            .is_some_and(|r| !r.is_expired(now))
        {
            return Ok(Created::Collision);
        }
        self.put(handle, record).await?;
        Ok(Created::Stored)
    }

    async fn update_inner(
        &self,
        handle: &Handle,
        update: &Update,
        now: OffsetDateTime,
    ) -> Result<Updated> {
        let Some(mut record) = self.fetch(handle).await?.filter(|r| !r.is_expired(now)) else {
            return Ok(Updated::Gone);
        };
        record.apply(update);
        match update.rename_to() {
            Some(to) => {
                self.put(to, &record).await?;
                self.inner
                    .delete(&id_of(handle))
                    .await
                    .map_err(Error::store)?;
            }
            None => self.put(handle, &record).await?,
        }
        Ok(Updated::Applied)
    }

    async fn delete_inner(&self, handle: &Handle) -> Result<bool> {
        let existed = self.fetch(handle).await?.is_some();
        self.inner
            .delete(&id_of(handle))
            .await
            .map_err(Error::store)?;
        Ok(existed)
    }
}

/// The tower-sessions ID of a session: the first 128 bits of its handle.
fn id_of(handle: &Handle) -> Id {
    let mut half = [0u8; 16];
    half.copy_from_slice(&handle.as_bytes()[..16]);
    Id(i128::from_le_bytes(half))
}

fn to_tower(handle: &Handle, record: &Record) -> Result<TowerRecord> {
    let json = |e| Error::with_source(ErrorKind::Serialize, e);
    let mut data = HashMap::with_capacity(record.len() + 1);
    for (key, value) in record.data.entries() {
        data.insert(key.to_owned(), serde_json::from_str(value).map_err(json)?);
    }
    let meta = Record {
        data: Data::default(),
        ..record.clone()
    };
    data.insert(META.to_owned(), serde_json::to_value(&meta).map_err(json)?);
    Ok(TowerRecord {
        id: id_of(handle),
        data,
        // No deadline at all is refused by the layer; the far future covers
        // a record built outside it.
        expiry_date: record
            .expires_at()
            .unwrap_or_else(|| OffsetDateTime::now_utc() + time::Duration::days(3650)),
    })
}

/// A record keyfob wrote, or `None` for anything else under that ID.
fn from_tower(tower: TowerRecord) -> Option<Record> {
    let mut data = tower.data;
    let mut record: Record = serde_json::from_value(data.remove(META)?).ok()?;
    let entries = data
        .into_iter()
        .map(|(key, value)| Some((key, serde_json::value::to_raw_value(&value).ok()?)))
        .collect::<Option<Vec<_>>>()?;
    record.data = Data::from_entries(entries);
    Some(record)
}

impl<S: TowerStore> SessionStore for TowerSessionsStore<S> {
    fn kind(&self) -> &'static str {
        "tower-sessions"
    }

    fn load<'a>(
        &'a self,
        handle: &'a Handle,
        now: OffsetDateTime,
    ) -> BoxFuture<'a, Result<Option<Arc<Record>>>> {
        Box::pin(async move {
            Ok(self
                .fetch(handle)
                .await?
                .filter(|r| !r.is_expired(now))
                .map(Arc::new))
        })
    }

    fn holds_expired<'a>(
        &'a self,
        handle: &'a Handle,
        now: OffsetDateTime,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move { Ok(self.fetch(handle).await?.is_some_and(|r| r.is_expired(now))) })
    }

    fn create<'a>(
        &'a self,
        handle: &'a Handle,
        record: &'a Record,
    ) -> BoxFuture<'a, Result<Created>> {
        Box::pin(self.create_inner(handle, record))
    }

    fn update<'a>(
        &'a self,
        handle: &'a Handle,
        update: &'a Update,
        now: OffsetDateTime,
    ) -> BoxFuture<'a, Result<Updated>> {
        Box::pin(self.update_inner(handle, update, now))
    }

    fn delete<'a>(&'a self, handle: &'a Handle) -> BoxFuture<'a, Result<bool>> {
        Box::pin(self.delete_inner(handle))
    }

    fn delete_expired(&self, _: OffsetDateTime, _: usize) -> BoxFuture<'_, Result<u64>> {
        Box::pin(std::future::ready(Err(Error::new(
            ErrorKind::Unsupported,
            "a tower-sessions store expires its records itself (a TTL, or its ExpiredDeletion): \
             run that instead of keyfob's cleanup",
        ))))
    }
}
