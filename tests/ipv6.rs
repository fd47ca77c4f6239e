//! IPv6 SIP servers end to end.
//!
//! - Real kamailio on [::1] over UDP, TCP and TLS (its own tls module), in one service with a
//!   kamailio on 127.0.1.11: every target is up with `200 OK` (kamailio answers 200 only to a
//!   well-formed request addressed to itself, see `common::kamailio`), each stop takes exactly its
//!   transports out of the SRV sets and its family's A or AAAA set within interval × fall +
//!   timeout, each return brings them back within interval × rise + timeout (plus kamailio's
//!   start-up). DNS asked over IPv6, from both I/O backends, serving one snapshot.
//! - Several IPv6 servers on addresses added to lo (fd00:14::/64, root), with `[[sites]]` by IPv6
//!   client prefix: each client's AAAA and SRV come from its site, NAPTR is the same for all,
//!   `dnlb explain --client` names the entry, and a site's failure moves its clients; the real
//!   binary on each backend.
//! - The probe request, for random IPv4 and IPv6 servers, ports, transports and identities,
//!   against the RFC 3261 §25 grammar (with RFC 5118 / RFC 5954 IPv6 references) written here;
//!   and kamailio on several IPv6 addresses answering 200 to every one of them.
//! - Forged replies to IPv6 probes never count: wrong identities, the true reply from another
//!   port or from another address.
//! - A configuration or reload with a link-local or an IPv4-mapped server is refused, naming the
//!   field and why.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use common::client::Client;
use common::kamailio::{modules_with, Kamailio, TlsFiles};
use common::lo::LoAddresses;
use common::process::Dnlb;
use common::sip::{Mode, SipResponder};
use common::*;
use dnlb::config::{Config, ProbeMethod, Transport};
use dnlb::probe::health::State;
use dnlb::probe::sip::{check_reply, frame, Frame, ProbeId, Reply, RequestTemplate};
use dnlb::probe::{initial_serving, Prober};
use dnlb::server::Server;
use dnlb::snapshot::{Snapshot, SnapshotHandle};
use hickory_proto::rr::{RData, RecordType};
use proptest::prelude::*;

/// A port free for UDP and TCP on `ip` a moment ago.
fn free_port_on(ip: IpAddr) -> u16 {
    loop {
        let udp = UdpSocket::bind((ip, 0)).unwrap();
        let port = udp.local_addr().unwrap().port();
        if TcpListener::bind((ip, port)).is_ok() {
            return port;
        }
    }
}

impl Client {
    /// The addresses of the A or AAAA answer for `name`.
    fn addresses(&mut self, dns: SocketAddr, name: &str, qtype: RecordType) -> BTreeSet<IpAddr> {
        let Some(m) = self.ask(dns, name, qtype) else { return BTreeSet::new() };
        m.answers.iter().filter_map(|r| address(&r.data)).collect()
    }

    /// The SRV answer's (target, port) pairs and its glue addresses (A and AAAA).
    fn srv(&mut self, dns: SocketAddr, name: &str) -> (BTreeSet<(String, u16)>, BTreeSet<IpAddr>) {
        let Some(m) = self.ask(dns, name, RecordType::SRV) else { return Default::default() };
        let targets = m
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::SRV(s) => Some((s.target.to_ascii(), s.port)),
                _ => None,
            })
            .collect();
        (targets, m.additionals.iter().filter_map(|r| address(&r.data)).collect())
    }
}

fn address(data: &RData) -> Option<IpAddr> {
    match data {
        RData::A(a) => Some(IpAddr::V4(a.0)),
        RData::AAAA(a) => Some(IpAddr::V6(a.0)),
        _ => None,
    }
}

fn set(ips: &[&str]) -> BTreeSet<IpAddr> {
    ips.iter().map(|i| i.parse().unwrap()).collect()
}

/// The SRV target name dnlb gives a server without `host` (`ip6-<32 hex digits>.<service>.`).
fn ip6_target(ip: &str, service: &str) -> String {
    let ip: Ipv6Addr = ip.parse().unwrap();
    let hex: String = ip.octets().iter().map(|b| format!("{b:02x}")).collect();
    format!("ip6-{hex}.{service}.")
}

/// A test CA and a certificate from it for `name`, PEM; returns (CA, the server's files).
fn pki(name: &str) -> (String, TlsFiles) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "dnlb IPv6 test CA");
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    let cert = params.signed_by(&key, &issuer).unwrap();
    (ca_pem.clone(), TlsFiles { chain: format!("{}{ca_pem}", cert.pem()), key: key.serialize_pem() })
}

/// Polls `check` until it returns `None` (all good): how long that took; panics with the last
/// complaint after `limit`.
fn until(what: &str, limit: Duration, mut check: impl FnMut() -> Option<String>) -> Duration {
    let mut complaint = String::new();
    let took = poll(limit, || match check() {
        None => true,
        Some(c) => {
            complaint = c;
            false
        }
    });
    took.unwrap_or_else(|| panic!("{what}: not within {limit:?}: {complaint}"))
}

