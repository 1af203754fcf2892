//! tower-sessions' own HTTP route tests (its `tests/common/mod.rs`), restated
//! for keyfob. The app is what an app on tower-sessions becomes after
//! following `MIGRATING.md`: the same routes and session calls, `use` lines
//! changed, `SessionManagerLayer::new(store).with_*` turned into
//! `SessionLayer::builder(store).with_*…build()`, and the two changes the guide
//! asks for (`.await?` on `set_expiry`; `with_expiry(Expiry::OnSessionEnd)`
//! where tower-sessions' default browser-session cookie is wanted).
//!
//! Where keyfob answers differently on purpose the case asserts keyfob's
//! answer and says so; `MIGRATING.md` lists the same cases.

use std::sync::Arc;

use axum::{
    body::Body,
    http::{header, HeaderMap, Request, StatusCode},
    routing::get,
    Router,
};
use cookie::{Cookie, SameSite as CookieSameSite};
use http_body_util::BodyExt;
use keyfob::{Expiry, SameSite, Session, SessionLayer, SessionStore};
use time::{Duration, OffsetDateTime};
use tower::ServiceExt;

fn routes() -> Router {
    Router::new()
        .route("/", get(|_: Session| async { "Hello, world!" }))
        .route(
            "/insert",
            get(|session: Session| async move {
                session.insert("foo", 42).await.unwrap();
            }),
        )
        .route(
            "/get",
            get(|session: Session| async move {
                format!("{}", session.get::<usize>("foo").await.unwrap().unwrap())
            }),
        )
        .route(
            "/get_value",
            get(|session: Session| async move {
                format!("{:?}", session.get_value("foo").await.unwrap())
            }),
        )
        .route(
            "/remove_value",
            get(|session: Session| async move {
                session.remove_value("foo").await.unwrap();
            }),
        )
        .route(
            "/cycle_id",
            get(|session: Session| async move {
                session.cycle_id().await.unwrap();
            }),
        )
        .route(
            "/flush",
            get(|session: Session| async move {
                session.flush().await.unwrap();
            }),
        )
        .route(
            "/set_expiry",
            get(|session: Session| async move {
                let at = OffsetDateTime::now_utc() + Duration::days(1);
                session
                    .set_expiry(Some(Expiry::AtDateTime(at)))
                    .await
                    .unwrap();
            }),
        )
        .route(
            "/is_empty",
            get(|session: Session| async move { session.is_empty().await.unwrap().to_string() }),
        )
        .route(
            "/clear",
            get(|session: Session| async move {
                session.clear().await.unwrap();
            }),
        )
        .route(
            "/expiry",
            get(|session: Session| async move {
                match session.expiry().await.unwrap() {
                    Some(Expiry::OnInactivity(d)) => format!("inactivity {}", d.whole_seconds()),
                    Some(Expiry::OnSessionEnd) => "session end".to_owned(),
                    Some(Expiry::AtDateTime(_)) => "at a date".to_owned(),
                    None => "none".to_owned(),
                }
            }),
        )
        .route(
            "/set_expiry_then_date",
            get(|session: Session| async move {
                session
                    .set_expiry(Some(Expiry::OnInactivity(Duration::minutes(10))))
                    .await
                    .unwrap();
                let at = session.expiry_date().await.unwrap().unwrap();
                (at - OffsetDateTime::now_utc()).whole_seconds().to_string()
            }),
        )
        .route(
            "/remove_expiry",
            get(|session: Session| async move {
                session
                    .set_expiry(Some(Expiry::OnSessionEnd))
                    .await
                    .unwrap();
            }),
        )
}

