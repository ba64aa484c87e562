//! Istio security resources, parsed from YAML and validated as strictly as istiod does.
//!
//! The parser walks the position-carrying tree from [`crate::yaml`] so that every problem names
//! the file, line and field. All problems in a file are reported, not just the first.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::diag::{suggest, Ctx};
use crate::yaml::{Node, NodeKind};

/// Kubernetes object metadata, the parts the engine uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    pub name: String,
    /// Defaults to `default`, as `kubectl apply` does without `-n`.
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// RFC 3339 text; used to find the oldest PeerAuthentication in a level.
    pub creation_timestamp: Option<String>,
}

/// Where a resource came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: String,
    pub line: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    Allow,
    Deny,
    Audit,
    Custom,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "ALLOW",
            Action::Deny => "DENY",
            Action::Audit => "AUDIT",
            Action::Custom => "CUSTOM",
        }
    }
}

/// The attribute a rule field or `when` key reads (Istio's attribute names in comments).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Attr {
    /// `source.principal` (principals)
    SrcPrincipal,
    /// `source.namespace` (namespaces)
    SrcNamespace,
    /// `source.serviceAccount` (serviceAccounts)
    SrcServiceAccount,
    /// The trust domain of the source principal (trustDomains, Istio 1.2x)
    SrcTrustDomain,
    /// `source.ip` (ipBlocks)
    SrcIp,
    /// `remote.ip` (remoteIpBlocks)
    RemoteIp,
    /// `request.auth.principal` (requestPrincipals)
    RequestPrincipal,
    /// `request.auth.audiences`
    Audiences,
    /// `request.auth.presenter`
    Presenter,
    /// `request.auth.claims[a][b]...`
    Claim(Vec<String>),
    /// `request.headers[name]`, name lower-cased
    Header(String),
    /// hosts
    Host,
    /// methods
    Method,
    /// paths
    Path,
    /// ports and `destination.port`
    Port,
    /// `destination.ip`
    DstIp,
    /// `connection.sni`
    Sni,
    /// `experimental.envoy.filters.*[...]`: Envoy dynamic metadata, never present in meshguard
    EnvoyMetadata(String),
    /// A key istiod's validation accepts but its config generation cannot build (e.g.
    /// `request.headers.x[foo]`): an ALLOW rule using it is dropped, a DENY/AUDIT/CUSTOM rule
    /// loses the condition (istio model.go `checkError`).
    Broken(String),
}

impl Attr {
    /// Fields that only exist on HTTP requests (istio model.go: the generators return an error
    /// for TCP filter chains).
    pub fn http_only(&self) -> bool {
        matches!(
            self,
            Attr::Broken(_)
                | Attr::RequestPrincipal
                | Attr::Audiences
                | Attr::Presenter
                | Attr::Claim(_)
                | Attr::Header(_)
                | Attr::Host
                | Attr::Method
                | Attr::Path
        )
    }

    /// Fields that need an authenticated identity (not allowed with CUSTOM).
    pub fn is_authn(&self) -> bool {
        matches!(
            self,
            Attr::SrcPrincipal
                | Attr::SrcNamespace
                | Attr::SrcServiceAccount
                | Attr::SrcTrustDomain
                | Attr::RequestPrincipal
                | Attr::Audiences
                | Attr::Presenter
                | Attr::Claim(_)
        )
    }
}

/// One field of a source/operation, or one `when` condition: values are ORed, `notValues`
/// negate an OR, and the two parts are ANDed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRule {
    pub attr: Attr,
    /// The name the user wrote (`principals`, `request.headers[x-token]`, ...), for messages.
    pub field: String,
    pub values: Vec<String>,
    pub not_values: Vec<String>,
}

