//! Chooses keyfob's Redis client: the same load-modify-save loop (HGETALL,
//! then a Lua script that sets one field and bumps a version) with redis-rs
//! and with fred, one task and 32 tasks, for a few seconds each.
//! Run: REDIS_URL=redis://127.0.0.1:PORT cargo run --release
use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

const SCRIPT: &str = "redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) return redis.call('HINCRBY', KEYS[1], 'v', 1)";
const SECS: u64 = 3;

async fn run<F, Fut>(name: &str, tasks: usize, op: F)
where
    F: Fn(usize, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(SECS);
    let mut hs = Vec::new();
    for t in 0..tasks {
        let op = op.clone();
        let done = done.clone();
        hs.push(tokio::spawn(async move {
            let mut i = 0;
            while Instant::now() < deadline {
                op(t, i).await;
                i += 1;
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for h in hs {
        h.await.unwrap();
    }
    let n = done.load(Ordering::Relaxed);
    println!("{name:<10} tasks={tasks:<3} {:>8.0} load-modify-save/s", n as f64 / SECS as f64);
}

#[tokio::main]
async fn main() {
    let url = std::env::var("REDIS_URL").expect("REDIS_URL");
    for tasks in [1, 8, 32, 128] {
        // redis-rs: a ConnectionManager (one multiplexed connection).
        let client = redis::Client::open(url.as_str()).unwrap();
        let conn = redis::aio::ConnectionManager::new(client).await.unwrap();
        let script = Arc::new(redis::Script::new(SCRIPT));
        run("redis-rs", tasks, move |t, i| {
            let mut conn = conn.clone();
            let script = script.clone();
            async move {
                let key = format!("bench:rr:{t}");
                let _: std::collections::HashMap<String, String> =
                    redis::cmd("HGETALL").arg(&key).query_async(&mut conn).await.unwrap();
                let _: i64 = script
                    .key(&key)
                    .arg(format!("k{}", i % 8))
                    .arg("\"value\"")
                    .invoke_async(&mut conn)
                    .await
                    .unwrap();
            }
        })
        .await;

        // fred: one client (one multiplexed connection), EVALSHA via Script.
        use fred::prelude::*;
        let config = Config::from_url(&url).unwrap();
        let fc = Builder::from_config(config).build().unwrap();
        fc.init().await.unwrap();
        let fscript = Arc::new(fred::types::scripts::Script::from_lua(SCRIPT));
        fscript.load(&fc).await.unwrap();
        run("fred", tasks, move |t, i| {
            let fc = fc.clone();
            let fscript = fscript.clone();
            async move {
                let key = format!("bench:fr:{t}");
                let _: std::collections::HashMap<String, String> = fc.hgetall(&key).await.unwrap();
                let _: i64 = fscript
                    .evalsha(&fc, vec![key], vec![format!("k{}", i % 8), "\"value\"".to_string()])
                    .await
                    .unwrap();
            }
        })
        .await;
    }
}
