//! The request-path normaliser (Envoy's canonicalPath, merge and unescape slashes) under every
//! meshConfig pathNormalization option.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshguard_policy::path::normalize;
use meshguard_policy::PathNormalization;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    for option in [
        PathNormalization::None,
        PathNormalization::Base,
        PathNormalization::MergeSlashes,
        PathNormalization::DecodeAndMergeSlashes,
    ] {
        let _ = normalize(raw, option);
    }
    let _ = meshguard_policy::path::percent_decode_lossy(raw);
});
