//! The server-store engine: loads a session's record on first access and,
//! after the handler, commits the change-set (or a touch, or nothing),
//! deciding what the cookie must become. It never writes the cookie: the
//! layer does, from the [`CookieOut`] it returns.

use std::sync::{atomic::Ordering, Arc};

use serde_json::value::RawValue;

use time::OffsetDateTime;
use tokio::sync::MutexGuard;

#[cfg(feature = "cookie-store")]
use crate::store::cookie::CookieStore;
use crate::{
    cookie::CookieConfig,
    error::{Error, ErrorKind, Result},
    expiry::secs,
    expiry::{Clock, Policy},
    id::{Handle, SessionId},
    keys::Keyring,
    record::{reserved, ChangeSet, Data, Record, Update},
    store::{timeout::Timed, Created, SessionStore, Updated},
};

use super::{Session, State};

/// What the layer holds for every session: store, cookie and expiry settings.
pub(crate) struct Shared {
    /// The server-side store; for cookie sessions, their revocation store.
    /// The engine calls it directly (unboxed, observed calls).
    pub(crate) store: Timed,
    /// The same, for [`SessionLayer::store`](crate::SessionLayer::store).
    pub(crate) store_dyn: Arc<dyn SessionStore>,
    pub(crate) cookie: CookieConfig,
    pub(crate) policy: Policy,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) save_on_server_error: bool,
    /// Session IDs carry a MAC under this keyring (server-side stores only).
    pub(crate) signed_ids: Option<Keyring>,
    /// Accept a tower-sessions cookie of a session imported by `migrate`, once.
    pub(crate) legacy_ids: bool,
    /// The most live sessions one owner may have (see `auth::login`).
    #[cfg_attr(not(feature = "auth"), allow(dead_code))]
    pub(crate) max_sessions_per_user: Option<usize>,
    /// Cookie sessions: the record lives in the cookie, sealed by this codec.
    #[cfg(feature = "cookie-store")]
    pub(crate) client: Option<CookieStore>,
    /// The app's users, looked up per request (`auth::UserBackend`).
    #[cfg(feature = "auth")]
    pub(crate) users: Option<Arc<dyn crate::auth::users::Users>>,
    /// How to find a request's client IP, recorded at login.
    #[cfg(feature = "auth")]
    pub(crate) client_ip: Option<crate::auth::client::ClientIp>,
}

impl Shared {
    /// Whether `store` keeps an owner index to list and revoke a user's
    /// sessions: every server-side store, and cookie sessions only with a
    /// revocation store.
    #[cfg_attr(not(feature = "auth"), allow(dead_code))]
    pub(crate) fn has_owner_index(&self) -> bool {
        #[cfg(feature = "cookie-store")]
        if let Some(client) = &self.client {
            return client.is_revocable();
        }
        true
    }
}

/// What the request's session cookie held, as the layer read it.
#[derive(Debug, Default)]
pub(crate) enum Incoming {
    #[default]
    None,
    /// A (verified, when IDs are signed) session ID; `stale` when its MAC
    /// verified under an old key, so the cookie must be re-issued.
    Id { id: SessionId, stale: bool },
    /// A tower-sessions cookie value (legacy IDs on): the handle of its imported record.
    Legacy(Handle),
    /// A cookie session's sealed value, opened on first access.
    #[cfg(feature = "cookie-store")]
    Sealed(Box<str>),
}

/// What the layer must do with the cookie after the request.
#[derive(Debug)]
pub(crate) enum CookieOut {
    Keep,
    Set {
        id: SessionId,
        max_age: Option<i64>,
    },
    /// A cookie session's new sealed value.
    #[cfg(feature = "cookie-store")]
    Sealed {
        value: String,
        max_age: Option<i64>,
    },
    Remove,
}

impl Session {
    /// Starts the session over under a new ID, as a login must: the stored
    /// record is deleted now (the old ID loads nothing, even if this response
    /// never arrives), and the data (when `keep_data`) is staged on a fresh
    /// session, created with this moment as its creation time and the start
    /// of its absolute deadline when the response is sent.
    #[cfg_attr(not(feature = "auth"), allow(dead_code))]
    pub(crate) async fn restart(&self, keep_data: bool) -> Result<()> {
        let (data, expiry) = {
            let st = self.state().await?;
            let data = if keep_data {
                st.data()
            } else {
                Data::default()
            };
            (data, st.expiry())
        };
        self.delete().await?;
        let mut st = self.state().await?;
        for (k, v) in data.entries() {
            let raw = RawValue::from_string(v.to_owned())
                .map_err(|e| Error::with_source(ErrorKind::Serialize, e))?;
            st.changes.set(k, Some(raw));
        }
        if expiry.is_some() {
            st.expiry = Some(expiry);
        }
        Ok(())
    }

