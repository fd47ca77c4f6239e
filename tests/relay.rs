//! The relay against a real upstream (nsd serving a test zone) and scripted fake upstreams, over
//! real loopback sockets, for both backends.

mod common;

use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::upstream::{Behaviour, FakeUpstream, Hostile, Nsd, Script};
use common::*;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};

fn relay_config(dns_port: u16, upstreams: &[std::net::SocketAddr], extra: &str) -> String {
    let list: Vec<String> = upstreams.iter().map(|u| format!("\"{u}\"")).collect();
    format!("{}\n[relay]\nupstreams = [{}]\ntimeout_ms = 300\n{extra}\n", config_text(dns_port, 2, ""), list.join(", "))
}

/// What a comparison looks at: RCODE, answer records (name, type, data), authority types.
fn essence(m: &Message) -> (ResponseCode, Vec<String>, Vec<RecordType>) {
    let mut answers: Vec<String> =
        m.answers.iter().map(|r| format!("{} {} {}", r.name, r.record_type(), r.data)).collect();
    answers.sort();
    (m.metadata.response_code, answers, m.authorities.iter().map(|r| r.record_type()).collect())
}

fn tcp_query(addr: std::net::SocketAddr, packet: &[u8]) -> Message {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let r = tcp_exchange(&mut s, &[packet.to_vec()]);
    Message::from_vec(&r[0]).unwrap()
}

#[test]
fn answers_through_dnlb_equal_answers_from_the_upstream() {
    if !require(have("nsd") || std::path::Path::new("/usr/sbin/nsd").exists(), "nsd (package nsd)") {
        return;
    }
    let nsd = Nsd::start(free_port());
    for io in backends() {
        let t = TestServer::start(&relay_config(free_port(), &[nsd.addr], ""), io);
        let cases = [
            ("www.relay.test.", RecordType::A),
            ("WwW.Relay.Test.", RecordType::AAAA),
            ("alias.relay.test.", RecordType::A),
            ("textonly.relay.test.", RecordType::A),
            ("nx.relay.test.", RecordType::A),
            ("relay.test.", RecordType::SOA),
        ];
        for (i, (name, qtype)) in cases.iter().enumerate() {
            let q = query(name, *qtype, 100 + i as u16, Some(1232));
            let direct = udp_query(nsd.addr, &q);
            let relayed = udp_query(t.addr, &q);
            assert_eq!(relayed.metadata.id, 100 + i as u16);
            assert_eq!(essence(&relayed), essence(&direct), "{io:?} {name} {qtype}");
            assert_eq!(relayed.queries[0].name().to_ascii(), *name, "question case kept");
            // A second time from the cache: same answers.
            let cached = udp_query(t.addr, &query(name, *qtype, 200 + i as u16, None));
            assert_eq!(essence(&cached), essence(&direct), "{io:?} {name} {qtype} (cached)");
        }
        // A TXT too large for UDP: TC over UDP, the whole answer over TCP (relayed over TCP).
        let q = query("big.relay.test.", RecordType::TXT, 7, None);
        let udp = udp_query(t.addr, &q);
        assert!(udp.metadata.truncation, "{io:?}: big TXT truncated over UDP");
        let over_tcp = tcp_query(t.addr, &q);
        assert_eq!(essence(&over_tcp), essence(&tcp_query(nsd.addr, &q)), "{io:?}: big TXT over TCP");
        assert!(matches!(&over_tcp.answers[0].data, RData::TXT(_)));
        // Managed SIP names are still answered locally.
        let sip = udp_query(t.addr, &query("sip.example.test.", RecordType::A, 9, None));
        assert_eq!(sip.answers.len(), 2);
        let totals = t.server.as_ref().unwrap().totals();
        assert!(totals.relayed >= 6, "{totals}");
    }
}

