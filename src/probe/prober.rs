//! The prober thread: every server probed every interval, all probes pipelined, a new snapshot
//! published only when what clients would be told changes.
//!
//! ```text
//!  timer heap ──due──► send probe (UDP: connected socket per server; TCP: a connection per probe)
//!       ▲                 │ retransmit (UDP, doubling) · timeout
//!       │                 ▼
//!       │   mio poll ◄── replies / ICMP refusal (ECONNREFUSED) / TCP connect errors
//!       │                 │ check_reply: branch, Call-ID, From tag, CSeq must match
//!       │                 ▼
//!       └─ next probe ── Health::observe ──flipped?──► rebuild Snapshot ──► SnapshotHandle::publish
//! ```
//!
//! Probes of one round are spread evenly over the interval (with jitter), so detection time does
//! not grow with the number of servers and a large farm is never hit in one burst. After a failed
//! probe of a server that is still up, the next probe goes out at once (a fast re-check), so
//! `fall = 2` costs one timeout, not one interval.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::net::{TcpStream, UdpSocket};
use mio::{Events, Interest, Poll, Token};

use super::health::{self, State, Thresholds, Verdict};
use super::sip::{self, ProbeId, Reply};
use crate::config::{AllDown, Config, Policy, ProbeMethod, StartState, Transport};
use crate::select;
use crate::snapshot::{Health, Snapshot, SnapshotHandle};

/// How early a timer may fire, so the loop sleeps at least this long between batches.
const TIMER_SLACK: Duration = Duration::from_millis(2);

/// Counters and per-server state the prober exports (read by the control thread and tests).
#[derive(Debug, Default)]
pub struct ProbeStatus {
    /// Probe requests sent, retransmissions included.
    pub sent: AtomicU64,
    /// Replies that matched a probe.
    pub replies: AtomicU64,
    /// Datagrams or messages that matched no probe (forged, late or garbled); ignored.
    pub ignored: AtomicU64,
    /// Probes ended by an ICMP refusal or a refused TCP connection.
    pub refused: AtomicU64,
    /// Probes that timed out.
    pub timeouts: AtomicU64,
    /// State flips, all servers together.
    pub flips: AtomicU64,
    /// Snapshots published.
    pub publishes: AtomicU64,
    /// Milliseconds since the prober started, at its last loop iteration; a stalled prober
    /// stops advancing it.
    pub heartbeat_ms: AtomicU64,
    /// Per server and transport, refreshed once per interval.
    pub servers: Mutex<Vec<ServerReport>>,
}

/// One server on one transport, as last seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerReport {
    /// Service name.
    pub service: Arc<str>,
    /// Server address and port.
    pub addr: SocketAddr,
    /// Probed transport.
    pub transport: Transport,
    /// Health state.
    pub state: State,
    /// Smoothed round-trip time.
    pub rtt: Option<Duration>,
    /// Last final status code (None before any reply).
    pub last_code: Option<u16>,
    /// State flips so far.
    pub flips: u64,
}

/// A running prober.
pub struct Prober {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<io::Result<()>>>,
    status: Arc<ProbeStatus>,
}

impl Prober {
    /// Starts the prober thread for `config`, publishing through `snapshots`.
    pub fn spawn(config: Config, snapshots: SnapshotHandle) -> io::Result<Prober> {
        let stop = Arc::new(AtomicBool::new(false));
        let status = Arc::new(ProbeStatus::default());
        let (s, st) = (stop.clone(), status.clone());
        crate::io::raise_fd_limit();
        let thread = std::thread::Builder::new().name("dnlb-prober".into()).spawn(move || {
            if let Some(core) = config.probe.core {
                if let Err(e) = crate::io::affinity::pin_current_thread(core) {
                    eprintln!("dnlb: prober: cannot pin to core {core}: {e}; running unpinned");
                }
            }
            let mut engine = Engine::new(config, snapshots, st)?;
            engine.run(&s)
        })?;
        Ok(Prober { stop, thread: Some(thread), status })
    }

    /// The exported counters.
    pub fn status(&self) -> &Arc<ProbeStatus> {
        &self.status
    }

