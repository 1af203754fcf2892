//! Master keys, per-purpose keys, and the signed and encrypted cookie values
//! built on them.
//!
//! Rules:
//! - a [`Keyring`] holds one or more master keys. The first signs and
//!   encrypts; the others only verify and decrypt, so a key rotates without
//!   logging anyone out: put the new key first and keep the old one after it
//!   until every cookie made under it has expired. A value opened under an old
//!   key says so ([`Opened::is_stale`]) and its writer re-issues it under the
//!   current key;
//! - nothing is signed or encrypted with a master key itself: every use
//!   derives its own key with HKDF-SHA256 from the master key, the purpose
//!   (signed cookie, private cookie, session ID, cookie session) *and the cookie
//!   name*, so a value made for one cookie or purpose never opens as another;
//! - signed values are HMAC-SHA256 over the cookie name and the payload, checked
//!   in constant time; private values are AES-256-GCM with a fresh random
//!   96-bit nonce per write and the cookie name as associated data;
//! - an expiry can be sealed into the value ([`Keyring::sign`] with
//!   `Some(deadline)`): past it the value reads as absent, whatever the
//!   browser kept, so a replayed old cookie is refused by the server;
//! - a value opens only in its exact canonical form: a changed, missing or
//!   extra byte, another case, swapped segments, another cookie name or
//!   another keyring all read as absent (`None`), never as an error;
//! - master keys shorter than 32 bytes, or obviously not random (few distinct
//!   bytes, an arithmetic sequence), are refused with
//!   [`ErrorKind::Config`](crate::ErrorKind::Config) and a message that says
//!   how to make a good one.
//!
//! Caveats: a signed value is readable by the client (base64url, not
//! encrypted); use the private form for anything secret. Keys live in
//! process memory for the life of the keyring and are not zeroed on drop.
//!
//! ```
//! use keyfob::keys::Keyring;
//!
//! let keys = Keyring::generate().unwrap();
//! let value = keys.sign("theme", b"dark", None).unwrap();
//! // Allowed: the value opens under the name it was made for.
//! assert_eq!(keys.verify("theme", &value).unwrap().value(), b"dark");
//! // Rejected: another cookie name, or a changed byte.
//! assert!(keys.verify("font", &value).is_none());
//! let forged = value.replacen('.', "A.", 1);
//! assert!(keys.verify("theme", &forged).is_none());
//! // Rejected: a weak key.
//! assert!(Keyring::new([0u8; 64]).is_err());
//! ```

use std::{fmt, io::Write as _, path::Path, sync::Arc};

use aes_gcm::{
    aead::{Aead, Payload},
    Aes256Gcm, KeyInit,
};
use base64::{
    engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD},
    Engine as _,
};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use time::OffsetDateTime;

use crate::{
    error::{Error, Result},
    expiry::{instant, secs, Clock, SystemClock},
};

/// The shortest master key accepted, in bytes.
pub const MIN_KEY_LEN: usize = 32;
/// The length of a key made by [`Keyring::generate`] and [`Keyring::load_or_create`].
pub const GENERATED_KEY_LEN: usize = 64;

const SALT: &[u8] = b"keyfob keyring v1";
const VERSION: u8 = 1;
const HEADER_LEN: usize = 1 + 8;
const TAG_LEN: usize = 32;
const NONCE_LEN: usize = 12;

/// What a derived key is for; part of the HKDF info, so keys never cross purposes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Purpose {
    SignedCookie,
    PrivateCookie,
    SessionId,
    #[cfg(feature = "cookie-store")]
    SealedSession,
    #[cfg(feature = "cookie-store")]
    SignedSession,
}

impl Purpose {
    fn label(self) -> &'static [u8] {
        match self {
            Purpose::SignedCookie => b"signed-cookie",
            Purpose::PrivateCookie => b"private-cookie",
            Purpose::SessionId => b"session-id",
            #[cfg(feature = "cookie-store")]
            Purpose::SealedSession => b"sealed-session",
            #[cfg(feature = "cookie-store")]
            Purpose::SignedSession => b"signed-session",
        }
    }
}

