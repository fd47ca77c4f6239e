//! The `dnlb` command: run the server, or check a configuration file.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use dnlb::config::{Config, IoMode};
use dnlb::control::metrics;
use dnlb::probe::{initial_health, Prober};
use dnlb::server::Server;
use dnlb::snapshot::{Snapshot, SnapshotHandle};

const USAGE: &str = "\
usage: dnlb --config PATH [--io uring|portable|auto] [--workers N]
       dnlb check-config PATH
       dnlb --help | --version

  --config PATH      run with this TOML configuration (see examples/dnlb.toml)
  --io MODE          override server.io: uring, portable or auto
  --workers N        override server.workers (worker threads per listen address)
  check-config PATH  validate PATH; print every problem and exit 1 if there is one";

enum Command {
    Run { config: PathBuf, io: Option<IoMode>, workers: Option<usize> },
    Check(PathBuf),
    Help,
    Version,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Command> {
    let mut config = None;
    let mut io = None;
    let mut workers = None;
    while let Some(arg) = args.next() {
        let mut value = |flag: &str| args.next().with_context(|| format!("{flag} needs a value\n\n{USAGE}"));
        match arg.as_str() {
            "--help" | "-h" => return Ok(Command::Help),
            "--version" | "-V" => return Ok(Command::Version),
            "check-config" => return Ok(Command::Check(value("check-config")?.into())),
            "--config" | "-c" => config = Some(PathBuf::from(value("--config")?)),
            "--io" => io = Some(value("--io")?.parse::<IoMode>().map_err(anyhow::Error::msg)?),
            "--workers" => {
                let v = value("--workers")?;
                match v.parse::<usize>() {
                    Ok(n) if (1..=1024).contains(&n) => workers = Some(n),
                    _ => bail!("--workers: `{v}` is not a number from 1 to 1024"),
                }
            }
            other => bail!("unknown argument `{other}`\n\n{USAGE}"),
        }
    }
    match config {
        Some(config) => Ok(Command::Run { config, io, workers }),
        None => bail!("no configuration given: pass --config PATH\n\n{USAGE}"),
    }
}

fn run(path: PathBuf, io: Option<IoMode>, workers: Option<usize>) -> Result<()> {
    let mut config = Config::load(&path)?;
    if let Some(io) = io {
        config.server.io = io;
    }
    if workers.is_some() {
        config.server.workers = workers;
    }
    // The first snapshot follows the configured start state; the prober publishes from then on.
    let snapshot = Snapshot::build(&config, &initial_health(&config), 0, 1).context("building answers")?;
    let snapshots = SnapshotHandle::new(snapshot);
    let relay = config.relay.clone().map(std::sync::Arc::new);
    let server = Server::start(&config.server, relay, config.rrl.clone(), snapshots.clone())?;
    let prober = if config.probe.enabled && !config.services.is_empty() {
        Some(Prober::spawn(config.clone(), snapshots.clone()).context("starting the prober")?)
    } else {
        eprintln!("dnlb: probing is off: every configured server counts as healthy");
        None
    };
    // The metrics endpoint reads the counters, the prober and the snapshot; dropped (stopped) on return.
    let _metrics = match &config.metrics {
        Some(m) => {
            let prober = prober.as_ref().map(Prober::view);
            let sources = metrics::Sources { counters: server.counters(), prober, snapshots };
            let endpoint = metrics::MetricsServer::start(m.listen, sources).context("starting the metrics endpoint")?;
            eprintln!("dnlb: metrics on http://{}/metrics", endpoint.local_addr());
            Some(endpoint)
        }
        None => None,
    };
    if let Some(why) = server.fallback_reason() {
        eprintln!("dnlb: io_uring unavailable, using the portable backend: {why}");
    }
    let listen: Vec<String> = config.server.listen.iter().map(ToString::to_string).collect();
    eprintln!(
        "dnlb: serving {} service(s) on {} (udp{}), {} worker(s) per address, io={}",
        config.services.len(),
        listen.join(", "),
        if config.server.tcp { "+tcp" } else { "" },
        server.workers_per_address(),
        server.backend()
    );
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone()).context("installing signal handlers")?;
    }
    // The watchdog: a prober that stopped or stalled would leave the answers frozen on the last
    // health it saw, the worst outcome for a load balancer; exit non-zero instead, so the service
    // manager restarts dnlb, rather than serve stale answers silently.
    let mut stalled = None;
    while !stop.load(Ordering::Relaxed) && !server.worker_died() {
        if let Some(p) = prober.as_ref().filter(|p| p.stalled()) {
            p.status().stalls.fetch_add(1, Ordering::Relaxed);
            let why = if p.finished() {
                "the prober thread ended".to_string()
            } else {
                format!("the prober made no progress for {:?} (limit {:?})", p.heartbeat_age(), p.stall_limit())
            };
            eprintln!("dnlb: {why}: answers would be frozen; stopping so a supervisor restarts dnlb");
            stalled = Some(why);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if let Some(p) = &prober {
        eprintln!("dnlb: prober: {}", p.status());
    }
    let mut errors = Vec::new();
    match (prober, stalled) {
        (Some(p), Some(why)) => {
            p.abandon();
            errors.push(why);
        }
        (Some(p), None) => {
            if let Err(e) = p.shutdown() {
                errors.push(format!("prober: {e}"));
            }
        }
        (None, _) => {}
    }
    let (totals, worker_errors) = server.shutdown();
    errors.extend(worker_errors);
    eprintln!("dnlb: stopped: {totals}");
    if !errors.is_empty() {
        bail!("{}", errors.join("; "));
    }
    Ok(())
}

fn main() -> ExitCode {
    let result = parse_args(std::env::args().skip(1)).and_then(|command| match command {
        Command::Help => {
            println!("{USAGE}");
            Ok(())
        }
        Command::Version => {
            println!("dnlb {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Check(path) => {
            let config = Config::load(&path)?;
            println!("{}: ok ({} service(s))", path.display(), config.services.len());
            Ok(())
        }
        Command::Run { config, io, workers } => run(config, io, workers),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dnlb: {e:#}");
            ExitCode::FAILURE
        }
    }
}
