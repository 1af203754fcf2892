//! Moving live sessions from a real tower-sessions 0.14 SQLite store (filled
//! through tower-sessions itself) into keyfob, with `keyfob-demo migrate`.

use std::sync::Arc;

use axum::{routing::get, Router};
use keyfob::time;
use keyfob_demo::{config::StoreUrl, migrate::Args};
use reqwest::StatusCode;
use sqlx::SqlitePool;
use tower_sessions::{
    session::{Id, Record},
    SessionManagerLayer, SessionStore as _,
};
use tower_sessions_sqlx_store::SqliteStore;

use crate::common::{scratch_dir, Client, Server};

/// An app on tower-sessions: `/visit` counts visits under the same key the
/// demo's `/count` uses, and keeps a name beside it.
async fn serve_tower_sessions(store: SqliteStore) -> Server {
    async fn visit(session: tower_sessions::Session) -> String {
        let n: u64 = session.get("visits").await.unwrap().unwrap_or(0) + 1;
        session.insert("visits", n).await.unwrap();
        session.insert("name", "alice").await.unwrap();
        format!("{n}")
    }
    let router = Router::new()
        .route("/visit", get(visit))
        .layer(SessionManagerLayer::new(store).with_secure(false));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    Server {
        base: format!("http://{addr}"),
    }
}

async fn tower_sessions_sqlite(path: &std::path::Path) -> SqliteStore {
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let store = SqliteStore::new(SqlitePool::connect(&url).await.unwrap());
    store.migrate().await.unwrap();
    store
}

fn args(from: &std::path::Path, to: &std::path::Path) -> Args {
    Args {
        from: format!("sqlite://{}", from.display()),
        to: StoreUrl::Sqlite(format!("sqlite://{}", to.display())),
        checkpoint: None,
        table: None,
        schema: None,
        prefix: String::new(),
        batch: 1000,
    }
}

