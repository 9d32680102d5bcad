//! InfluxDB push: every sample as one line-protocol point ([`lineproto`]), POSTed to
//! InfluxDB 1.x `/write?db=` (with `--influx-db`) or 2.x `/api/v2/write?org=&bucket=`
//! (with `--influx-org` and `--influx-bucket`).
//!
//! A batch goes out in requests of at most [`LINES_PER_REQUEST`] points, the batch size
//! InfluxDB recommends. Rewriting a point (same measurement, tags and time) replaces it, so
//! when one request of a batch fails and the pipeline retries, the requests that had already
//! succeeded are written again harmlessly.
//!
//! Authentication is `Authorization: Token <token>` only (InfluxDB 2.x, and 1.8+ with auth
//! enabled); InfluxDB 1.x before 1.8 knows only user and password, so use it without auth
//! or behind a proxy that adds it.

pub mod lineproto;

use std::io::Write as _;
use std::time::SystemTime;

use futures::future::BoxFuture;
use kubevirt_metrics_flags::{ExportArgs, InfluxPrecision};
use reqwest::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, HeaderValue};

use super::{Batch, ConfigError, SendError, Sink, http};
use crate::core::error_chain;
use lineproto::Encoded;

/// Points per request: InfluxDB's documentation recommends batches of 5,000 lines.
pub const LINES_PER_REQUEST: usize = 5_000;

/// How much of InfluxDB's error body goes into a log line (it names the rejected line).
const ERROR_BODY_LIMIT: usize = 2_048;

const URL_FLAG: &str = "--influx-url";

/// The InfluxDB sink `args` ask for, if any.
pub fn from_args(args: &ExportArgs) -> Result<Option<Box<dyn Sink>>, ConfigError> {
    Ok(InfluxSink::from_args(args)?.map(|sink| Box::new(sink) as Box<dyn Sink>))
}

/// Where the points go: a 1.x database or a 2.x organisation's bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    V1 { db: String },
    V2 { org: String, bucket: String },
}

impl Target {
    fn from_args(args: &ExportArgs) -> Result<Self, ConfigError> {
        let non_empty = |value: &Option<String>| value.clone().filter(|v| !v.is_empty());
        match (
            non_empty(&args.influx_db),
            non_empty(&args.influx_org),
            non_empty(&args.influx_bucket),
        ) {
            (Some(db), None, None) => Ok(Self::V1 { db }),
            (None, Some(org), Some(bucket)) => Ok(Self::V2 { org, bucket }),
            (Some(_), _, _) => Err(invalid(
                "--influx-db",
                "is for InfluxDB 1.x and excludes --influx-org/--influx-bucket (2.x)",
            )),
            _ => Err(invalid(
                URL_FLAG,
                "needs --influx-db (InfluxDB 1.x) or both --influx-org and --influx-bucket (2.x)",
            )),
        }
    }
}

/// The InfluxDB sink.
pub struct InfluxSink {
    client: reqwest::Client,
    write_url: reqwest::Url,
    authorization: Option<HeaderValue>,
    precision: InfluxPrecision,
    gzip: bool,
    lines_per_request: usize,
}

impl InfluxSink {
    /// The sink `args` ask for, if any (`--influx-url` set).
    pub fn from_args(args: &ExportArgs) -> Result<Option<Self>, ConfigError> {
        let Some(url) = &args.influx_url else {
            return Ok(None);
        };
        let target = Target::from_args(args)?;
        let write_url = write_url(url, &target, args.influx_precision)?;
        let authorization = match &args.influx_token_file {
            None => None,
            Some(path) => Some(authorization(&http::read("--influx-token-file", path)?)?),
        };
        let client = http::client(URL_FLAG, &args.influx_tls(), args.push_timeout)?;
        Ok(Some(Self {
            client,
            write_url,
            authorization,
            precision: args.influx_precision,
            gzip: args.influx_gzip,
            lines_per_request: LINES_PER_REQUEST,
        }))
    }

    /// Points per request (default [`LINES_PER_REQUEST`]).
    pub fn with_lines_per_request(mut self, lines: usize) -> Self {
        self.lines_per_request = lines.max(1);
        self
    }

    /// The URL every request goes to, e.g. `http://influx:8086/write?db=kubevirt&precision=ns`.
    pub fn write_url(&self) -> &reqwest::Url {
        &self.write_url
    }

