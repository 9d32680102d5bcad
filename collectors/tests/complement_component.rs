//! Complement mode against a fake co-located component: an HTTPS server on 127.0.0.1 that
//! serves a KubeVirt-shaped virt-handler exposition (`testdata/component/`), verified with
//! its CA as `--component-ca` does.

#![allow(clippy::unwrap_used)]

mod server_support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use kubevirt_metrics_collectors::core::component::{self, ComponentClient, ComponentEndpoint};
use kubevirt_metrics_collectors::core::format::text;
use kubevirt_metrics_collectors::core::metric::Family;
use kubevirt_metrics_collectors::core::runtime;
use kubevirt_metrics_flags::{CommonArgs, Mode};
use server_support::*;

const SELF_PREFIX: &str = "kubevirt_metrics_sidecar_";
/// In the fixture.
const SERVED_GAUGE: &str = "kubevirt_vmi_memory_resident_bytes";
const SERVED_COUNTER: &str = "kubevirt_vmi_network_receive_bytes_total";
/// Left out of the fixture on purpose (an older KubeVirt).
const MISSING: &str = "kubevirt_vmi_dirty_rate_bytes_per_second";

/// What the sidecar's collector produces: two families the component serves, one it lacks.
fn sidecar_families() -> Vec<Family> {
    let mut counter = kubevirt_families().remove(0);
    assert_eq!(counter.name, SERVED_COUNTER);
    counter.samples.truncate(1);
    vec![
        vmi_gauge(
            SERVED_GAUGE,
            "Resident set size of the process running the domain.",
        ),
        counter,
        vmi_gauge(MISSING, "Guest dirty-rate in bytes per second."),
    ]
}

fn complement_args(component: &FakeComponent, ca: &std::path::Path) -> CommonArgs {
    let mut common = args(Mode::Complement);
    common.component_metrics_url = component.url();
    common.component_ca = Some(ca.to_owned());
    common
}

fn collector_family_names(body: &str) -> Vec<String> {
    type_names(body)
        .into_iter()
        .filter(|n| !n.starts_with(SELF_PREFIX))
        .collect()
}

async fn metrics(base: &str) -> String {
    get_text(&http_client(), &format!("{base}/metrics")).await.1
}

fn fixture_family_count() -> usize {
    component::parse(&component_fixture()).unwrap().len()
}

#[test]
fn the_fixture_parses_and_encodes_back_to_the_same_bytes() {
    let fixture = component_fixture();
    let families = component::parse(&fixture).unwrap();
    assert_eq!(families.len(), 101);
    assert!(families.iter().all(|f| f.name != MISSING));
    // Relays re-serve the component unchanged: parse + text encoder is the identity.
    assert_eq!(text::encode(&families), fixture);
}

#[tokio::test]
async fn client_fetches_and_parses_the_component_over_verified_https() {
    let ca = TestCa::new("kubevirt-ca");
    let fake = FakeComponent::start(&ca.leaf(), component_fixture()).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.crt");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let endpoint = ComponentEndpoint {
        url: fake.url(),
        ca: Some(ca_file),
        insecure_skip_verify: false,
        timeout: Duration::from_secs(5),
    };
    let client = ComponentClient::new(&endpoint).unwrap();
    let families = client.fetch().await.unwrap();
    assert_eq!(families, component::parse(&component_fixture()).unwrap());
    let names = client.served_families().await.unwrap();
    let parsed: std::collections::BTreeSet<String> =
        families.iter().map(|f| f.name.to_string()).collect();
    assert_eq!(names, parsed);
    assert!(names.contains(SERVED_GAUGE) && names.contains(SERVED_COUNTER));
    assert!(!names.contains(MISSING));

    // Errors come back as values with a bounded kind.
    fake.set(|r| r.status = 503);
    let error = client.fetch().await.unwrap_err();
    assert_eq!(error.kind(), "status", "{error}");
    fake.set(|r| {
        r.status = 200;
        r.body = "kubevirt_ok 1\nkubevirt_broken{ 1\n".to_owned();
    });
    let error = client.fetch().await.unwrap_err();
    assert_eq!(error.kind(), "parse", "{error}");
    assert!(error.to_string().contains("line 2"), "{error}");
    fake.set(|r| {
        r.body = component_fixture();
        r.delay = Duration::from_secs(3);
    });
    let quick = ComponentClient::new(&ComponentEndpoint {
        timeout: Duration::from_millis(300),
        ..endpoint.clone()
    })
    .unwrap();
    let error = quick.fetch().await.unwrap_err();
    assert_eq!(error.kind(), "timeout", "{error}");

    // Without the CA (public roots only), KubeVirt's self-signed certificate is refused;
    // with --component-insecure-skip-verify it is accepted.
    fake.set(|r| r.delay = Duration::ZERO);
    let untrusting = ComponentClient::new(&ComponentEndpoint {
        ca: None,
        ..endpoint.clone()
    })
    .unwrap();
    assert_eq!(untrusting.fetch().await.unwrap_err().kind(), "connect");
    let insecure = ComponentClient::new(&ComponentEndpoint {
        ca: None,
        insecure_skip_verify: true,
        ..endpoint.clone()
    })
    .unwrap();
    assert_eq!(
        insecure.fetch().await.unwrap().len(),
        fixture_family_count()
    );

    // A CA file that is not a certificate is a configuration error.
    let bad_ca = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(bad_ca.path(), "not a pem").unwrap();
    let error = ComponentClient::new(&ComponentEndpoint {
        ca: Some(bad_ca.path().to_owned()),
        ..endpoint
    })
    .unwrap_err();
    assert_eq!(error.kind(), "config", "{error}");
    fake.stop().await;
}

