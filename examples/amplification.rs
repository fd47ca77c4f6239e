//! The amplification dnlb offers a reflector, per query type: reply bytes / query bytes over UDP,
//! for the example farm (`examples/dnlb.toml`) and a farm of 64 servers on UDP, TCP and TLS, with
//! and without EDNS, and what response rate limiting leaves of it. Prints the table in tuning.md.
//!
//!   cargo run --release --example amplification

use std::sync::Arc;

use crossbeam_utils::CachePadded;
use dnlb::config::Config;
use dnlb::counters::{CounterBlocks, WorkerCounters};
use dnlb::dns::answer::{self, DnsTransport};
use dnlb::probe::initial_serving;
use dnlb::snapshot::{Serving, Snapshot, SnapshotHandle};
use dnlb::worker::Responder;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};

fn query(name: &str, qtype: RecordType, edns: bool) -> Vec<u8> {
    let mut m = Message::new(0x1234, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).expect("a valid name"), qtype));
    if edns {
        let mut e = Edns::new();
        e.set_max_payload(4096);
        m.edns = Some(e);
    }
    m.to_vec().expect("encodes")
}

fn farm_64() -> Config {
    let mut text = String::from("[server]\nlisten = [\"127.0.0.1:5353\"]\n[[service]]\nname = \"sip.example.test\"\n");
    for i in 0..64 {
        text.push_str(&format!(
            "[[service.server]]\naddress = \"10.0.{}.{}\"\ntransports = [\"udp\", \"tcp\", \"tls\"]\n",
            i / 200,
            1 + i % 200
        ));
    }
    Config::parse(&text).expect("the 64-server farm is valid")
}

fn table(title: &str, config: &Config) {
    let health: Serving = initial_serving(config);
    let all_up = Serving::all_up(config);
    let snapshot =
        Snapshot::build(config, if health.up.is_empty() { &health } else { &all_up }, 0).expect("answers build");
    let counters: CounterBlocks = Arc::from(vec![CachePadded::new(WorkerCounters::default())]);
    let mut r = Responder::new(SnapshotHandle::new(snapshot), counters, 0);
    let udp = DnsTransport::Udp { max_payload: config.server.max_udp_payload };
    println!("\n{title}\n");
    println!("| query | bytes | reply, no EDNS | factor | reply, EDNS 1232 | factor | slipped (RRL) | factor |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    let questions = [
        ("sip.example.test.", RecordType::A),
        ("sip.example.test.", RecordType::AAAA),
        ("_sip._udp.sip.example.test.", RecordType::SRV),
        ("_sips._tcp.sip.example.test.", RecordType::SRV),
        ("sip.example.test.", RecordType::NAPTR),
        ("sip.example.test.", RecordType::ANY),
        ("sip.example.test.", RecordType::TXT),
        ("other.example.", RecordType::A),
    ];
    let mut out = vec![0u8; 65_535];
    for (name, qtype) in questions {
        let plain = query(name, qtype, false);
        let edns = query(name, qtype, true);
        let n_plain = r.respond(&plain, udp, &mut out);
        let n_edns = r.respond(&edns, udp, &mut out);
        let slipped = answer::slip(&mut out, n_edns);
        let f = |reply: usize, q: &[u8]| reply as f64 / q.len() as f64;
        println!(
            "| {name} {qtype} | {} | {n_plain} | {:.1} | {n_edns} | {:.1} | {slipped} | {:.1} |",
            plain.len(),
            f(n_plain, &plain),
            f(n_edns, &edns),
            f(slipped, &edns),
        );
    }
}

fn main() {
    let example = Config::load(std::path::Path::new("examples/dnlb.toml")).expect("the example config loads");
    table("Example farm (examples/dnlb.toml: three servers on UDP)", &example);
    table("A farm of 64 servers on UDP, TCP and TLS", &farm_64());
}
