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
//!                                   ├─ under a zone, not a name ───► NXDOMAIN + SOA (a template too)
//!                                   └─ not managed ────────────────► the relay (REFUSED without one)
//!  UDP reply ─► rate limit (if [rrl]): send · slip (TC=1, question only) · drop
//! ```

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::BorrowedFd;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::Guard;

use crate::config::{RelayConfig, RrlConfig};
use crate::counters::{CounterBlocks, WorkerCounters};
use crate::dns::answer::{self, DnsTransport, Template};
use crate::dns::query::{self, rcode, Query, Reject, MAX_NAME_LEN};
use crate::dns::{rtype, CLASS_IN};
use crate::edge::conn::Limits;
use crate::edge::rrl::{Decision, Limiter};
use crate::edge::tcp::{Answerer, TcpClients};
use crate::io::{DropReason, FramePath, Handler, Outbox, Peer};
use crate::prefix;
use crate::relay::engine::{Forwarded, Replies, ReplyTo};
use crate::relay::sockets::Relay;
use crate::snapshot::{Lookup, Snapshot, SnapshotHandle};

pub mod readiness;
pub mod settings;

use readiness::Readiness;
use settings::{SettingsHandle, WorkerSettings};

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
    crate::counters::bump(counter);
}

impl Responder {
    /// A responder that counts into `counters[block]`.
    pub fn new(snapshots: SnapshotHandle, counters: CounterBlocks, block: usize) -> Responder {
        let current = snapshots.load();
        let generation = current.generation();
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
        if self.current.generation() != self.generation {
            self.generation = self.current.generation();
            self.rotation.clear();
            self.rotation.resize(self.current.rotation_slots, 0);
        }
    }

    fn counters(&self) -> &WorkerCounters {
        &self.counters[self.block]
    }

    /// Answers one message from an unknown client (no relay); returns the reply length.
    #[inline]
    pub fn respond(&mut self, packet: &[u8], transport: DnsTransport, out: &mut [u8]) -> usize {
        self.respond_from(packet, Client::Unknown, transport, out)
    }

    /// Answers one message; returns the reply length in `out`, 0 for no reply (dropped, or sent
    /// upstream: the answer then comes later).
    #[inline]
    pub fn respond_from(
        &mut self,
        packet: &[u8],
        client: Client<'_>,
        transport: DnsTransport,
        out: &mut [u8],
    ) -> usize {
        match self.answer(packet, client, transport, out) {
            Answer::Reply(n) => n,
            Answer::Relayed | Answer::Nothing => 0,
        }
    }

