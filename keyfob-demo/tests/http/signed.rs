//! Signed cookies (`/set`, `/read`, `/signed/*`), key files and rotation,
//! and cookie sessions (`--store cookie`).

use keyfob::keys::Keyring;
use keyfob_demo::config::Config;
use reqwest::{header, redirect::Policy, Method, StatusCode};

use crate::common::*;

/// One request with exactly the `Cookie` header given.
async fn with_cookie(
    server: &Server,
    method: reqwest::Method,
    path: &str,
    cookie: Option<&str>,
    form: Option<&str>,
) -> Reply {
    let http = reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .unwrap();
    let mut req = http.request(method, format!("{}{path}", server.base));
    if let Some(c) = cookie {
        req = req.header(header::COOKIE, c);
    }
    if let Some(f) = form {
        req = req
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(f.to_owned());
    }
    let res = req.send().await.unwrap();
    Reply {
        status: res.status(),
        headers: res.headers().clone(),
        body: res.text().await.unwrap(),
    }
}

impl Reply {
    /// The whole `Set-Cookie` line for `name`.
    fn set_cookie_named(&self, name: &str) -> Option<String> {
        self.headers
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with(&format!("{name}=")))
            .map(str::to_owned)
    }

    /// `name=value` of the cookie set for `name`, ready for a `Cookie` header.
    fn pair(&self, name: &str) -> Option<String> {
        let line = self.set_cookie_named(name)?;
        Some(line.split(';').next().unwrap().to_owned())
    }
}

#[tokio::test]
async fn signed_theme_cookie_reads_back_and_forgeries_read_as_no_theme() {
    let server = serve_with(memory(), test_keys(), &Config::default()).await;
    let r = with_cookie(&server, Method::GET, "/set", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    let theme = r.pair("theme").expect("/set sets the signed cookie theme");
    assert_ne!(theme, "theme=dark", "the value is signed");
    let r = with_cookie(&server, Method::GET, "/read", Some(&theme), None).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (StatusCode::OK, "theme = dark")
    );
    let value = theme.trim_start_matches("theme=");
    let mut flipped = value.as_bytes().to_vec();
    flipped[3] ^= 1;
    let forgeries = [
        None,
        Some("theme=dark".to_owned()),
        Some(format!("theme={}", String::from_utf8(flipped).unwrap())),
        Some(format!("theme={}", &value[..value.len() - 1])),
        Some(format!("theme={value}A")),
        Some(format!("font={value}")),
        Some(format!("{theme}; {theme}")),
    ];
    for cookie in forgeries {
        let r = with_cookie(&server, Method::GET, "/read", cookie.as_deref(), None).await;
        assert_eq!(
            (r.status, r.body.as_str()),
            (StatusCode::OK, "no theme set"),
            "{cookie:?}"
        );
    }
    // Another server's keyring does not verify it.
    let other = serve_with(memory(), test_keys(), &Config::default()).await;
    let r = with_cookie(&other, Method::GET, "/read", Some(&theme), None).await;
    assert_eq!(r.body, "no theme set");
}

#[tokio::test]
async fn signed_login_whoami_and_logout_follow_the_contract() {
    let server = serve_with(memory(), test_keys(), &Config::default()).await;
    let r = with_cookie(&server, Method::GET, "/signed/whoami", None, None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = with_cookie(
        &server,
        Method::POST,
        "/signed/login",
        None,
        Some("user_id=42"),
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.headers[header::LOCATION], "/dashboard");
    let line = r.set_cookie_named("session_user").unwrap();
    for attr in [
        "HttpOnly",
        "Secure",
        "SameSite=Lax",
        "Path=/",
        "Max-Age=604800",
    ] {
        assert!(line.contains(attr), "{line} lacks {attr}");
    }
    let user = r.pair("session_user").unwrap();
    let r = with_cookie(&server, Method::GET, "/signed/whoami", Some(&user), None).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (StatusCode::OK, "Logged in as 42")
    );
    let value = user.trim_start_matches("session_user=");
    for forged in [
        "session_user=42".to_owned(),
        format!("session_user={}", value.replacen('A', "B", 1)),
        format!("session_user={}x", value),
        format!("theme={value}"),
    ] {
        // `replacen` may find no 'A' and leave the genuine value: skip that one.
        if forged == user {
            continue;
        }
        let r = with_cookie(&server, Method::GET, "/signed/whoami", Some(&forged), None).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{forged}");
    }
    let r = with_cookie(&server, Method::POST, "/signed/logout", Some(&user), None).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.headers[header::LOCATION], "/");
    let removal = r.set_cookie_named("session_user").unwrap();
    assert!(
        removal.starts_with("session_user=;") && removal.contains("Max-Age=0"),
        "{removal}"
    );
    // Bad input is a 4xx, never a 500.
    for form in ["", "user_id=", "user_id=a%20b", "nope=1"] {
        let r = with_cookie(&server, Method::POST, "/signed/login", None, Some(form)).await;
        assert!(r.status.is_client_error(), "{form:?}: {}", r.status);
    }
}

