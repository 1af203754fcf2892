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

use keyfob::{keys::Keyring, MemoryStore, SessionStore};
use keyfob_demo::config::Config;
use reqwest::{header, redirect::Policy, Method, StatusCode};

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
    let key_file = temp_path("startup");
    let mut child = demo_binary()
        .args(["--addr", "127.0.0.1:0", "--store", "memory", "--key-file"])
        .arg(&key_file)
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
    std::fs::remove_dir_all(key_file.parent().unwrap()).unwrap();
}

// ------------------------------------------------------- signed cookie routes

async fn serve_with(store: Arc<dyn SessionStore>, keys: Keyring, config: &Config) -> Server {
    let router = keyfob_demo::app_with_keys(store, keys, config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    Server {
        base: format!("http://{addr}"),
    }
}

/// One request with exactly the `Cookie` header given.
async fn with_cookie(
    server: &Server,
    method: reqwest::Method,
    path: &str,
    cookie: Option<&str>,
    form: Option<&str>,
) -> Reply {
    let http = reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .unwrap();
    let mut req = http.request(method, format!("{}{path}", server.base));
    if let Some(c) = cookie {
        req = req.header(header::COOKIE, c);
    }
    if let Some(f) = form {
        req = req
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(f.to_owned());
    }
    let res = req.send().await.unwrap();
    Reply {
        status: res.status(),
        headers: res.headers().clone(),
        body: res.text().await.unwrap(),
    }
}

impl Reply {
    /// The whole `Set-Cookie` line for `name`.
    fn set_cookie_named(&self, name: &str) -> Option<String> {
        self.headers
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with(&format!("{name}=")))
            .map(str::to_owned)
    }

    /// `name=value` of the cookie set for `name`, ready for a `Cookie` header.
    fn pair(&self, name: &str) -> Option<String> {
        let line = self.set_cookie_named(name)?;
        Some(line.split(';').next().unwrap().to_owned())
    }
}

fn test_keys() -> Keyring {
    Keyring::generate().unwrap()
}

#[tokio::test]
async fn signed_theme_cookie_reads_back_and_forgeries_read_as_no_theme() {
    let server = serve_with(memory(), test_keys(), &Config::default()).await;
    let r = with_cookie(&server, Method::GET, "/set", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    let theme = r.pair("theme").expect("/set sets the signed cookie theme");
    assert_ne!(theme, "theme=dark", "the value is signed");
    let r = with_cookie(&server, Method::GET, "/read", Some(&theme), None).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (StatusCode::OK, "theme = dark")
    );
    let value = theme.trim_start_matches("theme=");
    let mut flipped = value.as_bytes().to_vec();
    flipped[3] ^= 1;
    let forgeries = [
        None,
        Some("theme=dark".to_owned()),
        Some(format!("theme={}", String::from_utf8(flipped).unwrap())),
        Some(format!("theme={}", &value[..value.len() - 1])),
        Some(format!("theme={value}A")),
        Some(format!("font={value}")),
        Some(format!("{theme}; {theme}")),
    ];
    for cookie in forgeries {
        let r = with_cookie(&server, Method::GET, "/read", cookie.as_deref(), None).await;
        assert_eq!(
            (r.status, r.body.as_str()),
            (StatusCode::OK, "no theme set"),
            "{cookie:?}"
        );
    }
    // Another server's keyring does not verify it.
    let other = serve_with(memory(), test_keys(), &Config::default()).await;
    let r = with_cookie(&other, Method::GET, "/read", Some(&theme), None).await;
    assert_eq!(r.body, "no theme set");
}

