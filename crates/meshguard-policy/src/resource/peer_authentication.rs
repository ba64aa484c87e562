//! `PeerAuthentication`: the workload's mTLS mode and its per-port overrides.

use std::collections::BTreeMap;

use super::parse_selector;
use crate::diag::{suggest, Ctx};
use crate::fields::{check_fields, get_map, get_str, join};
use crate::meta::{Meta, Origin};
use crate::yaml::Node;

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

pub(super) fn parse_peer(
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