/// tower-sessions' `build_app`: `with_expiry(OnInactivity(max_age))` when
/// given, else its default (a browser-session cookie), which keyfob spells
/// `with_expiry(Expiry::OnSessionEnd)`.
fn app(store: Arc<dyn SessionStore>, max_age: Option<Duration>, domain: Option<&str>) -> Router {
    let mut layer = SessionLayer::builder(store).with_same_site(SameSite::Strict);
    layer = match max_age {
        Some(max_age) => layer.with_expiry(Expiry::OnInactivity(max_age)),
        None => layer.with_expiry(Expiry::OnSessionEnd),
    };
    if let Some(domain) = domain {
        layer = layer.with_domain(domain);
    }
    routes().layer(layer.build().unwrap())
}

async fn send(
    app: &Router,
    uri: &str,
    cookie: Option<&Cookie<'_>>,
) -> (StatusCode, HeaderMap, String) {
    let mut req = Request::builder().uri(uri);
    if let Some(c) = cookie {
        req = req.header(header::COOKIE, c.encoded().to_string());
    }
    let res = app
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let (parts, body) = res.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

fn session_cookie(headers: &HeaderMap) -> Option<Cookie<'static>> {
    let line = headers.get_all(header::SET_COOKIE).iter().next()?;
    Cookie::parse_encoded(line.to_str().ok()?.to_owned()).ok()
}

fn about(actual: Option<cookie::time::Duration>, expected: Duration) {
    let actual = actual.expect("a Max-Age");
    let secs = actual.whole_seconds() - expected.whole_seconds();
    assert!(secs.abs() <= 1, "Max-Age {actual} is not {expected}");
}

pub async fn no_session_set(store: Arc<dyn SessionStore>) {
    let app = app(store, Some(Duration::hours(1)), None);
    let (_, headers, _) = send(&app, "/", None).await;
    assert!(headers.get(header::SET_COOKIE).is_none());
}

pub async fn bogus_session_cookie(store: Arc<dyn SessionStore>) {
    // A well-formed tower-sessions ID that no store knows. keyfob IDs are 43
    // characters, so this is not even a keyfob ID: no session, and the
    // insert starts a new one.
    let app = app(store, Some(Duration::hours(1)), None);
    let bogus = Cookie::new("id", "AAAAAAAAAAAAAAAAAAAAAA");
    let (status, headers, _) = send(&app, "/insert", Some(&bogus)).await;
    assert_eq!(status, StatusCode::OK);
    let cookie = session_cookie(&headers).unwrap();
    assert_ne!(cookie.value(), "AAAAAAAAAAAAAAAAAAAAAA");
}

pub async fn malformed_session_cookie(store: Arc<dyn SessionStore>) {
    // Differs on purpose: tower-sessions answers `/` (a handler that never
    // touches the session) with a `Set-Cookie`. keyfob neither loads nor
    // writes anything for such a handler, so it sends none; the malformed
    // value is simply no session.
    let app = app(store, Some(Duration::hours(1)), None);
    let malformed = Cookie::new("id", "malformed");
    let (status, headers, _) = send(&app, "/", Some(&malformed)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers.get(header::SET_COOKIE).is_none());
    // A handler that writes gets a fresh session, as on tower-sessions.
    let (_, headers, _) = send(&app, "/insert", Some(&malformed)).await;
    assert_ne!(session_cookie(&headers).unwrap().value(), "malformed");
}

pub async fn insert_session(store: Arc<dyn SessionStore>) {
    let app = app(store, Some(Duration::hours(1)), None);
    let (_, headers, _) = send(&app, "/insert", None).await;
    let cookie = session_cookie(&headers).unwrap();
    assert_eq!(cookie.name(), "id");
    assert_eq!(cookie.http_only(), Some(true));
    assert_eq!(cookie.same_site(), Some(CookieSameSite::Strict));
    assert!(cookie
        .max_age()
        .is_some_and(|age| age <= cookie::time::Duration::hours(1)));
    assert_eq!(cookie.secure(), Some(true));
    assert_eq!(cookie.path(), Some("/"));
}

