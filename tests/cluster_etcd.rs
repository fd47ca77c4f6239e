//! The cluster thread against a real etcd (Debian's etcd-server) on 127.0.4.1: membership,
//! shared duty, verdicts between instances, a name taken twice, durable drains, and a hostile
//! writer under the prefix. The prober is not involved here (tests/cluster.rs runs whole dnlb
//! processes); the thread is driven through its handle exactly as the prober drives it.
#![cfg(feature = "cluster")]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::etcd::{etcd_binary, EtcdCluster};
use dnlb::cluster::core::{LinkState, Seen};
use dnlb::cluster::etcd::{spawn, ClusterThread, Setup};
use dnlb::cluster::{ClusterError, Published, Report};
use dnlb::config::{ClusterConfig, Transport};

fn servers() -> Vec<String> {
    (0..6).map(|i| format!("sip.example.test/127.0.4.{}:5060", 100 + i)).collect()
}

fn setup(endpoints: Vec<String>, name: &str, k: usize) -> Setup {
    Setup {
        config: ClusterConfig {
            etcd: endpoints,
            farm: "voice".into(),
            name: name.into(),
            probers_per_server: k,
            lease_ttl: Duration::from_secs(1),
            site: Some("east".into()),
            auth: None,
            tls: None,
        },
        servers: servers(),
        config_hash: "00000000000000aa".into(),
        alive: Some(Box::new(|| true)),
    }
}

fn wait(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "{what} not within {limit:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn now(t: &ClusterThread) -> Arc<Published> {
    t.handle().published.load_full()
}

#[test]
fn members_share_duty_exchange_verdicts_refuse_a_taken_name_and_keep_drains() {
    if !common::require(etcd_binary().is_some(), "etcd (Debian package etcd-server)") {
        return;
    }
    let etcd = EtcdCluster::start("ce", &["127.0.4.1"]);
    let a = spawn(setup(etcd.endpoints(), "edge-a", 1)).expect("a joins");
    let b = spawn(setup(etcd.endpoints(), "edge-b", 1)).expect("b joins");
    wait(Duration::from_secs(3), "both see two members", || {
        now(&a).view.members.len() == 2 && now(&b).view.members.len() == 2
    });
    let (va, vb) = (now(&a), now(&b));
    assert_eq!(va.link, LinkState::Attached);
    assert_eq!(va.ttl, Duration::from_secs(1), "etcd granted the 1 s lease asked for");
    // k = 1: every server has exactly one prober, and both agree who.
    for s in 0..6 {
        assert_eq!(va.view.probers[s], vb.view.probers[s]);
        assert_eq!(va.view.duty[s] as u8 + vb.view.duty[s] as u8, 1);
    }
    assert_eq!(va.view.duty.iter().filter(|d| **d).count(), 3, "a fair share of 6 servers");
    // A verdict of a's reaches b, for the servers a probes.
    let mine = va.view.duty.iter().position(|d| *d).unwrap();
    let down = vec![(Transport::Udp, Seen { up: false, rtt_us: 0, oc: 0 })];
    a.handle().report(Report::Verdict { server: mine, seen: down.clone() });
    wait(Duration::from_secs(2), "b sees a's verdict", || {
        now(&b).view.remote[mine] == vec![("edge-a".to_string(), down.clone())]
    });
    assert!(a.handle().stats.verdict_writes.load(std::sync::atomic::Ordering::Relaxed) >= 1);
    // The same report again writes nothing.
    let writes = a.handle().stats.verdict_writes.load(std::sync::atomic::Ordering::Relaxed);
    a.handle().report(Report::Verdict { server: mine, seen: down.clone() });
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(a.handle().stats.verdict_writes.load(std::sync::atomic::Ordering::Relaxed), writes);

    // A second instance named edge-a is refused, naming the holder.
    match spawn(setup(etcd.endpoints(), "edge-a", 1)) {
        Err(ClusterError::NameTaken { name, holder, .. }) => {
            assert_eq!(name, "edge-a");
            assert!(holder.contains(&format!("pid {}", std::process::id())), "{holder}");
        }
        Err(e) => panic!("refused for another reason: {e}"),
        Ok(_) => panic!("a second edge-a was let in"),
    }

    // A drain given at a reaches b; it outlives both.
    a.handle().drain(vec![2], true).expect("drain recorded");
    wait(Duration::from_secs(1), "b sees the drain", || {
        now(&b).view.drains[2].as_ref().is_some_and(|d| d.by == "edge-a")
    });
    // a stops: its lease is revoked, so b takes every server at once, and a's verdict is gone.
    let stopped = Instant::now();
    a.shutdown();
    wait(Duration::from_millis(800), "b alone", || now(&b).view.duty.iter().all(|d| *d));
    assert!(stopped.elapsed() < Duration::from_millis(800));
    assert!(now(&b).view.remote.iter().all(|r| r.is_empty()));
    b.shutdown();
    let c = spawn(setup(etcd.endpoints(), "edge-c", 1)).expect("c joins");
    wait(Duration::from_secs(2), "the drain read back", || now(&c).view.drains.get(2).is_some_and(|d| d.is_some()));
    c.handle().drain(vec![2], false).expect("undrain recorded");
    wait(Duration::from_secs(1), "undrained", || now(&c).view.drains[2].is_none());
    c.shutdown();
}

