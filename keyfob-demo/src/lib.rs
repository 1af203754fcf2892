//! keyfob-demo: the reference application. Its HTTP contract is
//! `docs/demo-http.md`; [`app`] builds the whole router so tests can
//! serve it on loopback exactly as `main` does.

#![deny(missing_docs)]
// Outside tests, a failure is an error the operator reads, never a panic.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod account;
mod accounts_sql;
mod admin;
pub mod config;
pub mod migrate;
mod pages;
pub mod passwords;
mod signed;
pub mod users;

use std::sync::Arc;

use axum::{
    extract::{FromRef, FromRequest, Request, State},
    http::{header, StatusCode},
    response::{IntoResponse, Redirect, Response},
    routing::{get, post},
    Form, Json, Router,
};
use keyfob::{
    auth::{self, AuthUser},
    keys::Keyring,
    CookieStore, Key, Session, SessionLayer, SessionStore,
};
use serde::Deserialize;

use crate::{
    config::{Config, StoreUrl},
    users::{Accounts, User},
};

const VISITS: Key<u64> = Key::new("visits");

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    store: Arc<dyn SessionStore>,
    keys: Keyring,
    accounts: Accounts,
}

impl FromRef<AppState> for Accounts {
    fn from_ref(state: &AppState) -> Accounts {
        state.accounts.clone()
    }
}

impl FromRef<AppState> for Keyring {
    fn from_ref(state: &AppState) -> Keyring {
        state.keys.clone()
    }
}

/// This process's metrics in the Prometheus text format: the recorder is
/// installed on first use (`None` when another recorder was installed first).
/// keyfob reports through the `metrics` facade; this is the exporter.
pub fn metrics() -> Option<&'static metrics_exporter_prometheus::PrometheusHandle> {
    static HANDLE: std::sync::OnceLock<Option<metrics_exporter_prometheus::PrometheusHandle>> =
        std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .install_recorder()
                .ok()
        })
        .as_ref()
}

/// `GET /metrics`: keyfob's counters and store latencies, for Prometheus.
async fn metrics_page() -> Response {
    match metrics() {
        Some(handle) => {
            // Folds the recent histogram samples into the summaries.
            handle.run_upkeep();
            (
                [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                handle.render(),
            )
                .into_response()
        }
        None => (StatusCode::SERVICE_UNAVAILABLE, "metrics unavailable").into_response(),
    }
}

/// A ready-to-serve demo: its router and the store behind it.
pub struct Demo {
    /// The whole app.
    pub router: Router,
    /// A one-word description of the store, for the start-up line.
    pub store_name: String,
}

/// Connects to the configured store and builds the app.
///
/// # Errors
/// A one-line reason when the store cannot be reached or the settings are refused.
pub async fn build(config: &Config) -> Result<Demo, String> {
    let (store, accounts) = open(&config.store).await?;
    accounts.seed().await?;
    tokio::spawn(keyfob::store::cleanup(
        store.clone(),
        keyfob::SystemClock,
        std::time::Duration::from_secs(60),
        1000,
    ));
    let keys = Keyring::load_or_create(&config.key_file).map_err(|e| e.to_string())?;
    passwords::init();
    // Between scrapes, keep the histograms' sample buffers small.
    if let Some(handle) = metrics() {
        tokio::spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(5));
            loop {
                every.tick().await;
                handle.run_upkeep();
            }
        });
    }
    let router = app_with_accounts(store, accounts, keys, config)?;
    Ok(Demo {
        router,
        store_name: config.store.to_string(),
    })
}

/// Connects to (and migrates) the store `url` names; for `cookie`, the
/// store that keeps cookie sessions' revocation entries and marks.
///
/// # Errors
/// A one-line reason when the store cannot be reached.
pub async fn open_store(url: &StoreUrl) -> Result<Arc<dyn SessionStore>, String> {
    Ok(open(url).await?.0)
}

