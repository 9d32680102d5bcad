//! `run_with_client` wiring against a mock API server: the CRD check, discovery, the
//! watches it opens, the HTTP endpoint, and graceful shutdown.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use http::{Request, Response};
use kube::Client;
use kube::client::Body;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use kubevirt_metrics_operator::controller::{Error, RunConfig, run_with_client};

async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).await.unwrap();
    let code = out[9..12].parse().unwrap();
    (
        code,
        out.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned(),
    )
}

fn reply(code: u16, body: &serde_json::Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap()
}

/// What the mock API server makes of the policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Policies {
    /// An empty list.
    Listed,
    /// The CRD check is answered, the controller's own list never is (a slow API server).
    ListNeverAnswered,
    /// 404: the CRD is not installed.
    CrdMissing,
}

/// Answers lists with empty lists, discovery of HCO with 404, and leaves watches hanging
/// (as a real long-poll). `listing` hears when the controller lists the policies. Returns
/// every request line once the client is gone.
fn responder(
    mut handle: tower_test::mock::Handle<Request<Body>, Response<Body>>,
    policies: Policies,
    listing: Option<tokio::sync::oneshot::Sender<()>>,
) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let mut seen = Vec::new();
        let mut hanging = Vec::new();
        let mut listing = listing;
        while let Some((request, send)) = handle.next_request().await {
            let uri = request.uri().to_string();
            seen.push(format!("{} {uri}", request.method()));
            let not_found = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "metadata": {}});
            let policy_list = uri.contains("metricssidecarpolicies") && !uri.contains("watch=true");
            let crd_check = policy_list && uri.ends_with("limit=1");
            if policy_list
                && !crd_check
                && let Some(listing) = listing.take()
            {
                let _ = listing.send(());
            }
            if uri.starts_with("/apis/hco.kubevirt.io")
                || (policies == Policies::CrdMissing && uri.contains("metricssidecarpolicies"))
            {
                send.send_response(reply(404, &not_found));
            } else if uri.contains("watch=true")
                || (policies == Policies::ListNeverAnswered && policy_list && !crd_check)
            {
                hanging.push(send);
            } else {
                send.send_response(reply(
                    200,
                    &json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": []}),
                ));
            }
        }
        drop(hanging);
        seen
    })
}

fn config() -> RunConfig {
    RunConfig {
        namespace: Some("kubevirt".into()),
        http_address: "127.0.0.1:0".parse().unwrap(),
        leader_election: false,
        ..RunConfig::default()
    }
}

#[tokio::test]
async fn run_serves_health_and_metrics_then_stops_gracefully() {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let requests = responder(handle, Policies::Listed, None);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (bound_tx, bound_rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(run_with_client(
        Client::new(service, "default"),
        config(),
        async {
            let _ = stopped.await;
        },
        Some(bound_tx),
    ));
    let addr = bound_rx.await.unwrap();

    let mut ready = 0;
    for _ in 0..50 {
        ready = http_get(addr, "/readyz").await.0;
        if ready == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ready, 200);
    assert_eq!(http_get(addr, "/healthz").await.0, 200);
    let (code, metrics) = http_get(addr, "/metrics").await;
    assert_eq!(code, 200);
    assert!(
        metrics.contains("kubevirt_metrics_operator_leader 1"),
        "{metrics}"
    );
    // Let the watchers start before stopping.
    tokio::time::sleep(Duration::from_millis(500)).await;

    stop.send(()).unwrap();
    let result = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("graceful stop in time");
    result.unwrap().unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(5), requests)
        .await
        .expect("every client clone dropped after the stop")
        .unwrap();

    assert_eq!(
        seen[0],
        "GET /apis/metrics.kubevirt.io/v1alpha1/namespaces/kubevirt/metricssidecarpolicies?&limit=1"
    );
    assert_eq!(seen[1], "GET /apis/hco.kubevirt.io/v1beta1");
    let watched = |needle: &str| {
        seen.iter()
            .any(|line| line.contains(needle) && line.contains("watch=true"))
    };
    assert!(
        watched("/namespaces/kubevirt/metricssidecarpolicies"),
        "{seen:#?}"
    );
    assert!(
        watched("/apis/kubevirt.io/v1/namespaces/kubevirt/kubevirts"),
        "{seen:#?}"
    );
    let watched_with = |path: &str, selector: &str| {
        seen.iter()
            .any(|l| l.contains(path) && l.contains(selector) && l.contains("watch=true"))
    };
    assert!(
        watched_with(
            "/apis/apps/v1/namespaces/kubevirt/daemonsets?",
            "labelSelector=kubevirt.io%3Dvirt-handler&"
        ),
        "{seen:#?}"
    );
    assert!(
        watched_with(
            "/apis/apps/v1/namespaces/kubevirt/deployments?",
            "labelSelector=kubevirt.io+in+%28virt-controller%2Cvirt-api%2Cvirt-operator%29&"
        ),
        "{seen:#?}"
    );
    assert!(
        !seen.iter().any(|l| l.contains("hyperconvergeds")),
        "no HCO watch without its CRD: {seen:#?}"
    );
    assert!(
        !seen.iter().any(|l| !l.starts_with("GET ")),
        "only reads with no policies: {seen:#?}"
    );
}

#[tokio::test]
async fn run_fails_fast_without_the_crd() {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let requests = responder(handle, Policies::CrdMissing, None);
    let result = tokio::time::timeout(
        Duration::from_secs(10),
        run_with_client(
            Client::new(service, "default"),
            config(),
            std::future::pending(),
            None,
        ),
    )
    .await
    .expect("returns promptly");
    assert!(
        matches!(result, Err(Error::CrdNotInstalled(_))),
        "{result:?}"
    );
    let seen = requests.await.unwrap();
    assert_eq!(seen.len(), 1, "{seen:#?}");
}

/// A stop that comes before the controller's first list of policies has arrived: the
/// controller has nothing running and must not wait for the list (kube-runtime's own
/// graceful shutdown would wait for ever). The grace period is longer than the test's
/// hang guard, so passing proves the operator did not sit out the grace period either.
#[tokio::test]
async fn a_stop_before_the_first_list_arrives_stops_at_once() {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let (listing_tx, listing) = tokio::sync::oneshot::channel();
    let requests = responder(handle, Policies::ListNeverAnswered, Some(listing_tx));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(run_with_client(
        Client::new(service, "default"),
        RunConfig {
            shutdown_grace: Duration::from_secs(600),
            ..config()
        },
        async {
            let _ = stopped.await;
        },
        None,
    ));
    tokio::time::timeout(Duration::from_secs(10), listing)
        .await
        .expect("the controller lists the policies")
        .unwrap();

    stop.send(()).unwrap();
    let result = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("stops without waiting for the list or the grace period");
    result.unwrap().unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(5), requests)
        .await
        .expect("every client clone dropped after the stop")
        .unwrap();
    assert!(
        !seen.iter().any(|l| !l.starts_with("GET ")),
        "nothing written: {seen:#?}"
    );
}
