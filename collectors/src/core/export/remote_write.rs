//! Prometheus remote-write 1.0 push (`--remote-write-url`), as the specification
//! (<https://prometheus.io/docs/specs/remote_write_spec/>) says: a protobuf `WriteRequest`
//! (Prometheus's `prompb/remote.proto` and `types.proto`), snappy block-compressed, `POST`ed
//! with `Content-Encoding: snappy`, `Content-Type: application/x-protobuf` and
//! `X-Prometheus-Remote-Write-Version: 0.1.0`.
//!
//! The series are exactly those `/metrics` shows: `__name__` is the family name plus the
//! sample's suffix (so a histogram leaves as its `_bucket`/`_sum`/`_count` series, a
//! summary as its quantile, `_sum` and `_count` series), then the labels, sorted by name as
//! the specification requires; empty label values are left out (Prometheus treats them as
//! absent). Each sample keeps its own timestamp or gets the batch's collection time.
//!
//! Authentication: `--remote-write-bearer-token-file` or `--remote-write-username` with
//! `--remote-write-password-file`; both files are read again on every push, so a rotated
//! secret takes effect without a restart. TLS comes from the shared client
//! ([`super::http::client`]).
//!
//! Samples that carry their own timestamp (KubeVirt's migration samples) are sent once:
//! only when newer than the last one this sink delivered for the series, and never when
//! older than the sink's start. `/metrics` repeats them every pass, but a receiver rejects a
//! sample older than the newest of its series, and Prometheus then refuses the whole request
//! (HTTP 400), which would lose every series of every pass after the first.
//!
//! Status handling (the specification's "Retries & Backoff"): 2xx is success; 429 and 5xx
//! (and no connection, a timeout) are retried; any other 4xx drops the batch.
//!
//! The protobuf messages are written by hand with `prost` derives (field numbers and types
//! from Prometheus's published protos; only what 1.0 senders fill in: no metadata,
//! exemplars or native histograms).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use futures::FutureExt;
use futures::future::BoxFuture;
use kubevirt_metrics_flags::ExportArgs;
use prost::Message;

use super::http::{client, is_retryable, read};
use super::{Batch, ConfigError, SendError, Sink};
use crate::core::error_chain;
use crate::core::metric::client_golang_order;

const FLAG: &str = "--remote-write-url";
/// How much of a rejecting endpoint's answer goes into the log.
const ERROR_BODY_LIMIT: usize = 512;

/// `prometheus.WriteRequest` (remote.proto); field 2 is reserved, 3 (metadata) unused here.
#[derive(Clone, PartialEq, Message)]
pub struct WriteRequest {
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
}

/// `prometheus.TimeSeries` (types.proto): labels sorted by name, samples in time order.
#[derive(Clone, PartialEq, Message)]
pub struct TimeSeries {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
}

