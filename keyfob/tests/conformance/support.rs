//! The harness: an app with a test router over any store, a store wrapper
//! that counts what reaches the store, and cookie helpers.

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};

use axum::{
    body::Body,
    extract::{Path, State},
    http::{header, Request, Response, StatusCode},
    routing::{get, post},
    Router,
};
use http_body_util::BodyExt;
use keyfob::{
    store::{BoxFuture, Created, OwnedSession, Updated},
    Handle, ManualClock, Record, Session, SessionLayer, SessionStore, Update,
};
use time::OffsetDateTime;
use tokio::sync::Notify;
use tower::ServiceExt;

/// Counts store calls; delegates everything to the real store.
pub struct Counting {
    pub inner: Arc<dyn SessionStore>,
    pub loads: AtomicUsize,
    pub writes: AtomicUsize,
}

impl Counting {
    pub fn loads(&self) -> usize {
        self.loads.load(Ordering::SeqCst)
    }
    pub fn writes(&self) -> usize {
        self.writes.load(Ordering::SeqCst)
    }
}

impl SessionStore for Counting {
    fn load<'a>(
        &'a self,
        handle: &'a Handle,
        now: OffsetDateTime,
    ) -> BoxFuture<'a, keyfob::Result<Option<Arc<Record>>>> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        self.inner.load(handle, now)
    }
    fn create<'a>(
        &'a self,
        handle: &'a Handle,
        record: &'a Record,
    ) -> BoxFuture<'a, keyfob::Result<Created>> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.inner.create(handle, record)
    }
    fn update<'a>(
        &'a self,
        handle: &'a Handle,
        update: &'a Update,
        now: OffsetDateTime,
    ) -> BoxFuture<'a, keyfob::Result<Updated>> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.inner.update(handle, update, now)
    }
    fn delete<'a>(&'a self, handle: &'a Handle) -> BoxFuture<'a, keyfob::Result<bool>> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.inner.delete(handle)
    }
    fn delete_expired(
        &self,
        now: OffsetDateTime,
        batch: usize,
    ) -> BoxFuture<'_, keyfob::Result<u64>> {
        self.inner.delete_expired(now, batch)
    }
    fn list_by_owner<'a>(
        &'a self,
        owner: &'a str,
        now: OffsetDateTime,
    ) -> BoxFuture<'a, keyfob::Result<Vec<OwnedSession>>> {
        self.inner.list_by_owner(owner, now)
    }
    fn delete_by_owner<'a>(
        &'a self,
        owner: &'a str,
        keep: Option<&'a Handle>,
    ) -> BoxFuture<'a, keyfob::Result<u64>> {
        self.inner.delete_by_owner(owner, keep)
    }
}

#[derive(Clone, Default)]
pub struct Gate {
    pub loaded: Arc<Notify>,
    pub release: Arc<Notify>,
}

pub struct App {
    pub router: Router,
    pub store: Arc<Counting>,
    pub clock: ManualClock,
    pub gate: Gate,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: axum::http::HeaderMap,
    pub body: String,
}

impl Reply {
    /// The `Set-Cookie` values for the session cookie `id`.
    pub fn set_cookies(&self) -> Vec<String> {
        self.headers
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter(|v| v.starts_with("id="))
            .map(str::to_owned)
            .collect()
    }

    /// The new session cookie value, if the response set one (not a removal).
    pub fn cookie(&self) -> Option<String> {
        self.set_cookies().iter().find_map(|c| {
            let v = c.split(';').next()?.strip_prefix("id=")?;
            (!v.is_empty()).then(|| v.to_owned())
        })
    }

    pub fn removes_cookie(&self) -> bool {
        self.set_cookies()
            .iter()
            .any(|c| c.starts_with("id=;") && c.contains("Max-Age=0"))
    }

    pub fn max_age(&self) -> Option<i64> {
        self.set_cookies().iter().find_map(|c| {
            c.split("; ")
                .find_map(|a| a.strip_prefix("Max-Age="))
                .and_then(|v| v.parse().ok())
        })
    }
}

async fn get_key(session: Session, Path(key): Path<String>) -> Result<String, keyfob::Error> {
    Ok(match session.get_value(&key).await? {
        Some(v) => v.to_string(),
        None => "none".into(),
    })
}

async fn set_key(
    session: Session,
    Path((key, value)): Path<(String, String)>,
) -> Result<&'static str, keyfob::Error> {
    session.insert(&key, value).await?;
    Ok("ok")
}

