//! SIP probe requests and the checks a reply must pass, built and parsed with rsip. No I/O.
//!
//! A reply counts only if it matches the request exactly: the Via branch (`z9hG4bK` + 96 random
//! bits), Call-ID, From tag, CSeq number and method. The source address and port are checked by the
//! socket (a connected UDP socket only receives from its peer; a TCP stream has one peer).

use std::net::SocketAddr;

use rsip::headers::{self, Header};
use rsip::prelude::{HeadersExt, ToTypedHeader, UntypedHeader};

use crate::config::{ProbeMethod, Transport};

/// The random identity of one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeId {
    /// Via branch, with the RFC 3261 magic cookie.
    pub branch: String,
    /// Call-ID.
    pub call_id: String,
    /// From tag.
    pub from_tag: String,
    /// CSeq number.
    pub cseq: u32,
    /// The request method.
    pub method: ProbeMethod,
}

impl ProbeId {
    /// A fresh identity from 96 + 96 + 64 random bits and a CSeq.
    pub fn new(random: [u64; 5], cseq: u32, method: ProbeMethod) -> ProbeId {
        ProbeId {
            branch: format!("z9hG4bK{:016x}{:08x}", random[0], random[1] as u32),
            call_id: format!("{:016x}{:08x}@dnlb", random[2], random[3] as u32),
            from_tag: format!("{:016x}", random[4]),
            cseq,
            method,
        }
    }
}

fn method(m: ProbeMethod) -> rsip::Method {
    match m {
        ProbeMethod::Options => rsip::Method::Options,
        ProbeMethod::Register => rsip::Method::Register,
    }
}

/// The transport token of a Via header (RFC 3261 §20.42).
fn via_transport(transport: Transport) -> &'static str {
    match transport {
        Transport::Udp => "UDP",
        Transport::Tcp => "TCP",
        Transport::Tls => "TLS",
    }
}

/// The probe request for `target` over `transport`, sent from `local`.
///
/// OPTIONS asks the server about itself (RFC 3261 §11). REGISTER is the paper's dummy
/// registration: a binding query (no Contact, so nothing is registered).
pub fn request(id: &ProbeId, target: SocketAddr, transport: Transport, local: SocketAddr) -> Vec<u8> {
    let (scheme, uri_param) = match transport {
        Transport::Udp => ("sip", ""),
        Transport::Tcp => ("sip", ";transport=tcp"),
        Transport::Tls => ("sips", ""),
    };
    let via_transport = via_transport(transport);
    let host = host_port(target);
    let local_host = host_port(local);
    let uri = format!("{scheme}:{host}{uri_param}");
    let aor = format!("<{scheme}:dnlb-probe@{host}>");
    let mut headers: Vec<Header> = vec![
        // `oc` and `oc-algo` say that dnlb takes RFC 7339 overload control: a server may then
        // put its `oc` reduction in its replies' Via.
        headers::Via::new(format!(
            "SIP/2.0/{via_transport} {local_host};branch={};rport;oc;oc-algo=\"loss\"",
            id.branch
        ))
        .into(),
        headers::MaxForwards::new("70").into(),
        headers::From::new(format!("{aor};tag={}", id.from_tag)).into(),
        headers::To::new(aor.clone()).into(),
        headers::CallId::new(id.call_id.clone()).into(),
        headers::CSeq::new(format!("{} {}", id.cseq, method(id.method))).into(),
    ];
    if id.method == ProbeMethod::Register {
        headers.push(headers::Expires::new("0").into());
    } else {
        headers.push(headers::Accept::new("application/sdp").into());
    }
    headers.push(headers::UserAgent::new(concat!("dnlb/", env!("CARGO_PKG_VERSION"))).into());
    headers.push(headers::ContentLength::new("0").into());
    let request = rsip::Request {
        method: method(id.method),
        uri: rsip::Uri::try_from(uri.as_str()).unwrap_or_default(),
        version: rsip::Version::V2,
        headers: headers.into(),
        body: Vec::new(),
    };
    request.to_string().into_bytes()
}

/// The first and last CSeq numbers probes use: always nine digits, so a request's layout never
/// changes and a [`RequestTemplate`] can be patched in place.
pub const CSEQ_RANGE: std::ops::RangeInclusive<u32> = 100_000_000..=999_999_999;

