//! The I/O of `spec.monitoring`: what is observed (the prometheus-operator CRDs through API
//! discovery, KubeVirt's NetworkPolicies, our objects) and the writes (server-side apply of
//! each planned object whose content hash differs from the live one, deletion of ours that
//! are no longer planned). The decisions are in `crate::plan::monitoring`.
//!
//! The CRDs are looked up on every reconcile, so CRDs installed after the operator started
//! are picked up at the next one (at the latest the periodic resync); while a policy that
//! sets `spec.monitoring` asks for objects whose CRD is missing, the reconcile is requeued
//! after `Settings::wait`. A missing CRD is not an error: the policy's
//! status says what is not created and why.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};

use super::apply::ApplyError;
use super::context::Context;
use super::metrics::WriteTarget;
use super::reconcile::ReconcileError;
use crate::api::{FIELD_MANAGER, MetricsSidecarPolicy, MonitoringStatus};
use crate::plan::Plan;
use crate::plan::monitoring::{
    self, DesiredObject, MANAGED_BY_LABEL, MonitoringFacts, ObjectKind, ServedCrds,
};

/// The result of converging the monitoring objects.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub status: MonitoringStatus,
    /// Something asked for waits for a CRD: look again soon.
    pub waiting_for_crds: bool,
    pub wrote: bool,
}

fn write(source: kube::Error) -> ReconcileError {
    ReconcileError::Apply(ApplyError::kube(WriteTarget::Monitoring, source))
}

/// Which prometheus-operator kinds are served now. A missing group is not an error.
pub async fn served_crds(ctx: &Context) -> Result<ServedCrds, kube::Error> {
    match ctx
        .client
        .list_api_group_resources("monitoring.coreos.com/v1")
        .await
    {
        Ok(list) => {
            let served = |plural: &str| list.resources.iter().any(|r| r.name == plural);
            Ok(ServedCrds {
                pod_monitor: served("podmonitors"),
                service_monitor: served("servicemonitors"),
                prometheus_rule: served("prometheusrules"),
            })
        }
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(ServedCrds::default()),
        Err(err) => Err(err),
    }
}

fn api_for(ctx: &Context, namespace: &str, kind: ObjectKind) -> Api<DynamicObject> {
    let (group, version, plural) = kind.gvr();
    let resource = ApiResource {
        group: group.to_owned(),
        version: version.to_owned(),
        api_version: kind.api_version(),
        kind: kind.kind().to_owned(),
        plural: plural.to_owned(),
    };
    Api::namespaced_with(ctx.client.clone(), namespace, &resource)
}

/// Our objects of `kind` in `namespace` that belong to `policy`.
async fn owned(
    ctx: &Context,
    namespace: &str,
    kind: ObjectKind,
    policy: &MetricsSidecarPolicy,
) -> Result<Vec<DynamicObject>, kube::Error> {
    let selector = format!("{MANAGED_BY_LABEL}={FIELD_MANAGER}");
    let list = api_for(ctx, namespace, kind)
        .list(&ListParams::default().labels(&selector))
        .await?;
    Ok(list
        .items
        .into_iter()
        .filter(|o| monitoring::owned_by(o.owner_references(), policy))
        .collect())
}

async fn kubevirt_network_policies(ctx: &Context, namespace: &str) -> Result<bool, kube::Error> {
    let list = Api::<NetworkPolicy>::namespaced(ctx.client.clone(), namespace)
        .list(&ListParams::default())
        .await?;
    Ok(list
        .items
        .iter()
        .any(|np| monitoring::is_kubevirt_network_policy(&np.name_any(), np.labels())))
}

