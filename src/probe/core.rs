//! The prober's protocol core: schedule, timers, retransmissions, TCP framing, verdicts and
//! publish decisions. It owns no socket and reads no clock: the driver feeds it events and `now`,
//! and carries out the actions it asks for (the way quinn-proto sits under quinn).
//!
//! ```text
//!   driver                                 Core
//!   ──────                                 ────
//!   handle_timeout(now) ─────────────────► due timers: Send ─► new identity ─► Action::Open
//!                                                      Retransmit ─► Action::Send (backoff × 2)
//!                                                      Timeout ─► verdict Failed
//!   Open done ─► handle(Opened{local}) ──► render the request from the template ─► Action::Send
//!   bytes ─► handle(Datagram | Stream) ──► bounded framing ─► check_reply ─► verdict
//!   ICMP / refused / EOF ─► handle(..) ──► verdict Failed
//!   TLS: Connected ─► handle ────────────► wait; the driver runs the handshake
//!        Secured / TlsFailed(reason) ────► Action::Send / verdict Failed with the reason
//!                                          verdict ─► Health::observe ─► flipped? ─► Flip record
//!                                                                                  └► History::record
//!                                                  ─► Action::Close, next probe scheduled
//!   poll_publish() ◄───────────────────── answers changed? ─► Publish (health, round)
//! ```
//!
//! Everything a peer sends is bounded before it meets arithmetic or memory: a TCP reply is read
//! into at most [`sip::MAX_MESSAGE`] bytes, a Retry-After is capped at the configured maximum, a
//! probe takes at most [`MAX_UNMATCHED`] messages that do not answer it (after that its socket is
//! muted and the probe ends by its timeout), and every time sum saturates. Each probe leaves from
//! a fresh socket, so a blind forger must guess its source port as well as its identity.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::health::{Health, State, Thresholds, Verdict};
use super::history::{self, Change, History};
use super::policy::{AnswerPolicy, ServerNow};
use super::sip::{self, Frame, ProbeId, Reply, RequestTemplate};
use crate::cluster::core::{combine, Combined, Seen};
use crate::config::{Config, Policy, ProbeMethod, StartState, Transport};
use crate::snapshot;

/// How early a timer may fire, so the driver sleeps at least this long between batches (at
/// 10,000 probes a second the next timer is always closer than a millisecond; see tuning.md).
pub const TIMER_SLACK: Duration = Duration::from_millis(2);
/// Messages that answer nothing (forged, garbled, stray) one probe reads before its socket is
/// muted: a flood then costs the kernel, not the prober, and the probe ends by its timeout.
pub const MAX_UNMATCHED: u32 = 1024;
/// Flip records kept for the driver to log; older ones are dropped if nobody drains them.
const MAX_FLIP_RECORDS: usize = 4096;
/// How long, in probe intervals, a path stays lossy after the last sign of loss (a probe that
/// timed out, or a reply later than the first retransmission): its probes go out as
/// `probe.loss_copies` copies meanwhile. At 30 % loss a sign comes every other probe or so, so
/// the copies stay on; on a clean path they stop a minute after the last lost datagram.
const LOSS_MEMORY: u32 = 60;

/// Why the core cannot run. Our environment's fault.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// The system's random source failed: probe identities would be guessable, so the prober
    /// does not start.
    #[error("the system's random source failed: {0}")]
    Entropy(String),
    /// A server's probe request cannot be built. Validation refuses such a configuration with
    /// the same reason, so this is a configuration that skipped validation: its fault.
    #[error("service `{service}`, server {addr} ({transport:?}): {error}")]
    Request {
        /// The service's name.
        service: String,
        /// The server's address and the transport's port.
        addr: SocketAddr,
        /// The transport.
        transport: Transport,
        /// Why the request cannot be built.
        error: sip::RequestError,
    },
}

/// A source of random 64-bit words for probe identities and schedule jitter.
pub trait Entropy: Send {
    /// Fills `out`; an error means no randomness is available.
    fn fill(&mut self, out: &mut [u64]) -> Result<(), CoreError>;
}

/// The operating system's random source, drawn 4 KiB at a time (one system call per hundred
/// probes instead of one per probe).
#[derive(Debug, Default)]
pub struct OsEntropy {
    pool: Vec<u64>,
}

impl Entropy for OsEntropy {
    fn fill(&mut self, out: &mut [u64]) -> Result<(), CoreError> {
        for w in out.iter_mut() {
            if self.pool.is_empty() {
                let mut bytes = [0u8; 4096];
                getrandom::fill(&mut bytes).map_err(|e| CoreError::Entropy(e.to_string()))?;
                self.pool = bytes.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect();
            }
            *w = self.pool.pop().unwrap_or_default();
        }
        Ok(())
    }
}

/// Which probe an action or event is about: the target and the probe's sequence number, so an
/// event from an earlier probe's socket is recognised as stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProbeRef {
    /// Index of the target (one server on one transport).
    pub target: usize,
    /// The probe's sequence number for that target.
    pub seq: u64,
}

/// What the core asks the driver to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Open a fresh socket for this probe: UDP connected to `addr`, or a TCP connection to it
    /// (also for TLS); report [`Event::Opened`] with its local address, or [`Event::Failed`].
    Open {
        /// The probe.
        probe: ProbeRef,
        /// Its transport.
        transport: Transport,
        /// The server's address and port.
        addr: SocketAddr,
    },
    /// Send the probe's request ([`Core::request`]) on its socket.
    Send {
        /// The probe.
        probe: ProbeRef,
    },
    /// Stop reading the probe's socket (it sent too much that answers nothing).
    Mute {
        /// The probe.
        probe: ProbeRef,
    },
    /// Close the probe's socket.
    Close {
        /// The probe.
        probe: ProbeRef,
    },
}

