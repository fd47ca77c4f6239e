//! The io_uring backend: one ring per worker, multishot recvmsg into a provided buffer ring,
//! replies as sendmsg entries submitted together with the next wait.
//!
//! ```text
//!            ┌─ buffer ring (RECV_BUFFERS × RECV_SIZE, owned here, lent to the kernel) ─┐
//!  socket ──►│ RecvMsgMulti (one SQE, many CQEs)  → cqe: buffer id, length           │
//!            └──────────────────────────────────────────────────────────────────────┘
//!  loop: submit_and_wait(1) → drain CQEs → handler per datagram → copy reply into a free send
//!        slot → push SendMsg (user_data = slot) → return buffer to ring → repeat
//! ```
//!
//! Buffer ownership, the invariant every `unsafe` block below relies on:
//! - a receive buffer belongs to the kernel from the moment its entry is published in the buffer
//!   ring until a CQE names its buffer id; then it is ours until we publish it again;
//! - a send slot (reply bytes, peer address, iovec, msghdr) belongs to the kernel from the push of
//!   its SendMsg entry until the CQE whose user_data is the slot index; it is on the free list
//!   exactly when it is ours;
//! - the ring is dropped (and so every operation cancelled and reaped by the kernel) before any of
//!   that memory is freed: `Worker` declares `ring` first, and fields drop in declaration order.
#![allow(unsafe_code)]

use std::alloc::{self, Layout};
use std::io;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use super::{DropReason, Handler, Outbox, Peer, Stop, MAX_DATAGRAM, RECV_SIZE, REPLY_SIZE, TICK};

/// Receive buffers per worker (a power of two); see tuning.md for the sizes tried.
/// `DNLB_URING_BUFFERS` overrides it for experiments.
pub const RECV_BUFFERS: u16 = 512;

/// How the ring is set up; `DNLB_URING_SETUP` (defer, coop, plain) overrides the default for
/// experiments (tuning.md has what each gave).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Setup {
    /// SINGLE_ISSUER + DEFER_TASKRUN.
    Defer,
    /// COOP_TASKRUN + TASKRUN_FLAG.
    Coop,
    /// No setup flags.
    Plain,
}

/// Reads the experiment overrides once per worker, off the hot path.
fn tuning() -> (Setup, u16) {
    let setup = match std::env::var("DNLB_URING_SETUP").as_deref() {
        Ok("coop") => Setup::Coop,
        Ok("plain") => Setup::Plain,
        _ => Setup::Defer,
    };
    let buffers = std::env::var("DNLB_URING_BUFFERS")
        .ok()
        .and_then(|v| v.parse::<u16>().ok())
        .filter(|n| n.is_power_of_two() && (8..=32_768).contains(n))
        .unwrap_or(RECV_BUFFERS);
    (setup, buffers)
}
/// Replies that may be in flight at once per worker.
pub const SEND_SLOTS: usize = 256;
/// Submission queue entries; the completion queue is larger so a burst of receives cannot overflow it.
const SQ_ENTRIES: u32 = 512;
/// Completion queue entries.
const CQ_ENTRIES: u32 = 4096;
/// CQEs handled per pass; at most this many replies are built before the next submit.
const DRAIN: usize = SEND_SLOTS / 2;
/// The buffer group id of the receive buffers.
const BUFFER_GROUP: u16 = 0;
/// Room for an IPv6 socket address, the largest a UDP peer has.
const NAME_SIZE: usize = std::mem::size_of::<libc::sockaddr_in6>();

const USER_RECV: u64 = u64::MAX;
const USER_STOP: u64 = u64::MAX - 1;
const USER_TICK: u64 = u64::MAX - 2;
/// The poll on the handler's extra descriptor (the relay's epoll instance).
const USER_EXTRA: u64 = u64::MAX - 3;

