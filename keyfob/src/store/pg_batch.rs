//! The PostgreSQL store's writes of change-sets, grouped: the updates that
//! arrive while one is running go to the server together, as one
//! statement in one transaction.
//!
//! Why: the near cache's trigger notifies every change (`pg_notify`), and
//! PostgreSQL serializes the commits of transactions that notify (up to
//! 17 at least, `PreCommit_Notify` takes one lock for the whole queue
//! until the commit is flushed). One notifying `UPDATE` per commit
//! therefore gets none of the server's group commit: on this machine,
//! `pgbench` with 32 clients made 15–17k single-row updates a second
//! without the trigger and 5.4–6.3k with it, while 2 clients updating 16
//! rows per statement with it made about 6,100 statements (~97k rows) a
//! second. Grouping the writes gives the commits back their batching.
//!
//! Rules:
//! - an update is queued; if no group is running, a task (spawned, so a
//!   request that gives up does not cancel the others' writes) takes what
//!   is queued and runs it, then what was queued meanwhile, until the
//!   queue is empty. No write waits for a timer: a lone update runs at
//!   once, and one that arrives during a group runs right after it;
//! - a group holds each session once (a second update of the same session
//!   waits for the next group, so both apply, in order) and at most
//!   [`MAX_GROUP`] updates, sorted by handle (two processes' groups lock
//!   rows in the same order);
//! - one update alone runs as the store's own single-row statement; a
//!   group runs as one `UPDATE … FROM jsonb_array_elements($1)`, each row
//!   under the same liveness check, change-set rules and trigger as the
//!   single statement, and each caller gets back the row its session
//!   became (or none: gone or expired);
//! - a group the server refuses (a value `jsonb` cannot hold, a deadlock
//!   with another process's writes) changed nothing: each of its updates
//!   runs again alone, so only the faulty one fails;
//! - a rotation (a change of handle) does not come here: it runs alone.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
};

use sqlx::{postgres::PgRow, PgPool, Row};
use tokio::sync::oneshot;

use super::postgres::write_error;
use crate::{
    error::{Error, Result},
    id::Handle,
};

/// The most updates one group holds.
pub(super) const MAX_GROUP: usize = 128;

/// One update's change-set and metadata, as the statements bind them.
pub(super) struct Args {
    pub(super) now: i64,
    pub(super) clear: bool,
    pub(super) removed: Vec<String>,
    pub(super) sets: serde_json::Map<String, serde_json::Value>,
    pub(super) seen: i64,
    pub(super) idle: Option<i64>,
    pub(super) owner: Option<Option<String>>,
    pub(super) expiry: Option<Option<String>>,
}

struct Job {
    handle: Handle,
    args: Args,
    reply: oneshot::Sender<Result<Option<PgRow>>>,
}

#[derive(Default)]
struct Queue {
    jobs: Vec<Job>,
    running: bool,
}

/// The statements, and the queue of one store.
pub(super) struct Batcher {
    pool: PgPool,
    /// The single-row `UPDATE … RETURNING <columns>` (binds as in `one`).
    single: String,
    /// The grouped `UPDATE … FROM jsonb_array_elements($1) … RETURNING`.
    group: String,
    queue: Mutex<Queue>,
}

