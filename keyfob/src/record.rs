//! What a store keeps for one session, and the change-sets applied to it.
//!
//! (The rules, caveats and examples are on the public type below,
//! where docs.rs shows them: this module is private.)

use std::fmt;

use serde::{
    de::{MapAccess, Visitor},
    ser::SerializeMap,
    Deserialize, Deserializer, Serialize, Serializer,
};
use serde_json::value::RawValue;
use time::OffsetDateTime;

use crate::{
    expiry::{instant, secs, Expiry},
    id::Handle,
};

/// Session keys keyfob's own modules use, in a namespace the public
/// [`Session`](crate::Session) API refuses to write (and reads as absent):
/// an app that stores a client-chosen key name cannot be made to write
/// `keyfob.user` and log a visitor in.
pub(crate) mod reserved {
    /// Every key starting with this belongs to keyfob.
    pub(crate) const PREFIX: &str = "keyfob.";
    /// The logged-in user, written by `auth::login`.
    #[cfg_attr(not(feature = "auth"), allow(dead_code))]
    pub(crate) const USER: &str = "keyfob.user";
    /// The CSRF secret (base64url), minted by `csrf`, dropped by `auth::login`.
    #[cfg_attr(not(any(feature = "auth", feature = "csrf")), allow(dead_code))]
    pub(crate) const CSRF: &str = "keyfob.csrf";
    /// Marks a session imported from tower-sessions by `migrate`: the layer
    /// (with `with_legacy_ids`) accepts its old cookie once, then drops this key.
    pub(crate) const LEGACY: &str = "keyfob.legacy";
    /// With a user backend: a digest of the user's credential at login
    /// (`auth::users`); a session whose digest no longer matches is logged out.
    #[cfg_attr(not(feature = "auth"), allow(dead_code))]
    pub(crate) const CREDENTIAL: &str = "keyfob.credential";
    /// The device logged in from (browser, OS, truncated IP), for the session list.
    #[cfg_attr(not(feature = "auth"), allow(dead_code))]
    pub(crate) const DEVICE: &str = "keyfob.device";

    /// True for a key in keyfob's namespace.
    pub(crate) fn is_reserved(key: &str) -> bool {
        key.starts_with(PREFIX)
    }
}

/// The key/value data of a session. Values are JSON text.
///
/// Kept in one string, each entry as `{key length}:{key}{value length}:{value}`
/// (lengths in decimal bytes, as a netstring): a record is kept per session,
/// and one allocation costs far less than a vector of boxed keys and values
/// (three to five allocations for a one-key session). Sessions hold a
/// handful of keys, so a lookup scans; a write rebuilds the string.
#[derive(Clone, Default)]
pub(crate) struct Data(Box<str>);

/// Splits one `{len}:{text}` field off the front of `rest` (a hand-written
/// digit loop: this runs for every key a request reads, and `split_once`
/// plus `parse` cost three times as much in a profile of `/count`).
fn field<'a>(rest: &mut &'a str) -> Option<&'a str> {
    let bytes = rest.as_bytes();
    let mut len = 0usize;
    let mut i = 0;
    loop {
        let b = *bytes.get(i)?;
        i += 1;
        if b == b':' {
            break;
        }
        let digit = b.checked_sub(b'0').filter(|d| *d < 10)?;
        len = len.checked_mul(10)?.checked_add(usize::from(digit))?;
    }
    let tail = rest.get(i..)?;
    let text = tail.get(..len)?;
    *rest = tail.get(len..)?;
    Some(text)
}

/// The entries of a [`Data`], in order.
pub(crate) struct Entries<'a>(&'a str);

impl<'a> Iterator for Entries<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        let key = field(&mut self.0)?;
        let value = field(&mut self.0)?;
        Some((key, value))
    }
}

/// Appends one entry in [`Data`]'s encoding.
fn push_entry(buf: &mut String, key: &str, value: &str) {
    let mut n = itoa::Buffer::new();
    buf.push_str(n.format(key.len()));
    buf.push(':');
    buf.push_str(key);
    buf.push_str(n.format(value.len()));
    buf.push(':');
    buf.push_str(value);
}