#[test]
fn kamailio_on_ipv6_over_udp_tcp_and_tls_beside_ipv4_answers_from_the_right_health() {
    if !require(have("kamailio") && modules_with("sanity.so").is_some(), "kamailio with its sanity module") {
        return;
    }
    if !require(modules_with("tls.so").is_some(), "kamailio's tls module tls.so (package kamailio-tls-modules)") {
        return;
    }
    let (v4, v6) = ("127.0.1.11", "::1");
    let p4 = free_port_on(v4.parse().unwrap());
    let p6 = free_port_on(v6.parse().unwrap());
    let t6 = free_port_on(v6.parse().unwrap());
    let dir = std::env::temp_dir().join(format!("dnlb-ipv6-kamailio-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ca, files) = pki("sip.example.test");
    std::fs::write(dir.join("ca.pem"), ca).unwrap();
    let plain = |ip: &str, port: u16| vec![format!("udp:{ip}:{port}"), format!("tcp:{ip}:{port}")];
    let start_v4 = || Kamailio::start("v4", &plain(v4, p4), None);
    let start_v6 = || Kamailio::start("v6", &plain("[::1]", p6), None);
    let start_tls = || Kamailio::start("v6-tls", &[format!("tls:[::1]:{t6}")], Some(&files));
    let mut k4 = start_v4();
    let mut k6 = start_v6();
    let mut k6_tls = start_tls();

    let (interval, timeout, rise, fall) = (500u64, 250u64, 2u64, 2u64);
    let text = format!(
        "[server]\nlisten = [\"[::1]:53\"]\nworkers = 1\npin_workers = false\n\
         [probe]\ninterval_ms = {interval}\ntimeout_ms = {timeout}\nrise = {rise}\nfall = {fall}\n\
         [[service]]\nname = \"sip.example.test\"\nall_down = \"nodata\"\ntls_ca_file = \"{}\"\n\
         [[service.server]]\naddress = \"{v4}\"\nport = {p4}\ntransports = [\"udp\", \"tcp\"]\n\
         [[service.server]]\naddress = \"{v6}\"\nport = {p6}\ntls_port = {t6}\ntransports = [\"udp\", \"tcp\", \"tls\"]\n",
        dir.join("ca.pem").display()
    );
    let config = Config::parse(&text).unwrap_or_else(|p| panic!("{p:?}"));
    let snapshots = SnapshotHandle::new(Snapshot::build(&config, &initial_serving(&config), 0).unwrap());
    // Both backends serve the prober's snapshots, over IPv6.
    let servers: Vec<(Server, SocketAddr)> = backends()
        .into_iter()
        .map(|io| {
            let mut s = config.server.clone();
            s.io = io;
            s.listen = vec![SocketAddr::new(v6.parse().unwrap(), free_port_on(v6.parse().unwrap()))];
            let addr = s.listen[0];
            (Server::start(&s, None, None, snapshots.clone()).unwrap(), addr)
        })
        .collect();
    let prober = Prober::spawn(config.clone(), snapshots.clone()).unwrap();
    let mut client = Client::bind("::1");
    let service = "sip.example.test.";
    let v6_target = ip6_target(v6, "sip.example.test");
    // What every backend answers now: (A, AAAA, _sip._udp and _sip._tcp glue, _sips._tcp targets).
    type View = (BTreeSet<IpAddr>, BTreeSet<IpAddr>, BTreeSet<IpAddr>, BTreeSet<IpAddr>, BTreeSet<(String, u16)>);
    let mut look = |want: &View| -> Option<String> {
        for (_, dns) in &servers {
            let seen: View = (
                client.addresses(*dns, service, RecordType::A),
                client.addresses(*dns, service, RecordType::AAAA),
                client.srv(*dns, "_sip._udp.sip.example.test.").1,
                client.srv(*dns, "_sip._tcp.sip.example.test.").1,
                client.srv(*dns, "_sips._tcp.sip.example.test.").0,
            );
            if seen != *want {
                return Some(format!("{dns} answers {seen:?}"));
            }
        }
        None
    };
    let both = set(&[v4, v6]);
    let tls_up: BTreeSet<(String, u16)> = [(v6_target.clone(), t6)].into();
    let all_up: View = (set(&[v4]), set(&[v6]), both.clone(), both.clone(), tls_up.clone());
    let logs = |k: &[&Kamailio]| k.iter().map(|k| k.stderr()).collect::<Vec<_>>().join("\n");
    let reports = || prober.status().servers.lock().unwrap().clone();

    let took = until("every kamailio up", Duration::from_secs(15), || {
        look(&all_up).map(|c| format!("{c}\nreports {:?}\n{}", reports(), logs(&[&k4, &k6, &k6_tls])))
    });
    println!("kamailio on {v4} (udp, tcp) and [::1] (udp, tcp, tls) all in the answers after {took:?}");
    // 200, not just any reply: kamailio found each request well-formed and addressed to itself.
    let r = reports();
    assert_eq!(r.len(), 5, "{r:?}");
    for s in &r {
        assert_eq!((s.state, s.last_code), (State::Up, Some(200)), "{s:?}");
    }

    let down = Duration::from_millis(interval * fall + timeout) + Duration::from_millis(500);
    let back = Duration::from_millis(interval * rise + timeout) + Duration::from_secs(2);
    // [::1] stops on UDP and TCP: it leaves those SRV sets; TLS keeps it in AAAA and _sips._tcp.
    k6.stop();
    let only_tls: View = (set(&[v4]), set(&[v6]), set(&[v4]), set(&[v4]), tls_up.clone());
    let took = until("[::1] udp/tcp out", down, || look(&only_tls));
    println!("[::1] stopped on udp and tcp: out of _sip._udp and _sip._tcp after {took:?} (bound {down:?})");
    // Its TLS server stops too: no AAAA at all, while the A set stays.
    k6_tls.stop();
    let v4_only: View = (set(&[v4]), BTreeSet::new(), set(&[v4]), set(&[v4]), BTreeSet::new());
    let took = until("[::1] tls out", down, || look(&v4_only));
    println!("[::1] stopped on tls: out of AAAA and _sips._tcp after {took:?} (bound {down:?})");
    // Both return.
    k6 = start_v6();
    k6_tls = start_tls();
    let took = until("[::1] back", back, || look(&all_up).map(|c| format!("{c}\n{}", logs(&[&k6, &k6_tls]))));
    println!("[::1] back on udp, tcp and tls after {took:?} (bound {back:?}, kamailio's start-up included)");
    // The IPv4 server stops: A empties, AAAA stays.
    k4.stop();
    let v6_only: View = (BTreeSet::new(), set(&[v6]), set(&[v6]), set(&[v6]), tls_up);
    let took = until("127.0.1.11 out", down, || look(&v6_only));
    println!("{v4} stopped: out of A and the SRV sets after {took:?}, [::1] stays (bound {down:?})");
    k4 = start_v4();
    until("127.0.1.11 back", back, || look(&all_up));
    prober.shutdown().unwrap();
    for (server, _) in servers {
        let (_, errors) = server.shutdown();
        assert!(errors.is_empty(), "{errors:?}");
    }
    drop((k4, k6, k6_tls));
    let _cleanup = std::fs::remove_dir_all(&dir);
}

const EAST: [&str; 2] = ["fd00:14::21", "fd00:14::22"];
const WEST: [&str; 2] = ["fd00:14::23", "fd00:14::24"];
const IN_EAST: &str = "fd00:14::1:5";
const IN_WEST: &str = "fd00:14::2:5";

#[test]
fn several_ipv6_servers_with_sites_by_ipv6_client_prefix_naptr_and_explain() {
    let all: Vec<&str> = EAST.iter().chain(&WEST).copied().collect();
    let Some(_lo) = LoAddresses::add(&[&all[..], &[IN_EAST, IN_WEST]].concat()) else { return };
    let sip_port = common::sip::common_port(&all);
    let start = |ip: &str| SipResponder::start(SocketAddr::new(ip.parse().unwrap(), sip_port), Mode::Reply(200, None));
    let east: Vec<SipResponder> = EAST.iter().map(|i| start(i)).collect();
    let _west: Vec<SipResponder> = WEST.iter().map(|i| start(i)).collect();
    let (interval, timeout, fall) = (200u64, 100u64, 2u64);
    // The real binary on each backend, side by side, probing the same farm.
    // Each with its status page on [::1] too (the page and /status.json name IPv6 servers).
    let v6_loopback: IpAddr = "::1".parse().unwrap();
    let pages: Vec<SocketAddr> =
        backends().iter().map(|_| SocketAddr::new(v6_loopback, free_port_on(v6_loopback))).collect();
    let dnlbs: Vec<Dnlb> = backends()
        .into_iter()
        .zip(&pages)
        .map(|(io, page)| {
            let port = free_port_on("::1".parse().unwrap());
            let dir = std::env::temp_dir().join(format!("dnlb-ipv6-sites-{}-{port}", std::process::id()));
            let mut text = format!(
                "[server]\nlisten = [\"[::1]:{port}\"]\nworkers = 1\npin_workers = false\nruntime_dir = \"{}\"\n\
                 [probe]\ninterval_ms = {interval}\ntimeout_ms = {timeout}\nretransmit_ms = 30\nrise = 2\nfall = {fall}\n\
                 [metrics]\nlisten = \"{page}\"\n\
                 [[service]]\nname = \"sip.example.test\"\nall_down = \"nodata\"\n",
                dir.join("run").display()
            );
            for (site, ips) in [("east", EAST), ("west", WEST)] {
                for ip in ips {
                    text.push_str(&format!(
                        "[[service.server]]\naddress = \"{ip}\"\nport = {sip_port}\nsite = \"{site}\"\n"
                    ));
                }
            }
            text.push_str(
                "[[sites]]\nclients = [\"fd00:14::1:0/112\"]\nprefer = [\"east\", \"west\"]\n\
                 [[sites]]\nclients = [\"fd00:14::2:0/112\"]\nprefer = [\"west\", \"east\"]\n",
            );
            let io = format!("{io:?}").to_lowercase();
            Dnlb::spawn_with(dir, &text, &["--io", &io], &[])
        })
        .collect();
    let (mut in_east, mut in_west, mut elsewhere) = (Client::bind(IN_EAST), Client::bind(IN_WEST), Client::bind("::1"));
    let service = "sip.example.test.";
    let udp = "_sip._udp.sip.example.test.";
    for d in &dnlbs {
        until("every server up", Duration::from_secs(10), || {
            let seen = elsewhere.addresses(d.dns, service, RecordType::AAAA);
            (seen != set(&all)).then(|| format!("{seen:?}\n{}", d.stderr()))
        });
        until("each client its site", Duration::from_secs(2), || {
            let (e, w) = (
                in_east.addresses(d.dns, service, RecordType::AAAA),
                in_west.addresses(d.dns, service, RecordType::AAAA),
            );
            (e != set(&EAST) || w != set(&WEST)).then(|| format!("east {e:?} west {w:?}"))
        });
        let (targets, glue) = in_east.srv(d.dns, udp);
        assert_eq!(glue, set(&EAST), "SRV glue follows the site");
        let want: BTreeSet<(String, u16)> =
            EAST.iter().map(|ip| (ip6_target(ip, "sip.example.test"), sip_port)).collect();
        assert_eq!(targets, want);
        assert_eq!(in_west.srv(d.dns, udp).1, set(&WEST));
        // An SRV target's own name answers its address.
        let target = ip6_target(EAST[1], "sip.example.test");
        assert_eq!(elsewhere.addresses(d.dns, &target, RecordType::AAAA), set(&[EAST[1]]));
        // `dnlb status` shows each IPv6 server up, answered 200.
        let status = d.cli(&["status", "--json"]).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
        let servers = json["services"][0]["servers"].as_array().unwrap().clone();
        for ip in &all {
            let addr = format!("[{ip}]:{sip_port}");
            let s = servers.iter().find(|s| s["address"] == addr.as_str()).unwrap_or_else(|| panic!("{addr}: {json}"));
            assert_eq!((s["state"].as_str(), s["last_code"].as_u64()), (Some("up"), Some(200)), "{s}");
        }
        assert!(in_east.addresses(d.dns, service, RecordType::A).is_empty(), "no IPv4 server, no A record");
        // NAPTR (RFC 3263) is the same for every client: SIP+D2U only (UDP servers).
        for c in [&mut in_east, &mut in_west, &mut elsewhere] {
            let m = c.ask(d.dns, service, RecordType::NAPTR).expect("a NAPTR answer");
            let naptr: BTreeSet<(String, String)> = m
                .answers
                .iter()
                .filter_map(|r| match &r.data {
                    RData::NAPTR(n) => {
                        Some((String::from_utf8_lossy(&n.services).into_owned(), n.replacement.to_ascii()))
                    }
                    _ => None,
                })
                .collect();
            let want: BTreeSet<(String, String)> =
                [("SIP+D2U".to_string(), "_sip._udp.sip.example.test.".to_string())].into();
            assert_eq!(naptr, want);
        }
        let explain = d.cli(&["explain", "sip.example.test", "AAAA", "--client", "fd00:14::1:77"]).unwrap();
        let text = String::from_utf8_lossy(&explain.stdout);
        assert!(
            text.contains("client fd00:14::1:77 matches sites[0] (fd00:14::1:0/112): prefers east > west"),
            "{text}"
        );
        assert!(text.contains(&format!("server {} (#0) in: up on udp", EAST[0])), "{text}");
        assert!(text.contains(&format!("server {} (#2) not for this client: up on udp", WEST[0])), "{text}");
        let explain = d.cli(&["explain", "sip.example.test", "AAAA", "--client", "2001:db8::1"]).unwrap();
        assert!(String::from_utf8_lossy(&explain.stdout).contains("matches no [[sites]] prefix"));
    }
    // East goes silent: its clients move to west within interval × fall + timeout.
    for r in &east {
        r.set(Mode::Silent);
    }
    let silent = Instant::now();
    let bound = Duration::from_millis(interval * fall + timeout);
    for d in &dnlbs {
        until("east's clients to west", bound * 3, || {
            let e = in_east.addresses(d.dns, service, RecordType::AAAA);
            (e != set(&WEST)).then(|| format!("{e:?}"))
        });
        let took = silent.elapsed();
        println!("{}: east's IPv6 clients moved to west after {took:?} (bound {bound:?})", d.dns);
        assert!(took <= bound + Duration::from_millis(250), "moved after {took:?}, bound {bound:?}");
        assert_eq!(elsewhere.addresses(d.dns, service, RecordType::AAAA), set(&WEST));
    }
    // The operator's view of an IPv6 server that went out: `dnlb status --history`, the status
    // page and /status.json, all fetched over [::1], name it as `[address]:port` with its change.
    let gone = format!("[{}]:{sip_port}", EAST[0]);
    for (d, page) in dnlbs.iter().zip(&pages) {
        let text = String::from_utf8(d.cli(&["status", "--history"]).unwrap().stdout).unwrap();
        let at = text.find(&format!("  {gone} ")).unwrap_or_else(|| panic!("{gone}: {text}"));
        let block: Vec<&str> = text[at..].lines().take(3).collect();
        assert!(block[0].contains("udp  down") && block[0].contains("timeout"), "{text}");
        assert!(block[1..].iter().any(|l| l.contains("up -> down  timeout")), "{text}");
        assert!(block[1..].iter().any(|l| l.contains("unknown -> up  a final reply")), "{text}");
        let (status, body) = common::prom::http(*page, b"GET /status.json HTTP/1.1\r\n\r\n");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        let s = json["services"][0]["servers"].as_array().unwrap().iter().find(|s| s["address"] == gone.as_str());
        let s = s.unwrap_or_else(|| panic!("{status} {json}"));
        assert_eq!(
            (s["state"].as_str(), s["serving"].as_str(), s["site"].as_str()),
            (Some("down"), Some("out"), Some("east"))
        );
        let (status, html) = common::prom::http(*page, b"GET / HTTP/1.1\r\n\r\n");
        let row = html.lines().find(|l| l.starts_with(&format!("<tr id=\"sip.example.test/{gone}/udp\"")));
        let row = row.unwrap_or_else(|| panic!("{status}: {html}"));
        assert!(row.contains("data-serving=\"out\"") && row.contains(&format!("<td>{gone}</td>")), "{row}");
    }
    drop(dnlbs);
    drop(east);
}

/// One parser of the request grammar of RFC 3261 §25.1 (with the IPv6 references of RFC 5118,
/// as RFC 5954 corrects the `IPv6address` rule to RFC 3986's), written for this test alone: a
/// cursor over the bytes; every rule either consumes what it matches or reports why not.
mod grammar {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

    pub struct P<'a> {
        pub s: &'a [u8],
        pub i: usize,
    }

    pub type R<T> = Result<T, String>;

    /// A SIP or SIPS URI with an IP host, as read.
    #[derive(Debug)]
    pub struct Uri {
        pub scheme: String,
        pub user: Option<String>,
        pub host: SocketAddr,
        /// uri-parameters as (name, value).
        pub params: Vec<(String, String)>,
    }

    impl<'a> P<'a> {
        fn peek(&self) -> Option<u8> {
            self.s.get(self.i).copied()
        }

        fn fail<T>(&self, rule: &str) -> R<T> {
            let near = String::from_utf8_lossy(&self.s[self.i..(self.i + 20).min(self.s.len())]).into_owned();
            Err(format!("{rule} at byte {}: {near:?}", self.i))
        }

        pub fn lit(&mut self, text: &str) -> R<()> {
            if self.s[self.i..].starts_with(text.as_bytes()) {
                self.i += text.len();
                Ok(())
            } else {
                self.fail(&format!("expected {text:?}"))
            }
        }

        fn many(&mut self, ok: impl Fn(u8) -> bool) -> &'a [u8] {
            let start = self.i;
            while self.peek().is_some_and(&ok) {
                self.i += 1;
            }
            &self.s[start..self.i]
        }

        /// `token` (§25.1).
        pub fn token(&mut self) -> R<&'a [u8]> {
            let t = self.many(|b| b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b));
            if t.is_empty() {
                return self.fail("token");
            }
            Ok(t)
        }

        /// `user` of a URI: unreserved, escaped, user-unreserved.
        fn user(&mut self) -> R<&'a [u8]> {
            let t = self.many(|b| b.is_ascii_alphanumeric() || b"-_.!~*'()&=+$,;?/".contains(&b));
            if t.is_empty() {
                return self.fail("user");
            }
            Ok(t)
        }

        fn digits(&mut self, max: usize) -> R<u32> {
            let d = self.many(|b| b.is_ascii_digit());
            if d.is_empty() || d.len() > max {
                return self.fail("digits");
            }
            Ok(d.iter().fold(0u32, |n, x| n * 10 + u32::from(x - b'0')))
        }

        fn ipv4(&mut self) -> R<Ipv4Addr> {
            let mut o = [0u8; 4];
            for (k, octet) in o.iter_mut().enumerate() {
                if k > 0 {
                    self.lit(".")?;
                }
                let n = self.digits(3)?;
                *octet = u8::try_from(n).or_else(|_| self.fail("dec-octet"))?;
            }
            Ok(Ipv4Addr::from(o))
        }

        fn h16(&mut self) -> Option<u16> {
            let start = self.i;
            let h = self.many(|b| b.is_ascii_hexdigit());
            if h.is_empty() || h.len() > 4 {
                self.i = start;
                return None;
            }
            Some(h.iter().fold(0u16, |n, x| n * 16 + (*x as char).to_digit(16).unwrap() as u16))
        }

        /// h16 groups separated by single colons, ending in an IPv4 address (`ls32`, the last
        /// 32 bits: then the bool is true) or before `::` or anything else.
        fn groups(&mut self) -> (Vec<u16>, bool) {
            let mut out = Vec::new();
            loop {
                let at = self.i;
                let mut probe = P { s: self.s, i: at };
                if let Ok(v4) = probe.ipv4() {
                    if !probe.peek().is_some_and(|b| b == b':' || b.is_ascii_hexdigit()) {
                        let [a, b, c, d] = v4.octets();
                        out.push(u16::from_be_bytes([a, b]));
                        out.push(u16::from_be_bytes([c, d]));
                        self.i = probe.i;
                        return (out, true);
                    }
                }
                let Some(g) = self.h16() else {
                    self.i = at;
                    return (out, false);
                };
                out.push(g);
                if self.s[self.i..].starts_with(b"::") || self.peek() != Some(b':') {
                    return (out, false);
                }
                self.i += 1;
            }
        }

        /// `IPv6address` (RFC 3986 §3.2.2, which RFC 5954 puts into RFC 3261).
        pub fn ipv6(&mut self) -> R<Ipv6Addr> {
            let (head, ended) = self.groups();
            let mut all = head.clone();
            if self.s[self.i..].starts_with(b"::") {
                if ended {
                    return self.fail("IPv6address: an IPv4 part before ::");
                }
                self.i += 2;
                let (tail, _) = self.groups();
                if head.len() + tail.len() > 7 {
                    return self.fail("IPv6address: too many groups around ::");
                }
                all = head;
                all.resize(8 - tail.len(), 0);
                all.extend(tail);
            } else if head.len() != 8 {
                return self.fail("IPv6address: eight groups without ::");
            }
            let g: [u16; 8] = all.try_into().map_err(|_| "IPv6address".to_string())?;
            Ok(Ipv6Addr::from(g))
        }

        /// `hostport` whose host is an IP: `IPv4address` or `IPv6reference`, then `":" port`.
        pub fn hostport(&mut self) -> R<SocketAddr> {
            let ip = if self.peek() == Some(b'[') {
                self.i += 1;
                let ip = self.ipv6()?;
                self.lit("]")?;
                IpAddr::V6(ip)
            } else {
                IpAddr::V4(self.ipv4()?)
            };
            self.lit(":")?;
            let port = self.digits(5)?;
            Ok(SocketAddr::new(ip, u16::try_from(port).or_else(|_| self.fail("port"))?))
        }

        /// `SIP-URI` / `SIPS-URI` with an IP host: scheme, user if any, host and port, and the
        /// uri-parameters as (name, value).
        pub fn uri(&mut self) -> R<Uri> {
            let scheme = if self.lit("sips:").is_ok() {
                "sips"
            } else {
                self.lit("sip:")?;
                "sip"
            };
            let save = self.i;
            let user = match self.user() {
                Ok(u) if self.peek() == Some(b'@') => {
                    self.i += 1;
                    Some(String::from_utf8_lossy(u).into_owned())
                }
                _ => {
                    self.i = save;
                    None
                }
            };
            let host = self.hostport()?;
            let mut params = Vec::new();
            while self.peek() == Some(b';') {
                self.i += 1;
                let name = String::from_utf8_lossy(self.token()?).into_owned();
                let value = if self.peek() == Some(b'=') {
                    self.i += 1;
                    String::from_utf8_lossy(self.token()?).into_owned()
                } else {
                    String::new()
                };
                params.push((name, value));
            }
            Ok(Uri { scheme: scheme.to_string(), user, host, params })
        }

        /// `generic-param` list after a header value: `*( SEMI name [ EQUAL value ] )`.
        pub fn params(&mut self) -> R<Vec<(String, String)>> {
            let mut out = Vec::new();
            while self.peek() == Some(b';') {
                self.i += 1;
                let name = String::from_utf8_lossy(self.token()?).into_owned();
                let value = if self.peek() == Some(b'=') {
                    self.i += 1;
                    if self.peek() == Some(b'"') {
                        self.i += 1;
                        let v = self.many(|b| b != b'"' && b != b'\\' && b != b'\r');
                        let v = String::from_utf8_lossy(v).into_owned();
                        self.lit("\"")?;
                        v
                    } else {
                        String::from_utf8_lossy(self.token()?).into_owned()
                    }
                } else {
                    String::new()
                };
                out.push((name, value));
            }
            Ok(out)
        }

        /// `name-addr` without a display name: `< addr-spec >`.
        pub fn name_addr(&mut self) -> R<Uri> {
            self.lit("<")?;
            let uri = self.uri()?;
            self.lit(">")?;
            Ok(uri)
        }

        pub fn crlf(&mut self) -> R<()> {
            self.lit("\r\n")
        }

        pub fn at_end(&self) -> bool {
            self.i == self.s.len()
        }

        /// `callid = word [ "@" word ]`.
        pub fn callid(&mut self) -> R<String> {
            let word = |b: u8| b.is_ascii_alphanumeric() || b"-.!%*_+`'~()<>:\\\"/[]?{}".contains(&b);
            let mut id = String::from_utf8_lossy(self.many(word)).into_owned();
            if self.peek() == Some(b'@') {
                self.i += 1;
                id.push('@');
                id.push_str(&String::from_utf8_lossy(self.many(word)));
            }
            if id.is_empty() {
                return self.fail("callid");
            }
            Ok(id)
        }

        /// A header line `name ": " value CRLF`, value as bytes (the rest of the line).
        pub fn header_line(&mut self) -> R<(String, &'a [u8])> {
            let name = String::from_utf8_lossy(self.token()?).into_owned();
            self.lit(": ")?;
            let value = self.many(|b| b != b'\r');
            self.crlf()?;
            Ok((name, value))
        }
    }
}

