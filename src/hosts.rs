//! Local names from a hosts file, the `/etc/hosts` format DNRD read: `ADDRESS NAME [ALIAS...]`,
//! `#` starts a comment. dnlb answers them itself (A, AAAA, and PTR for the reverse names) from the
//! same snapshot as the SIP names, so they cost what a SIP answer costs.

use std::net::IpAddr;
use std::path::Path;

/// One line of a hosts file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostEntry {
    /// The address.
    pub address: IpAddr,
    /// Its names, lower case, without a trailing dot; the first is the canonical one (PTR target).
    pub names: Vec<String>,
}

/// A line that could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostsProblem {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong and how to fix it.
    pub message: String,
}

/// Reads and parses the hosts file at `path`; every problem as `PATH:LINE: message` (or why the
/// file could not be read, and the fix).
pub fn load(path: &Path) -> Result<Vec<HostEntry>, Vec<String>> {
    let text = crate::files::read_text(path)
        .map_err(|e| vec![format!("cannot read {}: {e}: fix the path or remove [hosts]", path.display())])?;
    parse(&text).map_err(|problems| {
        problems.into_iter().map(|p| format!("{}:{}: {}", path.display(), p.line, p.message)).collect()
    })
}

/// Parses hosts-file text; returns every entry, or every problem.
pub fn parse(text: &str) -> Result<Vec<HostEntry>, Vec<HostsProblem>> {
    let mut entries = Vec::new();
    let mut problems = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut fields = line.split_whitespace();
        let addr_text = fields.next().unwrap_or("");
        // A zone index (fe80::1%eth0) is meaningless in DNS; drop it.
        let address = match addr_text.split('%').next().unwrap_or("").parse::<IpAddr>() {
            Ok(a) => a,
            Err(_) => {
                problems.push(HostsProblem {
                    line: i + 1,
                    message: format!("`{addr_text}` is not an IP address: each line is `ADDRESS NAME [ALIAS...]`"),
                });
                continue;
            }
        };
        let mut names = Vec::new();
        let mut bad_name = false;
        for name in fields {
            let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
            let valid = !name.is_empty()
                && name.len() <= 253
                && name.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                });
            if !valid {
                problems.push(HostsProblem {
                    line: i + 1,
                    message: format!("`{name}` is not a valid host name: use letters, digits, '-' and '.'"),
                });
                bad_name = true;
                continue;
            }
            names.push(name);
        }
        if names.is_empty() && !bad_name {
            problems.push(HostsProblem {
                line: i + 1,
                message: format!("{address} has no name: add one after the address"),
            });
            continue;
        }
        entries.push(HostEntry { address, names });
    }
    if problems.is_empty() {
        Ok(entries)
    } else {
        Err(problems)
    }
}

/// The reverse-lookup name of an address (RFC 1035 §3.5, RFC 3596 §2.5), without a trailing dot.
pub fn reverse_name(address: IpAddr) -> String {
    match address {
        IpAddr::V4(a) => {
            let [w, x, y, z] = a.octets();
            format!("{z}.{y}.{x}.{w}.in-addr.arpa")
        }
        IpAddr::V6(a) => {
            let mut out = String::with_capacity(72);
            for byte in a.octets().iter().rev() {
                out.push_str(&format!("{:x}.{:x}.", byte & 0xf, byte >> 4));
            }
            out.push_str("ip6.arpa");
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_etc_hosts_format() {
        let text = "# local\n127.0.0.1 localhost\n192.0.2.10  Proxy.Example.Test. proxy # edge\n\n2001:db8::1 v6.example.test\nfe80::1%eth0 link\n";
        let e = parse(text).unwrap();
        assert_eq!(e.len(), 4);
        assert_eq!(e[1].names, vec!["proxy.example.test", "proxy"]);
        assert_eq!(e[3].address, "fe80::1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn names_each_bad_line() {
        let p = parse("300.1.1.1 x\n192.0.2.1\n192.0.2.2 bad..name\n").unwrap_err();
        assert_eq!(p.iter().map(|p| p.line).collect::<Vec<_>>(), vec![1, 2, 3]);
    }

    #[test]
    fn reverse_names() {
        assert_eq!(reverse_name("192.0.2.10".parse().unwrap()), "10.2.0.192.in-addr.arpa");
        assert_eq!(
            reverse_name("2001:db8::567:89ab".parse().unwrap()),
            "b.a.9.8.7.6.5.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa"
        );
    }
}
