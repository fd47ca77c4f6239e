//! The `dnlb` binary against real DNS clients: kdig (knot-dnsutils) and a short, bounded dnsperf
//! run. Outside CI a missing tool skips with a visible message; under CI=true it fails.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use hickory_proto::rr::RecordType;

/// The dnlb binary running on a temporary config; killed (by its PID) on drop.
struct Dnlb {
    child: Child,
    addr: SocketAddr,
    _config: TempFile,
}

struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _cleanup = std::fs::remove_file(&self.0);
    }
}

impl Dnlb {
    fn start(io: &str) -> Dnlb {
        let port = free_port();
        let path = std::env::temp_dir().join(format!("dnlb-tools-{}-{port}.toml", std::process::id()));
        std::fs::write(&path, config_text(port, 3, "")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_dnlb"))
            .args(["--config", path.to_str().unwrap(), "--io", io])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let d = Dnlb { child, addr, _config: TempFile(path) };
        let deadline = Instant::now() + Duration::from_secs(10);
        let probe = query("sip.example.test.", RecordType::A, 1, None);
        while udp_raw(addr, &probe, Duration::from_millis(100)).is_none() {
            assert!(Instant::now() < deadline, "dnlb did not answer within 10 s");
        }
        d
    }
}

impl Drop for Dnlb {
    fn drop(&mut self) {
        // SIGTERM by PID, so dnlb shuts down cleanly.
        terminate(&mut self.child);
    }
}

fn kdig(addr: SocketAddr, args: &[&str]) -> String {
    let out = Command::new("kdig")
        .arg(format!("@{}", addr.ip()))
        .args(["-p", &addr.port().to_string(), "+timeout=2", "+retry=1"])
        .args(args)
        .output()
        .expect("run kdig");
    assert!(out.status.success(), "kdig {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn kdig_gets_answers_over_udp_and_tcp() {
    if !require(have("kdig"), "kdig (package knot-dnsutils)") {
        return;
    }
    for io in ["portable", "uring"] {
        if io == "uring" && !backends().contains(&dnlb::config::IoMode::Uring) {
            continue;
        }
        let d = Dnlb::start(io);
        let mut a: Vec<String> = kdig(d.addr, &["sip.example.test", "A", "+short"]).lines().map(String::from).collect();
        a.sort();
        assert_eq!(a, ["127.0.0.11", "127.0.0.12", "127.0.0.13"], "{io}");
        let srv = kdig(d.addr, &["_sip._udp.sip.example.test", "SRV", "+tcp"]);
        assert!(srv.contains("status: NOERROR"), "{srv}");
        assert!(srv.contains("10 5 5060 ip-127-0-0-11.sip.example.test."), "{srv}");
        assert!(srv.contains("ADDITIONAL: 3"), "{srv}");
        let naptr = kdig(d.addr, &["sip.example.test", "NAPTR", "+short"]);
        assert!(naptr.contains("\"SIP+D2U\" \"\" _sip._udp.sip.example.test."), "{naptr}");
        let other = kdig(d.addr, &["www.example.org", "A"]);
        assert!(other.contains("status: REFUSED"), "{other}");
        let edns = kdig(d.addr, &["sip.example.test", "A", "+edns=0", "+bufsize=4096"]);
        assert!(edns.contains("Version: 0;") && edns.contains("UDP size: 1232 B"), "{edns}");
        let badvers = kdig(d.addr, &["sip.example.test", "A", "+edns=1"]);
        assert!(badvers.contains("BADVERS"), "{badvers}");
    }
}

#[test]
fn dnsperf_short_run_loses_nothing() {
    if !require(have("dnsperf"), "dnsperf (package dnsperf)") {
        return;
    }
    let d = Dnlb::start("auto");
    let queries = std::env::temp_dir().join(format!("dnlb-dnsperf-{}.txt", std::process::id()));
    std::fs::write(
        &queries,
        "sip.example.test A\n_sip._udp.sip.example.test SRV\nsip.example.test NAPTR\nSIP.Example.Test A\n",
    )
    .unwrap();
    let _queries = TempFile(queries.clone());
    // Bounded: 2 seconds at 2,000 queries/s.
    let out = Command::new("dnsperf")
        .args([
            "-s",
            "127.0.0.1",
            "-p",
            &d.addr.port().to_string(),
            "-d",
            queries.to_str().unwrap(),
            "-l",
            "2",
            "-Q",
            "2000",
        ])
        .output()
        .expect("run dnsperf");
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}");
    let field = |label: &str| -> u64 {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(label))
            .unwrap_or_else(|| panic!("no `{label}` in:\n{text}"));
        line.split(':').nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap()
    };
    let completed = field("Queries completed");
    let lost = field("Queries lost");
    assert!(completed >= 3000, "dnsperf completed only {completed} queries");
    assert_eq!(lost, 0, "dnsperf lost queries");
    assert!(text.contains(&format!("NOERROR {completed} (100.00%)")), "every answer NOERROR:\n{text}");
}
