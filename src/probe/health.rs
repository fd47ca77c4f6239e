//! The health state machine of one server on one transport. Pure: no I/O, time is passed in.
//!
//! ```text
//!            first verdict a success            fall failures in a row
//!   Unknown ─────────────────────────► Up ────────────────────────────────► Down
//!      │                                ◄──────────────────────────────────  ▲
//!      │                                     rise successes in a row         │
//!      └─────────────────────────────────────────────────────────────────────┘
//!            first verdict a failure
//! ```
//!
//! A reply with a "down" code (503 by default) is a failure; with Retry-After it also drains the
//! server until that time has passed, whatever the probes say meanwhile.

use std::time::{Duration, Instant};

/// Where a server stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// No verdict yet: not served (unless every server of the service is unknown).
    Unknown,
    /// Healthy: served.
    Up,
    /// Failed `fall` probes in a row (or is draining): not served.
    Down,
}

impl State {
    /// Its name as `probe.start` writes it (`unknown`, `up`, `down`), and as reports, logs and
    /// the status page say it.
    pub fn name(self) -> &'static str {
        match self {
            State::Unknown => "unknown",
            State::Up => "up",
            State::Down => "down",
        }
    }
}

/// The outcome of one probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A final reply that counts as alive, with its round-trip time.
    Alive {
        /// Time from the first send to the reply.
        rtt: Duration,
    },
    /// No final reply before the timeout, an ICMP refusal, or a reply with a "down" code.
    Failed,
    /// A "down" reply with Retry-After: failed, and keep it out until `until`.
    Drain {
        /// When the server asked to be tried again.
        until: Instant,
    },
}

/// Hysteresis thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// Successes in a row to go up.
    pub rise: u32,
    /// Failures in a row to go down.
    pub fall: u32,
}

/// One server's health on one transport.
#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    state: State,
    successes: u32,
    failures: u32,
    drain_until: Option<Instant>,
    /// Exponentially weighted moving average of the round-trip time, if any reply came.
    rtt: Option<Duration>,
    /// How many times the state flipped (Unknown → anything counts).
    flips: u64,
}

impl Health {
    /// A server in `start` state.
    pub fn new(start: State) -> Health {
        Health { state: start, successes: 0, failures: 0, drain_until: None, rtt: None, flips: 0 }
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// The smoothed round-trip time.
    pub fn rtt(&self) -> Option<Duration> {
        self.rtt
    }

    /// How many times the state flipped.
    pub fn flips(&self) -> u64 {
        self.flips
    }

    /// Whether the server has failed its last probe (used to re-check a failing server at once).
    pub fn failing(&self) -> bool {
        self.failures > 0
    }

    /// Takes one verdict at time `now`; returns `true` when the state flipped (log only then).
    pub fn observe(&mut self, verdict: Verdict, now: Instant, t: Thresholds) -> bool {
        let before = self.state;
        match verdict {
            Verdict::Alive { rtt } => {
                // RFC 6298-style smoothing with a gain of 1/8.
                self.rtt = Some(match self.rtt {
                    None => rtt,
                    Some(avg) => (avg * 7 + rtt) / 8,
                });
                self.failures = 0;
                self.successes = self.successes.saturating_add(1);
                let draining = self.drain_until.is_some_and(|u| now < u);
                if !draining {
                    self.drain_until = None;
                    // The first verdict decides an unknown server; after that, rise applies.
                    if self.state == State::Unknown || (self.state == State::Down && self.successes >= t.rise) {
                        self.state = State::Up;
                    }
                }
            }
            Verdict::Failed | Verdict::Drain { .. } => {
                if let Verdict::Drain { until } = verdict {
                    self.drain_until = Some(until);
                    self.state = State::Down;
                }
                self.successes = 0;
                self.failures = self.failures.saturating_add(1);
                if self.state == State::Unknown || (self.state == State::Up && self.failures >= t.fall) {
                    self.state = State::Down;
                }
            }
        }
        let flipped = self.state != before;
        if flipped {
            self.flips += 1;
        }
        flipped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Thresholds = Thresholds { rise: 2, fall: 2 };
    const OK: Verdict = Verdict::Alive { rtt: Duration::from_millis(1) };

    #[test]
    fn rise_and_fall() {
        let now = Instant::now();
        let mut h = Health::new(State::Down);
        assert!(!h.observe(OK, now, T));
        assert_eq!(h.state(), State::Down);
        assert!(h.observe(OK, now, T));
        assert_eq!(h.state(), State::Up);
        assert!(!h.observe(Verdict::Failed, now, T));
        assert!(!h.observe(OK, now, T), "a success resets the failure count");
        assert!(!h.observe(Verdict::Failed, now, T));
        assert!(h.observe(Verdict::Failed, now, T));
        assert_eq!(h.state(), State::Down);
        assert_eq!(h.flips(), 2);
    }

    #[test]
    fn the_first_verdict_decides_an_unknown_server() {
        let mut h = Health::new(State::Unknown);
        assert!(h.observe(Verdict::Failed, Instant::now(), T));
        assert_eq!(h.state(), State::Down);
        let mut h = Health::new(State::Unknown);
        assert!(h.observe(OK, Instant::now(), T));
        assert_eq!(h.state(), State::Up);
    }

    #[test]
    fn flapping_input_never_flips_with_alternating_verdicts() {
        let now = Instant::now();
        let mut h = Health::new(State::Up);
        for i in 0..1000 {
            let v = if i % 2 == 0 { Verdict::Failed } else { OK };
            assert!(!h.observe(v, now, T), "fall = 2 absorbs single failures");
        }
        assert_eq!((h.state(), h.flips()), (State::Up, 0));
    }

    #[test]
    fn retry_after_drains_until_its_time() {
        let now = Instant::now();
        let mut h = Health::new(State::Up);
        assert!(h.observe(Verdict::Drain { until: now + Duration::from_secs(30) }, now, T));
        for s in 1..10 {
            h.observe(OK, now + Duration::from_secs(s), T);
        }
        assert_eq!(h.state(), State::Down, "still draining");
        assert!(h.observe(OK, now + Duration::from_secs(31), T));
        assert_eq!(h.state(), State::Up);
    }

    #[test]
    fn rtt_is_smoothed() {
        let now = Instant::now();
        let mut h = Health::new(State::Up);
        h.observe(Verdict::Alive { rtt: Duration::from_millis(8) }, now, T);
        h.observe(Verdict::Alive { rtt: Duration::from_millis(16) }, now, T);
        assert_eq!(h.rtt(), Some(Duration::from_millis(9)));
    }
}
