//! The real `dnlb` binary as a child process: a configuration in a scratch folder, stderr in a
//! file there, the CLI against it, and an end by PID (and the folder removed) on drop.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use hickory_proto::op::Message;
use hickory_proto::rr::{RData, RecordType};

use super::{query, terminate, udp_raw};

/// A running dnlb.
pub struct Dnlb {
    pub child: Child,
    /// Its scratch folder (config, stderr.log, whatever the test puts there).
    pub dir: PathBuf,
    /// Its configuration file.
    pub config: PathBuf,
    /// Where it answers DNS (the first `listen = ["..."]` of the configuration).
    pub dns: SocketAddr,
    /// When it was started.
    pub started: Instant,
}

impl Dnlb {
    /// Writes `text` to `dir/dnlb.toml` (creating `dir`) and runs dnlb on it.
    pub fn spawn(dir: PathBuf, text: &str) -> Dnlb {
        Dnlb::spawn_with(dir, text, &[], &[])
    }

    /// As [`Dnlb::spawn`], with more command-line `args` and `env` set.
    pub fn spawn_with(dir: PathBuf, text: &str, args: &[&str], env: &[(&str, &str)]) -> Dnlb {
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("dnlb.toml");
        std::fs::write(&config, text).unwrap();
        Dnlb::run_with(config, args, env)
    }

    /// Runs dnlb on a configuration the test wrote itself (with the files it names beside it).
    pub fn run(config: PathBuf) -> Dnlb {
        Dnlb::run_with(config, &[], &[])
    }

    fn run_with(config: PathBuf, args: &[&str], env: &[(&str, &str)]) -> Dnlb {
        let dir = config.parent().unwrap().to_path_buf();
        let text = std::fs::read_to_string(&config).unwrap();
        let dns = text
            .lines()
            .find_map(|l| l.strip_prefix("listen = [\"").and_then(|r| r.split('"').next()))
            .expect("a listen line")
            .parse()
            .unwrap();
        let started = Instant::now();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_dnlb"));
        cmd.args(["--config", config.to_str().unwrap()]).args(args);
        cmd.stdout(Stdio::null()).stderr(std::fs::File::create(dir.join("stderr.log")).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("dnlb starts");
        Dnlb { child, dir, config, dns, started }
    }

    /// Waits (up to 5 s) until the control socket answers `dnlb status`.
    pub fn wait_for_control(&self) {
        let start = Instant::now();
        while self.cli(&["status"]).map_or(true, |o| !o.status.success()) {
            assert!(start.elapsed() < Duration::from_secs(5), "no control socket:\n{}", self.stderr());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `dnlb ARGS --config CONFIG`.
    pub fn cli(&self, args: &[&str]) -> std::io::Result<Output> {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--config", self.config.to_str().unwrap()]);
        Command::new(env!("CARGO_BIN_EXE_dnlb")).args(&all).output()
    }

    /// Everything it logged so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    /// The addresses of its A answer for `name` now, in answer order (empty without an answer).
    pub fn a(&self, name: &str) -> Vec<IpAddr> {
        self.answer_a(name, Duration::from_secs(1)).unwrap_or_default()
    }

    /// Its A answer for `name` within `wait`, in answer order; `None` without one.
    pub fn answer_a(&self, name: &str, wait: Duration) -> Option<Vec<IpAddr>> {
        let raw = udp_raw(self.dns, &query(name, RecordType::A, 5, None), wait)?;
        Message::from_vec(&raw).ok().map(|m| a_records(&m))
    }

    /// Polls the A answer for `name` every 5 ms until `want` holds: the time it took, or `None`
    /// after `limit`.
    pub fn wait_for(&self, name: &str, limit: Duration, want: impl Fn(&[IpAddr]) -> bool) -> Option<Duration> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if self.answer_a(name, Duration::from_millis(500)).is_some_and(|a| want(&a)) {
                return Some(start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    }

    /// SIGTERM by PID: how long until it exited, and its exit code (`None`: killed after 5 s).
    pub fn stop(&mut self) -> (Duration, Option<i32>) {
        let start = Instant::now();
        let _sent = Command::new("kill").arg(self.child.id().to_string()).status();
        while start.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(status)) = self.child.try_wait() {
                return (start.elapsed(), status.code());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _killed = self.child.kill();
        let _reaped = self.child.wait();
        (start.elapsed(), None)
    }

    /// The `/proc` stat file of its thread named `name` (`dnlb-prober`, `dnlb-w0`, ...).
    pub fn thread_stat(&self, name: &str) -> Option<String> {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", self.child.id())).ok()?;
        tasks.flatten().map(|t| t.path()).find_map(|t| {
            let comm = std::fs::read_to_string(t.join("comm")).ok()?;
            (comm.trim() == name).then(|| t.join("stat").display().to_string())
        })
    }

    /// Its own `/proc` stat file (the whole process).
    pub fn process_stat(&self) -> String {
        format!("/proc/{}/stat", self.child.id())
    }
}

/// User + system CPU time from a `/proc` stat file (a process's or one thread's).
pub fn cpu_time(stat: &str) -> Duration {
    let stat = std::fs::read_to_string(stat).unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11).and_then(|f| f.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|f| f.parse().ok()).unwrap_or(0);
    // Linux reports these in USER_HZ clock ticks, 100 a second on every architecture it runs on.
    Duration::from_millis(ticks * 10)
}

impl Drop for Dnlb {
    fn drop(&mut self) {
        terminate(&mut self.child);
        let _removed = std::fs::remove_dir_all(&self.dir);
    }
}

/// The IPv4 addresses of `m`'s answer section, in order.
pub fn a_records(m: &Message) -> Vec<IpAddr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            _ => None,
        })
        .collect()
}
