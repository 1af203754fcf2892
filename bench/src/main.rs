//! Load-benchmark server for keyfob and tower-sessions (shared/spec/bench-http.md).
//!
//! ```text
//! keyfob-bench serve --impl keyfob|tower-sessions --store memory|sqlite|postgres|mysql|redis
//!                    --port PORT [--url DATABASE_URL]
//! keyfob-bench login --port PORT --n N --out COOKIES     (N logins over HTTP, cookies to a file)
//! keyfob-bench seed  --port PORT --n N --out COOKIES     (keyfob memory store seeded directly,
//!                                                         RSS before/after printed, then serve)
//! keyfob-bench invalidation --url POSTGRES_OR_REDIS_URL [--n N]
//!                                        (near-cache invalidation latency between two
//!                                         stores, p50/p99)
//! ```
//!
//! `KEYFOB_BENCH_NO_NEAR_CACHE=1` serves keyfob's Redis store (a
//! `redis://` or `redis+cluster://` URL) without its near cache.
//!
//! Both implementations get the same cookie settings: name `id`, HttpOnly,
//! SameSite=Lax, not Secure, idle expiry 2 h (and no absolute cap, as
//! tower-sessions has none). `/bare` and `/_stats` sit outside the session layer.
//! keyfob's store is wrapped in a counter of store calls, read at `/_stats`.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    str::FromStr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration as StdDuration,
};

use axum::{
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use keyfob::{
    store::{BoxFuture, Created, OwnedSession, Updated},
    Handle, Record, SessionStore, Update,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use time::{Duration, OffsetDateTime};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct User {
    id: u64,
    username: String,
}

static NEXT_USER: AtomicU64 = AtomicU64::new(1);

fn next_user() -> User {
    let id = NEXT_USER.fetch_add(1, Ordering::Relaxed);
    User {
        id,
        username: format!("user{id}"),
    }
}

async fn bare() -> &'static str {
    "ok"
}

// ---------------------------------------------------------------- keyfob

const USER: keyfob::Key<User> = keyfob::Key::new("user");
const COUNTER: keyfob::Key<usize> = keyfob::Key::new("counter");

async fn k_read(session: keyfob::Session) -> Result<Response, keyfob::Error> {
    Ok(match session.get(USER).await? {
        Some(user) => Json(user).into_response(),
        None => StatusCode::UNAUTHORIZED.into_response(),
    })
}

async fn k_count(session: keyfob::Session) -> Result<String, keyfob::Error> {
    let n = session.get(COUNTER).await?.unwrap_or(0) + 1;
    session.insert(COUNTER, n).await?;
    Ok(n.to_string())
}

async fn k_login(session: keyfob::Session) -> Result<&'static str, keyfob::Error> {
    session.cycle_id().await?;
    session.insert(USER, next_user()).await?;
    Ok("ok")
}

/// Counts the calls keyfob's layer makes into its store.
#[derive(Default)]
struct Counters {
    loads: AtomicU64,
    creates: AtomicU64,
    updates: AtomicU64,
    touches: AtomicU64,
    deletes: AtomicU64,
}

struct Counting<S> {
    inner: S,
    n: Arc<Counters>,
}

