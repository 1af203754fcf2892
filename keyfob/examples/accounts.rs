//! Accounts and permissions: a login, a role, a guarded router and a
//! password change, with the user looked up on every request through a
//! `UserBackend` (here a map in memory; in an app, its users table).
//!
//! ```text
//! cargo run -p keyfob --example accounts
//! curl -c jar -b jar -d 'user=ada&password=analytical' http://127.0.0.1:3000/login
//! curl -c jar -b jar http://127.0.0.1:3000/admin/reports    # 200: ada is an admin
//! ```
//!
//! Because the user is looked up per request, taking the `admin` role away
//! (or deleting the user) takes effect on the very next request of every
//! live session; changing the password ends every other session.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, RwLock},
};

use axum::{extract::State, routing::get, routing::post, Form, Router};
use keyfob::{
    auth::{self, AuthUser, RequirePermissionLayer, UserBackend},
    MemoryStore, Session, SessionLayer,
};
use serde::{Deserialize, Serialize};

/// The app's user. The password "hash" is a stand-in: hash with Argon2 in a
/// real app (see keyfob-demo).
#[derive(Clone, Serialize, Deserialize)]
struct User {
    id: String,
    password_hash: String,
    roles: Vec<String>,
}

/// The users table.
#[derive(Clone, Default)]
struct Users(Arc<RwLock<HashMap<String, User>>>);

impl UserBackend for Users {
    type User = User;

    async fn user(&self, id: &str) -> Result<Option<User>, keyfob::Error> {
        Ok(self.0.read().ok().and_then(|m| m.get(id).cloned()))
    }

    /// A changed password changes this, which logs every other session out.
    fn credential(user: &User) -> &[u8] {
        user.password_hash.as_bytes()
    }

    async fn permissions(&self, user: &User) -> Result<HashSet<String>, keyfob::Error> {
        Ok(user.roles.iter().cloned().collect())
    }
}

fn stand_in_hash(password: &str) -> String {
    format!("not-a-real-hash:{password}")
}

#[derive(Deserialize)]
struct Login {
    user: String,
    password: String,
}

async fn login(
    State(users): State<Users>,
    session: Session,
    Form(form): Form<Login>,
) -> Result<&'static str, keyfob::Error> {
    let found = users.user(&form.user).await?;
    match found {
        Some(u) if u.password_hash == stand_in_hash(&form.password) => {
            auth::login(&session, &u.id, &u).await?;
            Ok("logged in")
        }
        _ => Ok("invalid credentials"),
    }
}

#[derive(Deserialize)]
struct NewPassword {
    new: String,
}

/// A password change: store the new hash, then tell keyfob.
async fn change_password(
    State(users): State<Users>,
    AuthUser(me): AuthUser<User>,
    session: Session,
    Form(form): Form<NewPassword>,
) -> Result<String, keyfob::Error> {
    if let Ok(mut map) = users.0.write() {
        if let Some(u) = map.get_mut(&me.id) {
            u.password_hash = stand_in_hash(&form.new);
        }
    }
    let ended = auth::credentials_changed(&session).await?;
    Ok(format!("password changed; {ended} other session(s) ended"))
}

async fn whoami(AuthUser(me): AuthUser<User>) -> String {
    me.id
}

/// The app over `users`: `/admin/*` needs the `admin` permission.
fn app(users: Users) -> Result<Router, keyfob::Error> {
    let admin = Router::new()
        .route("/admin/reports", get(|| async { "the reports" }))
        .route_layer(RequirePermissionLayer::new("admin"));
    let layer = SessionLayer::builder(MemoryStore::new())
        .with_users(users.clone())
        .with_secure(false) // plain HTTP on loopback; keep the default in production
        .build()?;
    Ok(Router::new()
        .route("/login", post(login))
        .route("/me", get(whoami))
        .route("/password", post(change_password))
        .merge(admin)
        .layer(layer)
        .with_state(users))
}

fn demo_users() -> Users {
    let users = Users::default();
    if let Ok(mut map) = users.0.write() {
        for (id, password, roles) in [
            ("ada", "analytical", vec!["admin"]),
            ("bob", "builder", vec![]),
        ] {
            map.insert(
                id.to_owned(),
                User {
                    id: id.to_owned(),
                    password_hash: stand_in_hash(password),
                    roles: roles.into_iter().map(String::from).collect(),
                },
            );
        }
    }
    users
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app(demo_users())?).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use axum::{body::Body, http::Request};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;

    async fn send(
        app: &Router,
        method: &str,
        path: &str,
        cookie: &str,
        form: &str,
    ) -> (u16, String, Option<String>) {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("cookie", cookie)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Body::from(form.to_owned()))
            .unwrap();
        let res = app.clone().oneshot(req).await.unwrap();
        let status = res.status().as_u16();
        let set = res
            .headers()
            .get("set-cookie")
            .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned());
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned(), set)
    }

    async fn log_in(app: &Router, user: &str, password: &str) -> String {
        let (_, body, cookie) = send(
            app,
            "POST",
            "/login",
            "",
            &format!("user={user}&password={password}"),
        )
        .await;
        assert_eq!(body, "logged in");
        cookie.unwrap()
    }

    #[tokio::test]
    async fn a_role_taken_away_is_refused_on_the_next_request() {
        let users = demo_users();
        let app = app(users.clone()).unwrap();
        let ada = log_in(&app, "ada", "analytical").await;
        assert_eq!(send(&app, "GET", "/admin/reports", &ada, "").await.0, 200);
        let bob = log_in(&app, "bob", "builder").await;
        assert_eq!(send(&app, "GET", "/admin/reports", &bob, "").await.0, 403);
        assert_eq!(send(&app, "GET", "/admin/reports", "", "").await.0, 401);

        users
            .0
            .write()
            .unwrap()
            .get_mut("ada")
            .unwrap()
            .roles
            .clear();
        assert_eq!(send(&app, "GET", "/admin/reports", &ada, "").await.0, 403);
        assert_eq!(
            send(&app, "GET", "/me", &ada, "").await.1,
            "ada",
            "still logged in"
        );
    }

    #[tokio::test]
    async fn a_password_change_ends_the_other_sessions() {
        let app = app(demo_users()).unwrap();
        let laptop = log_in(&app, "ada", "analytical").await;
        let phone = log_in(&app, "ada", "analytical").await;
        let (status, body, renamed) =
            send(&app, "POST", "/password", &laptop, "new=difference-engine").await;
        assert_eq!(
            (status, body.as_str()),
            (200, "password changed; 1 other session(s) ended")
        );
        let laptop = renamed.expect("a new session ID");
        assert_eq!(send(&app, "GET", "/me", &laptop, "").await.0, 200);
        assert_eq!(send(&app, "GET", "/me", &phone, "").await.0, 401);
        let (_, body, _) = send(&app, "POST", "/login", "", "user=ada&password=analytical").await;
        assert_eq!(body, "invalid credentials");
    }
}
