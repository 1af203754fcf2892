//! The demo's HTTP contract (`shared/spec/demo-http.md`), over real HTTP on loopback.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    unreachable_pub
)]

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::Arc,
};

use keyfob::{MemoryStore, SessionStore};
use keyfob_demo::config::Config;
use reqwest::{header, redirect::Policy, StatusCode};

struct Server {
    base: String,
}

async fn serve(store: Arc<dyn SessionStore>) -> Server {
    let router = keyfob_demo::app(store, &Config::default()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    Server {
        base: format!("http://{addr}"),
    }
}

/// A client that keeps the `id` cookie the way a browser would (minus the
/// `Secure` rule, since the tests speak plain HTTP on loopback).
struct Client {
    http: reqwest::Client,
    base: String,
    cookie: Option<String>,
}

struct Reply {
    status: StatusCode,
    headers: header::HeaderMap,
    body: String,
}

impl Reply {
    fn set_cookie(&self) -> Option<&str> {
        self.headers
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with("id="))
    }
}

impl Client {
    fn new(server: &Server) -> Self {
        Client {
            http: reqwest::Client::builder()
                .redirect(Policy::none())
                .build()
                .unwrap(),
            base: server.base.clone(),
            cookie: None,
        }
    }

    async fn send(&mut self, req: reqwest::RequestBuilder) -> Reply {
        let req = match &self.cookie {
            Some(c) => req.header(header::COOKIE, format!("id={c}")),
            None => req,
        };
        let res = req.send().await.unwrap();
        let reply = Reply {
            status: res.status(),
            headers: res.headers().clone(),
            body: res.text().await.unwrap(),
        };
        if let Some(set) = reply.set_cookie() {
            let value = set.split(';').next().unwrap().trim_start_matches("id=");
            self.cookie = (!value.is_empty()).then(|| value.to_owned());
        }
        reply
    }

    async fn get(&mut self, path: &str) -> Reply {
        let req = self.http.get(format!("{}{path}", self.base));
        self.send(req).await
    }

    async fn post_json(&mut self, path: &str, body: &str) -> Reply {
        let req = self
            .http
            .post(format!("{}{path}", self.base))
            .header(header::CONTENT_TYPE, "application/json")
            .body(body.to_owned());
        self.send(req).await
    }

    async fn post(&mut self, path: &str) -> Reply {
        let req = self.http.post(format!("{}{path}", self.base));
        self.send(req).await
    }

    async fn login(&mut self, user: &str, password: &str) -> Reply {
        let body = serde_json::json!({ "username": user, "password": password }).to_string();
        self.post_json("/login", &body).await
    }
}

fn memory() -> Arc<dyn SessionStore> {
    Arc::new(MemoryStore::new())
}

#[tokio::test]
async fn login_issues_a_new_session_id_and_retires_the_old_one() {
    let server = serve(memory()).await;
    let mut c = Client::new(&server);
    c.get("/count").await;
    let before = c.cookie.clone().unwrap();
    let r = c.login("alice", "correct horse").await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "logged in"));
    let after = c.cookie.clone().unwrap();
    assert_ne!(before, after);
    let r = c.get("/me").await;
    assert_eq!(r.body, r#"{"id":1,"username":"alice"}"#);
    // The pre-login ID loads nothing any more.
    c.cookie = Some(before);
    let r = c.get("/me").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (StatusCode::UNAUTHORIZED, "not logged in")
    );
    let r = c.get("/count").await;
    assert_eq!(
        r.body,
        "You have visited this page 1 time(s) in this session."
    );
}

#[tokio::test]
async fn wrong_credentials_and_bad_json_are_refused() {
    let server = serve(memory()).await;
    let mut c = Client::new(&server);
    let r = c.login("alice", "wrong").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (StatusCode::UNAUTHORIZED, "invalid credentials")
    );
    let r = c.login("mallory", "correct horse").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.set_cookie().is_none());
    for body in ["{", "[]", r#"{"username":1}"#, ""] {
        let r = c.post_json("/login", body).await;
        assert!(r.status.is_client_error(), "{body:?} -> {}", r.status);
    }
}

