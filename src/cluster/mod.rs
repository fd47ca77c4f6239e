//! The fleet: several dnlb instances in front of one SIP farm share probing and agree on health
//! through etcd (`[cluster]`). Without a `[cluster]` section none of this runs: no thread, no
//! handle, nothing on any path.
//!
//! ```text
//!  prober thread ──Report (verdict changes)──► cluster thread (etcd.rs: tokio current-thread, etcd-client) ──put──► etcd
//!       ▲                                          │  lease keep-alive, only while the prober's heartbeat moves
//!       │ duty, others' verdicts, drains           │  watch /dnlb/v1/<farm>/ from a revision (re-read on compaction)
//!       └────────── ArcSwap<Published> ◄───────────┘  fleet.rs: bounded parse ─► FleetView (core.rs: duty, rules)
//!  snapshot build = f(local verdicts for this instance's duty, the others' for the rest, drains)
//! ```
//!
//! The decisions (who probes what, how verdicts combine, when a detached instance stops trusting
//! the others) are in [`core`], without I/O and on injected time; what etcd holds is parsed and
//! bounded in [`fleet`]; the etcd client runs on a thread of its own (`etcd`, with the `cluster`
//! cargo feature) and talks to the prober only through a [`Handle`]: which servers to probe,
//! the others' verdicts in, this instance's verdicts out. The workers never see any of it: they
//! read the same snapshot as always.

pub mod core;
#[cfg(feature = "cluster")]
pub mod etcd;
pub mod fleet;
pub mod prober;
pub mod report;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

use self::core::{LinkState, Seen};
use self::fleet::FleetView;
use crate::config::Transport;

/// A running membership of a fleet: the cluster thread. Dropping it leaves the fleet (the lease
/// is revoked, so the others take this instance's duty at once).
pub struct Member {
    #[cfg(feature = "cluster")]
    thread: etcd::ClusterThread,
    handle: Handle,
}

impl Member {
    /// The handle the prober and the control side use.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Leaves the fleet: the lease is revoked (at most a second), so the others take this
    /// instance's duty at once instead of after its TTL.
    pub fn leave(self) {
        #[cfg(feature = "cluster")]
        self.thread.shutdown();
    }
}

impl std::fmt::Debug for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member").field("handle", &self.handle).finish()
    }
}

/// Every server of `config` as the fleet names it ([`core::server_key`]), services' servers in
/// order: the flat server index the prober and the cluster thread share.
pub fn server_keys(config: &crate::config::Config) -> Vec<String> {
    config
        .services
        .iter()
        .flat_map(|s| {
            s.servers.iter().map(move |v| core::server_key(&s.name, std::net::SocketAddr::new(v.address, v.port)))
        })
        .collect()
}

/// Joins the fleet `config.cluster` names (`None` without a `[cluster]` section: nothing
/// starts). Waits at most 3 s for etcd; a name another live instance holds is an error, an
/// unreachable etcd is not (the instance runs detached and keeps trying).
pub fn join(config: &crate::config::Config) -> Result<Option<Member>, ClusterError> {
    let Some(c) = &config.cluster else { return Ok(None) };
    #[cfg(feature = "cluster")]
    {
        let config_hash = core::config_hash(config, c.probers_per_server);
        tracing::info!(
            farm = %c.farm,
            name = %c.name,
            k = c.probers_per_server,
            config = %config_hash,
            "joining the fleet"
        );
        let setup = etcd::Setup { config: c.clone(), servers: server_keys(config), config_hash, alive: None };
        let thread = etcd::spawn(setup)?;
        let handle = thread.handle().clone();
        Ok(Some(Member { thread, handle }))
    }
    #[cfg(not(feature = "cluster"))]
    {
        // Validation refuses `[cluster]` in a build without the feature.
        let _unused = c;
        Ok(None)
    }
}