impl Batcher {
    /// `single` is the store's one-row update with `RETURNING <columns>`;
    /// the group's statement is made here, returning the same columns and
    /// then the handle, so both kinds of row read alike from column 0.
    pub(super) fn new(pool: PgPool, table: &str, single: String, columns: &str) -> Self {
        let group = format!(
            "WITH v AS (
                SELECT decode(j->>'h', 'hex') AS v_handle,
                       (j->>'now')::bigint AS v_now,
                       (j->>'clear')::boolean AS v_clear,
                       ARRAY(SELECT jsonb_array_elements_text(j->'rm')) AS v_removed,
                       j->'set' AS v_set,
                       (j->>'seen')::bigint AS v_seen,
                       (j->>'idle')::bigint AS v_idle,
                       (j->>'os')::boolean AS v_owner_set,
                       j->>'o' AS v_owner,
                       (j->>'es')::boolean AS v_expiry_set,
                       j->>'e' AS v_expiry
                FROM jsonb_array_elements($1::jsonb) AS j
            )
            UPDATE {table} AS t SET
                data = (CASE WHEN v_clear THEN '{{}}'::jsonb ELSE t.data END - v_removed) || v_set,
                last_seen = v_seen,
                idle_deadline = v_idle,
                expires_at = (LEAST(v_idle, t.absolute_deadline) + 59) / 60 * 60,
                owner = CASE WHEN v_owner_set THEN v_owner ELSE t.owner END,
                expiry = CASE WHEN v_expiry_set THEN v_expiry ELSE t.expiry END,
                version = t.version + 1
            FROM v
            WHERE t.handle = v_handle
              AND COALESCE(LEAST(t.idle_deadline, t.absolute_deadline), 9223372036854775807) > v_now
            RETURNING {columns}, t.handle"
        );
        Batcher {
            pool,
            single,
            group,
            queue: Mutex::new(Queue::default()),
        }
    }

    /// Applies `args` to `handle`'s row, in the next group: the row it
    /// became, or `None` if it is gone or expired.
    pub(super) async fn update(
        self: &Arc<Self>,
        handle: &Handle,
        args: Args,
    ) -> Result<Option<PgRow>> {
        let (reply, answer) = oneshot::channel();
        let start = {
            let mut queue = self
                .queue
                .lock()
                .map_err(|_| Error::store_msg("the PostgreSQL write queue is poisoned"))?;
            queue.jobs.push(Job {
                handle: *handle,
                args,
                reply,
            });
            !std::mem::replace(&mut queue.running, true)
        };
        if start {
            tokio::spawn(self.clone().drain());
        }
        answer.await.map_err(|_| {
            Error::store_msg("the PostgreSQL write group stopped before this update ran")
        })?
    }

    /// Runs groups until the queue is empty.
    async fn drain(self: Arc<Self>) {
        /// If the task ends early (a panic, the runtime shutting down),
        /// the queue is not left marked running: the updates waiting in it
        /// fail (their senders drop) and the next one starts a new task.
        struct Running<'a>(&'a Mutex<Queue>);
        impl Drop for Running<'_> {
            fn drop(&mut self) {
                if let Ok(mut queue) = self.0.lock() {
                    queue.running = false;
                    queue.jobs.clear();
                }
            }
        }
        let _running = Running(&self.queue);
        loop {
            let group = {
                let Ok(mut queue) = self.queue.lock() else {
                    return;
                };
                if queue.jobs.is_empty() {
                    queue.running = false;
                    return;
                }
                take_group(&mut queue.jobs)
            };
            self.run(group).await;
        }
    }

    async fn run(&self, mut group: Vec<Job>) {
        if group.len() == 1 {
            if let Some(job) = group.pop() {
                let out = self.one(&job.handle, &job.args).await;
                let _ = job.reply.send(out);
            }
            return;
        }
        group.sort_by(|a, b| a.handle.as_bytes().cmp(b.handle.as_bytes()));
        match self.together(&group).await {
            Ok(mut rows) => {
                for job in group {
                    let row = rows.remove(job.handle.as_bytes());
                    let _ = job.reply.send(Ok(row));
                }
            }
            // Refused as a whole, so nothing of it was written: each
            // update alone, so only a faulty one fails.
            Err(_) => {
                for job in group {
                    let out = self.one(&job.handle, &job.args).await;
                    let _ = job.reply.send(out);
                }
            }
        }
    }

    async fn one(&self, handle: &Handle, args: &Args) -> Result<Option<PgRow>> {
        let sets = serde_json::to_string(&args.sets).map_err(Error::store)?;
        sqlx::query(&self.single)
            .bind(&handle.as_bytes()[..])
            .bind(args.now)
            .bind(args.clear)
            .bind(&args.removed)
            .bind(sets)
            .bind(args.seen)
            .bind(args.idle)
            .bind(args.owner.is_some())
            .bind(args.owner.as_ref().and_then(|o| o.as_deref()))
            .bind(args.expiry.is_some())
            .bind(args.expiry.as_ref().and_then(|e| e.as_deref()))
            .bind(None::<Vec<u8>>)
            .fetch_optional(&self.pool)
            .await
            .map_err(write_error)
    }

    /// The group as one statement: the rows it updated, by handle.
    async fn together(&self, group: &[Job]) -> Result<std::collections::HashMap<[u8; 32], PgRow>> {
        let items: Vec<serde_json::Value> = group
            .iter()
            .map(|job| {
                let a = &job.args;
                serde_json::json!({
                    "h": job.handle.to_string(),
                    "now": a.now,
                    "clear": a.clear,
                    "rm": a.removed,
                    "set": a.sets,
                    "seen": a.seen,
                    "idle": a.idle,
                    "os": a.owner.is_some(),
                    "o": a.owner.as_ref().and_then(|o| o.as_deref()),
                    "es": a.expiry.is_some(),
                    "e": a.expiry.as_ref().and_then(|e| e.as_deref()),
                })
            })
            .collect();
        let batch = serde_json::Value::Array(items).to_string();
        let rows = sqlx::query(&self.group)
            .bind(batch)
            .fetch_all(&self.pool)
            .await
            .map_err(write_error)?;
        let mut by_handle = std::collections::HashMap::with_capacity(rows.len());
        for row in rows {
            let handle: Vec<u8> = row
                .try_get(row.len().saturating_sub(1))
                .map_err(Error::store)?;
            if let Ok(handle) = <[u8; 32]>::try_from(handle.as_slice()) {
                by_handle.insert(handle, row);
            }
        }
        Ok(by_handle)
    }
}

