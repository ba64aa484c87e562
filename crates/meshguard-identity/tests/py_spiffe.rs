//! A real SPIFFE client, the Python `spiffe` package (py-spiffe, from PyPI; scripts/test.sh
//! installs it into target/pyenv), fetches an X.509-SVID and the bundles from the agent socket.
//!
//! grpc C-core sends the percent-encoded socket path as `:authority`, which the h2 crate refuses
//! (hyperium/h2#487). The documented layout that avoids it without patching the client: run the
//! workload with its working directory at the socket's directory and
//! `SPIFFE_ENDPOINT_SOCKET=unix:agent.sock` (a relative path is a valid authority).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use meshguard_identity::agent::{Agent, Entry, Selector};
use meshguard_identity::{Ca, KeyType, SpiffeId};

const SCRIPT: &str = r#"
import json
from spiffe import WorkloadApiClient
with WorkloadApiClient(default_timeout=10) as c:
    svid = c.fetch_x509_svid()
    bundles = c.fetch_x509_bundles()
    print(json.dumps({
        "spiffe_id": str(svid.spiffe_id),
        "chain": len(svid.cert_chain),
        "bundles": sorted(str(b.trust_domain) for b in bundles.bundles),
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

fn my_uid() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|u| u.parse().ok())
        .expect("uid")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn py_spiffe_fetches_an_svid_and_bundles() {
    let Some(py) = python() else {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("the Python `spiffe` package is missing; scripts/test.sh installs it into target/pyenv");
        }
        eprintln!("SKIPPED: python `spiffe` package not installed (run scripts/test.sh)");
        return;
    };
    let dir = std::env::temp_dir().join(format!("meshguard-pyspiffe-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let ca = Ca::init(&dir.join("ca"), "cluster.local", KeyType::EcdsaP256).expect("ca");
    let id = SpiffeId::istio("cluster.local", "py", "client").expect("id");
    let agent = Agent::new(
        ca,
        vec![Entry {
            spiffe_id: id.clone(),
            selectors: vec![Selector::Uid(my_uid())],
        }],
        Duration::from_secs(3600),
    );
    let sock = dir.join("agent.sock");
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let (a, s) = (agent.clone(), sock.clone());
    tokio::spawn(async move {
        a.serve_uds(&s, async {
            let _ = rx.await;
        })
        .await
        .expect("serve");
    });
    for _ in 0..100 {
        if sock.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let out = tokio::task::spawn_blocking(move || {
        Command::new(py)
            .args(["-c", SCRIPT])
            .current_dir(&dir)
            .env("SPIFFE_ENDPOINT_SOCKET", "unix:agent.sock")
            .output()
            .expect("run python")
    })
    .await
    .expect("join");
    assert!(
        out.status.success(),
        "py-spiffe failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json from the client");
    assert_eq!(v["spiffe_id"], id.to_string());
    assert_eq!(v["chain"], 1);
    assert_eq!(v["bundles"], serde_json::json!(["cluster.local"]));
    let _ = stop.send(());
}
