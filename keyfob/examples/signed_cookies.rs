//! The app's own cookies, signed and encrypted: a `theme` anyone may read but
//! nobody can forge, and a `session_user` nobody can read.
//!
//! ```text
//! cargo run -p keyfob --example signed_cookies
//! curl -c jar -b jar http://127.0.0.1:3000/set     # sets both cookies
//! curl -c jar -b jar http://127.0.0.1:3000/read    # "theme = dark, user = 42"
//! ```
//!
//! The keyring lives in `example.key` (64 random bytes, mode 0600), so
//! cookies survive a restart; put an older key after the first in a
//! `Keyring::from_keys` to rotate without logging anyone out.

use axum::{extract::FromRef, routing::get, Router};
use keyfob::{
    jar::{Cookie, PrivateCookieJar, SignedCookieJar},
    keys::Keyring,
    time::Duration,
};

#[derive(Clone)]
struct AppState {
    keys: Keyring,
}

impl FromRef<AppState> for Keyring {
    fn from_ref(state: &AppState) -> Keyring {
        state.keys.clone()
    }
}

async fn set(
    signed: SignedCookieJar,
    private: PrivateCookieJar,
) -> (SignedCookieJar, PrivateCookieJar, &'static str) {
    let signed = signed.add(Cookie::new("theme", "dark"));
    // A week, sealed into the value: a replay after it is refused.
    let user = Cookie::build(("session_user", "42"))
        .http_only(true)
        .max_age(Duration::days(7));
    (signed, private.add(user), "set")
}

async fn read(signed: SignedCookieJar, private: PrivateCookieJar) -> String {
    let theme = signed.get("theme").map(|c| c.value().to_owned());
    let user = private.get("session_user").map(|c| c.value().to_owned());
    format!(
        "theme = {}, user = {}",
        theme.as_deref().unwrap_or("none"),
        user.as_deref().unwrap_or("none")
    )
}

fn app(keys: Keyring) -> Router {
    Router::new()
        .route("/set", get(set))
        .route("/read", get(read))
        .with_state(AppState { keys })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let keys = Keyring::load_or_create("example.key")?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app(keys)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use axum::{body::Body, http::Request};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;

    async fn read_with(app: &Router, cookies: &str) -> String {
        let req = Request::get("/read")
            .header("cookie", cookies)
            .body(Body::empty())
            .unwrap();
        let res = app.clone().oneshot(req).await.unwrap();
        String::from_utf8_lossy(&res.into_body().collect().await.unwrap().to_bytes()).into_owned()
    }

    #[tokio::test]
    async fn cookies_read_back_and_a_forged_one_reads_as_absent() {
        let app = app(Keyring::generate().unwrap());
        let res = app
            .clone()
            .oneshot(Request::get("/set").body(Body::empty()).unwrap())
            .await
            .unwrap();
        let pairs: Vec<String> = res
            .headers()
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned())
            .collect();
        assert!(pairs
            .iter()
            .all(|p| !p.ends_with("=dark") && !p.ends_with("=42")));
        assert_eq!(
            read_with(&app, &pairs.join("; ")).await,
            "theme = dark, user = 42"
        );
        assert_eq!(
            read_with(&app, "theme=dark; session_user=42").await,
            "theme = none, user = none"
        );
    }
}
