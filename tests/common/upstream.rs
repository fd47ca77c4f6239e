//! Real and fake upstream resolvers for the relay tests: nsd (Debian's package) serving a test
//! zone on a loopback port, and a scriptable in-process UDP upstream.

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::Child;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// The test zone: an A record, a CNAME chain, a name with only a TXT, a TXT too big for UDP.
pub fn zone() -> String {
    let big: String = (0..8).map(|i| format!(" \"{}\"", char::from(b'a' + i).to_string().repeat(250))).collect();
    format!(
        "$ORIGIN relay.test.\n$TTL 300\n@ IN SOA ns hostmaster 1 3600 600 86400 60\n@ IN NS ns\nns IN A 127.0.0.10\n\
         www IN A 192.0.2.1\nwww IN A 192.0.2.2\nwww IN AAAA 2001:db8::1\nalias IN CNAME alias2\nalias2 IN CNAME www\n\
         textonly IN TXT \"hello\"\nbig IN TXT{big}\n"
    )
}

/// An nsd process serving [`zone`], ended by its PID on drop.
pub struct Nsd {
    child: Child,
    dir: PathBuf,
    pub addr: SocketAddr,
}

impl Nsd {
    /// nsd on 127.0.0.1:`port` serving [`zone`] (`relay.test`).
    pub fn start(port: u16) -> Nsd {
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        Nsd::serve(addr, "relay.test", &zone())
    }

    /// nsd on `addr` serving the zone `origin` (no trailing dot) from the zone file text `zone`,
    /// its configuration and files in a temporary folder; returns once it answers the SOA.
    pub fn serve(addr: SocketAddr, origin: &str, zone: &str) -> Nsd {
        let dir = std::env::temp_dir().join(format!("dnlb-nsd-{}-{}-{}", std::process::id(), addr.ip(), addr.port()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("zone"), zone).unwrap();
        let d = dir.display();
        let (ip, port) = (addr.ip(), addr.port());
        let conf = format!(
            "server:\n  ip-address: {ip}@{port}\n  server-count: 1\n  username: \"\"\n  chroot: \"\"\n  zonesdir: \"{d}\"\n  pidfile: \"{d}/nsd.pid\"\n  xfrdfile: \"{d}/xfrd.state\"\n  zonelistfile: \"{d}/zone.list\"\n  database: \"\"\n  logfile: \"{d}/nsd.log\"\n  verbosity: 0\nremote-control:\n  control-enable: no\nzone:\n  name: {origin}\n  zonefile: zone\n"
        );
        std::fs::write(dir.join("nsd.conf"), conf).unwrap();
        let nsd =
            ["/usr/sbin/nsd", "nsd"].into_iter().find(|p| std::path::Path::new(p).exists() || *p == "nsd").unwrap();
        let log = || std::fs::read_to_string(dir.join("nsd.log")).unwrap_or_default();
        let child = super::start_dns_daemon(nsd, &dir.join("nsd.conf"), addr, origin, log);
        Nsd { child, dir, addr }
    }
}

impl Drop for Nsd {
    fn drop(&mut self) {
        super::terminate(&mut self.child);
        let _cleanup = std::fs::remove_dir_all(&self.dir);
    }
}

/// How the fake upstream treats each query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Never answers.
    BlackHole,
    /// `forged` wrong replies (wrong ID, wrong question case, from another port; each with the
    /// address 203.0.113.66), then the true reply (an A record 198.51.100.7, TTL 60); the first
    /// `calm` queries get the true reply alone.
    ForgeThenAnswer { forged: usize, calm: u64 },
}

/// A scriptable UDP upstream.
pub struct FakeUpstream {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    pub queries: Arc<AtomicU64>,
    pub forged: Arc<AtomicU64>,
}

impl FakeUpstream {
    pub fn start(behaviour: Behaviour) -> FakeUpstream {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        let addr = socket.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let queries = Arc::new(AtomicU64::new(0));
        let forged = Arc::new(AtomicU64::new(0));
        let (s, q, f) = (stop.clone(), queries.clone(), forged.clone());
        let thread = std::thread::spawn(move || {
            let other = UdpSocket::bind("127.0.0.1:0").unwrap();
            let mut buf = [0u8; 4096];
            while !s.load(Ordering::Relaxed) {
                let Ok((n, from)) = socket.recv_from(&mut buf) else { continue };
                let seen = q.fetch_add(1, Ordering::Relaxed);
                let Behaviour::ForgeThenAnswer { forged, calm } = behaviour else { continue };
                let forged = if seen < calm { 0 } else { forged };
                let query = &buf[..n];
                let Some(q_end) = question_end(query) else { continue };
                let mut reply = query[..q_end].to_vec();
                reply[2] |= 0x80; // QR
                reply[3] = 0x80; // RA, NOERROR
                reply[6..12].copy_from_slice(&[0, 1, 0, 0, 0, 0]);
                reply.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 198, 51, 100, 7]);
                // Forgeries carry another address, so one accepted would show in the answer.
                let mut forgery = reply.clone();
                let n = forgery.len();
                forgery[n - 4..].copy_from_slice(&[203, 0, 113, 66]);
                for k in 0..forged {
                    let mut bad = forgery.clone();
                    match k % 3 {
                        0 => bad[1] ^= 1 + (k % 255) as u8, // wrong ID
                        1 => bad[13] ^= 0x20,               // question case changed
                        _ => {
                            let _sent = other.send_to(&bad, from); // right bytes, wrong source port
                            f.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                    }
                    let _sent = socket.send_to(&bad, from);
                    f.fetch_add(1, Ordering::Relaxed);
                    if k % 64 == 63 {
                        std::thread::sleep(Duration::from_micros(300));
                    }
                }
                let _sent = socket.send_to(&reply, from);
            }
        });
        FakeUpstream { addr, stop, thread: Some(thread), queries, forged }
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _joined = t.join();
        }
    }
}

