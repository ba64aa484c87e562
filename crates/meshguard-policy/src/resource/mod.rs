//! Istio security resources, parsed from YAML and validated as strictly as istiod does.
//!
//! The parser walks the position-carrying tree from [`crate::yaml`] so that every problem names
//! the file, line and field. All problems in a file are reported, not just the first.
//!
//! One file per kind (`authorization.rs`, `peer_authentication.rs`, `request_authentication.rs`);
//! the Gloo `AuthConfig`, `Secret` and `ConfigMap` kinds are parsed by [`crate::extauth`].

mod attr;
mod authorization;
mod peer_authentication;
mod request_authentication;

use std::collections::BTreeMap;

pub use self::attr::{condition_attr, Attr, ConditionKeyError};
pub use self::authorization::{
    parse_go_bool, parse_ip_block, Action, AuthorizationPolicy, KeyRule, Rule, DRY_RUN_ANNOTATION,
};
pub use self::peer_authentication::{MtlsMode, PeerAuthentication};
pub use self::request_authentication::{ClaimToHeader, JwtHeader, JwtRule, RequestAuthentication};
pub use crate::fields::parse_duration;
pub use crate::meta::{Meta, Origin};

use self::authorization::parse_authz;
use self::peer_authentication::parse_peer;
use self::request_authentication::parse_reqauthn;
use crate::diag::{suggest, Ctx};
use crate::extauth;
use crate::fields::{check_fields, get_seq, get_str, join, string_map};
use crate::meta::parse_meta;
use crate::yaml::{Node, NodeKind};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resource {
    AuthorizationPolicy(AuthorizationPolicy),
    PeerAuthentication(PeerAuthentication),
    RequestAuthentication(RequestAuthentication),
    /// Gloo `AuthConfig` (enterprise.gloo.solo.io/v1).
    AuthConfig(crate::extauth::AuthConfig),
    /// Gloo Platform `ExtAuthPolicy` (security.policy.gloo.solo.io/v2).
    ExtAuthPolicy(crate::extauth::ExtAuthPolicy),
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
            Resource::ExtAuthPolicy(p) => &p.meta,
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
            Resource::ExtAuthPolicy(_) => "ExtAuthPolicy",
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
            Resource::ExtAuthPolicy(p) => &p.origin,
            Resource::Secret(p) => &p.origin,
            Resource::ConfigMap(p) => &p.origin,
        }
    }

    /// `kind namespace/name`, as logs and diagnostics name a resource.
    pub fn describe(&self) -> String {
        format!(
            "{} {}/{}",
            self.kind(),
            self.meta().namespace,
            self.meta().name
        )
    }

    /// The same resource with the same content, wherever it was written (file and line aside).
    pub fn same_content(&self, other: &Resource) -> bool {
        let mut moved = self.clone();
        let o = other.origin().clone();
        match &mut moved {
            Resource::AuthorizationPolicy(p) => p.origin = o,
            Resource::PeerAuthentication(p) => p.origin = o,
            Resource::RequestAuthentication(p) => p.origin = o,
            Resource::AuthConfig(p) => p.origin = o,
            Resource::ExtAuthPolicy(p) => {
                if let crate::extauth::ExtAuthAction::Gloo(c) = &mut p.action {
                    c.origin = o.clone();
                }
                p.origin = o
            }
            Resource::Secret(p) => p.origin = o,
            Resource::ConfigMap(p) => p.origin = o,
        }
        moved == *other
    }
}

/// What changed between two policy sets, each resource named as `kind namespace/name`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub modified: Vec<String>,
}

impl Changes {
    pub fn between(old: &[Resource], new: &[Resource]) -> Changes {
        let key = |r: &Resource| (r.kind(), r.meta().namespace.clone(), r.meta().name.clone());
        let old_by: std::collections::HashMap<_, &Resource> =
            old.iter().map(|r| (key(r), r)).collect();
        let new_keys: std::collections::HashSet<_> = new.iter().map(key).collect();
        let mut c = Changes::default();
        for r in new {
            match old_by.get(&key(r)) {
                None => c.added.push(r.describe()),
                Some(o) if !o.same_content(r) => c.modified.push(r.describe()),
                Some(_) => {}
            }
        }
        c.removed = old
            .iter()
            .filter(|r| !new_keys.contains(&key(r)))
            .map(Resource::describe)
            .collect();
        c
    }

    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.modified.is_empty()
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
    if extauth::handles(&kind, api_version) {
        parse_extauth_object(ctx, doc, prefix, &kind, out);
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

/// Gloo `AuthConfig` and the Kubernetes `Secret` and `ConfigMap` objects its steps refer to; the
/// parsers of their contents are in [`crate::extauth`].
fn parse_extauth_object(
    ctx: &mut Ctx<'_>,
    doc: &Node,
    prefix: &str,
    kind: &str,
    out: &mut Vec<Resource>,
) {
    let field = |f: &str| join(prefix, f);
    let known: &[&str] = match kind {
        "AuthConfig" | "ExtAuthPolicy" => &["apiVersion", "kind", "metadata", "spec", "status"],
        "Secret" => &[
            "apiVersion",
            "kind",
            "metadata",
            "type",
            "data",
            "stringData",
            "immutable",
        ],
        _ => &[
            "apiVersion",
            "kind",
            "metadata",
            "data",
            "binaryData",
            "immutable",
        ],
    };
    check_fields(ctx, doc, prefix, known);
    let errors_before = ctx.error_count();
    let Some(meta) = parse_meta(ctx, doc, &field("metadata")) else {
        return;
    };
    ctx.resource = Some(format!("{kind} {}/{}", meta.namespace, meta.name));
    let origin = Origin {
        file: ctx.file.to_owned(),
        line: doc.line,
    };
    let res = match kind {
        "Secret" => extauth::parse_secret(ctx, doc, prefix, meta, origin).map(Resource::Secret),
        "ConfigMap" => Some(Resource::ConfigMap(extauth::parse_config_map(
            ctx, doc, prefix, meta, origin,
        ))),
        "ExtAuthPolicy" => extauth::parse_ext_auth_policy(ctx, doc, &field("spec"), meta, origin)
            .map(Resource::ExtAuthPolicy),
        _ => extauth::parse_auth_config(ctx, doc, &field("spec"), meta, origin)
            .map(Resource::AuthConfig),
    };
    if let Some(r) = res {
        if ctx.error_count() == errors_before {
            out.push(r);
        }
    }
}

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
