//! Fuzzes the whole query path: bytes from the network → parse → snapshot lookup → reply, for a
//! service as a resolver sees it and one that is a zone apex (NXDOMAIN, empty non-terminals).
//! The reply must never exceed its limit, and anything answered must echo the ID.
#![no_main]

use std::sync::OnceLock;

use crossbeam_utils::CachePadded;
use dnlb::config::Config;
use dnlb::dns::answer::DnsTransport;
use dnlb::counters::{CounterBlocks, WorkerCounters};
use dnlb::snapshot::{Serving, Snapshot, SnapshotHandle};
use dnlb::worker::Responder;
use libfuzzer_sys::fuzz_target;

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
[[service]]
name = "zone.example.test"
[service.authority]
ns = ["ns1.zone.example.test", "ns.example.net"]
glue = [{ name = "ns1.zone.example.test", addresses = ["192.0.2.53"] }]
[[service.server]]
address = "192.0.2.1"
host = "edge.sub.zone.example.test"
[[service.server]]
address = "192.0.2.2"
host = "sbc.example.net"
"#;

fn snapshots() -> &'static SnapshotHandle {
    static HANDLE: OnceLock<SnapshotHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let config = Config::parse(CONFIG).expect("fuzz config");
        SnapshotHandle::new(Snapshot::build(&config, &Serving::all_up(&config), 0).expect("snapshot"))
    })
}

fuzz_target!(|data: &[u8]| {
    let counters: CounterBlocks = (0..1).map(|_| CachePadded::new(WorkerCounters::default())).collect();
    let mut r = Responder::new(snapshots().clone(), counters, 0);
    let mut out = vec![0u8; 65_535];
    for (transport, limit) in [(DnsTransport::Udp { max_payload: 1232 }, 1232), (DnsTransport::Tcp, 65_535)] {
        let n = r.respond(data, transport, &mut out);
        assert!(n <= limit);
        if n > 0 {
            assert!(n >= 12 && out[..2] == data[..2]);
        }
    }
});
