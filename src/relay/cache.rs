//! The relay's answer cache: upstream replies kept as bytes, served as a copy and a patch, fresh
//! while their TTL runs and stale (RFC 8767) for a while after. Pure: time is passed in.
//!
//! ```text
//!  upstream reply ──insert()──► entry { key + bytes (OPT removed) + TTL offsets, expiry, the
//!                                 │       time a hit asks for a prefetch }
//!                                 │ TTL = min over records, at most max_ttl; negative answers:
//!                                 │ min(SOA TTL, MINIMUM) (RFC 2308)
//!  client query ──lookup()──► Fresh: copy bytes, patch ID, flags, question case; every TTL -= age;
//!                             │       OPT if the client sent EDNS; TC if it does not fit; in the
//!                             │       last tenth of its TTL, once: "prefetch"
//!                             ├ Stale: expired less than stale max ago (written by write_stale,
//!                             │        every TTL = stale TTL); "recheck" while a refresh failed
//!                             │        less than stale refresh ago
//!                             └ Miss
//! ```
//!
//! Keys are the lower-cased question name, type, class, the DO bit (RFC 2308, RFC 4035 §3.2.1) and
//! the CD bit (RFC 4035 §3.2.2: a CD=1 answer may hold data that failed validation), so a client
//! never gets an answer fetched under the other setting. A key is hashed once per query with a
//! keyed SipHash ([`KeyHasher`], a random key per worker, so a client cannot aim names at one
//! bucket) and every table indexed by it takes that hash as it is ([`Prehashed`]); an entry keeps
//! its key, which a lookup compares, so two keys with one hash never share an answer.
//!
//! The cache is bounded in entries and in bytes. Room is made stale first: the entry that expired
//! longest ago goes first (a heap by expiry), then, when none has expired, the oldest inserted
//! (`order`, insertion order). An entry that was replaced or dropped leaves stale marks in both
//! that are skipped when reached; marks are compacted when they outnumber the entries two to one,
//! so no lookup and no insert ever walks the whole cache except in that amortised compaction.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::time::{Duration, Instant};

use crate::config::{RelayConfig, StaleConfig};
use crate::dns::answer::{write_opt, DnsTransport};
use crate::dns::query::{self, flag, Query, HEADER_LEN, TYPE_OPT};

/// SOA record type (negative caching reads its MINIMUM).
const TYPE_SOA: u16 = 6;
/// Bytes charged per entry on top of its key, reply and TTL offsets: the hash table slot, the
/// two marks (insertion order, expiry) and the allocation's header, roughly.
const ENTRY_OVERHEAD: usize = 160;
/// Bytes per TTL offset kept with an entry: the offset and the capped TTL, 32 bits each.
const TTL_FIELD: usize = 8;

/// The longest key: a 255-octet name, type, class and the DO/CD byte.
pub const KEY_MAX: usize = query::MAX_NAME_LEN + 5;

/// The DO bit in a key's last byte.
const KEY_DO: u8 = 1;
/// The CD bit in a key's last byte.
const KEY_CD: u8 = 2;

/// Writes a key into `buf` and returns it (the name is cut at 255 octets, which no valid name
/// exceeds): the lower-case wire name, type, class and the DO and CD bits, as one byte string.
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

/// Hashes keys (and client prefixes) with SipHash under a random key of its own: what a client
/// sends decides the input, never where it lands.
#[derive(Debug, Clone, Default)]
pub struct KeyHasher(RandomState);

impl KeyHasher {
    /// A hasher with a fresh random key.
    pub fn new() -> KeyHasher {
        KeyHasher(RandomState::new())
    }

    /// The hash of a key's bytes.
    #[inline]
    pub fn hash(&self, key: &[u8]) -> u64 {
        self.0.hash_one(key)
    }

    /// The hash of a number (a client prefix).
    #[inline]
    pub fn hash_u128(&self, n: u128) -> u64 {
        self.0.hash_one(n)
    }
}

/// A hasher for tables whose keys are already [`KeyHasher`] hashes: it passes the `u64` through.
#[derive(Debug, Clone, Copy, Default)]
pub struct Prehashed(u64);

impl Hasher for Prehashed {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }

    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys are meant; anything else still spreads rather than collides.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
}

/// Builds [`Prehashed`] hashers.
pub type BuildPrehashed = BuildHasherDefault<Prehashed>;

/// How the cache is bounded and what it keeps beyond a TTL; from `[relay]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachePolicy {
    /// Answers at most (0: no cache).
    pub capacity: usize,
    /// Bytes at most, bookkeeping included.
    pub max_bytes: usize,
    /// The longest TTL kept or handed out, in seconds.
    pub max_ttl: u32,
    /// Serve-stale settings; `None`: an expired answer is dropped when it is found.
    pub stale: Option<StaleConfig>,
    /// Whether a hit in the last tenth of an answer's TTL asks for a prefetch.
    pub prefetch: bool,
}

