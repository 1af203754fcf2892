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
mod signed_id_cases;
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

/// Expands the listed shared cases with the harness in `$mode` (see
/// `support::Mode`): the same case bodies, another engine.
macro_rules! conformance_in {
    ($name:ident, $make:path, $mode:expr; $($case:ident,)*) => {
        mod $name {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let mode = $mode;
                    crate::support::MODE.scope(mode, crate::cases::$case($make().await)).await
                }
            )*
        }
    };
}

mod stores {
    use std::sync::Arc;

    use keyfob::{MemoryStore, SessionStore};

    pub async fn memory() -> Arc<dyn SessionStore> {
        Arc::new(MemoryStore::new())
    }
}

conformance!(memory, crate::stores::memory);

// Signed session IDs over the memory store: every HTTP-level case except the
// one that pins the unsigned cookie's 43-character length.
conformance_in!(memory_signed_ids, crate::stores::memory,
    crate::support::Mode::SignedIds(crate::support::keys(1));
    handler_that_never_touches_the_session_loads_nothing,
    read_only_request_writes_nothing_and_sends_no_set_cookie,
    record_is_loaded_at_most_once_per_request,
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
    store_lists_and_deletes_by_owner,
);

// Cookie sessions with a memory store for revocation marks: every shared case
// that applies to a client-side store. Left out, and why:
// - the cookie is not 43 characters (new_session_sets_cookie_with_all_attributes);
// - cases that replay an older cookie after a write and expect the write
//   (idle/absolute expiry, touch, remove/clear, save on server error): with
//   client-side state the newest cookie holds the data, so `cookie_cases`
//   runs them following the cookie as a browser does;
// - concurrent writers of one session: each request carries its own copy,
//   the last response wins (a documented caveat of cookie sessions);
// - record_is_loaded_at_most_once_per_request: there is no record load; the
//   revocation store is read on access and again before a write, so a
//   logout during an in-flight request is never undone;
// - store-level cases and the owner index: the store only keeps marks.
#[cfg(feature = "cookie-store")]
conformance_in!(cookie, crate::stores::memory,
    crate::support::Mode::Cookie(crate::support::keys(1), true);
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
);
