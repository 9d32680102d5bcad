//! virt-controller's cluster families, rebuilt from the objects virt-controller itself watches.
//!
//! [`render`] is pure: a [`ClusterState`] (what the watches hold) in, exposition families out,
//! with KubeVirt v1.9.0's names, types, HELP texts, labels and label-value rules
//! (`pkg/monitoring/metrics/virt-controller/{vmistats,vmstats,migrationstats}_collector.go`,
//! `vmsnapshot.go`, `common/labels`). Those collectors also compute everything at scrape
//! time from informer caches, so the same state gives the same series.
//!
//! Left out, because they are events inside virt-controller and cannot be rebuilt from
//! state: the phase-transition histograms (`kubevirt_vmi_phase_transition_time_*`,
//! `kubevirt_vmi_migration_phase_transition_time_from_creation_seconds`),
//! `kubevirt_vmi_sync_total`, `kubevirt_vmi_number_of_outdated` (set by the workload
//! updater), the process's `kubevirt_virt_controller_{ready,leading}_status` (the latter is
//! offered as an opt-in Lease-derived backport, [`leading_status`]), and the process
//! metrics (`kubevirt_workqueue_*`, `kubevirt_rest_client_*`, `go_*`, `process_*`).
//!
//! Label values: empty strings are written as `label=""` (client_golang keeps empty
//! variable labels); only the constant `label_*` labels of `kubevirt_vm_labels` drop empty
//! values, as operatormetrics does. Where KubeVirt would emit the same series twice (and
//! fail the whole scrape), the duplicate is dropped instead.

mod defs;
mod instancetype;
mod migration;
mod snapshot;
mod vm;
mod vm_labels;
mod vmi;

use crate::controller::store::ClusterState;
use crate::core::metric::{Family, LabelName, Labels, Sample};
use crate::k8s::objects::timestamp;
pub use defs::RENDERED;

/// Renders every family virt-controller computes from `state`, in [`RENDERED`] order.
pub fn render(state: &ClusterState) -> Vec<Family> {
    let mut families = Vec::with_capacity(RENDERED.len());
    families.extend(snapshot::render(state));
    families.extend(migration::render(state));
    families.extend(vmi::render(state));
    families.extend(vm::render(state));
    families
}

/// The backported `kubevirt_virt_controller_leading_status` gauge: 1 on the pod that holds
/// the `virt-controller` Lease, 0 on the others (KubeVirt's own gauge is 0 until leading).
pub fn leading_status(leading: bool) -> Family {
    let mut family = defs::VIRT_CONTROLLER_LEADING_STATUS.family();
    family
        .samples
        .push(Sample::new(Vec::new(), if leading { 1.0 } else { 0.0 }));
    family
}

/// Labels from static names, sorted by name (client_golang's order). Empty values stay.
pub(crate) fn labels<const N: usize>(pairs: [(&'static str, &str); N]) -> Labels {
    let mut labels: Vec<_> = pairs
        .into_iter()
        .map(|(name, value)| (LabelName::new_static(name), value.into()))
        .collect();
    labels.sort_by(|a, b| a.0.cmp(&b.0));
    labels.into()
}

/// Appends a sample unless a series with the same labels is already in `samples_of_object`
/// (the samples one object produced): KubeVirt would report a duplicate as a scrape error.
pub(crate) fn push_unique(family: &mut Family, from: usize, labels: Labels, value: f64) {
    if family.samples[from..].iter().any(|s| s.labels == labels) {
        return;
    }
    family.samples.push(Sample::new(labels, value));
}

/// An owned label name (for `label_*`).
pub(crate) fn owned(name: String) -> LabelName {
    LabelName::from(name)
}

/// The value of a whole-seconds timestamp as a sample value.
#[allow(clippy::cast_precision_loss)]
pub(crate) fn seconds(ts: timestamp::Timestamp) -> f64 {
    ts.0 as f64
}

/// An integer as a sample value (Go's `float64(int64)`).
#[allow(clippy::cast_precision_loss)]
pub(crate) fn float(v: i64) -> f64 {
    v as f64
}
