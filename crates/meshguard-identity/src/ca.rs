//! A SPIFFE certificate authority: a root (or an intermediate under your own root) that issues
//! short-lived X.509-SVIDs as the X509-SVID standard requires (spiffe/spiffe
//! standards/X509-SVID.md): exactly one URI SAN, an explicit `CA:FALSE`, key usage
//! `digitalSignature` without `keyCertSign`/`cRLSign`, extended key usages serverAuth and
//! clientAuth, chaining to the trust bundle.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, PKCS_ECDSA_P256_SHA256, PKCS_RSA_SHA256,
};
use time::OffsetDateTime;

use crate::jwt::{JwtSigner, JwtSvidError};
use crate::spiffe_id::{validate_trust_domain, SpiffeId, SpiffeIdError};

/// Validity of a CA certificate created by `init`.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Backdating of `notBefore`, for peers whose clocks run a little behind.
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);
/// Default SVID lifetime.
pub const DEFAULT_SVID_TTL: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error(transparent)]
    SpiffeId(#[from] SpiffeIdError),
    #[error("`{id}` is not in this CA's trust domain: it issues only spiffe://{ca}/... IDs")]
    ForeignTrustDomain { id: String, ca: String },
    #[error("certificate generation failed: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} already exists; refusing to overwrite a CA (remove it or choose another --dir)")]
    Exists(PathBuf),
    #[error("RSA key generation failed")]
    KeyGen,
    #[error("the SVID lifetime must be between 1 second and the CA's remaining validity")]
    BadTtl,
    #[error("{0}: not a JWT signing key ({1})")]
    JwtKey(PathBuf, JwtSvidError),
    #[error("{0}: not a CA created by `meshguard ca init` ({1})")]
    NotACa(PathBuf, String),
    #[error("not a valid certificate request (PKCS#10 PEM with a valid signature): {0}")]
    Csr(String),
}

/// A fresh P-256 key and a certificate request for it (PEM, PEM): what a client sends the CA
/// service, keeping its key to itself.
pub fn key_and_csr() -> Result<(String, String), CaError> {
    let key = KeyType::EcdsaP256.generate()?;
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "SPIFFE");
    p.distinguished_name = dn;
    let csr = p.serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.pem()?))
}

/// Key algorithm for a CA or an SVID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    EcdsaP256,
    Rsa2048,
}

impl KeyType {
    fn generate(self) -> Result<KeyPair, CaError> {
        Ok(match self {
            KeyType::EcdsaP256 => KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?,
            // rcgen cannot generate RSA keys with its aws-lc backend; aws-lc-rs itself can.
            KeyType::Rsa2048 => {
                use aws_lc_rs::encoding::AsDer;
                let rsa = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
                    .map_err(|_| CaError::KeyGen)?;
                let der = rsa.as_der().map_err(|_| CaError::KeyGen)?;
                let pkcs8 = rustls_pki_types::PrivatePkcs8KeyDer::from(der.as_ref().to_vec());
                KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, &PKCS_RSA_SHA256)?
            }
        })
    }
}

/// An issued SVID: the leaf plus the intermediates up to (not including) the root, and its key.
#[derive(Debug, Clone)]
pub struct Svid {
    pub id: SpiffeId,
    pub cert_chain_pem: String,
    pub leaf_der: Vec<u8>,
    /// The chain as DER certificates, leaf first (the Workload API's `x509_svid`).
    pub chain_der: Vec<Vec<u8>>,
    pub key_pem: String,
    /// The private key as unencrypted PKCS#8 DER (the Workload API's `x509_svid_key`).
    pub key_der: Vec<u8>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    /// When it was issued (notBefore is backdated by the clock-skew allowance).
    pub issued_at: OffsetDateTime,
}

impl Svid {
    /// Half of the lifetime, counted from issuance: when rotation is due.
    pub fn half_life(&self) -> OffsetDateTime {
        self.issued_at + (self.not_after - self.issued_at) / 2
    }
}

/// The DER certificates in a PEM text. Only `CERTIFICATE` blocks are taken: a private key
/// that found its way into a certificate file must never be handed out as part of a chain.
pub fn pem_to_der(pem: &str) -> Vec<Vec<u8>> {
    x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes())
        .filter_map(Result::ok)
        .filter(|p| p.label == "CERTIFICATE")
        .map(|p| p.contents)
        .collect()
}

