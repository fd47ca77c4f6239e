//! The relay's answer cache: upstream replies kept as bytes, served as a copy and a patch.
//! Pure: time is passed in.
//!
//! ```text
//!  upstream reply ──insert()──► entry { bytes (OPT removed), TTL offsets, capped TTLs, stored_at }
//!                                 │ TTL = min over records, at most max_ttl; negative answers:
//!                                 │ min(SOA TTL, MINIMUM) (RFC 2308)
//!  client query ──answer()──► copy bytes, patch ID, flags, question case; every TTL -= age;
//!                             append our OPT if the client sent EDNS; TC if it does not fit
//! ```
//!
//! Keys are the lower-cased question name, type, class, the DO bit (RFC 2308, RFC 4035 §3.2.1) and
//! the CD bit (RFC 4035 §3.2.2: a CD=1 answer may hold data that failed validation), so a client
//! never gets an answer fetched under the other setting.
//!
//! The cache is bounded in entries and in bytes. Room is made oldest first: `order` lists keys in
//! insertion order with the sequence number of the entry they were inserted as, so an entry that
//! expired (dropped when a lookup finds it), or was replaced, leaves a stale mark there that is
//! skipped when reached. Marks are compacted when they outnumber the entries two to one, so no
//! lookup and no insert ever walks the whole cache except in that amortised compaction.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::dns::answer::{write_opt, DnsTransport};
use crate::dns::query::{self, flag, Query, HEADER_LEN, TYPE_OPT};

/// SOA record type (negative caching reads its MINIMUM).
const TYPE_SOA: u16 = 6;
/// Bytes charged per entry on top of its reply, TTL offsets and two copies of its key: the hash
/// table slot, the order mark and the allocations' headers, roughly.
const ENTRY_OVERHEAD: usize = 128;

/// The longest key: a 255-octet name, type, class and the DO/CD byte.
pub const KEY_MAX: usize = query::MAX_NAME_LEN + 5;

/// The DO bit in a key's last byte.
const KEY_DO: u8 = 1;
/// The CD bit in a key's last byte.
const KEY_CD: u8 = 2;

/// What a cached answer is filed under: the lower-case wire name, type, class and the DO and CD
/// bits, as one byte string, so a lookup can borrow a key built on the stack (no allocation per
/// cache hit).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey(Box<[u8]>);

impl CacheKey {
    /// An owned key (stored with an entry or a pending query).
    pub fn new(name: &[u8], qtype: u16, qclass: u16, dnssec_ok: bool, checking_disabled: bool) -> CacheKey {
        let mut buf = [0u8; KEY_MAX];
        CacheKey(key_bytes(name, qtype, qclass, dnssec_ok, checking_disabled, &mut buf).into())
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
pub fn key_bytes<'b>(
    name: &[u8],
    qtype: u16,
    qclass: u16,
    dnssec_ok: bool,
    checking_disabled: bool,
    buf: &'b mut [u8; KEY_MAX],
) -> &'b [u8] {
    let n = name.len().min(query::MAX_NAME_LEN);
    buf[..n].copy_from_slice(&name[..n]);
    buf[n..n + 2].copy_from_slice(&qtype.to_be_bytes());
    buf[n + 2..n + 4].copy_from_slice(&qclass.to_be_bytes());
    buf[n + 4] = if dnssec_ok { KEY_DO } else { 0 } | if checking_disabled { KEY_CD } else { 0 };
    &buf[..n + 5]
}

#[derive(Debug)]
struct Entry {
    bytes: Box<[u8]>,
    /// (offset, TTL as stored, already capped) of every record but the OPT.
    ttl_fields: Box<[(u32, u32)]>,
    stored_at: Instant,
    expires: Instant,
    /// Which mark in `order` is this entry's.
    seq: u64,
    /// What the entry is charged against `max_bytes`.
    size: usize,
}

/// A cache bounded in entries and bytes; the oldest entry makes room for a new one.
#[derive(Debug)]
pub struct Cache {
    entries: HashMap<CacheKey, Entry>,
    order: VecDeque<(CacheKey, u64)>,
    capacity: usize,
    max_bytes: usize,
    bytes: usize,
    max_ttl: u32,
    next_seq: u64,
}

