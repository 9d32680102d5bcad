//! Which VMIs run on this node, from a watch on the Kubernetes API.
//!
//! virt-handler's metrics use an informer on VMIs labelled `kubevirt.io/nodeName=<node>`;
//! we keep the same watch, decoded into the collectors' one slim VMI type
//! ([`VirtualMachineInstance`], slimmed further with
//! [`VirtualMachineInstance::slim_for_discovery`]) the way virt-controller-metrics decodes its
//! watches, so the cache stays small on nodes with many VMIs and a VMI that does not decode
//! is skipped and reported instead of stalling the watch. Everything that needs VMIs goes
//! through [`VmiLister`], so tests hand in a fixed list instead of an API server.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use futures::StreamExt;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::{WatchStreamExt, watcher};

use crate::core::collect::{Problem, Trigger};
use crate::handler::stats::VmiIdentity;
use crate::k8s::objects::{self, VirtualMachineInstance};

/// The label KubeVirt puts on a VMI with the node it runs on.
pub const NODE_NAME_LABEL: &str = "kubevirt.io/nodeName";

/// What the launcher source asks of a VMI, on the collectors' one VMI type.
impl VirtualMachineInstance {
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
        let node = &self.status.node_name;
        VmiIdentity {
            namespace: self.metadata.namespace.clone(),
            name: self.metadata.name.clone(),
            node: if node.is_empty() { fallback_node } else { node }.to_owned(),
            labels: self
                .metadata
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            ..Default::default()
        }
    }
}

/// The VMIs of this node at one moment, plus whatever is wrong with knowing them.
#[derive(Debug, Default)]
pub struct VmiSnapshot {
    pub vmis: Vec<Arc<VirtualMachineInstance>>,
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
    vmis: Mutex<Vec<Arc<VirtualMachineInstance>>>,
}

impl StaticVmis {
    pub fn new(vmis: Vec<VirtualMachineInstance>) -> Self {
        let lister = Self::default();
        lister.set(vmis);
        lister
    }

