//! Ethernet, IPv4/IPv6 and UDP framing for the XDP path, without I/O: what a redirected frame
//! holds, and the headers (with checksums) a reply goes out with.
//!
//! ```text
//!  frame ─► parse ─► Incoming { path (MACs, VLAN, our address and port), peer, payload range }
//!                                        │
//!  reply payload written after the headers (same offset as the query's)
//!                                        ▼
//!  write_headers(frame, path, peer, len): Ethernet [+ 802.1Q] + IPv4/IPv6 + UDP, checksums
//! ```
//!
//! [`parse`] is the kernel's receive path in miniature: it drops what the kernel would drop
//! (a bad IPv4 header checksum, a bad UDP checksum, a UDP length past the packet, a martian or
//! multicast source, source port 0) and reports why. The XDP program already let through only
//! unfragmented UDP to a served address and port, with a 20-byte IPv4 header or an IPv6 header
//! followed directly by UDP; [`parse`] checks all of that again rather than trust it.
//!
//! Checksums: IPv6 requires the UDP checksum (RFC 8200 §8.1); for IPv4 it is computed as well,
//! not left 0 (which RFC 768 allows): a resolver behind a link that corrupts a byte should see
//! the damage, as it would from the kernel's path, and computing it over a few hundred bytes
//! costs nanoseconds (benches/xdp.rs).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::Range;

/// Length of an Ethernet header.
pub const ETH_LEN: usize = 14;
/// Length of an 802.1Q tag.
pub const VLAN_LEN: usize = 4;
/// Length of the IPv4 header the XDP path takes (no options).
pub const IPV4_LEN: usize = 20;
/// Length of the IPv6 header.
pub const IPV6_LEN: usize = 40;
/// Length of the UDP header.
pub const UDP_LEN: usize = 8;
/// EtherType of IPv4.
pub const ETH_P_IPV4: u16 = 0x0800;
/// EtherType of IPv6.
pub const ETH_P_IPV6: u16 = 0x86dd;
/// EtherType of an 802.1Q VLAN tag.
pub const ETH_P_8021Q: u16 = 0x8100;
/// IP protocol number of UDP.
pub const IPPROTO_UDP: u8 = 17;
/// The hop limit (IPv6) and TTL (IPv4) of replies, Linux's default.
pub const HOP_LIMIT: u8 = 64;

/// The fixed part of a reply's frame: everything but the client's address and port.
/// Replies to clients behind one router share one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Path {
    /// The reply's destination MAC: the query's source (the client or its router).
    pub dst_mac: [u8; 6],
    /// The reply's source MAC: the query's destination (this interface).
    pub src_mac: [u8; 6],
    /// The 802.1Q tag control information (priority and VLAN id), if the query carried a tag.
    pub vlan: Option<u16>,
    /// Our address: the query's destination.
    pub local: IpAddr,
    /// Our port: the query's destination port.
    pub local_port: u16,
}

impl Path {
    /// The length of the headers before the UDP payload.
    #[inline]
    pub fn header_len(&self) -> usize {
        ETH_LEN
            + if self.vlan.is_some() { VLAN_LEN } else { 0 }
            + if self.local.is_ipv4() { IPV4_LEN } else { IPV6_LEN }
            + UDP_LEN
    }

    /// The largest UDP payload that fits an IP packet of `mtu` bytes on this path.
    #[inline]
    pub fn max_payload(&self, mtu: u32) -> usize {
        let ip = if self.local.is_ipv4() { IPV4_LEN } else { IPV6_LEN };
        (mtu as usize).saturating_sub(ip + UDP_LEN)
    }
}

/// A UDP datagram found in a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming {
    /// The headers a reply goes out with.
    pub path: Path,
    /// The client's address and port.
    pub peer: SocketAddr,
    /// Where the UDP payload lies in the frame.
    pub payload: Range<usize>,
}

