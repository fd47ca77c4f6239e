//! DNS over TCP in the worker's own event loop: each worker accepts on its own SO_REUSEPORT
//! listener and serves its connections through its readiness hub
//! ([`crate::worker::readiness`], one epoll instance that its I/O backend waits on beside the UDP
//! socket). No thread per connection; a connection is a slab entry ([`super::conn`]) and a
//! non-blocking socket.
//!
//! ```text
//!  hub ready tokens ── listener ─► accept until it would block
//!       │                              ─► Connections::admit: per-client limit,
//!       │                                 longest-idle eviction when full
//!       └── connection ─► read (never past one whole message per read) ─► messages out
//!                         ─► the caller answers each ─► queue ─► write until it would block
//!  tick ─► deadlines (message, idle, write stall) ─► close; accept again after an error pause
//! ```
//!
//! Accept errors such as EMFILE pause accepting for [`ACCEPT_PAUSE`] (counted), instead of
//! spinning on a listener that stays readable.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};
use socket2::{Domain, Protocol, Socket, Type};

use super::conn::{Admit, Close, Connection, Connections, Limits};

/// How long accepting pauses after an error such as EMFILE.
pub const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// Reads of one connection per wake-up before the others get their turn.
const READS_PER_WAKE: usize = 16;
/// Connections accepted per listener per wake-up.
const ACCEPTS_PER_WAKE: usize = 256;
/// Tokens of connections start here (below: listeners); the hub keeps the tokens near
/// `usize::MAX` for itself.
const CONN_BASE: usize = 1 << 20;

/// Binds a worker's TCP listener: SO_REUSEPORT so every worker listens on the same address and
/// the kernel spreads connections over them, non-blocking for the event loop.
pub fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// What happened on one worker's TCP clients, counted here and published into the worker's counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TcpStats {
    /// Connections accepted.
    pub accepted: u64,
    /// Connections refused: their client already held its limit.
    pub refused_per_client: u64,
    /// accept() failures (EMFILE and kin); accepting paused after each.
    pub accept_errors: u64,
    /// Connections closed, by reason: peer, idle, message timeout, malformed, oversize, write
    /// stall, evicted (the order of [`Close`]).
    pub closed: [u64; 7],
    /// Connections open now.
    pub open: u64,
}

impl TcpStats {
    fn closed(&mut self, why: Close) {
        let i = match why {
            Close::Peer => 0,
            Close::Idle => 1,
            Close::MessageTimeout => 2,
            Close::Malformed => 3,
            Close::Oversize => 4,
            Close::WriteStall => 5,
            Close::Evicted => 6,
        };
        self.closed[i] += 1;
    }
}

/// Answers the messages a connection brings.
pub trait Answerer {
    /// Answers `message` from connection `slot` (generation `generation`, client `peer`); writes
    /// the reply into `out` and returns its length, or 0 for no reply now (dropped, or relayed:
    /// then `relayed` is set, and the answer comes later through [`TcpClients::deliver`]).
    fn answer(
        &mut self,
        message: &[u8],
        peer: SocketAddr,
        slot: usize,
        generation: u32,
        out: &mut [u8],
        relayed: &mut bool,
    ) -> usize;
}

/// One worker's TCP listeners and its clients' connections, watched by the worker's readiness
/// hub.
pub struct TcpClients {
    /// Connections left readable after their read budget.
    again: Vec<usize>,
    listeners: Vec<TcpListener>,
    streams: Vec<Option<TcpStream>>,
    table: Connections,
    accept_paused_until: Option<Instant>,
    /// A listener's accept budget ran out: accept again on the tick.
    accept_more: bool,
    read_buf: Box<[u8]>,
    reply_buf: Box<[u8]>,
    closing: Vec<(usize, Close)>,
    /// Counters.
    pub stats: TcpStats,
}

fn conn_token(slot: usize) -> Token {
    Token(CONN_BASE + slot)
}

