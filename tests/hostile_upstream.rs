//! The relay against hostile and awkward upstreams (RFC 5452), over real loopback sockets, for
//! both backends: how many upstream queries a crowd of identical questions costs, how many source
//! ports upstream queries leave from, a blind forger who learned dnlb's ports, IPv4 and IPv6
//! upstreams together, replies over the receive size or truncated, the CD bit, SERVFAIL as a
//! failure, the TTL cap, an upstream that does not preserve letter case, over-long queries.

mod common;

use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::upstream::{Hostile, Script};
use common::*;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};

/// A config relaying to `upstreams`, with `extra` lines in `[relay]`.
fn relay_config(upstreams: &[SocketAddr], extra: &str) -> String {
    let list: Vec<String> = upstreams.iter().map(|u| format!("\"{u}\"")).collect();
    format!("{}\n[relay]\nupstreams = [{}]\n{extra}\n", config_text(free_port(), 2, ""), list.join(", "))
}

/// Reads replies on `socket` on another thread until `n` have arrived or `limit` passes; returns
/// them by message ID.
fn collect(socket: &UdpSocket, n: usize, limit: Duration) -> std::thread::JoinHandle<HashMap<u16, Message>> {
    let reader = socket.try_clone().unwrap();
    reader.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    std::thread::spawn(move || {
        let start = Instant::now();
        let mut got = HashMap::new();
        let mut buf = [0u8; 4096];
        while got.len() < n && start.elapsed() < limit {
            if let Ok((len, _)) = reader.recv_from(&mut buf) {
                if let Ok(m) = Message::from_vec(&buf[..len]) {
                    got.insert(m.metadata.id, m);
                }
            }
        }
        got
    })
}

