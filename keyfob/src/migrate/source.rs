//! Where the tower-sessions sessions are read from: rows given in memory,
//! the SQL tables of tower-sessions-sqlx-store, or Redis keys.

use super::*;

/// Where the tower-sessions sessions are read from.
///
/// ```
/// use keyfob::migrate::Source;
/// let source = Source::rows(Vec::new());
/// # let _ = source;
/// ```
pub struct Source {
    kind: Kind,
}

enum Kind {
    Rows(Vec<(String, Vec<u8>)>),
    #[cfg(feature = "sqlite")]
    Sqlite {
        pool: sqlx::SqlitePool,
        table: String,
    },
    #[cfg(feature = "postgres")]
    Postgres {
        pool: sqlx::PgPool,
        table: String,
    },
    #[cfg(feature = "mysql")]
    MySql {
        pool: sqlx::MySqlPool,
        table: String,
    },
    #[cfg(feature = "migrate-redis")]
    Redis {
        conn: redis::aio::ConnectionManager,
        prefix: String,
    },
}

/// One page of source rows and where the next page starts (`None`: the end).
pub(super) struct Page {
    pub(super) rows: Vec<(String, Vec<u8>)>,
    pub(super) next: Option<String>,
}

impl Page {
    /// A page of a key-ordered source: the next one starts after its last key.
    fn ordered(rows: Vec<(String, Vec<u8>)>) -> Self {
        let next = rows.last().map(|r| r.0.clone());
        Page { rows, next }
    }
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match &self.kind {
            Kind::Rows(rows) => format!("{} rows", rows.len()),
            #[cfg(feature = "sqlite")]
            Kind::Sqlite { table, .. } => format!("sqlite {table}"),
            #[cfg(feature = "postgres")]
            Kind::Postgres { table, .. } => format!("postgres {table}"),
            #[cfg(feature = "mysql")]
            Kind::MySql { table, .. } => format!("mysql {table}"),
            #[cfg(feature = "migrate-redis")]
            Kind::Redis { prefix, .. } => format!("redis keys {prefix:?}*"),
        };
        f.debug_tuple("Source").field(&what).finish()
    }
}

/// A tower-sessions table or schema name, checked by the one SQL-name check
/// (`store::sql`); PostgreSQL's 63-byte limit is the bound here, since these
/// are names tower-sessions chose.
fn identifier(name: &str) -> Result<&str> {
    crate::store::sql::identifier(name, 63).map(|()| name)
}

impl Source {
    /// Rows your own code read: `(cookie value, MessagePack record)` pairs,
    /// e.g. the keys and values of a tower-sessions Redis store
    /// (`SCAN` + `GET`). They are processed in key order.
    ///
    /// ```
    /// let source = keyfob::migrate::Source::rows(vec![("k".into(), vec![0x90])]);
    /// # let _ = source;
    /// ```
    pub fn rows(mut rows: Vec<(String, Vec<u8>)>) -> Self {
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        Source {
            kind: Kind::Rows(rows),
        }
    }

    /// The table of `tower_sessions_sqlx_store::SqliteStore`: `tower_sessions`
    /// (`id text, data blob, expiry_date integer`).
    ///
    /// ```
    /// # let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    /// # rt.block_on(async {
    /// let pool = sqlx::SqlitePool::connect("sqlite::memory:").await.unwrap();
    /// let source = keyfob::migrate::Source::sqlite(pool);
    /// # let _ = source;
    /// # });
    /// ```
    #[cfg(feature = "sqlite")]
    pub fn sqlite(pool: sqlx::SqlitePool) -> Self {
        Source {
            kind: Kind::Sqlite {
                pool,
                table: "tower_sessions".to_owned(),
            },
        }
    }

