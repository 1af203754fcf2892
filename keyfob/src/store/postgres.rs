//! The PostgreSQL store (feature `postgres`).
//!
//! (The rules, caveats and examples are on the public type below,
//! where docs.rs shows them: this module is private.)

use std::{str::FromStr, sync::Arc, time::Duration as StdDuration};

use serde::Serialize;
use sqlx::{
    postgres::{PgConnectOptions, PgListener, PgPoolOptions, PgRow},
    PgPool, Row,
};
use time::OffsetDateTime;

use super::{
    near::{self, NearCache},
    sql::{handle_from, sweep_at, valid_identifier},
    BoxFuture, Created, OwnedSession, SessionStore, Updated,
};
use crate::{
    error::{Error, ErrorKind, Result},
    expiry::secs,
    expiry::Expiry,
    id::Handle,
    record::{Data, Record, Update},
};

/// Sessions in a PostgreSQL table.
///
/// ```no_run
/// # async fn f(pool: sqlx::PgPool) -> Result<(), keyfob::Error> {
/// let store = keyfob::PostgresStore::new(pool)
///     .with_schema("auth")?
///     .with_table_name("sessions")?;
/// store.migrate().await?;
/// # Ok(()) }
/// ```
///
/// Rules:
/// - built from the app's own `PgPool` ([`PostgresStore::new`]) or a URL
///   ([`PostgresStore::connect`]); schema and table names are configurable
///   and checked to be plain identifiers;
/// - [`PostgresStore::migrate`] runs under a transaction-scoped advisory
///   lock, so replicas starting at once serialize and the later ones find the
///   work done;
/// - the session data is a `jsonb` column and a change-set is applied by **one
///   `UPDATE` statement** (`(data - removed) || set`, metadata, version, and
///   the handle itself on rotation) guarded by the record's deadline: atomic,
///   one round trip, no lost update between concurrent writers of different
///   keys, and a deleted or expired row is never written back;
/// - a session written many times a minute costs PostgreSQL a HOT update
///   (no index entry): the indexed `expires_at` column, which only the
///   expired-row sweep reads, holds the deadline rounded up to the minute,
///   so [`delete_expired`](SessionStore::delete_expired) removes a row
///   within a minute after its deadline (loads go by the deadline itself).
///   Migration 3 sets the table's fillfactor to 80, which applies to pages
///   written from then on (`VACUUM FULL` rewrites an existing table);
/// - records are keyed by the 32-byte handle, never the ID; a row whose
///   values do not decode reads as no session, with a warning;
/// - **near cache**, on by default (50 000 sessions or 64 MiB, see
///   [`with_near_cache`](Self::with_near_cache)): a load of a cached session
///   makes no round trip, and a write makes one (its `UPDATE … RETURNING`
///   row refreshes the cache). It is kept coherent by the database, never
///   by a timer: a trigger (created by `migrate`) notifies every change of a
///   row on a `LISTEN` channel, with the version it wrote; every process
///   listens and drops older copies. The cache answers only while its
///   `LISTEN` connection is subscribed: the moment that connection is found
///   lost (server restart, connection killed), it empties and every load
///   goes to the server until it has subscribed again. A logout or
///   revocation made through this process is seen by its very next
///   request; one made through another process, within the notification
///   latency (p50 about 0.15 ms, p99 about 4 ms on loopback; see
///   `BENCHMARKS.md`). Within that window a request routed to another
///   replica can read the session as it was before: a value it computes
///   from the old one (a counter) then overwrites the newer one, as two
///   concurrent requests would. Keys written independently still merge.
///
/// Caveats: `jsonb` normalises JSON (key order, whitespace), so a value reads
/// back equal but not necessarily byte-identical. The listener holds one
/// connection (on the pool's connect options, outside the pool, so not
/// through an `after_connect` hook: name the table with its schema, or set
/// the search path in the options; named `keyfob-near-cache:<schema>.<table>`
/// in `pg_stat_activity`) and each second sends its own channel a
/// ping through a second one (one `pg_notify` a second per process, heard by
/// every process). A `LISTEN` connection that hears nothing for 3 seconds, not
/// even its pings, is taken for dead (a network partition, a frozen peer:
/// no FIN, so TCP would take hours) and the cache stops serving until it
/// has subscribed again: a silently broken channel can leave this process
/// serving what another one changed for at most those 3 seconds. Turn the
/// cache off ([`without_near_cache`](Self::without_near_cache)) where even
/// that matters.
///
/// ```no_run
/// use keyfob::{SessionLayer, PostgresStore};
///
/// # async fn f() -> Result<(), keyfob::Error> {
/// let store = PostgresStore::connect("postgres://app@localhost/app").await?; // migrates
/// let layer = SessionLayer::new(store);
/// // Names that are not plain identifiers are refused:
/// let pool = sqlx::PgPool::connect_lazy("postgres://localhost/app").map_err(keyfob::Error::store)?;
/// assert!(PostgresStore::new(pool).with_schema("public; --").is_err());
/// # let _ = layer; Ok(()) }
/// ```
#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
    schema: Arc<str>,
    table: Arc<str>,
    q: Arc<Queries>,
    /// The near cache and its listener; `None` when turned off.
    near: Option<Arc<Near>>,
    /// Its bounds (sessions, bytes), kept across a change of table.
    near_bounds: Option<(u64, u64)>,
}