#[tokio::test]
async fn complement_publishes_only_what_the_component_lacks_and_keeps_that_when_it_is_down() {
    let ca = TestCa::new("kubevirt-ca");
    let leaf = ca.leaf();
    let fake = FakeComponent::start(&leaf, component_fixture()).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.crt");
    std::fs::write(&ca_file, &ca.pem).unwrap();

    let collector = Arc::new(ScriptedCollector::new(sidecar_families()));
    let running = runtime::start(
        "virt-handler-metrics",
        &complement_args(&fake, &ca_file),
        collector,
    )
    .await
    .unwrap();
    let base = format!("http://{}", running.local_addr());
    let client = http_client();
    wait_ready(&client, &base).await;

    let body = metrics(&base).await;
    assert_eq!(collector_family_names(&body), [MISSING]);
    assert_eq!(
        sample_value(&body, "kubevirt_metrics_sidecar_withheld_families"),
        Some(2.0)
    );
    assert_eq!(
        sample_value(&body, "kubevirt_metrics_sidecar_component_families"),
        Some(fixture_family_count() as f64)
    );
    // The family it fills in is exactly what the collector produced.
    let mine: Vec<Family> = sidecar_families()
        .into_iter()
        .filter(|f| f.name == MISSING)
        .collect();
    for line in text::encode(&mine).lines() {
        assert!(body.lines().any(|l| l == line), "missing {line:?}");
    }

    // The component goes away: its families stay withheld (the last known set is kept),
    // and the failures are counted.
    let addr = fake.stop().await;
    wait_until(
        Duration::from_secs(10),
        "a failed component check",
        || async {
            sample_value(
                &metrics(&base).await,
                "kubevirt_metrics_sidecar_component_check_failures_total{kind=\"connect\"}",
            )
            .is_some()
        },
    )
    .await;
    let body = metrics(&base).await;
    assert_eq!(collector_family_names(&body), [MISSING]);

    // It comes back serving fewer families (no VMI running, so no kubevirt_vmi_memory_*):
    // a family it served before stays withheld, so a VMI starting between two checks can
    // never make the same series appear twice.
    let without_memory: String = component_fixture()
        .lines()
        .filter(|l| !l.contains(SERVED_GAUGE))
        .map(|l| format!("{l}\n"))
        .collect();
    let back = FakeComponent::start_on(addr, &leaf, without_memory).await;
    let requests_before = back.requests.load(Ordering::SeqCst);
    wait_until(
        Duration::from_secs(10),
        "the component to be asked again",
        || async { back.requests.load(Ordering::SeqCst) > requests_before + 1 },
    )
    .await;
    let body = metrics(&base).await;
    assert_eq!(collector_family_names(&body), [MISSING]);

    running.stop().await.unwrap();
    back.stop().await;
}

#[tokio::test]
async fn nothing_of_the_collector_is_published_before_the_component_first_answers() {
    let ca = TestCa::new("kubevirt-ca");
    let fake = FakeComponent::start(&ca.leaf(), component_fixture()).await;
    fake.set(|r| r.status = 500);
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.crt");
    std::fs::write(&ca_file, &ca.pem).unwrap();

    let collector = Arc::new(ScriptedCollector::new(sidecar_families()));
    let running = runtime::start(
        "virt-handler-metrics",
        &complement_args(&fake, &ca_file),
        collector,
    )
    .await
    .unwrap();
    let base = format!("http://{}", running.local_addr());
    wait_until(Duration::from_secs(10), "a failed check", || async {
        sample_value(
            &metrics(&base).await,
            "kubevirt_metrics_sidecar_component_check_failures_total{kind=\"status\"}",
        )
        .is_some()
    })
    .await;
    assert_eq!(
        get_text(&http_client(), &format!("{base}/readyz")).await.0,
        200
    );
    assert!(collector_family_names(&metrics(&base).await).is_empty());

    fake.set(|r| r.status = 200);
    wait_until(
        Duration::from_secs(10),
        "the first successful check",
        || async { collector_family_names(&metrics(&base).await) == [MISSING] },
    )
    .await;
    running.stop().await.unwrap();
    fake.stop().await;
}

