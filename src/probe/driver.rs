//! The prober thread: a thin mio loop that carries out the [`Core`]'s actions on real sockets,
//! feeds it what the sockets say and the time, logs its flips and publishes its snapshots.
//!
//! ```text
//!  loop ─► core.handle_timeout(now) ─► actions: Open (fresh socket) · Send · Mute · Close
//!    │                                      ▲
//!    │  mio poll (until core.poll_timeout(), at most 100 ms) ─► readable / writable
//!    │     ─► recv / read, at most READ_BUDGET per socket per pass ─► core.handle(event)
//!    └──── core.poll_publish() ─► Snapshot::build ─► SnapshotHandle::publish
//!          heartbeat, counters, per-server reports ─► ProbeStatus (read by main and tests)
//! ```
//!
//! Every probe has its own socket, opened when the core asks and closed with its verdict: a UDP
//! socket *connected* to the server (the kernel drops datagrams from any other address and turns
//! an ICMP port unreachable into ECONNREFUSED), or a TCP connection (with a rustls client over it
//! for TLS, see [`super::tls`]: the core sees `Secured`, then plaintext). A socket's token carries the
//! probe's sequence number, so an event meant for an earlier probe's socket is never applied to a
//! later one. A socket that keeps delivering is read at most [`READ_BUDGET`] times per pass, then
//! the loop serves timers and the other sockets before coming back to it.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::net::{TcpStream, UdpSocket};
use mio::{Events, Interest, Poll, Token};

use super::core::{
    Action, Carried, Core, CoreError, Entropy, Event, OsEntropy, ProbeRef, ServerReport, Stats, TargetKey,
};
use super::health::State;
use super::tls;
use crate::config::{Config, StartState, Transport};
use crate::dns::encode::EncodeError;
use crate::snapshot::{Layout, Serving, Snapshot, SnapshotHandle};

/// Reads of one socket per pass before the loop moves on (fairness under a flood).
pub const READ_BUDGET: usize = 64;
/// The longest one TLS socket is served in one pass before the loop moves on: a step's work
/// depends on what the records ask of rustls (a KeyUpdate costs a key derivation), not only on
/// their bytes, so the read budget alone does not bound a pass's time.
pub const TLS_PASS_BUDGET: Duration = Duration::from_millis(2);
/// The longest the loop sleeps, so its heartbeat advances even when nothing is due.
const MAX_WAIT: Duration = Duration::from_millis(100);
/// How long [`Prober::shutdown`] waits for the thread before giving up on it (a working loop
/// sees the stop within [`MAX_WAIT`]).
pub const SHUTDOWN_LIMIT: Duration = Duration::from_secs(1);
/// The shortest stall the watchdog reports, whatever the interval: a busy host can deschedule a
/// healthy thread for a few hundred milliseconds.
const MIN_STALL: Duration = Duration::from_secs(1);

