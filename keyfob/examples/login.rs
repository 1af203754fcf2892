//! Login with `AuthUser`, on the store a URL names: SQLite, PostgreSQL or Redis.
//!
//! ```text
//! STORE_URL=sqlite://example.db cargo run -p keyfob --example login --features sqlite,postgres,redis
//! curl -c jar -b jar -X POST http://127.0.0.1:3000/login/alice
//! curl -c jar -b jar http://127.0.0.1:3000/me            # "hello alice"
//! curl -c jar -b jar -X POST http://127.0.0.1:3000/logout
//! curl -c jar -b jar http://127.0.0.1:3000/me            # 401 login required
//! ```
//!
//! `STORE_URL` may also be `postgres://…` or `redis://…`; it defaults to
//! `sqlite://keyfob-example.db`. A real app checks a password first (see
//! keyfob-demo): this one logs in whoever asks.

use std::sync::Arc;

use axum::{
    extract::Path,
    routing::{get, post},
    Router,
};
use keyfob::{
    auth::{self, AuthUser},
    PostgresStore, RedisStore, Session, SessionLayer, SessionStore, SqliteStore,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct User {
    name: String,
}

/// Connects to the store `url` names (and creates its table).
async fn store(url: &str) -> keyfob::Result<Arc<dyn SessionStore>> {
    Ok(if url.starts_with("postgres") {
        Arc::new(PostgresStore::connect(url).await?)
    } else if url.starts_with("redis") {
        Arc::new(RedisStore::connect(url).await?)
    } else {
        Arc::new(SqliteStore::connect(url).await?)
    })
}

async fn log_in(session: Session, Path(name): Path<String>) -> Result<&'static str, keyfob::Error> {
    // A new session ID, the owner recorded for "log out everywhere".
    auth::login(&session, &name, &User { name: name.clone() }).await?;
    Ok("logged in")
}

async fn me(AuthUser(user): AuthUser<User>) -> String {
    format!("hello {}", user.name)
}

async fn log_out(session: Session) -> Result<&'static str, keyfob::Error> {
    auth::logout(&session).await?;
    Ok("logged out")
}

fn app(store: Arc<dyn SessionStore>) -> Result<Router, keyfob::Error> {
    let layer = SessionLayer::builder(store).with_secure(false).build()?;
    Ok(Router::new()
        .route("/login/{name}", post(log_in))
        .route("/me", get(me))
        .route("/logout", post(log_out))
        .layer(layer))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("STORE_URL").unwrap_or_else(|_| "sqlite://keyfob-example.db".into());
    let app = app(store(&url).await?)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!(
        "listening on http://{} (store {url})",
        listener.local_addr()?
    );
    axum::serve(listener, app).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use axum::{body::Body, http::Request};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;

    async fn send(
        app: &Router,
        method: &str,
        uri: &str,
        cookie: &str,
    ) -> (u16, String, Option<String>) {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header("cookie", cookie);
        let res = app
            .clone()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let set = res
            .headers()
            .get("set-cookie")
            .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned());
        let status = res.status().as_u16();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned(), set)
    }

    /// The servers scripts/test starts; a test without one fails, never skips.
    fn server(var: &str) -> String {
        std::env::var(var).unwrap_or_else(|_| panic!("{var} is not set: run through scripts/test"))
    }

    #[tokio::test]
    async fn login_me_and_logout_on_sqlite_postgres_and_redis() {
        let sqlite = std::env::temp_dir().join(format!("keyfob-example-{}.db", std::process::id()));
        let urls = [
            format!("sqlite://{}", sqlite.display()),
            server("KEYFOB_TEST_POSTGRES_URL"),
            server("KEYFOB_TEST_REDIS_URL"),
        ];
        for url in urls {
            let app = app(store(&url).await.unwrap()).unwrap();
            assert_eq!(send(&app, "GET", "/me", "").await.0, 401, "{url}");
            let (status, _, cookie) = send(&app, "POST", "/login/alice", "").await;
            assert_eq!(status, 200, "{url}");
            let cookie = cookie.unwrap();
            assert_eq!(
                send(&app, "GET", "/me", &cookie).await.1,
                "hello alice",
                "{url}"
            );
            send(&app, "POST", "/logout", &cookie).await;
            assert_eq!(send(&app, "GET", "/me", &cookie).await.0, 401, "{url}");
        }
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", sqlite.display()));
        }
    }
}