/// What the driver saw on a probe's socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// The socket is open (UDP connected, or a TCP connect under way) with this local address.
    Opened {
        /// The socket's local address (the Via sent-by).
        local: SocketAddr,
    },
    /// A TCP connection completed.
    Connected,
    /// TLS: the handshake completed and the certificate passed the service's check; the
    /// request may go out (bytes after this are decrypted [`Event::Stream`]s).
    Secured,
    /// TLS: the handshake failed, the certificate was refused, or the server broke TLS after.
    TlsFailed(TlsFailure),
    /// A UDP datagram.
    Datagram(&'a [u8]),
    /// Bytes read from a TCP connection.
    Stream(&'a [u8]),
    /// The peer closed the TCP connection.
    Closed,
    /// ICMP port unreachable (UDP) or a refused connection (TCP).
    Refused,
    /// The socket could not be opened, written or read.
    Failed,
}

/// Why a TLS handshake failed, as the driver saw it; [`TlsFailure::reason`] is what status and
/// the logs show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TlsFailure {
    /// The certificate's validity period has ended.
    Expired,
    /// The certificate's validity period has not begun.
    NotYetValid,
    /// The certificate does not name the server (its `host`, or the service name).
    NameMismatch,
    /// The certificate chain does not lead to a CA the service trusts.
    UnknownIssuer,
    /// The certificate is otherwise unacceptable: a bad signature, revoked, the wrong usage,
    /// unparsable.
    BadCertificate,
    /// The server sent a TLS alert (it refused something of ours).
    Alert,
    /// The server closed the connection before the handshake completed.
    Closed,
    /// Any other protocol failure: not TLS at all, no common version or cipher suite.
    Handshake,
    /// The server broke the TLS protocol after the handshake (a bad record, too many
    /// KeyUpdates without data between them).
    Protocol,
    /// The server sent more TLS records without reply bytes in them than a reply comes with
    /// (a flood of KeyUpdates, session tickets or empty records).
    Idle,
}

impl TlsFailure {
    /// What status, metrics and logs say.
    pub fn reason(self) -> &'static str {
        match self {
            TlsFailure::Expired => "TLS: certificate expired",
            TlsFailure::NotYetValid => "TLS: certificate not valid yet",
            TlsFailure::NameMismatch => "TLS: certificate does not match the server name",
            TlsFailure::UnknownIssuer => "TLS: certificate issuer not trusted",
            TlsFailure::BadCertificate => "TLS: certificate rejected",
            TlsFailure::Alert => "TLS: alert from the server",
            TlsFailure::Closed => "TLS: connection closed during the handshake",
            TlsFailure::Handshake => "TLS: handshake failed",
            TlsFailure::Protocol => "TLS: protocol error after the handshake",
            TlsFailure::Idle => "TLS: too many records without a reply",
        }
    }
}

/// The reason a probe that timed out in the middle of a TLS handshake fails with.
pub const TLS_HANDSHAKE_TIMEOUT: &str = "TLS: handshake timed out";

/// The prober's counters, kept by the core and copied out by the driver.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Probe requests sent, retransmissions included.
    pub sent: u64,
    /// Replies that matched a probe.
    pub replies: u64,
    /// Datagrams or messages that matched no probe (forged, late, garbled); ignored.
    pub ignored: u64,
    /// Probes ended by an ICMP refusal or a refused TCP connection.
    pub refused: u64,
    /// Probes that timed out.
    pub timeouts: u64,
    /// State flips, all servers together.
    pub flips: u64,
    /// Snapshots the core asked to publish.
    pub publishes: u64,
    /// Replies refused for their size (over 64 KiB, too many headers, a Content-Length too large).
    pub oversize: u64,
    /// Probe sockets muted after [`MAX_UNMATCHED`] unmatched messages.
    pub muted: u64,
    /// Probes not sent because the random source failed (no verdict is drawn from them).
    pub entropy_failures: u64,
}

/// One state change, for the driver to log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flip {
    /// The target that flipped.
    pub target: usize,
    /// Its state before.
    pub from: State,
    /// Its state now.
    pub to: State,
    /// What decided it.
    pub why: &'static str,
}

/// A target whose reason for failing changed (to log once per change, not once per probe).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureChange {
    /// The target.
    pub target: usize,
    /// Why its probes fail now; `None`: they succeed again.
    pub failure: Option<&'static str>,
}

/// What identifies a probed target across a reload: its service, address and transport.
pub type TargetKey = (Arc<str>, SocketAddr, Transport);

/// What a target carries over a reload: its health machine, last code, last change, history and
/// whether an operator drained it.
#[derive(Debug, Clone)]
pub struct Carried {
    health: Health,
    last_code: Option<u16>,
    changed: Option<(Instant, &'static str)>,
    history: Arc<History>,
    drained: bool,
    /// The server's `drain` setting when it was carried: a reload that changes it applies it.
    drain_configured: bool,
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
    /// When the state last changed, and what decided it (None before any change).
    pub changed: Option<(Instant, &'static str)>,
    /// Why the last probe failed (a TLS certificate problem, a timeout, a refusal); `None`
    /// when it succeeded or none has ended yet.
    pub failure: Option<&'static str>,
    /// Taken out of the answers by an operator (`dnlb drain`); still probed.
    pub drained: bool,
    /// The RFC 7339 `oc` reduction in force (percent), if the server asked for one.
    pub overload: Option<u8>,
    /// Whether its UDP probes go out as several copies (loss was seen on its path lately).
    pub lossy: bool,
    /// Its last changes and flap counts (shared with the core until the next change).
    pub history: Arc<History>,
    /// In a fleet (`[cluster]`): the health the answers use (this instance's verdict combined
    /// with the other probers'), and whether this instance probes the server now.
    pub fleet: Option<(State, bool)>,
}

/// What the answers are built from; the core asks for a new snapshot only when this changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// Who is served per service, server and transport, with what weight (after the last-good
    /// substitution).
    pub serving: snapshot::Serving,
    /// The probe round (on-duty services rotate per round; 0 when none does).
    pub round: u64,
}

/// The settings the core runs by, taken from `[probe]` once.
#[derive(Debug, Clone)]
struct Settings {
    interval: Duration,
    timeout: Duration,
    retransmit: Duration,
    thresholds: Thresholds,
    down_codes: Vec<u16>,
    max_retry_after: Duration,
    loss_copies: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the driver to open the socket.
    Opening,
    /// TCP: connect under way.
    Connecting,
    /// TLS: connected, the driver runs the handshake.
    Handshaking,
    /// The request is out; waiting for replies.
    Sent,
}

/// A TCP reply being framed: bytes so far and how far the header end was searched.
#[derive(Debug, Default, Clone)]
struct StreamBuf {
    bytes: Vec<u8>,
    scanned: usize,
}

/// What a probe in flight holds.
#[derive(Debug, Clone)]
struct InFlight {
    id: ProbeId,
    started: Instant,
    request: Vec<u8>,
    backoff: Duration,
    phase: Phase,
    stream: StreamBuf,
    unmatched: u32,
    /// Copies of the request to send, spread over the first half of the timeout (1: plain
    /// retransmissions with backoff).
    copies: u32,
    /// Copies sent so far.
    sent: u32,
}

/// An RFC 7339 overload reduction a server asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Overload {
    /// The reduction, 1 to 100 percent.
    percent: u8,
    /// When it runs out, unless a later reply renews it.
    until: Instant,
    /// The `oc-seq` it came with, to ignore older signals that arrive late.
    seq: Option<u64>,
}

