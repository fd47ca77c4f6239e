//! SIP health probing: the heart of DN-LB. dnlb answers only with servers that just proved they
//! are alive by answering a SIP request.
//!
//! - [`sip`]: the probe request (written from a template) and the reply checks (our own bounded
//!   parser: rsip cannot handle IPv6 references), bounded framing; no I/O;
//! - [`health`]: the rise/fall state machine, no I/O, time passed in;
//! - [`history`]: each server's last changes and flap counts, no I/O, time passed in;
//! - [`core`]: schedule, timers, retransmissions, verdicts and publish decisions, driven by
//!   events and `now`, no I/O;
//! - [`policy`]: who is served with what weight (overload, latency, last good), a pure rule;
//! - [`driver`]: the thread, a mio loop that gives the core real sockets and the clock;
//! - [`tls`]: the driver's TLS client (rustls over the probe's TCP stream), one step at a time.

pub mod core;
pub mod driver;
pub mod health;
pub mod history;
pub mod policy;
pub mod sip;
pub mod tls;

pub use self::core::ServerReport;
pub use driver::{initial_serving, Carry, DrainRequest, ProbeControl, ProbeStatus, ProbeView, Prober, ProberError};
