//! The InfluxDB sink's HTTP side against a recording endpoint: which URL, headers and bodies
//! it sends for 1.x and 2.x, how it cuts a batch into requests, and how each answer maps to
//! a retry decision. (The real InfluxDB reads the points back in e2e/tests/export_influx.rs.)

#![allow(clippy::unwrap_used)]

use std::io::Read as _;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use kubevirt_metrics_collectors::core::export::influx::{self, InfluxSink};
use kubevirt_metrics_collectors::core::export::{Batch, ConfigError, SendError, Sink};
use kubevirt_metrics_collectors::core::metric::{Family, MetricType, Sample};
use kubevirt_metrics_flags::{ExportArgs, InfluxPrecision};

#[derive(Debug, Clone)]
struct Request {
    uri: String,
    headers: HeaderMap,
    body: Vec<u8>,
}

#[derive(Clone)]
struct Endpoint {
    requests: Arc<Mutex<Vec<Request>>>,
    status: Arc<AtomicU16>,
}

async fn record(
    State(endpoint): State<Endpoint>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    endpoint.requests.lock().unwrap().push(Request {
        uri: uri.to_string(),
        headers,
        body: body.to_vec(),
    });
    let status = StatusCode::from_u16(endpoint.status.load(Ordering::SeqCst)).unwrap();
    let body = if status.is_success() {
        String::new()
    } else {
        format!(
            "{{\"error\":\"unable to parse 'bad line': answered {}\"}}",
            status.as_u16()
        )
    };
    (status, body)
}

/// A recording endpoint answering every request with the status in `status`.
async fn endpoint() -> (String, Endpoint) {
    let endpoint = Endpoint {
        requests: Arc::default(),
        status: Arc::new(AtomicU16::new(204)),
    };
    let app = Router::new().fallback(record).with_state(endpoint.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, endpoint)
}

fn args(url: &str) -> ExportArgs {
    ExportArgs {
        influx_url: Some(url.to_owned()),
        influx_db: Some("kube virt".to_owned()),
        push_timeout: Duration::from_secs(5),
        ..ExportArgs::default()
    }
}

fn batch(samples: usize) -> Batch {
    let mut family = Family::new("kubevirt_vmi_vcpu_seconds_total", "", MetricType::Counter);
    for i in 0..samples {
        family.samples.push(Sample::new(
            vec![
                (("id").into(), i.to_string().into()),
                (("name").into(), ("testvm").into()),
            ],
            i as f64 + 0.5,
        ));
    }
    Batch {
        families: Arc::new(vec![family]),
        collected_at: UNIX_EPOCH + Duration::from_secs(1_800_000_000),
    }
}

fn sink(args: &ExportArgs) -> InfluxSink {
    InfluxSink::from_args(args).unwrap().expect("a sink")
}

fn config_error(args: &ExportArgs) -> String {
    match InfluxSink::from_args(args) {
        Err(err) => err.to_string(),
        Ok(_) => panic!("accepted {args:?}"),
    }
}

#[test]
fn no_url_no_sink_and_bad_flags_are_refused() {
    assert!(influx::from_args(&ExportArgs::default()).unwrap().is_none());
    let mut no_target = args("http://influx:8086");
    no_target.influx_db = None;
    assert!(config_error(&no_target).contains("--influx-db"));
    let mut both = args("http://influx:8086");
    both.influx_org = Some("ops".to_owned());
    both.influx_bucket = Some("b".to_owned());
    assert!(config_error(&both).starts_with("--influx-db"));
    assert!(config_error(&args("ftp://influx")).contains("http://"));
    assert!(config_error(&args("not a url")).starts_with("--influx-url"));
    assert!(config_error(&args("http://influx:8086/?db=x")).contains("query"));
    let mut missing_token = args("http://influx:8086");
    missing_token.influx_token_file = Some("/nonexistent/token".into());
    assert!(matches!(
        InfluxSink::from_args(&missing_token),
        Err(ConfigError::File { .. })
    ));
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    let mut empty_token = args("http://influx:8086");
    empty_token.influx_token_file = Some(empty);
    assert!(config_error(&empty_token).contains("empty"));
}