/// Why the prober could not start. Our environment's fault.
#[derive(Debug, thiserror::Error)]
pub enum ProberError {
    /// The core could not start (no randomness).
    #[error(transparent)]
    Core(#[from] CoreError),
    /// The configuration's names and fixed answers could not be encoded.
    #[error("cannot build answers: {0}")]
    Answers(#[from] EncodeError),
    /// The poll instance or the thread could not be created.
    #[error("cannot start the prober: {0}")]
    Io(#[from] io::Error),
}

/// Counters and per-server state the prober exports (read by the main thread and tests).
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
    /// Replies refused for their size (over 64 KiB, too many headers, too long a Content-Length).
    pub oversize: AtomicU64,
    /// Probe sockets muted after too many messages that answered nothing.
    pub muted: AtomicU64,
    /// Probes skipped because the random source failed.
    pub entropy_failures: AtomicU64,
    /// Stalls the watchdog saw (the heartbeat stood still for more than three intervals).
    pub stalls: AtomicU64,
    /// Milliseconds since the prober started, at its last loop iteration; a stalled prober
    /// stops advancing it.
    pub heartbeat_ms: AtomicU64,
    /// Per server and transport, refreshed once per interval and after every flip.
    pub servers: Mutex<Vec<ServerReport>>,
}

impl ProbeStatus {
    fn store(&self, s: Stats) {
        let set = |c: &AtomicU64, v: u64| c.store(v, Ordering::Relaxed);
        set(&self.sent, s.sent);
        set(&self.replies, s.replies);
        set(&self.ignored, s.ignored);
        set(&self.refused, s.refused);
        set(&self.timeouts, s.timeouts);
        set(&self.flips, s.flips);
        set(&self.publishes, s.publishes);
        set(&self.oversize, s.oversize);
        set(&self.muted, s.muted);
        set(&self.entropy_failures, s.entropy_failures);
    }
}

impl std::fmt::Display for ProbeStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        write!(
            f,
            "sent={} replies={} ignored={} refused={} timeouts={} flips={} publishes={} oversize={} muted={} entropy_failures={} stalls={}",
            get(&self.sent),
            get(&self.replies),
            get(&self.ignored),
            get(&self.refused),
            get(&self.timeouts),
            get(&self.flips),
            get(&self.publishes),
            get(&self.oversize),
            get(&self.muted),
            get(&self.entropy_failures),
            get(&self.stalls)
        )
    }
}

/// What a stopped prober hands to the next one (see [`Prober::stop_and_carry`]).
pub type Carry = HashMap<TargetKey, Carried>;

/// A reader's view of a running prober: its counters, reports and heartbeat, without its thread.
#[derive(Debug, Clone)]
pub struct ProbeView {
    status: Arc<ProbeStatus>,
    started: Instant,
}

impl ProbeView {
    /// The exported counters and per-server reports.
    pub fn status(&self) -> &ProbeStatus {
        &self.status
    }

    /// How long ago the prober's loop last went round.
    pub fn heartbeat_age(&self) -> Duration {
        let beat = Duration::from_millis(self.status.heartbeat_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(beat)
    }
}

/// An operator's drain or undrain of the servers at one address (`dnlb drain`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainRequest {
    /// Only this service's servers; `None`: every service's.
    pub service: Option<String>,
    /// The servers' address.
    pub ip: IpAddr,
    /// Only servers on this port; `None`: any port.
    pub port: Option<u16>,
    /// Drain (`true`) or undrain.
    pub drained: bool,
}

/// A drain request and where its answer (the number of server transports it matched) goes.
type Command = (DrainRequest, SyncSender<usize>);

/// How long [`ProbeControl::drain`] waits for the prober to apply and publish a drain.
const COMMAND_WAIT: Duration = Duration::from_secs(2);

/// A handle that asks a running prober for drains (the control socket's thread finds it in the
/// running view).
#[derive(Clone)]
pub struct ProbeControl {
    commands: SyncSender<Command>,
    waker: Arc<mio::Waker>,
}

impl ProbeControl {
    /// Applies `request` and returns once the answers that follow from it are published: how
    /// many server transports it matched (0: no such server).
    pub fn drain(&self, request: DrainRequest) -> io::Result<usize> {
        let (tx, rx) = sync_channel(1);
        self.commands.try_send((request, tx)).map_err(|_| io::Error::other("the prober is busy; try again"))?;
        self.waker.wake()?;
        rx.recv_timeout(COMMAND_WAIT).map_err(|_| io::Error::other("the prober did not answer within 2 s"))
    }
}

/// A running prober.
pub struct Prober {
    stop: Arc<AtomicBool>,
    /// Drain requests for the loop.
    commands: SyncSender<Command>,
    /// Wakes the loop at once when `stop` is set (a reload waits for the old prober).
    waker: Arc<mio::Waker>,
    thread: Option<JoinHandle<io::Result<Carry>>>,
    status: Arc<ProbeStatus>,
    started: Instant,
    stall_limit: Duration,
}

