//! A worker's handler: the per-query logic (parse, look up, copy and patch, or relay), shared by
//! UDP and TCP on one core with one rotation state, plus the core's TCP connections, its relay
//! and its rate limiter. No socket code of its own: the I/O backend hands it datagrams and wakes
//! it when its epoll descriptor (TCP, relay) is ready.
//!
//! ```text
//!  bytes ─► query::parse ─┬─ Drop ────────────────────────────────► (no reply, counted)
//!                         ├─ NotImplemented / FormatError ─────────► header-only NOTIMP / FORMERR
//!                         └─ Query ─┬─ EDNS version > 0 ───────────► BADVERS
//!                                   ├─ snapshot: managed name ─────► template or window copy + patch
//!                                   └─ not managed ────────────────► the relay (REFUSED without one)
//!  UDP reply ─► rate limit (if [rrl]): send · slip (TC=1, question only) · drop
//! ```

use std::io;
use std::net::SocketAddr;
use std::os::fd::BorrowedFd;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::Guard;

use crate::config::{RelayConfig, RrlConfig};
use crate::dns::answer::{self, Template, Transport};
use crate::dns::query::{self, rcode, Query, Reject, MAX_NAME_LEN};
use crate::dns::{rtype, CLASS_IN};
use crate::edge::rrl::{Decision, Limiter};
use crate::edge::settings::{EdgeHandle, EdgeSettings};
use crate::edge::tcp::{Answerer, TcpSide};
use crate::io::{DropReason, FramePath, Handler, Outbox, Peer};
use crate::metrics::{CounterBlocks, WorkerCounters};
use crate::prefix;
use crate::relay::engine::{Forwarded, Replies, ReplyTo};
use crate::relay::sockets::Relay;
use crate::snapshot::{Lookup, Snapshot, SnapshotHandle};

/// Answers queries from the current snapshot. One per worker thread (and per TCP connection).
pub struct Responder {
    snapshots: SnapshotHandle,
    current: Guard<Arc<Snapshot>>,
    generation: u64,
    rotation: Vec<u32>,
    counters: CounterBlocks,
    block: usize,
    refused: Template,
    name: [u8; MAX_NAME_LEN],
    relay_config: Option<Arc<RelayConfig>>,
    /// This worker's relay (upstream sockets, pending table, cache), for UDP and TCP clients.
    relay: Option<Relay>,
}

/// What [`Responder::answer`] came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// A reply of this many bytes is in the output buffer.
    Reply(usize),
    /// Sent upstream (or joined a question in flight): the reply comes later.
    Relayed,
    /// No reply (not a query).
    Nothing,
}

/// Who sent a query, as far as the responder needs to know.
#[derive(Debug, Clone, Copy)]
pub enum Client<'a> {
    /// A UDP datagram's sender, decoded only when needed.
    Udp(Peer<'a>),
    /// A UDP datagram that came as a frame on an XSK (the XDP backend): its sender, and the
    /// frame headers a later (relayed) reply goes out with.
    Frame {
        /// The sender.
        peer: SocketAddr,
        /// MACs, VLAN tag, our address and port.
        path: &'a FramePath,
    },
    /// A TCP connection of this worker.
    Tcp {
        /// The connection's peer.
        peer: SocketAddr,
        /// Its slot in the worker's connection table.
        slot: usize,
        /// Its generation (slots are reused).
        generation: u32,
    },
    /// Unknown (benchmarks, fuzzing): the relay is not used.
    Unknown,
    /// A known address with no connection to answer on (diagnostics: `dnlb explain --client`).
    Address(SocketAddr),
}

impl Client<'_> {
    fn addr(&self) -> Option<SocketAddr> {
        match self {
            Client::Udp(p) => p.socket_addr(),
            Client::Tcp { peer, .. } | Client::Frame { peer, .. } | Client::Address(peer) => Some(*peer),
            Client::Unknown => None,
        }
    }

    /// Where a relayed answer for this client goes.
    fn reply_to(&self, addr: SocketAddr) -> ReplyTo {
        match self {
            Client::Tcp { slot, generation, .. } => ReplyTo::Tcp { slot: *slot, generation: *generation },
            Client::Frame { peer, path } => ReplyTo::Frame { peer: *peer, path: **path },
            _ => ReplyTo::Udp(addr),
        }
    }
}

