//! The system calls the XDP set-up needs that std, socket2 and nix do not offer: `bpf()` (map,
//! program, link, test run, object info), a netlink query of one link (MTU, MAC, attached XDP
//! program), the ethtool channel count, the interface's addresses, and giving up capabilities.
//! Each is a thin, checked wrapper; the decisions are in the module above.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::program::Insn;

// bpf() commands.
const BPF_MAP_CREATE: u32 = 0;
const BPF_MAP_UPDATE_ELEM: u32 = 2;
const BPF_PROG_LOAD: u32 = 5;
const BPF_PROG_TEST_RUN: u32 = 10;
const BPF_PROG_GET_FD_BY_ID: u32 = 13;
const BPF_OBJ_GET_INFO_BY_FD: u32 = 15;
const BPF_LINK_CREATE: u32 = 28;
const BPF_LINK_GET_FD_BY_ID: u32 = 30;
const BPF_LINK_GET_NEXT_ID: u32 = 31;
/// `BPF_MAP_TYPE_XSKMAP`.
const MAP_TYPE_XSKMAP: u32 = 17;
/// `BPF_PROG_TYPE_XDP`.
const PROG_TYPE_XDP: u32 = 6;
/// `BPF_XDP`, the attach type of an XDP link.
const ATTACH_XDP: u32 = 37;
/// `BPF_LINK_TYPE_XDP`.
const LINK_TYPE_XDP: u32 = 6;
/// `XDP_FLAGS_SKB_MODE`: generic XDP, in the kernel's receive path after the driver.
pub const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
/// `XDP_FLAGS_DRV_MODE`: native XDP, in the driver.
pub const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

/// The attributes of one `bpf()` command: plain integers and pointers, `#[repr(C)]`, laid out
/// as the kernel's `union bpf_attr` member for that command.
trait Attr {}

#[repr(C)]
struct MapCreate {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
}
impl Attr for MapCreate {}

#[repr(C)]
struct MapUpdate {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}
impl Attr for MapUpdate {}

#[repr(C)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}
impl Attr for ProgLoad {}

#[repr(C)]
struct LinkCreate {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
}
impl Attr for LinkCreate {}

#[repr(C)]
struct TestRun {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
}
impl Attr for TestRun {}

#[repr(C)]
struct GetById {
    id: u32,
    next_id: u32,
    open_flags: u32,
}
impl Attr for GetById {}

#[repr(C)]
struct InfoByFd {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}
impl Attr for InfoByFd {}

/// `bpf(cmd, attr, sizeof attr)`; the non-negative result (a descriptor or 0), or the error.
fn bpf<A: Attr>(cmd: u32, attr: &mut A) -> io::Result<i32> {
    // SAFETY:
    // - `attr` is a live, initialised `#[repr(C)]` value of the layout the kernel expects for
    //   `cmd` (the `Attr` types above), read and written for `size_of::<A>()` bytes only;
    // - every pointer inside it was set by the caller to memory that outlives this call, of the
    //   length the neighbouring size field states;
    // - the kernel keeps no pointer into `attr` after returning.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut A, std::mem::size_of::<A>()) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc as i32)
    }
}

/// Takes ownership of a descriptor the kernel just returned.
fn owned(fd: i32) -> OwnedFd {
    // SAFETY: `fd` was returned by a successful bpf() call that creates a descriptor; nobody
    // else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn name16(name: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    let n = name.len().min(15);
    out[..n].copy_from_slice(&name.as_bytes()[..n]);
    out
}

/// Creates an XSKMAP with `entries` slots (one per RX queue).
pub fn create_xsk_map(entries: u32) -> io::Result<OwnedFd> {
    let mut attr = MapCreate {
        map_type: MAP_TYPE_XSKMAP,
        key_size: 4,
        value_size: 4,
        max_entries: entries,
        map_flags: 0,
        inner_map_fd: 0,
        numa_node: 0,
        map_name: name16("dnlb_xsks"),
    };
    bpf(BPF_MAP_CREATE, &mut attr).map(owned)
}

/// Puts the XSK `socket` into `map` at `key` (its queue).
pub fn map_set(map: BorrowedFd<'_>, key: u32, socket: BorrowedFd<'_>) -> io::Result<()> {
    let value = socket.as_raw_fd() as u32;
    let mut attr = MapUpdate {
        map_fd: map.as_raw_fd() as u32,
        _pad: 0,
        key: &key as *const u32 as u64,
        value: &value as *const u32 as u64,
        flags: 0,
    };
    bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(drop)
}