impl Prober {
    /// Starts the prober thread for `config`, publishing through `snapshots`. Fails before any
    /// thread starts if the answers cannot be encoded, or the random source or the poll instance
    /// is unavailable.
    pub fn spawn(config: Config, snapshots: SnapshotHandle) -> Result<Prober, ProberError> {
        let layout = Arc::new(Layout::new(&config)?);
        Prober::spawn_on(config, layout, snapshots, Box::new(OsEntropy::default()), &Carry::new())
    }

    /// [`Prober::spawn`] on `layout` (made from `config`), with a given random source, after a
    /// reload: servers that `carried` knows keep their health.
    pub fn spawn_on(
        config: Config,
        layout: Arc<Layout>,
        snapshots: SnapshotHandle,
        entropy: Box<dyn Entropy>,
        carried: &Carry,
    ) -> Result<Prober, ProberError> {
        Prober::spawn_in_fleet(config, layout, snapshots, entropy, carried, None)
    }

    /// [`Prober::spawn_on`] for a member of a fleet (`[cluster]`): duty, the others' verdicts
    /// and drains come through `fleet`, and this instance's verdicts go out through it. `None`:
    /// alone, exactly as without `[cluster]`.
    pub fn spawn_in_fleet(
        config: Config,
        layout: Arc<Layout>,
        snapshots: SnapshotHandle,
        entropy: Box<dyn Entropy>,
        carried: &Carry,
        fleet: Option<crate::cluster::Handle>,
    ) -> Result<Prober, ProberError> {
        crate::io::raise_fd_limit();
        let started = Instant::now();
        let mut core = Core::carrying(&config, started, entropy, carried)?;
        let fleet = fleet.map(|h| crate::cluster::prober::FleetLink::new(h, &config, &mut core));
        let poll = Poll::new()?;
        let waker = Arc::new(mio::Waker::new(poll.registry(), WAKE)?);
        if let Some(f) = &fleet {
            // The cluster thread wakes the loop when it publishes, so the others' verdicts
            // apply at once rather than at the loop's next timer.
            let w = waker.clone();
            f.set_waker(Box::new(move || {
                let _woken = w.wake();
            }));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let status = Arc::new(ProbeStatus::default());
        let stall_limit = (config.probe.interval * 3).max(MIN_STALL);
        let tls_configs = tls::client_configs(&config)?;
        let tls_names = (0..core.targets())
            .map(|i| {
                let (si, vi) = core.server_of(i).filter(|_| core.describe(i).is_some_and(|d| d.2 == Transport::Tls))?;
                tls::server_name(&config.services.get(si)?.servers.get(vi)?.tls_name)
            })
            .collect();
        let (commands, inbox) = sync_channel(16);
        let mut driver = Driver {
            inbox,
            tls_configs,
            tls_names,
            tls_errors: Vec::new(),
            core,
            poll,
            sockets: Vec::new(),
            backlog: Vec::new(),
            buf: vec![0u8; 65_536],
            status: status.clone(),
            snapshots,
            started,
            next_report: started,
            config,
            layout,
            fleet,
        };
        driver.sockets.resize_with(driver.core.targets(), || None);
        driver.tls_errors.resize_with(driver.core.targets(), || None);
        let s = stop.clone();
        let thread = std::thread::Builder::new().name("dnlb-prober".into()).spawn(move || {
            if let Some(core) = driver.config.probe.core {
                if let Err(e) = crate::io::affinity::pin_current_thread(core) {
                    tracing::warn!("prober: cannot pin to core {core}: {e}; running unpinned");
                }
            }
            driver.run(&s)?;
            Ok(driver.core.carry())
        })?;
        Ok(Prober { stop, commands, waker, thread: Some(thread), status, started, stall_limit })
    }

    /// A handle for drains, usable from another thread.
    pub fn control(&self) -> ProbeControl {
        ProbeControl { commands: self.commands.clone(), waker: self.waker.clone() }
    }

    /// The exported counters.
    pub fn status(&self) -> &Arc<ProbeStatus> {
        &self.status
    }

    /// Whether the thread has ended (it only ends on stop or an unrecoverable error).
    pub fn finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// How long ago the prober's loop last went round.
    pub fn heartbeat_age(&self) -> Duration {
        self.view().heartbeat_age()
    }

    /// What another thread (the metrics endpoint) may read while the prober runs.
    pub fn view(&self) -> ProbeView {
        ProbeView { status: self.status.clone(), started: self.started }
    }

    /// The heartbeat age past which the prober counts as stalled: three probe intervals, and at
    /// least one second.
    pub fn stall_limit(&self) -> Duration {
        self.stall_limit
    }

    /// Whether the prober has stopped working: its thread ended, or its heartbeat is older than
    /// [`Prober::stall_limit`]. Answers would then be frozen, so the caller should not go on
    /// serving them silently.
    pub fn stalled(&self) -> bool {
        self.finished() || self.heartbeat_age() > self.stall_limit
    }

    /// Stops the thread (within [`SHUTDOWN_LIMIT`]) and returns what its servers carry into a
    /// reloaded prober.
    pub fn stop_and_carry(mut self) -> io::Result<Carry> {
        self.stop_within_limit()
    }

    /// Asks the thread to stop without waiting for it (it is stalled: waiting would not help).
    pub fn abandon(mut self) {
        self.ask_to_stop();
        self.thread.take();
    }

    /// Stops the thread and returns how it ended; gives up after [`SHUTDOWN_LIMIT`] (a thread
    /// that does not stop is left behind and reported).
    pub fn shutdown(mut self) -> io::Result<()> {
        self.stop_within_limit().map(|_carry| ())
    }

    /// Sets the stop flag and wakes the loop, so it sees the flag at once.
    fn ask_to_stop(&self) {
        self.stop.store(true, Ordering::Release);
        // A loop that cannot be woken still sees the flag within MAX_WAIT.
        let _woken = self.waker.wake();
    }

    /// Asks the thread to stop and waits for it up to [`SHUTDOWN_LIMIT`]: what it carries, or why
    /// not. A thread that does not stop in time is detached (process exit ends it).
    fn stop_within_limit(&mut self) -> io::Result<Carry> {
        self.ask_to_stop();
        let deadline = Instant::now() + SHUTDOWN_LIMIT;
        while !self.finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        match self.thread.take().filter(JoinHandle::is_finished).map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(io::Error::other("prober thread panicked")),
            None => Err(io::Error::other(format!("the prober did not stop within {SHUTDOWN_LIMIT:?}"))),
        }
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        if self.thread.is_some() {
            // Dropped without a stop (an error on the way): its end is no one's to report.
            let _ended = self.stop_within_limit();
        }
    }
}

