//! Helpers shared by the SQL stores.

use crate::error::{Error, Result};
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
use crate::id::Handle;
#[cfg(any(feature = "sqlite", feature = "mysql"))]
use crate::record::Record;

/// The longest name keyfob gives its own tables and schemas: room for the
/// suffixes of its indexes within PostgreSQL's 63-byte limit.
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
const OWN_MAX: usize = 48;

/// The one check of a name spliced into SQL (a table or a schema): 1 to
/// `max` letters, digits and `_`, not starting with a digit. Nothing else can
/// close a quote or start a statement.
pub(crate) fn identifier(name: &str, max: usize) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= max
        && name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(Error::config(format!(
            "SQL name {name:?} must be 1-{max} characters of letters, digits and `_`, not starting with a digit \
             (keyfob's own tables stop at 48, leaving room for its index suffixes within PostgreSQL's 63)"
        )))
    }
}

/// [`identifier`] for the tables and schemas keyfob creates.
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
pub(crate) fn valid_identifier(name: &str) -> Result<()> {
    identifier(name, OWN_MAX)
}

#[cfg(any(feature = "sqlite", feature = "mysql"))]
pub(crate) fn decode_record(handle: &Handle, text: &str) -> Option<Record> {
    match serde_json::from_str::<Record>(text) {
        Ok(r) => Some(r),
        Err(err) => {
            tracing::warn!(
                handle = %handle.short(),
                error = %err,
                "keyfob: stored session record does not decode; treating it as no session"
            );
            None
        }
    }
}

#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
pub(crate) fn handle_from(bytes: &[u8]) -> Option<Handle> {
    <[u8; 32]>::try_from(bytes).ok().map(Handle::from_bytes)
}

/// What a SQL store keeps in its indexed `expires_at` column for a record
/// whose deadline is `deadline`: the deadline rounded up to the minute.
/// Only the expired-row sweep reads the column (liveness goes by the
/// record's own deadline), so it moves once a minute, not on every write
/// (the idle deadline moves every second): a session written many times a
/// minute leaves its index entry alone, which saves PostgreSQL a non-HOT
/// update, InnoDB a secondary-index change and SQLite an index page per
/// commit. A row is swept within a minute after its deadline.
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
pub(crate) fn sweep_at(deadline: Option<i64>) -> Option<i64> {
    deadline.map(|d| {
        d.div_euclid(60)
            .saturating_add(i64::from(d.rem_euclid(60) != 0))
            .saturating_mul(60)
    })
}

#[cfg(any(feature = "sqlite", feature = "mysql"))]
pub(crate) fn encode_record(record: &Record) -> Result<String> {
    serde_json::to_string(record)
        .map_err(|e| Error::with_source(crate::error::ErrorKind::Serialize, e))
}

/// A listed row (`handle`, record JSON) as an [`OwnedSession`]; `None`
/// (with a warning, from [`decode_record`]) when it does not decode.
#[cfg(any(feature = "sqlite", feature = "mysql"))]
pub(crate) fn owned_session(handle: &[u8], record: &str) -> Option<super::OwnedSession> {
    let handle = handle_from(handle)?;
    let record = decode_record(&handle, record)?;
    Some(super::OwnedSession {
        handle,
        record: std::sync::Arc::new(record),
    })
}

#[cfg(all(test, any(feature = "sqlite", feature = "postgres", feature = "mysql")))]
mod tests {
    use super::sweep_at;

    #[test]
    fn the_sweep_minute_is_the_deadline_rounded_up() {
        assert_eq!(sweep_at(None), None);
        assert_eq!(sweep_at(Some(120)), Some(120));
        assert_eq!(sweep_at(Some(121)), Some(180));
        assert_eq!(sweep_at(Some(179)), Some(180));
        assert_eq!(sweep_at(Some(-61)), Some(-60));
        assert_eq!(sweep_at(Some(i64::MAX)), Some(i64::MAX));
    }
}
