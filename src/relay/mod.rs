//! The relay's building blocks, for every name that is not a managed SIP name. No I/O here yet:
//! the per-worker upstream sockets and pending table that use these come next.
//!
//! - [`upstream`]: which upstream replies to accept (source, ID, exact question);
//! - [`cache`]: answers kept as bytes, TTLs counting down, negative caching per RFC 2308.

pub mod cache;
pub mod upstream;
