//! One AF_XDP socket (XSK) with a UMEM of its own: the memory frames live in, the four rings
//! shared with the kernel, and which frames are whose.
//!
//! ```text
//!  UMEM: FRAMES × FRAME_SIZE bytes, page-aligned, registered with the socket (pinned)
//!
//!  free (ours) ──refill──► fill ring ──kernel receives into it──► rx ring ──► worker
//!      ▲                                                                        │ reply in
//!      │ no reply: back at once                                                 │ the frame
//!      └───────────── completion ring ◄──kernel sent it── tx ring ◄─────────────┘
//! ```
//!
//! Frame ownership, the invariant every `unsafe` block below relies on:
//! - a frame is the kernel's from the moment its address is published on the fill ring or the
//!   tx ring (the producer index stored) until it comes back on the rx ring or the completion
//!   ring (read below the producer index the kernel stored); in between we never touch it;
//! - every other frame is ours, and its address is on the `free` stack or held by the worker
//!   while it builds a reply (one frame at a time, borrowed through `&mut self`);
//! - the socket is closed before the rings and the UMEM are unmapped (field order), so the
//!   kernel holds none of that memory when it is returned.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};

/// Bytes per UMEM frame: a 1,500-byte MTU frame with the kernel's headroom in front.
pub const FRAME_SIZE: usize = 2048;
/// Frames per UMEM (8 MiB with [`FRAME_SIZE`]): the fill ring full, and as many again for
/// replies in flight and relayed answers.
pub const FRAMES: usize = 4096;
/// Entries of each ring (a power of two).
pub const RING_SIZE: u32 = 2048;
/// Where the kernel puts a received frame's data inside its UMEM frame (XDP_PACKET_HEADROOM),
/// in copy mode and in the drivers' zero-copy mode alike.
pub const HEADROOM: usize = 256;
/// The longest frame a UMEM frame receives.
pub const MAX_FRAME: usize = FRAME_SIZE - HEADROOM;

/// How the socket is bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The driver receives into the UMEM and sends from it.
    ZeroCopy,
    /// The kernel copies frames between its buffers and the UMEM (any driver, veth included).
    Copy,
}