/// Checks that this kernel lets us create a ring with the operations we use.
/// The error says why not (seccomp, `kernel.io_uring_disabled`, an old kernel).
pub fn check_support() -> Result<(), String> {
    let ring = IoUring::new(8).map_err(|e| match e.raw_os_error() {
        Some(libc::EPERM) => {
            format!("{e} (blocked by a seccomp profile such as Docker's default, or kernel.io_uring_disabled=2)")
        }
        Some(libc::ENOSYS) => format!("{e} (kernel built without io_uring, or a seccomp filter)"),
        Some(libc::EACCES) => format!("{e} (kernel.io_uring_disabled=1 and this user is not in io_uring_group)"),
        _ => e.to_string(),
    })?;
    let mut probe = io_uring::Probe::new();
    ring.submitter().register_probe(&mut probe).map_err(|e| format!("cannot probe io_uring opcodes: {e}"))?;
    for (code, name) in
        [(opcode::RecvMsg::CODE, "recvmsg"), (opcode::SendMsg::CODE, "sendmsg"), (opcode::PollAdd::CODE, "poll")]
    {
        if !probe.is_supported(code) {
            return Err(format!("kernel io_uring lacks {name}"));
        }
    }
    // Provided buffer rings arrived in 5.19 and multishot recvmsg in 6.0; try a registration.
    let ring_mem = BufRingMemory::new(8)?;
    // SAFETY: `ring_mem` is page-aligned, zeroed, 8 entries long, and outlives `ring`'s
    // registration: it is unregistered just below, before either is dropped.
    unsafe { ring.submitter().register_buf_ring_with_flags(ring_mem.addr(), 8, BUFFER_GROUP, 0) }
        .map_err(|e| format!("kernel lacks provided buffer rings (needs 6.0 or newer): {e}"))?;
    ring.submitter().unregister_buf_ring(BUFFER_GROUP).map_err(|e| e.to_string())?;
    Ok(())
}

/// Page-aligned, zeroed memory for the buffer ring's entries.
struct BufRingMemory {
    ptr: *mut types::BufRingEntry,
    layout: Layout,
}

impl BufRingMemory {
    fn new(entries: u16) -> Result<BufRingMemory, String> {
        let size = entries as usize * std::mem::size_of::<types::BufRingEntry>();
        let layout = Layout::from_size_align(size, 4096).map_err(|e| e.to_string())?;
        // SAFETY: `layout` has a non-zero size (entries > 0).
        let ptr = unsafe { alloc::alloc_zeroed(layout) }.cast::<types::BufRingEntry>();
        if ptr.is_null() {
            return Err("out of memory for the buffer ring".into());
        }
        Ok(BufRingMemory { ptr, layout })
    }

    fn addr(&self) -> u64 {
        self.ptr as u64
    }
}

impl Drop for BufRingMemory {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout; the ring that used it is gone (see the
        // module doc on drop order).
        unsafe { alloc::dealloc(self.ptr.cast(), self.layout) }
    }
}

/// One reply in flight: its bytes and everything the SendMsg entry points at.
#[repr(C)]
struct SendSlot {
    msg: libc::msghdr,
    iov: libc::iovec,
    name: [u8; NAME_SIZE],
    reply: [u8; REPLY_SIZE],
}

/// A worker's ring and the memory it lends to the kernel. Field order is drop order: the ring
/// goes first.
struct Worker {
    ring: IoUring,
    buf_ring: BufRingMemory,
    buffers: Box<[u8]>,
    slots: Box<[SendSlot]>,
    free: Vec<u16>,
    recv_msg: Box<libc::msghdr>,
    /// Our copy of the buffer ring's tail.
    tail: u16,
    /// Number of receive buffers (a power of two).
    nbufs: u16,
}

