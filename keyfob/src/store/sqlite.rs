//! The SQLite store (feature `sqlite`): the embedded default.
//!
//! (The rules, caveats and examples are on the public type below,
//! where docs.rs shows them: this module is private.)

use std::{str::FromStr, sync::Arc, time::Duration as StdDuration};

use sqlx::{
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
    Row, SqliteConnection, SqlitePool,
};
use time::OffsetDateTime;

use super::{
    near::{self, NearCache},
    sql::{decode_record, owned_session, valid_identifier},
    sqlite_shm::Watch,
    sqlite_writer::{Op, Out, Writer},
    BoxFuture, Created, OwnedSession, SessionStore, Updated,
};
use crate::{
    error::{Error, Result},
    expiry::secs,
    id::Handle,
    record::{Record, Update},
};

/// Sessions in a SQLite database.
///
/// ```no_run
/// # async fn f(pool: sqlx::SqlitePool) -> Result<(), keyfob::Error> {
/// let store = keyfob::SqliteStore::new(pool);
/// store.migrate().await?;
/// # Ok(()) }
/// ```
///
/// Rules:
/// - built from the app's own `SqlitePool` ([`SqliteStore::new`]) or from a
///   URL ([`SqliteStore::connect`], which sets WAL, `synchronous=FULL` and a
///   5 s busy timeout, and creates the file if missing);
/// - [`SqliteStore::migrate`] owns the schema: a table keyed by the 32-byte
///   handle (never the ID), an index on the expiry column and one on the
///   owner. It runs inside `BEGIN IMMEDIATE`, so two processes starting at
///   once serialize on SQLite's write lock and the second finds the work done;
/// - reads go through the pool; every write of this process goes through one
///   **writer thread** with a connection of its own (rusqlite, on the same
///   linked SQLite library), opened on the pool's database with
///   `synchronous=FULL` whatever the pool sets, and the pool's busy timeout
///   (5 s if it has none). The
///   thread drains its queue into **one transaction per batch** (group
///   commit): concurrent saves share a single fsync, a batch costs one
///   thread wake-up rather than one per statement, and no caller is answered
///   before the transaction holding its write has committed. Inside the batch each
///   update applies its change-set to the record its request loaded, written
///   only if the row still holds that version (one statement); otherwise it
///   reads the current record and applies the change-set to that, so
///   concurrent requests writing different keys both persist, and a deleted
///   session is never written back;
/// - the indexed expiry column holds the deadline rounded up to the minute
///   (only the expired-row sweep reads it; a load goes by the record's own
///   deadline), so a session written many times a minute changes its index
///   entry once a minute, not on every write, and
///   [`delete_expired`](crate::SessionStore::delete_expired) removes a row
///   within a minute after its deadline;
/// - a row that does not decode reads as no session, with a warning;
/// - **near cache**, on by default (50 000 sessions or 64 MiB, see
///   [`with_near_cache`](Self::with_near_cache)): a load of a cached session
///   makes no query. Before a cached record is served, the store reads the
///   commit counter in the header of the file's WAL index (the `-shm` file,
///   one `pread`): if anyone else (another process, another pool) has
///   committed since the cache was last in step, the cache empties and the
///   load is a query. A commit by another process is therefore seen by the
///   very next load, never a stale copy; with several processes writing the
///   same file, the cache empties at each of their commits. This process's
///   own writes refresh the cache with the record they stored. With no
///   `-shm` file (an in-memory database, a journal mode other than WAL) the
///   cache never serves.
///
/// Caveats: with a pool you built yourself, set `busy_timeout` and WAL in its
/// connect options (`migrate` switches the file to WAL, but the busy timeout
/// is per connection). The writer opens the pool's database itself, so it
/// must be one a second connection can open: a file, or `sqlite::memory:`
/// (a shared cache); a private in-memory database is refused by
/// [`migrate`](Self::migrate) with a config error. If a batch fails, its
/// jobs are retried one by one so one bad write cannot fail the others.
///
/// ```no_run
/// use keyfob::{SessionLayer, SqliteStore};
///
/// # async fn f() -> Result<(), keyfob::Error> {
/// let store = SqliteStore::connect("sqlite://sessions.db").await?; // migrates
/// let layer = SessionLayer::new(store);
/// // A table name that is not a plain identifier is refused:
/// let pool = sqlx::SqlitePool::connect("sqlite::memory:").await.map_err(keyfob::Error::store)?;
/// assert!(SqliteStore::new(pool).with_table_name("x; DROP TABLE y").is_err());
/// # let _ = layer; Ok(()) }
/// ```
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: SqlitePool,
    table: String,
    q: Arc<Queries>,
    /// Started by `migrate` or the first write, and again if its thread
    /// has ended (see `sqlite_writer`).
    writer: std::sync::RwLock<Option<Arc<Writer>>>,
    /// Held while a writer starts: two at once would break the single-writer
    /// rules of `sqlite_shm`.
    starting: tokio::sync::Mutex<()>,
    near: Option<Arc<Near>>,
    near_bounds: Option<(u64, u64)>,
}

