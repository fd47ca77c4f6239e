//! A table of malformed and unusual packets with the outcome RFC 1035/6891/8906 ask for, sent
//! over real UDP to both backends, with the service as a resolver sees it and as a zone apex
//! (`[service.authority]`); the last row is a valid query that must still be answered.

mod common;

use std::time::Duration;

use common::*;
use hickory_proto::rr::RecordType;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// No reply at all.
    Drop,
    /// A reply with this RCODE (header bits) and this many answers.
    Rcode(u8, u16),
    /// A BADVERS reply: header RCODE 0, OPT extended RCODE 1.
    BadVers,
}

fn valid() -> Vec<u8> {
    query("sip.example.test.", RecordType::A, 0x4242, None)
}

fn with(mut p: Vec<u8>, f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    f(&mut p);
    p
}

/// A query for `name` (raw wire bytes) with the given trailer after QTYPE/QCLASS.
fn raw_query(name: &[u8], arcount: u16, trailer: &[u8]) -> Vec<u8> {
    let mut p = vec![0x42, 0x42, 0x01, 0x00, 0, 1, 0, 0, 0, 0];
    p.extend_from_slice(&arcount.to_be_bytes());
    p.extend_from_slice(name);
    p.extend_from_slice(&[0, 1, 0, 1]);
    p.extend_from_slice(trailer);
    p
}

const SIP: &[u8] = b"\x03sip\x07example\x04test\x00";
const OPT: &[u8] = &[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0];

fn table() -> Vec<(&'static str, Vec<u8>, Expect)> {
    let long_name: Vec<u8> =
        std::iter::repeat_n([63u8; 1].iter().chain([b'a'; 63].iter()).copied(), 5).flatten().chain([0]).collect();
    vec![
        ("empty datagram", vec![], Expect::Drop),
        ("11-byte runt", valid()[..11].to_vec(), Expect::Drop),
        ("a response (QR=1)", with(valid(), |p| p[2] |= 0x80), Expect::Drop),
        ("opcode IQUERY", with(valid(), |p| p[2] |= 1 << 3), Expect::Rcode(4, 0)),
        ("opcode NOTIFY", with(valid(), |p| p[2] |= 4 << 3), Expect::Rcode(4, 0)),
        ("opcode UPDATE", with(valid(), |p| p[2] |= 5 << 3), Expect::Rcode(4, 0)),
        ("opcode 15", with(valid(), |p| p[2] |= 15 << 3), Expect::Rcode(4, 0)),
        ("QDCOUNT 0", with(valid(), |p| p[5] = 0), Expect::Rcode(1, 0)),
        ("QDCOUNT 2", with(valid(), |p| p[5] = 2), Expect::Rcode(1, 0)),
        ("header only", valid()[..12].to_vec(), Expect::Rcode(1, 0)),
        ("name cut short", valid()[..18].to_vec(), Expect::Rcode(1, 0)),
        ("no QTYPE/QCLASS", with(valid(), |p| p.truncate(p.len() - 4)), Expect::Rcode(1, 0)),
        ("half a QCLASS", with(valid(), |p| p.truncate(p.len() - 1)), Expect::Rcode(1, 0)),
        ("compression pointer in question", raw_query(b"\x03sip\xc0\x0c", 0, &[]), Expect::Rcode(1, 0)),
        ("pointer to itself", raw_query(b"\xc0\x0c", 0, &[]), Expect::Rcode(1, 0)),
        ("extended label type 0x40", raw_query(b"\x41a\x00", 0, &[]), Expect::Rcode(1, 0)),
        ("label type 0x80", raw_query(b"\x81a\x00", 0, &[]), Expect::Rcode(1, 0)),
        ("name over 255 octets", raw_query(&long_name, 0, &[]), Expect::Rcode(1, 0)),
        ("ARCOUNT 1 without a record", raw_query(SIP, 1, &[]), Expect::Rcode(1, 0)),
        ("OPT cut short", raw_query(SIP, 1, &OPT[..7]), Expect::Rcode(1, 0)),
        ("OPT RDLENGTH past the end", raw_query(SIP, 1, &[0, 0, 41, 4, 0xd0, 0, 0, 0, 0, 0, 9]), Expect::Rcode(1, 0)),
        ("two OPT records", raw_query(SIP, 2, &[OPT, OPT].concat()), Expect::Rcode(1, 0)),
        ("OPT owner not root", raw_query(SIP, 1, &[1, b'x', 0, 0, 41, 4, 0xd0, 0, 0, 0, 0, 0, 0]), Expect::Rcode(1, 0)),
        ("EDNS version 1", raw_query(SIP, 1, &[0, 0, 41, 4, 0xd0, 0, 1, 0, 0, 0, 0]), Expect::BadVers),
        (
            "EDNS payload below 512 is read as 512",
            raw_query(SIP, 1, &[0, 0, 41, 0, 1, 0, 0, 0, 0, 0, 0]),
            Expect::Rcode(0, 1),
        ),
        (
            "class CH",
            with(valid(), |p| {
                let n = p.len();
                p[n - 1] = 3;
            }),
            Expect::Rcode(5, 0),
        ),
        (
            "unknown type on a managed name",
            with(valid(), |p| {
                let n = p.len();
                p[n - 3] = 0xfe;
            }),
            Expect::Rcode(0, 0),
        ),
        (
            "trailing garbage after the question",
            with(valid(), |p| p.extend_from_slice(&[0xde, 0xad])),
            Expect::Rcode(0, 1),
        ),
        ("root name", raw_query(b"\x00", 0, &[]), Expect::Rcode(5, 0)),
        ("2000 bytes of 0x00 with QR=0", vec![0; 2000], Expect::Rcode(1, 0)),
        ("valid query still answered", valid(), Expect::Rcode(0, 1)),
    ]
}

#[test]
fn malformed_packets_get_the_rfc_outcome() {
    // As a zone apex the table's outcomes are the same: its names exist; the root and other
    // classes are no name of the zone.
    for (io, extra) in backends().into_iter().flat_map(|io| [(io, ""), (io, AUTHORITY)]) {
        // One server per service answer, so a valid answer carries exactly one record.
        let t = TestServer::start(&config_text(free_port(), 1, extra), io);
        let mut failures = Vec::new();
        for (what, packet, expect) in table() {
            let wait = if expect == Expect::Drop { Duration::from_millis(300) } else { Duration::from_secs(2) };
            let reply = udp_raw(t.addr, &packet, wait);
            let got = match reply {
                None => Expect::Drop,
                Some(r) if r.len() < 12 => panic!("{what}: reply shorter than a header"),
                Some(r) => {
                    assert_eq!(&r[..2], &packet[..2], "{what}: ID echoed");
                    assert!(r[2] & 0x80 != 0, "{what}: QR set");
                    let arcount = u16::from_be_bytes([r[10], r[11]]);
                    let ext_rcode = if arcount > 0 { r.get(r.len() - 6).copied().unwrap_or(0) } else { 0 };
                    if ext_rcode == 1 && r[3] & 0xf == 0 {
                        Expect::BadVers
                    } else {
                        Expect::Rcode(r[3] & 0xf, u16::from_be_bytes([r[6], r[7]]))
                    }
                }
            };
            if got != expect {
                failures.push(format!("{what}: expected {expect:?}, got {got:?}"));
            }
        }
        assert!(failures.is_empty(), "{io:?} {extra}:\n{}", failures.join("\n"));
        let totals = t.server.as_ref().unwrap().totals();
        assert_eq!(totals.dropped, 3, "{io:?}: {totals}");
        assert_eq!(totals.io_errors, 0);
    }
}
