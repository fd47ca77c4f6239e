//! AF_XDP end to end: two network namespaces joined by a veth pair (198.18.0.0/24 and
//! fd00:19::/64), dnlb with `server.xdp` on the server side, and from the client side the same
//! questions to it and to a dnlb on the kernel's path (same configuration, another port, which
//! the XDP program passes on): every reply must be byte for byte the same, over IPv4 and IPv6.
//! Beside that: TCP and ICMP (after ARP and neighbour discovery) still reach the kernel, the
//! client's kernel counts no UDP checksum error, the program is gone after SIGTERM and after
//! SIGKILL, an interface that already has a program is refused with its holder named, and the
//! set-up gives up its capabilities. Needs root (network namespaces); CI runs as root.
//!
//! The namespaces are `dnlbx-<pid>-s` and `dnlbx-<pid>-c`; they are removed on drop, whatever
//! happens.

mod common;

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::upstream::{Behaviour, FakeUpstream};
use common::{have, query, require};
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};

const SERVER_V4: &str = "198.18.0.1";
const SERVER_V6: &str = "fd00:19::1";
const CLIENT_V4: &str = "198.18.0.2";
const CLIENT_V6: &str = "fd00:19::2";
/// Client addresses outside the relay's allow list.
const OUTSIDER_V4: &str = "198.18.0.3";
const OUTSIDER_V6: &str = "fd00:19::3";
/// The XDP instance's port and the kernel-path instance's.
const XDP_PORT: u16 = 53;
const KERNEL_PORT: u16 = 5300;

/// Runs `ip ARGS`, panicking with its output when it fails.
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip runs");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

/// Two namespaces and the veth pair between them; removed on drop.
struct Namespaces {
    server: String,
    client: String,
    /// The server side's end of the pair.
    veth: String,
}

impl Namespaces {
    fn create() -> Namespaces {
        let pid = std::process::id();
        let ns = Namespaces {
            server: format!("dnlbx-{pid}-s"),
            client: format!("dnlbx-{pid}-c"),
            veth: format!("dnlbx-{pid}s"),
        };
        // Left over from a run that could not clean up (its pid was this one's): start afresh.
        for n in [&ns.server, &ns.client] {
            let _gone = Command::new("ip").args(["netns", "del", n]).stderr(Stdio::null()).status();
        }
        let peer = format!("dnlbx-{pid}c");
        ip(&["netns", "add", &ns.server]);
        ip(&["netns", "add", &ns.client]);
        ip(&["link", "add", &ns.veth, "netns", &ns.server, "type", "veth", "peer", "name", &peer, "netns", &ns.client]);
        for (n, dev) in [(&ns.server, &ns.veth), (&ns.client, &peer)] {
            ip(&["-n", n, "link", "set", "lo", "up"]);
            ip(&["-n", n, "link", "set", dev, "up"]);
        }
        for a in [format!("{SERVER_V4}/24"), format!("{SERVER_V6}/64")] {
            ip(&["-n", &ns.server, "addr", "add", &a, "dev", &ns.veth, "nodad"]);
        }
        for a in [
            format!("{CLIENT_V4}/24"),
            format!("{OUTSIDER_V4}/24"),
            format!("{CLIENT_V6}/64"),
            format!("{OUTSIDER_V6}/64"),
        ] {
            ip(&["-n", &ns.client, "addr", "add", &a, "dev", &peer, "nodad"]);
        }
        ns
    }

    /// `ip netns exec NS ARGS`, its output.
    fn exec(&self, ns: &str, args: &[&str]) -> Output {
        Command::new("ip").args(["netns", "exec", ns]).args(args).output().expect("ip netns exec runs")
    }

