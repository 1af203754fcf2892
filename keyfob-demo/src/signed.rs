//! The signed-cookie routes of the second source document, on keyfob's
//! keyring: `/set` and `/read` (a signed `theme` cookie) and the
//! `/signed/*` login that keeps the user in a signed `session_user` cookie.
//!
//! Unlike the original (one key, replayable until the browser drops the
//! cookie), the seven-day deadline is sealed inside the signed value and
//! checked by the server, and the keyring rotates without logging anyone out:
//! a cookie signed under an old key is re-issued under the current one on
//! `/signed/whoami`.

use axum::{
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Form, Router,
};
use keyfob::{
    jar::{Cookie, SignedCookieJar},
    time::Duration,
};
use serde::Deserialize;

use crate::AppState;

const USER_COOKIE: &str = "session_user";
const USER_MAX_AGE: Duration = Duration::days(7);

/// The routes, with cookies `Secure` unless `secure` is false (`--insecure-cookies`).
pub(crate) fn routes(secure: bool) -> Router<AppState> {
    Router::new()
        .route("/set", get(move |jar| set(jar, secure)))
        .route("/read", get(read))
        .route(
            "/signed/login",
            post(move |jar, form| login(jar, form, secure)),
        )
        .route("/signed/whoami", get(move |jar| whoami(jar, secure)))
        .route("/signed/logout", post(logout))
}

fn cookie(name: &'static str, value: String, secure: bool) -> Cookie<'static> {
    Cookie::build((name, value))
        .path("/")
        .http_only(true)
        .secure(secure)
        .same_site(keyfob::jar::cookie::SameSite::Lax)
        .build()
}

async fn set(jar: SignedCookieJar, secure: bool) -> (SignedCookieJar, &'static str) {
    (jar.add(cookie("theme", "dark".into(), secure)), "theme set")
}

async fn read(jar: SignedCookieJar) -> String {
    match jar.get("theme") {
        Some(theme) => format!("theme = {}", theme.value()),
        None => "no theme set".into(),
    }
}

#[derive(Deserialize)]
struct SignedLogin {
    user_id: String,
}

/// A user id goes into a cookie and a response body: keep it short and plain.
fn valid_user_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
}

async fn login(jar: SignedCookieJar, Form(form): Form<SignedLogin>, secure: bool) -> Response {
    if !valid_user_id(&form.user_id) {
        return (StatusCode::BAD_REQUEST, "invalid user_id").into_response();
    }
    let mut c = cookie(USER_COOKIE, form.user_id, secure);
    c.set_max_age(USER_MAX_AGE);
    (
        StatusCode::SEE_OTHER,
        jar.add(c),
        [(header::LOCATION, "/dashboard")],
    )
        .into_response()
}

async fn whoami(jar: SignedCookieJar, secure: bool) -> Response {
    let Some(user) = jar.get(USER_COOKIE) else {
        return (StatusCode::UNAUTHORIZED, "not logged in").into_response();
    };
    let body = format!("Logged in as {}", user.value());
    if !jar.is_stale(USER_COOKIE) {
        return body.into_response();
    }
    // Signed under an old key: re-issue under the current one, same deadline.
    let mut again = cookie(USER_COOKIE, user.value().to_owned(), secure);
    if let Some(at) = user.expires_datetime() {
        again.set_expires(at);
    }
    (jar.add(again), body).into_response()
}

async fn logout(jar: SignedCookieJar) -> impl IntoResponse {
    (
        StatusCode::SEE_OTHER,
        jar.remove(Cookie::build(USER_COOKIE).path("/")),
        [(header::LOCATION, "/")],
    )
}
