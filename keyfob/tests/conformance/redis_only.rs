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
        assert!(store.load(&h, now).await.unwrap().is_none(), "{field}");
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
    assert!(session_ttl > 0 && session_ttl <= 7200, "{session_ttl}");
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

both!(
    corrupted_record_reads_as_no_session,
    redis_expires_sessions_and_owner_sets_by_itself,
    revoking_an_owner_follows_a_rotation,
    revoking_an_owner_during_a_rotation_leaves_no_session,
    purge_index_stays_bounded_without_a_cleanup_task,
    listing_prunes_only_members_that_are_surely_gone,
);
