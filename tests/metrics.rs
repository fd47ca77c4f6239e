//! The Prometheus endpoint over real loopback HTTP: what a scrape shows after real queries and
//! probes, checked by a Prometheus text parser (and by `promtool check metrics` where installed);
//! a silenced SIP server's `up` gauge going to 0 in time; garbage requests answered, not fatal.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::prom::{has, http, promtool_check, scrape, sum};
use common::sip::{common_port, Mode, SipResponder};
use common::upstream::{Behaviour, FakeUpstream};
use common::*;
use dnlb::config::{Config, IoMode};
use dnlb::control::metrics::{MetricsServer, Sources, MAX_REQUEST};
use dnlb::control::running::{Running as RunningState, RunningView};
use dnlb::probe::Prober;
use hickory_proto::rr::RecordType;

/// Interval 200 ms, timeout 100 ms, fall 2: a silent server is down within 500 ms.
const FAST: &str = "interval_ms = 200\ntimeout_ms = 100\nretransmit_ms = 30\nrise = 1\nfall = 2";

/// Field order is drop order: the endpoint and the prober stop before the responders close.
struct Running {
    metrics: MetricsServer,
    prober: Prober,
    dns: TestServer,
    responders: Vec<SipResponder>,
}

/// A DNS server with two SIP servers on 127.0.0.41 and .42, a fast prober and the endpoint.
fn start() -> Running {
    let ips = ["127.0.0.41", "127.0.0.42"];
    let sip_port = common_port(&ips);
    let responders: Vec<_> = ips
        .iter()
        .map(|ip| SipResponder::start(SocketAddr::new(ip.parse().unwrap(), sip_port), Mode::Reply(200, None)))
        .collect();
    let mut text = format!(
        "[server]\nlisten = [\"127.0.0.1:{}\"]\nworkers = 2\n\n[probe]\n{FAST}\n\n[metrics]\nlisten = \"127.0.0.1:0\"\n\n[[service]]\nname = \"sip.example.test\"\n",
        free_port()
    );
    for ip in ips {
        text.push_str(&format!("[[service.server]]\naddress = \"{ip}\"\nport = {sip_port}\n"));
    }
    let dns = TestServer::start(&text, IoMode::Portable);
    let prober = Prober::spawn(dns.config.clone(), dns.snapshots.clone()).unwrap();
    settle(&prober, Duration::from_secs(5));
    let listen = dns.config.metrics.as_ref().expect("[metrics] configured").listen;
    let sources = Sources {
        counters: dns.server.as_ref().unwrap().counters(),
        running: RunningView::new(RunningState::new(std::sync::Arc::new(dns.config.clone()), Some(&prober))),
        snapshots: dns.snapshots.clone(),
    };
    let metrics = MetricsServer::start(listen, sources).unwrap();
    Running { metrics, prober, dns, responders }
}

#[test]
fn a_scrape_counts_queries_and_reports_every_server() {
    let r = start();
    let addr = r.metrics.local_addr();
    for id in 0..5 {
        udp_query(r.dns.addr, &query("sip.example.test.", RecordType::A, id, None));
    }
    for id in 5..7 {
        udp_query(r.dns.addr, &query("_sip._udp.sip.example.test.", RecordType::SRV, id, None));
    }
    let (text, s) = scrape(addr);
    assert_eq!(sum(&s, "dnlb_queries_total", &[]), 7.0, "{text}");
    assert_eq!(sum(&s, "dnlb_queries_by_qtype_total", &[("qtype", "address")]), 5.0, "{text}");
    assert_eq!(sum(&s, "dnlb_queries_by_qtype_total", &[("qtype", "srv")]), 2.0, "{text}");
    assert_eq!(sum(&s, "dnlb_responses_total", &[("rcode", "NOERROR")]), 7.0, "{text}");
    // Two workers, each with its own series: an uneven SO_REUSEPORT spread shows.
    assert!(has(&s, "dnlb_queries_total", &[("worker", "0")]) && has(&s, "dnlb_queries_total", &[("worker", "1")]));
    for server in &r.responders {
        let l = [("service", "sip.example.test"), ("server", &*server.addr.to_string()), ("transport", "udp")];
        assert_eq!(sum(&s, "dnlb_sip_server_up", &l), 1.0, "{text}");
        assert_eq!(sum(&s, "dnlb_sip_server_last_code", &l), 200.0, "{text}");
        assert!(has(&s, "dnlb_sip_server_rtt_seconds", &l), "{text}");
    }
    assert!(sum(&s, "dnlb_probes_sent_total", &[]) >= 2.0, "{text}");
    assert!(sum(&s, "dnlb_snapshot_generation", &[]) >= 2.0, "the prober published: {text}");
    assert!(sum(&s, "dnlb_prober_heartbeat_age_seconds", &[]) < 1.0, "{text}");
    assert_eq!(sum(&s, "dnlb_build_info", &[("version", env!("CARGO_PKG_VERSION"))]), 1.0, "{text}");
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let name = line.split(['{', ' ']).next().unwrap_or("");
        assert!(name.starts_with("dnlb_"), "not a dnlb metric: {line}");
    }
    promtool_check(&text);
    drop(r.prober);
}