#[tokio::test]
async fn signed_login_whoami_and_logout_follow_the_contract() {
    let server = serve_with(memory(), test_keys(), &Config::default()).await;
    let r = with_cookie(&server, Method::GET, "/signed/whoami", None, None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = with_cookie(
        &server,
        Method::POST,
        "/signed/login",
        None,
        Some("user_id=42"),
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.headers[header::LOCATION], "/dashboard");
    let line = r.set_cookie_named("session_user").unwrap();
    for attr in [
        "HttpOnly",
        "Secure",
        "SameSite=Lax",
        "Path=/",
        "Max-Age=604800",
    ] {
        assert!(line.contains(attr), "{line} lacks {attr}");
    }
    let user = r.pair("session_user").unwrap();
    let r = with_cookie(&server, Method::GET, "/signed/whoami", Some(&user), None).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (StatusCode::OK, "Logged in as 42")
    );
    let value = user.trim_start_matches("session_user=");
    for forged in [
        "session_user=42".to_owned(),
        format!("session_user={}", value.replacen('A', "B", 1)),
        format!("session_user={}x", value),
        format!("theme={value}"),
    ] {
        // `replacen` may find no 'A' and leave the genuine value: skip that one.
        if forged == user {
            continue;
        }
        let r = with_cookie(&server, Method::GET, "/signed/whoami", Some(&forged), None).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{forged}");
    }
    let r = with_cookie(&server, Method::POST, "/signed/logout", Some(&user), None).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.headers[header::LOCATION], "/");
    let removal = r.set_cookie_named("session_user").unwrap();
    assert!(
        removal.starts_with("session_user=;") && removal.contains("Max-Age=0"),
        "{removal}"
    );
    // Bad input is a 4xx, never a 500.
    for form in ["", "user_id=", "user_id=a%20b", "nope=1"] {
        let r = with_cookie(&server, Method::POST, "/signed/login", None, Some(form)).await;
        assert!(r.status.is_client_error(), "{form:?}: {}", r.status);
    }
}

