//! `meshguard ca`: create a SPIFFE CA, issue X.509-SVIDs, print the trust bundle.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use meshguard_identity::{Ca, KeyType, SpiffeId};

#[derive(Args)]
pub struct CaArgs {
    #[command(subcommand)]
    pub command: CaCommand,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum KeyArg {
    /// ECDSA P-256 (default)
    EcP256,
    /// RSA 2048
    Rsa2048,
}

impl From<KeyArg> for KeyType {
    fn from(k: KeyArg) -> KeyType {
        match k {
            KeyArg::EcP256 => KeyType::EcdsaP256,
            KeyArg::Rsa2048 => KeyType::Rsa2048,
        }
    }
}

#[derive(Subcommand)]
pub enum CaCommand {
    /// Create a root CA (or, with --parent, an intermediate signed by your own CA) in --dir:
    /// ca.crt, ca.key (mode 0600), bundle.crt, and jwt.key (0600), the key that signs JWT-SVIDs.
    Init {
        /// The trust domain, e.g. cluster.local.
        #[arg(long, required_unless_present = "parent")]
        trust_domain: Option<String>,
        /// Directory for the CA files; must not hold a CA already.
        #[arg(long)]
        dir: PathBuf,
        /// A CA directory (ca.crt, ca.key, bundle.crt) to sign an intermediate with.
        #[arg(long)]
        parent: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "ec-p256")]
        key_type: KeyArg,
    },
    /// Issue an X.509-SVID: writes svid.pem (leaf + intermediates), svid.key, bundle.pem to --out.
    Issue {
        /// The CA directory.
        #[arg(long)]
        dir: PathBuf,
        /// The workload's SPIFFE ID, e.g. spiffe://cluster.local/ns/prod/sa/web.
        #[arg(long)]
        spiffe_id: String,
        /// Lifetime, e.g. 1h, 30m (at least 1s).
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        #[arg(long, value_enum, default_value = "ec-p256")]
        key_type: KeyArg,
    },
    /// Sign a JWT-SVID with the CA's JWT authority and print it.
    IssueJwt {
        /// The CA directory.
        #[arg(long)]
        dir: PathBuf,
        /// The workload's SPIFFE ID, e.g. spiffe://cluster.local/ns/prod/sa/web.
        #[arg(long)]
        spiffe_id: String,
        /// An audience the token is for; repeat for several.
        #[arg(long, required = true)]
        audience: Vec<String>,
        /// Lifetime, e.g. 5m.
        #[arg(long, default_value = "5m")]
        ttl: String,
    },
    /// Create the JWT authority key (jwt.key, 0600) in a CA directory made without one, such as
    /// your own CA; `ca init` creates it already.
    JwtKey {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Run the CA as a service: X.509-SVIDs `spiffe://<td>/ns/<ns>/sa/<sa>` for Kubernetes
    /// service accounts that prove themselves with a projected token (checked by TokenReview),
    /// for the key in their certificate request (POST /v1/svid; GET /v1/bundle).
    Serve(ServeArgs),
    /// Ask a CA service for this pod's X.509-SVID with its service-account token: a fresh key
    /// and a certificate request, the key never leaving this machine.
    Fetch(FetchArgs),
    /// Print the trust bundle of the CA in --dir: PEM certificates, or the SPIFFE bundle format
    /// (a JWK Set with the X.509 roots and the JWT authority) with --format spiffe.
    Show {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, value_enum, default_value = "pem")]
        format: BundleFormat,
    },
}

#[derive(Args)]
pub struct ServeArgs {
    /// The CA directory (from `meshguard ca init`); its key stays here.
    #[arg(long)]
    dir: PathBuf,
    /// Where to listen (TLS).
    #[arg(long, default_value = "127.0.0.1:8443")]
    listen: String,
    /// Names (DNS or IP) clients reach the service by; its serving certificate, issued by this
    /// CA, carries them. Repeatable. [default: localhost and 127.0.0.1]
    #[arg(long = "server-name")]
    server_names: Vec<String>,
    /// Authenticate callers by their Kubernetes service-account token (TokenReview through the
    /// API server; the only mode so far).
    #[arg(long, required = true)]
    kubernetes: bool,
    /// The kubeconfig for the TokenReview calls (default: KUBECONFIG, ~/.kube/config, or
    /// in-cluster). The identity needs `create` on `tokenreviews.authentication.k8s.io`.
    #[arg(long, env = "MESHGUARD_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// The audience tokens must be issued for (a projected token's `audience`).
    #[arg(long, default_value = "meshguard-ca")]
    audience: String,
    /// Lifetime of the SVIDs issued.
    #[arg(long, default_value = "1h")]
    ttl: String,
}

