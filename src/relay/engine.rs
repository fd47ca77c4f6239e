//! One worker's relay: its own upstream sockets, pending table and cache. Nothing here is shared
//! with another worker, so no query crosses threads.
//!
//! ```text
//!  client query (not managed) ─► ACL ─► cache hit? ─► reply now
//!                                          │ miss
//!                                          ▼
//!        same question in flight? ── yes ─► wait on it (no second upstream query)
//!                                          │ no
//!                                          ▼
//!        random socket (source port) + random ID ─► upstream ─► pending[(socket, id)]
//!  upstream datagram ─► pending[(socket, id)] ─► accept(source, ID, exact question) ─► cache
//!                                                   │ refused: counted, ignored
//!                                                   ▼
//!                                     every waiter: copy + patch (ID, question case, TTLs)
//!  tick ─► pending past the timeout ─► retry once on the next upstream, else SERVFAIL
//! ```

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::cache::{key_bytes, Cache, CacheKey, KEY_MAX};
use super::upstream::{accept, Sent};
use crate::config::RelayConfig;
use crate::dns::answer::{self, Template, Transport};
use crate::dns::query::{flag, rcode, Query, HEADER_LEN};
use crate::io::Outbox;

/// Clients waiting on one upstream query, at most.
const MAX_WAITERS: usize = 32;
/// Failures in a row that take an upstream out of rotation.
const UPSTREAM_FALL: u32 = 3;
/// How long a failed upstream is skipped before it is tried again.
const UPSTREAM_RETRY_AFTER: Duration = Duration::from_secs(5);

/// What the relay did with a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forwarded {
    /// Answered now (a cache hit, REFUSED or SERVFAIL): this many bytes are in `out`.
    Answered(usize),
    /// Sent upstream (or joined a query in flight); the answer comes through the outbox.
    Pending,
}

/// Relay counters, for the worker's totals.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RelayStats {
    /// Queries sent upstream, retries included.
    pub forwarded: u64,
    /// Answers served from the cache.
    pub cache_hits: u64,
    /// Upstream datagrams refused (wrong source, ID or question; late).
    pub refused_replies: u64,
    /// Upstream queries that timed out.
    pub timeouts: u64,
}

struct Waiter {
    peer: SocketAddr,
    head: Box<[u8]>,
    query: Query,
    transport: Transport,
}