/// What the grammar read of a probe request.
#[derive(Debug)]
struct Parsed {
    method: String,
    ruri: grammar::Uri,
    via_transport: String,
    sent_by: SocketAddr,
    via_params: Vec<(String, String)>,
    from: grammar::Uri,
    from_params: Vec<(String, String)>,
    to: grammar::Uri,
    to_params: Vec<(String, String)>,
    call_id: String,
    cseq: (u32, String),
    headers: Vec<String>,
}

fn parse_request(bytes: &[u8]) -> Result<Parsed, String> {
    use grammar::P;
    let mut p = P { s: bytes, i: 0 };
    let method = String::from_utf8_lossy(p.token()?).into_owned();
    p.lit(" ")?;
    let ruri = p.uri()?;
    p.lit(" SIP/2.0")?;
    p.crlf()?;
    let (mut via, mut from, mut to, mut call_id, mut cseq) = (None, None, None, None, None);
    let mut headers = Vec::new();
    while !bytes[p.i..].starts_with(b"\r\n") {
        let (name, value) = p.header_line()?;
        let mut v = P { s: value, i: 0 };
        let whole = |v: &P| if v.at_end() { Ok(()) } else { Err(format!("{name}: trailing {:?}", &value[v.i..])) };
        match name.as_str() {
            "Via" => {
                v.lit("SIP/2.0/")?;
                let transport = String::from_utf8_lossy(v.token()?).into_owned();
                v.lit(" ")?;
                let sent_by = v.hostport()?;
                let params = v.params()?;
                whole(&v)?;
                via = Some((transport, sent_by, params));
            }
            "From" | "To" => {
                let uri = v.name_addr()?;
                let params = v.params()?;
                whole(&v)?;
                if name == "From" {
                    from = Some((uri, params))
                } else {
                    to = Some((uri, params))
                }
            }
            "Call-ID" => {
                call_id = Some(v.callid()?);
                whole(&v)?;
            }
            "CSeq" => {
                let digits = v.token()?;
                let n: u32 = std::str::from_utf8(digits).unwrap().parse().map_err(|e| format!("CSeq: {e}"))?;
                v.lit(" ")?;
                cseq = Some((n, String::from_utf8_lossy(v.token()?).into_owned()));
                whole(&v)?;
            }
            "Max-Forwards" | "Content-Length" | "Expires" => {
                let digits = v.token()?;
                if !digits.iter().all(u8::is_ascii_digit) {
                    return Err(format!("{name}: not digits"));
                }
                whole(&v)?;
            }
            _ => {}
        }
        headers.push(name);
    }
    p.crlf()?;
    if !p.at_end() {
        return Err("bytes after the blank line of a request with Content-Length: 0".into());
    }
    let (via_transport, sent_by, via_params) = via.ok_or("no Via")?;
    let (from, from_params) = from.ok_or("no From")?;
    let (to, to_params) = to.ok_or("no To")?;
    Ok(Parsed {
        method,
        ruri,
        via_transport,
        sent_by,
        via_params,
        from,
        from_params,
        to,
        to_params,
        call_id: call_id.ok_or("no Call-ID")?,
        cseq: cseq.ok_or("no CSeq")?,
        headers,
    })
}

