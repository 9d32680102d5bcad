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
}

/// Parses the policy YAML (the first document whose kind is MetricsSidecarPolicy).
pub fn parse_policy(text: &str) -> Result<MetricsSidecarPolicy, RenderError> {
    let document = find_document(text, |kind| kind == "MetricsSidecarPolicy")
        .map_err(RenderError::Policy)?
        .ok_or_else(|| RenderError::Policy("no MetricsSidecarPolicy document".to_owned()))?;
    serde_json::from_value(document).map_err(|e| RenderError::Policy(e.to_string()))
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
    Ok(Rendered {
        target_object,
        target_request,
        virt_operator: plan.virt_operator.clone(),
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
) -> Result<String, RenderError> {
    let policy = parse_policy(policy)?;
    let target = target.map(parse_target).transpose()?;
    let rendered = render(policy, target.as_ref(), defaults)?;
    format(&rendered, output)
}
