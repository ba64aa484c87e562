//! Turning policy texts into resources (duplicates reported), and request descriptions for
//! `check`. No IO: sources (`meshguard-engine::source`) read the bytes.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::diag::{Diagnostic, Severity};
use crate::mesh::MeshConfig;
use crate::path::PathNormalization;
use crate::request::{Destination, HttpRequest, Identity, JwtIdentity, Request, Source};
use crate::resource::{parse_stream, Resource};
use crate::yaml::{Node, NodeKind};

/// What loading produced: the valid resources and every diagnostic.
#[derive(Debug, Default)]
pub struct Loaded {
    pub resources: Vec<Resource>,
    pub diagnostics: Vec<Diagnostic>,
    /// Files read, in order.
    pub files: Vec<PathBuf>,
}

impl Loaded {
    pub fn has_errors(&self) -> bool {
        self.diagnostics
            .iter()
            .any(|d| d.severity == Severity::Error)
    }

    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
    }

    /// Adds one YAML text (a file's contents) under the given display name.
    pub fn add_text(&mut self, text: &str, file: &str) {
        let rs = parse_stream(text, file, &mut self.diagnostics);
        for r in rs {
            let dup = self.resources.iter().find(|o| {
                o.kind() == r.kind()
                    && o.meta().namespace == r.meta().namespace
                    && o.meta().name == r.meta().name
            });
            if let Some(o) = dup {
                self.diagnostics.push(Diagnostic {
                    severity: Severity::Error,
                    file: file.to_owned(),
                    line: r.origin().line,
                    col: 1,
                    resource: Some(format!(
                        "{} {}/{}",
                        r.kind(),
                        r.meta().namespace,
                        r.meta().name
                    )),
                    field: "metadata.name".to_owned(),
                    message: format!(
                        "duplicate {} {}/{}: already defined at {}:{}",
                        r.kind(),
                        r.meta().namespace,
                        r.meta().name,
                        o.origin().file,
                        o.origin().line
                    ),
                });
                continue;
            }
            self.resources.push(r);
        }
    }

    /// Records a problem reading a source (a file that cannot be read, a bundle that does not
    /// unpack), as an error diagnostic without a line.
    pub fn io_error(&mut self, file: &str, message: &str) {
        self.diagnostics.push(Diagnostic {
            severity: Severity::Error,
            file: file.to_owned(),
            line: 0,
            col: 0,
            resource: None,
            field: String::new(),
            message: message.to_owned(),
        });
    }
}

/// An error in a request description or mesh config, with the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {field}: {message}")]
pub struct InputError {
    pub line: u32,
    pub field: String,
    pub message: String,
}

fn ierr(n: &Node, field: &str, message: impl Into<String>) -> InputError {
    InputError {
        line: n.line,
        field: field.to_owned(),
        message: message.into(),
    }
}

fn check_known(n: &Node, field: &str, known: &[&str]) -> Result<(), InputError> {
    if let Some(m) = n.as_map() {
        for (k, _) in m {
            if !known.contains(&k.text.as_str()) {
                let f = if field.is_empty() {
                    k.text.clone()
                } else {
                    format!("{field}.{}", k.text)
                };
                return Err(InputError {
                    line: k.line,
                    field: f,
                    message: format!(
                        "unknown field `{}`; known fields: {}",
                        k.text,
                        known.join(", ")
                    ),
                });
            }
        }
        Ok(())
    } else {
        Err(ierr(
            n,
            field,
            format!("must be a mapping, found {}", n.type_name()),
        ))
    }
}

fn scalar_text(n: &Node) -> Option<String> {
    match &n.kind {
        NodeKind::Str(s) => Some(s.clone()),
        NodeKind::Int(i) => Some(i.to_string()),
        NodeKind::Bool(b) => Some(b.to_string()),
        NodeKind::Float(f) => Some(f.to_string()),
        _ => None,
    }
}

fn opt_str(parent: &Node, key: &str, field: &str) -> Result<Option<String>, InputError> {
    match parent.get(key) {
        None => Ok(None),
        Some(n) if n.is_null() => Ok(None),
        Some(n) => scalar_text(n).map(Some).ok_or_else(|| {
            ierr(
                n,
                &format!("{field}.{key}"),
                format!("must be a string, found {}", n.type_name()),
            )
        }),
    }
}

fn opt_ip(parent: &Node, key: &str, field: &str) -> Result<Option<std::net::IpAddr>, InputError> {
    match opt_str(parent, key, field)? {
        None => Ok(None),
        Some(s) => s.parse().map(Some).map_err(|_| InputError {
            line: parent.get(key).map_or(parent.line, |n| n.line),
            field: format!("{field}.{key}"),
            message: format!("`{s}` is not an IP address"),
        }),
    }
}

