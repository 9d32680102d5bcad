//! The writes: our entries into the KubeVirt CR's atomic `patches` list (or the
//! HyperConverged annotation), with optimistic concurrency, and the server-side apply of the
//! virt-operator Deployment. Nothing is sent when nothing would change.
//!
//! Optimistic concurrency: the merge patch carries `metadata.resourceVersion` of the copy
//! the change was computed from, so the API server refuses it with 409 Conflict if someone
//! (a user, a GitOps sync, HCO) wrote the object in between. Then the object is read again
//! and the change recomputed from the fresh copy, so their write survives.

use std::fmt::Debug;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::context::Context;
use super::metrics::WriteTarget;
use crate::api::{Component, HyperConverged, KUBEVIRT_JSONPATCH_ANNOTATION, KubeVirt};
use crate::plan::{self, MARKER_ANNOTATION, Plan, PlanError};

/// Errors of the write step.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("writing {target}: {source}")]
    Kube {
        target: &'static str,
        source: kube::Error,
    },
    #[error("{target} changed under us {attempts} times in a row (409 Conflict); will retry")]
    Conflicts { target: &'static str, attempts: u32 },
    #[error(transparent)]
    Plan(#[from] PlanError),
}

impl ApplyError {
    pub(crate) fn kube(target: WriteTarget, source: kube::Error) -> Self {
        ApplyError::Kube {
            target: target.label(),
            source,
        }
    }
}

/// The result of an optimistic write: the latest copy (None: the object is gone) and
/// whether a write happened.
#[derive(Debug, Clone)]
pub struct Written<K> {
    pub object: Option<K>,
    pub wrote: bool,
}

fn patch_params() -> PatchParams {
    PatchParams {
        field_manager: Some(super::FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    }
}

/// Read-compute-write with `resourceVersion`, re-reading on 409. `body_for` returns the
/// merge patch for a copy of the object (it must carry the copy's resourceVersion), or
/// `None` when the copy is already as wanted.
pub async fn optimistic<K>(
    ctx: &Context,
    api: &Api<K>,
    current: K,
    target: WriteTarget,
    mut body_for: impl FnMut(&K) -> Result<Option<Value>, ApplyError>,
) -> Result<Written<K>, ApplyError>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let name = current.name_any();
    let mut current = current;
    for attempt in 1..=ctx.settings.write_attempts.max(1) {
        let Some(body) = body_for(&current)? else {
            return Ok(Written {
                object: Some(current),
                wrote: false,
            });
        };
        match api
            .patch(&name, &patch_params(), &Patch::Merge(&body))
            .await
        {
            Ok(updated) => {
                ctx.metrics.write_done(target);
                tracing::info!(target = target.label(), object = %name, "wrote");
                return Ok(Written {
                    object: Some(updated),
                    wrote: true,
                });
            }
            Err(kube::Error::Api(status)) if status.is_conflict() => {
                ctx.metrics.write_conflicted(target);
                tracing::info!(target = target.label(), object = %name, attempt,
                    "409 Conflict: the object changed since it was read; reading it again");
                match api
                    .get_opt(&name)
                    .await
                    .map_err(|e| ApplyError::kube(target, e))?
                {
                    Some(fresh) => current = fresh,
                    None => {
                        return Ok(Written {
                            object: None,
                            wrote: false,
                        });
                    }
                }
            }
            Err(err) => return Err(ApplyError::kube(target, err)),
        }
    }
    Err(ApplyError::Conflicts {
        target: target.label(),
        attempts: ctx.settings.write_attempts,
    })
}

/// Our entries merged into the KubeVirt CR (empty plan: ours removed).
pub async fn kubevirt(
    ctx: &Context,
    kv: &KubeVirt,
    plan: &Plan,
) -> Result<Written<KubeVirt>, ApplyError> {
    let api = Api::<KubeVirt>::namespaced(ctx.client.clone(), &kv.namespace().unwrap_or_default());
    optimistic(ctx, &api, kv.clone(), WriteTarget::KubeVirt, |current| {
        let change = plan::kubevirt_change(current, plan);
        Ok(change.changed.then(|| {
            plan::kubevirt_merge_patch(&change.patches, current.resource_version().as_deref())
        }))
    })
    .await
}

/// The entries of policy `owner` taken out of the KubeVirt CR.
pub async fn kubevirt_cleanup(
    ctx: &Context,
    kv: &KubeVirt,
    owner: &str,
) -> Result<Written<KubeVirt>, ApplyError> {
    let api = Api::<KubeVirt>::namespaced(ctx.client.clone(), &kv.namespace().unwrap_or_default());
    optimistic(ctx, &api, kv.clone(), WriteTarget::KubeVirt, |current| {
        let change = plan::kubevirt_cleanup(current, owner);
        Ok(change.changed.then(|| {
            plan::kubevirt_merge_patch(&change.patches, current.resource_version().as_deref())
        }))
    })
    .await
}

/// The annotation of `hco` with our operations for `entries` (empty: ours removed).
pub async fn hyperconverged(
    ctx: &Context,
    hco: &HyperConverged,
    owner: &str,
    entries: &[Value],
) -> Result<Written<HyperConverged>, ApplyError> {
    let api =
        Api::<HyperConverged>::namespaced(ctx.client.clone(), &hco.namespace().unwrap_or_default());
    optimistic(
        ctx,
        &api,
        hco.clone(),
        WriteTarget::HyperConverged,
        |current| {
            let existing = current
                .annotations()
                .get(KUBEVIRT_JSONPATCH_ANNOTATION)
                .map(String::as_str);
            let change = plan::hco_annotation(existing, owner, entries)?;
            Ok(change.changed.then(|| {
                json!({
                    "metadata": {
                        "resourceVersion": current.resource_version(),
                        "annotations": {KUBEVIRT_JSONPATCH_ANNOTATION: change.annotation},
                    },
                })
            }))
        },
    )
    .await
}

/// Whether every field of `want` is in `have` with the same value. Objects may have more
/// keys in `have` (API server defaults); arrays must match element by element.
pub fn json_subset(want: &Value, have: &Value) -> bool {
    match (want, have) {
        (Value::Object(w), Value::Object(h)) => w
            .iter()
            .all(|(k, v)| h.get(k).is_some_and(|hv| json_subset(v, hv))),
        (Value::Array(w), Value::Array(h)) => {
            w.len() == h.len() && w.iter().zip(h).all(|(a, b)| json_subset(a, b))
        }
        _ => want == have,
    }
}

fn live_container<'a>(deployment: &'a Value, name: &str) -> Option<&'a Value> {
    deployment
        .pointer("/spec/template/spec/containers")?
        .as_array()?
        .iter()
        .find(|c| c.get("name").and_then(Value::as_str) == Some(name))
}

