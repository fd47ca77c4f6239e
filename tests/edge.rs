//! The edge against hostile or careless clients, over real loopback sockets, both I/O backends:
//! DNS over TCP in the workers' event loops (limits, eviction, deadlines, malformed streams,
//! slowloris, rotation), response rate limiting, and fair shares of the relay.

mod common;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use common::upstream::{Behaviour, FakeUpstream};
use common::*;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};

/// One worker (so rotation and limits are exact), `servers` SIP servers, and `extra` lines at
/// the end of `[server]`, then `tail` after the service.
fn edge_config(port: u16, servers: usize, extra: &str, tail: &str) -> String {
    let mut s = format!(
        "[server]\nlisten = [\"127.0.0.1:{port}\"]\nworkers = 1\npin_workers = false\n{extra}\n\n[[service]]\nname = \"sip.example.test\"\n"
    );
    for i in 0..servers {
        s.push_str(&format!("[[service.server]]\naddress = \"127.0.0.{}\"\ntransports = [\"udp\", \"tcp\"]\n", 11 + i));
    }
    s.push_str(tail);
    s
}

fn first_address(m: &Message) -> Option<IpAddr> {
    m.answers.iter().find_map(|r| match &r.data {
        RData::A(a) => Some(IpAddr::V4(a.0)),
        _ => None,
    })
}

fn framed(q: &[u8]) -> Vec<u8> {
    let mut v = (q.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(q);
    v
}

/// Reads one length-prefixed reply, or `None` if the connection closes or nothing comes.
fn read_reply(s: &mut TcpStream) -> Option<Message> {
    let mut len = [0u8; 2];
    read_all(s, &mut len)?;
    let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
    read_all(s, &mut buf)?;
    Message::from_vec(&buf).ok()
}

/// `read_exact`, retrying when a signal interrupts (a thread that set up an io_uring sees EINTR
/// while the kernel tears a ring down).
fn read_all(s: &mut TcpStream, buf: &mut [u8]) -> Option<()> {
    let mut got = 0;
    while got < buf.len() {
        match s.read(&mut buf[got..]) {
            Ok(0) => return None,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    Some(())
}

/// Whether the server closed `s` (EOF) within `wait`.
fn closed_within(s: &mut TcpStream, wait: Duration) -> bool {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 64];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
}

/// A TCP connection from `source` (an address on lo) to `to`.
fn connect_from(source: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    s.bind(&SocketAddr::new(source, 0).into())?;
    s.connect_timeout(&to.into(), Duration::from_secs(2))?;
    Ok(s.into())
}

/// RFC 7766 §6.2.3: an idle connection is closed after the idle time; when the table is full, a
/// new connection is taken and the longest-idle one closed to make room.
#[test]
fn tcp_idle_connections_close_and_the_longest_idle_makes_room() {
    for io in backends() {
        let extra = "tcp_idle_timeout_ms = 500\ntcp_max_connections = 4";
        let t = TestServer::start(&edge_config(free_port(), 2, extra, ""), io);
        let mut idle = TcpStream::connect(t.addr).unwrap();
        let started = Instant::now();
        assert!(closed_within(&mut idle, Duration::from_secs(4)), "{io:?}: idle connection closed");
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(400), "{io:?}: closed after {waited:?}");

        let mut open: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(t.addr).unwrap()).collect();
        for (i, s) in open.iter_mut().enumerate() {
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let r = tcp_exchange(s, &[query("sip.example.test.", RecordType::A, i as u16, None)]);
            assert_eq!(Message::from_vec(&r[0]).unwrap().metadata.id, i as u16);
            std::thread::sleep(Duration::from_millis(20));
        }
        // A fifth: served, and the connection idle longest (the first) is closed for it.
        let mut fifth = TcpStream::connect(t.addr).unwrap();
        fifth.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let r = tcp_exchange(&mut fifth, &[query("sip.example.test.", RecordType::A, 9, None)]);
        assert_eq!(Message::from_vec(&r[0]).unwrap().metadata.id, 9, "{io:?}");
        assert!(closed_within(&mut open[0], Duration::from_millis(500)), "{io:?}: the longest idle was closed");
        for (i, s) in open.iter_mut().enumerate().skip(1) {
            let r = tcp_exchange(s, &[query("sip.example.test.", RecordType::A, 20 + i as u16, None)]);
            assert_eq!(Message::from_vec(&r[0]).unwrap().metadata.id, 20 + i as u16, "{io:?}: the others stay");
        }
        let totals = settled_totals(&t, |t| t.tcp_closed_evicted == 1);
        assert!(totals.tcp_closed_idle >= 1 && totals.tcp_closed_evicted == 1, "{io:?}: {totals}");
    }
}

