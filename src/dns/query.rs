//! Zero-copy parsing of one DNS query: header, the single question, and the EDNS(0) OPT record.
//!
//! The parser never allocates. It writes the lower-cased question name into a caller's fixed
//! buffer (the snapshot lookup key) and otherwise returns offsets into the packet, so the reply can
//! copy the client's question bytes verbatim (0x20 letter case preserved).

/// Length of the fixed DNS header.
pub const HEADER_LEN: usize = 12;
/// The longest domain name in wire format (RFC 1035 §2.3.4).
pub const MAX_NAME_LEN: usize = 255;

/// Record type of the EDNS(0) pseudo-record (RFC 6891).
pub const TYPE_OPT: u16 = 41;

/// EDNS(0) parameters a client sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edns {
    /// The client's UDP payload size, raised to 512 when smaller (RFC 6891 §6.2.5).
    pub payload: u16,
    /// EDNS version; dnlb speaks version 0 only.
    pub version: u8,
    /// The DNSSEC OK bit, echoed in the reply's OPT (RFC 3225).
    pub dnssec_ok: bool,
}

/// A query that parsed cleanly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Query {
    /// Message ID.
    pub id: u16,
    /// The second 16-bit header word (QR, opcode, AA, TC, RD, RA, Z, AD, CD, RCODE).
    pub flags: u16,
    /// Length of the question name in wire format, root label included.
    pub name_len: usize,
    /// Offset just past QCLASS: the reply copies `packet[..question_end]`.
    pub question_end: usize,
    /// Question type.
    pub qtype: u16,
    /// Question class.
    pub qclass: u16,
    /// The OPT record, if the client sent one.
    pub edns: Option<Edns>,
}

/// Why a packet is not a query dnlb can answer normally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// Not a query at all (QR=1, or shorter than a header): drop it without a reply (RFC 1035).
    Drop,
    /// A query with an opcode other than QUERY: answer NOTIMP (RFC 1035 §4.1.1).
    NotImplemented,
    /// A malformed query: answer FORMERR (RFC 1035 §4.1.1, RFC 6891 §6.1.1).
    FormatError,
}

/// DNS response codes dnlb produces.
pub mod rcode {
    /// No error.
    pub const NOERROR: u8 = 0;
    /// Format error: the query could not be interpreted.
    pub const FORMERR: u8 = 1;
    /// Server failure.
    pub const SERVFAIL: u8 = 2;
    /// The name does not exist (relayed answers).
    pub const NXDOMAIN: u8 = 3;
    /// Not implemented: the opcode is not supported.
    pub const NOTIMP: u8 = 4;
    /// Refused by policy.
    pub const REFUSED: u8 = 5;
    /// Bad EDNS version (extended rcode 16: upper bits 1, header bits 0).
    pub const BADVERS: u16 = 16;
}

/// Header flag bits (second header word).
pub mod flag {
    /// Query/response.
    pub const QR: u16 = 0x8000;
    /// Opcode mask.
    pub const OPCODE: u16 = 0x7800;
    /// Authoritative answer.
    pub const AA: u16 = 0x0400;
    /// Truncated.
    pub const TC: u16 = 0x0200;
    /// Recursion desired.
    pub const RD: u16 = 0x0100;
    /// Recursion available.
    pub const RA: u16 = 0x0080;
    /// Checking disabled.
    pub const CD: u16 = 0x0010;
}

#[inline]
fn be16(packet: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([packet[at], packet[at + 1]])
}

/// Parses `packet` as a query. On success the lower-cased question name is in
/// `name[..query.name_len]`.
pub fn parse(packet: &[u8], name: &mut [u8; MAX_NAME_LEN]) -> Result<Query, Reject> {
    if packet.len() < HEADER_LEN {
        return Err(Reject::Drop);
    }
    let flags = be16(packet, 2);
    if flags & flag::QR != 0 {
        return Err(Reject::Drop);
    }
    if flags & flag::OPCODE != 0 {
        return Err(Reject::NotImplemented);
    }
    let qdcount = be16(packet, 4);
    let ancount = be16(packet, 6);
    let nscount = be16(packet, 8);
    let arcount = be16(packet, 10);
    if qdcount != 1 {
        return Err(Reject::FormatError);
    }
    let name_len = read_question_name(packet, name)?;
    let type_at = HEADER_LEN + name_len;
    let question_end = type_at + 4;
    if packet.len() < question_end {
        return Err(Reject::FormatError);
    }
    let qtype = be16(packet, type_at);
    let qclass = be16(packet, type_at + 2);

    // A query rarely carries answer or authority records; skip them to reach the OPT record.
    let mut at = question_end;
    for _ in 0..(u32::from(ancount) + u32::from(nscount)) {
        at = skip_record(packet, at).ok_or(Reject::FormatError)?.1;
    }
    let mut edns = None;
    for _ in 0..arcount {
        let (rtype, next) = skip_record(packet, at).ok_or(Reject::FormatError)?;
        if rtype == TYPE_OPT {
            // RFC 6891 §6.1.1: more than one OPT, or an OPT whose owner is not the root, is FORMERR.
            if edns.is_some() || packet[at] != 0 {
                return Err(Reject::FormatError);
            }
            let payload = be16(packet, at + 3).max(512);
            let version = packet[at + 6];
            let dnssec_ok = packet[at + 7] & 0x80 != 0;
            edns = Some(Edns { payload, version, dnssec_ok });
        }
        at = next;
    }
    Ok(Query { id: be16(packet, 0), flags, name_len, question_end, qtype, qclass, edns })
}

