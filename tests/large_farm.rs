//! A farm of 10,000 SIP servers against the real binary: it starts within a second and under
//! 100 MB of memory, and once the prober has seen which servers answer, rotation reaches every
//! healthy server and never a dead one. The healthy ones are in-process SIP responders; the dead
//! ones are loopback addresses where nothing listens (the kernel answers ICMP port-unreachable).

mod common;

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::process::a_records;
use common::sip::{common_port, Mode, SipResponder};
use common::*;
use hickory_proto::op::Message;
use hickory_proto::rr::RecordType;

const SERVERS: usize = 10_000;
/// Every `HEALTHY_EVERY`-th server has a responder: 100 healthy, 9,900 dead.
const HEALTHY_EVERY: usize = 100;

/// Server `i`'s address: 127.1.0.1 to 127.1.39.250.
fn server_ip(i: usize) -> IpAddr {
    IpAddr::from([127, 1, (i / 250) as u8, (i % 250 + 1) as u8])
}

struct Instance {
    child: Child,
    dir: PathBuf,
}

impl Drop for Instance {
    fn drop(&mut self) {
        terminate(&mut self.child);
        let _removed = std::fs::remove_dir_all(&self.dir);
    }
}

impl Instance {
    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    /// The process's resident set, in bytes.
    fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS in /proc/PID/status");
        kb * 1024
    }
}

/// One query without EDNS (512 bytes: room for 29 addresses), or `None` without a reply.
fn ask(client: &UdpSocket, dns: SocketAddr, id: u16) -> Option<Message> {
    client.send_to(&query("sip.example.test.", RecordType::A, id, None), dns).ok()?;
    let mut buf = [0u8; 65_535];
    // A late reply to an earlier query is skipped, a few at most.
    for _ in 0..4 {
        let (n, _) = recv_retry(client, &mut buf)?;
        if let Some(m) = Message::from_vec(&buf[..n]).ok().filter(|m| m.metadata.id == id) {
            return Some(m);
        }
    }
    None
}

#[test]
fn ten_thousand_servers_start_fast_in_little_memory_and_rotate_through_the_healthy_only() {
    let healthy: Vec<IpAddr> = (0..SERVERS).step_by(HEALTHY_EVERY).map(server_ip).collect();
    let ips: Vec<String> = healthy.iter().map(IpAddr::to_string).collect();
    let sip_port = common_port(&ips.iter().map(String::as_str).collect::<Vec<_>>());
    let responders: Vec<SipResponder> =
        healthy.iter().map(|ip| SipResponder::start(SocketAddr::new(*ip, sip_port), Mode::Reply(200, None))).collect();

    let dns_port = free_port();
    let mut text = format!(
        "[server]\nlisten = [\"127.0.0.1:{dns_port}\"]\nworkers = 1\n\
         [probe]\ninterval_ms = 1000\ntimeout_ms = 500\nretransmit_ms = 100\nrise = 1\nfall = 2\nstart = \"up\"\n\
         [[service]]\nname = \"sip.example.test\"\n"
    );
    for i in 0..SERVERS {
        text.push_str(&format!("[[service.server]]\naddress = \"{}\"\nport = {sip_port}\n", server_ip(i)));
    }
    let dir = std::env::temp_dir().join(format!("dnlb-large-farm-{}-{dns_port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("dnlb.toml");
    std::fs::write(&config, &text).unwrap();
    let dns: SocketAddr = ([127, 0, 0, 1], dns_port).into();
    let client = udp_client();
    client.set_read_timeout(Some(Duration::from_millis(20))).unwrap();

    let started = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_dnlb"))
        .args(["--config", config.to_str().unwrap(), "--io", "portable"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("stderr.log")).unwrap())
        .spawn()
        .unwrap();
    let instance = Instance { child, dir };

    // Start-up: the first answer (every server counts as up until probed).
    let mut id = 0u16;
    let first = loop {
        id += 1;
        if let Some(m) = ask(&client, dns, id) {
            break m;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "no answer at all:\n{}", instance.stderr());
    };
    let start_up = started.elapsed();
    let rss_at_start = instance.rss();
    eprintln!("first answer after {start_up:?}, RSS {} MB", rss_at_start >> 20);
    assert_eq!(a_records(&first).len(), 29, "without EDNS an answer holds as many servers as fit 512 bytes");
    assert!(!first.metadata.truncation);
    assert!(start_up < Duration::from_secs(1), "start-up took {start_up:?}");
    assert!(rss_at_start < 100 << 20, "RSS {} MB at start", rss_at_start >> 20);

    // The prober finds the 9,900 dead servers: wait (bounded) for an answer of healthy ones only.
    let want: BTreeSet<IpAddr> = healthy.iter().copied().collect();
    let settle = Instant::now();
    loop {
        id = id.wrapping_add(1);
        if let Some(m) = ask(&client, dns, id) {
            if a_records(&m).iter().all(|a| want.contains(a)) {
                break;
            }
        }
        assert!(settle.elapsed() < Duration::from_secs(20), "dead servers still answered:\n{}", instance.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("healthy-only answers {:?} after the first answer", settle.elapsed());
    // Let the last flips of the first rounds land, then walk one whole rotation.
    std::thread::sleep(Duration::from_millis(1500));

    // One rotation is `healthy.len()` answers; a publish in between (a late flip) restarts it, so
    // walk until every healthy server has come first, within a bound.
    let mut firsts: BTreeSet<IpAddr> = BTreeSet::new();
    let mut seen: BTreeSet<IpAddr> = BTreeSet::new();
    let mut asked = 0;
    while firsts.len() < want.len() && asked < 10 * healthy.len() {
        asked += 1;
        id = id.wrapping_add(1);
        let m = ask(&client, dns, id).expect("an answer");
        let got = a_records(&m);
        assert_eq!(got.len(), 29, "as many healthy servers as fit:\n{}", instance.stderr());
        for a in &got {
            assert!(want.contains(a), "{a} is dead but was answered");
        }
        firsts.insert(got[0]);
        seen.extend(got);
    }
    eprintln!("every healthy server came first within {asked} answers");
    assert_eq!(firsts, want, "rotation puts every healthy server first:\n{}", instance.stderr());
    assert_eq!(seen, want);
    let rss = instance.rss();
    eprintln!("RSS {} MB with the prober running", rss >> 20);
    assert!(rss < 100 << 20, "RSS {} MB", rss >> 20);
    drop(instance);
    drop(responders);
}
