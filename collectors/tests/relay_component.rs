//! The relays against a local HTTPS endpoint (certificate from a test CA, verified as with
//! `--component-ca`) that serves a KubeVirt-shaped virt-api or virt-operator exposition:
//! the families come out identical, byte for byte; backports fill only what is missing;
//! faults leave the sidecar serving and report a problem.

mod controller_support;
#[path = "server_support/mod.rs"]
mod server_support;

use std::time::Duration;

use controller_support::fake_api::FakeApi;
use controller_support::repo_root;
use kubevirt_metrics_collectors::core::collect::Collector;
use kubevirt_metrics_collectors::core::component::{self, ComponentClient, ComponentEndpoint};
use kubevirt_metrics_collectors::core::format::text;
use kubevirt_metrics_collectors::core::runtime;
use kubevirt_metrics_collectors::k8s::lease::LeaseReader;
use kubevirt_metrics_collectors::relay::{Backport, RelayCollector};
use kubevirt_metrics_flags::{CommonArgs, Mode};
use server_support::{FakeComponent, TestCa};
use tokio::time::Instant;

fn fixture(name: &str) -> String {
    std::fs::read_to_string(repo_root().join("testdata/controller/relay").join(name))
        .expect("relay fixture")
}

struct Setup {
    component: FakeComponent,
    _dir: tempfile::TempDir,
    ca_path: std::path::PathBuf,
}

async fn setup(body: String) -> Setup {
    let ca = TestCa::new("kubevirt-ca");
    let component = FakeComponent::start(&ca.leaf(), body).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_path = dir.path().join("ca.crt");
    std::fs::write(&ca_path, &ca.pem).expect("write CA");
    Setup {
        component,
        _dir: dir,
        ca_path,
    }
}

impl Setup {
    fn client(&self, timeout: Duration) -> ComponentClient {
        ComponentClient::new(&ComponentEndpoint {
            url: self.component.url(),
            ca: Some(self.ca_path.clone()),
            insecure_skip_verify: false,
            timeout,
        })
        .expect("client")
    }

    fn args(&self, mode: Mode) -> CommonArgs {
        CommonArgs {
            listen: Some("127.0.0.1:0".parse().expect("addr")),
            mode,
            component_metrics_url: self.component.url(),
            component_ca: Some(self.ca_path.clone()),
            interval: Duration::from_millis(200),
            collection_timeout: Duration::from_secs(2),
            ..CommonArgs::default()
        }
    }
}

fn deadline() -> Instant {
    Instant::now() + Duration::from_secs(5)
}

#[test]
fn fixtures_are_in_client_golang_form() {
    for name in ["virt-api.prom", "virt-operator.prom"] {
        let body = fixture(name);
        let families = component::parse(&body).expect("parses");
        assert_eq!(text::encode(&families), body, "{name} round-trips");
    }
}

#[tokio::test]
async fn relays_virt_api_unchanged() {
    let body = fixture("virt-api.prom");
    let setup = setup(body.clone()).await;
    let relay = RelayCollector::new(setup.client(Duration::from_secs(2)), Vec::new());
    let collection = relay.collect(deadline()).await;
    assert!(collection.problems.is_empty(), "{:?}", collection.problems);
    assert_eq!(
        collection.families,
        component::parse(&body).expect("parses")
    );
    assert_eq!(text::encode(&collection.families), body);
}

#[tokio::test]
async fn full_mode_serves_the_component_bytes_plus_self_metrics() {
    let body = fixture("virt-operator.prom");
    let setup = setup(body.clone()).await;
    let relay = RelayCollector::new(setup.client(Duration::from_secs(2)), Vec::new());
    let served = serve_until(
        "virt-operator-metrics",
        &setup.args(Mode::Full),
        relay,
        "kubevirt_configuration_emulation_enabled",
    )
    .await;
    let relayed: Vec<_> = component::parse(&served)
        .expect("served text parses")
        .into_iter()
        .filter(|f| !f.name.starts_with("kubevirt_metrics_sidecar_"))
        .collect();
    assert_eq!(text::encode(&relayed), body);
}

#[tokio::test]
async fn complement_mode_serves_only_the_backport() {
    let setup = setup(fixture("virt-api.prom")).await;
    let relay = RelayCollector::new(
        setup.client(Duration::from_secs(2)),
        vec![Backport::ApiReadyStatus],
    );
    let served = serve_until(
        "virt-api-metrics",
        &setup.args(Mode::Complement),
        relay,
        "kubevirt_virt_api_ready_status",
    )
    .await;
    let names: Vec<String> = server_support::type_names(&served)
        .into_iter()
        .filter(|n| !n.starts_with("kubevirt_metrics_sidecar_"))
        .collect();
    assert_eq!(names, ["kubevirt_virt_api_ready_status"]);
    // The complement check reuses the page the relay read: one read per pass, no probe.
    let value = |prefix: &str| server_support::sample_value(&served, prefix);
    assert_eq!(
        value("kubevirt_metrics_sidecar_component_scrapes_total"),
        value("kubevirt_metrics_sidecar_collections_total{result=\"ok\"}"),
        "{served}"
    );
    assert_eq!(
        value("kubevirt_metrics_sidecar_component_probes_total"),
        Some(0.0)
    );
    assert_eq!(
        setup
            .component
            .requests
            .load(std::sync::atomic::Ordering::SeqCst),
        setup
            .component
            .scrapes
            .load(std::sync::atomic::Ordering::SeqCst)
    );
    assert!(served.contains(
        "# HELP kubevirt_virt_api_ready_status Indication for a virt-api server that is ready to serve requests.\n\
         # TYPE kubevirt_virt_api_ready_status gauge\n\
         kubevirt_virt_api_ready_status 1\n"
    ));
}