/// Sends `packets` from `socket` to `to`, pausing 1 ms every 50 so no socket buffer overflows.
fn send_paced(socket: &UdpSocket, to: SocketAddr, packets: impl Iterator<Item = Vec<u8>>) {
    for (i, p) in packets.enumerate() {
        socket.send_to(&p, to).unwrap();
        if i % 50 == 49 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// The first A record's address in `m`.
fn first_a(m: &Message) -> Option<[u8; 4]> {
    m.answers.iter().find_map(|r| match &r.data {
        RData::A(a) => Some(a.0.octets()),
        _ => None,
    })
}

/// 1,000 clients asking the same question at once cost one upstream query, and every one of them
/// gets the answer with its own ID. (One worker here: each worker keeps its own table, so N
/// workers ask at most N times.)
#[test]
fn identical_questions_in_flight_share_one_upstream_query() {
    for io in backends() {
        let up = Hostile::start("127.0.0.1", Script { hold: Some("same"), ..Script::default() });
        let config = relay_config(&[up.addr], "timeout_ms = 5000").replace("workers = 2", "workers = 1");
        let t = TestServer::start(&config, io);
        // Ten clients asking 100 times each: the answers come in one burst when the upstream
        // answers, and no client socket buffer has to hold more than 100 of them.
        let clients: Vec<UdpSocket> = (0..10).map(|_| udp_client()).collect();
        let readers: Vec<_> = clients.iter().map(|c| collect(c, 100, Duration::from_secs(8))).collect();
        for (k, c) in clients.iter().enumerate() {
            let ids = (0..100u16).map(|i| k as u16 * 100 + i);
            send_paced(c, t.addr, ids.map(|id| query("same.crowd.test.", RecordType::A, id, None)));
        }
        let server = t.server.as_ref().unwrap();
        assert!(
            poll(Duration::from_secs(3), || server.totals().relayed >= 1000).is_some(),
            "{io:?}: every query reached the relay: {}",
            server.totals()
        );
        assert_eq!(up.count(), 1, "{io:?}: one upstream query for 1,000 identical questions");
        up.release();
        let mut answered = 0;
        for (k, r) in readers.into_iter().enumerate() {
            let replies = r.join().unwrap();
            for id in 0..100u16 {
                let id = k as u16 * 100 + id;
                let m = replies.get(&id).unwrap_or_else(|| panic!("{io:?}: no answer for ID {id}"));
                assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{io:?}: ID {id}");
                assert_eq!(first_a(m), Some([198, 51, 100, 7]), "{io:?}: ID {id}");
                answered += 1;
            }
        }
        assert_eq!(answered, 1000);
        assert_eq!(up.count(), 1, "{io:?}: still one upstream query");
        let totals = server.totals();
        assert_eq!((totals.drop_outbox, totals.relay_waiters_full), (0, 0), "{io:?}: {totals}");
    }
}

/// 1,000 different questions leave from at least 900 different source ports.
#[test]
fn upstream_queries_leave_from_random_ports() {
    for io in backends() {
        let up = Hostile::start("127.0.0.1", Script::default());
        let t = TestServer::start(&relay_config(&[up.addr], ""), io);
        let client = udp_client();
        let n = 1000u16;
        // With both cores saturated a test thread can be starved long enough for a socket buffer
        // to overflow; the unanswered questions are asked again (up to three passes), so a lost
        // datagram costs a retry, not the test. What is checked is where the queries came from.
        let mut answered = HashSet::new();
        let mut passes = 0;
        while answered.len() < n as usize && passes < 3 {
            passes += 1;
            let missing: Vec<u16> = (0..n).filter(|i| !answered.contains(i)).collect();
            let replies = collect(&client, missing.len(), Duration::from_secs(8));
            send_paced(
                &client,
                t.addr,
                missing.iter().map(|&i| query(&format!("q{i}.ports.test."), RecordType::A, i, None)),
            );
            // A question the upstream never saw (lost on its way) comes back SERVFAIL: asked again.
            let replies = replies.join().unwrap();
            answered.extend(
                replies
                    .into_iter()
                    .filter(|(_, m)| m.metadata.response_code == ResponseCode::NoError)
                    .map(|(id, _)| id),
            );
        }
        assert_eq!(answered.len(), n as usize, "{io:?}: every client answered");
        let ports: HashSet<u16> = up.ports.lock().unwrap().iter().copied().collect();
        println!(
            "{io:?}: {} upstream queries from {} distinct source ports, {passes} pass(es)",
            up.count(),
            ports.len()
        );
        if passes == 1 {
            assert_eq!(up.count(), u64::from(n), "{io:?}: one upstream query per question");
        } else {
            assert!(up.count() >= u64::from(n), "{io:?}: every question went upstream");
        }
        // RFC 5452: a fresh port per upstream query, whatever was retried.
        assert!(
            ports.len() as u64 * 10 >= up.count() * 9,
            "{io:?}: {} distinct ports for {} queries",
            ports.len(),
            up.count()
        );
        assert!(ports.len() >= 900, "{io:?}: only {} distinct source ports for {n} queries", ports.len());
    }
}

/// A blind forger who learned dnlb's source ports (by asking names of a zone it serves itself)
/// floods every ID at those ports, from the upstream's own address and port, while dnlb waits on
/// the upstream; then floods every ID at the port the query really left from, with the question
/// exactly as its client asked it. Neither reaches the client or the cache.
#[test]
fn a_forger_who_learned_the_ports_never_gets_through() {
    for io in backends() {
        let up = Hostile::start("127.0.0.1", Script { hold: Some("target"), ..Script::default() });
        let t = TestServer::start(&relay_config(&[up.addr], "timeout_ms = 15000"), io);
        let client = udp_client();
        for i in 0..64u16 {
            let m =
                udp_query_from(&client, t.addr, &query(&format!("learn{i}.attacker.test."), RecordType::A, i, None));
            assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        }
        let learned: HashSet<u16> = up.ports.lock().unwrap().iter().copied().collect();
        let asked = query("target.forged.test.", RecordType::A, 7777, None);
        client.send_to(&asked, t.addr).unwrap();
        assert!(poll(Duration::from_secs(2), || up.count() == 65).is_some(), "{io:?}: the target query went upstream");
        let actual = *up.ports.lock().unwrap().last().unwrap();
        let forge = |id: u16| {
            let mut f = asked.clone();
            f[..2].copy_from_slice(&id.to_be_bytes());
            f[2] = 0x81;
            f[3] = 0x80;
            f[6..8].copy_from_slice(&[0, 1]);
            f.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0x0e, 0x10, 0, 4, 203, 0, 113, 66]);
            f
        };
        let mut sent = 0u64;
        // dnlb bound its sockets once per worker (8 each) before; now every query had its own,
        // closed since: eight of them are as good as any.
        let ports: Vec<u16> = learned.iter().copied().take(8).chain(std::iter::once(actual)).collect();
        for port in ports {
            let to = SocketAddr::from(([127, 0, 0, 1], port));
            for id in 0..=u16::MAX {
                let _sent = up.socket.send_to(&forge(id), to);
                sent += 1;
                if id % 64 == 63 {
                    std::thread::sleep(Duration::from_micros(50));
                }
            }
        }
        // Let the relay read what the flood queued on the live socket (its counter settles), so
        // the true reply finds room there; then the upstream answers.
        let server = t.server.as_ref().unwrap();
        let mut last = u64::MAX;
        let settled = poll(Duration::from_secs(10), || {
            std::thread::sleep(Duration::from_millis(100));
            let now = server.totals().relay_forged;
            std::mem::replace(&mut last, now) == now
        })
        .is_some();
        assert!(settled && last > 0, "{io:?}: the forgeries at the live socket were read and counted: {last}");
        up.release();
        client.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut buf = [0u8; 4096];
        let (n, _) = loop {
            match client.recv_from(&mut buf) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                other => break other.expect("an answer"),
            }
        };
        let m = Message::from_vec(&buf[..n]).unwrap();
        println!("{io:?}: {sent} forged replies at learned ports and the live one");
        assert_eq!(m.metadata.id, 7777);
        // On a loaded machine the flood may still cost the true reply (a full socket buffer): the
        // query then times out to SERVFAIL. What must never happen is the forged address.
        let lost = m.metadata.response_code == ResponseCode::ServFail;
        if !lost {
            assert_eq!(first_a(&m), Some([198, 51, 100, 7]), "{io:?}: a forged answer reached the client");
        }
        let again = udp_query_from(&client, t.addr, &query("target.forged.test.", RecordType::A, 8888, None));
        assert_eq!(first_a(&again), Some([198, 51, 100, 7]), "{io:?}: a forged answer reached the cache");
        assert_eq!(up.count(), if lost { 66 } else { 65 }, "{io:?}: the second answer came from the cache");
    }
}

