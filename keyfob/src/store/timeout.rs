//! A time limit on every store call the engine makes.
//!
//! Rules: each call to the wrapped store must finish within the limit, or it
//! is abandoned and reported as [`ErrorKind::Timeout`], which the layer
//! renders as `503 session store unavailable` with `Retry-After: 1`. A slow
//! store therefore costs a request at most the limit, never a hung worker.
//!
//! Caveat: abandoning a call drops its future; a write the backend already
//! received may still complete there (the client gets a `503` and retries,
//! which change-set saves make safe). The limit needs a Tokio runtime with the
//! time driver enabled (every axum server has one).
//!
//! Set it with [`SessionLayerBuilder::with_store_timeout`](crate::SessionLayerBuilder::with_store_timeout).
//!
//! Every call is also observed here, the one place all of them pass: a
//! `keyfob.store` tracing span (store kind, operation, outcome, duration;
//! never a handle) and, through the `metrics` facade,
//! `keyfob_store_duration_seconds{store, op, outcome}` (`ok`, `error`,
//! `timeout`, or `unsupported` for what the store cannot do) and
//! `keyfob_store_timeouts_total{store, op}`.

use std::{
    future::Future,
    sync::Arc,
    time::{Duration as StdDuration, Instant},
};

use tracing::Instrument as _;

use time::OffsetDateTime;

use super::{BoxFuture, Created, OwnedSession, SessionStore, Updated};
use crate::{
    error::{Error, ErrorKind, Result},
    id::Handle,
    record::{Record, Update},
};

/// The store the engine calls: the app's store under a time limit.
///
/// The engine calls the inherent methods below, which return unboxed
/// futures; the [`SessionStore`] impl (boxed, as the trait requires) is for
/// [`SessionLayer::store`](crate::SessionLayer::store), the account
/// functions that take a `&dyn SessionStore` (`auth::revoke_all`,
/// `auth::revoke_others`), and the cookie sessions' revocation store.
#[derive(Clone)]
pub(crate) struct Timed {
    inner: Arc<dyn SessionStore>,
    limit: Option<StdDuration>,
    kind: &'static str,
    /// Metric keys, built once: the `histogram!` macro builds one per call
    /// (a label vector: an allocation and a free per store call).
    keys: Arc<Keys>,
}

/// The store operations, in the order of [`Keys`]' rows.
#[derive(Clone, Copy)]
enum Op {
    Load,
    Create,
    Update,
    Delete,
    DeleteExpired,
    ListByOwner,
    DeleteByOwner,
    HoldsExpired,
}

impl Op {
    const ALL: [Op; 8] = [
        Op::Load,
        Op::Create,
        Op::Update,
        Op::Delete,
        Op::DeleteExpired,
        Op::ListByOwner,
        Op::DeleteByOwner,
        Op::HoldsExpired,
    ];

    fn name(self) -> &'static str {
        match self {
            Op::Load => "load",
            Op::Create => "create",
            Op::Update => "update",
            Op::Delete => "delete",
            Op::DeleteExpired => "delete_expired",
            Op::ListByOwner => "list_by_owner",
            Op::DeleteByOwner => "delete_by_owner",
            Op::HoldsExpired => "holds_expired",
        }
    }
}

/// The `outcome` label's values; [`Timed::observed`] indexes them.
const OUTCOMES: [&str; 4] = ["ok", "error", "timeout", "unsupported"];
const OK: usize = 0;
const ERROR: usize = 1;
const TIMEOUT: usize = 2;
const UNSUPPORTED: usize = 3;

/// `keyfob_store_duration_seconds{store, op, outcome}` for every op and
/// outcome, and `keyfob_store_timeouts_total{store, op}` for every op.
struct Keys {
    duration: Vec<metrics::Key>,
    timeouts: Vec<metrics::Key>,
}

impl Keys {
    fn new(store: &'static str) -> Self {
        let label = metrics::Label::from_static_parts;
        let duration = Op::ALL
            .iter()
            .flat_map(|op| {
                OUTCOMES.iter().map(move |outcome| {
                    metrics::Key::from_parts(
                        "keyfob_store_duration_seconds",
                        vec![
                            label("store", store),
                            label("op", op.name()),
                            label("outcome", outcome),
                        ],
                    )
                })
            })
            .collect();
        let timeouts = Op::ALL
            .iter()
            .map(|op| {
                metrics::Key::from_parts(
                    "keyfob_store_timeouts_total",
                    vec![label("store", store), label("op", op.name())],
                )
            })
            .collect();
        Keys { duration, timeouts }
    }
}

