//! Fuzzes the SIP reply path: bytes from the network → TCP framing → rsip → verdict checks.
//! Any panic is a failure; rsip must never be reached with input that can make it panic.
#![no_main]

use dnlb::config::ProbeMethod;
use dnlb::probe::sip::{check_reply, message_len, ProbeId};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The identity the seed corpus replies to.
    let id = ProbeId::new([1, 2, 3, 4, 5], 7, ProbeMethod::Options);
    let _verdict = check_reply(data, &id);
    if let Some(len) = message_len(data) {
        assert!(len >= 4);
    }
});