/// One query from `socket` to `to`; the reply parsed.
fn udp_query_from(socket: &UdpSocket, to: SocketAddr, packet: &[u8]) -> Message {
    socket.send_to(packet, to).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        let (n, _) = match socket.recv_from(&mut buf) {
            // A thread that made an io_uring can see EINTR while the kernel tears a ring down.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => other
                .unwrap_or_else(|e| panic!("no answer to {} within 2 s: {e}", common::upstream::question_name(packet))),
        };
        let m = Message::from_vec(&buf[..n]).unwrap();
        if m.metadata.id == u16::from_be_bytes([packet[0], packet[1]]) {
            return m;
        }
    }
}

/// An IPv4 and an IPv6 upstream configured together: both are used and both answers arrive.
#[test]
fn ipv4_and_ipv6_upstreams_together() {
    if !require(UdpSocket::bind("[::1]:0").is_ok(), "IPv6 loopback (::1)") {
        return;
    }
    for io in backends() {
        let v4 = Hostile::start("127.0.0.1", Script::default());
        let v6 = Hostile::start("::1", Script::default());
        let t = TestServer::start(&relay_config(&[v4.addr, v6.addr], "timeout_ms = 1000"), io);
        let client = udp_client();
        for i in 0..8u16 {
            let m = udp_query_from(&client, t.addr, &query(&format!("d{i}.dual.test."), RecordType::A, i, None));
            assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{io:?}: query {i}");
        }
        assert_eq!((v4.count(), v6.count()), (4, 4), "{io:?}: round robin over both families, no retries");
    }
}

