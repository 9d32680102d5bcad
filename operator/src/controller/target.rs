//! Which KubeVirt CR a policy aims at, whether it may act on it, and how to write to it.
//! Pure: decided from listed objects, no I/O.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{Resource, ResourceExt};

use crate::api::hyperconverged::{HCO_GROUP, HCO_KIND};
use crate::api::{InjectionMethod, KubeVirt, MetricsSidecarPolicy, conditions};

/// Why a policy has no usable KubeVirt CR right now. Each maps to a condition reason a
/// user can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Waiting {
    /// `kubevirtRef` names a CR that does not exist, or the namespace has none.
    NotFound { name: Option<String> },
    /// No `kubevirtRef` and several KubeVirt CRs in the namespace.
    Ambiguous { names: Vec<String> },
    /// The KubeVirt CR has a deletionTimestamp, or its phase is Deleting or Deleted.
    Deleting { name: String },
}

impl Waiting {
    pub fn reason(&self) -> &'static str {
        match self {
            Waiting::NotFound { .. } => conditions::REASON_KUBEVIRT_NOT_FOUND,
            Waiting::Ambiguous { .. } => conditions::REASON_KUBEVIRT_AMBIGUOUS,
            Waiting::Deleting { .. } => conditions::REASON_KUBEVIRT_DELETING,
        }
    }

    /// A sentence that says what is wrong and what to do.
    pub fn message(&self, namespace: &str) -> String {
        match self {
            Waiting::NotFound { name: Some(name) } => format!(
                "KubeVirt CR {namespace}/{name} (spec.kubevirtRef) does not exist; create it or fix spec.kubevirtRef.name"
            ),
            Waiting::NotFound { name: None } => format!(
                "no KubeVirt CR in namespace {namespace}; create the policy in the namespace where KubeVirt is installed"
            ),
            Waiting::Ambiguous { names } => format!(
                "namespace {namespace} has {} KubeVirt CRs ({}); set spec.kubevirtRef.name to pick one",
                names.len(),
                names.join(", ")
            ),
            Waiting::Deleting { name } => {
                format!("KubeVirt CR {namespace}/{name} is being deleted; waiting for a new one")
            }
        }
    }

    /// A missing or ambiguous target needs the user; the others resolve by themselves.
    pub fn needs_user(&self) -> bool {
        matches!(self, Waiting::NotFound { .. } | Waiting::Ambiguous { .. })
    }
}

/// The KubeVirt CR `policy` refers to, among `kubevirts` (all CRs of its namespace), without
/// looking at its phase (arbitration and cleanup need the CR even when it is not deployed).
pub fn resolve<'a>(
    policy: &MetricsSidecarPolicy,
    kubevirts: &'a [KubeVirt],
) -> Result<&'a KubeVirt, Waiting> {
    match policy.spec.kubevirt_ref.as_ref() {
        Some(reference) => kubevirts
            .iter()
            .find(|kv| kv.name_any() == reference.name)
            .ok_or_else(|| Waiting::NotFound {
                name: Some(reference.name.clone()),
            }),
        None => match kubevirts {
            [] => Err(Waiting::NotFound { name: None }),
            [only] => Ok(only),
            many => {
                let mut names: Vec<String> = many.iter().map(ResourceExt::name_any).collect();
                names.sort();
                Err(Waiting::Ambiguous { names })
            }
        },
    }
}

/// [`resolve`], then require the CR not to be going away. A CR that virt-operator is still
/// deploying (phase unset or Deploying) is a target: our entries are desired state that
/// virt-operator applies while it deploys, so virt-handler rolls out once, not twice.
pub fn live_target<'a>(
    policy: &MetricsSidecarPolicy,
    kubevirts: &'a [KubeVirt],
) -> Result<&'a KubeVirt, Waiting> {
    let kv = resolve(policy, kubevirts)?;
    if kv.is_deleting() {
        return Err(Waiting::Deleting {
            name: kv.name_any(),
        });
    }
    Ok(kv)
}