/// Why the fleet could not be joined. The operator's setup, or etcd's answer.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// Another live instance holds this instance's name.
    #[error("cluster.name `{name}` is already live in farm `{farm}` ({holder}): give this instance another name, or stop the other one")]
    NameTaken {
        /// The name.
        name: String,
        /// The farm.
        farm: String,
        /// What the holder published about itself.
        holder: String,
    },
    /// A credentials or TLS file could not be read.
    #[error("{field}: cannot read {path}: {why}")]
    File {
        /// The configuration field that names it.
        field: &'static str,
        /// The path.
        path: String,
        /// What went wrong.
        why: String,
    },
    /// The thread or its runtime could not start.
    #[error("cannot start the cluster thread: {0}")]
    Start(#[from] std::io::Error),
}

/// What the cluster thread publishes for the prober and for status: one immutable value,
/// swapped whole.
#[derive(Debug, Clone)]
pub struct Published {
    /// Bumped at every publish.
    pub generation: u64,
    /// The link to etcd.
    pub link: LinkState,
    /// Since when (wall clock, for status).
    pub since: SystemTime,
    /// The lease TTL etcd granted (0 before the first grant).
    pub ttl: Duration,
    /// The fleet as last read (empty before the first read).
    pub view: FleetView,
    /// Why the link is not attached, if it is not (the last etcd error).
    pub problem: Option<String>,
}

/// One message from the prober to the cluster thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// What this instance now sees of server `server` (the farm's flat server index): written
    /// to etcd if it differs from what was written last.
    Verdict {
        /// The server.
        server: usize,
        /// Per transport.
        seen: Vec<(Transport, Seen)>,
    },
    /// This instance stopped probing `server` (its duty moved): its verdict key is deleted.
    Stopped {
        /// The server.
        server: usize,
    },
}

/// An operator's cluster-wide drain or undrain, with where its answer goes.
#[derive(Debug)]
pub struct DrainOrder {
    /// The farm's flat server indices it applies to.
    pub servers: Vec<usize>,
    /// Drain (`true`) or undrain.
    pub drained: bool,
    /// Where the outcome goes: `Ok` once etcd holds it.
    pub reply: SyncSender<Result<(), String>>,
}

/// Counters of the cluster thread (metrics and status).
#[derive(Debug, Default)]
pub struct ClusterStats {
    /// Verdict keys written (or deleted) in etcd.
    pub verdict_writes: AtomicU64,
    /// Times the watch was started again (compaction, cancellation, a broken stream).
    pub watch_restarts: AtomicU64,
    /// Keys or values under the prefix refused (too large, malformed, unknown).
    pub refused: AtomicU64,
    /// Attach/detach transitions.
    pub transitions: AtomicU64,
    /// Leases granted (1 at start; one more after each lease that expired while detached).
    pub leases: AtomicU64,
    /// Reports dropped because the cluster thread's queue was full (it catches up from the
    /// prober's next report of that server).
    pub dropped_reports: AtomicU64,
    /// Servers this instance is a current prober of (the prober stores it).
    pub duty_servers: AtomicU64,
    /// Milliseconds since the handle was made, at the prober's last pass: the lease is kept
    /// alive only while it moves.
    pub heartbeat_ms: AtomicU64,
}

/// The bounded queue of reports from the prober: a full queue drops and counts, never waits.
pub const REPORT_QUEUE: usize = 4096;

/// The prober's and control's side of the cluster thread.
#[derive(Clone)]
pub struct Handle {
    /// What the cluster thread last published.
    pub published: Arc<ArcSwap<Published>>,
    /// Its counters.
    pub stats: Arc<ClusterStats>,
    reports: SyncSender<Report>,
    drains: SyncSender<DrainOrder>,
    reconfigure: SyncSender<Reconfigure>,
    wake: Arc<dyn Fn() + Send + Sync>,
    made: std::time::Instant,
    /// Wakes the prober's loop (set by the prober when it starts).
    pub prober_waker: Arc<arc_swap::ArcSwapOption<Box<dyn Fn() + Send + Sync>>>,
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle").field("generation", &self.published.load().generation).finish()
    }
}

