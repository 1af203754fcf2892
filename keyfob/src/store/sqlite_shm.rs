//! How the SQLite store knows, without a query, that no other process has
//! committed to its file since its near cache was last in step with it.
//!
//! In WAL mode every connection to a database shares its wal-index, the
//! `-shm` file beside it, whose header (documented in SQLite's "WAL-mode
//! file format", section "The WAL-Index Header") holds `iChange`, a counter
//! every commit increments, and the WAL's salts, which change whenever the
//! WAL restarts. Reading those 96 bytes (the header is kept twice; a torn
//! read shows two different copies) costs one `pread`, against a query's
//! trip through sqlx's worker thread, so a cached record can be checked on
//! every load. This is our own code because no crate reads it, and the
//! measurement (a cached `/read` several times faster than a query) and the
//! guarantee (a commit by another process is seen before a cached record is
//! served) both need it.
//!
//! The rules, with the store's single writer thread (`sqlite_writer`):
//! - the writer marks each of its transactions (`writing` is odd inside
//!   one) and, once it holds SQLite's write lock, reads the stamp: if it is
//!   not the one the cache is in step with, another process committed, and
//!   the cache is emptied; after its own commit the cache is in step with
//!   the stamp read back, if it is exactly one commit after (`iChange` one
//!   more; the salts kept, or those of a WAL restart, which that commit made),
//!   and the transaction changed rows (a commit that writes no page leaves
//!   the counter alone); with no changed rows, with the stamp;
//! - the writer, not the caller, updates this process's copies after each
//!   commit and before answering, so a write whose caller stopped waiting
//!   still drops or refreshes its copy;
//! - when the last connection to a file closes, SQLite deletes the `-shm`
//!   file and the next connection makes a new one. The store keeps one
//!   connection of its own open for its lifetime, so that cannot happen
//!   while it serves; until that connection is open, each read checks that
//!   the file it reads is not unlinked (and reopens, starting over);
//! - a load serves a cached record only if the stamp read now is the one the
//!   cache is in step with; otherwise it asks the database, and if no write
//!   of this process was under way across the check, the difference is
//!   another process's: the cache is emptied and in step with the new stamp.

use std::{
    fs::File,
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Mutex,
    },
};

/// What the wal-index header says about commits: `iChange` and the salts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    change: u32,
    salt: [u32; 2],
}

impl Stamp {
    /// The stamp after one more commit, the WAL not restarting.
    fn next(self) -> Stamp {
        Stamp {
            change: self.change.wrapping_add(1),
            salt: self.salt,
        }
    }

    /// Whether this is the stamp of the one commit after `before`. `iChange`
    /// moves only at a commit. The salts stay, unless that commit restarted
    /// the WAL, which a write does once the WAL has been wholly checkpointed:
    /// `walRestartHdr` then adds one to the first salt (a big-endian number)
    /// and draws the second.
    fn follows(self, before: Stamp) -> bool {
        self.change == before.change.wrapping_add(1)
            && (self.salt == before.salt
                || u32::from_be(self.salt[0]) == u32::from_be(before.salt[0]).wrapping_add(1))
    }
}

const HEADER: usize = 48;

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Decodes the two header copies; `None` while they differ (being written)
/// or before the wal-index is initialised.
fn stamp(bytes: &[u8; 2 * HEADER]) -> Option<Stamp> {
    let (a, b) = bytes.split_at(HEADER);
    if a != b || a[12] == 0 {
        return None;
    }
    Some(Stamp {
        change: u32_at(a, 8)?,
        salt: [u32_at(a, 32)?, u32_at(a, 36)?],
    })
}

pub(crate) struct Watch {
    path: PathBuf,
    shm: Mutex<Option<File>>,
    /// Set once the store holds a connection of its own open to the file
    /// for as long as it lives: SQLite then never deletes the `-shm` file,
    /// and a read needs no `fstat` to know it is still the live one.
    kept_open: AtomicBool,
    /// The stamp the cache is in step with; `None` when unknown.
    last: Mutex<Option<Stamp>>,
    /// Odd while the writer thread is inside a transaction.
    writing: AtomicU64,
}

impl Watch {
    /// Watches the wal-index of the database file `db`.
    pub(crate) fn new(db: &Path) -> Watch {
        let mut path = db.as_os_str().to_owned();
        path.push("-shm");
        Watch {
            path: PathBuf::from(path),
            shm: Mutex::new(None),
            last: Mutex::new(None),
            writing: AtomicU64::new(0),
            kept_open: AtomicBool::new(false),
        }
    }

    /// The store now holds a connection open to the file (see `kept_open`).
    pub(crate) fn kept_open(&self) {
        self.kept_open.store(true, Ordering::SeqCst);
    }

    /// The stamp now; `None` when the `-shm` file cannot be read (not in
    /// WAL mode, not yet created) or is being written.
    pub(crate) fn read(&self) -> Option<Stamp> {
        use std::os::unix::fs::MetadataExt;
        let mut shm = self.shm.lock().ok()?;
        // When the last connection to the file closes, SQLite deletes the
        // `-shm` file and the next one makes a new file: an open handle to
        // the old one would read a counter that never moves again.
        let gone = !self.kept_open.load(Ordering::Relaxed)
            && shm
                .as_ref()
                .is_some_and(|f| f.metadata().map_or(true, |m| m.nlink() == 0));
        if gone {
            *shm = None;
            self.set_last(None);
        }
        if shm.is_none() {
            *shm = File::open(&self.path).ok();
        }
        let mut bytes = [0u8; 2 * HEADER];
        shm.as_ref()?.read_exact_at(&mut bytes, 0).ok()?;
        stamp(&bytes)
    }

