//! Fuzzes the XDP path's frame parser: arbitrary bytes off an XSK's rx ring. It must never
//! panic; a frame it takes must name a payload inside the frame, and the reply headers written
//! for that path must parse back as the query turned around (unless the query's destination,
//! the reply's source, is one no reply may come from: the XDP program only ever redirects
//! frames to the host's own addresses).
#![no_main]

use dnlb::io::xdp::frame::{parse, write_headers, FrameError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(q) = parse(data) else { return };
    assert!(q.payload.start <= q.payload.end && q.payload.end <= data.len());
    assert_eq!(q.payload.start, q.path.header_len());
    // A reply of the query's own payload, written in a copy of the frame.
    let mut frame = data.to_vec();
    let n = q.payload.len();
    let total = write_headers(&mut frame, &q.path, q.peer, n).expect("the frame holds its own headers and payload");
    let back = match parse(&frame[..total]) {
        Ok(back) => back,
        Err(e) => {
            assert_eq!(e, FrameError::Martian, "a reply dnlb writes parses");
            return;
        }
    };
    assert_eq!(back.peer.ip(), q.path.local);
    assert_eq!(back.peer.port(), q.path.local_port);
    assert_eq!(back.path.local, q.peer.ip());
    assert_eq!(&frame[back.payload], &data[q.payload]);
});
