//! The sealed-cookie engine: the record travels inside the session cookie
//! (see [`CookieStore`]); the revocation store keeps entries and
//! marks in step with it.

use std::sync::Arc;

use time::OffsetDateTime;

use crate::{
    cookie::MAX_SET_COOKIE,
    error::{Error, ErrorKind, Result},
    expiry::secs,
    id::SessionId,
    record::{Record, Update},
    store::cookie::CookieStore,
};

use super::{
    engine::{cookie_max_age, CookieOut},
    Session, State,
};

impl Session {
    /// Opens the presented sealed cookie: expired, forged or revoked → no session.
    pub(super) async fn open_sealed(&self, st: &mut State, client: &CookieStore) -> Result<()> {
        st.loaded = true;
        let Some(value) = st.sealed.take() else {
            return Ok(());
        };
        let now = self.now();
        let name = &self.inner.shared.cookie.name;
        let Some((id, record, stale)) = client.open(name, &value, now) else {
            if client.was_expired(name, &value) {
                tracing::info!(
                    event = "session.expired",
                    "keyfob: expired cookie session refused"
                );
            } else {
                tracing::warn!(
                    event = "session.tampered",
                    "keyfob: cookie session refused (forged, tampered or sealed by another key)"
                );
            }
            return Ok(());
        };
        if client.is_revoked(&id, &record, now).await? {
            tracing::info!(event = "session.revoked", handle = %id.handle().short(), "keyfob: revoked cookie session presented");
            return Ok(());
        }
        st.current = Some(id);
        st.base = Some(Arc::new(record));
        st.reissue = stale;
        Ok(())
    }

    /// The cookie-session counterpart of `commit`: the new record is sealed
    /// into the cookie instead of being sent to a store.
    pub(super) async fn commit_sealed(
        &self,
        st: &mut State,
        client: &CookieStore,
    ) -> Result<CookieOut> {
        let shared = &*self.inner.shared;
        let now = self.now();
        let expiry = st.expiry();
        let (id, base) = match (st.current.clone(), st.base.clone()) {
            (Some(id), Some(base)) => (id, base),
            _ => return self.create_sealed(st, client, now).await,
        };
        let touch_due = shared.policy.touch_due(expiry, base.last_seen, secs(now));
        if !st.is_dirty() && !touch_due && !st.reissue {
            return Ok(CookieOut::Keep);
        }
        if client.is_revoked(&id, &base, now).await? {
            return Ok(ended(st));
        }
        let update = Update {
            changes: std::mem::take(&mut st.changes),
            seen: secs(now),
            idle_deadline: shared.policy.idle_deadline(expiry, now).map(secs),
            owner: st.owner.take(),
            expiry: st.expiry.take(),
            rename_to: None,
            base: None,
        };
        let mut record = (*base).clone();
        record.apply(&update);
        let was_owned = base.owner().is_some();
        let (new_id, move_) = match st.rotate_to.take() {
            Some(new_id) => {
                let until = self.retire_until(Some(&record));
                (
                    new_id,
                    Transition::Rotate {
                        from: id,
                        was_owned,
                        until,
                    },
                )
            }
            None => (id, Transition::Same { was_owned }),
        };
        self.seal_into(st, client, new_id, record, move_, now).await
    }

    /// The last instant a cookie of this session could still open: its
    /// absolute deadline, or else the latest idle deadline a re-issue could set.
    pub(super) fn retire_until(&self, record: Option<&Record>) -> Option<i64> {
        let policy = &self.inner.shared.policy;
        let now = self.now();
        let sliding = policy
            .idle_timeout
            .map(|d| secs(crate::expiry::later(now, d)));
        match record.and_then(|r| r.absolute_deadline.get()) {
            Some(abs) => Some(abs),
            None => match (record.and_then(Record::expires_secs), sliding) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            },
        }
    }

    async fn create_sealed(
        &self,
        st: &mut State,
        client: &CookieStore,
        now: OffsetDateTime,
    ) -> Result<CookieOut> {
        let Some(record) = self.fresh_record(st, now) else {
            return Ok(CookieOut::Keep);
        };
        let id = match st.rotate_to.take() {
            Some(id) => id,
            None => SessionId::generate()?,
        };
        self.seal_into(st, client, id, record, Transition::New, now)
            .await
    }

    /// Seals `record`, refusing a cookie past 4096 bytes, brings the
    /// session's entry in the revocation store in step with `transition`,
    /// and makes it the state's current record. The old ID of a rotation is
    /// retired only once the new cookie is known to fit, so a failed write
    /// never logs the user out; and a rotation whose old entry was already
    /// gone (revoked while this request ran) issues nothing.
    async fn seal_into(
        &self,
        st: &mut State,
        client: &CookieStore,
        id: SessionId,
        record: Record,
        transition: Transition,
        now: OffsetDateTime,
    ) -> Result<CookieOut> {
        let shared = &*self.inner.shared;
        let value = client.seal(&shared.cookie.name, &id, &record)?;
        let max_age = if shared.policy.browser_session(record.expiry()) {
            None
        } else {
            cookie_max_age(
                record.idle_deadline.get(),
                record.absolute_deadline.get(),
                now,
            )
        };
        let line = shared.cookie.set_cookie_len(value.len(), max_age);
        if line > MAX_SET_COOKIE {
            return Err(Error::new(
                ErrorKind::TooLarge,
                format!(
                    "the session cookie would be {line} bytes, over the {MAX_SET_COOKIE}-byte limit \
                     of browsers: keep less in a cookie session, or use a server-side store"
                ),
            ));
        }
        let (new, was_owned) = match transition {
            Transition::New => (true, false),
            Transition::Same { was_owned } => (false, was_owned),
            Transition::Rotate {
                from,
                was_owned,
                until,
            } => {
                if !client.retire(&from, was_owned, until, now).await? {
                    return Ok(ended(st));
                }
                (true, was_owned)
            }
        };
        if !client.sync(&id, &record, new, was_owned, now).await? {
            return Ok(ended(st));
        }
        tracing::debug!(event = "session.sealed", handle = %id.handle().short(), bytes = line, "keyfob: cookie session sealed");
        *st = State {
            loaded: true,
            current: Some(id),
            base: Some(Arc::new(record)),
            ..State::default()
        };
        Ok(CookieOut::Sealed { value, max_age })
    }
}

/// A cookie session logged out or revoked while this request ran: never
/// re-issue it; clear the browser's copy.
#[cfg(feature = "cookie-store")]
fn ended(st: &mut State) -> CookieOut {
    *st = State {
        loaded: true,
        ..State::default()
    };
    CookieOut::Remove
}

/// How a cookie session's entry in the revocation store moves with a write.
#[cfg(feature = "cookie-store")]
enum Transition {
    /// A session created by this request.
    New,
    /// The same ID, re-issued; `was_owned`: it had an owner before.
    Same { was_owned: bool },
    /// A new ID replacing `from`, retired until `until`.
    Rotate {
        from: SessionId,
        was_owned: bool,
        until: Option<i64>,
    },
}
