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
    let (max_sessions, max_bytes) = (6_400, 6_400 * 430);
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
