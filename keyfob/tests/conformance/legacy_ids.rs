//! `with_legacy_ids`: a tower-sessions cookie of a session that `migrate`
//! imported is accepted once, rotated to a keyfob ID, and never again.

use std::{collections::HashMap, sync::Arc};

use axum::{
    body::Body,
    http::{header, HeaderMap, Request},
    routing::get,
    Router,
};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use http_body_util::BodyExt;
use keyfob::{
    migrate::{Migration, Source},
    MemoryStore, Session, SessionLayer, SessionStore,
};
use time::{Duration, OffsetDateTime};
use tower::ServiceExt;

/// One imported tower-sessions session holding `user = "alice"`; returns its old cookie.
async fn import(store: Arc<dyn SessionStore>) -> String {
    let id: i128 = 0x0123_4567_89ab_cdef_0011_2233_4455_6677;
    let data: HashMap<String, serde_json::Value> =
        HashMap::from([("user".to_string(), serde_json::json!("alice"))]);
    let expires = OffsetDateTime::now_utc() + Duration::days(1);
    let bytes = rmp_serde::to_vec(&(id, data, expires)).unwrap();
    let cookie = URL_SAFE_NO_PAD.encode(id.to_le_bytes());
    let report = Migration::new(Source::rows(vec![(cookie.clone(), bytes)]), store)
        .run(|_| {})
        .await
        .unwrap();
    assert_eq!(report.copied, 1);
    cookie
}

fn app(store: Arc<dyn SessionStore>, legacy: bool) -> Router {
    let layer = SessionLayer::builder(store)
        .with_legacy_ids(legacy)
        .build()
        .unwrap();
    Router::new()
        .route(
            "/user",
            get(
                |s: Session| async move { format!("{:?}", s.get::<String>("user").await.unwrap()) },
            ),
        )
        .route(
            "/logout",
            get(|s: Session| async move { s.delete().await.unwrap() }),
        )
        .layer(layer)
}

async fn send(app: &Router, uri: &str, cookie: &str) -> (HeaderMap, String) {
    let req = Request::builder()
        .uri(uri)
        .header(header::COOKIE, format!("id={cookie}"))
        .body(Body::empty())
        .unwrap();
    let res = app.clone().oneshot(req).await.unwrap();
    let (parts, body) = res.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (parts.headers, String::from_utf8_lossy(&body).into_owned())
}

fn new_cookie(headers: &HeaderMap) -> Option<String> {
    let line = headers.get(header::SET_COOKIE)?.to_str().ok()?;
    Some(line.split(';').next()?.trim_start_matches("id=").to_owned())
}

#[tokio::test]
async fn legacy_cookie_is_accepted_once_and_rotated_to_a_keyfob_id() {
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    let old = import(store.clone()).await;
    let app = app(store, true);
    let (headers, body) = send(&app, "/user", &old).await;
    assert_eq!(body, r#"Some("alice")"#);
    let rotated = new_cookie(&headers).unwrap();
    assert_eq!(rotated.len(), 43);
    // The new ID carries the session; the import mark is gone from its data.
    assert_eq!(send(&app, "/user", &rotated).await.1, r#"Some("alice")"#);
    // The old cookie, replayed, is no session.
    let (headers, body) = send(&app, "/user", &old).await;
    assert_eq!(body, "None");
    assert!(new_cookie(&headers).is_none());
}

#[tokio::test]
async fn legacy_cookies_are_no_session_unless_the_layer_opts_in() {
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    let old = import(store.clone()).await;
    let (headers, body) = send(&app(store, false), "/user", &old).await;
    assert_eq!(body, "None");
    assert!(new_cookie(&headers).is_none());
}

#[tokio::test]
async fn deleting_a_legacy_session_on_first_use_deletes_the_imported_record() {
    let store = Arc::new(MemoryStore::new());
    let old = import(store.clone()).await;
    assert_eq!(store.len(), 1);
    let (headers, _) = send(&app(store.clone(), true), "/logout", &old).await;
    assert_eq!(new_cookie(&headers).as_deref(), Some(""));
    assert_eq!(store.len(), 0);
}
