//! Property test: random valid queries → dnlb's answer path → the reply parsed with hickory-proto.

use crossbeam_utils::CachePadded;
use dnlb::config::Config;
use dnlb::dns::answer::Transport;
use dnlb::metrics::{CounterBlocks, WorkerCounters};
use dnlb::snapshot::{Health, Snapshot, SnapshotHandle};
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
    let snapshot = Snapshot::build(&config, &Health::all_up(&config), 0, 1).unwrap();
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
        let transport = if tcp { Transport::Tcp } else { Transport::Udp { max_payload: 1232 } };
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
