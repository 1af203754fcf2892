//! The HTML pages: the login form, and for a logged-in user the dashboard
//! (user, session times, visit counter, a CSRF-protected transfer form, the
//! user's live sessions with a revoke button each, "log out everywhere
//! else", log out). Server-rendered with maud (checked at compile time); no
//! JavaScript. Every page is `Cache-Control: no-store`, so after logging out
//! neither the back button nor a reload can show the dashboard again.

use axum::{
    extract::{rejection::QueryRejection, Path, Query},
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Redirect, Response},
    routing::{get, post},
    Router,
};
use keyfob::{
    auth::{self, SessionInfo},
    csrf::{self, CsrfLayer},
    time::OffsetDateTime,
    Handle, Key, Session,
};
use maud::{html, Markup, DOCTYPE};

use crate::users::User;

/// Transfers accepted in this session (shown on the dashboard).
pub(crate) const TRANSFERS: Key<u64> = Key::new("transfers");

/// The page routes. The account forms need the session's CSRF token.
pub(crate) fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    let forms = Router::new()
        .route("/account/sessions/{handle}/revoke", post(revoke_one))
        .route("/account/revoke-others", post(revoke_others))
        .route_layer(CsrfLayer::new());
    Router::new().route("/", get(home)).merge(forms)
}

fn page(title: &str, body: Markup) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · keyfob demo" }
                style { (maud::PreEscaped(STYLE)) }
            }
            body { main { (body) } }
        }
    };
    let mut response = markup.into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;background:#f5f6f8;color:#1d2330;margin:0}\
