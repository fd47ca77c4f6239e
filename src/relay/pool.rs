//! One worker's upstream pool: which upstream a question goes to, what was learnt of each
//! upstream (failures, whether it keeps letter case), and when each is health-checked. No I/O;
//! the [`super::engine::Engine`] asks and reports, with the time passed in.
//!
//! ```text
//!  name ─► route (longest domain suffix, on label boundaries) ─► group
//!  group ─► choose: members in turn, skipping resting ones (UPSTREAM_FALL failures in a row,
//!           for UPSTREAM_RETRY_AFTER); all resting: the one that failed longest ago
//!  reply ─► answered / kept case          timeout, SERVFAIL, ICMP ─► failed
//!  timeout after replies in another case ─► case_failed: NO_CAPS_AFTER in a row ─► no 0x20
//!  tick ─► check_due: the upstreams whose health check is due
//! ```
//!
//! Upstreams are numbered: the default list first, then each route's in turn. After a reload,
//! upstreams the new configuration dropped while questions to them were in flight stay past the
//! active ones, retired (in no group, never checked), until those questions end.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::config::RelayConfig;

/// Failures in a row that take an upstream out of rotation.
const UPSTREAM_FALL: u32 = 3;
/// How long a failed upstream is skipped before it is tried again.
const UPSTREAM_RETRY_AFTER: Duration = Duration::from_secs(5);
/// Queries that timed out after a reply in another letter case, with no reply in the case sent
/// between them, before an upstream is taken to not preserve case and queried without 0x20.
pub const NO_CAPS_AFTER: u32 = 3;

/// What is known of one upstream.
#[derive(Debug, Clone, Copy)]
struct UpstreamState {
    /// Failures in a row (timeouts, SERVFAIL, ICMP errors).
    failures: u32,
    last_failure: Option<Instant>,
    /// Whether queries to it get random letter case.
    caps: bool,
    /// Whether it ever sent a question back in exactly the random case it got.
    kept_case: bool,
    /// Timeouts after a reply in another case, with no reply in the case sent since.
    case_failures: u32,
    /// When its next health check is due.
    next_check: Instant,
}

impl UpstreamState {
    fn new(now: Instant) -> UpstreamState {
        UpstreamState {
            failures: 0,
            last_failure: None,
            caps: true,
            kept_case: false,
            case_failures: 0,
            next_check: now,
        }
    }
}

/// Where a configuration's questions go: every upstream (the default list first, then each
/// route's), the groups they form, and the route domains as wire names with their group.
struct Routing {
    upstreams: Vec<SocketAddr>,
    groups: Vec<Vec<usize>>,
    routes: Vec<(Box<[u8]>, usize)>,
}

impl Routing {
    fn of(config: &RelayConfig) -> Routing {
        let mut upstreams: Vec<SocketAddr> = config.upstreams.clone();
        let mut groups = vec![(0..upstreams.len()).collect::<Vec<usize>>()];
        let mut routes = Vec::new();
        for (i, r) in config.routes.iter().enumerate() {
            let start = upstreams.len();
            upstreams.extend(&r.upstreams);
            groups.push((start..upstreams.len()).collect());
            routes.push((crate::dns::wire_name(&r.domain).into_boxed_slice(), i + 1));
        }
        Routing { upstreams, groups, routes }
    }
}

