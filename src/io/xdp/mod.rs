//! The AF_XDP backend: UDP DNS answered from an interface's receive queues, before the kernel's
//! network stack sees the frames.
//!
//! ```text
//!  set_up(interface, listen)                                  (main thread, before any worker)
//!    ├─ interface: index, MTU, MAC, XDP program already there? ─► refuse, naming its holder
//!    ├─ served: the listen addresses on the interface (0.0.0.0 / :: → all of its addresses)
//!    ├─ XSKMAP (one slot per RX queue); per queue an XSK with its own UMEM (zero-copy tried
//!    │  first, else copy mode), put in the map at its queue
//!    └─ program (program.rs) loaded, attached through a BPF link: native, else generic
//!
//!  serve(queue, handler, stop)                                 (one worker thread per queue)
//!    completions → free frames → fill ring
//!    rx ring ─► frame::parse ─► handler.handle_frame(payload, peer, path, MTU cap)
//!            ─► reply written over the query, frame::write_headers ─► tx ring ─► sendto kick
//!    idle: poll(XSK, stop pipe, the handler's epoll) until the next tick
//!    relayed answers: Outbox::frames → a free frame with the client's path → tx ring
//! ```
//!
//! Everything the program does not take (TCP, ARP, ICMP, fragments, other ports and addresses)
//! goes on to the kernel, where dnlb's sockets stay bound as without XDP: io_uring (or
//! portable) workers still serve every listen address, the XDP workers add to them.
//! The link is a descriptor: the program leaves with the process, however it ends (SIGKILL
//! included). A program someone else attached is never replaced.

pub mod frame;
pub mod program;
mod sys;
pub mod xsk;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use self::frame::Path;
use self::program::{Action, Filter, MAX_TARGETS};
use self::xsk::{Mode, Xsk, MAX_FRAME};
use super::{DropReason, FrameSink, Handler, Outbox, Stop, MAX_DATAGRAM, TICK};

/// Frames taken off the rx ring per pass.
const BATCH: u32 = 64;
/// Under load (the rx ring never empty) the handler's epoll descriptor is looked at this often.
const EXTRA_EVERY: Duration = Duration::from_millis(1);

/// Why XDP could not be set up. The environment's doing (interface, kernel, driver,
/// capabilities) or another program's; each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    /// No interface of that name.
    #[error("server.xdp.interface: no interface `{0}` here: name one `ip link` lists")]
    NoInterface(String),
    /// None of the listen addresses is one of the interface's.
    #[error(
        "none of server.listen's addresses is on {interface} (it has {has}): listen on one of them, or on 0.0.0.0:53 / [::]:53"
    )]
    NoAddress {
        /// The interface.
        interface: String,
        /// Its addresses.
        has: String,
    },
    /// More (address, port) pairs than the program compares.
    #[error("{interface}: {count} address/port pairs to serve; the XDP program takes at most {MAX_TARGETS}: listen on fewer addresses")]
    TooManyTargets {
        /// The interface.
        interface: String,
        /// The pairs.
        count: usize,
    },
    /// The interface already carries an XDP program (described, with how to remove it).
    #[error("{0}")]
    Busy(String),
    /// A step the kernel refused.
    #[error("XDP on {interface}: {step}: {source}; {hint}")]
    Kernel {
        /// The interface.
        interface: String,
        /// The step that failed.
        step: &'static str,
        /// What the kernel said.
        source: io::Error,
        /// What to do about it.
        hint: &'static str,
    },
    /// The verifier refused the program (a bug of ours: the log says where).
    #[error("the kernel's verifier refused dnlb's XDP program ({source}): {log}")]
    Verifier {
        /// What bpf() said.
        source: io::Error,
        /// The end of the verifier's log.
        log: String,
    },
}

