//! The two demo users, with Argon2id password hashes.

use std::sync::OnceLock;

use argon2::{
    password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString},
    Argon2,
};
use serde::{Deserialize, Serialize};

/// A logged-in user, as `/me` and `/profile` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// The user's id.
    pub id: u64,
    /// The user's name.
    pub username: String,
}

struct Account {
    user: User,
    hash: String,
}

const DEMO: [(u64, &str, &str); 2] = [(1, "alice", "correct horse"), (2, "bob", "battery staple")];

/// Hashes are made once per process with a random salt: the passwords exist
/// in clear only in this table, never in a comparison.
fn accounts() -> &'static [Account] {
    static ACCOUNTS: OnceLock<Vec<Account>> = OnceLock::new();
    ACCOUNTS.get_or_init(|| {
        DEMO.iter()
            .filter_map(|(id, name, password)| {
                let mut salt = [0u8; 16];
                getrandom::fill(&mut salt).ok()?;
                let salt = SaltString::encode_b64(&salt).ok()?;
                let hash = Argon2::default()
                    .hash_password(password.as_bytes(), &salt)
                    .ok()?
                    .to_string();
                Some(Account {
                    user: User {
                        id: *id,
                        username: (*name).to_owned(),
                    },
                    hash,
                })
            })
            .collect()
    })
}

/// Verifies a username and password; `None` for any mismatch.
///
/// An unknown user still costs one Argon2 verification, so response time
/// does not tell which usernames exist.
pub fn verify(username: &str, password: &str) -> Option<User> {
    let accounts = accounts();
    let account = accounts.iter().find(|a| a.user.username == username);
    let hash = account.or(accounts.first())?.hash.as_str();
    let parsed = PasswordHash::new(hash).ok()?;
    let ok = Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok();
    account.filter(|_| ok).map(|a| a.user.clone())
}

/// Warms the hash table so the first login is not slower than the rest.
pub fn init() {
    let _ = accounts();
}