/// The health the first snapshot is built from, before any probe: per the start state.
pub fn initial_serving(config: &Config) -> Serving {
    match (config.probe.enabled, config.probe.start) {
        (false, _) | (true, StartState::Up) => Serving::all_up(config),
        (true, StartState::Unknown | StartState::Down) => Serving {
            up: config.services.iter().map(|s| vec![Vec::new(); s.servers.len()]).collect(),
            ..Serving::default()
        },
    }
}

/// A probe's socket.
enum Socket {
    Udp(UdpSocket),
    /// A TCP connection; for a TLS probe, with its TLS client run over it.
    Tcp {
        stream: TcpStream,
        connected: bool,
        tls: Option<Box<tls::Session>>,
    },
}

/// The socket of one target's probe in flight.
struct Slot {
    probe: ProbeRef,
    socket: Socket,
    muted: bool,
}

/// The token of the waker that [`Prober`] uses to stop the loop at once (no probe's token: those
/// carry a target in the low half, and no farm has 2^32 - 1 targets).
const WAKE: Token = Token(0xffff_ffff);

/// The token of a probe's socket: the target in the low half, the probe's sequence number (its
/// low 32 bits) in the high half.
fn token(probe: ProbeRef) -> Token {
    Token((probe.target & 0xffff_ffff) | ((probe.seq as usize & 0xffff_ffff) << 32))
}

