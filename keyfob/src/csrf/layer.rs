//! [`CsrfLayer`] and its builder.

use std::{fmt, sync::Arc};

use bytes::Bytes;
use http::{Method, Uri};
use tower_layer::Layer;

use super::service::{Check, Config, Csrf, Reject};
use crate::error::{Error, ErrorKind, Result};

/// Refuses cross-origin and token-less state-changing requests. See the
/// [module docs](crate::csrf) for the rules.
///
/// Install it *inside* [`SessionLayer`](crate::SessionLayer) (in axum, call
/// `.layer(CsrfLayer::new())` before `.layer(session_layer)`), since the
/// token lives in the session.
///
/// ```
/// use axum::{routing::post, Router};
/// use keyfob::{csrf::CsrfLayer, MemoryStore, SessionLayer};
///
/// let app: Router = Router::new()
///     .route("/transfer", post(|| async { "transfer accepted" }))
///     .layer(CsrfLayer::new())
///     .layer(SessionLayer::new(MemoryStore::new()));
/// ```
#[derive(Clone)]
pub struct CsrfLayer {
    origins: tower_http::csrf::CsrfLayer<Reject>,
    config: Arc<Config>,
}

impl fmt::Debug for CsrfLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CsrfLayer")
            .field("trusted_origins", &self.config.trusted)
            .field("token", &self.config.token)
            .field("exempt_prefixes", &self.config.exempt_prefixes)
            .finish_non_exhaustive()
    }
}

impl Default for CsrfLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl CsrfLayer {
    /// Both checks on every unsafe method, no trusted origins, no exemptions,
    /// a 64 KiB limit on form bodies, and `403 CSRF check failed` refusals.
    ///
    /// ```
    /// let layer = keyfob::csrf::CsrfLayer::new();
    /// # let _ = layer;
    /// ```
    pub fn new() -> Self {
        // The defaults hold no origin to validate, so nothing can fail here.
        Self::from_parts(
            CsrfLayerBuilder::default(),
            tower_http::csrf::CsrfLayer::new(),
        )
    }

    /// A builder to change the defaults; [`CsrfLayerBuilder::build`] checks them.
    ///
    /// ```
    /// let layer = keyfob::csrf::CsrfLayer::builder().without_token().build()?;
    /// # let _ = layer; Ok::<_, keyfob::Error>(())
    /// ```
    pub fn builder() -> CsrfLayerBuilder {
        CsrfLayerBuilder::default()
    }

    fn from_parts(b: CsrfLayerBuilder, origins: tower_http::csrf::CsrfLayer) -> Self {
        let config = Arc::new(Config {
            trusted: b.trusted,
            token: b.token,
            exempt_prefixes: b.exempt_prefixes,
            exempt_if: b.exempt_if,
            form_limit: b.form_limit,
            body: b.body,
        });
        let bypass = config.clone();
        let origins = origins
            .with_insecure_bypass(move |m: &Method, u: &Uri| bypass.is_exempt(m, u))
            .with_rejection_response(Reject(config.clone()));
        CsrfLayer { origins, config }
    }
}

impl<S> Layer<S> for CsrfLayer {
    type Service = Csrf<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Csrf {
            inner: self.origins.layer(Check {
                inner,
                config: self.config.clone(),
            }),
        }
    }
}

/// Configures a [`CsrfLayer`]; every setting is checked by [`build`](Self::build).
///
/// ```
/// use keyfob::csrf::CsrfLayer;
///
/// let layer = CsrfLayer::builder()
///     .with_trusted_origin("https://admin.example.com")
///     .exempt_path_prefix("/webhooks")
///     .exempt_if(|_method, uri| uri.path() == "/metrics/push")
///     .with_form_limit(16 * 1024)
///     .with_rejection_body("Please reload the page and try again.")
///     .build()
///     .unwrap();
/// // Origin check only, for a layer over the whole app:
/// let origin_only = CsrfLayer::builder().without_token().build().unwrap();
/// # let _ = origin_only;
/// # let _ = layer;
/// assert!(CsrfLayer::builder().with_trusted_origin("https://a.example/path").build().is_err());
/// ```
#[must_use]
pub struct CsrfLayerBuilder {
    trusted: Vec<String>,
    token: bool,
    exempt_prefixes: Vec<String>,
    exempt_if: Option<Arc<super::service::Predicate>>,
    form_limit: usize,
    body: Bytes,
}

impl Default for CsrfLayerBuilder {
    fn default() -> Self {
        CsrfLayerBuilder {
            trusted: Vec::new(),
            token: true,
            exempt_prefixes: Vec::new(),
            exempt_if: None,
            form_limit: 64 * 1024,
            body: Bytes::from_static(b"CSRF check failed"),
        }
    }
}

impl fmt::Debug for CsrfLayerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CsrfLayerBuilder")
            .field("trusted_origins", &self.trusted)
            .field("token", &self.token)
            .field("exempt_prefixes", &self.exempt_prefixes)
            .field("form_limit", &self.form_limit)
            .finish_non_exhaustive()
    }
}

impl CsrfLayerBuilder {
    /// Also accept requests whose `Origin` is exactly `origin`
    /// (`scheme://host[:port]`, lowercase, no default port, no trailing
    /// slash), whatever `Sec-Fetch-Site` says. This is how a sibling
    /// subdomain (`Sec-Fetch-Site: same-site`) is allowed: one origin at a
    /// time, never a whole site. Default: none.
    pub fn with_trusted_origin(mut self, origin: impl Into<String>) -> Self {
        self.trusted.push(origin.into());
        self
    }

    /// Check only the origin, not the token: for a layer over routes that
    /// non-browser clients call without a token (a JSON login), with
    /// [`CsrfLayer::new`] on the routes that need the token. Default: both.
    pub fn without_token(mut self) -> Self {
        self.token = false;
        self
    }

    /// Skip both checks for paths under `prefix` (whole segments: `/hooks`
    /// covers `/hooks/x`, not `/hooksx`). Such routes need their own
    /// protection (signed payloads). Default: none.
    pub fn exempt_path_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.exempt_prefixes.push(prefix.into());
        self
    }

    /// Skip both checks for requests where `predicate` is true. Default: none.
    pub fn exempt_if<F>(mut self, predicate: F) -> Self
    where
        F: Fn(&Method, &Uri) -> bool + Send + Sync + 'static,
    {
        self.exempt_if = Some(Arc::new(predicate));
        self
    }

    /// The most bytes of a form body read to find `csrf_token`; a larger
    /// body is refused. Default 64 KiB.
    pub fn with_form_limit(mut self, bytes: usize) -> Self {
        self.form_limit = bytes;
        self
    }

    /// The body of a refusal. Default `CSRF check failed`.
    pub fn with_rejection_body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    /// Checks the settings and builds the layer.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) for a trusted origin
    /// that no browser could send (a path, another scheme, non-ASCII), with
    /// tower-http's reason as the source.
    pub fn build(self) -> Result<CsrfLayer> {
        let mut check = tower_http::csrf::CsrfLayer::new();
        for origin in &self.trusted {
            check = check
                .add_trusted_origin(origin)
                .map_err(|e| Error::with_source(ErrorKind::Config, e))?;
        }
        Ok(CsrfLayer::from_parts(self, check))
    }
}
