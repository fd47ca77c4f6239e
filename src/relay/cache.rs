//! The relay's answer cache: upstream replies kept as bytes, served as a copy and a patch.
//! Pure: time is passed in.
//!
//! ```text
//!  upstream reply ──insert()──► entry { bytes (OPT removed), TTL offsets, original TTLs, stored_at }
//!                                 │ TTL = min over records; negative answers: min(SOA TTL, MINIMUM)
//!  client query ──lookup()──► copy bytes, patch ID, flags, question case; every TTL -= age;
//!                             append our OPT if the client sent EDNS; TC if it does not fit
//! ```
//!
//! Keys are the lower-cased question name, type, class and the DO bit (RFC 2308, RFC 4035 §3.2.1),
//! so a DNSSEC-aware client never gets an answer cached for one that is not.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::dns::answer::{write_opt, Transport};
use crate::dns::query::{self, flag, Query, HEADER_LEN, TYPE_OPT};

/// The longest an answer is kept, whatever its TTL (one day, as unbound's default cache-max-ttl).
pub const MAX_TTL: u32 = 86_400;
/// SOA record type (negative caching reads its MINIMUM).
const TYPE_SOA: u16 = 6;

/// The longest key: a 255-octet name, type, class and the DO bit.
pub const KEY_MAX: usize = query::MAX_NAME_LEN + 5;

/// What a cached answer is filed under: the lower-case wire name, type, class and DO bit, as one
/// byte string, so a lookup can borrow a key built on the stack (no allocation per cache hit).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey(Box<[u8]>);

impl CacheKey {
    /// An owned key (stored with an entry or a pending query).
    pub fn new(name: &[u8], qtype: u16, qclass: u16, dnssec_ok: bool) -> CacheKey {
        let mut buf = [0u8; KEY_MAX];
        CacheKey(key_bytes(name, qtype, qclass, dnssec_ok, &mut buf).into())
    }

    /// The key's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::borrow::Borrow<[u8]> for CacheKey {
    fn borrow(&self) -> &[u8] {
        &self.0
    }
}

/// Writes a key into `buf` and returns it (the name is cut at 255 octets, which no valid name
/// exceeds).
pub fn key_bytes<'b>(name: &[u8], qtype: u16, qclass: u16, dnssec_ok: bool, buf: &'b mut [u8; KEY_MAX]) -> &'b [u8] {
    let n = name.len().min(query::MAX_NAME_LEN);
    buf[..n].copy_from_slice(&name[..n]);
    buf[n..n + 2].copy_from_slice(&qtype.to_be_bytes());
    buf[n + 2..n + 4].copy_from_slice(&qclass.to_be_bytes());
    buf[n + 4] = u8::from(dnssec_ok);
    &buf[..n + 5]
}

#[derive(Debug)]
struct Entry {
    bytes: Box<[u8]>,
    ttl_fields: Box<[(u32, u32)]>,
    stored_at: Instant,
    expires: Instant,
}

/// A bounded cache; the oldest entry makes room for a new one.
#[derive(Debug)]
pub struct Cache {
    entries: HashMap<CacheKey, Entry>,
    order: VecDeque<CacheKey>,
    capacity: usize,
}

impl Cache {
    /// A cache of at most `capacity` answers (0 disables it).
    pub fn new(capacity: usize) -> Cache {
        Cache { entries: HashMap::new(), order: VecDeque::new(), capacity }
    }

    /// Answers held now (expired ones included until they are looked up or pushed out).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the cache holds nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Stores an upstream reply (already validated) if it is cacheable; returns its TTL if stored.
    pub fn insert(&mut self, key: CacheKey, reply: &[u8], now: Instant) -> Option<u32> {
        if self.capacity == 0 {
            return None;
        }
        let Cacheable { bytes, ttl_fields, ttl } = cacheable(reply)?;
        if !self.entries.contains_key(&key) {
            while self.entries.len() >= self.capacity {
                let Some(old) = self.order.pop_front() else { break };
                self.entries.remove(&old);
            }
            self.order.push_back(key.clone());
        }
        let expires = now + Duration::from_secs(u64::from(ttl));
        self.entries.insert(key, Entry { bytes, ttl_fields, stored_at: now, expires });
        Some(ttl)
    }