struct Driver {
    /// Drain requests from [`ProbeControl`].
    inbox: Receiver<Command>,
    core: Core,
    /// Per service, the TLS client configuration of its TLS probes.
    tls_configs: Vec<Option<Arc<rustls::ClientConfig>>>,
    /// Per target, the name its certificate is checked against (`None` for a name rustls cannot
    /// take; validation refuses those for TLS servers).
    tls_names: Vec<Option<rustls::pki_types::ServerName<'static>>>,
    /// Per target, its last TLS failure's reason and rustls's words for it, logged with the
    /// failure when that reason is the one the failure changed to.
    tls_errors: Vec<Option<(&'static str, String)>>,
    poll: Poll,
    /// Per target, the socket of its probe in flight.
    sockets: Vec<Option<Slot>>,
    /// Targets whose socket still had data when its read budget ran out.
    backlog: Vec<usize>,
    buf: Vec<u8>,
    status: Arc<ProbeStatus>,
    snapshots: SnapshotHandle,
    started: Instant,
    next_report: Instant,
    config: Config,
    /// The names and fixed answers of `config`, made once, so a flip re-encodes only what health
    /// changes.
    layout: Arc<Layout>,
    /// The link to the fleet (`[cluster]`); `None` alone.
    fleet: Option<crate::cluster::prober::FleetLink>,
}

impl Driver {
    fn run(&mut self, stop: &AtomicBool) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        #[cfg(debug_assertions)]
        let freeze = test_freeze();
        while !stop.load(Ordering::Acquire) {
            let now = Instant::now();
            #[cfg(debug_assertions)]
            if freeze.is_some_and(|after| now.duration_since(self.started) >= after) {
                freeze_forever();
            }
            let beat = u64::try_from(now.duration_since(self.started).as_millis()).unwrap_or(u64::MAX);
            self.status.heartbeat_ms.store(beat, Ordering::Relaxed);
            self.commands(now);
            self.core.handle_timeout(now);
            self.apply_actions(now);
            self.after_pass(now);
            let wait = if self.backlog.is_empty() {
                self.core.poll_timeout().saturating_duration_since(Instant::now()).min(MAX_WAIT)
            } else {
                Duration::ZERO
            };
            match self.poll.poll(&mut events, Some(wait)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            let now = Instant::now();
            let mut ready: Vec<(usize, bool)> =
                std::mem::take(&mut self.backlog).into_iter().map(|i| (i, false)).collect();
            for event in events.iter() {
                let Token(t) = event.token();
                let target = t & 0xffff_ffff;
                let current = self.sockets.get(target).and_then(Option::as_ref).is_some_and(|s| token(s.probe).0 == t);
                if current {
                    ready.push((target, event.is_writable()));
                }
            }
            for (target, writable) in ready {
                self.service(target, writable, now);
            }
            self.after_pass(now);
        }
        Ok(())
    }

    /// Applies the drain requests waiting, publishes what follows from them, then answers them:
    /// whoever asked sees the new answers as soon as the answer arrives.
    fn commands(&mut self, now: Instant) {
        let mut answered = Vec::new();
        while let Ok((r, reply)) = self.inbox.try_recv() {
            let matched = self.core.set_drained(r.service.as_deref(), r.ip, r.port, r.drained, now);
            let port = r.port.map_or(String::new(), |p| format!(":{p}"));
            let verb = if r.drained { "drained" } else { "undrained" };
            tracing::info!(server = %format_args!("{}{port}", r.ip), matched, "{verb} by the operator");
            answered.push((reply, matched));
        }
        if answered.is_empty() {
            return;
        }
        // Reports at once too, so `dnlb status` right after shows the drain.
        self.next_report = now;
        self.after_pass(now);
        for (reply, matched) in answered {
            // The asker may have given up waiting; the drain is applied either way.
            let _answered = reply.try_send(matched);
        }
    }

