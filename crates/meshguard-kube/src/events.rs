//! Kubernetes Events for refused objects: `kubectl describe` on a bad AuthorizationPolicy shows
//! why meshguard refused it, next to the object, on every replica's behalf once.

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, PostParams};
use meshguard_engine::LoadError;

use crate::source::KubeSource;

/// The Event reason meshguard writes.
pub const REASON: &str = "MeshguardRefused";

/// Writes a Warning Event on every object a refused load names (in the background; a failure to
/// write one is logged, never fatal).
pub fn report(source: &KubeSource, error: &LoadError) {
    // (object file, field, message) for each refusal that names an object.
    let refusals: Vec<(String, String, String)> = match error {
        LoadError::Invalid(diagnostics) => diagnostics
            .iter()
            .filter(|d| d.severity == meshguard_policy::Severity::Error)
            .map(|d| (d.file.clone(), d.field.clone(), d.message.clone()))
            .collect(),
        // An AuthConfig that parses but cannot be built (a Secret it names is missing, Rego
        // that does not compile): the Event goes on the AuthConfig.
        LoadError::AuthConfig { file, message } => {
            vec![(file.clone(), String::new(), message.clone())]
        }
        _ => Vec::new(),
    };
    for (file, field, text) in refusals {
        let Some(o) = source.object_of(&file) else {
            continue;
        };
        let message = if field.is_empty() {
            format!("refused by meshguard: {text}")
        } else {
            format!("refused by meshguard: {field}: {text}")
        };
        let uid = o.uid.clone().unwrap_or_default();
        let rv = o.resource_version.clone().unwrap_or_default();
        if !source.first_report(&uid, &rv, &message) {
            continue;
        }
        let now = Time(jiff::Timestamp::now());
        let instance = source.instance().to_owned();
        let event = Event {
            metadata: ObjectMeta {
                generate_name: Some(format!("{}.", o.name)),
                namespace: Some(o.namespace.clone()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some(o.api_version.clone()),
                kind: Some(o.kind.clone()),
                name: Some(o.name.clone()),
                namespace: Some(o.namespace.clone()),
                uid: o.uid.clone(),
                resource_version: o.resource_version.clone(),
                field_path: (!field.is_empty()).then(|| field.clone()),
            },
            reason: Some(REASON.to_owned()),
            message: Some(message),
            type_: Some("Warning".to_owned()),
            source: Some(EventSource {
                component: Some("meshguard".to_owned()),
                host: None,
            }),
            reporting_component: Some("meshguard".to_owned()),
            reporting_instance: (!instance.is_empty()).then_some(instance),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            count: Some(1),
            ..Default::default()
        };
        let api: Api<Event> = Api::namespaced(source.client(), &o.namespace);
        tokio::spawn(async move {
            if let Err(e) = api.create(&PostParams::default(), &event).await {
                tracing::warn!(error = %e, object = %format!("{}/{}", o.namespace, o.name), "could not write a Kubernetes Event for a refused object");
            }
        });
    }
}
