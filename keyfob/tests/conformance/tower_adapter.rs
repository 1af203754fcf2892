//! The tower-sessions adapter's weaker guarantees, enforced by typed errors
//! rather than silent no-ops (see `TowerSessionsStore`).

use axum::http::StatusCode;
use keyfob::{ErrorKind, SessionStore};
use time::OffsetDateTime;

use crate::{stores, support::App};

#[tokio::test]
async fn without_an_owner_index_listing_and_revoking_are_errors_and_login_still_works() {
    let store = stores::tower_sessions().await;
    let app = App::new(store.clone());
    // The per-user cap cannot count sessions here, so it does not block a login.
    let r = app.send("POST", "/login/u1", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let cookie = r.cookie().unwrap();
    assert_eq!(app.send("GET", "/user", Some(&cookie)).await.body, "\"u1\"");
    for (method, uri) in [
        ("GET", "/sessions"),
        ("POST", "/revoke-others"),
        ("POST", "/revoke-all"),
    ] {
        let r = app.send(method, uri, Some(&cookie)).await;
        assert_eq!(r.status, StatusCode::NOT_IMPLEMENTED, "{uri}: {}", r.body);
    }
    let now = OffsetDateTime::now_utc();
    let err = store.list_by_owner("u1", now, 10).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported);
    let err = store.delete_expired(now, 10).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported);
}