    fn last(&self) -> Option<Stamp> {
        self.last.lock().ok().and_then(|l| *l)
    }

    fn set_last(&self, stamp: Option<Stamp>) {
        if let Ok(mut l) = self.last.lock() {
            *l = stamp;
        }
    }

    /// May a cached record be served? `resync` runs (emptying the cache)
    /// when another process is known to have committed meanwhile.
    pub(crate) fn in_step(&self, resync: impl FnOnce()) -> bool {
        let before = self.writing.load(Ordering::SeqCst);
        let Some(now) = self.read() else {
            return false;
        };
        if self.last() == Some(now) {
            return true;
        }
        let after = self.writing.load(Ordering::SeqCst);
        if before % 2 == 0 && before == after {
            // No write of ours across the read: the change is another's.
            resync();
            self.set_last(Some(now));
        }
        false
    }

    /// The writer thread, holding the write lock, before its statements:
    /// `resync` runs if another process committed since the last check.
    /// The transaction ends with [`Writing::end`]; dropped without it (the
    /// writer unwinding), the cache is in step with nothing until the next
    /// load checks.
    pub(crate) fn begin(&self, resync: impl FnOnce()) -> Writing<'_> {
        self.writing.fetch_add(1, Ordering::SeqCst);
        let before = self.read();
        if before.is_none() || before != self.last() {
            resync();
        }
        Writing {
            watch: self,
            before,
            ended: false,
        }
    }
}

/// One transaction of the writer thread, from [`Watch::begin`].
pub(crate) struct Writing<'a> {
    watch: &'a Watch,
    before: Option<Stamp>,
    ended: bool,
}

impl Writing<'_> {
    /// After the transaction: `committed` (a commit that changed rows, so
    /// moved the counter by one) leaves the cache in step with one commit
    /// more than the stamp at `begin`; otherwise with that stamp.
    ///
    /// Which stamp that commit left is read back: if it restarted the WAL,
    /// the salts changed, and a stamp computed from `before` would never
    /// match, so the next load would take it for another process's commit
    /// and empty the cache (under a steady write load, at every WAL restart,
    /// a few times a second). A stamp read back that is not exactly one
    /// commit after `before` is not taken: another process committed too,
    /// and the next load finds that out.
    pub(crate) fn end(mut self, committed: bool) {
        let watch = self.watch;
        watch.set_last(match self.before {
            Some(b) if committed => Some(
                watch
                    .read()
                    .filter(|now| now.follows(b))
                    .unwrap_or_else(|| b.next()),
            ),
            before => before,
        });
        self.ended = true;
        watch.writing.fetch_add(1, Ordering::SeqCst);
    }
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        if !self.ended {
            self.watch.set_last(None);
            self.watch.writing.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(change: u32, salt: [u32; 2], init: u8) -> [u8; HEADER] {
        let mut h = [0u8; HEADER];
        h[8..12].copy_from_slice(&change.to_ne_bytes());
        h[12] = init;
        h[32..36].copy_from_slice(&salt[0].to_ne_bytes());
        h[36..40].copy_from_slice(&salt[1].to_ne_bytes());
        h
    }

    fn both(a: [u8; HEADER], b: [u8; HEADER]) -> [u8; 2 * HEADER] {
        let mut out = [0u8; 2 * HEADER];
        out[..HEADER].copy_from_slice(&a);
        out[HEADER..].copy_from_slice(&b);
        out
    }

    #[test]
    fn a_header_reads_only_when_both_copies_agree() {
        let h = header(7, [1, 2], 1);
        assert_eq!(
            stamp(&both(h, h)),
            Some(Stamp {
                change: 7,
                salt: [1, 2]
            })
        );
        assert_eq!(stamp(&both(h, header(8, [1, 2], 1))), None, "torn");
        let uninit = header(7, [1, 2], 0);
        assert_eq!(stamp(&both(uninit, uninit)), None);
    }

    #[test]
    fn the_commit_after_a_stamp_keeps_its_salts_or_restarts_the_wal() {
        let be = |n: u32| u32::from_be(n);
        let before = Stamp {
            change: 9,
            salt: [be(41), 77],
        };
        assert!(before.next().follows(before));
        let restarted = Stamp {
            change: 10,
            salt: [be(42), 12345],
        };
        assert!(restarted.follows(before), "a WAL restart with the commit");
        let two_commits = Stamp {
            change: 11,
            ..before
        };
        assert!(
            !two_commits.follows(before),
            "another process committed too"
        );
        let other_salts = Stamp {
            change: 10,
            salt: [be(50), 77],
        };
        assert!(!other_salts.follows(before));
        assert!(!before.follows(before), "no commit");
    }

    #[test]
    fn one_commit_moves_the_counter_and_keeps_the_salts() {
        let s = Stamp {
            change: u32::MAX,
            salt: [3, 4],
        };
        assert_eq!(
            s.next(),
            Stamp {
                change: 0,
                salt: [3, 4]
            }
        );
    }
}