/// 100,000 forged replies (wrong ID, changed question case, right bytes from another port), each
/// naming another address, injected at pending queries: every client gets the true answer.
///
/// The forger here sees every query, so it has the port and ID; only 0x20 stops its case-changed
/// forgeries. The first query is answered calmly, so the relay has seen this upstream keep case:
/// until then a question whose true reply is lost to the flood would be asked once more without
/// 0x20 (the way an upstream that does not keep case is found), and this forger would see that
/// query too.
#[test]
fn forged_upstream_replies_are_refused() {
    for io in backends() {
        let fake = FakeUpstream::start(Behaviour::ForgeThenAnswer { forged: 1000, calm: 1 });
        let t = TestServer::start(&relay_config(free_port(), &[fake.addr], "cache_entries = 0"), io);
        let client = udp_client();
        client.send_to(&query("calm.forged.test.", RecordType::A, 999, None), t.addr).unwrap();
        let mut buf = [0u8; 1500];
        let (n, _) = loop {
            match client.recv_from(&mut buf) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                other => break other.expect("the calm answer"),
            }
        };
        assert_eq!(Message::from_vec(&buf[..n]).unwrap().metadata.response_code, ResponseCode::NoError);
        let (mut answered, mut servfail) = (0, 0);
        for i in 0..100u16 {
            // On a loaded machine the flood can overflow a socket buffer and take the true reply
            // with it; the query then times out to SERVFAIL and is asked again. What must never
            // happen is an answer carrying the forged address.
            for attempt in 0..5 {
                client
                    .send_to(&query(&format!("host{i}-{attempt}.forged.test."), RecordType::A, i, None), t.addr)
                    .unwrap();
                let mut buf = [0u8; 1500];
                // A reply lost to a full buffer on a loaded machine is asked again, like a
                // SERVFAIL; late ones for an earlier attempt are skipped by their question.
                let Some((n, _)) = recv_retry(&client, &mut buf) else {
                    servfail += 1;
                    continue;
                };
                let m = Message::from_vec(&buf[..n]).unwrap();
                if m.queries.first().is_some_and(|q| !q.name.to_ascii().starts_with(&format!("host{i}-{attempt}."))) {
                    continue;
                }
                assert_eq!(m.metadata.id, i);
                if m.metadata.response_code == ResponseCode::ServFail {
                    servfail += 1;
                    continue;
                }
                match &m.answers[0].data {
                    RData::A(a) => assert_eq!(a.0.octets(), [198, 51, 100, 7], "a forged reply was accepted"),
                    other => panic!("{other:?}"),
                }
                answered += 1;
                break;
            }
        }
        println!("{io:?}: {servfail} timeouts under the flood, retried");
        assert_eq!(answered, 100, "{io:?}: every query got its true answer within five tries");
        let forged = fake.forged.load(std::sync::atomic::Ordering::Relaxed);
        println!("{io:?}: {answered} true answers through {forged} forged replies");
        assert!(forged >= 100_000, "{forged} forged");
    }
}

#[test]
fn a_black_holed_upstream_gives_servfail_or_the_other_upstream() {
    for io in backends() {
        let hole = FakeUpstream::start(Behaviour::BlackHole);
        let t = TestServer::start(&relay_config(free_port(), &[hole.addr], ""), io);
        let start = Instant::now();
        let m = udp_query(t.addr, &query("x.blackhole.test.", RecordType::A, 1, None));
        let waited = start.elapsed();
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail, "{io:?}");
        assert!(
            waited >= Duration::from_millis(250) && waited < Duration::from_millis(1500),
            "SERVFAIL after {waited:?}"
        );
        // SIP names do not wait for the relay.
        let start = Instant::now();
        udp_query(t.addr, &query("sip.example.test.", RecordType::A, 2, None));
        assert!(start.elapsed() < Duration::from_millis(100));
        drop(t);

        let good = FakeUpstream::start(Behaviour::ForgeThenAnswer { forged: 0, calm: 0 });
        let t = TestServer::start(&relay_config(free_port(), &[hole.addr, good.addr], ""), io);
        for i in 0..6u16 {
            let m = udp_query(t.addr, &query(&format!("h{i}.failover.test."), RecordType::A, i, None));
            assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{io:?}: answered by the other upstream");
        }
    }
}

