//! What a user sees of a policy besides its spec: conditions and Events.

use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::ListParams;
use kube::{Api, Client};

use kubevirt_metrics_operator::api::MetricsSidecarPolicy;

/// The condition of `type_`, if the status has one.
pub fn condition(policy: &MetricsSidecarPolicy, type_: &str) -> Option<Condition> {
    policy
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .cloned()
}

/// The Events about policy `name` (as `kubectl describe msp` and `kubectl events` show
/// them), oldest first.
pub async fn policy_events(client: &Client, ns: &str, name: &str) -> anyhow::Result<Vec<Event>> {
    let mut events: Vec<Event> = Api::<Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| {
            e.regarding.as_ref().is_some_and(|r| {
                r.kind.as_deref() == Some("MetricsSidecarPolicy") && r.name.as_deref() == Some(name)
            })
        })
        .collect();
    events.sort_by_key(|e| e.metadata.creation_timestamp.as_ref().map(|t| t.0));
    Ok(events)
}

/// `(type, reason, note)` of each event, for assertions and failure messages.
pub fn summary(events: &[Event]) -> Vec<(String, String, String)> {
    events
        .iter()
        .map(|e| {
            (
                e.type_.clone().unwrap_or_default(),
                e.reason.clone().unwrap_or_default(),
                e.note.clone().unwrap_or_default(),
            )
        })
        .collect()
}