/// A program the verifier refused, with the end of its log.
#[derive(Debug)]
pub struct Refused {
    /// What bpf() said.
    pub error: io::Error,
    /// The last lines of the verifier's log (empty when it gave none).
    pub log: String,
}

/// Loads `insns` as an XDP program named `name`.
pub fn load_xdp_program(insns: &[Insn], name: &str) -> Result<OwnedFd, Refused> {
    let bytes: Vec<u8> = insns.iter().flat_map(|i| i.to_bytes()).collect();
    // Uses no GPL-only helper, so any license string loads; this is the crate's.
    let license = c"MIT OR Apache-2.0";
    let mut attr = ProgLoad {
        prog_type: PROG_TYPE_XDP,
        insn_cnt: insns.len() as u32,
        insns: bytes.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 0,
        log_size: 0,
        log_buf: 0,
        kern_version: 0,
        prog_flags: 0,
        prog_name: name16(name),
        prog_ifindex: 0,
        expected_attach_type: ATTACH_XDP,
    };
    match bpf(BPF_PROG_LOAD, &mut attr) {
        Ok(fd) => Ok(owned(fd)),
        Err(error) => {
            // Again with the verifier's log, to say why.
            let mut log = vec![0u8; 256 * 1024];
            attr.log_level = 1;
            attr.log_size = log.len() as u32;
            attr.log_buf = log.as_mut_ptr() as u64;
            if let Ok(fd) = bpf(BPF_PROG_LOAD, &mut attr) {
                return Ok(owned(fd));
            }
            let text = CStr::from_bytes_until_nul(&log).map(|c| c.to_string_lossy().into_owned()).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(6).collect();
            Err(Refused { error, log: tail.into_iter().rev().collect::<Vec<_>>().join(" / ") })
        }
    }
}

/// Attaches `prog` to interface `ifindex` through a BPF link (`flags`: the mode); the program
/// stays attached exactly as long as the returned descriptor is open, so it goes when dnlb
/// does, however it ends.
pub fn attach_xdp_link(prog: BorrowedFd<'_>, ifindex: u32, flags: u32) -> io::Result<OwnedFd> {
    let mut attr =
        LinkCreate { prog_fd: prog.as_raw_fd() as u32, target_ifindex: ifindex, attach_type: ATTACH_XDP, flags };
    bpf(BPF_LINK_CREATE, &mut attr).map(owned)
}

/// Runs `prog` once on `frame` in the kernel's test harness; returns the XDP action.
pub fn test_run(prog: BorrowedFd<'_>, frame: &[u8]) -> io::Result<u32> {
    let mut attr = TestRun {
        prog_fd: prog.as_raw_fd() as u32,
        retval: 0,
        data_size_in: frame.len() as u32,
        data_size_out: 0,
        data_in: frame.as_ptr() as u64,
        data_out: 0,
        repeat: 1,
        duration: 0,
    };
    bpf(BPF_PROG_TEST_RUN, &mut attr)?;
    Ok(attr.retval)
}

/// The name of the loaded program with id `id` (needs CAP_SYS_ADMIN).
pub fn program_name(id: u32) -> io::Result<String> {
    let mut attr = GetById { id, next_id: 0, open_flags: 0 };
    let fd = owned(bpf(BPF_PROG_GET_FD_BY_ID, &mut attr)?);
    // struct bpf_prog_info up to and including `name` (offset 64, 16 bytes).
    let mut info = [0u8; 80];
    let mut attr =
        InfoByFd { bpf_fd: fd.as_raw_fd() as u32, info_len: info.len() as u32, info: info.as_mut_ptr() as u64 };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(CStr::from_bytes_until_nul(&info[64..80]).map(|c| c.to_string_lossy().into_owned()).unwrap_or_default())
}

