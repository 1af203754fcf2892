//! The owner index: one sorted set per owner, members scored by a
//! watermark at or past their session's deadline.

use super::*;

impl RedisStore {
    pub(super) async fn index(&self, owner: &str, handle: &Handle, until: &str) -> Result<()> {
        let mut conn = self.conn.clone();
        self.scripts
            .index
            .key(self.owner_key(owner))
            .arg(handle.to_string())
            .arg(until)
            .invoke_async::<i64>(&mut conn)
            .await
            .map_err(Error::store)?;
        Ok(())
    }

    pub(super) async fn unindex(&self, owner: &str, handles: &[String]) -> Result<()> {
        if owner.is_empty() || handles.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        redis::cmd("ZREM")
            .arg(self.owner_key(owner))
            .arg(handles)
            .query_async::<i64>(&mut conn)
            .await
            .map_err(Error::store)?;
        Ok(())
    }

    /// Deletes a session or a tombstone and, for a tombstone, the session it
    /// points to (a rotation in flight), unless that is `keep`.
    pub(super) async fn revoke(&self, handle: &str, keep: Option<&str>) -> Result<bool> {
        let mut key = format!("{}:s:{handle}", self.prefix);
        let mut at = handle.to_owned();
        // A tombstone may point to a session rotated again: follow a few hops.
        for _ in 0..4 {
            let (mut conn, _) = self.session_conn(&key);
            let reply = self.scripts.revoke.key(&key).invoke_async(&mut conn).await;
            // After the delete (a load racing it cannot leave a copy): this
            // process sees its own revocation on its next request.
            if let (Some(cache), Ok(h)) = (self.near(), at.parse::<Handle>()) {
                cache.forget(&h);
            }
            let reply: Vec<Vec<u8>> = reply.map_err(Error::store)?;
            match reply.first().map(Vec::as_slice) {
                Some(b"1") => return Ok(true),
                Some(b"2") => {
                    let target = text(reply.get(1));
                    if Some(target) == keep || target.is_empty() {
                        return Ok(false);
                    }
                    key = format!("{}:s:{target}", self.prefix);
                    target.clone_into(&mut at);
                }
                _ => return Ok(false),
            }
        }
        Ok(false)
    }

    /// The handles filed under `owner` with a watermark at or after `from`.
    pub(super) async fn members(&self, owner: &str, from: &str) -> Result<Vec<String>> {
        let mut conn = self.conn.clone();
        redis::cmd("ZRANGEBYSCORE")
            .arg(self.owner_key(owner))
            .arg(from)
            .arg("+inf")
            .query_async(&mut conn)
            .await
            .map_err(Error::store)
    }

    pub(super) async fn list_inner(
        &self,
        owner: &str,
        now: OffsetDateTime,
        limit: usize,
    ) -> Result<Vec<OwnedSession>> {
        // Watermarks are never earlier than their session's deadline, so a
        // member whose watermark has passed is a gone session: pruned at once.
        let mut conn = self.conn.clone();
        redis::cmd("ZREMRANGEBYSCORE")
            .arg(self.owner_key(owner))
            .arg("-inf")
            .arg(format!("({}", secs(now)))
            .query_async::<i64>(&mut conn)
            .await
            .map_err(Error::store)?;
        let mut out = Vec::new();
        let mut stale = Vec::new();
        for member in self.members(owner, &secs(now).to_string()).await? {
            if out.len() >= limit {
                break;
            }
            let Ok(handle) = member.parse::<Handle>() else {
                stale.push(member);
                continue;
            };
            match self.fetch(&handle).await? {
                // Indexed before its owner was written (a login in flight):
                // not listed, and not pruned either.
                Decoded::Record(r) if r.owner() != Some(owner) => {}
                Decoded::Record(r) if !r.is_expired(now) => out.push(OwnedSession {
                    handle,
                    record: Arc::new(r),
                }),
                // Expired records never come back: pruned.
                Decoded::Record(_) => stale.push(member),
                // Not pruned: a missing member may be a session being created
                // or rotated in right now (indexed first, written next), and a
                // tombstone must stay findable by `delete_by_owner`. Both
                // leave with their watermark.
                Decoded::Moved | Decoded::Missing => {}
            }
        }
        self.unindex(owner, &stale).await?;
        Ok(out)
    }

    pub(super) async fn delete_by_owner_inner(
        &self,
        owner: &str,
        keep: Option<&Handle>,
    ) -> Result<u64> {
        let keep = keep.map(Handle::to_string);
        let mut deleted = 0;
        let mut done = Vec::new();
        for member in self.members(owner, "-inf").await? {
            if Some(&member) == keep.as_ref() {
                continue;
            }
            if self.revoke(&member, keep.as_deref()).await? {
                deleted += 1;
            }
            done.push(member);
        }
        self.unindex(owner, &done).await?;
        Ok(deleted)
    }
}

/// The owner-set expiry for a session expiring at `expire_at`.
pub(super) fn watermark(expire_at: Option<i64>) -> String {
    match expire_at {
        Some(e) => (e + OWNER_SLACK_SECS).to_string(),
        None => "inf".into(),
    }
}
