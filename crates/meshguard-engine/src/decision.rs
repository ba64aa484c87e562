//! The engine's answer: one `Decision` for every front end, carrying the reason, the policy and
//! rule that decided, the status, and what to change on the request and the response.

/// What the dry-run (`istio.io/dry-run`) policies alone would have decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DryRun {
    pub allowed: bool,
    /// `namespace/name` of the dry-run policy that decided, if one matched.
    pub policy: Option<String>,
    pub rule: Option<usize>,
    /// `allow` or `deny`: the action of the dry-run policies that decided (Istio's
    /// `authz_dry_run_action`).
    pub action: &'static str,
}

/// The decision about one request or connection.
#[derive(Debug, Clone)]
pub struct Decision {
    pub allowed: bool,
    /// 200, 400/404 (refused before authorization), 401 (authentication), 403 (authorization),
    /// or what an AuthConfig step chose (a redirect, a Rego status).
    pub status: u16,
    pub reason: String,
    /// `namespace/name` of the policy (or RequestAuthentication) that decided.
    pub policy: Option<String>,
    pub rule: Option<usize>,
    pub action: Option<&'static str>,
    /// The workload port's effective PeerAuthentication mode.
    pub mtls_mode: &'static str,
    pub headers_to_add: Vec<(String, String)>,
    pub headers_to_remove: Vec<String>,
    /// Query parameters to drop from the path the app sees (a verified token's, when
    /// `forwardOriginalToken` is false).
    pub query_params_to_remove: Vec<String>,
    pub www_authenticate: Option<String>,
    pub request_principal: Option<String>,
    /// Who the engine found the caller to be: the mTLS peer and the verified JWT.
    pub identity: meshguard_policy::Identity,
    /// `namespace/name` of the RequestAuthentication whose rule verified the token.
    pub request_authentication: Option<String>,
    /// AUDIT policies that matched, in RBAC name order.
    pub audit: Vec<String>,
    pub dry_run: Option<DryRun>,
    pub generation: u64,
    /// Allowed only because no enforced ALLOW policy applies to the workload (Istio's default);
    /// an engine with `default_deny` turns these into denials unless an AuthConfig ran and
    /// allowed the request.
    pub by_default: bool,
    /// Denied because ALLOW policies apply to the workload and none matched (`check` explains
    /// why each rule did not).
    pub no_allow_matched: bool,
    /// Headers for the client: a denial's (`WWW-Authenticate` from API key or basic auth,
    /// Rego `headers`) or, on success, Rego `response_headers_to_add`.
    pub response_headers: Vec<(String, String)>,
    /// A denial body chosen by an AuthConfig step (Rego `body`); otherwise Envoy's wording.
    pub custom_body: Option<String>,
    /// The AuthConfig(s) that ran, if any.
    pub auth_config: Option<String>,
    /// `dynamic_metadata` fields chosen by AuthConfig steps (OPA-Envoy decisions).
    pub dynamic_metadata: serde_json::Map<String, serde_json::Value>,
    /// The decision id: the request's `x-request-id` (Envoy's `request.http.id`), or one the
    /// engine made up when there is none. In the decision log and in Envoy's dynamic metadata
    /// (`decision_id`), so an access log line and a decision line can be joined.
    pub id: String,
    /// Policies under gradual enforcement that applied: `(namespace/name, percent, enforced
    /// for this caller)`, and the caller's bucket (0-99) when there are any.
    pub gradual: Vec<(String, u8, bool)>,
    pub caller_bucket: Option<u8>,
    /// Set when audit mode let a denied request through: what would have been answered.
    pub audit_mode: Option<AuditMode>,
}

/// What audit mode did not enforce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditMode {
    pub would_status: u16,
    pub would_reason: String,
}

impl Decision {
    /// A fail-closed denial for requests that cannot be decided.
    pub fn internal(reason: impl Into<String>, generation: u64) -> Decision {
        Decision {
            allowed: false,
            status: 403,
            reason: reason.into(),
            policy: None,
            rule: None,
            action: None,
            mtls_mode: "UNSET",
            headers_to_add: Vec::new(),
            headers_to_remove: Vec::new(),
            query_params_to_remove: Vec::new(),
            www_authenticate: None,
            request_principal: None,
            identity: meshguard_policy::Identity::default(),
            request_authentication: None,
            audit: Vec::new(),
            dry_run: None,
            generation,
            by_default: false,
            no_allow_matched: false,
            response_headers: Vec::new(),
            custom_body: None,
            auth_config: None,
            dynamic_metadata: serde_json::Map::new(),
            id: String::new(),
            gradual: Vec::new(),
            caller_bucket: None,
            audit_mode: None,
        }
    }

    /// `[{"policy", "percent", "enforced"}]` for the decision log and `check`.
    pub fn gradual_json(&self) -> serde_json::Value {
        self.gradual
            .iter()
            .map(|(p, pct, e)| serde_json::json!({"policy": p, "percent": pct, "enforced": e}))
            .collect::<Vec<_>>()
            .into()
    }

    /// The body of a denial: an AuthConfig's own (empty unless a step chose one, as Gloo's
    /// ext-auth answers), or the short text Envoy's filters use.
    pub fn body(&self) -> &str {
        if let Some(b) = &self.custom_body {
            return b;
        }
        // Denied by an AuthConfig step (not by an Istio policy after the chain allowed).
        if self.auth_config.is_some() && self.action == Some("CUSTOM") {
            return "";
        }
        match self.status {
            401 => "Jwt authentication failed",
            403 => "RBAC: access denied",
            _ => "request refused",
        }
    }

    /// A JSON object for machines (`meshguard check --output json`).
    pub fn to_json(&self) -> serde_json::Value {
        let pairs = |v: &[(String, String)]| -> Vec<serde_json::Value> {
            v.iter().map(|(k, v)| serde_json::json!([k, v])).collect()
        };
        let mut j = serde_json::json!({
            "allowed": self.allowed,
            "status": self.status,
            "reason": self.reason,
            "mtls_mode": self.mtls_mode,
            "audit": self.audit,
        });
        let mut put = |k: &str, v: serde_json::Value| {
            if !v.is_null() {
                j[k] = v;
            }
        };
        put("policy", self.policy.clone().into());
        put("rule", self.rule.into());
        put("action", self.action.into());
        put("auth_config", self.auth_config.clone().into());
        put("request_principal", self.request_principal.clone().into());
        put(
            "request_authentication",
            self.request_authentication.clone().into(),
        );
        put("www_authenticate", self.www_authenticate.clone().into());
        if let Some(a) = &self.audit_mode {
            j["audit_mode"] =
                serde_json::json!({"would_status": a.would_status, "would_reason": a.would_reason});
        }
        if !self.gradual.is_empty() {
            j["gradual"] = self.gradual_json();
            j["caller_bucket"] = self.caller_bucket.into();
        }
        if let Some(d) = &self.dry_run {
            let mut o = serde_json::json!({"allowed": d.allowed});
            if let (Some(p), Some(r)) = (&d.policy, d.rule) {
                o["policy"] = p.clone().into();
                o["rule"] = r.into();
            }
            j["dry_run"] = o;
        }
        j["headers_to_add"] = pairs(&self.headers_to_add).into();
        j["headers_to_remove"] = self.headers_to_remove.clone().into();
        j["query_params_to_remove"] = self.query_params_to_remove.clone().into();
        j["response_headers"] = pairs(&self.response_headers).into();
        j["dynamic_metadata"] = self.dynamic_metadata.clone().into();
        if !self.allowed {
            j["body"] = self.body().into();
        }
        j
    }
}
