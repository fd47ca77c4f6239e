//! A service with `[service.authority]` asked directly, over real loopback UDP (both I/O backends)
//! and TCP: every section of every kind of reply checked against RFC 1034 §4.3.2 and RFC 2308
//! (AA, the SOA in the authority section of NXDOMAIN and NODATA with MINIMUM = its TTL, glue only
//! for in-zone names, empty non-terminals, the resolver-mode protocol checks unchanged).

mod common;

use std::net::{IpAddr, TcpStream};
use std::time::Duration;

use common::*;
use dnlb::snapshot::{Serving, Snapshot};
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, Record, RecordType};

const NEGATIVE_TTL: u32 = 120;
const NS_TTL: u32 = 7200;
const VOICE_TTL: u32 = 7;

/// The zone `sip.example.test` with two name servers (one inside, with glue), a server whose
/// `host` is outside the zone and one whose `host` is deeper inside, a service inside the zone
/// without an authority of its own, and a hosts-file name inside it.
fn config(port: u16, hosts: &std::path::Path) -> String {
    format!(
        r#"[server]
listen = ["127.0.0.1:{port}"]
workers = 2

[[service]]
name = "sip.example.test"
[service.authority]
ns = ["ns1.sip.example.test", "dnlb2.example.net"]
serial = 42
negative_ttl = {NEGATIVE_TTL}
ns_ttl = {NS_TTL}
glue = [{{ name = "ns1.sip.example.test", addresses = ["192.0.2.53", "2001:db8::53"] }}]
[[service.server]]
address = "127.0.0.11"
transports = ["udp", "tcp"]
[[service.server]]
address = "127.0.0.12"
host = "sbc.example.net"
[[service.server]]
address = "127.0.0.13"
host = "edge.sub.sip.example.test"

[[service]]
name = "voice.sip.example.test"
ttl = {VOICE_TTL}
all_down = "nodata"
[[service.server]]
address = "127.0.0.21"

[hosts]
file = "{}"
"#,
        hosts.display()
    )
}

/// What a reply must look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// NOERROR with this many answers of the question's type, nothing in the authority section.
    Data(usize),
    /// NOERROR, no answer, the zone's SOA in the authority section with this MINIMUM.
    NoData(u32),
    /// NXDOMAIN, the zone's SOA in the authority section with this MINIMUM.
    NxDomain(u32),
}

/// Checks every section of `m`, the reply to `name`/`qtype`, against `kind`; returns the
/// additional records other than the OPT.
fn check(m: &Message, name: &str, qtype: RecordType, kind: Kind, how: &str) -> Vec<Record> {
    let what = format!("{how}: {name} {qtype}");
    assert!(m.metadata.authoritative, "{what}: AA on everything in the zone: {m:?}");
    assert!(!m.metadata.recursion_available && !m.metadata.truncation, "{what}: {m:?}");
    assert_eq!(m.queries.len(), 1, "{what}");
    let owner = hickory_proto::rr::Name::from_ascii(name).unwrap();
    match kind {
        Kind::Data(n) => {
            assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{what}: {m:?}");
            assert_eq!(m.answers.len(), n, "{what}: {m:?}");
            assert!(m.answers.iter().all(|r| r.record_type() == qtype && r.name == owner), "{what}: {m:?}");
            assert!(m.authorities.is_empty(), "{what}: positive answers carry no authority section: {m:?}");
        }
        Kind::NoData(minimum) | Kind::NxDomain(minimum) => {
            let rcode = if matches!(kind, Kind::NoData(_)) { ResponseCode::NoError } else { ResponseCode::NXDomain };
            assert_eq!(m.metadata.response_code, rcode, "{what}: {m:?}");
            assert!(m.answers.is_empty(), "{what}: {m:?}");
            assert_eq!(m.authorities.len(), 1, "{what}: exactly the SOA (RFC 2308 §2): {m:?}");
            let soa = &m.authorities[0];
            assert_eq!(soa.name.to_ascii(), "sip.example.test.", "{what}: the SOA is the zone apex's");
            match &soa.data {
                RData::SOA(s) => {
                    assert_eq!(
                        (s.mname.to_ascii(), s.rname.to_ascii(), s.serial, s.minimum),
                        ("ns1.sip.example.test.".into(), "hostmaster.sip.example.test.".into(), 42, minimum),
                        "{what}"
                    );
                    assert_eq!(soa.ttl, minimum, "{what}: the SOA's TTL is its MINIMUM (RFC 2308 §3)");
                }
                other => panic!("{what}: not an SOA: {other:?}"),
            }
            assert!(
                m.additionals.iter().all(|r| r.record_type() == RecordType::OPT),
                "{what}: nothing additional: {m:?}"
            );
        }
    }
    m.additionals.iter().filter(|r| r.record_type() != RecordType::OPT).cloned().collect()
}

