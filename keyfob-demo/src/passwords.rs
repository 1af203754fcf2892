//! Argon2id password hashing and checking, on two long-lived threads.
//!
//! Each Argon2 run works in a 19 MiB buffer. On tokio's blocking pool, which
//! starts and retires threads as load comes and goes, every new thread grew
//! its own allocator arena by such a buffer (the soak saw RSS reach 1.6 GB).
//! Checks (every login) run on two fixed threads, each reusing one work
//! area; hashing a new password (rare) lets the argon2 crate allocate its
//! own buffer, on the same two threads.

use std::sync::OnceLock;

use argon2::{
    password_hash::{PasswordHash, SaltString},
    Argon2, PasswordHasher,
};

thread_local! {
    static WORK_AREA: std::cell::RefCell<Vec<argon2::Block>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The longest password (in bytes) worth hashing: longer ones are refused
/// before any work, so a megabyte "password" costs nothing.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// The shortest new password (in characters) `POST /account/password` takes.
pub const MIN_NEW_PASSWORD_CHARS: usize = 8;

/// How many password jobs may wait for a hashing thread. Past it, a login
/// is refused as overload ([`Busy`]), never as a wrong password.
pub const QUEUE: usize = 256;

/// The hashing threads are saturated: nothing was checked or hashed.
/// The demo answers `503` with `Retry-After`, never `401`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy;

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

/// A new Argon2id PHC string for `password`, under a random salt.
pub fn hash(password: &str) -> Option<String> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).ok()?;
    hash_with_salt(password, &salt)
}

/// The Argon2id PHC string of `password` under `salt` (8 to 64 bytes).
pub(crate) fn hash_with_salt(password: &str, salt: &[u8]) -> Option<String> {
    let salt = SaltString::encode_b64(salt).ok()?;
    Some(
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .ok()?
            .to_string(),
    )
}

/// A hash no password is known for: checked against when the username is
/// unknown, so response time does not tell which usernames exist.
fn decoy() -> Option<&'static str> {
    static DECOY: OnceLock<Option<String>> = OnceLock::new();
    DECOY
        .get_or_init(|| {
            let mut secret = [0u8; 32];
            getrandom::fill(&mut secret).ok()?;
            hash(&format!("{secret:?}"))
        })
        .as_deref()
}

/// Makes the decoy hash now, so the first unknown-user login is not slower.
pub fn init() {
    let _ = decoy();
}

type Job = Box<dyn FnOnce() + Send>;

/// Runs `job` on one of the two hashing threads.
///
/// # Errors
/// [`Busy`] when [`QUEUE`] jobs are already waiting, or the threads could not
/// be started or died without answering.
async fn off_thread<T: Send + 'static>(
    job: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Busy> {
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
                    let Ok(job) = job else {
                        return;
                    };
                    job();
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
    pool.try_send(Box::new(move || {
        let _ = reply.send(job());
    }))
    .map_err(|_| Busy)?;
    answer.await.map_err(|_| Busy)
}

/// Whether `password` matches the PHC string `hash`; with no hash (an
/// unknown user) it checks against a decoy and answers `false`, at the same
/// cost.
///
/// # Errors
/// [`Busy`]: the password was not checked.
pub async fn verify(hash: Option<String>, password: String) -> Result<bool, Busy> {
    off_thread(move || match &hash {
        Some(h) => check(h, &password).unwrap_or(false),
        None => {
            let _ = decoy().map(|d| check(d, &password));
            false
        }
    })
    .await
}

/// [`hash`] on a hashing thread; `None` when no salt could be drawn.
///
/// # Errors
/// [`Busy`]: nothing was hashed.
pub async fn hash_off_thread(password: String) -> Result<Option<String>, Busy> {
    off_thread(move || hash(&password)).await
}