/// One server on one transport.
#[derive(Debug, Clone)]
struct Target {
    service: usize,
    server: usize,
    transport: Transport,
    addr: SocketAddr,
    method: ProbeMethod,
    health: Health,
    template: RequestTemplate,
    probe: Option<InFlight>,
    /// Increases per probe; timers and events of older probes are stale.
    seq: u64,
    cseq: u32,
    /// When the next regular probe is due.
    next_due: Instant,
    last_code: Option<u16>,
    /// When the state last changed, and why.
    changed: Option<(Instant, &'static str)>,
    /// Its last changes and flap counts; copied on write, so reports share it until it changes.
    history: Arc<History>,
    /// Why the last probe failed, if it did.
    failure: Option<&'static str>,
    /// Taken out of the answers by an operator; still probed.
    drained: bool,
    /// The server's `drain` setting (see [`Carried`]).
    drain_configured: bool,
    /// The overload reduction in force.
    overload: Option<Overload>,
    /// Whether an [`Timer::OverloadEnds`] timer is pending (one at a time per target).
    overload_timer: bool,
    /// Loss was seen on the path lately: probes go out as copies until then.
    lossy_until: Option<Instant>,
    /// Whether this instance probes the target (always, alone; its duty, in a fleet).
    probing: bool,
    /// What the fleet says of the target; `None` without `[cluster]`.
    shared: Option<Shared>,
}

/// One target's part in a fleet (see [`crate::cluster`]).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Shared {
    /// This instance is one of the server's current probers: its own verdict counts.
    counts_local: bool,
    /// A verdict of this instance's own came since its probing last resumed (a stale one
    /// never counts).
    fresh: bool,
    /// The other current probers' verdicts on this transport.
    remote: Vec<Seen>,
    /// Drained cluster-wide (a drain key in etcd).
    drained: bool,
    /// The health the answers use: the combined verdicts; kept while none is fresh.
    effective: State,
    /// What was last reported to the fleet.
    reported: Option<Seen>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Send,
    Retransmit,
    Timeout,
    /// An overload reduction may have run out (not tied to a probe).
    OverloadEnds,
}

impl Target {
    /// A history entry with what this target looks like at `now` (its state unchanged; the
    /// caller sets what changed and why).
    fn snapshot_now(&self, now: Instant) -> Change {
        let state = self.health.state();
        Change {
            at: now,
            from: state,
            to: state,
            drained: self.drained,
            why: "",
            rtt_us: self.health.rtt().map(history::micros),
            code: self.last_code,
            overload: self.overload.map_or(0, |o| o.percent),
        }
    }
}

/// `now + d`, saturating instead of panicking at the end of `Instant`'s range.
fn after(now: Instant, d: Duration) -> Instant {
    now.checked_add(d).unwrap_or(now)
}

/// The gap between the copies of a probe on a lossy path: `copies` spread over the first half of
/// the timeout, so the last copy still has half the timeout for its reply.
fn copy_spacing(timeout: Duration, copies: u32) -> Duration {
    (timeout / copies.saturating_mul(2).max(1)).max(Duration::from_millis(1))
}

/// The first slot on `due`'s grid (steps of `interval`) that lies after `now`, computed in one
/// step however far the clock jumped.
fn next_slot(due: Instant, interval: Duration, now: Instant) -> Instant {
    if due > now {
        return due;
    }
    let behind = now.duration_since(due).as_nanos();
    let step = interval.as_nanos().max(1);
    let skip = behind / step + 1;
    let ahead = Duration::from_nanos(u64::try_from(skip.saturating_mul(step) - behind).unwrap_or(u64::MAX));
    after(now, ahead)
}

/// The prober's state machine for every target of a configuration.
pub struct Core {
    settings: Settings,
    /// Who is served with what weight, from the targets' state (and last good).
    policy: AnswerPolicy,
    targets: Vec<Target>,
    timers: BinaryHeap<Reverse<(Instant, usize, u64, Timer)>>,
    actions: VecDeque<Action>,
    flips: VecDeque<Flip>,
    failure_changes: VecDeque<FailureChange>,
    entropy: Box<dyn Entropy>,
    published: Option<Publish>,
    round: u64,
    next_round: Instant,
    on_duty: bool,
    latency: bool,
    /// Whether something that may change the answers happened since the last publish check: a
    /// flip, a new round for on-duty, new RTTs for latency. Building the key is O(servers), so it
    /// is done only then.
    dirty: bool,
    /// Start-up without a stampede: with `start = "unknown"`, nothing is published until every
    /// target has its first verdict or this time (one round and a timeout) has passed.
    hold: Option<Instant>,
    /// Targets without a first verdict yet.
    undecided: usize,
    stats: Stats,
    /// In a fleet: whether the other probers' verdicts count (attached, or detached for less
    /// than a lease TTL); otherwise this instance's own verdicts decide.
    clustered: bool,
    /// In a fleet: targets whose own verdict is to be reported (see [`Core::poll_verdict`]).
    verdicts: VecDeque<usize>,
}

impl Core {
    /// A core for every server and transport of `config`, starting at `now`. The first round is
    /// spread evenly over one interval, with jitter inside each slot.
    pub fn new(config: &Config, now: Instant, entropy: Box<dyn Entropy>) -> Result<Core, CoreError> {
        Core::carrying(config, now, entropy, &std::collections::HashMap::new())
    }