#[derive(Args)]
pub struct FetchArgs {
    /// The CA service (`https://host:port`).
    #[arg(long)]
    ca_url: String,
    /// The trust bundle that the service's certificate chains to (`meshguard ca show`, or
    /// GET /v1/bundle fetched once over a trusted path).
    #[arg(long)]
    bundle: PathBuf,
    /// The service-account token file (a projected token with the service's audience, e.g.
    /// /var/run/secrets/tokens/meshguard-ca).
    #[arg(long)]
    token_file: PathBuf,
    /// Directory to write svid.pem (the chain), svid.key (0600, generated here, never sent) and
    /// bundle.pem: the files `meshguard proxy` reads (`identity.svid`, `key`, `bundle`).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum BundleFormat {
    /// Root certificates, PEM.
    Pem,
    /// The SPIFFE bundle format (JWK Set with use x509-svid and jwt-svid keys).
    Spiffe,
}

fn parse_ttl(ttl: &str) -> Result<std::time::Duration> {
    let d = meshguard_policy::resource::parse_duration(ttl)
        .with_context(|| format!("--ttl `{ttl}` is not a duration like 1h or 30m"))?;
    if d < std::time::Duration::from_secs(1) {
        anyhow::bail!("--ttl `{ttl}` is too short: an SVID must live at least 1s");
    }
    Ok(d)
}

