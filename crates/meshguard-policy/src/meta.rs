//! Kubernetes object metadata (`metadata.name`, `namespace`, labels, annotations) and where a
//! resource came from, read the same way for every kind.

use std::collections::BTreeMap;

use crate::diag::Ctx;
use crate::fields::{check_fields, get_str, join, string_map};
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