/// Observes, plans and writes the monitoring objects of `policy` for `plan` (`kubevirt_version`:
/// the target's `status.observedKubeVirtVersion`). Its reads come after the CR writes of
/// the same reconcile (the order the mock API tests fix), and the objects are compared with
/// the live ones right before they are written, so this step observes for itself.
pub async fn converge(
    ctx: &Context,
    policy: &MetricsSidecarPolicy,
    kubevirt_version: Option<&str>,
    plan: &Plan,
) -> Result<Outcome, ReconcileError> {
    let namespace = plan.namespace.as_str();
    let crds = served_crds(ctx).await.map_err(ReconcileError::read(
        "API discovery of monitoring.coreos.com/v1",
    ))?;
    let facts = MonitoringFacts {
        crds,
        kubevirt_network_policies: kubevirt_network_policies(ctx, namespace)
            .await
            .map_err(ReconcileError::read("NetworkPolicies"))?,
        kubevirt_version: kubevirt_version.map(str::to_owned),
    };
    let planned = monitoring::plan(policy, plan, &facts)?;
    let mut wrote = false;
    // Nothing wanted and nothing made before (per status): no request to look for stale
    // objects. Policy deletion (`remove_all`) always looks.
    let made_before = policy
        .status
        .as_ref()
        .and_then(|s| s.monitoring.as_ref())
        .is_some_and(|m| !m.objects.is_empty());
    let kinds = if planned.objects.is_empty() && !made_before {
        Vec::new()
    } else {
        planned.managed_kinds.clone()
    };
    for kind in &kinds {
        let desired: Vec<&DesiredObject> =
            planned.objects.iter().filter(|o| o.kind == *kind).collect();
        wrote |= sync_kind(ctx, namespace, *kind, policy, &desired).await?;
    }
    // A policy that sets spec.monitoring asked for these objects: look again soon. One
    // that relies on the defaults is looked at again at the periodic resync, so a cluster
    // without the Prometheus Operator is not polled every `wait`.
    let asks_for_missing_crd = policy.spec.monitoring.is_some()
        && planned
            .notes
            .iter()
            .any(|n| n.contains("prometheus-operator CRDs"));
    Ok(Outcome {
        status: MonitoringStatus {
            objects: planned.objects.iter().map(DesiredObject::display).collect(),
            notes: planned.notes,
            backports: planned.backports,
        },
        waiting_for_crds: asks_for_missing_crd,
        wrote,
    })
}

/// Applies `desired` (all of `kind`) and deletes this policy's other objects of `kind`.
async fn sync_kind(
    ctx: &Context,
    namespace: &str,
    kind: ObjectKind,
    policy: &MetricsSidecarPolicy,
    desired: &[&DesiredObject],
) -> Result<bool, ReconcileError> {
    let live = owned(ctx, namespace, kind, policy)
        .await
        .map_err(ReconcileError::read("monitoring objects"))?;
    let live_hash: BTreeMap<String, Option<String>> = live
        .iter()
        .map(|o| {
            let hash = o.annotations().get(monitoring::HASH_ANNOTATION).cloned();
            (o.name_any(), hash)
        })
        .collect();
    let api = api_for(ctx, namespace, kind);
    let mut wrote = false;
    for object in desired {
        let current = live_hash.get(&object.name).cloned().flatten();
        if current.as_deref() == object.hash() {
            continue;
        }
        api.patch(
            &object.name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&object.body),
        )
        .await
        .map_err(write)?;
        ctx.metrics.write_done(WriteTarget::Monitoring);
        tracing::info!(kind = kind.kind(), name = %object.name, namespace, "applied monitoring object");
        wrote = true;
    }
    for name in live_hash.keys() {
        if desired.iter().any(|o| &o.name == name) {
            continue;
        }
        delete(ctx, &api, kind, name).await?;
        wrote = true;
    }
    Ok(wrote)
}

async fn delete(
    ctx: &Context,
    api: &Api<DynamicObject>,
    kind: ObjectKind,
    name: &str,
) -> Result<(), ReconcileError> {
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => {
            ctx.metrics.write_done(WriteTarget::Monitoring);
            tracing::info!(kind = kind.kind(), name, "deleted monitoring object");
            Ok(())
        }
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(err) => Err(write(err)),
    }
}

/// Deletes every monitoring object of `policy` (policy deletion). Kinds whose CRD is not
/// served have no objects. Returns the `Kind/name`s deleted.
pub async fn remove_all(
    ctx: &Context,
    policy: &MetricsSidecarPolicy,
    namespace: &str,
) -> Result<Vec<String>, ReconcileError> {
    let crds = served_crds(ctx).await.map_err(ReconcileError::read(
        "API discovery of monitoring.coreos.com/v1",
    ))?;
    let mut removed = Vec::new();
    for kind in ObjectKind::ALL.into_iter().filter(|k| crds.serves(*k)) {
        let live = owned(ctx, namespace, kind, policy)
            .await
            .map_err(ReconcileError::read("monitoring objects"))?;
        let api = api_for(ctx, namespace, kind);
        for object in live {
            let name = object.name_any();
            delete(ctx, &api, kind, &name).await?;
            removed.push(format!("{}/{name}", kind.kind()));
        }
    }
    Ok(removed)
}
