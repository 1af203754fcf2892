//! The near cache's coherence on a single Redis server: server-assisted
//! client-side caching (RESP3 `CLIENT TRACKING`), on the `redis` crate's
//! push messages.
//!
//! Each store has one connection of its own (RESP3, so invalidations
//! arrive on it as push messages) with `CLIENT TRACKING ON NOLOOP`: Redis
//! remembers every key *read* on it and tells it when anyone else changes
//! that key (another process, an admin's `DEL`, an expiry, an eviction, a
//! `FLUSHALL`), but not when the change was made on this connection.
//! While it is up, the store reads and writes session keys through it and
//! caches only what it read or wrote there: what it read, Redis will say
//! when it changes; what it wrote, the store caches as written (the write
//! script reads the key once more at its end, since a write ends Redis's
//! tracking of a key).
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
//! A change by someone else racing this store's own write is told by the
//! write: its script returns the version it applied to, and the store
//! caches its result only when that was the version the request had.
//!
//! The connection is checked every second (`PING`, answered within 3 s);
//! when it fails, falls silent or closes, the cache stops serving and
//! empties at once, and serves again (empty) only once a new connection is
//! tracking. A server without tracking (older than Redis 6) or an account
//! not allowed `CLIENT` leaves the cache off for good, with one warning.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use redis::{aio::MultiplexedConnection, PushInfo, PushKind, Value};

use crate::{id::Handle, store::near::NearCache};

/// How often the tracking connection is pinged.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// A ping not answered in this long means the connection is dead.
const SILENCE: Duration = Duration::from_secs(3);
/// The tracking connection's name in `CLIENT LIST`, followed by `:` and
/// the session keys' prefix (`keyfob-near-cache:myapp:s:`).
const CONNECTION_NAME: &str = "keyfob-near-cache";
/// Connecting and turning tracking on, at most.
const SUBSCRIBE_LIMIT: Duration = Duration::from_secs(5);

/// The tracking connection while it is up: the store sends its session
/// writes through it, so Redis does not echo them back.
pub(super) type Slot = Arc<Mutex<Option<MultiplexedConnection>>>;

/// Why tracking could not start.
enum Failure {
    /// Worth retrying: the server is unreachable or went away.
    Transient(String),
    /// Never going to work on this server (too old, `CLIENT` not allowed).
    Permanent(String),
}

/// Keeps `cache` coherent for the session keys under `keys` (`<prefix>:s:`)
/// for the life of the store (the caller aborts the task when it drops).
pub(super) async fn track(client: redis::Client, keys: String, cache: Arc<NearCache>, slot: Slot) {
    /// However this task ends, the cache stops serving with it.
    struct Stopping(Arc<NearCache>, Slot);
    impl Drop for Stopping {
        fn drop(&mut self) {
            self.0.stop();
            if let Ok(mut s) = self.1.lock() {
                *s = None;
            }
        }
    }
    let _stopping = Stopping(cache.clone(), slot.clone());
    let mut backoff = Duration::from_millis(50);
    let mut warned = false;
    // Which connection is the live one: an abandoned connection's late
    // `Disconnection` must not stop the cache its successor serves.
    let live = Arc::new(AtomicU64::new(0));
    loop {
        let serial = live.fetch_add(1, Ordering::SeqCst) + 1;
        let (lost_tx, mut lost) = tokio::sync::mpsc::unbounded_channel::<()>();
        let push = Push {
            cache: cache.clone(),
            keys: keys.clone(),
            live: live.clone(),
            serial,
            lost: lost_tx,
        };
        let subscribed = tokio::time::timeout(SUBSCRIBE_LIMIT, subscribe(&client, &keys, push))
            .await
            .unwrap_or_else(|_| Err(Failure::Transient("timed out".into())));
        match subscribed {
            Ok(conn) => {
                set(&slot, Some(conn.clone()));
                cache.start();
                backoff = Duration::from_millis(50);
                warned = false;
                let why = watch(conn, &mut lost).await;
                cache.stop();
                set(&slot, None);
                tracing::warn!(
                    why,
                    "keyfob: Redis near cache not serving: tracking connection lost; reconnecting"
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

fn set(slot: &Slot, conn: Option<MultiplexedConnection>) {
    if let Ok(mut s) = slot.lock() {
        *s = conn;
    }
}

/// Until the connection closes, or a ping goes unanswered: why it ended.
async fn watch(
    mut conn: MultiplexedConnection,
    lost: &mut tokio::sync::mpsc::UnboundedReceiver<()>,
) -> &'static str {
    loop {
        tokio::select! {
            _ = lost.recv() => return "the connection closed",
            () = tokio::time::sleep(HEARTBEAT) => {}
        }
        let ping = redis::cmd("PING");
        match tokio::time::timeout(SILENCE, ping.query_async::<()>(&mut conn)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return "a ping failed",
            Err(_) => return "a ping went unanswered for 3 s",
        }
    }
}

/// What one tracking connection's pushes act on.
struct Push {
    cache: Arc<NearCache>,
    keys: String,
    live: Arc<AtomicU64>,
    serial: u64,
    lost: tokio::sync::mpsc::UnboundedSender<()>,
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
