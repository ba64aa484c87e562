//! The workload's SVID and trust bundle as rustls configuration, swapped atomically on rotation.
//!
//! Handshakes read the current material through a certificate resolver and verifiers that load
//! one `ArcSwap` each, so a rotated SVID is used by the next handshake while established
//! connections keep the keys they negotiated.
//!
//! Peer checks (X509-SVID standard, section 5): the chain must verify to this trust domain's
//! bundle (expiry and signature included; a self-signed or foreign-CA certificate fails here),
//! the leaf must carry exactly one URI SAN holding a SPIFFE ID with a path, and that ID must be
//! in our trust domain. An outbound connection additionally requires one expected SPIFFE ID.

use std::sync::Arc;

use arc_swap::ArcSwap;
use meshguard_identity::SpiffeId;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme,
};
use tokio::sync::watch;

use crate::ProxyError;

/// An X.509-SVID with its key and the trust bundle it chains to.
#[derive(Clone)]
pub struct SvidMaterial {
    pub id: SpiffeId,
    /// Leaf first, then intermediates.
    pub chain: Vec<CertificateDer<'static>>,
    pub key: Arc<PrivateKeyDer<'static>>,
    /// Root certificates of the trust domain.
    pub bundle: Vec<CertificateDer<'static>>,
}

impl SvidMaterial {
    /// An SVID issued in-process by a meshguard CA, with that CA's trust bundle (PEM).
    pub fn from_issued(svid: meshguard_identity::ca::Svid, bundle_pem: &str) -> SvidMaterial {
        SvidMaterial {
            id: svid.id,
            chain: svid
                .chain_der
                .into_iter()
                .map(CertificateDer::from)
                .collect(),
            key: Arc::new(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(svid.key_der))),
            bundle: meshguard_identity::ca::pem_to_der(bundle_pem)
                .into_iter()
                .map(CertificateDer::from)
                .collect(),
        }
    }
}

impl std::fmt::Debug for SvidMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SvidMaterial")
            .field("id", &self.id.to_string())
            .field("chain", &self.chain.len())
            .field("bundle", &self.bundle.len())
            .finish()
    }
}

struct Current {
    id: SpiffeId,
    certified: Arc<CertifiedKey>,
    roots: Arc<RootCertStore>,
    client_verifier: Arc<dyn ClientCertVerifier>,
    /// Hex SHA-256 of our leaf (for logs and tests).
    leaf_sha256: String,
    /// When the leaf expires (Unix seconds).
    not_after: u64,
}

/// The proxy's identity: current SVID, bundle and verifiers, replaced as a unit.
pub struct SvidStore {
    current: ArcSwap<Current>,
    provider: Arc<CryptoProvider>,
    updates: watch::Sender<u64>,
}

impl std::fmt::Debug for SvidStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SvidStore")
            .field("id", &self.id().to_string())
            .finish()
    }
}

/// Lower-case hex SHA-256 of a certificate (Envoy's XFCC `Hash`).
pub fn cert_sha256(der: &[u8]) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Why a certificate carries no usable SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SvidError {
    #[error("the certificate does not parse: {0}")]
    Parse(String),
    #[error("bad subjectAltName: {0}")]
    San(String),
    #[error("the certificate has no subjectAltName, so no SPIFFE ID")]
    NoSan,
    #[error("URI SAN `{uri}`: {reason}")]
    BadId { uri: String, reason: String },
    #[error("the certificate has no URI SAN, so no SPIFFE ID")]
    NoUri,
    #[error("the certificate has {0} URI SANs; an X509-SVID has exactly one")]
    ManyUris(usize),
}

/// The SPIFFE ID of a leaf certificate: exactly one URI SAN, a valid SPIFFE ID with a path.
pub fn spiffe_id_of(der: &[u8]) -> Result<SpiffeId, SvidError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| SvidError::Parse(e.to_string()))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| SvidError::San(e.to_string()))?
        .ok_or(SvidError::NoSan)?;
    let uris: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|g| match g {
            x509_parser::extensions::GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [one] => SpiffeId::parse_workload(one).map_err(|e| SvidError::BadId {
            uri: (*one).to_owned(),
            reason: e.to_string(),
        }),
        [] => Err(SvidError::NoUri),
        _ => Err(SvidError::ManyUris(uris.len())),
    }
}

fn build(material: &SvidMaterial, provider: &Arc<CryptoProvider>) -> Result<Current, ProxyError> {
    let leaf = material
        .chain
        .first()
        .ok_or_else(|| ProxyError::Identity("the SVID has no certificate".into()))?;
    let id = spiffe_id_of(leaf).map_err(|e| ProxyError::Identity(e.to_string()))?;
    if id != material.id {
        return Err(ProxyError::Identity(format!(
            "the certificate is for {id}, not {}",
            material.id
        )));
    }
    let key = provider
        .key_provider
        .load_private_key(material.key.as_ref().clone_key())
        .map_err(|e| ProxyError::Identity(format!("the SVID key cannot be used: {e}")))?;
    let certified = Arc::new(CertifiedKey::new(material.chain.clone(), key));
    certified
        .keys_match()
        .map_err(|e| ProxyError::Identity(format!("the SVID key does not match it: {e}")))?;
    let mut roots = RootCertStore::empty();
    for c in &material.bundle {
        roots
            .add(c.clone())
            .map_err(|e| ProxyError::Identity(format!("a bundle certificate is unusable: {e}")))?;
    }
    if roots.is_empty() {
        return Err(ProxyError::Identity("the trust bundle is empty".into()));
    }
    let roots = Arc::new(roots);
    let client_verifier =
        WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| {
                ProxyError::Identity(format!("cannot verify clients with this bundle: {e}"))
            })?;
    let not_after = x509_parser::parse_x509_certificate(leaf)
        .map(|(_, c)| u64::try_from(c.validity().not_after.timestamp()).unwrap_or(0))
        .unwrap_or(0);
    Ok(Current {
        not_after,
        leaf_sha256: cert_sha256(leaf),
        id,
        certified,
        roots,
        client_verifier,
    })
}