    /// A core for `config` in which every target that `carried` knows (same service, address and
    /// transport: a reload that kept the server) keeps its health, so it neither re-rises nor
    /// loses a drain; new targets start in the configured start state.
    pub fn carrying(
        config: &Config,
        now: Instant,
        mut entropy: Box<dyn Entropy>,
        carried: &std::collections::HashMap<TargetKey, Carried>,
    ) -> Result<Core, CoreError> {
        let p = &config.probe;
        let start = match p.start {
            StartState::Unknown => State::Unknown,
            StartState::Up => State::Up,
            StartState::Down => State::Down,
        };
        let mut targets = Vec::new();
        for (si, service) in config.services.iter().enumerate() {
            for (vi, server) in service.servers.iter().enumerate() {
                for &transport in &server.transports {
                    let addr = SocketAddr::new(server.address, server.port_for(transport));
                    let kept = carried.get(&(Arc::from(service.name.as_str()), addr, transport));
                    // `drain = true` drains; a reload keeps a `dnlb drain`/`undrain` given since,
                    // unless it changes the server's `drain` line, which then decides.
                    let drained = match kept {
                        Some(c) if c.drain_configured == server.drain => c.drained,
                        _ => server.drain,
                    };
                    let mut history = kept.map_or_else(|| Arc::new(History::default()), |c| c.history.clone());
                    if let Some(c) = kept.filter(|c| c.drained != drained) {
                        let why =
                            if drained { "drained in the configuration" } else { "undrained in the configuration" };
                        let change = Change {
                            at: now,
                            from: c.health.state(),
                            to: c.health.state(),
                            drained,
                            why,
                            rtt_us: c.health.rtt().map(history::micros),
                            code: c.last_code,
                            overload: 0,
                        };
                        Arc::make_mut(&mut history).record(change);
                    }
                    let template = RequestTemplate::new(server.probe_method, addr, transport).map_err(|error| {
                        CoreError::Request { service: service.name.clone(), addr, transport, error }
                    })?;
                    targets.push(Target {
                        service: si,
                        server: vi,
                        transport,
                        addr,
                        method: server.probe_method,
                        health: kept.map_or_else(|| Health::new(start), |c| c.health.clone()),
                        template,
                        probe: None,
                        seq: 0,
                        cseq: *sip::CSEQ_RANGE.start(),
                        next_due: now,
                        last_code: kept.and_then(|c| c.last_code),
                        changed: kept.and_then(|c| c.changed),
                        history,
                        failure: None,
                        drained,
                        drain_configured: server.drain,
                        overload: None,
                        overload_timer: false,
                        lossy_until: None,
                        probing: true,
                        shared: None,
                    });
                }
            }
        }
        let n = targets.len().max(1) as u32;
        let slot = p.interval / n;
        let mut jitter = vec![0u64; targets.len()];
        entropy.fill(&mut jitter)?;
        let mut timers = BinaryHeap::new();
        for (i, t) in targets.iter_mut().enumerate() {
            let offset = if slot.is_zero() { 0 } else { jitter[i] % slot.as_nanos().max(1) as u64 };
            t.next_due = after(now, slot * i as u32 + Duration::from_nanos(offset));
            timers.push(Reverse((t.next_due, i, 0, Timer::Send)));
        }
        let policy = AnswerPolicy::new(config);
        let undecided = targets.iter().filter(|t| t.health.state() == State::Unknown).count();
        // A fresh start (no target carried from a running prober) waits for every first
        // verdict, so the first server to answer does not get every client alone.
        let fresh = undecided == targets.len();
        let hold = (start == State::Unknown && fresh && undecided > 0)
            .then(|| after(now, p.interval.saturating_add(p.timeout).saturating_add(TIMER_SLACK)));
        Ok(Core {
            settings: Settings {
                interval: p.interval,
                timeout: p.timeout,
                retransmit: p.retransmit,
                thresholds: Thresholds { rise: p.rise, fall: p.fall },
                down_codes: p.down_codes.clone(),
                max_retry_after: p.max_retry_after,
                loss_copies: p.loss_copies,
            },
            on_duty: policy.uses_rounds(),
            latency: policy.uses_latency(),
            policy,
            targets,
            timers,
            actions: VecDeque::new(),
            flips: VecDeque::new(),
            failure_changes: VecDeque::new(),
            entropy,
            published: None,
            round: 0,
            next_round: after(now, p.interval),
            dirty: true,
            hold,
            undecided,
            stats: Stats::default(),
            clustered: false,
            verdicts: VecDeque::new(),
        })
    }