    /// The table of `tower_sessions_sqlx_store::PostgresStore`:
    /// `"tower_sessions"."session"` (`id text, data bytea, expiry_date timestamptz`).
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), sqlx::Error> {
    /// let pool = sqlx::PgPool::connect("postgres://localhost/app").await?;
    /// let source = keyfob::migrate::Source::postgres(pool);
    /// # let _ = source; Ok(()) }
    /// ```
    #[cfg(feature = "postgres")]
    pub fn postgres(pool: sqlx::PgPool) -> Self {
        Source {
            kind: Kind::Postgres {
                pool,
                table: r#""tower_sessions"."session""#.to_owned(),
            },
        }
    }

    /// The table of `tower_sessions_sqlx_store::MySqlStore`:
    /// `` `tower_sessions`.`session` `` (`id varchar(128), data blob, expiry_date timestamp(6)`).
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), sqlx::Error> {
    /// let pool = sqlx::MySqlPool::connect("mysql://localhost/app").await?;
    /// let source = keyfob::migrate::Source::mysql(pool);
    /// # let _ = source; Ok(()) }
    /// ```
    #[cfg(feature = "mysql")]
    pub fn mysql(pool: sqlx::MySqlPool) -> Self {
        Source {
            kind: Kind::MySql {
                pool,
                table: "`tower_sessions`.`session`".to_owned(),
            },
        }
    }

    /// The keys of `tower_sessions_redis_store::RedisStore`: each session is
    /// a string key (`prefix` + the cookie value; no prefix unless the app
    /// used `RedisStore::with_prefix`) holding the MessagePack record, with
    /// a Redis expiry. Keys are read with `SCAN` (pages of the batch size)
    /// and `MGET`, so the checkpoint is a `SCAN` cursor. Without a prefix,
    /// every key of the database is read, and keys that are not sessions
    /// are counted as undecodable; the progress total is `DBSIZE`.
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), redis::RedisError> {
    /// let client = redis::Client::open("redis://127.0.0.1:6379")?;
    /// let conn = redis::aio::ConnectionManager::new(client).await?;
    /// let source = keyfob::migrate::Source::redis(conn, "");
    /// # let _ = source; Ok(()) }
    /// ```
    #[cfg(feature = "migrate-redis")]
    pub fn redis(conn: redis::aio::ConnectionManager, prefix: &str) -> Self {
        Source {
            kind: Kind::Redis {
                conn,
                prefix: prefix.to_owned(),
            },
        }
    }

    /// The table name the app passed to the tower-sessions store's
    /// `with_table_name` (and, for PostgreSQL and MySQL, `with_schema_name`;
    /// `None` keeps `tower_sessions`). Ignored for [`Source::rows`].
    ///
    /// # Errors
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) for a name that is not a plain identifier.
    ///
    /// ```
    /// let source = keyfob::migrate::Source::rows(Vec::new()).with_table(None, "sessions");
    /// assert!(source.is_ok());
    /// let bad = keyfob::migrate::Source::rows(Vec::new()).with_table(None, "x; drop table y");
    /// assert!(bad.is_err());
    /// ```
    pub fn with_table(mut self, schema: Option<&str>, table: &str) -> Result<Self> {
        let table = identifier(table)?;
        let schema = identifier(schema.unwrap_or("tower_sessions"))?;
        match &mut self.kind {
            Kind::Rows(_) => {}
            #[cfg(feature = "migrate-redis")]
            Kind::Redis { .. } => {}
            #[cfg(feature = "sqlite")]
            Kind::Sqlite { table: t, .. } => *t = table.to_owned(),
            #[cfg(feature = "postgres")]
            Kind::Postgres { table: t, .. } => *t = format!(r#""{schema}"."{table}""#),
            #[cfg(feature = "mysql")]
            Kind::MySql { table: t, .. } => *t = format!("`{schema}`.`{table}`"),
        }
        let _ = (schema, table);
        Ok(self)
    }

    /// How many rows the source holds (live or not).
    pub(super) async fn count(&self) -> Result<u64> {
        match &self.kind {
            Kind::Rows(rows) => Ok(rows.len() as u64),
            #[cfg(feature = "sqlite")]
            Kind::Sqlite { pool, table } => {
                let n: i64 = sqlx::query_scalar(&format!("select count(*) from {table}"))
                    .fetch_one(pool)
                    .await
                    .map_err(Error::store)?;
                Ok(n.max(0) as u64)
            }
            #[cfg(feature = "postgres")]
            Kind::Postgres { pool, table } => {
                let n: i64 = sqlx::query_scalar(&format!("select count(*) from {table}"))
                    .fetch_one(pool)
                    .await
                    .map_err(Error::store)?;
                Ok(n.max(0) as u64)
            }
            #[cfg(feature = "mysql")]
            Kind::MySql { pool, table } => {
                let n: i64 = sqlx::query_scalar(&format!("select count(*) from {table}"))
                    .fetch_one(pool)
                    .await
                    .map_err(Error::store)?;
                Ok(n.max(0) as u64)
            }
            #[cfg(feature = "migrate-redis")]
            Kind::Redis { conn, .. } => redis::cmd("DBSIZE")
                .query_async(&mut conn.clone())
                .await
                .map_err(Error::store),
        }
    }

    /// The page that starts at `position` ("" for the start): for tables,
    /// up to `limit` rows whose key sorts after it; for Redis, one `SCAN` step.
    pub(super) async fn page(&self, position: &str, limit: usize) -> Result<Page> {
        match &self.kind {
            #[cfg(feature = "migrate-redis")]
            Kind::Redis { conn, prefix } => redis_page(conn, prefix, position, limit).await,
            _ => self.rows_after(position, limit).await.map(Page::ordered),
        }
    }

    /// Up to `limit` rows whose key sorts after `after`, in key order.
    pub(super) async fn rows_after(
        &self,
        after: &str,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>> {
        #[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
        let limit_i = i64::try_from(limit).unwrap_or(i64::MAX);
        match &self.kind {
            Kind::Rows(rows) => {
                let start = rows.partition_point(|(k, _)| k.as_str() <= after);
                Ok(rows.iter().skip(start).take(limit).cloned().collect())
            }
            #[cfg(feature = "migrate-redis")]
            Kind::Redis { .. } => Ok(Vec::new()),
            #[cfg(feature = "sqlite")]
            Kind::Sqlite { pool, table } => sqlx::query_as(&format!(
                "select id, data from {table} where id > ? order by id limit ?"
            ))
            .bind(after)
            .bind(limit_i)
            .fetch_all(pool)
            .await
            .map_err(Error::store),
            // Byte order ("C"), so the order does not depend on the database's locale.
            #[cfg(feature = "postgres")]
            Kind::Postgres { pool, table } => sqlx::query_as(&format!(
                r#"select id, data from {table} where id > $1 collate "C" order by id collate "C" limit $2"#
            ))
            .bind(after)
            .bind(limit_i)
            .fetch_all(pool)
            .await
            .map_err(Error::store),
            // The column's collation may ignore case; two random 128-bit IDs
            // that differ only in case are too unlikely to matter, and
            // comparing in the column's own collation keeps the primary key usable.
            #[cfg(feature = "mysql")]
            Kind::MySql { pool, table } => sqlx::query_as(&format!(
                "select id, data from {table} where id > ? order by id limit ?"
            ))
            .bind(after)
            .bind(limit_i)
            .fetch_all(pool)
            .await
            .map_err(Error::store),
        }
    }
}

impl Source {
    /// How many rows sort at or before `key` (what a checkpoint skips).
    pub(super) async fn count_upto(&self, key: &str) -> Result<u64> {
        match &self.kind {
            Kind::Rows(rows) => Ok(rows.partition_point(|(k, _)| k.as_str() <= key) as u64),
            #[cfg(feature = "sqlite")]
            Kind::Sqlite { pool, table } => {
                let n: i64 =
                    sqlx::query_scalar(&format!("select count(*) from {table} where id <= ?"))
                        .bind(key)
                        .fetch_one(pool)
                        .await
                        .map_err(Error::store)?;
                Ok(n.max(0) as u64)
            }
            #[cfg(feature = "postgres")]
            Kind::Postgres { pool, table } => {
                let n: i64 = sqlx::query_scalar(&format!(
                    r#"select count(*) from {table} where id <= $1 collate "C""#
                ))
                .bind(key)
                .fetch_one(pool)
                .await
                .map_err(Error::store)?;
                Ok(n.max(0) as u64)
            }
            #[cfg(feature = "mysql")]
            Kind::MySql { pool, table } => {
                let n: i64 =
                    sqlx::query_scalar(&format!("select count(*) from {table} where id <= ?"))
                        .bind(key)
                        .fetch_one(pool)
                        .await
                        .map_err(Error::store)?;
                Ok(n.max(0) as u64)
            }
            // A SCAN cursor says nothing about how many keys came before it.
            #[cfg(feature = "migrate-redis")]
            Kind::Redis { .. } => Ok(0),
        }
    }
}

/// One `SCAN` step from `cursor` ("" = "0"), and the values of its keys.
/// A key that vanished between the two (expired) reads as an empty value,
/// which does not decode and is counted so.
#[cfg(feature = "migrate-redis")]
async fn redis_page(
    conn: &redis::aio::ConnectionManager,
    prefix: &str,
    cursor: &str,
    limit: usize,
) -> Result<Page> {
    let mut conn = conn.clone();
    let cursor = if cursor.is_empty() { "0" } else { cursor };
    let (next, keys): (String, Vec<String>) = redis::cmd("SCAN")
        .arg(cursor)
        .arg("MATCH")
        .arg(format!("{}*", redis_glob_escape(prefix)))
        .arg("COUNT")
        .arg(limit)
        .query_async(&mut conn)
        .await
        .map_err(Error::store)?;
    let values: Vec<Option<Vec<u8>>> = if keys.is_empty() {
        Vec::new()
    } else {
        redis::cmd("MGET")
            .arg(&keys)
            .query_async(&mut conn)
            .await
            .map_err(Error::store)?
    };
    let rows = keys
        .into_iter()
        .zip(values)
        .map(|(key, value)| {
            let id = key.strip_prefix(prefix).unwrap_or(&key).to_owned();
            (id, value.unwrap_or_default())
        })
        .collect();
    Ok(Page {
        rows,
        next: (next != "0").then_some(next),
    })
}

#[cfg(feature = "migrate-redis")]
fn redis_glob_escape(prefix: &str) -> String {
    let mut out = String::with_capacity(prefix.len());
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
