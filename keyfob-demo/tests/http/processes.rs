//! The demo as processes: restarts on one store, replicas sharing one,
//! overload, and start-up against an unreachable store.

use keyfob_demo::config::Config;
use reqwest::{header, StatusCode};

use crate::common::*;

#[tokio::test]
async fn restarted_demo_on_the_same_sqlite_file_still_knows_the_session() {
    let dir = scratch_dir("restart");
    let url = format!("sqlite://{}", dir.join("demo.db").display());
    let mut c;
    {
        let demo = Demo::spawn(&url, &dir);
        c = Client::new(&demo.server);
        c.login("alice", "correct horse").await;
        assert_eq!(c.get("/me").await.status, StatusCode::OK);
    }
    let demo = Demo::spawn(&url, &dir);
    c.base = demo.server.base.clone();
    let r = c.get("/me").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (StatusCode::OK, r#"{"id":1,"username":"alice"}"#)
    );
}

/// How long a write through one replica may take to reach another's near
/// cache: PostgreSQL's change notification (p99 about 4 ms, max under 6 ms
/// in BENCHMARKS.md), with a wide margin. Stores without a near cache, and
/// SQLite's (checked before every cached read), need none.
async fn settle() {
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
}

/// Log in through one replica, use the session through the other, log out
/// through the other: the first sees 401 (once the change has reached it).
pub(crate) async fn two_replicas_share_sessions(store: &str, name: &str) {
    let dir = scratch_dir(name);
    let one = Demo::spawn(store, &dir);
    let two = Demo::spawn(store, &dir);
    let mut c = Client::new(&one.server);
    let r = c.login("bob", "battery staple").await;
    assert_eq!(r.status, StatusCode::OK);
    let cookie = c.cookie.clone();
    c.base = two.server.base.clone();
    let r = c.get("/me").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (StatusCode::OK, r#"{"id":2,"username":"bob"}"#)
    );
    let r = c.get("/count").await;
    assert_eq!(
        r.body,
        "You have visited this page 1 time(s) in this session."
    );
    settle().await;
    c.base = one.server.base.clone();
    let r = c.get("/count").await;
    assert_eq!(
        r.body,
        "You have visited this page 2 time(s) in this session."
    );
    settle().await;
    c.base = two.server.base.clone();
    assert_eq!(c.post("/logout").await.status, StatusCode::SEE_OTHER);
    settle().await;
    c.base = one.server.base.clone();
    c.cookie = cookie;
    assert_eq!(c.get("/me").await.status, StatusCode::UNAUTHORIZED);

    // Revocation across replicas: bob logs in on one; his second client, on
    // two, revokes that session by handle; one no longer knows it.
    let mut first = Client::new(&one.server);
    first.login("bob", "battery staple").await;
    let mine: Vec<serde_json::Value> =
        serde_json::from_str(&first.get("/sessions").await.body).unwrap();
    let other = mine
        .iter()
        .find(|s| s["current"] == true)
        .and_then(|s| s["handle"].as_str())
        .unwrap()
        .to_owned();
    let mut second = Client::new(&two.server);
    second.login("bob", "battery staple").await;
    // The store is shared with other tests: bob may have more sessions.
    let listed: Vec<serde_json::Value> =
        serde_json::from_str(&second.get("/sessions").await.body).unwrap();
    assert!(
        listed
            .iter()
            .any(|s| s["handle"] == other.as_str() && s["current"] == false),
        "the first client's session is listed on the other replica"
    );
    let token = second
        .get("/form")
        .await
        .body
        .trim_start_matches("csrf token: ")
        .to_owned();
    let req = second
        .http
        .delete(format!("{}/sessions/{other}", second.base))
        .header("x-csrf-token", token);
    assert_eq!(second.send(req).await.status, StatusCode::NO_CONTENT);
    settle().await;
    assert_eq!(first.get("/me").await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(second.get("/me").await.status, StatusCode::OK);
}

#[tokio::test]
async fn restarted_cookie_demo_keeps_logged_out_cookies_dead() {
    // `--store cookie` keeps its revocation marks in its SQLite file, so a
    // cookie copied before logout stays dead after a restart.
    let dir = scratch_dir("cookie-restart");
    let mut c;
    let (logged_out, revoked, kept);
    {
        let demo = Demo::spawn("cookie", &dir);
        c = Client::new(&demo.server);
        c.get("/count").await;
        logged_out = c.cookie.clone();
        assert!(logged_out.is_some());
        c.post("/logout").await;
        let mut other = Client::new(&demo.server);
        other.login("bob", "battery staple").await;
        revoked = other.cookie.clone();
        c.login("bob", "battery staple").await;
        kept = c.cookie.clone();
        let token = c.token().await;
        let req = c
            .http
            .post(format!("{}/sessions/revoke-others", c.base))
            .header("x-csrf-token", token);
        assert_eq!(c.send(req).await.body, r#"{"revoked":1}"#);
    }
    let demo = Demo::spawn("cookie", &dir);
    c.base = demo.server.base.clone();
    c.cookie = logged_out;
    let r = c.get("/count").await;
    assert_eq!(
        r.body,
        "You have visited this page 1 time(s) in this session."
    );
    c.cookie = revoked;
    assert_eq!(c.get("/me").await.status, StatusCode::UNAUTHORIZED);
    c.cookie = kept;
    assert_eq!(c.get("/me").await.body, r#"{"id":2,"username":"bob"}"#);
}

#[tokio::test]
async fn two_replicas_on_one_cookie_key_and_mark_store_share_sessions() {
    two_replicas_share_sessions("cookie", "cookie-replicas").await;
}

#[tokio::test]
async fn login_flood_is_answered_with_503_and_never_refuses_a_right_password() {
    // Its own process: the flood saturates the process-wide hashing queue.
    let dir = scratch_dir("login-flood");
    let demo = Demo::spawn("memory", &dir);
    let http = reqwest::Client::new();
    let url = format!("{}/login", demo.server.base);
    let flood = (0..keyfob_demo::passwords::QUEUE + 150).map(|i| {
        let (http, url) = (http.clone(), url.clone());
        // Every tenth login carries the right password.
        let right = i % 10 == 0;
        let password = if right { "battery staple" } else { "wrong" };
        let body = serde_json::json!({ "username": "bob", "password": password }).to_string();
        async move {
            let res = http
                .post(url)
                .header(header::CONTENT_TYPE, "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            let retry = res.headers().contains_key(header::RETRY_AFTER);
            (right, res.status(), retry)
        }
    });
    let mut set = tokio::task::JoinSet::new();
    for login in flood {
        set.spawn(login);
    }
    let mut busy = 0;
    while let Some(answer) = set.join_next().await {
        let (right, status, retry) = answer.unwrap();
        match status {
            StatusCode::SERVICE_UNAVAILABLE => {
                assert!(retry, "503 carries Retry-After");
                busy += 1;
            }
            StatusCode::OK => assert!(right, "a wrong password logged in"),
            StatusCode::UNAUTHORIZED => assert!(!right, "a right password was refused as wrong"),
            other => panic!("unexpected {other}"),
        }
    }
    assert!(busy > 0, "the flood never reached the queue's bound");
    // Once the queue drains, the right password logs in again.
    let mut c = Client::new(&demo.server);
    let mut status = StatusCode::SERVICE_UNAVAILABLE;
    for _ in 0..200 {
        status = c.login("bob", "battery staple").await.status;
        if status != StatusCode::SERVICE_UNAVAILABLE {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn oversized_password_is_refused_before_hashing() {
    let server = serve(memory()).await;
    let mut c = Client::new(&server);
    let long = "x".repeat(keyfob_demo::passwords::MAX_PASSWORD_BYTES + 1);
    let r = c.login("alice", &long).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert!(r.body.contains("too long"), "{}", r.body);
    assert!(c.cookie.is_none());
}

#[tokio::test]
async fn short_idle_timeouts_are_accepted() {
    for secs in [2, 10, 60] {
        let config = Config {
            idle_timeout: keyfob::time::Duration::seconds(secs),
            ..Config::default()
        };
        assert!(keyfob_demo::app(memory(), &config).is_ok(), "{secs} s");
    }
}

#[tokio::test]
async fn two_replicas_on_one_postgres_share_sessions() {
    two_replicas_share_sessions(&server_url("KEYFOB_TEST_POSTGRES_URL"), "pg-replicas").await;
}

#[tokio::test]
async fn two_replicas_on_one_sqlite_file_share_sessions() {
    let dir = scratch_dir("sqlite-replicas-db");
    let url = format!("sqlite://{}", dir.join("shared.db").display());
    two_replicas_share_sessions(&url, "sqlite-replicas").await;
}

#[test]
fn unreachable_store_at_start_up_exits_non_zero_with_a_one_line_reason() {
    let dir = scratch_dir("unreachable");
    for store in [
        "postgres://nobody@127.0.0.1:1/none",
        "mysql://nobody:pw@127.0.0.1:1/none",
        "redis://127.0.0.1:1",
        "sqlite:///nonexistent-dir/x/y.db",
    ] {
        let out = demo_binary()
            .args(["--addr", "127.0.0.1:0", "--store", store])
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{store}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.trim_end().lines().count(), 1, "{store}: {stderr}");
        assert!(stderr.contains("unavailable"), "{stderr}");
    }
}

// Redis Cluster: `accounts::redis_cluster_replicas_share_sessions_and_accounts`
// runs this check first, then the accounts flow (one database, one test).

#[tokio::test]
async fn two_replicas_on_one_redis_share_sessions() {
    two_replicas_share_sessions(&server_url("KEYFOB_TEST_REDIS_URL"), "redis-replicas").await;
}

#[tokio::test]
async fn two_replicas_on_one_mariadb_share_sessions() {
    two_replicas_share_sessions(&server_url("KEYFOB_TEST_MYSQL_URL"), "mysql-replicas").await;
}

#[tokio::test]
async fn metrics_count_a_login_a_csrf_refusal_and_store_latency() {
    // Its own process: the metrics recorder is process-wide.
    let dir = scratch_dir("metrics");
    let demo = Demo::spawn("memory", &dir);
    let mut c = Client::new(&demo.server);
    assert_eq!(
        c.login("bob", "battery staple").await.status,
        StatusCode::OK
    );
    // A transfer without a token: refused by the CSRF check.
    assert_eq!(c.post("/transfer").await.status, StatusCode::FORBIDDEN);
    let r = c.get("/metrics").await;
    assert_eq!(r.status, StatusCode::OK);
    let body = r.body;
    let value = |prefix: &str| -> f64 {
        body.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} in:\n{body}"))
    };
    assert_eq!(value("keyfob_logins_total"), 1.0);
    assert_eq!(value("keyfob_csrf_refused_total{"), 1.0);
    assert!(body.contains("keyfob_store_duration_seconds"), "{body}");
    assert!(body.contains(r#"store="memory""#), "{body}");
    // Never a session ID or cookie value in the metrics.
    let cookie = c.cookie.clone().unwrap();
    assert!(!body.contains(&cookie));
}
