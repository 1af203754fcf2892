//! The SQLite store's writer: every write of this process, on one thread and
//! one connection of its own, in rusqlite.
//!
//! Reads stay on the app's sqlx pool; writes come here, because of what a
//! profile showed. sqlx runs each SQLite connection on a worker thread, and
//! every statement is a hop to that thread and back: a channel send, a futex
//! wake, a task wake. A batch of k writes made k + 2 hops (`BEGIN`, the k
//! statements, `COMMIT`). Under a `/count` flood (`perf`, server on one core),
//! sqlx's worker threads took 26–43 % of the CPU and the scheduler's
//! wake-ups 14 % more. Here a batch costs one hop: the thread wakes, then runs
//! `BEGIN IMMEDIATE`, the k statements (prepared once, then cached) and
//! `COMMIT` inline, and answers the k callers. The figures before and after
//! are in `BENCHMARKS.md`.
//!
//! rusqlite and sqlx link the same `libsqlite3-sys`, so both drive one SQLite
//! library, linked once, and see one file as one database.
//!
//! The connection opens the pool's database as SQLite names it
//! (`pragma_database_list`): a file by its absolute path, an in-memory
//! database by the pool's name for it, in the shared cache. It must then see
//! the store's table, or the writer refuses to start: a private in-memory
//! database (each connection its own) cannot be reached from a second one.
//!
//! Its settings: `synchronous=FULL` whatever the pool sets, since an
//! acknowledged write must be on disk; the pool's busy timeout, or 5 s if it
//! has none; a wait on a shared-cache lock (rusqlite's `unlock_notify`). A
//! pool in `locking_mode=EXCLUSIVE` would shut the writer out, and is
//! refused. What the writer cannot learn from the pool is not applied: a
//! custom VFS, `immutable`, an `after_connect` hook, a SQLCipher key.
//!
//! Recovery: a connection left inside a transaction (a failed rollback) is
//! rolled back or reopened before the next batch; a batch that panics fails
//! its callers, empties the near cache and reopens the connection; a thread
//! that has ended is started again by the store's next write.
//!
//! The batch rules are the store's (see `SqliteStore`): one transaction per
//! batch (group commit), and nobody answered before the transaction holding
//! their write has committed. A failing batch is retried one transaction per
//! write, so one bad write fails alone.

use std::{
    panic::{catch_unwind, AssertUnwindSafe},
    sync::Arc,
    time::Duration,
};

use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use sqlx::SqlitePool;
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

use super::{
    sql::{decode_record, encode_record, handle_from, sweep_at},
    sqlite::{Near, Queries},
    Created,
};
use crate::{
    error::{Error, Result},
    expiry::secs,
    id::Handle,
    record::{Record, Update},
};

/// The most writes one transaction takes.
const BATCH: usize = 128;

/// A write the writer runs.
pub(super) enum Op {
    Create(Handle, Record),
    Update(Handle, Update, OffsetDateTime),
    Delete(Handle),
    DeleteExpired(OffsetDateTime, usize),
    DeleteByOwner(String, Option<Handle>),
}

/// What a write did.
pub(super) enum Out {
    Created(Created),
    /// Applied, with the record now stored under this handle.
    Written(Handle, Arc<Record>),
    Gone,
    Count(u64),
    /// The handles an expiry sweep deleted.
    Purged(Vec<Handle>),
}

struct Job {
    op: Op,
    reply: oneshot::Sender<Result<Out>>,
}

/// Where the writer's connection opens: the pool's database.
struct Target {
    name: String,
    flags: OpenFlags,
    busy: Duration,
    table: String,
}

impl Target {
    /// The pool's main database, as SQLite itself names it: a file by its
    /// absolute path; an in-memory database (no file) by the name the pool
    /// opened, in the shared cache (`sqlite::memory:` is one).
    async fn of(pool: &SqlitePool, table: &str) -> Result<Target> {
        let mut conn = pool.acquire().await.map_err(Error::store)?;
        let file: String =
            sqlx::query_scalar("SELECT file FROM pragma_database_list WHERE name = 'main'")
                .fetch_one(&mut *conn)
                .await
                .map_err(Error::store)?;
        let busy: i64 = sqlx::query_scalar("PRAGMA busy_timeout")
            .fetch_one(&mut *conn)
            .await
            .map_err(Error::store)?;
        let locking: String = sqlx::query_scalar("PRAGMA locking_mode")
            .fetch_one(&mut *conn)
            .await
            .map_err(Error::store)?;
        if locking.eq_ignore_ascii_case("exclusive") {
            return Err(Error::config(
                "the SQLite pool's connections use locking_mode=EXCLUSIVE, which shuts out the \
                 session store's writer (a connection of its own): keep the default, NORMAL",
            ));
        }
        let busy = match u64::try_from(busy) {
            Ok(ms) if ms > 0 => Duration::from_millis(ms),
            _ => Duration::from_secs(5),
        };
        let table = table.to_owned();
        let always = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        if !file.is_empty() {
            return Ok(Target {
                name: file,
                flags: always,
                busy,
                table,
            });
        }
        let options = pool.connect_options();
        let name = options
            .get_filename()
            .to_str()
            .ok_or_else(|| Error::config("the SQLite database's name is not UTF-8"))?;
        Ok(Target {
            name: name.to_owned(),
            flags: always
                | OpenFlags::SQLITE_OPEN_URI
                | OpenFlags::SQLITE_OPEN_MEMORY
                | OpenFlags::SQLITE_OPEN_SHARED_CACHE,
            busy,
            table,
        })
    }

