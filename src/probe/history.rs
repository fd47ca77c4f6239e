//! A server's health history on one transport: its last [`HISTORY_LEN`] changes and how often it
//! flapped in the last hour and day. Pure: no I/O, time is passed in.
//!
//! ```text
//!  Core::conclude (a flip) ─┐
//!  Core::set_drained ───────┼─► History::record(Change) ─► ring of the last 32 changes
//!  Core::carrying (drain    ┘                            └► flaps: 12 × 5 min, 24 × 1 h buckets
//!   line changed on reload)
//!  ServerReport (Arc, shared) ─► status, explain, the status page, metrics
//! ```
//!
//! Memory is bounded per target whatever the server does: a ring of at most 32 [`Change`]s of
//! 48 bytes (allocated as changes come, so a server that never changed costs none of it) and 104
//! bytes of flap buckets. For 10,000 servers on one transport that is at most 17 MB, 1.5 MB of it
//! before any server has changed (README, "Health history").

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::health::State;

/// Changes kept per server and transport; older ones are dropped.
pub const HISTORY_LEN: usize = 32;
/// The width of one bucket of the hour's flap count.
const FINE: Duration = Duration::from_secs(5 * 60);
/// The width of one bucket of the day's flap count.
const COARSE: Duration = Duration::from_secs(60 * 60);

/// One change of a server's health or drain, with what it looked like at that moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    /// When it happened.
    pub at: Instant,
    /// Its health before.
    pub from: State,
    /// Its health after (the same as `from` for a drain or undrain).
    pub to: State,
    /// Whether an operator (or the configuration) had it drained after the change.
    pub drained: bool,
    /// What decided it: the probe's outcome, or who drained it.
    pub why: &'static str,
    /// Its smoothed probe round-trip time then, in microseconds (saturating), if it had one.
    pub rtt_us: Option<u32>,
    /// Its last final SIP status code then, if any.
    pub code: Option<u16>,
    /// The RFC 7339 `oc` reduction in force then, in percent (0: none).
    pub overload: u8,
}

impl Change {
    /// Whether this change is a flap: up to down or down to up (a first verdict, from unknown,
    /// and a drain are not).
    pub fn is_flap(&self) -> bool {
        self.from != self.to && self.from != State::Unknown && self.to != State::Unknown
    }
}

/// Flap counts over the last hour and the last day.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flaps {
    /// Counted in 5-minute steps: flaps in the last 55 to 60 minutes.
    pub hour: u32,
    /// Counted in 1-hour steps: flaps in the last 23 to 24 hours.
    pub day: u32,
}

/// Counts in `N` buckets of `width`, the newest first; older buckets fall off as time passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Buckets<const N: usize> {
    counts: [u16; N],
    /// When the newest bucket began; `None` before the first count.
    newest: Option<Instant>,
}

impl<const N: usize> Default for Buckets<N> {
    fn default() -> Self {
        Buckets { counts: [0; N], newest: None }
    }
}

impl<const N: usize> Buckets<N> {
    /// How many buckets of `width` lie between the newest bucket's start and `at` (0 when `at`
    /// is earlier, which a monotonic clock never gives but a carried history must survive).
    fn steps(&self, at: Instant, width: Duration) -> usize {
        let Some(newest) = self.newest else { return N };
        let behind = at.saturating_duration_since(newest).as_nanos() / width.as_nanos().max(1);
        usize::try_from(behind).unwrap_or(usize::MAX)
    }

    /// Counts one event at `at`.
    fn add(&mut self, at: Instant, width: Duration) {
        let steps = self.steps(at, width);
        if steps >= N {
            self.counts = [0; N];
            self.newest = Some(at);
        } else if steps > 0 {
            self.counts.copy_within(0..N - steps, steps);
            self.counts[..steps].fill(0);
            self.newest = self.newest.and_then(|n| n.checked_add(width * steps as u32));
        }
        self.counts[0] = self.counts[0].saturating_add(1);
    }

    /// The events of the buckets that still lie in the window at `now`.
    fn sum(&self, now: Instant, width: Duration) -> u32 {
        let steps = self.steps(now, width);
        self.counts.iter().take(N.saturating_sub(steps)).map(|&c| u32::from(c)).sum()
    }
}

/// A server's history on one transport.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    /// The last changes, oldest first.
    changes: VecDeque<Change>,
    /// Flaps in 5-minute buckets (the last hour).
    hour: Buckets<12>,
    /// Flaps in 1-hour buckets (the last day).
    day: Buckets<24>,
}

impl History {
    /// Records `change`, dropping the oldest beyond [`HISTORY_LEN`], and counts it if it is a
    /// flap.
    pub fn record(&mut self, change: Change) {
        if self.changes.len() >= HISTORY_LEN {
            self.changes.pop_front();
        }
        if change.is_flap() {
            self.hour.add(change.at, FINE);
            self.day.add(change.at, COARSE);
        }
        self.changes.push_back(change);
    }

