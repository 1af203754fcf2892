//! One body of cases, run against every store (see `main.rs`).

use std::sync::Arc;

use axum::{
    body::Body,
    http::{header, Request, StatusCode},
};
use keyfob::{
    store::{Created, Updated},
    Handle, Record, SessionStore,
};
use time::{Duration, OffsetDateTime};

use crate::support::App;

type Store = Arc<dyn SessionStore>;

// ---------------------------------------------------------------- HTTP level

pub async fn handler_that_never_touches_the_session_loads_nothing(store: Store) {
    let app = App::new(store);
    let cookie = app.session_with("a", "1").await;
    let (loads, writes) = (app.store.loads(), app.store.writes());
    let r = app.send("GET", "/nothing", Some(&cookie)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.set_cookies().is_empty());
    assert!(r.headers.get(header::VARY).is_none());
    assert_eq!((app.store.loads(), app.store.writes()), (loads, writes));
}

pub async fn read_only_request_writes_nothing_and_sends_no_set_cookie(store: Store) {
    let app = App::new(store);
    let cookie = app.session_with("a", "1").await;
    let writes = app.store.writes();
    for _ in 0..3 {
        let r = app.send("GET", "/get/a", Some(&cookie)).await;
        assert_eq!(r.body, "\"1\"");
        assert!(r.set_cookies().is_empty(), "{:?}", r.set_cookies());
        assert_eq!(r.headers.get(header::VARY).unwrap(), "Cookie");
    }
    assert_eq!(app.store.writes(), writes);
}

pub async fn record_is_loaded_at_most_once_per_request(store: Store) {
    let app = App::new(store);
    let cookie = app.session_with("a", "1").await;
    let loads = app.store.loads();
    // `/set` reads (to load) and then writes: still one load.
    app.send("POST", "/set/b/2", Some(&cookie)).await;
    assert_eq!(app.store.loads(), loads + 1);
}

pub async fn new_session_sets_cookie_with_all_attributes(store: Store) {
    let app = App::new(store);
    let r = app.send("POST", "/set/a/1", None).await;
    let set = r.set_cookies();
    assert_eq!(set.len(), 1);
    let c = &set[0];
    for attr in [
        "HttpOnly",
        "Secure",
        "SameSite=Lax",
        "Path=/",
        "Max-Age=7200",
    ] {
        assert!(c.contains(attr), "{c} lacks {attr}");
    }
    assert_eq!(r.headers.get(header::CACHE_CONTROL).unwrap(), "no-store");
    // 256 bits, base64url: 43 characters.
    assert_eq!(r.cookie().unwrap().len(), 43);
}

pub async fn empty_session_is_never_stored(store: Store) {
    let app = App::new(store);
    let r = app.send("GET", "/get/a", None).await;
    assert_eq!(r.body, "none");
    assert!(r.set_cookies().is_empty());
    let r = app.send("POST", "/clear", None).await;
    assert!(r.set_cookies().is_empty());
    assert_eq!(app.store.writes(), 0);
}

pub async fn unknown_session_id_is_not_adopted(store: Store) {
    let app = App::new(store);
    let forged = "A".repeat(43);
    let r = app.send("POST", "/set/a/1", Some(&forged)).await;
    let fresh = r.cookie().expect("a fresh session");
    assert_ne!(fresh, forged);
    let r = app.send("GET", "/get/a", Some(&forged)).await;
    assert_eq!(r.body, "none");
}

pub async fn malformed_and_duplicated_cookies_are_no_session(store: Store) {
    let app = App::new(store);
    let cookie = app.session_with("a", "1").await;
    let variants = [
        format!("id={cookie}; id={cookie}"),
        format!("id={cookie}x"),
        format!("id=\"{cookie}\""),
        format!("ID={cookie}"),
        format!("id={}", &cookie[..42]),
    ];
    for v in variants {
        let req = Request::get("/get/a")
            .header(header::COOKIE, &v)
            .body(Body::empty())
            .unwrap();
        let r = app.raw(req).await;
        assert_eq!(r.body, "none", "{v}");
    }
    // Two Cookie headers each with the name: duplicated.
    let req = Request::get("/get/a")
        .header(header::COOKIE, format!("id={cookie}"))
        .header(header::COOKIE, format!("id={cookie}"))
        .body(Body::empty())
        .unwrap();
    assert_eq!(app.raw(req).await.body, "none");
}

