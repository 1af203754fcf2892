//! Load-modify-save requests per second through `SessionLayer` (in process,
//! no sockets) over each store: every request loads its session, reads a
//! counter and writes it back (one key), so each one is a store load plus an
//! update. Also a read-only loop, where the cache tier matters.
//!
//! Run with the test services up (scripts/services/*.sh); stores whose
//! variable is unset are skipped (this is a measuring tool, not a test):
//!   KEYFOB_TEST_REDIS_URL=… KEYFOB_TEST_REDIS_CLUSTER_URL=… \
//!   KEYFOB_TEST_POSTGRES_URL=… KEYFOB_TEST_MYSQL_URL=… \
//!   cargo run --release --manifest-path bench/store-loop/Cargo.toml [SECS]
use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use axum::{
    body::Body,
    http::{header, Request, StatusCode},
    routing::{get, post},
    Router,
};
use http_body_util::BodyExt;
use keyfob::{CachedStore, Key, MemoryStore, RedisStore, Session, SessionLayer, SessionStore};
use tower::ServiceExt;

const N: Key<u64> = Key::new("n");

fn app(store: Arc<dyn SessionStore>) -> Router {
    Router::new()
        .route(
            "/bump",
            post(|s: Session| async move {
                let n = s.get(N).await?.unwrap_or(0) + 1;
                s.insert(N, n).await?;
                Ok::<_, keyfob::Error>(n.to_string())
            }),
        )
        .route(
            "/read",
            get(|s: Session| async move { Ok::<_, keyfob::Error>(s.get(N).await?.unwrap_or(0).to_string()) }),
        )
        .layer(SessionLayer::new(store))
}

async fn send(app: &Router, method: &str, uri: &str, cookie: Option<&str>) -> Option<String> {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(c) = cookie {
        req = req.header(header::COOKIE, format!("id={c}"));
    }
    let res = app.clone().oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let cookie = res
        .headers()
        .get(header::SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next()?.strip_prefix("id=").map(str::to_owned));
    res.into_body().collect().await.unwrap();
    cookie
}

async fn run(name: &str, store: Arc<dyn SessionStore>, tasks: usize, secs: u64, read_only: bool) {
    let app = app(store);
    let done = Arc::new(AtomicU64::new(0));
    let mut cookies = Vec::new();
    for _ in 0..tasks {
        cookies.push(send(&app, "POST", "/bump", None).await.unwrap());
    }
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut hs = Vec::new();
    for cookie in cookies {
        let (app, done) = (app.clone(), done.clone());
        hs.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                if read_only {
                    send(&app, "GET", "/read", Some(&cookie)).await;
                } else {
                    send(&app, "POST", "/bump", Some(&cookie)).await;
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for h in hs {
        h.await.unwrap();
    }
    let rate = done.load(Ordering::Relaxed) as f64 / secs as f64;
    let what = if read_only { "read-only" } else { "load-modify-save" };
    println!("{name:<22} {what:<17} tasks={tasks:<3} {rate:>9.0} req/s");
}

async fn stores() -> Vec<(&'static str, Arc<dyn SessionStore>)> {
    let env = |k: &str| std::env::var(k).ok();
    let mut out: Vec<(&'static str, Arc<dyn SessionStore>)> =
        vec![("memory", Arc::new(MemoryStore::new()))];
    let db = std::env::temp_dir().join(format!("keyfob-store-loop-{}.db", std::process::id()));
    let _ = std::fs::remove_file(&db);
    let sqlite = keyfob::SqliteStore::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    out.push(("sqlite", Arc::new(sqlite)));
    if let Some(url) = env("KEYFOB_TEST_POSTGRES_URL") {
        let s = keyfob::PostgresStore::connect(&url).await.unwrap();
        out.push(("postgres", Arc::new(s)));
    }
    if let Some(url) = env("KEYFOB_TEST_MYSQL_URL") {
        let s = keyfob::MySqlStore::connect(&url).await.unwrap();
        out.push(("mysql", Arc::new(s)));
    }
    let redis = |u: String| async move {
        RedisStore::connect(&u).await.unwrap().with_key_prefix("keyfob-bench")
    };
    if let Some(url) = env("KEYFOB_TEST_REDIS_URL") {
        out.push(("redis", Arc::new(redis(url.clone()).await)));
        out.push(("cached(redis)", Arc::new(CachedStore::new(redis(url).await))));
    }
    if let Some(url) = env("KEYFOB_TEST_REDIS_CLUSTER_URL") {
        out.push(("redis-cluster", Arc::new(redis(url.clone()).await)));
        out.push((
            "cached(redis-cluster)",
            Arc::new(CachedStore::new(redis(url).await)),
        ));
    }
    out
}

#[tokio::main]
async fn main() {
    let secs: u64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(3);
    for read_only in [false, true] {
        for tasks in [1, 32] {
            for (name, store) in stores().await {
                run(name, store, tasks, secs, read_only).await;
            }
        }
    }
}