#[test]
fn a_silenced_server_shows_up_0_within_interval_times_fall_plus_timeout() {
    let r = start();
    let addr = r.metrics.local_addr();
    let victim = &r.responders[0];
    let l = [("service", "sip.example.test"), ("server", &*victim.addr.to_string()), ("transport", "udp")];
    assert_eq!(sum(&scrape(addr).1, "dnlb_sip_server_up", &l), 1.0);
    victim.set(Mode::Silent);
    let start = Instant::now();
    // interval × fall + timeout = 500 ms; the margin covers a loaded test host.
    let bound = Duration::from_millis(200 * 2 + 100);
    let limit = bound + Duration::from_millis(1500);
    let down = loop {
        let (text, s) = scrape(addr);
        if sum(&s, "dnlb_sip_server_up", &l) == 0.0 {
            assert!(sum(&s, "dnlb_sip_server_flips_total", &l) >= 1.0, "{text}");
            break start.elapsed();
        }
        assert!(start.elapsed() < limit, "still up after {limit:?}:\n{text}");
        std::thread::sleep(Duration::from_millis(10));
    };
    println!("silenced server scraped as up 0 after {down:?} (bound {bound:?})");
    let other = [("server", &*r.responders[1].addr.to_string())];
    assert_eq!(sum(&scrape(addr).1, "dnlb_sip_server_up", &other), 1.0, "the other server stays up");
}

#[test]
fn relay_counters_and_cache_gauges_reach_the_scrape() {
    let upstream = FakeUpstream::start(Behaviour::ForgeThenAnswer { forged: 3, calm: 0 });
    let text = format!(
        "[server]\nlisten = [\"127.0.0.1:{}\"]\nworkers = 1\n\n[relay]\nupstreams = [\"{}\"]\ntimeout_ms = 300\n",
        free_port(),
        upstream.addr
    );
    let dns = TestServer::start(&text, IoMode::Portable);
    let sources = Sources {
        counters: dns.server.as_ref().unwrap().counters(),
        running: RunningView::new(RunningState::new(std::sync::Arc::new(dns.config.clone()), None)),
        snapshots: dns.snapshots.clone(),
    };
    let metrics = MetricsServer::start("127.0.0.1:0".parse().unwrap(), sources).unwrap();
    // One worker: the second query finds the first one's answer in the same cache.
    for id in 0..2 {
        let reply = udp_query(dns.addr, &query("www.relay.test.", RecordType::A, id, None));
        assert_eq!(reply.answers.len(), 1, "{reply:?}");
    }
    // The worker publishes its relay's counters after each wake-up: wait for them.
    let start = Instant::now();
    loop {
        let (text, s) = scrape(metrics.local_addr());
        let seen = (
            sum(&s, "dnlb_relay_cache_misses_total", &[]),
            sum(&s, "dnlb_relay_cache_hits_total", &[]),
            sum(&s, "dnlb_relay_cache_entries", &[]),
            sum(&s, "dnlb_relay_upstream_queries_total", &[]),
        );
        if seen == (1.0, 1.0, 1.0, 1.0) {
            assert!(sum(&s, "dnlb_relay_cache_bytes", &[]) > 0.0, "{text}");
            assert_eq!(sum(&s, "dnlb_relay_pending", &[]), 0.0, "{text}");
            let refused = sum(&s, "dnlb_relay_events_total", &[("event", "forged")])
                + sum(&s, "dnlb_relay_events_total", &[("event", "case_mismatch")]);
            assert!(refused >= 1.0, "forged replies counted: {text}");
            assert!(!has(&s, "dnlb_sip_server_up", &[]), "no prober, no server gauges: {text}");
            promtool_check(&text);
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(3), "(misses, hits, entries, upstream) = {seen:?}\n{text}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn garbage_requests_are_answered_and_the_endpoint_keeps_serving() {
    let r = start();
    let addr = r.metrics.local_addr();
    assert_eq!(http(addr, b"GET /index.html HTTP/1.1\r\n\r\n").0, 404);
    assert_eq!(http(addr, b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n").0, 405);
    assert_eq!(http(addr, b"GET /metrics/x HTTP/1.0\r\n\r\n").0, 404);
    assert_eq!(http(addr, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n").0, 405);
    assert_eq!(http(addr, b"\x00\x01\x02\xff\xfe\r\n\r\n").0, 400);
    assert_eq!(http(addr, b"GET /metrics HTTP/9.9\r\n\r\n").0, 400);
    let (status, body) = http(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n");
    assert_eq!((status, body.as_str()), (200, ""), "HEAD: headers only");
    // Headers past the bound: refused without reading on.
    let mut huge = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
    huge.resize(MAX_REQUEST + 100, b'a');
    assert_eq!(http(addr, &huge).0, 431);
    // Connections that close at once or half-way.
    drop(TcpStream::connect(addr).unwrap());
    TcpStream::connect(addr).unwrap().write_all(b"GET /met").unwrap();
    // A client that sends half a request and waits: served a timeout, not forever; the next
    // scrape still comes (after at most REQUEST_TIME).
    let mut slow = TcpStream::connect(addr).unwrap();
    slow.write_all(b"GET /metrics HTTP/1.1\r\n").unwrap();
    let (_, s) = scrape(addr);
    assert!(has(&s, "dnlb_build_info", &[]), "the endpoint still serves");
    drop(slow);
    drop(r.prober);
}

#[test]
fn metrics_are_off_without_the_section_and_a_bad_address_names_the_field() {
    let base = "[server]\nlisten = [\"127.0.0.1:5353\"]\n";
    assert_eq!(Config::parse(base).unwrap().metrics, None);
    let on = Config::parse(&format!("{base}[metrics]\nlisten = \"127.0.0.1:9153\"\n")).unwrap();
    assert_eq!(on.metrics.unwrap().listen, "127.0.0.1:9153".parse().unwrap());
    let problems = Config::parse(&format!("{base}[metrics]\nlisten = \"localhost\"\n")).unwrap_err();
    assert!(problems.iter().any(|p| p.field == "metrics.listen" && p.line == 4), "{problems:?}");
    let problems = Config::parse(&format!("{base}[metrics]\nlisten = \"127.0.0.1:9153\"\nport = 1\n")).unwrap_err();
    assert!(problems.iter().any(|p| p.field == "port"), "{problems:?}");
}
