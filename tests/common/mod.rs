//! Helpers shared by the integration tests: a real server on a loopback port, a real DNS client.
#![allow(dead_code)] // each test binary uses a different subset

pub mod client;
pub mod etcd;
pub mod kamailio;
pub mod lo;
pub mod process;
pub mod prom;
pub mod resolver;
pub mod sip;
pub mod upstream;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use dnlb::config::{Config, IoMode};
use dnlb::io::Backend;
use dnlb::server::Server;
use dnlb::snapshot::{Serving, Snapshot, SnapshotHandle};
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};

/// Whether this run is CI, where a missing tool or kernel feature fails instead of skipping.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Skips (outside CI) or fails (in CI) with a visible message. Returns `false` when the caller
/// should stop.
pub fn require(available: bool, what: &str) -> bool {
    if available {
        return true;
    }
    if in_ci() {
        panic!("{what} is required under CI=true but is not available");
    }
    eprintln!("SKIPPED: {what} is not available here (this would fail under CI=true)");
    false
}

/// The backends to test: both, io_uring only where the kernel allows it.
pub fn backends() -> Vec<IoMode> {
    let mut v = vec![IoMode::Portable];
    let uring = Backend::choose(IoMode::Uring).is_ok();
    if require(uring, "io_uring") {
        v.push(IoMode::Uring);
    }
    v
}

/// A loopback port that was free a moment ago (UDP and TCP).
pub fn free_port() -> u16 {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A config with one service of `n` servers on 127.0.0.x, listening on `port`.
pub fn config_text(port: u16, servers: usize, extra_service: &str) -> String {
    let mut s = format!(
        "[server]\nlisten = [\"127.0.0.1:{port}\"]\nworkers = 2\ntcp_idle_timeout_ms = 500\ntcp_max_connections = 4\n\n[[service]]\nname = \"sip.example.test\"\n"
    );
    for i in 0..servers {
        s.push_str(&format!(
            "[[service.server]]\naddress = \"127.0.0.{}\"\ntransports = [\"udp\", \"tcp\"]\npriority = {}\nweight = {}\n",
            11 + i,
            10 + i,
            5 + i
        ));
    }
    s.push_str(extra_service);
    s
}

/// Appended to [`config_text`]'s service: the service name becomes a zone apex, the protocol
/// checks of resolver mode run against it too.
pub const AUTHORITY: &str = "[service.authority]\nns = [\"dnlb1.example.net\"]\n";

/// A running in-process server and what the test needs to talk to it.
pub struct TestServer {
    pub server: Option<Server>,
    pub addr: SocketAddr,
    pub config: Config,
    pub snapshots: SnapshotHandle,
}

impl TestServer {
    /// Starts `config_text` with the given backend.
    pub fn start(text: &str, io: IoMode) -> TestServer {
        let mut config = Config::parse(text).unwrap_or_else(|p| panic!("test config invalid: {p:?}"));
        config.server.io = io;
        let snapshot = Snapshot::build(&config, &Serving::all_up(&config), 0).unwrap();
        let snapshots = SnapshotHandle::new(snapshot);
        let relay = config.relay.clone().map(std::sync::Arc::new);
        let server = Server::start(&config.server, relay, config.rrl.clone(), snapshots.clone()).unwrap();
        let addr = config.server.listen[0];
        TestServer { server: Some(server), addr, config, snapshots }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            let (_, errors) = s.shutdown();
            assert!(errors.is_empty(), "{errors:?}");
        }
    }
}

/// A query message for `name`/`qtype` with the given ID, optionally with EDNS.
pub fn query(name: &str, qtype: RecordType, id: u16, edns: Option<u16>) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        m.edns = Some(e);
    }
    m.to_vec().unwrap()
}

/// A UDP client socket with a timeout.
pub fn udp_client() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s
}

/// Sends raw bytes over UDP and returns the raw reply, or `None` after `wait`.
pub fn udp_raw(addr: SocketAddr, packet: &[u8], wait: Duration) -> Option<Vec<u8>> {
    let s = udp_client();
    s.set_read_timeout(Some(wait)).unwrap();
    s.send_to(packet, addr).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.recv_from(&mut buf) {
            Ok((n, _)) => return Some(buf[..n].to_vec()),
            // A thread that created an io_uring (the backend check does) can see EINTR while the
            // kernel tears the ring down; that is no answer either way.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return None,
        }
    }
}

/// Receives one datagram, retrying when a signal interrupts the call (a thread that set up an
/// io_uring can see EINTR while the kernel tears a ring down); `None` on timeout or error.
pub fn recv_retry(s: &UdpSocket, buf: &mut [u8]) -> Option<(usize, SocketAddr)> {
    loop {
        match s.recv_from(buf) {
            Ok(x) => return Some(x),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return None,
        }
    }
}