    /// Whether the thread has ended (it only ends on stop or an unrecoverable error).
    pub fn finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Stops the thread and returns how it ended.
    pub fn shutdown(mut self) -> io::Result<()> {
        self.stop.store(true, Ordering::Release);
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(io::Error::other("prober thread panicked")),
            None => Ok(()),
        }
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _joined = t.join();
        }
    }
}

/// The health the first snapshot is built from, before any probe: per the start state.
pub fn initial_health(config: &Config) -> Health {
    match (config.probe.enabled, config.probe.start) {
        (false, _) | (true, StartState::Up) => Health::all_up(config),
        (true, StartState::Unknown | StartState::Down) => Health {
            up: config.services.iter().map(|s| vec![Vec::new(); s.servers.len()]).collect(),
            rtt_us: Vec::new(),
        },
    }
}

/// What a probe in flight holds.
struct InFlight {
    id: ProbeId,
    started: Instant,
    request: Vec<u8>,
    backoff: Duration,
    tcp: Option<TcpProbe>,
}

/// A TCP (or TLS) probe's connection.
struct TcpProbe {
    stream: TcpStream,
    connected: bool,
    received: Vec<u8>,
}

/// One server on one transport.
struct Target {
    service: usize,
    service_name: Arc<str>,
    server: usize,
    transport: Transport,
    addr: SocketAddr,
    method: ProbeMethod,
    health: health::Health,
    udp: Option<UdpSocket>,
    local: SocketAddr,
    /// The UDP request, built once; each probe patches in its identity.
    template: Option<sip::RequestTemplate>,
    probe: Option<InFlight>,
    /// Increases per probe; timer events of older probes are stale.
    seq: u64,
    cseq: u32,
    /// When the next regular probe is due.
    next_due: Instant,
    last_code: Option<u16>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Send,
    Retransmit,
    Timeout,
}

/// What decides the published answers; a snapshot is rebuilt only when this changes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PublishKey {
    health: Health,
    round: u64,
}

struct Engine {
    config: Config,
    snapshots: SnapshotHandle,
    status: Arc<ProbeStatus>,
    poll: Poll,
    targets: Vec<Target>,
    timers: BinaryHeap<Reverse<(Instant, usize, u64, Timer)>>,
    thresholds: Thresholds,
    started: Instant,
    generation: u64,
    published: Option<PublishKey>,
    last_good: Vec<Option<Vec<Vec<Transport>>>>,
    round: u64,
    next_round: Instant,
    on_duty: bool,
    /// Whether something that may change the answers happened since the last publish check:
    /// a flip, a new round for on-duty, new RTTs for latency. Building the key is O(servers), so
    /// it is done only then, not on every loop.
    dirty: bool,
    /// Whether any service weighs by latency (RTTs then matter once per round).
    latency: bool,
    buf: Vec<u8>,
    entropy: Entropy,
}

/// Random words for probe identities, drawn from the OS in 4 KiB batches (one system call per
/// hundred probes instead of one per probe).
struct Entropy {
    pool: Vec<u64>,
}

impl Entropy {
    fn words<const N: usize>(&mut self) -> [u64; N] {
        if self.pool.len() < N {
            self.pool = random_words::<512>().to_vec();
        }
        let mut out = [0u64; N];
        for w in out.iter_mut() {
            *w = self.pool.pop().unwrap_or_default();
        }
        out
    }
}

fn random_words<const N: usize>() -> [u64; N] {
    let mut bytes = vec![0u8; N * 8];
    // getrandom fails only without any entropy source; a probe then still goes out with the
    // clock as its randomness, which weakens only forgery resistance.
    if getrandom::fill(&mut bytes).is_err() {
        let t = Instant::now().elapsed().as_nanos() as u64 ^ std::process::id() as u64;
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (t.rotate_left(i as u32 * 7) >> (i % 8)) as u8;
        }
    }
    let mut out = [0u64; N];
    for (i, w) in out.iter_mut().enumerate() {
        *w = u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
    }
    out
}

fn transport_name(t: Transport) -> &'static str {
    match t {
        Transport::Udp => "udp",
        Transport::Tcp => "tcp",
        Transport::Tls => "tls",
    }
}

