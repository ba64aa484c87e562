//! Starts a real `serve` on loopback ports it picks, with a policy directory it owns.
#![allow(dead_code)]

pub mod ext;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use meshguard_policy::MeshConfig;
use meshguard_server::{dlog::Sink, Bound, ServeConfig, State};

pub const AUTHN_DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../meshguard-authn/tests/data");
pub const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/policies");

pub fn token(name: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{AUTHN_DATA}/tokens.json")).expect("tokens"),
    )
    .expect("json");
    v["tokens"][name].as_str().expect("token").to_owned()
}

/// A workload `demo/app=shop` that requires a JWT from https://issuer.test with role admin, and
/// copies the role claim to `x-role`.
pub fn demo_policy() -> String {
    let jwks = std::fs::read_to_string(format!("{AUTHN_DATA}/jwks.json"))
        .expect("jwks")
        .replace('\n', " ")
        .replace('\'', "''");
    format!(
        "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: demo-jwt, namespace: demo}}
spec:
  selector: {{matchLabels: {{app: shop}}}}
  jwtRules:
  - issuer: https://issuer.test
    audiences: [api.test]
    jwks: '{jwks}'
    outputClaimToHeaders:
    - {{header: x-role, claim: role}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: admins-only, namespace: demo}}
spec:
  selector: {{matchLabels: {{app: shop}}}}
  rules:
  - from:
    - source: {{requestPrincipals: [\"https://issuer.test/*\"]}}
    when:
    - key: request.auth.claims[role]
      values: [\"admin\"]
"
    )
}

/// A fresh policy directory: the bundled examples plus the demo workload.
pub fn policy_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("meshguard-server-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    for e in std::fs::read_dir(EXAMPLES).expect("examples") {
        let p = e.expect("entry").path();
        std::fs::copy(&p, dir.join(p.file_name().expect("name"))).expect("copy");
    }
    std::fs::write(dir.join("demo.yaml"), demo_policy()).expect("write");
    dir
}

pub struct Running {
    pub bound: Bound,
    pub state: Arc<State>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(15), t).await;
        }
    }
}

pub async fn start(dir: &Path, reload_interval: Duration) -> Running {
    start_with(dir, reload_interval, |_| {}).await
}

pub async fn start_with(
    dir: &Path,
    reload_interval: Duration,
    tweak: impl FnOnce(&mut ServeConfig),
) -> Running {
    let state = State::new(
        meshguard_engine::Files(vec![dir.to_owned()]),
        MeshConfig::default(),
        reqwest::Client::new(),
    )
    .expect("policies load");
    let cfg = ServeConfig {
        grpc: Some("127.0.0.1:0".parse().expect("addr")),
        http: Some("127.0.0.1:0".parse().expect("addr")),
        admin: Some("127.0.0.1:0".parse().expect("addr")),
        decision_log: Sink::Off,
        reload_interval,
        // Istio's allow-by-default, which these tests pin where no ALLOW policy applies;
        // meshguard's default deny is tested in crates/meshguard/tests/defaults.rs.
        default_deny: false,
        ..ServeConfig::default()
    };
    let mut cfg = cfg;
    tweak(&mut cfg);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<Bound>();
    let st = state.clone();
    let task = tokio::spawn(async move {
        let mut ready = Some(ready_tx);
        meshguard_server::serve(
            st,
            cfg,
            async move {
                let _ = stop_rx.await;
            },
            move |b| {
                if let Some(r) = ready.take() {
                    let _ = r.send(b.clone());
                }
            },
        )
        .await
        .expect("serve");
    });
    let bound = ready_rx.await.expect("ready");
    Running {
        bound,
        state,
        stop: Some(stop_tx),
        task: Some(task),
    }
}
