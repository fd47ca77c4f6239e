//! dnlb: a DNS relay that load-balances SIP server farms by answering SIP service names with
//! healthy servers only (the DN-LB scheme), built for the edge of a carrier network.
//!
//! ```text
//!  clients ─► worker 0..N (pinned, own SO_REUSEPORT socket, own io_uring) ─► reply
//!                 │ load() once per batch
//!                 ▼
//!            SnapshotHandle (ArcSwap<Snapshot>) ◄── publish() on change ── prober (SIP OPTIONS/REGISTER)
//! ```
//!
//! Modules:
//! - [`config`]: TOML → validated [`config::Config`], errors that name file, line, field and fix.
//! - [`control`]: the control side of a running instance (runtime directory, ...).
//! - [`dns`]: zero-copy query parsing, reply templates and their copy-and-patch.
//! - [`snapshot`]: the immutable answer set and its lock-free handle.
//! - [`edge`]: limits at the edge: response rate limiting.
//! - [`hosts`]: local names from a hosts file, answered from the same snapshot.
//! - [`relay`]: the upstream relay: its logic without I/O, a socket per upstream query, reply
//!   acceptance, the cache.
//! - [`select`]: selection policies (round-robin, on-duty, weighted, latency), pure functions.
//! - [`probe`]: SIP probes, the health state machine, the prober thread.
//! - [`worker`]: per-query logic, shared by UDP workers and TCP connections.
//! - [`io`]: the io_uring and recvmmsg backends; the only module with `unsafe`.
//! - [`server`]: starting and stopping threads.
//! - [`prefix`]: address prefixes (who the relay serves, who rate limiting spares).
//! - [`metrics`]: per-worker counters.
//! - [`files`]: reading operator files (config, hosts, CA) bounded and without blocking.
//! - [`logging`]: log lines (text, journal, JSON) and rate limiting for repeatable ones.

pub mod cluster;
pub mod config;
pub mod control;
pub mod dns;
pub mod edge;
pub mod files;
pub mod hosts;
pub mod io;
pub mod logging;
pub mod metrics;
pub mod prefix;
pub mod probe;
pub mod relay;
pub mod select;
pub mod server;
pub mod sites;
pub mod snapshot;
pub mod worker;
