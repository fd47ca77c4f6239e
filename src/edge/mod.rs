//! What dnlb does at the edge of a network it does not trust: limits on what one client may get.
//!
//! - [`rrl`]: response rate limiting per client prefix (token buckets, slip), one table per worker;
//! - [`tcp`]: DNS-over-TCP connection state (framing, deadlines, limits, eviction), no sockets.

pub mod rrl;
pub mod tcp;