/// One or more master keys: the first signs and encrypts, all of them verify
/// and decrypt. Cheap to clone (an `Arc`); put it in the app state and reach
/// it with `FromRef` (see the `jar` module).
///
/// ```
/// use keyfob::keys::Keyring;
///
/// // Real keys come from `load_or_create`, `from_env` or `from_file`.
/// let k1: Vec<u8> = (0..64u32).map(|i| (i * 97 % 251) as u8).collect();
/// let k2: Vec<u8> = (0..64u32).map(|i| (i * 89 % 241) as u8 ^ 0x5a).collect();
/// let old = Keyring::new(&k1).unwrap();
/// let value = old.sign("theme", b"dark", None).unwrap();
/// // Rotation: the new key first, the old one kept to verify.
/// let rotated = Keyring::from_keys([&k2, &k1]).unwrap();
/// let opened = rotated.verify("theme", &value).unwrap();
/// assert!(opened.is_stale(), "made under the old key: re-issue it");
/// // Once K1 is retired, its values read as absent.
/// assert!(Keyring::new(&k2).unwrap().verify("theme", &value).is_none());
/// ```
#[derive(Clone)]
pub struct Keyring {
    keys: Arc<[Box<[u8]>]>,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        f.debug_struct("Keyring")
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

/// A value that verified (or decrypted): its bytes, its sealed expiry, and
/// whether it was made under an old key.
///
/// ```
/// let keys = keyfob::keys::Keyring::generate().unwrap();
/// let v = keys.encrypt("token", b"secret", None).unwrap();
/// let opened = keys.decrypt("token", &v).unwrap();
/// assert_eq!(opened.value(), b"secret");
/// assert!(!opened.is_stale());
/// assert_eq!(opened.expires_at(), None);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    value: Vec<u8>,
    expires_at: Option<i64>,
    stale: bool,
}

impl Opened {
    /// The value's bytes.
    pub fn value(&self) -> &[u8] {
        &self.value
    }

    /// The value's bytes, owned.
    pub fn into_value(self) -> Vec<u8> {
        self.value
    }

    /// The expiry sealed into the value, if any.
    pub fn expires_at(&self) -> Option<OffsetDateTime> {
        self.expires_at.map(instant)
    }

    /// True when the value was made under an old key: write it again to
    /// re-issue it under the current one.
    pub fn is_stale(&self) -> bool {
        self.stale
    }
}

