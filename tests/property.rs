//! Property test: random valid queries → dnlb's answer path → the reply parsed with hickory-proto.

use crossbeam_utils::CachePadded;
use dnlb::config::Config;
use dnlb::counters::{CounterBlocks, WorkerCounters};
use dnlb::dns::answer::DnsTransport;
use dnlb::snapshot::{Serving, Snapshot, SnapshotHandle};
use dnlb::worker::Responder;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use proptest::prelude::*;

const CONFIG: &str = r#"
[server]
listen = ["127.0.0.1:5353"]
[[service]]
name = "sip.example.test"
[[service.server]]
address = "127.0.0.11"
transports = ["udp", "tcp", "tls"]
[[service.server]]
address = "2001:db8::12"
transports = ["udp"]
[[service]]
name = "voice.example.test"
policy = "on-duty"
[[service.server]]
address = "192.0.2.1"
[[service.server]]
address = "192.0.2.2"
"#;

const MANAGED: &[&str] = &[
    "sip.example.test.",
    "_sip._udp.sip.example.test.",
    "_sip._tcp.sip.example.test.",
    "_sips._tcp.sip.example.test.",
    "ip-127-0-0-11.sip.example.test.",
    "voice.example.test.",
];

fn responder() -> Responder {
    let config = Config::parse(CONFIG).unwrap();
    let snapshot = Snapshot::build(&config, &Serving::all_up(&config), 0).unwrap();
    let counters: CounterBlocks = (0..1).map(|_| CachePadded::new(WorkerCounters::default())).collect();
    Responder::new(SnapshotHandle::new(snapshot), counters, 0)
}

/// Flips the case of letters where `mask` has a bit set (0x20 randomisation).
fn mix_case(name: &str, mask: u64) -> String {
    name.chars().enumerate().map(|(i, c)| if mask >> (i % 64) & 1 == 1 { c.to_ascii_uppercase() } else { c }).collect()
}

