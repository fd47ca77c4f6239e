//! Prober measurements (run by `perf/probe.sh`):
//!
//! - `detection N TRIALS`: N SIP responders on 127.0.0.1 (one port each), interval 1 s,
//!   timeout 150 ms, fall 1: silence one server at a random moment, time until the prober marks
//!   it down; prints the median and max next to the paper's sequential (1+N)·u/2.
//! - `farm N SECONDS`: N servers answered by a child process; reports the prober thread's CPU
//!   and any false downs over SECONDS.
//! - `responders BASE N`: (internal) the child process of `farm`.
//! - `stream N SECONDS tcp|tls`: N servers on TCP or TLS (a certificate made here, checked
//!   against its CA file), answered by threads of this process; reports the prober thread's CPU
//!   per probe, so a TLS probe (a full handshake on a fresh connection) can be set against a TCP
//!   one.
//!
//! Everything stays on 127.0.0.1, every loop is bounded by count and time.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dnlb::config::Config;
use dnlb::probe::{initial_serving, Prober};
use dnlb::snapshot::{Snapshot, SnapshotHandle};
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token};

/// Answers OPTIONS with 200 on every socket until `stop`; a socket whose `silent` flag is set
/// gets no answer.
fn serve(mut sockets: Vec<UdpSocket>, silent: Arc<Vec<AtomicBool>>, stop: Arc<AtomicBool>, deadline: Instant) {
    let mut poll = Poll::new().expect("poll");
    for (i, s) in sockets.iter_mut().enumerate() {
        poll.registry().register(s, Token(i), Interest::READABLE).expect("register");
    }
    let mut events = Events::with_capacity(1024);
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        if poll.poll(&mut events, Some(Duration::from_millis(50))).is_err() {
            continue;
        }
        for e in events.iter() {
            let i = e.token().0;
            while let Ok((n, from)) = sockets[i].recv_from(&mut buf) {
                if silent[i].load(Ordering::Relaxed) {
                    continue;
                }
                let request = String::from_utf8_lossy(&buf[..n]);
                let mut out = String::from("SIP/2.0 200 OK\r\n");
                for line in request.split("\r\n").skip(1).take_while(|l| !l.is_empty()) {
                    let lower = line.to_ascii_lowercase();
                    if ["via:", "from:", "to:", "call-id:", "cseq:"].iter().any(|h| lower.starts_with(h)) {
                        out.push_str(line);
                        out.push_str("\r\n");
                    }
                }
                out.push_str("Content-Length: 0\r\n\r\n");
                let _sent = sockets[i].send_to(out.as_bytes(), from);
            }
        }
    }
}

fn bind_ports(n: usize) -> (u16, Vec<UdpSocket>) {
    // Find a run of n free ports.
    'base: for base in (20_000u16..60_000).step_by(1000) {
        if base as usize + n > 65_000 {
            break;
        }
        let mut sockets = Vec::with_capacity(n);
        for p in 0..n {
            match UdpSocket::bind(SocketAddr::from(([127, 0, 0, 1], base + p as u16))) {
                Ok(s) => sockets.push(s),
                Err(_) => continue 'base,
            }
        }
        return (base, sockets);
    }
    panic!("no run of {n} free ports");
}

fn config(base: u16, n: usize, interval_ms: u64, timeout_ms: u64, fall: u32) -> Config {
    let mut text = format!(
        "[server]\nlisten = [\"127.0.0.1:5399\"]\n[probe]\ninterval_ms = {interval_ms}\ntimeout_ms = {timeout_ms}\nretransmit_ms = 50\nrise = 1\nfall = {fall}\n[[service]]\nname = \"sip.example.test\"\n"
    );
    for p in 0..n {
        text.push_str(&format!("[[service.server]]\naddress = \"127.0.0.1\"\nport = {}\n", base + p as u16));
    }
    Config::parse(&text).unwrap_or_else(|p| panic!("{p:?}"))
}

fn start_prober(config: &Config) -> Prober {
    let snapshots = SnapshotHandle::new(Snapshot::build(config, &initial_serving(config), 0).expect("snapshot"));
    Prober::spawn(config.clone(), snapshots).expect("prober")
}

fn wait_flips(prober: &Prober, want: u64, limit: Duration) -> Option<Instant> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if prober.status().flips.load(Ordering::Relaxed) >= want {
            return Some(Instant::now());
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    None
}

