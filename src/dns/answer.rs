//! Replies as a copy and a patch.
//!
//! A [`Template`] holds everything of a reply that follows the question, encoded once when a
//! snapshot is built. Its compression pointers refer to the question name at offset 12, whose
//! length and layout are the same in every query for that name, so a reply is:
//!
//! ```text
//!  client packet  [ header | question ] ...            copied verbatim (0x20 case preserved)
//!  reply          [ header'| question | template body | OPT? ]
//!                   ^ ID kept; flags, counts patched     ^ appended when the client sent EDNS
//! ```
//!
//! An address set of a large farm is a [`Ring`] instead: its records, all of one size (their
//! owner is the same pointer to the question), encoded once and stored twice back to back, so the
//! `n` records from any starting position are one contiguous slice. A reply is then a copy of
//! such a [`Window`], cut to as many whole records as fit the client's payload size:
//!
//! ```text
//!  ring     [ r0 r1 r2 ... rk-1 | r0 r1 r2 ... rk-1 ]
//!  window             [ r2 ... rk-1   r0 ]            start 2, n records
//!  reply    [ header'| question | r2 r3 ... (as many as fit) | OPT? ]
//! ```

use std::sync::Arc;

use super::query::{flag, rcode, Query, HEADER_LEN};

/// Size of the OPT record dnlb appends: root name, type, class, TTL, empty RDATA.
pub const OPT_LEN: usize = 11;

/// Everything of a reply after the question, pre-encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// Bits OR-ed into the reply flags: AA and the RCODE.
    pub flags: u16,
    /// Answer, authority and additional record counts.
    pub counts: [u16; 3],
    /// The encoded records.
    pub body: Box<[u8]>,
    /// How many bytes of `body` are the answer and authority sections: the prefix that is kept
    /// when the additional section does not fit (RFC 2181 §9: no TC needed for that).
    pub required_len: usize,
}

impl Template {
    /// A reply with no records and the given RCODE (REFUSED, SERVFAIL, or NODATA when 0).
    pub fn empty(authoritative: bool, rcode: u8) -> Template {
        let aa = if authoritative { flag::AA } else { 0 };
        Template { flags: aa | rcode as u16, counts: [0; 3], body: Box::new([]), required_len: 0 }
    }
}

/// The records of one address set (A or AAAA), each `record_len` bytes, stored twice back to
/// back so that a window of up to `count` records from any start is one slice. Memory is linear in
/// the set: one ring serves every rotation position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ring {
    /// The records, twice; shared by the views that answer with the same servers.
    bytes: Arc<[u8]>,
    /// Bytes per record.
    record_len: usize,
    /// Records in one copy.
    count: usize,
}

impl Ring {
    /// A ring of `records`, `count` records of `record_len` bytes each, encoded back to back.
    /// `None` when `records` is not that many records of that size.
    pub fn new(records: &[u8], record_len: usize, count: usize) -> Option<Ring> {
        if record_len == 0 || records.len() != record_len.checked_mul(count)? {
            return None;
        }
        let mut bytes = Vec::with_capacity(records.len() * 2);
        bytes.extend_from_slice(records);
        bytes.extend_from_slice(records);
        Some(Ring { bytes: bytes.into(), record_len, count })
    }

    /// Records in the ring.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Whether two rings share one encoding.
    pub fn shares(&self, other: &Ring) -> bool {
        Arc::ptr_eq(&self.bytes, &other.bytes)
    }

    /// Bytes of memory the ring holds.
    pub fn size(&self) -> usize {
        self.bytes.len()
    }

    /// The `n` records from position `start` (both reduced to the ring's size), as one slice.
    #[inline]
    pub fn window(&self, start: usize, n: usize) -> Window<'_> {
        let n = n.min(self.count);
        // Callers step `start` through 0..count; reduce only what is out of range (no division
        // on the hot path).
        let start = if start < self.count { start } else { start.checked_rem(self.count).unwrap_or(0) };
        let at = start * self.record_len;
        Window { records: &self.bytes[at..at + n * self.record_len], record_len: self.record_len, count: n }
    }
}

/// Consecutive records of a [`Ring`]: the answer section of a reply, cut to what fits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window<'r> {
    /// The records, whole.
    pub records: &'r [u8],
    /// Bytes per record.
    pub record_len: usize,
    /// Records in the window.
    pub count: usize,
}

/// Where a reply goes, which bounds its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsTransport {
    /// UDP: at most 512 bytes, or the client's EDNS size capped by `max_payload`.
    Udp {
        /// The server's own cap (1232 by default).
        max_payload: u16,
    },
    /// TCP: up to 65,535 bytes.
    Tcp,
}

