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
use slapd::{start_slapd, start_slapd_with};

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

/// Gloo `groupLookupSettings.checkGroupsWithServiceAccount`: a directory where users may not
/// read group attributes (an ACL hides memberOf from everyone but the reader account). The
/// user's own bind still checks the password; the memberships are read as the service account.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_lookup_with_a_service_account() {
    let dir = std::env::temp_dir().join(format!("meshguard-ldap-sa-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let acl = "access to attrs=userPassword by anonymous auth by * none
access to attrs=memberOf by dn.exact=\"cn=reader,dc=example,dc=org\" read by * none
access to * by * read";
    let Some((slapd, port)) = tokio::task::spawn_blocking({
        let d = dir.join("slapd");
        move || start_slapd_with(&d, acl)
    })
    .await
    .expect("join") else {
        return;
    };
    // The reader account: a simpleSecurityObject with its own password.
    let out = Command::new("ldapadd")
        .args([
            "-x",
            "-H",
            &format!("ldap://127.0.0.1:{port}/"),
            "-D",
            "cn=admin,dc=example,dc=org",
            "-w",
            "admin-pw",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().expect("stdin").write_all(
                b"dn: cn=reader,dc=example,dc=org\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\ncn: reader\nuserPassword: reader-pw\n",
            )?;
            c.wait_with_output()
        })
        .expect("ldapadd");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).expect("dir");
    let config = |name: &str, lookup: &str| {
        format!(
            "apiVersion: enterprise.gloo.solo.io/v1
kind: AuthConfig
metadata: {{name: {name}, namespace: gloo-system}}
spec:
  configs:
  - name: ldap
    ldap:
      address: ldap://127.0.0.1:{port}
      userDnTemplate: uid=%s,ou=people,dc=example,dc=org
      allowedGroups: [\"cn=managers,ou=groups,dc=example,dc=org\"]
{lookup}
---
"
        )
    };
    let mut yaml = String::from(
        "apiVersion: v1
kind: Secret
type: kubernetes.io/basic-auth
metadata: {name: ldap-reader, namespace: gloo-system}
stringData: {username: 'cn=reader,dc=example,dc=org', password: reader-pw}
---
apiVersion: v1
kind: Secret
metadata: {name: ldap-wrong, namespace: gloo-system}
stringData: {username: 'cn=reader,dc=example,dc=org', password: nope}
---
",
    );
    yaml.push_str(&config("as-user", ""));
    yaml.push_str(&config(
        "as-reader",
        "      groupLookupSettings: {checkGroupsWithServiceAccount: true, credentialsSecretRef: {name: ldap-reader}}",
    ));
    yaml.push_str(&config(
        "bad-reader",
        "      groupLookupSettings: {checkGroupsWithServiceAccount: true, credentialsSecretRef: {name: ldap-wrong}}",
    ));
    std::fs::write(policies.join("ldap.yaml"), yaml).expect("write");
    let r = start(&policies, Duration::ZERO).await;
    let ask = |config_id: &'static str, user: &str, pw: &str| {
        let auth = basic(user, pw);
        let r = &r;
        async move {
            call(
                r,
                Call {
                    config_id,
                    host: "app.test",
                    headers: hs(&[("authorization", &auth)]),
                    ..Default::default()
                },
            )
            .await
            .0
        }
    };
    // Bound as herself, alice cannot see her own memberOf: not a manager as far as we can tell.
    assert_eq!(ask("gloo-system.as-user", "alice", "alice-pw").await, 403);
    // Read by the service account: she is.
    assert_eq!(ask("gloo-system.as-reader", "alice", "alice-pw").await, 200);
    assert_eq!(ask("gloo-system.as-reader", "bob", "bob-pw").await, 403);
    // The user's password is still checked by the user's own bind.
    assert_eq!(ask("gloo-system.as-reader", "alice", "wrong").await, 401);
    // A service account that cannot bind is an outage, not a verdict on the user.
    assert_eq!(
        ask("gloo-system.bad-reader", "alice", "alice-pw").await,
        503
    );
    r.stop().await;
    drop(slapd);
}
