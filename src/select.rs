//! Selection policies: which addresses one A/AAAA answer carries. Pure functions, no I/O.
//!
//! A policy turns the healthy set into the list of answers a worker cycles through; the snapshot
//! encodes each one once. Round-robin yields one answer per rotation position, so consecutive
//! queries see every server first in turn; on-duty yields a single answer per probe round.

use crate::config::Policy;

/// The answers a worker cycles through, each a list of addresses in answer order.
pub fn rotations<T: Copy>(healthy: &[T], policy: Policy, answers: Option<usize>, round: u64) -> Vec<Vec<T>> {
    let k = healthy.len();
    if k == 0 {
        return vec![Vec::new()];
    }
    let pick = |start: usize, n: usize| (0..n).map(|j| healthy[(start + j) % k]).collect::<Vec<T>>();
    match policy {
        Policy::RoundRobin => {
            let n = answers.unwrap_or(k).min(k);
            (0..k).map(|i| pick(i, n)).collect()
        }
        Policy::OnDuty => {
            let n = answers.unwrap_or(1).min(k);
            vec![pick((round % k as u64) as usize, n)]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_puts_every_server_first_once() {
        let r = rotations(&[1, 2, 3], Policy::RoundRobin, None, 0);
        assert_eq!(r, vec![vec![1, 2, 3], vec![2, 3, 1], vec![3, 1, 2]]);
        let r = rotations(&[1, 2, 3], Policy::RoundRobin, Some(1), 0);
        assert_eq!(r, vec![vec![1], vec![2], vec![3]]);
    }

    #[test]
    fn on_duty_changes_with_the_round() {
        assert_eq!(rotations(&[1, 2, 3], Policy::OnDuty, None, 4), vec![vec![2]]);
        assert_eq!(rotations(&[1, 2, 3], Policy::OnDuty, Some(2), 2), vec![vec![3, 1]]);
    }

    #[test]
    fn empty_set_gives_one_empty_answer() {
        assert_eq!(rotations::<u8>(&[], Policy::RoundRobin, None, 0), vec![Vec::<u8>::new()]);
    }
}
