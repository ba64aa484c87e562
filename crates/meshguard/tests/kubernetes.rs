//! `meshguard serve --kubernetes` against a real API server (kube-apiserver and etcd built from
//! Go modules, tests/kube/mod.rs): the first full read, changes through the same validate ->
//! compile -> swap path as files, a bad object refused with its namespace/name/field (a Warning
//! Event on it, /readyz degraded, the last good set serving), only the Secrets an AuthConfig
//! names or selects, namespace-scoped mode with a Role, replicas converging on one digest through
//! 100 changes and an API server restart, the deploy/ manifests applied server-side, and Gloo
//! Platform ExtAuthPolicies with the labelled Secrets they select.

mod cmd;
mod kube;
mod snippets;

use std::time::{Duration, Instant};

use cmd::{http_get, serve_command, Serve, BIN};
use kube::Cluster;

/// Polls `f` until it returns `Some` or `limit` passes (a bound on correctness, not a
/// performance assertion: the measured times are printed).
fn eventually<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn serve_kube(kubeconfig: &std::path::Path, extra: &[&str]) -> Serve {
    let mut c = std::process::Command::new(BIN);
    c.arg("serve")
        .arg("--kubernetes")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args([
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .args(extra)
        .env_remove("KUBECONFIG");
    serve_command(c)
}

/// The status of a forward-auth check (nginx style) for `method path` to `workload`.
fn decide(s: &Serve, method: &str, path: &str, workload: &str, extra: &[(&str, &str)]) -> u16 {
    let mut h = vec![
        ("X-Original-Method", method),
        ("X-Original-URI", path),
        ("X-Meshguard-Workload", workload),
    ];
    h.extend_from_slice(extra);
    http_get(&s.http, "/auth", &h).0
}

fn config(s: &Serve) -> serde_json::Value {
    serde_json::from_str(&http_get(&s.admin, "/config", &[]).1).expect("/config is JSON")
}

const SHOP: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-get, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  action: ALLOW
  rules:
  - to: [{operation: {methods: ["GET"], paths: ["/public/*", "/api/*"]}}]
---
apiVersion: enterprise.gloo.solo.io/v1
kind: AuthConfig
metadata: {name: api-keys, namespace: shop}
spec:
  configs:
  - name: apikey
    apiKeyAuth:
      headerName: api-key
      apiKeySecretRefs: [{name: key-alice}]
---
apiVersion: v1
kind: Secret
type: extauth.solo.io/apikey
metadata: {name: key-alice, namespace: shop}
stringData: {api-key: alice-secret-key}
---
apiVersion: v1
kind: Secret
metadata: {name: unrelated, namespace: shop}
stringData: {password: not-for-meshguard}
"#;

#[test]
fn serve_reads_watches_and_refuses_cluster_objects() {
    if !kube::available("serve_reads_watches_and_refuses_cluster_objects") {
        return;
    }
    let cluster = Cluster::start("serve");
    let kubeconfig = cluster.install_meshguard();
    cluster.apply(SHOP);
    let s = serve_kube(&kubeconfig, &["--auth-binding", "/api=shop.api-keys"]);
    assert!(
        s.banner
            .contains("from the Kubernetes API at https://127.0.0.1:"),
        "{}",
        s.banner
    );
    assert!(
        s.banner.contains("namespaces with ALLOW policies: shop"),
        "{}",
        s.banner
    );

    // The first read decides: GET allowed, POST denied (default deny: no rule matches).
    assert_eq!(decide(&s, "GET", "/public/a", "shop/app=web", &[]), 200);
    assert_eq!(decide(&s, "POST", "/public/a", "shop/app=web", &[]), 403);
    // The AuthConfig bound to /api reads the Secret it names.
    let alice = [("api-key", "alice-secret-key")];
    assert_eq!(
        decide(&s, "GET", "/api/orders", "shop/app=web", &alice),
        200
    );
    assert_eq!(
        decide(
            &s,
            "GET",
            "/api/orders",
            "shop/app=web",
            &[("api-key", "guess")]
        ),
        401
    );

    // Only the referenced Secret is read; the unrelated one never reaches meshguard.
    let c = config(&s);
    let files: Vec<String> = c["files"]
        .as_array()
        .expect("files")
        .iter()
        .filter_map(|f| f.as_str().map(str::to_owned))
        .collect();
    assert!(
        files.contains(&"kubernetes/Secret/shop/key-alice".to_owned()),
        "{files:?}"
    );
    assert!(!files.iter().any(|f| f.contains("unrelated")), "{files:?}");
    assert_eq!(c["digest"].as_str().map(str::len), Some(64), "{c}");

    // A change applies without a restart.
    cluster.apply(
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-get, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  action: ALLOW
  rules:
  - to: [{operation: {methods: ["GET", "POST"], paths: ["/public/*", "/api/*"]}}]
"#,
    );
    let t = Instant::now();
    eventually(
        Duration::from_secs(30),
        "POST allowed after the change",
        || (decide(&s, "POST", "/public/a", "shop/app=web", &[]) == 200).then_some(()),
    );
    eprintln!("change applied in {:?}", t.elapsed());

    // A bad object: refused with its namespace/name and field, reported as an Event on it and in
    // /readyz (which stays 200: the last good set serves), and the last good set decides.
    cluster.apply(
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: typo, namespace: shop}
spec:
  action: ALOW
"#,
    );
    let readyz = eventually(Duration::from_secs(30), "/readyz degraded", || {
        let (code, body) = http_get(&s.admin, "/readyz", &[]);
        (body.contains("degraded")).then_some((code, body))
    });
    assert_eq!(readyz.0, 200, "{}", readyz.1);
    assert!(
        readyz
            .1
            .contains("kubernetes/AuthorizationPolicy/shop/typo"),
        "{}",
        readyz.1
    );
    assert!(readyz.1.contains("spec.action"), "{}", readyz.1);
    assert_eq!(decide(&s, "POST", "/public/a", "shop/app=web", &[]), 200);
    let events = eventually(
        Duration::from_secs(30),
        "an Event on the bad object",
        || {
            let e = cluster.events("shop", "typo");
            (!e.is_empty()).then_some(e)
        },
    );
    assert!(
        events
            .iter()
            .any(|e| e.starts_with("MeshguardRefused: refused by meshguard: spec.action")),
        "{events:?}"
    );
    // Fixed by deleting it: ready again, no longer degraded.
    cluster.ok(&["delete", "authorizationpolicy", "typo", "-n", "shop"]);
    eventually(
        Duration::from_secs(30),
        "/readyz no longer degraded",
        || {
            let (_, body) = http_get(&s.admin, "/readyz", &[]);
            (!body.contains("degraded")).then_some(())
        },
    );

    // An AuthConfig that parses but cannot be built (it names a Secret that does not exist): the
    // Event goes on the AuthConfig; the last good set keeps deciding.
    cluster.apply(
        r#"
apiVersion: enterprise.gloo.solo.io/v1
kind: AuthConfig
metadata: {name: dangling, namespace: shop}
spec:
  configs:
  - name: apikey
    apiKeyAuth:
      headerName: api-key
      apiKeySecretRefs: [{name: key-missing}]
"#,
    );
    let events = eventually(
        Duration::from_secs(30),
        "an Event on the AuthConfig",
        || {
            let e = cluster.events("shop", "dangling");
            (!e.is_empty()).then_some(e)
        },
    );
    assert!(
        events.iter().any(|e| e.starts_with("MeshguardRefused:")
            && e.contains("Secret shop/key-missing is not loaded")),
        "{events:?}"
    );
    assert_eq!(decide(&s, "POST", "/public/a", "shop/app=web", &[]), 200);
    cluster.ok(&["delete", "authconfig", "dangling", "-n", "shop"]);
    eventually(
        Duration::from_secs(30),
        "/readyz no longer degraded",
        || {
            let (_, body) = http_get(&s.admin, "/readyz", &[]);
            (!body.contains("degraded")).then_some(())
        },
    );

    // A second key: the AuthConfig names a new Secret, which meshguard starts watching.
    cluster.apply(
        r#"
apiVersion: enterprise.gloo.solo.io/v1
kind: AuthConfig
metadata: {name: api-keys, namespace: shop}
spec:
  configs:
  - name: apikey
    apiKeyAuth:
      headerName: api-key
      apiKeySecretRefs: [{name: key-alice}, {name: key-bob}]
---
apiVersion: v1
kind: Secret
type: extauth.solo.io/apikey
metadata: {name: key-bob, namespace: shop}
stringData: {api-key: bob-secret-key}
"#,
    );
    let bob = [("api-key", "bob-secret-key")];
    eventually(Duration::from_secs(30), "bob's key accepted", || {
        (decide(&s, "GET", "/api/orders", "shop/app=web", &bob) == 200).then_some(())
    });
    // A rotated key: the old value stops working.
    cluster.apply(
        r#"
apiVersion: v1
kind: Secret
type: extauth.solo.io/apikey
metadata: {name: key-bob, namespace: shop}
stringData: {api-key: bob-rotated-key}
"#,
    );
    eventually(Duration::from_secs(30), "bob's old key refused", || {
        (decide(&s, "GET", "/api/orders", "shop/app=web", &bob) == 401).then_some(())
    });
    assert_eq!(
        decide(
            &s,
            "GET",
            "/api/orders",
            "shop/app=web",
            &[("api-key", "bob-rotated-key")]
        ),
        200
    );

    // Deleting the ALLOW policy: default deny.
    cluster.ok(&["delete", "authorizationpolicy", "allow-get", "-n", "shop"]);
    eventually(
        Duration::from_secs(30),
        "denied once the policy is gone",
        || (decide(&s, "GET", "/public/a", "shop/app=web", &[]) == 403).then_some(()),
    );
}

#[test]
fn namespace_scoped_mode_needs_only_a_role() {
    if !kube::available("namespace_scoped_mode_needs_only_a_role") {
        return;
    }
    let cluster = Cluster::start("scoped");
    cluster.install_meshguard();
    cluster.apply(SHOP);
    cluster.apply(
        r#"
apiVersion: v1
kind: Namespace
metadata: {name: elsewhere}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-all, namespace: elsewhere}
spec:
  action: ALLOW
  rules: [{}]
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: team, namespace: meshguard-system}
"#,
    );
    // deploy/rbac-namespaced.yaml, bound to a service account with no cluster-wide rights.
    let rbac = std::fs::read_to_string(kube::root().join("deploy/rbac-namespaced.yaml"))
        .expect("rbac-namespaced.yaml");
    let rbac = rbac.replace(
        "  - kind: ServiceAccount\n    name: meshguard\n",
        "  - kind: ServiceAccount\n    name: team\n",
    );
    assert!(rbac.contains("name: team"), "the subject was not replaced");
    cluster.apply(&rbac);
    let kubeconfig = cluster.service_account_kubeconfig("meshguard-system", "team");
    let can = |verb: &str, what: &str, ns: &str| {
        let out = cluster.kubectl(&[
            "auth",
            "can-i",
            verb,
            what,
            "-n",
            ns,
            "--as=system:serviceaccount:meshguard-system:team",
        ]);
        String::from_utf8_lossy(&out.stdout).trim() == "yes"
    };
    assert!(can(
        "watch",
        "authorizationpolicies.security.istio.io",
        "shop"
    ));
    assert!(!can(
        "list",
        "authorizationpolicies.security.istio.io",
        "elsewhere"
    ));

    let s = serve_kube(&kubeconfig, &["--kubernetes-namespace", "shop"]);
    assert!(s.banner.contains("(namespaces shop)"), "{}", s.banner);
    assert_eq!(decide(&s, "GET", "/public/a", "shop/app=web", &[]), 200);
    // The other namespace's allow-all is not read: default deny there.
    assert_eq!(decide(&s, "GET", "/x", "elsewhere/app=any", &[]), 403);
    let files = config(&s)["files"].to_string();
    assert!(!files.contains("elsewhere"), "{files}");
}

