//! The relay's I/O: every upstream exchange gets a UDP socket connected to its upstream on a
//! fresh random source port, all in one epoll instance (mio) that the worker's loop waits on as a
//! single file descriptor beside its client socket.
//!
//! ```text
//!  Engine ──send_udp(token)──► a spare socket of the family (else socket() + epoll_ctl once),
//!                              connect(upstream): the kernel binds a source port drawn at random
//!                              from net.ipv4.ip_local_port_range and drops datagrams from anyone
//!                              else; send
//!         ──close(token)─────► connect(AF_UNSPEC): the port is released (nothing reaches it any
//!                              more); what was queued is read and counted late; the socket is spare
//!         ──send_tcp(token)──► non-blocking connect, write [len][query], read [len][reply]
//!  worker loop: epoll fd readable ─► Relay::ready ─► epoll_wait(0) ─► recv each ready socket into
//!               a 64 KiB buffer (no UDP datagram is longer) ─► Engine::on_reply / on_failure
//! ```
//!
//! A socket is reused, a port never: disconnecting releases the port the kernel bound, and the
//! next connect draws a new one, exactly as a new socket would, without the socket(), epoll_ctl()
//! and close() of one (tuning.md has what that saved). At most [`SPARE`] sockets per family wait
//! for reuse; more are closed.
//!
//! Registrations are edge-triggered, so a ready socket is read until it would block. A socket
//! that a flood keeps readable is left after [`READS_PER_WAKE`] datagrams and read again on the
//! next wake-up or tick, so one socket cannot hold the worker.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::{TcpStream, UdpSocket};
use mio::{Events, Interest, Poll};
use socket2::{Domain, Protocol, Socket, Type};

use super::engine::{
    token_slot, Engine, Forwarded, RelayGauges, RelayStats, Replies, ReplyOutcome, ReplyTo, Token, Wire,
};
use super::random::Fill;
use super::RelayError;
use crate::config::RelayConfig;
use crate::dns::answer::DnsTransport;
use crate::dns::query::Query;

/// Datagrams read from one socket per wake-up before the others get their turn.
const READS_PER_WAKE: usize = 64;
/// Readiness events taken per epoll_wait.
const EVENTS: usize = 256;
/// epoll_wait passes per wake-up, at most (more waits for the next wake-up).
const PASSES: usize = 8;
/// Room for any UDP datagram (65,507 bytes over IPv4, 65,527 over IPv6) and any TCP message.
const RECV_BUF: usize = 65_536;
/// Spare UDP sockets kept per address family.
pub const SPARE: usize = 1024;
/// Datagrams read from a socket being released before it is closed instead (a flood).
const DRAIN_MAX: usize = 64;
/// The bit that marks a TCP exchange's epoll token (UDP sockets use their slot index).
const TCP_BIT: usize = 1 << (usize::BITS - 1);

/// A TCP exchange in progress: the query to write, then the reply's length and bytes to read.
struct TcpExchange {
    stream: TcpStream,
    upstream: SocketAddr,
    /// `[len][query]`, and how much of it is written.
    request: Vec<u8>,
    written: usize,
    /// `[len][reply]` as read so far (at most 2 + 65,535 bytes).
    reply: Vec<u8>,
}

/// A UDP socket registered with epoll under its slot index, and the exchange using it now.
struct Slot {
    socket: UdpSocket,
    v6: bool,
    /// The exchange and its upstream, while connected.
    exchange: Option<(Token, SocketAddr)>,
}

/// The sockets of the exchanges in flight, and the spare ones.
struct Net {
    poll: Poll,
    /// UDP sockets by slot index (their epoll token); `None` where one was closed.
    slots: Vec<Option<Slot>>,
    /// Spare slots, per family (0: IPv4, 1: IPv6).
    spare: [Vec<usize>; 2],
    /// Slot indices free for a new socket.
    holes: Vec<usize>,
    /// The UDP exchange (its token, and its socket's slot) in each slot of the engine's pending
    /// table, which a token names ([`token_slot`]): found without hashing. Token 0: none.
    by_token: Vec<(Token, usize)>,
    tcp: HashMap<Token, TcpExchange>,
    /// Datagrams found on a socket when it was released (late replies).
    drained: u64,
}

