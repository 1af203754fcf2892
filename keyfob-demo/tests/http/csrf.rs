//! CSRF tokens, the cross-site rule, and a user's own sessions.

use reqwest::{header, StatusCode};

use crate::common::*;

impl Client {
    /// `GET /form` and the token it hands out.
    pub(crate) async fn token(&mut self) -> String {
        let r = self.get("/form").await;
        assert_eq!(r.status, StatusCode::OK);
        r.body
            .strip_prefix("csrf token: ")
            .expect("`csrf token: TOKEN`")
            .to_owned()
    }

    async fn request(
        &mut self,
        method: reqwest::Method,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.send(req).await
    }

    async fn transfer(&mut self, headers: &[(&str, &str)]) -> Reply {
        self.request(reqwest::Method::POST, "/transfer", headers)
            .await
    }

    async fn sessions(&mut self) -> Vec<serde_json::Value> {
        let r = self.get("/sessions").await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        serde_json::from_str(&r.body).unwrap()
    }
}

fn refused(r: &Reply) -> bool {
    r.status == StatusCode::FORBIDDEN && r.body == "CSRF check failed"
}

#[tokio::test]
async fn transfer_accepts_the_form_token_in_the_header_and_in_a_form_field() {
    let server = serve(memory()).await;
    let mut c = Client::new(&server);
    let token = c.token().await;
    assert!(!token.contains(' ') && !token.is_empty());
    let r = c.transfer(&[("x-csrf-token", &token)]).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (StatusCode::OK, "transfer accepted")
    );
    let req = c
        .http
        .post(format!("{}/transfer", c.base))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(format!("amount=10&csrf_token={token}"));
    let r = c.send(req).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (StatusCode::OK, "transfer accepted")
    );
}

