//! DNS over TCP (RFC 7766) as state, not threads: each worker keeps its connections in a slab
//! and its event loop feeds them bytes. This module holds no socket: framing, deadlines, limits
//! and the choice of whom to close are decided here, with time passed in.
//!
//! ```text
//!  accept ─► Connections::admit(peer) ─► full? close the longest-idle one (RFC 7766 §6.2.3)
//!                                     ─► this client at its limit? refuse the new one
//!  bytes ─► Connection::feed ─► message() / consume() per complete 2-byte-length message
//!  replies ─► Connection::queue ─► pending_write() / wrote(n)   (bounded; a client that
//!                                                              never reads is closed)
//!  sweep(now) ─► message deadline (whole message), idle time (between messages), write stall
//! ```
//!
//! The idle clock restarts only when a whole message has arrived or a reply has been written,
//! never on a single byte, so a client dripping bytes cannot hold a connection.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// The limits a worker applies to its TCP connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections this worker holds at most.
    pub max_connections: usize,
    /// Connections one client address may hold on this worker.
    pub max_per_client: usize,
    /// Time allowed between messages (nothing in progress, nothing to write, nothing relayed).
    pub idle: Duration,
    /// Time allowed for one whole message, from its first byte.
    pub message: Duration,
    /// Reply bytes queued for a client that does not read, at most.
    pub max_queued: usize,
}

/// Why a connection is closed; counted per reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// The client closed it, or a read or write failed.
    Peer,
    /// Nothing happened for the idle time.
    Idle,
    /// A message did not arrive whole within its deadline.
    MessageTimeout,
    /// A message of length 0 (no DNS message is that short): the stream cannot be trusted.
    Malformed,
    /// A message longer than [`MAX_QUERY`]: no query is, and buffering it would let a few
    /// thousand connections hold gigabytes.
    Oversize,
    /// The client did not read its replies: the queue is full, or writing made no progress for
    /// the idle time.
    WriteStall,
    /// Closed to make room for a new connection (the longest-idle one).
    Evicted,
}

/// What [`Connections::admit`] decided for a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Take it in this slot.
    Accept(usize),
    /// Take it in this slot after closing the connection in `evict` (the table was full).
    Evict {
        /// The slot for the new connection.
        slot: usize,
        /// The longest-idle connection, to close first (its slot is then reused).
        evict: usize,
    },
    /// This client already holds its limit: close the new connection.
    PerClientLimit,
}

/// One connection's state (its socket lives with the event loop).
#[derive(Debug)]
pub struct Connection {
    /// The client.
    pub peer: SocketAddr,
    read: Vec<u8>,
    message_started: Option<Instant>,
    last_activity: Instant,
    write: Vec<u8>,
    written: usize,
    last_write: Instant,
    /// Relayed queries still waiting for an upstream answer on this connection.
    pub relayed: u32,
    /// Bumped each time the slot is reused, so a late relayed answer for an earlier connection in
    /// this slot is recognised.
    pub generation: u32,
}

/// The longest query taken over TCP, as over UDP (the receive buffer of the UDP backends is
/// 2 KiB); replies may still be up to 65,535 bytes.
pub const MAX_QUERY: usize = 4096;
/// Bytes read into a connection's buffer at most: room for two whole queries, so one read takes
/// several pipelined messages.
const READ_CAP: usize = 2 * (2 + MAX_QUERY);

impl Connection {
    fn new(peer: SocketAddr, now: Instant, generation: u32) -> Connection {
        Connection {
            peer,
            read: Vec::new(),
            message_started: None,
            last_activity: now,
            write: Vec::new(),
            written: 0,
            last_write: now,
            relayed: 0,
            generation,
        }
    }

    /// Takes bytes read from the socket.
    pub fn feed(&mut self, bytes: &[u8], now: Instant) {
        if bytes.is_empty() {
            return;
        }
        if self.read.is_empty() {
            self.message_started = Some(now);
        }
        self.read.extend_from_slice(bytes);
    }

    /// How many bytes the next read may take (0: the buffer is full, answer first).
    pub fn room(&self) -> usize {
        READ_CAP.saturating_sub(self.read.len())
    }

    /// The length the current message declares, once its prefix is in.
    fn declared(&self) -> Option<usize> {
        (self.read.len() >= 2).then(|| usize::from(u16::from_be_bytes([self.read[0], self.read[1]])))
    }

    /// The next complete message, if one is buffered; `Err` if its length is 0 or too long.
    pub fn message(&self) -> Result<Option<&[u8]>, Close> {
        match self.declared() {
            Some(0) => Err(Close::Malformed),
            Some(len) if len > MAX_QUERY => Err(Close::Oversize),
            Some(len) if self.read.len() >= 2 + len => Ok(Some(&self.read[2..2 + len])),
            _ => Ok(None),
        }
    }

    /// Drops the message [`Connection::message`] returned: a whole message restarts the idle
    /// clock, and the deadline of the next one starts with its first byte.
    pub fn consume(&mut self, now: Instant) {
        let Some(len) = self.declared() else { return };
        let end = (2 + len).min(self.read.len());
        self.read.drain(..end);
        self.last_activity = now;
        self.message_started = if self.read.is_empty() { None } else { Some(now) };
    }

