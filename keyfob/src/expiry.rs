//! When sessions end: idle and absolute deadlines, and the clock that drives them.
//!
//! (The rules, caveats and examples are on the public type below,
//! where docs.rs shows them: this module is private.)

use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

/// The expiry of one session, as in tower-sessions.
///
/// ```
/// use keyfob::Expiry;
/// use time::Duration;
///
/// let e = Expiry::OnInactivity(Duration::minutes(30));
/// assert_ne!(e, Expiry::OnSessionEnd);
/// ```
///
/// Rules:
/// - **idle timeout**: a session unused for this long is gone. Reads count as
///   activity, but the store is touched (only the deadline is written) at
///   most once per *touch interval*, so a read-heavy app does not write on
///   every request;
/// - **touch interval**: unless set, a tenth of the session's idle timeout,
///   at most one minute (2 h idle: 1 min; 10 s idle: 1 s; 2 s idle: every
///   read). Deadlines are kept in whole seconds, so a session read at least
///   once per nine tenths of its idle timeout, less one second, never expires
///   while in use (a 2 s session read every second stays). An explicit
///   interval at least as long as the idle timeout is refused when the layer
///   is built; for a per-session [`Expiry::OnInactivity`] shorter than it, the
///   session falls back to the automatic interval;
/// - **absolute timeout**: a hard cap set when the session is created and
///   never extended, not by activity and not by [`Session::cycle_id`];
/// - the server checks both on every load, whatever the cookie says;
/// - a per-session [`Expiry`] (the tower-sessions enum) overrides the idle
///   policy of one session; the absolute cap still applies.
///
/// Caveat: a record's `last_seen` is precise to the touch interval only.
///
/// Time comes from a [`Clock`]; tests inject a [`ManualClock`] and move time
/// without sleeping.
///
/// ```
/// use keyfob::{ManualClock, Clock};
/// use time::Duration;
///
/// let clock = ManualClock::new();
/// let t0 = clock.now();
/// clock.advance(Duration::hours(3));
/// assert_eq!(clock.now() - t0, Duration::hours(3));
/// ```
///
/// [`Session::cycle_id`]: crate::Session::cycle_id
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Expiry {
    /// A browser-session cookie (no `Max-Age`): the browser drops it when it
    /// closes. The server still ends the session after the layer's idle timeout.
    OnSessionEnd,
    /// The session ends after this much inactivity (replaces the layer's idle timeout).
    OnInactivity(Duration),
    /// The session ends at this instant, whatever the activity.
    AtDateTime(#[serde(with = "time::serde::timestamp")] OffsetDateTime),
}

/// A source of the current time.
///
/// ```
/// use keyfob::{Clock, SystemClock};
///
/// let now = SystemClock.now();
/// assert!(now.year() >= 2024);
/// ```
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> OffsetDateTime;
}

/// The real wall clock.
///
/// ```
/// let _clock = keyfob::SystemClock;
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// A clock that moves only when told to; for tests. Clones share one time.
///
/// ```
/// use keyfob::{Clock, ManualClock};
/// use time::Duration;
///
/// let clock = ManualClock::new();
/// let other = clock.clone();
/// clock.advance(Duration::seconds(5));
/// assert_eq!(clock.now(), other.now());
/// ```
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<Mutex<OffsetDateTime>>);

impl ManualClock {
    /// A manual clock set to the current wall-clock time (truncated to whole seconds).
    pub fn new() -> Self {
        let now = OffsetDateTime::now_utc();
        let now = now.replace_nanosecond(0).unwrap_or(now);
        ManualClock(Arc::new(Mutex::new(now)))
    }

    /// Moves the clock forward (or back, with a negative duration).
    pub fn advance(&self, by: Duration) {
        let mut t = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        *t += by;
    }

    /// Sets the clock to an instant.
    pub fn set(&self, to: OffsetDateTime) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = to;
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Seconds since the Unix epoch: the resolution of every stored instant.
pub(crate) fn secs(t: OffsetDateTime) -> i64 {
    t.unix_timestamp()
}

pub(crate) fn instant(secs: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(secs).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// `now + d`, saturating at the last representable instant instead of
/// panicking on a huge duration.
pub(crate) fn later(now: OffsetDateTime, d: Duration) -> OffsetDateTime {
    now.checked_add(d).unwrap_or_else(|| {
        if d.is_negative() {
            OffsetDateTime::new_utc(time::Date::MIN, time::Time::MIDNIGHT)
        } else {
            OffsetDateTime::new_utc(time::Date::MAX, time::Time::MIDNIGHT)
        }
    })
}

/// The longest timeout the layer accepts: longer ones are surely a mistake.
pub(crate) const MAX_TIMEOUT: Duration = Duration::days(365 * 100);

/// The layer-wide expiry policy (set through the layer builder).
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) absolute_timeout: Option<Duration>,
    pub(crate) browser_session_cookie: bool,
    /// `None`: follows the idle timeout (see [`Policy::touch_interval`]).
    pub(crate) touch_interval: Option<Duration>,
}

/// The longest automatic touch interval.
const MAX_AUTO_TOUCH: Duration = Duration::minutes(1);

impl Default for Policy {
    fn default() -> Self {
        Policy {
            idle_timeout: Some(Duration::hours(2)),
            absolute_timeout: Some(Duration::hours(12)),
            browser_session_cookie: false,
            touch_interval: None,
        }
    }
}

impl Policy {
    /// The idle deadline for a session active at `now`.
    pub(crate) fn idle_deadline(
        &self,
        expiry: Option<Expiry>,
        now: OffsetDateTime,
    ) -> Option<OffsetDateTime> {
        match expiry {
            Some(Expiry::OnInactivity(d)) => Some(later(now, d)),
            Some(Expiry::AtDateTime(at)) => Some(at),
            Some(Expiry::OnSessionEnd) | None => self.idle_timeout.map(|d| later(now, d)),
        }
    }

    /// Whether the idle deadline slides with activity (so reads must touch).
    pub(crate) fn slides(&self, expiry: Option<Expiry>) -> bool {
        match expiry {
            Some(Expiry::AtDateTime(_)) => false,
            Some(Expiry::OnInactivity(_)) => true,
            Some(Expiry::OnSessionEnd) | None => self.idle_timeout.is_some(),
        }
    }

    /// How often a read refreshes the idle deadline of a session with this
    /// expiry: the explicit interval when it is shorter than the session's
    /// idle timeout, else a tenth of that timeout, at most one minute.
    pub(crate) fn touch_interval(&self, expiry: Option<Expiry>) -> Duration {
        let idle = match expiry {
            Some(Expiry::OnInactivity(d)) => Some(d),
            _ => self.idle_timeout,
        };
        let auto = idle.map_or(MAX_AUTO_TOUCH, |d: Duration| {
            (d / 10_i32).min(MAX_AUTO_TOUCH)
        });
        match (self.touch_interval, idle) {
            (Some(every), Some(idle)) if every < idle => every,
            (Some(every), None) => every,
            _ => auto,
        }
    }

    /// Whether a request at `now` that only read a session last seen at
    /// `last_seen` (unix seconds) must refresh its idle deadline.
    pub(crate) fn touch_due(&self, expiry: Option<Expiry>, last_seen: i64, now: i64) -> bool {
        self.slides(expiry)
            && now.saturating_sub(last_seen) >= self.touch_interval(expiry).whole_seconds()
    }

    pub(crate) fn browser_session(&self, expiry: Option<Expiry>) -> bool {
        match expiry {
            Some(Expiry::OnSessionEnd) => true,
            Some(_) => false,
            None => self.browser_session_cookie,
        }
    }
}