#[tokio::test]
async fn logout_deletes_the_session_and_clears_the_cookie() {
    let server = serve(memory()).await;
    let mut c = Client::new(&server);
    c.login("bob", "battery staple").await;
    let cookie = c.cookie.clone().unwrap();
    let r = c.post("/logout").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.headers[header::LOCATION], "/");
    let removal = r.set_cookie().unwrap();
    assert!(
        removal.starts_with("id=;") && removal.contains("Max-Age=0"),
        "{removal}"
    );
    assert!(c.cookie.is_none());
    // Replaying the old cookie gets nothing.
    c.cookie = Some(cookie);
    let r = c.get("/me").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn profile_requires_login() {
    let server = serve(memory()).await;
    let mut c = Client::new(&server);
    let r = c.get("/profile").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (StatusCode::UNAUTHORIZED, "login required")
    );
    c.login("alice", "correct horse").await;
    let r = c.get("/profile").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (StatusCode::OK, r#"{"id":1,"username":"alice"}"#)
    );
}

#[tokio::test]
async fn count_counts_per_session_and_reads_send_no_cookie() {
    let server = serve(memory()).await;
    let mut a = Client::new(&server);
    let mut b = Client::new(&server);
    for n in 1..=3 {
        let r = a.get("/count").await;
        assert_eq!(
            r.body,
            format!("You have visited this page {n} time(s) in this session.")
        );
    }
    let r = b.get("/count").await;
    assert_eq!(
        r.body,
        "You have visited this page 1 time(s) in this session."
    );
    a.login("alice", "correct horse").await;
    let r = a.get("/me").await;
    assert!(
        r.set_cookie().is_none(),
        "a read-only request sets no cookie"
    );
    let cookie = r.headers.get(header::SET_COOKIE);
    assert!(cookie.is_none());
}

#[tokio::test]
async fn session_cookie_has_the_contract_attributes() {
    let server = serve(memory()).await;
    let mut c = Client::new(&server);
    let r = c.get("/count").await;
    let set = r.set_cookie().unwrap();
    for attr in [
        "HttpOnly",
        "SameSite=Lax",
        "Path=/",
        "Secure",
        "Max-Age=7200",
    ] {
        assert!(set.contains(attr), "{set} lacks {attr}");
    }
}

#[tokio::test]
async fn healthz_answers_ok_and_creates_no_session() {
    let server = serve(memory()).await;
    let mut c = Client::new(&server);
    let r = c.get("/healthz").await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "ok"));
    assert!(r.set_cookie().is_none());
}

#[tokio::test]
async fn hostile_cookies_never_give_a_server_error() {
    let server = serve(memory()).await;
    let mut c = Client::new(&server);
    for value in [
        "",
        "x",
        "=;=;",
        &"A".repeat(8000),
        "id=\u{ff}\u{e9}",
        "id=%00%ff",
    ] {
        c.cookie = Some(value.to_owned());
        for path in ["/count", "/me", "/profile"] {
            let r = c.get(path).await;
            assert!(
                !r.status.is_server_error(),
                "{path} {value:?}: {}",
                r.status
            );
        }
    }
}

fn demo_binary() -> Command {
    Command::new(env!("CARGO_BIN_EXE_keyfob-demo"))
}

#[test]
fn bad_configuration_exits_non_zero_with_a_one_line_reason() {
    for args in [
        vec!["--store", "nosuch://x"],
        vec!["--addr", "not-an-address"],
        vec!["--idle-timeout", "soon"],
    ] {
        let out = demo_binary().args(&args).output().unwrap();
        assert!(!out.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn startup_prints_the_address_and_the_store() {
    let mut child = demo_binary()
        .args(["--addr", "127.0.0.1:0", "--store", "memory"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        line.starts_with("keyfob-demo listening on http://127.0.0.1:"),
        "{line}"
    );
    assert!(line.contains("(store: memory)"), "{line}");
}

// ------------------------------------------------ CSRF and the user's sessions

impl Client {
    /// `GET /form` and the token it hands out.
    async fn token(&mut self) -> String {
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