main{max-width:46rem;margin:2rem auto;padding:0 1rem}\
section{background:#fff;border:1px solid #dde1e8;border-radius:8px;padding:1rem 1.25rem;margin:1rem 0}\
h1{font-size:1.5rem}h2{font-size:1.1rem;margin-top:0}\
table{border-collapse:collapse;width:100%}td,th{text-align:left;padding:.3rem .4rem;border-bottom:1px solid #eef0f4;font-size:.9rem}\
code{font-size:.8rem}.note{padding:.6rem .8rem;border-radius:6px;background:#fff4d6;border:1px solid #f0d78c}\
.error{background:#fde8e8;border-color:#f0a8a8}button{cursor:pointer}label{display:block;margin:.4rem 0}";

fn when(t: Option<OffsetDateTime>) -> String {
    match t {
        Some(t) => format!(
            "{}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        None => "—".to_owned(),
    }
}

/// The login form, with an optional message (bad password, expired session).
pub(crate) fn login_page(status: StatusCode, message: Option<&str>) -> Response {
    let body = html! {
        h1 { "keyfob demo" }
        @if let Some(m) = message { p.note.error role="alert" { (m) } }
        section {
            h2 { "Log in" }
            form method="post" action="/login" {
                label { "Username " input name="username" autocomplete="username" required; }
                label { "Password " input name="password" type="password" autocomplete="current-password" required; }
                button type="submit" { "Log in" }
            }
            p { small { "Demo users: alice / correct horse, bob / battery staple." } }
        }
    };
    let mut r = page("Log in", body);
    *r.status_mut() = status;
    r
}

fn unavailable() -> Response {
    let mut r = page(
        "Unavailable",
        html! {
            h1 { "keyfob demo" }
            p.note.error role="alert" {
                "The session store is unavailable right now. Your session is safe; try again in a moment."
            }
        },
    );
    *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

fn presented_a_session_cookie(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .any(|pair| pair.trim_start().starts_with("id=") && pair.trim().len() > 3)
}

/// What the dashboard's forms came back with (`/?password=changed`, …).
#[derive(serde::Deserialize, Default)]
struct Outcome {
    password: Option<String>,
    saved: Option<String>,
}

impl Outcome {
    fn message(&self) -> Option<(&'static str, bool)> {
        match (self.password.as_deref(), self.saved.as_deref()) {
            (Some("changed"), _) => {
                Some(("Password changed. Your other sessions have ended.", false))
            }
            (Some("wrong"), _) => {
                Some(("Password not changed: the current password is wrong.", true))
            }
            (Some("short"), _) => Some((
                "Password not changed: the new one needs at least 8 characters.",
                true,
            )),
            (_, Some("permissions")) => Some(("Permissions saved.", false)),
            _ => None,
        }
    }
}

async fn home(
    session: Session,
    headers: HeaderMap,
    outcome: Result<Query<Outcome>, QueryRejection>,
) -> Response {
    // An odd query string only loses the message, never the page.
    let outcome = outcome.map(|Query(o)| o).unwrap_or_default();
    match dashboard(&session, &headers, &outcome).await {
        Ok(r) => r,
        Err(err) if err.is_unavailable() => unavailable(),
        Err(err) => {
            tracing::error!(error = %err, "dashboard failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "session error").into_response()
        }
    }
}

async fn dashboard(
    session: &Session,
    headers: &HeaderMap,
    outcome: &Outcome,
) -> keyfob::Result<Response> {
    let Some(user) = auth::current_user::<User>(session).await? else {
        let message = presented_a_session_cookie(headers)
            .then_some("Your session has ended (it expired, or was revoked or logged out). Please log in again.");
        return Ok(login_page(StatusCode::OK, message));
    };
    let visits = session.get(crate::VISITS).await?.unwrap_or(0) + 1;
    session.insert(crate::VISITS, visits).await?;
    let transfers = session.get(TRANSFERS).await?.unwrap_or(0);
    let token = csrf::token(session).await?;
    let created = session.created_at().await?;
    let expires = session.expiry_date().await?;
    let sessions: Vec<SessionInfo> = auth::list_sessions(session).await?;
    let admin = user.permissions.iter().any(|p| p == "admin");
    let body = html! {
        h1 { "Hello, " (user.username) }
        @if let Some((m, error)) = outcome.message() {
            p.note.error[error] role="status" id="outcome" { (m) }
        }
        @if admin {
            p { a id="admin-link" href="/admin" { "Admin area" } }
        }
        section id="session" {
            h2 { "This session" }
            table {
                tr { th { "User" } td id="user" { (user.username) " (id " (user.id) ")" } }
                tr { th { "Created" } td id="created" { (when(created)) } }
                tr { th { "Expires" } td id="expires" { (when(expires)) } }
                tr { th { "Visits" } td id="visits" { (visits) } }
                tr { th { "Transfers" } td id="transfers" { (transfers) } }
            }
        }
        section id="transfer" {
            h2 { "Transfer" }
            form method="post" action="/transfer" {
                input type="hidden" name="csrf_token" value=(token);
                label { "Amount " input name="amount" type="number" value="10" min="1"; }
                button id="transfer-submit" type="submit" { "Send transfer" }
            }
        }
        section id="sessions" {
            h2 { "Your active sessions" }
            table {
                tr { th { "Session" } th { "Device" } th { "Created" } th { "Last seen" } th { "Expires" } th {} }
                @for s in &sessions {
                    tr {
                        td { code { (s.handle.short()) } @if s.current { " (this one)" } }
                        td.device {
                            (s.browser.as_deref().unwrap_or("Unknown browser"))
                            " on " (s.os.as_deref().unwrap_or("unknown OS"))
                            @if let Some(ip) = &s.ip { br; small { "from " (ip) } }
                        }
                        td { (when(Some(s.created_at))) }
                        td { (when(Some(s.last_seen))) }
                        td { (when(s.expires_at)) }
                        td {
                            @if !s.current {
                                form method="post" action={ "/account/sessions/" (s.handle) "/revoke" } {
                                    input type="hidden" name="csrf_token" value=(token);
                                    button type="submit" { "Revoke" }
                                }
                            }
                        }
                    }
                }
            }
            form method="post" action="/account/revoke-others" {
                input type="hidden" name="csrf_token" value=(token);
                button id="revoke-others" type="submit" { "Log out everywhere else" }
            }
        }
        section id="password" {
            h2 { "Change password" }
            form method="post" action="/account/password/form" {
                input type="hidden" name="csrf_token" value=(token);
                label { "Current password " input name="current" type="password" autocomplete="current-password" required; }
                label { "New password " input name="new" type="password" autocomplete="new-password" minlength="8" required; }
                button id="password-submit" type="submit" { "Change password" }
            }
            p { small { "Changing it ends every other session of yours." } }
        }
        @if admin {
            section id="permissions" {
                h2 { "Permissions (admin)" }
                form method="post" action="/admin/permissions" {
                    input type="hidden" name="csrf_token" value=(token);
                    label { "User " input name="username" id="perm-user" required; }
                    label { "Permissions (comma-separated, empty for none) " input name="permissions" id="perm-list"; }
                    button id="perm-submit" type="submit" { "Save permissions" }
                }
            }
        }
        section {
            form method="post" action="/logout" {
                button id="logout" type="submit" { "Log out" }
            }
        }
    };
    Ok(page("Dashboard", body))
}

async fn revoke_one(session: Session, Path(handle): Path<String>) -> keyfob::Result<Response> {
    if auth::current_user::<User>(&session).await?.is_none() {
        return Ok(Redirect::to("/").into_response());
    }
    if let Ok(handle) = handle.parse::<Handle>() {
        auth::revoke(&session, &handle).await?;
    }
    Ok(Redirect::to("/").into_response())
}

async fn revoke_others(session: Session) -> keyfob::Result<Response> {
    if auth::current_user::<User>(&session).await?.is_some() {
        auth::revoke_others(&session).await?;
    }
    Ok(Redirect::to("/").into_response())
}
