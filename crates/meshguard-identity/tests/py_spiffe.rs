//! A real SPIFFE client, the Python `spiffe` package (py-spiffe, from PyPI; scripts/test.sh
//! installs it into target/pyenv), fetches an X.509-SVID, the X.509 and JWT bundles and a
//! JWT-SVID from the agent socket, verifies the JWT-SVID's signature with the bundle it got
//! (PyJWT + cryptography underneath), and has the agent validate it.
//!
//! grpc C-core sends the percent-encoded socket path as `:authority`, which the h2 crate refuses
//! (hyperium/h2#487, grpc/grpc#38142); the agent's listener replaces such an authority with
//! `localhost` (meshguard_identity::uds_authority), so absolute paths work as users write them.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::{entry, my_uid, start};
use meshguard_identity::SpiffeId;

const SCRIPT: &str = r#"
import json
from spiffe import WorkloadApiClient, JwtSvid
with WorkloadApiClient(default_timeout=10) as c:
    svid = c.fetch_x509_svid()
    bundles = c.fetch_x509_bundles()
    jwt = c.fetch_jwt_svid(audience={"backend"})
    jwt_bundles = c.fetch_jwt_bundles()
    td_bundle = jwt_bundles.get_bundle_for_trust_domain(jwt.spiffe_id.trust_domain)
    verified = JwtSvid.parse_and_validate(jwt.token, td_bundle, {"backend"})
    validated = c.validate_jwt_svid(jwt.token, "backend")
    try:
        JwtSvid.parse_and_validate(jwt.token, td_bundle, {"someone-else"})
        wrong_aud = "accepted"
    except Exception as e:
        wrong_aud = type(e).__name__
    print(json.dumps({
        "spiffe_id": str(svid.spiffe_id),
        "chain": len(svid.cert_chain),
        "bundles": sorted(str(b.trust_domain) for b in bundles.bundles),
        "jwt_sub": str(verified.spiffe_id),
        "jwt_aud": sorted(verified.audience),
        "jwt_authorities": len(td_bundle.jwt_authorities),
        "validated_sub": str(validated.spiffe_id),
        "wrong_aud": wrong_aud,
    }))
"#;

fn python() -> Option<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/pyenv/bin/python");
    let candidates = [
        std::env::var("MESHGUARD_PYTHON").ok().map(PathBuf::from),
        Some(root),
    ];
    candidates.into_iter().flatten().find(|p| {
        Command::new(p)
            .args(["-c", "import spiffe"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn py_spiffe_fetches_and_verifies_x509_and_jwt_svids() {
    let Some(py) = python() else {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("the Python `spiffe` package is missing; scripts/test.sh installs it into target/pyenv");
        }
        eprintln!("SKIPPED: python `spiffe` package not installed (run scripts/test.sh)");
        return;
    };
    let id = SpiffeId::istio("cluster.local", "py", "client").expect("id");
    let t = start(
        "pyspiffe",
        vec![entry(&id, my_uid())],
        Duration::from_secs(3600),
    )
    .await;
    // The socket named as users write it: an absolute path (`unix:///...`, `unix:/...`; grpc
    // C-core sends it as :authority, which the agent's listener turns into `localhost`), and
    // relative to the working directory.
    let abs = t.dir.join("agent.sock");
    for endpoint in [
        format!("unix://{}", abs.display()),
        format!("unix:{}", abs.display()),
        "unix:agent.sock".to_owned(),
    ] {
        let dir = t.dir.clone();
        let ep = endpoint.clone();
        let py = py.clone();
        let out = tokio::task::spawn_blocking(move || {
            Command::new(&py)
                .args(["-c", SCRIPT])
                .current_dir(&dir)
                .env("SPIFFE_ENDPOINT_SOCKET", &ep)
                .output()
                .expect("run python")
        })
        .await
        .expect("join");
        assert!(
            out.status.success(),
            "py-spiffe with SPIFFE_ENDPOINT_SOCKET={endpoint} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("json from the client");
        assert_eq!(v["spiffe_id"], id.to_string(), "{endpoint}");
        assert_eq!(v["chain"], 1);
        assert_eq!(v["bundles"], serde_json::json!(["cluster.local"]));
        assert_eq!(v["jwt_sub"], id.to_string());
        assert_eq!(v["jwt_aud"], serde_json::json!(["backend"]));
        assert_eq!(v["jwt_authorities"], 1);
        assert_eq!(v["validated_sub"], id.to_string());
        assert_ne!(v["wrong_aud"], "accepted");
    }
}
