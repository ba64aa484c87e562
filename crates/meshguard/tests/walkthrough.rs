//! README "Walkthrough: from open to enforced", run as written: every command of its blocks in a
//! scratch directory (shell lines through bash, with the built `meshguard` first on PATH), `serve`
//! started and restarted where the README starts it, and each output block compared with what
//! the commands print. Real peers: curl and jq (installed by scripts/test.sh).

mod cmd;
mod snippets;

use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use snippets::block;

const BIN: &str = env!("CARGO_BIN_EXE_meshguard");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Whether `tool` runs; under `CI=true` a missing one fails the test instead.
fn have(tool: &str) -> bool {
    let ok = Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            !std::env::var("CI").is_ok_and(|v| v == "true" || v == "1"),
            "{tool} is not installed (scripts/test.sh installs it)"
        );
        eprintln!("skipping: {tool} is not installed (run scripts/test.sh)");
    }
    ok
}

struct Walk {
    dir: std::path::PathBuf,
    http: u16,
    admin: u16,
    path: String,
    serve: Option<cmd::Serve>,
}

impl Walk {
    /// The README's addresses (serve's defaults) become the ports this test picked.
    fn ports(&self, s: &str) -> String {
        s.replace("127.0.0.1:9192", &format!("127.0.0.1:{}", self.http))
            .replace("127.0.0.1:9193", &format!("127.0.0.1:{}", self.admin))
    }

    fn stop(&mut self) {
        if let Some(mut s) = self.serve.take() {
            let _ = s.child.kill();
            let _ = s.child.wait();
        }
    }

    /// Waits until the running serve logs a reload (it polls its files every 2 s).
    fn reloaded(&self) {
        let s = self.serve.as_ref().expect("serve runs");
        let deadline = Instant::now() + Duration::from_secs(20);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match s.log.recv_timeout(left) {
                Ok(line) if line.contains("policies reloaded") => return,
                Ok(line) => assert!(!line.contains("refused"), "reload refused: {line}"),
                Err(_) => break,
            }
        }
        panic!("serve did not reload the policy file within 20 s");
    }

    /// Runs the block's commands; returns what they printed (stdout, then stderr, per command).
    fn run(&mut self, id: &str, body: &str) -> String {
        let mut out = String::new();
        for line in body.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(args) = line.strip_prefix("meshguard serve ") {
                self.stop();
                let mut c = Command::new(BIN);
                c.current_dir(&self.dir)
                    .arg("serve")
                    .args(args.split_whitespace())
                    .args(["--grpc-listen", "off", "--http-listen"])
                    .arg(format!("127.0.0.1:{}", self.http))
                    .arg("--admin-listen")
                    .arg(format!("127.0.0.1:{}", self.admin));
                let s = cmd::serve_command(c);
                assert!(s.http.ends_with(&format!(":{}", self.http)), "{}", s.banner);
                self.serve = Some(s);
                continue;
            }
            let o = Command::new("bash")
                .args(["-c", &self.ports(line)])
                .current_dir(&self.dir)
                .env("PATH", &self.path)
                .output()
                .expect("run bash");
            let printed = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            // simulate exits 2 when an outcome would change: the README says so.
            let expected_code = if line.starts_with("meshguard simulate ") {
                2
            } else {
                0
            };
            assert_eq!(
                o.status.code(),
                Some(expected_code),
                "README {id}: `{line}` exited {:?}:\n{printed}",
                o.status
            );
            out.push_str(&printed);
            if line.starts_with("meshguard recommend ")
                && line.contains("-o demo/policies/")
                && self.serve.is_some()
            {
                self.reloaded();
            }
        }
        out
    }

    /// Runs a block's commands and compares what they print with the output block after it.
    fn step(&mut self, id: &str, body: &str, want: &str) {
        let got = self.run(id, body);
        assert_eq!(
            got, want,
            "README block {id}: the commands print\n{got}\nbut the README shows\n{want}"
        );
    }
}

impl Drop for Walk {
    fn drop(&mut self) {
        self.stop();
    }
}

#[test]
fn readme_rollout_walkthrough_runs_as_written() {
    if !have("curl") || !have("jq") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("meshguard-walkthrough-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let bin_dir = Path::new(BIN).parent().expect("binary dir");
    let mut w = Walk {
        dir: dir.clone(),
        http: free_port(),
        admin: free_port(),
        path: format!(
            "{}:{}",
            bin_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        ),
        serve: None,
    };
    let traffic = w.ports(&block("walkthrough-traffic"));
    std::fs::write(dir.join("traffic.sh"), traffic).expect("traffic.sh");

    w.run("walkthrough-start", &block("walkthrough-start"));
    assert!(w.serve.is_some(), "step 0 starts serve");
    w.step(
        "walkthrough-observe",
        &block("walkthrough-observe"),
        &block("walkthrough-observe-out"),
    );
    w.step(
        "walkthrough-recommend",
        &block("walkthrough-recommend"),
        &block("walkthrough-recommend-out"),
    );
    let written = std::fs::read_to_string(dir.join("recommended.yaml")).expect("recommended");
    assert_eq!(written, block("walkthrough-recommended"));
    // What recommend writes is lint-clean, as the README says of it.
    let lint = Command::new(BIN)
        .args(["lint", "--deny-warnings", "recommended.yaml"])
        .current_dir(&dir)
        .output()
        .expect("lint");
    assert!(
        lint.status.success(),
        "{}",
        String::from_utf8_lossy(&lint.stderr)
    );
    w.step(
        "walkthrough-simulate",
        &block("walkthrough-simulate"),
        &block("walkthrough-simulate-out"),
    );
    w.step(
        "walkthrough-dry-run",
        &block("walkthrough-dry-run"),
        &block("walkthrough-dry-run-out"),
    );
    w.step(
        "walkthrough-percent",
        &block("walkthrough-percent"),
        &block("walkthrough-percent-out"),
    );
    w.step(
        "walkthrough-enforce",
        &block("walkthrough-enforce"),
        &block("walkthrough-enforce-out"),
    );
    // The restarted serve denies by default: the banner says so, and a workload the traffic did
    // not name (no ALLOW policy selects it in another namespace) is refused.
    let s = w.serve.as_ref().expect("serve");
    assert!(s.banner.contains("default deny"), "{}", s.banner);
    let (status, _) = cmd::http_get(
        &s.http,
        "/",
        &[
            ("X-Original-Method", "GET"),
            ("X-Original-URI", "/"),
            ("X-Meshguard-Workload", "staging/app=orders"),
            (
                "X-Forwarded-Client-Cert",
                "URI=spiffe://cluster.local/ns/staging/sa/frontend",
            ),
        ],
    );
    assert_eq!(status, 403);
    drop(w);
    let _ = std::fs::remove_dir_all(&dir);
}
