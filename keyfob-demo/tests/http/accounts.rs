//! "Accounts and permissions": the user looked up per request, the admin
//! permission editor and password changes, on every store the demo runs on.
//! Where the store is shared (SQLite file, PostgreSQL, MariaDB, Redis, Redis
//! Cluster), the changes are made through one process and seen through a
//! second, and survive a restart. Each run gets its own accounts (a fresh
//! file, database or Redis DB), so other tests logging in as bob are not
//! disturbed.

use reqwest::StatusCode;

use crate::common::{scratch_dir, server_url, Client, Demo};

const OLD: &str = "battery staple";
const NEW: &str = "a much longer passphrase";

impl Client {
    /// A JSON request, with the CSRF token when given.
    async fn json(
        &mut self,
        method: reqwest::Method,
        path: &str,
        body: &str,
        token: Option<&str>,
    ) -> crate::common::Reply {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body.to_owned());
        if let Some(t) = token {
            req = req.header("x-csrf-token", t);
        }
        self.send(req).await
    }

    async fn put_permissions(&mut self, user: &str, body: &str, token: Option<&str>) -> StatusCode {
        let path = format!("/admin/users/{user}/permissions");
        self.json(reqwest::Method::PUT, &path, body, token)
            .await
            .status
    }

    async fn change_password(&mut self, body: &str, token: Option<&str>) -> crate::common::Reply {
        self.json(reqwest::Method::POST, "/account/password", body, token)
            .await
    }

    async fn logged_in_as(&mut self, user: &str, password: &str) -> StatusCode {
        self.login(user, password).await.status
    }
}

fn change(current: &str, new: &str) -> String {
    serde_json::json!({ "current": current, "new": new }).to_string()
}

