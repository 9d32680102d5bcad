//! Property tests of the `customizeComponents.patches` merge, over generated lists that
//! other people and tools also wrote: foreign entries (arbitrary fields, arbitrary patch
//! strings, patches that carry another policy's marker, entries that are not even objects)
//! survive byte for byte and in place; our entries are found again, exactly once each; a
//! second merge changes nothing; removal gives back exactly the foreign entries.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use kubevirt_metrics_operator::plan::{
    self, MARKER_ANNOTATION, PlanDefaults, entry_owner, merge_patches, remove_patches,
};
use kubevirt_metrics_operator::render;
use proptest::prelude::*;
use serde_json::{Value, json};

const POLICY: &str = "\
apiVersion: metrics.kubevirt.io/v1alpha1
kind: MetricsSidecarPolicy
metadata:
  name: default
  namespace: kubevirt
spec:
  defaults:
    image: quay.io/kubevirt/kubevirt-metrics-collectors:v0.1.0
  components:
    virtHandler: {}
    virtController: {}
    virtApi: {}
";

fn our_plan() -> plan::Plan {
    let policy = render::parse_policy(POLICY).unwrap();
    plan::plan(&policy, None, &PlanDefaults::default()).unwrap()
}

/// A string as users write them in patches: JSON-ish text, YAML-ish text, unicode, quotes.
fn patch_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[ -~]{0,80}",
        // A strategic patch of someone else's.
        ("[a-z-]{1,20}", "[a-z0-9.:/-]{1,40}").prop_map(|(name, image)| {
            json!({"spec": {"template": {"spec": {"containers": [{"name": name, "image": image}]}}}})
                .to_string()
        }),
        // Another policy's entry: our marker annotation, another owner.
        "[a-z]{1,10}/[a-z]{1,10}".prop_map(|owner| {
            json!({"spec": {"template": {"metadata": {"annotations": {MARKER_ANNOTATION: owner}}}}})
                .to_string()
        }),
        // Mentions the marker but is not JSON.
        Just(format!("{MARKER_ANNOTATION}: kubevirt/default")),
    ]
}

/// Any JSON value, nested a little.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-zA-Z]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// An entry somebody else wrote.
fn foreign_entry() -> impl Strategy<Value = Value> {
    let entry = (
        prop_oneof![
            Just("virt-handler".to_owned()),
            Just("virt-api".to_owned()),
            any::<String>()
        ],
        prop_oneof![
            Just("DaemonSet".to_owned()),
            Just("Deployment".to_owned()),
            any::<String>()
        ],
        patch_text(),
        prop_oneof![Just("strategic".to_owned()), Just("json".to_owned())],
        prop::option::of(json_value()),
    )
        .prop_map(|(name, kind, patch, patch_type, extra)| {
            let mut entry = json!({
                "resourceName": name, "resourceType": kind, "patch": patch, "type": patch_type,
            });
            if let Some(extra) = extra {
                entry["x-extra"] = extra;
            }
            entry
        });
    prop_oneof![8 => entry, 1 => json_value()]
}

/// An older version of one of our entries (same target, other patch bytes).
fn stale_ours(ours: &Value, owner: &str) -> Value {
    let mut stale = ours.clone();
    let mut body: Value = serde_json::from_str(stale["patch"].as_str().unwrap()).unwrap();
    body["spec"]["template"]["metadata"]["annotations"][MARKER_ANNOTATION] = json!(owner);
    body["spec"]["template"]["spec"]["containers"] = json!([{"name": "old-sidecar"}]);
    stale["patch"] = json!(body.to_string());
    stale
}

fn is_ours(entry: &Value, owner: &str) -> bool {
    entry_owner(entry).as_deref() == Some(owner)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn foreign_entries_survive_in_place_and_ours_are_found_again(
        foreign in prop::collection::vec(foreign_entry(), 0..8),
        // Where our older entries sit among the foreign ones (None: not written yet).
        stale_at in prop::collection::vec(prop::option::of(0usize..9), 3),
    ) {
        let plan = our_plan();
        let owner = plan.owner.clone();
        let ours = plan.entry_values();
        prop_assert_eq!(ours.len(), 3);
        prop_assume!(foreign.iter().all(|e| !is_ours(e, &owner)));

        let mut existing = foreign.clone();
        let mut placed: Vec<(usize, usize)> = stale_at
            .iter()
            .enumerate()
            .filter_map(|(i, at)| at.map(|at| (at.min(existing.len()), i)))
            .collect();
        placed.sort();
        for (offset, (at, i)) in placed.iter().enumerate() {
            existing.insert(at + offset, stale_ours(&ours[*i], &owner));
        }

        let merged = merge_patches(&existing, &owner, &ours);

        // Foreign entries: same bytes, same places.
        for (i, entry) in existing.iter().enumerate() {
            if !is_ours(entry, &owner) {
                prop_assert_eq!(
                    serde_json::to_string(&merged[i]).unwrap(),
                    serde_json::to_string(entry).unwrap()
                );
            }
        }
        let kept: Vec<&Value> = merged.iter().filter(|e| !is_ours(e, &owner)).collect();
        prop_assert_eq!(kept, foreign.iter().collect::<Vec<_>>());

        // Ours: each exactly once, the new bytes, older ones replaced where they were.
        let found: Vec<&Value> = merged.iter().filter(|e| is_ours(e, &owner)).collect();
        prop_assert_eq!(found.len(), ours.len());
        for entry in &ours {
            prop_assert_eq!(merged.iter().filter(|e| *e == entry).count(), 1);
        }
        for (i, entry) in existing.iter().enumerate() {
            if is_ours(entry, &owner) {
                prop_assert!(ours.contains(&merged[i]), "replaced in place");
            }
        }
        prop_assert_eq!(merged.len(), foreign.len() + ours.len());

        // Idempotent, and removal leaves exactly the foreign entries.
        prop_assert_eq!(&merge_patches(&merged, &owner, &ours), &merged);
        prop_assert_eq!(remove_patches(&merged, &owner), foreign);
    }
}