/// The near cache and what keeps it in step with the file (see `sqlite_shm`).
pub(super) struct Near {
    pub(super) cache: NearCache,
    pub(super) watch: Watch,
    /// A connection held open for the store's lifetime (see `Watch::kept_open`).
    keeper: tokio::sync::OnceCell<Option<std::sync::Mutex<SqliteConnection>>>,
}

impl Near {
    fn new(pool: &SqlitePool, (sessions, bytes): (u64, u64)) -> Arc<Near> {
        let cache = NearCache::new(sessions, bytes);
        // Served only while in step with the file, which `Watch` checks.
        cache.start();
        Arc::new(Near {
            cache,
            watch: Watch::new(pool.connect_options().get_filename()),
            keeper: tokio::sync::OnceCell::new(),
        })
    }

    /// Opens the kept connection on first use (a failure leaves the
    /// per-read `fstat` check on, and is not retried).
    async fn keep_open(&self, pool: &SqlitePool) {
        if self.keeper.initialized() {
            return;
        }
        let kept = self
            .keeper
            .get_or_init(|| async {
                use sqlx::ConnectOptions;
                pool.connect_options()
                    .connect()
                    .await
                    .ok()
                    .map(std::sync::Mutex::new)
            })
            .await;
        if kept.is_some() {
            self.watch.kept_open();
        }
    }

    pub(super) fn resync(&self) {
        self.cache.clear();
    }
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("table", &self.inner.table)
            .finish_non_exhaustive()
    }
}

/// The statements of one table, built once: requests reuse the strings
/// (sqlx's statement cache keys the reads on them; the writer's rusqlite
/// connection caches its prepared statements by the same strings).
pub(super) struct Queries {
    pub(super) load: String,
    list: String,
    holds_expired: String,
    pub(super) purge_one: String,
    pub(super) create: String,
    pub(super) insert: String,
    pub(super) update: String,
    pub(super) update_record: String,
    pub(super) cas: String,
    pub(super) cas_record: String,
    pub(super) delete: String,
    pub(super) delete_expired: String,
    pub(super) delete_owner: String,
}

impl Queries {
    fn new(t: &str) -> Self {
        // `expires_at` is the sweep's minute (`sweep_at`): a row it calls live
        // may still be past its deadline, which the record itself tells.
        let live = "(expires_at IS NULL OR expires_at > ?2)";
        Queries {
            load: format!("SELECT record FROM {t} WHERE handle = ?1 AND {live}"),
            list: format!("SELECT handle, record FROM {t} WHERE owner = ?1 AND {live} LIMIT ?3"),
            holds_expired: format!("SELECT record FROM {t} WHERE handle = ?1"),
            // By the record's own deadline: the minute column may not have
            // passed yet.
            purge_one: format!(
                "DELETE FROM {t} WHERE handle = ?1 AND min(
                    coalesce(json_extract(record, '$.i'), 9223372036854775807),
                    coalesce(json_extract(record, '$.a'), 9223372036854775807)) <= ?2"
            ),
            create: format!(
                "INSERT INTO {t} (handle, owner, expires_at, record) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (handle) DO NOTHING"
            ),
            insert: format!(
                "INSERT INTO {t} (handle, owner, expires_at, record) VALUES (?1, ?2, ?3, ?4)"
            ),
            update: format!(
                "UPDATE {t} SET owner = ?2, expires_at = ?3, record = ?4 WHERE handle = ?1"
            ),
            // The same, when the owner and the sweep minute stay: SQLite
            // leaves the indexes alone only when their columns are not SET.
            update_record: format!("UPDATE {t} SET record = ?2 WHERE handle = ?1"),
            // The two above, only if the row is still at the version the
            // request loaded (`Update::base`): no read before the write.
            cas: format!(
                "UPDATE {t} SET owner = ?2, expires_at = ?3, record = ?4
                 WHERE handle = ?1 AND json_extract(record, '$.v') = ?5"
            ),
            cas_record: format!(
                "UPDATE {t} SET record = ?2 WHERE handle = ?1 AND json_extract(record, '$.v') = ?3"
            ),
            delete: format!("DELETE FROM {t} WHERE handle = ?1"),
            delete_expired: format!(
                "DELETE FROM {t} WHERE rowid IN (
                    SELECT rowid FROM {t} WHERE expires_at IS NOT NULL AND expires_at <= ?1 LIMIT ?2)
                 RETURNING handle"
            ),
            delete_owner: format!(
                "DELETE FROM {t} WHERE owner = ?1 AND (?2 IS NULL OR handle <> ?2)"
            ),
        }
    }
}

