//! The near cache's coherence on Redis and Redis Cluster: server-assisted
//! client-side caching (RESP3 `CLIENT TRACKING`), on the `redis` crate's
//! push messages.
//!
//! Each store has a connection of its own to each server it keeps
//! sessions on (one on a single server, one per master on a Cluster;
//! RESP3, so invalidations arrive on it as push messages) with
//! `CLIENT TRACKING ON NOLOOP`: Redis remembers every key *read* on it and
//! tells it when anyone else changes that key (another process, an admin's
//! `DEL`, an expiry, an eviction, a `FLUSHALL`, a slot migration, which
//! deletes the key on the node it leaves), but not when the change was
//! made on this connection. While they are up, the store reads and writes
//! session keys through them (a key through its slot's master) and caches
//! only what it read or wrote there: what it read, Redis will say when it
//! changes; what it wrote, the store caches as written (the write script
//! reads the key once more at its end, since a write ends Redis's tracking
//! of a key).
//!
//! Why not the broadcast mode (`BCAST PREFIX`, no per-key memory in
//! Redis)? Its `NOLOOP` leaves out only changes made by the connection
//! itself, and a change made inside a Lua script counts as the script's:
//! every write of this store would come back and empty its own cache. The
//! default mode checks `NOLOOP` against the client that ran the script.
//! The cost is Redis's tracking table: one entry per session key read by a
//! tracking connection (bounded by Redis's `tracking-table-max-keys`; past
//! it, Redis invalidates entries to make room, which only costs misses).
//!
//! Why not the `redis` crate's own client-side cache (`cache-aio`)? It is
//! marked experimental, caches the replies of read commands by key, and
//! cannot take the result of a write script; it has no "stop serving when
//! the channel is lost" rule. Its connections and push handling are what
//! this module uses.
//!
//! A change by someone else racing this store's own write is told by the
//! write: its script returns the version it applied to, and the store
//! caches its result only when that was the version the request had.
//!
//! The connections are checked every second (`PING`, answered within
//! 3 s); when one fails, falls silent or closes, the cache stops serving
//! and empties at once, and serves again (empty) only once new
//! connections are tracking. A server without tracking (older than
//! Redis 6) or an account not allowed `CLIENT` leaves the cache off for
//! good, with one warning.
//!
//! On a Cluster:
//! - the slot map comes from `CLUSTER SLOTS` on the first seed that
//!   answers (a master named by no address is the node that answered; one
//!   named `?` leaves its slots untracked, read through the cluster
//!   connection), and each master's connection from the first seed's
//!   settings with the master's announced address, so every master must
//!   be reachable there, over TCP;
//! - the heartbeat also reads the slot map, from each master in turn, and
//!   starts over (empty) when a slot's master changed: a moved slot, or a
//!   failover, even one behind an unchanged address (node IDs differ);
//! - a command a node redirects goes through the store's cluster
//!   connection, with the rest of its operation, and is not cached;
//!   `MOVED` also starts over at once (see `TrackedConn`);
//! - so a reshard costs misses for the keys of each moved slot and one
//!   restart (an empty cache) per slot moved, never a stale read: a
//!   migrated key is deleted on the node it leaves (an invalidation), and
//!   writes to a promoted replica can be missed only until a heartbeat
//!   reads the new map: within a second, or, while the old master is cut
//!   off from the Cluster and has not heard of its demotion, within one
//!   second per master (the heartbeat asks each in turn);
//! - the masters are connected one after the other, within the 5 s a
//!   subscription may take.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use redis::{
    aio::{ConnectionLike, MultiplexedConnection},
    cluster_async::ClusterConnection,
    Cmd, ConnectionAddr, ConnectionInfo, Pipeline, PushInfo, PushKind, RedisFuture, Value,
};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use crate::{id::Handle, store::near::NearCache};

