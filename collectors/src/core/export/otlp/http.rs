//! OTLP/HTTP: `POST {endpoint}/v1/metrics` with a binary protobuf
//! `ExportMetricsServiceRequest`, optionally gzip-compressed.
//!
//! Responses per the OTLP specification: 2xx is success (a partial success in the body is
//! logged); 429, 502, 503 and 504 are retryable; every other status is permanent; no answer
//! (connection refused, timeout) is retryable. An error body is a `google.rpc.Status`.

use std::io::Write;

use flate2::Compression;
use flate2::write::GzEncoder;
use futures::future::BoxFuture;
use kubevirt_metrics_flags::{ExportArgs, OtlpCompression};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceResponse;
use prost::Message;
use reqwest::StatusCode;
use reqwest::header::{
    AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, USER_AGENT,
};

use super::{Common, ENDPOINT_FLAG, RpcStatus, log_partial_success};
use crate::core::error_chain;
use crate::core::export::{Batch, ConfigError, SendError, Sink};

const PROTOBUF: &str = "application/x-protobuf";
/// The path of the metrics signal on an OTLP/HTTP receiver.
const METRICS_PATH: &str = "/v1/metrics";
/// How much of an error body ends up in an error message.
const ERROR_BODY_LIMIT: usize = 512;

/// Pushes to an OTLP/HTTP receiver.
#[derive(Debug)]
pub struct HttpSink {
    client: reqwest::Client,
    url: reqwest::Url,
    headers: HeaderMap,
    gzip: bool,
    common: Common,
}

impl HttpSink {
    pub fn new(endpoint: &str, args: &ExportArgs, common: Common) -> Result<Self, ConfigError> {
        let url = metrics_url(endpoint)?;
        let client =
            crate::core::export::http::client(ENDPOINT_FLAG, &args.otlp_tls(), args.push_timeout)?;
        let mut headers = HeaderMap::new();
        // OTLP exporters SHOULD identify themselves; a configured header may override it.
        headers.insert(USER_AGENT, HeaderValue::from_static(super::USER_AGENT));
        for (key, value) in &common.headers {
            let name =
                HeaderName::from_bytes(key.as_bytes()).map_err(|error| ConfigError::Invalid {
                    flag: super::HEADER_FLAG,
                    message: format!("{key}: {error}"),
                })?;
            let value = value.parse().map_err(|_| ConfigError::Invalid {
                flag: super::HEADER_FLAG,
                message: format!("{key}: invalid value"),
            })?;
            if name == USER_AGENT {
                headers.insert(name, value);
            } else {
                headers.append(name, value);
            }
        }
        Ok(Self {
            client,
            url,
            headers,
            gzip: args.otlp_compression == OtlpCompression::Gzip,
            common,
        })
    }

    /// Where the requests go.
    pub fn url(&self) -> &reqwest::Url {
        &self.url
    }

    fn body(&self, batch: &Batch) -> Result<Vec<u8>, SendError> {
        let body = self.common.request(batch).encode_to_vec();
        if !self.gzip {
            return Ok(body);
        }
        let mut encoder = GzEncoder::new(Vec::with_capacity(body.len() / 4), Compression::fast());
        encoder
            .write_all(&body)
            .and_then(|()| encoder.finish())
            .map_err(|error| SendError::Permanent(format!("gzip: {error}")))
    }

    async fn push(&self, batch: &Batch) -> Result<(), SendError> {
        let body = self.body(batch)?;
        let mut request = self
            .client
            .post(self.url.clone())
            .headers(self.headers.clone())
            .header(CONTENT_TYPE, PROTOBUF);
        if self.gzip {
            request = request.header(CONTENT_ENCODING, "gzip");
        }
        if let Some(authorization) = self.common.authorization() {
            request = request.header(AUTHORIZATION, authorization);
        }
        let response = request.body(body).send().await.map_err(|error| {
            SendError::Retryable(format!("OTLP/HTTP {}: {}", self.url, error_chain(&error)))
        })?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = response.bytes().await.unwrap_or_default();
        if status.is_success() {
            if !body.is_empty() && content_type.starts_with(PROTOBUF) {
                match ExportMetricsServiceResponse::decode(body) {
                    Ok(reply) => log_partial_success(reply.partial_success.as_ref()),
                    Err(error) => tracing::debug!(%error, "undecodable OTLP/HTTP success body"),
                }
            }
            return Ok(());
        }
        let mut message = format!(
            "OTLP/HTTP {} answered {status}: {}",
            self.url,
            error_text(&content_type, &body)
        );
        if let Some(retry_after) = retry_after {
            message.push_str(&format!(" (Retry-After: {retry_after})"));
        }
        if is_retryable(status) {
            Err(SendError::Retryable(message))
        } else {
            Err(SendError::Permanent(message))
        }
    }
}

impl Sink for HttpSink {
    fn name(&self) -> &'static str {
        "otlp"
    }

    fn send<'a>(&'a self, batch: &'a Batch) -> BoxFuture<'a, Result<(), SendError>> {
        Box::pin(self.push(batch))
    }
}

/// The statuses the OTLP/HTTP specification lists as retryable; "all other 4xx or 5xx
/// response status codes MUST NOT be retried".
pub fn is_retryable(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::TOO_MANY_REQUESTS
            | StatusCode::BAD_GATEWAY
            | StatusCode::SERVICE_UNAVAILABLE
            | StatusCode::GATEWAY_TIMEOUT
    )
}

/// `{endpoint}/v1/metrics`, or the endpoint itself when it already names that path.
pub fn metrics_url(endpoint: &str) -> Result<reqwest::Url, ConfigError> {
    let invalid = |message: String| ConfigError::Invalid {
        flag: ENDPOINT_FLAG,
        message,
    };
    let trimmed = endpoint.trim_end_matches('/');
    let full = if trimmed.ends_with(METRICS_PATH) {
        trimmed.to_owned()
    } else {
        format!("{trimmed}{METRICS_PATH}")
    };
    let url =
        reqwest::Url::parse(&full).map_err(|error| invalid(format!("{endpoint}: {error}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid(format!(
            "{endpoint}: expected an http:// or https:// URL"
        )));
    }
    Ok(url)
}

/// The message of a `google.rpc.Status` body, else the start of the body as text.
fn error_text(content_type: &str, body: &[u8]) -> String {
    if content_type.starts_with(PROTOBUF)
        && let Ok(status) = RpcStatus::decode(body)
        && !status.message.is_empty()
    {
        return status.message;
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(ERROR_BODY_LIMIT) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_metrics_path_is_appended_once() {
        for (endpoint, url) in [
            ("http://otel:4318", "http://otel:4318/v1/metrics"),
            ("http://otel:4318/", "http://otel:4318/v1/metrics"),
            ("https://gw/otlp", "https://gw/otlp/v1/metrics"),
            ("http://otel:4318/v1/metrics", "http://otel:4318/v1/metrics"),
        ] {
            assert_eq!(metrics_url(endpoint).unwrap().as_str(), url);
        }
        assert!(metrics_url("otel:4318").is_err());
        assert!(metrics_url("ftp://otel/").is_err());
    }

    #[test]
    fn only_the_listed_statuses_are_retried() {
        for code in [429, 502, 503, 504] {
            assert!(is_retryable(StatusCode::from_u16(code).unwrap()), "{code}");
        }
        for code in [400, 401, 403, 404, 413, 500, 501] {
            assert!(!is_retryable(StatusCode::from_u16(code).unwrap()), "{code}");
        }
    }
}
