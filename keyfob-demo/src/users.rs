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

type Job = (String, String, tokio::sync::oneshot::Sender<Option<User>>);

/// [`verify`] on one of two long-lived hashing threads.
///
/// Each Argon2 check works in a 19 MiB buffer. On tokio's blocking pool,
/// which starts and retires threads as load comes and goes, every new thread
/// grew its own allocator arena by such a buffer (the soak saw RSS reach
/// 1.6 GB); two fixed threads keep at most two buffers' worth, reused.
pub async fn verify_off_thread(username: String, password: String) -> Option<User> {
    static POOL: OnceLock<Option<std::sync::mpsc::SyncSender<Job>>> = OnceLock::new();
    let pool = POOL.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(256);
        let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
        for i in 0..2 {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || loop {
                    let job = match rx.lock() {
                        Ok(guard) => guard.recv(),
                        Err(_) => return,
                    };
                    let Ok((user, password, reply)) = job else {
                        return;
                    };
                    let _ = reply.send(verify(&user, &password));
                });
            if spawned.is_err() {
                return None;
            }
        }
        Some(tx)
    });
    let (reply, answer) = tokio::sync::oneshot::channel();
    let pool = pool.as_ref()?;
    // `try_send`: a full queue (256 logins waiting) refuses rather than blocks a worker.
    pool.try_send((username, password, reply)).ok()?;
    answer.await.ok().flatten()
}
