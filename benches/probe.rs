//! Prober hot spots: building a probe request and checking a reply (our own writer and parser),
//! with rsip's parse of the same reply beside it as the reference the prober used before.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use dnlb::config::{ProbeMethod, Transport};
use dnlb::probe::sip::{check_reply, request, ProbeId, RequestTemplate};
use rsip::prelude::{HeadersExt, ToTypedHeader};

fn reply_to(req: &str) -> String {
    let mut out = String::from("SIP/2.0 200 OK\r\n");
    for line in req.split("\r\n").skip(1).take_while(|l| !l.is_empty()) {
        let lower = line.to_ascii_lowercase();
        if ["via:", "from:", "to:", "call-id:", "cseq:"].iter().any(|h| lower.starts_with(h)) {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out + "Content-Length: 0\r\n\r\n"
}

fn benches(c: &mut Criterion) {
    let id = ProbeId::new([1, 2, 3, 4, 5], 123_456_789, ProbeMethod::Options);
    for (family, target, local) in
        [("", "127.0.0.11:5060", "127.0.0.1:40000"), ("_v6", "[2001:db8::10]:5060", "[2001:db8::1]:40000")]
    {
        let (target, local) = (target.parse().unwrap(), local.parse().unwrap());
        c.bench_function(&format!("probe/build_request{family}"), |b| {
            b.iter(|| request(black_box(&id), target, Transport::Udp, local))
        });
        let template = RequestTemplate::new(ProbeMethod::Options, target, Transport::Udp).unwrap();
        let mut out = Vec::with_capacity(512);
        c.bench_function(&format!("probe/render_template{family}"), |b| {
            b.iter(|| template.render(black_box(&id), local, &mut out))
        });
        let req = request(&id, target, Transport::Udp, local).unwrap();
        let reply = reply_to(std::str::from_utf8(&req).unwrap());
        c.bench_function(&format!("probe/check_reply{family}"), |b| {
            b.iter(|| check_reply(black_box(reply.as_bytes()), &id))
        });
        let forged = reply.replace("branch=z9hG4bK", "branch=z9hG4bKx");
        c.bench_function(&format!("probe/check_forged_reply{family}"), |b| {
            b.iter(|| check_reply(black_box(forged.as_bytes()), &id))
        });
    }
    // The reference: what rsip took to parse the IPv4 reply and read its branch (it cannot read
    // the IPv6 one).
    let req =
        request(&id, "127.0.0.11:5060".parse().unwrap(), Transport::Udp, "127.0.0.1:40000".parse().unwrap()).unwrap();
    let reply = reply_to(std::str::from_utf8(&req).unwrap());
    c.bench_function("probe/rsip_parse_reply", |b| {
        b.iter(|| {
            let r = rsip::Response::try_from(black_box(reply.as_bytes())).ok()?;
            let via = r.via_header().ok()?.typed().ok()?;
            via.branch().map(|b| b.to_string() == id.branch)
        })
    });
    c.bench_function("probe/new_id", |b| b.iter(|| ProbeId::new(black_box([1, 2, 3, 4, 5]), 7, ProbeMethod::Options)));
}

criterion_group!(probe, benches);
criterion_main!(probe);
