//! The demo under faults and hostile input: a store that goes away and comes
//! back, a process killed mid-write (real binary, real servers, loopback
//! only, bounded load), and the security events a full flow must log.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    unreachable_pub
)]

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use reqwest::{header, StatusCode};

#[path = "common/mod.rs"]
mod common;

use common::{scratch_dir, Client, Demo};

/// Resident memory (kB) and open file descriptors of a process.
fn rss_and_fds(pid: u32) -> (u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    (rss, fds)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A private PostgreSQL instance (`scripts/pg-instance`), stopped on drop.
struct PgInstance {
    dir: PathBuf,
    port: u16,
}

fn pg_instance(args: &[&str]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/pg-instance");
    let out = Command::new(script).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "pg-instance {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl PgInstance {
    fn start(name: &str) -> PgInstance {
        let dir = scratch_dir(name).join("pg");
        let port = free_port();
        let pg = PgInstance { dir, port };
        pg_instance(&["init", pg.dir()]);
        pg.up();
        pg
    }

    fn dir(&self) -> &str {
        self.dir.to_str().unwrap()
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn up(&self) {
        pg_instance(&["start", self.dir(), &self.port.to_string()]);
    }

    fn down(&self) {
        pg_instance(&["stop", self.dir(), "fast"]);
    }
}

impl Drop for PgInstance {
    fn drop(&mut self) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/pg-instance");
        let _ = Command::new(script)
            .args(["stop", self.dir(), "immediate"])
            .output();
    }
}

/// One answer seen under load.
struct Seen {
    client: usize,
    path: &'static str,
    sent: Instant,
    done: Instant,
    status: StatusCode,
    retry_after: Option<String>,
    set_cookie: Option<String>,
    /// The cookie the client sent.
    cookie: Option<String>,
    body: String,
}

const USERS: [(&str, &str, &str); 2] = [
    ("alice", "correct horse", r#"{"id":1,"username":"alice"}"#),
    ("bob", "battery staple", r#"{"id":2,"username":"bob"}"#),
];

/// `n` clients logged in, alternately as alice and bob.
async fn log_in(base: &str, n: usize) -> Vec<Client> {
    let mut logged_in = Vec::new();
    for i in 0..n {
        let (user, password, _) = USERS[i % 2];
        let mut c = Client::new(base);
        assert_eq!(c.login(user, password).await.status, StatusCode::OK);
        logged_in.push(c);
    }
    logged_in
}

/// Each client alternates `/me` and `/count` until `until` (bounded by
/// `max_requests` each), pausing `pause` between requests.
async fn load(
    logged_in: Vec<Client>,
    until: Instant,
    max_requests: usize,
    pause: Duration,
    seen: Arc<Mutex<Vec<Seen>>>,
) -> Vec<Client> {
    let mut tasks = Vec::new();
    for (i, mut c) in logged_in.into_iter().enumerate() {
        let seen = seen.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..max_requests {
                if Instant::now() >= until {
                    break;
                }
                let path = if n % 2 == 0 { "/me" } else { "/count" };
                let cookie = c.cookie.clone();
                let sent = Instant::now();
                let r = c.get(path).await;
                seen.lock().unwrap().push(Seen {
                    client: i,
                    path,
                    sent,
                    done: Instant::now(),
                    status: r.status,
                    retry_after: r.retry_after().map(str::to_owned),
                    set_cookie: r.cookie_value(),
                    cookie,
                    body: r.body,
                });
                tokio::time::sleep(pause).await;
            }
            c
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// Every answer under an outage is either the right user's data or a `503`
/// with `Retry-After`; nobody gets another's session or a fresh empty one;
/// a client's counter never goes back; and every request sent one second
/// after the store is back succeeds. Returns the slowest recovery.
fn check_outage(seen: &[Seen], clients: usize, back: Instant) -> Duration {
    let mut unavailable = 0;
    for s in seen {
        match s.status {
            StatusCode::OK => {
                if s.path == "/me" {
                    assert_eq!(
                        s.body,
                        USERS[s.client % 2].2,
                        "client {} got another's /me",
                        s.client
                    );
                }
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                unavailable += 1;
                assert_eq!(s.body, "session store unavailable");
                assert_eq!(s.retry_after.as_deref(), Some("1"));
            }
            other => panic!(
                "client {} {} answered {other}: {}",
                s.client, s.path, s.body
            ),
        }
        // The session ID is never replaced under a client (no new empty
        // session); a `Set-Cookie` may only refresh the same ID's Max-Age.
        assert!(
            s.set_cookie.is_none() || s.set_cookie == s.cookie,
            "client {} {} got a new session ID ({})",
            s.client,
            s.path,
            s.status
        );
    }
    assert!(unavailable > 0, "the outage was never seen: no 503 at all");
    let mut slowest = Duration::ZERO;
    for c in 0..clients {
        let mine: Vec<&Seen> = seen.iter().filter(|s| s.client == c).collect();
        let counts: Vec<u64> = mine
            .iter()
            .filter(|s| s.path == "/count" && s.status == StatusCode::OK)
            .map(|s| {
                s.body
                    .trim_start_matches("You have visited this page ")
                    .split(' ')
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap()
            })
            .collect();
        assert!(
            counts.windows(2).all(|w| w[0] < w[1]),
            "client {c} counter went back: {counts:?}"
        );
        let first_ok = mine
            .iter()
            .filter(|s| s.status == StatusCode::OK && s.done >= back)
            .map(|s| s.done)
            .min()
            .unwrap_or_else(|| panic!("client {c} never recovered"));
        slowest = slowest.max(first_ok - back);
        for s in mine
            .iter()
            .filter(|s| s.sent >= back + Duration::from_secs(1))
        {
            assert_eq!(
                s.status,
                StatusCode::OK,
                "client {c} {} still failing 1 s after the store returned",
                s.path
            );
        }
    }
    slowest
}

/// A store server the outage driver can stop and start (blocking calls).
trait Outage: Send + Sync + 'static {
    fn down(&self);
    fn up(&self);
}

impl Outage for PgInstance {
    fn down(&self) {
        PgInstance::down(self);
    }
    fn up(&self) {
        PgInstance::up(self);
    }
}

/// Runs the demo on `store`, puts bounded load on it (four clients, twelve
/// seconds), stops the server 1.5 s in and starts it again 6 s later, then
/// checks the answers ([`check_outage`]), that the process is alive and
/// did not leak descriptors or memory, and reports the recovery time.
async fn outage_under_load(name: &str, store: &str, server: Arc<dyn Outage>) {
    let dir = scratch_dir(&format!("{name}-outage-demo"));
    let mut demo = Demo::spawn(store, &dir);
    let clients = 4;
    let seen = Arc::new(Mutex::new(Vec::new()));

    // Warm up: the pool fills and the logins' Argon2 buffers are in place,
    // so the leak check compares like with like.
    let logged_in = log_in(&demo.server.base, clients).await;
    let logged_in = load(
        logged_in,
        Instant::now() + Duration::from_secs(1),
        200,
        Duration::from_millis(5),
        seen.clone(),
    )
    .await;
    let (rss_before, fds_before) = rss_and_fds(demo.pid());
    seen.lock().unwrap().clear();

    let until = Instant::now() + Duration::from_secs(12);
    let runner = tokio::spawn(load(
        logged_in,
        until,
        2000,
        Duration::from_millis(5),
        seen.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let s = server.clone();
    tokio::task::spawn_blocking(move || s.down()).await.unwrap();
    let down_at = Instant::now();
    // Longer than the store timeout (5 s), so a store that hangs rather than
    // refuses is seen failing closed too.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let mut probe = Client::new(&demo.server.base);
    assert_eq!(
        probe.get("/healthz").await.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "/healthz while the store is down"
    );
    let s = server.clone();
    let back = tokio::task::spawn_blocking(move || {
        s.up();
        Instant::now()
    })
    .await
    .unwrap();
    // /healthz turns 200 again within a second of the store's return.
    let mut healthy = false;
    while back.elapsed() < Duration::from_secs(1) {
        if probe.get("/healthz").await.status == StatusCode::OK {
            healthy = back.elapsed() <= Duration::from_secs(1);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        healthy,
        "/healthz not 200 within a second of the store's return"
    );
    runner.await.unwrap();

    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let during = seen
        .iter()
        .filter(|s| s.sent >= down_at && s.done < back)
        .count();
    let unavailable = seen
        .iter()
        .filter(|s| s.status == StatusCode::SERVICE_UNAVAILABLE)
        .count();
    let slowest = check_outage(&seen, clients, back);
    assert!(demo.alive(), "the demo died");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (rss_after, fds_after) = rss_and_fds(demo.pid());
    eprintln!(
        "{name} outage: {} answers, {} of them 503 ({} sent and answered during the outage), slowest recovery {:?} after the server accepted connections; RSS {} -> {} kB, fds {} -> {}",
        seen.len(),
        unavailable,
        during,
        slowest,
        rss_before,
        rss_after,
        fds_before,
        fds_after
    );
    assert!(
        slowest <= Duration::from_secs(1),
        "recovery took {slowest:?}"
    );
    assert!(
        fds_after <= fds_before + 4,
        "file descriptors leaked: {fds_before} -> {fds_after}"
    );
    assert!(
        rss_after < rss_before + 64 * 1024,
        "RSS grew {rss_before} -> {rss_after} kB"
    );
    let mut c = Client::new(&demo.server.base);
    assert_eq!(c.get("/healthz").await.status, StatusCode::OK);
}

/// PostgreSQL stopped under load and started again: fail closed with `503`,
/// then recover by itself within a second, without a restart or a leak.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_under_load_fails_closed_and_recovers_within_a_second() {
    let pg = Arc::new(PgInstance::start("pg-outage"));
    let url = pg.url();
    outage_under_load("postgres", &url, pg).await;
}

/// A private standalone Redis (a child process) with an append-only file
/// synced on every write, so sessions survive the restart and the outage
/// is only an outage; killed on drop.
struct RedisInstance {
    dir: PathBuf,
    port: u16,
    child: Mutex<Option<std::process::Child>>,
}

impl RedisInstance {
    fn start(name: &str) -> RedisInstance {
        let r = RedisInstance {
            dir: scratch_dir(name),
            port: free_port(),
            child: Mutex::new(None),
        };
        Outage::up(&r);
        r
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Outage for RedisInstance {
    fn down(&self) {
        if let Some(mut c) = self.child.lock().unwrap().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn up(&self) {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .arg("--dir")
            .arg(&self.dir)
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (scripts/services/redis.sh installs it)");
        *self.child.lock().unwrap() = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let pong = Command::new("redis-cli")
                .args(["-p", &self.port.to_string(), "ping"])
                .output()
                .is_ok_and(|o| o.stdout.starts_with(b"PONG"));
            if pong {
                return;
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisInstance {
    fn drop(&mut self) {
        self.down();
    }
}

/// Redis killed under load and started again (its append-only file keeps
/// the sessions): fail closed with `503`, recover within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_under_load_fails_closed_and_recovers_within_a_second() {
    let redis = Arc::new(RedisInstance::start("redis-outage"));
    let url = redis.url();
    outage_under_load("redis", &url, redis).await;
}

impl Client {
    /// `GET /count` → the counter, or `None` when the request did not get a
    /// complete answer (the server died under it).
    async fn try_count(&mut self) -> Option<u64> {
        let req = self.http.get(format!("{}/count", self.base));
        let req = match &self.cookie {
            Some(c) => req.header(header::COOKIE, format!("id={c}")),
            None => req,
        };
        let res = req.send().await.ok()?;
        if res.status() != StatusCode::OK {
            return None;
        }
        let body = res.text().await.ok()?;
        body.trim_start_matches("You have visited this page ")
            .split(' ')
            .next()?
            .parse()
            .ok()
    }
}

async fn integrity_check(db: &Path) -> String {
    use sqlx::ConnectOptions as _;
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(db)
        .connect()
        .await
        .unwrap();
    sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

/// SIGKILL in the middle of a stream of acknowledged `/count` writes on
/// SQLite: after a restart every acknowledged write is there and the file
/// passes `PRAGMA integrity_check`. Three rounds, each killed at a different
/// point of the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_write_stream_loses_no_acknowledged_count_on_sqlite() {
    let dir = scratch_dir("sigkill");
    let db = dir.join("demo.db");
    let url = format!("sqlite://{}", db.display());
    let mut demo = Demo::spawn(&url, &dir);
    let mut c = Client::new(&demo.server.base);
    assert_eq!(c.get("/count").await.status, StatusCode::OK);
    let mut acked = 1;
    for round in 0..3u64 {
        // Four writers on the one session keep writes in flight at the kill.
        let acks = Arc::new(Mutex::new(Vec::new()));
        let stop = Instant::now() + Duration::from_secs(30);
        let mut writers = Vec::new();
        for _ in 0..4 {
            let mut w = c.clone();
            let acks = acks.clone();
            writers.push(tokio::spawn(async move {
                while Instant::now() < stop {
                    match w.try_count().await {
                        Some(n) => acks.lock().unwrap().push(n),
                        None => break,
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(400 + 300 * round)).await;
        demo.child.kill().unwrap();
        demo.child.wait().unwrap();
        for w in writers {
            w.await.unwrap();
        }
        let acks = std::mem::take(&mut *acks.lock().unwrap());
        assert!(
            acks.len() > 10,
            "round {round}: too few writes before the kill ({})",
            acks.len()
        );
        let last = acks.iter().copied().max().unwrap();
        assert!(last > acked);
        acked = last;

        assert_eq!(integrity_check(&db).await, "ok", "round {round}");
        demo = Demo::spawn(&url, &dir);
        c.base = demo.server.base.clone();
        let after = c.try_count().await.unwrap();
        // Every acknowledged write survived; at most the writes in flight at
        // the kill (never acknowledged) may have landed as well.
        assert!(
            after > acked && after <= acked + 1 + 4,
            "round {round}: last acknowledged {acked}, after restart {after}"
        );
        eprintln!("sigkill round {round}: {} acknowledged writes, last {acked}, next after restart {after}", acks.len());
        acked = after;
    }
}

/// Everything the `tracing` subscriber printed, for the security-events test.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct Answer {
    status: StatusCode,
    cookies: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn cookie(&self, name: &str) -> String {
        self.cookies
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no {name} cookie set"))
    }
}

/// One request straight into a router (no network, so the whole flow runs
/// on this thread, under this thread's subscriber).
async fn call(
    app: &axum::Router,
    method: &str,
    path: &str,
    cookie: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    use tower::ServiceExt as _;
    let mut req = axum::http::Request::builder().method(method).uri(path);
    if !cookie.is_empty() {
        req = req.header("cookie", cookie);
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = app
        .clone()
        .oneshot(req.body(axum::body::Body::from(body.to_owned())).unwrap())
        .await
        .unwrap();
    let cookies = res
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next()?.split_once('='))
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
        .collect();
    let status = res.status();
    let body = axum::body::to_bytes(res.into_body(), 1 << 20)
        .await
        .unwrap();
    Answer {
        status,
        cookies,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// Flips one character in the middle of a cookie value (stays base64url).
fn tamper(value: &str) -> String {
    let mut b = value.as_bytes().to_vec();
    let i = b.len() / 2;
    b[i] = if b[i] == b'A' { b'B' } else { b'A' };
    String::from_utf8(b).unwrap()
}

/// A full flow through the demo (server-side sessions, cookie sessions) and
/// a layer with signed IDs logs every security event, each with a short
/// handle where there is a session, and never a raw cookie value.
#[tokio::test]
async fn security_events_are_logged_with_a_short_handle_and_never_a_cookie_value() {
    use keyfob::{keys::Keyring, MemoryStore, Session, SessionLayer};
    use keyfob_demo::config::{Config, StoreUrl};

    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("trace"))
        .with_ansi(false)
        .with_writer({
            let c = captured.clone();
            move || c.clone()
        })
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let mut secrets: Vec<String> = Vec::new();

    let config = Config {
        store: StoreUrl::Memory,
        insecure_cookies: true,
        ..Config::default()
    };
    let app = keyfob_demo::app(Arc::new(MemoryStore::new()), &config).unwrap();
    let json = [("content-type", "application/json")];
    let login = r#"{"username":"alice","password":"correct horse"}"#;

    // session.created; the login starts a fresh session (the old one deleted).
    let r = call(&app, "GET", "/count", "", &[], "").await;
    let first = r.cookie("id");
    let r = call(&app, "POST", "/login", &format!("id={first}"), &json, login).await;
    assert_eq!(r.status, StatusCode::OK);
    let id = r.cookie("id");
    let me = format!("id={id}");
    // csrf.refused: a wrong token in this session.
    let r = call(&app, "GET", "/form", &me, &[], "").await;
    let token = r.body.trim_start_matches("csrf token: ").to_owned();
    let r = call(
        &app,
        "POST",
        "/transfer",
        &me,
        &[("x-csrf-token", &tamper(&token))],
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // cookie.tampered: the signed theme cookie with one character changed.
    let theme = call(&app, "GET", "/set", "", &[], "").await.cookie("theme");
    let bad_theme = tamper(&theme);
    let r = call(&app, "GET", "/read", &format!("theme={bad_theme}"), &[], "").await;
    assert_eq!(r.body, "no theme set");
    // session.malformed: not an ID at all.
    let r = call(&app, "GET", "/me", "id=not-a-session-id", &[], "").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // session.deleted by the logout, then session.unknown on replay.
    let r = call(&app, "POST", "/logout", &me, &[], "").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let r = call(&app, "GET", "/me", &me, &[], "").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    secrets.extend([first, id, token, theme, bad_theme]);

    // session.tampered: a cookie session with one character changed.
    let keys = Keyring::generate().unwrap();
    let cookie_config = Config {
        store: StoreUrl::Cookie(Box::new(StoreUrl::Memory)),
        ..config.clone()
    };
    let sealed_app =
        keyfob_demo::app_with_keys(Arc::new(MemoryStore::new()), keys, &cookie_config).unwrap();
    let sealed = call(&sealed_app, "GET", "/count", "", &[], "")
        .await
        .cookie("id");
    let bad_sealed = tamper(&sealed);
    let r = call(
        &sealed_app,
        "GET",
        "/count",
        &format!("id={bad_sealed}"),
        &[],
        "",
    )
    .await;
    assert!(r.body.contains(" 1 time"), "{}", r.body);
    // session.tampered: a signed session ID whose tag does not verify.
    let signed_app = axum::Router::new()
        .route(
            "/",
            axum::routing::get(|s: Session| async move {
                s.insert("k", 1).await?;
                Ok::<_, keyfob::Error>("ok")
            }),
        )
        .layer(
            SessionLayer::builder(MemoryStore::new())
                .with_signed_ids(Keyring::generate().unwrap())
                .build()
                .unwrap(),
        );
    let signed = call(&signed_app, "GET", "/", "", &[], "")
        .await
        .cookie("id");
    let bad_signed = tamper(&signed);
    call(
        &signed_app,
        "GET",
        "/",
        &format!("id={bad_signed}"),
        &[],
        "",
    )
    .await;
    // session.expired: idle past the timeout (on a clock the test moves).
    let clock = keyfob::ManualClock::new();
    let expiring_app = axum::Router::new()
        .route(
            "/",
            axum::routing::get(|s: Session| async move {
                s.insert("k", 1).await?;
                Ok::<_, keyfob::Error>("ok")
            }),
        )
        .route(
            "/cycle",
            axum::routing::get(|s: Session| async move {
                s.cycle_id().await?;
                Ok::<_, keyfob::Error>("ok")
            }),
        )
        .layer(
            SessionLayer::builder(MemoryStore::new())
                .with_clock(clock.clone())
                .build()
                .unwrap(),
        );
    let before_cycle = call(&expiring_app, "GET", "/", "", &[], "")
        .await
        .cookie("id");
    // session.rotated: a new ID for the same session (privilege change).
    let idle = call(
        &expiring_app,
        "GET",
        "/cycle",
        &format!("id={before_cycle}"),
        &[],
        "",
    )
    .await
    .cookie("id");
    clock.advance(keyfob::time::Duration::hours(3));
    call(&expiring_app, "GET", "/", &format!("id={idle}"), &[], "").await;
    secrets.extend([sealed, bad_sealed, signed, bad_signed, before_cycle, idle]);

    let out = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    for event in [
        "session.created",
        "session.rotated",
        "session.deleted",
        "session.expired",
        "session.unknown",
        "session.malformed",
        "session.tampered",
        "cookie.tampered",
        "csrf.refused",
    ] {
        let line = out
            .lines()
            .find(|l| l.contains(&format!("event=\"{event}\"")))
            .unwrap_or_else(|| panic!("no {event} event in:\n{out}"));
        if [
            "session.created",
            "session.rotated",
            "session.deleted",
            "session.expired",
            "session.unknown",
        ]
        .contains(&event)
        {
            // `handle=…`, or `from=… to=…` for a rotation.
            let handle = line
                .split("handle=")
                .nth(1)
                .or_else(|| line.split(" to=").nth(1))
                .unwrap_or_else(|| panic!("{event} without a handle: {line}"));
            let handle: String = handle.chars().take_while(char::is_ascii_hexdigit).collect();
            assert_eq!(handle.len(), 8, "{event}: not a short handle: {line}");
        }
    }
    for secret in &secrets {
        assert!(secret.len() >= 16, "{secret}");
        assert!(
            !out.contains(secret.as_str()),
            "a raw cookie value was logged:\n{out}"
        );
    }
    assert!(
        !out.to_ascii_lowercase().contains("cookie: "),
        "a Cookie header was logged:\n{out}"
    );
}
