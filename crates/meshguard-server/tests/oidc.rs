//! The OIDC browser login (Gloo `oauth2.oidcAuthorizationCode`) end to end against a real
//! OpenID provider, oidc-provider from the npm registry (scripts/test.sh installs it into
//! target/oidc-node), driven by a scripted browser (reqwest with a cookie jar) through its
//! development login and consent pages. meshguard is asked through the real ext_authz gRPC API
//! at each step, as Envoy would ask it.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::ext::*;
use common::*;
use envoy_types::ext_authz::v3::pb::HttpResponse;

struct Node(Child);
impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn peer_dir() -> Option<PathBuf> {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/oidc-node");
    if d.join("node_modules/oidc-provider").exists()
        && Command::new("node").arg("--version").output().is_ok()
    {
        return Some(d);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("oidc-provider (npm) or node is missing; scripts/test.sh installs it into target/oidc-node");
    }
    eprintln!("SKIPPED: oidc-provider not installed (run scripts/test.sh)");
    None
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port")
}

const APP: &str = "http://app.test";

/// What meshguard answered: status, headers (upstream then client headers on 200, client
/// headers otherwise).
async fn ask(r: &Running, path: &str, cookie: Option<&str>) -> (u16, Vec<(String, String)>) {
    let resp = call_raw(
        r,
        Call {
            config_id: "gloo-system.login",
            host: "app.test",
            path: path.to_owned(),
            headers: cookie.map(|c| hs(&[("cookie", c)])).unwrap_or_default(),
            ..Default::default()
        },
    )
    .await;
    match resp.http_response {
        // Upstream headers, then headers for the client (a renewed session cookie).
        Some(HttpResponse::OkResponse(ok)) => (
            200,
            pairs(&ok.headers)
                .into_iter()
                .chain(pairs(&ok.response_headers_to_add))
                .collect(),
        ),
        _ => {
            let (s, h, _) = verdict(&resp);
            (s, h)
        }
    }
}

fn header<'a>(h: &'a [(String, String)], k: &str) -> Option<&'a str> {
    h.iter().find(|(a, _)| a == k).map(|(_, v)| v.as_str())
}