fn address(r: &Record) -> Option<IpAddr> {
    match &r.data {
        RData::A(a) => Some(IpAddr::V4(a.0)),
        RData::AAAA(a) => Some(IpAddr::V6(a.0)),
        _ => None,
    }
}

/// A question, the reply it must get and the (owner, address) records of its additional section.
type Case = (&'static str, RecordType, Kind, Vec<(&'static str, &'static str)>);

/// Every question and the reply it must get.
fn cases() -> Vec<Case> {
    let none = Vec::new;
    vec![
        ("sip.example.test.", RecordType::SOA, Kind::Data(1), none()),
        // Glue only for the name server inside the zone, both families.
        (
            "sip.example.test.",
            RecordType::NS,
            Kind::Data(2),
            vec![("ns1.sip.example.test.", "192.0.2.53"), ("ns1.sip.example.test.", "2001:db8::53")],
        ),
        ("sip.example.test.", RecordType::A, Kind::Data(3), none()),
        ("sip.example.test.", RecordType::NAPTR, Kind::Data(2), none()),
        // No IPv6 server: NODATA that follows from the configuration, so the negative TTL.
        ("sip.example.test.", RecordType::AAAA, Kind::NoData(NEGATIVE_TTL), none()),
        ("sip.example.test.", RecordType::TXT, Kind::NoData(NEGATIVE_TTL), none()),
        ("sip.example.test.", RecordType::DS, Kind::NoData(NEGATIVE_TTL), none()),
        // The SRV set brings the address of its in-zone targets only (sbc.example.net: none).
        (
            "_sip._udp.sip.example.test.",
            RecordType::SRV,
            Kind::Data(3),
            vec![("ip-127-0-0-11.sip.example.test.", "127.0.0.11"), ("edge.sub.sip.example.test.", "127.0.0.13")],
        ),
        ("_sip._udp.sip.example.test.", RecordType::A, Kind::NoData(NEGATIVE_TTL), none()),
        // Empty non-terminals exist (RFC 8020): NODATA, never NXDOMAIN.
        ("_udp.sip.example.test.", RecordType::A, Kind::NoData(NEGATIVE_TTL), none()),
        ("_tcp.sip.example.test.", RecordType::SRV, Kind::NoData(NEGATIVE_TTL), none()),
        ("sub.sip.example.test.", RecordType::A, Kind::NoData(NEGATIVE_TTL), none()),
        ("edge.sub.sip.example.test.", RecordType::A, Kind::Data(1), none()),
        ("ip-127-0-0-11.sip.example.test.", RecordType::A, Kind::Data(1), none()),
        ("ip-127-0-0-11.sip.example.test.", RecordType::AAAA, Kind::NoData(NEGATIVE_TTL), none()),
        ("ns1.sip.example.test.", RecordType::A, Kind::Data(1), none()),
        ("ns1.sip.example.test.", RecordType::AAAA, Kind::Data(1), none()),
        ("ns1.sip.example.test.", RecordType::MX, Kind::NoData(NEGATIVE_TTL), none()),
        // A hosts-file name inside the zone is part of it.
        ("proxy.sip.example.test.", RecordType::A, Kind::Data(1), none()),
        ("proxy.sip.example.test.", RecordType::AAAA, Kind::NoData(NEGATIVE_TTL), none()),
        // A service inside the zone, without an authority of its own, is part of it.
        ("voice.sip.example.test.", RecordType::A, Kind::Data(1), none()),
        ("voice.sip.example.test.", RecordType::SOA, Kind::NoData(NEGATIVE_TTL), none()),
        // Names the zone does not have, at any depth, in any letter case.
        ("nonexist.sip.example.test.", RecordType::A, Kind::NxDomain(NEGATIVE_TTL), none()),
        ("NonExist.SIP.example.TEST.", RecordType::SRV, Kind::NxDomain(NEGATIVE_TTL), none()),
        ("a.b.c.d.sip.example.test.", RecordType::AAAA, Kind::NxDomain(NEGATIVE_TTL), none()),
        ("x.ip-127-0-0-11.sip.example.test.", RecordType::A, Kind::NxDomain(NEGATIVE_TTL), none()),
        ("_sip._sctp.sip.example.test.", RecordType::SRV, Kind::NxDomain(NEGATIVE_TTL), none()),
        ("dnlb2.sip.example.test.", RecordType::A, Kind::NxDomain(NEGATIVE_TTL), none()),
    ]
}

fn with_hosts<T>(f: impl FnOnce(&std::path::Path) -> T) -> T {
    let dir =
        std::env::temp_dir().join(format!("dnlb-authority-{}-{:?}", std::process::id(), std::thread::current().id()));
    std::fs::create_dir_all(&dir).unwrap();
    let hosts = dir.join("hosts");
    std::fs::write(&hosts, "192.0.2.80 proxy.sip.example.test\n").unwrap();
    let out = f(&hosts);
    let _cleanup = std::fs::remove_dir_all(&dir);
    out
}

fn check_additional(extra: &[Record], want: &[(&str, &str)], what: &str) {
    let mut got: Vec<(String, IpAddr)> = extra.iter().filter_map(|r| Some((r.name.to_ascii(), address(r)?))).collect();
    let mut want: Vec<(String, IpAddr)> = want.iter().map(|(n, a)| (n.to_string(), a.parse().unwrap())).collect();
    got.sort();
    want.sort();
    assert_eq!(got, want, "{what}: additional section");
    assert_eq!(got.len(), extra.len(), "{what}: nothing but addresses in the additional section");
}

#[test]
fn every_section_of_every_reply_in_the_zone_follows_rfc_1034_and_2308() {
    with_hosts(|hosts| {
        for io in backends() {
            let t = TestServer::start(&config(free_port(), hosts), io);
            let mut tcp = TcpStream::connect(t.addr).unwrap();
            tcp.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            for (i, (name, qtype, kind, glue)) in cases().into_iter().enumerate() {
                for edns in [None, Some(1232)] {
                    let q = query(name, qtype, i as u16, edns);
                    let udp = udp_query(t.addr, &q);
                    let extra = check(&udp, name, qtype, kind, &format!("{io:?} UDP edns {edns:?}"));
                    check_additional(&extra, &glue, &format!("{io:?} UDP {name} {qtype}"));
                    assert_eq!(udp.edns.is_some(), edns.is_some());
                    let reply = Message::from_vec(&tcp_exchange(&mut tcp, &[q])[0]).unwrap();
                    let extra = check(&reply, name, qtype, kind, &format!("{io:?} TCP edns {edns:?}"));
                    check_additional(&extra, &glue, &format!("{io:?} TCP {name} {qtype}"));
                }
            }
            // The NS records and their glue carry ns_ttl; the apex's SOA answer its MINIMUM.
            let ns = udp_query(t.addr, &query("sip.example.test.", RecordType::NS, 1, None));
            assert!(ns.answers.iter().chain(&ns.additionals).all(|r| r.ttl == NS_TTL), "{ns:?}");
            let soa = udp_query(t.addr, &query("sip.example.test.", RecordType::SOA, 1, None));
            assert_eq!(soa.answers[0].ttl, NEGATIVE_TTL);
            let totals = t.server.as_ref().unwrap().totals();
            assert!(totals.nxdomain > 0 && totals.refused == 0, "{io:?}: {totals}");
        }
    });
}

#[test]
fn negatives_from_health_carry_the_answer_ttl_and_the_zone_is_never_relayed() {
    with_hosts(|hosts| {
        for io in backends() {
            let t = TestServer::start(&config(free_port(), hosts), io);
            // Every server of the voice service down, all_down = "nodata": NODATA from health,
            // MINIMUM the answer TTL; its AAAA (no IPv6 server) still the negative TTL's.
            let mut health = Serving::all_up(&t.config);
            health.up[1][0].clear();
            // The zone's own farm loses its only TCP server: the TCP SRV set falls back to every
            // configured server (serve-all), still a positive answer.
            health.up[0][0] = vec![dnlb::config::Transport::Udp];
            t.snapshots.publish(Snapshot::build(&t.config, &health, 0).unwrap());
            let m = udp_query(t.addr, &query("voice.sip.example.test.", RecordType::A, 1, None));
            check(&m, "voice.sip.example.test.", RecordType::A, Kind::NoData(VOICE_TTL), &format!("{io:?}"));
            let m = udp_query(t.addr, &query("voice.sip.example.test.", RecordType::NAPTR, 2, None));
            check(&m, "voice.sip.example.test.", RecordType::NAPTR, Kind::NoData(VOICE_TTL), &format!("{io:?}"));
            let m = udp_query(t.addr, &query("voice.sip.example.test.", RecordType::AAAA, 3, None));
            check(&m, "voice.sip.example.test.", RecordType::AAAA, Kind::NoData(NEGATIVE_TTL), &format!("{io:?}"));
            let m = udp_query(t.addr, &query("_sip._tcp.sip.example.test.", RecordType::SRV, 4, None));
            check(&m, "_sip._tcp.sip.example.test.", RecordType::SRV, Kind::Data(1), &format!("{io:?}"));

            // No zone transfers: each instance answers from its own configuration.
            let mut tcp = TcpStream::connect(t.addr).unwrap();
            tcp.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            for qtype in [RecordType::AXFR, RecordType::IXFR] {
                let m = Message::from_vec(&tcp_exchange(&mut tcp, &[query("sip.example.test.", qtype, 9, None)])[0])
                    .unwrap();
                assert_eq!((m.metadata.response_code, m.answers.len()), (ResponseCode::Refused, 0), "{io:?} {qtype}");
            }

            // Another class for a name of the zone: REFUSED (the zone is IN), never relayed.
            let mut q = query("nonexist.sip.example.test.", RecordType::A, 5, None);
            let n = q.len();
            q[n - 1] = 3; // CH
            let m = udp_query(t.addr, &q);
            assert_eq!((m.metadata.response_code, m.metadata.authoritative), (ResponseCode::Refused, false));
            // A name outside every zone: as in resolver mode (REFUSED without a relay).
            let m = udp_query(t.addr, &query("example.test.", RecordType::SOA, 6, None));
            assert_eq!((m.metadata.response_code, m.metadata.authoritative), (ResponseCode::Refused, false));
            let m = udp_query(t.addr, &query("xsip.example.test.", RecordType::A, 7, None));
            assert_eq!(m.metadata.response_code, ResponseCode::Refused, "a suffix that is not a label boundary");
        }
    });
}

#[test]
fn names_in_the_zone_are_answered_not_relayed() {
    // A relay whose upstream would answer anything: a name in the zone still gets NXDOMAIN from
    // dnlb, one outside it goes upstream.
    let upstream = common::upstream::FakeUpstream::start(common::upstream::Behaviour::ForgeThenAnswer {
        forged: 0,
        calm: u64::MAX,
    });
    with_hosts(|hosts| {
        let text = format!("{}\n[relay]\nupstreams = [\"{}\"]\n", config(free_port(), hosts), upstream.addr);
        let t = TestServer::start(&text, dnlb::config::IoMode::Portable);
        let m = udp_query(t.addr, &query("nonexist.sip.example.test.", RecordType::A, 1, None));
        check(&m, "nonexist.sip.example.test.", RecordType::A, Kind::NxDomain(NEGATIVE_TTL), "relay");
        let m = udp_query(t.addr, &query("_udp.sip.example.test.", RecordType::A, 2, None));
        check(&m, "_udp.sip.example.test.", RecordType::A, Kind::NoData(NEGATIVE_TTL), "relay");
        assert_eq!(upstream.queries.load(std::sync::atomic::Ordering::Relaxed), 0, "nothing of the zone relayed");
        let m = udp_query(t.addr, &query("www.example.org.", RecordType::A, 3, None));
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "outside the zone: relayed");
        assert_eq!(upstream.queries.load(std::sync::atomic::Ordering::Relaxed), 1);
    });
}