impl Worker {
    fn new() -> io::Result<Worker> {
        // DEFER_TASKRUN + SINGLE_ISSUER: completions are processed only when we wait, on our own
        // thread, which saves an interrupt-driven task-work run per packet (see tuning.md).
        let (setup, nbufs) = tuning();
        let mut builder = IoUring::builder();
        builder.setup_cqsize(CQ_ENTRIES);
        match setup {
            Setup::Defer => {
                builder.setup_single_issuer().setup_defer_taskrun();
            }
            Setup::Coop => {
                builder.setup_coop_taskrun().setup_taskrun_flag();
            }
            Setup::Plain => {}
        }
        let ring =
            builder.build(SQ_ENTRIES).or_else(|_| IoUring::builder().setup_cqsize(CQ_ENTRIES).build(SQ_ENTRIES))?;
        let buf_ring = BufRingMemory::new(nbufs).map_err(io::Error::other)?;
        let buffers = vec![0u8; nbufs as usize * RECV_SIZE].into_boxed_slice();
        // SAFETY: see `check_support`; `buf_ring` outlives the registration because `ring`
        // drops first (field order).
        unsafe { ring.submitter().register_buf_ring_with_flags(buf_ring.addr(), nbufs, BUFFER_GROUP, 0)? };
        let slots = (0..SEND_SLOTS)
            .map(|_| SendSlot {
                // SAFETY: msghdr is plain data; all-zero is a valid (empty) value.
                msg: unsafe { std::mem::zeroed() },
                iov: libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 },
                name: [0; NAME_SIZE],
                reply: [0; REPLY_SIZE],
            })
            .collect();
        // SAFETY: as above.
        let mut recv_msg: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
        recv_msg.msg_namelen = NAME_SIZE as libc::socklen_t;
        let free = (0..SEND_SLOTS as u16).rev().collect();
        let mut w = Worker { ring, buf_ring, buffers, slots, free, recv_msg, tail: 0, nbufs };
        for bid in 0..nbufs {
            w.stage_buffer(bid);
        }
        w.publish_tail();
        Ok(w)
    }

    /// Writes buffer `bid` into the next buffer ring entry (not yet visible to the kernel).
    fn stage_buffer(&mut self, bid: u16) {
        let mask = self.nbufs - 1;
        let index = (self.tail & mask) as usize;
        // SAFETY: `index` < nbufs, the number of entries allocated; the entry is ours
        // because it lies past the tail the kernel has seen (the kernel only reads entries
        // between its head and the published tail).
        let entry = unsafe { &mut *self.buf_ring.ptr.add(index) };
        let addr = self.buffers[bid as usize * RECV_SIZE..].as_ptr() as u64;
        entry.set_addr(addr);
        entry.set_len(RECV_SIZE as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes every staged buffer visible to the kernel.
    fn publish_tail(&self) {
        // SAFETY: the tail field lives inside the first entry of our page-aligned ring; the
        // kernel reads it concurrently, so it is only written through an atomic with Release
        // ordering (entries before it must be visible first).
        let tail = unsafe { &*types::BufRingEntry::tail(self.buf_ring.ptr).cast::<AtomicU16>() };
        tail.store(self.tail, Ordering::Release);
    }

    fn push(&mut self, entry: &squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: every entry we push points at memory whose ownership rules are in the
            // module doc: the receive msghdr and buffer ring live as long as the ring, and a
            // send slot is off the free list until its completion.
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                return Ok(());
            }
            self.ring.submit()?;
        }
    }

    fn arm_recv(&mut self, fd: i32) -> io::Result<()> {
        let entry =
            opcode::RecvMsgMulti::new(types::Fd(fd), &*self.recv_msg, BUFFER_GROUP).build().user_data(USER_RECV);
        self.push(&entry)
    }

    /// Handles one datagram completion: build the reply, queue its send, return the buffer.
    fn on_datagram<H: Handler>(&mut self, handler: &mut H, fd: i32, result: i32, flags: u32) -> io::Result<()> {
        let Some(bid) = cqueue::buffer_select(flags) else {
            return Ok(());
        };
        let start = bid as usize * RECV_SIZE;
        let len = (result as usize).min(RECV_SIZE);
        let reply_len;
        let mut slot_index = None;
        {
            let buffer = &self.buffers[start..start + len];
            let Ok(out) = types::RecvMsgOut::parse(buffer, &self.recv_msg) else {
                self.stage_buffer(bid);
                return Ok(());
            };
            if out.is_payload_truncated() || out.payload_data().len() > MAX_DATAGRAM {
                // Longer than MAX_DATAGRAM: dropped, as the portable backend does.
                handler.dropped(DropReason::Oversize, 1);
                self.stage_buffer(bid);
                return Ok(());
            }
            if out.is_name_data_truncated() {
                // Not an IPv4 or IPv6 sender: nowhere to reply.
                handler.io_error(io::Error::from(io::ErrorKind::InvalidData));
                self.stage_buffer(bid);
                return Ok(());
            }
            let Some(i) = self.free.pop() else {
                handler.dropped(DropReason::NoSendSlot, 1);
                self.stage_buffer(bid);
                return Ok(());
            };
            let slot = &mut self.slots[i as usize];
            reply_len = handler.handle(out.payload_data(), Peer(out.name_data()), &mut slot.reply);
            if reply_len > 0 {
                let name = out.name_data();
                slot.name[..name.len()].copy_from_slice(name);
                slot.msg.msg_namelen = name.len() as libc::socklen_t;
                slot_index = Some(i);
            } else {
                self.free.push(i);
            }
        }
        self.stage_buffer(bid);
        if let Some(i) = slot_index {
            let slot = &mut self.slots[i as usize];
            slot.iov = libc::iovec { iov_base: slot.reply.as_mut_ptr().cast(), iov_len: reply_len };
            slot.msg.msg_name = slot.name.as_mut_ptr().cast();
            slot.msg.msg_iov = &mut slot.iov;
            slot.msg.msg_iovlen = 1;
            let entry = opcode::SendMsg::new(types::Fd(fd), &slot.msg).build().user_data(u64::from(i));
            self.push(&entry)?;
        }
        Ok(())
    }
}

