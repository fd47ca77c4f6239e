//! dnlb as the authority of a delegated zone, behind a real resolver. nsd serves the parent zone
//! `example.test` and delegates `sip.example.test` to dnlb (NS `ns1.sip.example.test`, glue
//! 127.0.6.2, port 53, as a resolver following glue asks); unbound resolves for the phones, with
//! a stub zone for `example.test` at nsd. Every question is asked of unbound, as a phone would.
//!
//! ```text
//!  phone (this test) ──► unbound 127.0.6.3:53 ──stub──► nsd 127.0.6.1:53 (example.test)
//!                              │ referral: sip NS ns1.sip, ns1.sip A 127.0.6.2
//!                              └──────────────► dnlb 127.0.6.2:53 (sip.example.test) ◄── probes ── SIP 127.0.6.11-12
//! ```

mod common;

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::resolver::{unbound_binary, Unbound};
use common::sip::{common_port, Mode, SipResponder};
use common::upstream::Nsd;
use common::*;
use dnlb::config::IoMode;
use dnlb::probe::Prober;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};

const NSD: &str = "127.0.6.1";
const DNLB: &str = "127.0.6.2";
const UNBOUND: &str = "127.0.6.3";
const SIP: [&str; 2] = ["127.0.6.11", "127.0.6.12"];
/// The zone's negative TTL: short, so the test sees a cached negative answer expire.
const NEGATIVE_TTL: u64 = 3;
const INTERVAL_MS: u64 = 200;
const TIMEOUT_MS: u64 = 100;
const FALL: u64 = 2;
const SERIAL: u32 = 2_026_120_801;

/// The parent zone: its own apex, and the delegation of `sip` to dnlb with in-zone glue.
fn parent_zone() -> String {
    format!(
        "$ORIGIN example.test.\n$TTL 3600\n@ IN SOA ns hostmaster 1 3600 600 86400 60\n@ IN NS ns\nns IN A {NSD}\n\
         sip IN NS ns1.sip\nns1.sip IN A {DNLB}\n"
    )
}

fn dnlb_config(sip_port: u16) -> String {
    let mut text = format!(
        "[server]\nlisten = [\"{DNLB}:53\"]\nworkers = 1\n\n[probe]\ninterval_ms = {INTERVAL_MS}\ntimeout_ms = {TIMEOUT_MS}\nfall = {FALL}\nrise = 2\n\n\
         [[service]]\nname = \"sip.example.test\"\n[service.authority]\nns = [\"ns1.sip.example.test\"]\n\
         hostmaster = \"hostmaster@example.test\"\nserial = {SERIAL}\nnegative_ttl = {NEGATIVE_TTL}\n\
         glue = [{{ name = \"ns1.sip.example.test\", addresses = [\"{DNLB}\"] }}]\n"
    );
    for ip in SIP {
        text.push_str(&format!("[[service.server]]\naddress = \"{ip}\"\nport = {sip_port}\n"));
    }
    text
}

/// Whether this process may bind port 53 on dnlb's address (root, or CAP_NET_BIND_SERVICE).
fn may_bind_53() -> bool {
    match UdpSocket::bind((DNLB, 53)) {
        Ok(_) => true,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => false,
        Err(e) => panic!("{DNLB}:53 cannot be bound ({e}): is a server of an earlier run still there?"),
    }
}

/// A phone's question to unbound.
fn ask(name: &str, qtype: RecordType) -> Message {
    let resolver: SocketAddr = format!("{UNBOUND}:53").parse().unwrap();
    let raw = udp_raw(resolver, &query(name, qtype, 7, Some(1232)), Duration::from_secs(5))
        .unwrap_or_else(|| panic!("unbound gave no answer to {name} {qtype} within 5 s"));
    Message::from_vec(&raw).unwrap()
}

fn addresses(m: &Message) -> BTreeSet<IpAddr> {
    common::process::a_records(m).into_iter().collect()
}

