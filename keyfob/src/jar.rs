//! Signed and private cookie jars for the application's own cookies.
//!
//! [`SignedCookieJar`] and [`PrivateCookieJar`] work like axum-extra's jars of
//! the same names, on a [`Keyring`] instead of a single key.
//!
//! Rules:
//! - the keyring comes from the router state: the jars extract when
//!   `Keyring: FromRef<S>` (keep the keyring in your state struct and derive or
//!   write `FromRef`). The jars are values: return them from the handler
//!   (they are `IntoResponseParts`) to send what was added or removed;
//! - a jar holds only the cookies that verify (signed) or decrypt (private)
//!   under the cookie's own name. A changed, truncated or extended value, a
//!   value moved from another cookie, one made by another keyring, a cookie
//!   sent twice, or one past the expiry sealed into it are all simply absent;
//! - a cookie added with `Max-Age` or `Expires` has that deadline sealed into
//!   its value, so the server refuses it after the deadline even when a client
//!   replays it;
//! - a cookie that was read under an old key of the ring reports
//!   [`is_stale`](SignedCookieJar::is_stale): add it again to re-issue it
//!   under the current key (only the app knows its attributes);
//! - a `Set-Cookie` line longer than 4096 bytes is never sent (browsers would
//!   drop or truncate it): it is left out and logged as an error.
//!
//! Caveat: a signed cookie's value is readable by the client; use the private
//! jar for anything secret.
//!
//! ```
//! use axum::{extract::FromRef, routing::get, Router};
//! use keyfob::{jar::{Cookie, SignedCookieJar}, keys::Keyring};
//!
//! #[derive(Clone)]
//! struct AppState { keys: Keyring }
//!
//! impl FromRef<AppState> for Keyring {
//!     fn from_ref(state: &AppState) -> Keyring { state.keys.clone() }
//! }
//!
//! async fn set(jar: SignedCookieJar) -> SignedCookieJar {
//!     jar.add(Cookie::new("theme", "dark"))
//! }
//!
//! async fn read(jar: SignedCookieJar) -> String {
//!     match jar.get("theme") {
//!         Some(c) => format!("theme = {}", c.value()),
//!         None => "no theme set".into(),
//!     }
//! }
//!
//! let keys = Keyring::generate().unwrap();
//! let app: Router = Router::new()
//!     .route("/set", get(set))
//!     .route("/read", get(read))
//!     .with_state(AppState { keys: keys.clone() });
//!
//! // What `/read` sees: allowed, the value `/set` signed; rejected, a forgery.
//! let good = keys.sign("theme", b"dark", None).unwrap();
//! let jar = SignedCookieJar::from_headers(&cookie_header(&format!("theme={good}")), keys.clone());
//! assert_eq!(jar.get("theme").unwrap().value(), "dark");
//! let jar = SignedCookieJar::from_headers(&cookie_header("theme=dark"), keys);
//! assert!(jar.get("theme").is_none());
//!
//! fn cookie_header(v: &str) -> http::HeaderMap {
//!     let mut h = http::HeaderMap::new();
//!     h.insert(http::header::COOKIE, v.parse().unwrap());
//!     h
//! }
//! ```

use std::{convert::Infallible, fmt};

/// The `cookie` crate the jars use, to build cookies and their attributes.
pub use ::cookie;
use axum_core::{
    extract::{FromRef, FromRequestParts},
    response::{IntoResponseParts, ResponseParts},
};
pub use cookie::Cookie;
use http::{header, request::Parts, HeaderMap, HeaderValue};
use time::OffsetDateTime;

use crate::{
    cookie::MAX_SET_COOKIE,
    expiry::secs,
    keys::{Keyring, Opened, Purpose},
};

/// The most cookies a request may carry before the jars read none of them;
/// browsers cap cookies per site well below this (Chromium: 180).
const MAX_COOKIES: usize = 256;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Signed,
    Private,
}

