//! Cookie sessions (`CookieStore`): the shared cases that must follow the
//! newest cookie as a browser does, and what only a client-side store has
//! (tamper matrix, replay after a deadline, rotation, size limit, revocation).

use std::sync::Arc;

use axum::http::StatusCode;
use keyfob::{keys::Keyring, MemoryStore, SessionLayerBuilder, SessionStore};
use time::Duration;

use crate::support::{key, keys, send_raw_cookie, tampered, App, Mode, MODE};

fn app_with(
    keyring: Keyring,
    revocable: bool,
    configure: impl FnOnce(SessionLayerBuilder) -> SessionLayerBuilder,
) -> App {
    MODE.sync_scope(Mode::Cookie(keyring, revocable), || {
        App::with(Arc::new(MemoryStore::new()), configure)
    })
}

fn app() -> App {
    app_with(keys(1), true, |b| b)
}

#[tokio::test]
async fn cookie_session_cookie_has_all_attributes_and_hides_the_data() {
    let app = app();
    let r = app.send("POST", "/set/secret/hunter2", None).await;
    let set = r.set_cookies();
    assert_eq!(set.len(), 1);
    for attr in [
        "HttpOnly",
        "Secure",
        "SameSite=Lax",
        "Path=/",
        "Max-Age=7200",
    ] {
        assert!(set[0].contains(attr), "{} lacks {attr}", set[0]);
    }
    let value = r.cookie().unwrap();
    assert!(!value.contains("hunter2") && !value.contains("secret"));
    // Each write seals with a fresh nonce: the same data never looks the same.
    let again = app.send("POST", "/set/secret/hunter2", Some(&value)).await;
    assert_ne!(again.cookie().unwrap(), value);
}

#[tokio::test]
async fn cookie_session_writes_live_in_the_newest_cookie() {
    let app = app();
    let mut cookie = app.session_with("a", "1").await;
    cookie = app
        .send("POST", "/set/b/2", Some(&cookie))
        .await
        .cookie()
        .unwrap();
    let r = app.send("POST", "/remove/a", Some(&cookie)).await;
    assert_eq!(r.body, "Some(\"1\")");
    cookie = r.cookie().unwrap();
    assert_eq!(app.send("GET", "/get/a", Some(&cookie)).await.body, "none");
    assert_eq!(app.send("GET", "/get/b", Some(&cookie)).await.body, "\"2\"");
    cookie = app
        .send("POST", "/clear", Some(&cookie))
        .await
        .cookie()
        .unwrap();
    assert_eq!(app.send("GET", "/get/b", Some(&cookie)).await.body, "none");
}

#[tokio::test]
async fn cookie_session_saves_on_server_error_only_when_configured() {
    let app = app_with(keys(1), true, |b| b.with_save_on_server_error(true));
    let cookie = app.session_with("a", "1").await;
    let r = app.send("POST", "/fail/b", Some(&cookie)).await;
    let cookie = r.cookie().expect("saved despite the 500");
    assert_eq!(app.send("GET", "/get/b", Some(&cookie)).await.body, "\"x\"");
}

#[tokio::test]
async fn stale_cookie_session_replayed_after_its_idle_deadline_is_rejected() {
    let app = app_with(keys(1), false, |b| {
        b.with_idle_timeout(Duration::minutes(30))
            .with_touch_interval(Duration::minutes(5))
    });
    let first = app.session_with("a", "1").await;
    app.clock.advance(Duration::minutes(4));
    let r = app.send("GET", "/get/a", Some(&first)).await;
    assert!(r.set_cookies().is_empty(), "no touch inside the interval");
    app.clock.advance(Duration::minutes(25));
    let r = app.send("GET", "/get/a", Some(&first)).await;
    assert_eq!(r.body, "\"1\"");
    let slid = r.cookie().expect("the idle deadline slid: a new cookie");
    assert_eq!(r.max_age(), Some(30 * 60));
    app.clock.advance(Duration::minutes(2));
    // 31 minutes after `first` was sealed: replaying it byte for byte fails,
    // whatever the browser kept; the re-issued cookie still works.
    assert_eq!(app.send("GET", "/get/a", Some(&first)).await.body, "none");
    assert_eq!(app.send("GET", "/get/a", Some(&slid)).await.body, "\"1\"");
}