/// Adds one to a counter. Each worker owns its cache-padded block and is its only writer (UDP
/// and TCP alike), so this is a plain load and store, not a locked read-modify-write.
#[inline]
fn count(counter: &AtomicU64) {
    crate::metrics::bump(counter);
}

impl Responder {
    /// A responder that counts into `counters[block]`.
    pub fn new(snapshots: SnapshotHandle, counters: CounterBlocks, block: usize) -> Responder {
        let current = snapshots.load();
        let generation = current.generation;
        let rotation = vec![0; current.rotation_slots];
        Responder {
            snapshots,
            current,
            generation,
            rotation,
            counters,
            block,
            refused: Template::empty(false, rcode::REFUSED),
            name: [0; MAX_NAME_LEN],
            relay_config: None,
            relay: None,
        }
    }

    /// Relays names dnlb does not manage per `config` through `relay` (this worker's own, made
    /// with [`Relay::new`]); without one, they get REFUSED.
    pub fn with_relay(mut self, config: Option<Arc<RelayConfig>>, relay: Option<Relay>) -> Responder {
        self.relay = relay.filter(|_| config.is_some());
        self.relay_config = config;
        self
    }

    /// Loads the latest snapshot; called once per batch.
    #[inline]
    pub fn refresh(&mut self) {
        self.current = self.snapshots.load();
        if self.current.generation != self.generation {
            self.generation = self.current.generation;
            self.rotation.clear();
            self.rotation.resize(self.current.rotation_slots, 0);
        }
    }

    fn counters(&self) -> &WorkerCounters {
        &self.counters[self.block]
    }

    /// Answers one message from an unknown client (no relay); returns the reply length.
    #[inline]
    pub fn respond(&mut self, packet: &[u8], transport: Transport, out: &mut [u8]) -> usize {
        self.respond_from(packet, Client::Unknown, transport, out)
    }

    /// Answers one message; returns the reply length in `out`, 0 for no reply (dropped, or sent
    /// upstream: the answer then comes later).
    #[inline]
    pub fn respond_from(&mut self, packet: &[u8], client: Client<'_>, transport: Transport, out: &mut [u8]) -> usize {
        match self.answer(packet, client, transport, out) {
            Answer::Reply(n) => n,
            Answer::Relayed | Answer::Nothing => 0,
        }
    }

    /// Answers one message, saying whether the reply is in `out`, comes later or never.
    #[inline]
    pub fn answer(&mut self, packet: &[u8], client: Client<'_>, transport: Transport, out: &mut [u8]) -> Answer {
        count(&self.counters().queries);
        let query = match query::parse(packet, &mut self.name) {
            Ok(q) => q,
            Err(Reject::Drop) => {
                count(&self.counters().dropped);
                return Answer::Nothing;
            }
            Err(Reject::NotImplemented) => {
                count(&self.counters().notimp);
                return Answer::Reply(answer::write_header_error(packet, rcode::NOTIMP, out));
            }
            Err(Reject::FormatError) => {
                count(&self.counters().formerr);
                return Answer::Reply(answer::write_header_error(packet, rcode::FORMERR, out));
            }
        };
        let c = self.counters();
        count(match query.qtype {
            rtype::A | rtype::AAAA => &c.qtype_address,
            rtype::SRV => &c.qtype_srv,
            rtype::NAPTR => &c.qtype_naptr,
            rtype::ANY => &c.qtype_any,
            _ => &c.qtype_other,
        });
        if query.edns.is_some_and(|e| e.version > 0) {
            count(&self.counters().badvers);
            return Answer::Reply(answer::write_badvers(packet, &query, transport, out));
        }
        if let Some(c) = &self.relay_config {
            if !c.managed_for_all && !client.addr().is_some_and(|a| prefix::allowed(&c.allow, a.ip())) {
                return Answer::Reply(self.refuse(packet, &query, transport, out));
            }
        }
        let lookup = if query.qclass == CLASS_IN {
            let udp = matches!(transport, Transport::Udp { .. });
            // The source address is decoded only when answers depend on it ([[sites]]).
            let source = if self.current.steers() { client.addr().map(|a| a.ip()) } else { None };
            self.current.lookup(&self.name[..query.name_len], query.qtype, udp, source, &mut self.rotation)
        } else {
            Lookup::NotManaged
        };
        let (written, flags) = match lookup {
            Lookup::Answer(t) => (answer::write_reply(packet, &query, t, transport, out), t.flags),
            Lookup::Window(w) => (answer::write_window(packet, &query, w, transport, out), 0),
            Lookup::NotManaged => return self.unmanaged(packet, &query, client, transport, out),
        };
        self.count_reply(flags, written.truncated);
        Answer::Reply(written.len)
    }

