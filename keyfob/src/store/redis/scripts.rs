//! The Lua scripts the store runs, one file each under `lua/`, so they read
//! (and diff) as Lua. Each runs on one key (or one key and its index), so
//! every script is Cluster-safe.

use redis::Script;

/// Shared Lua prologue: `num(x)` reads a number or nil; `deadline(i, a)` is
/// the earlier of the idle and absolute deadlines (HMGET of `i`, `a`).
const LUA_COMMON: &str = include_str!("lua/common.lua");

/// Replies are arrays of strings (status first) so they decode as bytes.
/// Returns `{status, ...}`: 0 gone, -1 corrupt, 1 applied `{1, owner,
/// watermark, version applied to}`, 2 moved `{2, owner, expire_at, watermark, field, value, ...}`.
const LUA_UPDATE: &str = include_str!("lua/update.lua");

/// `1` stored, `0` a live record (or a tombstone) holds the key.
const LUA_CREATE: &str = include_str!("lua/create.lua");

/// `{0}` nothing deleted (missing or a tombstone, which only expiry or
/// `delete_by_owner` removes), `{1, owner}` deleted.
const LUA_DELETE: &str = include_str!("lua/delete.lua");

/// Revocation: `{0}` missing, `{1, owner}` a session deleted, `{2, target}`
/// a tombstone deleted (the caller revokes the session it points to).
const LUA_REVOKE: &str = include_str!("lua/revoke.lua");

/// Purge of one candidate: `{0}` gone already, `{1, owner}` deleted as
/// expired at ARGV[1], `{2, deadline}` still live (`''`: never expires).
const LUA_PURGE: &str = include_str!("lua/purge.lua");

/// Files a handle in an owner index under its watermark ARGV[2] (`inf`:
/// never expires), never lowering a member's score, and gives the index the
/// expiry of its longest-lived member.
const LUA_INDEX: &str = include_str!("lua/index.lua");

/// Rotation guard: 1 when the tombstone at KEYS[1] still points to ARGV[1].
const LUA_GUARD: &str = include_str!("lua/guard.lua");

pub(super) struct Scripts {
    pub(super) update: Script,
    pub(super) create: Script,
    pub(super) delete: Script,
    pub(super) revoke: Script,
    pub(super) purge: Script,
    pub(super) index: Script,
    pub(super) guard: Script,
}

impl Scripts {
    pub(super) fn new() -> Self {
        let common = |body: &str| Script::new(&format!("{LUA_COMMON}{body}"));
        Scripts {
            update: common(LUA_UPDATE),
            create: common(LUA_CREATE),
            delete: Script::new(LUA_DELETE),
            revoke: Script::new(LUA_REVOKE),
            purge: common(LUA_PURGE),
            index: Script::new(LUA_INDEX),
            guard: Script::new(LUA_GUARD),
        }
    }
}
