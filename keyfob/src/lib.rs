//! Sessions, signed cookies and CSRF protection for axum and tower, with
//! every store in one crate.
//!
//! One layer, one extractor:
//!
//! ```
//! use axum::{routing::get, Router};
//! use keyfob::{Key, MemoryStore, Session, SessionLayer};
//!
//! const VISITS: Key<u64> = Key::new("visits");
//!
//! async fn visit(session: Session) -> Result<String, keyfob::Error> {
//!     let n = session.get(VISITS).await?.unwrap_or(0) + 1;
//!     session.insert(VISITS, n).await?;
//!     Ok(format!("visit {n}"))
//! }
//!
//! let app: Router = Router::new()
//!     .route("/", get(visit))
//!     .layer(SessionLayer::new(MemoryStore::new()));
//! ```
//!
//! What it guarantees:
//! - the record is loaded lazily, at most once per request, and a request
//!   that only reads writes nothing and sends no `Set-Cookie`;
//! - saves send a change-set that the store merges into its current record,
//!   so concurrent requests writing different keys all persist, and a
//!   logged-out session is never written back;
//! - session IDs are 256 random bits; stores keep only their SHA-256;
//! - idle and absolute expiry are enforced by the server on every load;
//! - keys rotate without logging anyone out: a [`keys::Keyring`] signs and
//!   encrypts with its first key, verifies with all of them, and derives a
//!   separate key per purpose and cookie name;
//! - a store outage is a `503 session store unavailable`, never a panic or a
//!   silently empty session.
//!
//! # Cargo features
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `axum` | yes | the `Session` and `AuthUser` extractors, `IntoResponse` for errors |
//! | `memory` | yes | [`MemoryStore`], sharded, in process, bounded |
//! | `sqlite` | no | `SqliteStore`, the embedded default of persistent stores (on sqlx) |
//! | `postgres` | no | `PostgresStore`, PostgreSQL (on sqlx) |
//! | `mysql` | no | `MySqlStore`, MySQL 8 and MariaDB (on sqlx) |
//! | `redis` | no | `RedisStore`, Redis and Redis Cluster |
//! | `cache` | no | `CachedStore`, an in-process cache in front of any store |
//! | `cookie-store` | no | `CookieStore`: the whole session sealed (or signed) in its cookie |
//! | `auth` | yes | [`auth`]: `login`/`logout`, `AuthUser`, `RequireLoginLayer`, `safe_next`, listing and revoking a user's sessions |
//! | `migrate` | no | [`migrate`]: copy live tower-sessions sessions (SQL tables with `sqlite`/`postgres`/`mysql`, or rows you read, e.g. from Redis) into a keyfob store; pair with [`SessionLayerBuilder::with_legacy_ids`] |
//! | `migrate-redis` | no | `migrate::Source::redis`: the keys of tower-sessions-redis-store (on the `redis` crate) |
//! | `tower-sessions` | no | `TowerSessionsStore`: any tower-sessions 0.14 store under keyfob, with its weaker guarantees stated and enforced |
//! | `csrf` | yes | [`csrf`]: `CsrfLayer` (tower-http's origin check plus keyfob's stricter origin rule and session-bound masked tokens), `CsrfToken` |
//!
//! Always available: [`keys`] (the keyring, signed and encrypted values,
//! signed session IDs via
//! [`SessionLayerBuilder::with_signed_ids`]); with `axum`, `jar`
//! (`SignedCookieJar` and `PrivateCookieJar` extractors).
//!
//! Every item has one path. The core (the [`Session`] handle, the
//! [`SessionLayer`] and its builder, [`Record`] and [`Update`], [`Handle`],
//! [`Expiry`] and clocks, [`Error`], [`SessionStore`] and every store) is at
//! the crate root. Modules that are a concept of their own are namespaces:
//! [`auth`] login, the login guard and a user's sessions; [`csrf`]
//! cross-site request forgery protection; [`keys`] master keys and signed or
//! encrypted values; `jar` (with `axum`) signed and private cookie jars;
//! `extract` (with `axum`) the extractors' rejections; [`store`] what a store
//! implementation needs beyond the trait, and the cleanup task; `migrate`
//! (with its feature) moving sessions over from tower-sessions.

#![deny(missing_docs, unreachable_pub)]
#![forbid(unsafe_code)]
// No panic on a request path or on user configuration: outside tests, a
// failure is an `Error` (clippy runs in CI with `-D warnings`).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
// docs.rs (see Cargo.toml) marks every feature-gated item with its feature.
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "auth")]
pub mod auth;
mod cookie;
#[cfg(feature = "csrf")]
pub mod csrf;
mod error;
mod expiry;
#[cfg(feature = "axum")]
pub mod extract;
mod id;
#[cfg(feature = "axum")]
pub mod jar;
pub mod keys;
mod layer;
#[cfg(feature = "migrate")]
pub mod migrate;
mod record;
mod session;
pub mod store;

pub use crate::cookie::SameSite;
pub use error::{Error, ErrorKind, Result};
pub use expiry::{Clock, Expiry, ManualClock, SystemClock};
pub use id::{Handle, ParseHandleError};
pub use layer::{
    ResponseFuture, SessionLayer, SessionLayerBuilder, SessionService,
    DEFAULT_MAX_SESSIONS_PER_USER, DEFAULT_STORE_TIMEOUT,
};
pub use record::{ChangeSet, Record, Update};
pub use session::{AsKey, Key, Session};
#[cfg(feature = "cache")]
pub use store::cached::CachedStore;
#[cfg(feature = "cookie-store")]
pub use store::cookie::CookieStore;
#[cfg(feature = "memory")]
pub use store::memory::MemoryStore;
#[cfg(feature = "mysql")]
pub use store::mysql::MySqlStore;
#[cfg(feature = "postgres")]
pub use store::postgres::PostgresStore;
#[cfg(feature = "redis")]
pub use store::redis::RedisStore;
pub use store::session_store::SessionStore;
#[cfg(feature = "sqlite")]
pub use store::sqlite::SqliteStore;
#[cfg(feature = "tower-sessions")]
pub use store::tower::TowerSessionsStore;

// Re-exported so users name the same `time` version keyfob uses.
pub use time;

/// The README's examples compile and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;

/// The migration guide's examples compile and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../../MIGRATING.md")]
pub struct MigratingDoctests;