/// The whole flow. `one` and `two` are two processes on one store (the same
/// process twice where the store is not shared).
async fn accounts_flow(one: &str, two: &str) -> Option<String> {
    let mut alice = Client::new(one);
    let mut bob = Client::new(two);
    let mut bob_elsewhere = Client::new(one);
    assert_eq!(
        alice.logged_in_as("alice", "correct horse").await,
        StatusCode::OK
    );
    assert_eq!(bob.logged_in_as("bob", OLD).await, StatusCode::OK);
    assert_eq!(bob_elsewhere.logged_in_as("bob", OLD).await, StatusCode::OK);

    // Who may see /admin.
    let r = alice.get("/admin").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (StatusCode::OK, "admin: alice")
    );
    let r = bob.get("/admin").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (StatusCode::FORBIDDEN, "forbidden")
    );
    let r = Client::new(one).get("/admin").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (StatusCode::UNAUTHORIZED, "login required")
    );

    // Refused permission changes change nothing.
    let alice_token = alice.token().await;
    let bob_token = bob.token().await;
    assert_eq!(
        alice.put_permissions("bob", r#"["admin"]"#, None).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        bob.put_permissions("bob", r#"["admin"]"#, Some(&bob_token))
            .await,
        StatusCode::FORBIDDEN,
        "not an admin"
    );
    for bad in [r#"{"admin":true}"#, "[1]", "[", "", r#""admin""#] {
        assert_eq!(
            alice.put_permissions("bob", bad, Some(&alice_token)).await,
            StatusCode::BAD_REQUEST,
            "{bad:?}"
        );
    }
    assert_eq!(
        alice
            .put_permissions("mallory", r#"["admin"]"#, Some(&alice_token))
            .await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(bob.get("/admin").await.status, StatusCode::FORBIDDEN);

    // Granted through one process: bob's next request, on the other, has it.
    assert_eq!(
        alice
            .put_permissions("bob", r#"["admin"]"#, Some(&alice_token))
            .await,
        StatusCode::NO_CONTENT
    );
    let r = bob.get("/admin").await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "admin: bob"));
    assert_eq!(bob_elsewhere.get("/admin").await.status, StatusCode::OK);
    // Taken away: 403, and bob stays logged in.
    assert_eq!(
        alice.put_permissions("bob", "[]", Some(&alice_token)).await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(bob.get("/admin").await.status, StatusCode::FORBIDDEN);
    let r = bob.get("/me").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (StatusCode::OK, r#"{"id":2,"username":"bob"}"#)
    );

    // Refused password changes change nothing.
    let refused = [
        (
            change(OLD, NEW),
            None,
            StatusCode::FORBIDDEN,
            "CSRF check failed",
        ),
        (
            change("wrong", NEW),
            Some(&bob_token),
            StatusCode::FORBIDDEN,
            "wrong password",
        ),
        (
            change(OLD, "short"),
            Some(&bob_token),
            StatusCode::BAD_REQUEST,
            "",
        ),
        (
            "{".to_owned(),
            Some(&bob_token),
            StatusCode::BAD_REQUEST,
            "",
        ),
        (
            r#"{"new":"a much longer one"}"#.to_owned(),
            Some(&bob_token),
            StatusCode::BAD_REQUEST,
            "",
        ),
    ];
    for (body, token, status, text) in refused {
        let r = bob.change_password(&body, token.map(String::as_str)).await;
        assert_eq!(r.status, status, "{body}");
        if !text.is_empty() {
            assert_eq!(r.body, text, "{body}");
        }
        assert!(
            r.set_cookie().is_none(),
            "a refused change keeps the session ID"
        );
        assert_eq!(bob.get("/me").await.status, StatusCode::OK);
        assert_eq!(bob_elsewhere.get("/me").await.status, StatusCode::OK);
    }
    assert_eq!(
        Client::new(one).logged_in_as("bob", OLD).await,
        StatusCode::OK
    );
    assert_eq!(
        Client::new(two).logged_in_as("bob", NEW).await,
        StatusCode::UNAUTHORIZED
    );

    // The change: this session stays under a new ID, every other ends.
    let before = bob.cookie.clone();
    let r = bob
        .change_password(&change(OLD, NEW), Some(&bob_token))
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    assert!(r.cookie_value().is_some_and(|v| !v.is_empty()));
    assert_ne!(bob.cookie, before, "a new session ID");
    let r = bob.get("/me").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (StatusCode::OK, r#"{"id":2,"username":"bob"}"#)
    );
    assert_eq!(
        bob_elsewhere.get("/me").await.status,
        StatusCode::UNAUTHORIZED
    );
    let mut replay = Client::new(two);
    replay.cookie = before;
    assert_eq!(replay.get("/me").await.status, StatusCode::UNAUTHORIZED);
    // Only the new password logs in, on either process.
    assert_eq!(
        Client::new(one).logged_in_as("bob", OLD).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        Client::new(two).logged_in_as("bob", OLD).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        Client::new(one).logged_in_as("bob", NEW).await,
        StatusCode::OK
    );
    // Alice was not touched.
    assert_eq!(alice.get("/me").await.status, StatusCode::OK);
    // For the restart check: bob is an admin again.
    assert_eq!(
        alice
            .put_permissions("bob", r#"["admin"]"#, Some(&alice_token))
            .await,
        StatusCode::NO_CONTENT
    );
    alice.cookie
}

/// After a restart on the same store: the new password, the permissions and
/// the sessions are all still there.
async fn after_restart(base: &str, alice: Option<String>) {
    let mut before = Client::new(base);
    before.cookie = alice;
    let r = before.get("/me").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (StatusCode::OK, r#"{"id":1,"username":"alice"}"#),
        "a session from before the restart"
    );
    let mut bob = Client::new(base);
    assert_eq!(bob.logged_in_as("bob", OLD).await, StatusCode::UNAUTHORIZED);
    assert_eq!(bob.logged_in_as("bob", NEW).await, StatusCode::OK);
    let r = bob.get("/admin").await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "admin: bob"));
}

/// Two processes on `store` (in `dir`), the flow across them, then a restart.
async fn shared_store(store: &str, name: &str) {
    let dir = scratch_dir(name);
    let alice;
    {
        let one = Demo::spawn(store, &dir);
        let two = Demo::spawn(store, &dir);
        alice = accounts_flow(&one.server.base, &two.server.base).await;
    }
    let again = Demo::spawn(store, &dir);
    after_restart(&again.server.base, alice).await;
}

#[tokio::test]
async fn accounts_on_memory() {
    let demo = Demo::spawn("memory", &scratch_dir("accounts-memory"));
    let _ = accounts_flow(&demo.server.base, &demo.server.base).await;
}

#[tokio::test]
async fn accounts_on_cookie_sessions() {
    let demo = Demo::spawn("cookie", &scratch_dir("accounts-cookie"));
    let _ = accounts_flow(&demo.server.base, &demo.server.base).await;
}

#[tokio::test]
async fn accounts_on_sqlite_survive_a_restart_and_reach_a_second_process() {
    shared_store("sqlite://keyfob-demo.db", "accounts-sqlite").await;
}

/// A database of its own on the test server, made empty.
async fn fresh_database(url: &str) -> String {
    let (base, _) = url.rsplit_once('/').unwrap();
    let db = format!("keyfob_accounts_{}", std::process::id());
    if url.starts_with("postgres") {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query(&format!("CREATE DATABASE {db}"))
            .execute(&pool)
            .await
            .unwrap();
    } else {
        let pool = sqlx::MySqlPool::connect(url).await.unwrap();
        sqlx::query(&format!("DROP DATABASE IF EXISTS {db}"))
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query(&format!("CREATE DATABASE {db}"))
            .execute(&pool)
            .await
            .unwrap();
    }
    format!("{base}/{db}")
}

#[tokio::test]
async fn accounts_on_postgres_survive_a_restart_and_reach_a_second_process() {
    let url = fresh_database(&server_url("KEYFOB_TEST_POSTGRES_URL")).await;
    shared_store(&url, "accounts-pg").await;
}

#[tokio::test]
async fn accounts_on_mariadb_survive_a_restart_and_reach_a_second_process() {
    let url = fresh_database(&server_url("KEYFOB_TEST_MYSQL_URL")).await;
    shared_store(&url, "accounts-mysql").await;
}

#[tokio::test]
async fn accounts_on_redis_survive_a_restart_and_reach_a_second_process() {
    // Redis DB 7 holds nothing else of the suite.
    let url = format!("{}/7", server_url("KEYFOB_TEST_REDIS_URL"));
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("FLUSHDB")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    shared_store(&url, "accounts-redis").await;
}

/// Redis Cluster has one database: this test runs the cluster's replica
/// check (which logs bob in with his first password) and then the accounts
/// flow, one after the other, each on freshly seeded accounts.
#[tokio::test]
async fn redis_cluster_replicas_share_sessions_and_accounts() {
    let url = server_url("KEYFOB_TEST_REDIS_CLUSTER_URL");
    forget_cluster_accounts(&url).await;
    crate::processes::two_replicas_share_sessions(&url, "redis-cluster-replicas").await;
    forget_cluster_accounts(&url).await;
    shared_store(&url, "accounts-redis-cluster").await;
}

/// Deletes the demo's account keys on the cluster: the next demo seeds them.
async fn forget_cluster_accounts(url: &str) {
    let seed = url.replace("redis+cluster://", "redis://");
    let client = redis::cluster::ClusterClient::new(vec![seed]).unwrap();
    let mut conn = client.get_async_connection().await.unwrap();
    for key in [
        "keyfob-demo:account:1",
        "keyfob-demo:account:2",
        "keyfob-demo:account-name:alice",
        "keyfob-demo:account-name:bob",
    ] {
        redis::cmd("DEL")
            .arg(key)
            .query_async::<()>(&mut conn)
            .await
            .unwrap();
    }
}

/// The session list tells devices apart: the browser and OS of the login's
/// `User-Agent`, and the network of its address.
#[tokio::test]
async fn sessions_list_the_browser_os_and_network_of_each_login() {
    let demo = Demo::spawn("memory", &scratch_dir("accounts-devices"));
    let mut phone = Client::new(&demo.server);
    let iphone = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 \
                  (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1";
    let req = phone
        .http
        .post(format!("{}/login", phone.base))
        .header("user-agent", iphone)
        .json(&serde_json::json!({"username": "alice", "password": "correct horse"}));
    assert_eq!(phone.send(req).await.status, StatusCode::OK);
    let mut laptop = Client::new(&demo.server);
    let req = laptop
        .http
        .post(format!("{}/login", laptop.base))
        .header(
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
        )
        .json(&serde_json::json!({"username": "alice", "password": "correct horse"}));
    assert_eq!(laptop.send(req).await.status, StatusCode::OK);
    let list: Vec<serde_json::Value> =
        serde_json::from_str(&laptop.get("/sessions").await.body).unwrap();
    let mut seen: Vec<(bool, &str, &str, &str)> = list
        .iter()
        .map(|s| {
            (
                s["current"].as_bool().unwrap(),
                s["browser"].as_str().unwrap(),
                s["os"].as_str().unwrap(),
                s["ip"].as_str().unwrap(),
            )
        })
        .collect();
    // Both logins may share a second: their order is not the point.
    seen.sort();
    assert_eq!(
        seen,
        [
            (false, "Mobile Safari 17", "iOS 17", "127.0.0.0"),
            (true, "Firefox 133", "Linux", "127.0.0.0"),
        ]
    );
    // And the dashboard shows them.
    let page = laptop.get("/").await.body;
    assert!(page.contains("Mobile Safari 17 on iOS 17"), "{page}");
    assert!(page.contains("from 127.0.0.0"), "{page}");
}