fn detection(n: usize, trials: usize) {
    let (base, sockets) = bind_ports(n);
    let silent: Arc<Vec<AtomicBool>> = Arc::new((0..n).map(|_| AtomicBool::new(false)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(600);
    let responder = {
        let (silent, stop) = (silent.clone(), stop.clone());
        std::thread::spawn(move || serve(sockets, silent, stop, deadline))
    };
    let cfg = config(base, n, 1000, 150, 1);
    let prober = start_prober(&cfg);
    let mut flips = n as u64;
    wait_flips(&prober, flips, Duration::from_secs(10)).expect("every server up");
    let mut times = Vec::new();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ n as u64;
    for _ in 0..trials {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let victim = (seed % n as u64) as usize;
        // A random moment within the probe interval.
        std::thread::sleep(Duration::from_millis(seed % 1000));
        let silenced = Instant::now();
        silent[victim].store(true, Ordering::Relaxed);
        flips += 1;
        let Some(at) = wait_flips(&prober, flips, Duration::from_secs(10)) else {
            eprintln!("n={n}: server {victim} not marked down within 10 s");
            continue;
        };
        times.push(at.duration_since(silenced));
        silent[victim].store(false, Ordering::Relaxed);
        flips += 1;
        wait_flips(&prober, flips, Duration::from_secs(10)).expect("server back");
    }
    stop.store(true, Ordering::Relaxed);
    drop(prober);
    let _joined = responder.join();
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let median = times.get(times.len() / 2).copied().map_or(f64::NAN, ms);
    let max = times.last().copied().map_or(f64::NAN, ms);
    let min = times.first().copied().map_or(f64::NAN, ms);
    let paper = (1.0 + n as f64) * 150.0 / 2.0;
    println!("{n},{},{min:.1},{median:.1},{max:.1},{paper:.1}", times.len());
}

fn thread_cpu_ticks(name: &str) -> Option<u64> {
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() == name {
            let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
            let rest = stat.rsplit_once(") ")?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            return Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?);
        }
    }
    None
}

fn farm(n: usize, seconds: u64) {
    let (base, sockets) = bind_ports(n);
    drop(sockets); // the child binds them
    let exe = std::env::current_exe().expect("own path");
    let mut child = std::process::Command::new(exe)
        .args(["responders", &base.to_string(), &n.to_string(), &(seconds + 60).to_string()])
        .spawn()
        .expect("responder process");
    std::thread::sleep(Duration::from_millis(500));
    let cfg = config(base, n, 1000, 150, 2);
    let prober = start_prober(&cfg);
    let up_at = wait_flips(&prober, n as u64, Duration::from_secs(30));
    let flips_up = prober.status().flips.load(Ordering::Relaxed);
    let t0 = thread_cpu_ticks("dnlb-prober").unwrap_or(0);
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(seconds));
    let t1 = thread_cpu_ticks("dnlb-prober").unwrap_or(0);
    let elapsed = start.elapsed().as_secs_f64();
    let flips = prober.status().flips.load(Ordering::Relaxed) - flips_up;
    let sent = prober.status().sent.load(Ordering::Relaxed);
    let replies = prober.status().replies.load(Ordering::Relaxed);
    let cpu = (t1 - t0) as f64 / 100.0 / elapsed * 100.0;
    drop(prober);
    // The child is ours; end it by its PID.
    let _killed = child.kill();
    let _reaped = child.wait();
    println!(
        "farm of {n} servers: all up: {}, prober CPU {cpu:.1}% of one core over {elapsed:.0} s, {flips} state changes after start-up (false downs), {sent} probes sent, {replies} replies",
        up_at.is_some()
    );
}

/// Answers every connection on `listener` with a 200 to its first request, over TLS when
/// `tls` is given, until `deadline` (a thread blocked in accept ends with the process).
fn serve_stream(listener: std::net::TcpListener, tls: Option<Arc<rustls::ServerConfig>>, deadline: Instant) {
    use std::io::{Read, Write};
    while Instant::now() < deadline {
        let Ok((stream, _)) = listener.accept() else { continue };
        let _timeout = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let mut io: Box<dyn ReadWrite> = match &tls {
            Some(config) => match rustls::ServerConnection::new(config.clone()) {
                Ok(conn) => Box::new(rustls::StreamOwned::new(conn, stream)),
                Err(_) => continue,
            },
            None => Box::new(stream),
        };
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16_384 {
            match io.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => request.extend_from_slice(&buf[..n]),
            }
        }
        let request = String::from_utf8_lossy(&request);
        let mut out = String::from("SIP/2.0 200 OK\r\n");
        for line in request.split("\r\n").skip(1).take_while(|l| !l.is_empty()) {
            let lower = line.to_ascii_lowercase();
            if ["via:", "from:", "to:", "call-id:", "cseq:"].iter().any(|h| lower.starts_with(h)) {
                out.push_str(line);
                out.push_str("\r\n");
            }
        }
        out.push_str("Content-Length: 0\r\n\r\n");
        let _sent = io.write_all(out.as_bytes()).and_then(|()| io.flush());
    }
}

/// A byte stream, plain or TLS.
trait ReadWrite: std::io::Read + std::io::Write {}
impl<T: std::io::Read + std::io::Write> ReadWrite for T {}