/// Why a frame was dropped; the kernel would have dropped it too. Counted, never logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Shorter than its headers say, or than the headers themselves (the client's fault).
    #[error("truncated frame")]
    Truncated,
    /// Not IPv4 or IPv6 carrying UDP directly (the XDP program should not have redirected it).
    #[error("not a UDP datagram the XDP path takes")]
    NotUdp,
    /// IPv4 header with options, a fragment, or a bad header checksum.
    #[error("bad IPv4 header")]
    BadIpHeader,
    /// The UDP length disagrees with the IP length.
    #[error("bad UDP length")]
    BadLength,
    /// The UDP checksum is wrong (or 0 over IPv6, RFC 8200 §8.1).
    #[error("bad UDP checksum")]
    BadChecksum,
    /// A source no reply may go to: multicast, broadcast, loopback, unspecified, port 0.
    #[error("source address or port a reply cannot go to")]
    Martian,
}

#[inline]
fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

#[inline]
fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

/// Adds `data` to a ones' complement sum (RFC 1071) taken in the machine's own byte order,
/// eight bytes at a time with the carry wrapped around; an odd last byte is padded with a zero.
/// The order does not change the sum but for a byte swap (RFC 1071 §2(B)), which [`fold`]
/// undoes, so no byte is swapped per word. Every piece summed before the last must be of even
/// length (addresses, headers), so the 16-bit lanes line up.
#[inline]
pub fn sum(data: &[u8], mut acc: u64) -> u64 {
    let mut words = data.chunks_exact(8);
    for w in &mut words {
        let (s, carry) = acc.overflowing_add(u64::from_ne_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]));
        acc = s + u64::from(carry);
    }
    let rest = words.remainder();
    let mut tail = [0u8; 8];
    tail[..rest.len()].copy_from_slice(rest);
    let (s, carry) = acc.overflowing_add(u64::from_ne_bytes(tail));
    s + u64::from(carry)
}

/// Folds a [`sum`] to 16 bits (not complemented), in network byte order as a number.
#[inline]
pub fn fold(acc: u64) -> u16 {
    let mut acc = (acc & 0xffff_ffff) + (acc >> 32);
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    u16::from_be(acc as u16)
}

/// The sum of the UDP pseudo-header for `src`, `dst` and a UDP length of `len` (both addresses
/// of one family; [`Path`] guarantees that).
#[inline]
fn pseudo(src: IpAddr, dst: IpAddr, len: usize) -> u64 {
    // Zero, protocol and length (IPv4's order; IPv6 puts them as a 32-bit length and three zero
    // bytes before the next header, which sums the same), as bytes like the rest.
    let len = (len as u16).to_be_bytes();
    let acc = sum(&[0, IPPROTO_UDP, len[0], len[1]], 0);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => sum(&d.octets(), sum(&s.octets(), acc)),
        (IpAddr::V6(s), IpAddr::V6(d)) => sum(&d.octets(), sum(&s.octets(), acc)),
        _ => acc,
    }
}

/// Whether a reply may go to `ip`: not unspecified, loopback, multicast or broadcast (the
/// kernel drops such sources as martians), not an IPv4-mapped IPv6 address.
fn reachable(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let first = v4.octets()[0];
            // 0/8, 127/8, 224/4 multicast, 240/4 reserved and the limited broadcast.
            first != 0 && first != 127 && first < 224
        }
        IpAddr::V6(v6) => {
            !(v6.is_unspecified() || v6.is_loopback() || v6.is_multicast() || v6.to_ipv4_mapped().is_some())
        }
    }
}

