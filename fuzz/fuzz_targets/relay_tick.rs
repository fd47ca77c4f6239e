//! Drives the relay as a whole state machine: the input is a program of client questions,
//! honest, forged and arbitrary upstream replies, socket failures and clock jumps (forwards by up
//! to 49 days, backwards a little, as an injected clock may) with ticks, and reloads that change
//! the upstreams, routes, cache, serve-stale and prefetch under questions in flight. Short TTLs
//! and small clock steps bring cached answers into their prefetch tenth and past their expiry,
//! where failures and slow upstreams serve them stale. After every step each exchange in flight
//! owns exactly one open socket and the bounds hold; at the end, every client has been answered.
#![no_main]

#[path = "relay_harness.rs"]
mod relay_harness;

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use relay_harness::*;

const NAMES: [&str; 4] = ["a.test", "WwW.Example.TEST", "x.y.z.test", "health.test"];

fuzz_target!(|data: &[u8]| {
    let t0 = Instant::now();
    let mut e = engine(3, t0);
    let mut wire = FakeWire::default();
    let mut clients = Clients::default();
    let mut offset = Duration::ZERO;
    // The latest time any step saw: the clock in dnlb never goes back, only this harness does.
    let mut latest = Duration::ZERO;
    let mut input = data.iter().copied();
    let mut next = move || input.next();
    let mut steps = 0;
    while let Some(op) = next() {
        steps += 1;
        if steps > 256 {
            break;
        }
        let now = t0 + offset;
        let arg = next().unwrap_or(0);
        match op % 9 {
            0 => {
                let name = NAMES[usize::from(arg) % NAMES.len()];
                let edns = (arg & 0x10 != 0).then_some((1232, arg & 0x20 != 0));
                ask(&mut e, &mut wire, &client_query(name, u16::from(arg), arg & 0x40 != 0, edns), UDP, now);
            }
            1 | 2 => {
                // An honest reply (rcode, TC and TTL from the input) to some exchange sent.
                if let Some((token, to, sent, _)) = pick(&wire, arg) {
                    let flags = u16::from(next().unwrap_or(0)) & 0x020f;
                    // Short TTLs (seconds) as often as long ones, so answers expire and go stale.
                    let t = next().unwrap_or(0);
                    let ttl = if t & 0x80 != 0 { u32::from(t & 0x7f) } else { u32::from(t) << 12 };
                    if let Some(mut reply) = honest_reply(&sent, flags, ttl) {
                        if op % 8 == 2 {
                            reply[12..].make_ascii_lowercase(); // an upstream that drops 0x20
                        }
                        e.on_reply(token, &reply, to, &mut clients, now, &mut wire);
                    }
                }
            }
            3 => {
                // Arbitrary bytes from the right source, of a length from the input.
                if let Some((token, to, _, _)) = pick(&wire, arg) {
                    let len = usize::from(next().unwrap_or(0));
                    let bytes: Vec<u8> = (0..len).map_while(|_| next()).collect();
                    e.on_reply(token, &bytes, to, &mut clients, now, &mut wire);
                }
            }
            4 => {
                if let Some((token, _, _, _)) = pick(&wire, arg) {
                    e.on_failure(token, &mut clients, now, &mut wire);
                }
            }
            5 => {
                // Small steps (tens of ms: the client timer, the prefetch tenth) or long jumps.
                let ms = if arg & 0x80 != 0 {
                    u32::from(arg & 0x7f) * 50
                } else {
                    u32::from_be_bytes([arg, next().unwrap_or(0), next().unwrap_or(0), next().unwrap_or(0)])
                };
                offset += Duration::from_millis(u64::from(ms));
                e.tick(&mut clients, t0 + offset, &mut wire);
            }
            6 => {
                offset = offset.saturating_sub(Duration::from_millis(u64::from(arg) * 10));
                e.tick(&mut clients, t0 + offset, &mut wire);
            }
            7 => wire.refuse = arg & 1 != 0,
            _ => e.reconfigure(std::sync::Arc::new(reloaded(arg)), now),
        }
        latest = latest.max(offset);
        check(&e, &wire);
    }
    // Time runs out for everything still in flight: moved, asked without 0x20, failed.
    wire.refuse = false;
    for _ in 0..4 {
        latest += Duration::from_secs(1);
        e.tick(&mut clients, t0 + latest, &mut wire);
        check(&e, &wire);
    }
    assert_eq!(e.waiting(), 0, "every client answered");
});

/// A reloaded configuration from `arg`: one to three upstreams from a window that may or may not
/// overlap the running ones, a route for `y.z.test` or not, another cache size, serve-stale off
/// or with a client timer of zero, prefetch off.
fn reloaded(arg: u8) -> dnlb::config::RelayConfig {
    let mut c = config(1);
    match arg & 0x30 {
        0x10 => c.stale = None,
        0x20 => c.stale = c.stale.map(|s| dnlb::config::StaleConfig { answer_after: Duration::ZERO, ..s }),
        0x30 => c.prefetch = false,
        _ => {}
    }
    let first = usize::from(arg >> 2) % 4;
    let n = 1 + usize::from(arg) % 3;
    c.upstreams = (first..first + n).map(|i| std::net::SocketAddr::from(([192, 0, 2, 1 + i as u8], 53))).collect();
    if arg & 0x40 != 0 {
        c.routes = vec![dnlb::config::Route {
            domain: "y.z.test".into(),
            upstreams: vec![std::net::SocketAddr::from(([192, 0, 2, 9], 53))],
        }];
    }
    if arg & 0x80 != 0 {
        c.cache_entries = 2;
    }
    c
}

/// An exchange that was sent, chosen by `arg` (it may be over already).
fn pick(wire: &FakeWire, arg: u8) -> Option<(u64, std::net::SocketAddr, Vec<u8>, bool)> {
    if wire.sent.is_empty() {
        return None;
    }
    wire.sent.get(wire.sent.len() - 1 - usize::from(arg) % wire.sent.len()).cloned()
}
