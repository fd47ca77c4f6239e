//! The `dnlb` command: run the server, check a configuration, or ask a running instance for its
//! status, an explanation, a reload or a drain.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use arc_swap::ArcSwapOption;
use clap::{Args, Parser, Subcommand};
use dnlb::config::{Config, HostsSource, IoMode};
use dnlb::control::instance::InstanceLocks;
use dnlb::control::privilege::{self, Outcome};
use dnlb::control::report::{self, View};
use dnlb::control::socket::{self, Answer, ControlSocket, Reply, Request};
use dnlb::control::{metrics, notify, runtime};
use dnlb::logging::{self, Format as LogFormat};
use dnlb::probe::{initial_health, Carry, DrainRequest, ProbeControl, ProbeStatus, ProbeView, Prober};
use dnlb::server::Server;
use dnlb::snapshot::{Snapshot, SnapshotHandle};

/// A DNS relay that answers SIP service names with healthy servers only.
#[derive(Parser)]
#[command(name = "dnlb", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// `dnlb --config PATH` runs, as `dnlb run --config PATH` does.
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Args, Clone)]
struct RunArgs {
    /// The TOML configuration (see examples/dnlb.toml).
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// Override server.io: uring, portable or auto.
    #[arg(long, value_parser = parse_io)]
    io: Option<IoMode>,
    /// Override server.workers (worker threads per listen address), 1 to 1024.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    workers: Option<u16>,
    /// Log lines as `text` (under systemd's journal: with syslog priorities, no timestamps) or
    /// `json` (one object per line).
    #[arg(long, default_value = "text", value_parser = parse_log_format)]
    log_format: LogFormat,
    /// The least severe level logged: error, warn, info or debug.
    #[arg(long, default_value = "info", value_parser = logging::parse_level)]
    log_level: tracing::Level,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the server.
    Run(RunArgs),
    /// Validate a configuration; print every problem and exit 1 if there is one.
    CheckConfig {
        /// The file to check.
        path: PathBuf,
    },
    /// Show a running instance's answers and every server's health.
    Status {
        /// The configuration the instance runs (it finds its control socket).
        #[arg(long, short = 'c')]
        config: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show what a running instance would answer a client now, and why.
    Explain {
        /// The name asked.
        name: String,
        /// The type asked.
        #[arg(default_value = "A")]
        qtype: String,
        /// The client's address (for the relay's allow list, routes and rate limiting).
        #[arg(long)]
        client: Option<IpAddr>,
        /// The configuration the instance runs.
        #[arg(long, short = 'c')]
        config: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Make a running instance re-read its configuration and hosts file (as SIGHUP does).
    Reload {
        /// The configuration the instance runs.
        #[arg(long, short = 'c')]
        config: PathBuf,
    },
    /// Take a server out of a running instance's answers (maintenance); it is still probed.
    Drain(DrainArgs),
    /// Put a drained server back into a running instance's answers (at once, if healthy).
    Undrain(DrainArgs),
}

#[derive(Args)]
struct DrainArgs {
    /// The server: ADDRESS (every port) or ADDRESS:PORT ([ADDRESS]:PORT for IPv6).
    server: String,
    /// Only the server of this service (default: of every service).
    #[arg(long)]
    service: Option<String>,
    /// The configuration the instance runs.
    #[arg(long, short = 'c')]
    config: PathBuf,
}

fn parse_io(s: &str) -> Result<IoMode, String> {
    s.parse()
}

fn parse_log_format(s: &str) -> Result<LogFormat, String> {
    s.parse()
}

/// What the control thread reads: the running configuration and prober, swapped on reload.
struct Shared {
    config: Arc<Config>,
    status: Option<Arc<ProbeStatus>>,
    /// Drains go to the running prober through this (none when probing is off).
    prober: Option<ProbeControl>,
}

/// The control socket's answers: status and explain from the shared state and the snapshot,
/// reloads handed to the main thread.
struct Control {
    shared: Arc<Mutex<Shared>>,
    snapshots: SnapshotHandle,
    reloads: SyncSender<SyncSender<Reply>>,
}

impl Answer for Control {
    fn answer(&self, request: Request) -> Reply {
        let (config, status, prober) = match self.shared.lock() {
            Ok(s) => (s.config.clone(), s.status.clone(), s.prober.clone()),
            Err(_) => {
                return Reply { ok: false, text: "internal state unavailable".into(), json: serde_json::Value::Null }
            }
        };
        let reports = status.as_ref().and_then(|s| s.servers.lock().ok().map(|r| r.clone())).unwrap_or_default();
        let heartbeat = status.as_ref().map(|s| heartbeat_age(s));
        let view = View {
            config: &config,
            reports: &reports,
            snapshot: self.snapshots.current(),
            heartbeat,
            now: Instant::now(),
        };
        match request {
            Request::Status => report::status(&view),
            Request::Explain { name, qtype, client } => {
                let client = client.and_then(|c| c.parse().ok());
                report::explain(&view, &name, &qtype, client)
            }
            Request::Reload => {
                let (tx, rx) = sync_channel(1);
                if self.reloads.try_send(tx).is_err() {
                    return Reply {
                        ok: false,
                        text: "a reload is already under way".into(),
                        json: serde_json::Value::Null,
                    };
                }
                rx.recv_timeout(Duration::from_secs(8)).unwrap_or(Reply {
                    ok: false,
                    text: "the reload did not finish within 8 s".into(),
                    json: serde_json::Value::Null,
                })
            }
            Request::Drain { server, service } => drain(prober.as_ref(), &server, service, true),
            Request::Undrain { server, service } => drain(prober.as_ref(), &server, service, false),
        }
    }
}

/// `ADDRESS` or `ADDRESS:PORT` (`[ADDRESS]:PORT`), as `dnlb drain` takes a server.
fn parse_server(server: &str) -> Option<(IpAddr, Option<u16>)> {
    match server.parse::<std::net::SocketAddr>() {
        Ok(a) => Some((a.ip(), Some(a.port()))),
        Err(_) => server.trim_start_matches('[').trim_end_matches(']').parse().ok().map(|ip| (ip, None)),
    }
}

/// Drains or undrains `server` through the running prober; answered once published.
fn drain(prober: Option<&ProbeControl>, server: &str, service: Option<String>, drained: bool) -> Reply {
    let refuse = |text: String| Reply { ok: false, json: serde_json::json!({"error": text.trim()}), text };
    let Some((ip, port)) = parse_server(server) else {
        return refuse(format!("`{server}` is not ADDRESS or ADDRESS:PORT ([ADDRESS]:PORT for IPv6)\n"));
    };
    let Some(prober) = prober else {
        return refuse("probing is off (probe.enabled = false): every server is served, none can be drained\n".into());
    };
    let request = DrainRequest { service: service.clone(), ip, port, drained };
    match prober.drain(request) {
        Ok(0) => refuse(format!(
            "no server {server}{} in the running configuration\n",
            service.as_deref().map_or(String::new(), |s| format!(" in service {s}"))
        )),
        Ok(n) => {
            let verb = if drained { "drained" } else { "undrained" };
            let effect =
                if drained { "out of the answers now; still probed" } else { "back in the answers now if healthy" };
            Reply {
                ok: true,
                text: format!("{verb} {server}: {n} server transport(s), {effect}\n"),
                json: serde_json::json!({"server": server, "drained": drained, "matched": n}),
            }
        }
        Err(e) => refuse(format!("{e}\n")),
    }
}

/// The prober's heartbeat age as the main thread last measured it (every 100 ms).
fn heartbeat_age(status: &ProbeStatus) -> Duration {
    Duration::from_millis(status.heartbeat_age_ms.load(Ordering::Relaxed))
}

/// The control socket path of the instance `config` describes.
fn control_path(config: &Config) -> Result<PathBuf> {
    let first = *config.server.listen.first().context("the configuration has no listen address")?;
    Ok(runtime::control_socket(&runtime::dir(config.server.runtime_dir.as_deref()), first))
}

fn ask(config_path: &Path, request: Request, json: bool) -> Result<()> {
    let config = Config::load(config_path)?;
    let reply = socket::ask(&control_path(&config)?, &request)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&reply.json).unwrap_or_default());
    } else {
        print!("{}", reply.text);
    }
    if !reply.ok {
        bail!("the instance refused: {}", reply.text.trim());
    }
    Ok(())
}