/// The largest SIP message a probe accepts, over UDP or TCP (headers and body together). A reply
/// to OPTIONS or REGISTER is a few hundred bytes; anything past this is refused unread.
pub const MAX_MESSAGE: usize = 64 * 1024;
/// The most header lines a reply may carry before it is refused without a full parse.
pub const MAX_HEADERS: usize = 256;

/// The placeholder local address a template is built with, found again by its Via prefix.
fn placeholder_local(target: SocketAddr) -> SocketAddr {
    if target.is_ipv4() {
        SocketAddr::from(([192, 0, 2, 1], 9))
    } else {
        SocketAddr::from(([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1], 9))
    }
}

/// `ip:port` or `[ip]:port`, as a Via sent-by and a URI host write it.
fn host_port(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => format!("{}:{}", a.ip(), a.port()),
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
    }
}

/// One target's probe request, built once with rsip; each probe writes in its own local address
/// (every probe leaves from a fresh socket) and patches in its fresh identity. Every identity
/// field has a fixed width (hex digits, a nine-digit CSeq), so rendering is two copies and four
/// overwrites instead of a full rsip build per probe.
#[derive(Debug, Clone)]
pub struct RequestTemplate {
    bytes: Vec<u8>,
    /// Where the Via sent-by (the local address) sits in `bytes`, and its placeholder length.
    sent_by: (usize, usize),
    /// Offsets of the branch, Call-ID, From tag and CSeq number in `bytes`, with their lengths;
    /// all lie after the sent-by.
    fields: [(usize, usize); 4],
}

impl RequestTemplate {
    /// Builds the template for `method` to `target` over `transport`.
    pub fn new(method: ProbeMethod, target: SocketAddr, transport: Transport) -> RequestTemplate {
        let placeholder = ProbeId::new([u64::MAX; 5], *CSEQ_RANGE.end(), method);
        let local = placeholder_local(target);
        let bytes = request(&placeholder, target, transport, local);
        let find = |needle: &str| -> (usize, usize) {
            let n = needle.as_bytes();
            let at = bytes.windows(n.len()).position(|w| w == n).unwrap_or(0);
            (at, n.len())
        };
        let via = format!("SIP/2.0/{} ", via_transport(transport));
        let (via_at, via_len) = find(&format!("{via}{}", host_port(local)));
        let sent_by = (via_at + via.len(), via_len - via.len());
        let fields = [
            find(&placeholder.branch),
            find(&placeholder.call_id),
            find(&format!("tag={}", placeholder.from_tag)),
            find(&format!("{} ", placeholder.cseq)),
        ];
        // The tag and CSeq needles carry a prefix or suffix to make them unique; skip those.
        let fields = [fields[0], fields[1], (fields[2].0 + 4, fields[2].1 - 4), (fields[3].0, fields[3].1 - 1)];
        RequestTemplate { bytes, sent_by, fields }
    }

    /// Writes the request for `id`, sent from `local`, into `out` (whose contents are replaced).
    pub fn render(&self, id: &ProbeId, local: SocketAddr, out: &mut Vec<u8>) {
        let (at, len) = self.sent_by;
        let local = host_port(local);
        out.clear();
        out.extend_from_slice(&self.bytes[..at]);
        out.extend_from_slice(local.as_bytes());
        out.extend_from_slice(&self.bytes[at + len..]);
        let cseq = id.cseq.clamp(*CSEQ_RANGE.start(), *CSEQ_RANGE.end()).to_string();
        let values = [id.branch.as_bytes(), id.call_id.as_bytes(), id.from_tag.as_bytes(), cseq.as_bytes()];
        for (&(field_at, field_len), value) in self.fields.iter().zip(values) {
            // Fields after the sent-by moved by the difference in address length.
            let field_at = if field_at > at { field_at - len + local.len() } else { field_at };
            if value.len() == field_len && field_at + field_len <= out.len() {
                out[field_at..field_at + field_len].copy_from_slice(value);
            }
        }
    }
}

