//! What dnlb does at the edge of a network it does not trust: limits on what one client may get,
//! and DNS over TCP served from the workers' own event loops.
//!
//! - [`rrl`]: response rate limiting per client prefix (token buckets, slip), one table per worker;
//! - [`conn`]: DNS-over-TCP connection state (framing, deadlines, limits, eviction), no sockets;
//! - [`tcp`]: a worker's listeners and connections in its own epoll instance;
//! - [`settings`]: the relay and rate-limit settings a reload swaps under running workers.

pub mod conn;
pub mod rrl;
pub mod settings;
pub mod tcp;
