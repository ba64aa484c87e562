//! The `ldap` AuthConfig model against a real OpenLDAP `slapd` (Debian's package, installed by
//! scripts/test.sh) that this test starts on a loopback port with its own database and the
//! memberof overlay, filled with `ldapadd`. Checks: a manager is allowed, a user outside the
//! group is 403, a wrong or empty password and an injected user name are 401, and a stopped
//! server is denied (503) within the time bound.

mod common;
mod slapd;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::ext::*;
use common::*;
use slapd::start_slapd;

fn basic(user: &str, pw: &str) -> String {
    use std::io::Write;
    let mut c = Command::new("openssl")
        .args(["base64", "-A"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("openssl");
    c.stdin
        .take()
        .expect("stdin")
        .write_all(format!("{user}:{pw}").as_bytes())
        .expect("write");
    let o = c.wait_with_output().expect("base64");
    format!("Basic {}", String::from_utf8_lossy(&o.stdout).trim())
}

async fn status(r: &Running, auth: &str) -> (u16, Vec<(String, String)>) {
    let headers = if auth.is_empty() {
        Vec::new()
    } else {
        hs(&[("authorization", auth)])
    };
    let (s, h, _) = call(
        r,
        Call {
            config_id: "gloo-system.ldap",
            host: "app.test",
            headers,
            ..Default::default()
        },
    )
    .await;
    (s, h)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ldap_bind_and_group_membership_against_slapd() {
    let dir = std::env::temp_dir().join(format!("meshguard-ldap-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let Some((slapd, port)) = tokio::task::spawn_blocking({
        let d = dir.join("slapd");
        move || start_slapd(&d)
    })
    .await
    .expect("join") else {
        return;
    };
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).expect("dir");
    std::fs::write(
        policies.join("ldap.yaml"),
        format!(
            "apiVersion: enterprise.gloo.solo.io/v1
kind: AuthConfig
metadata: {{name: ldap, namespace: gloo-system}}
spec:
  configs:
  - name: ldap
    ldap:
      address: ldap://127.0.0.1:{port}
      userDnTemplate: uid=%s,ou=people,dc=example,dc=org
      membershipAttributeName: memberOf
      allowedGroups: [\"cn=managers,ou=groups,dc=example,dc=org\"]
      pool: {{maxSize: 3, initialSize: 1}}
"
        ),
    )
    .expect("write");
    let r = start(&policies, Duration::ZERO).await;
    let (s, h) = status(&r, &basic("alice", "alice-pw")).await;
    assert_eq!(s, 200);
    assert!(
        h.iter().any(|(k, v)| k == "x-user-id" && v == "alice"),
        "{h:?}"
    );
    // Several calls reuse pooled connections.
    for _ in 0..5 {
        assert_eq!(status(&r, &basic("alice", "alice-pw")).await.0, 200);
    }
    assert_eq!(
        status(&r, &basic("bob", "bob-pw")).await.0,
        403,
        "not a manager"
    );
    assert_eq!(status(&r, &basic("alice", "wrong")).await.0, 401);
    assert_eq!(status(&r, &basic("mallory", "x")).await.0, 401);
    assert_eq!(
        status(&r, &basic("alice", "")).await.0,
        401,
        "empty password is an unauthenticated bind"
    );
    assert_eq!(
        status(&r, &basic("bob,ou=people,dc=example,dc=org", "bob-pw"))
            .await
            .0,
        401,
        "DN injection"
    );
    assert_eq!(status(&r, "").await.0, 401);
    // The server goes away: requests are denied, quickly.
    drop(slapd);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let s = status(&r, &basic("alice", "alice-pw")).await.0;
    assert_eq!(s, 503, "denied when LDAP is down");
    assert!(started.elapsed() < Duration::from_secs(8), "bounded wait");
    r.stop().await;
}
