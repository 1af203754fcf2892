//! Unit tests of the keyring, and helpers other modules' tests share.

use super::*;
use crate::{ErrorKind, ManualClock};
use time::Duration;

pub(crate) fn key(seed: u8) -> Vec<u8> {
    // Deterministic, varied bytes: a tiny LCG is enough for a test key.
    let mut x = u32::from(seed).wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..64)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            (x >> 16) as u8
        })
        .collect()
}

/// Every way to damage a cookie value that the tamper matrix covers.
pub(crate) fn tampered(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = value.as_bytes();
    for i in 0..bytes.len() {
        for bit in 0..8 {
            let mut b = bytes.to_vec();
            b[i] ^= 1 << bit;
            if let Ok(s) = String::from_utf8(b) {
                out.push(s);
            }
        }
        out.push(format!("{}{}", &value[..i], &value[i + 1..]));
    }
    for cut in 1..bytes.len() {
        out.push(value[..cut].to_owned());
    }
    out.push(String::new());
    for extra in ["A", "=", ".", "AAAA", ".AAAA", " "] {
        out.push(format!("{value}{extra}"));
        out.push(format!("{extra}{value}"));
    }
    if let Some((a, b)) = value.split_once('.') {
        out.push(format!("{b}.{a}"));
        out.push(format!("{a}.{a}"));
        out.push(format!("{b}.{b}"));
        out.push(format!("{a}.{b}.{b}"));
    }
    out.push(value.to_uppercase());
    out.push(value.to_lowercase());
    out.push(
        value
            .chars()
            .map(|c| {
                if c.is_ascii_lowercase() {
                    c.to_ascii_uppercase()
                } else {
                    c.to_ascii_lowercase()
                }
            })
            .collect(),
    );
    out.retain(|v| v != value);
    out
}

#[test]
fn tamper_matrix_reads_every_signed_variant_as_absent() {
    let keys = Keyring::new(key(1)).unwrap();
    let value = keys.sign("theme", b"dark", None).unwrap();
    assert_eq!(keys.verify("theme", &value).unwrap().value(), b"dark");
    let cases = tampered(&value);
    assert!(cases.len() > 500, "{}", cases.len());
    for case in cases {
        assert!(keys.verify("theme", &case).is_none(), "{case:?} verified");
    }
    assert!(keys.verify("Theme", &value).is_none(), "another name");
    let other = Keyring::new(key(2)).unwrap();
    assert!(other.verify("theme", &value).is_none(), "another key");
}

#[test]
fn tamper_matrix_reads_every_private_variant_as_absent() {
    let keys = Keyring::new(key(1)).unwrap();
    let value = keys.encrypt("token", b"s3cret", None).unwrap();
    assert_eq!(keys.decrypt("token", &value).unwrap().value(), b"s3cret");
    for case in tampered(&value) {
        assert!(keys.decrypt("token", &case).is_none(), "{case:?} decrypted");
    }
    assert!(keys.decrypt("token2", &value).is_none(), "another name");
    let other = Keyring::new(key(2)).unwrap();
    assert!(other.decrypt("token", &value).is_none(), "another key");
}

#[test]
fn values_never_cross_purposes() {
    let keys = Keyring::new(key(1)).unwrap();
    let now = keys.now();
    let signed = keys.sign("id", b"x", None).unwrap();
    assert!(keys
        .verify_for(Purpose::SessionId, "id", &signed, now)
        .is_none());
    let private = keys.encrypt("id", b"x", None).unwrap();
    assert!(keys.verify("id", &private).is_none());
    assert!(keys.decrypt("id", &signed).is_none());
}

#[test]
fn rotation_accepts_old_key_values_as_stale_and_drops_retired_keys() {
    let (k1, k2) = (key(1), key(2));
    let old = Keyring::new(&k1).unwrap();
    let signed = old.sign("theme", b"dark", None).unwrap();
    let private = old.encrypt("theme", b"dark", None).unwrap();
    let rotated = Keyring::from_keys([&k2, &k1]).unwrap();
    let s = rotated.verify("theme", &signed).unwrap();
    let p = rotated.decrypt("theme", &private).unwrap();
    assert!(s.is_stale() && p.is_stale());
    // Re-issued under K2: current, and readable by [K2] alone.
    let reissued = rotated.sign("theme", s.value(), None).unwrap();
    assert!(!rotated.verify("theme", &reissued).unwrap().is_stale());
    let only_new = Keyring::new(&k2).unwrap();
    assert!(only_new.verify("theme", &reissued).is_some());
    assert!(only_new.verify("theme", &signed).is_none());
    assert!(only_new.decrypt("theme", &private).is_none());
}

#[test]
fn sealed_expiry_refuses_a_replayed_value() {
    let clock = ManualClock::new();
    let keys = Keyring::new(key(1)).unwrap().with_clock(clock.clone());
    let deadline = clock.now() + Duration::days(7);
    let signed = keys.sign("u", b"1", Some(deadline)).unwrap();
    let private = keys.encrypt("u", b"1", Some(deadline)).unwrap();
    clock.advance(Duration::days(7) - Duration::seconds(1));
    assert_eq!(
        keys.verify("u", &signed).unwrap().expires_at(),
        Some(deadline)
    );
    assert!(keys.decrypt("u", &private).is_some());
    clock.advance(Duration::seconds(1));
    assert!(keys.verify("u", &signed).is_none());
    assert!(keys.decrypt("u", &private).is_none());
}

#[test]
fn weak_or_short_keys_are_refused_with_advice() {
    let ascending: Vec<u8> = (0..64).collect();
    let cases: Vec<Vec<u8>> = vec![
        vec![],
        key(1)[..31].to_vec(),
        vec![0; 64],
        vec![b'a'; 32],
        b"abcdabcdabcdabcdabcdabcdabcdabcd".to_vec(),
        ascending,
    ];
    for k in cases {
        let err = Keyring::new(&k).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.to_string().contains("/dev/urandom"), "{err}");
    }
    assert!(Keyring::new(key(1)).is_ok());
    assert!(Keyring::new(&key(1)[..32]).is_ok());
}

#[test]
fn keys_load_from_base64_text_env_and_file() {
    let k1 = STANDARD.encode(key(1));
    let k2 = URL_SAFE_NO_PAD.encode(key(2));
    let ring = Keyring::from_base64(&format!("{k2},\n {k1}\n")).unwrap();
    assert_eq!(ring.keys.len(), 2);
    assert_eq!(ring.current(), &key(2)[..]);
    assert!(Keyring::from_base64("").is_err());
    assert!(Keyring::from_base64("@@@").is_err());
    let var = "KEYFOB_TEST_KEYS_LOAD";
    std::env::set_var(var, &k1);
    assert_eq!(Keyring::from_env(var).unwrap().current(), &key(1)[..]);
    std::env::remove_var(var);
    let dir = std::env::temp_dir().join(format!("keyfob-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.key");
    std::fs::write(&path, "AAAA\n").unwrap();
    let err = Keyring::from_file(&path).unwrap_err();
    assert!(err.to_string().contains("bad.key"), "{err}");
    assert!(!err.to_string().contains('\n'), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[cfg(unix)]
#[test]
fn created_key_file_has_mode_0600_and_is_reused() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = std::env::temp_dir().join(format!("keyfob-keyfile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("k.key");
    let first = Keyring::load_or_create(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(first.current().len(), GENERATED_KEY_LEN);
    let again = Keyring::load_or_create(&path).unwrap();
    assert_eq!(first.current(), again.current());
    std::fs::remove_dir_all(&dir).unwrap();
}
