//! The demo's accounts: `alice` (id 1, permission `admin`) and `bob` (id 2),
//! kept in the same backend as the sessions, so a password or permission
//! change survives a restart and every replica sees it.
//!
//! Where they live:
//! - SQLite, PostgreSQL, MySQL: the table `keyfob_demo_accounts`, on the
//!   session store's own pool;
//! - Redis (and Cluster): a hash `keyfob-demo:account:{ID}` per account and
//!   `keyfob-demo:account-name:{NAME}` → ID, on the store's own connection
//!   (one key per command, so Cluster needs no hash tags);
//! - `memory` and `cookie`: in the process, for its lifetime.
//!
//! A fresh backend is seeded with the two demo users; existing rows are
//! never overwritten, so a changed password stays changed across restarts.
//! [`Accounts`] is the [`UserBackend`]: keyfob looks the user up through it
//! on each request that needs one.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
};

use keyfob::auth::UserBackend;
use serde::{Deserialize, Serialize};

use crate::passwords;

/// A user, as `/me` and `/profile` show it (`{"id":1,"username":"alice"}`);
/// the password hash and permissions are never serialized.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// The user's id.
    pub id: u64,
    /// The user's name.
    pub username: String,
    /// The Argon2id PHC string of the password.
    #[serde(skip)]
    pub hash: String,
    /// The permissions held (`admin`).
    #[serde(skip)]
    pub permissions: Vec<String>,
}

/// The demo users and their passwords, hashed when a backend is seeded.
pub const DEMO: [(u64, &str, &str, &[&str]); 2] = [
    (1, "alice", "correct horse", &["admin"]),
    (2, "bob", "battery staple", &[]),
];

const TABLE: &str = "keyfob_demo_accounts";

/// The demo users with their passwords hashed, once per process (Argon2 is
/// slow on purpose; every seed and in-memory backend shares these hashes).
///
/// The salt of a seeded hash is the username, not random: with `memory` and
/// `cookie`, every process keeps its own accounts, and a session remembers
/// a fingerprint of the hash it logged in under, so a cookie session stays
/// valid on a replica or after a restart only if each process computes the
/// same hash for the same (public, documented) demo password. A changed
/// password gets a random salt.
fn demo_users() -> Result<&'static [User], String> {
    static USERS: std::sync::OnceLock<Option<Vec<User>>> = std::sync::OnceLock::new();
    USERS
        .get_or_init(|| {
            DEMO.iter()
                .map(|(id, name, password, permissions)| {
                    Some(User {
                        id: *id,
                        username: (*name).to_owned(),
                        hash: passwords::hash_with_salt(
                            password,
                            format!("keyfob-demo:{name}").as_bytes(),
                        )?,
                        permissions: permissions.iter().map(|p| (*p).to_owned()).collect(),
                    })
                })
                .collect()
        })
        .as_deref()
        .ok_or_else(|| "accounts: could not hash the demo passwords".to_owned())
}

#[derive(Clone)]
enum Backend {
    Memory(Arc<Mutex<HashMap<u64, User>>>),
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
    MySql(sqlx::MySqlPool),
    Redis(keyfob::store::RedisConnection),
}

/// The accounts, wherever they are kept; cheap to clone.
#[derive(Clone)]
pub struct Accounts(Backend);

/// The backend refused or could not be reached: answered `503`.
fn failed(e: impl std::error::Error + Send + Sync + 'static) -> keyfob::Error {
    keyfob::Error::store(e)
}

type Row = (i64, String, String, String);

fn from_row((id, username, hash, permissions): Row) -> Option<User> {
    Some(User {
        id: u64::try_from(id).ok()?,
        username,
        hash,
        permissions: serde_json::from_str(&permissions).unwrap_or_default(),
    })
}

impl Accounts {
    /// Accounts for the life of this process (`memory` and `cookie` stores),
    /// holding the demo users.
    ///
    /// # Errors
    /// When the demo passwords could not be hashed (no randomness for a salt).
    pub fn in_memory() -> Result<Accounts, String> {
        let users = demo_users()?
            .iter()
            .map(|u| (u.id, u.clone()))
            .collect::<HashMap<_, _>>();
        Ok(Accounts(Backend::Memory(Arc::new(Mutex::new(users)))))
    }

    /// Accounts in the SQLite database of `pool`.
    pub fn sqlite(pool: sqlx::SqlitePool) -> Accounts {
        Accounts(Backend::Sqlite(pool))
    }

    /// Accounts in the PostgreSQL database of `pool`.
    pub fn postgres(pool: sqlx::PgPool) -> Accounts {
        Accounts(Backend::Postgres(pool))
    }

