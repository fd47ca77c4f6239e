//! The control side of a running dnlb: what operators and service managers talk to, on threads of
//! its own, never touching a worker's state except through atomics and the snapshot swap.
//!
//! - [`runtime`]: where a running instance keeps its files (control socket, instance locks);
//! - [`metrics`]: the Prometheus endpoint, `GET /metrics`.

pub mod metrics;
pub mod runtime;
