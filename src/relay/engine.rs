//! One worker's relay logic: pending table, dedupe, acceptance, retries, cache. It does no I/O of
//! its own: it tells a [`Wire`] which datagrams to send, each exchange from a fresh random source
//! port, and is told what came back, with the time passed in. Nothing here is shared with another
//! worker.
//!
//! ```text
//!  client query (not managed) ─► cache hit? ─► reply now
//!                                   │ miss
//!                                   ▼
//!        same question in flight? ── yes ─► wait on it (up to a bound; past it SERVFAIL,
//!                                   │ no                 never a second upstream query)
//!                                   ▼
//!        random ID, random letter case (0x20) ─► Wire::send_udp(token): a socket connected to
//!                                                the upstream, on a fresh random port
//!  datagram on token's socket ─► accept(source, ID, question and its case)
//!        │ refused: counted (forged, case), still waiting       │ TC=1: Wire::send_tcp(token')
//!        ▼ accepted: port released, cached, every waiter: copy + patch (ID, case, TTLs)
//!  tick ─► past the timeout ─► replies in another case came, and the upstream never kept case:
//!                              once more without 0x20
//!                              else retry once on the next upstream, else SERVFAIL
//! ```

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use super::cache::{fit_for_client, key_bytes, Cache, CacheKey, KEY_MAX};
use super::pool::UpstreamPool;
use super::random::{Fill, Random};
use super::upstream::{accept, Refusal, Sent};
use super::RelayError;
use crate::config::RelayConfig;
use crate::dns::answer::{self, DnsTransport, Template};
use crate::dns::query::{self, flag, rcode, Query, HEADER_LEN, TYPE_OPT};

/// Clients waiting on one upstream query, at most (each holds its header and question: a few
/// hundred bytes at worst). `max_waiters` bounds all questions of a worker together.
pub const WAITERS_PER_QUESTION: usize = 4096;
/// The UDP payload size dnlb advertises upstream in the OPT of every forwarded query that has one
/// (DNS Flag Day 2020): larger answers come with TC=1 and are fetched over TCP, so no reply needs
/// IP fragments, which a forger could replace without knowing the ID or the port.
pub const UPSTREAM_PAYLOAD: u16 = 1232;

/// Identifies one upstream exchange (and the socket or connection the [`Wire`] opened for it).
/// Never reused.
pub type Token = u64;

/// The I/O the engine drives. Every exchange gets a source port of its own, taken by `send_*` and
/// released by [`Wire::close`]; what arrives on it is handed back to [`Engine::on_reply`] or
/// [`Engine::on_failure`] with its token.
pub trait Wire {
    /// Sends `bytes` to `to` from a UDP socket connected to `to` on a fresh random source port (so
    /// the kernel drops datagrams from anyone else, and none meant for an earlier exchange arrive).
    fn send_udp(&mut self, token: Token, to: SocketAddr, bytes: &[u8]) -> io::Result<()>;
    /// Sends `bytes` to `to` over a fresh TCP connection, length-prefixed (RFC 7766); the reply
    /// comes back whole.
    fn send_tcp(&mut self, token: Token, to: SocketAddr, bytes: &[u8]) -> io::Result<()>;
    /// Closes whatever `token` has open (nothing if it has nothing).
    fn close(&mut self, token: Token);
}

/// Where a waiting client's answer goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyTo {
    /// A UDP client: a datagram to this address.
    Udp(SocketAddr),
    /// A UDP client whose query came as a frame on an XSK (the XDP backend): a datagram to
    /// this address, sent through the XSK with the query's frame headers turned around.
    Frame {
        /// The client's address and port.
        peer: SocketAddr,
        /// MACs, VLAN tag, our address and port.
        path: crate::io::FramePath,
    },
    /// A TCP client: the worker's connection in this slot, if it is still the same connection.
    Tcp {
        /// The connection's slot in the worker's table.
        slot: usize,
        /// The connection's generation (slots are reused).
        generation: u32,
    },
}

/// Where the engine puts replies to clients that were waiting.
pub trait Replies {
    /// Adds a reply for `to`, written by `write` into a buffer (it returns the length; 0: none).
    fn push(&mut self, to: ReplyTo, write: &mut dyn FnMut(&mut [u8]) -> usize);
}

/// What the relay did with a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forwarded {
    /// Answered now (a cache hit, or SERVFAIL): this many bytes are in `out`.
    Answered(usize),
    /// Sent upstream (or joined a query in flight); the answer comes through [`Replies`].
    Pending,
}

/// What [`Engine::on_reply`] did with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyOutcome {
    /// Accepted: the exchange is over and its socket closed.
    Taken,
    /// Refused (counted); the exchange still waits for its reply.
    Refused,
    /// No exchange has this token (any more): a late reply, counted.
    Unknown,
}

/// What a relay holds at one moment (not cumulative, unlike [`RelayStats`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RelayGauges {
    /// Upstream exchanges in flight.
    pub pending: usize,
    /// Clients waiting on them.
    pub waiting: usize,
    /// Answers in the cache.
    pub cache_entries: usize,
    /// Bytes the cache's answers hold.
    pub cache_bytes: usize,
}

/// Relay counters, published into the worker's counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RelayStats {
    /// Queries sent upstream, retries and health checks included.
    pub forwarded: u64,
    /// Answers served from the cache.
    pub cache_hits: u64,
    /// Upstream exchanges that timed out.
    pub timeouts: u64,
    /// Upstream messages refused: not a response, another ID, another question.
    pub forged: u64,
    /// Upstream messages refused for the letter case of the question alone (0x20).
    pub case_mismatches: u64,
    /// Messages for an exchange that was already over.
    pub late: u64,
    /// UDP replies larger than the [`UPSTREAM_PAYLOAD`] dnlb advertised (used all the same).
    pub oversize: u64,
    /// Queries asked again over TCP after a reply with TC=1.
    pub tcp_retries: u64,
    /// Queries failed because the system's random source failed.
    pub random_failures: u64,
    /// Queries answered SERVFAIL because too many clients were waiting already.
    pub waiters_full: u64,
    /// Queries answered SERVFAIL because `max_pending` upstream queries were in flight.
    pub pending_full: u64,
    /// Queries answered SERVFAIL because their client's prefix had its share of `max_pending`
    /// in flight already.
    pub prefix_full: u64,
    /// Upstream sends the kernel refused (socket, connect or send failed).
    pub send_errors: u64,
    /// Exchanges the upstream broke (ICMP unreachable, TCP reset or early close).
    pub upstream_errors: u64,
    /// Upstreams found not to preserve letter case, now queried without 0x20.
    pub no_caps: u64,
}

