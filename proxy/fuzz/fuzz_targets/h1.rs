//! Fuzz target: the proxy's HTTP/1 head framing and chunked-body follower (`src/h1.rs`)
//! must never panic, and must agree with the reference model (`tests/h1_model`) on where
//! a body ends, whatever the bytes and wherever the reads split them. See docs/FUZZING.md.
//!
//! Input: a first byte `s` whose top two bits choose what the rest is (a chunked body, a
//! request, a response, a chunked body) and whose low three bits are a number of cuts, that
//! many bytes placing the cuts (as fractions of what follows), then the bytes themselves.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../src/h1.rs"]
#[allow(dead_code)]
mod h1;
#[path = "../../tests/h1_model/mod.rs"]
mod h1_model;

fuzz_target!(|data: &[u8]| {
    let Some((&s, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(s & 7).min(rest.len());
    let (cuts, bytes) = rest.split_at(n);
    let cuts: Vec<usize> = cuts
        .iter()
        .map(|&c| bytes.len() * usize::from(c) / 256)
        .collect();
    let outcome = match s >> 6 {
        1 => h1_model::message(bytes, &cuts, true),
        2 => h1_model::message(bytes, &cuts, false),
        _ => h1_model::follow(
            h1::Framing::new(h1::BodyKind::Chunked),
            bytes,
            &cuts,
            h1_model::chunked,
        ),
    };
    if let Err(e) = outcome {
        panic!("h1 disagrees with the model: {e}");
    }
});
