//! DNS on the wire: parsing queries without copies, replies as a copy and a patch, and the
//! one-time encoding of answer templates with hickory-proto.

/// The largest UDP payload dnlb ever sends: the DNS Flag Day 2020 value, which avoids IP
/// fragmentation on practically every path.
pub const MAX_UDP_PAYLOAD: u16 = 1232;

pub mod answer;
pub mod encode;
pub mod query;

/// Record types dnlb answers for managed names.
pub mod rtype {
    /// IPv4 address.
    pub const A: u16 = 1;
    /// A zone's name servers.
    pub const NS: u16 = 2;
    /// Start of a zone of authority.
    pub const SOA: u16 = 6;
    /// Domain name pointer (reverse lookups).
    pub const PTR: u16 = 12;
    /// IPv6 address.
    pub const AAAA: u16 = 28;
    /// Service location (RFC 2782).
    pub const SRV: u16 = 33;
    /// Naming authority pointer (RFC 3403).
    pub const NAPTR: u16 = 35;
    /// Incremental zone transfer (RFC 1995).
    pub const IXFR: u16 = 251;
    /// Whole zone transfer (RFC 5936).
    pub const AXFR: u16 = 252;
    /// Any type (RFC 8482: answered with one RRset).
    pub const ANY: u16 = 255;
}

/// The IN class.
pub const CLASS_IN: u16 = 1;

/// Encodes a validated presentation name (`sip.example.test`) to lower-case wire format.
pub fn wire_name(name: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len() + 2);
    for label in name.split('.').filter(|l| !l.is_empty()) {
        out.push(label.len() as u8);
        out.extend(label.bytes().map(|b| b.to_ascii_lowercase()));
    }
    out.push(0);
    out
}