/// A server address the prober takes: IPv4 or IPv6 (with runs of zero groups, so `::` appears
/// in every position), not link-local, mapped, multicast or unspecified; any port but 0.
fn target() -> impl Strategy<Value = SocketAddr> {
    let v6 = (any::<[u16; 8]>(), any::<u8>()).prop_map(|(mut g, zeros)| {
        for (i, x) in g.iter_mut().enumerate() {
            if zeros & (1 << i) != 0 {
                *x = 0;
            }
        }
        IpAddr::V6(Ipv6Addr::from(g))
    });
    let v4 = any::<[u8; 4]>().prop_map(|o| IpAddr::V4(Ipv4Addr::from(o)));
    (prop_oneof![v4, v6], 1..=u16::MAX)
        .prop_map(|(ip, port)| SocketAddr::new(ip, port))
        .prop_filter("a probe target", |t| dnlb::probe::sip::check_target(*t).is_ok())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// Every request the prober renders reads, under the RFC grammar, as what it means: the
    /// server in the request line and in From and To, the transport's scheme and Via token,
    /// the socket's own address as the Via sent-by, and the probe's identity in its places.
    #[test]
    fn probe_requests_read_as_rfc_3261_and_5118_write_them(
        target in target(), port in 1..=u16::MAX, words in any::<[u64; 5]>(), cseq in any::<u32>(),
        transport in prop::sample::select(Transport::ALL.to_vec()), register in any::<bool>(), local in any::<[u16; 8]>(),
    ) {
        let method = if register { ProbeMethod::Register } else { ProbeMethod::Options };
        let id = ProbeId::new(words, cseq, method);
        // The socket's address has the target's family.
        let local = match target {
            SocketAddr::V4(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::from(u32::from(local[0]) << 16 | u32::from(local[1]))), port),
            SocketAddr::V6(_) => SocketAddr::new(IpAddr::V6(Ipv6Addr::from(local)), port),
        };
        let mut out = Vec::new();
        RequestTemplate::new(method, target, transport).unwrap().render(&id, local, &mut out);
        let p = parse_request(&out).map_err(|e| TestCaseError::fail(format!("{e}\n{}", String::from_utf8_lossy(&out))))?;
        let scheme = if transport == Transport::Tls { "sips" } else { "sip" };
        let name = if register { "REGISTER" } else { "OPTIONS" };
        prop_assert_eq!(&p.method, name);
        prop_assert_eq!((&p.ruri.scheme[..], &p.ruri.user, p.ruri.host), (scheme, &None, target));
        let transport_param: Vec<(String, String)> =
            if transport == Transport::Tcp { vec![("transport".into(), "tcp".into())] } else { vec![] };
        prop_assert_eq!(&p.ruri.params, &transport_param);
        prop_assert_eq!(p.via_transport.as_str(), ["UDP", "TCP", "TLS"][[Transport::Udp, Transport::Tcp, Transport::Tls].iter().position(|t| *t == transport).unwrap()]);
        prop_assert_eq!(p.sent_by, local);
        prop_assert_eq!(&p.via_params[0], &("branch".to_string(), id.branch.clone()));
        prop_assert!(id.branch.starts_with("z9hG4bK"));
        for aor in [&p.from, &p.to] {
            prop_assert_eq!((&aor.scheme[..], aor.user.as_deref(), aor.host, aor.params.len()), (scheme, Some("dnlb-probe"), target, 0));
        }
        prop_assert_eq!(&p.from_params, &vec![("tag".to_string(), id.from_tag.clone())]);
        prop_assert!(p.to_params.is_empty(), "a request's To has no tag");
        prop_assert_eq!(&p.call_id, &id.call_id);
        prop_assert_eq!(&p.cseq, &(cseq, name.to_string()));
        for required in ["Via", "Max-Forwards", "From", "To", "Call-ID", "CSeq", "Content-Length"] {
            prop_assert!(p.headers.iter().any(|h| h == required), "{} missing", required);
        }
    }
}

