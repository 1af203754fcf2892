//! The contract's core routes: login, `/me`, logout, `/profile`, `/count`,
//! the session cookie, `/healthz`, hostile cookies, start-up and bad flags.

use reqwest::{header, StatusCode};

use crate::common::*;

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

#[test]
fn bad_configuration_exits_non_zero_with_a_one_line_reason() {
    let out = demo_binary()
        .args(["migrate", "--from", "sqlite://x"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--to"),
        "the missing flag is named: {stderr}"
    );
    for args in [
        vec!["--store", "nosuch://x"],
        vec!["--addr", "not-an-address"],
        vec!["--idle-timeout", "soon"],
        vec!["--bogus"],
        vec!["--insecure-cookies=maybe"],
        vec!["migrate", "--from", "sqlite://x"],
    ] {
        let out = demo_binary().args(&args).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: a usage error exits 2"
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn help_lists_every_flag_with_its_variable_and_default_and_exits_0() {
    let out = demo_binary().arg("--help").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    for (flag, var) in [
        ("--addr", "KEYFOB_ADDR"),
        ("--store", "KEYFOB_STORE"),
        ("--key-file", "KEYFOB_KEY_FILE"),
        ("--insecure-cookies", "KEYFOB_INSECURE_COOKIES"),
        ("--idle-timeout", "KEYFOB_IDLE_TIMEOUT"),
        ("--absolute-timeout", "KEYFOB_ABSOLUTE_TIMEOUT"),
    ] {
        let line = help
            .lines()
            .find(|l| l.trim_start().starts_with(flag))
            .unwrap_or_else(|| panic!("{flag} missing from --help:\n{help}"));
        assert!(line.contains(var) && line.contains("[default: "), "{line}");
    }
    assert!(help.contains("migrate"), "{help}");
    let out = demo_binary().arg("--version").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("keyfob-demo "));
}

#[test]
fn startup_prints_the_address_and_the_store() {
    let key_file = temp_path("startup");
    let line = startup_line(&key_file);
    assert!(
        line.starts_with("keyfob-demo listening on http://127.0.0.1:"),
        "{line}"
    );
    assert!(line.contains("(store: memory)"), "{line}");
    std::fs::remove_dir_all(key_file.parent().unwrap()).unwrap();
}
