//! CSRF-protected routes and a user's own sessions: `/form`, `/transfer`,
//! `/sessions`, `DELETE /sessions/{handle}`, `POST /sessions/revoke-others`,
//! and the cross-site rule that covers every route.

use axum::{
    extract::Path,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{delete, get, post},
    Json, Router,
};
use keyfob::{
    auth::{self, AuthUser, SessionInfo},
    csrf::{CsrfLayer, CsrfToken},
    Handle, Session,
};

use crate::users::User;

/// The routes of this module. The token is required on the state-changing
/// ones; the origin check comes from [`cross_site_rule`] over the whole app.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    let protected = Router::new()
        .route("/transfer", post(transfer))
        .route("/sessions/{handle}", delete(revoke))
        .route("/sessions/revoke-others", post(revoke_others))
        .route_layer(CsrfLayer::new());
    Router::new()
        .route("/form", get(form))
        .route("/sessions", get(sessions))
        .merge(protected)
}

/// The rule for every route: a state-changing request that is cross-site
/// (`Sec-Fetch-Site`) or from another origin gets `403` before any handler;
/// clients that send neither header (curl, JSON clients) pass. No token here,
/// so `/login` keeps working for non-browser clients.
pub fn cross_site_rule() -> CsrfLayer {
    // Nothing to validate (no trusted origins), so the build cannot fail;
    // fall back to the stricter layer rather than panic.
    CsrfLayer::builder()
        .without_token()
        .build()
        .unwrap_or_default()
}

async fn form(token: CsrfToken) -> String {
    format!("csrf token: {token}")
}

async fn transfer(session: Session) -> Result<&'static str, keyfob::Error> {
    // A visible effect, so a refused forgery can be shown to change nothing.
    let n = session.get(crate::pages::TRANSFERS).await?.unwrap_or(0) + 1;
    session.insert(crate::pages::TRANSFERS, n).await?;
    Ok("transfer accepted")
}

async fn sessions(
    AuthUser(_): AuthUser<User>,
    session: Session,
) -> Result<Json<Vec<SessionInfo>>, keyfob::Error> {
    Ok(Json(auth::list_sessions(&session).await?))
}

async fn revoke(
    AuthUser(_): AuthUser<User>,
    session: Session,
    Path(handle): Path<String>,
) -> Result<Response, keyfob::Error> {
    let revoked = match handle.parse::<Handle>() {
        Ok(handle) => auth::revoke(&session, &handle).await?,
        Err(_) => false,
    };
    Ok(if revoked {
        StatusCode::NO_CONTENT.into_response()
    } else {
        (StatusCode::NOT_FOUND, "session not found").into_response()
    })
}

async fn revoke_others(
    AuthUser(_): AuthUser<User>,
    session: Session,
) -> Result<Response, keyfob::Error> {
    let revoked = auth::revoke_others(&session).await?;
    Ok(Json(serde_json::json!({ "revoked": revoked })).into_response())
}