/// [`open_store`], with the accounts kept beside the sessions (on the same
/// pool or connection); in the process for `memory` and `cookie`.
///
/// # Errors
/// A one-line reason when the store cannot be reached.
pub async fn open(url: &StoreUrl) -> Result<(Arc<dyn SessionStore>, Accounts), String> {
    // Cookie sessions keep only revocation entries and marks on the server,
    // in a durable store: a logout must outlive a restart. Their accounts
    // last for the life of the process (the contract).
    let (url, cookie) = match url {
        StoreUrl::Cookie(marks) => (&**marks, true),
        url => (url, false),
    };
    let one_line = |e: keyfob::Error| format!("store {url} unavailable: {e}").replace('\n', " ");
    let (store, accounts): (Arc<dyn SessionStore>, Accounts) = match url {
        StoreUrl::Memory => (Arc::new(keyfob::MemoryStore::new()), Accounts::in_memory()?),
        StoreUrl::Sqlite(url) => {
            let store = keyfob::SqliteStore::connect(url).await.map_err(one_line)?;
            let accounts = Accounts::sqlite(store.pool().clone());
            (Arc::new(store), accounts)
        }
        StoreUrl::Postgres(url) => {
            let store = connect_postgres(url).await.map_err(one_line)?;
            let accounts = Accounts::postgres(store.pool().clone());
            (Arc::new(store), accounts)
        }
        StoreUrl::MySql(url) => {
            let store = connect_mysql(url).await.map_err(one_line)?;
            let accounts = Accounts::mysql(store.pool().clone());
            (Arc::new(store), accounts)
        }
        StoreUrl::Redis(url) => {
            let store = keyfob::RedisStore::connect(url).await.map_err(one_line)?;
            let accounts = Accounts::redis(store.connection());
            (Arc::new(store), accounts)
        }
        StoreUrl::Cookie(_) => {
            return Err(format!(
                "store {url}: cookie sessions keep their marks in a server-side store"
            ))
        }
    };
    if cookie {
        return Ok((store, Accounts::in_memory()?));
    }
    Ok((store, accounts))
}

async fn connect_postgres(url: &str) -> keyfob::Result<keyfob::PostgresStore> {
    // Fail fast at start-up instead of waiting out a long connect timeout.
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        keyfob::PostgresStore::connect(url),
    )
    .await
    .unwrap_or_else(|_| Err(keyfob::Error::store_msg("connection timed out")))
}

async fn connect_mysql(url: &str) -> keyfob::Result<keyfob::MySqlStore> {
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        keyfob::MySqlStore::connect(url),
    )
    .await
    .unwrap_or_else(|_| Err(keyfob::Error::store_msg("connection timed out")))
}

/// The router over a store, with the session layer configured from `config`
/// and a fresh random keyring (cookies signed by it end with the process).
///
/// # Errors
/// The layer's refusal of the settings, as one line.
pub fn app(store: Arc<dyn SessionStore>, config: &Config) -> Result<Router, String> {
    let keys = Keyring::generate().map_err(|e| e.to_string())?;
    app_with_keys(store, keys, config)
}

/// [`app`] with the keyring that signs the app's cookies (and seals cookie
/// sessions with `--store cookie`, where `store` keeps the revocation marks).
/// The accounts live in this process.
///
/// # Errors
/// The layer's refusal of the settings, as one line.
pub fn app_with_keys(
    store: Arc<dyn SessionStore>,
    keys: Keyring,
    config: &Config,
) -> Result<Router, String> {
    app_with_accounts(store, Accounts::in_memory()?, keys, config)
}

/// [`app_with_keys`] over these accounts (see [`open`]).
///
/// # Errors
/// The layer's refusal of the settings, as one line.
pub fn app_with_accounts(
    store: Arc<dyn SessionStore>,
    accounts: Accounts,
    keys: Keyring,
    config: &Config,
) -> Result<Router, String> {
    let builder = match config.store {
        StoreUrl::Cookie(_) => SessionLayer::cookie_builder(
            CookieStore::new(keys.clone()).with_revocation(store.clone()),
        ),
        _ => SessionLayer::builder(store.clone()),
    };
    let layer = builder
        .with_users(accounts.clone())
        // The peer address (the demo is not behind a proxy); none when served
        // without connect info, as the in-process tests do.
        .with_client_ip(|_, extensions| {
            extensions
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|c| c.0.ip())
        })
        .with_secure(!config.insecure_cookies)
        .with_idle_timeout(config.idle_timeout)
        .with_absolute_timeout(Some(config.absolute_timeout))
        .with_legacy_ids(config.legacy_ids)
        .build()
        .map_err(|e| e.to_string())?;
    let state = AppState {
        store,
        keys,
        accounts,
    };
    Ok(Router::new()
        .route("/login", post(login))
        .route("/me", get(me))
        .route("/logout", post(logout))
        .route("/profile", get(profile))
        .route("/count", get(count))
        .merge(pages::routes())
        .merge(signed::routes(!config.insecure_cookies))
        .merge(account::routes())
        .merge(admin::routes())
        .layer(layer)
        // Outside the session layer: a health check must not create sessions.
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_page))
        // Outermost, over every route: cross-site writes never reach a handler.
        .layer(account::cross_site_rule())
        .with_state(state))
}