pub async fn session_max_age(store: Arc<dyn SessionStore>) {
    let app = app(store, None, None);
    let (_, headers, _) = send(&app, "/insert", None).await;
    let cookie = session_cookie(&headers).unwrap();
    assert_eq!(cookie.name(), "id");
    assert_eq!(cookie.http_only(), Some(true));
    assert_eq!(cookie.same_site(), Some(CookieSameSite::Strict));
    assert!(cookie.max_age().is_none());
    assert_eq!(cookie.secure(), Some(true));
    assert_eq!(cookie.path(), Some("/"));
}

pub async fn get_session(store: Arc<dyn SessionStore>) {
    let app = app(store, Some(Duration::hours(1)), None);
    let (_, headers, _) = send(&app, "/insert", None).await;
    let cookie = session_cookie(&headers).unwrap();
    let (status, _, body) = send(&app, "/get", Some(&cookie)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "42");
}

pub async fn get_no_value(store: Arc<dyn SessionStore>) {
    let app = app(store, Some(Duration::hours(1)), None);
    let (_, _, body) = send(&app, "/get_value", None).await;
    assert_eq!(body, "None");
}

pub async fn remove_last_value(store: Arc<dyn SessionStore>) {
    let app = app(store, Some(Duration::hours(1)), None);
    let (_, headers, _) = send(&app, "/insert", None).await;
    let cookie = session_cookie(&headers).unwrap();
    send(&app, "/remove_value", Some(&cookie)).await;
    let (_, _, body) = send(&app, "/get_value", Some(&cookie)).await;
    assert_eq!(body, "None");
}

pub async fn cycle_session_id(store: Arc<dyn SessionStore>) {
    let app = app(store, Some(Duration::hours(1)), None);
    let (_, headers, _) = send(&app, "/insert", None).await;
    let first = session_cookie(&headers).unwrap();
    let (_, headers, _) = send(&app, "/cycle_id", Some(&first)).await;
    let second = session_cookie(&headers).unwrap();
    assert_ne!(first.value(), second.value());
    let (_, _, body) = send(&app, "/get", Some(&second)).await;
    assert_eq!(body, "42");
}

pub async fn flush_session(store: Arc<dyn SessionStore>) {
    let app = app(store, Some(Duration::hours(1)), None);
    let (_, headers, _) = send(&app, "/insert", None).await;
    let cookie = session_cookie(&headers).unwrap();
    let (_, headers, _) = send(&app, "/flush", Some(&cookie)).await;
    let removal = session_cookie(&headers).unwrap();
    assert_eq!(removal.value(), "");
    assert_eq!(removal.max_age(), Some(cookie::time::Duration::ZERO));
    assert_eq!(removal.path(), Some("/"));
}

pub async fn flush_with_domain(store: Arc<dyn SessionStore>) {
    let app = app(store, Some(Duration::hours(1)), Some("localhost"));
    let (_, headers, _) = send(&app, "/insert", None).await;
    let cookie = session_cookie(&headers).unwrap();
    let (_, headers, _) = send(&app, "/flush", Some(&cookie)).await;
    let removal = session_cookie(&headers).unwrap();
    assert_eq!(removal.value(), "");
    assert_eq!(removal.max_age(), Some(cookie::time::Duration::ZERO));
    assert_eq!(removal.domain(), Some("localhost"));
    assert_eq!(removal.path(), Some("/"));
}

pub async fn set_expiry(store: Arc<dyn SessionStore>) {
    // Differs on purpose: tower-sessions answers with Max-Age of one day.
    // keyfob caps every session at its absolute timeout (12 hours unless
    // `with_absolute_timeout` says otherwise), so the cookie says 12 hours.
    let app = app(store, Some(Duration::hours(1)), Some("localhost"));
    let (_, headers, _) = send(&app, "/insert", None).await;
    let cookie = session_cookie(&headers).unwrap();
    about(cookie.max_age(), Duration::hours(1));
    let (_, headers, _) = send(&app, "/set_expiry", Some(&cookie)).await;
    about(
        session_cookie(&headers).unwrap().max_age(),
        Duration::hours(12),
    );
}

