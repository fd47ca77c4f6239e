//! The control side of a running dnlb: what operators and service managers talk to, on the main
//! thread and threads of its own, never touching a worker's state except through atomics, the
//! snapshot swap and the edge settings.
//!
//! ```text
//!  main thread: ControlPlane ── owns ──► config in force, prober, Server handle, locks
//!       │  publishes ──► RunningView ◄── reads ── control socket thread, metrics thread
//!       └─ reload::plan decides what a reload changes and what needs a restart
//! ```
//!
//! - [`plane`]: the [`plane::ControlPlane`]: start, the watchdog loop, reloads, stop;
//! - [`running`]: the read view of what runs (configuration, prober), swapped whole;
//! - [`reload`]: which keys a reload applies and which need a restart, in one table;
//! - [`hosts_watch`]: noticing a changed hosts file (`hosts.watch`), on injected time;
//! - [`answers`]: what the control socket answers (status, explain, reload, drain, undrain);
//! - [`socket`]: the control socket itself (`dnlb status`, `explain`, `reload`, `drain`, `undrain`);
//! - [`status`]: what status shows, gathered once for the text, the JSON and the page;
//! - [`report`]: what status and explain say, from the snapshot, the prober and the config;
//! - [`metrics`]: the Prometheus endpoint, `GET /metrics`, and the status page and its JSON;
//! - [`page`]: the status page's HTML, rendered from [`status::Status`];
//! - [`runtime`]: where a running instance keeps its files (control socket, instance locks);
//! - [`instance`]: one dnlb per listen address, by a lock file per address;
//! - [`privilege`]: becoming `server.user` once every socket is bound;
//! - [`notify`]: READY, RELOADING, WATCHDOG and STOPPING for a service manager (`sd_notify`).

pub mod answers;
pub mod hosts_watch;
pub mod instance;
pub mod listener;
pub mod metrics;
pub mod notify;
pub mod page;
pub mod plane;
pub mod privilege;
pub mod reload;
pub mod report;
pub mod running;
pub mod runtime;
pub mod socket;
pub mod status;
