//! Per-worker counters: written by one worker each, read by anyone, never shared for writing.
//!
//! Each worker's block is cache-padded so two workers never write the same cache line, and a
//! counter is bumped with a plain load and store (single writer), not a locked read-modify-write.
//! The relay keeps its own plain counters and stores them into its worker's block after each
//! wake-up and tick ([`WorkerCounters::publish_relay`]).
//!
//! Every datagram dnlb drops or refuses is counted by reason (`drop_*`, `relay_forged`,
//! `relay_case_mismatch`, `relay_late`, ...), and the totals are printed on exit.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_utils::CachePadded;

use crate::relay::engine::{RelayGauges, RelayStats};

/// Declares the counters once: the per-worker atomics, the plain totals, their sum and their
/// `name=value` display, so the lists cannot drift apart.
macro_rules! counters {
    ($($(#[doc = $doc:literal])+ $name:ident,)+) => {
        /// One worker's counters.
        #[derive(Debug, Default)]
        pub struct WorkerCounters {
            $($(#[doc = $doc])+ pub $name: AtomicU64,)+
            /// The I/O backend the worker runs ("uring", "portable", "xdp"), set once when it
            /// starts: the metrics label its series with it.
            pub backend: std::sync::OnceLock<&'static str>,
        }

        impl WorkerCounters {
            /// Every counter with its name, so a test can check that no reader leaves one out.
            #[cfg(test)]
            pub(crate) fn fields(&self) -> Vec<(&'static str, &AtomicU64)> {
                vec![$((stringify!($name), &self.$name)),+]
            }
        }

        /// A sum over all workers, taken off the hot path.
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        pub struct Totals {
            $($(#[doc = $doc])+ pub $name: u64,)+
        }

        impl Totals {
            /// Sums every block.
            pub fn sum(blocks: &[CachePadded<WorkerCounters>]) -> Totals {
                let mut t = Totals::default();
                for b in blocks {
                    $(t.$name += b.$name.load(Ordering::Relaxed);)+
                }
                t
            }
        }

        impl fmt::Display for Totals {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let fields = [$((stringify!($name), self.$name)),+];
                for (i, (name, value)) in fields.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" ")?;
                    }
                    write!(f, "{name}={value}")?;
                }
                Ok(())
            }
        }
    };
}

counters! {
    /// Datagrams and TCP messages received.
    queries,
    /// Parsed queries for A or AAAA.
    qtype_address,
    /// Parsed queries for SRV.
    qtype_srv,
    /// Parsed queries for NAPTR.
    qtype_naptr,
    /// Parsed queries for ANY.
    qtype_any,
    /// Parsed queries for any other type.
    qtype_other,
    /// Replies with RCODE NOERROR.
    noerror,
    /// Replies with RCODE NXDOMAIN (relayed or cached).
    nxdomain,
    /// Replies with RCODE FORMERR.
    formerr,
    /// Replies with RCODE SERVFAIL.
    servfail,
    /// Replies with RCODE NOTIMP.
    notimp,
    /// Replies with RCODE REFUSED.
    refused,
    /// Replies with extended RCODE BADVERS.
    badvers,
    /// Packets dropped without a reply (responses, runts).
    dropped,
    /// Replies sent with TC=1.
    truncated,
    /// Receive or send errors from the kernel.
    io_errors,
    /// Queries handed to the relay (sent upstream or joined to one in flight).
    relayed,
    /// Relayed replies with any other RCODE (e.g. NOTAUTH from an upstream).
    other_rcode,
    /// io_uring receives that found no free buffer (ENOBUFS); datagrams wait in the socket buffer.
    drop_enobufs,
    /// Queries not answered: no free io_uring send slot.
    drop_send_slot,
    /// Relayed replies the client socket would not take at once (send buffer full).
    drop_outbox,
    /// Datagrams longer than the receive buffer, dropped unanswered (both backends alike).
    drop_oversize,
    /// Frames on an XSK the kernel would have dropped too (bad checksum or length, martian
    /// source).
    drop_bad_frame,
    /// Queries sent upstream, retries and health checks included.
    relay_forwarded,
    /// Relayed names answered from the cache.
    relay_cache_hits,
    /// Relayed names answered stale (RFC 8767) while the upstreams failed or were slow.
    relay_stale_answers,
    /// Cached answers asked upstream again before they expired (prefetch).
    relay_prefetches,
    /// Upstream exchanges that timed out.
    relay_timeouts,
    /// Upstream messages refused: not a response, another ID or another question.
    relay_forged,
    /// Upstream messages refused for the letter case of the question alone (0x20).
    relay_case_mismatch,
    /// Upstream messages for an exchange already over, read when its port was released (the
    /// kernel drops those that arrive later; see `nstat UdpNoPorts`).
    relay_late,
    /// Upstream UDP replies larger than the size dnlb advertised, used all the same.
    relay_oversize,
    /// Queries asked again over TCP after an upstream reply with TC=1.
    relay_tcp_retries,
    /// Queries failed SERVFAIL because the system's random source failed.
    relay_random_failures,
    /// Queries answered SERVFAIL because too many clients were already waiting.
    relay_waiters_full,
    /// Queries answered SERVFAIL because `max_pending` upstream queries were in flight.
    relay_pending_full,
    /// Upstream sends the kernel refused.
    relay_send_errors,
    /// Exchanges the upstream broke (ICMP unreachable, TCP reset or early close).
    relay_upstream_errors,
    /// Upstreams found not to preserve letter case, queried without 0x20 since.
    relay_no_caps,
    /// Queries answered SERVFAIL because their client's prefix held its share of `max_pending`.
    relay_prefix_full,
    /// Upstream exchanges in flight now (a gauge).
    relay_pending,
    /// Clients waiting on upstream exchanges now (a gauge).
    relay_waiting,
    /// Answers in the relay's cache now (a gauge).
    relay_cache_entries,
    /// Bytes the relay's cache holds now (a gauge).
    relay_cache_bytes,
    /// UDP responses over the rate limit sent truncated (TC=1, question only).
    rrl_slipped,
    /// UDP responses over the rate limit dropped.
    rrl_dropped,
    /// TCP connections accepted.
    tcp_accepted,
    /// TCP connections open now (a gauge: the sum over workers is the total).
    tcp_open,
    /// TCP connections refused because their client held its per-worker limit.
    tcp_refused_per_client,
    /// accept() failures (EMFILE and kin); accepting paused after each.
    tcp_accept_errors,
    /// TCP connections closed by the client, or on a read or write error.
    tcp_closed_peer,
    /// TCP connections closed after the idle time.
    tcp_closed_idle,
    /// TCP connections closed because a message did not arrive whole in time.
    tcp_closed_message_timeout,
    /// TCP connections closed for a message of length 0.
    tcp_closed_malformed,
    /// TCP connections closed for a message longer than a query can be.
    tcp_closed_oversize,
    /// TCP connections closed because the client did not read its replies.
    tcp_closed_write_stall,
    /// TCP connections closed to make room for a new one (the longest idle).
    tcp_closed_evicted,
}

impl Totals {
    /// Replies by RCODE, labelled as `dnlb_responses_total` and the status page name them.
    pub fn responses_by_rcode(&self) -> [(&'static str, u64); 8] {
        [
            ("NOERROR", self.noerror),
            ("NXDOMAIN", self.nxdomain),
            ("FORMERR", self.formerr),
            ("SERVFAIL", self.servfail),
            ("NOTIMP", self.notimp),
            ("REFUSED", self.refused),
            ("BADVERS", self.badvers),
            ("other", self.other_rcode),
        ]
    }

    /// Messages dropped without a reply, by reason (`dnlb_dropped_total`'s `reason` label).
    pub fn dropped_by_reason(&self) -> [(&'static str, u64); 7] {
        [
            ("malformed", self.dropped),
            ("no_buffer", self.drop_enobufs),
            ("no_send_slot", self.drop_send_slot),
            ("send_buffer_full", self.drop_outbox),
            ("oversize", self.drop_oversize),
            ("bad_frame", self.drop_bad_frame),
            ("rate_limit", self.rrl_dropped),
        ]
    }
}

impl WorkerCounters {
    /// Stores the relay's counters (cumulative, kept by the worker's relay) and its gauges into
    /// this block.
    pub fn publish_relay(&self, s: &RelayStats, g: RelayGauges) {
        let set = |c: &AtomicU64, v: u64| c.store(v, Ordering::Relaxed);
        let wide = |v: usize| u64::try_from(v).unwrap_or(u64::MAX);
        set(&self.relay_pending, wide(g.pending));
        set(&self.relay_waiting, wide(g.waiting));
        set(&self.relay_cache_entries, wide(g.cache_entries));
        set(&self.relay_cache_bytes, wide(g.cache_bytes));
        set(&self.relay_forwarded, s.forwarded);
        set(&self.relay_cache_hits, s.cache_hits);
        set(&self.relay_stale_answers, s.stale_answers);
        set(&self.relay_prefetches, s.prefetches);
        set(&self.relay_timeouts, s.timeouts);
        set(&self.relay_forged, s.forged);
        set(&self.relay_case_mismatch, s.case_mismatches);
        set(&self.relay_late, s.late);
        set(&self.relay_oversize, s.oversize);
        set(&self.relay_tcp_retries, s.tcp_retries);
        set(&self.relay_random_failures, s.random_failures);
        set(&self.relay_waiters_full, s.waiters_full);
        set(&self.relay_pending_full, s.pending_full);
        set(&self.relay_send_errors, s.send_errors);
        set(&self.relay_upstream_errors, s.upstream_errors);
        set(&self.relay_no_caps, s.no_caps);
        set(&self.relay_prefix_full, s.prefix_full);
    }
}

impl WorkerCounters {
    /// Stores the TCP side's counters (cumulative, kept by the worker's TCP side) into this block.
    pub fn publish_tcp(&self, s: &crate::edge::tcp::TcpStats) {
        let set = |c: &AtomicU64, v: u64| c.store(v, Ordering::Relaxed);
        set(&self.tcp_accepted, s.accepted);
        set(&self.tcp_refused_per_client, s.refused_per_client);
        set(&self.tcp_accept_errors, s.accept_errors);
        for (c, v) in [
            &self.tcp_closed_peer,
            &self.tcp_closed_idle,
            &self.tcp_closed_message_timeout,
            &self.tcp_closed_malformed,
            &self.tcp_closed_oversize,
            &self.tcp_closed_write_stall,
            &self.tcp_closed_evicted,
        ]
        .into_iter()
        .zip(s.closed)
        {
            set(c, v);
        }
        set(&self.tcp_open, s.open);
    }
}

/// Adds one to a counter only this thread writes.
#[inline]
pub fn bump(counter: &AtomicU64) {
    counter.store(counter.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
}

/// Adds `n` to a counter only this thread writes.
#[inline]
pub fn add(counter: &AtomicU64, n: u64) {
    counter.store(counter.load(Ordering::Relaxed).saturating_add(n), Ordering::Relaxed);
}

/// Cache-padded counter blocks, one per worker.
pub type CounterBlocks = std::sync::Arc<[CachePadded<WorkerCounters>]>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_sum_and_print_every_counter() {
        let blocks: CounterBlocks = (0..2).map(|_| CachePadded::new(WorkerCounters::default())).collect();
        bump(&blocks[0].queries);
        add(&blocks[1].queries, 2);
        blocks[1].publish_relay(&RelayStats { forged: 7, ..RelayStats::default() }, RelayGauges::default());
        let t = Totals::sum(&blocks);
        assert_eq!((t.queries, t.relay_forged), (3, 7));
        let text = t.to_string();
        assert!(text.starts_with("queries=3 qtype_address=0"), "{text}");
        assert!(text.contains(" relay_forged=7 ") && text.contains(" drop_oversize=0 "), "{text}");
        assert!(text.ends_with("tcp_closed_evicted=0"), "{text}");
    }
}