    /// Writes the cached answer to `query` into `out`, or returns `None` on a miss (an expired
    /// entry is dropped then).
    pub fn answer(
        &mut self,
        key: &[u8],
        packet: &[u8],
        query: &Query,
        transport: Transport,
        out: &mut [u8],
        now: Instant,
    ) -> Option<usize> {
        let entry = self.entries.get(key)?;
        if now >= entry.expires {
            self.entries.remove(key);
            self.order.retain(|k| k.as_bytes() != key);
            return None;
        }
        let age = now.duration_since(entry.stored_at).as_secs().min(u64::from(u32::MAX)) as u32;
        let q_end = query.question_end;
        let limit = transport.limit(query).min(out.len());
        let opt = if query.edns.is_some() { crate::dns::answer::OPT_LEN } else { 0 };
        let bytes = &entry.bytes;
        if bytes.len() < q_end || q_end < HEADER_LEN || out.len() < q_end + opt {
            return None;
        }
        let mut len = if bytes.len() + opt <= limit {
            out[..bytes.len()].copy_from_slice(bytes);
            for &(at, ttl) in entry.ttl_fields.iter() {
                let at = at as usize;
                out[at..at + 4].copy_from_slice(&ttl.saturating_sub(age).to_be_bytes());
            }
            bytes.len()
        } else {
            // Too big for this client over UDP: the question alone, with TC set.
            out[..q_end].copy_from_slice(&bytes[..q_end]);
            out[6..12].fill(0);
            let flags = u16::from_be_bytes([out[2], out[3]]) | flag::TC;
            out[2..4].copy_from_slice(&flags.to_be_bytes());
            q_end
        };
        // The client's ID, RD and CD, and its question exactly as asked (0x20 case).
        out[..2].copy_from_slice(&packet[..2]);
        let flags =
            (u16::from_be_bytes([out[2], out[3]]) & !(flag::RD | flag::CD)) | (query.flags & (flag::RD | flag::CD));
        out[2..4].copy_from_slice(&flags.to_be_bytes());
        out[HEADER_LEN..q_end].copy_from_slice(&packet[HEADER_LEN..q_end]);
        if let Some(edns) = query.edns {
            len += write_opt(&mut out[len..], 0, edns.dnssec_ok, transport);
            let ar = u16::from_be_bytes([out[10], out[11]]).saturating_add(1);
            out[10..12].copy_from_slice(&ar.to_be_bytes());
        }
        Some(len)
    }
}

/// A reply fit for the cache: the bytes to keep (OPT removed), the TTL fields to count down
/// (offset, original value), and how long it may be kept.
struct Cacheable {
    bytes: Box<[u8]>,
    ttl_fields: Box<[(u32, u32)]>,
    ttl: u32,
}

