//! Local names from a hosts file, the `/etc/hosts` format DNRD read: `ADDRESS NAME [ALIAS...]`,
//! `#` starts a comment. dnlb answers them itself (A, AAAA, and PTR for the reverse names) from the
//! same snapshot as the SIP names, so they cost what a SIP answer costs.
//!
//! ```text
//!  file ──read_text──► one pass over the lines ──► names interned (an open-addressing index into
//!                      (bounded report of bad      one buffer of wire names), (name, address)
//!                       lines: first 10, a count)   pairs, each reverse name's first name
//!       ──► counting sort by name ──► Hosts: every record encoded once, one name's records back to
//!                                     back (A, AAAA, PTR), looked up as a window of that buffer
//! ```
//!
//! A file is parsed once, where it is read (the configuration load, a reload, the hosts watch;
//! never the prober thread), into a table shared by every snapshot made from that configuration:
//! a health flip re-encodes nothing here. The load is linear in the file and the memory linear in
//! the names kept (no per-name allocation); a file with a bad line is refused whole, and the
//! report of why is bounded whatever the file holds. The loops are plain index loops over bytes,
//! so even a debug build reads a million lines in seconds (a `str::split` and `hashbrown` version
//! took a minute there).

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::Path;

use crate::dns::answer::Window;
use crate::dns::encode::{append_address_record, AAAA_RECORD_LEN, A_RECORD_LEN};
use crate::dns::{rtype, CLASS_IN};

/// Bad lines reported by line number; the rest are counted.
pub const REPORTED_PROBLEMS: usize = 10;
/// The most characters of a bad token quoted in a report (a line may be megabytes long).
const QUOTED: usize = 48;
/// Bytes of a PTR record before its target: owner pointer, type, class, TTL, RDATA length.
const PTR_HEAD: usize = 12;
/// A name with no PTR target (in the builder).
const NO_TARGET: u32 = u32::MAX;

/// Why a hosts file was not taken. The operator's file either way: its path, or its lines.
#[derive(Debug, thiserror::Error)]
pub enum HostsError {
    /// The file could not be read (missing, not a regular file, too large, not UTF-8).
    #[error("cannot read {path}: {source}: fix the path or remove [hosts]")]
    Read {
        /// The file.
        path: String,
        /// What went wrong.
        source: std::io::Error,
    },
    /// Some lines do not parse: the whole file is refused, and the first of them are named.
    #[error("{path}: {bad}")]
    BadLines {
        /// The file.
        path: String,
        /// The bad lines.
        bad: BadLines,
    },
}

/// A line that could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostsProblem {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong and how to fix it.
    pub message: String,
}

/// The bad lines of a file: the first [`REPORTED_PROBLEMS`] with their numbers, and how many
/// there are in all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLines {
    /// The first problems, in line order.
    pub first: Vec<HostsProblem>,
    /// Every problem, those in `first` included.
    pub total: usize,
}

impl BadLines {
    /// Counts a problem, and keeps it if it is among the first.
    fn add(&mut self, line: usize, message: String) {
        if self.first.len() < REPORTED_PROBLEMS {
            self.first.push(HostsProblem { line, message });
        }
        self.total += 1;
    }
}

impl std::fmt::Display for BadLines {
    /// One line whatever the file: `N bad line(s), the file is refused whole: line 2: ...; ...;
    /// and M more`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = if self.total == 1 { "" } else { "s" };
        write!(f, "{} bad line{s}, the file is refused whole: ", self.total)?;
        for (i, p) in self.first.iter().enumerate() {
            let sep = if i == 0 { "" } else { "; " };
            write!(f, "{sep}line {}: {}", p.line, p.message)?;
        }
        let more = self.total.saturating_sub(self.first.len());
        if more > 0 {
            write!(f, "; and {more} more")?;
        }
        Ok(())
    }
}

/// One name of the table: where its wire name and its records are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    /// Offset of its lower-case wire name in [`Hosts::keys`].
    key: u32,
    /// Length of that wire name (at most 255).
    key_len: u8,
    /// Offset of its records in [`Hosts::records`]: `v4` A records, `v6` AAAA records, then its
    /// PTR record of `ptr` bytes.
    records: u32,
    /// A records.
    v4: u32,
    /// AAAA records.
    v6: u32,
    /// Bytes of its PTR record (0: it is no address's reverse name).
    ptr: u16,
}