/// Reads the uncompressed question name at offset 12, lower-casing it into `name`.
/// Returns its wire length. Compression pointers and extended label types are FORMERR here: a
/// question is the first name in a message, so there is nothing earlier to point at.
fn read_question_name(packet: &[u8], name: &mut [u8; MAX_NAME_LEN]) -> Result<usize, Reject> {
    let mut at = HEADER_LEN;
    loop {
        let len = *packet.get(at).ok_or(Reject::FormatError)? as usize;
        if len & 0xC0 != 0 {
            return Err(Reject::FormatError);
        }
        let end = at + 1 + len;
        if end - HEADER_LEN > MAX_NAME_LEN || end > packet.len() {
            return Err(Reject::FormatError);
        }
        let out = &mut name[at - HEADER_LEN..end - HEADER_LEN];
        out[0] = len as u8;
        for (o, b) in out[1..].iter_mut().zip(&packet[at + 1..end]) {
            *o = b.to_ascii_lowercase();
        }
        at = end;
        if len == 0 {
            return Ok(at - HEADER_LEN);
        }
    }
}

/// Where the parts of one resource record lie in a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordSpan {
    /// Record type.
    pub rtype: u16,
    /// Offset of the 32-bit TTL field.
    pub ttl_at: usize,
    /// Offset of the RDATA.
    pub rdata_at: usize,
    /// Offset just past the record.
    pub end: usize,
}

/// Walks one resource record starting at `at` (owner names may be compressed).
pub fn record_at(packet: &[u8], mut at: usize) -> Option<RecordSpan> {
    // Owner name: labels, ending in the root label or a compression pointer.
    loop {
        let len = *packet.get(at)? as usize;
        match len & 0xC0 {
            0x00 if len == 0 => {
                at += 1;
                break;
            }
            0x00 => at += 1 + len,
            0xC0 => {
                at += 2;
                break;
            }
            _ => return None,
        }
    }
    if packet.len() < at + 10 {
        return None;
    }
    let rdlen = be16(packet, at + 8) as usize;
    let end = at + 10 + rdlen;
    if end > packet.len() {
        return None;
    }
    Some(RecordSpan { rtype: be16(packet, at), ttl_at: at + 4, rdata_at: at + 10, end })
}

/// Skips one resource record starting at `at`; returns its type and the offset after it.
fn skip_record(packet: &[u8], at: usize) -> Option<(u16, usize)> {
    record_at(packet, at).map(|r| (r.rtype, r.end))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &[u8], qtype: u16) -> Vec<u8> {
        let mut p = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        p.extend_from_slice(name);
        p.extend_from_slice(&qtype.to_be_bytes());
        p.extend_from_slice(&[0, 1]);
        p
    }

    #[test]
    fn parses_and_lowercases() {
        let p = query(b"\x03SiP\x07ExAmPlE\x00", 1);
        let mut name = [0; MAX_NAME_LEN];
        let q = parse(&p, &mut name).unwrap();
        assert_eq!(&name[..q.name_len], b"\x03sip\x07example\x00");
        assert_eq!((q.id, q.qtype, q.qclass, q.question_end), (0x1234, 1, 1, p.len()));
        assert_eq!(q.edns, None);
    }

    #[test]
    fn reads_edns() {
        let mut p = query(b"\x00", 1);
        p[11] = 1;
        p.extend_from_slice(&[0, 0, 41, 0x10, 0, 0, 1, 0x80, 0, 0, 0]);
        let mut name = [0; MAX_NAME_LEN];
        let q = parse(&p, &mut name).unwrap();
        assert_eq!(q.edns, Some(Edns { payload: 4096, version: 1, dnssec_ok: true }));
    }

    #[test]
    fn rejects() {
        let mut name = [0; MAX_NAME_LEN];
        let ok = query(b"\x01a\x00", 1);
        let mut response = ok.clone();
        response[2] |= 0x80;
        assert_eq!(parse(&response, &mut name), Err(Reject::Drop));
        assert_eq!(parse(&ok[..11], &mut name), Err(Reject::Drop));
        let mut notify = ok.clone();
        notify[2] |= 4 << 3;
        assert_eq!(parse(&notify, &mut name), Err(Reject::NotImplemented));
        assert_eq!(parse(&ok[..ok.len() - 1], &mut name), Err(Reject::FormatError));
        assert_eq!(parse(&query(b"\xc0\x0c", 1), &mut name), Err(Reject::FormatError));
        assert_eq!(parse(&query(b"\x41a\x00", 1), &mut name), Err(Reject::FormatError));
    }
}