    /// A connection on the database, once it shows the store's table:
    /// proof that it is the pool's database and not a new empty one (a
    /// private in-memory database cannot be reached from a second
    /// connection).
    fn open(&self) -> Result<Connection> {
        let table = &self.table;
        let conn = Connection::open_with_flags(&self.name, self.flags).map_err(Error::store)?;
        conn.busy_timeout(self.busy)
            .and_then(|()| conn.pragma_update(None, "synchronous", "FULL"))
            .map_err(Error::store)?;
        conn.set_prepared_statement_cache_capacity(32);
        let seen: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
                [table],
                |row| row.get(0),
            )
            .map_err(Error::store)?;
        if seen == 0 {
            return Err(Error::config(format!(
                "the session store's writer, on a connection of its own, does not see table \
                 {table} in the pool's database: run `migrate` first, and use a database a second \
                 connection can open (a file, or `sqlite::memory:`; not a private in-memory one)"
            )));
        }
        Ok(conn)
    }
}

/// The writer thread's queue. The thread ends, closing its connection, when
/// the last `Writer` drops.
pub(super) struct Writer(mpsc::Sender<Job>);

/// A sender for one job's answer.
type Reply = oneshot::Sender<Result<Out>>;

impl Writer {
    /// Starts the writer thread on the pool's database, once its connection
    /// is open and sees `table`.
    pub(super) async fn start(
        pool: &SqlitePool,
        table: &str,
        q: Arc<Queries>,
        near: Option<Arc<Near>>,
    ) -> Result<Self> {
        let target = Target::of(pool, table).await?;
        let (tx, rx) = mpsc::channel(1024);
        let (ready, opened) = oneshot::channel();
        std::thread::Builder::new()
            .name("keyfob-sqlite-writer".into())
            .spawn(move || match target.open() {
                Ok(conn) => {
                    let _ = ready.send(Ok(()));
                    write_loop(&target, Some(conn), &q, rx, near.as_deref());
                }
                Err(e) => {
                    let _ = ready.send(Err(e));
                }
            })
            .map_err(|e| Error::store_from("cannot start the SQLite writer thread", e))?;
        opened
            .await
            .map_err(|_| Error::store_msg("the SQLite writer thread ended while opening"))??;
        Ok(Writer(tx))
    }

    /// Whether its thread still takes writes.
    pub(super) fn is_running(&self) -> bool {
        !self.0.is_closed()
    }

    /// Runs `op` in the next batch; answers once it has committed.
    pub(super) async fn submit(&self, op: Op) -> Result<Out> {
        let (reply, answer) = oneshot::channel();
        self.0
            .send(Job { op, reply })
            .await
            .map_err(|_| Error::store_msg("the SQLite writer thread has stopped"))?;
        answer
            .await
            .map_err(|_| Error::store_msg("the SQLite writer thread dropped a write"))?
    }
}

