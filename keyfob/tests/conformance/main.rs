//! The store conformance suite: one body of cases (`cases.rs`), expanded for
//! every store. A store is done when it passes all of it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    unreachable_pub
)]

mod cases;
#[cfg(feature = "cookie-store")]
mod cookie_cases;
#[cfg(feature = "migrate")]
mod legacy_ids;
mod signed_id_cases;
mod support;
mod tower_sessions_routes;

/// The one list of shared cases (`cases.rs`). Every case stands in exactly
/// one group, and the group says which engines run it, so a new case cannot
/// silently not run where it applies:
/// - `everywhere`: every engine (server-side stores, signed IDs, cookie
///   sessions, the tower-sessions adapter);
/// - `owner_index`: every engine with an owner index (listing and revoking a
///   user's sessions, the per-user cap): not the tower-sessions adapter;
/// - `server_side`: server-side stores, signed IDs and the adapter. Cookie
///   sessions leave these out: store-level cases (their store only keeps
///   entries and marks), cases that replay an older cookie after a write and
///   expect the write (`cookie_cases` runs those following the cookie as a
///   browser does), and the record-load count;
/// - `keyfob_stores`: keyfob's own server-side stores and signed IDs: the
///   store-level owner index (listing, deleting by owner, checked by the
///   store directly), the expired-record sweep, and concurrent writers of one
///   session merged (the adapter saves whole records);
/// - `unsigned`: server-side stores without signed IDs (the plain
///   43-character cookie).
///
/// `$then!(args; everywhere: [...] owner_index: [...] server_side: [...]
/// keyfob_stores: [...] unsigned: [...])` is called with the list.
macro_rules! with_cases {
    ($then:ident!($($args:tt)*)) => {
        $then!($($args)*; {
            everywhere: [
                handler_that_never_touches_the_session_loads_nothing,
                read_only_request_writes_nothing_and_sends_no_set_cookie,
                empty_session_is_never_stored,
                unknown_session_id_is_not_adopted,
                malformed_and_duplicated_cookies_are_no_session,
                hostile_cookie_headers_never_give_a_server_error,
                cycle_id_keeps_data_and_retires_the_old_id,
                delete_removes_server_side_and_sends_a_matching_removal_cookie,
                logout_during_an_in_flight_request_is_not_resurrected,
                server_error_response_saves_nothing,
                browser_session_cookie_has_no_max_age,
                short_idle_timeout_is_kept_alive_by_reads_and_ends_after_it,
                short_absolute_timeout_ends_a_session_written_every_second,
                short_per_session_inactivity_expiry_is_kept_alive_by_reads,
                reserved_keys_cannot_be_written_or_read_through_the_public_api,
            ]
            owner_index: [
                clear_logs_out_and_leaves_no_owner_behind,
                list_sessions_shows_the_owners_sessions_and_marks_the_current_one,
                revoke_others_ends_every_other_session_of_the_owner_only,
                revoke_by_handle_ends_only_the_owners_own_sessions,
                revoke_all_ends_every_session_of_the_owner_including_this_one,
                login_past_the_per_user_cap_ends_the_oldest_sessions,
                rotation_racing_a_revocation_does_not_bring_the_session_back,
            ]
            server_side: [
                record_is_loaded_at_most_once_per_request,
                value_of_another_type_reads_as_absent_not_a_server_error,
                server_error_response_saves_when_configured,
                idle_session_expires,
                active_session_past_its_absolute_deadline_expires,
                reads_touch_at_most_once_per_interval,
                remove_and_clear_persist,
                explicit_save_still_sends_the_cookie,
                login_counts_the_absolute_deadline_from_the_login,
                huge_per_session_expiry_does_not_panic,
                settings_that_cannot_work_are_refused_at_build,
                store_create_refuses_a_live_handle,
                store_never_returns_an_expired_record,
                store_update_of_a_deleted_record_is_gone,
            ]
            keyfob_stores: [
                hundred_concurrent_writers_of_different_keys_lose_none,
                store_purges_expired_records_in_batches,
                store_tells_an_expired_record_from_an_unknown_one,
                store_treats_a_record_as_expired_from_its_deadline_to_the_second,
                store_create_replaces_a_record_past_its_deadline,
                store_lists_and_deletes_by_owner,
                store_lists_at_most_the_limit_of_an_owners_sessions,
                login_as_another_user_drops_the_previous_users_data,
            ]
            unsigned: [
                new_session_sets_cookie_with_all_attributes,
            ]
        });
    };
}

