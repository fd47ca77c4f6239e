//! The prober core on injected time: a simulated network answers its actions, so every timing
//! below is exact and no test sleeps.

use std::collections::{BTreeMap, HashSet};

use super::*;
use crate::select;

/// 1 ms each way on the simulated network.
const HOP: Duration = Duration::from_millis(1);

/// Random words from a fixed seed (xorshift): deterministic tests.
struct Seeded(u64);

impl Entropy for Seeded {
    fn fill(&mut self, out: &mut [u64]) -> Result<(), CoreError> {
        for w in out {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            *w = self.0;
        }
        Ok(())
    }
}

/// A random source that works `left` more times, then fails.
struct Failing {
    left: usize,
    inner: Seeded,
}

impl Entropy for Failing {
    fn fill(&mut self, out: &mut [u64]) -> Result<(), CoreError> {
        if self.left == 0 {
            return Err(CoreError::Entropy("test: no randomness".into()));
        }
        self.left -= 1;
        self.inner.fill(out)
    }
}

/// How a simulated server treats each probe.
#[derive(Debug, Clone, PartialEq)]
enum Behaviour {
    /// A final reply with this status line and extra header lines.
    Reply(&'static str, String),
    /// 100 Trying, then this status.
    TryingThen(&'static str),
    /// 100 Trying only.
    TryingOnly,
    /// No reply.
    Silent,
    /// ICMP port unreachable (UDP) or a refused connection (TCP).
    Refuse,
    /// `n` forged replies (each kind in turn), then the true 200 if `answer`.
    Forge(usize, bool),
    /// The true 200, after this long.
    Late(Duration),
    /// These bytes, in these chunks (datagrams over UDP, segments over TCP), `gap` apart.
    Raw(Vec<Vec<u8>>, Duration),
    /// The bytes of a true 200 reply one per `gap`, over TCP.
    Drip(Duration),
    /// Half a true 200 reply, then the connection closes.
    CloseMidway,
    /// TLS: the handshake fails this way.
    TlsFail(TlsFailure),
    /// TLS: the connection is accepted, the handshake never ends.
    TlsStall,
    /// A 200 whose Via carries these RFC 7339 parameters (`;oc=50;oc-validity=500`).
    Overloaded(&'static str),
}

/// A network event on its way to the core.
#[derive(Debug, Clone)]
enum Delivery {
    Connected,
    /// TLS: the handshake's outcome.
    Handshake(Result<(), TlsFailure>),
    Bytes(Vec<u8>),
    Closed,
    Refused,
}

struct Sim {
    core: Core,
    now: Instant,
    t0: Instant,
    behaviours: Vec<Behaviour>,
    deliveries: BTreeMap<(Instant, u64), (ProbeRef, Delivery)>,
    order: u64,
    open: HashSet<ProbeRef>,
    muted: HashSet<ProbeRef>,
    opens: Vec<ProbeRef>,
    flips: Vec<(Duration, Flip)>,
    published: Vec<(Duration, Publish)>,
    /// Per target, the percentage of datagrams lost in each direction (UDP only).
    loss: Vec<u64>,
    /// The loss draws (xorshift, fixed seed).
    dice: u64,
}

/// A config of one service with `servers` UDP servers (plus `extra` in the service table) and
/// the given `[probe]` lines.
fn config(probe: &str, servers: &[(&str, &str)], extra: &str) -> Config {
    let mut text = format!("[server]\nlisten = [\"127.0.0.1:5353\"]\n[probe]\n{probe}\n[[service]]\nname = \"sip.example.test\"\n{extra}\n");
    for (address, transports) in servers {
        text.push_str(&format!("[[service.server]]\naddress = \"{address}\"\ntransports = [{transports}]\n"));
    }
    Config::parse(&text).unwrap_or_else(|p| panic!("{p:?}"))
}

const FAST: &str = "interval_ms = 200\ntimeout_ms = 100\nretransmit_ms = 30\nrise = 2\nfall = 2";

/// A reply to `request` as a SIP server builds it: the request's Via, From, To (plus a tag),
/// Call-ID and CSeq, then `extra`.
fn reply_to(request: &[u8], status: &str, extra: &str) -> Vec<u8> {
    let text = String::from_utf8_lossy(request);
    let mut out = format!("SIP/2.0 {status}\r\n");
    for line in text.split("\r\n").skip(1).take_while(|l| !l.is_empty()) {
        let lower = line.to_ascii_lowercase();
        if ["via:", "from:", "call-id:", "cseq:"].iter().any(|h| lower.starts_with(h)) {
            out.push_str(line);
            out.push_str("\r\n");
        } else if lower.starts_with("to:") {
            out.push_str(&format!("{line};tag=server\r\n"));
        }
    }
    out.push_str(extra);
    out.push_str("Content-Length: 0\r\n\r\n");
    out.into_bytes()
}

/// One forged variant of the true reply: wrong branch, Call-ID, tag, CSeq number or method.
fn forge(request: &[u8], k: usize) -> Vec<u8> {
    let good = String::from_utf8(reply_to(request, "200 OK", "")).unwrap();
    let forged = match k % 5 {
        0 => good.replacen("branch=z9hG4bK", "branch=z9hG4bKx", 1),
        1 => good.replacen("@dnlb", "@forged", 1),
        2 => good.replacen(";tag=", ";tag=x", 1),
        3 => {
            let at = good.find("CSeq: ").unwrap() + 6;
            let digit = good.as_bytes()[at];
            let other = if digit == b'9' { '1' } else { char::from(digit + 1) };
            format!("{}{other}{}", &good[..at], &good[at + 1..])
        }
        _ if good.contains(" OPTIONS\r\n") => good.replace(" OPTIONS\r\n", " REGISTER\r\n"),
        _ => good.replace(" REGISTER\r\n", " OPTIONS\r\n"),
    };
    forged.into_bytes()
}

impl Sim {
    fn new(config: &Config, behaviours: Vec<Behaviour>) -> Sim {
        let t0 = Instant::now();
        let core = Core::new(config, t0, Box::new(Seeded(0x5eed))).unwrap();
        assert_eq!(core.targets(), behaviours.len(), "one behaviour per target");
        let n = behaviours.len();
        Sim {
            core,
            now: t0,
            t0,
            behaviours,
            deliveries: BTreeMap::new(),
            order: 0,
            open: HashSet::new(),
            muted: HashSet::new(),
            opens: Vec::new(),
            flips: Vec::new(),
            published: Vec::new(),
            loss: vec![0; n],
            dice: 0x1055,
        }
    }

    /// Whether a datagram to or from `target` is lost.
    fn lost(&mut self, target: usize) -> bool {
        if self.loss[target] == 0 {
            return false;
        }
        self.dice ^= self.dice << 13;
        self.dice ^= self.dice >> 7;
        self.dice ^= self.dice << 17;
        self.dice % 100 < self.loss[target]
    }

    fn at(&self) -> Duration {
        self.now.duration_since(self.t0)
    }

    fn deliver(&mut self, after: Duration, probe: ProbeRef, d: Delivery) {
        self.order += 1;
        self.deliveries.insert((self.now + after, self.order), (probe, d));
    }

    /// Carries out the core's actions the way the driver would, against the simulated servers.
    fn act(&mut self) {
        while let Some(action) = self.core.poll_action() {
            match action {
                Action::Open { probe, transport, .. } => {
                    self.opens.push(probe);
                    self.open.insert(probe);
                    let local = SocketAddr::from(([127, 0, 0, 1], 40_000 + (self.opens.len() % 20_000) as u16));
                    self.core.handle(probe, Event::Opened { local }, self.now);
                    if transport != Transport::Udp {
                        let d = if self.behaviours[probe.target] == Behaviour::Refuse {
                            Delivery::Refused
                        } else {
                            Delivery::Connected
                        };
                        self.deliver(HOP * 2, probe, d);
                    }
                }
                Action::Send { probe } => {
                    let request = self.core.request(probe).to_vec();
                    assert!(!request.is_empty(), "a request goes out only once rendered");
                    let method = self.core.targets[probe.target].method;
                    let want: &[u8] = if method == ProbeMethod::Register { b"REGISTER " } else { b"OPTIONS " };
                    assert!(request.starts_with(want), "the configured method");
                    let udp = self.core.targets[probe.target].transport == Transport::Udp;
                    if !(udp && self.lost(probe.target)) {
                        self.respond(probe, &request);
                    }
                }
                Action::Mute { probe } => {
                    self.muted.insert(probe);
                }
                Action::Close { probe } => {
                    self.open.remove(&probe);
                }
            }
        }
        while let Some(f) = self.core.poll_flip() {
            self.flips.push((self.at(), f));
        }
        while let Some(p) = self.core.poll_publish() {
            self.published.push((self.at(), p));
        }
    }

    fn respond(&mut self, probe: ProbeRef, request: &[u8]) {
        let rtt = HOP * 2;
        match self.behaviours[probe.target].clone() {
            Behaviour::Reply(status, extra) => {
                self.deliver(rtt, probe, Delivery::Bytes(reply_to(request, status, &extra)))
            }
            Behaviour::TryingThen(status) => {
                self.deliver(rtt, probe, Delivery::Bytes(reply_to(request, "100 Trying", "")));
                self.deliver(rtt * 3, probe, Delivery::Bytes(reply_to(request, status, "")));
            }
            Behaviour::TryingOnly => self.deliver(rtt, probe, Delivery::Bytes(reply_to(request, "100 Trying", ""))),
            // TLS failures end the probe before a request goes out.
            Behaviour::Silent | Behaviour::TlsFail(_) | Behaviour::TlsStall => {}
            Behaviour::Refuse => self.deliver(rtt, probe, Delivery::Refused),
            Behaviour::Forge(n, answer) => {
                let kinds: Vec<Vec<u8>> = (0..5).map(|k| forge(request, k)).collect();
                for k in 0..n {
                    self.deliver(rtt, probe, Delivery::Bytes(kinds[k % 5].clone()));
                }
                if answer {
                    self.deliver(rtt, probe, Delivery::Bytes(reply_to(request, "200 OK", "")));
                }
            }
            Behaviour::Late(after) => self.deliver(after, probe, Delivery::Bytes(reply_to(request, "200 OK", ""))),
            Behaviour::Raw(chunks, gap) => {
                for (k, chunk) in chunks.into_iter().enumerate() {
                    self.deliver(rtt + gap * k as u32, probe, Delivery::Bytes(chunk));
                }
            }
            Behaviour::Drip(gap) => {
                for (k, b) in reply_to(request, "200 OK", "").into_iter().enumerate() {
                    self.deliver(rtt + gap * k as u32, probe, Delivery::Bytes(vec![b]));
                }
            }
            Behaviour::CloseMidway => {
                let reply = reply_to(request, "200 OK", "");
                self.deliver(rtt, probe, Delivery::Bytes(reply[..reply.len() / 2].to_vec()));
                self.deliver(rtt, probe, Delivery::Closed);
            }
            Behaviour::Overloaded(params) => {
                let reply = String::from_utf8(reply_to(request, "200 OK", "")).unwrap();
                let at = reply.find("Via: ").unwrap();
                let end = at + reply[at..].find("\r\n").unwrap();
                let reply = format!("{}{params}{}", &reply[..end], &reply[end..]);
                self.deliver(rtt, probe, Delivery::Bytes(reply.into_bytes()));
            }
        }
    }

    /// Runs the simulation until `until` after the start.
    fn run_until(&mut self, until: Duration) {
        let end = self.t0 + until;
        self.act();
        loop {
            let next_delivery = self.deliveries.keys().next().copied();
            let next = match next_delivery {
                Some((at, _)) => at.min(self.core.poll_timeout()),
                None => self.core.poll_timeout(),
            };
            if next > end {
                self.now = end;
                return;
            }
            self.now = self.now.max(next);
            if let Some(key) = next_delivery.filter(|(at, _)| *at <= self.now) {
                let (probe, d) = self.deliveries.remove(&key).unwrap();
                let udp = self.core.targets[probe.target].transport == Transport::Udp;
                let lost = udp && matches!(d, Delivery::Bytes(_)) && self.lost(probe.target);
                // The kernel drops what arrives for a closed or muted socket.
                if self.open.contains(&probe) && !self.muted.contains(&probe) && !lost {
                    let tls = self.core.targets[probe.target].transport == Transport::Tls;
                    if tls && matches!(d, Delivery::Connected) {
                        // The driver starts the handshake at once; it takes one round trip more.
                        match self.behaviours[probe.target] {
                            Behaviour::TlsFail(f) => self.deliver(HOP * 2, probe, Delivery::Handshake(Err(f))),
                            Behaviour::TlsStall => {}
                            _ => self.deliver(HOP * 2, probe, Delivery::Handshake(Ok(()))),
                        }
                    }
                    let event = match &d {
                        Delivery::Connected => Event::Connected,
                        Delivery::Handshake(Ok(())) => Event::Secured,
                        Delivery::Handshake(Err(f)) => Event::TlsFailed(*f),
                        Delivery::Closed => Event::Closed,
                        Delivery::Refused => Event::Refused,
                        Delivery::Bytes(b) if self.core.targets[probe.target].transport == Transport::Udp => {
                            Event::Datagram(b)
                        }
                        Delivery::Bytes(b) => Event::Stream(b),
                    };
                    self.core.handle(probe, event, self.now);
                }
            } else {
                self.core.handle_timeout(self.now);
            }
            self.act();
        }
    }

    fn state(&self, target: usize) -> State {
        self.core.targets[target].health.state()
    }

    /// When `target` last flipped to `to`, after `since`.
    fn flipped(&self, target: usize, to: State, since: Duration) -> Option<Duration> {
        self.flips.iter().find(|(at, f)| f.target == target && f.to == to && *at >= since).map(|(at, _)| *at)
    }

    /// Runs until `target` flips to `to` (at most `limit` after `since`); returns how long after
    /// `since` it did.
    fn flipped_after(&mut self, target: usize, to: State, since: Duration, limit: Duration) -> Duration {
        self.run_until(since + limit);
        self.flipped(target, to, since).expect("flipped") - since
    }

    fn flips_of(&self, target: usize) -> usize {
        self.flips.iter().filter(|(_, f)| f.target == target).count()
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn ok() -> Behaviour {
    Behaviour::Reply("200 OK", String::new())
}

#[test]
fn a_silent_server_leaves_within_interval_plus_two_timeouts_and_comes_back() {
    let c = config(FAST, &[("127.0.0.21", "\"udp\""), ("127.0.0.22", "\"udp\"")], "");
    let mut sim = Sim::new(&c, vec![ok(), ok()]);
    sim.run_until(ms(1000));
    assert_eq!((sim.state(0), sim.state(1)), (State::Up, State::Up));
    sim.behaviours[1] = Behaviour::Silent;
    let silenced = sim.at();
    sim.run_until(ms(3000));
    let down = sim.flipped(1, State::Down, silenced).expect("removed") - silenced;
    // Bound: the next probe within one interval, its timeout, and the fast re-check's timeout.
    assert!(down <= ms(200 + 2 * 100) + TIMER_SLACK * 2, "removed after {down:?}");
    assert_eq!(sim.state(0), State::Up, "the neighbour is untouched");
    sim.behaviours[1] = ok();
    let back_from = sim.at();
    sim.run_until(ms(5000));
    let up = sim.flipped(1, State::Up, back_from).expect("back") - back_from;
    assert!(up <= ms(2 * 200) + HOP * 2 + TIMER_SLACK, "back after {up:?} (rise 2, interval 200 ms)");
    // UDP retransmissions: a silent probe sends at 0, 30 and 90 ms, all inside the 100 ms timeout.
    let s = sim.core.stats();
    assert!(s.sent > s.replies + 2 * s.timeouts, "retransmissions counted: {s:?}");
}

#[test]
fn every_probe_opens_its_own_socket() {
    let c = config(FAST, &[("127.0.0.21", "\"udp\""), ("127.0.0.22", "\"tcp\"")], "");
    let mut sim = Sim::new(&c, vec![ok(), ok()]);
    sim.run_until(ms(2000));
    let distinct: HashSet<_> = sim.opens.iter().collect();
    assert_eq!(distinct.len(), sim.opens.len(), "a fresh socket per probe, never reused");
    assert!(sim.opens.len() >= 2 * 9, "about one probe per interval per target: {}", sim.opens.len());
    assert!(sim.open.is_empty() || sim.open.len() <= 2, "sockets are closed with their verdict");
}

#[test]
fn icmp_refusal_fails_at_once() {
    let probe = "interval_ms = 1000\ntimeout_ms = 400\nretransmit_ms = 100\nrise = 2\nfall = 1";
    let c = config(probe, &[("127.0.0.26", "\"udp\""), ("127.0.0.27", "\"udp\", \"tcp\"")], "");
    let mut sim = Sim::new(&c, vec![ok(), ok(), ok()]);
    sim.run_until(ms(3000));
    sim.behaviours[0] = Behaviour::Refuse;
    sim.behaviours[2] = Behaviour::Refuse;
    let closed = sim.at();
    sim.run_until(ms(6000));
    for target in [0, 2] {
        let gone = sim.flipped(target, State::Down, closed).expect("removed") - closed;
        assert!(
            gone <= ms(1000) + HOP * 2 + TIMER_SLACK,
            "target {target} removed after {gone:?}, not after a timeout"
        );
    }
    assert_eq!(sim.state(1), State::Up, "UDP of the second server still answers: health is per transport");
    assert!(sim.core.stats().refused >= 2);
}

#[test]
fn status_codes_decide_health() {
    let c = config(
        FAST,
        &[("127.0.0.41", "\"udp\""), ("127.0.0.42", "\"udp\""), ("127.0.0.43", "\"udp\""), ("127.0.0.44", "\"udp\"")],
        "",
    );
    let behaviours = vec![
        Behaviour::Reply("404 Not Found", String::new()), // any final reply is alive (the paper counts even 404)
        Behaviour::Reply("503 Service Unavailable", String::new()), // a down code
        Behaviour::TryingThen("200 OK"),                  // provisional first, then final
        Behaviour::TryingOnly,                            // provisional only: times out
    ];
    let mut sim = Sim::new(&c, behaviours);
    sim.run_until(ms(1000));
    assert_eq!(
        [sim.state(0), sim.state(1), sim.state(2), sim.state(3)],
        [State::Up, State::Down, State::Up, State::Down]
    );
    assert_eq!(sim.core.targets[0].last_code, Some(404));
}

#[test]
fn retry_after_drains_for_its_time_and_is_capped() {
    let probe = format!("{FAST}\nmax_retry_after_s = 60");
    let c = config(&probe, &[("127.0.0.41", "\"udp\""), ("127.0.0.42", "\"udp\""), ("127.0.0.43", "\"udp\"")], "");
    let mut sim = Sim::new(&c, vec![ok(), ok(), ok()]);
    sim.run_until(ms(1000));
    let unavailable = |secs: &str| Behaviour::Reply("503 Service Unavailable", format!("Retry-After: {secs}\r\n"));
    sim.behaviours[0] = unavailable("2");
    // The two that used to kill the process: u64::MAX overflowed `Instant + Duration`.
    sim.behaviours[1] = unavailable("18446744073709551615");
    sim.behaviours[2] = unavailable("1000000000000");
    let from = sim.at();
    sim.run_until(ms(1200));
    sim.behaviours = vec![ok(), ok(), ok()];
    sim.run_until(ms(2800));
    assert_eq!([sim.state(0), sim.state(1), sim.state(2)], [State::Down; 3], "all draining");
    sim.run_until(ms(4000));
    let back = sim.flipped(0, State::Up, from).expect("back after its 2 s") - from;
    assert!(back >= ms(2000) && back <= ms(2000 + 3 * 200), "Retry-After 2 s: back after {back:?}");
    sim.run_until(ms(60_000));
    assert_eq!(sim.state(1), State::Down, "capped at 60 s, not less");
    sim.run_until(ms(62_000));
    assert_eq!((sim.state(1), sim.state(2)), (State::Up, State::Up), "capped at max_retry_after_s = 60");
}

/// 100,000 forged replies (wrong branch, Call-ID, tag, CSeq number, method) before each honest
/// answer: not one state change beyond each server's first verdict.
#[test]
fn one_hundred_thousand_forged_replies_change_nothing() {
    let c = config(FAST, &[("127.0.0.71", "\"udp\""), ("127.0.0.72", "\"udp\""), ("127.0.0.73", "\"udp\"")], "");
    let mut sim =
        Sim::new(&c, vec![Behaviour::Forge(800, true), Behaviour::Forge(800, true), Behaviour::Forge(1000, false)]);
    let mut round = 0;
    while sim.core.stats().ignored < 100_000 {
        round += 1;
        sim.run_until(ms(200 * round));
        assert!(round < 1000);
    }
    assert_eq!((sim.flips_of(0), sim.flips_of(1), sim.flips_of(2)), (1, 1, 1), "{:?}", sim.flips);
    assert_eq!([sim.state(0), sim.state(1), sim.state(2)], [State::Up, State::Up, State::Down]);
}

/// A flood on one probe's socket is cut off after MAX_UNMATCHED messages (the socket is muted),
/// and it delays no other server's verdict.
#[test]
fn a_datagram_flood_is_muted_and_delays_no_one() {
    let garbage: Vec<Vec<u8>> = (0..20_000u32).map(|k| k.to_le_bytes().repeat(16)).collect();
    let c = config(FAST, &[("127.0.0.71", "\"udp\""), ("127.0.0.72", "\"udp\"")], "");
    let mut sim = Sim::new(&c, vec![ok(), ok()]);
    sim.run_until(ms(1000));
    sim.behaviours[0] = Behaviour::Raw(garbage, Duration::from_micros(50));
    let from = sim.at();
    sim.behaviours[1] = Behaviour::Silent;
    sim.run_until(ms(2000));
    assert!(sim.core.stats().muted >= 1);
    assert!(sim.core.stats().ignored < 3 * u64::from(MAX_UNMATCHED) * 10, "bounded work: {:?}", sim.core.stats());
    let down = sim.flipped(1, State::Down, from).expect("the silent neighbour is removed") - from;
    assert!(down <= ms(200 + 2 * 100) + TIMER_SLACK * 2, "neighbour removed after {down:?}");
    assert_eq!(sim.state(0), State::Down, "a flooding server fails its probes");
}

#[test]
fn late_replies_never_count() {
    let c = config(FAST, &[("127.0.0.54", "\"udp\"")], "");
    let mut sim = Sim::new(&c, vec![Behaviour::Late(ms(150))]);
    sim.run_until(ms(3000));
    assert_eq!(sim.state(0), State::Down);
    assert_eq!(sim.core.stats().replies, 0);
}

/// What a hostile TCP server can send: each ends the probe (or is muted) without unbounded CPU or
/// memory, and the prober goes on probing everyone on schedule.
#[test]
fn hostile_tcp_replies_fail_the_probe_and_nothing_else() {
    let wrap = b"SIP/2.0 200 OK\r\nContent-Length: 18446744073709551560\r\n\r\n".to_vec();
    let mib_of_headers: Vec<Vec<u8>> = (0..1024).map(|_| b"X-Pad: 0123456789abcdef\r\n".repeat(40)).collect();
    let tiny_messages = vec![b"\r\n\r\n".repeat(30_000)];
    let cases: Vec<(&str, Behaviour, &str)> = vec![
        ("Content-Length that wraps", Behaviour::Raw(vec![wrap], ms(0)), "oversize"),
        ("1 MiB of headers", Behaviour::Raw(mib_of_headers, Duration::from_micros(50)), "oversize"),
        ("30,000 empty messages", Behaviour::Raw(tiny_messages, ms(0)), "muted"),
        ("garbage", Behaviour::Raw(vec![b"\x00\xffgarbage\r\n\r\n".repeat(3)], ms(0)), "ignored"),
        ("a byte per 100 ms", Behaviour::Drip(ms(100)), "timeouts"),
        ("closed mid-message", Behaviour::CloseMidway, "closed"),
        ("never answers", Behaviour::Silent, "timeouts"),
    ];
    for (what, behaviour, counter) in cases {
        let c = config(FAST, &[("127.0.0.31", "\"tcp\""), ("127.0.0.32", "\"udp\"")], "");
        let mut sim = Sim::new(&c, vec![ok(), ok()]);
        sim.run_until(ms(1000));
        assert_eq!(sim.state(0), State::Up, "{what}");
        sim.behaviours[0] = behaviour;
        sim.behaviours[1] = Behaviour::Silent;
        let from = sim.at();
        sim.run_until(ms(3000));
        assert_eq!(sim.state(0), State::Down, "{what}: the probe failed");
        let down = sim.flipped(1, State::Down, from).expect("neighbour removed") - from;
        assert!(down <= ms(200 + 2 * 100) + TIMER_SLACK * 2, "{what}: neighbour removed after {down:?}");
        let s = sim.core.stats();
        let seen = match counter {
            "oversize" => s.oversize,
            "muted" => s.muted,
            "ignored" => s.ignored,
            _ => s.timeouts,
        };
        assert!(seen > 0 || counter == "closed", "{what}: {s:?}");
        for p in &sim.core.targets {
            if let Some(f) = &p.probe {
                assert!(f.stream.bytes.len() <= 2 * sip::MAX_MESSAGE, "{what}: buffer bounded");
            }
        }
    }
}

#[test]
fn health_is_per_transport_and_tls_probes_after_the_handshake() {
    let c = config(FAST, &[("127.0.0.85", "\"udp\", \"tcp\", \"tls\"")], "");
    let mut sim = Sim::new(&c, vec![ok(), Behaviour::Refuse, ok()]);
    sim.run_until(ms(1000));
    assert_eq!([sim.state(0), sim.state(1), sim.state(2)], [State::Up, State::Down, State::Up]);
    let last = &sim.published.last().unwrap().1;
    assert_eq!(last.serving.up[0][0], vec![Transport::Udp, Transport::Tls]);
    assert_eq!(sim.core.targets[2].addr.port(), 5061, "TLS goes to its own port");
    // An accepted connection alone is no longer a verdict: a server that takes the connection
    // and then says nothing over TLS is down.
    let mut sim = Sim::new(&c, vec![ok(), ok(), Behaviour::Silent]);
    sim.run_until(ms(1000));
    assert_eq!(sim.state(2), State::Down, "secured, but no SIP reply");
}

#[test]
fn a_failed_handshake_fails_the_probe_with_its_reason_once() {
    let c = config(FAST, &[("127.0.0.86", "\"tls\""), ("127.0.0.87", "\"tls\"")], "");
    let mut sim = Sim::new(&c, vec![Behaviour::TlsFail(TlsFailure::Expired), Behaviour::TlsStall]);
    sim.run_until(ms(2000));
    assert_eq!([sim.state(0), sim.state(1)], [State::Down, State::Down]);
    let reports = sim.core.reports();
    assert_eq!(reports[0].failure, Some("TLS: certificate expired"));
    assert_eq!(reports[0].changed.map(|(_, why)| why), Some("TLS: certificate expired"));
    assert_eq!(reports[1].failure, Some(TLS_HANDSHAKE_TIMEOUT));
    let mut changes = Vec::new();
    while let Some(c) = sim.core.poll_failure_change() {
        changes.push(c);
    }
    assert!(sim.opens.len() > 10, "probes went on: {}", sim.opens.len());
    assert_eq!(changes.len(), 2, "one change per target, not one per probe: {changes:?}");
    // Fixed: the reason clears, once.
    sim.behaviours[0] = ok();
    sim.run_until(ms(4000));
    assert_eq!(sim.state(0), State::Up);
    assert_eq!(sim.core.reports()[0].failure, None);
    let back: Vec<_> = std::iter::from_fn(|| sim.core.poll_failure_change()).collect();
    assert_eq!(back, vec![FailureChange { target: 0, failure: None }]);
}

#[test]
fn register_probes_must_be_answered_as_register() {
    let c =
        config(&format!("{FAST}\nmethod = \"register\""), &[("127.0.0.81", "\"udp\""), ("127.0.0.82", "\"udp\"")], "");
    let mut sim = Sim::new(&c, vec![Behaviour::Reply("401 Unauthorized", String::new()), Behaviour::Forge(5, false)]);
    sim.run_until(ms(1000));
    assert_eq!([sim.state(0), sim.state(1)], [State::Up, State::Down], "401 is final; an OPTIONS CSeq is forged");
}

#[test]
fn publishes_only_when_answers_change_and_last_good_holds() {
    let c = config(FAST, &[("127.0.0.65", "\"udp\""), ("127.0.0.66", "\"udp\"")], "all_down = \"last-good\"");
    let mut sim = Sim::new(&c, vec![ok(), Behaviour::Silent]);
    sim.run_until(ms(1000));
    let settled = sim.published.len();
    assert_eq!(sim.published.last().unwrap().1.serving.up[0], vec![vec![Transport::Udp], vec![]]);
    sim.run_until(ms(20_000));
    assert_eq!(sim.published.len(), settled, "100 stable rounds publish nothing");
    sim.behaviours[0] = Behaviour::Silent;
    sim.run_until(ms(22_000));
    assert_eq!(sim.state(0), State::Down);
    assert_eq!(sim.published.last().unwrap().1.serving.up[0], vec![vec![Transport::Udp], vec![]], "last good set kept");
}

#[test]
fn latency_weights_are_decided_once_here() {
    let c = config(FAST, &[("127.0.0.65", "\"udp\""), ("127.0.0.66", "\"udp\"")], "policy = \"latency\"");
    let mut sim = Sim::new(&c, vec![ok(), Behaviour::Late(ms(20))]);
    sim.run_until(ms(3000));
    let weights = &sim.published.last().unwrap().1.serving.latency_weights[0];
    assert_eq!(weights[0], select::FASTEST_WEIGHT);
    assert!(weights[1] < 25, "a server ten times slower gets a small weight: {weights:?}");
}

/// The clock may jump (a suspended VM, a fuzzer): nothing overflows, no loop runs per missed
/// interval, and probing resumes within an interval.
#[test]
fn clock_jumps_are_survived() {
    let c = config(FAST, &[("127.0.0.91", "\"udp\""), ("127.0.0.92", "\"tcp\"")], "");
    let mut sim = Sim::new(&c, vec![ok(), ok()]);
    sim.run_until(ms(1000));
    let sent = sim.core.stats().sent;
    sim.now += Duration::from_secs(30 * 86_400);
    sim.core.handle_timeout(sim.now);
    sim.act();
    let jumped = sim.at();
    sim.run_until(jumped + ms(1000));
    assert!(sim.core.stats().sent > sent, "probing resumed");
    assert!(sim.core.poll_timeout() <= sim.now + ms(200), "the schedule follows the new time");
    assert_eq!((sim.state(0), sim.state(1)), (State::Up, State::Up));
}

#[test]
fn no_randomness_no_prober() {
    let c = config(FAST, &[("127.0.0.91", "\"udp\"")], "");
    let failing = Failing { left: 0, inner: Seeded(1) };
    assert!(matches!(Core::new(&c, Instant::now(), Box::new(failing)), Err(CoreError::Entropy(_))));
    // Randomness lost later: probes are skipped and counted, no verdict is made up.
    let t0 = Instant::now();
    let mut core = Core::new(&c, t0, Box::new(Failing { left: 1, inner: Seeded(1) })).unwrap();
    for k in 0..20 {
        core.handle_timeout(t0 + ms(100 * k));
        while core.poll_action().is_some() {}
    }
    assert!(core.stats().entropy_failures >= 5);
    assert_eq!(core.targets[0].health.state(), State::Unknown);
}

/// A reload keeps the health of servers that stay (no re-rise), starts new ones in the start
/// state, and forgets removed ones.
#[test]
fn a_reload_carries_health_of_servers_that_stay() {
    let c = config(FAST, &[("127.0.0.21", "\"udp\""), ("127.0.0.22", "\"udp\"")], "");
    let mut sim = Sim::new(&c, vec![ok(), Behaviour::Silent]);
    sim.run_until(ms(1000));
    assert_eq!((sim.state(0), sim.state(1)), (State::Up, State::Down));
    let carried = sim.core.carry();
    let next = config(FAST, &[("127.0.0.22", "\"udp\""), ("127.0.0.21", "\"udp\""), ("127.0.0.23", "\"udp\"")], "");
    let core = Core::carrying(&next, sim.now, Box::new(Seeded(7)), &carried).unwrap();
    let states: Vec<State> = core.reports().iter().map(|r| r.state).collect();
    assert_eq!(states, vec![State::Down, State::Up, State::Unknown], "kept by address, new one unknown");
    assert!(core.reports()[1].changed.is_some_and(|(_, why)| why == "a final reply"));
}

/// Start-up without a stampede: with `start = "unknown"` nothing health-based is published until
/// every server has its first verdict, so the first server to answer never gets every client.
#[test]
fn the_first_publish_waits_for_every_first_verdict() {
    let probe = "interval_ms = 1000\ntimeout_ms = 150\nretransmit_ms = 40\nrise = 2\nfall = 2";
    let c = config(probe, &[("127.0.0.21", "\"udp\""), ("127.0.0.22", "\"udp\""), ("127.0.0.23", "\"udp\"")], "");
    let mut sim = Sim::new(&c, vec![ok(), Behaviour::Late(ms(30)), Behaviour::Silent]);
    sim.run_until(ms(3000));
    let (first_at, first) = sim.published.first().expect("published").clone();
    let decided = sim.flips.iter().map(|(at, _)| *at).max().unwrap();
    assert_eq!(sim.flips.len(), 3, "three first verdicts: {:?}", sim.flips);
    assert_eq!(first_at, decided, "published at the last first verdict, not before");
    assert_eq!(first.serving.up[0], vec![vec![Transport::Udp], vec![Transport::Udp], vec![]]);
    assert!(first_at <= ms(1000 + 150) + TIMER_SLACK, "within one round and a timeout: {first_at:?}");
}

/// A server that never gets its first verdict (here: no randomness for its probe) holds the
/// first publish only until the first round's timeout has passed.
#[test]
fn the_start_up_hold_ends_after_one_round_and_a_timeout() {
    let probe = "interval_ms = 1000\ntimeout_ms = 150\nretransmit_ms = 40\nrise = 2\nfall = 2";
    let c = config(probe, &[("127.0.0.21", "\"udp\""), ("127.0.0.22", "\"udp\""), ("127.0.0.23", "\"udp\"")], "");
    let mut sim = Sim::new(&c, vec![ok(), ok(), ok()]);
    // The jitter draw and two probes get randomness; the third target's probe does not.
    sim.core = Core::new(&c, sim.t0, Box::new(Failing { left: 3, inner: Seeded(3) })).unwrap();
    sim.run_until(ms(3000));
    let (first_at, first) = sim.published.first().expect("published").clone();
    assert_eq!(first_at, ms(1000 + 150) + TIMER_SLACK, "held until the deadline");
    assert_eq!(first.serving.up[0].iter().filter(|t| !t.is_empty()).count(), 2);
    // A reload that carries health publishes at once: the hold is for a fresh start only.
    let carried = sim.core.carry();
    let mut core = Core::carrying(&c, sim.now, Box::new(Seeded(9)), &carried).unwrap();
    assert!(core.poll_publish().is_some(), "carried health publishes at once");
}

/// RFC 7339: `oc=50` halves a weighted server's weight for as long as its replies carry it
/// (until its `oc-validity` runs out), and `oc-validity=0` ends it at once.
#[test]
fn overload_lowers_the_weight_for_its_validity() {
    let c = config(FAST, &[("127.0.0.21", "\"udp\""), ("127.0.0.22", "\"udp\"")], "policy = \"weighted\"");
    let mut sim = Sim::new(&c, vec![ok(), Behaviour::Overloaded(";oc=50;oc-validity=500;oc-seq=100.5")]);
    sim.run_until(ms(1000));
    let weights = |sim: &Sim| sim.published.last().unwrap().1.serving.weights[0].clone();
    assert_eq!(weights(&sim), vec![1000, 500], "half the configured weight (10 each)");
    assert_eq!(sim.core.reports()[1].overload, Some(50));
    // The server stops sending oc: the reduction holds for its validity after the last reply
    // that carried it, then ends and the answers are republished.
    sim.behaviours[1] = ok();
    let stopped = sim.at();
    sim.run_until(stopped + ms(200 + 500 + 10));
    assert_eq!(weights(&sim), vec![1000, 1000], "full share after the validity");
    let ended = sim.published.last().unwrap().0 - stopped;
    // The last reply with oc came at most one interval before the switch.
    assert!(ended >= ms(500 - 200) && ended <= ms(500) + HOP * 2 + TIMER_SLACK, "ended after {ended:?}");
    // An older oc-seq is ignored; oc-validity=0 ends the reduction at once.
    sim.behaviours[1] = Behaviour::Overloaded(";oc=80;oc-validity=60000;oc-seq=200");
    sim.run_until(sim.at() + ms(250));
    assert_eq!(weights(&sim), vec![1000, 200]);
    sim.behaviours[1] = Behaviour::Overloaded(";oc=10;oc-seq=150");
    sim.run_until(sim.at() + ms(250));
    assert_eq!(weights(&sim), vec![1000, 200], "an older signal changes nothing");
    sim.behaviours[1] = Behaviour::Overloaded(";oc=80;oc-validity=0;oc-seq=300");
    sim.run_until(sim.at() + ms(250));
    assert_eq!(weights(&sim), vec![1000, 1000], "oc-validity=0 ends it");
    assert_eq!(sim.core.reports()[1].overload, None);
}

#[test]
fn overload_lowers_latency_weights_and_never_reaches_zero() {
    let c = config(FAST, &[("127.0.0.21", "\"udp\""), ("127.0.0.22", "\"udp\"")], "policy = \"latency\"");
    let mut sim = Sim::new(&c, vec![ok(), Behaviour::Overloaded(";oc=100;oc-validity=5000")]);
    sim.run_until(ms(1000));
    let last = &sim.published.last().unwrap().1.serving;
    assert_eq!(last.latency_weights[0], vec![select::FASTEST_WEIGHT, 1], "oc=100: the least share, not none");
    assert!(last.weights[0].is_empty(), "weights are for weighted services");
}

/// An operator's drain takes a server out of the next publish, its probes go on, and undrain
/// brings it back at once; a reload keeps the drain.
#[test]
fn a_drained_server_leaves_at_once_and_is_still_probed() {
    let c = config(FAST, &[("127.0.0.21", "\"udp\", \"tcp\""), ("127.0.0.22", "\"udp\"")], "");
    let mut sim = Sim::new(&c, vec![ok(), ok(), ok()]);
    sim.run_until(ms(1000));
    assert_eq!(sim.core.set_drained(None, "127.0.0.21".parse().unwrap(), Some(5061), true, sim.now), 0, "wrong port");
    assert_eq!(sim.core.set_drained(Some("other.test"), "127.0.0.21".parse().unwrap(), None, true, sim.now), 0);
    assert_eq!(
        sim.core.set_drained(Some("sip.example.test"), "127.0.0.21".parse().unwrap(), Some(5060), true, sim.now),
        2
    );
    let publish = sim.core.poll_publish().expect("published at once");
    assert_eq!(publish.serving.up[0], vec![vec![], vec![Transport::Udp]]);
    let opens = sim.opens.iter().filter(|p| p.target == 0).count();
    sim.run_until(ms(3000));
    assert!(sim.opens.iter().filter(|p| p.target == 0).count() >= opens + 9, "still probed");
    assert!(sim.core.reports()[0].drained && sim.state(0) == State::Up);
    let carried = sim.core.carry();
    let mut reloaded = Core::carrying(&c, sim.now, Box::new(Seeded(5)), &carried).unwrap();
    assert_eq!(
        reloaded.poll_publish().unwrap().serving.up[0][0],
        Vec::<Transport>::new(),
        "the drain survives a reload"
    );
    assert_eq!(sim.core.set_drained(None, "127.0.0.21".parse().unwrap(), None, false, sim.now), 2);
    let publish = sim.core.poll_publish().expect("published at once");
    assert_eq!(publish.serving.up[0], vec![vec![Transport::Udp, Transport::Tcp], vec![Transport::Udp]]);
}

/// `drain = true` in the configuration: out of every publish from the start, still probed; a
/// `dnlb undrain` holds over a reload that leaves the `drain` line alone, and a reload that
/// changes the line applies it.
#[test]
fn a_server_configured_drained_is_never_served_and_its_line_decides_on_reload() {
    let servers = &[("127.0.0.21", "\"udp\""), ("127.0.0.22", "\"udp\"")];
    let drained = config(FAST, servers, "");
    let text = |drain: bool| {
        let mut c = drained.clone();
        c.services[0].servers[0].drain = drain;
        c
    };
    let c = text(true);
    let mut sim = Sim::new(&c, vec![ok(), ok()]);
    sim.run_until(ms(1000));
    assert!(
        !sim.published.is_empty() && sim.published.iter().all(|(_, p)| p.serving.up[0][0].is_empty()),
        "never served"
    );
    assert_eq!(sim.published.last().unwrap().1.serving.up[0][1], vec![Transport::Udp], "its neighbour is");
    assert!(sim.opens.iter().any(|p| p.target == 0), "still probed");
    assert!(sim.core.reports()[0].drained && sim.state(0) == State::Up);
    assert!(crate::snapshot::Serving::all_up(&c).up[0][0].is_empty(), "nor before the first probe");

    // Undrained by the operator; a reload with the same `drain = true` keeps that.
    assert_eq!(sim.core.set_drained(None, "127.0.0.21".parse().unwrap(), None, false, sim.now), 1);
    let mut same = Core::carrying(&c, sim.now, Box::new(Seeded(5)), &sim.core.carry()).unwrap();
    assert_eq!(same.poll_publish().unwrap().serving.up[0][0], vec![Transport::Udp]);
    // A reload that removes the line leaves it in; one that adds it back drains it again.
    let off = text(false);
    let mut removed = Core::carrying(&off, sim.now, Box::new(Seeded(6)), &sim.core.carry()).unwrap();
    assert_eq!(removed.poll_publish().unwrap().serving.up[0][0], vec![Transport::Udp]);
    let mut again = Core::carrying(&c, sim.now, Box::new(Seeded(7)), &removed.carry()).unwrap();
    assert!(again.poll_publish().unwrap().serving.up[0][0].is_empty(), "the line, changed, decides");
}

/// Runs one UDP server at `loss` percent per direction for `hours` simulated hours under
/// `probe` settings; returns its false flaps (times it was taken out).
fn flaps_under_loss(probe: &str, loss: u64, hours: u64) -> usize {
    let c = config(probe, &[("127.0.0.21", "\"udp\"")], "");
    let mut sim = Sim::new(&c, vec![ok()]);
    sim.run_until(ms(2000));
    assert_eq!(sim.state(0), State::Up);
    sim.loss[0] = loss;
    let from = sim.at();
    sim.run_until(from + Duration::from_secs(3600 * hours));
    sim.flips.iter().filter(|(at, f)| *at >= from && f.to == State::Down).count()
}

/// Loss-proof detection. At 30 % loss per direction (51 % of exchanges lost), three datagrams
/// per probe and fall = 2 flap about once a minute (the model: 0.51^3 squared per round); with
/// copies on lossy paths the model gives 0.005 flaps an hour. The simulated network loses each
/// datagram independently, as an nftables `numgen random` rule does.
#[test]
fn thirty_percent_loss_per_direction_does_not_flap() {
    let defaults = "interval_ms = 1000\ntimeout_ms = 150\nretransmit_ms = 40\nrise = 2\nfall = 2";
    let old = flaps_under_loss(&format!("{defaults}\nloss_copies = 1"), 30, 1);
    assert!(old >= 20, "retransmissions alone flap about 63 times an hour: {old}");
    let old_flaps_per_hour = old;
    let now = flaps_under_loss(defaults, 30, 10);
    eprintln!("30 % loss per direction: {old_flaps_per_hour} flaps in 1 h without copies, {now} in 10 h with");
    assert_eq!(now, 0, "no flap in 10 simulated hours at 30 % loss per direction");
}

/// Copies on a lossy path do not slow the removal of a dead server: a blackhole is out after the
/// next probe's timeout and the immediate re-check's, as on a clean path.
#[test]
fn a_blackhole_on_a_lossy_path_is_out_as_fast_as_on_a_clean_one() {
    let defaults = "interval_ms = 1000\ntimeout_ms = 150\nretransmit_ms = 40\nrise = 2\nfall = 2";
    let c = config(defaults, &[("127.0.0.21", "\"udp\"")], "");
    let mut worst = Duration::ZERO;
    let mut total = Duration::ZERO;
    let trials = 20u32;
    let mut sim = Sim::new(&c, vec![ok()]);
    sim.loss[0] = 30;
    sim.run_until(ms(60_000));
    for k in 0..trials {
        sim.behaviours[0] = ok();
        sim.loss[0] = 30;
        let start = sim.at() + ms(5000 + 53 * u64::from(k)); // phases spread over one interval
        sim.run_until(start);
        assert!(sim.core.reports()[0].lossy, "copies are on at 30 % loss");
        if sim.state(0) != State::Up {
            sim.run_until(start + ms(3000));
            continue;
        }
        sim.behaviours[0] = Behaviour::Silent;
        let out = sim.flipped_after(0, State::Down, start, ms(3000));
        worst = worst.max(out);
        total += out;
    }
    let mean = total / trials;
    eprintln!("blackhole at 30 % loss: out after {mean:?} on average, {worst:?} at worst");
    assert!(worst <= ms(1000 + 2 * 150) + TIMER_SLACK * 2, "bounded by interval + 2 timeouts: {worst:?}");
    assert!(mean < ms(1000), "out within a second on average: {mean:?}");
}

/// The trade-off table in tuning.md: false flaps per hour against loss per direction, with and
/// without copies, on the simulated network. Not a check (the two tests above are); run with
/// `cargo test --lib loss_table -- --ignored --nocapture`.
#[test]
#[ignore = "prints the loss table for tuning.md (about a minute)"]
fn loss_table() {
    let defaults = "interval_ms = 1000\ntimeout_ms = 150\nretransmit_ms = 40\nrise = 2\nfall = 2";
    for loss in [10, 20, 30, 40, 50] {
        let old = flaps_under_loss(&format!("{defaults}\nloss_copies = 1"), loss, 2);
        let new = flaps_under_loss(defaults, loss, 20);
        eprintln!("loss {loss} % per direction: loss_copies = 1: {old} flaps in 2 h; loss_copies = 10: {new} in 20 h");
    }
}

/// Every change lands in the target's history with what the server looked like then (its RTT,
/// last code), drains included; flaps are counted, and a reload carries it all for servers that
/// stay while new servers start with none.
#[test]
fn history_records_changes_and_flaps_and_survives_a_reload() {
    let c = config(FAST, &[("127.0.0.21", "\"udp\""), ("127.0.0.22", "\"udp\"")], "");
    let mut sim = Sim::new(&c, vec![ok(), ok()]);
    sim.run_until(ms(1000));
    for round in 0..3 {
        sim.behaviours[1] = Behaviour::Silent;
        sim.run_until(sim.at() + ms(1000));
        assert_eq!(sim.state(1), State::Down, "round {round}");
        sim.behaviours[1] = ok();
        sim.run_until(sim.at() + ms(1000));
        assert_eq!(sim.state(1), State::Up, "round {round}");
    }
    let report = &sim.core.reports()[1];
    let changes: Vec<(State, State, &str)> = report.history.changes().map(|c| (c.from, c.to, c.why)).collect();
    assert_eq!(changes[0], (State::Unknown, State::Up, "a final reply"), "the first verdict");
    assert_eq!(changes[1], (State::Up, State::Down, "timeout"));
    assert_eq!(changes[2], (State::Down, State::Up, "a final reply"));
    assert_eq!(changes.len(), 7, "{changes:?}");
    let down = report.history.changes().nth(1).unwrap();
    assert_eq!((down.code, down.drained), (Some(200), false), "the last code before it fell silent");
    assert!(down.rtt_us.is_some_and(|us| us >= 2_000), "its RTT then (two hops): {down:?}");
    // Each flip's time is the verdict's, exactly as the flip records say.
    let flip_times: Vec<Duration> = sim.flips.iter().filter(|(_, f)| f.target == 1).map(|(at, _)| *at).collect();
    let history_times: Vec<Duration> = report.history.changes().map(|c| c.at - sim.t0).collect();
    assert_eq!(history_times, flip_times);
    assert_eq!(report.history.flaps(sim.now), history::Flaps { hour: 6, day: 6 });
    assert_eq!(sim.core.reports()[0].history.changes().len(), 1, "the steady neighbour: its first verdict");
    // An hour later, the flaps have left the hour but not the day.
    assert_eq!(report.history.flaps(sim.now + Duration::from_secs(3600)), history::Flaps { hour: 0, day: 6 });

    // A drain is a change of its own: same health, drained, and why.
    assert_eq!(sim.core.set_drained(None, "127.0.0.22".parse().unwrap(), None, true, sim.now), 1);
    let last = *sim.core.reports()[1].history.last().unwrap();
    assert_eq!((last.from, last.to, last.drained, last.why), (State::Up, State::Up, true, "drained by an operator"));
    assert_eq!(sim.core.set_drained(None, "127.0.0.22".parse().unwrap(), None, true, sim.now), 1);
    assert_eq!(sim.core.reports()[1].history.changes().len(), 8, "draining a drained server changes nothing");

    // A reload keeps it for the servers that stay; a new server starts with none.
    let next = config(FAST, &[("127.0.0.22", "\"udp\""), ("127.0.0.23", "\"udp\"")], "");
    let reloaded = Core::carrying(&next, sim.now, Box::new(Seeded(7)), &sim.core.carry()).unwrap();
    let reports = reloaded.reports();
    assert_eq!(*reports[0].history, *sim.core.reports()[1].history, "carried whole");
    assert_eq!(reports[1].history.changes().len(), 0);
    // A reload that changes the server's `drain` line records who decided.
    let mut drained = next.clone();
    drained.services[0].servers[1].drain = true;
    let again = Core::carrying(&drained, sim.now, Box::new(Seeded(8)), &reloaded.carry()).unwrap();
    let last = *again.reports()[1].history.last().unwrap();
    assert_eq!((last.drained, last.why), (true, "drained in the configuration"));
}

/// The history's memory is bounded whatever a server does: a server flapping for a simulated
/// day keeps 32 changes.
#[test]
fn a_server_flapping_all_day_keeps_32_changes() {
    let probe = "interval_ms = 1000\ntimeout_ms = 100\nretransmit_ms = 30\nrise = 1\nfall = 1";
    let c = config(probe, &[("127.0.0.21", "\"udp\"")], "");
    let mut sim = Sim::new(&c, vec![ok()]);
    for hour in 0..24u64 {
        sim.behaviours[0] = if hour % 2 == 0 { Behaviour::Silent } else { ok() };
        sim.run_until(ms((hour + 1) * 3_600_000));
    }
    let h = &sim.core.reports()[0].history;
    assert_eq!(h.changes().len(), history::HISTORY_LEN.min(sim.flips_of(0)));
    assert_eq!(h.flaps(sim.now).day as usize, sim.flips_of(0) - 1, "every flip but the first verdict");
}

fn seen(up: bool) -> Seen {
    Seen { up, rtt_us: 500, oc: 0 }
}

/// In a fleet, a server only this instance sees down stays in while another prober reaches it;
/// it leaves when every current prober says down; without fresh verdicts it keeps its health.
#[test]
fn in_a_fleet_a_server_leaves_only_when_every_prober_says_down() {
    let c = config(FAST, &[("127.0.0.21", "\"udp\""), ("127.0.0.22", "\"udp\"")], "");
    let mut sim = Sim::new(&c, vec![ok(), ok()]);
    sim.core.join_fleet();
    sim.run_until(ms(1000));
    assert_eq!(sim.published.last().unwrap().1.serving.up[0], vec![vec![Transport::Udp]; 2]);
    // Attached, k = 2: this instance and one other probe both servers.
    sim.core.set_clustered(true);
    sim.core.set_fleet(0, true, &[seen(true)], false);
    sim.core.set_fleet(1, true, &[seen(true)], false);
    // Own verdicts reported once each, not once per probe.
    let mut reported = Vec::new();
    while let Some(t) = sim.core.poll_verdict() {
        reported.push(t);
    }
    reported.sort();
    assert_eq!(reported, vec![0, 1]);
    sim.run_until(ms(2000));
    assert_eq!(sim.core.poll_verdict(), None, "no change, no report");
    // This instance's path to server 1 breaks; the other prober still reaches it: it stays.
    sim.behaviours[1] = Behaviour::Silent;
    sim.run_until(ms(3000));
    assert_eq!(sim.state(1), State::Down, "own verdict: down");
    assert_eq!(sim.core.poll_verdict(), Some(1), "the change is reported");
    assert_eq!(sim.core.local_seen(1).map(|s| s.up), Some(false));
    assert_eq!(sim.published.last().unwrap().1.serving.up[0][1], vec![Transport::Udp], "still in");
    assert!(sim.core.reports()[1].fleet == Some((State::Up, true)));
    // The other prober agrees: out at once.
    sim.core.set_fleet(1, true, &[seen(false)], false);
    sim.run_until(ms(3001));
    assert_eq!(sim.published.last().unwrap().1.serving.up[0][1], Vec::<Transport>::new());
    // Duty moves away from this instance and the other prober's verdict vanishes (its lease
    // ended): no fresh verdict at all, so the server keeps its health (no flap either way).
    sim.core.set_probing(1, None);
    sim.core.set_fleet(1, false, &[], false);
    let flips = sim.flips_of(1);
    sim.run_until(ms(4000));
    assert_eq!(sim.flips_of(1), flips);
    // A cluster-wide drain takes server 0 out at once; it is still probed.
    sim.core.set_fleet(0, true, &[seen(true)], true);
    assert_eq!(sim.core.poll_publish().unwrap().serving.up[0][0], Vec::<Transport>::new());
    sim.core.set_fleet(0, true, &[seen(true)], false);
    assert_eq!(sim.core.poll_publish().unwrap().serving.up[0][0], vec![Transport::Udp]);
}

/// A target out of this instance's duty gets no probe; taken over, its first probe goes out at
/// the time given, and its old (stale) verdict does not count until a new one comes.
#[test]
fn duty_decides_what_is_probed_and_a_stale_own_verdict_never_counts() {
    let c = config(FAST, &[("127.0.0.21", "\"udp\""), ("127.0.0.22", "\"udp\"")], "");
    let mut sim = Sim::new(&c, vec![ok(), Behaviour::Silent]);
    sim.core.join_fleet();
    sim.run_until(ms(1000));
    assert_eq!(sim.state(1), State::Down);
    sim.core.set_clustered(true);
    // Server 1 is someone else's (k = 1), who sees it up.
    sim.core.set_probing(1, None);
    sim.core.set_fleet(1, false, &[seen(true)], false);
    let opens = sim.opens.iter().filter(|p| p.target == 1).count();
    sim.run_until(ms(3000));
    assert!(sim.opens.iter().filter(|p| p.target == 1).count() <= opens + 1, "no probes off duty");
    assert_eq!(sim.published.last().unwrap().1.serving.up[0][1], vec![Transport::Udp], "its prober's verdict");
    // The other prober dies; duty comes back here. The own verdict (down, two seconds old) is
    // stale: the server keeps its health until this instance's first new probe says.
    let at = sim.now + ms(50);
    let opens = sim.opens.iter().filter(|p| p.target == 1).count();
    sim.core.set_probing(1, Some(at));
    sim.core.set_fleet(1, true, &[], false);
    assert!(sim.core.probing(1));
    assert_eq!(sim.core.poll_publish(), None, "no flap from a stale verdict");
    sim.run_until(ms(3040));
    assert_eq!(sim.opens.iter().filter(|p| p.target == 1).count(), opens, "not before the given time");
    sim.run_until(ms(3060));
    assert_eq!(sim.opens.iter().filter(|p| p.target == 1).count(), opens + 1, "at the given time");
    sim.run_until(ms(3500));
    assert_eq!(sim.published.last().unwrap().1.serving.up[0][1], Vec::<Transport>::new(), "its own fresh verdict");
}
