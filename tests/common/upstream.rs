//! Real and fake upstream resolvers for the relay tests: nsd (Debian's package) serving a test
//! zone on a loopback port, and a scriptable in-process UDP upstream.

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The test zone: an A record, a CNAME chain, a name with only a TXT, a TXT too big for UDP.
pub fn zone() -> String {
    let big: String = (0..8).map(|i| format!(" \"{}\"", char::from(b'a' + i).to_string().repeat(250))).collect();
    format!(
        "$ORIGIN relay.test.\n$TTL 300\n@ IN SOA ns hostmaster 1 3600 600 86400 60\n@ IN NS ns\nns IN A 127.0.0.10\n\
         www IN A 192.0.2.1\nwww IN A 192.0.2.2\nwww IN AAAA 2001:db8::1\nalias IN CNAME alias2\nalias2 IN CNAME www\n\
         textonly IN TXT \"hello\"\nbig IN TXT{big}\n"
    )
}

/// An nsd process serving [`zone`], ended by its PID on drop.
pub struct Nsd {
    child: Child,
    dir: PathBuf,
    pub addr: SocketAddr,
}

impl Nsd {
    pub fn start(port: u16) -> Nsd {
        let dir = std::env::temp_dir().join(format!("dnlb-nsd-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("relay.test.zone"), zone()).unwrap();
        let d = dir.display();
        let conf = format!(
            "server:\n  ip-address: 127.0.0.1@{port}\n  server-count: 1\n  username: \"\"\n  chroot: \"\"\n  zonesdir: \"{d}\"\n  pidfile: \"{d}/nsd.pid\"\n  xfrdfile: \"{d}/xfrd.state\"\n  zonelistfile: \"{d}/zone.list\"\n  database: \"\"\n  logfile: \"{d}/nsd.log\"\n  verbosity: 0\nremote-control:\n  control-enable: no\nzone:\n  name: relay.test\n  zonefile: relay.test.zone\n"
        );
        std::fs::write(dir.join("nsd.conf"), conf).unwrap();
        let nsd =
            ["/usr/sbin/nsd", "nsd"].into_iter().find(|p| std::path::Path::new(p).exists() || *p == "nsd").unwrap();
        let child = Command::new(nsd)
            .arg("-d")
            .arg("-c")
            .arg(dir.join("nsd.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nsd");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let n = Nsd { child, dir, addr };
        let deadline = Instant::now() + Duration::from_secs(10);
        let probe = super::query("www.relay.test.", hickory_proto::rr::RecordType::A, 1, None);
        while super::udp_raw(addr, &probe, Duration::from_millis(100)).is_none() {
            assert!(Instant::now() < deadline, "nsd did not answer within 10 s");
        }
        n
    }
}

impl Drop for Nsd {
    fn drop(&mut self) {
        super::terminate(&mut self.child);
        let _cleanup = std::fs::remove_dir_all(&self.dir);
    }
}

/// How the fake upstream treats each query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Never answers.
    BlackHole,
    /// `forged` wrong replies (wrong ID, wrong question case, from another port; each with the
    /// address 203.0.113.66), then the true reply (an A record 198.51.100.7, TTL 60).
    ForgeThenAnswer { forged: usize },
}

/// A scriptable UDP upstream.
pub struct FakeUpstream {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    pub queries: Arc<AtomicU64>,
    pub forged: Arc<AtomicU64>,
}

impl FakeUpstream {
    pub fn start(behaviour: Behaviour) -> FakeUpstream {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        let addr = socket.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let queries = Arc::new(AtomicU64::new(0));
        let forged = Arc::new(AtomicU64::new(0));
        let (s, q, f) = (stop.clone(), queries.clone(), forged.clone());
        let thread = std::thread::spawn(move || {
            let other = UdpSocket::bind("127.0.0.1:0").unwrap();
            let mut buf = [0u8; 4096];
            while !s.load(Ordering::Relaxed) {
                let Ok((n, from)) = socket.recv_from(&mut buf) else { continue };
                q.fetch_add(1, Ordering::Relaxed);
                let Behaviour::ForgeThenAnswer { forged } = behaviour else { continue };
                let query = &buf[..n];
                let Some(q_end) = question_end(query) else { continue };
                let mut reply = query[..q_end].to_vec();
                reply[2] |= 0x80; // QR
                reply[3] = 0x80; // RA, NOERROR
                reply[6..12].copy_from_slice(&[0, 1, 0, 0, 0, 0]);
                reply.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 198, 51, 100, 7]);
                // Forgeries carry another address, so one accepted would show in the answer.
                let mut forgery = reply.clone();
                let n = forgery.len();
                forgery[n - 4..].copy_from_slice(&[203, 0, 113, 66]);
                for k in 0..forged {
                    let mut bad = forgery.clone();
                    match k % 3 {
                        0 => bad[1] ^= 1 + (k % 255) as u8, // wrong ID
                        1 => bad[13] ^= 0x20,               // question case changed
                        _ => {
                            let _sent = other.send_to(&bad, from); // right bytes, wrong source port
                            f.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                    }
                    let _sent = socket.send_to(&bad, from);
                    f.fetch_add(1, Ordering::Relaxed);
                    if k % 64 == 63 {
                        std::thread::sleep(Duration::from_micros(300));
                    }
                }
                let _sent = socket.send_to(&reply, from);
            }
        });
        FakeUpstream { addr, stop, thread: Some(thread), queries, forged }
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _joined = t.join();
        }
    }
}

fn question_end(q: &[u8]) -> Option<usize> {
    let mut at = 12;
    loop {
        let len = *q.get(at)? as usize;
        at += 1 + len;
        if len == 0 {
            break;
        }
    }
    (at + 4 <= q.len()).then_some(at + 4)
}