    /// Accounts in the MySQL / MariaDB database of `pool`.
    pub fn mysql(pool: sqlx::MySqlPool) -> Accounts {
        Accounts(Backend::MySql(pool))
    }

    /// Accounts on the Redis server or Cluster of `conn`.
    pub fn redis(conn: keyfob::store::RedisConnection) -> Accounts {
        Accounts(Backend::Redis(conn))
    }

    /// Creates the table if needed and adds each demo user that is missing
    /// (never touching one that exists). Safe from several processes at once.
    ///
    /// # Errors
    /// A one-line reason when the backend refuses.
    pub async fn seed(&self) -> Result<(), String> {
        let why = |e: &dyn std::fmt::Display| format!("accounts: {e}").replace('\n', " ");
        self.create_table().await.map_err(|e| why(&e))?;
        let users = tokio::task::spawn_blocking(demo_users)
            .await
            .map_err(|e| why(&e))??;
        for user in users {
            self.insert_if_missing(user).await.map_err(|e| why(&e))?;
        }
        Ok(())
    }

    async fn create_table(&self) -> keyfob::Result<()> {
        match &self.0 {
            Backend::Memory(_) | Backend::Redis(_) => Ok(()),
            Backend::Sqlite(pool) => sqlx::query(&format!(
                "CREATE TABLE IF NOT EXISTS {TABLE} (id INTEGER PRIMARY KEY, \
                 username TEXT NOT NULL UNIQUE, hash TEXT NOT NULL, permissions TEXT NOT NULL)"
            ))
            .execute(pool)
            .await
            .map(drop)
            .map_err(failed),
            Backend::Postgres(pool) => {
                // Two replicas starting at once: CREATE … IF NOT EXISTS can
                // still collide in the catalog, so one at a time.
                let mut tx = pool.begin().await.map_err(failed)?;
                sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
                    .bind(TABLE)
                    .execute(&mut *tx)
                    .await
                    .map_err(failed)?;
                sqlx::query(&format!(
                    "CREATE TABLE IF NOT EXISTS {TABLE} (id BIGINT PRIMARY KEY, \
                     username TEXT NOT NULL UNIQUE, hash TEXT NOT NULL, permissions TEXT NOT NULL)"
                ))
                .execute(&mut *tx)
                .await
                .map_err(failed)?;
                tx.commit().await.map_err(failed)
            }
            Backend::MySql(pool) => sqlx::query(&format!(
                "CREATE TABLE IF NOT EXISTS {TABLE} (id BIGINT PRIMARY KEY, \
                 username VARCHAR(64) NOT NULL UNIQUE, hash TEXT NOT NULL, permissions TEXT NOT NULL)"
            ))
            .execute(pool)
            .await
            .map(drop)
            .map_err(failed),
        }
    }

    async fn insert_if_missing(&self, user: &User) -> keyfob::Result<()> {
        let permissions = serde_json::to_string(&user.permissions).map_err(failed)?;
        let id = i64::try_from(user.id).map_err(failed)?;
        match &self.0 {
            Backend::Memory(map) => {
                if let Ok(mut map) = map.lock() {
                    map.entry(user.id).or_insert_with(|| user.clone());
                }
                Ok(())
            }
            Backend::Sqlite(pool) => sqlx::query(&format!(
                "INSERT OR IGNORE INTO {TABLE} (id, username, hash, permissions) VALUES (?, ?, ?, ?)"
            ))
            .bind(id)
            .bind(&user.username)
            .bind(&user.hash)
            .bind(&permissions)
            .execute(pool)
            .await
            .map(drop)
            .map_err(failed),
            Backend::Postgres(pool) => sqlx::query(&format!(
                "INSERT INTO {TABLE} (id, username, hash, permissions) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT DO NOTHING"
            ))
            .bind(id)
            .bind(&user.username)
            .bind(&user.hash)
            .bind(&permissions)
            .execute(pool)
            .await
            .map(drop)
            .map_err(failed),
            Backend::MySql(pool) => sqlx::query(&format!(
                "INSERT IGNORE INTO {TABLE} (id, username, hash, permissions) VALUES (?, ?, ?, ?)"
            ))
            .bind(id)
            .bind(&user.username)
            .bind(&user.hash)
            .bind(&permissions)
            .execute(pool)
            .await
            .map(drop)
            .map_err(failed),
            Backend::Redis(conn) => {
                let mut conn = conn.clone();
                // HSETNX per field: an existing account keeps every field.
                let key = redis_key(user.id);
                for (field, value) in [
                    ("username", user.username.as_str()),
                    ("hash", user.hash.as_str()),
                    ("permissions", permissions.as_str()),
                ] {
                    redis::cmd("HSETNX")
                        .arg(&key)
                        .arg(field)
                        .arg(value)
                        .query_async::<()>(&mut conn)
                        .await
                        .map_err(failed)?;
                }
                redis::cmd("SET")
                    .arg(redis_name_key(&user.username))
                    .arg(user.id)
                    .arg("NX")
                    .query_async::<()>(&mut conn)
                    .await
                    .map_err(failed)
            }
        }
    }