/// Three replicas watching one API server through 100 policy changes, with the API server
/// restarted halfway: each change is decided the same way by all three, their digests agree after
/// every change, a replica keeps serving its last good set while the API server is down, and the
/// decision logs show that one digest always decides one way on every replica.
#[test]
fn replicas_converge_through_changes_and_an_api_server_restart() {
    if !kube::available("replicas_converge_through_changes_and_an_api_server_restart") {
        return;
    }
    let mut cluster = Cluster::start("replicas");
    let kubeconfig = cluster.install_meshguard();
    cluster.apply("apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n");
    let step = |i: usize| {
        format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: moving, namespace: shop}}\nspec:\n  selector: {{matchLabels: {{app: web}}}}\n  action: ALLOW\n  rules:\n  - to: [{{operation: {{paths: [\"/step/{i}\", \"/also/{i}\"]}}}}]\n"
        )
    };
    cluster.apply(&step(0));
    let logs: Vec<std::path::PathBuf> = (0..3)
        .map(|r| cluster.dir.join(format!("replica-{r}.jsonl")))
        .collect();
    let replicas: Vec<Serve> = logs
        .iter()
        .map(|log| serve_kube(&kubeconfig, &["--decision-log", &log.display().to_string()]))
        .collect();
    let mut times = Vec::new();
    let mut after_restart = None;
    for i in 1..=100 {
        if i == 50 {
            cluster.stop_apiserver();
            // Down: every replica still decides with its last good set.
            for r in &replicas {
                assert_eq!(decide(r, "GET", "/step/49", "shop/app=web", &[]), 200);
                assert_eq!(decide(r, "GET", "/step/48", "shop/app=web", &[]), 403);
            }
            std::thread::sleep(Duration::from_secs(2));
            cluster.start_apiserver();
        }
        cluster.apply(&step(i));
        let t = Instant::now();
        let path = format!("/step/{i}");
        for r in &replicas {
            eventually(
                Duration::from_secs(60),
                &format!("a replica allows {path}"),
                || (decide(r, "GET", &path, "shop/app=web", &[]) == 200).then_some(()),
            );
        }
        let digests: Vec<String> = replicas
            .iter()
            .map(|r| config(r)["digest"].as_str().unwrap_or("").to_owned())
            .collect();
        let took = t.elapsed();
        assert!(
            digests.iter().all(|d| d.len() == 64 && d == &digests[0]),
            "change {i}: replicas disagree: {digests:?}"
        );
        for r in &replicas {
            assert_eq!(
                decide(r, "GET", &format!("/step/{}", i - 1), "shop/app=web", &[]),
                403
            );
            assert_eq!(
                decide(r, "GET", &format!("/also/{i}"), "shop/app=web", &[]),
                200
            );
        }
        if i == 50 {
            after_restart = Some(took);
        } else {
            times.push(took);
        }
    }
    times.sort();
    let p50 = times[times.len() / 2];
    let max = times[times.len() - 1];
    eprintln!(
        "convergence of 3 replicas over 99 changes: p50 {p50:?}, max {max:?}; the change right after the API server restart: {:?}",
        after_restart.unwrap_or_default()
    );

    // One digest, one decision: across all replicas' logs, a (digest, path) pair never got two
    // answers.
    let mut seen: std::collections::HashMap<(String, String), bool> = Default::default();
    let mut lines = 0;
    for log in &logs {
        for line in std::fs::read_to_string(log).expect("decision log").lines() {
            let v: serde_json::Value = serde_json::from_str(line).expect("log line is JSON");
            let (Some(d), Some(p), Some(a)) = (
                v["digest"].as_str(),
                v["path"].as_str(),
                v["allowed"].as_bool(),
            ) else {
                continue;
            };
            lines += 1;
            let prev = seen.insert((d.to_owned(), p.to_owned()), a);
            assert!(
                prev.is_none_or(|x| x == a),
                "digest {d} decided {p} both ways"
            );
        }
    }
    assert!(lines > 600, "only {lines} decision lines carry a digest");
}

/// deploy/: the CRDs, the Deployment with its Service, PodDisruptionBudget, NetworkPolicy,
/// ServiceAccount and RBAC, and the namespace-scoped Role, all accepted by the API server
/// (`kubectl apply --dry-run=server`, then for real), with no PodSecurity (restricted) warning;
/// and the RBAC is least privilege.
#[test]
fn deploy_manifests_apply_server_side() {
    if !kube::available("deploy_manifests_apply_server_side") {
        return;
    }
    let cluster = Cluster::start("deploy");
    let deploy = kube::root().join("deploy");
    let f = |n: &str| deploy.join(n).display().to_string();
    // Namespaced objects need their namespaces to exist for a server-side dry run.
    cluster.apply(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: meshguard-system\n  labels: {pod-security.kubernetes.io/enforce: restricted}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n",
    );
    let out = cluster.kubectl(&[
        "apply",
        "--dry-run=server",
        "-f",
        &f("crds.yaml"),
        "-f",
        &f("meshguard.yaml"),
        "-f",
        &f("rbac-namespaced.yaml"),
        "-f",
        &f("ca.yaml"),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(!stderr.contains("would violate PodSecurity"), "{stderr}");
    for kind in [
        "customresourcedefinition.apiextensions.k8s.io/authorizationpolicies.security.istio.io",
        "customresourcedefinition.apiextensions.k8s.io/authconfigs.enterprise.gloo.solo.io",
        "customresourcedefinition.apiextensions.k8s.io/extauthpolicies.security.policy.gloo.solo.io",
        "serviceaccount/meshguard",
        "clusterrole.rbac.authorization.k8s.io/meshguard",
        "clusterrolebinding.rbac.authorization.k8s.io/meshguard",
        "deployment.apps/meshguard",
        "service/meshguard",
        "poddisruptionbudget.policy/meshguard",
        "networkpolicy.networking.k8s.io/meshguard",
        "role.rbac.authorization.k8s.io/meshguard",
        "rolebinding.rbac.authorization.k8s.io/meshguard",
        "serviceaccount/meshguard-ca",
        "clusterrole.rbac.authorization.k8s.io/meshguard-ca",
        "clusterrolebinding.rbac.authorization.k8s.io/meshguard-ca",
        "deployment.apps/meshguard-ca",
        "service/meshguard-ca",
        "poddisruptionbudget.policy/meshguard-ca",
        "networkpolicy.networking.k8s.io/meshguard-ca",
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(kind) && l.ends_with("(server dry run)")),
            "{kind} not accepted:\n{stdout}"
        );
    }
    // For real, as the README's commands say, then what the service account may do.
    let readme = snippets::block("kubernetes");
    let kubectl = snippets::commands(&readme, "kubectl");
    assert_eq!(kubectl.len(), 3, "{readme}");
    for args in &kubectl {
        let args: Vec<String> = args
            .iter()
            .map(|a| {
                if a.starts_with("deploy/") {
                    kube::root().join(a).display().to_string()
                } else {
                    a.clone()
                }
            })
            .collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cluster.ok(&args);
    }
    let help = String::from_utf8_lossy(
        &std::process::Command::new(BIN)
            .args(["serve", "--help"])
            .output()
            .expect("serve --help")
            .stdout,
    )
    .into_owned();
    for args in snippets::commands(&readme, "meshguard") {
        assert_eq!(args.first().map(String::as_str), Some("serve"), "{args:?}");
        for f in snippets::flags(&args) {
            assert!(help.contains(&f), "the README's `{f}` is not a serve flag");
        }
    }
    let deployment = cluster.ok(&[
        "get",
        "deployment",
        "meshguard",
        "-n",
        "meshguard-system",
        "-o",
        "json",
    ]);
    let d: serde_json::Value = serde_json::from_str(&deployment).expect("deployment json");
    let c = &d["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        d["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"],
        true
    );
    assert!(
        c["args"].to_string().contains("--kubernetes"),
        "{}",
        c["args"]
    );
    let can_as = |sa: &str, verb: &str, what: &str| {
        let out = cluster.kubectl(&[
            "auth",
            "can-i",
            verb,
            what,
            "-A",
            &format!("--as=system:serviceaccount:meshguard-system:{sa}"),
        ]);
        String::from_utf8_lossy(&out.stdout).trim() == "yes"
    };
    let can = |verb: &str, what: &str| can_as("meshguard", verb, what);
    // The CA service may review tokens and nothing else; the deciding replicas may not.
    assert!(can_as(
        "meshguard-ca",
        "create",
        "tokenreviews.authentication.k8s.io"
    ));
    for (verb, what) in [
        ("get", "secrets"),
        ("list", "pods"),
        ("watch", "authorizationpolicies.security.istio.io"),
        ("create", "serviceaccounts/token"),
        ("create", "certificatesigningrequests.certificates.k8s.io"),
    ] {
        assert!(
            !can_as("meshguard-ca", verb, what),
            "the CA may {verb} {what}: more than it needs"
        );
    }
    assert!(!can("create", "tokenreviews.authentication.k8s.io"));
    // The CA's pod reads its key from the Secret volume as the kubelet writes it: root-owned,
    // the pod's fsGroup, 0440 (ca.rs accepts that shape; the unit tests cover the check).
    let ca = cluster.ok(&[
        "get",
        "deployment",
        "meshguard-ca",
        "-n",
        "meshguard-system",
        "-o",
        "json",
    ]);
    let ca: serde_json::Value = serde_json::from_str(&ca).expect("ca deployment json");
    let spec = &ca["spec"]["template"]["spec"];
    assert_eq!(spec["securityContext"]["fsGroup"], 65532);
    assert_eq!(spec["volumes"][0]["secret"]["defaultMode"], 0o440);
    assert_eq!(spec["serviceAccountName"], "meshguard-ca");
    for (verb, what) in [
        ("watch", "authorizationpolicies.security.istio.io"),
        ("list", "peerauthentications.security.istio.io"),
        ("get", "requestauthentications.security.istio.io"),
        ("watch", "authconfigs.enterprise.gloo.solo.io"),
        ("watch", "extauthpolicies.security.policy.gloo.solo.io"),
        ("watch", "secrets"),
        ("create", "events"),
    ] {
        assert!(can(verb, what), "meshguard cannot {verb} {what}");
    }
    for (verb, what) in [
        ("create", "authorizationpolicies.security.istio.io"),
        ("delete", "secrets"),
        ("update", "secrets"),
        ("list", "pods"),
        ("delete", "events"),
        ("create", "serviceaccounts/token"),
    ] {
        assert!(
            !can(verb, what),
            "meshguard may {verb} {what}: more than it needs"
        );
    }

    // The meshConfig snippet parses, and a CUSTOM policy naming its provider lints clean.
    let custom = cluster.dir.join("custom.yaml");
    std::fs::write(
        &custom,
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: ext, namespace: shop}\nspec:\n  action: CUSTOM\n  provider: {name: meshguard}\n  rules: [{to: [{operation: {paths: [\"/api/*\"]}}]}]\n",
    )
    .expect("write");
    let out = std::process::Command::new(BIN)
        .args(["lint", "--mesh-config", &f("istio-mesh-config.yaml")])
        .arg(&custom)
        .output()
        .expect("lint");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `meshguard agent --kubernetes`: a caller's pod, found from its cgroup (a proc root the test
/// writes, holding this test process's pid, since no kubelet runs pods here) and looked up in the
/// real API server, gets its service account's Istio identity and the entries whose `k8s:`
/// selectors it matches; a pod on another node, or a process in no pod, gets nothing.
#[test]
fn agent_attests_pods_by_service_account() {
    if !kube::available("agent_attests_pods_by_service_account") {
        return;
    }
    let cluster = Cluster::start("agent");
    let pod = |name: &str, sa: &str, node: &str| {
        format!("---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: shop\n  labels: {{app: {name}}}\nspec:\n  serviceAccountName: {sa}\n  nodeName: {node}\n  containers: [{{name: app, image: registry.invalid/app:1}}]\n")
    };
    cluster.apply(&format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: shop}}\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: web, namespace: shop}}\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: batch, namespace: shop}}\n{}{}",
        pod("web", "web", "node-a"),
        pod("batch", "batch", "node-b"),
    ));
    let uid = |name: &str| {
        cluster
            .ok(&[
                "get",
                "pod",
                name,
                "-n",
                "shop",
                "-o",
                "jsonpath={.metadata.uid}",
            ])
            .trim()
            .to_owned()
    };
    let (web, batch) = (uid("web"), uid("batch"));
    assert_eq!(web.len(), 36, "{web}");

    let dir = cluster.dir.join("agent");
    let proc_root = dir.join("proc");
    let me = proc_root.join(std::process::id().to_string());
    std::fs::create_dir_all(&me).expect("proc root");
    let in_pod = |uid: &str| {
        // The systemd cgroup driver's layout (underscores in the UID), as on most nodes.
        let slice = uid.replace('-', "_");
        std::fs::write(
            me.join("cgroup"),
            format!("0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{slice}.slice/cri-containerd-0123abcd.scope\n"),
        )
        .expect("cgroup");
    };
    in_pod(&web);
    let ca = dir.join("ca");
    let out = std::process::Command::new(BIN)
        .args(["ca", "init", "--trust-domain", "cluster.local", "--dir"])
        .arg(&ca)
        .output()
        .expect("ca init");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let entries = dir.join("entries.yaml");
    std::fs::write(
        &entries,
        "entries:\n- spiffeId: spiffe://cluster.local/apps/web-frontend\n  selectors: [\"k8s:ns:shop\", \"k8s:pod-label:app:web\"]\n- spiffeId: spiffe://cluster.local/apps/batch\n  selectors: [\"k8s:sa:batch\"]\n",
    )
    .expect("entries");
    let sock = dir.join("agent.sock");
    let log = dir.join("agent.log");
    let mut agent = std::process::Command::new(BIN)
        .arg("agent")
        .arg("--ca-dir")
        .arg(&ca)
        .arg("--entries")
        .arg(&entries)
        .arg("--socket")
        .arg(format!("unix://{}", sock.display()))
        .args([
            "--kubernetes",
            "--service-account-identities",
            "--node-name",
            "node-a",
        ])
        .arg("--kubeconfig")
        .arg(&cluster.kubeconfig)
        .arg("--proc-root")
        .arg(&proc_root)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("start agent");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let fetch = || {
        rt.block_on(async {
            let c = spiffe::WorkloadApiClient::connect_to(format!("unix:{}", sock.display()))
                .await
                .map_err(|e| e.to_string())?;
            let ctx = c.fetch_x509_context().await.map_err(|e| e.to_string())?;
            let default = ctx.default_svid().map(|s| s.spiffe_id().to_string());
            let mut all: Vec<String> = ctx
                .svids()
                .iter()
                .map(|s| s.spiffe_id().to_string())
                .collect();
            all.sort();
            Ok::<_, String>((default, all))
        })
    };
    let (default, all) = eventually(Duration::from_secs(30), "the agent answers", || {
        sock.exists().then(fetch).and_then(Result::ok)
    });
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.contains("Kubernetes workload attestation (1 pod(s) on node node-a"),
        "{text}"
    );
    assert_eq!(
        default.as_deref(),
        Some("spiffe://cluster.local/ns/shop/sa/web"),
        "{all:?}"
    );
    assert_eq!(
        all,
        [
            "spiffe://cluster.local/apps/web-frontend",
            "spiffe://cluster.local/ns/shop/sa/web"
        ],
        "the service account's identity and the entry its labels match, not batch's"
    );

    // A pod on another node is not watched; a process in no pod is not a workload.
    in_pod(&batch);
    let e = fetch().expect_err("a pod on another node gets nothing");
    assert!(e.contains("no identity issued"), "{e}");
    std::fs::write(
        me.join("cgroup"),
        "0::/user.slice/user-0.slice/session-1.scope\n",
    )
    .expect("cgroup");
    let e = fetch().expect_err("a process in no pod gets nothing");
    assert!(e.contains("no identity issued"), "{e}");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(text.contains("Workload API caller refused"), "{text}");

    // The pod is deleted: its identity goes with it.
    in_pod(&web);
    assert!(fetch().is_ok());
    cluster.ok(&[
        "delete",
        "pod",
        "web",
        "-n",
        "shop",
        "--grace-period=0",
        "--force",
    ]);
    eventually(
        Duration::from_secs(30),
        "a deleted pod's identity is gone",
        || fetch().err().filter(|e| e.contains("no identity issued")),
    );
    let _ = agent.kill();
    let _ = agent.wait();
}

/// `meshguard ca serve --kubernetes` and `meshguard ca fetch`: a pod's projected token (from the
/// real API server's TokenRequest) buys an X.509-SVID for its service account, for a key that
/// never left the client; the service checks tokens with TokenReview as a service account
/// allowed only that; wrong-audience, default-audience, missing and revoked tokens are refused.
#[test]
fn ca_service_issues_svids_for_service_account_tokens() {
    if !kube::available("ca_service_issues_svids_for_service_account_tokens") {
        return;
    }
    let cluster = Cluster::start("ca");
    cluster.apply(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {name: web, namespace: shop}\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {name: gone, namespace: shop}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: meshguard-system}\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {name: ca, namespace: meshguard-system}\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: meshguard-ca}\nrules:\n- apiGroups: [authentication.k8s.io]\n  resources: [tokenreviews]\n  verbs: [create]\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: meshguard-ca}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: meshguard-ca}\nsubjects:\n- {kind: ServiceAccount, name: ca, namespace: meshguard-system}\n",
    );
    let ca_kubeconfig = cluster.service_account_kubeconfig("meshguard-system", "ca");
    let dir = cluster.dir.join("ca-service");
    std::fs::create_dir_all(&dir).expect("dir");
    let run = |args: &[&str]| {
        std::process::Command::new(BIN)
            .current_dir(&dir)
            .args(args)
            .output()
            .expect("run meshguard")
    };
    let out = run(&[
        "ca",
        "init",
        "--trust-domain",
        "cluster.local",
        "--dir",
        "ca",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut server = std::process::Command::new(BIN)
        .current_dir(&dir)
        .args([
            "ca",
            "serve",
            "--dir",
            "ca",
            "--listen",
            "127.0.0.1:0",
            "--kubernetes",
            "--kubeconfig",
        ])
        .arg(&ca_kubeconfig)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("ca serve");
    let banner = {
        use std::io::BufRead;
        let mut line = String::new();
        let stderr = server.stderr.take().expect("stderr");
        let mut r = std::io::BufReader::new(stderr);
        loop {
            line.clear();
            assert!(r.read_line(&mut line).expect("read") > 0, "ca serve exited");
            if line.starts_with("meshguard ca serve: https://") {
                break line.clone();
            }
        }
    };
    let url = banner
        .split_whitespace()
        .find(|w| w.starts_with("https://"))
        .expect("url")
        .to_owned();
    let token = |sa: &str, audience: Option<&str>| {
        let mut args = vec!["create", "token", sa, "-n", "shop"];
        if let Some(a) = audience {
            args.extend(["--audience", a]);
        }
        let t = cluster.ok(&args);
        let path = dir.join(format!("{sa}-{}.token", audience.unwrap_or("default")));
        std::fs::write(&path, t.trim()).expect("token");
        path
    };
    let fetch = |token: &std::path::Path, out: &str| {
        let out = run(&[
            "ca",
            "fetch",
            "--ca-url",
            &url,
            "--bundle",
            "ca/bundle.crt",
            "--token-file",
            &token.display().to_string(),
            "--out",
            out,
        ]);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    let (ok, id, err) = fetch(&token("web", Some("meshguard-ca")), "web");
    assert!(ok, "{err}");
    assert_eq!(id, "spiffe://cluster.local/ns/shop/sa/web");
    // The chain verifies against the bundle, names exactly that ID, and matches the key written
    // beside it.
    let openssl = |args: &[&str]| {
        let o = std::process::Command::new("openssl")
            .current_dir(&dir)
            .args(args)
            .output()
            .expect("openssl");
        assert!(
            o.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    assert!(openssl(&["verify", "-CAfile", "ca/bundle.crt", "web/svid.pem"]).contains("OK"));
    let san = openssl(&[
        "x509",
        "-in",
        "web/svid.pem",
        "-noout",
        "-ext",
        "subjectAltName",
    ]);
    assert!(
        san.contains("URI:spiffe://cluster.local/ns/shop/sa/web"),
        "{san}"
    );
    assert_eq!(
        openssl(&["x509", "-in", "web/svid.pem", "-noout", "-pubkey"]),
        openssl(&["pkey", "-in", "web/svid.key", "-pubout"]),
        "the certificate is for the key the client made"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.join("web/svid.key"))
        .expect("key")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // Refused: another audience, the API server's default audience, no token, a revoked token.
    let (ok, _, err) = fetch(&token("web", Some("something-else")), "x1");
    assert!(
        !ok && err.contains("403") && err.contains("does not accept this token"),
        "{err}"
    );
    let (ok, _, err) = fetch(&token("web", None), "x2");
    assert!(!ok && err.contains("403"), "{err}");
    let empty = dir.join("empty.token");
    std::fs::write(&empty, "").expect("write");
    let (ok, _, err) = fetch(&empty, "x3");
    assert!(!ok && err.contains("401"), "{err}");
    let revoked = token("gone", Some("meshguard-ca"));
    cluster.ok(&["delete", "serviceaccount", "gone", "-n", "shop"]);
    let (ok, _, err) = fetch(&revoked, "x4");
    assert!(
        !ok && err.contains("403"),
        "a deleted service account's token must not work: {err}"
    );
    assert!(!dir.join("x4/svid.pem").exists());

    // The README's commands name real flags of the commands this test ran.
    for args in snippets::commands(&snippets::block("ca-service"), "meshguard") {
        let sub: Vec<&str> = args.iter().take(2).map(String::as_str).collect();
        assert!(sub == ["ca", "serve"] || sub == ["ca", "fetch"], "{args:?}");
        let help = run(&[sub[0], sub[1], "--help"]);
        let help = String::from_utf8_lossy(&help.stdout);
        for f in snippets::flags(&args) {
            assert!(
                help.contains(&f),
                "the README's `meshguard {} {}` has no `{f}`",
                sub[0],
                sub[1]
            );
        }
    }
    let _ = server.kill();
    let _ = server.wait();
}

/// Gloo Platform ExtAuthPolicies from the cluster: the seed's two examples applied as written,
/// the Secrets their `glooAuth` selects by label watched (a new key works once created), and a
/// deleted policy stops applying.
#[test]
fn serve_watches_ext_auth_policies() {
    if !kube::available("serve_watches_ext_auth_policies") {
        return;
    }
    let cluster = Cluster::start("gloo");
    let kubeconfig = cluster.install_meshguard();
    cluster.apply("apiVersion: v1\nkind: Namespace\nmetadata: {name: bookinfo}\n");
    let examples = kube::root().join("examples/gloo-platform");
    cluster.ok(&["apply", "-f", examples.to_str().expect("utf8")]);
    let s = serve_kube(
        &kubeconfig,
        &[
            "--route-labels",
            "/ratings=route=ratings,/reviews=route=reviews",
        ],
    );
    let w = "bookinfo/app=ratings";
    let email = [
        (
            "api-key",
            "N2YwMDIxZTEtNGUzNS1jNzgzLTRkYjAtYjE2YzRkZGVmNjcy",
        ),
        ("x-user-email", "user12345@email.com"),
    ];
    assert_eq!(decide(&s, "GET", "/ratings/2", w, &[]), 200);
    assert_eq!(decide(&s, "DELETE", "/ratings/2", w, &[]), 403);
    assert_eq!(decide(&s, "GET", "/reviews/1", w, &[]), 401);
    assert_eq!(decide(&s, "GET", "/reviews/1", w, &email), 200);

    // A second key: a Secret with the label the policy selects, created afterwards.
    let bob = [
        ("api-key", "bob-key-0123456789"),
        ("x-user-email", "bob@example.com"),
    ];
    assert_eq!(decide(&s, "GET", "/reviews/1", w, &bob), 401);
    cluster.apply(
        "apiVersion: v1\nkind: Secret\ntype: extauth.solo.io/apikey\nmetadata: {name: bob, namespace: bookinfo, labels: {extauth: apikey}}\nstringData: {api-key: bob-key-0123456789, user-email: bob@example.com}\n",
    );
    let t = Instant::now();
    eventually(Duration::from_secs(20), "the new key works", || {
        (decide(&s, "GET", "/reviews/1", w, &bob) == 200).then_some(())
    });
    println!("a new labelled Secret took effect after {:?}", t.elapsed());
    let kinds: Vec<String> = config(&s)["resources"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| format!("{}/{}", r["kind"], r["name"]))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        kinds
            .iter()
            .any(|k| k == "\"ExtAuthPolicy\"/\"ratings-opa\""),
        "{kinds:?}"
    );

    // Deleted: the ratings route gets no ext auth, and default deny answers.
    cluster.ok(&["delete", "extauthpolicy", "-n", "bookinfo", "ratings-opa"]);
    eventually(
        Duration::from_secs(20),
        "the deleted policy stops applying",
        || (decide(&s, "GET", "/ratings/2", w, &[]) == 403).then_some(()),
    );
}
