//! Answer policy: from what the probes say of every server now, who is served and with what
//! weight. A pure rule beside [`crate::select`]'s: no I/O, no clock, its memory (last good)
//! passed along in the value.
//!
//! ```text
//!  per service, per server: ServerNow { up on, drained, overload %, fastest RTT }
//!      ─► AnswerPolicy::decide ─► Serving { up (last-good substituted), latency weights,
//!                                           weights (each lowered by overload) }
//! ```
//!
//! - An overloaded server (RFC 7339 `oc`) keeps (100 - oc) % of its weight, and at least 1:
//!   fewer clients, not none.
//! - `latency` services weigh servers by their probe round-trip time
//!   ([`select::latency_weights`], quantised, so RTT jitter alone does not republish).
//! - `weighted` services scale the configured weight by 100 before lowering it, so a reduction
//!   keeps its precision on small weights (the rotation divides the common factor out again).
//! - A service with no healthy server and `all_down = "last-good"` serves the servers healthy
//!   last, but never one an operator has drained since.

use std::sync::Arc;

use crate::config::{AllDown, Config, Policy, Transport};
use crate::select;
use crate::snapshot::Serving;

/// What the answer policy needs to know of one configured service.
#[derive(Debug, Clone)]
pub struct ServicePolicy {
    /// The service name.
    pub name: Arc<str>,
    /// How its A/AAAA answers pick servers.
    pub policy: Policy,
    /// What it answers when no server is healthy.
    pub all_down: AllDown,
    /// The configured weight of each of its servers, in order.
    pub weights: Vec<u16>,
}

impl ServicePolicy {
    /// Its number of servers.
    pub fn servers(&self) -> usize {
        self.weights.len()
    }
}

/// One server as its probes see it now (over all its transports).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerNow {
    /// The transports it is healthy and not drained on.
    pub up: Vec<Transport>,
    /// Whether an operator drained it (on any transport).
    pub drained: bool,
    /// The largest overload reduction in force, in percent (0: none).
    pub overload: u8,
    /// Its fastest probe round-trip time in microseconds (latency services only).
    pub rtt_us: Option<u64>,
}

/// The answer policy of a configuration, with the servers each service had healthy last.
#[derive(Debug, Clone)]
pub struct AnswerPolicy {
    services: Vec<ServicePolicy>,
    /// Per service, the transports of each server when it last had a healthy one.
    last_good: Vec<Option<Vec<Vec<Transport>>>>,
}

impl AnswerPolicy {
    /// The policy of `config`'s services; nothing healthy yet.
    pub fn new(config: &Config) -> AnswerPolicy {
        let services: Vec<ServicePolicy> = config
            .services
            .iter()
            .map(|s| ServicePolicy {
                name: Arc::from(s.name.as_str()),
                policy: s.policy,
                all_down: s.all_down,
                weights: s.servers.iter().map(|v| v.weight).collect(),
            })
            .collect();
        AnswerPolicy { last_good: vec![None; services.len()], services }
    }

    /// The services, in configuration order.
    pub fn services(&self) -> &[ServicePolicy] {
        &self.services
    }

    /// Whether any service weighs its servers by latency (RTTs then matter to the answers).
    pub fn uses_latency(&self) -> bool {
        self.services.iter().any(|s| s.policy == Policy::Latency)
    }

    /// Whether any service is on duty (the probe round then matters to the answers).
    pub fn uses_rounds(&self) -> bool {
        self.services.iter().any(|s| s.policy == Policy::OnDuty)
    }

    /// Who is served and with what weight, given `now[service][server]`; remembers the healthy
    /// servers of each service for last-good.
    pub fn decide(&mut self, now: &[Vec<ServerNow>]) -> Serving {
        let mut serving = Serving {
            up: Vec::with_capacity(self.services.len()),
            latency_weights: Vec::with_capacity(self.services.len()),
            weights: Vec::with_capacity(self.services.len()),
        };
        for (si, service) in self.services.iter().enumerate() {
            let servers = now.get(si).map_or(&[][..], Vec::as_slice);
            let lowered = |w: u32, server: usize| lower(w, servers.get(server).map_or(0, |s| s.overload));
            serving.latency_weights.push(if service.policy == Policy::Latency {
                let rtts: Vec<Option<u64>> = servers.iter().map(|s| s.rtt_us).collect();
                let w = select::latency_weights(&rtts);
                w.into_iter().enumerate().map(|(server, w)| lowered(w, server)).collect()
            } else {
                Vec::new()
            });
            serving.weights.push(if service.policy == Policy::Weighted {
                let w = service.weights.iter().enumerate();
                w.map(|(server, &w)| lowered(u32::from(w).saturating_mul(100), server)).collect()
            } else {
                Vec::new()
            });
            let mut up: Vec<Vec<Transport>> = servers.iter().map(|s| s.up.clone()).collect();
            if up.iter().any(|t| !t.is_empty()) {
                self.last_good[si] = Some(up.clone());
            } else if service.all_down == AllDown::LastGood {
                if let Some(good) = &self.last_good[si] {
                    up = good.clone();
                    for (server, s) in servers.iter().enumerate() {
                        if s.drained {
                            if let Some(t) = up.get_mut(server) {
                                t.clear();
                            }
                        }
                    }
                }
            }
            serving.up.push(up);
        }
        serving
    }
}