fn marker_of(deployment: &Value) -> Option<&str> {
    deployment
        .pointer("/spec/template/metadata/annotations")?
        .get(MARKER_ANNOTATION)?
        .as_str()
}

/// Server-side apply of our sidecar into virt-operator's Deployment, unless the live
/// Deployment already has it (same container fields, our marker). `Ok(false)`: no write.
pub async fn virt_operator(
    ctx: &Context,
    live: &Deployment,
    body: &Value,
) -> Result<bool, ApplyError> {
    let live_json = serde_json::to_value(live).map_err(PlanError::Serialize)?;
    let want_marker = body
        .pointer("/spec/template/metadata/annotations")
        .and_then(|a| a.get(MARKER_ANNOTATION));
    let mut in_place = marker_of(&live_json)
        .map(|m| Value::String(m.to_owned()))
        .as_ref()
        == want_marker;
    if let Some(containers) = body
        .pointer("/spec/template/spec/containers")
        .and_then(Value::as_array)
    {
        for want in containers {
            let name = want.get("name").and_then(Value::as_str).unwrap_or_default();
            in_place &=
                live_container(&live_json, name).is_some_and(|have| json_subset(want, have));
        }
    }
    if in_place {
        return Ok(false);
    }
    ssa_deployment(ctx, live, body).await?;
    Ok(true)
}

/// Takes the sidecar of policy `owner` (our marker says whose it is) out of virt-operator's
/// Deployment. All policies share one field manager, so the marker decides: a policy never
/// removes another policy's sidecar.
pub async fn virt_operator_cleanup(
    ctx: &Context,
    live: &Deployment,
    owner: &str,
) -> Result<bool, ApplyError> {
    let live_json = serde_json::to_value(live).map_err(PlanError::Serialize)?;
    if marker_of(&live_json) != Some(owner) {
        return Ok(false);
    }
    let body = plan::virt_operator::removal_body(&live.namespace().unwrap_or_default());
    ssa_deployment(ctx, live, &body).await?;
    Ok(true)
}

async fn ssa_deployment(ctx: &Context, live: &Deployment, body: &Value) -> Result<(), ApplyError> {
    let api =
        Api::<Deployment>::namespaced(ctx.client.clone(), &live.namespace().unwrap_or_default());
    api.patch(
        Component::VirtOperator.workload_name(),
        &PatchParams::apply(super::FIELD_MANAGER).force(),
        &Patch::Apply(body),
    )
    .await
    .map_err(|e| ApplyError::kube(WriteTarget::Deployment, e))?;
    ctx.metrics.write_done(WriteTarget::Deployment);
    tracing::info!(
        target = "deployment",
        object = Component::VirtOperator.workload_name(),
        "applied"
    );
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::json_subset;
    use serde_json::json;

    #[test]
    fn subset_tolerates_server_defaults_but_not_changes() {
        let want = json!({"name": "s", "args": ["--a"], "ports": [{"containerPort": 9443}]});
        let have = json!({"name": "s", "args": ["--a"], "ports": [{"containerPort": 9443, "protocol": "TCP"}], "terminationMessagePath": "/dev/termination-log"});
        assert!(json_subset(&want, &have));
        assert!(!json_subset(&json!({"args": ["--a", "--b"]}), &have));
        assert!(!json_subset(&json!({"name": "t"}), &have));
        assert!(!json_subset(&json!({"image": "x"}), &have));
    }
}
