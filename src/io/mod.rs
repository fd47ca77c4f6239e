//! Datagram I/O: the only place with `unsafe` code.
//!
//! ```text
//!            ┌──────────── Backend::serve(socket, handler, stop) ────────────┐
//!  socket ──►│ uring:    multishot recvmsg + provided buffer ring, sendmsg     │──► socket
//!            │ portable: recvmmsg batch (32)            → sendmmsg batch       │
//!            └───────── handler.begin_batch(); handler.handle(query) → reply ─┘
//!
//!            ┌──────────── xdp::serve(queue, handler, stop) ─────────────────┐
//!  NIC queue►│ XDP program → XSK rx ring → parse L2-L4 → handler.handle_frame  │──► tx ring
//!            └──────── reply written over the query, headers turned around ──┘
//! ```
//!
//! A backend knows nothing about DNS: it hands each datagram to a [`Handler`] and sends whatever
//! bytes come back to the sender. Every backend batches: one snapshot load per batch, one system
//! call (or ring submission) per batch of replies. The XDP backend ([`xdp`]) serves the listen
//! addresses of one interface beside the others, one worker per receive queue.

pub mod affinity;
pub mod portable;
mod rlimit;
pub mod udp;
pub mod uring;
pub mod xdp;

pub use rlimit::raise_fd_limit;
pub use xdp::frame::Path as FramePath;

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, Ordering};

use socket2::{Domain, Protocol, SockRef, Socket, Type};

/// Size of a receive buffer. io_uring puts a header and the sender's address in it too, so the
/// payload it can take is smaller: see [`MAX_DATAGRAM`].
pub const RECV_SIZE: usize = 2048;
/// The longest datagram either backend takes; longer ones are dropped unanswered and counted
/// ([`DropReason::Oversize`]) by both alike. It fits a receive buffer with io_uring's 16-byte
/// header and a 28-byte IPv6 address beside it. DNS queries are far smaller.
pub const MAX_DATAGRAM: usize = 2000;
/// Room for one reply. Replies never exceed the 1232-byte UDP cap, but the no-work floor server
/// echoes whole queries.
pub const REPLY_SIZE: usize = RECV_SIZE;

/// The sender of a datagram, as the raw `sockaddr` bytes the kernel wrote.
#[derive(Debug, Clone, Copy)]
pub struct Peer<'a>(pub &'a [u8]);

impl Peer<'_> {
    /// Decodes the address (IPv4 or IPv6); `None` for any other family.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        let b = self.0;
        let family = u16::from_ne_bytes([*b.first()?, *b.get(1)?]);
        let port = u16::from_be_bytes([*b.get(2)?, *b.get(3)?]);
        match i32::from(family) {
            libc::AF_INET => {
                let ip: [u8; 4] = b.get(4..8)?.try_into().ok()?;
                Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port))
            }
            libc::AF_INET6 => {
                let ip: [u8; 16] = b.get(8..24)?.try_into().ok()?;
                Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port))
            }
            _ => None,
        }
    }
}