impl PartialEq for Data {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.entries().all(|(k, v)| other.get(k) == Some(v))
    }
}

impl Data {
    /// The JSON text stored under `key`.
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.entries().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// Sets `key` to `value`, in place if the key is there, else last.
    #[cfg(test)]
    pub(crate) fn set(&mut self, key: &str, value: &RawValue) {
        let mut changes = ChangeSet::default();
        changes.set(key, Some(value.to_owned()));
        changes.apply_to(self);
    }

    /// Data holding `entries`, built in one pass without copying a key (a
    /// key given twice keeps its last value, at its first place): for a
    /// record read from a store.
    pub(crate) fn from_entries<K: AsRef<str>>(
        entries: impl IntoIterator<Item = (K, Box<RawValue>)>,
    ) -> Data {
        let mut kept: Vec<(K, Box<RawValue>)> = Vec::new();
        for (k, v) in entries {
            match kept.iter_mut().find(|(x, _)| x.as_ref() == k.as_ref()) {
                Some(slot) => slot.1 = v,
                None => kept.push((k, v)),
            }
        }
        let mut buf = String::with_capacity(
            kept.iter()
                .map(|(k, v)| k.as_ref().len() + v.get().len() + 8)
                .sum(),
        );
        for (k, v) in &kept {
            push_entry(&mut buf, k.as_ref(), v.get());
        }
        Data(buf.into_boxed_str())
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn len(&self) -> usize {
        self.entries().count()
    }

    /// Each key with its JSON text, in order.
    pub(crate) fn entries(&self) -> Entries<'_> {
        Entries(&self.0)
    }

    pub(crate) fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries().map(|(k, _)| k)
    }

    /// The bytes of its keys and values as encoded (with their length
    /// digits and separators): what a bound on memory counts, without a scan.
    fn payload_bytes(&self) -> usize {
        self.0.len()
    }
}

impl fmt::Debug for Data {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Values may be secrets (tokens); show the keys only.
        f.debug_set().entries(self.keys()).finish()
    }
}

impl Serialize for Data {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.len()))?;
        for (k, v) in self.entries() {
            // Stored text came from a `RawValue`, so it is one JSON value;
            // borrowing it back checks that without copying.
            let raw: &RawValue = serde_json::from_str(v).map_err(serde::ser::Error::custom)?;
            map.serialize_entry(k, raw)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Data {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Data;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object of session values")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Data, A::Error> {
                // A key given twice keeps its last value, as a JSON object read
                // into a map would.
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<String, Box<RawValue>>()? {
                    entries.push(entry);
                }
                Ok(Data::from_entries(entries))
            }
        }
        d.deserialize_map(V)
    }
}

/// A deadline in Unix seconds, or none, in 8 bytes: `i64::MAX`, later than
/// any time a deadline can name, stands for none (an `Option<i64>` takes 16,
/// and a record is kept per session). Serialized as an optional integer.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Deadline(i64);

impl Deadline {
    const NONE: Deadline = Deadline(i64::MAX);

    /// The deadline, if any.
    pub(crate) fn get(self) -> Option<i64> {
        (self != Self::NONE).then_some(self.0)
    }

    pub(crate) fn is_none(&self) -> bool {
        *self == Self::NONE
    }
}

impl Default for Deadline {
    fn default() -> Self {
        Self::NONE
    }
}

impl From<Option<i64>> for Deadline {
    fn from(secs: Option<i64>) -> Self {
        secs.map_or(Self::NONE, Deadline)
    }
}

impl fmt::Debug for Deadline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.get().fmt(f)
    }
}

impl Serialize for Deadline {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.get().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Deadline {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Option::<i64>::deserialize(d).map(Deadline::from)
    }
}

