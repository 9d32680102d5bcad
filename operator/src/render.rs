//! `render`: what the operator would write, offline, from a policy file and (optionally) the
//! current KubeVirt or HyperConverged CR. This is the VEP's "Option A": users who do not want
//! an operator commit the output to Git.
//!
//! It calls the same planning functions as the controller ([`crate::plan`]), so every patch
//! entry is byte-identical to the controller's. Two output forms:
//! - `yaml` (default): commit-ready objects. A KubeVirt object carrying the whole merged
//!   `spec.customizeComponents.patches` (use it as a merge patch: `kubectl patch --type
//!   merge`, or a kustomize patch), or the HyperConverged annotation; plus virt-operator's
//!   Deployment apply body when that component is enabled.
//! - `json`: the request bodies the controller sends, one compact JSON document per line
//!   (without the `resourceVersion` precondition the controller adds).
//!
//! Offline, nothing checks the policy as the API server would, so `render` refuses what
//! would go wrong silently there:
//! - fields the CRD schema does not declare (the server would prune a typo such as
//!   `virtHandlr` without a word), see [`unknown_fields`];
//! - a paused policy: the operator writes nothing while paused, so there is nothing to print
//!   ([`RenderError::Paused`]; the binary exits with status 3 and an empty stdout, so a
//!   pipeline never commits an empty list by mistake);
//! - a `--kubevirt` object the policy cannot apply to (another namespace, or another name
//!   than `spec.kubevirtRef.name`).
//!
//! Without a target object the printed `patches` list holds only this policy's entries;
//! the list is atomic, so [`Rendered::warnings`] says it would replace the CR's whole list.

pub mod unknown_fields;

use kube::CustomResourceExt;
use serde_json::{Value, json};

use crate::api::hyperconverged::KUBEVIRT_JSONPATCH_ANNOTATION;
use crate::api::{HyperConverged, KubeVirt, MetricsSidecarPolicy};
use crate::plan::{self, Plan, PlanDefaults, PlanError};

/// Namespace used when neither the policy nor the target names one.
pub const DEFAULT_NAMESPACE: &str = "kubevirt";
/// KubeVirt CR name used when there is no target file and no `kubevirtRef`.
pub const DEFAULT_KUBEVIRT_NAME: &str = "kubevirt";

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("cannot read the policy: {0}")]
    Policy(String),
    #[error(
        "the policy has fields the MetricsSidecarPolicy schema does not know, which the API server would drop silently: {}. Check their spelling (kubectl explain metricssidecarpolicy.spec)",
        .0.join(", ")
    )]
    UnknownFields(Vec<String>),
    #[error(
        "policy {0} is paused (spec.paused: true): the operator writes nothing while a policy is paused, so there is nothing to render. Set spec.paused to false to render it"
    )]
    Paused(String),
    #[error("the policy cannot apply to the given {kind}: {reason}")]
    TargetMismatch { kind: &'static str, reason: String },
    #[error("cannot read the target: {0}")]
    Target(String),
    #[error("the target is a {0}, expected a KubeVirt or HyperConverged object")]
    TargetKind(String),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("cannot write the output: {0}")]
    Output(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OutputFormat {
    #[default]
    Yaml,
    Json,
}

/// The current object the policy applies to.
#[derive(Debug, Clone)]
pub enum Target {
    KubeVirt(Box<KubeVirt>),
    HyperConverged(Box<HyperConverged>),
}

/// The writes, as data.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    /// The KubeVirt (or HyperConverged) object form, commit-ready.
    pub target_object: Value,
    /// The request body the controller sends for it.
    pub target_request: Value,
    /// virt-operator Deployment apply body, when enabled.
    pub virt_operator: Option<Value>,
    /// What the user must know before using the output (printed on stderr).
    pub warnings: Vec<String>,
}

/// What `render` prints: the documents (stdout) and the warnings (stderr).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub text: String,
    pub warnings: Vec<String>,
}

/// The warning of a render without `--kubevirt`.
pub const WHOLE_LIST_WARNING: &str = "no --kubevirt given: the printed spec.customizeComponents.patches holds only this policy's entries. That list is atomic: applied as is, it replaces the KubeVirt CR's whole patches list and drops every other entry in it. Pass the current KubeVirt CR with --kubevirt to keep them";

