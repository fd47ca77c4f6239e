//! The control plane of a running dnlb: one object that starts the instance, owns what runs (the
//! configuration in force, the prober, the data plane's handles), publishes one read view of it,
//! and serves the main thread's loop: the watchdog, signals, reloads and the hosts-file watch.
//!
//! ```text
//!  start ─► config (+ command-line overrides) ─► runtime directory checked ─► instance locks
//!        ─► Layout ─► first snapshot
//!        ─► Server::start (workers) ─► prober ─► metrics endpoint ─► control socket
//!        ─► drop to server.user ─► READY=1
//!  serve (main thread, every 100 ms):
//!        watchdog: workers alive, prober heartbeat fresh ─► WATCHDOG=1 (else exit 1)
//!        SIGHUP · `dnlb reload` · hosts.watch ─► files read on thread dnlb-load, made at start
//!            (the loop goes on feeding the watchdog and watching for SIGTERM) ─► reload::plan ─► new Layout ─► stop the prober,
//!            carry its health ─► start one on the new config ─► edge settings ─► RunningView
//!        SIGINT / SIGTERM ─► STOPPING=1 ─► prober, workers stopped ─► locks released
//! ```
//!
//! Readers (the control socket's thread, the metrics endpoint's) see only the [`RunningView`] and
//! the snapshot; everything that changes the instance happens on the thread that calls
//! [`ControlPlane::serve`].

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::answers::ControlAnswers;
use super::hosts_watch::HostsWatch;
use super::instance::{InstanceLocks, LockError};
use super::metrics::{MetricsError, MetricsServer, Sources};
use super::notify;
use super::privilege::{self, Outcome, PrivilegeError, Target};
use super::reload::{self, Plan};
use super::running::{Running, RunningView};
use super::runtime::{self, RuntimeDir, RuntimeError};
use super::socket::{ControlError, ControlSocket, Reply};
use crate::config::{Config, ConfigError, HostsSource, IoMode};
use crate::dns::encode::EncodeError;
use crate::hosts::Hosts;
use crate::probe::core::OsEntropy;
use crate::probe::{initial_serving, Carry, Prober, ProberError};
use crate::server::{Server, ServerError};
use crate::snapshot::{Layout, Snapshot, SnapshotHandle};

/// How long the loop waits for a reload request between two watchdog checks.
const TICK: Duration = Duration::from_millis(100);

