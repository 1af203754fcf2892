//! Cookie settings, checked when the layer is built, and the one reader and
//!
//! (The rules, caveats and examples are on the public type below,
//! where docs.rs shows them: this module is private.)

use std::fmt::Write as _;

use http::{header::COOKIE, HeaderMap, HeaderValue};

use crate::error::Error;

/// The longest `Set-Cookie` value (name, value and attributes) keyfob sends:
/// browsers must keep cookies up to 4096 bytes (RFC 6265 §6.1) and drop or
/// truncate longer ones.
#[cfg_attr(not(any(feature = "axum", feature = "cookie-store")), allow(dead_code))]
pub(crate) const MAX_SET_COOKIE: usize = 4096;

/// The `SameSite` attribute of the session cookie.
///
/// ```
/// assert_ne!(keyfob::SameSite::Lax, keyfob::SameSite::Strict);
/// ```
///
/// writer of the session cookie.
///
/// Rules:
/// - the name must be an RFC 6265 token, and matches byte for byte;
/// - `__Host-` names need `Secure`, `Path=/` and no `Domain`; `__Secure-`
///   names need `Secure`; `SameSite=None` and `Partitioned` need `Secure`.
///   A configuration that breaks a rule is refused by
///   [`SessionLayerBuilder::build`](crate::SessionLayerBuilder::build) with a
///   message that says what to change;
/// - the removal cookie carries exactly the attributes of the cookie it
///   removes, or browsers would keep the original;
/// - reading is strict: a request with the name twice, or a value that is not
///   a canonical session ID, has no session.
///
/// ```
/// use keyfob::{MemoryStore, SessionLayer, SameSite};
///
/// // Allowed:
/// SessionLayer::builder(MemoryStore::new()).with_name("__Host-sid").build().unwrap();
/// // Refused: SameSite=None without Secure.
/// let err = SessionLayer::builder(MemoryStore::new())
///     .with_secure(false)
///     .with_same_site(SameSite::None)
///     .build()
///     .unwrap_err();
/// assert!(err.to_string().contains("Secure"));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameSite {
    /// Sent only with same-site requests.
    Strict,
    /// Sent with same-site requests and top-level navigations (the default).
    Lax,
    /// Sent with every request; requires `Secure`.
    None,
}

impl SameSite {
    fn as_str(self) -> &'static str {
        match self {
            SameSite::Strict => "Strict",
            SameSite::Lax => "Lax",
            SameSite::None => "None",
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct CookieConfig {
    pub(crate) name: Box<str>,
    pub(crate) secure: bool,
    pub(crate) http_only: bool,
    pub(crate) same_site: SameSite,
    pub(crate) domain: Option<Box<str>>,
    pub(crate) path: Box<str>,
    pub(crate) partitioned: bool,
}

impl Default for CookieConfig {
    fn default() -> Self {
        CookieConfig {
            name: "id".into(),
            secure: true,
            http_only: true,
            same_site: SameSite::Lax,
            domain: None,
            path: "/".into(),
            partitioned: false,
        }
    }
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_graphic() && !br#"()<>@,;:\"/[]?={}"#.contains(&b)
}

fn is_attr_value(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_graphic() && b != b';' && b != b',')
}

impl CookieConfig {
    pub(crate) fn validate(&self) -> Result<(), Error> {
        let name = &*self.name;
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            return Err(Error::config(format!(
                "cookie name {name:?} is not a valid cookie name: use letters, digits and !#$%&'*+-.^_`|~ only"
            )));
        }
        if name.starts_with("__Host-") {
            if !self.secure {
                return Err(Error::config(
                    "a `__Host-` cookie must be Secure: remove `with_secure(false)` or drop the prefix",
                ));
            }
            if self.domain.is_some() {
                return Err(Error::config(
                    "a `__Host-` cookie may not have a Domain: remove `with_domain` or use the `__Secure-` prefix",
                ));
            }
            if &*self.path != "/" {
                return Err(Error::config(
                    "a `__Host-` cookie must have Path=/: remove `with_path` or drop the prefix",
                ));
            }
        }
        if name.starts_with("__Secure-") && !self.secure {
            return Err(Error::config(
                "a `__Secure-` cookie must be Secure: remove `with_secure(false)` or drop the prefix",
            ));
        }
        if self.same_site == SameSite::None && !self.secure {
            return Err(Error::config(
                "SameSite=None requires Secure (browsers drop such cookies): enable `with_secure(true)`",
            ));
        }
        if self.partitioned && !self.secure {
            return Err(Error::config(
                "a Partitioned cookie must be Secure: enable `with_secure(true)`",
            ));
        }
        if let Some(domain) = &self.domain {
            if domain.is_empty() || !is_attr_value(domain) {
                return Err(Error::config(format!(
                    "cookie domain {domain:?} is not a valid domain"
                )));
            }
        }
        if !self.path.starts_with('/') || !is_attr_value(&self.path) {
            return Err(Error::config(format!(
                "cookie path {:?} must start with `/` and contain no `;`, `,` or spaces",
                self.path
            )));
        }
        Ok(())
    }

