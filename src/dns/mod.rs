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

/// An RCODE's name as dig prints it (`NOERROR`, `NXDOMAIN`, ..., `RCODE12` for one without a
/// name), so what an operator reads in dnlb matches what dig shows for the same reply.
pub fn rcode_name(rcode: u16) -> std::borrow::Cow<'static, str> {
    let name = match rcode {
        0 => "NOERROR",
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        5 => "REFUSED",
        6 => "YXDOMAIN",
        7 => "YXRRSET",
        8 => "NXRRSET",
        9 => "NOTAUTH",
        10 => "NOTZONE",
        16 => "BADVERS",
        17 => "BADKEY",
        18 => "BADTIME",
        19 => "BADMODE",
        20 => "BADNAME",
        21 => "BADALG",
        22 => "BADTRUNC",
        23 => "BADCOOKIE",
        other => return format!("RCODE{other}").into(),
    };
    name.into()
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rcodes_are_named_as_dig_names_them() {
        assert_eq!(rcode_name(0), "NOERROR");
        assert_eq!(rcode_name(3), "NXDOMAIN");
        assert_eq!(rcode_name(16), "BADVERS");
        assert_eq!(rcode_name(12), "RCODE12");
        let hickory = hickory_proto::op::ResponseCode::from(0, 2);
        assert_eq!(rcode_name(u16::from(hickory)), "SERVFAIL");
    }
}
