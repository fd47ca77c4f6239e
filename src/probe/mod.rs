//! SIP health probing: the heart of DN-LB. dnlb answers only with servers that just proved they
//! are alive by answering a SIP request.
//!
//! - [`sip`]: the probe request and the reply checks (rsip), no I/O;
//! - [`health`]: the rise/fall state machine, no I/O, time passed in;
//! - [`prober`]: the thread that pipelines probes and publishes snapshots.

pub mod health;
pub mod prober;
pub mod sip;

pub use prober::{initial_health, ProbeStatus, Prober, ServerReport};