/// Parses the policy YAML (the first document whose kind is MetricsSidecarPolicy); fields
/// its schema does not declare are an error.
pub fn parse_policy(text: &str) -> Result<MetricsSidecarPolicy, RenderError> {
    let document = find_document(text, |kind| kind == "MetricsSidecarPolicy")
        .map_err(RenderError::Policy)?
        .ok_or_else(|| RenderError::Policy("no MetricsSidecarPolicy document".to_owned()))?;
    let unknown = unknown_fields::unknown_fields(&document, &policy_schema()?);
    if !unknown.is_empty() {
        return Err(RenderError::UnknownFields(unknown));
    }
    serde_json::from_value(document).map_err(|e| RenderError::Policy(e.to_string()))
}

/// The openAPIV3Schema of the CRD the operator generates (what the server prunes with).
fn policy_schema() -> Result<Value, RenderError> {
    let crd = MetricsSidecarPolicy::crd();
    let schema = crd
        .spec
        .versions
        .first()
        .and_then(|v| v.schema.as_ref())
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .ok_or_else(|| RenderError::Policy("the generated CRD has no schema".to_owned()))?;
    serde_json::to_value(schema).map_err(|e| RenderError::Policy(e.to_string()))
}

/// Refuses a target the policy cannot apply to: the controller only injects into a CR in
/// the policy's namespace, and only into the one `spec.kubevirtRef` names.
fn check_target(policy: &MetricsSidecarPolicy, target: &Target) -> Result<(), RenderError> {
    let (kind, meta) = match target {
        Target::KubeVirt(kv) => ("KubeVirt CR", &kv.metadata),
        Target::HyperConverged(hc) => ("HyperConverged CR", &hc.metadata),
    };
    let mismatch = |reason: String| RenderError::TargetMismatch { kind, reason };
    if let (Some(ours), Some(theirs)) = (&policy.metadata.namespace, &meta.namespace)
        && ours != theirs
    {
        return Err(mismatch(format!(
            "the policy is in namespace {ours} and the {kind} in {theirs}; the operator only injects into a KubeVirt CR in the policy's namespace"
        )));
    }
    if let (Target::KubeVirt(_), Some(reference), Some(name)) =
        (target, &policy.spec.kubevirt_ref, &meta.name)
        && &reference.name != name
    {
        return Err(mismatch(format!(
            "spec.kubevirtRef.name is {} but the KubeVirt CR is named {name}",
            reference.name
        )));
    }
    Ok(())
}

