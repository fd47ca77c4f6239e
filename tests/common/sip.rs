//! A small in-process SIP responder on a loopback address, whose behaviour a test switches at will.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How the responder treats each request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// A final reply with this code (and Retry-After seconds, if any).
    Reply(u16, Option<u32>),
    /// 100 Trying, then this final code.
    TryingThen(u16),
    /// 100 Trying only.
    TryingOnly,
    /// No reply.
    Silent,
    /// A 200 after this long.
    Late(Duration),
    /// `count` forged replies (wrong branch, Call-ID, tag, CSeq number, CSeq method in turn), then
    /// the true 200 when `then_answer`.
    Forge { count: usize, then_answer: bool },
    /// The true 200, but sent from another port (a source forgery).
    WrongSource,
    /// A 200 whose top Via carries these RFC 7339 parameters (`;oc=50;oc-validity=1000`).
    Overloaded(String),
    /// A 200, on a path that loses this percentage of datagrams in each direction: each request
    /// is lost with that chance, and so is each reply (independent draws, a fixed seed).
    Lossy(u64),
}

/// A running responder.
pub struct SipResponder {
    pub addr: SocketAddr,
    mode: Arc<Mutex<Mode>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Requests received.
    pub requests: Arc<AtomicU64>,
    /// Forged replies sent.
    pub forged: Arc<AtomicU64>,
    /// Distinct probes received: distinct Via branches (the copies and retransmissions of one
    /// probe share its branch), so probe load is counted, not datagrams.
    pub branches: Arc<Mutex<std::collections::HashSet<String>>>,
}

/// The Via branch of a SIP request (`None` without one).
pub fn branch_of(request: &str) -> Option<String> {
    let at = request.find("branch=")? + "branch=".len();
    Some(request[at..].chars().take_while(|c| !matches!(c, ';' | '\r' | '\n' | ' ' | ',')).collect())
}

fn header_lines(request: &str) -> Vec<&str> {
    request.split("\r\n").skip(1).take_while(|l| !l.is_empty()).collect()
}

/// A reply to `request` with `status`, echoing Via, From, Call-ID and CSeq, To with a tag.
pub fn reply(request: &str, status: &str, extra: &str) -> String {
    let mut out = format!("SIP/2.0 {status}\r\n");
    for line in header_lines(request) {
        let lower = line.to_ascii_lowercase();
        if ["via:", "from:", "call-id:", "cseq:"].iter().any(|h| lower.starts_with(h)) {
            out.push_str(line);
            out.push_str("\r\n");
        } else if lower.starts_with("to:") {
            out.push_str(&format!("{line};tag=responder\r\n"));
        }
    }
    out.push_str(extra);
    out.push_str("Content-Length: 0\r\n\r\n");
    out
}

/// One forged variant of a true 200 reply, chosen by `k`.
pub fn forge(request: &str, k: usize) -> String {
    let good = reply(request, "200 OK", "");
    let field = |name: &str| {
        header_lines(request)
            .iter()
            .find(|l| l.to_ascii_lowercase().starts_with(name))
            .map(|l| l.to_string())
            .unwrap_or_default()
    };
    match k % 5 {
        0 => good.replace("branch=z9hG4bK", "branch=z9hG4bKx"),
        1 => {
            let call_id = field("call-id:");
            good.replace(&call_id, "Call-ID: forged@attacker")
        }
        2 => good.replace(";tag=", ";tag=x"),
        3 => {
            let cseq = field("cseq:");
            let n: u32 = cseq.split_whitespace().nth(1).and_then(|n| n.parse().ok()).unwrap_or(1);
            good.replace(&cseq, &cseq.replacen(&n.to_string(), &(n + 1).to_string(), 1))
        }
        _ => good.replace(" OPTIONS\r\n", " INVITE\r\n").replace(" REGISTER\r\n", " INVITE\r\n"),
    }
}