/// One session as a store keeps it.
///
/// ```
/// use keyfob::Record;
/// use time::OffsetDateTime;
///
/// let now = OffsetDateTime::now_utc();
/// let record = Record::new(now, None, None);
/// let json = serde_json::to_string(&record).unwrap();
/// let back: Record = serde_json::from_str(&json).unwrap();
/// assert_eq!(back.created(), record.created());
/// ```
///
/// Rules:
/// - a [`Record`] holds the session's data (each value kept as its JSON
///   text, so untouched values are never re-serialized), when it was created
///   and last seen, its idle and absolute deadlines, its owner (for "list and
///   revoke this user's sessions") and a version that every write bumps;
/// - a request never writes its copy of the record back. It sends an
///   [`Update`]: the keys it set or removed (or "clear"), the new idle
///   deadline, and optionally a new owner, expiry or handle. The store applies
///   it to the record it holds *now*, so two requests that write different
///   keys both persist, and an update to a record that is gone is dropped
///   instead of bringing a logged-out session back;
/// - a record whose idle or absolute deadline has passed is expired and must
///   never be returned by a store.
///
/// Stores outside keyfob implement [`SessionStore`](crate::SessionStore) with
/// [`Record::apply`] and the serde implementations of [`Record`].
///
/// ```
/// use keyfob::Record;
/// use time::{Duration, OffsetDateTime};
///
/// let now = OffsetDateTime::now_utc();
/// let record = Record::new(now, Some(now + Duration::hours(1)), None);
/// assert!(!record.is_expired(now));
/// assert!(record.is_expired(now + Duration::hours(2)));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    #[serde(rename = "d")]
    pub(crate) data: Data,
    #[serde(rename = "c")]
    pub(crate) created: i64,
    #[serde(rename = "s")]
    pub(crate) last_seen: i64,
    #[serde(rename = "i", default, skip_serializing_if = "Deadline::is_none")]
    pub(crate) idle_deadline: Deadline,
    #[serde(rename = "a", default, skip_serializing_if = "Deadline::is_none")]
    pub(crate) absolute_deadline: Deadline,
    #[serde(rename = "o", default, skip_serializing_if = "Option::is_none")]
    pub(crate) owner: Option<Box<str>>,
    /// Boxed: rarely set, and a record is kept per session (8 bytes, not 24).
    #[serde(rename = "e", default, skip_serializing_if = "Option::is_none")]
    pub(crate) expiry: Option<Box<Expiry>>,
    #[serde(rename = "v", default)]
    pub(crate) version: u64,
}

impl Record {
    /// An empty record created at `now` with the given deadlines.
    pub fn new(
        now: OffsetDateTime,
        idle_deadline: Option<OffsetDateTime>,
        absolute_deadline: Option<OffsetDateTime>,
    ) -> Self {
        Record {
            data: Data::default(),
            created: secs(now),
            last_seen: secs(now),
            idle_deadline: idle_deadline.map(secs).into(),
            absolute_deadline: absolute_deadline.map(secs).into(),
            owner: None,
            expiry: None,
            version: 1,
        }
    }

    /// When the session was created.
    pub fn created(&self) -> OffsetDateTime {
        instant(self.created)
    }

    /// When the session was last seen (precise to the touch interval).
    pub fn last_seen(&self) -> OffsetDateTime {
        instant(self.last_seen)
    }

    /// The earlier of the idle and absolute deadlines, if any.
    pub fn expires_at(&self) -> Option<OffsetDateTime> {
        self.expires_secs().map(instant)
    }

    pub(crate) fn expires_secs(&self) -> Option<i64> {
        match (self.idle_deadline.get(), self.absolute_deadline.get()) {
            (Some(i), Some(a)) => Some(i.min(a)),
            (i, a) => i.or(a),
        }
    }

    /// The absolute deadline, set at creation and never extended.
    pub fn absolute_deadline(&self) -> Option<OffsetDateTime> {
        self.absolute_deadline.get().map(instant)
    }

    /// The per-session expiry set with `Session::set_expiry`, if any.
    pub(crate) fn expiry(&self) -> Option<Expiry> {
        self.expiry.as_deref().copied()
    }

    /// True when a deadline has passed: such a record must not be returned.
    pub fn is_expired(&self, now: OffsetDateTime) -> bool {
        self.expires_secs().is_some_and(|e| secs(now) >= e)
    }