#[tokio::test]
async fn a_tower_sessions_cookie_reaches_its_data_on_keyfob_once_and_is_rotated() {
    let dir = scratch_dir("migrate");
    let (old_db, new_db) = (dir.join("tower.db"), dir.join("keyfob.db"));
    let store = tower_sessions_sqlite(&old_db).await;

    // Three visits on tower-sessions.
    let old_app = serve_tower_sessions(store.clone()).await;
    let mut browser = Client::new(&old_app);
    for _ in 0..3 {
        assert_eq!(browser.get("/visit").await.status, StatusCode::OK);
    }
    let old_cookie = browser.cookie.clone().unwrap();
    assert_eq!(old_cookie.len(), 22, "a tower-sessions ID: {old_cookie}");

    // An expired session and an undecodable row beside it.
    let mut expired = Record {
        id: Id::default(),
        data: Default::default(),
        expiry_date: time::OffsetDateTime::now_utc() - time::Duration::minutes(1),
    };
    store.create(&mut expired).await.unwrap();
    let pool = SqlitePool::connect(&format!("sqlite://{}", old_db.display()))
        .await
        .unwrap();
    sqlx::query("insert into tower_sessions (id, data, expiry_date) values (?, ?, ?)")
        .bind("AAAAAAAAAAAAAAAAAAAAAA")
        .bind(&b"\xc1 not msgpack"[..])
        .bind(0i64)
        .execute(&pool)
        .await
        .unwrap();

    let report = keyfob_demo::migrate::run(args(&old_db, &new_db))
        .await
        .unwrap();
    assert_eq!(
        (
            report.total,
            report.copied,
            report.expired,
            report.undecodable
        ),
        (3, 1, 1, 1)
    );
    // The source is untouched.
    let rows: i64 = sqlx::query_scalar("select count(*) from tower_sessions")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 3);
    // The keyfob database holds no old cookie value, only its hash.
    for entry in std::fs::read_dir(&dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name().to_string_lossy().starts_with("keyfob.db") {
            // The -wal/-shm files vanish when the migration's last connection
            // closes, which may be just now.
            let bytes = match std::fs::read(entry.path()) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                other => other.unwrap(),
            };
            assert!(!bytes.windows(22).any(|w| w == old_cookie.as_bytes()));
        }
    }

    // keyfob serves the same session under the old cookie, once.
    let dest = keyfob_demo::open_store(&StoreUrl::Sqlite(format!("sqlite://{}", new_db.display())))
        .await
        .unwrap();
    let config = keyfob_demo::config::Config {
        legacy_ids: true,
        insecure_cookies: true,
        ..Default::default()
    };
    let new_app = serve_keyfob(dest.clone(), &config).await;
    let mut browser = Client::new(&new_app);
    browser.cookie = Some(old_cookie.clone());
    let r = browser.get("/count").await;
    assert_eq!(
        r.body,
        "You have visited this page 4 time(s) in this session."
    );
    let rotated = browser.cookie.clone().unwrap();
    assert_eq!(rotated.len(), 43, "a full-strength keyfob ID: {rotated}");
    assert!(r.set_cookie().unwrap().contains("Max-Age="));
    let r = browser.get("/count").await;
    assert_eq!(
        r.body,
        "You have visited this page 5 time(s) in this session."
    );
    // Same ID from now on (a write refreshes Max-Age, nothing else).
    assert_eq!(browser.cookie.as_deref(), Some(rotated.as_str()));

    // The old cookie, replayed after the rotation, has no session.
    let mut replay = Client::new(&new_app);
    replay.cookie = Some(old_cookie.clone());
    let r = replay.get("/count").await;
    assert_eq!(
        r.body,
        "You have visited this page 1 time(s) in this session."
    );
    assert_ne!(replay.cookie.as_deref(), Some(old_cookie.as_str()));

    // Without --legacy-ids the old cookie is no session at all.
    let strict = serve_keyfob(
        dest,
        &keyfob_demo::config::Config {
            insecure_cookies: true,
            ..Default::default()
        },
    )
    .await;
    let mut other = Client::new(&strict);
    other.cookie = Some(old_cookie);
    assert_eq!(
        other.get("/count").await.body,
        "You have visited this page 1 time(s) in this session."
    );
}

#[tokio::test]
async fn a_migration_resumes_from_its_checkpoint_and_copies_nothing_twice() {
    let dir = scratch_dir("migrate-resume");
    let (old_db, new_db) = (dir.join("tower.db"), dir.join("keyfob.db"));
    let store = tower_sessions_sqlite(&old_db).await;
    let tomorrow = time::OffsetDateTime::now_utc() + time::Duration::days(1);
    for i in 0..25 {
        let mut record = Record {
            id: Id::default(),
            data: [("n".to_string(), serde_json::json!(i))].into(),
            expiry_date: tomorrow,
        };
        store.create(&mut record).await.unwrap();
    }
    let checkpoint = dir.join("checkpoint");
    let mut a = args(&old_db, &new_db);
    a.checkpoint = Some(checkpoint.clone());
    a.batch = 10;
    let first = keyfob_demo::migrate::run(a.clone()).await.unwrap();
    assert_eq!((first.copied, first.read), (25, 25));
    // A rerun after a "crash" in the last batch: the checkpoint points at the 20th row.
    let pool = SqlitePool::connect(&format!("sqlite://{}", old_db.display()))
        .await
        .unwrap();
    let twentieth: String =
        sqlx::query_scalar("select id from tower_sessions order by id limit 1 offset 19")
            .fetch_one(&pool)
            .await
            .unwrap();
    std::fs::write(&checkpoint, &twentieth).unwrap();
    let second = keyfob_demo::migrate::run(a).await.unwrap();
    assert_eq!(
        (
            second.resumed,
            second.copied,
            second.already_present,
            second.read
        ),
        (20, 0, 5, 25)
    );
}