/// The cluster thread's side of a [`Handle`].
pub struct Inbox {
    /// Reports from the prober.
    pub reports: Receiver<Report>,
    /// Drains from the control thread.
    pub drains: Receiver<DrainOrder>,
    /// A reloaded configuration's farm.
    pub reconfigure: Receiver<Reconfigure>,
}

/// A reload changed the farm's servers or its probe settings: the member key is written with
/// the new configuration hash, the fleet read again over the new servers, and this instance's
/// old verdict keys deleted.
#[derive(Debug)]
pub struct Reconfigure {
    /// The servers' keys ([`server_keys`]).
    pub servers: Vec<String>,
    /// The new configuration hash.
    pub config_hash: String,
    /// Told once the old verdicts are deleted and the reports of the old prober dropped.
    pub done: SyncSender<()>,
}

impl Handle {
    /// A handle and its inbox; `wake` tells the cluster thread that something is queued.
    pub fn new(initial: Published, wake: Arc<dyn Fn() + Send + Sync>) -> (Handle, Inbox) {
        let (reports, rx) = std::sync::mpsc::sync_channel(REPORT_QUEUE);
        let (drains, drx) = std::sync::mpsc::sync_channel(16);
        let (reconfigure, rrx) = std::sync::mpsc::sync_channel(1);
        let handle = Handle {
            published: Arc::new(ArcSwap::from_pointee(initial)),
            stats: Arc::new(ClusterStats::default()),
            reports,
            drains,
            reconfigure,
            wake,
            made: std::time::Instant::now(),
            prober_waker: Arc::new(arc_swap::ArcSwapOption::empty()),
        };
        (handle, Inbox { reports: rx, drains: drx, reconfigure: rrx })
    }

    /// Publishes `p` and wakes the prober to apply it.
    pub fn publish(&self, p: Published) {
        self.published.store(Arc::new(p));
        if let Some(wake) = self.prober_waker.load().as_ref() {
            wake();
        }
    }

    /// The prober went round its loop once more.
    pub fn beat(&self) {
        let ms = u64::try_from(self.made.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.stats.heartbeat_ms.store(ms, Ordering::Relaxed);
    }

    /// Whether the prober went round its loop within `limit`.
    pub fn prober_alive(&self, limit: Duration) -> bool {
        let beat = Duration::from_millis(self.stats.heartbeat_ms.load(Ordering::Relaxed));
        self.made.elapsed().saturating_sub(beat) <= limit
    }

    /// Queues a report without waiting; a full queue drops it and counts.
    pub fn report(&self, report: Report) {
        match self.reports.try_send(report) {
            Ok(()) => (self.wake)(),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.stats.dropped_reports.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Moves the membership to a reloaded configuration (its servers and hash); call it with
    /// the old prober stopped and before the new one starts. Waits at most 2 s.
    pub fn reconfigure(&self, servers: Vec<String>, config_hash: String) -> Result<(), String> {
        let (done, rx) = std::sync::mpsc::sync_channel(1);
        self.reconfigure
            .try_send(Reconfigure { servers, config_hash, done })
            .map_err(|_| "a reconfiguration is already under way".to_string())?;
        (self.wake)();
        rx.recv_timeout(Duration::from_secs(2))
            .map_err(|_| "the cluster thread did not take the new farm within 2 s".into())
    }

    /// Drains or undrains `servers` cluster-wide; returns once etcd holds it (at most 3 s).
    pub fn drain(&self, servers: Vec<usize>, drained: bool) -> Result<(), String> {
        let (reply, rx) = std::sync::mpsc::sync_channel(1);
        self.drains
            .try_send(DrainOrder { servers, drained, reply })
            .map_err(|_| "the cluster thread is busy; try again".to_string())?;
        (self.wake)();
        rx.recv_timeout(Duration::from_secs(3)).map_err(|_| "etcd did not confirm within 3 s".to_string())?
    }
}
