//! tower-sessions' README counter, after the switch to keyfob: the lines that
//! changed are marked `// was:`. See MIGRATING.md for every item.
//!
//! ```text
//! cargo run -p keyfob --example from_tower_sessions
//! curl -c jar -b jar http://127.0.0.1:3000/      # Current count: 0, 1, 2, ...
//! ```
//!
//! `with_legacy_ids(true)` accepts, once, the cookie of a session that
//! `keyfob-demo migrate` copied from the old store, and rotates it to a
//! keyfob ID: nobody is logged out by the switch.

use axum::{response::IntoResponse, routing::get, Router};
use keyfob::{time::Duration, Expiry, MemoryStore, Session, SessionLayer}; // was: tower_sessions::{…, SessionManagerLayer}
use serde::{Deserialize, Serialize};

const COUNTER_KEY: &str = "counter";

#[derive(Default, Deserialize, Serialize)]
struct Counter(usize);

async fn handler(session: Session) -> Result<impl IntoResponse, keyfob::Error> {
    // was: session.get(COUNTER_KEY).await.unwrap().unwrap_or_default()
    let counter: Counter = session.get(COUNTER_KEY).await?.unwrap_or_default();
    session.insert(COUNTER_KEY, counter.0 + 1).await?; // was: .await.unwrap()
    Ok(format!("Current count: {}", counter.0))
}

fn app() -> Result<Router, keyfob::Error> {
    let session_store = MemoryStore::default();
    // was: SessionManagerLayer::new(session_store).with_secure(false)
    //          .with_expiry(Expiry::OnInactivity(Duration::seconds(10)))
    let session_layer = SessionLayer::builder(session_store)
        .with_secure(false)
        .with_expiry(Expiry::OnInactivity(Duration::seconds(10)))
        .with_legacy_ids(true)
        .build()?; // new: settings are checked here, never at request time
    Ok(Router::new().route("/", get(handler)).layer(session_layer))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app()?).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use axum::{body::Body, http::Request};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::app;

    #[tokio::test]
    async fn the_counter_counts_with_a_ten_second_inactivity_expiry() {
        let app = app().unwrap();
        let mut cookie = String::new();
        for n in 0..3 {
            let req = Request::get("/")
                .header("cookie", &cookie)
                .body(Body::empty())
                .unwrap();
            let res = app.clone().oneshot(req).await.unwrap();
            if let Some(set) = res.headers().get("set-cookie") {
                let set = set.to_str().unwrap();
                assert!(set.contains("Max-Age=10"), "{set}");
                cookie = set.split(';').next().unwrap().to_owned();
            }
            let body = res.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body, format!("Current count: {n}"));
        }
    }
}