async fn serve_keyfob(
    store: Arc<dyn keyfob::SessionStore>,
    config: &keyfob_demo::config::Config,
) -> Server {
    crate::common::serve_with(store, keyfob::keys::Keyring::generate().unwrap(), config).await
}

/// A bulk fixture (rows as tower-sessions-sqlx-store's `create` writes
/// them: `Id` text, MessagePack of the `Record`, inserted in one transaction)
/// migrated whole. With `KEYFOB_MIGRATE_ROWS=100000` and `--release` it is the
/// rate measurement quoted in MIGRATING.md:
///
/// ```text
/// KEYFOB_MIGRATE_ROWS=100000 cargo test --release -p keyfob-demo --test http \
///     a_bulk_store_migrates_every_live_session -- --nocapture
/// ```
#[tokio::test]
async fn a_bulk_store_migrates_every_live_session() {
    // 2,000 rows by default; KEYFOB_MIGRATE_ROWS=100000 with a release build
    // gives the rate quoted in MIGRATING.md (printed with --nocapture).
    let rows: usize = std::env::var("KEYFOB_MIGRATE_ROWS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2_000);
    let dir = scratch_dir("migrate-bulk");
    let (old_db, new_db) = (dir.join("tower.db"), dir.join("keyfob.db"));
    let store = tower_sessions_sqlite(&old_db).await;
    let pool = SqlitePool::connect(&format!("sqlite://{}", old_db.display()))
        .await
        .unwrap();
    let expires = time::OffsetDateTime::now_utc() + time::Duration::days(7);
    let mut tx = pool.begin().await.unwrap();
    for i in 0..rows {
        let record = Record {
            id: Id::default(),
            data: [
                ("user_id".to_string(), serde_json::json!(i)),
                ("name".to_string(), serde_json::json!(format!("user{i}"))),
                ("visits".to_string(), serde_json::json!(3)),
            ]
            .into(),
            expiry_date: expires,
        };
        sqlx::query("insert into tower_sessions (id, data, expiry_date) values (?, ?, ?)")
            .bind(record.id.to_string())
            .bind(rmp_serde::to_vec(&record).unwrap())
            .bind(record.expiry_date)
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    drop(store);
    let started = std::time::Instant::now();
    let done = keyfob_demo::migrate::run(args(&old_db, &new_db))
        .await
        .unwrap();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "migrated {rows} sessions in {secs:.1} s: {:.0} sessions/s",
        rows as f64 / secs
    );
    assert_eq!((done.read, done.copied), (rows as u64, rows as u64));
}

/// Two live sessions and an expired one in a tower-sessions store, written by
/// the store itself; migrated into SQLite; one of them then served by keyfob.
async fn migrate_from_a_server(
    store: impl tower_sessions::SessionStore,
    from: String,
    table: &str,
    name: &str,
) {
    let tomorrow = time::OffsetDateTime::now_utc() + time::Duration::days(1);
    let mut live = Vec::new();
    for visits in [2, 7] {
        let mut record = Record {
            id: Id::default(),
            data: [("visits".to_string(), serde_json::json!(visits))].into(),
            expiry_date: tomorrow,
        };
        store.create(&mut record).await.unwrap();
        live.push(record.id.to_string());
    }
    let mut expired = Record {
        id: Id::default(),
        data: Default::default(),
        expiry_date: time::OffsetDateTime::now_utc() - time::Duration::minutes(1),
    };
    store.create(&mut expired).await.unwrap();

    let dir = scratch_dir(name);
    let new_db = dir.join("keyfob.db");
    let mut a = args(&dir.join("unused"), &new_db);
    a.from = from;
    a.table = Some(table.to_owned());
    let report = keyfob_demo::migrate::run(a).await.unwrap();
    assert_eq!(
        (
            report.total,
            report.copied,
            report.expired,
            report.undecodable
        ),
        (3, 2, 1, 0)
    );

    let dest = keyfob_demo::open_store(&StoreUrl::Sqlite(format!("sqlite://{}", new_db.display())))
        .await
        .unwrap();
    let config = keyfob_demo::config::Config {
        legacy_ids: true,
        insecure_cookies: true,
        ..Default::default()
    };
    let app = serve_keyfob(dest, &config).await;
    let mut browser = Client::new(&app);
    browser.cookie = Some(live[0].clone());
    assert_eq!(
        browser.get("/count").await.body,
        "You have visited this page 3 time(s) in this session."
    );
    assert_eq!(browser.cookie.as_ref().map(String::len), Some(43));
}

#[tokio::test]
async fn live_sessions_move_from_a_tower_sessions_postgres_table() {
    let url = crate::common::server_url("KEYFOB_TEST_POSTGRES_URL");
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let table = format!("ts_{}", std::process::id());
    let store = tower_sessions_sqlx_store::PostgresStore::new(pool)
        .with_table_name(&table)
        .unwrap();
    store.migrate().await.unwrap();
    migrate_from_a_server(store, url, &table, "migrate-pg").await;
}

#[tokio::test]
async fn live_sessions_move_from_a_tower_sessions_mysql_table() {
    let url = crate::common::server_url("KEYFOB_TEST_MYSQL_URL");
    let pool = sqlx::MySqlPool::connect(&url).await.unwrap();
    let table = format!("ts_{}", std::process::id());
    let store = tower_sessions_sqlx_store::MySqlStore::new(pool)
        .with_table_name(&table)
        .unwrap();
    store.migrate().await.unwrap();
    migrate_from_a_server(store, url, &table, "migrate-mysql").await;
}

#[tokio::test]
async fn live_sessions_move_from_tower_sessions_redis_keys() {
    // The keys exactly as tower-sessions-redis-store writes them: `prefix` +
    // the ID, the MessagePack of the `Record`, expiring at its `expiry_date`.
    let url = crate::common::server_url("KEYFOB_TEST_REDIS_URL");
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = redis::aio::ConnectionManager::new(client).await.unwrap();
    let prefix = format!("ts{}:", std::process::id());
    let tomorrow = time::OffsetDateTime::now_utc() + time::Duration::days(1);
    let mut ids = Vec::new();
    for visits in 0..30 {
        let record = Record {
            id: Id::default(),
            data: [("visits".to_string(), serde_json::json!(visits))].into(),
            expiry_date: tomorrow,
        };
        let () = redis::cmd("SET")
            .arg(format!("{prefix}{}", record.id))
            .arg(rmp_serde::to_vec(&record).unwrap())
            .arg("EXAT")
            .arg(tomorrow.unix_timestamp())
            .query_async(&mut conn)
            .await
            .unwrap();
        ids.push(record.id.to_string());
    }
    // Not a session: counted, not fatal.
    let () = redis::cmd("SET")
        .arg(format!("{prefix}AAAAAAAAAAAAAAAAAAAAAA"))
        .arg("junk")
        .query_async(&mut conn)
        .await
        .unwrap();

    let dir = scratch_dir("migrate-redis");
    let new_db = dir.join("keyfob.db");
    let mut a = args(&dir.join("unused"), &new_db);
    a.from = url;
    a.prefix = prefix;
    a.batch = 7;
    a.checkpoint = Some(dir.join("checkpoint"));
    let report = keyfob_demo::migrate::run(a).await.unwrap();
    // SCAN may return a key twice; a second copy is "already present".
    assert_eq!(report.copied, 30);
    assert_eq!(report.undecodable, 1);

    let dest = keyfob_demo::open_store(&StoreUrl::Sqlite(format!("sqlite://{}", new_db.display())))
        .await
        .unwrap();
    let config = keyfob_demo::config::Config {
        legacy_ids: true,
        insecure_cookies: true,
        ..Default::default()
    };
    let app = serve_keyfob(dest, &config).await;
    let mut browser = Client::new(&app);
    browser.cookie = Some(ids[9].clone());
    assert_eq!(
        browser.get("/count").await.body,
        "You have visited this page 10 time(s) in this session."
    );
}