/// Serves `socket` until `stop` fires.
pub fn serve<H: Handler>(socket: &UdpSocket, handler: &mut H, stop: &Stop) -> io::Result<()> {
    let fd = socket.as_raw_fd();
    let mut w = Worker::new()?;
    w.arm_recv(fd)?;
    let poll =
        opcode::PollAdd::new(types::Fd(stop.reader().as_raw_fd()), libc::POLLIN as u32).build().user_data(USER_STOP);
    w.push(&poll)?;
    // The handler's own descriptor (the relay's epoll instance) is polled in the same ring, with
    // a tick for its timeouts.
    let extra = handler.extra_fd().map(|fd| fd.as_raw_fd());
    let extra_poll =
        extra.map(|efd| opcode::PollAdd::new(types::Fd(efd), libc::POLLIN as u32).build().user_data(USER_EXTRA));
    let tick = Box::new(types::Timespec::new().nsec(TICK.as_nanos() as u32));
    let tick_entry = opcode::Timeout::new(&*tick).build().user_data(USER_TICK);
    if let Some(entry) = &extra_poll {
        w.push(entry)?;
        w.push(&tick_entry)?;
    }
    let mut outbox = Outbox::new(socket);
    let result = run_loop(&mut w, handler, fd, stop, extra_poll.as_ref(), &tick_entry, &mut outbox);
    // The ring, and with it every Timeout entry pointing at `tick`, goes first.
    drop(w);
    drop(tick);
    result
}

/// The completion loop of [`serve`].
fn run_loop<H: Handler>(
    w: &mut Worker,
    handler: &mut H,
    fd: i32,
    stop: &Stop,
    extra_poll: Option<&squeue::Entry>,
    tick_entry: &squeue::Entry,
    outbox: &mut Outbox<'_>,
) -> io::Result<()> {
    let mut batch: [(u64, i32, u32); DRAIN] = [(0, 0, 0); DRAIN];
    // Whether the poll on the extra descriptor is in the ring.
    let mut extra_armed = extra_poll.is_some();
    loop {
        match w.ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) || e.raw_os_error() == Some(libc::EBUSY) => {}
            Err(e) => return Err(e),
        }
        handler.begin_batch();
        loop {
            let mut n = 0;
            for cqe in w.ring.completion().take(DRAIN) {
                batch[n] = (cqe.user_data(), cqe.result(), cqe.flags());
                n += 1;
            }
            if n == 0 {
                break;
            }
            // Send completions first: they free the slots the receives need.
            let mut rearm = false;
            for &(user, result, _) in &batch[..n] {
                if user < SEND_SLOTS as u64 {
                    if result < 0 {
                        handler.io_error(io::Error::from_raw_os_error(-result));
                    }
                    w.free.push(user as u16);
                }
            }
            for &(user, result, flags) in &batch[..n] {
                match user {
                    USER_RECV => {
                        if result >= 0 {
                            w.on_datagram(handler, fd, result, flags)?;
                        } else if result == -libc::ENOBUFS {
                            handler.dropped(DropReason::NoBuffer, 1);
                        } else {
                            handler.io_error(io::Error::from_raw_os_error(-result));
                        }
                        rearm |= !cqueue::more(flags);
                    }
                    USER_STOP => return Ok(()),
                    USER_TICK => {
                        handler.tick(outbox);
                        outbox.report(handler);
                        w.push(tick_entry)?;
                        if let Some(entry) = extra_poll.filter(|_| !extra_armed) {
                            w.push(entry)?;
                            extra_armed = true;
                        }
                    }
                    USER_EXTRA => {
                        extra_armed = false;
                        if result < 0 {
                            // Counted, and tried again at the next tick rather than in a loop.
                            handler.io_error(io::Error::from_raw_os_error(-result));
                            continue;
                        }
                        handler.extra_ready(outbox);
                        outbox.report(handler);
                        // One-shot: armed again after each readiness, once the handler has read.
                        if let Some(entry) = extra_poll {
                            w.push(entry)?;
                            extra_armed = true;
                        }
                    }
                    _ => {}
                }
            }
            w.publish_tail();
            if rearm {
                w.arm_recv(fd)?;
            }
            if stop.fired() {
                return Ok(());
            }
        }
    }
}