/// One rule: (any `from`) AND (any `to`) AND (every `when`). `None` means the part is absent.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rule {
    pub from: Option<Vec<Vec<KeyRule>>>,
    pub to: Option<Vec<Vec<KeyRule>>>,
    pub when: Vec<KeyRule>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizationPolicy {
    pub meta: Meta,
    pub origin: Origin,
    /// `None`: no selector (namespace or mesh wide). An empty map selects every workload too.
    pub selector: Option<BTreeMap<String, String>>,
    /// Policies with `targetRef(s)` attach to gateways/waypoints and never to sidecar workloads.
    pub has_target_refs: bool,
    pub action: Action,
    pub provider: Option<String>,
    /// Empty when `rules` is absent or empty: the policy then matches nothing.
    pub rules: Vec<Rule>,
    pub dry_run: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MtlsMode {
    Unset,
    Disable,
    Permissive,
    Strict,
}

impl MtlsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            MtlsMode::Unset => "UNSET",
            MtlsMode::Disable => "DISABLE",
            MtlsMode::Permissive => "PERMISSIVE",
            MtlsMode::Strict => "STRICT",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAuthentication {
    pub meta: Meta,
    pub origin: Origin,
    pub selector: Option<BTreeMap<String, String>>,
    /// `UNSET` when `mtls` or its mode is absent.
    pub mode: MtlsMode,
    pub port_level: BTreeMap<u32, MtlsMode>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtHeader {
    pub name: String,
    pub prefix: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimToHeader {
    pub header: String,
    pub claim: String,
}

/// One `jwtRules` entry of a RequestAuthentication.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JwtRule {
    pub issuer: String,
    pub audiences: Vec<String>,
    pub jwks_uri: Option<String>,
    pub jwks: Option<String>,
    pub from_headers: Vec<JwtHeader>,
    pub from_params: Vec<String>,
    pub from_cookies: Vec<String>,
    pub output_payload_to_header: Option<String>,
    pub forward_original_token: bool,
    pub output_claim_to_headers: Vec<ClaimToHeader>,
    /// JWKS fetch timeout, as written (e.g. `5s`).
    pub timeout: Option<String>,
    pub space_delimited_claims: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestAuthentication {
    pub meta: Meta,
    pub origin: Origin,
    pub selector: Option<BTreeMap<String, String>>,
    pub has_target_refs: bool,
    pub jwt_rules: Vec<JwtRule>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resource {
    AuthorizationPolicy(AuthorizationPolicy),
    PeerAuthentication(PeerAuthentication),
    RequestAuthentication(RequestAuthentication),
    /// Gloo `AuthConfig` (enterprise.gloo.solo.io/v1).
    AuthConfig(crate::extauth::AuthConfig),
    /// Kubernetes `Secret` (API keys, passwords).
    Secret(crate::extauth::Secret),
    /// Kubernetes `ConfigMap` (Rego modules and data documents).
    ConfigMap(crate::extauth::ConfigMap),
}

impl Resource {
    pub fn meta(&self) -> &Meta {
        match self {
            Resource::AuthorizationPolicy(p) => &p.meta,
            Resource::PeerAuthentication(p) => &p.meta,
            Resource::RequestAuthentication(p) => &p.meta,
            Resource::AuthConfig(p) => &p.meta,
            Resource::Secret(p) => &p.meta,
            Resource::ConfigMap(p) => &p.meta,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Resource::AuthorizationPolicy(_) => "AuthorizationPolicy",
            Resource::PeerAuthentication(_) => "PeerAuthentication",
            Resource::RequestAuthentication(_) => "RequestAuthentication",
            Resource::AuthConfig(_) => "AuthConfig",
            Resource::Secret(_) => "Secret",
            Resource::ConfigMap(_) => "ConfigMap",
        }
    }

    pub fn origin(&self) -> &Origin {
        match self {
            Resource::AuthorizationPolicy(p) => &p.origin,
            Resource::PeerAuthentication(p) => &p.origin,
            Resource::RequestAuthentication(p) => &p.origin,
            Resource::AuthConfig(p) => &p.origin,
            Resource::Secret(p) => &p.origin,
            Resource::ConfigMap(p) => &p.origin,
        }
    }
}

const SECURITY_GROUP: &str = "security.istio.io";
const SECURITY_KINDS: &[&str] = &[
    "AuthorizationPolicy",
    "PeerAuthentication",
    "RequestAuthentication",
];

/// Parses every document of a YAML stream. Returns the resources that validated; problems go
/// to `diags`. Documents of other API groups are skipped with a warning.
pub(crate) fn parse_stream(
    text: &str,
    file: &str,
    diags: &mut Vec<crate::diag::Diagnostic>,
) -> Vec<Resource> {
    let mut ctx = Ctx {
        file,
        resource: None,
        diags,
    };
    let docs = match crate::yaml::parse_documents(text) {
        Ok(d) => d,
        Err(e) => {
            ctx.err_at(e.line, e.col, "", format!("invalid YAML: {}", e.message));
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for doc in &docs {
        parse_object(&mut ctx, doc, "", &mut out);
    }
    out
}

fn parse_object(ctx: &mut Ctx<'_>, doc: &Node, prefix: &str, out: &mut Vec<Resource>) {
    ctx.resource = None;
    if doc.as_map().is_none() {
        ctx.err(
            doc,
            prefix,
            format!(
                "expected a Kubernetes object (a mapping), found {}",
                doc.type_name()
            ),
        );
        return;
    }
    let field = |f: &str| {
        if prefix.is_empty() {
            f.to_owned()
        } else {
            format!("{prefix}.{f}")
        }
    };
    let kind = match doc.get("kind").and_then(Node::as_str) {
        Some(k) => k.to_owned(),
        None => {
            ctx.err(doc, &field("kind"), "missing `kind`");
            return;
        }
    };
    let api_version = doc.get("apiVersion").and_then(Node::as_str).unwrap_or("");
    if kind == "List" || kind.ends_with("List") && api_version == "v1" {
        match doc.get("items") {
            Some(items) => match &items.kind {
                NodeKind::Seq(list) => {
                    for (i, item) in list.iter().enumerate() {
                        parse_object(ctx, item, &field(&format!("items[{i}]")), out);
                    }
                }
                NodeKind::Null => {}
                _ => ctx.err(
                    items,
                    &field("items"),
                    format!("must be a list, found {}", items.type_name()),
                ),
            },
            None => ctx.warn(doc, &field("items"), "List without `items`"),
        }
        return;
    }
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    if crate::extauth::handles(&kind, api_version) {
        crate::extauth::parse_object(ctx, doc, prefix, &kind, out);
        return;
    }
    if group != SECURITY_GROUP {
        if SECURITY_KINDS.contains(&kind.as_str()) {
            ctx.err(
                doc,
                &field("apiVersion"),
                format!("{kind} must have apiVersion security.istio.io/v1 or security.istio.io/v1beta1, found `{api_version}`"),
            );
        } else {
            ctx.warn(
                doc,
                &field("kind"),
                format!("`{kind}` ({api_version}) is not a security.istio.io resource; ignored"),
            );
        }
        return;
    }
    if version != "v1" && version != "v1beta1" {
        ctx.err(
            doc,
            &field("apiVersion"),
            format!("unsupported version `{api_version}`: meshguard accepts security.istio.io/v1 and v1beta1"),
        );
        return;
    }
    if !SECURITY_KINDS.contains(&kind.as_str()) {
        let hint = suggest(&kind, SECURITY_KINDS)
            .map(|s| format!(" (did you mean `{s}`?)"))
            .unwrap_or_default();
        ctx.err(
            doc,
            &field("kind"),
            format!("unknown security.istio.io kind `{kind}`{hint}"),
        );
        return;
    }
    check_fields(
        ctx,
        doc,
        prefix,
        &["apiVersion", "kind", "metadata", "spec", "status"],
    );
    let errors_before = ctx.error_count();
    let Some(meta) = parse_meta(ctx, doc, &field("metadata")) else {
        return;
    };
    ctx.resource = Some(format!("{kind} {}/{}", meta.namespace, meta.name));
    if kind != "AuthorizationPolicy" && meta.annotations.contains_key(DRY_RUN_ANNOTATION) {
        ctx.err(doc, &field("metadata.annotations[istio.io/dry-run]"), format!("{kind} {}/{} has unsupported annotation istio.io/dry-run, please remove the annotation", meta.namespace, meta.name));
    }
    let origin = Origin {
        file: ctx.file.to_owned(),
        line: doc.line,
    };
    let empty = Node {
        line: doc.line,
        col: doc.col,
        kind: NodeKind::Map(Vec::new()),
    };
    let spec = match doc.get("spec") {
        Some(s) if s.is_null() => &empty,
        Some(s) if s.as_map().is_some() => s,
        Some(s) => {
            ctx.err(
                s,
                &field("spec"),
                format!("must be a mapping, found {}", s.type_name()),
            );
            return;
        }
        None => &empty,
    };
    let sp = field("spec");
    let res = match kind.as_str() {
        "AuthorizationPolicy" => {
            parse_authz(ctx, spec, &sp, meta, origin).map(Resource::AuthorizationPolicy)
        }
        "PeerAuthentication" => {
            parse_peer(ctx, spec, &sp, meta, origin).map(Resource::PeerAuthentication)
        }
        _ => parse_reqauthn(ctx, spec, &sp, meta, origin).map(Resource::RequestAuthentication),
    };
    if let Some(r) = res {
        if ctx.error_count() == errors_before {
            out.push(r);
        }
    }
}

/// Reports fields of `node` that are not in `known`, with a "did you mean" hint.
pub(crate) fn check_fields(ctx: &mut Ctx<'_>, node: &Node, path: &str, known: &[&str]) {
    let Some(entries) = node.as_map() else { return };
    for (k, _) in entries {
        if !known.contains(&k.text.as_str()) {
            let hint = suggest(&k.text, known)
                .map(|s| format!(" (did you mean `{s}`?)"))
                .unwrap_or_default();
            let f = join(path, &k.text);
            ctx.err_at(
                k.line,
                k.col,
                &f,
                format!(
                    "unknown field `{}`{hint}; known fields: {}",
                    k.text,
                    known.join(", ")
                ),
            );
        }
    }
}

pub(crate) fn join(path: &str, f: &str) -> String {
    if path.is_empty() {
        f.to_owned()
    } else {
        format!("{path}.{f}")
    }
}

pub(crate) fn get_map<'n>(
    ctx: &mut Ctx<'_>,
    parent: &'n Node,
    key: &str,
    path: &str,
) -> Option<&'n Node> {
    let n = parent.get(key)?;
    match n.kind {
        NodeKind::Map(_) => Some(n),
        NodeKind::Null => None,
        _ => {
            ctx.err(
                n,
                &join(path, key),
                format!("must be a mapping, found {}", n.type_name()),
            );
            None
        }
    }
}

pub(crate) fn get_str(
    ctx: &mut Ctx<'_>,
    parent: &Node,
    key: &str,
    path: &str,
) -> Option<(String, u32, u32)> {
    let n = parent.get(key)?;
    match &n.kind {
        NodeKind::Str(s) => Some((s.clone(), n.line, n.col)),
        NodeKind::Null => None,
        _ => {
            ctx.err(
                n,
                &join(path, key),
                format!("must be a string, found {}{}", n.type_name(), quote_hint(n)),
            );
            None
        }
    }
}

fn quote_hint(n: &Node) -> String {
    match &n.kind {
        NodeKind::Int(i) => format!(" (write \"{i}\" in quotes)"),
        NodeKind::Bool(b) => format!(" (write \"{b}\" in quotes)"),
        NodeKind::Float(f) => format!(" (write \"{f}\" in quotes)"),
        _ => String::new(),
    }
}

pub(crate) fn get_bool(ctx: &mut Ctx<'_>, parent: &Node, key: &str, path: &str) -> Option<bool> {
    let n = parent.get(key)?;
    match &n.kind {
        NodeKind::Bool(b) => Some(*b),
        NodeKind::Null => None,
        _ => {
            ctx.err(
                n,
                &join(path, key),
                format!("must be a boolean (true or false), found {}", n.type_name()),
            );
            None
        }
    }
}

/// A list of strings. `Some(vec![])` for an explicitly empty list; each item with its position.
pub(crate) fn get_str_list(
    ctx: &mut Ctx<'_>,
    parent: &Node,
    key: &str,
    path: &str,
) -> Option<Vec<(String, u32, u32)>> {
    let n = parent.get(key)?;
    let f = join(path, key);
    match &n.kind {
        NodeKind::Null => None,
        NodeKind::Seq(items) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                match &item.kind {
                    NodeKind::Str(s) => out.push((s.clone(), item.line, item.col)),
                    _ => ctx.err(
                        item,
                        &format!("{f}[{i}]"),
                        format!(
                            "must be a string, found {}{}",
                            item.type_name(),
                            quote_hint(item)
                        ),
                    ),
                }
            }
            Some(out)
        }
        _ => {
            ctx.err(
                n,
                &f,
                format!("must be a list of strings, found {}", n.type_name()),
            );
            None
        }
    }
}

pub(crate) fn get_seq<'n>(
    ctx: &mut Ctx<'_>,
    parent: &'n Node,
    key: &str,
    path: &str,
) -> Option<&'n [Node]> {
    let n = parent.get(key)?;
    match &n.kind {
        NodeKind::Seq(items) => Some(items),
        NodeKind::Null => None,
        _ => {
            ctx.err(
                n,
                &join(path, key),
                format!("must be a list, found {}", n.type_name()),
            );
            None
        }
    }
}

