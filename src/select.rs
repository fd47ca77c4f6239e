//! Selection policies: which addresses one A/AAAA answer carries. Pure functions, no I/O.
//!
//! A policy turns the healthy set into the list of answers a worker cycles through; the snapshot
//! encodes each one once. Round-robin yields one answer per rotation position, so consecutive
//! queries see every server first in turn; weighted and latency yield a smooth weighted
//! round-robin sequence, so each server comes first in proportion to its weight; on-duty yields a
//! single answer per probe round.

use crate::config::Policy;

/// The longest cycle one rotation may have; weights are scaled down to fit.
pub const MAX_ROTATION: usize = 65_536;

/// What a worker cycles through: distinct answers (each a list of addresses in answer order) and
/// the order in which to give them (indices into `answers`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation<T> {
    /// The distinct answers; each is encoded once.
    pub answers: Vec<Vec<T>>,
    /// The cycle of answer indices.
    pub order: Vec<usize>,
}

/// The rotation for `healthy` under `policy`. `weights` is parallel to `healthy` (read by the
/// weighted and latency policies only).
pub fn rotations<T: Copy>(
    healthy: &[T],
    weights: &[u32],
    policy: Policy,
    answers: Option<usize>,
    round: u64,
) -> Rotation<T> {
    let k = healthy.len();
    if k == 0 {
        return Rotation { answers: vec![Vec::new()], order: vec![0] };
    }
    let pick = |start: usize, n: usize| (0..n).map(|j| healthy[(start + j) % k]).collect::<Vec<T>>();
    match policy {
        Policy::RoundRobin => {
            let n = answers.unwrap_or(k).min(k);
            Rotation { answers: (0..k).map(|i| pick(i, n)).collect(), order: (0..k).collect() }
        }
        Policy::OnDuty => {
            let n = answers.unwrap_or(1).min(k);
            Rotation { answers: vec![pick((round % k as u64) as usize, n)], order: vec![0] }
        }
        Policy::Weighted | Policy::Latency => {
            let n = answers.unwrap_or(k).min(k);
            Rotation { answers: (0..k).map(|i| pick(i, n)).collect(), order: smooth_weighted(weights, k) }
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

/// The order in which smooth weighted round robin (nginx's) picks among `k` servers: each server
/// appears in proportion to its weight, spread out rather than in runs.
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
    let mut current = vec![0i64; k];
    let mut order = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for i in 0..k {
            current[i] += w[i] as i64;
        }
        let best = (0..k).max_by_key(|&i| (current[i], std::cmp::Reverse(i))).unwrap_or(0);
        current[best] -= total as i64;
        order.push(best);
    }
    order
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
        let r = rotations(&[1, 2, 3], &[], Policy::RoundRobin, None, 0);
        assert_eq!(r.answers, vec![vec![1, 2, 3], vec![2, 3, 1], vec![3, 1, 2]]);
        assert_eq!(r.order, vec![0, 1, 2]);
        let r = rotations(&[1, 2, 3], &[], Policy::RoundRobin, Some(1), 0);
        assert_eq!(r.answers, vec![vec![1], vec![2], vec![3]]);
    }

    #[test]
    fn on_duty_changes_with_the_round() {
        assert_eq!(rotations(&[1, 2, 3], &[], Policy::OnDuty, None, 4).answers, vec![vec![2]]);
        assert_eq!(rotations(&[1, 2, 3], &[], Policy::OnDuty, Some(2), 2).answers, vec![vec![3, 1]]);
    }

    #[test]
    fn empty_set_gives_one_empty_answer() {
        assert_eq!(rotations::<u8>(&[], &[], Policy::RoundRobin, None, 0).answers, vec![Vec::<u8>::new()]);
    }

    #[test]
    fn smooth_weighted_spreads_picks() {
        assert_eq!(smooth_weighted(&[5, 1, 1], 3), vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_weighted(&[0, 0], 2), vec![0, 1]);
        assert_eq!(smooth_weighted(&[0, 3], 2), vec![1]);
    }

    #[test]
    fn latency_weights_favour_the_fast() {
        assert_eq!(latency_weights(&[Some(1000), Some(2000), None, Some(100_000)]), vec![100, 50, 100, 5]);
    }

    /// Replays `n` answers the way a worker cycles through a rotation; counts first addresses.
    fn shares(rotation: &Rotation<usize>, k: usize, n: usize) -> Vec<f64> {
        let mut counts = vec![0usize; k];
        for i in 0..n {
            counts[rotation.answers[rotation.order[i % rotation.order.len()]][0]] += 1;
        }
        counts.iter().map(|&c| c as f64 / n as f64).collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

        /// Over 100,000 round-robin answers every healthy server is first within 1 % of an equal share.
        #[test]
        fn round_robin_is_fair(k in 1usize..50) {
            let servers: Vec<usize> = (0..k).collect();
            let rotation = rotations(&servers, &[], Policy::RoundRobin, None, 0);
            for share in shares(&rotation, k, 100_000) {
                prop_assert!((share - 1.0 / k as f64).abs() <= 0.01 / k as f64 + 1e-5, "share {share} of {k}");
            }
        }

        /// Weighted shares are within 2 % of their weights.
        #[test]
        fn weighted_follows_weights(weights in proptest::collection::vec(1u32..200, 1..20)) {
            let k = weights.len();
            let servers: Vec<usize> = (0..k).collect();
            let rotation = rotations(&servers, &weights, Policy::Weighted, None, 0);
            let total: u32 = weights.iter().sum();
            for (i, share) in shares(&rotation, k, 100_000).into_iter().enumerate() {
                let want = f64::from(weights[i]) / f64::from(total);
                prop_assert!((share - want).abs() <= 0.02 * want + 1e-4, "server {i}: share {share}, weight share {want}");
            }
        }
    }
}
