//! A real Kubernetes control plane for the tests: etcd and kube-apiserver built from Go modules
//! by scripts/peers/kube.sh into target/peers/, started here on loopback ports the test picks,
//! with a static token file (an admin in system:masters), a service-account signing key, and
//! the serving certificate kube-apiserver generates for itself. No controller manager runs:
//! Deployments are stored but start no pods, which is all these tests need.
//!
//! Under CI=true a missing binary fails the test; elsewhere the test is skipped with a note.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const KUBE_VERSION: &str = include_str!("../../../../scripts/peers/kubernetes.version");
const ETCD_VERSION: &str = include_str!("../../../../scripts/peers/etcd.version");
const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
pub const ADMIN_TOKEN: &str = "meshguard-test-admin-token";

fn peers() -> PathBuf {
    Path::new(ROOT).join("target/peers")
}

pub fn apiserver_bin() -> PathBuf {
    peers().join(format!("kube-{}/kube-apiserver", KUBE_VERSION.trim()))
}

pub fn kubectl_bin() -> PathBuf {
    peers().join(format!("kube-{}/kubectl", KUBE_VERSION.trim()))
}

pub fn etcd_bin() -> PathBuf {
    peers().join(format!("etcd-{}/etcd", ETCD_VERSION.trim()))
}

/// The repository root (deploy/, examples/).
pub fn root() -> PathBuf {
    Path::new(ROOT).to_owned()
}

/// Whether the control-plane binaries are here; under CI=true their absence is a failure.
pub fn available(test: &str) -> bool {
    let missing: Vec<PathBuf> = [apiserver_bin(), kubectl_bin(), etcd_bin()]
        .into_iter()
        .filter(|p| !p.exists())
        .collect();
    if missing.is_empty() {
        return true;
    }
    let msg = format!(
        "{test}: Kubernetes test peers missing ({}); build them with `bash scripts/peers/kube.sh`",
        missing
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{msg}");
    }
    eprintln!("skipping: {msg}");
    false
}

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A port outside the kernel's ephemeral range (so parallel tests' port-0 binds cannot take it
/// between the pick and the server's bind), free when picked.
pub fn port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let base = 12_000 + (std::process::id() % 400) as u16 * 20;
    loop {
        let p = base + NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst) % 8_000;
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
}

pub struct Cluster {
    pub dir: PathBuf,
    /// The admin's kubeconfig.
    pub kubeconfig: PathBuf,
    pub server: String,
    etcd: Kill,
    apiserver: Option<Kill>,
    api_args: Vec<String>,
}

impl Cluster {
    /// Starts etcd and kube-apiserver and waits until the API server is ready.
    pub fn start(tag: &str) -> Cluster {
        let dir = std::env::temp_dir().join(format!("meshguard-kube-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("cluster dir");
        let run = |cmd: &mut Command| {
            let out = cmd.output().expect("run openssl");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(Command::new("openssl")
            .args([
                "ecparam",
                "-genkey",
                "-name",
                "prime256v1",
                "-noout",
                "-out",
            ])
            .arg(dir.join("sa.key")));
        run(Command::new("openssl")
            .args(["ec", "-pubout", "-in"])
            .arg(dir.join("sa.key"))
            .arg("-out")
            .arg(dir.join("sa.pub")));
        std::fs::write(
            dir.join("tokens.csv"),
            format!("{ADMIN_TOKEN},admin,uid-admin,\"system:masters\"\n"),
        )
        .expect("token file");

        let (client, peer) = (port(), port());
        let log = std::fs::File::create(dir.join("etcd.log")).expect("etcd log");
        let etcd = Command::new(etcd_bin())
            .arg("--data-dir")
            .arg(dir.join("etcd"))
            .args([
                "--name",
                "default",
                "--unsafe-no-fsync",
                "--log-level",
                "warn",
            ])
            .arg(format!("--listen-client-urls=http://127.0.0.1:{client}"))
            .arg(format!("--advertise-client-urls=http://127.0.0.1:{client}"))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
            ))
            .arg(format!("--initial-cluster=default=http://127.0.0.1:{peer}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start etcd");
        let secure = port();
        let server = format!("https://127.0.0.1:{secure}");
        let api_args = vec![
            format!("--etcd-servers=http://127.0.0.1:{client}"),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={secure}"),
            format!("--cert-dir={}", dir.join("certs").display()),
            format!("--token-auth-file={}", dir.join("tokens.csv").display()),
            "--authorization-mode=RBAC".into(),
            "--service-account-issuer=https://kubernetes.default.svc".into(),
            format!(
                "--service-account-key-file={}",
                dir.join("sa.pub").display()
            ),
            format!(
                "--service-account-signing-key-file={}",
                dir.join("sa.key").display()
            ),
            "--service-cluster-ip-range=10.0.0.0/24".into(),
            // A loopback advertise address cannot be written into the kubernetes Endpoints.
            "--endpoint-reconciler-type=none".into(),
            "--enable-priority-and-fairness=false".into(),
        ];
        let kubeconfig = dir.join("admin.kubeconfig");
        write_kubeconfig(
            &kubeconfig,
            &server,
            &dir.join("certs/apiserver.crt"),
            ADMIN_TOKEN,
        );
        let mut c = Cluster {
            dir,
            kubeconfig,
            server,
            etcd: Kill(etcd),
            apiserver: None,
            api_args,
        };
        c.start_apiserver();
        c
    }

    /// (Re)starts kube-apiserver on the same port and etcd, and waits until it is ready.
    pub fn start_apiserver(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("apiserver.log"))
            .expect("apiserver log");
        let child = Command::new(apiserver_bin())
            .args(&self.api_args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start kube-apiserver");
        self.apiserver = Some(Kill(child));
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let out = self.kubectl(&["get", "--raw", "/readyz"]);
            if out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok" {
                break;
            }
            if let Some(Kill(c)) = self.apiserver.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    panic!(
                        "kube-apiserver exited ({status}):\n{}",
                        tail(&self.dir.join("apiserver.log"))
                    );
                }
            }
            assert!(
                Instant::now() < deadline,
                "kube-apiserver not ready in 120 s:\n{}",
                tail(&self.dir.join("apiserver.log"))
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops kube-apiserver (etcd keeps the data).
    pub fn stop_apiserver(&mut self) {
        self.apiserver = None;
    }

    /// `kubectl ARGS` as the admin.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        Command::new(kubectl_bin())
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .args(args)
            .output()
            .expect("run kubectl")
    }