/// Refuses certificate files that hold anything but certificates (a key pasted into ca.crt or
/// bundle.crt would otherwise travel with every SVID).
fn only_certificates(path: &Path, pem: &str) -> Result<(), CaError> {
    for block in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
        match block {
            Ok(b) if b.label == "CERTIFICATE" => {}
            Ok(b) => {
                return Err(CaError::NotACa(
                    path.to_owned(),
                    format!(
                        "it holds a `{}` block; only certificates belong here",
                        b.label
                    ),
                ))
            }
            Err(e) => return Err(CaError::NotACa(path.to_owned(), e.to_string())),
        }
    }
    Ok(())
}

/// Refuses a private key file that other users could read or that another user owns.
///
/// One shape more is accepted: a Kubernetes Secret volume, whose files the kubelet owns as root
/// with the pod's `fsGroup` as their group (`defaultMode: 0440`). Root can read any file anyway,
/// and the group is this process's own, so no other user can read or replace the key.
fn check_key_file(path: &Path) -> Result<(), CaError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let m = fs::metadata(path).map_err(io(path))?;
        // This process's effective uid and groups without libc, from /proc/self/status (not
        // the owner of /proc/self, which is root for a process that changed its uid and is no
        // longer dumpable). Without /proc, only the mode is checked.
        let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
        let me = effective_uid(&status);
        let groups = own_groups(&status);
        match me {
            Some(me) => key_file_allowed(m.mode() & 0o7777, m.uid(), m.gid(), me, &groups),
            None if m.mode() & 0o077 != 0 => key_file_allowed(m.mode() & 0o7777, 0, 0, 0, &[]),
            None => Ok(()),
        }
        .map_err(|why| CaError::NotACa(path.to_owned(), why))?;
    }
    Ok(())
}

/// The effective uid a `/proc/self/status` names.
fn effective_uid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().nth(1))
        .and_then(|u| u.parse().ok())
}

/// The group ids a `/proc/self/status` names: the effective gid and the supplementary groups.
fn own_groups(status: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for line in status.lines() {
        if let Some(v) = line.strip_prefix("Gid:") {
            // real, effective, saved, filesystem
            out.extend(
                v.split_whitespace()
                    .nth(1)
                    .and_then(|g| g.parse::<u32>().ok()),
            );
        } else if let Some(v) = line.strip_prefix("Groups:") {
            out.extend(v.split_whitespace().filter_map(|g| g.parse::<u32>().ok()));
        }
    }
    out
}

/// Whether a key file with this mode and owner may be used by the process `me` in `groups`.
fn key_file_allowed(mode: u32, uid: u32, gid: u32, me: u32, groups: &[u32]) -> Result<(), String> {
    let secret_volume = uid == 0 && me != 0 && groups.contains(&gid) && mode & 0o037 == 0;
    if secret_volume {
        return Ok(());
    }
    if mode & 0o077 != 0 {
        return Err(format!(
            "the key file is accessible to other users (mode {:o}); run chmod 600",
            mode & 0o777
        ));
    }
    if uid != me {
        return Err(format!(
            "the key file is owned by uid {uid}, not by this user"
        ));
    }
    Ok(())
}

/// A loaded CA.
pub struct Ca {
    pub trust_domain: String,
    issuer: Issuer<'static, KeyPair>,
    /// This CA's certificate followed by its parents up to (not including) the root.
    chain_pem: String,
    /// The trust bundle (root certificates), PEM.
    bundle_pem: String,
    not_after: OffsetDateTime,
    /// The JWT authority (`jwt.key`), when the CA directory has one.
    jwt: Option<JwtSigner>,
    /// The SPIFFE bundle sequence number: the newest modification time (Unix seconds) of the
    /// files the bundle is made of, so it changes whenever the bundle does.
    sequence: u64,
}

/// The file holding the JWT authority's key in a CA directory.
pub const JWT_KEY_FILE: &str = "jwt.key";

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CaError + '_ {
    move |source| CaError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes a private key readable by the owner only.
fn write_private(path: &Path, pem: &str) -> Result<(), CaError> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(io(path))?;
    f.write_all(pem.as_bytes()).map_err(io(path))
}