fn write_loop(
    target: &Target,
    mut conn: Option<Connection>,
    q: &Queries,
    mut rx: mpsc::Receiver<Job>,
    near: Option<&Near>,
) {
    let mut batch: Vec<Job> = Vec::with_capacity(BATCH);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let c = match usable(&mut conn, target) {
            Ok(c) => c,
            Err(e) => {
                fail(batch.drain(..).map(|j| j.reply), &e);
                continue;
            }
        };
        let ops: Vec<&Op> = batch.iter().map(|j| &j.op).collect();
        match catch_unwind(AssertUnwindSafe(|| run_batch(c, q, &ops, near))) {
            Ok(Ok(outs)) => {
                for (job, out) in batch.drain(..).zip(outs) {
                    let _ = job.reply.send(Ok(out));
                }
            }
            Ok(Err(err)) if batch.len() == 1 => {
                if let Some(job) = batch.pop() {
                    let _ = job.reply.send(Err(err));
                }
            }
            Ok(Err(_)) => {
                // Isolate the failure: one transaction per job.
                for job in batch.drain(..) {
                    let result = catch_unwind(AssertUnwindSafe(|| {
                        run_batch(c, q, &[&job.op], near).and_then(|mut outs| {
                            outs.pop().ok_or_else(|| Error::store_msg("no result"))
                        })
                    }))
                    .unwrap_or_else(|_| Err(Error::store_msg(PANICKED)));
                    let _ = job.reply.send(result);
                }
            }
            Err(_) => {
                // Whatever the batch left is unknown: no copy is trusted
                // and the connection starts over.
                tracing::error!("keyfob: {PANICKED}");
                fail(
                    batch.drain(..).map(|j| j.reply),
                    &Error::store_msg(PANICKED),
                );
                if let Some(n) = near {
                    n.resync();
                }
                conn = None;
            }
        }
    }
}

const PANICKED: &str =
    "the SQLite writer panicked on this batch (a bug in keyfob); its writes may not have been made";

/// Answers every `reply` with an error saying what `e` says.
fn fail(replies: impl Iterator<Item = Reply>, e: &Error) {
    for reply in replies {
        let _ = reply.send(Err(Error::store_msg(e.to_string())));
    }
}

/// The connection, ready for a transaction: opened again if it is gone, or
/// if it is still inside one (a rollback that failed) and a rollback now
/// does not end it.
fn usable<'c>(conn: &'c mut Option<Connection>, target: &Target) -> Result<&'c mut Connection> {
    let stuck = conn.as_ref().is_some_and(|c| {
        !c.is_autocommit() && (c.execute_batch("ROLLBACK").is_err() || !c.is_autocommit())
    });
    if stuck {
        *conn = None;
    }
    match conn {
        Some(c) => Ok(c),
        None => Ok(conn.insert(target.open()?)),
    }
}

