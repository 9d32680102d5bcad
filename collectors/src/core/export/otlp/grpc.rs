//! OTLP/gRPC: `opentelemetry.proto.collector.metrics.v1.MetricsService/Export` over tonic,
//! TLS (rustls) for `https://` endpoints, optional gzip.
//!
//! Status codes per the OTLP specification: CANCELLED, DEADLINE_EXCEEDED, ABORTED,
//! OUT_OF_RANGE, UNAVAILABLE and DATA_LOSS are retryable; RESOURCE_EXHAUSTED only when the
//! server says recovery is possible (a `google.rpc.RetryInfo` in the status details); every
//! other code is permanent. No connection at all is retryable.

use std::time::Duration;

use futures::future::BoxFuture;
use kubevirt_metrics_flags::{ExportArgs, OtlpCompression};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use tokio::sync::OnceCell;
use tonic::codec::CompressionEncoding;
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue, MetadataMap};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status};

use super::{Common, ENDPOINT_FLAG, HEADER_FLAG, RETRY_INFO, RpcStatus, log_partial_success};
use crate::core::export::{Batch, ConfigError, SendError, Sink};

/// Pushes to an OTLP/gRPC receiver.
#[derive(Debug)]
pub struct GrpcSink {
    endpoint: Endpoint,
    /// Connected lazily on the first send, inside the runtime (building a channel spawns).
    client: OnceCell<MetricsServiceClient<Channel>>,
    metadata: MetadataMap,
    gzip: bool,
    timeout: Duration,
    common: Common,
}

impl GrpcSink {
    pub fn new(endpoint: &str, args: &ExportArgs, common: Common) -> Result<Self, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            flag: ENDPOINT_FLAG,
            message,
        };
        let uri: http::Uri = endpoint
            .parse()
            .map_err(|error| invalid(format!("{endpoint}: {error}")))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => {
                return Err(invalid(format!(
                    "{endpoint}: expected an http:// or https:// URL"
                )));
            }
        };
        let mut channel = Endpoint::from(uri)
            .timeout(args.push_timeout)
            .connect_timeout(args.push_timeout)
            .user_agent(super::USER_AGENT)
            .map_err(|error| invalid(error.to_string()))?;
        let tls = args.otlp_tls();
        if tls.insecure_skip_verify {
            return Err(ConfigError::Invalid {
                flag: "--otlp-insecure-skip-verify",
                message:
                    "not supported with --otlp-protocol grpc; give the receiver's CA with --otlp-ca"
                        .to_owned(),
            });
        }
        if https {
            let mut config = ClientTlsConfig::new().with_webpki_roots();
            if let Some(ca) = &tls.ca {
                let pem = crate::core::export::http::read("--otlp-ca", ca)?;
                config = config.ca_certificate(Certificate::from_pem(pem));
            }
            if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
                let cert = crate::core::export::http::read("--otlp-client-cert", cert)?;
                let key = crate::core::export::http::read("--otlp-client-key", key)?;
                config = config.identity(Identity::from_pem(cert, key));
            }
            channel = channel
                .tls_config(config)
                .map_err(|error| invalid(format!("TLS: {error}")))?;
        } else if tls.ca.is_some() || tls.cert.is_some() {
            return Err(invalid(format!(
                "{endpoint}: TLS options need an https:// endpoint"
            )));
        }
        let mut metadata = MetadataMap::new();
        for (key, value) in &common.headers {
            let invalid_header = |what: &str| ConfigError::Invalid {
                flag: HEADER_FLAG,
                message: format!("{key}: invalid gRPC metadata {what}"),
            };
            let key: AsciiMetadataKey = key.parse().map_err(|_| invalid_header("name"))?;
            let value: AsciiMetadataValue = value.parse().map_err(|_| invalid_header("value"))?;
            metadata.append(key, value);
        }
        Ok(Self {
            endpoint: channel,
            client: OnceCell::new(),
            metadata,
            gzip: args.otlp_compression == OtlpCompression::Gzip,
            timeout: args.push_timeout,
            common,
        })
    }

    async fn client(&self) -> MetricsServiceClient<Channel> {
        self.client
            .get_or_init(|| async {
                let client = MetricsServiceClient::new(self.endpoint.connect_lazy());
                if self.gzip {
                    client.send_compressed(CompressionEncoding::Gzip)
                } else {
                    client
                }
            })
            .await
            .clone()
    }

    async fn push(&self, batch: &Batch) -> Result<(), SendError> {
        let mut request = tonic::Request::new(self.common.request(batch));
        request.set_timeout(self.timeout);
        let metadata = request.metadata_mut();
        for entry in self.metadata.iter() {
            if let tonic::metadata::KeyAndValueRef::Ascii(key, value) = entry {
                metadata.append(key.clone(), value.clone());
            }
        }
        if let Some(authorization) = self.common.authorization() {
            let value: AsciiMetadataValue = authorization.parse().map_err(|_| {
                SendError::Permanent("bearer token is not valid metadata".to_owned())
            })?;
            metadata.insert("authorization", value);
        }
        let mut client = self.client().await;
        match client.export(request).await {
            Ok(response) => {
                log_partial_success(response.get_ref().partial_success.as_ref());
                Ok(())
            }
            Err(status) => Err(send_error(self.endpoint.uri(), &status)),
        }
    }
}

impl Sink for GrpcSink {
    fn name(&self) -> &'static str {
        "otlp"
    }

    fn send<'a>(&'a self, batch: &'a Batch) -> BoxFuture<'a, Result<(), SendError>> {
        Box::pin(self.push(batch))
    }
}

fn send_error(uri: &http::Uri, status: &Status) -> SendError {
    let message = format!("OTLP/gRPC {uri}: {:?}: {}", status.code(), status.message());
    if is_retryable(status) {
        SendError::Retryable(message)
    } else {
        SendError::Permanent(message)
    }
}

/// Whether the OTLP specification retries a request that ended with `status`. A status
/// tonic made up for a failed connection (no answer from the receiver) is retryable
/// whatever its code.
pub fn is_retryable(status: &Status) -> bool {
    let retryable_code = match status.code() {
        Code::Cancelled
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::OutOfRange
        | Code::Unavailable
        | Code::DataLoss => true,
        Code::ResourceExhausted => has_retry_info(status),
        _ => false,
    };
    retryable_code || is_transport_failure(status)
}

/// Whether the status details carry a `google.rpc.RetryInfo`.
fn has_retry_info(status: &Status) -> bool {
    prost::Message::decode(status.details()).is_ok_and(|details: RpcStatus| {
        details
            .details
            .iter()
            .any(|detail| detail.type_url == RETRY_INFO)
    })
}

fn is_transport_failure(status: &Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        if error.is::<tonic::transport::Error>() || error.is::<std::io::Error>() {
            return true;
        }
        source = error.source();
    }
    false
}