impl TcpClients {
    /// The TCP clients of a worker with `listeners`, registered with its hub's `registry`.
    pub fn new(listeners: Vec<std::net::TcpListener>, limits: Limits, registry: &Registry) -> io::Result<TcpClients> {
        let mut ours = Vec::with_capacity(listeners.len());
        for (i, l) in listeners.into_iter().enumerate() {
            l.set_nonblocking(true)?;
            let mut l = TcpListener::from_std(l);
            registry.register(&mut l, Token(i), Interest::READABLE)?;
            ours.push(l);
        }
        Ok(TcpClients {
            again: Vec::new(),
            listeners: ours,
            streams: Vec::new(),
            table: Connections::new(limits),
            accept_paused_until: None,
            accept_more: false,
            read_buf: vec![0u8; 16 * 1024].into_boxed_slice(),
            reply_buf: vec![0u8; u16::MAX as usize].into_boxed_slice(),
            closing: Vec::new(),
            stats: TcpStats::default(),
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.table.open()
    }

    /// Whether a connection was left readable by its read budget and waits for another pass.
    pub fn has_more(&self) -> bool {
        !self.again.is_empty()
    }

    /// Accepts on the listeners among `ready` (the hub's tokens) and serves the connections
    /// among them and those left readable last time, answering through `answerer`.
    pub fn serve_ready(&mut self, ready: &[Token], registry: &Registry, answerer: &mut dyn Answerer, now: Instant) {
        let again = std::mem::take(&mut self.again);
        for &token in ready {
            match token.0 {
                i if i < self.listeners.len() => self.accept(i, registry, now),
                t if t >= CONN_BASE => self.serve(t - CONN_BASE, answerer, now),
                _ => {}
            }
        }
        for slot in again {
            self.serve(slot, answerer, now);
        }
    }

    /// Accepts until the listener would block (or the per-wake budget is spent: the tick comes
    /// back for the rest).
    fn accept(&mut self, i: usize, registry: &Registry, now: Instant) {
        if self.accept_paused_until.is_some_and(|t| now < t) {
            return;
        }
        self.accept_paused_until = None;
        for _ in 0..ACCEPTS_PER_WAKE {
            let (mut stream, peer) = match self.listeners[i].accept() {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if matches!(e.kind(), io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted) => {
                    continue;
                }
                Err(_) => {
                    // EMFILE, ENFILE, ENOBUFS, ENOMEM: out of something; try again after a pause
                    // (the tick comes back) rather than spin on a listener that stays readable.
                    self.stats.accept_errors += 1;
                    self.accept_paused_until = Some(now + ACCEPT_PAUSE);
                    return;
                }
            };
            let slot = match self.table.admit(peer) {
                Admit::Accept(slot) => slot,
                Admit::Evict { slot, evict } => {
                    self.close(evict, Close::Evicted);
                    slot
                }
                Admit::PerClientLimit => {
                    self.stats.refused_per_client += 1;
                    continue;
                }
            };
            // Replies go out as one write each; Nagle would hold the second of two pipelined ones.
            let _nodelay = stream.set_nodelay(true);
            let interest = Interest::READABLE | Interest::WRITABLE;
            if registry.register(&mut stream, conn_token(slot), interest).is_err() {
                self.stats.accept_errors += 1;
                continue;
            }
            self.table.insert(slot, peer, now);
            if slot >= self.streams.len() {
                self.streams.resize_with(slot + 1, || None);
            }
            self.streams[slot] = Some(stream);
            self.stats.accepted += 1;
            self.stats.open = self.table.open() as u64;
        }
        self.accept_more = true;
    }

    /// Answers, writes and reads connection `slot` until its socket would block, or its read
    /// budget is spent (then it comes back on the next pass).
    fn serve(&mut self, slot: usize, answerer: &mut dyn Answerer, now: Instant) {
        let max_queued = self.table.limits().max_queued;
        for _ in 0..READS_PER_WAKE {
            let (Some(Some(stream)), Some(conn)) = (self.streams.get_mut(slot), self.table.get_mut(slot)) else {
                return;
            };
            let step = answer_buffered(conn, answerer, slot, &mut self.reply_buf, max_queued, now)
                .and_then(|()| flush(stream, conn, now))
                .and_then(|()| read_some(stream, conn, &mut self.read_buf, now));
            match step {
                Ok(true) => {}
                Ok(false) => return,
                Err(why) => {
                    self.close(slot, why);
                    return;
                }
            }
        }
        let (Some(Some(stream)), Some(conn)) = (self.streams.get_mut(slot), self.table.get_mut(slot)) else {
            return;
        };
        match answer_buffered(conn, answerer, slot, &mut self.reply_buf, max_queued, now)
            .and_then(|()| flush(stream, conn, now))
        {
            Ok(()) => self.again.push(slot),
            Err(why) => self.close(slot, why),
        }
    }

    /// Closes connection `slot` (counted).
    fn close(&mut self, slot: usize, why: Close) {
        if self.table.remove(slot).is_some() {
            self.stats.closed(why);
            self.stats.open = self.table.open() as u64;
        }
        if let Some(s) = self.streams.get_mut(slot) {
            // Dropping the stream closes it and takes it out of epoll.
            *s = None;
        }
    }

    /// A relayed answer for connection `slot`: written by `write` (which returns its length),
    /// queued and sent if that connection is still the one of `generation`.
    pub fn deliver(&mut self, slot: usize, generation: u32, write: &mut dyn FnMut(&mut [u8]) -> usize, now: Instant) {
        let max_queued = self.table.limits().max_queued;
        let Some(conn) = self.table.current(slot, generation) else { return };
        conn.relayed = conn.relayed.saturating_sub(1);
        let n = write(&mut self.reply_buf).min(self.reply_buf.len());
        let result = conn.queue(&self.reply_buf[..n], max_queued).and_then(|()| match self.streams.get_mut(slot) {
            Some(Some(stream)) => flush(stream, conn, now),
            _ => Ok(()),
        });
        if let Err(why) = result {
            self.close(slot, why);
        }
    }

    /// Closes connections past a deadline; accepts again after an error pause.
    pub fn tick(&mut self, registry: &Registry, answerer: &mut dyn Answerer, now: Instant) {
        let mut closing = std::mem::take(&mut self.closing);
        self.table.sweep(now, &mut closing);
        for &(slot, why) in &closing {
            self.close(slot, why);
        }
        self.closing = closing;
        if self.accept_more || self.accept_paused_until.is_some_and(|t| now >= t) {
            self.accept_more = false;
            for i in 0..self.listeners.len() {
                self.accept(i, registry, now);
            }
        }
        if !self.again.is_empty() {
            for slot in std::mem::take(&mut self.again) {
                self.serve(slot, answerer, now);
            }
        }
    }
}

/// Answers every whole message buffered on `conn` and queues the replies.
fn answer_buffered(
    conn: &mut Connection,
    answerer: &mut dyn Answerer,
    slot: usize,
    reply_buf: &mut [u8],
    max_queued: usize,
    now: Instant,
) -> Result<(), Close> {
    loop {
        let n = {
            let Some(message) = conn.message()? else { return Ok(()) };
            let mut relayed = false;
            let n = answerer.answer(message, conn.peer, slot, conn.generation, reply_buf, &mut relayed);
            if relayed {
                conn.relayed = conn.relayed.saturating_add(1);
            }
            n
        };
        conn.consume(now);
        conn.queue(&reply_buf[..n.min(reply_buf.len())], max_queued)?;
    }
}

/// Reads once into `conn`'s buffer: `Ok(true)` if bytes came, `Ok(false)` if the socket would
/// block (or the buffer is full until its messages are answered).
fn read_some(stream: &mut TcpStream, conn: &mut Connection, buf: &mut [u8], now: Instant) -> Result<bool, Close> {
    let room = conn.room().min(buf.len());
    if room == 0 {
        return Ok(false);
    }
    loop {
        match stream.read(&mut buf[..room]) {
            Ok(0) => return Err(Close::Peer),
            Ok(n) => {
                conn.feed(&buf[..n], now);
                return Ok(true);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(Close::Peer),
        }
    }
}

/// Writes what `conn` has queued until the socket would block.
fn flush(stream: &mut TcpStream, conn: &mut Connection, now: Instant) -> Result<(), Close> {
    while !conn.pending_write().is_empty() {
        match stream.write(conn.pending_write()) {
            Ok(0) => return Err(Close::Peer),
            Ok(n) => conn.wrote(n, now),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(Close::Peer),
        }
    }
    Ok(())
}