/// The near cache of one store and the task that keeps it coherent.
struct Near {
    cache: Arc<NearCache>,
    listener: near::Keeper,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("table", &self.q.table)
            .finish_non_exhaustive()
    }
}

struct Queries {
    table: String,
    /// The `LISTEN` channel the table's trigger notifies on.
    channel: String,
    /// The `application_name` of the listener's connections.
    listener_name: String,
    /// Whether the table's notify trigger exists.
    has_trigger: String,
    load: String,
    create: String,
    update: String,
    update_returning: String,
    delete: String,
    delete_expired: String,
    list: String,
    delete_owner: String,
}

const COLUMNS: &str =
    "created, last_seen, idle_deadline, absolute_deadline, owner, expiry, version, data::text";

impl Queries {
    fn new(schema: &str, table: &str) -> Self {
        let t = format!("\"{schema}\".\"{table}\"");
        // Live by the record's own deadline. `expires_at` is only the
        // sweep's: the deadline rounded up to the minute (see `migrate`).
        let live = "(COALESCE(LEAST(idle_deadline, absolute_deadline), 9223372036854775807) > $2)";
        let mut q = Queries {
            load: format!("SELECT {COLUMNS} FROM {t} WHERE handle = $1 AND {live}"),
            create: format!(
                "INSERT INTO {t} AS s (handle, created, last_seen, idle_deadline, absolute_deadline,
                    expires_at, owner, expiry, version, data)
                 VALUES ($1, $3, $4, $5, $6, $7, $8, $9, $10, $11::jsonb)
                 ON CONFLICT (handle) DO UPDATE SET
                    created = EXCLUDED.created, last_seen = EXCLUDED.last_seen,
                    idle_deadline = EXCLUDED.idle_deadline,
                    absolute_deadline = EXCLUDED.absolute_deadline,
                    expires_at = EXCLUDED.expires_at, owner = EXCLUDED.owner,
                    expiry = EXCLUDED.expiry, version = EXCLUDED.version, data = EXCLUDED.data
                 WHERE LEAST(s.idle_deadline, s.absolute_deadline) <= $2"
            ),
            update: format!(
                "UPDATE {t} SET
                    data = (CASE WHEN $3 THEN '{{}}'::jsonb ELSE data END - $4::text[]) || $5::jsonb,
                    last_seen = $6,
                    idle_deadline = $7,
                    -- `sql::sweep_at`, in SQL: the deadline rounded up to the minute.
                    expires_at = (LEAST($7::bigint, absolute_deadline) + 59) / 60 * 60,
                    owner = CASE WHEN $8 THEN $9 ELSE owner END,
                    expiry = CASE WHEN $10 THEN $11 ELSE expiry END,
                    version = version + 1,
                    handle = COALESCE($12, handle)
                 WHERE handle = $1 AND {live}"
            ),
            update_returning: String::new(),
            delete: format!("DELETE FROM {t} WHERE handle = $1"),
            delete_expired: format!(
                "DELETE FROM {t} WHERE ctid IN (
                    SELECT ctid FROM {t} WHERE expires_at IS NOT NULL AND expires_at <= $1 LIMIT $2)
                 RETURNING handle"
            ),
            list: format!(
                "SELECT handle, {COLUMNS} FROM {t} WHERE owner = $1 AND {live} LIMIT $3"
            ),
            delete_owner: format!(
                "DELETE FROM {t} WHERE owner = $1 AND ($2::bytea IS NULL OR handle <> $2)
                 RETURNING handle"
            ),
            channel: channel(schema, table),
            listener_name: listener_name(schema, table),
            has_trigger: format!(
                "SELECT EXISTS (SELECT 1 FROM pg_trigger
                    WHERE tgrelid = to_regclass('{t}') AND tgname = '{table}_notify')"
            ),
            table: t,
        };
        // The same write, sending back the row it stored (for the near cache).
        q.update_returning = format!("{} RETURNING {COLUMNS}", q.update);
        q
    }
}