/// Whether and for how long a reply may be cached.
fn cacheable(reply: &[u8]) -> Option<Cacheable> {
    if reply.len() < HEADER_LEN {
        return None;
    }
    let flags = u16::from_be_bytes([reply[2], reply[3]]);
    let rcode = flags & 0xf;
    if flags & flag::QR == 0 || flags & flag::TC != 0 || (rcode != 0 && rcode != 3) {
        return None;
    }
    let count = |i: usize| u16::from_be_bytes([reply[4 + 2 * i], reply[5 + 2 * i]]);
    let (qd, an, ns, ar) = (count(0), count(1), count(2), count(3));
    if qd != 1 {
        return None;
    }
    let mut name = [0u8; query::MAX_NAME_LEN];
    let mut at = HEADER_LEN;
    // The question: reuse the query parser's name reader by parsing the header+question prefix.
    let mut probe = reply[..reply.len().min(HEADER_LEN + query::MAX_NAME_LEN + 4)].to_vec();
    probe[2] &= 0x7f; // as a query
    probe[6..12].fill(0);
    let q = query::parse(&probe, &mut name).ok()?;
    at += q.name_len + 4;
    let mut ttl_fields = Vec::new();
    let mut min_ttl = MAX_TTL;
    let mut negative_ttl = None;
    let mut opt: Option<(usize, usize)> = None;
    for section in 0..3 {
        let n = [an, ns, ar][section];
        for _ in 0..n {
            let r = query::record_at(reply, at)?;
            if r.rtype == TYPE_OPT {
                // An OPT belongs in the additional section, once (RFC 6891 §6.1.1).
                if section != 2 || opt.is_some() {
                    return None;
                }
                opt = Some((at, r.end));
            } else {
                let ttl = u32::from_be_bytes(reply[r.ttl_at..r.ttl_at + 4].try_into().ok()?);
                min_ttl = min_ttl.min(ttl);
                ttl_fields.push((r.ttl_at as u32, ttl));
                if section == 1 && r.rtype == TYPE_SOA && r.end >= 4 {
                    // RFC 2308 §5: a negative answer lives min(SOA TTL, SOA MINIMUM).
                    let minimum = u32::from_be_bytes(reply[r.end - 4..r.end].try_into().ok()?);
                    negative_ttl = Some(ttl.min(minimum));
                }
            }
            at = r.end;
        }
    }
    let negative = rcode == 3 || an == 0;
    let ttl = if negative { negative_ttl? } else { min_ttl }.min(MAX_TTL);
    if ttl == 0 {
        return None;
    }
    let mut bytes = reply[..at].to_vec();
    if let Some((start, end)) = opt {
        // Drop the upstream's OPT: each client gets one that matches its own query.
        if end != at {
            return None; // OPT not last: rare; do not cache rather than rewrite the message
        }
        bytes.truncate(start);
        bytes[10..12].copy_from_slice(&(ar - 1).to_be_bytes());
    }
    Some(Cacheable { bytes: bytes.into(), ttl_fields: ttl_fields.into(), ttl })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query as HQuery, ResponseCode};
    use hickory_proto::rr::rdata::{A, SOA};
    use hickory_proto::rr::{Name, RData, Record, RecordType};

    fn reply(
        name: &str,
        rcode: ResponseCode,
        answers: &[(u32, [u8; 4])],
        soa: Option<(u32, u32)>,
        edns: bool,
    ) -> Vec<u8> {
        let owner = Name::from_ascii(name).unwrap();
        let mut m = Message::new(7, MessageType::Response, OpCode::Query);
        m.metadata.response_code = rcode;
        m.add_query(HQuery::query(owner.clone(), RecordType::A));
        for (ttl, a) in answers {
            m.add_answer(Record::from_rdata(owner.clone(), *ttl, RData::A(A::from(std::net::Ipv4Addr::from(*a)))));
        }
        if let Some((ttl, minimum)) = soa {
            let zone = Name::from_ascii("example.test.").unwrap();
            let soa = SOA::new(zone.clone(), zone.clone(), 1, 3600, 600, 86400, minimum);
            m.authorities.push(Record::from_rdata(zone, ttl, RData::SOA(soa)));
        }
        if edns {
            m.edns = Some(Edns::new());
        }
        m.to_vec().unwrap()
    }

    fn client_query(name: &str, id: u16, edns: bool) -> Vec<u8> {
        let mut m = Message::new(id, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(HQuery::query(Name::from_ascii(name).unwrap(), RecordType::A));
        if edns {
            m.edns = Some(Edns::new());
        }
        m.to_vec().unwrap()
    }

    fn key(name: &str) -> CacheKey {
        CacheKey::new(&crate::dns::wire_name(name), 1, 1, false)
    }

    fn hit(cache: &mut Cache, name: &str, id: u16, edns: bool, now: Instant) -> Option<Message> {
        let packet = client_query(name, id, edns);
        let mut lower = [0u8; query::MAX_NAME_LEN];
        let q = query::parse(&packet, &mut lower).unwrap();
        let mut out = [0u8; 1500];
        let n = cache.answer(
            key(&name.to_ascii_lowercase()).as_bytes(),
            &packet,
            &q,
            Transport::Udp { max_payload: 1232 },
            &mut out,
            now,
        )?;
        Some(Message::from_vec(&out[..n]).unwrap())
    }

    #[test]
    fn ttls_count_down_and_expire() {
        let t0 = Instant::now();
        let mut c = Cache::new(10);
        let r = reply(
            "www.example.test.",
            ResponseCode::NoError,
            &[(300, [192, 0, 2, 1]), (100, [192, 0, 2, 2])],
            None,
            true,
        );
        assert_eq!(c.insert(key("www.example.test"), &r, t0), Some(100));
        let m = hit(&mut c, "WWW.example.TEST.", 4242, false, t0 + Duration::from_secs(30)).unwrap();
        assert_eq!(m.metadata.id, 4242);
        assert_eq!(m.answers.iter().map(|r| r.ttl).collect::<Vec<_>>(), vec![270, 70]);
        assert!(m.edns.is_none(), "the upstream's OPT is not passed to a client without EDNS");
        let m = hit(&mut c, "www.example.test.", 1, true, t0 + Duration::from_secs(99)).unwrap();
        assert_eq!(m.edns.map(|e| e.max_payload()), Some(1232));
        assert!(hit(&mut c, "www.example.test.", 1, false, t0 + Duration::from_secs(100)).is_none(), "expired");
        assert!(c.is_empty());
    }

    #[test]
    fn negative_answers_follow_rfc_2308() {
        let t0 = Instant::now();
        let mut c = Cache::new(10);
        let nx = reply("nx.example.test.", ResponseCode::NXDomain, &[], Some((3600, 60)), false);
        assert_eq!(c.insert(key("nx.example.test"), &nx, t0), Some(60), "min(SOA TTL, MINIMUM)");
        let m = hit(&mut c, "nx.example.test.", 9, false, t0 + Duration::from_secs(10)).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(m.authorities[0].ttl, 3590);
        let nodata_without_soa = reply("nd.example.test.", ResponseCode::NoError, &[], None, false);
        assert_eq!(c.insert(key("nd.example.test"), &nodata_without_soa, t0), None, "no SOA: not cached");
        let servfail = reply("sf.example.test.", ResponseCode::ServFail, &[], None, false);
        assert_eq!(c.insert(key("sf.example.test"), &servfail, t0), None);
    }

    #[test]
    fn bounded_by_entries() {
        let t0 = Instant::now();
        let mut c = Cache::new(2);
        for i in 0..5u8 {
            let name = format!("h{i}.example.test.");
            c.insert(
                key(&name[..name.len() - 1]),
                &reply(&name, ResponseCode::NoError, &[(60, [192, 0, 2, i])], None, false),
                t0,
            );
        }
        assert_eq!(c.len(), 2);
        assert!(hit(&mut c, "h4.example.test.", 1, false, t0).is_some());
        assert!(hit(&mut c, "h0.example.test.", 1, false, t0).is_none());
    }
}
