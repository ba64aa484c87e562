//! The Kubernetes workload attestor of `meshguard agent --kubernetes`: which pod a calling process
//! belongs to (from its cgroup), and that pod's namespace, service account, name, labels and node
//! (from the API server), as the selectors SPIRE's k8s attestor reports (`k8s:ns:shop`,
//! `k8s:sa:web`, `k8s:pod-label:app:web`, ...).
//!
//! Pods are watched (on this node with `spec.nodeName`, as a DaemonSet agent does) and kept in
//! memory, so an attestation is a map lookup, never an API call; a pod that the watch has not
//! seen yet gets no selectors until it has.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use meshguard_identity::agent::WorkloadAttestor;

use crate::KubeError;

#[derive(Debug, Clone)]
struct PodInfo {
    namespace: String,
    name: String,
    service_account: String,
    node: String,
    labels: Vec<(String, String)>,
}

/// Pods by UID, from a watch.
pub struct PodAttestor {
    pods: Arc<RwLock<HashMap<String, PodInfo>>>,
    proc_root: PathBuf,
    synced: tokio::sync::watch::Receiver<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for PodAttestor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The pod UID in a process's `/proc/<pid>/cgroup`: the cgroupfs layout
/// (`/kubepods/burstable/pod<uid>/<container>`) and the systemd one
/// (`/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_with_underscores>.slice/...`).
pub fn pod_uid_from_cgroup(text: &str) -> Option<String> {
    for line in text.lines() {
        let path = line.splitn(3, ':').nth(2).unwrap_or("");
        if !path.contains("kubepods") {
            continue;
        }
        for segment in path.split('/') {
            let Some(i) = segment.rfind("pod") else {
                continue;
            };
            let rest = &segment[i + 3..];
            let rest = rest.strip_suffix(".slice").unwrap_or(rest);
            let uid = rest.replace('_', "-");
            let shape = uid.len() == 36
                && uid.char_indices().all(|(i, c)| {
                    if [8, 13, 18, 23].contains(&i) {
                        c == '-'
                    } else {
                        c.is_ascii_hexdigit()
                    }
                });
            if shape {
                return Some(uid.to_ascii_lowercase());
            }
        }
    }
    None
}

impl PodAttestor {
    /// Starts watching pods (only `node`'s when given). `proc_root` is where the callers'
    /// `<pid>/cgroup` files are (`/proc`, or the host's /proc mounted into the agent's container).
    pub async fn start(
        kubeconfig: Option<PathBuf>,
        node: Option<String>,
        proc_root: PathBuf,
    ) -> Result<PodAttestor, KubeError> {
        let (client, _) = crate::source::connect(kubeconfig).await?;
        let api: Api<Pod> = Api::all(client);
        let mut config = watcher::Config::default();
        if let Some(n) = &node {
            config = config.fields(&format!("spec.nodeName={n}"));
        }
        let pods: Arc<RwLock<HashMap<String, PodInfo>>> = Arc::default();
        let (tx, synced) = tokio::sync::watch::channel(false);
        let map = pods.clone();
        let task = tokio::spawn(async move {
            let mut stream = watcher(api, config).default_backoff().boxed();
            let mut listing: Option<HashMap<String, PodInfo>> = None;
            let mut failing = false;
            while let Some(ev) = stream.next().await {
                let ev = match ev {
                    Ok(e) => {
                        if failing {
                            tracing::info!("pod watch recovered");
                            failing = false;
                        }
                        e
                    }
                    Err(e) => {
                        if !failing {
                            tracing::warn!(error = %e, "pod watch failing; retrying (known pods keep attesting)");
                            failing = true;
                        }
                        continue;
                    }
                };
                match ev {
                    Event::Init => listing = Some(HashMap::new()),
                    Event::InitApply(p) => {
                        if let (Some(l), Some((uid, info))) = (listing.as_mut(), info(&p)) {
                            l.insert(uid, info);
                        }
                    }
                    Event::InitDone => {
                        if let Ok(mut m) = map.write() {
                            *m = listing.take().unwrap_or_default();
                        }
                        tx.send_replace(true);
                    }
                    Event::Apply(p) => {
                        if let (Ok(mut m), Some((uid, info))) = (map.write(), info(&p)) {
                            m.insert(uid, info);
                        }
                    }
                    Event::Delete(p) => {
                        if let (Ok(mut m), Some(uid)) = (map.write(), p.metadata.uid.clone()) {
                            m.remove(&uid);
                        }
                    }
                }
            }
        });
        Ok(PodAttestor {
            pods,
            proc_root,
            synced,
            task,
        })
    }

