//! Turning policy texts into resources (duplicates reported), and request descriptions for
//! `check`. No IO: sources (`meshguard-engine::source`) read the bytes.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::diag::{Diagnostic, Severity};
use crate::mesh::{
    BodyInCheck, ExtAuthzKind, ExtAuthzProvider, HeaderPattern, HttpService, MeshConfig,
    DEFAULT_EXT_AUTHZ_TIMEOUT,
};
use crate::path::PathNormalization;
use crate::read::{scalar_text, Field, FieldError};
use crate::request::{Destination, HttpRequest, Identity, JwtIdentity, Request, Source};
use crate::resource::{parse_stream, Resource};
use crate::yaml::Node;

/// What loading produced: the valid resources and every diagnostic.
#[derive(Debug, Default)]
pub struct Loaded {
    pub resources: Vec<Resource>,
    pub diagnostics: Vec<Diagnostic>,
    /// Files read, in order.
    pub files: Vec<PathBuf>,
    /// Every text added, in order (what a generation's digest is computed over).
    pub texts: Vec<String>,
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
        self.texts.push(text.to_owned());
        let diagnostics_before = self.diagnostics.len();
        let rs = parse_stream(text, file, &mut self.diagnostics);
        if rs.is_empty() && self.diagnostics.len() == diagnostics_before {
            self.diagnostics.push(Diagnostic {
                severity: Severity::Warning,
                file: file.to_owned(),
                line: 1,
                col: 1,
                resource: None,
                field: String::new(),
                message: "the file is empty: it holds no resources".to_owned(),
            });
        }
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