pub(crate) fn string_map(ctx: &mut Ctx<'_>, n: &Node, path: &str) -> BTreeMap<String, String> {
    string_map_with(ctx, n, path, false)
}

/// [`string_map`] for Secret contents: a refused value is described by its type only, never
/// echoed (diagnostics reach `/readyz`, `/config` and logs).
pub(crate) fn secret_string_map(
    ctx: &mut Ctx<'_>,
    n: &Node,
    path: &str,
) -> BTreeMap<String, String> {
    string_map_with(ctx, n, path, true)
}

fn string_map_with(
    ctx: &mut Ctx<'_>,
    n: &Node,
    path: &str,
    secret: bool,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if let Some(entries) = n.as_map() {
        for (k, v) in entries {
            match &v.kind {
                NodeKind::Str(s) => {
                    out.insert(k.text.clone(), s.clone());
                }
                _ => ctx.err(
                    v,
                    &join(path, &k.text),
                    if secret {
                        format!(
                            "values must be strings, found {} (quote the value; Secret contents are not shown)",
                            v.type_name()
                        )
                    } else {
                        format!(
                            "values must be strings, found {}{}",
                            v.type_name(),
                            quote_hint(v)
                        )
                    },
                ),
            }
        }
    } else if !n.is_null() {
        ctx.err(
            n,
            path,
            format!("must be a mapping of strings, found {}", n.type_name()),
        );
    }
    out
}

const META_FIELDS: &[&str] = &[
    "name",
    "namespace",
    "labels",
    "annotations",
    "creationTimestamp",
    "uid",
    "resourceVersion",
    "generation",
    "managedFields",
    "ownerReferences",
    "finalizers",
    "generateName",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "selfLink",
];

pub(crate) fn parse_meta(ctx: &mut Ctx<'_>, doc: &Node, path: &str) -> Option<Meta> {
    let Some(m) = doc.get("metadata") else {
        ctx.err(doc, path, "missing `metadata` (name and namespace)");
        return None;
    };
    if m.as_map().is_none() {
        ctx.err(
            m,
            path,
            format!("must be a mapping, found {}", m.type_name()),
        );
        return None;
    }
    check_fields(ctx, m, path, META_FIELDS);
    let name = match get_str(ctx, m, "name", path) {
        Some((n, line, col)) => {
            if !is_dns_subdomain(&n) {
                ctx.err_at(line, col, &join(path, "name"), format!("`{n}` is not a valid Kubernetes name (lower-case letters, digits, '-' and '.', at most 253 characters)"));
            }
            n
        }
        None => {
            ctx.err(m, &join(path, "name"), "missing `metadata.name`");
            return None;
        }
    };
    let namespace = match get_str(ctx, m, "namespace", path) {
        Some((n, line, col)) => {
            if !is_dns_label(&n) {
                ctx.err_at(
                    line,
                    col,
                    &join(path, "namespace"),
                    format!("`{n}` is not a valid namespace name (RFC 1123 label)"),
                );
            }
            n
        }
        None => "default".to_owned(),
    };
    let labels = m
        .get("labels")
        .map(|l| string_map(ctx, l, &join(path, "labels")))
        .unwrap_or_default();
    let annotations = m
        .get("annotations")
        .map(|l| string_map(ctx, l, &join(path, "annotations")))
        .unwrap_or_default();
    let creation_timestamp = m.get("creationTimestamp").and_then(|n| match &n.kind {
        NodeKind::Str(s) => Some(s.clone()),
        _ => None,
    });
    Some(Meta {
        name,
        namespace,
        labels,
        annotations,
        creation_timestamp,
    })
}

pub(crate) fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// Go's `strconv.ParseBool`, which istiod uses for `istio.io/dry-run`.
pub fn parse_go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

pub const DRY_RUN_ANNOTATION: &str = "istio.io/dry-run";

fn parse_selector(ctx: &mut Ctx<'_>, spec: &Node, path: &str) -> Option<BTreeMap<String, String>> {
    let sel = spec.get("selector")?;
    let p = join(path, "selector");
    if sel.is_null() {
        return Some(BTreeMap::new());
    }
    if sel.as_map().is_none() {
        ctx.err(
            sel,
            &p,
            format!(
                "must be a mapping with `matchLabels`, found {}",
                sel.type_name()
            ),
        );
        return None;
    }
    check_fields(ctx, sel, &p, &["matchLabels"]);
    let labels = sel
        .get("matchLabels")
        .map(|l| string_map(ctx, l, &join(&p, "matchLabels")))
        .unwrap_or_default();
    if labels.is_empty() {
        ctx.warn(sel, &p, "workload selector specified without labels: the policy applies to every workload in its scope");
    }
    for (k, v) in &labels {
        if k.is_empty() || k.contains('*') || v.contains('*') {
            ctx.err(sel, &join(&p, "matchLabels"), format!("invalid label `{k}: {v}`: keys must be non-empty and wildcards are not supported"));
        }
    }
    Some(labels)
}

