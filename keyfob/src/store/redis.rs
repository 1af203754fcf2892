//! The Redis store: one hash per session, change-sets applied by a Lua
//! script, on a single server or a Redis Cluster.
//!
//! Rules:
//! - a session is one hash, `<prefix>:s:<handle>`, with one field per
//!   metadata item (`v` version, `c` created, `s` last seen, `i`/`a` idle and
//!   absolute deadlines, `o` owner, `e` per-session expiry) and one field
//!   `d:<key>` per data key holding the value's JSON text. The change-set maps
//!   one to one onto `HSET`/`HDEL`, so the script never parses JSON (Lua's
//!   `cjson` would rewrite values: big integers, escapes, key order) and a
//!   write costs the size of what changed, not of the whole session;
//! - every update runs as one script on that one key: it checks the record is
//!   live *at the caller's clock*, applies the change-set to the hash as it is
//!   now, bumps the version and sets `EXPIREAT` to the record's deadline, so
//!   concurrent writers of different keys all persist, an update of a
//!   deleted or expired record writes nothing, and Redis drops expired
//!   sessions by itself;
//! - every script touches exactly one key, so every operation works
//!   unchanged on Redis Cluster. A session is one key, so it needs no hash
//!   tag; the only move between keys is a rotation ([`Update::rename_to`]),
//!   and no tag can help there: the new key is named by the SHA-256 of a
//!   fresh random ID, so it lands in an unpredictable slot (a tag shared with
//!   the old key would have to be found again from the new cookie alone).
//!   A rotation is therefore three steps (see below);
//! - the owner index is a sorted set per owner, `<prefix>:o:<owner>`: each
//!   handle is scored with a *watermark* never earlier than its session's
//!   deadline (pushed forward as the session is refreshed, an hour at a
//!   time), and the key expires with its longest-lived member. A handle is
//!   filed *before* its session becomes visible under the owner, so
//!   [`delete_by_owner`](SessionStore::delete_by_owner) never misses one;
//!   [`list_by_owner`](SessionStore::list_by_owner) prunes members whose
//!   watermark has passed or whose record expired, and deletes unfile theirs.
//!   (A plain set could not tell "already gone" from "being written right
//!   now"; the score can);
//! - a hash that cannot be decoded reads as "no session" with a
//!   `tracing::warn!`, and a Redis failure is an [`Error`] of kind
//!   [`Store`](crate::ErrorKind::Store), never a panic.
//!
//! Rotation on Cluster. The old and new keys live in different slots and no
//! script may touch both, so the move is:
//! 1. one script on the old key applies the update, reads the result and
//!    replaces the hash with a *tombstone* (`moved` = new handle, 60 s TTL);
//!    from here on the old handle loads nothing and updates of it are gone;
//! 2. the new hash is created from that result, and indexed under its owner;
//! 3. a guard checks the tombstone is still there. `delete_by_owner`
//!    deletes a tombstone *and the session it points to*, so a "revoke all"
//!    that raced the rotation either removes the new hash itself or removes
//!    the tombstone, and then step 3 deletes the new hash and reports
//!    [`Updated::Gone`]. A revocation never misses a rotating session.
//!
//! The rotation takes effect at step 1, atomically for every writer of the
//! old handle; until step 2 the session exists under neither handle, which
//! no client can observe (the new ID has not been sent yet). A crash between
//! steps 1 and 2 loses the session: it fails closed, the user logs in again.
//! The same three steps run on a single server, so one code path is tested.
//!
//! Caveats:
//! - [`delete_expired`](SessionStore::delete_expired) is mostly index
//!   hygiene: Redis drops expired hashes itself (`EXPIREAT`). The purge
//!   walks an index of creation-time deadlines (16 sorted sets
//!   `<prefix>:x:<hex digit>`, by handle, so they spread over a Cluster),
//!   deleting records that are expired at the caller's clock and re-filing
//!   those that were extended. Without a cleanup task the index still stays
//!   bounded: every 64th create drops the entries of one set that are
//!   overdue by more than a day;
//! - the key prefix should not contain `{`…`}`: a hash tag in the prefix
//!   would put every keyfob key in one Cluster slot (still correct, but one
//!   node would serve all sessions);
//! - deadlines are whole seconds and `EXPIREAT` uses the Redis server's
//!   clock: keep the app servers' and Redis's clocks in sync (NTP);
//! - a key at a session's name that is not a hash (another app writing into
//!   this prefix) is a store error, not "no session": it is loud on purpose;
//! - `rediss://` needs one of the `redis` crate's TLS features enabled in
//!   the app; the `redis` crate's timeouts apply (500 ms per response and
//!   1 s to connect by default on a single server).
//!
//! ```no_run
//! use keyfob::{store::redis::RedisStore, SessionLayer};
//!
//! # async fn run() -> keyfob::Result<()> {
//! // A single server, or `redis+cluster://host:port` for a Cluster seed node.
//! let store = RedisStore::connect("redis://127.0.0.1:6379")
//!     .await?
//!     .with_key_prefix("myapp:sessions");
//! let layer = SessionLayer::new(store);
//! # let _ = layer;
//! // A URL of another scheme is refused when the store is built.
//! assert!(RedisStore::connect("http://127.0.0.1").await.is_err());
//! # Ok(()) }
//! ```

