//! The visit counter on the in-process memory store: the smallest keyfob app.
//!
//! Run it, then visit the page a few times with one cookie jar:
//!
//! ```text
//! cargo run -p keyfob --example counter
//! curl -c jar -b jar http://127.0.0.1:3000/    # "1 visit(s)", then 2, 3, ...
//! ```

use axum::{routing::get, Router};
use keyfob::{Key, MemoryStore, Session, SessionLayer};

/// A typed key: the counter is a `u64`, and nothing else compiles.
const VISITS: Key<u64> = Key::new("visits");

async fn visit(session: Session) -> Result<String, keyfob::Error> {
    let n = session.get(VISITS).await?.unwrap_or(0) + 1;
    session.insert(VISITS, n).await?;
    Ok(format!("{n} visit(s)"))
}

/// The app: one route behind the session layer. Plain HTTP on loopback, so
/// the cookie is not `Secure` here; keep the default in production.
fn app() -> Result<Router, keyfob::Error> {
    let layer = SessionLayer::builder(MemoryStore::new())
        .with_secure(false)
        .build()?;
    Ok(Router::new().route("/", get(visit)).layer(layer))
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
    async fn each_visit_with_the_cookie_counts_one_more() {
        let app = app().unwrap();
        let mut cookie = None;
        for n in 1..=3 {
            let mut req = Request::get("/");
            if let Some(c) = &cookie {
                req = req.header("cookie", c);
            }
            let res = app
                .clone()
                .oneshot(req.body(Body::empty()).unwrap())
                .await
                .unwrap();
            if let Some(set) = res.headers().get("set-cookie") {
                cookie = Some(set.to_str().unwrap().split(';').next().unwrap().to_owned());
            }
            let body = res.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body, format!("{n} visit(s)"));
        }
    }
}
