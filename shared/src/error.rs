//! The one error type of the core, with the context a user needs to act on it.

use std::io;

/// Result alias used throughout the core.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How a failure should be treated by whoever invoked the job.
///
/// Functions map this to the Lambda error type they report, so callers (EventBridge, Step
/// Functions retry policies, people reading logs) can tell a bad job spec from a flaky upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The job spec or the data is wrong; retrying the same input fails again.
    InvalidInput,
    /// The source answered, but not with what the job needs (4xx, corrupt data).
    Upstream,
    /// A transient failure (network, 5xx, throttling); the same job may succeed later.
    Retryable,
    /// The invocation's deadline arrived before the job finished.
    Timeout,
    /// A bug in sluice (a panic, a task or thread that died): not the input's fault and not
    /// worth retrying as is. Nothing was written.
    Internal,
}

impl ErrorKind {
    /// The name used as the Lambda `errorType`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidInput => "InvalidInput",
            ErrorKind::Upstream => "Upstream",
            ErrorKind::Retryable => "Retryable",
            ErrorKind::Timeout => "Timeout",
            ErrorKind::Internal => "Internal",
        }
    }
}

/// Which S3 call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum S3Operation {
    /// `PutObject` (streams that fit in one part).
    PutObject,
    /// `HeadObject` (existence check before writing with no-overwrite).
    HeadObject,
    /// `GetObject` (reading a job's state).
    GetObject,
    /// `CreateMultipartUpload`.
    CreateMultipartUpload,
    /// `UploadPart`.
    UploadPart,
    /// `CompleteMultipartUpload`.
    CompleteMultipartUpload,
    /// `AbortMultipartUpload`.
    AbortMultipartUpload,
    /// `ListParts` (checking that an aborted upload left nothing behind).
    ListParts,
    /// `ListMultipartUploads` (sweeping stale uploads).
    ListMultipartUploads,
    /// `ListObjectsV2` (the checkpoints a sweep keeps the uploads of).
    ListObjects,
}

impl std::fmt::Display for S3Operation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            S3Operation::PutObject => "PutObject",
            S3Operation::HeadObject => "HeadObject",
            S3Operation::GetObject => "GetObject",
            S3Operation::CreateMultipartUpload => "CreateMultipartUpload",
            S3Operation::UploadPart => "UploadPart",
            S3Operation::CompleteMultipartUpload => "CompleteMultipartUpload",
            S3Operation::AbortMultipartUpload => "AbortMultipartUpload",
            S3Operation::ListParts => "ListParts",
            S3Operation::ListMultipartUploads => "ListMultipartUploads",
            S3Operation::ListObjects => "ListObjectsV2",
        })
    }
}