impl CachePolicy {
    /// The policy `[relay]` sets.
    pub fn of(config: &RelayConfig) -> CachePolicy {
        CachePolicy {
            capacity: config.cache_entries,
            max_bytes: config.cache_bytes,
            max_ttl: config.max_ttl,
            stale: config.stale,
            prefetch: config.prefetch,
        }
    }

    /// A policy with these bounds, without serve-stale and prefetch.
    pub fn bounded(capacity: usize, max_bytes: usize, max_ttl: u32) -> CachePolicy {
        CachePolicy { capacity, max_bytes, max_ttl, stale: None, prefetch: false }
    }
}

#[derive(Debug)]
struct Entry {
    /// The key, then the reply (OPT removed), then the TTL offsets: (offset, TTL as stored,
    /// already capped), 32 bits each, little-endian, of every record but the OPT.
    data: Box<[u8]>,
    key_len: u16,
    /// Where the reply ends in `data` (the TTL offsets follow).
    reply_end: u32,
    /// The TTL the entry was stored with (the smallest of its records, capped).
    ttl: u32,
    stored_at: Instant,
    expires: Instant,
    /// When a hit asks for a prefetch; `None` once one did (or without prefetch).
    prefetch_at: Option<Instant>,
    /// When a refresh of this (stale) entry last failed.
    failed_at: Option<Instant>,
    /// Which marks in `order` and `expiry` are this entry's.
    seq: u64,
    /// What the entry is charged against `max_bytes`.
    size: usize,
}

impl Entry {
    fn key(&self) -> &[u8] {
        &self.data[..usize::from(self.key_len)]
    }

    fn reply(&self) -> &[u8] {
        &self.data[usize::from(self.key_len)..self.reply_end as usize]
    }

    /// The TTL offsets: (offset in the reply, TTL as stored).
    fn ttl_fields(&self) -> impl Iterator<Item = (usize, u32)> + '_ {
        self.data[self.reply_end as usize..].chunks_exact(TTL_FIELD).map(|c| {
            let at = u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as usize;
            (at, u32::from_le_bytes([c[4], c[5], c[6], c[7]]))
        })
    }

    /// Until when the entry may be served stale under `stale`.
    fn stale_until(&self, stale: &StaleConfig) -> Option<Instant> {
        self.expires.checked_add(stale.max)
    }
}

/// What a lookup found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// A fresh answer of this many bytes is written. `prefetch`: it is in the last tenth of its
    /// TTL and no hit asked for a prefetch of it before (none will again).
    Fresh {
        /// Bytes written.
        len: usize,
        /// Whether the caller should refresh the entry now.
        prefetch: bool,
    },
    /// Expired, but it may be served stale ([`Cache::write_stale`]). `recheck`: a refresh failed
    /// less than the stale refresh time ago, so serve it at once without asking upstream.
    Stale {
        /// Whether a refresh failed recently.
        recheck: bool,
    },
    /// Nothing to serve.
    Miss,
}

/// A cache bounded in entries and bytes; stale entries make room first, then the oldest.
#[derive(Debug)]
pub struct Cache {
    entries: HashMap<u64, Entry, BuildPrehashed>,
    /// (hash, seq) in insertion order.
    order: VecDeque<(u64, u64)>,
    /// (expires, seq, hash), the earliest expiry on top.
    expiry: BinaryHeap<Reverse<(Instant, u64, u64)>>,
    policy: CachePolicy,
    bytes: usize,
    next_seq: u64,
    /// The TTL offsets of the reply being inserted (reused).
    spans: Vec<(u32, u32)>,
}

impl Cache {
    /// A cache under `policy`.
    pub fn new(policy: CachePolicy) -> Cache {
        Cache {
            entries: HashMap::default(),
            order: VecDeque::new(),
            expiry: BinaryHeap::new(),
            policy,
            bytes: 0,
            next_seq: 0,
            spans: Vec::new(),
        }
    }

    /// Applies a reloaded policy, keeping what fits: entries past new bounds make room as an
    /// insert would (stale first), and TTLs over a lowered `max_ttl` are cut to it.
    pub fn reconfigure(&mut self, policy: CachePolicy, now: Instant) {
        let lowered = policy.max_ttl < self.policy.max_ttl;
        self.policy = policy;
        if policy.capacity == 0 {
            self.entries.clear();
            self.order.clear();
            self.expiry.clear();
            self.bytes = 0;
            return;
        }
        if lowered {
            let max = policy.max_ttl;
            for e in self.entries.values_mut() {
                let start = e.reply_end as usize;
                for c in e.data[start..].chunks_exact_mut(TTL_FIELD) {
                    let ttl = u32::from_le_bytes([c[4], c[5], c[6], c[7]]).min(max);
                    c[4..8].copy_from_slice(&ttl.to_le_bytes());
                }
                e.ttl = e.ttl.min(max);
                let cap = e.stored_at.checked_add(Duration::from_secs(u64::from(max))).unwrap_or(e.expires);
                e.expires = e.expires.min(cap);
                e.prefetch_at = e.prefetch_at.map(|p| p.min(cap));
            }
            let entries = &self.entries;
            self.expiry = entries.iter().map(|(&h, e)| Reverse((e.expires, e.seq, h))).collect();
        }
        self.make_room(0, now);
    }