#[test]
fn clients_outside_allow_are_refused() {
    let fake = FakeUpstream::start(Behaviour::ForgeThenAnswer { forged: 0, calm: 0 });
    let t = TestServer::start(
        &relay_config(free_port(), &[fake.addr], "allow = [\"10.0.0.0/8\"]"),
        dnlb::config::IoMode::Portable,
    );
    let m = udp_query(t.addr, &query("www.acl.test.", RecordType::A, 1, None));
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    let m = udp_query(t.addr, &query("sip.example.test.", RecordType::A, 2, None));
    assert_eq!(m.answers.len(), 2, "managed names are answered for every source by default");
    assert_eq!(fake.queries.load(std::sync::atomic::Ordering::Relaxed), 0);
    let mut buf = [0u8; 1];
    let mut s = TcpStream::connect(t.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(10))).unwrap();
    let _idle = s.read(&mut buf);
}

/// Per-domain routing (DNRD's `-s server:domain`): names under a routed domain go to its upstreams.
#[test]
fn routes_pick_the_upstream_by_domain() {
    let default = FakeUpstream::start(Behaviour::ForgeThenAnswer { forged: 0, calm: 0 });
    let corp = FakeUpstream::start(Behaviour::ForgeThenAnswer { forged: 0, calm: 0 });
    let extra = format!("[[relay.route]]\ndomain = \"corp.test\"\nupstreams = [\"{}\"]\n", corp.addr);
    let t = TestServer::start(&relay_config(free_port(), &[default.addr], &extra), dnlb::config::IoMode::Portable);
    let load = |f: &FakeUpstream| f.queries.load(std::sync::atomic::Ordering::Relaxed);
    udp_query(t.addr, &query("www.corp.test.", RecordType::A, 1, None));
    udp_query(t.addr, &query("a.b.Corp.Test.", RecordType::A, 2, None));
    assert_eq!((load(&corp), load(&default)), (2, 0));
    udp_query(t.addr, &query("www.notcorp.test.", RecordType::A, 3, None));
    assert_eq!((load(&corp), load(&default)), (2, 1));
    // A TCP client's question follows the route too (it goes upstream over UDP, as every
    // relayed question does, and over TCP only if the upstream truncates).
    let m = tcp_query(t.addr, &query("tcp.corp.test.", RecordType::A, 4, None));
    assert_eq!((m.metadata.id, m.metadata.response_code), (4, ResponseCode::NoError));
    assert_eq!((load(&corp), load(&default)), (3, 1));
}

