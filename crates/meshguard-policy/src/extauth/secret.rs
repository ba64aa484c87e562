//! The Kubernetes `Secret` and `ConfigMap` objects AuthConfig steps read (API keys, passwords,
//! client secrets, Rego modules), and the references by which steps name them.

use std::collections::BTreeMap;

use crate::diag::Ctx;
use crate::fields::{check_fields, get_seq, get_str, join, secret_string_map, string_map};
use crate::meta::{Meta, Origin};
use crate::yaml::Node;

/// A reference to a Secret or ConfigMap. `namespace` defaults to the referring object's.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ObjectRef {
    pub name: String,
    pub namespace: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Secret {
    pub meta: Meta,
    pub origin: Origin,
    /// `type` (e.g. `extauth.solo.io/apikey`, `Opaque`).
    pub secret_type: String,
    /// `data` (base64-decoded) merged with `stringData` (which wins, as in Kubernetes).
    pub data: BTreeMap<String, Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigMap {
    pub meta: Meta,
    pub origin: Origin,
    pub data: BTreeMap<String, String>,
}

pub(crate) fn parse_secret(
    ctx: &mut Ctx<'_>,
    doc: &Node,
    prefix: &str,
    meta: Meta,
    origin: Origin,
) -> Option<Secret> {
    use base64::Engine as _;
    let mut data = BTreeMap::new();
    if let Some(d) = doc.get("data") {
        for (k, v) in secret_string_map(ctx, d, &join(prefix, "data")) {
            let clean: String = v.chars().filter(|c| !c.is_whitespace()).collect();
            match base64::engine::general_purpose::STANDARD.decode(clean.as_bytes()) {
                Ok(bytes) => {
                    data.insert(k, bytes);
                }
                Err(_) => {
                    let at = d.get(&k).unwrap_or(d);
                    ctx.err(
                        at,
                        &join(prefix, &format!("data.{k}")),
                        "is not base64 (Secret `data` values are base64; use `stringData` for plain text)",
                    );
                }
            }
        }
    }
    if let Some(d) = doc.get("stringData") {
        for (k, v) in secret_string_map(ctx, d, &join(prefix, "stringData")) {
            data.insert(k, v.into_bytes());
        }
    }
    let secret_type = get_str(ctx, doc, "type", prefix)
        .map(|t| t.0)
        .unwrap_or_else(|| "Opaque".to_owned());
    Some(Secret {
        meta,
        origin,
        secret_type,
        data,
    })
}

pub(crate) fn parse_config_map(
    ctx: &mut Ctx<'_>,
    doc: &Node,
    prefix: &str,
    meta: Meta,
    origin: Origin,
) -> ConfigMap {
    let data = doc
        .get("data")
        .map(|d| string_map(ctx, d, &join(prefix, "data")))
        .unwrap_or_default();
    ConfigMap { meta, origin, data }
}

pub(super) fn object_ref(
    ctx: &mut Ctx<'_>,
    n: &Node,
    path: &str,
    default_ns: &str,
) -> Option<ObjectRef> {
    if n.as_map().is_none() {
        ctx.err(
            n,
            path,
            format!(
                "must be a mapping {{name, namespace}}, found {}",
                n.type_name()
            ),
        );
        return None;
    }
    check_fields(ctx, n, path, &["name", "namespace"]);
    let Some((name, _, _)) = get_str(ctx, n, "name", path) else {
        ctx.err(n, &join(path, "name"), "missing `name`");
        return None;
    };
    let namespace = get_str(ctx, n, "namespace", path)
        .map(|x| x.0)
        .unwrap_or_else(|| default_ns.to_owned());
    Some(ObjectRef { name, namespace })
}

pub(super) fn object_refs(
    ctx: &mut Ctx<'_>,
    parent: &Node,
    key: &str,
    path: &str,
    ns: &str,
) -> Vec<ObjectRef> {
    let mut out = Vec::new();
    if let Some(items) = get_seq(ctx, parent, key, path) {
        for (i, item) in items.iter().enumerate() {
            if let Some(r) = object_ref(ctx, item, &format!("{}[{i}]", join(path, key)), ns) {
                out.push(r);
            }
        }
    }
    out
}

/// Kubernetes label selector semantics for `matchLabels`: every pair must be present.
pub fn labels_match(
    selector: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}