    /// `kubectl ARGS`, which must succeed; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl ARGS -f -` with `yaml` on standard input; the output (status checked).
    pub fn stdin(&self, args: &[&str], yaml: &str) -> Output {
        use std::io::Write;
        let mut child = Command::new(kubectl_bin())
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .args(args)
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run kubectl");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(yaml.as_bytes())
            .expect("write yaml");
        child.wait_with_output().expect("kubectl")
    }

    /// `kubectl apply -f -`, which must succeed.
    pub fn apply(&self, yaml: &str) {
        let out = self.stdin(&["apply"], yaml);
        assert!(
            out.status.success(),
            "kubectl apply: {}{}\n{yaml}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The CRDs and meshguard's own manifests (namespace, service account, RBAC), and a
    /// kubeconfig that acts as meshguard's service account with a token the API server issued:
    /// what a replica in the cluster would have.
    pub fn install_meshguard(&self) -> PathBuf {
        let deploy = root().join("deploy");
        self.ok(&[
            "apply",
            "-f",
            &deploy.join("crds.yaml").display().to_string(),
        ]);
        self.ok(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/authorizationpolicies.security.istio.io",
            "crd/peerauthentications.security.istio.io",
            "crd/requestauthentications.security.istio.io",
            "crd/authconfigs.enterprise.gloo.solo.io",
        ]);
        self.ok(&[
            "apply",
            "-f",
            &deploy.join("meshguard.yaml").display().to_string(),
        ]);
        self.service_account_kubeconfig("meshguard-system", "meshguard")
    }

    /// A kubeconfig for a service account, with a token from the TokenRequest API.
    pub fn service_account_kubeconfig(&self, namespace: &str, name: &str) -> PathBuf {
        let token = self.ok(&["create", "token", name, "-n", namespace, "--duration=1h"]);
        let path = self.dir.join(format!("{namespace}-{name}.kubeconfig"));
        write_kubeconfig(
            &path,
            &self.server,
            &self.dir.join("certs/apiserver.crt"),
            token.trim(),
        );
        path
    }

    /// The Events on an object, as `reason: message` lines.
    pub fn events(&self, namespace: &str, name: &str) -> Vec<String> {
        let out = self.ok(&[
            "get",
            "events",
            "-n",
            namespace,
            "--field-selector",
            &format!("involvedObject.name={name}"),
            "-o",
            "json",
        ]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("events json");
        v["items"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .map(|e| {
                        format!(
                            "{}: {}",
                            e["reason"].as_str().unwrap_or(""),
                            e["message"].as_str().unwrap_or("")
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn write_kubeconfig(path: &Path, server: &str, ca: &Path, token: &str) {
    std::fs::write(
        path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {server}\n    certificate-authority: {}\nusers:\n- name: user\n  user:\n    token: {token}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: user\ncurrent-context: test\n",
            ca.display()
        ),
    )
    .expect("write kubeconfig");
}

fn tail(p: &Path) -> String {
    let s = std::fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}
