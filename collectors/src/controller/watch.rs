//! The watches behind virt-controller-metrics: one kube-rs watcher per object kind, feeding a
//! shared [`ClusterState`] with slimmed objects (the stores virt-controller's own informers
//! hold, minus everything the metrics never read).
//!
//! Faults never end a watch: an error (403 from RBAC, a missing CRD, a dropped connection) is
//! kept as the watch's current problem while the watcher retries with backoff, and whatever
//! the state held is still served. An object that does not decode is skipped (its previous
//! version, if any, is kept) and reported until it decodes or disappears.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use futures::StreamExt;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::controller::store::{ClusterState, ObjectKind, StateError};
use crate::core::collect::{Problem, Trigger};
use crate::k8s::objects::{VM_LABELS_CONFIG_MAP, object_key, to_json};
use crate::k8s::status_kind;

/// Where a kind is listed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// Every namespace (or cluster-scoped objects).
    Cluster,
    /// KubeVirt's namespace only.
    KubeVirtNamespace,
}

struct Resource {
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    scope: Scope,
    labels: Option<&'static str>,
    fields: Option<&'static str>,
}

const fn cluster(group: &'static str, version: &'static str, plural: &'static str) -> Resource {
    Resource {
        group,
        version,
        plural,
        scope: Scope::Cluster,
        labels: None,
        fields: None,
    }
}

/// The API resource each kind is watched through (KubeVirt v1.9.0 storage versions).
fn resource(kind: ObjectKind) -> Resource {
    match kind {
        ObjectKind::VirtualMachine => cluster("kubevirt.io", "v1", "virtualmachines"),
        ObjectKind::VirtualMachineInstance => {
            cluster("kubevirt.io", "v1", "virtualmachineinstances")
        }
        ObjectKind::VirtualMachineInstanceMigration => {
            cluster("kubevirt.io", "v1", "virtualmachineinstancemigrations")
        }
        ObjectKind::PersistentVolumeClaim => cluster("", "v1", "persistentvolumeclaims"),
        ObjectKind::VirtualMachineInstancetype => cluster(
            "instancetype.kubevirt.io",
            "v1beta1",
            "virtualmachineinstancetypes",
        ),
        ObjectKind::VirtualMachineClusterInstancetype => cluster(
            "instancetype.kubevirt.io",
            "v1beta1",
            "virtualmachineclusterinstancetypes",
        ),
        ObjectKind::VirtualMachinePreference => cluster(
            "instancetype.kubevirt.io",
            "v1beta1",
            "virtualmachinepreferences",
        ),
        ObjectKind::VirtualMachineClusterPreference => cluster(
            "instancetype.kubevirt.io",
            "v1beta1",
            "virtualmachineclusterpreferences",
        ),
        ObjectKind::ControllerRevision => cluster("apps", "v1", "controllerrevisions"),
        ObjectKind::Pod => Resource {
            labels: Some("kubevirt.io/created-by"),
            ..cluster("", "v1", "pods")
        },
        ObjectKind::VirtualMachineSnapshot => {
            cluster("snapshot.kubevirt.io", "v1beta1", "virtualmachinesnapshots")
        }
        ObjectKind::ConfigMap => Resource {
            scope: Scope::KubeVirtNamespace,
            fields: Some(LABELS_CONFIG_FIELD),
            ..cluster("", "v1", "configmaps")
        },
        ObjectKind::KubeVirt => Resource {
            scope: Scope::KubeVirtNamespace,
            ..cluster("kubevirt.io", "v1", "kubevirts")
        },
    }
}

/// Only ConfigMap `kubevirt-vm-labels-config` (kept in step with `VM_LABELS_CONFIG_MAP`).
const LABELS_CONFIG_FIELD: &str = "metadata.name=kubevirt-vm-labels-config";