/// The running parts a reload replaces.
struct Running {
    config: Arc<Config>,
    prober: Option<Prober>,
}

/// Starts the prober for `config` (carrying the health of servers that stay), or publishes the
/// all-healthy answers when probing is off.
fn start_prober(config: &Config, snapshots: &SnapshotHandle, carry: &Carry) -> Result<Option<Prober>> {
    if config.probe.enabled && !config.services.is_empty() {
        let entropy = Box::new(dnlb::probe::core::OsEntropy::default());
        Ok(Some(
            Prober::spawn_carrying(config.clone(), snapshots.clone(), entropy, carry).context("starting the prober")?,
        ))
    } else {
        let generation = snapshots.load().generation + 1;
        snapshots.publish(Snapshot::build(config, &initial_health(config), 0, generation).context("building answers")?);
        Ok(None)
    }
}

/// The settings a reload cannot change (sockets, threads, whether there is a relay at all):
/// named once, and left as they run.
fn needs_restart(old: &Config, new: &Config) -> Vec<&'static str> {
    let (a, b) = (&old.server, &new.server);
    let mut v = Vec::new();
    let mut check = |same: bool, name: &'static str| {
        if !same {
            v.push(name);
        }
    };
    check(a.listen == b.listen, "server.listen");
    check(a.tcp == b.tcp, "server.tcp");
    check(a.workers == b.workers, "server.workers");
    check(a.io == b.io, "server.io");
    check(a.pin_workers == b.pin_workers, "server.pin_workers");
    check(a.max_udp_payload == b.max_udp_payload, "server.max_udp_payload");
    check(
        a.tcp_idle_timeout == b.tcp_idle_timeout
            && a.tcp_query_timeout == b.tcp_query_timeout
            && a.tcp_max_connections == b.tcp_max_connections
            && a.tcp_max_connections_per_client == b.tcp_max_connections_per_client,
        "server.tcp_* limits",
    );
    check(a.runtime_dir == b.runtime_dir, "server.runtime_dir");
    // The XSKs, the program and the capabilities to make them exist only at start.
    check(a.xdp == b.xdp, "server.xdp");
    // The relay's sockets, and its descriptor in each worker's event loop, exist from the start
    // or not at all: its settings change in place, its presence does not.
    check(old.relay.is_some() == new.relay.is_some(), "[relay] (added or removed)");
    check(old.probe.core == new.probe.core, "probe.core");
    v
}