/// Parses a KubeVirt or HyperConverged object (the first such document).
pub fn parse_target(text: &str) -> Result<Target, RenderError> {
    let document = find_document(text, |kind| kind == "KubeVirt" || kind == "HyperConverged")
        .map_err(RenderError::Target)?;
    let Some(document) = document else {
        let kind = find_document(text, |_| true)
            .ok()
            .flatten()
            .and_then(|d| d.get("kind").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_else(|| "document without kind".to_owned());
        return Err(RenderError::TargetKind(kind));
    };
    let is_kubevirt = document.get("kind").and_then(Value::as_str) == Some("KubeVirt");
    let parse_error = |e: serde_json::Error| RenderError::Target(e.to_string());
    Ok(if is_kubevirt {
        Target::KubeVirt(Box::new(
            serde_json::from_value(document).map_err(parse_error)?,
        ))
    } else {
        Target::HyperConverged(Box::new(
            serde_json::from_value(document).map_err(parse_error)?,
        ))
    })
}

fn find_document(text: &str, wanted: impl Fn(&str) -> bool) -> Result<Option<Value>, String> {
    use serde::Deserialize;
    for document in serde_yaml::Deserializer::from_str(text) {
        let value = Value::deserialize(document).map_err(|e| e.to_string())?;
        if value
            .get("kind")
            .and_then(Value::as_str)
            .is_some_and(&wanted)
        {
            return Ok(Some(value));
        }
    }
    Ok(None)
}

/// Plans `policy` against `target` and returns the writes.
pub fn render(
    mut policy: MetricsSidecarPolicy,
    target: Option<&Target>,
    defaults: &PlanDefaults,
) -> Result<Rendered, RenderError> {
    if let Some(target) = target {
        check_target(&policy, target)?;
    }
    if policy.spec.paused {
        let namespace = policy.metadata.namespace.as_deref().unwrap_or("");
        let name = policy.metadata.name.as_deref().unwrap_or("");
        let shown = if namespace.is_empty() {
            name.to_owned()
        } else {
            format!("{namespace}/{name}")
        };
        return Err(RenderError::Paused(shown));
    }
    if policy.metadata.namespace.is_none() {
        let namespace = match target {
            Some(Target::KubeVirt(kv)) => kv.metadata.namespace.clone(),
            Some(Target::HyperConverged(hc)) => hc.metadata.namespace.clone(),
            None => None,
        };
        policy.metadata.namespace = Some(namespace.unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned()));
    }
    let kubevirt = match target {
        Some(Target::KubeVirt(kv)) => Some(kv.as_ref()),
        _ => None,
    };
    let plan = plan::plan(&policy, kubevirt, defaults)?;
    let (target_object, target_request) = match target {
        Some(Target::HyperConverged(hc)) => hyperconverged_writes(hc, &plan)?,
        Some(Target::KubeVirt(kv)) => kubevirt_writes(kv, &plan),
        None => {
            let mut kv = KubeVirt::new(&default_kubevirt_name(&policy), Default::default());
            kv.metadata.namespace = Some(plan.namespace.clone());
            kubevirt_writes(&kv, &plan)
        }
    };
    let mut warnings = if target.is_none() {
        vec![WHOLE_LIST_WARNING.to_owned()]
    } else {
        Vec::new()
    };
    let secrets = plan.secret_names();
    if !secrets.is_empty() {
        warnings.push(format!(
            "the sidecars' exporters read the Secrets {} in namespace {}: create them there (a missing Secret or key leaves that sink without its file)",
            secrets.join(", "),
            plan.namespace
        ));
    }
    Ok(Rendered {
        target_object,
        target_request,
        virt_operator: plan.virt_operator.clone(),
        warnings,
    })
}

fn default_kubevirt_name(policy: &MetricsSidecarPolicy) -> String {
    policy
        .spec
        .kubevirt_ref
        .as_ref()
        .map_or_else(|| DEFAULT_KUBEVIRT_NAME.to_owned(), |r| r.name.clone())
}

fn kubevirt_writes(kubevirt: &KubeVirt, plan: &Plan) -> (Value, Value) {
    let change = plan::kubevirt_change(kubevirt, plan);
    let request = plan::kubevirt_merge_patch(&change.patches, None);
    let object = json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "KubeVirt",
        "metadata": {
            "name": kubevirt.metadata.name.clone().unwrap_or_else(|| DEFAULT_KUBEVIRT_NAME.to_owned()),
            "namespace": kubevirt.metadata.namespace.clone().unwrap_or_else(|| plan.namespace.clone()),
        },
        "spec": {"customizeComponents": {"patches": change.patches}},
    });
    (object, request)
}

fn hyperconverged_writes(hc: &HyperConverged, plan: &Plan) -> Result<(Value, Value), RenderError> {
    let existing = hc
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(KUBEVIRT_JSONPATCH_ANNOTATION))
        .map(String::as_str);
    let change = plan::hco_annotation(existing, &plan.owner, &plan.entry_values())?;
    let annotations = json!({ KUBEVIRT_JSONPATCH_ANNOTATION: change.annotation });
    let request = json!({"metadata": {"annotations": annotations}});
    let object = json!({
        "apiVersion": "hco.kubevirt.io/v1beta1",
        "kind": "HyperConverged",
        "metadata": {
            "name": hc.metadata.name,
            "namespace": hc.metadata.namespace.clone().unwrap_or_else(|| plan.namespace.clone()),
            "annotations": annotations,
        },
    });
    Ok((object, request))
}

/// Formats the writes.
pub fn format(rendered: &Rendered, format: OutputFormat) -> Result<String, RenderError> {
    let mut documents = vec![(&rendered.target_object, &rendered.target_request)];
    if let Some(body) = &rendered.virt_operator {
        documents.push((body, body));
    }
    let mut out = String::new();
    for (object, request) in documents {
        match format {
            OutputFormat::Yaml => {
                out.push_str("---\n");
                out.push_str(
                    &serde_yaml::to_string(object)
                        .map_err(|e| RenderError::Output(e.to_string()))?,
                );
            }
            OutputFormat::Json => {
                out.push_str(
                    &serde_json::to_string(request)
                        .map_err(|e| RenderError::Output(e.to_string()))?,
                );
                out.push('\n');
            }
        }
    }
    Ok(out)
}