    /// Records an error at a position that is not a resource's (a byte that is not UTF-8).
    pub fn error_at(&mut self, file: &str, line: u32, col: u32, message: &str) {
        self.diagnostics.push(Diagnostic {
            severity: Severity::Error,
            file: file.to_owned(),
            line,
            col,
            resource: None,
            field: String::new(),
            message: message.to_owned(),
        });
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

/// Parses a request description (the `meshguard check --request` format, YAML or JSON; see the
/// README). The path is normalised with `normalization`.
pub fn parse_request(
    node: &Node,
    normalization: PathNormalization,
) -> Result<(Request, Identity), FieldError> {
    let root = Field::root(node);
    root.mapping(&[
        "destination",
        "source",
        "sni",
        "request",
        "custom",
        "authConfig",
        "routeLabels",
    ])?;
    let mut req = Request::default();
    // The labels of the route the request arrived on (Gloo ExtAuthPolicy `applyToRoutes`), as
    // Envoy would send them: context extensions `route_label.<key>`.
    if let Some(r) = root.get("routeLabels") {
        for (k, v) in r.string_pairs()? {
            req.context_extensions
                .insert(format!("{}{k}", crate::extauth::ROUTE_LABEL_PREFIX), v);
        }
    }
    let mut id = Identity::default();
    let d = root.get("destination").ok_or_else(|| {
        Field::named(node, "destination").error("missing `destination` (namespace, labels, port)")
    })?;
    d.mapping(&["namespace", "labels", "port", "ip"])?;
    let namespace = d
        .get("namespace")
        .ok_or_else(|| Field::named(d.node, "destination.namespace").error("missing `namespace`"))?
        .text()?;
    let labels: BTreeMap<String, String> = match d.get("labels") {
        Some(l) => l.string_pairs()?.into_iter().collect(),
        None => BTreeMap::new(),
    };
    let port = match d.get("port") {
        None => None,
        Some(p) => Some(
            p.text()
                .ok()
                .and_then(|s| s.parse::<u16>().ok())
                .ok_or_else(|| p.error("must be a port number 0-65535"))?,
        ),
    };
    let ip = |f: &Field<'_, '_>, key: &str| -> Result<Option<std::net::IpAddr>, FieldError> {
        f.get(key).map(|n| n.parse("an IP address")).transpose()
    };
    req.destination = Destination {
        namespace,
        labels,
        port,
        ip: ip(&d, "ip")?,
    };
    if let Some(s) = root.get("source") {
        s.mapping(&["principal", "ip", "remote_ip"])?;
        req.source = Source {
            ip: ip(&s, "ip")?,
            remote_ip: ip(&s, "remote_ip")?,
        };
        if let Some(p) = s.get("principal") {
            let p = p.text()?;
            if p.is_empty() {
                return Err(Field::named(s.node, "source.principal")
                    .error("must not be empty; omit it for plaintext"));
            }
            id = id.with_peer(&p);
        }
    }
    req.sni = root.get("sni").map(|s| s.text()).transpose()?;
    if let Some(h) = root.get("request") {
        h.mapping(&["method", "host", "path", "headers", "auth", "body"])?;
        let text = |key: &str| h.get(key).map(|v| v.text()).transpose();
        let method = text("method")?.unwrap_or_else(|| "GET".to_owned());
        let path = text("path")?.unwrap_or_else(|| "/".to_owned());
        let headers = match h.get("headers") {
            Some(hs) => hs.string_pairs()?,
            None => Vec::new(),
        };
        let host = match text("host")? {
            Some(host) => host,
            None => headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("host") || k == ":authority")
                .map(|(_, v)| v.clone())
                .unwrap_or_default(),
        };
        // `check` describes a request as a client sends it to Envoy over HTTP/1.1.
        req.http = Some(HttpRequest::new(method, host, path, headers, normalization).as_http1());
        if let Some(a) = h.get("auth") {
            a.mapping(&["principal", "claims", "token"])?;
            let principal = a.get("principal").map(|p| p.text()).transpose()?;
            let claims = match a.get("claims") {
                Some(c) => match c.node.to_json() {
                    serde_json::Value::Object(m) => m,
                    _ => return Err(c.error("must be a mapping (the verified JWT payload)")),
                },
                None => serde_json::Map::new(),
            };
            if let Some(token) = a.get("token").map(|t| t.text()).transpose()? {
                let at_token = Field::named(a.node, "request.auth.token");
                if principal.is_some() || !claims.is_empty() {
                    return Err(at_token.error(
                        "give either a raw `token` (verified by the RequestAuthentication policies) or already-verified `claims`/`principal`, not both",
                    ));
                }
                // The raw token travels as a client sends it; request authentication verifies it.
                if let Some(h) = req.http.as_mut() {
                    if h.header("authorization").is_some() {
                        return Err(at_token.error(
                            "the request already has an Authorization header; give the token in one place",
                        ));
                    }
                    h.push_header("authorization", &format!("Bearer {token}"));
                }
            } else {
                if principal.is_none() && claims.is_empty() {
                    return Err(a.error(
                        "give `claims` (the verified JWT payload) and/or `principal` (iss/sub), or a raw `token`",
                    ));
                }
                id.jwt = Some(std::sync::Arc::new(JwtIdentity::new(claims, principal)));
            }
        }
    }
    if let Some(c) = root.get("custom") {
        for (k, v) in c.string_pairs()? {
            let verdict = match v.as_str() {
                "allow" | "true" => true,
                "deny" | "false" => false,
                other => {
                    return Err(Field::named(c.node, &format!("custom.{k}"))
                        .error(format!("`{other}`: use allow or deny")))
                }
            };
            req.custom.push((k, verdict));
        }
    }
    Ok((req, id))
}

/// Parses a meshConfig subset (YAML mapping): rootNamespace, trustDomain, trustDomainAliases,
/// pathNormalization (a string, or `{normalization: ...}` as in MeshConfig), extensionProviders
/// (names, or MeshConfig's list of `{name: ...}` objects; `envoyExtAuthzGrpc` and
/// `envoyExtAuthzHttp` entries are read in full, unknown fields refused).
pub fn parse_mesh_config(node: &Node) -> Result<MeshConfig, FieldError> {
    let mut m = MeshConfig::default();
    let root = Field::root(node);
    let entries = root
        .entries()
        .map_err(|_| root.error("mesh config must be a mapping"))?;
    for (k, _) in entries {
        let Some(v) = root.get(&k.text) else { continue };
        match k.text.as_str() {
            "rootNamespace" => m.root_namespace = v.text()?,
            "trustDomain" => m.trust_domain = v.text()?,
            "trustDomainAliases" => {
                m.trust_domain_aliases = v
                    .items()?
                    .iter()
                    .map(|i| i.text())
                    .collect::<Result<_, _>>()?
            }
            "defaultConfig" => {
                if let Some(n) = v
                    .get("gatewayTopology")
                    .as_ref()
                    .and_then(|g| g.get("numTrustedProxies").map(|n| n.node))
                {
                    m.xff_trusted_hops =
                        Field::named(n, "defaultConfig.gatewayTopology.numTrustedProxies")
                            .parse("a number")?;
                }
            }
            "pathNormalization" => {
                let s = match v.get("normalization") {
                    Some(n) => n.text(),
                    None => v.text(),
                }
                .unwrap_or_default();
                m.path_normalization = PathNormalization::parse(&s).ok_or_else(|| {
                    v.error(format!(
                        "`{s}`: use NONE, BASE, MERGE_SLASHES or DECODE_AND_MERGE_SLASHES"
                    ))
                })?;
            }
            "extensionProviders" => {
                for i in v.items()? {
                    // A bare name (as `--provider` gives) is taken as a valid provider.
                    if i.get("name").is_none() {
                        let Ok(n) = i.text() else {
                            return Err(i.error("each entry needs a `name`"));
                        };
                        m.extension_providers.push(n);
                        continue;
                    }
                    let (name, entry) = parse_provider(&i)?;
                    // A full meshConfig entry is checked as istiod checks it: one it refuses
                    // turns the CUSTOM rules naming it into DENY rules.
                    if let Some(why) = provider_problem(i.node) {
                        m.invalid_providers.push((name.clone(), why));
                    } else if let Some(p) = entry {
                        m.ext_authz.push(p);
                    }
                    if i.node.get("envoyExtAuthzHttp").is_some() {
                        m.http_providers.push(name.clone());
                    }
                    m.extension_providers.push(name);
                }
            }
            // Other MeshConfig fields do not change authorization decisions.
            _ => {}
        }
    }
    Ok(m)
}

/// `MeshConfig.ExtensionProvider` fields (istio/api mesh/v1alpha1/config.proto): its name and
/// the provider kinds of its oneof.
const PROVIDER_FIELDS: &[&str] = &[
    "name",
    "envoyExtAuthzHttp",
    "envoyExtAuthzGrpc",
    "zipkin",
    "lightstep",
    "datadog",
    "stackdriver",
    "opencensus",
    "skywalking",
    "opentelemetry",
    "prometheus",
    "envoyFileAccessLog",
    "envoyHttpAls",
    "envoyTcpAls",
    "envoyOtelAls",
];
/// `EnvoyExternalAuthorizationGrpcProvider`.
const GRPC_FIELDS: &[&str] = &[
    "service",
    "port",
    "timeout",
    "failOpen",
    "clearRouteCache",
    "statusOnError",
    "includeRequestBodyInCheck",
];
/// `EnvoyExternalAuthorizationHttpProvider` (`includeHeadersInCheck` is its deprecated
/// spelling of `includeRequestHeadersInCheck`).
const HTTP_FIELDS: &[&str] = &[
    "service",
    "port",
    "timeout",
    "pathPrefix",
    "failOpen",
    "clearRouteCache",
    "statusOnError",
    "includeHeadersInCheck",
    "includeRequestHeadersInCheck",
    "includeAdditionalHeadersInCheck",
    "includeRequestBodyInCheck",
    "headersToUpstreamOnAllow",
    "headersToDownstreamOnDeny",
    "headersToDownstreamOnAllow",
];
/// `EnvoyExternalAuthorizationRequestBody`.
const BODY_FIELDS: &[&str] = &["maxRequestBytes", "allowPartialMessage", "packAsBytes"];

/// An optional boolean field, false when absent.
fn flag(f: &Field<'_, '_>, key: &str) -> Result<bool, FieldError> {
    f.get(key).map_or(Ok(false), |v| v.bool())
}

/// An optional list of strings (a YAML list: a single string is refused, as protobuf does).
fn strings(f: &Field<'_, '_>, key: &str) -> Result<Vec<String>, FieldError> {
    match f.get(key) {
        None => Ok(Vec::new()),
        Some(v) => v.items()?.iter().map(|i| i.text()).collect(),
    }
}

/// An optional unsigned integer (a YAML number, or digits in a string as protobuf JSON allows).
fn uint(f: &Field<'_, '_>, key: &str) -> Result<Option<u64>, FieldError> {
    f.get(key)
        .map(|v| v.parse::<u64>("a non-negative integer"))
        .transpose()
}

/// One full `extensionProviders` entry: its name and, for an ext_authz kind, the typed
/// provider. Unknown fields and values of the wrong type are refused (istiod's protobuf decoding
/// refuses them too); values istiod's builder refuses are left to [`provider_problem`], and no
/// provider is built for them.
fn parse_provider(item: &Field<'_, '_>) -> Result<(String, Option<ExtAuthzProvider>), FieldError> {
    item.mapping(PROVIDER_FIELDS)?;
    let name = item.required("name")?.text()?;
    if name.is_empty() {
        return Err(item.error("each entry needs a `name`"));
    }
    let (grpc, http) = (item.get("envoyExtAuthzGrpc"), item.get("envoyExtAuthzHttp"));
    let (cfg, is_grpc) = match (&grpc, &http) {
        (Some(c), None) => (c, true),
        (None, Some(c)) => (c, false),
        _ => return Ok((name, None)),
    };
    cfg.mapping(if is_grpc { GRPC_FIELDS } else { HTTP_FIELDS })?;
    let service = cfg.get("service").map(|v| v.text()).transpose()?;
    let port = uint(cfg, "port")?;
    let timeout = cfg.get("timeout").map(|v| v.text()).transpose()?;
    let fail_open = flag(cfg, "failOpen")?;
    let clear_route_cache = flag(cfg, "clearRouteCache")?;
    let status = cfg.get("statusOnError").map(|v| v.text()).transpose()?;
    let body = match cfg.get("includeRequestBodyInCheck") {
        None => None,
        Some(b) => {
            b.mapping(BODY_FIELDS)?;
            let max = match b.get("maxRequestBytes") {
                None => 0,
                Some(v) => v.parse::<u32>("a byte count (0 to 4294967295)")?,
            };
            Some(BodyInCheck {
                max_request_bytes: max,
                allow_partial_message: flag(&b, "allowPartialMessage")?,
                pack_as_bytes: flag(&b, "packAsBytes")?,
            })
        }
    };
    let kind = if is_grpc {
        ExtAuthzKind::Grpc
    } else {
        let patterns = |k: &str| -> Result<Vec<HeaderPattern>, FieldError> {
            Ok(strings(cfg, k)?
                .iter()
                .map(|s| HeaderPattern::parse(s))
                .collect())
        };
        let mut include = patterns("includeRequestHeadersInCheck")?;
        let deprecated = patterns("includeHeadersInCheck")?;
        // istiod: the deprecated field is used only when the new one is not set.
        if include.is_empty() {
            include = deprecated;
        }
        let mut additional: Vec<(String, String)> = match cfg.get("includeAdditionalHeadersInCheck")
        {
            None => Vec::new(),
            Some(a) => {
                let mut out = Vec::new();
                for (k, _) in a.entries()? {
                    if let Some(v) = a.get(&k.text) {
                        out.push((k.text.to_ascii_lowercase(), v.text()?));
                    }
                }
                out
            }
        };
        additional.sort();
        ExtAuthzKind::Http(HttpService {
            path_prefix: cfg
                .get("pathPrefix")
                .map(|v| v.text())
                .transpose()?
                .unwrap_or_default(),
            include_request_headers: include,
            additional_headers: additional,
            headers_to_upstream_on_allow: patterns("headersToUpstreamOnAllow")?,
            headers_to_downstream_on_deny: patterns("headersToDownstreamOnDeny")?,
            headers_to_downstream_on_allow: patterns("headersToDownstreamOnAllow")?,
        })
    };
    let (Some(service), Some(port), Ok(status_on_error)) = (
        service,
        port.and_then(|p| u16::try_from(p).ok()).filter(|p| *p > 0),
        status.as_deref().map_or(Ok(403), str::parse::<u16>),
    ) else {
        return Ok((name, None));
    };
    let timeout = match timeout.as_deref() {
        None => DEFAULT_EXT_AUTHZ_TIMEOUT,
        Some(t) => match crate::read::parse_duration(t) {
            Some(d) => d,
            None => return Ok((name, None)),
        },
    };
    Ok((
        name.clone(),
        Some(ExtAuthzProvider {
            name,
            service,
            port,
            timeout,
            fail_open,
            status_on_error,
            body,
            clear_route_cache,
            kind,
        }),
    ))
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
        if crate::read::parse_duration(&t).is_none() {
            return Some(format!("{kind}.timeout `{t}` is not a duration"));
        }
    }
    // istiod refuses a lone `*` in a header list ("change it to either prefix or suffix match").
    for list in [
        "includeRequestHeadersInCheck",
        "includeHeadersInCheck",
        "headersToUpstreamOnAllow",
        "headersToDownstreamOnDeny",
        "headersToDownstreamOnAllow",
    ] {
        if let Some(crate::yaml::NodeKind::Seq(items)) = cfg.get(list).map(|n| &n.kind) {
            if items.iter().any(|i| scalar_text(i).as_deref() == Some("*")) {
                return Some(format!(
                    "{kind}.{list}: a single wildcard (\"*\") is not supported, use a prefix or suffix match"
                ));
            }
        }
    }
    // Envoy refuses `with_request_body` with max_request_bytes 0 (the filter config is
    // rejected, so no request gets through it).
    if let Some(b) = cfg
        .get("includeRequestBodyInCheck")
        .filter(|b| !b.is_null())
    {
        let max = b.get("maxRequestBytes").and_then(scalar_text);
        if max
            .as_deref()
            .is_none_or(|m| m.parse::<u32>().is_ok_and(|m| m == 0))
        {
            return Some(format!(
                "{kind}.includeRequestBodyInCheck.maxRequestBytes must be greater than 0 (Envoy refuses 0)"
            ));
        }
    }
    None
}

