//! Fuzzes how an upstream reply the cache did not keep is patched for each client: arbitrary
//! upstream bytes, each of several client queries (with and without EDNS, CD, odd case), UDP and
//! TCP, buffers of several sizes. The length written never passes the buffer or the client's
//! limit, and the client's ID and question come back.
#![no_main]

#[path = "relay_harness.rs"]
mod relay_harness;

use dnlb::dns::answer::DnsTransport;
use dnlb::dns::query::{parse, MAX_NAME_LEN};
use dnlb::relay::cache::fit_for_client;
use dnlb::relay::engine::patch_raw;
use libfuzzer_sys::fuzz_target;
use relay_harness::*;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, upstream)) = data.split_first() else { return };
    let clients = [
        client_query("WwW.example.test", 0xabcd, false, None),
        client_query("www.example.test", 1, true, Some((4096, true))),
        client_query("a", 2, false, Some((512, false))),
    ];
    let packet = &clients[usize::from(mode) % clients.len()];
    let mut lower = [0u8; MAX_NAME_LEN];
    let q = parse(packet, &mut lower).expect("the harness's queries parse");
    let transport = if mode & 0x10 != 0 { DnsTransport::Tcp } else { UDP };
    let max_ttl = u32::from(mode) * 997;
    for size in [12, q.question_end, 512, 2048, 65_535] {
        let mut buf = vec![0u8; size];
        let n = patch_raw(upstream, &packet[..q.question_end], &q, transport, max_ttl, &mut buf);
        assert!(n <= size && n <= transport.limit(&q).max(q.question_end));
        if n > 0 {
            assert_eq!(&buf[..2], &packet[..2], "the client's ID");
            assert_eq!(&buf[12..q.question_end], &packet[12..q.question_end], "its question and case");
        }
    }
    let mut copy = upstream.to_vec();
    let n = fit_for_client(&mut copy, max_ttl, mode & 0x20 != 0);
    assert!(n <= upstream.len());
});
