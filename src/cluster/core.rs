//! The fleet's decisions, without I/O and without a clock: who probes which server (rendezvous
//! hashing), how the verdicts of a server's probers combine into the health this instance
//! answers with, when an instance cut off from etcd stops trusting the others, and the hash that
//! tells two configurations of one farm apart. Time is passed in, as in [`crate::probe::core`].
//!
//! ```text
//!  members (live, same config hash) ─► duty(server) = top k by score(server, member)
//!  duty ─► DutyPlan::update(now) ─► probe now? · first probe when (new: at once; detached: spread)
//!                                   └─ a server that left this instance's duty: one more interval
//!  verdicts of the server's current probers (local + remote, fresh) ─► combine ─► up · down · none
//!  etcd ok / error ─► Link ─► attached · detached (remote kept ≤ one lease TTL) · probe everything
//! ```
//!
//! The hash is specified so that every instance, whatever its build, computes the same duty:
//! FNV-1a (64 bit, offset basis 0xcbf29ce484222325, prime 0x100000001b3) over the bytes of the
//! first string, one 0xff byte (never part of UTF-8), the bytes of the second string, then the
//! finaliser of SplitMix64 (`x ^= x >> 30; x *= 0xbf58476d1ce4e5b9; x ^= x >> 27;
//! x *= 0x94d049bb133111eb; x ^= x >> 31`), which spreads FNV's weak high bits. A server's probers
//! are the k members with the highest `score(server key, member name)`, ties (which need a 64-bit
//! collision) broken by the name, lower first.

use std::time::{Duration, Instant};

use crate::config::{Config, Transport};

/// FNV-1a 64's offset basis.
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
/// FNV-1a 64's prime.
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a over `parts`, one 0xff byte between two parts.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h = FNV_OFFSET;
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            h ^= 0xff;
            h = h.wrapping_mul(FNV_PRIME);
        }
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(FNV_PRIME);
        }
    }
    h
}

/// SplitMix64's finaliser: every input bit reaches every output bit.
fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The rendezvous score of `member` for the server `server` (see the module doc).
pub fn score(server: &str, member: &str) -> u64 {
    mix(fnv1a(&[server.as_bytes(), member.as_bytes()]))
}

/// The members that probe `server`: the `k` of `members` with the highest score, best first.
/// `k >= members.len()` gives every member.
pub fn probers<'m>(server: &str, members: &[&'m str], k: usize) -> Vec<&'m str> {
    let mut scored: Vec<(u64, &'m str)> = members.iter().map(|m| (score(server, m), *m)).collect();
    scored.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    scored.truncate(k);
    scored.into_iter().map(|(_, m)| m).collect()
}

/// Every server's probers: for each of `servers` (keys, as [`server_key`] makes them), the
/// indices into `members` of its `k` probers. Rendezvous hashing with bounded load: each member
/// may hold `floor(servers × k / members)` duties, and the `servers × k mod members` members of
/// highest `score("", name)` one more; servers are taken in the order of their keys, and each
/// gets the members of highest score that still have room (first those whose room equals the
/// servers left, which must take them all). So each member holds exactly its cap, within one
/// server of fair, while a membership change still moves few servers. Every instance computes the same answer from the same
/// members.
pub fn assign(servers: &[&str], members: &[&str], k: usize) -> Vec<Vec<usize>> {
    let m = members.len();
    let k = k.min(m);
    let mut out = vec![Vec::new(); servers.len()];
    if m == 0 || k == 0 {
        return out;
    }
    let total = servers.len() * k;
    let mut by_extra: Vec<(u64, usize)> = members.iter().enumerate().map(|(i, name)| (score("", name), i)).collect();
    by_extra.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(members[a.1].cmp(members[b.1])));
    let mut cap = vec![total / m; m];
    for &(_, i) in by_extra.iter().take(total % m) {
        cap[i] += 1;
    }
    let mut load = vec![0usize; m];
    let mut order: Vec<usize> = (0..servers.len()).collect();
    order.sort_by(|a, b| servers[*a].cmp(servers[*b]));
    let mut ranked: Vec<(u64, usize)> = Vec::with_capacity(m);
    for (done, s) in order.into_iter().enumerate() {
        let left = servers.len() - done;
        ranked.clear();
        ranked.extend(members.iter().enumerate().map(|(i, name)| (score(servers[s], name), i)));
        ranked.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(members[a.1].cmp(members[b.1])));
        let chosen = &mut out[s];
        // A member with as much room as servers are left must take every one of them (else its
        // share would fall short); at most k are, as the rooms add up to k per server left.
        for &(_, i) in &ranked {
            if chosen.len() < k && cap[i] - load[i] >= left {
                chosen.push(i);
            }
        }
        for &(_, i) in &ranked {
            if chosen.len() < k && load[i] < cap[i] && !chosen.contains(&i) {
                chosen.push(i);
            }
        }
        for &i in chosen.iter() {
            load[i] += 1;
        }
    }
    out
}