impl SvidStore {
    pub fn new(material: SvidMaterial) -> Result<Arc<SvidStore>, ProxyError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let current = build(&material, &provider)?;
        let (updates, _) = watch::channel(0);
        Ok(Arc::new(SvidStore {
            current: ArcSwap::from_pointee(current),
            provider,
            updates,
        }))
    }

    /// Installs a new SVID (rotation). New handshakes use it; open connections are untouched.
    /// Refused (the old SVID stays) if it is unusable or for another SPIFFE ID.
    pub fn update(&self, material: SvidMaterial) -> Result<(), ProxyError> {
        let next = build(&material, &self.provider)?;
        // The identity is pinned: a rotation renews it, it never turns the proxy into someone
        // else (for example when the agent reorders several SVIDs).
        let current = self.current.load().id.clone();
        if next.id != current {
            return Err(ProxyError::Identity(format!(
                "the new SVID is for {}, but this proxy is {current}",
                next.id
            )));
        }
        self.current.store(Arc::new(next));
        self.updates.send_modify(|n| *n += 1);
        Ok(())
    }

    pub fn id(&self) -> SpiffeId {
        self.current.load().id.clone()
    }

    pub fn trust_domain(&self) -> String {
        self.current.load().id.trust_domain().to_owned()
    }

    /// When the current SVID expires (Unix seconds).
    pub fn expires_at(&self) -> u64 {
        self.current.load().not_after
    }

    /// Hex SHA-256 of the current leaf certificate.
    pub fn leaf_sha256(&self) -> String {
        self.current.load().leaf_sha256.clone()
    }

    /// Bumped on every installed rotation.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.updates.subscribe()
    }

    /// Inbound: TLS 1.3, a client certificate required and checked as an SVID of our domain.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, ProxyError> {
        let cfg = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| ProxyError::Identity(e.to_string()))?
            .with_client_cert_verifier(Arc::new(PeerVerifier {
                store: self.clone(),
                expect: None,
            }))
            .with_cert_resolver(Arc::new(Resolver(self.clone())));
        // No session resumption: a resumed session would skip the peer checks, so an expired
        // SVID or a CA dropped from the bundle could keep connecting.
        let mut cfg = cfg;
        cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        cfg.send_tls13_tickets = 0;
        Ok(Arc::new(cfg))
    }

    /// Outbound: TLS 1.3 with our SVID as client certificate; the server must present `expect`.
    pub fn client_config(
        self: &Arc<Self>,
        expect: SpiffeId,
    ) -> Result<Arc<ClientConfig>, ProxyError> {
        let mut cfg = ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| ProxyError::Identity(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PeerVerifier {
                store: self.clone(),
                expect: Some(expect),
            }))
            .with_client_cert_resolver(Arc::new(Resolver(self.clone())));
        // Peers are named by SPIFFE ID, not DNS: no SNI. No resumption (see server_config).
        cfg.enable_sni = false;
        cfg.resumption = rustls::client::Resumption::disabled();
        Ok(Arc::new(cfg))
    }

    fn check_peer(
        &self,
        leaf: &CertificateDer<'_>,
        expect: Option<&SpiffeId>,
    ) -> Result<(), rustls::Error> {
        let id = spiffe_id_of(leaf).map_err(|e| rustls::Error::General(e.to_string()))?;
        let td = self.current.load().id.trust_domain().to_owned();
        if id.trust_domain() != td {
            return Err(rustls::Error::General(format!(
                "peer {id} is not in trust domain {td}"
            )));
        }
        if let Some(e) = expect {
            if &id != e {
                return Err(rustls::Error::General(format!(
                    "upstream presented {id}, expected {e}"
                )));
            }
        }
        Ok(())
    }
}

#[derive(Debug)]
struct Resolver(Arc<SvidStore>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current.load().certified.clone())
    }
}

impl rustls::client::ResolvesClientCert for Resolver {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current.load().certified.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Verifies the peer's SVID against the current bundle, in both directions.
#[derive(Debug)]
struct PeerVerifier {
    store: Arc<SvidStore>,
    expect: Option<SpiffeId>,
}

impl PeerVerifier {
    fn tls12(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.store.provider.signature_verification_algorithms,
        )
    }

    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.store.provider.signature_verification_algorithms,
        )
    }

    fn schemes(&self) -> Vec<SignatureScheme> {
        self.store
            .provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl ClientCertVerifier for PeerVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verifier = self.store.current.load().client_verifier.clone();
        verifier.verify_client_cert(end_entity, intermediates, now)?;
        self.store.check_peer(end_entity, None)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes()
    }
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
        let roots = self.store.current.load().roots.clone();
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &roots,
            intermediates,
            now,
            self.store.provider.signature_verification_algorithms.all,
        )?;
        self.store.check_peer(end_entity, self.expect.as_ref())?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes()
    }
}
