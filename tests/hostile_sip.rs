//! Hostile SIP servers against the real `dnlb` binary, over UDP and TCP on loopback, on IPv4
//! and IPv6 targets.
//!
//! For each hostile behaviour a fresh dnlb probes the hostile server and an honest neighbour.
//! While the hostile server does its worst, dnlb must stay alive with its CPU low; then the
//! neighbour goes silent and must still leave the answers within interval × fall + timeout; then
//! SIGTERM must stop dnlb within 2 s. Every loop here is bounded in count and time.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::free_port;
use common::process::{cpu_time, Dnlb};
use common::sip::{common_port, reply, Mode, SipResponder};

/// What a hostile server does with each probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hostile {
    /// 503 with this Retry-After (u64::MAX once killed the process).
    RetryAfter(&'static str),
    /// `Content-Length: 2^64 - 56`, which once wrapped the framing sum and spun the prober.
    ContentLengthWrap,
    /// A true 200, one byte every 100 ms.
    Drip,
    /// 1 MiB of headers over TCP; a 60 KB datagram of header lines over UDP.
    HugeHeaders,
    /// Random bytes.
    Garbage,
    /// Accepts and never answers, never closes.
    NeverClose,
    /// Half a true reply, then the connection closes.
    CloseMidway,
    /// 100,000 random datagrams a second at the prober's source (UDP); random bytes as fast as
    /// the connection takes them (TCP).
    Flood,
}

const ALL: [Hostile; 9] = [
    Hostile::RetryAfter("18446744073709551615"),
    Hostile::RetryAfter("1000000000000"),
    Hostile::ContentLengthWrap,
    Hostile::Drip,
    Hostile::HugeHeaders,
    Hostile::Garbage,
    Hostile::NeverClose,
    Hostile::CloseMidway,
    Hostile::Flood,
];

/// How long any hostile action may run, whatever happens.
const HOSTILE_LIMIT: Duration = Duration::from_secs(6);

/// A deterministic xorshift stream of bytes.
fn noise(seed: &mut u64, out: &mut [u8]) {
    for b in out {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *b = *seed as u8;
    }
}

/// The request's header block, as text.
fn request_text(buf: &[u8]) -> String {
    String::from_utf8_lossy(buf).into_owned()
}

/// A hostile SIP server on one address, UDP or TCP.
struct HostileServer {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// Probes it saw.
    requests: Arc<AtomicU64>,
}

impl HostileServer {
    fn start(addr: SocketAddr, tcp: bool, behaviour: Hostile) -> HostileServer {
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicU64::new(0));
        let threads = if tcp {
            tcp_server(addr, behaviour, stop.clone(), requests.clone())
        } else {
            udp_server(addr, behaviour, stop.clone(), requests.clone())
        };
        HostileServer { stop, threads, requests }
    }
}

impl Drop for HostileServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _joined = t.join();
        }
    }
}

