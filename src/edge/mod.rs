//! What dnlb does at the edge of a network it does not trust: limits on what one client may get,
//! and DNS over TCP served from the workers' own event loops.
//!
//! - [`rrl`]: response rate limiting per client prefix (token buckets, slip), one table per worker;
//! - [`conn`]: DNS-over-TCP connection state (framing, deadlines, limits, eviction), no sockets;
//! - [`tcp`]: a worker's listeners and its clients' connections, watched by its readiness hub.

pub mod conn;
pub mod rrl;
pub mod tcp;