/// Parses a frame the XDP program redirected: Ethernet (one optional 802.1Q tag), IPv4 without
/// options or IPv6 with UDP as the next header, UDP. Verifies what the kernel verifies.
///
/// A checksum field holding only the pseudo-header sum is accepted as well: that is what a
/// sender with checksum offload leaves for the hardware to finish (CHECKSUM_PARTIAL), and what
/// a local sender on a veth pair hands over as it is.
pub fn parse(frame: &[u8]) -> Result<Incoming, FrameError> {
    if frame.len() < ETH_LEN {
        return Err(FrameError::Truncated);
    }
    let mut dst_mac = [0u8; 6];
    let mut src_mac = [0u8; 6];
    dst_mac.copy_from_slice(&frame[0..6]);
    src_mac.copy_from_slice(&frame[6..12]);
    let mut ethertype = be16(frame, 12);
    let mut l3 = ETH_LEN;
    let mut vlan = None;
    if ethertype == ETH_P_8021Q {
        if frame.len() < ETH_LEN + VLAN_LEN {
            return Err(FrameError::Truncated);
        }
        vlan = Some(be16(frame, 14));
        ethertype = be16(frame, 16);
        l3 += VLAN_LEN;
    }
    // The reply's source is the query's destination and the other way round.
    let (local, remote, udp, udp_room) = match ethertype {
        ETH_P_IPV4 => {
            let ip = frame.get(l3..l3 + IPV4_LEN).ok_or(FrameError::Truncated)?;
            if ip[0] != 0x45 || be16(ip, 6) & 0x3fff != 0 {
                return Err(FrameError::BadIpHeader);
            }
            if ip[9] != IPPROTO_UDP {
                return Err(FrameError::NotUdp);
            }
            if fold(sum(ip, 0)) != 0xffff {
                return Err(FrameError::BadIpHeader);
            }
            let total = be16(ip, 2) as usize;
            if total < IPV4_LEN || l3 + total > frame.len() {
                return Err(FrameError::Truncated);
            }
            let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
            let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
            (IpAddr::V4(dst), IpAddr::V4(src), l3 + IPV4_LEN, total - IPV4_LEN)
        }
        ETH_P_IPV6 => {
            let ip = frame.get(l3..l3 + IPV6_LEN).ok_or(FrameError::Truncated)?;
            if ip[0] >> 4 != 6 || ip[6] != IPPROTO_UDP {
                return Err(FrameError::NotUdp);
            }
            let payload = be16(ip, 4) as usize;
            if l3 + IPV6_LEN + payload > frame.len() {
                return Err(FrameError::Truncated);
            }
            let mut s = [0u8; 16];
            let mut d = [0u8; 16];
            s.copy_from_slice(&ip[8..24]);
            d.copy_from_slice(&ip[24..40]);
            (IpAddr::V6(Ipv6Addr::from(d)), IpAddr::V6(Ipv6Addr::from(s)), l3 + IPV6_LEN, payload)
        }
        _ => return Err(FrameError::NotUdp),
    };
    let head = frame.get(udp..udp + UDP_LEN).ok_or(FrameError::Truncated)?;
    let src_port = be16(head, 0);
    let dst_port = be16(head, 2);
    let udp_len = be16(head, 4) as usize;
    // Shorter than the IP payload is padding the kernel trims; longer is a lie.
    if udp_len < UDP_LEN || udp_len > udp_room {
        return Err(FrameError::BadLength);
    }
    let check = be16(head, 6);
    if check != 0 || local.is_ipv6() {
        let pseudo = pseudo(remote, local, udp_len);
        if check == 0 || (fold(sum(&frame[udp..udp + udp_len], pseudo)) != 0xffff && check != fold(pseudo)) {
            return Err(FrameError::BadChecksum);
        }
    }
    // The reply swaps the MACs: a group address (the low bit of the first byte) as the query's
    // source would broadcast the reply to the segment, and as its destination would become the
    // reply's source, which no valid frame has. The kernel's path answers from the interface's
    // own MAC; this one drops them.
    if src_port == 0 || !reachable(remote) || src_mac[0] & 1 != 0 || dst_mac[0] & 1 != 0 {
        return Err(FrameError::Martian);
    }
    Ok(Incoming {
        path: Path { dst_mac: src_mac, src_mac: dst_mac, vlan, local, local_port: dst_port },
        peer: SocketAddr::new(remote, src_port),
        payload: udp + UDP_LEN..udp + udp_len,
    })
}

