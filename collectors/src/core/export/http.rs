//! The HTTP client every HTTP sink uses: one connection pool per sink, TLS from the sink's
//! [`ClientTls`] flags, secrets read from files.

use std::path::Path;
use std::time::Duration;

use kubevirt_metrics_flags::ClientTls;

use super::ConfigError;

/// A client for one sink. `flag` names the sink's URL flag in errors.
pub fn client(
    flag: &'static str,
    tls: &ClientTls,
    timeout: Duration,
) -> Result<reqwest::Client, ConfigError> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .timeout(timeout)
        .connect_timeout(timeout)
        .http1_only();
    if let Some(path) = &tls.ca {
        let pem = read(flag, path)?;
        let certificates = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
            .map_err(|source| ConfigError::Client { flag, source })?;
        for certificate in certificates {
            builder = builder.add_root_certificate(certificate);
        }
        builder = builder.tls_built_in_root_certs(false);
    }
    if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
        let mut pem = read(flag, cert)?.into_bytes();
        pem.push(b'\n');
        pem.extend(read(flag, key)?.into_bytes());
        let identity = reqwest::Identity::from_pem(&pem)
            .map_err(|source| ConfigError::Client { flag, source })?;
        builder = builder.identity(identity);
    }
    if tls.insecure_skip_verify {
        builder = builder.danger_accept_invalid_certs(true);
    }
    builder
        .build()
        .map_err(|source| ConfigError::Client { flag, source })
}

/// A secret or PEM file, whitespace-trimmed at the ends (a token file written with `echo`
/// ends in a newline that must not reach the header).
pub fn read(flag: &'static str, path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path)
        .map(|text| text.trim().to_owned())
        .map_err(|source| ConfigError::File {
            flag,
            path: path.to_owned(),
            source,
        })
}

/// Whether an HTTP status is worth retrying (429 and 5xx), as Prometheus remote write and
/// the OTLP/HTTP specification both say.
pub fn is_retryable(status: reqwest::StatusCode) -> bool {
    status == reqwest::StatusCode::TOO_MANY_REQUESTS || status.is_server_error()
}
