//! The CSRF token decoder, through the real layers: any `x-csrf-token`
//! header or `csrf_token` form field is refused (`403`), never a panic or
//! a server error, and never accepted.
#![no_main]

use std::sync::OnceLock;

use axum::{
    body::Body,
    routing::{get, post},
    Router,
};
use http::{header, Request, StatusCode};
use keyfob::{
    csrf::{CsrfLayer, CsrfToken},
    MemoryStore, SessionLayer,
};
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

struct World {
    rt: tokio::runtime::Runtime,
    app: Router,
    cookie: String,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let app: Router = Router::new()
            .route("/form", get(|t: CsrfToken| async move { t.to_string() }))
            .route("/transfer", post(|| async { "transfer accepted" }))
            .layer(CsrfLayer::new())
            .layer(
                SessionLayer::builder(MemoryStore::new())
                    .with_secure(false)
                    .build()
                    .unwrap(),
            );
        // A session that has a CSRF secret, so every input is compared with it.
        let res = rt
            .block_on(
                app.clone()
                    .oneshot(Request::get("/form").body(Body::empty()).unwrap()),
            )
            .unwrap();
        let cookie = res.headers()[header::SET_COOKIE]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_owned();
        World { rt, app, cookie }
    })
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    let mut reqs = Vec::new();
    if let Ok(v) = http::HeaderValue::from_bytes(data) {
        reqs.push(
            Request::post("/transfer")
                .header(header::COOKIE, &w.cookie)
                .header("x-csrf-token", v)
                .body(Body::empty())
                .unwrap(),
        );
    }
    let mut form = b"csrf_token=".to_vec();
    form.extend_from_slice(data);
    reqs.push(
        Request::post("/transfer")
            .header(header::COOKIE, &w.cookie)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(form))
            .unwrap(),
    );
    for req in reqs {
        let res = w.rt.block_on(w.app.clone().oneshot(req)).unwrap();
        assert_eq!(res.status(), StatusCode::FORBIDDEN);
    }
});