#[derive(Clone)]
struct Jar {
    mode: Mode,
    keyring: Keyring,
    /// Cookies of the request that opened: (cookie, read under an old key).
    originals: Vec<(Cookie<'static>, bool)>,
    /// Cookies to send, at most one per name; removals included.
    delta: Vec<Cookie<'static>>,
    /// Request cookies that did not open: (name, value), for the security
    /// log when the app asks for one of them by name.
    refused: Vec<(String, String)>,
}

impl Jar {
    fn new(mode: Mode, keyring: Keyring) -> Self {
        Jar {
            mode,
            keyring,
            originals: Vec::new(),
            delta: Vec::new(),
            refused: Vec::new(),
        }
    }

    fn purpose(&self) -> Purpose {
        match self.mode {
            Mode::Signed => Purpose::SignedCookie,
            Mode::Private => Purpose::PrivateCookie,
        }
    }

    fn open(&self, name: &str, value: &str, now: OffsetDateTime) -> Option<Opened> {
        match self.mode {
            Mode::Signed => self.keyring.verify_for(self.purpose(), name, value, now),
            Mode::Private => self.keyring.decrypt_for(self.purpose(), name, value, now),
        }
    }

    fn from_headers(mode: Mode, headers: &HeaderMap, keyring: Keyring) -> Self {
        let mut jar = Jar::new(mode, keyring);
        // Names are counted as the bytes sent, before anything is filtered,
        // so the jars and the session cookie agree on what is a duplicate.
        let mut raw: Vec<(&[u8], &[u8])> = Vec::new();
        for pair in crate::cookie::pairs(headers) {
            raw.push(pair);
            if raw.len() > MAX_COOKIES {
                // No browser sends this many; verifying them all is work
                // an attacker could make us do per request.
                tracing::info!(
                    event = "cookie.flood",
                    "keyfob: more than {MAX_COOKIES} cookies in one request; reading none"
                );
                return jar;
            }
        }
        let mut seen: std::collections::HashMap<&[u8], usize> =
            std::collections::HashMap::with_capacity(raw.len());
        for (name, _) in &raw {
            *seen.entry(name).or_default() += 1;
        }
        let pairs: Vec<(&str, &str)> = raw
            .iter()
            .filter(|(name, _)| seen.get(name).copied().unwrap_or(0) == 1)
            .filter_map(|(name, value)| {
                Some((
                    std::str::from_utf8(name).ok()?,
                    std::str::from_utf8(value).ok()?,
                ))
            })
            .filter(|(name, _)| !name.is_empty())
            .collect();
        let now = jar.keyring.now();
        // A name sent twice is ambiguous (one may be planted by a sibling
        // domain): neither is trusted (filtered above).
        for &(name, value) in &pairs {
            let Some(opened) = jar.open(name, value, now) else {
                jar.refused.push((name.to_owned(), value.to_owned()));
                continue;
            };
            let stale = opened.is_stale();
            let expires_at = opened.expires_at();
            let Ok(plain) = String::from_utf8(opened.into_value()) else {
                continue;
            };
            let mut cookie = Cookie::new(name.to_owned(), plain);
            // The sealed deadline, so adding the cookie again keeps it.
            if let Some(at) = expires_at {
                cookie.set_expires(at);
            }
            jar.originals.push((cookie, stale));
        }
        jar
    }

    fn get(&self, name: &str) -> Option<Cookie<'static>> {
        if let Some(c) = self.delta.iter().find(|c| c.name() == name) {
            return (!is_removal(c)).then(|| c.clone());
        }
        let found = self
            .originals
            .iter()
            .find(|(c, _)| c.name() == name)
            .map(|(c, _)| c.clone());
        if found.is_none() {
            self.log_refused(name);
        }
        found
    }

    /// Logs a cookie the app asked for that was sent but did not open:
    /// expired (it opens when its sealed deadline is ignored) or tampered.
    /// Only the name is logged, never the value.
    fn log_refused(&self, name: &str) {
        let Some((_, value)) = self.refused.iter().find(|(n, _)| n == name) else {
            return;
        };
        let kind = match self.mode {
            Mode::Signed => "signed",
            Mode::Private => "private",
        };
        if self.open(name, value, OffsetDateTime::UNIX_EPOCH).is_some() {
            tracing::info!(
                event = "cookie.expired",
                cookie = name,
                jar = kind,
                "keyfob: expired cookie refused"
            );
        } else {
            tracing::warn!(event = "cookie.tampered", cookie = name, jar = kind, "keyfob: cookie with a bad signature refused (forged, tampered or from another key)");
        }
    }