use std::{
    fmt,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use redis::{
    aio::{ConnectionLike, ConnectionManager},
    cluster_async::ClusterConnection,
    Cmd, Pipeline, RedisFuture, Script, Value,
};
use serde_json::value::RawValue;
use time::OffsetDateTime;

use super::{BoxFuture, Created, OwnedSession, SessionStore, Updated};
use crate::{
    error::{Error, Result},
    expiry::Expiry,
    id::Handle,
    record::{secs, Data, Record, Update},
};

/// How long a rotated-away handle keeps its tombstone, in milliseconds.
const TOMBSTONE_MS: u64 = 60_000;
/// A session's watermark in its owner index (and so the index's TTL) runs
/// this far past the deadline it was last pushed for, so a session that
/// keeps refreshing its idle deadline re-files itself about once an hour.
const OWNER_SLACK_SECS: i64 = 3600;
/// The purge index is split in this many sorted sets (by the handle's first
/// hex digit), so on a Cluster its writes and memory spread over the nodes.
const PURGE_SHARDS: u8 = 16;
/// How many passes one `delete_expired` call makes at most, per shard.
const PURGE_PASSES: usize = 4;
/// Every this many creates, purge-index entries due for more than
/// [`TRIM_AFTER_SECS`] are dropped, so the index stays bounded even when no
/// cleanup task runs (Redis itself has long dropped those hashes, or will).
const TRIM_EVERY: u64 = 64;
const TRIM_AFTER_SECS: i64 = 86_400;
const DEFAULT_PREFIX: &str = "keyfob";

/// Shared Lua prologue: `due(m)` is true when the deadlines in `m` (HMGET of
/// `i`, `a`) have passed at `now`; `deadline(i, a)` is the earlier of them.
const LUA_COMMON: &str = r#"
local function num(x) if x then return tonumber(x) end return nil end
local function deadline(i, a)
  i = num(i); a = num(a)
  if i and a then return math.min(i, a) end
  return i or a
end
"#;

/// Replies are arrays of strings (status first) so they decode as bytes.
/// Returns `{status, ...}`: 0 gone, -1 corrupt, 1 applied `{1, owner,
/// watermark}`, 2 moved `{2, owner, expire_at, watermark, field, value, ...}`.
const LUA_UPDATE: &str = r#"
local h = KEYS[1]
local now = tonumber(ARGV[1])
local m = redis.call('HMGET', h, 'v', 'i', 'a', 'moved', 'o', 'x', 'c', 's')
if m[4] then return {'0'} end
if not m[1] then
  if redis.call('EXISTS', h) == 0 then return {'0'} end
  return {'-1'}
end
-- Metadata the loader would refuse: the record reads as no session, so it
-- is not updated either. (Data values are checked only when loaded.)
for _, n in ipairs({1, 7, 8}) do if not tonumber(m[n]) then return {'-1'} end end
if (m[2] and not tonumber(m[2])) or (m[3] and not tonumber(m[3])) then return {'-1'} end
local e = deadline(m[2], m[3])
if e and now >= e then redis.call('DEL', h) return {'0'} end
if ARGV[6] == '1' then
  for _, k in ipairs(redis.call('HKEYS', h)) do
    if string.sub(k, 1, 2) == 'd:' then redis.call('HDEL', h, k) end
  end
end
for n = 10, #ARGV, 2 do
  if ARGV[n + 1] == '' then redis.call('HDEL', h, 'd:' .. ARGV[n])
  else redis.call('HSET', h, 'd:' .. ARGV[n], ARGV[n + 1]) end
end
redis.call('HSET', h, 's', ARGV[2])
if ARGV[3] == '' then redis.call('HDEL', h, 'i') else redis.call('HSET', h, 'i', ARGV[3]) end
local owner = m[5]
if ARGV[4] == '-' then redis.call('HDEL', h, 'o') owner = nil
elseif string.sub(ARGV[4], 1, 1) == '=' then
  owner = string.sub(ARGV[4], 2)
  if owner ~= m[5] then redis.call('HDEL', h, 'x') m[6] = nil end
  redis.call('HSET', h, 'o', owner)
end
if ARGV[5] == '-' then redis.call('HDEL', h, 'e')
elseif string.sub(ARGV[5], 1, 1) == '=' then redis.call('HSET', h, 'e', string.sub(ARGV[5], 2)) end
redis.call('HINCRBY', h, 'v', 1)
e = deadline(ARGV[3] ~= '' and ARGV[3] or nil, m[3])
-- The owner set must outlive its sessions: ask the caller to push its TTL
-- when this deadline passes the watermark last pushed.
local mark = ''
if owner then
  if not e then
    if m[6] ~= 'inf' then mark = 'inf' end
  elseif m[6] ~= 'inf' and (not tonumber(m[6]) or e > tonumber(m[6])) then
    mark = tostring(e + tonumber(ARGV[8]))
  end
  if mark ~= '' then redis.call('HSET', h, 'x', mark) end
end
if ARGV[7] ~= '' then
  local all = redis.call('HGETALL', h)
  redis.call('DEL', h)
  redis.call('HSET', h, 'moved', ARGV[7])
  redis.call('PEXPIRE', h, ARGV[9])
  local out = {'2', owner or '', e and tostring(e) or '', mark}
  for n = 1, #all do out[#out + 1] = all[n] end
  return out
end
if e then redis.call('EXPIREAT', h, e) else redis.call('PERSIST', h) end
return {'1', owner or '', mark}
"#;

/// `1` stored, `0` a live record (or a tombstone) holds the key.
const LUA_CREATE: &str = r#"
local h = KEYS[1]
local m = redis.call('HMGET', h, 'v', 'i', 'a', 'moved')
if m[4] then return 0 end
if m[1] then
  local e = deadline(m[2], m[3])
  if not e or tonumber(ARGV[1]) < e then return 0 end
end
redis.call('DEL', h)
for n = 3, #ARGV, 2 do redis.call('HSET', h, ARGV[n], ARGV[n + 1]) end
if ARGV[2] ~= '' then redis.call('EXPIREAT', h, ARGV[2]) end
return 1
"#;

/// `{0}` nothing deleted (missing or a tombstone, which only expiry or
/// `delete_by_owner` removes), `{1, owner}` deleted.
const LUA_DELETE: &str = r#"
local h = KEYS[1]
local m = redis.call('HMGET', h, 'moved', 'o')
if m[1] then return {'0'} end
if redis.call('DEL', h) == 0 then return {'0'} end
return {'1', m[2] or ''}
"#;

/// Revocation: `{0}` missing, `{1, owner}` a session deleted, `{2, target}`
/// a tombstone deleted (the caller revokes the session it points to).
const LUA_REVOKE: &str = r#"
local h = KEYS[1]
local m = redis.call('HMGET', h, 'moved', 'o')
if redis.call('DEL', h) == 0 then return {'0'} end
if m[1] then return {'2', m[1]} end
return {'1', m[2] or ''}
"#;

/// Purge of one candidate: `{0}` gone already, `{1, owner}` deleted as
/// expired at ARGV[1], `{2, deadline}` still live (`''`: never expires).
const LUA_PURGE: &str = r#"
local h = KEYS[1]
local m = redis.call('HMGET', h, 'v', 'i', 'a', 'moved', 'o')
if m[4] or not m[1] then return {'0'} end
local e = deadline(m[2], m[3])
if e and tonumber(ARGV[1]) >= e then
  redis.call('DEL', h)
  return {'1', m[5] or ''}
end
return {'2', e and tostring(e) or ''}
"#;

/// Files a handle in an owner index under its watermark ARGV[2] (`inf`:
/// never expires), never lowering a member's score, and gives the index the
/// expiry of its longest-lived member.
const LUA_INDEX: &str = r#"
local k = KEYS[1]
redis.call('ZADD', k, 'GT', ARGV[2] == 'inf' and '+inf' or ARGV[2], ARGV[1])
local top = redis.call('ZRANGE', k, -1, -1, 'WITHSCORES')
if top[2] == 'inf' then redis.call('PERSIST', k)
else redis.call('EXPIREAT', k, top[2]) end
return 1
"#;

/// Rotation guard: 1 when the tombstone at KEYS[1] still points to ARGV[1].
const LUA_GUARD: &str = r#"
if redis.call('HGET', KEYS[1], 'moved') == ARGV[1] then return 1 end
return 0
"#;

struct Scripts {
    update: Script,
    create: Script,
    delete: Script,
    revoke: Script,
    purge: Script,
    index: Script,
    guard: Script,
}

impl Scripts {
    fn new() -> Self {
        let common = |body: &str| Script::new(&format!("{LUA_COMMON}{body}"));
        Scripts {
            update: common(LUA_UPDATE),
            create: common(LUA_CREATE),
            delete: Script::new(LUA_DELETE),
            revoke: Script::new(LUA_REVOKE),
            purge: common(LUA_PURGE),
            index: Script::new(LUA_INDEX),
            guard: Script::new(LUA_GUARD),
        }
    }
}

/// The connection: a single server or a Cluster, both multiplexed and cheap
/// to clone.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Sessions in Redis or a Redis Cluster, on the [`redis`] crate.
///
/// Build it from the app's own connection ([`RedisStore::new`],
/// [`RedisStore::cluster`]) or from a URL ([`RedisStore::connect`]).
///
/// ```no_run
/// use keyfob::store::redis::RedisStore;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let client = redis::Client::open("redis://127.0.0.1:6379")?;
/// let conn = redis::aio::ConnectionManager::new(client).await?;
/// let store = RedisStore::new(conn);
/// # let _ = store;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    conn: Conn,
    prefix: Arc<str>,
    scripts: Arc<Scripts>,
    creates: Arc<AtomicU64>,
    purge_cursor: Arc<AtomicU64>,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.conn {
            Conn::Single(_) => "single",
            Conn::Cluster(_) => "cluster",
        };
        f.debug_struct("RedisStore")
            .field("kind", &kind)
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl RedisStore {
    fn with_conn(conn: Conn) -> Self {
        RedisStore {
            conn,
            prefix: DEFAULT_PREFIX.into(),
            scripts: Arc::new(Scripts::new()),
            creates: Arc::new(AtomicU64::new(0)),
            purge_cursor: Arc::new(AtomicU64::new(0)),
        }
    }

    /// A store on a single Redis server, through the app's connection manager
    /// (it reconnects by itself after a failure).
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = redis::Client::open("redis://127.0.0.1:6379")?;
    /// let conn = redis::aio::ConnectionManager::new(client).await?;
    /// let store = keyfob::store::redis::RedisStore::new(conn);
    /// # let _ = store;
    /// # Ok(()) }
    /// ```
    pub fn new(conn: ConnectionManager) -> Self {
        Self::with_conn(Conn::Single(conn))
    }

    /// A store on a Redis Cluster, through the app's cluster connection.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = redis::cluster::ClusterClient::new(vec!["redis://127.0.0.1:7000"])?;
    /// let conn = client.get_async_connection().await?;
    /// let store = keyfob::store::redis::RedisStore::cluster(conn);
    /// # let _ = store;
    /// # Ok(()) }
    /// ```
    pub fn cluster(conn: ClusterConnection) -> Self {
        Self::with_conn(Conn::Cluster(conn))
    }

    /// Connects to `redis://…` / `rediss://…` (a single server) or
    /// `redis+cluster://host:port[,host:port…]` (Cluster seed nodes;
    /// `rediss+cluster://` for TLS), and checks the server answers.
    ///
    /// A malformed URL is an error of kind [`Config`](crate::ErrorKind::Config);
    /// an unreachable server one of kind [`Store`](crate::ErrorKind::Store).
    ///
    /// ```no_run
    /// # async fn run() -> keyfob::Result<()> {
    /// let store = keyfob::store::redis::RedisStore::connect("redis+cluster://127.0.0.1:7000").await?;
    /// # let _ = store;
    /// # Ok(()) }
    /// ```
    pub async fn connect(url: &str) -> Result<Self> {
        let cluster = |scheme: &str, rest: &str| -> Result<Vec<String>> {
            let seeds: Vec<String> = rest
                .split(',')
                .filter(|s| !s.is_empty())
                .map(|s| format!("{scheme}://{s}"))
                .collect();
            if seeds.is_empty() {
                return Err(Error::config(format!(
                    "the Redis Cluster URL names no seed node: write {scheme}+cluster://host:port"
                )));
            }
            Ok(seeds)
        };
        let store = if let Some(rest) = url.strip_prefix("redis+cluster://") {
            Self::connect_cluster(cluster("redis", rest)?).await?
        } else if let Some(rest) = url.strip_prefix("rediss+cluster://") {
            Self::connect_cluster(cluster("rediss", rest)?).await?
        } else if url.starts_with("redis://") || url.starts_with("rediss://") {
            let client = redis::Client::open(url).map_err(bad_url)?;
            // One plain attempt first: the manager retries with backoff for
            // seconds, and a server that is down at start-up should fail fast.
            client
                .get_multiplexed_async_connection()
                .await
                .map_err(Error::store)?;
            // Reconnect backoff capped at 250 ms (the crate's default grows
            // to seconds): after an outage the store is back within a
            // quarter second of the server, not several seconds later.
            let config = redis::aio::ConnectionManagerConfig::new()
                .set_min_delay(std::time::Duration::from_millis(50))
                .set_max_delay(std::time::Duration::from_millis(250));
            Self::new(
                ConnectionManager::new_with_config(client, config)
                    .await
                    .map_err(Error::store)?,
            )
        } else {
            // The URL may hold a password: name only its scheme.
            let scheme = url.split_once("://").map_or("(none)", |(s, _)| s);
            return Err(Error::config(format!(
                "the URL scheme `{scheme}` is not Redis: use redis://host:port or redis+cluster://host:port"
            )));
        };
        let mut conn = store.conn.clone();
        redis::cmd("PING")
            .query_async::<()>(&mut conn)
            .await
            .map_err(Error::store)?;
        Ok(store)
    }

    async fn connect_cluster(seeds: Vec<String>) -> Result<Self> {
        let client = redis::cluster::ClusterClient::new(seeds)
            .map_err(|e| Error::with_source(crate::ErrorKind::Config, e))?;
        let conn = client.get_async_connection().await.map_err(Error::store)?;
        Ok(Self::cluster(conn))
    }

    /// Sets the prefix of every key this store writes (default `keyfob`):
    /// `<prefix>:s:<handle>` sessions, `<prefix>:o:<owner>` owner sets,
    /// `<prefix>:x:<0-f>` the purge index. Give each app sharing a Redis its own.
    ///
    /// ```no_run
    /// # async fn run() -> keyfob::Result<()> {
    /// let store = keyfob::store::redis::RedisStore::connect("redis://127.0.0.1:6379")
    ///     .await?
    ///     .with_key_prefix("shop:sessions");
    /// # let _ = store;
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn with_key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into().into();
        self
    }

    fn session_key(&self, handle: &Handle) -> String {
        format!("{}:s:{handle}", self.prefix)
    }

    fn owner_key(&self, owner: &str) -> String {
        format!("{}:o:{owner}", self.prefix)
    }

    fn purge_key(&self, shard: u8) -> String {
        format!("{}:x:{shard:x}", self.prefix)
    }

    /// What the session key holds; a corrupt hash is logged and read as missing.
    async fn fetch(&self, handle: &Handle) -> Result<Decoded> {
        let mut conn = self.conn.clone();
        let fields: Vec<(Vec<u8>, Vec<u8>)> = redis::cmd("HGETALL")
            .arg(self.session_key(handle))
            .query_async(&mut conn)
            .await
            .map_err(Error::store)?;
        Ok(decode(&fields).unwrap_or_else(|why| {
            tracing::warn!(handle = %handle.short(), why, "keyfob: undecodable Redis session; treating it as no session");
            Decoded::Missing
        }))
    }

    async fn load_inner(&self, handle: &Handle, now: OffsetDateTime) -> Result<Option<Record>> {
        Ok(match self.fetch(handle).await? {
            Decoded::Record(r) => Some(r).filter(|r| !r.is_expired(now)),
            Decoded::Missing | Decoded::Moved => None,
        })
    }

    async fn index(&self, owner: &str, handle: &Handle, until: &str) -> Result<()> {
        let mut conn = self.conn.clone();
        self.scripts
            .index
            .key(self.owner_key(owner))
            .arg(handle.to_string())
            .arg(until)
            .invoke_async::<i64>(&mut conn)
            .await
            .map_err(Error::store)?;
        Ok(())
    }

    async fn unindex(&self, owner: &str, handles: &[String]) -> Result<()> {
        if owner.is_empty() || handles.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        redis::cmd("ZREM")
            .arg(self.owner_key(owner))
            .arg(handles)
            .query_async::<i64>(&mut conn)
            .await
            .map_err(Error::store)?;
        Ok(())
    }

    async fn file_for_purge(&self, handle: &Handle, expire_at: Option<i64>) -> Result<()> {
        let Some(at) = expire_at else { return Ok(()) };
        let mut conn = self.conn.clone();
        redis::cmd("ZADD")
            .arg(self.purge_key(purge_shard(handle)))
            .arg(at)
            .arg(handle.to_string())
            .query_async::<i64>(&mut conn)
            .await
            .map_err(Error::store)?;
        Ok(())
    }

    async fn create_inner(&self, handle: &Handle, record: &Record) -> Result<Created> {
        let expire_at = record.expires_secs();
        // Filed and indexed first: a crash in between leaves a stale entry
        // (pruned later), never a live session the index does not know.
        self.file_for_purge(handle, expire_at).await?;
        let mut fields = encode(record)?;
        if let Some(owner) = record.owner() {
            let mark = watermark(expire_at);
            self.index(owner, handle, &mark).await?;
            fields.push(("x".into(), mark.into_bytes()));
        }
        let created = self
            .create_fields(handle, secs(record.last_seen()), expire_at, &fields)
            .await?;
        if self.creates.fetch_add(1, Ordering::Relaxed) % TRIM_EVERY == TRIM_EVERY - 1 {
            let mut conn = self.conn.clone();
            redis::cmd("ZREMRANGEBYSCORE")
                .arg(self.purge_key(purge_shard(handle)))
                .arg("-inf")
                .arg(secs(record.last_seen()) - TRIM_AFTER_SECS)
                .query_async::<i64>(&mut conn)
                .await
                .map_err(Error::store)?;
        }
        Ok(created)
    }

    async fn create_fields(
        &self,
        handle: &Handle,
        now: i64,
        expire_at: Option<i64>,
        fields: &[(String, Vec<u8>)],
    ) -> Result<Created> {
        let mut conn = self.conn.clone();
        let mut call = self.scripts.create.key(self.session_key(handle));
        call.arg(now)
            .arg(expire_at.map(|e| e.to_string()).unwrap_or_default());
        for (k, v) in fields {
            call.arg(k).arg(v);
        }
        let stored: i64 = call.invoke_async(&mut conn).await.map_err(Error::store)?;
        Ok(if stored == 1 {
            Created::Stored
        } else {
            Created::Collision
        })
    }

    async fn update_inner(
        &self,
        handle: &Handle,
        update: &Update,
        now: OffsetDateTime,
    ) -> Result<Updated> {
        // A new owner is indexed before the script makes it visible, with a
        // provisional watermark (the deadline is the script's to know; an
        // index score only ever rises, so it must not start at "never"). The
        // script always returns the real one for a new owner, filed next.
        if let Some(Some(owner)) = update.owner_change() {
            if update.rename_to().is_none() {
                let provisional = update.idle_deadline.unwrap_or(0).max(secs(now));
                self.index(owner, handle, &watermark(Some(provisional)))
                    .await?;
            }
        }
        let mut conn = self.conn.clone();
        let mut call = self.scripts.update.key(self.session_key(handle));
        call.arg(secs(now))
            .arg(update.seen)
            .arg(
                update
                    .idle_deadline
                    .map(|i| i.to_string())
                    .unwrap_or_default(),
            )
            .arg(match update.owner_change() {
                None => String::new(),
                Some(None) => "-".into(),
                Some(Some(o)) => format!("={o}"),
            })
            .arg(match &update.expiry {
                None => String::new(),
                Some(None) => "-".into(),
                Some(Some(e)) => format!("={}", serde_json::to_string(e).map_err(Error::store)?),
            })
            .arg(if update.changes.is_cleared() {
                "1"
            } else {
                "0"
            })
            .arg(
                update
                    .rename_to()
                    .map(Handle::to_string)
                    .unwrap_or_default(),
            )
            .arg(OWNER_SLACK_SECS)
            .arg(TOMBSTONE_MS);
        for (key, value) in update.changes.ops() {
            call.arg(key).arg(value.map_or("", RawValue::get));
        }
        let reply: Vec<Vec<u8>> = call.invoke_async(&mut conn).await.map_err(Error::store)?;
        let status = reply.first().map(|s| s.as_slice());
        match status {
            Some(b"1") => {
                let (owner, mark) = (text(reply.get(1)), text(reply.get(2)));
                if !owner.is_empty() && !mark.is_empty() {
                    self.index(owner, handle, mark).await?;
                }
                Ok(Updated::Applied)
            }
            Some(b"2") => match update.rename_to() {
                Some(to) => self.finish_rotation(handle, to, now, &reply).await,
                None => Err(Error::store_msg(
                    "Redis update script moved a record without a target",
                )),
            },
            Some(b"-1") => {
                tracing::warn!(handle = %handle.short(), "keyfob: undecodable Redis session; the update is dropped");
                Ok(Updated::Gone)
            }
            _ => Ok(Updated::Gone),
        }
    }

    /// Steps 2 and 3 of a rotation (see the module docs).
    async fn finish_rotation(
        &self,
        from: &Handle,
        to: &Handle,
        now: OffsetDateTime,
        reply: &[Vec<u8>],
    ) -> Result<Updated> {
        let owner = text(reply.get(1));
        let expire_at = text(reply.get(2)).parse::<i64>().ok();
        let mark = text(reply.get(3));
        let mut fields: Vec<(String, Vec<u8>)> = reply
            .get(4..)
            .unwrap_or_default()
            .chunks_exact(2)
            .filter(|kv| kv[0] != b"x")
            .map(|kv| (String::from_utf8_lossy(&kv[0]).into_owned(), kv[1].clone()))
            .collect();
        if !owner.is_empty() {
            // The watermark the script computed, or the one it had already pushed.
            let mark = if mark.is_empty() {
                watermark(expire_at)
            } else {
                mark.to_owned()
            };
            fields.push(("x".into(), mark.clone().into_bytes()));
            self.index(owner, to, &mark).await?;
        }
        self.file_for_purge(to, expire_at).await?;
        if self
            .create_fields(to, secs(now), expire_at, &fields)
            .await?
            == Created::Collision
        {
            return Err(Error::store_msg(
                "rotation target handle is already taken in Redis",
            ));
        }
        let mut conn = self.conn.clone();
        let intact: i64 = self
            .scripts
            .guard
            .key(self.session_key(from))
            .arg(to.to_string())
            .invoke_async(&mut conn)
            .await
            .map_err(Error::store)?;
        if intact == 1 {
            return Ok(Updated::Applied);
        }
        // Revoked while moving: the revocation wins.
        self.delete_inner(to).await?;
        Ok(Updated::Gone)
    }

    async fn delete_inner(&self, handle: &Handle) -> Result<bool> {
        let mut conn = self.conn.clone();
        let reply: Vec<Vec<u8>> = self
            .scripts
            .delete
            .key(self.session_key(handle))
            .invoke_async(&mut conn)
            .await
            .map_err(Error::store)?;
        if reply.first().map(Vec::as_slice) != Some(b"1") {
            return Ok(false);
        }
        self.unindex(text(reply.get(1)), &[handle.to_string()])
            .await?;
        Ok(true)
    }

    /// Deletes a session or a tombstone and, for a tombstone, the session it
    /// points to (a rotation in flight), unless that is `keep`.
    async fn revoke(&self, handle: &str, keep: Option<&str>) -> Result<bool> {
        let mut conn = self.conn.clone();
        let mut key = format!("{}:s:{handle}", self.prefix);
        // A tombstone may point to a session rotated again: follow a few hops.
        for _ in 0..4 {
            let reply: Vec<Vec<u8>> = self
                .scripts
                .revoke
                .key(&key)
                .invoke_async(&mut conn)
                .await
                .map_err(Error::store)?;
            match reply.first().map(Vec::as_slice) {
                Some(b"1") => return Ok(true),
                Some(b"2") => {
                    let target = text(reply.get(1));
                    if Some(target) == keep || target.is_empty() {
                        return Ok(false);
                    }
                    key = format!("{}:s:{target}", self.prefix);
                }
                _ => return Ok(false),
            }
        }
        Ok(false)
    }

    /// The handles filed under `owner` with a watermark at or after `from`.
    async fn members(&self, owner: &str, from: &str) -> Result<Vec<String>> {
        let mut conn = self.conn.clone();
        redis::cmd("ZRANGEBYSCORE")
            .arg(self.owner_key(owner))
            .arg(from)
            .arg("+inf")
            .query_async(&mut conn)
            .await
            .map_err(Error::store)
    }

    async fn list_inner(
        &self,
        owner: &str,
        now: OffsetDateTime,
        limit: usize,
    ) -> Result<Vec<OwnedSession>> {
        // Watermarks are never earlier than their session's deadline, so a
        // member whose watermark has passed is a gone session: pruned at once.
        let mut conn = self.conn.clone();
        redis::cmd("ZREMRANGEBYSCORE")
            .arg(self.owner_key(owner))
            .arg("-inf")
            .arg(format!("({}", secs(now)))
            .query_async::<i64>(&mut conn)
            .await
            .map_err(Error::store)?;
        let mut out = Vec::new();
        let mut stale = Vec::new();
        for member in self.members(owner, &secs(now).to_string()).await? {
            if out.len() >= limit {
                break;
            }
            let Ok(handle) = member.parse::<Handle>() else {
                stale.push(member);
                continue;
            };
            match self.fetch(&handle).await? {
                // Indexed before its owner was written (a login in flight):
                // not listed, and not pruned either.
                Decoded::Record(r) if r.owner() != Some(owner) => {}
                Decoded::Record(r) if !r.is_expired(now) => out.push(OwnedSession {
                    handle,
                    record: Arc::new(r),
                }),
                // Expired records never come back: pruned.
                Decoded::Record(_) => stale.push(member),
                // Not pruned: a missing member may be a session being created
                // or rotated in right now (indexed first, written next), and a
                // tombstone must stay findable by `delete_by_owner`. Both
                // leave with their watermark.
                Decoded::Moved | Decoded::Missing => {}
            }
        }
        self.unindex(owner, &stale).await?;
        Ok(out)
    }

    async fn delete_by_owner_inner(&self, owner: &str, keep: Option<&Handle>) -> Result<u64> {
        let keep = keep.map(Handle::to_string);
        let mut deleted = 0;
        let mut done = Vec::new();
        for member in self.members(owner, "-inf").await? {
            if Some(&member) == keep.as_ref() {
                continue;
            }
            if self.revoke(&member, keep.as_deref()).await? {
                deleted += 1;
            }
            done.push(member);
        }
        self.unindex(owner, &done).await?;
        Ok(deleted)
    }

    async fn delete_expired_inner(&self, now: OffsetDateTime, batch: usize) -> Result<u64> {
        let mut deleted = 0;
        // Start at a different shard each call, so a small batch size still
        // reaches every shard over successive calls.
        let first = self.purge_cursor.fetch_add(1, Ordering::Relaxed);
        for i in 0..u64::from(PURGE_SHARDS) {
            if deleted >= batch {
                break;
            }
            let shard = ((first + i) % u64::from(PURGE_SHARDS)) as u8;
            deleted += self.purge_index_shard(shard, now, batch - deleted).await?;
        }
        Ok(deleted as u64)
    }

    async fn purge_index_shard(
        &self,
        shard: u8,
        now: OffsetDateTime,
        batch: usize,
    ) -> Result<usize> {
        let now_secs = secs(now);
        let key = self.purge_key(shard);
        let mut conn = self.conn.clone();
        let mut deleted = 0usize;
        for _ in 0..PURGE_PASSES {
            if deleted >= batch {
                break;
            }
            let due: Vec<String> = redis::cmd("ZRANGEBYSCORE")
                .arg(&key)
                .arg("-inf")
                .arg(now_secs)
                .arg("LIMIT")
                .arg(0)
                .arg(batch - deleted)
                .query_async(&mut conn)
                .await
                .map_err(Error::store)?;
            if due.is_empty() {
                break;
            }
            for member in due {
                let reply: Vec<Vec<u8>> = self
                    .scripts
                    .purge
                    .key(format!("{}:s:{member}", self.prefix))
                    .arg(now_secs)
                    .invoke_async(&mut conn)
                    .await
                    .map_err(Error::store)?;
                let refile = match reply.first().map(Vec::as_slice) {
                    Some(b"1") => {
                        deleted += 1;
                        self.unindex(text(reply.get(1)), std::slice::from_ref(&member))
                            .await?;
                        None
                    }
                    // Extended since it was filed: file it under its deadline now.
                    Some(b"2") => text(reply.get(1)).parse::<i64>().ok(),
                    _ => None,
                };
                let mut cmd = match refile {
                    Some(at) => {
                        let mut c = redis::cmd("ZADD");
                        c.arg(&key).arg(at);
                        c
                    }
                    None => {
                        let mut c = redis::cmd("ZREM");
                        c.arg(&key);
                        c
                    }
                };
                cmd.arg(&member)
                    .query_async::<i64>(&mut conn)
                    .await
                    .map_err(Error::store)?;
            }
        }
        Ok(deleted)
    }
}