impl DnsTransport {
    /// The largest reply this query may get over this transport.
    #[inline]
    pub fn limit(self, query: &Query) -> usize {
        match (self, query.edns) {
            (DnsTransport::Tcp, _) => u16::MAX as usize,
            (DnsTransport::Udp { .. }, None) => 512,
            (DnsTransport::Udp { max_payload }, Some(e)) => e.payload.min(max_payload) as usize,
        }
    }
}

/// What a reply turned out as, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// Bytes written.
    pub len: usize,
    /// Whether TC was set.
    pub truncated: bool,
}

#[inline]
fn put16(out: &mut [u8], at: usize, v: u16) {
    out[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

/// Writes the reply to `query` (which arrived as `packet`) from `template` into `out`.
///
/// `out` must hold at least `transport.limit(query)` bytes, capped at `out.len()`.
#[inline]
pub fn write_reply(
    packet: &[u8],
    query: &Query,
    template: &Template,
    transport: DnsTransport,
    out: &mut [u8],
) -> Written {
    let limit = transport.limit(query).min(out.len());
    let opt = if query.edns.is_some() { OPT_LEN } else { 0 };
    let q_end = query.question_end;
    let mut flags = (query.flags & (flag::RD | flag::CD)) | flag::QR | template.flags;
    let mut counts = template.counts;
    let body: &[u8] = if q_end + template.body.len() + opt <= limit {
        &template.body
    } else if q_end + template.required_len + opt <= limit {
        counts[2] = 0;
        &template.body[..template.required_len]
    } else {
        flags |= flag::TC;
        counts = [0; 3];
        &[]
    };
    out[..q_end].copy_from_slice(&packet[..q_end]);
    put16(out, 2, flags);
    put16(out, 4, 1);
    put16(out, 6, counts[0]);
    put16(out, 8, counts[1]);
    put16(out, 10, counts[2] + u16::from(opt != 0));
    let mut len = q_end + body.len();
    out[q_end..len].copy_from_slice(body);
    if let Some(edns) = query.edns {
        len += write_opt(&mut out[len..], 0, edns.dnssec_ok, transport);
    }
    Written { len, truncated: flags & flag::TC != 0 }
}

/// Writes the authoritative NOERROR reply to `query` whose answer section is as many records of
/// `window` as fit the transport's limit (all of them, when they fit). A shorter set of healthy
/// servers is a correct answer, so the reply is not truncated (TC=1) unless not even one record
/// fits, which a limit of at least 512 bytes rules out.
///
/// `out` must hold at least `transport.limit(query)` bytes, capped at `out.len()`.
#[inline]
pub fn write_window(
    packet: &[u8],
    query: &Query,
    window: Window<'_>,
    transport: DnsTransport,
    out: &mut [u8],
) -> Written {
    let limit = transport.limit(query).min(out.len());
    let opt = if query.edns.is_some() { OPT_LEN } else { 0 };
    let q_end = query.question_end;
    let room = limit.saturating_sub(q_end + opt);
    // Usually the whole window fits: no division then.
    let fits = if window.records.len() <= room { window.count } else { room / window.record_len.max(1) };
    let fits = fits.min(window.count).min(u16::MAX as usize);
    let mut flags = (query.flags & (flag::RD | flag::CD)) | flag::QR | flag::AA;
    if fits == 0 && window.count > 0 {
        flags |= flag::TC;
    }
    let body = window.records.get(..fits * window.record_len).unwrap_or_default();
    out[..q_end].copy_from_slice(&packet[..q_end]);
    put16(out, 2, flags);
    out[4..12].copy_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
    put16(out, 6, fits as u16);
    put16(out, 10, u16::from(opt != 0));
    let mut len = q_end + body.len();
    out[q_end..len].copy_from_slice(body);
    if let Some(edns) = query.edns {
        len += write_opt(&mut out[len..], 0, edns.dnssec_ok, transport);
    }
    Written { len, truncated: flags & flag::TC != 0 }
}

/// Writes an OPT record advertising dnlb's own payload size.
#[inline]
pub fn write_opt(out: &mut [u8], extended_rcode: u8, dnssec_ok: bool, transport: DnsTransport) -> usize {
    let payload = match transport {
        DnsTransport::Udp { max_payload } => max_payload,
        DnsTransport::Tcp => super::MAX_UDP_PAYLOAD,
    };
    let do_bit = if dnssec_ok { 0x80 } else { 0 };
    out[..OPT_LEN].copy_from_slice(&[0, 0, 41, 0, 0, extended_rcode, 0, do_bit, 0, 0, 0]);
    put16(out, 3, payload);
    OPT_LEN
}

/// Writes BADVERS (RFC 6891 §6.1.3): the question and an OPT with version 0 and extended RCODE 16.
#[inline]
pub fn write_badvers(packet: &[u8], query: &Query, transport: DnsTransport, out: &mut [u8]) -> usize {
    let q_end = query.question_end;
    out[..q_end].copy_from_slice(&packet[..q_end]);
    put16(out, 2, (query.flags & (flag::RD | flag::CD)) | flag::QR);
    out[4..12].copy_from_slice(&[0, 1, 0, 0, 0, 0, 0, 1]);
    let dnssec_ok = query.edns.is_some_and(|e| e.dnssec_ok);
    q_end + write_opt(&mut out[q_end..], (rcode::BADVERS >> 4) as u8, dnssec_ok, transport)
}

/// Writes a header-only error reply (FORMERR, NOTIMP) for a packet whose question could not be
/// used: ID, opcode and RD are echoed, every count is zero.
#[inline]
pub fn write_header_error(packet: &[u8], rcode: u8, out: &mut [u8]) -> usize {
    out[..HEADER_LEN].fill(0);
    out[..2].copy_from_slice(&packet[..2]);
    let asked = u16::from_be_bytes([packet[2], packet[3]]);
    put16(out, 2, (asked & (flag::OPCODE | flag::RD)) | flag::QR | u16::from(rcode));
    HEADER_LEN
}

/// Cuts a reply of `len` bytes in `reply` down to its header and question with TC=1 and no
/// records: what rate limiting "slips" instead of the answer, so a real client retries over TCP
/// and a spoofed one reflects nothing larger than it sent. Returns the new length (the header
/// alone if the question cannot be walked).
pub fn slip(reply: &mut [u8], len: usize) -> usize {
    let len = len.min(reply.len());
    if len < HEADER_LEN {
        return 0;
    }
    let qdcount = u16::from_be_bytes([reply[4], reply[5]]);
    let mut end = HEADER_LEN;
    let mut walked = false;
    if qdcount == 1 {
        // The question was copied from the query, which the parser took without compression.
        while let Some(&label) = reply[..len].get(end) {
            if label == 0 {
                end += 1 + 4;
                walked = end <= len;
                break;
            }
            if label > 63 {
                break;
            }
            end += 1 + usize::from(label);
        }
    }
    let end = if walked { end } else { HEADER_LEN };
    let qd = u16::from(end > HEADER_LEN);
    put16(reply, 2, u16::from_be_bytes([reply[2], reply[3]]) | flag::TC);
    reply[4..12].copy_from_slice(&[0, qd as u8, 0, 0, 0, 0, 0, 0]);
    end
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::query::{parse, MAX_NAME_LEN};

    #[test]
    fn slip_keeps_header_and_question_only() {
        let mut reply = vec![0xab, 0xcd, 0x85, 0x00, 0, 1, 0, 2, 0, 0, 0, 1];
        reply.extend_from_slice(b"\x03sip\x04test\x00\x00\x01\x00\x01");
        let q_end = reply.len();
        reply.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 1, 0, 4, 127, 0, 0, 1]);
        let len = reply.len();
        assert_eq!(slip(&mut reply, len), q_end);
        assert_eq!(&reply[2..12], &[0x87, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
        let mut header_only = vec![0xab, 0xcd, 0x81, 0x01, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(slip(&mut header_only, 12), 12);
        let mut cut = reply[..16].to_vec();
        assert_eq!(slip(&mut cut, 16), 12, "a question past the end: header alone");
    }

    fn query_packet(edns_payload: Option<u16>) -> Vec<u8> {
        let mut p = vec![0xab, 0xcd, 0x01, 0x10, 0, 1, 0, 0, 0, 0, 0, 0];
        p.extend_from_slice(b"\x01A\x00\x00\x01\x00\x01");
        if let Some(size) = edns_payload {
            p[11] = 1;
            p.extend_from_slice(&[0, 0, 41]);
            p.extend_from_slice(&size.to_be_bytes());
            p.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        }
        p
    }

    fn template(body_len: usize, required_len: usize) -> Template {
        Template { flags: flag::AA, counts: [1, 0, 1], body: vec![7; body_len].into(), required_len }
    }

    #[test]
    fn copies_question_and_patches_header() {
        let p = query_packet(None);
        let mut name = [0; MAX_NAME_LEN];
        let q = parse(&p, &mut name).unwrap();
        let mut out = [0u8; 1500];
        let w = write_reply(&p, &q, &template(20, 10), DnsTransport::Udp { max_payload: 1232 }, &mut out);
        assert_eq!(w, Written { len: p.len() + 20, truncated: false });
        assert_eq!(&out[..2], &[0xab, 0xcd]);
        assert_eq!(u16::from_be_bytes([out[2], out[3]]), flag::QR | flag::AA | flag::RD | flag::CD);
        assert_eq!(&out[4..12], &[0, 1, 0, 1, 0, 0, 0, 1]);
        assert_eq!(&out[12..p.len()], &p[12..], "question echoed with its case");
    }

    #[test]
    fn drops_additionals_then_truncates() {
        let p = query_packet(None);
        let mut name = [0; MAX_NAME_LEN];
        let q = parse(&p, &mut name).unwrap();
        let mut out = [0u8; 1500];
        let udp = DnsTransport::Udp { max_payload: 1232 };
        let w = write_reply(&p, &q, &template(600, 400), udp, &mut out);
        assert_eq!((w.len, w.truncated, out[11]), (p.len() + 400, false, 0));
        let w = write_reply(&p, &q, &template(600, 600), udp, &mut out);
        assert_eq!((w.len, w.truncated, out[7]), (p.len(), true, 0));
        let w = write_reply(&p, &q, &template(600, 600), DnsTransport::Tcp, &mut out);
        assert_eq!((w.len, w.truncated), (p.len() + 600, false));
    }

    #[test]
    fn ring_windows_wrap_and_cut_to_what_fits() {
        let records: Vec<u8> = (0..10u8).flat_map(|i| [i; 16]).collect();
        let ring = Ring::new(&records, 16, 10).unwrap();
        assert!(Ring::new(&records[1..], 16, 10).is_none());
        let w = ring.window(8, 4);
        let firsts: Vec<u8> = w.records.chunks(16).map(|r| r[0]).collect();
        assert_eq!(firsts, vec![8, 9, 0, 1], "wraps through the second copy");
        assert_eq!(ring.window(13, 20).count, 10, "start and length reduced to the ring");

        let p = query_packet(None);
        let mut name = [0; MAX_NAME_LEN];
        let q = parse(&p, &mut name).unwrap();
        let mut out = [0u8; 1500];
        let udp = DnsTransport::Udp { max_payload: 1232 };
        let w = write_reply_window(&p, &q, ring.window(0, 10), udp, &mut out);
        assert_eq!((w.len, w.truncated, out[7]), (p.len() + 160, false, 10));
        let big: Vec<u8> = (0..100u8).flat_map(|i| [i; 16]).collect();
        let ring = Ring::new(&big, 16, 100).unwrap();
        let w = write_reply_window(&p, &q, ring.window(5, 100), udp, &mut out);
        let fit = (512 - p.len()) / 16;
        assert_eq!((w.len, w.truncated, usize::from(out[7])), (p.len() + fit * 16, false, fit), "no EDNS: 512 bytes");
        assert_eq!(out[p.len()], 5, "the window's first record first");
        let mut out = vec![0u8; 65_535];
        let w = write_reply_window(&p, &q, ring.window(5, 100), DnsTransport::Tcp, &mut out);
        assert_eq!((w.len, out[7]), (p.len() + 1600, 100));
    }

    fn write_reply_window(p: &[u8], q: &Query, w: Window<'_>, t: DnsTransport, out: &mut [u8]) -> Written {
        let written = write_window(p, q, w, t, out);
        assert_eq!(u16::from_be_bytes([out[2], out[3]]) & flag::AA, flag::AA);
        written
    }

    #[test]
    fn edns_raises_the_limit_and_adds_opt() {
        let p = query_packet(Some(4096));
        let mut name = [0; MAX_NAME_LEN];
        let q = parse(&p, &mut name).unwrap();
        let mut out = [0u8; 1500];
        let w = write_reply(&p, &q, &template(1000, 1000), DnsTransport::Udp { max_payload: 1232 }, &mut out);
        let q_end = q.question_end;
        assert_eq!(w, Written { len: q_end + 1000 + OPT_LEN, truncated: false });
        assert_eq!(&out[w.len - OPT_LEN..w.len - 8], &[0, 0, 41]);
        assert_eq!(u16::from_be_bytes([out[w.len - 8], out[w.len - 7]]), 1232);
        assert_eq!(out[11], 2, "additional count includes the OPT");
    }
}
