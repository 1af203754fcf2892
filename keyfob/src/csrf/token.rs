//! The session-bound synchronizer token: secret, masking and verification.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use subtle::ConstantTimeEq;

use super::Reason;
use crate::{error::Result, record::reserved as keys, session::Session};

const SECRET_LEN: usize = 32;
/// mask || (mask XOR secret), base64url without padding.
pub(crate) const MASKED_LEN: usize = 86;

fn random() -> Result<[u8; SECRET_LEN]> {
    crate::id::random_bytes()
}

fn decode_secret(text: &str) -> Option<[u8; SECRET_LEN]> {
    let mut out = [0u8; SECRET_LEN];
    match URL_SAFE_NO_PAD.decode_slice(text.as_bytes(), &mut out) {
        Ok(SECRET_LEN) => Some(out),
        _ => None,
    }
}

/// The session's secret, or `None` when it has none (or an unreadable one).
pub(crate) async fn secret(session: &Session) -> Result<Option<[u8; SECRET_LEN]>> {
    let stored: Option<String> = session.get_reserved(keys::CSRF).await?;
    Ok(stored.as_deref().and_then(decode_secret))
}

/// The secret, minted and stored in the session when it has none.
async fn secret_or_mint(session: &Session) -> Result<[u8; SECRET_LEN]> {
    if let Some(s) = secret(session).await? {
        return Ok(s);
    }
    let s = random()?;
    session
        .insert_reserved(keys::CSRF, &URL_SAFE_NO_PAD.encode(s))
        .await?;
    Ok(s)
}

/// A freshly masked token for the session's secret.
pub(crate) async fn masked(session: &Session) -> Result<String> {
    let secret = secret_or_mint(session).await?;
    let mask = random()?;
    let mut out = [0u8; 2 * SECRET_LEN];
    out[..SECRET_LEN].copy_from_slice(&mask);
    for (i, (m, s)) in mask.iter().zip(secret.iter()).enumerate() {
        out[SECRET_LEN + i] = m ^ s;
    }
    Ok(URL_SAFE_NO_PAD.encode(out))
}

/// Checks a presented (masked) token against the secret, in constant time.
pub(crate) fn verify(presented: &[u8], secret: &[u8; SECRET_LEN]) -> Result<(), Reason> {
    if presented.len() != MASKED_LEN {
        return Err(Reason::TokenMalformed);
    }
    let mut raw = [0u8; 2 * SECRET_LEN];
    match URL_SAFE_NO_PAD.decode_slice(presented, &mut raw) {
        Ok(n) if n == 2 * SECRET_LEN => {}
        _ => return Err(Reason::TokenMalformed),
    }
    let (mask, masked) = raw.split_at(SECRET_LEN);
    let mut unmasked = [0u8; SECRET_LEN];
    for (i, (m, x)) in mask.iter().zip(masked.iter()).enumerate() {
        unmasked[i] = m ^ x;
    }
    if bool::from(unmasked.ct_eq(secret)) {
        Ok(())
    } else {
        Err(Reason::TokenMismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask_with(secret: &[u8; 32], mask: [u8; 32]) -> String {
        let mut out = [0u8; 64];
        out[..32].copy_from_slice(&mask);
        for i in 0..32 {
            out[32 + i] = mask[i] ^ secret[i];
        }
        URL_SAFE_NO_PAD.encode(out)
    }

    #[test]
    fn masked_token_verifies_under_any_mask() {
        let secret = [9u8; 32];
        for mask in [[0u8; 32], [0xff; 32], [7; 32]] {
            let t = mask_with(&secret, mask);
            assert_eq!(t.len(), MASKED_LEN);
            assert_eq!(verify(t.as_bytes(), &secret), Ok(()));
        }
    }

    #[test]
    fn malformed_and_wrong_tokens_are_refused_with_their_reason() {
        let secret = [9u8; 32];
        let good = mask_with(&secret, [3; 32]);
        let cases: Vec<(String, Reason)> = vec![
            (String::new(), Reason::TokenMalformed),
            (good[..85].to_owned(), Reason::TokenMalformed),
            (format!("{good}A"), Reason::TokenMalformed),
            ("!".repeat(86), Reason::TokenMalformed),
            ("A".repeat(100 * 1024), Reason::TokenMalformed),
            // The raw secret, unmasked, is not a token.
            (URL_SAFE_NO_PAD.encode(secret), Reason::TokenMalformed),
            (mask_with(&[8; 32], [3; 32]), Reason::TokenMismatch),
        ];
        for (t, reason) in cases {
            assert_eq!(verify(t.as_bytes(), &secret), Err(reason), "{:.20}", t);
        }
    }
}