impl<S: SessionStore> SessionStore for Counting<S> {
    fn load<'a>(
        &'a self,
        handle: &'a Handle,
        now: OffsetDateTime,
    ) -> BoxFuture<'a, keyfob::Result<Option<Arc<Record>>>> {
        self.n.loads.fetch_add(1, Ordering::Relaxed);
        self.inner.load(handle, now)
    }
    fn create<'a>(
        &'a self,
        handle: &'a Handle,
        record: &'a Record,
    ) -> BoxFuture<'a, keyfob::Result<Created>> {
        self.n.creates.fetch_add(1, Ordering::Relaxed);
        self.inner.create(handle, record)
    }
    fn update<'a>(
        &'a self,
        handle: &'a Handle,
        update: &'a Update,
        now: OffsetDateTime,
    ) -> BoxFuture<'a, keyfob::Result<Updated>> {
        if update.is_touch() {
            self.n.touches.fetch_add(1, Ordering::Relaxed);
        } else {
            self.n.updates.fetch_add(1, Ordering::Relaxed);
        }
        self.inner.update(handle, update, now)
    }
    fn delete<'a>(&'a self, handle: &'a Handle) -> BoxFuture<'a, keyfob::Result<bool>> {
        self.n.deletes.fetch_add(1, Ordering::Relaxed);
        self.inner.delete(handle)
    }
    fn delete_expired(
        &self,
        now: OffsetDateTime,
        batch: usize,
    ) -> BoxFuture<'_, keyfob::Result<u64>> {
        self.inner.delete_expired(now, batch)
    }
    fn list_by_owner<'a>(
        &'a self,
        owner: &'a str,
        now: OffsetDateTime,
        limit: usize,
    ) -> BoxFuture<'a, keyfob::Result<Vec<OwnedSession>>> {
        self.inner.list_by_owner(owner, now, limit)
    }
    fn delete_by_owner<'a>(
        &'a self,
        owner: &'a str,
        keep: Option<&'a Handle>,
    ) -> BoxFuture<'a, keyfob::Result<u64>> {
        self.inner.delete_by_owner(owner, keep)
    }
    fn update_uses_base(&self) -> bool {
        self.inner.update_uses_base()
    }
}

async fn stats(State(n): State<Arc<Counters>>) -> String {
    let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
    format!(
        "loads={} creates={} updates={} touches={} deletes={}\n",
        g(&n.loads),
        g(&n.creates),
        g(&n.updates),
        g(&n.touches),
        g(&n.deletes)
    )
}

fn keyfob_app(store: impl SessionStore) -> Router {
    let counters = Arc::new(Counters::default());
    let layer = keyfob::SessionLayer::builder(Counting {
        inner: store,
        n: counters.clone(),
    })
    .with_name("id")
    .with_http_only(true)
    .with_same_site(keyfob::SameSite::Lax)
    .with_secure(false)
    .with_idle_timeout(Duration::hours(2))
    .with_absolute_timeout(None)
    .build()
    .expect("valid keyfob layer");
    Router::new()
        .route("/read", get(k_read))
        .route("/count", get(k_count))
        .route("/login", post(k_login))
        .layer(layer)
        .route("/bare", get(bare))
        .route("/_stats", get(stats))
        .with_state(counters)
}

// --------------------------------------------------------- tower-sessions

fn ts_err(e: tower_sessions::session::Error) -> StatusCode {
    eprintln!("tower-sessions error: {e}");
    StatusCode::INTERNAL_SERVER_ERROR
}

async fn t_read(session: tower_sessions::Session) -> Result<Response, StatusCode> {
    Ok(match session.get::<User>("user").await.map_err(ts_err)? {
        Some(user) => Json(user).into_response(),
        None => StatusCode::UNAUTHORIZED.into_response(),
    })
}

async fn t_count(session: tower_sessions::Session) -> Result<String, StatusCode> {
    let n = session
        .get::<usize>("counter")
        .await
        .map_err(ts_err)?
        .unwrap_or(0)
        + 1;
    session.insert("counter", n).await.map_err(ts_err)?;
    Ok(n.to_string())
}

async fn t_login(session: tower_sessions::Session) -> Result<&'static str, StatusCode> {
    session.cycle_id().await.map_err(ts_err)?;
    session.insert("user", next_user()).await.map_err(ts_err)?;
    Ok("ok")
}

async fn no_stats() -> &'static str {
    "n/a\n"
}

fn tower_app<S: tower_sessions::SessionStore + Clone>(store: S) -> Router {
    let layer = tower_sessions::SessionManagerLayer::new(store)
        .with_name("id")
        .with_http_only(true)
        .with_same_site(tower_sessions::cookie::SameSite::Lax)
        .with_secure(false)
        .with_expiry(tower_sessions::Expiry::OnInactivity(Duration::hours(2)));
    Router::new()
        .route("/read", get(t_read))
        .route("/count", get(t_count))
        .route("/login", post(t_login))
        .layer(layer)
        .route("/bare", get(bare))
        .route("/_stats", get(no_stats))
}

