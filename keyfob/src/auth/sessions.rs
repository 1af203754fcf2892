//! A user's view of their sessions: listing and revoking them.

use super::*;

/// One live session of a user, as [`list_sessions`] shows it. Serializes as
/// `{"handle","created_at","last_seen","expires_at","current","browser","os","ip"}`
/// with RFC 3339 times; the last three are what [`login`](super::login)
/// recorded of the device, `null` when unknown.
///
/// ```
/// # async fn f(session: keyfob::Session) -> Result<(), keyfob::Error> {
/// for s in keyfob::auth::list_sessions(&session).await? {
///     println!("{} since {}{}", s.handle.short(), s.created_at, if s.current { " (this one)" } else { "" });
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct SessionInfo {
    /// The session's public handle: names it, never usable as its cookie.
    #[serde(serialize_with = "display")]
    pub handle: Handle,
    /// When it was created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When it was last used (precise to the touch interval).
    #[serde(with = "time::serde::rfc3339")]
    pub last_seen: OffsetDateTime,
    /// When it ends if unused: the earlier of its idle and absolute deadlines.
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    /// True for the session of the request that asked.
    pub current: bool,
    /// The browser logged in with, as `User-Agent` names it (`"Firefox 133"`).
    pub browser: Option<String>,
    /// Its operating system (`"Windows 10"`, `"iOS 17"`).
    pub os: Option<String>,
    /// The network of its IP address at login: the address cut to its /24
    /// (IPv4) or /48 (IPv6), so `203.0.113.0`, never the full address.
    pub ip: Option<String>,
}

fn display<T: fmt::Display, S: Serializer>(v: &T, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// The owner and handle of `session` once its pending changes (a login in
/// this same request) are in the store, or `None` when nobody is logged in.
async fn owned(session: &Session) -> Result<Option<(String, Option<Handle>)>> {
    // Only a session that passes the user check (with a backend: its user
    // exists, its credential unchanged) may see or end the user's sessions.
    if !logged_in(session).await? {
        return Ok(None);
    }
    let Some(owner) = session.owner().await? else {
        return Ok(None);
    };
    session.save().await?;
    Ok(Some((owner, session.id().await?)))
}

/// The live sessions of the user logged in to `session`, oldest first, at
/// most [`MAX_LISTED`] of them; empty when nobody is logged in.
///
/// # Errors
/// A store error; [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported)
/// for cookie sessions without a revocation store, which keep no list.
///
/// ```
/// # async fn f(session: keyfob::Session) -> Result<(), keyfob::Error> {
/// let n = keyfob::auth::list_sessions(&session).await?.len();
/// # let _ = n; Ok(()) }
/// ```
pub async fn list_sessions(session: &Session) -> Result<Vec<SessionInfo>> {
    let Some((owner, current)) = owned(session).await? else {
        return Ok(Vec::new());
    };
    let shared = session.shared();
    let now = shared.clock.now();
    let mut list: Vec<SessionInfo> = shared
        .store
        .list_by_owner(&owner, now, MAX_LISTED)
        .await?
        .into_iter()
        .filter(|s| !s.record.is_expired(now))
        .map(|s| {
            let device: super::client::Device = s
                .record
                .data
                .get(keys::DEVICE)
                .and_then(|v| serde_json::from_str(v).ok())
                .unwrap_or_default();
            SessionInfo {
                browser: device.browser,
                os: device.os,
                ip: device.ip,
                current: Some(s.handle) == current,
                handle: s.handle,
                created_at: s.record.created(),
                last_seen: s.record.last_seen(),
                expires_at: s.record.expires_at(),
            }
        })
        .collect();
    list.sort_by_key(|s| (s.created_at, s.handle));
    Ok(list)
}

/// Ends the session named `handle` if it belongs to the user logged in to
/// `session`; `false` ("not found") otherwise, so a handle of someone
/// else's session reveals nothing. Revoking the current session logs out.
///
/// ```
/// # async fn f(session: keyfob::Session, handle: keyfob::Handle) -> Result<(), keyfob::Error> {
/// if !keyfob::auth::revoke(&session, &handle).await? {
///     // answer 404
/// }
/// # Ok(()) }
/// ```
pub async fn revoke(session: &Session, handle: &Handle) -> Result<bool> {
    let Some((owner, current)) = owned(session).await? else {
        return Ok(false);
    };
    if current.as_ref() == Some(handle) {
        session.delete().await?;
        return Ok(true);
    }
    let shared = session.shared();
    if !shared.has_owner_index() {
        return Err(Error::no_owner_index());
    }
    let now = shared.clock.now();
    let mine = shared
        .store
        .load(handle, now)
        .await?
        .is_some_and(|r| r.owner() == Some(owner.as_str()));
    if !mine {
        return Ok(false);
    }
    let deleted = shared.store.delete(handle).await?;
    if deleted {
        tracing::info!(event = "session.revoked", handle = %handle.short(), "keyfob: session revoked by its owner");
    }
    Ok(deleted)
}

/// Ends every other session of the user logged in to `session` ("log out
/// everywhere else"); returns how many ended. This session stays.
///
/// ```
/// # async fn f(session: keyfob::Session) -> Result<(), keyfob::Error> {
/// let revoked = keyfob::auth::revoke_others(&session).await?;
/// # let _ = revoked; Ok(()) }
/// ```
pub async fn revoke_others(session: &Session) -> Result<u64> {
    let Some((owner, current)) = owned(session).await? else {
        return Ok(0);
    };
    let n = session
        .shared()
        .store
        .delete_by_owner(&owner, current.as_ref())
        .await?;
    tracing::info!(
        event = "session.revoked_others",
        count = n,
        "keyfob: other sessions of the user revoked"
    );
    Ok(n)
}

/// Ends every session of the user logged in to `session`, this one
/// included (after a password change); returns how many ended.
///
/// ```
/// # async fn f(session: keyfob::Session) -> Result<(), keyfob::Error> {
/// keyfob::auth::revoke_all(&session).await?;
/// # Ok(()) }
/// ```
pub async fn revoke_all(session: &Session) -> Result<u64> {
    let Some((owner, _)) = owned(session).await? else {
        return Ok(0);
    };
    let n = revoke_all_of(&session.shared().store, &owner).await?;
    session.delete().await?;
    Ok(n)
}

/// Ends every session of `owner`, with no request at hand (an account
/// disabled by an administrator); returns how many ended.
///
/// ```
/// # async fn f() -> Result<(), keyfob::Error> {
/// let store = keyfob::MemoryStore::new();
/// assert_eq!(keyfob::auth::revoke_all_of(&store, "42").await?, 0);
/// # Ok(()) }
/// ```
pub async fn revoke_all_of(store: &dyn SessionStore, owner: &str) -> Result<u64> {
    let n = store.delete_by_owner(owner, None).await?;
    tracing::info!(
        event = "session.revoked_all",
        count = n,
        "keyfob: every session of a user revoked"
    );
    Ok(n)
}
