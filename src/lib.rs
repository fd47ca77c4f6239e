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
//! Modules, leaves first (`dns`, `io`, `prefix`, `files`, `logging` and `hasher` import nothing
//! else of the crate; no two modules import each other):
//! - [`dns`]: zero-copy query parsing, reply templates and their copy-and-patch.
//! - [`io`]: the io_uring, recvmmsg and AF_XDP backends; the only module with `unsafe`.
//! - [`prefix`]: address prefixes (who the relay serves, who rate limiting spares, sites).
//! - [`files`]: reading operator files (config, hosts, CA) bounded and without blocking.
//! - [`logging`]: log lines (text, journal, JSON) and rate limiting for repeatable ones.
//! - [`hasher`]: the hasher of the snapshot's names and the site prefixes.
//! - [`config`]: TOML → validated [`config::Config`], errors that name file, line, field and fix;
//!   every key of the file listed ([`config::keys`]).
//! - [`hosts`]: local names from a hosts file, parsed once into a table of encoded answers that
//!   every snapshot of a configuration shares.
//! - [`select`]: selection policies (round-robin, on-duty, weighted, latency), pure functions.
//! - [`sites`]: `[[sites]]`: which view (preference list of sites) a client's address gets.
//! - [`snapshot`]: the immutable answer set and the handle that publishes it (and stamps its
//!   generation).
//! - [`relay`]: the upstream relay: its logic without I/O, its upstream pool, a socket per
//!   upstream query, reply acceptance, the cache.
//! - [`edge`]: what one client may get (response rate limiting) and DNS over TCP's connections.
//! - [`counters`]: per-worker counters, single writer each.
//! - [`worker`]: per-query logic shared by UDP and TCP, a worker's readiness hub and the settings
//!   a reload swaps under it.
//! - [`server`]: starting and stopping the workers.
//! - [`probe`]: SIP probes, the health state machine, the answer policy, the prober thread.
//! - [`control`]: the control plane: start, watchdog, reloads, the control socket, metrics,
//!   runtime directory, privileges, service-manager notifications.
//! - [`cluster`]: the fleet (`[cluster]`): instances of one farm sharing probing through etcd;
//!   its decisions without I/O, the prober's link to it, the etcd thread (feature `cluster`).

pub mod cluster;
pub mod config;
pub mod control;
pub mod counters;
pub mod dns;
pub mod edge;
pub mod files;
pub mod hasher;
pub mod hosts;
pub mod io;
pub mod logging;
pub mod prefix;
pub mod probe;
pub mod relay;
pub mod select;
pub mod server;
pub mod sites;
pub mod snapshot;
pub mod worker;
