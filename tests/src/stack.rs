//! The local S3 servers started by `scripts/stack.sh up`: Garage (a real object store) and
//! moto (which, unlike Garage, enforces the 5 MiB minimum part size).
//!
//! Endpoints and credentials come from the environment (`SLUICE_GARAGE_ENDPOINT`,
//! `SLUICE_MOTO_ENDPOINT`, `SLUICE_S3_ACCESS_KEY_ID`, `SLUICE_S3_SECRET_ACCESS_KEY`,
//! `AWS_REGION`) or, when unset, from the `export` lines of `.local/stack/env` that
//! `stack.sh up` writes.

use std::collections::HashMap;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use tokio::io::AsyncRead;

use crate::workspace_root;

const NOT_RUNNING: &str = "local stack not running: run `make stack` (scripts/stack.sh up)";

/// An S3-compatible endpoint and the credentials to use it.
#[derive(Clone, Debug)]
pub struct S3Server {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// Access key id accepted by the server.
    pub access_key_id: String,
    /// Secret of `access_key_id`.
    pub secret_access_key: String,
    /// Signing region (`us-east-1`).
    pub region: String,
}

/// Looks `name` up in the process environment, then in `.local/stack/env`.
fn stack_var(name: &str) -> Option<String> {
    if let Ok(value) = std::env::var(name) {
        if !value.is_empty() {
            return Some(value);
        }
    }
    stack_env_file().remove(name)
}

/// Parses the `export NAME=value` lines of `.local/stack/env` (values may be quoted).
fn stack_env_file() -> HashMap<String, String> {
    let path = workspace_root().join(".local/stack/env");
    let Ok(text) = std::fs::read_to_string(path) else {
        return HashMap::new();
    };
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let line = line.strip_prefix("export ").unwrap_or(line);
            let (name, value) = line.split_once('=')?;
            let value = value.trim();
            let value = value
                .strip_prefix('\'')
                .and_then(|v| v.strip_suffix('\''))
                .or_else(|| value.strip_prefix('"').and_then(|v| v.strip_suffix('"')))
                .unwrap_or(value);
            Some((name.trim().to_owned(), value.to_owned()))
        })
        .collect()
}

fn required(name: &str) -> String {
    stack_var(name).unwrap_or_else(|| panic!("{NOT_RUNNING} ({name} is not set)"))
}

impl S3Server {
    /// The Garage server of the local stack. Panics when the stack is not running.
    pub fn garage() -> S3Server {
        S3Server {
            endpoint: required("SLUICE_GARAGE_ENDPOINT"),
            access_key_id: required("SLUICE_S3_ACCESS_KEY_ID"),
            secret_access_key: required("SLUICE_S3_SECRET_ACCESS_KEY"),
            region: stack_var("AWS_REGION").unwrap_or_else(|| "us-east-1".to_owned()),
        }
    }

    /// The moto server of the local stack (it accepts any credentials; we send Garage's).
    /// Panics when the stack is not running.
    pub fn moto() -> S3Server {
        S3Server {
            endpoint: required("SLUICE_MOTO_ENDPOINT"),
            access_key_id: stack_var("SLUICE_S3_ACCESS_KEY_ID")
                .unwrap_or_else(|| "testing".to_owned()),
            secret_access_key: stack_var("SLUICE_S3_SECRET_ACCESS_KEY")
                .unwrap_or_else(|| "testing".to_owned()),
            region: stack_var("AWS_REGION").unwrap_or_else(|| "us-east-1".to_owned()),
        }
    }

    /// An S3 client for this server: static credentials, path-style addressing, and checksums
    /// only when an operation requires them (so tests see exactly what sluice sends).
    pub async fn client(&self) -> Client {
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .credentials_provider(Credentials::new(
                &self.access_key_id,
                &self.secret_access_key,
                None,
                None,
                "sluice-tests",
            ))
            .region(Region::new(self.region.clone()))
            .endpoint_url(&self.endpoint)
            .force_path_style(true)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .build();
        Client::from_conf(config)
    }

