//! The PostgreSQL store (feature `postgres`).
//!
//! (The rules, caveats and examples are on the public type below,
//! where docs.rs shows them: this module is private.)

use std::{str::FromStr, sync::Arc, time::Duration as StdDuration};

use serde::Serialize;
use sqlx::{
    postgres::{PgConnectOptions, PgPoolOptions, PgRow},
    PgPool, Row,
};
use time::OffsetDateTime;

use super::{
    sql::{handle_from, valid_identifier},
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
///   the handle itself on rotation) guarded by `expires_at > now`: atomic,
///   one round trip, no lost update between concurrent writers of different
///   keys, and a deleted or expired row is never written back;
/// - records are keyed by the 32-byte handle, never the ID; a row whose
///   values do not decode reads as no session, with a warning.
///
/// Caveat: `jsonb` normalises JSON (key order, whitespace), so a value reads
/// back equal but not necessarily byte-identical.
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
    load: String,
    create: String,
    update: String,
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
        let live = "(expires_at IS NULL OR expires_at > $2)";
        Queries {
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
                 WHERE s.expires_at IS NOT NULL AND s.expires_at <= $2"
            ),
            update: format!(
                "UPDATE {t} SET
                    data = (CASE WHEN $3 THEN '{{}}'::jsonb ELSE data END - $4::text[]) || $5::jsonb,
                    last_seen = $6,
                    idle_deadline = $7,
                    expires_at = CASE
                        WHEN $7::bigint IS NULL THEN absolute_deadline
                        WHEN absolute_deadline IS NULL THEN $7::bigint
                        ELSE LEAST($7::bigint, absolute_deadline) END,
                    owner = CASE WHEN $8 THEN $9 ELSE owner END,
                    expiry = CASE WHEN $10 THEN $11 ELSE expiry END,
                    version = version + 1,
                    handle = COALESCE($12, handle)
                 WHERE handle = $1 AND {live}"
            ),
            delete: format!("DELETE FROM {t} WHERE handle = $1"),
            delete_expired: format!(
                "DELETE FROM {t} WHERE ctid IN (
                    SELECT ctid FROM {t} WHERE expires_at IS NOT NULL AND expires_at <= $1 LIMIT $2)"
            ),
            list: format!(
                "SELECT handle, {COLUMNS} FROM {t} WHERE owner = $1 AND {live} LIMIT $3"
            ),
            delete_owner: format!(
                "DELETE FROM {t} WHERE owner = $1 AND ($2::bytea IS NULL OR handle <> $2)"
            ),
            table: t,
        }
    }
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
        idle_deadline: get_opt(2)?,
        absolute_deadline: get_opt(3)?,
        owner: owner.map(String::into_boxed_str),
        expiry,
        version: u64::try_from(get_i64(6)?).unwrap_or(0),
    }))
}

impl PostgresStore {
    /// A store on the app's pool, table `public.keyfob_sessions`. Call
    /// [`migrate`](Self::migrate) once at start-up.
    pub fn new(pool: PgPool) -> Self {
        Self::with_names(pool, "public", "keyfob_sessions")
    }

    fn with_names(pool: PgPool, schema: &str, table: &str) -> Self {
        PostgresStore {
            pool,
            schema: schema.into(),
            table: table.into(),
            q: Arc::new(Queries::new(schema, table)),
        }
    }

    /// Uses another schema (created by `migrate` if missing).
    ///
    /// # Errors
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) for a name that is not a plain identifier.
    pub fn with_schema(self, schema: &str) -> Result<Self> {
        valid_identifier(schema)?;
        Ok(Self::with_names(self.pool, schema, &self.table))
    }

    /// Uses another table name.
    ///
    /// # Errors
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) for a name that is not a plain identifier.
    pub fn with_table_name(self, table: &str) -> Result<Self> {
        valid_identifier(table)?;
        Ok(Self::with_names(self.pool, &self.schema, table))
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
            let row = sqlx::query(&self.q.load)
                .bind(&handle.as_bytes()[..])
                .bind(secs(now))
                .fetch_optional(&self.pool)
                .await
                .map_err(Error::store)?;
            match row {
                Some(row) => Ok(record_from(&row, 0, handle)?.map(Arc::new)),
                None => Ok(None),
            }
        })
    }

    fn holds_expired<'a>(
        &'a self,
        handle: &'a Handle,
        now: OffsetDateTime,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let row: Option<i32> = sqlx::query_scalar(&format!(
                "SELECT 1 FROM {} WHERE handle = $1 AND expires_at <= $2",
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
            let done = sqlx::query(&self.q.create)
                .bind(&handle.as_bytes()[..])
                .bind(record.last_seen)
                .bind(record.created)
                .bind(record.last_seen)
                .bind(record.idle_deadline)
                .bind(record.absolute_deadline)
                .bind(record.expires_secs())
                .bind(record.owner())
                .bind(record.expiry.as_ref().map(to_json).transpose()?)
                .bind(i64::try_from(record.version).unwrap_or(i64::MAX))
                .bind(to_json(&record.data)?)
                .execute(&self.pool)
                .await
                .map_err(write_error)?;
            Ok(if done.rows_affected() == 1 {
                Created::Stored
            } else {
                Created::Collision
            })
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
            let done = sqlx::query(&self.q.update)
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
                .bind(update.rename_to().map(|h| h.as_bytes().to_vec()))
                .execute(&self.pool)
                .await
                .map_err(write_error)?;
            Ok(if done.rows_affected() == 1 {
                Updated::Applied
            } else {
                Updated::Gone
            })
        })
    }

    fn delete<'a>(&'a self, handle: &'a Handle) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let done = sqlx::query(&self.q.delete)
                .bind(&handle.as_bytes()[..])
                .execute(&self.pool)
                .await
                .map_err(Error::store)?;
            Ok(done.rows_affected() > 0)
        })
    }

    fn delete_expired(&self, now: OffsetDateTime, batch: usize) -> BoxFuture<'_, Result<u64>> {
        Box::pin(async move {
            let done = sqlx::query(&self.q.delete_expired)
                .bind(secs(now))
                .bind(i64::try_from(batch).unwrap_or(i64::MAX))
                .execute(&self.pool)
                .await
                .map_err(Error::store)?;
            Ok(done.rows_affected())
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
            let done = sqlx::query(&self.q.delete_owner)
                .bind(owner)
                .bind(keep.map(|h| h.as_bytes().to_vec()))
                .execute(&self.pool)
                .await
                .map_err(Error::store)?;
            Ok(done.rows_affected())
        })
    }
}
