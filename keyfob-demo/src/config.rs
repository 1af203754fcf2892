//! Command-line flags and environment variables (see `shared/spec/demo-http.md`).

use std::{net::SocketAddr, path::PathBuf};

use keyfob::time::Duration;

/// Where sessions are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// In process.
    Memory,
    /// A SQLite file (`sqlite://PATH`), created if missing.
    Sqlite(String),
    /// A PostgreSQL server (`postgres://…` or `postgresql://…`).
    Postgres(String),
    /// A MySQL or MariaDB server (`mysql://USER:PASS@HOST/DB`).
    MySql(String),
    /// A Redis server (`redis://…`) or a Redis Cluster seed node (`redis+cluster://…`).
    Redis(String),
    /// Client-side: each session sealed (AES-256-GCM) inside its cookie. The
    /// store named here keeps the logged-in sessions' entries and the
    /// logout marks, so they survive a restart and replicas share them:
    /// `cookie` keeps them in `sqlite://keyfob-demo.db`, `cookie+URL` in URL.
    Cookie(Box<StoreUrl>),
}

/// Where `cookie` keeps its revocation entries and marks.
const DEFAULT_COOKIE_MARKS: &str = "sqlite://keyfob-demo.db";

impl StoreUrl {
    /// Parses `memory`, `cookie`, `cookie+URL`, `sqlite://PATH`,
    /// `postgres://…`, `mysql://…`, `redis://…`, `redis+cluster://…`.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s == "cookie" {
            return Ok(StoreUrl::Cookie(Box::new(StoreUrl::parse(
                DEFAULT_COOKIE_MARKS,
            )?)));
        }
        if let Some(marks) = s.strip_prefix("cookie+") {
            return match StoreUrl::parse(marks)? {
                StoreUrl::Cookie(_) => Err(format!(
                    "store URL {:?}: cookie sessions keep their marks in a server-side store, not in cookies",
                    redact(s)
                )),
                marks => Ok(StoreUrl::Cookie(Box::new(marks))),
            };
        }
        let nonempty = |rest: &str, what: &str| {
            if rest.is_empty() {
                Err(format!("store URL {s:?} has no {what}"))
            } else {
                Ok(())
            }
        };
        if s == "memory" {
            Ok(StoreUrl::Memory)
        } else if let Some(rest) = s.strip_prefix("mysql://") {
            nonempty(rest, "host")?;
            Ok(StoreUrl::MySql(s.to_owned()))
        } else if let Some(rest) = [
            "redis://",
            "rediss://",
            "redis+cluster://",
            "rediss+cluster://",
        ]
        .iter()
        .find_map(|p| s.strip_prefix(p))
        {
            nonempty(rest, "host")?;
            Ok(StoreUrl::Redis(s.to_owned()))
        } else if let Some(path) = s.strip_prefix("sqlite://") {
            nonempty(path, "file path")?;
            Ok(StoreUrl::Sqlite(s.to_owned()))
        } else if let Some(rest) = s
            .strip_prefix("postgres://")
            .or_else(|| s.strip_prefix("postgresql://"))
        {
            nonempty(rest, "host")?;
            Ok(StoreUrl::Postgres(s.to_owned()))
        } else {
            Err(format!(
                "unsupported store {:?}: expected memory, cookie, cookie+URL, sqlite://PATH, postgres://…, mysql://…, redis://… or redis+cluster://…",
                redact(s)
            ))
        }
    }
}

/// Hides a password in a URL (`scheme://user:***@host`).
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    // The host part follows the last `@`: a password may contain one.
    match rest.rsplit_once('@') {
        Some((creds, host)) if creds.contains(':') => {
            let user = creds.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}")
        }
        _ => url.to_owned(),
    }
}

impl std::fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreUrl::Memory => f.write_str("memory"),
            StoreUrl::Cookie(marks) => write!(f, "cookie (revocation marks in {marks})"),
            StoreUrl::Sqlite(u)
            | StoreUrl::Postgres(u)
            | StoreUrl::MySql(u)
            | StoreUrl::Redis(u) => f.write_str(&redact(u)),
        }
    }
}

