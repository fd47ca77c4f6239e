//! One worker's relay logic: pending table, dedupe, acceptance, retries, cache, serve-stale and
//! prefetch. It does no I/O of its own: it tells a [`Wire`] which datagrams to send, each
//! exchange from a fresh random source port, and is told what came back, with the time passed
//! in. Nothing here is shared with another worker.
//!
//! ```text
//!  client query (not managed) ─► cache: fresh ─► reply now (in the last tenth of its TTL, once:
//!                                   │             a prefetch goes upstream, nobody waits on it)
//!                                   │ stale, a refresh failed lately ─► the stale answer now
//!                                   │ miss, or stale
//!                                   ▼
//!        same question in flight? ── yes ─► wait on it (up to a bound; past it SERVFAIL,
//!                                   │ no                 never a second upstream query)
//!                                   ▼
//!        random ID, random letter case (0x20) ─► Wire::send_udp(token): a socket connected to
//!                                                the upstream, on a fresh random port
//!  datagram on token's socket ─► accept(source, ID, question and its case)
//!        │ refused: counted (forged, case), still waiting       │ TC=1: Wire::send_tcp(token')
//!        ▼ accepted: port released, cached, every waiter: copy + patch (ID, case, TTLs)
//!  tick ─► a waiter asked stale_answer_ms ago and the answer is stale: the stale answer
//!          (the upstream query goes on and refreshes the cache)
//!       ─► past the timeout ─► replies in another case came, and the upstream never kept case:
//!                              once more without 0x20
//!                              else retry once on the next upstream, else the stale answer
//!                              (and no upstream query for it for stale_refresh_s), else SERVFAIL
//! ```
//!
//! The pending table is a slab: a token names its slot (low bits) and a launch serial (high
//! bits), so finding an exchange hashes nothing; finished questions keep their buffers for the
//! next, so a miss allocates only the cache entry it stores. Questions are found by the keyed
//! hash of their cache key, computed once per query.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::cache::{fit_for_client, key_bytes, BuildPrehashed, Cache, CachePolicy, KeyHasher, Lookup, KEY_MAX};
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

/// Identifies one upstream exchange (and the socket or connection the [`Wire`] opened for it):
/// its slot in the pending table in the low [`SLOT_BITS`] bits ([`token_slot`]), a launch serial
/// above. Not reused while the exchange could be alive (the serial wraps after 2^39 launches).
pub type Token = u64;

/// Bits of a token that name its slot in the pending table.
pub const SLOT_BITS: u32 = 24;
/// The slot bits of a token.
const SLOT_MASK: u64 = (1 << SLOT_BITS) - 1;
/// Launch serials wrap below bit 63, which the I/O side sets for a TCP exchange's epoll token.
const SERIAL_MASK: u64 = (1 << (63 - SLOT_BITS)) - 1;

/// The slot of the pending table a token names: at most one live exchange holds it, so the I/O
/// side may index its sockets by it too.
#[inline]
pub fn token_slot(token: Token) -> usize {
    (token & SLOT_MASK) as usize
}

/// Finished questions kept for their buffers, at most.
const SPARE_PENDING: usize = 256;
/// A finished question whose waiters' bytes took more than this is not kept (a crowd of 4,096
/// clients must not pin its buffers for good).
const SPARE_HEADS: usize = 8192;
/// Stale answers are looked for on ticks: one may go this much before its client's timer ends,
/// never after.
const STALE_SLACK: Duration = crate::io::TICK;

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
    /// Answered now (a cache hit, a stale answer, or SERVFAIL): this many bytes are in `out`.
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
    /// Queries sent upstream, retries, prefetches and health checks included.
    pub forwarded: u64,
    /// Answers served from the cache (fresh).
    pub cache_hits: u64,
    /// Expired answers served stale (RFC 8767) while the upstreams failed or were slow.
    pub stale_answers: u64,
    /// Cached answers asked upstream again before they expired, because a client still asked
    /// for them in the last tenth of their TTL.
    pub prefetches: u64,
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
#[derive(Debug, Clone, Copy)]
struct Waiter {
    to: ReplyTo,
    /// Where its header and question (as it sent them) start in the question's `heads`.
    head_at: usize,
    query: Query,
    transport: DnsTransport,
    /// When it asked: its stale answer, if there is one, is due `stale_answer_ms` later.
    since: Instant,
}

/// Why a question went upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    /// A client asked (more may join).
    Clients,
    /// A refresh of a cached answer nobody waits on yet: a prefetch, or behind a stale answer
    /// given at once (clients may join).
    Refresh,
    /// A health check: nobody waits, never retried or cached.
    Check,
}