#[tokio::test]
async fn stale_cookie_session_replayed_after_its_absolute_deadline_is_rejected() {
    let app = app_with(keys(1), false, |b| {
        b.with_idle_timeout(Duration::minutes(30))
            .with_absolute_timeout(Some(Duration::hours(2)))
    });
    let mut cookie = app.session_with("a", "1").await;
    let mut copies = vec![cookie.clone()];
    for step in 0..5 {
        app.clock.advance(Duration::minutes(20));
        let r = app
            .send("POST", &format!("/set/s{step}/x"), Some(&cookie))
            .await;
        assert_eq!(r.status, StatusCode::OK);
        cookie = r.cookie().unwrap();
        if step == 2 {
            cookie = app
                .send("POST", "/cycle", Some(&cookie))
                .await
                .cookie()
                .unwrap();
        }
        copies.push(cookie.clone());
    }
    app.clock.advance(Duration::minutes(19));
    assert_eq!(app.send("GET", "/get/a", Some(&cookie)).await.body, "\"1\"");
    app.clock.advance(Duration::minutes(2));
    for copy in &copies {
        assert_eq!(app.send("GET", "/get/a", Some(copy)).await.body, "none");
    }
}

#[tokio::test]
async fn five_thousand_byte_record_is_a_clear_error_and_sends_no_set_cookie() {
    let app = app();
    let cookie = app.session_with("a", "1").await;
    let big = "x".repeat(5000);
    let r = app
        .send("POST", &format!("/set/big/{big}"), Some(&cookie))
        .await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(r.body, "session too large to store");
    assert!(
        r.headers.get("set-cookie").is_none(),
        "{:?}",
        r.set_cookies()
    );
    // The session as it was is untouched.
    assert_eq!(app.send("GET", "/get/a", Some(&cookie)).await.body, "\"1\"");
    let r = app.send("POST", &format!("/set/big/{big}"), None).await;
    assert_eq!(r.body, "session too large to store");
    assert!(r.headers.get("set-cookie").is_none());
}

#[tokio::test]
async fn oversized_write_on_a_rotation_keeps_the_session_it_started_from() {
    let app = app();
    let cookie = app.send("POST", "/login/u1", None).await.cookie().unwrap();
    let big = "x".repeat(5000);
    let r = app
        .send("POST", &format!("/cycle-set/big/{big}"), Some(&cookie))
        .await;
    assert_eq!(r.body, "session too large to store");
    assert!(r.headers.get("set-cookie").is_none());
    // The refused write retired nothing: the user is still logged in.
    assert_eq!(app.send("GET", "/user", Some(&cookie)).await.body, "\"u1\"");
}

#[tokio::test]
async fn tamper_matrix_reads_every_cookie_session_variant_as_absent() {
    for revocable in [true, false] {
        let app = app_with(keys(1), revocable, |b| b);
        let cookie = app.session_with("a", "1").await;
        let cases = tampered(&cookie);
        assert!(cases.len() > 1000, "{}", cases.len());
        for case in cases {
            if let Some(r) = send_raw_cookie(&app, "/get/a", &case).await {
                assert_eq!(
                    (r.status, r.body.as_str()),
                    (StatusCode::OK, "none"),
                    "{case:?}"
                );
            }
        }
        let other = app_with(keys(2), revocable, |b| b);
        assert_eq!(
            other.send("GET", "/get/a", Some(&cookie)).await.body,
            "none"
        );
        let renamed = app_with(keys(1), revocable, |b| b.with_name("sid"));
        let req = axum::http::Request::get("/get/a")
            .header("cookie", format!("sid={cookie}"))
            .body(axum::body::Body::empty())
            .unwrap();
        assert_eq!(renamed.raw(req).await.body, "none", "another cookie name");
    }
}

