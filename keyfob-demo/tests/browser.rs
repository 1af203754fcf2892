//! The demo in a real browser: headless Chromium driven over WebDriver
//! (Debian's `chromium` and `chromium-driver`, which `scripts/test` installs),
//! against the app served on loopback.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    unreachable_pub
)]

use std::{
    process::{Child, Command, Stdio},
    sync::Arc,
    time::Duration,
};

use axum::{response::Html, routing::get, Router};
use fantoccini::{Client, ClientBuilder, Locator};
use keyfob::{MemoryStore, SessionStore};
use keyfob_demo::config::Config;

fn tool(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: run the suite through scripts/test, which installs Chromium")
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Browser {
    client: Client,
    driver: Child,
    profile: std::path::PathBuf,
}

impl Browser {
    async fn start() -> Browser {
        let port = free_port();
        let driver = Command::new(tool("KEYFOB_TEST_CHROMEDRIVER"))
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let profile =
            std::env::temp_dir().join(format!("keyfob-chromium-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&profile);
        let caps = serde_json::json!({
            "goog:chromeOptions": {
                "binary": tool("KEYFOB_TEST_CHROMIUM"),
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--disable-quic", "--window-size=1100,1300",
                    format!("--user-data-dir={}", profile.display()),
                ]
            }
        });
        let caps = caps.as_object().unwrap().clone();
        let url = format!("http://127.0.0.1:{port}");
        let mut last = None;
        for _ in 0..100 {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(client) => {
                    return Browser {
                        client,
                        driver,
                        profile,
                    }
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("ChromeDriver did not start: {last:?}");
    }

    async fn text(&self, css: &str) -> String {
        let url = self.client.current_url().await.unwrap();
        match self.client.find(Locator::Css(css)).await {
            Ok(element) => element.text().await.unwrap(),
            Err(e) => panic!("no {css} on {url}: {e}"),
        }
    }

    async fn body(&self) -> String {
        self.text("body").await
    }

    /// Waits until the page at `path` has loaded (navigation after a click
    /// or a script's form submission finishes asynchronously).
    async fn wait_for_path(&self, path: &str) {
        for _ in 0..100 {
            let url = self.client.current_url().await.unwrap();
            let ready = self
                .client
                .execute("return document.readyState", vec![])
                .await
                .unwrap();
            if url.path() == path && ready == "complete" {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("never reached {path}");
    }

    async fn visits(&self) -> u64 {
        self.text("#visits").await.parse().unwrap()
    }

    async fn shows_login_form(&self) -> bool {
        // Navigation after a click finishes asynchronously: wait for the form.
        self.client
            .wait()
            .at_most(Duration::from_secs(5))
            .for_element(Locator::Css("form[action='/login'] input[name=username]"))
            .await
            .is_ok()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Chromium outlives a killed ChromeDriver (it is handed to init) and
        // would pile up run after run; each of its processes names this
        // browser's own profile directory on its command line.
        let _ = Command::new("pkill").arg("-f").arg(&self.profile).status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

async fn serve(router: Router) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, router).await });
    port
}

/// The page an attacker hosts on another origin: it auto-submits a transfer
/// to the app, even carrying a token it somehow learned.
fn attacker(app_port: u16, token: String) -> Router {
    let page = format!(
        r#"<!doctype html><html><body>
        <form id="f" method="post" action="http://127.0.0.1:{app_port}/transfer">
          <input name="csrf_token" value="{token}"><input name="amount" value="1000000">
        </form>
        <script>document.getElementById("f").submit();</script>
        </body></html>"#
    );
    Router::new().route("/", get(move || async move { Html(page) }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_flow_login_counter_transfer_forgery_and_logout() {
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    // Default settings, Secure cookies included: Chromium treats loopback as
    // a secure context. Outermost, a probe notes whether each POST reached
    // the server carrying the session cookie, so a forgery test can show the
    // cookie was there and only the CSRF defences stood in the way.
    let posts: Arc<std::sync::Mutex<Vec<(String, bool)>>> = Arc::default();
    let log = posts.clone();
    let app =
        keyfob_demo::app(store, &Config::default())
            .unwrap()
            .layer(axum::middleware::from_fn(
                move |req: axum::extract::Request, next: axum::middleware::Next| {
                    let log = log.clone();
                    async move {
                        if req.method() == axum::http::Method::POST {
                            let with_id = req
                                .headers()
                                .get_all("cookie")
                                .iter()
                                .filter_map(|v| v.to_str().ok())
                                .any(|v| v.split(';').any(|c| c.trim().starts_with("id=")));
                            log.lock()
                                .unwrap()
                                .push((req.uri().path().to_owned(), with_id));
                        }
                        next.run(req).await
                    }
                },
            ));
    let port = serve(app).await;
    let base = format!("http://127.0.0.1:{port}");
    let b = Browser::start().await;
    let c = &b.client;

    // Anonymous: the login form; logged in through it: the dashboard.
    log_in(&b, &base, "alice", "correct horse").await;

    // The session cookie is HttpOnly: invisible to page scripts.
    let cookies = c.execute("return document.cookie", vec![]).await.unwrap();
    let cookies = cookies.as_str().unwrap_or_default().to_owned();
    assert!(
        !cookies.split(';').any(|c| c.trim().starts_with("id=")),
        "{cookies:?}"
    );
    let stored = c.get_all_cookies().await.unwrap();
    let id = stored
        .iter()
        .find(|c| c.name() == "id")
        .expect("the browser holds the session cookie");
    assert_eq!(id.http_only(), Some(true));

    // The counter goes up per reload.
    let v1 = b.visits().await;
    c.refresh().await.unwrap();
    let v2 = b.visits().await;
    c.refresh().await.unwrap();
    assert_eq!((v2, b.visits().await), (v1 + 1, v1 + 2));

    // Alice also logs in elsewhere (an API client): two sessions, one revoke button.
    let http = reqwest::Client::new();
    let other = http
        .post(format!("{base}/login"))
        .json(&serde_json::json!({"username": "alice", "password": "correct horse"}))
        .send()
        .await
        .unwrap();
    let other_cookie = other
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix("id="))
        .and_then(|v| v.split(';').next())
        .unwrap()
        .to_owned();
    let other_is_in = || async {
        http.get(format!("{base}/me"))
            .header("cookie", format!("id={other_cookie}"))
            .send()
            .await
            .unwrap()
            .status()
            == 200
    };
    assert!(other_is_in().await);
    c.refresh().await.unwrap();
    let rows = c.find_all(Locator::Css("#sessions tr")).await.unwrap();
    assert_eq!(rows.len(), 3, "header + two sessions");
    if let Ok(path) = std::env::var("KEYFOB_SCREENSHOT") {
        std::fs::write(path, c.screenshot().await.unwrap()).unwrap();
    }
    // Revoke the other session from the dashboard: it is gone everywhere.
    c.find(Locator::Css("form[action$='/revoke'] button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let mut rows = 0;
    for _ in 0..100 {
        rows = c
            .find_all(Locator::Css("#sessions tr"))
            .await
            .map_or(0, |r| r.len());
        if rows == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(rows, 2, "header + this session");
    assert!(!other_is_in().await, "the revoked session still works");

    // The transfer form succeeds.
    let token = c
        .find(Locator::Css("#transfer input[name=csrf_token]"))
        .await
        .unwrap()
        .attr("value")
        .await
        .unwrap()
        .unwrap();
    c.find(Locator::Id("transfer-submit"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.wait_for_path("/transfer").await;
    assert_eq!(b.body().await, "transfer accepted");
    c.goto(&format!("{base}/")).await.unwrap();
    assert_eq!(b.text("#transfers").await, "1");

    // Pages on other origins auto-submit a transfer with a leaked token:
    // refused, nothing changes.
    let evil = serve(attacker(port, token)).await;
    // Cross-site (`localhost` is another site than `127.0.0.1`): SameSite=Lax
    // already keeps the session cookie home, so this case alone proves little.
    posts.lock().unwrap().clear();
    c.goto(&format!("http://localhost:{evil}/")).await.unwrap();
    b.wait_for_path("/transfer").await;
    assert_eq!(b.body().await, "CSRF check failed");
    assert_eq!(
        *posts.lock().unwrap(),
        [("/transfer".to_owned(), false)],
        "a cross-site form post carries no Lax cookie"
    );
    // Same-site but cross-origin (another port of the same host): the
    // browser sends the session cookie, so only the CSRF check stands
    // between the attacker and the transfer. It must refuse.
    posts.lock().unwrap().clear();
    c.goto(&format!("http://127.0.0.1:{evil}/")).await.unwrap();
    b.wait_for_path("/transfer").await;
    assert_eq!(b.body().await, "CSRF check failed");
    assert_eq!(
        *posts.lock().unwrap(),
        [("/transfer".to_owned(), true)],
        "the same-site forgery reached the server with the session cookie"
    );
    c.goto(&format!("{base}/")).await.unwrap();
    assert_eq!(
        b.text("#transfers").await,
        "1",
        "a forged transfer changed the user's state"
    );

    // Log out; then neither the back button nor a reload shows the dashboard.
    c.find(Locator::Id("logout"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert!(
        b.shows_login_form().await,
        "after logout: {}",
        b.body().await
    );
    c.back().await.unwrap();
    assert!(
        b.shows_login_form().await,
        "back button: {}",
        b.body().await
    );
    c.refresh().await.unwrap();
    assert!(b.shows_login_form().await, "reload: {}", b.body().await);
    assert!(c.find(Locator::Css("#user")).await.is_err());

    b.client.clone().close().await.unwrap();
}

/// Logs in through the login form and waits for the dashboard.
async fn log_in(b: &Browser, base: &str, user: &str, password: &str) {
    let c = &b.client;
    c.goto(&format!("{base}/")).await.unwrap();
    assert!(b.shows_login_form().await, "{}", b.body().await);
    for (field, value) in [("username", user), ("password", password)] {
        c.find(Locator::Css(&format!("input[name={field}]")))
            .await
            .unwrap()
            .send_keys(value)
            .await
            .unwrap();
    }
    c.find(Locator::Css("form[action='/login'] button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    c.wait()
        .at_most(Duration::from_secs(5))
        .for_element(Locator::Css("#user"))
        .await
        .unwrap();
    assert!(b.text("#user").await.contains(user), "{}", b.body().await);
}

/// Alice, an admin, sets bob's permissions with the dashboard's form.
async fn set_permissions(b: &Browser, user: &str, permissions: &str) {
    let c = &b.client;
    c.find(Locator::Id("perm-user"))
        .await
        .unwrap()
        .send_keys(user)
        .await
        .unwrap();
    let list = c.find(Locator::Id("perm-list")).await.unwrap();
    list.clear().await.unwrap();
    list.send_keys(permissions).await.unwrap();
    c.find(Locator::Id("perm-submit"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    c.wait()
        .at_most(Duration::from_secs(5))
        .for_element(Locator::Id("outcome"))
        .await
        .unwrap();
    assert_eq!(b.text("#outcome").await, "Permissions saved.");
}

async fn has_admin_link(b: &Browser) -> bool {
    b.client
        .find_all(Locator::Id("admin-link"))
        .await
        .unwrap()
        .len()
        == 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_admin_takes_a_permission_away_and_the_open_page_loses_access_on_reload() {
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    let port = serve(keyfob_demo::app(store, &Config::default()).unwrap()).await;
    let base = format!("http://127.0.0.1:{port}");
    let alice = Browser::start().await;
    let bob = Browser::start().await;

    log_in(&alice, &base, "alice", "correct horse").await;
    assert!(has_admin_link(&alice).await, "{}", alice.body().await);
    log_in(&bob, &base, "bob", "battery staple").await;
    assert!(!has_admin_link(&bob).await);
    bob.client.goto(&format!("{base}/admin")).await.unwrap();
    assert_eq!(bob.body().await, "forbidden");

    // Granted: bob's next page has it, with no new login.
    set_permissions(&alice, "bob", "admin").await;
    bob.client.refresh().await.unwrap();
    assert_eq!(bob.body().await, "admin: bob");

    // Taken away while bob's admin page is open: a reload is refused, and
    // bob is still logged in.
    set_permissions(&alice, "bob", "").await;
    bob.client.refresh().await.unwrap();
    assert_eq!(bob.body().await, "forbidden");
    bob.client.goto(&format!("{base}/")).await.unwrap();
    assert!(
        bob.text("#user").await.contains("bob"),
        "{}",
        bob.body().await
    );
    assert!(!has_admin_link(&bob).await);
}
