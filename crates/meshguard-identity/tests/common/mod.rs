//! Shared test harness: a CA in a fresh temporary directory and an agent serving the Workload
//! API on a Unix socket in that directory.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use meshguard_identity::agent::pb::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use meshguard_identity::agent::{Agent, Entry, Selector};
use meshguard_identity::{Ca, KeyType, SpiffeId};
use tonic::transport::{Channel, Endpoint};

pub fn my_uid() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|u| u.parse().ok())
        .expect("uid")
}

pub fn entry(id: &SpiffeId, uid: u32) -> Entry {
    Entry {
        spiffe_id: id.clone(),
        selectors: vec![Selector::Uid(uid)],
    }
}

pub struct TestAgent {
    pub dir: PathBuf,
    pub sock: PathBuf,
    pub agent: Agent,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// Starts an agent for trust domain cluster.local with `entries`, in a directory named after
/// `tag` (world-readable, so processes under other uids can reach the socket).
pub async fn start(tag: &str, entries: Vec<Entry>, ttl: Duration) -> TestAgent {
    let dir = std::env::temp_dir().join(format!("meshguard-agent-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // Created before the CA (which makes its own directories 0700) so other uids can reach
    // the socket.
    std::fs::create_dir_all(&dir).expect("dir");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let ca = Ca::init(&dir.join("ca"), "cluster.local", KeyType::EcdsaP256).expect("ca");
    let agent = Agent::new(ca, entries, ttl).expect("agent");
    let sock = dir.join("agent.sock");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let (a, s) = (agent.clone(), sock.clone());
    tokio::spawn(async move {
        a.serve_uds(&s, async {
            let _ = rx.await;
        })
        .await
        .expect("serve");
    });
    for _ in 0..200 {
        if sock.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    TestAgent {
        dir,
        sock,
        agent,
        stop: Some(tx),
    }
}

/// A tonic client of the Workload API over the socket.
pub async fn client(sock: PathBuf) -> SpiffeWorkloadApiClient<Channel> {
    let ch = Endpoint::try_from("http://localhost")
        .expect("endpoint")
        .connect_with_connector(tower::service_fn(move |_| {
            let s = sock.clone();
            async move { tokio::net::UnixStream::connect(s).await.map(TokioIo::new) }
        }))
        .await
        .expect("connect");
    SpiffeWorkloadApiClient::new(ch)
}

pub fn with_header<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("workload.spiffe.io", "true".parse().expect("header"));
    r
}