pub async fn hostile_cookie_headers_never_give_a_server_error(store: Store) {
    let app = App::new(store);
    let cookie = app.session_with("a", "1").await;
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for i in 0..200 {
        let value: Vec<u8> = match i % 5 {
            // Random visible bytes and high (non-UTF-8) bytes.
            0 => (0..(next() % 300))
                .map(|_| {
                    let b = (next() % 223) as u8 + 32;
                    if b == 127 {
                        b'x'
                    } else {
                        b
                    }
                })
                .collect(),
            // 8 KB of the cookie name repeated.
            1 => format!("id={cookie};").repeat(8 * 1024 / 46).into_bytes(),
            // An 8 KB value.
            2 => format!("id={}", "A".repeat(8 * 1024)).into_bytes(),
            // Separators only.
            3 => ";=; ;==;id=;id"
                .repeat((next() % 50 + 1) as usize)
                .into_bytes(),
            // Non-UTF-8 around a valid cookie.
            _ => {
                let mut v = vec![0xff, 0xfe, b';', b' '];
                v.extend_from_slice(format!("id={cookie}").as_bytes());
                v.extend_from_slice(&[b';', 0xc3, 0x28]);
                v
            }
        };
        let Ok(hv) = axum::http::HeaderValue::from_bytes(&value) else {
            continue;
        };
        let req = Request::post("/set/b/2")
            .header(header::COOKIE, hv)
            .body(Body::empty())
            .unwrap();
        let r = app.raw(req).await;
        assert!(!r.status.is_server_error(), "case {i}: {}", r.status);
    }
}

/// A stored value read as a type it no longer deserializes into (the app's
/// type changed between releases) is absent, with a warning: never a `5xx`,
/// and the stored value is left as it was.
pub async fn value_of_another_type_reads_as_absent_not_a_server_error(store: Store) {
    let app = App::new(store);
    let cookie = app.session_with("n", "seven").await;
    let r = app.send("GET", "/get-number/n", Some(&cookie)).await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "none"));
    let r = app.send("GET", "/get/n", Some(&cookie)).await;
    assert_eq!(r.body, "\"seven\"");
}

pub async fn cycle_id_keeps_data_and_retires_the_old_id(store: Store) {
    let app = App::new(store);
    let old = app.session_with("a", "1").await;
    let r = app.send("POST", "/cycle", Some(&old)).await;
    let new = r.cookie().expect("rotation sets a new cookie");
    assert_ne!(new, old);
    assert_eq!(app.send("GET", "/get/a", Some(&new)).await.body, "\"1\"");
    assert_eq!(app.send("GET", "/get/a", Some(&old)).await.body, "none");
}

pub async fn delete_removes_server_side_and_sends_a_matching_removal_cookie(store: Store) {
    let app = App::new(store);
    let cookie = app.session_with("a", "1").await;
    let r = app.send("POST", "/delete", Some(&cookie)).await;
    assert!(r.removes_cookie(), "{:?}", r.set_cookies());
    let removal = &r.set_cookies()[0];
    for attr in ["HttpOnly", "Secure", "SameSite=Lax", "Path=/"] {
        assert!(removal.contains(attr), "{removal} lacks {attr}");
    }
    // Replaying the old cookie finds nothing.
    assert_eq!(app.send("GET", "/get/a", Some(&cookie)).await.body, "none");
}

