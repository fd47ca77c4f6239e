//! IPv6 addresses a test adds to the loopback interface (`ip -6 addr add ADDR/128 dev lo nodad`,
//! root only), so several IPv6 servers and clients can each have an address of their own; removed
//! on drop, whatever happens in the test. Addresses come from fd00:14::/64 (unique-local, never
//! routed): each test names its own, so parallel tests never share one.

use std::net::Ipv6Addr;
use std::process::Command;

use super::require;

/// Addresses added to `lo`, removed on drop.
pub struct LoAddresses {
    added: Vec<Ipv6Addr>,
}

impl LoAddresses {
    /// Adds `addrs` to `lo`; `None` (after a visible SKIPPED, or a failure under CI=true) when
    /// this process is not root or `ip` is missing.
    pub fn add(addrs: &[&str]) -> Option<LoAddresses> {
        let root = nix::unistd::geteuid().is_root();
        if !require(root && super::have("ip"), "root and `ip` (iproute2), to add IPv6 addresses to lo") {
            return None;
        }
        let mut guard = LoAddresses { added: Vec::new() };
        for a in addrs {
            let ip: Ipv6Addr = a.parse().unwrap();
            assert!(ip.segments()[..4] == [0xfd00, 0x14, 0, 0], "{ip}: tests add addresses from fd00:14::/64 only");
            // A run that was killed may have left it: take it over, and remove it at the end.
            let _stale = Command::new("ip").args(["-6", "addr", "del", &format!("{ip}/128"), "dev", "lo"]).output();
            let out = Command::new("ip")
                .args(["-6", "addr", "add", &format!("{ip}/128"), "dev", "lo", "nodad"])
                .output()
                .expect("run ip");
            assert!(out.status.success(), "ip -6 addr add {ip}/128 dev lo: {}", String::from_utf8_lossy(&out.stderr));
            guard.added.push(ip);
        }
        Some(guard)
    }
}

impl Drop for LoAddresses {
    fn drop(&mut self) {
        for ip in &self.added {
            let _removed = Command::new("ip").args(["-6", "addr", "del", &format!("{ip}/128"), "dev", "lo"]).output();
        }
    }
}
