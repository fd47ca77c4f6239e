//! The fuzz seeds for the SIP reply target are true replies to the fuzz target's probe identity,
//! to an IPv4 and to an IPv6 probe; this test keeps them so (regenerate with
//! `DNLB_WRITE_SEEDS=1 cargo test --test fuzz_seeds`).

use dnlb::config::{ProbeMethod, Transport};
use dnlb::probe::sip::{check_reply, request, ProbeId, Reply};

mod common;

#[test]
fn sip_reply_seeds_match_the_fuzz_identity() {
    let id = ProbeId::new([1, 2, 3, 4, 5], 7, ProbeMethod::Options);
    // (seed file, server, local address, transport, what the server adds to the top Via)
    let seeds = [
        ("ok-200.txt", "127.0.0.11:5060", "127.0.0.1:40000", Transport::Udp, ""),
        // As kamailio answers over IPv6: rport filled in, received without brackets (RFC 5118).
        ("ok-200-ipv6.txt", "[2001:db8::10]:5060", "[2001:db8::1]:40000", Transport::Tcp, ";received=2001:db8::1"),
    ];
    for (file, target, local, transport, via) in seeds {
        let req = request(&id, target.parse().unwrap(), transport, local.parse().unwrap()).unwrap();
        let req = String::from_utf8(req).unwrap().replacen(";rport;", ";rport=40000;", usize::from(!via.is_empty()));
        let req = req.replacen("oc-algo=\"loss\"\r\n", &format!("oc-algo=\"loss\"{via}\r\n"), 1);
        let reply = common::sip::reply(&req, "200 OK", "Retry-After: 5\r\n");
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/sip_reply").join(file);
        if std::env::var_os("DNLB_WRITE_SEEDS").is_some() {
            std::fs::write(&path, &reply).unwrap();
        }
        let seed = std::fs::read(&path).expect("seed file");
        assert_eq!(String::from_utf8_lossy(&seed), reply, "{file}");
        assert_eq!(check_reply(&seed, &id), Ok(Reply::Final { code: 200, retry_after: Some(5) }), "{file}");
    }
}

/// The query target's configuration (a plain service and a zone apex) loads: a fuzz run that
/// could not start would find nothing.
#[test]
fn the_query_fuzz_configuration_loads() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/fuzz_targets/query.rs");
    let source = std::fs::read_to_string(path).unwrap();
    let start = source.find("r#\"").expect("a raw string") + 3;
    let text = &source[start..start + source[start..].find("\"#").expect("its end")];
    let config = dnlb::config::Config::parse(text).unwrap_or_else(|p| panic!("{p:?}"));
    assert!(config.services.iter().any(|s| s.authority.is_some()), "a zone is fuzzed too");
    dnlb::snapshot::Snapshot::build(&config, &dnlb::snapshot::Serving::all_up(&config), 0).unwrap();
}

/// Seeds for the XDP frame target: a checksummed query frame per shape (IPv4, IPv6, VLAN), which
/// random bytes would almost never reach past the checksum checks.
#[test]
fn xdp_frame_seeds_are_frames_the_parser_takes() {
    use dnlb::io::xdp::frame::parse;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/xdp_frame");
    let query = common::query("sip.example.test.", hickory_proto::rr::RecordType::A, 7, Some(1232));
    for (file, client, server, vlan) in [
        ("v4.bin", "198.18.0.2:40000", "198.18.0.1:53", None),
        ("v6.bin", "[fd00:19::2]:40000", "[fd00:19::1]:53", None),
        ("v4-vlan.bin", "198.18.0.2:40000", "198.18.0.1:53", Some(0x0064)),
    ] {
        let client: std::net::SocketAddr = client.parse().unwrap();
        let frame = common::query_frame(client, server.parse().unwrap(), vlan, &query);
        if std::env::var_os("DNLB_WRITE_SEEDS").is_some() {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(file), &frame).unwrap();
        }
        let seed = std::fs::read(dir.join(file)).expect("seed file");
        assert_eq!(seed, frame, "{file}");
        assert_eq!(parse(&seed).unwrap().peer, client, "{file}");
    }
}