pub async fn set_expiry_without_an_absolute_cap(store: Arc<dyn SessionStore>) {
    // tower-sessions' answer, once the cap is lifted as MIGRATING.md shows.
    let layer = SessionLayer::builder(store)
        .with_expiry(Expiry::OnInactivity(Duration::hours(1)))
        .with_absolute_timeout(None)
        .build()
        .unwrap();
    let app = routes().layer(layer);
    let (_, headers, _) = send(&app, "/insert", None).await;
    let cookie = session_cookie(&headers).unwrap();
    let (_, headers, _) = send(&app, "/set_expiry", Some(&cookie)).await;
    about(
        session_cookie(&headers).unwrap().max_age(),
        Duration::days(1),
    );
}

pub async fn change_expiry_type(store: Arc<dyn SessionStore>) {
    // From a browser-session cookie to a dated one (capped at the absolute
    // timeout, as in `set_expiry`)…
    let app1 = app(store.clone(), None, Some("localhost"));
    let (_, headers, _) = send(&app1, "/insert", None).await;
    let cookie = session_cookie(&headers).unwrap();
    assert_eq!(cookie.max_age(), None);
    let (_, headers, _) = send(&app1, "/set_expiry", Some(&cookie)).await;
    about(
        session_cookie(&headers).unwrap().max_age(),
        Duration::hours(12),
    );

    // …and from a dated cookie back to a browser-session one.
    let app2 = app(store, Some(Duration::hours(1)), Some("localhost"));
    let (_, headers, _) = send(&app2, "/insert", None).await;
    let cookie = session_cookie(&headers).unwrap();
    about(cookie.max_age(), Duration::hours(1));
    let (_, headers, _) = send(&app2, "/remove_expiry", Some(&cookie)).await;
    assert_eq!(session_cookie(&headers).unwrap().max_age(), None);
}

// What keyfob changed to behave as tower-sessions users expect (MIGRATING.md).

pub async fn is_empty_only_without_a_session(store: Arc<dyn SessionStore>) {
    let app = app(store, Some(Duration::hours(1)), None);
    assert_eq!(send(&app, "/is_empty", None).await.2, "true");
    let (_, headers, _) = send(&app, "/insert", None).await;
    let cookie = session_cookie(&headers).unwrap();
    assert_eq!(send(&app, "/is_empty", Some(&cookie)).await.2, "false");
    send(&app, "/clear", Some(&cookie)).await;
    // Cleared, but a stored session still has its ID.
    assert_eq!(send(&app, "/is_empty", Some(&cookie)).await.2, "false");
}

pub async fn expiry_reports_the_layers_unless_the_session_sets_its_own(
    store: Arc<dyn SessionStore>,
) {
    let dated = app(store.clone(), Some(Duration::hours(1)), None);
    assert_eq!(send(&dated, "/expiry", None).await.2, "inactivity 3600");
    let browser = app(store, None, None);
    assert_eq!(send(&browser, "/expiry", None).await.2, "session end");
}

pub async fn expiry_date_counts_an_expiry_set_earlier_in_the_request(store: Arc<dyn SessionStore>) {
    let app = app(store, Some(Duration::hours(1)), None);
    let (_, headers, _) = send(&app, "/insert", None).await;
    let cookie = session_cookie(&headers).unwrap();
    let (_, _, body) = send(&app, "/set_expiry_then_date", Some(&cookie)).await;
    let secs: i64 = body.parse().unwrap();
    assert!((595..=600).contains(&secs), "{secs}");
    // A session not yet stored reports the deadline it would start with.
    let (_, _, body) = send(&app, "/set_expiry_then_date", None).await;
    let secs: i64 = body.parse().unwrap();
    assert!((595..=600).contains(&secs), "{secs}");
}