pub async fn hundred_concurrent_writers_of_different_keys_lose_none(store: Store) {
    let app = Arc::new(App::new(store));
    let cookie = app.session_with("seed", "0").await;
    let mut tasks = Vec::new();
    for i in 0..100 {
        let app = app.clone();
        let cookie = cookie.clone();
        tasks.push(tokio::spawn(async move {
            let r = app
                .send("POST", &format!("/set/k{i}/v{i}"), Some(&cookie))
                .await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    for i in 0..100 {
        let r = app.send("GET", &format!("/get/k{i}"), Some(&cookie)).await;
        assert_eq!(r.body, format!("\"v{i}\""), "key k{i} was lost");
    }
}

pub async fn logout_during_an_in_flight_request_is_not_resurrected(store: Store) {
    let app = Arc::new(App::new(store));
    let cookie = app.session_with("a", "1").await;
    let slow = {
        let app = app.clone();
        let cookie = cookie.clone();
        tokio::spawn(async move { app.send("POST", "/wait/late", Some(&cookie)).await })
    };
    app.gate.loaded.notified().await;
    let r = app.send("POST", "/delete", Some(&cookie)).await;
    assert!(r.removes_cookie());
    app.gate.release.notify_one();
    let slow = slow.await.unwrap();
    assert!(
        slow.cookie().is_none(),
        "the slow request must not re-issue the session"
    );
    assert_eq!(app.send("GET", "/get/a", Some(&cookie)).await.body, "none");
    assert_eq!(
        app.send("GET", "/get/late", Some(&cookie)).await.body,
        "none"
    );
}

pub async fn server_error_response_saves_nothing(store: Store) {
    let app = App::new(store);
    let cookie = app.session_with("a", "1").await;
    let r = app.send("POST", "/fail/b", Some(&cookie)).await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(r.set_cookies().is_empty());
    assert_eq!(app.send("GET", "/get/b", Some(&cookie)).await.body, "none");
}

pub async fn server_error_response_saves_when_configured(store: Store) {
    let app = App::with(store, |b| b.with_save_on_server_error(true));
    let cookie = app.session_with("a", "1").await;
    app.send("POST", "/fail/b", Some(&cookie)).await;
    assert_eq!(app.send("GET", "/get/b", Some(&cookie)).await.body, "\"x\"");
}

pub async fn idle_session_expires(store: Store) {
    let app = App::with(store, |b| b.with_idle_timeout(Duration::minutes(30)));
    let cookie = app.session_with("a", "1").await;
    app.clock.advance(Duration::minutes(29));
    assert_eq!(app.send("GET", "/get/a", Some(&cookie)).await.body, "\"1\"");
    // That read refreshed the idle deadline: 29 more minutes are fine.
    app.clock.advance(Duration::minutes(29));
    assert_eq!(app.send("GET", "/get/a", Some(&cookie)).await.body, "\"1\"");
    app.clock.advance(Duration::minutes(31));
    assert_eq!(app.send("GET", "/get/a", Some(&cookie)).await.body, "none");
}

pub async fn active_session_past_its_absolute_deadline_expires(store: Store) {
    let app = App::with(store, |b| {
        b.with_idle_timeout(Duration::minutes(30))
            .with_absolute_timeout(Some(Duration::hours(2)))
    });
    let cookie = app.session_with("a", "1").await;
    // Active every 20 minutes, with a rotation on the way: still capped at 2 hours.
    let mut cookie = cookie;
    for step in 0..5 {
        app.clock.advance(Duration::minutes(20));
        let r = app
            .send("POST", &format!("/set/s{step}/x"), Some(&cookie))
            .await;
        assert_eq!(r.status, StatusCode::OK);
        if step == 2 {
            cookie = app
                .send("POST", "/cycle", Some(&cookie))
                .await
                .cookie()
                .unwrap();
        }
    }
    app.clock.advance(Duration::minutes(19));
    assert_eq!(app.send("GET", "/get/a", Some(&cookie)).await.body, "\"1\"");
    app.clock.advance(Duration::minutes(2));
    assert_eq!(app.send("GET", "/get/a", Some(&cookie)).await.body, "none");
}

/// Follows the cookie as a browser does: a response that re-issues it
/// (cookie sessions re-seal on every touch) replaces it.
fn follow(cookie: &mut String, r: &crate::support::Reply) {
    if let Some(c) = r.cookie() {
        *cookie = c;
    }
}

pub async fn short_idle_timeout_is_kept_alive_by_reads_and_ends_after_it(store: Store) {
    // tower-sessions' README uses a 10-second inactivity expiry; kiosks and
    // tests use shorter ones. They build, and the touch interval follows.
    let app = App::with(store, |b| b.with_idle_timeout(Duration::seconds(2)));
    let mut cookie = app.session_with("a", "1").await;
    for second in 1..=5 {
        app.clock.advance(Duration::seconds(1));
        let r = app.send("GET", "/get/a", Some(&cookie)).await;
        assert_eq!(r.body, "\"1\"", "read every second: alive at {second} s");
        assert_eq!(
            r.max_age(),
            Some(2),
            "the cookie's Max-Age follows the idle timeout"
        );
        follow(&mut cookie, &r);
    }
    app.clock.advance(Duration::seconds(2));
    assert_eq!(app.send("GET", "/get/a", Some(&cookie)).await.body, "none");
}

pub async fn short_absolute_timeout_ends_a_session_written_every_second(store: Store) {
    let app = App::with(store, |b| {
        b.with_idle_timeout(Duration::seconds(2))
            .with_absolute_timeout(Some(Duration::seconds(4)))
    });
    let mut cookie = app.session_with("a", "1").await;
    for second in 1..=3 {
        app.clock.advance(Duration::seconds(1));
        let r = app
            .send("POST", &format!("/set/s{second}/x"), Some(&cookie))
            .await;
        assert_eq!(r.status, StatusCode::OK);
        follow(&mut cookie, &r);
        assert_eq!(app.send("GET", "/get/a", Some(&cookie)).await.body, "\"1\"");
    }
    app.clock.advance(Duration::seconds(1));
    assert_eq!(app.send("GET", "/get/a", Some(&cookie)).await.body, "none");
}

pub async fn short_per_session_inactivity_expiry_is_kept_alive_by_reads(store: Store) {
    // The layer's idle timeout is 2 hours; this one session's is 10 s.
    let app = App::new(store);
    let r = app.send("POST", "/expiry-secs/10", None).await;
    let mut cookie = r.cookie().expect("a session");
    for second in (5..=60).step_by(5) {
        app.clock.advance(Duration::seconds(5));
        let r = app.send("GET", "/get/k", Some(&cookie)).await;
        assert_eq!(r.body, "\"v\"", "read every 5 s: alive at {second} s");
        follow(&mut cookie, &r);
    }
    app.clock.advance(Duration::seconds(10));
    assert_eq!(app.send("GET", "/get/k", Some(&cookie)).await.body, "none");
}

pub async fn reads_touch_at_most_once_per_interval(store: Store) {
    let app = App::with(store, |b| {
        b.with_idle_timeout(Duration::minutes(30))
            .with_touch_interval(Duration::minutes(5))
    });
    let cookie = app.session_with("a", "1").await;
    let writes = app.store.writes();
    app.clock.advance(Duration::minutes(4));
    let r = app.send("GET", "/get/a", Some(&cookie)).await;
    assert!(r.set_cookies().is_empty());
    assert_eq!(app.store.writes(), writes);
    app.clock.advance(Duration::minutes(2));
    let r = app.send("GET", "/get/a", Some(&cookie)).await;
    assert_eq!(app.store.writes(), writes + 1, "one touch");
    assert_eq!(r.max_age(), Some(30 * 60), "the cookie's deadline moved");
    assert_eq!(r.cookie().as_deref(), Some(cookie.as_str()), "same ID");
    let r = app.send("GET", "/get/a", Some(&cookie)).await;
    assert!(r.set_cookies().is_empty());
    assert_eq!(app.store.writes(), writes + 1);
}

pub async fn browser_session_cookie_has_no_max_age(store: Store) {
    let app = App::with(store, |b| b.with_browser_session_cookie(true));
    let r = app.send("POST", "/set/a/1", None).await;
    assert!(r.cookie().is_some());
    assert_eq!(r.max_age(), None);
}

pub async fn remove_and_clear_persist(store: Store) {
    let app = App::new(store);
    let cookie = app.session_with("a", "1").await;
    app.send("POST", "/set/b/2", Some(&cookie)).await;
    assert_eq!(
        app.send("POST", "/remove/a", Some(&cookie)).await.body,
        "Some(\"1\")"
    );
    assert_eq!(app.send("GET", "/get/a", Some(&cookie)).await.body, "none");
    assert_eq!(app.send("GET", "/get/b", Some(&cookie)).await.body, "\"2\"");
    app.send("POST", "/clear", Some(&cookie)).await;
    assert_eq!(app.send("GET", "/get/b", Some(&cookie)).await.body, "none");
}

pub async fn explicit_save_still_sends_the_cookie(store: Store) {
    let app = App::new(store);
    // A new session saved by the handler itself.
    let r = app.send("POST", "/save/a/1", None).await;
    let cookie = r.cookie().expect("the saved session's cookie is sent");
    assert_eq!(app.send("GET", "/get/a", Some(&cookie)).await.body, "\"1\"");
    // A login saved by the handler: the client gets the new ID, not a retired one.
    let r = app.send("POST", "/login-save/u9", Some(&cookie)).await;
    let new = r.cookie().expect("the rotated cookie is sent");
    assert_ne!(new, cookie);
    assert_eq!(app.send("GET", "/user", Some(&new)).await.body, "\"u9\"");
    assert_eq!(app.send("GET", "/get/a", Some(&cookie)).await.body, "none");
}

pub async fn login_counts_the_absolute_deadline_from_the_login(store: Store) {
    let app = App::with(store, |b| {
        b.with_idle_timeout(Duration::hours(6))
            .with_absolute_timeout(Some(Duration::hours(12)))
    });
    let anonymous = app.session_with("a", "1").await;
    app.clock.advance(Duration::hours(5));
    app.send("POST", "/set/b/2", Some(&anonymous)).await;
    app.clock.advance(Duration::hours(5));
    let r = app.send("POST", "/login/u1", Some(&anonymous)).await;
    let cookie = r.cookie().unwrap();
    // 14 hours after the anonymous session began, 4 after the login: still in,
    // and the pre-login data came along.
    app.clock.advance(Duration::hours(4));
    assert_eq!(app.send("GET", "/user", Some(&cookie)).await.body, "\"u1\"");
    assert_eq!(app.send("GET", "/get/a", Some(&cookie)).await.body, "\"1\"");
    assert_eq!(
        app.send("GET", "/get/a", Some(&anonymous)).await.body,
        "none"
    );
}

pub async fn huge_per_session_expiry_does_not_panic(store: Store) {
    let app = App::new(store);
    let r = app.send("POST", "/huge-expiry", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
}

// --------------------------------------------------------------- store level

fn handle(n: u8) -> Handle {
    let mut b = [n; 32];
    b[31] = n.wrapping_mul(7);
    Handle::from_bytes(b)
}

fn record(now: OffsetDateTime) -> Record {
    Record::new(
        now,
        Some(now + Duration::hours(1)),
        Some(now + Duration::hours(8)),
    )
}

pub async fn store_create_refuses_a_live_handle(store: Store) {
    let now = OffsetDateTime::now_utc();
    let h = handle(1);
    assert_eq!(
        store.create(&h, &record(now)).await.unwrap(),
        Created::Stored
    );
    assert_eq!(
        store.create(&h, &record(now)).await.unwrap(),
        Created::Collision
    );
}

pub async fn store_never_returns_an_expired_record(store: Store) {
    let now = OffsetDateTime::now_utc();
    let h = handle(2);
    store.create(&h, &record(now)).await.unwrap();
    assert!(store
        .load(&h, now + Duration::minutes(59))
        .await
        .unwrap()
        .is_some());
    assert!(store
        .load(&h, now + Duration::minutes(61))
        .await
        .unwrap()
        .is_none());
}

/// `holds_expired` tells an expired record (not yet purged) from an unknown
/// handle, for the `session.expired` log event; it never makes one load.
pub async fn store_tells_an_expired_record_from_an_unknown_one(store: Store) {
    let now = OffsetDateTime::now_utc();
    let h = handle(3);
    store.create(&h, &record(now)).await.unwrap();
    let later = now + Duration::minutes(61);
    assert!(
        !store.holds_expired(&h, now).await.unwrap(),
        "live is not expired"
    );
    assert!(store.holds_expired(&h, later).await.unwrap());
    assert!(store.load(&h, later).await.unwrap().is_none());
    assert!(
        !store.holds_expired(&handle(4), later).await.unwrap(),
        "unknown"
    );
    store.delete_expired(later, 100).await.unwrap();
    assert!(!store.holds_expired(&h, later).await.unwrap(), "purged");
}

/// A record is dead the second its deadline passes, whatever a store keeps
/// for its own sweep (the SQL stores' expiry column, Redis's key expiry:
/// the deadline rounded up to the minute): not loaded, not revived by an
/// update, and told from an unknown handle.
pub async fn store_treats_a_record_as_expired_from_its_deadline_to_the_second(store: Store) {
    let now = OffsetDateTime::now_utc();
    let h = handle(5);
    let r = Record::new(now, Some(now + Duration::seconds(1)), None);
    store.create(&h, &r).await.unwrap();
    assert!(store.load(&h, now).await.unwrap().is_some());
    let later = now + Duration::seconds(2);
    assert!(
        store.load(&h, later).await.unwrap().is_none(),
        "loaded past its deadline"
    );
    assert!(
        store.holds_expired(&h, later).await.unwrap(),
        "expired, not unknown"
    );
    let touch = keyfob::Update::touch(later, Some(later + Duration::hours(1)));
    assert_eq!(
        store.update(&h, &touch, later).await.unwrap(),
        Updated::Gone,
        "revived past its deadline"
    );
    assert!(store.load(&h, later).await.unwrap().is_none());
}

/// A handle whose record is past its deadline is free again, from that
/// second (not from when the store's own sweep would remove it).
pub async fn store_create_replaces_a_record_past_its_deadline(store: Store) {
    let now = OffsetDateTime::now_utc();
    let h = handle(6);
    let old = Record::new(now, Some(now + Duration::seconds(1)), None);
    store.create(&h, &old).await.unwrap();
    let later = now + Duration::seconds(2);
    let new = Record::new(later, Some(later + Duration::hours(1)), None);
    assert_eq!(store.create(&h, &new).await.unwrap(), Created::Stored);
    let loaded = store
        .load(&h, later)
        .await
        .unwrap()
        .expect("the new record");
    assert_eq!(loaded.created(), new.created());
}

pub async fn store_purges_expired_records_in_batches(store: Store) {
    let now = OffsetDateTime::now_utc();
    for n in 10..30u8 {
        store.create(&handle(n), &record(now)).await.unwrap();
    }
    let later = now + Duration::hours(2);
    let mut total = 0;
    loop {
        let n = store.delete_expired(later, 7).await.unwrap();
        assert!(n <= 7);
        total += n;
        if n < 7 {
            break;
        }
    }
    assert!(total >= 20, "purged {total}");
    assert!(
        store.load(&handle(10), now).await.unwrap().is_none(),
        "purged for good"
    );
}

pub async fn store_update_of_a_deleted_record_is_gone(store: Store) {
    let now = OffsetDateTime::now_utc();
    let h = handle(3);
    store.create(&h, &record(now)).await.unwrap();
    assert!(store.delete(&h).await.unwrap());
    assert!(!store.delete(&h).await.unwrap());
    let touch = touch_update(now);
    assert_eq!(store.update(&h, &touch, now).await.unwrap(), Updated::Gone);
    assert!(store.load(&h, now).await.unwrap().is_none());
}

fn touch_update(now: OffsetDateTime) -> keyfob::Update {
    keyfob::Update::touch(now, Some(now + Duration::hours(1)))
}

pub async fn store_lists_and_deletes_by_owner(store: Store) {
    let app = App::new(store.clone());
    // Log in three sessions as "u1" and one as "u2" through the real layer.
    let mut cookies = Vec::new();
    for owner in ["u1", "u1", "u1", "u2"] {
        let r = app.send("POST", &format!("/login/{owner}"), None).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        cookies.push(r.cookie().unwrap());
    }
    let now = keyfob::Clock::now(&app.clock);
    let listed = store.list_by_owner("u1", now, 100).await.unwrap();
    assert_eq!(listed.len(), 3);
    let keep = listed[0].handle;
    assert_eq!(store.delete_by_owner("u1", Some(&keep)).await.unwrap(), 2);
    let listed = store.list_by_owner("u1", now, 100).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].handle, keep);
    assert_eq!(store.list_by_owner("u2", now, 100).await.unwrap().len(), 1);
    assert_eq!(store.delete_by_owner("u2", None).await.unwrap(), 1);
    assert_eq!(
        app.send("GET", "/user", Some(&cookies[3])).await.body,
        "none"
    );
}

// ------------------------------------------------- login and user's sessions

async fn login(app: &App, owner: &str, cookie: Option<&str>) -> String {
    let r = app.send("POST", &format!("/login/{owner}"), cookie).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.cookie().expect("login sets a new cookie")
}

pub async fn reserved_keys_cannot_be_written_or_read_through_the_public_api(store: Store) {
    // The harness's `/set/{key}/{value}` stores a client-chosen key name, as
    // a preferences form might: a visitor must not be able to log in that way.
    let app = App::new(store);
    let r = app
        .send("POST", "/set/keyfob.user/%22mallory%22", None)
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert!(r.cookie().is_none(), "nothing was stored");
    let anon = app.session_with("a", "1").await;
    for key in ["keyfob.user", "keyfob.csrf", "keyfob.anything"] {
        let r = app
            .send("POST", &format!("/set/{key}/x"), Some(&anon))
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{key}");
    }
    assert_eq!(user_of(&app, &anon).await, "none");
    assert_eq!(app.send("GET", "/get/a", Some(&anon)).await.body, "\"1\"");
    // A logged-in session: its user is not readable or removable by key name.
    let alice = login(&app, "alice", None).await;
    assert_eq!(
        app.send("GET", "/get/keyfob.user", Some(&alice)).await.body,
        "none"
    );
    let r = app.send("POST", "/remove/keyfob.user", Some(&alice)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(user_of(&app, &alice).await, "\"alice\"");
}

pub async fn clear_logs_out_and_leaves_no_owner_behind(store: Store) {
    let app = App::new(store);
    let first = login(&app, "u1", None).await;
    app.clock.advance(Duration::seconds(1));
    let second = login(&app, "u1", None).await;
    let r = app.send("POST", "/clear", Some(&first)).await;
    assert_eq!(r.status, StatusCode::OK);
    let mut first = first;
    follow(&mut first, &r);
    assert_eq!(user_of(&app, &first).await, "none");
    // The cleared session is nobody's now: not listed, and it cannot revoke.
    let listed: Vec<serde_json::Value> =
        serde_json::from_str(&app.send("GET", "/sessions", Some(&second)).await.body).unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        app.send("POST", "/revoke-others", Some(&first)).await.body,
        "0"
    );
    assert_eq!(user_of(&app, &second).await, "\"u1\"");
}

async fn handle_of(app: &App, cookie: &str) -> String {
    app.send("GET", "/id", Some(cookie)).await.body
}

async fn user_of(app: &App, cookie: &str) -> String {
    app.send("GET", "/user", Some(cookie)).await.body
}

pub async fn login_as_another_user_drops_the_previous_users_data(store: Store) {
    let app = App::new(store);
    let anon = app.session_with("cart", "3").await;
    let alice = login(&app, "alice", Some(&anon)).await;
    // Anonymous data survives the first login (a cart), under a new ID.
    assert_eq!(
        app.send("GET", "/get/cart", Some(&alice)).await.body,
        "\"3\""
    );
    app.send("POST", "/set/secret/alices", Some(&alice)).await;
    let again = login(&app, "alice", Some(&alice)).await;
    assert_eq!(
        app.send("GET", "/get/secret", Some(&again)).await.body,
        "\"alices\""
    );
    let bob = login(&app, "bob", Some(&again)).await;
    for key in ["secret", "cart"] {
        assert_eq!(
            app.send("GET", &format!("/get/{key}"), Some(&bob))
                .await
                .body,
            "none",
            "{key}"
        );
    }
    assert_eq!(user_of(&app, &bob).await, "\"bob\"");
    let now = keyfob::Clock::now(&app.clock);
    assert!(app
        .store
        .list_by_owner("alice", now, 100)
        .await
        .unwrap()
        .is_empty());
}

pub async fn list_sessions_shows_the_owners_sessions_and_marks_the_current_one(store: Store) {
    let app = App::new(store);
    let a = login(&app, "u1", None).await;
    let b = login(&app, "u1", None).await;
    login(&app, "u2", None).await;
    let r = app.send("GET", "/sessions", Some(&a)).await;
    let list: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2, "{}", r.body);
    let current: Vec<_> = list.iter().filter(|s| s["current"] == true).collect();
    assert_eq!(current.len(), 1);
    assert_eq!(current[0]["handle"], handle_of(&app, &a).await.as_str());
    for s in list {
        for field in ["created_at", "last_seen", "expires_at"] {
            let t = s[field].as_str().unwrap();
            assert!(
                OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).is_ok(),
                "{t}"
            );
        }
        // A handle is never a session cookie.
        let handle = s["handle"].as_str().unwrap();
        assert_eq!(user_of(&app, handle).await, "none");
    }
    let hb = handle_of(&app, &b).await;
    assert!(list.iter().any(|s| s["handle"] == hb.as_str()));
    assert_eq!(app.send("GET", "/sessions", None).await.body, "[]");
}

pub async fn revoke_others_ends_every_other_session_of_the_owner_only(store: Store) {
    let app = App::new(store);
    let mine: Vec<String> = [
        login(&app, "u1", None).await,
        login(&app, "u1", None).await,
        login(&app, "u1", None).await,
    ]
    .into();
    let theirs = login(&app, "u2", None).await;
    let r = app.send("POST", "/revoke-others", Some(&mine[0])).await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "2"));
    assert_eq!(user_of(&app, &mine[0]).await, "\"u1\"");
    for other in &mine[1..] {
        assert_eq!(user_of(&app, other).await, "none");
    }
    assert_eq!(user_of(&app, &theirs).await, "\"u2\"");
    assert_eq!(
        app.send("POST", "/revoke-others", Some(&mine[0]))
            .await
            .body,
        "0"
    );
}