/// What the watches hold, and how they are doing.
#[derive(Default)]
pub struct Shared {
    pub state: ClusterState,
    /// Kinds whose initial list has completed at least once.
    synced: BTreeMap<ObjectKind, bool>,
    /// The current error of each failing watch.
    failing: BTreeMap<ObjectKind, Problem>,
    /// Objects that did not decode, by kind and key.
    undecodable: BTreeMap<(ObjectKind, String), Problem>,
}

impl Shared {
    /// Every watch has either listed its objects once or reported why it cannot: from then
    /// on the families are worth serving (a forbidden or missing resource must not hold the
    /// others back).
    fn settled(&self) -> bool {
        ObjectKind::ALL
            .iter()
            .all(|k| self.synced.get(k).copied().unwrap_or(false) || self.failing.contains_key(k))
    }

    fn problems(&self) -> Vec<Problem> {
        self.failing
            .values()
            .chain(self.undecodable.values())
            .cloned()
            .collect()
    }
}

/// The running watches. Dropping it (or [`WatchSet::stop`]) ends them.
pub struct WatchSet {
    shared: Arc<RwLock<Shared>>,
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

fn read(shared: &RwLock<Shared>) -> RwLockReadGuard<'_, Shared> {
    shared
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write(shared: &RwLock<Shared>) -> RwLockWriteGuard<'_, Shared> {
    shared
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl WatchSet {
    /// Starts one watch per kind; `namespace` is KubeVirt's. `settled` is fired when the
    /// set becomes [settled](Self::settled), so the families can be published at once rather
    /// than at the next interval tick.
    pub fn start(client: &Client, namespace: &str, settled: Trigger) -> Self {
        let shared = Arc::new(RwLock::new(Shared::default()));
        let cancel = CancellationToken::new();
        let tasks = ObjectKind::ALL
            .iter()
            .map(|&kind| {
                let api = api_for(client, kind, namespace);
                let config = config_for(kind);
                tokio::spawn(run(
                    kind,
                    api,
                    config,
                    Arc::clone(&shared),
                    cancel.child_token(),
                    settled.clone(),
                ))
            })
            .collect();
        Self {
            shared,
            cancel,
            tasks,
        }
    }

    pub fn shared(&self) -> Arc<RwLock<Shared>> {
        Arc::clone(&self.shared)
    }

    pub fn settled(&self) -> bool {
        read(&self.shared).settled()
    }

    /// The watches' current problems: failing watches and undecodable objects.
    pub fn problems(&self) -> Vec<Problem> {
        read(&self.shared).problems()
    }

    /// Runs `f` on the current state (under a read lock: keep it short of I/O).
    pub fn with_state<R>(shared: &RwLock<Shared>, f: impl FnOnce(&ClusterState) -> R) -> R {
        f(&read(shared).state)
    }

    pub async fn stop(mut self) {
        self.cancel.cancel();
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
    }
}

impl Drop for WatchSet {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

fn api_for(client: &Client, kind: ObjectKind, namespace: &str) -> Api<DynamicObject> {
    let r = resource(kind);
    let gvk = GroupVersionKind::gvk(r.group, r.version, kind.as_str());
    let ar = ApiResource::from_gvk_with_plural(&gvk, r.plural);
    match r.scope {
        Scope::Cluster => Api::all_with(client.clone(), &ar),
        Scope::KubeVirtNamespace => Api::namespaced_with(client.clone(), namespace, &ar),
    }
}

fn config_for(kind: ObjectKind) -> watcher::Config {
    let r = resource(kind);
    let mut config = watcher::Config::default();
    if let Some(labels) = r.labels {
        config = config.labels(labels);
    }
    if let Some(fields) = r.fields {
        debug_assert!(fields.ends_with(VM_LABELS_CONFIG_MAP));
        config = config.fields(fields);
    }
    config
}

async fn run(
    kind: ObjectKind,
    api: Api<DynamicObject>,
    config: watcher::Config,
    shared: Arc<RwLock<Shared>>,
    cancel: CancellationToken,
    settled: Trigger,
) {
    let stream = watcher::watcher(api, config).default_backoff();
    futures::pin_mut!(stream);
    // A relist is collected here and swapped in at once when complete.
    let mut relist: Option<ClusterState> = None;
    loop {
        let item = tokio::select! {
            () = cancel.cancelled() => return,
            item = stream.next() => item,
        };
        let Some(item) = item else {
            return;
        };
        let was_settled = read(&shared).settled();
        match item {
            Ok(event) => apply_event(kind, event, &shared, &mut relist),
            Err(error) => record_error(kind, &error, &shared),
        }
        if !was_settled && read(&shared).settled() {
            settled.fire();
        }
    }
}

fn apply_event(
    kind: ObjectKind,
    event: Event<DynamicObject>,
    shared: &RwLock<Shared>,
    relist: &mut Option<ClusterState>,
) {
    let mut guard = write(shared);
    let shared = &mut *guard;
    if shared.failing.remove(&kind).is_some() {
        tracing::info!(kind = kind.as_str(), "watch recovered");
    }
    match event {
        Event::Init => {
            *relist = Some(ClusterState::default());
            shared.undecodable.retain(|(k, _), _| *k != kind);
        }
        Event::InitApply(object) => {
            let target = relist.get_or_insert_with(ClusterState::default);
            apply_object(kind, object, target, &mut shared.undecodable);
        }
        Event::InitDone => {
            let mut fresh = relist.take().unwrap_or_default();
            shared.state.replace_kind(kind, &mut fresh);
            if shared.synced.insert(kind, true) != Some(true) {
                tracing::info!(
                    kind = kind.as_str(),
                    objects = shared.state.count(kind),
                    "initial list complete"
                );
            }
        }
        Event::Apply(object) => {
            apply_object(kind, object, &mut shared.state, &mut shared.undecodable);
        }
        Event::Delete(object) => {
            let key = object_key(
                object.metadata.namespace.as_deref().unwrap_or_default(),
                object.metadata.name.as_deref().unwrap_or_default(),
            );
            shared.state.delete(kind, &key);
            shared.undecodable.remove(&(kind, key));
        }
    }
}

/// Decodes one object into `state`; on failure keeps whatever `state` had for it and notes
/// the problem.
fn apply_object(
    kind: ObjectKind,
    object: DynamicObject,
    state: &mut ClusterState,
    undecodable: &mut BTreeMap<(ObjectKind, String), Problem>,
) {
    let key = object_key(
        object.metadata.namespace.as_deref().unwrap_or_default(),
        object.metadata.name.as_deref().unwrap_or_default(),
    );
    let result = to_json(object)
        .map_err(StateError::from)
        .and_then(|value| state.apply(kind, value));
    match result {
        Ok(()) => {
            undecodable.remove(&(kind, key));
        }
        Err(error) => {
            undecodable.insert(
                (kind, key.clone()),
                Problem {
                    source: "kubernetes",
                    kind: "decode",
                    target: format!("{} {key}", kind.as_str()),
                    message: error.to_string(),
                },
            );
        }
    }
}

fn record_error(kind: ObjectKind, error: &watcher::Error, shared: &RwLock<Shared>) {
    let code = match error {
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status))
        | watcher::Error::WatchFailed(kube::Error::Api(status)) => Some(status.code),
        watcher::Error::WatchError(status) => Some(status.code),
        _ => None,
    };
    // 410 Gone: the resource version expired; the watcher relists on its own.
    if code == Some(410) {
        return;
    }
    let problem_kind = code.map_or("watch", status_kind);
    let r = resource(kind);
    let problem = Problem {
        source: "kubernetes",
        kind: problem_kind,
        target: if r.group.is_empty() {
            r.plural.to_owned()
        } else {
            format!("{}.{}", r.plural, r.group)
        },
        message: format!("watching {}: {error}", kind.as_str()),
    };
    write(shared).failing.insert(kind, problem);
}