    fn attributes(&self, out: &mut String) {
        out.push_str("; Path=");
        out.push_str(&self.path);
        if let Some(d) = &self.domain {
            out.push_str("; Domain=");
            out.push_str(d);
        }
        if self.secure {
            out.push_str("; Secure");
        }
        if self.http_only {
            out.push_str("; HttpOnly");
        }
        out.push_str("; SameSite=");
        out.push_str(self.same_site.as_str());
        if self.partitioned {
            out.push_str("; Partitioned");
        }
    }

    /// The length of [`set_cookie`](Self::set_cookie)'s line for a value of
    /// `value_len` bytes, without building it: a cookie session checks its
    /// size against the browsers' limit before anything is written.
    pub(crate) fn set_cookie_len(&self, value_len: usize, max_age: Option<i64>) -> usize {
        let digits = |n: i64| n.max(0).checked_ilog10().map_or(1, |d| d as usize + 1);
        let mut len = self.name.len() + 1 + value_len;
        if let Some(age) = max_age {
            len += "; Max-Age=".len() + digits(age);
        }
        len += "; Path=".len() + self.path.len();
        if let Some(d) = &self.domain {
            len += "; Domain=".len() + d.len();
        }
        if self.secure {
            len += "; Secure".len();
        }
        if self.http_only {
            len += "; HttpOnly".len();
        }
        len += "; SameSite=".len() + self.same_site.as_str().len();
        if self.partitioned {
            len += "; Partitioned".len();
        }
        len
    }

    /// `Set-Cookie` for a session ID; `max_age` `None` makes a browser-session cookie.
    pub(crate) fn set_cookie(&self, value: &str, max_age: Option<i64>) -> HeaderValue {
        // Exactly the line's length: a `String` with spare capacity costs
        // `Bytes` a second allocation when it becomes the header value.
        let mut s = String::with_capacity(self.set_cookie_len(value.len(), max_age));
        s.push_str(&self.name);
        s.push('=');
        s.push_str(value);
        if let Some(age) = max_age {
            let _ = write!(s, "; Max-Age={}", age.max(0));
        }
        self.attributes(&mut s);
        header_value(s)
    }

    /// `Set-Cookie` that removes the cookie; mirrors every attribute.
    pub(crate) fn removal(&self) -> HeaderValue {
        let mut s = String::with_capacity(self.name.len() + 120);
        s.push_str(&self.name);
        s.push_str("=; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT");
        self.attributes(&mut s);
        header_value(s)
    }

    /// The session cookie value the request presents, under the strict rules
    /// above; the layer decides what a value must look like (an ID, a signed
    /// ID, a sealed session).
    pub(crate) fn read<'h>(&self, headers: &'h HeaderMap) -> Presented<'h> {
        let name = self.name.as_bytes();
        let mut found: Option<&[u8]> = None;
        for (k, v) in pairs(headers) {
            if k != name {
                continue;
            }
            if found.is_some() {
                return Presented::Invalid("duplicated session cookie");
            }
            found = Some(v);
        }
        match found {
            None => Presented::None,
            Some(v) => Presented::Value(v),
        }
    }
}

/// Every `name=value` pair of a request's `Cookie` headers, trimmed, in the
/// order sent; pieces without `=` are skipped. The one parser of the
/// `Cookie` header: the session cookie and the signed and private jars both
/// read through it, so they cannot disagree about what a request carries.
pub(crate) fn pairs(headers: &HeaderMap) -> impl Iterator<Item = (&[u8], &[u8])> {
    headers
        .get_all(COOKIE)
        .iter()
        .flat_map(|h| h.as_bytes().split(|&b| b == b';'))
        .filter_map(|pair| {
            let pair = trim(pair);
            let i = pair.iter().position(|&b| b == b'=')?;
            Some((trim(&pair[..i]), trim(&pair[i + 1..])))
        })
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| *c != b' ' && *c != b'\t')
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| *c != b' ' && *c != b'\t')
        .map_or(start, |e| e + 1);
    &b[start..end]
}

fn header_value(s: String) -> HeaderValue {
    // Every part was validated at build time or is base64url/digits, so this
    // cannot fail; fall back to an inert value rather than panic regardless.
    HeaderValue::try_from(s).unwrap_or_else(|_| HeaderValue::from_static("invalid=; Max-Age=0"))
}