const TARGET_REF_FIELDS: &[&str] = &["group", "kind", "name", "namespace"];

/// Parses `targetRef`/`targetRefs`; returns whether any is present.
fn parse_target_refs(ctx: &mut Ctx<'_>, spec: &Node, path: &str) -> bool {
    let mut present = false;
    let check_one = |ctx: &mut Ctx<'_>, n: &Node, p: &str| {
        if n.as_map().is_none() {
            ctx.err(
                n,
                p,
                format!(
                    "must be a mapping (group, kind, name), found {}",
                    n.type_name()
                ),
            );
            return;
        }
        check_fields(ctx, n, p, TARGET_REF_FIELDS);
        if get_str(ctx, n, "kind", p).is_none() {
            ctx.err(n, &join(p, "kind"), "targetRef needs a `kind`");
        }
        if get_str(ctx, n, "name", p).is_none() {
            ctx.err(n, &join(p, "name"), "targetRef needs a `name`");
        }
        if let Some((ns, line, col)) = get_str(ctx, n, "namespace", p) {
            let _ = ns;
            ctx.err_at(line, col, &join(p, "namespace"), "cross-namespace targetRef is not supported: the target must be in the policy's namespace");
        }
    };
    if let Some(n) = spec.get("targetRef") {
        if !n.is_null() {
            present = true;
            check_one(ctx, n, &join(path, "targetRef"));
        }
    }
    if let Some(items) = get_seq(ctx, spec, "targetRefs", path) {
        if !items.is_empty() {
            if present {
                ctx.err(
                    spec,
                    &join(path, "targetRefs"),
                    "only one of targetRef or targetRefs can be set",
                );
            }
            present = true;
        }
        for (i, n) in items.iter().enumerate() {
            check_one(ctx, n, &format!("{}[{i}]", join(path, "targetRefs")));
        }
    }
    if present && spec.get("selector").is_some_and(|s| !s.is_null()) {
        ctx.err(
            spec,
            &join(path, "selector"),
            "only one of targetRefs or workload selector can be set",
        );
    }
    present
}

const AUTHZ_FIELDS: &[&str] = &[
    "selector",
    "targetRef",
    "targetRefs",
    "rules",
    "action",
    "provider",
];
const RULE_FIELDS: &[&str] = &["from", "to", "when"];
const SOURCE_FIELDS: &[&str] = &[
    "principals",
    "notPrincipals",
    "requestPrincipals",
    "notRequestPrincipals",
    "namespaces",
    "notNamespaces",
    "ipBlocks",
    "notIpBlocks",
    "remoteIpBlocks",
    "notRemoteIpBlocks",
    "serviceAccounts",
    "notServiceAccounts",
    "trustDomains",
    "notTrustDomains",
];
const OPERATION_FIELDS: &[&str] = &[
    "hosts",
    "notHosts",
    "ports",
    "notPorts",
    "methods",
    "notMethods",
    "paths",
    "notPaths",
];

fn parse_authz(
    ctx: &mut Ctx<'_>,
    spec: &Node,
    path: &str,
    meta: Meta,
    origin: Origin,
) -> Option<AuthorizationPolicy> {
    check_fields(ctx, spec, path, AUTHZ_FIELDS);
    let selector = parse_selector(ctx, spec, path);
    let has_target_refs = parse_target_refs(ctx, spec, path);
    let action = match get_str(ctx, spec, "action", path) {
        None => Action::Allow,
        Some((a, line, col)) => match a.as_str() {
            "ALLOW" => Action::Allow,
            "DENY" => Action::Deny,
            "AUDIT" => Action::Audit,
            "CUSTOM" => Action::Custom,
            other => {
                let hint = suggest(other, &["ALLOW", "DENY", "AUDIT", "CUSTOM"])
                    .map(|s| format!(" (did you mean `{s}`?)"))
                    .unwrap_or_default();
                ctx.err_at(
                    line,
                    col,
                    &join(path, "action"),
                    format!("unknown action `{other}`{hint}: use ALLOW, DENY, AUDIT or CUSTOM"),
                );
                Action::Allow
            }
        },
    };
    let mut provider = None;
    if let Some(p) = get_map(ctx, spec, "provider", path) {
        let pp = join(path, "provider");
        check_fields(ctx, p, &pp, &["name"]);
        match get_str(ctx, p, "name", &pp) {
            Some((n, _, _)) if !n.is_empty() => provider = Some(n),
            _ => ctx.err(p, &join(&pp, "name"), "provider needs a non-empty `name`"),
        }
    }
    match action {
        Action::Custom if provider.is_none() => {
            ctx.err(spec, &join(path, "provider"), "must specify a provider for CUSTOM action (provider.name, naming a meshConfig.extensionProviders entry)");
        }
        Action::Custom => {}
        _ if spec.get("provider").is_some_and(|p| !p.is_null()) => {
            ctx.err(
                spec.get("provider").unwrap_or(spec),
                &join(path, "provider"),
                format!(
                    "provider must not be set for {} action: it is only used with CUSTOM",
                    action.as_str()
                ),
            );
        }
        _ => {}
    }
    let mut rules = Vec::new();
    let rules_node = get_seq(ctx, spec, "rules", path);
    if let Some(items) = rules_node {
        for (i, r) in items.iter().enumerate() {
            let rp = format!("{}[{i}]", join(path, "rules"));
            if let Some(rule) = parse_rule(ctx, r, &rp, action) {
                rules.push(rule);
            }
        }
    }
    if action == Action::Deny {
        for (i, r) in rules.iter().enumerate() {
            let keys = r
                .from
                .iter()
                .chain(r.to.iter())
                .flatten()
                .flatten()
                .chain(r.when.iter());
            let (mut http, mut tcp) = (false, false);
            for k in keys {
                if k.attr.http_only() {
                    http = true;
                } else {
                    tcp = true;
                }
            }
            if http && !tcp {
                ctx.warn_at(origin.line, 1, &format!("{}[{i}]", join(path, "rules")), "this DENY rule uses only HTTP attributes, so on plain TCP connections it denies ALL traffic to the selected workloads (the HTTP conditions are dropped there); add `ports` to limit it");
            }
        }
    }
    if rules_node.is_none_or(<[Node]>::is_empty) {
        match action {
            Action::Deny | Action::Custom => ctx.err(
                spec,
                &join(path, "rules"),
                format!("{} action without `rules` is meaningless as it will never be triggered; add an empty rule `{{}}` if you want it to be triggered for every request", action.as_str()),
            ),
            Action::Audit => ctx.warn(spec, &join(path, "rules"), "AUDIT action without `rules` never matches"),
            Action::Allow => ctx.warn(spec, &join(path, "rules"), "ALLOW policy without rules allows nothing: every request to the selected workloads is denied (Istio's allow-nothing policy)"),
        }
    }
    let dry_run = match meta.annotations.get(DRY_RUN_ANNOTATION) {
        None => false,
        Some(v) if matches!(action, Action::Audit | Action::Custom) => {
            let _ = v;
            ctx.err_at(origin.line, 1, "metadata.annotations[istio.io/dry-run]", format!("the annotation istio.io/dry-run currently only supports action ALLOW/DENY, found action {}", action.as_str()));
            false
        }
        Some(v) => match parse_go_bool(v) {
            Some(b) => b,
            None => {
                ctx.err_at(origin.line, 1, "metadata.annotations[istio.io/dry-run]", format!("invalid value `{v}`: use \"true\" or \"false\" (Go strconv.ParseBool: 1, t, T, TRUE, true, True, 0, f, F, FALSE, false, False). istiod's webhook rejects it; had it got through, istiod would log an error and ENFORCE the policy"));
                false
            }
        },
    };
    Some(AuthorizationPolicy {
        meta,
        origin,
        selector,
        has_target_refs,
        action,
        provider,
        rules,
        dry_run,
    })
}