/// How often the tracking connections are pinged (and, on a Cluster, its
/// slot map read again).
const HEARTBEAT: Duration = Duration::from_secs(1);
/// A ping not answered in this long means the connection is dead.
const SILENCE: Duration = Duration::from_secs(3);
/// The tracking connection's name in `CLIENT LIST`, followed by `:` and
/// the session keys' prefix (`keyfob-near-cache:myapp:s:`).
const CONNECTION_NAME: &str = "keyfob-near-cache";
/// Connecting and turning tracking on, at most.
const SUBSCRIBE_LIMIT: Duration = Duration::from_secs(5);
/// Hash slots in a Redis Cluster.
const SLOTS: usize = 16_384;

/// Where the tracking connections go.
#[derive(Clone)]
pub(super) enum Target {
    /// A single server: its settings, in RESP3.
    Single(redis::Client),
    /// A Cluster: the seeds' settings in RESP3 (the first seed that
    /// answers tells the slot map; each master's connection is made from
    /// the first seed's settings, credentials and TLS, with the master's
    /// address), and the store's cluster connection, which takes a
    /// command a node redirects.
    Cluster {
        seeds: Vec<ConnectionInfo>,
        conn: ClusterConnection,
    },
}

/// The tracking connections while they are up: the store sends its
/// session reads and writes through them, so Redis tracks what it reads
/// and does not echo back what it writes.
pub(super) type Live = Arc<Mutex<Option<Arc<Tracked>>>>;

/// One generation of tracking connections (one subscription), shared by
/// the store's operations on it.
pub(super) struct Tracked {
    nodes: Box<[MultiplexedConnection]>,
    /// On a Cluster, the index in `nodes` of each hash slot's master
    /// ([`NO_NODE`] for a slot no master serves); empty on a single server.
    owners: Arc<[u16]>,
    /// On a Cluster, the store's cluster connection, for what a node
    /// redirects and for script loads.
    fallback: Option<ClusterConnection>,
    cache: Arc<NearCache>,
    lost: UnboundedSender<()>,
    /// This generation's serial, and where the live one is counted.
    serial: u64,
    serials: Arc<AtomicU64>,
}

const NO_NODE: u16 = u16::MAX;

impl Tracked {
    /// The tracking connection of the node that serves `key`, or `None`
    /// (a slot no master serves: the store's own connection takes it,
    /// and what it reads is not cached).
    pub(super) fn conn_for(self: &Arc<Self>, key: &str) -> Option<TrackedConn> {
        let node = if self.owners.is_empty() {
            0
        } else {
            *self.owners.get(usize::from(slot_of(key.as_bytes())))?
        };
        Some(TrackedConn {
            conn: self.nodes.get(usize::from(node))?.clone(),
            generation: self.clone(),
            diverted: false,
        })
    }
}

/// The hash slot of a key, as Redis Cluster computes it: CRC16 (XMODEM)
/// of the key, or of its hash tag (what is between the first `{` and the
/// first `}` after it, if not empty), modulo 16384.
fn slot_of(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = key.get(open + 1..)?;
        let close = rest.iter().position(|&b| b == b'}')?;
        rest.get(..close).filter(|tag| !tag.is_empty())
    });
    crc16::State::<crc16::XMODEM>::calculate(tagged.unwrap_or(key)) % SLOTS as u16
}

/// One node's tracking connection, as the store's commands see it, for
/// one store operation. A reply that says the key is not served here
/// (`MOVED`, `ASK`, `TRYAGAIN`, `CLUSTERDOWN`: the command did not run)
/// sends the command again through the store's cluster connection, which
/// follows the redirect, and so every later command of the operation.
/// What the operation then reads or writes is not tracked, so every
/// ticket taken before is voided: no copy of it is cached.
///
/// `MOVED` also means the slot map this generation was built on is stale:
/// the cache stops at once and a new subscription is asked for. The
/// others do not: `ASK` (a slot being migrated, and the key not here:
/// moved to the importing node, and deleted here, which invalidated it,
/// or never here) and `TRYAGAIN`/`CLUSTERDOWN` (a passing state) leave the
/// map as it was, and restarting on each would reconnect to every master
/// for the length of a migration.
///
/// On a Cluster a script load (`SCRIPT LOAD`, after a `NOSCRIPT`) always
/// goes through the cluster connection, which sends it to every master:
/// the script's second `EVALSHA` then finds it wherever a redirect, then
/// or later, takes it.
#[derive(Clone)]
pub(super) struct TrackedConn {
    conn: MultiplexedConnection,
    generation: Arc<Tracked>,
    /// Redirected once: the rest of the operation goes to the fallback.
    diverted: bool,
}