impl Net {
    /// A slot with a fresh socket of `to`'s family, registered with epoll.
    fn open_slot(&mut self, to: SocketAddr) -> io::Result<usize> {
        let socket = Socket::new(Domain::for_address(to), Type::DGRAM.nonblocking(), Some(Protocol::UDP))?;
        let mut socket = UdpSocket::from_std(socket.into());
        let index = self.holes.pop().unwrap_or(self.slots.len());
        self.poll.registry().register(&mut socket, mio::Token(index), Interest::READABLE)?;
        let slot = Some(Slot { socket, v6: to.is_ipv6(), exchange: None });
        if index == self.slots.len() {
            self.slots.push(slot);
        } else {
            self.slots[index] = slot;
        }
        Ok(index)
    }

    /// Ends the exchange on slot `index`: disconnects (releasing its port), reads and counts what
    /// was queued, and keeps the socket spare, or closes it.
    fn release(&mut self, index: usize) {
        let Some(slot) = self.slots.get_mut(index).and_then(Option::as_mut) else { return };
        slot.exchange = None;
        // Kept only if disconnected and emptied within DRAIN_MAX reads; otherwise closed.
        let mut keep = false;
        if crate::io::udp::disconnect(slot.socket.as_fd()).is_ok() {
            let mut scratch = [0u8; 1];
            for _ in 0..DRAIN_MAX {
                // A datagram longer than the scratch is cut, which is fine: it is only counted.
                match slot.socket.recv(&mut scratch) {
                    Ok(_) => self.drained += 1,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        keep = true;
                        break;
                    }
                    // A queued ICMP error is reported once, and so consumed; try again.
                    Err(_) => {}
                }
            }
        }
        let family = usize::from(slot.v6);
        if keep && self.spare[family].len() < SPARE {
            self.spare[family].push(index);
        } else {
            // Closing the descriptor takes it out of epoll too (no one else holds it).
            self.slots[index] = None;
            self.holes.push(index);
        }
    }
}

fn tcp_token(token: Token) -> mio::Token {
    mio::Token(token as usize | TCP_BIT)
}

impl Wire for Net {
    fn send_udp(&mut self, token: Token, to: SocketAddr, bytes: &[u8]) -> io::Result<()> {
        let index = match self.spare[usize::from(to.is_ipv6())].pop() {
            Some(index) => index,
            None => self.open_slot(to)?,
        };
        let Some(slot) = self.slots.get_mut(index).and_then(Option::as_mut) else {
            return Err(io::ErrorKind::NotFound.into());
        };
        // connect() binds a source port the kernel draws at random, and filters replies to that
        // one peer.
        let sent = slot.socket.connect(to).and_then(|()| slot.socket.send(bytes));
        slot.exchange = Some((token, to));
        let at = token_slot(token);
        if self.by_token.len() <= at {
            self.by_token.resize(at + 1, (0, 0));
        }
        self.by_token[at] = (token, index);
        sent.map(drop)
    }

