//! What a running instance is now, as its readers see it: one value, replaced whole when a
//! reload changes it, so a reader never sees the configuration of one reload beside the prober
//! of another.
//!
//! ```text
//!  ControlPlane (main thread) ── start, reload ──► RunningView::publish(Running { config, prober, drains })
//!  control socket thread ──► load(): status, explain, drain
//!  metrics thread ─────────► load(): the prober's counters and reports
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

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
    /// The fleet (`[cluster]`): status and metrics read it, drains go to etcd through it;
    /// `None` alone.
    pub fleet: Option<crate::cluster::Handle>,
}

impl Running {
    /// `config` as `prober` (if probing is on) serves it.
    pub fn new(config: Arc<Config>, prober: Option<&Prober>) -> Running {
        Running { config, prober: prober.map(Prober::view), drains: prober.map(Prober::control), fleet: None }
    }

    /// The same, for a member of `fleet`.
    pub fn in_fleet(mut self, fleet: Option<&crate::cluster::Member>) -> Running {
        self.fleet = fleet.map(|f| f.handle().clone());
        self
    }
}

/// How the reloads of a running instance went, counted by the control plane (the only writer)
/// and read by the metrics endpoint and the status page.
#[derive(Debug)]
pub struct Reloads {
    /// Reloads that put a configuration (or hosts file) in place.
    pub succeeded: AtomicU64,
    /// Reloads refused: an invalid file, answers that could not be built, a prober that would
    /// not start. The running configuration stayed.
    pub failed: AtomicU64,
    /// Whether the last reload succeeded (1; also before any reload) or failed (0).
    pub last_ok: AtomicU64,
    /// When the configuration in force was put in place (Unix milliseconds): the start, or the
    /// last successful reload.
    pub last_success_unix_ms: AtomicU64,
}

impl Default for Reloads {
    fn default() -> Reloads {
        Reloads {
            succeeded: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            last_ok: AtomicU64::new(1),
            last_success_unix_ms: AtomicU64::new(unix_ms(SystemTime::now())),
        }
    }
}

impl Reloads {
    /// Counts a reload that ended at `at`, well or not.
    pub fn record(&self, ok: bool, at: SystemTime) {
        if ok {
            self.succeeded.fetch_add(1, Ordering::Relaxed);
            self.last_success_unix_ms.store(unix_ms(at), Ordering::Relaxed);
        } else {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        self.last_ok.store(u64::from(ok), Ordering::Relaxed);
    }
}

/// `at` in milliseconds since the Unix epoch (0 before it).
fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The read side of [`Running`], shared by every thread that reports on the instance, with the
/// instance's reload counts (which outlive every [`Running`]).
#[derive(Clone)]
pub struct RunningView {
    current: Arc<ArcSwap<Running>>,
    reloads: Arc<Reloads>,
}

impl RunningView {
    /// A view holding `running`.
    pub fn new(running: Running) -> RunningView {
        RunningView { current: Arc::new(ArcSwap::from_pointee(running)), reloads: Arc::default() }
    }

    /// What runs now.
    pub fn load(&self) -> Arc<Running> {
        self.current.load_full()
    }

    /// Replaces what runs, in one store (the control plane calls this; readers only load).
    pub fn publish(&self, running: Running) {
        self.current.store(Arc::new(running));
    }

    /// How the reloads went.
    pub fn reloads(&self) -> &Reloads {
        &self.reloads
    }
}