/// The notification channel of `schema.table`: short (PostgreSQL caps
/// channel names at 63 bytes) and the same in every process.
fn channel(schema: &str, table: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("{schema}.{table}").as_bytes());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("keyfob_{hex}")
}

/// The `application_name` of the near cache's own connections (the
/// `LISTEN` one and its pinger), so that `pg_stat_activity` tells an
/// operator what they are and for which table: `keyfob-near-cache:` and
/// the table, cut to the 63 bytes PostgreSQL keeps.
fn listener_name(schema: &str, table: &str) -> String {
    let mut name = format!("keyfob-near-cache:{schema}.{table}");
    let mut end = name.len().min(63);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name.truncate(end);
    name
}

/// A write PostgreSQL refused because of the value itself (a `\u0000` in
/// JSON or text, which `jsonb` cannot hold) is the app's data problem, not
/// an outage: report it as such instead of `503`.
fn write_error(e: sqlx::Error) -> Error {
    let bad_value = e
        .as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| c == "22P05" || c == "22021");
    if bad_value {
        Error::with_source(ErrorKind::Serialize, e)
    } else {
        Error::store(e)
    }
}

fn to_json<T: Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| Error::with_source(ErrorKind::Serialize, e))
}

/// Reads a record from a row starting at column `at`; `None` (with a
/// warning) when its values do not decode.
fn record_from(row: &PgRow, at: usize, handle: &Handle) -> Result<Option<Record>> {
    let get_i64 = |i: usize| row.try_get::<i64, _>(at + i).map_err(Error::store);
    let get_opt = |i: usize| row.try_get::<Option<i64>, _>(at + i).map_err(Error::store);
    let owner: Option<String> = row.try_get(at + 4).map_err(Error::store)?;
    let expiry: Option<String> = row.try_get(at + 5).map_err(Error::store)?;
    let data: String = row.try_get(at + 7).map_err(Error::store)?;
    let decoded = serde_json::from_str::<Data>(&data).and_then(|d| {
        let e = match &expiry {
            Some(text) => serde_json::from_str::<Option<Expiry>>(text)?,
            None => None,
        };
        Ok((d, e))
    });
    let (data, expiry) = match decoded {
        Ok(v) => v,
        Err(err) => {
            tracing::warn!(
                handle = %handle.short(),
                error = %err,
                "keyfob: stored session row does not decode; treating it as no session"
            );
            return Ok(None);
        }
    };
    Ok(Some(Record {
        data,
        created: get_i64(0)?,
        last_seen: get_i64(1)?,
        idle_deadline: get_opt(2)?.into(),
        absolute_deadline: get_opt(3)?.into(),
        owner: owner.map(String::into_boxed_str),
        expiry: expiry.map(Box::new),
        version: u64::try_from(get_i64(6)?).unwrap_or(0),
    }))
}

impl PostgresStore {
    /// A store on the app's pool, table `public.keyfob_sessions`. Call
    /// [`migrate`](Self::migrate) once at start-up.
    pub fn new(pool: PgPool) -> Self {
        Self::with_names(
            pool,
            "public",
            "keyfob_sessions",
            Some((near::DEFAULT_ENTRIES, near::DEFAULT_BYTES)),
        )
    }

    fn with_names(pool: PgPool, schema: &str, table: &str, near: Option<(u64, u64)>) -> Self {
        PostgresStore {
            pool,
            schema: schema.into(),
            table: table.into(),
            q: Arc::new(Queries::new(schema, table)),
            near: near.map(|(sessions, bytes)| Near::new(sessions, bytes)),
            near_bounds: near,
        }
    }

    /// Bounds the near cache (default 50 000 sessions and 64 MiB, whichever
    /// is reached first).
    ///
    /// ```no_run
    /// # async fn f(pool: sqlx::PgPool) {
    /// let store = keyfob::PostgresStore::new(pool).with_near_cache(200_000, 256 << 20);
    /// # let _ = store; }
    /// ```
    #[must_use]
    pub fn with_near_cache(mut self, max_sessions: u64, max_bytes: u64) -> Self {
        self.near = Some(Near::new(max_sessions, max_bytes));
        self.near_bounds = Some((max_sessions, max_bytes));
        self
    }

