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
        sqlx::query(&format!("UPDATE {table} SET data = '[1,2]'::jsonb"))
            .execute(&pool)
            .await
            .unwrap();
        let r = app.send("GET", "/get/a", Some(&cookie)).await;
        assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "none"));
        sqlx::query(&format!(
            "UPDATE {table} SET data = '{{}}'::jsonb, expiry = 'garbage'"
        ))
        .execute(&pool)
        .await
        .unwrap();
        let r = app.send("GET", "/get/a", Some(&cookie)).await;
        assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "none"));
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
