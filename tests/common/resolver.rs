//! unbound (Debian's package) as a real recursive resolver on a loopback address: what a carrier
//! puts between its phones and a zone delegated to dnlb.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Child;

/// Where unbound is installed, if it is.
pub fn unbound_binary() -> Option<&'static str> {
    ["/usr/sbin/unbound", "/usr/local/sbin/unbound"].into_iter().find(|p| std::path::Path::new(p).exists())
}

/// An unbound process, ended by its PID on drop.
pub struct Unbound {
    child: Child,
    dir: PathBuf,
    /// Where it answers.
    pub addr: SocketAddr,
}

impl Unbound {
    /// unbound on `addr`, resolving iteratively from a stub zone `stub` (no trailing dot) whose
    /// server is `stub_addr`: no root, no DNSSEC (iterator only), IPv4 only, loopback servers
    /// allowed, and the RFC 6761 `test.` zone not blocked. Returns once it answers.
    pub fn start(addr: SocketAddr, stub: &str, stub_addr: SocketAddr) -> Unbound {
        let dir = std::env::temp_dir().join(format!("dnlb-unbound-{}-{}", std::process::id(), addr.ip()));
        std::fs::create_dir_all(&dir).unwrap();
        let d = dir.display();
        let (ip, port) = (addr.ip(), addr.port());
        let (stub_ip, stub_port) = (stub_addr.ip(), stub_addr.port());
        let conf = format!(
            "server:\n  interface: {ip}@{port}\n  do-daemonize: no\n  username: \"\"\n  chroot: \"\"\n  directory: \"{d}\"\n  pidfile: \"{d}/unbound.pid\"\n  logfile: \"{d}/unbound.log\"\n  use-syslog: no\n  verbosity: 1\n  num-threads: 1\n  so-reuseport: no\n  access-control: 127.0.0.0/8 allow\n  do-ip6: no\n  do-not-query-localhost: no\n  local-zone: \"test.\" nodefault\n  module-config: \"iterator\"\n\nremote-control:\n  control-enable: no\n\nstub-zone:\n  name: \"{stub}\"\n  stub-addr: {stub_ip}@{stub_port}\n"
        );
        std::fs::write(dir.join("unbound.conf"), conf).unwrap();
        let binary = unbound_binary().expect("unbound is installed");
        let log = || std::fs::read_to_string(dir.join("unbound.log")).unwrap_or_default();
        let child = super::start_dns_daemon(binary, &dir.join("unbound.conf"), addr, stub, log);
        Unbound { child, dir, addr }
    }

    /// What unbound logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("unbound.log")).unwrap_or_default()
    }
}

impl Drop for Unbound {
    fn drop(&mut self) {
        super::terminate(&mut self.child);
        let _cleanup = std::fs::remove_dir_all(&self.dir);
    }
}
