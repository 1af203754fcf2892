//! [`RequirePermissionLayer`]: a permission guard for a whole router.

use axum_core::{body::Body, response::IntoResponse};

use super::*;

type Reply = Arc<dyn Fn() -> Response<Body> + Send + Sync>;

/// Lets requests through only when the logged-in user holds a permission,
/// checked against the [`UserBackend`](super::UserBackend) on each request:
/// `401 login required` when nobody is logged in, `403 forbidden` when the
/// user lacks it. Both answers can be replaced (a redirect to a login page,
/// an HTML error page). Install it inside `SessionLayer`.
///
/// ```
/// use axum::{response::Redirect, response::IntoResponse, routing::get, Router};
/// use keyfob::auth::RequirePermissionLayer;
///
/// let admin: Router = Router::new()
///     .route("/admin", get(|| async { "admin" }))
///     .route_layer(
///         RequirePermissionLayer::new("admin")
///             .with_login_required(|| Redirect::to("/login").into_response()),
///     );
/// # let _ = admin;
/// ```
#[derive(Clone)]
pub struct RequirePermissionLayer {
    permission: Arc<str>,
    login_required: Reply,
    forbidden: Reply,
}

impl fmt::Debug for RequirePermissionLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequirePermissionLayer")
            .field("permission", &self.permission)
            .finish_non_exhaustive()
    }
}

impl RequirePermissionLayer {
    /// Requires `permission`.
    ///
    /// ```
    /// let layer = keyfob::auth::RequirePermissionLayer::new("admin");
    /// # let _ = layer;
    /// ```
    pub fn new(permission: impl Into<String>) -> Self {
        let permission: String = permission.into();
        RequirePermissionLayer {
            permission: permission.into(),
            login_required: Arc::new(|| {
                crate::extract::AuthRejection::LoginRequired.into_response()
            }),
            forbidden: Arc::new(|| crate::extract::AuthRejection::Forbidden.into_response()),
        }
    }

    /// The answer when nobody is logged in (default `401 login required`).
    ///
    /// ```
    /// use axum::response::{IntoResponse, Redirect};
    /// let layer = keyfob::auth::RequirePermissionLayer::new("admin")
    ///     .with_login_required(|| Redirect::to("/login").into_response());
    /// # let _ = layer;
    /// ```
    pub fn with_login_required(
        mut self,
        reply: impl Fn() -> Response<Body> + Send + Sync + 'static,
    ) -> Self {
        self.login_required = Arc::new(reply);
        self
    }

    /// The answer when the user lacks the permission (default `403 forbidden`).
    ///
    /// ```
    /// use axum::{http::StatusCode, response::IntoResponse};
    /// let layer = keyfob::auth::RequirePermissionLayer::new("admin")
    ///     .with_forbidden(|| (StatusCode::FORBIDDEN, "admins only").into_response());
    /// # let _ = layer;
    /// ```
    pub fn with_forbidden(
        mut self,
        reply: impl Fn() -> Response<Body> + Send + Sync + 'static,
    ) -> Self {
        self.forbidden = Arc::new(reply);
        self
    }
}

impl<S> Layer<S> for RequirePermissionLayer {
    type Service = RequirePermissionService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequirePermissionService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service made by [`RequirePermissionLayer`].
///
/// ```
/// use keyfob::auth::{RequirePermissionLayer, RequirePermissionService};
/// use tower_layer::Layer;
///
/// let svc: RequirePermissionService<_> = RequirePermissionLayer::new("admin").layer(
///     tower::service_fn(|_req: http::Request<axum::body::Body>| async {
///         Ok::<_, std::convert::Infallible>(http::Response::new(axum::body::Body::empty()))
///     }),
/// );
/// # let _ = svc;
/// ```
#[derive(Clone)]
pub struct RequirePermissionService<S> {
    inner: S,
    layer: RequirePermissionLayer,
}

impl<S> fmt::Debug for RequirePermissionService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequirePermissionService")
            .field("permission", &self.layer.permission)
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody> Service<Request<ReqBody>> for RequirePermissionService<S>
where
    S: Service<Request<ReqBody>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        Box::pin(async move {
            let Some(session) = req.extensions().get::<Session>().cloned() else {
                return Ok(super::guard::no_session("RequirePermission"));
            };
            match super::permissions(&session).await {
                Ok(Some(held)) if held.contains(&*layer.permission) => inner.call(req).await,
                Ok(Some(_)) => Ok((layer.forbidden)()),
                Ok(None) => Ok((layer.login_required)()),
                Err(err) => Ok(crate::error::error_response(&err)),
            }
        })
    }
}
