//! Rego steps: Gloo `opaAuth` and meshguard's `opaEnvoy` (opa-envoy-plugin's input and
//! decision conventions), both reading their modules from ConfigMaps.

use super::secret::{object_refs, ObjectRef};
use crate::diag::Ctx;
use crate::fields::{check_fields, get_map, get_str, join};
use crate::yaml::Node;

/// Which input document and decision convention a Rego step uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegoMode {
    /// Gloo `opaAuth`: input `{check_request, http_request, state}`, a query whose first
    /// expression is `true` (or an array starting with `true`) allows.
    Gloo { query: String },
    /// meshguard `opaEnvoy`: opa-envoy-plugin's input (`attributes`, `parsed_path`, ...), and a
    /// rule path (default `envoy/authz/allow`) that yields a boolean or a decision object.
    Envoy { path: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegoAuth {
    /// ConfigMaps: `*.rego` entries are modules, `*.json` entries data documents.
    pub modules: Vec<ObjectRef>,
    pub mode: RegoMode,
}

pub(super) fn parse_rego(
    ctx: &mut Ctx<'_>,
    n: &Node,
    p: &str,
    ns: &str,
    envoy: bool,
) -> Option<RegoAuth> {
    if envoy {
        check_fields(ctx, n, p, &["modules", "path"]);
    } else {
        check_fields(ctx, n, p, &["modules", "query", "options"]);
        if let Some(o) = get_map(ctx, n, "options", p) {
            let op = join(p, "options");
            check_fields(
                ctx,
                o,
                &op,
                &["fastInputConversion", "returnDecisionReason"],
            );
        }
    }
    let modules = object_refs(ctx, n, "modules", p, ns);
    if modules.is_empty() {
        ctx.err(
            n,
            &join(p, "modules"),
            "name at least one ConfigMap holding Rego modules",
        );
    }
    let mode = if envoy {
        let path = get_str(ctx, n, "path", p)
            .map(|x| x.0)
            .unwrap_or_else(|| "envoy/authz/allow".to_owned());
        RegoMode::Envoy {
            path: path.trim_matches('/').to_owned(),
        }
    } else {
        match get_str(ctx, n, "query", p) {
            Some((q, _, _)) => RegoMode::Gloo { query: q },
            None => {
                ctx.err(
                    n,
                    &join(p, "query"),
                    "missing `query` (e.g. `data.test.allow == true`)",
                );
                return None;
            }
        }
    };
    Some(RegoAuth { modules, mode })
}
