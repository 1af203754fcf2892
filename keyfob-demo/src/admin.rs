//! Accounts and permissions: `GET /admin`, `PUT /admin/users/{username}/permissions`
//! and `POST /account/password`. The user behind each request is looked up
//! through [`Accounts`] (keyfob's user backend), so what these routes change
//! reaches every live session at its next request.

use axum::{
    body::Bytes,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Redirect, Response},
    routing::{get, post, put},
    Form, Router,
};
use keyfob::{
    auth::{self, AuthUser, Permission, RequirePermission},
    csrf::CsrfLayer,
    Session,
};
use serde::Deserialize;

use crate::{
    passwords,
    users::{Accounts, User},
};

/// The permission `GET /admin` and the permission editor require.
pub(crate) struct Admin;

impl Permission for Admin {
    const NAME: &'static str = "admin";
}

/// The most permissions one user may hold, and the longest name.
const MAX_PERMISSIONS: usize = 32;
const MAX_PERMISSION_LEN: usize = 64;

pub(crate) fn routes() -> Router<crate::AppState> {
    let protected = Router::new()
        .route("/admin/users/{username}/permissions", put(set_permissions))
        .route("/account/password", post(change_password))
        // The dashboard's forms (HTML forms cannot PUT or send JSON).
        .route("/admin/permissions", post(permissions_form))
        .route("/account/password/form", post(password_form))
        .route_layer(CsrfLayer::new());
    Router::new().route("/admin", get(admin)).merge(protected)
}

async fn admin(_: RequirePermission<Admin>, AuthUser(user): AuthUser<User>) -> String {
    format!("admin: {}", user.username)
}

fn bad_request(why: &str) -> Response {
    (StatusCode::BAD_REQUEST, why.to_owned()).into_response()
}

async fn set_permissions(
    _: RequirePermission<Admin>,
    State(accounts): State<Accounts>,
    Path(username): Path<String>,
    body: Bytes,
) -> Result<Response, keyfob::Error> {
    let Ok(permissions) = serde_json::from_slice::<Vec<String>>(&body) else {
        return Ok(bad_request("expected a JSON array of permission names"));
    };
    replace_permissions(&accounts, &username, permissions).await
}

#[derive(Deserialize)]
struct PermissionsForm {
    username: String,
    /// Comma-separated names; empty for none.
    permissions: String,
}

/// The dashboard's form: the same change, then back to the dashboard.
async fn permissions_form(
    _: RequirePermission<Admin>,
    State(accounts): State<Accounts>,
    Form(form): Form<PermissionsForm>,
) -> Result<Response, keyfob::Error> {
    let permissions = form
        .permissions
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect();
    let res = replace_permissions(&accounts, &form.username, permissions).await?;
    Ok(if res.status() == StatusCode::NO_CONTENT {
        Redirect::to("/?saved=permissions").into_response()
    } else {
        res
    })
}

async fn replace_permissions(
    accounts: &Accounts,
    username: &str,
    permissions: Vec<String>,
) -> Result<Response, keyfob::Error> {
    let valid = permissions.len() <= MAX_PERMISSIONS
        && permissions
            .iter()
            .all(|p| !p.is_empty() && p.len() <= MAX_PERMISSION_LEN);
    if !valid {
        return Ok(bad_request(
            "at most 32 permissions, each 1 to 64 bytes long",
        ));
    }
    let mut permissions = permissions;
    permissions.sort();
    permissions.dedup();
    Ok(if accounts.set_permissions(username, &permissions).await? {
        tracing::info!(event = "account.permissions_changed", %username, ?permissions, "permissions changed");
        StatusCode::NO_CONTENT.into_response()
    } else {
        (StatusCode::NOT_FOUND, "no such user").into_response()
    })
}

#[derive(Deserialize)]
struct PasswordChange {
    current: String,
    new: String,
}

async fn change_password(
    AuthUser(user): AuthUser<User>,
    State(accounts): State<Accounts>,
    session: Session,
    body: Bytes,
) -> Result<Response, keyfob::Error> {
    let Ok(change) = serde_json::from_slice::<PasswordChange>(&body) else {
        return Ok(bad_request(r#"expected JSON {"current": "…", "new": "…"}"#));
    };
    replace_password(&accounts, &session, &user, change).await
}

/// The dashboard's form: the same change, then back to the dashboard with
/// the outcome (the session stays logged in under its new ID).
async fn password_form(
    AuthUser(user): AuthUser<User>,
    State(accounts): State<Accounts>,
    session: Session,
    Form(change): Form<PasswordChange>,
) -> Result<Response, keyfob::Error> {
    let res = replace_password(&accounts, &session, &user, change).await?;
    let outcome = match res.status() {
        StatusCode::NO_CONTENT => "changed",
        StatusCode::FORBIDDEN => "wrong",
        StatusCode::BAD_REQUEST => "short",
        StatusCode::CONFLICT => "conflict",
        _ => return Ok(res),
    };
    Ok(Redirect::to(&format!("/?password={outcome}")).into_response())
}

async fn replace_password(
    accounts: &Accounts,
    session: &Session,
    user: &User,
    change: PasswordChange,
) -> Result<Response, keyfob::Error> {
    let chars = change.new.chars().count();
    if chars < passwords::MIN_NEW_PASSWORD_CHARS {
        return Ok(bad_request(
            "the new password must be at least 8 characters long",
        ));
    }
    if change.new.len() > passwords::MAX_PASSWORD_BYTES {
        return Ok(bad_request(
            "the new password must be at most 1024 bytes long",
        ));
    }
    if change.current.len() > passwords::MAX_PASSWORD_BYTES {
        return Ok((StatusCode::FORBIDDEN, "wrong password").into_response());
    }
    let Ok(verified) = passwords::verify(Some(user.hash.clone()), change.current).await else {
        return Ok(crate::busy());
    };
    if !verified {
        return Ok((StatusCode::FORBIDDEN, "wrong password").into_response());
    }
    let hash = match passwords::hash_off_thread(change.new).await {
        Ok(Some(hash)) => hash,
        Ok(None) => {
            return Err(keyfob::Error::store_msg(
                "could not draw a salt for the new password",
            ))
        }
        Err(passwords::Busy) => return Ok(crate::busy()),
    };
    if !accounts.replace_hash(user.id, &user.hash, &hash).await? {
        // Another change of this password came first: this one did nothing.
        return Ok((
            StatusCode::CONFLICT,
            "the password was changed meanwhile; reload and try again",
        )
            .into_response());
    }
    let ended = auth::credentials_changed(session).await?;
    tracing::info!(
        event = "account.password_changed",
        user = user.id,
        ended,
        "password changed; the user's other sessions ended"
    );
    Ok(StatusCode::NO_CONTENT.into_response())
}
