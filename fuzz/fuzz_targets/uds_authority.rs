//! The Workload API listener's HTTP/2 rewriter (`meshguard_identity::uds_authority`): client
//! bytes after the connection preface, fed in pieces of a size the input picks. Never a panic;
//! what comes out is what h2 reads, so a second pass over it must accept it, replace nothing
//! (every `:authority` left is valid) and give the same bytes (the output is in its fixed point).
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshguard_identity::uds_authority::Rewriter;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fuzz_target!(|data: &[u8]| {
    let Some((&step, frames)) = data.split_first() else {
        return;
    };
    let mut wire = PREFACE.to_vec();
    wire.extend_from_slice(frames);
    let mut r = Rewriter::default();
    let mut out = Vec::new();
    for piece in wire.chunks(usize::from(step).max(1)) {
        if r.feed(piece, &mut out).is_err() {
            return;
        }
    }
    let mut again = Rewriter::default();
    let mut out2 = Vec::new();
    again
        .feed(&out, &mut out2)
        .expect("the rewritten stream is accepted");
    assert_eq!(again.rewritten(), 0, "no invalid :authority is left");
    assert_eq!(out2, out, "rewriting is idempotent");
});