/// The health-check query, a plain `NAME A` with RD set (ID and letter case drawn per send).
fn health_query(config: &RelayConfig) -> Option<Box<[u8]>> {
    config.health_check.as_ref().map(|name| {
        let mut q = vec![0, 0, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        q.extend_from_slice(&crate::dns::wire_name(name));
        q.extend_from_slice(&[0, 1, 0, 1]);
        q.into_boxed_slice()
    })
}

/// Whether wire name `name` is `domain` or lies under it (label boundaries respected).
fn under(name: &[u8], domain: &[u8]) -> bool {
    let mut at = 0;
    while at < name.len() {
        if &name[at..] == domain {
            return true;
        }
        let len = name[at] as usize;
        if len == 0 {
            break;
        }
        at += 1 + len;
    }
    false
}

/// The index of the longest route whose domain holds `name` (a lower-case wire name).
fn route_for(routes: &[(Box<[u8]>, usize)], name: &[u8]) -> Option<usize> {
    routes.iter().filter(|(wire, _)| under(name, wire)).max_by_key(|(wire, _)| wire.len()).map(|(_, g)| *g)
}

/// One worker's upstreams, their groups and what was learnt of each.
pub struct UpstreamPool {
    /// Every upstream, the default list first, then each route's; past `active`, retired ones.
    upstreams: Vec<SocketAddr>,
    /// How many of `upstreams` the configuration names.
    active: usize,
    /// Per group (0: default; 1 + route index), the indices into `upstreams`.
    groups: Vec<Vec<usize>>,
    /// Route domains as wire names, with their group.
    routes: Vec<(Box<[u8]>, usize)>,
    /// Per group, where round-robin goes next.
    next: Vec<usize>,
    state: Vec<UpstreamState>,
    /// The health-check query (ID and case drawn per send), if health checks are on.
    health_query: Option<Box<[u8]>>,
    health_check_interval: Duration,
    /// Upstreams just found not to preserve case, for the caller to log once each.
    lost_caps: Vec<SocketAddr>,
}

impl UpstreamPool {
    /// The pool of `config`: every upstream healthy, with 0x20, its first check due `now`.
    pub fn new(config: &RelayConfig, now: Instant) -> UpstreamPool {
        let Routing { upstreams, groups, routes } = Routing::of(config);
        UpstreamPool {
            state: vec![UpstreamState::new(now); upstreams.len()],
            next: vec![0; groups.len()],
            active: upstreams.len(),
            upstreams,
            groups,
            routes,
            health_query: health_query(config),
            health_check_interval: config.health_check_interval,
            lost_caps: Vec::new(),
        }
    }

    /// Takes a reloaded `config`: upstreams that stay keep what was learnt of them, and those in
    /// `in_flight` (addresses questions are still waiting on) stay, retired, if it drops them.
    /// Indices change: find a question's upstream again with [`UpstreamPool::locate`].
    pub fn reconfigure(&mut self, config: &RelayConfig, in_flight: impl Iterator<Item = SocketAddr>, now: Instant) {
        let Routing { mut upstreams, groups, routes } = Routing::of(config);
        let active = upstreams.len();
        for addr in in_flight {
            if !upstreams.contains(&addr) {
                upstreams.push(addr);
            }
        }
        let old = |a: &SocketAddr| self.upstreams.iter().position(|o| o == a);
        self.state = upstreams.iter().map(|a| old(a).map_or(UpstreamState::new(now), |i| self.state[i])).collect();
        self.health_query = health_query(config);
        self.health_check_interval = config.health_check_interval;
        self.next = vec![0; groups.len()];
        self.active = active;
        self.upstreams = upstreams;
        self.groups = groups;
        self.routes = routes;
    }

    /// Upstream `i`'s address.
    pub fn addr(&self, i: usize) -> SocketAddr {
        self.upstreams[i]
    }

    /// The group a question for `name` (a lower-case wire name) goes to: its longest route's, or
    /// the default (0).
    pub fn group_for(&self, name: &[u8]) -> usize {
        route_for(&self.routes, name).unwrap_or(0)
    }

    /// The index of `addr` for a question of `group`: its place in that group if it has one
    /// (one address may serve several groups), else anywhere (retired), else 0.
    pub fn locate(&self, group: usize, addr: SocketAddr) -> usize {
        self.groups
            .get(group)
            .and_then(|g| g.iter().copied().find(|&i| self.upstreams[i] == addr))
            .or_else(|| self.upstreams.iter().position(|&a| a == addr))
            .unwrap_or(0)
    }

    /// Upstreams in `group`.
    pub fn group_len(&self, group: usize) -> usize {
        self.groups.get(group).map_or(0, Vec::len)
    }

    /// The next upstream of `group` to use: healthy ones in turn; when all are resting, the one
    /// that failed longest ago. Never `avoid` unless it is the only one.
    pub fn choose(&mut self, group: usize, now: Instant, avoid: Option<usize>) -> usize {
        let members = &self.groups[group];
        let n = members.len();
        for k in 0..n {
            let pos = (self.next[group] + k) % n;
            let i = members[pos];
            let h = self.state[i];
            let resting = h.failures >= UPSTREAM_FALL
                && h.last_failure.is_some_and(|t| now.saturating_duration_since(t) < UPSTREAM_RETRY_AFTER);
            if !resting && Some(i) != avoid {
                self.next[group] = (pos + 1) % n;
                return i;
            }
        }
        members
            .iter()
            .copied()
            .filter(|&i| Some(i) != avoid || n == 1)
            .min_by_key(|&i| self.state[i].last_failure)
            .unwrap_or(members[0])
    }

    /// Whether questions to upstream `i` get random letter case.
    pub fn caps(&self, i: usize) -> bool {
        self.state[i].caps
    }

    /// Whether upstream `i` ever sent a question back in exactly the random case it got.
    pub fn kept_case(&self, i: usize) -> bool {
        self.state[i].kept_case
    }

    /// Upstream `i` answered a question in the random case it was sent in.
    pub fn keeps_case(&mut self, i: usize) {
        self.state[i].kept_case = true;
        self.state[i].case_failures = 0;
    }

    /// Upstream `i` answered (not SERVFAIL): its failures are forgotten.
    pub fn answered(&mut self, i: usize) {
        self.state[i].failures = 0;
        self.state[i].last_failure = None;
    }

    /// Upstream `i` failed a question (a timeout, SERVFAIL, an ICMP error).
    pub fn failed(&mut self, i: usize, now: Instant) {
        let h = &mut self.state[i];
        h.failures = h.failures.saturating_add(1);
        h.last_failure = Some(now);
    }

    /// A question to upstream `i` timed out after replies in another case and none in ours;
    /// returns whether that made `i` lose 0x20 (then it is also in [`UpstreamPool::take_lost_caps`]).
    pub fn case_failed(&mut self, i: usize) -> bool {
        let h = &mut self.state[i];
        h.case_failures = h.case_failures.saturating_add(1);
        if h.caps && h.case_failures >= NO_CAPS_AFTER {
            h.caps = false;
            self.lost_caps.push(self.upstreams[i]);
            return true;
        }
        false
    }

    /// The upstreams found not to preserve letter case since the last call (each once).
    pub fn take_lost_caps(&mut self) -> Vec<SocketAddr> {
        std::mem::take(&mut self.lost_caps)
    }

    /// The health-check query, if health checks are on.
    pub fn health_query(&self) -> Option<&[u8]> {
        self.health_query.as_deref()
    }

    /// Upstreams the configuration names (retired ones are numbered after them).
    pub fn active(&self) -> usize {
        self.active
    }

    /// If upstream `i`'s health check is due at `now`: its group, and the next check scheduled.
    pub fn check_due(&mut self, i: usize, now: Instant) -> Option<usize> {
        if self.health_query.is_none() || i >= self.active || now < self.state[i].next_check {
            return None;
        }
        self.state[i].next_check = now.checked_add(self.health_check_interval).unwrap_or(now);
        Some(self.groups.iter().position(|g| g.contains(&i)).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::wire_name;

    #[test]
    fn routes_match_whole_labels_and_the_longest_wins() {
        let routes: Vec<(Box<[u8]>, usize)> = vec![
            (wire_name("corp.test").into(), 1),
            (wire_name("eu.corp.test").into(), 2),
            (wire_name("test").into(), 3),
        ];
        assert_eq!(route_for(&routes, &wire_name("www.eu.corp.test")), Some(2));
        assert_eq!(route_for(&routes, &wire_name("corp.test")), Some(1));
        assert_eq!(route_for(&routes, &wire_name("notcorp.test")), Some(3), "label boundaries, not string suffixes");
        assert_eq!(route_for(&routes, &wire_name("example.org")), None);
    }
}