/// Round robin rotates over TCP too: one-query connections (the usual retry after TC=1) see
/// every server first in turn, because UDP and TCP share the worker's rotation.
#[test]
fn tcp_round_robin_rotates_across_connections() {
    for io in backends() {
        let t = TestServer::start(&edge_config(free_port(), 3, "", ""), io);
        let mut firsts = Vec::new();
        for i in 0..30u16 {
            let mut s = TcpStream::connect(t.addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let r = tcp_exchange(&mut s, &[query("sip.example.test.", RecordType::A, i, None)]);
            firsts.push(first_address(&Message::from_vec(&r[0]).unwrap()).unwrap());
        }
        let order: Vec<IpAddr> =
            ["127.0.0.11", "127.0.0.12", "127.0.0.13"].iter().map(|a| a.parse().unwrap()).collect();
        let start = order.iter().position(|a| *a == firsts[0]).unwrap();
        for (i, f) in firsts.iter().enumerate() {
            assert_eq!(*f, order[(start + i) % 3], "{io:?}: {firsts:?}");
        }
        // And UDP continues the same rotation.
        let m = udp_query(t.addr, &query("sip.example.test.", RecordType::A, 99, None));
        assert_eq!(first_address(&m), Some(order[start % 3]), "{io:?}");
    }
}

/// Malformed streams get the RFC 7766 behaviour and touch no other connection: a zero length
/// closes the connection, a length larger than what arrives is closed at the message deadline
/// without a reply, a query split over segments and pipelined queries are answered, a
/// connection closed mid-message is forgotten.
#[test]
fn malformed_tcp_streams_affect_only_themselves() {
    for io in backends() {
        let extra = "tcp_query_timeout_ms = 300\ntcp_idle_timeout_ms = 5000";
        let t = TestServer::start(&edge_config(free_port(), 2, extra, ""), io);
        let q = query("sip.example.test.", RecordType::A, 7, None);
        let mut bystander = TcpStream::connect(t.addr).unwrap();
        bystander.set_read_timeout(Some(Duration::from_secs(2))).unwrap();

        let mut zero = TcpStream::connect(t.addr).unwrap();
        zero.write_all(&[0, 0]).unwrap();
        assert!(closed_within(&mut zero, Duration::from_secs(2)), "{io:?}: length 0 closes");

        let mut short = TcpStream::connect(t.addr).unwrap();
        let mut partial = framed(&q);
        partial[1] += 10; // claims ten bytes more than it sends
        short.write_all(&partial).unwrap();
        let started = Instant::now();
        assert!(closed_within(&mut short, Duration::from_secs(3)), "{io:?}: incomplete message closed");
        assert!(started.elapsed() >= Duration::from_millis(250), "{io:?}: at the message deadline, not before");

        let mut split = TcpStream::connect(t.addr).unwrap();
        split.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let whole = framed(&q);
        for chunk in [&whole[..1], &whole[1..5], &whole[5..]] {
            split.write_all(chunk).unwrap();
            std::thread::sleep(Duration::from_millis(40));
        }
        assert_eq!(read_reply(&mut split).map(|m| m.metadata.id), Some(7), "{io:?}: split query answered");

        let mut pipelined = TcpStream::connect(t.addr).unwrap();
        pipelined.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let batch: Vec<u8> =
            (0..20u16).flat_map(|i| framed(&query("sip.example.test.", RecordType::A, 100 + i, None))).collect();
        pipelined.write_all(&batch).unwrap();
        let ids: Vec<u16> = (0..20).filter_map(|_| read_reply(&mut pipelined)).map(|m| m.metadata.id).collect();
        assert_eq!(ids, (100..120).collect::<Vec<u16>>(), "{io:?}: pipelined, in order");

        let mut gone = TcpStream::connect(t.addr).unwrap();
        gone.write_all(&whole[..whole.len() / 2]).unwrap();
        drop(gone);

        let mut oversize = TcpStream::connect(t.addr).unwrap();
        oversize.write_all(&[0x20, 0x00]).unwrap();
        assert!(closed_within(&mut oversize, Duration::from_secs(2)), "{io:?}: an 8 KiB query is refused");

        let r = tcp_exchange(&mut bystander, std::slice::from_ref(&q));
        assert_eq!(Message::from_vec(&r[0]).unwrap().metadata.id, 7, "{io:?}: the bystander is still served");
        // Counters are published after each wake-up; give the last one a moment.
        let totals = settled_totals(&t, |t| t.tcp_closed_oversize == 1);
        assert!(
            totals.tcp_closed_malformed == 1
                && totals.tcp_closed_message_timeout == 1
                && totals.tcp_closed_oversize == 1,
            "{io:?}: {totals}"
        );
    }
}

/// The server's totals once `done` holds (workers publish their counters after each wake-up), or
/// as they are after a second.
fn settled_totals(t: &TestServer, done: impl Fn(&dnlb::counters::Totals) -> bool) -> dnlb::counters::Totals {
    let start = Instant::now();
    loop {
        let totals = t.server.as_ref().unwrap().totals();
        if done(&totals) || start.elapsed() > Duration::from_secs(1) {
            return totals;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task").map(|d| d.count()).unwrap_or(0)
}

/// Slowloris: 2,000 connections from 20 addresses, each sending a byte a second. No thread per
/// connection, each is closed at its message deadline, and meanwhile a new TCP client is answered
/// within 100 ms and UDP answers flow.
#[test]
fn slowloris_neither_starves_tcp_nor_grows_threads() {
    dnlb::io::raise_fd_limit();
    for io in backends() {
        slowloris(io);
    }
}

fn slowloris(io: dnlb::config::IoMode) {
    let extra = "tcp_query_timeout_ms = 2000\ntcp_max_connections_per_client = 200";
    let t = TestServer::start(&edge_config(free_port(), 2, extra, ""), io);
    let before = thread_count();
    let mut slow: Vec<TcpStream> = Vec::new();
    for k in 0..2000 {
        let source: IpAddr = format!("127.0.1.{}", 1 + k % 20).parse().unwrap();
        let s = connect_from(source, t.addr).unwrap_or_else(|e| panic!("connection {k}: {e}"));
        s.set_nonblocking(true).unwrap();
        slow.push(s);
    }
    let start = Instant::now();
    let mut worst_tcp = Duration::ZERO;
    let mut worst_udp = Duration::ZERO;
    let mut second = 0;
    while start.elapsed() < Duration::from_millis(3500) {
        // One byte a second on every connection: a length prefix announcing 256 bytes, then
        // the message, a byte at a time.
        if start.elapsed() >= Duration::from_secs(second) {
            let byte = if second == 0 { 1 } else { 0 };
            for s in &mut slow {
                let _sent = s.write(&[byte]);
            }
            second += 1;
        }
        let asked = Instant::now();
        let mut fresh = connect_from("127.0.2.1".parse().unwrap(), t.addr).unwrap();
        fresh.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let r = tcp_exchange(&mut fresh, &[query("sip.example.test.", RecordType::A, 1, None)]);
        assert_eq!(Message::from_vec(&r[0]).unwrap().metadata.response_code, ResponseCode::NoError);
        worst_tcp = worst_tcp.max(asked.elapsed());
        let asked = Instant::now();
        udp_query(t.addr, &query("sip.example.test.", RecordType::A, 2, None));
        worst_udp = worst_udp.max(asked.elapsed());
        assert!(thread_count() <= before, "threads grew from {before} to {}", thread_count());
        std::thread::sleep(Duration::from_millis(100));
    }
    let totals = t.server.as_ref().unwrap().totals();
    println!("{io:?}: slowloris: worst new TCP client {worst_tcp:?}, worst UDP {worst_udp:?}, {totals}");
    assert!(worst_tcp < Duration::from_millis(100), "{io:?}: a new TCP client waited {worst_tcp:?}");
    assert!(totals.tcp_closed_message_timeout >= 1900, "{io:?}: slow connections closed at their deadline: {totals}");
}

/// RRL: a flood from 127.0.9.0/24 gets about the configured rate (plus slips), while 127.0.8.1
/// at 10 queries a second gets every answer.
#[test]
fn rrl_limits_a_flooding_prefix_and_spares_the_rest() {
    for io in backends() {
        let tail = "\n[rrl]\nresponses_per_second = 50\nslip = 2\n";
        let t = TestServer::start(&edge_config(free_port(), 2, "", tail), io);
        let flooders: Vec<UdpSocket> = (1..=4)
            .map(|i| {
                let s = UdpSocket::bind(format!("127.0.9.{i}:0")).unwrap();
                s.set_nonblocking(true).unwrap();
                s
            })
            .collect();
        let victim = UdpSocket::bind("127.0.8.1:0").unwrap();
        victim.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let q = query("sip.example.test.", RecordType::A, 3, None);
        let (mut full, mut slipped, mut answered_victim) = (0u32, 0u32, 0u32);
        let start = Instant::now();
        let mut buf = [0u8; 1500];
        let mut drain = |flooders: &[UdpSocket], full: &mut u32, slipped: &mut u32| {
            for s in flooders {
                while let Ok(n) = s.recv(&mut buf) {
                    let m = Message::from_vec(&buf[..n]).unwrap();
                    if m.metadata.truncation && m.answers.is_empty() {
                        *slipped += 1;
                    } else {
                        *full += 1;
                    }
                }
            }
        };
        for tick in 0..10 {
            for k in 0..200 {
                let s = &flooders[k % 4];
                let _sent = s.send_to(&q, t.addr);
            }
            victim.send_to(&query("sip.example.test.", RecordType::A, tick, None), t.addr).unwrap();
            let mut vbuf = [0u8; 1500];
            if let Some((n, _)) = recv_retry(&victim, &mut vbuf) {
                let m = Message::from_vec(&vbuf[..n]).unwrap();
                if !m.metadata.truncation && m.answers.len() == 2 {
                    answered_victim += 1;
                }
            }
            drain(&flooders, &mut full, &mut slipped);
            let next = start + Duration::from_millis(100 * (u64::from(tick) + 1));
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
        std::thread::sleep(Duration::from_millis(50));
        drain(&flooders, &mut full, &mut slipped);
        let secs = start.elapsed().as_secs_f64();
        let totals = t.server.as_ref().unwrap().totals();
        println!("{io:?}: flood of 2000 in {secs:.2} s: {full} answered, {slipped} slipped; victim {answered_victim}/10; {totals}");
        assert_eq!(answered_victim, 10, "{io:?}: the other prefix got every answer");
        let allowed = 50.0 * (1.0 + secs) + 5.0;
        assert!(f64::from(full) <= allowed, "{io:?}: {full} full answers to the flood, at most {allowed:.0}");
        assert!(full >= 40, "{io:?}: the flood still gets its rate: {full}");
        assert!(slipped >= 300 && totals.rrl_dropped >= 300, "{io:?}: every second over-limit reply slips: {totals}");
    }
}

/// Fair relay: one prefix flooding names an upstream never answers holds only its share of the
/// pending table; another client's relayed names are all answered meanwhile. With the share at
/// 100 % the same flood does starve it (the test can fail).
#[test]
fn one_prefix_cannot_starve_the_relay() {
    let hole = FakeUpstream::start(Behaviour::BlackHole);
    let live = FakeUpstream::start(Behaviour::ForgeThenAnswer { forged: 0, calm: 0 });
    // The protected run and the control run, one on each backend.
    for ((share, starved), io) in [(25, false), (100, true)].into_iter().zip(backends().into_iter().rev().cycle()) {
        let tail = format!(
            "\n[relay]\nupstreams = [\"{}\"]\ntimeout_ms = 2000\nmax_pending = 100\nmax_pending_per_prefix_percent = {share}\n\
             [[relay.route]]\ndomain = \"hole.test\"\nupstreams = [\"{}\"]\n",
            live.addr, hole.addr
        );
        let t = TestServer::start(&edge_config(free_port(), 2, "", &tail), io);
        let flood = UdpSocket::bind("127.0.5.1:0").unwrap();
        for i in 0..500u16 {
            flood.send_to(&query(&format!("n{i}.hole.test."), RecordType::A, i, None), t.addr).unwrap();
        }
        std::thread::sleep(Duration::from_millis(200));
        let client = UdpSocket::bind("127.0.6.1:0").unwrap();
        client.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut ok = 0;
        for i in 0..20u16 {
            client.send_to(&query(&format!("w{i}.live.test."), RecordType::A, i, None), t.addr).unwrap();
            let mut buf = [0u8; 1500];
            let (n, _) = recv_retry(&client, &mut buf).expect("a reply");
            if Message::from_vec(&buf[..n]).unwrap().metadata.response_code == ResponseCode::NoError {
                ok += 1;
            }
        }
        let totals = t.server.as_ref().unwrap().totals();
        println!("{io:?}, share {share} %: the other client got {ok}/20 answers; {totals}");
        if starved {
            assert!(ok < 20, "with no share limit the flood takes the whole table: {totals}");
        } else {
            assert_eq!(ok, 20, "the other client is served: {totals}");
            assert!(totals.relay_prefix_full >= 400, "{totals}");
        }
    }
}

/// Distinct source addresses exist on lo for the tests above (127/8 is all loopback on Linux).
#[test]
fn loopback_sources_are_usable() {
    let seen: HashSet<IpAddr> = ["127.0.1.7", "127.0.9.3"]
        .iter()
        .map(|a| UdpSocket::bind(format!("{a}:0")).unwrap().local_addr().unwrap().ip())
        .collect();
    assert_eq!(seen.len(), 2);
}
