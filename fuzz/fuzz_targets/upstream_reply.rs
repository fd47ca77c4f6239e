//! Fuzzes the upstream reply path: bytes from an upstream → acceptance checks → cache insert →
//! a cached answer written for a client. Any panic is a failure.
#![no_main]

use std::time::{Duration, Instant};

use dnlb::dns::answer::DnsTransport;
use dnlb::dns::query::{parse, MAX_NAME_LEN};
use dnlb::relay::cache::{key_bytes, Cache, CachePolicy, KeyHasher, Lookup, KEY_MAX};
use dnlb::relay::upstream::{accept, Sent};
use libfuzzer_sys::fuzz_target;

const QUERY: &[u8] = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x01\x03wWw\x07example\x04test\x00\x00\x01\x00\x01\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00";

fuzz_target!(|data: &[u8]| {
    let upstream = "127.0.0.53:53".parse().unwrap();
    let question = QUERY[12..12 + 22].to_vec();
    let id = u16::from_be_bytes([data.first().copied().unwrap_or(0), data.get(1).copied().unwrap_or(0)]);
    let sent = Sent { upstream, id, question, exact_case: data.len() % 2 == 0 };
    let _verdict = accept(data, upstream, &sent);
    let mut cache = Cache::new(CachePolicy::bounded(4, 16_384, 3600));
    let mut buf = [0u8; KEY_MAX];
    let key = key_bytes(b"\x03www\x07example\x04test\x00", 1, 1, false, false, &mut buf);
    let hash = KeyHasher::new().hash(key);
    let now = Instant::now();
    if cache.insert(hash, key, data, now).is_some() {
        let mut name = [0u8; MAX_NAME_LEN];
        let query = parse(QUERY, &mut name).expect("the fixed query parses");
        let mut out = vec![0u8; 65_535];
        for transport in [DnsTransport::Udp { max_payload: 1232 }, DnsTransport::Tcp] {
            if let Lookup::Fresh { len, .. } =
                cache.lookup(hash, key, QUERY, &query, transport, &mut out, now + Duration::from_secs(1))
            {
                assert!(len <= out.len());
            }
        }
    }
});
