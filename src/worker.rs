//! The per-query work of a worker: parse, look up, copy and patch. No I/O here.
//!
//! ```text
//!  bytes ─► query::parse ─┬─ Drop ────────────────────────────────► (no reply, counted)
//!                         ├─ NotImplemented / FormatError ─────────► header-only NOTIMP / FORMERR
//!                         └─ Query ─┬─ EDNS version > 0 ───────────► BADVERS
//!                                   ├─ snapshot: managed name ─────► template copy + patch
//!                                   └─ not managed ────────────────► unmanaged hook (REFUSED today,
//!                                                                    the relay later)
//! ```

use std::io;
use std::net::SocketAddr;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::Guard;

use crate::config::RelayConfig;
use crate::dns::answer::{self, Template, Transport};
use crate::dns::query::{self, rcode, Query, Reject, MAX_NAME_LEN};
use crate::dns::CLASS_IN;
use crate::io::{DropReason, Handler, Outbox, Peer};
use crate::metrics::{CounterBlocks, WorkerCounters};
use crate::relay::acl;
use crate::relay::engine::{self, Forwarded, Replies};
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
    /// The UDP relay (upstream sockets, pending table, cache); TCP connections relay with a
    /// blocking exchange instead.
    relay: Option<Relay>,
}

/// Who sent a query, as far as the responder needs to know.
#[derive(Debug, Clone, Copy)]
pub enum Client<'a> {
    /// A UDP datagram's sender, decoded only when needed.
    Udp(Peer<'a>),
    /// A TCP connection's peer.
    Tcp(SocketAddr),
    /// Unknown (benchmarks, fuzzing): the relay is not used.
    Unknown,
}

impl Client<'_> {
    fn addr(&self) -> Option<SocketAddr> {
        match self {
            Client::Udp(p) => p.socket_addr(),
            Client::Tcp(a) => Some(*a),
            Client::Unknown => None,
        }
    }
}

