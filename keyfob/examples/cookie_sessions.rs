//! Client-side sessions: the whole session encrypted inside its cookie, with
//! a SQLite file keeping what a cookie cannot carry (who is logged in where,
//! and which cookies were logged out), so logout holds across restarts.
//!
//! ```text
//! cargo run -p keyfob --example cookie_sessions --features cookie-store,sqlite
//! curl -c jar -b jar http://127.0.0.1:3000/       # 1, 2, 3, ... (the count lives in the cookie)
//! ```
//!
//! Without `with_revocation` a cookie session is fully stateless, and a copy
//! taken before a logout keeps working until its deadline: see `CookieStore`.

use axum::{
    routing::{get, post},
    Router,
};
use keyfob::{keys::Keyring, CookieStore, Key, Session, SessionLayer, SessionStore, SqliteStore};

const COUNT: Key<u64> = Key::new("count");

async fn count(session: Session) -> Result<String, keyfob::Error> {
    let n = session.get(COUNT).await?.unwrap_or(0) + 1;
    session.insert(COUNT, n).await?;
    Ok(n.to_string())
}

async fn log_out(session: Session) -> Result<&'static str, keyfob::Error> {
    session.delete().await?;
    Ok("logged out")
}

fn app(keys: Keyring, marks: impl SessionStore) -> Result<Router, keyfob::Error> {
    let store = CookieStore::new(keys).with_revocation(marks);
    let layer = SessionLayer::cookie_builder(store)
        .with_secure(false)
        .build()?;
    Ok(Router::new()
        .route("/", get(count))
        .route("/logout", post(log_out))
        .layer(layer))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let keys = Keyring::load_or_create("example.key")?;
    let marks = SqliteStore::connect("sqlite://keyfob-example-marks.db").await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app(keys, marks)?).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use axum::{body::Body, http::Request};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;

    async fn send(app: &Router, method: &str, cookie: &str) -> (String, Option<String>) {
        let uri = if method == "POST" { "/logout" } else { "/" };
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
    async fn the_count_travels_in_the_cookie_and_a_logged_out_copy_is_refused() {
        let path =
            std::env::temp_dir().join(format!("keyfob-example-marks-{}.db", std::process::id()));
        let marks = SqliteStore::connect(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        let app = app(Keyring::generate().unwrap(), marks).unwrap();
        let (n, cookie) = send(&app, "GET", "").await;
        assert_eq!(n, "1");
        let cookie = cookie.unwrap();
        let (n, newer) = send(&app, "GET", &cookie).await;
        assert_eq!(n, "2");
        let newer = newer.unwrap();
        send(&app, "POST", &newer).await;
        // The logged-out cookie starts over.
        assert_eq!(send(&app, "GET", &newer).await.0, "1");
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }
}
