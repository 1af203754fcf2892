//! The store conformance suite: one body of cases (`cases.rs`), expanded for
//! every store. A store is done when it passes all of it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    unreachable_pub
)]

mod cases;
mod support;

/// Expands every case as a test in a module named after the store.
/// `$make` is an async fn returning a fresh `Arc<dyn SessionStore>`.
macro_rules! conformance {
    ($name:ident, $make:path) => {
        mod $name {
            conformance!(@cases $make;
                handler_that_never_touches_the_session_loads_nothing,
                read_only_request_writes_nothing_and_sends_no_set_cookie,
                record_is_loaded_at_most_once_per_request,
                new_session_sets_cookie_with_all_attributes,
                empty_session_is_never_stored,
                unknown_session_id_is_not_adopted,
                malformed_and_duplicated_cookies_are_no_session,
                hostile_cookie_headers_never_give_a_server_error,
                cycle_id_keeps_data_and_retires_the_old_id,
                delete_removes_server_side_and_sends_a_matching_removal_cookie,
                hundred_concurrent_writers_of_different_keys_lose_none,
                logout_during_an_in_flight_request_is_not_resurrected,
                server_error_response_saves_nothing,
                server_error_response_saves_when_configured,
                idle_session_expires,
                active_session_past_its_absolute_deadline_expires,
                reads_touch_at_most_once_per_interval,
                browser_session_cookie_has_no_max_age,
                remove_and_clear_persist,
                store_create_refuses_a_live_handle,
                store_never_returns_an_expired_record,
                store_purges_expired_records_in_batches,
                store_update_of_a_deleted_record_is_gone,
                store_lists_and_deletes_by_owner,
            );
        }
    };
    (@cases $make:path; $($case:ident,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                crate::cases::$case($make().await).await
            }
        )*
    };
}

mod stores {
    use std::sync::Arc;

    use keyfob::{MemoryStore, SessionStore};

    pub async fn memory() -> Arc<dyn SessionStore> {
        Arc::new(MemoryStore::new())
    }

    /// A key prefix no other test (or earlier run) uses.
    #[cfg(feature = "redis")]
    pub fn unique_prefix() -> String {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        format!(
            "kft:{}:{nanos}:{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// The URL in `var`, or a panic that says how to get one: never a skip.
    #[cfg(feature = "redis")]
    pub fn url(var: &str) -> String {
        std::env::var(var).unwrap_or_else(|_| {
            panic!(
                "{var} is not set: run scripts/test, or `source scripts/services/common.sh; \
                 source scripts/services/redis.sh; start_redis` first"
            )
        })
    }

    #[cfg(feature = "redis")]
    pub async fn redis_store(var: &str) -> keyfob::RedisStore {
        let url = url(var);
        keyfob::RedisStore::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("cannot reach the Redis of {var} at {url}: {e}"))
            .with_key_prefix(unique_prefix())
    }

    #[cfg(feature = "redis")]
    pub async fn redis() -> Arc<dyn SessionStore> {
        Arc::new(redis_store("KEYFOB_TEST_REDIS_URL").await)
    }

    #[cfg(feature = "redis")]
    pub async fn redis_cluster() -> Arc<dyn SessionStore> {
        Arc::new(redis_store("KEYFOB_TEST_REDIS_CLUSTER_URL").await)
    }

    #[cfg(feature = "cache")]
    pub async fn cached_memory() -> Arc<dyn SessionStore> {
        Arc::new(keyfob::CachedStore::new(MemoryStore::new()))
    }

    #[cfg(all(feature = "cache", feature = "redis"))]
    pub async fn cached_redis_cluster() -> Arc<dyn SessionStore> {
        Arc::new(keyfob::CachedStore::new(
            redis_store("KEYFOB_TEST_REDIS_CLUSTER_URL").await,
        ))
    }
}

conformance!(memory, crate::stores::memory);
#[cfg(feature = "redis")]
conformance!(redis, crate::stores::redis);
#[cfg(feature = "redis")]
conformance!(redis_cluster, crate::stores::redis_cluster);
#[cfg(feature = "cache")]
conformance!(cached_memory, crate::stores::cached_memory);
#[cfg(all(feature = "cache", feature = "redis"))]
conformance!(cached_redis_cluster, crate::stores::cached_redis_cluster);

#[cfg(feature = "redis")]
mod redis_only;