/// Re-reads `path` and applies what can change in place: services, servers, probe settings,
/// policies, the hosts file, the relay's settings and rate limiting. Servers that stay keep their
/// health; an invalid file changes nothing.
fn reload(path: &Path, live: &mut Live<'_>) -> Reply {
    match Config::load(path) {
        Ok(fresh) => apply(fresh, &path.display().to_string(), live),
        Err(e) => {
            tracing::error!("reload refused, the running configuration stays:\n{e}");
            Reply { ok: false, text: format!("{e}\n"), json: serde_json::json!({"error": e.to_string()}) }
        }
    }
}

/// Re-reads the hosts file only (`hosts.watch` saw it change): the running configuration with
/// the file's new names. A file that does not parse changes nothing.
fn reload_hosts(source: &HostsSource, live: &mut Live<'_>) -> Reply {
    match dnlb::hosts::load(&source.path) {
        Ok(entries) => {
            let mut fresh = (*live.running.config).clone();
            fresh.hosts = entries;
            apply(fresh, &source.path.display().to_string(), live)
        }
        Err(problems) => {
            let text = problems.join("\n");
            tracing::error!("hosts file change refused, the running names stay:\n{text}");
            Reply { ok: false, text, json: serde_json::Value::Null }
        }
    }
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

/// What identifies one version of a file: inode, size and modification time (`None`: unreadable).
type Stamp = Option<(u64, u64, std::time::SystemTime)>;

fn stamp(path: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.ino(), m.len(), m.modified().ok()?))
}

/// Notices a change of the hosts file while `hosts.watch` is on, looking once a second; a change
/// is read once it has held still for one look, so a file being written is not read half-way.
struct HostsWatch {
    seen: Option<(PathBuf, Stamp)>,
    moved: Option<Stamp>,
    next: Instant,
}

impl HostsWatch {
    /// The file as it is now, when the running configuration read it.
    fn new(config: &Config, now: Instant) -> HostsWatch {
        let seen = config.hosts_source.as_ref().map(|s| (s.path.clone(), stamp(&s.path)));
        HostsWatch { seen, moved: None, next: now + HOSTS_LOOK }
    }

