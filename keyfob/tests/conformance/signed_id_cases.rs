//! Signed session IDs (`SessionLayerBuilder::with_signed_ids`) over a
//! server-side store: what the shared cases cannot say.

use std::sync::Arc;

use keyfob::{keys::Keyring, MemoryStore, SessionStore};

use crate::support::{key, keys, send_raw_cookie, tampered, App, Mode, MODE};

fn app(store: Arc<dyn SessionStore>, keyring: Keyring) -> App {
    MODE.sync_scope(Mode::SignedIds(keyring), || App::new(store))
}

#[tokio::test]
async fn signed_id_cookie_is_id_dot_mac() {
    let app = app(Arc::new(MemoryStore::new()), keys(1));
    let cookie = app.session_with("a", "1").await;
    let (id, mac) = cookie.split_once('.').expect("ID.MAC");
    assert_eq!((id.len(), mac.len()), (43, 43));
    assert_eq!(app.send("GET", "/get/a", Some(&cookie)).await.body, "\"1\"");
}

#[tokio::test]
async fn forged_or_unsigned_id_is_refused_before_any_store_round_trip() {
    let app = app(Arc::new(MemoryStore::new()), keys(1));
    let cookie = app.session_with("a", "1").await;
    let (id, _) = cookie.split_once('.').unwrap();
    let loads = app.store.loads();
    let forged = format!("{}.{}", "A".repeat(43), "B".repeat(43));
    for value in [id.to_owned(), forged] {
        let r = app.send("GET", "/get/a", Some(&value)).await;
        assert_eq!(r.body, "none", "{value}");
    }
    assert_eq!(
        app.store.loads(),
        loads,
        "no store round trip for a bad MAC"
    );
}

#[tokio::test]
async fn tamper_matrix_reads_every_signed_id_variant_as_no_session() {
    let app = app(Arc::new(MemoryStore::new()), keys(1));
    let cookie = app.session_with("a", "1").await;
    let loads = app.store.loads();
    let cases = tampered(&cookie);
    assert!(cases.len() > 500, "{}", cases.len());
    for case in cases {
        if let Some(r) = send_raw_cookie(&app, "/get/a", &case).await {
            assert_eq!(r.body, "none", "{case:?}");
        }
    }
    let other = self::app(Arc::new(MemoryStore::new()), keys(2));
    assert_eq!(
        other.send("GET", "/get/a", Some(&cookie)).await.body,
        "none"
    );
    assert_eq!(app.store.loads(), loads);
}

#[tokio::test]
async fn signed_id_under_an_old_key_is_reissued_under_the_new_one() {
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    let old = app(store.clone(), keys(1));
    let cookie = old.session_with("a", "1").await;
    let rotated = app(store.clone(), Keyring::from_keys([key(2), key(1)]).unwrap());
    let r = rotated.send("GET", "/get/a", Some(&cookie)).await;
    assert_eq!(r.body, "\"1\"");
    let reissued = r.cookie().expect("re-issued under K2");
    assert_ne!(reissued, cookie);
    assert_eq!(
        reissued.split_once('.').unwrap().0,
        cookie.split_once('.').unwrap().0,
        "same ID"
    );
    let only_new = app(store, keys(2));
    assert_eq!(
        only_new.send("GET", "/get/a", Some(&reissued)).await.body,
        "\"1\""
    );
    assert_eq!(
        only_new.send("GET", "/get/a", Some(&cookie)).await.body,
        "none"
    );
}
