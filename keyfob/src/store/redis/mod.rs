//! The Redis store: one hash per session, change-sets applied by a Lua
//!
//! (The rules, caveats and examples are on the public type below,
//! where docs.rs shows them: this module is private.)

use std::{
    fmt,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use redis::{aio::ConnectionManager, cluster_async::ClusterConnection};
use serde_json::value::RawValue;
use time::OffsetDateTime;

use super::{
    near::{self, NearCache},
    BoxFuture, Created, OwnedSession, SessionStore, Updated,
};
use crate::{
    error::{Error, Result},
    expiry::secs,
    expiry::Expiry,
    id::Handle,
    record::{Data, Record, Update},
};

mod codec;
mod conn;
pub use self::conn::RedisConnection;
mod owner;
mod purge;
mod scripts;
mod tracking;

use self::{
    codec::{decode, encode, text, Decoded},
    conn::Conn,
    owner::watermark,
    purge::purge_shard,
    scripts::Scripts,
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

/// Sessions in Redis or a Redis Cluster, on the [`redis`] crate.
///
/// Build it from the app's own connection ([`RedisStore::new`],
/// [`RedisStore::cluster`]) or from a URL ([`RedisStore::connect`]).
///
/// ```no_run
/// use keyfob::RedisStore;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let client = redis::Client::open("redis://127.0.0.1:6379")?;
/// let conn = redis::aio::ConnectionManager::new(client).await?;
/// let store = RedisStore::new(conn);
/// # let _ = store;
/// # Ok(()) }
/// ```
///
/// script, on a single server or a Redis Cluster.
///
/// Rules:
/// - a session is one hash, `<prefix>:s:<handle>`, with one field per
///   metadata item (`v` version, `c` created, `s` last seen, `i`/`a` idle and
///   absolute deadlines, `o` owner, `e` per-session expiry) and one field
///   `d:<key>` per data key holding the value's JSON text. The change-set maps
///   one to one onto one `HDEL` and one `HSET` (of the fields that change),
///   so the script never parses JSON (Lua's `cjson` would rewrite values: big
///   integers, escapes, key order) and a write costs the size of what
///   changed, not of the whole session;
/// - every update runs as one script on that one key: it checks the record is
///   live *at the caller's clock*, applies the change-set to the hash as it is
///   now, bumps the version and moves `EXPIREAT` with the record's deadline, so
///   concurrent writers of different keys all persist, an update of a
///   deleted or expired record writes nothing, and Redis drops expired
///   sessions by itself;
/// - every script touches exactly one key, so every operation works
///   unchanged on Redis Cluster. A session is one key, so it needs no hash
///   tag; the only move between keys is a rotation ([`Update::rename_to`]),
///   and no tag can help there: the new key is named by the SHA-256 of a
///   fresh random ID, so it lands in an unpredictable slot (a tag shared with
///   the old key would have to be found again from the new cookie alone).
///   A rotation is therefore three steps (see below);
/// - the owner index is a sorted set per owner, `<prefix>:o:<owner>`: each
///   handle is scored with a *watermark* never earlier than its session's
///   deadline (pushed forward as the session is refreshed, an hour at a
///   time), and the key expires with its longest-lived member. A handle is
///   filed *before* its session becomes visible under the owner, so
///   [`delete_by_owner`](SessionStore::delete_by_owner) never misses one;
///   [`list_by_owner`](SessionStore::list_by_owner) prunes members whose
///   watermark has passed or whose record expired, and deletes unfile theirs.
///   (A plain set could not tell "already gone" from "being written right
///   now"; the score can);
/// - **near cache**, on by default on a store built by
///   [`connect`](Self::connect), single server or Cluster (50 000 sessions or 64 MiB, see
///   [`with_near_cache`](Self::with_near_cache)): a load of a cached
///   session makes no round trip, and a write is one script that also
///   tells whether the request's copy was current, so the copy plus the
///   change is cached without reading it back. It is kept coherent by Redis
///   itself (RESP3 `CLIENT TRACKING` on a connection of its own to the
///   server, or to each Cluster master, named
///   `keyfob-near-cache:<prefix>:s:`): any change to a cached session made
///   elsewhere (another process, an admin, an expiry, an eviction, a flush,
///   a slot migration) drops the copy, within the invalidation latency (see
///   `BENCHMARKS.md`); this process's own writes, deletes and revocations
///   are seen on its very next request. The cache answers only while those
///   connections are up and each answers a ping every second within 3 s
///   and, on a Cluster, while the slot map it was built on holds (read
///   every second, and stopped at once by a `MOVED` reply): otherwise it is
///   empty and every load asks Redis until tracking is back. There is none
///   on a store built from a connection ([`new`](Self::new),
///   [`cluster`](Self::cluster)): keyfob cannot open connections of its own
///   from one; [`without_near_cache`](Self::without_near_cache) turns it off;
/// - a hash that cannot be decoded reads as "no session" with a
///   `tracing::warn!`, and a Redis failure is an [`Error`] of kind
///   [`Store`](crate::ErrorKind::Store), never a panic.
///
/// Rotation on Cluster. The old and new keys live in different slots and no
/// script may touch both, so the move is:
/// 1. one script on the old key applies the update, reads the result and
///    replaces the hash with a *tombstone* (`moved` = new handle, 60 s TTL);
///    from here on the old handle loads nothing and updates of it are gone;
/// 2. the new hash is created from that result, and indexed under its owner;
/// 3. a guard checks the tombstone is still there. `delete_by_owner`
///    deletes a tombstone *and the session it points to*, so a "revoke all"
///    that raced the rotation either removes the new hash itself or removes
///    the tombstone, and then step 3 deletes the new hash and reports
///    [`Updated::Gone`]. A revocation never misses a rotating session.
///
/// The rotation takes effect at step 1, atomically for every writer of the
/// old handle; until step 2 the session exists under neither handle, which
/// no client can observe (the new ID has not been sent yet). A crash between
/// steps 1 and 2 loses the session: it fails closed, the user logs in again.
/// The same three steps run on a single server, so one code path is tested.
///
/// Caveats:
/// - [`delete_expired`](SessionStore::delete_expired) is mostly index
///   hygiene: Redis drops expired hashes itself (`EXPIREAT`). The purge
///   walks an index of creation-time deadlines (16 sorted sets
///   `<prefix>:x:<hex digit>`, by handle, so they spread over a Cluster),
///   deleting records that are expired at the caller's clock and re-filing
///   those that were extended. Without a cleanup task the index still stays
///   bounded: every 64th create drops the entries of one set that are
///   overdue by more than a day;
/// - the key prefix should not contain `{`…`}`: a hash tag in the prefix
///   would put every keyfob key in one Cluster slot (still correct, but one
///   node would serve all sessions);
/// - deadlines are whole seconds and `EXPIREAT` uses the Redis server's
///   clock: keep the app servers' and Redis's clocks in sync (NTP);
/// - a key at a session's name that is not a hash (another app writing into
///   this prefix) is a store error, not "no session": it is loud on purpose;
/// - the near cache needs Redis 6 or later and an account allowed `CLIENT`
///   (`TRACKING`, `SETNAME`); without them it stays off, with one warning.
///   On a Cluster it also needs `CLUSTER SLOTS` and every master reachable
///   over TCP at the address the Cluster announces for it (else it does
///   not serve, and warns once);
///   Redis remembers, per tracking connection, the session keys it read (its
///   `tracking-table-max-keys` bounds that; past it, Redis drops entries and
///   the cache drops the matching copies);
/// - Redis drops a session's key on the whole minute after its record's
///   deadline (loads go by the deadline itself), so a session written many
///   times a minute moves its key's expiry once a minute, not on every
///   write. Every write keeps it so: a tool that changes a session's TTL by
///   hand changes when Redis drops it, not when it expires. (Keys written by
///   an earlier keyfob expire at their exact deadline: one written again
///   within the same minute keeps that, so a session left idle right up to
///   its deadline may end up to 59 s early, once.)
/// - `rediss://` needs one of the `redis` crate's TLS features enabled in
///   the app; the `redis` crate's timeouts apply (500 ms per response and
///   1 s to connect by default on a single server).
///
/// ```no_run
/// use keyfob::{RedisStore, SessionLayer};
///
/// # async fn run() -> keyfob::Result<()> {
/// // A single server, or `redis+cluster://host:port` for a Cluster seed node.
/// let store = RedisStore::connect("redis://127.0.0.1:6379")
///     .await?
///     .with_key_prefix("myapp:sessions");
/// let layer = SessionLayer::new(store);
/// # let _ = layer;
/// // A URL of another scheme is refused when the store is built.
/// assert!(RedisStore::connect("http://127.0.0.1").await.is_err());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    conn: Conn,
    prefix: Arc<str>,
    scripts: Arc<Scripts>,
    creates: Arc<AtomicU64>,
    purge_cursor: Arc<AtomicU64>,
    /// The near cache and its tracking task; `None` when off.
    near: Option<Arc<Near>>,
}

/// The near cache of one store, the task that keeps it coherent, and what
/// it needs to build a new one (a changed prefix tracks other keys).
struct Near {
    cache: Arc<NearCache>,
    live: tracking::Live,
    task: near::Keeper,
    /// Where the tracking connections go.
    target: tracking::Target,
    bounds: (u64, u64),
}

impl Near {
    fn new(target: tracking::Target, bounds: (u64, u64)) -> Arc<Near> {
        Arc::new(Near {
            cache: Arc::new(NearCache::new(bounds.0, bounds.1)),
            live: Arc::new(Mutex::new(None)),
            task: near::Keeper::default(),
            target,
            bounds,
        })
    }

    fn with_defaults(target: tracking::Target) -> Arc<Near> {
        Near::new(target, (near::DEFAULT_ENTRIES, near::DEFAULT_BYTES))
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.conn {
            Conn::Single(_) | Conn::Tracked(_) => "single",
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
            near: None,
        }
    }

    /// A store on a single Redis server, through the app's connection manager
    /// (it reconnects by itself after a failure).
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = redis::Client::open("redis://127.0.0.1:6379")?;
    /// let conn = redis::aio::ConnectionManager::new(client).await?;
    /// let store = keyfob::RedisStore::new(conn);
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
    /// let store = keyfob::RedisStore::cluster(conn);
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
    /// let store = keyfob::RedisStore::connect("redis+cluster://127.0.0.1:7000").await?;
    /// # let _ = store;
    /// # Ok(()) }
    /// ```
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_url(url).await
    }

    /// The store's connection, for an app's own commands on the same server
    /// (the demo keeps its accounts there): the one the store uses, so no
    /// second connection is opened.
    ///
    /// ```no_run
    /// # async fn f() -> keyfob::Result<()> {
    /// let store = keyfob::RedisStore::connect("redis://127.0.0.1").await?;
    /// let conn: keyfob::store::RedisConnection = store.connection();
    /// # let _ = conn; Ok(()) }
    /// ```
    pub fn connection(&self) -> conn::RedisConnection {
        conn::RedisConnection(self.conn.clone())
    }

    async fn connect_url(url: &str) -> Result<Self> {
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
            let manager = ConnectionManager::new_with_config(client.clone(), config)
                .await
                .map_err(Error::store)?;
            let mut store = Self::new(manager);
            store.near = redis::Client::open(resp3(client.get_connection_info().clone()))
                .ok()
                .map(|c| Near::with_defaults(tracking::Target::Single(c)));
            store
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
        use redis::IntoConnectionInfo;
        let infos = seeds
            .iter()
            .map(|s| s.as_str().into_connection_info().map(resp3))
            .collect::<redis::RedisResult<Vec<_>>>()
            .map_err(bad_url)?;
        let client = redis::cluster::ClusterClient::new(seeds)
            .map_err(|e| Error::with_source(crate::ErrorKind::Config, e))?;
        let conn = client.get_async_connection().await.map_err(Error::store)?;
        let mut store = Self::cluster(conn.clone());
        store.near = Some(Near::with_defaults(tracking::Target::Cluster {
            seeds: infos,
            conn,
        }));
        Ok(store)
    }

    /// Sets the prefix of every key this store writes (default `keyfob`):
    /// `<prefix>:s:<handle>` sessions, `<prefix>:o:<owner>` owner sets,
    /// `<prefix>:x:<0-f>` the purge index. Give each app sharing a Redis its own.
    ///
    /// ```no_run
    /// # async fn run() -> keyfob::Result<()> {
    /// let store = keyfob::RedisStore::connect("redis://127.0.0.1:6379")
    ///     .await?
    ///     .with_key_prefix("shop:sessions");
    /// # let _ = store;
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn with_key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into().into();
        // Other keys to track: a cache of its own.
        if let Some(near) = self.near.take() {
            self.near = Some(Near::new(near.target.clone(), near.bounds));
        }
        self
    }

    /// Bounds the near cache (default 50 000 sessions and 64 MiB, whichever
    /// is reached first). The near cache is there on a store built by
    /// [`connect`](Self::connect); on a store built from a connection
    /// ([`new`](Self::new), [`cluster`](Self::cluster)) there is none, and
    /// this changes nothing.
    ///
    /// ```no_run
    /// # async fn f() -> keyfob::Result<()> {
    /// let store = keyfob::RedisStore::connect("redis://127.0.0.1")
    ///     .await?
    ///     .with_near_cache(200_000, 256 << 20);
    /// # let _ = store; Ok(()) }
    /// ```
    #[must_use]
    pub fn with_near_cache(mut self, max_sessions: u64, max_bytes: u64) -> Self {
        if let Some(near) = self.near.take() {
            self.near = Some(Near::new(near.target.clone(), (max_sessions, max_bytes)));
        }
        self
    }

    /// Turns the near cache off: every load asks Redis, and writes read
    /// the session first no more than they do with it on.
    ///
    /// ```no_run
    /// # async fn f() -> keyfob::Result<()> {
    /// let store = keyfob::RedisStore::connect("redis://127.0.0.1")
    ///     .await?
    ///     .without_near_cache();
    /// assert!(!store.near_cache_serving());
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn without_near_cache(mut self) -> Self {
        self.near = None;
        self
    }

    /// Whether the near cache answers loads right now: it is on, and its
    /// tracking connections are up. It starts on the store's first use.
    ///
    /// ```no_run
    /// # async fn f(store: keyfob::RedisStore) {
    /// if !store.near_cache_serving() {
    ///     eprintln!("every session load is a Redis round trip right now");
    /// }
    /// # }
    /// ```
    pub fn near_cache_serving(&self) -> bool {
        self.near.as_ref().is_some_and(|n| n.cache.is_serving())
    }

    /// The near cache, its tracking task started or restarted (see
    /// `near::Keeper`; on a server that cannot track, the task stays, idle,
    /// so it does not retry).
    fn near(&self) -> Option<&NearCache> {
        let near = self.near.as_ref()?;
        near.task.ensure(|| {
            tracking::track(
                near.target.clone(),
                format!("{}:s:", self.prefix),
                near.cache.clone(),
                near.live.clone(),
            )
        });
        Some(&near.cache)
    }

    /// Where commands on the session key `key` go: its server's tracking
    /// connection while tracking is up (`true`: what it reads, Redis
    /// tracks for this cache, and what it writes, Redis does not echo
    /// back), else the store's (`false`).
    fn session_conn(&self, key: &str) -> (Conn, bool) {
        let tracked = self
            .near
            .as_ref()
            .and_then(|n| n.live.lock().ok()?.as_ref()?.conn_for(key));
        match tracked {
            Some(conn) => (Conn::Tracked(conn), true),
            None => (self.conn.clone(), false),
        }
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
        self.fetch_on(self.conn.clone(), handle, &self.session_key(handle))
            .await
    }

    async fn fetch_on(&self, mut conn: Conn, handle: &Handle, key: &str) -> Result<Decoded> {
        let fields: Vec<(Vec<u8>, Vec<u8>)> = redis::cmd("HGETALL")
            .arg(key)
            .query_async(&mut conn)
            .await
            .map_err(Error::store)?;
        Ok(decode(&fields).unwrap_or_else(|why| {
            tracing::warn!(handle = %handle.short(), why, "keyfob: undecodable Redis session; treating it as no session");
            Decoded::Missing
        }))
    }

    /// The live record, and whether it was read on the tracking connection
    /// (only such a read may be cached: Redis tells that connection of
    /// every later change to the key).
    async fn load_inner(
        &self,
        handle: &Handle,
        now: OffsetDateTime,
    ) -> Result<(Option<Record>, bool)> {
        let key = self.session_key(handle);
        let (conn, tracked) = self.session_conn(&key);
        let found = match self.fetch_on(conn, handle, &key).await? {
            Decoded::Record(r) => Some(r).filter(|r| !r.is_expired(now)),
            Decoded::Missing | Decoded::Moved => None,
        };
        Ok((found, tracked))
    }

    /// Whether it was stored, and on the tracking connection (see
    /// [`load_inner`](Self::load_inner)).
    async fn create_inner(&self, handle: &Handle, record: &Record) -> Result<(Created, bool)> {
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
    ) -> Result<(Created, bool)> {
        let key = self.session_key(handle);
        let (mut conn, tracked) = self.session_conn(&key);
        let mut call = self.scripts.create.key(key);
        call.arg(now)
            .arg(expire_at.map(|e| e.to_string()).unwrap_or_default())
            .arg(track_flag(tracked));
        for (k, v) in fields {
            call.arg(k).arg(v);
        }
        let stored: i64 = call.invoke_async(&mut conn).await.map_err(Error::store)?;
        let created = if stored == 1 {
            Created::Stored
        } else {
            Created::Collision
        };
        Ok((created, tracked))
    }

    /// The outcome, and for an update in place on the tracking connection
    /// the version it was applied to (the caller's copy plus the change is
    /// the new record when it had that version).
    async fn update_inner(
        &self,
        handle: &Handle,
        update: &Update,
        now: OffsetDateTime,
    ) -> Result<(Updated, Option<u64>)> {
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
        let key = self.session_key(handle);
        let (mut conn, tracked) = self.session_conn(&key);
        let mut call = self.scripts.update.key(key);
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
            .arg(TOMBSTONE_MS)
            .arg(track_flag(tracked));
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
                let was = text(reply.get(3)).parse().ok().filter(|_| tracked);
                Ok((Updated::Applied, was))
            }
            Some(b"2") => match update.rename_to() {
                Some(to) => Ok((self.finish_rotation(handle, to, now, &reply).await?, None)),
                None => Err(Error::store_msg(
                    "Redis update script moved a record without a target",
                )),
            },
            Some(b"-1") => {
                tracing::warn!(handle = %handle.short(), "keyfob: undecodable Redis session; the update is dropped");
                Ok((Updated::Gone, None))
            }
            _ => Ok((Updated::Gone, None)),
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
            .0
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
        let key = self.session_key(handle);
        let (mut conn, _) = self.session_conn(&key);
        let reply: Vec<Vec<u8>> = self
            .scripts
            .delete
            .key(key)
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
}