// ------------------------------------------------------------------ setup

/// The same SQLite settings keyfob's `SqliteStore::connect` uses (WAL,
/// synchronous=FULL, 5 s busy timeout, 8 connections), for tower-sessions.
async fn sqlite_pool(url: &str) -> sqlx::SqlitePool {
    let options = SqliteConnectOptions::from_str(url)
        .expect("sqlite url")
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(StdDuration::from_secs(5));
    SqlitePoolOptions::new()
        .max_connections(8)
        .connect_with(options)
        .await
        .expect("sqlite pool")
}

async fn build_app(imp: &str, store: &str, url: Option<&str>) -> Router {
    let url = || url.expect("--url is required for this store");
    match (imp, store) {
        ("keyfob", "memory") => keyfob_app(keyfob::MemoryStore::new()),
        ("keyfob", "sqlite") => {
            keyfob_app(keyfob::SqliteStore::connect(url()).await.expect("sqlite"))
        }
        ("keyfob", "postgres") => keyfob_app(
            keyfob::PostgresStore::connect(url())
                .await
                .expect("postgres"),
        ),
        ("keyfob", "mysql") => keyfob_app(keyfob::MySqlStore::connect(url()).await.expect("mysql")),
        ("keyfob", "redis") => {
            let store = keyfob::RedisStore::connect(url()).await.expect("redis");
            // For an A/B of the near cache (a single server or a Cluster).
            if std::env::var_os("KEYFOB_BENCH_NO_NEAR_CACHE").is_some() {
                keyfob_app(store.without_near_cache())
            } else {
                keyfob_app(store)
            }
        }
        ("tower-sessions", "redis") => {
            use tower_sessions_redis_store::fred::prelude::{ClientLike, Config, Pool};
            // One multiplexed connection, like keyfob's `RedisStore::connect`.
            let pool = Pool::new(
                Config::from_url(url()).expect("redis url"),
                None,
                None,
                None,
                1,
            )
            .expect("redis pool");
            pool.connect();
            pool.wait_for_connect().await.expect("redis");
            tower_app(tower_sessions_redis_store::RedisStore::new(pool))
        }
        ("tower-sessions", "memory") => tower_app(tower_sessions::MemoryStore::default()),
        ("tower-sessions", "sqlite") => {
            let s = tower_sessions_sqlx_store::SqliteStore::new(sqlite_pool(url()).await);
            s.migrate().await.expect("migrate");
            tower_app(s)
        }
        ("tower-sessions", "postgres") => {
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(16)
                .connect(url())
                .await
                .expect("postgres");
            let s = tower_sessions_sqlx_store::PostgresStore::new(pool);
            s.migrate().await.expect("migrate");
            tower_app(s)
        }
        ("tower-sessions", "mysql") => {
            let pool = sqlx::mysql::MySqlPoolOptions::new()
                .max_connections(16)
                .connect(url())
                .await
                .expect("mysql");
            let s = tower_sessions_sqlx_store::MySqlStore::new(pool);
            s.migrate().await.expect("migrate");
            tower_app(s)
        }
        other => panic!("unknown --impl/--store combination {other:?}"),
    }
}

async fn serve(app: Router, port: u16) {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind");
    println!("ready on 127.0.0.1:{port}");
    axum::serve(listener, app).await.expect("serve");
}

