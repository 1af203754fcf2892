//! The one error type of keyfob.
//!
//! (The rules, caveats and examples are on the public type below,
//! where docs.rs shows them: this module is private.)

use std::{error::Error as StdError, fmt};

type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// What kind of failure an [`Error`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The session store failed or could not be reached. Rendered as `503`.
    Store,
    /// The store did not answer within the configured timeout. Rendered as `503`.
    Timeout,
    /// A configuration value was refused when the layer or store was built.
    Config,
    /// A value could not be serialized into the session.
    Serialize,
    /// The operating system's random number generator failed.
    Random,
    /// A record is too large for where it must be kept (a cookie, a column).
    TooLarge,
    /// A session key in keyfob's reserved `keyfob.` namespace was written
    /// through the public API. Rendered as `400`: the usual cause is a key
    /// name taken from the client.
    ReservedKey,
    /// The store cannot do what was asked (listing or revoking a user's
    /// cookie sessions without a revocation store). Rendered as `501`:
    /// never reported as an empty answer that looks like success.
    Unsupported,
}

impl ErrorKind {
    fn describe(self) -> &'static str {
        match self {
            ErrorKind::Store => "session store error",
            ErrorKind::Timeout => "session store timed out",
            ErrorKind::Config => "invalid configuration",
            ErrorKind::Serialize => "session value could not be serialized",
            ErrorKind::Random => "the OS random number generator failed",
            ErrorKind::TooLarge => "session record too large",
            ErrorKind::ReservedKey => "reserved session key",
            ErrorKind::Unsupported => "not supported by this session store",
        }
    }
}

/// The error type of every fallible keyfob operation.
///
/// ```
/// use keyfob::{ErrorKind, SessionLayer, MemoryStore};
///
/// // A `__Host-` cookie may not carry a `Domain`: refused when the layer is built.
/// let err = SessionLayer::builder(MemoryStore::new())
///     .with_name("__Host-id")
///     .with_domain("example.com")
///     .build()
///     .unwrap_err();
/// assert_eq!(err.kind(), ErrorKind::Config);
/// assert!(err.to_string().contains("Domain"));
/// ```
///
/// Every fallible operation returns [`Error`], which carries an [`ErrorKind`]
/// saying what went wrong and, where there is one, the underlying cause as its
/// [`source`](std::error::Error::source). Backend errors are never flattened
/// into strings.
///
/// On a request path an [`ErrorKind::Store`] error renders as
/// `503 session store unavailable` with `Retry-After: 1` (with the `axum`
/// feature, `Error` implements `IntoResponse`), so a store outage never turns
/// into an empty session or a bare `500`.
///
/// ```
/// use keyfob::{Error, ErrorKind};
///
/// let err = Error::store(std::io::Error::other("connection refused"));
/// assert_eq!(err.kind(), ErrorKind::Store);
/// assert!(std::error::Error::source(&err).is_some());
/// ```
pub struct Error {
    kind: ErrorKind,
    message: Option<Box<str>>,
    source: Option<BoxError>,
}

impl Error {
    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// A store backend failure, keeping the backend's error as the source.
    ///
    /// Store implementations outside keyfob use this to report their errors.
    pub fn store(source: impl Into<BoxError>) -> Self {
        Error {
            kind: ErrorKind::Store,
            message: None,
            source: Some(source.into()),
        }
    }

    /// A store failure described by a message (no underlying error value).
    pub fn store_msg(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Store, message)
    }

    /// A refused configuration, with a message that says what to change.
    pub fn config(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Config, message)
    }

    /// A refused configuration caused by `source` (an unreadable file, a
    /// URL the driver cannot parse): the message says what to change, the
    /// source keeps the cause.
    pub(crate) fn config_from(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Error::explained(ErrorKind::Config, message, source)
    }

    /// A store failure caused by `source`: the message says what failed,
    /// the source keeps the cause.
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    pub(crate) fn store_from(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Error::explained(ErrorKind::Store, message, source)
    }

    fn explained(kind: ErrorKind, message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Error {
            kind,
            message: Some(message.into().into_boxed_str()),
            source: Some(source.into()),
        }
    }

    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: Some(message.into().into_boxed_str()),
            source: None,
        }
    }

    pub(crate) fn with_source(kind: ErrorKind, source: impl Into<BoxError>) -> Self {
        Error {
            kind,
            message: None,
            source: Some(source.into()),
        }
    }

    /// What listing or revoking a user's sessions answers where no owner
    /// index exists (a store without one; cookie sessions without a
    /// revocation store): an error, never an empty answer the app could take
    /// for success.
    pub(crate) fn no_owner_index() -> Self {
        Error::new(
            ErrorKind::Unsupported,
            "this store keeps no owner index, so a user's sessions cannot be listed or revoked \
             (cookie sessions: add `CookieStore::with_revocation(store)` with a durable, shared store)",
        )
    }

    /// True for failures that mean "the store is not available right now";
    /// these render as `503` and are worth retrying.
    pub fn is_unavailable(&self) -> bool {
        matches!(self.kind, ErrorKind::Store | ErrorKind::Timeout)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.kind);
        if let Some(m) = &self.message {
            d.field("message", m);
        }
        if let Some(s) = &self.source {
            d.field("source", s);
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind.describe())?;
        if let Some(m) = &self.message {
            write!(f, ": {m}")?;
        }
        if let Some(s) = &self.source {
            write!(f, ": {s}")?;
        }
        Ok(())
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_ref()
            .map(|s| &**s as &(dyn StdError + 'static))
    }
}

/// `Result` with keyfob's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(feature = "axum")]
impl axum_core::response::IntoResponse for Error {
    fn into_response(self) -> axum_core::response::Response {
        error_response(&self)
    }
}

/// The response for an error on a request path: `503` (with `Retry-After`)
/// for store trouble, `400` for a reserved key, `501` for what the store
/// cannot do, `500` otherwise. Never a body that leaks more than the kind.
pub(crate) fn error_response<B: From<&'static str>>(err: &Error) -> http::Response<B> {
    use http::{
        header::{CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER},
        HeaderValue, StatusCode,
    };
    let (status, body) = match err.kind() {
        ErrorKind::Store | ErrorKind::Timeout => {
            (StatusCode::SERVICE_UNAVAILABLE, "session store unavailable")
        }
        ErrorKind::TooLarge => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "session too large to store",
        ),
        ErrorKind::ReservedKey => (StatusCode::BAD_REQUEST, "reserved session key"),
        ErrorKind::Unsupported => (
            StatusCode::NOT_IMPLEMENTED,
            "not supported by this session store",
        ),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "session error"),
    };
    let mut response = http::Response::new(B::from(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if status == StatusCode::SERVICE_UNAVAILABLE {
        headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
        metrics::counter!("keyfob_unavailable_total").increment(1);
    }
    response
}