    fn send_tcp(&mut self, token: Token, to: SocketAddr, bytes: &[u8]) -> io::Result<()> {
        let length = u16::try_from(bytes.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let mut stream = TcpStream::connect(to)?;
        self.poll.registry().register(&mut stream, tcp_token(token), Interest::READABLE | Interest::WRITABLE)?;
        let mut request = Vec::with_capacity(2 + bytes.len());
        request.extend_from_slice(&length.to_be_bytes());
        request.extend_from_slice(bytes);
        self.tcp.insert(token, TcpExchange { stream, upstream: to, request, written: 0, reply: Vec::new() });
        Ok(())
    }

    fn close(&mut self, token: Token) {
        if let Some(entry) = self.by_token.get_mut(token_slot(token)).filter(|e| e.0 == token) {
            let index = entry.1;
            *entry = (0, 0);
            self.release(index);
        }
        // A TCP connection is closed (and so leaves epoll) when dropped.
        self.tcp.remove(&token);
    }
}

/// What a TCP exchange came to after some progress.
enum TcpProgress {
    /// Still connecting, writing or reading.
    Waiting,
    /// The whole reply (without its length prefix) is in the exchange's `reply[2..]`.
    Done,
    /// Refused, reset or closed before the reply was whole.
    Failed,
}

/// Moves a TCP exchange on as far as the socket allows.
fn progress(x: &mut TcpExchange, scratch: &mut [u8]) -> TcpProgress {
    match x.stream.take_error() {
        Ok(None) => {}
        Ok(Some(_)) | Err(_) => return TcpProgress::Failed,
    }
    while x.written < x.request.len() {
        match x.stream.write(&x.request[x.written..]) {
            Ok(0) => return TcpProgress::Failed,
            Ok(n) => x.written += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // Not connected yet, or the send buffer is full: wait for writability.
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::NotConnected) => {
                return TcpProgress::Waiting;
            }
            Err(_) => return TcpProgress::Failed,
        }
    }
    loop {
        let want = match x.reply.get(..2) {
            Some(len) => 2 + usize::from(u16::from_be_bytes([len[0], len[1]])),
            None => 2,
        };
        if x.reply.len() >= 2 && x.reply.len() == want {
            return TcpProgress::Done;
        }
        let room = (want - x.reply.len()).min(scratch.len());
        match x.stream.read(&mut scratch[..room]) {
            Ok(0) => return TcpProgress::Failed,
            Ok(n) => x.reply.extend_from_slice(&scratch[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::NotConnected) => {
                return TcpProgress::Waiting;
            }
            Err(_) => return TcpProgress::Failed,
        }
    }
}

/// One worker's relay: the [`Engine`] and the sockets it asks for.
pub struct Relay {
    engine: Engine,
    net: Net,
    events: Events,
    /// epoll tokens with something to read, taken from `events` (which the handlers cannot
    /// borrow).
    ready: Vec<usize>,
    /// epoll tokens of sockets left readable after [`READS_PER_WAKE`] datagrams.
    again: Vec<usize>,
    buf: Box<[u8]>,
}

impl Relay {
    /// A relay for `config` with the system's random source. Fails if that source or epoll does
    /// not work: dnlb then refuses to start rather than relay with predictable IDs.
    pub fn new(config: Arc<RelayConfig>) -> Result<Relay, RelayError> {
        Relay::with_random(config, super::random::system)
    }

    /// A relay drawing random bytes from `fill` (tests inject failures this way).
    pub fn with_random(config: Arc<RelayConfig>, fill: Fill) -> Result<Relay, RelayError> {
        let engine = Engine::new(config, fill, Instant::now())?;
        let poll = Poll::new().map_err(RelayError::Poll)?;
        Ok(Relay {
            engine,
            net: Net {
                poll,
                slots: Vec::new(),
                spare: [Vec::new(), Vec::new()],
                holes: Vec::new(),
                by_token: Vec::new(),
                tcp: HashMap::new(),
                drained: 0,
            },
            events: Events::with_capacity(EVENTS),
            ready: Vec::with_capacity(EVENTS),
            again: Vec::new(),
            buf: vec![0u8; RECV_BUF].into_boxed_slice(),
        })
    }

    /// Applies a reloaded `[relay]` (see [`Engine::reconfigure`]): questions in flight stay.
    pub fn reconfigure(&mut self, config: Arc<RelayConfig>, now: Instant) {
        self.engine.reconfigure(config, now);
    }

    /// The epoll descriptor: readable when any upstream socket is.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.net.poll.registry().as_fd()
    }

    /// Counters (the engine's, and the late replies found when a socket was released).
    pub fn stats(&self) -> RelayStats {
        RelayStats { late: self.engine.stats.late + self.net.drained, ..self.engine.stats }
    }

    /// Upstream exchanges in flight.
    pub fn pending(&self) -> usize {
        self.engine.pending()
    }

    /// What the relay holds now: exchanges in flight, waiting clients, cache size.
    pub fn gauges(&self) -> RelayGauges {
        self.engine.gauges()
    }