/// What the `metrics` macros would pass: this module, at info level.
static METADATA: metrics::Metadata<'static> =
    metrics::Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

impl Timed {
    pub(crate) fn new(inner: Arc<dyn SessionStore>, limit: Option<StdDuration>) -> Self {
        let kind = inner.kind();
        Timed {
            inner,
            limit,
            kind,
            keys: Arc::new(Keys::new(kind)),
        }
    }

    /// Runs one store call under the limit and observes it: a
    /// `keyfob.store` span (when a subscriber wants it) and the metrics.
    async fn observed<T>(&self, op: Op, fut: BoxFuture<'_, Result<T>>) -> Result<T> {
        let span = tracing::debug_span!(
            "keyfob.store",
            store = self.kind,
            op = op.name(),
            outcome = tracing::field::Empty,
            duration_us = tracing::field::Empty
        );
        // Skip entering the span at every poll and recording into it (each
        // a call through `tracing`'s dispatch) when nobody can see it: no
        // subscriber enabled it, and no `log` logger takes debug records
        // (which `tracing`'s `log` feature sends when no subscriber is set).
        let traced = !span.is_disabled()
            || (!tracing::dispatcher::has_been_set()
                && log::max_level() >= log::LevelFilter::Debug);
        // (A `Span::none()` does nothing when entered, not even for `log`.)
        let fut = fut.instrument(if traced {
            span.clone()
        } else {
            tracing::Span::none()
        });
        let started = Instant::now();
        let out = match self.limit {
            None => fut.await,
            Some(limit) => within(limit, op.name(), fut).await,
        };
        let elapsed = started.elapsed();
        let outcome = match &out {
            Ok(_) => OK,
            Err(e) if e.kind() == ErrorKind::Timeout => TIMEOUT,
            // A capability the store lacks (no owner index), not a failure.
            Err(e) if e.kind() == ErrorKind::Unsupported => UNSUPPORTED,
            Err(_) => ERROR,
        };
        if traced {
            span.record("outcome", OUTCOMES[outcome]);
            span.record("duration_us", elapsed.as_micros() as u64);
        }
        let row = op as usize;
        let keys = &self.keys;
        metrics::with_recorder(|r| {
            if let Some(key) = keys.duration.get(row * OUTCOMES.len() + outcome) {
                r.register_histogram(key, &METADATA)
                    .record(elapsed.as_secs_f64());
            }
            if outcome == TIMEOUT {
                if let Some(key) = keys.timeouts.get(row) {
                    r.register_counter(key, &METADATA).increment(1);
                }
            }
        });
        out
    }

    pub(crate) async fn load(
        &self,
        handle: &Handle,
        now: OffsetDateTime,
    ) -> Result<Option<Arc<Record>>> {
        self.observed(Op::Load, self.inner.load(handle, now)).await
    }

    pub(crate) async fn create(&self, handle: &Handle, record: &Record) -> Result<Created> {
        self.observed(Op::Create, self.inner.create(handle, record))
            .await
    }

    pub(crate) async fn update(
        &self,
        handle: &Handle,
        update: &Update,
        now: OffsetDateTime,
    ) -> Result<Updated> {
        self.observed(Op::Update, self.inner.update(handle, update, now))
            .await
    }

    pub(crate) async fn delete(&self, handle: &Handle) -> Result<bool> {
        self.observed(Op::Delete, self.inner.delete(handle)).await
    }

    pub(crate) async fn list_by_owner(
        &self,
        owner: &str,
        now: OffsetDateTime,
        limit: usize,
    ) -> Result<Vec<OwnedSession>> {
        self.observed(Op::ListByOwner, self.inner.list_by_owner(owner, now, limit))
            .await
    }

    pub(crate) async fn holds_expired(&self, handle: &Handle, now: OffsetDateTime) -> Result<bool> {
        self.observed(Op::HoldsExpired, self.inner.holds_expired(handle, now))
            .await
    }

    pub(crate) fn update_uses_base(&self) -> bool {
        self.inner.update_uses_base()
    }
}