impl Keyring {
    /// A keyring of one master key.
    ///
    /// # Errors
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) when the key is shorter
    /// than 32 bytes or obviously not random.
    ///
    /// ```
    /// use keyfob::keys::Keyring;
    /// assert!(Keyring::new(b"too short").is_err());
    /// ```
    pub fn new(key: impl AsRef<[u8]>) -> Result<Self> {
        Self::from_keys([key])
    }

    /// A keyring of several master keys, the current one first.
    ///
    /// # Errors
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) for no key at all, or a
    /// key that [`new`](Self::new) would refuse (the message says which).
    ///
    /// ```
    /// use keyfob::keys::Keyring;
    /// assert!(Keyring::from_keys(Vec::<Vec<u8>>::new()).is_err());
    /// ```
    pub fn from_keys<K: AsRef<[u8]>>(keys: impl IntoIterator<Item = K>) -> Result<Self> {
        let mut out = Vec::new();
        for (i, key) in keys.into_iter().enumerate() {
            let key = key.as_ref();
            check_strength(key).map_err(|why| {
                Error::config(format!(
                    "master key #{} {why}: generate one with `Keyring::load_or_create` \
                     or `head -c 64 /dev/urandom | base64`",
                    i + 1
                ))
            })?;
            out.push(Box::<[u8]>::from(key));
        }
        if out.is_empty() {
            return Err(Error::config(
                "a keyring needs at least one master key: generate one with \
                 `head -c 64 /dev/urandom | base64`",
            ));
        }
        Ok(Keyring {
            keys: out.into(),
            clock: Arc::new(SystemClock),
        })
    }

    /// A keyring of one fresh random 64-byte key, for tests and for apps
    /// whose cookies need not outlive the process.
    ///
    /// # Errors
    /// [`ErrorKind::Random`](crate::ErrorKind::Random) when the OS RNG fails.
    ///
    /// ```
    /// let a = keyfob::keys::Keyring::generate().unwrap();
    /// let b = keyfob::keys::Keyring::generate().unwrap();
    /// let v = a.sign("x", b"1", None).unwrap();
    /// assert!(b.verify("x", &v).is_none());
    /// ```
    pub fn generate() -> Result<Self> {
        Self::new(random_key()?)
    }

    /// Parses base64 keys (standard or URL-safe alphabet, padded or not),
    /// separated by commas or whitespace, the current one first.
    ///
    /// # Errors
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) for text that is not
    /// base64 or a key that is refused.
    ///
    /// ```
    /// use keyfob::keys::Keyring;
    /// let text = "sXc9Wf0Qm8Zp1J2k4L6n8R0t2V4x6Z8b0D2f4H6j8L0=";
    /// assert!(Keyring::from_base64(text).is_ok());
    /// assert!(Keyring::from_base64("not base64!").is_err());
    /// ```
    pub fn from_base64(text: &str) -> Result<Self> {
        let mut keys = Vec::new();
        for (i, part) in text
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|p| !p.is_empty())
            .enumerate()
        {
            let key = [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
                .iter()
                .find_map(|e| e.decode(part).ok())
                .ok_or_else(|| {
                    Error::config(format!(
                        "master key #{} is not base64: write it as `head -c 64 /dev/urandom | base64` prints it",
                        i + 1
                    ))
                })?;
            keys.push(key);
        }
        Self::from_keys(keys)
    }

    /// Reads the keys from the base64 environment variable `var` (see
    /// [`from_base64`](Self::from_base64)).
    ///
    /// # Errors
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) when the variable is
    /// unset, not Unicode, or holds a refused key.
    ///
    /// ```
    /// let err = keyfob::keys::Keyring::from_env("KEYFOB_DOC_UNSET_VAR").unwrap_err();
    /// assert!(err.to_string().contains("KEYFOB_DOC_UNSET_VAR"));
    /// ```
    pub fn from_env(var: &str) -> Result<Self> {
        let text = std::env::var(var).map_err(|_| {
            Error::config(format!(
                "environment variable {var} is not set: set it to a base64 key, \
                 e.g. `export {var}=$(head -c 64 /dev/urandom | base64 -w0)`"
            ))
        })?;
        Self::from_base64(&text)
            .map_err(|e| Error::config(format!("environment variable {var}: {}", strip(&e))))
    }

    /// Reads the keys from a file of base64 keys, one per line, the current
    /// one first (the format [`load_or_create`](Self::load_or_create) writes).
    ///
    /// # Errors
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) when the file cannot be
    /// read or holds a refused key; the message names the file.
    ///
    /// ```
    /// assert!(keyfob::keys::Keyring::from_file("/nonexistent/keyfob.key").is_err());
    /// ```
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            if let Ok(meta) = std::fs::metadata(path) {
                if meta.permissions().mode() & 0o077 != 0 {
                    tracing::warn!(
                        path = %path.display(),
                        "keyfob: key file is readable by other users; `chmod 600` it"
                    );
                }
            }
        }
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::config_from(format!("cannot read key file {}", path.display()), e)
        })?;
        Self::from_base64(&text)
            .map_err(|e| Error::config(format!("key file {}: {}", path.display(), strip(&e))))
    }

    /// Reads the key file at `path`, or creates it (mode `0600`, one fresh
    /// random 64-byte key in base64) when there is none, so restarts keep
    /// every cookie valid.
    ///
    /// # Errors
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) when the file exists but
    /// is malformed, or cannot be created.
    ///
    /// ```
    /// let path = std::env::temp_dir().join(format!("keyfob-doc-{}.key", std::process::id()));
    /// let first = keyfob::keys::Keyring::load_or_create(&path).unwrap();
    /// let again = keyfob::keys::Keyring::load_or_create(&path).unwrap();
    /// let v = first.sign("x", b"1", None).unwrap();
    /// assert!(again.verify("x", &v).is_some());
    /// # std::fs::remove_file(&path).unwrap();
    /// ```
    pub fn load_or_create(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        match create_key_file(path) {
            Ok(key) => Self::new(key),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Self::from_file(path),
            Err(e) => Err(Error::config(format!(
                "cannot create key file {}: {e}",
                path.display()
            ))),
        }
    }

    /// Uses `clock` to decide whether sealed expiries have passed; tests pass
    /// a [`ManualClock`](crate::ManualClock). Default the system clock.
    ///
    /// ```
    /// use keyfob::{keys::Keyring, ManualClock};
    /// let keys = Keyring::generate().unwrap().with_clock(ManualClock::new());
    /// # let _ = keys;
    /// ```
    #[must_use]
    pub fn with_clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// The current time on this keyring's clock.
    pub(crate) fn now(&self) -> OffsetDateTime {
        self.clock.now()
    }

    /// Signs `value` for the cookie `name`, sealing `expires_at` into it.
    /// The result is `PAYLOAD.TAG`, both base64url.
    ///
    /// # Errors
    /// Only if the crypto primitives refuse their key, which they never do
    /// for the keys a keyring holds.
    ///
    /// ```
    /// let keys = keyfob::keys::Keyring::generate().unwrap();
    /// let v = keys.sign("user", b"42", None).unwrap();
    /// assert!(v.contains('.'));
    /// ```
    pub fn sign(
        &self,
        name: &str,
        value: &[u8],
        expires_at: Option<OffsetDateTime>,
    ) -> Result<String> {
        self.sign_for(Purpose::SignedCookie, name, value, expires_at.map(secs))
    }

    /// The value signed by [`sign`](Self::sign) for the cookie `name`, or
    /// `None` when it does not verify or its sealed expiry has passed.
    ///
    /// ```
    /// let keys = keyfob::keys::Keyring::generate().unwrap();
    /// assert!(keys.verify("user", "bm9uZQ.AAAA").is_none());
    /// ```
    pub fn verify(&self, name: &str, value: &str) -> Option<Opened> {
        self.verify_for(Purpose::SignedCookie, name, value, self.now())
    }

    /// Encrypts `value` for the cookie `name` (AES-256-GCM, fresh nonce),
    /// sealing `expires_at` into it. The result is base64url.
    ///
    /// # Errors
    /// [`ErrorKind::Random`](crate::ErrorKind::Random) when the OS RNG fails.
    ///
    /// ```
    /// let keys = keyfob::keys::Keyring::generate().unwrap();
    /// let a = keys.encrypt("t", b"x", None).unwrap();
    /// let b = keys.encrypt("t", b"x", None).unwrap();
    /// assert_ne!(a, b, "a fresh nonce per write");
    /// ```
    pub fn encrypt(
        &self,
        name: &str,
        value: &[u8],
        expires_at: Option<OffsetDateTime>,
    ) -> Result<String> {
        self.encrypt_for(Purpose::PrivateCookie, name, value, expires_at.map(secs))
    }

    /// The value encrypted by [`encrypt`](Self::encrypt) for the cookie
    /// `name`, or `None` when it does not decrypt or its expiry has passed.
    ///
    /// ```
    /// let keys = keyfob::keys::Keyring::generate().unwrap();
    /// let v = keys.encrypt("t", b"x", None).unwrap();
    /// assert!(keys.decrypt("other", &v).is_none());
    /// ```
    pub fn decrypt(&self, name: &str, value: &str) -> Option<Opened> {
        self.decrypt_for(Purpose::PrivateCookie, name, value, self.now())
    }

    pub(crate) fn sign_for(
        &self,
        purpose: Purpose,
        name: &str,
        value: &[u8],
        expires_at: Option<i64>,
    ) -> Result<String> {
        let payload = payload(value, expires_at);
        let key = derive(self.current(), purpose, name)?;
        let tag = mac(&key, name, &payload)?.finalize().into_bytes();
        let mut out = URL_SAFE_NO_PAD.encode(&payload);
        out.push('.');
        URL_SAFE_NO_PAD.encode_string(tag, &mut out);
        Ok(out)
    }

    pub(crate) fn verify_for(
        &self,
        purpose: Purpose,
        name: &str,
        value: &str,
        now: OffsetDateTime,
    ) -> Option<Opened> {
        let (payload, tag) = value.split_once('.')?;
        let payload = URL_SAFE_NO_PAD.decode(payload).ok()?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        if tag.len() != TAG_LEN {
            return None;
        }
        let index = self.keys.iter().position(|master| {
            derive(master, purpose, name)
                .and_then(|key| mac(&key, name, &payload))
                .is_ok_and(|m| m.verify_slice(&tag).is_ok())
        })?;
        open_payload(payload, index > 0, now)
    }

    pub(crate) fn encrypt_for(
        &self,
        purpose: Purpose,
        name: &str,
        value: &[u8],
        expires_at: Option<i64>,
    ) -> Result<String> {
        let nonce: [u8; NONCE_LEN] = crate::id::random_bytes()?;
        let cipher = cipher(self.current(), purpose, name)?;
        let sealed = cipher
            .encrypt(
                &nonce.into(),
                Payload {
                    msg: &payload(value, expires_at),
                    aad: name.as_bytes(),
                },
            )
            .map_err(|_| Error::config("AES-256-GCM refused to encrypt"))?;
        let mut bytes = Vec::with_capacity(NONCE_LEN + sealed.len());
        bytes.extend_from_slice(&nonce);
        bytes.extend_from_slice(&sealed);
        Ok(URL_SAFE_NO_PAD.encode(bytes))
    }

    pub(crate) fn decrypt_for(
        &self,
        purpose: Purpose,
        name: &str,
        value: &str,
        now: OffsetDateTime,
    ) -> Option<Opened> {
        let bytes = URL_SAFE_NO_PAD.decode(value).ok()?;
        if bytes.len() < NONCE_LEN + HEADER_LEN + 16 {
            return None;
        }
        let (nonce, sealed) = bytes.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().ok()?;
        self.keys.iter().enumerate().find_map(|(i, master)| {
            let cipher = cipher(master, purpose, name).ok()?;
            let plain = cipher
                .decrypt(
                    &nonce.into(),
                    Payload {
                        msg: sealed,
                        aad: name.as_bytes(),
                    },
                )
                .ok()?;
            open_payload(plain, i > 0, now)
        })
    }

    /// `ID.TAG` for a session ID written in the cookie `name` (signed IDs).
    pub(crate) fn tag_id(&self, name: &str, id: &str) -> Result<String> {
        let key = derive(self.current(), Purpose::SessionId, name)?;
        let tag = mac(&key, name, id.as_bytes())?.finalize().into_bytes();
        let mut out = String::with_capacity(id.len() + 44);
        out.push_str(id);
        out.push('.');
        URL_SAFE_NO_PAD.encode_string(tag, &mut out);
        Ok(out)
    }

    /// The ID part of an `ID.TAG` cookie value whose tag verifies, and
    /// whether it verified under an old key.
    pub(crate) fn open_id<'v>(&self, name: &str, value: &'v [u8]) -> Option<(&'v [u8], bool)> {
        let dot = value.iter().position(|&b| b == b'.')?;
        let (id, tag) = (&value[..dot], &value[dot + 1..]);
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        if tag.len() != TAG_LEN {
            return None;
        }
        let index = self.keys.iter().position(|master| {
            derive(master, Purpose::SessionId, name)
                .and_then(|key| mac(&key, name, id))
                .is_ok_and(|m| m.verify_slice(&tag).is_ok())
        })?;
        Some((id, index > 0))
    }

    fn current(&self) -> &[u8] {
        self.keys.first().map_or(&[][..], |k| &k[..])
    }
}

