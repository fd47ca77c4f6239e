//! Fuzzes the SIP reply path: bytes from the network → TCP framing → rsip → verdict checks.
//! Any panic is a failure; rsip must never be reached with input that can make it panic.
#![no_main]

use dnlb::config::ProbeMethod;
use dnlb::probe::sip::{check_reply, frame, overload, Frame, ProbeId, MAX_MESSAGE, MAX_OC_VALIDITY_MS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The identity the seed corpus replies to.
    let id = ProbeId::new([1, 2, 3, 4, 5], 7, ProbeMethod::Options);
    let _verdict = check_reply(data, &id);
    if let Some(signal) = overload(data) {
        assert!(signal.percent <= 100 && signal.validity_ms <= MAX_OC_VALIDITY_MS);
    }
    // Framing: a complete message is at least the blank line and never past the bound; a
    // resumed search agrees with a fresh one.
    match frame(data, 0) {
        Frame::Complete(len) => assert!((4..=MAX_MESSAGE).contains(&len) && len <= data.len()),
        Frame::Incomplete { scanned } => {
            assert!(scanned <= data.len());
            assert_eq!(frame(data, scanned), Frame::Incomplete { scanned });
        }
        Frame::TooLarge | Frame::Malformed => {}
    }
});