/// `Some(phase)` ("unset" when virt-operator has set none) while virt-operator has not
/// finished deploying `kv`.
pub fn deploying_phase(kv: &KubeVirt) -> Option<String> {
    (!kv.is_deployed()).then(|| kv.phase().unwrap_or("unset").to_owned())
}

/// Among `policies` (all of the namespace, including ones being deleted), the one that owns
/// the KubeVirt CR `kv`: the oldest by creationTimestamp, then by name. A deleting winner
/// keeps the CR until its cleanup has finished, so two policies never write at once.
pub fn owner_policy<'a>(
    kv: &KubeVirt,
    policies: &'a [MetricsSidecarPolicy],
    kubevirts: &[KubeVirt],
) -> Option<&'a MetricsSidecarPolicy> {
    let kv_name = kv.name_any();
    policies
        .iter()
        .filter(|p| resolve(p, kubevirts).is_ok_and(|target| target.name_any() == kv_name))
        .min_by(|a, b| age_key(a).cmp(&age_key(b)))
}

fn age_key(policy: &MetricsSidecarPolicy) -> (Option<i128>, String) {
    (
        policy
            .meta()
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_nanosecond()),
        policy.name_any(),
    )
}

/// `Ok` when `policy` owns `kv`, else the name of the policy that does.
pub fn arbitrate(
    policy: &MetricsSidecarPolicy,
    kv: &KubeVirt,
    policies: &[MetricsSidecarPolicy],
    kubevirts: &[KubeVirt],
) -> Result<(), String> {
    match owner_policy(kv, policies, kubevirts) {
        Some(owner) if owner.name_any() != policy.name_any() => Err(owner.name_any()),
        _ => Ok(()),
    }
}

/// The HyperConverged object that owns `kv`, if any (OpenShift Virtualization / HCO).
pub fn hyperconverged_owner(kv: &KubeVirt) -> Option<&OwnerReference> {
    kv.owner_references()
        .iter()
        .find(|o| o.kind == HCO_KIND && o.api_version.split('/').next() == Some(HCO_GROUP))
}

