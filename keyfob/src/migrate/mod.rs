//! Moving live sessions from tower-sessions into a keyfob store, without
//! logging anyone out.
//!
//! A [`Migration`] reads the sessions a tower-sessions 0.14 store wrote (the
//! tables of `tower-sessions-sqlx-store`, the keys of
//! `tower-sessions-redis-store` with feature `migrate-redis`, or rows your
//! own code read from anywhere else) and creates each live one in a keyfob
//! [`SessionStore`]. A layer built with
//! [`with_legacy_ids(true)`](crate::SessionLayerBuilder::with_legacy_ids)
//! then accepts each old cookie once and answers with a new keyfob ID.
//!
//! Rules:
//! - a source row is a tower-sessions cookie value (the `id` column: an
//!   `Id(i128)` as 22 characters of base64url) and the MessagePack
//!   (`rmp-serde`) of `tower_sessions::session::Record { id, data, expiry_date }`;
//! - only live sessions are copied: a row whose `expiry_date` has passed is
//!   counted as expired and skipped;
//! - the destination never sees an old cookie value: the record is keyed by
//!   the SHA-256 of the cookie value's bytes and carries an import mark,
//!   which the layer removes when it rotates the session to a new ID;
//! - the data is copied value for value (tower-sessions keeps JSON values,
//!   as keyfob does); the imported record's idle deadline is the source's
//!   `expiry_date`, and its absolute deadline is
//!   [`with_absolute_deadline`](Migration::with_absolute_deadline) (none by default);
//! - the source is only read, never written or deleted;
//! - a row that does not decode is counted and reported, not fatal;
//! - with [`with_checkpoint`](Migration::with_checkpoint), the last source key
//!   of every finished batch is written to a file, and a new run resumes
//!   after it (for Redis, the `SCAN` cursor). Table rows are read in key order, so a crashed run loses nothing; a
//!   record copied twice (the batch in flight at the crash) is counted as
//!   already present, not duplicated.
//!
//! Caveats:
//! - sessions created in tower-sessions after a row was read are not
//!   copied: stop writing to the old store (switch the app over) before the
//!   final run, or run it again after the switch, with the same checkpoint
//!   file, to pick up rows whose keys sort after it (a new session's key is
//!   random, so re-run without the checkpoint to be sure; copies are
//!   idempotent);
//! - a session changed in tower-sessions after it was copied keeps the
//!   copied data;
//! - an imported session has no owner (tower-sessions has none), so it does
//!   not appear in [`crate::auth`] listings until the app logs the user in again.
//!
//! ```
//! use std::collections::HashMap;
//! use keyfob::{migrate::{Migration, Source}, MemoryStore, SessionStore};
//! use time::{Duration, OffsetDateTime};
//!
//! // What tower-sessions writes: (Id(i128), data, expiry_date), MessagePack.
//! fn row(id: i128, expires: OffsetDateTime) -> (String, Vec<u8>) {
//!     use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
//!     let data: HashMap<String, serde_json::Value> =
//!         HashMap::from([("user".to_string(), serde_json::json!("alice"))]);
//!     let bytes = rmp_serde::to_vec(&(id, data, expires)).unwrap();
//!     (URL_SAFE_NO_PAD.encode(id.to_le_bytes()), bytes)
//! }
//!
//! # let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
//! # rt.block_on(async {
//! let now = OffsetDateTime::now_utc();
//! let rows = vec![
//!     row(1, now + Duration::days(1)),        // live: copied
//!     row(2, now - Duration::days(1)),        // expired: skipped
//!     ("AAAAAAAAAAAAAAAAAAAAAA".into(), b"not msgpack".to_vec()), // counted, not fatal
//! ];
//! let store = std::sync::Arc::new(MemoryStore::new());
//! let report = Migration::new(Source::rows(rows), store.clone())
//!     .run(|_progress| {})
//!     .await
//!     .unwrap();
//! assert_eq!((report.copied, report.expired, report.undecodable), (1, 1, 1));
//! assert_eq!(store.len(), 1);
//! # });
//! ```

