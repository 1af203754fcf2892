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
                login_as_another_user_drops_the_previous_users_data,
                list_sessions_shows_the_owners_sessions_and_marks_the_current_one,
                revoke_others_ends_every_other_session_of_the_owner_only,
                revoke_by_handle_ends_only_the_owners_own_sessions,
                revoke_all_ends_every_session_of_the_owner_including_this_one,
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
}

conformance!(memory, crate::stores::memory);