    #[cfg_attr(not(feature = "auth"), allow(dead_code))]
    pub(crate) async fn set_owner(&self, owner: Option<&str>) -> Result<()> {
        self.mark_modified();
        self.state().await?.owner = Some(owner.map(Into::into));
        Ok(())
    }

    /// Locks the state, loading the record first if this request has not yet.
    pub(super) async fn state(&self) -> Result<MutexGuard<'_, State>> {
        self.inner.accessed.store(true, Ordering::Relaxed);
        let mut st = self.inner.state.lock().await;
        #[cfg(feature = "cookie-store")]
        if let (false, Some(client)) = (st.loaded, &self.inner.shared.client) {
            self.open_sealed(&mut st, client).await?;
        }
        if !st.loaded {
            if let Some(id) = &st.current {
                let handle = id.handle();
                let now = self.now();
                let found = self.inner.shared.store.load(&handle, now).await?;
                // The store must filter expired records; check again anyway,
                // since expiry is the server's to enforce whatever a store does.
                match found {
                    Some(record) if !record.is_expired(now) => st.base = Some(record),
                    found => {
                        // Only on this refused path: ask whether it was an
                        // expired session, for the security log.
                        let expired = found.is_some()
                            || self
                                .inner
                                .shared
                                .store
                                .holds_expired(&handle, now)
                                .await
                                .unwrap_or(false);
                        if expired {
                            tracing::info!(
                                event = "session.expired",
                                handle = %handle.short(),
                                "keyfob: expired session ID presented"
                            );
                        } else {
                            tracing::info!(
                                event = "session.unknown",
                                handle = %handle.short(),
                                "keyfob: unknown session ID presented"
                            );
                        }
                        st.current = None;
                    }
                }
            } else if let Some(handle) = st.legacy {
                self.load_legacy(&mut st, handle).await?;
            }
            st.loaded = true;
        }
        Ok(st)
    }

    /// Loads a record imported from tower-sessions under the handle of its old
    /// cookie. Only a record that still carries the import mark is accepted:
    /// the commit of this request moves it to a fresh ID and drops the mark,
    /// so the old cookie works exactly once.
    async fn load_legacy(&self, st: &mut State, handle: Handle) -> Result<()> {
        let now = self.now();
        let found = self.inner.shared.store.load(&handle, now).await?;
        let imported = found
            .filter(|r| !r.is_expired(now))
            .filter(|r| r.data.get(reserved::LEGACY).is_some());
        match imported {
            Some(record) => {
                st.base = Some(record);
                st.current = Some(SessionId::generate()?);
                st.changes.set(reserved::LEGACY, None);
                tracing::info!(event = "session.legacy", handle = %handle.short(), "keyfob: imported tower-sessions session presented; rotating it");
            }
            None => {
                tracing::info!(event = "session.unknown", handle = %handle.short(), "keyfob: unknown, expired or already rotated tower-sessions cookie presented");
                st.legacy = None;
            }
        }
        Ok(())
    }

    /// Called by the layer after the handler: saves, touches or does nothing.
    pub(crate) async fn finish(&self, server_error: bool) -> Result<CookieOut> {
        let mut st = self.inner.state.lock().await;
        if !st.loaded {
            // Untouched since an explicit `save` (which reset the state): send
            // the cookie that save decided on, if any.
            return Ok(st.cookie.take().unwrap_or(CookieOut::Keep));
        }
        let out = if server_error && !self.inner.shared.save_on_server_error {
            CookieOut::Keep
        } else {
            self.commit(&mut st).await?
        };
        Ok(match (out, st.cookie.take()) {
            (CookieOut::Keep, Some(earlier)) => earlier,
            (out, _) => out,
        })
    }

    /// Sends the pending change-set to the store and resets the state so the
    /// next access reloads.
    pub(super) async fn commit(&self, st: &mut State) -> Result<CookieOut> {
        let shared = &*self.inner.shared;
        #[cfg(feature = "cookie-store")]
        if let Some(client) = &shared.client {
            return self.commit_sealed(st, client).await;
        }
        let now = self.now();
        let expiry = st.expiry();
        let browser_session = shared.policy.browser_session(expiry);
        let Some(id) = st.current.clone().filter(|_| st.base.is_some()) else {
            return self.create(st, now).await;
        };
        let base_seen = st.base.as_ref().map_or(0, |b| b.last_seen);
        let dirty = st.is_dirty();
        let touch_due = shared.policy.touch_due(expiry, base_seen, secs(now));
        let reissue = std::mem::take(&mut st.reissue);
        if !dirty && !touch_due && !reissue {
            return Ok(CookieOut::Keep);
        }
        let idle = shared.policy.idle_deadline(expiry, now).map(secs);
        // A new expiry may turn a persistent cookie into a browser-session
        // one: the browser only learns that from a fresh `Set-Cookie`.
        let expiry_changed = st.expiry.is_some();
        let rotate_to = st.rotate_to.take();
        // An imported tower-sessions record lives under its old cookie's hash;
        // this update moves it to `id` (or to `rotate_to`), which retires that cookie.
        let legacy = st.legacy.take();
        let rename_to = match (&rotate_to, legacy) {
            (Some(to), _) => Some(to.handle()),
            (None, Some(_)) => Some(id.handle()),
            (None, None) => None,
        };
        let absolute = st.base.as_ref().and_then(|b| b.absolute_deadline.get());
        // Drop our reference first, so a memory store can update in place;
        // hand it over to a store that writes by compare-and-swap on it.
        let base = st.base.take().filter(|_| shared.store.update_uses_base());
        let update = Update {
            changes: std::mem::take(&mut st.changes),
            seen: secs(now),
            idle_deadline: idle,
            owner: st.owner.take(),
            expiry: st.expiry.take(),
            rename_to,
            base,
        };
        st.loaded = false;
        let handle = legacy.unwrap_or_else(|| id.handle());
        match shared.store.update(&handle, &update, now).await? {
            Updated::Applied => {
                let rotated = rotate_to.is_some() || legacy.is_some();
                let new_id = rotate_to.unwrap_or(id);
                if rotated {
                    tracing::info!(
                        event = "session.rotated",
                        from = %handle.short(),
                        to = %new_id.handle().short(),
                        "keyfob: session ID rotated"
                    );
                }
                st.current = Some(new_id.clone());
                let max_age = cookie_max_age(idle, absolute, now);
                if browser_session && !rotated && !reissue && !expiry_changed {
                    Ok(CookieOut::Keep)
                } else {
                    Ok(CookieOut::Set {
                        id: new_id,
                        max_age: if browser_session { None } else { max_age },
                    })
                }
            }
            Updated::Gone => {
                // Deleted (logout, revocation), rotated by a concurrent request
                // (a double-submitted login) or expired while this request ran:
                // never write it back. Leave the cookie alone: the old ID loads
                // nothing anyway, and a removal could arrive after, and delete,
                // the cookie of the concurrent rotation.
                tracing::info!(
                    event = "session.interrupted",
                    handle = %handle.short(),
                    "keyfob: session ended during the request; its changes were dropped"
                );
                st.current = None;
                Ok(CookieOut::Keep)
            }
        }
    }

    /// The record a session created by this request starts as (created now,
    /// so its absolute deadline counts from now), or `None` when it would hold
    /// nothing: then no record and no cookie, and the pending state is reset.
    /// Both engines create sessions through this.
    pub(super) fn fresh_record(&self, st: &mut State, now: OffsetDateTime) -> Option<Record> {
        let policy = &self.inner.shared.policy;
        let data = st.data();
        let owner = st.owner().map(Box::<str>::from);
        let expiry = st.expiry();
        if data.is_empty() && owner.is_none() {
            st.changes = ChangeSet::default();
            st.rotate_to = None;
            st.owner = None;
            st.expiry = None;
            return None;
        }
        let idle = policy.idle_deadline(expiry, now);
        let absolute = policy
            .absolute_timeout
            .map(|d| crate::expiry::later(now, d));
        let mut record = Record::new(now, idle, absolute);
        record.data = data;
        record.owner = owner;
        record.expiry = expiry.map(Box::new);
        Some(record)
    }

    async fn create(&self, st: &mut State, now: OffsetDateTime) -> Result<CookieOut> {
        let shared = &*self.inner.shared;
        let Some(record) = self.fresh_record(st, now) else {
            return Ok(CookieOut::Keep);
        };
        let expiry = record.expiry();
        let mut id = match st.rotate_to.take() {
            Some(id) => id,
            None => SessionId::generate()?,
        };
        let mut tries = 0;
        loop {
            let handle = id.handle();
            match shared.store.create(&handle, &record).await? {
                Created::Stored => {
                    tracing::info!(event = "session.created", handle = %handle.short(), "keyfob: session created");
                    break;
                }
                Created::Collision if tries < 3 => {
                    tries += 1;
                    id = SessionId::generate()?;
                }
                Created::Collision => {
                    return Err(Error::store_msg(
                        "could not find a free session ID after 4 tries",
                    ))
                }
            }
        }
        *st = State {
            current: Some(id.clone()),
            ..State::default()
        };
        let max_age = if shared.policy.browser_session(expiry) {
            None
        } else {
            cookie_max_age(
                record.idle_deadline.get(),
                record.absolute_deadline.get(),
                now,
            )
        };
        Ok(CookieOut::Set { id, max_age })
    }
}

pub(super) fn cookie_max_age(
    idle: Option<i64>,
    absolute: Option<i64>,
    now: OffsetDateTime,
) -> Option<i64> {
    let deadline = match (idle, absolute) {
        (Some(i), Some(a)) => Some(i.min(a)),
        (i, a) => i.or(a),
    }?;
    Some((deadline - secs(now)).max(0))
}
