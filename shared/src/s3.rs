//! Building the S3 client the same way for AWS and for S3-compatible servers.

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::{RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

use crate::error::{Error, S3Operation};

/// An S3 client from an `aws_config` `SdkConfig`.
///
/// - When `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL` is set (a local Garage, MinIO, moto),
///   path-style addressing is used, since such servers rarely resolve bucket subdomains.
/// - The SDK's own checksum calculation is limited to operations that require it: sluice
///   computes the full-object checksum itself while streaming and sends each part's value in
///   a header, so the SDK need not buffer or re-read bodies.
/// - Retries: the SDK's standard mode (exponential backoff with jitter on throttling, 5xx and
///   transport errors), 5 attempts.
/// - Timeouts: 5 s to connect and 120 s per attempt. The SDK sets no attempt timeout by
///   default, so a server that accepts a request and never answers would hang the upload; with
///   one, the stalled attempt is retried like any transient failure. 120 s covers a part of
///   1 GiB at 10 MB/s; parts reach that size only past 500 GiB.
pub fn client(conf: &aws_config::SdkConfig) -> aws_sdk_s3::Client {
    let custom_endpoint = ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]
        .iter()
        .any(|v| std::env::var(v).is_ok_and(|s| !s.is_empty()));
    let s3_conf = aws_sdk_s3::config::Builder::from(conf)
        .force_path_style(custom_endpoint)
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .retry_config(aws_sdk_s3::config::retry::RetryConfig::standard().with_max_attempts(5))
        .timeout_config(
            aws_sdk_s3::config::timeout::TimeoutConfig::builder()
                .connect_timeout(std::time::Duration::from_secs(5))
                .operation_attempt_timeout(std::time::Duration::from_secs(120))
                .build(),
        )
        .build();
    aws_sdk_s3::Client::from_conf(s3_conf)
}

/// Whether part and object bodies are sent without a SigV4 payload hash (`UNSIGNED-PAYLOAD`).
///
/// Signing hashes every body byte with SHA-256: about a third of the CPU a passthrough copy
/// uses, which at 256 MB (1/7 of a vCPU) is a third of the throughput. sluice always sends each
/// body's CRC64NVME or CRC32C in a signed header and S3 verifies it, so over TLS the hash adds
/// no protection. `SLUICE_UNSIGNED_PAYLOAD`:
/// - `auto` (default): unsigned over HTTPS (AWS itself, any `https://` endpoint), signed over
///   plain HTTP, where the signature is the only defence against a body changed in transit;
/// - `always`: unsigned on any transport (a local server on loopback);
/// - `never`: always signed.
pub fn unsigned_payload() -> bool {
    // The endpoint as `client` configures it: a custom one from the environment, else AWS.
    let https = || {
        ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]
            .iter()
            .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
            .is_none_or(|url| url.starts_with("https://"))
    };
    match std::env::var("SLUICE_UNSIGNED_PAYLOAD").as_deref() {
        Ok("always") => true,
        Ok("never") => false,
        Ok("auto") | Err(_) => https(),
        Ok(other) => {
            tracing::warn!(
                value = other,
                "SLUICE_UNSIGNED_PAYLOAD is not auto, always or never; using auto"
            );
            https()
        }
    }
}

/// An [`Error::S3`] on `bucket`/`key` that is not an SDK error (a body too large or cut).
pub(crate) fn s3_error(
    op: S3Operation,
    bucket: &str,
    key: &str,
    message: String,
    retryable: bool,
) -> Error {
    Error::S3 {
        operation: op,
        bucket: bucket.to_owned(),
        key: key.to_owned(),
        part_number: None,
        message,
        retryable,
    }
}

/// An S3 failure as sluice's [`Error::S3`], with the HTTP status in the message and whether
/// trying again could succeed: timeouts, dropped connections, 5xx, 429, `SlowDown`,
/// `RequestTimeout`, `InternalError`, `ConditionalRequestConflict`, and the digest errors
/// (sluice computes every digest from the bytes it sends, so S3 refusing one means the bytes
/// changed in transit).
pub(crate) fn sdk_error<E>(
    operation: S3Operation,
    bucket: &str,
    key: &str,
    part_number: Option<i32>,
    err: &SdkError<E, HttpResponse>,
) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let status = err.raw_response().map(|r| r.status().as_u16());
    let retryable = matches!(
        err,
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_)
    ) || status.is_some_and(|s| s >= 500 || s == 429)
        || matches!(
            err.code(),
            Some(
                "SlowDown"
                    | "RequestTimeout"
                    | "InternalError"
                    | "ConditionalRequestConflict"
                    | "BadDigest"
                    | "InvalidDigest"
                    | "XAmzContentSHA256Mismatch"
            )
        );
    let mut message = DisplayErrorContext(err).to_string();
    if let Some(status) = status {
        message = format!("HTTP {status}: {message}");
    }
    Error::S3 {
        operation,
        bucket: bucket.to_owned(),
        key: key.to_owned(),
        part_number,
        message,
        retryable,
    }
}