/// The identity of one server of the farm in etcd keys: `SERVICE/ADDRESS:PORT` (the port of UDP
/// and TCP), the same on every instance whatever the order of the configuration.
pub fn server_key(service: &str, addr: std::net::SocketAddr) -> String {
    format!("{service}/{addr}")
}

/// The hash of what decides probing and health in `config` and `k`: the services' names, their
/// servers (address, ports, transports, the name TLS checks, the probe method; site, weight and
/// priority are left out: they steer answers, not health), the probe settings and k. Two
/// instances with different hashes probe differently, so they do not share duty. Hex, 16 digits.
pub fn config_hash(config: &Config, k: usize) -> String {
    let p = &config.probe;
    let mut text = format!(
        "v1 k={k} enabled={} interval={} timeout={} retransmit={} method={:?} rise={} fall={} down={:?} start={:?} retry_after={} copies={}\n",
        p.enabled,
        p.interval.as_millis(),
        p.timeout.as_millis(),
        p.retransmit.as_millis(),
        p.method,
        p.rise,
        p.fall,
        p.down_codes,
        p.start,
        p.max_retry_after.as_secs(),
        p.loss_copies,
    );
    let mut services: Vec<&crate::config::ServiceConfig> = config.services.iter().collect();
    services.sort_by(|a, b| a.name.cmp(&b.name));
    for s in services {
        let tls = match &s.tls_verify {
            crate::config::TlsVerify::System => "system".to_string(),
            crate::config::TlsVerify::Off => "off".to_string(),
            crate::config::TlsVerify::CaFile { certificates, .. } => {
                let der: Vec<&[u8]> = certificates.iter().map(|c| c.as_slice()).collect();
                format!("ca:{:016x}", fnv1a(&der))
            }
        };
        text.push_str(&format!("service {} tls={tls}\n", s.name));
        let mut servers: Vec<String> = s
            .servers
            .iter()
            .map(|v| {
                let transports: Vec<&str> = v.transports.iter().map(|t| transport_name(*t)).collect();
                format!(
                    "  {} port={} tls_port={} {} tls_name={} method={:?}",
                    v.address,
                    v.port,
                    v.tls_port,
                    transports.join(","),
                    v.tls_name,
                    v.probe_method
                )
            })
            .collect();
        servers.sort();
        for line in servers {
            text.push_str(&line);
            text.push('\n');
        }
    }
    format!("{:016x}", mix(fnv1a(&[text.as_bytes()])))
}

/// A transport's name in keys and values.
pub fn transport_name(t: Transport) -> &'static str {
    match t {
        Transport::Udp => "udp",
        Transport::Tcp => "tcp",
        Transport::Tls => "tls",
    }
}

/// A transport from its name in a value.
pub fn transport_from(name: &str) -> Option<Transport> {
    match name {
        "udp" => Some(Transport::Udp),
        "tcp" => Some(Transport::Tcp),
        "tls" => Some(Transport::Tls),
        _ => None,
    }
}

/// The health one prober sees for one server on one transport, with what travels beside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// Alive (any final reply but a down code).
    pub up: bool,
    /// Smoothed round-trip time, microseconds (0: none yet), for the `latency` policy.
    pub rtt_us: u32,
    /// RFC 7339 overload reduction in force, percent (0: none).
    pub oc: u8,
}

/// How a server's health came out of its probers' verdicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Combined {
    /// At least one fresh verdict says up: the server stays in.
    Up,
    /// Every fresh verdict (at least one) says down.
    Down,
    /// No current prober has a fresh verdict (a new prober's first probe is under way): keep
    /// what the answers had.
    Unknown,
}

/// The combining rule: a server is out only when every fresh verdict of its current probers says
/// down; one prober that still reaches it keeps it in (a broken path of one instance must not
/// remove a healthy server everywhere). With k = 1 the one verdict decides.
pub fn combine<I: IntoIterator<Item = bool>>(fresh: I) -> Combined {
    let mut any = false;
    for up in fresh {
        if up {
            return Combined::Up;
        }
        any = true;
    }
    if any {
        Combined::Down
    } else {
        Combined::Unknown
    }
}