    /// A query for a name dnlb does not manage: relayed for allowed clients, else REFUSED.
    fn unmanaged(
        &mut self,
        packet: &[u8],
        query: &Query,
        client: Client<'_>,
        transport: Transport,
        out: &mut [u8],
    ) -> Answer {
        let (Some(config), Some(relay)) = (self.relay_config.as_ref(), self.relay.as_mut()) else {
            return Answer::Reply(self.refuse(packet, query, transport, out));
        };
        let Some(addr) = client.addr().filter(|a| prefix::allowed(&config.allow, a.ip())) else {
            return Answer::Reply(self.refuse(packet, query, transport, out));
        };
        let name = &self.name[..query.name_len];
        let n = match relay.query(packet, query, name, addr, client.reply_to(addr), transport, out, Instant::now()) {
            Forwarded::Answered(n) => n,
            Forwarded::Pending => {
                count(&self.counters().relayed);
                return Answer::Relayed;
            }
        };
        if n >= 4 {
            self.count_rcode(out[3] & 0xf, out[2] & 0x02 != 0);
        }
        Answer::Reply(n)
    }

    fn refuse(&mut self, packet: &[u8], query: &Query, transport: Transport, out: &mut [u8]) -> usize {
        let written = answer::write_reply(packet, query, &self.refused, transport, out);
        self.count_reply(self.refused.flags, written.truncated);
        written.len
    }

    fn count_rcode(&self, rcode_bits: u8, truncated: bool) {
        self.count_reply(u16::from(rcode_bits), truncated);
    }

    fn count_reply(&self, flags: u16, truncated: bool) {
        count_reply(self.counters(), flags, truncated);
    }
}

/// Counts one reply by its RCODE (the low bits of `flags`) and whether TC was set.
fn count_reply(c: &WorkerCounters, flags: u16, truncated: bool) {
    count(match (flags & 0xf) as u8 {
        rcode::NOERROR => &c.noerror,
        rcode::NXDOMAIN => &c.nxdomain,
        rcode::SERVFAIL => &c.servfail,
        rcode::REFUSED => &c.refused,
        rcode::NOTIMP => &c.notimp,
        rcode::FORMERR => &c.formerr,
        _ => &c.other_rcode,
    });
    if truncated {
        count(&c.truncated);
    }
}

/// Where the relay's late answers go: UDP clients through the outbox (rate limited like direct
/// replies), TCP clients onto their connection. Each is counted by RCODE, as direct replies are.
struct Router<'a, 'o> {
    out: &'a mut Outbox<'o>,
    tcp: Option<&'a mut TcpSide>,
    rrl: Option<&'a mut Limiter>,
    counters: &'a WorkerCounters,
    now: Instant,
}

impl Replies for Router<'_, '_> {
    fn push(&mut self, to: ReplyTo, write: &mut dyn FnMut(&mut [u8]) -> usize) {
        let counters = self.counters;
        let mut counted = |buf: &mut [u8]| {
            let n = write(buf);
            if n >= 4 {
                count_reply(counters, u16::from(buf[3] & 0xf), buf[2] & 0x02 != 0);
            }
            n
        };
        match to {
            ReplyTo::Udp(peer) | ReplyTo::Frame { peer, .. } => {
                let decision = self.rrl.as_mut().map_or(Decision::Send, |l| l.decide(peer.ip(), self.now));
                let frame = match &to {
                    ReplyTo::Frame { path, .. } => Some(path),
                    _ => None,
                };
                let mut slipped = |buf: &mut [u8]| {
                    let n = counted(buf);
                    answer::slip(buf, n)
                };
                match (decision, frame) {
                    (Decision::Send, None) => self.out.push(peer, counted),
                    (Decision::Send, Some(path)) => self.out.push_frame(peer, path, counted),
                    (Decision::Slip, None) => {
                        count(&counters.rrl_slipped);
                        self.out.push(peer, slipped);
                    }
                    (Decision::Slip, Some(path)) => {
                        count(&counters.rrl_slipped);
                        self.out.push_frame(peer, path, &mut slipped);
                    }
                    (Decision::Drop, _) => count(&counters.rrl_dropped),
                }
            }
            ReplyTo::Tcp { slot, generation } => {
                if let Some(tcp) = self.tcp.as_mut() {
                    tcp.deliver(slot, generation, &mut counted, self.now);
                }
            }
        }
    }
}