pub async fn revoke_by_handle_ends_only_the_owners_own_sessions(store: Store) {
    let app = App::new(store);
    let a1 = login(&app, "u1", None).await;
    let a2 = login(&app, "u1", None).await;
    let b = login(&app, "u2", None).await;
    let hb = handle_of(&app, &b).await;
    let r = app.send("POST", &format!("/revoke/{hb}"), Some(&a1)).await;
    assert_eq!(r.body, "false", "another owner's session is not found");
    assert_eq!(user_of(&app, &b).await, "\"u2\"");
    assert_eq!(
        app.send("POST", "/revoke/not-a-handle", Some(&a1))
            .await
            .body,
        "false"
    );
    let h2 = handle_of(&app, &a2).await;
    assert_eq!(
        app.send("POST", &format!("/revoke/{h2}"), Some(&a1))
            .await
            .body,
        "true"
    );
    assert_eq!(user_of(&app, &a2).await, "none");
    assert_eq!(user_of(&app, &a1).await, "\"u1\"");
    // Anonymous sessions own nothing.
    let anon = app.session_with("k", "v").await;
    let h1 = handle_of(&app, &a1).await;
    assert_eq!(
        app.send("POST", &format!("/revoke/{h1}"), Some(&anon))
            .await
            .body,
        "false"
    );
    assert_eq!(user_of(&app, &a1).await, "\"u1\"");
}

