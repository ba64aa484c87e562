//! gRPC server reflection on the ext_authz port, used by a real reflection client: Python's
//! `grpcio-reflection` (PyPI; scripts/test.sh installs it into target/pyenv beside py-spiffe)
//! lists the services, fetches the Check method's descriptors from the server alone (no .proto
//! files on the client, as `grpcurl` works), builds a CheckRequest from them and calls Check.

mod cmd;

use std::path::PathBuf;
use std::process::Command;

const CLIENT: &str = r#"
import json, sys
import grpc
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

channel = grpc.insecure_channel(sys.argv[1])
db = ProtoReflectionDescriptorDatabase(channel)
services = sorted(db.get_services())
pool = descriptor_pool.DescriptorPool(db)
method = pool.FindServiceByName("envoy.service.auth.v3.Authorization").FindMethodByName("Check")
Req = message_factory.GetMessageClass(method.input_type)
Resp = message_factory.GetMessageClass(method.output_type)
check = channel.unary_unary(
    "/envoy.service.auth.v3.Authorization/Check",
    request_serializer=Req.SerializeToString,
    response_deserializer=Resp.FromString,
)
out = {"services": services, "decisions": {}}
for path in sys.argv[2:]:
    req = json_format.ParseDict({"attributes": {
        "source": {"principal": "spiffe://cluster.local/ns/production/sa/frontend"},
        "request": {"http": {"method": "GET", "path": path, "host": "backend",
                             "headers": {":method": "GET", ":path": path}}},
    }}, Req())
    resp = check(req, timeout=10)
    out["decisions"][path] = {
        "grpc_status": resp.status.code,
        "http_status": resp.denied_response.status.code if resp.HasField("denied_response") else None,
    }
print(json.dumps(out))
"#;

fn python() -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/pyenv/bin/python");
    Command::new(&p)
        .args(["-c", "import grpc_reflection"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|_| p)
}

#[test]
fn a_reflection_client_finds_and_calls_check_with_no_proto_files() {
    let Some(py) = python() else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "grpcio-reflection is missing from target/pyenv; scripts/test.sh installs it"
        );
        eprintln!("SKIPPED: grpcio-reflection not installed (run scripts/test.sh)");
        return;
    };
    let s = cmd::serve([
        "--grpc-listen",
        "127.0.0.1:0",
        "--http-listen",
        "off",
        "--admin-listen",
        "127.0.0.1:0",
        "--decision-log",
        "off",
        "--workload",
        "production/app=backend",
    ]);
    assert!(!s.grpc.is_empty(), "{}", s.banner);
    let o = Command::new(py)
        .arg("-c")
        .arg(CLIENT)
        .args([&s.grpc, "/api/v1/users", "/api/admin"])
        .output()
        .expect("python");
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("client JSON");
    let services: Vec<&str> = v["services"]
        .as_array()
        .expect("services")
        .iter()
        .filter_map(|x| x.as_str())
        .collect();
    for want in [
        "envoy.service.auth.v3.Authorization",
        "grpc.health.v1.Health",
        // This client speaks v1alpha; each version lists itself.
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(services.contains(&want), "{want} is listed: {services:?}");
    }
    // The embedded examples: frontend may GET /api/*, and deny-admin refuses /api/admin.
    assert_eq!(v["decisions"]["/api/v1/users"]["grpc_status"], 0, "{v}");
    assert_eq!(v["decisions"]["/api/admin"]["grpc_status"], 7, "{v}");
    assert_eq!(v["decisions"]["/api/admin"]["http_status"], 403, "{v}");
}
