//! Property tests: any frame round-trips through the encoder and the decoder, whatever way
//! the bytes are split into reads, and arbitrary bytes never panic the decoder.

use bytes::{Bytes, BytesMut};
use oxbus_ipc::*;
use proptest::prelude::*;

fn kind() -> impl Strategy<Value = Kind> {
    prop::sample::select(Kind::ALL.to_vec())
}

proptest! {
    #[test]
    fn frames_round_trip_across_any_split(
        frames in prop::collection::vec(
            (kind(), prop::bool::ANY, any::<u32>(), prop::collection::vec(any::<u8>(), 0..300)),
            1..8),
        chunk in 1usize..64,
    ) {
        let frames: Vec<Frame> = frames.into_iter().map(|(k, asy, s, p)| Frame {
            kind: k, flags: if asy { FLAG_ASYNC } else { 0 }, stream: s, payload: Bytes::from(p),
        }).collect();
        let mut wire = BytesMut::new();
        for f in &frames { f.encode(&mut wire); }
        let dec = FrameDecoder::default();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for piece in wire.chunks(chunk) {
            buf.extend_from_slice(piece);
            while let Some(f) = dec.decode(&mut buf).unwrap() { got.push(f); }
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(got, frames);
    }

    #[test]
    fn meta_frames_round_trip(meta in prop::collection::vec(any::<u8>(), 0..200),
                              body in prop::collection::vec(any::<u8>(), 0..500),
                              stream in any::<u32>()) {
        let mut wire = BytesMut::new();
        encode_meta_frame(&mut wire, Kind::Reply, 0, stream, &meta, &body).unwrap();
        let f = FrameDecoder::default().decode(&mut wire).unwrap().unwrap();
        let (m, b) = f.split_meta().unwrap();
        prop_assert_eq!(&m[..], &meta[..]);
        prop_assert_eq!(&b[..], &body[..]);
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..512)) {
        let dec = FrameDecoder::with_max_payload(1 << 16);
        let mut buf = BytesMut::from(&data[..]);
        while let Ok(Some(f)) = dec.decode(&mut buf) {
            let _ = f.split_meta();
        }
    }
}