/// The grammar above is a real check: it refuses what rsip used to send, and the malformed
/// references a careless writer produces.
#[test]
fn the_test_grammar_refuses_broken_requests() {
    let id = ProbeId::new([1, 2, 3, 4, 5], 123_456_789, ProbeMethod::Options);
    let good = dnlb::probe::sip::request(
        &id,
        "[2001:db8::10]:5060".parse().unwrap(),
        Transport::Udp,
        "[2001:db8::1]:4000".parse().unwrap(),
    )
    .unwrap();
    let good = String::from_utf8(good).unwrap();
    assert!(parse_request(good.as_bytes()).is_ok());
    for (from, to) in [
        ("OPTIONS sip:[2001:db8::10]:5060 ", "OPTIONS 127.0.0.1 "),
        ("sip:[2001:db8::10]:5060 SIP", "sip:2001:db8::10:5060 SIP"),
        ("UDP [2001:db8::1]:4000", "UDP 2001:db8::1:4000"),
        ("@[2001:db8::10]:5060>;tag", "@[2001:db8::10:5060>;tag"),
        ("@[2001:db8::10]:5060>;tag", "@[2001:db8:::10]:5060>;tag"),
        ("@[2001:db8::10]:5060>\r\nCall", "@[1:2:3:4:5:6:7:8:9]:5060>\r\nCall"),
        ("@[2001:db8::10]:5060>\r\nCall", "@[1::2::3]:5060>\r\nCall"),
        ("@[2001:db8::10]:5060>\r\nCall", "@[12345::1]:5060>\r\nCall"),
    ] {
        let bad = good.replacen(from, to, 1);
        assert_ne!(bad, good, "{from}");
        assert!(parse_request(bad.as_bytes()).is_err(), "accepted: {bad}");
    }
    for ok in ["::", "::1", "1::", "1:2:3:4:5:6:7:8", "::ffff:1.2.3.4", "1::2:3.4.5.6", "1:2:3:4:5:6:1.2.3.4"] {
        let mut p = grammar::P { s: ok.as_bytes(), i: 0 };
        assert_eq!(p.ipv6().ok(), ok.parse().ok(), "{ok}");
        assert!(p.at_end(), "{ok}");
    }
}