fn string_map(n: &Node, field: &str) -> Result<Vec<(String, String)>, InputError> {
    let Some(entries) = n.as_map() else {
        return Err(ierr(n, field, "must be a mapping"));
    };
    let mut out = Vec::new();
    for (k, v) in entries {
        match &v.kind {
            NodeKind::Seq(items) => {
                for i in items {
                    let s = scalar_text(i).ok_or_else(|| {
                        ierr(i, &format!("{field}.{}", k.text), "values must be strings")
                    })?;
                    out.push((k.text.clone(), s));
                }
            }
            _ => {
                let s = scalar_text(v).ok_or_else(|| {
                    ierr(v, &format!("{field}.{}", k.text), "values must be strings")
                })?;
                out.push((k.text.clone(), s));
            }
        }
    }
    Ok(out)
}

/// Parses a request description (the `meshguard check --request` format, YAML or JSON; see the
/// README). The path is normalised with `normalization`.
pub fn parse_request(
    node: &Node,
    normalization: PathNormalization,
) -> Result<(Request, Identity), InputError> {
    check_known(
        node,
        "",
        &[
            "destination",
            "source",
            "sni",
            "request",
            "custom",
            "authConfig",
        ],
    )?;
    let mut req = Request::default();
    let mut id = Identity::default();
    let Some(d) = node.get("destination") else {
        return Err(ierr(
            node,
            "destination",
            "missing `destination` (namespace, labels, port)",
        ));
    };
    check_known(d, "destination", &["namespace", "labels", "port", "ip"])?;
    let namespace = opt_str(d, "namespace", "destination")?
        .ok_or_else(|| ierr(d, "destination.namespace", "missing `namespace`"))?;
    let labels: BTreeMap<String, String> = match d.get("labels") {
        Some(l) if !l.is_null() => string_map(l, "destination.labels")?.into_iter().collect(),
        _ => BTreeMap::new(),
    };
    let port = match d.get("port") {
        None => None,
        Some(p) => Some(
            scalar_text(p)
                .and_then(|s| s.parse::<u16>().ok())
                .ok_or_else(|| ierr(p, "destination.port", "must be a port number 0-65535"))?,
        ),
    };
    req.destination = Destination {
        namespace,
        labels,
        port,
        ip: opt_ip(d, "ip", "destination")?,
    };
    if let Some(s) = node.get("source").filter(|s| !s.is_null()) {
        check_known(s, "source", &["principal", "ip", "remote_ip"])?;
        req.source = Source {
            ip: opt_ip(s, "ip", "source")?,
            remote_ip: opt_ip(s, "remote_ip", "source")?,
        };
        if let Some(p) = opt_str(s, "principal", "source")? {
            if p.is_empty() {
                return Err(ierr(
                    s,
                    "source.principal",
                    "must not be empty; omit it for plaintext",
                ));
            }
            id = id.with_peer(&p);
        }
    }
    req.sni = opt_str(node, "sni", "")?;
    if let Some(h) = node.get("request").filter(|h| !h.is_null()) {
        check_known(
            h,
            "request",
            &["method", "host", "path", "headers", "auth", "body"],
        )?;
        let method = opt_str(h, "method", "request")?.unwrap_or_else(|| "GET".to_owned());
        let path = opt_str(h, "path", "request")?.unwrap_or_else(|| "/".to_owned());
        let headers = match h.get("headers") {
            Some(hs) if !hs.is_null() => string_map(hs, "request.headers")?,
            _ => Vec::new(),
        };
        let host = match opt_str(h, "host", "request")? {
            Some(host) => host,
            None => headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("host") || k == ":authority")
                .map(|(_, v)| v.clone())
                .unwrap_or_default(),
        };
        // `check` describes a request as a client sends it to Envoy over HTTP/1.1.
        req.http = Some(HttpRequest::new(method, host, path, headers, normalization).as_http1());
        if let Some(a) = h.get("auth").filter(|a| !a.is_null()) {
            check_known(a, "request.auth", &["principal", "claims", "token"])?;
            let principal = opt_str(a, "principal", "request.auth")?;
            let claims = match a.get("claims") {
                Some(c) if !c.is_null() => match c.to_json() {
                    serde_json::Value::Object(m) => m,
                    _ => {
                        return Err(ierr(
                            c,
                            "request.auth.claims",
                            "must be a mapping (the verified JWT payload)",
                        ))
                    }
                },
                _ => serde_json::Map::new(),
            };
            if let Some(token) = opt_str(a, "token", "request.auth")? {
                if principal.is_some() || !claims.is_empty() {
                    return Err(ierr(
                        a,
                        "request.auth.token",
                        "give either a raw `token` (verified by the RequestAuthentication policies) or already-verified `claims`/`principal`, not both",
                    ));
                }
                // The raw token travels as a client sends it; request authentication verifies it.
                if let Some(h) = req.http.as_mut() {
                    if h.header("authorization").is_some() {
                        return Err(ierr(
                            a,
                            "request.auth.token",
                            "the request already has an Authorization header; give the token in one place",
                        ));
                    }
                    h.push_header("authorization", &format!("Bearer {token}"));
                }
            } else {
                if principal.is_none() && claims.is_empty() {
                    return Err(ierr(
                        a,
                        "request.auth",
                        "give `claims` (the verified JWT payload) and/or `principal` (iss/sub), or a raw `token`",
                    ));
                }
                id.jwt = Some(std::sync::Arc::new(JwtIdentity::new(claims, principal)));
            }
        }
    }
    if let Some(c) = node.get("custom").filter(|c| !c.is_null()) {
        for (k, v) in string_map(c, "custom")? {
            let verdict = match v.as_str() {
                "allow" | "true" => true,
                "deny" | "false" => false,
                other => {
                    return Err(ierr(
                        c,
                        &format!("custom.{k}"),
                        format!("`{other}`: use allow or deny"),
                    ))
                }
            };
            req.custom.push((k, verdict));
        }
    }
    Ok((req, id))
}