    /// Turns the near cache off: every load asks the server.
    ///
    /// ```no_run
    /// # async fn f(pool: sqlx::PgPool) {
    /// let store = keyfob::PostgresStore::new(pool).without_near_cache();
    /// assert!(!store.near_cache_serving());
    /// # }
    /// ```
    #[must_use]
    pub fn without_near_cache(mut self) -> Self {
        self.near = None;
        self.near_bounds = None;
        self
    }

    /// Whether the near cache answers loads right now: it is on, and its
    /// `LISTEN` connection is subscribed. While it is not (before the first
    /// load, while the connection is lost), every load asks the server.
    ///
    /// ```no_run
    /// # async fn f(store: keyfob::PostgresStore) {
    /// if !store.near_cache_serving() {
    ///     // every load is a round trip to PostgreSQL right now
    /// }
    /// # }
    /// ```
    pub fn near_cache_serving(&self) -> bool {
        self.near.as_ref().is_some_and(|n| n.cache.is_serving())
    }

    /// The near cache, its listener started or restarted (see `near::Keeper`).
    fn near(&self) -> Option<&NearCache> {
        let near = self.near.as_ref()?;
        near.listener.ensure(|| {
            listen(
                self.pool.clone(),
                self.q.channel.clone(),
                self.q.has_trigger.clone(),
                self.q.listener_name.clone(),
                near.cache.clone(),
            )
        });
        Some(&near.cache)
    }