    /// The owner (user id) recorded at login, for the owner index.
    pub fn owner(&self) -> Option<&str> {
        self.owner.as_deref()
    }

    /// The version, bumped by every applied update; SQL stores compare-and-swap on it.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The number of keys in the session data.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// True when the session holds no data.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The bytes of its keys, values (as encoded: with their length digits)
    /// and owner: what a bound on memory counts.
    #[cfg_attr(
        not(any(feature = "memory", feature = "postgres", feature = "sqlite")),
        allow(dead_code)
    )]
    pub(crate) fn payload_bytes(&self) -> usize {
        self.owner().map_or(0, str::len) + self.data.payload_bytes()
    }

    /// Applies a request's update to this (current) record and bumps the version.
    ///
    /// The handle change ([`Update::rename_to`]) is the store's to carry out.
    pub fn apply(&mut self, update: &Update) {
        update.changes.apply_to(&mut self.data);
        self.last_seen = update.seen;
        if let Some(expiry) = update.expiry {
            self.expiry = expiry.map(Box::new);
        }
        self.idle_deadline = update.idle_deadline.into();
        if let Some(owner) = &update.owner {
            self.owner.clone_from(owner);
        }
        self.version = self.version.wrapping_add(1);
    }
}

/// What one request changed in a session's data: "clear everything" first,
/// if asked, then each key set to a JSON value or removed, once per key, in
/// order. A store that keeps keys apart (a Redis hash, a JSON column) writes
/// just these; one that keeps the record whole uses [`Record::apply`].
///
/// A store outside keyfob applying it to its own map of key to JSON text:
///
/// ```
/// use std::collections::HashMap;
/// use keyfob::{ChangeSet, Update};
///
/// fn apply(changes: &ChangeSet, row: &mut HashMap<String, String>) {
///     if changes.is_cleared() {
///         row.clear();
///     }
///     for (key, value) in changes.ops() {
///         match value {
///             Some(json) => { row.insert(key.to_owned(), json.get().to_owned()); }
///             None => { row.remove(key); }
///         }
///     }
/// }
///
/// let mut row = HashMap::from([("theme".to_owned(), "\"dark\"".to_owned())]);
/// // A touch changes no data.
/// let touch = Update::touch(time::OffsetDateTime::now_utc(), None);
/// apply(touch.changes(), &mut row);
/// assert_eq!(row["theme"], "\"dark\"");
/// ```
#[derive(Debug, Clone, Default)]
pub struct ChangeSet {
    clear: bool,
    ops: Vec<(Box<str>, Option<Box<RawValue>>)>,
}

impl ChangeSet {
    pub(crate) fn set(&mut self, key: &str, value: Option<Box<RawValue>>) {
        self.ops.retain(|(k, _)| &**k != key);
        self.ops.push((key.into(), value));
    }

    pub(crate) fn clear(&mut self) {
        self.clear = true;
        self.ops.clear();
    }

    /// True when the request changed no data.
    pub fn is_empty(&self) -> bool {
        !self.clear && self.ops.is_empty()
    }

    /// True when every key is removed before [`ops`](Self::ops) apply.
    pub fn is_cleared(&self) -> bool {
        self.clear
    }

    /// The keys set (`Some`) or removed (`None`), in order, after any clear.
    pub fn ops(&self) -> impl Iterator<Item = (&str, Option<&RawValue>)> {
        self.ops.iter().map(|(k, v)| (&**k, v.as_deref()))
    }

    /// The change-set as SQL wants it: clear first, then keys removed, then
    /// keys set (each key appears once).
    #[cfg(feature = "postgres")]
    pub(crate) fn parts(&self) -> (bool, Vec<&str>, Vec<(&str, &RawValue)>) {
        let mut removed = Vec::new();
        let mut sets = Vec::new();
        for (k, v) in &self.ops {
            match v {
                Some(v) => sets.push((&**k, &**v)),
                None => removed.push(&**k),
            }
        }
        (self.clear, removed, sets)
    }

