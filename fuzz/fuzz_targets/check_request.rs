//! Envoy ext_authz v3 CheckRequest bytes as the gRPC listener receives them: protobuf decoding,
//! then CheckRequest -> engine request (labels, namespace, header lines, raw header bytes, body,
//! context extensions), decided with the bundled example policies.
#![no_main]

#[path = "../common/mod.rs"]
mod common;

use envoy_types::ext_authz::v3::pb::CheckRequest;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(cr) = CheckRequest::decode(data) else {
        return;
    };
    let st = common::state();
    let g = st.current();
    if let Ok(req) = meshguard_envoy::request_from_check(cr, None, g.set.mesh()) {
        let _ = g.set.evaluate(&req, &req.identity());
        // What a pass-through step would send on: encoding never panics either.
        let _ = meshguard_envoy::to_check_request(&req);
    }
});