fn bad_url(e: redis::RedisError) -> Error {
    Error::with_source(crate::ErrorKind::Config, e)
}

fn purge_shard(handle: &Handle) -> u8 {
    (handle.as_bytes()[0] >> 4) % PURGE_SHARDS
}

/// The owner-set expiry for a session expiring at `expire_at`.
fn watermark(expire_at: Option<i64>) -> String {
    match expire_at {
        Some(e) => (e + OWNER_SLACK_SECS).to_string(),
        None => "inf".into(),
    }
}

fn text(v: Option<&Vec<u8>>) -> &str {
    v.and_then(|v| std::str::from_utf8(v).ok()).unwrap_or("")
}

/// The hash fields of a new record.
fn encode(record: &Record) -> Result<Vec<(String, Vec<u8>)>> {
    let mut f: Vec<(String, Vec<u8>)> = vec![
        ("v".into(), record.version.to_string().into_bytes()),
        ("c".into(), record.created.to_string().into_bytes()),
        ("s".into(), record.last_seen.to_string().into_bytes()),
    ];
    if let Some(i) = record.idle_deadline {
        f.push(("i".into(), i.to_string().into_bytes()));
    }
    if let Some(a) = record.absolute_deadline {
        f.push(("a".into(), a.to_string().into_bytes()));
    }
    if let Some(o) = &record.owner {
        f.push(("o".into(), o.as_bytes().to_vec()));
    }
    if let Some(e) = &record.expiry {
        f.push(("e".into(), serde_json::to_vec(e).map_err(Error::store)?));
    }
    for key in record.data.keys() {
        if let Some(v) = record.data.get(key) {
            f.push((format!("d:{key}"), v.get().as_bytes().to_vec()));
        }
    }
    Ok(f)
}