/// Sends `request` to `to` over UDP or TCP from `socket`'s side and reads one final reply.
fn exchange(to: SocketAddr, transport: Transport, request: &dyn Fn(SocketAddr) -> Vec<u8>) -> Option<Vec<u8>> {
    let limit = Duration::from_millis(500);
    if transport == Transport::Udp {
        let s = UdpSocket::bind(SocketAddr::new(
            if to.is_ipv4() { Ipv4Addr::UNSPECIFIED.into() } else { Ipv6Addr::UNSPECIFIED.into() },
            0,
        ))
        .ok()?;
        s.connect(to).ok()?;
        s.set_read_timeout(Some(limit)).ok()?;
        s.send(&request(s.local_addr().ok()?)).ok()?;
        let mut buf = vec![0u8; 65_536];
        let n = s.recv(&mut buf).ok()?;
        return Some(buf[..n].to_vec());
    }
    let mut s = TcpStream::connect_timeout(&to, limit).ok()?;
    s.set_read_timeout(Some(limit)).ok()?;
    s.write_all(&request(s.local_addr().ok()?)).ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Frame::Complete(len) = frame(&buf, 0) {
            return Some(buf[..len].to_vec());
        }
        let n = s.read(&mut chunk).ok().filter(|&n| n > 0)?;
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Several IPv6 servers (addresses added to lo) and an IPv4 one, each its own port, UDP and
/// TCP, OPTIONS and REGISTER, random identities: kamailio answers every probe request 200
/// (well-formed, addressed to itself) and the reply matches its probe. The old request line, and
/// a request for another server, get kamailio's 400 and 404: the check can fail.
#[test]
fn kamailio_answers_200_to_the_probes_for_several_ipv6_servers() {
    if !require(have("kamailio") && modules_with("sanity.so").is_some(), "kamailio with its sanity module") {
        return;
    }
    let v6 = ["fd00:14::31", "fd00:14::32", "fd00:14::33"];
    let Some(_lo) = LoAddresses::add(&v6) else { return };
    let servers: Vec<SocketAddr> = v6
        .iter()
        .chain(&["::1", "127.0.1.31"])
        .map(|ip| {
            let ip: IpAddr = ip.parse().unwrap();
            SocketAddr::new(ip, free_port_on(ip))
        })
        .collect();
    let listens: Vec<String> = servers.iter().flat_map(|s| [format!("udp:{s}"), format!("tcp:{s}")]).collect();
    let k = Kamailio::start("several", &listens, None);
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut random = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    // kamailio's start-up: the first exchange may need a few tries.
    let first = servers[0];
    until("kamailio answering", Duration::from_secs(10), || {
        let t = RequestTemplate::new(ProbeMethod::Options, first, Transport::Udp).unwrap();
        let id = ProbeId::new([1, 2, 3, 4, 5], 100_000_000, ProbeMethod::Options);
        let render = |local| {
            let mut out = Vec::new();
            t.render(&id, local, &mut out);
            out
        };
        exchange(first, Transport::Udp, &render).is_none().then(|| k.stderr())
    });
    let mut n = 0;
    for &server in &servers {
        for transport in [Transport::Udp, Transport::Tcp] {
            for method in [ProbeMethod::Options, ProbeMethod::Register] {
                let template = RequestTemplate::new(method, server, transport).unwrap();
                for _ in 0..4 {
                    let words = [random(), random(), random(), random(), random()];
                    let cseq = 100_000_000 + (random() % 900_000_000) as u32;
                    let id = ProbeId::new(words, cseq, method);
                    let render = |local| {
                        let mut out = Vec::new();
                        template.render(&id, local, &mut out);
                        out
                    };
                    let reply = exchange(server, transport, &render)
                        .unwrap_or_else(|| panic!("no reply from {server} over {transport:?}\n{}", k.stderr()));
                    assert_eq!(
                        check_reply(&reply, &id),
                        Ok(Reply::Final { code: 200, retry_after: None }),
                        "{server} {transport:?} {method:?}:\n{}",
                        String::from_utf8_lossy(&reply)
                    );
                    n += 1;
                }
            }
        }
    }
    println!("kamailio answered 200 to {n} probe requests for {} servers", servers.len());
    // The request line rsip used to write for an IPv6 server, and a request for another server.
    let id = ProbeId::new([9, 9, 9, 9, 9], 100_000_000, ProbeMethod::Options);
    let right = RequestTemplate::new(ProbeMethod::Options, servers[1], Transport::Udp).unwrap();
    let old = |local| {
        let mut out = Vec::new();
        right.render(&id, local, &mut out);
        let text = String::from_utf8(out).unwrap();
        text.replacen(&format!("sip:{}", servers[1]), "127.0.0.1", 1).into_bytes()
    };
    let reply = exchange(servers[1], Transport::Udp, &old).expect("a reply to the old request line");
    assert!(reply.starts_with(b"SIP/2.0 400 "), "{}", String::from_utf8_lossy(&reply));
    let elsewhere_addr = SocketAddr::new(servers[1].ip(), servers[1].port() ^ 1);
    let elsewhere = RequestTemplate::new(ProbeMethod::Options, elsewhere_addr, Transport::Udp).unwrap();
    let other = |local| {
        let mut out = Vec::new();
        elsewhere.render(&id, local, &mut out);
        out
    };
    let reply = exchange(servers[1], Transport::Udp, &other).expect("a reply to a request for another server");
    assert!(reply.starts_with(b"SIP/2.0 404 "), "{}", String::from_utf8_lossy(&reply));
}

/// check-config and a reload refuse link-local and IPv4-mapped servers, naming the field and why;
/// the running answers stay.
#[test]
fn link_local_and_ipv4_mapped_servers_are_refused_at_load_and_reload() {
    let sip = SipResponder::start(
        SocketAddr::new("::1".parse().unwrap(), free_port_on("::1".parse().unwrap())),
        Mode::Reply(200, None),
    );
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("dnlb-ipv6-reload-{}-{port}", std::process::id()));
    let good = format!(
        "[server]\nlisten = [\"127.0.0.1:{port}\"]\nworkers = 1\npin_workers = false\nruntime_dir = \"{}\"\n\
         [probe]\ninterval_ms = 200\ntimeout_ms = 100\n\
         [[service]]\nname = \"sip.example.test\"\n[[service.server]]\naddress = \"::1\"\nport = {}\n",
        dir.join("run").display(),
        sip.addr.port()
    );
    let d = Dnlb::spawn(dir.clone(), &good);
    d.wait_for_control();
    let mut client = Client::bind("127.0.0.1");
    until("::1 up", Duration::from_secs(5), || {
        let a = client.addresses(d.dns, "sip.example.test.", RecordType::AAAA);
        (a != set(&["::1"])).then(|| format!("{a:?}\n{}", d.stderr()))
    });
    for (address, want) in [
        ("fe80::1%lo", "service[0].server[1].address: `fe80::1%lo`: fe80::1 is an IPv6 link-local address: it reaches a host only with a zone"),
        ("fe80::1", "service[0].server[1].address: fe80::1 is an IPv6 link-local address: it reaches a host only with a zone (`fe80::1%eth0`), and an AAAA or SRV answer cannot carry a zone to a phone"),
        ("::ffff:192.0.2.10", "service[0].server[1].address: ::ffff:192.0.2.10 is an IPv4-mapped IPv6 address: write the IPv4 form \"192.0.2.10\""),
        ("2001:db8::10%eth0", "service[0].server[1].address: `2001:db8::10%eth0` carries a zone (`%eth0`), which an AAAA or SRV answer cannot carry to a phone: write \"2001:db8::10\""),
    ] {
        let bad = format!("{good}[[service.server]]\naddress = \"{address}\"\n");
        std::fs::write(&d.config, &bad).unwrap();
        let check = Command::new(env!("CARGO_BIN_EXE_dnlb")).arg("check-config").arg(&d.config).output().unwrap();
        let out = String::from_utf8_lossy(&check.stdout).into_owned() + &String::from_utf8_lossy(&check.stderr);
        assert!(!check.status.success() && out.contains(want), "check-config {address}: {out}");
        assert!(out.contains(":15:11: "), "line and column of the address: {out}");
        let reload = d.cli(&["reload"]).unwrap();
        let out = String::from_utf8_lossy(&reload.stdout).into_owned() + &String::from_utf8_lossy(&reload.stderr);
        assert!(!reload.status.success() && out.contains(want), "reload {address}: {out}");
    }
    assert_eq!(
        client.addresses(d.dns, "sip.example.test.", RecordType::AAAA),
        set(&["::1"]),
        "the running answers stay"
    );
    drop(d);
    let _cleanup = std::fs::remove_dir_all(&dir);
}

