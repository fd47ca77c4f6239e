//! Response rate limiting (RRL), as knot, nsd and BIND do it: each client prefix has a token
//! bucket of `responses_per_second`; a response over the limit is dropped, except every `slip`-th,
//! which goes out truncated (TC=1, question only) so a real client retries over TCP, where its
//! address is proven. Pure: time is passed in, no I/O.
//!
//! ```text
//!  client address ─► exempt? ──yes──► Send
//!        │ no
//!        ▼ mask to /24 (IPv4) or /56 (IPv6) ─► keyed hash ─► two candidate slots
//!  slot with this prefix (or the staler of the two, reset) ─► refill tokens by elapsed time
//!        ─► a token? ─► Send  │ none ─► every slip-th: Slip, else Drop
//! ```
//!
//! One limiter per worker, never shared: no locks, nothing written that another core reads. The
//! table has a fixed size (no allocation per packet); the hash is keyed with random bits drawn at
//! start, so nobody can aim addresses at one slot. A source whose slot was taken over starts again
//! with a full bucket, which can only err on the side of answering.

use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;
use std::time::Instant;

pub use crate::config::RrlConfig as Settings;

/// Token units per response: buckets count thousandths, so rates refill exactly per millisecond.
const UNIT: u64 = 1000;

/// What to do with one response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Within the limit (or exempt): send it.
    Send,
    /// Over the limit, but this one goes out truncated (TC=1, no records).
    Slip,
    /// Over the limit: drop it.
    Drop,
}

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    /// The masked prefix with a family tag; 0 marks an empty slot (whose bucket reads as empty
    /// too, but whose stamp of 0 makes it the stalest).
    key: u128,
    /// Token units left.
    tokens: u64,
    /// When the bucket was last refilled, in ms since the limiter started.
    stamp_ms: u64,
    /// Responses over the limit so far (for slip).
    over: u32,
}

/// One worker's rate limiter.
#[derive(Debug)]
pub struct Limiter {
    settings: Settings,
    slots: Box<[Slot]>,
    hasher: std::collections::hash_map::RandomState,
    start: Instant,
}

