//! SVID issuance cost: a full X.509-SVID (fresh key + certificate signed by the CA, DER and PEM
//! encodings) for ECDSA P-256 and RSA 2048 leaves, and JWT-SVID signing and validation, each
//! next to the bare aws-lc-rs operations they cannot avoid (key generation + one signature),
//! measured in the same run.
//!
//! Run: cargo bench -p meshguard-identity --bench issue

use std::hint::black_box;
use std::time::Duration;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use criterion::{criterion_group, criterion_main, Criterion};
use meshguard_identity::{Ca, KeyType, SpiffeId};

fn bench(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("meshguard-bench-ca-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let ca = Ca::init(&dir, "cluster.local", KeyType::EcdsaP256).expect("ca");
    let id = SpiffeId::istio("cluster.local", "prod", "web").expect("id");
    let rng = SystemRandom::new();
    let mut g = c.benchmark_group("svid");

    // Baseline: the unavoidable crypto of one EC SVID (a P-256 key pair and one signature).
    let signer_pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("key");
    let signer = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, signer_pkcs8.as_ref())
        .expect("key");
    g.bench_function("baseline_p256_keygen_plus_sign", |b| {
        b.iter(|| {
            let k =
                EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("key");
            black_box(k);
            black_box(signer.sign(&rng, black_box(&[7u8; 400])).expect("sign"))
        })
    });
    g.bench_function("x509_svid_ec_p256", |b| {
        b.iter(|| {
            black_box(
                ca.issue(&id, Duration::from_secs(3600), KeyType::EcdsaP256)
                    .expect("issue"),
            )
        })
    });
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    g.bench_function("baseline_rsa2048_keygen", |b| {
        b.iter(|| {
            black_box(
                aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("rsa"),
            )
        })
    });
    g.bench_function("x509_svid_rsa2048", |b| {
        b.iter(|| {
            black_box(
                ca.issue(&id, Duration::from_secs(3600), KeyType::Rsa2048)
                    .expect("issue"),
            )
        })
    });
    g.finish();

    let mut g = c.benchmark_group("jwt_svid");
    let jwt = ca.jwt_signer().expect("jwt.key");
    let aud = vec!["backend".to_string()];
    g.bench_function("baseline_p256_sign", |b| {
        b.iter(|| black_box(signer.sign(&rng, black_box(&[7u8; 200])).expect("sign")))
    });
    g.bench_function("sign", |b| {
        b.iter(|| black_box(jwt.sign(&id, &aud, Duration::from_secs(300)).expect("sign")))
    });
    let token = jwt.sign(&id, &aud, Duration::from_secs(300)).expect("sign");
    g.bench_function("validate", |b| {
        b.iter(|| {
            black_box(
                jwt.validate(&token, "backend", "cluster.local")
                    .expect("ok"),
            )
        })
    });
    g.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, bench);
criterion_main!(benches);