/// One question in flight upstream.
#[derive(Debug)]
struct Pending {
    /// The exchange in flight for it now.
    token: Token,
    /// The query as forwarded, before ID and letter case are drawn: the first client's message
    /// with the name in lower case and dnlb's EDNS size.
    query: Vec<u8>,
    /// Where the question ends in `query`.
    question_end: usize,
    /// Its cache key, and that key's hash.
    key: Vec<u8>,
    hash: u64,
    /// The waiters' headers and questions, back to back.
    heads: Vec<u8>,
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
    purpose: Purpose,
    /// The keyed hash of the prefix of the client whose question started it (charged against
    /// its share).
    prefix: Option<u64>,
}

impl Pending {
    /// A question with empty buffers.
    fn blank(now: Instant) -> Pending {
        Pending {
            token: 0,
            query: Vec::new(),
            question_end: 0,
            key: Vec::new(),
            hash: 0,
            heads: Vec::new(),
            waiters: Vec::new(),
            sent: Sent::default(),
            started: now,
            upstream: 0,
            group: 0,
            retried: false,
            caps: false,
            case_mismatch: false,
            truncated: None,
            purpose: Purpose::Clients,
            prefix: None,
        }
    }

    /// The header and question waiter `w` sent.
    fn head(&self, w: &Waiter) -> &[u8] {
        self.heads.get(w.head_at..w.head_at + w.query.question_end).unwrap_or_default()
    }

    /// Adds a waiter whose header and question are `head`.
    fn wait(&mut self, head: &[u8], to: ReplyTo, query: &Query, transport: DnsTransport, now: Instant) {
        let head_at = self.heads.len();
        self.heads.extend_from_slice(head);
        self.waiters.push(Waiter { to, head_at, query: *query, transport, since: now });
    }
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
        // The /56 moved up a bit, so the tag bit does not fold two neighbouring /56s together.
        std::net::IpAddr::V6(a) => ((u128::from(a) >> 72) << 1) | 1,
    }
}

