//! The control side of a running dnlb: what operators and service managers talk to, on threads of
//! its own, never touching a worker's state except through atomics and the snapshot swap.
//!
//! - [`runtime`]: where a running instance keeps its files (control socket, instance locks);
//! - [`socket`]: the control socket (`dnlb status`, `explain`, `reload`);
//! - [`report`]: what status and explain say, from the snapshot, the prober and the config;
//! - [`metrics`]: the Prometheus endpoint, `GET /metrics`.

pub mod metrics;
pub mod report;
pub mod runtime;
pub mod socket;