pub async fn revoke_all_ends_every_session_of_the_owner_including_this_one(store: Store) {
    let app = App::new(store);
    let a1 = login(&app, "u1", None).await;
    let a2 = login(&app, "u1", None).await;
    let b = login(&app, "u2", None).await;
    let r = app.send("POST", "/revoke-all", Some(&a1)).await;
    assert_eq!(r.body, "2");
    assert!(r.removes_cookie());
    assert_eq!(user_of(&app, &a1).await, "none");
    assert_eq!(user_of(&app, &a2).await, "none");
    assert_eq!(user_of(&app, &b).await, "\"u2\"");
}

pub async fn rotation_racing_a_revocation_does_not_bring_the_session_back(store: Store) {
    let app = Arc::new(App::new(store));
    let victim = login(&app, "u1", None).await;
    let other = login(&app, "u1", None).await;
    // The victim's request has loaded its session and is about to rotate it
    // (a privilege change) when the user logs out everywhere from elsewhere.
    let in_flight = {
        let (app, victim) = (app.clone(), victim.clone());
        tokio::spawn(async move { app.send("POST", "/wait-cycle", Some(&victim)).await })
    };
    app.gate.loaded.notified().await;
    assert_eq!(
        app.send("POST", "/revoke-all", Some(&other)).await.body,
        "2"
    );
    app.gate.release.notify_one();
    let r = in_flight.await.unwrap();
    for cookie in [Some(victim), r.cookie()].into_iter().flatten() {
        assert_eq!(
            user_of(&app, &cookie).await,
            "none",
            "a revoked session came back"
        );
    }
}

