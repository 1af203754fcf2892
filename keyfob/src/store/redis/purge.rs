//! Expired-session cleanup: a sharded purge index of handles by deadline,
//! so `delete_expired` never scans the keyspace.

use super::*;

impl RedisStore {
    pub(super) async fn file_for_purge(
        &self,
        handle: &Handle,
        expire_at: Option<i64>,
    ) -> Result<()> {
        let Some(at) = expire_at else { return Ok(()) };
        let mut conn = self.conn.clone();
        redis::cmd("ZADD")
            .arg(self.purge_key(purge_shard(handle)))
            .arg(at)
            .arg(handle.to_string())
            .query_async::<i64>(&mut conn)
            .await
            .map_err(Error::store)?;
        Ok(())
    }

    pub(super) async fn delete_expired_inner(
        &self,
        now: OffsetDateTime,
        batch: usize,
    ) -> Result<u64> {
        let mut deleted = 0;
        // Start at a different shard each call, so a small batch size still
        // reaches every shard over successive calls.
        let first = self.purge_cursor.fetch_add(1, Ordering::Relaxed);
        for i in 0..u64::from(PURGE_SHARDS) {
            if deleted >= batch {
                break;
            }
            let shard = ((first + i) % u64::from(PURGE_SHARDS)) as u8;
            deleted += self.purge_index_shard(shard, now, batch - deleted).await?;
        }
        Ok(deleted as u64)
    }

    pub(super) async fn purge_index_shard(
        &self,
        shard: u8,
        now: OffsetDateTime,
        batch: usize,
    ) -> Result<usize> {
        let now_secs = secs(now);
        let key = self.purge_key(shard);
        let mut conn = self.conn.clone();
        let mut deleted = 0usize;
        for _ in 0..PURGE_PASSES {
            if deleted >= batch {
                break;
            }
            let due: Vec<String> = redis::cmd("ZRANGEBYSCORE")
                .arg(&key)
                .arg("-inf")
                .arg(now_secs)
                .arg("LIMIT")
                .arg(0)
                .arg(batch - deleted)
                .query_async(&mut conn)
                .await
                .map_err(Error::store)?;
            if due.is_empty() {
                break;
            }
            for member in due {
                let reply: Vec<Vec<u8>> = self
                    .scripts
                    .purge
                    .key(format!("{}:s:{member}", self.prefix))
                    .arg(now_secs)
                    .invoke_async(&mut conn)
                    .await
                    .map_err(Error::store)?;
                let refile = match reply.first().map(Vec::as_slice) {
                    Some(b"1") => {
                        deleted += 1;
                        self.unindex(text(reply.get(1)), std::slice::from_ref(&member))
                            .await?;
                        None
                    }
                    // Extended since it was filed: file it under its deadline now.
                    Some(b"2") => text(reply.get(1)).parse::<i64>().ok(),
                    _ => None,
                };
                let mut cmd = match refile {
                    Some(at) => {
                        let mut c = redis::cmd("ZADD");
                        c.arg(&key).arg(at);
                        c
                    }
                    None => {
                        let mut c = redis::cmd("ZREM");
                        c.arg(&key);
                        c
                    }
                };
                cmd.arg(&member)
                    .query_async::<i64>(&mut conn)
                    .await
                    .map_err(Error::store)?;
            }
        }
        Ok(deleted)
    }
}

pub(super) fn purge_shard(handle: &Handle) -> u8 {
    (handle.as_bytes()[0] >> 4) % PURGE_SHARDS
}
