//! The CSRF rules, one test per refusal and per accepted path.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use axum::{
    body::{to_bytes, Body},
    http::{Request, StatusCode},
    routing::{get, post},
    Router,
};
use tower::ServiceExt;

use super::{CsrfLayer, CsrfToken, Reason, Refusal};
use crate::{auth, MemoryStore, Session, SessionLayer};

const HOST: &str = "app.example.com";

fn app_with(csrf: CsrfLayer) -> Router {
    Router::new()
        .route("/form", get(|t: CsrfToken| async move { t.to_string() }))
        .route("/transfer", post(|| async { "transfer accepted" }))
        .route("/echo", post(|body: String| async move { body }))
        .route("/hooks/in", post(|| async { "hook" }))
        .route(
            "/login/{who}",
            post(
                |s: Session, axum::extract::Path(who): axum::extract::Path<String>| async move {
                    auth::login(&s, &who, &who).await.map(|_| "ok")
                },
            ),
        )
        .layer(csrf)
        .layer(
            SessionLayer::builder(MemoryStore::new())
                .with_secure(false)
                .build()
                .unwrap(),
        )
}

fn app() -> Router {
    app_with(CsrfLayer::new())
}

struct Reply {
    status: StatusCode,
    body: String,
    cookie: Option<String>,
    reason: Option<Reason>,
}

async fn send(app: &Router, req: Request<Body>) -> Reply {
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let reason = res.extensions().get::<Refusal>().map(Refusal::reason);
    let cookie = res
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::to_owned);
    let body = to_bytes(res.into_body(), 1 << 20).await.unwrap();
    Reply {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
        cookie,
        reason,
    }
}

/// A session with a token: (cookie, token).
async fn session_and_token(app: &Router) -> (String, String) {
    let r = send(app, Request::get("/form").body(Body::empty()).unwrap()).await;
    assert_eq!(r.status, StatusCode::OK);
    (r.cookie.unwrap(), r.body)
}

async fn token_for(app: &Router, cookie: &str) -> String {
    let req = Request::get("/form")
        .header("cookie", cookie)
        .body(Body::empty())
        .unwrap();
    send(app, req).await.body
}

fn post_with(path: &str, cookie: &str, headers: &[(&str, &str)]) -> Request<Body> {
    let mut req = Request::post(path)
        .header("host", HOST)
        .header("cookie", cookie);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.body(Body::empty()).unwrap()
}

fn form(path: &str, cookie: &str, body: String) -> Request<Body> {
    Request::post(path)
        .header("host", HOST)
        .header("cookie", cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Body::from(body))
        .unwrap()
}

fn assert_refused(r: &Reply, reason: Reason) {
    assert_eq!(
        (r.status, r.body.as_str(), r.reason),
        (StatusCode::FORBIDDEN, "CSRF check failed", Some(reason))
    );
}