/// Why the instance could not start, or why it stopped with a failure.
#[derive(Debug, thiserror::Error)]
pub enum PlaneError {
    /// The configuration file could not be read or is invalid (the operator's file).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The configuration has no listen address to name the control socket after.
    #[error("the configuration has no listen address")]
    NoListen,
    /// `server.user` cannot be assumed (the operator's setup).
    #[error(transparent)]
    Privilege(#[from] PrivilegeError),
    /// No runtime directory, or one that another user owns or may write.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// Another instance holds a listen address, or a lock file is unusable.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// The answers could not be encoded.
    #[error("building answers: {0}")]
    Answers(#[from] EncodeError),
    /// The workers or their sockets could not start.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// The fleet (`[cluster]`) could not be joined.
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    /// The prober could not start.
    #[error("starting the prober: {0}")]
    Prober(#[from] ProberError),
    /// The metrics endpoint could not start.
    #[error("starting the metrics endpoint: {0}")]
    Metrics(#[from] MetricsError),
    /// The control socket could not be set up.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// The signal handlers could not be installed.
    #[error("installing signal handlers: {0}")]
    Signals(std::io::Error),
    /// The thread that reads files for reloads could not start.
    #[error("starting the thread that reads files for reloads: {0}")]
    Loader(std::io::Error),
    /// The instance ran and then failed: the prober stalled, a worker or the prober ended badly.
    #[error("{}", .0.join("; "))]
    Stopped(Vec<String>),
}

/// What the command line changes in every configuration read (`--io`, `--workers`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Overrides {
    /// `server.io`.
    pub io: Option<IoMode>,
    /// `server.workers`.
    pub workers: Option<usize>,
}

impl Overrides {
    /// Reads `path` and applies the overrides to it.
    fn load(&self, path: &Path) -> Result<Config, ConfigError> {
        let mut config = Config::load(path)?;
        if let Some(io) = self.io {
            config.server.io = io;
        }
        if let Some(n) = self.workers {
            config.server.workers = Some(n);
        }
        Ok(config)
    }
}

/// The control socket path of the instance `config` describes.
pub fn control_path(config: &Config) -> Result<PathBuf, PlaneError> {
    let first = *config.server.listen.first().ok_or(PlaneError::NoListen)?;
    Ok(runtime::control_socket(&runtime::dir(config.server.runtime_dir.as_deref())?, first))
}

/// What starts a reload.
enum Trigger {
    /// SIGHUP.
    Hangup,
    /// `dnlb reload` through the control socket; the reply goes back here.
    Asked(SyncSender<Reply>),
    /// The watched hosts file changed.
    Hosts(HostsSource),
}

/// The signals the loop answers, set by their handlers.
struct Signals {
    /// SIGINT or SIGTERM.
    stop: Arc<AtomicBool>,
    /// SIGHUP.
    hangup: Arc<AtomicBool>,
}

impl Signals {
    fn install() -> Result<Signals, PlaneError> {
        let stop = Arc::new(AtomicBool::new(false));
        for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            signal_hook::flag::register(signal, stop.clone()).map_err(PlaneError::Signals)?;
        }
        let hangup = Arc::new(AtomicBool::new(false));
        signal_hook::flag::register(signal_hook::consts::SIGHUP, hangup.clone()).map_err(PlaneError::Signals)?;
        Ok(Signals { stop, hangup })
    }
}

/// A running instance, as the main thread holds it.
pub struct ControlPlane {
    /// The configuration file, read again on every reload.
    path: PathBuf,
    overrides: Overrides,
    /// The configuration in force.
    config: Arc<Config>,
    /// The running prober; `None` when probing is off.
    prober: Option<Prober>,
    /// The fleet's membership (`[cluster]`), kept over reloads; `None` alone.
    fleet: Option<crate::cluster::Member>,
    server: Server,
    snapshots: SnapshotHandle,
    /// The read view published after every change of `config` or `prober`.
    view: RunningView,
    /// The one-line status `systemctl status` shows.
    serving: String,
    signals: Signals,
    reloads: Receiver<SyncSender<Reply>>,
    hosts_watch: HostsWatch,
    /// Thread `dnlb-load`, which reads the files of reloads and hosts changes.
    loader: Loader,
    /// Why the instance must stop: a reload stopped the prober and no prober could start again,
    /// so the answers would stay frozen on the last health.
    failed: Option<String>,
    /// Dropped (stopped) with the plane.
    _metrics: Option<MetricsServer>,
    _control: ControlSocket,
    /// Released last, when the plane is dropped: a successor must not bind while this instance
    /// still answers.
    _locks: InstanceLocks,
}

impl ControlPlane {
    /// Reads `path` (with `overrides`) and starts the instance it describes: every socket bound,
    /// the first snapshot published, privileges dropped, READY=1 sent.
    pub fn start(path: &Path, overrides: Overrides) -> Result<ControlPlane, PlaneError> {
        let signals = Signals::install()?;
        let config = overrides.load(path)?;
        let control_path = control_path(&config)?;
        // The user is looked up before anything is bound, so a typo or a start without root
        // fails before the first socket exists.
        let target = config.server.user.as_deref().map(privilege::resolve).transpose()?;
        // Checked before anything is made in it (root's or the user's, no one else's to write);
        // what dnlb makes there is given to server.user before the drop.
        let runtime_dir = RuntimeDir::prepare(
            &runtime::dir(config.server.runtime_dir.as_deref())?,
            target.as_ref().map(Target::ids),
        )?;
        // One instance per listen address: SO_REUSEPORT would let a second dnlb bind silently
        // and split the clients between two configurations.
        let locks = InstanceLocks::acquire(&runtime_dir, &config.server.listen)?;
        // The first snapshot follows the configured start state; the prober publishes from then on.
        let layout = Arc::new(Layout::new(&config)?);
        let snapshots = SnapshotHandle::new(Snapshot::build_with(&layout, &config, &initial_serving(&config), 0)?);
        let relay = config.relay.clone().map(Arc::new);
        let server = Server::start(&config.server, relay, config.rrl.clone(), snapshots.clone())?;
        // The fleet (`[cluster]`) before the prober, which takes its duty from it.
        let fleet = crate::cluster::join(&config)?;
        let prober = spawn_prober(&config, layout, &snapshots, &Carry::new(), fleet.as_ref())?;
        if prober.is_none() {
            tracing::info!("probing is off: every configured server counts as healthy");
        }
        let config = Arc::new(config);
        let view = RunningView::new(Running::new(config.clone(), prober.as_ref()).in_fleet(fleet.as_ref()));
        let metrics = match &config.metrics {
            Some(m) => {
                let sources =
                    Sources { counters: server.counters(), running: view.clone(), snapshots: snapshots.clone() };
                let endpoint = MetricsServer::start_with(m, sources)?;
                tracing::info!("metrics on http://{}/metrics", endpoint.local_addr());
                Some(endpoint)
            }
            None => None,
        };
        if let Some(why) = server.fallback_reason() {
            tracing::warn!("io_uring unavailable, using the portable backend: {why}");
        }
        let serving = serving(&config, &server);
        let (reload_tx, reloads) = sync_channel(1);
        let answers = ControlAnswers {
            running: view.clone(),
            snapshots: snapshots.clone(),
            counters: server.counters(),
            reloads: reload_tx,
        };
        let control = ControlSocket::start(&runtime_dir, &control_path, answers)?;
        // Made now, while still root: a reload must not need a new thread to read its files
        // (under a unit's TasksMax, none may be left).
        let loader = Loader::start().map_err(PlaneError::Loader)?;
        // Every socket is bound (the prober's, the control socket) while still root; from here
        // on, the user's.
        if let Some(target) = &target {
            become_user(target)?;
        }
        tracing::info!("{serving}");
        // READY=1 once every socket is bound and the first snapshot (built from the configured
        // start state) is published; the prober's first verdicts come later, as snapshot swaps.
        if let Err(e) = notify::ready(&serving) {
            tracing::warn!("{e}");
        }
        let hosts_watch = HostsWatch::new(&config, Instant::now());
        Ok(ControlPlane {
            loader,
            path: path.to_path_buf(),
            overrides,
            config,
            prober,
            fleet,
            server,
            snapshots,
            view,
            serving,
            signals,
            reloads,
            hosts_watch,
            failed: None,
            _metrics: metrics,
            _control: control,
            _locks: locks,
        })
    }

    /// What runs now, as the control socket and the metrics endpoint read it.
    pub fn view(&self) -> RunningView {
        self.view.clone()
    }

    /// Serves until SIGINT or SIGTERM, a worker's end or a prober stall, then stops everything.
    /// A stall or a failed stop is an error: the caller exits non-zero so a supervisor restarts
    /// dnlb rather than let it serve answers frozen on old health.
    pub fn serve(mut self) -> Result<(), PlaneError> {
        let mut watchdog = Watchdog::new(notify::watchdog_interval());
        let mut stalled = None;
        while !self.signals.stop.load(Ordering::Relaxed) && !self.server.worker_died() {
            if let Some(why) = self.prober.as_ref().and_then(stall).or_else(|| self.failed.take()) {
                tracing::error!("{why}: answers would be frozen; stopping so a supervisor restarts dnlb");
                stalled = Some(why);
                break;
            }
            // WATCHDOG=1 only from here: workers alive and the prober progressing, so a systemd
            // watchdog timeout means the same as the checks above, caught from outside.
            watchdog.ping(Instant::now());
            // Waits up to one tick for a reload request, which is then served at once.
            if let Some(trigger) = self.next_trigger() {
                self.reload(trigger);
            }
        }
        self.stop(stalled)
    }

    /// The next reason to reload, waiting up to [`TICK`] for a `dnlb reload`.
    fn next_trigger(&mut self) -> Option<Trigger> {
        if self.signals.hangup.swap(false, Ordering::Relaxed) {
            return Some(Trigger::Hangup);
        }
        if let Some(source) = self.hosts_watch.changed(&self.config, Instant::now()) {
            return Some(Trigger::Hosts(source));
        }
        self.reloads.recv_timeout(TICK).ok().map(Trigger::Asked)
    }

    /// Serves one reload between RELOADING=1 and READY=1 for the service manager, and answers
    /// whoever asked for it.
    fn reload(&mut self, trigger: Trigger) {
        if let Err(e) = notify::reloading() {
            tracing::warn!("{e}");
        }
        let reply = match &trigger {
            Trigger::Hosts(source) => self.reload_hosts(source),
            Trigger::Hangup | Trigger::Asked(_) => self.reload_file(),
        };
        self.view.reloads().record(reply.ok, std::time::SystemTime::now());
        if let Err(e) = notify::ready(&self.serving) {
            tracing::warn!("{e}");
        }
        if let Trigger::Asked(reply_to) = trigger {
            // The asker may have given up waiting; the reload is done either way.
            let _sent = reply_to.try_send(reply);
        }
    }

    /// Re-reads the configuration file and applies what can change in place. An invalid file
    /// changes nothing.
    fn reload_file(&mut self) -> Reply {
        let (overrides, path) = (self.overrides, self.path.clone());
        let Some(loaded) = self.loaded_aside(move || overrides.load(&path)) else { return abandoned() };
        match loaded {
            Ok(fresh) => {
                let source = self.path.display().to_string();
                self.apply(fresh, &source)
            }
            Err(e) => {
                tracing::error!("reload refused, the running configuration stays:\n{e}");
                Reply { ok: false, text: format!("{e}\n"), json: serde_json::json!({"error": e.to_string()}) }
            }
        }
    }

    /// Re-reads the hosts file only (`hosts.watch` saw it change): the running configuration
    /// with the file's new names. A file that does not parse changes nothing.
    fn reload_hosts(&mut self, source: &HostsSource) -> Reply {
        tracing::info!("hosts file {} changed: reading it", source.path.display());
        let (path, ttl) = (source.path.clone(), self.config.hosts_ttl);
        let Some(loaded) = self.loaded_aside(move || Hosts::load(&path, ttl)) else { return abandoned() };
        match loaded {
            Ok(hosts) => {
                let mut fresh = (*self.config).clone();
                fresh.hosts = Arc::new(hosts);
                self.apply(fresh, &source.path.display().to_string())
            }
            Err(e) => {
                // One line however many lines are bad: the report names the first few.
                tracing::error!("hosts file change refused, the running names stay: {e}");
                Reply { ok: false, text: format!("{e}\n"), json: serde_json::json!({"error": e.to_string()}) }
            }
        }
    }

    /// Runs `load` (a configuration or a hosts file: a million names take a second or more) on
    /// thread `dnlb-load` while this one goes on feeding the service manager's watchdog and
    /// watching for SIGTERM; `None` if a stop came first (the load is left to the exiting
    /// process).
    fn loaded_aside<T: Send + 'static>(&self, load: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        let (tx, rx) = sync_channel(1);
        // The receiver is gone only when dnlb is stopping: the result is not wanted then.
        let job: Job = Box::new(move || drop(tx.send(load())));
        if self.loader.jobs.send(job).is_err() {
            // Only if a load panicked, which aborts the process first in a release build.
            tracing::error!("the thread that reads the files has ended");
            return None;
        }
        let mut watchdog = Watchdog::new(notify::watchdog_interval());
        loop {
            match rx.recv_timeout(TICK) {
                Ok(value) => return Some(value),
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return None,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            }
            if self.signals.stop.load(Ordering::Relaxed) {
                return None;
            }
            // Fed on the loop's terms: only while every worker runs and the prober progresses.
            if !self.server.worker_died() && self.prober.as_ref().is_none_or(|p| !p.stalled()) {
                watchdog.ping(Instant::now());
            }
        }
    }

    /// Puts `fresh` (read from `source`) in place of the running configuration, as far as
    /// [`reload::plan`] allows; servers that stay keep their health.
    fn apply(&mut self, fresh: Config, source: &str) -> Reply {
        let Plan { config: applied, need_restart } = reload::plan(&self.config, fresh);
        let restart: Vec<String> = need_restart.iter().map(|k| reload::describe(k)).collect();
        if !restart.is_empty() {
            tracing::warn!(
                "reload: these settings need a restart and keep their running values: {}",
                restart.join(", ")
            );
        }
        // The new names and fixed answers, made once: a configuration that cannot be answered
        // is refused here, before anything stops.
        let layout = match Layout::new(&applied) {
            Ok(l) => Arc::new(l),
            Err(e) => {
                tracing::error!("reload refused, the running configuration stays: cannot build answers: {e}");
                return Reply {
                    ok: false,
                    text: format!("cannot build answers: {e}\n"),
                    json: serde_json::Value::Null,
                };
            }
        };
        let carry = match self.prober.take().map(Prober::stop_and_carry) {
            Some(Ok(carry)) => carry,
            Some(Err(e)) => {
                tracing::warn!("reload: the old prober did not hand over its health ({e}); servers start afresh");
                Carry::new()
            }
            None => Carry::new(),
        };
        let mut moved = false;
        if let (Some(f), Some(c)) = (&self.fleet, &applied.cluster) {
            // The old prober is stopped, the new one not started: the membership moves to the
            // new farm (servers, config hash) in between, so no report crosses from one to the
            // other.
            let k = c.probers_per_server;
            let (servers, hash) =
                (crate::cluster::server_keys(&applied), crate::cluster::core::config_hash(&applied, k));
            if servers != crate::cluster::server_keys(&self.config)
                || hash != crate::cluster::core::config_hash(&self.config, k)
            {
                tracing::info!(config = %hash, "reload: the farm or its probing changed; the fleet sees the new configuration");
                moved = true;
                if let Err(e) = f.handle().reconfigure(servers, hash) {
                    tracing::warn!("reload: {e}");
                }
            }
        }
        match spawn_prober(&applied, layout, &self.snapshots, &carry, self.fleet.as_ref()) {
            Ok(prober) => self.prober = prober,
            Err(e) => {
                let why = format!("the prober for the new configuration could not start ({e})");
                tracing::error!("reload refused, the running configuration stays: {why}");
                self.restart_prober(&carry, moved);
                return Reply { ok: false, text: format!("{why}\n"), json: serde_json::Value::Null };
            }
        }
        if let Some(p) = &self.prober {
            await_first_publish(p);
        }
        if applied.relay != self.config.relay || applied.rrl != self.config.rrl {
            self.server.reconfigure(applied.relay.clone().map(Arc::new), applied.rrl.clone());
        }
        self.config = Arc::new(applied);
        self.view.publish(Running::new(self.config.clone(), self.prober.as_ref()).in_fleet(self.fleet.as_ref()));
        let services = self.config.services.len();
        let kept = kept(&self.config, &carry);
        tracing::info!("reloaded {source}: {services} service(s), health kept for {kept} server transport(s)");
        Reply {
            ok: true,
            text: format!(
                "reloaded: {services} service(s); health kept for {kept} server transport(s){}\n",
                if restart.is_empty() { String::new() } else { format!("; need a restart: {}", restart.join(", ")) }
            ),
            json: serde_json::json!({"services": services, "kept": kept, "need_restart": need_restart}),
        }
    }

    /// After a reload stopped the prober and the new one could not start: starts one again on
    /// the running configuration with the health `carry` brought over, or, when that fails too,
    /// marks the instance failed so that [`ControlPlane::serve`] stops it (no prober would ever
    /// move the answers again). `moved` says whether the fleet's membership was moved to the
    /// refused configuration's farm (it moves back).
    fn restart_prober(&mut self, carry: &Carry, moved: bool) {
        if let (Some(f), Some(c), true) = (&self.fleet, &self.config.cluster, moved) {
            // Back to the running configuration's farm, which the restarted prober serves.
            let k = c.probers_per_server;
            let hash = crate::cluster::core::config_hash(&self.config, k);
            if let Err(e) = f.handle().reconfigure(crate::cluster::server_keys(&self.config), hash) {
                tracing::warn!("reload: {e}");
            }
        }
        let restarted = Layout::new(&self.config).map_err(PlaneError::from).and_then(|layout| {
            spawn_prober(&self.config, Arc::new(layout), &self.snapshots, carry, self.fleet.as_ref())
        });
        match restarted {
            Ok(prober) => {
                self.prober = prober;
                self.view.publish(Running::new(self.config.clone(), self.prober.as_ref()));
            }
            Err(e) => self.failed = Some(format!("no prober could start again on the running configuration ({e})")),
        }
    }

    /// Stops the prober and the workers; the error, if the prober stalled or anything ended
    /// badly.
    fn stop(mut self, stalled: Option<String>) -> Result<(), PlaneError> {
        if let Err(e) = notify::stopping() {
            tracing::warn!("{e}");
        }
        let mut errors = Vec::new();
        if let Some(p) = self.prober.take() {
            tracing::info!("prober: {}", p.status());
            if stalled.is_some() {
                p.abandon();
            } else if let Err(e) = p.shutdown() {
                errors.push(format!("prober: {e}"));
            }
        }
        errors.splice(0..0, stalled);
        // Leaving revokes the lease: the others take this instance's duty now, not a TTL later.
        if let Some(f) = self.fleet.take() {
            f.leave();
        }
        let ControlPlane { server, _metrics, _control, _locks, .. } = self;
        let (totals, worker_errors) = server.shutdown();
        errors.extend(worker_errors);
        tracing::info!("stopped: {totals}");
        // The endpoints stop, then the locks are released: a successor must not bind while
        // this instance still answers.
        drop((_metrics, _control, _locks));
        if errors.is_empty() {
            Ok(())
        } else {
            Err(PlaneError::Stopped(errors))
        }
    }
}

/// The reply to a reload that a stop overtook.
fn abandoned() -> Reply {
    let text = "the reload was abandoned: dnlb is stopping\n";
    Reply { ok: false, text: text.into(), json: serde_json::json!({"error": text.trim()}) }
}

/// A load handed to thread `dnlb-load`.
type Job = Box<dyn FnOnce() + Send>;

/// Thread `dnlb-load`: runs the loads the main loop hands it, one at a time, for as long as the
/// plane lives (it ends when the plane and its sender are dropped).
struct Loader {
    jobs: SyncSender<Job>,
}

impl Loader {
    fn start() -> std::io::Result<Loader> {
        let (jobs, queue) = sync_channel::<Job>(1);
        std::thread::Builder::new().name("dnlb-load".into()).spawn(move || {
            for job in queue {
                job();
            }
        })?;
        Ok(Loader { jobs })
    }
}

/// Starts the prober for `config` on its `layout` (carrying the health of servers that stay),
/// or publishes the all-healthy answers when probing is off.
fn spawn_prober(
    config: &Config,
    layout: Arc<Layout>,
    snapshots: &SnapshotHandle,
    carry: &Carry,
    fleet: Option<&crate::cluster::Member>,
) -> Result<Option<Prober>, PlaneError> {
    if config.probe.enabled && !config.services.is_empty() {
        let entropy = Box::new(OsEntropy::default());
        let fleet = fleet.map(|m| m.handle().clone());
        Ok(Some(Prober::spawn_in_fleet(config.clone(), layout, snapshots.clone(), entropy, carry, fleet)?))
    } else {
        snapshots.publish(Snapshot::build_with(&layout, config, &initial_serving(config), 0)?);
        Ok(None)
    }
}

/// How long a reload waits for the new prober's first answers before it replies.
const RELOAD_PUBLISH_WAIT: Duration = Duration::from_secs(1);

/// Waits (at most [`RELOAD_PUBLISH_WAIT`]) until `prober` has published its first snapshot, so
/// that `dnlb reload` returns once the answers follow the new configuration, as `dnlb drain`
/// does. A prober that holds its first answers (every server new to it) publishes later; the
/// reload does not wait for that hold.
fn await_first_publish(prober: &Prober) {
    let deadline = Instant::now() + RELOAD_PUBLISH_WAIT;
    while prober.status().publishes.load(Ordering::Relaxed) == 0 && Instant::now() < deadline && !prober.finished() {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Why `prober` counts as stalled, if it does (counted as a stall).
fn stall(prober: &Prober) -> Option<String> {
    if !prober.stalled() {
        return None;
    }
    prober.status().stalls.fetch_add(1, Ordering::Relaxed);
    Some(if prober.finished() {
        "the prober thread ended".to_string()
    } else {
        format!("the prober made no progress for {:?} (limit {:?})", prober.heartbeat_age(), prober.stall_limit())
    })
}

/// Server transports of `config` whose health `carry` brought over from the previous prober.
fn kept(config: &Config, carry: &Carry) -> usize {
    config
        .services
        .iter()
        .flat_map(|s| s.servers.iter().flat_map(move |v| v.transports.iter().map(move |&t| (s, v, t))))
        .filter(|(s, v, t)| {
            carry.contains_key(&(Arc::from(s.name.as_str()), std::net::SocketAddr::new(v.address, v.port_for(*t)), *t))
        })
        .count()
}

/// The status line for the log and the service manager.
fn serving(config: &Config, server: &Server) -> String {
    let listen: Vec<String> = config.server.listen.iter().map(ToString::to_string).collect();
    format!(
        "serving {} service(s) on {} (udp{}), {} worker(s) per address, io={}",
        config.services.len(),
        listen.join(", "),
        if config.server.tcp { "+tcp" } else { "" },
        server.workers_per_address(),
        server.backend()
    )
}

/// Drops to `target` (logged when it was a drop).
fn become_user(target: &Target) -> Result<(), PlaneError> {
    match target.assume()? {
        Outcome::Dropped => tracing::info!("dropped root: running as user {}", target.name()),
        Outcome::AlreadyUser => {}
    }
    Ok(())
}

/// WATCHDOG=1 to the service manager, at its interval; a failure is logged once until a ping
/// gets through again.
struct Watchdog {
    every: Option<Duration>,
    last: Option<Instant>,
    failing: bool,
}

impl Watchdog {
    fn new(every: Option<Duration>) -> Watchdog {
        Watchdog { every, last: None, failing: false }
    }

    /// Pings if one is due at `now`.
    fn ping(&mut self, now: Instant) {
        let Some(every) = self.every.filter(|&e| self.last.is_none_or(|t| now.saturating_duration_since(t) >= e))
        else {
            return;
        };
        self.last = Some(now);
        match notify::watchdog() {
            Ok(()) => self.failing = false,
            Err(e) if !self.failing => {
                tracing::warn!("{e} (every {every:?}); retrying at that interval");
                self.failing = true;
            }
            Err(_) => {}
        }
    }
}
