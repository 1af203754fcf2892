//! The user behind a session, looked up per request through the app's
//! [`UserBackend`], and the permission checks made against it.

use std::{any::Any, collections::HashSet, future::Future};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::*;

/// Where an app's users live: keyfob asks it for the user behind a session
/// on each request that needs one, so a change to an account (a permission
/// taken away, a password changed, the account deleted) reaches every live
/// session at its next request. Install it with
/// [`SessionLayerBuilder::with_users`](crate::SessionLayerBuilder::with_users).
///
/// With a backend, [`login`](super::login) keeps only the user's id and a
/// fingerprint of [`credential`](UserBackend::credential) in the session
/// (never a copy of the user); a session whose user is gone, or whose
/// fingerprint no longer matches (the password changed), is logged out
/// instead of served.
///
/// ```
/// use std::collections::{HashMap, HashSet};
/// use keyfob::auth::UserBackend;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Clone, Serialize, Deserialize)]
/// struct User { id: u64, name: String, password_hash: String, roles: Vec<String> }
///
/// struct Users(HashMap<String, User>);
///
/// impl UserBackend for Users {
///     type User = User;
///
///     async fn user(&self, id: &str) -> Result<Option<User>, keyfob::Error> {
///         Ok(self.0.get(id).cloned())
///     }
///
///     fn credential(user: &User) -> &[u8] {
///         user.password_hash.as_bytes()
///     }
///
///     async fn permissions(&self, user: &User) -> Result<HashSet<String>, keyfob::Error> {
///         Ok(user.roles.iter().cloned().collect())
///     }
/// }
/// ```
pub trait UserBackend: Send + Sync + 'static {
    /// The app's user. [`AuthUser<User>`](AuthUser) hands it to handlers.
    type User: Clone + Send + Sync + 'static;

    /// The user whose id is `id` (the `owner` given to
    /// [`login`](super::login)), or `None` when there is none (any more).
    ///
    /// # Errors
    /// A failure to look: it answers `503`, and the session is kept.
    fn user(&self, id: &str) -> impl Future<Output = Result<Option<Self::User>>> + Send;

    /// Bytes that change whenever the user's credentials do, such as the
    /// password hash. A session remembers a digest of them at login, and a
    /// later mismatch logs it out.
    fn credential(user: &Self::User) -> &[u8];

    /// The user's permissions, for [`RequirePermission`],
    /// [`RequirePermissionLayer`](super::RequirePermissionLayer) and
    /// [`Permissions`]. Default: none.
    ///
    /// # Errors
    /// A failure to look: it answers `503`.
    fn permissions(
        &self,
        user: &Self::User,
    ) -> impl Future<Output = Result<HashSet<String>>> + Send {
        let _ = user;
        async { Ok(HashSet::new()) }
    }
}

/// A user as the layer holds it, whatever the app's type.
pub(crate) type AnyUser = Arc<dyn Any + Send + Sync>;

/// [`UserBackend`] with its user type erased, as the layer keeps it.
pub(crate) trait Users: Send + Sync {
    fn load<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<(AnyUser, String)>>>;
    /// The fingerprint of `user`'s credential, when it is the backend's `User`.
    fn fingerprint_of(&self, user: &dyn Any) -> Option<String>;
    fn permissions<'a>(&'a self, user: &'a AnyUser) -> BoxFuture<'a, Result<HashSet<String>>>;
}

impl<B: UserBackend> Users for B {
    fn load<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<(AnyUser, String)>>> {
        Box::pin(async move {
            let Some(user) = self.user(id).await? else {
                return Ok(None);
            };
            let fingerprint = fingerprint(B::credential(&user));
            Ok(Some((Arc::new(user) as AnyUser, fingerprint)))
        })
    }

    fn fingerprint_of(&self, user: &dyn Any) -> Option<String> {
        user.downcast_ref::<B::User>()
            .map(|u| fingerprint(B::credential(u)))
    }

    fn permissions<'a>(&'a self, user: &'a AnyUser) -> BoxFuture<'a, Result<HashSet<String>>> {
        Box::pin(async move {
            match user.downcast_ref::<B::User>() {
                Some(user) => UserBackend::permissions(self, user).await,
                None => Ok(HashSet::new()),
            }
        })
    }
}

/// A digest of the credential bytes: 128 bits of SHA-256, base64url. It
/// tells a changed credential from the same one and reveals nothing of it.
fn fingerprint(credential: &[u8]) -> String {
    use base64::Engine as _;
    let digest = Sha256::digest(credential);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest[..16])
}

/// The user of this request, once looked up (at most once per request).
pub(crate) struct Current {
    user: AnyUser,
    permissions: tokio::sync::OnceCell<Arc<HashSet<String>>>,
}

/// The per-request slot a [`Session`] keeps its looked-up user in.
#[derive(Default)]
pub(crate) struct Slot(std::sync::Mutex<Option<Arc<Current>>>);

impl Slot {
    fn get(&self) -> Option<Arc<Current>> {
        self.0.lock().ok().and_then(|g| g.clone())
    }

