//! Answers for managed names over real loopback UDP and TCP, for both I/O backends.

mod common;

use std::collections::HashSet;
use std::net::{IpAddr, TcpStream};
use std::time::Duration;

use common::*;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};

fn addresses(m: &Message) -> Vec<IpAddr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_records_rotate_and_carry_the_probe_interval_as_ttl() {
    for io in backends() {
        let t = TestServer::start(&config_text(free_port(), 3, ""), io);
        let client = udp_client();
        let mut firsts = Vec::new();
        for id in 0..6u16 {
            client.send_to(&query("sip.example.test.", RecordType::A, id, None), t.addr).unwrap();
            let mut buf = [0u8; 1500];
            let (n, _) = recv_retry(&client, &mut buf).expect("a reply");
            let m = Message::from_vec(&buf[..n]).unwrap();
            assert_eq!(m.metadata.id, id, "{io:?}");
            assert_eq!(m.metadata.response_code, ResponseCode::NoError);
            assert!(m.metadata.authoritative);
            assert!(m.metadata.recursion_desired, "RD is copied");
            let addrs = addresses(&m);
            assert_eq!(addrs.len(), 3);
            assert_eq!(addrs.iter().collect::<HashSet<_>>().len(), 3);
            assert!(m.answers.iter().all(|r| r.ttl == 1), "TTL = probe interval (1 s)");
            firsts.push(addrs[0]);
        }
        // One client socket reaches one worker (SO_REUSEPORT hashes the 4-tuple): it sees every
        // server first in turn.
        let expected: Vec<IpAddr> =
            ["127.0.0.11", "127.0.0.12", "127.0.0.13"].iter().map(|a| a.parse().unwrap()).collect();
        let start = expected.iter().position(|a| *a == firsts[0]).unwrap();
        for (i, f) in firsts.iter().enumerate() {
            assert_eq!(*f, expected[(start + i) % 3], "{io:?}: rotation {firsts:?}");
        }
    }
}

#[test]
fn question_case_is_echoed_exactly() {
    for (io, zone) in backends().into_iter().flat_map(|io| [(io, ""), (io, AUTHORITY)]) {
        let t = TestServer::start(&config_text(free_port(), 2, zone), io);
        let packet = query("SiP.eXaMpLe.TEST.", RecordType::A, 7, None);
        let reply = udp_raw(t.addr, &packet, Duration::from_secs(2)).unwrap();
        let q_end = 12 + "SiP.eXaMpLe.TEST.".len() + 1 + 4;
        assert_eq!(&reply[12..q_end], &packet[12..q_end], "{io:?}");
        let m = Message::from_vec(&reply).unwrap();
        assert_eq!(addresses(&m).len(), 2);
    }
}

#[test]
fn srv_and_naptr_follow_rfc_3263() {
    for (io, zone) in backends().into_iter().flat_map(|io| [(io, ""), (io, AUTHORITY)]) {
        let t = TestServer::start(&config_text(free_port(), 2, zone), io);
        let m = udp_query(t.addr, &query("_sip._tcp.sip.example.test.", RecordType::SRV, 1, None));
        assert_eq!(m.answers.len(), 2, "{io:?}");
        let mut srv: Vec<(u16, u16, u16, String)> = m
            .answers
            .iter()
            .map(|r| match &r.data {
                RData::SRV(s) => (s.priority, s.weight, s.port, s.target.to_ascii()),
                other => panic!("not SRV: {other:?}"),
            })
            .collect();
        srv.sort();
        assert_eq!(
            srv,
            vec![
                (10, 5, 5060, "ip-127-0-0-11.sip.example.test.".to_string()),
                (11, 6, 5060, "ip-127-0-0-12.sip.example.test.".to_string())
            ]
        );
        assert_eq!(m.additionals.len(), 2, "glue A records for the targets");
        let glue = udp_query(t.addr, &query("ip-127-0-0-12.sip.example.test.", RecordType::A, 2, None));
        assert_eq!(addresses(&glue), vec!["127.0.0.12".parse::<IpAddr>().unwrap()]);

        let m = udp_query(t.addr, &query("sip.example.test.", RecordType::NAPTR, 3, None));
        let mut naptr: Vec<(u16, String, String)> = m
            .answers
            .iter()
            .map(|r| match &r.data {
                RData::NAPTR(n) => {
                    (n.order, String::from_utf8_lossy(&n.services).into_owned(), n.replacement.to_ascii())
                }
                other => panic!("not NAPTR: {other:?}"),
            })
            .collect();
        naptr.sort();
        assert_eq!(
            naptr,
            vec![
                (70, "SIP+D2T".to_string(), "_sip._tcp.sip.example.test.".to_string()),
                (90, "SIP+D2U".to_string(), "_sip._udp.sip.example.test.".to_string())
            ]
        );
    }
}

