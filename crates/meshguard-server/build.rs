//! Compiles the ext_authz protos (proto/README.md) into the FileDescriptorSet served by gRPC
//! reflection, without protoc.

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["envoy/service/auth/v3/external_auth.proto"], ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("ext_authz_fds.bin");
    std::fs::write(out, fds.encode_to_vec())?;
    Ok(())
}