/// Parses a meshConfig subset (YAML mapping): rootNamespace, trustDomain, trustDomainAliases,
/// pathNormalization (a string, or `{normalization: ...}` as in MeshConfig), extensionProviders
/// (names, or MeshConfig's list of `{name: ...}` objects).
pub fn parse_mesh_config(node: &Node) -> Result<MeshConfig, InputError> {
    let mut m = MeshConfig::default();
    let Some(entries) = node.as_map() else {
        return Err(ierr(node, "", "mesh config must be a mapping"));
    };
    for (k, v) in entries {
        match k.text.as_str() {
            "rootNamespace" => {
                m.root_namespace =
                    scalar_text(v).ok_or_else(|| ierr(v, "rootNamespace", "must be a string"))?
            }
            "trustDomain" => {
                m.trust_domain =
                    scalar_text(v).ok_or_else(|| ierr(v, "trustDomain", "must be a string"))?
            }
            "trustDomainAliases" => {
                let NodeKind::Seq(items) = &v.kind else {
                    return Err(ierr(v, "trustDomainAliases", "must be a list"));
                };
                m.trust_domain_aliases = items.iter().filter_map(scalar_text).collect();
            }
            "defaultConfig" => {
                if let Some(n) = v
                    .get("gatewayTopology")
                    .and_then(|g| g.get("numTrustedProxies"))
                {
                    let t = scalar_text(n).unwrap_or_default();
                    m.xff_trusted_hops = t.parse().map_err(|_| {
                        ierr(
                            n,
                            "defaultConfig.gatewayTopology.numTrustedProxies",
                            format!("`{t}` is not a number"),
                        )
                    })?;
                }
            }
            "pathNormalization" => {
                let s = match v.get("normalization") {
                    Some(n) => scalar_text(n),
                    None => scalar_text(v),
                }
                .unwrap_or_default();
                m.path_normalization = PathNormalization::parse(&s).ok_or_else(|| {
                    ierr(
                        v,
                        "pathNormalization",
                        format!("`{s}`: use NONE, BASE, MERGE_SLASHES or DECODE_AND_MERGE_SLASHES"),
                    )
                })?;
            }
            "extensionProviders" => {
                let NodeKind::Seq(items) = &v.kind else {
                    return Err(ierr(v, "extensionProviders", "must be a list"));
                };
                for i in items {
                    let name = i
                        .get("name")
                        .and_then(scalar_text)
                        .or_else(|| scalar_text(i));
                    let Some(n) = name else {
                        return Err(ierr(i, "extensionProviders", "each entry needs a `name`"));
                    };
                    // A bare name (as `--provider` gives) is taken as a valid provider; a full
                    // meshConfig entry is checked as istiod checks it.
                    let full = i.get("name").is_some();
                    if let Some(why) = full.then(|| provider_problem(i)).flatten() {
                        m.invalid_providers.push((n.clone(), why));
                    }
                    if i.get("envoyExtAuthzHttp").is_some() {
                        m.http_providers.push(n.clone());
                    }
                    m.extension_providers.push(n);
                }
            }
            // Other MeshConfig fields do not change authorization decisions.
            _ => {}
        }
    }
    Ok(m)
}