#[tokio::test]
async fn transfer_refuses_missing_malformed_wrong_and_other_sessions_tokens() {
    let server = serve(memory()).await;
    let mut a = Client::new(&server);
    let mut b = Client::new(&server);
    let token_a = a.token().await;
    let token_b = b.token().await;
    let huge = "A".repeat(100 * 1024);
    let mut wrong = token_a.clone().into_bytes();
    wrong[70] = if wrong[70] == b'A' { b'B' } else { b'A' };
    let wrong = String::from_utf8(wrong).unwrap();
    assert!(refused(&a.transfer(&[]).await));
    for bad in [
        "x",
        &token_a[1..],
        "!".repeat(86).as_str(),
        &huge,
        &wrong,
        &token_b,
    ] {
        let r = a.transfer(&[("x-csrf-token", bad)]).await;
        assert!(refused(&r), "{:.20}: {} {}", bad, r.status, r.body);
    }
    // No session at all: nothing to match.
    let mut anon = Client::new(&server);
    assert!(refused(&anon.transfer(&[("x-csrf-token", &token_a)]).await));
    // The real one still works.
    assert_eq!(
        a.transfer(&[("x-csrf-token", &token_a)]).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn valid_token_sent_cross_site_or_from_a_lookalike_origin_is_refused() {
    let server = serve(memory()).await;
    let mut c = Client::new(&server);
    let token = c.token().await;
    let r = c
        .transfer(&[("x-csrf-token", &token), ("sec-fetch-site", "cross-site")])
        .await;
    assert!(refused(&r));
    for origin in [
        "https://app.example.com.evil.com",
        "null",
        &format!("{}.evil.com", server.base),
    ] {
        let r = c
            .transfer(&[("x-csrf-token", &token), ("origin", origin)])
            .await;
        assert!(refused(&r), "{origin}");
    }
    // Its own origin, as a browser on the page would send it, passes.
    let own = server.base.clone();
    let r = c
        .transfer(&[
            ("x-csrf-token", &token),
            ("origin", &own),
            ("sec-fetch-site", "same-origin"),
        ])
        .await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn cross_site_writes_are_refused_on_every_route_before_any_handler() {
    let server = serve(memory()).await;
    let mut c = Client::new(&server);
    let body = r#"{"username":"alice","password":"correct horse"}"#;
    for headers in [
        vec![("sec-fetch-site", "cross-site")],
        vec![("origin", "https://evil.example")],
    ] {
        let mut req = c
            .http
            .post(format!("{}/login", c.base))
            .header(header::CONTENT_TYPE, "application/json")
            .body(body);
        for (k, v) in &headers {
            req = req.header(*k, *v);
        }
        let r = c.send(req).await;
        assert!(refused(&r), "{headers:?}: {} {}", r.status, r.body);
        assert!(r.set_cookie().is_none());
    }
    // Without either header (a non-browser client), login needs no token.
    c.login("alice", "correct horse").await;
    let r = c
        .request(
            reqwest::Method::POST,
            "/logout",
            &[("sec-fetch-site", "cross-site")],
        )
        .await;
    assert!(refused(&r));
    assert_eq!(c.get("/me").await.status, StatusCode::OK, "still logged in");
    for method in [
        reqwest::Method::PUT,
        reqwest::Method::PATCH,
        reqwest::Method::DELETE,
    ] {
        let r = c
            .request(
                method.clone(),
                "/count",
                &[("origin", "https://evil.example")],
            )
            .await;
        assert!(refused(&r), "{method}");
    }
}

#[tokio::test]
async fn token_from_before_login_is_refused_after_login() {
    let server = serve(memory()).await;
    let mut c = Client::new(&server);
    let before = c.token().await;
    c.login("alice", "correct horse").await;
    assert!(refused(&c.transfer(&[("x-csrf-token", &before)]).await));
    let after = c.token().await;
    assert!(refused(&c.transfer(&[("x-csrf-token", &before)]).await));
    assert_eq!(
        c.transfer(&[("x-csrf-token", &after)]).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn login_as_alice_then_bob_in_one_session_leaves_none_of_alices_data() {
    let server = serve(memory()).await;
    let mut c = Client::new(&server);
    c.login("alice", "correct horse").await;
    c.get("/count").await;
    c.get("/count").await;
    let alices_token = c.token().await;
    c.login("bob", "battery staple").await;
    assert_eq!(c.get("/me").await.body, r#"{"id":2,"username":"bob"}"#);
    assert_eq!(
        c.get("/count").await.body,
        "You have visited this page 1 time(s) in this session."
    );
    assert!(refused(
        &c.transfer(&[("x-csrf-token", &alices_token)]).await
    ));
    // And alice has no session left to list.
    let mut alice = Client::new(&server);
    alice.login("alice", "correct horse").await;
    assert_eq!(alice.sessions().await.len(), 1);
}

#[tokio::test]
async fn sessions_lists_this_users_live_sessions_and_marks_the_current_one() {
    let server = serve(memory()).await;
    let mut anon = Client::new(&server);
    let r = anon.get("/sessions").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (StatusCode::UNAUTHORIZED, "login required")
    );
    let mut laptop = Client::new(&server);
    let mut phone = Client::new(&server);
    let mut bob = Client::new(&server);
    laptop.login("alice", "correct horse").await;
    phone.login("alice", "correct horse").await;
    bob.login("bob", "battery staple").await;
    let list = laptop.sessions().await;
    assert_eq!(list.len(), 2);
    assert_eq!(list.iter().filter(|s| s["current"] == true).count(), 1);
    for s in &list {
        let keys: Vec<&str> = s.as_object().unwrap().keys().map(String::as_str).collect();
        for k in ["handle", "created_at", "last_seen", "expires_at", "current"] {
            assert!(keys.contains(&k), "{s}");
        }
        // A handle presented as the cookie is no session.
        let mut thief = Client::new(&server);
        thief.cookie = Some(s["handle"].as_str().unwrap().to_owned());
        assert_eq!(thief.get("/me").await.status, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(bob.sessions().await.len(), 1);
}

#[tokio::test]
async fn revoke_others_logs_out_the_users_other_clients_and_keeps_this_one() {
    let server = serve(memory()).await;
    let mut laptop = Client::new(&server);
    let mut phone = Client::new(&server);
    let mut tablet = Client::new(&server);
    let mut bob = Client::new(&server);
    for c in [&mut laptop, &mut phone, &mut tablet] {
        c.login("alice", "correct horse").await;
    }
    bob.login("bob", "battery staple").await;
    // CSRF-protected: no token, no revocation.
    let r = laptop
        .request(reqwest::Method::POST, "/sessions/revoke-others", &[])
        .await;
    assert!(refused(&r));
    let token = laptop.token().await;
    let r = laptop
        .request(
            reqwest::Method::POST,
            "/sessions/revoke-others",
            &[("x-csrf-token", &token)],
        )
        .await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (StatusCode::OK, r#"{"revoked":2}"#)
    );
    assert_eq!(laptop.get("/me").await.status, StatusCode::OK);
    for c in [&mut phone, &mut tablet] {
        assert_eq!(c.get("/me").await.status, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(bob.get("/me").await.status, StatusCode::OK);
}

#[tokio::test]
async fn delete_session_ends_own_sessions_and_is_404_for_anyone_elses() {
    let server = serve(memory()).await;
    let mut laptop = Client::new(&server);
    let mut phone = Client::new(&server);
    let mut bob = Client::new(&server);
    laptop.login("alice", "correct horse").await;
    phone.login("alice", "correct horse").await;
    bob.login("bob", "battery staple").await;
    let bobs = bob.sessions().await[0]["handle"]
        .as_str()
        .unwrap()
        .to_owned();
    let phones = laptop
        .sessions()
        .await
        .into_iter()
        .find(|s| s["current"] == false)
        .unwrap()["handle"]
        .as_str()
        .unwrap()
        .to_owned();
    let token = laptop.token().await;
    let del = |h: &str| format!("/sessions/{h}");
    let r = laptop
        .request(
            reqwest::Method::DELETE,
            &del(&bobs),
            &[("x-csrf-token", &token)],
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(bob.get("/me").await.status, StatusCode::OK);
    for bad in ["nonsense", &"0".repeat(64)] {
        let r = laptop
            .request(
                reqwest::Method::DELETE,
                &del(bad),
                &[("x-csrf-token", &token)],
            )
            .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{bad}");
    }
    // Without the token: refused, the phone stays logged in.
    let r = laptop
        .request(reqwest::Method::DELETE, &del(&phones), &[])
        .await;
    assert!(refused(&r));
    assert_eq!(phone.get("/me").await.status, StatusCode::OK);
    let r = laptop
        .request(
            reqwest::Method::DELETE,
            &del(&phones),
            &[("x-csrf-token", &token)],
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(phone.get("/me").await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(laptop.get("/me").await.status, StatusCode::OK);
    assert_eq!(laptop.sessions().await.len(), 1);
}

#[tokio::test]
async fn html_login_form_redirects_to_the_dashboard_and_bad_passwords_stay_on_the_form() {
    let server = serve(memory()).await;
    let mut c = Client::new(&server);
    let r = c.get("/").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.contains("action=\"/login\""), "{}", r.body);
    assert_eq!(r.headers[header::CACHE_CONTROL], "no-store");
    let (http, base) = (c.http.clone(), c.base.clone());
    let form = |user: &str, pass: &str| {
        http.post(format!("{base}/login"))
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(format!(
                "username={user}&password={}",
                pass.replace(' ', "+")
            ))
    };
    let bad = form("alice", "nope");
    let r = c.send(bad).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(
        r.body.contains("Invalid username or password."),
        "{}",
        r.body
    );
    let good = form("alice", "correct horse");
    let r = c.send(good).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.headers[header::LOCATION], "/");
    let r = c.get("/").await;
    assert!(r.body.contains("Hello, alice"), "{}", r.body);
    assert!(r.body.contains("name=\"csrf_token\""));
}

#[tokio::test]
async fn dashboard_says_so_when_the_session_has_ended() {
    let server = serve(memory()).await;
    let mut c = Client::new(&server);
    c.login("alice", "correct horse").await;
    let cookie = c.cookie.clone();
    c.post("/logout").await;
    // A browser that kept the old cookie (another tab, a restore) sees why.
    c.cookie = cookie;
    let r = c.get("/").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.contains("Your session has ended"), "{}", r.body);
}
