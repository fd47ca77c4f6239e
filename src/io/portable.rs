//! The portable backend: recvmmsg/sendmmsg batches on a blocking socket.
//!
//! The socket has a receive timeout so the loop notices a stop within 100 ms when idle; under
//! load `MSG_WAITFORONE` returns as soon as one datagram is there, with whatever else is queued.
#![allow(unsafe_code)]

use std::io;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use super::{Handler, Outbox, Peer, Stop, RECV_SIZE, REPLY_SIZE, TICK};

/// Most datagrams per recvmmsg call (the arrays' size).
pub const BATCH: usize = 64;
/// Datagrams per recvmmsg call by default (quinn-udp uses 32 too); `DNLB_PORTABLE_BATCH`
/// (1 to 64) overrides it for experiments, tuning.md has what each gave.
pub const DEFAULT_BATCH: usize = 32;
/// Room for any socket address (`sockaddr_storage`).
const NAME_SIZE: usize = 128;

/// Buffers for one batch; boxed so the pointers in the headers stay valid.
struct Buffers {
    recv: [[u8; RECV_SIZE]; BATCH],
    reply: [[u8; REPLY_SIZE]; BATCH],
    names: [[u8; NAME_SIZE]; BATCH],
}

fn fd_of(s: &UdpSocket) -> i32 {
    s.as_raw_fd()
}

/// Waits (up to the next tick) for the client socket or an upstream socket; handles upstream
/// datagrams and ticks, sends what they produced; returns whether the client socket is readable.
fn wait_and_relay<H: Handler>(
    socket: &UdpSocket,
    handler: &mut H,
    pollfds: &mut [libc::pollfd],
    outbox: &mut Outbox,
    buf: &mut [u8],
    next_tick: &mut Instant,
) -> bool {
    let wait_ms = next_tick.saturating_duration_since(Instant::now()).as_millis().min(100) as i32;
    // SAFETY: `pollfds` is a valid, initialised slice of `pollfd` that the call only reads and
    // writes `revents` of, for its length; it keeps no pointer after returning.
    let rc = unsafe { libc::poll(pollfds.as_mut_ptr(), pollfds.len() as libc::nfds_t, wait_ms.max(1)) };
    if rc < 0 {
        return false;
    }
    for (index, pfd) in pollfds[1..].iter().enumerate() {
        if pfd.revents & libc::POLLIN == 0 {
            continue;
        }
        // Each receive borrows the handler's socket only for the call, so the datagram can then
        // go to the handler.
        while let Some(Ok((n, from))) = handler.extra_sockets().get(index).map(|s| s.recv_from(buf)) {
            handler.handle_extra(index, &buf[..n], from, outbox);
        }
    }
    if Instant::now() >= *next_tick {
        handler.tick(outbox);
        *next_tick = Instant::now() + TICK;
    }
    outbox.drain(|to, bytes| {
        if let Err(e) = socket.send_to(bytes, to) {
            handler.io_error(e);
        }
    });
    pollfds[0].revents & libc::POLLIN != 0
}

/// Serves `socket` with `handler` until `stop` fires.
pub fn serve<H: Handler>(socket: &UdpSocket, handler: &mut H, stop: &Stop) -> io::Result<()> {
    // With a relay, the loop also waits on the upstream sockets (poll), so the client socket is
    // read without blocking; without one, recvmmsg blocks, waking every 100 ms to see a stop.
    let relay = !handler.extra_sockets().is_empty();
    if relay {
        socket.set_nonblocking(true)?;
    } else {
        socket.set_read_timeout(Some(Duration::from_millis(100)))?;
    }
    let mut pollfds: Vec<libc::pollfd> = std::iter::once(fd_of(socket))
        .chain(handler.extra_sockets().iter().map(fd_of))
        .map(|fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 })
        .collect();
    let mut outbox = Outbox::new(if relay { 256 } else { 0 });
    let mut extra_buf = vec![0u8; if relay { 65_536 } else { 0 }];
    let mut next_tick = Instant::now() + TICK;
    let batch = std::env::var("DNLB_PORTABLE_BATCH")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| (1..=BATCH).contains(n))
        .unwrap_or(DEFAULT_BATCH);
    let fd = socket.as_raw_fd();
    let mut bufs: Box<Buffers> = Box::new(Buffers {
        recv: [[0; RECV_SIZE]; BATCH],
        reply: [[0; REPLY_SIZE]; BATCH],
        names: [[0; NAME_SIZE]; BATCH],
    });
    let mut recv_iov: [libc::iovec; BATCH] = [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; BATCH];
    let mut send_iov = recv_iov;
    // SAFETY: `mmsghdr` is plain old data (pointers and integers); all-zero is a valid value.
    let mut recv_msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut send_msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    for (iov, buf) in recv_iov.iter_mut().zip(bufs.recv.iter_mut()) {
        *iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: RECV_SIZE };
    }
    while !stop.fired() {
        if relay && !wait_and_relay(socket, handler, &mut pollfds, &mut outbox, &mut extra_buf, &mut next_tick) {
            continue;
        }
        for i in 0..BATCH {
            let h = &mut recv_msgs[i].msg_hdr;
            h.msg_name = bufs.names[i].as_mut_ptr().cast();
            h.msg_namelen = NAME_SIZE as libc::socklen_t;
            h.msg_iov = &mut recv_iov[i];
            h.msg_iovlen = 1;
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
            h.msg_flags = 0;
        }
        // SAFETY:
        // - every header points at buffers owned by `bufs` and `recv_iov`, which outlive the
        //   call and are not otherwise borrowed during it;
        // - the kernel writes at most `iov_len` bytes per datagram and `msg_namelen` bytes of
        //   address, both the true sizes of those buffers;
        // - `batch` is at most `BATCH`, the length of `recv_msgs`.
        let n = unsafe {
            libc::recvmmsg(fd, recv_msgs.as_mut_ptr(), batch as u32, libc::MSG_WAITFORONE, std::ptr::null_mut())
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted => {}
                _ => handler.io_error(e),
            }
            continue;
        }
        handler.begin_batch();
        let mut replies = 0;
        let Buffers { recv, reply, names } = &mut *bufs;
        for i in 0..n as usize {
            let len = (recv_msgs[i].msg_len as usize).min(RECV_SIZE);
            let name_len = (recv_msgs[i].msg_hdr.msg_namelen as usize).min(NAME_SIZE);
            let out = handler.handle(&recv[i][..len], Peer(&names[i][..name_len]), &mut reply[replies]);
            if out == 0 {
                continue;
            }
            send_iov[replies] = libc::iovec { iov_base: reply[replies].as_mut_ptr().cast(), iov_len: out };
            let h = &mut send_msgs[replies].msg_hdr;
            h.msg_name = names[i].as_mut_ptr().cast();
            h.msg_namelen = name_len as libc::socklen_t;
            h.msg_iov = &mut send_iov[replies];
            h.msg_iovlen = 1;
            replies += 1;
        }
        let mut sent = 0;
        while sent < replies {
            // SAFETY:
            // - headers `sent..replies` point at reply buffers and peer names in `bufs` filled
            //   above, and at `send_iov` entries; all outlive the call and are only read by it;
            // - the count passed is the number of initialised headers from `sent` on.
            let rc = unsafe { libc::sendmmsg(fd, send_msgs[sent..].as_mut_ptr(), (replies - sent) as u32, 0) };
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                // Skip the datagram the kernel refused (e.g. an unroutable peer) and go on.
                handler.io_error(e);
                sent += 1;
            } else {
                sent += rc as usize;
            }
        }
    }
    Ok(())
}
