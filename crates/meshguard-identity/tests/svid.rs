//! X.509-SVIDs checked field by field against the SPIFFE X509-SVID standard with an X.509 parser,
//! and their chains verified by OpenSSL's CLI (a peer implementation).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use meshguard_identity::{Ca, CaError, KeyType, SpiffeId};
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::*;

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("meshguard-ca-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Checks a leaf against X509-SVID §4 (leaf requirements) and returns its URI SANs.
fn check_leaf(der: &[u8]) -> Vec<String> {
    let (_, cert) = parse_x509_certificate(der).expect("parse leaf");
    let mut uris = Vec::new();
    let (mut bc, mut ku, mut eku) = (false, false, false);
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => {
                for g in &san.general_names {
                    if let GeneralName::URI(u) = g {
                        uris.push((*u).to_owned());
                    }
                }
            }
            ParsedExtension::BasicConstraints(b) => {
                bc = true;
                assert!(!b.ca, "leaf must not be a CA");
            }
            ParsedExtension::KeyUsage(k) => {
                ku = true;
                assert!(ext.critical, "KeyUsage must be critical");
                assert!(k.digital_signature(), "digitalSignature required");
                assert!(
                    !k.key_cert_sign() && !k.crl_sign(),
                    "keyCertSign/cRLSign forbidden on a leaf"
                );
            }
            ParsedExtension::ExtendedKeyUsage(e) => {
                eku = true;
                assert!(
                    e.server_auth && e.client_auth,
                    "EKU must hold serverAuth and clientAuth"
                );
            }
            _ => {}
        }
    }
    assert!(
        bc,
        "real SPIFFE clients reject a leaf without an explicit BasicConstraints"
    );
    assert!(ku && eku);
    assert_eq!(uris.len(), 1, "exactly one URI SAN");
    uris
}

fn openssl_verify(bundle: &Path, chain_pem: &str, dir: &Path) {
    let Ok(out) = Command::new("openssl").arg("version").output() else {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("openssl CLI missing");
        }
        eprintln!("SKIPPED chain check: no openssl CLI");
        return;
    };
    assert!(out.status.success());
    // Split the chain: the first certificate is the leaf, the rest are intermediates.
    let certs: Vec<&str> = chain_pem
        .split_inclusive("-----END CERTIFICATE-----\n")
        .collect();
    let leaf = dir.join("leaf.pem");
    let inter = dir.join("inter.pem");
    std::fs::write(&leaf, certs[0]).expect("write");
    std::fs::write(&inter, certs[1..].concat()).expect("write");
    let mut cmd = Command::new("openssl");
    cmd.args(["verify", "-purpose", "sslclient", "-CAfile"])
        .arg(bundle);
    if certs.len() > 1 {
        cmd.arg("-untrusted").arg(&inter);
    }
    let out = cmd.arg(&leaf).output().expect("openssl verify");
    assert!(
        out.status.success(),
        "openssl verify failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn root_ca_issues_spec_compliant_svids() {
    let dir = tmp("root");
    let ca = Ca::init(&dir, "cluster.local", KeyType::EcdsaP256).expect("init");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("ca.key"))
            .expect("key")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "CA key must be 0600");
    }
    let id = SpiffeId::istio("cluster.local", "production", "frontend").expect("id");
    let svid = ca
        .issue(&id, Duration::from_secs(3600), KeyType::EcdsaP256)
        .expect("issue");
    assert_eq!(
        check_leaf(&svid.leaf_der),
        vec!["spiffe://cluster.local/ns/production/sa/frontend".to_owned()]
    );
    let (_, cert) = parse_x509_certificate(&svid.leaf_der).expect("parse");
    let life = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
    assert!((3600..=3600 + 120).contains(&life), "lifetime {life}s");
    openssl_verify(&dir.join("bundle.crt"), &svid.cert_chain_pem, &dir);
    // The CA can be loaded again and keeps issuing.
    let again = Ca::load(&dir).expect("load");
    assert_eq!(again.trust_domain, "cluster.local");
    let s2 = again
        .issue(&id, Duration::from_secs(600), KeyType::Rsa2048)
        .expect("issue rsa leaf");
    check_leaf(&s2.leaf_der);
    openssl_verify(&dir.join("bundle.crt"), &s2.cert_chain_pem, &dir);
    // Refusals.
    assert!(matches!(
        Ca::init(&dir, "cluster.local", KeyType::EcdsaP256),
        Err(CaError::Exists(_))
    ));
    let other = SpiffeId::parse("spiffe://other.td/ns/a/sa/b").expect("id");
    assert!(
        ca.issue(&other, Duration::from_secs(600), KeyType::EcdsaP256)
            .is_err(),
        "foreign trust domain"
    );
    let root_id = SpiffeId::parse("spiffe://cluster.local").expect("id");
    assert!(
        ca.issue(&root_id, Duration::from_secs(600), KeyType::EcdsaP256)
            .is_err(),
        "no path"
    );
    assert!(matches!(
        ca.issue(&id, Duration::from_millis(500), KeyType::EcdsaP256),
        Err(CaError::BadTtl)
    ));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn intermediate_under_your_own_root() {
    let root = tmp("own-root");
    let inter = tmp("inter");
    Ca::init(&root, "example.org", KeyType::Rsa2048).expect("rsa root");
    let ca = Ca::init_intermediate(&inter, &root, KeyType::EcdsaP256).expect("intermediate");
    assert_eq!(ca.trust_domain, "example.org");
    let id = SpiffeId::parse_workload("spiffe://example.org/billing/api").expect("id");
    let svid = ca
        .issue(&id, Duration::from_secs(900), KeyType::EcdsaP256)
        .expect("issue");
    check_leaf(&svid.leaf_der);
    assert_eq!(
        svid.cert_chain_pem.matches("BEGIN CERTIFICATE").count(),
        2,
        "leaf + intermediate, no root"
    );
    openssl_verify(&inter.join("bundle.crt"), &svid.cert_chain_pem, &inter);
    let _ = std::fs::remove_dir_all(root);
    let _ = std::fs::remove_dir_all(inter);
}

#[test]
fn ca_files_that_would_leak_keys_are_refused() {
    let dir = std::env::temp_dir().join(format!("meshguard-ca-leak-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    meshguard_identity::Ca::init(
        &dir,
        "cluster.local",
        meshguard_identity::KeyType::EcdsaP256,
    )
    .expect("ca");
    // A second init into the same directory is refused (jwt.key or ca.key exists).
    assert!(meshguard_identity::Ca::init(
        &dir,
        "cluster.local",
        meshguard_identity::KeyType::EcdsaP256
    )
    .is_err());
    // A private key pasted into ca.crt would travel with every SVID chain: refused.
    let crt = std::fs::read_to_string(dir.join("ca.crt")).expect("crt");
    let key = std::fs::read_to_string(dir.join("ca.key")).expect("key");
    std::fs::write(dir.join("ca.crt"), format!("{crt}{key}")).expect("write");
    let e = meshguard_identity::Ca::load(&dir).err().expect("refused");
    assert!(e.to_string().contains("only certificates"), "{e}");
    std::fs::write(dir.join("ca.crt"), &crt).expect("write");
    // A CA key readable by other users: refused with the fix.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.join("ca.key"), std::fs::Permissions::from_mode(0o644))
        .expect("chmod");
    let e = meshguard_identity::Ca::load(&dir).err().expect("refused");
    assert!(e.to_string().contains("chmod 600"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}