/// What istiod's ext_authz builder refuses in an extension provider (pilot/pkg/security/authz/
/// builder/extauthz.go; testdata custom-bad-invalid-config: port 999999, pathPrefix `check`,
/// statusOnError `999`): CUSTOM rules naming it then act as DENY rules.
fn provider_problem(entry: &Node) -> Option<String> {
    let (kind, cfg) = match (
        entry.get("envoyExtAuthzGrpc"),
        entry.get("envoyExtAuthzHttp"),
    ) {
        (Some(c), None) => ("envoyExtAuthzGrpc", c),
        (None, Some(c)) => ("envoyExtAuthzHttp", c),
        (Some(_), Some(_)) => return Some("both envoyExtAuthzGrpc and envoyExtAuthzHttp".into()),
        (None, None) => {
            return Some("not an envoyExtAuthzGrpc or envoyExtAuthzHttp provider".into())
        }
    };
    let text = |k: &str| cfg.get(k).and_then(scalar_text);
    if text("service").is_none_or(|s| s.is_empty()) {
        return Some(format!("{kind}.service is empty"));
    }
    match text("port").map(|p| p.parse::<u32>()) {
        Some(Ok(p)) if (1..=65535).contains(&p) => {}
        Some(_) => return Some(format!("{kind}.port is not a port (1-65535)")),
        None => return Some(format!("{kind}.port is missing")),
    }
    if let Some(s) = text("statusOnError") {
        if !s.parse::<u16>().is_ok_and(|c| (200..=599).contains(&c)) {
            return Some(format!("{kind}.statusOnError `{s}` is not an HTTP status"));
        }
    }
    if kind == "envoyExtAuthzHttp" {
        if let Some(p) = text("pathPrefix") {
            if !p.starts_with('/') {
                return Some(format!("{kind}.pathPrefix `{p}` must start with /"));
            }
        }
    }
    if let Some(t) = text("timeout") {
        if crate::resource::parse_duration(&t).is_none() {
            return Some(format!("{kind}.timeout `{t}` is not a duration"));
        }
    }
    None
}

/// Warnings that depend on the mesh settings: CUSTOM providers that do not exist, and DENY path
/// rules that common path tricks slip past under the chosen normalisation.
pub fn mesh_warnings(resources: &[Resource], mesh: &MeshConfig) -> Vec<Diagnostic> {
    use crate::resource::{Action, Attr};
    let mut out = Vec::new();
    for r in resources {
        let Resource::AuthorizationPolicy(p) = r else {
            continue;
        };
        let mut warn = |field: &str, message: String| {
            out.push(Diagnostic {
                severity: Severity::Warning,
                file: p.origin.file.clone(),
                line: p.origin.line,
                col: 1,
                resource: Some(format!(
                    "AuthorizationPolicy {}/{}",
                    p.meta.namespace, p.meta.name
                )),
                field: field.to_owned(),
                message,
            });
        };
        if let (Action::Custom, Some(provider)) = (p.action, &p.provider) {
            let is_auth_config = resources.iter().any(
                |r| matches!(r, Resource::AuthConfig(c) if c.ids().iter().any(|id| id == provider)),
            );
            if !is_auth_config && !mesh.extension_providers.iter().any(|e| e == provider) {
                warn(
                    "spec.provider.name",
                    format!("provider `{provider}` is neither an AuthConfig loaded with the policies nor in meshConfig.extensionProviders: istiod turns this policy's rules into DENY rules (declare it with --provider or the mesh config)"),
                );
            }
        }
        let weak = matches!(
            mesh.path_normalization,
            PathNormalization::None | PathNormalization::Base
        );
        if !weak {
            continue;
        }
        for (i, rule) in p.rules.iter().enumerate() {
            let risky = rule.to.iter().flatten().flatten().any(|k| {
                k.attr == Attr::Path
                    && ((p.action == Action::Deny && !k.values.is_empty())
                        || (p.action == Action::Allow && !k.not_values.is_empty()))
            });
            if risky {
                warn(
                    &format!("spec.rules[{i}].to"),
                    format!(
                        "path normalisation is {}: `//admin` and `/%2Fadmin` are not turned into `/admin`, so clients can slip past this {} path rule; set meshConfig pathNormalization to DECODE_AND_MERGE_SLASHES or also match those forms (istio.io security best practices)",
                        mesh.path_normalization.as_str(),
                        if p.action == Action::Deny { "DENY" } else { "ALLOW notPaths" }
                    ),
                );
            }
        }
    }
    out
}