fn question_end(q: &[u8]) -> Option<usize> {
    let mut at = 12;
    loop {
        let len = *q.get(at)? as usize;
        at += 1 + len;
        if len == 0 {
            break;
        }
    }
    (at + 4 <= q.len()).then_some(at + 4)
}

/// How a [`Hostile`] upstream answers. Every answer is `NAME A 198.51.100.7` (`.8` when the query
/// had CD=1) with the question echoed byte for byte, unless a field says otherwise.
#[derive(Debug, Clone, Copy)]
pub struct Script {
    /// TTL of the answer records.
    pub ttl: u32,
    /// Answer SERVFAIL instead.
    pub servfail: bool,
    /// Echo the question in lower case (an upstream that does not preserve 0x20 case).
    pub lower_case: bool,
    /// Add A records until the reply is at least this many bytes (TC stays 0, over UDP too).
    pub size: usize,
    /// Over UDP, answer with the question alone and TC=1; the answer comes over TCP only.
    pub truncate_udp: bool,
    /// Hold the reply to any query whose name contains this (lower case), until [`Hostile::release`].
    pub hold: Option<&'static str>,
}

impl Default for Script {
    fn default() -> Script {
        Script { ttl: 60, servfail: false, lower_case: false, size: 0, truncate_udp: false, hold: None }
    }
}