/// A memory mapping, unmapped on drop.
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    /// Maps `len` bytes of `fd` at `offset` (a ring), or anonymous memory when `fd` is `None`.
    fn new(len: usize, fd: Option<BorrowedFd<'_>>, offset: u64) -> io::Result<Mapping> {
        let (flags, raw) = match fd {
            Some(fd) => (libc::MAP_SHARED | libc::MAP_POPULATE, fd.as_raw_fd()),
            None => (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE, -1),
        };
        // SAFETY: a fresh mapping at an address the kernel picks; nothing aliases it, and it is
        // unmapped exactly once, in `drop`.
        let ptr = unsafe {
            libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, flags, raw, offset as libc::off_t)
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping { ptr: ptr.cast(), len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are a mapping made in `new`; the socket that shared it with the
        // kernel is closed before this runs (see the module doc on field order).
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// One of the four rings, mapped from the socket. Descriptors are 16 bytes (`struct xdp_desc`)
/// on the rx and tx rings, 8 (a frame address) on the fill and completion rings.
struct Ring {
    /// The mapping the pointers below point into; unmapped when the ring drops.
    _map: Mapping,
    producer: *const AtomicU32,
    consumer: *const AtomicU32,
    flags: *const AtomicU32,
    descs: *mut u8,
    mask: u32,
    /// Our view of the producer index (ahead of the shared one while we produce).
    cached_prod: u32,
    /// Our view of the consumer index (ahead of the shared one while we consume).
    cached_cons: u32,
}

impl Ring {
    fn new(fd: BorrowedFd<'_>, off: &libc::xdp_ring_offset, desc_size: usize, pgoff: u64) -> io::Result<Ring> {
        let len = off.desc as usize + RING_SIZE as usize * desc_size;
        let map = Mapping::new(len, Some(fd), pgoff)?;
        let at = |o: u64| -> io::Result<*mut u8> {
            if o as usize + 4 > len {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "ring offset past its mapping"));
            }
            // SAFETY: `o` is inside the mapping (checked just above).
            Ok(unsafe { map.ptr.add(o as usize) })
        };
        let producer = at(off.producer)?.cast::<AtomicU32>();
        let consumer = at(off.consumer)?.cast::<AtomicU32>();
        let flags = at(off.flags)?.cast::<AtomicU32>();
        let descs = at(off.desc)?;
        Ok(Ring { _map: map, producer, consumer, flags, descs, mask: RING_SIZE - 1, cached_prod: 0, cached_cons: 0 })
    }

    fn producer(&self) -> &AtomicU32 {
        // SAFETY: points into our live mapping at an offset the kernel gave for the 4-byte,
        // aligned index; the kernel writes it concurrently, so it is only read atomically.
        unsafe { &*self.producer }
    }

    fn consumer(&self) -> &AtomicU32 {
        // SAFETY: as for `producer`.
        unsafe { &*self.consumer }
    }

    fn needs_wakeup(&self) -> bool {
        // SAFETY: as for `producer`.
        unsafe { &*self.flags }.load(Ordering::Relaxed) & libc::XDP_RING_NEED_WAKEUP != 0
    }

    /// Entries the kernel produced that we have not consumed (a consumer ring).
    fn available(&mut self) -> u32 {
        let mut n = self.cached_prod.wrapping_sub(self.cached_cons);
        if n == 0 {
            // Acquire: the descriptors below the index are written before it.
            self.cached_prod = self.producer().load(Ordering::Acquire);
            n = self.cached_prod.wrapping_sub(self.cached_cons);
        }
        n.min(RING_SIZE)
    }

    /// Free slots we may produce into (a producer ring); the kernel's consumer index is read
    /// again only when our view shows fewer than `want`.
    fn room(&mut self, want: u32) -> u32 {
        let mut room = RING_SIZE.saturating_sub(self.cached_prod.wrapping_sub(self.cached_cons));
        if room < want {
            self.cached_cons = self.consumer().load(Ordering::Acquire);
            room = RING_SIZE.saturating_sub(self.cached_prod.wrapping_sub(self.cached_cons));
        }
        room
    }

    /// The descriptor bytes of index `i`.
    fn desc(&self, i: u32, size: usize) -> *mut u8 {
        // SAFETY: `i & mask` < RING_SIZE, and the mapping holds RING_SIZE descriptors of `size`
        // bytes from `descs` (its length was computed so in `new`).
        unsafe { self.descs.add((i & self.mask) as usize * size) }
    }

    /// Publishes what we produced (Release: descriptors first, then the index).
    fn publish_producer(&self) {
        self.producer().store(self.cached_prod, Ordering::Release);
    }

    /// Hands back what we consumed (Release: our reads of the descriptors come first).
    fn publish_consumer(&self) {
        self.consumer().store(self.cached_cons, Ordering::Release);
    }
}

/// An XSK bound to one queue of one interface, with its UMEM. Field order is drop order: the
/// socket goes first.
pub struct Xsk {
    fd: OwnedFd,
    rx: Ring,
    tx: Ring,
    fill: Ring,
    comp: Ring,
    umem: Mapping,
    /// Frames that are ours and idle (their base addresses).
    free: Vec<u64>,
    /// Descriptors on the tx ring not yet published.
    unpublished: u32,
    /// The queue it is bound to.
    pub queue: u32,
    /// How it is bound.
    pub mode: Mode,
}

// SAFETY: the raw pointers point into mappings this value owns; nothing else in the process
// refers to them, so moving the whole to the worker thread that uses it is sound.
unsafe impl Send for Xsk {}