impl Engine {
    fn new(config: Config, snapshots: SnapshotHandle, status: Arc<ProbeStatus>) -> io::Result<Engine> {
        let poll = Poll::new()?;
        let now = Instant::now();
        let start = match config.probe.start {
            StartState::Unknown => State::Unknown,
            StartState::Up => State::Up,
            StartState::Down => State::Down,
        };
        let mut targets = Vec::new();
        for (si, service) in config.services.iter().enumerate() {
            for (vi, server) in service.servers.iter().enumerate() {
                for &transport in &server.transports {
                    let addr = SocketAddr::new(server.address, server.port);
                    let mut udp = None;
                    let mut template = None;
                    let mut local =
                        if addr.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("literal address");
                    if transport == Transport::Udp {
                        let mut sock = UdpSocket::bind(local)?;
                        // Connected: the kernel drops datagrams from any other address and port,
                        // and reports an ICMP port-unreachable as ECONNREFUSED.
                        sock.connect(addr)?;
                        local = sock.local_addr()?;
                        poll.registry().register(&mut sock, Token(targets.len()), Interest::READABLE)?;
                        udp = Some(sock);
                        template = Some(sip::RequestTemplate::new(server.probe_method, addr, transport, local));
                    }
                    targets.push(Target {
                        service: si,
                        service_name: Arc::from(service.name.as_str()),
                        server: vi,
                        transport,
                        addr,
                        method: server.probe_method,
                        health: health::Health::new(start),
                        udp,
                        local,
                        template,
                        probe: None,
                        seq: 0,
                        cseq: *sip::CSEQ_RANGE.start(),
                        next_due: now,
                        last_code: None,
                    });
                }
            }
        }
        // Spread the first round evenly over one interval, with jitter inside each slot.
        let interval = config.probe.interval;
        let n = targets.len().max(1) as u32;
        let slot = interval / n;
        let mut timers = BinaryHeap::new();
        for (i, t) in targets.iter_mut().enumerate() {
            let [r] = random_words::<1>();
            let jitter = if slot.is_zero() { Duration::ZERO } else { Duration::from_nanos(r % slot.as_nanos() as u64) };
            t.next_due = now + slot * i as u32 + jitter;
            timers.push(Reverse((t.next_due, i, 0, Timer::Send)));
        }
        let thresholds = Thresholds { rise: config.probe.rise, fall: config.probe.fall };
        let on_duty = config.services.iter().any(|s| s.policy == Policy::OnDuty);
        let latency = config.services.iter().any(|s| s.policy == Policy::Latency);
        let last_good = vec![None; config.services.len()];
        Ok(Engine {
            snapshots,
            status,
            poll,
            targets,
            timers,
            thresholds,
            started: now,
            generation: 1,
            published: None,
            last_good,
            round: 0,
            next_round: now + interval,
            on_duty,
            dirty: true,
            latency,
            buf: vec![0u8; 65_536],
            entropy: Entropy { pool: Vec::new() },
            config,
        })
    }

    fn run(&mut self, stop: &AtomicBool) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        self.publish_if_changed(Instant::now());
        while !stop.load(Ordering::Acquire) {
            let now = Instant::now();
            self.status.heartbeat_ms.store(now.duration_since(self.started).as_millis() as u64, Ordering::Relaxed);
            // Timers due within the next TIMER_SLACK fire now: the poll below sleeps in whole
            // milliseconds, and at 10,000 probes a second the next timer is always closer than
            // that, which would otherwise turn the loop into a busy spin (see tuning.md).
            self.fire_timers(now + TIMER_SLACK);
            if now >= self.next_round {
                self.end_round(now);
            }
            let next = self.timers.peek().map(|Reverse((at, ..))| *at).unwrap_or(now + Duration::from_millis(100));
            let wait =
                next.min(self.next_round).saturating_duration_since(Instant::now()).min(Duration::from_millis(100));
            match self.poll.poll(&mut events, Some(wait)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            let now = Instant::now();
            for event in events.iter() {
                let i = event.token().0;
                if i >= self.targets.len() {
                    continue;
                }
                if self.targets[i].udp.is_some() {
                    self.read_udp(i, now);
                } else {
                    self.drive_tcp(i, event.is_writable(), now);
                }
            }
            self.publish_if_changed(now);
        }
        Ok(())
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some(Reverse((at, i, seq, kind))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            match kind {
                Timer::Send => {
                    if self.targets[i].probe.is_none() && self.targets[i].seq == seq {
                        self.send_probe(i, now);
                    }
                }
                Timer::Retransmit => {
                    if self.targets[i].seq == seq && self.targets[i].probe.is_some() {
                        self.retransmit(i, now);
                    }
                }
                Timer::Timeout => {
                    if self.targets[i].seq == seq && self.targets[i].probe.is_some() {
                        self.status.timeouts.fetch_add(1, Ordering::Relaxed);
                        self.conclude(i, Verdict::Failed, now, "timeout");
                    }
                }
            }
        }
    }