/// A client waiting on an upstream query.
struct Waiter {
    to: ReplyTo,
    /// Its header and question, as it sent them.
    head: Box<[u8]>,
    query: Query,
    transport: DnsTransport,
}

/// One question in flight upstream.
struct Pending {
    /// The query as forwarded, before ID and letter case are drawn: the first client's message
    /// with the name in lower case and dnlb's EDNS size.
    query: Box<[u8]>,
    /// Where the question ends in `query`.
    question_end: usize,
    key: CacheKey,
    waiters: Vec<Waiter>,
    /// What went out last, to check replies against.
    sent: Sent,
    started: Instant,
    upstream: usize,
    group: usize,
    /// Already moved to another upstream once.
    retried: bool,
    /// Sent with random letter case.
    caps: bool,
    /// A reply with the right ID came in another letter case.
    case_mismatch: bool,
    /// The UDP reply with TC=1, kept while the question is asked again over TCP.
    truncated: Option<Box<[u8]>>,
    /// A health check: nobody waits, never retried or cached.
    check: bool,
    /// The prefix of the client whose question started it (charged against its share).
    prefix: Option<u128>,
}

/// The share key of a client: its /24 (IPv4, or IPv4-mapped IPv6) or /56 (IPv6), tagged with
/// the family.
fn client_prefix(client: SocketAddr) -> u128 {
    let ip = match client.ip() {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4),
        v4 => v4,
    };
    match ip {
        std::net::IpAddr::V4(a) => (1u128 << 127) | u128::from(u32::from(a) >> 8),
        std::net::IpAddr::V6(a) => (u128::from(a) >> 72) | 1,
    }
}

/// One worker's relay logic.
pub struct Engine {
    config: Arc<RelayConfig>,
    /// The upstreams: which one a question goes to, what was learnt of each, health checks.
    pool: UpstreamPool,
    pending: HashMap<Token, Pending>,
    by_key: HashMap<CacheKey, Token>,
    /// Clients waiting, all pending questions together.
    waiting: usize,
    /// Upstream queries in flight per client prefix that started them.
    per_prefix: HashMap<u128, usize>,
    next_token: Token,
    cache: Cache,
    random: Random,
    /// The message being sent (reused, so a send allocates only what it keeps).
    scratch: Vec<u8>,
    /// Tokens past their deadline (reused by `tick`).
    expired: Vec<Token>,
    servfail: Template,
    /// Counters.
    pub stats: RelayStats,
}

impl Engine {
    /// The relay logic for `config`, with random bytes from `fill`; fails if `fill` does.
    pub fn new(config: Arc<RelayConfig>, fill: Fill, now: Instant) -> Result<Engine, RelayError> {
        let random = Random::new(fill).map_err(RelayError::Random)?;
        Ok(Engine {
            pool: UpstreamPool::new(&config, now),
            cache: Cache::new(config.cache_entries, config.cache_bytes, config.max_ttl),
            pending: HashMap::new(),
            by_key: HashMap::new(),
            waiting: 0,
            per_prefix: HashMap::new(),
            next_token: 1,
            random,
            scratch: Vec::new(),
            expired: Vec::new(),
            servfail: Template::empty(false, rcode::SERVFAIL),
            stats: RelayStats::default(),
            config,
        })
    }

    /// Applies a reloaded `[relay]` in place. Questions in flight stay and are answered: an
    /// upstream they went to that the new configuration drops is kept, retired, until they end;
    /// their route is looked up again for a retry. Upstreams that stay keep what was learnt of
    /// them (failures, 0x20). The cache starts afresh when what its answers came from changes
    /// (upstreams, routes) or its bounds do; limits and the allow list apply to new questions.
    pub fn reconfigure(&mut self, config: Arc<RelayConfig>, now: Instant) {
        let in_flight: Vec<SocketAddr> = self.pending.values().map(|p| self.pool.addr(p.upstream)).collect();
        self.pool.reconfigure(&config, in_flight.iter().copied(), now);
        for (p, addr) in self.pending.values_mut().zip(in_flight) {
            let name = p.query.get(HEADER_LEN..p.question_end.saturating_sub(4)).unwrap_or_default();
            p.group = if p.check { 0 } else { self.pool.group_for(name) };
            p.upstream = self.pool.locate(p.group, addr);
        }
        let c = &self.config;
        if c.upstreams != config.upstreams
            || c.routes != config.routes
            || c.cache_entries != config.cache_entries
            || c.cache_bytes != config.cache_bytes
            || c.max_ttl != config.max_ttl
        {
            self.cache = Cache::new(config.cache_entries, config.cache_bytes, config.max_ttl);
        }
        self.config = config;
    }

    /// Upstream exchanges in flight.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Clients waiting on them.
    pub fn waiting(&self) -> usize {
        self.waiting
    }

    /// What the relay holds now, for the metrics.
    pub fn gauges(&self) -> RelayGauges {
        RelayGauges {
            pending: self.pending(),
            waiting: self.waiting,
            cache_entries: self.cache.len(),
            cache_bytes: self.cache.bytes(),
        }
    }

    /// The upstreams found not to preserve letter case since the last call (each once per
    /// engine): a state change worth one log line, never a per-packet event.
    pub fn take_lost_caps(&mut self) -> Vec<SocketAddr> {
        self.pool.take_lost_caps()
    }