fn name_strategy() -> impl Strategy<Value = (String, bool)> {
    prop_oneof![
        (0..MANAGED.len(), any::<u64>()).prop_map(|(i, m)| (mix_case(MANAGED[i], m), true)),
        proptest::collection::vec("[a-z0-9_][a-z0-9_-]{0,19}", 0..5).prop_map(|labels| {
            let mut n = labels.join(".");
            n.push('.');
            (if n == "." { n } else { format!("{n}other.test.") }, false)
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]
    #[test]
    fn replies_parse_and_match_the_question(
        (name, managed) in name_strategy(),
        qtype in prop_oneof![Just(1u16), Just(28), Just(33), Just(35), Just(16), Just(255), any::<u16>()],
        id in any::<u16>(),
        rd in any::<bool>(),
        edns in proptest::option::of(0u16..=u16::MAX),
        tcp in any::<bool>(),
    ) {
        let mut q = Message::new(id, MessageType::Query, OpCode::Query);
        q.metadata.recursion_desired = rd;
        q.add_query(Query::query(Name::from_ascii(&name).unwrap(), RecordType::from(qtype)));
        if let Some(size) = edns {
            let mut e = Edns::new();
            e.set_max_payload(size);
            q.edns = Some(e);
        }
        let packet = q.to_vec().unwrap();
        let mut r = responder();
        let transport = if tcp { DnsTransport::Tcp } else { DnsTransport::Udp { max_payload: 1232 } };
        let mut out = vec![0u8; 65_535];
        let n = r.respond(&packet, transport, &mut out);
        // OPT (41) and meta types in a question are still answered: NODATA or REFUSED.
        prop_assert!(n >= 12);
        let limit = match (tcp, edns) { (true, _) => 65_535, (false, None) => 512, (false, Some(s)) => s.clamp(512, 1232) as usize };
        prop_assert!(n <= limit, "reply of {} bytes over the {} limit", n, limit);
        let reply = Message::from_vec(&out[..n]).unwrap();
        prop_assert_eq!(reply.metadata.id, id);
        prop_assert_eq!(reply.metadata.message_type, MessageType::Response);
        prop_assert_eq!(reply.metadata.recursion_desired, rd);
        prop_assert_eq!(reply.edns.is_some(), edns.is_some());
        let question_len = 12 + packet[12..].iter().position(|&b| b == 0).unwrap() + 1 + 4;
        prop_assert_eq!(&out[12..question_len], &packet[12..question_len], "question echoed byte for byte");
        let expected = if managed { ResponseCode::NoError } else { ResponseCode::Refused };
        prop_assert_eq!(reply.metadata.response_code, expected);
        prop_assert_eq!(reply.metadata.authoritative, managed);
        let asked = Name::from_ascii(&name).unwrap();
        for record in &reply.answers {
            prop_assert_eq!(&record.name, &asked, "answers are owned by the name asked (compared case-insensitively)");
        }
    }
}

/// A round-robin or weighted farm of `k` IPv4 servers with the `down` ones unhealthy.
fn farm(k: usize, down: &[bool], weighted: bool) -> (Responder, Vec<std::net::IpAddr>) {
    let policy = if weighted { "weighted" } else { "round-robin" };
    let mut text = format!(
        "[server]\nlisten = [\"127.0.0.1:5353\"]\n[[service]]\nname = \"sip.example.test\"\npolicy = \"{policy}\"\n"
    );
    for i in 0..k {
        text.push_str(&format!("[[service.server]]\naddress = \"10.0.{}.{}\"\n", i / 200, i % 200 + 1));
    }
    let config = Config::parse(&text).unwrap();
    let mut health = Serving::all_up(&config);
    for (i, up) in health.up[0].iter_mut().enumerate() {
        if down[i] {
            up.clear();
        }
    }
    let mut healthy: Vec<std::net::IpAddr> =
        config.services[0].servers.iter().enumerate().filter(|(i, _)| !down[*i]).map(|(_, s)| s.address).collect();
    if healthy.is_empty() {
        // The default all-down policy, serve-all.
        healthy = config.services[0].servers.iter().map(|s| s.address).collect();
    }
    let snapshot = Snapshot::build(&config, &health, 0).unwrap();
    let counters: CounterBlocks = (0..1).map(|_| CachePadded::new(WorkerCounters::default())).collect();
    (Responder::new(SnapshotHandle::new(snapshot), counters, 0), healthy)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    /// Every A reply of a farm (up to 400 servers, some down) carries healthy servers only, as
    /// many as fit the client's payload size (never TC), and one rotation puts every healthy
    /// server first.
    #[test]
    fn address_windows_carry_as_many_healthy_servers_as_fit(
        k in 1usize..400,
        down in proptest::collection::vec(proptest::bool::weighted(0.3), 400),
        edns in proptest::option::of(0u16..=u16::MAX),
        tcp in any::<bool>(),
        weighted in any::<bool>(),
    ) {
        let (mut r, healthy) = farm(k, &down, weighted);
        let mut q = Message::new(7, MessageType::Query, OpCode::Query);
        q.add_query(Query::query(Name::from_ascii("sip.example.test.").unwrap(), RecordType::A));
        if let Some(size) = edns {
            let mut e = Edns::new();
            e.set_max_payload(size);
            q.edns = Some(e);
        }
        let packet = q.to_vec().unwrap();
        let q_end = 12 + "sip.example.test.".len() + 1 + 4;
        let limit = match (tcp, edns) { (true, _) => 65_535, (false, None) => 512, (false, Some(s)) => s.clamp(512, 1232) as usize };
        let opt = if edns.is_some() { 11 } else { 0 };
        let fit = ((limit - q_end - opt) / 16).min(healthy.len());
        let transport = if tcp { DnsTransport::Tcp } else { DnsTransport::Udp { max_payload: 1232 } };
        let mut out = vec![0u8; 65_535];
        let mut firsts = std::collections::BTreeSet::new();
        for _ in 0..healthy.len() {
            let n = r.respond(&packet, transport, &mut out);
            prop_assert!(n <= limit);
            let reply = Message::from_vec(&out[..n]).unwrap();
            prop_assert!(!reply.metadata.truncation);
            let got: Vec<std::net::IpAddr> = reply.answers.iter().map(|a| match &a.data {
                hickory_proto::rr::RData::A(a) => std::net::IpAddr::V4(a.0),
                other => panic!("{other:?}"),
            }).collect();
            prop_assert_eq!(got.len(), fit);
            let distinct: std::collections::BTreeSet<_> = got.iter().collect();
            prop_assert_eq!(distinct.len(), got.len(), "no server twice in one answer");
            for a in &got {
                prop_assert!(healthy.contains(a), "{} is not healthy", a);
            }
            firsts.insert(got[0]);
        }
        prop_assert_eq!(firsts.len(), healthy.len(), "one rotation puts every healthy server first");
    }
}

/// The property configuration with `sip.example.test` as a zone apex.
fn zone_responder() -> Responder {
    let text = CONFIG.replacen(
        "name = \"sip.example.test\"\n",
        "name = \"sip.example.test\"\n[service.authority]\nns = [\"ns1.sip.example.test\"]\nglue = [{ name = \"ns1.sip.example.test\", addresses = [\"192.0.2.53\"] }]\n",
        1,
    );
    let config = Config::parse(&text).unwrap();
    let snapshot = Snapshot::build(&config, &Serving::all_up(&config), 0).unwrap();
    let counters: CounterBlocks = (0..1).map(|_| CachePadded::new(WorkerCounters::default())).collect();
    Responder::new(SnapshotHandle::new(snapshot), counters, 0)
}

/// The names that exist in the zone: the configured ones and the empty non-terminals above them.
const ZONE_NAMES: &[&str] = &[
    "sip.example.test.",
    "_sip._udp.sip.example.test.",
    "_sip._tcp.sip.example.test.",
    "_sips._tcp.sip.example.test.",
    "_udp.sip.example.test.",
    "_tcp.sip.example.test.",
    "ip-127-0-0-11.sip.example.test.",
    "ip6-20010db8000000000000000000000012.sip.example.test.",
    "ns1.sip.example.test.",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    /// Any name under a zone apex, any type: AA; NXDOMAIN exactly when the name does not exist
    /// (its suffixes that exist are not enough); every reply without an answer carries exactly the
    /// zone's SOA, with its MINIMUM as TTL; the reply fits the transport.
    #[test]
    fn every_name_under_a_zone_gets_an_authoritative_answer(
        labels in proptest::collection::vec(prop_oneof![
            Just("_udp".to_string()), Just("_sip".to_string()), Just("ns1".to_string()),
            Just("ip-127-0-0-11".to_string()), "[a-z0-9_][a-z0-9_-]{0,11}",
        ], 0..4),
        mask in any::<u64>(),
        qtype in prop_oneof![Just(1u16), Just(2), Just(6), Just(28), Just(33), Just(35), Just(16), any::<u16>()],
        tcp in any::<bool>(),
        edns in proptest::option::of(0u16..=u16::MAX),
    ) {
        let mut name = labels.join(".");
        name.push_str(if name.is_empty() { "sip.example.test." } else { ".sip.example.test." });
        let exists = ZONE_NAMES.contains(&name.as_str());
        let mut q = Message::new(9, MessageType::Query, OpCode::Query);
        q.add_query(Query::query(Name::from_ascii(mix_case(&name, mask)).unwrap(), RecordType::from(qtype)));
        if let Some(size) = edns {
            let mut e = Edns::new();
            e.set_max_payload(size);
            q.edns = Some(e);
        }
        let packet = q.to_vec().unwrap();
        let transport = if tcp { DnsTransport::Tcp } else { DnsTransport::Udp { max_payload: 1232 } };
        let mut out = vec![0u8; 65_535];
        let n = zone_responder().respond(&packet, transport, &mut out);
        let limit = match (tcp, edns) { (true, _) => 65_535, (false, None) => 512, (false, Some(s)) => s.clamp(512, 1232) as usize };
        prop_assert!((12..=limit).contains(&n));
        let reply = Message::from_vec(&out[..n]).unwrap();
        prop_assert!(reply.metadata.authoritative);
        let rcode = reply.metadata.response_code;
        prop_assert_eq!(rcode == ResponseCode::NXDomain, !exists, "{} exists: {}", name, exists);
        if qtype == 255 && !tcp && exists {
            return Ok(()); // RFC 8482's HINFO
        }
        if reply.answers.is_empty() {
            prop_assert_eq!(reply.authorities.len(), 1, "{:?}", reply);
            let soa = &reply.authorities[0];
            prop_assert_eq!(soa.name.to_ascii(), "sip.example.test.");
            match &soa.data {
                hickory_proto::rr::RData::SOA(s) => prop_assert_eq!(s.minimum, soa.ttl),
                other => prop_assert!(false, "not an SOA: {:?}", other),
            }
        } else {
            prop_assert!(exists && reply.authorities.is_empty());
        }
    }
}