/// `weight` lowered by an overload reduction of `percent`: (100 - percent) % of it, and at
/// least 1 unless it was 0.
fn lower(weight: u32, percent: u8) -> u32 {
    let keep = 100 - u32::from(percent.min(100));
    if weight == 0 {
        0
    } else {
        (weight.saturating_mul(keep) / 100).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(policy: &str, all_down: &str, weights: &[u16]) -> AnswerPolicy {
        let mut text = format!(
            "[server]\nlisten = [\"127.0.0.1:5353\"]\n[[service]]\nname = \"sip.example.test\"\npolicy = \"{policy}\"\nall_down = \"{all_down}\"\n"
        );
        for (i, w) in weights.iter().enumerate() {
            text.push_str(&format!("[[service.server]]\naddress = \"192.0.2.{}\"\nweight = {w}\n", i + 1));
        }
        AnswerPolicy::new(&Config::parse(&text).unwrap())
    }

    fn up() -> ServerNow {
        ServerNow { up: vec![Transport::Udp], ..ServerNow::default() }
    }

    #[test]
    fn overload_lowers_a_share_but_never_to_nothing() {
        assert_eq!(lower(100, 50), 50);
        assert_eq!(lower(100, 100), 1, "the least share, not none");
        assert_eq!(lower(3, 90), 1);
        assert_eq!(lower(0, 10), 0, "a zero weight stays zero");
        assert_eq!(lower(7, 0), 7);
        assert_eq!(lower(100, 250), 1, "a percentage past 100 counts as 100");
    }

    #[test]
    fn weighted_services_scale_then_lower() {
        let mut p = policy("weighted", "serve-all", &[3, 1]);
        let s = p.decide(&[vec![ServerNow { overload: 50, ..up() }, up()]]);
        assert_eq!(s.weights, vec![vec![150, 100]], "3 at half, 1 whole, kept exact by the scale");
        assert_eq!(s.latency_weights, vec![Vec::<u32>::new()]);
        assert_eq!(s.up[0], vec![vec![Transport::Udp], vec![Transport::Udp]]);
    }

    #[test]
    fn latency_services_weigh_by_rtt_and_overload() {
        let mut p = policy("latency", "serve-all", &[1, 1]);
        let fast = ServerNow { rtt_us: Some(1000), ..up() };
        let slow = ServerNow { rtt_us: Some(2000), overload: 50, ..up() };
        let s = p.decide(&[vec![fast, slow]]);
        assert_eq!(s.latency_weights, vec![vec![100, 25]]);
        assert!(s.weights[0].is_empty(), "not a weighted service");
    }

    #[test]
    fn last_good_serves_the_last_healthy_set_but_not_a_drained_server() {
        let mut p = policy("round-robin", "last-good", &[1, 1, 1]);
        let first = p.decide(&[vec![up(), up(), ServerNow::default()]]);
        assert_eq!(first.up[0], vec![vec![Transport::Udp], vec![Transport::Udp], vec![]]);
        let all_down = p.decide(&[vec![ServerNow::default(), ServerNow::default(), ServerNow::default()]]);
        assert_eq!(all_down.up, first.up, "the last healthy set");
        let drained = ServerNow { drained: true, ..ServerNow::default() };
        let s = p.decide(&[vec![drained, ServerNow::default(), ServerNow::default()]]);
        assert_eq!(s.up[0], vec![vec![], vec![Transport::Udp], vec![]], "the drained one stays out");
    }

    #[test]
    fn other_all_down_policies_serve_nobody_from_memory() {
        let mut p = policy("round-robin", "serve-all", &[1]);
        p.decide(&[vec![up()]]);
        let s = p.decide(&[vec![ServerNow::default()]]);
        assert_eq!(s.up[0], vec![Vec::<Transport>::new()], "the snapshot applies serve-all itself");
    }
}
