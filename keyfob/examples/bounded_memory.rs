//! A memory store with a capacity bound: a flood of cookieless requests
//! cannot grow the process, and never pushes a logged-in user out.
//!
//! ```text
//! cargo run -p keyfob --example bounded_memory
//! curl -X POST http://127.0.0.1:3000/login/alice -c jar      # logged in
//! for i in $(seq 2000); do curl -s http://127.0.0.1:3000/visit >/dev/null; done
//! curl -b jar http://127.0.0.1:3000/me                      # still "alice"
//! ```

use axum::{
    extract::{Path, State},
    routing::{get, post},
    Router,
};
use keyfob::{
    auth::{self, AuthUser},
    MemoryStore, Session, SessionLayer,
};

async fn visit(session: Session) -> Result<&'static str, keyfob::Error> {
    // Every cookieless visit stores an anonymous session.
    session.insert("seen", true).await?;
    Ok("hello")
}

async fn log_in(session: Session, Path(name): Path<String>) -> Result<&'static str, keyfob::Error> {
    auth::login(&session, &name, &name).await?;
    Ok("logged in")
}

async fn me(AuthUser(name): AuthUser<String>) -> String {
    name
}

async fn size(State(store): State<MemoryStore>) -> String {
    format!("{} sessions, {} bytes", store.len(), store.bytes())
}

/// At most `sessions` sessions; anonymous ones are evicted first.
fn app(sessions: usize) -> Result<Router, keyfob::Error> {
    // 1 MiB of session bytes at most, too.
    let store = MemoryStore::with_capacity(sessions, 1 << 20);
    let layer = SessionLayer::builder(store.clone())
        .with_secure(false)
        .build()?;
    Ok(Router::new()
        .route("/visit", get(visit))
        .route("/login/{name}", post(log_in))
        .route("/me", get(me))
        .layer(layer)
        .route("/size", get(size))
        .with_state(store))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app(1_000)?).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use axum::{body::Body, http::Request};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::app;

    async fn send(
        app: &axum::Router,
        method: &str,
        uri: &str,
        cookie: &str,
    ) -> (String, Option<String>) {
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
        (
            String::from_utf8_lossy(&res.into_body().collect().await.unwrap().to_bytes())
                .into_owned(),
            set,
        )
    }

    #[tokio::test]
    async fn a_flood_stays_within_the_bound_and_alice_stays_logged_in() {
        let app = app(640).unwrap();
        let alice = send(&app, "POST", "/login/alice", "").await.1.unwrap();
        for _ in 0..3_000 {
            send(&app, "GET", "/visit", "").await;
        }
        let (size, _) = send(&app, "GET", "/size", "").await;
        let held: usize = size.split(' ').next().unwrap().parse().unwrap();
        assert!(held <= 640, "{size}");
        assert_eq!(send(&app, "GET", "/me", &alice).await.0, "alice");
    }
}
