//! SIP probe requests and the checks a reply must pass, written and read by our own bounded code.
//! No I/O.
//!
//! ```text
//!  config load ─► RequestTemplate::new(method, target, transport) ─► Err: a config problem
//!  each probe  ─► render(identity, local address) ─► request bytes ─► socket
//!  reply bytes ─► check_reply: status line ─► header fields (unfolded) ─► top Via branch,
//!                 Call-ID, From tag, CSeq number and method ─► Reply | Mismatch
//! ```
//!
//! Why not a SIP library: rsip 0.4, which this module used before, writes an IPv6 host without
//! its brackets (`sip:::1:5060`, not the RFC 3261 §19.1.1 / RFC 5118 `sip:[::1]:5060`), refuses
//! the URI `sip:[::1]:5060` outright, and fails to parse a Via sent-by or a From URI that holds
//! an IPv6 reference (`[::1]:40000`). Every probe to an IPv6 server then went out with a default
//! request URI (`OPTIONS 127.0.0.1 SIP/2.0`) and its replies were never matched. A probe needs
//! one fixed request and five fields of a reply, so both are done here, at the depth the probe
//! needs: the request from a template with holes for its identity, and a reply's header fields
//! read by a small parser that is bounded by [`MAX_MESSAGE`] and [`MAX_HEADERS`], unfolds
//! continuation lines, knows the compact forms and reads IPv6 references, quoted strings and
//! parameters as RFC 3261 §25 writes them.
//!
//! A reply counts only if it matches the request exactly: the Via branch (`z9hG4bK` + 96 random
//! bits), Call-ID, From tag, CSeq number and method. The source address and port are checked by
//! the socket, as addresses, not text: a connected UDP socket only receives from its peer (the
//! kernel compares the binary address), and a TCP stream has one peer.

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

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

/// Why no probe request can be built for a server: the configuration's fault. Validation turns
/// each into a problem naming the server's `address` (or `port`), so such a file never loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// An IPv6 link-local address (fe80::/10): it names a host only together with a zone (the
    /// interface), which neither a SIP URI sent to it nor an AAAA or SRV answer given to a phone
    /// can carry.
    #[error(
        "{0} is an IPv6 link-local address: it reaches a host only with a zone (`{0}%eth0`), and an AAAA or SRV answer cannot carry a zone to a phone; give the server a global or unique-local (fd00::/8) address"
    )]
    LinkLocal(Ipv6Addr),
    /// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`): the server is an IPv4 server, to be
    /// probed over IPv4 and answered in A records.
    #[error("{mapped} is an IPv4-mapped IPv6 address: write the IPv4 form \"{ipv4}\"")]
    Ipv4Mapped {
        /// The address as configured.
        mapped: Ipv6Addr,
        /// The IPv4 address it maps.
        ipv4: Ipv4Addr,
    },
    /// The unspecified address, a multicast or a broadcast address: no one server answers there.
    #[error("{0} cannot be a SIP server: use a unicast address")]
    NotUnicast(IpAddr),
    /// Port 0: nothing listens there.
    #[error("port 0 cannot be probed: use the port the server listens on")]
    PortZero,
}

/// Whether a probe can be addressed to `target` (see [`RequestError`]).
pub fn check_target(target: SocketAddr) -> Result<(), RequestError> {
    match target.ip() {
        IpAddr::V6(v6) if v6.is_unicast_link_local() => return Err(RequestError::LinkLocal(v6)),
        IpAddr::V6(v6) => {
            if let Some(ipv4) = v6.to_ipv4_mapped() {
                return Err(RequestError::Ipv4Mapped { mapped: v6, ipv4 });
            }
        }
        IpAddr::V4(v4) if v4.is_broadcast() => return Err(RequestError::NotUnicast(target.ip())),
        IpAddr::V4(_) => {}
    }
    if target.ip().is_unspecified() || target.ip().is_multicast() {
        return Err(RequestError::NotUnicast(target.ip()));
    }
    if target.port() == 0 {
        return Err(RequestError::PortZero);
    }
    Ok(())
}

