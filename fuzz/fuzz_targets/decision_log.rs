//! One decision log line as `meshguard simulate` reads it (a file anyone may have edited):
//! JSON into a recorded decision, then into the engine's request, decided with the bundled
//! example policies.
#![no_main]

#[path = "../common/mod.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use meshguard_rollout::Recorded;

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(rec) = Recorded::parse(line) else {
        return;
    };
    let _ = rec.replayable();
    let _ = rec.edge();
    let st = common::state();
    let g = st.current();
    let req = rec.request(g.set.mesh().path_normalization, &["ext-authz".to_owned()]);
    let _ = g.set.evaluate(&req, &req.identity());
});