    /// Uses another schema (created by `migrate` if missing).
    ///
    /// # Errors
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) for a name that is not a plain identifier.
    pub fn with_schema(self, schema: &str) -> Result<Self> {
        valid_identifier(schema)?;
        Ok(Self::with_names(
            self.pool,
            schema,
            &self.table,
            self.near_bounds,
        ))
    }

    /// Uses another table name.
    ///
    /// # Errors
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) for a name that is not a plain identifier.
    pub fn with_table_name(self, table: &str) -> Result<Self> {
        valid_identifier(table)?;
        Ok(Self::with_names(
            self.pool,
            &self.schema,
            table,
            self.near_bounds,
        ))
    }

    /// Connects to `url` (`postgres://…`) and migrates.
    ///
    /// # Errors
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) for a malformed URL,
    /// [`ErrorKind::Store`](crate::ErrorKind::Store) when the server cannot be reached.
    pub async fn connect(url: &str) -> Result<Self> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| Error::config_from("invalid PostgreSQL URL", e))?;
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(StdDuration::from_secs(2))
            // Dead connections after a server restart are found by a ping
            // before use and replaced; the short acquire timeout makes an
            // outage a prompt `503` and caps sqlx's reconnect backoff at
            // 400 ms, so requests succeed again soon after the server returns.
            .test_before_acquire(true)
            .connect_with(options)
            .await
            .map_err(Error::store)?;
        let store = PostgresStore::new(pool);
        store.migrate().await?;
        Ok(store)
    }

    /// The pool this store uses.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Creates or upgrades the schema, under an advisory lock.
    ///
    /// # Errors
    /// [`ErrorKind::Store`](crate::ErrorKind::Store) when the server refuses.
    pub async fn migrate(&self) -> Result<()> {
        let (schema, table) = (&*self.schema, &*self.table);
        let t = &self.q.table;
        let mut tx = self.pool.begin().await.map_err(Error::store)?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
            .bind(format!("keyfob:{schema}.{table}"))
            .execute(&mut *tx)
            .await
            .map_err(Error::store)?;
        let statements = [
            format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""),
            format!(
                "CREATE TABLE IF NOT EXISTS \"{schema}\".\"{table}_migrations\" (
                    version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
            ),
        ];
        for stmt in &statements {
            sqlx::query(stmt)
                .execute(&mut *tx)
                .await
                .map_err(Error::store)?;
        }
        let done: Option<i32> = sqlx::query_scalar(&format!(
            "SELECT MAX(version) FROM \"{schema}\".\"{table}_migrations\""
        ))
        .fetch_one(&mut *tx)
        .await
        .map_err(Error::store)?;
        if done.unwrap_or(0) < 1 {
            for stmt in [
                format!(
                    "CREATE TABLE IF NOT EXISTS {t} (
                        handle BYTEA PRIMARY KEY,
                        created BIGINT NOT NULL,
                        last_seen BIGINT NOT NULL,
                        idle_deadline BIGINT,
                        absolute_deadline BIGINT,
                        expires_at BIGINT,
                        owner TEXT,
                        expiry TEXT,
                        version BIGINT NOT NULL,
                        data JSONB NOT NULL
                    )"
                ),
                format!("CREATE INDEX IF NOT EXISTS \"{table}_expires_at\" ON {t} (expires_at)"),
                format!("CREATE INDEX IF NOT EXISTS \"{table}_owner\" ON {t} (owner)"),
                format!("INSERT INTO \"{schema}\".\"{table}_migrations\" (version) VALUES (1)"),
            ] {
                sqlx::query(&stmt)
                    .execute(&mut *tx)
                    .await
                    .map_err(Error::store)?;
            }
        }
        if done.unwrap_or(0) < 2 {
            // Every change of a row notifies the near caches of every
            // process: the handle, and the version a write left.
            let channel = &self.q.channel;
            for stmt in [
                format!(
                    "CREATE OR REPLACE FUNCTION \"{schema}\".\"{table}_notify\"() RETURNS trigger
                     LANGUAGE plpgsql AS $$
                     BEGIN
                        IF TG_OP = 'TRUNCATE' THEN
                            PERFORM pg_notify('{channel}', '*');
                        ELSIF TG_OP = 'DELETE' THEN
                            PERFORM pg_notify('{channel}', encode(OLD.handle, 'hex'));
                        ELSE
                            IF NEW.handle <> OLD.handle THEN
                                PERFORM pg_notify('{channel}', encode(OLD.handle, 'hex'));
                            END IF;
                            -- A write that left the version alone (not keyfob's)
                            -- names no version: every copy goes.
                            IF NEW.version > OLD.version THEN
                                PERFORM pg_notify('{channel}', encode(NEW.handle, 'hex') || ':' || NEW.version);
                            ELSE
                                PERFORM pg_notify('{channel}', encode(NEW.handle, 'hex'));
                            END IF;
                        END IF;
                        RETURN NULL;
                     END $$"
                ),
                format!("DROP TRIGGER IF EXISTS \"{table}_notify\" ON {t}"),
                format!(
                    "CREATE TRIGGER \"{table}_notify\" AFTER UPDATE OR DELETE ON {t}
                     FOR EACH ROW EXECUTE FUNCTION \"{schema}\".\"{table}_notify\"()"
                ),
                format!("DROP TRIGGER IF EXISTS \"{table}_notify_truncate\" ON {t}"),
                format!(
                    "CREATE TRIGGER \"{table}_notify_truncate\" AFTER TRUNCATE ON {t}
                     FOR EACH STATEMENT EXECUTE FUNCTION \"{schema}\".\"{table}_notify\"()"
                ),
                format!("INSERT INTO \"{schema}\".\"{table}_migrations\" (version) VALUES (2)"),
            ] {
                sqlx::query(&stmt)
                    .execute(&mut *tx)
                    .await
                    .map_err(Error::store)?;
            }
        }
        if done.unwrap_or(0) < 3 {
            // A session written many times a minute should cost a HOT
            // update (no index entry, less WAL): the indexed `expires_at`
            // becomes the sweep's minute (the deadline rounded up), which
            // moves once a minute, not on every write; liveness is checked
            // against the deadline columns. Room on each page for the new
            // row version keeps it on the same page. (Rows written before
            // keep their exact value, which the sweep reads the same way.)
            for stmt in [
                format!("ALTER TABLE {t} SET (fillfactor = 80)"),
                format!("INSERT INTO \"{schema}\".\"{table}_migrations\" (version) VALUES (3)"),
            ] {
                sqlx::query(&stmt)
                    .execute(&mut *tx)
                    .await
                    .map_err(Error::store)?;
            }
        }
        tx.commit().await.map_err(Error::store)
    }

    /// The quoted `"schema"."table"` this store uses.
    pub fn table(&self) -> &str {
        &self.q.table
    }
}

