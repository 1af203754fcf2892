//! The session cookie reader, through the real layer: any `Cookie` header
//! bytes (split on `\n` into several headers) give a response, never a
//! panic or a server error.
#![no_main]

use std::sync::OnceLock;

use axum::{body::Body, routing::get, Router};
use http::{header::COOKIE, HeaderValue, Request};
use keyfob::{keys::Keyring, MemoryStore, Session, SessionLayer};
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

struct World {
    rt: tokio::runtime::Runtime,
    plain: Router,
    signed: Router,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let app = |layer: SessionLayer| {
            Router::new()
                .route(
                    "/",
                    get(|s: Session| async move {
                        s.load().await?;
                        Ok::<_, keyfob::Error>("ok")
                    }),
                )
                .layer(layer)
        };
        let keys = Keyring::generate().unwrap();
        World {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            plain: app(SessionLayer::new(MemoryStore::new())),
            signed: app(SessionLayer::builder(MemoryStore::new())
                .with_signed_ids(keys)
                .build()
                .unwrap()),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    let mut req = Request::get("/");
    for part in data.split(|&b| b == b'\n') {
        if let Ok(v) = HeaderValue::from_bytes(part) {
            req = req.header(COOKIE, v);
        }
    }
    let Ok(req) = req.body(Body::empty()) else {
        return;
    };
    let (parts, body) = req.into_parts();
    for app in [&w.plain, &w.signed] {
        let req = Request::from_parts(parts.clone(), Body::empty());
        let res = w.rt.block_on(app.clone().oneshot(req)).unwrap();
        assert_eq!(res.status(), 200);
    }
    drop(body);
});