/// `stream N SECONDS tcp|tls`: the prober's CPU per probe over TCP or TLS.
fn stream(n: usize, seconds: u64, tls: bool) {
    let (base, sockets) = bind_ports(n);
    drop(sockets);
    let dir = std::env::temp_dir().join(format!("dnlb-probe-perf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let server = if tls {
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).expect("CA");
        std::fs::write(dir.join("ca.pem"), ca_cert.pem()).expect("CA file");
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["sip.perf.test".to_string()])
            .expect("params")
            .signed_by(&key, &issuer)
            .expect("certificate");
        let der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone(), ca_cert.der().clone()], der)
            .expect("server config");
        Some(Arc::new(config))
    } else {
        None
    };
    let deadline = Instant::now() + Duration::from_secs(seconds + 60);
    for p in 0..n {
        let listener = std::net::TcpListener::bind(("127.0.0.1", base + p as u16)).expect("bind");
        let server = server.clone();
        std::thread::spawn(move || serve_stream(listener, server, deadline));
    }
    let (transport, port_key, verify) =
        if tls { ("tls", "tls_port", "tls_ca_file = \"ca.pem\"\n") } else { ("tcp", "port", "") };
    let mut text = format!(
        "[server]\nlisten = [\"127.0.0.1:5399\"]\n[probe]\ninterval_ms = 1000\ntimeout_ms = 500\nrise = 1\nfall = 2\n[[service]]\nname = \"sip.perf.test\"\n{verify}"
    );
    for p in 0..n {
        text.push_str(&format!(
            "[[service.server]]\naddress = \"127.0.0.1\"\ntransports = [\"{transport}\"]\n{port_key} = {}\n",
            base + p as u16
        ));
    }
    let cfg = Config::parse_in(&text, &dir).unwrap_or_else(|p| panic!("{p:?}"));
    let prober = start_prober(&cfg);
    let up = wait_flips(&prober, n as u64, Duration::from_secs(30));
    let flips_up = prober.status().flips.load(Ordering::Relaxed);
    let sent0 = prober.status().sent.load(Ordering::Relaxed);
    let t0 = thread_cpu_ticks("dnlb-prober").unwrap_or(0);
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(seconds));
    let t1 = thread_cpu_ticks("dnlb-prober").unwrap_or(0);
    let elapsed = start.elapsed().as_secs_f64();
    let probes = prober.status().sent.load(Ordering::Relaxed) - sent0;
    let flips = prober.status().flips.load(Ordering::Relaxed) - flips_up;
    let mut reasons: Vec<(&str, usize)> = Vec::new();
    for r in prober.status().servers.lock().map(|r| r.clone()).unwrap_or_default() {
        if let Some(why) = r.changed.filter(|_| r.flips > 1).map(|(_, why)| why) {
            match reasons.iter_mut().find(|(w, _)| *w == why) {
                Some((_, n)) => *n += 1,
                None => reasons.push((why, 1)),
            }
        }
    }
    let timeouts = prober.status().timeouts.load(Ordering::Relaxed);
    drop(prober);
    let _cleanup = std::fs::remove_dir_all(&dir);
    let cpu_s = (t1 - t0) as f64 / 100.0;
    println!(
        "{transport}: {n} servers, all up: {}, {probes} probes in {elapsed:.0} s, prober CPU {:.1}% of one core, {:.0} us per probe, {flips} false changes ({timeouts} timeouts; last change of servers that flipped again: {reasons:?})",
        up.is_some(),
        cpu_s / elapsed * 100.0,
        cpu_s * 1e6 / probes.max(1) as f64
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize, default: u64| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    match args.first().map(String::as_str) {
        Some("detection") => {
            println!("n,trials,min_ms,median_ms,max_ms,paper_sequential_ms");
            detection(num(1, 10) as usize, num(2, 10) as usize);
        }
        Some("farm") => farm(num(1, 10_000) as usize, num(2, 60)),
        Some("stream") => stream(num(1, 200) as usize, num(2, 30), args.get(3).is_some_and(|t| t == "tls")),
        Some("responders") => {
            let (base, n, secs) = (num(1, 20_000) as u16, num(2, 10_000) as usize, num(3, 120));
            dnlb::io::raise_fd_limit();
            let sockets = (0..n)
                .map(|p| UdpSocket::bind(SocketAddr::from(([127, 0, 0, 1], base + p as u16))).expect("bind"))
                .collect();
            let silent = Arc::new((0..n).map(|_| AtomicBool::new(false)).collect());
            serve(sockets, silent, Arc::new(AtomicBool::new(false)), Instant::now() + Duration::from_secs(secs));
        }
        _ => eprintln!("usage: probe_perf detection N TRIALS | farm N SECONDS | stream N SECONDS tcp|tls"),
    }
}