/// The responder as a worker's TCP connections see it.
struct TcpAnswers<'a> {
    responder: &'a mut Responder,
}

impl Answerer for TcpAnswers<'_> {
    fn answer(
        &mut self,
        message: &[u8],
        peer: SocketAddr,
        slot: usize,
        generation: u32,
        out: &mut [u8],
        relayed: &mut bool,
    ) -> usize {
        let client = Client::Tcp { peer, slot, generation };
        match self.responder.answer(message, client, Transport::Tcp, out) {
            Answer::Reply(n) => n,
            Answer::Relayed => {
                *relayed = true;
                0
            }
            Answer::Nothing => 0,
        }
    }
}

/// One worker's handler, as the I/O backends drive it: UDP datagrams through [`Handler::handle`],
/// everything else (TCP, the relay) when its epoll descriptor is ready and on every tick.
pub struct Worker {
    /// The shared query logic.
    pub responder: Responder,
    /// The UDP size cap.
    pub transport: Transport,
    /// UDP response rate limiting, if configured.
    rrl: Option<Limiter>,
    /// The time of the current batch (read only when rate limiting is on).
    batch_now: Instant,
    /// The TCP listeners and connections, and the epoll instance that also nests the relay's.
    tcp: Option<TcpSide>,
    /// Where reloaded relay and rate-limit settings come from, and the generation applied.
    edge: Option<(Arc<EdgeHandle>, u64)>,
    /// The rate-limit settings `rrl` was made with.
    rrl_settings: Option<RrlConfig>,
}

impl Worker {
    /// A worker's handler around `responder` (with its relay, if any), its TCP side and its rate
    /// limiter.
    pub fn new(responder: Responder, transport: Transport, tcp: Option<TcpSide>, rrl: Option<RrlConfig>) -> Worker {
        let limiter = rrl.clone().map(|r| Limiter::new(r, Instant::now()));
        Worker { responder, transport, rrl: limiter, batch_now: Instant::now(), tcp, edge: None, rrl_settings: rrl }
    }

    /// Lets a reload change this worker's relay and rate-limit settings through `edge`.
    pub fn follow(&mut self, edge: Arc<EdgeHandle>) {
        let seen = edge.generation();
        self.edge = Some((edge, seen));
    }

    /// Applies settings a reload published since the last look (one atomic load when none did).
    #[inline]
    fn pick_up_settings(&mut self) {
        let Some((edge, seen)) = &mut self.edge else { return };
        let generation = edge.generation();
        if generation == *seen {
            return;
        }
        *seen = generation;
        let settings = edge.load();
        self.apply(&settings, Instant::now());
    }

    #[cold]
    fn apply(&mut self, settings: &EdgeSettings, now: Instant) {
        if self.rrl_settings != settings.rrl {
            // Fresh buckets: every prefix starts with a full second's burst, as at start-up.
            self.rrl = settings.rrl.clone().map(|r| Limiter::new(r, now));
            self.rrl_settings = settings.rrl.clone();
        }
        let r = &mut self.responder;
        if let (Some(relay), Some(config)) = (r.relay.as_mut(), &settings.relay) {
            if r.relay_config.as_ref() != Some(config) {
                relay.reconfigure(config.clone(), now);
                r.relay_config = Some(config.clone());
            }
        }
    }

    /// Gives the worker its TCP side (made with [`Worker::relay_fd`] nested in it).
    pub fn set_tcp(&mut self, tcp: TcpSide) {
        self.tcp = Some(tcp);
    }