/// The write channel for `kv`.
pub fn injection_method(kv: &KubeVirt) -> InjectionMethod {
    if hyperconverged_owner(kv).is_some() {
        InjectionMethod::HyperConvergedJsonPatch
    } else {
        InjectionMethod::CustomizeComponents
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::api::kubevirt::KubeVirtStatus;
    use crate::api::{KubeVirtRef, KubeVirtSpec, MetricsSidecarPolicySpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn kv(name: &str, phase: Option<&str>) -> KubeVirt {
        let mut kv = KubeVirt::new(name, KubeVirtSpec::default());
        kv.metadata.namespace = Some("kubevirt".into());
        kv.status = phase.map(|p| KubeVirtStatus {
            phase: Some(p.into()),
            ..Default::default()
        });
        kv
    }

    fn policy(name: &str, created: &str, target: Option<&str>) -> MetricsSidecarPolicy {
        let mut p = MetricsSidecarPolicy::new(
            name,
            MetricsSidecarPolicySpec {
                kubevirt_ref: target.map(|n| KubeVirtRef { name: n.into() }),
                ..Default::default()
            },
        );
        p.metadata.namespace = Some("kubevirt".into());
        p.metadata.creation_timestamp = Some(Time(created.parse().unwrap()));
        p
    }

    #[test]
    fn resolves_the_only_cr_or_the_named_one() {
        let kvs = vec![kv("kubevirt", Some("Deployed"))];
        let p = policy("a", "2026-01-01T00:00:00Z", None);
        assert_eq!(resolve(&p, &kvs).unwrap().name_any(), "kubevirt");
        let p = policy("a", "2026-01-01T00:00:00Z", Some("other"));
        assert_eq!(
            resolve(&p, &kvs).unwrap_err(),
            Waiting::NotFound {
                name: Some("other".into())
            }
        );
        assert_eq!(resolve(&p, &[]).unwrap_err().reason(), "KubeVirtNotFound");
    }

    #[test]
    fn several_crs_without_a_ref_are_ambiguous() {
        let kvs = vec![kv("b", None), kv("a", None)];
        let p = policy("p", "2026-01-01T00:00:00Z", None);
        let err = resolve(&p, &kvs).unwrap_err();
        assert_eq!(
            err,
            Waiting::Ambiguous {
                names: vec!["a".into(), "b".into()]
            }
        );
        assert!(
            err.message("kubevirt")
                .contains("set spec.kubevirtRef.name")
        );
        let p = policy("p", "2026-01-01T00:00:00Z", Some("b"));
        assert_eq!(resolve(&p, &kvs).unwrap().name_any(), "b");
    }

    #[test]
    fn a_deploying_cr_is_a_target_and_a_deleting_one_is_not() {
        let p = policy("p", "2026-01-01T00:00:00Z", None);
        for phase in [None, Some("Deploying")] {
            let kvs = vec![kv("kubevirt", phase)];
            let target = live_target(&p, &kvs).unwrap();
            assert_eq!(
                deploying_phase(target).as_deref(),
                Some(phase.unwrap_or("unset"))
            );
        }
        let kvs = vec![kv("kubevirt", Some("Deployed"))];
        assert_eq!(deploying_phase(live_target(&p, &kvs).unwrap()), None);

        let mut deleting = kv("kubevirt", Some("Deployed"));
        deleting.metadata.deletion_timestamp = Some(Time("2026-01-02T00:00:00Z".parse().unwrap()));
        assert_eq!(
            live_target(&p, &[deleting]).unwrap_err().reason(),
            "KubeVirtDeleting"
        );
        for phase in ["Deleting", "Deleted"] {
            let err = live_target(&p, &[kv("kubevirt", Some(phase))]).unwrap_err();
            assert_eq!(
                err,
                Waiting::Deleting {
                    name: "kubevirt".into()
                }
            );
        }
    }

    #[test]
    fn the_oldest_policy_wins_then_the_name() {
        let kvs = vec![kv("kubevirt", Some("Deployed"))];
        let older = policy("zeta", "2026-01-01T00:00:00Z", None);
        let newer = policy("alpha", "2026-01-02T00:00:00Z", Some("kubevirt"));
        let elsewhere = policy("aaa", "2025-01-01T00:00:00Z", Some("other"));
        let all = vec![newer.clone(), older.clone(), elsewhere];
        assert_eq!(arbitrate(&older, &kvs[0], &all, &kvs), Ok(()));
        assert_eq!(arbitrate(&newer, &kvs[0], &all, &kvs), Err("zeta".into()));

        let twin = policy("beta", "2026-01-01T00:00:00Z", None);
        let all = vec![twin.clone(), older.clone()];
        assert_eq!(arbitrate(&twin, &kvs[0], &all, &kvs), Ok(()));
        assert_eq!(arbitrate(&older, &kvs[0], &all, &kvs), Err("beta".into()));
    }

    #[test]
    fn an_hco_owner_switches_the_injection_method() {
        let mut owned = kv("kubevirt-kubevirt-hyperconverged", Some("Deployed"));
        assert_eq!(
            injection_method(&owned),
            InjectionMethod::CustomizeComponents
        );
        owned.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "hco.kubevirt.io/v1beta1".into(),
            kind: "HyperConverged".into(),
            name: "kubevirt-hyperconverged".into(),
            uid: "u".into(),
            controller: Some(true),
            ..Default::default()
        }]);
        assert_eq!(
            injection_method(&owned),
            InjectionMethod::HyperConvergedJsonPatch
        );
        assert_eq!(
            hyperconverged_owner(&owned).unwrap().name,
            "kubevirt-hyperconverged"
        );
    }
}