enum Decoded {
    Missing,
    Moved,
    Record(Record),
}

/// Reads a session hash; `Err` says why it is corrupt.
fn decode(fields: &[(Vec<u8>, Vec<u8>)]) -> std::result::Result<Decoded, &'static str> {
    if fields.is_empty() {
        return Ok(Decoded::Missing);
    }
    let mut record = Record::new(OffsetDateTime::UNIX_EPOCH, None, None);
    let (mut version, mut created, mut seen) = (None, None, None);
    let int = |v: &[u8]| -> std::result::Result<i64, &'static str> {
        std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or("a metadata field is not an integer")
    };
    let mut data = Data::default();
    for (k, v) in fields {
        match k.as_slice() {
            b"moved" => return Ok(Decoded::Moved),
            b"v" => version = Some(int(v)?),
            b"c" => created = Some(int(v)?),
            b"s" => seen = Some(int(v)?),
            b"i" => record.idle_deadline = Some(int(v)?),
            b"a" => record.absolute_deadline = Some(int(v)?),
            b"o" => {
                let owner = std::str::from_utf8(v).map_err(|_| "the owner is not UTF-8")?;
                record.owner = Some(owner.into());
            }
            b"e" => {
                let e: Expiry =
                    serde_json::from_slice(v).map_err(|_| "the expiry is not valid JSON")?;
                record.expiry = Some(e);
            }
            b"x" => {}
            other => {
                let Some(key) = other.strip_prefix(b"d:") else {
                    return Err("an unknown field");
                };
                let key = std::str::from_utf8(key).map_err(|_| "a data key is not UTF-8")?;
                let text = String::from_utf8(v.clone()).map_err(|_| "a value is not UTF-8")?;
                let value = RawValue::from_string(text).map_err(|_| "a value is not JSON")?;
                data.set(key, value);
            }
        }
    }
    let (Some(version), Some(created), Some(seen)) = (version, created, seen) else {
        return Err("the version, created or last-seen field is missing");
    };
    record.version = u64::try_from(version).map_err(|_| "the version is negative")?;
    record.created = created;
    record.last_seen = seen;
    record.data = data;
    Ok(Decoded::Record(record))
}