    /// A copy of this core in its present state that draws from `entropy`: fuzzing and tests
    /// start many runs from one prepared core instead of building each from the config.
    pub fn fork(&self, entropy: Box<dyn Entropy>) -> Core {
        Core {
            settings: self.settings.clone(),
            policy: self.policy.clone(),
            targets: self.targets.clone(),
            timers: self.timers.clone(),
            actions: self.actions.clone(),
            flips: self.flips.clone(),
            failure_changes: self.failure_changes.clone(),
            entropy,
            published: self.published.clone(),
            round: self.round,
            next_round: self.next_round,
            on_duty: self.on_duty,
            latency: self.latency,
            dirty: self.dirty,
            hold: self.hold,
            undecided: self.undecided,
            stats: self.stats,
            clustered: self.clustered,
            verdicts: self.verdicts.clone(),
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Number of targets (servers × transports).
    pub fn targets(&self) -> usize {
        self.targets.len()
    }

    /// The next action for the driver, if any.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The next state change to log, if any.
    pub fn poll_flip(&mut self) -> Option<Flip> {
        self.flips.pop_front()
    }

    /// The next change in a target's reason for failing, to log, if any.
    pub fn poll_failure_change(&mut self) -> Option<FailureChange> {
        self.failure_changes.pop_front()
    }

    /// The service and server (indices into the configuration) that target `target` probes.
    pub fn server_of(&self, target: usize) -> Option<(usize, usize)> {
        self.targets.get(target).map(|t| (t.service, t.server))
    }

    /// The bytes to send for `probe` (empty if it is not in flight).
    pub fn request(&self, probe: ProbeRef) -> &[u8] {
        match self.in_flight(probe) {
            Some(p) => &p.request,
            None => &[],
        }
    }

    /// When the core next needs [`Core::handle_timeout`]: the earliest timer or round end.
    pub fn poll_timeout(&self) -> Instant {
        let next = self.timers.peek().map_or(self.next_round, |Reverse((at, ..))| *at);
        let next = next.min(self.next_round);
        self.hold.map_or(next, |h| next.min(h))
    }

    /// The target's service name, address and transport (for logs).
    pub fn describe(&self, target: usize) -> Option<(&str, SocketAddr, Transport)> {
        let t = self.targets.get(target)?;
        Some((&self.policy.services()[t.service].name, t.addr, t.transport))
    }

    /// What every target would carry into a reloaded core ([`Core::carrying`]).
    pub fn carry(&self) -> std::collections::HashMap<TargetKey, Carried> {
        self.targets
            .iter()
            .map(|t| {
                let key = (self.policy.services()[t.service].name.clone(), t.addr, t.transport);
                let carried = Carried {
                    health: t.health.clone(),
                    last_code: t.last_code,
                    changed: t.changed,
                    history: t.history.clone(),
                    drained: t.drained,
                    drain_configured: t.drain_configured,
                };
                (key, carried)
            })
            .collect()
    }

    /// Every target as it stands now.
    pub fn reports(&self) -> Vec<ServerReport> {
        self.targets
            .iter()
            .map(|t| ServerReport {
                service: self.policy.services()[t.service].name.clone(),
                addr: t.addr,
                transport: t.transport,
                state: t.health.state(),
                rtt: t.health.rtt(),
                last_code: t.last_code,
                flips: t.health.flips(),
                changed: t.changed,
                failure: t.failure,
                drained: t.drained,
                overload: t.overload.map(|o| o.percent),
                lossy: self.settings.loss_copies > 1 && t.lossy_until.is_some(),
                history: t.history.clone(),
                fleet: t.shared.as_ref().map(|f| (f.effective, t.probing)),
            })
            .collect()
    }

    /// Drains (`drained`) or undrains the servers at `ip` (and `port`, if given) of `service`
    /// (or of every service) at `now`: a drained server leaves the answers at the next publish
    /// and keeps being probed, so it returns as soon as it is undrained if it is healthy. Returns
    /// how many targets (server transports) it matched.
    pub fn set_drained(
        &mut self,
        service: Option<&str>,
        ip: IpAddr,
        port: Option<u16>,
        drained: bool,
        now: Instant,
    ) -> usize {
        let mut matched = 0;
        for t in &mut self.targets {
            let name = &self.policy.services()[t.service].name;
            if t.addr.ip() == ip && port.is_none_or(|p| p == t.addr.port()) && service.is_none_or(|s| **name == *s) {
                matched += 1;
                if t.drained != drained {
                    self.dirty = true;
                    t.drained = drained;
                    let why = if drained { "drained by an operator" } else { "undrained by an operator" };
                    let state = t.health.state();
                    let change = Change { at: now, from: state, to: state, drained, why, ..t.snapshot_now(now) };
                    Arc::make_mut(&mut t.history).record(change);
                }
            }
        }
        matched
    }

    fn in_flight(&self, probe: ProbeRef) -> Option<&InFlight> {
        let t = self.targets.get(probe.target)?;
        if t.seq != probe.seq {
            return None;
        }
        t.probe.as_ref()
    }

    /// Fires every timer due by `now` (plus [`TIMER_SLACK`]) and ends the round if its time came.
    pub fn handle_timeout(&mut self, now: Instant) {
        let horizon = after(now, TIMER_SLACK);
        while let Some(Reverse((at, i, seq, kind))) = self.timers.peek().copied() {
            if at > horizon {
                break;
            }
            self.timers.pop();
            let Some(t) = self.targets.get(i) else { continue };
            let current = t.seq == seq;
            match kind {
                Timer::Send if current && t.probe.is_none() && t.probing => self.start_probe(i, now),
                Timer::Retransmit if current && t.probe.is_some() => self.retransmit(i, now),
                Timer::Timeout if current && t.probe.is_some() => {
                    self.stats.timeouts += 1;
                    let handshaking = t.probe.as_ref().is_some_and(|p| p.phase == Phase::Handshaking);
                    let why = if handshaking { TLS_HANDSHAKE_TIMEOUT } else { "timeout" };
                    self.saw_loss(i, now);
                    self.conclude(i, Verdict::Failed, now, why);
                }
                Timer::OverloadEnds => self.overload_timer(i, horizon),
                _ => {}
            }
        }
        if self.hold.is_some_and(|h| now >= h) {
            // The first round's time is up: publish what is known.
            self.hold = None;
            self.dirty = true;
        }
        if now >= self.next_round {
            self.round = self.round.wrapping_add(1);
            self.dirty |= self.on_duty || self.latency;
            self.next_round = next_slot(self.next_round, self.settings.interval, now);
        }
    }

    /// Starts a probe of target `i`: a fresh identity, then asks for a fresh socket.
    fn start_probe(&mut self, i: usize, now: Instant) {
        let mut words = [0u64; 5];
        if self.entropy.fill(&mut words).is_err() {
            // No identity can be made unguessable: skip this probe without a verdict (the server
            // keeps its state) and try again next interval.
            self.stats.entropy_failures += 1;
            self.schedule(i, now, false);
            return;
        }
        let timeout = self.settings.timeout;
        let retransmit = self.settings.retransmit;
        let t = &mut self.targets[i];
        // Copies guard a server in the answers against false flaps; a server that is out (dead,
        // most likely) gets plain retransmissions, as many datagrams as without loss.
        let lossy =
            t.transport == Transport::Udp && t.health.state() == State::Up && t.lossy_until.is_some_and(|u| now < u);
        if t.lossy_until.is_some_and(|u| now >= u) {
            t.lossy_until = None;
        }
        let copies = if lossy { self.settings.loss_copies.max(1) } else { 1 };
        t.seq = t.seq.wrapping_add(1);
        t.cseq = if t.cseq >= *sip::CSEQ_RANGE.end() { *sip::CSEQ_RANGE.start() } else { t.cseq + 1 };
        let id = ProbeId::new(words, t.cseq, t.method);
        t.probe = Some(InFlight {
            id,
            started: now,
            request: Vec::new(),
            backoff: retransmit,
            phase: Phase::Opening,
            stream: StreamBuf::default(),
            unmatched: 0,
            copies,
            sent: 0,
        });
        let probe = ProbeRef { target: i, seq: t.seq };
        self.actions.push_back(Action::Open { probe, transport: t.transport, addr: t.addr });
        self.timers.push(Reverse((after(now, timeout), i, t.seq, Timer::Timeout)));
    }

    fn retransmit(&mut self, i: usize, now: Instant) {
        let timeout = self.settings.timeout;
        let t = &mut self.targets[i];
        let Some(p) = t.probe.as_mut() else { return };
        if t.transport != Transport::Udp || p.phase != Phase::Sent {
            return;
        }
        self.actions.push_back(Action::Send { probe: ProbeRef { target: i, seq: t.seq } });
        self.stats.sent += 1;
        p.sent = p.sent.saturating_add(1);
        let next = if p.copies > 1 {
            if p.sent >= p.copies {
                return;
            }
            after(now, copy_spacing(timeout, p.copies))
        } else {
            p.backoff = p.backoff.saturating_mul(2);
            after(now, p.backoff)
        };
        // A retransmission past the timeout would never be answered in time.
        if next < after(p.started, timeout) {
            self.timers.push(Reverse((next, i, t.seq, Timer::Retransmit)));
        }
    }

    /// Takes one event from the driver about `probe`'s socket.
    pub fn handle(&mut self, probe: ProbeRef, event: Event<'_>, now: Instant) {
        let retransmit = self.settings.retransmit;
        let Some(t) = self.targets.get_mut(probe.target) else { return };
        let current = t.seq == probe.seq && t.probe.is_some();
        if !current {
            if matches!(event, Event::Datagram(_) | Event::Stream(_)) {
                self.stats.ignored += 1;
            }
            return;
        }
        let i = probe.target;
        let Some(p) = t.probe.as_mut() else { return };
        match event {
            Event::Opened { local } if p.phase == Phase::Opening => {
                t.template.render(&p.id, local, &mut p.request);
                if t.transport == Transport::Udp {
                    p.phase = Phase::Sent;
                    p.sent = 1;
                    self.actions.push_back(Action::Send { probe });
                    self.stats.sent += 1;
                    let gap = if p.copies > 1 { copy_spacing(self.settings.timeout, p.copies) } else { retransmit };
                    self.timers.push(Reverse((after(now, gap), i, probe.seq, Timer::Retransmit)));
                } else {
                    p.phase = Phase::Connecting;
                }
            }
            Event::Connected if p.phase == Phase::Connecting => {
                if t.transport == Transport::Tls {
                    // The driver runs the handshake over the connection and says how it ended.
                    p.phase = Phase::Handshaking;
                } else {
                    p.phase = Phase::Sent;
                    self.actions.push_back(Action::Send { probe });
                    self.stats.sent += 1;
                }
            }
            Event::Secured if p.phase == Phase::Handshaking => {
                p.phase = Phase::Sent;
                self.actions.push_back(Action::Send { probe });
                self.stats.sent += 1;
            }
            Event::TlsFailed(failure) if t.transport == Transport::Tls => {
                self.conclude(i, Verdict::Failed, now, failure.reason());
            }
            Event::Datagram(_) | Event::Stream(_) if p.unmatched >= MAX_UNMATCHED => self.stats.ignored += 1,
            Event::Datagram(bytes) if p.phase == Phase::Sent && t.transport == Transport::Udp => {
                self.on_message(i, bytes, now);
            }
            Event::Stream(bytes) if p.phase == Phase::Sent && t.transport != Transport::Udp => {
                self.on_stream(i, bytes, now);
            }
            Event::Datagram(_) | Event::Stream(_) => self.unmatched(i),
            Event::Refused => {
                self.stats.refused += 1;
                let why = if t.transport == Transport::Udp { "ICMP port unreachable" } else { "connection refused" };
                self.conclude(i, Verdict::Failed, now, why);
            }
            Event::Closed => self.conclude(i, Verdict::Failed, now, "connection closed without a reply"),
            Event::Failed => self.conclude(i, Verdict::Failed, now, "socket error"),
            Event::Opened { .. } | Event::Connected | Event::Secured | Event::TlsFailed(_) => {}
        }
    }

    /// Counts a message that answers nothing; mutes the probe's socket after too many.
    fn unmatched(&mut self, i: usize) {
        self.stats.ignored += 1;
        let t = &mut self.targets[i];
        let Some(p) = t.probe.as_mut() else { return };
        p.unmatched = p.unmatched.saturating_add(1);
        if p.unmatched == MAX_UNMATCHED {
            self.stats.muted += 1;
            self.actions.push_back(Action::Mute { probe: ProbeRef { target: i, seq: t.seq } });
        }
    }

    /// Appends TCP bytes and takes every complete message; provisional replies keep the probe.
    fn on_stream(&mut self, i: usize, bytes: &[u8], now: Instant) {
        let Some(p) = self.targets[i].probe.as_mut() else { return };
        if p.unmatched >= MAX_UNMATCHED {
            // Muted: the driver stops reading; anything already read is dropped unframed.
            self.stats.ignored += 1;
            return;
        }
        if p.stream.bytes.len().saturating_add(bytes.len()) > sip::MAX_MESSAGE.saturating_mul(2) {
            // More than two maximal messages unread: whatever it is, it is not a reply.
            self.stats.oversize += 1;
            self.conclude(i, Verdict::Failed, now, "reply too large");
            return;
        }
        p.stream.bytes.extend_from_slice(bytes);
        // Messages are taken from a cursor and the buffer is compacted once at the end, so a
        // burst of tiny messages costs one pass, not one copy of the buffer per message.
        let mut start = 0;
        loop {
            let Some(p) = self.targets[i].probe.as_mut() else { return };
            let rest = &p.stream.bytes[start..];
            match sip::frame(rest, p.stream.scanned) {
                Frame::Complete(len) => {
                    let message = rest[..len].to_vec();
                    p.stream.scanned = 0;
                    start += len;
                    self.on_message(i, &message, now);
                    match self.targets[i].probe.as_mut() {
                        None => return,
                        Some(p) if p.unmatched >= MAX_UNMATCHED => {
                            p.stream = StreamBuf::default();
                            return;
                        }
                        Some(_) => {}
                    }
                }
                Frame::Incomplete { scanned } => {
                    p.stream.scanned = scanned;
                    p.stream.bytes.drain(..start);
                    return;
                }
                Frame::TooLarge => {
                    self.stats.oversize += 1;
                    self.conclude(i, Verdict::Failed, now, "reply too large");
                    return;
                }
                Frame::Malformed => {
                    self.conclude(i, Verdict::Failed, now, "malformed Content-Length");
                    return;
                }
            }
        }
    }

    /// One complete message (a datagram, or a framed TCP message) for target `i`'s probe.
    fn on_message(&mut self, i: usize, bytes: &[u8], now: Instant) {
        let Some(p) = self.targets[i].probe.as_ref() else { return };
        let started = p.started;
        match sip::check_reply(bytes, &p.id) {
            Ok(Reply::Provisional) => {}
            Ok(Reply::Final { code, retry_after }) => {
                self.stats.replies += 1;
                self.targets[i].last_code = Some(code);
                self.overload(i, sip::overload(bytes), now);
                if now.duration_since(started) > self.settings.retransmit {
                    // Answered only after the first retransmission was due: the first exchange
                    // was probably lost.
                    self.saw_loss(i, now);
                }
                if self.settings.down_codes.contains(&code) {
                    let verdict = match retry_after {
                        Some(secs) => {
                            let wait = Duration::from_secs(secs).min(self.settings.max_retry_after);
                            Verdict::Drain { until: after(now, wait) }
                        }
                        None => Verdict::Failed,
                    };
                    self.conclude(i, verdict, now, "a down status code");
                } else {
                    let rtt = now.duration_since(started);
                    self.conclude(i, Verdict::Alive { rtt }, now, "a final reply");
                }
            }
            Err(sip::Mismatch::TooLarge) => {
                self.stats.oversize += 1;
                self.unmatched(i);
            }
            Err(_) => self.unmatched(i),
        }
    }

    /// Ends the probe in flight with `verdict` and schedules the next one.
    fn conclude(&mut self, i: usize, verdict: Verdict, now: Instant, why: &'static str) {
        let thresholds = self.settings.thresholds;
        let t = &mut self.targets[i];
        if t.probe.take().is_some() {
            self.actions.push_back(Action::Close { probe: ProbeRef { target: i, seq: t.seq } });
        }
        let from = t.health.state();
        let failed = !matches!(verdict, Verdict::Alive { .. });
        let failure = failed.then_some(why);
        if failure != t.failure {
            t.failure = failure;
            self.failure_changes.push_back(FailureChange { target: i, failure });
            if self.failure_changes.len() > MAX_FLIP_RECORDS {
                self.failure_changes.pop_front();
            }
        }
        let flipped = t.health.observe(verdict, now, thresholds);
        if let Some(f) = t.shared.as_mut() {
            f.fresh = true;
            let latency = self.policy.services()[t.service].policy == Policy::Latency;
            self.report(i, latency);
            self.refresh(i, why);
            self.schedule(i, now, failed);
            return;
        }
        if flipped {
            if from == State::Unknown {
                self.undecided = self.undecided.saturating_sub(1);
            }
            t.changed = Some((now, why));
            let change = Change { from, to: t.health.state(), why, ..t.snapshot_now(now) };
            Arc::make_mut(&mut t.history).record(change);
            self.dirty = true;
            self.stats.flips += 1;
            if self.flips.len() >= MAX_FLIP_RECORDS {
                self.flips.pop_front();
            }
            self.flips.push_back(Flip { target: i, from, to: t.health.state(), why });
        }
        let latency = self.policy.services()[t.service].policy == Policy::Latency;
        self.dirty |= latency && !failed;
        self.schedule(i, now, failed);
    }

    /// In a fleet: this instance's own view of target `i`, if it has a fresh one.
    pub fn local_seen(&self, i: usize) -> Option<Seen> {
        let t = self.targets.get(i)?;
        let f = t.shared.as_ref()?;
        let state = t.health.state();
        if !f.fresh || state == State::Unknown {
            return None;
        }
        let rtt_us = t.health.rtt().map_or(0, |r| u32::try_from(r.as_micros()).unwrap_or(u32::MAX).min(60_000_000));
        Some(Seen { up: state == State::Up, rtt_us, oc: t.overload.map_or(0, |o| o.percent.min(100)) })
    }

    /// Queues target `i`'s own verdict for the fleet if it changed (state or overload; for a
    /// `latency` service also an RTT 20 % away from the one reported), or is the first since
    /// its probing resumed.
    fn report(&mut self, i: usize, latency: bool) {
        let seen = self.local_seen(i);
        let Some(f) = self.targets[i].shared.as_mut() else { return };
        let changed = match (f.reported, seen) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(a), Some(b)) => {
                a.up != b.up || a.oc != b.oc || (latency && a.rtt_us.abs_diff(b.rtt_us) > a.rtt_us / 5)
            }
        };
        if changed {
            f.reported = seen;
            if self.verdicts.len() < MAX_FLIP_RECORDS {
                self.verdicts.push_back(i);
            }
        }
    }