/// Warnings that depend on the mesh settings: CUSTOM providers that do not exist, and DENY path
/// rules that common path tricks slip past under the chosen normalisation.
/// Gloo ExtAuthPolicy problems only the whole set shows: two policies that can select the same
/// route or destination (Gloo applies the oldest and ignores the rest there), and a
/// `customAuth` whose server is not an ext_authz provider of the mesh config.
fn ext_auth_policy_warnings(resources: &[Resource], mesh: &MeshConfig) -> Vec<Diagnostic> {
    let policies: Vec<&crate::extauth::ExtAuthPolicy> = resources
        .iter()
        .filter_map(|r| match r {
            Resource::ExtAuthPolicy(p) => Some(p),
            _ => None,
        })
        .collect();
    let mut out = Vec::new();
    let diag =
        |p: &crate::extauth::ExtAuthPolicy, severity, field: &str, message: String| Diagnostic {
            severity,
            file: p.origin.file.clone(),
            line: p.origin.line,
            col: 1,
            resource: Some(format!(
                "ExtAuthPolicy {}/{}",
                p.meta.namespace, p.meta.name
            )),
            field: field.to_owned(),
            message,
        };
    for (i, a) in policies.iter().enumerate() {
        for b in &policies[i + 1..] {
            if !a.overlaps(b) {
                continue;
            }
            let (old, new) = if a.age_key() <= b.age_key() {
                (a, b)
            } else {
                (b, a)
            };
            out.push(diag(
                new,
                Severity::Warning,
                "spec",
                format!(
                    "selects routes or destinations that ExtAuthPolicy {}/{} also selects: Gloo applies only one per route or destination, the oldest ({}/{}{}), and ignores this one there",
                    old.meta.namespace,
                    old.meta.name,
                    old.meta.namespace,
                    old.meta.name,
                    match old.meta.creation_timestamp.as_deref() {
                        Some(t) => format!(", created {t}"),
                        None if new.meta.creation_timestamp.is_none() => ", the first by namespace/name: neither has a creationTimestamp".to_owned(),
                        None => ", which has no creationTimestamp".to_owned(),
                    }
                ),
            ));
        }
        if let crate::extauth::ExtAuthAction::Custom { .. } = &a.action {
            let server = a.server.as_ref().map(|s| s.name.as_str()).unwrap_or("");
            if !mesh.ext_authz.iter().any(|p| p.name == server) {
                out.push(diag(
                    a,
                    Severity::Warning,
                    "spec.config.server.name",
                    format!("customAuth delegates to `{server}`, which is not an envoyExtAuthzGrpc/envoyExtAuthzHttp provider of the mesh config: every request it selects is denied (fail closed)"),
                ));
            }
        }
    }
    out
}

pub fn mesh_warnings(resources: &[Resource], mesh: &MeshConfig) -> Vec<Diagnostic> {
    use crate::resource::{Action, Attr};
    let mut out = ext_auth_policy_warnings(resources, mesh);
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
