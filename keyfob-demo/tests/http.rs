//! The demo's HTTP contract (`shared/spec/demo-http.md`), over real HTTP on loopback.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    unreachable_pub
)]

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::Arc,
};

use keyfob::{MemoryStore, SessionStore};
use keyfob_demo::config::Config;
use reqwest::{header, redirect::Policy, StatusCode};

struct Server {
    base: String,
}

async fn serve(store: Arc<dyn SessionStore>) -> Server {
    let router = keyfob_demo::app(store, &Config::default()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    Server {
        base: format!("http://{addr}"),
    }
}

/// A client that keeps the `id` cookie the way a browser would (minus the
/// `Secure` rule, since the tests speak plain HTTP on loopback).
struct Client {
    http: reqwest::Client,
    base: String,
    cookie: Option<String>,
}

struct Reply {
    status: StatusCode,
    headers: header::HeaderMap,
    body: String,
}

impl Reply {
    fn set_cookie(&self) -> Option<&str> {
        self.headers
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with("id="))
    }
}

impl Client {
    fn new(server: &Server) -> Self {
        Client {
            http: reqwest::Client::builder()
                .redirect(Policy::none())
                .build()
                .unwrap(),
            base: server.base.clone(),
            cookie: None,
        }
    }

    async fn send(&mut self, req: reqwest::RequestBuilder) -> Reply {
        let req = match &self.cookie {
            Some(c) => req.header(header::COOKIE, format!("id={c}")),
            None => req,
        };
        let res = req.send().await.unwrap();
        let reply = Reply {
            status: res.status(),
            headers: res.headers().clone(),
            body: res.text().await.unwrap(),
        };
        if let Some(set) = reply.set_cookie() {
            let value = set.split(';').next().unwrap().trim_start_matches("id=");
            self.cookie = (!value.is_empty()).then(|| value.to_owned());
        }
        reply
    }

    async fn get(&mut self, path: &str) -> Reply {
        let req = self.http.get(format!("{}{path}", self.base));
        self.send(req).await
    }

    async fn post_json(&mut self, path: &str, body: &str) -> Reply {
        let req = self
            .http
            .post(format!("{}{path}", self.base))
            .header(header::CONTENT_TYPE, "application/json")
            .body(body.to_owned());
        self.send(req).await
    }

    async fn post(&mut self, path: &str) -> Reply {
        let req = self.http.post(format!("{}{path}", self.base));
        self.send(req).await
    }

    async fn login(&mut self, user: &str, password: &str) -> Reply {
        let body = serde_json::json!({ "username": user, "password": password }).to_string();
        self.post_json("/login", &body).await
    }
}

fn memory() -> Arc<dyn SessionStore> {
    Arc::new(MemoryStore::new())
}

#[tokio::test]
async fn login_issues_a_new_session_id_and_retires_the_old_one() {
    let server = serve(memory()).await;
    let mut c = Client::new(&server);
    c.get("/count").await;
    let before = c.cookie.clone().unwrap();
    let r = c.login("alice", "correct horse").await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "logged in"));
    let after = c.cookie.clone().unwrap();
    assert_ne!(before, after);
    let r = c.get("/me").await;
    assert_eq!(r.body, r#"{"id":1,"username":"alice"}"#);
    // The pre-login ID loads nothing any more.
    c.cookie = Some(before);
    let r = c.get("/me").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (StatusCode::UNAUTHORIZED, "not logged in")
    );
    let r = c.get("/count").await;
    assert_eq!(
        r.body,
        "You have visited this page 1 time(s) in this session."
    );
}

#[tokio::test]
async fn wrong_credentials_and_bad_json_are_refused() {
    let server = serve(memory()).await;
    let mut c = Client::new(&server);
    let r = c.login("alice", "wrong").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (StatusCode::UNAUTHORIZED, "invalid credentials")
    );
    let r = c.login("mallory", "correct horse").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.set_cookie().is_none());
    for body in ["{", "[]", r#"{"username":1}"#, ""] {
        let r = c.post_json("/login", body).await;
        assert!(r.status.is_client_error(), "{body:?} -> {}", r.status);
    }
}

#[tokio::test]
async fn logout_deletes_the_session_and_clears_the_cookie() {
    let server = serve(memory()).await;
    let mut c = Client::new(&server);
    c.login("bob", "battery staple").await;
    let cookie = c.cookie.clone().unwrap();
    let r = c.post("/logout").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.headers[header::LOCATION], "/");
    let removal = r.set_cookie().unwrap();
    assert!(
        removal.starts_with("id=;") && removal.contains("Max-Age=0"),
        "{removal}"
    );
    assert!(c.cookie.is_none());
    // Replaying the old cookie gets nothing.
    c.cookie = Some(cookie);
    let r = c.get("/me").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn profile_requires_login() {
    let server = serve(memory()).await;
    let mut c = Client::new(&server);
    let r = c.get("/profile").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (StatusCode::UNAUTHORIZED, "login required")
    );
    c.login("alice", "correct horse").await;
    let r = c.get("/profile").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (StatusCode::OK, r#"{"id":1,"username":"alice"}"#)
    );
}