/// The method's name (RFC 3261 §7.1: case-sensitive, upper case).
fn method_name(m: ProbeMethod) -> &'static str {
    match m {
        ProbeMethod::Options => "OPTIONS",
        ProbeMethod::Register => "REGISTER",
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

/// The probe request for `target` over `transport`, sent from `local`: the same bytes a
/// [`RequestTemplate`] renders.
pub fn request(
    id: &ProbeId,
    target: SocketAddr,
    transport: Transport,
    local: SocketAddr,
) -> Result<Vec<u8>, RequestError> {
    let mut out = Vec::new();
    RequestTemplate::new(id.method, target, transport)?.render(id, local, &mut out);
    Ok(out)
}

/// The first and last CSeq numbers probes use (the core counts up through them and wraps).
pub const CSEQ_RANGE: std::ops::RangeInclusive<u32> = 100_000_000..=999_999_999;

/// The largest SIP message a probe accepts, over UDP or TCP (headers and body together). A reply
/// to OPTIONS or REGISTER is a few hundred bytes; anything past this is refused unread.
pub const MAX_MESSAGE: usize = 64 * 1024;
/// The most header lines a reply may carry before it is refused without a full parse.
pub const MAX_HEADERS: usize = 256;

/// Appends a decimal number.
fn put_decimal(out: &mut Vec<u8>, mut n: u32) {
    let mut digits = [0u8; 10];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// Appends an IPv6 address in the RFC 5952 text form (lower-case hex, no leading zeros, the
/// longest run of two or more zero groups, the first of equals, as `::`), which is what the
/// `IPv6address` rule of RFC 3261 §25.1 reads. Written by hand so a request never depends on a
/// formatter that could fail: an IPv4-mapped address comes out in hex (`::ffff:c000:201`), also
/// valid, though targets never are one ([`check_target`]).
fn put_ipv6(out: &mut Vec<u8>, ip: Ipv6Addr) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let groups = ip.segments();
    // The longest run of zero groups (at least two), as (start, length).
    let (mut best, mut run) = ((0usize, 0usize), (0usize, 0usize));
    for (i, &g) in groups.iter().enumerate() {
        if g == 0 {
            run = if run.1 == 0 { (i, 1) } else { (run.0, run.1 + 1) };
            if run.1 > best.1 {
                best = run;
            }
        } else {
            run = (0, 0);
        }
    }
    let skip = if best.1 >= 2 { best.0..best.0 + best.1 } else { 8..8 };
    let mut i = 0;
    while i < groups.len() {
        if i == skip.start {
            out.extend_from_slice(b"::");
            i = skip.end;
            continue;
        }
        if i > 0 && i != skip.end {
            out.push(b':');
        }
        let g = groups[i];
        let mut started = false;
        for shift in [12u16, 8, 4, 0] {
            let digit = usize::from((g >> shift) & 0xf);
            if digit != 0 || started || shift == 0 {
                out.push(HEX[digit]);
                started = true;
            }
        }
        i += 1;
    }
}

/// Appends `ip:port`, or `[ip]:port` for IPv6 (RFC 3261 §25.1 `hostport` with an
/// `IPv6reference`, RFC 5118 §4.1), as a request URI, a Via sent-by and a From/To URI write it.
fn put_host_port(out: &mut Vec<u8>, addr: SocketAddr) {
    match addr {
        SocketAddr::V4(a) => {
            let [w, x, y, z] = a.ip().octets();
            for (i, octet) in [w, x, y, z].into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                put_decimal(out, u32::from(octet));
            }
        }
        SocketAddr::V6(a) => {
            out.push(b'[');
            put_ipv6(out, *a.ip());
            out.push(b']');
        }
    }
    out.push(b':');
    put_decimal(out, u32::from(addr.port()));
}

/// One target's probe request, built once when the configuration loads: the request's constant
/// text with holes where each probe writes its local address (every probe leaves from a fresh
/// socket) and its fresh identity. Rendering is six copies and five short writes, and takes
/// identity fields of any length.
///
/// ```text
///  OPTIONS sip:[2001:db8::10]:5060 SIP/2.0
///  Via: SIP/2.0/UDP ①;branch=②;rport;oc;oc-algo="loss"
///  Max-Forwards: 70
///  From: <sip:dnlb-probe@[2001:db8::10]:5060>;tag=③
///  To: <sip:dnlb-probe@[2001:db8::10]:5060>
///  Call-ID: ④
///  CSeq: ⑤ OPTIONS
///  Accept: application/sdp                  (REGISTER: Expires: 0, and no Contact)
///  User-Agent: dnlb/VERSION
///  Content-Length: 0
/// ```
#[derive(Debug, Clone)]
pub struct RequestTemplate {
    /// The request without its local address and identity.
    text: Vec<u8>,
    /// Where in `text` the Via sent-by, the branch, the From tag, the Call-ID and the CSeq
    /// number go, in that order (ascending offsets).
    holes: [usize; 5],
}