/// Writes `addr` as the `sockaddr_in`/`sockaddr_in6` bytes a [`Peer`] holds; returns the length.
pub fn encode_peer(addr: SocketAddr, out: &mut [u8; 28]) -> usize {
    *out = [0; 28];
    out[2..4].copy_from_slice(&addr.port().to_be_bytes());
    match addr {
        SocketAddr::V4(v4) => {
            out[0..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
            out[4..8].copy_from_slice(&v4.ip().octets());
            16
        }
        SocketAddr::V6(v6) => {
            out[0..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
            out[4..8].copy_from_slice(&v6.flowinfo().to_be_bytes());
            out[8..24].copy_from_slice(&v6.ip().octets());
            out[24..28].copy_from_slice(&v6.scope_id().to_ne_bytes());
            28
        }
    }
}

/// Why a backend dropped a datagram without a reply; counted per reason, never logged per packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// io_uring had no free receive buffer (ENOBUFS): receiving stalls until buffers return, and
    /// datagrams wait in the socket buffer (where an overflow is the kernel's drop).
    NoBuffer,
    /// io_uring had no free send slot: the query was not answered.
    NoSendSlot,
    /// A reply from the [`Outbox`] that the client socket would not take at once (its send
    /// buffer full).
    Outbox,
    /// A datagram longer than [`MAX_DATAGRAM`]: dropped unanswered by both backends, not parsed
    /// truncated.
    Oversize,
    /// A frame on an XSK the kernel would have dropped too (a bad checksum, a UDP length past
    /// the packet, a martian source): see [`xdp::frame::FrameError`].
    BadFrame,
}

/// What a backend calls for the datagrams it receives.
pub trait Handler {
    /// Called once before each batch of datagrams (load the snapshot here, not per packet).
    fn begin_batch(&mut self);
    /// Handles one datagram and writes the reply into `reply`; returns its length, 0 for none.
    fn handle(&mut self, query: &[u8], peer: Peer<'_>, reply: &mut [u8]) -> usize;
    /// Handles one datagram that came as a frame on an XSK (the XDP backend): as
    /// [`Handler::handle`], but the reply may be at most `max_payload` bytes (what the
    /// interface's MTU takes), and a reply that comes later (relayed) goes to `peer` through the
    /// [`Outbox`] with `path`'s frame headers. By default it is handled as a plain datagram.
    fn handle_frame(
        &mut self,
        query: &[u8],
        peer: SocketAddr,
        _path: &FramePath,
        max_payload: u16,
        reply: &mut [u8],
    ) -> usize {
        let mut name = [0u8; 28];
        let n = encode_peer(peer, &mut name);
        let cap = reply.len().min(usize::from(max_payload));
        self.handle(query, Peer(&name[..n]), &mut reply[..cap])
    }
    /// Counts an I/O error the backend met (receive or send); never logged per packet.
    fn io_error(&mut self, error: io::Error);
    /// Counts `count` datagrams dropped for `reason`.
    fn dropped(&mut self, reason: DropReason, count: u64);
    /// A descriptor of the handler's own (the relay's epoll instance) that the worker loop waits
    /// on beside the client socket; when it is readable, [`Handler::extra_ready`] runs.
    fn extra_fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }
    /// The extra descriptor is readable; replies to clients go into `out`.
    fn extra_ready(&mut self, _out: &mut Outbox<'_>) {}
    /// Called at least every [`TICK`] while there is an extra descriptor; late work answers into
    /// `out`.
    fn tick(&mut self, _out: &mut Outbox<'_>) {}
}

/// How often [`Handler::tick`] runs when a handler has an extra descriptor.
pub const TICK: std::time::Duration = std::time::Duration::from_millis(50);

/// Where the XDP backend sends replies that do not answer a frame in hand (relayed answers).
pub trait FrameSink {
    /// Sends a reply to `peer` with `path`'s frame headers, its payload written by `write` (which
    /// returns its length; 0 for none). `false` when it could not go (no idle frame, the ring
    /// full).
    fn send(&mut self, peer: SocketAddr, path: &FramePath, write: &mut dyn FnMut(&mut [u8]) -> usize) -> bool;
}

/// Replies a handler produces outside `handle` (relayed answers, timeouts), sent at once on the
/// client socket without blocking (or, for clients that came through the XDP backend, through
/// its XSK). A reply the kernel will not take is dropped and counted: there is no queue to
/// overflow, so a crowd of clients waiting on one question all get their answer.
pub struct Outbox<'s> {
    socket: Option<&'s UdpSocket>,
    frames: Option<&'s mut dyn FrameSink>,
    buf: Box<[u8]>,
    /// Replies the socket would not take (send buffer full) since the last [`Outbox::report`].
    full: u64,
    /// Other send errors since then.
    errors: Vec<io::Error>,
}

impl<'s> Outbox<'s> {
    /// An outbox sending on `socket`.
    pub fn new(socket: &'s UdpSocket) -> Outbox<'s> {
        Outbox {
            socket: Some(socket),
            frames: None,
            buf: vec![0u8; REPLY_SIZE].into_boxed_slice(),
            full: 0,
            errors: Vec::new(),
        }
    }

    /// An outbox sending through an XSK (the XDP backend); it has no socket, so it allocates
    /// nothing and can be made per wake-up.
    pub fn frames(sink: &'s mut dyn FrameSink) -> Outbox<'s> {
        Outbox { socket: None, frames: Some(sink), buf: Box::default(), full: 0, errors: Vec::new() }
    }

    /// Sends a reply to `peer` with `path`'s frame headers through the XSK, written by `write`;
    /// counted as [`DropReason::Outbox`] when it cannot go.
    pub fn push_frame(&mut self, peer: SocketAddr, path: &FramePath, write: impl FnOnce(&mut [u8]) -> usize) {
        let Some(sink) = self.frames.as_mut() else {
            // A frame's client reaches an outbox without an XSK only if a worker's handler were
            // moved between backends; the reply is counted, never sent with wrong headers.
            self.full += 1;
            return;
        };
        let mut write = Some(write);
        if !sink.send(peer, path, &mut |buf| write.take().map_or(0, |w| w(buf))) {
            self.full += 1;
        }
    }

    /// Sends a reply to `peer`, written by `write` (which returns its length; 0 for none).
    pub fn push(&mut self, peer: SocketAddr, write: impl FnOnce(&mut [u8]) -> usize) {
        let Some(socket) = self.socket else {
            self.full += 1;
            return;
        };
        let n = write(&mut self.buf).min(self.buf.len());
        if n == 0 {
            return;
        }
        match SockRef::from(socket).send_to_with_flags(&self.buf[..n], &peer.into(), libc::MSG_DONTWAIT) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.raw_os_error() == Some(libc::ENOBUFS) => {
                self.full += 1;
            }
            Err(e) => {
                // Bounded: one error kept per failed send until the next report, at most a batch.
                if self.errors.len() < 64 {
                    self.errors.push(e);
                }
            }
        }
    }

    /// Hands what went wrong since the last call to `handler`'s counters.
    pub fn report<H: Handler + ?Sized>(&mut self, handler: &mut H) {
        if self.full > 0 {
            handler.dropped(DropReason::Outbox, self.full);
            self.full = 0;
        }
        for e in self.errors.drain(..) {
            handler.io_error(e);
        }
    }
}

/// Which I/O backend the workers use (`server.io`, `--io`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IoMode {
    /// io_uring where the kernel allows it, else portable (one log line says why).
    Auto,
    /// io_uring only; starting fails if the kernel refuses it.
    Uring,
    /// recvmmsg/sendmmsg on plain sockets.
    Portable,
}

impl std::str::FromStr for IoMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(IoMode::Auto),
            "uring" => Ok(IoMode::Uring),
            "portable" => Ok(IoMode::Portable),
            other => Err(format!("unknown io mode `{other}`: use uring, portable or auto")),
        }
    }
}