/// Writes the headers of a reply of `payload_len` bytes (already in place after
/// `path.header_len()` bytes) from `path` to `peer`, with the IPv4 header checksum and the UDP
/// checksum; returns the frame's length. `None` if `peer` is not of the path's family or the
/// frame is too short for headers and payload.
#[inline]
pub fn write_headers(frame: &mut [u8], path: &Path, peer: SocketAddr, payload_len: usize) -> Option<usize> {
    let total = path.header_len() + payload_len;
    if frame.len() < total || path.local.is_ipv4() != peer.is_ipv4() {
        return None;
    }
    frame[0..6].copy_from_slice(&path.dst_mac);
    frame[6..12].copy_from_slice(&path.src_mac);
    let mut at = 12;
    if let Some(tci) = path.vlan {
        put16(frame, at, ETH_P_8021Q);
        put16(frame, at + 2, tci);
        at += VLAN_LEN;
    }
    let udp_len = UDP_LEN + payload_len;
    let udp = match (path.local, peer.ip()) {
        (IpAddr::V4(local), IpAddr::V4(remote)) => {
            put16(frame, at, ETH_P_IPV4);
            let ip = &mut frame[at + 2..at + 2 + IPV4_LEN];
            // Version 4, IHL 5, no TOS; DF set and ID 0, as Linux sends UDP on a socket with
            // path MTU discovery (its default).
            ip[0..2].copy_from_slice(&[0x45, 0]);
            put16(ip, 2, (IPV4_LEN + udp_len) as u16);
            ip[4..10].copy_from_slice(&[0, 0, 0x40, 0, HOP_LIMIT, IPPROTO_UDP]);
            ip[10..12].copy_from_slice(&[0, 0]);
            ip[12..16].copy_from_slice(&local.octets());
            ip[16..20].copy_from_slice(&remote.octets());
            let check = !fold(sum(ip, 0));
            put16(ip, 10, check);
            at + 2 + IPV4_LEN
        }
        (IpAddr::V6(local), IpAddr::V6(remote)) => {
            put16(frame, at, ETH_P_IPV6);
            let ip = &mut frame[at + 2..at + 2 + IPV6_LEN];
            ip[0..4].copy_from_slice(&[0x60, 0, 0, 0]);
            put16(ip, 4, udp_len as u16);
            ip[6] = IPPROTO_UDP;
            ip[7] = HOP_LIMIT;
            ip[8..24].copy_from_slice(&local.octets());
            ip[24..40].copy_from_slice(&remote.octets());
            at + 2 + IPV6_LEN
        }
        _ => return None,
    };
    put16(frame, udp, path.local_port);
    put16(frame, udp + 2, peer.port());
    put16(frame, udp + 4, udp_len as u16);
    put16(frame, udp + 6, 0);
    let check = !fold(sum(&frame[udp..udp + udp_len], pseudo(path.local, peer.ip(), udp_len)));
    // A computed 0 goes out as all ones: 0 means "no checksum" (RFC 768), forbidden in IPv6.
    put16(frame, udp + 6, if check == 0 { 0xffff } else { check });
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
    const OUR_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];

    fn path(local: IpAddr, vlan: Option<u16>) -> Path {
        Path { dst_mac: OUR_MAC, src_mac: CLIENT_MAC, vlan, local, local_port: 40000 }
    }

    /// A query frame from `client` to `server`, built with the same writer (its direction
    /// turned around) and checked against an independent checksum below.
    /// Recomputes the IPv4 header checksum of an untagged frame after a test changed the header.
    fn reseal_ipv4(frame: &mut [u8]) {
        put16(frame, 24, 0);
        let check = !fold(sum(&frame[14..34], 0));
        put16(frame, 24, check);
    }

    fn query_frame(client: SocketAddr, server: SocketAddr, vlan: Option<u16>, payload: &[u8]) -> Vec<u8> {
        let from_client =
            Path { dst_mac: OUR_MAC, src_mac: CLIENT_MAC, vlan, local: client.ip(), local_port: client.port() };
        let h = from_client.header_len();
        let mut frame = vec![0u8; h + payload.len()];
        frame[h..].copy_from_slice(payload);
        let n = write_headers(&mut frame, &from_client, server, payload.len()).unwrap();
        assert_eq!(n, frame.len());
        frame
    }

    /// RFC 1071's reference: a plain sum of 16-bit words, carries folded at the end.
    fn reference_checksum(parts: &[&[u8]]) -> u16 {
        let bytes: Vec<u8> = parts.concat();
        let mut s: u32 = 0;
        for pair in bytes.chunks(2) {
            let w = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
            s += u32::from(w);
        }
        while s >> 16 != 0 {
            s = (s & 0xffff) + (s >> 16);
        }
        !(s as u16)
    }

    #[test]
    fn the_fast_sum_matches_the_reference_for_every_length() {
        let data: Vec<u8> = (0..300u32).map(|i| (i * 37 % 251) as u8).collect();
        for len in 0..data.len() {
            let fast = !fold(sum(&data[..len], 0));
            assert_eq!(fast, reference_checksum(&[&data[..len]]), "length {len}");
        }
    }

    #[test]
    fn ipv4_reply_headers_carry_valid_checksums() {
        let client: SocketAddr = "198.18.0.2:53000".parse().unwrap();
        let server: SocketAddr = "198.18.0.1:53".parse().unwrap();
        let payload = b"\x12\x34\x81\x80\x00\x01\x00\x00\x00\x00\x00\x00\x03abc\x00\x00\x01\x00\x01";
        let frame = query_frame(client, server, None, payload);
        // The IPv4 header checksum, by the reference.
        assert_eq!(reference_checksum(&[&frame[14..24], &[0, 0], &frame[26..34]]), be16(&frame, 24));
        // The UDP checksum over the pseudo-header, by the reference.
        let udp = &frame[34..];
        let pseudo = [&frame[26..34], &[0, 17], &(udp.len() as u16).to_be_bytes()[..]].concat();
        assert_eq!(reference_checksum(&[&pseudo, &udp[..6], &[0, 0], &udp[8..]]), be16(udp, 6));
        let parsed = parse(&frame).unwrap();
        assert_eq!(parsed.peer, client);
        assert_eq!(parsed.path.local, server.ip());
        assert_eq!(parsed.path.local_port, 53);
        assert_eq!(parsed.path.dst_mac, CLIENT_MAC);
        assert_eq!(&frame[parsed.payload.clone()], payload);
    }

    #[test]
    fn a_reply_written_in_place_parses_back_as_the_query_turned_around() {
        for (client, server, vlan) in [
            ("198.18.0.2:40000", "198.18.0.1:53", None),
            ("198.18.0.2:40000", "198.18.0.1:53", Some(0x2064)),
            ("[fd00:19::2]:40000", "[fd00:19::1]:53", None),
            ("[fd00:19::2]:40000", "[fd00:19::1]:53", Some(7)),
        ] {
            let client: SocketAddr = client.parse().unwrap();
            let server: SocketAddr = server.parse().unwrap();
            let mut frame = query_frame(client, server, vlan, &[0xab; 33]);
            let q = parse(&frame).unwrap();
            assert_eq!(q.path.vlan, vlan);
            let reply = [0xcd; 100];
            let h = q.path.header_len();
            assert_eq!(h, q.payload.start);
            frame.resize(h + reply.len(), 0);
            frame[h..].copy_from_slice(&reply);
            let n = write_headers(&mut frame, &q.path, q.peer, reply.len()).unwrap();
            let back = parse(&frame[..n]).unwrap();
            assert_eq!(back.peer, server, "{client}");
            assert_eq!(back.path.local, client.ip());
            assert_eq!(back.path.local_port, client.port());
            assert_eq!(back.path.dst_mac, OUR_MAC);
            assert_eq!(back.path.src_mac, CLIENT_MAC);
            assert_eq!(&frame[back.payload], &reply[..]);
        }
    }

    #[test]
    fn what_the_kernel_drops_is_dropped() {
        let client: SocketAddr = "198.18.0.2:40000".parse().unwrap();
        let server: SocketAddr = "198.18.0.1:53".parse().unwrap();
        let good = query_frame(client, server, None, &[1; 20]);
        assert!(parse(&good).is_ok());
        let mut bad_udp = good.clone();
        *bad_udp.last_mut().unwrap() ^= 1;
        assert_eq!(parse(&bad_udp), Err(FrameError::BadChecksum));
        let mut bad_ip = good.clone();
        bad_ip[22] = 63; // TTL changed, header checksum not
        assert_eq!(parse(&bad_ip), Err(FrameError::BadIpHeader));
        // Fragments, with a header checksum that holds: refused for being fragments.
        for (flags, offset) in [(0x20, 0), (0, 1), (0x1f, 0xff)] {
            let mut fragment = good.clone();
            fragment[20] = flags;
            fragment[21] = offset;
            reseal_ipv4(&mut fragment);
            assert_eq!(parse(&fragment), Err(FrameError::BadIpHeader), "flags {flags:#x} offset {offset}");
        }
        // The don't-fragment bit alone is no fragment.
        let mut dont = good.clone();
        dont[20] = 0x40;
        reseal_ipv4(&mut dont);
        assert!(parse(&dont).is_ok());
        // Group MACs, either way round.
        for at in [0, 6] {
            let mut group = good.clone();
            group[at] |= 1;
            assert_eq!(parse(&group), Err(FrameError::Martian), "group MAC at byte {at}");
        }
        assert_eq!(parse(&good[..good.len() - 1]), Err(FrameError::Truncated));
        let mut long_udp = good.clone();
        put16(&mut long_udp, 38, 29 + 1);
        assert_eq!(parse(&long_udp), Err(FrameError::BadLength));
        // A zero IPv4 checksum means none: accepted.
        let mut unchecked = good.clone();
        put16(&mut unchecked, 40, 0);
        assert!(parse(&unchecked).is_ok());
        // Martian and multicast sources, port 0.
        for (from, why) in [
            ("224.0.0.5:40000", FrameError::Martian),
            ("255.255.255.255:40000", FrameError::Martian),
            ("127.0.0.1:40000", FrameError::Martian),
            ("0.0.0.0:40000", FrameError::Martian),
            ("198.18.0.2:0", FrameError::Martian),
        ] {
            let frame = query_frame(from.parse().unwrap(), server, None, &[1; 20]);
            assert_eq!(parse(&frame), Err(why), "{from}");
        }
        let v6 = query_frame("[fd00:19::2]:4000".parse().unwrap(), "[fd00:19::1]:53".parse().unwrap(), None, &[1; 20]);
        assert!(parse(&v6).is_ok());
        let mut zero6 = v6.clone();
        put16(&mut zero6, 14 + 40 + 6, 0);
        assert_eq!(parse(&zero6), Err(FrameError::BadChecksum), "IPv6 requires the UDP checksum");
        for from in ["[ff02::1]:4000", "[::1]:4000", "[::]:4000", "[::ffff:198.18.0.2]:4000"] {
            let frame = query_frame(from.parse().unwrap(), "[fd00:19::1]:53".parse().unwrap(), None, &[1; 20]);
            assert_eq!(parse(&frame), Err(FrameError::Martian), "{from}");
        }
    }

    #[test]
    fn a_partial_checksum_from_an_offloading_sender_is_accepted() {
        for (client, server) in [("198.18.0.2:40000", "198.18.0.1:53"), ("[fd00:19::2]:40000", "[fd00:19::1]:53")] {
            let client: SocketAddr = client.parse().unwrap();
            let server: SocketAddr = server.parse().unwrap();
            let mut frame = query_frame(client, server, None, &[9; 30]);
            let udp = frame.len() - 38;
            let partial = fold(pseudo(client.ip(), server.ip(), 38));
            put16(&mut frame, udp + 6, partial);
            assert!(parse(&frame).is_ok(), "{client}");
            put16(&mut frame, udp + 6, partial ^ 0x0100);
            assert_eq!(parse(&frame), Err(FrameError::BadChecksum));
        }
    }

    #[test]
    fn ethernet_padding_past_the_ip_length_is_ignored() {
        let client: SocketAddr = "198.18.0.2:40000".parse().unwrap();
        let mut frame = query_frame(client, "198.18.0.1:53".parse().unwrap(), None, &[7; 4]);
        let len = frame.len();
        frame.resize(60, 0); // the minimum Ethernet frame
        let q = parse(&frame).unwrap();
        assert_eq!(q.payload.end, len);
    }

    #[test]
    fn the_path_bounds_the_payload_by_the_mtu() {
        let v4 = path("198.18.0.1".parse().unwrap(), None);
        let v6 = path("fd00:19::1".parse().unwrap(), Some(1));
        assert_eq!(v4.max_payload(1500), 1472);
        assert_eq!(v6.max_payload(1500), 1452);
        assert_eq!(v6.max_payload(1280), 1232);
        assert_eq!(v4.header_len(), 42);
        assert_eq!(v6.header_len(), 66);
        let mut small = [0u8; 50];
        assert_eq!(write_headers(&mut small, &v4, "198.18.0.2:1".parse().unwrap(), 9), None);
        assert_eq!(write_headers(&mut small, &v4, "[fd00::1]:1".parse().unwrap(), 1), None);
    }
}