/// Every name of a hosts file with its answers encoded, as a worker reads them.
#[derive(Default)]
pub struct Hosts {
    /// Every name's lower-case wire name, back to back.
    keys: Vec<u8>,
    /// The names (forward and reverse), in the order first seen.
    entries: Vec<Entry>,
    /// Indices into `entries`, by the hash of the wire name.
    index: Index,
    /// Every record, owner a pointer to the question (offset 12), grouped by name.
    records: Vec<u8>,
    /// The TTL the records carry.
    ttl: u32,
}

impl std::fmt::Debug for Hosts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hosts")
            .field("names", &self.entries.len())
            .field("record_bytes", &self.records.len())
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl PartialEq for Hosts {
    /// The same names with the same answers (the index follows from them).
    fn eq(&self, other: &Hosts) -> bool {
        self.ttl == other.ttl
            && self.keys == other.keys
            && self.entries == other.entries
            && self.records == other.records
    }
}

/// The hash of a wire name: a multiply-rotate over 8-byte words, then splitmix64's finalizer, so
/// the low bits the index uses differ between names that share their tail (`.example.test`).
#[inline]
fn hash(key: &[u8]) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut h = key.len() as u64;
    let mut i = 0;
    while i + 8 <= key.len() {
        let w = u64::from_le_bytes([
            key[i],
            key[i + 1],
            key[i + 2],
            key[i + 3],
            key[i + 4],
            key[i + 5],
            key[i + 6],
            key[i + 7],
        ]);
        h = (h ^ w).wrapping_mul(K).rotate_left(29);
        i += 8;
    }
    let mut tail = 0u64;
    while i < key.len() {
        tail = tail << 8 | u64::from(key[i]);
        i += 1;
    }
    let mut z = (h ^ tail).wrapping_mul(K);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// An open-addressing index (linear probing, at most 3/4 full): each slot holds the upper half of
/// a name's hash (which also picks the slot) and the name's number plus one; 0 is empty.
#[derive(Default)]
struct Index {
    slots: Vec<u64>,
    len: usize,
}

impl Index {
    /// An index with room for `n` names before it grows.
    fn with_capacity(n: usize) -> Index {
        let slots = (n.saturating_mul(4) / 3 + 1).next_power_of_two().max(8);
        Index { slots: vec![0; slots], len: 0 }
    }

    /// The number of the name whose hash is `hash` and for which `eq` holds.
    #[inline]
    fn find(&self, hash: u64, eq: impl Fn(u32) -> bool) -> Option<u32> {
        let mask = self.slots.len().checked_sub(1)?;
        let tag = hash >> 32;
        let mut at = tag as usize & mask;
        loop {
            let slot = self.slots[at];
            if slot == 0 {
                return None;
            }
            let id = (slot as u32).wrapping_sub(1);
            if slot >> 32 == tag && eq(id) {
                return Some(id);
            }
            at = (at + 1) & mask;
        }
    }

    /// Adds name `id` (not in the index) with hash `hash`.
    fn insert(&mut self, hash: u64, id: u32) {
        if (self.len + 1) * 4 > self.slots.len() * 3 {
            self.resize((self.slots.len() * 2).max(8));
        }
        self.place((hash >> 32) << 32 | u64::from(id.wrapping_add(1)));
        self.len += 1;
    }

    /// Puts a slot value in the first free slot from its home.
    fn place(&mut self, slot: u64) {
        let mask = self.slots.len() - 1;
        let mut at = (slot >> 32) as usize & mask;
        while self.slots[at] != 0 {
            at = (at + 1) & mask;
        }
        self.slots[at] = slot;
    }

    /// Moves every name into `size` slots (a power of two, more than the names).
    fn resize(&mut self, size: usize) {
        let old = std::mem::replace(&mut self.slots, vec![0; size]);
        for slot in old {
            if slot != 0 {
                self.place(slot);
            }
        }
    }

    /// Gives back the room a file of fewer names than lines left.
    fn shrink(&mut self) {
        let fit = (self.len * 4 / 3 + 1).next_power_of_two().max(8);
        if fit < self.slots.len() {
            self.resize(fit);
        }
    }
}