impl RequestTemplate {
    /// The template for `method` to `target` over `transport`: OPTIONS asks the server about
    /// itself (RFC 3261 §11); REGISTER is the paper's dummy registration, a binding query (no
    /// Contact, so nothing is registered). `sips:` URIs for TLS, `;transport=tcp` for TCP.
    pub fn new(method: ProbeMethod, target: SocketAddr, transport: Transport) -> Result<RequestTemplate, RequestError> {
        check_target(target)?;
        let (scheme, uri_param): (&[u8], &[u8]) = match transport {
            Transport::Udp => (b"sip", b""),
            Transport::Tcp => (b"sip", b";transport=tcp"),
            Transport::Tls => (b"sips", b""),
        };
        let name = method_name(method).as_bytes();
        let mut t = Vec::with_capacity(512);
        let mut holes = [0usize; 5];
        t.extend_from_slice(name);
        t.push(b' ');
        t.extend_from_slice(scheme);
        t.push(b':');
        put_host_port(&mut t, target);
        t.extend_from_slice(uri_param);
        t.extend_from_slice(b" SIP/2.0\r\nVia: SIP/2.0/");
        t.extend_from_slice(via_transport(transport).as_bytes());
        t.push(b' ');
        holes[0] = t.len();
        t.extend_from_slice(b";branch=");
        holes[1] = t.len();
        // `oc` and `oc-algo` say that dnlb takes RFC 7339 overload control: a server may then
        // put its `oc` reduction in its replies' Via.
        t.extend_from_slice(b";rport;oc;oc-algo=\"loss\"\r\nMax-Forwards: 70\r\n");
        let aor = |t: &mut Vec<u8>| {
            t.push(b'<');
            t.extend_from_slice(scheme);
            t.extend_from_slice(b":dnlb-probe@");
            put_host_port(t, target);
            t.push(b'>');
        };
        t.extend_from_slice(b"From: ");
        aor(&mut t);
        t.extend_from_slice(b";tag=");
        holes[2] = t.len();
        t.extend_from_slice(b"\r\nTo: ");
        aor(&mut t);
        t.extend_from_slice(b"\r\nCall-ID: ");
        holes[3] = t.len();
        t.extend_from_slice(b"\r\nCSeq: ");
        holes[4] = t.len();
        t.push(b' ');
        t.extend_from_slice(name);
        t.extend_from_slice(match method {
            ProbeMethod::Register => b"\r\nExpires: 0\r\n".as_slice(),
            ProbeMethod::Options => b"\r\nAccept: application/sdp\r\n".as_slice(),
        });
        t.extend_from_slice(concat!("User-Agent: dnlb/", env!("CARGO_PKG_VERSION"), "\r\n").as_bytes());
        t.extend_from_slice(b"Content-Length: 0\r\n\r\n");
        Ok(RequestTemplate { text: t, holes })
    }

    /// Writes the request for `id`, sent from `local`, into `out` (whose contents are replaced).
    pub fn render(&self, id: &ProbeId, local: SocketAddr, out: &mut Vec<u8>) {
        let t = &self.text;
        let [sent_by, branch, tag, call_id, cseq] = self.holes;
        out.clear();
        out.extend_from_slice(&t[..sent_by]);
        put_host_port(out, local);
        out.extend_from_slice(&t[sent_by..branch]);
        out.extend_from_slice(id.branch.as_bytes());
        out.extend_from_slice(&t[branch..tag]);
        out.extend_from_slice(id.from_tag.as_bytes());
        out.extend_from_slice(&t[tag..call_id]);
        out.extend_from_slice(id.call_id.as_bytes());
        out.extend_from_slice(&t[call_id..cseq]);
        put_decimal(out, id.cseq);
        out.extend_from_slice(&t[cseq..]);
    }
}

