//! Redis-specific cases that need to reach behind the store (corrupt a hash,
//! read a TTL), run against the single server and the Cluster alike.

use axum::http::StatusCode;
use keyfob::{
    store::{Created, Updated},
    ErrorKind, Handle, Record, RedisStore, SessionStore,
};
use redis::{aio::ConnectionLike, cluster::ClusterClient, Cmd, FromRedisValue};
use time::{Duration, OffsetDateTime};

use crate::{stores, support::App};

const STANDALONE: &str = "KEYFOB_TEST_REDIS_URL";
const CLUSTER: &str = "KEYFOB_TEST_REDIS_CLUSTER_URL";

enum Raw {
    Single(redis::aio::MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl Raw {
    async fn query<T: FromRedisValue>(&mut self, cmd: &Cmd) -> T {
        let value = match self {
            Raw::Single(c) => c.req_packed_command(cmd).await,
            Raw::Cluster(c) => c.req_packed_command(cmd).await,
        }
        .unwrap();
        redis::from_redis_value(value).unwrap()
    }
}

/// A store with a known prefix, and a raw connection to the same server.
async fn setup(var: &str) -> (RedisStore, String, Raw) {
    let url = stores::server_url(var);
    let prefix = stores::unique_prefix();
    let store = stores::redis_store(var)
        .await
        .with_key_prefix(prefix.clone());
    let raw = match url.strip_prefix("redis+cluster://") {
        Some(seed) => Raw::Cluster(
            ClusterClient::new(vec![format!("redis://{seed}")])
                .unwrap()
                .get_async_connection()
                .await
                .unwrap(),
        ),
        None => Raw::Single(
            redis::Client::open(url.as_str())
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap(),
        ),
    };
    (store, prefix, raw)
}

/// Polls `store` (at most 2 s) until it loads nothing for `h`.
async fn gone_within_2s(store: &RedisStore, h: &Handle) -> bool {
    eventually(store, h, |r| r.is_none()).await
}

/// Polls `store` (at most 2 s) until `done` holds for what it loads.
async fn eventually(
    store: &RedisStore,
    h: &Handle,
    done: impl Fn(Option<&Record>) -> bool,
) -> bool {
    for _ in 0..200 {
        if done(
            store
                .load(h, OffsetDateTime::now_utc())
                .await
                .unwrap()
                .as_deref(),
        ) {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    false
}

fn record(now: OffsetDateTime) -> Record {
    Record::new(
        now,
        Some(now + Duration::hours(1)),
        Some(now + Duration::hours(8)),
    )
}

async fn corrupted_record_reads_as_no_session(var: &str) {
    let (store, prefix, mut raw) = setup(var).await;
    let now = OffsetDateTime::now_utc();
    // (field, value, whether an update can tell: the script checks metadata,
    // data values are checked when loaded)
    let corruptions: [(&str, &str, bool); 5] = [
        ("c", "not a number", true),
        ("v", "-", true),
        ("i", "soon", true),
        ("d:a", "{not json", false),
        ("unknown", "1", false),
    ];
    for (n, (field, value, update_sees_it)) in corruptions.into_iter().enumerate() {
        let h = Handle::from_bytes([n as u8 + 1; 32]);
        assert_eq!(
            store.create(&h, &record(now)).await.unwrap(),
            Created::Stored
        );
        let key = format!("{prefix}:s:{h}");
        let _: i64 = raw
            .query(redis::cmd("HSET").arg(&key).arg(field).arg(value))
            .await;
        // Another connection's write: the near cache hears of it within
        // its invalidation latency, then loads the corrupt hash.
        assert!(gone_within_2s(&store, &h).await, "{field}");
        let touch = keyfob::Update::touch(now, Some(now + Duration::hours(1)));
        if update_sees_it {
            assert_eq!(
                store.update(&h, &touch, now).await.unwrap(),
                Updated::Gone,
                "{field}"
            );
        }
        assert!(store.load(&h, now).await.unwrap().is_none(), "{field}");
    }
    // Not a hash at all.
    let h = Handle::from_bytes([99; 32]);
    let _: () = raw
        .query(redis::cmd("SET").arg(format!("{prefix}:s:{h}")).arg("x"))
        .await;
    assert_eq!(
        store.load(&h, now).await.unwrap_err().kind(),
        ErrorKind::Store
    );
}

async fn redis_expires_sessions_and_owner_sets_by_itself(var: &str) {
    let (store, prefix, mut raw) = setup(var).await;
    let app = App::new(std::sync::Arc::new(store));
    let r = app.send("POST", "/login/u1", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let members: Vec<String> = raw
        .query(
            redis::cmd("ZRANGE")
                .arg(format!("{prefix}:o:u1"))
                .arg(0)
                .arg(-1),
        )
        .await;
    assert_eq!(members.len(), 1);
    let session_ttl: i64 = raw
        .query(redis::cmd("TTL").arg(format!("{prefix}:s:{}", members[0])))
        .await;
    // Redis drops a key on the whole minute after its record's deadline.
    assert!(session_ttl > 0 && session_ttl <= 7200 + 60, "{session_ttl}");
    let set_ttl: i64 = raw
        .query(redis::cmd("TTL").arg(format!("{prefix}:o:u1")))
        .await;
    assert!(
        set_ttl >= session_ttl,
        "the owner set outlives its session: {set_ttl}"
    );
}

async fn revoking_an_owner_follows_a_rotation(var: &str) {
    let (store, _prefix, _raw) = setup(var).await;
    let store = std::sync::Arc::new(store);
    let app = App::new(store.clone());
    let first = app.send("POST", "/login/u1", None).await.cookie().unwrap();
    // A second login rotates again: the indexed handle becomes a tombstone
    // pointing at the new one, as in the middle of a rotation.
    let second = app
        .send("POST", "/login/u1", Some(&first))
        .await
        .cookie()
        .unwrap();
    assert_ne!(first, second);
    assert_eq!(app.send("GET", "/get/a", Some(&first)).await.body, "none");
    assert_eq!(store.delete_by_owner("u1", None).await.unwrap(), 1);
    assert_eq!(app.send("GET", "/user", Some(&second)).await.body, "none");
    let now = keyfob::Clock::now(&app.clock);
    assert!(store
        .list_by_owner("u1", now, 100)
        .await
        .unwrap()
        .is_empty());
}

/// A handle is filed in the owner index before its session is written (so a
/// revocation never misses it); a listing in between must not unfile it,
/// but does unfile members whose watermark has passed.
async fn listing_prunes_only_members_that_are_surely_gone(var: &str) {
    let (store, prefix, mut raw) = setup(var).await;
    let now = OffsetDateTime::now_utc();
    let key = format!("{prefix}:o:u1");
    let in_flight = Handle::from_bytes([7; 32]).to_string();
    let long_gone = Handle::from_bytes([8; 32]).to_string();
    let future = now.unix_timestamp() + 3600;
    let past = now.unix_timestamp() - 3600;
    let _: i64 = raw
        .query(redis::cmd("ZADD").arg(&key).arg(future).arg(&in_flight))
        .await;
    let _: i64 = raw
        .query(redis::cmd("ZADD").arg(&key).arg(past).arg(&long_gone))
        .await;
    assert!(store
        .list_by_owner("u1", now, 100)
        .await
        .unwrap()
        .is_empty());
    let left: Vec<String> = raw
        .query(redis::cmd("ZRANGE").arg(&key).arg(0).arg(-1))
        .await;
    assert_eq!(left, [in_flight]);
}

/// Redis drops expired hashes by itself, so the purge index must not rely on
/// a cleanup task to stay bounded.
async fn purge_index_stays_bounded_without_a_cleanup_task(var: &str) {
    let (store, prefix, mut raw) = setup(var).await;
    let now = OffsetDateTime::now_utc();
    // Long expired when written: Redis drops each hash at once, leaving only
    // its purge-index entry. All in shard 0 (first hex digit of the handle).
    for n in 0..64u8 {
        let mut b = [0u8; 32];
        b[1] = n;
        let r = Record::new(now, Some(now - Duration::days(2)), None);
        store.create(&Handle::from_bytes(b), &r).await.unwrap();
    }
    let left: i64 = raw
        .query(redis::cmd("ZCARD").arg(format!("{prefix}:x:0")))
        .await;
    assert_eq!(left, 0, "every 64th create trims entries overdue by a day");
}

/// The rotation is three steps on Redis; a "revoke all" racing it must
/// still leave no session behind, whichever way the steps interleave.
async fn revoking_an_owner_during_a_rotation_leaves_no_session(var: &str) {
    let (store, _prefix, _raw) = setup(var).await;
    let store = std::sync::Arc::new(store);
    let app = std::sync::Arc::new(App::new(store.clone()));
    for round in 0..30 {
        let owner = format!("u{round}");
        let r = app.send("POST", &format!("/login/{owner}"), None).await;
        let old = r.cookie().unwrap();
        let rotate = {
            let app = app.clone();
            let old = old.clone();
            tokio::spawn(async move { app.send("POST", "/cycle", Some(&old)).await })
        };
        let revoke = {
            let store = store.clone();
            let owner = owner.clone();
            tokio::spawn(async move { store.delete_by_owner(&owner, None).await.unwrap() })
        };
        let rotated = rotate.await.unwrap();
        revoke.await.unwrap();
        for cookie in [Some(old), rotated.cookie()].into_iter().flatten() {
            let r = app.send("GET", "/user", Some(&cookie)).await;
            assert_eq!(r.body, "none", "round {round}: a revoked session survived");
        }
    }
}

#[tokio::test]
async fn an_unreachable_or_malformed_url_is_refused_at_connect() {
    for down in ["redis://127.0.0.1:1", "redis+cluster://127.0.0.1:1"] {
        let started = std::time::Instant::now();
        let err = RedisStore::connect(down).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Store, "{down}");
        assert!(
            started.elapsed().as_secs() < 5,
            "{down}: fails fast at start-up"
        );
    }
    for bad in ["postgres://x", "redis+cluster://", "redis://[::1"] {
        let err = RedisStore::connect(bad).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config, "{bad}");
    }
}

macro_rules! both {
    ($($case:ident),* $(,)?) => {
        mod standalone {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::STANDALONE).await
                }
            )*
        }
        mod cluster {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::CLUSTER).await
                }
            )*
        }
    };
}