impl SessionStore for PostgresStore {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn load<'a>(
        &'a self,
        handle: &'a Handle,
        now: OffsetDateTime,
    ) -> BoxFuture<'a, Result<Option<Arc<Record>>>> {
        Box::pin(async move {
            let near = self.near();
            if let Some(hit) = near.and_then(|c| c.get(handle, now)) {
                return Ok(Some(hit));
            }
            let ticket = near.map(|c| c.ticket(handle));
            let row = sqlx::query(&self.q.load)
                .bind(&handle.as_bytes()[..])
                .bind(secs(now))
                .fetch_optional(&self.pool)
                .await
                .map_err(Error::store)?;
            let found = match row {
                Some(row) => record_from(&row, 0, handle)?.map(Arc::new),
                None => None,
            };
            if let (Some(cache), Some(ticket), Some(record)) = (near, ticket, &found) {
                cache.put(handle, record.clone(), ticket);
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
            let row: Option<i32> = sqlx::query_scalar(&format!(
                "SELECT 1 FROM {} WHERE handle = $1
                    AND LEAST(idle_deadline, absolute_deadline) <= $2",
                self.q.table
            ))
            .bind(&handle.as_bytes()[..])
            .bind(secs(now))
            .fetch_optional(&self.pool)
            .await
            .map_err(Error::store)?;
            Ok(row.is_some())
        })
    }

    fn create<'a>(
        &'a self,
        handle: &'a Handle,
        record: &'a Record,
    ) -> BoxFuture<'a, Result<Created>> {
        Box::pin(async move {
            let near = self.near();
            let ticket = near.map(|c| c.ticket(handle));
            let done = sqlx::query(&self.q.create)
                .bind(&handle.as_bytes()[..])
                .bind(record.last_seen)
                .bind(record.created)
                .bind(record.last_seen)
                .bind(record.idle_deadline.get())
                .bind(record.absolute_deadline.get())
                .bind(sweep_at(record.expires_secs()))
                .bind(record.owner())
                .bind(record.expiry.as_deref().map(to_json).transpose()?)
                .bind(i64::try_from(record.version).unwrap_or(i64::MAX))
                .bind(to_json(&record.data)?)
                .execute(&self.pool)
                .await
                .map_err(write_error)?;
            if done.rows_affected() != 1 {
                return Ok(Created::Collision);
            }
            if let Some(cache) = near {
                cache.written(handle, Arc::new(record.clone()), ticket);
            }
            Ok(Created::Stored)
        })
    }

    fn update<'a>(
        &'a self,
        handle: &'a Handle,
        update: &'a Update,
        now: OffsetDateTime,
    ) -> BoxFuture<'a, Result<Updated>> {
        Box::pin(async move {
            let (clear, removed, sets) = update.changes.parts();
            let sets: serde_json::Map<String, serde_json::Value> = sets
                .into_iter()
                .map(|(k, v)| Ok((k.to_owned(), serde_json::from_str(v.get())?)))
                .collect::<std::result::Result<_, serde_json::Error>>()
                .map_err(|e| Error::with_source(ErrorKind::Serialize, e))?;
            let expiry = match &update.expiry {
                Some(e) => Some(e.as_ref().map(to_json).transpose()?),
                None => None,
            };
            let near = self.near();
            let target = update.rename_to().unwrap_or(handle);
            let ticket = near.map(|c| c.ticket(target));
            let sql = if near.is_some() {
                &self.q.update_returning
            } else {
                &self.q.update
            };
            let query = sqlx::query(sql)
                .bind(&handle.as_bytes()[..])
                .bind(secs(now))
                .bind(clear)
                .bind(removed)
                .bind(to_json(&sets)?)
                .bind(update.seen)
                .bind(update.idle_deadline)
                .bind(update.owner.is_some())
                .bind(update.owner.as_ref().and_then(|o| o.as_deref()))
                .bind(expiry.is_some())
                .bind(expiry.flatten())
                .bind(update.rename_to().map(|h| h.as_bytes().to_vec()));
            let Some(cache) = near else {
                let done = query.execute(&self.pool).await.map_err(write_error)?;
                return Ok(if done.rows_affected() == 1 {
                    Updated::Applied
                } else {
                    Updated::Gone
                });
            };
            // With the cache, the stored row comes back to refresh it.
            let row = query.fetch_optional(&self.pool).await.map_err(write_error);
            let row = match row {
                Ok(Some(row)) => row,
                // Gone, or unknown: no copy of it may stay.
                Ok(None) => {
                    cache.forget(handle);
                    return Ok(Updated::Gone);
                }
                Err(e) => {
                    cache.forget(handle);
                    return Err(e);
                }
            };
            if target != handle {
                cache.forget(handle);
            }
            // The row the write returned is the new copy (if no notification
            // about it came in meanwhile).
            match (ticket, record_from(&row, 0, target)?) {
                (Some(ticket), Some(record)) => {
                    cache.written(target, Arc::new(record), Some(ticket))
                }
                _ => cache.forget(target),
            }
            Ok(Updated::Applied)
        })
    }

    fn delete<'a>(&'a self, handle: &'a Handle) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let done = sqlx::query(&self.q.delete)
                .bind(&handle.as_bytes()[..])
                .execute(&self.pool)
                .await;
            if let Some(cache) = self.near() {
                cache.forget(handle);
            }
            Ok(done.map_err(Error::store)?.rows_affected() > 0)
        })
    }

    fn delete_expired(&self, now: OffsetDateTime, batch: usize) -> BoxFuture<'_, Result<u64>> {
        Box::pin(async move {
            let gone: Vec<Vec<u8>> = sqlx::query_scalar(&self.q.delete_expired)
                .bind(secs(now))
                .bind(i64::try_from(batch).unwrap_or(i64::MAX))
                .fetch_all(&self.pool)
                .await
                .map_err(Error::store)?;
            // Expired at the sweep's clock, which need not be a reader's.
            if let Some(cache) = self.near() {
                for handle in gone.iter().filter_map(|b| handle_from(b)) {
                    cache.forget(&handle);
                }
            }
            Ok(gone.len() as u64)
        })
    }

    fn list_by_owner<'a>(
        &'a self,
        owner: &'a str,
        now: OffsetDateTime,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<OwnedSession>>> {
        Box::pin(async move {
            let rows = sqlx::query(&self.q.list)
                .bind(owner)
                .bind(secs(now))
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                .fetch_all(&self.pool)
                .await
                .map_err(Error::store)?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                let bytes: Vec<u8> = row.try_get(0).map_err(Error::store)?;
                let Some(handle) = handle_from(&bytes) else {
                    continue;
                };
                if let Some(record) = record_from(&row, 1, &handle)? {
                    out.push(OwnedSession {
                        handle,
                        record: Arc::new(record),
                    });
                }
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
            let gone: Vec<Vec<u8>> = sqlx::query_scalar(&self.q.delete_owner)
                .bind(owner)
                .bind(keep.map(|h| h.as_bytes().to_vec()))
                .fetch_all(&self.pool)
                .await
                .map_err(Error::store)?;
            // This process sees the revocation on its very next request,
            // without waiting for its own notification.
            if let Some(cache) = self.near() {
                for handle in gone.iter().filter_map(|b| handle_from(b)) {
                    cache.forget(&handle);
                }
            }
            Ok(gone.len() as u64)
        })
    }
}