    /// Handles a query for a name dnlb does not manage (`name`: its lower-case wire name), from
    /// `client`, to be answered at `to`.
    #[allow(clippy::too_many_arguments)]
    pub fn query(
        &mut self,
        packet: &[u8],
        query: &Query,
        name: &[u8],
        client: SocketAddr,
        to: ReplyTo,
        transport: DnsTransport,
        out: &mut [u8],
        now: Instant,
        wire: &mut dyn Wire,
    ) -> Forwarded {
        // A cache hit allocates nothing: the key is built on the stack and borrowed.
        let mut key_buf = [0u8; KEY_MAX];
        let dnssec_ok = query.edns.is_some_and(|e| e.dnssec_ok);
        let checking_disabled = query.flags & flag::CD != 0;
        let key = key_bytes(name, query.qtype, query.qclass, dnssec_ok, checking_disabled, &mut key_buf);
        if let Some(n) = self.cache.answer(key, packet, query, transport, out, now) {
            self.stats.cache_hits += 1;
            return Forwarded::Answered(n);
        }
        let q_end = query.question_end;
        if packet.len() < q_end || name.len() != query.name_len || q_end != HEADER_LEN + name.len() + 4 {
            return self.servfail_now(packet, query, transport, out);
        }
        let waiter = Waiter { to, head: packet[..q_end].into(), query: *query, transport };
        if let Some(p) = self.by_key.get(key).and_then(|t| self.pending.get_mut(t)) {
            if p.waiters.len() < WAITERS_PER_QUESTION && self.waiting < self.config.max_waiters {
                p.waiters.push(waiter);
                self.waiting += 1;
                return Forwarded::Pending;
            }
            self.stats.waiters_full += 1;
            return self.servfail_now(packet, query, transport, out);
        }
        if self.pending.len() >= self.config.max_pending {
            self.stats.pending_full += 1;
            return self.servfail_now(packet, query, transport, out);
        }
        if self.waiting >= self.config.max_waiters {
            self.stats.waiters_full += 1;
            return self.servfail_now(packet, query, transport, out);
        }
        let prefix = client_prefix(client);
        if self.per_prefix.get(&prefix).copied().unwrap_or(0) >= self.config.max_pending_per_prefix {
            self.stats.prefix_full += 1;
            return self.servfail_now(packet, query, transport, out);
        }
        let mut forwarded = packet.to_vec();
        forwarded[HEADER_LEN..HEADER_LEN + name.len()].copy_from_slice(name);
        advertise_payload(&mut forwarded, q_end);
        let group = self.pool.group_for(name);
        let upstream = self.pool.choose(group, now, None);
        let p = Pending {
            query: forwarded.into(),
            question_end: q_end,
            key: CacheKey::new(name, query.qtype, query.qclass, dnssec_ok, checking_disabled),
            waiters: vec![waiter],
            sent: unsent(self.pool.addr(upstream)),
            started: now,
            upstream,
            group,
            retried: false,
            caps: self.pool.caps(upstream),
            case_mismatch: false,
            truncated: None,
            check: false,
            prefix: Some(prefix),
        };
        match self.launch(p, now, wire) {
            Ok(()) => {
                self.waiting += 1;
                *self.per_prefix.entry(prefix).or_insert(0) += 1;
                Forwarded::Pending
            }
            Err(_unsent) => self.servfail_now(packet, query, transport, out),
        }
    }

    fn servfail_now(&self, packet: &[u8], query: &Query, transport: DnsTransport, out: &mut [u8]) -> Forwarded {
        Forwarded::Answered(answer::write_reply(packet, query, &self.servfail, transport, out).len)
    }

    /// Sends `p` to its upstream over UDP under a fresh token, a random ID and (if `p.caps`)
    /// random letter case, and files it as pending. On failure (counted) `p` comes back.
    fn launch(&mut self, mut p: Pending, now: Instant, wire: &mut dyn Wire) -> Result<(), Box<Pending>> {
        let Some(id) = self.random.u16() else {
            self.stats.random_failures += 1;
            return Err(Box::new(p));
        };
        let q_end = p.question_end;
        self.scratch.clear();
        self.scratch.extend_from_slice(&p.query);
        self.scratch[..2].copy_from_slice(&id.to_be_bytes());
        if p.caps && randomise_case(&mut self.scratch[HEADER_LEN..q_end - 4], &mut self.random).is_none() {
            self.stats.random_failures += 1;
            return Err(Box::new(p));
        }
        let token = self.next_token;
        self.next_token += 1;
        let to = self.pool.addr(p.upstream);
        if wire.send_udp(token, to, &self.scratch).is_err() {
            wire.close(token);
            self.stats.send_errors += 1;
            self.pool.failed(p.upstream, now);
            return Err(Box::new(p));
        }
        self.stats.forwarded += 1;
        p.sent = Sent { upstream: to, id, question: self.scratch[HEADER_LEN..q_end].into(), exact_case: p.caps };
        p.started = now;
        if !p.check {
            self.by_key.insert(p.key.clone(), token);
        }
        self.pending.insert(token, p);
        Ok(())
    }

    /// Takes exchange `token` out of the tables and closes its socket. The question's prefix
    /// stays charged while it is retried (`launch` files it again under a new token).
    fn remove(&mut self, token: Token, wire: &mut dyn Wire) -> Option<Pending> {
        let p = self.pending.remove(&token)?;
        wire.close(token);
        if self.by_key.get(&p.key) == Some(&token) {
            self.by_key.remove(&p.key);
        }
        Some(p)
    }

