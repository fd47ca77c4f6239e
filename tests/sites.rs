//! Sites with failover against the real binary: clients in 127.0.8.0/24 prefer site east, clients
//! in 127.0.9.0/24 prefer west, everyone else gets every healthy server. Stopping east's SIP
//! servers (in-process responders) moves east's clients to west within interval × fall + timeout,
//! and starting them again brings those clients back once they have risen.

mod common;

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::client::Client;
use common::process::{a_records, Dnlb};
use common::sip::{common_port, Mode, SipResponder};
use common::*;
use hickory_proto::rr::{RData, RecordType};

const INTERVAL_MS: u64 = 200;
const TIMEOUT_MS: u64 = 100;
const FALL: u64 = 2;
const RISE: u64 = 2;

const EAST: [&str; 2] = ["127.0.10.1", "127.0.10.2"];
const WEST: [&str; 2] = ["127.0.11.1", "127.0.11.2"];

impl Client {
    /// The A answer's addresses, as a set.
    fn addresses(&mut self, dns: SocketAddr) -> BTreeSet<IpAddr> {
        let m = self.ask(dns, "sip.example.test.", RecordType::A);
        m.map(|m| a_records(&m).into_iter().collect()).unwrap_or_default()
    }

    /// The SRV answer's targets' glue addresses, as a set.
    fn srv_glue(&mut self, dns: SocketAddr) -> BTreeSet<IpAddr> {
        let m = self.ask(dns, "_sip._udp.sip.example.test.", RecordType::SRV);
        m.map(|m| {
            m.additionals
                .iter()
                .filter_map(|r| match &r.data {
                    RData::A(a) => Some(IpAddr::V4(a.0)),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
    }

    /// Polls until the A answer is `want`; returns how long that took.
    fn wait_for(&mut self, d: &Dnlb, want: &BTreeSet<IpAddr>, limit: Duration) -> Duration {
        let mut got = BTreeSet::new();
        let took = poll(limit, || {
            got = self.addresses(d.dns);
            got == *want
        });
        took.unwrap_or_else(|| panic!("not {want:?} within {limit:?} (got {got:?}):\n{}", d.stderr()))
    }
}

fn set(ips: &[&str]) -> BTreeSet<IpAddr> {
    ips.iter().map(|i| i.parse().unwrap()).collect()
}

#[test]
fn each_prefix_gets_its_site_and_fails_over_to_the_next() {
    let all: Vec<&str> = EAST.iter().chain(&WEST).copied().collect();
    let sip_port = common_port(&all);
    let start = |ip: &str| SipResponder::start(SocketAddr::new(ip.parse().unwrap(), sip_port), Mode::Reply(200, None));
    let mut east: Vec<SipResponder> = EAST.iter().map(|i| start(i)).collect();
    let _west: Vec<SipResponder> = WEST.iter().map(|i| start(i)).collect();

    let port = free_port();
    let dir = std::env::temp_dir().join(format!("dnlb-sites-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut text = format!(
        "[server]\nlisten = [\"127.0.0.1:{port}\"]\nworkers = 1\npin_workers = false\nruntime_dir = \"{}\"\n\
         [probe]\ninterval_ms = {INTERVAL_MS}\ntimeout_ms = {TIMEOUT_MS}\nretransmit_ms = 30\nrise = {RISE}\nfall = {FALL}\n\
         [[service]]\nname = \"sip.example.test\"\n",
        dir.join("run").display()
    );
    for (site, ips) in [("east", EAST), ("west", WEST)] {
        for ip in ips {
            text.push_str(&format!("[[service.server]]\naddress = \"{ip}\"\nport = {sip_port}\nsite = \"{site}\"\n"));
        }
    }
    text.push_str(
        "[[sites]]\nclients = [\"127.0.8.0/24\"]\nprefer = [\"east\", \"west\"]\n\
         [[sites]]\nclients = [\"127.0.9.0/24\"]\nprefer = [\"west\", \"east\"]\n",
    );
    let d = Dnlb::spawn(dir, &text);

    let mut in_east = Client::bind("127.0.8.5");
    let mut in_west = Client::bind("127.0.9.5");
    let mut elsewhere = Client::bind("127.0.0.1");
    // Set-up: generous.
    elsewhere.wait_for(&d, &set(&all), Duration::from_secs(10));
    in_east.wait_for(&d, &set(&EAST), Duration::from_secs(2));
    in_west.wait_for(&d, &set(&WEST), Duration::from_secs(2));
    assert_eq!(in_east.srv_glue(d.dns), set(&EAST), "SRV follows the site too");
    assert_eq!(in_west.srv_glue(d.dns), set(&WEST));
    assert_eq!(elsewhere.srv_glue(d.dns), set(&all));

    let explain = d.cli(&["explain", "sip.example.test", "A", "--client", "127.0.8.77"]).unwrap();
    let text = String::from_utf8_lossy(&explain.stdout);
    assert!(text.contains("matches sites[0] (127.0.8.0/24): prefers east > west"), "{text}");
    assert!(text.contains("127.0.10.1") && !text.contains("  sip.example.test. 1 A 127.0.11"), "{text}");
    assert!(text.contains("server 127.0.10.1 (#0) in: up on udp"), "{text}");
    assert!(
        text.contains(
            "server 127.0.11.1 (#2) not for this client: up on udp, but this client's answer comes from site east"
        ),
        "{text}"
    );
    let explain = d.cli(&["explain", "sip.example.test", "A", "--client", "192.0.2.1"]).unwrap();
    assert!(String::from_utf8_lossy(&explain.stdout).contains("matches no [[sites]] prefix"));

    // East goes away: its clients move to west within interval × fall + timeout (polled every
    // 10 ms, so that much more); west's clients never notice.
    let bound = Duration::from_millis(INTERVAL_MS * FALL + TIMEOUT_MS);
    for r in east.drain(..) {
        r.close();
    }
    let took = in_east.wait_for(&d, &set(&WEST), bound + Duration::from_millis(10));
    eprintln!("east's clients moved to west in {took:?} (bound {bound:?})");
    assert_eq!(in_west.addresses(d.dns), set(&WEST));
    assert_eq!(elsewhere.addresses(d.dns), set(&WEST), "only west is healthy");
    assert_eq!(in_east.srv_glue(d.dns), set(&WEST));

    // East comes back: after `rise` good probes its clients return to it.
    let east: Vec<SipResponder> = EAST.iter().map(|i| start(i)).collect();
    let back = Duration::from_millis(INTERVAL_MS * (RISE + 1) + TIMEOUT_MS);
    let took = in_east.wait_for(&d, &set(&EAST), back + Duration::from_millis(10));
    eprintln!("east's clients back in {took:?} (bound {back:?})");
    assert_eq!(in_west.addresses(d.dns), set(&WEST));
    drop(east);
}
