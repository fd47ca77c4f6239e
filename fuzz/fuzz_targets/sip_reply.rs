//! Fuzzes the SIP reply path: bytes from the network → TCP framing → the reply parser → verdict
//! checks; and the request writer: for an IPv4 or IPv6 server, port, transport and local address
//! taken from the input, the request it renders must be matched by its echo, also with the
//! input's bytes spliced into the echo's top Via. Any panic is a failure.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use dnlb::config::{ProbeMethod, Transport};
use dnlb::probe::sip::{
    check_reply, frame, overload, Frame, ProbeId, Reply, RequestTemplate, MAX_MESSAGE, MAX_OC_VALIDITY_MS,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The identity the seed corpus replies to.
    let id = ProbeId::new([1, 2, 3, 4, 5], 7, ProbeMethod::Options);
    let _verdict = check_reply(data, &id);
    if let Some(signal) = overload(data) {
        assert!(signal.percent <= 100 && signal.validity_ms <= MAX_OC_VALIDITY_MS);
    }
    // Framing: a complete message is at least the blank line and never past the bound; a
    // resumed search agrees with a fresh one.
    match frame(data, 0) {
        Frame::Complete(len) => assert!((4..=MAX_MESSAGE).contains(&len) && len <= data.len()),
        Frame::Incomplete { scanned } => {
            assert!(scanned <= data.len());
            assert_eq!(frame(data, scanned), Frame::Incomplete { scanned });
        }
        Frame::TooLarge | Frame::Malformed => {}
    }
    round_trip(data);
});

/// A server and local address from the input's first 36 bytes (the first byte: IPv4 or IPv6,
/// transport, method); the echo of the rendered request must match it.
fn round_trip(data: &[u8]) {
    let Some((head, rest)) = data.split_first_chunk::<36>() else { return };
    let ip = |b: &[u8]| -> IpAddr {
        if head[0] & 1 == 0 {
            IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
        } else {
            let mut g = [0u8; 16];
            g.copy_from_slice(&b[..16]);
            // Runs of zero groups, so `::` lands everywhere.
            let mut groups = Ipv6Addr::from(g).segments();
            for (i, x) in groups.iter_mut().enumerate() {
                if head[1] & (1 << i) != 0 {
                    *x = 0;
                }
            }
            IpAddr::V6(Ipv6Addr::from(groups))
        }
    };
    let target = SocketAddr::new(ip(&head[2..18]), u16::from_le_bytes([head[34], head[35]]));
    let local = SocketAddr::new(ip(&head[18..34]), u16::from_le_bytes([head[35], head[34]]));
    let transport = [Transport::Udp, Transport::Tcp, Transport::Tls][usize::from(head[0] >> 1) % 3];
    let method = if head[0] & 0x80 == 0 { ProbeMethod::Options } else { ProbeMethod::Register };
    let Ok(template) = RequestTemplate::new(method, target, transport) else { return };
    let words = [7, u64::from(head[2]), 9, u64::from(head[3]), 11];
    let probe = ProbeId::new(words, u32::from_le_bytes([head[4], head[5], head[6], head[7]]), method);
    let mut request = Vec::new();
    template.render(&probe, local, &mut request);
    let answer = echo(&request, b"");
    assert_eq!(check_reply(&answer, &probe), Ok(Reply::Final { code: 200, retry_after: None }));
    // The rest of the input as parameters of the top Via (no line breaks): never a panic.
    let params: Vec<u8> = rest.iter().copied().filter(|&b| b != b'\r' && b != b'\n').take(512).collect();
    let _verdict = check_reply(&echo(&request, &params), &probe);
}

/// A 200 echoing the request's Via (with `params` added to it), From, To, Call-ID and CSeq, as
/// a SIP server does.
fn echo(request: &[u8], params: &[u8]) -> Vec<u8> {
    let mut out = b"SIP/2.0 200 OK\r\n".to_vec();
    for line in request.split(|&b| b == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let lower = line.to_ascii_lowercase();
        if lower.starts_with(b"via:") {
            out.extend_from_slice(line);
            out.extend_from_slice(params);
            out.extend_from_slice(b"\r\n");
        } else if [&b"from:"[..], b"to:", b"call-id:", b"cseq:"].iter().any(|h| lower.starts_with(h)) {
            out.extend_from_slice(line);
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(b"Content-Length: 0\r\n\r\n");
    out
}
