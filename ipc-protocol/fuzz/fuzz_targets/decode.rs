//! Fuzz target: the frame decoder and the CALL/REPLY meta split must never panic, loop or
//! over-allocate on untrusted bytes. Run: `cd ipc-protocol && cargo +nightly fuzz run decode`.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use oxbus_ipc::{CallMetaIn, FrameDecoder, Kind, ReplyMeta};

fuzz_target!(|data: &[u8]| {
    let dec = FrameDecoder::with_max_payload(1 << 20);
    let mut buf = BytesMut::from(data);
    while let Ok(Some(frame)) = dec.decode(&mut buf) {
        if matches!(frame.kind, Kind::Call | Kind::Reply) {
            if let Ok((meta, _body)) = frame.split_meta() {
                let _ = serde_json::from_slice::<CallMetaIn>(&meta);
                let _ = serde_json::from_slice::<ReplyMeta>(&meta);
            }
        }
    }
});