/// Takes the next group off the queue: each session once, at most
/// [`MAX_GROUP`], in arrival order; the rest stays queued, in order.
fn take_group(jobs: &mut Vec<Job>) -> Vec<Job> {
    let mut seen = HashSet::new();
    let mut group = Vec::new();
    let mut rest = Vec::new();
    for job in jobs.drain(..) {
        if group.len() < MAX_GROUP && seen.insert(*job.handle.as_bytes()) {
            group.push(job);
        } else {
            rest.push(job);
        }
    }
    *jobs = rest;
    group
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(b: u8) -> (Job, oneshot::Receiver<Result<Option<PgRow>>>) {
        let (reply, rx) = oneshot::channel();
        let args = Args {
            now: 0,
            clear: false,
            removed: vec![],
            sets: serde_json::Map::new(),
            seen: 0,
            idle: None,
            owner: None,
            expiry: None,
        };
        (
            Job {
                handle: Handle::from_bytes([b; 32]),
                args,
                reply,
            },
            rx,
        )
    }

    #[test]
    fn a_group_holds_each_session_once_and_keeps_the_rest_in_order() {
        let mut jobs: Vec<Job> = [1, 2, 1, 3, 2, 1].iter().map(|&b| job(b).0).collect();
        let first: Vec<u8> = take_group(&mut jobs)
            .iter()
            .map(|j| j.handle.as_bytes()[0])
            .collect();
        assert_eq!(first, [1, 2, 3]);
        let left: Vec<u8> = jobs.iter().map(|j| j.handle.as_bytes()[0]).collect();
        assert_eq!(left, [1, 2, 1]);
        let second: Vec<u8> = take_group(&mut jobs)
            .iter()
            .map(|j| j.handle.as_bytes()[0])
            .collect();
        assert_eq!(second, [1, 2]);
        assert_eq!(take_group(&mut jobs).len(), 1);
        assert!(jobs.is_empty());
    }

    #[test]
    fn a_group_holds_at_most_max_group_updates() {
        let mut jobs: Vec<Job> = (0..MAX_GROUP + 5)
            .map(|i| {
                let mut bytes = [0u8; 32];
                bytes[..8].copy_from_slice(&(i as u64).to_be_bytes());
                let (mut j, _) = job(0);
                j.handle = Handle::from_bytes(bytes);
                j
            })
            .collect();
        assert_eq!(take_group(&mut jobs).len(), MAX_GROUP);
        assert_eq!(jobs.len(), 5);
    }
}