pub async fn login_past_the_per_user_cap_ends_the_oldest_sessions(store: Store) {
    let app = App::with(store, |b| b.with_max_sessions_per_user(Some(3)));
    let mut mine = Vec::new();
    for _ in 0..5 {
        mine.push(login(&app, "u1", None).await);
        app.clock.advance(Duration::seconds(1));
    }
    let theirs = login(&app, "u2", None).await;
    for (i, cookie) in mine.iter().enumerate() {
        let want = if i < 2 { "none" } else { "\"u1\"" };
        assert_eq!(user_of(&app, cookie).await, want, "login {i}");
    }
    assert_eq!(user_of(&app, &theirs).await, "\"u2\"");
    let listed: Vec<serde_json::Value> =
        serde_json::from_str(&app.send("GET", "/sessions", Some(&mine[4])).await.body).unwrap();
    assert_eq!(listed.len(), 3);
}

pub async fn store_lists_at_most_the_limit_of_an_owners_sessions(store: Store) {
    let app = App::with(store.clone(), |b| b.with_max_sessions_per_user(None));
    for _ in 0..7 {
        login(&app, "many", None).await;
    }
    let now = keyfob::Clock::now(&app.clock);
    assert_eq!(store.list_by_owner("many", now, 3).await.unwrap().len(), 3);
    assert_eq!(
        store.list_by_owner("many", now, 100).await.unwrap().len(),
        7
    );
}

pub async fn settings_that_cannot_work_are_refused_at_build(store: Store) {
    let refused = [
        keyfob::SessionLayer::builder(store.clone()).with_idle_timeout(Duration::days(365 * 200)),
        keyfob::SessionLayer::builder(store.clone()).with_absolute_timeout(Some(Duration::MAX)),
        keyfob::SessionLayer::builder(store.clone())
            .with_idle_timeout(Duration::minutes(5))
            .with_touch_interval(Duration::minutes(5)),
        keyfob::SessionLayer::builder(store.clone()).with_max_sessions_per_user(Some(0)),
    ];
    for builder in refused {
        let err = builder.build().unwrap_err();
        assert_eq!(err.kind(), keyfob::ErrorKind::Config, "{err}");
    }
}