/// What to do about a refused step, by the error.
fn hint(step: &'static str, e: &io::Error) -> &'static str {
    match (step, e.raw_os_error()) {
        (_, Some(libc::EPERM | libc::EACCES)) if step == "UMEM registration" => {
            "the UMEM (8 MiB per queue) is locked memory: grant CAP_IPC_LOCK or raise the memlock limit (LimitMEMLOCK=, ulimit -l)"
        }
        (_, Some(libc::ENOMEM)) => {
            "the UMEM (8 MiB per queue) is locked memory: grant CAP_IPC_LOCK or raise the memlock limit (LimitMEMLOCK=, ulimit -l)"
        }
        (_, Some(libc::EPERM | libc::EACCES)) => {
            "XDP needs CAP_NET_ADMIN, CAP_BPF (CAP_SYS_ADMIN before Linux 5.8), CAP_NET_RAW and CAP_IPC_LOCK: run as root, or grant them (dist/dnlb.service)"
        }
        (_, Some(libc::ENOSYS)) => {
            "bpf() is missing or filtered: a kernel without BPF, or a seccomp filter (systemd: add bpf to SystemCallFilter=)"
        }
        (_, Some(libc::EAFNOSUPPORT)) => {
            "the kernel has no AF_XDP sockets (CONFIG_XDP_SOCKETS), or a filter refuses them (systemd: add AF_XDP to RestrictAddressFamilies=)"
        }
        (_, Some(libc::EOPNOTSUPP | libc::EINVAL)) => {
            "the driver or the kernel does not support this (XDP links need Linux 5.9 or newer)"
        }
        _ => "see the kernel's message above",
    }
}

/// The program attached to an interface, with what it serves; dropping it detaches the
/// program (the link closes).
pub struct Attachment {
    /// The BPF link: the program stays attached exactly as long as this is open.
    _link: OwnedFd,
    /// The program.
    _program: OwnedFd,
    /// The XSKMAP.
    _map: OwnedFd,
    /// The interface.
    pub interface: String,
    /// "native" (in the driver) or "generic" (after the driver, any interface).
    pub attach_mode: &'static str,
    /// The (address, port) pairs the program redirects.
    pub served: Vec<SocketAddr>,
    /// The interface's MTU.
    pub mtu: u32,
}

/// One receive queue's XSK, served by one worker.
pub struct Queue {
    xsk: Xsk,
    mtu: u32,
}

impl Queue {
    /// The queue's index on its interface.
    pub fn index(&self) -> u32 {
        self.xsk.queue
    }

    /// Whether the XSK is bound in zero-copy or copy mode.
    pub fn mode(&self) -> Mode {
        self.xsk.mode
    }
}

/// The (address, port) pairs of `listen` on an interface with `addresses`: a wildcard listen
/// address stands for every interface address of its family.
pub fn served(listen: &[SocketAddr], addresses: &[IpAddr]) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = Vec::new();
    for l in listen {
        let ips: Vec<IpAddr> = if l.ip().is_unspecified() {
            addresses.iter().copied().filter(|a| a.is_ipv4() == l.is_ipv4()).collect()
        } else {
            addresses.iter().copied().filter(|&a| a == l.ip()).collect()
        };
        for ip in ips {
            let s = SocketAddr::new(ip, l.port());
            if !out.contains(&s) {
                out.push(s);
            }
        }
    }
    out
}

/// The program's filter for `served`.
pub fn filter(served: &[SocketAddr]) -> Filter {
    let mut f = Filter { max_frame: MAX_FRAME as u16, ..Filter::default() };
    for s in served {
        match s.ip() {
            IpAddr::V4(a) => f.v4.push((a, s.port())),
            IpAddr::V6(a) => f.v6.push((a, s.port())),
        }
    }
    f
}

