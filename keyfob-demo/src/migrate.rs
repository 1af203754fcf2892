//! `keyfob-demo migrate --from URL --to URL`: copies the live sessions of a
//! tower-sessions store into a keyfob store (see `keyfob::migrate`).
//!
//! Sources: `sqlite://PATH`, `postgres://…`, `mysql://…` (the tables of
//! tower-sessions-sqlx-store; `--table`/`--schema` if the app renamed them),
//! `redis://…` (the keys of tower-sessions-redis-store; `--prefix` if the app
//! used `RedisStore::with_prefix`).
//! Destinations: the demo's `sqlite://`, `postgres://` and `mysql://` stores.
//! Progress goes to stderr after every batch (one line, rewritten on a
//! terminal); the final report to stdout. With `--checkpoint PATH` a crashed
//! or interrupted run resumes where it stopped. The source is only read.

use std::{io::IsTerminal as _, path::PathBuf, str::FromStr as _, sync::Arc};

use keyfob::{
    migrate::{Migration, Progress, Source},
    SessionStore,
};

use crate::config::{redact, StoreUrl};

/// The subcommand's arguments.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct Args {
    /// The tower-sessions store: sqlite://PATH, postgres://…, mysql://…, redis://…
    #[arg(long, value_name = "URL")]
    pub from: String,
    /// The keyfob store: sqlite://PATH, postgres://…, mysql://…
    #[arg(long, value_name = "URL", value_parser = StoreUrl::parse)]
    pub to: StoreUrl,
    /// Resume file: holds the last copied key (mode 0600; delete when done).
    #[arg(long, value_name = "PATH")]
    pub checkpoint: Option<PathBuf>,
    /// The tower-sessions table (default tower_sessions on SQLite, session elsewhere).
    #[arg(long, value_name = "NAME")]
    pub table: Option<String>,
    /// The tower-sessions schema on PostgreSQL/MySQL (default tower_sessions).
    #[arg(long, value_name = "NAME")]
    pub schema: Option<String>,
    /// The key prefix of a tower-sessions Redis store.
    #[arg(long, value_name = "P", default_value = "")]
    pub prefix: String,
    /// Rows per batch.
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = positive)]
    pub batch: usize,
}

fn positive(s: &str) -> Result<usize, String> {
    s.parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{s:?} is not a positive number"))
}

impl Args {
    /// Refuses a destination that cannot keep what is copied into it.
    ///
    /// # Errors
    /// A one-line reason.
    pub fn check(&self) -> Result<(), String> {
        let to = &self.to;
        match to {
            StoreUrl::Memory => Err(format!(
                "--to {to}: sessions copied into this store would vanish when the command ends; \
                 use sqlite://, postgres:// or mysql://"
            )),
            StoreUrl::Cookie(_) => Err(format!(
                "--to {to}: cookie sessions keep their data in the browser, so there is no \
                 server-side store to copy into; use sqlite://, postgres:// or mysql://"
            )),
            _ => Ok(()),
        }
    }
}

async fn open_source(args: &Args) -> Result<Source, String> {
    let url = &args.from;
    let fail = |e: &dyn std::fmt::Display| format!("source {} unavailable: {e}", redact(url));
    let source = if url.starts_with("sqlite:") {
        // Read-only: the migration never writes to the old store.
        let options = sqlx::sqlite::SqliteConnectOptions::from_str(url)
            .map_err(|e| fail(&e))?
            .read_only(true);
        let pool = sqlx::SqlitePool::connect_with(options)
            .await
            .map_err(|e| fail(&e))?;
        Source::sqlite(pool)
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Source::postgres(sqlx::PgPool::connect(url).await.map_err(|e| fail(&e))?)
    } else if url.starts_with("mysql://") {
        Source::mysql(sqlx::MySqlPool::connect(url).await.map_err(|e| fail(&e))?)
    } else if url.starts_with("redis://") || url.starts_with("rediss://") {
        let client = redis::Client::open(url.as_str()).map_err(|e| fail(&e))?;
        let conn = redis::aio::ConnectionManager::new(client)
            .await
            .map_err(|e| fail(&e))?;
        return Ok(Source::redis(conn, &args.prefix));
    } else {
        return Err(format!(
            "unsupported source {:?}: expected sqlite://PATH, postgres://…, mysql://… or redis://…",
            redact(url)
        ));
    };
    match (&args.table, &args.schema) {
        (None, None) => Ok(source),
        (table, schema) => {
            let default = if url.starts_with("sqlite:") {
                "tower_sessions"
            } else {
                "session"
            };
            source
                .with_table(schema.as_deref(), table.as_deref().unwrap_or(default))
                .map_err(|e| e.to_string())
        }
    }
}

/// Runs the subcommand; returns the final report line.
///
/// # Errors
/// A one-line reason when a store cannot be reached or fails midway (run
/// again with the same `--checkpoint` to resume).
pub async fn run(args: Args) -> Result<Progress, String> {
    let source = open_source(&args).await?;
    let dest: Arc<dyn SessionStore> = crate::open_store(&args.to).await?;
    let mut migration = Migration::new(source, dest).with_batch_size(args.batch);
    if let Some(path) = &args.checkpoint {
        migration = migration.with_checkpoint(path);
    }
    let terminal = std::io::stderr().is_terminal();
    let report = migration
        .run(|p| {
            if terminal {
                eprint!("\r\x1b[2K{p}");
            } else {
                eprintln!("{p}");
            }
        })
        .await
        .map_err(|e| e.to_string().replace('\n', " "))?;
    if terminal {
        eprintln!();
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{one_line, Cli, Command};

    fn parse(args: &[&str]) -> Result<Args, String> {
        let argv = ["keyfob-demo", "migrate"]
            .into_iter()
            .chain(args.iter().copied());
        match Cli::from_args(argv).map_err(|e| one_line(&e))?.command {
            Some(Command::Migrate(a)) => a.check().map(|()| a),
            None => Err("no subcommand".into()),
        }
    }

    #[test]
    fn arguments_parse_and_bad_ones_give_one_line() {
        let a = parse(&[
            "--from",
            "sqlite://old.db",
            "--to=sqlite://new.db",
            "--batch",
            "5",
        ])
        .unwrap();
        assert_eq!(a.batch, 5);
        assert_eq!(a.prefix, "");
        assert_eq!(a.to, StoreUrl::Sqlite("sqlite://new.db".into()));
        for bad in [
            &["--to", "sqlite://x"][..],
            &["--from", "sqlite://x"],
            &["--from", "sqlite://x", "--to", "memory"],
            &["--from", "sqlite://x", "--to", "cookie"],
            &["--from", "sqlite://x", "--to", "sqlite://y", "--batch", "0"],
            &["--bogus"],
        ] {
            let err = parse(bad).unwrap_err();
            assert!(!err.contains('\n'), "{err}");
        }
    }
}