#[test]
fn a_hostile_writer_under_the_prefix_is_refused_and_counted() {
    if !common::require(etcd_binary().is_some(), "etcd (Debian package etcd-server)") {
        return;
    }
    let etcd = EtcdCluster::start("ch", &["127.0.4.2"]);
    let a = spawn(setup(etcd.endpoints(), "edge-a", 2)).expect("a joins");
    let b = spawn(setup(etcd.endpoints(), "edge-b", 2)).expect("b joins");
    wait(Duration::from_secs(3), "two members", || now(&a).view.members.len() == 2);
    let before = now(&a).view.clone();
    let refused = || a.handle().stats.refused.load(std::sync::atomic::Ordering::Relaxed);
    let ctl = |args: &[&str]| etcd.ctl_any(args).expect("etcdctl");
    // Garbage values under real key names, a huge value, keys of no kind, a fake member's verdict.
    ctl(&["put", "/dnlb/v1/voice/members/evil", "not json"]);
    ctl(&["put", "/dnlb/v1/voice/verdict/sip.example.test/127.0.4.100:5060/ghost", r#"{"udp":{"up":false}}"#]);
    ctl(&[
        "put",
        "/dnlb/v1/voice/verdict/sip.example.test/127.0.4.100:5060/edge-b",
        r#"{"udp":{"up":false,"rtt_us":1e40}}"#,
    ]);
    ctl(&["put", "/dnlb/v1/voice/drain/sip.example.test/10.0.0.1:5060", r#"{"by":"x","at":1}"#]);
    let huge = "x".repeat(120_000); // the most one argument may carry (128 KiB)
    ctl(&["put", "/dnlb/v1/voice/verdict/sip.example.test/127.0.4.101:5060/edge-b", &huge]);
    wait(Duration::from_secs(2), "five refusals", || refused() >= 5);
    // A key per millisecond for two seconds (a txn of 100 puts every 100 ms, 20 of them).
    let flood_start = Instant::now();
    let cpu_before = cluster_cpu();
    for round in 0..20 {
        let puts: Vec<(String, String)> =
            (0..100).map(|i| (format!("/dnlb/v1/voice/zz/{round}-{i}"), "garbage".to_string())).collect();
        etcd.put_all(&puts);
    }
    wait(Duration::from_secs(3), "the flood counted", || refused() >= 5 + 2000);
    let cpu = cluster_cpu() - cpu_before;
    let wall = flood_start.elapsed();
    eprintln!("flood: 2000 keys in {wall:?}, cluster thread CPU {cpu:?}");
    assert!(cpu < wall / 2, "the cluster threads spent {cpu:?} of CPU in {wall:?} on a flood of refused keys");
    // The view is what it was: no member, verdict or drain came of any of it.
    let after = now(&a).view.clone();
    assert_eq!(after.members, before.members);
    assert_eq!(after.probers, before.probers);
    assert!(after.remote.iter().all(|r| r.is_empty()), "{:?}", after.remote);
    assert!(after.drains.iter().all(|d| d.is_none()));
    assert_eq!(now(&a).link, LinkState::Attached);
    a.shutdown();
    b.shutdown();
}

/// CPU time of every `dnlb-cluster` thread of this process (both instances' threads).
fn cluster_cpu() -> Duration {
    let mut total = Duration::ZERO;
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() == "dnlb-cluster" {
            total += common::process::cpu_time(&task.path().join("stat").display().to_string());
        }
    }
    total
}
