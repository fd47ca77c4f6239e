//! Fleets of real dnlb processes sharing probing through real etcd clusters (Debian's
//! etcd-server) on 127.0.4.0/24, probing in-process SIP responders that count probes by their
//! Via branch. The scenarios run side by side, each on its own etcd and addresses.
//!
//! Timings are short so the whole file takes well under three minutes: probe interval 250 ms,
//! etcd heartbeat 50 ms and election timeout 500 ms, 1-second leases. The steady-state window is
//! 12 s (48 intervals) instead of a minute: 30 servers × 2 probers × 48 intervals is 2,880
//! probes, where boundary effects are at most one probe per server and prober (60, 2 %), so
//! ±5 % still tells k = 2 from anything else.
#![cfg(feature = "cluster")]

mod common;

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::etcd::{etcd_binary, EtcdCluster};
use common::process::{a_records, Dnlb};
use common::sip::{common_port, Mode, SipResponder};
use hickory_proto::op::Message;
use hickory_proto::rr::RecordType;

const NAME: &str = "sip.example.test";
const INTERVAL_MS: u64 = 250;
const TIMEOUT_MS: u64 = 150;
const FALL: u64 = 2;

/// A farm of `n` responders on 127.0.4.`first`.. (one port for all).
struct Farm {
    responders: Vec<SipResponder>,
    port: u16,
}

impl Farm {
    fn start(first: u8, n: usize) -> Farm {
        let ips: Vec<String> = (0..n).map(|i| format!("127.0.4.{}", first as usize + i)).collect();
        let refs: Vec<&str> = ips.iter().map(String::as_str).collect();
        let port = common_port(&refs);
        let responders = ips
            .iter()
            .map(|ip| SipResponder::start(SocketAddr::new(ip.parse().unwrap(), port), Mode::Reply(200, None)))
            .collect();
        Farm { responders, port }
    }

    fn ips(&self) -> BTreeSet<IpAddr> {
        self.responders.iter().map(|r| r.addr.ip()).collect()
    }

    fn probes(&self) -> Vec<usize> {
        self.responders.iter().map(SipResponder::probes).collect()
    }
}

/// The configuration of instance `name` listening on `listen`.
fn config(
    dir: &PathBuf,
    listen: &str,
    farm: &Farm,
    etcd: &EtcdCluster,
    fleet: &str,
    name: &str,
    k: usize,
    extra_probe: &str,
) -> String {
    let mut s = format!(
        "[server]\nlisten = [\"{listen}\"]\nworkers = 1\nruntime_dir = \"{}\"\n\n[probe]\ninterval_ms = {INTERVAL_MS}\ntimeout_ms = {TIMEOUT_MS}\nretransmit_ms = 40\nrise = 2\nfall = {FALL}\n{extra_probe}\n[[service]]\nname = \"{NAME}\"\n",
        dir.join("run").display()
    );
    for r in &farm.responders {
        s.push_str(&format!("[[service.server]]\naddress = \"{}\"\nport = {}\n", r.addr.ip(), farm.port));
    }
    s.push_str(&format!(
        "\n[cluster]\netcd = {}\nfarm = \"{fleet}\"\nname = \"{name}\"\nprobers_per_server = {k}\nlease_ttl_s = 1\n",
        etcd.endpoints_toml()
    ));
    s
}

fn scratch(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("dnlb-cluster-{tag}-{}", std::process::id()))
}

/// Every A record of the answer (EDNS, so a farm of 30 fits).
fn answer(d: &Dnlb) -> Option<BTreeSet<IpAddr>> {
    let raw = common::udp_raw(d.dns, &common::query(NAME, RecordType::A, 7, Some(1232)), Duration::from_millis(500))?;
    Message::from_vec(&raw).ok().map(|m| a_records(&m).into_iter().collect())
}

fn wait_for(limit: Duration, what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
    start.elapsed()
}

/// `member → number of servers it has a verdict key for`, from etcd itself.
fn duty_in_etcd(etcd: &EtcdCluster, fleet: &str) -> std::collections::BTreeMap<String, usize> {
    let keys =
        etcd.ctl_any(&["get", &format!("/dnlb/v1/{fleet}/verdict/"), "--prefix", "--keys-only"]).unwrap_or_default();
    let mut out = std::collections::BTreeMap::new();
    for k in keys.lines().filter(|l| !l.is_empty()) {
        if let Some((_, member)) = k.rsplit_once('/') {
            *out.entry(member.to_string()).or_insert(0) += 1;
        }
    }
    out
}

