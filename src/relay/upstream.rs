//! Accepting an upstream reply (RFC 5452 and the DNSpooq lessons): only from the address and port
//! queried, with the ID sent and exactly the question asked, byte for byte (so the random letter
//! case a query went out with must come back unchanged; draft-vixie-dnsext-dns0x20). For an
//! upstream known not to preserve case, the name may come back in any case. Pure: no I/O.

use std::net::SocketAddr;

use crate::dns::query::{flag, HEADER_LEN};

/// Why an upstream reply was refused. Always the upstream's (or a forger's) fault; counted, never
/// logged per packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// From another address or port than the one queried.
    Source,
    /// Shorter than a header, or not a response to a QUERY.
    NotAResponse,
    /// Another ID than the one sent.
    Id,
    /// Not the question sent.
    Question,
    /// The question sent, but in another letter case: a forger who does not know the random case,
    /// or an upstream that does not preserve it.
    Case,
}

/// What was sent upstream, to check its reply against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// The upstream's address and port.
    pub upstream: SocketAddr,
    /// The random ID the query went out with.
    pub id: u16,
    /// The question section as sent (wire bytes after the header).
    pub question: Vec<u8>,
    /// Whether the name must come back in exactly the case sent (0x20 on for this query).
    pub exact_case: bool,
}

impl Default for Sent {
    /// Nothing sent yet: an unspecified upstream, no question (set on each send).
    fn default() -> Sent {
        Sent { upstream: SocketAddr::from(([0, 0, 0, 0], 0)), id: 0, question: Vec::new(), exact_case: true }
    }
}

/// Checks a reply that arrived on the socket the query left from.
pub fn accept(reply: &[u8], from: SocketAddr, sent: &Sent) -> Result<(), Refusal> {
    if from != sent.upstream {
        return Err(Refusal::Source);
    }
    if reply.len() < HEADER_LEN {
        return Err(Refusal::NotAResponse);
    }
    let flags = u16::from_be_bytes([reply[2], reply[3]]);
    if flags & flag::QR == 0 || flags & flag::OPCODE != 0 {
        return Err(Refusal::NotAResponse);
    }
    if u16::from_be_bytes([reply[0], reply[1]]) != sent.id {
        return Err(Refusal::Id);
    }
    let qdcount = u16::from_be_bytes([reply[4], reply[5]]);
    let end = HEADER_LEN + sent.question.len();
    if qdcount != 1 || reply.len() < end {
        return Err(Refusal::Question);
    }
    let got = &reply[HEADER_LEN..end];
    if *got == *sent.question {
        return Ok(());
    }
    // The name compared without case (type and class stay exact: 0x41 and 0x61 are two types).
    let name_end = sent.question.len().saturating_sub(4);
    let same_name = got[..name_end].eq_ignore_ascii_case(&sent.question[..name_end]);
    if !same_name || got[name_end..] != sent.question[name_end..] {
        return Err(Refusal::Question);
    }
    if sent.exact_case {
        Err(Refusal::Case)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent() -> Sent {
        Sent {
            upstream: "127.0.0.53:53".parse().unwrap(),
            id: 0xbeef,
            question: b"\x03wWw\x00\x00\x01\x00\x01".to_vec(),
            exact_case: true,
        }
    }

    fn reply() -> Vec<u8> {
        let mut r = vec![0xbe, 0xef, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0];
        r.extend_from_slice(b"\x03wWw\x00\x00\x01\x00\x01");
        r
    }

    #[test]
    fn only_the_exact_reply_is_accepted() {
        let from: SocketAddr = "127.0.0.53:53".parse().unwrap();
        assert_eq!(accept(&reply(), from, &sent()), Ok(()));
        assert_eq!(accept(&reply(), "127.0.0.53:5353".parse().unwrap(), &sent()), Err(Refusal::Source));
        assert_eq!(accept(&reply(), "127.0.0.54:53".parse().unwrap(), &sent()), Err(Refusal::Source));
        let mut r = reply();
        r[1] ^= 1;
        assert_eq!(accept(&r, from, &sent()), Err(Refusal::Id));
        let mut r = reply();
        r[13] = b'W';
        assert_eq!(accept(&r, from, &sent()), Err(Refusal::Case), "0x20 case must come back unchanged");
        let lenient = Sent { exact_case: false, ..sent() };
        assert_eq!(accept(&r, from, &lenient), Ok(()), "without 0x20 any case will do");
        let mut r = reply();
        r[13] = b'x';
        assert_eq!(accept(&r, from, &lenient), Err(Refusal::Question), "but not another name");
        let mut r = reply();
        r[18] = 0x21;
        let sent_type = Sent { question: b"\x03wWw\x00\x00\x41\x00\x01".to_vec(), ..lenient.clone() };
        let mut typed = reply();
        typed[18] = 0x41;
        assert_eq!(accept(&typed, from, &sent_type), Ok(()));
        typed[18] = 0x61;
        assert_eq!(accept(&typed, from, &sent_type), Err(Refusal::Question), "types are not letters");
        assert_eq!(accept(&r, from, &lenient), Err(Refusal::Question));
        let mut r = reply();
        r[2] &= 0x7f;
        assert_eq!(accept(&r, from, &sent()), Err(Refusal::NotAResponse));
        assert_eq!(accept(&reply()[..15], from, &sent()), Err(Refusal::Question));
    }
}