/// Why a reply was not taken as an answer to the probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mismatch {
    /// Not a SIP response at all: no status line, no blank line after the headers, a header line
    /// without a name.
    Unparsable,
    /// Over [`MAX_MESSAGE`] bytes or [`MAX_HEADERS`] header lines: refused without a parse.
    TooLarge,
    /// The top Via's branch differs or is missing, or the top Via is malformed.
    Branch,
    /// Call-ID differs or is missing.
    CallId,
    /// From tag differs or is missing, or the From header is malformed.
    FromTag,
    /// CSeq number or method differs, or the CSeq header is malformed.
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
    if bytes.len() < 12 || !bytes.starts_with(b"SIP/2.0 ") {
        return Err(Mismatch::Unparsable);
    }
    if bytes.len() > MAX_MESSAGE {
        return Err(Mismatch::TooLarge);
    }
    // A flood of forged replies must stay cheap: without our branch anywhere in the bytes, the
    // reply cannot match, so skip the parse.
    if memchr::memmem::find(bytes, id.branch.as_bytes()).is_none() {
        return Err(Mismatch::Branch);
    }
    // The header block, with the CRLF that ends its last line (RFC 3261 §7: the blank line is
    // required, also over UDP).
    let head = &bytes[..find(bytes, b"\r\n\r\n", 0).ok_or(Mismatch::Unparsable)? + 2];
    if memchr::memchr_iter(b'\n', head).count() > MAX_HEADERS {
        return Err(Mismatch::TooLarge);
    }
    let line_end = find(head, b"\r\n", 0).ok_or(Mismatch::Unparsable)?;
    let code = status_code(&head[..line_end]).ok_or(Mismatch::Unparsable)?;
    // The first of each header the match needs; a later duplicate is ignored, as the top Via is
    // the first value of the first Via.
    let (mut via, mut call_id, mut from, mut cseq, mut retry_after) = (None, None, None, None, None);
    for header in (Headers { rest: &head[line_end + 2..] }) {
        let (name, value) = header?;
        let slot = if is_header(name, b"via", b"v") {
            &mut via
        } else if is_header(name, b"call-id", b"i") {
            &mut call_id
        } else if is_header(name, b"from", b"f") {
            &mut from
        } else if is_header(name, b"cseq", b"") {
            &mut cseq
        } else if is_header(name, b"retry-after", b"") {
            &mut retry_after
        } else {
            continue;
        };
        slot.get_or_insert(value);
    }
    let branch = via.as_deref().and_then(top_via_branch);
    if branch != Some(id.branch.as_bytes()) {
        return Err(Mismatch::Branch);
    }
    if call_id.as_deref() != Some(id.call_id.as_bytes()) {
        return Err(Mismatch::CallId);
    }
    if from.as_deref().and_then(from_tag) != Some(id.from_tag.as_bytes()) {
        return Err(Mismatch::FromTag);
    }
    if cseq.as_deref().and_then(parse_cseq) != Some((id.cseq, method_name(id.method).as_bytes())) {
        return Err(Mismatch::CSeq);
    }
    if code < 200 {
        return Ok(Reply::Provisional);
    }
    // delta-seconds, then an optional comment and parameters (RFC 3261 §20.33).
    let retry_after = retry_after.as_deref().and_then(|v| {
        let end = v.iter().position(|&b| matches!(b, b';' | b'(' | b' ' | b'\t')).unwrap_or(v.len());
        decimal(&v[..end])
    });
    Ok(Reply::Final { code, retry_after })
}

/// The code of a status line `SIP/2.0 SP 3DIGIT SP Reason-Phrase` (RFC 3261 §7.2), 100 to 699.
fn status_code(line: &[u8]) -> Option<u16> {
    let rest = line.strip_prefix(b"SIP/2.0 ")?;
    let (digits, after) = rest.split_at_checked(3)?;
    if !digits.iter().all(u8::is_ascii_digit) || !(after.is_empty() || after[0] == b' ') {
        return None;
    }
    let code = digits.iter().fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    (100..=699).contains(&code).then_some(code)
}