/// Whether `cmd` is `SCRIPT LOAD`.
fn loads_a_script(cmd: &Cmd) -> bool {
    let mut words = cmd.args_iter().map(|a| match a {
        redis::Arg::Simple(word) => word,
        _ => &[],
    });
    matches!(
        (words.next(), words.next()),
        (Some(a), Some(b)) if a.eq_ignore_ascii_case(b"SCRIPT") && b.eq_ignore_ascii_case(b"LOAD")
    )
}

/// The cluster redirect a reply is, if any.
fn redirect(reply: &redis::RedisResult<Value>) -> Option<&str> {
    let code = match reply {
        Ok(Value::ServerError(e)) => Some(e.code()),
        Err(e) if e.is_cluster_error() => e.code(),
        _ => None,
    }?;
    matches!(code, "MOVED" | "ASK" | "TRYAGAIN" | "CLUSTERDOWN").then_some(code)
}

impl TrackedConn {
    /// Acts on a redirect (see the type's docs); whether it was one and
    /// the command must go again through the fallback.
    fn redirected(&mut self, reply: &redis::RedisResult<Value>) -> bool {
        let Some(code) = redirect(reply) else {
            return false;
        };
        let g = &*self.generation;
        if g.fallback.is_none() {
            return false;
        }
        self.diverted = true;
        // Only this generation's own redirect may stop the cache: a late
        // one from an abandoned generation would stop its successor with
        // nothing left to start it again.
        if code == "MOVED" && g.serials.load(Ordering::SeqCst) == g.serial {
            g.cache.stop();
            let _ = g.lost.send(());
        } else {
            g.cache.void();
        }
        true
    }
}

impl ConnectionLike for TrackedConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let cluster = self.generation.fallback.is_some();
            if !(self.diverted || cluster && loads_a_script(cmd)) {
                let reply = self.conn.req_packed_command(cmd).await;
                if !self.redirected(&reply) {
                    return reply;
                }
            }
            match self.generation.fallback.clone() {
                Some(mut cluster) => cluster.req_packed_command(cmd).await,
                None => self.conn.req_packed_command(cmd).await,
            }
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        // The store sends no pipelines on session keys.
        self.conn.req_packed_commands(pipeline, offset, count)
    }

    fn get_db(&self) -> i64 {
        self.conn.get_db()
    }
}

/// Why tracking could not start.
enum Failure {
    /// Worth retrying: the server is unreachable or went away.
    Transient(String),
    /// Never going to work on this server (too old, `CLIENT` not allowed).
    Permanent(String),
}