/// A black-holed upstream under load: the pending table stays at its bound (the rest get SERVFAIL
/// at once), every client gets SERVFAIL within the timeout, and SIP names are answered meanwhile.
#[test]
fn a_black_hole_under_load_keeps_the_pending_table_bounded() {
    for io in backends() {
        let hole = FakeUpstream::start(Behaviour::BlackHole);
        let t = TestServer::start(&relay_config(free_port(), &[hole.addr], "max_pending = 64\ncache_entries = 0"), io);
        let client = udp_client();
        client.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let n = 2000u16;
        // Replies are read by a second thread while the queries go out, so no socket buffer on
        // the client's side overflows; the queries are paced a little for the same reason.
        let reader = client.try_clone().unwrap();
        let start = Instant::now();
        let collector = std::thread::spawn(move || {
            let (mut servfail, mut latest, mut other) = (0u16, Duration::ZERO, 0u16);
            let mut buf = [0u8; 1500];
            while start.elapsed() < Duration::from_secs(3) && servfail + other < n {
                if let Ok((len, _)) = reader.recv_from(&mut buf) {
                    match Message::from_vec(&buf[..len]).map(|m| m.metadata.response_code) {
                        Ok(ResponseCode::ServFail) => servfail += 1,
                        _ => other += 1,
                    }
                    latest = start.elapsed();
                }
            }
            (servfail, latest, other)
        });
        for i in 0..n {
            client.send_to(&query(&format!("q{i}.hole.test."), RecordType::A, i, None), t.addr).unwrap();
            // Paced: most of these are answered SERVFAIL at once (the pending table and the
            // client's share of it are full), and a burst of 2,000 replies would overflow the
            // client's socket buffer on a loaded machine.
            if i % 25 == 24 {
                std::thread::sleep(Duration::from_millis(3));
            }
        }
        // SIP names meanwhile: answered at once.
        let sip_start = Instant::now();
        let sip = udp_query(t.addr, &query("sip.example.test.", RecordType::A, 1, None));
        let sip_time = sip_start.elapsed();
        assert_eq!(sip.answers.len(), 2);
        let (servfail, latest, other) = collector.join().unwrap();
        assert_eq!(other, 0, "only SERVFAIL answers");
        let upstream_queries = hole.queries.load(std::sync::atomic::Ordering::Relaxed);
        println!("{io:?}: {servfail}/{n} SERVFAIL, the last after {latest:?}; {upstream_queries} upstream queries; SIP answer in {sip_time:?}");
        // dnlb answered every query it received; the client may still miss a few replies when a
        // loaded machine lets its socket buffer overflow, so that side is held to 95 %.
        let totals = t.server.as_ref().unwrap().totals();
        assert_eq!(
            totals.servfail + totals.noerror,
            totals.queries,
            "{io:?}: every query received was answered: {totals}"
        );
        assert_eq!(totals.io_errors, 0, "{io:?}: {totals}");
        assert!(
            u32::from(servfail) * 100 >= u32::from(n) * 95,
            "{io:?}: {servfail} of {n} SERVFAIL replies arrived: {totals}"
        );
        assert_eq!((totals.drop_outbox, totals.drop_send_slot), (0, 0), "{io:?}: dnlb sent every reply: {totals}");
        assert!(latest < Duration::from_millis(300 + 500), "{io:?}: last SERVFAIL after {latest:?}");
        assert!(upstream_queries <= 64 + 5, "{io:?}: the pending bound holds: {upstream_queries} sent upstream");
        assert!(sip_time < Duration::from_millis(100), "{io:?}: SIP answer took {sip_time:?}");
    }
}

/// Active health checks: a dead upstream is found by the checks, not by clients waiting on it.
#[test]
fn health_checks_take_a_dead_upstream_out_before_clients_wait_on_it() {
    let hole = FakeUpstream::start(Behaviour::BlackHole);
    let good = FakeUpstream::start(Behaviour::ForgeThenAnswer { forged: 0, calm: 0 });
    let extra = "health_check = \"health.test\"\nhealth_check_interval_ms = 100";
    let t =
        TestServer::start(&relay_config(free_port(), &[hole.addr, good.addr], extra), dnlb::config::IoMode::Portable);
    // Three timed-out checks (300 ms each, one every 100 ms) rest the black hole. Without the
    // checks, every other query would wait 300 ms for it (verified by removing `extra`).
    // Each worker checks, and rests the black hole, on its own.
    let server = t.server.as_ref().unwrap();
    let blocks = server.counters();
    let rested = || blocks.iter().all(|b| b.relay_timeouts.load(std::sync::atomic::Ordering::Relaxed) >= 3);
    wait_until("three checks timed out in every worker", Duration::from_secs(5), rested, || {
        server.totals().to_string()
    });
    assert!(hole.queries.load(std::sync::atomic::Ordering::Relaxed) >= 3, "health checks reached the dead upstream");
    for i in 0..6u16 {
        let start = Instant::now();
        let m = udp_query(t.addr, &query(&format!("h{i}.checked.test."), RecordType::A, i, None));
        let took = start.elapsed();
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(took < Duration::from_millis(200), "query {i} waited {took:?}: it went to the dead upstream");
    }
}