    /// The relay's epoll descriptor, to nest in the TCP side's (see [`TcpSide::new`]).
    pub fn relay_fd(&self) -> Option<BorrowedFd<'_>> {
        self.responder.relay.as_ref().map(Relay::fd)
    }

    /// Stores the relay's and the TCP side's counters into this worker's block (done after every
    /// wake-up and tick; call once more when the worker ends).
    pub fn publish_counters(&self) {
        let c = self.responder.counters();
        if let Some(relay) = &self.responder.relay {
            c.publish_relay(&relay.stats(), relay.gauges());
        }
        if let Some(tcp) = &self.tcp {
            c.publish_tcp(&tcp.stats);
        }
    }

    /// Serves what is ready on the epoll descriptor; relayed answers go out through `out`.
    fn serve_ready(&mut self, out: &mut Outbox<'_>, now: Instant) {
        let Some(tcp) = self.tcp.as_mut() else { return };
        // A few passes: answering a TCP client can make the relay's descriptor ready and back.
        for _ in 0..4 {
            let (any, relay_ready) = tcp.poll_ready();
            if !any {
                break;
            }
            let r = &mut self.responder;
            if relay_ready {
                if let Some(relay) = r.relay.as_mut() {
                    let counters = &r.counters[r.block];
                    let mut router = Router { out, tcp: Some(&mut *tcp), rrl: self.rrl.as_mut(), counters, now };
                    relay.ready(&mut router, now);
                }
            }
            tcp.serve_ready(&mut TcpAnswers { responder: r }, now);
        }
        self.publish_counters();
    }
}

impl Handler for Worker {
    #[inline]
    fn begin_batch(&mut self) {
        self.pick_up_settings();
        self.responder.refresh();
        if self.rrl.is_some() {
            self.batch_now = Instant::now();
        }
    }

    #[inline]
    fn handle(&mut self, query: &[u8], peer: Peer<'_>, reply: &mut [u8]) -> usize {
        let n = self.responder.respond_from(query, Client::Udp(peer), self.transport, reply);
        self.limit(n, || peer.socket_addr(), reply)
    }

    #[inline]
    fn handle_frame(
        &mut self,
        query: &[u8],
        peer: SocketAddr,
        path: &FramePath,
        max_payload: u16,
        reply: &mut [u8],
    ) -> usize {
        // The interface's MTU may bound replies below the configured cap: an answer that does
        // not fit then gets TC=1, as one over the cap does.
        let transport = match self.transport {
            Transport::Udp { max_payload: cap } => Transport::Udp { max_payload: cap.min(max_payload) },
            Transport::Tcp => Transport::Udp { max_payload },
        };
        let n = self.responder.respond_from(query, Client::Frame { peer, path }, transport, reply);
        self.limit(n, || Some(peer), reply)
    }

    fn io_error(&mut self, _error: io::Error) {
        count(&self.responder.counters().io_errors);
    }

    fn dropped(&mut self, reason: DropReason, n: u64) {
        let c = self.responder.counters();
        crate::metrics::add(
            match reason {
                DropReason::NoBuffer => &c.drop_enobufs,
                DropReason::NoSendSlot => &c.drop_send_slot,
                DropReason::Outbox => &c.drop_outbox,
                DropReason::Oversize => &c.drop_oversize,
                DropReason::BadFrame => &c.drop_bad_frame,
            },
            n,
        );
    }

    fn extra_fd(&self) -> Option<BorrowedFd<'_>> {
        self.tcp.as_ref().map(TcpSide::fd)
    }

    fn extra_ready(&mut self, out: &mut Outbox<'_>) {
        self.serve_ready(out, Instant::now());
    }

    fn tick(&mut self, out: &mut Outbox<'_>) {
        self.pick_up_settings();
        let now = Instant::now();
        let r = &mut self.responder;
        if let Some(relay) = r.relay.as_mut() {
            let counters = &r.counters[r.block];
            let mut router = Router { out, tcp: self.tcp.as_mut(), rrl: self.rrl.as_mut(), counters, now };
            relay.tick(&mut router, now);
        }
        if let Some(tcp) = self.tcp.as_mut() {
            tcp.tick(&mut TcpAnswers { responder: &mut self.responder }, now);
        }
        self.publish_counters();
    }
}