impl Cache {
    /// A cache of at most `capacity` answers (0 disables it) and `max_bytes` bytes, keeping none
    /// longer than `max_ttl` seconds.
    pub fn new(capacity: usize, max_bytes: usize, max_ttl: u32) -> Cache {
        Cache { entries: HashMap::new(), order: VecDeque::new(), capacity, max_bytes, bytes: 0, max_ttl, next_seq: 0 }
    }

    /// Answers held now (expired ones included until they are looked up or pushed out).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the cache holds nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes charged for the entries held now.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Stores an upstream reply (already validated) if it is cacheable; returns its TTL if stored.
    pub fn insert(&mut self, key: CacheKey, reply: &[u8], now: Instant) -> Option<u32> {
        if self.capacity == 0 {
            return None;
        }
        let Cacheable { bytes, ttl_fields, ttl } = cacheable(reply, self.max_ttl)?;
        let size = bytes.len() + ttl_fields.len() * 8 + 2 * key.as_bytes().len() + ENTRY_OVERHEAD;
        if size > self.max_bytes {
            return None;
        }
        self.remove(key.as_bytes());
        while self.entries.len() >= self.capacity || self.bytes + size > self.max_bytes {
            let Some((old, seq)) = self.order.pop_front() else { break };
            if self.entries.get(&old).is_some_and(|e| e.seq == seq) {
                self.remove(old.as_bytes());
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.order.push_back((key.clone(), seq));
        let expires = now.checked_add(Duration::from_secs(u64::from(ttl)))?;
        self.bytes += size;
        self.entries.insert(key, Entry { bytes, ttl_fields, stored_at: now, expires, seq, size });
        if self.order.len() > 2 * self.entries.len() + 64 {
            let entries = &self.entries;
            self.order.retain(|(k, s)| entries.get(k).is_some_and(|e| e.seq == *s));
        }
        Some(ttl)
    }

    /// Drops the entry under `key`, if any (its mark in `order` goes stale).
    fn remove(&mut self, key: &[u8]) {
        if let Some(e) = self.entries.remove(key) {
            self.bytes -= e.size;
        }
    }

    /// Writes the cached answer to `query` into `out`, or returns `None` on a miss (an expired
    /// entry is dropped then).
    pub fn answer(
        &mut self,
        key: &[u8],
        packet: &[u8],
        query: &Query,
        transport: DnsTransport,
        out: &mut [u8],
        now: Instant,
    ) -> Option<usize> {
        let entry = self.entries.get(key)?;
        if now >= entry.expires {
            self.remove(key);
            return None;
        }
        let age = now.duration_since(entry.stored_at).as_secs().min(u64::from(u32::MAX)) as u32;
        let q_end = query.question_end;
        let limit = transport.limit(query).min(out.len());
        let opt = if query.edns.is_some() { crate::dns::answer::OPT_LEN } else { 0 };
        let bytes = &entry.bytes;
        if bytes.len() < q_end || q_end < HEADER_LEN || out.len() < q_end + opt || packet.len() < q_end {
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
/// (offset, capped value), and how long it may be kept.
struct Cacheable {
    bytes: Box<[u8]>,
    ttl_fields: Box<[(u32, u32)]>,
    ttl: u32,
}

/// Where the records of a reply lie: the TTL offsets (all but the OPT's)
/// and the OPT record, if it has one. `None` if the message does not parse to its end.
struct RecordSpans {
    ttl_fields: Vec<(u32, u32)>,
    /// (start, end) of the OPT record.
    opt: Option<(usize, usize)>,
    /// min(SOA TTL, SOA MINIMUM) of an authority SOA, for negative answers.
    negative_ttl: Option<u32>,
    /// Just past the last record.
    end: usize,
}

/// Walks a reply's question and records (owner names may be compressed; nothing is followed).
fn record_spans(reply: &[u8]) -> Option<RecordSpans> {
    if reply.len() < HEADER_LEN {
        return None;
    }
    let count = |i: usize| u16::from_be_bytes([reply[4 + 2 * i], reply[5 + 2 * i]]);
    let mut at = question_end(reply)?;
    let mut ttl_fields = Vec::new();
    let mut opt: Option<(usize, usize)> = None;
    let mut negative_ttl = None;
    for section in 0..3 {
        for _ in 0..count(section + 1) {
            let r = query::record_at(reply, at)?;
            if r.rtype == TYPE_OPT {
                // An OPT belongs in the additional section, once (RFC 6891 §6.1.1).
                if section != 2 || opt.is_some() {
                    return None;
                }
                opt = Some((at, r.end));
            } else {
                let ttl = u32::from_be_bytes(reply[r.ttl_at..r.ttl_at + 4].try_into().ok()?);
                ttl_fields.push((r.ttl_at as u32, ttl));
                if section == 1 && r.rtype == TYPE_SOA && r.end >= r.rdata_at + 4 {
                    // RFC 2308 §5: a negative answer lives min(SOA TTL, SOA MINIMUM).
                    let minimum = u32::from_be_bytes(reply[r.end - 4..r.end].try_into().ok()?);
                    negative_ttl = Some(ttl.min(minimum));
                }
            }
            at = r.end;
        }
    }
    Some(RecordSpans { ttl_fields, opt, negative_ttl, end: at })
}

/// Whether and for how long a reply may be cached; no TTL in it is over `max_ttl`.
fn cacheable(reply: &[u8], max_ttl: u32) -> Option<Cacheable> {
    if reply.len() < HEADER_LEN {
        return None;
    }
    let flags = u16::from_be_bytes([reply[2], reply[3]]);
    let rcode = flags & 0xf;
    if flags & flag::QR == 0 || flags & flag::TC != 0 || (rcode != 0 && rcode != 3) {
        return None;
    }
    let RecordSpans { mut ttl_fields, opt, negative_ttl, end, .. } = record_spans(reply)?;
    let an = u16::from_be_bytes([reply[6], reply[7]]);
    let ar = u16::from_be_bytes([reply[10], reply[11]]);
    for (_, ttl) in ttl_fields.iter_mut() {
        *ttl = (*ttl).min(max_ttl);
    }
    let min_ttl = ttl_fields.iter().map(|&(_, t)| t).min().unwrap_or(max_ttl);
    let negative = rcode == 3 || an == 0;
    let ttl = if negative { negative_ttl? } else { min_ttl }.min(max_ttl);
    if ttl == 0 {
        return None;
    }
    let mut bytes = reply[..end].to_vec();
    if let Some((start, opt_end)) = opt {
        // Drop the upstream's OPT: each client gets one that matches its own query.
        if opt_end != end {
            return None; // OPT not last: rare; do not cache rather than rewrite the message
        }
        bytes.truncate(start);
        bytes[10..12].copy_from_slice(&ar.saturating_sub(1).to_be_bytes());
    }
    Some(Cacheable { bytes: bytes.into(), ttl_fields: ttl_fields.into(), ttl })
}

/// Makes an uncached reply (in `msg`, as it will be sent) fit a client: every TTL at most
/// `max_ttl`, and the upstream's OPT record removed for a client that sent none (RFC 6891 §7)
/// when it is the last record. Returns the new length. A message that does not parse is left as
/// it is.
pub fn fit_for_client(msg: &mut [u8], max_ttl: u32, client_edns: bool) -> usize {
    let Some(l) = record_spans(msg) else { return msg.len() };
    for &(at, ttl) in &l.ttl_fields {
        let at = at as usize;
        msg[at..at + 4].copy_from_slice(&ttl.min(max_ttl).to_be_bytes());
    }
    match l.opt {
        Some((start, end)) if !client_edns && end == l.end && end == msg.len() => {
            let ar = u16::from_be_bytes([msg[10], msg[11]]).saturating_sub(1);
            msg[10..12].copy_from_slice(&ar.to_be_bytes());
            start
        }
        _ => msg.len(),
    }
}

/// The end of a message's question, if it has exactly one, with an uncompressed name.
fn question_end(msg: &[u8]) -> Option<usize> {
    if msg.len() < HEADER_LEN || u16::from_be_bytes([msg[4], msg[5]]) != 1 {
        return None;
    }
    let mut at = HEADER_LEN;
    loop {
        let len = *msg.get(at)? as usize;
        if len & 0xC0 != 0 {
            return None;
        }
        at += 1 + len;
        if len == 0 {
            break;
        }
        if at - HEADER_LEN > query::MAX_NAME_LEN {
            return None;
        }
    }
    (at + 4 <= msg.len()).then_some(at + 4)
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
        CacheKey::new(&crate::dns::wire_name(name), 1, 1, false, false)
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
            DnsTransport::Udp { max_payload: 1232 },
            &mut out,
            now,
        )?;
        Some(Message::from_vec(&out[..n]).unwrap())
    }

    #[test]
    fn ttls_count_down_and_expire() {
        let t0 = Instant::now();
        let mut c = Cache::new(10, 1 << 20, 86_400);
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
        let mut c = Cache::new(10, 1 << 20, 86_400);
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
        let mut c = Cache::new(2, 1 << 20, 86_400);
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

    #[test]
    fn bounded_by_bytes() {
        let t0 = Instant::now();
        let one = reply("h0.example.test.", ResponseCode::NoError, &[(60, [192, 0, 2, 1])], None, false);
        let size = one.len() + 8 + 2 * key("h0.example.test").as_bytes().len() + ENTRY_OVERHEAD;
        let mut c = Cache::new(100, 3 * size, 86_400);
        for i in 0..10u8 {
            let name = format!("h{i}.example.test.");
            let r = reply(&name, ResponseCode::NoError, &[(60, [192, 0, 2, i])], None, false);
            assert!(c.insert(key(&name[..name.len() - 1]), &r, t0).is_some());
            assert!(c.bytes() <= 3 * size, "{} bytes held", c.bytes());
        }
        assert_eq!(c.len(), 3);
        assert!(hit(&mut c, "h9.example.test.", 1, false, t0).is_some());
        assert!(hit(&mut c, "h6.example.test.", 1, false, t0).is_none(), "the oldest went first");
        let mut tiny = Cache::new(100, size - 1, 86_400);
        assert_eq!(tiny.insert(key("h0.example.test"), &one, t0), None, "larger than the whole cache");
    }

    #[test]
    fn ttls_are_capped() {
        let t0 = Instant::now();
        let mut c = Cache::new(10, 1 << 20, 60);
        let r = reply("long.example.test.", ResponseCode::NoError, &[(172_800, [192, 0, 2, 1])], None, false);
        assert_eq!(c.insert(key("long.example.test"), &r, t0), Some(60));
        let m = hit(&mut c, "long.example.test.", 1, false, t0 + Duration::from_secs(10)).unwrap();
        assert_eq!(m.answers[0].ttl, 50, "the client never sees more than the cap");
        assert!(hit(&mut c, "long.example.test.", 1, false, t0 + Duration::from_secs(60)).is_none());
        let nx = reply("nx.example.test.", ResponseCode::NXDomain, &[], Some((86_400, 86_400)), false);
        assert_eq!(c.insert(key("nx.example.test"), &nx, t0), Some(60), "negative answers too");
    }

    #[test]
    fn the_cd_and_do_bits_are_part_of_the_key() {
        let name = crate::dns::wire_name("www.example.test");
        let keys: std::collections::HashSet<CacheKey> = [(false, false), (true, false), (false, true), (true, true)]
            .into_iter()
            .map(|(d, c)| CacheKey::new(&name, 1, 1, d, c))
            .collect();
        assert_eq!(keys.len(), 4);
    }

    #[test]
    fn expired_and_replaced_entries_leave_no_unbounded_marks() {
        let t0 = Instant::now();
        let mut c = Cache::new(1000, 1 << 24, 86_400);
        let r = reply("hot.example.test.", ResponseCode::NoError, &[(1, [192, 0, 2, 1])], None, false);
        for i in 0..10_000u64 {
            let now = t0 + Duration::from_secs(i);
            assert!(hit(&mut c, "hot.example.test.", 1, false, now).is_none(), "expired after a second");
            c.insert(key("hot.example.test"), &r, now);
            c.insert(key("hot.example.test"), &r, now);
        }
        assert_eq!(c.len(), 1);
        assert!(c.order.len() <= 2 * c.len() + 64 + 1, "{} marks for {} entries", c.order.len(), c.len());
        assert_eq!(c.bytes(), c.entries.values().map(|e| e.size).sum::<usize>());
    }

    #[test]
    fn uncached_replies_are_fitted_for_each_client() {
        let r = reply("sf.example.test.", ResponseCode::NoError, &[(172_800, [192, 0, 2, 1])], None, true);
        let mut msg = r.clone();
        let n = fit_for_client(&mut msg, 60, false);
        let m = Message::from_vec(&msg[..n]).unwrap();
        assert_eq!(m.answers[0].ttl, 60);
        assert!(m.edns.is_none(), "no OPT for a client that sent none");
        let mut msg = r.clone();
        let n = fit_for_client(&mut msg, 60, true);
        assert!(Message::from_vec(&msg[..n]).unwrap().edns.is_some());
        let mut junk = vec![0xffu8; 40];
        assert_eq!(fit_for_client(&mut junk, 60, false), 40, "left as it is");
    }
}