/// The demo's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listen address.
    pub addr: SocketAddr,
    /// Session store.
    pub store: StoreUrl,
    /// Master key file.
    pub key_file: PathBuf,
    /// Drop `Secure` from cookies.
    pub insecure_cookies: bool,
    /// Server-side inactivity timeout.
    pub idle_timeout: Duration,
    /// Hard lifetime cap.
    pub absolute_timeout: Duration,
    /// Accept (once, then rotate) the cookies of sessions that
    /// `keyfob-demo migrate` imported from tower-sessions.
    pub legacy_ids: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            addr: SocketAddr::from(([127, 0, 0, 1], 3000)),
            store: StoreUrl::Sqlite("sqlite://keyfob-demo.db".to_owned()),
            key_file: PathBuf::from("keyfob-demo.key"),
            insecure_cookies: false,
            idle_timeout: Duration::hours(2),
            absolute_timeout: Duration::hours(12),
            legacy_ids: false,
        }
    }
}

/// Parses `2h`, `30m`, `45s`, `1d` (a positive whole number and one unit).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {s:?}: use a number and one of s, m, h, d (e.g. 2h)");
    let unit = s.chars().last().ok_or_else(bad)?;
    let n: i64 = s[..s.len() - unit.len_utf8()].parse().map_err(|_| bad())?;
    if n <= 0 {
        return Err(bad());
    }
    let unit_secs: i64 = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return Err(bad()),
    };
    n.checked_mul(unit_secs)
        .map(Duration::seconds)
        .ok_or_else(|| format!("duration {s:?} is too long"))
}

impl Config {
    /// Reads flags (which win) and environment variables.
    pub fn from_args(
        args: impl IntoIterator<Item = String>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, String> {
        let mut c = Config::default();
        if let Some(a) = env("KEYFOB_ADDR") {
            c.addr = parse_addr(&a)?;
        }
        if let Some(s) = env("KEYFOB_STORE") {
            c.store = StoreUrl::parse(&s)?;
        }
        if let Some(k) = env("KEYFOB_KEY_FILE") {
            c.key_file = PathBuf::from(k);
        }
        if env("KEYFOB_INSECURE_COOKIES").is_some_and(|v| v == "1" || v == "true") {
            c.insecure_cookies = true;
        }
        if env("KEYFOB_LEGACY_IDS").is_some_and(|v| v == "1" || v == "true") {
            c.legacy_ids = true;
        }
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) => (f.to_owned(), Some(v.to_owned())),
                None => (arg.clone(), None),
            };
            let mut value = || {
                inline
                    .clone()
                    .or_else(|| args.next())
                    .ok_or_else(|| format!("{flag} needs a value"))
            };
            match flag.as_str() {
                "--addr" => c.addr = parse_addr(&value()?)?,
                "--store" => c.store = StoreUrl::parse(&value()?)?,
                "--key-file" => c.key_file = PathBuf::from(value()?),
                "--insecure-cookies" => c.insecure_cookies = true,
                "--legacy-ids" => c.legacy_ids = true,
                "--idle-timeout" => c.idle_timeout = parse_duration(&value()?)?,
                "--absolute-timeout" => c.absolute_timeout = parse_duration(&value()?)?,
                "-h" | "--help" => return Err(USAGE.to_owned()),
                other => return Err(format!("unknown argument {other:?}; see --help")),
            }
        }
        Ok(c)
    }
}

fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse()
        .map_err(|_| format!("invalid address {s:?}: expected IP:PORT, e.g. 127.0.0.1:3000"))
}

/// The `--help` text.
pub const USAGE: &str = "usage: keyfob-demo [--addr IP:PORT] [--store URL] [--key-file PATH] \
[--insecure-cookies] [--legacy-ids] [--idle-timeout 2h] [--absolute-timeout 12h]
       keyfob-demo migrate --from URL --to URL [--checkpoint PATH] (see migrate --help)";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_bad_ones_are_refused() {
        assert_eq!(parse_duration("2h"), Ok(Duration::hours(2)));
        assert_eq!(parse_duration("90s"), Ok(Duration::seconds(90)));
        for bad in [
            "",
            "h",
            "2",
            "-1h",
            "0m",
            "2w",
            "1.5h",
            "é",
            "99999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn flags_win_over_environment() {
        let env = |k: &str| (k == "KEYFOB_ADDR").then(|| "127.0.0.1:1".to_owned());
        let c = Config::from_args(["--addr=127.0.0.1:2".to_owned()], env).unwrap();
        assert_eq!(c.addr.port(), 2);
        let c = Config::from_args(Vec::new(), env).unwrap();
        assert_eq!(c.addr.port(), 1);
    }

    #[test]
    fn bad_arguments_give_a_one_line_reason() {
        for args in [
            vec!["--store", "ftp://x"],
            vec!["--addr", "nope"],
            vec!["--bogus"],
            vec!["--addr"],
        ] {
            let err = Config::from_args(args.into_iter().map(String::from), |_| None).unwrap_err();
            assert!(!err.contains('\n'), "{err}");
        }
    }
}
