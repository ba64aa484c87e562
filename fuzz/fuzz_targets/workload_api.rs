//! The SPIFFE Workload API as a workload reaches it: a real agent on a Unix socket (kernel
//! attestation of this process), called over gRPC with messages decoded from the input, with and
//! without the security header. The agent must answer every call (an error status is fine) and
//! never hand out an identity the caller is not registered for.
//!
//! Input: the first byte picks the call (and bit 7 drops the security header); the rest is the
//! protobuf request message.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use libfuzzer_sys::fuzz_target;
use meshguard_identity::agent::pb::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use meshguard_identity::agent::pb::{
    JwtBundlesRequest, JwtsvidRequest, ValidateJwtsvidRequest, X509BundlesRequest, X509svidRequest,
};
use meshguard_identity::agent::{Agent, Entry, Selector};
use meshguard_identity::{Ca, KeyType, SpiffeId};
use prost::Message;
use tonic::transport::{Channel, Endpoint};

const ME: &str = "spiffe://cluster.local/ns/fuzz/sa/me";

struct Harness {
    rt: tokio::runtime::Runtime,
    client: SpiffeWorkloadApiClient<Channel>,
}

fn my_uid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|u| u.parse().ok())
        })
        .expect("uid")
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let dir: PathBuf =
            std::env::temp_dir().join(format!("meshguard-fuzz-agent-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let ca = Ca::init(&dir.join("ca"), "cluster.local", KeyType::EcdsaP256).expect("ca");
        let entries = vec![Entry {
            spiffe_id: SpiffeId::parse(ME).expect("id"),
            selectors: vec![Selector::Uid(my_uid())],
        }];
        let agent = Agent::new(ca, entries, Duration::from_secs(3600)).expect("agent");
        let sock = dir.join("agent.sock");
        let s = sock.clone();
        rt.spawn(async move {
            let _ = agent.serve_uds(&s, std::future::pending::<()>()).await;
        });
        let client = rt.block_on(async {
            for _ in 0..500 {
                if sock.exists() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let ch = Endpoint::try_from("http://localhost")
                .expect("endpoint")
                .connect_with_connector(tower::service_fn(move |_| {
                    let s = sock.clone();
                    async move { tokio::net::UnixStream::connect(s).await.map(TokioIo::new) }
                }))
                .await
                .expect("connect");
            SpiffeWorkloadApiClient::new(ch)
        });
        Harness { rt, client }
    })
}

fn request<T>(msg: T, header: bool) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if header {
        r.metadata_mut()
            .insert("workload.spiffe.io", "true".parse().expect("header"));
    }
    r
}

fuzz_target!(|data: &[u8]| {
    let Some((&op, msg)) = data.split_first() else {
        return;
    };
    let header = op & 0x80 == 0;
    let h = harness();
    let mut c = h.client.clone();
    h.rt.block_on(async move {
        let call = async {
            match op % 5 {
                0 => {
                    let Ok(m) = X509svidRequest::decode(msg) else {
                        return;
                    };
                    if let Ok(s) = c.fetch_x509svid(request(m, header)).await {
                        if let Ok(Some(first)) = s.into_inner().message().await {
                            assert!(first.svids.iter().all(|s| s.spiffe_id == ME));
                        }
                    }
                }
                1 => {
                    let Ok(m) = JwtsvidRequest::decode(msg) else {
                        return;
                    };
                    if let Ok(r) = c.fetch_jwtsvid(request(m, header)).await {
                        assert!(r.get_ref().svids.iter().all(|s| s.spiffe_id == ME));
                    }
                }
                2 => {
                    let Ok(m) = ValidateJwtsvidRequest::decode(msg) else {
                        return;
                    };
                    if let Ok(r) = c.validate_jwtsvid(request(m, header)).await {
                        // Only a token the agent signed validates, and it names our entry.
                        assert_eq!(r.get_ref().spiffe_id, ME);
                    }
                }
                3 => {
                    let Ok(m) = X509BundlesRequest::decode(msg) else {
                        return;
                    };
                    if let Ok(s) = c.fetch_x509_bundles(request(m, header)).await {
                        let _ = s.into_inner().message().await;
                    }
                }
                _ => {
                    let Ok(m) = JwtBundlesRequest::decode(msg) else {
                        return;
                    };
                    if let Ok(s) = c.fetch_jwt_bundles(request(m, header)).await {
                        let _ = s.into_inner().message().await;
                    }
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), call)
            .await
            .expect("the agent answers every call");
    });
});