/// Whether a header name is `long` or its compact form `short` (RFC 3261 §7.3.3), in any case.
fn is_header(name: &[u8], long: &[u8], short: &[u8]) -> bool {
    name.eq_ignore_ascii_case(long) || (!short.is_empty() && name.eq_ignore_ascii_case(short))
}

/// The header fields of a header block (each line ending in CRLF), as (name, value) with the
/// value trimmed; continuation lines (starting with a space or tab, RFC 3261 §7.3.1) are joined
/// to their field with one space. A line that is neither a field nor a continuation makes the
/// message unparsable.
struct Headers<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Headers<'a> {
    type Item = Result<(&'a [u8], Cow<'a, [u8]>), Mismatch>;

    fn next(&mut self) -> Option<Self::Item> {
        let line = self.take_line()?;
        if line.is_empty() {
            self.rest = &[];
            return None;
        }
        let colon = line.iter().position(|&b| b == b':');
        let name = colon.map(|c| line[..c].trim_ascii_end());
        let Some((colon, name)) = colon.zip(name).filter(|(_, n)| !n.is_empty() && n.iter().all(|&b| is_token(b)))
        else {
            self.rest = &[];
            return Some(Err(Mismatch::Unparsable));
        };
        let mut value = Cow::Borrowed(line[colon + 1..].trim_ascii());
        while self.rest.first().is_some_and(|&b| b == b' ' || b == b'\t') {
            let Some(more) = self.take_line() else { break };
            let more = more.trim_ascii();
            let joined = value.to_mut();
            if !joined.is_empty() && !more.is_empty() {
                joined.push(b' ');
            }
            joined.extend_from_slice(more);
        }
        Some(Ok((name, value)))
    }
}

impl<'a> Headers<'a> {
    /// The next physical line, without its CRLF.
    fn take_line(&mut self) -> Option<&'a [u8]> {
        if self.rest.is_empty() {
            return None;
        }
        let end = find(self.rest, b"\r\n", 0).unwrap_or(self.rest.len());
        let line = &self.rest[..end];
        // The last line may lack its CRLF: then nothing follows it.
        self.rest = self.rest.get(end + 2..).unwrap_or(&[]);
        Some(line)
    }
}

/// A `token` character (RFC 3261 §25.1).
fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b)
}

/// The first `sep` in `value` outside quoted strings (RFC 3261 §25.1 `quoted-string`, with its
/// backslash escapes), and whether `value` ends inside a quoted string left open.
fn find_unquoted(value: &[u8], sep: u8) -> (Option<usize>, bool) {
    let (mut quoted, mut escaped) = (false, false);
    for (i, &b) in value.iter().enumerate() {
        if escaped {
            escaped = false;
        } else if quoted && b == b'\\' {
            escaped = true;
        } else if b == b'"' {
            quoted = !quoted;
        } else if b == sep && !quoted {
            return (Some(i), false);
        }
    }
    (None, quoted)
}

/// The parts of `value` between the separators `sep` that lie outside quoted strings.
fn split_unquoted(value: &[u8], sep: u8) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(value);
    std::iter::from_fn(move || {
        let v = rest?;
        match find_unquoted(v, sep).0 {
            Some(at) => {
                rest = Some(&v[at + 1..]);
                Some(&v[..at])
            }
            None => {
                rest = None;
                Some(v)
            }
        }
    })
}

/// The value of the parameter `name` (case-insensitive) among `;`-separated `params`, trimmed
/// (`None`: absent; a parameter without a value has an empty one).
fn param<'a>(mut params: impl Iterator<Item = &'a [u8]>, name: &[u8]) -> Option<&'a [u8]> {
    params.find_map(|p| {
        let (n, v) = match p.iter().position(|&b| b == b'=') {
            Some(eq) => (&p[..eq], &p[eq + 1..]),
            None => (p, &b""[..]),
        };
        n.trim_ascii().eq_ignore_ascii_case(name).then(|| v.trim_ascii())
    })
}