/// The wire name of `entry` in `keys`.
fn key_of<'k>(keys: &'k [u8], entry: &Entry) -> &'k [u8] {
    let at = entry.key as usize;
    keys.get(at..at + usize::from(entry.key_len)).unwrap_or_default()
}

impl Hosts {
    /// Reads and parses the hosts file at `path`, its records carrying `ttl`.
    pub fn load(path: &Path, ttl: u32) -> Result<Hosts, HostsError> {
        let shown = || path.display().to_string();
        let text = crate::files::read_text(path).map_err(|source| HostsError::Read { path: shown(), source })?;
        Hosts::parse(&text, ttl).map_err(|bad| HostsError::BadLines { path: shown(), bad })
    }

    /// Parses hosts-file text; every name, or the bad lines (the first few and their count).
    pub fn parse(text: &str, ttl: u32) -> Result<Hosts, BadLines> {
        let mut b = Builder::with_capacity(text);
        let mut bad = BadLines { first: Vec::new(), total: 0 };
        let mut wire = [0u8; 256];
        let bytes = text.as_bytes();
        let (mut start, mut number) = (0, 0);
        while start < bytes.len() {
            let end = memchr::memchr(b'\n', &bytes[start..]).map_or(bytes.len(), |n| start + n);
            number += 1;
            // Comments and line ends are ASCII, so every cut is on a character boundary.
            let line = &text[start..memchr::memchr(b'#', &bytes[start..end]).map_or(end, |n| start + n)];
            start = end + 1;
            let mut fields = Fields { line, at: 0 };
            let Some(addr_text) = fields.next() else { continue };
            // A zone index (fe80::1%eth0) is meaningless in DNS; drop it.
            let bare = addr_text.split_once('%').map_or(addr_text, |(a, _)| a);
            let Ok(address) = bare.parse::<IpAddr>() else {
                let quoted = quote(addr_text);
                bad.add(number, format!("`{quoted}` is not an IP address: each line is `ADDRESS NAME [ALIAS...]`"));
                continue;
            };
            let (mut first, mut bad_name) = (None, false);
            while let Some(name) = fields.next() {
                let Some(len) = wire_name(name, &mut wire) else {
                    let quoted = quote(&name.to_ascii_lowercase());
                    bad.add(number, format!("`{quoted}` is not a valid host name: use letters, digits, '-' and '.'"));
                    bad_name = true;
                    continue;
                };
                // Once the file is refused, only its lines are checked: nothing more is kept.
                if bad.total == 0 {
                    let (id, new) = b.intern(&wire[..len]);
                    b.pair(id, new, address);
                    first = first.or(Some(id));
                } else {
                    first = first.or(Some(NO_TARGET));
                }
            }
            let Some(first) = first else {
                if !bad_name {
                    bad.add(number, format!("{address} has no name: add one after the address"));
                }
                continue;
            };
            if bad.total == 0 {
                let len = reverse_wire_name(address, &mut wire);
                let (reverse, _) = b.intern(&wire[..len]);
                // The first line that names an address gives its PTR target.
                if b.target[reverse as usize] == NO_TARGET {
                    b.target[reverse as usize] = first;
                }
            }
        }
        if bad.total > 0 {
            return Err(bad);
        }
        Ok(b.finish(ttl))
    }

    /// Names in the table (forward and reverse).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table has no names.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every name of the table (forward and reverse), lower-case wire format.
    pub fn names(&self) -> impl Iterator<Item = &[u8]> {
        self.entries.iter().map(|e| key_of(&self.keys, e))
    }

    /// The TTL its answers carry.
    pub fn ttl(&self) -> u32 {
        self.ttl
    }

    /// The entry of a lower-case wire name.
    #[inline]
    fn find(&self, name: &[u8]) -> Option<&Entry> {
        if self.entries.is_empty() {
            return None;
        }
        let (keys, entries) = (&self.keys, &self.entries);
        let i = self.index.find(hash(name), |i| entries.get(i as usize).is_some_and(|e| key_of(keys, e) == name))?;
        self.entries.get(i as usize)
    }

    /// Whether `name` (lower-case wire format) is a name of the file or an address's reverse name.
    #[inline]
    pub fn contains(&self, name: &[u8]) -> bool {
        self.find(name).is_some()
    }

