//! `kubevirt_vmsnapshot_succeeded_timestamp_seconds` (`vmsnapshot.go`).
//!
//! KubeVirt sets this gauge when it sees a snapshot succeed and never removes it; rebuilt from
//! state, a snapshot's series lives as long as the snapshot object does.

use super::defs::VMSNAPSHOT_SUCCEEDED_TIMESTAMP;
use super::{labels, seconds};
use crate::controller::store::ClusterState;
use crate::core::metric::{Family, Sample};

pub fn render(state: &ClusterState) -> Vec<Family> {
    let mut family = VMSNAPSHOT_SUCCEEDED_TIMESTAMP.family();
    for snapshot in state.snapshots.values() {
        let Some(status) = &snapshot.status else {
            continue;
        };
        let Some(created) = status.creation_time.filter(|_| status.phase == "Succeeded") else {
            continue;
        };
        let meta = &snapshot.metadata;
        family.samples.push(Sample::new(
            labels([
                ("name", &snapshot.spec.source.name),
                ("snapshot_name", &meta.name),
                ("namespace", &meta.namespace),
            ]),
            seconds(created),
        ));
    }
    vec![family]
}