    fn set(&self, current: Option<Arc<Current>>) {
        if let Ok(mut g) = self.0.lock() {
            *g = current;
        }
    }
}

/// The user logged in to `session`, through the backend: from the request's
/// slot, else looked up and checked. `None` when nobody is logged in, or the
/// session was just logged out because its user is gone or its credentials
/// changed.
pub(crate) async fn current(session: &Session, users: &dyn Users) -> Result<Option<Arc<Current>>> {
    if let Some(current) = session.user_slot().get() {
        return Ok(Some(current));
    }
    let Some(owner) = session.owner().await? else {
        return Ok(None);
    };
    let found = users.load(&owner).await?;
    let stored: Option<String> = session.get_reserved(keys::CREDENTIAL).await?;
    let (user, fingerprint) = match found {
        Some(found) => found,
        None => {
            tracing::info!(
                event = "session.user_gone",
                "keyfob: session logged out: its user no longer exists"
            );
            session.delete().await?;
            return Ok(None);
        }
    };
    let matches = stored.is_some_and(|s| bool::from(s.as_bytes().ct_eq(fingerprint.as_bytes())));
    if !matches {
        tracing::info!(
            event = "session.credentials_changed",
            "keyfob: session logged out: its user's credentials changed since it logged in"
        );
        session.delete().await?;
        return Ok(None);
    }
    let current = Arc::new(Current {
        user,
        permissions: tokio::sync::OnceCell::new(),
    });
    session.user_slot().set(Some(current.clone()));
    Ok(Some(current))
}

/// The user the backend knows by `owner`, with its fingerprint.
///
/// # Errors
/// [`ErrorKind::Config`](crate::ErrorKind::Config) when the backend does not
/// know `owner`: a login must name a user the backend can find.
pub(crate) async fn find(users: &dyn Users, owner: &str) -> Result<(AnyUser, String)> {
    users
        .load(owner)
        .await?
        .ok_or_else(|| Error::config("login: the user backend has no user with this id"))
}

/// Records a found user's fingerprint in `session` (at login, and after a
/// credential change) and fills the request's slot.
pub(crate) async fn remember(
    session: &Session,
    (user, fingerprint): (AnyUser, String),
) -> Result<()> {
    session
        .insert_reserved(keys::CREDENTIAL, &fingerprint)
        .await?;
    session.user_slot().set(Some(Arc::new(Current {
        user,
        permissions: tokio::sync::OnceCell::new(),
    })));
    Ok(())
}

/// Forgets the request's looked-up user (the session changed hands).
pub(crate) fn forget(session: &Session) {
    session.user_slot().set(None);
}

impl Current {
    pub(crate) fn user<U: Clone + 'static>(&self) -> Result<U> {
        self.user.downcast_ref::<U>().cloned().ok_or_else(|| {
            Error::config(format!(
                "AuthUser<{}> asked for a type other than the user backend's `User`",
                std::any::type_name::<U>()
            ))
        })
    }

    async fn permissions(&self, users: &dyn Users) -> Result<Arc<HashSet<String>>> {
        self.permissions
            .get_or_try_init(|| async { users.permissions(&self.user).await.map(Arc::new) })
            .await
            .cloned()
    }
}

/// The permissions of the user logged in to `session`, looked up through
/// the backend (once per request); `None` when nobody is logged in.
///
/// # Errors
/// A store or backend failure; [`ErrorKind::Config`](crate::ErrorKind::Config)
/// when the layer has no [`UserBackend`].
///
/// ```
/// # async fn f(session: keyfob::Session) -> Result<(), keyfob::Error> {
/// let admin = keyfob::auth::permissions(&session)
///     .await?
///     .is_some_and(|p| p.contains("admin"));
/// # let _ = admin; Ok(()) }
/// ```
pub async fn permissions(session: &Session) -> Result<Option<Arc<HashSet<String>>>> {
    let Some(users) = session.shared().users.clone() else {
        return Err(no_backend());
    };
    match current(session, &*users).await? {
        Some(current) => Ok(Some(current.permissions(&*users).await?)),
        None => Ok(None),
    }
}

pub(crate) fn no_backend() -> Error {
    Error::config(
        "permissions need a user backend: install one with `SessionLayerBuilder::with_users`",
    )
}