impl SqliteStore {
    /// A store on the app's pool, table `keyfob_sessions`. Call
    /// [`migrate`](Self::migrate) once at start-up.
    pub fn new(pool: SqlitePool) -> Self {
        Self::with_parts(
            pool,
            "keyfob_sessions",
            Some((near::DEFAULT_ENTRIES, near::DEFAULT_BYTES)),
        )
    }

    fn with_parts(pool: SqlitePool, table: &str, near: Option<(u64, u64)>) -> Self {
        SqliteStore {
            inner: Arc::new(Inner {
                near: near.map(|bounds| Near::new(&pool, bounds)),
                near_bounds: near,
                pool,
                table: table.to_owned(),
                q: Arc::new(Queries::new(table)),
                writer: std::sync::RwLock::new(None),
                starting: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// Bounds the near cache (default 50 000 sessions and 64 MiB, whichever
    /// is reached first).
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), keyfob::Error> {
    /// let store = keyfob::SqliteStore::connect("sqlite://sessions.db").await?
    ///     .with_near_cache(200_000, 256 << 20);
    /// # let _ = store; Ok(()) }
    /// ```
    #[must_use]
    pub fn with_near_cache(self, max_sessions: u64, max_bytes: u64) -> Self {
        Self::with_parts(
            self.inner.pool.clone(),
            &self.inner.table,
            Some((max_sessions, max_bytes)),
        )
    }

    /// Turns the near cache off: every load is a query.
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), keyfob::Error> {
    /// let store = keyfob::SqliteStore::connect("sqlite://sessions.db").await?.without_near_cache();
    /// # let _ = store; Ok(()) }
    /// ```
    #[must_use]
    pub fn without_near_cache(self) -> Self {
        Self::with_parts(self.inner.pool.clone(), &self.inner.table, None)
    }

    /// Uses another table name (letters, digits, `_`).
    ///
    /// # Errors
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) for a name that is not a plain identifier.
    pub fn with_table_name(self, table: &str) -> Result<Self> {
        valid_identifier(table)?;
        Ok(Self::with_parts(
            self.inner.pool.clone(),
            table,
            self.inner.near_bounds,
        ))
    }

    /// Opens (creating if missing) the database at `url` (`sqlite://PATH` or
    /// `sqlite::memory:`) with WAL, `synchronous=FULL` and a 5 s busy
    /// timeout, and migrates it.
    ///
    /// # Errors
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) for a malformed URL,
    /// [`ErrorKind::Store`](crate::ErrorKind::Store) when it cannot be opened.
    pub async fn connect(url: &str) -> Result<Self> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| Error::config_from(format!("invalid SQLite URL {url:?}"), e))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(StdDuration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await
            .map_err(Error::store)?;
        let store = SqliteStore::new(pool);
        store.migrate().await?;
        Ok(store)
    }

    /// The pool this store uses.
    pub fn pool(&self) -> &SqlitePool {
        &self.inner.pool
    }

    /// Creates or upgrades the schema. Safe to run from several processes at once.
    ///
    /// Then starts the store's writer (see the type's docs), so a database
    /// the writer cannot reach is an error here, at start-up. A store made
    /// from this one by [`with_table_name`](Self::with_table_name) or the
    /// near-cache settings has a writer of its own, started by its own
    /// `migrate` or first write: configure, then migrate.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), keyfob::Error> {
    /// use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
    /// // `sqlite::memory:` is one database, shared by every connection: fine.
    /// let shared = SqlitePoolOptions::new()
    ///     .connect("sqlite::memory:")
    ///     .await
    ///     .map_err(keyfob::Error::store)?;
    /// keyfob::SqliteStore::new(shared).migrate().await?;
    /// // A private in-memory database (one per connection) is out of the
    /// // writer's reach: refused.
    /// let private = SqlitePoolOptions::new()
    ///     .max_connections(1)
    ///     .connect_with(SqliteConnectOptions::new().in_memory(true))
    ///     .await
    ///     .map_err(keyfob::Error::store)?;
    /// let refused = keyfob::SqliteStore::new(private).migrate().await;
    /// assert_eq!(refused.map_err(|e| e.kind()), Err(keyfob::ErrorKind::Config));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`ErrorKind::Store`](crate::ErrorKind::Store) when the database refuses;
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) when the writer, on a
    /// connection of its own, cannot see the table (a private in-memory
    /// database) or is shut out (`locking_mode=EXCLUSIVE`).
    pub async fn migrate(&self) -> Result<()> {
        let t = &self.inner.table;
        let pool = &self.inner.pool;
        // Persistent on the file; cannot run inside a transaction.
        sqlx::query("PRAGMA journal_mode=WAL")
            .execute(pool)
            .await
            .map_err(Error::store)?;
        let mut tx = pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(Error::store)?;
        sqlx::query(&format!(
            "CREATE TABLE IF NOT EXISTS {t}_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)"
        ))
        .execute(&mut *tx)
        .await
        .map_err(Error::store)?;
        let done: Option<i64> =
            sqlx::query_scalar(&format!("SELECT MAX(version) FROM {t}_migrations"))
                .fetch_one(&mut *tx)
                .await
                .map_err(Error::store)?;
        if done.unwrap_or(0) < 1 {
            for stmt in [
                format!(
                    "CREATE TABLE IF NOT EXISTS {t} (
                        handle BLOB PRIMARY KEY NOT NULL,
                        owner TEXT,
                        expires_at INTEGER,
                        record TEXT NOT NULL
                    )"
                ),
                format!("CREATE INDEX IF NOT EXISTS {t}_expires_at ON {t} (expires_at)"),
                format!("CREATE INDEX IF NOT EXISTS {t}_owner ON {t} (owner)"),
                format!("INSERT INTO {t}_migrations (version, applied_at) VALUES (1, unixepoch())"),
            ] {
                sqlx::query(&stmt)
                    .execute(&mut *tx)
                    .await
                    .map_err(Error::store)?;
            }
        }
        if done.unwrap_or(0) < 2 {
            // `expires_at` is the sweep's minute now (`sweep_at`): rows
            // written before hold the exact deadline, which an update that
            // leaves the column alone would keep.
            for stmt in [
                format!(
                    "UPDATE {t} SET expires_at = (expires_at / 60 + 1) * 60
                     WHERE expires_at IS NOT NULL AND expires_at > 0 AND expires_at % 60 <> 0"
                ),
                format!("INSERT INTO {t}_migrations (version, applied_at) VALUES (2, unixepoch())"),
            ] {
                sqlx::query(&stmt)
                    .execute(&mut *tx)
                    .await
                    .map_err(Error::store)?;
            }
        }
        tx.commit().await.map_err(Error::store)?;
        // A writer that cannot reach this database is a start-up error, not
        // a failure of every later write.
        self.writer().await.map(drop)
    }

    /// The running writer, started if there is none (see `sqlite_writer`).
    async fn writer(&self) -> Result<Arc<Writer>> {
        let running = || {
            self.inner
                .writer
                .read()
                .ok()
                .and_then(|w| w.clone())
                .filter(|w| w.is_running())
        };
        if let Some(w) = running() {
            return Ok(w);
        }
        let _one_at_a_time = self.inner.starting.lock().await;
        if let Some(w) = running() {
            return Ok(w);
        }
        let w = Arc::new(
            Writer::start(
                &self.inner.pool,
                &self.inner.table,
                self.inner.q.clone(),
                self.inner.near.clone(),
            )
            .await?,
        );
        if let Ok(mut slot) = self.inner.writer.write() {
            *slot = Some(w.clone());
        }
        Ok(w)
    }

    async fn submit(&self, op: Op) -> Result<Out> {
        self.writer().await?.submit(op).await
    }
}