use std::{
    collections::HashMap,
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration as StdDuration, Instant},
};

use serde::{de::IgnoredAny, Deserialize};
use time::OffsetDateTime;

mod convert;
mod source;

use self::convert::{convert, Row};
pub use self::source::Source;

use crate::{
    error::{Error, Result},
    expiry::{Clock, SystemClock},
    id::{legacy_handle, Handle},
    record::Record,
    store::{Created, SessionStore},
};

/// Where a migration stands; passed to the progress callback after every batch.
///
/// ```
/// let p = keyfob::migrate::Progress::default();
/// assert_eq!(p.rate(), 0.0);
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct Progress {
    /// Rows the source held when the run started (live, expired or not decodable).
    pub total: u64,
    /// Rows read so far in this run, including those a checkpoint skipped past.
    pub read: u64,
    /// Rows skipped because a checkpoint said an earlier run finished them.
    pub resumed: u64,
    /// Live sessions created in the destination.
    pub copied: u64,
    /// Live sessions the destination had already (copied by an interrupted run).
    pub already_present: u64,
    /// Sessions past their `expiry_date`: not copied.
    pub expired: u64,
    /// Rows that are not a tower-sessions cookie value and record: not copied.
    pub undecodable: u64,
    /// Time spent in this run.
    pub elapsed: StdDuration,
}

impl Progress {
    /// Rows handled per second in this run (0 before the first batch).
    pub fn rate(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            (self.read - self.resumed) as f64 / secs
        } else {
            0.0
        }
    }
}

impl fmt::Display for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{} rows, {} copied, {} already there, {} expired, {} undecodable, {:.0} rows/s",
            self.read,
            self.total,
            self.copied,
            self.already_present,
            self.expired,
            self.undecodable,
            self.rate()
        )
    }
}

/// Copies the live sessions of a tower-sessions store into a keyfob store.
///
/// ```
/// use keyfob::{migrate::{Migration, Source}, MemoryStore};
///
/// let migration = Migration::new(Source::rows(Vec::new()), MemoryStore::new())
///     .with_batch_size(1000)
///     .with_checkpoint("migrate.checkpoint");
/// # let _ = migration;
/// ```
#[must_use]
pub struct Migration {
    source: Source,
    dest: Arc<dyn SessionStore>,
    checkpoint: Option<PathBuf>,
    batch: usize,
    concurrency: usize,
    absolute: Option<OffsetDateTime>,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for Migration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Migration")
            .field("source", &self.source)
            .field("checkpoint", &self.checkpoint)
            .field("batch", &self.batch)
            .finish_non_exhaustive()
    }
}

impl Migration {
    /// A migration from `source` into `dest`: batches of 1000, 64 writes in
    /// flight, no checkpoint, no absolute deadline, the system clock.
    pub fn new(source: Source, dest: impl SessionStore) -> Self {
        Migration {
            source,
            dest: Arc::new(dest),
            checkpoint: None,
            batch: 1000,
            concurrency: 64,
            absolute: None,
            clock: Arc::new(SystemClock),
        }
    }

    /// Keep the last source key of every finished batch in this file, and
    /// resume after it when the file exists. Default none.
    ///
    /// The file holds a tower-sessions cookie value: it is written with mode
    /// 0600 (on Unix); delete it when the migration is done.
    pub fn with_checkpoint(mut self, path: impl Into<PathBuf>) -> Self {
        self.checkpoint = Some(path.into());
        self
    }

    /// Rows read per batch (at least 1). Default 1000.
    pub fn with_batch_size(mut self, rows: usize) -> Self {
        self.batch = rows.max(1);
        self
    }

    /// Writes to the destination in flight at once (at least 1). Default 64.
    pub fn with_concurrency(mut self, writes: usize) -> Self {
        self.concurrency = writes.max(1);
        self
    }