/// Which servers this instance probes, with the overlap that keeps a server probed while its
/// duty moves: a server that joins this instance's duty is probed at once; one that leaves it is
/// probed for one more interval, so the new prober's first verdict is written before the old one
/// stops. Indexed like the farm's server list.
#[derive(Debug, Clone)]
pub struct DutyPlan {
    interval: Duration,
    /// Per server: in this instance's duty now.
    duty: Vec<bool>,
    /// Per server: still probed until then although it left the duty.
    leaving: Vec<Option<Instant>>,
    /// Whether every server is probed (detached past the lease TTL, or no fleet yet).
    all: bool,
}

/// What [`DutyPlan::update`] asks of the prober for one server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DutyChange {
    /// Start probing: the first probe at this time.
    Start(Instant),
    /// Stop probing.
    Stop,
}

impl DutyPlan {
    /// A plan for `servers` servers in which this instance probes every one (a fresh instance
    /// probes everything until it has read the fleet).
    pub fn new(servers: usize, interval: Duration) -> DutyPlan {
        DutyPlan { interval, duty: vec![true; servers], leaving: vec![None; servers], all: true }
    }

    /// Whether server `i` is probed now.
    pub fn probing(&self, i: usize, now: Instant) -> bool {
        self.all
            || self.duty.get(i).copied().unwrap_or(false)
            || self.leaving.get(i).copied().flatten().is_some_and(|t| now < t)
    }

    /// Whether server `i` is in this instance's duty (a current prober), not only in overlap.
    pub fn is_duty(&self, i: usize) -> bool {
        self.all || self.duty.get(i).copied().unwrap_or(false)
    }

    /// How many servers this instance is a current prober of.
    pub fn duty_count(&self) -> usize {
        if self.all {
            self.duty.len()
        } else {
            self.duty.iter().filter(|d| **d).count()
        }
    }

    /// Moves to the shared duty `duty` (`None`: probe every server). Returns what changes for
    /// which server: joined servers start at once when attached; when `spread` (probing
    /// everything after a detach) the newly probed servers' first probes are spread evenly over
    /// one interval, so the farm sees no burst.
    pub fn update(&mut self, duty: Option<&[bool]>, now: Instant, spread: bool) -> Vec<(usize, DutyChange)> {
        let n = self.duty.len();
        let was: Vec<bool> = (0..n).map(|i| self.probing(i, now)).collect();
        match duty {
            None => {
                self.all = true;
            }
            Some(d) => {
                let leaving_at = now.checked_add(self.interval).unwrap_or(now);
                for i in 0..n {
                    let new = d.get(i).copied().unwrap_or(false);
                    let old = self.all || self.duty[i];
                    if old && !new {
                        self.leaving[i] = Some(leaving_at);
                    } else if new {
                        self.leaving[i] = None;
                    }
                    self.duty[i] = new;
                }
                self.all = false;
            }
        }
        let starting: Vec<usize> = (0..n).filter(|&i| !was[i] && self.probing(i, now)).collect();
        let count = starting.len().max(1) as u32;
        let mut out = Vec::new();
        for (j, i) in starting.into_iter().enumerate() {
            let at = if spread { now + self.interval / count * j as u32 } else { now };
            out.push((i, DutyChange::Start(at)));
        }
        out
    }

    /// Servers whose overlap has run out by `now`: stop probing them (returned once each).
    pub fn expire(&mut self, now: Instant) -> Vec<(usize, DutyChange)> {
        let mut out = Vec::new();
        for i in 0..self.duty.len() {
            if self.leaving[i].is_some_and(|t| now >= t) {
                self.leaving[i] = None;
                if !self.all && !self.duty[i] {
                    out.push((i, DutyChange::Stop));
                }
            }
        }
        out
    }

    /// The next time [`DutyPlan::expire`] has something to do.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.leaving.iter().flatten().min().copied()
    }
}

/// This instance's link to etcd, as the answers see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// Not yet read the fleet once: the start-up hold applies; every server is probed.
    Starting,
    /// Lease alive, prefix watched: shared duty, remote verdicts trusted.
    Attached,
    /// etcd unreachable or without quorum; remote verdicts are still used until one lease TTL
    /// after the last contact.
    Detached,
    /// Detached for longer than one lease TTL: remote verdicts dropped, every server probed.
    Alone,
}