/// One test per case, in a module named after the store; `$make` is an
/// async fn returning a fresh `Arc<dyn SessionStore>`. `$mode` is `None` for
/// the plain harness or `Some(support::Mode)` for another engine.
macro_rules! case_tests {
    ($make:path, $mode:expr; $($case:ident,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let store = $make().await;
                match $mode {
                    None => crate::cases::$case(store).await,
                    Some(mode) => {
                        crate::support::MODE
                            .scope(mode, crate::cases::$case(store))
                            .await
                    }
                }
            }
        )*
    };
}

/// Expands the groups an engine runs (`[group, ...]`) for one store.
macro_rules! conformance_groups {
    ($name:ident, $make:path, $mode:expr, [$($group:ident),*]; $cases:tt) => {
        mod $name {
            $(conformance_groups!(@group $group, $make, $mode; $cases);)*
        }
    };
    (@group everywhere, $make:path, $mode:expr;
        { everywhere: [$($a:ident,)*] $($rest:tt)* }) => {
        case_tests!($make, $mode; $($a,)*);
    };
    (@group owner_index, $make:path, $mode:expr;
        { everywhere: $_a:tt owner_index: [$($b:ident,)*] $($rest:tt)* }) => {
        case_tests!($make, $mode; $($b,)*);
    };
    (@group server_side, $make:path, $mode:expr;
        { everywhere: $_a:tt owner_index: $_b:tt server_side: [$($c:ident,)*] $($rest:tt)* }) => {
        case_tests!($make, $mode; $($c,)*);
    };
    (@group keyfob_stores, $make:path, $mode:expr;
        { everywhere: $_a:tt owner_index: $_b:tt server_side: $_c:tt
          keyfob_stores: [$($d:ident,)*] $($rest:tt)* }) => {
        case_tests!($make, $mode; $($d,)*);
    };
    (@group unsigned, $make:path, $mode:expr;
        { everywhere: $_a:tt owner_index: $_b:tt server_side: $_c:tt keyfob_stores: $_d:tt
          unsigned: [$($e:ident,)*] }) => {
        case_tests!($make, $mode; $($e,)*);
    };
}

/// A keyfob server-side store: every group.
macro_rules! conformance {
    ($name:ident, $make:path) => {
        with_cases!(conformance_groups!(
            $name,
            $make,
            None::<crate::support::Mode>,
            [
                everywhere,
                owner_index,
                server_side,
                keyfob_stores,
                unsigned
            ]
        ));
    };
}