#[test]
fn other_types_get_nodata_and_other_names_refused() {
    for io in backends() {
        let t = TestServer::start(&config_text(free_port(), 2, ""), io);
        let m = udp_query(t.addr, &query("sip.example.test.", RecordType::TXT, 1, None));
        assert_eq!(
            (m.metadata.response_code, m.answers.len(), m.metadata.authoritative),
            (ResponseCode::NoError, 0, true)
        );
        let m = udp_query(t.addr, &query("sip.example.test.", RecordType::AAAA, 2, None));
        assert_eq!((m.metadata.response_code, m.answers.len()), (ResponseCode::NoError, 0), "no IPv6 servers");
        let m = udp_query(t.addr, &query("www.example.org.", RecordType::A, 3, None));
        assert_eq!(m.metadata.response_code, ResponseCode::Refused, "{io:?}");
        assert_eq!(m.queries.len(), 1, "REFUSED echoes the question");
        let totals = t.server.as_ref().unwrap().totals();
        assert_eq!((totals.queries, totals.noerror, totals.refused), (3, 2, 1));
    }
}

#[test]
fn edns_opt_is_answered_and_badvers_for_version_1() {
    for (io, zone) in backends().into_iter().flat_map(|io| [(io, ""), (io, AUTHORITY)]) {
        let t = TestServer::start(&config_text(free_port(), 2, zone), io);
        let m = udp_query(t.addr, &query("sip.example.test.", RecordType::A, 1, Some(4096)));
        let edns = m.edns.as_ref().expect("OPT in reply");
        assert_eq!(edns.max_payload(), 1232, "{io:?}");

        let mut q = Message::new(9, MessageType::Query, OpCode::Query);
        q.add_query(Query::query(Name::from_ascii("sip.example.test.").unwrap(), RecordType::A));
        let mut e = Edns::new();
        e.set_version(1);
        q.edns = Some(e);
        let m = udp_query(t.addr, &q.to_vec().unwrap());
        // Extended RCODE 16 is BADVERS in an OPT (hickory names the shared value BADSIG).
        assert_eq!(u16::from(m.metadata.response_code), 16, "{io:?}");
        assert_eq!(m.edns.as_ref().unwrap().version(), 0);
        assert!(m.answers.is_empty());
    }
}

