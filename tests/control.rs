//! The control side against the real binary: `dnlb status`, `dnlb explain`, live reloads (SIGHUP
//! and `dnlb reload`) that keep health, add and remove servers, refuse invalid files, and lose no
//! query while dnsperf runs.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::process::Dnlb;
use common::sip::{common_port, Mode, SipResponder};
use common::*;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;

const PROBE: &str = "interval_ms = 200\ntimeout_ms = 100\nretransmit_ms = 30\nrise = 1\nfall = 2";

/// dnlb with its control socket up.
struct Instance(Dnlb);

impl std::ops::Deref for Instance {
    type Target = Dnlb;
    fn deref(&self) -> &Dnlb {
        &self.0
    }
}

impl Instance {
    fn start(text: &str) -> Instance {
        Instance::launch(Instance::prepare(text))
    }

    /// Writes `text` to a fresh folder's `dnlb.toml`; its path.
    fn prepare(text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("dnlb-control-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("dnlb.toml");
        std::fs::write(&config, text).unwrap();
        config
    }

    /// Runs dnlb on the prepared `config` until its control socket answers.
    fn launch(config: PathBuf) -> Instance {
        let d = Dnlb::run(config);
        d.wait_for_control();
        Instance(d)
    }

    /// The test service's A answer now.
    fn addresses(&self) -> Vec<IpAddr> {
        self.a("sip.example.test.")
    }

    fn wait(&self, limit: Duration, want: impl Fn(&[IpAddr]) -> bool) -> Duration {
        let context = || format!("{:?}\n{}", self.addresses(), self.stderr());
        wait_until("the answer wanted", limit, || want(&self.addresses()), context)
    }

    /// Waits for `line` in the log.
    fn wait_for_log(&self, line: &str) {
        wait_until(line, Duration::from_secs(5), || self.stderr().contains(line), || self.stderr());
    }
}

fn farm_config(dir_port: u16, sip_port: u16, ips: &[&str], runtime: &Path) -> String {
    let mut s = format!(
        "[server]\nlisten = [\"127.0.0.1:{dir_port}\"]\nworkers = 1\npin_workers = false\nruntime_dir = \"{}\"\n[probe]\n{PROBE}\n[[service]]\nname = \"sip.example.test\"\nall_down = \"nodata\"\n",
        runtime.display()
    );
    for ip in ips {
        s.push_str(&format!("[[service.server]]\naddress = \"{ip}\"\nport = {sip_port}\n"));
    }
    s
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn status_explain_and_reloads_that_keep_health() {
    let ips = ["127.0.0.131", "127.0.0.132", "127.0.0.133"];
    let sip_port = common_port(&ips);
    let responders: Vec<SipResponder> =
        ips.iter().map(|i| SipResponder::start(SocketAddr::new(ip(i), sip_port), Mode::Reply(200, None))).collect();
    let runtime = std::env::temp_dir().join(format!("dnlb-run-{}", std::process::id()));
    let port = free_port();
    let d = Instance::start(&farm_config(port, sip_port, &ips[..2], &runtime));
    d.wait(Duration::from_secs(3), |a| a.len() == 2);

    let status = d.cli(&["status", "--json"]).unwrap();
    assert!(status.status.success());
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let servers = &json["services"][0]["servers"];
    assert_eq!(servers.as_array().unwrap().len(), 2, "{json}");
    assert_eq!(servers[0]["state"], "up");
    assert_eq!(servers[0]["why"], "a final reply");
    let explain = d.cli(&["explain", "sip.example.test", "A", "--client", "10.0.0.1"]).unwrap();
    let text = String::from_utf8_lossy(&explain.stdout);
    assert!(text.contains("server 127.0.0.131 (#0) in: up on udp"), "{text}");
    // Sent straight to the socket (the command line checks it first), a client that is no
    // address is refused, not explained as if no client had been named.
    let mut socket = std::os::unix::net::UnixStream::connect(runtime.join(format!("127.0.0.1-{port}.sock"))).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let ask = r#"{"cmd":"explain","name":"sip.example.test","qtype":"A","client":"10.0.0.1x"}"#;
    std::io::Write::write_all(&mut socket, format!("{ask}\n").as_bytes()).unwrap();
    let mut reply = String::new();
    let _read = std::io::Read::read_to_string(&mut socket, &mut reply);
    assert!(reply.contains(r#""ok":false"#) && reply.contains("is not an IP address"), "{reply}");

    // Silence one server, then reload with a third added: the silent one stays out (its health
    // is kept: no re-rise from Unknown), the new one comes in within a round plus rise.
    responders[1].set(Mode::Silent);
    d.wait(Duration::from_secs(3), |a| a == [ip(ips[0])]);
    std::fs::write(&d.config, farm_config(port, sip_port, &ips, &runtime)).unwrap();
    let reload = d.cli(&["reload"]).unwrap();
    assert!(reload.status.success(), "{}", String::from_utf8_lossy(&reload.stderr));
    let out = String::from_utf8_lossy(&reload.stdout);
    assert!(out.contains("health kept for 2"), "{out}");
    assert!(!d.addresses().contains(&ip(ips[1])), "the silent server did not come back with the reload");
    let added = d.wait(Duration::from_secs(2), |a| a.contains(&ip(ips[2])));
    assert!(added <= Duration::from_millis(200 + 100 + 200), "new server in after {added:?}");

    // SIGHUP removing the first: gone at once.
    std::fs::write(&d.config, farm_config(port, sip_port, &ips[1..], &runtime)).unwrap();
    let _sent = Command::new("kill").args(["-HUP", &d.child.id().to_string()]).status();
    let removed = d.wait(Duration::from_secs(2), |a| !a.contains(&ip(ips[0])));
    assert!(removed < Duration::from_millis(500), "removed after {removed:?}");

    // An invalid file changes nothing and says why.
    std::fs::write(&d.config, format!("{}\nwieght = 3\n", farm_config(port, sip_port, &ips, &runtime))).unwrap();
    let bad = d.cli(&["reload"]).unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown field `wieght`"), "{bad:?}");
    let _sent = Command::new("kill").args(["-HUP", &d.child.id().to_string()]).status();
    d.wait_for_log("reload refused, the running configuration stays");
    assert_eq!(d.addresses(), vec![ip(ips[2])], "the running configuration still serves");
    let _removed = std::fs::remove_dir_all(&runtime);
}

/// 100 reloads while dnsperf sends 20,000 queries a second: nothing lost, no SERVFAIL.
#[test]
fn a_hundred_reloads_under_load_lose_nothing() {
    if !require(have("dnsperf"), "dnsperf") {
        return;
    }
    let ips = ["127.0.0.136", "127.0.0.137"];
    let sip_port = common_port(&ips);
    let _responders: Vec<SipResponder> =
        ips.iter().map(|i| SipResponder::start(SocketAddr::new(ip(i), sip_port), Mode::Reply(200, None))).collect();
    let runtime = std::env::temp_dir().join(format!("dnlb-run2-{}", std::process::id()));
    let port = free_port();
    let d = Instance::start(&farm_config(port, sip_port, &ips, &runtime));
    d.wait(Duration::from_secs(3), |a| a.len() == 2);
    let queries = d.dir.join("queries.txt");
    std::fs::write(&queries, "sip.example.test A\n").unwrap();
    let load = Command::new("dnsperf")
        .args([
            "-s",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-d",
            queries.to_str().unwrap(),
            "-Q",
            "20000",
            "-l",
            "12",
            "-c",
            "4",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    for k in 0..100 {
        let reload = d.cli(&["reload"]).unwrap();
        assert!(reload.status.success(), "reload {k}: {}", String::from_utf8_lossy(&reload.stderr));
    }
    let took = started.elapsed();
    let out = load.wait_with_output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    println!("100 reloads in {took:?}\n{report}");
    let completed = report.lines().find(|l| l.contains("Queries completed")).unwrap_or_default();
    let lost = report.lines().find(|l| l.contains("Queries lost")).unwrap_or_default();
    assert!(lost.contains(" 0 ("), "{lost}");
    assert!(completed.contains("(100.00%)"), "{completed}");
    assert!(!report.contains("SERVFAIL"), "{report}");
    assert!(took < Duration::from_secs(11), "reloads outlasted the load: {took:?}");
    let _removed = std::fs::remove_dir_all(&runtime);
}

/// A reload changes the relay's upstreams and allow list and the rate limits under running
/// workers, with no restart; only adding or removing `[relay]` itself waits for one.
#[test]
fn a_reload_changes_the_relay_and_rate_limits_in_place() {
    use common::upstream::{Hostile, Script};
    use std::sync::atomic::Ordering;
    let (a, b) = (Hostile::start("127.0.0.1", Script::default()), Hostile::start("127.0.0.1", Script::default()));
    let runtime = std::env::temp_dir().join(format!("dnlb-run-edge-{}", std::process::id()));
    let port = free_port();
    let text = |relay: &str, rrl: &str| {
        format!(
            "[server]\nlisten = [\"127.0.0.1:{port}\"]\nworkers = 1\npin_workers = false\nruntime_dir = \"{}\"\n\
             [probe]\nenabled = false\n[[service]]\nname = \"sip.example.test\"\n[[service.server]]\naddress = \"127.0.0.11\"\n\
             {relay}{rrl}",
            runtime.display()
        )
    };
    let relay = |up: SocketAddr, allow: &str| format!("[relay]\nupstreams = [\"{up}\"]\nallow = [\"{allow}\"]\n");
    let rrl = "[rrl]\nresponses_per_second = 5\nslip = 0\n";
    let d = Instance::start(&text(&relay(a.addr, "127.0.0.0/8"), ""));
    let ask = |name: &str, id: u16| {
        let raw = udp_raw(d.dns, &query(name, RecordType::A, id, None), Duration::from_secs(2));
        raw.and_then(|r| Message::from_vec(&r).ok())
    };
    // 40 queries in a burst from one client: all answered while there is no [rrl].
    let burst = || {
        let s = udp_client();
        for id in 0..40u16 {
            s.send_to(&query("sip.example.test.", RecordType::A, id, None), d.dns).unwrap();
        }
        let (mut buf, mut n) = ([0u8; 512], 0);
        s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        while recv_retry(&s, &mut buf).is_some() {
            n += 1;
        }
        n
    };
    assert_eq!(burst(), 40);
    let one = ask("one.example.org.", 1).expect("relayed");
    assert_eq!(one.answers.len(), 1);
    assert_eq!((a.queries.load(Ordering::Relaxed), b.queries.load(Ordering::Relaxed)), (1, 0));

    // New upstream, rate limiting on: the next questions go to the new upstream (the cache
    // started afresh, so a name answered before is asked again) and a burst is limited.
    std::fs::write(&d.config, text(&relay(b.addr, "127.0.0.0/8"), rrl)).unwrap();
    let reload = d.cli(&["reload"]).unwrap();
    let out = String::from_utf8_lossy(&reload.stdout);
    assert!(reload.status.success() && !out.contains("need a restart"), "{out}");
    assert_eq!(ask("two.example.org.", 2).map(|m| m.answers.len()), Some(1));
    assert_eq!(ask("one.example.org.", 3).map(|m| m.answers.len()), Some(1));
    assert_eq!((a.queries.load(Ordering::Relaxed), b.queries.load(Ordering::Relaxed)), (1, 2));
    std::thread::sleep(Duration::from_millis(1100));
    let limited = burst();
    assert!((1..=8).contains(&limited), "{limited} of 40 answered at 5 responses a second");

    // The allow list changes too: this client is now outside it.
    std::fs::write(&d.config, text(&relay(b.addr, "10.0.0.0/8"), "")).unwrap();
    assert!(d.cli(&["reload"]).unwrap().status.success());
    assert_eq!(ask("three.example.org.", 4).map(|m| m.response_code), Some(ResponseCode::Refused));
    assert_eq!(burst(), 40, "rate limiting is off again");

    // Removing [relay] needs a restart: said, and the relay keeps its running settings.
    std::fs::write(&d.config, text(&relay(b.addr, "127.0.0.0/8"), "")).unwrap();
    assert!(d.cli(&["reload"]).unwrap().status.success());
    std::fs::write(&d.config, text("", "")).unwrap();
    let reload = d.cli(&["reload"]).unwrap();
    assert!(String::from_utf8_lossy(&reload.stdout).contains("need a restart: [relay] (added or removed)"));
    assert_eq!(ask("four.example.org.", 5).map(|m| m.answers.len()), Some(1), "still relayed");

    // Neither is a metrics endpoint added nor a user taken on by a reload: both are named, in
    // the reply and the log, as needing a restart.
    let more = text(&relay(b.addr, "127.0.0.0/8"), "")
        .replace("workers = 1\n", "workers = 1\nuser = \"nobody\"\n")
        .replace("[probe]", "[metrics]\nlisten = \"127.0.0.1:0\"\n[probe]");
    std::fs::write(&d.config, more).unwrap();
    let reload = d.cli(&["reload"]).unwrap();
    let out = String::from_utf8_lossy(&reload.stdout);
    assert!(
        reload.status.success() && out.contains("need a restart: server.user, [metrics] (added or removed)"),
        "{out}"
    );
    d.wait_for_log("need a restart and keep their running values: server.user, [metrics] (added or removed)");
    let _removed = std::fs::remove_dir_all(&runtime);
}

/// With `hosts.watch`, a change of the hosts file on disk is answered within a few seconds, a
/// broken file changes nothing and says why, and a file put back is read again; without it,
/// nothing changes until a reload.
#[test]
fn a_watched_hosts_file_is_read_again_when_it_changes() {
    let runtime = std::env::temp_dir().join(format!("dnlb-run-hosts-{}", std::process::id()));
    let port = free_port();
    let text = |watch: bool| {
        format!(
            "[server]\nlisten = [\"127.0.0.1:{port}\"]\nworkers = 1\npin_workers = false\nruntime_dir = \"{}\"\n\
             [probe]\nenabled = false\n[hosts]\nfile = \"hosts\"\nwatch = {watch}\n",
            runtime.display()
        )
    };
    // The file sits beside the config; written whole and renamed into place, as editors do.
    let write_hosts = |d: &Instance, body: &str| {
        let tmp = d.config.with_file_name("hosts.tmp");
        std::fs::write(&tmp, body).unwrap();
        std::fs::rename(&tmp, d.config.with_file_name("hosts")).unwrap();
    };
    let phone = |d: &Instance| d.a("phone.example.test.");
    let until = |d: &Instance, want: &str| {
        let context = || format!("{:?}\n{}", phone(d), d.stderr());
        wait_until(want, Duration::from_secs(5), || phone(d) == [ip(want)], context);
    };
    // The hosts file must exist before dnlb reads its configuration.
    let d = {
        let pre = Instance::prepare(&text(true));
        std::fs::write(pre.with_file_name("hosts"), "192.0.2.10 phone.example.test\n").unwrap();
        Instance::launch(pre)
    };
    assert_eq!(phone(&d), [ip("192.0.2.10")]);
    write_hosts(&d, "192.0.2.11 phone.example.test\n");
    until(&d, "192.0.2.11");
    write_hosts(&d, "not-an-address phone.example.test\n");
    d.wait_for_log("hosts file change refused, the running names stay");
    assert!(d.stderr().contains("is not an IP address"), "{}", d.stderr());
    assert_eq!(phone(&d), [ip("192.0.2.11")], "a broken file changes nothing");
    write_hosts(&d, "192.0.2.12 phone.example.test\n");
    until(&d, "192.0.2.12");

    // Watching off (by a reload): a change waits for the next reload. (That nothing is read
    // meanwhile is `control::hosts_watch`'s unit test, on injected time.)
    std::fs::write(&d.config, text(false)).unwrap();
    assert!(d.cli(&["reload"]).unwrap().status.success());
    write_hosts(&d, "192.0.2.13 phone.example.test\n");
    assert!(d.cli(&["reload"]).unwrap().status.success());
    assert_eq!(phone(&d), [ip("192.0.2.13")]);
    let _removed = std::fs::remove_dir_all(&runtime);
}