fn parse_rule(ctx: &mut Ctx<'_>, r: &Node, path: &str, action: Action) -> Option<Rule> {
    if r.is_null() {
        ctx.err(
            r,
            path,
            "`rule` must not be nil; write `{}` for a rule that matches every request",
        );
        return None;
    }
    if r.as_map().is_none() {
        ctx.err(
            r,
            path,
            format!(
                "a rule must be a mapping (from, to, when), found {}",
                r.type_name()
            ),
        );
        return None;
    }
    check_fields(ctx, r, path, RULE_FIELDS);
    let mut rule = Rule::default();
    if let Some(items) = get_seq(ctx, r, "from", path) {
        let fp = join(path, "from");
        if items.is_empty() {
            ctx.err(
                r.get("from").unwrap_or(r),
                &fp,
                "`from` must not be empty; remove it to match any source",
            );
        }
        let mut sources = Vec::new();
        for (i, f) in items.iter().enumerate() {
            let p = format!("{fp}[{i}]");
            if f.as_map().is_none() {
                ctx.err(
                    f,
                    &p,
                    format!("must be a mapping with `source`, found {}", f.type_name()),
                );
                continue;
            }
            check_fields(ctx, f, &p, &["source"]);
            let sp = join(&p, "source");
            let Some(src) = get_map(ctx, f, "source", &p) else {
                ctx.err(f, &sp, "`from.source` must not be nil");
                continue;
            };
            check_fields(ctx, src, &sp, SOURCE_FIELDS);
            let keys = parse_fields(ctx, src, &sp, SOURCE_FIELDS, action);
            if keys.is_empty() {
                ctx.err(src, &sp, "`from.source` must not be empty");
            }
            if keys.iter().any(|k| k.attr == Attr::SrcServiceAccount)
                && keys
                    .iter()
                    .any(|k| matches!(k.attr, Attr::SrcPrincipal | Attr::SrcNamespace))
            {
                ctx.err(src, &sp, "serviceAccounts cannot be combined with principals or namespaces in the same source");
            }
            sources.push(keys);
        }
        rule.from = Some(sources);
    }
    if let Some(items) = get_seq(ctx, r, "to", path) {
        let tp = join(path, "to");
        if items.is_empty() {
            ctx.err(
                r.get("to").unwrap_or(r),
                &tp,
                "`to` must not be empty; remove it to match any operation",
            );
        }
        let mut ops = Vec::new();
        for (i, t) in items.iter().enumerate() {
            let p = format!("{tp}[{i}]");
            if t.as_map().is_none() {
                ctx.err(
                    t,
                    &p,
                    format!(
                        "must be a mapping with `operation`, found {}",
                        t.type_name()
                    ),
                );
                continue;
            }
            check_fields(ctx, t, &p, &["operation"]);
            let op_path = join(&p, "operation");
            let Some(op) = get_map(ctx, t, "operation", &p) else {
                ctx.err(t, &op_path, "`to.operation` must not be nil");
                continue;
            };
            check_fields(ctx, op, &op_path, OPERATION_FIELDS);
            let keys = parse_fields(ctx, op, &op_path, OPERATION_FIELDS, action);
            if keys.is_empty() {
                ctx.err(op, &op_path, "`to.operation` must not be empty");
            }
            ops.push(keys);
        }
        rule.to = Some(ops);
    }
    if let Some(items) = get_seq(ctx, r, "when", path) {
        let wp = join(path, "when");
        for (i, c) in items.iter().enumerate() {
            let p = format!("{wp}[{i}]");
            if let Some(k) = parse_condition(ctx, c, &p, action) {
                rule.when.push(k);
            }
        }
    }
    Some(rule)
}

fn field_attr(field: &str) -> (Attr, bool) {
    let (base, neg) = match field.strip_prefix("not") {
        Some(rest) => (rest, true),
        None => (field, false),
    };
    let attr = match base.to_ascii_lowercase().as_str() {
        "principals" => Attr::SrcPrincipal,
        "requestprincipals" => Attr::RequestPrincipal,
        "namespaces" => Attr::SrcNamespace,
        "ipblocks" => Attr::SrcIp,
        "remoteipblocks" => Attr::RemoteIp,
        "serviceaccounts" => Attr::SrcServiceAccount,
        "trustdomains" => Attr::SrcTrustDomain,
        "hosts" => Attr::Host,
        "ports" => Attr::Port,
        "methods" => Attr::Method,
        _ => Attr::Path,
    };
    (attr, neg)
}

/// Parses the list fields of a source or operation into key rules, pairing `x` with `notX`.
fn parse_fields(
    ctx: &mut Ctx<'_>,
    node: &Node,
    path: &str,
    fields: &[&str],
    action: Action,
) -> Vec<KeyRule> {
    let mut out: Vec<KeyRule> = Vec::new();
    for f in fields {
        let Some(values) = get_str_list(ctx, node, f, path) else {
            continue;
        };
        let fp = join(path, f);
        let (attr, neg) = field_attr(f);
        for (i, (v, line, col)) in values.iter().enumerate() {
            validate_value(ctx, &attr, v, *line, *col, &format!("{fp}[{i}]"));
        }
        if values.is_empty() {
            // An explicitly empty list is the same as an absent field in proto3.
            continue;
        }
        if action == Action::Custom && attr.is_authn() {
            let n = node.get(f).unwrap_or(node);
            ctx.err(n, &fp, format!("{f} is not supported with CUSTOM action: ext_authz providers run before authentication fields are available"));
        }
        let base = if neg { &f[3..] } else { f };
        let base = base[..1].to_ascii_lowercase() + &base[1..];
        let strings: Vec<String> = values.into_iter().map(|(v, _, _)| v).collect();
        match out.iter_mut().find(|k| k.attr == attr) {
            Some(k) if neg => k.not_values = strings,
            Some(k) => k.values = strings,
            None => out.push(KeyRule {
                attr,
                field: base,
                values: if neg { Vec::new() } else { strings.clone() },
                not_values: if neg { strings } else { Vec::new() },
            }),
        }
    }
    out
}

