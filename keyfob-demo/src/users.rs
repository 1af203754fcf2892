//! The two demo users, with Argon2id password hashes.

use std::sync::OnceLock;

use argon2::{
    password_hash::{PasswordHash, PasswordHasher, SaltString},
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
/// does not tell which usernames exist. The 19 MiB Argon2 work area is
/// allocated once per thread and reused: allocating it per check made the
/// allocator keep a fresh copy per check (the soak saw RSS climb by 20 MB per
/// login to a 400 MB plateau).
pub fn verify(username: &str, password: &str) -> Option<User> {
    let accounts = accounts();
    let account = accounts.iter().find(|a| a.user.username == username);
    let hash = account.or(accounts.first())?.hash.as_str();
    let ok = check(hash, password).unwrap_or(false);
    account.filter(|_| ok).map(|a| a.user.clone())
}

thread_local! {
    static WORK_AREA: std::cell::RefCell<Vec<argon2::Block>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Argon2id of `password` under the PHC string's own salt and parameters,
/// compared in constant time with the hash it holds.
fn check(phc: &str, password: &str) -> Option<bool> {
    let parsed = PasswordHash::new(phc).ok()?;
    let params = argon2::Params::try_from(&parsed).ok()?;
    let expected = parsed.hash?;
    let mut salt = [0u8; 64];
    let salt = parsed.salt?.decode_b64(&mut salt).ok()?;
    let mut out = vec![0u8; expected.len()];
    let blocks = params.block_count();
    let hasher = Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    WORK_AREA.with(|area| {
        let mut area = area.try_borrow_mut().ok()?;
        if area.len() != blocks {
            area.clear();
            area.resize(blocks, argon2::Block::default());
        }
        hasher
            .hash_password_into_with_memory(password.as_bytes(), salt, &mut out, &mut area[..])
            .ok()
    })?;
    // `Output`'s equality is constant-time.
    let computed = argon2::password_hash::Output::new(&out).ok()?;
    Some(computed == expected)
}

/// Warms the hash table so the first login is not slower than the rest.
pub fn init() {
    let _ = accounts();
}

type Job = (String, String, tokio::sync::oneshot::Sender<Option<User>>);

/// The longest password (in bytes) worth hashing: longer ones are refused
/// before any work, so a megabyte "password" costs nothing.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// How many password checks may wait for a hashing thread. Past it, a login
/// is refused as overload ([`Busy`]), never as a wrong password.
pub const QUEUE: usize = 256;

/// The hashing threads are saturated: the login was not checked at all.
/// The demo answers `503` with `Retry-After`, never `401`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy;

/// [`verify`] on one of two long-lived hashing threads.
///
/// Each Argon2 check works in a 19 MiB buffer. On tokio's blocking pool,
/// which starts and retires threads as load comes and goes, every new thread
/// grew its own allocator arena by such a buffer (the soak saw RSS reach
/// 1.6 GB); two fixed threads keep at most two buffers' worth, reused.
///
/// # Errors
/// [`Busy`] when [`QUEUE`] checks are already waiting, or the hashing
/// threads could not be started: the credentials were not checked.
pub async fn verify_off_thread(username: String, password: String) -> Result<Option<User>, Busy> {
    static POOL: OnceLock<Option<std::sync::mpsc::SyncSender<Job>>> = OnceLock::new();
    let pool = POOL.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(QUEUE);
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
    let pool = pool.as_ref().ok_or(Busy)?;
    // `try_send`: a full queue refuses rather than blocks a worker.
    pool.try_send((username, password, reply))
        .map_err(|_| Busy)?;
    // A hashing thread that died without answering: not checked either.
    answer.await.map_err(|_| Busy)
}
