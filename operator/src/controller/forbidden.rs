//! A missing RBAC rule, told plainly. When the API server answers 403 Forbidden to any read
//! or write of a reconcile, the policy shows `Ready=False`/`Degraded=True` with reason
//! `Forbidden` and the server's own sentence (which names the user, verb, resource and
//! namespace), a Warning event says the same once, and the reconcile is retried with the
//! error backoff: the operator keeps running, so restoring the rule heals it without a
//! restart. Without this, a 403 on a read would only reach the operator's log.

use kube::core::Status;
use kube::runtime::finalizer;

use super::apply::ApplyError;
use super::context::Context;
use super::events::{self, Notice};
use super::reconcile::ReconcileError;
use super::status::{self, Report, State};
use crate::api::{MetricsSidecarPolicy, conditions};

/// Event reason (the condition reason is [`conditions::REASON_FORBIDDEN`]).
pub const EVENT_REASON: &str = "Forbidden";

/// What the reconcile was doing, and the server's 403 answer, when `err` is a 403.
pub fn find(err: &ReconcileError) -> Option<(String, &Status)> {
    match err {
        ReconcileError::Read { what, source } => {
            forbidden(source).map(|s| (format!("reading {what}"), s))
        }
        ReconcileError::Apply(ApplyError::Kube { target, source }) => {
            forbidden(source).map(|s| (writing(target), s))
        }
        ReconcileError::Status(source) => {
            forbidden(source).map(|s| ("writing the policy status".to_owned(), s))
        }
        ReconcileError::Finalizer(inner) => match inner.as_ref() {
            finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => find(e),
            finalizer::Error::AddFinalizer(source) => {
                forbidden(source).map(|s| ("adding the cleanup finalizer".to_owned(), s))
            }
            finalizer::Error::RemoveFinalizer(source) => {
                forbidden(source).map(|s| ("removing the cleanup finalizer".to_owned(), s))
            }
            _ => None,
        },
        _ => None,
    }
}

/// Whether a write error of the Apply branch is a 403 (reported by [`report`] instead).
pub fn is_forbidden_write(err: &ApplyError) -> bool {
    matches!(err, ApplyError::Kube { source, .. } if forbidden(source).is_some())
}

fn writing(target: &str) -> String {
    match target {
        "kubevirt" => "writing the KubeVirt CR".to_owned(),
        "hyperconverged" => "writing the HyperConverged CR".to_owned(),
        "deployment" => "applying the virt-operator Deployment".to_owned(),
        "monitoring" => "writing the monitoring objects (spec.monitoring)".to_owned(),
        other => format!("writing {other}"),
    }
}

fn forbidden(err: &kube::Error) -> Option<&Status> {
    match err {
        kube::Error::Api(status) if status.code == 403 => Some(status),
        _ => None,
    }
}

/// The sentence users see in the condition and the event.
pub fn message(doing: &str, status: &Status) -> String {
    format!(
        "403 Forbidden while {doing}: {}. The operator's ServiceAccount lacks this permission: \
         re-apply config/rbac (kubectl apply -k config/default) or add the rule to its \
         ClusterRole; the operator retries by itself",
        status.message.trim_end_matches('.')
    )
}

/// Reports a 403 in `err` on the policy (status and, on a change of reason, an event).
/// Returns whether `err` was a 403. Reporting is best effort: when even the status write is
/// forbidden, the event (and the log) are what is left.
pub async fn report(ctx: &Context, policy: &MetricsSidecarPolicy, err: &ReconcileError) -> bool {
    let Some((doing, status)) = find(err) else {
        return false;
    };
    let note = message(&doing, status);
    let previous = policy.status.clone().unwrap_or_default();
    let shown_reason = previous
        .conditions
        .iter()
        .find(|c| c.type_ == conditions::READY)
        .map(|c| c.reason.clone());
    // Keep what the last successful reconcile found; only the conditions change.
    let report = Report {
        state: State::Forbidden(note.clone()),
        kubevirt: previous.kubevirt.clone(),
        method: previous.injection_method,
        components: previous.components.clone(),
        // Rollbacks already recorded at this generation are kept by `status::desired`.
        rolled_back: Vec::new(),
        monitoring: None,
    };
    let desired = status::desired(policy, &report, &status::now());
    if !matches!(err, ReconcileError::Status(_))
        && let Err(write_err) = status::write(ctx, policy, &desired).await
    {
        tracing::warn!(error = %write_err, "cannot report the 403 in the policy status");
    }
    if shown_reason.as_deref() != Some(conditions::REASON_FORBIDDEN) {
        let notice = Notice::warning(EVENT_REASON, "Reconcile", note);
        events::publish(ctx, policy, &notice).await;
    }
    true
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn status(code: u16) -> kube::Error {
        kube::Error::Api(Box::new(Status {
            code,
            message: "daemonsets.apps is forbidden: User \"system:serviceaccount:kubevirt:kubevirt-metrics-operator\" cannot list resource \"daemonsets\" in API group \"apps\" in the namespace \"kubevirt\"".into(),
            reason: "Forbidden".into(),
            ..Status::default()
        }))
    }

    #[test]
    fn a_403_anywhere_in_the_chain_is_found_and_explained() {
        let read = ReconcileError::Read {
            what: "component workloads",
            source: status(403),
        };
        let (doing, found) = find(&read).unwrap();
        let text = message(&doing, found);
        assert!(text.starts_with("403 Forbidden while reading component workloads: daemonsets.apps is forbidden: User \"system:serviceaccount:kubevirt:kubevirt-metrics-operator\" cannot list"));
        assert!(text.contains("config/rbac"));
        let nested = ReconcileError::Finalizer(Box::new(finalizer::Error::ApplyFailed(
            ReconcileError::Apply(ApplyError::Kube {
                target: "kubevirt",
                source: status(403),
            }),
        )));
        assert_eq!(find(&nested).unwrap().0, "writing the KubeVirt CR");
        let conflict = ReconcileError::Read {
            what: "x",
            source: status(409),
        };
        assert!(find(&conflict).is_none());
    }
}
