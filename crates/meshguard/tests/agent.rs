//! `meshguard agent` as a user runs it: a CA made by `meshguard ca init`, registration entries
//! in a YAML file, and a real SPIFFE client (the Rust `spiffe` crate) on the socket. Entries
//! edited while it runs take effect; a broken edit is refused and the last good entries stay.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use spiffe::WorkloadApiClient;

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_meshguard"))
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

fn write_entries(path: &Path, uid: u32) {
    let text = format!(
        "entries:\n- spiffeId: spiffe://cluster.local/ns/prod/sa/web\n  selectors: [\"unix:uid:{uid}\"]\n"
    );
    // Write then rename, as an editor or a ConfigMap update does.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

async fn fetch(sock: &Path) -> Result<String, String> {
    let c = WorkloadApiClient::connect_to(format!("unix:{}", sock.display()))
        .await
        .map_err(|e| e.to_string())?;
    c.fetch_x509_svid()
        .await
        .map(|s| s.spiffe_id().to_string())
        .map_err(|e| e.to_string())
}

async fn fetch_until(sock: &Path, ok: bool) -> Result<String, String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = fetch(sock).await;
        if r.is_ok() == ok || Instant::now() > deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_serves_a_real_client_and_reloads_entries() {
    let dir = std::env::temp_dir().join(format!("meshguard-cli-agent-run-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let ca = dir.join("ca");
    let o = Command::new(bin())
        .args(["ca", "init", "--trust-domain", "cluster.local", "--dir"])
        .arg(&ca)
        .output()
        .expect("ca init");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Entries for another uid first: this process has no identity.
    let entries = dir.join("entries.yaml");
    write_entries(&entries, my_uid().wrapping_add(7));
    let sock = dir.join("agent.sock");
    let log = dir.join("agent.log");
    let _agent = Kill(
        Command::new(bin())
            .arg("agent")
            .arg("--ca-dir")
            .arg(&ca)
            .arg("--entries")
            .arg(&entries)
            .arg("--socket")
            .arg(format!("unix://{}", sock.display()))
            .args(["--entries-interval", "100ms"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("start agent"),
    );
    let start = Instant::now();
    while !sock.exists() && start.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let e = fetch(&sock)
        .await
        .expect_err("no registration for this uid");
    assert!(e.contains("no identity issued"), "{e}");
    // The agent says who was refused: uid, gid and pid, from the kernel.
    let deadline = Instant::now() + Duration::from_secs(10);
    let refused = loop {
        let t = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(l) = t
            .lines()
            .find(|l| l.contains("Workload API caller refused"))
        {
            break l.to_owned();
        }
        assert!(Instant::now() < deadline, "no refusal logged: {t}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(refused.contains(&format!("uid={}", my_uid())), "{refused}");
    assert!(
        refused.contains(&format!("pid={}", std::process::id())),
        "{refused}"
    );

    // The operator registers this uid: the running agent picks it up.
    write_entries(&entries, my_uid());
    let id = fetch_until(&sock, true)
        .await
        .expect("identity after reload");
    assert_eq!(id, "spiffe://cluster.local/ns/prod/sa/web");
    // The operator's view, as `spire-agent api fetch` and `healthcheck` give it.
    let cli = |args: &[&str]| {
        let o = Command::new(bin())
            .arg("agent")
            .args(args)
            .arg("--socket")
            .arg(format!("unix:{}", sock.display()))
            .output()
            .expect("agent client");
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (code, out, err) = cli(&["healthcheck"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("this caller has 1 X.509-SVID(s)"), "{out}");
    let (code, out, err) = cli(&["fetch", "x509", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v[0]["spiffe_id"], "spiffe://cluster.local/ns/prod/sa/web");
    assert!(
        v[0]["expires"].as_str().is_some_and(|e| e.ends_with('Z')),
        "{v}"
    );
    let (code, out, err) = cli(&["fetch", "jwt", "--audience", "orders"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.starts_with("spiffe://cluster.local/ns/prod/sa/web\n  ey"),
        "{out}"
    );
    let (code, _, err) = cli(&["fetch", "jwt"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("--audience"), "{err}");
    let nowhere = Command::new(bin())
        .args(["agent", "healthcheck", "--socket"])
        .arg(dir.join("nowhere.sock"))
        .output()
        .expect("healthcheck");
    assert_eq!(nowhere.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&nowhere.stderr).contains("not healthy"));

    // A broken edit is refused with file and line; the last good entries stay.
    std::fs::write(
        &entries,
        "entries:\n- spiffeId: spiffe://cluster.local/ns/prod/sa/web\n  selectors: [\"unix:uid:x\"]\n",
    )
    .expect("write");
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let t = std::fs::read_to_string(&log).unwrap_or_default();
        if t.contains("entries.yaml:3") || Instant::now() > deadline {
            break t;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        text.contains("refused") && text.contains("entries.yaml:3"),
        "{text}"
    );
    assert_eq!(fetch(&sock).await.as_deref(), Ok(id.as_str()));
    let _ = std::fs::remove_dir_all(dir);
}
