//! The demo's accounts table on SQLite, PostgreSQL or MySQL: one statement
//! text per operation (`?` placeholders, numbered for PostgreSQL), run on
//! whichever pool the session store has.

use crate::users::{failed, user_from, User};

/// The accounts table.
pub(crate) const TABLE: &str = "keyfob_demo_accounts";

/// The pool the session store uses.
#[derive(Clone)]
pub(crate) enum Database {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
    MySql(sqlx::MySqlPool),
}

/// A value bound to a statement.
pub(crate) enum Arg<'a> {
    Id(u64),
    Text(&'a str),
}

/// A row of the table: id, username, hash, permissions (JSON).
type Row = (i64, String, String, String);

/// Binds `args` in order to a query of any of the three databases.
macro_rules! bind_all {
    ($query:expr, $args:expr) => {{
        let mut query = $query;
        for arg in $args {
            query = match arg {
                Arg::Id(id) => query.bind(i64::try_from(*id).map_err(failed)?),
                Arg::Text(text) => query.bind(*text),
            };
        }
        query
    }};
}

impl Database {
    /// `sql` as this database writes placeholders.
    fn text(&self, sql: &str) -> String {
        match self {
            Database::Postgres(_) => {
                let mut n = 0;
                sql.chars()
                    .map(|c| {
                        if c == '?' {
                            n += 1;
                            format!("${n}")
                        } else {
                            c.to_string()
                        }
                    })
                    .collect()
            }
            Database::Sqlite(_) | Database::MySql(_) => sql.to_owned(),
        }
    }

    /// Runs a statement; the number of rows it changed.
    pub(crate) async fn execute(&self, sql: &str, args: &[Arg<'_>]) -> keyfob::Result<u64> {
        let sql = self.text(sql);
        let done = match self {
            Database::Sqlite(p) => bind_all!(sqlx::query(&sql), args)
                .execute(p)
                .await
                .map(|d| d.rows_affected()),
            Database::Postgres(p) => bind_all!(sqlx::query(&sql), args)
                .execute(p)
                .await
                .map(|d| d.rows_affected()),
            Database::MySql(p) => bind_all!(sqlx::query(&sql), args)
                .execute(p)
                .await
                .map(|d| d.rows_affected()),
        };
        done.map_err(failed)
    }

    /// The account whose `column` (`id` or `username`) is `value`.
    pub(crate) async fn user(&self, column: &str, value: Arg<'_>) -> keyfob::Result<Option<User>> {
        let sql = self.text(&format!(
            "SELECT id, username, hash, permissions FROM {TABLE} WHERE {column} = ?"
        ));
        let args = [value];
        let row: Option<Row> = match self {
            Database::Sqlite(p) => {
                bind_all!(sqlx::query_as(&sql), &args)
                    .fetch_optional(p)
                    .await
            }
            Database::Postgres(p) => {
                bind_all!(sqlx::query_as(&sql), &args)
                    .fetch_optional(p)
                    .await
            }
            Database::MySql(p) => {
                bind_all!(sqlx::query_as(&sql), &args)
                    .fetch_optional(p)
                    .await
            }
        }
        .map_err(failed)?;
        Ok(row.and_then(|(id, username, hash, permissions)| {
            Some(user_from(
                u64::try_from(id).ok()?,
                username,
                hash,
                &permissions,
            ))
        }))
    }

    /// Creates the table if it is missing.
    pub(crate) async fn create_table(&self) -> keyfob::Result<()> {
        let columns = |id: &str, name: &str| {
            format!(
                "CREATE TABLE IF NOT EXISTS {TABLE} (id {id} PRIMARY KEY, username {name} NOT NULL UNIQUE, \
                 hash TEXT NOT NULL, permissions TEXT NOT NULL)"
            )
        };
        match self {
            Database::Sqlite(_) => self
                .execute(&columns("INTEGER", "TEXT"), &[])
                .await
                .map(drop),
            Database::MySql(_) => self
                .execute(&columns("BIGINT", "VARCHAR(64)"), &[])
                .await
                .map(drop),
            Database::Postgres(pool) => {
                // Two replicas starting at once: CREATE … IF NOT EXISTS can
                // still collide in the catalog, so one at a time.
                let mut tx = pool.begin().await.map_err(failed)?;
                sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
                    .bind(TABLE)
                    .execute(&mut *tx)
                    .await
                    .map_err(failed)?;
                sqlx::query(&columns("BIGINT", "TEXT"))
                    .execute(&mut *tx)
                    .await
                    .map_err(failed)?;
                tx.commit().await.map_err(failed)
            }
        }
    }

    /// Adds `user` unless an account with its id or name exists.
    pub(crate) async fn insert_if_missing(
        &self,
        user: &User,
        permissions: &str,
    ) -> keyfob::Result<()> {
        let values = "(id, username, hash, permissions) VALUES (?, ?, ?, ?)";
        let sql = match self {
            Database::Sqlite(_) => format!("INSERT OR IGNORE INTO {TABLE} {values}"),
            Database::Postgres(_) => format!("INSERT INTO {TABLE} {values} ON CONFLICT DO NOTHING"),
            Database::MySql(_) => format!("INSERT IGNORE INTO {TABLE} {values}"),
        };
        let args = [
            Arg::Id(user.id),
            Arg::Text(&user.username),
            Arg::Text(&user.hash),
            Arg::Text(permissions),
        ];
        self.execute(&sql, &args).await.map(drop)
    }
}