impl Limiter {
    /// A limiter with an empty table, its clock starting at `now`.
    pub fn new(settings: Settings, now: Instant) -> Limiter {
        let size = settings.table_size.max(2).next_power_of_two();
        Limiter {
            slots: vec![Slot::default(); size].into_boxed_slice(),
            settings,
            // Keyed from the OS's randomness once per limiter.
            hasher: std::collections::hash_map::RandomState::new(),
            start: now,
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The table key of `client`: its prefix, tagged with the family (never 0).
    fn key(&self, client: IpAddr) -> u128 {
        let client = match client {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(client, IpAddr::V4),
            v4 => v4,
        };
        match client {
            IpAddr::V4(a) => {
                let len = u32::from(self.settings.ipv4_prefix_length.min(32));
                let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
                (1u128 << 127) | (1u128 << 32) | u128::from(u32::from(a) & mask)
            }
            IpAddr::V6(a) => {
                let len = u32::from(self.settings.ipv6_prefix_length.clamp(1, 120));
                let mask = u128::MAX << (128 - len);
                // The low bits below the longest allowed prefix carry the family tag.
                (u128::from(a) & mask) | 0xff
            }
        }
    }

    /// Charges one response to `client` at `now` and says what to do with it.
    #[inline]
    pub fn decide(&mut self, client: IpAddr, now: Instant) -> Decision {
        if self.settings.exempt.iter().any(|p| p.contains(client)) {
            return Decision::Send;
        }
        let key = self.key(client);
        let mut h = self.hasher.build_hasher();
        h.write_u128(key);
        let hash = h.finish();
        let mask = self.slots.len() - 1;
        let a = hash as usize & mask;
        // Two different slots always: were both halves of the hash to pick one slot (one source in
        // `slots.len()`), a flood source landing on a limited prefix's slot would evict it with no
        // choice, about one run in a hundred of the flood test below.
        let b = match (hash >> 32) as usize & mask {
            b if b == a => a ^ 1,
            b => b,
        };
        let now_ms = u64::try_from(now.saturating_duration_since(self.start).as_millis()).unwrap_or(u64::MAX);
        let rate = u64::from(self.settings.responses_per_second);
        let capacity = rate.saturating_mul(UNIT);
        let index = if self.slots[a].key == key {
            a
        } else if self.slots[b].key == key {
            b
        } else {
            // A new prefix takes whichever of its two slots loses least: the one whose bucket
            // would be fuller by now (a full bucket is what a reset gives anyway), then the
            // staler. A prefix being limited has an empty bucket, so a flood of fresh sources
            // cannot reset it.
            // An empty slot (key 0: no prefix is) loses nothing at all; counted by its refill
            // it would look emptier than a limited prefix in the limiter's first second, and a
            // flood of fresh sources would evict that prefix into a full bucket.
            let refilled = |s: &Slot| {
                if s.key == 0 {
                    return u64::MAX;
                }
                s.tokens.saturating_add(now_ms.saturating_sub(s.stamp_ms).saturating_mul(rate)).min(capacity)
            };
            let (fa, fb) = (refilled(&self.slots[a]), refilled(&self.slots[b]));
            let i = match fa.cmp(&fb) {
                std::cmp::Ordering::Greater => a,
                std::cmp::Ordering::Less => b,
                std::cmp::Ordering::Equal if self.slots[a].stamp_ms <= self.slots[b].stamp_ms => a,
                std::cmp::Ordering::Equal => b,
            };
            self.slots[i] = Slot { key, tokens: capacity, stamp_ms: now_ms, over: 0 };
            i
        };
        let slot = &mut self.slots[index];
        let elapsed = now_ms.saturating_sub(slot.stamp_ms);
        slot.tokens = slot.tokens.saturating_add(elapsed.saturating_mul(rate)).min(capacity);
        slot.stamp_ms = slot.stamp_ms.max(now_ms);
        if slot.tokens >= UNIT {
            slot.tokens -= UNIT;
            return Decision::Send;
        }
        slot.over = slot.over.wrapping_add(1);
        match self.settings.slip {
            0 => Decision::Drop,
            n if slot.over.is_multiple_of(n) => Decision::Slip,
            _ => Decision::Drop,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::prefix::Prefix;

    fn settings(rate: u32, slip: u32) -> Settings {
        Settings {
            responses_per_second: rate,
            slip,
            ipv4_prefix_length: 24,
            ipv6_prefix_length: 56,
            exempt: vec![Prefix::parse("192.0.2.0/25").unwrap()],
            table_size: 1024,
        }
    }

    fn count(l: &mut Limiter, client: &str, n: usize, now: Instant) -> [usize; 3] {
        let client: IpAddr = client.parse().unwrap();
        let mut c = [0; 3];
        for _ in 0..n {
            match l.decide(client, now) {
                Decision::Send => c[0] += 1,
                Decision::Slip => c[1] += 1,
                Decision::Drop => c[2] += 1,
            }
        }
        c
    }

    #[test]
    fn a_burst_gets_one_seconds_worth_then_slips_and_drops() {
        let t0 = Instant::now();
        let mut l = Limiter::new(settings(100, 2), t0);
        assert_eq!(count(&mut l, "198.51.100.7", 1000, t0), [100, 450, 450]);
        // The whole /24 shares the bucket; another /24 has its own.
        assert_eq!(count(&mut l, "198.51.100.200", 10, t0), [0, 5, 5]);
        assert_eq!(count(&mut l, "198.51.101.1", 10, t0), [10, 0, 0]);
        // Tokens come back with time: 10 ms at 100/s is one response.
        assert_eq!(count(&mut l, "198.51.100.7", 5, t0 + Duration::from_millis(10)), [1, 2, 2]);
        assert_eq!(
            count(&mut l, "198.51.100.7", 200, t0 + Duration::from_secs(60)),
            [100, 50, 50],
            "capped at one second's worth"
        );
    }

    #[test]
    fn a_steady_rate_within_the_limit_is_never_limited() {
        let t0 = Instant::now();
        let mut l = Limiter::new(settings(10, 2), t0);
        for k in 0..1000u64 {
            assert_eq!(l.decide("203.0.113.9".parse().unwrap(), t0 + Duration::from_millis(100 * k)), Decision::Send);
        }
    }

    #[test]
    fn slip_zero_drops_everything_over_and_exempt_prefixes_pass() {
        let t0 = Instant::now();
        let mut l = Limiter::new(settings(5, 0), t0);
        assert_eq!(count(&mut l, "198.51.100.1", 100, t0), [5, 0, 95]);
        assert_eq!(count(&mut l, "192.0.2.100", 100, t0), [100, 0, 0], "exempt");
        assert_eq!(count(&mut l, "192.0.2.200", 100, t0), [5, 0, 95], "outside the /25");
    }

    #[test]
    fn ipv6_groups_by_56_and_mapped_v4_counts_as_v4() {
        let t0 = Instant::now();
        let mut l = Limiter::new(settings(10, 0), t0);
        assert_eq!(count(&mut l, "2001:db8:0:ff::1", 10, t0), [10, 0, 0]);
        assert_eq!(count(&mut l, "2001:db8:0:aa::2", 10, t0), [0, 0, 10], "same /56");
        assert_eq!(count(&mut l, "2001:db8:0:100::1", 10, t0), [10, 0, 0], "another /56");
        assert_eq!(count(&mut l, "198.51.100.1", 10, t0), [10, 0, 0]);
        assert_eq!(count(&mut l, "::ffff:198.51.100.2", 10, t0), [0, 0, 10], "mapped: the same /24");
    }

    #[test]
    fn a_flood_of_random_sources_cannot_evict_a_limited_prefix() {
        let t0 = Instant::now();
        let mut l = Limiter::new(settings(50, 0), t0);
        let victim: IpAddr = "198.51.100.1".parse().unwrap();
        let mut sent = 0;
        let mut seed = 0x1234_5678_9abc_def0u64;
        for ms in 0..1000u64 {
            let now = t0 + Duration::from_millis(ms);
            for _ in 0..10 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let spoofed = IpAddr::from((seed as u32).to_be_bytes());
                let _ = l.decide(spoofed, now);
                if l.decide(victim, now) == Decision::Send {
                    sent += 1;
                }
            }
        }
        // One second: the burst of 50 plus 50 refilled; a reset bucket would allow far more.
        assert!(sent <= 110, "the victim's prefix got {sent} responses in one second at 50/s");
    }

    #[test]
    fn time_going_backwards_or_far_ahead_is_harmless() {
        let t0 = Instant::now() + Duration::from_secs(5);
        let mut l = Limiter::new(settings(u32::MAX, 1), t0);
        assert_eq!(count(&mut l, "198.51.100.1", 3, t0 - Duration::from_secs(5)), [3, 0, 0]);
        assert_eq!(count(&mut l, "198.51.100.1", 3, t0 + Duration::from_secs(86_400 * 365)), [3, 0, 0]);
    }
}