#[tokio::test]
async fn cookie_session_under_an_old_key_is_reissued_under_the_new_one() {
    let old = app_with(keys(1), false, |b| b);
    let cookie = old.session_with("a", "1").await;
    let rotated = app_with(Keyring::from_keys([key(2), key(1)]).unwrap(), false, |b| b);
    let r = rotated.send("GET", "/get/a", Some(&cookie)).await;
    assert_eq!(r.body, "\"1\"");
    let reissued = r.cookie().expect("a read re-issues under K2");
    let only_new = app_with(keys(2), false, |b| b);
    assert_eq!(
        only_new.send("GET", "/get/a", Some(&reissued)).await.body,
        "\"1\""
    );
    assert_eq!(
        only_new.send("GET", "/get/a", Some(&cookie)).await.body,
        "none"
    );
    // Once re-issued, reads under [K2, K1] send nothing more.
    let r = rotated.send("GET", "/get/a", Some(&reissued)).await;
    assert!(r.set_cookies().is_empty());
}

#[tokio::test]
async fn without_a_revocation_store_a_copied_cookie_outlives_logout() {
    // The documented caveat, pinned: logout clears the browser's cookie, but a
    // copy taken before keeps working until its own deadline.
    let app = app_with(keys(1), false, |b| b);
    let cookie = app.session_with("a", "1").await;
    let r = app.send("POST", "/delete", Some(&cookie)).await;
    assert!(r.removes_cookie());
    assert_eq!(app.send("GET", "/get/a", Some(&cookie)).await.body, "\"1\"");
}

#[tokio::test]
async fn revoke_owner_ends_every_cookie_session_of_that_owner() {
    let app = app();
    let mut cookies = Vec::new();
    for owner in ["u1", "u1", "u2"] {
        let r = app.send("POST", &format!("/login/{owner}"), None).await;
        cookies.push(r.cookie().unwrap());
    }
    let store = app.cookie_store.clone().unwrap();
    assert_eq!(store.revoke_owner("u1").await.unwrap(), 2);
    let user = |c: &String| {
        let c = c.clone();
        let app = &app;
        async move { app.send("GET", "/user", Some(&c)).await.body }
    };
    assert_eq!(user(&cookies[0]).await, "none");
    assert_eq!(user(&cookies[1]).await, "none");
    assert_eq!(user(&cookies[2]).await, "\"u2\"");
    // A login after the revocation is not affected.
    app.clock.advance(Duration::seconds(1));
    let fresh = app.send("POST", "/login/u1", None).await.cookie().unwrap();
    assert_eq!(user(&fresh).await, "\"u1\"");
}

#[tokio::test]
async fn without_a_revocation_store_listing_and_revoking_are_errors_not_empty_answers() {
    // "Log out everywhere" after a password change must not silently do
    // nothing while the other cookies keep working.
    let app = app_with(keys(1), false, |b| b);
    let a = app.send("POST", "/login/u1", None).await.cookie().unwrap();
    let b = app.send("POST", "/login/u1", None).await.cookie().unwrap();
    for (method, uri) in [
        ("GET", "/sessions".to_owned()),
        ("POST", "/revoke-others".to_owned()),
        ("POST", "/revoke-all".to_owned()),
        (
            "POST",
            format!("/revoke/{}", app.send("GET", "/id", Some(&b)).await.body),
        ),
    ] {
        let r = app.send(method, &uri, Some(&a)).await;
        assert_eq!(r.status, StatusCode::NOT_IMPLEMENTED, "{uri}: {}", r.body);
    }
    let store = app.cookie_store.clone().unwrap();
    assert_eq!(
        store.revoke_owner("u1").await.unwrap_err().kind(),
        keyfob::ErrorKind::Unsupported
    );
}