/// Adds one to a counter. Each worker owns its cache-padded block, so this never contends; TCP
/// connection threads share one block, which is why this is an atomic add and not a store.
#[inline]
fn count(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
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

    /// Relays names dnlb does not manage per `config`: over UDP through `relay` (this worker's
    /// own, made with [`Relay::new`]); a TCP connection passes `None` and relays with a blocking
    /// exchange instead.
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
    /// upstream: the answer then comes through the outbox).
    #[inline]
    pub fn respond_from(&mut self, packet: &[u8], client: Client<'_>, transport: Transport, out: &mut [u8]) -> usize {
        count(&self.counters().queries);
        let query = match query::parse(packet, &mut self.name) {
            Ok(q) => q,
            Err(Reject::Drop) => {
                count(&self.counters().dropped);
                return 0;
            }
            Err(Reject::NotImplemented) => {
                count(&self.counters().notimp);
                return answer::write_header_error(packet, rcode::NOTIMP, out);
            }
            Err(Reject::FormatError) => {
                count(&self.counters().formerr);
                return answer::write_header_error(packet, rcode::FORMERR, out);
            }
        };
        if query.edns.is_some_and(|e| e.version > 0) {
            count(&self.counters().badvers);
            return answer::write_badvers(packet, &query, transport, out);
        }
        if let Some(c) = &self.relay_config {
            if !c.managed_for_all && !client.addr().is_some_and(|a| acl::allowed(&c.allow, a.ip())) {
                return self.refuse(packet, &query, transport, out);
            }
        }
        let lookup = if query.qclass == CLASS_IN {
            let udp = matches!(transport, Transport::Udp { .. });
            self.current.lookup(&self.name[..query.name_len], query.qtype, udp, &mut self.rotation)
        } else {
            Lookup::NotManaged
        };
        let template = match lookup {
            Lookup::Answer(t) => t,
            Lookup::NotManaged => return self.unmanaged(packet, &query, client, transport, out),
        };
        let written = answer::write_reply(packet, &query, template, transport, out);
        self.count_reply(template.flags, written.truncated);
        written.len
    }

    /// A query for a name dnlb does not manage: relayed for allowed clients, else REFUSED.
    fn unmanaged(
        &mut self,
        packet: &[u8],
        query: &Query,
        client: Client<'_>,
        transport: Transport,
        out: &mut [u8],
    ) -> usize {
        let Some(config) = self.relay_config.clone() else { return self.refuse(packet, query, transport, out) };
        let Some(addr) = client.addr().filter(|a| acl::allowed(&config.allow, a.ip())) else {
            return self.refuse(packet, query, transport, out);
        };
        let n = match (transport, self.relay.as_mut()) {
            (Transport::Udp { .. }, Some(relay)) => {
                let name = &self.name[..query.name_len];
                match relay.query(packet, query, name, addr, transport, out, Instant::now()) {
                    Forwarded::Answered(n) => n,
                    Forwarded::Pending => {
                        count(&self.counters().relayed);
                        return 0;
                    }
                }
            }
            _ => {
                count(&self.counters().relayed);
                engine::tcp_exchange(&config, packet, query, out).unwrap_or_else(|| {
                    let servfail = Template::empty(false, rcode::SERVFAIL);
                    answer::write_reply(packet, query, &servfail, transport, out).len
                })
            }
        };
        if n >= 4 {
            self.count_rcode(out[3] & 0xf, out[2] & 0x02 != 0);
        }
        n
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

/// The outbox as the relay sees it: each reply is counted by RCODE on its way out, as direct
/// replies are.
struct CountedReplies<'a, 'o> {
    out: &'a mut Outbox<'o>,
    counters: &'a WorkerCounters,
}

impl Replies for CountedReplies<'_, '_> {
    fn push(&mut self, peer: SocketAddr, write: &mut dyn FnMut(&mut [u8]) -> usize) {
        let counters = self.counters;
        self.out.push(peer, |buf| {
            let n = write(buf);
            if n >= 4 {
                count_reply(counters, u16::from(buf[3] & 0xf), buf[2] & 0x02 != 0);
            }
            n
        });
    }
}

/// A responder bound to UDP, as the I/O backends drive it.
pub struct UdpResponder {
    /// The shared query logic.
    pub responder: Responder,
    /// The UDP size cap.
    pub transport: Transport,
}

impl UdpResponder {
    /// Stores the relay's counters into this worker's block (the backends do after every wake-up
    /// and tick; call once more when the worker ends).
    pub fn publish_counters(&self) {
        if let Some(relay) = &self.responder.relay {
            self.responder.counters().publish_relay(relay.stats());
        }
    }
}

impl Handler for UdpResponder {
    #[inline]
    fn begin_batch(&mut self) {
        self.responder.refresh();
    }

    #[inline]
    fn handle(&mut self, query: &[u8], peer: Peer<'_>, reply: &mut [u8]) -> usize {
        self.responder.respond_from(query, Client::Udp(peer), self.transport, reply)
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
            },
            n,
        );
    }

    fn extra_fd(&self) -> Option<BorrowedFd<'_>> {
        self.responder.relay.as_ref().map(Relay::fd)
    }

    fn extra_ready(&mut self, out: &mut Outbox<'_>) {
        let r = &mut self.responder;
        let Some(relay) = r.relay.as_mut() else { return };
        let counters = &r.counters[r.block];
        relay.ready(&mut CountedReplies { out, counters }, Instant::now());
        counters.publish_relay(relay.stats());
    }

    fn tick(&mut self, out: &mut Outbox<'_>) {
        let r = &mut self.responder;
        let Some(relay) = r.relay.as_mut() else { return };
        let counters = &r.counters[r.block];
        relay.tick(&mut CountedReplies { out, counters }, Instant::now());
        counters.publish_relay(relay.stats());
    }
}