/// A zone with short TTLs for the serve-stale and prefetch tests: answers live 1 s (negative
/// ones too: SOA TTL and MINIMUM 1), `pop` 2 s.
fn short_zone() -> String {
    "$ORIGIN stale.test.\n$TTL 1\n@ IN SOA ns hostmaster 1 3600 600 86400 1\n@ IN NS ns\nns IN A 127.0.7.10\n\
     a IN A 192.0.2.31\ntxt IN TXT \"only\"\npop 2 IN A 192.0.2.50\n"
        .into()
}

/// A relay on one worker (so every client meets the same cache) with `extra` relay settings
/// (the upstream timeout 2 s unless they say otherwise).
fn one_worker(dns_port: u16, upstream: std::net::SocketAddr, extra: &str) -> String {
    let timeout = if extra.contains("timeout_ms") { "" } else { "timeout_ms = 2000\n" };
    format!(
        "{}\n[relay]\nupstreams = [\"{upstream}\"]\n{timeout}{extra}\n",
        config_text(dns_port, 2, "").replace("workers = 2", "workers = 1")
    )
}

/// The TTL a client sees: of the first answer record, else of the first authority record (the
/// SOA of a negative answer).
fn ttl_seen(m: &Message) -> u32 {
    m.answers.first().or(m.authorities.first()).map_or(u32::MAX, |r| r.ttl)
}

/// Upstream outage (RFC 8767): names cached before nsd stops are answered stale (TTL 30) within
/// stale_answer_ms once their TTL ran out, NXDOMAIN and NODATA too, over UDP and TCP; a name never
/// cached gets SERVFAIL; once nsd is back, answers are fresh again within stale_refresh_s. Each
/// backend has its own nsd (127.0.7.10 and .11), in parallel.
#[test]
fn an_upstream_outage_is_ridden_out_on_stale_answers() {
    if !require(have("nsd") || std::path::Path::new("/usr/sbin/nsd").exists(), "nsd (package nsd)") {
        return;
    }
    let runs: Vec<_> =
        backends().into_iter().zip(10u8..).map(|(io, host)| std::thread::spawn(move || outage(io, host))).collect();
    for run in runs {
        run.join().unwrap();
    }
}

fn outage(io: dnlb::config::IoMode, host: u8) {
    let upstream = std::net::SocketAddr::from(([127, 0, 7, host], free_port()));
    let nsd = Nsd::serve(upstream, "stale.test", &short_zone());
    let t = TestServer::start(&one_worker(free_port(), upstream, "stale_refresh_s = 2"), io);
    let cases = [
        ("a.stale.test.", ResponseCode::NoError, 1),
        ("nx.stale.test.", ResponseCode::NXDomain, 0),
        ("txt.stale.test.", ResponseCode::NoError, 0),
    ];
    for (i, (name, rcode, answers)) in cases.iter().enumerate() {
        let m = udp_query(t.addr, &query(name, RecordType::A, i as u16, None));
        assert_eq!((m.metadata.response_code, m.answers.len(), ttl_seen(&m)), (*rcode, *answers, 1), "{io:?} {name}");
    }
    let filled = Instant::now();
    drop(nsd);
    // Past every TTL (1 s): the cache holds only stale answers now.
    std::thread::sleep(Duration::from_millis(1200).saturating_sub(filled.elapsed()));
    for (i, (name, rcode, answers)) in cases.iter().enumerate() {
        let start = Instant::now();
        let m = udp_query(t.addr, &query(name, RecordType::A, 10 + i as u16, None));
        let took = start.elapsed();
        assert_eq!((m.metadata.response_code, m.answers.len()), (*rcode, *answers), "{io:?} {name}: stale");
        assert_eq!(ttl_seen(&m), 30, "{io:?} {name}: the stale TTL");
        assert!(took < Duration::from_millis(1800), "{io:?} {name}: answered after {took:?}");
    }
    let m = tcp_query(t.addr, &query("A.Stale.Test.", RecordType::A, 20, None));
    assert_eq!((m.metadata.id, m.answers.len(), ttl_seen(&m)), (20, 1, 30), "{io:?}: stale over TCP");
    assert_eq!(m.queries[0].name().to_ascii(), "A.Stale.Test.", "the client's letter case");
    let m = udp_query(t.addr, &query("never.stale.test.", RecordType::A, 21, None));
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail, "{io:?}: never cached, nothing to serve");
    // nsd back: a fresh answer once the recheck timer (2 s) lets the next query go upstream.
    let _nsd = Nsd::serve(upstream, "stale.test", &short_zone());
    let back = Instant::now();
    let fresh = || ttl_seen(&udp_query(t.addr, &query("a.stale.test.", RecordType::A, 22, None))) <= 1;
    let took =
        wait_until(&format!("{io:?}: a fresh answer after nsd came back"), Duration::from_secs(4), fresh, || {
            t.server.as_ref().unwrap().totals().to_string()
        });
    println!("{io:?}: fresh answers {:?} after nsd came back", back.elapsed());
    assert!(took <= Duration::from_millis(2000 + 500), "{io:?}: fresh after {took:?}, stale_refresh_s is 2 s");
    let totals = t.server.as_ref().unwrap().totals();
    assert!(totals.relay_stale_answers >= 4, "{io:?}: {totals}");
}

