//! The MySQL / MariaDB store (feature `mysql`).
//!
//! (The rules, caveats and examples are on the public type below,
//! where docs.rs shows them: this module is private.)

use std::{str::FromStr, sync::Arc, time::Duration as StdDuration};

use sqlx::{
    mysql::{MySqlConnectOptions, MySqlPoolOptions},
    MySqlPool, Row,
};
use time::OffsetDateTime;

use super::{
    sql::{decode_record, encode_record, owned_session, sweep_at, valid_identifier},
    BoxFuture, Created, OwnedSession, SessionStore, Updated,
};
use crate::{
    error::{Error, Result},
    expiry::secs,
    id::Handle,
    record::{Record, Update},
};

/// How often an update retries when other writers keep winning the race.
const MAX_TRIES: usize = 1000;

/// Sessions in a MySQL or MariaDB table.
///
/// ```no_run
/// # async fn f(pool: sqlx::MySqlPool) -> Result<(), keyfob::Error> {
/// let store = keyfob::MySqlStore::new(pool).with_table_name("sessions")?;
/// store.migrate().await?;
/// # Ok(()) }
/// ```
///
/// Rules:
/// - built from the app's own `MySqlPool` ([`MySqlStore::new`]) or a URL
///   ([`MySqlStore::connect`]); the table name is configurable and checked to
///   be a plain identifier;
/// - [`MySqlStore::migrate`] holds `GET_LOCK('keyfob:<table>')` on one
///   connection while it creates the schema, so replicas starting at once
///   serialize (DDL commits implicitly in MySQL, so a transaction could not);
/// - a change-set is applied by compare-and-swap on a `version` column: read
///   the current record, apply the change-set in Rust, `UPDATE … WHERE
///   version = read_version`, and retry when another writer got there first.
///   The layer passes the record the request loaded (with its version), so
///   the usual save is that one `UPDATE`; the read comes only after a lost race;
///   Concurrent writers of different keys all persist; a row that vanished
///   (logout, revocation, expiry) makes the update report it gone, so it is
///   never written back;
/// - the indexed expiry column holds the deadline rounded up to the minute
///   (only the expired-row sweep reads it; a load goes by the record's own
///   deadline), so a session written many times a minute changes its index
///   entry once a minute, not on every write, and
///   [`delete_expired`](crate::SessionStore::delete_expired) removes a row
///   within a minute after its deadline;
/// - records are keyed by the 32-byte handle, never the ID; a row that does
///   not decode reads as no session, with a warning.
///
/// MySQL 8 and MariaDB (10.11+) differ in their JSON types and functions;
/// this store avoids both by keeping the record as JSON text in a
/// `MEDIUMTEXT` column and doing all JSON work in Rust, so the same SQL runs
/// unchanged on either server.
///
/// ```no_run
/// use keyfob::{SessionLayer, MySqlStore};
///
/// # async fn f() -> Result<(), keyfob::Error> {
/// let store = MySqlStore::connect("mysql://app:secret@localhost/app").await?; // migrates
/// let layer = SessionLayer::new(store);
/// let pool = sqlx::MySqlPool::connect_lazy("mysql://localhost/app").map_err(keyfob::Error::store)?;
/// assert!(MySqlStore::new(pool).with_table_name("bad name").is_err());
/// # let _ = layer; Ok(()) }
/// ```
#[derive(Clone)]
pub struct MySqlStore {
    pool: MySqlPool,
    q: Arc<Queries>,
}

impl std::fmt::Debug for MySqlStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MySqlStore")
            .field("table", &self.q.name)
            .finish_non_exhaustive()
    }
}

struct Queries {
    name: String,
    load: String,
    purge_one: String,
    insert: String,
    cas: String,
    delete: String,
    delete_expired: String,
    /// The compare-and-swap against the version this request loaded; also
    /// checks liveness, since no read just before it did.
    cas_loaded: String,
    list: String,
    delete_owner: String,
}

