//! The `dnlb` command: run the server, or check a configuration file.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use dnlb::config::{Config, IoMode};
use dnlb::control::instance::InstanceLocks;
use dnlb::control::privilege::{self, Outcome};
use dnlb::control::{notify, runtime};
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
    // The user is looked up before anything is bound, so a typo or a start without root fails
    // before the first socket exists.
    let target = config.server.user.as_deref().map(privilege::resolve).transpose()?;
    // One instance per listen address: SO_REUSEPORT would let a second dnlb bind silently and
    // split the clients between two configurations. Held until run() returns.
    let locks = InstanceLocks::acquire(&runtime::dir(config.server.runtime_dir.as_deref()), &config.server.listen)?;
    // The first snapshot follows the configured start state; the prober publishes from then on.
    let snapshot = Snapshot::build(&config, &initial_health(&config), 0, 1).context("building answers")?;
    let snapshots = SnapshotHandle::new(snapshot);
    let relay = config.relay.clone().map(std::sync::Arc::new);
    let server = Server::start(&config.server, relay, config.rrl.clone(), snapshots.clone())?;
    let prober = if config.probe.enabled && !config.services.is_empty() {
        Some(Prober::spawn(config.clone(), snapshots).context("starting the prober")?)
    } else {
        eprintln!("dnlb: probing is off: every configured server counts as healthy");
        None
    };
    // Every socket is bound (and the prober's made) while still root; from here on, the user's.
    if let Some(target) = &target {
        match target.assume()? {
            Outcome::Dropped => eprintln!("dnlb: dropped root: running as user {}", target.name()),
            Outcome::AlreadyUser => {}
        }
    }
    if let Some(why) = server.fallback_reason() {
        eprintln!("dnlb: io_uring unavailable, using the portable backend: {why}");
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
    eprintln!("dnlb: {serving}");
    // READY=1 once every socket is bound and the first snapshot (built from the configured start
    // state) is published; the prober's first verdicts come later, as snapshot swaps.
    if let Err(e) = notify::ready(&serving) {
        eprintln!("dnlb: {e}");
    }
    let watchdog_every = notify::watchdog_interval();
    let mut last_ping: Option<Instant> = None;
    let mut ping_failed = false;
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
        // WATCHDOG=1 only from here: workers alive and the prober progressing, so a systemd
        // watchdog timeout means the same as the checks above, caught from outside.
        if let Some(every) = watchdog_every.filter(|&e| last_ping.is_none_or(|t| t.elapsed() >= e)) {
            last_ping = Some(Instant::now());
            match notify::watchdog() {
                Ok(()) => ping_failed = false,
                Err(e) if !ping_failed => {
                    eprintln!("dnlb: {e} (every {every:?}); retrying at that interval");
                    ping_failed = true;
                }
                Err(_) => {}
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if let Err(e) = notify::stopping() {
        eprintln!("dnlb: {e}");
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
    // Released only now: a successor must not bind while this instance still answers.
    drop(locks);
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
