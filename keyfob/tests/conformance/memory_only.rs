//! The memory store's capacity bound: what no other store has to enforce.

use std::sync::Arc;

use axum::http::StatusCode;
use keyfob::{MemoryStore, SessionStore};

use crate::support::App;

/// An app over `store`, keeping a typed handle to read its size.
fn app_over(store: &Arc<MemoryStore>) -> App {
    App::new(store.clone() as Arc<dyn SessionStore>)
}

#[tokio::test]
async fn anonymous_flood_evicts_anonymous_sessions_and_keeps_every_logged_in_one() {
    // 100 sessions a shard, and a byte bound the flood reaches first.
    let (max_sessions, max_bytes) = (6_400, 6_400 * 200);
    let store = Arc::new(MemoryStore::with_capacity(max_sessions, max_bytes));
    let app = app_over(&store);
    let mut users = Vec::new();
    for i in 0..50 {
        let r = app.send("POST", &format!("/login/u{i}"), None).await;
        assert_eq!(r.status, StatusCode::OK);
        users.push((i, r.cookie().unwrap()));
    }
    // A plain loop of cookieless writes: each one stores a new session.
    let mut last = None;
    for i in 0..20_000 {
        let r = app.send("POST", &format!("/set/n/{i}"), None).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        last = r.cookie();
        if i % 1000 == 0 {
            assert!(store.len() <= max_sessions, "{} sessions", store.len());
            assert!(store.bytes() <= max_bytes, "{} bytes", store.bytes());
        }
    }
    assert!(store.len() <= max_sessions, "{} sessions", store.len());
    assert!(store.bytes() <= max_bytes, "{} bytes", store.bytes());
    assert!(store.len() < 20_050, "nothing was evicted");
    // Every logged-in session survived the flood; the newest anonymous one too.
    for (i, cookie) in &users {
        assert_eq!(
            app.send("GET", "/user", Some(cookie)).await.body,
            format!("\"u{i}\"")
        );
    }
    let last = last.unwrap();
    assert_eq!(
        app.send("GET", "/get/n", Some(&last)).await.body,
        "\"19999\""
    );
}

#[tokio::test]
async fn store_full_of_logged_in_sessions_refuses_a_new_one_with_503() {
    // One session a shard: the shards fill with logged-in users.
    let store = Arc::new(MemoryStore::with_capacity(64, 1 << 30));
    let app = app_over(&store);
    let mut kept = Vec::new();
    let mut refused = 0;
    for i in 0..400 {
        let r = app.send("POST", &format!("/login/u{i}"), None).await;
        match r.status {
            StatusCode::OK => kept.push((i, r.cookie().unwrap())),
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(r.body, "session store unavailable");
                assert!(r.headers.contains_key("retry-after"));
                refused += 1;
            }
            other => panic!("login {i}: {other} {}", r.body),
        }
    }
    assert!(refused > 0, "the store never filled");
    assert!(store.len() <= 64);
    // Nobody logged in was pushed out to make room.
    for (i, cookie) in &kept {
        assert_eq!(
            app.send("GET", "/user", Some(cookie)).await.body,
            format!("\"u{i}\""),
            "login {i} was evicted"
        );
    }
}

/// A handle in shard 0 (the store picks the shard from the last byte),
/// distinct by `n`.
fn shard0_handle(n: u8) -> keyfob::Handle {
    let mut bytes = [0u8; 32];
    bytes[0] = n;
    bytes[31] = 64;
    keyfob::Handle::from_bytes(bytes)
}

/// A record last seen at `seen` (Unix seconds) that ends at `until`,
/// logged in as `owner` if given.
fn record_at(seen: i64, until: i64, owner: Option<&str>) -> keyfob::Record {
    let owner = owner.map_or(String::new(), |o| format!(r#","o":"{o}""#));
    serde_json::from_str(&format!(
        r#"{{"d":{{"n":1}},"c":{seen},"s":{seen},"i":{until},"v":1{owner}}}"#
    ))
    .unwrap()
}

#[tokio::test]
async fn a_full_store_drops_expired_sessions_before_it_evicts_or_refuses() {
    use keyfob::store::Created;
    // Four sessions a shard; every handle below lands in shard 0.
    let store = MemoryStore::with_capacity(4 * 64, 1 << 30);
    let t0 = 1_900_000_000;
    for n in 0..4 {
        let old = record_at(t0, t0 + 10, None);
        assert_eq!(
            store.create(&shard0_handle(n), &old).await.unwrap(),
            Created::Stored
        );
    }
    // Later, the four have expired: four logged-in sessions take their place.
    for n in 10..14 {
        let live = record_at(t0 + 20, t0 + 3600, Some("u"));
        assert_eq!(
            store.create(&shard0_handle(n), &live).await.unwrap(),
            Created::Stored
        );
    }
    let now = time::OffsetDateTime::from_unix_timestamp(t0 + 21).unwrap();
    for n in 10..14 {
        assert!(store.load(&shard0_handle(n), now).await.unwrap().is_some());
    }
    assert_eq!(store.len(), 4, "the expired sessions are gone");
    // Full of logged-in sessions now: a fifth is refused, nobody is evicted.
    let fifth = record_at(t0 + 20, t0 + 3600, Some("u"));
    assert!(store.create(&shard0_handle(20), &fifth).await.is_err());
    let listed = store.list_by_owner("u", now, 10).await.unwrap();
    assert_eq!(listed.len(), 4);
}

#[tokio::test]
async fn an_update_leaves_a_record_already_loaded_as_it_was() {
    use keyfob::{store::Updated, Update};
    let store = MemoryStore::new();
    let t0 = 1_900_000_000;
    let handle = shard0_handle(1);
    store
        .create(&handle, &record_at(t0, t0 + 3600, None))
        .await
        .unwrap();
    let at = |s| time::OffsetDateTime::from_unix_timestamp(s).unwrap();
    // A request holds the record it loaded while another one writes.
    let held = store.load(&handle, at(t0 + 1)).await.unwrap().unwrap();
    let touch = Update::touch(at(t0 + 100), Some(at(t0 + 7200)));
    assert_eq!(
        store.update(&handle, &touch, at(t0 + 100)).await.unwrap(),
        Updated::Applied
    );
    assert_eq!(held.last_seen(), at(t0));
    assert_eq!(held.expires_at(), Some(at(t0 + 3600)));
    let now = store.load(&handle, at(t0 + 101)).await.unwrap().unwrap();
    assert_eq!(now.last_seen(), at(t0 + 100));
    assert_eq!(now.expires_at(), Some(at(t0 + 7200)));
    assert_eq!(now.version(), held.version() + 1);
}
