//! Which VMIs run on this node, from a watch on the Kubernetes API.
//!
//! virt-handler's metrics use an informer on VMIs labelled `kubevirt.io/nodeName=<node>`;
//! we keep the same watch (a kube-rs reflector) with a VMI type that holds only the fields
//! a collector needs, so the cache stays small on nodes with many VMIs. Everything that
//! needs VMIs goes through [`VmiLister`], so tests hand in a fixed list instead of an API
//! server.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use futures::StreamExt;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde::Deserialize;

use crate::core::collect::{Problem, Trigger};
use crate::handler::stats::VmiIdentity;

/// The label KubeVirt puts on a VMI with the node it runs on.
pub const NODE_NAME_LABEL: &str = "kubevirt.io/nodeName";

/// A `kubevirt.io/v1` VirtualMachineInstance, reduced to what metrics need.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Vmi {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub status: VmiStatus,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VmiStatus {
    #[serde(default)]
    pub phase: Option<String>,
    #[serde(default)]
    pub node_name: Option<String>,
    /// Pod UID → node name of every pod that currently belongs to the VMI.
    #[serde(default, deserialize_with = "null_as_default")]
    pub active_pods: BTreeMap<String, String>,
    #[serde(default)]
    pub migration_state: Option<MigrationState>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MigrationState {
    #[serde(default)]
    pub start_timestamp: Option<String>,
    #[serde(default)]
    pub completed: bool,
    #[serde(default)]
    pub failed: bool,
}

fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

impl kube::Resource for Vmi {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> std::borrow::Cow<'_, str> {
        "VirtualMachineInstance".into()
    }
    fn group(_: &()) -> std::borrow::Cow<'_, str> {
        "kubevirt.io".into()
    }
    fn version(_: &()) -> std::borrow::Cow<'_, str> {
        "v1".into()
    }
    fn plural(_: &()) -> std::borrow::Cow<'_, str> {
        "virtualmachineinstances".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl Vmi {
    pub fn namespace(&self) -> &str {
        self.metadata.namespace.as_deref().unwrap_or_default()
    }

    pub fn name(&self) -> &str {
        self.metadata.name.as_deref().unwrap_or_default()
    }

    /// `namespace/name`, for logs and problems.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace(), self.name())
    }

    pub fn phase(&self) -> &str {
        self.status.phase.as_deref().unwrap_or_default()
    }

    pub fn is_running(&self) -> bool {
        self.phase() == "Running"
    }

    /// KubeVirt asks for a dirty rate only for running VMIs that are not migrating: the
    /// calculation needs a running guest and would collide with a migration, which reports
    /// its own dirty rate. A migration is active once it has a start time and has neither
    /// completed nor failed.
    pub fn dirty_rate_eligible(&self) -> bool {
        let migrating = self
            .status
            .migration_state
            .as_ref()
            .is_some_and(|m| m.start_timestamp.is_some() && !m.completed && !m.failed);
        self.is_running() && !migrating
    }

    /// (pod UID, node) of the VMI's active pods.
    pub fn active_pods(&self) -> impl Iterator<Item = (&str, &str)> {
        self.status
            .active_pods
            .iter()
            .map(|(uid, node)| (uid.as_str(), node.as_str()))
    }

    /// The identity labels of this VMI's series; `node` is `status.nodeName`, or
    /// `fallback_node` while the status has none.
    pub fn identity(&self, fallback_node: &str) -> VmiIdentity {
        VmiIdentity {
            namespace: self.namespace().to_owned(),
            name: self.name().to_owned(),
            node: self
                .status
                .node_name
                .clone()
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| fallback_node.to_owned()),
            labels: self.metadata.labels.clone().unwrap_or_default(),
        }
    }
}

/// The VMIs of this node at one moment, plus whatever is wrong with knowing them.
#[derive(Debug, Default)]
pub struct VmiSnapshot {
    pub vmis: Vec<Arc<Vmi>>,
    pub problems: Vec<Problem>,
}

/// Where the launcher source learns which VMIs to ask.
pub trait VmiLister: Send + Sync + 'static {
    fn snapshot(&self) -> VmiSnapshot;

    /// Fired when the list has just become known or a VMI has started running: there is
    /// something to collect before the next interval tick.
    fn trigger(&self) -> Option<Trigger> {
        None
    }
}