#[test]
fn write_urls_for_1x_and_2x() {
    let mut v1 = args("http://influx:8086");
    v1.influx_precision = InfluxPrecision::Us;
    assert_eq!(
        sink(&v1).write_url().as_str(),
        "http://influx:8086/write?db=kube+virt&precision=u"
    );
    let v2 = ExportArgs {
        influx_url: Some("https://proxy.example/influx/".to_owned()),
        influx_org: Some("ops & co".to_owned()),
        influx_bucket: Some("kubevirt".to_owned()),
        influx_precision: InfluxPrecision::Us,
        ..ExportArgs::default()
    };
    assert_eq!(
        sink(&v2).write_url().as_str(),
        "https://proxy.example/influx/api/v2/write?org=ops+%26+co&bucket=kubevirt&precision=us"
    );
}

#[tokio::test]
async fn posts_line_protocol_with_token_and_gzip_in_chunks() {
    let (url, endpoint) = endpoint().await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cr3t\n").unwrap();
    let mut args = args(&url);
    args.influx_token_file = Some(token);
    args.influx_gzip = true;
    args.influx_precision = InfluxPrecision::S;
    let sink = sink(&args).with_lines_per_request(4);
    assert_eq!(sink.name(), "influx");
    sink.send(&batch(10)).await.unwrap();

    let requests = endpoint.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 3, "10 points in requests of 4");
    let mut text = String::new();
    for request in &requests {
        assert_eq!(request.uri, "/write?db=kube+virt&precision=s");
        assert_eq!(request.headers["authorization"], "Token s3cr3t");
        assert_eq!(request.headers["content-encoding"], "gzip");
        assert!(
            request.headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/plain")
        );
        flate2::read::GzDecoder::new(&request.body[..])
            .read_to_string(&mut text)
            .unwrap();
    }
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 10);
    assert_eq!(
        lines[0],
        "kubevirt_vmi_vcpu_seconds_total,id=0,name=testvm value=0.5 1800000000"
    );
    assert_eq!(
        lines[9],
        "kubevirt_vmi_vcpu_seconds_total,id=9,name=testvm value=9.5 1800000000"
    );
}

#[tokio::test]
async fn answers_map_to_retry_decisions() {
    let (url, endpoint) = endpoint().await;
    let sink = sink(&args(&url));
    let cases = [
        (204, None),
        (200, None),
        (400, Some(false)),
        (401, Some(false)),
        (404, Some(false)),
        (413, Some(false)),
        (429, Some(true)),
        (500, Some(true)),
        (503, Some(true)),
    ];
    for (status, retryable) in cases {
        endpoint.status.store(status, Ordering::SeqCst);
        let result = sink.send(&batch(2)).await;
        match (retryable, result) {
            (None, Ok(())) => {}
            (Some(true), Err(SendError::Retryable(message))) => {
                assert!(message.contains(&status.to_string()), "{message}");
            }
            (Some(false), Err(SendError::Permanent(message))) => {
                // InfluxDB's error body names the bad line: it reaches the log.
                assert!(message.contains("unable to parse 'bad line'"), "{message}");
            }
            (expected, got) => panic!("status {status}: expected {expected:?}, got {got:?}"),
        }
    }
}

#[tokio::test]
async fn a_rejected_request_does_not_stop_the_others() {
    let (url, endpoint) = endpoint().await;
    endpoint.status.store(400, Ordering::SeqCst);
    let sink = sink(&args(&url)).with_lines_per_request(1);
    let result = sink.send(&batch(3)).await;
    assert!(matches!(result, Err(SendError::Permanent(_))), "{result:?}");
    assert_eq!(endpoint.requests.lock().unwrap().len(), 3);

    endpoint.requests.lock().unwrap().clear();
    endpoint.status.store(503, Ordering::SeqCst);
    let result = sink.send(&batch(3)).await;
    assert!(matches!(result, Err(SendError::Retryable(_))), "{result:?}");
    assert_eq!(
        endpoint.requests.lock().unwrap().len(),
        1,
        "the batch is retried as a whole"
    );
}

#[tokio::test]
async fn no_endpoint_is_retryable() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let result = sink(&args(&url)).send(&batch(1)).await;
    match result {
        Err(SendError::Retryable(message)) => {
            assert!(message.to_lowercase().contains("connect"), "{message}")
        }
        other => panic!("expected Retryable, got {other:?}"),
    }
}