    /// A question is over for good (answered or failed): its prefix's share is free again.
    fn release(&mut self, p: &Pending) {
        let Some(prefix) = p.prefix else { return };
        if let Some(n) = self.per_prefix.get_mut(&prefix) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_prefix.remove(&prefix);
            }
        }
    }

    /// A message arrived for exchange `token` from `from` (over UDP: the socket's connected peer;
    /// over TCP: the upstream).
    pub fn on_reply(
        &mut self,
        token: Token,
        data: &[u8],
        from: SocketAddr,
        out: &mut dyn Replies,
        now: Instant,
        wire: &mut dyn Wire,
    ) -> ReplyOutcome {
        let Some(p) = self.pending.get_mut(&token) else {
            self.stats.late += 1;
            return ReplyOutcome::Unknown;
        };
        match accept(data, from, &p.sent) {
            Ok(()) => {}
            Err(Refusal::Case) => {
                self.stats.case_mismatches += 1;
                p.case_mismatch = true;
                return ReplyOutcome::Refused;
            }
            Err(_) => {
                self.stats.forged += 1;
                return ReplyOutcome::Refused;
            }
        }
        let Some(mut p) = self.remove(token, wire) else { return ReplyOutcome::Unknown };
        let over_tcp = p.truncated.is_some();
        if !over_tcp && data.len() > usize::from(UPSTREAM_PAYLOAD) {
            self.stats.oversize += 1;
        }
        if p.caps {
            self.pool.keeps_case(p.upstream);
        }
        let flags = u16::from_be_bytes([data[2], data[3]]);
        if (flags & 0xf) as u8 == rcode::SERVFAIL {
            self.pool.failed(p.upstream, now);
            self.retry_or_fail(p, now, out, wire);
            return ReplyOutcome::Taken;
        }
        self.pool.answered(p.upstream);
        if p.check {
            return ReplyOutcome::Taken;
        }
        if flags & flag::TC != 0 && !over_tcp {
            match self.retry_over_tcp(p, data, now, wire) {
                Ok(()) => return ReplyOutcome::Taken,
                Err(back) => p = *back,
            }
        }
        self.cache.insert(p.key.clone(), data, now);
        self.deliver(&p, data, now, out);
        ReplyOutcome::Taken
    }

    /// Asks `p` again over TCP (same ID and case) after a UDP reply with TC=1.
    fn retry_over_tcp(
        &mut self,
        mut p: Pending,
        data: &[u8],
        now: Instant,
        wire: &mut dyn Wire,
    ) -> Result<(), Box<Pending>> {
        let q_end = p.question_end;
        self.scratch.clear();
        self.scratch.extend_from_slice(&p.query);
        self.scratch[..2].copy_from_slice(&p.sent.id.to_be_bytes());
        self.scratch[HEADER_LEN..q_end].copy_from_slice(&p.sent.question);
        let token = self.next_token;
        self.next_token += 1;
        if wire.send_tcp(token, p.sent.upstream, &self.scratch).is_err() {
            wire.close(token);
            self.stats.send_errors += 1;
            return Err(Box::new(p));
        }
        self.stats.tcp_retries += 1;
        p.truncated = Some(data.into());
        p.started = now;
        self.by_key.insert(p.key.clone(), token);
        self.pending.insert(token, p);
        Ok(())
    }

    /// Exchange `token`'s socket failed: an ICMP error on UDP, a TCP connection refused, reset or
    /// closed early.
    pub fn on_failure(&mut self, token: Token, out: &mut dyn Replies, now: Instant, wire: &mut dyn Wire) {
        let Some(mut p) = self.remove(token, wire) else { return };
        self.stats.upstream_errors += 1;
        if let Some(truncated) = p.truncated.take() {
            // The TCP retry failed: the client gets the truncated answer and may try TCP itself.
            self.deliver(&p, &truncated, now, out);
            return;
        }
        self.pool.failed(p.upstream, now);
        self.retry_or_fail(p, now, out, wire);
    }

    /// Once more on the next upstream of its group if it has not moved yet, else SERVFAIL.
    fn retry_or_fail(&mut self, mut p: Pending, now: Instant, out: &mut dyn Replies, wire: &mut dyn Wire) {
        if !p.retried && !p.check && self.pool.group_len(p.group) > 1 {
            let next = self.pool.choose(p.group, now, Some(p.upstream));
            p.retried = true;
            p.upstream = next;
            p.caps = self.pool.caps(next);
            p.case_mismatch = false;
            match self.launch(p, now, wire) {
                Ok(()) => return,
                Err(back) => p = *back,
            }
        }
        self.fail_waiters(&p, out);
    }

    /// Answers every waiter of `p` from `data` (through the cache where it kept the reply).
    fn deliver(&mut self, p: &Pending, data: &[u8], now: Instant, out: &mut dyn Replies) {
        self.release(p);
        let max_ttl = self.config.max_ttl;
        for w in &p.waiters {
            let cache = &mut self.cache;
            out.push(w.to, &mut |buf| match cache.answer(p.key.as_bytes(), &w.head, &w.query, w.transport, buf, now) {
                Some(n) => n,
                None => patch_raw(data, &w.head, &w.query, w.transport, max_ttl, buf),
            });
        }
        self.waiting = self.waiting.saturating_sub(p.waiters.len());
    }

    /// Answers every waiter of `p` SERVFAIL.
    fn fail_waiters(&mut self, p: &Pending, out: &mut dyn Replies) {
        self.release(p);
        for w in &p.waiters {
            let servfail = &self.servfail;
            out.push(w.to, &mut |buf| answer::write_reply(&w.head, &w.query, servfail, w.transport, buf).len);
        }
        self.waiting = self.waiting.saturating_sub(p.waiters.len());
    }

    /// Sends the health-check query to every upstream whose turn it is. Its reply resets the
    /// upstream's failures (in `on_reply`); its timeout counts one (in `tick`); nobody waits on it.
    fn check_upstreams(&mut self, now: Instant, wire: &mut dyn Wire) {
        for i in 0..self.pool.active() {
            let Some(group) = self.pool.check_due(i, now) else { continue };
            let Some(query) = self.pool.health_query().map(Box::<[u8]>::from) else { return };
            let q_end = query.len();
            let p = Pending {
                query: query.clone(),
                question_end: q_end,
                key: CacheKey::new(&query[HEADER_LEN..q_end - 4], 1, 1, false, false),
                waiters: Vec::new(),
                sent: unsent(self.pool.addr(i)),
                started: now,
                upstream: i,
                group,
                retried: true,
                caps: self.pool.caps(i),
                case_mismatch: false,
                truncated: None,
                check: true,
                prefix: None,
            };
            // A check that cannot be sent is counted in `launch`; the next one is due anyway.
            if self.launch(p, now, wire).is_err() {
                continue;
            }
        }
    }

    /// Moves on every exchange past the timeout, and sends due health checks.
    pub fn tick(&mut self, out: &mut dyn Replies, now: Instant, wire: &mut dyn Wire) {
        self.check_upstreams(now, wire);
        let timeout = self.config.timeout;
        let mut expired = std::mem::take(&mut self.expired);
        expired.clear();
        expired.extend(
            self.pending.iter().filter(|(_, p)| now.saturating_duration_since(p.started) >= timeout).map(|(t, _)| *t),
        );
        for &token in &expired {
            let Some(mut p) = self.remove(token, wire) else { continue };
            self.stats.timeouts += 1;
            if let Some(truncated) = p.truncated.take() {
                // The TCP retry took too long: the client gets the truncated answer.
                self.deliver(&p, &truncated, now, out);
                continue;
            }
            if p.caps && p.case_mismatch {
                // Replies came in another case and none in ours: a forger (whose flood may also
                // have cost the true reply), or an upstream that does not preserve case. After a
                // few such in a row, 0x20 is off for this upstream. One that never kept case is
                // asked once more at once, without 0x20, on a fresh socket and ID; one that did
                // keep case is not, so a forger cannot switch 0x20 off for a question by making
                // its true reply late.
                let suspect = !self.pool.kept_case(p.upstream);
                if self.pool.case_failed(p.upstream) {
                    self.stats.no_caps += 1;
                }
                if suspect {
                    p.caps = false;
                    p.case_mismatch = false;
                    match self.launch(p, now, wire) {
                        Ok(()) => continue,
                        Err(back) => p = *back,
                    }
                    self.fail_waiters(&p, out);
                    continue;
                }
            }
            self.pool.failed(p.upstream, now);
            self.retry_or_fail(p, now, out, wire);
        }
        self.expired = expired;
    }
}

/// A `Sent` for an exchange not sent yet (nothing can match it: ID and question are set on send).
fn unsent(upstream: SocketAddr) -> Sent {
    Sent { upstream, id: 0, question: Box::new([]), exact_case: true }
}