    /// Answers held now (expired ones included until they are looked up or make room).
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

    /// Stores an upstream reply (already validated) under `key` (whose hash is `hash`) if it is
    /// cacheable; returns its TTL if stored. It replaces a fresh or stale entry of the same key.
    /// A reply that cannot be cached (TTL 0, REFUSED, too big) still ends the key's entry: the
    /// upstream answered, so an old answer must not go on being served stale.
    pub fn insert(&mut self, hash: u64, key: &[u8], reply: &[u8], now: Instant) -> Option<u32> {
        if self.get(hash, key).is_some() {
            self.remove(hash);
        }
        if self.policy.capacity == 0 || key.len() > KEY_MAX {
            return None;
        }
        let kept = cacheable(reply, self.policy.max_ttl, &mut self.spans)?;
        let size = key.len() + kept.len + self.spans.len() * TTL_FIELD + ENTRY_OVERHEAD;
        if size > self.policy.max_bytes {
            return None;
        }
        let expires = now.checked_add(Duration::from_secs(u64::from(kept.ttl)))?;
        self.remove(hash);
        self.make_room(size, now);
        let mut data = Vec::with_capacity(key.len() + kept.len + self.spans.len() * TTL_FIELD);
        data.extend_from_slice(key);
        data.extend_from_slice(&reply[..kept.len]);
        if kept.drop_opt {
            let at = key.len() + 10;
            data[at..at + 2].copy_from_slice(&kept.ar.to_be_bytes());
        }
        let reply_end = data.len() as u32;
        for &(at, ttl) in &self.spans {
            data.extend_from_slice(&at.to_le_bytes());
            data.extend_from_slice(&ttl.to_le_bytes());
        }
        // A hit in the last tenth of the TTL asks for a refresh: 0.9 × TTL after the store.
        let prefetch_at =
            self.policy.prefetch.then(|| now.checked_add(Duration::from_millis(u64::from(kept.ttl) * 900))).flatten();
        let seq = self.next_seq;
        self.next_seq += 1;
        self.order.push_back((hash, seq));
        self.expiry.push(Reverse((expires, seq, hash)));
        self.bytes += size;
        let entry = Entry {
            data: data.into_boxed_slice(),
            key_len: key.len() as u16,
            reply_end,
            ttl: kept.ttl,
            stored_at: now,
            expires,
            prefetch_at,
            failed_at: None,
            seq,
            size,
        };
        self.entries.insert(hash, entry);
        self.compact();
        Some(kept.ttl)
    }

    /// Makes room for an entry of `size` bytes (0: only brings the cache within its bounds):
    /// the entry that expired longest ago first, then the oldest inserted.
    fn make_room(&mut self, size: usize, now: Instant) {
        let room = usize::from(size > 0);
        while self.entries.len() + room > self.policy.capacity || self.bytes + size > self.policy.max_bytes {
            if let Some(&Reverse((expires, seq, hash))) = self.expiry.peek() {
                if expires <= now {
                    self.expiry.pop();
                    if self.entries.get(&hash).is_some_and(|e| e.seq == seq) {
                        self.remove(hash);
                    }
                    continue;
                }
            }
            let Some((hash, seq)) = self.order.pop_front() else { break };
            if self.entries.get(&hash).is_some_and(|e| e.seq == seq) {
                self.remove(hash);
            }
        }
    }

    /// Drops the marks of entries that are gone once they outnumber the entries two to one.
    fn compact(&mut self) {
        let limit = 2 * self.entries.len() + 64;
        let entries = &self.entries;
        let live = |hash: &u64, seq: &u64| entries.get(hash).is_some_and(|e| e.seq == *seq);
        if self.order.len() > limit {
            self.order.retain(|(h, s)| live(h, s));
        }
        if self.expiry.len() > limit {
            self.expiry.retain(|Reverse((_, s, h))| live(h, s));
        }
    }

    /// Drops the entry under `hash`, if any (its marks go stale).
    fn remove(&mut self, hash: u64) {
        if let Some(e) = self.entries.remove(&hash) {
            self.bytes -= e.size;
        }
    }

    /// The entry under `hash` if it is `key`'s.
    #[inline]
    fn get(&self, hash: u64, key: &[u8]) -> Option<&Entry> {
        self.entries.get(&hash).filter(|e| e.key() == key)
    }

