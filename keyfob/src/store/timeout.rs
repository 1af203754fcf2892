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
pub(crate) struct Timed {
    inner: Arc<dyn SessionStore>,
    limit: Option<StdDuration>,
    kind: &'static str,
}

impl Timed {
    pub(crate) fn new(inner: Arc<dyn SessionStore>, limit: Option<StdDuration>) -> Self {
        let kind = inner.kind();
        Timed { inner, limit, kind }
    }

    fn bound<'a, T: Send + 'a>(
        &self,
        op: &'static str,
        fut: BoxFuture<'a, Result<T>>,
    ) -> BoxFuture<'a, Result<T>> {
        Box::pin(observed(self.kind, op, self.limit, fut))
    }
}

/// Runs one store call under the limit, in a span, and records its outcome.
async fn observed<T>(
    store: &'static str,
    op: &'static str,
    limit: Option<StdDuration>,
    fut: BoxFuture<'_, Result<T>>,
) -> Result<T> {
    let span = tracing::debug_span!(
        "keyfob.store",
        store,
        op,
        outcome = tracing::field::Empty,
        duration_us = tracing::field::Empty
    );
    let started = Instant::now();
    let out = match limit {
        None => fut.instrument(span.clone()).await,
        Some(limit) => within(limit, op, fut.instrument(span.clone())).await,
    };
    let elapsed = started.elapsed();
    let outcome = match &out {
        Ok(_) => "ok",
        Err(e) if e.kind() == ErrorKind::Timeout => "timeout",
        // A capability the store lacks (no owner index), not a failure.
        Err(e) if e.kind() == ErrorKind::Unsupported => "unsupported",
        Err(_) => "error",
    };
    span.record("outcome", outcome);
    span.record("duration_us", elapsed.as_micros() as u64);
    metrics::histogram!("keyfob_store_duration_seconds", "store" => store, "op" => op, "outcome" => outcome)
        .record(elapsed.as_secs_f64());
    if outcome == "timeout" {
        metrics::counter!("keyfob_store_timeouts_total", "store" => store, "op" => op).increment(1);
    }
    out
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
        self.bound("load", self.inner.load(handle, now))
    }
    fn create<'a>(
        &'a self,
        handle: &'a Handle,
        record: &'a Record,
    ) -> BoxFuture<'a, Result<Created>> {
        self.bound("create", self.inner.create(handle, record))
    }
    fn update<'a>(
        &'a self,
        handle: &'a Handle,
        update: &'a Update,
        now: OffsetDateTime,
    ) -> BoxFuture<'a, Result<Updated>> {
        self.bound("update", self.inner.update(handle, update, now))
    }
    fn delete<'a>(&'a self, handle: &'a Handle) -> BoxFuture<'a, Result<bool>> {
        self.bound("delete", self.inner.delete(handle))
    }
    fn delete_expired(&self, now: OffsetDateTime, batch: usize) -> BoxFuture<'_, Result<u64>> {
        self.bound("delete_expired", self.inner.delete_expired(now, batch))
    }
    fn list_by_owner<'a>(
        &'a self,
        owner: &'a str,
        now: OffsetDateTime,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<OwnedSession>>> {
        self.bound("list_by_owner", self.inner.list_by_owner(owner, now, limit))
    }
    fn delete_by_owner<'a>(
        &'a self,
        owner: &'a str,
        keep: Option<&'a Handle>,
    ) -> BoxFuture<'a, Result<u64>> {
        self.bound("delete_by_owner", self.inner.delete_by_owner(owner, keep))
    }
    fn update_uses_base(&self) -> bool {
        self.inner.update_uses_base()
    }
    fn kind(&self) -> &'static str {
        self.kind
    }
    fn holds_expired<'a>(
        &'a self,
        handle: &'a Handle,
        now: OffsetDateTime,
    ) -> BoxFuture<'a, Result<bool>> {
        self.bound("holds_expired", self.inner.holds_expired(handle, now))
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
