//! The SQLite store's writer: every write of this process, on one thread and
//! one connection of its own, in rusqlite.
//!
//! Reads stay on the app's sqlx pool; writes come here, because of what a
//! profile showed. sqlx runs each SQLite connection on a worker thread, and
//! every statement is a hop to that thread and back: a channel send, a futex
//! wake, a task wake. A batch of k writes made k + 2 hops (`BEGIN`, the k
//! statements, `COMMIT`). Under a `/count` flood (`perf`, server on one core),
//! sqlx's worker threads took 43 % of the CPU and the scheduler's wake-ups
//! 14 % more. Here a batch costs one hop: the thread wakes, then runs
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
//! Its settings are the store's own, whatever the pool sets: `synchronous=FULL`,
//! since an acknowledged write must be on disk; a 5 s busy timeout; and a wait
//! on a shared-cache lock (rusqlite's `unlock_notify`).
//!
//! The batch rules are the store's (see `SqliteStore`): one transaction per
//! batch (group commit), and nobody answered before the transaction holding
//! their write has committed. A failing batch is retried one transaction per
//! write, so one bad write fails alone.

use std::{sync::Arc, time::Duration};

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
}

impl Target {
    /// The pool's main database, as SQLite itself names it: a file by its
    /// absolute path; an in-memory database (no file) by the name the pool
    /// opened, in the shared cache (`sqlite::memory:` is one).
    async fn of(pool: &SqlitePool) -> Result<Target> {
        let file: String =
            sqlx::query_scalar("SELECT file FROM pragma_database_list WHERE name = 'main'")
                .fetch_one(pool)
                .await
                .map_err(Error::store)?;
        let always = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        if !file.is_empty() {
            return Ok(Target {
                name: file,
                flags: always,
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
        })
    }

    /// A connection on the database, once it shows the store's `table`:
    /// proof that it is the pool's database and not a new empty one (a
    /// private in-memory database cannot be reached from a second
    /// connection).
    fn open(&self, table: &str) -> Result<Connection> {
        let conn = Connection::open_with_flags(&self.name, self.flags).map_err(Error::store)?;
        conn.busy_timeout(Duration::from_secs(5))
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

impl Writer {
    /// Starts the writer thread on the pool's database, once its connection
    /// is open and sees `table`.
    pub(super) async fn start(
        pool: &SqlitePool,
        table: &str,
        q: Arc<Queries>,
        near: Option<Arc<Near>>,
    ) -> Result<Self> {
        let target = Target::of(pool).await?;
        let table = table.to_owned();
        let (tx, rx) = mpsc::channel(1024);
        let (ready, opened) = oneshot::channel();
        std::thread::Builder::new()
            .name("keyfob-sqlite-writer".into())
            .spawn(move || match target.open(&table) {
                Ok(mut conn) => {
                    let _ = ready.send(Ok(()));
                    write_loop(&mut conn, &q, rx, near.as_deref());
                }
                Err(e) => {
                    let _ = ready.send(Err(e));
                }
            })
            .map_err(|e| Error::store_msg(format!("cannot start the SQLite writer thread: {e}")))?;
        opened
            .await
            .map_err(|_| Error::store_msg("the SQLite writer thread ended while opening"))??;
        Ok(Writer(tx))
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
    conn: &mut Connection,
    q: &Queries,
    mut rx: mpsc::Receiver<Job>,
    near: Option<&Near>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let ops: Vec<&Op> = batch.iter().map(|j| &j.op).collect();
        match run_batch(conn, q, &ops, near) {
            Ok(outs) => {
                for (job, out) in batch.drain(..).zip(outs) {
                    let _ = job.reply.send(Ok(out));
                }
            }
            Err(err) if batch.len() == 1 => {
                if let Some(job) = batch.pop() {
                    let _ = job.reply.send(Err(err));
                }
            }
            Err(_) => {
                // Isolate the failure: one transaction per job.
                for job in batch.drain(..) {
                    let result = run_batch(conn, q, &[&job.op], near).and_then(|mut outs| {
                        outs.pop().ok_or_else(|| Error::store_msg("no result"))
                    });
                    let _ = job.reply.send(result);
                }
            }
        }
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
    let before = near.map(|n| n.watch.begin(|| n.resync()));
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
    if let (Some(n), Some(before)) = (near, before) {
        match &result {
            // Committed: this process's copies follow, here, before anyone
            // is answered (a caller that gave up waiting changes nothing).
            Ok(()) => {
                for (op, out) in ops.iter().zip(&outs) {
                    n.committed(op, out);
                }
            }
            // Perhaps committed, perhaps not: no copy can be trusted.
            Err(_) if !statement_failed => n.resync(),
            Err(_) => {}
        }
        n.watch.end(before, result.is_ok() && changed);
    }
    result.map(|()| outs)
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