    /// `Some(value)` when this change-set decides the key (`Some(None)`: removed).
    pub(crate) fn lookup(&self, key: &str) -> Option<Option<&RawValue>> {
        self.ops
            .iter()
            .rev()
            .find(|(k, _)| &**k == key)
            .map(|(_, v)| v.as_deref())
    }

    /// Applies the change-set to `data`, building its new string in one pass.
    pub(crate) fn apply_to(&self, data: &mut Data) {
        if self.is_empty() {
            return;
        }
        let old = if self.clear { "" } else { &data.0 };
        let mut buf = String::with_capacity(
            old.len()
                + self
                    .ops
                    .iter()
                    .map(|(k, v)| k.len() + v.as_ref().map_or(0, |v| v.get().len()) + 8)
                    .sum::<usize>(),
        );
        // Keys already there keep their place; a removed one is left out.
        for (k, v) in Entries(old) {
            match self.lookup(k) {
                Some(Some(new)) => push_entry(&mut buf, k, new.get()),
                Some(None) => {}
                None => push_entry(&mut buf, k, v),
            }
        }
        // New keys go last, in the order they were last set.
        for (k, v) in &self.ops {
            if let Some(v) = v {
                if Entries(old).all(|(old_key, _)| old_key != &**k) {
                    push_entry(&mut buf, k, v.get());
                }
            }
        }
        data.0 = buf.into_boxed_str();
    }
}

/// One request's write to a session: the change-set plus metadata.
///
/// Built by the layer; a store applies it with [`Record::apply`] to the record
/// it holds now, and moves the record to [`Update::rename_to`] when that is set.
#[derive(Debug, Clone)]
pub struct Update {
    pub(crate) changes: ChangeSet,
    pub(crate) seen: i64,
    pub(crate) idle_deadline: Option<i64>,
    pub(crate) owner: Option<Option<Box<str>>>,
    pub(crate) expiry: Option<Option<Expiry>>,
    pub(crate) rename_to: Option<Handle>,
    /// The record this request loaded, when the store asked for it
    /// ([`SessionStore::update_uses_base`](crate::SessionStore::update_uses_base)):
    /// a compare-and-swap store can then write without reading the row again.
    pub(crate) base: Option<std::sync::Arc<Record>>,
}

impl Update {
    /// An update that only refreshes the idle deadline: what the layer sends
    /// for a read-only request once the touch interval has passed.
    ///
    /// ```
    /// use keyfob::Update;
    /// use time::{Duration, OffsetDateTime};
    ///
    /// let now = OffsetDateTime::now_utc();
    /// assert!(Update::touch(now, Some(now + Duration::hours(1))).is_touch());
    /// ```
    pub fn touch(now: OffsetDateTime, idle_deadline: Option<OffsetDateTime>) -> Self {
        Update {
            changes: ChangeSet::default(),
            seen: secs(now),
            idle_deadline: idle_deadline.map(secs),
            owner: None,
            expiry: None,
            rename_to: None,
            base: None,
        }
    }

    /// The keys the request set or removed.
    ///
    /// ```
    /// let touch = keyfob::Update::touch(time::OffsetDateTime::now_utc(), None);
    /// assert!(touch.changes().is_empty() && touch.base().is_none());
    /// ```
    pub fn changes(&self) -> &ChangeSet {
        &self.changes
    }

    /// The record this request loaded, when the store asked for it with
    /// [`SessionStore::update_uses_base`](crate::SessionStore::update_uses_base).
    pub fn base(&self) -> Option<&std::sync::Arc<Record>> {
        self.base.as_ref()
    }

    /// When the request used the session (becomes the record's last seen).
    pub fn seen(&self) -> OffsetDateTime {
        instant(self.seen)
    }

    /// The per-session expiry after this update: `Some(new)` when it changes.
    pub fn expiry_change(&self) -> Option<Option<Expiry>> {
        self.expiry
    }

    /// The new handle when the request rotated the session ID (`cycle_id`, login).
    pub fn rename_to(&self) -> Option<&Handle> {
        self.rename_to.as_ref()
    }