impl SipResponder {
    /// Starts a responder on `addr` in `mode`.
    pub fn start(addr: SocketAddr, mode: Mode) -> SipResponder {
        let socket = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        socket.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        let mode = Arc::new(Mutex::new(mode));
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicU64::new(0));
        let forged = Arc::new(AtomicU64::new(0));
        let branches = Arc::new(Mutex::new(std::collections::HashSet::new()));
        let (m, s, r, f, b) = (mode.clone(), stop.clone(), requests.clone(), forged.clone(), branches.clone());
        let thread = std::thread::spawn(move || {
            let other = UdpSocket::bind(SocketAddr::new(addr.ip(), 0)).unwrap();
            let mut buf = [0u8; 4096];
            let mut dice = 0x2545_f491_4f6c_dd1du64;
            let mut lost = |percent: u64| {
                dice ^= dice << 13;
                dice ^= dice >> 7;
                dice ^= dice << 17;
                dice % 100 < percent
            };
            while !s.load(Ordering::Relaxed) {
                let Ok((n, from)) = socket.recv_from(&mut buf) else { continue };
                r.fetch_add(1, Ordering::Relaxed);
                let request = String::from_utf8_lossy(&buf[..n]).into_owned();
                if let Some(branch) = branch_of(&request) {
                    b.lock().unwrap().insert(branch);
                }
                let mode = m.lock().unwrap().clone();
                let send = |text: &str| {
                    let _sent = socket.send_to(text.as_bytes(), from);
                };
                match mode {
                    Mode::Reply(code, retry) => {
                        let extra = retry.map(|s| format!("Retry-After: {s}\r\n")).unwrap_or_default();
                        send(&reply(&request, &format!("{code} Status"), &extra));
                    }
                    Mode::TryingThen(code) => {
                        send(&reply(&request, "100 Trying", ""));
                        send(&reply(&request, &format!("{code} Status"), ""));
                    }
                    Mode::TryingOnly => send(&reply(&request, "100 Trying", "")),
                    Mode::Silent => {}
                    Mode::Lossy(percent) => {
                        if !lost(percent) && !lost(percent) {
                            send(&reply(&request, "200 OK", ""));
                        }
                    }
                    Mode::Late(after) => {
                        std::thread::sleep(after);
                        send(&reply(&request, "200 OK", ""));
                    }
                    Mode::Forge { count, then_answer } => {
                        for k in 0..count {
                            send(&forge(&request, k));
                            f.fetch_add(1, Ordering::Relaxed);
                            if k % 32 == 31 {
                                std::thread::sleep(Duration::from_micros(500)); // let the prober drain
                            }
                        }
                        if then_answer {
                            send(&reply(&request, "200 OK", ""));
                        }
                    }
                    Mode::Overloaded(params) => {
                        let reply = reply(&request, "200 OK", "");
                        let via = reply.find("Via:").or_else(|| reply.find("via:")).unwrap_or(0);
                        let end = via + reply[via..].find("\r\n").unwrap_or(0);
                        send(&format!("{}{params}{}", &reply[..end], &reply[end..]));
                    }
                    Mode::WrongSource => {
                        let _sent = other.send_to(reply(&request, "200 OK", "").as_bytes(), from);
                        f.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
        SipResponder { addr, mode, stop, thread: Some(thread), requests, forged, branches }
    }

    /// Distinct probes received so far.
    pub fn probes(&self) -> usize {
        self.branches.lock().unwrap().len()
    }

    /// Switches the behaviour for the next requests.
    pub fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    /// Closes the port (the kernel then answers probes with ICMP port-unreachable).
    pub fn close(mut self) -> SocketAddr {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        self.addr
    }
}

impl Drop for SipResponder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _joined = t.join();
        }
    }
}

/// A port free on every one of `ips` (UDP), so a farm can share one port number.
pub fn common_port(ips: &[&str]) -> u16 {
    loop {
        let probe = UdpSocket::bind((ips[0], 0)).unwrap();
        let port = probe.local_addr().unwrap().port();
        drop(probe);
        if ips.iter().all(|ip| UdpSocket::bind((*ip, port)).is_ok()) {
            return port;
        }
    }
}
