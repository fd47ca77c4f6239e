//! Thousands of snapshots published while workers answer under load: every reply must match
//! exactly one snapshot (never a mix of two).

mod common;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use dnlb::config::Transport;
use dnlb::snapshot::{Serving, Snapshot};
use hickory_proto::op::Message;
use hickory_proto::rr::{RData, RecordType};

const SERVERS: usize = 4;
const PUBLISHES: u64 = 3000;

/// The healthy set of generation `g`: the servers whose bit is set in `g % 16` (all when none).
/// Generation 1 is the server's initial snapshot (TTL 1, every server healthy).
fn healthy(g: u64) -> BTreeSet<IpAddr> {
    let mask = if g == 1 { 0 } else { g % 16 };
    let all: Vec<IpAddr> = (0..SERVERS).map(|i| format!("127.0.0.{}", 11 + i).parse().unwrap()).collect();
    let up: BTreeSet<IpAddr> = all.iter().enumerate().filter(|(i, _)| mask >> i & 1 == 1).map(|(_, a)| *a).collect();
    if up.is_empty() {
        all.into_iter().collect()
    } else {
        up
    }
}

#[test]
fn every_reply_matches_one_snapshot() {
    for io in backends() {
        let t = TestServer::start(&config_text(free_port(), SERVERS, ""), io);
        let done = Arc::new(AtomicBool::new(false));
        let checked = Arc::new(AtomicU64::new(0));
        let mut clients = Vec::new();
        for c in 0..3u16 {
            let (addr, done, checked) = (t.addr, done.clone(), checked.clone());
            clients.push(std::thread::spawn(move || {
                let sock = udp_client();
                sock.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
                let mut buf = [0u8; 1500];
                let mut id = c.wrapping_mul(20_000);
                let mut seen_ttls = BTreeSet::new();
                while !done.load(Ordering::Relaxed) {
                    id = id.wrapping_add(1);
                    sock.send_to(&query("sip.example.test.", RecordType::A, id, None), addr).unwrap();
                    let Ok((n, _)) = sock.recv_from(&mut buf) else { continue };
                    let m = Message::from_vec(&buf[..n]).unwrap();
                    if m.metadata.id != id {
                        continue; // a late reply to an earlier, timed-out query
                    }
                    let ttls: BTreeSet<u32> = m.answers.iter().map(|r| r.ttl).collect();
                    assert_eq!(ttls.len(), 1, "one reply, one TTL: {ttls:?}");
                    let g = u64::from(*ttls.first().unwrap());
                    let got: BTreeSet<IpAddr> = m
                        .answers
                        .iter()
                        .map(|r| match &r.data {
                            RData::A(a) => IpAddr::V4(a.0),
                            other => panic!("{other:?}"),
                        })
                        .collect();
                    assert_eq!(got, healthy(g), "reply with TTL {g} must carry generation {g}'s healthy set");
                    seen_ttls.insert(g);
                    checked.fetch_add(1, Ordering::Relaxed);
                }
                seen_ttls.len()
            }));
        }
        let mut config = t.config.clone();
        let started = Instant::now();
        for g in 2..PUBLISHES + 2 {
            config.services[0].ttl = g as u32;
            let up = healthy(g);
            let health = Serving {
                up: vec![config.services[0]
                    .servers
                    .iter()
                    .map(|s| if up.contains(&s.address) && g % 16 != 0 { vec![Transport::Udp] } else { vec![] })
                    .collect()],
                ..Serving::default()
            };
            t.snapshots.publish(Snapshot::build(&config, &health, g).unwrap());
            if g % 64 == 0 {
                std::thread::sleep(Duration::from_millis(1)); // let queries interleave with publishes
            }
        }
        // Keep querying the final snapshot briefly, then stop.
        std::thread::sleep(Duration::from_millis(100));
        done.store(true, Ordering::Relaxed);
        let distinct: usize = clients.into_iter().map(|c| c.join().unwrap()).sum();
        let checked = checked.load(Ordering::Relaxed);
        eprintln!(
            "{io:?}: {PUBLISHES} publishes in {:?}, {checked} replies checked, {distinct} distinct generations seen",
            started.elapsed()
        );
        assert!(checked > 500, "too few replies checked: {checked}");
        assert!(distinct > 10, "replies should span many generations: {distinct}");
    }
}