impl Near {
    fn new(max_sessions: u64, max_bytes: u64) -> Arc<Near> {
        Arc::new(Near {
            cache: Arc::new(NearCache::new(max_sessions, max_bytes)),
            listener: near::Keeper::default(),
        })
    }
}

/// Keeps `cache` coherent: subscribes to the table's channel, drops what
/// each notification names, and stops the cache whenever the subscription
/// is lost, until it is back. Runs for the life of the store. Its own
/// connections are named `listener_name` in `pg_stat_activity`.
async fn listen(
    pool: PgPool,
    channel: String,
    has_trigger: String,
    listener_name: String,
    cache: Arc<NearCache>,
) {
    /// However this task ends (aborted, its runtime gone, a panic), the
    /// cache stops serving with it.
    struct Stopping(Arc<NearCache>);
    impl Drop for Stopping {
        fn drop(&mut self) {
            self.0.stop();
        }
    }
    let _stopping = Stopping(cache.clone());
    let mut backoff = StdDuration::from_millis(50);
    let mut warned = false;
    let mut closed = pool.close_event();
    loop {
        if pool.is_closed() {
            // The app closed its pool (shutting down): so does the listener.
            return;
        }
        // A pool of its own for each subscription, on the app pool's connect
        // options: the LISTEN connection and the pings never queue behind
        // the app's queries (a busy pool must not pass for a dead channel),
        // and a connection that hangs on a dead socket (sqlx sends `UNLISTEN`
        // as a listener drops) holds a slot of a pool no one uses any more,
        // never one of the app's. Named for `pg_stat_activity`.
        let own = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(SILENCE)
            .connect_lazy_with(
                (*pool.connect_options())
                    .clone()
                    .application_name(&listener_name),
            );
        let subscribed =
            tokio::time::timeout(SUBSCRIBE_LIMIT, subscribe(&own, &channel, &has_trigger))
                .await
                .unwrap_or_else(|_| {
                    Err(Error::store_msg(
                        "subscribing to change notifications timed out",
                    ))
                });
        match subscribed {
            Ok(mut listener) => {
                cache.start();
                backoff = StdDuration::from_millis(50);
                warned = false;
                // Pings prove the channel still delivers: a connection that
                // died without a word (a dropped route, a frozen peer) would
                // otherwise look like a quiet one until TCP gives up, hours
                // later.
                let _pinger = AbortOnDrop(tokio::spawn(ping_every(own.clone(), channel.clone())));
                // Until the connection is lost (`None`), fails, or is silent
                // past the heartbeat: nothing heard after that can be trusted.
                loop {
                    let next = tokio::select! {
                        next = tokio::time::timeout(SILENCE, listener.try_recv()) => next,
                        () = &mut closed => return,
                    };
                    match next {
                        Ok(Ok(Some(n))) => heard(&cache, n.payload()),
                        Ok(_) => break,
                        Err(_) => {
                            tracing::warn!(
                                silent_ms = SILENCE.as_millis() as u64,
                                "keyfob: near cache not serving: no notification (not even its own ping) on the LISTEN connection; resubscribing"
                            );
                            break;
                        }
                    }
                }
                cache.stop();
            }
            Err(e) => {
                cache.stop();
                if !warned {
                    tracing::warn!(error = %e, "keyfob: near cache not serving: cannot subscribe to change notifications; retrying");
                    warned = true;
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(StdDuration::from_secs(2));
    }
}

/// What one notification means for the cache. Anything it cannot read
/// drops more, never less: a bad version drops the handle, a bad handle (or
/// `*`, a `TRUNCATE`) everything.
fn heard(cache: &NearCache, payload: &str) {
    if payload == PING {
        return;
    }
    match near::parse_payload(payload) {
        Some((handle, version)) => cache.notified(&handle, version),
        None => match payload.split_once(':').map_or(payload, |(h, _)| h).parse() {
            Ok(handle) => cache.forget(&handle),
            Err(_) => cache.clear(),
        },
    }
}

/// The payload a listener sends itself to prove its channel delivers.
const PING: &str = "ping";

/// Sends [`PING`] on `channel` through `on`.
async fn ping<'c>(on: impl sqlx::PgExecutor<'c>, channel: &str) -> sqlx::Result<()> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(channel)
        .bind(PING)
        .execute(on)
        .await
        .map(drop)
}

/// How often a listening store pings its own channel through the pool.
const HEARTBEAT: StdDuration = StdDuration::from_secs(1);

/// The longest a subscription may take before it is retried.
const SUBSCRIBE_LIMIT: StdDuration = StdDuration::from_secs(5);

/// How long a `LISTEN` connection may hear nothing, its own pings included,
/// before it is taken for dead: the longest a silently broken channel can
/// leave the cache serving what another process changed.
const SILENCE: StdDuration = StdDuration::from_secs(3);

/// Aborts a task when dropped (the pinger ends with its listener).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Sends [`PING`] on `channel` every [`HEARTBEAT`], each given at most
/// [`SILENCE`]. A ping that fails (the server unreachable) is not retried
/// sooner: the listener's silence then stops the cache, which is what an
/// unreachable server calls for.
async fn ping_every(pool: PgPool, channel: String) {
    loop {
        tokio::time::sleep(HEARTBEAT).await;
        match tokio::time::timeout(SILENCE, ping(&pool, &channel)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "keyfob: near cache heartbeat not sent"),
            Err(_) => tracing::debug!("keyfob: near cache heartbeat timed out"),
        }
    }
}

