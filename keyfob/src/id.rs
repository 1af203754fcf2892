//! Session IDs and their public handles.
//!
//! (The rules, caveats and examples are on the public type below,
//! where docs.rs shows them: this module is private.)

use std::{fmt, str::FromStr, sync::OnceLock};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use sha2::{Digest, Sha256};

use crate::error::{Error, ErrorKind};

const ID_LEN: usize = 32;
pub(crate) const ENCODED_LEN: usize = 43;

/// `N` bytes from the operating system's CSPRNG: the one source of every
/// secret keyfob makes (session IDs, keys, nonces, CSRF secrets). A failure
/// is [`ErrorKind::Random`] with the OS error as its source.
pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N], Error> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|e| Error::with_source(ErrorKind::Random, e))?;
    Ok(bytes)
}

/// A session ID: the secret that the cookie carries. Crate-private by design.
///
/// It keeps its handle once hashed: a request that loads and saves its
/// session asks for it at least twice. Hashed on first use, not when the
/// cookie is parsed: the layer parses the cookie of every request, and most
/// handlers behind it may never open the session.
#[derive(Clone)]
pub(crate) struct SessionId {
    secret: [u8; ID_LEN],
    handle: OnceLock<Handle>,
}

impl PartialEq for SessionId {
    fn eq(&self, other: &Self) -> bool {
        // The handle follows from the secret.
        self.secret == other.secret
    }
}

impl Eq for SessionId {}

impl SessionId {
    fn new(secret: [u8; ID_LEN]) -> Self {
        SessionId {
            secret,
            handle: OnceLock::new(),
        }
    }

    pub(crate) fn generate() -> Result<Self, Error> {
        Ok(SessionId::new(random_bytes()?))
    }

    /// Parses a cookie value; `None` unless it is exactly a canonical ID.
    pub(crate) fn parse(value: &[u8]) -> Option<Self> {
        if value.len() != ENCODED_LEN {
            return None;
        }
        let mut bytes = [0u8; ID_LEN];
        // `decode_slice` rejects non-canonical trailing bits with the default
        // engine config, so one ID has exactly one accepted spelling.
        match URL_SAFE_NO_PAD.decode_slice(value, &mut bytes) {
            Ok(ID_LEN) => Some(SessionId::new(bytes)),
            _ => None,
        }
    }

    pub(crate) fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.secret)
    }

    /// The cookie form written into `buf`, with no allocation; `None` only
    /// if the encoder disagreed about the length (then use [`Self::encode`]).
    pub(crate) fn encode_into<'b>(&self, buf: &'b mut [u8; ENCODED_LEN]) -> Option<&'b str> {
        match URL_SAFE_NO_PAD.encode_slice(self.secret, buf) {
            // base64url output is ASCII.
            Ok(ENCODED_LEN) => std::str::from_utf8(buf).ok(),
            _ => None,
        }
    }

    pub(crate) fn handle(&self) -> Handle {
        *self
            .handle
            .get_or_init(|| Handle(Sha256::digest(self.secret).into()))
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret; the handle identifies it well enough.
        write!(f, "SessionId(handle={})", self.handle().short())
    }
}

/// Characters of a tower-sessions cookie value: 16 bytes as unpadded base64url.
const LEGACY_ENCODED_LEN: usize = 22;

/// The handle of a session imported from tower-sessions, if `value` is a
/// canonical tower-sessions cookie value (its 128-bit `Id` as 22 characters
/// of unpadded base64url). The handle is the SHA-256 of the cookie value's
/// bytes, so the store holds nothing that works as that cookie either. A
/// keyfob ID (43 characters) never has this form.
pub(crate) fn legacy_handle(value: &[u8]) -> Option<Handle> {
    if value.len() != LEGACY_ENCODED_LEN {
        return None;
    }
    let mut bytes = [0u8; 16];
    match URL_SAFE_NO_PAD.decode_slice(value, &mut bytes) {
        Ok(16) => Some(Handle(Sha256::digest(value).into())),
        _ => None,
    }
}

/// The public name of a session: the SHA-256 of its ID.
///
/// Stores key records by it; apps show it to users to name a session (the
/// "your sessions" list). It cannot be turned back into an ID, so it is never
/// usable as a cookie. Displayed and parsed as 64 lowercase hex digits.
///
/// ```
/// use keyfob::Handle;
///
/// let h = Handle::from_bytes([7; 32]);
/// let text = h.to_string();
/// assert_eq!(text.len(), 64);
/// assert_eq!(text.parse::<Handle>().unwrap(), h);
/// ```
///
/// Rules:
/// - an ID is 256 bits from the operating system's CSPRNG, written in the
///   cookie as 43 characters of unpadded base64url;
/// - a cookie value is accepted only in that exact canonical form: anything
///   else (other length, padding, other alphabet, non-canonical trailing bits)
///   is "no session";
/// - stores never see the ID. They key records by its SHA-256, the
///   [`Handle`], so a leaked store or log holds nothing that works as a cookie.
///   The handle is also what the app shows a user to name a session (the
///   session list, revoke buttons): 64 hex digits, which never parse as a
///   cookie value.
///
/// A raw ID cannot be constructed, printed or read through the public API.
///
/// ```
/// use keyfob::Handle;
///
/// let handle: Handle = "00".repeat(32).parse().unwrap();
/// assert_eq!(handle.to_string(), "00".repeat(32));
/// // Anything else is refused.
/// assert!("not-a-handle".parse::<Handle>().is_err());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Handle([u8; 32]);