/// Checks one value of a field or condition as istiod's validation does.
fn validate_value(ctx: &mut Ctx<'_>, attr: &Attr, v: &str, line: u32, col: u32, field: &str) {
    if v.is_empty() {
        ctx.err_at(line, col, field, "empty value is not allowed");
        return;
    }
    match attr {
        Attr::SrcIp | Attr::RemoteIp | Attr::DstIp => {
            if parse_ip_block(v).is_none() {
                ctx.err_at(line, col, field, format!("`{v}` is not a valid IP address or CIDR block (e.g. 10.0.0.1, 10.0.0.0/16, 2001:db8::/32)"));
            }
        }
        Attr::Port => {
            if v.parse::<u16>().is_err() {
                ctx.err_at(line, col, field, format!("`{v}` is not a valid port: use an integer 0-65535 (ports take no wildcards or ranges)"));
            }
        }
        Attr::SrcServiceAccount => {
            if v.contains('*') {
                ctx.err_at(
                    line,
                    col,
                    field,
                    format!("wildcard not allowed in serviceAccounts, found `{v}`"),
                );
            } else if v.len() > 320 {
                ctx.err_at(line, col, field, "value cannot exceed 320 characters");
            } else if v.split('/').count() > 2 || v.starts_with('/') || v.ends_with('/') {
                ctx.err_at(line, col, field, format!("expected format 'serviceAccount' or 'namespace/serviceAccount', found `{v}`"));
            }
        }
        Attr::SrcTrustDomain => {
            if v.is_empty() || v.contains('/') {
                ctx.err_at(line, col, field, format!("`{v}` is not a trust domain (a name such as `cluster.local`, `*` allowed, no `/`)"));
            }
        }
        Attr::SrcNamespace => {
            if let Err(e) = regex::Regex::new(&crate::matcher::namespace_regex(v)) {
                ctx.err_at(line, col, field, format!("`{v}` does not compile: Istio turns namespaces into the regex `.*/ns/<value>/.*` (with `*` as `.*`): {e}"));
            }
        }
        Attr::Path => {
            if let Err(e) = crate::matcher::validate_path_template(v) {
                ctx.err_at(line, col, field, e);
            } else if !crate::matcher::is_path_template(v) && has_inner_wildcard(v) {
                ctx.warn_at(line, col, field, format!("`{v}` has a `*` in the middle: Istio only supports `*` at the start or end (or `{{*}}`/`{{**}}` path templates), so this `*` is a literal character and will almost never match"));
            }
        }
        _ => {
            if has_inner_wildcard(v) {
                ctx.warn_at(line, col, field, format!("`{v}` has a `*` in the middle: Istio only supports `*` at the start or end, so this `*` is matched literally"));
            }
        }
    }
}

fn has_inner_wildcard(v: &str) -> bool {
    v.len() > 2 && v[1..v.len() - 1].contains('*')
}

/// Parses an IP address or CIDR block as Istio accepts it (a bare IP is a /32 or /128).
pub fn parse_ip_block(v: &str) -> Option<ipnet::IpNet> {
    if let Some((addr, len)) = v.split_once('/') {
        let addr: IpAddr = addr.parse().ok()?;
        let len: u8 = len.parse().ok()?;
        ipnet::IpNet::new(addr, len).ok()
    } else {
        let addr: IpAddr = v.parse().ok()?;
        Some(ipnet::IpNet::from(addr))
    }
}

const HTTP_ONLY_KEYS_HINT: &str = "request.headers[<name>], source.ip, remote.ip, source.namespace, source.principal, source.serviceAccount, request.auth.principal, request.auth.audiences, request.auth.presenter, request.auth.claims[<name>], destination.ip, destination.port, connection.sni, experimental.envoy.filters.*";

/// istio validation `validateMapKey`: a prefix check only.
fn valid_map_key(key: &str) -> bool {
    match key.find('[') {
        Some(open) => key.ends_with(']') && open > 0 && open + 2 < key.len(),
        None => false,
    }
}

/// istio model util.go `extractNameInBrackets`.
fn name_in_brackets(s: &str) -> Option<String> {
    (s.len() >= 2 && s.starts_with('[') && s.ends_with(']')).then(|| s[1..s.len() - 1].to_owned())
}

/// istio model util.go `extractNameInNestedBrackets`: `[a][b]` -> [a, b]; anything else falls back
/// to one name with the outer brackets removed (`[foo.com/name]`, `[a]b]`).
fn names_in_nested_brackets(s: &str) -> Option<Vec<String>> {
    let b = s.as_bytes();
    let find_end = |begin: usize| -> Option<usize> {
        if b.get(begin) != Some(&b'[') {
            return None;
        }
        for (i, &c) in b.iter().enumerate().skip(begin + 1) {
            match c {
                b'[' => return None,
                b']' => return Some(i),
                _ => {}
            }
        }
        None
    };
    let mut out = Vec::new();
    let mut begin = 0;
    while begin < b.len() {
        match find_end(begin) {
            Some(end) => {
                out.push(s[begin + 1..end].to_owned());
                begin = end + 1;
            }
            None => return name_in_brackets(s).map(|n| vec![n]),
        }
    }
    Some(out)
}

/// Maps a `when` key to its attribute, or explains why istiod's validation refuses it.
pub fn condition_attr(key: &str) -> Result<Attr, String> {
    let map_key = |prefix: &str| -> Option<Result<String, String>> {
        let rest = key.strip_prefix(prefix)?;
        if !valid_map_key(key) {
            return Some(Err(format!(
                "bad key `{key}`: should have format {prefix}[<name>]"
            )));
        }
        Some(Ok(rest.to_owned()))
    };
    if let Some(r) = map_key("request.headers") {
        let rest = r?;
        return Ok(match name_in_brackets(&rest) {
            Some(n) if !n.is_empty() => Attr::Header(n.to_ascii_lowercase()),
            _ => Attr::Broken(key.to_owned()),
        });
    }
    if let Some(r) = map_key("request.auth.claims") {
        let rest = r?;
        return Ok(match names_in_nested_brackets(&rest) {
            Some(names) if !names.is_empty() => Attr::Claim(names),
            _ => Attr::Broken(key.to_owned()),
        });
    }
    if let Some(r) = map_key("experimental.") {
        r?;
        return Ok(Attr::EnvoyMetadata(key.to_owned()));
    }
    Ok(match key {
        "source.ip" => Attr::SrcIp,
        "remote.ip" => Attr::RemoteIp,
        "source.namespace" => Attr::SrcNamespace,
        "source.principal" => Attr::SrcPrincipal,
        "source.serviceAccount" => Attr::SrcServiceAccount,
        "request.auth.principal" => Attr::RequestPrincipal,
        "request.auth.audiences" => Attr::Audiences,
        "request.auth.presenter" => Attr::Presenter,
        "destination.ip" => Attr::DstIp,
        "destination.port" => Attr::Port,
        "connection.sni" => Attr::Sni,
        "destination.namespace" => {
            return Err(format!(
                "attribute `{key}` is replaced by the metadata.namespace of the policy"
            ))
        }
        k if k.starts_with("destination.labels") => {
            return Err(format!(
                "attribute `{key}` is replaced by the workload selector"
            ));
        }
        "destination.name" | "destination.user" => {
            return Err(format!(
                "deprecated attribute `{key}`: only supported in v1alpha1"
            ));
        }
        other => {
            return Err(format!(
                "unknown attribute `{other}`; supported keys: {HTTP_ONLY_KEYS_HINT}"
            ));
        }
    })
}

