//! TLS probes against real kamailio, through the real binary: certificates made here (a CA and
//! server certificates, rcgen), each kamailio on 127.0.0.x:5061 terminating TLS itself with its
//! tls module and one of those certificates, answering the OPTIONS that arrive over TLS.
//!
//! - a valid certificate, checked against the test's CA file: up;
//! - an expired certificate, and one for another name: down, with that reason in
//!   `dnlb status --json` and logged once, not once per probe;
//! - `tls_verify = false`: a certificate from an unknown CA for another name is up;
//! - the default (the system's trust store): the test CA's certificate is down, issuer not trusted;
//! - kamailio stopped: down.
//!
//! Each kamailio (`common::kamailio`: 200 only to a well-formed OPTIONS addressed to it) reads PEM
//! files as rcgen writes them: the server's certificate followed by the
//! CA's in one file, and an ECDSA P-256 key in PKCS#8 (`BEGIN PRIVATE KEY`).

mod common;

use std::io::Write;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::kamailio::{modules_with, Kamailio, TlsFiles};
use common::process::a_records;
use common::*;
use hickory_proto::op::Message;
use hickory_proto::rr::{RData, RecordType};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

/// The test's CA and the certificates it issues.
struct Pki {
    ca: Issuer<'static, KeyPair>,
    ca_pem: String,
}

impl Pki {
    fn new() -> Pki {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "dnlb test CA");
        let cert = params.self_signed(&key).unwrap();
        Pki { ca_pem: cert.pem(), ca: Issuer::new(params, key) }
    }

    /// A certificate for `name` signed by the CA, valid from `from` to `until` (years).
    fn issue(&self, name: &str, from: i32, until: i32) -> TlsFiles {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.not_before = rcgen::date_time_ymd(from, 1, 1);
        params.not_after = rcgen::date_time_ymd(until, 1, 1);
        let cert = params.signed_by(&key, &self.ca).unwrap();
        TlsFiles { chain: format!("{}{}", cert.pem(), self.ca_pem), key: key.serialize_pem() }
    }
}

/// A self-signed certificate for `name`, from no CA the prober knows.
fn self_signed(name: &str) -> TlsFiles {
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec![name.to_string()]).unwrap().self_signed(&key).unwrap();
    TlsFiles { chain: cert.pem(), key: key.serialize_pem() }
}

/// The real binary with a config file and a control socket.
struct Dnlb {
    child: Child,
    dir: PathBuf,
    config: PathBuf,
    dns: SocketAddr,
}

impl Dnlb {
    fn start(dir: &Path, text: &str, dns: SocketAddr) -> Dnlb {
        let config = dir.join("dnlb.toml");
        std::fs::write(&config, text).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_dnlb"))
            .args(["--config", config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("stderr.log")).unwrap())
            .spawn()
            .unwrap();
        Dnlb { child, dir: dir.to_path_buf(), config, dns }
    }

