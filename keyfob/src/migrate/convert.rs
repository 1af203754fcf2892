//! tower-sessions' record format, and what one of its rows becomes here.

use super::*;

/// tower-sessions' `Record`, as its stores encode it. The ID inside is not
/// needed: the row's key is the cookie value.
#[derive(Deserialize)]
struct LegacyRecord {
    #[allow(dead_code)]
    id: IgnoredAny,
    data: HashMap<String, serde_json::Value>,
    expiry_date: OffsetDateTime,
}

/// What one source row turned into.
pub(super) enum Row {
    Live(Handle, Record),
    Expired,
    Undecodable,
}

/// Decodes one tower-sessions row into the record keyfob will keep.
pub(super) fn convert(
    key: &str,
    bytes: &[u8],
    now: OffsetDateTime,
    absolute: Option<OffsetDateTime>,
) -> Row {
    let Some(handle) = legacy_handle(key.as_bytes()) else {
        return Row::Undecodable;
    };
    let legacy: LegacyRecord = match rmp_serde::from_slice(bytes) {
        Ok(r) => r,
        Err(err) => {
            tracing::warn!(handle = %handle.short(), error = %err, "keyfob: migrate: row does not decode as a tower-sessions record");
            return Row::Undecodable;
        }
    };
    if legacy.expiry_date <= now {
        return Row::Expired;
    }
    let mut record = Record::new(now, Some(legacy.expiry_date), absolute);
    let mut entries = Vec::with_capacity(legacy.data.len() + 1);
    for (k, v) in legacy.data {
        // keyfob's own namespace is never imported: a tower-sessions app that
        // stored a client-chosen key name could otherwise plant `keyfob.user`.
        if crate::record::reserved::is_reserved(&k) {
            tracing::warn!(handle = %handle.short(), "keyfob: migrate: dropped a key in keyfob's reserved `keyfob.` namespace");
            continue;
        }
        match serde_json::value::to_raw_value(&v) {
            Ok(raw) => entries.push((k, raw)),
            Err(_) => return Row::Undecodable,
        }
    }
    match serde_json::value::to_raw_value(&true) {
        Ok(mark) => entries.push((crate::record::reserved::LEGACY.to_owned(), mark)),
        Err(_) => return Row::Undecodable,
    }
    record.data = crate::record::Data::from_entries(entries);
    if record.is_expired(now) {
        return Row::Expired;
    }
    Row::Live(handle, record)
}