    /// Answers one message, saying whether the reply is in `out`, comes later or never.
    #[inline]
    pub fn answer(&mut self, packet: &[u8], client: Client<'_>, transport: DnsTransport, out: &mut [u8]) -> Answer {
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
            let udp = matches!(transport, DnsTransport::Udp { .. });
            // The source address is decoded only when answers depend on it ([[sites]]).
            let source = if self.current.steers() { client.addr().map(|a| a.ip()) } else { None };
            self.current.lookup(&self.name[..query.name_len], query.qtype, udp, source, &mut self.rotation)
        } else if self.current.in_zone(&self.name[..query.name_len]) {
            // A zone dnlb serves is class IN only; its names are never relayed, in any class.
            return Answer::Reply(self.refuse(packet, &query, transport, out));
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
        transport: DnsTransport,
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

    fn refuse(&mut self, packet: &[u8], query: &Query, transport: DnsTransport, out: &mut [u8]) -> usize {
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

/// Rate limiting's decision for a UDP reply to `ip` (send when there is no limiter), with a
/// slip or a drop counted.
#[inline]
fn rate_limit(limiter: Option<&mut Limiter>, ip: IpAddr, now: Instant, c: &WorkerCounters) -> Decision {
    let decision = limiter.map_or(Decision::Send, |l| l.decide(ip, now));
    match decision {
        Decision::Send => {}
        Decision::Slip => count(&c.rrl_slipped),
        Decision::Drop => count(&c.rrl_dropped),
    }
    decision
}

/// The `n` reply bytes in `reply` as `decision` lets them go: all of them, the header and
/// question with TC=1 (a slip), or none.
#[inline]
fn limited(decision: Decision, reply: &mut [u8], n: usize) -> usize {
    match decision {
        Decision::Send => n,
        Decision::Slip => answer::slip(reply, n),
        Decision::Drop => 0,
    }
}

/// Where the relay's late answers go: UDP clients through the outbox (rate limited like direct
/// replies), TCP clients onto their connection. Each is counted by RCODE, as direct replies are.
struct Router<'a, 'o> {
    out: &'a mut Outbox<'o>,
    tcp: Option<&'a mut TcpClients>,
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
            ReplyTo::Udp(peer) => match rate_limit(self.rrl.as_deref_mut(), peer.ip(), self.now, counters) {
                Decision::Drop => {}
                decision => self.out.push(peer, |buf| {
                    let n = counted(buf);
                    limited(decision, buf, n)
                }),
            },
            ReplyTo::Frame { peer, path } => match rate_limit(self.rrl.as_deref_mut(), peer.ip(), self.now, counters) {
                Decision::Drop => {}
                decision => self.out.push_frame(peer, &path, |buf| {
                    let n = counted(buf);
                    limited(decision, buf, n)
                }),
            },
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
        match self.responder.answer(message, client, DnsTransport::Tcp, out) {
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
    pub transport: DnsTransport,
    /// UDP response rate limiting, if configured.
    rrl: Option<Limiter>,
    /// The time of the current batch (read only when rate limiting is on).
    batch_now: Instant,
    /// The epoll instance the backend waits on for TCP and the relay (none without either).
    readiness: Option<Readiness>,
    /// The TCP listeners and connections, watched by `readiness`.
    tcp: Option<TcpClients>,
    /// Where reloaded relay and rate-limit settings come from, and the generation applied.
    settings: Option<(Arc<SettingsHandle>, u64)>,
    /// The rate-limit settings `rrl` was made with.
    rrl_settings: Option<RrlConfig>,
}

impl Worker {
    /// A worker's handler around `responder` (with its relay, if any) and its rate limiter; TCP
    /// comes with [`Worker::listen`].
    pub fn new(responder: Responder, transport: DnsTransport, rrl: Option<RrlConfig>) -> Worker {
        let limiter = rrl.clone().map(|r| Limiter::new(r, Instant::now()));
        Worker {
            responder,
            transport,
            rrl: limiter,
            batch_now: Instant::now(),
            readiness: None,
            tcp: None,
            settings: None,
            rrl_settings: rrl,
        }
    }

    /// Lets a reload change this worker's relay and rate-limit settings through `settings`.
    pub fn follow(&mut self, settings: Arc<SettingsHandle>) {
        let seen = settings.generation();
        self.settings = Some((settings, seen));
    }

    /// Gives the worker its readiness hub, with the relay's epoll descriptor (if it has a
    /// relay) nested in it, and TCP clients on `listeners` (none: no TCP). A worker with neither
    /// a relay nor listeners needs no hub and gets none.
    pub fn listen(&mut self, listeners: Vec<std::net::TcpListener>, limits: Limits) -> io::Result<()> {
        let relay = self.responder.relay.as_ref().map(Relay::fd);
        if listeners.is_empty() && relay.is_none() {
            return Ok(());
        }
        let hub = Readiness::new(relay)?;
        if !listeners.is_empty() {
            self.tcp = Some(TcpClients::new(listeners, limits, hub.registry())?);
        }
        self.readiness = Some(hub);
        Ok(())
    }

    /// Applies settings a reload published since the last look (one atomic load when none did).
    #[inline]
    fn pick_up_settings(&mut self) {
        let Some((handle, seen)) = &mut self.settings else { return };
        let generation = handle.generation();
        if generation == *seen {
            return;
        }
        *seen = generation;
        let settings = handle.load();
        self.apply(&settings, Instant::now());
    }

    #[cold]
    fn apply(&mut self, settings: &WorkerSettings, now: Instant) {
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

    /// Stores the relay's and the TCP clients' counters into this worker's block (done after every
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

    /// Serves what is ready on the readiness hub; relayed answers go out through `out`.
    fn serve_ready(&mut self, out: &mut Outbox<'_>, now: Instant) {
        let Some(hub) = self.readiness.as_mut() else { return };
        // A few passes: answering a TCP client can make the relay's descriptor ready and back.
        for _ in 0..4 {
            let relay_ready = hub.poll();
            if hub.ready().is_empty() && !relay_ready && !self.tcp.as_ref().is_some_and(TcpClients::has_more) {
                break;
            }
            let r = &mut self.responder;
            if relay_ready {
                if let Some(relay) = r.relay.as_mut() {
                    let counters = &r.counters[r.block];
                    let mut router = Router { out, tcp: self.tcp.as_mut(), rrl: self.rrl.as_mut(), counters, now };
                    relay.ready(&mut router, now);
                }
            }
            // The relay drains its sockets until they would block, and relayed answers for TCP
            // clients are written as they come; anything that arrives after that makes the hub
            // readable again, and the backend's next wait sees it. So a pass in which TCP has
            // nothing to do is the last: another would be an epoll_wait that finds nothing.
            let Some(tcp) = self.tcp.as_mut() else { break };
            if hub.ready().is_empty() && !tcp.has_more() {
                break;
            }
            tcp.serve_ready(hub.ready(), hub.registry(), &mut TcpAnswers { responder: r }, now);
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
        let Some(limiter) = self.rrl.as_mut().filter(|_| n > 0) else { return n };
        let Some(addr) = peer.socket_addr() else { return n };
        let decision = rate_limit(Some(limiter), addr.ip(), self.batch_now, self.responder.counters());
        limited(decision, reply, n)
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
            DnsTransport::Udp { max_payload: cap } => DnsTransport::Udp { max_payload: cap.min(max_payload) },
            DnsTransport::Tcp => DnsTransport::Udp { max_payload },
        };
        let n = self.responder.respond_from(query, Client::Frame { peer, path }, transport, reply);
        let Some(limiter) = self.rrl.as_mut().filter(|_| n > 0) else { return n };
        let decision = rate_limit(Some(limiter), peer.ip(), self.batch_now, self.responder.counters());
        limited(decision, reply, n)
    }

    fn io_error(&mut self, _error: io::Error) {
        count(&self.responder.counters().io_errors);
    }

    fn dropped(&mut self, reason: DropReason, n: u64) {
        let c = self.responder.counters();
        crate::counters::add(
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
        self.readiness.as_ref().map(Readiness::fd)
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
        if let (Some(tcp), Some(hub)) = (self.tcp.as_mut(), self.readiness.as_ref()) {
            tcp.tick(hub.registry(), &mut TcpAnswers { responder: &mut self.responder }, now);
        }
        self.publish_counters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::counters::WorkerCounters;
    use crate::io::encode_peer;
    use crate::snapshot::Serving;
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
        let snapshots = SnapshotHandle::new(Snapshot::build(&config, &Serving::all_up(&config), 0).unwrap());
        let counters: CounterBlocks = (0..1).map(|_| CachePadded::new(WorkerCounters::default())).collect();
        let responder = Responder::new(snapshots, counters, 0);
        Worker::new(responder, DnsTransport::Udp { max_payload }, config.rrl.clone())
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
