//! Unit tests of the user backend: per-request lookups, permissions,
//! credential changes and the device record.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::{HashMap, HashSet},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Mutex,
    },
};

use axum::{
    body::Body,
    routing::{get, post},
    Router,
};
use http_body_util::BodyExt;
use tower::ServiceExt;

use super::*;
use crate::{MemoryStore, SessionLayer};

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct Account {
    id: String,
    hash: String,
    perms: Vec<String>,
}

#[derive(Clone, Default)]
struct Accounts {
    all: Arc<Mutex<HashMap<String, Account>>>,
    lookups: Arc<AtomicUsize>,
}

impl Accounts {
    fn with(ids: &[&str]) -> Self {
        let a = Accounts::default();
        for id in ids {
            a.all.lock().unwrap().insert(
                (*id).to_owned(),
                Account {
                    id: (*id).to_owned(),
                    hash: format!("hash-of-{id}"),
                    perms: vec![],
                },
            );
        }
        a
    }

    fn edit(&self, id: &str, f: impl FnOnce(&mut Account)) {
        f(self.all.lock().unwrap().get_mut(id).unwrap());
    }
}

impl UserBackend for Accounts {
    type User = Account;

    async fn user(&self, id: &str) -> Result<Option<Account>> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        Ok(self.all.lock().unwrap().get(id).cloned())
    }

    fn credential(user: &Account) -> &[u8] {
        user.hash.as_bytes()
    }

    async fn permissions(&self, user: &Account) -> Result<HashSet<String>> {
        Ok(user.perms.iter().cloned().collect())
    }
}

struct Admin;
impl Permission for Admin {
    const NAME: &'static str = "admin";
}

/// A password change as an app writes it: check the user, store the new
/// hash, tell keyfob.
async fn change_password(
    AuthUser(me): AuthUser<Account>,
    axum::extract::State(accounts): axum::extract::State<Accounts>,
    axum::extract::Path(new): axum::extract::Path<String>,
    s: Session,
) -> Result<String> {
    accounts.edit(&me.id, |a| a.hash = new);
    credentials_changed(&s).await.map(|n| n.to_string())
}

fn app(accounts: &Accounts) -> Router {
    let guarded = Router::new()
        .route("/reports", get(|| async { "reports" }))
        .route_layer(RequirePermissionLayer::new("admin"));
    Router::new()
        .route(
            "/login/{id}",
            post(|s: Session, axum::extract::Path(id): axum::extract::Path<String>| async move {
                login(&s, &id, &()).await?;
                Ok::<_, Error>("ok")
            }),
        )
        .route(
            "/me",
            get(|AuthUser(a): AuthUser<Account>| async move { a.id }),
        )
        .route(
            "/me-twice",
            get(
                |AuthUser(a): AuthUser<Account>, _: RequirePermission<Admin>, p: Permissions| async move {
                    format!("{} {}", a.id, p.contains("admin"))
                },
            ),
        )
        .route("/admin", get(|_: RequirePermission<Admin>| async { "admin" }))
        .route("/password/{new}", post(change_password))
        .route(
            "/password-unchecked",
            post(|s: Session| async move { credentials_changed(&s).await.map(|n| n.to_string()) }),
        )
        .route(
            "/login-raced/{id}",
            post(
                |s: Session, axum::extract::Path(id): axum::extract::Path<String>, axum::extract::State(a): axum::extract::State<Accounts>| async move {
                    // The password was checked against this copy…
                    let checked = a.all.lock().unwrap().get(&id).cloned().unwrap();
                    // …and changed by another request before the login.
                    a.edit(&id, |u| u.hash = "changed-meanwhile".into());
                    login(&s, &id, &checked).await?;
                    Ok::<_, Error>("ok")
                },
            ),
        )
        .route(
            "/logout-then-ask",
            post(|AuthUser(_a): AuthUser<Account>, s: Session| async move {
                logout(&s).await?;
                let still = current_user::<Account>(&s).await?.is_some();
                let perms = permissions(&s).await?.is_some();
                Ok::<_, Error>(format!("{still} {perms}"))
            }),
        )
        .route(
            "/sessions",
            get(|s: Session| async move {
                let list = list_sessions(&s).await?;
                Ok::<_, Error>(serde_json::to_string(&list).unwrap())
            }),
        )
        .merge(guarded)
        .with_state(accounts.clone())
        .layer(
            SessionLayer::builder(MemoryStore::new())
                .with_secure(false)
                .with_users(accounts.clone())
                .with_client_ip(|_, ext| ext.get::<std::net::IpAddr>().copied())
                .build()
                .unwrap(),
        )
}

