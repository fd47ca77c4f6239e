//! Per-worker counters: written by one worker each, read by anyone, never shared for writing.
//!
//! Each worker's block is cache-padded so two workers never write the same cache line, and a
//! counter is bumped with a plain load and store (single writer), not a locked read-modify-write.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_utils::CachePadded;

/// One worker's counters.
#[derive(Debug, Default)]
pub struct WorkerCounters {
    /// Datagrams and TCP messages received.
    pub queries: AtomicU64,
    /// Replies with RCODE NOERROR.
    pub noerror: AtomicU64,
    /// Replies with RCODE NXDOMAIN (relayed or cached).
    pub nxdomain: AtomicU64,
    /// Replies with RCODE FORMERR.
    pub formerr: AtomicU64,
    /// Replies with RCODE SERVFAIL.
    pub servfail: AtomicU64,
    /// Replies with RCODE NOTIMP.
    pub notimp: AtomicU64,
    /// Replies with RCODE REFUSED.
    pub refused: AtomicU64,
    /// Replies with extended RCODE BADVERS.
    pub badvers: AtomicU64,
    /// Packets dropped without a reply (responses, runts).
    pub dropped: AtomicU64,
    /// Replies sent with TC=1.
    pub truncated: AtomicU64,
    /// Receive or send errors from the kernel.
    pub io_errors: AtomicU64,
    /// Queries handed to the relay (sent upstream or joined to one in flight).
    pub relayed: AtomicU64,
    /// Relayed replies with any other RCODE (e.g. NOTAUTH from an upstream).
    pub other_rcode: AtomicU64,
}

/// Adds one to a counter only this thread writes.
#[inline]
pub fn bump(counter: &AtomicU64) {
    counter.store(counter.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
}

/// Cache-padded counter blocks, one per worker.
pub type CounterBlocks = std::sync::Arc<[CachePadded<WorkerCounters>]>;

/// A sum over all workers, taken off the hot path.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    /// See [`WorkerCounters::queries`].
    pub queries: u64,
    /// See [`WorkerCounters::noerror`].
    pub noerror: u64,
    /// See [`WorkerCounters::nxdomain`].
    pub nxdomain: u64,
    /// See [`WorkerCounters::formerr`].
    pub formerr: u64,
    /// See [`WorkerCounters::servfail`].
    pub servfail: u64,
    /// See [`WorkerCounters::notimp`].
    pub notimp: u64,
    /// See [`WorkerCounters::refused`].
    pub refused: u64,
    /// See [`WorkerCounters::badvers`].
    pub badvers: u64,
    /// See [`WorkerCounters::dropped`].
    pub dropped: u64,
    /// See [`WorkerCounters::truncated`].
    pub truncated: u64,
    /// See [`WorkerCounters::io_errors`].
    pub io_errors: u64,
    /// See [`WorkerCounters::relayed`].
    pub relayed: u64,
    /// See [`WorkerCounters::other_rcode`].
    pub other_rcode: u64,
}

impl Totals {
    /// Sums every block.
    pub fn sum(blocks: &[CachePadded<WorkerCounters>]) -> Totals {
        let mut t = Totals::default();
        for b in blocks {
            let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
            t.queries += get(&b.queries);
            t.noerror += get(&b.noerror);
            t.nxdomain += get(&b.nxdomain);
            t.formerr += get(&b.formerr);
            t.servfail += get(&b.servfail);
            t.notimp += get(&b.notimp);
            t.refused += get(&b.refused);
            t.badvers += get(&b.badvers);
            t.dropped += get(&b.dropped);
            t.truncated += get(&b.truncated);
            t.io_errors += get(&b.io_errors);
            t.relayed += get(&b.relayed);
            t.other_rcode += get(&b.other_rcode);
        }
        t
    }
}

impl fmt::Display for Totals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "queries={} noerror={} nxdomain={} formerr={} servfail={} notimp={} refused={} badvers={} dropped={} truncated={} io_errors={} relayed={} other_rcode={}",
            self.queries,
            self.noerror,
            self.nxdomain,
            self.formerr,
            self.servfail,
            self.notimp,
            self.refused,
            self.badvers,
            self.dropped,
            self.truncated,
            self.io_errors,
            self.relayed,
            self.other_rcode
        )
    }
}