impl SessionStore for RedisStore {
    fn load<'a>(
        &'a self,
        handle: &'a Handle,
        now: OffsetDateTime,
    ) -> BoxFuture<'a, Result<Option<Arc<Record>>>> {
        Box::pin(async move { Ok(self.load_inner(handle, now).await?.map(Arc::new)) })
    }

    fn holds_expired<'a>(
        &'a self,
        handle: &'a Handle,
        now: OffsetDateTime,
    ) -> BoxFuture<'a, Result<bool>> {
        // Redis drops a record at its deadline (`EXPIREAT`); one the
        // caller's clock already counts as expired may still be there.
        Box::pin(async move {
            Ok(matches!(self.fetch(handle).await?, Decoded::Record(r) if r.is_expired(now)))
        })
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

    fn delete_expired(&self, now: OffsetDateTime, batch: usize) -> BoxFuture<'_, Result<u64>> {
        Box::pin(self.delete_expired_inner(now, batch.max(1)))
    }

    fn list_by_owner<'a>(
        &'a self,
        owner: &'a str,
        now: OffsetDateTime,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<OwnedSession>>> {
        Box::pin(self.list_inner(owner, now, limit))
    }

    fn delete_by_owner<'a>(
        &'a self,
        owner: &'a str,
        keep: Option<&'a Handle>,
    ) -> BoxFuture<'a, Result<u64>> {
        Box::pin(self.delete_by_owner_inner(owner, keep))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_survives_encode_and_decode() {
        let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let mut record = Record::new(now, Some(now + time::Duration::hours(1)), None);
        record.data.set(
            "big",
            RawValue::from_string("12345678901234567890".into()).unwrap(),
        );
        record.owner = Some("u1".into());
        let fields: Vec<(Vec<u8>, Vec<u8>)> = encode(&record)
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k.into_bytes(), v))
            .collect();
        let Ok(Decoded::Record(back)) = decode(&fields) else {
            panic!("decodes")
        };
        assert_eq!(back, record);
    }

    #[test]
    fn corrupt_hashes_are_refused_not_guessed() {
        let cases: &[&[(&str, &str)]] = &[
            &[("v", "1"), ("c", "x"), ("s", "1")],
            &[("v", "1"), ("c", "1")],
            &[("v", "1"), ("c", "1"), ("s", "1"), ("d:a", "{not json")],
            &[("v", "1"), ("c", "1"), ("s", "1"), ("zz", "1")],
            &[("v", "-1"), ("c", "1"), ("s", "1")],
        ];
        for case in cases {
            let fields: Vec<(Vec<u8>, Vec<u8>)> = case
                .iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
                .collect();
            assert!(decode(&fields).is_err(), "{case:?}");
        }
    }
}