/// The XDP links on the system: (link id, program id, interface index). Empty when they cannot
/// be listed (that needs CAP_SYS_ADMIN).
pub fn xdp_links() -> Vec<(u32, u32, u32)> {
    let mut found = Vec::new();
    let mut id = 0;
    // Bounded: ids only grow, and a system holds far fewer links than this.
    for _ in 0..100_000 {
        let mut next = GetById { id, next_id: 0, open_flags: 0 };
        if bpf(BPF_LINK_GET_NEXT_ID, &mut next).is_err() || next.next_id <= id {
            break;
        }
        id = next.next_id;
        let mut by_id = GetById { id, next_id: 0, open_flags: 0 };
        let Ok(fd) = bpf(BPF_LINK_GET_FD_BY_ID, &mut by_id).map(owned) else { continue };
        // struct bpf_link_info: type, id, prog_id, then (at 16) the union; for XDP its ifindex.
        let mut info = [0u8; 24];
        let mut attr =
            InfoByFd { bpf_fd: fd.as_raw_fd() as u32, info_len: info.len() as u32, info: info.as_mut_ptr() as u64 };
        if bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr).is_err() {
            continue;
        }
        let word = |at: usize| u32::from_ne_bytes([info[at], info[at + 1], info[at + 2], info[at + 3]]);
        if word(0) == LINK_TYPE_XDP {
            found.push((word(4), word(8), word(16)));
        }
    }
    found
}

/// The index of interface `name`.
pub fn interface_index(name: &str) -> io::Result<u32> {
    let c = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `c` is a NUL-terminated string that outlives the call, which only reads it.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(index)
    }
}

/// `struct ethtool_channels`.
#[repr(C)]
#[derive(Default)]
struct EthtoolChannels {
    cmd: u32,
    max_rx: u32,
    max_tx: u32,
    max_other: u32,
    max_combined: u32,
    rx_count: u32,
    tx_count: u32,
    other_count: u32,
    combined_count: u32,
}

/// `struct ifreq` with the `ifr_data` member.
#[repr(C)]
struct IfreqData {
    name: [u8; 16],
    data: *mut libc::c_void,
    _rest: [u8; 16],
}

/// `ETHTOOL_GCHANNELS`.
const ETHTOOL_GCHANNELS: u32 = 0x3c;
/// `SIOCETHTOOL`.
const SIOCETHTOOL: libc::c_ulong = 0x8946;

/// The receive queues of `name` in use now (ethtool's rx + combined channels).
pub fn rx_queues(name: &str) -> io::Result<u32> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").or_else(|_| std::net::UdpSocket::bind("[::]:0"))?;
    let mut channels = EthtoolChannels { cmd: ETHTOOL_GCHANNELS, ..EthtoolChannels::default() };
    let mut req =
        IfreqData { name: name16(name), data: (&mut channels as *mut EthtoolChannels).cast(), _rest: [0; 16] };
    // SAFETY:
    // - `req` is a valid `struct ifreq` whose `ifr_data` points at `channels`, a live
    //   `struct ethtool_channels` the kernel fills (it reads `cmd` first, then writes the
    //   structure of that command's size);
    // - `socket` is open for the call; neither pointer is kept after it returns.
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), SIOCETHTOOL, &mut req as *mut IfreqData) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(channels.rx_count + channels.combined_count)
}

/// The addresses assigned to interface `name`.
pub fn interface_addresses(name: &str) -> io::Result<Vec<IpAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: `getifaddrs` writes one pointer into `head`; the list it builds is ours until
    // `freeifaddrs` below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut found = Vec::new();
    let mut at = head;
    while !at.is_null() {
        // SAFETY: `at` is a node of the list `getifaddrs` returned, which stays valid until it
        // is freed below; each node's name is a NUL-terminated string and its address, when not
        // null, a `sockaddr` of the family it names (sockaddr_in or sockaddr_in6).
        unsafe {
            let node = &*at;
            let matches = !node.ifa_name.is_null() && CStr::from_ptr(node.ifa_name).to_bytes() == name.as_bytes();
            if matches && !node.ifa_addr.is_null() {
                match i32::from((*node.ifa_addr).sa_family) {
                    libc::AF_INET => {
                        let sin = &*node.ifa_addr.cast::<libc::sockaddr_in>();
                        found.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))));
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*node.ifa_addr.cast::<libc::sockaddr_in6>();
                        found.push(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
                    }
                    _ => {}
                }
            }
            at = node.ifa_next;
        }
    }
    // SAFETY: `head` came from `getifaddrs` and is freed once; no reference into it remains.
    unsafe { libc::freeifaddrs(head) };
    Ok(found)
}

// Netlink.
const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const NLM_F_REQUEST: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const IFLA_ADDRESS: u16 = 1;
const IFLA_MTU: u16 = 4;
const IFLA_NUM_RX_QUEUES: u16 = 32;
const IFLA_XDP: u16 = 43;
const IFLA_XDP_ATTACHED: u16 = 2;
const IFLA_XDP_PROG_ID: u16 = 4;
const IFLA_XDP_DRV_PROG_ID: u16 = 5;
const IFLA_XDP_SKB_PROG_ID: u16 = 6;
const IFLA_XDP_HW_PROG_ID: u16 = 7;

