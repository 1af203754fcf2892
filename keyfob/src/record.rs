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
/// Kept as a small vector: sessions hold a handful of keys, and a vector
/// costs far less memory per session than a hash map.
#[derive(Clone, Default)]
pub(crate) struct Data(Vec<(Box<str>, Box<RawValue>)>);

impl PartialEq for Data {
    fn eq(&self, other: &Self) -> bool {
        self.0.len() == other.0.len()
            && self
                .0
                .iter()
                .all(|(k, v)| other.get(k).is_some_and(|o| o.get() == v.get()))
    }
}

impl Data {
    pub(crate) fn get(&self, key: &str) -> Option<&RawValue> {
        self.0.iter().find(|(k, _)| &**k == key).map(|(_, v)| &**v)
    }

    pub(crate) fn set(&mut self, key: &str, value: Box<RawValue>) {
        match self.0.iter_mut().find(|(k, _)| &**k == key) {
            Some(slot) => slot.1 = value,
            None => self.0.push((key.into(), value)),
        }
    }

    pub(crate) fn remove(&mut self, key: &str) -> Option<Box<RawValue>> {
        let i = self.0.iter().position(|(k, _)| &**k == key)?;
        Some(self.0.swap_remove(i).1)
    }

    pub(crate) fn clear(&mut self) {
        self.0.clear();
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    pub(crate) fn entries(&self) -> impl Iterator<Item = (&str, &RawValue)> {
        self.0.iter().map(|(k, v)| (&**k, &**v))
    }

    pub(crate) fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(k, _)| &**k)
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
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
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
                let mut data = Data::default();
                while let Some((k, v)) = map.next_entry::<String, Box<RawValue>>()? {
                    data.set(&k, v);
                }
                Ok(data)
            }
        }
        d.deserialize_map(V)
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
    #[serde(rename = "i", default, skip_serializing_if = "Option::is_none")]
    pub(crate) idle_deadline: Option<i64>,
    #[serde(rename = "a", default, skip_serializing_if = "Option::is_none")]
    pub(crate) absolute_deadline: Option<i64>,
    #[serde(rename = "o", default, skip_serializing_if = "Option::is_none")]
    pub(crate) owner: Option<Box<str>>,
    #[serde(rename = "e", default, skip_serializing_if = "Option::is_none")]
    pub(crate) expiry: Option<Expiry>,
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
            idle_deadline: idle_deadline.map(secs),
            absolute_deadline: absolute_deadline.map(secs),
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
        match (self.idle_deadline, self.absolute_deadline) {
            (Some(i), Some(a)) => Some(i.min(a)),
            (i, a) => i.or(a),
        }
    }

    /// The absolute deadline, set at creation and never extended.
    pub fn absolute_deadline(&self) -> Option<OffsetDateTime> {
        self.absolute_deadline.map(instant)
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

    /// The bytes of its keys, values and owner: what a bound on memory counts.
    #[cfg_attr(
        not(any(feature = "memory", feature = "postgres", feature = "sqlite")),
        allow(dead_code)
    )]
    pub(crate) fn payload_bytes(&self) -> usize {
        self.owner().map_or(0, str::len)
            + self
                .data
                .entries()
                .map(|(k, v)| k.len() + v.get().len())
                .sum::<usize>()
    }

    /// Applies a request's update to this (current) record and bumps the version.
    ///
    /// The handle change ([`Update::rename_to`]) is the store's to carry out.
    pub fn apply(&mut self, update: &Update) {
        update.changes.apply_to(&mut self.data);
        self.last_seen = update.seen;
        if let Some(expiry) = update.expiry {
            self.expiry = expiry;
        }
        self.idle_deadline = update.idle_deadline;
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

    pub(crate) fn apply_to(&self, data: &mut Data) {
        if self.clear {
            data.clear();
        }
        for (k, v) in &self.ops {
            match v {
                Some(v) => data.set(k, v.clone()),
                None => {
                    data.remove(k);
                }
            }
        }
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
        stored.set("a", raw("1"));
        stored.set("b", raw("2"));
        // Another request wrote `b` meanwhile; this request only set `c`.
        let mut changes = ChangeSet::default();
        changes.set("c", Some(raw("3")));
        changes.apply_to(&mut stored);
        assert_eq!(stored.get("b").unwrap().get(), "2");
        assert_eq!(stored.get("c").unwrap().get(), "3");
    }

    #[test]
    fn clear_then_set_keeps_only_the_new_key() {
        let mut stored = Data::default();
        stored.set("a", raw("1"));
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
        data.set("a", raw("0"));
        changes.apply_to(&mut data);
        assert!(data.get("a").is_none());
    }

    #[test]
    fn data_serializes_as_a_json_object_and_dedupes_keys_on_read() {
        let d: Data = serde_json::from_str(r#"{"a":1,"b":[2],"a":3}"#).unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(d.get("a").unwrap().get(), "3");
        let text = serde_json::to_string(&d).unwrap();
        let back: Data = serde_json::from_str(&text).unwrap();
        assert_eq!(back, d);
    }
}
