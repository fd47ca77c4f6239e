//! Steering a farm against the real binary and in-process SIP responders on 127.0.0.x: start-up
//! without a stampede, RFC 7339 overload signals, and an operator's drain and undrain.

mod common;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::process::Output;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::process::{a_records, Dnlb};
use common::sip::{common_port, Mode, SipResponder};
use common::*;
use hickory_proto::op::Message;
use hickory_proto::rr::RecordType;

/// One dnlb process with its own runtime directory, ended by its PID on drop.
/// dnlb on a farm of in-process responders.
struct Instance(Dnlb);

impl std::ops::Deref for Instance {
    type Target = Dnlb;
    fn deref(&self) -> &Dnlb {
        &self.0
    }
}

impl Instance {
    /// Starts dnlb for a farm of `ips` on `sip_port` with the given `[probe]` and service lines.
    fn start(ips: &[&str], sip_port: u16, probe: &str, service: &str) -> Instance {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("dnlb-steering-{}-{port}", std::process::id()));
        let mut text = format!(
            "[server]\nlisten = [\"127.0.0.1:{port}\"]\nworkers = 1\npin_workers = false\nruntime_dir = \"{}\"\n\
             [probe]\n{probe}\n[[service]]\nname = \"sip.example.test\"\n{service}\n",
            dir.join("run").display()
        );
        for ip in ips {
            text.push_str(&format!("[[service.server]]\naddress = \"{ip}\"\nport = {sip_port}\n"));
        }
        Instance(Dnlb::spawn(dir, &text))
    }

    /// `dnlb ARGS --config CONFIG`, run.
    fn cli(&self, args: &[&str]) -> Output {
        self.0.cli(args).unwrap()
    }

    /// The A answer now, in answer order.
    fn addresses(&self) -> Vec<IpAddr> {
        self.a("sip.example.test.")
    }

    /// Polls the A answer until `want` holds; panics after `limit`.
    fn wait(&self, what: &str, limit: Duration, want: impl Fn(&[IpAddr]) -> bool) -> Duration {
        let context = || format!("{:?}\n{}", self.addresses(), self.stderr());
        wait_until(what, limit, || want(&self.addresses()), context)
    }
}

fn responders(ips: &[&str], modes: Vec<Mode>) -> (u16, Vec<SipResponder>) {
    let port = common_port(ips);
    let r = ips.iter().zip(modes).map(|(ip, m)| SipResponder::start(SocketAddr::new(ip.parse().unwrap(), port), m));
    (port, r.collect())
}

/// Sends `batch` A queries at once from one socket and returns the answers that came back
/// within `wait` (each as its list of addresses).
fn burst(client: &UdpSocket, dns: SocketAddr, batch: u16, first_id: u16, wait: Duration) -> Vec<Vec<IpAddr>> {
    for k in 0..batch {
        let id = first_id.wrapping_add(k);
        // A full socket buffer drops a query; the answers counted are what came back.
        let _sent = client.send_to(&query("sip.example.test.", RecordType::A, id, None), dns);
    }
    let mut out = Vec::new();
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 1500];
    while out.len() < usize::from(batch) && Instant::now() < deadline {
        if let Ok((n, _)) = client.recv_from(&mut buf) {
            if let Ok(m) = Message::from_vec(&buf[..n]) {
                out.push(a_records(&m));
            }
        }
    }
    out
}

/// Start-up without a stampede: three healthy servers answering 0, 20 and 60 ms late; during
/// dnlb's first two seconds, 50 A queries every 10 ms never get one server alone (before the
/// fix, the first server to answer had every client for about half a second).
#[test]
fn start_up_never_answers_one_server_while_three_are_healthy() {
    let ips = ["127.0.0.161", "127.0.0.162", "127.0.0.163"];
    let modes =
        vec![Mode::Reply(200, None), Mode::Late(Duration::from_millis(20)), Mode::Late(Duration::from_millis(60))];
    let (sip_port, _responders) = responders(&ips, modes);
    let d = Instance::start(&ips, sip_port, "start = \"unknown\"", "");
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.set_read_timeout(Some(Duration::from_millis(2))).unwrap();
    let mut sizes: BTreeMap<usize, u64> = BTreeMap::new();
    let mut id = 0u16;
    while d.started.elapsed() < Duration::from_secs(2) {
        let tick = Instant::now();
        for answer in burst(&client, d.dns, 50, id, Duration::from_millis(8)) {
            *sizes.entry(answer.len()).or_default() += 1;
            assert_ne!(answer.len(), 1, "one server alone at {:?} after start: {answer:?}", d.started.elapsed());
        }
        id = id.wrapping_add(50);
        std::thread::sleep(Duration::from_millis(10).saturating_sub(tick.elapsed()));
    }
    println!("answer sizes in the first two seconds: {sizes:?}");
    let answered: u64 = sizes.values().sum();
    assert!(answered >= 1000, "the window was observed: {answered} answers\n{}", d.stderr());
    // Health-based answers arrived inside the window, all three in them.
    let stderr = d.stderr();
    assert_eq!(stderr.matches("server up").count(), 3, "{stderr}");
    assert_eq!(stderr.matches("from=\"unknown\"").count(), 3, "{stderr}");
    assert_eq!(d.addresses().len(), 3);
}

