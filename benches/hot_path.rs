//! Hot-path micro-benchmarks: parse, look up + patch (the whole per-query work), snapshot load;
//! and the snapshot rebuild a health flip costs for farms of 500 to 10,000 servers.
//! Targets: parse + look up + patch under 100 ns per query (issue 2); a flip of a 10,000-server
//! service republishes in under 10 ms (issue 10).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use crossbeam_utils::CachePadded;
use dnlb::config::Config;
use dnlb::counters::{CounterBlocks, WorkerCounters};
use dnlb::dns::answer::DnsTransport;
use dnlb::dns::query::{parse, MAX_NAME_LEN};
use dnlb::snapshot::{Layout, Serving, Snapshot, SnapshotHandle};
use dnlb::worker::Responder;

const CONFIG: &str = include_str!("../examples/dnlb.toml");

/// `sip.example.test A` with 0x20 case and an EDNS OPT, as a resolver would send it.
fn query_packet() -> Vec<u8> {
    let mut p = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1];
    p.extend_from_slice(b"\x03SiP\x07eXaMpLe\x04TeSt\x00\x00\x01\x00\x01");
    p.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]);
    p
}

fn setup() -> (SnapshotHandle, Responder) {
    setup_with(CONFIG)
}

/// The example with the commented-out lines that start with one of `keys` uncommented.
fn uncomment(keys: &[&str]) -> String {
    CONFIG
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(rest) if keys.iter().any(|p| rest.starts_with(p)) => format!("{rest}\n"),
            _ => format!("{l}\n"),
        })
        .collect()
}

/// The example with its servers' `site` lines and its `[[sites]]` entries uncommented.
fn with_sites() -> String {
    uncomment(&["site =", "[[sites]]", "clients =", "prefer ="])
}

/// The example with its service's `[service.authority]` uncommented: the service is a zone apex.
fn with_authority() -> String {
    uncomment(&["[service.authority]", "ns =", "glue ="])
}

fn setup_with(text: &str) -> (SnapshotHandle, Responder) {
    let config = Config::parse(text).unwrap();
    let zoned = config.services.iter().any(|s| s.authority.is_some());
    assert!(text == CONFIG || !config.sites.is_empty() || zoned, "the example documents [[sites]] and authority");
    let handle = SnapshotHandle::new(Snapshot::build(&config, &Serving::all_up(&config), 0).unwrap());
    let counters: CounterBlocks = (0..1).map(|_| CachePadded::new(WorkerCounters::default())).collect();
    let responder = Responder::new(handle.clone(), counters, 0);
    (handle, responder)
}

fn benches(c: &mut Criterion) {
    let packet = query_packet();
    let mut g = c.benchmark_group("hot_path");
    g.throughput(Throughput::Elements(1));

    let mut name = [0u8; MAX_NAME_LEN];
    g.bench_function("parse", |b| b.iter(|| parse(black_box(&packet), &mut name).unwrap()));

    let (handle, mut responder) = setup();
    let mut out = [0u8; 2048];
    let udp = DnsTransport::Udp { max_payload: 1232 };
    g.bench_function("parse_lookup_patch", |b| b.iter(|| responder.respond(black_box(&packet), udp, &mut out)));

    let srv = {
        let mut p = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        p.extend_from_slice(b"\x04_sip\x04_udp\x03sip\x07example\x04test\x00\x00\x21\x00\x01");
        p
    };
    g.bench_function("parse_lookup_patch_srv", |b| b.iter(|| responder.respond(black_box(&srv), udp, &mut out)));

    // The same A query from a client that `[[sites]]` steers (10.1.0.0/16 prefers east): the
    // source address is read and matched, and the answer comes from that client's view.
    let (_steered_handle, mut steered) = setup_with(&with_sites());
    let client = dnlb::worker::Client::Address("10.1.2.3:5060".parse().unwrap());
    g.bench_function("parse_lookup_patch_sites", |b| {
        b.iter(|| steered.respond_from(black_box(&packet), client, udp, &mut out))
    });

    let mut refused = packet.clone();
    refused[13] = b'X';
    refused[14] = b'Y';
    g.bench_function("parse_lookup_refused", |b| b.iter(|| responder.respond(black_box(&refused), udp, &mut out)));

    // With the service a zone apex: a name under it that does not exist gets the zone's
    // NXDOMAIN (a walk of its suffixes, then a copy); a name outside every zone pays the walk.
    let (_zone_handle, mut zoned) = setup_with(&with_authority());
    let mut nxdomain = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1];
    nxdomain.extend_from_slice(b"\x05phone\x03SiP\x07eXaMpLe\x04TeSt\x00\x00\x01\x00\x01");
    nxdomain.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]);
    g.bench_function("parse_lookup_nxdomain_zone", |b| b.iter(|| zoned.respond(black_box(&nxdomain), udp, &mut out)));
    g.bench_function("parse_lookup_refused_zone", |b| b.iter(|| zoned.respond(black_box(&refused), udp, &mut out)));

    g.bench_function("snapshot_load", |b| b.iter(|| black_box(handle.load().generation())));
    g.bench_function("batch_refresh", |b| b.iter(|| responder.refresh()));
    g.finish();
}

/// One round-robin service of `n` servers on 10.x.y.z, `answers` unset.
fn farm(n: usize) -> Config {
    let mut text = String::from("[server]\nlisten = [\"127.0.0.1:5353\"]\n[[service]]\nname = \"sip.example.test\"\n");
    for i in 0..n {
        text.push_str(&format!("[[service.server]]\naddress = \"10.{}.{}.{}\"\n", i >> 16, (i >> 8) & 255, i & 255));
    }
    Config::parse(&text).unwrap()
}

fn rebuild(c: &mut Criterion) {
    let mut g = c.benchmark_group("rebuild");
    g.sample_size(20);
    for n in [500, 2_000, 10_000] {
        let config = farm(n);
        let mut health = Serving::all_up(&config);
        let layout = std::sync::Arc::new(Layout::new(&config).unwrap());
        // A flip: one server down, then up again, alternately.
        let mut flip = 0u64;
        g.bench_function(format!("flip_{n}"), |b| {
            b.iter(|| {
                flip += 1;
                health.up[0][(flip as usize * 7) % n] =
                    if flip.is_multiple_of(2) { config.services[0].servers[0].transports.clone() } else { Vec::new() };
                black_box(Snapshot::build_with(&layout, &config, &health, 0).unwrap())
            })
        });
        g.bench_function(format!("start_{n}"), |b| {
            b.iter(|| black_box(Snapshot::build(&config, &Serving::all_up(&config), 0).unwrap()))
        });
    }
    g.finish();
}

criterion_group!(hot_path, benches, rebuild);
criterion_main!(hot_path);