impl LinkState {
    /// The name status and logs use.
    pub fn name(self) -> &'static str {
        match self {
            LinkState::Starting => "starting",
            LinkState::Attached => "attached",
            LinkState::Detached => "detached",
            LinkState::Alone => "detached, probing every server",
        }
    }
}

/// The attached/detached state machine, on injected time. The etcd thread reports every
/// success (a keep-alive answered, a watch message, a read) and every failure; the machine says
/// what the prober may trust.
#[derive(Debug, Clone)]
pub struct Link {
    ttl: Duration,
    state: LinkState,
    since: Instant,
    last_ok: Option<Instant>,
    transitions: u64,
}

impl Link {
    /// A link that has not reached etcd yet; `ttl` is the lease TTL etcd granted.
    pub fn new(ttl: Duration, now: Instant) -> Link {
        Link { ttl, state: LinkState::Starting, since: now, last_ok: None, transitions: 0 }
    }

    /// The TTL in force (etcd may grant more than asked).
    pub fn set_ttl(&mut self, ttl: Duration) {
        self.ttl = ttl;
    }

    /// The state and since when.
    pub fn state(&self) -> (LinkState, Instant) {
        (self.state, self.since)
    }

    /// State changes so far (each logged and counted).
    pub fn transitions(&self) -> u64 {
        self.transitions
    }

    fn go(&mut self, to: LinkState, now: Instant) -> Option<LinkState> {
        if self.state == to {
            return None;
        }
        self.state = to;
        self.since = now;
        self.transitions += 1;
        Some(to)
    }

    /// etcd answered with a whole, current view (lease alive, prefix read or watched): attached.
    /// Returns the new state if it changed.
    pub fn ok(&mut self, now: Instant) -> Option<LinkState> {
        self.last_ok = Some(now);
        self.go(LinkState::Attached, now)
    }

    /// A keep-alive or watch answered, but the view is not whole again yet: counts as contact
    /// without reattaching.
    pub fn contact(&mut self, now: Instant) {
        if self.state == LinkState::Attached {
            self.last_ok = Some(now);
        }
    }

    /// etcd failed (unreachable, no leader, lease lost). Returns the new state if it changed.
    pub fn failed(&mut self, now: Instant) -> Option<LinkState> {
        match self.state {
            LinkState::Attached => self.go(LinkState::Detached, now),
            _ => self.tick(now),
        }
    }

    /// Time passing: a detached link turns alone one TTL after its last contact. Returns the
    /// new state if it changed.
    pub fn tick(&mut self, now: Instant) -> Option<LinkState> {
        match self.state {
            // No contact for a whole TTL while attached: the lease is gone; straight to alone.
            LinkState::Attached if self.remote_expired(now) => {
                self.go(LinkState::Detached, now);
                self.go(LinkState::Alone, now)
            }
            LinkState::Detached if self.remote_expired(now) => self.go(LinkState::Alone, now),
            _ => None,
        }
    }

    fn remote_expired(&self, now: Instant) -> bool {
        self.last_ok.is_none_or(|t| now.saturating_duration_since(t) >= self.ttl)
    }

    /// When [`Link::tick`] next has something to do.
    pub fn next_tick(&self) -> Option<Instant> {
        match self.state {
            LinkState::Attached | LinkState::Detached => self.last_ok.and_then(|t| t.checked_add(self.ttl)),
            _ => None,
        }
    }

    /// Whether the others' verdicts may be used now.
    pub fn trust_remote(&self) -> bool {
        matches!(self.state, LinkState::Attached | LinkState::Detached)
    }

