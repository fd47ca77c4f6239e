//! Hostile TLS servers against the real `dnlb` binary: each completes (or drags out) a real TLS
//! handshake with rustls on its 127.0.0.16x:5061, then does its worst with the connection.
//!
//! For each behaviour a fresh dnlb probes the hostile server and an honest UDP neighbour. While
//! the hostile server works, the prober thread's CPU must stay low and dnlb alive; then the
//! neighbour goes silent and must still leave the answers within interval × fall + timeout; then
//! SIGTERM must stop dnlb within 2 s. Every loop here is bounded in count and time.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::free_port;
use common::process::{cpu_time, Dnlb};
use common::sip::{common_port, Mode, SipResponder};
use rcgen::{CertificateParams, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// What a hostile TLS server does with each connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hostile {
    /// Its handshake flight, one byte every 5 ms.
    Trickle,
    /// A certificate message padded to 64 KB with 10,000 one-byte "intermediates" (the prober
    /// checks none with `tls_verify = false`), then records packed with NewSessionTickets
    /// (about 900 a record; the prober offered no resumption, so a conforming server sends
    /// none): rustls copies the whole stored chain for every ticket it reads.
    TicketFlood,
    /// The same tickets behind an ordinary one-certificate chain.
    PlainTickets,
    /// The same tickets behind the largest chain the prober takes: ten certificates, 32 KB.
    LargestChainTickets,
    /// A KeyUpdate asking for the prober's as fast as it can, one plaintext byte every 30 of
    /// them (which resets rustls's KeyUpdate count); it never reads, so the prober's own
    /// KeyUpdates pile up on its side.
    KeyUpdates,
    /// A plaintext byte per TLS record, as fast as the connection takes them.
    TinyRecords,
    /// close_notify after the handshake, then junk on the same connection.
    CloseNotifyThenJunk,
    /// Half-closes (FIN, no close_notify) after the handshake and keeps the connection.
    HalfClose,
    /// Answers the ClientHello with full-size records of one handshake message that claims to
    /// be 16 MiB long, as fast as the connection takes them.
    HugeMessage,
}

const ALL: [Hostile; 9] = [
    Hostile::Trickle,
    Hostile::TicketFlood,
    Hostile::PlainTickets,
    Hostile::LargestChainTickets,
    Hostile::KeyUpdates,
    Hostile::TinyRecords,
    Hostile::CloseNotifyThenJunk,
    Hostile::HalfClose,
    Hostile::HugeMessage,
];

/// How long any hostile connection may run, whatever happens.
const HOSTILE_LIMIT: Duration = Duration::from_secs(6);

/// A hostile TLS server on `ip`:5061.
struct HostileServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Connections it accepted.
    connections: Arc<AtomicU64>,
    /// TLS bytes it wrote.
    written: Arc<AtomicU64>,
}

impl HostileServer {
    fn start(ip: &str, how: Hostile) -> HostileServer {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["sip.example.test".to_string()]).unwrap().self_signed(&key).unwrap();
        let mut chain = vec![cert.der().clone()];
        if how == Hostile::TicketFlood {
            chain.extend((0..10_000).map(|_| CertificateDer::from(vec![0u8])));
        }
        if how == Hostile::LargestChainTickets {
            let room = (32 * 1024 - chain[0].len()) / 9;
            chain.extend((0..9).map(|_| CertificateDer::from(vec![0u8; room])));
        }
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        config.send_tls13_tickets = 0;
        config.enable_secret_extraction = true;
        let config = Arc::new(config);
        let listener = TcpListener::bind((ip, 5061)).unwrap_or_else(|e| panic!("bind {ip}:5061: {e}"));
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(AtomicU64::new(0));
        let written = Arc::new(AtomicU64::new(0));
        let (s, c, w) = (stop.clone(), connections.clone(), written.clone());
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            let mut open: Vec<JoinHandle<()>> = Vec::new();
            while !s.load(Ordering::Relaxed) && started.elapsed() < HOSTILE_LIMIT {
                let Ok((stream, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                c.fetch_add(1, Ordering::Relaxed);
                open.retain(|t| !t.is_finished());
                if open.len() < 16 {
                    let (config, stop, written) = (config.clone(), s.clone(), w.clone());
                    open.push(std::thread::spawn(move || serve(stream, how, config, &stop, &written, started)));
                }
            }
            for t in open {
                let _joined = t.join();
            }
        });
        HostileServer { stop, thread: Some(thread), connections, written }
    }
}

impl Drop for HostileServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _joined = t.join();
        }
    }
}

/// A stream that counts what is written through it.
struct Counted<'a>(&'a mut TcpStream, &'a AtomicU64);

impl Read for Counted<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for Counted<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.0.write(buf)?;
        self.1.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// Writes everything rustls queued, giving up when the peer stops taking it.
fn flush(conn: &mut rustls::ServerConnection, stream: &mut TcpStream, written: &AtomicU64) -> bool {
    while conn.wants_write() {
        match conn.write_tls(stream) {
            Ok(n) => written.fetch_add(n as u64, Ordering::Relaxed),
            Err(_) => return false,
        };
    }
    true
}