impl Queries {
    fn new(name: &str) -> Self {
        let t = format!("`{name}`");
        // `expires_at` is the sweep's minute (`sweep_at`): a row it calls live
        // may still be past its deadline, which the record itself tells.
        let live = "(expires_at IS NULL OR expires_at > ?)";
        Queries {
            load: format!("SELECT record, version FROM {t} WHERE handle = ? AND {live}"),
            // By the record's own deadline: the minute column may not have
            // passed yet. (`JSON_UNQUOTE` then `CAST`: the same on MySQL 8
            // and MariaDB, whose `JSON_EXTRACT` returns text.)
            purge_one: format!(
                "DELETE FROM {t} WHERE handle = ? AND LEAST(
                    COALESCE(CAST(JSON_UNQUOTE(JSON_EXTRACT(record, '$.i')) AS SIGNED), 9223372036854775807),
                    COALESCE(CAST(JSON_UNQUOTE(JSON_EXTRACT(record, '$.a')) AS SIGNED), 9223372036854775807)) <= ?"
            ),
            insert: format!(
                "INSERT INTO {t} (handle, owner, expires_at, version, record) VALUES (?, ?, ?, ?, ?)"
            ),
            cas: format!(
                "UPDATE {t} SET handle = ?, owner = ?, expires_at = ?, version = version + 1, record = ?
                 WHERE handle = ? AND version = ?"
            ),
            cas_loaded: format!(
                "UPDATE {t} SET handle = ?, owner = ?, expires_at = ?, version = version + 1, record = ?
                 WHERE handle = ? AND version = ? AND {live}"
            ),
            delete: format!("DELETE FROM {t} WHERE handle = ?"),
            delete_expired: format!(
                "DELETE FROM {t} WHERE expires_at IS NOT NULL AND expires_at <= ? LIMIT ?"
            ),
            list: format!("SELECT handle, record FROM {t} WHERE owner = ? AND {live} LIMIT ?"),
            delete_owner: format!(
                "DELETE FROM {t} WHERE owner = ? AND (? IS NULL OR handle <> ?)"
            ),
            name: name.to_owned(),
        }
    }
}

fn is_duplicate(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|d| d.kind() == sqlx::error::ErrorKind::UniqueViolation)
}

impl MySqlStore {
    /// A store on the app's pool, table `keyfob_sessions`. Call
    /// [`migrate`](Self::migrate) once at start-up.
    pub fn new(pool: MySqlPool) -> Self {
        MySqlStore {
            pool,
            q: Arc::new(Queries::new("keyfob_sessions")),
        }
    }

    /// Uses another table name.
    ///
    /// # Errors
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) for a name that is not a plain identifier.
    pub fn with_table_name(self, table: &str) -> Result<Self> {
        valid_identifier(table)?;
        Ok(MySqlStore {
            pool: self.pool,
            q: Arc::new(Queries::new(table)),
        })
    }

    /// Connects to `url` (`mysql://USER:PASS@HOST/DB`) and migrates.
    ///
    /// # Errors
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) for a malformed URL,
    /// [`ErrorKind::Store`](crate::ErrorKind::Store) when the server cannot be reached.
    pub async fn connect(url: &str) -> Result<Self> {
        let options = MySqlConnectOptions::from_str(url)
            .map_err(|e| Error::config_from("invalid MySQL URL", e))?;
        let pool = MySqlPoolOptions::new()
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
        let store = MySqlStore::new(pool);
        store.migrate().await?;
        Ok(store)
    }

    /// The pool this store uses.
    pub fn pool(&self) -> &MySqlPool {
        &self.pool
    }

    /// The table this store uses.
    pub fn table(&self) -> &str {
        &self.q.name
    }

    /// Creates or upgrades the schema while holding a named lock.
    ///
    /// # Errors
    /// [`ErrorKind::Store`](crate::ErrorKind::Store) when the server refuses
    /// or the lock is not granted within 30 seconds.
    pub async fn migrate(&self) -> Result<()> {
        let name = &self.q.name;
        let mut conn = self.pool.acquire().await.map_err(Error::store)?;
        let lock = format!("keyfob:{name}");
        let got: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK(?, 30)")
            .bind(&lock)
            .fetch_one(&mut *conn)
            .await
            .map_err(Error::store)?;
        if got != Some(1) {
            return Err(Error::store_msg(format!(
                "could not take the migration lock {lock:?} within 30 s"
            )));
        }
        let result = async {
            sqlx::query(&format!(
                "CREATE TABLE IF NOT EXISTS `{name}_migrations` (
                    version INT PRIMARY KEY,
                    applied_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP)"
            ))
            .execute(&mut *conn)
            .await?;
            let done: Option<i32> =
                sqlx::query_scalar(&format!("SELECT MAX(version) FROM `{name}_migrations`"))
                    .fetch_one(&mut *conn)
                    .await?;
            if done.unwrap_or(0) < 1 {
                sqlx::query(&format!(
                    "CREATE TABLE IF NOT EXISTS `{name}` (
                        handle BINARY(32) NOT NULL PRIMARY KEY,
                        owner VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
                        expires_at BIGINT NULL,
                        version BIGINT NOT NULL,
                        record MEDIUMTEXT NOT NULL,
                        INDEX `{name}_expires_at` (expires_at),
                        INDEX `{name}_owner` (owner)
                    ) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4"
                ))
                .execute(&mut *conn)
                .await?;
                sqlx::query(&format!(
                    "INSERT INTO `{name}_migrations` (version) VALUES (1)"
                ))
                .execute(&mut *conn)
                .await?;
            }
            Ok::<(), sqlx::Error>(())
        }
        .await;
        let released = sqlx::query("SELECT RELEASE_LOCK(?)")
            .bind(&lock)
            .execute(&mut *conn)
            .await;
        result.map_err(Error::store)?;
        released.map_err(Error::store)?;
        Ok(())
    }
}