/// A list set by hand: for tests, and for callers that discover VMIs some other way.
#[derive(Debug, Default)]
pub struct StaticVmis {
    vmis: Mutex<Vec<Arc<Vmi>>>,
}

impl StaticVmis {
    pub fn new(vmis: Vec<Vmi>) -> Self {
        let lister = Self::default();
        lister.set(vmis);
        lister
    }

    pub fn set(&self, vmis: Vec<Vmi>) {
        let vmis = vmis.into_iter().map(Arc::new).collect();
        *self.vmis.lock().unwrap_or_else(PoisonError::into_inner) = vmis;
    }
}

impl VmiLister for StaticVmis {
    fn snapshot(&self) -> VmiSnapshot {
        VmiSnapshot {
            vmis: self
                .vmis
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            problems: Vec::new(),
        }
    }
}

/// The node's VMIs kept current by a watch; the watch retries with backoff forever and
/// is stopped when this is dropped.
pub struct WatchedVmis {
    store: Store<Vmi>,
    synced: Arc<AtomicBool>,
    last_error: Arc<Mutex<Option<String>>>,
    trigger: Trigger,
    task: tokio::task::JoinHandle<()>,
}

impl WatchedVmis {
    /// Starts watching the VMIs labelled with `node_name`. Must be called inside a tokio
    /// runtime.
    pub fn start(client: kube::Client, node_name: &str) -> Self {
        let api: kube::Api<Vmi> = kube::Api::all(client);
        let config = watcher::Config::default().labels(&format!("{NODE_NAME_LABEL}={node_name}"));
        let (store, writer) = reflector::store();
        let synced = Arc::new(AtomicBool::new(false));
        let last_error = Arc::new(Mutex::new(None));
        let events = reflector::reflector(writer, watcher(api, config)).default_backoff();
        let trigger = Trigger::new();
        let task = tokio::spawn(follow(
            events,
            Arc::clone(&synced),
            Arc::clone(&last_error),
            trigger.clone(),
        ));
        Self {
            store,
            synced,
            last_error,
            trigger,
            task,
        }
    }
}

async fn follow(
    events: impl futures::Stream<Item = Result<watcher::Event<Vmi>, watcher::Error>>,
    synced: Arc<AtomicBool>,
    last_error: Arc<Mutex<Option<String>>>,
    trigger: Trigger,
) {
    let mut events = std::pin::pin!(events);
    let mut running = RunningVmis::default();
    while let Some(event) = events.next().await {
        if running.observe(&event) {
            trigger.fire();
        }
        match event {
            Ok(watcher::Event::InitDone) => {
                if !synced.swap(true, Ordering::Relaxed) {
                    tracing::info!("VMI watch synced");
                }
            }
            Ok(_) => {}
            Err(err) => {
                let message = err.to_string();
                let mut slot = last_error.lock().unwrap_or_else(PoisonError::into_inner);
                // Log once per distinct failure; the watch keeps retrying with backoff.
                if slot.as_deref() != Some(message.as_str()) {
                    tracing::warn!(error = %message, "VMI watch failed; retrying");
                }
                *slot = Some(message);
            }
        }
    }
}

/// Which VMIs run, as far as the watch has told; says when a collection is worth running
/// ahead of the interval: at every (re)sync and when a VMI starts running (the moment its
/// launcher has statistics to give).
#[derive(Debug, Default)]
struct RunningVmis {
    running: HashSet<String>,
    /// Filled between `Init` and `InitDone` of a (re)list.
    relisting: HashSet<String>,
}

impl RunningVmis {
    /// Whether `event` makes a collection worthwhile now.
    fn observe<E>(&mut self, event: &Result<watcher::Event<Vmi>, E>) -> bool {
        let Ok(event) = event else {
            return false;
        };
        match event {
            watcher::Event::Apply(vmi) => {
                if vmi.is_running() {
                    self.running.insert(vmi.key())
                } else {
                    self.running.remove(&vmi.key());
                    false
                }
            }
            watcher::Event::Delete(vmi) => {
                self.running.remove(&vmi.key());
                false
            }
            watcher::Event::Init => {
                self.relisting.clear();
                false
            }
            watcher::Event::InitApply(vmi) => {
                if vmi.is_running() {
                    self.relisting.insert(vmi.key());
                }
                false
            }
            watcher::Event::InitDone => {
                self.running = std::mem::take(&mut self.relisting);
                true
            }
        }
    }
}