    /// Whether an XDP program is attached to the server's interface (`ip link` shows it).
    fn program_attached(&self) -> bool {
        let out = self.exec(&self.server, &["ip", "link", "show", "dev", &self.veth]);
        let text = String::from_utf8_lossy(&out.stdout);
        text.contains("prog/xdp") || text.contains(" xdp")
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        // Deleting a namespace ends its end of the veth pair, and with it the other end.
        for n in [&self.server, &self.client] {
            let _gone = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

/// Runs `f` on a thread that has entered namespace `ns`: sockets it makes live there.
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("the namespace thread ends")
}

/// A dnlb started in a namespace (`ip netns exec`, which execs it: the child's PID is dnlb's).
struct Instance {
    child: Child,
    dir: PathBuf,
}

impl Instance {
    fn start(ns: &str, name: &str, config: &str) -> Instance {
        let dir = std::env::temp_dir().join(format!("dnlbx-{}-{name}", std::process::id()));
        let _fresh = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("hosts"), "198.18.0.50 pbx.hosts.test\nfd00:19::50 pbx.hosts.test\n").unwrap();
        let config = config.replace("@DIR@", &dir.display().to_string());
        std::fs::write(dir.join("dnlb.toml"), &config).unwrap();
        let log = std::fs::File::create(dir.join("stderr.log")).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", ns, env!("CARGO_BIN_EXE_dnlb"), "--config"])
            .arg(dir.join("dnlb.toml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("dnlb starts");
        Instance { child, dir }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` by PID and waits (5 s at most) for the exit.
    fn signal(&mut self, signal: &str) -> Option<std::process::ExitStatus> {
        let _sent = Command::new("kill").args([signal, &self.child.id().to_string()]).status();
        self.wait_exit(Duration::from_secs(5))
    }

    /// Waits up to `limit` for the process to exit; how it did, `None` if it still runs.
    fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(Some(_))) {
            common::terminate(&mut self.child);
        }
        let _removed = std::fs::remove_dir_all(&self.dir);
    }
}

/// The configuration both instances run; `listen_port` and `extra_server` tell them apart.
fn config(listen_port: u16, extra_server: &str, upstream: SocketAddr) -> String {
    let mut farm = String::new();
    for i in 0..40 {
        farm.push_str(&format!(
            "[[service.server]]\naddress = \"192.0.2.{}\"\nhost = \"sip{i:02}.farm.example.test\"\ntransports = [\"udp\", \"tcp\"]\n",
            100 + i
        ));
    }
    format!(
        "[server]\nlisten = [\"{SERVER_V4}:{listen_port}\", \"[{SERVER_V6}]:{listen_port}\"]\nworkers = 1\nruntime_dir = \"@DIR@/run\"\n{extra_server}\n\
         [probe]\nenabled = false\n\n\
         [hosts]\nfile = \"@DIR@/hosts\"\n\n\
         [relay]\nupstreams = [\"{upstream}\"]\nallow = [\"{CLIENT_V4}/32\", \"{CLIENT_V6}/128\"]\nmanaged_for_all = true\n\n\
         [rrl]\nresponses_per_second = 1000\n\n\
         [[service]]\nname = \"sip.example.test\"\npolicy = \"round-robin\"\nanswers = 2\n\
         [[service.server]]\naddress = \"192.0.2.11\"\ntransports = [\"udp\", \"tcp\", \"tls\"]\n\
         [[service.server]]\naddress = \"192.0.2.12\"\ntransports = [\"udp\"]\nweight = 20\n\
         [[service.server]]\naddress = \"2001:db8::13\"\ntransports = [\"tcp\"]\n\
         [[service.server]]\naddress = \"192.0.2.14\"\ntransports = [\"udp\", \"tcp\"]\n\n\
         [[service]]\nname = \"one.example.test\"\n\
         [[service.server]]\naddress = \"192.0.2.21\"\ntransports = [\"udp\"]\n\
         [[service.server]]\naddress = \"2001:db8::21\"\ntransports = [\"udp\"]\n\n\
         [[service]]\nname = \"farm.example.test\"\n{farm}"
    )
}

/// A query with an EDNS version other than 0 (answered BADVERS).
fn query_edns_version(name: &str, version: u8) -> Vec<u8> {
    let mut m = Message::new(77, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    let mut e = Edns::new();
    e.set_max_payload(1232);
    e.set_version(version);
    m.edns = Some(e);
    m.to_vec().unwrap()
}

/// The questions asked on both paths: (what, bytes, from the outsider address, answered).
/// Names whose answers rotate go over IPv4 only: the XDP worker serves both families with one
/// rotation state where the kernel's path has a worker (and a rotation) per address.
fn questions(v6: bool) -> Vec<(&'static str, Vec<u8>, bool, bool)> {
    let managed = if v6 { "one.example.test." } else { "sip.example.test." };
    let relayed = if v6 { "www6.relay.test." } else { "www4.relay.test." };
    let mut notify = query(managed, RecordType::SOA, 9, None);
    notify[2] = (notify[2] & 0x87) | (4 << 3); // opcode NOTIFY
    let mut response = query(managed, RecordType::A, 10, None);
    response[2] |= 0x80;
    let mut truncated_question = query(managed, RecordType::A, 11, None);
    truncated_question.truncate(20);
    let mixed = if v6 { "OnE.ExAmPlE.TeSt." } else { "SiP.ExAmPlE.TeSt." };
    let mut q = vec![
        ("A, no EDNS", query(managed, RecordType::A, 1, None), false, true),
        ("A again (rotation)", query(managed, RecordType::A, 2, None), false, true),
        ("A, EDNS 1232, mixed case", query(mixed, RecordType::A, 12, Some(1232)), false, true),
        ("AAAA", query(managed, RecordType::AAAA, 3, Some(1232)), false, true),
        ("SRV udp", query("_sip._udp.sip.example.test.", RecordType::SRV, 4, Some(1232)), false, true),
        ("SRV tls", query("_sips._tcp.sip.example.test.", RecordType::SRV, 5, None), false, true),
        ("NAPTR", query("sip.example.test.", RecordType::NAPTR, 6, Some(1232)), false, true),
        ("ANY", query(managed, RecordType::ANY, 7, None), false, true),
        ("hosts A", query("pbx.hosts.test.", RecordType::A, 8, None), false, true),
        ("hosts AAAA", query("pbx.hosts.test.", RecordType::AAAA, 13, Some(4096)), false, true),
        ("hosts PTR", query("50.0.18.198.in-addr.arpa.", RecordType::PTR, 14, None), false, true),
        ("TC: SRV of 40 without EDNS", query("_sip._udp.farm.example.test.", RecordType::SRV, 15, None), false, true),
        ("SRV of 40, EDNS 1232", query("_sip._udp.farm.example.test.", RecordType::SRV, 16, Some(1232)), false, true),
        ("EDNS version 1 (BADVERS)", query_edns_version(managed, 1), false, true),
        ("relayed", query(relayed, RecordType::A, 18, Some(1232)), false, true),
        ("relayed, not allowed (REFUSED)", query("www.other.test.", RecordType::A, 19, None), true, true),
        ("managed, from outside allow", query(managed, RecordType::A, 20, None), true, true),
        ("NOTIFY (NOTIMP)", notify, false, true),
        ("header only (FORMERR)", query(managed, RecordType::A, 21, None)[..12].to_vec(), false, true),
        ("question cut (FORMERR)", truncated_question, false, true),
        ("a response (dropped)", response, false, false),
        ("five bytes (dropped)", vec![1, 2, 3, 4, 5], false, false),
    ];
    if !v6 {
        q.push(("A of 40, EDNS 512", query("farm.example.test.", RecordType::A, 17, Some(512)), false, true));
    }
    q
}

/// Sends `packet` from `from` to `to`; the reply, or `None` within `wait`.
fn exchange(from: &UdpSocket, to: SocketAddr, packet: &[u8], wait: Duration) -> Option<Vec<u8>> {
    from.set_read_timeout(Some(wait)).unwrap();
    from.send_to(packet, to).unwrap();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        match common::recv_retry(from, &mut buf) {
            Some((n, src)) if src == to => return Some(buf[..n].to_vec()),
            Some(_) => continue,
            None => return None,
        }
    }
    None
}

/// Polls (from the client namespace) until `to` answers an A question; whether it did in 10 s.
fn wait_for_answer(ns: &str, to: SocketAddr) -> bool {
    in_netns(ns, move || {
        let local = if to.is_ipv4() { format!("{CLIENT_V4}:0") } else { format!("[{CLIENT_V6}]:0") };
        let s = UdpSocket::bind(local).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let q = query("pbx.hosts.test.", RecordType::A, 99, None);
            if exchange(&s, to, &q, Duration::from_millis(100)).is_some() {
                return true;
            }
        }
        false
    })
}

/// The ICMP echo (IPv4 or IPv6) from the client namespace to `to`: whether a reply came in 2 s.
fn ping(ns: &str, to: IpAddr) -> bool {
    use socket2::{Domain, Protocol, Socket, Type};
    in_netns(ns, move || {
        let (domain, proto, request, reply) = match to {
            IpAddr::V4(_) => (Domain::IPV4, Protocol::ICMPV4, 8u8, 0u8),
            IpAddr::V6(_) => (Domain::IPV6, Protocol::ICMPV6, 128, 129),
        };
        let s = Socket::new(domain, Type::RAW, Some(proto)).expect("a raw ICMP socket (root)");
        s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let id = (std::process::id() & 0xffff) as u16;
        let mut packet = vec![request, 0, 0, 0];
        packet.extend_from_slice(&id.to_be_bytes());
        packet.extend_from_slice(&[0, 1]);
        packet.extend_from_slice(b"dnlb xdp test");
        if to.is_ipv4() {
            // ICMPv4 carries its own checksum; for ICMPv6 the kernel computes it.
            let mut sum: u32 =
                packet.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
            while sum >> 16 != 0 {
                sum = (sum & 0xffff) + (sum >> 16);
            }
            packet[2..4].copy_from_slice(&(!(sum as u16)).to_be_bytes());
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            s.send_to(&packet, &SocketAddr::new(to, 0).into()).unwrap();
            let mut buf = [0u8; 1500];
            while let Ok(n) = std::io::Read::read(&mut &s, &mut buf) {
                // IPv4 raw sockets hand over the IP header too.
                let at = if to.is_ipv4() { (usize::from(buf[0] & 0xf) * 4).min(n) } else { 0 };
                let icmp = &buf[at..n];
                if icmp.len() >= 6 && icmp[0] == reply && icmp[4..6] == id.to_be_bytes() {
                    return true;
                }
            }
        }
        false
    })
}

/// kdig's output with what differs between two runs (ID, time, duration) taken out.
fn kdig(ns: &Namespaces, args: &[&str]) -> String {
    let mut all = vec!["kdig", "+retry=0", "+timeout=2"];
    all.extend_from_slice(args);
    let out = ns.exec(&ns.client, &all);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .filter(|l| !l.starts_with(";; Time") && !l.starts_with(";; From") && !l.starts_with(";; Received"))
        .map(|l| match l.find("id: ") {
            Some(at) => format!("{}id: N", &l[..at]),
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// One counter of `/proc/net/snmp` (`Udp: ... name ...`) or `/proc/net/snmp6` in the client's
/// namespace.
fn client_counter(ns: &Namespaces, file: &str, prefix: &str, name: &str) -> u64 {
    let out = ns.exec(&ns.client, &["cat", file]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if file.ends_with("snmp6") {
        return text
            .lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().parse().unwrap_or(u64::MAX)))
            .unwrap_or(u64::MAX);
    }
    let rows: Vec<&str> = text.lines().filter(|l| l.starts_with(prefix)).collect();
    let (Some(names), Some(values)) = (rows.first(), rows.get(1)) else { return u64::MAX };
    let i = names.split_whitespace().position(|n| n == name).unwrap_or(usize::MAX);
    values.split_whitespace().nth(i).and_then(|v| v.parse().ok()).unwrap_or(u64::MAX)
}

/// The effective capabilities of every thread of `pid` (hex masks from /proc).
fn thread_capabilities(pid: u32) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default().trim().to_string();
        let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
        let eff = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(u64::MAX);
        out.push((comm, eff));
    }
    out
}

#[test]
fn xdp_answers_as_the_kernel_path_does_and_leaves_nothing_behind() {
    let root = nix::unistd::geteuid().is_root();
    if !require(root && have("ip") && have("kdig"), "root, ip and kdig (network namespaces for the XDP test)") {
        return;
    }
    let started = Instant::now();
    let ns = Namespaces::create();
    let upstream =
        in_netns(&ns.server, || FakeUpstream::start(Behaviour::ForgeThenAnswer { forged: 0, calm: u64::MAX }));
    let xdp_line = format!("xdp = {{ interface = \"{}\", required = true }}", ns.veth);
    let mut x = Instance::start(&ns.server, "xdp", &config(XDP_PORT, &xdp_line, upstream.addr));
    let k = Instance::start(&ns.server, "kernel", &config(KERNEL_PORT, "", upstream.addr));
    let v4: IpAddr = SERVER_V4.parse().unwrap();
    let v6: IpAddr = SERVER_V6.parse().unwrap();
    for (who, i, port) in [("xdp", &x, XDP_PORT), ("kernel", &k, KERNEL_PORT)] {
        for ip in [v4, v6] {
            assert!(
                wait_for_answer(&ns.client, SocketAddr::new(ip, port)),
                "{who} does not answer on {ip}:\n{}",
                i.stderr()
            );
        }
    }
    assert!(ns.program_attached(), "no XDP program on {}:\n{}", ns.veth, x.stderr());
    assert!(x.stderr().contains(&format!("xdp on {}: 1 receive queue(s)", ns.veth)), "{}", x.stderr());

    // The same bytes on both paths, question by question, over IPv4 and IPv6.
    let results = in_netns(&ns.client, move || {
        let mut results = Vec::new();
        for (ip, client, outsider) in [(v4, CLIENT_V4, OUTSIDER_V4), (v6, CLIENT_V6, OUTSIDER_V6)] {
            let bind = |a: &str| UdpSocket::bind(SocketAddr::new(a.parse().unwrap(), 0)).unwrap();
            let (inside, outside) = (bind(client), bind(outsider));
            for (what, packet, from_outside, answered) in questions(ip.is_ipv6()) {
                let s = if from_outside { &outside } else { &inside };
                let wait = Duration::from_millis(if answered { 2000 } else { 300 });
                let via_xdp = exchange(s, SocketAddr::new(ip, XDP_PORT), &packet, wait);
                let via_kernel = exchange(s, SocketAddr::new(ip, KERNEL_PORT), &packet, wait);
                results.push((ip, what, answered, via_xdp, via_kernel));
            }
        }
        results
    });
    let mut replies = 0;
    for (ip, what, answered, via_xdp, via_kernel) in &results {
        assert_eq!(via_xdp.is_some(), *answered, "{ip} {what}: reply through XDP: {via_xdp:?}");
        assert_eq!(via_xdp, via_kernel, "{ip} {what}: XDP and kernel replies differ");
        replies += usize::from(via_xdp.is_some());
        let Some(r) = via_xdp else { continue };
        match *what {
            "TC: SRV of 40 without EDNS" => assert_ne!(r[2] & 0x02, 0, "{ip} {what}: TC not set"),
            "relayed" => assert!(r.windows(4).any(|w| w == [198, 51, 100, 7]), "{ip} {what}: {r:?}"),
            "relayed, not allowed (REFUSED)" => assert_eq!(r[3] & 0xf, 5, "{ip} {what}"),
            "NOTIFY (NOTIMP)" => assert_eq!(r[3] & 0xf, 4, "{ip} {what}"),
            _ => {}
        }
    }

    // kdig sees the same on both paths (what differs run to run taken out).
    let cases: [(&str, &[&str]); 7] = [
        (SERVER_V4, &["sip.example.test", "A"]),
        (SERVER_V6, &["_sip._udp.sip.example.test", "SRV"]),
        (SERVER_V4, &["sip.example.test", "NAPTR", "+bufsize=1232"]),
        (SERVER_V6, &["kdig.relay.test", "A"]),
        (SERVER_V4, &["pbx.hosts.test", "AAAA"]),
        (SERVER_V4, &["_sip._udp.farm.example.test", "SRV", "+noedns", "+ignore"]),
        (SERVER_V6, &["one.example.test", "A", "+edns=1"]),
    ];
    for (server, args) in cases {
        let on = |port: u16| {
            let mut a = vec![format!("@{server}"), "-p".to_string(), port.to_string()];
            a.extend(args.iter().map(ToString::to_string));
            kdig(&ns, &a.iter().map(String::as_str).collect::<Vec<_>>())
        };
        let (via_xdp, via_kernel) = (on(XDP_PORT), on(KERNEL_PORT));
        assert!(via_xdp.contains("status:"), "kdig {args:?} to {server}: no reply through XDP:\n{via_xdp}");
        assert_eq!(via_xdp, via_kernel, "kdig {args:?} to {server}");
    }

    // TCP goes to the kernel (the program passes it) and is answered there.
    for server in [SERVER_V4, SERVER_V6] {
        let out = kdig(&ns, &[&format!("@{server}"), "+tcp", "_sip._tcp.sip.example.test", "SRV"]);
        assert!(out.contains("status: NOERROR") && out.contains("ANSWER: 3"), "TCP to {server}:\n{out}");
    }
    // ARP and neighbour discovery from scratch, then ICMP echo: the program passes them.
    ip(&["-n", &ns.client, "neigh", "flush", "all"]);
    assert!(ping(&ns.client, v4), "no ICMP echo reply from {v4} with XDP attached");
    assert!(ping(&ns.client, v6), "no ICMPv6 echo reply from {v6} with XDP attached");

    // Every reply's checksums were right: the client's kernel verified them all.
    let received = client_counter(&ns, "/proc/net/snmp", "Udp:", "InDatagrams");
    assert!(received >= replies as u64, "the client's kernel saw {received} UDP datagrams for {replies} replies");
    for (file, prefix, name) in [
        ("/proc/net/snmp", "Udp:", "InCsumErrors"),
        ("/proc/net/snmp", "Udp:", "InErrors"),
        ("/proc/net/snmp6", "", "Udp6InCsumErrors"),
        ("/proc/net/snmp6", "", "Udp6InErrors"),
    ] {
        assert_eq!(client_counter(&ns, file, prefix, name), 0, "{name} in the client's namespace");
    }

    // The set-up's capabilities are gone from every thread, and XDP still answers.
    let xdp_caps: u64 = [12u32, 13, 14, 21, 39].iter().map(|c| 1u64 << c).sum();
    let caps = thread_capabilities(x.pid());
    assert!(caps.len() >= 3, "{caps:?}");
    for (thread, eff) in &caps {
        assert_eq!(eff & xdp_caps, 0, "thread {thread} still holds XDP capabilities: {eff:#x}");
    }
    assert!(wait_for_answer(&ns.client, SocketAddr::new(v4, XDP_PORT)));

    // An interface that already carries a program is refused, its holder named, or (not
    // required) left alone while the kernel's path serves.
    let busy_required = format!("xdp = {{ interface = \"{}\", required = true }}", ns.veth);
    let mut refused = Instance::start(&ns.server, "busy", &config(5301, &busy_required, upstream.addr));
    let status = refused.wait_exit(Duration::from_secs(10));
    assert_eq!(status.and_then(|s| s.code()), Some(1), "a second XDP instance started:\n{}", refused.stderr());
    let why = refused.stderr();
    for want in ["already has an XDP program", "`dnlb_xdp`", &format!("dnlb (pid {})", x.pid()), "stop that process"] {
        assert!(why.contains(want), "missing {want:?} in:\n{why}");
    }
    let busy_optional = format!("xdp = {{ interface = \"{}\" }}", ns.veth);
    let fallback = Instance::start(&ns.server, "fallback", &config(5302, &busy_optional, upstream.addr));
    assert!(wait_for_answer(&ns.client, SocketAddr::new(v4, 5302)), "{}", fallback.stderr());
    let log = fallback.stderr();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("xdp on")).collect();
    assert_eq!(lines.len(), 1, "one line says why XDP is not used:\n{log}");
    assert!(lines[0].contains("is not used") && lines[0].contains("already has an XDP program"), "{log}");
    drop(fallback);

    // SIGTERM: a clean exit, the XDP workers' counts logged, the program gone.
    assert_eq!(x.signal("-TERM").and_then(|s| s.code()), Some(0), "{}", x.stderr());
    assert!(!ns.program_attached(), "an XDP program is still attached after SIGTERM");
    let log = x.stderr();
    let xdp_queries: u64 = log
        .lines()
        .find_map(|l| l.split_once("xdp workers on ").map(|(_, r)| r))
        .and_then(|r| r.split_whitespace().find_map(|f| f.strip_prefix("queries=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(
        xdp_queries >= replies as u64,
        "the XDP workers counted {xdp_queries} queries, {replies} replies came:\n{log}"
    );

    // SIGKILL, after dropping to an unprivileged user: still served through the XSK, and the
    // program still goes with the process.
    let as_nobody = format!("{xdp_line}\nuser = \"nobody\"");
    let mut again = Instance::start(&ns.server, "xdp2", &config(XDP_PORT, &as_nobody, upstream.addr));
    assert!(wait_for_answer(&ns.client, SocketAddr::new(v6, XDP_PORT)), "{}", again.stderr());
    assert!(ns.program_attached() && again.stderr().contains("running as user nobody"), "{}", again.stderr());
    let killed = again.signal("-KILL").and_then(|s| std::os::unix::process::ExitStatusExt::signal(&s));
    assert_eq!(killed, Some(9), "killed by SIGKILL");
    assert!(!ns.program_attached(), "an XDP program is still attached after SIGKILL");
    drop(k);
    drop(upstream);
    eprintln!("xdp end to end: {} questions per family compared, {:?}", results.len() / 2, started.elapsed());
}

/// A query frame from `client` to `server` with `payload_len` bytes of payload.
fn frame(client: &str, server: &str, vlan: Option<u16>, payload_len: usize) -> Vec<u8> {
    common::query_frame(client.parse().unwrap(), server.parse().unwrap(), vlan, &vec![0x41; payload_len])
}

#[test]
fn the_xdp_program_takes_only_unfragmented_udp_to_a_served_address_and_port() {
    use dnlb::io::xdp::program::{Filter, XDP_PASS, XDP_REDIRECT};
    let root = nix::unistd::geteuid().is_root();
    if !require(root, "root (loading a BPF program to run it in the kernel's test harness)") {
        return;
    }
    let filter = Filter {
        v4: vec![(SERVER_V4.parse().unwrap(), 53)],
        v6: vec![(SERVER_V6.parse().unwrap(), 53), ("fd00:19::99".parse().unwrap(), 5353)],
        max_frame: dnlb::io::xdp::xsk::MAX_FRAME as u16,
    };
    let v4 = frame("198.18.0.2:4000", "198.18.0.1:53", None, 40);
    let v6 = frame("[fd00:19::2]:4000", "[fd00:19::1]:53", None, 40);
    let mut fragment = v4.clone();
    fragment[20] |= 0x20; // more fragments
    let mut offset = v4.clone();
    offset[21] = 1; // a later fragment
    let mut options = v4.clone();
    options[14] = 0x46; // IHL 6
    let mut tcp = v4.clone();
    tcp[23] = 6;
    let mut v6_extension = v6.clone();
    v6_extension[20] = 44; // a fragment header
    let arp = {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&[2, 0, 0, 0, 0, 2, 0x08, 0x06]);
        f.extend_from_slice(&[0; 28]);
        f
    };
    let cases: Vec<(&str, Vec<u8>, i32)> = vec![
        ("IPv4 to the served address and port", v4.clone(), XDP_REDIRECT),
        ("IPv6 to the served address and port", v6.clone(), XDP_REDIRECT),
        ("IPv6 to the second served pair", frame("[fd00:19::2]:4000", "[fd00:19::99]:5353", None, 40), XDP_REDIRECT),
        ("IPv4 with a VLAN tag", frame("198.18.0.2:4000", "198.18.0.1:53", Some(0x0064), 40), XDP_REDIRECT),
        ("IPv6 with a VLAN tag", frame("[fd00:19::2]:4000", "[fd00:19::1]:53", Some(7), 40), XDP_REDIRECT),
        ("IPv4, another port", frame("198.18.0.2:4000", "198.18.0.1:54", None, 40), XDP_PASS),
        ("IPv4, another address", frame("198.18.0.2:4000", "198.18.0.9:53", None, 40), XDP_PASS),
        ("IPv6, the port of the other pair", frame("[fd00:19::2]:4000", "[fd00:19::1]:5353", None, 40), XDP_PASS),
        ("IPv4, more fragments", fragment, XDP_PASS),
        ("IPv4, a later fragment", offset, XDP_PASS),
        ("IPv4 with options", options, XDP_PASS),
        ("TCP", tcp, XDP_PASS),
        ("IPv6 with a fragment header", v6_extension, XDP_PASS),
        ("ARP", arp, XDP_PASS),
        ("cut inside the UDP header", v4[..40].to_vec(), XDP_PASS),
        ("an IPv4 EtherType and nothing after it", v4[..14].to_vec(), XDP_PASS),
        ("cut inside the IPv6 header", v6[..40].to_vec(), XDP_PASS),
        ("longer than a UMEM frame takes", frame("198.18.0.2:4000", "198.18.0.1:53", None, 1800), XDP_PASS),
        ("the longest a UMEM frame takes", frame("198.18.0.2:4000", "198.18.0.1:53", None, 1792 - 42), XDP_REDIRECT),
    ];
    let frames: Vec<Vec<u8>> = cases.iter().map(|c| c.1.clone()).collect();
    let actions = dnlb::io::xdp::dry_run(&filter, &frames).expect("the program loads and runs");
    for ((what, _, want), got) in cases.iter().zip(actions) {
        assert_eq!(got as i32, *want, "{what}");
    }
}