fn run_batch(
    conn: &mut Connection,
    q: &Queries,
    ops: &[&Op],
    near: Option<&Near>,
) -> Result<Vec<Out>> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(Error::store)?;
    // Holding the write lock: nobody else can commit until we are done.
    let writing = near.map(|n| (n, n.watch.begin(|| n.resync())));
    let mut outs = Vec::with_capacity(ops.len());
    let mut failed = None;
    // Whether the transaction changes any row: only then does its commit
    // move the WAL index's counter.
    let mut changed = false;
    for op in ops {
        match run_op(&tx, q, op, &mut changed) {
            Ok(out) => outs.push(out),
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    let statement_failed = failed.is_some();
    let result = match failed {
        Some(e) => {
            // Rolled back before the watch hears the transaction ended.
            drop(tx);
            Err(e)
        }
        None => tx.commit().map_err(Error::store),
    };
    if let Some((n, writing)) = writing {
        match &result {
            // Committed: this process's copies follow, here, before anyone
            // is answered (a caller that gave up waiting changes nothing).
            Ok(()) => {
                for (op, out) in ops.iter().zip(&outs) {
                    committed(n, op, out);
                }
            }
            // Perhaps committed, perhaps not: no copy can be trusted.
            Err(_) if !statement_failed => n.resync(),
            Err(_) => {}
        }
        writing.end(result.is_ok() && changed);
    }
    result.map(|()| outs)
}

/// What a committed operation leaves in this process's cache.
fn committed(near: &Near, op: &Op, out: &Out) {
    match (op, out) {
        (Op::Create(handle, record), Out::Created(Created::Stored)) => {
            near.cache.written(handle, Arc::new(record.clone()), None);
        }
        (Op::Update(handle, ..), Out::Written(to, record)) => {
            if to != handle {
                near.cache.forget(handle);
            }
            near.cache.written(to, record.clone(), None);
        }
        (Op::Update(handle, ..), Out::Gone) | (Op::Delete(handle), _) => {
            near.cache.forget(handle);
        }
        // Which handles went is the table's business; revocations are
        // rare, so every copy goes.
        (Op::DeleteByOwner(..), _) => near.cache.clear(),
        // Expired at the sweep's clock, which need not be a reader's.
        (Op::DeleteExpired(..), Out::Purged(gone)) => {
            for handle in gone {
                near.cache.forget(handle);
            }
        }
        // A collision changed nothing.
        (Op::DeleteExpired(..), _) | (Op::Create(..), _) | (Op::Update(..), _) => {}
    }
}

/// Runs one statement, its rows changed.
fn execute(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> Result<usize> {
    conn.prepare_cached(sql)
        .and_then(|mut stmt| stmt.execute(params))
        .map_err(Error::store)
}

/// An update in place applied to the record the request loaded, written
/// only if the row still holds that version: one statement, no read. `None`
/// when it cannot be (no copy, a rotation, a row changed since): the caller
/// reads the row and applies the change to it.
fn cas(
    conn: &Connection,
    q: &Queries,
    handle: &Handle,
    update: &Update,
    now: OffsetDateTime,
) -> Result<Option<Record>> {
    let Some(base) = update.base().filter(|b| !b.is_expired(now)) else {
        return Ok(None);
    };
    if update.rename_to().is_some() {
        return Ok(None);
    }
    let Ok(version) = i64::try_from(base.version) else {
        return Ok(None);
    };
    let owner_stays = update.owner_change().is_none_or(|o| o == base.owner());
    let sweep_was = sweep_at(base.expires_secs());
    let mut record = Record::clone(base);
    record.apply(update);
    let text = encode_record(&record)?;
    let sweep = sweep_at(record.expires_secs());
    let key = &handle.as_bytes()[..];
    let done = if owner_stays && sweep == sweep_was {
        execute(conn, &q.cas_record, (key, text, version))?
    } else {
        execute(conn, &q.cas, (key, record.owner(), sweep, text, version))?
    };
    Ok((done == 1).then_some(record))
}

fn run_op(conn: &Connection, q: &Queries, op: &Op, changed: &mut bool) -> Result<Out> {
    match op {
        Op::Create(handle, record) => {
            let key = &handle.as_bytes()[..];
            let purged = execute(conn, &q.purge_one, (key, secs(record.last_seen())))?;
            let text = encode_record(record)?;
            let done = execute(
                conn,
                &q.create,
                (key, record.owner(), sweep_at(record.expires_secs()), text),
            )?;
            *changed |= purged > 0 || done > 0;
            Ok(Out::Created(if done == 1 {
                Created::Stored
            } else {
                Created::Collision
            }))
        }
        Op::Update(handle, update, now) => {
            if let Some(written) = cas(conn, q, handle, update, *now)? {
                *changed = true;
                return Ok(Out::Written(*handle, Arc::new(written)));
            }
            let key = &handle.as_bytes()[..];
            let row: Option<String> = conn
                .prepare_cached(&q.load)
                .and_then(|mut stmt| {
                    stmt.query_row((key, secs(*now)), |row| row.get(0))
                        .optional()
                })
                .map_err(Error::store)?;
            let Some(mut record) = row
                .and_then(|text| decode_record(handle, &text))
                .filter(|r| !r.is_expired(*now))
            else {
                return Ok(Out::Gone);
            };
            let owner_stays = update.owner_change().is_none_or(|o| o == record.owner());
            let sweep_was = sweep_at(record.expires_secs());
            record.apply(update);
            let text = encode_record(&record)?;
            let sweep = sweep_at(record.expires_secs());
            match update.rename_to() {
                None if owner_stays && sweep_was == sweep => {
                    execute(conn, &q.update_record, (key, text))?;
                }
                None => {
                    execute(conn, &q.update, (key, record.owner(), sweep, text))?;
                }
                Some(to) => {
                    execute(conn, &q.delete, (key,))?;
                    execute(
                        conn,
                        &q.insert,
                        (&to.as_bytes()[..], record.owner(), sweep, text),
                    )?;
                }
            }
            *changed = true;
            let target = update.rename_to().copied().unwrap_or(*handle);
            Ok(Out::Written(target, Arc::new(record)))
        }
        Op::Delete(handle) => {
            let done = execute(conn, &q.delete, (&handle.as_bytes()[..],))?;
            *changed |= done > 0;
            Ok(Out::Count(done as u64))
        }
        Op::DeleteExpired(now, batch) => {
            let limit = i64::try_from(*batch).unwrap_or(i64::MAX);
            let gone: Vec<Vec<u8>> = conn
                .prepare_cached(&q.delete_expired)
                .and_then(|mut stmt| {
                    stmt.query_map((secs(*now), limit), |row| row.get(0))?
                        .collect()
                })
                .map_err(Error::store)?;
            *changed |= !gone.is_empty();
            Ok(Out::Purged(
                gone.iter().filter_map(|b| handle_from(b)).collect(),
            ))
        }
        Op::DeleteByOwner(owner, keep) => {
            let keep = keep.map(|h| h.as_bytes().to_vec());
            let done = execute(conn, &q.delete_owner, (owner, keep))?;
            *changed |= done > 0;
            Ok(Out::Count(done as u64))
        }
    }
}