/// One worker's relay logic.
pub struct Engine {
    config: Arc<RelayConfig>,
    /// The upstreams: which one a question goes to, what was learnt of each, health checks.
    pool: UpstreamPool,
    /// The pending table: a question per slot, found by its token's slot bits.
    slots: Vec<Option<Pending>>,
    /// Slots free for the next question.
    free: Vec<usize>,
    /// Questions in `slots`.
    live: usize,
    /// Finished questions, kept for their buffers.
    spare: Vec<Pending>,
    /// The exchange in flight for each cache key, by the key's hash.
    by_key: HashMap<u64, Token, BuildPrehashed>,
    /// Clients waiting, all pending questions together.
    waiting: usize,
    /// Upstream queries in flight per client prefix that started them, by the prefix's hash.
    per_prefix: HashMap<u64, usize, BuildPrehashed>,
    /// Launches so far (the high bits of the next token).
    serial: u64,
    cache: Cache,
    /// Hashes cache keys and client prefixes under this worker's own random key.
    keys: KeyHasher,
    random: Random,
    /// The message being sent (reused, so a send allocates nothing).
    scratch: Vec<u8>,
    /// Tokens past their deadline, and those with a stale answer due (reused by `tick`).
    expired: Vec<Token>,
    stale_due: Vec<Token>,
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
            cache: Cache::new(CachePolicy::of(&config)),
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
            spare: Vec::new(),
            by_key: HashMap::default(),
            waiting: 0,
            per_prefix: HashMap::default(),
            serial: 0,
            keys: KeyHasher::new(),
            random,
            scratch: Vec::new(),
            expired: Vec::new(),
            stale_due: Vec::new(),
            servfail: Template::empty(false, rcode::SERVFAIL),
            stats: RelayStats::default(),
            config,
        })
    }

    /// Applies a reloaded `[relay]` in place. Questions in flight stay and are answered: an
    /// upstream they went to that the new configuration drops is kept, retired, until they end;
    /// their route is looked up again for a retry. Upstreams that stay keep what was learnt of
    /// them (failures, 0x20). The cache starts afresh only when what its answers came from
    /// changes (upstreams, routes); otherwise it keeps its answers, stale ones included, under
    /// the new bounds. Limits and the allow list apply to new questions.
    pub fn reconfigure(&mut self, config: Arc<RelayConfig>, now: Instant) {
        let in_flight: Vec<SocketAddr> = self.slots.iter().flatten().map(|p| self.pool.addr(p.upstream)).collect();
        self.pool.reconfigure(&config, in_flight.iter().copied(), now);
        for (p, addr) in self.slots.iter_mut().flatten().zip(in_flight) {
            let name = p.query.get(HEADER_LEN..p.question_end.saturating_sub(4)).unwrap_or_default();
            p.group = if p.purpose == Purpose::Check { 0 } else { self.pool.group_for(name) };
            p.upstream = self.pool.locate(p.group, addr);
        }
        let policy = CachePolicy::of(&config);
        if self.config.upstreams != config.upstreams || self.config.routes != config.routes {
            self.cache = Cache::new(policy);
        } else {
            self.cache.reconfigure(policy, now);
        }
        self.config = config;
    }

    /// Upstream exchanges in flight.
    pub fn pending(&self) -> usize {
        self.live
    }

    /// Clients waiting on them.
    pub fn waiting(&self) -> usize {
        self.waiting
    }

    /// What the relay holds now, for the metrics.
    pub fn gauges(&self) -> RelayGauges {
        RelayGauges {
            pending: self.live,
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
        // A cache hit allocates nothing: the key is built on the stack and hashed once.
        let mut key_buf = [0u8; KEY_MAX];
        let dnssec_ok = query.edns.is_some_and(|e| e.dnssec_ok);
        let checking_disabled = query.flags & flag::CD != 0;
        let key = key_bytes(name, query.qtype, query.qclass, dnssec_ok, checking_disabled, &mut key_buf);
        let hash = self.keys.hash(key);
        match self.cache.lookup(hash, key, packet, query, transport, out, now) {
            Lookup::Fresh { len, prefetch } => {
                self.stats.cache_hits += 1;
                if prefetch {
                    self.refresh(packet, query, name, key, hash, true, now, wire);
                }
                return Forwarded::Answered(len);
            }
            Lookup::Stale { recheck } => {
                // Stale at once while a refresh failed lately (no upstream query), or when the
                // client-response timer is zero (a refresh goes upstream behind it).
                let at_once = self.config.stale.is_some_and(|s| s.answer_after.is_zero());
                if recheck || at_once {
                    if let Some(n) = self.cache.write_stale(hash, key, packet, query, transport, out, now) {
                        self.stats.stale_answers += 1;
                        if !recheck {
                            self.refresh(packet, query, name, key, hash, false, now, wire);
                        }
                        return Forwarded::Answered(n);
                    }
                }
            }
            Lookup::Miss => {}
        }
        let q_end = query.question_end;
        if let Some(p) = self.by_key.get(&hash).and_then(|&t| live_mut(&mut self.slots, t)).filter(|p| p.key == key) {
            if p.waiters.len() < WAITERS_PER_QUESTION && self.waiting < self.config.max_waiters {
                if let Some(head) = packet.get(..q_end) {
                    p.wait(head, to, query, transport, now);
                    self.waiting += 1;
                    return Forwarded::Pending;
                }
            } else {
                self.stats.waiters_full += 1;
            }
            return self.stale_or_servfail(hash, key, packet, query, transport, out, now);
        }
        if self.live >= self.config.max_pending {
            self.stats.pending_full += 1;
            return self.stale_or_servfail(hash, key, packet, query, transport, out, now);
        }
        if self.waiting >= self.config.max_waiters {
            self.stats.waiters_full += 1;
            return self.stale_or_servfail(hash, key, packet, query, transport, out, now);
        }
        let prefix = self.keys.hash_u128(client_prefix(client));
        if self.per_prefix.get(&prefix).copied().unwrap_or(0) >= self.config.max_pending_per_prefix {
            self.stats.prefix_full += 1;
            return self.stale_or_servfail(hash, key, packet, query, transport, out, now);
        }
        let Some(mut p) = self.question(packet, query, name, key, hash, now) else {
            return self.stale_or_servfail(hash, key, packet, query, transport, out, now);
        };
        p.wait(&packet[..q_end], to, query, transport, now);
        p.prefix = Some(prefix);
        match self.launch(p, now, wire) {
            Ok(()) => {
                self.waiting += 1;
                *self.per_prefix.entry(prefix).or_insert(0) += 1;
                Forwarded::Pending
            }
            Err(p) => {
                self.recycle(*p);
                self.stale_or_servfail(hash, key, packet, query, transport, out, now)
            }
        }
    }

    /// A question for `packet` (its name lower-cased in `name`), ready to launch, with nobody
    /// waiting yet; `None` if the packet does not hold the question `query` describes.
    fn question(
        &mut self,
        packet: &[u8],
        query: &Query,
        name: &[u8],
        key: &[u8],
        hash: u64,
        now: Instant,
    ) -> Option<Pending> {
        let q_end = query.question_end;
        if packet.len() < q_end || name.len() != query.name_len || q_end != HEADER_LEN + name.len() + 4 {
            return None;
        }
        let mut p = self.spare.pop().unwrap_or_else(|| Pending::blank(now));
        p.query.extend_from_slice(packet);
        p.query[HEADER_LEN..HEADER_LEN + name.len()].copy_from_slice(name);
        advertise_payload(&mut p.query, q_end);
        p.question_end = q_end;
        p.key.extend_from_slice(key);
        p.hash = hash;
        p.group = self.pool.group_for(name);
        p.upstream = self.pool.choose(p.group, now, None);
        p.caps = self.pool.caps(p.upstream);
        p.started = now;
        p.purpose = Purpose::Clients;
        Some(p)
    }

    /// Asks upstream for a cached answer nobody waits on yet (a `prefetch` of a fresh one, or a
    /// refresh behind a stale answer), unless it is in flight already or the pending table is
    /// full. A client asking meanwhile joins it.
    #[allow(clippy::too_many_arguments)]
    fn refresh(
        &mut self,
        packet: &[u8],
        query: &Query,
        name: &[u8],
        key: &[u8],
        hash: u64,
        prefetch: bool,
        now: Instant,
        wire: &mut dyn Wire,
    ) {
        if self.by_key.contains_key(&hash) || self.live >= self.config.max_pending {
            return;
        }
        let Some(mut p) = self.question(packet, query, name, key, hash, now) else { return };
        p.purpose = Purpose::Refresh;
        match self.launch(p, now, wire) {
            Ok(()) => self.stats.prefetches += u64::from(prefetch),
            Err(p) => self.recycle(*p),
        }
    }

    /// No upstream query can be made for this client now (tables full, no socket): the stale
    /// answer if the cache may serve one (RFC 8767 is for this too), else SERVFAIL.
    #[allow(clippy::too_many_arguments)]
    fn stale_or_servfail(
        &mut self,
        hash: u64,
        key: &[u8],
        packet: &[u8],
        query: &Query,
        transport: DnsTransport,
        out: &mut [u8],
        now: Instant,
    ) -> Forwarded {
        if let Some(n) = self.cache.write_stale(hash, key, packet, query, transport, out, now) {
            self.stats.stale_answers += 1;
            return Forwarded::Answered(n);
        }
        self.servfail_now(packet, query, transport, out)
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
        let Some(token) = self.take_slot() else {
            self.stats.pending_full += 1;
            return Err(Box::new(p));
        };
        let to = self.pool.addr(p.upstream);
        if wire.send_udp(token, to, &self.scratch).is_err() {
            wire.close(token);
            self.free.push(token_slot(token));
            self.stats.send_errors += 1;
            self.pool.failed(p.upstream, now);
            return Err(Box::new(p));
        }
        self.stats.forwarded += 1;
        p.sent.upstream = to;
        p.sent.id = id;
        p.sent.question.clear();
        p.sent.question.extend_from_slice(&self.scratch[HEADER_LEN..q_end]);
        p.sent.exact_case = p.caps;
        p.started = now;
        self.file(p, token);
        Ok(())
    }

    /// A free slot of the pending table, as a fresh token; `None` past the slots a token can name.
    fn take_slot(&mut self) -> Option<Token> {
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None if (self.slots.len() as u64) < SLOT_MASK => {
                self.slots.push(None);
                self.slots.len() - 1
            }
            None => return None,
        };
        self.serial = (self.serial + 1) & SERIAL_MASK;
        Some((self.serial << SLOT_BITS) | slot as u64)
    }

    /// Files `p` as pending under `token` (whose slot [`Engine::take_slot`] gave).
    fn file(&mut self, mut p: Pending, token: Token) {
        p.token = token;
        if p.purpose != Purpose::Check {
            self.by_key.insert(p.hash, token);
        }
        self.slots[token_slot(token)] = Some(p);
        self.live += 1;
    }

    /// Takes exchange `token` out of the tables and closes its socket. The question's prefix
    /// stays charged while it is retried (`launch` files it again under a new token).
    fn remove(&mut self, token: Token, wire: &mut dyn Wire) -> Option<Pending> {
        let slot = self.slots.get_mut(token_slot(token))?;
        if slot.as_ref()?.token != token {
            return None;
        }
        let p = slot.take()?;
        self.free.push(token_slot(token));
        self.live -= 1;
        wire.close(token);
        if self.by_key.get(&p.hash) == Some(&token) {
            self.by_key.remove(&p.hash);
        }
        Some(p)
    }

    /// A question is over for good (answered or failed): its prefix's share is free again, and
    /// its buffers are kept for the next one.
    fn recycle(&mut self, mut p: Pending) {
        if let Some(prefix) = p.prefix.take() {
            if let Some(n) = self.per_prefix.get_mut(&prefix) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.per_prefix.remove(&prefix);
                }
            }
        }
        if self.spare.len() < SPARE_PENDING && p.heads.capacity() <= SPARE_HEADS {
            p.query.clear();
            p.key.clear();
            p.heads.clear();
            p.waiters.clear();
            p.truncated = None;
            p.retried = false;
            p.case_mismatch = false;
            self.spare.push(p);
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
        let Some(p) = live_mut(&mut self.slots, token) else {
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
        if p.purpose == Purpose::Check {
            self.recycle(p);
            return ReplyOutcome::Taken;
        }
        if flags & flag::TC != 0 && !over_tcp {
            match self.retry_over_tcp(p, data, now, wire) {
                Ok(()) => return ReplyOutcome::Taken,
                Err(back) => p = *back,
            }
        }
        self.cache.insert(p.hash, &p.key, data, now);
        self.deliver(&p, data, now, out);
        self.recycle(p);
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
        let Some(token) = self.take_slot() else { return Err(Box::new(p)) };
        if wire.send_tcp(token, p.sent.upstream, &self.scratch).is_err() {
            wire.close(token);
            self.free.push(token_slot(token));
            self.stats.send_errors += 1;
            return Err(Box::new(p));
        }
        self.stats.tcp_retries += 1;
        p.truncated = Some(data.into());
        p.started = now;
        self.file(p, token);
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
            self.recycle(p);
            return;
        }
        self.pool.failed(p.upstream, now);
        self.retry_or_fail(p, now, out, wire);
    }

    /// Once more on the next upstream of its group if it has not moved yet, else the stale
    /// answer or SERVFAIL.
    fn retry_or_fail(&mut self, mut p: Pending, now: Instant, out: &mut dyn Replies, wire: &mut dyn Wire) {
        if !p.retried && p.purpose != Purpose::Check && self.pool.group_len(p.group) > 1 {
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
        self.fail(&p, now, out);
        self.recycle(p);
    }

    /// Answers every waiter of `p` from `data` (through the cache where it kept the reply).
    fn deliver(&mut self, p: &Pending, data: &[u8], now: Instant, out: &mut dyn Replies) {
        let max_ttl = self.config.max_ttl;
        let cache = &self.cache;
        for w in &p.waiters {
            let head = p.head(w);
            out.push(w.to, &mut |buf| match cache.answer(p.hash, &p.key, head, &w.query, w.transport, buf, now) {
                Some(n) => n,
                None => patch_raw(data, head, &w.query, w.transport, max_ttl, buf),
            });
        }
        self.waiting = self.waiting.saturating_sub(p.waiters.len());
    }

    /// Every upstream failed `p`: its waiters get the stale answer if there is one (and its name
    /// is not asked upstream again for `stale_refresh_s`), else SERVFAIL.
    fn fail(&mut self, p: &Pending, now: Instant, out: &mut dyn Replies) {
        if p.purpose == Purpose::Check {
            return;
        }
        if self.cache.has_stale(p.hash, &p.key, now) {
            self.cache.refresh_failed(p.hash, &p.key, now);
            let cache = &self.cache;
            for w in &p.waiters {
                let head = p.head(w);
                out.push(w.to, &mut |buf| {
                    cache.write_stale(p.hash, &p.key, head, &w.query, w.transport, buf, now).unwrap_or(0)
                });
            }
            self.stats.stale_answers += p.waiters.len() as u64;
        } else {
            let servfail = &self.servfail;
            for w in &p.waiters {
                let head = p.head(w);
                out.push(w.to, &mut |buf| answer::write_reply(head, &w.query, servfail, w.transport, buf).len);
            }
        }
        self.waiting = self.waiting.saturating_sub(p.waiters.len());
    }

    /// Sends the health-check query to every upstream whose turn it is. Its reply resets the
    /// upstream's failures (in `on_reply`); its timeout counts one (in `tick`); nobody waits on it.
    fn check_upstreams(&mut self, now: Instant, wire: &mut dyn Wire) {
        for i in 0..self.pool.active() {
            let Some(group) = self.pool.check_due(i, now) else { continue };
            let mut p = self.spare.pop().unwrap_or_else(|| Pending::blank(now));
            let Some(query) = self.pool.health_query() else {
                self.spare.push(p);
                return;
            };
            p.query.extend_from_slice(query);
            p.question_end = p.query.len();
            p.upstream = i;
            p.group = group;
            p.retried = true;
            p.caps = self.pool.caps(i);
            p.purpose = Purpose::Check;
            p.started = now;
            // A check that cannot be sent is counted in `launch`; the next one is due anyway.
            if let Err(p) = self.launch(p, now, wire) {
                self.recycle(*p);
            }
        }
    }

    /// Gives the waiters whose client-response timer ran out the stale answer, where there is
    /// one; their question stays in flight and refreshes the cache when its answer comes.
    fn answer_stale_due(&mut self, token: Token, now: Instant, out: &mut dyn Replies) {
        let Some(stale) = self.config.stale else { return };
        let Some(p) = live_mut(&mut self.slots, token) else { return };
        if !self.cache.has_stale(p.hash, &p.key, now) {
            return;
        }
        let due = p
            .waiters
            .iter()
            .take_while(|w| now.saturating_duration_since(w.since) + STALE_SLACK >= stale.answer_after)
            .count();
        for w in &p.waiters[..due] {
            let head = p.heads.get(w.head_at..w.head_at + w.query.question_end).unwrap_or_default();
            let cache = &self.cache;
            out.push(w.to, &mut |buf| {
                cache.write_stale(p.hash, &p.key, head, &w.query, w.transport, buf, now).unwrap_or(0)
            });
        }
        p.waiters.drain(..due);
        self.waiting = self.waiting.saturating_sub(due);
        self.stats.stale_answers += due as u64;
    }

    /// Gives stale answers that are due, moves on every exchange past the timeout, and sends due
    /// health checks.
    pub fn tick(&mut self, out: &mut dyn Replies, now: Instant, wire: &mut dyn Wire) {
        self.check_upstreams(now, wire);
        let timeout = self.config.timeout;
        let stale_after = self.config.stale.map(|s| s.answer_after);
        let mut expired = std::mem::take(&mut self.expired);
        let mut stale_due = std::mem::take(&mut self.stale_due);
        expired.clear();
        stale_due.clear();
        for p in self.slots.iter().flatten() {
            if now.saturating_duration_since(p.started) >= timeout {
                expired.push(p.token);
            }
            let first = p.waiters.first().map(|w| now.saturating_duration_since(w.since) + STALE_SLACK);
            if first.zip(stale_after).is_some_and(|(waited, after)| waited >= after) {
                stale_due.push(p.token);
            }
        }
        for &token in &stale_due {
            self.answer_stale_due(token, now, out);
        }
        for &token in &expired {
            let Some(mut p) = self.remove(token, wire) else { continue };
            self.stats.timeouts += 1;
            if let Some(truncated) = p.truncated.take() {
                // The TCP retry took too long: the client gets the truncated answer.
                self.deliver(&p, &truncated, now, out);
                self.recycle(p);
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
                    self.fail(&p, now, out);
                    self.recycle(p);
                    continue;
                }
            }
            self.pool.failed(p.upstream, now);
            self.retry_or_fail(p, now, out, wire);
        }
        self.expired = expired;
        self.stale_due = stale_due;
    }
}