/// A `LISTEN`ing connection, once the trigger that notifies is known to
/// exist and a notification sent on the channel has come back through it
/// (a connection pooler in transaction mode accepts `LISTEN` and delivers
/// nothing).
async fn subscribe(pool: &PgPool, channel: &str, has_trigger: &str) -> Result<PgListener> {
    let mut listener = PgListener::connect_with(pool).await.map_err(Error::store)?;
    listener.eager_reconnect(false);
    listener.listen(channel).await.map_err(Error::store)?;
    // On the listener's own connection: no second one from the pool.
    let exists: bool = sqlx::query_scalar(has_trigger)
        .fetch_one(&mut listener)
        .await
        .map_err(Error::store)?;
    if !exists {
        return Err(Error::store_msg(
            "the table has no notify trigger: run `PostgresStore::migrate`",
        ));
    }
    ping(&mut listener, channel).await.map_err(Error::store)?;
    let echoed = tokio::time::timeout(StdDuration::from_secs(2), async {
        // Notifications before the echo are of writes made before this
        // subscription: the cache starts empty anyway.
        while let Ok(Some(n)) = listener.try_recv().await {
            if n.payload() == PING {
                return true;
            }
        }
        false
    })
    .await;
    if echoed != Ok(true) {
        return Err(Error::store_msg(
            "the LISTEN connection does not deliver notifications (a pooler in transaction mode?)",
        ));
    }
    Ok(listener)
}
