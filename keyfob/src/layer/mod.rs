//! The tower layer: the only place that reads and writes the session cookie.
//!
//! (The rules, caveats and examples are on the public type below,
//! where docs.rs shows them: this module is private.)

mod builder;
mod future;
mod service;

use std::{fmt, sync::Arc};

use tower_layer::Layer;

#[cfg(feature = "cookie-store")]
use crate::store::cookie::CookieStore;
use crate::{
    session::{Incoming, Session, Shared},
    store::SessionStore,
};

pub use self::{
    builder::{SessionLayerBuilder, DEFAULT_MAX_SESSIONS_PER_USER, DEFAULT_STORE_TIMEOUT},
    future::ResponseFuture,
    service::SessionService,
};

/// Adds a [`Session`](crate::Session) to every request. Cheap to clone.
///
/// ```
/// use keyfob::{MemoryStore, SessionLayer};
/// let layer = SessionLayer::new(MemoryStore::new());
/// # let _ = layer;
/// ```
///
/// Rules, per request:
/// 1. read the session cookie (strictly: one cookie of that name, in canonical form, see [`SameSite`](crate::SameSite) for the cookie rules) and put a
///    [`Session`](crate::Session) in the request extensions, *not* loaded;
/// 2. call the inner service; the handler's first session access loads the record;
/// 3. afterwards, if the record changed, send the change-set to the store; if
///    only the idle deadline is due for a refresh, touch it; else write nothing.
///    A `5xx` response saves nothing unless
///    [`with_save_on_server_error`](SessionLayerBuilder::with_save_on_server_error) says so;
/// 4. `Set-Cookie` only when the ID or the cookie's expiry changed (for
///    cookie sessions, also when the sealed record changed), with
///    `Cache-Control: no-store` unless the handler set its own; `Vary: Cookie`
///    on every response that used the session.
///
/// A store failure while saving replaces the response with
/// `503 session store unavailable` and `Retry-After: 1`; so does a store call
/// slower than [`with_store_timeout`](SessionLayerBuilder::with_store_timeout)
/// (default 5 seconds), which bounds every store call the engine makes.
///
/// ```
/// use axum::{routing::get, Router};
/// use keyfob::{MemoryStore, SessionLayer};
/// use time::Duration;
///
/// let layer = SessionLayer::builder(MemoryStore::new())
///     .with_idle_timeout(Duration::minutes(30))
///     .with_absolute_timeout(Some(Duration::hours(8)))
///     .build()
///     .expect("valid session configuration");
/// let app: Router = Router::new().route("/", get(|| async { "hi" })).layer(layer);
/// ```
#[derive(Clone)]
pub struct SessionLayer {
    shared: Arc<Shared>,
}

impl fmt::Debug for SessionLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionLayer")
            .field("cookie", &self.shared.cookie.name)
            .finish_non_exhaustive()
    }
}

impl SessionLayer {
    /// A layer with the default settings: cookie `id`, `Secure`, `HttpOnly`,
    /// `SameSite=Lax`, `Path=/`; idle timeout 2 hours, absolute timeout 12 hours,
    /// touch interval 1 minute, store calls bounded at 5 seconds.
    pub fn new(store: impl SessionStore) -> Self {
        SessionLayer {
            shared: Arc::new(SessionLayerBuilder::new(Arc::new(store)).into_shared()),
        }
    }

    /// A builder to change the defaults; [`SessionLayerBuilder::build`] checks them.
    pub fn builder(store: impl SessionStore) -> SessionLayerBuilder {
        SessionLayerBuilder::new(Arc::new(store))
    }

    /// Cookie sessions: the whole record sealed inside the session cookie
    /// (see [`CookieStore`](crate::CookieStore)), with the default settings of [`new`](Self::new).
    ///
    /// ```
    /// use keyfob::{keys::Keyring, CookieStore, SessionLayer};
    /// let layer = SessionLayer::cookie(CookieStore::new(Keyring::generate().unwrap()));
    /// # let _ = layer;
    /// ```
    #[cfg(feature = "cookie-store")]
    pub fn cookie(store: CookieStore) -> Self {
        SessionLayer {
            shared: Arc::new(SessionLayerBuilder::cookie(store).into_shared()),
        }
    }

    /// A builder for cookie sessions; [`SessionLayerBuilder::build`] checks it.
    ///
    /// ```
    /// use keyfob::{keys::Keyring, CookieStore, SessionLayer};
    /// let layer = SessionLayer::cookie_builder(CookieStore::new(Keyring::generate().unwrap()))
    ///     .with_idle_timeout(time::Duration::minutes(30))
    ///     .build()
    ///     .unwrap();
    /// # let _ = layer;
    /// ```
    #[cfg(feature = "cookie-store")]
    pub fn cookie_builder(store: CookieStore) -> SessionLayerBuilder {
        SessionLayerBuilder::cookie(store)
    }

    /// A fresh session under this layer's settings, outside any request (no
    /// cookie presented): for unit tests of code that takes a [`Session`](crate::Session),
    /// and for jobs. Nothing reaches the store until
    /// [`Session::save`](crate::Session::save).
    ///
    /// ```
    /// use keyfob::{MemoryStore, SessionLayer};
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let store = MemoryStore::new();
    /// let layer = SessionLayer::new(store.clone());
    /// let session = layer.session();
    /// session.insert("cart", 3).await.unwrap();
    /// assert_eq!(session.get::<u32>("cart").await.unwrap(), Some(3));
    /// assert!(store.is_empty());
    /// session.save().await.unwrap();
    /// assert_eq!(store.len(), 1);
    /// # });
    /// ```
    pub fn session(&self) -> Session {
        Session::new(self.shared.clone(), Incoming::None)
    }

    /// The store this layer uses, for the app's own session management
    /// (listing and revoking sessions, health checks). For cookie sessions,
    /// the revocation store (one that keeps nothing when none was given).
    pub fn store(&self) -> &Arc<dyn SessionStore> {
        &self.shared.store_dyn
    }
}

impl<S> Layer<S> for SessionLayer {
    type Service = SessionService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SessionService {
            inner,
            shared: self.shared.clone(),
        }
    }
}