#[tokio::test]
async fn full_mode_never_asks_the_component() {
    let ca = TestCa::new("kubevirt-ca");
    let fake = FakeComponent::start(&ca.leaf(), component_fixture()).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.crt");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let mut common = complement_args(&fake, &ca_file);
    common.mode = Mode::Full;

    let collector = Arc::new(ScriptedCollector::new(sidecar_families()));
    let running = runtime::start("virt-handler-metrics", &common, collector.clone())
        .await
        .unwrap();
    let base = format!("http://{}", running.local_addr());
    wait_until(Duration::from_secs(10), "two passes", || async {
        collector.calls.load(Ordering::SeqCst) >= 2
    })
    .await;
    let mut names = collector_family_names(&metrics(&base).await);
    names.sort();
    assert_eq!(names, [MISSING, SERVED_GAUGE, SERVED_COUNTER]);
    assert_eq!(fake.requests.load(Ordering::SeqCst), 0);
    running.stop().await.unwrap();
    fake.stop().await;
}

/// Passes of `collector` from now until `passes` more have run.
async fn wait_passes(collector: &ScriptedCollector, passes: usize) {
    let target = collector.calls.load(Ordering::SeqCst) + passes;
    wait_until(Duration::from_secs(20), "more passes", || async {
        collector.calls.load(Ordering::SeqCst) >= target
    })
    .await;
}

#[tokio::test]
async fn the_component_page_is_read_once_per_recheck_period_and_again_when_it_restarts_or_reconfigures()
 {
    let ca = TestCa::new("kubevirt-ca");
    let leaf = ca.leaf();
    let fake = FakeComponent::start(&leaf, component_fixture()).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.crt");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let mut common = complement_args(&fake, &ca_file);
    common.interval = Duration::from_millis(50);
    common.component_recheck_interval = Duration::from_secs(3600);

    let collector = Arc::new(ScriptedCollector::new(sidecar_families()));
    let running = runtime::start("virt-handler-metrics", &common, collector.clone())
        .await
        .unwrap();
    let base = format!("http://{}", running.local_addr());
    wait_ready(&http_client(), &base).await;

    // Steady state: 40 passes (two seconds at 50 ms), one read of the page; the cheap
    // /healthz every pass.
    wait_passes(&collector, 40).await;
    assert_eq!(fake.scrapes.load(Ordering::SeqCst), 1);
    let body = metrics(&base).await;
    assert_eq!(collector_family_names(&body), [MISSING]);
    assert_eq!(
        sample_value(&body, "kubevirt_metrics_sidecar_component_scrapes_total"),
        Some(1.0)
    );
    assert!(
        sample_value(&body, "kubevirt_metrics_sidecar_component_probes_total")
            .is_some_and(|probes| probes >= 30.0),
        "{body}"
    );

    // The component loads a new configuration (its /healthz says so): read once more.
    fake.set(|r| r.healthz = healthz_body("2"));
    wait_until(
        Duration::from_secs(10),
        "a re-read after the change",
        || async { fake.scrapes.load(Ordering::SeqCst) == 2 },
    )
    .await;
    wait_passes(&collector, 30).await;
    assert_eq!(fake.scrapes.load(Ordering::SeqCst), 2);

    // It restarts (unreachable for a while, then back): read once when it is back.
    let addr = fake.stop().await;
    wait_until(Duration::from_secs(10), "a failed probe", || async {
        sample_value(
            &metrics(&base).await,
            "kubevirt_metrics_sidecar_component_check_failures_total{kind=\"connect\"}",
        )
        .is_some()
    })
    .await;
    let back = FakeComponent::start_on(addr, &leaf, component_fixture()).await;
    back.set(|r| r.healthz = healthz_body("2"));
    wait_until(
        Duration::from_secs(10),
        "a re-read after the restart",
        || async { back.scrapes.load(Ordering::SeqCst) == 1 },
    )
    .await;
    wait_passes(&collector, 30).await;
    assert_eq!(back.scrapes.load(Ordering::SeqCst), 1);
    let body = metrics(&base).await;
    assert_eq!(
        sample_value(&body, "kubevirt_metrics_sidecar_component_scrapes_total"),
        Some(3.0)
    );
    assert_eq!(collector_family_names(&body), [MISSING]);

    running.stop().await.unwrap();
    back.stop().await;
}