/// A 3,000-byte UDP reply (TC=0) is used, not dropped: the client gets TC=1 at once over UDP and
/// the whole answer over TCP.
#[test]
fn an_oversize_udp_reply_is_not_dropped() {
    for io in backends() {
        let up = Hostile::start("127.0.0.1", Script { size: 3000, ..Script::default() });
        let t = TestServer::start(&relay_config(&[up.addr], "timeout_ms = 3000"), io);
        let start = Instant::now();
        let m = udp_query(t.addr, &query("big.oversize.test.", RecordType::A, 1, Some(1232)));
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{io:?}");
        assert!(m.metadata.truncation, "{io:?}: too big for the client: TC");
        assert!(start.elapsed() < Duration::from_millis(1000), "{io:?}: answered without waiting for a timeout");
        let mut s = TcpStream::connect(t.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let r = tcp_exchange(&mut s, &[query("big.oversize.test.", RecordType::A, 2, None)]);
        let full = Message::from_vec(&r[0]).unwrap();
        assert!(full.answers.len() > 150, "{io:?}: {} records over TCP", full.answers.len());
        let server = t.server.as_ref().unwrap();
        assert!(
            // At least the UDP reply; the TCP client's question is answered from the cache, or,
            // if a loaded machine let the entry's TTL run out first, asked again (and counted).
            poll(Duration::from_secs(1), || server.totals().relay_oversize >= 1).is_some(),
            "{io:?}: counted: {}",
            server.totals()
        );
    }
}

/// An upstream reply with TC=1 is asked again over TCP, and the client gets the whole answer.
#[test]
fn a_truncated_upstream_reply_is_retried_over_tcp() {
    for io in backends() {
        let up = Hostile::start("127.0.0.1", Script { truncate_udp: true, ..Script::default() });
        let t = TestServer::start(&relay_config(&[up.addr], "timeout_ms = 2000"), io);
        let m = udp_query(t.addr, &query("tc.retry.test.", RecordType::A, 1, Some(1232)));
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{io:?}");
        assert!(!m.metadata.truncation, "{io:?}: the TCP answer fits the client");
        assert_eq!(first_a(&m), Some([198, 51, 100, 7]), "{io:?}");
        assert_eq!((up.count(), up.tcp_queries.load(Ordering::Relaxed)), (1, 1), "{io:?}: one UDP, one TCP");
        let server = t.server.as_ref().unwrap();
        assert!(
            poll(Duration::from_secs(1), || server.totals().relay_tcp_retries == 1).is_some(),
            "{io:?}: counted: {}",
            server.totals()
        );
    }
}

/// CD=1 and CD=0 questions are cached (and deduplicated) apart: an upstream that answers them
/// differently is asked once for each.
#[test]
fn the_cd_bit_is_part_of_the_cache_key() {
    for io in backends() {
        let up = Hostile::start("127.0.0.1", Script::default());
        let t = TestServer::start(&relay_config(&[up.addr], ""), io);
        let with_cd = |id: u16| {
            let mut q = query("cd.test.", RecordType::A, id, None);
            q[3] |= 0x10;
            q
        };
        // One client socket, so one worker (and one cache) sees every query.
        let client = udp_client();
        let plain = udp_query_from(&client, t.addr, &query("cd.test.", RecordType::A, 1, None));
        assert_eq!(first_a(&plain), Some([198, 51, 100, 7]), "{io:?}");
        let cd = udp_query_from(&client, t.addr, &with_cd(2));
        assert_eq!(first_a(&cd), Some([198, 51, 100, 8]), "{io:?}: CD=1 is not served the CD=0 answer");
        assert!(cd.metadata.checking_disabled, "{io:?}");
        let plain = udp_query_from(&client, t.addr, &query("cd.test.", RecordType::A, 3, None));
        assert_eq!(first_a(&plain), Some([198, 51, 100, 7]), "{io:?}");
        assert_eq!(first_a(&udp_query_from(&client, t.addr, &with_cd(4))), Some([198, 51, 100, 8]), "{io:?}");
        assert_eq!(up.count(), 2, "{io:?}: one upstream query per CD value, then the cache");
    }
}

/// SERVFAIL from an upstream is a failure: after three the upstream rests, and meanwhile each
/// client is answered by the other upstream.
#[test]
fn servfail_counts_toward_the_failure_limit() {
    for io in backends() {
        let bad = Hostile::start("127.0.0.1", Script { servfail: true, ..Script::default() });
        let good = Hostile::start("127.0.0.1", Script::default());
        let t = TestServer::start(&relay_config(&[bad.addr, good.addr], ""), io);
        let client = udp_client();
        for i in 0..12u16 {
            let m = udp_query_from(&client, t.addr, &query(&format!("s{i}.servfail.test."), RecordType::A, i, None));
            assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{io:?}: query {i} answered by the other");
        }
        assert_eq!(bad.count(), 3, "{io:?}: the SERVFAIL upstream rests after three");
    }
}

/// A TTL over `max_ttl_s` is cut to it, in the first answer and in cached ones.
#[test]
fn cached_ttls_are_capped() {
    for io in backends() {
        let up = Hostile::start("127.0.0.1", Script { ttl: 172_800, ..Script::default() });
        let t = TestServer::start(&relay_config(&[up.addr], "max_ttl_s = 60"), io);
        let client = udp_client();
        for id in 1..=2u16 {
            let m = udp_query_from(&client, t.addr, &query("long.ttl.test.", RecordType::A, id, None));
            let ttl = m.answers[0].ttl;
            assert!(ttl <= 60, "{io:?}: answer {id} has TTL {ttl}");
        }
        assert_eq!(up.count(), 1, "{io:?}: the second answer came from the cache");
    }
}

/// An upstream that does not preserve the letter case of the question still answers: after a few
/// queries it is used without 0x20, and queries stop waiting for a timeout.
#[test]
fn an_upstream_that_lowercases_is_used_without_0x20() {
    for io in backends() {
        let up = Hostile::start("127.0.0.1", Script { lower_case: true, ..Script::default() });
        let t = TestServer::start(&relay_config(&[up.addr], "timeout_ms = 200"), io);
        let client = udp_client();
        let mut took = Vec::new();
        for i in 0..10u16 {
            let start = Instant::now();
            let m = udp_query_from(&client, t.addr, &query(&format!("Case{i}.Lower.Test."), RecordType::A, i, None));
            took.push(start.elapsed());
            assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{io:?}: query {i}");
            assert_eq!(m.queries[0].name().to_ascii(), format!("Case{i}.Lower.Test."), "the client's own case");
        }
        println!("{io:?}: {took:?}");
        assert!(took[5..].iter().all(|d| *d < Duration::from_millis(100)), "{io:?}: {took:?}");
        let totals = t.server.as_ref().unwrap().totals();
        assert!(totals.relay_case_mismatch >= 3 && totals.relay_no_caps == 1, "{io:?}: {totals}");
    }
}

/// A datagram longer than `MAX_DATAGRAM` is dropped unanswered by both backends alike, one byte
/// over as much as far over; one of exactly that length is answered by both.
#[test]
fn an_over_long_query_is_dropped_by_both_backends() {
    for io in backends() {
        let t = TestServer::start(&config_text(free_port(), 2, ""), io);
        let padded = |len: usize, id: u16| {
            let mut q = query("sip.example.test.", RecordType::A, id, None);
            q.resize(len, 0);
            q
        };
        let longest = dnlb::io::MAX_DATAGRAM;
        assert!(udp_raw(t.addr, &padded(longest, 1), Duration::from_secs(2)).is_some(), "{io:?}: the longest taken");
        for (id, len) in [(2, longest + 1), (3, 3000)] {
            let reply = udp_raw(t.addr, &padded(len, id), Duration::from_millis(300));
            assert!(reply.is_none(), "{io:?}: answered a {len}-byte datagram");
        }
        let sip = udp_query(t.addr, &query("sip.example.test.", RecordType::A, 4, None));
        assert_eq!(sip.answers.len(), 2);
        let totals = t.server.as_ref().unwrap().totals();
        assert_eq!(totals.drop_oversize, 2, "{io:?}: counted: {totals}");
    }
}