impl SessionStore for MySqlStore {
    fn kind(&self) -> &'static str {
        "mysql"
    }

    fn update_uses_base(&self) -> bool {
        true
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
            let Some(row) = row else { return Ok(None) };
            let text: String = row.try_get(0).map_err(Error::store)?;
            let version: i64 = row.try_get(1).map_err(Error::store)?;
            // The version column is what the compare-and-swap checks.
            Ok(decode_record(handle, &text)
                .filter(|r| !r.is_expired(now))
                .map(|mut record| {
                    record.version = u64::try_from(version).unwrap_or(0);
                    Arc::new(record)
                }))
        })
    }

    fn holds_expired<'a>(
        &'a self,
        handle: &'a Handle,
        now: OffsetDateTime,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let row: Option<String> = sqlx::query_scalar(&format!(
                "SELECT record FROM `{}` WHERE handle = ?",
                self.q.name
            ))
            .bind(&handle.as_bytes()[..])
            .fetch_optional(&self.pool)
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
            sqlx::query(&self.q.purge_one)
                .bind(&handle.as_bytes()[..])
                .bind(record.last_seen)
                .execute(&self.pool)
                .await
                .map_err(Error::store)?;
            let done = sqlx::query(&self.q.insert)
                .bind(&handle.as_bytes()[..])
                .bind(record.owner())
                .bind(sweep_at(record.expires_secs()))
                .bind(i64::try_from(record.version).unwrap_or(i64::MAX))
                .bind(encode_record(record)?)
                .execute(&self.pool)
                .await;
            match done {
                Ok(_) => Ok(Created::Stored),
                Err(e) if is_duplicate(&e) => Ok(Created::Collision),
                Err(e) => Err(Error::store(e)),
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
            let target = update.rename_to().unwrap_or(handle);
            // The record this request loaded: if the row still holds that
            // version, the change-set applies to it and one round trip saves.
            // Otherwise (another writer, expired, deleted) read it again below.
            if let Some(base) = update.base.as_deref().filter(|b| !b.is_expired(now)) {
                let mut record = base.clone();
                record.apply(update);
                let done = sqlx::query(&self.q.cas_loaded)
                    .bind(&target.as_bytes()[..])
                    .bind(record.owner())
                    .bind(sweep_at(record.expires_secs()))
                    .bind(encode_record(&record)?)
                    .bind(&handle.as_bytes()[..])
                    .bind(i64::try_from(base.version).unwrap_or(i64::MAX))
                    .bind(secs(now))
                    .execute(&self.pool)
                    .await
                    .map_err(Error::store)?;
                if done.rows_affected() == 1 {
                    return Ok(Updated::Applied);
                }
            }
            for _ in 0..MAX_TRIES {
                let row = sqlx::query(&self.q.load)
                    .bind(&handle.as_bytes()[..])
                    .bind(secs(now))
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(Error::store)?;
                let Some(row) = row else {
                    return Ok(Updated::Gone);
                };
                let text: String = row.try_get(0).map_err(Error::store)?;
                let version: i64 = row.try_get(1).map_err(Error::store)?;
                let Some(mut record) = decode_record(handle, &text).filter(|r| !r.is_expired(now))
                else {
                    return Ok(Updated::Gone);
                };
                record.apply(update);
                let done = sqlx::query(&self.q.cas)
                    .bind(&target.as_bytes()[..])
                    .bind(record.owner())
                    .bind(sweep_at(record.expires_secs()))
                    .bind(encode_record(&record)?)
                    .bind(&handle.as_bytes()[..])
                    .bind(version)
                    .execute(&self.pool)
                    .await
                    .map_err(Error::store)?;
                if done.rows_affected() == 1 {
                    return Ok(Updated::Applied);
                }
                // Another writer changed the row first: read it again.
                tokio::task::yield_now().await;
            }
            Err(Error::store_msg(format!(
                "session update lost {MAX_TRIES} races in a row; giving up"
            )))
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
                .bind(u64::try_from(batch).unwrap_or(u64::MAX))
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
            let keep = keep.map(|h| h.as_bytes().to_vec());
            let done = sqlx::query(&self.q.delete_owner)
                .bind(owner)
                .bind(keep.clone())
                .bind(keep)
                .execute(&self.pool)
                .await
                .map_err(Error::store)?;
            Ok(done.rows_affected())
        })
    }
}