async fn remove_key(session: Session, Path(key): Path<String>) -> Result<String, keyfob::Error> {
    Ok(format!("{:?}", session.remove::<String>(&key).await?))
}

async fn wait_then_set(
    session: Session,
    State(gate): State<Gate>,
    Path(key): Path<String>,
) -> Result<&'static str, keyfob::Error> {
    session.load().await?;
    gate.loaded.notify_one();
    gate.release.notified().await;
    session.insert(&key, "late").await?;
    Ok("ok")
}

pub fn router(gate: Gate) -> Router {
    Router::new()
        .route("/nothing", get(|| async { "untouched" }))
        .route("/get/{key}", get(get_key))
        .route("/set/{key}/{value}", post(set_key))
        .route("/remove/{key}", post(remove_key))
        .route(
            "/clear",
            post(|s: Session| async move { s.clear().await.map(|_| "ok") }),
        )
        .route(
            "/delete",
            post(|s: Session| async move { s.delete().await.map(|_| "ok") }),
        )
        .route(
            "/cycle",
            post(|s: Session| async move { s.cycle_id().await.map(|_| "ok") }),
        )
        .route(
            "/id",
            get(|s: Session| async move {
                s.id()
                    .await
                    .map(|h| h.map_or("none".into(), |h| h.to_string()))
            }),
        )
        .route(
            "/fail/{key}",
            post(|s: Session, Path(key): Path<String>| async move {
                s.insert(&key, "x").await?;
                Ok::<_, keyfob::Error>((StatusCode::INTERNAL_SERVER_ERROR, "boom"))
            }),
        )
        .route("/wait/{key}", post(wait_then_set))
        .route(
            "/login/{owner}",
            post(|s: Session, Path(owner): Path<String>| async move {
                keyfob::auth::login(&s, &owner, &owner).await.map(|_| "ok")
            }),
        )
        .route(
            "/sessions",
            get(|s: Session| async move {
                keyfob::auth::list_sessions(&s)
                    .await
                    .map(|l| serde_json::to_string(&l).unwrap_or_default())
            }),
        )
        .route(
            "/revoke/{handle}",
            post(|s: Session, Path(h): Path<String>| async move {
                let Ok(h) = h.parse::<Handle>() else {
                    return Ok("false".to_owned());
                };
                keyfob::auth::revoke(&s, &h).await.map(|b| b.to_string())
            }),
        )
        .route(
            "/revoke-others",
            post(|s: Session| async move {
                keyfob::auth::revoke_others(&s).await.map(|n| n.to_string())
            }),
        )
        .route(
            "/revoke-all",
            post(|s: Session| async move {
                keyfob::auth::revoke_all(&s).await.map(|n| n.to_string())
            }),
        )
        .with_state(gate)
}

impl App {
    pub fn new(store: Arc<dyn SessionStore>) -> Self {
        Self::with(store, |b| b)
    }

    pub fn with(
        store: Arc<dyn SessionStore>,
        configure: impl FnOnce(keyfob::SessionLayerBuilder) -> keyfob::SessionLayerBuilder,
    ) -> Self {
        let clock = ManualClock::new();
        let store = Arc::new(Counting {
            inner: store,
            loads: AtomicUsize::new(0),
            writes: AtomicUsize::new(0),
        });
        let builder = SessionLayer::builder(store.clone()).with_clock(clock.clone());
        let layer = configure(builder)
            .build()
            .expect("valid test configuration");
        let gate = Gate::default();
        App {
            router: router(gate.clone()).layer(layer),
            store,
            clock,
            gate,
        }
    }

    pub async fn send(&self, method: &str, uri: &str, cookie: Option<&str>) -> Reply {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(c) = cookie {
            req = req.header(header::COOKIE, format!("id={c}"));
        }
        self.raw(req.body(Body::empty()).unwrap()).await
    }

    pub async fn raw(&self, req: Request<Body>) -> Reply {
        let res: Response<Body> = self.router.clone().oneshot(req).await.unwrap();
        let (parts, body) = res.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    /// Starts a session holding `k=v` and returns its cookie value.
    pub async fn session_with(&self, k: &str, v: &str) -> String {
        let r = self.send("POST", &format!("/set/{k}/{v}"), None).await;
        assert_eq!(r.status, StatusCode::OK);
        r.cookie().expect("a new session sets a cookie")
    }
}
