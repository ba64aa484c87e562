//! Replay decides recorded claims, principals and CUSTOM outcomes as the engine decides them.

use meshguard_engine::{DecisionLog, Embedded, Engine, Settings, Sink, State};
use meshguard_policy::MeshConfig;
use meshguard_rollout::{simulate, Change, Options};

fn engine(policies: &str) -> Engine {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let state = rt
        .block_on(async {
            State::new(
                Embedded(vec![("candidate.yaml".into(), policies.into())]),
                MeshConfig::default(),
                reqwest::Client::new(),
            )
        })
        .expect("policies load");
    let log = DecisionLog::start(Sink::Off, state.clone()).expect("log");
    Engine::new(
        state,
        log,
        Settings {
            default_deny: true,
            ..Settings::default()
        },
    )
}

const ADMINS_ONLY: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: admins, namespace: shop}
spec:
  action: ALLOW
  rules:
  - from: [{source: {requestPrincipals: ['https://idp.example/*']}}]
    when: [{key: 'request.auth.claims[role]', values: [admin]}]
";

fn line(claims: &str, allowed: bool) -> String {
    format!(
        r#"{{"v":1,"id":"r","allowed":{allowed},"status":{},"reason":"x","namespace":"shop","labels":{{"app":"api"}},"method":"GET","host":"shop","path":"/x","request_principal":"https://idp.example/alice","claims":{claims}}}"#,
        if allowed { 200 } else { 403 }
    )
}

#[test]
fn recorded_claims_stand_for_the_token() {
    let e = engine(ADMINS_ONLY);
    let log = [
        line(r#"{"role":"admin","iss":"https://idp.example","sub":"alice"}"#, true),
        line(r#"{"role":"viewer","iss":"https://idp.example","sub":"alice"}"#, true),
        "not json".to_owned(),
        r#"{"v":1,"allowed":false,"status":401,"reason":"request authentication failed: expired","namespace":"shop"}"#.to_owned(),
    ]
    .join("\n");
    let r = simulate(log.as_bytes(), &e, &Options::default(), &|_| {}).expect("simulate");
    assert_eq!(r.lines, 4);
    assert_eq!(r.replayed, 2);
    assert_eq!(r.unreadable, 1, "{:?}", r.unreadable_examples);
    assert_eq!(r.not_replayable, 1, "a refused token cannot be replayed");
    assert_eq!(r.changes.get(&Change::AllowToDeny), Some(&1), "{r:#?}");
    let edge = r.by_edge.keys().next().expect("an edge");
    assert_eq!(edge, &("plaintext".to_owned(), "shop/api".to_owned()));
}

#[test]
fn many_workers_count_what_one_counts() {
    let e = engine(ADMINS_ONLY);
    let mut log = String::new();
    for i in 0..10_000 {
        let role = if i % 3 == 0 { "admin" } else { "viewer" };
        log.push_str(&line(&format!(r#"{{"role":"{role}"}}"#), i % 2 == 0));
        log.push('\n');
    }
    let one = simulate(
        log.as_bytes(),
        &e,
        &Options {
            threads: 1,
            examples: 3,
        },
        &|_| {},
    )
    .expect("simulate");
    let four = simulate(
        log.as_bytes(),
        &e,
        &Options {
            threads: 4,
            examples: 3,
        },
        &|_| {},
    )
    .expect("simulate");
    assert_eq!(one.changes, four.changes);
    assert_eq!(one.replayed, 10_000);
    assert_eq!(four.unchanged, one.unchanged);
}