/// Probes per server per interval over `window`.
fn probe_rate(farm: &Farm, window: Duration) -> f64 {
    let before = farm.probes();
    std::thread::sleep(window);
    let after = farm.probes();
    let total: usize = after.iter().zip(&before).map(|(a, b)| a - b).sum();
    total as f64 / farm.responders.len() as f64 / (window.as_secs_f64() * 1000.0 / INTERVAL_MS as f64)
}

/// Three instances, 30 servers, k = 2: probe load is k per server per interval, each instance's
/// duty is within one server of fair (20), all answer alike; a responder that stops leaves every
/// instance's answers on time and they agree; alone, one instance probes everything.
fn steady_state_detection_and_one_alone() {
    let etcd = EtcdCluster::start("st", &["127.0.4.4", "127.0.4.5", "127.0.4.6"]);
    let farm = Farm::start(100, 30);
    let dir = scratch("steady");
    let mut fleet: Vec<Dnlb> = (0..3)
        .map(|i| {
            let d = dir.join(format!("edge-{i}"));
            let text =
                config(&d, &format!("127.0.4.{}:5300", 20 + i), &farm, &etcd, "steady", &format!("edge-{i}"), 2, "");
            Dnlb::spawn(d, &text)
        })
        .collect();
    let all = farm.ips();
    for d in &fleet {
        wait_for(Duration::from_secs(10), "every server in the answers", || answer(d).is_some_and(|a| a == all));
    }
    // Duty settles once every member has read the others (and written its verdicts).
    wait_for(Duration::from_secs(5), "duty of 20 each in etcd", || {
        let duty = duty_in_etcd(&etcd, "steady");
        duty.len() == 3 && duty.values().all(|n| n.abs_diff(20) <= 1)
    });
    // One overlap interval after the duty settled, the load is k per server.
    std::thread::sleep(Duration::from_millis(2 * INTERVAL_MS));
    let rate = probe_rate(&farm, Duration::from_secs(12));
    eprintln!("steady: {rate:.3} probes per server per interval (k = 2, 3 instances)");
    assert!((rate - 2.0).abs() <= 0.1, "probe load {rate:.3}, want 2 ± 5 %");

    // A responder stops: out of every answer within interval × fall + timeout + 1 s.
    let dead = farm.responders[7].addr.ip();
    farm.responders[7].set(Mode::Silent);
    let stopped = Instant::now();
    let limit = Duration::from_millis(INTERVAL_MS * FALL + TIMEOUT_MS + 1000);
    let mut gone = Vec::new();
    for d in &fleet {
        wait_for(limit.saturating_sub(stopped.elapsed()), "the dead server leaves", || {
            answer(d).is_some_and(|a| !a.contains(&dead))
        });
        gone.push(stopped.elapsed());
    }
    let spread = *gone.iter().max().unwrap() - *gone.iter().min().unwrap();
    eprintln!("detection: {gone:?} after the stop, spread {spread:?}");
    // Agreement: the same set everywhere within one interval of the first.
    assert!(spread <= Duration::from_millis(INTERVAL_MS) + Duration::from_millis(100), "spread {spread:?}");
    let sets: Vec<_> = fleet.iter().map(|d| answer(d).unwrap()).collect();
    assert!(sets.iter().all(|s| *s == sets[0]), "{sets:?}");
    farm.responders[7].set(Mode::Reply(200, None));

    // Two instances stop: the last one probes everything, once per interval.
    fleet[1].stop();
    fleet[2].stop();
    wait_for(Duration::from_secs(3), "alone", || duty_in_etcd(&etcd, "steady") == [("edge-0".to_string(), 30)].into());
    std::thread::sleep(Duration::from_millis(2 * INTERVAL_MS));
    let rate = probe_rate(&farm, Duration::from_secs(4));
    eprintln!("alone: {rate:.3} probes per server per interval");
    assert!((rate - 1.0).abs() <= 0.08, "alone, probe load {rate:.3}, want 1");
    assert_eq!(answer(&fleet[0]).unwrap(), all);
}

#[test]
fn fleets() {
    if !common::require(etcd_binary().is_some(), "etcd (Debian package etcd-server)") {
        return;
    }
    let scenarios: Vec<(&str, fn())> = vec![("steady state, detection, alone", steady_state_detection_and_one_alone)];
    let handles: Vec<_> = scenarios.into_iter().map(|(name, f)| (name, std::thread::spawn(f))).collect();
    let mut failed = Vec::new();
    for (name, h) in handles {
        if h.join().is_err() {
            failed.push(name);
        }
    }
    assert!(failed.is_empty(), "failed: {failed:?}");
}
