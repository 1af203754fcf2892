//! How a [`Record`] is laid out in a Redis hash, and read back.

use super::*;

pub(super) fn text(v: Option<&Vec<u8>>) -> &str {
    v.and_then(|v| std::str::from_utf8(v).ok()).unwrap_or("")
}

/// The hash fields of a new record.
pub(super) fn encode(record: &Record) -> Result<Vec<(String, Vec<u8>)>> {
    let mut f: Vec<(String, Vec<u8>)> = vec![
        ("v".into(), record.version.to_string().into_bytes()),
        ("c".into(), record.created.to_string().into_bytes()),
        ("s".into(), record.last_seen.to_string().into_bytes()),
    ];
    if let Some(i) = record.idle_deadline.get() {
        f.push(("i".into(), i.to_string().into_bytes()));
    }
    if let Some(a) = record.absolute_deadline.get() {
        f.push(("a".into(), a.to_string().into_bytes()));
    }
    if let Some(o) = &record.owner {
        f.push(("o".into(), o.as_bytes().to_vec()));
    }
    if let Some(e) = &record.expiry {
        f.push(("e".into(), serde_json::to_vec(e).map_err(Error::store)?));
    }
    for key in record.data.keys() {
        if let Some(v) = record.data.get(key) {
            f.push((format!("d:{key}"), v.as_bytes().to_vec()));
        }
    }
    Ok(f)
}

pub(super) enum Decoded {
    Missing,
    Moved,
    Record(Record),
}

/// Reads a session hash; `Err` says why it is corrupt.
pub(super) fn decode(fields: &[(Vec<u8>, Vec<u8>)]) -> std::result::Result<Decoded, &'static str> {
    if fields.is_empty() {
        return Ok(Decoded::Missing);
    }
    let mut record = Record::new(OffsetDateTime::UNIX_EPOCH, None, None);
    let (mut version, mut created, mut seen) = (None, None, None);
    let int = |v: &[u8]| -> std::result::Result<i64, &'static str> {
        std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or("a metadata field is not an integer")
    };
    let mut entries = Vec::new();
    for (k, v) in fields {
        match k.as_slice() {
            b"moved" => return Ok(Decoded::Moved),
            b"v" => version = Some(int(v)?),
            b"c" => created = Some(int(v)?),
            b"s" => seen = Some(int(v)?),
            b"i" => record.idle_deadline = Some(int(v)?).into(),
            b"a" => record.absolute_deadline = Some(int(v)?).into(),
            b"o" => {
                let owner = std::str::from_utf8(v).map_err(|_| "the owner is not UTF-8")?;
                record.owner = Some(owner.into());
            }
            b"e" => {
                let e: Expiry =
                    serde_json::from_slice(v).map_err(|_| "the expiry is not valid JSON")?;
                record.expiry = Some(Box::new(e));
            }
            b"x" => {}
            other => {
                let Some(key) = other.strip_prefix(b"d:") else {
                    return Err("an unknown field");
                };
                let key = std::str::from_utf8(key).map_err(|_| "a data key is not UTF-8")?;
                let text = String::from_utf8(v.clone()).map_err(|_| "a value is not UTF-8")?;
                let value = RawValue::from_string(text).map_err(|_| "a value is not JSON")?;
                entries.push((key, value));
            }
        }
    }
    let (Some(version), Some(created), Some(seen)) = (version, created, seen) else {
        return Err("the version, created or last-seen field is missing");
    };
    record.version = u64::try_from(version).map_err(|_| "the version is negative")?;
    record.created = created;
    record.last_seen = seen;
    record.data = Data::from_entries(entries);
    Ok(Decoded::Record(record))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_survives_encode_and_decode() {
        let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let mut record = Record::new(now, Some(now + time::Duration::hours(1)), None);
        record.data.set(
            "big",
            &RawValue::from_string("12345678901234567890".into()).unwrap(),
        );
        record.owner = Some("u1".into());
        let fields: Vec<(Vec<u8>, Vec<u8>)> = encode(&record)
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k.into_bytes(), v))
            .collect();
        let Ok(Decoded::Record(back)) = decode(&fields) else {
            panic!("decodes")
        };
        assert_eq!(back, record);
    }

    #[test]
    fn corrupt_hashes_are_refused_not_guessed() {
        let cases: &[&[(&str, &str)]] = &[
            &[("v", "1"), ("c", "x"), ("s", "1")],
            &[("v", "1"), ("c", "1")],
            &[("v", "1"), ("c", "1"), ("s", "1"), ("d:a", "{not json")],
            &[("v", "1"), ("c", "1"), ("s", "1"), ("zz", "1")],
            &[("v", "-1"), ("c", "1"), ("s", "1")],
        ];
        for case in cases {
            let fields: Vec<(Vec<u8>, Vec<u8>)> = case
                .iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
                .collect();
            assert!(decode(&fields).is_err(), "{case:?}");
        }
    }
}