/// Error text without the kind prefix, for wrapping in a more specific message.
fn strip(e: &Error) -> String {
    let s = e.to_string();
    s.strip_prefix("invalid configuration: ")
        .map_or(s.clone(), str::to_owned)
}

fn payload(value: &[u8], expires_at: Option<i64>) -> Vec<u8> {
    let mut p = Vec::with_capacity(HEADER_LEN + value.len());
    p.push(VERSION);
    // 0 means "no expiry": no real deadline is the Unix epoch.
    p.extend_from_slice(&expires_at.unwrap_or(0).to_be_bytes());
    p.extend_from_slice(value);
    p
}

fn open_payload(mut payload: Vec<u8>, stale: bool, now: OffsetDateTime) -> Option<Opened> {
    if payload.len() < HEADER_LEN || payload[0] != VERSION {
        return None;
    }
    let exp = i64::from_be_bytes(payload[1..HEADER_LEN].try_into().ok()?);
    let expires_at = (exp != 0).then_some(exp);
    if expires_at.is_some_and(|e| secs(now) >= e) {
        return None;
    }
    payload.drain(..HEADER_LEN);
    Some(Opened {
        value: payload,
        expires_at,
        stale,
    })
}

fn derive(master: &[u8], purpose: Purpose, name: &str) -> Result<[u8; 32]> {
    let hk = Hkdf::<Sha256>::new(Some(SALT), master);
    let label = purpose.label();
    let mut info = Vec::with_capacity(11 + label.len() + name.len());
    info.extend_from_slice(b"keyfob/v1/");
    info.extend_from_slice(label);
    // The NUL keeps (purpose, name) pairs unambiguous: names are tokens, never NUL.
    info.push(0);
    info.extend_from_slice(name.as_bytes());
    let mut okm = [0u8; 32];
    hk.expand(&info, &mut okm)
        .map_err(|_| Error::config("HKDF refused to derive a 32-byte key"))?;
    Ok(okm)
}

