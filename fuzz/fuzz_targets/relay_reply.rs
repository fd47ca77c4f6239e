//! Fuzzes the relay's reply path as a whole: a relay with queries in flight (one plain, one
//! CD=1 with EDNS and DO) receives arbitrary bytes as the upstream's reply, optionally with the
//! right ID and question patched in so acceptance passes and the cache, TC retry, SERVFAIL and
//! fan-out paths run; then the timeouts and a cached answer. Any panic, leaked socket or broken
//! bound is a failure.
#![no_main]

#[path = "relay_harness.rs"]
mod relay_harness;

use std::time::{Duration, Instant};

use dnlb::dns::answer::DnsTransport;
use dnlb::relay::engine::ReplyOutcome;
use libfuzzer_sys::fuzz_target;
use relay_harness::*;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, message)) = data.split_first() else { return };
    let t0 = Instant::now();
    let mut e = engine(2, t0);
    let mut wire = FakeWire::default();
    let mut clients = Clients::default();
    // Health checks go out on the first tick; then the clients' questions, twice each.
    e.tick(&mut clients, t0, &mut wire);
    let plain = client_query("wWw.example.test", 0x1234, false, None);
    let signed = client_query("www.example.test", 0x4321, true, Some((4096, true)));
    for p in [&plain, &signed, &plain] {
        ask(&mut e, &mut wire, p, UDP, t0);
    }
    check(&e, &wire);
    for round in 0..wire.sent.len() {
        let (token, to, sent, _) = wire.sent[round].clone();
        let mut reply = message.to_vec();
        if mode & 1 != 0 && reply.len() >= 2 {
            reply[..2].copy_from_slice(&sent[..2]);
        }
        if mode & 2 != 0 {
            // The question as sent, so acceptance passes and what follows is the fuzzer's.
            let q_end = honest_reply(&sent, 0, 0).map_or(0, |h| h.len() - 16);
            if q_end > 12 && reply.len() >= q_end {
                reply[12..q_end].copy_from_slice(&sent[12..q_end]);
                reply[4..6].copy_from_slice(&[0, 1]);
                reply[2] = (reply[2] | 0x80) & 0x87;
            }
        }
        let from = if mode & 4 != 0 { "192.0.2.99:53".parse().unwrap() } else { to };
        let verdict = e.on_reply(token, &reply, from, &mut clients, t0, &mut wire);
        if verdict == ReplyOutcome::Taken {
            assert!(!wire.open.contains(&token), "an accepted exchange's socket is closed");
        }
        check(&e, &wire);
    }
    // TCP retries the reply path may have started: feed them the same bytes.
    for i in 0..wire.sent.len() {
        let (token, to, sent, tcp) = wire.sent[i].clone();
        if tcp {
            let mut reply = message.to_vec();
            if reply.len() >= 2 {
                reply[..2].copy_from_slice(&sent[..2]);
            }
            e.on_reply(token, &reply, to, &mut clients, t0, &mut wire);
            check(&e, &wire);
        }
    }
    // Whatever is left times out (moved once, then failed), and the cache answers.
    for step in 1..=4u64 {
        e.tick(&mut clients, t0 + Duration::from_millis(600 * step), &mut wire);
        check(&e, &wire);
    }
    assert_eq!(e.waiting(), 0, "every client answered");
    for transport in [UDP, DnsTransport::Tcp] {
        ask(&mut e, &mut wire, &client_query("WWW.example.test", 9, false, Some((512, false))), transport, t0);
    }
});