#[derive(Deserialize)]
struct Credentials {
    username: String,
    password: String,
}

/// `POST /login`: JSON for API clients (the contract), or the HTML form
/// (urlencoded), which redirects to the dashboard or shows the form again.
async fn login(
    State(accounts): State<Accounts>,
    session: Session,
    request: Request,
) -> Result<Response, keyfob::Error> {
    let is_form = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let creds = if is_form {
        match Form::<Credentials>::from_request(request, &()).await {
            Ok(Form(c)) => c,
            Err(rejection) => return Ok(rejection.into_response()),
        }
    } else {
        match Json::<Credentials>::from_request(request, &()).await {
            Ok(Json(c)) => c,
            Err(rejection) => return Ok(rejection.into_response()),
        }
    };
    let Credentials { username, password } = creds;
    if password.len() > passwords::MAX_PASSWORD_BYTES
        || username.len() > passwords::MAX_PASSWORD_BYTES
    {
        return Ok((
            StatusCode::BAD_REQUEST,
            format!(
                "username or password too long (at most {} bytes)",
                passwords::MAX_PASSWORD_BYTES
            ),
        )
            .into_response());
    }
    let account = accounts.by_name(&username).await?;
    // Argon2 is deliberately slow (and needs 19 MiB): off the async workers,
    // on two long-lived threads. Saturated, they refuse: that is overload
    // (503, try again), never a wrong password. An unknown user costs the
    // same check, against a decoy.
    let Ok(verified) = passwords::verify(account.as_ref().map(|a| a.hash.clone()), password).await
    else {
        return Ok(busy());
    };
    let Some(user) = account.filter(|_| verified) else {
        return Ok(if is_form {
            pages::login_page(
                StatusCode::UNAUTHORIZED,
                Some("Invalid username or password."),
            )
        } else {
            (StatusCode::UNAUTHORIZED, "invalid credentials").into_response()
        });
    };
    auth::login(&session, &user.id.to_string(), &user).await?;
    Ok(if is_form {
        Redirect::to("/").into_response()
    } else {
        (StatusCode::OK, "logged in").into_response()
    })
}

/// `503` for a password job refused because the hashing threads are saturated.
pub(crate) fn busy() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, "1")],
        "too many logins at once, retry shortly",
    )
        .into_response()
}

async fn me(session: Session) -> Result<Response, keyfob::Error> {
    Ok(match auth::current_user::<User>(&session).await? {
        Some(user) => Json(user).into_response(),
        None => (StatusCode::UNAUTHORIZED, "not logged in").into_response(),
    })
}

async fn profile(AuthUser(user): AuthUser<User>) -> Json<User> {
    Json(user)
}

async fn logout(session: Session) -> Result<Response, keyfob::Error> {
    auth::logout(&session).await?;
    Ok((StatusCode::SEE_OTHER, [(header::LOCATION, "/")]).into_response())
}

async fn count(session: Session) -> Result<String, keyfob::Error> {
    let n = session.get(VISITS).await?.unwrap_or(0) + 1;
    session.insert(VISITS, n).await?;
    Ok(format!(
        "You have visited this page {n} time(s) in this session."
    ))
}

async fn healthz(State(state): State<AppState>) -> Response {
    // Any answer from the store, found or not, means it is up.
    let probe = keyfob::Handle::from_bytes([0; 32]);
    match state
        .store
        .load(&probe, keyfob::time::OffsetDateTime::now_utc())
        .await
    {
        Ok(_) => (StatusCode::OK, "ok").into_response(),
        Err(err) => {
            tracing::warn!(error = %err, "health check: store unavailable");
            (StatusCode::SERVICE_UNAVAILABLE, "session store unavailable").into_response()
        }
    }
}