    fn is_stale(&self, name: &str) -> bool {
        !self.delta.iter().any(|c| c.name() == name)
            && self
                .originals
                .iter()
                .any(|(c, stale)| *stale && c.name() == name)
    }

    fn put(&mut self, cookie: Cookie<'static>) {
        self.delta.retain(|c| c.name() != cookie.name());
        self.delta.push(cookie);
    }

    fn remove(&mut self, cookie: Cookie<'static>) {
        let mut removal = cookie;
        removal.make_removal();
        self.put(removal);
    }

    /// The `Set-Cookie` value for one delta cookie, with its value sealed.
    fn seal(&self, cookie: &Cookie<'static>, now: OffsetDateTime) -> Option<HeaderValue> {
        let mut out = cookie.clone();
        if !is_removal(cookie) {
            let expires_at = match (cookie.max_age(), cookie.expires_datetime()) {
                (Some(age), _) => Some(secs(now).saturating_add(age.whole_seconds())),
                (None, Some(at)) => Some(secs(at)),
                (None, None) => None,
            };
            let name = cookie.name();
            let value = cookie.value().as_bytes();
            let sealed = match self.mode {
                Mode::Signed => self
                    .keyring
                    .sign_for(self.purpose(), name, value, expires_at),
                Mode::Private => self
                    .keyring
                    .encrypt_for(self.purpose(), name, value, expires_at),
            };
            match sealed {
                Ok(v) => out.set_value(v),
                Err(err) => {
                    tracing::error!(cookie = name, error = %err, "keyfob: cookie not sealed; not sent");
                    return None;
                }
            }
        }
        let line = out.to_string();
        if line.len() > MAX_SET_COOKIE {
            tracing::error!(
                cookie = cookie.name(),
                bytes = line.len(),
                "keyfob: Set-Cookie longer than 4096 bytes; not sent"
            );
            return None;
        }
        HeaderValue::try_from(line).ok()
    }

    fn into_parts(self, mut res: ResponseParts) -> ResponseParts {
        let now = self.keyring.now();
        for cookie in &self.delta {
            if let Some(v) = self.seal(cookie, now) {
                res.headers_mut().append(header::SET_COOKIE, v);
            }
        }
        res
    }
}

fn is_removal(c: &Cookie<'_>) -> bool {
    c.max_age().is_some_and(|a| a.is_zero())
}

macro_rules! jar_type {
    ($(#[$doc:meta])* $name:ident, $mode:expr) => {
        $(#[$doc])*
        #[derive(Clone)]
        pub struct $name {
            jar: Jar,
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                // Names only: values may be secrets.
                f.debug_struct(stringify!($name))
                    .field(
                        "cookies",
                        &self.jar.originals.iter().map(|(c, _)| c.name()).collect::<Vec<_>>(),
                    )
                    .finish_non_exhaustive()
            }
        }

        impl $name {
            /// An empty jar on `keyring`, for code outside an extractor.
            pub fn new(keyring: Keyring) -> Self {
                $name { jar: Jar::new($mode, keyring) }
            }

            /// The jar of a request's `Cookie` headers: only the cookies
            /// that open under their own name are kept.
            pub fn from_headers(headers: &HeaderMap, keyring: Keyring) -> Self {
                $name { jar: Jar::from_headers($mode, headers, keyring) }
            }

            /// The cookie `name` with its plain value, or `None` when it was
            /// absent, forged, tampered with, expired or removed. A cookie
            /// read from the request carries its sealed deadline as
            /// `Expires`, so adding it again (after a key rotation) keeps it.
            pub fn get(&self, name: &str) -> Option<Cookie<'static>> {
                self.jar.get(name)
            }

            /// Adds (or replaces) a cookie; its value is sealed when the jar is
            /// turned into the response, with its `Max-Age`/`Expires` inside.
            // Named as in axum-extra's jars, so migrating is a change of `use`.
            #[allow(clippy::should_implement_trait)]
            #[must_use]
            pub fn add<C: Into<Cookie<'static>>>(mut self, cookie: C) -> Self {
                self.jar.put(cookie.into());
                self
            }

            /// Removes a cookie: sends a removal with the cookie's `Path` and
            /// `Domain` (set them as when it was added), present or not.
            #[must_use]
            pub fn remove<C: Into<Cookie<'static>>>(mut self, cookie: C) -> Self {
                self.jar.remove(cookie.into());
                self
            }

            /// True when the request's cookie `name` opened under an old key
            /// of the ring and has not been added again: add it again to
            /// re-issue it under the current key.
            pub fn is_stale(&self, name: &str) -> bool {
                self.jar.is_stale(name)
            }
        }

        impl<S> FromRequestParts<S> for $name
        where
            S: Send + Sync,
            Keyring: FromRef<S>,
        {
            type Rejection = Infallible;

            async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
                Ok($name::from_headers(&parts.headers, Keyring::from_ref(state)))
            }
        }

        impl IntoResponseParts for $name {
            type Error = Infallible;

            fn into_response_parts(self, res: ResponseParts) -> Result<ResponseParts, Self::Error> {
                Ok(self.jar.into_parts(res))
            }
        }

        impl axum_core::response::IntoResponse for $name {
            fn into_response(self) -> axum_core::response::Response {
                (self, ()).into_response()
            }
        }
    };
}