#[tokio::test]
async fn signed_user_cookie_replayed_after_seven_days_is_refused() {
    let clock = keyfob::ManualClock::new();
    let keys = test_keys().with_clock(clock.clone());
    let server = serve_with(memory(), keys, &Config::default()).await;
    let r = with_cookie(
        &server,
        Method::POST,
        "/signed/login",
        None,
        Some("user_id=7"),
    )
    .await;
    let user = r.pair("session_user").unwrap();
    clock.advance(keyfob::time::Duration::days(7) - keyfob::time::Duration::seconds(1));
    let r = with_cookie(&server, Method::GET, "/signed/whoami", Some(&user), None).await;
    assert_eq!(r.status, StatusCode::OK);
    clock.advance(keyfob::time::Duration::seconds(1));
    let r = with_cookie(&server, Method::GET, "/signed/whoami", Some(&user), None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn restart_with_the_same_key_file_keeps_signed_cookies_valid() {
    let path = temp_path("restart");
    let first = serve_with(
        memory(),
        Keyring::load_or_create(&path).unwrap(),
        &Config::default(),
    )
    .await;
    let r = with_cookie(
        &first,
        Method::POST,
        "/signed/login",
        None,
        Some("user_id=9"),
    )
    .await;
    let user = r.pair("session_user").unwrap();
    let second = serve_with(
        memory(),
        Keyring::load_or_create(&path).unwrap(),
        &Config::default(),
    )
    .await;
    let r = with_cookie(&second, Method::GET, "/signed/whoami", Some(&user), None).await;
    assert_eq!(r.body, "Logged in as 9");
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}

#[tokio::test]
async fn signed_user_cookie_under_a_rotated_key_is_reissued() {
    let (old_path, new_path) = (temp_path("rotate-old"), temp_path("rotate-new"));
    let old = Keyring::load_or_create(&old_path).unwrap();
    let new_key = Keyring::load_or_create(&new_path).unwrap();
    let server = serve_with(memory(), old, &Config::default()).await;
    let r = with_cookie(
        &server,
        Method::POST,
        "/signed/login",
        None,
        Some("user_id=5"),
    )
    .await;
    let user = r.pair("session_user").unwrap();
    // Rotation: the new key first, the old one kept to verify.
    let text = |p: &std::path::Path| std::fs::read_to_string(p).unwrap();
    let rotated = Keyring::from_base64(&format!("{}{}", text(&new_path), text(&old_path))).unwrap();
    let server = serve_with(memory(), rotated, &Config::default()).await;
    let r = with_cookie(&server, Method::GET, "/signed/whoami", Some(&user), None).await;
    assert_eq!(r.body, "Logged in as 5");
    let reissued = r.pair("session_user").expect("re-issued under the new key");
    let only_new = serve_with(memory(), new_key, &Config::default()).await;
    let r = with_cookie(
        &only_new,
        Method::GET,
        "/signed/whoami",
        Some(&reissued),
        None,
    )
    .await;
    assert_eq!(r.body, "Logged in as 5");
    let r = with_cookie(&only_new, Method::GET, "/signed/whoami", Some(&user), None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    for p in [old_path, new_path] {
        std::fs::remove_dir_all(p.parent().unwrap()).unwrap();
    }
}

#[tokio::test]
async fn cookie_store_runs_login_count_and_logout_without_server_sessions() {
    let config = Config {
        store: keyfob_demo::config::StoreUrl::Cookie(Box::new(
            keyfob_demo::config::StoreUrl::Memory,
        )),
        ..Config::default()
    };
    let server = serve_with(memory(), test_keys(), &config).await;
    let mut c = Client::new(&server);
    for n in 1..=2 {
        let r = c.get("/count").await;
        assert_eq!(
            r.body,
            format!("You have visited this page {n} time(s) in this session.")
        );
    }
    let before = c.cookie.clone().unwrap();
    let r = c.login("alice", "correct horse").await;
    assert_eq!(r.body, "logged in");
    let cookie = c.cookie.clone().unwrap();
    assert_ne!(cookie, before);
    assert!(!cookie.contains("alice"), "the session is encrypted");
    let r = c.get("/me").await;
    assert_eq!(r.body, r#"{"id":1,"username":"alice"}"#);
    assert!(r.set_cookie().is_none(), "a read sends no cookie");
    // The pre-login cookie was retired by the rotation.
    c.cookie = Some(before);
    assert_eq!(c.get("/me").await.status, StatusCode::UNAUTHORIZED);
    c.cookie = Some(cookie.clone());
    let r = c.post("/logout").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert!(r.set_cookie().unwrap().contains("Max-Age=0"));
    // Replaying the old cookie after logout: refused (revocation mark).
    c.cookie = Some(cookie);
    assert_eq!(c.get("/me").await.status, StatusCode::UNAUTHORIZED);
}

#[test]
fn first_run_creates_the_key_file_with_mode_0600_and_a_malformed_one_exits() {
    use std::os::unix::fs::PermissionsExt as _;
    let path = temp_path("first-run");
    let line = startup_line(&path);
    assert!(line.starts_with("keyfob-demo listening"), "{line}");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let key = std::fs::read_to_string(&path).unwrap();
    assert_eq!(Keyring::from_base64(&key).map(|_| ()).ok(), Some(()));
    for bad in ["not base64 at all!", "AAAA", ""] {
        std::fs::write(&path, bad).unwrap();
        let out = demo_binary()
            .args(["--addr", "127.0.0.1:0", "--key-file"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{bad:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.trim_end().lines().count(), 1, "{bad:?}: {stderr}");
        assert!(stderr.contains("key"), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}