fn parse_condition(ctx: &mut Ctx<'_>, c: &Node, path: &str, action: Action) -> Option<KeyRule> {
    if c.as_map().is_none() {
        ctx.err(
            c,
            path,
            format!(
                "a condition must be a mapping (key, values, notValues), found {}",
                c.type_name()
            ),
        );
        return None;
    }
    check_fields(ctx, c, path, &["key", "values", "notValues"]);
    let Some((key, kl, kc)) = get_str(ctx, c, "key", path) else {
        ctx.err(c, &join(path, "key"), "`key` must not be empty");
        return None;
    };
    let kp = join(path, "key");
    let values = get_str_list(ctx, c, "values", path).unwrap_or_default();
    let not_values = get_str_list(ctx, c, "notValues", path).unwrap_or_default();
    let attr = match condition_attr(&key) {
        Ok(a) => a,
        Err(e) => {
            ctx.err_at(kl, kc, &kp, e);
            return None;
        }
    };
    if values.is_empty() && not_values.is_empty() {
        ctx.err(
            c,
            path,
            format!("at least one of `values` or `notValues` must be set for key `{key}`"),
        );
        return None;
    }
    if action == Action::Custom && attr.is_authn() {
        ctx.err_at(kl, kc, &kp, format!("`{key}` is not supported with CUSTOM action: ext_authz providers run before authentication fields are available"));
    }
    for (list, name) in [(&values, "values"), (&not_values, "notValues")] {
        for (i, (v, line, col)) in list.iter().enumerate() {
            validate_value(
                ctx,
                &attr,
                v,
                *line,
                *col,
                &format!("{}[{i}]", join(path, name)),
            );
        }
    }
    if matches!(attr, Attr::Claim(ref names) if names.len() == 1 && ["exp", "iat", "nbf", "auth_time"].contains(&names[0].as_str()))
    {
        ctx.warn_at(kl, kc, &kp, format!("`{key}` is a numeric claim: Istio (Envoy RBAC) matches only string and string-list claims, so this condition never matches (istio/istio#39703){}", if values.is_empty() { "" } else if action == Action::Allow { "; this rule can never allow a request" } else { "; this rule can never match" }));
    }
    if let Attr::Broken(_) = attr {
        ctx.warn_at(
            kl,
            kc,
            &kp,
            format!(
                "istiod accepts `{key}` but cannot generate a matcher for it: {}",
                if action == Action::Allow {
                    "the whole rule is skipped (it never allows)"
                } else {
                    "the condition is dropped, so the rule matches more widely"
                }
            ),
        );
    }
    if let Attr::EnvoyMetadata(_) = attr {
        ctx.warn_at(kl, kc, &kp, format!("`{key}` reads Envoy filter metadata, which meshguard does not have: the condition never matches (its notValues always do)"));
    }
    Some(KeyRule {
        attr,
        field: key,
        values: values.into_iter().map(|(v, _, _)| v).collect(),
        not_values: not_values.into_iter().map(|(v, _, _)| v).collect(),
    })
}

fn parse_mode(ctx: &mut Ctx<'_>, n: &Node, path: &str) -> MtlsMode {
    if n.as_map().is_none() {
        ctx.err(
            n,
            path,
            format!("must be a mapping with `mode`, found {}", n.type_name()),
        );
        return MtlsMode::Unset;
    }
    check_fields(ctx, n, path, &["mode"]);
    match get_str(ctx, n, "mode", path) {
        None => MtlsMode::Unset,
        Some((m, line, col)) => match m.as_str() {
            "UNSET" => MtlsMode::Unset,
            "DISABLE" => MtlsMode::Disable,
            "PERMISSIVE" => MtlsMode::Permissive,
            "STRICT" => MtlsMode::Strict,
            other => {
                let known = ["UNSET", "DISABLE", "PERMISSIVE", "STRICT"];
                let hint = suggest(other, &known)
                    .map(|s| format!(" (did you mean `{s}`?)"))
                    .unwrap_or_default();
                ctx.err_at(line, col, &join(path, "mode"), format!("unknown mTLS mode `{other}`{hint}: use UNSET, DISABLE, PERMISSIVE or STRICT"));
                MtlsMode::Unset
            }
        },
    }
}

fn parse_peer(
    ctx: &mut Ctx<'_>,
    spec: &Node,
    path: &str,
    meta: Meta,
    origin: Origin,
) -> Option<PeerAuthentication> {
    check_fields(ctx, spec, path, &["selector", "mtls", "portLevelMtls"]);
    let selector = parse_selector(ctx, spec, path);
    let mode = match spec.get("mtls") {
        Some(m) if !m.is_null() => parse_mode(ctx, m, &join(path, "mtls")),
        _ => MtlsMode::Unset,
    };
    let mut port_level = BTreeMap::new();
    if let Some(pl) = get_map(ctx, spec, "portLevelMtls", path) {
        let pp = join(path, "portLevelMtls");
        if selector.as_ref().is_none_or(BTreeMap::is_empty) {
            ctx.err(
                pl,
                &pp,
                "portLevelMtls requires a workload selector with matchLabels",
            );
        }
        if pl.as_map().is_some_and(<[_]>::is_empty) {
            ctx.err(
                pl,
                &pp,
                "port level mTLS, if defined, must have at least one element",
            );
        }
        for (k, v) in pl.as_map().unwrap_or_default() {
            let kp = format!("{pp}[{}]", k.text);
            match k.text.parse::<u32>() {
                Ok(p) if (1..=65535).contains(&p) => {
                    port_level.insert(p, parse_mode(ctx, v, &kp));
                }
                _ => ctx.err_at(
                    k.line,
                    k.col,
                    &kp,
                    format!("port `{}` must be an integer 1-65535", k.text),
                ),
            }
        }
    }
    Some(PeerAuthentication {
        meta,
        origin,
        selector,
        mode,
        port_level,
    })
}

const JWT_RULE_FIELDS: &[&str] = &[
    "issuer",
    "audiences",
    "jwksUri",
    "jwks",
    "fromHeaders",
    "fromParams",
    "fromCookies",
    "outputPayloadToHeader",
    "forwardOriginalToken",
    "outputClaimToHeaders",
    "timeout",
    "spaceDelimitedClaims",
];