/// Sets each letter of `name` (wire format, lower case) to upper or lower case at random. Length
/// octets are below 64, so never letters. `None` if the random source failed.
fn randomise_case(name: &mut [u8], random: &mut Random) -> Option<()> {
    let letters = name.iter().filter(|b| b.is_ascii_alphabetic()).count();
    let mut bits = [0u8; query::MAX_NAME_LEN.div_ceil(8)];
    let bits = &mut bits[..letters.div_ceil(8)];
    random.fill(bits)?;
    for (k, b) in name.iter_mut().filter(|b| b.is_ascii_alphabetic()).enumerate() {
        if bits[k / 8] >> (k % 8) & 1 == 1 {
            b.make_ascii_uppercase();
        } else {
            b.make_ascii_lowercase();
        }
    }
    Some(())
}

/// Sets the UDP payload size in the OPT record of `message` (a query whose question ends at
/// `question_end`), if it has one, to [`UPSTREAM_PAYLOAD`].
fn advertise_payload(message: &mut [u8], question_end: usize) {
    if message.len() < HEADER_LEN {
        return;
    }
    let count = |i: usize| u32::from(u16::from_be_bytes([message[4 + 2 * i], message[5 + 2 * i]]));
    let records = count(1) + count(2) + count(3);
    let mut at = question_end;
    for _ in 0..records {
        let Some(r) = query::record_at(message, at) else { return };
        if r.rtype == TYPE_OPT {
            // The class field, just before the TTL, is the OPT's payload size.
            message[r.ttl_at - 2..r.ttl_at].copy_from_slice(&UPSTREAM_PAYLOAD.to_be_bytes());
            return;
        }
        at = r.end;
    }
}

