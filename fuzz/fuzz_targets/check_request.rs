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
    let _ = meshguard_server::grpc::extra_of(&cr);
    if let Ok((req, id)) = meshguard_server::grpc::to_request(&cr, None, g.set.mesh()) {
        let _ = g.set.evaluate(&req, &id);
    }
});
