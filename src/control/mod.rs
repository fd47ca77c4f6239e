//! The control side of a running dnlb: what operators and service managers talk to, on threads of
//! its own, never touching a worker's state except through atomics and the snapshot swap.
//!
//! - [`runtime`]: where a running instance keeps its files (control socket, instance locks);
//! - [`socket`]: the control socket (`dnlb status`, `explain`, `reload`);
//! - [`report`]: what status and explain say, from the snapshot, the prober and the config;
//! - [`metrics`]: the Prometheus endpoint, `GET /metrics`;
//! - [`instance`]: one dnlb per listen address, by a lock file per address;
//! - [`privilege`]: becoming `server.user` once every socket is bound;
//! - [`notify`]: READY, RELOADING and WATCHDOG for a service manager (`sd_notify`).

pub mod instance;
pub mod listener;
pub mod metrics;
pub mod notify;
pub mod privilege;
pub mod report;
pub mod runtime;
pub mod socket;
