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
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("dnlb.toml");
        std::fs::write(&config, text).unwrap();
        Dnlb::run(config)
    }

    /// Runs dnlb on a configuration the test wrote itself (with the files it names beside it).
    pub fn run(config: PathBuf) -> Dnlb {
        let dir = config.parent().unwrap().to_path_buf();
        let text = std::fs::read_to_string(&config).unwrap();
        let dns = text
            .lines()
            .find_map(|l| l.strip_prefix("listen = [\"").and_then(|r| r.split('"').next()))
            .expect("a listen line")
            .parse()
            .unwrap();
        let started = Instant::now();
        let child = Command::new(env!("CARGO_BIN_EXE_dnlb"))
            .args(["--config", config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("stderr.log")).unwrap())
            .spawn()
            .unwrap();
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
        let raw = udp_raw(self.dns, &query(name, RecordType::A, 5, None), Duration::from_secs(1));
        raw.and_then(|r| Message::from_vec(&r).ok()).map(|m| a_records(&m)).unwrap_or_default()
    }
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