struct Reply {
    status: StatusCode,
    body: String,
    cookie: Option<String>,
}

async fn send(app: &Router, method: &str, path: &str, cookie: Option<&str>) -> Reply {
    let mut req = Request::builder().method(method).uri(path).header(
        "user-agent",
        "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
    );
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    let mut req = req.body(Body::empty()).unwrap();
    req.extensions_mut()
        .insert::<std::net::IpAddr>("203.0.113.77".parse().unwrap());
    let res = app.clone().oneshot(req).await.unwrap();
    let cookie = res
        .headers()
        .get(http::header::SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(|c| c.split(';').next())
        .map(str::to_owned);
    let status = res.status();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
        cookie,
    }
}

async fn log_in(app: &Router, id: &str) -> String {
    let r = send(app, "POST", &format!("/login/{id}"), None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.cookie.unwrap()
}

#[tokio::test]
async fn the_user_is_looked_up_per_request_at_most_once() {
    let accounts = Accounts::with(&["1"]);
    accounts.edit("1", |a| a.perms = vec!["admin".into()]);
    let app = app(&accounts);
    let cookie = log_in(&app, "1").await;
    let before = accounts.lookups.load(Ordering::SeqCst);
    // Three guards in one handler: one lookup.
    let r = send(&app, "GET", "/me-twice", Some(&cookie)).await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "1 true"));
    assert_eq!(accounts.lookups.load(Ordering::SeqCst) - before, 1);
    // And again on the next request: no copy kept between requests.
    send(&app, "GET", "/me", Some(&cookie)).await;
    assert_eq!(accounts.lookups.load(Ordering::SeqCst) - before, 2);
}

#[tokio::test]
async fn a_permission_granted_or_taken_reaches_the_next_request_without_a_new_login() {
    let accounts = Accounts::with(&["1"]);
    let app = app(&accounts);
    let cookie = log_in(&app, "1").await;
    assert_eq!(send(&app, "GET", "/admin", Some(&cookie)).await.status, 403);
    assert_eq!(
        send(&app, "GET", "/reports", Some(&cookie)).await.status,
        403
    );
    accounts.edit("1", |a| a.perms = vec!["admin".into()]);
    assert_eq!(send(&app, "GET", "/admin", Some(&cookie)).await.status, 200);
    assert_eq!(
        send(&app, "GET", "/reports", Some(&cookie)).await.status,
        200
    );
    accounts.edit("1", |a| a.perms.clear());
    let r = send(&app, "GET", "/reports", Some(&cookie)).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (StatusCode::FORBIDDEN, "forbidden")
    );
    // Still logged in.
    assert_eq!(send(&app, "GET", "/me", Some(&cookie)).await.body, "1");
}

#[tokio::test]
async fn permission_guards_answer_401_to_an_anonymous_request() {
    let app = app(&Accounts::with(&["1"]));
    let r = send(&app, "GET", "/admin", None).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (StatusCode::UNAUTHORIZED, "login required")
    );
    assert_eq!(send(&app, "GET", "/reports", None).await.status, 401);
}

#[tokio::test]
async fn a_password_change_ends_the_other_sessions_and_renames_this_one() {
    let accounts = Accounts::with(&["1", "2"]);
    let app = app(&accounts);
    let here = log_in(&app, "1").await;
    let other = log_in(&app, "1").await;
    let someone_else = log_in(&app, "2").await;
    let r = send(&app, "POST", "/password/new-hash", Some(&here)).await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "1"));
    let renamed = r.cookie.expect("a new session ID");
    assert_ne!(renamed, here);
    assert_eq!(send(&app, "GET", "/me", Some(&renamed)).await.body, "1");
    assert_eq!(send(&app, "GET", "/me", Some(&here)).await.status, 401);
    assert_eq!(send(&app, "GET", "/me", Some(&other)).await.status, 401);
    assert_eq!(
        send(&app, "GET", "/me", Some(&someone_else)).await.body,
        "2"
    );
}