/// Everything that can go wrong in a sluice job.
///
/// Messages name the input, the position and the class of the failure, e.g.
/// `source http://host/a.json: connection failed after 1048576 bytes: ...`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The job spec is malformed or asks for something impossible.
    #[error("invalid job spec: {message}")]
    InvalidSpec {
        /// What is wrong, naming the field.
        message: String,
    },

    /// The HTTP request could not be sent or its headers not received.
    #[error("source {url}: request failed after {attempts} attempt(s): {message}")]
    SourceRequest {
        /// The URL requested.
        url: String,
        /// Attempts made (retries included).
        attempts: u32,
        /// The transport error, with its causes.
        message: String,
        /// Whether the request timed out (as opposed to being refused or reset).
        timeout: bool,
    },

    /// The source answered with a non-success status. Raised before any upload is created.
    #[error("source {url}: HTTP {status} after {attempts} attempt(s); body starts: {body:?}")]
    SourceStatus {
        /// The URL requested.
        url: String,
        /// Attempts made (retries included).
        attempts: u32,
        /// The HTTP status code.
        status: u16,
        /// The first bytes of the response body (capped, lossy UTF-8).
        body: String,
    },

    /// The source body failed part way: connection reset, truncated, stalled.
    #[error("source {url}: {class} after {offset} bytes: {message}")]
    SourceRead {
        /// The URL being read.
        url: String,
        /// Bytes of the (encoded) body received before the failure.
        offset: u64,
        /// `connection failed`, `read timed out`, ...
        class: &'static str,
        /// The underlying error, with its causes.
        message: String,
    },

    /// The source uses a `Content-Encoding` sluice cannot decode.
    #[error(
        "source {url}: unsupported Content-Encoding {encoding:?} (supported: gzip, zstd, identity)"
    )]
    UnsupportedEncoding {
        /// The URL requested.
        url: String,
        /// The header value.
        encoding: String,
    },

    /// Compressed input could not be decoded (corrupt or truncated).
    #[error("{input}: {codec} data invalid after {offset} bytes of compressed input: {source}")]
    Decode {
        /// What was being decoded (usually the source URL).
        input: String,
        /// `gzip` or `zstd`.
        codec: &'static str,
        /// Compressed bytes consumed before the failure.
        offset: u64,
        /// The decoder's error (`unexpected end of file`, a checksum error, ...).
        #[source]
        source: io::Error,
    },

    /// Compressing the output failed.
    #[error("{codec} encoder failed after {offset} bytes: {source}")]
    Encode {
        /// `gzip` or `zstd`.
        codec: &'static str,
        /// Uncompressed bytes consumed before the failure.
        offset: u64,
        /// The encoder's error.
        #[source]
        source: io::Error,
    },

    /// An S3 request failed (after the SDK's own bounded retries).
    #[error("s3://{bucket}/{key}: {operation}{} failed: {message}", part_suffix(*.part_number))]
    S3 {
        /// The failing call.
        operation: S3Operation,
        /// Destination bucket.
        bucket: String,
        /// Destination key.
        key: String,
        /// The part, for `UploadPart`.
        part_number: Option<i32>,
        /// Error code and message from S3 or the transport, with causes.
        message: String,
        /// True for throttling, 5xx and transport failures.
        retryable: bool,
    },

    /// The checksum S3 reports for the object differs from the one sluice computed.
    #[error(
        "s3://{bucket}/{key}: {algorithm} checksum mismatch: computed {expected}, S3 reports {actual}"
    )]
    ChecksumMismatch {
        /// Destination bucket.
        bucket: String,
        /// Destination key.
        key: String,
        /// `CRC64NVME` or `CRC32C`.
        algorithm: &'static str,
        /// What sluice computed while streaming (base64).
        expected: String,
        /// What S3 answered (base64).
        actual: String,
    },

    /// The stream would need more than 10,000 parts at the configured part size.
    #[error(
        "s3://{bucket}/{key}: stream exceeds the S3 limit of 10,000 parts ({bytes} bytes written)"
    )]
    TooManyParts {
        /// Destination bucket.
        bucket: String,
        /// Destination key.
        key: String,
        /// Bytes written when the limit was hit.
        bytes: u64,
    },

    /// The deadline (Lambda deadline minus the safety margin) arrived first.
    #[error("deadline reached after {bytes_in} source bytes; upload aborted, nothing written")]
    Deadline {
        /// Source bytes consumed before the deadline.
        bytes_in: u64,
    },

    /// The invocation's whole time (its deadline minus its start) is not more than the deadline
    /// margin, so no job could run: the function's timeout is too short for the margin.
    #[error(
        "the invocation has {budget_ms} ms from its start to its deadline, not more than the deadline margin of {margin_ms} ms (tuning.deadline_margin_ms, default 3000), so the job gave up before reading anything: raise the function's timeout (Lambda's default is 3 s) or lower the margin (at least 2500 ms); nothing was read or written"
    )]
    TimeBudget {
        /// Milliseconds from the invocation's start to its deadline.
        budget_ms: u64,
        /// The deadline margin in milliseconds.
        margin_ms: u64,
    },

    /// Waiting to retry a source request would pass the deadline.
    #[error("source {url}: {failure}; waiting {wait_ms} ms to retry would pass the deadline")]
    RetryPastDeadline {
        /// The URL being retried.
        url: String,
        /// What failed (status or transport error).
        failure: String,
        /// The wait the retry policy or `Retry-After` asked for.
        wait_ms: u64,
    },

    /// The source document could not be read as records (invalid JSON, cut short, a record over
    /// the size limit, no records array).
    #[error("source {url}: {class} at byte {offset}{}: {message}", record_suffix(*.record))]
    Records {
        /// The page's URL.
        url: String,
        /// `invalid JSON`, `document cut short`, `record too large`, `records not found`, ...
        class: &'static str,
        /// Byte offset in the decoded page.
        offset: u64,
        /// 1-based record number within the page, when inside a record.
        record: Option<u64>,
        /// Details.
        message: String,
    },

    /// A job continued from a checkpoint found its source changed (another version, a range
    /// refused): the parts written came from the old one, so the upload is aborted.
    #[error(
        "source {url}: changed since the job started: {message}; upload aborted, nothing written"
    )]
    SourceChanged {
        /// The source (redacted).
        url: String,
        /// What differed.
        message: String,
    },

    /// Pagination cannot go on: a cursor or URL came back (a loop), or a next URL is invalid.
    #[error("source {url}: {message}")]
    Pagination {
        /// The last page's URL.
        url: String,
        /// What went wrong.
        message: String,
    },

    /// A request was refused by the network policy (host allow-list, private addresses).
    #[error("source {url}: blocked: {reason}")]
    Blocked {
        /// The URL (initial or redirect target).
        url: String,
        /// Which rule refused it.
        reason: String,
    },

    /// A secret (API token, password) could not be resolved. Names the reference and the
    /// class, never the value: `secret secrets_manager "prod/api" json_key "token": json_key
    /// not found: ...`.
    #[error("secret {reference}: {class}: {message}")]
    Secret {
        /// The reference: `env "VAR"`, `secrets_manager "id" json_key "k"`, `ssm "/name"`.
        reference: String,
        /// `not set`, `not found`, `access denied`, `not a string`, `json_key not found`, ...
        class: &'static str,
        /// Details (the service's error code and message), never the value.
        message: String,
        /// `InvalidInput` (missing or malformed), `Upstream` (refused, e.g. access denied),
        /// `Retryable` (throttling, 5xx, network).
        kind: ErrorKind,
    },

    /// A bug: a producer task panicked, a worker thread died, a writer was used after it
    /// failed. The upload was aborted; nothing was written.
    #[error("internal error: {message}")]
    Internal {
        /// What failed, and where.
        message: String,
    },

    /// A Postgres connection, statement or row stream failed. Names the database as
    /// `user@host:port/dbname` (never the password), the stage and the SQLSTATE:
    /// `postgres app@db:5432/lake: stream after 1200 rows (98304 bytes): SQLSTATE 57P01:
    /// FATAL: terminating connection due to administrator command`.
    #[error("postgres {database}: {stage}: {}{message}", sqlstate_prefix(.sqlstate.as_deref()))]
    Postgres {
        /// `user@host:port/dbname`.
        database: String,
        /// `connect`, `begin`, `query`, `stream after N rows (B bytes)`, `commit`.
        stage: String,
        /// The server's SQLSTATE (`57P01`, `42601`, ...); `None` for transport and TLS failures.
        sqlstate: Option<String>,
        /// The server's message with detail and hint, or the transport error with its causes.
        message: String,
        /// From the SQLSTATE class: `Retryable` for a lost connection or terminated backend,
        /// `Timeout` for `statement_timeout`, `InvalidInput` for a bad query, `Upstream` for
        /// refused credentials or TLS.
        kind: ErrorKind,
    },
}