/// `prometheus.Label`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Message)]
pub struct Label {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `prometheus.Sample`: a value and its time in milliseconds since the epoch.
#[derive(Clone, PartialEq, Message)]
pub struct Sample {
    #[prost(double, tag = "1")]
    pub value: f64,
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

/// How the sink authenticates.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Auth {
    None,
    Bearer {
        token_file: PathBuf,
    },
    Basic {
        username: String,
        password_file: PathBuf,
    },
}

/// The remote-write sink.
pub struct RemoteWrite {
    url: reqwest::Url,
    client: reqwest::Client,
    auth: Auth,
    /// No sample with its own timestamp older than this (ms) is sent.
    started_ms: i64,
    /// Per series with own timestamps, the newest timestamp delivered.
    delivered: Mutex<Delivered>,
}

/// The newest own timestamp delivered per series (by its sorted labels).
pub type Delivered = HashMap<Vec<Label>, i64>;

/// The remote-write sink `args` ask for, if any.
pub fn from_args(args: &ExportArgs) -> Result<Option<Box<dyn Sink>>, ConfigError> {
    let Some(url) = &args.remote_write_url else {
        return Ok(None);
    };
    let url = reqwest::Url::parse(url).map_err(|e| ConfigError::Invalid {
        flag: FLAG,
        message: format!("{url:?} is not a URL: {e}"),
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(ConfigError::Invalid {
            flag: FLAG,
            message: format!("{url} must be an http:// or https:// URL with a host"),
        });
    }
    let auth = match (
        &args.remote_write_bearer_token_file,
        &args.remote_write_username,
        &args.remote_write_password_file,
    ) {
        (Some(_), Some(_), _) => {
            return Err(ConfigError::Invalid {
                flag: "--remote-write-bearer-token-file",
                message: "give a bearer token or basic auth, not both".to_owned(),
            });
        }
        (Some(token_file), None, _) => Auth::Bearer {
            token_file: token_file.clone(),
        },
        (None, Some(username), Some(password_file)) => Auth::Basic {
            username: username.clone(),
            password_file: password_file.clone(),
        },
        (None, Some(_), None) => {
            return Err(ConfigError::Invalid {
                flag: "--remote-write-username",
                message: "needs --remote-write-password-file".to_owned(),
            });
        }
        (None, None, _) => Auth::None,
    };
    // Unreadable secrets are a start-up error, not a push failure every interval.
    match &auth {
        Auth::Bearer { token_file } => {
            read("--remote-write-bearer-token-file", token_file)?;
        }
        Auth::Basic { password_file, .. } => {
            read("--remote-write-password-file", password_file)?;
        }
        Auth::None => {}
    }
    let client = client(FLAG, &args.remote_write_tls(), args.push_timeout)?;
    Ok(Some(Box::new(RemoteWrite {
        url,
        client,
        auth,
        started_ms: unix_ms(SystemTime::now()),
        delivered: Mutex::new(Delivered::new()),
    })))
}

impl Sink for RemoteWrite {
    fn name(&self) -> &'static str {
        "remote_write"
    }

    fn send<'a>(&'a self, batch: &'a Batch) -> BoxFuture<'a, Result<(), SendError>> {
        async move {
            let (request, delivered) = {
                let before = self
                    .delivered
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                write_request(batch, &before, self.started_ms)
            };
            let body = compress(&request);
            let mut request = self
                .client
                .post(self.url.clone())
                .header(reqwest::header::CONTENT_ENCODING, "snappy")
                .header(reqwest::header::CONTENT_TYPE, "application/x-protobuf")
                .header("X-Prometheus-Remote-Write-Version", "0.1.0")
                .header(
                    reqwest::header::USER_AGENT,
                    concat!("kubevirt-metrics-sidecars/", env!("CARGO_PKG_VERSION")),
                )
                .body(body);
            request = self.authenticate(request)?;
            let response = request
                .send()
                .await
                .map_err(|e| SendError::Retryable(format!("remote write: {}", error_chain(&e))))?;
            let status = response.status();
            if status.is_success() {
                *self
                    .delivered
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = delivered;
                return Ok(());
            }
            let text = response.text().await.unwrap_or_default();
            let text: String = text.trim().chars().take(ERROR_BODY_LIMIT).collect();
            let message = format!("remote write answered {status}: {text}");
            if is_retryable(status) {
                Err(SendError::Retryable(message))
            } else {
                Err(SendError::Permanent(message))
            }
        }
        .boxed()
    }
}

impl RemoteWrite {
    fn authenticate(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::RequestBuilder, SendError> {
        let unreadable = |e: ConfigError| SendError::Retryable(e.to_string());
        Ok(match &self.auth {
            Auth::None => request,
            Auth::Bearer { token_file } => request.bearer_auth(
                read("--remote-write-bearer-token-file", token_file).map_err(unreadable)?,
            ),
            Auth::Basic {
                username,
                password_file,
            } => request.basic_auth(
                username,
                Some(read("--remote-write-password-file", password_file).map_err(unreadable)?),
            ),
        })
    }
}

/// The snappy-compressed protobuf of `request`.
pub fn compress(request: &WriteRequest) -> Vec<u8> {
    let protobuf = request.encode_to_vec();
    // Compressing into a Vec fails only past snappy's 4 GiB input limit.
    snap::raw::Encoder::new()
        .compress_vec(&protobuf)
        .unwrap_or_default()
}

fn unix_ms(at: SystemTime) -> i64 {
    let ms = at
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    i64::try_from(ms).unwrap_or(i64::MAX)
}

/// The batch's series as remote write sends them, and what `delivered` becomes once they
/// are: one `TimeSeries` per series, its samples (several only when samples carry their own
/// timestamps) in time order. Samples with their own timestamp are left out unless newer
/// than `delivered` says for their series (or, for a series not in it, not older than
/// `floor_ms`); a series left without samples is left out.
pub fn write_request(
    batch: &Batch,
    delivered: &Delivered,
    floor_ms: i64,
) -> (WriteRequest, Delivered) {
    let batch_ms = unix_ms(batch.collected_at);
    let mut timeseries: Vec<TimeSeries> = Vec::new();
    let mut newest = Delivered::new();
    for (family, samples) in client_golang_order(&batch.families) {
        for sample in samples {
            let mut labels: Vec<Label> = Vec::with_capacity(sample.labels.len() + 1);
            labels.push(Label {
                name: "__name__".to_owned(),
                value: format!("{}{}", family.name, sample.suffix),
            });
            labels.extend(
                sample
                    .labels
                    .iter()
                    .filter(|(_, value)| !value.is_empty())
                    .map(|(name, value)| Label {
                        name: name.to_string(),
                        value: value.to_string(),
                    }),
            );
            // `__name__` sorts before every legal label name (they start with a letter
            // or `_`, and `__` names are reserved).
            labels.sort_by(|a, b| a.name.cmp(&b.name));
            let point = match sample.timestamp_ms {
                None => Some(Sample {
                    value: sample.value,
                    timestamp: batch_ms,
                }),
                Some(timestamp) => {
                    let previous = delivered.get(&labels).copied();
                    let newest_ts = newest
                        .entry(labels.clone())
                        .or_insert(previous.unwrap_or(i64::MIN));
                    let fresh = match previous {
                        Some(previous) => timestamp > previous,
                        None => timestamp >= floor_ms,
                    };
                    if fresh {
                        *newest_ts = (*newest_ts).max(timestamp);
                        Some(Sample {
                            value: sample.value,
                            timestamp,
                        })
                    } else {
                        None
                    }
                }
            };
            // The order puts a series' samples next to each other.
            match timeseries.last_mut() {
                Some(last) if last.labels == labels => last.samples.extend(point),
                _ => timeseries.push(TimeSeries {
                    labels,
                    samples: point.into_iter().collect(),
                }),
            }
        }
    }
    timeseries.retain(|series| !series.samples.is_empty());
    for series in &mut timeseries {
        series.samples.sort_by_key(|s| s.timestamp);
        series.samples.dedup_by_key(|s| s.timestamp);
    }
    newest.retain(|_, timestamp| *timestamp != i64::MIN);
    (WriteRequest { timeseries }, newest)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::core::metric::{Family, MetricType, Sample as MetricSample};
    use std::sync::Arc;
    use std::time::Duration;

    fn label(name: &str, value: &str) -> Label {
        Label {
            name: name.to_owned(),
            value: value.to_owned(),
        }
    }

    #[test]
    fn series_are_the_exposition_series_with_sorted_labels() {
        let mut histogram = Family::new("h_seconds", "", MetricType::Histogram);
        let mut bucket = MetricSample::new(
            vec![("zone".into(), "a".into()), ("le".into(), "+Inf".into())],
            3.0,
        );
        bucket.suffix = "_bucket";
        histogram.samples.push(bucket);
        let mut gauge = Family::new("g", "", MetricType::Gauge);
        gauge.samples.push(
            MetricSample::new(vec![("b".into(), "2".into()), ("a".into(), "".into())], 1.5)
                .with_timestamp(5),
        );
        gauge.samples.push(
            MetricSample::new(vec![("b".into(), "2".into()), ("a".into(), "".into())], 1.0)
                .with_timestamp(4),
        );
        let batch = Batch {
            families: Arc::new(vec![histogram, gauge]),
            collected_at: UNIX_EPOCH + Duration::from_millis(1_000),
        };
        let (request, delivered) = write_request(&batch, &Delivered::new(), 0);
        assert_eq!(
            request.timeseries,
            vec![
                TimeSeries {
                    labels: vec![label("__name__", "g"), label("b", "2")],
                    samples: vec![
                        Sample {
                            value: 1.0,
                            timestamp: 4
                        },
                        Sample {
                            value: 1.5,
                            timestamp: 5
                        },
                    ],
                },
                TimeSeries {
                    labels: vec![
                        label("__name__", "h_seconds_bucket"),
                        label("le", "+Inf"),
                        label("zone", "a"),
                    ],
                    samples: vec![Sample {
                        value: 3.0,
                        timestamp: 1_000
                    }],
                },
            ]
        );
        let body = compress(&request);
        let decoded = snap::raw::Decoder::new().decompress_vec(&body).unwrap();
        assert_eq!(WriteRequest::decode(decoded.as_slice()).unwrap(), request);

        // Once delivered, the timestamped samples are not sent again; newer ones are.
        assert_eq!(
            delivered,
            Delivered::from([(vec![label("__name__", "g"), label("b", "2")], 5)])
        );
        let (again, _) = write_request(&batch, &delivered, 0);
        assert_eq!(again.timeseries.len(), 1, "{again:?}");
        assert_eq!(
            again.timeseries[0].labels[0],
            label("__name__", "h_seconds_bucket")
        );
        // Nothing older than the floor on first sight.
        let (floored, none) = write_request(&batch, &Delivered::new(), 5);
        assert_eq!(
            floored.timeseries[0].samples,
            vec![Sample {
                value: 1.5,
                timestamp: 5
            }]
        );
        assert_eq!(none.values().copied().collect::<Vec<_>>(), vec![5]);
        let (floored, none) = write_request(&batch, &Delivered::new(), 6);
        assert_eq!(floored.timeseries.len(), 1);
        assert!(none.is_empty());
    }

    #[test]
    fn flags_are_checked_at_start() {
        let mut args = ExportArgs::default();
        assert!(from_args(&args).unwrap().is_none());
        args.remote_write_url = Some("ftp://x/".to_owned());
        assert!(from_args(&args).is_err());
        args.remote_write_url = Some("not a url".to_owned());
        assert!(from_args(&args).is_err());
        args.remote_write_url = Some("http://127.0.0.1:9/api/v1/write".to_owned());
        assert_eq!(from_args(&args).unwrap().unwrap().name(), "remote_write");
        args.remote_write_bearer_token_file = Some("/nonexistent/token".into());
        let error = from_args(&args).err().unwrap().to_string();
        assert!(error.contains("/nonexistent/token"), "{error}");
    }
}
