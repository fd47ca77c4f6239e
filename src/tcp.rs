//! DNS over TCP (RFC 7766): length-prefixed messages, several per connection, an idle timeout and a
//! bound on connections. TCP is the fallback after TC=1, so it is built for correctness, not
//! speed: one acceptor per listen address and a thread per connection, up to the bound.
//!
//! ```text
//!  listener ──accept──► over the bound? ──yes──► close at once (counted as dropped)
//!                              │ no
//!                              ▼
//!                      connection thread: [len][query] → Responder → [len][reply], until idle
//! ```

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use crate::dns::answer::Transport;
use crate::io::Stop;
use crate::metrics::CounterBlocks;
use crate::snapshot::SnapshotHandle;
use crate::worker::{Client, Responder};

/// How often a blocked read wakes to check for a stop.
const WAKE: Duration = Duration::from_millis(200);

/// What every connection of one listener shares.
#[derive(Clone)]
pub struct TcpContext {
    /// Snapshot source.
    pub snapshots: SnapshotHandle,
    /// Counter blocks; TCP counts into `block`.
    pub counters: CounterBlocks,
    /// The block TCP threads share.
    pub block: usize,
    /// Close a connection idle this long.
    pub idle_timeout: Duration,
    /// Refuse connections over this many.
    pub max_connections: usize,
    /// Connections open now.
    pub open: Arc<AtomicUsize>,
    /// Stop signal.
    pub stop: Arc<Stop>,
    /// The relay, for names dnlb does not manage.
    pub relay: Option<Arc<crate::config::RelayConfig>>,
}

/// Binds a TCP listener (SO_REUSEADDR and SO_REUSEPORT, so a restart does not wait for old
/// sockets to drain).
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Runs the accept loop on its own thread until the stop fires (the stopper then connects once to
/// wake a blocked `accept`).
pub fn spawn_acceptor(listener: TcpListener, ctx: TcpContext) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name("dnlb-tcp".into()).spawn(move || {
        for stream in listener.incoming() {
            if ctx.stop.fired() {
                break;
            }
            let Ok(stream) = stream else { continue };
            if ctx.open.fetch_add(1, Ordering::AcqRel) >= ctx.max_connections {
                ctx.open.fetch_sub(1, Ordering::AcqRel);
                ctx.counters[ctx.block].dropped.fetch_add(1, Ordering::Relaxed);
                continue; // dropping `stream` closes it
            }
            let conn_ctx = ctx.clone();
            let spawned = std::thread::Builder::new().name("dnlb-tcp-conn".into()).spawn(move || {
                let mut stream = stream;
                // The result only says how the connection ended; every outcome is a normal close.
                let _ended = serve_connection(&mut stream, &conn_ctx);
                // Release the slot before the peer can see the close, so a client that
                // reconnects at once is not refused for a connection that is gone.
                conn_ctx.open.fetch_sub(1, Ordering::AcqRel);
                drop(stream);
            });
            if spawned.is_err() {
                ctx.open.fetch_sub(1, Ordering::AcqRel);
            }
        }
    })
}

/// Reads exactly `buf.len()` bytes, waking every [`WAKE`] to check the stop and the idle clock.
/// Returns `Ok(false)` on a clean close, idle timeout or stop before the first byte.
fn read_full(stream: &mut TcpStream, buf: &mut [u8], ctx: &TcpContext, idle_since: &mut Instant) -> io::Result<bool> {
    let mut filled = 0;
    while filled < buf.len() {
        match stream.read(&mut buf[filled..]) {
            Ok(0) => return if filled == 0 { Ok(false) } else { Err(io::ErrorKind::UnexpectedEof.into()) },
            Ok(n) => {
                filled += n;
                *idle_since = Instant::now();
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
                ) =>
            {
                if ctx.stop.fired() || idle_since.elapsed() >= ctx.idle_timeout {
                    return Ok(false);
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

fn serve_connection(stream: &mut TcpStream, ctx: &TcpContext) -> io::Result<()> {
    stream.set_read_timeout(Some(WAKE.min(ctx.idle_timeout)))?;
    stream.set_write_timeout(Some(ctx.idle_timeout))?;
    stream.set_nodelay(true)?;
    let mut responder =
        Responder::new(ctx.snapshots.clone(), ctx.counters.clone(), ctx.block).with_relay(ctx.relay.clone(), None);
    let peer = stream.peer_addr()?;
    let mut query = vec![0u8; u16::MAX as usize];
    let mut reply = vec![0u8; 2 + u16::MAX as usize];
    let mut idle_since = Instant::now();
    loop {
        let mut len = [0u8; 2];
        if !read_full(stream, &mut len, ctx, &mut idle_since)? {
            return Ok(());
        }
        let len = u16::from_be_bytes(len) as usize;
        if !read_full(stream, &mut query[..len], ctx, &mut idle_since)? {
            return Ok(());
        }
        responder.refresh();
        let n = responder.respond_from(&query[..len], Client::Tcp(peer), Transport::Tcp, &mut reply[2..]);
        if n == 0 {
            continue;
        }
        reply[..2].copy_from_slice(&(n as u16).to_be_bytes());
        stream.write_all(&reply[..2 + n])?;
    }
}