/// Why a reply was not taken as an answer to the probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mismatch {
    /// Not a SIP response at all.
    Unparsable,
    /// Over [`MAX_MESSAGE`] bytes or [`MAX_HEADERS`] header lines: refused without a parse.
    TooLarge,
    /// Via branch differs or is missing.
    Branch,
    /// Call-ID differs or is missing.
    CallId,
    /// From tag differs or is missing.
    FromTag,
    /// CSeq number or method differs.
    CSeq,
}

/// What a reply says, once it matched the probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// 1xx: the probe goes on.
    Provisional,
    /// A final reply.
    Final {
        /// Its status code.
        code: u16,
        /// Its Retry-After in seconds, if any, as sent (saturated at `u64::MAX`); the caller caps
        /// it before any time arithmetic.
        retry_after: Option<u64>,
    },
}

/// Checks a reply against the probe it claims to answer.
pub fn check_reply(bytes: &[u8], id: &ProbeId) -> Result<Reply, Mismatch> {
    // rsip expects a complete message; refuse anything that is not text-looking up front.
    if bytes.len() < 12 || !bytes.starts_with(b"SIP/2.0 ") {
        return Err(Mismatch::Unparsable);
    }
    if bytes.len() > MAX_MESSAGE {
        return Err(Mismatch::TooLarge);
    }
    // A flood of forged replies must stay cheap: without our branch anywhere in the bytes, the
    // reply cannot match, so skip the full parse.
    if memchr::memmem::find(bytes, id.branch.as_bytes()).is_none() {
        return Err(Mismatch::Branch);
    }
    // Bound the parser's work by the header count too, not only by the byte count.
    let head_end = find(bytes, b"\r\n\r\n", 0).unwrap_or(bytes.len());
    if memchr::memchr_iter(b'\n', &bytes[..head_end]).count() > MAX_HEADERS {
        return Err(Mismatch::TooLarge);
    }
    let response = rsip::Response::try_from(bytes).map_err(|_| Mismatch::Unparsable)?;
    let via = response.via_header().map_err(|_| Mismatch::Branch)?;
    let branch_ok = via.typed().ok().and_then(|v| v.branch().map(|b| b.to_string() == id.branch)).unwrap_or(false);
    if !branch_ok {
        return Err(Mismatch::Branch);
    }
    if response.call_id_header().map_err(|_| Mismatch::CallId)?.value() != id.call_id {
        return Err(Mismatch::CallId);
    }
    let tag = response.from_header().ok().and_then(|f| f.tag().ok().flatten());
    if tag.map(|t| t.to_string()) != Some(id.from_tag.clone()) {
        return Err(Mismatch::FromTag);
    }
    let cseq = response.cseq_header().map_err(|_| Mismatch::CSeq)?;
    if cseq.seq().ok() != Some(id.cseq) || cseq.method().ok() != Some(method(id.method)) {
        return Err(Mismatch::CSeq);
    }
    let code = response.status_code().code();
    if code < 200 {
        return Ok(Reply::Provisional);
    }
    let retry_after = response.headers.iter().find_map(|h| match h {
        Header::RetryAfter(r) => r.value().split([';', ' ', '(']).next().and_then(|s| decimal(s.trim().as_bytes())),
        _ => None,
    });
    Ok(Reply::Final { code, retry_after })
}

/// The longest `oc-validity` taken, whatever the server sent (an hour); the prober also caps it
/// at `probe.max_retry_after_s`.
pub const MAX_OC_VALIDITY_MS: u64 = 3_600_000;
/// The `oc-validity` RFC 7339 §5.2 gives a reply that carries `oc` without one.
pub const DEFAULT_OC_VALIDITY_MS: u64 = 2_000;

/// The RFC 7339 overload control parameters of a reply's top Via, read and bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverloadSignal {
    /// `oc`: the percentage (0 to 100) by which the server asks senders to cut their load.
    pub percent: u8,
    /// `oc-validity` in milliseconds (the default when absent), at most [`MAX_OC_VALIDITY_MS`];
    /// 0 ends overload control at once.
    pub validity_ms: u64,
    /// `oc-seq` in microseconds (a timestamp with an optional fraction), saturated; orders the
    /// server's signals, so an older one arriving late is ignored.
    pub seq: Option<u64>,
}