jar_type!(
    /// Cookies signed with HMAC-SHA256 under the keyring: readable by the
    /// client, but any change makes them absent.
    ///
    /// ```
    /// use keyfob::{jar::{Cookie, SignedCookieJar}, keys::Keyring};
    ///
    /// async fn login(jar: SignedCookieJar) -> SignedCookieJar {
    ///     jar.add(Cookie::build(("session_user", "42")).max_age(time::Duration::days(7)))
    /// }
    /// let jar = SignedCookieJar::new(Keyring::generate().unwrap());
    /// assert!(jar.get("session_user").is_none());
    /// ```
    SignedCookieJar,
    Mode::Signed
);

jar_type!(
    /// Cookies encrypted with AES-256-GCM under the keyring: the client can
    /// neither read nor change them.
    ///
    /// ```
    /// use keyfob::{jar::{Cookie, PrivateCookieJar}, keys::Keyring};
    ///
    /// let jar = PrivateCookieJar::new(Keyring::generate().unwrap())
    ///     .add(Cookie::new("token", "s3cret"));
    /// assert_eq!(jar.get("token").unwrap().value(), "s3cret");
    /// ```
    PrivateCookieJar,
    Mode::Private
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::tests::{key, tampered};
    use axum_core::response::IntoResponse;
    use time::Duration;

    fn headers(cookie: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_str(cookie).unwrap());
        h
    }

    /// The `name=value` that a jar sends for one added cookie.
    fn sent(jar: impl IntoResponse, name: &str) -> String {
        let res = jar.into_response();
        let line = res
            .headers()
            .get_all(header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .find(|v| v.starts_with(&format!("{name}=")))
            .unwrap();
        line.split(';').next().unwrap().to_owned()
    }

    #[test]
    fn tamper_matrix_reads_every_jar_cookie_as_absent() {
        let keys = Keyring::new(key(1)).unwrap();
        let signed = sent(
            SignedCookieJar::new(keys.clone()).add(Cookie::new("theme", "dark")),
            "theme",
        );
        let private = sent(
            PrivateCookieJar::new(keys.clone()).add(Cookie::new("theme", "dark")),
            "theme",
        );
        let value = |s: &str| s.trim_start_matches("theme=").to_owned();
        assert_eq!(
            SignedCookieJar::from_headers(&headers(&signed), keys.clone())
                .get("theme")
                .unwrap()
                .value(),
            "dark"
        );
        for case in tampered(&value(&signed)) {
            // Spaces around a value are header syntax (trimmed by every
            // parser), not a change of the value.
            if case.trim() != case {
                continue;
            }
            let Ok(h) = HeaderValue::from_str(&format!("theme={case}")) else {
                continue;
            };
            let mut map = HeaderMap::new();
            map.insert(header::COOKIE, h);
            assert!(
                SignedCookieJar::from_headers(&map, keys.clone())
                    .get("theme")
                    .is_none(),
                "{case:?}"
            );
        }
        for case in tampered(&value(&private)) {
            // Spaces around a value are header syntax (trimmed by every
            // parser), not a change of the value.
            if case.trim() != case {
                continue;
            }
            let Ok(h) = HeaderValue::from_str(&format!("theme={case}")) else {
                continue;
            };
            let mut map = HeaderMap::new();
            map.insert(header::COOKIE, h);
            assert!(PrivateCookieJar::from_headers(&map, keys.clone())
                .get("theme")
                .is_none());
        }
        // Moved to another name, signed read as private, another keyring, duplicated.
        let moved = format!("font={}", value(&signed));
        assert!(
            SignedCookieJar::from_headers(&headers(&moved), keys.clone())
                .get("font")
                .is_none()
        );
        assert!(
            PrivateCookieJar::from_headers(&headers(&signed), keys.clone())
                .get("theme")
                .is_none()
        );
        let other = Keyring::new(key(2)).unwrap();
        assert!(SignedCookieJar::from_headers(&headers(&signed), other)
            .get("theme")
            .is_none());
        let twice = format!("{signed}; {signed}");
        assert!(
            SignedCookieJar::from_headers(&headers(&twice), keys.clone())
                .get("theme")
                .is_none()
        );
        // A second copy that is not even UTF-8 still makes the name
        // ambiguous, as it does for the session cookie.
        let mut bytes = format!("{signed}; theme=").into_bytes();
        bytes.push(0xff);
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_bytes(&bytes).unwrap());
        assert!(SignedCookieJar::from_headers(&h, keys)
            .get("theme")
            .is_none());
    }

    #[test]
    fn max_age_is_sealed_into_the_value_and_enforced_on_replay() {
        let clock = crate::ManualClock::new();
        let keys = Keyring::new(key(1)).unwrap().with_clock(clock.clone());
        let jar = SignedCookieJar::new(keys.clone())
            .add(Cookie::build(("session_user", "42")).max_age(Duration::days(7)));
        let pair = sent(jar, "session_user");
        clock.advance(Duration::days(7) - Duration::seconds(1));
        let jar = SignedCookieJar::from_headers(&headers(&pair), keys.clone());
        assert_eq!(jar.get("session_user").unwrap().value(), "42");
        clock.advance(Duration::seconds(1));
        let jar = SignedCookieJar::from_headers(&headers(&pair), keys);
        assert!(jar.get("session_user").is_none());
    }

    #[test]
    fn cookie_made_under_an_old_key_is_stale_until_added_again() {
        let old = Keyring::new(key(1)).unwrap();
        let pair = sent(
            SignedCookieJar::new(old).add(Cookie::new("theme", "dark")),
            "theme",
        );
        let rotated = Keyring::from_keys([key(2), key(1)]).unwrap();
        let jar = SignedCookieJar::from_headers(&headers(&pair), rotated.clone());
        assert!(jar.is_stale("theme"));
        let c = jar.get("theme").unwrap();
        let jar = jar.add(c);
        assert!(!jar.is_stale("theme"));
        let reissued = sent(jar, "theme");
        let only_new = Keyring::new(key(2)).unwrap();
        let jar = SignedCookieJar::from_headers(&headers(&reissued), only_new.clone());
        assert_eq!(jar.get("theme").unwrap().value(), "dark");
        assert!(SignedCookieJar::from_headers(&headers(&pair), only_new)
            .get("theme")
            .is_none());
    }

    #[test]
    fn removal_is_sent_even_for_a_cookie_that_did_not_verify() {
        let keys = Keyring::new(key(1)).unwrap();
        let jar = SignedCookieJar::from_headers(&headers("session_user=forged"), keys)
            .remove(Cookie::build("session_user").path("/"));
        assert!(jar.get("session_user").is_none());
        let res = jar.into_response();
        let line = res.headers()[header::SET_COOKIE].to_str().unwrap();
        assert!(line.starts_with("session_user=;"), "{line}");
        assert!(
            line.contains("Max-Age=0") && line.contains("Path=/"),
            "{line}"
        );
    }

    #[test]
    fn oversized_cookie_is_not_sent() {
        let keys = Keyring::new(key(1)).unwrap();
        let jar = SignedCookieJar::new(keys).add(Cookie::new("big", "x".repeat(4000)));
        let res = jar.into_response();
        assert!(res.headers().get(header::SET_COOKIE).is_none());
    }
}
