//! The axum_session 0.22 peer of `keyfob-bench serve`: the same routes
//! (shared/spec/bench-http.md) over axum_session with its default settings
//! (sessions kept in process memory for an hour, the database written on
//! change), on SQLite (axum_session_sqlx) or no database (memory only).
//!
//! ```text
//! axum-session-bench --store memory|sqlite --port PORT [--url sqlite://PATH]
//! ```
//!
//! Cookie settings match the others where axum_session has them: name `id`,
//! HttpOnly, SameSite=Lax, not Secure, a 2 h lifetime.

use std::sync::atomic::{AtomicU64, Ordering};

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use axum_session::{
    SameSite, Session, SessionConfig, SessionLayer, SessionNullPool, SessionStore,
};
use axum_session_sqlx::SessionSqlitePool;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct User {
    id: u64,
    username: String,
}

static NEXT_USER: AtomicU64 = AtomicU64::new(1);

async fn read<P: axum_session::DatabasePool + Clone + std::fmt::Debug + Sync + Send + 'static>(
    session: Session<P>,
) -> Response {
    match session.get::<User>("user") {
        Some(user) => Json(user).into_response(),
        None => StatusCode::UNAUTHORIZED.into_response(),
    }
}

async fn count<P: axum_session::DatabasePool + Clone + std::fmt::Debug + Sync + Send + 'static>(
    session: Session<P>,
) -> String {
    let n = session.get::<usize>("counter").unwrap_or(0) + 1;
    session.set("counter", n);
    n.to_string()
}

async fn login<P: axum_session::DatabasePool + Clone + std::fmt::Debug + Sync + Send + 'static>(
    session: Session<P>,
) -> &'static str {
    let id = NEXT_USER.fetch_add(1, Ordering::Relaxed);
    session.renew();
    session.set(
        "user",
        User {
            id,
            username: format!("user{id}"),
        },
    );
    "ok"
}

async fn bare() -> &'static str {
    "ok"
}

async fn no_stats() -> &'static str {
    "n/a\n"
}

fn config() -> SessionConfig {
    SessionConfig::default()
        .with_session_name("id")
        .with_http_only(true)
        .with_cookie_same_site(SameSite::Lax)
        .with_secure(false)
        .with_lifetime(time::Duration::hours(2))
}

fn app<P>(store: SessionStore<P>) -> Router
where
    P: axum_session::DatabasePool + Clone + std::fmt::Debug + Sync + Send + 'static,
{
    Router::new()
        .route("/read", get(read::<P>))
        .route("/count", get(count::<P>))
        .route("/login", post(login::<P>))
        .layer(SessionLayer::new(store))
        .route("/bare", get(bare))
        .route("/_stats", get(no_stats))
}

fn arg<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let port: u16 = arg(&args, "--port").unwrap_or("3000").parse().expect("port");
    let store = arg(&args, "--store").expect("--store").to_owned();
    let url = arg(&args, "--url").map(str::to_owned);
    // One worker, as for the other servers; the process is pinned with taskset.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let router = match store.as_str() {
            "memory" => app(
                SessionStore::<SessionNullPool>::new(None, config())
                    .await
                    .expect("store"),
            ),
            "sqlite" => {
                let url = url.expect("--url");
                let options: sqlx::sqlite::SqliteConnectOptions = url
                    .parse::<sqlx::sqlite::SqliteConnectOptions>()
                    .expect("sqlite url")
                    .create_if_missing(true);
                let pool = sqlx::sqlite::SqlitePoolOptions::new()
                    .max_connections(8)
                    .connect_with(options)
                    .await
                    .expect("sqlite");
                app(
                    SessionStore::<SessionSqlitePool>::new(Some(pool.into()), config())
                        .await
                        .expect("store"),
                )
            }
            other => panic!("unknown --store {other}"),
        };
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind");
        println!("ready on 127.0.0.1:{port}");
        axum::serve(listener, router).await.expect("serve");
    });
}
