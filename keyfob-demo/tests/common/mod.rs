//! What the demo's test binaries (`http`, `faults`) share: serving the app
//! in process, running the real binary, a cookie-keeping HTTP client, and
//! scratch directories. Each binary uses part of it.
#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Arc,
    time::Duration,
};

use keyfob::{keys::Keyring, MemoryStore, SessionStore};
use keyfob_demo::config::Config;
use reqwest::{header, redirect::Policy, StatusCode};

/// An app served on a loopback port.
pub struct Server {
    pub base: String,
}

impl AsRef<str> for Server {
    fn as_ref(&self) -> &str {
        &self.base
    }
}

/// The demo app over `store`, with the default settings, served in process.
pub async fn serve(store: Arc<dyn SessionStore>) -> Server {
    serve_with(store, test_keys(), &Config::default()).await
}

/// The demo app with this keyring and these settings, served in process.
pub async fn serve_with(store: Arc<dyn SessionStore>, keys: Keyring, config: &Config) -> Server {
    let router = keyfob_demo::app_with_keys(store, keys, config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    Server {
        base: format!("http://{addr}"),
    }
}

pub fn memory() -> Arc<dyn SessionStore> {
    Arc::new(MemoryStore::new())
}

pub fn test_keys() -> Keyring {
    Keyring::generate().unwrap()
}

/// A client that keeps the `id` cookie the way a browser would (minus the
/// `Secure` rule, since the tests speak plain HTTP on loopback).
#[derive(Clone)]
pub struct Client {
    pub http: reqwest::Client,
    pub base: String,
    pub cookie: Option<String>,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: header::HeaderMap,
    pub body: String,
}

impl Reply {
    /// The `Set-Cookie` line for the session cookie `id`, if any.
    pub fn set_cookie(&self) -> Option<&str> {
        self.headers
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with("id="))
    }

    /// The value that line sets (empty for a removal).
    pub fn cookie_value(&self) -> Option<String> {
        self.set_cookie()
            .and_then(|v| v.split(';').next())
            .map(|v| v.trim_start_matches("id=").to_owned())
    }

    pub fn retry_after(&self) -> Option<&str> {
        self.headers
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
    }
}

impl Client {
    /// A client of the app at `base` (a [`Server`], a [`Demo`]'s server, or a URL).
    pub fn new(base: impl AsRef<str>) -> Self {
        Client {
            http: reqwest::Client::builder()
                .redirect(Policy::none())
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap(),
            base: base.as_ref().to_owned(),
            cookie: None,
        }
    }

    pub async fn send(&mut self, req: reqwest::RequestBuilder) -> Reply {
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
        if let Some(value) = reply.cookie_value() {
            self.cookie = (!value.is_empty()).then_some(value);
        }
        reply
    }

    pub async fn get(&mut self, path: &str) -> Reply {
        let req = self.http.get(format!("{}{path}", self.base));
        self.send(req).await
    }

    pub async fn post_json(&mut self, path: &str, body: &str) -> Reply {
        let req = self
            .http
            .post(format!("{}{path}", self.base))
            .header(header::CONTENT_TYPE, "application/json")
            .body(body.to_owned());
        self.send(req).await
    }

    pub async fn post(&mut self, path: &str) -> Reply {
        let req = self.http.post(format!("{}{path}", self.base));
        self.send(req).await
    }

    pub async fn login(&mut self, user: &str, password: &str) -> Reply {
        let body = serde_json::json!({ "username": user, "password": password }).to_string();
        self.post_json("/login", &body).await
    }
}

/// The real `keyfob-demo` binary.
pub fn demo_binary() -> Command {
    Command::new(env!("CARGO_BIN_EXE_keyfob-demo"))
}

/// The start-up line of the binary run on the memory store, a free port and
/// `--key-file key_file`; the process is stopped once it has printed it.
pub fn startup_line(key_file: &Path) -> String {
    let mut child = demo_binary()
        .args(["--addr", "127.0.0.1:0", "--store", "memory", "--key-file"])
        .arg(key_file)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let line = first_line(&mut child);
    child.kill().unwrap();
    child.wait().unwrap();
    line
}

/// The first line a child prints on its piped stdout.
fn first_line(child: &mut std::process::Child) -> String {
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    line
}

/// A demo process started from the real binary; killed on drop.
pub struct Demo {
    pub child: std::process::Child,
    pub server: Server,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Demo {
    /// Starts the binary on a free port with `--store store`, its key file
    /// and relative paths in `dir`, and waits for its start-up line.
    pub fn spawn(store: &str, dir: &Path) -> Demo {
        let mut child = demo_binary()
            .args(["--addr", "127.0.0.1:0", "--store", store])
            .arg("--key-file")
            .arg(dir.join("demo.key"))
            .current_dir(dir)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let line = first_line(&mut child);
        let addr = line
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no address in start-up line {line:?}"));
        Demo {
            server: Server {
                base: format!("http://{addr}"),
            },
            child,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Still running (no panic took it down)?
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

/// A fresh directory for one test, under the system temp dir.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("keyfob-demo-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The address of a server that `scripts/test` started; a test without it
/// fails, it is never skipped.
pub fn server_url(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: run the suite through scripts/test, which starts the server")
    })
}

/// A key-file path in a fresh scratch directory of its own (never one a
/// `scratch_dir` of the same name gives).
pub fn temp_path(name: &str) -> PathBuf {
    scratch_dir(&format!("key-{name}")).join("demo.key")
}