fn ca_params(
    trust_domain: &str,
    name: &str,
    path_len: Option<u8>,
) -> Result<CertificateParams, CaError> {
    let td_id = SpiffeId::trust_domain_id(trust_domain)?;
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "meshguard");
    dn.push(DnType::CommonName, format!("{name} {trust_domain}"));
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(match path_len {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.subject_alt_names = vec![SanType::URI(td_id.to_string().try_into()?)];
    let now = OffsetDateTime::now_utc();
    p.not_before = now - CLOCK_SKEW;
    p.not_after = now + CA_VALIDITY;
    p.use_authority_key_identifier_extension = true;
    Ok(p)
}

impl Ca {
    /// Creates a root CA in `dir` (`ca.crt`, `ca.key` (0600), `bundle.crt`).
    pub fn init(dir: &Path, trust_domain: &str, key_type: KeyType) -> Result<Ca, CaError> {
        validate_trust_domain(trust_domain)?;
        let key = key_type.generate()?;
        let params = ca_params(trust_domain, "meshguard root CA", None)?;
        let cert = params.self_signed(&key)?;
        let pem = cert.pem();
        Self::write(dir, &pem, &key.serialize_pem(), &pem)?;
        Self::load(dir)
    }

    /// Creates an intermediate CA in `dir`, signed by the CA in `parent_dir` ("plug in your own
    /// CA": the parent may be any CA in `ca.crt`/`ca.key`/`bundle.crt` form).
    pub fn init_intermediate(
        dir: &Path,
        parent_dir: &Path,
        key_type: KeyType,
    ) -> Result<Ca, CaError> {
        let parent = Ca::load(parent_dir)?;
        let key = key_type.generate()?;
        let params = ca_params(&parent.trust_domain, "meshguard intermediate CA", Some(0))?;
        let cert = params.signed_by(&key, &parent.issuer)?;
        let chain = format!("{}{}", cert.pem(), parent.chain_pem_without_root());
        Self::write(dir, &chain, &key.serialize_pem(), &parent.bundle_pem)?;
        Self::load(dir)
    }

    fn write(dir: &Path, chain_pem: &str, key_pem: &str, bundle_pem: &str) -> Result<(), CaError> {
        let mut builder = fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            builder.mode(0o700);
        }
        builder.create(dir).map_err(io(dir))?;
        for f in ["ca.key", JWT_KEY_FILE] {
            if dir.join(f).exists() {
                return Err(CaError::Exists(dir.join(f)));
            }
        }
        write_private(&dir.join("ca.key"), key_pem)?;
        Self::write_jwt_key(dir)?;
        fs::write(dir.join("ca.crt"), chain_pem).map_err(io(dir))?;
        fs::write(dir.join("bundle.crt"), bundle_pem).map_err(io(dir))?;
        Ok(())
    }

    /// Creates the JWT authority key (`jwt.key`, 0600) in `dir`; an existing one is kept.
    /// `init` does this; run it for CA directories made elsewhere ("bring your own CA").
    pub fn write_jwt_key(dir: &Path) -> Result<(), CaError> {
        let path = dir.join(JWT_KEY_FILE);
        if path.exists() {
            return Ok(());
        }
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        write_private(&path, &key.serialize_pem())
    }

    fn load_jwt_key(dir: &Path) -> Result<Option<JwtSigner>, CaError> {
        let path = dir.join(JWT_KEY_FILE);
        if !path.exists() {
            return Ok(None);
        }
        check_key_file(&path)?;
        let pem = fs::read_to_string(&path).map_err(io(&path))?;
        let key = KeyPair::from_pem(&pem)
            .map_err(|_| CaError::JwtKey(path.clone(), JwtSvidError::BadKey))?;
        JwtSigner::from_pkcs8(&key.serialize_der())
            .map(Some)
            .map_err(|e| CaError::JwtKey(path, e))
    }

    /// The JWT authority, if this CA directory has a `jwt.key`.
    pub fn jwt_signer(&self) -> Option<&JwtSigner> {
        self.jwt.as_ref()
    }

    /// Loads a CA from `dir`.
    pub fn load(dir: &Path) -> Result<Ca, CaError> {
        let read = |f: &str| fs::read_to_string(dir.join(f)).map_err(io(&dir.join(f)));
        let chain_pem = read("ca.crt")?;
        check_key_file(&dir.join("ca.key"))?;
        let key_pem = read("ca.key")?;
        let bundle_pem = read("bundle.crt")?;
        only_certificates(&dir.join("ca.crt"), &chain_pem)?;
        only_certificates(&dir.join("bundle.crt"), &bundle_pem)?;
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|e| CaError::NotACa(dir.join("ca.key"), e.to_string()))?;
        let first = chain_pem
            .split_inclusive("-----END CERTIFICATE-----")
            .next()
            .ok_or_else(|| CaError::NotACa(dir.join("ca.crt"), "no certificate".into()))?;
        let bad = |e: String| CaError::NotACa(dir.join("ca.crt"), e);
        let der = x509_parser::pem::parse_x509_pem(first.as_bytes())
            .map_err(|e| bad(e.to_string()))?
            .1;
        let cert = der.parse_x509().map_err(|e| bad(e.to_string()))?;
        let trust_domain = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .and_then(|san| {
                san.value.general_names.iter().find_map(|g| match g {
                    x509_parser::extensions::GeneralName::URI(u) => u
                        .strip_prefix("spiffe://")
                        .map(|td| td.trim_end_matches('/').to_owned()),
                    _ => None,
                })
            })
            .ok_or_else(|| bad("no spiffe:// trust domain SAN".into()))?;
        validate_trust_domain(&trust_domain).map_err(|e| bad(e.to_string()))?;
        let not_after = cert.validity().not_after.to_datetime();
        let issuer = Issuer::from_ca_cert_pem(first, key).map_err(|e| bad(e.to_string()))?;
        let jwt = Self::load_jwt_key(dir)?;
        let sequence = ["bundle.crt", JWT_KEY_FILE]
            .iter()
            .filter_map(|f| fs::metadata(dir.join(f)).and_then(|m| m.modified()).ok())
            .filter_map(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs())
            .max()
            .unwrap_or(1);
        Ok(Ca {
            jwt,
            sequence,
            trust_domain,
            issuer,
            chain_pem,
            bundle_pem,
            not_after,
        })
    }

    fn chain_pem_without_root(&self) -> String {
        // The chain file of a root CA is the root itself; the root never goes in chains.
        if self.chain_pem.trim() == self.bundle_pem.trim() {
            String::new()
        } else {
            self.chain_pem.clone()
        }
    }

    /// The trust bundle (root certificates), PEM.
    pub fn bundle_pem(&self) -> &str {
        &self.bundle_pem
    }

    /// The trust bundle in the SPIFFE bundle format (SPIFFE_Trust_Domain_and_Bundle.md): a JWK
    /// Set with one `use: x509-svid` key per root certificate (its public key and `x5c`) and the
    /// JWT authority as a `use: jwt-svid` key with its `kid`.
    pub fn spiffe_bundle_json(&self, refresh_hint: Duration) -> String {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let std = base64::engine::general_purpose::STANDARD;
        let mut keys = Vec::new();
        for der in pem_to_der(&self.bundle_pem) {
            let Ok((_, cert)) = x509_parser::parse_x509_certificate(&der) else {
                continue;
            };
            use x509_parser::public_key::PublicKey;
            let p256 = cert
                .public_key()
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .is_some_and(|oid| oid.to_id_string() == "1.2.840.10045.3.1.7");
            let mut jwk = match cert.public_key().parsed() {
                Ok(PublicKey::EC(point)) if p256 && point.data().len() == 65 => serde_json::json!({
                    "kty": "EC", "crv": "P-256",
                    "x": b64.encode(&point.data()[1..33]), "y": b64.encode(&point.data()[33..]),
                }),
                Ok(PublicKey::RSA(rsa)) => serde_json::json!({
                    "kty": "RSA",
                    "n": b64.encode(rsa.modulus.strip_prefix(&[0]).unwrap_or(rsa.modulus)),
                    "e": b64.encode(rsa.exponent),
                }),
                _ => continue,
            };
            jwk["use"] = "x509-svid".into();
            jwk["x5c"] = serde_json::json!([std.encode(&der)]);
            keys.push(jwk);
        }
        if let Some(j) = &self.jwt {
            keys.push(j.jwk());
        }
        let doc = serde_json::json!({
            "keys": keys,
            "spiffe_sequence": self.sequence,
            "spiffe_refresh_hint": refresh_hint.as_secs(),
        });
        serde_json::to_string_pretty(&doc).unwrap_or_default()
    }

    /// The trust bundle as concatenated DER certificates (the Workload API's `bundle`).
    pub fn bundle_der(&self) -> Vec<u8> {
        pem_to_der(&self.bundle_pem).concat()
    }

    /// Issues an X.509-SVID for `id` with a fresh key, valid for `ttl` (backdated by the clock
    /// skew allowance).
    pub fn issue(&self, id: &SpiffeId, ttl: Duration, key_type: KeyType) -> Result<Svid, CaError> {
        self.issue_with_dns(id, &[], ttl, key_type)
    }

    /// The certificate parameters of an X.509-SVID for `id` (plus DNS names for a server that
    /// clients reach by name), valid for `ttl` from now.
    fn svid_params(
        &self,
        id: &SpiffeId,
        dns: &[String],
        ttl: Duration,
    ) -> Result<(CertificateParams, OffsetDateTime), CaError> {
        if id.trust_domain() != self.trust_domain {
            return Err(CaError::ForeignTrustDomain {
                id: id.to_string(),
                ca: self.trust_domain.clone(),
            });
        }
        if id.path().is_empty() {
            return Err(CaError::SpiffeId(SpiffeIdError::NoPath(
                id.trust_domain().to_owned(),
            )));
        }
        let now = OffsetDateTime::now_utc();
        if ttl < Duration::from_secs(1) || now + ttl > self.not_after {
            return Err(CaError::BadTtl);
        }
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "SPIFFE");
        p.distinguished_name = dn;
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.subject_alt_names = vec![SanType::URI(id.to_string().try_into()?)];
        for d in dns {
            p.subject_alt_names
                .push(match d.parse::<std::net::IpAddr>() {
                    Ok(ip) => SanType::IpAddress(ip),
                    Err(_) => SanType::DnsName(d.clone().try_into()?),
                });
        }
        p.not_before = now - CLOCK_SKEW;
        p.not_after = now + ttl;
        p.use_authority_key_identifier_extension = true;
        Ok((p, now))
    }

    /// Signs a PKCS#10 certificate request (PEM) as an X.509-SVID for `id`: the request's
    /// signature is checked and only its public key is used (the CA, not the request, decides
    /// the identity). Returns the chain (leaf first, without the root) in PEM.
    pub fn sign_csr(&self, csr_pem: &str, id: &SpiffeId, ttl: Duration) -> Result<String, CaError> {
        let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| CaError::Csr(e.to_string()))?;
        let (p, _) = self.svid_params(id, &[], ttl)?;
        let cert = p.signed_by(&csr.public_key, &self.issuer)?;
        Ok(format!("{}{}", cert.pem(), self.chain_pem_without_root()))
    }

    /// As [`Ca::issue`], with DNS names (or IP addresses) beside the SPIFFE ID: the CA service's
    /// own serving certificate, which agents verify by name against the trust bundle.
    pub fn issue_with_dns(
        &self,
        id: &SpiffeId,
        dns: &[String],
        ttl: Duration,
        key_type: KeyType,
    ) -> Result<Svid, CaError> {
        let (p, now) = self.svid_params(id, dns, ttl)?;
        let key = key_type.generate()?;
        let cert = p.signed_by(&key, &self.issuer)?;
        let cert_chain_pem = format!("{}{}", cert.pem(), self.chain_pem_without_root());
        Ok(Svid {
            id: id.clone(),
            chain_der: pem_to_der(&cert_chain_pem),
            cert_chain_pem,
            leaf_der: cert.der().to_vec(),
            key_pem: key.serialize_pem(),
            key_der: key.serialize_der(),
            not_before: p.not_before,
            not_after: p.not_after,
            issued_at: now,
        })
    }
}