    /// True when the update only refreshes the idle deadline (a throttled "touch").
    pub fn is_touch(&self) -> bool {
        self.changes.is_empty()
            && self.owner.is_none()
            && self.expiry.is_none()
            && self.rename_to.is_none()
    }

    /// The owner after this update: `Some(new)` when the update changes it.
    pub fn owner_change(&self) -> Option<Option<&str>> {
        self.owner.as_ref().map(|o| o.as_deref())
    }

    /// The idle deadline the update sets.
    pub fn idle_deadline(&self) -> Option<OffsetDateTime> {
        self.idle_deadline.map(instant)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_string()).unwrap()
    }

    #[test]
    fn change_set_applies_to_the_current_record_not_a_stale_copy() {
        let mut stored = Data::default();
        stored.set("a", &raw("1"));
        stored.set("b", &raw("2"));
        // Another request wrote `b` meanwhile; this request only set `c`.
        let mut changes = ChangeSet::default();
        changes.set("c", Some(raw("3")));
        changes.apply_to(&mut stored);
        assert_eq!(stored.get("b").unwrap(), "2");
        assert_eq!(stored.get("c").unwrap(), "3");
    }

    #[test]
    fn clear_then_set_keeps_only_the_new_key() {
        let mut stored = Data::default();
        stored.set("a", &raw("1"));
        let mut changes = ChangeSet::default();
        changes.set("x", Some(raw("0")));
        changes.clear();
        changes.set("b", Some(raw("2")));
        changes.apply_to(&mut stored);
        assert_eq!(stored.keys().collect::<Vec<_>>(), ["b"]);
    }

    #[test]
    fn last_write_to_a_key_wins_within_a_change_set() {
        let mut changes = ChangeSet::default();
        changes.set("a", Some(raw("1")));
        changes.set("a", None);
        let mut data = Data::default();
        data.set("a", &raw("0"));
        changes.apply_to(&mut data);
        assert!(data.get("a").is_none());
    }

    #[test]
    fn data_keeps_keys_that_look_like_its_own_encoding() {
        // Keys are the app's: colons, digits, multi-byte characters, empty.
        let keys = ["", ":", "3:abc", "12", "clé:é", "a\u{0}b", "keyfob.user"];
        let mut data = Data::default();
        for (i, k) in keys.iter().enumerate() {
            data.set(k, &raw(&serde_json::to_string(&format!("{k}{i}")).unwrap()));
        }
        assert_eq!(data.keys().collect::<Vec<_>>(), keys);
        // Set in place keeps the order; every other value is untouched.
        data.set("3:abc", &raw("[1,2,3]"));
        assert_eq!(data.keys().collect::<Vec<_>>(), keys);
        assert_eq!(data.get("3:abc").unwrap(), "[1,2,3]");
        assert_eq!(data.get("clé:é").unwrap(), "\"clé:é4\"");
        assert!(data.get("3").is_none() && data.get("abc").is_none());
        let text = serde_json::to_string(&data).unwrap();
        let back: Data = serde_json::from_str(&text).unwrap();
        assert_eq!(back, data);
        assert_eq!(back.len(), keys.len());
    }

    #[test]
    fn a_change_set_removes_sets_and_appends_in_one_pass() {
        let mut data = Data::default();
        for (k, v) in [("a", "1"), ("b", "2"), ("c", "3")] {
            data.set(k, &raw(v));
        }
        let mut changes = ChangeSet::default();
        changes.set("b", None);
        changes.set("d", Some(raw("4")));
        changes.set("a", Some(raw("10")));
        changes.apply_to(&mut data);
        let entries: Vec<_> = data.entries().collect();
        assert_eq!(entries, [("a", "10"), ("c", "3"), ("d", "4")]);
        assert_eq!(data.len(), 3);
    }

    #[test]
    fn data_serializes_as_a_json_object_and_dedupes_keys_on_read() {
        let d: Data = serde_json::from_str(r#"{"a":1,"b":[2],"a":3}"#).unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(d.get("a").unwrap(), "3");
        let text = serde_json::to_string(&d).unwrap();
        let back: Data = serde_json::from_str(&text).unwrap();
        assert_eq!(back, d);
    }
}