    /// Waits for the first full list of pods.
    pub async fn wait_synced(&self) {
        let mut rx = self.synced.clone();
        while !*rx.borrow_and_update() {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// How many pods are known.
    pub fn pods(&self) -> usize {
        self.pods.read().map(|m| m.len()).unwrap_or(0)
    }
}

fn info(p: &Pod) -> Option<(String, PodInfo)> {
    let uid = p.metadata.uid.clone()?;
    let spec = p.spec.as_ref();
    let mut labels: Vec<(String, String)> = p
        .metadata
        .labels
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    labels.sort();
    Some((
        uid,
        PodInfo {
            namespace: p.metadata.namespace.clone().unwrap_or_default(),
            name: p.metadata.name.clone().unwrap_or_default(),
            service_account: spec
                .and_then(|s| s.service_account_name.clone())
                .unwrap_or_else(|| "default".to_owned()),
            node: spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
            labels,
        },
    ))
}

impl WorkloadAttestor for PodAttestor {
    fn selectors(&self, pid: i32) -> Vec<String> {
        let path = self.proc_root.join(pid.to_string()).join("cgroup");
        let Some(uid) = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| pod_uid_from_cgroup(&t))
        else {
            return Vec::new();
        };
        let Some(p) = self.pods.read().ok().and_then(|m| m.get(&uid).cloned()) else {
            tracing::debug!(pid, pod_uid = %uid, "caller's pod is not (yet) known");
            return Vec::new();
        };
        let mut out = vec![
            format!("k8s:ns:{}", p.namespace),
            format!("k8s:sa:{}", p.service_account),
            format!("k8s:pod-name:{}", p.name),
            format!("k8s:pod-uid:{uid}"),
        ];
        if !p.node.is_empty() {
            out.push(format!("k8s:node-name:{}", p.node));
        }
        out.extend(
            p.labels
                .iter()
                .map(|(k, v)| format!("k8s:pod-label:{k}:{v}")),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::pod_uid_from_cgroup;

    #[test]
    fn cgroupfs_and_systemd_layouts() {
        let v1 = "12:memory:/kubepods/burstable/pod6f3c1a2b-1111-4222-8333-944445555666/0123abcd\n";
        assert_eq!(
            pod_uid_from_cgroup(v1).as_deref(),
            Some("6f3c1a2b-1111-4222-8333-944445555666")
        );
        let v2 = "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod6F3C1A2B_1111_4222_8333_944445555666.slice/cri-containerd-0123.scope\n";
        assert_eq!(
            pod_uid_from_cgroup(v2).as_deref(),
            Some("6f3c1a2b-1111-4222-8333-944445555666")
        );
        assert_eq!(
            pod_uid_from_cgroup("0::/user.slice/user-0.slice/session-1.scope\n"),
            None
        );
        assert_eq!(pod_uid_from_cgroup("0::/kubepods/podnot-a-uid/x\n"), None);
        assert_eq!(pod_uid_from_cgroup(""), None);
        // A cgroup a container made below its own cannot name another pod: the leftmost pod
        // segment (the runtime's) wins.
        let nested = "0::/kubepods/besteffort/pod6f3c1a2b-1111-4222-8333-944445555666/c1/pod11111111-2222-4333-8444-955555555555\n";
        assert_eq!(
            pod_uid_from_cgroup(nested).as_deref(),
            Some("6f3c1a2b-1111-4222-8333-944445555666")
        );
    }
}
