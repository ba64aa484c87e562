//! One decision log line (schema version 1, README "Decision log") and the request it stands
//! for. Fields a line lacks are absent from the request, as they were from the original.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::IpAddr;

use meshguard_policy::request::{Destination, HttpRequest, JwtIdentity, Source};
use meshguard_policy::{PathNormalization, Request};
use serde::Deserialize;

/// A recorded decision, borrowing from the line where it can.
#[derive(Debug, Deserialize)]
pub struct Recorded<'a> {
    #[serde(default)]
    pub v: u64,
    #[serde(borrow, default)]
    pub time: Cow<'a, str>,
    #[serde(borrow, default)]
    pub id: Cow<'a, str>,
    #[serde(borrow, default)]
    pub mode: Cow<'a, str>,
    pub allowed: bool,
    pub status: u16,
    #[serde(borrow, default)]
    pub reason: Cow<'a, str>,
    #[serde(borrow, default)]
    pub policy: Option<Cow<'a, str>>,
    #[serde(default)]
    pub rule: Option<usize>,
    #[serde(borrow, default)]
    pub action: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub source_principal: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub request_principal: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub namespace: Cow<'a, str>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub source_ip: Option<IpAddr>,
    #[serde(default)]
    pub remote_ip: Option<IpAddr>,
    #[serde(default)]
    pub destination_ip: Option<IpAddr>,
    #[serde(default)]
    pub sni: Option<String>,
    #[serde(borrow, default)]
    pub method: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub host: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub path: Option<Cow<'a, str>>,
    #[serde(default)]
    pub headers: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub claims: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(borrow, default)]
    pub auth_config: Option<Cow<'a, str>>,
}

/// Why a recorded line is not replayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotReplayable {
    /// The token was refused by request authentication; tokens are never recorded.
    TokenRefused,
    /// The original decision failed closed (a timeout, an outage): there is no policy outcome
    /// to compare with.
    FailedClosed,
}

impl Recorded<'_> {
    /// Parses one line.
    pub fn parse(line: &str) -> Result<Recorded<'_>, serde_json::Error> {
        serde_json::from_str(line)
    }

    /// Whether the line can be decided again, and why not.
    pub fn replayable(&self) -> Result<(), NotReplayable> {
        if self.reason.starts_with("request authentication failed") {
            return Err(NotReplayable::TokenRefused);
        }
        if self.reason.starts_with("denied (fail closed)") {
            return Err(NotReplayable::FailedClosed);
        }
        Ok(())
    }

    /// The request as the engine saw it, with the verified token's recorded claims standing for
    /// the token. `custom_providers` are the candidate set's CUSTOM providers: AuthConfigs and
    /// external authorizers are not called again, each answers as the recorded decision implies
    /// (denied only if the recorded decision was a CUSTOM denial).
    pub fn request(
        &self,
        normalization: PathNormalization,
        custom_providers: &[String],
    ) -> Request {
        let mut req = Request {
            destination: Destination {
                namespace: self.namespace.clone().into_owned(),
                labels: self.labels.clone(),
                port: self.port,
                ip: self.destination_ip,
            },
            source: Source {
                ip: self.source_ip,
                remote_ip: self.remote_ip.or(self.source_ip),
            },
            sni: self.sni.clone(),
            ..Default::default()
        };
        if let Some(p) = &self.source_principal {
            req = req.with_peer(p);
        }
        if let (Some(method), Some(path)) = (&self.method, &self.path) {
            let lines = self
                .headers
                .iter()
                .flat_map(|(k, vs)| vs.iter().map(move |v| (k.clone(), v.clone())));
            let host = self.host.as_deref().unwrap_or_default();
            req.http = Some(HttpRequest::new(
                method.as_ref(),
                host,
                path.as_ref(),
                lines,
                normalization,
            ));
        }
        if self.request_principal.is_some() || self.claims.is_some() {
            req.verified_jwt = Some(std::sync::Arc::new(JwtIdentity::new(
                self.claims.clone().unwrap_or_default(),
                self.request_principal.as_ref().map(|p| p.to_string()),
            )));
        }
        let custom_denied = !self.allowed && self.action.as_deref() == Some("CUSTOM");
        req.custom = custom_providers
            .iter()
            .map(|p| (p.clone(), !custom_denied))
            .collect();
        req
    }

    /// `source -> destination` as the report groups edges: the caller's `ns/sa` (or its IP for
    /// plaintext) and the workload's `namespace/app`.
    pub fn edge(&self) -> (String, String) {
        let src = match &self.source_principal {
            Some(p) => {
                let p = p.strip_prefix("spiffe://").unwrap_or(p);
                match p.split_once("/ns/") {
                    Some((_, rest)) => rest.replacen("/sa/", "/", 1),
                    None => p.to_owned(),
                }
            }
            None => match self.remote_ip.or(self.source_ip) {
                Some(ip) => format!("plaintext {ip}"),
                None => "plaintext".to_owned(),
            },
        };
        let dst = match self.labels.get("app") {
            Some(app) => format!("{}/{app}", self.namespace),
            None => self.namespace.clone().into_owned(),
        };
        (src, dst)
    }
}
