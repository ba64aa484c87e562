//! JWKS over HTTPS from a TLS server on 127.0.0.1 with its own CA: the keys are fetched when the
//! client trusts that CA, and refused (401, keys unavailable) when it does not.

mod common;

use std::sync::Arc;

use common::*;
use meshguard_authn::{Authenticator, AuthnOutcome, AuthnSettings, TokenError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::rustls;

async fn start_https(body: String) -> (String, String) {
    let ck =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("cert");
    let cert_pem = ck.cert.pem();
    let cert_der = ck.cert.der().clone();
    let key_der = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![cert_der], key_der)
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!(
        "https://127.0.0.1:{}/jwks",
        listener.local_addr().expect("addr").port()
    );
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, body) = (acceptor.clone(), body.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(sock).await else {
                    return;
                };
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let resp = format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
                let _ = tls.write_all(resp.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (url, cert_pem)
}

fn https_set(url: &str) -> meshguard_policy::PolicySet {
    policy_set(&format!(
        "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: tls, namespace: prod}}
spec:
  jwtRules:
  - issuer: https://issuer.test
    jwksUri: {url}
    timeout: 2s
"
    ))
}

#[tokio::test]
async fn jwks_over_https_with_a_trusted_ca() {
    let (url, ca) = start_https(read("jwks.json")).await;
    let set = https_set(&url);
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca.as_bytes()).expect("ca")])
        .build()
        .expect("client");
    let a = Authenticator::new(&set, client, AuthnSettings::default());
    assert!(matches!(
        bearer(&set, &a, &token("RS256")).await,
        AuthnOutcome::Authenticated(_)
    ));
}

#[tokio::test]
async fn jwks_over_https_with_an_untrusted_certificate_is_refused() {
    let (url, _ca) = start_https(read("jwks.json")).await;
    let set = https_set(&url);
    let a = Authenticator::new(&set, reqwest::Client::new(), AuthnSettings::default());
    match bearer(&set, &a, &token("RS256")).await {
        AuthnOutcome::Rejected(r) => {
            assert_eq!(r.status, 401);
            assert!(
                matches!(r.error, TokenError::JwksUnavailable(_)),
                "{:?}",
                r.error
            );
        }
        other => panic!("{other:?}"),
    }
}