    fn send_probe(&mut self, i: usize, now: Instant) {
        let timeout = self.config.probe.timeout;
        let retransmit = self.config.probe.retransmit;
        let t = &mut self.targets[i];
        t.seq += 1;
        t.cseq = if t.cseq >= *sip::CSEQ_RANGE.end() { *sip::CSEQ_RANGE.start() } else { t.cseq + 1 };
        let id = ProbeId::new(self.entropy.words::<5>(), t.cseq, t.method);
        let seq = t.seq;
        self.timers.push(Reverse((now + timeout, i, seq, Timer::Timeout)));
        match t.transport {
            Transport::Udp => {
                let mut request = Vec::with_capacity(512);
                match &t.template {
                    Some(template) => template.render(&id, &mut request),
                    None => request = sip::request(&id, t.addr, t.transport, t.local),
                }
                let sent = t.udp.as_ref().map(|s| s.send(&request));
                t.probe = Some(InFlight { id, started: now, request, backoff: retransmit, tcp: None });
                self.status.sent.fetch_add(1, Ordering::Relaxed);
                match sent {
                    Some(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
                        self.status.refused.fetch_add(1, Ordering::Relaxed);
                        self.conclude(i, Verdict::Failed, now, "ICMP port unreachable");
                    }
                    _ => self.timers.push(Reverse((now + retransmit, i, seq, Timer::Retransmit))),
                }
            }
            Transport::Tcp | Transport::Tls => match TcpStream::connect(t.addr) {
                Ok(mut stream) => {
                    let registered =
                        self.poll.registry().register(&mut stream, Token(i), Interest::READABLE | Interest::WRITABLE);
                    let local = stream.local_addr().unwrap_or(t.local);
                    let request = sip::request(&id, t.addr, t.transport, local);
                    let tcp = TcpProbe { stream, connected: false, received: Vec::new() };
                    t.probe = Some(InFlight { id, started: now, request, backoff: retransmit, tcp: Some(tcp) });
                    if registered.is_err() {
                        self.conclude(i, Verdict::Failed, now, "cannot register TCP socket");
                    }
                }
                Err(_) => {
                    t.probe = Some(InFlight { id, started: now, request: Vec::new(), backoff: retransmit, tcp: None });
                    self.conclude(i, Verdict::Failed, now, "TCP connect failed");
                }
            },
        }
    }

    fn retransmit(&mut self, i: usize, now: Instant) {
        let t = &mut self.targets[i];
        let Some(p) = t.probe.as_mut() else { return };
        let Some(sock) = t.udp.as_ref() else { return };
        let sent = sock.send(&p.request);
        self.status.sent.fetch_add(1, Ordering::Relaxed);
        p.backoff *= 2;
        let (seq, next) = (t.seq, now + p.backoff);
        if let Err(e) = sent {
            if e.kind() == io::ErrorKind::ConnectionRefused {
                self.status.refused.fetch_add(1, Ordering::Relaxed);
                self.conclude(i, Verdict::Failed, now, "ICMP port unreachable");
                return;
            }
        }
        self.timers.push(Reverse((next, i, seq, Timer::Retransmit)));
    }