    /// The absolute deadline of every imported session (keyfob's "never
    /// extended" cap); `None` leaves them capped by activity only. Default `None`.
    pub fn with_absolute_deadline(mut self, at: Option<OffsetDateTime>) -> Self {
        self.absolute = at;
        self
    }

    /// The clock that decides what is expired. Default the system clock.
    pub fn with_clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Runs the migration, calling `progress` after every batch.
    ///
    /// ```
    /// use keyfob::{migrate::{Migration, Source}, MemoryStore};
    /// # let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    /// # rt.block_on(async {
    /// let report = Migration::new(Source::rows(Vec::new()), MemoryStore::new())
    ///     .run(|p| eprintln!("{p}"))
    ///     .await?;
    /// assert_eq!(report.copied, 0);
    /// # Ok::<(), keyfob::Error>(())
    /// # }).unwrap();
    /// ```
    ///
    /// # Errors
    /// [`ErrorKind::Store`](crate::ErrorKind::Store) when the source or the destination fails (run
    /// again: with a checkpoint it resumes), [`ErrorKind::Config`](crate::ErrorKind::Config) when the
    /// checkpoint file cannot be read or written.
    pub async fn run(self, mut progress: impl FnMut(&Progress)) -> Result<Progress> {
        let started = Instant::now();
        let mut p = Progress {
            total: self.source.count().await?,
            ..Progress::default()
        };
        let mut after = match &self.checkpoint {
            Some(path) => read_checkpoint(path)?,
            None => String::new(),
        };
        if !after.is_empty() {
            // Count what the checkpoint skips, so `read` reaches `total`.
            p.resumed = self.source.count_upto(&after).await?;
            p.read = p.resumed;
        }
        loop {
            let page = self.source.page(&after, self.batch).await?;
            let had_rows = !page.rows.is_empty();
            self.copy_batch(page.rows, &mut p).await?;
            let Some(next) = page.next else {
                break;
            };
            after = next;
            if let Some(path) = &self.checkpoint {
                write_checkpoint(path, &after)?;
            }
            p.elapsed = started.elapsed();
            if had_rows {
                progress(&p);
            }
        }
        p.elapsed = started.elapsed();
        progress(&p);
        p.elapsed = started.elapsed();
        Ok(p)
    }

    async fn copy_batch(&self, rows: Vec<(String, Vec<u8>)>, p: &mut Progress) -> Result<()> {
        let now = self.clock.now();
        let mut tasks = tokio::task::JoinSet::new();
        for (key, bytes) in rows {
            p.read += 1;
            match convert(&key, &bytes, now, self.absolute) {
                Row::Expired => p.expired += 1,
                Row::Undecodable => p.undecodable += 1,
                Row::Live(handle, record) => {
                    while tasks.len() >= self.concurrency {
                        joined(tasks.join_next().await, p)?;
                    }
                    let dest = self.dest.clone();
                    tasks.spawn(async move { dest.create(&handle, &record).await });
                }
            }
        }
        while let Some(done) = tasks.join_next().await {
            joined(Some(done), p)?;
        }
        Ok(())
    }
}

type Joined = std::result::Result<Result<Created>, tokio::task::JoinError>;

fn joined(done: Option<Joined>, p: &mut Progress) -> Result<()> {
    match done {
        None => Ok(()),
        Some(Ok(Ok(Created::Stored))) => {
            p.copied += 1;
            Ok(())
        }
        Some(Ok(Ok(Created::Collision))) => {
            p.already_present += 1;
            Ok(())
        }
        Some(Ok(Err(err))) => Err(err),
        Some(Err(join)) => Err(Error::store(join)),
    }
}

fn io_error(what: &str, path: &Path, err: std::io::Error) -> Error {
    // As for key files: a local file the operator must fix is a configuration error.
    Error::config_from(format!("{what} checkpoint {}", path.display()), err)
}

fn read_checkpoint(path: &Path) -> Result<String> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(s.trim().to_owned()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(err) => Err(io_error("cannot read", path, err)),
    }
}