/// Keeps `cache` coherent for the session keys under `keys` (`<prefix>:s:`)
/// for the life of the store (the caller aborts the task when it drops).
pub(super) async fn track(target: Target, keys: String, cache: Arc<NearCache>, live: Live) {
    /// However this task ends, the cache stops serving with it.
    struct Stopping(Arc<NearCache>, Live);
    impl Drop for Stopping {
        fn drop(&mut self) {
            self.0.stop();
            if let Ok(mut s) = self.1.lock() {
                *s = None;
            }
        }
    }
    let _stopping = Stopping(cache.clone(), live.clone());
    let mut backoff = Duration::from_millis(50);
    let mut warned = false;
    // Which connections are the live ones: an abandoned connection's late
    // `Disconnection` must not stop the cache its successors serve.
    let serials = Arc::new(AtomicU64::new(0));
    loop {
        let serial = serials.fetch_add(1, Ordering::SeqCst) + 1;
        let (lost_tx, mut lost) = tokio::sync::mpsc::unbounded_channel::<()>();
        let push = Push {
            cache: cache.clone(),
            keys: keys.clone(),
            live: serials.clone(),
            serial,
            lost: lost_tx.clone(),
        };
        let subscribed =
            tokio::time::timeout(SUBSCRIBE_LIMIT, subscribe_all(&target, &keys, &push))
                .await
                .unwrap_or_else(|_| Err(Failure::Transient("timed out".into())));
        match subscribed {
            Ok((nodes, map)) => {
                let tracked = Arc::new(Tracked {
                    nodes: nodes.into(),
                    owners: map
                        .as_ref()
                        .map_or_else(|| Arc::from([]), |m| m.owners.clone()),
                    fallback: match &target {
                        Target::Cluster { conn, .. } => Some(conn.clone()),
                        Target::Single(_) => None,
                    },
                    cache: cache.clone(),
                    lost: lost_tx,
                    serial,
                    serials: serials.clone(),
                });
                set(&live, Some(tracked.clone()));
                cache.start();
                warned = false;
                let began = std::time::Instant::now();
                let why = watch(&tracked, map.as_ref(), &mut lost).await;
                // A generation that served a while starts the next one
                // soon; one its first heartbeats ended (a Cluster still
                // settling after a move, nodes that disagree on the map)
                // backs off like a failed subscription, up to 2 s.
                if began.elapsed() > HEARTBEAT * 3 {
                    backoff = Duration::from_millis(50);
                }
                cache.stop();
                set(&live, None);
                tracing::warn!(
                    why,
                    "keyfob: Redis near cache not serving: tracking lost; reconnecting"
                );
            }
            Err(Failure::Permanent(why)) => {
                tracing::warn!(why, "keyfob: Redis near cache off: this server cannot track keys for it; every load goes to Redis");
                cache.stop();
                // Parked, not ended: the store would start an ended task again.
                std::future::pending::<()>().await;
            }
            Err(Failure::Transient(why)) => {
                cache.stop();
                if !warned {
                    tracing::warn!(
                        why,
                        "keyfob: Redis near cache not serving: cannot start key tracking; retrying"
                    );
                    warned = true;
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

fn set(live: &Live, tracked: Option<Arc<Tracked>>) {
    if let Ok(mut s) = live.lock() {
        *s = tracked;
    }
}

/// A Cluster's slot map: which master serves each slot.
struct SlotMap {
    /// The masters (host, port, node ID), in the order of the tracking
    /// connections.
    masters: Vec<(String, u16, String)>,
    owners: Arc<[u16]>,
}

impl SlotMap {
    /// Reads a `CLUSTER SLOTS` reply (`[start, end, [host, port, id, ...],
    /// replicas...]` per range) from the node at `answering`. As Redis
    /// documents, a master named by no address (`NULL`, empty, `0.0.0.0`,
    /// `::`) is the node that answered, and `?` (an endpoint the node
    /// does not know) leaves its slots untracked. `None` if the reply is
    /// not a slot map or names no master at all.
    fn read(reply: &Value, answering: &str) -> Option<SlotMap> {
        let Value::Array(ranges) = reply else {
            return None;
        };
        let mut masters: Vec<(String, u16, String)> = Vec::new();
        let mut owners = vec![NO_NODE; SLOTS];
        let text = |v: Option<&Value>| match v {
            Some(Value::BulkString(b)) => String::from_utf8(b.clone()).ok(),
            Some(Value::SimpleString(t)) => Some(t.clone()),
            Some(Value::Nil) | None => Some(String::new()),
            _ => None,
        };
        for range in ranges {
            let Value::Array(fields) = range else {
                return None;
            };
            let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(master))) =
                (fields.first(), fields.get(1), fields.get(2))
            else {
                return None;
            };
            let host = text(master.first())?;
            let Some(Value::Int(port)) = master.get(1) else {
                return None;
            };
            let id = text(master.get(2))?;
            let host = match host.as_str() {
                "?" => continue,
                "" | "0.0.0.0" | "::" => answering.to_owned(),
                _ => host,
            };
            let node = (host, u16::try_from(*port).ok()?, id);
            let index = match masters.iter().position(|m| *m == node) {
                Some(i) => i,
                None => {
                    masters.push(node);
                    masters.len() - 1
                }
            };
            let index = u16::try_from(index).ok()?;
            let (start, end) = (usize::try_from(*start).ok()?, usize::try_from(*end).ok()?);
            for owner in owners.get_mut(start..=end)? {
                *owner = index;
            }
        }
        if masters.is_empty() {
            return None;
        }
        Some(SlotMap {
            masters,
            owners: owners.into(),
        })
    }

    /// Whether `other` puts every slot on the same master (address and
    /// node ID: a failover behind an unchanged address is a change).
    fn same_as(&self, other: &SlotMap) -> bool {
        let at = |map: &SlotMap, node: u16| map.masters.get(usize::from(node)).cloned();
        self.owners
            .iter()
            .zip(other.owners.iter())
            .all(|(&a, &b)| at(self, a) == at(other, b))
    }
}

async fn cluster_slots(
    conn: &mut impl ConnectionLike,
    answering: &str,
) -> Result<SlotMap, Failure> {
    let reply = conn
        .req_packed_command(redis::cmd("CLUSTER").arg("SLOTS"))
        .await
        .and_then(Value::extract_error)
        .map_err(refused)?;
    SlotMap::read(&reply, answering).ok_or_else(|| {
        Failure::Transient("CLUSTER SLOTS names no reachable master, or is unreadable".into())
    })
}

/// The host a connection goes to, for a node that names itself by none.
fn host_of(info: &ConnectionInfo) -> Option<&str> {
    match info.addr() {
        ConnectionAddr::Tcp(host, _) | ConnectionAddr::TcpTls { host, .. } => Some(host),
        _ => None,
    }
}

/// The slot map, from the first seed that answers.
async fn seed_slots(seeds: &[ConnectionInfo]) -> Result<SlotMap, Failure> {
    let mut why = Failure::Transient("no seed node".into());
    for seed in seeds {
        let Some(host) = host_of(seed) else {
            return Err(Failure::Permanent(
                "a Cluster reached other than by TCP".into(),
            ));
        };
        let asked = async {
            let client = redis::Client::open(seed.clone()).map_err(refused)?;
            let mut conn = client
                .get_multiplexed_async_connection()
                .await
                .map_err(refused)?;
            cluster_slots(&mut conn, host).await
        };
        match asked.await {
            Ok(map) => return Ok(map),
            Err(e) => why = e,
        }
    }
    Err(why)
}

/// Every tracking connection (one per master on a Cluster), and the slot
/// map they were made for.
async fn subscribe_all(
    target: &Target,
    keys: &str,
    push: &Push,
) -> Result<(Vec<MultiplexedConnection>, Option<SlotMap>), Failure> {
    match target {
        Target::Single(client) => Ok((vec![subscribe(client, keys, push.clone()).await?], None)),
        Target::Cluster { seeds, .. } => {
            let map = seed_slots(seeds).await?;
            let Some(seed) = seeds.first() else {
                return Err(Failure::Permanent("no seed node".into()));
            };
            let mut nodes = Vec::with_capacity(map.masters.len());
            for (host, port, _) in &map.masters {
                let addr = match seed.addr() {
                    ConnectionAddr::Tcp(..) => ConnectionAddr::Tcp(host.clone(), *port),
                    ConnectionAddr::TcpTls {
                        insecure,
                        tls_params,
                        ..
                    } => ConnectionAddr::TcpTls {
                        host: host.clone(),
                        port: *port,
                        insecure: *insecure,
                        tls_params: tls_params.clone(),
                    },
                    _ => {
                        return Err(Failure::Permanent(
                            "a Cluster reached other than by TCP".into(),
                        ))
                    }
                };
                let client = redis::Client::open(seed.clone().set_addr(addr)).map_err(refused)?;
                nodes.push(subscribe(&client, keys, push.clone()).await?);
            }
            Ok((nodes, Some(map)))
        }
    }
}

/// Until a connection closes, a ping goes unanswered or (on a Cluster) a
/// command meets `MOVED` or the slot map changes: why it ended.
async fn watch(
    tracked: &Tracked,
    map: Option<&SlotMap>,
    lost: &mut UnboundedReceiver<()>,
) -> &'static str {
    let mut asked = 0usize;
    loop {
        tokio::select! {
            _ = lost.recv() => return "a connection closed, or a command met MOVED",
            () = tokio::time::sleep(HEARTBEAT) => {}
        }
        let pings = async {
            for node in tracked.nodes.iter() {
                redis::cmd("PING")
                    .query_async::<()>(&mut node.clone())
                    .await?;
            }
            Ok::<(), redis::RedisError>(())
        };
        match tokio::time::timeout(SILENCE, pings).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return "a ping failed",
            Err(_) => return "a ping went unanswered for 3 s",
        }
        // Each heartbeat asks the next master for the slot map: a slot
        // moved or a failover ends this subscription within a second.
        let next = asked % tracked.nodes.len().max(1);
        if let (Some(map), Some(node)) = (map, tracked.nodes.get(next)) {
            asked = asked.wrapping_add(1);
            let host = map.masters.get(next).map_or("", |m| m.0.as_str());
            match tokio::time::timeout(SILENCE, cluster_slots(&mut node.clone(), host)).await {
                Ok(Ok(now)) if now.same_as(map) => {}
                Ok(Ok(_)) => return "the Cluster's slot map changed",
                Ok(Err(_)) => return "CLUSTER SLOTS failed",
                Err(_) => return "CLUSTER SLOTS went unanswered for 3 s",
            }
        }
    }
}

/// What one tracking connection's pushes act on.
#[derive(Clone)]
struct Push {
    cache: Arc<NearCache>,
    keys: String,
    live: Arc<AtomicU64>,
    serial: u64,
    lost: UnboundedSender<()>,
}

/// A RESP3 connection of its own, tracking `keys` for `push.cache`.
async fn subscribe(
    client: &redis::Client,
    keys: &str,
    push: Push,
) -> Result<MultiplexedConnection, Failure> {
    // Called by the connection's reader as each push arrives, before any
    // reply read after it is handed out.
    let on_push = move |info: PushInfo| -> Result<(), redis::aio::SendError> {
        if info.kind == PushKind::Disconnection {
            if push.live.load(Ordering::SeqCst) == push.serial {
                push.cache.stop();
            }
            let _ = push.lost.send(());
        } else {
            heard(&push.cache, &push.keys, &info);
        }
        Ok(())
    };
    let config = redis::AsyncConnectionConfig::new()
        .set_push_sender(on_push)
        .set_connection_timeout(Some(SUBSCRIBE_LIMIT))
        .set_response_timeout(Some(SILENCE));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(refused)?;
    // Named, so an operator's `CLIENT LIST` tells what it is and for which
    // keys (a name has no spaces: any other character becomes `_`).
    let name: String = format!("{CONNECTION_NAME}:{keys}")
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .collect();
    redis::cmd("CLIENT")
        .arg("SETNAME")
        .arg(name)
        .query_async::<()>(&mut conn)
        .await
        .map_err(refused)?;
    redis::cmd("CLIENT")
        .arg("TRACKING")
        .arg("ON")
        .arg("NOLOOP")
        .query_async::<()>(&mut conn)
        .await
        .map_err(refused)?;
    Ok(conn)
}

/// A failed connect or `CLIENT` command: no permission, or a command the
/// server does not know (`HELLO` before Redis 6, `CLIENT TRACKING`), is
/// for good; anything else (the network, a busy server) is worth a retry.
fn refused(e: redis::RedisError) -> Failure {
    let unknown = e.code() == Some("ERR")
        && e.detail()
            .is_some_and(|d| d.to_ascii_lowercase().contains("unknown"));
    if e.code() == Some("NOPERM") || unknown {
        Failure::Permanent(e.to_string())
    } else {
        Failure::Transient(e.to_string())
    }
}

/// What one push means for the cache. Anything it cannot read drops more,
/// never less: a key it cannot name drops everything, and so does a flush
/// (an invalidation without keys).
fn heard(cache: &NearCache, keys: &str, push: &PushInfo) {
    if push.kind != PushKind::Invalidate {
        return;
    }
    match push.data.first() {
        Some(Value::Array(changed)) => {
            for key in changed {
                let handle = match key {
                    Value::BulkString(k) => std::str::from_utf8(k)
                        .ok()
                        .and_then(|k| k.strip_prefix(keys))
                        .and_then(|h| h.parse::<Handle>().ok()),
                    _ => None,
                };
                match handle {
                    Some(h) => cache.notified(&h, None),
                    None => cache.clear(),
                }
            }
        }
        _ => cache.clear(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Record;
    use time::OffsetDateTime;

    fn cached(cache: &NearCache, h: &Handle) -> bool {
        cache.get(h, OffsetDateTime::now_utc()).is_some()
    }

    fn put(cache: &NearCache, h: &Handle) {
        let now = OffsetDateTime::now_utc();
        let record = Record::new(now, Some(now + time::Duration::hours(1)), None);
        cache.put(h, Arc::new(record), cache.ticket(h));
    }

    fn push(kind: PushKind, data: Vec<Value>) -> PushInfo {
        PushInfo { kind, data }
    }

    #[test]
    fn an_invalidation_drops_the_keys_it_names_and_a_flush_drops_all() {
        let cache = NearCache::new(100, 1 << 20);
        cache.start();
        let (a, b) = (Handle::from_bytes([1; 32]), Handle::from_bytes([2; 32]));
        put(&cache, &a);
        put(&cache, &b);
        let key = |h: &Handle| Value::BulkString(format!("p:s:{h}").into_bytes());
        heard(
            &cache,
            "p:s:",
            &push(PushKind::Invalidate, vec![Value::Array(vec![key(&a)])]),
        );
        assert!(!cached(&cache, &a) && cached(&cache, &b));
        // Other pushes (a pub/sub message on the connection) change nothing.
        heard(&cache, "p:s:", &push(PushKind::Message, vec![key(&b)]));
        assert!(cached(&cache, &b));
        // A flush: the key list is null.
        heard(
            &cache,
            "p:s:",
            &push(PushKind::Invalidate, vec![Value::Nil]),
        );
        assert!(!cached(&cache, &b));
    }

    #[test]
    fn only_script_load_is_taken_for_a_script_load() {
        let words = |w: &[&str]| {
            let mut c = redis::Cmd::new();
            for x in w {
                c.arg(*x);
            }
            loads_a_script(&c)
        };
        assert!(words(&["SCRIPT", "LOAD", "return 1"]));
        assert!(words(&["script", "load", "return 1"]));
        assert!(!words(&["SCRIPT", "FLUSH"]));
        assert!(!words(&["EVALSHA", "abc", "1", "k"]));
        assert!(!words(&["SCRIPT"]));
    }

    #[test]
    fn a_key_hashes_to_the_slot_redis_cluster_gives_it() {
        // `CLUSTER KEYSLOT` of each, on Redis 7.
        assert_eq!(slot_of(b"foo"), 12182);
        // CRC16/XMODEM check value of "123456789" (below 16384, so its own slot).
        assert_eq!(slot_of(b"123456789"), 0x31C3);
        // A hash tag: only what is between the first `{` and the next `}`.
        assert_eq!(slot_of(b"{user1000}.following"), slot_of(b"user1000"));
        assert_eq!(slot_of(b"foo{{bar}}zap"), slot_of(b"{bar"));
        // An empty tag is no tag: the whole key is hashed.
        assert_ne!(slot_of(b"foo{}{bar}"), slot_of(b"bar"));
        assert_eq!(
            slot_of(b"foo{}{bar}"),
            crc16::State::<crc16::XMODEM>::calculate(b"foo{}{bar}") % 16384
        );
    }

    fn range(start: i64, end: i64, host: &str, id: &str) -> Value {
        Value::Array(vec![
            Value::Int(start),
            Value::Int(end),
            Value::Array(vec![
                Value::BulkString(host.as_bytes().to_vec()),
                Value::Int(7000),
                Value::BulkString(id.as_bytes().to_vec()),
            ]),
        ])
    }

    fn map(ranges: Vec<Value>) -> Option<SlotMap> {
        SlotMap::read(&Value::Array(ranges), "10.0.0.9")
    }

    #[test]
    fn a_slot_map_names_each_slots_master_and_tells_a_move() {
        let three = || {
            vec![
                range(0, 5460, "10.0.0.1", "a"),
                range(5461, 10922, "10.0.0.2", "b"),
                range(10923, 16383, "10.0.0.3", "c"),
            ]
        };
        let base = map(three()).unwrap();
        assert_eq!(base.masters.len(), 3);
        assert_eq!(base.owners[0], 0);
        assert_eq!(base.owners[5461], 1);
        assert_eq!(base.owners[16383], 2);
        // The same map in another order is the same map.
        let mut reordered = three();
        reordered.rotate_left(1);
        assert!(base.same_as(&map(reordered).unwrap()));
        // One slot moved is a change.
        let moved = vec![
            range(0, 5459, "10.0.0.1", "a"),
            range(5460, 5460, "10.0.0.2", "b"),
            range(5461, 10922, "10.0.0.2", "b"),
            range(10923, 16383, "10.0.0.3", "c"),
        ];
        assert!(!base.same_as(&map(moved).unwrap()));
        // A failover: another address, or another node behind the same one.
        let mut failover = three();
        failover[0] = range(0, 5460, "10.0.0.4", "d");
        assert!(!base.same_as(&map(failover).unwrap()));
        let mut same_address = three();
        same_address[0] = range(0, 5460, "10.0.0.1", "d");
        assert!(!base.same_as(&map(same_address).unwrap()));
    }

    #[test]
    fn a_master_named_by_no_address_is_the_node_that_answered() {
        for host in ["", "0.0.0.0", "::"] {
            let m = map(vec![range(0, 16383, host, "a")]).unwrap();
            assert_eq!(m.masters[0].0, "10.0.0.9", "{host:?}");
        }
        let null = Value::Array(vec![Value::Array(vec![
            Value::Int(0),
            Value::Int(16383),
            Value::Array(vec![Value::Nil, Value::Int(7000), Value::Nil]),
        ])]);
        assert_eq!(SlotMap::read(&null, "h").unwrap().masters[0].0, "h");
        // An unknown endpoint (`?`): its slots stay untracked.
        let partial = map(vec![
            range(0, 100, "10.0.0.1", "a"),
            range(101, 16383, "?", "b"),
        ])
        .unwrap();
        assert_eq!(partial.owners[100], 0);
        assert_eq!(partial.owners[101], NO_NODE);
        // Unreadable, out of range, or no master at all: no map.
        assert!(map(vec![range(0, 16384, "h", "a")]).is_none());
        assert!(map(vec![range(0, 1, "?", "a")]).is_none());
        assert!(map(vec![]).is_none());
        assert!(SlotMap::read(&Value::Int(3), "h").is_none());
    }

    #[test]
    fn a_key_it_cannot_read_drops_everything() {
        let cache = NearCache::new(100, 1 << 20);
        cache.start();
        let a = Handle::from_bytes([3; 32]);
        put(&cache, &a);
        let odd = Value::BulkString(b"p:s:not-a-handle".to_vec());
        heard(
            &cache,
            "p:s:",
            &push(PushKind::Invalidate, vec![Value::Array(vec![odd])]),
        );
        assert!(!cached(&cache, &a));
    }
}