/// Sends a query over UDP and parses the reply.
pub fn udp_query(addr: SocketAddr, packet: &[u8]) -> Message {
    let raw = udp_raw(addr, packet, Duration::from_secs(2)).expect("no UDP reply within 2 s");
    Message::from_vec(&raw).expect("reply parses")
}

/// Sends length-prefixed messages on one TCP connection and reads as many replies.
pub fn tcp_exchange(stream: &mut TcpStream, packets: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for p in packets {
        stream.write_all(&(p.len() as u16).to_be_bytes()).unwrap();
        stream.write_all(p).unwrap();
    }
    for _ in packets {
        let mut len = [0u8; 2];
        stream.read_exact(&mut len).unwrap();
        let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
        stream.read_exact(&mut buf).unwrap();
        out.push(buf);
    }
    out
}

/// Whether a command is on PATH.
pub fn have(tool: &str) -> bool {
    std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

/// How often [`poll`] looks.
const POLL_EVERY: Duration = Duration::from_millis(5);

/// Looks at `done` every few milliseconds until it holds: how long that took, or `None` once
/// `limit` passed without it.
pub fn poll(limit: Duration, mut done: impl FnMut() -> bool) -> Option<Duration> {
    let start = std::time::Instant::now();
    loop {
        if done() {
            return Some(start.elapsed());
        }
        if start.elapsed() >= limit {
            return None;
        }
        std::thread::sleep(POLL_EVERY);
    }
}

/// [`poll`], failing the test when `limit` passes: `what` did not happen, and `context()` says
/// what was seen instead.
pub fn wait_until(
    what: &str,
    limit: Duration,
    done: impl FnMut() -> bool,
    context: impl FnOnce() -> String,
) -> Duration {
    poll(limit, done).unwrap_or_else(|| panic!("{what}: not within {limit:?}\n{}", context()))
}

/// Waits until the prober has a verdict for every server (no state is Unknown any more) and has
/// published answers from health, so a test's later observations come from probes, not from the
/// start-up snapshot. (The prober exports its reports before it publishes, and with
/// `start = "unknown"` it publishes once every server has its first verdict.)
pub fn settle(prober: &dnlb::probe::Prober, limit: Duration) {
    let start = std::time::Instant::now();
    loop {
        let servers = prober.status().servers.lock().unwrap().clone();
        let published = prober.status().publishes.load(std::sync::atomic::Ordering::Acquire) > 0;
        if published && !servers.is_empty() && servers.iter().all(|s| s.state != dnlb::probe::health::State::Unknown) {
            return;
        }
        assert!(start.elapsed() < limit, "prober gave no verdict for every server within {limit:?}: {servers:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Starts a DNS daemon in the foreground (`BINARY -d -c CONF`: nsd and unbound alike), its
/// output discarded, and returns once it answers `origin` SOA on `addr` (10 s at most; the
/// message then ends with what `log` says).
pub fn start_dns_daemon(
    binary: &str,
    conf: &std::path::Path,
    addr: SocketAddr,
    origin: &str,
    log: impl Fn() -> String,
) -> std::process::Child {
    use std::process::{Command, Stdio};
    let mut child = Command::new(binary)
        .arg("-d")
        .arg("-c")
        .arg(conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {binary}: {e}"));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let probe = query(&format!("{origin}."), RecordType::SOA, 1, None);
    while udp_raw(addr, &probe, Duration::from_millis(100)).is_none() {
        if std::time::Instant::now() >= deadline {
            terminate(&mut child);
            panic!("{binary} did not answer on {addr} within 10 s: {}", log());
        }
    }
    child
}

/// Ends a child process this test started: SIGTERM by its PID, then SIGKILL after 5 s.
pub fn terminate(child: &mut std::process::Child) {
    let _sent = std::process::Command::new("kill").arg(child.id().to_string()).status();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _killed = child.kill();
    let _reaped = child.wait();
}

/// A UDP query frame from `client` to `server` (Ethernet, an optional 802.1Q tag, IPv4 or IPv6,
/// UDP with its checksum) carrying `payload`, as a NIC hands it to the XDP path.
pub fn query_frame(client: SocketAddr, server: SocketAddr, vlan: Option<u16>, payload: &[u8]) -> Vec<u8> {
    use dnlb::io::xdp::frame::{write_headers, Path};
    // The path of a reply from the client's side: its headers are the query's.
    let from_client = Path {
        dst_mac: [2, 0, 0, 0, 0, 1],
        src_mac: [2, 0, 0, 0, 0, 2],
        vlan,
        local: client.ip(),
        local_port: client.port(),
    };
    let h = from_client.header_len();
    let mut frame = vec![0u8; h + payload.len()];
    frame[h..].copy_from_slice(payload);
    let n = write_headers(&mut frame, &from_client, server, payload.len()).expect("room for the headers");
    frame.truncate(n);
    frame
}