    async fn send_batch(&self, batch: &Batch) -> Result<(), SendError> {
        let encoded = self.encode(batch).await?;
        if encoded.skipped_non_finite > 0 {
            tracing::debug!(
                skipped = encoded.skipped_non_finite,
                "InfluxDB: samples with NaN or infinite values left out (line protocol cannot carry them)"
            );
        }
        let requests = encoded.chunks.len();
        let mut rejected = None;
        for (index, body) in encoded.chunks.into_iter().enumerate() {
            match self.post(body).await {
                Ok(()) => {}
                Err(SendError::Retryable(message)) => {
                    return Err(SendError::Retryable(format!(
                        "request {} of {requests}: {message}",
                        index + 1
                    )));
                }
                // InfluxDB has written the other points of that request ("partial write");
                // the remaining requests are independent, so they still go out.
                Err(SendError::Permanent(message)) => {
                    tracing::warn!(
                        url = %self.write_url,
                        request = index + 1,
                        requests,
                        "InfluxDB rejected points: {message}"
                    );
                    rejected
                        .get_or_insert(format!("request {} of {requests}: {message}", index + 1));
                }
            }
        }
        rejected.map_or(Ok(()), |message| Err(SendError::Permanent(message)))
    }

    /// Encodes (and compresses) off the async threads: ~40k points take milliseconds.
    async fn encode(&self, batch: &Batch) -> Result<Encoded, SendError> {
        let families = batch.families.clone();
        let collected_at: SystemTime = batch.collected_at;
        let (precision, lines, gzip) = (self.precision, self.lines_per_request, self.gzip);
        tokio::task::spawn_blocking(move || {
            let mut encoded = lineproto::encode(&families, collected_at, precision, lines);
            if gzip {
                for chunk in &mut encoded.chunks {
                    *chunk = compress(chunk)?;
                }
            }
            Ok::<_, std::io::Error>(encoded)
        })
        .await
        .map_err(|err| SendError::Retryable(format!("encoding line protocol: {err}")))?
        .map_err(|err| SendError::Retryable(format!("compressing line protocol: {err}")))
    }

    async fn post(&self, body: Vec<u8>) -> Result<(), SendError> {
        let mut request = self
            .client
            .post(self.write_url.clone())
            .header(CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(body);
        if self.gzip {
            request = request.header(CONTENT_ENCODING, "gzip");
        }
        if let Some(authorization) = &self.authorization {
            request = request.header(AUTHORIZATION, authorization.clone());
        }
        let response = request
            .send()
            .await
            .map_err(|err| SendError::Retryable(error_chain(&err)))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let mut body = response.text().await.unwrap_or_default();
        if body.len() > ERROR_BODY_LIMIT {
            let mut end = ERROR_BODY_LIMIT;
            while !body.is_char_boundary(end) {
                end -= 1;
            }
            body.truncate(end);
            body.push('…');
        }
        let message = format!("InfluxDB answered {status}: {}", body.trim());
        if http::is_retryable(status) {
            Err(SendError::Retryable(message))
        } else {
            Err(SendError::Permanent(message))
        }
    }
}

impl Sink for InfluxSink {
    fn name(&self) -> &'static str {
        "influx"
    }

    fn send<'a>(&'a self, batch: &'a Batch) -> BoxFuture<'a, Result<(), SendError>> {
        Box::pin(self.send_batch(batch))
    }
}

/// `{url}/write?db=..&precision=..` (1.x) or `{url}/api/v2/write?org=..&bucket=..&precision=..`
/// (2.x); a path in `url` (InfluxDB behind a proxy) is kept in front.
fn write_url(
    url: &str,
    target: &Target,
    precision: InfluxPrecision,
) -> Result<reqwest::Url, ConfigError> {
    let mut parsed = reqwest::Url::parse(url).map_err(|err| invalid(URL_FLAG, err))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(invalid(URL_FLAG, "must be an http:// or https:// URL"));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(invalid(
            URL_FLAG,
            "must be InfluxDB's base URL, without a query or fragment",
        ));
    }
    let prefix = parsed.path().trim_end_matches('/').to_owned();
    let v1 = matches!(target, Target::V1 { .. });
    parsed.set_path(&format!(
        "{prefix}{}",
        if v1 { "/write" } else { "/api/v2/write" }
    ));
    {
        let mut query = parsed.query_pairs_mut();
        match target {
            Target::V1 { db } => {
                query.append_pair("db", db);
            }
            Target::V2 { org, bucket } => {
                query.append_pair("org", org).append_pair("bucket", bucket);
            }
        }
        query.append_pair("precision", lineproto::precision_param(precision, v1));
    }
    Ok(parsed)
}

fn authorization(token: &str) -> Result<HeaderValue, ConfigError> {
    if token.is_empty() {
        return Err(invalid("--influx-token-file", "the token file is empty"));
    }
    let mut value = HeaderValue::from_str(&format!("Token {token}")).map_err(|_| {
        invalid(
            "--influx-token-file",
            "the token holds characters an HTTP header cannot carry",
        )
    })?;
    value.set_sensitive(true);
    Ok(value)
}

fn compress(body: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 8),
        flate2::Compression::fast(),
    );
    encoder.write_all(body)?;
    encoder.finish()
}

fn invalid(flag: &'static str, message: impl ToString) -> ConfigError {
    ConfigError::Invalid {
        flag,
        message: message.to_string(),
    }
}