/// Forged replies to IPv6 probes never count: a wrong identity (branch, Call-ID, tag, CSeq
/// number, method), the true reply from another port of the server's address, or from another
/// address on the server's port. The probe's connected socket compares the source as an address
/// (the kernel's binary compare: `[fd00:14::45]:P` is not `[fd00:14::44]:P`), the parser the rest.
/// Also: two spellings of one IPv6 address are one server.
#[test]
fn forged_and_misdirected_replies_to_ipv6_probes_never_count() {
    let twice = "[server]\nlisten = [\"127.0.0.1:5353\"]\n[[service]]\nname = \"s.test\"\n\
                 [[service.server]]\naddress = \"::1\"\n[[service.server]]\naddress = \"0:0:0::0:1\"\n";
    let problems = Config::parse(twice).unwrap_err();
    assert!(problems.iter().any(|p| p.message.contains("::1 port 5060 is listed twice")), "{problems:?}");

    let ips = ["fd00:14::41", "fd00:14::42", "fd00:14::43", "fd00:14::44", "fd00:14::45"];
    let Some(_lo) = LoAddresses::add(&ips) else { return };
    let port = common::sip::common_port(&ips);
    let at = |ip: &str| SocketAddr::new(ip.parse().unwrap(), port);
    let _honest = SipResponder::start(at(ips[0]), Mode::Reply(200, None));
    let forger = SipResponder::start(at(ips[1]), Mode::Forge { count: 5, then_answer: false });
    let wrong_port = SipResponder::start(at(ips[2]), Mode::WrongSource);
    // Receives on ::44, answers truly from ::45, same port.
    let inbox = UdpSocket::bind(at(ips[3])).unwrap();
    let outbox = UdpSocket::bind(at(ips[4])).unwrap();
    inbox.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let misdirected = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (s, m) = (stop.clone(), misdirected.clone());
    let other_address = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let started = Instant::now();
        while !s.load(std::sync::atomic::Ordering::Relaxed) && started.elapsed() < Duration::from_secs(10) {
            let Ok((n, from)) = inbox.recv_from(&mut buf) else { continue };
            let reply = common::sip::reply(&String::from_utf8_lossy(&buf[..n]), "200 OK", "");
            if outbox.send_to(reply.as_bytes(), from).is_ok() {
                m.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    });
    let mut text = format!(
        "[server]\nlisten = [\"[::1]:{}\"]\nworkers = 1\n[probe]\ninterval_ms = 200\ntimeout_ms = 100\n\
         [[service]]\nname = \"sip.example.test\"\nall_down = \"nodata\"\n",
        free_port_on("::1".parse().unwrap())
    );
    for ip in &ips[..4] {
        text.push_str(&format!("[[service.server]]\naddress = \"{ip}\"\nport = {port}\n"));
    }
    let dns = TestServer::start(&text, dnlb::config::IoMode::Portable);
    let prober = Prober::spawn(dns.config.clone(), dns.snapshots.clone()).unwrap();
    let mut client = Client::bind("::1");
    until("only the honest server", Duration::from_secs(3), || {
        let a = client.addresses(dns.addr, "sip.example.test.", RecordType::AAAA);
        (a != set(&ips[..1])).then(|| format!("{a:?}"))
    });
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(client.addresses(dns.addr, "sip.example.test.", RecordType::AAAA), set(&ips[..1]));
    let ignored = prober.status().ignored.load(std::sync::atomic::Ordering::Relaxed);
    let (forged, wrong, elsewhere) = (
        forger.forged.load(std::sync::atomic::Ordering::Relaxed),
        wrong_port.forged.load(std::sync::atomic::Ordering::Relaxed),
        misdirected.load(std::sync::atomic::Ordering::Relaxed),
    );
    println!("{forged} forged, {wrong} from another port, {elsewhere} from another address: none counted; {ignored} ignored by the parser");
    assert!(forged >= 20 && wrong >= 4 && elsewhere >= 4, "the forgers were probed");
    assert!(ignored >= 20, "the forged identities reached the prober and were ignored: {ignored}");
    prober.shutdown().unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    other_address.join().unwrap();
}
