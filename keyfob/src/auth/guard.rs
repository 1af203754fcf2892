//! The login guards for HTML routes: [`RequireLoginLayer`] and [`safe_next`].

use super::*;

/// `next` as a redirect target if it is a same-origin relative path, else `/`.
///
/// Accepted: a path that starts with one `/` and holds no `\`, no control
/// characters and no whitespace, at most 2048 bytes. Refused (so `/`):
/// absolute URLs, scheme-relative `//host`, `/\host` (browsers read `\` as
/// `/`), and paths that become one of those once a browser strips tabs and
/// newlines.
///
/// ```
/// use keyfob::auth::safe_next;
///
/// assert_eq!(safe_next("/account?tab=keys"), "/account?tab=keys");
/// assert_eq!(safe_next("https://evil.example"), "/");
/// assert_eq!(safe_next("//evil.example"), "/");
/// assert_eq!(safe_next("/\\evil.example"), "/");
/// ```
pub fn safe_next(next: &str) -> &str {
    let ok = next.len() <= 2048
        && next.starts_with('/')
        && !next[1..].starts_with('/')
        && !next
            .chars()
            .any(|c| c == '\\' || c.is_control() || c.is_whitespace());
    if ok {
        next
    } else {
        "/"
    }
}

/// Sends requests without a logged-in user to a login page, with `next` set
/// to the path and query asked for (`303 See Other`). For HTML routes; APIs
/// use [`AuthUser`], which answers `401`. Install it inside `SessionLayer`.
///
/// ```
/// use axum::{routing::get, Router};
/// use keyfob::{auth::RequireLoginLayer, MemoryStore, SessionLayer};
///
/// let app: Router = Router::new()
///     .route("/account", get(|| async { "your account" }))
///     .layer(RequireLoginLayer::new("/login").unwrap())
///     .layer(SessionLayer::new(MemoryStore::new()));
/// ```
#[derive(Debug, Clone)]
pub struct RequireLoginLayer {
    login: Arc<str>,
}

impl RequireLoginLayer {
    /// Redirects to `login_url` (a path such as `/login`, or a URL).
    ///
    /// ```
    /// use keyfob::auth::RequireLoginLayer;
    /// assert!(RequireLoginLayer::new("/login").is_ok());
    /// assert!(RequireLoginLayer::new("").is_err());
    /// ```
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) when `login_url` is
    /// empty or cannot be a `Location` header.
    pub fn new(login_url: impl Into<String>) -> Result<Self> {
        let login: String = login_url.into();
        if login.is_empty() || HeaderValue::try_from(login.as_str()).is_err() {
            return Err(Error::config(format!(
                "login URL {login:?} must be non-empty and valid in a Location header"
            )));
        }
        Ok(RequireLoginLayer {
            login: login.into(),
        })
    }
}

impl<S> Layer<S> for RequireLoginLayer {
    type Service = RequireLogin<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireLogin {
            inner,
            login: self.login.clone(),
        }
    }
}

/// The service made by [`RequireLoginLayer`].
///
/// ```
/// use keyfob::auth::{RequireLogin, RequireLoginLayer};
/// use tower_layer::Layer;
///
/// let svc: RequireLogin<_> = RequireLoginLayer::new("/login").unwrap().layer(tower::service_fn(
///     |_req: http::Request<axum::body::Body>| async {
///         Ok::<_, std::convert::Infallible>(http::Response::new(axum::body::Body::empty()))
///     },
/// ));
/// # let _ = svc;
/// ```
#[derive(Clone)]
pub struct RequireLogin<S> {
    inner: S,
    login: Arc<str>,
}

impl<S> fmt::Debug for RequireLogin<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequireLogin")
            .field("login", &self.login)
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RequireLogin<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: From<&'static str> + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response<ResBody>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let login = self.login.clone();
        Box::pin(async move {
            let Some(session) = req.extensions().get::<Session>().cloned() else {
                return Ok(no_session("RequireLogin"));
            };
            match logged_in(&session).await {
                Ok(true) => inner.call(req).await,
                Ok(false) => Ok(redirect_to_login(&login, req.uri())),
                Err(err) => Ok(crate::error::error_response(&err)),
            }
        })
    }
}

/// What a guard answers when no `SessionLayer` ran before it: a
/// configuration error (`500`), logged once per request.
pub(super) fn no_session<B: From<&'static str>>(guard: &str) -> Response<B> {
    tracing::error!("keyfob: {guard} found no session. Is `SessionLayer` installed outside it?");
    crate::error::error_response(&Error::config("no session in the request"))
}

fn redirect_to_login<B: From<&'static str>>(login: &str, uri: &http::Uri) -> Response<B> {
    let asked = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let next: String = form_urlencoded::byte_serialize(asked.as_bytes()).collect();
    let sep = if login.contains('?') { '&' } else { '?' };
    let location = format!("{login}{sep}next={next}");
    let mut res = Response::new(B::from(""));
    *res.status_mut() = StatusCode::SEE_OTHER;
    // Both parts are header-safe (checked at build, percent-encoded), so this holds.
    if let Ok(v) = HeaderValue::try_from(location) {
        res.headers_mut().insert(LOCATION, v);
    }
    res
}