    fn read_udp(&mut self, i: usize, now: Instant) {
        loop {
            let Some(sock) = self.targets[i].udp.as_ref() else { return };
            let mut buf = std::mem::take(&mut self.buf);
            let received = sock.recv(&mut buf);
            if let Ok(n) = received {
                self.on_message(i, &buf[..n], now);
            }
            self.buf = buf;
            match received {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    if self.targets[i].probe.is_some() {
                        self.status.refused.fetch_add(1, Ordering::Relaxed);
                        self.conclude(i, Verdict::Failed, now, "ICMP port unreachable");
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }

    fn drive_tcp(&mut self, i: usize, writable: bool, now: Instant) {
        let transport = self.targets[i].transport;
        let Some(p) = self.targets[i].probe.as_mut() else { return };
        let Some(tcp) = p.tcp.as_mut() else { return };
        if !tcp.connected && writable {
            match tcp.stream.take_error() {
                Ok(None) if tcp.stream.peer_addr().is_ok() => {
                    tcp.connected = true;
                    if transport == Transport::Tls {
                        // No TLS stack in the prober: an accepted connection on the TLS port is
                        // the verdict.
                        let rtt = now.duration_since(p.started);
                        self.status.replies.fetch_add(1, Ordering::Relaxed);
                        self.conclude(i, Verdict::Alive { rtt }, now, "TLS port accepts connections");
                        return;
                    }
                    if tcp.stream.write_all(&p.request).is_err() {
                        self.conclude(i, Verdict::Failed, now, "TCP write failed");
                        return;
                    }
                    self.status.sent.fetch_add(1, Ordering::Relaxed);
                }
                Ok(None) => return, // still connecting
                Ok(Some(_)) | Err(_) => {
                    self.status.refused.fetch_add(1, Ordering::Relaxed);
                    self.conclude(i, Verdict::Failed, now, "TCP connection refused");
                    return;
                }
            }
        }
        if !tcp.connected {
            return;
        }
        loop {
            match tcp.stream.read(&mut self.buf) {
                Ok(0) => {
                    self.conclude(i, Verdict::Failed, now, "TCP connection closed without a reply");
                    return;
                }
                Ok(n) => tcp.received.extend_from_slice(&self.buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.conclude(i, Verdict::Failed, now, "TCP read failed");
                    return;
                }
            }
            if tcp.received.len() > 65_536 {
                self.conclude(i, Verdict::Failed, now, "TCP reply too large");
                return;
            }
        }
        // Take every complete message; provisional ones keep the probe going.
        while let Some(len) =
            self.targets[i].probe.as_ref().and_then(|p| p.tcp.as_ref()).and_then(|t| sip::message_len(&t.received))
        {
            let Some(tcp) = self.targets[i].probe.as_mut().and_then(|p| p.tcp.as_mut()) else { return };
            if len > tcp.received.len() {
                break;
            }
            let message: Vec<u8> = tcp.received.drain(..len).collect();
            self.on_message(i, &message, now);
        }
    }

    fn on_message(&mut self, i: usize, bytes: &[u8], now: Instant) {
        let Some(p) = self.targets[i].probe.as_ref() else {
            self.status.ignored.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let started = p.started;
        match sip::check_reply(bytes, &p.id) {
            Ok(Reply::Provisional) => {}
            Ok(Reply::Final { code, retry_after }) => {
                self.status.replies.fetch_add(1, Ordering::Relaxed);
                self.targets[i].last_code = Some(code);
                let rtt = now.duration_since(started);
                if self.config.probe.down_codes.contains(&code) {
                    let verdict = match retry_after {
                        Some(after) => Verdict::Drain { until: now + after },
                        None => Verdict::Failed,
                    };
                    self.conclude(i, verdict, now, "a down status code");
                } else {
                    self.conclude(i, Verdict::Alive { rtt }, now, "a final reply");
                }
            }
            Err(_) => {
                self.status.ignored.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Ends the probe in flight with `verdict` and schedules the next one.
    fn conclude(&mut self, i: usize, verdict: Verdict, now: Instant, why: &str) {
        let interval = self.config.probe.interval;
        let t = &mut self.targets[i];
        if let Some(mut p) = t.probe.take() {
            if let Some(tcp) = p.tcp.as_mut() {
                // Deregistering a socket we are about to drop cannot fail in a way that matters.
                let _deregistered = self.poll.registry().deregister(&mut tcp.stream);
            }
        }
        let before = t.health.state();
        let flipped = t.health.observe(verdict, now, self.thresholds);
        if flipped {
            self.dirty = true;
            self.status.flips.fetch_add(1, Ordering::Relaxed);
            let service = &self.config.services[t.service].name;
            eprintln!(
                "dnlb: probe: {service} {}/{}: {before:?} -> {:?} ({why})",
                t.addr,
                transport_name(t.transport),
                t.health.state()
            );
        }
        // A failure of a server still in service is re-checked at once; otherwise the next probe
        // keeps its place in the spread-out schedule.
        let failed = !matches!(verdict, Verdict::Alive { .. });
        t.next_due = if failed && t.health.state() == State::Up {
            now
        } else {
            let mut due = t.next_due + interval;
            while due <= now {
                due += interval;
            }
            due
        };
        let seq = t.seq;
        self.timers.push(Reverse((t.next_due, i, seq, Timer::Send)));
    }

    fn end_round(&mut self, now: Instant) {
        self.round += 1;
        self.dirty |= self.on_duty || self.latency;
        self.next_round += self.config.probe.interval;
        if self.next_round <= now {
            self.next_round = now + self.config.probe.interval;
        }
        let reports = self
            .targets
            .iter()
            .map(|t| ServerReport {
                service: t.service_name.clone(),
                addr: t.addr,
                transport: t.transport,
                state: t.health.state(),
                rtt: t.health.rtt(),
                last_code: t.last_code,
                flips: t.health.flips(),
            })
            .collect();
        if let Ok(mut servers) = self.status.servers.lock() {
            *servers = reports;
        }
    }

    /// The health the snapshot is built from, with last-good substitution and quantised RTTs.
    fn current_key(&mut self) -> PublishKey {
        let mut up: Vec<Vec<Vec<Transport>>> =
            self.config.services.iter().map(|s| vec![Vec::new(); s.servers.len()]).collect();
        let mut rtt_us: Vec<Vec<Option<u64>>> =
            self.config.services.iter().map(|s| vec![None; s.servers.len()]).collect();
        for t in &self.targets {
            if t.health.state() == State::Up {
                up[t.service][t.server].push(t.transport);
            }
            if self.config.services[t.service].policy == Policy::Latency {
                if let Some(rtt) = t.health.rtt() {
                    let slot = &mut rtt_us[t.service][t.server];
                    *slot = Some(slot.map_or(rtt.as_micros() as u64, |r: u64| r.min(rtt.as_micros() as u64)));
                }
            }
        }
        for (si, service) in self.config.services.iter().enumerate() {
            // Quantise latency to the weights it produces, so RTT jitter alone does not publish.
            if service.policy == Policy::Latency {
                let weights = select::latency_weights(&rtt_us[si]);
                rtt_us[si] = weights.iter().map(|&w| Some(u64::from(100_000 / w.max(1)))).collect();
            }
            let any_up = up[si].iter().any(|t| !t.is_empty());
            if any_up {
                self.last_good[si] = Some(up[si].clone());
            } else if service.all_down == AllDown::LastGood {
                if let Some(good) = &self.last_good[si] {
                    up[si] = good.clone();
                }
            }
        }
        PublishKey { health: Health { up, rtt_us }, round: if self.on_duty { self.round } else { 0 } }
    }

    fn publish_if_changed(&mut self, _now: Instant) {
        if !self.dirty {
            return;
        }
        self.dirty = false;
        let key = self.current_key();
        if self.published.as_ref() == Some(&key) {
            return;
        }
        self.generation += 1;
        match Snapshot::build(&self.config, &key.health, key.round, self.generation) {
            Ok(snapshot) => {
                self.snapshots.publish(snapshot);
                self.status.publishes.fetch_add(1, Ordering::Relaxed);
                self.published = Some(key);
            }
            Err(e) => eprintln!("dnlb: prober: cannot build answers: {e}"),
        }
    }
}
