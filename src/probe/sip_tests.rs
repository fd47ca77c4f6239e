//! The request writer and the reply parser, for IPv4 and IPv6 servers, on every transport.

use super::*;
use proptest::prelude::*;

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

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn req() -> Vec<u8> {
    request(&id(), addr("127.0.0.11:5060"), Transport::Udp, addr("127.0.0.1:40000")).unwrap()
}

fn req6() -> Vec<u8> {
    request(&id(), addr("[2001:db8::10]:5060"), Transport::Udp, addr("[2001:db8::1]:40000")).unwrap()
}

/// The IPv4 request is byte for byte what rsip wrote before (the fuzz seeds and captures stay
/// valid), and the IPv6 one differs from it only where RFC 5118 says: bracketed references.
#[test]
fn requests_read_as_rfc_3261_and_5118_write_them() {
    let v4 = "OPTIONS sip:127.0.0.11:5060 SIP/2.0\r\n\
              Via: SIP/2.0/UDP 127.0.0.1:40000;branch=z9hG4bK000000000000000100000002;rport;oc;oc-algo=\"loss\"\r\n\
              Max-Forwards: 70\r\n\
              From: <sip:dnlb-probe@127.0.0.11:5060>;tag=0000000000000005\r\n\
              To: <sip:dnlb-probe@127.0.0.11:5060>\r\n\
              Call-ID: 000000000000000300000004@dnlb\r\n\
              CSeq: 7 OPTIONS\r\n\
              Accept: application/sdp\r\n";
    let tail = concat!("User-Agent: dnlb/", env!("CARGO_PKG_VERSION"), "\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(String::from_utf8(req()).unwrap(), format!("{v4}{tail}"));
    let v6 = "OPTIONS sip:[2001:db8::10]:5060 SIP/2.0\r\n\
              Via: SIP/2.0/UDP [2001:db8::1]:40000;branch=z9hG4bK000000000000000100000002;rport;oc;oc-algo=\"loss\"\r\n\
              Max-Forwards: 70\r\n\
              From: <sip:dnlb-probe@[2001:db8::10]:5060>;tag=0000000000000005\r\n\
              To: <sip:dnlb-probe@[2001:db8::10]:5060>\r\n\
              Call-ID: 000000000000000300000004@dnlb\r\n\
              CSeq: 7 OPTIONS\r\n\
              Accept: application/sdp\r\n";
    assert_eq!(String::from_utf8(req6()).unwrap(), format!("{v6}{tail}"));
    let register = ProbeId::new([1, 2, 3, 4, 5], 100_000_001, ProbeMethod::Register);
    let tcp = request(&register, addr("[::1]:5080"), Transport::Tcp, addr("[::1]:40000")).unwrap();
    let tcp = String::from_utf8(tcp).unwrap();
    assert!(tcp.starts_with("REGISTER sip:[::1]:5080;transport=tcp SIP/2.0\r\nVia: SIP/2.0/TCP [::1]:40000;"), "{tcp}");
    assert!(tcp.contains("\r\nCSeq: 100000001 REGISTER\r\nExpires: 0\r\n") && !tcp.contains("Contact"), "{tcp}");
    let tls = request(&id(), addr("[2001:db8::10]:5061"), Transport::Tls, addr("[2001:db8::1]:1")).unwrap();
    let tls = String::from_utf8(tls).unwrap();
    assert!(tls.starts_with("OPTIONS sips:[2001:db8::10]:5061 SIP/2.0\r\nVia: SIP/2.0/TLS [2001:db8::1]:1;"), "{tls}");
    assert!(tls.contains("\r\nFrom: <sips:dnlb-probe@[2001:db8::10]:5061>;tag="), "{tls}");
}

/// rsip, the parser the prober used before, reads the IPv4 requests as we mean them.
#[test]
fn rsip_reads_the_ipv4_requests() {
    use rsip::prelude::HeadersExt;
    for (method, transport) in [(ProbeMethod::Options, Transport::Udp), (ProbeMethod::Register, Transport::Tcp)] {
        let id = ProbeId::new([1, 2, 3, 4, 5], 123_456_789, method);
        let bytes = request(&id, addr("192.0.2.7:5070"), transport, addr("10.0.0.1:4000")).unwrap();
        let r = rsip::Request::try_from(bytes.as_slice()).unwrap();
        assert_eq!(r.method.to_string(), method_name(method));
        assert_eq!(r.uri.host_with_port.to_string(), "192.0.2.7:5070");
        assert_eq!(rsip::prelude::UntypedHeader::value(r.call_id_header().unwrap()), id.call_id);
    }
}

#[test]
fn targets_that_cannot_be_probed_are_refused_with_why() {
    let refused = |a: &str| RequestTemplate::new(ProbeMethod::Options, addr(a), Transport::Udp).unwrap_err();
    let e = refused("[fe80::1]:5060");
    assert_eq!(e, RequestError::LinkLocal("fe80::1".parse().unwrap()));
    assert!(e.to_string().contains("cannot carry a zone to a phone"), "{e}");
    let e = refused("[febf::1]:5060");
    assert!(matches!(e, RequestError::LinkLocal(_)), "all of fe80::/10");
    let e = refused("[::ffff:192.0.2.10]:5060");
    assert_eq!(e.to_string(), "::ffff:192.0.2.10 is an IPv4-mapped IPv6 address: write the IPv4 form \"192.0.2.10\"");
    assert_eq!(refused("[::]:5060"), RequestError::NotUnicast("::".parse().unwrap()));
    assert_eq!(refused("[ff02::1]:5060"), RequestError::NotUnicast("ff02::1".parse().unwrap()));
    assert_eq!(refused("0.0.0.0:5060"), RequestError::NotUnicast("0.0.0.0".parse().unwrap()));
    assert_eq!(refused("255.255.255.255:5060"), RequestError::NotUnicast("255.255.255.255".parse().unwrap()));
    assert_eq!(refused("[2001:db8::1]:0"), RequestError::PortZero);
    for ok in ["[::1]:5060", "[fd00:14::1]:5060", "[2001:db8::10]:1", "[fec0::1]:5060", "127.0.0.1:5060"] {
        assert!(RequestTemplate::new(ProbeMethod::Options, addr(ok), Transport::Tls).is_ok(), "{ok}");
    }
}

#[test]
fn matching_replies_are_taken() {
    for req in [req(), req6()] {
        assert_eq!(
            check_reply(&reply_to(&req, "200 OK", ""), &id()),
            Ok(Reply::Final { code: 200, retry_after: None })
        );
        assert_eq!(check_reply(&reply_to(&req, "100 Trying", ""), &id()), Ok(Reply::Provisional));
        assert_eq!(
            check_reply(&reply_to(&req, "503 Service Unavailable", "Retry-After: 30 (maintenance)\r\n"), &id()),
            Ok(Reply::Final { code: 503, retry_after: Some(30) })
        );
    }
}

/// What kamailio 5.x sends back to an IPv6 probe: `rport` filled in, `received` with the
/// bare address (RFC 5118 §4.4 without brackets), a To tag, its own headers.
#[test]
fn a_kamailio_reply_over_ipv6_is_taken() {
    let reply = "SIP/2.0 200 OK\r\n\
        Via: SIP/2.0/UDP [2001:db8::1]:40000;branch=z9hG4bK000000000000000100000002;rport=40000;oc;oc-algo=\"loss\";received=2001:db8::1\r\n\
        From: <sip:dnlb-probe@[2001:db8::10]:5060>;tag=0000000000000005\r\n\
        To: <sip:dnlb-probe@[2001:db8::10]:5060>;tag=b27e1a1d33761e85846fc98f5f3a7e58.ad2a\r\n\
        Call-ID: 000000000000000300000004@dnlb\r\n\
        CSeq: 7 OPTIONS\r\n\
        Server: kamailio (5.6.3 (x86_64/linux))\r\n\
        Content-Length: 0\r\n\r\n";
    assert_eq!(check_reply(reply.as_bytes(), &id()), Ok(Reply::Final { code: 200, retry_after: None }));
}

#[test]
fn forged_replies_are_refused() {
    for req in [req(), req6()] {
        let good = reply_to(&req, "200 OK", "");
        let text = String::from_utf8(good).unwrap();
        let forge = |from: &str, to: &str| text.replacen(from, to, 1).into_bytes();
        let mut other = id();
        other.cseq = 8;
        assert_eq!(check_reply(text.as_bytes(), &other), Err(Mismatch::CSeq));
        assert_eq!(check_reply(&forge(&id().branch, "z9hG4bKforged"), &id()), Err(Mismatch::Branch));
        assert_eq!(check_reply(&forge(&id().call_id, "forged@x"), &id()), Err(Mismatch::CallId));
        assert_eq!(check_reply(&forge(&id().from_tag, "forged"), &id()), Err(Mismatch::FromTag));
        assert_eq!(check_reply(&forge("7 OPTIONS", "7 REGISTER"), &id()), Err(Mismatch::CSeq));
        assert_eq!(
            check_reply(&forge("7 OPTIONS", "7 options"), &id()),
            Err(Mismatch::CSeq),
            "methods are case-sensitive"
        );
        assert_eq!(
            check_reply(&forge("7 OPTIONS", "07 OPTIONS"), &id()),
            Ok(Reply::Final { code: 200, retry_after: None })
        );
        assert_eq!(check_reply(&forge("7 OPTIONS", "4294967303 OPTIONS"), &id()), Err(Mismatch::CSeq), "7 + 2^32");
        assert_eq!(check_reply(b"garbage", &id()), Err(Mismatch::Unparsable));
        assert_eq!(check_reply(&req, &id()), Err(Mismatch::Unparsable), "a request is no reply");
    }
}

/// The branch, tag and Call-ID must be where the grammar puts them, not just somewhere.
#[test]
fn identity_fields_count_only_in_their_place() {
    let (branch, tag, call_id) = (id().branch, id().from_tag, id().call_id);
    let head = |via: &str, from: &str| {
        format!(
            "SIP/2.0 200 OK\r\nVia: {via}\r\nFrom: {from}\r\nTo: <sip:a@b>\r\nCall-ID: {call_id}\r\nCSeq: 7 OPTIONS\r\n\r\n"
        )
    };
    let good_via = format!("SIP/2.0/UDP [::1]:40000;branch={branch}");
    let good_from = format!("<sip:dnlb-probe@[::1]:5060>;tag={tag}");
    let ok = Ok(Reply::Final { code: 200, retry_after: None });
    assert_eq!(check_reply(head(&good_via, &good_from).as_bytes(), &id()), ok);
    for (via, why) in [
        (format!("SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKx, {good_via}"), "our Via is not the top one"),
        (format!("SIP/2.0/UDP [::1]:40000;x-branch={branch}"), "another parameter"),
        (format!("SIP/2.0/UDP [::1]:40000;branch={branch}x"), "a longer branch"),
        (format!("SIP/2.0/UDP [::1:40000;branch={branch}"), "an unclosed IPv6 reference"),
        (format!("SIP/2.0/UDP [::g]:40000;branch={branch}"), "not an IPv6 address"),
        (format!("SIP/2.0/UDP [::1]:400000;branch={branch}"), "a six-digit port"),
        (format!("SIP/3.0/UDP [::1]:40000;branch={branch}"), "another version"),
        (format!("SIP/2.0/UDP;branch={branch}"), "no sent-by"),
        (format!("SIP/2.0/UDP h;foo=\"a;branch={branch}\""), "inside a quoted string"),
    ] {
        assert_eq!(check_reply(head(&via, &good_from).as_bytes(), &id()), Err(Mismatch::Branch), "{why}: {via}");
    }
    for (from, why) in [
        (format!("<sip:dnlb-probe@[::1]:5060;tag={tag}>"), "a URI parameter, not the header's"),
        (format!("\"x;tag={tag}\" <sip:a@b>"), "inside the display name"),
        (format!("<sip:dnlb-probe@[::1]:5060>;tag={tag}x"), "a longer tag"),
        (format!("<sip:dnlb-probe@[::1]:5060 ;tag={tag}"), "no closing bracket"),
        (format!("<sip:a@b>x;tag={tag}"), "text between > and ;"),
        ("<sip:a@b>".to_string(), "no tag"),
    ] {
        assert_eq!(check_reply(head(&good_via, &from).as_bytes(), &id()), Err(Mismatch::FromTag), "{why}: {from}");
    }
    for (from, why) in [
        (
            format!("\"Probe \\\"<x>\\\" ; y\" <sip:dnlb-probe@[::1]:5060;transport=tcp> ; tag = {tag} ; x=1"),
            "quoted, escaped",
        ),
        (format!("sip:dnlb-probe@[::1]:5060;TAG={tag}"), "an addr-spec; parameter names in any case"),
    ] {
        assert_eq!(check_reply(head(&good_via, &from).as_bytes(), &id()), ok, "{why}: {from}");
    }
}

/// Header names in any case and compact form, folded values, LWS where RFC 3261 allows it.
#[test]
fn the_header_syntax_of_rfc_3261_is_read() {
    let (branch, tag, call_id) = (id().branch, id().from_tag, id().call_id);
    let text = format!(
        "SIP/2.0 200 OK\r\nv: SIP / 2.0 / UDP\r\n  [2001:db8::1]:40000 ; received=2001:db8::1\r\n\t;branch={branch} , SIP/2.0/UDP 10.0.0.1\r\n\
         f: <sip:dnlb-probe@[2001:db8::10]:5060>\r\n ;tag={tag}\r\nI: {call_id}\r\nCSEQ:\t7\tOPTIONS \r\nT: <sip:x@y>\r\n\
         retry-after: 10;duration=20\r\nl: 0\r\n\r\n"
    );
    assert_eq!(check_reply(text.as_bytes(), &id()), Ok(Reply::Final { code: 200, retry_after: Some(10) }));
    let second_via = format!(
        "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP [::1]:1;branch={branch}\r\nVia: SIP/2.0/UDP [::1]:1;branch=z9hG4bKother\r\n\
         From: <sip:a@b>;tag={tag}\r\nCall-ID: {call_id}\r\nCSeq: 7 OPTIONS\r\n\r\n"
    );
    assert!(check_reply(second_via.as_bytes(), &id()).is_ok(), "the first Via header is the top one");
    let cases = [
        ("SIP/2.0 200 OK\r\n", "SIP/2.0 099 Low\r\n", Mismatch::Unparsable),
        ("SIP/2.0 200 OK\r\n", "SIP/2.0 700 High\r\n", Mismatch::Unparsable),
        ("SIP/2.0 200 OK\r\n", "SIP/2.0 20 OK\r\n", Mismatch::Unparsable),
        ("SIP/2.0 200 OK\r\n", "SIP/2.0 200OK\r\n", Mismatch::Unparsable),
        ("l: 0\r\n", "no colon here\r\n", Mismatch::Unparsable),
        ("l: 0\r\n", ": empty name\r\n", Mismatch::Unparsable),
        ("\r\n\r\n", "\r\n", Mismatch::Unparsable),
    ];
    for (from, to, want) in cases {
        let bad = text.replacen(from, to, 1);
        assert_eq!(check_reply(bad.as_bytes(), &id()), Err(want), "{bad:?}");
    }
    let folded_first = text.replacen("SIP/2.0 200 OK\r\n", "SIP/2.0 200 OK\r\n  folded: first\r\n", 1);
    assert_eq!(check_reply(folded_first.as_bytes(), &id()), Err(Mismatch::Unparsable));
}

#[test]
fn ipv6_text_is_rfc_5952() {
    for text in [
        "::",
        "::1",
        "1::",
        "2001:db8::10",
        "2001:db8:0:0:1::1",
        "2001:0:0:1::1",
        "1:0:0:2:0:0:0:3",
        "1:2:3:4:5:6:7:8",
        "1:2:3:4:5:6:7:0",
        "0:1:2:3:4:5:6:7",
        "fe80::abcd:ef01",
        "fd00:14::1",
        "1::2:3:4:5:6:7",
    ] {
        let ip: Ipv6Addr = text.parse().unwrap();
        let mut out = Vec::new();
        put_ipv6(&mut out, ip);
        assert_eq!(String::from_utf8(out).unwrap(), ip.to_string(), "{text}");
    }
}

proptest! {
    /// The hand-written IPv6 text is the standard library's (RFC 5952) for every address but
    /// the IPv4-mapped ones (which Display writes dotted and targets never are), and reads back.
    #[test]
    fn ipv6_text_matches_display(bits in any::<u128>(), zeros in any::<u8>()) {
        // Runs of zero groups are what the compression is about: clear some groups.
        let mut groups = Ipv6Addr::from(bits).segments();
        for (i, g) in groups.iter_mut().enumerate() {
            if zeros & (1 << i) != 0 {
                *g = 0;
            }
        }
        let ip = Ipv6Addr::from(groups);
        let mut out = Vec::new();
        put_ipv6(&mut out, ip);
        let text = String::from_utf8(out).unwrap();
        prop_assert_eq!(text.parse::<Ipv6Addr>().unwrap(), ip);
        if ip.to_ipv4_mapped().is_none() {
            prop_assert_eq!(text, ip.to_string());
        }
    }

    /// Whatever the target, local address and identity, the echo of a rendered request matches
    /// it and no other identity.
    #[test]
    fn every_rendered_request_is_answered_by_its_echo(
        target in any::<SocketAddr>(), local in any::<SocketAddr>(), words in any::<[u64; 5]>(), cseq in any::<u32>(),
        transport in prop::sample::select(Transport::ALL.to_vec()), register in any::<bool>(),
    ) {
        let method = if register { ProbeMethod::Register } else { ProbeMethod::Options };
        let id = ProbeId::new(words, cseq, method);
        let Ok(template) = RequestTemplate::new(method, target, transport) else {
            prop_assert!(check_target(target).is_err());
            return Ok(());
        };
        let mut out = Vec::new();
        template.render(&id, local, &mut out);
        prop_assert_eq!(&out, &request(&id, target, transport, local).unwrap());
        let reply = reply_to(&out, "200 OK", "");
        prop_assert_eq!(check_reply(&reply, &id), Ok(Reply::Final { code: 200, retry_after: None }));
        let mut other = id.clone();
        other.cseq = cseq.wrapping_add(1);
        prop_assert_eq!(check_reply(&reply, &other), Err(Mismatch::CSeq));
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
        ("SIP/2.0/UDP h;oc=30;oc-seq=99999999999999999999.1234567", sig(30, DEFAULT_OC_VALIDITY_MS, Some(u64::MAX))),
        ("SIP/2.0/UDP [2001:db8::1]:5060;received=2001:db8::1;oc=40", sig(40, DEFAULT_OC_VALIDITY_MS, None)),
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
    assert_eq!(overload(lower), sig(10, DEFAULT_OC_VALIDITY_MS, None), "the compact form; the first Via is the top");
    assert_eq!(overload(b"SIP/2.0 200 OK\r\n\r\nVia: SIP/2.0/UDP h;oc=10\r\n"), None, "the body is no header");
    assert_eq!(overload(&reply_to(&req(), "200 OK", "")), None, "our own Via offers oc without a value");
    assert!(check_reply(&reply_to(&req(), "200 OK", ""), &id()).is_ok(), "our Via's oc parameters are read past");
}

#[test]
fn retry_after_saturates_instead_of_overflowing() {
    for (header, want) in [
        ("Retry-After: 18446744073709551615\r\n", Some(u64::MAX)),
        ("Retry-After: 18446744073709551616000\r\n", Some(u64::MAX)),
        ("Retry-After: 1000000000000\r\n", Some(1_000_000_000_000)),
        ("Retry-After: 5;duration=10\r\n", Some(5)),
        ("Retry-After: 5 (lunch)\r\n", Some(5)),
        ("Retry-After: -5\r\n", None),
        ("Retry-After: soon\r\n", None),
    ] {
        for req in [req(), req6()] {
            let reply = reply_to(&req, "503 Service Unavailable", header);
            assert_eq!(check_reply(&reply, &id()), Ok(Reply::Final { code: 503, retry_after: want }), "{header}");
        }
    }
}