    /// Publishes, logs flips, exports counters and, once per interval, the per-server reports.
    fn after_pass(&mut self, now: Instant) {
        if let Some(f) = self.fleet.as_mut() {
            f.step(&mut self.core, now);
        }
        // Counters and reports first, then the answers: whoever sees a new snapshot sees the
        // counts and the verdicts that led to it.
        self.status.store(self.core.stats());
        let mut flipped = false;
        while let Some(f) = self.core.poll_flip() {
            flipped = true;
            if let Some((service, addr, transport)) = self.core.describe(f.target) {
                let transport = transport.name();
                let (from, why) = (f.from.name(), f.why);
                // Bounded by the probe interval per server, so never rate-limited: every flip is
                // an event an operator may need to line up with a complaint.
                if f.to == State::Up {
                    tracing::info!(%service, server = %addr, transport, from, why, "server up");
                } else {
                    let to = f.to.name();
                    tracing::warn!(%service, server = %addr, transport, from, to, why, "server out of the answers");
                }
            }
        }
        while let Some(change) = self.core.poll_failure_change() {
            flipped = true;
            let detail = self.tls_errors.get_mut(change.target).and_then(Option::take);
            if let Some((service, addr, transport)) = self.core.describe(change.target) {
                let transport = transport.name();
                match (change.failure, detail) {
                    (Some(why), detail) => {
                        // A detail left by an earlier failure with another reason is not this one's.
                        let detail = detail.filter(|(reason, _)| *reason == why);
                        let reason = detail.map_or_else(|| why.to_string(), |(_, d)| format!("{why} ({d})"));
                        tracing::warn!(%service, server = %addr, transport, %reason, "probe failing");
                    }
                    (None, _) => tracing::info!(%service, server = %addr, transport, "probes succeed again"),
                }
            }
        }
        // Once per interval, and at once after a flip, so a scrape sees a server go down as
        // soon as its answers stop naming it.
        if now >= self.next_report || flipped {
            let reports = self.core.reports();
            if let Ok(mut servers) = self.status.servers.lock() {
                *servers = reports;
            }
            self.next_report = now + self.config.probe.interval;
        }
        while let Some(p) = self.core.poll_publish() {
            match Snapshot::build_with(&self.layout, &self.config, &p.serving, p.round) {
                Ok(snapshot) => {
                    self.snapshots.publish(snapshot);
                }
                Err(e) => {
                    tracing::error!("prober: cannot build answers: {e}");
                    self.core.publish_failed();
                    break;
                }
            }
        }
        // The publish count was taken before; store it again now that it moved.
        self.status.store(self.core.stats());
    }

    /// Carries out every action the core queued, feeding back what opening a socket gave.
    fn apply_actions(&mut self, now: Instant) {
        while let Some(action) = self.core.poll_action() {
            match action {
                Action::Open { probe, transport, addr } => {
                    let event = match self.open(probe, transport, addr) {
                        Ok(local) => Event::Opened { local },
                        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Event::Refused,
                        Err(_) => Event::Failed,
                    };
                    self.core.handle(probe, event, now);
                }
                Action::Send { probe } => {
                    let event = self.send(probe);
                    if let Some(event) = event {
                        self.core.handle(probe, event, now);
                    }
                }
                Action::Mute { probe } => {
                    if let Some(slot) = slot_of(&mut self.sockets, probe) {
                        slot.muted = true;
                        let registry = self.poll.registry();
                        // A socket that cannot be deregistered is closed at the verdict anyway.
                        let _deregistered = match &mut slot.socket {
                            Socket::Udp(s) => registry.deregister(s),
                            Socket::Tcp { stream, .. } => registry.deregister(stream),
                        };
                    }
                }
                Action::Close { probe } => {
                    if self.slot(probe).is_some() {
                        // Closing the descriptor also removes it from the poll set.
                        self.sockets[probe.target] = None;
                    }
                }
            }
        }
    }

    /// The socket of `probe`, if it is still the one open for its target.
    fn slot(&mut self, probe: ProbeRef) -> Option<&mut Slot> {
        slot_of(&mut self.sockets, probe)
    }