#[tokio::test]
async fn revoked_cookie_session_stays_revoked_for_a_new_layer_over_the_same_store() {
    // A restart (or another replica) builds a new layer over the same mark
    // store and key: logged-out and revoked cookies stay dead there.
    let marks: Arc<dyn SessionStore> = Arc::new(keyfob::MemoryStore::new());
    let first = MODE.sync_scope(Mode::Cookie(keys(1), true), || App::new(marks.clone()));
    let anon = first.session_with("a", "1").await;
    let user = first
        .send("POST", "/login/u1", None)
        .await
        .cookie()
        .unwrap();
    let other = first
        .send("POST", "/login/u1", None)
        .await
        .cookie()
        .unwrap();
    first.send("POST", "/delete", Some(&anon)).await;
    first.send("POST", "/revoke-others", Some(&other)).await;
    let second = MODE.sync_scope(Mode::Cookie(keys(1), true), || App::new(marks.clone()));
    assert_eq!(second.send("GET", "/get/a", Some(&anon)).await.body, "none");
    assert_eq!(second.send("GET", "/user", Some(&user)).await.body, "none");
    assert_eq!(
        second.send("GET", "/user", Some(&other)).await.body,
        "\"u1\""
    );
}

#[tokio::test]
async fn cookie_layer_refuses_signed_ids() {
    let keyring = keys(1);
    let err = keyfob::SessionLayer::cookie_builder(keyfob::CookieStore::new(keyring.clone()))
        .with_signed_ids(keyring)
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), keyfob::ErrorKind::Config);
}

#[tokio::test]
async fn signed_only_cookie_session_is_readable_but_not_changeable() {
    use base64::Engine as _;
    let layer = keyfob::SessionLayer::cookie(keyfob::CookieStore::signed(keys(1)));
    let router = crate::support::router(Default::default()).layer(layer);
    let send = |req: axum::http::Request<axum::body::Body>| {
        let router = router.clone();
        async move {
            use http_body_util::BodyExt as _;
            use tower::ServiceExt as _;
            let res = router.oneshot(req).await.unwrap();
            let cookie = res
                .headers()
                .get("set-cookie")
                .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned());
            let body = res.into_body().collect().await.unwrap().to_bytes();
            (cookie, String::from_utf8_lossy(&body).into_owned())
        }
    };
    let req = |method: &str, uri: &str, cookie: Option<&str>| {
        let mut b = axum::http::Request::builder().method(method).uri(uri);
        if let Some(c) = cookie {
            b = b.header("cookie", c);
        }
        b.body(axum::body::Body::empty()).unwrap()
    };
    let (cookie, _) = send(req("POST", "/set/role/user", None)).await;
    let cookie = cookie.unwrap();
    let payload = cookie.trim_start_matches("id=").split('.').next().unwrap();
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    assert!(
        String::from_utf8_lossy(&json).contains("\"user\""),
        "a signed session is readable"
    );
    let (_, body) = send(req("GET", "/get/role", Some(&cookie))).await;
    assert_eq!(body, "\"user\"");
    // Rewrite the readable payload: the signature no longer matches.
    let forged_json = String::from_utf8_lossy(&json).replace("\"user\"", "\"root\"");
    let forged = format!(
        "id={}.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(forged_json.as_bytes()),
        cookie.split('.').nth(1).unwrap()
    );
    let (_, body) = send(req("GET", "/get/role", Some(&forged))).await;
    assert_eq!(body, "none");
}

#[tokio::test]
async fn explicit_save_of_an_oversized_cookie_session_is_a_too_large_error() {
    use axum::routing::post;
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;
    let seen = Arc::new(std::sync::Mutex::new(None));
    let layer = keyfob::SessionLayer::cookie(keyfob::CookieStore::new(keys(1)));
    let router: axum::Router = axum::Router::new()
        .route(
            "/big",
            post({
                let seen = seen.clone();
                move |s: keyfob::Session| async move {
                    s.insert("big", "x".repeat(5000)).await.unwrap();
                    let err = s.save().await.unwrap_err();
                    *seen.lock().unwrap() = Some((err.kind(), err.to_string()));
                    "the handler went on"
                }
            }),
        )
        .layer(layer);
    let res = router
        .oneshot(
            axum::http::Request::post("/big")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let (kind, message) = seen.lock().unwrap().clone().unwrap();
    assert_eq!(kind, keyfob::ErrorKind::TooLarge);
    assert!(message.contains("4096"), "{message}");
    // The layer does not send the oversized cookie either.
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(res.headers().get("set-cookie").is_none());
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"session too large to store");
}