fn sqlstate_prefix(sqlstate: Option<&str>) -> String {
    sqlstate
        .map(|s| format!("SQLSTATE {s}: "))
        .unwrap_or_default()
}

fn record_suffix(record: Option<u64>) -> String {
    record.map(|r| format!(" (record {r})")).unwrap_or_default()
}

fn part_suffix(part: Option<i32>) -> String {
    part.map(|n| format!(" (part {n})")).unwrap_or_default()
}

impl Error {
    /// The class of failure, for retry decisions and the Lambda error type.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidSpec { .. } | Error::UnsupportedEncoding { .. } => {
                ErrorKind::InvalidInput
            }
            Error::SourceStatus { status, .. } => {
                if *status == 408 || *status == 429 || *status >= 500 {
                    ErrorKind::Retryable
                } else {
                    ErrorKind::Upstream
                }
            }
            Error::SourceRequest { .. } | Error::SourceRead { .. } => ErrorKind::Retryable,
            Error::RetryPastDeadline { .. } => ErrorKind::Timeout,
            Error::Records { .. } | Error::Pagination { .. } | Error::SourceChanged { .. } => {
                ErrorKind::Upstream
            }
            Error::Blocked { .. } => ErrorKind::InvalidInput,
            Error::Decode { .. } | Error::Encode { .. } => ErrorKind::Upstream,
            Error::S3 { retryable, .. } => {
                if *retryable {
                    ErrorKind::Retryable
                } else {
                    ErrorKind::Upstream
                }
            }
            Error::ChecksumMismatch { .. } => ErrorKind::Retryable,
            Error::TooManyParts { .. } | Error::TimeBudget { .. } => ErrorKind::InvalidInput,
            Error::Deadline { .. } => ErrorKind::Timeout,
            Error::Secret { kind, .. } => *kind,
            Error::Postgres { kind, .. } => *kind,
            Error::Internal { .. } => ErrorKind::Internal,
        }
    }

    pub(crate) fn spec(message: impl Into<String>) -> Self {
        Error::InvalidSpec {
            message: message.into(),
        }
    }
}