/// Ends every other session of the user logged in to `session` and gives
/// this one a new ID; call it right after the user's password (or other
/// credential) changed in the backend. Returns how many sessions the store
/// ended at once.
///
/// With a [`UserBackend`], this session takes the new credential's
/// fingerprint, and every other session fails the fingerprint check at its
/// next request wherever it lives, also on stores that cannot list a user's
/// sessions (cookie sessions without a revocation store). Without one, the
/// other sessions end through the store's owner index.
///
/// # Errors
/// A store or backend failure (the change is then incomplete: call again).
///
/// ```
/// # async fn f(session: keyfob::Session) -> Result<(), keyfob::Error> {
/// // … the new password hash is stored in the app's user table …
/// let ended = keyfob::auth::credentials_changed(&session).await?;
/// # let _ = ended; Ok(()) }
/// ```
pub async fn credentials_changed(session: &Session) -> Result<u64> {
    let Some(owner) = session.owner().await? else {
        return Ok(0);
    };
    let users = session.shared().users.clone();
    if let Some(users) = &users {
        // Only a session that passed the user check in this request (under
        // the old credential) may take the new one: a session that should
        // already be logged out must not be stamped valid again.
        if session.user_slot().get().is_none() {
            return Err(Error::config(
                "credentials_changed: check the user first in this request \
                 (take `AuthUser`, or call `current_user`, before changing the credential)",
            ));
        }
        remember(session, find(&**users, &owner).await?).await?;
    }
    session.cycle_id().await?;
    session.save().await?;
    if session.id().await?.is_none() {
        // Ended by a concurrent request meanwhile: ending "the others" now
        // would end every session, and this one is not kept.
        return Err(Error::store_msg(
            "the session ended while its credential changed; log in again",
        ));
    }
    match revoke_others(session).await {
        Ok(n) => Ok(n),
        // The fingerprint ends them at their next request instead.
        Err(e) if e.kind() == crate::ErrorKind::Unsupported && users.is_some() => Ok(0),
        Err(e) => Err(e),
    }
}

/// A permission name for the [`RequirePermission`] extractor.
///
/// ```
/// use keyfob::auth::{Permission, RequirePermission};
///
/// struct Admin;
/// impl Permission for Admin {
///     const NAME: &'static str = "admin";
/// }
///
/// async fn admin_page(_: RequirePermission<Admin>) -> &'static str {
///     "welcome, admin"
/// }
/// ```
pub trait Permission: Send + Sync + 'static {
    /// The name the backend's [`permissions`](UserBackend::permissions) lists.
    const NAME: &'static str;
}

/// An extractor that lets a request through only when the logged-in user
/// holds the permission `P`: `401 login required` when nobody is logged in,
/// `403 forbidden` without it. Checked against the [`UserBackend`] on each
/// request. For a whole router, use
/// [`RequirePermissionLayer`](super::RequirePermissionLayer).
///
/// ```
/// use keyfob::auth::{Permission, RequirePermission};
///
/// struct Billing;
/// impl Permission for Billing {
///     const NAME: &'static str = "billing";
/// }
///
/// async fn invoices(_: RequirePermission<Billing>) -> &'static str {
///     "your invoices"
/// }
/// ```
#[cfg(feature = "axum")]
pub struct RequirePermission<P>(std::marker::PhantomData<P>);

#[cfg(feature = "axum")]
impl<P> fmt::Debug for RequirePermission<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RequirePermission")
            .field(&std::any::type_name::<P>())
            .finish()
    }
}

#[cfg(feature = "axum")]
impl<S, P> axum_core::extract::FromRequestParts<S> for RequirePermission<P>
where
    S: Send + Sync,
    P: Permission,
{
    type Rejection = crate::extract::AuthRejection;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        let Permissions(held) = Permissions::from_request_parts(parts, state).await?;
        if held.contains(P::NAME) {
            Ok(RequirePermission(std::marker::PhantomData))
        } else {
            Err(crate::extract::AuthRejection::Forbidden)
        }
    }
}

/// The permissions of the logged-in user, as an extractor (`401 login
/// required` when nobody is logged in), for handlers that decide for
/// themselves.
///
/// ```
/// use keyfob::auth::Permissions;
///
/// async fn page(perms: Permissions) -> &'static str {
///     if perms.contains("admin") { "admin view" } else { "user view" }
/// }
/// ```
#[cfg(feature = "axum")]
#[derive(Debug, Clone)]
pub struct Permissions(Arc<HashSet<String>>);

#[cfg(feature = "axum")]
impl Permissions {
    /// Whether the user holds `permission`.
    ///
    /// ```
    /// # fn f(perms: keyfob::auth::Permissions) {
    /// let can_edit = perms.contains("edit");
    /// # let _ = can_edit; }
    /// ```
    pub fn contains(&self, permission: &str) -> bool {
        self.0.contains(permission)
    }

    /// Every permission the user holds.
    ///
    /// ```
    /// # fn f(perms: keyfob::auth::Permissions) {
    /// let mut names: Vec<&String> = perms.iter().collect();
    /// names.sort();
    /// # }
    /// ```
    pub fn iter(&self) -> impl Iterator<Item = &String> {
        self.0.iter()
    }
}

#[cfg(feature = "axum")]
impl<S: Send + Sync> axum_core::extract::FromRequestParts<S> for Permissions {
    type Rejection = crate::extract::AuthRejection;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        use crate::extract::AuthRejection;
        let session = super::request_session(parts)?;
        match permissions(&session).await {
            Ok(Some(p)) => Ok(Permissions(p)),
            Ok(None) => Err(AuthRejection::LoginRequired),
            Err(e) => Err(AuthRejection::Store(e)),
        }
    }
}
