//! Fuzzes the prober's whole I/O-free core: arbitrary sequences of socket events (replies, TCP
//! bytes, refusals, closes, stale probes) and clock moves (small steps, jumps of days, steps
//! back) against a farm of UDP, TCP and TLS targets. Any panic or overflow is a failure (run with
//! `cargo fuzz run -a probe_core` for overflow checks).
#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use dnlb::config::Config;
use dnlb::probe::core::{Action, Core, CoreError, Entropy, Event, ProbeRef, TlsFailure};
use libfuzzer_sys::fuzz_target;

/// Random words from the input's first bytes: deterministic per input.
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

/// Three prepared cores (latency, on-duty and weighted farms of UDP, TCP and TLS targets on IPv4
/// and IPv6 servers), built once at `T0`; each run forks one. The last target is [::1] over UDP,
/// so a seed's first reply (to the last probe opened) answers an IPv6 probe.
fn prepare() -> (Instant, [Core; 3]) {
    {
        let t0 = Instant::now();
        let farm = |policy: &str| {
            let text = format!(
                "[server]\nlisten = [\"127.0.0.1:5353\"]\n[probe]\ninterval_ms = 200\ntimeout_ms = 100\nretransmit_ms = 5\n\
                 rise = 2\nfall = 2\nmax_retry_after_s = 86400\n[[service]]\nname = \"sip.example.test\"\npolicy = \"{policy}\"\n\
                 all_down = \"last-good\"\n[[service.server]]\naddress = \"127.0.0.11\"\ntransports = [\"udp\", \"tcp\", \"tls\"]\n\
                 [[service.server]]\naddress = \"2001:db8::10\"\ntransports = [\"udp\", \"tcp\", \"tls\"]\n\
                 [[service.server]]\naddress = \"::1\"\ntransports = [\"udp\"]\n"
            );
            let config = Config::parse(&text).expect("the fuzz config is valid");
            Core::new(&config, t0, Box::new(Seeded(1))).expect("seeded randomness never fails")
        };
        (t0, [farm("latency"), farm("on-duty"), farm("weighted")])
    }
}

thread_local! {
    static PREPARED: (Instant, [Core; 3]) = prepare();
}