impl VmiLister for WatchedVmis {
    fn trigger(&self) -> Option<Trigger> {
        Some(self.trigger.clone())
    }

    fn snapshot(&self) -> VmiSnapshot {
        let mut problems = Vec::new();
        if let Some(message) = self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            problems.push(Problem {
                source: "kubernetes",
                kind: "watch",
                target: "virtualmachineinstances".to_owned(),
                message,
            });
        }
        if !self.synced.load(Ordering::Relaxed) {
            problems.push(Problem {
                source: "kubernetes",
                kind: "not_synced",
                target: "virtualmachineinstances".to_owned(),
                message: "the VMI list has not been received yet".to_owned(),
            });
        }
        VmiSnapshot {
            vmis: self.store.state(),
            problems,
        }
    }
}

impl Drop for WatchedVmis {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn vmi(json: serde_json::Value) -> Vmi {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn reads_the_fields_we_need_and_ignores_the_rest() {
        let v = vmi(serde_json::json!({
            "apiVersion": "kubevirt.io/v1",
            "kind": "VirtualMachineInstance",
            "metadata": {"name": "a", "namespace": "ns", "uid": "u",
                         "labels": {"kubevirt.io/nodeName": "n1", "app": "db"}},
            "spec": {"domain": {"devices": {}}},
            "status": {"phase": "Running", "nodeName": "n1",
                       "activePods": {"pod-uid": "n1"},
                       "migrationState": null, "guestOSInfo": {"id": "fedora"}}
        }));
        assert!(v.is_running());
        assert!(v.dirty_rate_eligible());
        assert_eq!(v.active_pods().collect::<Vec<_>>(), [("pod-uid", "n1")]);
        let id = v.identity("fallback");
        assert_eq!(
            (id.namespace.as_str(), id.name.as_str(), id.node.as_str()),
            ("ns", "a", "n1")
        );
        assert_eq!(id.labels.get("app").map(String::as_str), Some("db"));
    }

    #[test]
    fn collects_early_at_every_sync_and_when_a_vmi_starts_running() {
        let with_phase = |name: &str, phase: &str| {
            vmi(
                serde_json::json!({"metadata": {"name": name, "namespace": "ns"},
                                   "status": {"phase": phase}}),
            )
        };
        let mut running = RunningVmis::default();
        let mut observe =
            |event: watcher::Event<Vmi>| running.observe(&Ok::<_, watcher::Error>(event));
        assert!(!observe(watcher::Event::Init));
        assert!(!observe(watcher::Event::InitApply(with_phase(
            "a", "Running"
        ))));
        assert!(observe(watcher::Event::InitDone), "synced");
        assert!(!observe(watcher::Event::Apply(with_phase("a", "Running"))));
        assert!(!observe(watcher::Event::Apply(with_phase(
            "b",
            "Scheduling"
        ))));
        assert!(observe(watcher::Event::Apply(with_phase("b", "Running"))));
        assert!(!observe(watcher::Event::Apply(with_phase("b", "Running"))));
        assert!(!observe(watcher::Event::Delete(with_phase("b", "Running"))));
        assert!(observe(watcher::Event::Apply(with_phase("b", "Running"))));
    }

    #[test]
    fn active_migration_is_not_dirty_rate_eligible() {
        let migrating = |completed: bool| {
            vmi(serde_json::json!({
                "metadata": {"name": "a"},
                "status": {"phase": "Running", "activePods": null,
                           "migrationState": {"startTimestamp": "2026-01-01T00:00:00Z",
                                              "completed": completed}}
            }))
        };
        assert!(!migrating(false).dirty_rate_eligible());
        assert!(migrating(true).dirty_rate_eligible());
        let scheduled = vmi(serde_json::json!({"metadata": {}, "status": {"phase": "Scheduled"}}));
        assert!(!scheduled.dirty_rate_eligible());
        assert_eq!(scheduled.identity("n9").node, "n9");
    }
}
