//! The XDP path's per-frame cost against the kernel path's per-query work: what the worker does
//! for one frame off the rx ring (parse Ethernet/IP/UDP with checksums, copy the query out,
//! answer, write the reply's headers and checksums) beside what it does for one datagram from a
//! socket (answer). The difference is what XDP adds in user space; what it saves (the kernel's
//! UDP receive and send paths, the system calls) is measured by perf/xdp.sh.

use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use crossbeam_utils::CachePadded;
use dnlb::config::Config;
use dnlb::counters::{CounterBlocks, WorkerCounters};
use dnlb::dns::answer::DnsTransport;
use dnlb::io::xdp::frame::{self, Path};
use dnlb::io::{encode_peer, Handler, Peer};
use dnlb::snapshot::{Serving, Snapshot, SnapshotHandle};
use dnlb::worker::{Responder, Worker};

const CONFIG: &str = include_str!("../examples/dnlb.toml");

/// `sip.example.test A` with 0x20 case and an EDNS OPT, as a resolver would send it.
fn query_packet() -> Vec<u8> {
    let mut p = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1];
    p.extend_from_slice(b"\x03SiP\x07eXaMpLe\x04TeSt\x00\x00\x01\x00\x01");
    p.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]);
    p
}

fn worker() -> Worker {
    let config = Config::parse(CONFIG).unwrap();
    let handle = SnapshotHandle::new(Snapshot::build(&config, &Serving::all_up(&config), 0).unwrap());
    let counters: CounterBlocks = (0..1).map(|_| CachePadded::new(WorkerCounters::default())).collect();
    let responder = Responder::new(handle, counters, 0);
    Worker::new(responder, DnsTransport::Udp { max_payload: 1232 }, None)
}

/// The query as a frame from `client` to `server`, and the path a reply takes.
fn query_frame(client: &str, server: &str) -> (Vec<u8>, Path) {
    let client: SocketAddr = client.parse().unwrap();
    let server: SocketAddr = server.parse().unwrap();
    let from_client = Path {
        dst_mac: [2, 0, 0, 0, 0, 1],
        src_mac: [2, 0, 0, 0, 0, 2],
        vlan: None,
        local: client.ip(),
        local_port: client.port(),
    };
    let payload = query_packet();
    let h = from_client.header_len();
    let mut f = vec![0u8; 2048 - 256];
    f[h..h + payload.len()].copy_from_slice(&payload);
    let n = frame::write_headers(&mut f, &from_client, server, payload.len()).unwrap();
    let reply_path = frame::parse(&f[..n]).unwrap().path;
    f.truncate(n);
    (f, reply_path)
}

/// One frame as the XDP worker answers it (the loop's `answer` without the rings).
fn answer_frame(w: &mut Worker, rx: &[u8], umem: &mut [u8], scratch: &mut [u8]) -> usize {
    umem[..rx.len()].copy_from_slice(rx); // the kernel's copy into the UMEM, not ours: undone below
    let incoming = frame::parse(&umem[..rx.len()]).unwrap();
    let payload = incoming.payload.clone();
    let query = &mut scratch[..payload.len()];
    query.copy_from_slice(&umem[payload.clone()]);
    let hdr = payload.start;
    let cap = incoming.path.max_payload(1500).min(umem.len() - hdr);
    let n = w.handle_frame(query, incoming.peer, &incoming.path, cap as u16, &mut umem[hdr..hdr + cap]);
    frame::write_headers(umem, &incoming.path, incoming.peer, n).unwrap()
}

fn benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("xdp");
    g.throughput(Throughput::Elements(1));
    let mut w = worker();
    w.begin_batch();
    let packet = query_packet();
    let mut out = [0u8; 2048];

    // The kernel path's per-query work in user space: the same handler, a socket's datagram.
    let mut name = [0u8; 28];
    let n = encode_peer("198.18.0.2:40000".parse().unwrap(), &mut name);
    g.bench_function("kernel_path_answer", |b| b.iter(|| w.handle(black_box(&packet), Peer(&name[..n]), &mut out)));

    for (label, client, server) in
        [("v4", "198.18.0.2:40000", "198.18.0.1:53"), ("v6", "[fd00:19::2]:40000", "[fd00:19::1]:53")]
    {
        let (rx, path) = query_frame(client, server);
        g.bench_function(format!("parse_frame_{label}"), |b| b.iter(|| frame::parse(black_box(&rx)).unwrap()));
        let peer: SocketAddr = client.parse().unwrap();
        let reply_len = w.handle(&packet, Peer(&name[..n]), &mut out);
        let mut tx = vec![0u8; 2048];
        tx[path.header_len()..path.header_len() + reply_len].copy_from_slice(&out[..reply_len]);
        g.bench_function(format!("write_headers_{label}"), |b| {
            b.iter(|| frame::write_headers(black_box(&mut tx), &path, peer, reply_len).unwrap())
        });
        let mut umem = vec![0u8; 2048 - 256];
        let mut scratch = vec![0u8; 2048];
        g.bench_function(format!("whole_frame_{label}"), |b| {
            b.iter(|| answer_frame(&mut w, black_box(&rx), &mut umem, &mut scratch))
        });
    }
    // The kernel's copy into the UMEM that `whole_frame` includes, to subtract.
    let (rx, _) = query_frame("198.18.0.2:40000", "198.18.0.1:53");
    let mut umem = vec![0u8; 2048 - 256];
    g.bench_function("copy_into_umem_v4", |b| b.iter(|| umem[..rx.len()].copy_from_slice(black_box(&rx))));
    g.finish();
}

criterion_group!(xdp, benches);
criterion_main!(xdp);