fn mac(key: &[u8; 32], name: &str, payload: &[u8]) -> Result<Hmac<Sha256>> {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key)
        .map_err(|_| Error::config("HMAC refused its key"))?;
    m.update(&(name.len() as u64).to_be_bytes());
    m.update(name.as_bytes());
    m.update(payload);
    Ok(m)
}

fn cipher(master: &[u8], purpose: Purpose, name: &str) -> Result<Aes256Gcm> {
    let key = derive(master, purpose, name)?;
    Aes256Gcm::new_from_slice(&key).map_err(|_| Error::config("AES-256-GCM refused its key"))
}

fn random_key() -> Result<[u8; GENERATED_KEY_LEN]> {
    crate::id::random_bytes()
}

/// Why a master key is refused, if it is.
fn check_strength(key: &[u8]) -> std::result::Result<(), String> {
    if key.len() < MIN_KEY_LEN {
        return Err(format!(
            "is {} bytes; at least {MIN_KEY_LEN} random bytes are needed",
            key.len()
        ));
    }
    let mut seen = [false; 256];
    for &b in key {
        seen[b as usize] = true;
    }
    let distinct = seen.iter().filter(|s| **s).count();
    // 32 random bytes have about 30 distinct values; fewer than 16 is a
    // repeated byte or a short repeated pattern, not randomness.
    if distinct < 16 {
        return Err(format!(
            "has only {distinct} distinct byte values, so it is not random"
        ));
    }
    let step = key[1].wrapping_sub(key[0]);
    if key.windows(2).all(|w| w[1].wrapping_sub(w[0]) == step) {
        return Err("is a counting sequence, not random bytes".into());
    }
    Ok(())
}

/// Creates `path` with mode 0600 (never overwriting) and writes a fresh key.
fn create_key_file(path: &Path) -> std::io::Result<[u8; GENERATED_KEY_LEN]> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    let key = random_key().map_err(std::io::Error::other)?;
    let mut text = STANDARD.encode(key);
    text.push('\n');
    if let Err(e) = file
        .write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
    {
        // Leave no half-written key behind to be "loaded" on the next start.
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(key)
}

#[cfg(test)]
pub(crate) mod tests;
