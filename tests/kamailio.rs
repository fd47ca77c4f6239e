//! Real SIP servers: three kamailio instances (Debian's package) on 127.0.0.11-13:5060, UDP and
//! TCP, answering OPTIONS with 200 when it is well-formed and addressed to them
//! (`common::kamailio`). Killing one removes it from DNS answers within interval × fall +
//! timeout; restarting it brings it back within interval × rise + timeout (plus kamailio's own
//! start-up). Both are measured and printed; the assertions keep generous margins. The metrics
//! endpoint's `dnlb_sip_server_up` goes to 0 for the killed one within the same bound.

mod common;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use common::kamailio::Kamailio;
use common::prom::{scrape, sum};
use common::*;
use dnlb::config::IoMode;
use dnlb::control::metrics::{MetricsServer, Sources};
use dnlb::control::running::{Running, RunningView};
use dnlb::probe::Prober;
use hickory_proto::rr::{RData, RecordType};

const IPS: [&str; 3] = ["127.0.0.11", "127.0.0.12", "127.0.0.13"];

#[test]
fn kamailio_death_and_restart_are_seen_in_dns() {
    if !require(have("kamailio"), "kamailio (package kamailio)") {
        return;
    }
    let (interval, timeout, rise, fall) = (500u64, 150u64, 2u64, 2u64);
    let mut text = format!(
        "[server]\nlisten = [\"127.0.0.1:{}\"]\nworkers = 1\n\n[probe]\ninterval_ms = {interval}\ntimeout_ms = {timeout}\nrise = {rise}\nfall = {fall}\n\n[[service]]\nname = \"sip.example.test\"\n",
        free_port()
    );
    for ip in IPS {
        text.push_str(&format!("[[service.server]]\naddress = \"{ip}\"\ntransports = [\"udp\", \"tcp\"]\n"));
    }
    let start = |ip: &str| Kamailio::start(ip, &[format!("udp:{ip}:5060"), format!("tcp:{ip}:5060")], None);
    let mut kamailios: Vec<Kamailio> = IPS.iter().map(|ip| start(ip)).collect();
    let dns = TestServer::start(&text, IoMode::Portable);
    let prober = Prober::spawn(dns.config.clone(), dns.snapshots.clone()).unwrap();
    let sources = Sources {
        counters: dns.server.as_ref().unwrap().counters(),
        running: RunningView::new(Running::new(std::sync::Arc::new(dns.config.clone()), Some(&prober))),
        snapshots: dns.snapshots.clone(),
    };
    let metrics = MetricsServer::start("127.0.0.1:0".parse().unwrap(), sources).unwrap();
    let up = |transport: &str| {
        let (_, s) = scrape(metrics.local_addr());
        let l = [("service", "sip.example.test"), ("server", "127.0.0.12:5060"), ("transport", transport)];
        sum(&s, "dnlb_sip_server_up", &l)
    };
    let answers = |qtype: RecordType| -> BTreeSet<IpAddr> {
        let m = udp_query(
            dns.addr,
            &query(
                if qtype == RecordType::SRV { "_sip._tcp.sip.example.test." } else { "sip.example.test." },
                qtype,
                1,
                None,
            ),
        );
        let section = if qtype == RecordType::SRV { &m.additionals } else { &m.answers };
        section
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                _ => None,
            })
            .collect()
    };
    let all: BTreeSet<IpAddr> = IPS.iter().map(|i| i.parse().unwrap()).collect();
    let wait = |what: &str, limit: Duration, want: &BTreeSet<IpAddr>| -> Duration {
        let start = Instant::now();
        loop {
            if answers(RecordType::A) == *want && answers(RecordType::SRV) == *want {
                return start.elapsed();
            }
            assert!(start.elapsed() < limit, "{what}: not within {limit:?}: A {:?}", answers(RecordType::A));
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    settle(&prober, Duration::from_secs(10));
    let started = wait("all three kamailio up", Duration::from_secs(15), &all);
    println!("all three kamailio answering OPTIONS (UDP and TCP) after {started:?}");

    assert_eq!((up("udp"), up("tcp")), (1.0, 1.0), "the endpoint shows 127.0.0.12 up");
    kamailios[1].stop();
    let killed = Instant::now();
    let survivors: BTreeSet<IpAddr> = ["127.0.0.11", "127.0.0.13"].iter().map(|i| i.parse().unwrap()).collect();
    let bound = Duration::from_millis(interval * fall + timeout);
    let removed = wait("killed kamailio removed", bound * 3, &survivors);
    println!(
        "killed kamailio removed from A and _sip._tcp SRV after {removed:?} (interval x fall + timeout = {bound:?})"
    );
    assert!(removed <= bound + Duration::from_millis(500), "removed after {removed:?}, bound {bound:?}");
    // The reports are refreshed right after the flip that removed it from the answers.
    while (up("udp"), up("tcp")) != (0.0, 0.0) {
        assert!(
            killed.elapsed() <= bound + Duration::from_millis(500),
            "still up in /metrics after {:?}",
            killed.elapsed()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    println!("killed kamailio shows dnlb_sip_server_up 0 after {:?} (bound {bound:?})", killed.elapsed());

    kamailios[1] = start(IPS[1]);
    let bound = Duration::from_millis(interval * rise + timeout);
    let back = wait("restarted kamailio back", bound * 6, &all);
    println!("restarted kamailio back after {back:?} (interval x rise + timeout = {bound:?}, plus kamailio start-up)");
    assert!(back <= bound + Duration::from_secs(2), "back after {back:?}, bound {bound:?}");
    drop(metrics);
    prober.shutdown().unwrap();
}