    /// The changes kept, oldest first.
    pub fn changes(&self) -> impl DoubleEndedIterator<Item = &Change> + ExactSizeIterator {
        self.changes.iter()
    }

    /// The latest change, if any.
    pub fn last(&self) -> Option<&Change> {
        self.changes.back()
    }

    /// How often it flapped in the last hour and day, as seen at `now`.
    pub fn flaps(&self, now: Instant) -> Flaps {
        Flaps { hour: self.hour.sum(now, FINE), day: self.day.sum(now, COARSE) }
    }
}

/// `d` in whole microseconds, saturating at `u32::MAX` (71 minutes: no probe waits that long).
pub fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flip(at: Instant, from: State, to: State) -> Change {
        Change { at, from, to, drained: false, why: "timeout", rtt_us: Some(400), code: Some(200), overload: 0 }
    }

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn the_ring_keeps_the_last_32_changes_in_order() {
        let t0 = Instant::now();
        let mut h = History::default();
        for i in 0..100u32 {
            let (from, to) = if i % 2 == 0 { (State::Up, State::Down) } else { (State::Down, State::Up) };
            h.record(flip(t0 + Duration::from_secs(u64::from(i)), from, to));
        }
        assert_eq!(h.changes().len(), HISTORY_LEN);
        assert_eq!(h.changes().next().unwrap().at, t0 + Duration::from_secs(68), "the oldest kept");
        assert_eq!(h.last().unwrap().at, t0 + Duration::from_secs(99));
        assert!(h.changes.capacity() <= HISTORY_LEN, "never grows past the ring");
    }

    #[test]
    fn flaps_count_up_and_down_only_and_age_out() {
        let t0 = Instant::now();
        let mut h = History::default();
        h.record(flip(t0, State::Unknown, State::Up));
        let drain = Change { drained: true, why: "drained by an operator", ..flip(t0, State::Up, State::Up) };
        h.record(drain);
        assert_eq!(h.flaps(t0), Flaps { hour: 0, day: 0 }, "a first verdict and a drain are no flaps");
        h.record(flip(t0 + MIN, State::Up, State::Down));
        h.record(flip(t0 + 2 * MIN, State::Down, State::Up));
        h.record(flip(t0 + 30 * MIN, State::Up, State::Down));
        assert_eq!(h.flaps(t0 + 31 * MIN), Flaps { hour: 3, day: 3 });
        // An hour after the first two: they left the hour (5-minute steps), not the day.
        assert_eq!(h.flaps(t0 + 61 * MIN), Flaps { hour: 1, day: 3 });
        assert_eq!(h.flaps(t0 + 90 * MIN), Flaps { hour: 0, day: 3 });
        assert_eq!(h.flaps(t0 + 25 * 60 * MIN), Flaps { hour: 0, day: 0 });
        // Counting goes on after a long quiet spell.
        h.record(flip(t0 + 48 * 60 * MIN, State::Down, State::Up));
        assert_eq!(h.flaps(t0 + 48 * 60 * MIN), Flaps { hour: 1, day: 1 });
    }

    #[test]
    fn the_window_edges_are_five_minutes_and_an_hour_wide() {
        let t0 = Instant::now();
        let mut h = History::default();
        h.record(flip(t0, State::Up, State::Down));
        assert_eq!(h.flaps(t0 + 59 * MIN).hour, 1, "still inside the last twelve 5-minute steps");
        assert_eq!(h.flaps(t0 + 60 * MIN).hour, 0);
        assert_eq!(h.flaps(t0 + 23 * 60 * MIN + 59 * MIN).day, 1);
        assert_eq!(h.flaps(t0 + 24 * 60 * MIN).day, 0);
    }

    #[test]
    fn counts_saturate_and_earlier_times_count_in_the_newest_bucket() {
        let t0 = Instant::now() + Duration::from_secs(3600);
        let mut h = History::default();
        for _ in 0..70_000 {
            h.record(flip(t0, State::Up, State::Down));
        }
        assert_eq!(h.flaps(t0).hour, u32::from(u16::MAX));
        h.record(flip(t0 - MIN, State::Down, State::Up));
        assert_eq!(h.flaps(t0).hour, u32::from(u16::MAX), "saturated, no panic");
    }

    #[test]
    fn a_change_is_48_bytes() {
        // The memory the README states for 10,000 servers rests on this.
        assert!(std::mem::size_of::<Change>() <= 48, "{}", std::mem::size_of::<Change>());
        assert!(std::mem::size_of::<Buckets<12>>() + std::mem::size_of::<Buckets<24>>() <= 104);
    }
}