    /// The hosts file to re-read, when it changed and then held still.
    fn changed(&mut self, config: &Config, now: Instant) -> Option<HostsSource> {
        let source = config.hosts_source.as_ref().filter(|s| s.watch)?;
        if now < self.next {
            return None;
        }
        self.next = now + HOSTS_LOOK;
        let current = stamp(&source.path);
        match &self.seen {
            Some((path, seen)) if *path == source.path && *seen == current => {
                self.moved = None;
                None
            }
            Some((path, _)) if *path == source.path && self.moved != Some(current) => {
                self.moved = Some(current);
                None
            }
            Some((path, _)) if *path == source.path => {
                self.seen = Some((source.path.clone(), current));
                self.moved = None;
                Some(source.clone())
            }
            // Another file (a reload changed hosts.file, and read it): the new baseline.
            _ => {
                self.seen = Some((source.path.clone(), current));
                self.moved = None;
                None
            }
        }
    }
}

/// How often a watched hosts file is looked at.
const HOSTS_LOOK: Duration = Duration::from_secs(1);

/// What a reload changes: the running parts and the handles that publish them.
struct Live<'a> {
    server: &'a Server,
    running: &'a mut Running,
    snapshots: &'a SnapshotHandle,
    shared: &'a Mutex<Shared>,
    view: &'a ArcSwapOption<ProbeView>,
}

/// Puts `fresh` (read from `source`) in place of the running configuration, as far as it can
/// change without a restart.
fn apply(fresh: Config, source: &str, live: &mut Live<'_>) -> Reply {
    let Live { server, running, snapshots, shared, view } = live;
    let old = running.config.clone();
    let fixed = needs_restart(&old, &fresh);
    if !fixed.is_empty() {
        tracing::warn!("reload: these settings need a restart and keep their running values: {}", fixed.join(", "));
    }
    // What runs: the new services, probe settings, hosts, relay settings and limits; the old
    // sockets and threads.
    let mut applied = fresh;
    applied.server = old.server.clone();
    if applied.relay.is_some() != old.relay.is_some() {
        applied.relay = old.relay.clone();
    }
    applied.probe.core = old.probe.core;
    if let Err(e) = Snapshot::build(&applied, &initial_health(&applied), 0, 0) {
        return Reply { ok: false, text: format!("cannot build answers: {e}\n"), json: serde_json::Value::Null };
    }
    let carry = match running.prober.take().map(Prober::stop_and_carry) {
        Some(Ok(carry)) => carry,
        Some(Err(e)) => {
            tracing::warn!("reload: the old prober did not hand over its health ({e}); servers start afresh");
            Carry::new()
        }
        None => Carry::new(),
    };
    match start_prober(&applied, snapshots, &carry) {
        Ok(prober) => running.prober = prober,
        Err(e) => return Reply { ok: false, text: format!("{e:#}\n"), json: serde_json::Value::Null },
    }
    if applied.relay != old.relay || applied.rrl != old.rrl {
        server.reconfigure(applied.relay.clone().map(Arc::new), applied.rrl.clone());
    }
    running.config = Arc::new(applied);
    view.store(running.prober.as_ref().map(|p| Arc::new(p.view())));
    if let Ok(mut s) = shared.lock() {
        s.config = running.config.clone();
        s.status = running.prober.as_ref().map(|p| p.status().clone());
        s.prober = running.prober.as_ref().map(Prober::control);
    }
    let services = running.config.services.len();
    let kept = running
        .config
        .services
        .iter()
        .flat_map(|s| s.servers.iter().flat_map(move |v| v.transports.iter().map(move |&t| (s, v, t))))
        .filter(|(s, v, t)| {
            carry.contains_key(&(Arc::from(s.name.as_str()), std::net::SocketAddr::new(v.address, v.port_for(*t)), *t))
        })
        .count();
    tracing::info!("reloaded {source}: {services} service(s), health kept for {kept} server transport(s)");
    Reply {
        ok: true,
        text: format!(
            "reloaded: {services} service(s); health kept for {kept} server transport(s){}\n",
            if fixed.is_empty() { String::new() } else { format!("; need a restart: {}", fixed.join(", ")) }
        ),
        json: serde_json::json!({"services": services, "kept": kept, "need_restart": fixed}),
    }
}

/// A reload between RELOADING=1 and READY=1 for the service manager.
fn notified_reload(serving: &str, reload: impl FnOnce() -> Reply) -> Reply {
    if let Err(e) = notify::reloading() {
        tracing::warn!("{e}");
    }
    let reply = reload();
    if let Err(e) = notify::ready(serving) {
        tracing::warn!("{e}");
    }
    reply
}