/// Sets XDP up on `interface` for the `listen` addresses it has: one XSK per receive queue and
/// the program attached. Nothing stays behind on failure (every descriptor made is closed).
pub fn set_up(interface: &str, listen: &[SocketAddr]) -> Result<(Attachment, Vec<Queue>), XdpError> {
    let kernel = |step: &'static str| {
        move |source: io::Error| XdpError::Kernel {
            interface: interface.to_string(),
            step,
            hint: hint(step, &source),
            source,
        }
    };
    let ifindex = sys::interface_index(interface).map_err(|_| XdpError::NoInterface(interface.to_string()))?;
    let link = sys::link(ifindex).map_err(kernel("netlink link query"))?;
    if !link.xdp.is_empty() {
        return Err(XdpError::Busy(describe_attached(interface, ifindex, &link.xdp)));
    }
    let addresses = sys::interface_addresses(interface).map_err(kernel("reading the interface's addresses"))?;
    let served = served(listen, &addresses);
    if served.is_empty() {
        let has: Vec<String> = addresses.iter().map(ToString::to_string).collect();
        let has = if has.is_empty() { "no address".to_string() } else { has.join(", ") };
        return Err(XdpError::NoAddress { interface: interface.to_string(), has });
    }
    if served.len() > MAX_TARGETS {
        return Err(XdpError::TooManyTargets { interface: interface.to_string(), count: served.len() });
    }
    // The queues in use (ethtool channels); the allocated count where the driver has no channels.
    let queues = sys::rx_queues(interface).ok().filter(|&n| n > 0).unwrap_or(link.rx_queues).clamp(1, 1024);
    let map = sys::create_xsk_map(queues).map_err(kernel("creating the XSKMAP"))?;
    let mut sockets = Vec::with_capacity(queues as usize);
    for q in 0..queues {
        let xsk = match Xsk::open(ifindex, q, Mode::ZeroCopy) {
            Ok(x) => x,
            Err(_) => Xsk::open(ifindex, q, Mode::Copy).map_err(|e| XdpError::Kernel {
                interface: interface.to_string(),
                step: e.step,
                hint: hint(e.step, &e.source),
                source: e.source,
            })?,
        };
        sys::map_set(map.as_fd(), q, xsk.fd()).map_err(kernel("adding an XSK to the XSKMAP"))?;
        sockets.push(Queue { xsk, mtu: link.mtu });
    }
    let insns = program::assemble(&filter(&served), Action::Redirect(map.as_raw_fd()));
    let program = sys::load_xdp_program(&insns, "dnlb_xdp").map_err(|r| match r.error.raw_os_error() {
        Some(libc::EPERM) | Some(libc::ENOSYS) => kernel("loading the XDP program")(r.error),
        _ => XdpError::Verifier { source: r.error, log: r.log },
    })?;
    let (link_fd, attach_mode) = match sys::attach_xdp_link(program.as_fd(), ifindex, sys::XDP_FLAGS_DRV_MODE) {
        Ok(fd) => (fd, "native"),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY | libc::EEXIST)) => {
            return Err(busy_now(interface, ifindex, e));
        }
        Err(_) => match sys::attach_xdp_link(program.as_fd(), ifindex, sys::XDP_FLAGS_SKB_MODE) {
            Ok(fd) => (fd, "generic"),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY | libc::EEXIST)) => {
                return Err(busy_now(interface, ifindex, e));
            }
            Err(e) => return Err(kernel("attaching the XDP program")(e)),
        },
    };
    let attachment = Attachment {
        _link: link_fd,
        _program: program,
        _map: map,
        interface: interface.to_string(),
        attach_mode,
        served,
        mtu: link.mtu,
    };
    Ok((attachment, sockets))
}

/// The interface got a program between our look and our attach.
fn busy_now(interface: &str, ifindex: u32, e: io::Error) -> XdpError {
    match sys::link(ifindex) {
        Ok(l) if !l.xdp.is_empty() => XdpError::Busy(describe_attached(interface, ifindex, &l.xdp)),
        _ => XdpError::Kernel {
            interface: interface.to_string(),
            step: "attaching the XDP program",
            source: e,
            hint: "another XDP program is attached: see `ip link show`",
        },
    }
}