/// The branch of the top Via of a Via header's value (its first comma-separated via-parm):
/// `SIP / 2.0 / transport LWS sent-by *( ; via-params )` (RFC 3261 §20.42), with an IPv6
/// sent-by in brackets (RFC 5118 §4.2). `None` when the via-parm does not read so or has no
/// branch.
fn top_via_branch(via: &[u8]) -> Option<&[u8]> {
    let top = split_unquoted(via, b',').next()?;
    let mut parts = split_unquoted(top, b';');
    let (protocol, sent_by) = sent_protocol(parts.next()?)?;
    if !protocol || !sent_by_ok(sent_by) {
        return None;
    }
    param(parts, b"branch").filter(|b| !b.is_empty())
}

/// Splits `SIP/2.0/UDP host:port` into whether the sent-protocol reads `SIP/2.0/token` (LWS
/// allowed around the slashes) and the sent-by after it.
fn sent_protocol(part: &[u8]) -> Option<(bool, &[u8])> {
    let mut fields = part.splitn(3, |&b| b == b'/');
    let (name, version, rest) = (fields.next()?.trim_ascii(), fields.next()?.trim_ascii(), fields.next()?);
    let rest = rest.trim_ascii_start();
    let transport_end = rest.iter().position(|&b| b == b' ' || b == b'\t')?;
    let (transport, sent_by) = (&rest[..transport_end], rest[transport_end..].trim_ascii());
    let ok = name.eq_ignore_ascii_case(b"SIP")
        && version == b"2.0"
        && !transport.is_empty()
        && transport.iter().all(|&b| is_token(b));
    Some((ok, sent_by))
}

/// Whether `host [ : port ]` is a sent-by: an IPv6 reference in brackets that parses as an IPv6
/// address, or a host name or IPv4 address; then a port of one to five digits, or none.
fn sent_by_ok(sent_by: &[u8]) -> bool {
    let port = if let Some(inner) = sent_by.strip_prefix(b"[") {
        let Some(close) = inner.iter().position(|&b| b == b']') else { return false };
        let ip = std::str::from_utf8(&inner[..close]).ok().and_then(|s| s.parse::<Ipv6Addr>().ok());
        if ip.is_none() {
            return false;
        }
        &inner[close + 1..]
    } else {
        let colon = sent_by.iter().position(|&b| b == b':').unwrap_or(sent_by.len());
        let host = &sent_by[..colon];
        if host.is_empty() || !host.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.') {
            return false;
        }
        &sent_by[colon..]
    };
    match port.strip_prefix(b":") {
        None => port.is_empty(),
        Some(digits) => (1..=5).contains(&digits.len()) && digits.iter().all(u8::is_ascii_digit),
    }
}

/// The `tag` of a From header's value: `[display-name] <URI> *( ; params )` or `URI *( ; params )`
/// (RFC 3261 §20.20): the parameters follow the `>` of a name-addr (a `;tag=` inside the angle
/// brackets belongs to the URI), or the first `;` of a bare addr-spec. `None` when there is no
/// tag, or the value does not read so.
fn from_tag(from: &[u8]) -> Option<&[u8]> {
    // The first `<` outside the display name's quotes opens the URI.
    let (open, quoted) = find_unquoted(from, b'<');
    let params = match open {
        Some(open) => {
            let close = open + from[open..].iter().position(|&b| b == b'>')?;
            let after = from[close + 1..].trim_ascii_start();
            if !after.is_empty() && after[0] != b';' {
                return None;
            }
            after
        }
        None if quoted => return None,
        None => &from[from.iter().position(|&b| b == b';')?..],
    };
    // `params` starts with its first `;`: skip what lies before it (nothing).
    param(split_unquoted(params, b';').skip(1), b"tag").filter(|t| !t.is_empty())
}

/// A CSeq value `1*DIGIT LWS Method` (RFC 3261 §20.16): the number (at most ten digits, within
/// 32 bits) and the method.
fn parse_cseq(value: &[u8]) -> Option<(u32, &[u8])> {
    let split = value.iter().position(|&b| b == b' ' || b == b'\t')?;
    let (digits, method) = (&value[..split], value[split..].trim_ascii());
    if digits.len() > 10 || method.is_empty() || !method.iter().all(|&b| is_token(b)) {
        return None;
    }
    let number = u32::try_from(decimal(digits)?).ok()?;
    Some((number, method))
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
#[path = "sip_tests.rs"]
mod tests;