    /// The account with this id.
    ///
    /// # Errors
    /// The backend failed (`503`).
    pub async fn by_id(&self, id: u64) -> keyfob::Result<Option<User>> {
        let Ok(sql_id) = i64::try_from(id) else {
            return Ok(None);
        };
        let select = format!("SELECT id, username, hash, permissions FROM {TABLE} WHERE id = ");
        Ok(match &self.0 {
            Backend::Memory(map) => map.lock().ok().and_then(|m| m.get(&id).cloned()),
            Backend::Sqlite(pool) => sqlx::query_as::<_, Row>(&format!("{select}?"))
                .bind(sql_id)
                .fetch_optional(pool)
                .await
                .map_err(failed)?
                .and_then(from_row),
            Backend::Postgres(pool) => sqlx::query_as::<_, Row>(&format!("{select}$1"))
                .bind(sql_id)
                .fetch_optional(pool)
                .await
                .map_err(failed)?
                .and_then(from_row),
            Backend::MySql(pool) => sqlx::query_as::<_, Row>(&format!("{select}?"))
                .bind(sql_id)
                .fetch_optional(pool)
                .await
                .map_err(failed)?
                .and_then(from_row),
            Backend::Redis(conn) => {
                let mut conn = conn.clone();
                let fields: HashMap<String, String> = redis::cmd("HGETALL")
                    .arg(redis_key(id))
                    .query_async(&mut conn)
                    .await
                    .map_err(failed)?;
                let field = |f: &str| fields.get(f).cloned();
                match (field("username"), field("hash"), field("permissions")) {
                    (Some(u), Some(h), Some(p)) => from_row((sql_id, u, h, p)),
                    _ => None,
                }
            }
        })
    }

    /// The account with this username.
    ///
    /// # Errors
    /// The backend failed (`503`).
    pub async fn by_name(&self, username: &str) -> keyfob::Result<Option<User>> {
        let id: Option<i64> = match &self.0 {
            Backend::Memory(map) => map.lock().ok().and_then(|m| {
                m.values()
                    .find(|u| u.username == username)
                    .and_then(|u| i64::try_from(u.id).ok())
            }),
            Backend::Sqlite(pool) => {
                sqlx::query_scalar(&format!("SELECT id FROM {TABLE} WHERE username = ?"))
                    .bind(username)
                    .fetch_optional(pool)
                    .await
                    .map_err(failed)?
            }
            Backend::Postgres(pool) => {
                sqlx::query_scalar(&format!("SELECT id FROM {TABLE} WHERE username = $1"))
                    .bind(username)
                    .fetch_optional(pool)
                    .await
                    .map_err(failed)?
            }
            Backend::MySql(pool) => {
                sqlx::query_scalar(&format!("SELECT id FROM {TABLE} WHERE username = ?"))
                    .bind(username)
                    .fetch_optional(pool)
                    .await
                    .map_err(failed)?
            }
            Backend::Redis(conn) => {
                let mut conn = conn.clone();
                redis::cmd("GET")
                    .arg(redis_name_key(username))
                    .query_async(&mut conn)
                    .await
                    .map_err(failed)?
            }
        };
        match id.and_then(|id| u64::try_from(id).ok()) {
            Some(id) => Ok(self.by_id(id).await?.filter(|u| u.username == username)),
            None => Ok(None),
        }
    }

    /// Replaces the permissions of `username`; `false` when there is no such user.
    ///
    /// # Errors
    /// The backend failed (`503`); nothing changed.
    pub async fn set_permissions(
        &self,
        username: &str,
        permissions: &[String],
    ) -> keyfob::Result<bool> {
        let Some(user) = self.by_name(username).await? else {
            return Ok(false);
        };
        let json = serde_json::to_string(permissions).map_err(failed)?;
        self.set_field(user.id, "permissions", &json).await?;
        Ok(true)
    }