    pub fn set(&self, vmis: Vec<VirtualMachineInstance>) {
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
    state: Arc<Mutex<WatchState>>,
    synced: Arc<AtomicBool>,
    last_error: Arc<Mutex<Option<String>>>,
    trigger: Trigger,
    task: tokio::task::JoinHandle<()>,
}

/// The VMIs by key, a relist being gathered, and the objects that did not decode.
#[derive(Default)]
struct WatchState {
    vmis: HashMap<String, Arc<VirtualMachineInstance>>,
    relist: Option<HashMap<String, Arc<VirtualMachineInstance>>>,
    undecodable: HashMap<String, Problem>,
}

impl WatchedVmis {
    /// Starts watching the VMIs labelled with `node_name`. Must be called inside a tokio
    /// runtime.
    pub fn start(client: kube::Client, node_name: &str) -> Self {
        let gvk = GroupVersionKind::gvk("kubevirt.io", "v1", "VirtualMachineInstance");
        let resource = ApiResource::from_gvk_with_plural(&gvk, "virtualmachineinstances");
        let api: kube::Api<DynamicObject> = kube::Api::all_with(client, &resource);
        let config = watcher::Config::default().labels(&format!("{NODE_NAME_LABEL}={node_name}"));
        let state = Arc::new(Mutex::new(WatchState::default()));
        let synced = Arc::new(AtomicBool::new(false));
        let last_error = Arc::new(Mutex::new(None));
        let events = watcher(api, config).default_backoff();
        let trigger = Trigger::new();
        let task = tokio::spawn(follow(
            events,
            Arc::clone(&state),
            Arc::clone(&synced),
            Arc::clone(&last_error),
            trigger.clone(),
        ));
        Self {
            state,
            synced,
            last_error,
            trigger,
            task,
        }
    }
}

async fn follow(
    events: impl futures::Stream<Item = Result<watcher::Event<DynamicObject>, watcher::Error>>,
    state: Arc<Mutex<WatchState>>,
    synced: Arc<AtomicBool>,
    last_error: Arc<Mutex<Option<String>>>,
    trigger: Trigger,
) {
    let mut events = std::pin::pin!(events);
    let mut running = RunningVmis::default();
    while let Some(event) = events.next().await {
        match event {
            Ok(event) => {
                let event = decode_event(event, &state);
                if running.observe(&event) {
                    trigger.fire();
                }
                if matches!(event, watcher::Event::InitDone)
                    && !synced.swap(true, Ordering::Relaxed)
                {
                    tracing::info!("VMI watch synced");
                }
                apply(event, &state);
            }
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

/// The event with its object decoded; an object that does not decode is recorded as a
/// problem and its event becomes `None` (the previous version, if any, is kept).
fn decode_event(
    event: watcher::Event<DynamicObject>,
    state: &Mutex<WatchState>,
) -> watcher::Event<Option<Arc<VirtualMachineInstance>>> {
    let decode = |object: DynamicObject| {
        let key = objects::object_key(
            object.metadata.namespace.as_deref().unwrap_or_default(),
            object.metadata.name.as_deref().unwrap_or_default(),
        );
        let decoded = objects::to_json(object).and_then(|value| {
            objects::decode::<VirtualMachineInstance>("VirtualMachineInstance", value)
        });
        let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
        match decoded {
            Ok(mut vmi) => {
                state.undecodable.remove(&key);
                vmi.slim_for_discovery();
                Some(Arc::new(vmi))
            }
            Err(error) => {
                state.undecodable.insert(
                    key.clone(),
                    Problem {
                        source: "kubernetes",
                        kind: "decode",
                        target: format!("VirtualMachineInstance {key}"),
                        message: error.to_string(),
                    },
                );
                None
            }
        }
    };
    match event {
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitDone => watcher::Event::InitDone,
        watcher::Event::InitApply(object) => watcher::Event::InitApply(decode(object)),
        watcher::Event::Apply(object) => watcher::Event::Apply(decode(object)),
        watcher::Event::Delete(object) => {
            let key = objects::object_key(
                object.metadata.namespace.as_deref().unwrap_or_default(),
                object.metadata.name.as_deref().unwrap_or_default(),
            );
            let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
            state.undecodable.remove(&key);
            watcher::Event::Delete(state.vmis.get(&key).cloned())
        }
    }
}

/// Keeps the store as the watch tells: a relist is gathered and swapped in at once.
fn apply(event: watcher::Event<Option<Arc<VirtualMachineInstance>>>, state: &Mutex<WatchState>) {
    let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
    match event {
        watcher::Event::Init => state.relist = Some(HashMap::new()),
        watcher::Event::InitApply(Some(vmi)) => {
            state
                .relist
                .get_or_insert_with(HashMap::new)
                .insert(vmi.key(), vmi);
        }
        watcher::Event::InitDone => {
            let fresh = state.relist.take().unwrap_or_default();
            state.vmis = fresh;
        }
        watcher::Event::Apply(Some(vmi)) => {
            state.vmis.insert(vmi.key(), vmi);
        }
        watcher::Event::Delete(Some(vmi)) => {
            state.vmis.remove(&vmi.key());
        }
        watcher::Event::InitApply(None)
        | watcher::Event::Apply(None)
        | watcher::Event::Delete(None) => {}
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
    fn observe(&mut self, event: &watcher::Event<Option<Arc<VirtualMachineInstance>>>) -> bool {
        match event {
            watcher::Event::Apply(Some(vmi)) => {
                if vmi.is_running() {
                    self.running.insert(vmi.key())
                } else {
                    self.running.remove(&vmi.key());
                    false
                }
            }
            watcher::Event::Delete(Some(vmi)) => {
                self.running.remove(&vmi.key());
                false
            }
            watcher::Event::Init => {
                self.relisting.clear();
                false
            }
            watcher::Event::InitApply(Some(vmi)) => {
                if vmi.is_running() {
                    self.relisting.insert(vmi.key());
                }
                false
            }
            watcher::Event::InitDone => {
                self.running = std::mem::take(&mut self.relisting);
                true
            }
            watcher::Event::InitApply(None)
            | watcher::Event::Apply(None)
            | watcher::Event::Delete(None) => false,
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
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        problems.extend(state.undecodable.values().cloned());
        VmiSnapshot {
            vmis: state.vmis.values().cloned().collect(),
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

    fn vmi(json: serde_json::Value) -> VirtualMachineInstance {
        let mut vmi: VirtualMachineInstance = serde_json::from_value(json).unwrap();
        vmi.slim_for_discovery();
        vmi
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
        let mut observe = |event: watcher::Event<VirtualMachineInstance>| {
            let wrap = |vmi| Some(Arc::new(vmi));
            running.observe(&match event {
                watcher::Event::Init => watcher::Event::Init,
                watcher::Event::InitDone => watcher::Event::InitDone,
                watcher::Event::InitApply(vmi) => watcher::Event::InitApply(wrap(vmi)),
                watcher::Event::Apply(vmi) => watcher::Event::Apply(wrap(vmi)),
                watcher::Event::Delete(vmi) => watcher::Event::Delete(wrap(vmi)),
            })
        };
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
