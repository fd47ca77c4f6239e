//! Fuzzes the whole query path: bytes from the network → parse → snapshot lookup → reply.
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