/// An upstream that answers SERVFAIL for good cannot keep a stale answer alive past stale_max_s
/// (2 s here), nor make dnlb ask it more than about once per stale_refresh_s (1 s); a silent one
/// costs a client stale_answer_ms (600 ms), no more, and the stale answer then (its query times
/// out 800 ms after it went).
#[test]
fn a_failing_upstream_cannot_pin_a_stale_answer() {
    let runs: Vec<_> = backends().into_iter().map(|io| std::thread::spawn(move || pinned(io))).collect();
    for run in runs {
        run.join().unwrap();
    }
}

fn pinned(io: dnlb::config::IoMode) {
    let upstream = Hostile::start("127.0.0.1", Script { ttl: 1, ..Script::default() });
    let extra = "timeout_ms = 800\nstale_max_s = 2\nstale_refresh_s = 1\nstale_answer_ms = 600";
    let t = TestServer::start(&one_worker(free_port(), upstream.addr, extra), io);
    let ask = |id: u16| udp_query(t.addr, &query("pin.hostile.test.", RecordType::A, id, None));
    assert_eq!(ttl_seen(&ask(1)), 1);
    let expires = Instant::now() + Duration::from_secs(1);
    // Silent: the client gets the stale answer when its timer runs out, not before.
    upstream.set_mute(true);
    std::thread::sleep(expires.saturating_duration_since(Instant::now()) + Duration::from_millis(100));
    let start = Instant::now();
    let m = ask(2);
    let took = start.elapsed();
    assert_eq!((m.metadata.response_code, ttl_seen(&m)), (ResponseCode::NoError, 30), "{io:?}");
    assert!(took >= Duration::from_millis(500), "{io:?}: stale after {took:?}, before the client timer");
    assert!(took < Duration::from_millis(600 + 400), "{io:?}: stale after {took:?}");
    // SERVFAIL for good: stale answers until 2 s past the expiry, then SERVFAIL.
    upstream.set_mute(false);
    upstream.set_servfail(true);
    let asked_before = upstream.count();
    let (mut stale, mut id) = (0, 3);
    let ended = loop {
        let m = ask(id);
        id += 1;
        if m.metadata.response_code == ResponseCode::ServFail {
            break Instant::now();
        }
        assert_eq!(ttl_seen(&m), 30, "{io:?}: stale until the end");
        stale += 1;
        assert!(expires.elapsed() < Duration::from_secs(4), "{io:?}: still stale {:?} after expiry", expires.elapsed());
        std::thread::sleep(Duration::from_millis(50));
    };
    let after_expiry = ended.saturating_duration_since(expires);
    let upstream_queries = upstream.count() - asked_before;
    println!(
        "{io:?}: SERVFAIL {after_expiry:?} after expiry; {stale} stale answers, {upstream_queries} upstream queries"
    );
    assert!(after_expiry >= Duration::from_millis(1900), "{io:?}: SERVFAIL already {after_expiry:?} after expiry");
    assert!(stale >= 10, "{io:?}: {stale} stale answers");
    assert!(upstream_queries <= 5, "{io:?}: {upstream_queries} upstream queries for {stale} stale answers");
}

