//! The relay, for every name that is not a managed SIP name: each worker owns an [`engine::Relay`]
//! with its own upstream sockets, pending table and cache.
//!
//! - [`engine`]: one worker's relay (forward, dedupe, accept, retry, SERVFAIL on timeout);
//! - [`upstream`]: which upstream replies to accept (source, ID, exact question);
//! - [`cache`]: answers kept as bytes, TTLs counting down, negative caching per RFC 2308;
//! - [`acl`]: which clients are served.

pub mod acl;
pub mod cache;
pub mod engine;
pub mod upstream;
