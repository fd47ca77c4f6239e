//! The fuzz seed for the SIP reply target is a true reply to the fuzz target's probe identity;
//! this test keeps it so (regenerate with `DNLB_WRITE_SEEDS=1 cargo test --test fuzz_seeds`).

use dnlb::config::{ProbeMethod, Transport};
use dnlb::probe::sip::{check_reply, request, ProbeId, Reply};

mod common;

#[test]
fn sip_reply_seed_matches_the_fuzz_identity() {
    let id = ProbeId::new([1, 2, 3, 4, 5], 7, ProbeMethod::Options);
    let req = request(&id, "127.0.0.11:5060".parse().unwrap(), Transport::Udp, "127.0.0.1:40000".parse().unwrap());
    let reply = common::sip::reply(std::str::from_utf8(&req).unwrap(), "200 OK", "Retry-After: 5\r\n");
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/sip_reply/ok-200.txt");
    if std::env::var_os("DNLB_WRITE_SEEDS").is_some() {
        std::fs::write(&path, &reply).unwrap();
    }
    let seed = std::fs::read(&path).expect("seed file");
    assert_eq!(seed, reply.as_bytes());
    assert_eq!(check_reply(&seed, &id), Ok(Reply::Final { code: 200, retry_after: Some(5) }));
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