    /// Sockets open now (UDP, spare ones included, and TCP).
    pub fn open_sockets(&self) -> usize {
        self.net.slots.iter().flatten().count() + self.net.tcp.len()
    }

    /// Handles a query for a name dnlb does not manage; see [`Engine::query`].
    #[allow(clippy::too_many_arguments)]
    pub fn query(
        &mut self,
        packet: &[u8],
        query: &Query,
        name: &[u8],
        client: SocketAddr,
        to: ReplyTo,
        transport: DnsTransport,
        out: &mut [u8],
        now: Instant,
    ) -> Forwarded {
        self.engine.query(packet, query, name, client, to, transport, out, now, &mut self.net)
    }

    /// Reads every upstream socket that has something, hands it to the engine, and leaves
    /// replies for waiting clients in `out`.
    pub fn ready(&mut self, out: &mut dyn Replies, now: Instant) {
        for _ in 0..PASSES {
            self.ready.clear();
            self.ready.append(&mut self.again);
            match self.net.poll.poll(&mut self.events, Some(Duration::ZERO)) {
                Ok(()) => self.ready.extend(self.events.iter().map(|e| e.token().0)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // epoll_wait on our own valid descriptor does not fail otherwise; if it did,
                // the tick still times every exchange out.
                Err(_) => return,
            }
            if self.ready.is_empty() {
                return;
            }
            // A full batch may have left more behind; a short one took everything there was.
            let more = self.events.iter().count() == EVENTS;
            for i in 0..self.ready.len() {
                let key = self.ready[i];
                if key & TCP_BIT != 0 {
                    self.move_tcp((key & !TCP_BIT) as Token, out, now);
                } else {
                    self.read_udp(key, out, now);
                }
            }
            if !more && self.again.is_empty() {
                return;
            }
        }
    }

    /// Reads the socket in slot `index` until it would block, its exchange ends or
    /// [`READS_PER_WAKE`] datagrams were read.
    fn read_udp(&mut self, index: usize, out: &mut dyn Replies, now: Instant) {
        for _ in 0..READS_PER_WAKE {
            let Some(slot) = self.net.slots.get(index).and_then(Option::as_ref) else { return };
            // A spare socket is disconnected: nothing can reach it.
            let Some((token, upstream)) = slot.exchange else { return };
            match slot.socket.recv(&mut self.buf) {
                Ok(n) => {
                    let data = &self.buf[..n];
                    if self.engine.on_reply(token, data, upstream, out, now, &mut self.net) != ReplyOutcome::Refused {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // ECONNREFUSED and kin: an ICMP error for this exchange.
                Err(_) => {
                    self.engine.on_failure(token, out, now, &mut self.net);
                    return;
                }
            }
        }
        self.again.push(index);
    }

    /// Moves exchange `token`'s TCP connection on; hands a whole reply or a failure to the engine.
    fn move_tcp(&mut self, token: Token, out: &mut dyn Replies, now: Instant) {
        let Some(x) = self.net.tcp.get_mut(&token) else { return };
        match progress(x, &mut self.buf) {
            TcpProgress::Waiting => {}
            TcpProgress::Done => {
                let Some(x) = self.net.tcp.remove(&token) else { return };
                let verdict = self.engine.on_reply(token, &x.reply[2..], x.upstream, out, now, &mut self.net);
                if verdict == ReplyOutcome::Refused {
                    // One message per connection: a refused one ends the exchange as a failure.
                    self.engine.on_failure(token, out, now, &mut self.net);
                }
            }
            TcpProgress::Failed => self.engine.on_failure(token, out, now, &mut self.net),
        }
    }

    /// Reads whatever is ready (sockets left readable last time, and anything a lost wake-up would
    /// have left), times exchanges out and sends health checks.
    pub fn tick(&mut self, out: &mut dyn Replies, now: Instant) {
        self.ready(out, now);
        self.engine.tick(out, now, &mut self.net);
        for upstream in self.engine.take_lost_caps() {
            // Once per upstream: its capability is lost once and never comes back.
            tracing::warn!(
                %upstream,
                "relay: the upstream does not preserve the letter case of questions; querying it without 0x20 from now on"
            );
        }
    }
}