impl Worker {
    /// Rate-limits a UDP reply of `n` bytes in `reply` to the client `addr` gives: sends it as
    /// it is, cut to a slip (TC=1), or drops it (0).
    #[inline]
    fn limit(&mut self, n: usize, addr: impl FnOnce() -> Option<SocketAddr>, reply: &mut [u8]) -> usize {
        let Some(limiter) = self.rrl.as_mut().filter(|_| n > 0) else { return n };
        let Some(addr) = addr() else { return n };
        match limiter.decide(addr.ip(), self.batch_now) {
            Decision::Send => n,
            Decision::Slip => {
                count(&self.responder.counters().rrl_slipped);
                answer::slip(reply, n)
            }
            Decision::Drop => {
                count(&self.responder.counters().rrl_dropped);
                0
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::io::encode_peer;
    use crate::metrics::WorkerCounters;
    use crate::snapshot::Health;
    use crossbeam_utils::CachePadded;

    const CONFIG: &str = "[server]\nlisten = [\"127.0.0.1:5353\"]\n[rrl]\nresponses_per_second = 4\nslip = 2\n\
        [[service]]\nname = \"sip.example.test\"\n";

    fn worker(max_payload: u16) -> Worker {
        let mut text = CONFIG.to_string();
        for i in 0..30 {
            text.push_str(&format!(
                "[[service.server]]\naddress = \"192.0.2.{}\"\nhost = \"s{i}.example.test\"\n",
                i + 1
            ));
        }
        let config = Config::parse(&text).unwrap();
        let snapshots = SnapshotHandle::new(Snapshot::build(&config, &Health::all_up(&config), 0, 1).unwrap());
        let counters: CounterBlocks = (0..1).map(|_| CachePadded::new(WorkerCounters::default())).collect();
        let responder = Responder::new(snapshots, counters, 0);
        Worker::new(responder, Transport::Udp { max_payload }, None, config.rrl.clone())
    }

    fn query(name: &[u8], qtype: u16, edns: Option<u16>) -> Vec<u8> {
        let mut p = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, u8::from(edns.is_some())];
        p.extend_from_slice(name);
        p.extend_from_slice(&qtype.to_be_bytes());
        p.extend_from_slice(&[0, 1]);
        if let Some(size) = edns {
            p.extend_from_slice(&[0, 0, 41]);
            p.extend_from_slice(&size.to_be_bytes());
            p.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        }
        p
    }

    /// What a frame's client and a socket's client get from two workers of one configuration,
    /// one query after another: the same bytes, rotation and rate limiting (slips, drops)
    /// included; a frame's MTU bound cuts replies as the configured cap does.
    #[test]
    fn a_frame_is_answered_as_a_datagram_rate_limit_and_mtu_cap_alike() {
        let peer: SocketAddr = "198.18.0.2:40000".parse().unwrap();
        let path = FramePath {
            dst_mac: [2, 0, 0, 0, 0, 2],
            src_mac: [2, 0, 0, 0, 0, 1],
            vlan: None,
            local: "198.18.0.1".parse().unwrap(),
            local_port: 53,
        };
        let mut name = [0u8; 28];
        let len = encode_peer(peer, &mut name);
        let a = query(b"\x03sip\x07example\x04test\x00", 1, Some(1232));
        let srv = query(b"\x04_sip\x04_udp\x03sip\x07example\x04test\x00", 33, Some(1232));
        // A frame path whose MTU takes 600 bytes against a socket worker capped at 600.
        for (frame_cap, socket_cap) in [(1232u16, 1232u16), (600, 600)] {
            let (mut by_socket, mut by_frame) = (worker(socket_cap), worker(1232));
            by_socket.begin_batch();
            by_frame.begin_batch();
            let mut outcomes = Vec::new();
            for (i, q) in [&a, &srv].iter().cycle().take(12).enumerate() {
                let (mut x, mut y) = ([0u8; 2048], [0u8; 2048]);
                let n = by_socket.handle(q, Peer(&name[..len]), &mut x);
                let m = by_frame.handle_frame(q, peer, &path, frame_cap, &mut y);
                assert_eq!(x[..n], y[..m], "query {i}, cap {frame_cap}");
                assert!(m <= usize::from(frame_cap));
                outcomes.push((n, n > 0 && x[2] & 0x02 != 0));
            }
            // The limiter ran: 4 a second, so some replies were slipped (TC=1) or dropped.
            assert!(outcomes.iter().any(|&(n, tc)| n == 0 || tc), "{outcomes:?}");
            if frame_cap == 600 {
                // The SRV answer of 30 servers does not fit 600 bytes: cut, as the cap cuts it.
                let (mut x, mut y) = ([0u8; 2048], [0u8; 2048]);
                let (mut s, mut f) = (worker(600), worker(1232));
                s.begin_batch();
                f.begin_batch();
                let n = s.handle(&srv, Peer(&name[..len]), &mut x);
                let m = f.handle_frame(&srv, peer, &path, 600, &mut y);
                assert_eq!(x[..n], y[..m]);
                assert!(m <= 600 && m > 12);
            }
        }
    }
}