fn vm_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Inserts `n` logged-in sessions straight into a memory store, as `/login`
/// would leave them, and writes their cookies to `out`.
async fn seed(store: &keyfob::MemoryStore, n: usize, out: &str) -> usize {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let idle = now + 2 * 3600;
    // Written as they are made: a buffer of every cookie would count in the
    // RSS per session measured around this function (44 B each).
    let mut cookies = std::io::BufWriter::new(std::fs::File::create(out).expect("cookie file"));
    let mut data_bytes = 0;
    for i in 0..n {
        let mut id = [0u8; 32];
        getrandom::fill(&mut id).expect("random");
        let handle = Handle::from_bytes(Sha256::digest(id).into());
        let user = serde_json::to_string(&User {
            id: i as u64,
            username: format!("user{i}"),
        })
        .expect("json");
        data_bytes += "user".len() + user.len();
        let record: Record = serde_json::from_str(&format!(
            r#"{{"d":{{"user":{user}}},"c":{now},"s":{now},"i":{idle},"v":1}}"#
        ))
        .expect("record json");
        let created = keyfob::SessionStore::create(store, &handle, &record)
            .await
            .expect("seed");
        assert_eq!(created, keyfob::store::Created::Stored, "seed");
        writeln!(cookies, "{}", URL_SAFE_NO_PAD.encode(id)).expect("write cookies");
    }
    cookies.flush().expect("write cookies");
    data_bytes
}

/// `n` POST /login over `conns` keep-alive connections; the cookies go to `out`.
fn login(port: u16, n: usize, conns: usize, out: &str) {
    let per = n.div_ceil(conns);
    let threads: Vec<_> = (0..conns)
        .map(|t| {
            let count = per.min(n.saturating_sub(t * per));
            std::thread::spawn(move || {
                let mut found = Vec::with_capacity(count);
                if count == 0 {
                    return found;
                }
                let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
                let mut writer = stream.try_clone().expect("clone");
                let mut reader = BufReader::new(stream);
                for _ in 0..count {
                    writer
                        .write_all(
                            b"POST /login HTTP/1.1\r\nHost: bench\r\nContent-Length: 0\r\n\r\n",
                        )
                        .expect("write");
                    let mut cookie = None;
                    let mut len = 0usize;
                    let mut status = String::new();
                    reader.read_line(&mut status).expect("status");
                    assert!(status.contains(" 200 "), "login failed: {status}");
                    loop {
                        let mut line = String::new();
                        reader.read_line(&mut line).expect("header");
                        let line = line.trim_end();
                        if line.is_empty() {
                            break;
                        }
                        let (name, value) = line.split_once(':').expect("header line");
                        let value = value.trim();
                        if name.eq_ignore_ascii_case("content-length") {
                            len = value.parse().expect("length");
                        } else if name.eq_ignore_ascii_case("set-cookie") {
                            if let Some(v) = value.strip_prefix("id=") {
                                cookie = Some(v.split(';').next().unwrap_or("").to_owned());
                            }
                        }
                    }
                    let mut body = vec![0; len];
                    reader.read_exact(&mut body).expect("body");
                    found.push(cookie.expect("login sent no id cookie"));
                }
                found
            })
        })
        .collect();
    let mut all = String::new();
    for t in threads {
        for c in t.join().expect("login thread") {
            all.push_str(&c);
            all.push('\n');
        }
    }
    std::fs::write(out, all).expect("write cookies");
}

/// Waits until the store's near cache serves (its LISTEN is subscribed).
/// A store with a near cache, for the invalidation measurement.
trait Near: SessionStore {
    fn serving(&self) -> bool;
}

impl Near for keyfob::PostgresStore {
    fn serving(&self) -> bool {
        self.near_cache_serving()
    }
}

impl Near for keyfob::RedisStore {
    fn serving(&self) -> bool {
        self.near_cache_serving()
    }
}

async fn serving(store: &impl Near) {
    let probe = Handle::from_bytes([0; 32]);
    while !store.serving() {
        store
            .load(&probe, OffsetDateTime::now_utc())
            .await
            .expect("load");
        tokio::time::sleep(StdDuration::from_millis(5)).await;
    }
}

