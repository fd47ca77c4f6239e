//! Prober hot spots: building a probe request and checking a reply (rsip both ways).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use dnlb::config::{ProbeMethod, Transport};
use dnlb::probe::sip::{check_reply, request, ProbeId, RequestTemplate};

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
    let id = ProbeId::new([1, 2, 3, 4, 5], 7, ProbeMethod::Options);
    let target = "127.0.0.11:5060".parse().unwrap();
    let local = "127.0.0.1:40000".parse().unwrap();
    c.bench_function("probe/build_request", |b| b.iter(|| request(black_box(&id), target, Transport::Udp, local)));
    let template = RequestTemplate::new(ProbeMethod::Options, target, Transport::Udp);
    let mut out = Vec::with_capacity(512);
    c.bench_function("probe/render_template", |b| b.iter(|| template.render(black_box(&id), local, &mut out)));
    let req = request(&id, target, Transport::Udp, local);
    let reply = reply_to(std::str::from_utf8(&req).unwrap());
    c.bench_function("probe/check_reply", |b| b.iter(|| check_reply(black_box(reply.as_bytes()), &id)));
    let forged = reply.replace("branch=z9hG4bK", "branch=z9hG4bKx");
    c.bench_function("probe/check_forged_reply", |b| b.iter(|| check_reply(black_box(forged.as_bytes()), &id)));
    c.bench_function("probe/new_id", |b| b.iter(|| ProbeId::new(black_box([1, 2, 3, 4, 5]), 7, ProbeMethod::Options)));
}

criterion_group!(probe, benches);
criterion_main!(probe);
