//! Unit tests of the login guard and `safe_next`.
#![allow(clippy::unwrap_used)]

use axum::{
    body::Body,
    extract::Query,
    response::Redirect,
    routing::{get, post},
    Router,
};
use tower::ServiceExt;

use super::*;
use crate::{MemoryStore, SessionLayer};

#[derive(serde::Deserialize)]
struct Next {
    next: Option<String>,
}

fn app() -> Router {
    let guarded = Router::new()
        .route("/account", get(|| async { "your account" }))
        .layer(RequireLoginLayer::new("/login").unwrap());
    Router::new()
        .route(
            "/login",
            post(|s: Session, Query(q): Query<Next>| async move {
                login(&s, "1", &"alice").await?;
                Ok::<_, Error>(Redirect::to(safe_next(q.next.as_deref().unwrap_or("/"))))
            }),
        )
        .merge(guarded)
        .layer(
            SessionLayer::builder(MemoryStore::new())
                .with_secure(false)
                .build()
                .unwrap(),
        )
}

async fn send(app: &Router, req: Request<Body>) -> (StatusCode, Option<String>, Option<String>) {
    let res = app.clone().oneshot(req).await.unwrap();
    let header = |name| {
        res.headers()
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .map(str::to_owned)
    };
    let location = header(LOCATION);
    let cookie =
        header(http::header::SET_COOKIE).and_then(|c| c.split(';').next().map(str::to_owned));
    (res.status(), location, cookie)
}

#[tokio::test]
async fn require_login_redirects_with_next_and_lets_the_user_through_after_login() {
    let app = app();
    let (status, location, _) = send(
        &app,
        Request::get("/account?tab=a%20b")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(
        location.as_deref(),
        Some("/login?next=%2Faccount%3Ftab%3Da%2520b")
    );
    let (status, location, cookie) = send(
        &app,
        Request::post("/login?next=%2Faccount%3Ftab%3Da%2520b")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(location.as_deref(), Some("/account?tab=a%20b"));
    let req = Request::get("/account")
        .header("cookie", cookie.unwrap())
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&app, req).await.0, StatusCode::OK);
}

#[tokio::test]
async fn next_pointing_off_site_redirects_to_root() {
    let app = app();
    for next in [
        "https%3A%2F%2Fevil.example",
        "%2F%2Fevil.example",
        "%2F%5Cevil.example",
        "%2F%09%2Fevil.example",
        "javascript%3Aalert(1)",
    ] {
        let req = Request::post(format!("/login?next={next}"))
            .body(Body::empty())
            .unwrap();
        let (status, location, _) = send(&app, req).await;
        assert_eq!(
            (status, location.as_deref()),
            (StatusCode::SEE_OTHER, Some("/")),
            "{next}"
        );
    }
}

#[test]
fn require_login_refuses_a_login_url_that_cannot_be_a_header() {
    assert!(RequireLoginLayer::new("").is_err());
    assert!(RequireLoginLayer::new("/lo\ngin").is_err());
    assert!(RequireLoginLayer::new("/login?from=app").is_ok());
    assert!(RequireLoginLayer::new("/lo\u{7f}gin").is_err());
}

#[test]
fn safe_next_keeps_only_same_origin_relative_paths() {
    let cases = [
        ("/", "/"),
        ("/account", "/account"),
        ("/a/b?c=d&e=%2F%2F#f", "/a/b?c=d&e=%2F%2F#f"),
        ("https://evil.example", "/"),
        ("http://evil.example/", "/"),
        ("//evil.example", "/"),
        ("///evil.example", "/"),
        ("/\\evil.example", "/"),
        ("\\\\evil.example", "/"),
        ("/\t/evil.example", "/"),
        ("/\n/evil.example", "/"),
        (" /account", "/"),
        ("javascript:alert(1)", "/"),
        ("evil.example", "/"),
        ("", "/"),
    ];
    for (input, want) in cases {
        assert_eq!(safe_next(input), want, "{input:?}");
    }
    assert_eq!(safe_next(&format!("/{}", "a".repeat(4096))), "/");
}