/// Reads the input a byte (or a few) at a time; zeros once it runs out.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn byte(&mut self) -> u8 {
        let (first, rest) = self.0.split_first().unwrap_or((&0, &[]));
        self.0 = rest;
        *first
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }
    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let seed = u64::from(input.u32()) | 1;
    let which = usize::from(input.byte() % 3);
    let (t0, mut core) = PREPARED.with(|(t0, cores)| (*t0, cores[which].fork(Box::new(Seeded(seed)))));
    let mut now = t0;
    let mut probes: Vec<ProbeRef> = Vec::new();
    let mut requests: Vec<Vec<u8>> = Vec::new();
    for _ in 0..512 {
        if input.0.is_empty() {
            break;
        }
        let op = input.byte();
        let pick = |input: &mut Input, probes: &[ProbeRef]| -> Option<ProbeRef> {
            let k = usize::from(input.byte());
            probes.get(probes.len().saturating_sub(1 + k % 4))
                .copied()
                .or_else(|| probes.get(k % probes.len().max(1)).copied())
        };
        match op % 12 {
            0 => now += Duration::from_millis(u64::from(input.byte())),
            1 => now += Duration::from_millis(u64::from(input.u32())),
            // Back in time (a fuzzer's clock, not a real one): must not panic either.
            2 => now = t0 + now.duration_since(t0) / 2,
            3 => core.handle_timeout(now),
            4 | 5 => {
                if let Some(p) = pick(&mut input, &probes) {
                    let n = usize::from(input.byte()) * 4;
                    let bytes = input.bytes(n);
                    let event = if op % 12 == 4 { Event::Datagram(bytes) } else { Event::Stream(bytes) };
                    core.handle(p, event, now);
                }
            }
            6 => {
                // A reply built from the real request, with a status and a hostile header.
                if let (Some(p), Some(request)) = (pick(&mut input, &probes), requests.last()) {
                    let status = ["200 OK", "100 Trying", "503 Busy", "404 No"][usize::from(input.byte() % 4)];
                    let n = usize::from(input.byte());
                    let extra = String::from_utf8_lossy(input.bytes(n)).into_owned();
                    let reply = echo(request, status, &extra);
                    let event = if input.byte() & 1 == 0 { Event::Datagram(&reply) } else { Event::Stream(&reply) };
                    core.handle(p, event, now);
                }
            }
            7 => {
                if let Some(p) = pick(&mut input, &probes) {
                    let event = [
                        Event::Connected,
                        Event::Closed,
                        Event::Refused,
                        Event::Failed,
                        Event::Secured,
                        Event::TlsFailed(TlsFailure::Expired),
                    ][usize::from(input.byte() % 6)];
                    core.handle(p, event, now);
                }
            }
            8 => {
                if let Some(p) = pick(&mut input, &probes) {
                    // Either family, whatever the target's: the core renders any local address.
                    let port = u16::from(input.byte()) << 8 | 1;
                    let local = if input.byte() & 1 == 0 {
                        SocketAddr::from(([127, 0, 0, 1], port))
                    } else {
                        SocketAddr::from(([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1], port))
                    };
                    core.handle(p, Event::Opened { local }, now);
                }
            }
            9 => {
                // A reply whose top Via carries hostile RFC 7339 overload parameters.
                if let (Some(p), Some(request)) = (pick(&mut input, &probes), requests.last()) {
                    let n = usize::from(input.byte() % 64);
                    let params = String::from_utf8_lossy(input.bytes(n)).replace(['\r', '\n'], "");
                    let reply = String::from_utf8_lossy(&echo(request, "200 OK", "")).into_owned();
                    let reply = match reply.find("\r\nVia: ") {
                        Some(at) => {
                            let end = at + 2 + reply[at + 2..].find("\r\n").unwrap_or(0);
                            format!("{};oc={}{params}{}", &reply[..end], input.byte(), &reply[end..])
                        }
                        None => reply,
                    };
                    core.handle(p, Event::Datagram(reply.as_bytes()), now);
                }
            }
            10 => {
                // An operator drains or undrains a server (or an address that is none).
                let ip = ["127.0.0.11", "::1", "127.0.0.99", "2001:db8::10"][usize::from(input.byte() % 4)].parse().unwrap();
                let port = (input.byte() & 1 == 0).then_some(5060);
                let _matched = core.set_drained(None, ip, port, input.byte() & 1 == 0, now);
            }
            _ => {}
        }
        // The driver's side: record what was asked, answer opens as a socket would.
        while let Some(action) = core.poll_action() {
            match action {
                Action::Open { probe, addr, .. } => {
                    probes.push(probe);
                    if probes.len() > 64 {
                        probes.remove(0);
                    }
                    if input.byte() & 3 != 0 {
                        // The socket's address has the server's family, as the kernel gives it.
                        let local = match addr {
                            SocketAddr::V4(_) => SocketAddr::from(([127, 0, 0, 1], 40_000)),
                            SocketAddr::V6(_) => SocketAddr::from(([0, 0, 0, 0, 0, 0, 0, 1], 40_000)),
                        };
                        core.handle(probe, Event::Opened { local }, now);
                    }
                }
                Action::Send { probe } => {
                    let request = core.request(probe).to_vec();
                    if !request.is_empty() {
                        requests.push(request);
                        if requests.len() > 8 {
                            requests.remove(0);
                        }
                    }
                }
                Action::Mute { .. } | Action::Close { .. } => {}
            }
        }
        while core.poll_flip().is_some() {}
        let _ = core.poll_publish();
        let _ = core.poll_timeout();
    }
    let _reports = core.reports();
});

/// A reply echoing the request's Via, From, To, Call-ID and CSeq, with `extra` header text.
fn echo(request: &[u8], status: &str, extra: &str) -> Vec<u8> {
    let text = String::from_utf8_lossy(request);
    let mut out = format!("SIP/2.0 {status}\r\n");
    for line in text.split("\r\n").skip(1).take_while(|l| !l.is_empty()) {
        let lower = line.to_ascii_lowercase();
        if ["via:", "from:", "to:", "call-id:", "cseq:"].iter().any(|h| lower.starts_with(h)) {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out.push_str(extra);
    out.push_str("\r\nContent-Length: 0\r\n\r\n");
    out.into_bytes()
}
