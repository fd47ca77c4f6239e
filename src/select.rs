//! Selection policies: which addresses one A/AAAA answer carries. Pure functions, no I/O.
//!
//! A policy turns the healthy set into a [`Rotation`]: how many consecutive servers (in ring
//! order) one answer carries and the cycle of starting positions a worker walks. The snapshot
//! encodes the healthy set once as a ring and answers with a window into it, so memory stays
//! linear in the farm. Round-robin starts each answer one position further, so consecutive
//! queries see every server first in turn; weighted and latency start at the positions of a
//! smooth weighted sequence, so each server comes first in proportion to its weight; on-duty
//! gives one window per probe round.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use crate::config::Policy;

/// The longest cycle one rotation may have; weights are scaled down to fit.
pub const MAX_ROTATION: usize = 65_536;

/// What a worker cycles through: windows of `len` consecutive servers of the healthy set (in
/// ring order, wrapping), starting at the positions `starts` gives in turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    /// Servers per answer (at most the healthy count); the reply may carry fewer if they do not
    /// fit the client's payload size.
    pub len: usize,
    /// The cycle of starting positions.
    pub starts: Starts,
}

/// The cycle of starting positions of a [`Rotation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Starts {
    /// Every position of a ring of this many servers in turn (round robin): nothing stored.
    Each(usize),
    /// These positions in turn.
    Order(Vec<u32>),
}

impl Starts {
    /// How long the cycle is.
    pub fn cycle(&self) -> usize {
        match self {
            Starts::Each(k) => *k,
            Starts::Order(o) => o.len(),
        }
    }

    /// The starting position at step `i` of the cycle (`i` below [`Starts::cycle`]).
    pub fn at(&self, i: usize) -> usize {
        match self {
            Starts::Each(_) => i,
            Starts::Order(o) => o[i] as usize,
        }
    }
}

impl Rotation {
    /// The servers of the answer at step `i` of the cycle (tests and diagnostics).
    pub fn answer<T: Copy>(&self, healthy: &[T], i: usize) -> Vec<T> {
        let k = healthy.len();
        let start = self.starts.at(i % self.starts.cycle().max(1));
        (0..self.len).map(|j| healthy[(start + j) % k]).collect()
    }
}

/// The rotation for `k` healthy servers under `policy`. `weights` is parallel to the healthy set
/// (read by the weighted and latency policies only); `answers` is the configured cap, `None` for
/// every server (the reply then carries as many as fit).
pub fn rotation(k: usize, weights: &[u32], policy: Policy, answers: Option<usize>, round: u64) -> Rotation {
    if k == 0 {
        return Rotation { len: 0, starts: Starts::Order(vec![0]) };
    }
    match policy {
        Policy::RoundRobin => Rotation { len: answers.unwrap_or(k).min(k), starts: Starts::Each(k) },
        Policy::OnDuty => {
            Rotation { len: answers.unwrap_or(1).min(k), starts: Starts::Order(vec![(round % k as u64) as u32]) }
        }
        Policy::Weighted | Policy::Latency => {
            let order = smooth_weighted(weights, k).into_iter().map(|i| i as u32).collect();
            Rotation { len: answers.unwrap_or(k).min(k), starts: Starts::Order(order) }
        }
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// The order in which weighted round robin picks among `k` servers: each server appears in
/// proportion to its weight, spread out rather than in runs. Stride scheduling: server `i`'s
/// `p`-th pick is due at `(2p + 1) / 2w_i`, and picks go in order of due time (ties to the lower
/// index), which a heap gives in O(total · log k), so a farm of thousands rebuilds in
/// milliseconds.
pub fn smooth_weighted(weights: &[u32], k: usize) -> Vec<usize> {
    let mut w: Vec<u64> = (0..k).map(|i| u64::from(weights.get(i).copied().unwrap_or(1))).collect();
    if w.iter().all(|&x| x == 0) {
        w.iter_mut().for_each(|x| *x = 1);
    }
    let g = w.iter().copied().filter(|&x| x > 0).fold(0, gcd);
    w.iter_mut().for_each(|x| *x /= g.max(1));
    let mut total: u64 = w.iter().sum();
    if total > MAX_ROTATION as u64 {
        // Scale down, keeping every non-zero weight at least 1.
        w.iter_mut().for_each(|x| *x = if *x == 0 { 0 } else { (*x * MAX_ROTATION as u64 / total).max(1) });
        total = w.iter().sum();
    }
    let mut due: BinaryHeap<Reverse<Due>> = w
        .iter()
        .enumerate()
        .filter(|(_, &w)| w > 0)
        .map(|(i, &w)| Reverse(Due { picks: 0, weight: w, index: i }))
        .collect();
    let mut order = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let Some(Reverse(next)) = due.pop() else { break };
        order.push(next.index);
        if next.picks + 1 < next.weight {
            due.push(Reverse(Due { picks: next.picks + 1, ..next }));
        }
    }
    order
}

/// A server's next pick in [`smooth_weighted`]: due at `(2 · picks + 1) / (2 · weight)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Due {
    picks: u64,
    weight: u64,
    index: usize,
}

