//! The `dnlb` command: run the server, check a configuration, or ask a running instance for its
//! status, an explanation, a reload or a drain.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, CommandFactory, Parser, Subcommand};
use dnlb::config::{Config, IoMode};
use dnlb::control::plane::{self, ControlPlane, Overrides};
use dnlb::control::socket::{self, Request};
use dnlb::logging::{self, Format as LogFormat};

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
        /// Also show each server's last changes (time, from, to, why, RTT, code, oc then).
        #[arg(long)]
        history: bool,
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
    /// Print the manual page dnlb(1) or a shell's completions, made from these very options
    /// (the Debian package installs them; scripts/package runs this).
    Generate {
        /// What to print: man, bash, zsh, fish or elvish.
        #[arg(value_parser = ["man", "bash", "zsh", "fish", "elvish"])]
        what: String,
    },
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

/// Prints `what` (`man`, or a shell's name) for this command line to stdout.
fn generate(what: &str) -> Result<()> {
    let mut cmd = Cli::command();
    let mut out = std::io::stdout().lock();
    let shell = match what {
        "man" => return clap_mangen::Man::new(cmd).render(&mut out).context("writing the manual page"),
        "bash" => clap_complete::Shell::Bash,
        "zsh" => clap_complete::Shell::Zsh,
        "fish" => clap_complete::Shell::Fish,
        "elvish" => clap_complete::Shell::Elvish,
        other => bail!("cannot generate `{other}`: use man, bash, zsh, fish or elvish"),
    };
    clap_complete::generate(shell, &mut cmd, "dnlb", &mut out);
    Ok(())
}

fn parse_io(s: &str) -> Result<IoMode, String> {
    s.parse()
}

fn parse_log_format(s: &str) -> Result<LogFormat, String> {
    s.parse()
}

/// Sends `request` to the instance the configuration at `config_path` runs, and prints its reply.
fn ask(config_path: &Path, request: Request, json: bool) -> Result<()> {
    let config = Config::load(config_path)?;
    let reply = socket::ask(&plane::control_path(&config)?, &request)?;
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

/// Runs the instance the configuration describes until it is stopped.
fn run(args: RunArgs) -> Result<()> {
    let path = args.config.context("no configuration given: pass --config PATH (see dnlb --help)")?;
    let overrides = Overrides { io: args.io, workers: args.workers.map(usize::from) };
    ControlPlane::start(&path, overrides)?.serve()?;
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
        Some(Cmd::Status { config, json, history }) => ask(&config, Request::Status { history }, json),
        Some(Cmd::Explain { name, qtype, client, config, json }) => {
            ask(&config, Request::Explain { name, qtype, client: client.map(|c| c.to_string()) }, json)
        }
        Some(Cmd::Reload { config }) => ask(&config, Request::Reload, false),
        Some(Cmd::Drain(a)) => ask(&a.config, Request::Drain { server: a.server, service: a.service }, false),
        Some(Cmd::Undrain(a)) => ask(&a.config, Request::Undrain { server: a.server, service: a.service }, false),
        Some(Cmd::Generate { what }) => generate(&what),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dnlb: {e:#}");
            ExitCode::FAILURE
        }
    }
}