/// The SOA in a reply's authority section, with its TTL.
fn authority_soa(m: &Message) -> Option<(u32, hickory_proto::rr::rdata::SOA)> {
    m.authorities.iter().find_map(|r| match &r.data {
        RData::SOA(s) => Some((r.ttl, s.clone())),
        _ => None,
    })
}

/// dnlb's query count once unbound has stopped asking it (no change for 150 ms).
fn quiet(t: &TestServer) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = t.server.as_ref().unwrap().totals().queries;
    loop {
        std::thread::sleep(Duration::from_millis(150));
        let now = t.server.as_ref().unwrap().totals().queries;
        if now == last {
            return now;
        }
        assert!(Instant::now() < deadline, "unbound kept asking dnlb for 5 s");
        last = now;
    }
}

#[test]
fn a_delegated_zone_resolves_through_unbound_with_cached_negatives_and_failover() {
    let nsd = std::path::Path::new("/usr/sbin/nsd").exists() || have("nsd");
    if !require(nsd, "nsd (package nsd)")
        || !require(unbound_binary().is_some(), "unbound (package unbound)")
        || !require(may_bind_53(), "binding port 53 on 127.0.6.2 (root or CAP_NET_BIND_SERVICE)")
    {
        return;
    }
    let started = Instant::now();
    // Declaration order is the reverse of drop order: unbound and nsd go first, then the prober,
    // dnlb, and the SIP servers last.
    let sip_port = common_port(&SIP);
    let responders: Vec<SipResponder> = SIP
        .iter()
        .map(|ip| SipResponder::start(SocketAddr::new(ip.parse().unwrap(), sip_port), Mode::Reply(200, None)))
        .collect();
    let dns = TestServer::start(&dnlb_config(sip_port), IoMode::Auto);
    let prober = Prober::spawn(dns.config.clone(), dns.snapshots.clone()).unwrap();
    settle(&prober, Duration::from_secs(5));
    let _nsd = Nsd::serve(format!("{NSD}:53").parse().unwrap(), "example.test", &parent_zone());
    let _unbound =
        Unbound::start(format!("{UNBOUND}:53").parse().unwrap(), "example.test", format!("{NSD}:53").parse().unwrap());
    let farm: BTreeSet<IpAddr> = SIP.iter().map(|ip| ip.parse().unwrap()).collect();

    // A: the healthy farm, with the answer TTL (one probe interval, rounded up to a second).
    let a = ask("sip.example.test.", RecordType::A);
    assert_eq!(a.metadata.response_code, ResponseCode::NoError, "{a:?}");
    assert_eq!(addresses(&a), farm);
    assert!(a.answers.iter().all(|r| r.ttl <= 1), "{a:?}");

    // SRV and NAPTR (RFC 3263), and an SRV target's address.
    let srv = ask("_sip._udp.sip.example.test.", RecordType::SRV);
    let mut targets: Vec<(u16, String)> = srv
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(s) => Some((s.port, s.target.to_ascii())),
            _ => None,
        })
        .collect();
    targets.sort();
    let expected: Vec<(u16, String)> =
        SIP.iter().map(|ip| (sip_port, format!("ip-{}.sip.example.test.", ip.replace('.', "-")))).collect();
    assert_eq!(targets, expected, "{srv:?}");
    let naptr = ask("sip.example.test.", RecordType::NAPTR);
    let naptrs: Vec<(String, String)> = naptr
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::NAPTR(n) => Some((String::from_utf8_lossy(&n.services).into_owned(), n.replacement.to_ascii())),
            _ => None,
        })
        .collect();
    assert_eq!(naptrs, vec![("SIP+D2U".to_string(), "_sip._udp.sip.example.test.".to_string())], "{naptr:?}");
    let target = ask("ip-127-0-6-11.sip.example.test.", RecordType::A);
    assert_eq!(addresses(&target), BTreeSet::from(["127.0.6.11".parse::<IpAddr>().unwrap()]), "{target:?}");

    // SOA and NS at the apex, as dnlb is configured.
    let soa = ask("sip.example.test.", RecordType::SOA);
    let found: Vec<_> = soa
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::SOA(s) => Some((s.mname.to_ascii(), s.rname.to_ascii(), s.serial, s.minimum)),
            _ => None,
        })
        .collect();
    assert_eq!(
        found,
        vec![("ns1.sip.example.test.".into(), "hostmaster.example.test.".into(), SERIAL, NEGATIVE_TTL as u32)],
        "{soa:?}"
    );
    let ns = ask("sip.example.test.", RecordType::NS);
    let names: Vec<String> = ns
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::NS(n) => Some(n.0.to_ascii()),
            _ => None,
        })
        .collect();
    assert_eq!(names, vec!["ns1.sip.example.test.".to_string()], "{ns:?}");

    // AAAA of a v4-only farm: NODATA with the SOA, cached by unbound for the SOA's MINIMUM.
    let first_aaaa = Instant::now();
    let aaaa = ask("sip.example.test.", RecordType::AAAA);
    assert_eq!((aaaa.metadata.response_code, aaaa.answers.len()), (ResponseCode::NoError, 0), "{aaaa:?}");
    let (ttl, soa) = authority_soa(&aaaa).unwrap_or_else(|| panic!("NODATA without an SOA: {aaaa:?}"));
    assert!(u64::from(ttl) <= NEGATIVE_TTL && u64::from(soa.minimum) == NEGATIVE_TTL, "{aaaa:?}");
    let before = quiet(&dns);
    let again = ask("sip.example.test.", RecordType::AAAA);
    assert_eq!((again.metadata.response_code, again.answers.len()), (ResponseCode::NoError, 0));
    assert_eq!(quiet(&dns), before, "the second AAAA came from unbound's negative cache, not from dnlb");
    // unbound keeps time in whole seconds and serves an entry through its last one (TTL 0).
    let expiry = first_aaaa + Duration::from_millis(NEGATIVE_TTL * 1000 + 1300);
    std::thread::sleep(expiry.saturating_duration_since(Instant::now()));
    let before = quiet(&dns);
    let expired = ask("sip.example.test.", RecordType::AAAA);
    assert_eq!(expired.answers.len(), 0);
    assert!(
        quiet(&dns) > before,
        "after the negative TTL unbound asks dnlb again: {expired:?} at {:?}",
        first_aaaa.elapsed()
    );

    // A name dnlb does not know under the zone: NXDOMAIN with the SOA, cached too.
    let nx = ask("nonexist.sip.example.test.", RecordType::A);
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain, "{nx:?}");
    assert!(authority_soa(&nx).is_some(), "NXDOMAIN without an SOA: {nx:?}");
    let before = quiet(&dns);
    assert_eq!(ask("nonexist.sip.example.test.", RecordType::A).metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(quiet(&dns), before, "the second NXDOMAIN came from unbound's cache");

    // A server dies (stops answering): unbound's answers follow within interval × fall +
    // timeout + TTL.
    responders[1].set(Mode::Silent);
    let died = Instant::now();
    let bound = Duration::from_millis(INTERVAL_MS * FALL + TIMEOUT_MS + 1000);
    let left = loop {
        let now = addresses(&ask("sip.example.test.", RecordType::A));
        if now == BTreeSet::from([SIP[0].parse::<IpAddr>().unwrap()]) {
            break died.elapsed();
        }
        // Margin for polling and a loaded machine; the figure is printed.
        assert!(died.elapsed() < bound + Duration::from_secs(1), "still {now:?} after {:?}", died.elapsed());
        std::thread::sleep(Duration::from_millis(20));
    };
    println!("failover through unbound: {left:?} (interval × fall + timeout + TTL = {bound:?})");
    assert!(left <= bound + Duration::from_millis(500), "{left:?} > {bound:?}");

    let totals = dns.server.as_ref().unwrap().totals();
    assert_eq!((totals.refused, totals.servfail), (0, 0), "dnlb refused or failed a question of unbound's: {totals}");
    println!("delegation test: {:?}, dnlb answered {} queries of unbound's", started.elapsed(), totals.queries);
    drop(prober);
}
