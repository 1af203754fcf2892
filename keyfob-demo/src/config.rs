//! Command-line flags and environment variables (see `docs/demo-http.md`).

use std::{net::SocketAddr, path::PathBuf};

use clap::{Parser, Subcommand};

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

/// `keyfob-demo`'s command line: serve (the default) or `migrate`. Flags win
/// over their environment variables, which win over the defaults; `--help`
/// lists every flag with its variable and default.
#[derive(Debug, Parser)]
#[command(
    name = "keyfob-demo",
    version,
    about = "The reference app of keyfob: every session flow on real HTTP (http://127.0.0.1:3000).",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// How to serve.
    #[command(flatten)]
    pub serve: ServeArgs,
    /// A subcommand instead of serving.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Copy the live sessions of a tower-sessions store into a keyfob store
    /// (serve the result with --legacy-ids, so each old cookie is accepted
    /// once and rotated).
    Migrate(crate::migrate::Args),
}

/// The flags of the server.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Listen address.
    #[arg(long, env = "KEYFOB_ADDR", value_name = "IP:PORT", default_value = "127.0.0.1:3000", value_parser = parse_addr)]
    pub addr: SocketAddr,
    /// Session store: memory, cookie, cookie+URL, sqlite://PATH, postgres://…, mysql://…, redis://…, redis+cluster://…
    #[arg(long, env = "KEYFOB_STORE", value_name = "URL", default_value = "sqlite://keyfob-demo.db", value_parser = StoreUrl::parse)]
    pub store: StoreUrl,
    /// 64-byte master key file, created with mode 0600 on first run.
    #[arg(
        long,
        env = "KEYFOB_KEY_FILE",
        value_name = "PATH",
        default_value = "keyfob-demo.key"
    )]
    pub key_file: PathBuf,
    /// Drop the Secure attribute, for plain-HTTP clients that are not on localhost.
    #[arg(long, env = "KEYFOB_INSECURE_COOKIES", value_name = "BOOL", num_args = 0..=1,
          default_value = "false", default_missing_value = "true", value_parser = parse_flag)]
    pub insecure_cookies: bool,
    /// Accept (once, then rotate) the cookies of sessions that `migrate` imported.
    #[arg(long, env = "KEYFOB_LEGACY_IDS", value_name = "BOOL", num_args = 0..=1,
          default_value = "false", default_missing_value = "true", value_parser = parse_flag)]
    pub legacy_ids: bool,
    /// Server-side inactivity timeout (a number and one of s, m, h, d).
    #[arg(long, env = "KEYFOB_IDLE_TIMEOUT", value_name = "DURATION", default_value = "2h", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// Hard lifetime cap from login, never extended.
    #[arg(long, env = "KEYFOB_ABSOLUTE_TIMEOUT", value_name = "DURATION", default_value = "12h", value_parser = parse_duration)]
    pub absolute_timeout: Duration,
}

impl From<ServeArgs> for Config {
    fn from(a: ServeArgs) -> Self {
        Config {
            addr: a.addr,
            store: a.store,
            key_file: a.key_file,
            insecure_cookies: a.insecure_cookies,
            idle_timeout: a.idle_timeout,
            absolute_timeout: a.absolute_timeout,
            legacy_ids: a.legacy_ids,
        }
    }
}

impl Cli {
    /// Parses `args` (the program name first), reading the environment for
    /// what they leave out.
    ///
    /// # Errors
    /// clap's error: `--help` and `--version` (exit 0), a bad flag (exit 2);
    /// see [`one_line`].
    pub fn from_args<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        Cli::try_parse_from(args)
    }
}

/// A clap error as one line (`invalid value … for '--store <URL>': …`), for
/// the start-up contract: bad configuration exits with a one-line reason.
pub fn one_line(err: &clap::Error) -> String {
    let text = err.render().to_string();
    let mut lines = text.lines().skip_while(|l| l.trim().is_empty());
    let mut out = lines
        .next()
        .unwrap_or("invalid arguments")
        .trim_start_matches("error: ")
        .to_owned();
    // "…not provided:" is followed by the names, one per indented line.
    if out.ends_with(':') {
        let names: Vec<&str> = lines
            .take_while(|l| l.starts_with(' ') && !l.trim().is_empty())
            .map(str::trim)
            .collect();
        out.push(' ');
        out.push_str(&names.join(", "));
    }
    out
}

/// A boolean flag's value: true/yes/on/1 or false/no/off/0 (any case), and
/// an empty value (`KEYFOB_INSECURE_COOKIES=` in a compose file) is false.
fn parse_flag(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "" | "false" | "no" | "off" | "0" | "n" | "f" => Ok(false),
        "true" | "yes" | "on" | "1" | "y" | "t" => Ok(true),
        _ => Err(format!("{s:?} is not a boolean: use true or false")),
    }
}

fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse()
        .map_err(|_| format!("invalid address {s:?}: expected IP:PORT, e.g. 127.0.0.1:3000"))
}

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

    fn parse(args: &[&str]) -> Result<Config, String> {
        let argv = std::iter::once("keyfob-demo").chain(args.iter().copied());
        Cli::from_args(argv)
            .map(|cli| cli.serve.into())
            .map_err(|e| one_line(&e))
    }

    #[test]
    fn flags_parse_and_boolean_flags_take_an_explicit_value() {
        let c = parse(&["--addr=127.0.0.1:2", "--idle-timeout", "10s"]).unwrap();
        assert_eq!(c.addr.port(), 2);
        assert_eq!(c.idle_timeout, Duration::seconds(10));
        assert!(!c.insecure_cookies);
        assert!(parse(&["--insecure-cookies"]).unwrap().insecure_cookies);
        // `=false` means false (the hand-written parser turned it on).
        assert!(
            !parse(&["--insecure-cookies=false"])
                .unwrap()
                .insecure_cookies
        );
        assert!(
            parse(&["--insecure-cookies=true"])
                .unwrap()
                .insecure_cookies
        );
        assert!(!parse(&["--legacy-ids=no"]).unwrap().legacy_ids);
        assert!(parse(&["--legacy-ids=1"]).unwrap().legacy_ids);
        // An empty value (a variable set to nothing) is false, not an error.
        assert!(!parse(&["--insecure-cookies="]).unwrap().insecure_cookies);
    }

    #[test]
    fn environment_fills_in_and_flags_win_over_it() {
        // The only test that sets a variable, and only this one.
        std::env::set_var("KEYFOB_ADDR", "127.0.0.1:1");
        let from_env = parse(&[]);
        let from_flag = parse(&["--addr", "127.0.0.1:2"]);
        std::env::remove_var("KEYFOB_ADDR");
        assert_eq!(from_env.unwrap().addr.port(), 1);
        assert_eq!(from_flag.unwrap().addr.port(), 2);
    }

    #[test]
    fn bad_arguments_give_a_one_line_reason() {
        for args in [
            vec!["--store", "ftp://x"],
            vec!["--addr", "nope"],
            vec!["--bogus"],
            vec!["--addr"],
            vec!["--insecure-cookies=maybe"],
            vec!["--idle-timeout", "soon"],
        ] {
            let err = parse(&args).unwrap_err();
            assert!(!err.contains('\n'), "{err}");
            assert!(!err.is_empty());
        }
    }
}