/// Replaces the checkpoint atomically (write a sibling, then rename), so a
/// crash leaves either the old or the new key, never half of one.
fn write_checkpoint(path: &Path, key: &str) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let write = || -> std::io::Result<()> {
        use std::io::Write as _;
        let mut f = options.open(&tmp)?;
        f.write_all(key.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| io_error("cannot write", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};

    fn row(id: i128, expires: OffsetDateTime) -> (String, Vec<u8>) {
        let data: HashMap<String, serde_json::Value> =
            HashMap::from([("n".to_string(), serde_json::json!(7))]);
        let bytes = rmp_serde::to_vec(&(id, data, expires)).unwrap();
        (URL_SAFE_NO_PAD.encode(id.to_le_bytes()), bytes)
    }

    #[test]
    fn keys_in_keyfobs_reserved_namespace_are_not_imported() {
        let now = OffsetDateTime::now_utc();
        let data: HashMap<String, serde_json::Value> = HashMap::from([
            ("keyfob.user".to_string(), serde_json::json!("mallory")),
            ("keyfob.csrf".to_string(), serde_json::json!("x")),
            ("cart".to_string(), serde_json::json!(3)),
        ]);
        let expires = now + time::Duration::hours(1);
        let bytes = rmp_serde::to_vec(&(5_i128, data, expires)).unwrap();
        let key = URL_SAFE_NO_PAD.encode(5_i128.to_le_bytes());
        let Row::Live(_, record) = convert(&key, &bytes, now, None) else {
            panic!("not live");
        };
        let mut keys: Vec<&str> = record.data.keys().collect();
        keys.sort_unstable();
        assert_eq!(keys, ["cart", "keyfob.legacy"]);
    }

    #[test]
    fn a_live_row_becomes_a_marked_record_under_the_hash_of_its_cookie() {
        let now = OffsetDateTime::now_utc();
        let (key, bytes) = row(99, now + time::Duration::hours(1));
        let Row::Live(handle, record) = convert(&key, &bytes, now, None) else {
            panic!("not live");
        };
        assert_eq!(Some(handle), legacy_handle(key.as_bytes()));
        assert_eq!(record.data.get("n").unwrap(), "7");
        assert!(record.data.get(crate::record::reserved::LEGACY).is_some());
        assert_eq!(
            record.expires_at().unwrap().unix_timestamp(),
            (now + time::Duration::hours(1)).unix_timestamp()
        );
    }

    #[test]
    fn bad_keys_and_bad_bytes_are_undecodable_and_old_rows_expired() {
        let now = OffsetDateTime::now_utc();
        let (key, bytes) = row(5, now - time::Duration::seconds(1));
        assert!(matches!(convert(&key, &bytes, now, None), Row::Expired));
        assert!(matches!(
            convert("short", &bytes, now, None),
            Row::Undecodable
        ));
        assert!(matches!(
            convert(&key, b"\xc1", now, None),
            Row::Undecodable
        ));
    }

    #[tokio::test]
    async fn a_checkpoint_resumes_after_the_last_finished_batch() {
        let dir = std::env::temp_dir().join(format!("keyfob-ckpt-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let now = OffsetDateTime::now_utc();
        let rows: Vec<_> = (0..10)
            .map(|i| row(i, now + time::Duration::hours(1)))
            .collect();
        let store = Arc::new(crate::MemoryStore::new());
        // A first run that "crashes" after 3 rows: simulate with a checkpoint file.
        let mut sorted = rows.clone();
        sorted.sort();
        write_checkpoint(&dir, &sorted[2].0).unwrap();
        let p = Migration::new(Source::rows(rows), store.clone())
            .with_checkpoint(&dir)
            .with_batch_size(4)
            .run(|_| {})
            .await
            .unwrap();
        assert_eq!((p.resumed, p.copied, p.read, p.total), (3, 7, 10, 10));
        assert_eq!(read_checkpoint(&dir).unwrap(), sorted[9].0);
        let _ = std::fs::remove_file(&dir);
    }
}