fn udp_server(
    addr: SocketAddr,
    behaviour: Hostile,
    stop: Arc<AtomicBool>,
    requests: Arc<AtomicU64>,
) -> Vec<JoinHandle<()>> {
    let socket = Arc::new(UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}")));
    socket.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    let target: Arc<Mutex<Option<SocketAddr>>> = Arc::new(Mutex::new(None));
    let mut threads = Vec::new();
    if behaviour == Hostile::Flood {
        // 100,000 datagrams a second, in bursts of 1,000 every 10 ms, at the latest prober port.
        let (socket, target, stop) = (socket.clone(), target.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            let started = Instant::now();
            let mut seed = 0x9e37_79b9_7f4a_7c15u64;
            let mut datagram = [0u8; 200];
            while !stop.load(Ordering::Relaxed) && started.elapsed() < HOSTILE_LIMIT {
                let burst = Instant::now();
                if let Some(to) = *target.lock().unwrap() {
                    for _ in 0..1000 {
                        noise(&mut seed, &mut datagram);
                        let _sent = socket.send_to(&datagram, to);
                    }
                }
                std::thread::sleep(Duration::from_millis(10).saturating_sub(burst.elapsed()));
            }
        }));
    }
    threads.push(std::thread::spawn(move || {
        let started = Instant::now();
        let mut buf = [0u8; 4096];
        let mut seed = 7u64;
        while !stop.load(Ordering::Relaxed) && started.elapsed() < HOSTILE_LIMIT {
            let Ok((n, from)) = socket.recv_from(&mut buf) else { continue };
            requests.fetch_add(1, Ordering::Relaxed);
            *target.lock().unwrap() = Some(from);
            let request = request_text(&buf[..n]);
            let send = |bytes: &[u8]| {
                let _sent = socket.send_to(bytes, from);
            };
            match behaviour {
                Hostile::RetryAfter(v) => {
                    send(reply(&request, "503 Service Unavailable", &format!("Retry-After: {v}\r\n")).as_bytes())
                }
                Hostile::ContentLengthWrap => {
                    send(b"SIP/2.0 200 OK\r\nContent-Length: 18446744073709551560\r\n\r\n");
                    send(reply(&request, "200 OK", "Content-Length: 18446744073709551560\r\n").as_bytes());
                }
                Hostile::Drip => {
                    // One byte per datagram, 100 ms apart, until the next probe comes.
                    for b in reply(&request, "200 OK", "").bytes().take(3) {
                        send(&[b]);
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
                Hostile::HugeHeaders => {
                    let pad = "X-Pad: 0123456789abcdef0123456789abcdef\r\n".repeat(1400);
                    send(reply(&request, "200 OK", &pad).as_bytes());
                }
                Hostile::Garbage => {
                    let mut g = [0u8; 1200];
                    noise(&mut seed, &mut g);
                    send(&g);
                }
                Hostile::NeverClose | Hostile::Flood => {}
                Hostile::CloseMidway => {
                    let r = reply(&request, "200 OK", "");
                    send(&r.as_bytes()[..r.len() / 2]);
                }
            }
        }
    }));
    threads
}

fn tcp_server(
    addr: SocketAddr,
    behaviour: Hostile,
    stop: Arc<AtomicBool>,
    requests: Arc<AtomicU64>,
) -> Vec<JoinHandle<()>> {
    let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    listener.set_nonblocking(true).unwrap();
    vec![std::thread::spawn(move || {
        let started = Instant::now();
        let mut connections: Vec<JoinHandle<()>> = Vec::new();
        while !stop.load(Ordering::Relaxed) && started.elapsed() < HOSTILE_LIMIT {
            let Ok((stream, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            };
            requests.fetch_add(1, Ordering::Relaxed);
            let stop = stop.clone();
            connections.retain(|c| !c.is_finished());
            if connections.len() < 64 {
                connections.push(std::thread::spawn(move || serve_tcp(stream, behaviour, &stop, started)));
            }
        }
        for c in connections {
            let _joined = c.join();
        }
    })]
}

fn serve_tcp(mut stream: TcpStream, behaviour: Hostile, stop: &AtomicBool, started: Instant) {
    stream.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    stream.set_write_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut buf = vec![0u8; 4096];
    let mut got = 0;
    while !request_text(&buf[..got]).contains("\r\n\r\n") && got < buf.len() {
        match stream.read(&mut buf[got..]) {
            Ok(0) | Err(_) => return,
            Ok(n) => got += n,
        }
    }
    let request = request_text(&buf[..got]);
    let live = || !stop.load(Ordering::Relaxed) && started.elapsed() < HOSTILE_LIMIT;
    let mut seed = 11u64;
    match behaviour {
        Hostile::RetryAfter(v) => {
            let _sent = stream
                .write_all(reply(&request, "503 Service Unavailable", &format!("Retry-After: {v}\r\n")).as_bytes());
        }
        Hostile::ContentLengthWrap => {
            // The sender does not even need the probe's branch.
            let _sent = stream.write_all(b"SIP/2.0 200 OK\r\nContent-Length: 18446744073709551560\r\n\r\n");
        }
        Hostile::Drip => {
            for b in reply(&request, "200 OK", "").bytes() {
                if !live() || stream.write_all(&[b]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Hostile::HugeHeaders => {
            let mut head = reply(&request, "200 OK", "").replace("Content-Length: 0\r\n\r\n", "");
            head.push_str(&"X-Pad: 0123456789abcdef0123456789abcdef\r\n".repeat(1024 * 1024 / 41));
            let _sent = stream.write_all(head.as_bytes());
        }
        Hostile::Garbage => {
            let mut g = vec![0u8; 4096];
            noise(&mut seed, &mut g);
            let _sent = stream.write_all(&g);
        }
        Hostile::NeverClose => {}
        Hostile::CloseMidway => {
            let r = reply(&request, "200 OK", "");
            let _sent = stream.write_all(&r.as_bytes()[..r.len() / 2]);
            return;
        }
        Hostile::Flood => {
            let mut g = vec![0u8; 16 * 1024];
            for _ in 0..4096 {
                noise(&mut seed, &mut g);
                if !live() || stream.write_all(&g).is_err() {
                    return;
                }
            }
        }
    }
    // Hold the connection open (never close) until dnlb does, or the test ends.
    while live() {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

/// dnlb on `config` with the given I/O backend and environment.
fn start(config: &str, io: &str, env: &[(&str, &str)]) -> Dnlb {
    let dir = std::env::temp_dir().join(format!("dnlb-hostile-{}-{}", std::process::id(), free_port()));
    Dnlb::spawn_with(dir, config, &["--io", io], env)
}

/// interval 200 ms, timeout 100 ms, fall 2: the neighbour must go within 200 × 2 + 100 ms.
const PROBE: &str = "interval_ms = 200\ntimeout_ms = 100\nretransmit_ms = 30\nrise = 1\nfall = 2";
const BOUND: Duration = Duration::from_millis(200 * 2 + 100);

fn config(dns_port: u16, sip_port: u16, hostile: &str, transport: &str, neighbour: &str) -> String {
    format!(
        "[server]\nlisten = [\"127.0.0.1:{dns_port}\"]\nworkers = 1\npin_workers = false\ntcp = false\n\n[probe]\n{PROBE}\n\n\
         [[service]]\nname = \"sip.example.test\"\nall_down = \"nodata\"\n\
         [[service.server]]\naddress = \"{hostile}\"\nport = {sip_port}\ntransports = [\"{transport}\"]\n\
         [[service.server]]\naddress = \"{neighbour}\"\nport = {sip_port}\ntransports = [\"udp\"]\n"
    )
}

/// One scenario: returns a line for the summary.
fn scenario(behaviour: Hostile, tcp: bool, hostile_ip: &str, neighbour_ip: &str, io: &str) -> String {
    let sip_port = common_port(&[hostile_ip, neighbour_ip]);
    let neighbour =
        SipResponder::start(SocketAddr::new(neighbour_ip.parse().unwrap(), sip_port), Mode::Reply(200, None));
    let hostile = HostileServer::start(SocketAddr::new(hostile_ip.parse().unwrap(), sip_port), tcp, behaviour);
    let transport = if tcp { "tcp" } else { "udp" };
    let mut dnlb = start(&config(free_port(), sip_port, hostile_ip, transport, neighbour_ip), io, &[]);
    let neighbour_addr: IpAddr = neighbour_ip.parse().unwrap();
    let what = format!("{behaviour:?} over {transport} to {hostile_ip} (io={io})");
    assert!(
        dnlb.wait_for("sip.example.test.", Duration::from_secs(5), |a| a.contains(&neighbour_addr)).is_some(),
        "{what}: the neighbour never came up\n{}",
        dnlb.stderr()
    );
    // The hostile server does its worst for a second; dnlb's CPU is measured meanwhile.
    let cpu_before = cpu_time(&dnlb.process_stat());
    let window = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    let cpu = (cpu_time(&dnlb.process_stat()) - cpu_before).as_secs_f64() / window.elapsed().as_secs_f64();
    assert!(dnlb.child.try_wait().unwrap().is_none(), "{what}: dnlb died\n{}", dnlb.stderr());
    assert!(hostile.requests.load(Ordering::Relaxed) > 0, "{what}: the hostile server was never probed");
    // The neighbour dies: it must still leave the answers in time.
    neighbour.set(Mode::Silent);
    let removed = dnlb.wait_for("sip.example.test.", Duration::from_secs(3), |a| !a.contains(&neighbour_addr));
    let (stopped, code) = dnlb.stop();
    let line =
        format!("{what}: cpu {:.1} %, neighbour removed after {removed:?}, SIGTERM took {stopped:?}", cpu * 100.0);
    println!("{line}");
    let removed = removed.unwrap_or_else(|| panic!("{what}: the dead neighbour was never removed\n{}", dnlb.stderr()));
    // The bound plus the 5 ms polling of the answers and scheduling noise on a shared machine.
    assert!(removed <= BOUND + Duration::from_millis(250), "{what}: removed after {removed:?} (bound {BOUND:?})");
    assert!(stopped <= Duration::from_secs(2), "{what}: SIGTERM took {stopped:?}");
    assert_eq!(code, Some(0), "{what}: exit status after SIGTERM\n{}", dnlb.stderr());
    assert!(cpu < 0.5, "{what}: dnlb used {:.0} % of a core", cpu * 100.0);
    line
}

#[test]
fn hostile_udp_servers_cannot_crash_freeze_or_blind_the_prober() {
    for (k, behaviour) in ALL.into_iter().enumerate() {
        let io = if k % 2 == 0 { "portable" } else { "auto" };
        scenario(behaviour, false, "127.0.0.101", "127.0.0.102", io);
    }
}

#[test]
fn hostile_tcp_servers_cannot_crash_freeze_or_blind_the_prober() {
    for (k, behaviour) in ALL.into_iter().enumerate() {
        let io = if k % 2 == 0 { "auto" } else { "portable" };
        scenario(behaviour, true, "127.0.0.111", "127.0.0.112", io);
    }
}

/// The same hostile servers on an IPv6 target, [::1], beside an IPv4 neighbour: the prober's
/// bounds do not depend on the address family.
#[test]
fn hostile_udp_servers_on_ipv6_cannot_crash_freeze_or_blind_the_prober() {
    for (k, behaviour) in ALL.into_iter().enumerate() {
        let io = if k % 2 == 0 { "auto" } else { "portable" };
        scenario(behaviour, false, "::1", "127.0.1.102", io);
    }
}

#[test]
fn hostile_tcp_servers_on_ipv6_cannot_crash_freeze_or_blind_the_prober() {
    for (k, behaviour) in ALL.into_iter().enumerate() {
        let io = if k % 2 == 0 { "portable" } else { "auto" };
        scenario(behaviour, true, "::1", "127.0.1.112", io);
    }
}

/// A prober that freezes (as the Content-Length bug once made it spin) is caught by the
/// watchdog: dnlb says why and exits non-zero within three intervals (at least 1 s) so a service
/// manager restarts it, instead of serving frozen answers. SIGTERM during a freeze still ends
/// dnlb within the shutdown bound. The freeze is a debug-build test hook.
#[test]
fn a_frozen_prober_stops_dnlb_with_an_error() {
    let (hostile_ip, neighbour_ip) = ("127.0.0.121", "127.0.0.122");
    let sip_port = common_port(&[hostile_ip, neighbour_ip]);
    let _a = SipResponder::start(SocketAddr::new(hostile_ip.parse().unwrap(), sip_port), Mode::Reply(200, None));
    let _b = SipResponder::start(SocketAddr::new(neighbour_ip.parse().unwrap(), sip_port), Mode::Reply(200, None));
    let text = config(free_port(), sip_port, hostile_ip, "udp", neighbour_ip);
    let mut dnlb = start(&text, "portable", &[("DNLB_TEST_FREEZE_PROBER_MS", "1000")]);
    let started = Instant::now();
    let mut exited = None;
    while started.elapsed() < Duration::from_secs(6) {
        if let Ok(Some(status)) = dnlb.child.try_wait() {
            exited = Some((started.elapsed(), status.code()));
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let (after, code) = exited.unwrap_or_else(|| panic!("dnlb kept serving frozen answers\n{}", dnlb.stderr()));
    println!("frozen at 1 s; dnlb exited after {after:?} with {code:?}");
    assert_ne!(code, Some(0), "a frozen prober is a failure\n{}", dnlb.stderr());
    assert!(dnlb.stderr().contains("prober made no progress"), "{}", dnlb.stderr());
    // Freeze at 1 s, stall limit max(3 × 200 ms, 1 s), the main loop's 100 ms tick, start-up.
    assert!(after < Duration::from_millis(1000 + 1000 + 800), "caught after {after:?}");

    // SIGTERM while frozen, before the watchdog fires: the bounded shutdown gives up on the
    // prober and dnlb still ends.
    let text = config(free_port(), sip_port, hostile_ip, "udp", neighbour_ip);
    let mut dnlb = start(&text, "portable", &[("DNLB_TEST_FREEZE_PROBER_MS", "300")]);
    std::thread::sleep(Duration::from_millis(600));
    let (took, code) = dnlb.stop();
    println!("SIGTERM during a freeze: exited after {took:?} with {code:?}");
    assert!(took < Duration::from_millis(1500), "SIGTERM took {took:?}\n{}", dnlb.stderr());
    assert_ne!(code, Some(0));
}