/// Says which program is attached to `interface`, who holds it and how to remove it.
fn describe_attached(interface: &str, ifindex: u32, attached: &[(&'static str, u32)]) -> String {
    let links = sys::xdp_links();
    let mut parts = Vec::new();
    for &(mode, id) in attached {
        let name = sys::program_name(id).ok().filter(|n| !n.is_empty()).unwrap_or_else(|| "(unnamed)".to_string());
        let holders = holders(id);
        let by_link =
            links.iter().any(|&(_, prog, index)| prog == id && index == ifindex) || holders.iter().any(|h| h.link);
        let who: Vec<String> = holders.iter().map(|h| format!("{} (pid {})", h.command, h.pid)).collect();
        let held = if who.is_empty() { String::new() } else { format!(", held by {}", who.join(", ")) };
        let fix = match (by_link, who.is_empty()) {
            (true, false) => "stop that process: its BPF link detaches the program when it exits".to_string(),
            (true, true) => {
                "a pinned BPF link holds it: find the pin with `bpftool link show` and remove it from /sys/fs/bpf"
                    .to_string()
            }
            (false, _) => {
                let off = match mode {
                    "generic" => "xdpgeneric",
                    "offloaded" => "xdpoffload",
                    _ => "xdpdrv",
                };
                let stop = if who.is_empty() { String::new() } else { "stop its owner, then ".to_string() };
                format!("{stop}remove it with `ip link set dev {interface} {off} off`")
            }
        };
        parts.push(format!("program `{name}` (id {id}, {mode} mode{held}); {fix}"));
    }
    format!("{interface} already has an XDP program, which dnlb never replaces: {}", parts.join("; "))
}

/// A process holding a descriptor of a BPF program.
struct Holder {
    pid: u32,
    command: String,
    /// Through a BPF link (else the program's own descriptor).
    link: bool,
}

/// The processes holding program `id`, from `/proc/*/fdinfo` (only where we may read them).
/// Bounded: at most 200,000 descriptors are looked at.
fn holders(id: u32) -> Vec<Holder> {
    let mut found = Vec::new();
    let mut budget = 200_000usize;
    let want = format!("prog_id:\t{id}");
    let Ok(procs) = std::fs::read_dir("/proc") else { return found };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else { continue };
        for fd in fds.flatten() {
            if budget == 0 {
                return found;
            }
            budget -= 1;
            let Ok(target) = std::fs::read_link(fd.path()) else { continue };
            let target = target.to_string_lossy();
            let link = target == "anon_inode:bpf-link";
            if !link && target != "anon_inode:bpf-prog" {
                continue;
            }
            let info = p.path().join("fdinfo").join(fd.file_name());
            let holds = std::fs::read_to_string(info).is_ok_and(|t| t.lines().any(|l| l.trim_end() == want));
            if holds && !found.iter().any(|h: &Holder| h.pid == pid && h.link == link) {
                let command = std::fs::read_to_string(p.path().join("comm")).unwrap_or_default().trim().to_string();
                found.push(Holder { pid, command, link });
            }
        }
    }
    found
}

/// Gives up the capabilities the set-up needed (CAP_NET_ADMIN, CAP_NET_RAW, CAP_BPF,
/// CAP_IPC_LOCK, CAP_SYS_ADMIN): the XSKs, the map and the link work without them once made.
/// Applies to the calling thread and the threads it starts afterwards.
pub fn give_up_capabilities() -> io::Result<()> {
    sys::drop_capabilities(&[sys::CAP_NET_ADMIN, sys::CAP_NET_RAW, sys::CAP_BPF, sys::CAP_IPC_LOCK, sys::CAP_SYS_ADMIN])
}

/// Loads the program for `filter` in its test form (a match returns `XDP_REDIRECT` without
/// redirecting) and runs each of `frames` through it in the kernel; returns the actions. Needs
/// CAP_BPF (or CAP_SYS_ADMIN); for tests and diagnostics.
pub fn dry_run(filter: &Filter, frames: &[Vec<u8>]) -> io::Result<Vec<u32>> {
    let insns = program::assemble(filter, Action::Report);
    let prog = sys::load_xdp_program(&insns, "dnlb_xdp_test")
        .map_err(|r| io::Error::new(r.error.kind(), format!("{}: {}", r.error, r.log)))?;
    frames.iter().map(|f| sys::test_run(prog.as_fd(), f)).collect()
}

/// The XSK as the outbox sees it: replies to relayed questions go out in idle frames.
struct Sender<'a> {
    xsk: &'a mut Xsk,
    mtu: u32,
}