/// The live question of exchange `token`, if it is still in flight.
#[inline]
fn live_mut(slots: &mut [Option<Pending>], token: Token) -> Option<&mut Pending> {
    slots.get_mut(token_slot(token))?.as_mut().filter(|p| p.token == token)
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
            stale: None,
            prefetch: false,
        }
    }

    fn engine(c: RelayConfig) -> Engine {
        Engine::new(Arc::new(c), super::super::random::system, Instant::now()).unwrap()
    }

    /// `upstreams` with serve-stale (stale max 100 s, TTL 30, refresh 10 s, client timer
    /// 1,800 ms) and prefetch on.
    fn stale_config(upstreams: &[&str]) -> RelayConfig {
        RelayConfig {
            stale: Some(crate::config::StaleConfig {
                max: Duration::from_secs(100),
                ttl: 30,
                refresh: Duration::from_secs(10),
                answer_after: Duration::from_millis(1800),
            }),
            prefetch: true,
            timeout: Duration::from_secs(2),
            ..config(upstreams)
        }
    }

    /// Asks `name` (which must miss); answers the upstream query it sends with a TTL of 60 and
    /// checks that the client got that answer.
    fn ask_answered(e: &mut Engine, wire: &mut FakeWire, name: &str, now: Instant) {
        assert_eq!(ask(e, wire, name, 1, now), Forwarded::Pending);
        let (token, to, sent, _) = wire.sent.last().unwrap().clone();
        let mut out = Collected::default();
        assert_eq!(e.on_reply(token, &reply_to(&sent, 0, false), to, &mut out, now, wire), ReplyOutcome::Taken);
        assert_eq!(out.0.len(), 1);
    }

    /// An engine on `config` whose cache holds `www.example.test` (TTL 60) from the time returned.
    fn www_cached(config: RelayConfig) -> (Engine, FakeWire, Instant) {
        let mut e = engine(config);
        let mut wire = FakeWire::default();
        let t0 = Instant::now();
        ask_answered(&mut e, &mut wire, "www.example.test", t0);
        (e, wire, t0)
    }

    /// The reply a client got at once, parsed: (RCODE, first answer TTL).
    fn asked_now(e: &mut Engine, wire: &mut FakeWire, name: &str, now: Instant) -> Option<(u8, u32)> {
        let packet = client_query(name, 5, false);
        let mut lower = [0u8; query::MAX_NAME_LEN];
        let q = query::parse(&packet, &mut lower).unwrap();
        let mut out = [0u8; 2048];
        let client: SocketAddr = CLIENT.parse().unwrap();
        match e.query(&packet, &q, &lower[..q.name_len], client, ReplyTo::Udp(client), UDP, &mut out, now, wire) {
            Forwarded::Answered(n) => Some((out[3] & 0xf, first_ttl(&out[..n]))),
            Forwarded::Pending => None,
        }
    }

    /// The TTL of the first answer record of `reply` (one question, an A record answer), or 0.
    fn first_ttl(reply: &[u8]) -> u32 {
        let q_end = HEADER_LEN + reply[HEADER_LEN..].iter().position(|&b| b == 0).unwrap() + 1 + 4;
        reply.get(q_end + 6..q_end + 10).map_or(0, |t| u32::from_be_bytes(t.try_into().unwrap()))
    }

    #[test]
    fn an_upstream_that_fails_gets_the_stale_answer_served_and_is_rechecked_later() {
        let (mut e, mut wire, t0) = www_cached(stale_config(&["192.0.2.53:53"]));
        assert_eq!(asked_now(&mut e, &mut wire, "www.example.test", t0 + Duration::from_secs(10)), Some((0, 50)));
        // Expired: asked upstream again, which fails (ICMP): the client gets the stale answer.
        let t1 = t0 + Duration::from_secs(61);
        assert_eq!(asked_now(&mut e, &mut wire, "www.example.test", t1), None);
        let mut out = Collected::default();
        e.on_failure(wire.sent.last().unwrap().0, &mut out, t1, &mut wire);
        assert_eq!(out.0.len(), 1);
        assert_eq!((out.0[0].1[3] & 0xf, first_ttl(&out.0[0].1)), (0, 30), "stale, TTL 30");
        assert_eq!(&out.0[0].1[..2], &[0, 5], "the waiting client's ID");
        // For stale_refresh_s the stale answer comes at once and nothing goes upstream.
        let sent = wire.sent.len();
        assert_eq!(asked_now(&mut e, &mut wire, "www.example.test", t1 + Duration::from_secs(9)), Some((0, 30)));
        assert_eq!(wire.sent.len(), sent, "no upstream query while the recheck timer runs");
        // Then upstream is asked again, and its answer is fresh.
        let t2 = t1 + Duration::from_secs(10);
        ask_answered(&mut e, &mut wire, "www.example.test", t2);
        assert_eq!(asked_now(&mut e, &mut wire, "www.example.test", t2), Some((0, 60)));
        assert_eq!(e.stats.stale_answers, 2);
        assert!(wire.open.is_empty() && e.waiting() == 0);
    }

    #[test]
    fn a_slow_upstream_gets_the_stale_answer_served_after_the_client_timer_and_still_refreshes() {
        let (mut e, mut wire, t0) = www_cached(stale_config(&["192.0.2.53:53"]));
        let t1 = t0 + Duration::from_secs(70);
        assert_eq!(asked_now(&mut e, &mut wire, "www.example.test", t1), None);
        let mut out = Collected::default();
        e.tick(&mut out, t1 + Duration::from_millis(1700), &mut wire);
        assert!(out.0.is_empty(), "not yet");
        e.tick(&mut out, t1 + Duration::from_millis(1750), &mut wire);
        assert_eq!(out.0.len(), 1, "within stale_answer_ms, on the tick before it ends");
        assert_eq!(first_ttl(&out.0[0].1), 30);
        assert_eq!(e.waiting(), 0);
        // The upstream query goes on; its answer refreshes the cache.
        let (token, to, sent, _) = wire.sent.last().unwrap().clone();
        assert!(wire.open.contains(&token));
        let t2 = t1 + Duration::from_millis(1900);
        assert_eq!(e.on_reply(token, &reply_to(&sent, 0, false), to, &mut out, t2, &mut wire), ReplyOutcome::Taken);
        assert_eq!(out.0.len(), 1, "nobody left to answer");
        assert_eq!(asked_now(&mut e, &mut wire, "www.example.test", t2), Some((0, 60)));
        // A client timer of zero: the stale answer at once, the refresh behind it.
        let mut c = stale_config(&["192.0.2.53:53"]);
        c.stale = c.stale.map(|s| crate::config::StaleConfig { answer_after: Duration::ZERO, ..s });
        let mut e = engine(c);
        let mut wire = FakeWire::default();
        ask_answered(&mut e, &mut wire, "www.example.test", t0);
        assert_eq!(asked_now(&mut e, &mut wire, "www.example.test", t1), Some((0, 30)));
        assert_eq!((wire.sent.len(), e.pending()), (2, 1), "refreshed behind the stale answer");
        assert_eq!(asked_now(&mut e, &mut wire, "www.example.test", t1), Some((0, 30)));
        assert_eq!(wire.sent.len(), 2, "one refresh in flight");
    }

    #[test]
    fn clients_share_by_their_24_or_56() {
        let p = |s: &str| client_prefix(s.parse().unwrap());
        assert_eq!(p("192.0.2.1:1"), p("192.0.2.200:2"));
        assert_ne!(p("192.0.2.1:1"), p("192.0.3.1:1"));
        assert_eq!(p("[::ffff:192.0.2.9]:1"), p("192.0.2.1:1"), "IPv4-mapped counts as IPv4");
        assert_eq!(p("[2001:db8:0:1200::1]:1"), p("[2001:db8:0:12ff::2]:1"), "one /56");
        assert_ne!(p("[2001:db8:0:1200::1]:1"), p("[2001:db8:0:1300::1]:1"), "neighbouring /56s");
        assert_ne!(p("[2001:db8:0:1200::1]:1"), p("[2001:db8:0:1100::1]:1"));
        assert_ne!(p("[::c000:201]:1"), p("192.0.2.1:1"), "the families never meet");
    }

    #[test]
    fn a_full_pending_table_serves_the_stale_answer_not_servfail() {
        let (mut e, mut wire, t0) = www_cached(RelayConfig { max_pending: 1, ..stale_config(&["192.0.2.53:53"]) });
        let t1 = t0 + Duration::from_secs(61);
        // Another question fills the table; the expired name can go nowhere upstream.
        assert_eq!(asked_now(&mut e, &mut wire, "other.example.test", t1), None);
        assert_eq!(asked_now(&mut e, &mut wire, "www.example.test", t1), Some((0, 30)), "stale, TTL 30");
        assert_eq!(e.stats.stale_answers, 1);
        // A name with nothing cached still gets SERVFAIL.
        assert_eq!(asked_now(&mut e, &mut wire, "new.example.test", t1).map(|(rcode, _)| rcode), Some(2));
    }

    #[test]
    fn no_stale_answer_past_the_stale_maximum_nor_without_one() {
        let (mut e, mut wire, t0) = www_cached(stale_config(&["192.0.2.53:53"]));
        // Expired 100 s ago and more: SERVFAIL, however the upstream fails.
        let late = t0 + Duration::from_secs(160);
        assert_eq!(asked_now(&mut e, &mut wire, "www.example.test", late), None);
        let mut out = Collected::default();
        e.on_failure(wire.sent.last().unwrap().0, &mut out, late, &mut wire);
        assert_eq!(out.0[0].1[3] & 0xf, rcode::SERVFAIL);
        // A name never cached: SERVFAIL as before.
        assert_eq!(asked_now(&mut e, &mut wire, "never.example.test", late), None);
        e.on_failure(wire.sent.last().unwrap().0, &mut out, late, &mut wire);
        assert_eq!(out.0[1].1[3] & 0xf, rcode::SERVFAIL);
        // Without serve-stale, an expired name fails as it always did.
        let mut e = engine(config(&["192.0.2.53:53"]));
        ask_answered(&mut e, &mut wire, "www.example.test", t0);
        assert_eq!(asked_now(&mut e, &mut wire, "www.example.test", t0 + Duration::from_secs(61)), None);
        e.on_failure(wire.sent.last().unwrap().0, &mut out, t0, &mut wire);
        assert_eq!(out.0[2].1[3] & 0xf, rcode::SERVFAIL);
        assert_eq!(e.stats.stale_answers, 0);
    }

    #[test]
    fn a_name_asked_in_the_last_tenth_of_its_ttl_is_prefetched_once_and_never_misses() {
        let mut e = engine(stale_config(&["192.0.2.53:53"]));
        let mut wire = FakeWire::default();
        let t0 = Instant::now();
        ask_answered(&mut e, &mut wire, "pop.example.test", t0);
        assert_eq!(asked_now(&mut e, &mut wire, "pop.example.test", t0 + Duration::from_secs(53)), Some((0, 7)));
        assert_eq!(wire.sent.len(), 1, "not in the last tenth yet");
        let t1 = t0 + Duration::from_secs(54);
        assert_eq!(asked_now(&mut e, &mut wire, "pop.example.test", t1), Some((0, 6)), "answered from the cache");
        assert_eq!((wire.sent.len(), e.stats.prefetches), (2, 1), "and asked upstream behind it");
        assert_eq!(asked_now(&mut e, &mut wire, "pop.example.test", t1), Some((0, 6)));
        assert_eq!(wire.sent.len(), 2, "once per entry");
        let (token, to, sent, _) = wire.sent[1].clone();
        let mut out = Collected::default();
        e.on_reply(token, &reply_to(&sent, 0, false), to, &mut out, t1, &mut wire);
        assert!(out.0.is_empty(), "nobody waited");
        assert_eq!(asked_now(&mut e, &mut wire, "pop.example.test", t0 + Duration::from_secs(61)), Some((0, 53)));
        assert_eq!(e.stats.cache_hits, 4);
        // Off: no upstream query until it expires.
        let mut c = stale_config(&["192.0.2.53:53"]);
        c.prefetch = false;
        let mut e = engine(c);
        let mut wire = FakeWire::default();
        ask_answered(&mut e, &mut wire, "pop.example.test", t0);
        assert_eq!(asked_now(&mut e, &mut wire, "pop.example.test", t1), Some((0, 6)));
        assert_eq!((wire.sent.len(), e.stats.prefetches), (1, 0));
    }

    #[test]
    fn stale_answers_survive_a_reload_that_keeps_the_upstreams() {
        let (mut e, mut wire, t0) = www_cached(stale_config(&["192.0.2.53:53"]));
        let mut smaller = stale_config(&["192.0.2.53:53"]);
        smaller.cache_entries = 50;
        smaller.max_ttl = 600;
        let t1 = t0 + Duration::from_secs(61);
        e.reconfigure(Arc::new(smaller), t1);
        assert_eq!(asked_now(&mut e, &mut wire, "www.example.test", t1), None);
        let mut out = Collected::default();
        e.on_failure(wire.sent.last().unwrap().0, &mut out, t1, &mut wire);
        assert_eq!(first_ttl(&out.0[0].1), 30, "still there after the reload, served stale");
        e.reconfigure(Arc::new(stale_config(&["192.0.2.54:53"])), t1);
        assert_eq!(asked_now(&mut e, &mut wire, "www.example.test", t1), None, "new upstreams: a new cache");
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