    /// The next target whose own verdict the fleet should hear ([`Core::local_seen`]).
    pub fn poll_verdict(&mut self) -> Option<usize> {
        self.verdicts.pop_front()
    }

    /// Joins a fleet: from now on every target's answers come from the combination of verdicts
    /// ([`crate::cluster::core::combine`]) and its own verdicts are queued for the fleet. Until
    /// the first [`Core::set_clustered`], this instance's own verdicts decide alone.
    pub fn join_fleet(&mut self) {
        for t in &mut self.targets {
            t.shared = Some(Shared {
                counts_local: true,
                fresh: t.health.state() != State::Unknown,
                remote: Vec::new(),
                drained: false,
                effective: t.health.state(),
                reported: None,
            });
        }
    }

    /// Whether the other probers' verdicts count (the link to the fleet is up, or was less than
    /// a lease TTL ago); when not, this instance's own verdicts decide.
    pub fn set_clustered(&mut self, on: bool) {
        if self.clustered == on {
            return;
        }
        self.clustered = on;
        for i in 0..self.targets.len() {
            self.refresh(i, if on { "the fleet's verdicts" } else { "own verdicts (detached)" });
        }
    }

    /// What the fleet says of target `i`: whether this instance is one of its current probers
    /// (its own verdict counts), the other current probers' verdicts, and a cluster-wide drain.
    pub fn set_fleet(&mut self, i: usize, counts_local: bool, remote: &[Seen], drained: bool) {
        let Some(f) = self.targets.get_mut(i).and_then(|t| t.shared.as_mut()) else { return };
        if f.counts_local == counts_local && f.remote == remote && f.drained == drained {
            return;
        }
        f.counts_local = counts_local;
        f.remote.clear();
        f.remote.extend_from_slice(remote);
        f.drained = drained;
        self.dirty = true;
        self.refresh(i, "the fleet's verdicts");
    }