fn unexpected() -> Error {
    Error::store_msg("the SQLite writer answered with the wrong kind of result")
}

impl SessionStore for SqliteStore {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    /// The writer then applies a change to the request's copy and writes it
    /// if the row is still at that version, with no read first.
    fn update_uses_base(&self) -> bool {
        true
    }

    fn load<'a>(
        &'a self,
        handle: &'a Handle,
        now: OffsetDateTime,
    ) -> BoxFuture<'a, Result<Option<Arc<Record>>>> {
        Box::pin(async move {
            let near = self.inner.near.as_deref();
            let mut ticket = None;
            if let Some(n) = near {
                n.keep_open(&self.inner.pool).await;
                if n.watch.in_step(|| n.resync()) {
                    if let Some(hit) = n.cache.get(handle, now) {
                        return Ok(Some(hit));
                    }
                }
                ticket = Some(n.cache.ticket(handle));
            }
            let q = &self.inner.q;
            let row: Option<String> = sqlx::query_scalar(&q.load)
                .bind(&handle.as_bytes()[..])
                .bind(secs(now))
                .fetch_optional(&self.inner.pool)
                .await
                .map_err(Error::store)?;
            let found = row
                .and_then(|text| decode_record(handle, &text))
                .filter(|r| !r.is_expired(now))
                .map(Arc::new);
            if let (Some(n), Some(ticket), Some(record)) = (near, ticket, &found) {
                n.cache.put(handle, record.clone(), ticket);
            }
            Ok(found)
        })
    }

    fn holds_expired<'a>(
        &'a self,
        handle: &'a Handle,
        now: OffsetDateTime,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let q = &self.inner.q;
            let row: Option<String> = sqlx::query_scalar(&q.holds_expired)
                .bind(&handle.as_bytes()[..])
                .fetch_optional(&self.inner.pool)
                .await
                .map_err(Error::store)?;
            Ok(row
                .and_then(|text| decode_record(handle, &text))
                .is_some_and(|r| r.is_expired(now)))
        })
    }

    fn create<'a>(
        &'a self,
        handle: &'a Handle,
        record: &'a Record,
    ) -> BoxFuture<'a, Result<Created>> {
        Box::pin(async move {
            // The writer thread keeps the near cache (see `Near::committed`).
            match self.submit(Op::Create(*handle, record.clone())).await? {
                Out::Created(c) => Ok(c),
                _ => Err(unexpected()),
            }
        })
    }

    fn update<'a>(
        &'a self,
        handle: &'a Handle,
        update: &'a Update,
        now: OffsetDateTime,
    ) -> BoxFuture<'a, Result<Updated>> {
        Box::pin(async move {
            match self
                .submit(Op::Update(*handle, update.clone(), now))
                .await?
            {
                Out::Written(..) => Ok(Updated::Applied),
                Out::Gone => Ok(Updated::Gone),
                _ => Err(unexpected()),
            }
        })
    }

    fn delete<'a>(&'a self, handle: &'a Handle) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            match self.submit(Op::Delete(*handle)).await? {
                Out::Count(n) => Ok(n > 0),
                _ => Err(unexpected()),
            }
        })
    }

    fn delete_expired(&self, now: OffsetDateTime, batch: usize) -> BoxFuture<'_, Result<u64>> {
        Box::pin(async move {
            match self.submit(Op::DeleteExpired(now, batch)).await? {
                Out::Purged(gone) => Ok(gone.len() as u64),
                _ => Err(unexpected()),
            }
        })
    }

    fn list_by_owner<'a>(
        &'a self,
        owner: &'a str,
        now: OffsetDateTime,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<OwnedSession>>> {
        Box::pin(async move {
            let q = &self.inner.q;
            let rows = sqlx::query(&q.list)
                .bind(owner)
                .bind(secs(now))
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                .fetch_all(&self.inner.pool)
                .await
                .map_err(Error::store)?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                let bytes: Vec<u8> = row.try_get(0).map_err(Error::store)?;
                let text: String = row.try_get(1).map_err(Error::store)?;
                out.extend(owned_session(&bytes, &text).filter(|s| !s.record.is_expired(now)));
            }
            Ok(out)
        })
    }

    fn delete_by_owner<'a>(
        &'a self,
        owner: &'a str,
        keep: Option<&'a Handle>,
    ) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            match self
                .submit(Op::DeleteByOwner(owner.to_owned(), keep.copied()))
                .await?
            {
                Out::Count(n) => Ok(n),
                _ => Err(unexpected()),
            }
        })
    }
}