struct Pending {
    sent: Sent,
    key: CacheKey,
    bytes: Box<[u8]>,
    waiters: Vec<Waiter>,
    started: Instant,
    upstream: usize,
    group: usize,
    retried: bool,
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

/// The upstreams for a name: its route's, else the default list.
pub fn upstreams_for<'c>(config: &'c RelayConfig, name: &[u8]) -> &'c [SocketAddr] {
    let routes: Vec<(Box<[u8]>, usize)> =
        config.routes.iter().enumerate().map(|(i, r)| (crate::dns::wire_name(&r.domain).into(), i)).collect();
    match route_for(&routes, name) {
        Some(i) => &config.routes[i].upstreams,
        None => &config.upstreams,
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct UpstreamHealth {
    failures: u32,
    last_failure: Option<Instant>,
}

/// One worker's relay.
pub struct Relay {
    config: Arc<RelayConfig>,
    /// Every upstream, the default list first, then each route's.
    upstreams: Vec<SocketAddr>,
    /// Per group (0: default; 1 + route index), the indices into `upstreams`.
    groups: Vec<Vec<usize>>,
    /// Route domains as wire names, with their group.
    routes: Vec<(Box<[u8]>, usize)>,
    /// Per group, where round-robin goes next.
    next: Vec<usize>,
    /// The health-check query (ID patched per send) and when each upstream is next checked.
    health_query: Option<Box<[u8]>>,
    next_check: Vec<Instant>,
    sockets: Vec<UdpSocket>,
    pending: HashMap<(usize, u16), Pending>,
    by_key: HashMap<CacheKey, (usize, u16)>,
    cache: Cache,
    health: Vec<UpstreamHealth>,
    random: Vec<u64>,
    servfail: Template,
    /// Counters.
    pub stats: RelayStats,
}

impl Relay {
    /// Opens this worker's upstream sockets (each bound to a random ephemeral port).
    pub fn new(config: Arc<RelayConfig>) -> std::io::Result<Relay> {
        let mut upstreams: Vec<SocketAddr> = config.upstreams.clone();
        let mut groups = vec![(0..upstreams.len()).collect::<Vec<usize>>()];
        let mut routes = Vec::new();
        for (i, r) in config.routes.iter().enumerate() {
            let start = upstreams.len();
            upstreams.extend(&r.upstreams);
            groups.push((start..upstreams.len()).collect());
            routes.push((crate::dns::wire_name(&r.domain).into_boxed_slice(), i + 1));
        }
        let any_v6 = upstreams.iter().any(SocketAddr::is_ipv6);
        let mut sockets = Vec::new();
        for _ in 0..config.sockets_per_worker {
            let bind: SocketAddr = if any_v6 { "[::]:0" } else { "0.0.0.0:0" }.parse().expect("literal");
            let s = UdpSocket::bind(bind)?;
            s.set_nonblocking(true)?;
            sockets.push(s);
        }
        let health_query = config.health_check.as_ref().map(|name| {
            // A plain `NAME A` query with RD set.
            let mut q = vec![0, 0, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
            q.extend_from_slice(&crate::dns::wire_name(name));
            q.extend_from_slice(&[0, 1, 0, 1]);
            q.into_boxed_slice()
        });
        let now = Instant::now();
        Ok(Relay {
            health_query,
            next_check: vec![now; upstreams.len()],
            cache: Cache::new(config.cache_entries),
            health: vec![UpstreamHealth::default(); upstreams.len()],
            next: vec![0; groups.len()],
            upstreams,
            groups,
            routes,
            sockets,
            pending: HashMap::new(),
            by_key: HashMap::new(),
            random: Vec::new(),
            servfail: Template::empty(false, rcode::SERVFAIL),
            stats: RelayStats::default(),
            config,
        })
    }

    /// The upstream sockets, for the worker loop to read.
    pub fn sockets(&self) -> &[UdpSocket] {
        &self.sockets
    }

    /// Upstream queries in flight.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    fn random(&mut self) -> u64 {
        if self.random.is_empty() {
            let mut bytes = [0u8; 4096];
            // Without OS randomness the clock still varies IDs; only spoofing resistance suffers.
            if getrandom::fill(&mut bytes).is_err() {
                let t = Instant::now().elapsed().subsec_nanos();
                bytes.iter_mut().enumerate().for_each(|(i, b)| *b = (t >> (i % 24)) as u8 ^ i as u8);
            }
            self.random = bytes.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect();
        }
        self.random.pop().unwrap_or_default()
    }

    /// The next upstream of `group` to use: healthy ones in turn; when all are resting, the one
    /// that failed longest ago. Never `avoid` unless it is the only one.
    fn choose_upstream(&mut self, group: usize, now: Instant, avoid: Option<usize>) -> usize {
        let members = &self.groups[group];
        let n = members.len();
        for k in 0..n {
            let pos = (self.next[group] + k) % n;
            let i = members[pos];
            let h = self.health[i];
            let resting = h.failures >= UPSTREAM_FALL
                && h.last_failure.is_some_and(|t| now.duration_since(t) < UPSTREAM_RETRY_AFTER);
            if !resting && Some(i) != avoid {
                self.next[group] = (pos + 1) % n;
                return i;
            }
        }
        members
            .iter()
            .copied()
            .filter(|&i| Some(i) != avoid || n == 1)
            .min_by_key(|&i| self.health[i].last_failure)
            .unwrap_or(members[0])
    }

    /// Handles a query for a name dnlb does not manage, from `peer`.
    #[allow(clippy::too_many_arguments)]
    pub fn query(
        &mut self,
        packet: &[u8],
        query: &Query,
        name: &[u8],
        peer: SocketAddr,
        transport: Transport,
        out: &mut [u8],
        now: Instant,
    ) -> Forwarded {
        // A cache hit allocates nothing: the key is built on the stack and borrowed.
        let mut key_buf = [0u8; KEY_MAX];
        let dnssec_ok = query.edns.is_some_and(|e| e.dnssec_ok);
        let key = key_bytes(name, query.qtype, query.qclass, dnssec_ok, &mut key_buf);
        if let Some(n) = self.cache.answer(key, packet, query, transport, out, now) {
            self.stats.cache_hits += 1;
            return Forwarded::Answered(n);
        }
        let waiter = Waiter { peer, head: packet[..query.question_end].into(), query: *query, transport };
        if let Some(slot) = self.by_key.get(key) {
            if let Some(p) = self.pending.get_mut(slot) {
                if p.waiters.len() < MAX_WAITERS {
                    p.waiters.push(waiter);
                    return Forwarded::Pending;
                }
            }
        }
        if self.pending.len() >= self.config.max_pending {
            return Forwarded::Answered(answer::write_reply(packet, query, &self.servfail, transport, out).len);
        }
        let bytes: Box<[u8]> = packet.into();
        let question: Box<[u8]> = packet[HEADER_LEN..query.question_end].into();
        let group = route_for(&self.routes, name).unwrap_or(0);
        let upstream = self.choose_upstream(group, now, None);
        let key = CacheKey::new(name, query.qtype, query.qclass, dnssec_ok);
        match self.send(bytes, question, key, vec![waiter], (upstream, group), now, false) {
            Ok(()) => Forwarded::Pending,
            Err(_waiter) => Forwarded::Answered(answer::write_reply(packet, query, &self.servfail, transport, out).len),
        }
    }

    /// Sends `bytes` (a client query) upstream under a fresh random socket and ID; on failure the
    /// waiters come back so they can be answered SERVFAIL.
    #[allow(clippy::too_many_arguments)]
    fn send(
        &mut self,
        mut bytes: Box<[u8]>,
        question: Box<[u8]>,
        key: CacheKey,
        waiters: Vec<Waiter>,
        (upstream, group): (usize, usize),
        now: Instant,
        retried: bool,
    ) -> Result<(), Vec<Waiter>> {
        let target = self.upstreams[upstream];
        let mut slot = None;
        for _ in 0..16 {
            let r = self.random();
            let candidate = ((r as usize >> 16) % self.sockets.len(), r as u16);
            if !self.pending.contains_key(&candidate) {
                slot = Some(candidate);
                break;
            }
        }
        let Some((socket, id)) = slot else { return Err(waiters) };
        bytes[..2].copy_from_slice(&id.to_be_bytes());
        if self.sockets[socket].send_to(&bytes, target).is_err() {
            return Err(waiters);
        }
        self.stats.forwarded += 1;
        self.by_key.insert(key.clone(), (socket, id));
        let sent = Sent { upstream: target, id, question };
        self.pending
            .insert((socket, id), Pending { sent, key, bytes, waiters, started: now, upstream, group, retried });
        Ok(())
    }

    /// A datagram arrived on upstream socket `index`.
    pub fn on_reply(&mut self, index: usize, data: &[u8], from: SocketAddr, out: &mut Outbox, now: Instant) {
        if data.len() < 2 {
            self.stats.refused_replies += 1;
            return;
        }
        let slot = (index, u16::from_be_bytes([data[0], data[1]]));
        let Some(p) = self.pending.get(&slot) else {
            self.stats.refused_replies += 1;
            return;
        };
        if accept(data, from, &p.sent).is_err() {
            self.stats.refused_replies += 1;
            return;
        }
        let Some(p) = self.pending.remove(&slot) else { return };
        self.by_key.remove(&p.key);
        self.health[p.upstream] = UpstreamHealth::default();
        let rcode = data.get(3).map_or(0, |b| b & 0xf);
        if rcode == rcode::SERVFAIL {
            self.note_failure(p.upstream, now);
        }
        self.cache.insert(p.key.clone(), data, now);
        for w in &p.waiters {
            let cache = &mut self.cache;
            out.push(w.peer, |buf| match cache.answer(p.key.as_bytes(), &w.head, &w.query, w.transport, buf, now) {
                Some(n) => n,
                None => patch_raw(data, w, buf),
            });
        }
    }

    fn note_failure(&mut self, upstream: usize, now: Instant) {
        let h = &mut self.health[upstream];
        h.failures = h.failures.saturating_add(1);
        h.last_failure = Some(now);
    }

    /// Sends the health-check query to every upstream whose turn it is. Its reply resets the
    /// upstream's failures (in `on_reply`); its timeout counts one (in `tick`); nobody waits on it.
    fn check_upstreams(&mut self, now: Instant) {
        let Some(query) = self.health_query.clone() else { return };
        for i in 0..self.upstreams.len() {
            if now < self.next_check[i] {
                continue;
            }
            self.next_check[i] = now + self.config.health_check_interval;
            let group = self.groups.iter().position(|g| g.contains(&i)).unwrap_or(0);
            let name_end = query.len() - 4;
            let key = CacheKey::new(&query[HEADER_LEN..name_end], 1, 1, false);
            let question: Box<[u8]> = query[HEADER_LEN..].into();
            // `retried = true`: a health check is never retried elsewhere.
            let _unsent = self.send(query.clone(), question, key, Vec::new(), (i, group), now, true);
        }
    }

    /// Retries or fails every query past the timeout, and sends due health checks.
    pub fn tick(&mut self, out: &mut Outbox, now: Instant) {
        self.check_upstreams(now);
        let timeout = self.config.timeout;
        let expired: Vec<(usize, u16)> =
            self.pending.iter().filter(|(_, p)| now.duration_since(p.started) >= timeout).map(|(k, _)| *k).collect();
        for slot in expired {
            let Some(p) = self.pending.remove(&slot) else { continue };
            self.by_key.remove(&p.key);
            self.stats.timeouts += 1;
            self.note_failure(p.upstream, now);
            let waiters = if !p.retried && self.groups[p.group].len() > 1 {
                // Once more, on the next upstream of its group, with a fresh socket and ID.
                let next = self.choose_upstream(p.group, now, Some(p.upstream));
                let Pending { sent, key, bytes, waiters, group, .. } = p;
                match self.send(bytes, sent.question, key, waiters, (next, group), now, true) {
                    Ok(()) => continue,
                    Err(waiters) => waiters,
                }
            } else {
                p.waiters
            };
            for w in &waiters {
                let servfail = &self.servfail;
                out.push(w.peer, |buf| answer::write_reply(&w.head, &w.query, servfail, w.transport, buf).len);
            }
        }
    }
}

/// An upstream reply that the cache would not keep (SERVFAIL, TC, TTL 0), patched for one waiter:
/// its ID, flags RD/CD and question case; TC with the question alone if it does not fit.
fn patch_raw(data: &[u8], w: &Waiter, buf: &mut [u8]) -> usize {
    let q_end = w.query.question_end;
    let limit = w.transport.limit(&w.query).min(buf.len());
    if data.len() < q_end {
        return 0;
    }
    let len = if data.len() <= limit {
        buf[..data.len()].copy_from_slice(data);
        data.len()
    } else {
        buf[..q_end].copy_from_slice(&data[..q_end]);
        buf[6..12].fill(0);
        buf[2] |= (flag::TC >> 8) as u8;
        q_end
    };
    buf[..2].copy_from_slice(&w.head[..2]);
    let flags =
        (u16::from_be_bytes([buf[2], buf[3]]) & !(flag::RD | flag::CD)) | (w.query.flags & (flag::RD | flag::CD));
    buf[2..4].copy_from_slice(&flags.to_be_bytes());
    buf[HEADER_LEN..q_end].copy_from_slice(&w.head[HEADER_LEN..q_end]);
    len
}

/// Relays one query over TCP (for a client that came over TCP): a blocking exchange from the
/// connection's own thread, trying up to two upstreams. Returns the reply length in `out`.
pub fn tcp_exchange(config: &RelayConfig, packet: &[u8], query: &Query, out: &mut [u8]) -> Option<usize> {
    use std::io::{Read, Write};
    let question: Box<[u8]> = packet.get(HEADER_LEN..query.question_end)?.into();
    let mut name = [0u8; crate::dns::query::MAX_NAME_LEN];
    crate::dns::query::parse(packet, &mut name).ok()?;
    for upstream in upstreams_for(config, &name[..query.name_len]).iter().take(2) {
        let mut id = [0u8; 2];
        if getrandom::fill(&mut id).is_err() {
            id = (Instant::now().elapsed().subsec_nanos() as u16).to_be_bytes();
        }
        let mut attempt = || -> std::io::Result<Option<usize>> {
            let mut stream = std::net::TcpStream::connect_timeout(upstream, config.timeout)?;
            stream.set_read_timeout(Some(config.timeout))?;
            stream.set_write_timeout(Some(config.timeout))?;
            let mut msg = Vec::with_capacity(packet.len() + 2);
            msg.extend_from_slice(&(packet.len() as u16).to_be_bytes());
            msg.extend_from_slice(&id);
            msg.extend_from_slice(&packet[2..]);
            stream.write_all(&msg)?;
            let mut len = [0u8; 2];
            stream.read_exact(&mut len)?;
            let len = u16::from_be_bytes(len) as usize;
            if len > out.len() {
                return Ok(None);
            }
            stream.read_exact(&mut out[..len])?;
            let sent = Sent { upstream: *upstream, id: u16::from_be_bytes(id), question: question.clone() };
            if accept(&out[..len], *upstream, &sent).is_err() {
                return Ok(None);
            }
            out[..2].copy_from_slice(&packet[..2]);
            Ok(Some(len))
        };
        if let Ok(Some(n)) = attempt() {
            return Some(n);
        }
    }
    None
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