async fn within<T>(
    limit: StdDuration,
    op: &'static str,
    fut: impl Future<Output = Result<T>>,
) -> Result<T> {
    // A call that is done at its first poll (a near-cache hit, the memory
    // store) needs no timer: arming one reads the clock and registers an
    // entry with Tokio's timer, on every cached request.
    let mut fut = std::pin::pin!(fut);
    let first = std::future::poll_fn(|cx| {
        std::task::Poll::Ready(match fut.as_mut().poll(cx) {
            std::task::Poll::Ready(out) => Some(out),
            std::task::Poll::Pending => None,
        })
    })
    .await;
    if let Some(out) = first {
        return out;
    }
    match tokio::time::timeout(limit, fut).await {
        Ok(out) => out,
        Err(_) => {
            tracing::warn!(
                event = "store.timeout",
                op,
                limit_ms = limit.as_millis() as u64,
                "keyfob: session store call timed out"
            );
            Err(Error::new(
                ErrorKind::Timeout,
                format!("{op} took longer than {limit:?}"),
            ))
        }
    }
}

impl SessionStore for Timed {
    fn load<'a>(
        &'a self,
        handle: &'a Handle,
        now: OffsetDateTime,
    ) -> BoxFuture<'a, Result<Option<Arc<Record>>>> {
        Box::pin(Timed::load(self, handle, now))
    }
    fn create<'a>(
        &'a self,
        handle: &'a Handle,
        record: &'a Record,
    ) -> BoxFuture<'a, Result<Created>> {
        Box::pin(Timed::create(self, handle, record))
    }
    fn update<'a>(
        &'a self,
        handle: &'a Handle,
        update: &'a Update,
        now: OffsetDateTime,
    ) -> BoxFuture<'a, Result<Updated>> {
        Box::pin(Timed::update(self, handle, update, now))
    }
    fn delete<'a>(&'a self, handle: &'a Handle) -> BoxFuture<'a, Result<bool>> {
        Box::pin(Timed::delete(self, handle))
    }
    fn delete_expired(&self, now: OffsetDateTime, batch: usize) -> BoxFuture<'_, Result<u64>> {
        Box::pin(self.observed(Op::DeleteExpired, self.inner.delete_expired(now, batch)))
    }
    fn list_by_owner<'a>(
        &'a self,
        owner: &'a str,
        now: OffsetDateTime,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<OwnedSession>>> {
        Box::pin(Timed::list_by_owner(self, owner, now, limit))
    }
    fn delete_by_owner<'a>(
        &'a self,
        owner: &'a str,
        keep: Option<&'a Handle>,
    ) -> BoxFuture<'a, Result<u64>> {
        Box::pin(self.observed(Op::DeleteByOwner, self.inner.delete_by_owner(owner, keep)))
    }
    fn update_uses_base(&self) -> bool {
        Timed::update_uses_base(self)
    }
    fn kind(&self) -> &'static str {
        self.kind
    }
    fn holds_expired<'a>(
        &'a self,
        handle: &'a Handle,
        now: OffsetDateTime,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(Timed::holds_expired(self, handle, now))
    }
}

#[cfg(test)]
mod key_tests {
    use super::*;

    #[test]
    fn every_op_and_outcome_has_its_metric_key_in_place() {
        let keys = Keys::new("memory");
        assert_eq!(keys.duration.len(), Op::ALL.len() * OUTCOMES.len());
        assert_eq!(keys.timeouts.len(), Op::ALL.len());
        for (i, op) in Op::ALL.iter().enumerate() {
            assert_eq!(*op as usize, i, "Op::ALL out of order at {}", op.name());
            for (j, outcome) in OUTCOMES.iter().enumerate() {
                let key = &keys.duration[i * OUTCOMES.len() + j];
                assert_eq!(key.name(), "keyfob_store_duration_seconds");
                let labels: Vec<_> = key.labels().map(|l| (l.key(), l.value())).collect();
                assert_eq!(
                    labels,
                    [
                        ("store", "memory"),
                        ("op", op.name()),
                        ("outcome", *outcome)
                    ]
                );
            }
            let labels: Vec<_> = keys.timeouts[i]
                .labels()
                .map(|l| (l.key(), l.value()))
                .collect();
            assert_eq!(labels, [("store", "memory"), ("op", op.name())]);
        }
    }
}

