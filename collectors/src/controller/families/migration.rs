//! Migration families of virt-controller (`migrationstats_collector.go`).

use super::defs::*;
use super::labels;
use crate::controller::store::ClusterState;
use crate::core::metric::{Family, Sample};

pub fn render(state: &ClusterState) -> Vec<Family> {
    let (mut pending, mut scheduling, mut unset, mut running) = (0u32, 0u32, 0u32, 0u32);
    let mut succeeded = MIGRATION_SUCCEEDED.family();
    let mut failed = MIGRATION_FAILED.family();
    for migration in state.migrations.values() {
        let outcome = match migration.status.phase.as_str() {
            "Pending" => {
                pending += 1;
                continue;
            }
            "Scheduling" => {
                scheduling += 1;
                continue;
            }
            "" => {
                unset += 1;
                continue;
            }
            "Running" | "Scheduled" | "PreparingTarget" | "TargetReady" | "WaitingForSync"
            | "Synchronizing" => {
                running += 1;
                continue;
            }
            "Succeeded" => &mut succeeded,
            "Failed" => &mut failed,
            _ => continue,
        };
        let meta = &migration.metadata;
        outcome.samples.push(Sample::new(
            labels([
                ("vmi", &migration.spec.vmi_name),
                ("vmim", &meta.name),
                ("namespace", &meta.namespace),
            ]),
            1.0,
        ));
    }
    let count = |def: &Def, n: u32| {
        let mut family = def.family();
        family.samples.push(Sample::new(Vec::new(), f64::from(n)));
        family
    };
    vec![
        count(&MIGRATIONS_PENDING, pending),
        count(&MIGRATIONS_SCHEDULING, scheduling),
        count(&MIGRATIONS_UNSET, unset),
        count(&MIGRATIONS_RUNNING, running),
        succeeded,
        failed,
    ]
}
