//! The signed and sealed value decoders: `Keyring::verify`/`decrypt`, the
//! signed and private jars, and cookie sessions through the real layer.
//! Any input is refused or opened, never a panic; nothing forged opens.
#![no_main]

use std::sync::OnceLock;

use axum::{body::Body, routing::get, Router};
use http::{header::COOKIE, HeaderMap, HeaderValue, Request};
use keyfob::{
    jar::{PrivateCookieJar, SignedCookieJar},
    keys::Keyring,
    CookieStore, Session, SessionLayer,
};
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

struct World {
    rt: tokio::runtime::Runtime,
    keys: Keyring,
    sealed: Router,
    signed: Router,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let keys = Keyring::generate().unwrap();
        let app = |store: CookieStore| {
            Router::new()
                .route(
                    "/",
                    get(|s: Session| async move {
                        let n: Option<u64> = s.get("n").await?;
                        Ok::<_, keyfob::Error>(format!("{n:?}"))
                    }),
                )
                .layer(SessionLayer::cookie(store))
        };
        World {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            sealed: app(CookieStore::new(keys.clone())),
            signed: app(CookieStore::signed(keys.clone())),
            keys,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Random bytes never carry a valid MAC or GCM tag.
    assert!(w.keys.verify("theme", text).is_none());
    assert!(w.keys.decrypt("theme", text).is_none());
    let Ok(value) = HeaderValue::from_str(&format!("theme={text}; id={text}")) else {
        return;
    };
    let mut headers = HeaderMap::new();
    headers.insert(COOKIE, value.clone());
    assert!(SignedCookieJar::from_headers(&headers, w.keys.clone())
        .get("theme")
        .is_none());
    assert!(PrivateCookieJar::from_headers(&headers, w.keys.clone())
        .get("theme")
        .is_none());
    for app in [&w.sealed, &w.signed] {
        let req = Request::get("/")
            .header(COOKIE, value.clone())
            .body(Body::empty())
            .unwrap();
        let res = w.rt.block_on(app.clone().oneshot(req)).unwrap();
        assert_eq!(res.status(), 200);
    }
});