#[test]
fn large_answers_fit_the_payload_over_udp_and_complete_over_tcp() {
    for (io, zone) in backends().into_iter().flat_map(|io| [(io, ""), (io, AUTHORITY)]) {
        let t = TestServer::start(&config_text(free_port(), 40, zone), io);
        let m = udp_query(t.addr, &query("sip.example.test.", RecordType::A, 1, None));
        // 40 A records exceed 512 bytes: as many healthy servers as fit, not TC.
        let fit = (512 - (12 + "sip.example.test.".len() + 1 + 4)) / 16;
        assert!(!m.metadata.truncation, "{io:?}: a shorter set of healthy servers is a whole answer");
        let got = addresses(&m);
        let distinct: std::collections::BTreeSet<_> = got.iter().collect();
        assert_eq!((got.len(), distinct.len()), (fit, fit), "{io:?}: {got:?}");
        let m = udp_query(t.addr, &query("sip.example.test.", RecordType::A, 2, Some(1232)));
        assert!(!m.metadata.truncation);
        assert_eq!(addresses(&m).len(), 40, "EDNS 1232 fits 40 A records");

        // SRV without EDNS: the answers fit, the glue does not; no TC needed (RFC 2181 §9).
        let m = udp_query(t.addr, &query("_sip._udp.sip.example.test.", RecordType::SRV, 3, None));
        assert!(m.metadata.truncation || m.answers.len() == 40, "either complete answers or TC");

        let mut s = TcpStream::connect(t.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let replies = tcp_exchange(
            &mut s,
            &[
                query("sip.example.test.", RecordType::A, 4, None),
                query("_sip._udp.sip.example.test.", RecordType::SRV, 5, None),
            ],
        );
        let a = Message::from_vec(&replies[0]).unwrap();
        assert_eq!((a.metadata.id, a.metadata.truncation, addresses(&a).len()), (4, false, 40));
        let srv = Message::from_vec(&replies[1]).unwrap();
        assert_eq!((srv.metadata.id, srv.answers.len(), srv.additionals.len()), (5, 40, 40));
    }
}

#[test]
fn hosts_file_names_are_answered_with_ptr() {
    let dir = std::env::temp_dir().join(format!("dnlb-hosts-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("hosts"), "192.0.2.10 proxy.example.test proxy-alias.example.test\n2001:db8::10 proxy.example.test\n127.0.0.99 sip.example.test # a service name wins\n").unwrap();
    let text =
        config_text(free_port(), 2, &format!("\n[hosts]\nfile = \"{}\"\nttl = 300\n", dir.join("hosts").display()));
    for io in backends() {
        let t = TestServer::start(&text, io);
        let m = udp_query(t.addr, &query("Proxy.Example.Test.", RecordType::A, 1, None));
        assert_eq!(addresses(&m), vec!["192.0.2.10".parse::<IpAddr>().unwrap()], "{io:?}");
        assert!(m.answers.iter().all(|r| r.ttl == 300));
        let m = udp_query(t.addr, &query("proxy.example.test.", RecordType::AAAA, 2, None));
        assert_eq!(addresses(&m), vec!["2001:db8::10".parse::<IpAddr>().unwrap()]);
        let m = udp_query(t.addr, &query("10.2.0.192.in-addr.arpa.", RecordType::PTR, 3, None));
        match &m.answers[0].data {
            RData::PTR(p) => assert_eq!(p.0.to_ascii(), "proxy.example.test."),
            other => panic!("not PTR: {other:?}"),
        }
        let m = udp_query(t.addr, &query("sip.example.test.", RecordType::A, 4, None));
        assert!(!addresses(&m).contains(&"127.0.0.99".parse::<IpAddr>().unwrap()), "the SIP service keeps its answers");
    }
    let _cleanup = std::fs::remove_dir_all(&dir);
}

/// RFC 8482: ANY over UDP gets one small synthesized HINFO (no amplification); over TCP, where
/// the source is proven, the A set.
#[test]
fn any_is_minimal_over_udp() {
    for (io, zone) in backends().into_iter().flat_map(|io| [(io, ""), (io, AUTHORITY)]) {
        let t = TestServer::start(&config_text(free_port(), 3, zone), io);
        let q = query("sip.example.test.", RecordType::ANY, 9, Some(1232));
        let m = udp_query(t.addr, &q);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{io:?}");
        assert_eq!(m.answers.len(), 1, "{io:?}: {m:?}");
        match &m.answers[0].data {
            RData::HINFO(h) => assert_eq!((&h.cpu[..], &h.os[..]), (&b"RFC8482"[..], &b""[..])),
            other => panic!("{io:?}: {other:?}"),
        }
        assert_eq!(m.answers[0].name, Name::from_ascii("sip.example.test.").unwrap());
        let reply = udp_raw(t.addr, &q, Duration::from_secs(2)).unwrap();
        assert!(reply.len() <= q.len() + 40, "{io:?}: {} bytes for a {}-byte query", reply.len(), q.len());
        let mut s = TcpStream::connect(t.addr).unwrap();
        let m = Message::from_vec(&tcp_exchange(&mut s, &[q])[0]).unwrap();
        assert_eq!(addresses(&m).len(), 3, "{io:?}: over TCP, the A set");
    }
}