/// `render` end to end on file contents: what the subcommand prints.
pub fn render_text(
    policy: &str,
    target: Option<&str>,
    defaults: &PlanDefaults,
    output: OutputFormat,
) -> Result<Output, RenderError> {
    let policy = parse_policy(policy)?;
    let target = target.map(parse_target).transpose()?;
    let rendered = render(policy, target.as_ref(), defaults)?;
    Ok(Output {
        text: format(&rendered, output)?,
        warnings: rendered.warnings,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const POLICY: &str = r#"
apiVersion: metrics.kubevirt.io/v1alpha1
kind: MetricsSidecarPolicy
metadata: {name: metrics, namespace: kubevirt}
spec:
  defaults: {image: "quay.io/kubevirt/metrics-sidecars:v0.1.0"}
  components: {virtHandler: {}}
"#;

    fn kubevirt(namespace: &str, name: &str) -> String {
        format!(
            "apiVersion: kubevirt.io/v1\nkind: KubeVirt\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec: {{}}\n"
        )
    }

    fn render(policy: &str, target: Option<&str>) -> Result<Output, RenderError> {
        render_text(policy, target, &PlanDefaults::default(), OutputFormat::Yaml)
    }

    #[test]
    fn a_typo_in_the_policy_is_an_error_naming_the_field() {
        let typo = POLICY.replace("virtHandler", "virtHandlr");
        let err = render(&typo, None).unwrap_err();
        assert!(
            matches!(&err, RenderError::UnknownFields(f) if f == &["spec.components.virtHandlr"]),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .contains("would drop silently: spec.components.virtHandlr")
        );
    }

    #[test]
    fn a_paused_policy_renders_nothing_and_says_why() {
        let paused = POLICY.replace("spec:\n", "spec:\n  paused: true\n");
        let err = render(&paused, Some(&kubevirt("kubevirt", "kubevirt"))).unwrap_err();
        assert!(matches!(&err, RenderError::Paused(p) if p == "kubevirt/metrics"));
        assert!(err.to_string().contains("spec.paused: true"), "{err}");
    }

    #[test]
    fn without_a_target_the_output_warns_that_it_replaces_the_whole_list() {
        let out = render(POLICY, None).unwrap();
        assert_eq!(out.warnings, vec![WHOLE_LIST_WARNING.to_owned()]);
        assert!(out.text.contains("customizeComponents"));
        let out = render(POLICY, Some(&kubevirt("kubevirt", "kubevirt"))).unwrap();
        assert!(out.warnings.is_empty());
    }

    #[test]
    fn a_target_the_policy_cannot_apply_to_is_an_error() {
        let err = render(POLICY, Some(&kubevirt("other", "kubevirt"))).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the policy cannot apply to the given KubeVirt CR: the policy is in namespace kubevirt and the KubeVirt CR in other; the operator only injects into a KubeVirt CR in the policy's namespace"
        );
        let named = POLICY.replace("spec:\n", "spec:\n  kubevirtRef: {name: kv-a}\n");
        let err = render(&named, Some(&kubevirt("kubevirt", "kv-b"))).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the policy cannot apply to the given KubeVirt CR: spec.kubevirtRef.name is kv-a but the KubeVirt CR is named kv-b"
        );
        // Matching name, and a policy without a namespace (it takes the CR's): fine.
        assert!(render(&named, Some(&kubevirt("kubevirt", "kv-a"))).is_ok());
        let no_namespace = POLICY.replace(", namespace: kubevirt", "");
        assert!(render(&no_namespace, Some(&kubevirt("other", "kubevirt"))).is_ok());
        // A HyperConverged CR in another namespace.
        let hco = "apiVersion: hco.kubevirt.io/v1beta1\nkind: HyperConverged\nmetadata: {name: kubevirt-hyperconverged, namespace: openshift-cnv}\nspec: {}\n";
        let err = render(POLICY, Some(hco)).unwrap_err();
        assert!(
            err.to_string().starts_with("the policy cannot apply to the given HyperConverged CR: the policy is in namespace kubevirt"),
            "{err}"
        );
    }
}