    /// Opens a fresh socket for `probe`; returns its local address.
    fn open(&mut self, probe: ProbeRef, transport: Transport, addr: SocketAddr) -> io::Result<SocketAddr> {
        let (socket, local) = match transport {
            Transport::Udp => {
                // Created non-blocking in one call and connected without an explicit bind (the
                // kernel picks a random free port on connect): a socket per probe costs system
                // calls, so none is spent that is not needed (see tuning.md).
                let socket = socket2::Socket::new(
                    socket2::Domain::for_address(addr),
                    socket2::Type::DGRAM.nonblocking().cloexec(),
                    Some(socket2::Protocol::UDP),
                )?;
                socket.connect(&addr.into())?;
                // The Via sent-by is this address: a socket without one fails the probe rather
                // than send a made-up `0.0.0.0:0`.
                let local = socket
                    .local_addr()?
                    .as_socket()
                    .ok_or_else(|| io::Error::other("the probe socket has no IP address"))?;
                let mut s = UdpSocket::from_std(socket.into());
                self.poll.registry().register(&mut s, token(probe), Interest::READABLE)?;
                (Socket::Udp(s), local)
            }
            Transport::Tcp | Transport::Tls => {
                let tls = if transport == Transport::Tls {
                    let config =
                        self.core.server_of(probe.target).and_then(|(si, _)| self.tls_configs.get(si)?.clone());
                    let name = self.tls_names.get(probe.target).cloned().flatten();
                    let (Some(config), Some(name)) = (config, name) else {
                        return Err(io::Error::other("no TLS configuration for this server"));
                    };
                    Some(Box::new(tls::Session::new(config, name).map_err(io::Error::other)?))
                } else {
                    None
                };
                let mut stream = TcpStream::connect(addr)?;
                let local = stream.local_addr()?;
                self.poll.registry().register(&mut stream, token(probe), Interest::READABLE | Interest::WRITABLE)?;
                (Socket::Tcp { stream, connected: false, tls }, local)
            }
        };
        if let Some(slot) = self.sockets.get_mut(probe.target) {
            *slot = Some(Slot { probe, socket, muted: false });
        }
        Ok(local)
    }

    /// Sends `probe`'s request; returns the event a failure means.
    fn send(&mut self, probe: ProbeRef) -> Option<Event<'static>> {
        let request = self.core.request(probe);
        let slot = slot_of(&mut self.sockets, probe)?;
        let result = match &mut slot.socket {
            Socket::Udp(s) => s.send(request).map(|_| ()),
            // A request is a few hundred bytes on a fresh connection: it fits the send buffer
            // at once, or the connection is not worth waiting on.
            Socket::Tcp { stream, tls: None, .. } => stream.write_all(request),
            Socket::Tcp { stream, tls: Some(tls), .. } => tls::send(tls, stream, request),
        };
        match result {
            Ok(()) => None,
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Some(Event::Refused),
            // A full UDP send buffer: the retransmission will try again.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && matches!(slot.socket, Socket::Udp(_)) => None,
            Err(_) => Some(Event::Failed),
        }
    }

    /// Reads what target `i`'s socket has, within the read budget, and hands it to the core.
    fn service(&mut self, i: usize, writable: bool, now: Instant) {
        let Some(probe) = self.sockets.get(i).and_then(Option::as_ref).filter(|s| !s.muted).map(|s| s.probe) else {
            return;
        };
        let connect = match self.slot(probe) {
            Some(Slot { socket: Socket::Tcp { stream, connected, .. }, .. }) if writable && !*connected => {
                match stream.take_error() {
                    Ok(None) if stream.peer_addr().is_ok() => {
                        *connected = true;
                        Some(Event::Connected)
                    }
                    Ok(None) => None, // still connecting
                    Ok(Some(_)) | Err(_) => Some(Event::Refused),
                }
            }
            _ => None,
        };
        if let Some(event) = connect {
            self.core.handle(probe, event, now);
            self.apply_actions(now);
        }
        if matches!(self.slot(probe), Some(Slot { socket: Socket::Tcp { tls: Some(_), .. }, .. })) {
            self.service_tls(i, probe, now);
            return;
        }
        for _ in 0..READ_BUDGET {
            let mut buf = std::mem::take(&mut self.buf);
            let read = match self.slot(probe) {
                Some(Slot { muted: false, socket: Socket::Udp(s), .. }) => s.recv(&mut buf).map(|n| (n, true)),
                Some(Slot { muted: false, socket: Socket::Tcp { stream, connected: true, .. }, .. }) => {
                    stream.read(&mut buf).map(|n| (n, false))
                }
                _ => {
                    self.buf = buf;
                    return;
                }
            };
            let event = match &read {
                Ok((n, true)) => Some(Event::Datagram(&buf[..*n])),
                Ok((0, false)) => Some(Event::Closed),
                Ok((n, false)) => Some(Event::Stream(&buf[..*n])),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => None,
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Some(Event::Refused),
                Err(_) => Some(Event::Failed),
            };
            let done = match (&read, event) {
                (_, Some(event)) => {
                    self.core.handle(probe, event, now);
                    matches!(event, Event::Closed | Event::Refused | Event::Failed)
                }
                (Err(e), None) => e.kind() == io::ErrorKind::WouldBlock,
                (Ok(_), None) => false,
            };
            self.buf = buf;
            self.apply_actions(now);
            if done {
                return;
            }
        }
        // Budget spent and the socket may hold more: come back after the others had their turn.
        if self.slot(probe).is_some_and(|s| !s.muted) {
            self.backlog.push(i);
        }
    }
}