    /// Looks `key` up for a client's query (`packet`: its header and question at least) and, if
    /// it is fresh, writes the answer into `out`. An entry too old to serve even stale is dropped.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub fn lookup(
        &mut self,
        hash: u64,
        key: &[u8],
        packet: &[u8],
        query: &Query,
        transport: DnsTransport,
        out: &mut [u8],
        now: Instant,
    ) -> Lookup {
        let Some(entry) = self.entries.get_mut(&hash).filter(|e| e.key() == key) else { return Lookup::Miss };
        if now < entry.expires {
            let prefetch = entry.prefetch_at.is_some_and(|at| now >= at);
            if prefetch {
                entry.prefetch_at = None;
            }
            let age = now.duration_since(entry.stored_at).as_secs().min(u64::from(u32::MAX)) as u32;
            return match write_entry(entry, packet, query, transport, out, |ttl| ttl.saturating_sub(age)) {
                Some(len) => Lookup::Fresh { len, prefetch },
                None => Lookup::Miss,
            };
        }
        if let Some(stale) = &self.policy.stale {
            if entry.stale_until(stale).is_some_and(|until| now < until) {
                let recheck = entry.failed_at.is_some_and(|t| now.saturating_duration_since(t) < stale.refresh);
                return Lookup::Stale { recheck };
            }
        }
        self.remove(hash);
        Lookup::Miss
    }

    /// Writes the fresh answer under `key` for a client (`head`: its header and question), if
    /// there is one: no prefetch is asked for and nothing is dropped.
    #[allow(clippy::too_many_arguments)]
    pub fn answer(
        &self,
        hash: u64,
        key: &[u8],
        head: &[u8],
        query: &Query,
        transport: DnsTransport,
        out: &mut [u8],
        now: Instant,
    ) -> Option<usize> {
        let entry = self.get(hash, key).filter(|e| now < e.expires)?;
        let age = now.duration_since(entry.stored_at).as_secs().min(u64::from(u32::MAX)) as u32;
        write_entry(entry, head, query, transport, out, |ttl| ttl.saturating_sub(age))
    }

    /// Whether `key` has an answer that may be served stale now.
    pub fn has_stale(&self, hash: u64, key: &[u8], now: Instant) -> bool {
        let Some(stale) = &self.policy.stale else { return false };
        self.get(hash, key).is_some_and(|e| now >= e.expires && e.stale_until(stale).is_some_and(|u| now < u))
    }

    /// Writes the stale answer under `key` for a client (`head`: its header and question), every
    /// TTL the stale TTL (RFC 8767 §4), if it may be served stale now.
    #[allow(clippy::too_many_arguments)]
    pub fn write_stale(
        &self,
        hash: u64,
        key: &[u8],
        head: &[u8],
        query: &Query,
        transport: DnsTransport,
        out: &mut [u8],
        now: Instant,
    ) -> Option<usize> {
        let stale = self.policy.stale.as_ref()?;
        let entry = self.get(hash, key)?;
        if now < entry.expires || entry.stale_until(stale).is_none_or(|until| now >= until) {
            return None;
        }
        write_entry(entry, head, query, transport, out, |_| stale.ttl)
    }

    /// A refresh of `key` failed at `now`: while the stale refresh time runs, its stale answer is
    /// served at once and upstream is not asked ([`Lookup::Stale`] with `recheck`).
    pub fn refresh_failed(&mut self, hash: u64, key: &[u8], now: Instant) {
        if let Some(e) = self.entries.get_mut(&hash).filter(|e| e.key() == key) {
            e.failed_at = Some(now);
        }
    }
}

/// Writes `entry`'s reply for a client (`head`: its header and question) into `out`, each TTL
/// as `ttl` makes it: the client's ID, RD and CD, its question exactly as asked, an OPT if it
/// sent one; the question alone with TC if it does not fit. `None` if it cannot be written.
#[inline]
fn write_entry(
    entry: &Entry,
    head: &[u8],
    query: &Query,
    transport: DnsTransport,
    out: &mut [u8],
    ttl: impl Fn(u32) -> u32,
) -> Option<usize> {
    let q_end = query.question_end;
    let limit = transport.limit(query).min(out.len());
    let opt = if query.edns.is_some() { crate::dns::answer::OPT_LEN } else { 0 };
    let bytes = entry.reply();
    if bytes.len() < q_end || q_end < HEADER_LEN || out.len() < q_end + opt || head.len() < q_end {
        return None;
    }
    let mut len = if bytes.len() + opt <= limit {
        out[..bytes.len()].copy_from_slice(bytes);
        for (at, stored) in entry.ttl_fields() {
            out[at..at + 4].copy_from_slice(&ttl(stored).to_be_bytes());
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
    out[..2].copy_from_slice(&head[..2]);
    let flags = (u16::from_be_bytes([out[2], out[3]]) & !(flag::RD | flag::CD)) | (query.flags & (flag::RD | flag::CD));
    out[2..4].copy_from_slice(&flags.to_be_bytes());
    out[HEADER_LEN..q_end].copy_from_slice(&head[HEADER_LEN..q_end]);
    if let Some(edns) = query.edns {
        len += write_opt(&mut out[len..], 0, edns.dnssec_ok, transport);
        let ar = u16::from_be_bytes([out[10], out[11]]).saturating_add(1);
        out[10..12].copy_from_slice(&ar.to_be_bytes());
    }
    Some(len)
}

/// A reply fit for the cache: how much of it to keep and for how long (its TTL offsets are in
/// the caller's `spans`).
struct Cacheable {
    /// Bytes kept from the start: up to the last record, without the upstream's OPT.
    len: usize,
    /// Whether the OPT was cut off, so ARCOUNT must say `ar`.
    drop_opt: bool,
    /// ARCOUNT without the OPT.
    ar: u16,
    ttl: u32,
}

/// Where the records of a reply lie, besides their TTL fields (handed to the walker's callback).
/// `None` if the message does not parse to its end.
struct RecordSpans {
    /// (start, end) of the OPT record.
    opt: Option<(usize, usize)>,
    /// min(SOA TTL, SOA MINIMUM) of an authority SOA, for negative answers.
    negative_ttl: Option<u32>,
    /// Just past the last record.
    end: usize,
}

/// Walks a reply's question and records (owner names may be compressed; nothing is followed),
/// calling `ttl_field(offset, TTL)` for every record but the OPT.
fn record_spans(reply: &[u8], mut ttl_field: impl FnMut(u32, u32)) -> Option<RecordSpans> {
    if reply.len() < HEADER_LEN {
        return None;
    }
    let count = |i: usize| u16::from_be_bytes([reply[4 + 2 * i], reply[5 + 2 * i]]);
    let mut at = question_end(reply)?;
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
                ttl_field(r.ttl_at as u32, ttl);
                if section == 1 && r.rtype == TYPE_SOA && r.end >= r.rdata_at + 4 {
                    // RFC 2308 §5: a negative answer lives min(SOA TTL, SOA MINIMUM).
                    let minimum = u32::from_be_bytes(reply[r.end - 4..r.end].try_into().ok()?);
                    negative_ttl = Some(ttl.min(minimum));
                }
            }
            at = r.end;
        }
    }
    Some(RecordSpans { opt, negative_ttl, end: at })
}

