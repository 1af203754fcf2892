//! A form protected against cross-site request forgery: the origin check
//! refuses cross-site posts before any handler runs, and a session-bound
//! token, masked anew on every page, is required on the post.
//!
//! ```text
//! cargo run -p keyfob --example csrf_form
//! # open http://127.0.0.1:3000/ in a browser and submit the form
//! ```

use axum::{response::Html, routing::get, Form, Router};
use keyfob::{
    csrf::{CsrfLayer, CsrfToken},
    MemoryStore, Session, SessionLayer,
};
use serde::Deserialize;

async fn page(token: CsrfToken) -> Html<String> {
    Html(format!(
        r#"<form method="post" action="/">
             <input type="hidden" name="csrf_token" value="{token}">
             <input name="note"><button>Save</button>
           </form>"#
    ))
}

#[derive(Deserialize)]
struct Note {
    note: String,
}

async fn save(session: Session, Form(note): Form<Note>) -> Result<String, keyfob::Error> {
    // Reached only with a valid token from this session's page.
    session.insert("note", &note.note).await?;
    Ok(format!("saved {:?}", note.note))
}

fn app() -> Result<Router, keyfob::Error> {
    let sessions = SessionLayer::builder(MemoryStore::new())
        .with_secure(false)
        .build()?;
    Ok(Router::new()
        .route("/", get(page).post(save))
        // Inside the session layer: the token is bound to the session.
        .layer(CsrfLayer::new())
        .layer(sessions))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app()?).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use axum::{body::Body, http::Request};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::app;

    async fn post(app: &axum::Router, cookie: &str, body: String, site: &str) -> (u16, String) {
        let req = Request::post("/")
            .header("cookie", cookie)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("sec-fetch-site", site)
            .body(Body::from(body))
            .unwrap();
        let res = app.clone().oneshot(req).await.unwrap();
        let status = res.status().as_u16();
        (
            status,
            String::from_utf8_lossy(&res.into_body().collect().await.unwrap().to_bytes())
                .into_owned(),
        )
    }

    #[tokio::test]
    async fn the_pages_token_posts_and_a_missing_token_or_cross_site_post_is_refused() {
        let app = app().unwrap();
        let res = app
            .clone()
            .oneshot(Request::get("/").body(Body::empty()).unwrap())
            .await
            .unwrap();
        let cookie = res.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_owned();
        let page = String::from_utf8_lossy(&res.into_body().collect().await.unwrap().to_bytes())
            .into_owned();
        let token = page
            .split("value=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap()
            .to_owned();
        let ok = post(
            &app,
            &cookie,
            format!("csrf_token={token}&note=hi"),
            "same-origin",
        )
        .await;
        assert_eq!(ok, (200, "saved \"hi\"".to_owned()));
        assert_eq!(
            post(&app, &cookie, "note=hi".into(), "same-origin").await.0,
            403
        );
        let cross = post(
            &app,
            &cookie,
            format!("csrf_token={token}&note=hi"),
            "cross-site",
        )
        .await;
        assert_eq!(cross.0, 403);
    }
}