fn parse_reqauthn(
    ctx: &mut Ctx<'_>,
    spec: &Node,
    path: &str,
    meta: Meta,
    origin: Origin,
) -> Option<RequestAuthentication> {
    check_fields(
        ctx,
        spec,
        path,
        &["selector", "targetRef", "targetRefs", "jwtRules"],
    );
    let selector = parse_selector(ctx, spec, path);
    let has_target_refs = parse_target_refs(ctx, spec, path);
    let mut jwt_rules = Vec::new();
    if let Some(items) = get_seq(ctx, spec, "jwtRules", path) {
        for (i, r) in items.iter().enumerate() {
            let rp = format!("{}[{i}]", join(path, "jwtRules"));
            if let Some(rule) = parse_jwt_rule(ctx, r, &rp) {
                jwt_rules.push(rule);
            }
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for r in &jwt_rules {
        if !seen.insert(r.issuer.as_str()) {
            ctx.warn(spec, &join(path, "jwtRules"), format!("issuer `{}` appears in more than one jwtRule; only one provider per issuer is effective", r.issuer));
        }
    }
    Some(RequestAuthentication {
        meta,
        origin,
        selector,
        has_target_refs,
        jwt_rules,
    })
}

fn parse_jwt_rule(ctx: &mut Ctx<'_>, r: &Node, path: &str) -> Option<JwtRule> {
    if r.as_map().is_none() {
        ctx.err(
            r,
            path,
            format!("a jwtRule must be a mapping, found {}", r.type_name()),
        );
        return None;
    }
    check_fields(ctx, r, path, JWT_RULE_FIELDS);
    let mut rule = JwtRule {
        issuer: get_str(ctx, r, "issuer", path)
            .map(|i| i.0)
            .unwrap_or_default(),
        ..JwtRule::default()
    };
    let auds = get_str_list(ctx, r, "audiences", path).unwrap_or_default();
    for (i, (a, line, col)) in auds.iter().enumerate() {
        if a.is_empty() {
            ctx.err_at(
                *line,
                *col,
                &format!("{}[{i}]", join(path, "audiences")),
                "audience must be non-empty string",
            );
        }
    }
    rule.audiences = auds.into_iter().map(|a| a.0).collect();
    if let Some((u, line, col)) = get_str(ctx, r, "jwksUri", path) {
        if let Err(e) = check_http_url(&u) {
            ctx.err_at(line, col, &join(path, "jwksUri"), e);
        }
        rule.jwks_uri = Some(u);
    }
    if rule.issuer.is_empty() && rule.jwks_uri.is_none() {
        ctx.err(
            r,
            &join(path, "issuer"),
            "issuer or jwksUri must be non-empty string",
        );
    }
    if let Some((j, line, col)) = get_str(ctx, r, "jwks", path) {
        match serde_json::from_str::<serde_json::Value>(&j) {
            Ok(v) if v.get("keys").is_some_and(serde_json::Value::is_array) => {}
            Ok(_) => ctx.err_at(
                line,
                col,
                &join(path, "jwks"),
                "inline jwks must be a JSON Web Key Set: an object with a `keys` array",
            ),
            Err(e) => ctx.err_at(
                line,
                col,
                &join(path, "jwks"),
                format!("inline jwks is not valid JSON: {e}"),
            ),
        }
        rule.jwks = Some(j);
    }
    if rule.jwks.is_some() && rule.jwks_uri.is_some() {
        ctx.warn(r, &join(path, "jwks"), "both jwks and jwksUri are set: the inline jwks is used and jwksUri is ignored (istiod's default behaviour)");
    }
    if let Some(items) = get_seq(ctx, r, "fromHeaders", path) {
        for (i, h) in items.iter().enumerate() {
            let hp = format!("{}[{i}]", join(path, "fromHeaders"));
            if h.as_map().is_none() {
                ctx.err(
                    h,
                    &hp,
                    "must be a mapping with `name` and optional `prefix`",
                );
                continue;
            }
            check_fields(ctx, h, &hp, &["name", "prefix"]);
            let name = match get_str(ctx, h, "name", &hp) {
                Some((n, _, _)) if !n.is_empty() => n,
                _ => {
                    ctx.err(h, &join(&hp, "name"), "location header name must be set");
                    continue;
                }
            };
            let prefix = get_str(ctx, h, "prefix", &hp)
                .map(|p| p.0)
                .unwrap_or_default();
            rule.from_headers.push(JwtHeader { name, prefix });
        }
    }
    rule.from_params = strings(get_str_list(ctx, r, "fromParams", path));
    rule.from_cookies = strings(get_str_list(ctx, r, "fromCookies", path));
    for (list, name) in [
        (&rule.from_params, "fromParams"),
        (&rule.from_cookies, "fromCookies"),
    ] {
        if list.iter().any(String::is_empty) {
            ctx.err(r, &join(path, name), "names must not be empty");
        }
    }
    rule.output_payload_to_header = get_str(ctx, r, "outputPayloadToHeader", path).map(|p| p.0);
    rule.forward_original_token = get_bool(ctx, r, "forwardOriginalToken", path).unwrap_or(false);
    if let Some(items) = get_seq(ctx, r, "outputClaimToHeaders", path) {
        for (i, h) in items.iter().enumerate() {
            let hp = format!("{}[{i}]", join(path, "outputClaimToHeaders"));
            if h.as_map().is_none() {
                ctx.err(h, &hp, "must be a mapping with `header` and `claim`");
                continue;
            }
            check_fields(ctx, h, &hp, &["header", "claim"]);
            let header = get_str(ctx, h, "header", &hp)
                .map(|p| p.0)
                .unwrap_or_default();
            let claim = get_str(ctx, h, "claim", &hp)
                .map(|p| p.0)
                .unwrap_or_default();
            if header.is_empty()
                || !header
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                ctx.err(
                    h,
                    &join(&hp, "header"),
                    format!("`{header}` is not a valid header name"),
                );
            }
            if claim.is_empty() {
                ctx.err(h, &join(&hp, "claim"), "claim must be set");
            }
            rule.output_claim_to_headers
                .push(ClaimToHeader { header, claim });
        }
    }
    if let Some((t, line, col)) = get_str(ctx, r, "timeout", path) {
        if parse_duration(&t).is_none() {
            ctx.err_at(
                line,
                col,
                &join(path, "timeout"),
                format!("`{t}` is not a duration (e.g. 5s, 500ms, 1.5s)"),
            );
        }
        rule.timeout = Some(t);
    }
    rule.space_delimited_claims = strings(get_str_list(ctx, r, "spaceDelimitedClaims", path));
    Some(rule)
}

/// istio `ParseJwksURI`: http(s) scheme, a host, and a numeric port if one is given.
fn check_http_url(u: &str) -> Result<(), String> {
    let rest = u
        .strip_prefix("https://")
        .or_else(|| u.strip_prefix("http://"))
        .ok_or_else(|| format!("`{u}`: URI scheme is not supported; use http:// or https://"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit('@').next().unwrap_or("");
    if host_port.is_empty() {
        return Err(format!("`{u}` has no host"));
    }
    if !host_port.ends_with(']') {
        if let Some((_, port)) = host_port.rsplit_once(':') {
            if port.parse::<u16>().is_err() {
                return Err(format!("`{u}`: invalid port `{port}`"));
            }
        }
    }
    Ok(())
}

fn strings(v: Option<Vec<(String, u32, u32)>>) -> Vec<String> {
    v.unwrap_or_default()
        .into_iter()
        .map(|(s, _, _)| s)
        .collect()
}

/// Parses a protobuf-JSON duration (`5s`, `1.5s`) or Go-style duration (`500ms`, `1m`).
pub fn parse_duration(s: &str) -> Option<std::time::Duration> {
    let (num, unit) = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map(|i| s.split_at(i))?;
    let n: f64 = num.parse().ok()?;
    let secs = match unit {
        "ns" => n / 1e9,
        "us" | "µs" => n / 1e6,
        "ms" => n / 1e3,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return None;
    }
    Some(std::time::Duration::from_secs_f64(secs))
}