    /// Starts probing target `i`, its first probe at `at` (`Some`), or stops (`None`); a probe in
    /// flight ends as usual. Its own verdict counts again only after its next probe.
    pub fn set_probing(&mut self, i: usize, start: Option<Instant>) {
        let Some(t) = self.targets.get_mut(i) else { return };
        match start {
            Some(at) if !t.probing => {
                t.probing = true;
                if let Some(f) = t.shared.as_mut() {
                    f.fresh = false;
                    f.reported = None;
                }
                t.next_due = at;
                self.timers.push(Reverse((at, i, t.seq, Timer::Send)));
            }
            Some(_) => {}
            None => {
                t.probing = false;
                if let Some(f) = t.shared.as_mut() {
                    f.fresh = false;
                }
            }
        }
        self.refresh(i, "duty moved");
    }

    /// Whether target `i` is probed by this instance now.
    pub fn probing(&self, i: usize) -> bool {
        self.targets.get(i).is_some_and(|t| t.probing)
    }

    /// Recomputes target `i`'s combined health; a change is a flip (logged, counted, published).
    fn refresh(&mut self, i: usize, why: &'static str) {
        let clustered = self.clustered;
        let t = &mut self.targets[i];
        let state = t.health.state();
        let Some(f) = t.shared.as_mut() else { return };
        let own = (f.fresh && state != State::Unknown).then_some(state == State::Up);
        let combined = if clustered {
            combine(own.filter(|_| f.counts_local).into_iter().chain(f.remote.iter().map(|s| s.up)))
        } else {
            combine(own)
        };
        let to = match combined {
            Combined::Up => State::Up,
            Combined::Down => State::Down,
            Combined::Unknown => f.effective,
        };
        if to == f.effective {
            return;
        }
        let from = f.effective;
        f.effective = to;
        if from == State::Unknown {
            self.undecided = self.undecided.saturating_sub(1);
        }
        t.changed = Some((Instant::now(), why));
        self.dirty = true;
        self.stats.flips += 1;
        if self.flips.len() >= MAX_FLIP_RECORDS {
            self.flips.pop_front();
        }
        self.flips.push_back(Flip { target: i, from, to, why });
    }