impl FrameSink for Sender<'_> {
    fn send(&mut self, peer: SocketAddr, path: &Path, write: &mut dyn FnMut(&mut [u8]) -> usize) -> bool {
        let Some(addr) = self.xsk.take_frame() else { return false };
        let frame = self.xsk.frame(addr);
        let hdr = path.header_len();
        let cap = path.max_payload(self.mtu).min(frame.len().saturating_sub(hdr));
        let n = write(&mut frame[hdr..hdr + cap]);
        if n == 0 {
            self.xsk.recycle(addr);
            return true;
        }
        match frame::write_headers(frame, path, peer, n.min(cap)) {
            Some(total) if self.xsk.send(addr, total as u32) => true,
            _ => {
                self.xsk.recycle(addr);
                false
            }
        }
    }
}

/// Answers the frame at `addr` (`len` bytes) in place; returns the reply frame's length.
#[inline]
fn answer<H: Handler>(
    xsk: &mut Xsk,
    mtu: u32,
    scratch: &mut [u8; MAX_FRAME],
    handler: &mut H,
    addr: u64,
    len: u32,
) -> Option<usize> {
    let frame = xsk.frame(addr);
    let len = (len as usize).min(frame.len());
    let incoming = match frame::parse(&frame[..len]) {
        Ok(i) => i,
        Err(_why) => {
            handler.dropped(DropReason::BadFrame, 1);
            return None;
        }
    };
    let payload = incoming.payload.clone();
    // The scratch copy bounds it too: a descriptor no sane kernel gives (a long frame near the
    // start of its chunk) must not index past it.
    if payload.len() > MAX_DATAGRAM.min(scratch.len()) {
        handler.dropped(DropReason::Oversize, 1);
        return None;
    }
    // The query is read while the reply is written over it: a copy (tens of bytes) keeps the
    // two apart.
    let query = &mut scratch[..payload.len()];
    query.copy_from_slice(&frame[payload.clone()]);
    let hdr = payload.start;
    let cap = incoming.path.max_payload(mtu).min(frame.len() - hdr).min(usize::from(u16::MAX));
    let n = handler.handle_frame(query, incoming.peer, &incoming.path, cap as u16, &mut frame[hdr..hdr + cap]);
    if n == 0 {
        return None;
    }
    frame::write_headers(frame, &incoming.path, incoming.peer, n.min(cap))
}