    /// Replaces the password hash of user `id` if it is still `old` (the
    /// one the current password was checked against); `false` when another
    /// change came first, and then nothing changed.
    ///
    /// # Errors
    /// The backend failed (`503`); nothing changed.
    pub async fn replace_hash(&self, id: u64, old: &str, new: &str) -> keyfob::Result<bool> {
        let sql_id = i64::try_from(id).map_err(failed)?;
        let update = |p: [&str; 3]| {
            format!(
                "UPDATE {TABLE} SET hash = {} WHERE id = {} AND hash = {}",
                p[0], p[1], p[2]
            )
        };
        Ok(match &self.0 {
            Backend::Memory(map) => {
                let mut map = map
                    .lock()
                    .map_err(|_| keyfob::Error::store_msg("accounts lock poisoned"))?;
                match map.get_mut(&id) {
                    Some(user) if user.hash == old => {
                        user.hash = new.to_owned();
                        true
                    }
                    _ => false,
                }
            }
            Backend::Sqlite(pool) => {
                sqlx::query(&update(["?", "?", "?"]))
                    .bind(new)
                    .bind(sql_id)
                    .bind(old)
                    .execute(pool)
                    .await
                    .map_err(failed)?
                    .rows_affected()
                    == 1
            }
            Backend::Postgres(pool) => {
                sqlx::query(&update(["$1", "$2", "$3"]))
                    .bind(new)
                    .bind(sql_id)
                    .bind(old)
                    .execute(pool)
                    .await
                    .map_err(failed)?
                    .rows_affected()
                    == 1
            }
            Backend::MySql(pool) => {
                sqlx::query(&update(["?", "?", "?"]))
                    .bind(new)
                    .bind(sql_id)
                    .bind(old)
                    .execute(pool)
                    .await
                    .map_err(failed)?
                    .rows_affected()
                    == 1
            }
            Backend::Redis(conn) => {
                // One key, so one Cluster slot: compare and set atomically.
                let mut conn = conn.clone();
                let swapped: i64 = redis::Script::new(
                    "if redis.call('HGET', KEYS[1], 'hash') == ARGV[1] then \
                         redis.call('HSET', KEYS[1], 'hash', ARGV[2]) return 1 end return 0",
                )
                .key(redis_key(id))
                .arg(old)
                .arg(new)
                .invoke_async(&mut conn)
                .await
                .map_err(failed)?;
                swapped == 1
            }
        })
    }

    async fn set_field(&self, id: u64, field: &'static str, value: &str) -> keyfob::Result<()> {
        let sql_id = i64::try_from(id).map_err(failed)?;
        let sql = |placeholder: fn(usize) -> String| {
            format!(
                "UPDATE {TABLE} SET {field} = {} WHERE id = {}",
                placeholder(1),
                placeholder(2)
            )
        };
        match &self.0 {
            Backend::Memory(map) => {
                if let Some(user) = map.lock().ok().as_mut().and_then(|m| m.get_mut(&id)) {
                    user.permissions = serde_json::from_str(value).unwrap_or_default();
                }
                Ok(())
            }
            Backend::Sqlite(pool) => sqlx::query(&sql(|_| "?".into()))
                .bind(value)
                .bind(sql_id)
                .execute(pool)
                .await
                .map(drop)
                .map_err(failed),
            Backend::Postgres(pool) => sqlx::query(&sql(|n| format!("${n}")))
                .bind(value)
                .bind(sql_id)
                .execute(pool)
                .await
                .map(drop)
                .map_err(failed),
            Backend::MySql(pool) => sqlx::query(&sql(|_| "?".into()))
                .bind(value)
                .bind(sql_id)
                .execute(pool)
                .await
                .map(drop)
                .map_err(failed),
            Backend::Redis(conn) => {
                let mut conn = conn.clone();
                redis::cmd("HSET")
                    .arg(redis_key(id))
                    .arg(field)
                    .arg(value)
                    .query_async::<()>(&mut conn)
                    .await
                    .map_err(failed)
            }
        }
    }
}

fn redis_key(id: u64) -> String {
    format!("keyfob-demo:account:{id}")
}

fn redis_name_key(username: &str) -> String {
    format!("keyfob-demo:account-name:{username}")
}

impl UserBackend for Accounts {
    type User = User;

    async fn user(&self, id: &str) -> keyfob::Result<Option<User>> {
        match id.parse::<u64>() {
            Ok(id) => self.by_id(id).await,
            Err(_) => Ok(None),
        }
    }

    fn credential(user: &User) -> &[u8] {
        user.hash.as_bytes()
    }

    async fn permissions(&self, user: &User) -> keyfob::Result<HashSet<String>> {
        Ok(user.permissions.iter().cloned().collect())
    }
}