    /// The answer records for `name` (lower-case wire format) and `qtype`: its A or AAAA set or
    /// its PTR record, as a window of one buffer, or an empty window for any other type; `None`
    /// when the file does not have the name.
    #[inline]
    pub fn lookup(&self, name: &[u8], qtype: u16) -> Option<Window<'_>> {
        let e = self.find(name)?;
        let at = e.records as usize;
        let (v4, v6) = (e.v4 as usize, e.v6 as usize);
        let (start, record_len, count) = match qtype {
            rtype::A => (at, A_RECORD_LEN, v4),
            rtype::AAAA => (at + v4 * A_RECORD_LEN, AAAA_RECORD_LEN, v6),
            rtype::PTR if e.ptr > 0 => (at + v4 * A_RECORD_LEN + v6 * AAAA_RECORD_LEN, usize::from(e.ptr), 1),
            _ => (at, 1, 0),
        };
        let records = self.records.get(start..start + record_len * count).unwrap_or_default();
        let count = if records.is_empty() { 0 } else { count };
        Some(Window { records, record_len, count })
    }
}

/// The whitespace-separated fields of a line.
struct Fields<'a> {
    line: &'a str,
    at: usize,
}

impl<'a> Fields<'a> {
    /// The next field (whitespace is ASCII, so the cuts are on character boundaries).
    fn next(&mut self) -> Option<&'a str> {
        let b = self.line.as_bytes();
        let mut i = self.at;
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        let start = i;
        while i < b.len() && !b[i].is_ascii_whitespace() {
            i += 1;
        }
        self.at = i;
        (i > start).then(|| &self.line[start..i])
    }
}

/// The table while a file is read.
#[derive(Default)]
struct Builder {
    keys: Vec<u8>,
    entries: Vec<Entry>,
    index: Index,
    /// Per name, the name its PTR record points at ([`NO_TARGET`]: none).
    target: Vec<u32>,
    /// Per name, its first pair in `pairs` ([`NO_TARGET`]: none yet).
    first_pair: Vec<u32>,
    /// Every (name, address), in file order, each once.
    pairs: Vec<(u32, IpAddr)>,
    /// The pairs of the names seen on more than one line: only a name named again can repeat an
    /// address.
    seen: HashSet<(u32, IpAddr)>,
}

impl Builder {
    /// A builder sized for `text`, which it reads once: a name and a reverse name per line.
    fn with_capacity(text: &str) -> Builder {
        let lines = memchr::memchr_iter(b'\n', text.as_bytes()).count() + 1;
        Builder {
            keys: Vec::with_capacity(text.len() + 32 * lines),
            entries: Vec::with_capacity(2 * lines),
            index: Index::with_capacity(2 * lines),
            target: Vec::with_capacity(2 * lines),
            first_pair: Vec::with_capacity(2 * lines),
            pairs: Vec::with_capacity(lines),
            seen: HashSet::new(),
        }
    }

    /// The index of `key` (a lower-case wire name), added if new; and whether it is new.
    fn intern(&mut self, key: &[u8]) -> (u32, bool) {
        let h = hash(key);
        let (keys, entries) = (&self.keys, &self.entries);
        if let Some(i) = self.index.find(h, |i| key_of(keys, &entries[i as usize]) == key) {
            return (i, false);
        }
        // Offsets are u32: a 64 MiB file holds far fewer names and bytes than 4 Gi.
        let id = self.entries.len() as u32;
        self.entries.push(Entry {
            key: self.keys.len() as u32,
            key_len: key.len().min(255) as u8,
            records: 0,
            v4: 0,
            v6: 0,
            ptr: 0,
        });
        self.keys.extend_from_slice(key);
        self.target.push(NO_TARGET);
        self.first_pair.push(NO_TARGET);
        self.index.insert(h, id);
        (id, true)
    }

    /// Records that name `id` (`new`: seen for the first time) has `address`, unless a line
    /// said so before.
    fn pair(&mut self, id: u32, new: bool, address: IpAddr) {
        let first = self.first_pair[id as usize];
        if !new && first != NO_TARGET {
            // Named again: its addresses so far are remembered from now on (the first one
            // only now, as the set holds only names that repeat).
            if let Some(&earlier) = self.pairs.get(first as usize) {
                self.seen.insert(earlier);
            }
            if !self.seen.insert((id, address)) {
                return;
            }
        }
        let e = &mut self.entries[id as usize];
        if address.is_ipv4() {
            e.v4 += 1;
        } else {
            e.v6 += 1;
        }
        if first == NO_TARGET {
            self.first_pair[id as usize] = self.pairs.len() as u32;
        }
        self.pairs.push((id, address));
    }

