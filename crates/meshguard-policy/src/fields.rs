//! The collecting side of the one YAML field reader (`read.rs`): policy resources report every
//! wrong type or unknown field as a diagnostic with its position and keep the valid rest.

use std::collections::BTreeMap;

use crate::diag::Ctx;
pub(crate) use crate::read::join;
pub use crate::read::parse_duration;
use crate::read::{quote_hint, unknown_keys};
use crate::yaml::{Node, NodeKind};

/// Reports fields of `node` that are not in `known`, with a "did you mean" hint.
pub(crate) fn check_fields(ctx: &mut Ctx<'_>, node: &Node, path: &str, known: &[&str]) {
    let Some(entries) = node.as_map() else { return };
    for (k, message) in unknown_keys(entries, known) {
        ctx.err_at(k.line, k.col, &join(path, &k.text), message);
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