pub fn run(a: CaArgs) -> Result<ExitCode> {
    match a.command {
        CaCommand::Init {
            trust_domain,
            dir,
            parent,
            key_type,
        } => {
            let ca = match parent {
                Some(p) => Ca::init_intermediate(&dir, &p, key_type.into())?,
                None => Ca::init(
                    &dir,
                    trust_domain.as_deref().unwrap_or_default(),
                    key_type.into(),
                )?,
            };
            eprintln!(
                "created a CA for trust domain {} in {}",
                ca.trust_domain,
                dir.display()
            );
            eprintln!(
                "  certificate: {}  key: {} (0600)  bundle: {}",
                dir.join("ca.crt").display(),
                dir.join("ca.key").display(),
                dir.join("bundle.crt").display()
            );
            eprintln!(
                "  JWT-SVID authority: {} (0600)",
                dir.join("jwt.key").display()
            );
        }
        CaCommand::Issue {
            dir,
            spiffe_id,
            ttl,
            out,
            key_type,
        } => {
            let ca = Ca::load(&dir)?;
            let id = SpiffeId::parse_workload(&spiffe_id)
                .with_context(|| format!("--spiffe-id `{spiffe_id}`"))?;
            let ttl = parse_ttl(&ttl)?;
            let svid = ca.issue(&id, ttl, key_type.into())?;
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            std::fs::write(out.join("svid.pem"), &svid.cert_chain_pem)
                .with_context(|| format!("writing to {}", out.display()))?;
            let key_path = out.join("svid.key");
            let _ = std::fs::remove_file(&key_path);
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            use std::io::Write;
            opts.open(&key_path)
                .and_then(|mut f| f.write_all(svid.key_pem.as_bytes()))
                .with_context(|| format!("writing {}", key_path.display()))?;
            std::fs::write(out.join("bundle.pem"), ca.bundle_pem())
                .with_context(|| format!("writing to {}", out.display()))?;
            eprintln!(
                "issued {} valid until {} -> {}/svid.pem, svid.key, bundle.pem",
                svid.id,
                svid.not_after,
                out.display()
            );
        }
        CaCommand::IssueJwt {
            dir,
            spiffe_id,
            audience,
            ttl,
        } => {
            let ca = Ca::load(&dir)?;
            let id = SpiffeId::parse_workload(&spiffe_id)
                .with_context(|| format!("--spiffe-id `{spiffe_id}`"))?;
            if id.trust_domain() != ca.trust_domain {
                anyhow::bail!(
                    "--spiffe-id `{spiffe_id}` is not in this CA's trust domain {}",
                    ca.trust_domain
                );
            }
            let signer = ca.jwt_signer().with_context(|| {
                format!(
                    "{} has no jwt.key; create it with `meshguard ca jwt-key --dir {}`",
                    dir.display(),
                    dir.display()
                )
            })?;
            println!("{}", signer.sign(&id, &audience, parse_ttl(&ttl)?)?);
        }
        CaCommand::Serve(a) => return serve(a),
        CaCommand::Fetch(a) => return fetch(a),
        CaCommand::JwtKey { dir } => {
            Ca::load(&dir)?;
            Ca::write_jwt_key(&dir)?;
            let ca = Ca::load(&dir)?;
            eprintln!(
                "JWT authority in {} (kid {})",
                dir.join("jwt.key").display(),
                ca.jwt_signer().map(|s| s.kid()).unwrap_or("?")
            );
        }
        CaCommand::Show { dir, format } => {
            let ca = Ca::load(&dir)?;
            match format {
                BundleFormat::Pem => print!("{}", ca.bundle_pem()),
                BundleFormat::Spiffe => println!(
                    "{}",
                    ca.spiffe_bundle_json(std::time::Duration::from_secs(300))
                ),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn serve(a: ServeArgs) -> Result<ExitCode> {
    let ca = Ca::load(&a.dir)?;
    let ttl = parse_ttl(&a.ttl)?;
    let names = if a.server_names.is_empty() {
        vec!["localhost".to_owned(), "127.0.0.1".to_owned()]
    } else {
        a.server_names.clone()
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let (client, server) = meshguard_kube::source::connect(a.kubeconfig.clone())
            .await
            .map_err(|e| anyhow::anyhow!("--kubernetes: {e}"))?;
        let listener = tokio::net::TcpListener::bind(&a.listen)
            .await
            .with_context(|| format!("--listen {}: cannot bind", a.listen))?;
        let addr = listener.local_addr().context("listener address")?;
        let td = ca.trust_domain.clone();
        let service = std::sync::Arc::new(meshguard_kube::ca_service::CaService {
            ca,
            reviewer: meshguard_kube::ca_service::TokenReviewer::new(client, &a.audience),
            ttl,
        });
        eprintln!(
            "meshguard ca serve: https://{addr} (names {}): X.509-SVIDs spiffe://{td}/ns/<ns>/sa/<sa> for service-account tokens with audience {} (TokenReview at {server}), lifetime {}",
            names.join(", "),
            a.audience,
            a.ttl
        );
        meshguard_kube::ca_service::serve(service, listener, &names, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
        Ok(ExitCode::SUCCESS)
    })
}

fn fetch(a: FetchArgs) -> Result<ExitCode> {
    let token = std::fs::read_to_string(&a.token_file)
        .with_context(|| format!("--token-file {}", a.token_file.display()))?;
    let bundle =
        std::fs::read(&a.bundle).with_context(|| format!("--bundle {}", a.bundle.display()))?;
    let (key_pem, csr_pem) = meshguard_identity::ca::key_and_csr()?;
    // Only the trust bundle: the service must chain to it, not to a public CA.
    let roots = reqwest::Certificate::from_pem_bundle(&bundle)
        .with_context(|| format!("--bundle {}: not PEM certificates", a.bundle.display()))?;
    let client = reqwest::Client::builder()
        .tls_certs_only(roots)
        .build()
        .context("building the HTTPS client")?;
    let url = format!("{}/v1/svid", a.ca_url.trim_end_matches('/'));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let (status, body) = rt.block_on(async {
        let r = client
            .post(&url)
            .bearer_auth(token.trim())
            .header("content-type", "application/json")
            .body(serde_json::json!({ "csr": csr_pem }).to_string())
            .timeout(std::time::Duration::from_secs(30))
            .send()
            .await
            .with_context(|| format!("cannot reach the CA service at {url}"))?;
        let status = r.status();
        let body = r.text().await.context("reading the answer")?;
        Ok::<_, anyhow::Error>((status, body))
    })?;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    if !status.is_success() {
        anyhow::bail!(
            "the CA service refused ({status}): {}",
            v["error"].as_str().unwrap_or(body.trim())
        );
    }
    let (Some(id), Some(chain), Some(bundle_pem)) = (
        v["spiffe_id"].as_str(),
        v["cert_chain_pem"].as_str(),
        v["bundle_pem"].as_str(),
    ) else {
        anyhow::bail!("the CA service's answer is not an SVID: {}", body.trim());
    };
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let write = |name: &str, text: &str, mode: u32| -> Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = a.out.join(name);
        let tmp = a.out.join(format!(".{name}.tmp"));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(text.as_bytes())
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
    };
    // The key first: a proxy polling the directory never pairs a new chain with an old key.
    write("svid.key", &key_pem, 0o600)?;
    write("svid.pem", chain, 0o644)?;
    write("bundle.pem", bundle_pem, 0o644)?;
    println!("{id}");
    eprintln!(
        "wrote {}/svid.pem, svid.key, bundle.pem (expires at unix time {})",
        a.out.display(),
        v["expires_at"]
    );
    Ok(ExitCode::SUCCESS)
}