#[cfg(all(test, feature = "memory"))]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::MemoryStore;

    /// A real store behind an injected delay.
    struct Slow {
        inner: MemoryStore,
        delay: StdDuration,
    }

    impl SessionStore for Slow {
        fn load<'a>(
            &'a self,
            handle: &'a Handle,
            now: OffsetDateTime,
        ) -> BoxFuture<'a, Result<Option<Arc<Record>>>> {
            Box::pin(async move {
                tokio::time::sleep(self.delay).await;
                self.inner.load(handle, now).await
            })
        }
        fn create<'a>(
            &'a self,
            handle: &'a Handle,
            record: &'a Record,
        ) -> BoxFuture<'a, Result<Created>> {
            Box::pin(async move {
                tokio::time::sleep(self.delay).await;
                self.inner.create(handle, record).await
            })
        }
        fn update<'a>(
            &'a self,
            handle: &'a Handle,
            update: &'a Update,
            now: OffsetDateTime,
        ) -> BoxFuture<'a, Result<Updated>> {
            Box::pin(async move {
                tokio::time::sleep(self.delay).await;
                self.inner.update(handle, update, now).await
            })
        }
        fn delete<'a>(&'a self, handle: &'a Handle) -> BoxFuture<'a, Result<bool>> {
            self.inner.delete(handle)
        }
        fn delete_expired(&self, now: OffsetDateTime, batch: usize) -> BoxFuture<'_, Result<u64>> {
            self.inner.delete_expired(now, batch)
        }
        fn list_by_owner<'a>(
            &'a self,
            owner: &'a str,
            now: OffsetDateTime,
            limit: usize,
        ) -> BoxFuture<'a, Result<Vec<OwnedSession>>> {
            self.inner.list_by_owner(owner, now, limit)
        }
        fn delete_by_owner<'a>(
            &'a self,
            owner: &'a str,
            keep: Option<&'a Handle>,
        ) -> BoxFuture<'a, Result<u64>> {
            self.inner.delete_by_owner(owner, keep)
        }
    }

    #[tokio::test]
    async fn a_call_slower_than_the_limit_is_a_timeout_and_a_fast_one_passes() {
        // Delays far apart from the limit, so a busy CI machine cannot blur them.
        let slow = |ms| {
            Arc::new(Slow {
                inner: MemoryStore::new(),
                delay: StdDuration::from_millis(ms),
            })
        };
        let handle = Handle::from_bytes([7; 32]);
        let now = OffsetDateTime::now_utc();
        let tight = Timed::new(slow(10_000), Some(StdDuration::from_millis(50)));
        let started = std::time::Instant::now();
        let err = tight.load(&handle, now).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Timeout);
        assert!(err.is_unavailable());
        assert!(started.elapsed() < StdDuration::from_secs(5));
        let loose = Timed::new(slow(10), Some(StdDuration::from_secs(5)));
        assert!(loose.load(&handle, now).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_slow_store_gets_503_with_retry_after_from_the_layer() {
        use axum::{body::Body, routing::get, Router};
        use http::{header, Request, StatusCode};
        use tower::ServiceExt;

        async fn count(session: crate::Session) -> Result<String, Error> {
            let n: u64 = session.get("n").await?.unwrap_or(0) + 1;
            session.insert("n", n).await?;
            Ok(n.to_string())
        }
        let app = |delay, limit| {
            let store = Slow {
                inner: MemoryStore::new(),
                delay,
            };
            let layer = crate::SessionLayer::builder(store)
                .with_store_timeout(Some(limit))
                .build()
                .unwrap();
            Router::new().route("/", get(count)).layer(layer)
        };
        let req = |cookie: Option<&str>| {
            let b = Request::get("/");
            match cookie {
                Some(c) => b.header(header::COOKIE, c),
                None => b,
            }
            .body(Body::empty())
            .unwrap()
        };
        let slow = app(StdDuration::from_secs(10), StdDuration::from_millis(50));
        let started = std::time::Instant::now();
        // A new session: the create is too slow. A presented ID: the load is.
        let presented = format!("id={}", "A".repeat(43));
        for cookie in [None, Some(presented.as_str())] {
            let res = slow.clone().oneshot(req(cookie)).await.unwrap();
            assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE, "{cookie:?}");
            assert_eq!(res.headers()[header::RETRY_AFTER], "1");
            assert!(res.headers().get(header::SET_COOKIE).is_none());
        }
        assert!(started.elapsed() < StdDuration::from_secs(5));
        let fine = app(StdDuration::from_millis(10), StdDuration::from_secs(5));
        let res = fine.oneshot(req(None)).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
}