fn run(args: RunArgs) -> Result<()> {
    let path = args.config.context("no configuration given: pass --config PATH (see dnlb --help)")?;
    let mut config = Config::load(&path)?;
    if let Some(io) = args.io {
        config.server.io = io;
    }
    if let Some(n) = args.workers {
        config.server.workers = Some(usize::from(n));
    }
    let control_path = control_path(&config)?;
    // The user is looked up before anything is bound, so a typo or a start without root fails
    // before the first socket exists.
    let target = config.server.user.as_deref().map(privilege::resolve).transpose()?;
    // One instance per listen address: SO_REUSEPORT would let a second dnlb bind silently and
    // split the clients between two configurations. Held until run() returns.
    let locks = InstanceLocks::acquire(&runtime::dir(config.server.runtime_dir.as_deref()), &config.server.listen)?;
    // The first snapshot follows the configured start state; the prober publishes from then on.
    let snapshot = Snapshot::build(&config, &initial_health(&config), 0, 1).context("building answers")?;
    let snapshots = SnapshotHandle::new(snapshot);
    let relay = config.relay.clone().map(Arc::new);
    let server = Server::start(&config.server, relay, config.rrl.clone(), snapshots.clone())?;
    let prober = start_prober(&config, &snapshots, &Carry::new())?;
    if prober.is_none() {
        tracing::info!("probing is off: every configured server counts as healthy");
    }
    // Which prober the metrics endpoint reads: swapped by a reload.
    let probe_view = Arc::new(arc_swap::ArcSwapOption::from(prober.as_ref().map(|p| Arc::new(p.view()))));
    // The metrics endpoint reads the counters, the prober and the snapshot; dropped (stopped) on return.
    let _metrics = match &config.metrics {
        Some(m) => {
            let sources = metrics::Sources {
                counters: server.counters(),
                prober: probe_view.clone(),
                snapshots: snapshots.clone(),
            };
            let endpoint = metrics::MetricsServer::start(m.listen, sources).context("starting the metrics endpoint")?;
            tracing::info!("metrics on http://{}/metrics", endpoint.local_addr());
            Some(endpoint)
        }
        None => None,
    };
    if let Some(why) = server.fallback_reason() {
        tracing::warn!("io_uring unavailable, using the portable backend: {why}");
    }
    let listen: Vec<String> = config.server.listen.iter().map(ToString::to_string).collect();
    let serving = format!(
        "serving {} service(s) on {} (udp{}), {} worker(s) per address, io={}",
        config.services.len(),
        listen.join(", "),
        if config.server.tcp { "+tcp" } else { "" },
        server.workers_per_address(),
        server.backend()
    );
    let mut running = Running { config: Arc::new(config), prober };
    let shared = Arc::new(Mutex::new(Shared {
        config: running.config.clone(),
        status: running.prober.as_ref().map(|p| p.status().clone()),
        prober: running.prober.as_ref().map(Prober::control),
    }));
    let (reload_tx, reload_rx): (SyncSender<SyncSender<Reply>>, Receiver<SyncSender<Reply>>) = sync_channel(1);
    let control = Control { shared: shared.clone(), snapshots: snapshots.clone(), reloads: reload_tx };
    let _control = ControlSocket::start(&control_path, control)?;
    // Every socket is bound (the prober's, the control socket) while still root; from here on,
    // the user's.
    if let Some(target) = &target {
        match target.assume()? {
            Outcome::Dropped => tracing::info!("dropped root: running as user {}", target.name()),
            Outcome::AlreadyUser => {}
        }
    }
    tracing::info!("{serving}");
    // READY=1 once every socket is bound and the first snapshot (built from the configured start
    // state) is published; the prober's first verdicts come later, as snapshot swaps.
    if let Err(e) = notify::ready(&serving) {
        tracing::warn!("{e}");
    }
    let watchdog_every = notify::watchdog_interval();
    let mut hosts_watch = HostsWatch::new(&running.config, Instant::now());
    let mut last_ping: Option<Instant> = None;
    let mut ping_failed = false;
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone()).context("installing signal handlers")?;
    }
    let hangup = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, hangup.clone()).context("installing signal handlers")?;
    // The watchdog: a prober that stopped or stalled would leave the answers frozen on the last
    // health it saw, the worst outcome for a load balancer; exit non-zero instead, so the service
    // manager restarts dnlb, rather than serve stale answers silently.
    let mut stalled = None;
    while !stop.load(Ordering::Relaxed) && !server.worker_died() {
        if let Some(p) = running.prober.as_ref() {
            let age = u64::try_from(p.heartbeat_age().as_millis()).unwrap_or(u64::MAX);
            p.status().heartbeat_age_ms.store(age, Ordering::Relaxed);
            if p.stalled() {
                p.status().stalls.fetch_add(1, Ordering::Relaxed);
                let why = if p.finished() {
                    "the prober thread ended".to_string()
                } else {
                    format!("the prober made no progress for {:?} (limit {:?})", p.heartbeat_age(), p.stall_limit())
                };
                tracing::error!("{why}: answers would be frozen; stopping so a supervisor restarts dnlb");
                stalled = Some(why);
                break;
            }
        }
        // WATCHDOG=1 only from here: workers alive and the prober progressing, so a systemd
        // watchdog timeout means the same as the checks above, caught from outside.
        if let Some(every) = watchdog_every.filter(|&e| last_ping.is_none_or(|t| t.elapsed() >= e)) {
            last_ping = Some(Instant::now());
            match notify::watchdog() {
                Ok(()) => ping_failed = false,
                Err(e) if !ping_failed => {
                    tracing::warn!("{e} (every {every:?}); retrying at that interval");
                    ping_failed = true;
                }
                Err(_) => {}
            }
        }
        // Waits up to 100 ms for a reload request, which is then served at once.
        let trigger = if hangup.swap(false, Ordering::Relaxed) {
            Some(Trigger::Hangup)
        } else if let Some(source) = hosts_watch.changed(&running.config, Instant::now()) {
            Some(Trigger::Hosts(source))
        } else {
            reload_rx.recv_timeout(Duration::from_millis(100)).ok().map(Trigger::Asked)
        };
        if let Some(trigger) = trigger {
            let mut live = Live {
                server: &server,
                running: &mut running,
                snapshots: &snapshots,
                shared: &shared,
                view: &probe_view,
            };
            let reply = notified_reload(&serving, || match &trigger {
                Trigger::Hosts(source) => reload_hosts(source, &mut live),
                Trigger::Hangup | Trigger::Asked(_) => reload(&path, &mut live),
            });
            if let Trigger::Asked(reply_to) = trigger {
                // The asker may have given up waiting; the reload is done either way.
                let _sent = reply_to.try_send(reply);
            }
        }
    }
    if let Err(e) = notify::stopping() {
        tracing::warn!("{e}");
    }
    if let Some(p) = &running.prober {
        tracing::info!("prober: {}", p.status());
    }
    let mut errors = Vec::new();
    match (running.prober.take(), stalled) {
        (Some(p), Some(why)) => {
            p.abandon();
            errors.push(why);
        }
        (Some(p), None) => {
            if let Err(e) = p.shutdown() {
                errors.push(format!("prober: {e}"));
            }
        }
        (None, Some(why)) => errors.push(why),
        (None, None) => {}
    }
    let (totals, worker_errors) = server.shutdown();
    errors.extend(worker_errors);
    tracing::info!("stopped: {totals}");
    // Released only now: a successor must not bind while this instance still answers.
    drop(locks);
    if !errors.is_empty() {
        bail!("{}", errors.join("; "));
    }
    Ok(())
}

/// `run` with its logger: every line from here on, the final error included, is a log line.
fn logged_run(args: RunArgs) -> ExitCode {
    logging::init(args.log_format, args.log_level);
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        None => return logged_run(cli.run),
        Some(Cmd::Run(args)) => return logged_run(args),
        Some(Cmd::CheckConfig { path }) => Config::load(&path).map_err(anyhow::Error::from).map(|config| {
            println!("{}: ok ({} service(s))", path.display(), config.services.len());
        }),
        Some(Cmd::Status { config, json }) => ask(&config, Request::Status, json),
        Some(Cmd::Explain { name, qtype, client, config, json }) => {
            ask(&config, Request::Explain { name, qtype, client: client.map(|c| c.to_string()) }, json)
        }
        Some(Cmd::Reload { config }) => ask(&config, Request::Reload, false),
        Some(Cmd::Drain(a)) => ask(&a.config, Request::Drain { server: a.server, service: a.service }, false),
        Some(Cmd::Undrain(a)) => ask(&a.config, Request::Undrain { server: a.server, service: a.service }, false),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dnlb: {e:#}");
            ExitCode::FAILURE
        }
    }
}