    /// Notes a sign of loss on target `i`'s path: its probes go out as copies for a while.
    fn saw_loss(&mut self, i: usize, now: Instant) {
        let memory = self.settings.interval.saturating_mul(LOSS_MEMORY);
        self.targets[i].lossy_until = Some(after(now, memory));
    }

    /// Takes the overload signal of a final reply from target `i` (RFC 7339 §5.2): `oc` lowers
    /// the server's weight for `oc-validity` (capped at `max_retry_after`); `oc = 0` or
    /// `oc-validity = 0` ends the reduction at once; a reply without `oc` leaves the reduction
    /// to run out; a signal older (by `oc-seq`) than the one in force is ignored.
    fn overload(&mut self, i: usize, signal: Option<sip::OverloadSignal>, now: Instant) {
        let Some(signal) = signal else { return };
        let max = self.settings.max_retry_after;
        let t = &mut self.targets[i];
        let stale = t.overload.and_then(|o| o.seq).zip(signal.seq).is_some_and(|(last, seq)| seq < last);
        if stale {
            return;
        }
        let before = t.overload.map(|o| o.percent);
        let validity = Duration::from_millis(signal.validity_ms).min(max);
        t.overload = if signal.percent == 0 || validity.is_zero() {
            None
        } else {
            Some(Overload { percent: signal.percent, until: after(now, validity), seq: signal.seq })
        };
        if let Some(o) = t.overload.filter(|_| !t.overload_timer) {
            t.overload_timer = true;
            self.timers.push(Reverse((o.until, i, 0, Timer::OverloadEnds)));
        }
        self.dirty |= before != t.overload.map(|o| o.percent);
    }

    /// Target `i`'s overload timer fired: the reduction ends if nothing renewed it, else the
    /// timer waits for the renewed end.
    fn overload_timer(&mut self, i: usize, horizon: Instant) {
        let t = &mut self.targets[i];
        t.overload_timer = false;
        match t.overload {
            Some(o) if o.until <= horizon => {
                t.overload = None;
                self.dirty = true;
            }
            Some(o) => {
                t.overload_timer = true;
                self.timers.push(Reverse((o.until, i, 0, Timer::OverloadEnds)));
            }
            None => {}
        }
    }

    /// Schedules target `i`'s next probe. A failure of a server still in service is re-checked
    /// at once (so `fall = 2` costs one timeout, not one interval); otherwise the next probe keeps
    /// its place in the spread-out schedule.
    fn schedule(&mut self, i: usize, now: Instant, failed: bool) {
        let interval = self.settings.interval;
        let t = &mut self.targets[i];
        t.next_due = if failed && t.health.state() == State::Up {
            now
        } else {
            next_slot(after(t.next_due, interval), interval, now)
        };
        self.timers.push(Reverse((t.next_due, i, t.seq, Timer::Send)));
    }

    /// What the snapshot would be built from now: each server as its targets see it, through
    /// the [`AnswerPolicy`].
    fn current(&mut self) -> Publish {
        let services = self.policy.services();
        let mut now: Vec<Vec<ServerNow>> = services.iter().map(|s| vec![ServerNow::default(); s.servers()]).collect();
        for t in &self.targets {
            let Some(server) = now.get_mut(t.service).and_then(|s| s.get_mut(t.server)) else { continue };
            // In a fleet: the combined health, either drain, the others' overload and RTT too.
            let (is_up, is_drained, oc, rtt) = match &t.shared {
                None => (t.health.state() == State::Up, t.drained, t.overload.map_or(0, |o| o.percent), t.health.rtt()),
                Some(f) => {
                    let own = f.fresh && (f.counts_local || !self.clustered);
                    let mut oc = if own { t.overload.map_or(0, |o| o.percent) } else { 0 };
                    let mut rtt = t.health.rtt().filter(|_| own);
                    for r in f.remote.iter().filter(|r| self.clustered && r.up) {
                        oc = oc.max(r.oc.min(100));
                        if r.rtt_us > 0 {
                            let d = Duration::from_micros(u64::from(r.rtt_us));
                            rtt = Some(rtt.map_or(d, |x| x.min(d)));
                        }
                    }
                    (f.effective == State::Up, t.drained || f.drained, oc, rtt)
                }
            };
            if is_up && !is_drained {
                server.up.push(t.transport);
            }
            server.drained |= is_drained;
            server.overload = server.overload.max(oc);
            if let Some(rtt) = rtt.filter(|_| services[t.service].policy == Policy::Latency) {
                let us = u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX);
                server.rtt_us = Some(server.rtt_us.map_or(us, |r| r.min(us)));
            }
        }
        let serving = self.policy.decide(&now);
        Publish { serving, round: if self.on_duty { self.round } else { 0 } }
    }

    /// What to publish, if the answers changed since the last publish.
    pub fn poll_publish(&mut self) -> Option<Publish> {
        if !self.dirty {
            return None;
        }
        if self.hold.is_some() {
            if self.undecided > 0 {
                // Still starting: keep serving the start-up answers (dirty stays set).
                return None;
            }
            self.hold = None;
        }
        self.dirty = false;
        let key = self.current();
        if self.published.as_ref() == Some(&key) {
            return None;
        }
        self.stats.publishes += 1;
        self.published = Some(key.clone());
        Some(key)
    }

    /// The driver could not build or publish the last [`Publish`]: ask again next time.
    pub fn publish_failed(&mut self) {
        self.published = None;
        self.dirty = true;
    }
}

#[cfg(test)]
#[path = "core_tests.rs"]
mod tests;

#[cfg(test)]
mod slot_tests {
    use super::*;

    #[test]
    fn next_slot_keeps_the_grid_across_clock_jumps() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        assert_eq!(next_slot(t0 + s, s, t0), t0 + s, "a future slot stays");
        assert_eq!(next_slot(t0, s, t0), t0 + s);
        assert_eq!(next_slot(t0, s, t0 + Duration::from_millis(2500)), t0 + Duration::from_secs(3));
        let far = t0 + Duration::from_secs(40 * 86_400);
        assert_eq!(next_slot(t0, Duration::from_millis(100), far), far + Duration::from_millis(100));
    }
}