/// The overload control signal in a SIP reply's topmost Via (RFC 7339 §5.2), if it has one that
/// asks for the `loss` algorithm (the only one RFC 7339 defines, and the default). Reads the
/// header lines only, bounded by [`MAX_MESSAGE`] and [`MAX_HEADERS`]; an `oc` that is not a
/// number from 0 to 100 is no signal.
pub fn overload(bytes: &[u8]) -> Option<OverloadSignal> {
    let bytes = &bytes[..bytes.len().min(MAX_MESSAGE)];
    let head_end = find(bytes, b"\r\n\r\n", 0).unwrap_or(bytes.len());
    let via = bytes[..head_end].split(|&b| b == b'\n').skip(1).take(MAX_HEADERS).find_map(|line| {
        let colon = line.iter().position(|&b| b == b':')?;
        let name = line[..colon].trim_ascii();
        (name.eq_ignore_ascii_case(b"via") || name.eq_ignore_ascii_case(b"v")).then(|| &line[colon + 1..])
    })?;
    // The top Via is the first value of the first Via line: up to its first comma outside quotes.
    let mut quoted = false;
    let end = via
        .iter()
        .position(|&b| {
            quoted ^= b == b'"';
            b == b',' && !quoted
        })
        .unwrap_or(via.len());
    let top = &via[..end];
    let (mut percent, mut validity_ms, mut seq, mut loss) = (None, DEFAULT_OC_VALIDITY_MS, None, true);
    for param in top.split(|&b| b == b';').skip(1) {
        let (name, value) = match param.iter().position(|&b| b == b'=') {
            Some(eq) => (param[..eq].trim_ascii(), param[eq + 1..].trim_ascii()),
            None => (param.trim_ascii(), &b""[..]),
        };
        let value = value.strip_prefix(b"\"").and_then(|v| v.strip_suffix(b"\"")).unwrap_or(value);
        if name.eq_ignore_ascii_case(b"oc") {
            percent = decimal(value).filter(|&p| p <= 100).map(|p| p as u8);
        } else if name.eq_ignore_ascii_case(b"oc-validity") {
            validity_ms = decimal(value)?.min(MAX_OC_VALIDITY_MS);
        } else if name.eq_ignore_ascii_case(b"oc-seq") {
            seq = oc_seq(value);
        } else if name.eq_ignore_ascii_case(b"oc-algo") {
            loss = value.split(|&b| b == b',').any(|a| a.trim_ascii().eq_ignore_ascii_case(b"loss"));
        }
    }
    let percent = percent.filter(|_| loss)?;
    Some(OverloadSignal { percent, validity_ms, seq })
}

/// A run of ASCII digits as a number (a Retry-After's delta-seconds, RFC 3261 §20.33; an `oc`
/// parameter), saturated at `u64::MAX` rather than refused; `None` if empty or not all digits.
fn decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(digits.iter().fold(0u64, |n, d| n.saturating_mul(10).saturating_add(u64::from(d - b'0'))))
}

/// An `oc-seq` (`1282321615.782`) in microseconds, saturated; fraction digits past six ignored.
fn oc_seq(value: &[u8]) -> Option<u64> {
    let (whole, fraction) = match value.iter().position(|&b| b == b'.') {
        Some(dot) => (&value[..dot], &value[dot + 1..]),
        None => (value, &b""[..]),
    };
    let whole = decimal(whole)?;
    let fraction = &fraction[..fraction.len().min(6)];
    let micros =
        if fraction.is_empty() { 0 } else { decimal(fraction)?.saturating_mul(10u64.pow(6 - fraction.len() as u32)) };
    Some(whole.saturating_mul(1_000_000).saturating_add(micros))
}

/// The first position of `needle` in `haystack` at or after `from`.
fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    memchr::memmem::find(haystack.get(from..)?, needle).map(|p| p + from)
}

/// What the bytes at the start of a TCP stream hold, for framing (RFC 3261 §18.3: headers up to
/// the blank line, then Content-Length bytes of body).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// A complete message of this many bytes.
    Complete(usize),
    /// Not complete yet; the header end was searched for up to `scanned`, so the next search,
    /// after more bytes arrive, starts there instead of at the beginning.
    Incomplete {
        /// Bytes already searched for the blank line.
        scanned: usize,
    },
    /// The message is over [`MAX_MESSAGE`] (headers, or headers plus the declared body).
    TooLarge,
    /// A Content-Length that is not a decimal number.
    Malformed,
}