    /// Lays every name's records out back to back (a counting sort by name) and encodes them.
    fn finish(mut self, ttl: u32) -> Hosts {
        drop(std::mem::take(&mut self.seen));
        drop(std::mem::take(&mut self.first_pair));
        let mut size = 0usize;
        for id in 0..self.entries.len() {
            let target = self.target[id];
            // The target's wire name is at most 255 bytes: the record fits a u16.
            let ptr = if target == NO_TARGET { 0 } else { PTR_HEAD + usize::from(self.keys_len(target)) };
            let e = &mut self.entries[id];
            e.records = size as u32;
            e.ptr = ptr as u16;
            size += e.v4 as usize * A_RECORD_LEN + e.v6 as usize * AAAA_RECORD_LEN + ptr;
        }
        let mut records = vec![0u8; size];
        // Per name, the A and AAAA records written so far.
        let mut written = vec![(0u32, 0u32); self.entries.len()];
        let mut scratch = Vec::with_capacity(AAAA_RECORD_LEN);
        for &(id, address) in &self.pairs {
            let (e, w) = (&self.entries[id as usize], &mut written[id as usize]);
            let at = e.records as usize
                + match address {
                    IpAddr::V4(_) => {
                        w.0 += 1;
                        (w.0 as usize - 1) * A_RECORD_LEN
                    }
                    IpAddr::V6(_) => {
                        w.1 += 1;
                        e.v4 as usize * A_RECORD_LEN + (w.1 as usize - 1) * AAAA_RECORD_LEN
                    }
                };
            scratch.clear();
            append_address_record(&mut scratch, ttl, address);
            records[at..at + scratch.len()].copy_from_slice(&scratch);
        }
        drop(std::mem::take(&mut self.pairs));
        for (e, &target) in self.entries.iter().zip(&self.target) {
            if target == NO_TARGET {
                continue;
            }
            let at = e.records as usize + e.v4 as usize * A_RECORD_LEN + e.v6 as usize * AAAA_RECORD_LEN;
            let name = key_of(&self.keys, &self.entries[target as usize]);
            let record = &mut records[at..at + usize::from(e.ptr)];
            record[..2].copy_from_slice(&[0xc0, crate::dns::query::HEADER_LEN as u8]);
            record[2..4].copy_from_slice(&rtype::PTR.to_be_bytes());
            record[4..6].copy_from_slice(&CLASS_IN.to_be_bytes());
            record[6..10].copy_from_slice(&ttl.to_be_bytes());
            record[10..12].copy_from_slice(&(name.len() as u16).to_be_bytes());
            record[PTR_HEAD..].copy_from_slice(name);
        }
        // Sized for a name per line; a file of aliases or comments leaves room to give back.
        self.keys.shrink_to_fit();
        self.entries.shrink_to_fit();
        self.index.shrink();
        Hosts { keys: self.keys, entries: self.entries, index: self.index, records, ttl }
    }

    /// The length of name `id`'s wire name.
    fn keys_len(&self, id: u32) -> u8 {
        self.entries.get(id as usize).map_or(0, |e| e.key_len)
    }
}

/// `token`, cut to [`QUOTED`] characters, so one huge token cannot make a huge report.
fn quote(token: &str) -> String {
    match token.char_indices().nth(QUOTED) {
        Some((at, _)) => format!("{}...", &token[..at]),
        None => token.to_string(),
    }
}

/// Writes `name` (a trailing dot allowed) into `out` as a lower-case wire name and returns its
/// length; `None` if it is not a host name (empty labels, labels over 63 bytes, a name over 253,
/// other characters).
fn wire_name(name: &str, out: &mut [u8; 256]) -> Option<usize> {
    let b = name.as_bytes();
    let n = if b.last() == Some(&b'.') { b.len() - 1 } else { b.len() };
    if n == 0 || n > 253 {
        return None;
    }
    // out[label] is the length byte of the label being written, out[o] the next byte.
    let (mut label, mut o, mut i) = (0, 1, 0);
    while i < n {
        let c = b[i];
        i += 1;
        if c == b'.' {
            let len = o - label - 1;
            if len == 0 {
                return None;
            }
            out[label] = len as u8;
            label = o;
            o += 1;
            continue;
        }
        if !(c.is_ascii_alphanumeric() || c == b'-' || c == b'_') || o - label > 63 {
            return None;
        }
        out[o] = c.to_ascii_lowercase();
        o += 1;
    }
    let len = o - label - 1;
    if len == 0 {
        return None;
    }
    out[label] = len as u8;
    out[o] = 0;
    Some(o + 1)
}

