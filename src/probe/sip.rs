//! SIP probe requests and the checks a reply must pass, built and parsed with rsip. No I/O.
//!
//! A reply counts only if it matches the request exactly: the Via branch (`z9hG4bK` + 96 random
//! bits), Call-ID, From tag, CSeq number and method. The source address and port are checked by the
//! socket (a connected UDP socket only receives from its peer; a TCP stream has one peer).

use std::net::SocketAddr;
use std::time::Duration;

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

/// The probe request for `target` over `transport`, sent from `local`.
///
/// OPTIONS asks the server about itself (RFC 3261 §11). REGISTER is the paper's dummy
/// registration: a binding query (no Contact, so nothing is registered).
pub fn request(id: &ProbeId, target: SocketAddr, transport: Transport, local: SocketAddr) -> Vec<u8> {
    let (scheme, via_transport, uri_param) = match transport {
        Transport::Udp => ("sip", "UDP", ""),
        Transport::Tcp => ("sip", "TCP", ";transport=tcp"),
        Transport::Tls => ("sips", "TLS", ""),
    };
    let host = match target {
        SocketAddr::V4(a) => format!("{}:{}", a.ip(), a.port()),
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
    };
    let local_host = match local {
        SocketAddr::V4(a) => format!("{}:{}", a.ip(), a.port()),
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
    };
    let uri = format!("{scheme}:{host}{uri_param}");
    let aor = format!("<{scheme}:dnlb-probe@{host}>");
    let mut headers: Vec<Header> = vec![
        headers::Via::new(format!("SIP/2.0/{via_transport} {local_host};branch={};rport", id.branch)).into(),
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

/// One target's probe request, built once with rsip; each probe patches in its fresh identity.
/// Every identity field has a fixed width (hex digits, a nine-digit CSeq), so rendering is a copy
/// and four overwrites instead of a full rsip build per probe.
#[derive(Debug, Clone)]
pub struct RequestTemplate {
    bytes: Vec<u8>,
    /// Offsets of the branch, Call-ID, From tag and CSeq number in `bytes`, with their lengths.
    fields: [(usize, usize); 4],
}

impl RequestTemplate {
    /// Builds the template for `method` to `target` over `transport` from `local`.
    pub fn new(method: ProbeMethod, target: SocketAddr, transport: Transport, local: SocketAddr) -> RequestTemplate {
        let placeholder = ProbeId::new([u64::MAX; 5], *CSEQ_RANGE.end(), method);
        let bytes = request(&placeholder, target, transport, local);
        let find = |needle: &str| -> (usize, usize) {
            let n = needle.as_bytes();
            let at = bytes.windows(n.len()).position(|w| w == n).unwrap_or(0);
            (at, n.len())
        };
        let fields = [
            find(&placeholder.branch),
            find(&placeholder.call_id),
            find(&format!("tag={}", placeholder.from_tag)),
            find(&format!("{} ", placeholder.cseq)),
        ];
        // The tag and CSeq needles carry a prefix or suffix to make them unique; skip those.
        let fields = [fields[0], fields[1], (fields[2].0 + 4, fields[2].1 - 4), (fields[3].0, fields[3].1 - 1)];
        RequestTemplate { bytes, fields }
    }

    /// Writes the request for `id` into `out` (whose contents are replaced).
    pub fn render(&self, id: &ProbeId, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(&self.bytes);
        let cseq = id.cseq.clamp(*CSEQ_RANGE.start(), *CSEQ_RANGE.end()).to_string();
        let values = [id.branch.as_bytes(), id.call_id.as_bytes(), id.from_tag.as_bytes(), cseq.as_bytes()];
        for ((at, len), value) in self.fields.iter().zip(values) {
            if value.len() == *len {
                out[*at..*at + len].copy_from_slice(value);
            }
        }
    }
}

/// Why a reply was not taken as an answer to the probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mismatch {
    /// Not a SIP response at all.
    Unparsable,
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
        /// Its Retry-After, if any.
        retry_after: Option<Duration>,
    },
}

/// Checks a reply against the probe it claims to answer.
pub fn check_reply(bytes: &[u8], id: &ProbeId) -> Result<Reply, Mismatch> {
    // rsip expects a complete message; refuse anything that is not text-looking up front.
    if bytes.len() < 12 || !bytes.starts_with(b"SIP/2.0 ") {
        return Err(Mismatch::Unparsable);
    }
    // A flood of forged replies must stay cheap: without our branch anywhere in the bytes, the
    // reply cannot match, so skip the full parse.
    let branch = id.branch.as_bytes();
    if !bytes.windows(branch.len()).any(|w| w == branch) {
        return Err(Mismatch::Branch);
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
        Header::RetryAfter(r) => r.value().split([';', ' ', '(']).next().and_then(|s| s.trim().parse::<u64>().ok()),
        _ => None,
    });
    Ok(Reply::Final { code, retry_after: retry_after.map(Duration::from_secs) })
}

/// How long a complete SIP message at the start of `buf` is (for TCP framing): headers up to the
/// blank line plus Content-Length. `None` until the headers are complete.
pub fn message_len(buf: &[u8]) -> Option<usize> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let body = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            let name = name.trim();
            (name.eq_ignore_ascii_case("content-length") || name == "l").then(|| value.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    Some(end + body)
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
            Ok(Reply::Final { code: 503, retry_after: Some(Duration::from_secs(30)) })
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
        for (method, target, transport, local) in [
            (ProbeMethod::Options, "127.0.0.11:5060", Transport::Udp, "127.0.0.1:40000"),
            (ProbeMethod::Register, "[2001:db8::1]:5080", Transport::Tcp, "[::1]:1"),
        ] {
            let (target, local) = (target.parse().unwrap(), local.parse().unwrap());
            let template = RequestTemplate::new(method, target, transport, local);
            let mut out = Vec::new();
            for (words, cseq) in [([1, 2, 3, 4, 5], 100_000_000), ([u64::MAX, 0, 7, 9, 1 << 40], 987_654_321)] {
                let id = ProbeId::new(words, cseq, method);
                template.render(&id, &mut out);
                assert_eq!(
                    String::from_utf8_lossy(&out),
                    String::from_utf8_lossy(&request(&id, target, transport, local))
                );
            }
        }
    }

    #[test]
    fn tcp_framing() {
        assert_eq!(message_len(b"SIP/2.0 200 OK\r\nContent-Length: 3\r\n\r\nabc"), Some(40));
        assert_eq!(message_len(b"SIP/2.0 200 OK\r\nl: 0\r\n"), None);
    }
}