/// Frames the first SIP message in `buf`; `scanned` is what an earlier call reported for the
/// same message (0 at first). Every length is bounded by [`MAX_MESSAGE`] before it is added.
pub fn frame(buf: &[u8], scanned: usize) -> Frame {
    // The blank line may straddle the old end: back up three bytes.
    let Some(blank) = find(buf, b"\r\n\r\n", scanned.saturating_sub(3)) else {
        return if buf.len() > MAX_MESSAGE { Frame::TooLarge } else { Frame::Incomplete { scanned: buf.len() } };
    };
    let head_end = blank + 4;
    if head_end > MAX_MESSAGE {
        return Frame::TooLarge;
    }
    let mut body = 0usize;
    for line in buf[..blank].split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
        let name = line[..colon].trim_ascii();
        if !(name.eq_ignore_ascii_case(b"content-length") || name == b"l") {
            continue;
        }
        let value = line[colon + 1..].trim_ascii();
        if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
            return Frame::Malformed;
        }
        // More digits than MAX_MESSAGE has can only be too large; never parse them into a word.
        if value.len() > 6 {
            return Frame::TooLarge;
        }
        body = value.iter().fold(0usize, |n, d| n * 10 + usize::from(d - b'0'));
        break;
    }
    match head_end.checked_add(body) {
        Some(total) if total <= MAX_MESSAGE => {
            if total <= buf.len() {
                Frame::Complete(total)
            } else {
                Frame::Incomplete { scanned: buf.len() }
            }
        }
        _ => Frame::TooLarge,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> ProbeId {
        ProbeId::new([1, 2, 3, 4, 5], 7, ProbeMethod::Options)
    }

    /// A reply as a SIP server builds it: the request's Via, From, To (plus tag), Call-ID, CSeq.
    fn reply_to(request: &[u8], status: &str, extra: &str) -> Vec<u8> {
        let text = std::str::from_utf8(request).unwrap();
        let mut out = format!("SIP/2.0 {status}\r\n");
        for line in text.split("\r\n").skip(1) {
            let lower = line.to_ascii_lowercase();
            if ["via:", "from:", "call-id:", "cseq:"].iter().any(|h| lower.starts_with(h)) {
                out.push_str(line);
                out.push_str("\r\n");
            }
            if lower.starts_with("to:") {
                out.push_str(&format!("{line};tag=server\r\n"));
            }
        }
        out.push_str(extra);
        out.push_str("Content-Length: 0\r\n\r\n");
        out.into_bytes()
    }

    fn req() -> Vec<u8> {
        request(&id(), "127.0.0.11:5060".parse().unwrap(), Transport::Udp, "127.0.0.1:40000".parse().unwrap())
    }

    #[test]
    fn request_parses_back_with_rsip() {
        let r = rsip::Request::try_from(req().as_slice()).unwrap();
        assert_eq!(r.method, rsip::Method::Options);
        assert_eq!(r.call_id_header().unwrap().value(), id().call_id);
        assert!(id().branch.starts_with("z9hG4bK") && id().branch.len() >= 7 + 16);
        let register = request(
            &ProbeId::new([1, 2, 3, 4, 5], 1, ProbeMethod::Register),
            "[::1]:5060".parse().unwrap(),
            Transport::Tcp,
            "[::1]:40000".parse().unwrap(),
        );
        let r = rsip::Request::try_from(register.as_slice()).unwrap();
        assert_eq!(r.method, rsip::Method::Register);
    }

    #[test]
    fn matching_replies_are_taken() {
        assert_eq!(
            check_reply(&reply_to(&req(), "200 OK", ""), &id()),
            Ok(Reply::Final { code: 200, retry_after: None })
        );
        assert_eq!(check_reply(&reply_to(&req(), "100 Trying", ""), &id()), Ok(Reply::Provisional));
        assert_eq!(
            check_reply(&reply_to(&req(), "503 Service Unavailable", "Retry-After: 30 (maintenance)\r\n"), &id()),
            Ok(Reply::Final { code: 503, retry_after: Some(30) })
        );
    }

    #[test]
    fn forged_replies_are_refused() {
        let good = reply_to(&req(), "200 OK", "");
        let text = String::from_utf8(good).unwrap();
        let forge = |from: &str, to: &str| text.replacen(from, to, 1).into_bytes();
        let mut other = id();
        other.cseq = 8;
        assert_eq!(check_reply(text.as_bytes(), &other), Err(Mismatch::CSeq));
        assert_eq!(check_reply(&forge(&id().branch, "z9hG4bKforged"), &id()), Err(Mismatch::Branch));
        assert_eq!(check_reply(&forge(&id().call_id, "forged@x"), &id()), Err(Mismatch::CallId));
        assert_eq!(check_reply(&forge(&id().from_tag, "forged"), &id()), Err(Mismatch::FromTag));
        assert_eq!(check_reply(&forge("7 OPTIONS", "7 REGISTER"), &id()), Err(Mismatch::CSeq));
        assert_eq!(check_reply(b"garbage", &id()), Err(Mismatch::Unparsable));
        assert_eq!(check_reply(&req(), &id()), Err(Mismatch::Unparsable), "a request is no reply");
    }

    #[test]
    fn templates_render_exactly_what_rsip_builds() {
        for (method, target, transport) in [
            (ProbeMethod::Options, "127.0.0.11:5060", Transport::Udp),
            (ProbeMethod::Register, "[2001:db8::1]:5080", Transport::Tcp),
            (ProbeMethod::Options, "192.0.2.1:9", Transport::Tls),
        ] {
            let target = target.parse().unwrap();
            let template = RequestTemplate::new(method, target, transport);
            let mut out = Vec::new();
            for (words, cseq, local) in [
                ([1, 2, 3, 4, 5], 100_000_000, if target.is_ipv4() { "127.0.0.1:40000" } else { "[::1]:1" }),
                (
                    [u64::MAX, 0, 7, 9, 1 << 40],
                    987_654_321,
                    if target.is_ipv4() { "10.1.2.3:7" } else { "[fe80::1:2:3:4]:65535" },
                ),
            ] {
                let id = ProbeId::new(words, cseq, method);
                let local = local.parse().unwrap();
                template.render(&id, local, &mut out);
                assert_eq!(
                    String::from_utf8_lossy(&out),
                    String::from_utf8_lossy(&request(&id, target, transport, local))
                );
            }
        }
    }

    #[test]
    fn tcp_framing() {
        assert_eq!(frame(b"SIP/2.0 200 OK\r\nContent-Length: 3\r\n\r\nabc", 0), Frame::Complete(40));
        assert_eq!(frame(b"SIP/2.0 200 OK\r\nContent-Length: 3\r\n\r\nab", 0), Frame::Incomplete { scanned: 39 });
        assert_eq!(frame(b"SIP/2.0 200 OK\r\nl: 0\r\n", 0), Frame::Incomplete { scanned: 22 });
        assert_eq!(frame(b"SIP/2.0 200 OK\r\nl: 0\r\n\r\n", 20), Frame::Complete(24), "the blank line may straddle");
        assert_eq!(frame(b"SIP/2.0 200 OK\r\n\r\n", 0), Frame::Complete(18), "no Content-Length: no body");
        assert_eq!(frame(b"SIP/2.0 200 OK\r\nContent-Length: x\r\n\r\n", 0), Frame::Malformed);
    }

    /// The lengths a hostile server can send: every one is bounded before it meets arithmetic.
    #[test]
    fn hostile_lengths_are_refused_not_wrapped() {
        // 2^64 - 56: added to the header length this used to wrap to a small number.
        let wrap = b"SIP/2.0 200 OK\r\nContent-Length: 18446744073709551560\r\n\r\n";
        assert_eq!(frame(wrap, 0), Frame::TooLarge);
        assert_eq!(frame(b"SIP/2.0 200 OK\r\nl: 65536\r\n\r\n", 0), Frame::TooLarge);
        assert_eq!(frame(b"SIP/2.0 200 OK\r\nl: 99999999999999999999999999\r\n\r\n", 0), Frame::TooLarge);
        let endless = [b"X-Pad: 0123456789\r\n".as_slice(); 4000].concat();
        assert_eq!(frame(&endless, 0), Frame::TooLarge, "headers alone past 64 KiB");
        let mut huge = reply_to(&req(), "200 OK", "");
        huge.splice(20..20, b"X-Pad: 1\r\n".repeat(300));
        assert_eq!(check_reply(&huge, &id()), Err(Mismatch::TooLarge), "more than 256 header lines");
        let big = [reply_to(&req(), "200 OK", "").as_slice(), &[b' '; MAX_MESSAGE]].concat();
        assert_eq!(check_reply(&big, &id()), Err(Mismatch::TooLarge));
    }

    #[test]
    fn overload_signals_are_read_from_the_top_via_and_bounded() {
        let with_via = |via: &str| format!("SIP/2.0 200 OK\r\nVia: {via}\r\nCall-ID: x\r\n\r\n").into_bytes();
        let sig = |percent, validity_ms, seq| Some(OverloadSignal { percent, validity_ms, seq });
        for (via, want) in [
            (
                "SIP/2.0/UDP h;branch=z9hG4bKx;oc=50;oc-validity=3000;oc-seq=1282321615.782",
                sig(50, 3000, Some(1_282_321_615_782_000)),
            ),
            ("SIP/2.0/UDP h;oc=20", sig(20, DEFAULT_OC_VALIDITY_MS, None)),
            ("SIP/2.0/UDP h;oc=20;oc-algo=\"loss,rate\"", sig(20, DEFAULT_OC_VALIDITY_MS, None)),
            ("SIP/2.0/UDP h; OC = 100 ;oc-validity=0", sig(100, 0, None)),
            ("SIP/2.0/UDP h;oc=30;oc-validity=99999999999999999999999", sig(30, MAX_OC_VALIDITY_MS, None)),
            (
                "SIP/2.0/UDP h;oc=30;oc-seq=99999999999999999999.1234567",
                sig(30, DEFAULT_OC_VALIDITY_MS, Some(u64::MAX)),
            ),
            ("SIP/2.0/UDP h;oc=101", None),
            ("SIP/2.0/UDP h;oc=-5", None),
            ("SIP/2.0/UDP h;oc", None),
            ("SIP/2.0/UDP h;oc=18446744073709551616", None),
            ("SIP/2.0/UDP h;oc=50;oc-algo=\"rate\"", None),
            ("SIP/2.0/UDP h;oc=50;oc-validity=soon", None),
            ("SIP/2.0/UDP h;branch=z9hG4bKx", None),
            ("SIP/2.0/UDP a;branch=z9hG4bKx, SIP/2.0/UDP b;oc=50", None),
        ] {
            assert_eq!(overload(&with_via(via)), want, "{via}");
        }
        let lower = b"SIP/2.0 200 OK\r\nv: SIP/2.0/UDP h;oc=10\r\nVia: SIP/2.0/UDP i;oc=90\r\n\r\n";
        assert_eq!(
            overload(lower),
            sig(10, DEFAULT_OC_VALIDITY_MS, None),
            "the compact form; the first Via is the top"
        );
        assert_eq!(overload(b"SIP/2.0 200 OK\r\n\r\nVia: SIP/2.0/UDP h;oc=10\r\n"), None, "the body is no header");
        assert_eq!(overload(&reply_to(&req(), "200 OK", "")), None, "our own Via offers oc without a value");
        assert!(check_reply(&reply_to(&req(), "200 OK", ""), &id()).is_ok(), "rsip takes our Via's oc parameters");
    }

    #[test]
    fn retry_after_saturates_instead_of_overflowing() {
        for (header, want) in [
            ("Retry-After: 18446744073709551615\r\n", Some(u64::MAX)),
            ("Retry-After: 18446744073709551616000\r\n", Some(u64::MAX)),
            ("Retry-After: 1000000000000\r\n", Some(1_000_000_000_000)),
            ("Retry-After: 5;duration=10\r\n", Some(5)),
            ("Retry-After: -5\r\n", None),
            ("Retry-After: soon\r\n", None),
        ] {
            let reply = reply_to(&req(), "503 Service Unavailable", header);
            assert_eq!(check_reply(&reply, &id()), Ok(Reply::Final { code: 503, retry_after: want }), "{header}");
        }
    }
}
