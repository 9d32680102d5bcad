//! Fresh data as soon as it exists: virt-handler-metrics with the launcher source, its VMIs
//! from a watch on a fake Kubernetes API server, statistics from fake virt-launchers. The
//! interval is one hour, so the interval tick cannot explain any series that appears: only
//! the collection the VMI watch triggers (when it syncs, when a VMI starts running) can.

#![allow(clippy::unwrap_used)]

mod controller_support;
#[path = "support/fake_launcher.rs"]
mod fake_launcher;
#[path = "server_support/mod.rs"]
mod server_support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use controller_support::fake_api::FakeApi;
use fake_launcher::{FakeLauncher, Script};
use kubevirt_metrics_collectors::core::collect::Collector;
use kubevirt_metrics_collectors::core::runtime;
use kubevirt_metrics_collectors::handler::VmiCollector;
use kubevirt_metrics_collectors::handler::launcher::{
    LauncherSettings, LauncherSource, RpcTimeouts, WatchedVmis,
};
use kubevirt_metrics_flags::Mode;
use serde_json::{Value, json};
use server_support::{args, get_text, http_client, wait_ready, wait_until};

const NODE: &str = "node-1";
const VMIS: &str = "/apis/kubevirt.io/v1/virtualmachineinstances";
const INTERVAL: Duration = Duration::from_secs(3600);
/// Far below one interval; generous for a busy 2-core machine (the watch's own retry
/// backoff after a failed list is part of it).
const FRESH_WITHIN: Duration = Duration::from_secs(30);
const POD_FIRST: &str = "8d2f2a4e-7c1b-4f6a-9f43-2b8e1f0c6d11";
const POD_SECOND: &str = "2b7c9e31-0d4f-4e8a-8c65-9a1e7f3b5d22";

fn payload(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata/launcher-payloads")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn vmi(name: &str, pod_uid: &str) -> Value {
    json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstance",
        "metadata": {
            "name": name, "namespace": "default", "uid": format!("uid-{name}"),
            "resourceVersion": "2",
            "labels": {"kubevirt.io/nodeName": NODE}
        },
        "status": {"phase": "Running", "nodeName": NODE, "activePods": {pod_uid: NODE}}
    })
}

fn launcher(pods: &Path, pod_uid: &str) -> FakeLauncher {
    FakeLauncher::start(
        pods,
        pod_uid,
        Script::serving(&payload("captured-domainstats-testvm.json"), "null", 0),
    )
}

/// Whether `/metrics` has a `kubevirt_vmi_*` sample of VMI `name`.
async fn has_series(base: &str, name: &str) -> bool {
    let body = get_text(&http_client(), &format!("{base}/metrics")).await.1;
    let label = format!("name=\"{name}\"");
    body.lines()
        .any(|l| l.starts_with("kubevirt_vmi_") && l.contains(&label))
}

#[tokio::test]
async fn vmi_series_appear_when_the_watch_syncs_and_when_a_vmi_starts_not_an_interval_later() {
    let pods = tempfile::Builder::new()
        .prefix("kv")
        .tempdir_in("/tmp")
        .unwrap();
    let _first = launcher(pods.path(), POD_FIRST);
    let _second = launcher(pods.path(), POD_SECOND);

    // The API server fails the VMI list at first: the first pass (at start) finds nothing.
    let api = FakeApi::start().await;
    api.serve_objects(vec![vmi("first", POD_FIRST)]);
    api.fail(VMIS, 500);

    let lister = WatchedVmis::start(api.client(), NODE);
    let settings = LauncherSettings {
        node_name: NODE.to_owned(),
        pods_dir: pods.path().to_path_buf(),
        max_concurrency: 2,
        vmi_timeout: Duration::from_secs(5),
        rpc: RpcTimeouts::default(),
    };
    let source = Arc::new(LauncherSource::with_lister(Arc::new(lister), settings));
    let collector: Arc<dyn Collector> = Arc::new(VmiCollector::new(source, INTERVAL));
    let mut common = args(Mode::Full);
    common.interval = INTERVAL;
    common.collection_timeout = Duration::from_secs(10);
    let running = runtime::start("virt-handler-metrics", &common, collector)
        .await
        .unwrap();
    let base = format!("http://{}", running.local_addr());
    wait_ready(&http_client(), &base).await;
    assert!(!has_series(&base, "first").await);

    // The list succeeds: the watch syncs, and the VMI's series follow without a tick.
    api.heal(VMIS);
    let healed = std::time::Instant::now();
    wait_until(FRESH_WITHIN, "series once the watch synced", || {
        has_series(&base, "first")
    })
    .await;
    eprintln!("series {:?} after the list succeeded", healed.elapsed());

    // A VMI starts running: its series follow too.
    wait_until(Duration::from_secs(10), "the VMI watch", || async {
        api.watching(VMIS) > 0
    })
    .await;
    assert!(!has_series(&base, "second").await);
    let started = std::time::Instant::now();
    api.push(VMIS, "ADDED", vmi("second", POD_SECOND));
    wait_until(FRESH_WITHIN, "series of the VMI that started", || {
        has_series(&base, "second")
    })
    .await;
    eprintln!("series {:?} after the VMI started", started.elapsed());
    assert!(has_series(&base, "first").await);

    running.stop().await.unwrap();
}