#[tokio::test]
async fn a_session_whose_credentials_changed_elsewhere_is_logged_out() {
    let accounts = Accounts::with(&["1"]);
    let app = app(&accounts);
    let cookie = log_in(&app, "1").await;
    // Changed by another process, which did not revoke anything here.
    accounts.edit("1", |a| a.hash = "changed-elsewhere".into());
    let r = send(&app, "GET", "/me", Some(&cookie)).await;
    assert_eq!(r.status, 401);
    assert!(r.cookie.is_some(), "the dead session's cookie is cleared");
    // The session is gone, not only refused: changing the hash back does not revive it.
    accounts.edit("1", |a| a.hash = "hash-of-1".into());
    assert_eq!(send(&app, "GET", "/me", Some(&cookie)).await.status, 401);
}

#[tokio::test]
async fn a_session_whose_user_was_deleted_is_logged_out() {
    let accounts = Accounts::with(&["1"]);
    let app = app(&accounts);
    let cookie = log_in(&app, "1").await;
    accounts.all.lock().unwrap().remove("1");
    assert_eq!(send(&app, "GET", "/me", Some(&cookie)).await.status, 401);
    assert_eq!(send(&app, "GET", "/admin", Some(&cookie)).await.status, 401);
}

#[tokio::test]
async fn login_records_the_browser_os_and_network_for_the_session_list() {
    let app = app(&Accounts::with(&["1"]));
    let cookie = log_in(&app, "1").await;
    let r = send(&app, "GET", "/sessions", Some(&cookie)).await;
    let list: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(list[0]["browser"], "Firefox 133");
    assert_eq!(list[0]["os"], "Linux");
    assert_eq!(list[0]["ip"], "203.0.113.0");
    assert_eq!(list[0]["current"], true);
}

#[tokio::test]
async fn login_names_a_user_the_backend_must_know() {
    let app = app(&Accounts::with(&["1"]));
    let r = send(&app, "POST", "/login/9", None).await;
    assert_eq!(r.status, 500);
    assert!(r.cookie.is_none());
}

#[tokio::test]
async fn a_login_checked_under_a_password_changed_meanwhile_ends_at_once() {
    let accounts = Accounts::with(&["1"]);
    let app = app(&accounts);
    let r = send(&app, "POST", "/login-raced/1", None).await;
    assert_eq!(r.status, 200);
    let cookie = r.cookie.unwrap();
    assert_eq!(send(&app, "GET", "/me", Some(&cookie)).await.status, 401);
}

#[tokio::test]
async fn credentials_changed_refuses_a_session_not_checked_in_the_request() {
    let accounts = Accounts::with(&["1"]);
    let app = app(&accounts);
    let stale = log_in(&app, "1").await;
    let other = log_in(&app, "1").await;
    // Changed elsewhere: `stale` should be logged out, not re-stamped.
    accounts.edit("1", |a| a.hash = "changed-elsewhere".into());
    let r = send(&app, "POST", "/password-unchecked", Some(&stale)).await;
    assert_eq!(r.status, 500);
    assert_eq!(send(&app, "GET", "/me", Some(&stale)).await.status, 401);
    assert_eq!(send(&app, "GET", "/me", Some(&other)).await.status, 401);
}

#[tokio::test]
async fn a_session_that_fails_the_user_check_cannot_list_the_users_sessions() {
    let accounts = Accounts::with(&["1"]);
    let app = app(&accounts);
    let stale = log_in(&app, "1").await;
    log_in(&app, "1").await;
    accounts.edit("1", |a| a.hash = "changed-elsewhere".into());
    let r = send(&app, "GET", "/sessions", Some(&stale)).await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "[]"));
}

#[tokio::test]
async fn after_logout_no_user_is_seen_for_the_rest_of_the_request() {
    let accounts = Accounts::with(&["1"]);
    let app = app(&accounts);
    let cookie = log_in(&app, "1").await;
    let r = send(&app, "POST", "/logout-then-ask", Some(&cookie)).await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "false false"));
}