#[tokio::test]
async fn token_in_header_from_the_same_session_is_accepted() {
    let app = app();
    let (cookie, token) = session_and_token(&app).await;
    assert_eq!(token.len(), 86);
    assert!(token
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    for site in [None, Some("same-origin"), Some("none")] {
        let mut headers = vec![("x-csrf-token", token.as_str())];
        if let Some(site) = site {
            headers.push(("sec-fetch-site", site));
        }
        let r = send(&app, post_with("/transfer", &cookie, &headers)).await;
        assert_eq!(
            (r.status, r.body.as_str()),
            (StatusCode::OK, "transfer accepted"),
            "{site:?}"
        );
    }
}

#[tokio::test]
async fn every_masked_token_differs_and_each_is_accepted() {
    let app = app();
    let (cookie, first) = session_and_token(&app).await;
    let second = token_for(&app, &cookie).await;
    assert_ne!(first, second, "a fresh mask per response");
    for t in [first, second] {
        let r = send(
            &app,
            post_with("/transfer", &cookie, &[("x-csrf-token", &t)]),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
    }
}

#[tokio::test]
async fn token_in_form_field_is_accepted_and_the_body_reaches_the_handler_intact() {
    let app = app();
    let (cookie, token) = session_and_token(&app).await;
    let body = format!("amount=10&to=bob%20%26%20co&csrf_token={token}&note=%E2%9C%93");
    let r = send(&app, form("/echo", &cookie, body.clone())).await;
    assert_eq!((r.status, r.body), (StatusCode::OK, body));
    let r = send(
        &app,
        Request::post("/echo")
            .header("cookie", &cookie)
            .header(
                "content-type",
                "application/x-www-form-urlencoded; charset=UTF-8",
            )
            .body(Body::from(format!("csrf_token={token}")))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn missing_token_is_refused() {
    let app = app();
    let (cookie, _) = session_and_token(&app).await;
    let r = send(&app, post_with("/transfer", &cookie, &[])).await;
    assert_refused(&r, Reason::TokenMissing);
    let r = send(&app, form("/transfer", &cookie, "amount=10".into())).await;
    assert_refused(&r, Reason::TokenMissing);
    // A token in a JSON body is not looked for.
    let (cookie, token) = session_and_token(&app).await;
    let req = Request::post("/transfer")
        .header("cookie", &cookie)
        .header("content-type", "application/json")
        .body(Body::from(format!(r#"{{"csrf_token":"{token}"}}"#)))
        .unwrap();
    assert_refused(&send(&app, req).await, Reason::TokenMissing);
}

#[tokio::test]
async fn malformed_tokens_are_refused() {
    let app = app();
    let (cookie, token) = session_and_token(&app).await;
    let huge = "A".repeat(100 * 1024);
    for bad in [
        "",
        "x",
        &token[..85],
        &format!("{token}A"),
        &"!".repeat(86),
        &format!("{}=", &token[..85]),
        huge.as_str(),
    ] {
        let r = send(
            &app,
            post_with("/transfer", &cookie, &[("x-csrf-token", bad)]),
        )
        .await;
        assert_refused(&r, Reason::TokenMalformed);
    }
    let r = send(
        &app,
        post_with(
            "/transfer",
            &cookie,
            &[("x-csrf-token", &token), ("x-csrf-token", &token)],
        ),
    )
    .await;
    assert_refused(&r, Reason::TokenMalformed);
    let r = send(
        &app,
        form(
            "/transfer",
            &cookie,
            format!("csrf_token={token}&csrf_token={token}"),
        ),
    )
    .await;
    assert_refused(&r, Reason::TokenMalformed);
}

#[tokio::test]
async fn wrong_token_is_refused() {
    let app = app();
    let (cookie, token) = session_and_token(&app).await;
    // Flip one bit of the masked half: well-formed, wrong.
    let mut bytes = token.into_bytes();
    bytes[60] = if bytes[60] == b'A' { b'B' } else { b'A' };
    let wrong = String::from_utf8(bytes).unwrap();
    let r = send(
        &app,
        post_with("/transfer", &cookie, &[("x-csrf-token", &wrong)]),
    )
    .await;
    assert_refused(&r, Reason::TokenMismatch);
}

#[tokio::test]
async fn another_sessions_token_is_refused() {
    let app = app_with(
        CsrfLayer::builder()
            .exempt_path_prefix("/login")
            .build()
            .unwrap(),
    );
    let (cookie_a, _) = session_and_token(&app).await;
    let (_, token_b) = session_and_token(&app).await;
    let r = send(
        &app,
        post_with("/transfer", &cookie_a, &[("x-csrf-token", &token_b)]),
    )
    .await;
    assert_refused(&r, Reason::TokenMismatch);
    // A session that never minted a secret refuses any token.
    let r = send(&app, Request::post("/login/x").body(Body::empty()).unwrap()).await;
    let fresh = r.cookie.unwrap();
    let r = send(
        &app,
        post_with("/transfer", &fresh, &[("x-csrf-token", &token_b)]),
    )
    .await;
    assert_refused(&r, Reason::NoSecret);
    let r = send(
        &app,
        Request::post("/transfer")
            .header("x-csrf-token", &token_b)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_refused(&r, Reason::NoSecret);
}

#[tokio::test]
async fn token_from_before_login_is_refused_after_login() {
    let app = app();
    let (cookie, before) = session_and_token(&app).await;
    let r = send(
        &app,
        Request::post("/login/alice")
            .header("cookie", &cookie)
            .header("x-csrf-token", &before)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let cookie = r.cookie.unwrap();
    let r = send(
        &app,
        post_with("/transfer", &cookie, &[("x-csrf-token", &before)]),
    )
    .await;
    assert_refused(&r, Reason::NoSecret);
    let after = token_for(&app, &cookie).await;
    let r = send(
        &app,
        post_with("/transfer", &cookie, &[("x-csrf-token", &before)]),
    )
    .await;
    assert_refused(&r, Reason::TokenMismatch);
    let r = send(
        &app,
        post_with("/transfer", &cookie, &[("x-csrf-token", &after)]),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn valid_token_with_cross_site_fetch_metadata_is_refused() {
    let app = app();
    let (cookie, token) = session_and_token(&app).await;
    for site in ["cross-site", "same-site"] {
        let r = send(
            &app,
            post_with(
                "/transfer",
                &cookie,
                &[("x-csrf-token", &token), ("sec-fetch-site", site)],
            ),
        )
        .await;
        assert_refused(&r, Reason::CrossSite);
    }
}

#[tokio::test]
async fn valid_token_with_a_lookalike_origin_is_refused() {
    let app = app();
    let (cookie, token) = session_and_token(&app).await;
    for origin in [
        "https://app.example.com.evil.com",
        "https://evil.com",
        "https://app.example.com:8443",
        "https://APP.example.com",
        "https://app.example.com/",
        "https://app.example.com/path",
        "ftp://app.example.com",
        "app.example.com",
        "https://user@app.example.com",
    ] {
        for site in [None, Some("same-origin")] {
            let mut headers = vec![("x-csrf-token", token.as_str()), ("origin", origin)];
            if let Some(site) = site {
                headers.push(("sec-fetch-site", site));
            }
            let r = send(&app, post_with("/transfer", &cookie, &headers)).await;
            assert_refused(&r, Reason::OriginMismatch);
        }
    }
}

#[tokio::test]
async fn null_origin_is_refused() {
    let app = app();
    let (cookie, token) = session_and_token(&app).await;
    let r = send(
        &app,
        post_with(
            "/transfer",
            &cookie,
            &[("x-csrf-token", &token), ("origin", "null")],
        ),
    )
    .await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (StatusCode::FORBIDDEN, "CSRF check failed")
    );
    let r = send(
        &app,
        post_with(
            "/transfer",
            &cookie,
            &[
                ("x-csrf-token", &token),
                ("origin", "null"),
                ("sec-fetch-site", "same-origin"),
            ],
        ),
    )
    .await;
    assert_refused(&r, Reason::OriginNull);
}

#[tokio::test]
async fn own_origin_is_accepted_and_trusted_origins_may_be_same_site() {
    let app = app();
    let (cookie, token) = session_and_token(&app).await;
    for origin in ["https://app.example.com", "http://app.example.com"] {
        let r = send(
            &app,
            post_with(
                "/transfer",
                &cookie,
                &[("x-csrf-token", &token), ("origin", origin)],
            ),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{origin}");
    }
    let app = app_with(
        CsrfLayer::builder()
            .with_trusted_origin("https://admin.example.com")
            .build()
            .unwrap(),
    );
    let (cookie, token) = session_and_token(&app).await;
    let sibling = |origin: &'static str| {
        post_with(
            "/transfer",
            &cookie,
            &[
                ("x-csrf-token", &token),
                ("origin", origin),
                ("sec-fetch-site", "same-site"),
            ],
        )
    };
    assert_eq!(
        send(&app, sibling("https://admin.example.com"))
            .await
            .status,
        StatusCode::OK
    );
    assert_refused(
        &send(&app, sibling("https://ugc.example.com")).await,
        Reason::CrossSite,
    );
}

#[tokio::test]
async fn origin_scheme_must_match_when_the_request_names_its_scheme() {
    let app = app();
    let (cookie, token) = session_and_token(&app).await;
    let req = |origin: &str| {
        Request::post(format!("https://{HOST}/transfer"))
            .header("cookie", &cookie)
            .header("x-csrf-token", &token)
            .header("origin", origin)
            .body(Body::empty())
            .unwrap()
    };
    assert_eq!(
        send(&app, req("https://app.example.com")).await.status,
        StatusCode::OK
    );
    assert_refused(
        &send(&app, req("http://app.example.com")).await,
        Reason::OriginMismatch,
    );
}

#[tokio::test]
async fn requests_without_fetch_metadata_or_origin_pass_the_origin_check() {
    let app = app_with(CsrfLayer::builder().without_token().build().unwrap());
    let r = send(
        &app,
        Request::post("/transfer").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    // Without the token part the origin check still refuses.
    let r = send(
        &app,
        Request::post("/transfer")
            .header("sec-fetch-site", "cross-site")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_refused(&r, Reason::CrossSite);
    let r = send(
        &app,
        Request::post("/transfer")
            .header("host", HOST)
            .header("origin", "https://evil.com")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_refused(&r, Reason::OriginMismatch);
}

#[tokio::test]
async fn safe_methods_need_no_token_and_unsafe_ones_all_do() {
    let app = app();
    let r = send(
        &app,
        Request::get("/form")
            .header("sec-fetch-site", "cross-site")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let (cookie, _) = session_and_token(&app).await;
    for method in ["PUT", "PATCH", "DELETE"] {
        let req = Request::builder()
            .method(method)
            .uri("/transfer")
            .header("cookie", &cookie)
            .body(Body::empty())
            .unwrap();
        assert_refused(&send(&app, req).await, Reason::TokenMissing);
    }
}

#[tokio::test]
async fn exempt_routes_skip_both_checks() {
    let app = app_with(
        CsrfLayer::builder()
            .exempt_path_prefix("/hooks")
            .exempt_if(|_, uri| uri.path() == "/echo")
            .build()
            .unwrap(),
    );
    for path in ["/hooks/in", "/echo"] {
        let req = Request::post(path)
            .header("host", HOST)
            .header("sec-fetch-site", "cross-site")
            .header("origin", "https://hooks.example.net")
            .body(Body::empty())
            .unwrap();
        assert_eq!(send(&app, req).await.status, StatusCode::OK, "{path}");
    }
    let r = send(
        &app,
        Request::post("/transfer").body(Body::empty()).unwrap(),
    )
    .await;
    assert_refused(&r, Reason::TokenMissing);
}

#[tokio::test]
async fn oversized_form_body_is_refused() {
    let app = app_with(CsrfLayer::builder().with_form_limit(1024).build().unwrap());
    let (cookie, token) = session_and_token(&app).await;
    let body = format!("pad={}&csrf_token={token}", "a".repeat(2000));
    assert_refused(
        &send(&app, form("/echo", &cookie, body)).await,
        Reason::BodyTooLarge,
    );
    // The same size is fine when the token comes in the header: the body is not read.
    let req = Request::post("/echo")
        .header("cookie", &cookie)
        .header("x-csrf-token", &token)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Body::from("a".repeat(2000)))
        .unwrap();
    assert_eq!(send(&app, req).await.body.len(), 2000);
}

#[tokio::test]
async fn refusal_body_is_customisable() {
    let app = app_with(
        CsrfLayer::builder()
            .with_rejection_body("nope")
            .build()
            .unwrap(),
    );
    let r = send(
        &app,
        Request::post("/transfer").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::FORBIDDEN, "nope"));
}

#[tokio::test]
async fn without_session_layer_unsafe_requests_are_refused() {
    let app: Router = Router::new()
        .route("/transfer", post(|| async { "transfer accepted" }))
        .layer(CsrfLayer::new());
    let r = send(
        &app,
        Request::post("/transfer").body(Body::empty()).unwrap(),
    )
    .await;
    assert_refused(&r, Reason::NoSession);
}

#[test]
fn untrusted_origin_forms_are_refused_at_build() {
    for bad in [
        "https://a.example/path",
        "a.example",
        "file:///x",
        "https://exämple.com",
    ] {
        let err = CsrfLayer::builder()
            .with_trusted_origin(bad)
            .build()
            .unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Config, "{bad}");
    }
}

#[test]
fn token_debug_never_prints_the_token() {
    let t = CsrfToken("secret-ish".into());
    assert!(!format!("{t:?}").contains("secret-ish"));
}

/// keyfob builds on tower-http's origin check and only adds refusals: every
/// request tower-http refuses, keyfob refuses too. Pins that the first stage
/// is really tower-http's and that no keyfob rule loosens it.
#[tokio::test]
async fn refuses_everything_tower_http_refuses() {
    let ours = app_with(CsrfLayer::builder().without_token().build().unwrap());
    let theirs = Router::new()
        .route("/transfer", post(|| async { "transfer accepted" }))
        .layer(tower_http::csrf::CsrfLayer::new());
    let origins = [
        None,
        Some(""),
        Some("null"),
        Some("https://app.example.com"),
        Some("http://app.example.com"),
        Some("https://app.example.com.evil.com"),
        Some("https://evil.com"),
        Some("https://app.example.com:444"),
        Some("garbage"),
    ];
    let sites = [
        None,
        Some(""),
        Some("same-origin"),
        Some("none"),
        Some("same-site"),
        Some("cross-site"),
        Some("bogus"),
    ];
    let mut extra = 0;
    for method in ["POST", "PUT", "DELETE", "PATCH", "GET"] {
        for origin in origins {
            for site in sites {
                let req = || {
                    let mut r = Request::builder()
                        .method(method)
                        .uri("/transfer")
                        .header("host", HOST);
                    if let Some(o) = origin {
                        r = r.header("origin", o);
                    }
                    if let Some(s) = site {
                        r = r.header("sec-fetch-site", s);
                    }
                    r.body(Body::empty()).unwrap()
                };
                let t = theirs.clone().oneshot(req()).await.unwrap().status();
                let o = send(&ours, req()).await.status;
                let case =
                    format!("{method} origin={origin:?} site={site:?}: tower-http {t}, keyfob {o}");
                if t == StatusCode::FORBIDDEN {
                    assert_eq!(o, StatusCode::FORBIDDEN, "{case}");
                } else if o == StatusCode::FORBIDDEN {
                    // Only where an Origin is present and not this origin.
                    assert!(
                        !matches!(
                            origin,
                            None | Some("")
                                | Some("https://app.example.com")
                                | Some("http://app.example.com")
                        ),
                        "{case}"
                    );
                    extra += 1;
                }
            }
        }
    }
    assert!(
        extra > 0,
        "keyfob's stricter Origin rule refused nothing extra"
    );
}

mod logs {
    use std::sync::{Arc, Mutex};

    use tracing::{
        field::{Field, Visit},
        span, Event, Metadata, Subscriber,
    };

    /// Collects every event's fields as text, with the thread that logged it.
    #[derive(Clone, Default)]
    pub(super) struct Capture(Arc<Mutex<Vec<(std::thread::ThreadId, String)>>>);

    /// Installed once as the global subscriber: a scoped one races with the
    /// callsite-interest cache when tests run in parallel.
    pub(super) fn capture() -> &'static Capture {
        static CAPTURE: std::sync::OnceLock<Capture> = std::sync::OnceLock::new();
        CAPTURE.get_or_init(|| {
            let c = Capture::default();
            let _ = tracing::subscriber::set_global_default(c.clone());
            c
        })
    }

    impl Capture {
        /// What this thread logged.
        pub(super) fn lines(&self) -> Vec<String> {
            let me = std::thread::current().id();
            self.0
                .lock()
                .unwrap()
                .iter()
                .filter(|(t, _)| *t == me)
                .map(|(_, l)| l.clone())
                .collect()
        }
    }

    struct Line(String);

    impl Visit for Line {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            self.0.push_str(&format!("{}={:?} ", field.name(), value));
        }
    }

    impl Subscriber for Capture {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &span::Attributes<'_>) -> span::Id {
            span::Id::from_u64(1)
        }
        fn record(&self, _: &span::Id, _: &span::Record<'_>) {}
        fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}
        fn event(&self, event: &Event<'_>) {
            let mut line = Line(String::new());
            event.record(&mut line);
            let me = std::thread::current().id();
            self.0.lock().unwrap().push((me, line.0));
        }
        fn enter(&self, _: &span::Id) {}
        fn exit(&self, _: &span::Id) {}
    }
}

#[tokio::test]
async fn refusals_are_logged_with_the_reason_and_never_the_token() {
    let capture = logs::capture();
    let app = app();
    let (cookie_a, token_a) = session_and_token(&app).await;
    let (_, token_b) = session_and_token(&app).await;
    send(
        &app,
        post_with("/transfer", &cookie_a, &[("x-csrf-token", &token_b)]),
    )
    .await;
    send(
        &app,
        post_with(
            "/transfer",
            &cookie_a,
            &[("x-csrf-token", &token_a), ("sec-fetch-site", "cross-site")],
        ),
    )
    .await;
    send(
        &app,
        form("/transfer", &cookie_a, format!("csrf_token={}x", &token_b)),
    )
    .await;
    let lines = capture.lines();
    let refused: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("csrf.refused"))
        .collect();
    assert_eq!(refused.len(), 3, "{lines:#?}");
    assert!(
        refused[0].contains("token does not match the session"),
        "{}",
        refused[0]
    );
    assert!(refused[0].contains("/transfer"), "{}", refused[0]);
    assert!(refused[1].contains("cross-site request"), "{}", refused[1]);
    assert!(
        refused[1].contains("POST") && refused[1].contains("/transfer"),
        "{}",
        refused[1]
    );
    assert!(refused[2].contains("token malformed"), "{}", refused[2]);
    for line in &lines {
        for t in [&token_a, &token_b] {
            assert!(!line.contains(&t[..20]), "a token was logged: {line}");
        }
        let secret_cookie = cookie_a.trim_start_matches("id=");
        assert!(
            !line.contains(secret_cookie),
            "a session ID was logged: {line}"
        );
    }
}
