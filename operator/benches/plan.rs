//! Benchmark of the planning path: time and heap allocations per call of
//! - `plan::plan` (policy → sidecar containers and patch entries, all four components),
//! - `plan::kubevirt_change` (merge into a KubeVirt CR that already holds 20 foreign entries
//!   and our previous entries: the steady state, where the answer is "no change"),
//! - `render` end to end (YAML in, JSON out), as `kubevirt-metrics-operator render` runs it.
//!
//! `cargo bench -p kubevirt-metrics-operator --bench plan`. Plain `harness = false` bench with
//! a counting allocator; prints one line per case.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kubevirt_metrics_operator::api::KubeVirt;
use kubevirt_metrics_operator::plan::{self, PlanDefaults};
use kubevirt_metrics_operator::render::{self, OutputFormat, Target};
use serde_json::json;

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const POLICY: &str = include_str!("../../testdata/golden/plan/overrides/policy.yaml");
const KUBEVIRT: &str = include_str!("../../testdata/golden/plan/foreign-patches/kubevirt.yaml");

fn measure(name: &str, mut f: impl FnMut()) {
    // Warm up, then run for about a second.
    for _ in 0..100 {
        f();
    }
    let mut iterations = 0u64;
    let start = Instant::now();
    let allocations = ALLOCATIONS.load(Ordering::Relaxed);
    let bytes = BYTES.load(Ordering::Relaxed);
    while start.elapsed() < Duration::from_secs(1) {
        for _ in 0..100 {
            f();
        }
        iterations += 100;
    }
    let elapsed = start.elapsed();
    let per_call = elapsed.as_secs_f64() * 1e6 / iterations as f64;
    let allocs = (ALLOCATIONS.load(Ordering::Relaxed) - allocations) as f64 / iterations as f64;
    let kib = (BYTES.load(Ordering::Relaxed) - bytes) as f64 / iterations as f64 / 1024.0;
    println!(
        "{name:<44} {per_call:>9.2} µs/call {allocs:>8.0} allocs/call {kib:>8.1} KiB allocated/call ({iterations} calls)"
    );
}

fn main() {
    let defaults = PlanDefaults::default();
    let policy = render::parse_policy(POLICY).expect("policy parses");
    let Target::KubeVirt(kubevirt) = render::parse_target(KUBEVIRT).expect("CR parses") else {
        panic!("expected a KubeVirt CR");
    };
    // A crowded CR: 20 foreign entries plus ours already written.
    let mut crowded: KubeVirt = (*kubevirt).clone();
    let planned = plan::plan(&policy, Some(&crowded), &defaults).expect("plans");
    let mut patches: Vec<_> = (0..20)
        .map(|i| {
            json!({"resourceName": format!("virt-api-{i}"), "resourceType": "Deployment",
                   "patch": format!("{{\"metadata\":{{\"labels\":{{\"n\":\"{i}\"}}}}}}"), "type": "merge"})
        })
        .collect();
    patches.extend(planned.entry_values());
    crowded
        .spec
        .customize_components
        .get_or_insert_with(Default::default)
        .patches = Some(patches);

    measure("plan (4 components)", || {
        black_box(plan::plan(black_box(&policy), Some(&crowded), &defaults).expect("plans"));
    });
    measure("kubevirt_change (20 foreign + 3 ours, no-op)", || {
        let change = plan::kubevirt_change(black_box(&crowded), black_box(&planned));
        assert!(!change.changed);
        black_box(change);
    });
    measure("plan + kubevirt_change (one reconcile's plan)", || {
        let p = plan::plan(black_box(&policy), Some(&crowded), &defaults).expect("plans");
        black_box(plan::kubevirt_change(&crowded, &p));
    });
    measure("render_text (YAML in, JSON out)", || {
        black_box(
            render::render_text(POLICY, Some(KUBEVIRT), &defaults, OutputFormat::Json)
                .expect("renders"),
        );
    });
    let bytes: usize = planned.entries.iter().map(|e| e.patch.len()).sum();
    println!("patch bytes for 3 entries: {bytes}");
}