/// A hostile or awkward upstream on UDP and TCP (same address and port), recording every query's
/// source port.
pub struct Hostile {
    pub addr: SocketAddr,
    /// The UDP socket, for a test that forges replies from the upstream's own address and port.
    pub socket: UdpSocket,
    /// UDP queries received.
    pub queries: Arc<AtomicU64>,
    /// TCP queries received.
    pub tcp_queries: Arc<AtomicU64>,
    /// Source ports of the UDP queries, in arrival order.
    pub ports: Arc<std::sync::Mutex<Vec<u16>>>,
    /// Query names (as received) in arrival order.
    pub names: Arc<std::sync::Mutex<Vec<String>>>,
    release: Arc<AtomicBool>,
    /// While set, UDP queries are counted and not answered (a silent upstream).
    mute: Arc<AtomicBool>,
    /// While set, UDP queries are answered SERVFAIL.
    servfail: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// The reply `script` gives to `query` over UDP (`tcp == false`) or TCP.
pub fn scripted_reply(query: &[u8], script: &Script, tcp: bool) -> Option<Vec<u8>> {
    let q_end = question_end(query)?;
    let mut reply = query[..q_end].to_vec();
    if script.lower_case {
        reply[12..q_end - 4].make_ascii_lowercase();
    }
    let cd = query[3] & 0x10 != 0;
    reply[2] = (query[2] & 0x01) | 0x80; // QR, RD echoed
    reply[3] = 0x80 | (query[3] & 0x10); // RA, CD echoed
    reply[6..12].fill(0);
    if script.servfail {
        reply[3] |= 2;
        return Some(reply);
    }
    if script.truncate_udp && !tcp {
        reply[2] |= 0x02;
        return Some(reply);
    }
    let mut answers = 0u16;
    let mut push = |reply: &mut Vec<u8>, last: u8| {
        reply.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
        reply.extend_from_slice(&script.ttl.to_be_bytes());
        reply.extend_from_slice(&[0, 4, 198, 51, 100, last]);
        answers += 1;
    };
    push(&mut reply, if cd { 8 } else { 7 });
    let mut filler = 1u8;
    while reply.len() < script.size {
        filler = filler.wrapping_add(1).max(10);
        push(&mut reply, filler);
    }
    reply[6..8].copy_from_slice(&answers.to_be_bytes());
    Some(reply)
}

impl Hostile {
    /// Starts on `ip` (127.0.0.1 or ::1) with a fresh port.
    pub fn start(ip: &str, script: Script) -> Hostile {
        // A UDP port whose TCP twin is free too (another test may hold it for a connection).
        let (socket, listener) = loop {
            let socket = UdpSocket::bind(SocketAddr::new(ip.parse().unwrap(), 0)).unwrap();
            if let Ok(listener) = std::net::TcpListener::bind(socket.local_addr().unwrap()) {
                break (socket, listener);
            }
        };
        socket.set_read_timeout(Some(Duration::from_millis(10))).unwrap();
        let addr = socket.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let release = Arc::new(AtomicBool::new(false));
        let mute = Arc::new(AtomicBool::new(false));
        let servfail = Arc::new(AtomicBool::new(false));
        let queries = Arc::new(AtomicU64::new(0));
        let tcp_queries = Arc::new(AtomicU64::new(0));
        let ports = Arc::new(std::sync::Mutex::new(Vec::new()));
        let names = Arc::new(std::sync::Mutex::new(Vec::new()));
        let udp = {
            let (socket, stop, release, queries, ports, names) = (
                socket.try_clone().unwrap(),
                stop.clone(),
                release.clone(),
                queries.clone(),
                ports.clone(),
                names.clone(),
            );
            let (mute, failing) = (mute.clone(), servfail.clone());
            std::thread::spawn(move || {
                let mut held: Vec<(Vec<u8>, SocketAddr)> = Vec::new();
                let mut buf = [0u8; 4096];
                while !stop.load(Ordering::Relaxed) {
                    if release.load(Ordering::Relaxed) {
                        for (reply, to) in held.drain(..) {
                            let _sent = socket.send_to(&reply, to);
                        }
                    }
                    let Ok((n, from)) = socket.recv_from(&mut buf) else { continue };
                    let query = &buf[..n];
                    if n < 12 || query[2] & 0x80 != 0 {
                        continue; // a reply (a test's own forgery looping back), not a query
                    }
                    queries.fetch_add(1, Ordering::Relaxed);
                    ports.lock().unwrap().push(from.port());
                    let name = question_name(query);
                    names.lock().unwrap().push(name.clone());
                    if mute.load(Ordering::Relaxed) {
                        continue;
                    }
                    let now_failing = Script { servfail: script.servfail || failing.load(Ordering::Relaxed), ..script };
                    let Some(reply) = scripted_reply(query, &now_failing, false) else { continue };
                    let lower = name.to_ascii_lowercase();
                    if script.hold.is_some_and(|h| lower.contains(h)) && !release.load(Ordering::Relaxed) {
                        held.push((reply, from));
                    } else {
                        let _sent = socket.send_to(&reply, from);
                    }
                }
            })
        };
        let tcp = {
            let (stop, tcp_queries) = (stop.clone(), tcp_queries.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let Ok((mut s, _)) = listener.accept() else {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    };
                    use std::io::{Read, Write};
                    let _blocking = s.set_nonblocking(false);
                    let _timeout = s.set_read_timeout(Some(Duration::from_secs(2)));
                    let mut len = [0u8; 2];
                    if s.read_exact(&mut len).is_err() {
                        continue;
                    }
                    let mut q = vec![0u8; u16::from_be_bytes(len) as usize];
                    if s.read_exact(&mut q).is_err() {
                        continue;
                    }
                    tcp_queries.fetch_add(1, Ordering::Relaxed);
                    if let Some(reply) = scripted_reply(&q, &script, true) {
                        let mut msg = (reply.len() as u16).to_be_bytes().to_vec();
                        msg.extend_from_slice(&reply);
                        let _sent = s.write_all(&msg);
                    }
                }
            })
        };
        Hostile {
            addr,
            socket,
            queries,
            tcp_queries,
            ports,
            names,
            release,
            mute,
            servfail,
            stop,
            threads: vec![udp, tcp],
        }
    }

    /// From now on, answers no UDP query (`true`) or answers them again.
    pub fn set_mute(&self, on: bool) {
        self.mute.store(on, Ordering::Relaxed);
    }

    /// From now on, answers every UDP query SERVFAIL (`true`) or as scripted again.
    pub fn set_servfail(&self, on: bool) {
        self.servfail.store(on, Ordering::Relaxed);
    }

    /// Sends every held reply, and answers at once from now on.
    pub fn release(&self) {
        self.release.store(true, Ordering::Relaxed);
    }

    /// UDP queries so far.
    pub fn count(&self) -> u64 {
        self.queries.load(Ordering::Relaxed)
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _joined = t.join();
        }
    }
}

/// The question name of a message, in presentation form with its letter case.
pub fn question_name(q: &[u8]) -> String {
    let mut at = 12;
    let mut out = String::new();
    while let Some(&len) = q.get(at) {
        if len == 0 || len & 0xc0 != 0 {
            break;
        }
        let label = q.get(at + 1..at + 1 + len as usize).unwrap_or_default();
        out.push_str(&String::from_utf8_lossy(label));
        out.push('.');
        at += 1 + len as usize;
    }
    out
}