    /// The environment a sluice binary needs to reach this server with the standard AWS
    /// variables. `AWS_EC2_METADATA_DISABLED` keeps the SDK from ever probing the instance
    /// metadata address.
    pub fn lambda_env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", self.access_key_id.as_str()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_access_key.as_str()),
            ("AWS_REGION", self.region.as_str()),
            ("AWS_DEFAULT_REGION", self.region.as_str()),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect()
    }

    /// Creates a new empty bucket named `<label>-<8 hex>` (label lowercased, anything outside
    /// `[a-z0-9-]` replaced by `-`, cut to 40 characters) and returns its name.
    pub async fn fresh_bucket(&self, label: &str) -> anyhow::Result<String> {
        let mut label: String = label
            .chars()
            .map(|c| c.to_ascii_lowercase())
            .map(|c| {
                if c.is_ascii_lowercase() || c.is_ascii_digit() {
                    c
                } else {
                    '-'
                }
            })
            .take(40)
            .collect();
        let trimmed = label.trim_matches('-');
        label = if trimmed.is_empty() {
            "test".to_owned()
        } else {
            trimmed.to_owned()
        };
        let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let bucket = format!("{label}-{suffix}");
        self.client()
            .await
            .create_bucket()
            .bucket(&bucket)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("creating bucket {bucket} on {}: {e:?}", self.endpoint))?;
        Ok(bucket)
    }
}

/// Every multipart upload in progress in `bucket`, as `(key, upload id)`. Panics on an S3
/// error (test helper).
pub async fn uploads_in_progress(client: &Client, bucket: &str) -> Vec<(String, String)> {
    let mut uploads = Vec::new();
    let mut key_marker: Option<String> = None;
    let mut upload_id_marker: Option<String> = None;
    loop {
        let page = client
            .list_multipart_uploads()
            .bucket(bucket)
            .set_key_marker(key_marker.take())
            .set_upload_id_marker(upload_id_marker.take())
            .send()
            .await
            .unwrap_or_else(|e| panic!("ListMultipartUploads {bucket}: {e:?}"));
        for upload in page.uploads() {
            uploads.push((
                upload.key().unwrap_or_default().to_owned(),
                upload.upload_id().unwrap_or_default().to_owned(),
            ));
        }
        if page.is_truncated() != Some(true) {
            return uploads;
        }
        key_marker = page.next_key_marker().map(str::to_owned);
        upload_id_marker = page.next_upload_id_marker().map(str::to_owned);
        if key_marker.is_none() && upload_id_marker.is_none() {
            return uploads;
        }
    }
}

/// Whether `bucket/key` exists (HeadObject). Panics on an error other than "not found".
pub async fn object_exists(client: &Client, bucket: &str, key: &str) -> bool {
    match client.head_object().bucket(bucket).key(key).send().await {
        Ok(_) => true,
        Err(error) => {
            let not_found = error.as_service_error().is_some_and(|e| e.is_not_found())
                || error
                    .raw_response()
                    .is_some_and(|r| r.status().as_u16() == 404);
            assert!(not_found, "HeadObject {bucket}/{key}: {error:?}");
            false
        }
    }
}

/// The whole content of `bucket/key`, in memory: for small objects in tests only (use
/// [`object_stream`] for large ones). Panics on an error.
pub async fn read_object(client: &Client, bucket: &str, key: &str) -> Vec<u8> {
    let output = client
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GetObject {bucket}/{key}: {e:?}"));
    output
        .body
        .collect()
        .await
        .unwrap_or_else(|e| panic!("reading {bucket}/{key}: {e:?}"))
        .to_vec()
}

/// The content of `bucket/key` as a stream of bytes, for objects too large to hold. Panics
/// when GetObject fails; read errors surface from the reader.
pub async fn object_stream(
    client: &Client,
    bucket: &str,
    key: &str,
) -> impl AsyncRead + Send + Unpin + use<> {
    let output = client
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GetObject {bucket}/{key}: {e:?}"));
    output.body.into_async_read()
}