#[tokio::test]
async fn a_backport_never_duplicates_what_the_component_serves() {
    // A v1.9.0 virt-api already serves its ready status (here 0, to tell the two apart).
    let served = fixture("virt-api.prom").replace(
        "# HELP kubevirt_vm_created_by_pod_total",
        "# HELP kubevirt_virt_api_ready_status Indication for a virt-api server that is ready to serve requests.\n\
         # TYPE kubevirt_virt_api_ready_status gauge\n\
         kubevirt_virt_api_ready_status 0\n\
         # HELP kubevirt_vm_created_by_pod_total",
    );
    let setup = setup(served).await;
    let relay = RelayCollector::new(
        setup.client(Duration::from_secs(2)),
        vec![Backport::ApiReadyStatus],
    );
    let out = text::encode(&relay.collect(deadline()).await.families);
    assert_eq!(out.matches("\nkubevirt_virt_api_ready_status ").count(), 1);
    assert!(out.contains("\nkubevirt_virt_api_ready_status 0\n"));
}

#[tokio::test]
async fn operator_leading_status_backport_follows_the_lease() {
    let setup = setup(fixture("virt-operator.prom")).await;
    let api = FakeApi::start().await;
    let lease = LeaseReader::new(
        api.client(),
        "kubevirt",
        "virt-operator",
        "virt-operator-a".into(),
    );
    let relay = RelayCollector::new(
        setup.client(Duration::from_secs(2)),
        vec![Backport::OperatorLeadingStatus(Box::new(lease))],
    );
    api.set_lease("virt-operator", Some("virt-operator-a"));
    let out = text::encode(&relay.collect(deadline()).await.families);
    assert!(out.contains(
        "# HELP kubevirt_virt_operator_leading_status Indication for an operating virt-operator.\n\
         # TYPE kubevirt_virt_operator_leading_status gauge\n\
         kubevirt_virt_operator_leading_status 1\n"
    ));
    api.set_lease("virt-operator", Some("virt-operator-b"));
    let out = text::encode(&relay.collect(deadline()).await.families);
    assert!(out.contains("\nkubevirt_virt_operator_leading_status 0\n"));

    // An unreadable Lease drops the backport for that pass and says why.
    api.fail_leases(Some(403));
    let collection = relay.collect(deadline()).await;
    assert!(!text::encode(&collection.families).contains("leading_status"));
    assert_eq!(collection.problems.len(), 1);
    assert_eq!(collection.problems[0].kind, "forbidden");
}

#[tokio::test]
async fn faults_are_reported_and_nothing_stale_is_relayed() {
    let setup = setup(fixture("virt-api.prom")).await;
    let relay = RelayCollector::new(
        setup.client(Duration::from_millis(500)),
        vec![Backport::ApiReadyStatus],
    );

    setup.component.set(|r| r.status = 500);
    let collection = relay.collect(deadline()).await;
    assert!(collection.families.is_empty());
    assert_eq!(collection.problems[0].kind, "status");

    setup.component.set(|r| {
        r.status = 200;
        r.body = "kubevirt_vnc_active_connections{namespace=\"a\" 1\n".to_owned();
    });
    let collection = relay.collect(deadline()).await;
    assert!(collection.families.is_empty());
    assert_eq!(collection.problems[0].kind, "parse");

    setup.component.set(|r| {
        r.body = fixture("virt-api.prom");
        r.delay = Duration::from_secs(3);
    });
    let started = Instant::now();
    let collection = relay.collect(Instant::now() + Duration::from_secs(1)).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the deadline holds"
    );
    assert!(collection.families.is_empty());
    assert_eq!(collection.problems[0].kind, "timeout");

    setup.component.set(|r| r.delay = Duration::ZERO);
    assert!(
        !relay.collect(deadline()).await.families.is_empty(),
        "recovers"
    );

    let _addr = setup.component.stop().await;
    let collection = relay.collect(deadline()).await;
    assert!(collection.families.is_empty());
    assert_eq!(collection.problems[0].kind, "connect");
}

/// Runs the relay as a sidecar, scrapes its /metrics until `needle` shows up (at most 5 s),
/// stops it and returns the last body served.
async fn serve_until(
    name: &'static str,
    args: &CommonArgs,
    relay: RelayCollector,
    needle: &str,
) -> String {
    let running = runtime::start(name, args, std::sync::Arc::new(relay))
        .await
        .expect("sidecar starts");
    let url = format!("http://{}/metrics", running.local_addr());
    let client = server_support::http_client();
    let mut served = String::new();
    for _ in 0..100 {
        served = server_support::get_text(&client, &url).await.1;
        if served.contains(needle) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    running.stop().await.expect("stops");
    served
}
