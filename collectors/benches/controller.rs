//! Benchmark of virt-controller-metrics' cache and render: memory held by the cache and the
//! time of one collection (render) and one encode (what a scrape serves), with 1,000 and
//! 10,000 VMs plus as many VMIs (each VM: instance type and preference, a Multus vNIC, a
//! DataVolume disk; each VMI: running, migrated, with a launcher pod), in 100 namespaces.
//!
//! Run: `cargo bench -p kubevirt-metrics-collectors --bench controller`
//! (a plain `main`: it prints figures; it asserts nothing about time).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use kubevirt_metrics_collectors::controller::families::{self};
use kubevirt_metrics_collectors::controller::store::ClusterState;
use kubevirt_metrics_collectors::core::format::text;
use serde::Deserialize;
use serde_json::{Value, json};

/// Counts live heap bytes, so the cache's footprint can be read directly.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn fixture() -> Vec<Value> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../testdata/controller/cluster.yaml"
    );
    let text = std::fs::read_to_string(path).expect("fixture");
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| {
            serde_json::to_value(serde_yaml::Value::deserialize(doc).expect("yaml")).expect("json")
        })
        .filter(|v| !v.is_null())
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .expect("fixture object")
}

/// The fixture's shared objects plus `n` copies of fedora-vm's VM, VMI, launcher pod, PVC,
/// revisions and migration, renamed and spread over 100 namespaces.
fn objects(n: usize) -> Vec<Value> {
    let docs = fixture();
    let mut out: Vec<Value> = docs
        .iter()
        .filter(|d| {
            matches!(
                d["kind"].as_str(),
                Some(
                    "KubeVirt"
                        | "ConfigMap"
                        | "VirtualMachineClusterInstancetype"
                        | "VirtualMachineClusterPreference"
                )
            )
        })
        .cloned()
        .collect();
    let vm = find(&docs, "VirtualMachine", "fedora-vm");
    let vmi = find(&docs, "VirtualMachineInstance", "fedora-vm");
    let pod = find(&docs, "Pod", "virt-launcher-fedora-vm-x7k2p");
    let pvc = find(&docs, "PersistentVolumeClaim", "fedora-vm-root");
    let migration = find(
        &docs,
        "VirtualMachineInstanceMigration",
        "kubevirt-evacuation-abc12",
    );
    let revisions: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] == "ControllerRevision")
        .take(2)
        .collect();
    for i in 0..n {
        let ns = format!("ns-{:03}", i % 100);
        let name = format!("vm-{i:05}");
        let vmi_uid = format!("00000000-0000-4000-8000-{i:012}");
        let mig_uid = format!("11111111-0000-4000-8000-{i:012}");
        let mut v = vm.clone();
        v["metadata"]["name"] = json!(name);
        v["metadata"]["namespace"] = json!(ns);
        v["spec"]["template"]["spec"]["volumes"][0]["dataVolume"]["name"] =
            json!(format!("{name}-root"));
        v["spec"]["dataVolumeTemplates"][0]["metadata"]["name"] = json!(format!("{name}-root"));
        v["metadata"]["labels"]["app"] = json!(format!("app-{}", i % 17));
        out.push(v);
        let mut v = vmi.clone();
        v["metadata"]["name"] = json!(name);
        v["metadata"]["namespace"] = json!(ns);
        v["metadata"]["uid"] = json!(vmi_uid);
        v["status"]["nodeName"] = json!(format!("node-{}", i % 50));
        v["status"]["migrationState"]["migrationUid"] = json!(mig_uid);
        v["status"]["interfaces"][0]["ipAddress"] =
            json!(format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256));
        out.push(v);
        let mut p = pod.clone();
        p["metadata"]["name"] = json!(format!("virt-launcher-{name}-abcde"));
        p["metadata"]["namespace"] = json!(ns);
        p["metadata"]["labels"]["kubevirt.io/created-by"] = json!(vmi_uid);
        p["spec"]["nodeName"] = json!(format!("node-{}", i % 50));
        out.push(p);
        let mut p = pvc.clone();
        p["metadata"]["name"] = json!(format!("{name}-root"));
        p["metadata"]["namespace"] = json!(ns);
        out.push(p);
        let mut m = migration.clone();
        m["metadata"]["name"] = json!(format!("{name}-migration"));
        m["metadata"]["namespace"] = json!(ns);
        m["metadata"]["uid"] = json!(mig_uid);
        m["spec"]["vmiName"] = json!(name);
        out.push(m);
        if i < 100 {
            for r in &revisions {
                let mut r = (*r).clone();
                r["metadata"]["namespace"] = json!(ns);
                out.push(r);
            }
        }
    }
    out
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn run(n: usize) {
    let values = objects(n);
    let raw_json: usize = values.iter().map(|v| v.to_string().len()).sum();
    let count = values.len();

    let started = Instant::now();
    let mut state = ClusterState::default();
    for value in values {
        state.apply_any(value).expect("decodes");
    }
    let decode = started.elapsed();
    // What the cache holds: the heap freed by dropping a copy of it.
    let copy = state.clone();
    let with_copy = LIVE.load(Ordering::Relaxed);
    drop(copy);
    let cache = with_copy.saturating_sub(LIVE.load(Ordering::Relaxed));

    let iterations = if n >= 10_000 { 5 } else { 20 };
    let mut renders = Vec::new();
    let mut encodes = Vec::new();
    let mut peak_families = 0;
    let mut bytes = 0;
    let mut series = 0;
    for _ in 0..iterations {
        let base = LIVE.load(Ordering::Relaxed);
        let t = Instant::now();
        let families = families::render(&state);
        renders.push(t.elapsed());
        peak_families = peak_families.max(LIVE.load(Ordering::Relaxed).saturating_sub(base));
        let t = Instant::now();
        let body = text::encode(&families);
        encodes.push(t.elapsed());
        bytes = body.len();
        series = families.iter().map(|f| f.samples.len()).sum();
    }
    println!(
        "{n:>6} VMs + {n:>6} VMIs ({count} objects, {:.1} MiB as JSON): cache {:.1} MiB ({:.0} B/VM incl. its VMI, pod, PVC, migration); decode {:?} ({:.1} µs/object)",
        mib(raw_json),
        mib(cache),
        cache as f64 / n as f64,
        decode,
        decode.as_secs_f64() * 1e6 / count as f64,
    );
    println!(
        "        render {:?} (families {:.1} MiB, {series} series), encode {:?} ({:.1} MiB text) — medians of {iterations}",
        median(renders),
        mib(peak_families),
        median(encodes),
        mib(bytes),
    );
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is accepted and ignored.
    println!("virt-controller-metrics cache and render benchmark (release build)");
    for n in [1_000, 10_000] {
        run(n);
    }
}