/// RFC 7339: a server whose replies carry `oc=50` gets half the share of the others in a
/// weighted service (counted by first A record over 100,000 answers), `dnlb status` shows it,
/// and its full share comes back once its `oc-validity` has run out.
#[test]
fn an_overloaded_server_gets_half_the_share_until_its_validity_runs_out() {
    let ips = ["127.0.0.164", "127.0.0.165", "127.0.0.166"];
    let oc = Mode::Overloaded(";oc=50;oc-validity=1500".into());
    let (sip_port, farm) = responders(&ips, vec![Mode::Reply(200, None), oc, Mode::Reply(200, None)]);
    let probe = "interval_ms = 200\ntimeout_ms = 100\nretransmit_ms = 30\nrise = 1\nfall = 2";
    let d = Instance::start(&ips, sip_port, probe, "policy = \"weighted\"");
    d.wait("all three up", Duration::from_secs(10), |a| a.len() == 3);
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.set_read_timeout(Some(Duration::from_millis(5))).unwrap();
    let shares = |total: u64| -> BTreeMap<IpAddr, u64> {
        let mut first: BTreeMap<IpAddr, u64> = BTreeMap::new();
        let (mut counted, mut id, start) = (0u64, 0u16, Instant::now());
        while counted < total {
            assert!(start.elapsed() < Duration::from_secs(120), "bounded: {counted} answers in 120 s");
            for answer in burst(&client, d.dns, 100, id, Duration::from_millis(200)) {
                if let Some(ip) = answer.first() {
                    *first.entry(*ip).or_default() += 1;
                    counted += 1;
                }
            }
            id = id.wrapping_add(100);
        }
        first
    };
    let loaded: IpAddr = ips[1].parse().unwrap();
    d.wait("the overload published", Duration::from_secs(5), |_| {
        let s = shares(500);
        s.get(&loaded).copied().unwrap_or(0) * 100 < 500 * 27
    });
    let s = shares(100_000);
    let others = (s.values().sum::<u64>() - s[&loaded]) as f64 / 2.0;
    let ratio = s[&loaded] as f64 / others;
    println!("first-record counts with oc=50: {s:?}; overloaded / others = {ratio:.3}");
    assert!((ratio - 0.5).abs() <= 0.025, "half the share of the others within 5 %: {ratio:.3}");
    let status = String::from_utf8_lossy(&d.cli(&["status"]).stdout).into_owned();
    assert!(status.lines().any(|l| l.contains("127.0.0.165") && l.contains("oc=50%")), "{status}");
    // The server stops signalling: the reduction runs out 1.5 s after the last reply with oc.
    farm[1].set(Mode::Reply(200, None));
    let stopped = Instant::now();
    loop {
        let s = shares(3_000);
        let ratio = s[&loaded] as f64 / ((s.values().sum::<u64>() - s[&loaded]) as f64 / 2.0);
        if (ratio - 1.0).abs() <= 0.05 {
            break;
        }
        assert!(stopped.elapsed() < Duration::from_secs(5), "full share not back: {s:?}");
    }
    let back = stopped.elapsed();
    println!("full share back {back:?} after the last oc (validity 1.5 s)");
    assert!(back >= Duration::from_millis(1500 - 200), "not before the validity ran out: {back:?}");
    let s = shares(100_000);
    let ratio = s[&loaded] as f64 / ((s.values().sum::<u64>() - s[&loaded]) as f64 / 2.0);
    assert!((ratio - 1.0).abs() <= 0.05, "the full share again: {s:?}");
}