    /// Queues a reply (with its length prefix); `Err` when the client is not reading.
    pub fn queue(&mut self, reply: &[u8], max_queued: usize) -> Result<(), Close> {
        if reply.is_empty() {
            return Ok(());
        }
        let len = u16::try_from(reply.len()).map_err(|_| Close::Malformed)?;
        if self.write.len() - self.written + 2 + reply.len() > max_queued {
            return Err(Close::WriteStall);
        }
        if self.written > 0 && self.written == self.write.len() {
            self.write.clear();
            self.written = 0;
        }
        self.write.extend_from_slice(&len.to_be_bytes());
        self.write.extend_from_slice(reply);
        Ok(())
    }

    /// The bytes waiting to be written.
    pub fn pending_write(&self) -> &[u8] {
        &self.write[self.written..]
    }

    /// `n` bytes were written; a finished reply restarts the idle clock.
    pub fn wrote(&mut self, n: usize, now: Instant) {
        if n == 0 {
            return;
        }
        self.written = (self.written + n).min(self.write.len());
        self.last_write = now;
        if self.written == self.write.len() {
            self.write.clear();
            self.written = 0;
            self.last_activity = now;
        }
    }

    /// Whether the connection is between messages with nothing owed either way.
    fn idle(&self) -> bool {
        self.read.is_empty() && self.write.is_empty() && self.relayed == 0
    }

    /// Why the connection must close at `now`, if it must.
    pub fn expired(&self, now: Instant, limits: &Limits) -> Option<Close> {
        let since = |t: Instant| now.saturating_duration_since(t);
        if self.message_started.is_some_and(|t| since(t) > limits.message) {
            return Some(Close::MessageTimeout);
        }
        if !self.write.is_empty() && since(self.last_write) > limits.idle {
            return Some(Close::WriteStall);
        }
        if self.idle() && since(self.last_activity) > limits.idle {
            return Some(Close::Idle);
        }
        None
    }
}

/// A worker's connections: a slab with per-client counts.
#[derive(Debug)]
pub struct Connections {
    limits: Limits,
    slots: Vec<Option<Connection>>,
    free: Vec<usize>,
    per_client: HashMap<IpAddr, usize>,
    open: usize,
    generations: u32,
}

impl Connections {
    /// An empty table.
    pub fn new(limits: Limits) -> Connections {
        Connections { limits, slots: Vec::new(), free: Vec::new(), per_client: HashMap::new(), open: 0, generations: 0 }
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open
    }

