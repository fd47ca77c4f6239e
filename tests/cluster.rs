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
use std::path::{Path, PathBuf};
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
fn config(dir: &Path, listen: &str, farm: &Farm, etcd: &EtcdCluster, fleet: &str, name: &str, k: usize) -> String {
    let mut s = format!(
        "[server]\nlisten = [\"{listen}\"]\nworkers = 1\nruntime_dir = \"{}\"\n\n[probe]\ninterval_ms = {INTERVAL_MS}\ntimeout_ms = {TIMEOUT_MS}\nretransmit_ms = 40\nrise = 2\nfall = {FALL}\n\n[[service]]\nname = \"{NAME}\"\n",
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

/// `n` instances `edge-0`.. of fleet `fleet`, listening on 127.0.4.`first_ip`.. port 5300,
/// started and waited for until each answers with every server.
fn start_fleet(n: usize, first_ip: usize, farm: &Farm, etcd: &EtcdCluster, fleet: &str, k: usize) -> Vec<Dnlb> {
    let dir = scratch(fleet);
    let started: Vec<Dnlb> = (0..n)
        .map(|i| {
            let d = dir.join(format!("edge-{i}"));
            let text =
                config(&d, &format!("127.0.4.{}:5300", first_ip + i), farm, etcd, fleet, &format!("edge-{i}"), k);
            Dnlb::spawn(d, &text)
        })
        .collect();
    let all = farm.ips();
    for d in &started {
        wait_for(Duration::from_secs(10), "every server in the answers", || answer(d).is_some_and(|a| a == all));
        d.wait_for_control();
    }
    started
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
    let mut fleet = start_fleet(3, 20, &farm, &etcd, "steady", 2);
    let all = farm.ips();
    // Duty settles once every member has read the others (and written its verdicts).
    wait_for(Duration::from_secs(5), "duty of 20 each in etcd", || {
        let duty = duty_in_etcd(&etcd, "steady");
        duty.len() == 3 && duty.values().all(|n| n.abs_diff(20) <= 1)
    });
    // One overlap interval after the duty settled, the load is k per server.
    std::thread::sleep(Duration::from_millis(2 * INTERVAL_MS));
    let rate = probe_rate(&farm, Duration::from_secs(12));
    eprintln!("steady: {rate:.3} probes per server per interval (k = 2, 3 instances)");
    let links = |fleet: &[Dnlb]| -> String {
        fleet
            .iter()
            .map(|d| d.stderr().lines().filter(|l| l.contains("cluster")).collect::<Vec<_>>().join("\n"))
            .collect::<Vec<_>>()
            .join("\n--\n")
    };
    assert!((rate - 2.0).abs() <= 0.1, "probe load {rate:.3}, want 2 ± 5 %; links:\n{}", links(&fleet));

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
    // `dnlb explain` says whose verdicts decided.
    let explain = String::from_utf8_lossy(&fleet[0].cli(&["explain", NAME]).unwrap().stdout).into_owned();
    let line = explain.lines().find(|l| l.contains(&format!("server {dead} "))).unwrap_or_default().to_string();
    assert!(line.contains("fleet: probed by") && line.contains("every prober says down: out"), "{explain}");
    // `dnlb status` (the page's /status.json has the same schema): the health the answers use,
    // and the third of the servers (k = 2 of 3) another member probes.
    let status = fleet[0].cli(&["status", "--json", "--history"]).unwrap();
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let servers = json["services"][0]["servers"].as_array().unwrap();
    let row = servers.iter().find(|s| s["address"].as_str().is_some_and(|a| a.starts_with(&format!("{dead}:"))));
    let row = row.unwrap_or_else(|| panic!("{json}"));
    assert_eq!((row["state"].as_str(), row["serving"].as_str()), (Some("down"), Some("out")), "{row}");
    let elsewhere = servers.iter().filter(|s| s["probed_here"] == false).count();
    assert!((9..=11).contains(&elsewhere), "{elsewhere} servers probed elsewhere: {json}");
    assert!(json["cluster"].is_object(), "{json}");
    let text = String::from_utf8_lossy(&fleet[0].cli(&["status", "--history"]).unwrap().stdout).into_owned();
    assert_eq!(text.matches(",not probed here").count(), elsewhere, "{text}");
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

/// The servers `member` has a verdict key for (its duty), by address.
fn duty_of(etcd: &EtcdCluster, fleet: &str, member: &str) -> BTreeSet<IpAddr> {
    let keys =
        etcd.ctl_any(&["get", &format!("/dnlb/v1/{fleet}/verdict/"), "--prefix", "--keys-only"]).unwrap_or_default();
    keys.lines()
        .filter(|k| k.ends_with(&format!("/{member}")))
        .filter_map(|k| k.split('/').nth(6).and_then(|a| a.parse::<SocketAddr>().ok()).map(|a| a.ip()))
        .collect()
}

/// Lines of `d`'s log that contain `what`.
fn log_lines(d: &Dnlb, what: &str) -> usize {
    d.stderr().lines().filter(|l| l.contains(what)).count()
}

/// k = 1: one instance is killed (SIGKILL, no goodbye); every server it probed is probed by
/// another within the lease TTL and an interval, and no answer of a survivor ever lacks a
/// healthy server meanwhile.
fn kill_nine() {
    let etcd = EtcdCluster::start("kn", &["127.0.4.7"]);
    let farm = Farm::start(130, 12);
    let mut fleet = start_fleet(3, 23, &farm, &etcd, "kill", 1);
    let all = farm.ips();
    wait_for(Duration::from_secs(5), "duty of 4 each", || {
        let duty = duty_in_etcd(&etcd, "kill");
        duty.len() == 3 && duty.values().all(|n| *n == 4)
    });
    std::thread::sleep(Duration::from_millis(2 * INTERVAL_MS));
    let orphans = duty_of(&etcd, "kill", "edge-2");
    assert_eq!(orphans.len(), 4);
    let watched: Vec<usize> = (0..12).filter(|&i| orphans.contains(&farm.responders[i].addr.ip())).collect();
    fleet[2].child.kill().unwrap();
    let killed = Instant::now();
    let _reaped = fleet[2].child.wait();
    let before: Vec<usize> = watched.iter().map(|&i| farm.responders[i].probes()).collect();
    // Until every orphan is probed again, and a second more: answers of the survivors, always whole.
    let mut taken = vec![None; watched.len()];
    let mut answers = 0;
    while taken.iter().any(Option::is_none) || killed.elapsed() < Duration::from_secs(3) {
        assert!(killed.elapsed() < Duration::from_secs(6), "orphans not taken over: {taken:?}");
        for (j, &i) in watched.iter().enumerate() {
            if taken[j].is_none() && farm.responders[i].probes() > before[j] {
                taken[j] = Some(killed.elapsed());
            }
        }
        for d in &fleet[..2] {
            let a = answer(d).expect("an answer");
            assert_eq!(a, all, "a survivor lost a healthy server {:?} after the kill", killed.elapsed());
            answers += 1;
        }
    }
    let worst = taken.iter().flatten().max().copied().unwrap();
    eprintln!("kill -9: orphans probed again after {taken:?}; {answers} answers checked, all whole");
    // etcd expires leases on its own schedule (a check every 500 ms), so allow that on top.
    assert!(worst <= Duration::from_millis(1000 + INTERVAL_MS + 500 + 200), "taken over after {worst:?}");
}

/// etcd fails step by step (the leader frozen, then two of three members: no quorum, then
/// all): the instances detach, keep answering right (a server that dies meanwhile leaves),
/// probe every server at most once each (N per server); etcd back: reattached within two
/// TTLs, probe load back to k, and not one flap.
fn etcd_outage() {
    let etcd = EtcdCluster::start("eo", &["127.0.4.8", "127.0.4.9", "127.0.4.10"]);
    let farm = Farm::start(150, 12);
    let fleet = start_fleet(3, 26, &farm, &etcd, "outage", 2);
    let all = farm.ips();
    wait_for(Duration::from_secs(5), "duty of 8 each", || {
        let duty = duty_in_etcd(&etcd, "outage");
        duty.len() == 3 && duty.values().all(|n| *n == 8)
    });
    std::thread::sleep(Duration::from_millis(2 * INTERVAL_MS));
    let check = |step: &str, want: &BTreeSet<IpAddr>, for_: Duration| {
        let start = Instant::now();
        while start.elapsed() < for_ {
            for (i, d) in fleet.iter().enumerate() {
                let got = answer(d);
                assert_eq!(got.as_ref(), Some(want), "{step}: edge-{i}'s answer changed:\n{}", d.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    // Whether the last link change `d` logged is an attach (or none happened).
    let attached = |d: &Dnlb| {
        let log = d.stderr();
        let last = log.lines().rfind(|l| l.contains("cluster attached") || l.contains("cluster detached"));
        last.is_none_or(|l| l.contains("cluster attached"))
    };
    // The leader frozen: the other two elect another; answers never change.
    let leader = etcd.leader().expect("a leader");
    etcd.freeze(leader);
    check("the leader frozen", &all, Duration::from_secs(2));
    for d in &fleet {
        wait_for(Duration::from_secs(4), "attached again with a new leader", || attached(d));
    }
    let alone_before: Vec<usize> = fleet.iter().map(|d| log_lines(d, "probing every server")).collect();
    // Two of three frozen: no quorum. Every instance detaches, then probes alone.
    let other = (0..3).find(|i| *i != leader).unwrap();
    etcd.freeze(other);
    let cut = Instant::now();
    for (d, before) in fleet.iter().zip(&alone_before) {
        wait_for(Duration::from_secs(5), "detached and probing every server", || {
            log_lines(d, "probing every server") > *before
        });
    }
    eprintln!("outage: every instance probing alone {:?} after quorum was lost", cut.elapsed());
    check("no quorum", &all, Duration::from_millis(500));
    let rate = probe_rate(&farm, Duration::from_secs(3));
    eprintln!("outage: {rate:.3} probes per server per interval with 3 detached instances");
    assert!(rate <= 3.0 * 1.05, "detached probe load {rate:.3}, want at most N = 3");
    // Everything frozen; a server dies meanwhile: it still leaves every answer.
    let last = (0..3).find(|i| *i != leader && *i != other).unwrap();
    etcd.freeze(last);
    let dead = farm.responders[3].addr.ip();
    farm.responders[3].set(Mode::Silent);
    let mut alive = all.clone();
    alive.remove(&dead);
    for d in &fleet {
        wait_for(
            Duration::from_millis(INTERVAL_MS * FALL + TIMEOUT_MS + 1000),
            "the dead server leaves while detached",
            || answer(d).is_some_and(|a| a == alive),
        );
    }
    check("etcd frozen, a server dead", &alive, Duration::from_secs(1));
    // etcd back.
    let attached_before: Vec<usize> = fleet.iter().map(|d| log_lines(d, "cluster attached")).collect();
    for i in 0..3 {
        etcd.thaw(i);
    }
    // etcd is back once it has a leader again (its own election takes a moment after the thaw).
    etcd.wait_healthy(Duration::from_secs(5));
    let back = Instant::now();
    for (d, before) in fleet.iter().zip(&attached_before) {
        wait_for(Duration::from_secs(4), "reattached", || log_lines(d, "cluster attached") > *before);
    }
    let reattached = back.elapsed();
    eprintln!("outage: reattached {reattached:?} after etcd came back");
    let links: Vec<String> = fleet
        .iter()
        .map(|d| d.stderr().lines().filter(|l| l.contains("cluster")).collect::<Vec<_>>().join("\n"))
        .collect();
    assert!(
        reattached <= Duration::from_secs(2),
        "reattached after {reattached:?}, want within two TTLs; etcd back at {:?}:\n{}",
        std::time::SystemTime::now() - reattached,
        links.join("\n--\n")
    );
    check("reattached", &alive, Duration::from_secs(1));
    std::thread::sleep(Duration::from_millis(2 * INTERVAL_MS));
    let rate = probe_rate(&farm, Duration::from_secs(4));
    eprintln!("outage: {rate:.3} probes per server per interval after reattaching");
    assert!((rate - 2.0).abs() <= 0.12, "probe load after the outage {rate:.3}, want 2");
    check("shared duty again", &alive, Duration::from_millis(500));
    // Not one flap: the only server that ever left any answer is the one that died.
    for d in &fleet {
        let flaps: Vec<String> = d
            .stderr()
            .lines()
            .filter(|l| l.contains("server out of the answers") && !l.contains(&dead.to_string()))
            .map(str::to_string)
            .collect();
        assert!(flaps.is_empty(), "flaps: {flaps:#?}");
    }
}

/// Every instance's answers polled for `for_`: each must be `want` every time.
fn steady(fleet: &[Dnlb], want: &BTreeSet<IpAddr>, for_: Duration, step: &str) -> usize {
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < for_ {
        for (i, d) in fleet.iter().enumerate() {
            assert_eq!(answer(d).as_ref(), Some(want), "{step}: edge-{i}'s answer:\n{}", d.stderr());
            n += 1;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    n
}

/// `dnlb drain` on one instance takes the server out of every instance's answers within a
/// second; it outlives a restart of every instance; `dnlb undrain` anywhere brings it back.
fn drain_cluster_wide_and_durable() {
    let etcd = EtcdCluster::start("dr", &["127.0.4.12"]);
    let farm = Farm::start(190, 6);
    let dir = scratch("drain");
    let spawn = |i: usize| {
        let d = dir.join(format!("edge-{i}"));
        let text = config(&d, &format!("127.0.4.{}:5300", 35 + i), &farm, &etcd, "drain", &format!("edge-{i}"), 2);
        Dnlb::spawn(d, &text)
    };
    let mut fleet: Vec<Dnlb> = (0..3).map(spawn).collect();
    let all = farm.ips();
    for d in &fleet {
        wait_for(Duration::from_secs(10), "every server in the answers", || answer(d).is_some_and(|a| a == all));
        d.wait_for_control();
    }
    let target = farm.responders[2].addr.ip();
    let mut rest = all.clone();
    rest.remove(&target);
    let out = fleet[0].cli(&["drain", &target.to_string()]).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let asked = Instant::now();
    for d in &fleet[1..] {
        wait_for(Duration::from_secs(1).saturating_sub(asked.elapsed()), "drained everywhere within 1 s", || {
            answer(d).is_some_and(|a| a == rest)
        });
    }
    eprintln!("drain: out of the other instances' answers {:?} after `dnlb drain` returned", asked.elapsed());
    let status = String::from_utf8_lossy(&fleet[2].cli(&["status"]).unwrap().stdout).into_owned();
    assert!(status.contains(&format!("drained cluster-wide: {NAME}/{target}:{} by edge-0", farm.port)), "{status}");
    // A second instance named edge-0 (on its own address) is refused at start, naming the holder.
    let twin_dir = dir.join("twin");
    let twin_text = config(&twin_dir, "127.0.4.44:5300", &farm, &etcd, "drain", "edge-0", 2);
    let mut twin = Dnlb::spawn(twin_dir, &twin_text);
    let mut exit = None;
    wait_for(Duration::from_secs(8), "the second edge-0 to exit", || {
        exit = twin.child.try_wait().unwrap();
        exit.is_some()
    });
    assert!(exit.is_some_and(|e| !e.success()), "a second edge-0 ran");
    let said = twin.stderr();
    assert!(said.contains("cluster.name `edge-0` is already live in farm `drain`") && said.contains("pid "), "{said}");
    // Every instance restarts: the drain is still there.
    for d in &mut fleet {
        d.stop();
    }
    drop(fleet);
    let fleet: Vec<Dnlb> = (0..3).map(spawn).collect();
    for d in &fleet {
        wait_for(Duration::from_secs(10), "answers from health after the restart", || {
            answer(d).is_some_and(|a| a == rest)
        });
    }
    steady(&fleet, &rest, Duration::from_secs(1), "drained after the restart");
    let out = fleet[1].cli(&["undrain", &target.to_string()]).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for d in &fleet {
        wait_for(Duration::from_secs(1), "undrained everywhere", || answer(d).is_some_and(|a| a == all));
    }
}

/// An instance with another probe configuration is reported as a conflict and shares no duty;
/// a rolling change (each instance reloaded in turn) keeps every answer whole, and the
/// conflict clears once all agree.
fn config_conflict_and_rolling_reload() {
    let etcd = EtcdCluster::start("cf", &["127.0.4.13"]);
    let farm = Farm::start(200, 6);
    let dir = scratch("conflict");
    let metrics: SocketAddr = "127.0.4.38:9153".parse().unwrap();
    let text = |i: usize| {
        let d = dir.join(format!("edge-{i}"));
        let t = config(&d, &format!("127.0.4.{}:5300", 38 + i), &farm, &etcd, "conflict", &format!("edge-{i}"), 1);
        if i == 0 {
            format!("{t}\n[metrics]\nlisten = \"{metrics}\"\n")
        } else {
            t
        }
    };
    let gauge = |name: &str| {
        let (_, parsed) = common::prom::scrape(metrics);
        common::prom::sum(&parsed, name, &[])
    };
    let changed = |t: String| t.replace("rise = 2", "rise = 3");
    let fleet: Vec<Dnlb> = (0..3)
        .map(|i| {
            let t = if i == 1 { changed(text(i)) } else { text(i) };
            Dnlb::spawn(dir.join(format!("edge-{i}")), &t)
        })
        .collect();
    let all = farm.ips();
    for d in &fleet {
        wait_for(Duration::from_secs(10), "every server in the answers", || answer(d).is_some_and(|a| a == all));
        d.wait_for_control();
    }
    let status = |d: &Dnlb| String::from_utf8_lossy(&d.cli(&["status"]).unwrap().stdout).into_owned();
    wait_for(Duration::from_secs(3), "the conflict reported", || {
        status(&fleet[0]).contains("conflict: edge-1 runs another configuration")
    });
    assert!(fleet[0].stderr().contains("members with another configuration"));
    // edge-1 shares no duty: it probes all 6 alone; edge-0 and edge-2 split the 6.
    wait_for(Duration::from_secs(3), "duty split by configuration", || {
        let duty = duty_in_etcd(&etcd, "conflict");
        duty.get("edge-1") == Some(&6) && duty.get("edge-0") == Some(&3) && duty.get("edge-2") == Some(&3)
    });
    let (text_before, _) = common::prom::scrape(metrics);
    common::prom::promtool_check(&text_before);
    assert_eq!(
        (gauge("dnlb_cluster_members"), gauge("dnlb_cluster_conflicts"), gauge("dnlb_cluster_attached")),
        (2.0, 1.0, 1.0)
    );
    assert_eq!(gauge("dnlb_cluster_duty_servers"), 3.0);
    assert!(gauge("dnlb_cluster_verdict_writes_total") >= 3.0);
    // The change rolls: edge-0, then edge-2, reloaded with edge-1's settings.
    let mut polled = 0;
    for i in [0, 2] {
        std::fs::write(&fleet[i].config, changed(text(i))).unwrap();
        let out = fleet[i].cli(&["reload"]).unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
        polled += steady(&fleet, &all, Duration::from_millis(1500), "rolling reload");
    }
    for d in &fleet {
        wait_for(Duration::from_secs(3), "the conflict cleared", || !status(d).contains("conflict:"));
    }
    wait_for(Duration::from_secs(3), "duty of 2 each", || {
        let duty = duty_in_etcd(&etcd, "conflict");
        duty.len() == 3 && duty.values().all(|n| *n == 2)
    });
    polled += steady(&fleet, &all, Duration::from_millis(500), "after the change");
    assert_eq!((gauge("dnlb_cluster_members"), gauge("dnlb_cluster_conflicts")), (3.0, 0.0));
    assert_eq!(gauge("dnlb_cluster_duty_servers"), 2.0);
    eprintln!("rolling reload: {polled} answers checked, all whole");
}

/// A hostile or broken writer under the prefix (garbage, oversized values, a verdict in the
/// name of an instance that is not a member, a key per half millisecond): refused and counted,
/// answers unaffected, the instance's CPU bounded.
fn hostile_etcd() {
    let etcd = EtcdCluster::start("ho", &["127.0.4.14"]);
    let farm = Farm::start(210, 4);
    let fleet = start_fleet(2, 41, &farm, &etcd, "hostile", 1);
    let all = farm.ips();
    let server = format!("{NAME}/{}:{}", farm.responders[0].addr.ip(), farm.port);
    let ctl = |args: &[&str]| etcd.ctl_any(args).expect("etcdctl");
    ctl(&["put", "/dnlb/v1/hostile/members/ghost", "{\"config\":\"zz\"}"]);
    ctl(&["put", &format!("/dnlb/v1/hostile/verdict/{server}/ghost"), "{\"epoch\":0,\"udp\":{\"up\":false}}"]);
    ctl(&["put", &format!("/dnlb/v1/hostile/verdict/{server}/edge-1"), &"x".repeat(120_000)]);
    ctl(&["put", "/dnlb/v1/hostile/drain/elsewhere", "{\"by\":\"x\",\"at\":1}"]);
    let cpu_before: Vec<Duration> = fleet.iter().map(|d| common::process::cpu_time(&d.process_stat())).collect();
    let flood = Instant::now();
    for round in 0..10 {
        let puts: Vec<(String, String)> =
            (0..100).map(|i| (format!("/dnlb/v1/hostile/verdict/x/{round}-{i}"), "garbage".to_string())).collect();
        etcd.put_all(&puts);
        for d in &fleet {
            assert_eq!(answer(d).as_ref(), Some(&all), "answers changed under the flood");
        }
    }
    let wall = flood.elapsed();
    let refused = |d: &Dnlb| -> u64 {
        let out = d.cli(&["status", "--json"]).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["cluster"]["refused"].as_u64().unwrap_or(0)
    };
    for d in &fleet {
        wait_for(Duration::from_secs(3), "the flood refused and counted", || refused(d) >= 1000);
    }
    steady(&fleet, &all, Duration::from_millis(500), "after the flood");
    for (d, before) in fleet.iter().zip(cpu_before) {
        let cpu = common::process::cpu_time(&d.process_stat()) - before;
        eprintln!("hostile: 1,000 garbage keys in {wall:?}: {cpu:?} of the instance's CPU, {} refused", refused(d));
        assert!(cpu < wall / 2, "an instance spent {cpu:?} of CPU in {wall:?}");
    }
}

#[test]
fn fleets() {
    if !common::require(etcd_binary().is_some(), "etcd (Debian package etcd-server)") {
        return;
    }
    let scenarios: Vec<(&str, fn())> = vec![
        ("steady state, detection, alone", steady_state_detection_and_one_alone),
        ("kill -9", kill_nine),
        ("etcd outage", etcd_outage),
        ("drain", drain_cluster_wide_and_durable),
        ("configuration conflict", config_conflict_and_rolling_reload),
        ("hostile etcd", hostile_etcd),
    ];
    let handles: Vec<_> = scenarios.into_iter().map(|(name, f)| (name, std::thread::spawn(f))).collect();
    let mut failed = Vec::new();
    for (name, h) in handles {
        if h.join().is_err() {
            failed.push(name);
        }
    }
    assert!(failed.is_empty(), "failed: {failed:?}");
}

/// The revision etcd is at (every write moves it by one).
fn revision(etcd: &EtcdCluster) -> u64 {
    let out = etcd.ctl_any(&["endpoint", "status", "-w", "json"]).unwrap_or_default();
    let at = out.find("\"revision\":").map(|i| i + "\"revision\":".len()).unwrap_or(0);
    out[at..].chars().take_while(char::is_ascii_digit).collect::<String>().parse().unwrap_or(0)
}

/// The numbers in tuning.md: probe load for 1 to 5 instances and k = 1, 2, 3; etcd writes per
/// flip. `cargo test --release --features cluster --test cluster -- --ignored --nocapture`.
#[test]
#[ignore]
fn measurements() {
    if !common::require(etcd_binary().is_some(), "etcd (Debian package etcd-server)") {
        return;
    }
    let etcd = EtcdCluster::start("me", &["127.0.4.11"]);
    let farm = Farm::start(170, 12);
    let dir = scratch("measure");
    println!("| instances | k = 1 | k = 2 | k = 3 |\n| --- | --- | --- | --- |");
    for n in 1..=5usize {
        let mut row = format!("| {n} |");
        for k in 1..=3usize {
            let tag = format!("load-{n}-{k}");
            let fleet: Vec<Dnlb> = (0..n)
                .map(|i| {
                    let d = dir.join(format!("{tag}-{i}"));
                    let text =
                        config(&d, &format!("127.0.4.{}:5300", 30 + i), &farm, &etcd, &tag, &format!("edge-{i}"), k);
                    Dnlb::spawn(d, &text)
                })
                .collect();
            let all = farm.ips();
            for d in &fleet {
                wait_for(Duration::from_secs(10), "whole", || answer(d).is_some_and(|a| a == all));
            }
            wait_for(Duration::from_secs(5), "duty settled", || {
                duty_in_etcd(&etcd, &tag).values().sum::<usize>() == 12 * k.min(n)
            });
            std::thread::sleep(Duration::from_millis(3 * INTERVAL_MS));
            let rate = probe_rate(&farm, Duration::from_secs(6));
            row.push_str(&format!(" {rate:.2} |"));
            if n == 3 && k == 2 {
                // One flip down and back: etcd writes per flip.
                let before = revision(&etcd);
                farm.responders[0].set(Mode::Silent);
                for d in &fleet {
                    wait_for(Duration::from_secs(3), "out", || answer(d).is_some_and(|a| a.len() == 11));
                }
                std::thread::sleep(Duration::from_millis(2 * INTERVAL_MS));
                let down = revision(&etcd) - before;
                farm.responders[0].set(Mode::Reply(200, None));
                for d in &fleet {
                    wait_for(Duration::from_secs(3), "back", || answer(d).is_some_and(|a| a.len() == 12));
                }
                std::thread::sleep(Duration::from_millis(2 * INTERVAL_MS));
                let total = revision(&etcd) - before;
                eprintln!("etcd writes for one server going down: {down}; down and back up: {total}");
            }
            drop(fleet);
        }
        println!("{row}");
    }
}
