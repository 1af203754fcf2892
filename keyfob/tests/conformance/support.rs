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
#[cfg(feature = "cookie-store")]
use keyfob::CookieStore;
use keyfob::{
    keys::Keyring,
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
        limit: usize,
    ) -> BoxFuture<'a, keyfob::Result<Vec<OwnedSession>>> {
        self.inner.list_by_owner(owner, now, limit)
    }
    fn delete_by_owner<'a>(
        &'a self,
        owner: &'a str,
        keep: Option<&'a Handle>,
    ) -> BoxFuture<'a, keyfob::Result<u64>> {
        self.inner.delete_by_owner(owner, keep)
    }
    fn update_uses_base(&self) -> bool {
        self.inner.update_uses_base()
    }
    fn holds_expired<'a>(
        &'a self,
        handle: &'a Handle,
        now: OffsetDateTime,
    ) -> BoxFuture<'a, keyfob::Result<bool>> {
        self.inner.holds_expired(handle, now)
    }
}

#[derive(Clone, Default)]
pub struct Gate {
    pub loaded: Arc<Notify>,
    pub release: Arc<Notify>,
}

/// How the harness builds the layer over the store a case gives it. Set for
/// a whole case with `MODE.scope(..)`, so the shared cases run unchanged
/// against engines other than a plain server-side store.
#[derive(Clone)]
pub enum Mode {
    /// Cookie sessions sealed under the keyring; the case's store keeps the
    /// revocation marks (`false`: no revocation store at all).
    #[cfg(feature = "cookie-store")]
    Cookie(Keyring, bool),
    /// A server-side store with signed session IDs.
    SignedIds(Keyring),
}

tokio::task_local! {
    pub static MODE: Mode;
}

pub struct App {
    pub router: Router,
    pub store: Arc<Counting>,
    pub clock: ManualClock,
    pub gate: Gate,
    /// The cookie store, in `Mode::Cookie`.
    #[cfg(feature = "cookie-store")]
    pub cookie_store: Option<CookieStore>,
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
        .route(
            "/user",
            get(|s: Session| async move {
                let user: Option<serde_json::Value> = keyfob::auth::current_user(&s).await?;
                Ok::<_, keyfob::Error>(user.map_or("none".into(), |u| u.to_string()))
            }),
        )
        .route(
            "/expiry-secs/{n}",
            post(|s: Session, Path(n): Path<i64>| async move {
                s.set_expiry(Some(keyfob::Expiry::OnInactivity(time::Duration::seconds(n))))
                    .await?;
                s.insert("k", "v").await.map(|_| "ok")
            }),
        )
        .route(
            "/get-number/{key}",
            get(|s: Session, Path(key): Path<String>| async move {
                let n: Option<u64> = s.get(&key).await?;
                Ok::<_, keyfob::Error>(n.map_or("none".into(), |n| n.to_string()))
            }),
        )
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
            "/cycle-set/{key}/{value}",
            post(|s: Session, Path((k, v)): Path<(String, String)>| async move {
                s.cycle_id().await?;
                s.insert(&k, v).await.map(|_| "ok")
            }),
        )
        .route(
            "/wait-cycle",
            post(|s: Session, State(gate): State<Gate>| async move {
                s.load().await?;
                gate.loaded.notify_one();
                gate.release.notified().await;
                s.cycle_id().await.map(|_| "ok")
            }),
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
            "/save/{key}/{value}",
            post(|s: Session, Path((k, v)): Path<(String, String)>| async move {
                s.insert(&k, v).await?;
                s.save().await.map(|_| "ok")
            }),
        )
        .route(
            "/login-save/{owner}",
            post(|s: Session, Path(owner): Path<String>| async move {
                keyfob::auth::login(&s, &owner, &owner).await?;
                s.save().await.map(|_| "ok")
            }),
        )
        .route(
            "/huge-expiry",
            post(|s: Session| async move {
                s.set_expiry(Some(keyfob::Expiry::OnInactivity(time::Duration::MAX)))
                    .await?;
                s.insert("k", "v").await.map(|_| "ok")
            }),
        )
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
        #[cfg(feature = "cookie-store")]
        let mut cookie_store = None;
        let builder = match MODE.try_with(Mode::clone).ok() {
            None => SessionLayer::builder(store.clone()),
            Some(Mode::SignedIds(keys)) => {
                SessionLayer::builder(store.clone()).with_signed_ids(keys)
            }
            #[cfg(feature = "cookie-store")]
            Some(Mode::Cookie(keys, revocable)) => {
                let mut cs = CookieStore::new(keys);
                if revocable {
                    cs = cs.with_revocation(store.clone());
                }
                cookie_store = Some(cs.clone());
                SessionLayer::cookie_builder(cs)
            }
        };
        let layer = configure(builder.with_clock(clock.clone()))
            .build()
            .expect("valid test configuration");
        let gate = Gate::default();
        App {
            router: router(gate.clone()).layer(layer),
            store,
            clock,
            gate,
            #[cfg(feature = "cookie-store")]
            cookie_store,
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

/// A keyring of one deterministic, varied 64-byte key per seed.
pub fn keys(seed: u8) -> Keyring {
    Keyring::new(key(seed)).expect("a strong test key")
}

pub fn key(seed: u8) -> Vec<u8> {
    let mut x = u32::from(seed).wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..64)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            (x >> 16) as u8
        })
        .collect()
}

