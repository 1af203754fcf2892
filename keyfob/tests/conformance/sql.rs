//! Cases that need to reach into a SQL store's table: corrupted rows,
//! concurrent migrations, hashes at rest.

use std::sync::Arc;

use axum::http::StatusCode;
use keyfob::SessionStore;

use crate::{stores, support::App};

/// Starts a session through the real layer and returns (app, cookie).
async fn session_in(store: Arc<dyn SessionStore>) -> (App, String) {
    let app = App::new(store);
    let cookie = app.session_with("a", "1").await;
    (app, cookie)
}

#[cfg(feature = "sqlite")]
mod sqlite {
    use super::*;
    use keyfob::{Handle, Record, Update};
    use time::{Duration, OffsetDateTime};

    /// Another process's commit to the same file is seen by the very next
    /// load, though the record was in this store's near cache: the
    /// wal-index is checked before a cached record is served.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn another_process_commit_is_seen_before_a_cached_record_is_served() {
        let h = Handle::from_bytes([5; 32]);
        let (here, there) = two_on_one_file(&h).await;
        let now = OffsetDateTime::now_utc();
        for round in 0..20 {
            let cached = here.load(&h, now).await.unwrap().unwrap().version();
            let touch = Update::touch(now, Some(now + Duration::hours(1)));
            there.update(&h, &touch, now).await.unwrap();
            let seen = here.load(&h, now).await.unwrap().unwrap().version();
            assert_eq!(seen, cached + 1, "round {round}: a stale copy was served");
            // And this process's own writes, in between, keep it right too.
            here.update(&h, &touch, now).await.unwrap();
            assert_eq!(
                here.load(&h, now).await.unwrap().unwrap().version(),
                cached + 2
            );
        }
        there.delete(&h).await.unwrap();
        assert!(
            here.load(&h, now).await.unwrap().is_none(),
            "a delete elsewhere, at once"
        );
    }

    /// This store's own commit that restarts the WAL (new salts in the
    /// wal-index header) is not taken for another process's: the near cache
    /// keeps serving. Shown with the app's pool closed afterwards, so that
    /// a load that went to the database would fail.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn own_commit_that_restarts_the_wal_keeps_the_near_cache() {
        let store = stores::sqlite_store().await;
        let now = OffsetDateTime::now_utc();
        let h = Handle::from_bytes([8; 32]);
        store
            .create(&h, &Record::new(now, Some(now + Duration::hours(1)), None))
            .await
            .unwrap();
        let first = store.load(&h, now).await.unwrap().unwrap().version();
        let shm = format!(
            "{}-shm",
            store.pool().connect_options().get_filename().display()
        );
        let touch = Update::touch(now, Some(now + Duration::hours(2)));
        for round in 0..3 {
            // Every frame copied back: the next write starts the WAL over.
            let (busy, log, copied): (i64, i64, i64) =
                sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
                    .fetch_one(store.pool())
                    .await
                    .unwrap();
            assert_eq!((busy, log), (0, copied), "round {round}");
            let salts = |b: Vec<u8>| b[32..40].to_vec();
            let before = salts(std::fs::read(&shm).unwrap());
            store.update(&h, &touch, now).await.unwrap();
            let after = salts(std::fs::read(&shm).unwrap());
            assert_ne!(before, after, "round {round}: the WAL restarted");
        }
        store.pool().close().await;
        let cached = store.load(&h, now).await;
        assert_eq!(
            cached.ok().flatten().map(|r| r.version()),
            Some(first + 3),
            "served from the near cache"
        );
    }

    /// A pool whose in-memory database is private to each connection cannot
    /// be reached by the store's writer (a connection of its own): the store
    /// says so at `migrate`, at start-up, not at every write.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_database_the_writer_cannot_open_is_refused_at_migrate() {
        use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
        // What `migrate` says for a one-connection pool on `options`.
        async fn refused(options: SqliteConnectOptions) -> keyfob::Error {
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(options)
                .await
                .unwrap();
            keyfob::SqliteStore::new(pool).migrate().await.unwrap_err()
        }
        let err = refused(SqliteConnectOptions::new().in_memory(true)).await;
        assert_eq!(err.kind(), keyfob::ErrorKind::Config);
        assert!(err.to_string().contains("private in-memory"), "{err}");
        // A pool that keeps the file's lock for itself shuts the writer out.
        let file = stores::sqlite_store().await;
        let exclusive = SqliteConnectOptions::new()
            .filename(file.pool().connect_options().get_filename())
            .locking_mode(sqlx::sqlite::SqliteLockingMode::Exclusive);
        drop(file);
        let err = refused(exclusive).await;
        assert_eq!(err.kind(), keyfob::ErrorKind::Config);
        assert!(err.to_string().contains("EXCLUSIVE"), "{err}");
    }

    /// Two stores on one file (the second, another "process": a pool and a
    /// writer of its own), `here` with `h` in its near cache.
    async fn two_on_one_file(h: &Handle) -> (keyfob::SqliteStore, keyfob::SqliteStore) {
        let here = stores::sqlite_store().await;
        let url = format!(
            "sqlite://{}",
            here.pool().connect_options().get_filename().display()
        );
        let there = keyfob::SqliteStore::connect(&url).await.unwrap();
        let now = OffsetDateTime::now_utc();
        here.create(h, &Record::new(now, Some(now + Duration::hours(1)), None))
            .await
            .unwrap();
        assert!(here.load(h, now).await.unwrap().is_some());
        (here, there)
    }

    /// A commit that changes nothing (a sweep with nothing expired) does not
    /// move the WAL index's counter; counting it as one would take the next
    /// commit of another process for this one's own.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_commit_that_changes_nothing_does_not_hide_another_process_commit() {
        let h = Handle::from_bytes([6; 32]);
        let (here, there) = two_on_one_file(&h).await;
        let now = OffsetDateTime::now_utc();
        assert_eq!(here.delete_expired(now, 100).await.unwrap(), 0);
        assert!(!here.delete(&Handle::from_bytes([7; 32])).await.unwrap());
        there.delete(&h).await.unwrap();
        assert!(here.load(&h, now).await.unwrap().is_none());
    }

    /// A delete whose caller stopped waiting (a time limit, a client gone)
    /// still commits; the copy in the cache goes with it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_whose_caller_gave_up_still_drops_the_cached_copy() {
        let h = Handle::from_bytes([8; 32]);
        let (here, _there) = two_on_one_file(&h).await;
        // Polled once (the delete is queued for the writer), then dropped.
        let mut delete = here.delete(&h);
        let first = std::future::poll_fn(|cx| {
            std::task::Poll::Ready(std::future::Future::poll(delete.as_mut(), cx))
        })
        .await;
        assert!(first.is_pending(), "the delete was still in flight");
        drop(delete);
        let now = OffsetDateTime::now_utc();
        let mut gone = false;
        for _ in 0..200 {
            if here.load(&h, now).await.unwrap().is_none() {
                gone = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert!(gone, "the deleted session is still served");
        // Gone from the file too, not only from the cache.
        let fresh = keyfob::SqliteStore::new(here.pool().clone()).without_near_cache();
        assert!(fresh.load(&h, now).await.unwrap().is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn corrupted_sqlite_row_reads_as_no_session() {
        let store = stores::sqlite_store().await;
        let pool = store.pool().clone();
        let (app, cookie) = session_in(Arc::new(store)).await;
        sqlx::query("UPDATE keyfob_sessions SET record = '{not json'")
            .execute(&pool)
            .await
            .unwrap();
        let r = app.send("GET", "/get/a", Some(&cookie)).await;
        assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "none"));
        // A write on top of it starts a fresh session instead of failing.
        let r = app.send("POST", "/set/b/2", Some(&cookie)).await;
        assert_eq!(r.status, StatusCode::OK);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_keeps_only_hashes_of_ids() {
        let store = stores::sqlite_store().await;
        let pool = store.pool().clone();
        let (_app, cookie) = session_in(Arc::new(store)).await;
        let rows: Vec<(Vec<u8>, String)> =
            sqlx::query_as("SELECT handle, record FROM keyfob_sessions")
                .fetch_all(&pool)
                .await
                .unwrap();
        assert_eq!(rows.len(), 1);
        let dump = format!("{:?}{}", rows[0].0, rows[0].1);
        assert!(!dump.contains(&cookie));
        assert_eq!(rows[0].0.len(), 32);
    }

    /// Rows written before the expiry column became the sweep's minute hold
    /// the exact deadline; the migration rounds them up, so an update that
    /// leaves the column alone cannot keep one that ends the row early.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_sqlite_migration_rounds_old_expiry_columns_up_to_the_minute() {
        let store = stores::sqlite_store().await;
        let pool = store.pool();
        let table = "keyfob_sessions";
        for (n, at) in [(1u8, Some(121i64)), (2, Some(180)), (3, None)] {
            sqlx::query(&format!(
                "INSERT INTO {table} (handle, owner, expires_at, record) VALUES (?1, NULL, ?2, '{{}}')"
            ))
            .bind(vec![n; 32])
            .bind(at)
            .execute(pool)
            .await
            .unwrap();
        }
        sqlx::query(&format!("DELETE FROM {table}_migrations WHERE version = 2"))
            .execute(pool)
            .await
            .unwrap();
        store.migrate().await.unwrap();
        let after: Vec<Option<i64>> =
            sqlx::query_scalar(&format!("SELECT expires_at FROM {table} ORDER BY handle"))
                .fetch_all(pool)
                .await
                .unwrap();
        assert_eq!(after, [Some(180), Some(180), None]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_sqlite_migrations_at_once_both_succeed() {
        let store = stores::sqlite_store().await;
        let (a, b) = (store.clone(), store.clone());
        let (ra, rb) = tokio::join!(a.migrate(), b.migrate());
        ra.unwrap();
        rb.unwrap();
    }
}

#[cfg(feature = "postgres")]
mod postgres {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn corrupted_postgres_row_reads_as_no_session() {
        let store = stores::postgres_store().await;
        let (pool, table) = (store.pool().clone(), store.table().to_owned());
        let (app, cookie) = session_in(Arc::new(store)).await;
        // Written behind the store's back: the near cache hears of it by
        // notification, within milliseconds; poll for at most 2 s.
        let reads_none = || async {
            for _ in 0..200 {
                let r = app.send("GET", "/get/a", Some(&cookie)).await;
                assert_eq!(r.status, StatusCode::OK);
                if r.body == "none" {
                    return true;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            false
        };
        sqlx::query(&format!("UPDATE {table} SET data = '[1,2]'::jsonb"))
            .execute(&pool)
            .await
            .unwrap();
        assert!(reads_none().await);
        sqlx::query(&format!(
            "UPDATE {table} SET data = '{{}}'::jsonb, expiry = 'garbage'"
        ))
        .execute(&pool)
        .await
        .unwrap();
        assert!(reads_none().await);
    }

    use keyfob::{Handle, Record, Update};
    use time::{Duration, OffsetDateTime};

    /// Two "processes" (stores with pools of their own) on one table.
    async fn two_processes() -> (keyfob::PostgresStore, keyfob::PostgresStore) {
        let table = stores::unique("near");
        let here = stores::postgres_on(&table).await;
        let there = stores::postgres_on(&table).await;
        (here, there)
    }

    fn record(now: OffsetDateTime) -> Record {
        Record::new(now, Some(now + Duration::hours(1)), None)
    }

    /// Polls `here` (at most 2 s) until `done` holds for what it loads.
    async fn eventually(
        here: &keyfob::PostgresStore,
        h: &Handle,
        done: impl Fn(Option<&Record>) -> bool,
    ) -> bool {
        for _ in 0..200 {
            let now = OffsetDateTime::now_utc();
            if done(here.load(h, now).await.unwrap().as_deref()) {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        false
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn another_process_write_and_delete_reach_the_near_cache() {
        let (here, there) = two_processes().await;
        let now = OffsetDateTime::now_utc();
        let h = Handle::from_bytes([7; 32]);
        here.create(&h, &record(now)).await.unwrap();
        let v1 = here.load(&h, now).await.unwrap().unwrap().version();
        // Served from the near cache now; a write elsewhere evicts it.
        let touch = Update::touch(now, Some(now + Duration::hours(1)));
        there.update(&h, &touch, now).await.unwrap();
        assert!(eventually(&here, &h, |r| r.is_some_and(|r| r.version() > v1)).await);
        there.delete(&h).await.unwrap();
        assert!(eventually(&here, &h, |r| r.is_none()).await);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn own_revocations_are_seen_at_once() {
        let (here, _there) = two_processes().await;
        crate::support::own_revocations_are_seen_at_once(Arc::new(here)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lost_channel_stops_the_near_cache_until_it_is_back() {
        let table = stores::unique("lost");
        let here = stores::postgres_on(&table).await;
        let there = stores::postgres_on(&table).await;
        let now = OffsetDateTime::now_utc();
        let h = Handle::from_bytes([9; 32]);
        here.create(&h, &record(now)).await.unwrap();
        assert!(here.load(&h, now).await.unwrap().is_some());
        // Kill the listeners' connections of this table only (they are
        // named after it; other tests' run alongside): `here`'s channel is
        // gone.
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE application_name = 'keyfob-near-cache:public.' || $1",
        )
        .bind(&table)
        .execute(there.pool())
        .await
        .unwrap();
        crate::support::notices_the_lost_channel(|| here.near_cache_serving()).await;
        // A delete elsewhere while no notification can arrive: not served.
        there.delete(&h).await.unwrap();
        assert!(here.load(&h, now).await.unwrap().is_none());
        // Back: it serves again, and hears of writes again.
        stores::near_cache_serving(&here).await;
        here.create(&h, &record(now)).await.unwrap();
        assert!(here.load(&h, now).await.unwrap().is_some());
        there.delete(&h).await.unwrap();
        assert!(eventually(&here, &h, |r| r.is_none()).await);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_channel_that_falls_silent_stops_the_near_cache_within_three_seconds() {
        use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
        use std::str::FromStr;
        let options =
            PgConnectOptions::from_str(&stores::server_url("KEYFOB_TEST_POSTGRES_URL")).unwrap();
        let target = tokio::net::lookup_host((options.get_host(), options.get_port()))
            .await
            .unwrap()
            .next()
            .unwrap();
        let partition = crate::support::Partition::to(target).await;
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(std::time::Duration::from_secs(2))
            .connect_with(options.port(partition.port))
            .await
            .unwrap();
        let table = stores::unique("silent");
        let store = keyfob::PostgresStore::new(pool)
            .with_table_name(&table)
            .unwrap();
        store.migrate().await.unwrap();
        stores::near_cache_serving(&store).await;
        // Quiet is not dead: with no writes at all, the pings keep it serving.
        tokio::time::sleep(std::time::Duration::from_secs(4)).await;
        assert!(
            store.near_cache_serving(),
            "a quiet channel was taken for dead"
        );
        // The channel delivers a delete made elsewhere (proved by the
        // eviction), then falls silent.
        let there = stores::postgres_on(&table).await;
        let now = OffsetDateTime::now_utc();
        let h = Handle::from_bytes([10; 32]);
        store.create(&h, &record(now)).await.unwrap();
        assert!(store.load(&h, now).await.unwrap().is_some());
        let alive = std::time::Instant::now();
        there.delete(&h).await.unwrap();
        assert!(eventually(&store, &h, |r| r.is_none()).await);
        partition.freeze();
        crate::support::stops_serving_after_the_silence(|| store.near_cache_serving(), alive).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_exhausted_app_pool_is_not_taken_for_a_dead_channel() {
        use sqlx::Connection as _;
        let url = stores::server_url("KEYFOB_TEST_POSTGRES_URL");
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(&url)
            .await
            .unwrap();
        let table = stores::unique("busy");
        let store = keyfob::PostgresStore::new(pool.clone())
            .with_table_name(&table)
            .unwrap();
        store.migrate().await.unwrap();
        stores::near_cache_serving(&store).await;
        let now = OffsetDateTime::now_utc();
        let h = Handle::from_bytes([11; 32]);
        store.create(&h, &record(now)).await.unwrap();
        let cached = store.load(&h, now).await.unwrap().unwrap().version();
        // A change the cache is never told of (triggers off for that
        // connection): the copy it holds stays until the cache is reset,
        // which makes a reset visible.
        let mut quiet = sqlx::PgConnection::connect(&url).await.unwrap();
        sqlx::query("SET session_replication_role = replica")
            .execute(&mut quiet)
            .await
            .unwrap();
        sqlx::query(&format!("UPDATE {table} SET version = version + 5"))
            .execute(&mut quiet)
            .await
            .unwrap();
        // Every connection of the app's pool busy (long queries, open
        // transactions) for longer than the heartbeat's silence limit.
        let mut held = Vec::new();
        while let Ok(Ok(c)) =
            tokio::time::timeout(std::time::Duration::from_millis(300), pool.acquire()).await
        {
            held.push(c);
        }
        assert_eq!(held.len(), 2);
        tokio::time::sleep(std::time::Duration::from_millis(4500)).await;
        drop(held);
        let seen = store.load(&h, now).await.unwrap().unwrap().version();
        assert_eq!(seen, cached, "the busy pool reset the near cache");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn closing_the_app_pool_ends_the_listener_and_the_cache() {
        let store = stores::postgres_store().await;
        assert!(store.near_cache_serving());
        store.pool().close().await;
        for _ in 0..200 {
            if !store.near_cache_serving() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("the near cache still serves 2 s after its pool was closed");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_keeps_only_hashes_of_ids() {
        let store = stores::postgres_store().await;
        let (pool, table) = (store.pool().clone(), store.table().to_owned());
        let (_app, cookie) = session_in(Arc::new(store)).await;
        let rows: Vec<(Vec<u8>, String)> =
            sqlx::query_as(&format!("SELECT handle, data::text FROM {table}"))
                .fetch_all(&pool)
                .await
                .unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].0.len(), 32);
        assert!(!rows[0].1.contains(&cookie));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_postgres_migrations_serialize_on_the_advisory_lock() {
        let store = stores::postgres_store().await;
        let fresh = store
            .clone()
            .with_table_name(&stores::unique("mig"))
            .unwrap();
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                let s = fresh.clone();
                tokio::spawn(async move { s.migrate().await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
    }
}

#[cfg(feature = "mysql")]
mod mysql {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn corrupted_mysql_row_reads_as_no_session() {
        let store = stores::mysql_store().await;
        let (pool, table) = (store.pool().clone(), store.table().to_owned());
        let (app, cookie) = session_in(Arc::new(store)).await;
        sqlx::query(&format!("UPDATE `{table}` SET record = '{{\"d\":7'"))
            .execute(&pool)
            .await
            .unwrap();
        let r = app.send("GET", "/get/a", Some(&cookie)).await;
        assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "none"));
        let r = app.send("POST", "/set/b/2", Some(&cookie)).await;
        assert_eq!(r.status, StatusCode::OK);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mysql_keeps_only_hashes_of_ids() {
        let store = stores::mysql_store().await;
        let (pool, table) = (store.pool().clone(), store.table().to_owned());
        let (_app, cookie) = session_in(Arc::new(store)).await;
        let rows: Vec<(Vec<u8>, String)> =
            sqlx::query_as(&format!("SELECT handle, record FROM `{table}`"))
                .fetch_all(&pool)
                .await
                .unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].0.len(), 32);
        assert!(!rows[0].1.contains(&cookie));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_mysql_migrations_serialize_on_the_named_lock() {
        let store = stores::mysql_store().await;
        let fresh = store
            .clone()
            .with_table_name(&stores::unique("mig"))
            .unwrap();
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                let s = fresh.clone();
                tokio::spawn(async move { s.migrate().await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
    }
}