/// Serves `queue` with `handler` until `stop` fires: answers from the rx ring, waits in poll()
/// when it is empty, and serves the handler's epoll descriptor (TCP, the relay) and its tick
/// beside it.
pub fn serve<H: Handler>(queue: &mut Queue, handler: &mut H, stop: &Stop) -> io::Result<()> {
    let Queue { xsk, mtu } = queue;
    let mtu = *mtu;
    let extra = handler.extra_fd().map(|fd| fd.as_raw_fd());
    let pollfd = |fd: i32| libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    let mut fds = [pollfd(xsk.fd().as_raw_fd()), pollfd(stop.reader().as_raw_fd()), pollfd(extra.unwrap_or(-1))];
    let mut scratch = Box::new([0u8; MAX_FRAME]);
    let mut next_tick = Instant::now() + TICK;
    let mut last_extra = Instant::now();
    let mut kernel_drops = 0u64;
    while !stop.fired() {
        xsk.reap_completions();
        xsk.refill();
        let n = xsk.peek_received(BATCH);
        if n == 0 {
            if let Err(e) = xsk.flush() {
                handler.io_error(e);
            }
            if xsk.fill_needs_wakeup() {
                xsk.wake_receive();
            }
            let wait_ms = next_tick.saturating_duration_since(Instant::now()).as_millis().min(100) as i32;
            xsk::wait(&mut fds, wait_ms.max(1));
        } else {
            handler.begin_batch();
            xsk.prefetch(xsk.received(0).0);
            for i in 0..n {
                let (addr, len) = xsk.received(i);
                if i + 1 < n {
                    xsk.prefetch(xsk.received(i + 1).0);
                }
                match answer(xsk, mtu, &mut scratch, handler, addr, len) {
                    Some(total) if xsk.send(addr, total as u32) => {}
                    Some(_) => {
                        handler.dropped(DropReason::NoSendSlot, 1);
                        xsk.recycle(addr);
                    }
                    None => xsk.recycle(addr),
                }
            }
            xsk.release_received(n);
            if let Err(e) = xsk.flush() {
                handler.io_error(e);
            }
            fds[2].revents = 0;
            if extra.is_some() && last_extra.elapsed() >= EXTRA_EVERY {
                xsk::wait(&mut fds[2..], 0);
            }
        }
        let now = Instant::now();
        if fds[2].revents & libc::POLLIN != 0 {
            last_extra = now;
            fds[2].revents = 0;
            handler.extra_ready(&mut Outbox::frames(&mut Sender { xsk: &mut *xsk, mtu }));
            if let Err(e) = xsk.flush() {
                handler.io_error(e);
            }
        }
        if now >= next_tick {
            next_tick = now + TICK;
            handler.tick(&mut Outbox::frames(&mut Sender { xsk: &mut *xsk, mtu }));
            if let Err(e) = xsk.flush() {
                handler.io_error(e);
            }
            let (dropped, _invalid) = xsk.kernel_drops();
            if dropped > kernel_drops {
                handler.dropped(DropReason::NoBuffer, dropped - kernel_drops);
                kernel_drops = dropped;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_serves_every_address_of_its_family_and_a_specific_one_only_itself() {
        let on_interface: Vec<IpAddr> =
            ["198.18.0.1", "198.18.0.9", "fd00:19::1", "fe80::1"].iter().map(|a| a.parse().unwrap()).collect();
        let listen: Vec<SocketAddr> =
            ["0.0.0.0:53", "[fd00:19::1]:5353", "127.0.0.1:53"].iter().map(|a| a.parse().unwrap()).collect();
        let got: Vec<String> = served(&listen, &on_interface).iter().map(ToString::to_string).collect();
        assert_eq!(got, ["198.18.0.1:53", "198.18.0.9:53", "[fd00:19::1]:5353"]);
        let f = filter(&served(&listen, &on_interface));
        assert_eq!(f.v4.len(), 2);
        assert_eq!(f.v6, vec![("fd00:19::1".parse().unwrap(), 5353)]);
        assert!(served(&["10.9.9.9:53".parse().unwrap()], &on_interface).is_empty());
    }

    #[test]
    fn hints_name_the_fix() {
        let eperm = io::Error::from_raw_os_error(libc::EPERM);
        assert!(hint("creating the XSKMAP", &eperm).contains("CAP_BPF"));
        assert!(hint("UMEM registration", &eperm).contains("CAP_IPC_LOCK"));
        assert!(hint("socket", &io::Error::from_raw_os_error(libc::EAFNOSUPPORT)).contains("AF_XDP"));
    }
}
