//! The portable backend: recvmmsg/sendmmsg batches on a blocking socket.
//!
//! The socket has a receive timeout so the loop notices a stop within 100 ms when idle; under
//! load `MSG_WAITFORONE` returns as soon as one datagram is there, with whatever else is queued.
#![allow(unsafe_code)]

use std::io;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use super::{DropReason, Handler, Outbox, Peer, Stop, MAX_DATAGRAM, RECV_SIZE, REPLY_SIZE, TICK};

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

/// Waits (up to the next tick) for the client socket or the handler's extra descriptor; lets the
/// handler read its own and tick; returns whether the client socket is readable.
fn wait_and_relay<H: Handler>(
    handler: &mut H,
    pollfds: &mut [libc::pollfd; 2],
    outbox: &mut Outbox<'_>,
    next_tick: &mut Instant,
) -> bool {
    let wait_ms = next_tick.saturating_duration_since(Instant::now()).as_millis().min(100) as i32;
    // SAFETY: `pollfds` is a valid, initialised array of `pollfd` that the call only reads and
    // writes `revents` of, for its length; it keeps no pointer after returning.
    let rc = unsafe { libc::poll(pollfds.as_mut_ptr(), pollfds.len() as libc::nfds_t, wait_ms.max(1)) };
    if rc < 0 {
        return false;
    }
    if pollfds[1].revents & libc::POLLIN != 0 {
        handler.extra_ready(outbox);
    }
    if Instant::now() >= *next_tick {
        handler.tick(outbox);
        *next_tick = Instant::now() + TICK;
    }
    outbox.report(handler);
    pollfds[0].revents & libc::POLLIN != 0
}

/// Serves `socket` with `handler` until `stop` fires.
pub fn serve<H: Handler>(socket: &UdpSocket, handler: &mut H, stop: &Stop) -> io::Result<()> {
    // With an extra descriptor (the relay), the loop also waits on it (poll), so the client socket
    // is read without blocking; without one, recvmmsg blocks, waking every 100 ms to see a stop.
    let extra = handler.extra_fd().map(|fd| fd.as_raw_fd());
    if extra.is_some() {
        socket.set_nonblocking(true)?;
    } else {
        socket.set_read_timeout(Some(Duration::from_millis(100)))?;
    }
    let mut pollfds =
        [socket.as_raw_fd(), extra.unwrap_or(-1)].map(|fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 });
    let mut outbox = Outbox::new(socket);
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
        // Room for MAX_DATAGRAM only, so a longer datagram comes back with MSG_TRUNC here exactly
        // where io_uring's buffers would cut it.
        *iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: MAX_DATAGRAM };
    }
    while !stop.fired() {
        if extra.is_some() && !wait_and_relay(handler, &mut pollfds, &mut outbox, &mut next_tick) {
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
            if recv_msgs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                // Longer than MAX_DATAGRAM: dropped, as the io_uring backend does, never parsed cut.
                handler.dropped(DropReason::Oversize, 1);
                continue;
            }
            let len = (recv_msgs[i].msg_len as usize).min(MAX_DATAGRAM);
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
