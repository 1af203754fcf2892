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

use crate::{
    accounts_sql::{Arg, Database, TABLE},
    passwords,
};

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
    Sql(Database),
    Redis(keyfob::store::RedisConnection),
}

/// The accounts, wherever they are kept; cheap to clone.
#[derive(Clone)]
pub struct Accounts(Backend);

/// The backend refused or could not be reached: answered `503`.
pub(crate) fn failed(e: impl std::error::Error + Send + Sync + 'static) -> keyfob::Error {
    keyfob::Error::store(e)
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
        Accounts(Backend::Sql(Database::Sqlite(pool)))
    }

    /// Accounts in the PostgreSQL database of `pool`.
    pub fn postgres(pool: sqlx::PgPool) -> Accounts {
        Accounts(Backend::Sql(Database::Postgres(pool)))
    }

    /// Accounts in the MySQL / MariaDB database of `pool`.
    pub fn mysql(pool: sqlx::MySqlPool) -> Accounts {
        Accounts(Backend::Sql(Database::MySql(pool)))
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
        let users = tokio::task::spawn_blocking(demo_users)
            .await
            .map_err(|e| why(&e))??;
        if let Backend::Sql(sql) = &self.0 {
            sql.create_table().await.map_err(|e| why(&e))?;
        }
        for user in users {
            self.insert_if_missing(user).await.map_err(|e| why(&e))?;
        }
        Ok(())
    }

    async fn insert_if_missing(&self, user: &User) -> keyfob::Result<()> {
        let permissions = serde_json::to_string(&user.permissions).map_err(failed)?;
        match &self.0 {
            Backend::Memory(map) => {
                if let Ok(mut map) = map.lock() {
                    map.entry(user.id).or_insert_with(|| user.clone());
                }
                Ok(())
            }
            Backend::Sql(sql) => sql.insert_if_missing(user, &permissions).await,
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
        match &self.0 {
            Backend::Memory(map) => Ok(map.lock().ok().and_then(|m| m.get(&id).cloned())),
            Backend::Sql(sql) => sql.user("id", Arg::Id(id)).await,
            Backend::Redis(conn) => {
                let mut conn = conn.clone();
                let fields: HashMap<String, String> = redis::cmd("HGETALL")
                    .arg(redis_key(id))
                    .query_async(&mut conn)
                    .await
                    .map_err(failed)?;
                let field = |f: &str| fields.get(f).cloned();
                Ok(
                    match (field("username"), field("hash"), field("permissions")) {
                        (Some(username), Some(hash), Some(p)) => {
                            Some(user_from(id, username, hash, &p))
                        }
                        _ => None,
                    },
                )
            }
        }
    }

    /// The account with this username (one query on SQL; Redis finds the
    /// id first, then the account).
    ///
    /// # Errors
    /// The backend failed (`503`).
    pub async fn by_name(&self, username: &str) -> keyfob::Result<Option<User>> {
        let found = match &self.0 {
            Backend::Memory(map) => map
                .lock()
                .ok()
                .and_then(|m| m.values().find(|u| u.username == username).cloned()),
            Backend::Sql(sql) => sql.user("username", Arg::Text(username)).await?,
            Backend::Redis(conn) => {
                let mut conn = conn.clone();
                let id: Option<u64> = redis::cmd("GET")
                    .arg(redis_name_key(username))
                    .query_async(&mut conn)
                    .await
                    .map_err(failed)?;
                match id {
                    Some(id) => self.by_id(id).await?,
                    None => None,
                }
            }
        };
        // Exact match only (MySQL's collation compares case-insensitively).
        Ok(found.filter(|u| u.username == username))
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
        match &self.0 {
            Backend::Memory(map) => {
                if let Some(u) = map.lock().ok().as_mut().and_then(|m| m.get_mut(&user.id)) {
                    u.permissions = permissions.to_vec();
                }
            }
            Backend::Sql(sql) => {
                sql.execute(
                    &format!("UPDATE {TABLE} SET permissions = ? WHERE id = ?"),
                    &[Arg::Text(&json), Arg::Id(user.id)],
                )
                .await?;
            }
            Backend::Redis(conn) => {
                let mut conn = conn.clone();
                redis::cmd("HSET")
                    .arg(redis_key(user.id))
                    .arg("permissions")
                    .arg(&json)
                    .query_async::<()>(&mut conn)
                    .await
                    .map_err(failed)?;
            }
        }
        Ok(true)
    }

    /// Replaces the password hash of user `id` if it is still `old` (the
    /// one the current password was checked against); `false` when another
    /// change came first, and then nothing changed.
    ///
    /// # Errors
    /// The backend failed (`503`); nothing changed.
    pub async fn replace_hash(&self, id: u64, old: &str, new: &str) -> keyfob::Result<bool> {
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
            Backend::Sql(sql) => {
                sql.execute(
                    &format!("UPDATE {TABLE} SET hash = ? WHERE id = ? AND hash = ?"),
                    &[Arg::Text(new), Arg::Id(id), Arg::Text(old)],
                )
                .await?
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
}

/// An account from its stored parts (permissions as JSON text).
pub(crate) fn user_from(id: u64, username: String, hash: String, permissions: &str) -> User {
    User {
        id,
        username,
        hash,
        permissions: serde_json::from_str(permissions).unwrap_or_default(),
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