/// An upstream reply the cache did not keep (SERVFAIL, TC, TTL 0, cache off), patched for one
/// client (`head`: its header and question): its ID, flags RD and CD, its question case, TTLs at
/// most `max_ttl`, no OPT if it sent none; the question alone with TC if it does not fit.
/// Returns the length written to `buf` (0 if `data` is shorter than the question).
pub fn patch_raw(
    data: &[u8],
    head: &[u8],
    query: &Query,
    transport: DnsTransport,
    max_ttl: u32,
    buf: &mut [u8],
) -> usize {
    let q_end = query.question_end;
    let limit = transport.limit(query).min(buf.len());
    if data.len() < q_end || head.len() < q_end || q_end < HEADER_LEN || buf.len() < q_end {
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
    buf[..2].copy_from_slice(&head[..2]);
    let flags = (u16::from_be_bytes([buf[2], buf[3]]) & !(flag::RD | flag::CD)) | (query.flags & (flag::RD | flag::CD));
    buf[2..4].copy_from_slice(&flags.to_be_bytes());
    buf[HEADER_LEN..q_end].copy_from_slice(&head[HEADER_LEN..q_end]);
    fit_for_client(&mut buf[..len], max_ttl, query.edns.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::pool::NO_CAPS_AFTER;
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    /// Records what the engine asks of the network.
    #[derive(Default)]
    struct FakeWire {
        /// (token, upstream, bytes, over TCP)
        sent: Vec<(Token, SocketAddr, Vec<u8>, bool)>,
        open: HashSet<Token>,
        refuse: bool,
    }

    impl Wire for FakeWire {
        fn send_udp(&mut self, token: Token, to: SocketAddr, bytes: &[u8]) -> io::Result<()> {
            if self.refuse {
                return Err(io::ErrorKind::ConnectionRefused.into());
            }
            self.open.insert(token);
            self.sent.push((token, to, bytes.to_vec(), false));
            Ok(())
        }
        fn send_tcp(&mut self, token: Token, to: SocketAddr, bytes: &[u8]) -> io::Result<()> {
            self.open.insert(token);
            self.sent.push((token, to, bytes.to_vec(), true));
            Ok(())
        }
        fn close(&mut self, token: Token) {
            self.open.remove(&token);
        }
    }

    /// Collects replies to clients.
    #[derive(Default)]
    struct Collected(Vec<(ReplyTo, Vec<u8>)>);

    impl Replies for Collected {
        fn push(&mut self, to: ReplyTo, write: &mut dyn FnMut(&mut [u8]) -> usize) {
            let mut buf = vec![0u8; 2048];
            let n = write(&mut buf);
            if n > 0 {
                self.0.push((to, buf[..n].to_vec()));
            }
        }
    }

    fn config(upstreams: &[&str]) -> RelayConfig {
        RelayConfig {
            upstreams: upstreams.iter().map(|u| u.parse().unwrap()).collect(),
            timeout: Duration::from_millis(500),
            allow: Vec::new(),
            cache_entries: 100,
            cache_bytes: 1 << 20,
            max_ttl: 3600,
            max_pending: 100,
            max_waiters: 10_000,
            max_pending_per_prefix: 100,
            managed_for_all: true,
            routes: Vec::new(),
            health_check: None,
            health_check_interval: Duration::from_secs(5),
        }
    }

    fn engine(c: RelayConfig) -> Engine {
        Engine::new(Arc::new(c), super::super::random::system, Instant::now()).unwrap()
    }

    fn client_query(name: &str, id: u16, cd: bool) -> Vec<u8> {
        let mut p = vec![(id >> 8) as u8, id as u8, 0x01, if cd { 0x10 } else { 0 }, 0, 1, 0, 0, 0, 0, 0, 1];
        for label in name.split('.') {
            p.push(label.len() as u8);
            p.extend_from_slice(label.as_bytes());
        }
        p.extend_from_slice(&[0, 0, 1, 0, 1]);
        p.extend_from_slice(&[0, 0, 41, 0x10, 0, 0, 0, 0, 0, 0, 0]);
        p
    }

    const CLIENT: &str = "127.0.0.1:40000";
    const UDP: DnsTransport = DnsTransport::Udp { max_payload: 1232 };

    fn ask(e: &mut Engine, wire: &mut FakeWire, name: &str, id: u16, now: Instant) -> Forwarded {
        ask_from(e, wire, name, id, CLIENT, now)
    }

    fn ask_from(e: &mut Engine, wire: &mut FakeWire, name: &str, id: u16, client: &str, now: Instant) -> Forwarded {
        let packet = client_query(name, id, false);
        let mut lower = [0u8; query::MAX_NAME_LEN];
        let q = query::parse(&packet, &mut lower).unwrap();
        let mut out = [0u8; 2048];
        let client: SocketAddr = client.parse().unwrap();
        e.query(&packet, &q, &lower[..q.name_len], client, ReplyTo::Udp(client), UDP, &mut out, now, wire)
    }

    /// One prefix flooding fresh names cannot take more than its share of the pending table;
    /// another prefix still gets its questions sent, and the share frees up as answers come.
    #[test]
    fn one_prefix_holds_at_most_its_share_of_the_pending_table() {
        let mut c = config(&["192.0.2.53:53"]);
        c.max_pending_per_prefix = 10;
        let mut e = engine(c);
        let mut wire = FakeWire::default();
        let now = Instant::now();
        for i in 0..50 {
            let r = ask_from(&mut e, &mut wire, &format!("n{i}.flood.test"), i, "203.0.113.7:1000", now);
            assert_eq!(matches!(r, Forwarded::Pending), i < 10, "query {i}");
        }
        assert_eq!(e.stats.prefix_full, 40);
        let other = ask_from(&mut e, &mut wire, "www.example.test", 1, "198.51.100.9:2000", now);
        assert_eq!(other, Forwarded::Pending, "another prefix is served");
        let same24 = ask_from(&mut e, &mut wire, "x.flood.test", 2, "203.0.113.200:3000", now);
        assert!(matches!(same24, Forwarded::Answered(_)), "the whole /24 shares the limit");
        // Timeouts (no retry: one upstream) free the share.
        let mut out = Collected::default();
        e.tick(&mut out, now + Duration::from_secs(1), &mut wire);
        let again = ask_from(&mut e, &mut wire, "y.flood.test", 3, "203.0.113.7:1000", now + Duration::from_secs(1));
        assert_eq!(again, Forwarded::Pending);
    }

    /// The reply an honest upstream gives to `sent` (its ID and question as sent), with `rcode`.
    fn reply_to(sent: &[u8], rcode: u8, tc: bool) -> Vec<u8> {
        let q_end = HEADER_LEN + sent[HEADER_LEN..].iter().position(|&b| b == 0).unwrap() + 1 + 4;
        let mut r = sent[..q_end].to_vec();
        r[2] = 0x81 | if tc { 0x02 } else { 0 };
        r[3] = 0x80 | rcode;
        r[6..12].copy_from_slice(&[0, 1, 0, 0, 0, 0]);
        r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 1]);
        r
    }

    /// A reload that replaces the upstream: the question in flight to the old one is still
    /// answered by it (and its timeout retried on the new one), new questions go to the new one,
    /// and the cache starts afresh; a reload that changes only the limits keeps the cache.
    #[test]
    fn a_reload_moves_new_questions_and_keeps_those_in_flight() {
        let old: SocketAddr = "192.0.2.1:53".parse().unwrap();
        let new: SocketAddr = "192.0.2.2:53".parse().unwrap();
        let mut e = engine(config(&["192.0.2.1:53"]));
        let mut wire = FakeWire::default();
        let now = Instant::now();
        // One answer cached, one question in flight, both from the old upstream.
        assert_eq!(ask(&mut e, &mut wire, "cached.example.test", 1, now), Forwarded::Pending);
        let (token, to, sent, _) = wire.sent[0].clone();
        let mut out = Collected::default();
        assert_eq!(e.on_reply(token, &reply_to(&sent, 0, false), to, &mut out, now, &mut wire), ReplyOutcome::Taken);
        assert!(matches!(ask(&mut e, &mut wire, "cached.example.test", 2, now), Forwarded::Answered(_)));
        assert_eq!(ask(&mut e, &mut wire, "inflight.example.test", 3, now), Forwarded::Pending);
        let (token, _, sent, _) = wire.sent[1].clone();

        // Same upstreams, tighter limits: the cache stays.
        let mut tighter = config(&["192.0.2.1:53"]);
        tighter.max_pending = 50;
        e.reconfigure(Arc::new(tighter), now);
        assert!(matches!(ask(&mut e, &mut wire, "cached.example.test", 4, now), Forwarded::Answered(_)));

        let mut moved = config(&["192.0.2.2:53", "192.0.2.3:53"]);
        moved.health_check = Some("health.example.test".into());
        e.reconfigure(Arc::new(moved), now);
        // The question in flight is answered by the upstream it went to.
        let mut out = Collected::default();
        assert_eq!(e.on_reply(token, &reply_to(&sent, 0, false), old, &mut out, now, &mut wire), ReplyOutcome::Taken);
        assert_eq!(out.0.len(), 1);
        // The cache is new, so the cached name is asked again, of a new upstream.
        assert_eq!(ask(&mut e, &mut wire, "cached.example.test", 5, now), Forwarded::Pending);
        assert_eq!(wire.sent.last().unwrap().1, new);
        // Health checks go to the configured upstreams only, never to the retired one.
        e.tick(&mut Collected::default(), now, &mut wire);
        let checked: Vec<SocketAddr> = wire.sent[3..].iter().map(|s| s.1).collect();
        assert!(!checked.contains(&old) && checked.len() == 2, "{checked:?}");

        // A question in flight to an upstream the reload removed moves to the new group on timeout.
        let mut e = engine(config(&["192.0.2.1:53"]));
        let mut wire = FakeWire::default();
        assert_eq!(ask(&mut e, &mut wire, "slow.example.test", 6, now), Forwarded::Pending);
        e.reconfigure(Arc::new(config(&["192.0.2.2:53", "192.0.2.3:53"])), now);
        e.tick(&mut Collected::default(), now + Duration::from_secs(1), &mut wire);
        assert_eq!(wire.sent.len(), 2, "retried once");
        assert_ne!(wire.sent[1].1, old, "on an upstream of the new configuration");
    }

    #[test]
    fn identical_questions_share_one_query_up_to_the_bound() {
        let mut e = engine(config(&["192.0.2.53:53"]));
        let mut wire = FakeWire::default();
        let now = Instant::now();
        for id in 0..WAITERS_PER_QUESTION as u16 {
            assert_eq!(ask(&mut e, &mut wire, "www.Example.test", id, now), Forwarded::Pending);
        }
        assert!(matches!(ask(&mut e, &mut wire, "WWW.example.test", 9999, now), Forwarded::Answered(_)));
        assert_eq!((wire.sent.len(), e.stats.waiters_full), (1, 1), "SERVFAIL past the bound, no second query");
        let (token, to, sent, _) = wire.sent[0].clone();
        let mut out = Collected::default();
        assert_eq!(e.on_reply(token, &reply_to(&sent, 0, false), to, &mut out, now, &mut wire), ReplyOutcome::Taken);
        assert_eq!(out.0.len(), WAITERS_PER_QUESTION);
        assert!(wire.open.is_empty(), "the socket is closed");
        assert_eq!(e.waiting(), 0);
        // Each client gets its own ID and its own letter case back.
        assert_eq!(&out.0[7].1[..2], &[0, 7]);
        assert_eq!(&out.0[7].1[12..16], b"\x03www");
    }

    #[test]
    fn all_waiters_together_are_bounded_too() {
        let mut c = config(&["192.0.2.53:53"]);
        c.max_waiters = 3;
        let mut e = engine(c);
        let mut wire = FakeWire::default();
        let now = Instant::now();
        for i in 0..3 {
            assert_eq!(ask(&mut e, &mut wire, &format!("n{i}.test"), 1, now), Forwarded::Pending);
        }
        assert!(matches!(ask(&mut e, &mut wire, "n0.test", 2, now), Forwarded::Answered(_)));
        assert!(matches!(ask(&mut e, &mut wire, "n9.test", 2, now), Forwarded::Answered(_)));
        assert_eq!((wire.sent.len(), e.stats.waiters_full), (3, 2));
    }

    #[test]
    fn questions_go_out_with_random_case_and_our_edns_size() {
        let mut e = engine(config(&["192.0.2.53:53"]));
        let mut wire = FakeWire::default();
        let name = "abcdefghijklmnop.abcdefghijklmnop.test";
        ask(&mut e, &mut wire, name, 1, Instant::now());
        let sent = &wire.sent[0].2;
        let asked = &sent[13..13 + 16];
        assert!(asked.eq_ignore_ascii_case(b"abcdefghijklmnop"));
        assert!(asked.iter().any(u8::is_ascii_uppercase) && asked.iter().any(u8::is_ascii_lowercase), "{asked:?}");
        let n = sent.len();
        assert_eq!(u16::from_be_bytes([sent[n - 8], sent[n - 7]]), UPSTREAM_PAYLOAD, "the client's 4096 replaced");
    }

    #[test]
    fn a_reply_in_another_case_is_refused_and_an_upstream_that_never_keeps_case_loses_0x20() {
        let mut e = engine(config(&["192.0.2.53:53"]));
        let mut wire = FakeWire::default();
        let mut now = Instant::now();
        for round in 0..NO_CAPS_AFTER {
            let mut out = Collected::default();
            ask(&mut e, &mut wire, &format!("case{round}.example.test"), 1, now);
            let (token, to, sent, _) = wire.sent.last().unwrap().clone();
            let mut lowered = reply_to(&sent, 0, false);
            lowered[12..].make_ascii_lowercase();
            assert_eq!(e.on_reply(token, &lowered, to, &mut out, now, &mut wire), ReplyOutcome::Refused);
            now += Duration::from_millis(600);
            e.tick(&mut out, now, &mut wire);
            let (token, to, again, _) = wire.sent.last().unwrap().clone();
            assert_eq!(&again[12..], &sent[12..].to_ascii_lowercase()[..], "asked again in lower case");
            let mut lowered = reply_to(&again, 0, false);
            lowered[12..].make_ascii_lowercase();
            assert_eq!(e.on_reply(token, &lowered, to, &mut out, now, &mut wire), ReplyOutcome::Taken);
            assert_eq!(out.0.len(), 1, "answered");
        }
        assert_eq!((e.stats.case_mismatches, e.stats.no_caps), (3, 1));
        assert_eq!(e.take_lost_caps(), vec!["192.0.2.53:53".parse::<SocketAddr>().unwrap()], "to be logged once");
        assert!(e.take_lost_caps().is_empty());
        ask(&mut e, &mut wire, "after.example.test", 1, now);
        assert_eq!(&wire.sent.last().unwrap().2[13..18], b"after", "no 0x20 for this upstream any more");
    }

    #[test]
    fn after_keeping_case_once_a_mismatch_never_switches_0x20_off_for_a_question() {
        let mut e = engine(config(&["192.0.2.1:53"]));
        let mut wire = FakeWire::default();
        let mut now = Instant::now();
        let mut out = Collected::default();
        ask(&mut e, &mut wire, "kept.example.test", 1, now);
        let (token, to, sent, _) = wire.sent[0].clone();
        e.on_reply(token, &reply_to(&sent, 0, false), to, &mut out, now, &mut wire);
        ask(&mut e, &mut wire, "flooded.example.test", 2, now);
        let (token, to, sent, _) = wire.sent[1].clone();
        let mut lowered = reply_to(&sent, 0, false);
        lowered[12..].make_ascii_lowercase();
        assert_eq!(e.on_reply(token, &lowered, to, &mut out, now, &mut wire), ReplyOutcome::Refused);
        now += Duration::from_millis(600);
        e.tick(&mut out, now, &mut wire);
        assert_eq!(wire.sent.len(), 2, "not asked again without 0x20");
        assert_eq!(out.0.last().unwrap().1[3] & 0xf, rcode::SERVFAIL, "a timeout like any other");
        assert_eq!(e.stats.no_caps, 0);
    }

    #[test]
    fn servfail_counts_toward_the_failure_limit_and_moves_the_question() {
        let mut e = engine(config(&["192.0.2.1:53", "192.0.2.2:53"]));
        let mut wire = FakeWire::default();
        let now = Instant::now();
        let bad: SocketAddr = "192.0.2.1:53".parse().unwrap();
        for i in 0..10 {
            let mut out = Collected::default();
            ask(&mut e, &mut wire, &format!("s{i}.test"), 1, now);
            let (token, to, sent, _) = wire.sent.last().unwrap().clone();
            let rcode = if to == bad { rcode::SERVFAIL } else { 0 };
            e.on_reply(token, &reply_to(&sent, rcode, false), to, &mut out, now, &mut wire);
            if to == bad {
                let (token, to, sent, _) = wire.sent.last().unwrap().clone();
                assert_ne!(to, bad, "moved to the other upstream");
                e.on_reply(token, &reply_to(&sent, 0, false), to, &mut out, now, &mut wire);
            }
            assert_eq!(out.0[0].1[3] & 0xf, 0, "the client got the other upstream's answer");
        }
        assert_eq!(wire.sent.iter().filter(|s| s.1 == bad).count(), 3, "rests after three SERVFAILs");
    }

    #[test]
    fn a_truncated_reply_is_asked_again_over_tcp_with_the_same_id_and_case() {
        let mut e = engine(config(&["192.0.2.53:53"]));
        let mut wire = FakeWire::default();
        let now = Instant::now();
        let mut out = Collected::default();
        ask(&mut e, &mut wire, "big.example.test", 1, now);
        let (token, to, sent, _) = wire.sent[0].clone();
        e.on_reply(token, &reply_to(&sent, 0, true), to, &mut out, now, &mut wire);
        let (tcp_token, tcp_to, tcp_sent, tcp) = wire.sent[1].clone();
        assert!(tcp && tcp_to == to && tcp_sent == sent);
        assert!(out.0.is_empty());
        e.on_reply(tcp_token, &reply_to(&sent, 0, false), to, &mut out, now, &mut wire);
        assert_eq!(out.0.len(), 1);
        assert_eq!(out.0[0].1[2] & 0x02, 0, "whole");
        assert_eq!(e.stats.tcp_retries, 1);
        // A TCP retry that fails gives the client the truncated answer.
        ask(&mut e, &mut wire, "big2.example.test", 2, now);
        let (token, to, sent, _) = wire.sent[2].clone();
        e.on_reply(token, &reply_to(&sent, 0, true), to, &mut out, now, &mut wire);
        e.on_failure(wire.sent[3].0, &mut out, now, &mut wire);
        assert_eq!(out.0[1].1[2] & 0x02, 0x02, "TC: the client may ask over TCP itself");
    }

    #[test]
    fn forged_and_late_replies_are_counted_and_change_nothing() {
        let mut e = engine(config(&["192.0.2.53:53"]));
        let mut wire = FakeWire::default();
        let now = Instant::now();
        let mut out = Collected::default();
        ask(&mut e, &mut wire, "www.example.test", 1, now);
        let (token, to, sent, _) = wire.sent[0].clone();
        let good = reply_to(&sent, 0, false);
        let mut wrong_id = good.clone();
        wrong_id[1] ^= 1;
        assert_eq!(e.on_reply(token, &wrong_id, to, &mut out, now, &mut wire), ReplyOutcome::Refused);
        assert_eq!(
            e.on_reply(token, &good, "192.0.2.54:53".parse().unwrap(), &mut out, now, &mut wire),
            ReplyOutcome::Refused
        );
        assert_eq!(e.on_reply(token, &good[..5], to, &mut out, now, &mut wire), ReplyOutcome::Refused);
        assert_eq!(e.on_reply(token, &good, to, &mut out, now, &mut wire), ReplyOutcome::Taken);
        assert_eq!(e.on_reply(token, &good, to, &mut out, now, &mut wire), ReplyOutcome::Unknown);
        assert_eq!((e.stats.forged, e.stats.late, out.0.len()), (3, 1, 1));
    }

    #[test]
    fn timeouts_move_the_question_then_fail_it() {
        let mut e = engine(config(&["192.0.2.1:53", "192.0.2.2:53"]));
        let mut wire = FakeWire::default();
        let t0 = Instant::now();
        let mut out = Collected::default();
        ask(&mut e, &mut wire, "slow.test", 1, t0);
        e.tick(&mut out, t0 + Duration::from_millis(499), &mut wire);
        assert_eq!(wire.sent.len(), 1, "not yet");
        e.tick(&mut out, t0 + Duration::from_millis(500), &mut wire);
        assert_eq!(wire.sent.len(), 2);
        assert_ne!(wire.sent[0].1, wire.sent[1].1, "the other upstream");
        assert_ne!(wire.sent[0].2[..2], wire.sent[1].2[..2], "a fresh ID");
        e.tick(&mut out, t0 + Duration::from_secs(3600 * 24 * 365), &mut wire);
        assert_eq!(out.0.len(), 1);
        assert_eq!(out.0[0].1[3] & 0xf, rcode::SERVFAIL);
        assert!(wire.open.is_empty() && e.pending() == 0 && e.waiting() == 0);
    }

    static BROKEN: AtomicBool = AtomicBool::new(false);

    fn breakable(buf: &mut [u8]) -> Result<(), getrandom::Error> {
        if BROKEN.load(Ordering::Relaxed) {
            return Err(getrandom::Error::UNEXPECTED);
        }
        getrandom::fill(buf)
    }

    fn never(_: &mut [u8]) -> Result<(), getrandom::Error> {
        Err(getrandom::Error::UNSUPPORTED)
    }

    #[test]
    fn without_a_random_source_nothing_goes_out() {
        let mut c = config(&["192.0.2.53:53"]);
        c.max_pending = 10_000;
        c.max_pending_per_prefix = 10_000;
        let c = Arc::new(c);
        assert!(matches!(Engine::new(c.clone(), never, Instant::now()), Err(RelayError::Random(_))), "no start");
        let mut e = Engine::new(c, breakable, Instant::now()).unwrap();
        let mut wire = FakeWire::default();
        BROKEN.store(true, Ordering::Relaxed);
        let mut answered = 0;
        for i in 0..3000 {
            if matches!(ask(&mut e, &mut wire, &format!("r{i}.test"), 1, Instant::now()), Forwarded::Answered(_)) {
                answered += 1;
            }
        }
        BROKEN.store(false, Ordering::Relaxed);
        assert!(answered > 0 && e.stats.random_failures == answered, "{answered} SERVFAIL, {:?}", e.stats);
        assert_eq!(wire.sent.len() as u64, 3000 - answered, "only queries drawn from the first pool went out");
    }

    #[test]
    fn an_icmp_error_moves_the_question_at_once() {
        let mut e = engine(config(&["192.0.2.1:53", "192.0.2.2:53"]));
        let mut wire = FakeWire::default();
        let now = Instant::now();
        let mut out = Collected::default();
        ask(&mut e, &mut wire, "icmp.test", 1, now);
        e.on_failure(wire.sent[0].0, &mut out, now, &mut wire);
        assert_eq!((wire.sent.len(), e.stats.upstream_errors), (2, 1));
        wire.refuse = true;
        assert!(matches!(ask(&mut e, &mut wire, "refused.test", 1, now), Forwarded::Answered(_)));
        assert_eq!(e.stats.send_errors, 1);
    }

    #[test]
    fn patch_raw_gives_each_client_its_id_case_and_capped_ttls() {
        let packet = client_query("WwW.example.test", 0xabcd, true);
        let mut lower = [0u8; query::MAX_NAME_LEN];
        let q = query::parse(&packet, &mut lower).unwrap();
        let mut upstream = reply_to(&client_query("www.EXAMPLE.test", 7, false), 0, false);
        upstream[HEADER_LEN + 22..HEADER_LEN + 26].copy_from_slice(&172_800u32.to_be_bytes());
        let mut buf = [0u8; 2048];
        let n = patch_raw(&upstream, &packet[..q.question_end], &q, UDP, 60, &mut buf);
        assert_eq!(&buf[..2], &[0xab, 0xcd]);
        assert_eq!(&buf[12..q.question_end], &packet[12..q.question_end]);
        assert_eq!(buf[3] & 0x10, 0x10, "CD echoed");
        assert_eq!(&buf[n - 10..n - 6], &60u32.to_be_bytes(), "TTL capped");
        assert_eq!(patch_raw(&upstream[..20], &packet[..q.question_end], &q, UDP, 60, &mut buf), 0);
    }
}