/// Whether and for how long a reply may be cached; its TTL offsets, each TTL at most `max_ttl`,
/// go into `spans`.
fn cacheable(reply: &[u8], max_ttl: u32, spans: &mut Vec<(u32, u32)>) -> Option<Cacheable> {
    if reply.len() < HEADER_LEN {
        return None;
    }
    let flags = u16::from_be_bytes([reply[2], reply[3]]);
    let rcode = flags & 0xf;
    if flags & flag::QR == 0 || flags & flag::TC != 0 || (rcode != 0 && rcode != 3) {
        return None;
    }
    spans.clear();
    let RecordSpans { opt, negative_ttl, end } = record_spans(reply, |at, ttl| spans.push((at, ttl.min(max_ttl))))?;
    let an = u16::from_be_bytes([reply[6], reply[7]]);
    let ar = u16::from_be_bytes([reply[10], reply[11]]);
    let min_ttl = spans.iter().map(|&(_, t)| t).min().unwrap_or(max_ttl);
    let negative = rcode == 3 || an == 0;
    let ttl = if negative { negative_ttl? } else { min_ttl }.min(max_ttl);
    if ttl == 0 {
        return None;
    }
    match opt {
        // Drop the upstream's OPT: each client gets one that matches its own query.
        Some((start, opt_end)) if opt_end == end => {
            Some(Cacheable { len: start, drop_opt: true, ar: ar.saturating_sub(1), ttl })
        }
        Some(_) => None, // OPT not last: rare; do not cache rather than rewrite the message
        None => Some(Cacheable { len: end, drop_opt: false, ar, ttl }),
    }
}