mod stores {
    use std::sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    };

    use keyfob::{MemoryStore, SessionStore};

    pub async fn memory() -> Arc<dyn SessionStore> {
        Arc::new(MemoryStore::new())
    }

    /// A name no other test of this run uses.
    pub fn unique(prefix: &str) -> String {
        static N: AtomicUsize = AtomicUsize::new(0);
        format!(
            "{prefix}_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// The address of a server that `scripts/test` started; a test without
    /// it fails, it is never skipped.
    pub fn server_url(var: &str) -> String {
        std::env::var(var).unwrap_or_else(|_| {
            panic!("{var} is not set: run the suite through scripts/test, which starts the server")
        })
    }

    #[cfg(feature = "sqlite")]
    pub async fn sqlite_store() -> keyfob::SqliteStore {
        let dir = std::env::temp_dir().join("keyfob-conformance");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{}.db", unique("sqlite")));
        let _ = std::fs::remove_file(&path);
        keyfob::SqliteStore::connect(&format!("sqlite://{}", path.display()))
            .await
            .unwrap()
    }

    #[cfg(feature = "sqlite")]
    pub async fn sqlite() -> Arc<dyn SessionStore> {
        Arc::new(sqlite_store().await)
    }

    /// `sqlite::memory:`: a database of its own (shared by the pool's
    /// connections and the store's writer), no `-shm` file, so a near cache
    /// that never serves.
    #[cfg(feature = "sqlite")]
    pub async fn sqlite_in_memory() -> Arc<dyn SessionStore> {
        Arc::new(
            keyfob::SqliteStore::connect("sqlite::memory:")
                .await
                .unwrap(),
        )
    }

    #[cfg(feature = "postgres")]
    pub async fn postgres_store() -> keyfob::PostgresStore {
        postgres_on(&unique("sessions")).await
    }

    /// A pool of its own on the test server.
    #[cfg(feature = "postgres")]
    async fn postgres_pool() -> sqlx::PgPool {
        let url = server_url("KEYFOB_TEST_POSTGRES_URL");
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(8)
            .connect(&url)
            .await
            .unwrap_or_else(|e| panic!("cannot reach PostgreSQL at {url}: {e}"))
    }

    /// A store on `table` with a pool of its own (as another process has),
    /// migrated, its near cache serving.
    #[cfg(feature = "postgres")]
    pub async fn postgres_on(table: &str) -> keyfob::PostgresStore {
        let store = keyfob::PostgresStore::new(postgres_pool().await)
            .with_table_name(table)
            .unwrap();
        store.migrate().await.unwrap();
        near_cache_serving(&store).await;
        store
    }

    /// Waits (at most 5 s) until the store's near cache serves: its listener
    /// starts on the first load and subscribes within milliseconds.
    #[cfg(feature = "postgres")]
    pub async fn near_cache_serving(store: &keyfob::PostgresStore) {
        let probe = keyfob::Handle::from_bytes([0; 32]);
        for _ in 0..500 {
            store
                .load(&probe, time::OffsetDateTime::now_utc())
                .await
                .unwrap();
            if store.near_cache_serving() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("the near cache never started serving");
    }

    #[cfg(feature = "postgres")]
    pub async fn postgres() -> Arc<dyn SessionStore> {
        Arc::new(postgres_store().await)
    }

    /// PostgreSQL with the near cache off: every load is a round trip.
    #[cfg(feature = "postgres")]
    pub async fn postgres_uncached() -> Arc<dyn SessionStore> {
        let store = keyfob::PostgresStore::new(postgres_pool().await)
            .without_near_cache()
            .with_table_name(&unique("sessions"))
            .unwrap();
        store.migrate().await.unwrap();
        Arc::new(store)
    }

    #[cfg(feature = "mysql")]
    pub async fn mysql_store() -> keyfob::MySqlStore {
        let url = server_url("KEYFOB_TEST_MYSQL_URL");
        let pool = sqlx::mysql::MySqlPoolOptions::new()
            .max_connections(8)
            .connect(&url)
            .await
            .unwrap_or_else(|e| panic!("cannot reach MySQL/MariaDB at {url}: {e}"));
        let store = keyfob::MySqlStore::new(pool)
            .with_table_name(&unique("sessions"))
            .unwrap();
        store.migrate().await.unwrap();
        store
    }

    #[cfg(feature = "mysql")]
    pub async fn mysql() -> Arc<dyn SessionStore> {
        Arc::new(mysql_store().await)
    }

    /// A Redis key prefix no other test, of this run or an earlier one
    /// against the same servers, uses.
    #[cfg(feature = "redis")]
    pub fn unique_prefix() -> String {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        unique(&format!("kft:{nanos}"))
    }

    #[cfg(feature = "redis")]
    pub async fn redis_store(var: &str) -> keyfob::RedisStore {
        let url = server_url(var);
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

    #[cfg(feature = "tower-sessions")]
    pub async fn tower_sessions() -> Arc<dyn SessionStore> {
        Arc::new(keyfob::TowerSessionsStore::new(
            tower_sessions_memory_store::MemoryStore::default(),
        ))
    }

    #[cfg(feature = "cache")]
    pub async fn cached_memory() -> Arc<dyn SessionStore> {
        Arc::new(keyfob::CachedStore::new(MemoryStore::new()))
    }

    /// The cache tier over a Cluster store without its near cache: so the
    /// store's plain Cluster path (every command through the cluster
    /// connection) runs the suite too.
    #[cfg(all(feature = "cache", feature = "redis"))]
    pub async fn cached_redis_cluster() -> Arc<dyn SessionStore> {
        Arc::new(keyfob::CachedStore::new(
            redis_store("KEYFOB_TEST_REDIS_CLUSTER_URL")
                .await
                .without_near_cache(),
        ))
    }
}

conformance!(memory, crate::stores::memory);
#[cfg(feature = "sqlite")]
conformance!(sqlite, crate::stores::sqlite);
#[cfg(feature = "sqlite")]
conformance!(sqlite_in_memory, crate::stores::sqlite_in_memory);
#[cfg(feature = "postgres")]
conformance!(postgres, crate::stores::postgres);
#[cfg(feature = "postgres")]
conformance!(postgres_uncached, crate::stores::postgres_uncached);
#[cfg(feature = "mysql")]
conformance!(mysql, crate::stores::mysql);

#[cfg(feature = "redis")]
conformance!(redis, crate::stores::redis);
#[cfg(feature = "redis")]
conformance!(redis_cluster, crate::stores::redis_cluster);
#[cfg(feature = "cache")]
conformance!(cached_memory, crate::stores::cached_memory);
#[cfg(all(feature = "cache", feature = "redis"))]
conformance!(cached_redis_cluster, crate::stores::cached_redis_cluster);

#[cfg(feature = "memory")]
mod memory_only;
#[cfg(feature = "redis")]
mod redis_only;
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
mod sql;

// Signed session IDs over the memory store: all but the plain cookie's length.
with_cases!(conformance_groups!(
    memory_signed_ids,
    crate::stores::memory,
    Some(crate::support::Mode::SignedIds(crate::support::keys(1))),
    [everywhere, owner_index, server_side, keyfob_stores]
));
// Cookie sessions, the case's store keeping the revocation entries.
#[cfg(feature = "cookie-store")]
with_cases!(conformance_groups!(
    cookie,
    crate::stores::memory,
    Some(crate::support::Mode::Cookie(crate::support::keys(1), true)),
    [everywhere, owner_index]
));
// A tower-sessions 0.14 store (its memory store) under the adapter: no owner
// index, whole-record saves, no sweep (see `TowerSessionsStore`).
#[cfg(feature = "tower-sessions")]
with_cases!(conformance_groups!(
    tower_sessions_adapter,
    crate::stores::tower_sessions,
    None::<crate::support::Mode>,
    [everywhere, server_side, unsigned]
));
#[cfg(feature = "tower-sessions")]
mod tower_adapter;

/// tower-sessions' route tests, restated for keyfob (see `tower_sessions_routes`),
/// per store.
macro_rules! tower_sessions_routes {
    ($name:ident, $make:path) => {
        mod $name {
            tower_sessions_routes!(@cases $make;
                no_session_set,
                bogus_session_cookie,
                malformed_session_cookie,
                insert_session,
                session_max_age,
                get_session,
                get_no_value,
                remove_last_value,
                cycle_session_id,
                flush_session,
                flush_with_domain,
                set_expiry,
                set_expiry_without_an_absolute_cap,
                change_expiry_type,
                is_empty_only_without_a_session,
                expiry_reports_the_layers_unless_the_session_sets_its_own,
                expiry_date_counts_an_expiry_set_earlier_in_the_request,
            );
        }
    };
    (@cases $make:path; $($case:ident,)*) => {
        $(
            #[tokio::test]
            async fn $case() {
                crate::tower_sessions_routes::$case($make().await).await
            }
        )*
    };
}

tower_sessions_routes!(tower_sessions_routes_memory, crate::stores::memory);
#[cfg(feature = "sqlite")]
tower_sessions_routes!(tower_sessions_routes_sqlite, crate::stores::sqlite);
