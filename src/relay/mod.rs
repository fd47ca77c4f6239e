//! The relay, for every name that is not a managed SIP name: each worker owns a
//! [`sockets::Relay`] with its own upstream sockets, pending table and cache.
//!
//! - [`engine`]: one worker's relay logic without I/O (pending table, dedupe, accept, retry,
//!   SERVFAIL on timeout, the cache, serve-stale and prefetch), driven by events and the time;
//! - [`pool`]: its upstreams: routes, choice, failures, 0x20 learning, health-check schedule;
//! - [`sockets`]: its I/O: a socket per upstream exchange, in one epoll instance;
//! - [`upstream`]: which upstream replies to accept (source, ID, exact question and case);
//! - [`cache`]: answers kept as bytes, TTLs counting down and capped, negative caching per RFC 2308,
//!   stale answers (RFC 8767) and the prefetch mark, stale entries out first;
//! - [`random`]: IDs and letter case from the system's random source, never a fallback;

pub mod cache;
pub mod engine;
pub mod pool;
pub mod random;
pub mod sockets;
pub mod upstream;

/// Why a worker's relay could not be set up. The environment's fault, not a client's or an
/// upstream's: dnlb refuses to start.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The system's random source failed; relaying with predictable IDs is not an option.
    #[error("the system's random source failed: {0} (the relay needs it for query IDs; check getrandom(2) and /dev/urandom)")]
    Random(getrandom::Error),
    /// The epoll instance for the upstream sockets could not be created.
    #[error("cannot create the relay's epoll instance: {0}")]
    Poll(std::io::Error),
}