/// How long after a delete through one store another store (its own
/// connections and notification channel, as another process has) stops
/// serving the session from its near cache: `n` sessions, each created
/// through `here`, loaded (cached) through `there`, deleted through `here`;
/// the clock runs from the moment the delete is acknowledged until `there`
/// first loads nothing. PostgreSQL or Redis, by the URL's scheme.
async fn invalidation(url: &str, n: usize) {
    if url.starts_with("redis") {
        let here = keyfob::RedisStore::connect(url).await.expect("redis");
        let there = keyfob::RedisStore::connect(url).await.expect("redis");
        invalidation_between("redis", &here, &there, n).await;
    } else {
        let here = keyfob::PostgresStore::connect(url).await.expect("postgres");
        let there = keyfob::PostgresStore::connect(url).await.expect("postgres");
        invalidation_between("postgres", &here, &there, n).await;
    }
}

async fn invalidation_between(name: &str, here: &impl Near, there: &impl Near, n: usize) {
    serving(here).await;
    serving(there).await;
    let mut micros = Vec::with_capacity(n);
    for _ in 0..n {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).expect("random");
        let h = Handle::from_bytes(bytes);
        let now = OffsetDateTime::now_utc();
        let record = Record::new(now, Some(now + Duration::hours(1)), None);
        here.create(&h, &record).await.expect("create");
        assert!(there.load(&h, now).await.expect("load").is_some());
        here.delete(&h).await.expect("delete");
        let acked = std::time::Instant::now();
        while there.load(&h, now).await.expect("load").is_some() {
            tokio::task::yield_now().await;
        }
        micros.push(acked.elapsed().as_micros() as u64);
    }
    micros.sort_unstable();
    let at = |q: f64| micros[((micros.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "INVALIDATION {name} n={n} p50_us={} p99_us={} max_us={}",
        at(0.5),
        at(0.99),
        micros.last().copied().unwrap_or(0)
    );
}

fn arg<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).map(String::as_str).unwrap_or("");
    let port: u16 = arg(&args, "--port")
        .unwrap_or("3000")
        .parse()
        .expect("port");
    // One worker, as the benchmark contract says; pin the process with taskset.
    let rt = || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime")
    };
    match mode {
        "serve" => {
            let imp = arg(&args, "--impl").expect("--impl").to_owned();
            let store = arg(&args, "--store").expect("--store").to_owned();
            let url = arg(&args, "--url").map(str::to_owned);
            rt().block_on(async {
                let app = build_app(&imp, &store, url.as_deref()).await;
                serve(app, port).await;
            });
        }
        "login" => {
            let n = arg(&args, "--n").unwrap_or("10000").parse().expect("n");
            let conns = arg(&args, "--conns")
                .unwrap_or("32")
                .parse()
                .expect("conns");
            login(port, n, conns, arg(&args, "--out").expect("--out"));
        }
        "seed" => {
            let n: usize = arg(&args, "--n").unwrap_or("1000").parse().expect("n");
            let out = arg(&args, "--out").expect("--out");
            // Room for every seeded session: the default bound (250,000)
            // would evict the older ones at the 1M size.
            let store =
                keyfob::MemoryStore::with_capacity(n.saturating_mul(2).max(64 * 64), usize::MAX);
            let rt = rt();
            let before = vm_rss_kib();
            let data = rt.block_on(seed(&store, n, out));
            let after = vm_rss_kib();
            let per = (after.saturating_sub(before) * 1024) as f64 / n as f64;
            let data_per = data as f64 / n as f64;
            println!(
                "SEED n={n} rss_before_kib={before} rss_after_kib={after} bytes_per_session={per:.0} data_bytes_per_session={data_per:.0} overhead_per_session={:.0}",
                per - data_per
            );
            rt.block_on(serve(keyfob_app(store), port));
        }
        "invalidation" => {
            let url = arg(&args, "--url").expect("--url").to_owned();
            let n: usize = arg(&args, "--n").unwrap_or("500").parse().expect("n");
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(invalidation(&url, n));
        }
        _ => {
            eprintln!(
                "usage: keyfob-bench serve|login|seed|invalidation ... (see the source's header)"
            );
            std::process::exit(2);
        }
    }
}
