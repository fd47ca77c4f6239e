//! What the relay fuzz targets share: an engine with fixed settings, a deterministic random
//! source (reset per input, so a crash reproduces), a network that records what the engine asks
//! of it, and a client side that collects replies.
#![allow(dead_code)] // each target uses a different part

use std::collections::HashSet;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dnlb::config::{RelayConfig, StaleConfig};
use dnlb::dns::answer::DnsTransport;
use dnlb::dns::query::{parse, MAX_NAME_LEN};
use dnlb::relay::engine::{Engine, Forwarded, Replies, ReplyTo, Token, Wire};

static STATE: AtomicU64 = AtomicU64::new(1);

/// Restarts the random stream (call at the start of each input).
pub fn reset_random() {
    STATE.store(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
}

/// xorshift64: a fixed stream, so an input replays the same IDs and letter case.
pub fn fill(buf: &mut [u8]) -> Result<(), getrandom::Error> {
    let mut x = STATE.load(Ordering::Relaxed);
    for b in buf.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    STATE.store(x, Ordering::Relaxed);
    Ok(())
}

/// Small bounds, so the fuzzer reaches them.
pub fn config(upstreams: usize) -> RelayConfig {
    RelayConfig {
        upstreams: (1..=upstreams).map(|i| SocketAddr::from(([192, 0, 2, i as u8], 53))).collect(),
        timeout: Duration::from_millis(500),
        allow: Vec::new(),
        cache_entries: 8,
        cache_bytes: 16_384,
        max_ttl: 3600,
        max_pending: 6,
        max_waiters: 12,
        max_pending_per_prefix: 6,
        managed_for_all: true,
        routes: Vec::new(),
        health_check: Some("health.test".into()),
        health_check_interval: Duration::from_secs(2),
        // Short enough that a program reaches every stale path: the client timer before the
        // upstream timeout, the recheck timer, and the end of the stale window.
        stale: Some(StaleConfig {
            max: Duration::from_secs(60),
            ttl: 30,
            refresh: Duration::from_secs(2),
            answer_after: Duration::from_millis(300),
        }),
        prefetch: true,
    }
}

pub fn engine(upstreams: usize, now: Instant) -> Engine {
    reset_random();
    Engine::new(Arc::new(config(upstreams)), fill, now).expect("a working random source")
}

/// Records sends; every exchange's socket stays open until closed.
#[derive(Default)]
pub struct FakeWire {
    /// (token, upstream, bytes, over TCP)
    pub sent: Vec<(Token, SocketAddr, Vec<u8>, bool)>,
    pub open: HashSet<Token>,
    /// Fail the next sends (the kernel refusing).
    pub refuse: bool,
}

impl Wire for FakeWire {
    fn send_udp(&mut self, token: Token, to: SocketAddr, bytes: &[u8]) -> io::Result<()> {
        assert!(self.open.insert(token), "a token is never reused");
        if self.refuse {
            return Err(io::ErrorKind::ConnectionRefused.into());
        }
        self.sent.push((token, to, bytes.to_vec(), false));
        Ok(())
    }

    fn send_tcp(&mut self, token: Token, to: SocketAddr, bytes: &[u8]) -> io::Result<()> {
        assert!(self.open.insert(token), "a token is never reused");
        if self.refuse {
            return Err(io::ErrorKind::ConnectionRefused.into());
        }
        self.sent.push((token, to, bytes.to_vec(), true));
        Ok(())
    }

    fn close(&mut self, token: Token) {
        self.open.remove(&token);
    }
}

/// Replies to clients, checked as they are written.
#[derive(Default)]
pub struct Clients {
    pub replies: usize,
}

impl Replies for Clients {
    fn push(&mut self, _to: ReplyTo, write: &mut dyn FnMut(&mut [u8]) -> usize) {
        let mut buf = [0u8; 2048];
        let n = write(&mut buf);
        assert!(n <= buf.len());
        if n > 0 {
            assert!(n >= 12, "a reply has a header");
            assert!(buf[2] & 0x80 != 0, "a reply is a response");
            self.replies += 1;
        }
    }
}

/// A client query for `name` (dotted, no trailing dot) with the given ID, CD bit and EDNS.
pub fn client_query(name: &str, id: u16, cd: bool, edns: Option<(u16, bool)>) -> Vec<u8> {
    let mut p = vec![(id >> 8) as u8, id as u8, 0x01, if cd { 0x10 } else { 0 }, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        p.push(label.len() as u8);
        p.extend_from_slice(label.as_bytes());
    }
    p.extend_from_slice(&[0, 0, 1, 0, 1]);
    if let Some((size, dnssec_ok)) = edns {
        p[11] = 1;
        p.extend_from_slice(&[0, 0, 41]);
        p.extend_from_slice(&size.to_be_bytes());
        p.extend_from_slice(&[0, 0, if dnssec_ok { 0x80 } else { 0 }, 0, 0, 0]);
    }
    p
}

pub const UDP: DnsTransport = DnsTransport::Udp { max_payload: 1232 };

/// Asks `packet` from a client; checks what comes back at once.
pub fn ask(e: &mut Engine, wire: &mut FakeWire, packet: &[u8], transport: DnsTransport, now: Instant) -> Forwarded {
    let mut lower = [0u8; MAX_NAME_LEN];
    let q = parse(packet, &mut lower).expect("the harness's queries parse");
    let mut out = [0u8; 2048];
    let peer = SocketAddr::from(([127, 0, 0, 1], 40_000));
    let to = if transport == UDP { ReplyTo::Udp(peer) } else { ReplyTo::Tcp { slot: 0, generation: 1 } };
    let f = e.query(packet, &q, &lower[..q.name_len], peer, to, transport, &mut out, now, wire);
    if let Forwarded::Answered(n) = f {
        assert!(n >= 12 && n <= out.len());
        assert_eq!(&out[..2], &packet[..2], "the client's ID");
    }
    f
}

/// An honest reply to `sent` (the bytes that went upstream): its ID and question, one A record.
pub fn honest_reply(sent: &[u8], flags: u16, ttl: u32) -> Option<Vec<u8>> {
    let mut at = 12;
    loop {
        let len = *sent.get(at)? as usize;
        at += 1 + len;
        if len == 0 {
            break;
        }
    }
    let q_end = at + 4;
    let mut r = sent.get(..q_end)?.to_vec();
    r[2..4].copy_from_slice(&(0x8000 | flags).to_be_bytes());
    r[6..12].copy_from_slice(&[0, 1, 0, 0, 0, 0]);
    r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
    r.extend_from_slice(&ttl.to_be_bytes());
    r.extend_from_slice(&[0, 4, 192, 0, 2, 1]);
    Some(r)
}

/// The engine's invariants: every exchange in flight has exactly one open socket, and the
/// bounds hold.
pub fn check(e: &Engine, wire: &FakeWire) {
    assert_eq!(e.pending(), wire.open.len(), "one open socket per exchange, none leaked");
    assert!(e.waiting() <= 12, "max_waiters holds: {}", e.waiting());
}