fn serve(
    mut stream: TcpStream,
    how: Hostile,
    config: Arc<rustls::ServerConfig>,
    stop: &AtomicBool,
    written: &AtomicU64,
    started: Instant,
) {
    stream.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    stream.set_write_timeout(Some(Duration::from_millis(200))).unwrap();
    let live = || !stop.load(Ordering::Relaxed) && started.elapsed() < HOSTILE_LIMIT;
    let Ok(mut conn) = rustls::ServerConnection::new(config) else { return };
    if how == Hostile::HugeMessage {
        let mut hello = [0u8; 1024];
        if stream.read(&mut hello).is_err() {
            return;
        }
        // A ServerHello header claiming 2^24 - 1 bytes, then records of its "body".
        let mut record = vec![0x16, 3, 3, 0x40, 0x00, 2, 0xff, 0xff, 0xff];
        record.resize(5 + 0x4000, 0x41);
        let mut body = vec![0x16, 3, 3, 0x40, 0x00];
        body.resize(5 + 0x4000, 0x41);
        if stream.write_all(&record).is_err() {
            return;
        }
        while live() && stream.write_all(&body).is_ok() {
            written.fetch_add(body.len() as u64, Ordering::Relaxed);
        }
        return;
    }
    if how == Hostile::Trickle {
        // Read the ClientHello, then hand back the reply a byte at a time.
        while conn.wants_read() && !conn.wants_write() && live() {
            if conn.read_tls(&mut stream).is_err() || conn.process_new_packets().is_err() {
                return;
            }
        }
        let mut flight = Vec::new();
        while conn.wants_write() {
            if conn.write_tls(&mut flight).is_err() {
                return;
            }
        }
        for b in flight {
            if !live() || stream.write_all(&[b]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    } else {
        while conn.is_handshaking() && live() {
            if conn.complete_io(&mut Counted(&mut stream, written)).is_err() {
                return;
            }
        }
        match how {
            Hostile::Trickle | Hostile::HugeMessage => {}
            Hostile::TicketFlood | Hostile::PlainTickets | Hostile::LargestChainTickets => {
                if !flush(&mut conn, &mut stream, written) {
                    return;
                }
                tickets(conn, &mut stream, written, &live);
            }
            Hostile::KeyUpdates => {
                let mut n = 0u64;
                while live() {
                    n += 1;
                    let sent = if n.is_multiple_of(30) {
                        conn.writer().write_all(b"x").is_ok()
                    } else {
                        conn.refresh_traffic_keys().is_ok()
                    };
                    if !sent || !flush(&mut conn, &mut stream, written) {
                        return;
                    }
                }
            }
            Hostile::TinyRecords => {
                while live() {
                    if conn.writer().write_all(b"S").is_err() || !flush(&mut conn, &mut stream, written) {
                        return;
                    }
                }
            }
            Hostile::CloseNotifyThenJunk => {
                conn.send_close_notify();
                if !flush(&mut conn, &mut stream, written) {
                    return;
                }
                let junk = [0x17u8; 4096];
                while live() && stream.write_all(&junk).is_ok() {
                    written.fetch_add(junk.len() as u64, Ordering::Relaxed);
                }
            }
            Hostile::HalfClose => {
                let _closed = stream.shutdown(Shutdown::Write);
            }
        }
    }
    // Hold the connection until dnlb closes it, or the test ends.
    let mut buf = [0u8; 4096];
    while live() {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

/// Records packed with minimal TLS 1.3 NewSessionTickets, encrypted with the connection's own
/// keys (rustls would send none: the client offered no resumption), as fast as they are taken.
fn tickets(conn: rustls::ServerConnection, stream: &mut TcpStream, written: &AtomicU64, live: &dyn Fn() -> bool) {
    use rustls::crypto::cipher::{OutboundChunks, OutboundPlainMessage};
    use rustls::{ConnectionTrafficSecrets as S, ContentType, ProtocolVersion, SupportedCipherSuite};
    let Some(SupportedCipherSuite::Tls13(suite)) = conn.negotiated_cipher_suite() else { return };
    let Ok(secrets) = conn.dangerous_extract_secrets() else { return };
    let (mut seq, S::Aes128Gcm { key, iv } | S::Aes256Gcm { key, iv } | S::Chacha20Poly1305 { key, iv }) = secrets.tx
    else {
        return;
    };
    let mut encrypter = suite.aead_alg.encrypter(key, iv);
    // type 4, length 14: lifetime 1 s, age_add 0, empty nonce, a one-byte ticket, no extensions.
    let ticket = [4u8, 0, 0, 14, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 7, 0, 0];
    let payload: Vec<u8> = ticket.iter().copied().cycle().take(ticket.len() * 900).collect();
    while live() {
        let message = OutboundPlainMessage {
            typ: ContentType::Handshake,
            version: ProtocolVersion::TLSv1_2,
            payload: OutboundChunks::Single(&payload),
        };
        let Ok(record) = encrypter.encrypt(message, seq) else { return };
        seq += 1;
        let record = record.encode();
        if stream.write_all(&record).is_err() {
            return;
        }
        written.fetch_add(record.len() as u64, Ordering::Relaxed);
    }
}

/// interval 200 ms, timeout 100 ms, fall 2: the neighbour must go within 200 × 2 + 100 ms.
const PROBE: &str = "interval_ms = 200\ntimeout_ms = 100\nretransmit_ms = 30\nrise = 1\nfall = 2";
const BOUND: Duration = Duration::from_millis(200 * 2 + 100);

/// One scenario: returns a line for the summary.
fn scenario(how: Hostile, hostile_ip: &str, neighbour_ip: &str) -> String {
    let sip_port = common_port(&[neighbour_ip]);
    let neighbour =
        SipResponder::start(SocketAddr::new(neighbour_ip.parse().unwrap(), sip_port), Mode::Reply(200, None));
    let hostile = HostileServer::start(hostile_ip, how);
    let config = format!(
        "[server]\nlisten = [\"127.0.0.1:{}\"]\nworkers = 1\npin_workers = false\ntcp = false\n\n[probe]\n{PROBE}\n\n\
         [[service]]\nname = \"sip.example.test\"\nall_down = \"nodata\"\ntls_verify = false\n\
         [[service.server]]\naddress = \"{hostile_ip}\"\nhost = \"sip.example.test\"\ntransports = [\"tls\"]\n\
         [[service.server]]\naddress = \"{neighbour_ip}\"\nport = {sip_port}\ntransports = [\"udp\"]\n",
        free_port()
    );
    let dir = std::env::temp_dir().join(format!("dnlb-hostile-tls-{}-{}", std::process::id(), free_port()));
    let mut dnlb = Dnlb::spawn(dir, &config);
    let neighbour_addr: IpAddr = neighbour_ip.parse().unwrap();
    let what = format!("{how:?}");
    assert!(
        dnlb.wait_for("sip.example.test.", Duration::from_secs(5), |a| a.contains(&neighbour_addr)).is_some(),
        "{what}: the neighbour never came up\n{}",
        dnlb.stderr()
    );
    // The hostile server does its worst for a second; the prober thread's CPU is measured.
    let stat = dnlb.thread_stat("dnlb-prober").expect("the dnlb-prober thread");
    let process = dnlb.process_stat();
    let (before, process_before) = (cpu_time(&stat), cpu_time(&process));
    let window = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    let secs = window.elapsed().as_secs_f64();
    let cpu = (cpu_time(&stat).saturating_sub(before)).as_secs_f64() / secs;
    let process_cpu = (cpu_time(&process).saturating_sub(process_before)).as_secs_f64() / secs;
    assert!(dnlb.child.try_wait().unwrap().is_none(), "{what}: dnlb died\n{}", dnlb.stderr());
    assert!(hostile.connections.load(Ordering::Relaxed) > 0, "{what}: the hostile server was never probed");
    // The neighbour dies: it must still leave the answers in time.
    neighbour.set(Mode::Silent);
    let removed = dnlb.wait_for("sip.example.test.", Duration::from_secs(3), |a| !a.contains(&neighbour_addr));
    let (stopped, code) = dnlb.stop();
    let log = dnlb.stderr();
    let reasons: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(hostile_ip) && l.contains("probe failing"))
        .filter_map(|l| l.split("reason=").nth(1))
        .collect();
    let line = format!(
        "{what}: prober cpu {:.1} % (process {:.1} %), neighbour removed after {removed:?}, SIGTERM took {stopped:?}, failing with {reasons:?}, {} connections, {} KiB of TLS written",
        cpu * 100.0,
        process_cpu * 100.0,
        hostile.connections.load(Ordering::Relaxed),
        hostile.written.load(Ordering::Relaxed) / 1024
    );
    println!("{line}");
    let removed = removed.unwrap_or_else(|| panic!("{what}: the dead neighbour was never removed\n{}", dnlb.stderr()));
    // The bound plus the 5 ms polling of the answers and scheduling noise on a shared machine.
    assert!(removed <= BOUND + Duration::from_millis(250), "{what}: removed after {removed:?} (bound {BOUND:?})");
    assert!(stopped <= Duration::from_secs(2), "{what}: SIGTERM took {stopped:?}");
    assert_eq!(code, Some(0), "{what}: exit status after SIGTERM\n{}", log);
    assert!(!reasons.is_empty(), "{what}: the hostile server was never reported failing\n{log}");
    assert!(cpu < 0.3, "{what}: the prober used {:.0} % of a core", cpu * 100.0);
    line
}

#[test]
fn hostile_tls_servers_cannot_spin_stall_or_blind_the_prober() {
    let mut lines = Vec::new();
    for (k, how) in ALL.into_iter().enumerate() {
        // `HOSTILE_TLS_ONLY=KeyUpdates` runs one scenario.
        if std::env::var("HOSTILE_TLS_ONLY").is_ok_and(|o| o != format!("{how:?}")) {
            continue;
        }
        // 127.0.0.161-168 (a scenario's servers are gone before the next one starts).
        let hostile_ip = format!("127.0.0.{}", 161 + k % 8);
        lines.push(scenario(how, &hostile_ip, "127.0.0.169"));
    }
    println!("{}", lines.join("\n"));
}