/// What a netlink link query says about an interface.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Link {
    /// Its MTU.
    pub mtu: u32,
    /// Its MAC address (all zero when it has none).
    pub mac: [u8; 6],
    /// Receive queues allocated (an upper bound on those in use).
    pub rx_queues: u32,
    /// XDP programs attached: (mode, program id) with mode "native", "generic" or "offloaded".
    pub xdp: Vec<(&'static str, u32)>,
}

/// Reads the rtattrs in `b`: (type without flag bits, payload).
fn attributes(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if b.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let kind = u16::from_ne_bytes([b[2], b[3]]) & 0x3fff;
        if len < 4 || len > b.len() {
            return None;
        }
        let payload = &b[4..len];
        b = &b[len.next_multiple_of(4).min(b.len())..];
        Some((kind, payload))
    })
}

fn u32_of(p: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(p.get(..4)?.try_into().ok()?))
}

/// Parses an RTM_NEWLINK message (header included).
pub fn parse_link(msg: &[u8]) -> io::Result<Link> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "malformed netlink reply");
    if msg.len() < 16 {
        return Err(bad());
    }
    let kind = u16::from_ne_bytes([msg[4], msg[5]]);
    if kind == NLMSG_ERROR {
        let code = msg.get(16..20).and_then(u32_of).map_or(0, |c| c as i32);
        return Err(io::Error::from_raw_os_error(-code));
    }
    if kind != RTM_NEWLINK || msg.len() < 32 {
        return Err(bad());
    }
    let len = (u32::from_ne_bytes([msg[0], msg[1], msg[2], msg[3]]) as usize).min(msg.len());
    let mut link = Link::default();
    for (kind, p) in attributes(msg.get(32..len).ok_or_else(bad)?) {
        match kind {
            IFLA_MTU => link.mtu = u32_of(p).unwrap_or(0),
            IFLA_ADDRESS if p.len() == 6 => link.mac.copy_from_slice(p),
            IFLA_NUM_RX_QUEUES => link.rx_queues = u32_of(p).unwrap_or(0),
            IFLA_XDP => {
                let mut attached = 0u8;
                let mut single = 0;
                for (kind, p) in attributes(p) {
                    let id = u32_of(p).unwrap_or(0);
                    match kind {
                        IFLA_XDP_ATTACHED => attached = p.first().copied().unwrap_or(0),
                        IFLA_XDP_PROG_ID => single = id,
                        IFLA_XDP_DRV_PROG_ID if id != 0 => link.xdp.push(("native", id)),
                        IFLA_XDP_SKB_PROG_ID if id != 0 => link.xdp.push(("generic", id)),
                        IFLA_XDP_HW_PROG_ID if id != 0 => link.xdp.push(("offloaded", id)),
                        _ => {}
                    }
                }
                // One mode attached: the kernel gives its id as PROG_ID alone (XDP_ATTACHED_DRV,
                // _SKB, _HW); several (_MULTI) are listed per mode above.
                let mode = match attached {
                    1 => Some("native"),
                    2 => Some("generic"),
                    3 => Some("offloaded"),
                    _ => None,
                };
                if let (Some(mode), true) = (mode, single != 0 && link.xdp.is_empty()) {
                    link.xdp.push((mode, single));
                }
            }
            _ => {}
        }
    }
    Ok(link)
}