#[cfg(test)]
mod key_file_tests {
    use super::{key_file_allowed, own_groups};

    #[test]
    fn owner_only_files_and_kubernetes_secret_volumes_are_accepted() {
        // Our own 0600 file.
        assert!(key_file_allowed(0o600, 1000, 1000, 1000, &[1000]).is_ok());
        // A Secret volume: root-owned, group = our fsGroup, 0440.
        assert!(key_file_allowed(0o440, 0, 65532, 65532, &[65532]).is_ok());
        // Group-writable, or readable by others: refused even as a Secret volume.
        assert!(key_file_allowed(0o460, 0, 65532, 65532, &[65532]).is_err());
        assert!(key_file_allowed(0o444, 0, 65532, 65532, &[65532]).is_err());
        // A group we are not in.
        assert!(key_file_allowed(0o440, 0, 100, 65532, &[65532]).is_err());
        // Another user's file, however tight.
        let e = key_file_allowed(0o600, 1001, 1001, 1000, &[1000]).unwrap_err();
        assert!(e.contains("owned by uid 1001"), "{e}");
        let e = key_file_allowed(0o640, 1000, 1000, 1000, &[1000]).unwrap_err();
        assert!(e.contains("chmod 600"), "{e}");
    }

    #[test]
    fn groups_come_from_proc_status() {
        let status = "Name:\tx\nUid:\t65532\t65532\t65532\t65532\nGid:\t65532\t65533\t65532\t65532\nGroups:\t65532 2000 \n";
        assert_eq!(own_groups(status), vec![65533, 65532, 2000]);
        assert_eq!(super::effective_uid(status), Some(65532));
        assert_eq!(super::effective_uid("Name:\tx\n"), None);
    }
}
