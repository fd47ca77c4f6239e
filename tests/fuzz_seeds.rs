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