/// Sets an integer socket option on an XSK.
fn set_option<T>(fd: BorrowedFd<'_>, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` is a live `T` of the size given; the kernel copies it and keeps no pointer.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_XDP,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A step of the set-up and what the kernel said.
#[derive(Debug)]
pub struct SetupError {
    /// The step: "socket", "UMEM registration", "bind (zero-copy)", ...
    pub step: &'static str,
    /// The error.
    pub source: io::Error,
}

impl Xsk {
    /// Creates an XSK on `queue` of interface `ifindex` in `mode`, its UMEM registered and its
    /// fill ring full.
    pub fn open(ifindex: u32, queue: u32, mode: Mode) -> Result<Xsk, SetupError> {
        let fail = |step: &'static str| move |source| SetupError { step, source };
        // SAFETY: plain socket(2); the descriptor is owned at once below.
        let raw = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(SetupError { step: "socket", source: io::Error::last_os_error() });
        }
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let umem = Mapping::new(FRAMES * FRAME_SIZE, None, 0).map_err(fail("UMEM allocation"))?;
        let reg = libc::xdp_umem_reg {
            addr: umem.ptr as u64,
            len: umem.len as u64,
            chunk_size: FRAME_SIZE as u32,
            headroom: 0,
            flags: 0,
            tx_metadata_len: 0,
        };
        set_option(fd.as_fd(), libc::XDP_UMEM_REG, &reg).map_err(fail("UMEM registration"))?;
        for name in [libc::XDP_UMEM_FILL_RING, libc::XDP_UMEM_COMPLETION_RING, libc::XDP_RX_RING, libc::XDP_TX_RING] {
            set_option(fd.as_fd(), name, &RING_SIZE).map_err(fail("ring sizes"))?;
        }
        // SAFETY: all-zero is a valid `xdp_mmap_offsets` (plain integers).
        let mut off: libc::xdp_mmap_offsets = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::xdp_mmap_offsets>() as libc::socklen_t;
        // SAFETY: `off` is a live value of `len` bytes the kernel fills; it keeps no pointer.
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_XDP,
                libc::XDP_MMAP_OFFSETS,
                (&mut off as *mut libc::xdp_mmap_offsets).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(SetupError { step: "ring offsets", source: io::Error::last_os_error() });
        }
        let desc = std::mem::size_of::<libc::xdp_desc>();
        let rx = Ring::new(fd.as_fd(), &off.rx, desc, libc::XDP_PGOFF_RX_RING as u64).map_err(fail("rx ring"))?;
        let tx = Ring::new(fd.as_fd(), &off.tx, desc, libc::XDP_PGOFF_TX_RING as u64).map_err(fail("tx ring"))?;
        let fill = Ring::new(fd.as_fd(), &off.fr, 8, libc::XDP_UMEM_PGOFF_FILL_RING).map_err(fail("fill ring"))?;
        let comp =
            Ring::new(fd.as_fd(), &off.cr, 8, libc::XDP_UMEM_PGOFF_COMPLETION_RING).map_err(fail("completion ring"))?;
        let free = (0..FRAMES as u64).rev().map(|i| i * FRAME_SIZE as u64).collect();
        let mut xsk = Xsk { fd, rx, tx, fill, comp, umem, free, unpublished: 0, queue, mode };
        // The fill ring is filled before the bind, so frames wait for the first packet.
        xsk.refill();
        let flags = libc::XDP_USE_NEED_WAKEUP
            | match mode {
                Mode::ZeroCopy => libc::XDP_ZEROCOPY,
                Mode::Copy => libc::XDP_COPY,
            };
        let addr = libc::sockaddr_xdp {
            sxdp_family: libc::AF_XDP as u16,
            sxdp_flags: flags,
            sxdp_ifindex: ifindex,
            sxdp_queue_id: queue,
            sxdp_shared_umem_fd: 0,
        };
        // SAFETY: `addr` is a live `sockaddr_xdp` of the length given; the kernel copies it.
        let rc = unsafe {
            libc::bind(
                xsk.fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_xdp).cast(),
                std::mem::size_of::<libc::sockaddr_xdp>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            let step = if mode == Mode::ZeroCopy { "bind (zero-copy)" } else { "bind (copy mode)" };
            return Err(SetupError { step, source: io::Error::last_os_error() });
        }
        Ok(xsk)
    }

    /// The socket, for the XSKMAP and for poll().
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The frame at `addr` (a descriptor's address), from there to the end of its UMEM frame.
    /// Empty for an address outside the UMEM (never given by a sane kernel).
    pub fn frame(&mut self, addr: u64) -> &mut [u8] {
        let addr = addr as usize;
        if addr >= self.umem.len {
            return &mut [];
        }
        let end = (addr / FRAME_SIZE + 1) * FRAME_SIZE;
        // SAFETY: `addr..end` lies inside the UMEM mapping (checked above; `end` is the end of
        // the frame holding `addr`), and the frame is ours by the ownership rules of the module
        // doc: it came off the rx ring or the free stack and is not on any ring now. `&mut self`
        // keeps a second borrow of any frame from existing at the same time.
        unsafe { std::slice::from_raw_parts_mut(self.umem.ptr.add(addr), end - addr) }
    }

    /// Received frames waiting, at most `max`; read them with [`Xsk::received`] and hand the
    /// ring slots back with [`Xsk::release_received`].
    pub fn peek_received(&mut self, max: u32) -> u32 {
        self.rx.available().min(max)
    }

    /// The `i`-th waiting received frame: (address, length).
    pub fn received(&self, i: u32) -> (u64, u32) {
        let p = self.rx.desc(self.rx.cached_cons.wrapping_add(i), 16);
        // SAFETY: the descriptor is below the producer index read in `peek_received`, so the
        // kernel wrote it (Acquire) and will not touch it until we release it; it is 16
        // aligned bytes inside the rx mapping.
        let d = unsafe { std::ptr::read(p.cast::<libc::xdp_desc>()) };
        (d.addr, d.len)
    }

    /// Starts loading the first two cache lines of the frame at `addr` (the headers and a
    /// query's start): a received frame was written by the core that ran the receive path, so
    /// reading it costs cache-line transfers that can overlap the previous frame's work.
    #[inline]
    pub fn prefetch(&self, addr: u64) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            let at = (addr as usize).min(self.umem.len.saturating_sub(128));
            let p = self.umem.ptr.wrapping_add(at).cast::<i8>();
            // SAFETY:
            // - SSE, which `prefetcht0` belongs to, is part of every x86_64 CPU (the baseline
            //   target features);
            // - a prefetch is a hint: it reads nothing into the program and cannot fault, whatever
            //   the address; this one lies inside the UMEM mapping anyway (clamped above).
            unsafe {
                _mm_prefetch::<_MM_HINT_T0>(p);
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(64));
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = addr;
    }

    /// Hands `n` rx ring slots back to the kernel (their frames are already ours).
    pub fn release_received(&mut self, n: u32) {
        self.rx.cached_cons = self.rx.cached_cons.wrapping_add(n);
        self.rx.publish_consumer();
    }

    /// Returns the frame holding `addr` to the free stack.
    pub fn recycle(&mut self, addr: u64) {
        self.free.push(addr - addr % FRAME_SIZE as u64);
    }

    /// Takes an idle frame for a reply that did not come in one (a relayed answer).
    pub fn take_frame(&mut self) -> Option<u64> {
        self.free.pop()
    }

    /// Queues the frame at `addr` (`len` bytes) for sending; `false` (and the frame kept ours)
    /// when the tx ring is full.
    pub fn send(&mut self, addr: u64, len: u32) -> bool {
        if self.tx.room(1) == 0 {
            return false;
        }
        let p = self.tx.desc(self.tx.cached_prod, 16);
        // SAFETY: the slot is past the consumer index the kernel published (`room` > 0), so the
        // kernel does not read it until we publish the producer index; 16 aligned bytes inside
        // the tx mapping.
        unsafe { std::ptr::write(p.cast::<libc::xdp_desc>(), libc::xdp_desc { addr, len, options: 0 }) };
        self.tx.cached_prod = self.tx.cached_prod.wrapping_add(1);
        self.unpublished += 1;
        true
    }

    /// Publishes the queued frames and wakes the kernel to send them when it asks for that
    /// (always in copy mode, where sendto() does the sending, 32 frames per call).
    pub fn flush(&mut self) -> io::Result<()> {
        if self.unpublished > 0 {
            self.tx.publish_producer();
            self.unpublished = 0;
        }
        // Bounded: each call sends up to 32 frames of at most RING_SIZE queued.
        for _ in 0..(RING_SIZE / 32 + 1) {
            if self.tx.consumer().load(Ordering::Acquire) == self.tx.cached_prod || !self.tx.needs_wakeup() {
                return Ok(());
            }
            // SAFETY: a zero-length sendto on our socket with no buffer and no address: the
            // kernel reads nothing from user memory.
            let rc = unsafe {
                libc::sendto(self.fd.as_raw_fd(), std::ptr::null(), 0, libc::MSG_DONTWAIT, std::ptr::null(), 0)
            };
            if rc < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    // More to send (the per-call budget), or the device is busy: go on, or
                    // try again at the next flush.
                    Some(libc::EAGAIN) => continue,
                    Some(libc::EBUSY | libc::ENOBUFS | libc::ENETDOWN) => return Ok(()),
                    _ => return Err(e),
                }
            }
        }
        Ok(())
    }

    /// Takes the frames the kernel finished sending back onto the free stack.
    pub fn reap_completions(&mut self) {
        let n = self.comp.available();
        if n == 0 {
            return;
        }
        for i in 0..n {
            let p = self.comp.desc(self.comp.cached_cons.wrapping_add(i), 8);
            // SAFETY: below the producer index the kernel published (Acquire in `available`);
            // 8 aligned bytes inside the completion mapping.
            let addr = unsafe { std::ptr::read(p.cast::<u64>()) };
            self.free.push(addr - addr % FRAME_SIZE as u64);
        }
        self.comp.cached_cons = self.comp.cached_cons.wrapping_add(n);
        self.comp.publish_consumer();
    }

    /// Gives idle frames to the kernel to receive into, keeping [`KEEP_FREE`] for relayed
    /// answers.
    pub fn refill(&mut self) {
        let spare = self.free.len().saturating_sub(KEEP_FREE) as u32;
        if spare == 0 {
            return;
        }
        let n = self.fill.room(spare).min(spare);
        if n == 0 {
            return;
        }
        for _ in 0..n {
            let Some(addr) = self.free.pop() else { break };
            let p = self.fill.desc(self.fill.cached_prod, 8);
            // SAFETY: a slot we may produce into (`room`), 8 aligned bytes inside the fill
            // mapping; the frame is ours (it was on the free stack) and becomes the kernel's
            // when the index is published below.
            unsafe { std::ptr::write(p.cast::<u64>(), addr) };
            self.fill.cached_prod = self.fill.cached_prod.wrapping_add(1);
        }
        self.fill.publish_producer();
    }

    /// Whether the driver waits for a wake-up to receive into the fill ring (zero-copy).
    pub fn fill_needs_wakeup(&self) -> bool {
        self.fill.needs_wakeup()
    }

    /// Wakes the driver to receive (a zero-copy driver that ran out of fill frames).
    pub fn wake_receive(&self) {
        // SAFETY: a zero-length, non-blocking recvfrom on our socket: no buffer, no address.
        unsafe {
            libc::recvfrom(
                self.fd.as_raw_fd(),
                std::ptr::null_mut(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
    }

    /// The kernel's counters for this socket: (dropped: no room in the rx ring or no fill
    /// frame, invalid descriptors).
    pub fn kernel_drops(&self) -> (u64, u64) {
        // SAFETY: all-zero is a valid `xdp_statistics` (plain integers).
        let mut stats: libc::xdp_statistics = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::xdp_statistics>() as libc::socklen_t;
        // SAFETY: `stats` is a live value of `len` bytes the kernel fills; it keeps no pointer.
        let rc = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_XDP,
                libc::XDP_STATISTICS,
                (&mut stats as *mut libc::xdp_statistics).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return (0, 0);
        }
        (
            stats.rx_dropped + stats.rx_ring_full + stats.rx_fill_ring_empty_descs,
            stats.rx_invalid_descs + stats.tx_invalid_descs,
        )
    }
}

/// Idle frames kept off the fill ring for relayed answers and replies in flight.
pub const KEEP_FREE: usize = 256;

/// Waits up to `timeout_ms` for `fds` (poll(2)); returns how many are ready (0 on timeout or
/// a signal).
pub fn wait(fds: &mut [libc::pollfd], timeout_ms: i32) -> usize {
    // SAFETY: `fds` is a live, initialised slice of `pollfd` that the call reads and whose
    // `revents` it writes, for its length; no pointer is kept.
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    rc.max(0) as usize
}