/// Asks a script to read its key once more after writing it, on the
/// tracking connection: a write ends Redis's tracking of the key, and the
/// read files it again for this connection.
fn track_flag(tracked: bool) -> &'static str {
    if tracked {
        "1"
    } else {
        ""
    }
}

/// The same server and settings, spoken in RESP3 (push messages), for the
/// near cache's tracking connections.
fn resp3(info: redis::ConnectionInfo) -> redis::ConnectionInfo {
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(redis::ProtocolVersion::RESP3);
    info.set_redis_settings(settings)
}

fn bad_url(e: redis::RedisError) -> Error {
    Error::with_source(crate::ErrorKind::Config, e)
}

impl SessionStore for RedisStore {
    fn kind(&self) -> &'static str {
        "redis"
    }

    /// With the near cache, a write is one script that checks the version
    /// it applies to against the request's copy: the copy plus the change
    /// is then the new record, cached without reading it back.
    fn update_uses_base(&self) -> bool {
        self.near.is_some()
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
            let (found, tracked) = self.load_inner(handle, now).await?;
            let found = found.map(Arc::new);
            if let (Some(cache), Some(ticket), Some(record), true) = (near, ticket, &found, tracked)
            {
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
        Box::pin(async move {
            let near = self.near();
            let ticket = near.map(|c| c.ticket(handle));
            let created = self.create_inner(handle, record).await;
            if let Some(cache) = near {
                match created {
                    Ok((Created::Stored, true)) => {
                        cache.written(handle, Arc::new(record.clone()), ticket)
                    }
                    _ => cache.forget(handle),
                }
            }
            created.map(|(c, _)| c)
        })
    }

    fn update<'a>(
        &'a self,
        handle: &'a Handle,
        update: &'a Update,
        now: OffsetDateTime,
    ) -> BoxFuture<'a, Result<Updated>> {
        Box::pin(async move {
            let near = self.near();
            let ticket = near.map(|c| c.ticket(handle));
            let done = self.update_inner(handle, update, now).await;
            let Some(cache) = near else {
                return done.map(|(updated, _)| updated);
            };
            match (&done, update.base()) {
                // Applied to the version this request had: its copy plus
                // the change is what Redis now holds.
                (Ok((Updated::Applied, Some(was))), Some(base)) if *was == base.version => {
                    let mut record = Record::clone(base);
                    record.apply(update);
                    cache.written_over(handle, base.version, Arc::new(record), ticket);
                }
                // Merged into a later version, moved, gone, or unknown: no
                // copy of it may stay.
                _ => {
                    cache.forget(handle);
                    if let Some(to) = update.rename_to() {
                        cache.forget(to);
                    }
                }
            }
            done.map(|(updated, _)| updated)
        })
    }

    fn delete<'a>(&'a self, handle: &'a Handle) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let deleted = self.delete_inner(handle).await;
            if let Some(cache) = self.near() {
                cache.forget(handle);
            }
            deleted
        })
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