/// `name=value` of a Set-Cookie header.
fn cookie_pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap_or("").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_login_callback_session_and_logout_against_oidc_provider() {
    let Some(dir) = peer_dir() else { return };
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/oidc/provider.mjs"),
        dir.join("provider.mjs"),
    )
    .expect("copy provider");
    let port = free_port();
    let issuer = format!("http://127.0.0.1:{port}");
    let _node = Node(
        Command::new("node")
            .current_dir(&dir)
            .args([
                "provider.mjs",
                &port.to_string(),
                &format!("{APP}/callback"),
                &format!("{APP}/bye"),
                // ID and access tokens live 3 s, so the test sees a session expire and renew.
                "3",
            ])
            .stdout(Stdio::null())
            // Refused grants are printed (provider.mjs): they explain a failing step.
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "oidc-provider did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let policies = std::env::temp_dir().join(format!("meshguard-oidc-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&policies);
    std::fs::create_dir_all(&policies).expect("dir");
    std::fs::write(
        policies.join("login.yaml"),
        format!(
            "apiVersion: v1
kind: Secret
metadata: {{name: oidc-client, namespace: gloo-system}}
stringData: {{client-secret: mesh-client-secret}}
---
apiVersion: enterprise.gloo.solo.io/v1
kind: AuthConfig
metadata: {{name: login, namespace: gloo-system}}
spec:
  configs:
  - name: oidc
    oauth2:
      oidcAuthorizationCode:
        clientId: meshguard
        clientSecretRef: {{name: oidc-client}}
        issuerUrl: {issuer}
        appUrl: {APP}
        callbackPath: /callback
        logoutPath: /logout
        afterLogoutUrl: {APP}/bye
        scopes: [email]
        headers: {{idTokenHeader: x-id-token}}
        session: {{cookie: {{allowRefreshing: true}}}}
"
        ),
    )
    .expect("write");
    let r = start(&policies, Duration::ZERO).await;

    // 1. No session: redirected to the provider, with a login cookie.
    let (s, h) = ask(&r, "/orders?page=2", None).await;
    assert_eq!(s, 302, "{h:?}");
    let authorize = header(&h, "location").expect("location").to_owned();
    assert!(
        authorize.starts_with(&format!("{issuer}/auth?")),
        "{authorize}"
    );
    assert!(authorize.contains("code_challenge_method=S256") && authorize.contains("nonce="));
    let pending = cookie_pair(header(&h, "set-cookie").expect("login cookie"));
    // Every visitor gets a sealed login cookie: its value is no session.
    let as_session = pending.replace("meshguard-oidc-pending=", "meshguard-session=");
    assert_eq!(ask(&r, "/orders", Some(&as_session)).await.0, 302);

    // 2. The browser logs in and consents at the provider (its development pages).
    let browser = reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let next = |resp: reqwest::Response| {
        resp.headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(|l| {
                if l.starts_with('/') {
                    format!("{issuer}{l}")
                } else {
                    l.to_owned()
                }
            })
            .expect("redirect")
    };
    let interaction = next(browser.get(&authorize).send().await.expect("authorize"));
    let resume = next(
        browser
            .post(&interaction)
            .header("content-type", "application/x-www-form-urlencoded")
            .body("prompt=login&login=alice&password=any")
            .send()
            .await
            .expect("login"),
    );
    let consent = next(browser.get(&resume).send().await.expect("resume"));
    let resume = next(
        browser
            .post(&consent)
            .header("content-type", "application/x-www-form-urlencoded")
            .body("prompt=consent")
            .send()
            .await
            .expect("consent"),
    );
    let callback = next(browser.get(&resume).send().await.expect("resume"));
    assert!(
        callback.starts_with(&format!("{APP}/callback?code=")),
        "{callback}"
    );
    let callback_path = callback.trim_start_matches(APP).to_owned();

    // A forged state is refused, and so is a callback without the login cookie.
    let forged = callback_path.replace("state=", "state=x");
    assert_eq!(ask(&r, &forged, Some(&pending)).await.0, 403);
    assert_eq!(ask(&r, &callback_path, None).await.0, 403);

    // 3. The callback: code exchanged, ID token verified, session cookie, back to the page.
    let (s, h) = ask(&r, &callback_path, Some(&pending)).await;
    assert_eq!(s, 302, "{h:?}");
    assert_eq!(
        header(&h, "location"),
        Some(format!("{APP}/orders?page=2").as_str())
    );
    let session = h
        .iter()
        .filter(|(k, _)| k == "set-cookie")
        .map(|(_, v)| cookie_pair(v))
        .find(|c| c.starts_with("meshguard-session="))
        .expect("session cookie");

    // 4. With the session: allowed, the ID token goes upstream.
    let (s, h) = ask(&r, "/orders", Some(&session)).await;
    assert_eq!(s, 200);
    let id_token = header(&h, "x-id-token").expect("id token header");
    let payload = id_token.split('.').nth(1).expect("jwt");
    use base64::Engine as _;
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .expect("b64"),
    )
    .expect("claims");
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["aud"], "meshguard");
    // A tampered session cookie is no session.
    let mut bad = session.clone();
    bad.push('A');
    assert_eq!(ask(&r, "/orders", Some(&bad)).await.0, 302);

    // 5. The session expires (3 s tokens): the refresh token renews it without a login; the
    // renewed cookie is set on the response and the new ID token goes upstream.
    let first_token = id_token.to_owned();
    tokio::time::sleep(Duration::from_millis(4200)).await;
    // Three requests arrive at once with the expired cookie (a page and its assets): they
    // share one exchange, so all get the same new ID token (a provider that rotates refresh
    // tokens would revoke the grant on a second exchange with the same token).
    let ((s, h), (s2, h2), (s3, h3)) = tokio::join!(
        ask(&r, "/orders", Some(&session)),
        ask(&r, "/style.css", Some(&session)),
        ask(&r, "/app.js", Some(&session))
    );
    assert_eq!(
        (s, s2, s3),
        (200, 200, 200),
        "renewed with the refresh token: {h:?}"
    );
    let renewed_token = header(&h, "x-id-token").expect("id token").to_owned();
    assert_ne!(renewed_token, first_token, "a new ID token");
    assert_eq!(header(&h2, "x-id-token"), Some(renewed_token.as_str()));
    assert_eq!(header(&h3, "x-id-token"), Some(renewed_token.as_str()));
    let renewed = h
        .iter()
        .filter(|(k, _)| k == "set-cookie")
        .map(|(_, v)| cookie_pair(v))
        .find(|c| c.starts_with("meshguard-session="))
        .expect("renewed session cookie");
    // A later request with the old cookie reuses the finished refresh for a while.
    let (s, h) = ask(&r, "/orders", Some(&session)).await;
    assert_eq!(s, 200);
    assert_eq!(header(&h, "x-id-token"), Some(renewed_token.as_str()));
    // The renewed cookie is a live session: no refresh, no new cookie.
    let (s, h) = ask(&r, "/orders", Some(&renewed)).await;
    assert_eq!(s, 200);
    assert!(header(&h, "set-cookie").is_none(), "{h:?}");

    // 6. Logout clears the session, revokes the tokens and sends the browser to the provider's
    // end_session_endpoint, which ends the provider session and returns to afterLogoutUrl.
    let (s, h) = ask(&r, "/logout", Some(&renewed)).await;
    assert_eq!(s, 302);
    let end = header(&h, "location").expect("location").to_owned();
    assert!(end.starts_with(&format!("{issuer}/session/end?")), "{end}");
    assert!(
        end.contains("post_logout_redirect_uri=http%3A%2F%2Fapp.test%2Fbye")
            && end.contains("id_token_hint=")
            && end.contains("client_id=meshguard"),
        "{end}"
    );
    assert!(header(&h, "set-cookie")
        .is_some_and(|c| c.starts_with("meshguard-session=;") && c.contains("Max-Age=0")));
    // meshguard revoked the refresh token at the provider (RFC 7009): another replica, which
    // reads the same cookies but shares no state with this one, cannot renew the old session.
    // (Checked before the provider's own logout, which would end the grant anyway.)
    let replica = start(&policies, Duration::ZERO).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (s, h) = ask(&replica, "/orders", Some(&session)).await;
        if s == 302 {
            assert!(
                header(&h, "location").is_some_and(|l| l.starts_with(&format!("{issuer}/auth?")))
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the refresh token still works after logout: {s} {h:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    replica.stop().await;
    let page = browser
        .get(&end)
        .send()
        .await
        .expect("end session")
        .text()
        .await
        .expect("page");
    let xsrf = page
        .split("name=\"xsrf\" value=\"")
        .nth(1)
        .and_then(|t| t.split('"').next())
        .expect("the provider's logout confirmation form")
        .to_owned();
    let done = browser
        .post(format!("{issuer}/session/end/confirm"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("xsrf={xsrf}&logout=yes"))
        .send()
        .await
        .expect("confirm");
    let back = next(done);
    assert!(back.starts_with(&format!("{APP}/bye")), "{back}");
    // The refresh token was revoked: the old expired cookie now leads to a new login.
    let (s, h) = ask(&r, "/orders", Some(&session)).await;
    assert_eq!(s, 302, "{h:?}");
    assert!(header(&h, "location").is_some_and(|l| l.starts_with(&format!("{issuer}/auth?"))));
    // The code is single-use: replaying the callback fails at the provider (which also revokes
    // the grant issued for it, so this comes last).
    assert_eq!(ask(&r, &callback_path, Some(&pending)).await.0, 403);
    r.stop().await;
}