    /// Decides where a new connection from `peer` goes. The caller then calls
    /// [`Connections::remove`] on an evicted slot and [`Connections::insert`] on the new one.
    pub fn admit(&self, peer: SocketAddr) -> Admit {
        if self.per_client.get(&peer.ip()).copied().unwrap_or(0) >= self.limits.max_per_client {
            return Admit::PerClientLimit;
        }
        let next = || self.free.last().copied().unwrap_or(self.slots.len());
        if self.open < self.limits.max_connections.max(1) {
            return Admit::Accept(next());
        }
        // Full: the longest-idle connection makes room, preferring one with nothing in progress.
        let victim = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.as_ref().map(|c| (i, c)))
            .min_by_key(|(_, c)| (!c.idle(), c.last_activity))
            .map(|(i, _)| i);
        match victim {
            Some(evict) => Admit::Evict { slot: evict, evict },
            None => Admit::PerClientLimit,
        }
    }

    /// Puts a new connection in `slot` (from [`Connections::admit`]); returns its generation.
    pub fn insert(&mut self, slot: usize, peer: SocketAddr, now: Instant) -> u32 {
        if slot >= self.slots.len() {
            self.slots.resize_with(slot + 1, || None);
        }
        self.free.retain(|&f| f != slot);
        self.generations = self.generations.wrapping_add(1);
        if self.slots[slot].replace(Connection::new(peer, now, self.generations)).is_none() {
            self.open += 1;
        }
        *self.per_client.entry(peer.ip()).or_insert(0) += 1;
        self.generations
    }

    /// Forgets the connection in `slot` (its socket is closed by the caller).
    pub fn remove(&mut self, slot: usize) -> Option<Connection> {
        let c = self.slots.get_mut(slot)?.take()?;
        self.open -= 1;
        self.free.push(slot);
        if let Some(n) = self.per_client.get_mut(&c.peer.ip()) {
            *n -= 1;
            if *n == 0 {
                self.per_client.remove(&c.peer.ip());
            }
        }
        Some(c)
    }

    /// The connection in `slot`.
    pub fn get_mut(&mut self, slot: usize) -> Option<&mut Connection> {
        self.slots.get_mut(slot)?.as_mut()
    }

    /// The connection in `slot` if it is still the one of `generation`.
    pub fn current(&mut self, slot: usize, generation: u32) -> Option<&mut Connection> {
        self.get_mut(slot).filter(|c| c.generation == generation)
    }

    /// Every connection that must close at `now`, with why (the caller closes and removes them).
    pub fn sweep(&self, now: Instant, out: &mut Vec<(usize, Close)>) {
        out.clear();
        for (i, c) in self.slots.iter().enumerate() {
            if let Some(why) = c.as_ref().and_then(|c| c.expired(now, &self.limits)) {
                out.push((i, why));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_connections: 3,
        max_per_client: 2,
        idle: Duration::from_secs(10),
        message: Duration::from_secs(2),
        max_queued: 1000,
    };

    fn peer(i: u8, port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, i], port))
    }

    #[test]
    fn messages_are_framed_across_segments_and_pipelined() {
        let t = Instant::now();
        let mut c = Connection::new(peer(1, 1), t, 1);
        c.feed(&[0], t);
        assert_eq!(c.room(), READ_CAP - 1);
        assert_eq!(c.message(), Ok(None));
        c.feed(&[3, b'a', b'b'], t);
        c.feed(&[b'c', 0, 1, b'x', 0], t);
        assert_eq!(c.message(), Ok(Some(&b"abc"[..])));
        c.consume(t);
        assert_eq!(c.message(), Ok(Some(&b"x"[..])));
        c.consume(t);
        assert_eq!(c.message(), Ok(None), "half a length prefix waits");
        c.feed(&[0], t);
        assert_eq!(c.message(), Err(Close::Malformed), "length 0");
        let mut c = Connection::new(peer(1, 1), t, 1);
        c.feed(&[0x10, 0x01], t);
        assert_eq!(c.message(), Err(Close::Oversize), "4097 bytes");
    }

    #[test]
    fn deadlines_follow_messages_not_bytes() {
        let t = Instant::now();
        let s = Duration::from_secs;
        let mut c = Connection::new(peer(1, 1), t, 1);
        // A byte a second: the message deadline (2 s) closes it, whatever the idle time.
        for k in 0..2 {
            c.feed(&[0], t + s(k));
        }
        assert_eq!(c.expired(t + s(2), &LIMITS), None);
        assert_eq!(c.expired(t + s(3), &LIMITS), Some(Close::MessageTimeout));
        // A whole message restarts the idle clock; between messages only idleness counts.
        let mut c = Connection::new(peer(1, 1), t, 1);
        c.feed(&[0, 1, 7], t + s(5));
        c.consume(t + s(5));
        assert_eq!(c.expired(t + s(15), &LIMITS), None);
        assert_eq!(c.expired(t + s(16), &LIMITS), Some(Close::Idle));
        // A relayed query outstanding keeps it open past the idle time.
        c.relayed = 1;
        assert_eq!(c.expired(t + s(60), &LIMITS), None);
    }

    #[test]
    fn a_client_that_does_not_read_is_closed() {
        let t = Instant::now();
        let mut c = Connection::new(peer(1, 1), t, 1);
        for _ in 0..9 {
            c.queue(&[0u8; 100], LIMITS.max_queued).unwrap();
        }
        assert_eq!(c.queue(&[0u8; 100], LIMITS.max_queued), Err(Close::WriteStall), "queue bounded");
        assert_eq!(c.pending_write().len(), 9 * 102);
        c.wrote(500, t + Duration::from_secs(1));
        assert_eq!(c.pending_write().len(), 9 * 102 - 500);
        assert_eq!(c.expired(t + Duration::from_secs(11), &LIMITS), None, "progress at 1 s");
        assert_eq!(c.expired(t + Duration::from_secs(12), &LIMITS), Some(Close::WriteStall));
        c.wrote(10_000, t);
        assert!(c.pending_write().is_empty());
    }

    #[test]
    fn per_client_limit_and_eviction_of_the_longest_idle() {
        let t = Instant::now();
        let mut table = Connections::new(LIMITS);
        let Admit::Accept(a) = table.admit(peer(1, 1)) else { panic!() };
        table.insert(a, peer(1, 1), t);
        let Admit::Accept(b) = table.admit(peer(1, 2)) else { panic!() };
        table.insert(b, peer(1, 2), t + Duration::from_secs(1));
        assert_eq!(table.admit(peer(1, 3)), Admit::PerClientLimit);
        let Admit::Accept(c) = table.admit(peer(2, 1)) else { panic!() };
        table.insert(c, peer(2, 1), t + Duration::from_secs(2));
        // Full: the connection idle longest (a) makes room; one mid-message is spared.
        table.get_mut(a).unwrap().feed(&[0], t + Duration::from_secs(3));
        assert_eq!(table.admit(peer(3, 1)), Admit::Evict { slot: b, evict: b });
        table.remove(b);
        let gen = table.insert(b, peer(3, 1), t + Duration::from_secs(4));
        assert_eq!(table.open(), 3);
        assert!(table.current(b, gen).is_some());
        assert!(table.current(b, gen.wrapping_sub(1)).is_none(), "an older connection's answer is stale");
        assert_eq!(table.admit(peer(1, 9)), Admit::Evict { slot: c, evict: c }, "client 1 is back under its limit");
        let mut out = Vec::new();
        table.sweep(t + Duration::from_secs(30), &mut out);
        assert_eq!(out.len(), 3, "{out:?}");
    }
}