impl Ord for Due {
    fn cmp(&self, other: &Due) -> Ordering {
        // Compare the fractions by cross-multiplying; both terms stay below 2^17 · 2^17.
        let a = (2 * self.picks + 1) * other.weight;
        let b = (2 * other.picks + 1) * self.weight;
        a.cmp(&b).then(self.index.cmp(&other.index))
    }
}

impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Due) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The latency weight of the fastest server (and of one not measured yet).
pub const FASTEST_WEIGHT: u32 = 100;

/// Latency weights: each server's weight is inversely proportional to its smoothed RTT, on a
/// 1-100 scale relative to the fastest, quantised so that jitter does not rebuild snapshots.
/// Servers without a measurement get the fastest server's weight.
pub fn latency_weights(rtts_us: &[Option<u64>]) -> Vec<u32> {
    let fastest = rtts_us.iter().flatten().copied().min().unwrap_or(1).max(1);
    rtts_us
        .iter()
        .map(|r| match r {
            None => FASTEST_WEIGHT,
            Some(rtt) => {
                let scale = u64::from(FASTEST_WEIGHT);
                let w = (scale.saturating_mul(fastest) / (*rtt).max(1)).clamp(1, scale) as u32;
                // Quantise to 5 % steps.
                (w.div_ceil(5) * 5).min(FASTEST_WEIGHT)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_robin_puts_every_server_first_once() {
        let r = rotation(3, &[], Policy::RoundRobin, None, 0);
        let answers: Vec<_> = (0..3).map(|i| r.answer(&[1, 2, 3], i)).collect();
        assert_eq!(answers, vec![vec![1, 2, 3], vec![2, 3, 1], vec![3, 1, 2]]);
        assert_eq!(r.starts, Starts::Each(3));
        let r = rotation(3, &[], Policy::RoundRobin, Some(1), 0);
        let answers: Vec<_> = (0..3).map(|i| r.answer(&[1, 2, 3], i)).collect();
        assert_eq!(answers, vec![vec![1], vec![2], vec![3]]);
    }

    #[test]
    fn on_duty_changes_with_the_round() {
        assert_eq!(rotation(3, &[], Policy::OnDuty, None, 4).answer(&[1, 2, 3], 0), vec![2]);
        assert_eq!(rotation(3, &[], Policy::OnDuty, Some(2), 2).answer(&[1, 2, 3], 0), vec![3, 1]);
    }

    #[test]
    fn empty_set_gives_one_empty_answer() {
        let r = rotation(0, &[], Policy::RoundRobin, None, 0);
        assert_eq!((r.len, r.starts.cycle()), (0, 1));
    }

    #[test]
    fn smooth_weighted_spreads_picks() {
        assert_eq!(smooth_weighted(&[5, 1, 1], 3), vec![0, 0, 0, 1, 2, 0, 0]);
        assert_eq!(smooth_weighted(&[2, 2, 1], 3), vec![0, 1, 2, 0, 1]);
        assert_eq!(smooth_weighted(&[0, 0], 2), vec![0, 1]);
        assert_eq!(smooth_weighted(&[0, 3], 2), vec![1]);
    }

    #[test]
    fn latency_weights_favour_the_fast() {
        assert_eq!(latency_weights(&[Some(1000), Some(2000), None, Some(100_000)]), vec![100, 50, 100, 5]);
    }

    /// Replays `n` answers the way a worker cycles through a rotation; counts first addresses.
    fn shares(rotation: &Rotation, k: usize, n: usize) -> Vec<f64> {
        let mut counts = vec![0usize; k];
        for i in 0..n {
            counts[rotation.starts.at(i % rotation.starts.cycle())] += 1;
        }
        counts.iter().map(|&c| c as f64 / n as f64).collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

        /// Over 100,000 round-robin answers every healthy server is first within 1 % of an equal share.
        #[test]
        fn round_robin_is_fair(k in 1usize..50) {
            let rotation = rotation(k, &[], Policy::RoundRobin, None, 0);
            for share in shares(&rotation, k, 100_000) {
                prop_assert!((share - 1.0 / k as f64).abs() <= 0.01 / k as f64 + 1e-5, "share {share} of {k}");
            }
        }

        /// Weighted shares are within 2 % of their weights.
        #[test]
        fn weighted_follows_weights(weights in proptest::collection::vec(1u32..200, 1..20)) {
            let k = weights.len();
            let rotation = rotation(k, &weights, Policy::Weighted, None, 0);
            let total: u32 = weights.iter().sum();
            for (i, share) in shares(&rotation, k, 100_000).into_iter().enumerate() {
                let want = f64::from(weights[i]) / f64::from(total);
                prop_assert!((share - want).abs() <= 0.02 * want + 1e-4, "server {i}: share {share}, weight share {want}");
            }
        }
    }
}