/// Asks the kernel (netlink, RTM_GETLINK) about interface `ifindex`.
pub fn link(ifindex: u32) -> io::Result<Link> {
    // SAFETY: plain socket(2) call; the descriptor is owned at once below.
    let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // nlmsghdr (16 bytes) + ifinfomsg (16 bytes) asking for one index.
    let mut req = [0u8; 32];
    req[0..4].copy_from_slice(&32u32.to_ne_bytes());
    req[4..6].copy_from_slice(&RTM_GETLINK.to_ne_bytes());
    req[6..8].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes());
    req[16] = libc::AF_UNSPEC as u8;
    req[20..24].copy_from_slice(&(ifindex as i32).to_ne_bytes());
    // SAFETY: `req` is a live buffer of the length given; the kernel only reads it.
    let sent = unsafe { libc::send(socket.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 64 * 1024];
    // A netlink socket of our own, asked one question: its reply is the next message; bounded
    // by a receive timeout in case the kernel never answers.
    let tv = libc::timeval { tv_sec: 2, tv_usec: 0 };
    // SAFETY: `tv` is a live `timeval` of the length given, only read.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    // SAFETY: `buf` is a live buffer of the length given; the kernel writes at most that much.
    let n = unsafe { libc::recv(socket.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    parse_link(&buf[..n as usize])
}

// Capabilities.
/// `CAP_NET_ADMIN`.
pub const CAP_NET_ADMIN: u32 = 12;
/// `CAP_NET_RAW`.
pub const CAP_NET_RAW: u32 = 13;
/// `CAP_IPC_LOCK`.
pub const CAP_IPC_LOCK: u32 = 14;
/// `CAP_SYS_ADMIN`.
pub const CAP_SYS_ADMIN: u32 = 21;
/// `CAP_BPF`.
pub const CAP_BPF: u32 = 39;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
const CAP_VERSION_3: u32 = 0x2008_0522;

/// Removes `caps` from the calling thread's effective, permitted and inheritable sets (and so
/// from its ambient set); threads it starts afterwards inherit the smaller sets. Without them in
/// the permitted set there is no way back short of executing another program.
pub fn drop_capabilities(caps: &[u32]) -> io::Result<()> {
    let mut header = CapHeader { version: CAP_VERSION_3, pid: 0 };
    let mut data = [CapData::default(); 2];
    // SAFETY: `header` and `data` are live values of the layout capget(2) expects for version 3
    // (one header, two data words); the kernel writes `data` and keeps no pointer.
    if unsafe { libc::syscall(libc::SYS_capget, &mut header as *mut CapHeader, data.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    for &cap in caps {
        let (word, bit) = ((cap / 32) as usize, 1u32 << (cap % 32));
        if let Some(d) = data.get_mut(word) {
            d.effective &= !bit;
            d.permitted &= !bit;
            d.inheritable &= !bit;
        }
    }
    // SAFETY: as above; capset(2) only reads `header` and `data`.
    if unsafe { libc::syscall(libc::SYS_capset, &mut header as *mut CapHeader, data.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
        v.extend_from_slice(&kind.to_ne_bytes());
        v.extend_from_slice(payload);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v
    }

    fn message(attrs: &[u8]) -> Vec<u8> {
        let mut m = vec![0u8; 32];
        m[0..4].copy_from_slice(&((32 + attrs.len()) as u32).to_ne_bytes());
        m[4..6].copy_from_slice(&RTM_NEWLINK.to_ne_bytes());
        m.extend_from_slice(attrs);
        m
    }

    #[test]
    fn a_link_reply_gives_mtu_mac_queues_and_the_attached_program() {
        let mut attrs = attr(IFLA_MTU, &1500u32.to_ne_bytes());
        attrs.extend(attr(IFLA_ADDRESS, &[2, 0, 0, 0, 0, 1]));
        attrs.extend(attr(IFLA_NUM_RX_QUEUES, &4u32.to_ne_bytes()));
        let mut xdp = attr(IFLA_XDP_ATTACHED, &[2]);
        xdp.extend(attr(IFLA_XDP_PROG_ID, &77u32.to_ne_bytes()));
        attrs.extend(attr(IFLA_XDP | 0x8000, &xdp)); // NLA_F_NESTED set, as the kernel sends it
        let link = parse_link(&message(&attrs)).unwrap();
        assert_eq!(link, Link { mtu: 1500, mac: [2, 0, 0, 0, 0, 1], rx_queues: 4, xdp: vec![("generic", 77)] });
        let none = parse_link(&message(&attr(IFLA_XDP, &attr(IFLA_XDP_ATTACHED, &[0])))).unwrap();
        assert!(none.xdp.is_empty());
    }

    #[test]
    fn a_netlink_error_and_garbage_are_errors_not_panics() {
        let mut err = vec![0u8; 36];
        err[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        err[16..20].copy_from_slice(&(-19i32).to_ne_bytes());
        assert_eq!(parse_link(&err).unwrap_err().raw_os_error(), Some(19));
        for len in 0..40 {
            let junk: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            assert!(parse_link(&junk).is_err(), "{junk:?}");
        }
        // An attribute claiming more than there is ends the walk.
        let mut m = message(&attr(IFLA_MTU, &1500u32.to_ne_bytes()));
        m[32] = 200;
        assert_eq!(parse_link(&m).unwrap().mtu, 0);
    }
}