impl Driver {
    /// Moves target `i`'s TLS connection on, within the read budget and [`TLS_PASS_BUDGET`]: the
    /// handshake, then the decrypted reply bytes into the core as a TCP stream's.
    fn service_tls(&mut self, i: usize, probe: ProbeRef, now: Instant) {
        let began = Instant::now();
        for _ in 0..READ_BUDGET {
            if began.elapsed() > TLS_PASS_BUDGET {
                break;
            }
            let mut buf = std::mem::take(&mut self.buf);
            let step = match self.slot(probe) {
                Some(Slot {
                    muted: false, socket: Socket::Tcp { stream, connected: true, tls: Some(tls) }, ..
                }) => tls::step(tls, stream, &mut buf),
                _ => {
                    self.buf = buf;
                    return;
                }
            };
            if step.secured {
                self.core.handle(probe, Event::Secured, now);
                self.apply_actions(now);
            }
            if step.plaintext > 0 {
                self.core.handle(probe, Event::Stream(&buf[..step.plaintext]), now);
                self.apply_actions(now);
            }
            self.buf = buf;
            match step.end {
                Some(tls::End::Failed(failure, detail)) => {
                    if let Some(slot) = self.tls_errors.get_mut(i) {
                        *slot = Some((failure.reason(), detail));
                    }
                    self.core.handle(probe, Event::TlsFailed(failure), now);
                }
                Some(tls::End::Closed) => self.core.handle(probe, Event::Closed, now),
                Some(tls::End::Io) => self.core.handle(probe, Event::Failed, now),
                None if step.drained => return,
                None => continue,
            }
            self.apply_actions(now);
            return;
        }
        // Budget spent and the socket may hold more: come back after the others had their turn.
        if self.slot(probe).is_some_and(|s| !s.muted) {
            self.backlog.push(i);
        }
    }
}

/// Test hook, in debug builds only: `DNLB_TEST_FREEZE_PROBER_MS=N` freezes the prober's loop N ms
/// after it starts (as a bug that spins or blocks would), so the watchdog can be tested against
/// the real binary. Release builds do not have it.
#[cfg(debug_assertions)]
fn test_freeze() -> Option<Duration> {
    std::env::var("DNLB_TEST_FREEZE_PROBER_MS").ok()?.parse().ok().map(Duration::from_millis)
}

/// Blocks the calling thread for good, deaf to the stop flag (see [`test_freeze`]).
#[cfg(debug_assertions)]
fn freeze_forever() -> ! {
    loop {
        std::thread::park();
    }
}

/// The socket of `probe` in `sockets`, if it is still the one open for its target.
fn slot_of(sockets: &mut [Option<Slot>], probe: ProbeRef) -> Option<&mut Slot> {
    sockets.get_mut(probe.target)?.as_mut().filter(|s| s.probe == probe)
}