/// Writes the reverse-lookup name of an address (RFC 1035 §3.5, RFC 3596 §2.5) into `out` in
/// wire format and returns its length.
fn reverse_wire_name(address: IpAddr, out: &mut [u8; 256]) -> usize {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut o = 0;
    match address {
        IpAddr::V4(a) => {
            let octets = a.octets();
            let mut k = 4;
            while k > 0 {
                k -= 1;
                let v = octets[k];
                let digits: &[u8] = if v >= 100 {
                    &[b'0' + v / 100, b'0' + v / 10 % 10, b'0' + v % 10]
                } else if v >= 10 {
                    &[b'0' + v / 10, b'0' + v % 10]
                } else {
                    &[b'0' + v]
                };
                out[o] = digits.len() as u8;
                out[o + 1..o + 1 + digits.len()].copy_from_slice(digits);
                o += 1 + digits.len();
            }
            out[o..o + 8].copy_from_slice(b"\x07in-addr");
            o += 8;
        }
        IpAddr::V6(a) => {
            let octets = a.octets();
            let mut k = 16;
            while k > 0 {
                k -= 1;
                let byte = octets[k];
                out[o..o + 4].copy_from_slice(&[1, HEX[usize::from(byte & 0xf)], 1, HEX[usize::from(byte >> 4)]]);
                o += 4;
            }
            out[o..o + 4].copy_from_slice(b"\x03ip6");
            o += 4;
        }
    }
    out[o..o + 6].copy_from_slice(b"\x04arpa\0");
    o + 6
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::encode;
    use crate::dns::wire_name as wire;

    fn names(text: &str) -> Hosts {
        Hosts::parse(text, 300).unwrap()
    }

    /// The records of a window, one slice each.
    fn records<'a>(w: &Window<'a>) -> Vec<&'a [u8]> {
        w.records.chunks(w.record_len).collect()
    }

    #[test]
    fn reads_the_etc_hosts_format() {
        let text = "# local\n127.0.0.1 localhost\n192.0.2.10  Proxy.Example.Test. proxy # edge\n\n2001:db8::1 v6.example.test\nfe80::1%eth0 link\n";
        let h = names(text);
        // Five names and four reverse names.
        assert_eq!(h.len(), 9);
        let a = h.lookup(&wire("proxy.example.test"), rtype::A).unwrap();
        assert_eq!(a.count, 1);
        let mut expected = Vec::new();
        encode::append_address_record(&mut expected, 300, "192.0.2.10".parse().unwrap());
        assert_eq!(records(&a), [&expected[..]]);
        assert_eq!(h.lookup(&wire("proxy"), rtype::A).unwrap().count, 1, "an alias answers too");
        assert_eq!(h.lookup(&wire("proxy"), rtype::AAAA).unwrap().count, 0, "no AAAA: NODATA");
        assert_eq!(h.lookup(&wire("link"), rtype::AAAA).unwrap().count, 1, "the zone index is dropped");
        assert_eq!(h.lookup(&wire("link"), rtype::SRV).unwrap().count, 0);
        assert!(h.lookup(&wire("other.example.test"), rtype::A).is_none());
    }

    #[test]
    fn a_name_on_several_lines_gets_every_address_once_and_ptr_the_first_name() {
        let h = names("192.0.2.1 a.test b.test\n192.0.2.2 a.test\n2001:db8::1 a.test\n192.0.2.1 a.test c.test\n");
        let a = h.lookup(&wire("a.test"), rtype::A).unwrap();
        let mut expected = Vec::new();
        for ip in ["192.0.2.1", "192.0.2.2"] {
            encode::append_address_record(&mut expected, 300, ip.parse().unwrap());
        }
        assert_eq!((a.count, a.records), (2, &expected[..]), "file order, the repeat dropped");
        assert_eq!(h.lookup(&wire("a.test"), rtype::AAAA).unwrap().count, 1);
        // The PTR record is what hickory-proto encodes for the first line's first name.
        let owner = encode::name("1.2.0.192.in-addr.arpa").unwrap();
        let ptr = h.lookup(&wire("1.2.0.192.in-addr.arpa"), rtype::PTR).unwrap();
        let record = encode::ptr_record(&owner, 300, &encode::name("a.test").unwrap());
        let template = encode::template(&owner, rtype::PTR, vec![record], vec![]).unwrap();
        assert_eq!((ptr.count, ptr.records), (1, &template.body[..]));
        let v6 = "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa";
        assert_eq!(h.lookup(&wire(v6), rtype::PTR).unwrap().count, 1);
        assert_eq!(h.lookup(&wire(v6), rtype::A).unwrap().count, 0, "a reverse name has no A");
    }

    #[test]
    fn names_each_bad_line() {
        let bad = Hosts::parse("300.1.1.1 x\n192.0.2.1\n192.0.2.2 bad..name\n", 60).unwrap_err();
        assert_eq!(bad.first.iter().map(|p| p.line).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(bad.total, 3);
        assert!(bad.to_string().starts_with("3 bad lines, the file is refused whole: line 1: `300.1.1.1`"), "{bad}");
    }

    #[test]
    fn the_report_of_a_file_of_bad_lines_is_bounded() {
        let long = "y".repeat(1 << 20);
        let text = format!("{long}\n{}", "x\n".repeat(100_000));
        let bad = Hosts::parse(&text, 60).unwrap_err();
        assert_eq!(bad.total, 100_001);
        assert_eq!(bad.first.len(), REPORTED_PROBLEMS);
        let report = bad.to_string();
        assert!(report.len() < 2048 && !report.contains('\n'), "{} bytes", report.len());
        assert!(report.contains("line 1: `yyyyy") && report.contains("...` is not an IP address"), "{report}");
        assert!(report.ends_with("; and 99991 more"), "{report}");
    }

    #[test]
    fn reverse_names() {
        let mut out = [0u8; 256];
        for (address, name) in [
            ("192.0.2.10", "10.2.0.192.in-addr.arpa"),
            ("0.0.100.255", "255.100.0.0.in-addr.arpa"),
            ("2001:db8::567:89ab", "b.a.9.8.7.6.5.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa"),
        ] {
            let len = reverse_wire_name(address.parse().unwrap(), &mut out);
            assert_eq!(out[..len], wire(name), "{address}");
        }
    }

    #[test]
    fn host_names_are_checked_and_lowered() {
        let mut out = [0u8; 256];
        let len = wire_name("Proxy.Example.Test.", &mut out).unwrap();
        assert_eq!(out[..len], wire("proxy.example.test"));
        let longest = format!("{}.{}.{}.{}", "a".repeat(63), "b".repeat(63), "c".repeat(63), "d".repeat(61));
        let len = wire_name(&longest, &mut out).unwrap();
        assert_eq!((len, &out[..len]), (255, &wire(&longest)[..]));
        for bad in ["", ".", "a..b", ".a", "a b", &"x".repeat(64), &format!("{longest}x"), "\u{e9}.test"] {
            assert!(wire_name(bad, &mut out).is_none(), "{bad:?}");
        }
        assert!(wire_name(&"x".repeat(63), &mut out).is_some());
    }

    #[test]
    fn the_index_grows_and_finds_every_name() {
        let mut text = String::new();
        for i in 0..5000 {
            text.push_str(&format!("2001:db8::{i:x} n{i}.test\n"));
        }
        let h = names(&text);
        assert_eq!(h.len(), 10_000);
        for i in (0..5000).step_by(7) {
            assert_eq!(h.lookup(&wire(&format!("n{i}.test")), rtype::AAAA).unwrap().count, 1, "n{i}");
        }
        assert!(h.lookup(&wire("n5000.test"), rtype::AAAA).is_none());
        let mut index = Index::default();
        for id in 0..100u32 {
            index.insert(hash(&[id as u8]), id);
        }
        assert!((0..100).all(|id| index.find(hash(&[id as u8]), |i| i == id) == Some(id)));
    }
}
