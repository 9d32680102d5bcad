//! HTTPS with a serving certificate from files, reloaded when the files change (as a
//! rotated Secret volume does), a bad replacement keeping the previous certificate.

#![allow(clippy::unwrap_used)]

mod server_support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use kubevirt_metrics_collectors::core::runtime;
use kubevirt_metrics_flags::Mode;
use server_support::*;

async fn answers(client: &reqwest::Client, url: &str) -> bool {
    matches!(client.get(url).send().await, Ok(r) if r.status() == 200)
}

fn write_pair(dir: &Path, leaf: &Leaf) {
    replace_file(&dir.join("tls.crt"), &leaf.cert_pem);
    replace_file(&dir.join("tls.key"), &leaf.key_pem);
}

#[tokio::test]
async fn serves_https_and_reloads_a_rotated_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (ca_a, ca_b) = (TestCa::new("ca-a"), TestCa::new("ca-b"));
    let (leaf_a, leaf_b) = (ca_a.leaf(), ca_b.leaf());
    write_pair(dir.path(), &leaf_a);

    let mut common = args(Mode::Full);
    common.tls_cert = Some(dir.path().join("tls.crt"));
    common.tls_key = Some(dir.path().join("tls.key"));
    let collector = Arc::new(ScriptedCollector::new(kubevirt_families()));
    let running = runtime::start("test-metrics", &common, collector)
        .await
        .unwrap();
    let base = format!("https://{}", running.local_addr());
    let (trusts_a, trusts_b) = (https_client(&ca_a.pem), https_client(&ca_b.pem));
    let healthz = format!("{base}/healthz");

    wait_until(Duration::from_secs(10), "readiness over HTTPS", || async {
        matches!(trusts_a.get(format!("{base}/readyz")).send().await, Ok(r) if r.status() == 200)
    })
    .await;
    let (status, body) = get_text(&trusts_a, &format!("{base}/metrics")).await;
    assert_eq!(status, 200);
    assert!(body.contains("kubevirt_vmi_network_receive_bytes_total{"));
    assert!(!answers(&trusts_b, &format!("{base}/healthz")).await);

    // Plain HTTP to the HTTPS port: that connection fails, the server carries on.
    let plain = http_client()
        .get(format!("http://{}/healthz", running.local_addr()))
        .send()
        .await;
    assert!(plain.map(|r| r.status() != 200).unwrap_or(true));

    // Rotation: new files renamed over the old ones. The next handshake presents B.
    write_pair(dir.path(), &leaf_b);
    wait_until(Duration::from_secs(5), "the rotated certificate", || {
        answers(&trusts_b, &healthz)
    })
    .await;
    assert!(!answers(&trusts_a, &format!("{base}/healthz")).await);

    // A broken certificate file: B stays in service.
    replace_file(
        &dir.path().join("tls.crt"),
        "-----BEGIN CERTIFICATE-----\nnot base64\n",
    );
    assert!(answers(&trusts_b, &format!("{base}/healthz")).await);
    // A half-done rotation, new certificate with the old key: B stays in service.
    let leaf_c = ca_a.leaf();
    replace_file(&dir.path().join("tls.crt"), &leaf_c.cert_pem);
    assert!(answers(&trusts_b, &format!("{base}/healthz")).await);
    assert!(!answers(&trusts_a, &format!("{base}/healthz")).await);
    // The key arrives: C (signed by CA A) is served.
    replace_file(&dir.path().join("tls.key"), &leaf_c.key_pem);
    wait_until(Duration::from_secs(5), "the completed rotation", || {
        answers(&trusts_a, &healthz)
    })
    .await;
    // Files briefly missing (a rotation in progress): C stays in service.
    std::fs::remove_file(dir.path().join("tls.crt")).unwrap();
    assert!(answers(&trusts_a, &format!("{base}/healthz")).await);

    running.stop().await.unwrap();
}

#[tokio::test]
async fn a_bad_certificate_at_start_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let leaf = TestCa::new("ca").leaf();
    let other = TestCa::new("ca").leaf();
    let collector = Arc::new(ScriptedCollector::new(Vec::new()));
    let mut common = args(Mode::Full);
    common.tls_cert = Some(dir.path().join("tls.crt"));
    common.tls_key = Some(dir.path().join("tls.key"));

    // Missing files.
    let error = runtime::start("test-metrics", &common, collector.clone())
        .await
        .unwrap_err();
    assert!(error.to_string().contains("tls.crt"), "{error}");

    // Certificate and key that do not belong together.
    replace_file(&dir.path().join("tls.crt"), &leaf.cert_pem);
    replace_file(&dir.path().join("tls.key"), &other.key_pem);
    let error = runtime::start("test-metrics", &common, collector.clone())
        .await
        .unwrap_err();
    assert!(error.to_string().contains("usable pair"), "{error}");

    // Only one of the two flags.
    common.tls_key = None;
    let error = runtime::start("test-metrics", &common, collector)
        .await
        .unwrap_err();
    assert!(
        matches!(error, runtime::RuntimeError::IncompleteTls),
        "{error}"
    );
}