#[tokio::test]
async fn signed_user_cookie_replayed_after_seven_days_is_refused() {
    let clock = keyfob::ManualClock::new();
    let keys = test_keys().with_clock(clock.clone());
    let server = serve_with(memory(), keys, &Config::default()).await;
    let r = with_cookie(
        &server,
        Method::POST,
        "/signed/login",
        None,
        Some("user_id=7"),
    )
    .await;
    let user = r.pair("session_user").unwrap();
    clock.advance(keyfob::time::Duration::days(7) - keyfob::time::Duration::seconds(1));
    let r = with_cookie(&server, Method::GET, "/signed/whoami", Some(&user), None).await;
    assert_eq!(r.status, StatusCode::OK);
    clock.advance(keyfob::time::Duration::seconds(1));
    let r = with_cookie(&server, Method::GET, "/signed/whoami", Some(&user), None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

fn temp_path(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("keyfob-demo-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("demo.key")
}

#[tokio::test]
async fn restart_with_the_same_key_file_keeps_signed_cookies_valid() {
    let path = temp_path("restart");
    let first = serve_with(
        memory(),
        Keyring::load_or_create(&path).unwrap(),
        &Config::default(),
    )
    .await;
    let r = with_cookie(
        &first,
        Method::POST,
        "/signed/login",
        None,
        Some("user_id=9"),
    )
    .await;
    let user = r.pair("session_user").unwrap();
    let second = serve_with(
        memory(),
        Keyring::load_or_create(&path).unwrap(),
        &Config::default(),
    )
    .await;
    let r = with_cookie(&second, Method::GET, "/signed/whoami", Some(&user), None).await;
    assert_eq!(r.body, "Logged in as 9");
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}

#[tokio::test]
async fn signed_user_cookie_under_a_rotated_key_is_reissued() {
    let (old_path, new_path) = (temp_path("rotate-old"), temp_path("rotate-new"));
    let old = Keyring::load_or_create(&old_path).unwrap();
    let new_key = Keyring::load_or_create(&new_path).unwrap();
    let server = serve_with(memory(), old, &Config::default()).await;
    let r = with_cookie(
        &server,
        Method::POST,
        "/signed/login",
        None,
        Some("user_id=5"),
    )
    .await;
    let user = r.pair("session_user").unwrap();
    // Rotation: the new key first, the old one kept to verify.
    let text = |p: &std::path::Path| std::fs::read_to_string(p).unwrap();
    let rotated = Keyring::from_base64(&format!("{}{}", text(&new_path), text(&old_path))).unwrap();
    let server = serve_with(memory(), rotated, &Config::default()).await;
    let r = with_cookie(&server, Method::GET, "/signed/whoami", Some(&user), None).await;
    assert_eq!(r.body, "Logged in as 5");
    let reissued = r.pair("session_user").expect("re-issued under the new key");
    let only_new = serve_with(memory(), new_key, &Config::default()).await;
    let r = with_cookie(
        &only_new,
        Method::GET,
        "/signed/whoami",
        Some(&reissued),
        None,
    )
    .await;
    assert_eq!(r.body, "Logged in as 5");
    let r = with_cookie(&only_new, Method::GET, "/signed/whoami", Some(&user), None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    for p in [old_path, new_path] {
        std::fs::remove_dir_all(p.parent().unwrap()).unwrap();
    }
}

#[tokio::test]
async fn cookie_store_runs_login_count_and_logout_without_server_sessions() {
    let config = Config {
        store: keyfob_demo::config::StoreUrl::Cookie(Box::new(
            keyfob_demo::config::StoreUrl::Memory,
        )),
        ..Config::default()
    };
    let server = serve_with(memory(), test_keys(), &config).await;
    let mut c = Client::new(&server);
    for n in 1..=2 {
        let r = c.get("/count").await;
        assert_eq!(
            r.body,
            format!("You have visited this page {n} time(s) in this session.")
        );
    }
    let before = c.cookie.clone().unwrap();
    let r = c.login("alice", "correct horse").await;
    assert_eq!(r.body, "logged in");
    let cookie = c.cookie.clone().unwrap();
    assert_ne!(cookie, before);
    assert!(!cookie.contains("alice"), "the session is encrypted");
    let r = c.get("/me").await;
    assert_eq!(r.body, r#"{"id":1,"username":"alice"}"#);
    assert!(r.set_cookie().is_none(), "a read sends no cookie");
    // The pre-login cookie was retired by the rotation.
    c.cookie = Some(before);
    assert_eq!(c.get("/me").await.status, StatusCode::UNAUTHORIZED);
    c.cookie = Some(cookie.clone());
    let r = c.post("/logout").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert!(r.set_cookie().unwrap().contains("Max-Age=0"));
    // Replaying the old cookie after logout: refused (revocation mark).
    c.cookie = Some(cookie);
    assert_eq!(c.get("/me").await.status, StatusCode::UNAUTHORIZED);
}

#[test]
fn first_run_creates_the_key_file_with_mode_0600_and_a_malformed_one_exits() {
    use std::os::unix::fs::PermissionsExt as _;
    let path = temp_path("first-run");
    let mut child = demo_binary()
        .args(["--addr", "127.0.0.1:0", "--store", "memory", "--key-file"])
        .arg(&path)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(line.starts_with("keyfob-demo listening"), "{line}");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let key = std::fs::read_to_string(&path).unwrap();
    assert_eq!(Keyring::from_base64(&key).map(|_| ()).ok(), Some(()));
    for bad in ["not base64 at all!", "AAAA", ""] {
        std::fs::write(&path, bad).unwrap();
        let out = demo_binary()
            .args(["--addr", "127.0.0.1:0", "--key-file"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{bad:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.trim_end().lines().count(), 1, "{bad:?}: {stderr}");
        assert!(stderr.contains("key"), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
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
        let demo = spawn_demo("cookie", &dir);
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
    let demo = spawn_demo("cookie", &dir);
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
    let demo = spawn_demo("memory", &dir);
    let http = reqwest::Client::new();
    let url = format!("{}/login", demo.server.base);
    let flood = (0..keyfob_demo::users::QUEUE + 150).map(|i| {
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
    let long = "x".repeat(keyfob_demo::users::MAX_PASSWORD_BYTES + 1);
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

// ------------------------------------------------ CSRF and the user's sessions

impl Client {
    /// `GET /form` and the token it hands out.
    async fn token(&mut self) -> String {
        let r = self.get("/form").await;
        assert_eq!(r.status, StatusCode::OK);
        r.body
            .strip_prefix("csrf token: ")
            .expect("`csrf token: TOKEN`")
            .to_owned()
    }

    async fn request(
        &mut self,
        method: reqwest::Method,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.send(req).await
    }

    async fn transfer(&mut self, headers: &[(&str, &str)]) -> Reply {
        self.request(reqwest::Method::POST, "/transfer", headers)
            .await
    }

    async fn sessions(&mut self) -> Vec<serde_json::Value> {
        let r = self.get("/sessions").await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        serde_json::from_str(&r.body).unwrap()
    }
}

fn refused(r: &Reply) -> bool {
    r.status == StatusCode::FORBIDDEN && r.body == "CSRF check failed"
}

#[tokio::test]
async fn transfer_accepts_the_form_token_in_the_header_and_in_a_form_field() {
    let server = serve(memory()).await;
    let mut c = Client::new(&server);
    let token = c.token().await;
    assert!(!token.contains(' ') && !token.is_empty());
    let r = c.transfer(&[("x-csrf-token", &token)]).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (StatusCode::OK, "transfer accepted")
    );
    let req = c
        .http
        .post(format!("{}/transfer", c.base))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(format!("amount=10&csrf_token={token}"));
    let r = c.send(req).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (StatusCode::OK, "transfer accepted")
    );
}

#[tokio::test]
async fn transfer_refuses_missing_malformed_wrong_and_other_sessions_tokens() {
    let server = serve(memory()).await;
    let mut a = Client::new(&server);
    let mut b = Client::new(&server);
    let token_a = a.token().await;
    let token_b = b.token().await;
    let huge = "A".repeat(100 * 1024);
    let mut wrong = token_a.clone().into_bytes();
    wrong[70] = if wrong[70] == b'A' { b'B' } else { b'A' };
    let wrong = String::from_utf8(wrong).unwrap();
    assert!(refused(&a.transfer(&[]).await));
    for bad in [
        "x",
        &token_a[1..],
        "!".repeat(86).as_str(),
        &huge,
        &wrong,
        &token_b,
    ] {
        let r = a.transfer(&[("x-csrf-token", bad)]).await;
        assert!(refused(&r), "{:.20}: {} {}", bad, r.status, r.body);
    }
    // No session at all: nothing to match.
    let mut anon = Client::new(&server);
    assert!(refused(&anon.transfer(&[("x-csrf-token", &token_a)]).await));
    // The real one still works.
    assert_eq!(
        a.transfer(&[("x-csrf-token", &token_a)]).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn valid_token_sent_cross_site_or_from_a_lookalike_origin_is_refused() {
    let server = serve(memory()).await;
    let mut c = Client::new(&server);
    let token = c.token().await;
    let r = c
        .transfer(&[("x-csrf-token", &token), ("sec-fetch-site", "cross-site")])
        .await;
    assert!(refused(&r));
    for origin in [
        "https://app.example.com.evil.com",
        "null",
        &format!("{}.evil.com", server.base),
    ] {
        let r = c
            .transfer(&[("x-csrf-token", &token), ("origin", origin)])
            .await;
        assert!(refused(&r), "{origin}");
    }
    // Its own origin, as a browser on the page would send it, passes.
    let own = server.base.clone();
    let r = c
        .transfer(&[
            ("x-csrf-token", &token),
            ("origin", &own),
            ("sec-fetch-site", "same-origin"),
        ])
        .await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn cross_site_writes_are_refused_on_every_route_before_any_handler() {
    let server = serve(memory()).await;
    let mut c = Client::new(&server);
    let body = r#"{"username":"alice","password":"correct horse"}"#;
    for headers in [
        vec![("sec-fetch-site", "cross-site")],
        vec![("origin", "https://evil.example")],
    ] {
        let mut req = c
            .http
            .post(format!("{}/login", c.base))
            .header(header::CONTENT_TYPE, "application/json")
            .body(body);
        for (k, v) in &headers {
            req = req.header(*k, *v);
        }
        let r = c.send(req).await;
        assert!(refused(&r), "{headers:?}: {} {}", r.status, r.body);
        assert!(r.set_cookie().is_none());
    }
    // Without either header (a non-browser client), login needs no token.
    c.login("alice", "correct horse").await;
    let r = c
        .request(
            reqwest::Method::POST,
            "/logout",
            &[("sec-fetch-site", "cross-site")],
        )
        .await;
    assert!(refused(&r));
    assert_eq!(c.get("/me").await.status, StatusCode::OK, "still logged in");
    for method in [
        reqwest::Method::PUT,
        reqwest::Method::PATCH,
        reqwest::Method::DELETE,
    ] {
        let r = c
            .request(
                method.clone(),
                "/count",
                &[("origin", "https://evil.example")],
            )
            .await;
        assert!(refused(&r), "{method}");
    }
}

#[tokio::test]
async fn token_from_before_login_is_refused_after_login() {
    let server = serve(memory()).await;
    let mut c = Client::new(&server);
    let before = c.token().await;
    c.login("alice", "correct horse").await;
    assert!(refused(&c.transfer(&[("x-csrf-token", &before)]).await));
    let after = c.token().await;
    assert!(refused(&c.transfer(&[("x-csrf-token", &before)]).await));
    assert_eq!(
        c.transfer(&[("x-csrf-token", &after)]).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn login_as_alice_then_bob_in_one_session_leaves_none_of_alices_data() {
    let server = serve(memory()).await;
    let mut c = Client::new(&server);
    c.login("alice", "correct horse").await;
    c.get("/count").await;
    c.get("/count").await;
    let alices_token = c.token().await;
    c.login("bob", "battery staple").await;
    assert_eq!(c.get("/me").await.body, r#"{"id":2,"username":"bob"}"#);
    assert_eq!(
        c.get("/count").await.body,
        "You have visited this page 1 time(s) in this session."
    );
    assert!(refused(
        &c.transfer(&[("x-csrf-token", &alices_token)]).await
    ));
    // And alice has no session left to list.
    let mut alice = Client::new(&server);
    alice.login("alice", "correct horse").await;
    assert_eq!(alice.sessions().await.len(), 1);
}

#[tokio::test]
async fn sessions_lists_this_users_live_sessions_and_marks_the_current_one() {
    let server = serve(memory()).await;
    let mut anon = Client::new(&server);
    let r = anon.get("/sessions").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (StatusCode::UNAUTHORIZED, "login required")
    );
    let mut laptop = Client::new(&server);
    let mut phone = Client::new(&server);
    let mut bob = Client::new(&server);
    laptop.login("alice", "correct horse").await;
    phone.login("alice", "correct horse").await;
    bob.login("bob", "battery staple").await;
    let list = laptop.sessions().await;
    assert_eq!(list.len(), 2);
    assert_eq!(list.iter().filter(|s| s["current"] == true).count(), 1);
    for s in &list {
        let keys: Vec<&str> = s.as_object().unwrap().keys().map(String::as_str).collect();
        for k in ["handle", "created_at", "last_seen", "expires_at", "current"] {
            assert!(keys.contains(&k), "{s}");
        }
        // A handle presented as the cookie is no session.
        let mut thief = Client::new(&server);
        thief.cookie = Some(s["handle"].as_str().unwrap().to_owned());
        assert_eq!(thief.get("/me").await.status, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(bob.sessions().await.len(), 1);
}

#[tokio::test]
async fn revoke_others_logs_out_the_users_other_clients_and_keeps_this_one() {
    let server = serve(memory()).await;
    let mut laptop = Client::new(&server);
    let mut phone = Client::new(&server);
    let mut tablet = Client::new(&server);
    let mut bob = Client::new(&server);
    for c in [&mut laptop, &mut phone, &mut tablet] {
        c.login("alice", "correct horse").await;
    }
    bob.login("bob", "battery staple").await;
    // CSRF-protected: no token, no revocation.
    let r = laptop
        .request(reqwest::Method::POST, "/sessions/revoke-others", &[])
        .await;
    assert!(refused(&r));
    let token = laptop.token().await;
    let r = laptop
        .request(
            reqwest::Method::POST,
            "/sessions/revoke-others",
            &[("x-csrf-token", &token)],
        )
        .await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (StatusCode::OK, r#"{"revoked":2}"#)
    );
    assert_eq!(laptop.get("/me").await.status, StatusCode::OK);
    for c in [&mut phone, &mut tablet] {
        assert_eq!(c.get("/me").await.status, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(bob.get("/me").await.status, StatusCode::OK);
}

#[tokio::test]
async fn delete_session_ends_own_sessions_and_is_404_for_anyone_elses() {
    let server = serve(memory()).await;
    let mut laptop = Client::new(&server);
    let mut phone = Client::new(&server);
    let mut bob = Client::new(&server);
    laptop.login("alice", "correct horse").await;
    phone.login("alice", "correct horse").await;
    bob.login("bob", "battery staple").await;
    let bobs = bob.sessions().await[0]["handle"]
        .as_str()
        .unwrap()
        .to_owned();
    let phones = laptop
        .sessions()
        .await
        .into_iter()
        .find(|s| s["current"] == false)
        .unwrap()["handle"]
        .as_str()
        .unwrap()
        .to_owned();
    let token = laptop.token().await;
    let del = |h: &str| format!("/sessions/{h}");
    let r = laptop
        .request(
            reqwest::Method::DELETE,
            &del(&bobs),
            &[("x-csrf-token", &token)],
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(bob.get("/me").await.status, StatusCode::OK);
    for bad in ["nonsense", &"0".repeat(64)] {
        let r = laptop
            .request(
                reqwest::Method::DELETE,
                &del(bad),
                &[("x-csrf-token", &token)],
            )
            .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{bad}");
    }
    // Without the token: refused, the phone stays logged in.
    let r = laptop
        .request(reqwest::Method::DELETE, &del(&phones), &[])
        .await;
    assert!(refused(&r));
    assert_eq!(phone.get("/me").await.status, StatusCode::OK);
    let r = laptop
        .request(
            reqwest::Method::DELETE,
            &del(&phones),
            &[("x-csrf-token", &token)],
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(phone.get("/me").await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(laptop.get("/me").await.status, StatusCode::OK);
    assert_eq!(laptop.sessions().await.len(), 1);
}

#[tokio::test]
async fn html_login_form_redirects_to_the_dashboard_and_bad_passwords_stay_on_the_form() {
    let server = serve(memory()).await;
    let mut c = Client::new(&server);
    let r = c.get("/").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.contains("action=\"/login\""), "{}", r.body);
    assert_eq!(r.headers[header::CACHE_CONTROL], "no-store");
    let (http, base) = (c.http.clone(), c.base.clone());
    let form = |user: &str, pass: &str| {
        http.post(format!("{base}/login"))
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(format!(
                "username={user}&password={}",
                pass.replace(' ', "+")
            ))
    };
    let bad = form("alice", "nope");
    let r = c.send(bad).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(
        r.body.contains("Invalid username or password."),
        "{}",
        r.body
    );
    let good = form("alice", "correct horse");
    let r = c.send(good).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.headers[header::LOCATION], "/");
    let r = c.get("/").await;
    assert!(r.body.contains("Hello, alice"), "{}", r.body);
    assert!(r.body.contains("name=\"csrf_token\""));
}

#[tokio::test]
async fn dashboard_says_so_when_the_session_has_ended() {
    let server = serve(memory()).await;
    let mut c = Client::new(&server);
    c.login("alice", "correct horse").await;
    let cookie = c.cookie.clone();
    c.post("/logout").await;
    // A browser that kept the old cookie (another tab, a restore) sees why.
    c.cookie = cookie;
    let r = c.get("/").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.contains("Your session has ended"), "{}", r.body);
}

#[tokio::test]
async fn two_replicas_on_one_redis_cluster_share_sessions() {
    two_replicas_share_sessions(
        &server_url("KEYFOB_TEST_REDIS_CLUSTER_URL"),
        "redis-cluster-replicas",
    )
    .await;
}

#[tokio::test]
async fn two_replicas_on_one_redis_share_sessions() {
    two_replicas_share_sessions(&server_url("KEYFOB_TEST_REDIS_URL"), "redis-replicas").await;
}

#[tokio::test]
async fn two_replicas_on_one_mariadb_share_sessions() {
    two_replicas_share_sessions(&server_url("KEYFOB_TEST_MYSQL_URL"), "mysql-replicas").await;
}
// ------------------------------------------- moving sessions from tower-sessions

#[path = "http/migrate.rs"]
mod migrate;