/// Prefetch: a name asked 100 times a second across its expiry (TTL 2 s) never misses: the only
/// client that waited on upstream is the first, and upstream saw one prefetch per TTL. Without
/// prefetch the same run misses at the expiry. Both backends and the control run in parallel,
/// each with its own dnlb, against one nsd (127.0.7.12).
#[test]
fn a_popular_name_is_prefetched_and_never_misses() {
    if !require(have("nsd") || std::path::Path::new("/usr/sbin/nsd").exists(), "nsd (package nsd)") {
        return;
    }
    let upstream = std::net::SocketAddr::from(([127, 0, 7, 12], free_port()));
    let _nsd = Nsd::serve(upstream, "stale.test", &short_zone());
    let mut runs: Vec<_> = backends().into_iter().map(|io| (io, true)).collect();
    runs.push((dnlb::config::IoMode::Portable, false));
    let runs: Vec<_> =
        runs.into_iter().map(|(io, on)| std::thread::spawn(move || (io, on, popular(io, upstream, on)))).collect();
    for run in runs {
        let (io, on, totals) = run.join().unwrap();
        if on {
            assert_eq!(totals.relayed, 1, "{io:?}: only the first query waited on upstream: {totals}");
            assert!(totals.relay_prefetches >= 1, "{io:?}: {totals}");
            assert_eq!(totals.relay_forwarded, 1 + totals.relay_prefetches, "{io:?}: {totals}");
        } else {
            assert!(totals.relayed >= 2, "without prefetch the expiry is a miss: {totals}");
            assert_eq!(totals.relay_prefetches, 0, "{totals}");
        }
    }
}

/// Asks `pop.stale.test` every 10 ms for 3 s through a fresh dnlb; returns its counters.
fn popular(io: dnlb::config::IoMode, upstream: std::net::SocketAddr, prefetch: bool) -> dnlb::counters::Totals {
    let t = TestServer::start(&one_worker(free_port(), upstream, &format!("prefetch = {prefetch}")), io);
    let client = udp_client();
    let start = Instant::now();
    let (mut latencies, mut id) = (Vec::new(), 0u16);
    while start.elapsed() < Duration::from_secs(3) {
        let sent = Instant::now();
        client.send_to(&query("pop.stale.test.", RecordType::A, id, None), t.addr).unwrap();
        let mut buf = [0u8; 512];
        let m = loop {
            let (n, _) = recv_retry(&client, &mut buf).expect("an answer within 2 s");
            let m = Message::from_vec(&buf[..n]).unwrap();
            if m.metadata.id == id {
                break m;
            }
        };
        latencies.push(sent.elapsed());
        assert_eq!((m.metadata.response_code, m.answers.len()), (ResponseCode::NoError, 1), "{io:?}");
        id += 1;
        std::thread::sleep(Duration::from_millis(10).saturating_sub(sent.elapsed()));
    }
    latencies.sort();
    let p = |q: usize| latencies[(latencies.len() - 1) * q / 100];
    println!(
        "{io:?} prefetch={prefetch}: {} queries, latency median {:?}, p99 {:?}, max {:?}",
        latencies.len(),
        p(50),
        p(99),
        p(100)
    );
    t.server.as_ref().unwrap().totals()
}