/// What the request's `Cookie` headers say about the session.
#[derive(Debug)]
pub(crate) enum Presented<'h> {
    None,
    Value(&'h [u8]),
    Invalid(&'static str),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::SessionId;

    fn cfg() -> CookieConfig {
        CookieConfig::default()
    }

    fn headers(values: &[&[u8]]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(COOKIE, HeaderValue::from_bytes(v).unwrap());
        }
        h
    }

    #[test]
    fn set_cookie_len_is_the_length_of_the_line_it_would_write() {
        let mut configs = vec![cfg()];
        let mut c = cfg();
        c.domain = Some("example.com".into());
        c.partitioned = true;
        c.same_site = SameSite::None;
        c.path = "/app".into();
        configs.push(c);
        let mut c = cfg();
        c.secure = false;
        c.http_only = false;
        c.same_site = SameSite::Strict;
        configs.push(c);
        for c in &configs {
            for value in ["", "v", &"x".repeat(4000)] {
                for age in [
                    None,
                    Some(0),
                    Some(-5),
                    Some(9),
                    Some(10),
                    Some(7200),
                    Some(i64::MAX),
                ] {
                    assert_eq!(
                        c.set_cookie_len(value.len(), age),
                        c.set_cookie(value, age).len(),
                        "{value:?} {age:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn cookie_name_must_match_byte_for_byte() {
        let id = SessionId::generate().unwrap().encode();
        for other in ["ID", "xid", "i", "id2", "Id"] {
            let h = headers(&[format!("{other}={id}").as_bytes()]);
            assert!(matches!(cfg().read(&h), Presented::None), "{other}");
        }
        let h = headers(&[format!("a=b; id={id}; c=d").as_bytes()]);
        assert!(matches!(cfg().read(&h), Presented::Value(_)));
    }

    #[test]
    fn duplicated_session_cookie_is_no_session() {
        let id = SessionId::generate().unwrap().encode();
        let h = headers(&[format!("id={id}").as_bytes(), format!("id={id}").as_bytes()]);
        assert!(matches!(cfg().read(&h), Presented::Invalid(_)));
        let h = headers(&[format!("id={id}; id={id}").as_bytes()]);
        assert!(matches!(cfg().read(&h), Presented::Invalid(_)));
    }

    #[test]
    fn removal_cookie_mirrors_every_attribute() {
        let c = CookieConfig {
            domain: Some("example.com".into()),
            path: "/app".into(),
            partitioned: true,
            same_site: SameSite::Strict,
            ..cfg()
        };
        let set = c.set_cookie("v", Some(10));
        let set = set.to_str().unwrap();
        let rm = c.removal();
        let rm = rm.to_str().unwrap();
        for attr in [
            "Path=/app",
            "Domain=example.com",
            "Secure",
            "HttpOnly",
            "SameSite=Strict",
            "Partitioned",
        ] {
            assert!(set.contains(attr) && rm.contains(attr), "{attr}");
        }
        assert!(rm.contains("Max-Age=0"));
    }

    #[test]
    fn invalid_configurations_are_refused_with_a_reason() {
        let cases: Vec<(CookieConfig, &str)> = vec![
            (
                CookieConfig {
                    name: "".into(),
                    ..cfg()
                },
                "name",
            ),
            (
                CookieConfig {
                    name: "a b".into(),
                    ..cfg()
                },
                "name",
            ),
            (
                CookieConfig {
                    name: "a;b".into(),
                    ..cfg()
                },
                "name",
            ),
            (
                CookieConfig {
                    name: "__Host-x".into(),
                    secure: false,
                    ..cfg()
                },
                "Secure",
            ),
            (
                CookieConfig {
                    name: "__Host-x".into(),
                    domain: Some("a.com".into()),
                    ..cfg()
                },
                "Domain",
            ),
            (
                CookieConfig {
                    name: "__Host-x".into(),
                    path: "/a".into(),
                    ..cfg()
                },
                "Path",
            ),
            (
                CookieConfig {
                    name: "__Secure-x".into(),
                    secure: false,
                    ..cfg()
                },
                "Secure",
            ),
            (
                CookieConfig {
                    same_site: SameSite::None,
                    secure: false,
                    ..cfg()
                },
                "Secure",
            ),
            (
                CookieConfig {
                    partitioned: true,
                    secure: false,
                    ..cfg()
                },
                "Secure",
            ),
            (
                CookieConfig {
                    domain: Some("a.com; x".into()),
                    ..cfg()
                },
                "domain",
            ),
            (
                CookieConfig {
                    path: "app".into(),
                    ..cfg()
                },
                "path",
            ),
        ];
        for (c, word) in cases {
            let err = c.validate().unwrap_err();
            assert!(
                err.to_string().contains(word),
                "{err} should mention {word}"
            );
        }
        assert!(CookieConfig {
            name: "__Host-id".into(),
            ..cfg()
        }
        .validate()
        .is_ok());
    }
}
