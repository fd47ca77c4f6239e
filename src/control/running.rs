//! What a running instance is now, as its readers see it: one value, replaced whole when a
//! reload changes it, so a reader never sees the configuration of one reload beside the prober
//! of another.
//!
//! ```text
//!  ControlPlane (main thread) ── start, reload ──► RunningView::publish(Running { config, prober, drains })
//!  control socket thread ──► load(): status, explain, drain
//!  metrics thread ─────────► load(): the prober's counters and reports
//! ```

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::Config;
use crate::probe::{ProbeControl, ProbeView, Prober};

/// The running configuration and the prober that serves it.
#[derive(Clone)]
pub struct Running {
    /// The configuration in force: the file's, less what needs a restart (which keeps the values
    /// the instance started with).
    pub config: Arc<Config>,
    /// The running prober's counters, reports and heartbeat; `None` when probing is off.
    pub prober: Option<ProbeView>,
    /// Drains go to the running prober through this; `None` when probing is off.
    pub drains: Option<ProbeControl>,
}

impl Running {
    /// `config` as `prober` (if probing is on) serves it.
    pub fn new(config: Arc<Config>, prober: Option<&Prober>) -> Running {
        Running { config, prober: prober.map(Prober::view), drains: prober.map(Prober::control) }
    }
}

/// The read side of [`Running`], shared by every thread that reports on the instance.
#[derive(Clone)]
pub struct RunningView(Arc<ArcSwap<Running>>);

impl RunningView {
    /// A view holding `running`.
    pub fn new(running: Running) -> RunningView {
        RunningView(Arc::new(ArcSwap::from_pointee(running)))
    }

    /// What runs now.
    pub fn load(&self) -> Arc<Running> {
        self.0.load_full()
    }

    /// Replaces what runs, in one store (the control plane calls this; readers only load).
    pub fn publish(&self, running: Running) {
        self.0.store(Arc::new(running));
    }
}