/// Makes an uncached reply (in `msg`, as it will be sent) fit a client: every TTL at most
/// `max_ttl`, and the upstream's OPT record removed for a client that sent none (RFC 6891 §7)
/// when it is the last record. Returns the new length. A message that does not parse is left as
/// it is.
pub fn fit_for_client(msg: &mut [u8], max_ttl: u32, client_edns: bool) -> usize {
    // Only the TTLs over the cap are rewritten: the walk reads the message it would change, so
    // the offsets are gathered first (at most one per record, and a record is at least 11 bytes).
    let mut over = [0u32; 64];
    let mut n = 0;
    let mut more = false;
    let Some(l) = record_spans(msg, |at, ttl| {
        if ttl > max_ttl {
            match over.get_mut(n) {
                Some(slot) => {
                    *slot = at;
                    n += 1;
                }
                None => more = true,
            }
        }
    }) else {
        return msg.len();
    };
    for &at in &over[..n] {
        let at = at as usize;
        msg[at..at + 4].copy_from_slice(&max_ttl.to_be_bytes());
    }
    if more {
        // More than 64 records over the cap: a second walk for the rest (rare, bounded by the size).
        let mut rest = Vec::new();
        record_spans(msg, |at, ttl| {
            if ttl > max_ttl {
                rest.push(at);
            }
        });
        for at in rest {
            let at = at as usize;
            msg[at..at + 4].copy_from_slice(&max_ttl.to_be_bytes());
        }
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

    fn key(name: &str) -> Vec<u8> {
        let mut buf = [0u8; KEY_MAX];
        key_bytes(&crate::dns::wire_name(name), 1, 1, false, false, &mut buf).to_vec()
    }

    /// One hasher for every test, so a key's hash is the same in each call.
    fn hasher() -> &'static KeyHasher {
        static HASHER: std::sync::OnceLock<KeyHasher> = std::sync::OnceLock::new();
        HASHER.get_or_init(KeyHasher::new)
    }

    fn ins(c: &mut Cache, key: Vec<u8>, reply: &[u8], now: Instant) -> Option<u32> {
        c.insert(hasher().hash(&key), &key, reply, now)
    }

    fn cache(capacity: usize, max_bytes: usize, max_ttl: u32) -> Cache {
        Cache::new(CachePolicy::bounded(capacity, max_bytes, max_ttl))
    }

    fn hit(cache: &mut Cache, name: &str, id: u16, edns: bool, now: Instant) -> Option<Message> {
        let packet = client_query(name, id, edns);
        let mut lower = [0u8; query::MAX_NAME_LEN];
        let q = query::parse(&packet, &mut lower).unwrap();
        let mut out = [0u8; 1500];
        let key = key(&name.to_ascii_lowercase());
        let udp = DnsTransport::Udp { max_payload: 1232 };
        match cache.lookup(hasher().hash(&key), &key, &packet, &q, udp, &mut out, now) {
            Lookup::Fresh { len, .. } => Some(Message::from_vec(&out[..len]).unwrap()),
            _ => None,
        }
    }

    #[test]
    fn ttls_count_down_and_expire() {
        let t0 = Instant::now();
        let mut c = cache(10, 1 << 20, 86_400);
        let r = reply(
            "www.example.test.",
            ResponseCode::NoError,
            &[(300, [192, 0, 2, 1]), (100, [192, 0, 2, 2])],
            None,
            true,
        );
        assert_eq!(ins(&mut c, key("www.example.test"), &r, t0), Some(100));
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
        let mut c = cache(10, 1 << 20, 86_400);
        let nx = reply("nx.example.test.", ResponseCode::NXDomain, &[], Some((3600, 60)), false);
        assert_eq!(ins(&mut c, key("nx.example.test"), &nx, t0), Some(60), "min(SOA TTL, MINIMUM)");
        let m = hit(&mut c, "nx.example.test.", 9, false, t0 + Duration::from_secs(10)).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(m.authorities[0].ttl, 3590);
        let nodata_without_soa = reply("nd.example.test.", ResponseCode::NoError, &[], None, false);
        assert_eq!(ins(&mut c, key("nd.example.test"), &nodata_without_soa, t0), None, "no SOA: not cached");
        let servfail = reply("sf.example.test.", ResponseCode::ServFail, &[], None, false);
        assert_eq!(ins(&mut c, key("sf.example.test"), &servfail, t0), None);
    }

    #[test]
    fn bounded_by_entries() {
        let t0 = Instant::now();
        let mut c = cache(2, 1 << 20, 86_400);
        for i in 0..5u8 {
            let name = format!("h{i}.example.test.");
            ins(
                &mut c,
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
        let size = one.len() + TTL_FIELD + key("h0.example.test").len() + ENTRY_OVERHEAD;
        let mut c = cache(100, 3 * size, 86_400);
        for i in 0..10u8 {
            let name = format!("h{i}.example.test.");
            let r = reply(&name, ResponseCode::NoError, &[(60, [192, 0, 2, i])], None, false);
            assert!(ins(&mut c, key(&name[..name.len() - 1]), &r, t0).is_some());
            assert!(c.bytes() <= 3 * size, "{} bytes held", c.bytes());
        }
        assert_eq!(c.len(), 3);
        assert!(hit(&mut c, "h9.example.test.", 1, false, t0).is_some());
        assert!(hit(&mut c, "h6.example.test.", 1, false, t0).is_none(), "the oldest went first");
        let mut tiny = cache(100, size - 1, 86_400);
        assert_eq!(ins(&mut tiny, key("h0.example.test"), &one, t0), None, "larger than the whole cache");
    }

    #[test]
    fn ttls_are_capped() {
        let t0 = Instant::now();
        let mut c = cache(10, 1 << 20, 60);
        let r = reply("long.example.test.", ResponseCode::NoError, &[(172_800, [192, 0, 2, 1])], None, false);
        assert_eq!(ins(&mut c, key("long.example.test"), &r, t0), Some(60));
        let m = hit(&mut c, "long.example.test.", 1, false, t0 + Duration::from_secs(10)).unwrap();
        assert_eq!(m.answers[0].ttl, 50, "the client never sees more than the cap");
        assert!(hit(&mut c, "long.example.test.", 1, false, t0 + Duration::from_secs(60)).is_none());
        let nx = reply("nx.example.test.", ResponseCode::NXDomain, &[], Some((86_400, 86_400)), false);
        assert_eq!(ins(&mut c, key("nx.example.test"), &nx, t0), Some(60), "negative answers too");
    }

    #[test]
    fn the_cd_and_do_bits_are_part_of_the_key() {
        let name = crate::dns::wire_name("www.example.test");
        let keys: std::collections::HashSet<Vec<u8>> = [(false, false), (true, false), (false, true), (true, true)]
            .into_iter()
            .map(|(d, c)| key_bytes(&name, 1, 1, d, c, &mut [0u8; KEY_MAX]).to_vec())
            .collect();
        assert_eq!(keys.len(), 4);
    }

    #[test]
    fn expired_and_replaced_entries_leave_no_unbounded_marks() {
        let t0 = Instant::now();
        let mut c = cache(1000, 1 << 24, 86_400);
        let r = reply("hot.example.test.", ResponseCode::NoError, &[(1, [192, 0, 2, 1])], None, false);
        for i in 0..10_000u64 {
            let now = t0 + Duration::from_secs(i);
            assert!(hit(&mut c, "hot.example.test.", 1, false, now).is_none(), "expired after a second");
            ins(&mut c, key("hot.example.test"), &r, now);
            ins(&mut c, key("hot.example.test"), &r, now);
        }
        assert_eq!(c.len(), 1);
        assert!(c.order.len() <= 2 * c.len() + 64 + 1, "{} marks for {} entries", c.order.len(), c.len());
        assert!(c.expiry.len() <= 2 * c.len() + 64 + 1, "{} marks for {} entries", c.expiry.len(), c.len());
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

    fn stale_policy(max_s: u64) -> CachePolicy {
        CachePolicy {
            stale: Some(StaleConfig {
                max: Duration::from_secs(max_s),
                ttl: 30,
                refresh: Duration::from_secs(10),
                answer_after: Duration::from_millis(1800),
            }),
            prefetch: true,
            ..CachePolicy::bounded(10, 1 << 20, 3600)
        }
    }

    fn look(c: &mut Cache, name: &str, now: Instant) -> Lookup {
        let packet = client_query(name, 1, false);
        let mut lower = [0u8; query::MAX_NAME_LEN];
        let q = query::parse(&packet, &mut lower).unwrap();
        let key = key(&name.to_ascii_lowercase());
        c.lookup(hasher().hash(&key), &key, &packet, &q, DnsTransport::Tcp, &mut [0u8; 1500], now)
    }

    fn stale(c: &Cache, name: &str, now: Instant) -> Option<Message> {
        let packet = client_query(name, 77, false);
        let mut lower = [0u8; query::MAX_NAME_LEN];
        let q = query::parse(&packet, &mut lower).unwrap();
        let key = key(&name.to_ascii_lowercase());
        let mut out = [0u8; 1500];
        let n = c.write_stale(hasher().hash(&key), &key, &packet, &q, DnsTransport::Tcp, &mut out, now)?;
        Some(Message::from_vec(&out[..n]).unwrap())
    }

    #[test]
    fn expired_answers_are_served_stale_until_the_stale_maximum() {
        let t0 = Instant::now();
        let mut c = Cache::new(stale_policy(100));
        let r = reply("old.example.test.", ResponseCode::NoError, &[(60, [192, 0, 2, 1])], None, false);
        ins(&mut c, key("old.example.test"), &r, t0);
        let nx = reply("nx.example.test.", ResponseCode::NXDomain, &[], Some((60, 60)), false);
        ins(&mut c, key("nx.example.test"), &nx, t0);
        assert!(stale(&c, "old.example.test.", t0 + Duration::from_secs(59)).is_none(), "fresh: not stale");
        let at = t0 + Duration::from_secs(60);
        assert_eq!(look(&mut c, "old.example.test.", at), Lookup::Stale { recheck: false });
        let m = stale(&c, "OLD.example.test.", at).unwrap();
        assert_eq!((m.metadata.id, m.answers[0].ttl), (77, 30), "the stale TTL, the client's ID");
        assert_eq!(m.queries[0].name().to_ascii(), "OLD.example.test.");
        let m = stale(&c, "nx.example.test.", at).unwrap();
        assert_eq!((m.metadata.response_code, m.authorities[0].ttl), (ResponseCode::NXDomain, 30), "negative too");
        // A failed refresh: stale at once (recheck) while the refresh time runs.
        c.refresh_failed(hasher().hash(&key("old.example.test")), &key("old.example.test"), at);
        assert_eq!(look(&mut c, "old.example.test.", at + Duration::from_secs(9)), Lookup::Stale { recheck: true });
        assert_eq!(look(&mut c, "old.example.test.", at + Duration::from_secs(10)), Lookup::Stale { recheck: false });
        // Never past the stale maximum, however often it failed.
        let end = t0 + Duration::from_secs(160);
        c.refresh_failed(hasher().hash(&key("old.example.test")), &key("old.example.test"), end);
        assert!(stale(&c, "old.example.test.", end).is_none());
        assert_eq!(look(&mut c, "old.example.test.", end), Lookup::Miss);
        assert_eq!(c.len(), 1, "dropped when found too old");
        // Without serve-stale an expired answer is gone at once.
        let mut plain = cache(10, 1 << 20, 3600);
        ins(&mut plain, key("old.example.test"), &r, t0);
        assert_eq!(look(&mut plain, "old.example.test.", at), Lookup::Miss);
        assert!(plain.is_empty());
    }

    #[test]
    fn an_answer_that_cannot_be_cached_still_ends_the_stale_one() {
        let t0 = Instant::now();
        let at = t0 + Duration::from_secs(61);
        let old = reply("old.example.test.", ResponseCode::NoError, &[(60, [192, 0, 2, 1])], None, false);
        for fresh in [
            reply("old.example.test.", ResponseCode::NoError, &[(0, [192, 0, 2, 2])], None, false),
            reply("old.example.test.", ResponseCode::Refused, &[], None, false),
        ] {
            let mut c = Cache::new(stale_policy(100));
            ins(&mut c, key("old.example.test"), &old, t0);
            assert!(stale(&c, "old.example.test.", at).is_some());
            assert_eq!(ins(&mut c, key("old.example.test"), &fresh, at), None, "not cacheable");
            assert!(stale(&c, "old.example.test.", at).is_none(), "the upstream answered: nothing stale is left");
            assert!(c.is_empty());
        }
    }

    #[test]
    fn a_hit_in_the_last_tenth_of_the_ttl_asks_for_one_prefetch() {
        let t0 = Instant::now();
        let mut c = Cache::new(stale_policy(100));
        let r = reply("pop.example.test.", ResponseCode::NoError, &[(100, [192, 0, 2, 1])], None, false);
        ins(&mut c, key("pop.example.test"), &r, t0);
        let fresh = |prefetch| Lookup::Fresh { len: r.len(), prefetch };
        assert_eq!(look(&mut c, "pop.example.test.", t0 + Duration::from_millis(89_999)), fresh(false));
        assert_eq!(look(&mut c, "pop.example.test.", t0 + Duration::from_secs(90)), fresh(true));
        assert_eq!(look(&mut c, "pop.example.test.", t0 + Duration::from_secs(95)), fresh(false), "once");
        // The refreshed answer starts its own count.
        let later = t0 + Duration::from_secs(96);
        ins(&mut c, key("pop.example.test"), &r, later);
        assert_eq!(look(&mut c, "pop.example.test.", later + Duration::from_secs(91)), fresh(true));
        let mut off = Cache::new(CachePolicy { prefetch: false, ..stale_policy(100) });
        ins(&mut off, key("pop.example.test"), &r, t0);
        assert_eq!(look(&mut off, "pop.example.test.", t0 + Duration::from_secs(99)), fresh(false));
    }

    #[test]
    fn stale_entries_make_room_first_then_the_oldest() {
        let t0 = Instant::now();
        let mut c = Cache::new(CachePolicy { capacity: 3, ..stale_policy(86_400) });
        let put = |c: &mut Cache, name: &str, ttl: u32, now: Instant| {
            let r = reply(&format!("{name}."), ResponseCode::NoError, &[(ttl, [192, 0, 2, 1])], None, false);
            ins(c, key(name), &r, now);
        };
        put(&mut c, "long.example.test", 3600, t0);
        put(&mut c, "short.example.test", 10, t0 + Duration::from_secs(1));
        put(&mut c, "mid.example.test", 600, t0 + Duration::from_secs(2));
        let now = t0 + Duration::from_secs(20);
        put(&mut c, "new.example.test", 600, now);
        assert!(stale(&c, "short.example.test.", now).is_none(), "the stale one went, not the oldest");
        assert!(matches!(look(&mut c, "long.example.test.", now), Lookup::Fresh { prefetch: false, .. }));
        put(&mut c, "newer.example.test", 600, now);
        assert_eq!(look(&mut c, "long.example.test.", now), Lookup::Miss, "no stale one left: the oldest");
        assert_eq!(c.len(), 3);
    }

    #[test]
    fn a_reload_keeps_what_fits_and_cuts_ttls_to_a_lower_cap() {
        let t0 = Instant::now();
        let mut c = Cache::new(stale_policy(100));
        for i in 0..5u8 {
            let name = format!("r{i}.example.test");
            let r = reply(&format!("{name}."), ResponseCode::NoError, &[(3000, [192, 0, 2, i])], None, false);
            ins(&mut c, key(&name), &r, t0);
        }
        let policy = CachePolicy { capacity: 3, max_ttl: 600, ..stale_policy(100) };
        c.reconfigure(policy, t0);
        assert_eq!(c.len(), 3);
        assert!(
            hit(&mut c, "r4.example.test.", 1, false, t0).is_some()
                && hit(&mut c, "r0.example.test.", 1, false, t0).is_none()
        );
        let m = hit(&mut c, "r4.example.test.", 1, false, t0 + Duration::from_secs(100)).unwrap();
        assert_eq!(m.answers[0].ttl, 500, "capped at the new max_ttl, counting down");
        assert_eq!(look(&mut c, "r4.example.test.", t0 + Duration::from_secs(600)), Lookup::Stale { recheck: false });
        c.reconfigure(CachePolicy { capacity: 0, ..policy }, t0);
        assert!(c.is_empty() && c.bytes() == 0);
    }
}
