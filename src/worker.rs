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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::Guard;

use crate::dns::answer::{self, Template, Transport};
use crate::dns::query::{self, rcode, Query, Reject, MAX_NAME_LEN};
use crate::dns::CLASS_IN;
use crate::io::{Handler, Peer};
use crate::metrics::{CounterBlocks, WorkerCounters};
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
        }
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

    /// Answers one message; returns the reply length in `out`, 0 for no reply.
    #[inline]
    pub fn respond(&mut self, packet: &[u8], transport: Transport, out: &mut [u8]) -> usize {
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
        let lookup = if query.qclass == CLASS_IN {
            self.current.lookup(&self.name[..query.name_len], query.qtype, &mut self.rotation)
        } else {
            Lookup::NotManaged
        };
        let template = match lookup {
            Lookup::Answer(t) => t,
            Lookup::NotManaged => return self.unmanaged(packet, &query, transport, out),
        };
        let written = answer::write_reply(packet, &query, template, transport, out);
        self.count_reply(template.flags, written.truncated);
        written.len
    }

    /// The seam the relay takes over: a query for a name dnlb does not manage. REFUSED for now.
    fn unmanaged(&mut self, packet: &[u8], query: &Query, transport: Transport, out: &mut [u8]) -> usize {
        let written = answer::write_reply(packet, query, &self.refused, transport, out);
        self.count_reply(self.refused.flags, written.truncated);
        written.len
    }

    fn count_reply(&self, flags: u16, truncated: bool) {
        let c = self.counters();
        count(match (flags & 0xf) as u8 {
            rcode::NOERROR => &c.noerror,
            rcode::SERVFAIL => &c.servfail,
            rcode::REFUSED => &c.refused,
            _ => &c.formerr,
        });
        if truncated {
            count(&c.truncated);
        }
    }
}

/// A responder bound to UDP, as the I/O backends drive it.
pub struct UdpResponder {
    /// The shared query logic.
    pub responder: Responder,
    /// The UDP size cap.
    pub transport: Transport,
}

impl Handler for UdpResponder {
    #[inline]
    fn begin_batch(&mut self) {
        self.responder.refresh();
    }

    #[inline]
    fn handle(&mut self, query: &[u8], _peer: Peer<'_>, reply: &mut [u8]) -> usize {
        self.responder.respond(query, self.transport, reply)
    }

    fn io_error(&mut self, _error: io::Error) {
        count(&self.responder.counters().io_errors);
    }
}