    fn cli(&self, args: &[&str]) -> std::io::Result<Output> {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--config", self.config.to_str().unwrap()]);
        Command::new(env!("CARGO_BIN_EXE_dnlb")).args(&all).output()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    /// Per server address: (state, failure) from `dnlb status --json`.
    fn states(&self) -> Vec<(String, String, Option<String>)> {
        let Ok(out) = self.cli(&["status", "--json"]) else { return Vec::new() };
        let Ok(json) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else { return Vec::new() };
        let mut states = Vec::new();
        for service in json["services"].as_array().into_iter().flatten() {
            for s in service["servers"].as_array().into_iter().flatten() {
                states.push((
                    s["address"].as_str().unwrap_or_default().to_string(),
                    s["state"].as_str().unwrap_or_default().to_string(),
                    s["failure"].as_str().map(str::to_string),
                ));
            }
        }
        states
    }

    /// Waits until `want` holds for the status of every server, or fails after `limit` showing
    /// dnlb's log and `context` (kamailio's).
    fn wait(
        &self,
        what: &str,
        limit: Duration,
        want: &[(&str, &str, Option<&str>)],
        context: &dyn Fn() -> String,
    ) -> Duration {
        let mut states = Vec::new();
        let took = poll(limit, || {
            states = self.states();
            want.iter().all(|(addr, state, failure)| {
                states.iter().any(|(a, s, f)| a == addr && s == state && f.as_deref() == *failure)
            })
        });
        took.unwrap_or_else(|| panic!("{what}: not within {limit:?}: {states:?}\n{}\n{}", self.stderr(), context()))
    }

    fn addresses(&self, name: &str) -> Vec<IpAddr> {
        let raw = udp_raw(self.dns, &query(name, RecordType::A, 9, None), Duration::from_secs(1));
        let mut out: Vec<IpAddr> =
            raw.and_then(|r| Message::from_vec(&r).ok()).map(|m| a_records(&m)).unwrap_or_default();
        out.sort();
        out
    }

    fn srv_ports(&self, name: &str) -> Vec<u16> {
        let raw = udp_raw(self.dns, &query(name, RecordType::SRV, 10, None), Duration::from_secs(1));
        raw.and_then(|r| Message::from_vec(&r).ok())
            .map(|m| {
                m.answers
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::SRV(s) => Some(s.port),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Dnlb {
    fn drop(&mut self) {
        terminate(&mut self.child);
    }
}

const EXPIRED: &str = "TLS: certificate expired";
const WRONG_NAME: &str = "TLS: certificate does not match the server name";

#[test]
fn tls_probes_check_certificates_and_reach_kamailio() {
    if !require(have("kamailio"), "kamailio (package kamailio)") {
        return;
    }
    if !require(modules_with("tls.so").is_some(), "kamailio's tls module tls.so (package kamailio-tls-modules)") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("dnlb-tls-probe-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pki = Pki::new();
    std::fs::write(dir.join("ca.pem"), &pki.ca_pem).unwrap();

    // (address, SNI name, certificate)
    let ips = ["127.0.0.141", "127.0.0.142", "127.0.0.143", "127.0.0.144", "127.0.0.145"];
    let certs = [
        pki.issue("sip1.example.test", 2020, 2100),
        pki.issue("sip2.example.test", 2020, 2021),
        pki.issue("other.example.test", 2020, 2100),
        pki.issue("sip4.example.test", 2020, 2100),
        self_signed("nobody.example.test"),
    ];
    let mut kamailios: Vec<Kamailio> = ips
        .iter()
        .zip(&certs)
        .map(|(ip, identity)| Kamailio::start(ip, &[format!("tls:{ip}:5061")], Some(identity)))
        .collect();

    let kamailio_logs = || -> String {
        ips.iter().zip(&kamailios).map(|(ip, k)| format!("kamailio on {ip}:\n{}", k.stderr())).collect()
    };

    let port = free_port();
    let mut text = format!(
        "[server]\nlisten = [\"127.0.0.1:{port}\"]\nworkers = 1\npin_workers = false\nruntime_dir = \"{}\"\n\
         [probe]\ninterval_ms = 500\ntimeout_ms = 400\nrise = 1\nfall = 1\n\
         [[service]]\nname = \"sip.example.test\"\nall_down = \"nodata\"\ntls_ca_file = \"ca.pem\"\n",
        dir.join("run").display()
    );
    for (i, ip) in ips[..4].iter().enumerate() {
        text.push_str(&format!(
            "[[service.server]]\naddress = \"{ip}\"\nhost = \"sip{}.example.test\"\ntransports = [\"tls\"]\n",
            i + 1
        ));
    }
    text.push_str(&format!(
        "[[service]]\nname = \"off.example.test\"\ntls_verify = false\n[[service.server]]\naddress = \"{}\"\ntransports = [\"tls\"]\n",
        ips[4]
    ));
    // The default: the system's trust store, which does not know the test's CA.
    text.push_str(&format!(
        "[[service]]\nname = \"system.example.test\"\n[[service.server]]\naddress = \"{}\"\nhost = \"sip1.example.test\"\nport = 5061\ntransports = [\"tls\"]\n",
        ips[0]
    ));
    let dns: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let d = Dnlb::start(&dir, &text, dns);

    let a = |i: usize| format!("{}:5061", ips[i]);
    let service_of = |addr: &str| -> Vec<String> {
        d.states()
            .into_iter()
            .filter(|(a, ..)| a == addr)
            .map(|(_, state, failure)| format!("{state} {failure:?}"))
            .collect()
    };
    let settled = d.wait(
        "first verdicts",
        Duration::from_secs(20),
        &[
            (&a(0), "up", None),
            (&a(1), "down", Some(EXPIRED)),
            (&a(2), "down", Some(WRONG_NAME)),
            (&a(3), "up", None),
            (&a(4), "up", None),
        ],
        &kamailio_logs,
    );
    println!("valid up, expired and wrong-name down with their reasons, verify-off up after {settled:?}");
    // 127.0.0.141 is in two services: trusted through the CA file, untrusted by the system's roots.
    let start = Instant::now();
    while !service_of(&a(0)).contains(&"down Some(\"TLS: certificate issuer not trusted\")".to_string()) {
        assert!(start.elapsed() < Duration::from_secs(5), "default verification: {:?}", service_of(&a(0)));
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(service_of(&a(0)).contains(&"up None".to_string()));
    let up: Vec<IpAddr> = [ips[0], ips[3]].iter().map(|i| i.parse().unwrap()).collect();
    assert_eq!(d.addresses("sip.example.test."), up, "only the servers with good certificates are served");
    assert_eq!(d.addresses("off.example.test."), vec![ips[4].parse::<IpAddr>().unwrap()]);
    assert_eq!(d.srv_ports("_sips._tcp.sip.example.test."), vec![5061, 5061], "TLS's own port in SRV");

    // Several more probes fail the same way: the reason is logged once, not once per probe.
    std::thread::sleep(Duration::from_millis(1500));
    let log = d.stderr();
    let expired_lines = log.lines().filter(|l| l.contains(ips[1]) && l.contains(EXPIRED)).count();
    assert!((1..=2).contains(&expired_lines), "logged once as a failure (and once in the flip): {log}");
    assert!(
        log.contains("probe failing") && log.contains("reason=TLS: certificate expired ("),
        "with rustls's words: {log}"
    );

    kamailios[3].stop();
    let stopped = Instant::now();
    d.wait(
        "kamailio stopped",
        Duration::from_secs(5),
        &[(&a(3), "down", Some("connection refused")), (&a(0), "up", None)],
        &String::new,
    );
    println!("kamailio stopped: down after {:?}", stopped.elapsed());
    assert_eq!(d.addresses("sip.example.test."), vec![ips[0].parse::<IpAddr>().unwrap()]);

    drop(d);
    drop(kamailios);
    let _cleanup = std::fs::remove_dir_all(&dir);
}

/// What a hostile TLS listener does with each connection.
#[derive(Clone, Copy)]
enum Hostile {
    /// Accepts and never says a word.
    Mute,
    /// Answers the ClientHello with a plaintext SIP reply.
    Plaintext,
    /// Sends junk as fast as the connection takes it.
    Flood,
}

/// A listener on `ip`:5061 that treats every connection as `how` says, for at most two seconds.
fn hostile(ip: &str, how: Hostile, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    let listener = TcpListener::bind((ip, 5061)).unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let Ok((mut stream, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            };
            let stop = stop.clone();
            std::thread::spawn(move || {
                let until = Instant::now() + Duration::from_secs(2);
                let junk = [0x17u8; 16_384];
                while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                    match how {
                        Hostile::Mute => std::thread::sleep(Duration::from_millis(20)),
                        Hostile::Plaintext => {
                            let _sent = stream.write_all(b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n");
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        Hostile::Flood => {
                            if stream.write_all(&junk).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    })
}

#[test]
fn hostile_tls_peers_fail_probes_within_the_timeout() {
    let ips = ["127.0.0.151", "127.0.0.152", "127.0.0.153"];
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<JoinHandle<()>> = ips
        .iter()
        .zip([Hostile::Mute, Hostile::Plaintext, Hostile::Flood])
        .map(|(ip, how)| hostile(ip, how, stop.clone()))
        .collect();
    let mut text = format!(
        "[server]\nlisten = [\"127.0.0.1:{}\"]\n[probe]\ninterval_ms = 300\ntimeout_ms = 200\nrise = 1\nfall = 1\n\
         [[service]]\nname = \"sip.example.test\"\ntls_verify = false\n",
        free_port()
    );
    for ip in ips {
        text.push_str(&format!("[[service.server]]\naddress = \"{ip}\"\ntransports = [\"tls\"]\n"));
    }
    let config = dnlb::config::Config::parse(&text).unwrap();
    let health = dnlb::probe::initial_serving(&config);
    let snapshots = dnlb::snapshot::SnapshotHandle::new(dnlb::snapshot::Snapshot::build(&config, &health, 0).unwrap());
    let prober = dnlb::probe::Prober::spawn(config, snapshots).unwrap();
    let want =
        [(ips[0], "TLS: handshake timed out"), (ips[1], "TLS: handshake failed"), (ips[2], "TLS: handshake failed")];
    let start = Instant::now();
    loop {
        let reports = prober.status().servers.lock().unwrap().clone();
        let failures: Vec<(String, Option<&str>)> =
            reports.iter().map(|r| (r.addr.ip().to_string(), r.failure)).collect();
        if want.iter().all(|(ip, why)| failures.iter().any(|(a, f)| a == ip && *f == Some(*why))) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "not within 5 s: {failures:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("mute, plaintext and flooding TLS peers failed with their reasons after {:?}", start.elapsed());
    assert!(!prober.stalled(), "a flooding peer does not stall the prober");
    prober.shutdown().unwrap();
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
}