/// Which backend a worker runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// io_uring.
    Uring,
    /// recvmmsg/sendmmsg.
    Portable,
    /// AF_XDP: one XSK per receive queue of an interface ([`xdp`]); started by the server for
    /// `server.xdp`, never chosen by [`Backend::choose`].
    Xdp,
}

impl Backend {
    /// Its name in logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Uring => "uring",
            Backend::Portable => "portable",
            Backend::Xdp => "xdp",
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why the configured backend cannot run.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    /// `io = "uring"` was asked for and the kernel refused it.
    #[error("io_uring is not available: {0} (set io = \"portable\" or \"auto\")")]
    UringUnavailable(String),
    /// A socket could not be set up.
    #[error("cannot set up a UDP socket on {addr}: {source}")]
    Socket {
        /// The listen address.
        addr: SocketAddr,
        /// What the operating system said.
        source: io::Error,
    },
}

impl Backend {
    /// Picks the backend for `mode`. For `auto`, returns the reason io_uring was passed over so
    /// the caller can log it once.
    pub fn choose(mode: IoMode) -> Result<(Backend, Option<String>), IoError> {
        match mode {
            IoMode::Portable => Ok((Backend::Portable, None)),
            IoMode::Uring => uring::check_support().map(|()| (Backend::Uring, None)).map_err(IoError::UringUnavailable),
            IoMode::Auto => match uring::check_support() {
                Ok(()) => Ok((Backend::Uring, None)),
                Err(why) => Ok((Backend::Portable, Some(why))),
            },
        }
    }

    /// Serves `socket` until `stop` fires. The XDP backend serves an XSK, not a socket
    /// ([`xdp::serve`]): asked to serve a socket, it serves it with the portable backend.
    pub fn serve<H: Handler>(self, socket: &UdpSocket, handler: &mut H, stop: &Stop) -> io::Result<()> {
        match self {
            Backend::Uring => uring::serve(socket, handler, stop),
            Backend::Portable | Backend::Xdp => portable::serve(socket, handler, stop),
        }
    }
}

/// Binds one worker's UDP socket: SO_REUSEPORT so every worker has its own socket on the same
/// address (the kernel spreads flows across them), large buffers to ride out bursts.
pub fn bind_udp(addr: SocketAddr) -> Result<UdpSocket, IoError> {
    let fail = |source| IoError::Socket { addr, source };
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)).map_err(fail)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true).map_err(fail)?;
    }
    socket.set_reuse_address(true).map_err(fail)?;
    socket.set_reuse_port(true).map_err(fail)?;
    // Best effort: the kernel caps these at net.core.{r,w}mem_max (see tuning.md).
    let _ignored = socket.set_recv_buffer_size(4 << 20);
    let _ignored = socket.set_send_buffer_size(4 << 20);
    socket.bind(&addr.into()).map_err(fail)?;
    Ok(socket.into())
}

/// Tells workers to stop: a flag for loops that wake up on their own, and a pipe that becomes
/// readable for loops that sleep in the kernel (io_uring polls it).
#[derive(Debug)]
pub struct Stop {
    flag: AtomicBool,
    reader: io::PipeReader,
    writer: io::PipeWriter,
}

impl Stop {
    /// A stop signal that has not fired.
    pub fn new() -> io::Result<Stop> {
        let (reader, writer) = io::pipe()?;
        Ok(Stop { flag: AtomicBool::new(false), reader, writer })
    }

    /// Fires the signal; every worker sees it.
    pub fn fire(&self) {
        self.flag.store(true, Ordering::Release);
        let mut writer = &self.writer;
        // One byte makes the pipe readable for every poller; nobody reads it.
        let _ignored = io::Write::write(&mut writer, &[1]);
    }

    /// Whether the signal has fired.
    #[inline]
    pub fn fired(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }

    /// The pipe end io_uring polls.
    pub fn reader(&self) -> &io::PipeReader {
        &self.reader
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_encoded_peer_decodes_to_the_same_address() {
        for addr in ["198.18.0.2:53000", "[fd00:19::2]:1", "[fe80::1]:65535"] {
            let addr: SocketAddr = addr.parse().unwrap();
            let mut name = [0u8; 28];
            let n = encode_peer(addr, &mut name);
            assert_eq!(Peer(&name[..n]).socket_addr(), Some(addr));
        }
    }
}