impl Handle {
    /// A handle from its 32 bytes, as a store that keeps binary keys reads it back.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Handle(bytes)
    }

    /// The 32 bytes of the handle, for stores that keep binary keys.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The first 8 hex digits: enough to correlate log lines, too short to
    /// enumerate anything.
    pub fn short(&self) -> String {
        let mut s = self.to_string();
        s.truncate(8);
        s
    }
}

impl fmt::Display for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Handle({self})")
    }
}

/// The error of parsing a [`Handle`] from text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseHandleError;

impl fmt::Display for ParseHandleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a session handle is 64 lowercase hex digits")
    }
}

impl std::error::Error for ParseHandleError {}

impl FromStr for Handle {
    type Err = ParseHandleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.as_bytes();
        if s.len() != 64 {
            return Err(ParseHandleError);
        }
        let mut out = [0u8; 32];
        for (i, pair) in s.chunks_exact(2).enumerate() {
            out[i] = (hex_digit(pair[0])? << 4) | hex_digit(pair[1])?;
        }
        Ok(Handle(out))
    }
}

fn hex_digit(c: u8) -> Result<u8, ParseHandleError> {
    match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        _ => Err(ParseHandleError),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_round_trip_through_the_cookie_form() {
        let id = SessionId::generate().unwrap();
        let text = id.encode();
        assert_eq!(text.len(), ENCODED_LEN);
        assert_eq!(SessionId::parse(text.as_bytes()), Some(id));
    }

    #[test]
    fn non_canonical_cookie_values_are_refused() {
        let id = SessionId::generate().unwrap().encode();
        let cases: Vec<String> = vec![
            String::new(),
            id[..42].to_string(),
            format!("{id}A"),
            format!("{id}="),
            id.replace(|c: char| c.is_ascii_alphanumeric(), "+"),
            // The last character carries 4 unused bits; a non-zero one is another spelling.
            format!("{}B", &"A".repeat(42)),
            "A".repeat(43).to_lowercase().replace('a', "/"),
        ];
        for case in cases {
            assert_eq!(SessionId::parse(case.as_bytes()), None, "{case:?}");
        }
    }

    #[test]
    fn handle_never_parses_as_an_id() {
        let id = SessionId::generate().unwrap();
        assert_eq!(SessionId::parse(id.handle().to_string().as_bytes()), None);
    }

    #[test]
    fn the_handle_is_the_sha256_of_the_secret_whichever_way_the_id_was_made() {
        let made = SessionId::generate().unwrap();
        let parsed = SessionId::parse(made.encode().as_bytes()).unwrap();
        let expected = Handle(Sha256::digest(made.secret).into());
        assert_eq!(made.handle(), expected);
        assert_eq!(parsed.handle(), expected);
    }

    #[test]
    fn encode_into_writes_the_cookie_form() {
        let id = SessionId::generate().unwrap();
        let mut buf = [0; ENCODED_LEN];
        assert_eq!(id.encode_into(&mut buf), Some(id.encode().as_str()));
    }

    #[test]
    fn debug_does_not_print_the_secret() {
        let id = SessionId::generate().unwrap();
        assert!(!format!("{id:?}").contains(&id.encode()));
    }

    #[test]
    fn legacy_handles_need_the_exact_tower_sessions_form() {
        // tower-sessions writes an `Id(i128)` as base64url of its 16 little-endian bytes.
        let value = URL_SAFE_NO_PAD.encode(42i128.to_le_bytes());
        let handle = legacy_handle(value.as_bytes()).unwrap();
        assert_eq!(
            handle.as_bytes(),
            &<[u8; 32]>::from(Sha256::digest(value.as_bytes()))
        );
        for bad in [
            &value[..21],
            "A".repeat(21).as_str(),
            &format!("{}B", "A".repeat(21)),
        ] {
            assert_eq!(legacy_handle(bad.as_bytes()), None, "{bad:?}");
        }
        let keyfob_id = SessionId::generate().unwrap().encode();
        assert_eq!(legacy_handle(keyfob_id.as_bytes()), None);
    }

    #[test]
    fn handle_parse_refuses_uppercase_and_wrong_length() {
        assert!("AA".repeat(32).parse::<Handle>().is_err());
        assert!("0".repeat(63).parse::<Handle>().is_err());
        assert!("g".repeat(64).parse::<Handle>().is_err());
    }
}
