//! Address prefixes (`10.0.0.0/8`, `fc00::/7`): who the relay serves, who rate limiting spares.
//! Pure.

use std::net::IpAddr;

/// One prefix, e.g. `10.0.0.0/8` or `fc00::/7`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefix {
    /// The network address.
    pub network: IpAddr,
    /// The prefix length in bits.
    pub len: u8,
}

impl Prefix {
    /// Parses `ADDRESS/LEN` (or a bare address, a /32 or /128).
    pub fn parse(text: &str) -> Result<Prefix, String> {
        let (addr, len) = match text.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (text, None),
        };
        let network: IpAddr = addr.trim().parse().map_err(|_| format!("`{addr}` is not an IP address"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let len = match len {
            Some(l) => l
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|&l| l <= max)
                .ok_or_else(|| format!("`/{l}` is not a prefix length from 0 to {max}"))?,
            None => max,
        };
        Ok(Prefix { network, len })
    }

    /// The same prefix with the host bits cleared (`10.1.2.3/16` is `10.1.0.0/16`).
    pub fn masked(self) -> Prefix {
        let network = match self.network {
            IpAddr::V4(n) => IpAddr::V4((u32::from(n) & mask4(self.len)).into()),
            IpAddr::V6(n) => IpAddr::V6((u128::from(n) & mask6(self.len)).into()),
        };
        Prefix { network, len: self.len }
    }

    /// Whether `addr` lies in this prefix (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, addr: IpAddr) -> bool {
        let addr = match addr {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
            v4 => v4,
        };
        match (self.network, addr) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = if self.len == 0 { 0 } else { u32::MAX << (32 - u32::from(self.len)) };
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = if self.len == 0 { 0 } else { u128::MAX << (128 - u32::from(self.len)) };
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// The IPv4 netmask of a prefix length (0 to 32).
pub fn mask4(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len.min(32)))
    }
}

/// The IPv6 netmask of a prefix length (0 to 128).
pub fn mask6(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len.min(128)))
    }
}

/// Whether any prefix holds `addr`.
pub fn allowed(list: &[Prefix], addr: IpAddr) -> bool {
    list.iter().any(|p| p.contains(addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_match() {
        // The relay's default allow list (config's DEFAULT_ALLOW), written out: this module
        // imports nothing else of the crate.
        let written = ["127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10"];
        let list: Vec<Prefix> =
            written.iter().chain(&["fc00::/7", "fe80::/10"]).map(|p| Prefix::parse(p).unwrap()).collect();
        for ok in [
            "127.0.0.1",
            "10.1.2.3",
            "172.31.255.255",
            "192.168.0.1",
            "100.127.0.1",
            "::1",
            "fd00::1",
            "fe80::2",
            "::ffff:10.0.0.1",
        ] {
            assert!(allowed(&list, ok.parse().unwrap()), "{ok}");
        }
        for no in ["8.8.8.8", "172.32.0.1", "100.128.0.1", "2001:db8::1", "192.0.2.1"] {
            assert!(!allowed(&list, no.parse().unwrap()), "{no}");
        }
        assert!(Prefix::parse("0.0.0.0/0").unwrap().contains("203.0.113.9".parse().unwrap()));
        assert!(Prefix::parse("10.0.0.0/33").is_err());
        assert!(Prefix::parse("nonsense/8").is_err());
    }
}