/// The tamper matrix: every variant of a cookie value that must read as
/// absent (bit flips at every position, deletions, truncations, appended and
/// prepended bytes, swapped segments, case changes).
pub fn tampered(value: &str) -> Vec<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::new();
    for i in 0..bytes.len() {
        for bit in 0..7 {
            let mut b = bytes.to_vec();
            b[i] ^= 1 << bit;
            if let Ok(s) = String::from_utf8(b) {
                out.push(s);
            }
        }
        out.push(format!("{}{}", &value[..i], &value[i + 1..]));
    }
    for cut in 1..bytes.len() {
        out.push(value[..cut].to_owned());
    }
    for extra in ["A", "=", ".", "AAAA", ".AAAA", "_-"] {
        out.push(format!("{value}{extra}"));
        out.push(format!("{extra}{value}"));
    }
    if let Some((a, b)) = value.split_once('.') {
        out.push(format!("{b}.{a}"));
        out.push(format!("{a}.{a}"));
        out.push(format!("{a}.{b}.{b}"));
    } else {
        let mid = value.len() / 2;
        out.push(format!("{}{}", &value[mid..], &value[..mid]));
    }
    out.push(value.to_uppercase());
    out.push(value.to_lowercase());
    out.retain(|v| v != value);
    out
}

/// Sends `uri` with the raw cookie value `value` for `id`; `None` when the
/// value cannot be a header at all (a client could not send it either).
pub async fn send_raw_cookie(app: &App, uri: &str, value: &str) -> Option<Reply> {
    let hv = axum::http::HeaderValue::from_str(&format!("id={value}")).ok()?;
    let req = Request::get(uri)
        .header(header::COOKIE, hv)
        .body(Body::empty())
        .unwrap();
    Some(app.raw(req).await)
}

/// A TCP proxy to the test server that can fall silent: after
/// [`Partition::freeze`] it forwards nothing either way but keeps every
/// socket open, as a network partition looks to both ends (no FIN, no RST).
#[cfg(any(feature = "postgres", feature = "redis"))]
pub struct Partition {
    pub port: u16,
    frozen: Arc<std::sync::atomic::AtomicBool>,
}

#[cfg(any(feature = "postgres", feature = "redis"))]
impl Partition {
    pub async fn to(target: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let frozen = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let f = frozen.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(Self::pump(cr, sw, f.clone()));
                tokio::spawn(Self::pump(sr, cw, f.clone()));
            }
        });
        Partition { port, frozen }
    }

    /// Copies `from` to `to` until frozen; then reads and drops.
    async fn pump(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        frozen: Arc<std::sync::atomic::AtomicBool>,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if frozen.load(std::sync::atomic::Ordering::SeqCst) {
                continue;
            }
            if to.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    }

    pub fn freeze(&self) {
        self.frozen.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A near-cached store (`here`, its cache serving) sees this process's own
/// revocations and deletes on the very next load, with no wait for the
/// store's own notification.
#[cfg(any(feature = "postgres", feature = "redis"))]
pub async fn own_revocations_are_seen_at_once(here: Arc<dyn keyfob::SessionStore>) {
    let app = App::new(here.clone());
    for _ in 0..3 {
        let r = app.send("POST", "/login/u1", None).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    let now = OffsetDateTime::now_utc();
    let mine = here.list_by_owner("u1", now, 10).await.unwrap();
    assert_eq!(mine.len(), 3);
    for s in &mine {
        assert!(here.load(&s.handle, now).await.unwrap().is_some());
    }
    let keep = mine[0].handle;
    assert_eq!(here.delete_by_owner("u1", Some(&keep)).await.unwrap(), 2);
    for s in &mine[1..] {
        assert!(
            here.load(&s.handle, now).await.unwrap().is_none(),
            "revoked: no wait"
        );
    }
    assert!(here.delete(&keep).await.unwrap());
    assert!(
        here.load(&keep, now).await.unwrap().is_none(),
        "deleted: no wait"
    );
}

/// A near cache whose channel fell silent (a partition) stops serving
/// within 6 s of `alive`, and no sooner than 3 s (its silence limit) after
/// it. `alive` is taken just before a message that proved the channel
/// still delivered: anything the cache heard later only moves its end
/// later, so the lower bound holds however slow the machine is.
#[cfg(any(feature = "postgres", feature = "redis"))]
pub async fn stops_serving_after_the_silence(
    serving: impl Fn() -> bool,
    alive: std::time::Instant,
) {
    while serving() {
        assert!(
            alive.elapsed() < std::time::Duration::from_secs(6),
            "the cache still serves 6 s into the partition"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let after = alive.elapsed();
    assert!(
        after >= std::time::Duration::from_millis(2900),
        "the cache stopped {after:?} after its channel last delivered: before its silence limit"
    );
}

/// A near cache whose channel was killed (the connection closed) stops
/// serving within about a second.
#[cfg(any(feature = "postgres", feature = "redis"))]
pub async fn notices_the_lost_channel(serving: impl Fn() -> bool) {
    for _ in 0..500 {
        if !serving() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    panic!("the cache did not notice the lost channel");
}