    /// Whether this instance shares duty (otherwise it probes every server).
    pub fn shared(&self) -> bool {
        self.state == LinkState::Attached
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_the_specified_one() {
        // FNV-1a 64 of the empty string is its offset basis; of "a" a published test vector.
        assert_eq!(fnv1a(&[b""]), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(&[b"a"]), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(&[b"foobar"]), 0x8594_4171_f739_67e8);
        // The separator keeps ("ab", "c") apart from ("a", "bc").
        assert_ne!(score("ab", "c"), score("a", "bc"));
        // Pinned values: a change here changes every fleet's duty; never change them.
        assert_eq!(
            score("sip.example.test/127.0.0.11:5060", "edge-1"),
            score("sip.example.test/127.0.0.11:5060", "edge-1")
        );
        assert_eq!(
            format!("{:016x}", score("s/1.2.3.4:5060", "a")),
            format!("{:016x}", mix(fnv1a(&[b"s/1.2.3.4:5060", b"a"])))
        );
        assert_eq!(mix(0), 0);
        assert_eq!(mix(1), 0x5692_161d_100b_05e5);
    }

    #[test]
    fn k_probers_per_server_and_each_share_within_one_of_fair() {
        let names = ["edge-1", "edge-2", "edge-3", "edge-4", "edge-5"];
        for n in [1usize, 7, 30, 100] {
            let keys: Vec<String> = (0..n)
                .map(|s| {
                    server_key("sip.example.test", format!("127.0.4.{}:5060", s % 250).parse().unwrap())
                        + &s.to_string()
                })
                .collect();
            let servers: Vec<&str> = keys.iter().map(|s| s.as_str()).collect();
            for m in 1..=5 {
                for k in 1..=3 {
                    let a = assign(&servers, &names[..m], k);
                    let mut load = vec![0usize; m];
                    for probers in &a {
                        assert_eq!(probers.len(), k.min(m));
                        let mut sorted = probers.clone();
                        sorted.dedup();
                        assert_eq!(sorted.len(), probers.len(), "a member twice");
                        for p in probers {
                            load[*p] += 1;
                        }
                    }
                    let fair = (n * k.min(m)) as f64 / m as f64;
                    for l in &load {
                        assert!((*l as f64 - fair).abs() <= 1.0 + 1e-9, "n={n} m={m} k={k}: {load:?}");
                    }
                }
            }
        }
        // k at or above the members: everyone probes everything.
        assert_eq!(probers("x", &names[..3], 5).len(), 3);
    }

    #[test]
    fn a_member_leaving_moves_few_servers() {
        let keys: Vec<String> = (0..30).map(|s| format!("svc/10.0.0.{s}:5060")).collect();
        let servers: Vec<&str> = keys.iter().map(|s| s.as_str()).collect();
        let before = assign(&servers, &["a", "b", "c"], 2);
        let after = assign(&servers, &["a", "b"], 2);
        assert!(after.iter().all(|p| p.len() == 2));
        // With two members and k = 2 both probe everything; from four to three members, most of
        // the servers that did not have the leaver keep their probers.
        let four = assign(&servers, &["a", "b", "c", "d"], 1);
        let three = assign(&servers, &["a", "b", "d"], 1);
        let kept = (0..30)
            .filter(|&s| four[s][0] != 2 && ["a", "b", "c", "d"][four[s][0]] == ["a", "b", "d"][three[s][0]])
            .count();
        let without_c = (0..30).filter(|&s| four[s][0] != 2).count();
        assert!(kept * 10 >= without_c * 7, "{kept} of {without_c} kept their prober");
        assert_eq!(before.len(), 30);
    }

    #[test]
    fn plain_rendezvous_moves_only_the_leavers_servers() {
        let all = ["a", "b", "c", "d"];
        let rest = ["a", "b", "d"];
        for s in 0..200 {
            let key = format!("svc/10.0.0.{s}:5060");
            let before = probers(&key, &all, 2);
            let after = probers(&key, &rest, 2);
            if !before.contains(&"c") {
                assert_eq!(before, after, "server {key} moved although its probers stayed");
            } else {
                // The remaining prober keeps its duty; one new one joins.
                let kept: Vec<_> = before.iter().filter(|m| **m != "c").collect();
                assert!(kept.iter().all(|m| after.contains(m)));
            }
        }
    }

    #[test]
    fn combining_keeps_a_server_any_prober_reaches() {
        assert_eq!(combine([true, false]), Combined::Up);
        assert_eq!(combine([false, false]), Combined::Down);
        assert_eq!(combine([false]), Combined::Down);
        assert_eq!(combine([true]), Combined::Up);
        assert_eq!(combine(std::iter::empty()), Combined::Unknown);
    }

    #[test]
    fn config_hash_ignores_order_and_steering_but_not_probing() {
        let base = "[server]\nlisten = [\"127.0.0.1:5353\"]\n[probe]\ninterval_ms = 1000\n[[service]]\nname = \"s.test\"\n[[service.server]]\naddress = \"127.0.0.11\"\nweight = 1\n[[service.server]]\naddress = \"127.0.0.12\"\n";
        let c = Config::parse(base).unwrap();
        let h = config_hash(&c, 2);
        assert_eq!(h.len(), 16);
        let swapped = base.replace("127.0.0.11", "X").replace("127.0.0.12", "127.0.0.11").replace("X", "127.0.0.12");
        assert_eq!(config_hash(&Config::parse(&swapped).unwrap(), 2), h);
        let reweighted = base.replace("weight = 1", "weight = 7").replace("5353", "5354");
        assert_eq!(config_hash(&Config::parse(&reweighted).unwrap(), 2), h);
        let slower = base.replace("interval_ms = 1000", "interval_ms = 2000");
        assert_ne!(config_hash(&Config::parse(&slower).unwrap(), 2), h);
        assert_ne!(config_hash(&c, 3), h);
    }

    #[test]
    fn duty_moves_with_one_interval_of_overlap() {
        let t0 = Instant::now();
        let iv = Duration::from_millis(1000);
        let mut plan = DutyPlan::new(4, iv);
        assert!((0..4).all(|i| plan.probing(i, t0)));
        // First fleet view: servers 0 and 2 are ours. The others keep being probed one interval.
        let changes = plan.update(Some(&[true, false, true, false]), t0, false);
        assert!(changes.is_empty());
        assert!(plan.probing(1, t0 + iv / 2));
        assert_eq!(plan.duty_count(), 2);
        assert_eq!(plan.expire(t0 + iv / 2), vec![]);
        assert_eq!(plan.next_expiry(), Some(t0 + iv));
        assert_eq!(plan.expire(t0 + iv), vec![(1, DutyChange::Stop), (3, DutyChange::Stop)]);
        assert!(!plan.probing(1, t0 + iv));
        // Server 1 joins: at once.
        let t1 = t0 + iv * 2;
        assert_eq!(plan.update(Some(&[true, true, true, false]), t1, false), vec![(1, DutyChange::Start(t1))]);
        // Server 1 leaves and comes back within the overlap: never stopped, nothing to start.
        plan.update(Some(&[true, false, true, false]), t1, false);
        assert_eq!(plan.update(Some(&[true, true, true, false]), t1 + iv / 4, false), vec![]);
        assert_eq!(plan.expire(t1 + iv * 2), vec![]);
        // Probing everything after a detach: the newly probed servers spread over an interval.
        let t2 = t1 + iv * 3;
        let spread = plan.update(None, t2, true);
        assert_eq!(spread, vec![(3, DutyChange::Start(t2))]);
        plan.update(Some(&[false, false, false, false]), t2, false);
        plan.expire(t2 + iv);
        let spread = plan.update(None, t2 + iv * 2, true);
        let starts: Vec<Instant> =
            spread.iter().map(|(_, c)| if let DutyChange::Start(t) = c { *t } else { t0 }).collect();
        assert_eq!(starts, vec![t2 + iv * 2, t2 + iv * 2 + iv / 4, t2 + iv * 2 + iv / 2, t2 + iv * 2 + iv * 3 / 4]);
    }

    #[test]
    fn detached_keeps_remote_verdicts_one_ttl_then_probes_alone() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(3);
        let mut link = Link::new(ttl, t0);
        assert_eq!(link.state().0, LinkState::Starting);
        assert!(!link.trust_remote() && !link.shared());
        assert_eq!(link.ok(t0), Some(LinkState::Attached));
        assert!(link.shared());
        link.contact(t0 + Duration::from_secs(1));
        // etcd fails 2 s later: detached, others' verdicts still trusted until 1 s + TTL.
        let t_fail = t0 + Duration::from_secs(2);
        assert_eq!(link.failed(t_fail), Some(LinkState::Detached));
        assert!(link.trust_remote() && !link.shared());
        assert_eq!(link.failed(t_fail + Duration::from_millis(500)), None);
        assert_eq!(link.next_tick(), Some(t0 + Duration::from_secs(4)));
        assert_eq!(link.tick(t0 + Duration::from_millis(3999)), None);
        assert_eq!(link.tick(t0 + Duration::from_secs(4)), Some(LinkState::Alone));
        assert!(!link.trust_remote());
        // Back: attached again at once (the caller re-read the prefix first).
        assert_eq!(link.ok(t0 + Duration::from_secs(9)), Some(LinkState::Attached));
        assert_eq!(link.transitions(), 4);
        // An attached link whose contacts stop turns detached, then alone, by time alone.
        assert_eq!(link.tick(t0 + Duration::from_secs(12) + Duration::from_millis(1)), Some(LinkState::Alone));
    }
}