/// An operator's drain: the server leaves the answers as soon as `dnlb drain` returns, `dnlb
/// status` shows it drained, its probes go on, a reload keeps the drain, and `dnlb undrain`
/// brings it back at once.
#[test]
fn a_drained_server_leaves_at_once_is_still_probed_and_returns_at_once() {
    let ips = ["127.0.0.167", "127.0.0.168", "127.0.0.169"];
    let (sip_port, farm) = responders(&ips, vec![Mode::Reply(200, None); 3]);
    let probe = "interval_ms = 200\ntimeout_ms = 100\nretransmit_ms = 30\nrise = 2\nfall = 2";
    let d = Instance::start(&ips, sip_port, probe, "");
    d.wait("all three up", Duration::from_secs(10), |a| a.len() == 3);
    let drained: IpAddr = ips[1].parse().unwrap();
    let out = d.cli(&["drain", &format!("{}:{sip_port}", ips[1]), "--service", "sip.example.test"]);
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    // At once: the very next answers, with no wait. (Only the drained server is checked: under
    // the load of the tests beside this one, another may miss a probe and flap.)
    for _ in 0..20 {
        let a = d.addresses();
        assert!(!a.is_empty() && !a.contains(&drained), "drained server still answered: {a:?}\n{}", d.stderr());
    }
    let status = String::from_utf8_lossy(&d.cli(&["status"]).stdout).into_owned();
    assert!(status.lines().any(|l| l.contains(ips[1]) && l.contains("drained")), "{status}");
    let probes = farm[1].requests.load(Ordering::Relaxed);
    let more = || farm[1].requests.load(Ordering::Relaxed) - probes;
    let probed = wait_until("3 probes while drained", Duration::from_secs(3), || more() >= 3, || format!("{}", more()));
    println!("3 probes of the drained server in {probed:?} at a 200 ms interval");
    let reloaded = d.cli(&["reload"]);
    assert!(reloaded.status.success(), "{}", String::from_utf8_lossy(&reloaded.stdout));
    // The reload's prober carries the drain: its first report says drained, and no answer
    // names the server meanwhile or after.
    let status = || String::from_utf8_lossy(&d.cli(&["status"]).stdout).into_owned();
    let shown = || {
        assert!(!d.addresses().contains(&drained), "the drain survives a reload");
        status().lines().any(|l| l.contains(ips[1]) && l.contains("drained"))
    };
    wait_until("the reloaded prober's report", Duration::from_secs(3), shown, status);
    for _ in 0..20 {
        assert!(!d.addresses().contains(&drained), "the drain survives a reload");
    }
    let unknown = d.cli(&["drain", "127.0.0.99"]);
    assert!(!unknown.status.success(), "an unknown server is refused");
    assert!(String::from_utf8_lossy(&unknown.stdout).contains("no server 127.0.0.99"));
    let out = d.cli(&["undrain", ips[1]]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    for _ in 0..20 {
        let a = d.addresses();
        assert!(a.contains(&drained), "undrained server not back at once: {a:?}\n{}", d.stderr());
    }
}

/// `drain = true` in the configuration: out of the answers from the very first one (even with
/// `start = "up"`, before any probe), still probed, shown drained; `dnlb undrain` brings it in
/// at once, and so does a reload that removes the line.
#[test]
fn a_server_configured_drained_is_out_from_the_start_and_still_probed() {
    let ips = ["127.0.0.171", "127.0.0.172"];
    let (sip_port, farm) = responders(&ips, vec![Mode::Reply(200, None); 2]);
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("dnlb-steering-{}-{port}", std::process::id()));
    let text = |drain: bool| {
        format!(
            "[server]\nlisten = [\"127.0.0.1:{port}\"]\nworkers = 1\npin_workers = false\nruntime_dir = \"{}\"\n\
             [probe]\ninterval_ms = 200\ntimeout_ms = 100\nstart = \"up\"\n[[service]]\nname = \"sip.example.test\"\n\
             [[service.server]]\naddress = \"{}\"\nport = {sip_port}\ndrain = {drain}\n\
             [[service.server]]\naddress = \"{}\"\nport = {sip_port}\n",
            dir.join("run").display(),
            ips[0],
            ips[1]
        )
    };
    let d = Instance(Dnlb::spawn(dir.clone(), &text(true)));
    let drained: IpAddr = ips[0].parse().unwrap();
    // From the first answer on (the start state's, before any probe).
    d.wait("the first answer", Duration::from_secs(10), |a| {
        assert!(!a.contains(&drained), "a server configured drained was served first: {a:?}");
        !a.is_empty()
    });
    let start = Instant::now();
    let mut answers = 0;
    while start.elapsed() < Duration::from_secs(1) {
        let a = d.addresses();
        assert!(!a.contains(&drained), "a server configured drained was served: {a:?}");
        answers += usize::from(!a.is_empty());
    }
    assert!(answers > 10, "answers seen: {answers}\n{}", d.stderr());
    assert!(farm[0].requests.load(Ordering::Relaxed) >= 3, "probed all the same");
    d.wait_for_control();
    let status = String::from_utf8_lossy(&d.cli(&["status"]).stdout).into_owned();
    assert!(status.lines().any(|l| l.contains(ips[0]) && l.contains("drained")), "{status}");
    assert!(d.cli(&["undrain", ips[0]]).status.success());
    assert!(d.addresses().contains(&drained), "undrained at once");
    assert!(d.cli(&["drain", ips[0]]).status.success());
    std::fs::write(&d.config, text(false)).unwrap();
    assert!(d.cli(&["reload"]).status.success());
    assert!(d.addresses().contains(&drained), "a reload without the line undrains it");
}