/// The near cache, on a single server and on the Cluster (one tracking
/// connection per master).
mod near_cache {
    use super::*;

    /// Two "processes" (stores with connections of their own) on one
    /// prefix, each near cache serving.
    async fn two_processes(var: &str) -> (RedisStore, RedisStore) {
        let prefix = stores::unique_prefix();
        let here = serving(var, prefix.clone()).await;
        let there = serving(var, prefix).await;
        (here, there)
    }

    async fn serving(var: &str, prefix: String) -> RedisStore {
        let store = stores::redis_store(var).await.with_key_prefix(prefix);
        wait_serving(&store).await;
        store
    }

    /// A master of the server (the server itself, when it is not a Cluster).
    struct Node {
        id: String,
        host: String,
        port: u16,
        slots: Vec<(u16, u16)>,
        conn: redis::aio::MultiplexedConnection,
    }

    impl Node {
        async fn query<T: FromRedisValue>(&mut self, cmd: &Cmd) -> T {
            let value = self.conn.req_packed_command(cmd).await.unwrap();
            redis::from_redis_value(value.extract_error().unwrap()).unwrap()
        }

        fn serves(&self, slot: u16) -> bool {
            self.slots.iter().any(|&(a, b)| (a..=b).contains(&slot))
        }
    }

    /// Every master, read from `CLUSTER NODES` (a single server is one).
    async fn masters(var: &str) -> Vec<Node> {
        let url = stores::server_url(var);
        let open = |url: String| async move {
            redis::Client::open(url.as_str())
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap()
        };
        let Some(seed) = url.strip_prefix("redis+cluster://") else {
            let conn = open(url.clone()).await;
            return vec![Node {
                id: String::new(),
                host: String::new(),
                port: 0,
                slots: vec![(0, 16_383)],
                conn,
            }];
        };
        let mut first = open(format!("redis://{seed}")).await;
        let nodes: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async(&mut first)
            .await
            .unwrap();
        let mut masters = Vec::new();
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            if !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let addr = fields[1].split('@').next().unwrap();
            let (host, port) = addr.rsplit_once(':').unwrap();
            let slots = fields[8..]
                .iter()
                .filter(|f| !f.starts_with('['))
                .map(|f| match f.split_once('-') {
                    Some((a, b)) => (a.parse().unwrap(), b.parse().unwrap()),
                    None => (f.parse().unwrap(), f.parse().unwrap()),
                })
                .collect();
            masters.push(Node {
                id: fields[0].to_owned(),
                host: host.to_owned(),
                port: port.parse().unwrap(),
                slots,
                conn: open(format!("redis://{addr}")).await,
            });
        }
        masters
    }

    /// The hash slot of `key` (0 on a single server).
    async fn slot_of(node: &mut Node, key: &str) -> u16 {
        if node.id.is_empty() {
            return 0;
        }
        node.query(redis::cmd("CLUSTER").arg("KEYSLOT").arg(key))
            .await
    }

    async fn wait_serving(store: &RedisStore) {
        let probe = Handle::from_bytes([0; 32]);
        for _ in 0..500 {
            store.load(&probe, OffsetDateTime::now_utc()).await.unwrap();
            if store.near_cache_serving() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("the near cache never started serving");
    }

    /// The IDs of a node's connections named as the near cache of stores
    /// on `prefix`.
    async fn tracking_connections(node: &mut Node, prefix: &str) -> Vec<String> {
        let list: String = node.query(redis::cmd("CLIENT").arg("LIST")).await;
        let name = format!(" name=keyfob-near-cache:{prefix}:s: ");
        list.lines()
            .filter(|l| l.contains(&name))
            .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
            .map(str::to_owned)
            .collect()
    }

    async fn another_process_write_and_delete_reach_the_near_cache(var: &str) {
        let (here, there) = two_processes(var).await;
        let now = OffsetDateTime::now_utc();
        let h = Handle::from_bytes([7; 32]);
        here.create(&h, &record(now)).await.unwrap();
        let v1 = here.load(&h, now).await.unwrap().unwrap().version();
        let touch = keyfob::Update::touch(now, Some(now + Duration::hours(1)));
        there.update(&h, &touch, now).await.unwrap();
        assert!(eventually(&here, &h, |r| r.is_some_and(|r| r.version() > v1)).await);
        there.delete(&h).await.unwrap();
        assert!(gone_within_2s(&here, &h).await);
    }

    /// What a cached load answers after each kind of write through the
    /// cache (the request's copy plus its change) is what Redis holds.
    async fn the_cached_copy_after_each_kind_of_write_is_what_redis_holds(var: &str) {
        let prefix = stores::unique_prefix();
        let here = serving(var, prefix.clone()).await;
        let plain = stores::redis_store(var)
            .await
            .with_key_prefix(prefix)
            .without_near_cache();
        let app = App::new(std::sync::Arc::new(here.clone()));
        let plain_app = App::new(std::sync::Arc::new(plain.clone()));
        let now = OffsetDateTime::now_utc;
        let cookie = app.send("POST", "/login/u1", None).await.cookie().unwrap();
        let h = here.list_by_owner("u1", now(), 10).await.unwrap()[0].handle;
        let view = |r: Option<&Record>| {
            r.map(|r| {
                (
                    r.version(),
                    r.owner().map(str::to_owned),
                    r.expires_at(),
                    r.last_seen(),
                    r.created(),
                    r.absolute_deadline(),
                    r.len(),
                )
            })
        };
        for step in [
            "/set/a/1",
            "/set/b/2",
            "/remove/a",
            "/expiry-secs/600",
            "/set/c/3",
            "/set/b/4",
            "/clear",
        ] {
            let r = app.send("POST", step, Some(&cookie)).await;
            assert_eq!(r.status, StatusCode::OK, "{step}: {}", r.body);
            let cached = here.load(&h, now()).await.unwrap();
            let stored = plain.load(&h, now()).await.unwrap();
            assert_eq!(
                view(cached.as_deref()),
                view(stored.as_deref()),
                "after {step}"
            );
            for key in ["a", "b", "c", "k"] {
                let path = format!("/get/{key}");
                assert_eq!(
                    app.send("GET", &path, Some(&cookie)).await.body,
                    plain_app.send("GET", &path, Some(&cookie)).await.body,
                    "{key} after {step}"
                );
            }
        }
    }

    async fn own_revocations_are_seen_at_once(var: &str) {
        let (here, _there) = two_processes(var).await;
        crate::support::own_revocations_are_seen_at_once(std::sync::Arc::new(here)).await;
    }

    /// On a Cluster, the connection lost is the one to the session's own
    /// master: the others stay up, and the whole cache must still stop.
    async fn a_lost_channel_stops_the_near_cache_until_it_is_back(var: &str) {
        let prefix = stores::unique_prefix();
        let here = serving(var, prefix.clone()).await;
        let there = stores::redis_store(var)
            .await
            .with_key_prefix(prefix.clone())
            .without_near_cache();
        let mut nodes = masters(var).await;
        let now = OffsetDateTime::now_utc();
        let h = Handle::from_bytes([9; 32]);
        here.create(&h, &record(now)).await.unwrap();
        assert!(here.load(&h, now).await.unwrap().is_some());
        // One tracking connection per master (`there` has none).
        for node in &mut nodes {
            assert_eq!(tracking_connections(node, &prefix).await.len(), 1);
        }
        let slot = slot_of(&mut nodes[0], &format!("{prefix}:s:{h}")).await;
        let node = nodes.iter_mut().find(|n| n.serves(slot)).unwrap();
        for id in tracking_connections(node, &prefix).await {
            let _: redis::Value = node
                .query(redis::cmd("CLIENT").arg("KILL").arg("ID").arg(id))
                .await;
        }
        crate::support::notices_the_lost_channel(|| here.near_cache_serving()).await;
        // A delete elsewhere while no invalidation can arrive: not served.
        there.delete(&h).await.unwrap();
        assert!(here.load(&h, now).await.unwrap().is_none());
        // Back: it serves again, and hears of changes again.
        wait_serving(&here).await;
        here.create(&h, &record(now)).await.unwrap();
        assert!(here.load(&h, now).await.unwrap().is_some());
        there.delete(&h).await.unwrap();
        assert!(gone_within_2s(&here, &h).await);
    }

    async fn a_change_by_another_client_or_by_redis_itself_reaches_the_near_cache(var: &str) {
        let (here, prefix, mut raw) = setup(var).await;
        wait_serving(&here).await;
        let now = OffsetDateTime::now_utc();
        let h = Handle::from_bytes([10; 32]);
        here.create(&h, &record(now)).await.unwrap();
        assert!(here.load(&h, now).await.unwrap().is_some());
        // An admin's DEL, not through any keyfob store.
        let key = format!("{prefix}:s:{h}");
        let _: i64 = raw.query(redis::cmd("DEL").arg(&key)).await;
        assert!(gone_within_2s(&here, &h).await, "deleted by hand");
        // A TTL set by hand, and Redis dropping the key at it (the record's
        // deadline is still an hour off). No load in between: one within
        // the millisecond would read the key before it expires.
        here.create(&h, &record(now)).await.unwrap();
        assert!(here.load(&h, now).await.unwrap().is_some());
        let _: i64 = raw.query(redis::cmd("PEXPIRE").arg(&key).arg(1)).await;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        // Touched, so Redis expires it now rather than when its sampling
        // finds it.
        let _: i64 = raw.query(redis::cmd("EXISTS").arg(&key)).await;
        assert!(gone_within_2s(&here, &h).await, "expired by Redis");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_channel_that_falls_silent_stops_the_near_cache_within_four_seconds() {
        let url = stores::server_url(STANDALONE);
        let addr = url.strip_prefix("redis://").unwrap().trim_end_matches('/');
        let target = tokio::net::lookup_host(addr).await.unwrap().next().unwrap();
        let partition = crate::support::Partition::to(target).await;
        let store = RedisStore::connect(&format!("redis://127.0.0.1:{}", partition.port))
            .await
            .unwrap()
            .with_key_prefix(stores::unique_prefix());
        wait_serving(&store).await;
        let now = OffsetDateTime::now_utc();
        let h = Handle::from_bytes([12; 32]);
        store.create(&h, &record(now)).await.unwrap();
        // Quiet is not dead: with no writes at all, the pings keep it serving.
        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
        assert!(
            store.near_cache_serving(),
            "a quiet channel was taken for dead"
        );
        // A load of an uncached key is a round trip on the tracking
        // connection: every ping sent before it has been answered by then.
        let alive = std::time::Instant::now();
        store
            .load(&Handle::from_bytes([13; 32]), now)
            .await
            .unwrap();
        partition.freeze();
        let frozen_at = std::time::Instant::now();
        // A cached read makes no round trip: it answers though Redis cannot.
        for _ in 0..20 {
            assert!(store.load(&h, now).await.unwrap().is_some());
        }
        assert!(
            frozen_at.elapsed() < std::time::Duration::from_millis(200),
            "cached loads waited for Redis"
        );
        crate::support::stops_serving_after_the_silence(|| store.near_cache_serving(), alive).await;
    }

    /// A store built from the app's connection cannot open its own, and
    /// one built with `without_near_cache` has none.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_given_connection_or_an_opt_out_has_no_near_cache() {
        let seed = stores::server_url(CLUSTER).replace("redis+cluster://", "redis://");
        let conn = ClusterClient::new(vec![seed])
            .unwrap()
            .get_async_connection()
            .await
            .unwrap();
        let given = RedisStore::cluster(conn).with_key_prefix(stores::unique_prefix());
        let off = stores::redis_store(CLUSTER).await.without_near_cache();
        let h = Handle::from_bytes([1; 32]);
        let now = OffsetDateTime::now_utc();
        given.create(&h, &record(now)).await.unwrap();
        off.create(&h, &record(now)).await.unwrap();
        // Longer than a near cache on this Cluster takes to start serving.
        for _ in 0..50 {
            for store in [&given, &off] {
                assert!(store.load(&h, now).await.unwrap().is_some());
                assert!(!store.near_cache_serving());
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Up to 100 of the keys `node` holds in `slot`.
    async fn keys_in_slot(node: &mut Node, slot: u16) -> Vec<String> {
        node.query(
            redis::cmd("CLUSTER")
                .arg("GETKEYSINSLOT")
                .arg(slot)
                .arg(100),
        )
        .await
    }

    fn setslot(slot: u16, state: &str, id: &str) -> Cmd {
        let mut c = redis::cmd("CLUSTER");
        c.arg("SETSLOT").arg(slot).arg(state).arg(id);
        c
    }

    /// The first half of a reshard, as `redis-cli --cluster reshard` does
    /// it: `to` importing `slot`, `from` migrating it, and its keys moved
    /// with `MIGRATE` (which deletes them on `from`).
    async fn start_move(nodes: &mut [Node], slot: u16, from: usize, to: usize) {
        let (from_id, to_id) = (nodes[from].id.clone(), nodes[to].id.clone());
        let (to_host, to_port) = (nodes[to].host.clone(), nodes[to].port);
        let _: () = nodes[to].query(&setslot(slot, "IMPORTING", &from_id)).await;
        let _: () = nodes[from].query(&setslot(slot, "MIGRATING", &to_id)).await;
        loop {
            let keys = keys_in_slot(&mut nodes[from], slot).await;
            if keys.is_empty() {
                break;
            }
            let _: redis::Value = nodes[from]
                .query(
                    redis::cmd("MIGRATE")
                        .arg(&to_host)
                        .arg(to_port)
                        .arg("")
                        .arg(0)
                        .arg(5000)
                        .arg("KEYS")
                        .arg(&keys),
                )
                .await;
        }
    }

    /// The second half: the new owner told to both, then every master.
    async fn finish_move(nodes: &mut [Node], slot: u16, from: usize, to: usize) {
        let to_id = nodes[to].id.clone();
        let others = (0..nodes.len()).filter(|&i| i != to && i != from);
        let order: Vec<usize> = [to, from].into_iter().chain(others).collect();
        for i in order {
            let _: () = nodes[i].query(&setslot(slot, "NODE", &to_id)).await;
        }
    }

    /// A reshard moves a cached session's slot to another master, one
    /// that has never run keyfob's scripts. While the slot migrates, this
    /// store reads and writes the session through the redirect (and keeps
    /// serving its other copies); after it, a write on the new master by
    /// another process reaches this cache, and the cache serves again on
    /// the new map.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_resharded_session_stays_writable_and_is_never_served_stale() {
        let mut nodes = masters(CLUSTER).await;
        assert!(nodes.len() >= 2, "the test Cluster has one master");
        let prefix = stores::unique_prefix();
        let h = Handle::from_bytes([14; 32]);
        let slot = slot_of(&mut nodes[0], &format!("{prefix}:s:{h}")).await;
        let from = nodes.iter().position(|n| n.serves(slot)).unwrap();
        let to = (from + 1) % nodes.len();
        let body = tokio::spawn(async move {
            let mut nodes = masters(CLUSTER).await;
            let here = serving(CLUSTER, prefix.clone()).await;
            let there = stores::redis_store(CLUSTER)
                .await
                .with_key_prefix(prefix.clone())
                .without_near_cache();
            let now = OffsetDateTime::now_utc();
            here.create(&h, &record(now)).await.unwrap();
            let v1 = here.load(&h, now).await.unwrap().unwrap().version();
            // A session elsewhere, cached: it must stay served throughout.
            let mut other = Handle::from_bytes([20; 32]);
            for b in 20u8.. {
                other = Handle::from_bytes([b; 32]);
                let its = slot_of(&mut nodes[0], &format!("{prefix}:s:{other}")).await;
                if !nodes[from].serves(its) {
                    break;
                }
            }
            here.create(&other, &record(now)).await.unwrap();
            assert!(here.load(&other, now).await.unwrap().is_some());
            // The new owner knows none of keyfob's scripts.
            let _: () = nodes[to].query(redis::cmd("SCRIPT").arg("FLUSH")).await;
            start_move(&mut nodes, slot, from, to).await;
            // Migrating: the old owner answers ASK for the moved key.
            let loaded = here.load(&h, now).await.unwrap().unwrap();
            assert_eq!(loaded.version(), v1);
            let touch = keyfob::Update::touch(now, Some(now + Duration::hours(1)));
            assert_eq!(
                here.update(&h, &touch, now).await.unwrap(),
                Updated::Applied
            );
            assert!(here.near_cache_serving(), "an ASK restarted the near cache");
            assert!(here.load(&other, now).await.unwrap().is_some());
            finish_move(&mut nodes, slot, from, to).await;
            // Moved: the old owner answers MOVED; the write still lands.
            let v2 = there.load(&h, now).await.unwrap().unwrap().version();
            assert_eq!(
                here.update(&h, &touch, now).await.unwrap(),
                Updated::Applied
            );
            assert!(there.load(&h, now).await.unwrap().unwrap().version() > v2);
            let v3 = there.load(&h, now).await.unwrap().unwrap().version();
            assert_eq!(
                there.update(&h, &touch, now).await.unwrap(),
                Updated::Applied
            );
            assert!(
                eventually(&here, &h, |r| r.is_some_and(|r| r.version() > v3)).await,
                "a copy from before the move was still served"
            );
            // Serving again on the new map, and hearing of changes there.
            wait_serving(&here).await;
            let v4 = here.load(&h, now).await.unwrap().unwrap().version();
            there.update(&h, &touch, now).await.unwrap();
            assert!(eventually(&here, &h, |r| r.is_some_and(|r| r.version() > v4)).await);
            there.delete(&h).await.unwrap();
            assert!(gone_within_2s(&here, &h).await);
        });
        let outcome = body.await;
        // Put the slot back whatever happened, so the Cluster is as the
        // other tests found it.
        let (home, to_id) = (nodes[from].id.clone(), nodes[to].id.clone());
        let mut nodes = masters(CLUSTER).await;
        let home = nodes.iter().position(|n| n.id == home).unwrap();
        match nodes.iter().position(|n| n.serves(slot)) {
            Some(owner) if owner != home => {
                start_move(&mut nodes, slot, owner, home).await;
                finish_move(&mut nodes, slot, owner, home).await;
            }
            _ => {
                // Stopped half-way: keys already migrated are moved back
                // by finishing the move and reversing it.
                let to = nodes.iter().position(|n| n.id == to_id).unwrap();
                if keys_in_slot(&mut nodes[to], slot).await.is_empty() {
                    for node in &mut nodes {
                        let _: () = node
                            .query(redis::cmd("CLUSTER").arg("SETSLOT").arg(slot).arg("STABLE"))
                            .await;
                    }
                } else {
                    finish_move(&mut nodes, slot, home, to).await;
                    start_move(&mut nodes, slot, to, home).await;
                    finish_move(&mut nodes, slot, to, home).await;
                }
            }
        }
        if let Err(e) = outcome {
            std::panic::resume_unwind(e.into_panic());
        }
    }

    both!(
        another_process_write_and_delete_reach_the_near_cache,
        the_cached_copy_after_each_kind_of_write_is_what_redis_holds,
        own_revocations_are_seen_at_once,
        a_lost_channel_stops_the_near_cache_until_it_is_back,
        a_change_by_another_client_or_by_redis_itself_reaches_the_near_cache,
    );
}

both!(
    corrupted_record_reads_as_no_session,
    redis_expires_sessions_and_owner_sets_by_itself,
    revoking_an_owner_follows_a_rotation,
    revoking_an_owner_during_a_rotation_leaves_no_session,
    purge_index_stays_bounded_without_a_cleanup_task,
    listing_prunes_only_members_that_are_surely_gone,
);