#[tokio::test]
async fn count_counts_per_session_and_reads_send_no_cookie() {
    let server = serve(memory()).await;
    let mut a = Client::new(&server);
    let mut b = Client::new(&server);
    for n in 1..=3 {
        let r = a.get("/count").await;
        assert_eq!(
            r.body,
            format!("You have visited this page {n} time(s) in this session.")
        );
    }
    let r = b.get("/count").await;
    assert_eq!(
        r.body,
        "You have visited this page 1 time(s) in this session."
    );
    a.login("alice", "correct horse").await;
    let r = a.get("/me").await;
    assert!(
        r.set_cookie().is_none(),
        "a read-only request sets no cookie"
    );
    let cookie = r.headers.get(header::SET_COOKIE);
    assert!(cookie.is_none());
}

#[tokio::test]
async fn session_cookie_has_the_contract_attributes() {
    let server = serve(memory()).await;
    let mut c = Client::new(&server);
    let r = c.get("/count").await;
    let set = r.set_cookie().unwrap();
    for attr in [
        "HttpOnly",
        "SameSite=Lax",
        "Path=/",
        "Secure",
        "Max-Age=7200",
    ] {
        assert!(set.contains(attr), "{set} lacks {attr}");
    }
}

#[tokio::test]
async fn healthz_answers_ok_and_creates_no_session() {
    let server = serve(memory()).await;
    let mut c = Client::new(&server);
    let r = c.get("/healthz").await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "ok"));
    assert!(r.set_cookie().is_none());
}

#[tokio::test]
async fn hostile_cookies_never_give_a_server_error() {
    let server = serve(memory()).await;
    let mut c = Client::new(&server);
    for value in [
        "",
        "x",
        "=;=;",
        &"A".repeat(8000),
        "id=\u{ff}\u{e9}",
        "id=%00%ff",
    ] {
        c.cookie = Some(value.to_owned());
        for path in ["/count", "/me", "/profile"] {
            let r = c.get(path).await;
            assert!(
                !r.status.is_server_error(),
                "{path} {value:?}: {}",
                r.status
            );
        }
    }
}

fn demo_binary() -> Command {
    Command::new(env!("CARGO_BIN_EXE_keyfob-demo"))
}

#[test]
fn bad_configuration_exits_non_zero_with_a_one_line_reason() {
    for args in [
        vec!["--store", "nosuch://x"],
        vec!["--addr", "not-an-address"],
        vec!["--idle-timeout", "soon"],
    ] {
        let out = demo_binary().args(&args).output().unwrap();
        assert!(!out.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn startup_prints_the_address_and_the_store() {
    let mut child = demo_binary()
        .args(["--addr", "127.0.0.1:0", "--store", "memory"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        line.starts_with("keyfob-demo listening on http://127.0.0.1:"),
        "{line}"
    );
    assert!(line.contains("(store: memory)"), "{line}");
}

/// A demo process started from the real binary; killed on drop.
struct Process {
    child: std::process::Child,
    server: Server,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_demo(store: &str, dir: &std::path::Path) -> Process {
    let mut child = demo_binary()
        .args(["--addr", "127.0.0.1:0", "--store", store])
        .arg("--key-file")
        .arg(dir.join("demo.key"))
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in start-up line {line:?}"));
    Process {
        server: Server {
            base: format!("http://{addr}"),
        },
        child,
    }
}

fn scratch_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("keyfob-demo-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn server_url(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: run the suite through scripts/test, which starts the server")
    })
}

#[tokio::test]
async fn restarted_demo_on_the_same_sqlite_file_still_knows_the_session() {
    let dir = scratch_dir("restart");
    let url = format!("sqlite://{}", dir.join("demo.db").display());
    let mut c;
    {
        let demo = spawn_demo(&url, &dir);
        c = Client::new(&demo.server);
        c.login("alice", "correct horse").await;
        assert_eq!(c.get("/me").await.status, StatusCode::OK);
    }
    let demo = spawn_demo(&url, &dir);
    c.base = demo.server.base.clone();
    let r = c.get("/me").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (StatusCode::OK, r#"{"id":1,"username":"alice"}"#)
    );
}

/// Log in through one replica, use the session through the other, log out
/// through the other: the first sees 401.
async fn two_replicas_share_sessions(store: &str, name: &str) {
    let dir = scratch_dir(name);
    let one = spawn_demo(store, &dir);
    let two = spawn_demo(store, &dir);
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
    c.base = one.server.base.clone();
    let r = c.get("/count").await;
    assert_eq!(
        r.body,
        "You have visited this page 2 time(s) in this session."
    );
    c.base = two.server.base.clone();
    assert_eq!(c.post("/logout").await.status, StatusCode::SEE_OTHER);
    c.base = one.server.base.clone();
    c.cookie = cookie;
    assert_eq!(c.get("/me").await.status, StatusCode::UNAUTHORIZED);
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
