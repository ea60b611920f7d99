//! Postgres source: a query streamed out of the server with `COPY (query) TO STDOUT`, never
//! holding the result set.
//!
//! - **Connection**: a `postgres://` URL (from `DATABASE_URL`) or a Secrets Manager secret
//!   holding either such a URL or the RDS JSON shape (`username`, `password`, `host`, `port`,
//!   `dbname`), resolved by [`SecretResolver`] into a [`Secret`], which never prints its
//!   content; messages name the database as `user@host:port/dbname`.
//! - **TLS** (rustls): `sslmode` is honoured, and when the URL names none the connection is
//!   `verify-full` against the system roots (or `sslrootcert`): plaintext only when the URL
//!   asks for it. See [`SslMode`].
//! - **Streaming**: CSV is `COPY (query) TO STDOUT (FORMAT csv, HEADER)`, rendered by the
//!   server. NDJSON is `COPY (SELECT row_to_json(r.*) FROM (query) r) TO STDOUT (FORMAT
//!   binary)`: JSON rendered by the server, framed in binary COPY so no text-COPY escaping
//!   touches it. tokio-postgres stops reading the socket while the consumer is busy, so the
//!   server waits on TCP backpressure: memory is a few socket buffers whatever the row count.
//! - **Parameters**: `COPY` takes no bind parameters. The query is prepared once so the server
//!   infers each `$n`'s type; the values are then *bound* into transaction-local settings
//!   (`set_config('sluice.pN', $1, true)`), and each `$n` token is replaced by
//!   `current_setting('sluice.pN')::<inferred type>`. Values never enter the SQL text, so no
//!   value can inject SQL whatever it contains.
//! - **Safety**: a `READ ONLY` transaction, `statement_timeout` from the Lambda deadline,
//!   `TimeZone` UTC (configurable) and `DateStyle` ISO. The stream ends only after the
//!   server's `CopyDone` *and* a successful `COMMIT`; any error (a backend terminated
//!   mid-stream, a dropped connection, a query error) surfaces as a read error carrying the
//!   SQLSTATE, which makes the sink abort the upload.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures::Stream;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde::Deserialize;
use tokio_postgres::config::Host;
use tokio_postgres::types::{Format, IsNull, ToSql, Type};

use crate::error::{Error, ErrorKind, Result};
use crate::export::ExportFormat;
use crate::secret::{Secret, SecretRef, SecretResolver, SecretsManagerRef};
use crate::source::http::error_chain;

/// Bytes gathered from COPY messages before they are handed on (one COPY message is one row).
const CHUNK: usize = 64 * 1024;
/// How often the stream logs its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// Connect timeout when the URL sets none.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Signature of binary COPY data.
const BINARY_SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

/// `source.postgres` in an export job spec.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PostgresSourceSpec {
    /// The query: anything `COPY (query) TO STDOUT` accepts (`SELECT`, `VALUES`, `TABLE t`),
    /// with `$1`, `$2`, ... for `params`. It runs in a read-only transaction.
    pub query: String,
    /// Values for `$1`, `$2`, ...: strings, numbers, booleans, `null`; an array or object is
    /// passed as its JSON text (for `json`/`jsonb` parameters). Each is parsed by the server
    /// as the type it inferred for that parameter. Default none.
    #[serde(default)]
    pub params: Vec<serde_json::Value>,
    /// Where the connection is: a Secrets Manager secret name or ARN (`"prod/lake-db"`), or
    /// any secret reference (`{"secrets_manager": {"id": ..., "json_key": ...}}`,
    /// `{"ssm": {"name": ...}}`, `{"env": "VAR"}`). The value is a `postgres://` URL, or JSON
    /// with `username`, `password`, `host`, `port`, `dbname` (as RDS writes it) and optionally
    /// `sslmode`, `sslrootcert`. Default: the `DATABASE_URL` environment variable.
    #[serde(default, deserialize_with = "secret_name_or_ref")]
    pub secret: Option<SecretRef>,
    /// Session time zone, for how `timestamptz` values render. Default `UTC`.
    #[serde(default)]
    pub timezone: Option<String>,
}

impl PostgresSourceSpec {
    /// Checks what can be checked without a connection.
    pub fn validate(&self) -> Result<()> {
        if self.query.trim().trim_end_matches(';').trim().is_empty() {
            return Err(Error::spec("source.postgres.query is empty"));
        }
        if self.query.contains('\0') {
            return Err(Error::spec("source.postgres.query contains a NUL byte"));
        }
        if self.params.len() > 1000 {
            return Err(Error::spec(format!(
                "source.postgres.params has {} values; at most 1000",
                self.params.len()
            )));
        }
        for (i, p) in self.params.iter().enumerate() {
            if param_text(p).is_some_and(|t| t.contains('\0')) {
                return Err(Error::spec(format!(
                    "source.postgres.params[{i}] contains a NUL byte"
                )));
            }
        }
        if let Some(tz) = &self.timezone
            && (tz.is_empty() || tz.len() > 64 || tz.contains('\0'))
        {
            return Err(Error::spec(format!(
                "source.postgres.timezone {tz:?} is not a time zone name"
            )));
        }
        Ok(())
    }
}

/// `secret`: a bare string names a Secrets Manager secret; an object is a [`SecretRef`].
fn secret_name_or_ref<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<SecretRef>, D::Error> {
    use serde::de::Error as _;
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::Null => Ok(None),
        serde_json::Value::String(id) => {
            // A connection URL pasted here would otherwise travel as a secret name into
            // requests and error messages, password included: refuse it without echoing it.
            if id.contains("://") || id.trim().is_empty() || id.chars().any(char::is_whitespace) {
                return Err(D::Error::custom(
                    "source.postgres.secret must name a Secrets Manager secret (not shown: it \
                     looks like a connection string or is empty; put connection strings in the \
                     secret or in DATABASE_URL)",
                ));
            }
            Ok(Some(SecretRef::SecretsManager(SecretsManagerRef {
                id,
                json_key: None,
            })))
        }
        other => SecretRef::from_json(other)
            .map(Some)
            .map_err(D::Error::custom),
    }
}

/// The text the server parses for a parameter; `None` is SQL NULL.
fn param_text(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// How the connection uses TLS: libpq's `sslmode` values, with a stricter default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// `disable`: plaintext.
    Disable,
    /// `allow` and `prefer`: TLS when the server offers it, else plaintext; the certificate is
    /// not checked (as in libpq).
    Prefer,
    /// `require`: TLS, certificate not checked — unless `sslrootcert` is given, which makes it
    /// `verify-ca` (as in libpq).
    Require,
    /// `verify-ca`: TLS, certificate chain checked against the roots, host name not checked.
    VerifyCa,
    /// `verify-full`: TLS, chain and host name checked. **The default** when the URL names no
    /// `sslmode` (libpq's default, `prefer`, would fall back to plaintext silently).
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str, origin: &SecretRef) -> Result<SslMode> {
        Ok(match value {
            "disable" => SslMode::Disable,
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(bad_connection(
                    origin,
                    format!(
                        "sslmode {other:?} is not one of disable, allow, prefer, require, verify-ca, verify-full"
                    ),
                ));
            }
        })
    }

    /// The name, as in a URL.
    pub fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// Where trusted root certificates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCerts {
    /// The system's store (`sslrootcert=system`, or no `sslrootcert`).
    System,
    /// A PEM file (`sslrootcert=/path/ca.pem`), e.g. the RDS CA bundle shipped with the function.
    File(String),
}

/// A resolved connection: driver settings, TLS policy, and a printable name without secrets.
#[derive(Clone)]
pub struct ConnectionSettings {
    config: tokio_postgres::Config,
    /// The TLS policy.
    pub ssl_mode: SslMode,
    /// Roots for certificate checks.
    pub root_certs: RootCerts,
    /// `user@host:port/dbname`: safe to log.
    pub database: String,
}

impl fmt::Debug for ConnectionSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // tokio-postgres's own Debug redacts the password too; this prints less.
        f.debug_struct("ConnectionSettings")
            .field("database", &self.database)
            .field("ssl_mode", &self.ssl_mode)
            .field("root_certs", &self.root_certs)
            .finish()
    }
}

/// Connection details as RDS and Secrets Manager rotation templates store them.
#[derive(Deserialize)]
struct SecretJson {
    username: String,
    password: String,
    host: String,
    #[serde(default)]
    port: Option<PortValue>,
    #[serde(default, alias = "database")]
    dbname: Option<String>,
    #[serde(default)]
    sslmode: Option<String>,
    #[serde(default)]
    sslrootcert: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum PortValue {
    Number(u16),
    Text(String),
}

impl ConnectionSettings {
    /// Parses a `postgres://` or `postgresql://` URL. `origin` names where it came from in
    /// error messages, which never quote the URL.
    ///
    /// `sslmode` and `sslrootcert` are read here (the driver knows only part of libpq's
    /// modes); every other parameter goes to tokio-postgres (`connect_timeout`,
    /// `application_name`, `options`, `channel_binding`, ...). Client certificates
    /// (`sslcert`, `sslkey`) are not supported.
    pub fn from_url(url: &Secret, origin: &SecretRef) -> Result<ConnectionSettings> {
        let text = url.expose().trim();
        if !(text.starts_with("postgres://") || text.starts_with("postgresql://")) {
            return Err(bad_connection(
                origin,
                "not a postgres:// or postgresql:// URL",
            ));
        }
        let (base, query) = text.split_once('?').unwrap_or((text, ""));
        let mut kept = Vec::new();
        let mut ssl_mode = SslMode::VerifyFull;
        let mut root_certs = RootCerts::System;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match percent_decode(key).as_str() {
                "sslmode" => ssl_mode = SslMode::parse(&percent_decode(value), origin)?,
                "sslrootcert" => root_certs = root_certs_from(&percent_decode(value)),
                k @ ("sslcert" | "sslkey" | "sslpassword" | "sslcrl" | "sslcrldir") => {
                    return Err(bad_connection(
                        origin,
                        format!(
                            "URL parameter {k} is not supported (client certificates and CRLs)"
                        ),
                    ));
                }
                _ => kept.push(pair),
            }
        }
        let rebuilt = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        // tokio-postgres's parse errors name the option, never its value.
        let config: tokio_postgres::Config = rebuilt
            .parse()
            .map_err(|e: tokio_postgres::Error| bad_connection(origin, e.to_string()))?;
        Ok(Self::finish(config, ssl_mode, root_certs))
    }

    /// Parses a Secrets Manager secret: a URL, or the RDS JSON shape.
    pub fn from_secret(value: &Secret, origin: &SecretRef) -> Result<ConnectionSettings> {
        let text = value.expose().trim();
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            return Self::from_url(value, origin);
        }
        // serde_json's messages quote no input values for a missing or mistyped field.
        let parsed: SecretJson = serde_json::from_str(text).map_err(|e| {
            let why = match e.classify() {
                serde_json::error::Category::Data => "a field is missing or has the wrong type",
                _ => "not JSON",
            };
            bad_connection(
                origin,
                format!(
                    "expected a postgres:// URL or JSON with username, password, host, port, dbname ({why})"
                ),
            )
        })?;
        let mut config = tokio_postgres::Config::new();
        config
            .user(&parsed.username)
            .password(&parsed.password)
            .host(&parsed.host);
        match parsed.port {
            Some(PortValue::Number(p)) => {
                config.port(p);
            }
            Some(PortValue::Text(p)) => {
                let p = p
                    .parse()
                    .map_err(|_| bad_connection(origin, "port is not a port number"))?;
                config.port(p);
            }
            None => {}
        }
        if let Some(db) = &parsed.dbname {
            config.dbname(db);
        }
        let ssl_mode = match &parsed.sslmode {
            Some(mode) => SslMode::parse(mode, origin)?,
            None => SslMode::VerifyFull,
        };
        let root_certs = parsed
            .sslrootcert
            .as_deref()
            .map(root_certs_from)
            .unwrap_or(RootCerts::System);
        Ok(Self::finish(config, ssl_mode, root_certs))
    }

    /// Resolves `secret` (default: the `DATABASE_URL` environment variable) and parses it.
    pub async fn resolve(
        secret: Option<&SecretRef>,
        resolver: &SecretResolver,
    ) -> Result<ConnectionSettings> {
        let default = SecretRef::Env("DATABASE_URL".to_owned());
        let r = secret.unwrap_or(&default);
        let value = resolver.resolve(r).await?;
        Self::from_secret(&value, r)
    }

    fn finish(
        mut config: tokio_postgres::Config,
        mut ssl_mode: SslMode,
        root_certs: RootCerts,
    ) -> ConnectionSettings {
        if ssl_mode == SslMode::Require && root_certs != RootCerts::System {
            ssl_mode = SslMode::VerifyCa;
        }
        config.ssl_mode(match ssl_mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("sluice export-postgres");
        }
        // Notice a silently dead peer (NAT timeouts) while the server computes a big query.
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(30));
        let database = describe(&config);
        ConnectionSettings {
            config,
            ssl_mode,
            root_certs,
            database,
        }
    }
}

fn bad_connection(origin: &SecretRef, message: impl Into<String>) -> Error {
    origin.error("not a connection", message, ErrorKind::InvalidInput)
}

fn root_certs_from(value: &str) -> RootCerts {
    if value == "system" || value.is_empty() {
        RootCerts::System
    } else {
        RootCerts::File(value.to_owned())
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(v) = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `user@host:port/dbname`, for messages. Never includes the password.
fn describe(config: &tokio_postgres::Config) -> String {
    let user = config.get_user().unwrap_or("");
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let host = match h {
                Host::Tcp(name) => name.clone(),
                Host::Unix(path) => path.display().to_string(),
            };
            let port = config
                .get_ports()
                .get(i)
                .or_else(|| config.get_ports().first())
                .copied()
                .unwrap_or(5432);
            format!("{host}:{port}")
        })
        .collect();
    let db = config.get_dbname().unwrap_or(user);
    format!("{user}@{}/{db}", hosts.join(","))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// System roots, loaded once per process.
fn system_roots() -> Result<Arc<RootCertStore>> {
    static ROOTS: OnceLock<std::result::Result<Arc<RootCertStore>, String>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let loaded = rustls_native_certs::load_native_certs();
            let mut store = RootCertStore::empty();
            let (added, _ignored) = store.add_parsable_certificates(loaded.certs);
            if added == 0 {
                return Err(format!(
                    "no system root certificates found ({} errors); set sslrootcert",
                    loaded.errors.len()
                ));
            }
            Ok(Arc::new(store))
        })
        .clone()
        .map_err(Error::spec)
}

fn file_roots(path: &str) -> Result<Arc<RootCertStore>> {
    let bad = |e: &dyn fmt::Display| Error::spec(format!("sslrootcert {path}: {e}"));
    let mut store = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(&e))? {
        store.add(cert.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
    }
    if store.is_empty() {
        return Err(bad(&"no certificates in the file"));
    }
    Ok(Arc::new(store))
}

/// The rustls connector for `settings`.
fn tls_connector(
    settings: &ConnectionSettings,
) -> Result<tokio_postgres_rustls::MakeRustlsConnect> {
    let provider = provider();
    let verifier: Arc<dyn ServerCertVerifier> = match settings.ssl_mode {
        SslMode::Disable | SslMode::Prefer | SslMode::Require => {
            Arc::new(EncryptOnly(provider.clone()))
        }
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let roots = match &settings.root_certs {
                RootCerts::System => system_roots()?,
                RootCerts::File(path) => file_roots(path)?,
            };
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| Error::spec(format!("TLS roots: {e}")))?;
            if settings.ssl_mode == SslMode::VerifyCa {
                Arc::new(ChainOnly(webpki))
            } else {
                webpki
            }
        }
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::spec(format!("TLS: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// `require`/`prefer` without roots: encrypts, checks handshake signatures, trusts any
/// certificate (libpq's behaviour for these modes).
#[derive(Debug)]
struct EncryptOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted root; the name is not checked. webpki checks
/// the chain before the name, so a name error means the chain passed.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// The connection task; aborting it closes the socket, which ends the server's backend at
/// its next write.
struct ConnectionTask(tokio::task::JoinHandle<()>);

impl Drop for ConnectionTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// An open connection.
pub struct Session {
    client: Arc<tokio_postgres::Client>,
    task: ConnectionTask,
    database: String,
    tls: bool,
    canceller: Canceller,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("database", &self.database)
            .field("tls", &self.tls)
            .finish()
    }
}

impl Session {
    /// `user@host:port/dbname`.
    pub fn database(&self) -> &str {
        &self.database
    }

    /// Cancels the statement an [`export`] runs on this session; see [`Canceller`].
    pub fn canceller(&self) -> Canceller {
        self.canceller.clone()
    }

    /// The driver's client, for statements outside an export (tests, diagnostics).
    pub fn client(&self) -> &tokio_postgres::Client {
        &self.client
    }

    /// Whether the connection is encrypted.
    pub async fn is_tls(&self) -> Result<bool> {
        let row = self
            .client
            .query_one(
                "SELECT coalesce((SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), false)",
                &[],
            )
            .await
            .map_err(|e| pg_error(&self.database, "query", &e, None))?;
        Ok(row.get(0))
    }
}

/// Connects with the TLS policy of `settings`.
pub async fn connect(settings: &ConnectionSettings) -> Result<Session> {
    let tls = tls_connector(settings)?;
    let connector = tls.clone();
    let database = settings.database.clone();
    let (client, connection) = settings
        .config
        .connect(tls)
        .await
        .map_err(|e| connect_error(&database, settings.ssl_mode, &e))?;
    let tls = settings.ssl_mode != SslMode::Disable;
    let name = database.clone();
    let task = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(database = %name, error = %e, "postgres connection ended with an error");
        }
    });
    tracing::info!(%database, sslmode = settings.ssl_mode.name(), "postgres connected");
    let canceller = Canceller(Arc::new(CancelState {
        token: client.cancel_token(),
        tls: connector,
        database: database.clone(),
        settled: AtomicBool::new(false),
    }));
    Ok(Session {
        client: Arc::new(client),
        task: ConnectionTask(task),
        database,
        tls,
        canceller,
    })
}

/// Cancels the export's statement on the server when the export gives up before its
/// `COMMIT` (deadline, failed upload, dropped stream), so the backend stops working at once
/// rather than at its next write or at `statement_timeout`. Cheap to clone; cancels at most
/// once; a no-op after the export completed.
#[derive(Clone)]
pub struct Canceller(Arc<CancelState>);

struct CancelState {
    token: tokio_postgres::CancelToken,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    database: String,
    settled: AtomicBool,
}

impl fmt::Debug for Canceller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Canceller")
            .field("database", &self.0.database)
            .field("settled", &self.0.settled.load(Ordering::Relaxed))
            .finish()
    }
}

impl Canceller {
    /// Sends a cancel request for the running statement (a separate short connection, as
    /// Postgres's protocol wants), waiting at most 3 s. Does nothing after the export
    /// completed or after an earlier cancel.
    pub async fn cancel(&self) {
        if self.0.settled.swap(true, Ordering::SeqCst) {
            return;
        }
        let database = &self.0.database;
        match tokio::time::timeout(
            Duration::from_secs(3),
            self.0.token.cancel_query(self.0.tls.clone()),
        )
        .await
        {
            Ok(Ok(())) => tracing::info!(%database, "postgres statement cancelled"),
            Ok(Err(e)) => tracing::warn!(%database, error = %e, "postgres cancel request failed"),
            Err(_) => tracing::warn!(%database, "postgres cancel request timed out"),
        }
    }

    fn settle(&self) {
        self.0.settled.store(true, Ordering::SeqCst);
    }

    fn is_settled(&self) -> bool {
        self.0.settled.load(Ordering::SeqCst)
    }
}

/// Cancels from a spawned task when dropped unsettled.
struct CancelOnDrop(Canceller);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if self.0.is_settled() {
            return;
        }
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let canceller = self.0.clone();
            handle.spawn(async move { canceller.cancel().await });
        }
    }
}

fn connect_error(database: &str, mode: SslMode, e: &tokio_postgres::Error) -> Error {
    let mut err = pg_error(database, "connect", e, None);
    if let Error::Postgres {
        sqlstate: None,
        message,
        kind,
        ..
    } = &mut err
    {
        // A certificate or TLS refusal does not heal by retrying.
        if message.contains("certificate")
            || message.contains("does not support TLS")
            || message.contains("InvalidCertificate")
        {
            *kind = ErrorKind::Upstream;
            if message.contains("does not support TLS") && mode != SslMode::Disable {
                message.push_str(
                    " (add sslmode=disable or sslmode=prefer to the URL to allow plaintext)",
                );
            }
        }
    }
    err
}

/// Builds the error for a failed Postgres call: the SQLSTATE and the server's message, detail
/// and hint, or the transport error with its causes. `offset` corrects a syntax error
/// position for the text sluice wrapped around the query.
pub(crate) fn pg_error(
    database: &str,
    stage: impl Into<String>,
    e: &tokio_postgres::Error,
    offset: Option<usize>,
) -> Error {
    match e.as_db_error() {
        Some(db) => {
            let code = db.code().code().to_owned();
            let mut message = format!("{}: {}", db.severity(), db.message());
            if let (Some(tokio_postgres::error::ErrorPosition::Original(pos)), Some(offset)) =
                (db.position(), offset)
                && (*pos as usize) > offset
            {
                message.push_str(&format!(
                    " (at character {} of the query)",
                    *pos as usize - offset
                ));
            }
            if let Some(detail) = db.detail() {
                message.push_str("; detail: ");
                message.push_str(detail);
            }
            if let Some(hint) = db.hint() {
                message.push_str("; hint: ");
                message.push_str(hint);
            }
            let kind = sqlstate_kind(&code);
            Error::Postgres {
                database: database.to_owned(),
                stage: stage.into(),
                sqlstate: Some(code),
                message,
                kind,
            }
        }
        None => Error::Postgres {
            database: database.to_owned(),
            stage: stage.into(),
            sqlstate: None,
            message: error_chain(e),
            kind: ErrorKind::Retryable,
        },
    }
}

/// What a SQLSTATE means for a retry.
pub fn sqlstate_kind(code: &str) -> ErrorKind {
    let class = code.get(..2).unwrap_or("");
    match code {
        // statement_timeout (derived from the Lambda deadline) or a cancel.
        "57014" => ErrorKind::Timeout,
        // admin_shutdown (pg_terminate_backend), crash_shutdown, cannot_connect_now, ...
        "57P01" | "57P02" | "57P03" | "57P04" | "57P05" => ErrorKind::Retryable,
        "40001" | "40P01" | "55P03" => ErrorKind::Retryable,
        "42501" => ErrorKind::Upstream,
        _ => match class {
            // connection exception, insufficient resources, system error
            "08" | "53" | "58" => ErrorKind::Retryable,
            // invalid authorization (bad password), invalid grantor
            "28" | "0L" | "0P" => ErrorKind::Upstream,
            // syntax or access rule, data exception, feature not supported, invalid
            // transaction state (a write in the read-only transaction), no such database,
            // cardinality
            "42" | "22" | "0A" | "25" | "3D" | "3F" | "21" | "2F" | "39" | "38" | "P0" => {
                ErrorKind::InvalidInput
            }
            _ => ErrorKind::Upstream,
        },
    }
}

/// Session settings of one export.
#[derive(Debug, Clone)]
pub struct ExportSettings {
    /// `statement_timeout`; `None` leaves the server's setting.
    pub statement_timeout: Option<Duration>,
    /// `TimeZone`. Default `UTC`.
    pub timezone: String,
}

impl Default for ExportSettings {
    fn default() -> Self {
        ExportSettings {
            statement_timeout: None,
            timezone: "UTC".to_owned(),
        }
    }
}

/// A `$n` placeholder found in a query: byte range and number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placeholder {
    /// Byte offset of the `$`.
    pub start: usize,
    /// Byte offset after the last digit.
    pub end: usize,
    /// The parameter number (1-based).
    pub number: usize,
}

/// Finds the `$n` placeholders of a Postgres query, skipping string constants (`'..'`,
/// `E'..'` with backslash escapes, `$tag$..$tag$`), quoted identifiers and comments (`--`,
/// nested `/* */`). An identifier may contain `$` (`a$1` is one identifier), so a `$` right
/// after an identifier character is not a placeholder.
pub fn find_placeholders(sql: &str) -> Vec<Placeholder> {
    let b = sql.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80;
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b'\'' => {
                // E'...' (escape string) when preceded by a lone e/E.
                let escape =
                    i > 0 && (b[i - 1] == b'e' || b[i - 1] == b'E') && (i < 2 || !ident(b[i - 2]));
                i += 1;
                while i < b.len() {
                    if escape && b[i] == b'\\' {
                        i += 2;
                        continue;
                    }
                    if b[i] == b'\'' {
                        if b.get(i + 1) == Some(&b'\'') {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                i += 1;
            }
            b'"' => {
                i += 1;
                while i < b.len() {
                    if b[i] == b'"' {
                        if b.get(i + 1) == Some(&b'"') {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                i += 1;
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut depth = 1;
                i += 2;
                while i < b.len() && depth > 0 {
                    if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                    } else {
                        i += 1;
                    }
                }
            }
            b'$' if i > 0 && ident(b[i - 1]) => i += 1,
            b'$' if b.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                let start = i;
                i += 1;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
                if let Ok(number) = sql[start + 1..i].parse() {
                    out.push(Placeholder {
                        start,
                        end: i,
                        number,
                    });
                }
            }
            b'$' => {
                // A dollar quote: $$ or $tag$ (tag: identifier characters, not starting with
                // a digit).
                let mut j = i + 1;
                while j < b.len() && b[j] != b'$' && ident(b[j]) {
                    j += 1;
                }
                if j < b.len() && b[j] == b'$' {
                    let tag = &sql[i..=j];
                    match sql[j + 1..].find(tag) {
                        Some(end) => i = j + 1 + end + tag.len(),
                        None => i = b.len(),
                    }
                } else {
                    i += 1;
                }
            }
            _ => i += 1,
        }
    }
    out
}

/// A text-format parameter: the server parses it as whatever type it inferred.
#[derive(Debug)]
struct TextParam(Option<String>);

impl ToSql for TextParam {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match &self.0 {
            Some(s) => {
                out.extend_from_slice(s.as_bytes());
                Ok(IsNull::No)
            }
            None => Ok(IsNull::Yes),
        }
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }

    fn encode_format(&self, _ty: &Type) -> Format {
        Format::Text
    }

    tokio_postgres::types::to_sql_checked!();
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Rows and bytes produced so far by an [`ExportStream`].
#[derive(Debug, Default)]
pub struct Progress {
    rows: AtomicU64,
    bytes: AtomicU64,
}

impl Progress {
    /// Rows rendered.
    pub fn rows(&self) -> u64 {
        self.rows.load(Ordering::Relaxed)
    }

    /// Bytes rendered (CSV or NDJSON, before compression).
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

/// A failed export stream's error, carried inside an [`io::Error`] through the codecs to the
/// sink's read-error mapping.
#[derive(Debug)]
pub struct StreamFailure(pub Box<Error>);

impl fmt::Display for StreamFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for StreamFailure {}

impl StreamFailure {
    /// The sluice error inside `e`, if `e` carries one.
    pub fn take(e: io::Error) -> std::result::Result<Error, io::Error> {
        if e.get_ref().is_some_and(|i| i.is::<StreamFailure>()) {
            let inner = e.into_inner().expect("checked above");
            let failure = inner.downcast::<StreamFailure>().expect("checked above");
            Ok(*failure.0)
        } else {
            Err(e)
        }
    }
}

/// Prepares the SQL of an export: the query trimmed, parameters turned into bound settings,
/// wrapped in `COPY`. Returns the COPY statement, the settings to bind, and the byte offset of
/// the query inside the statement (`None` when placeholders were rewritten).
async fn plan(
    session: &Session,
    query: &str,
    params: &[serde_json::Value],
    format: ExportFormat,
) -> Result<(String, Vec<(String, Option<String>)>, Option<usize>)> {
    let query = query
        .trim()
        .trim_end_matches(|c: char| c == ';' || c.is_whitespace());
    let mut body = query.to_owned();
    let mut bound = Vec::new();
    let mut exact = true;
    if !params.is_empty() {
        let stmt = session
            .client
            .prepare(query)
            .await
            .map_err(|e| pg_error(&session.database, "query", &e, Some(0)))?;
        if stmt.params().len() != params.len() {
            return Err(Error::spec(format!(
                "source.postgres.params has {} values but the query uses {} parameters",
                params.len(),
                stmt.params().len()
            )));
        }
        let found = find_placeholders(query);
        for n in 1..=params.len() {
            if !found.iter().any(|p| p.number == n) {
                return Err(Error::spec(format!(
                    "source.postgres.query: parameter ${n} not found outside strings and comments"
                )));
            }
        }
        if let Some(p) = found.iter().find(|p| p.number > params.len()) {
            return Err(Error::spec(format!(
                "source.postgres.query: ${} has no value in params",
                p.number
            )));
        }
        let mut rewritten = String::with_capacity(query.len() + 64 * found.len());
        let mut last = 0;
        for p in &found {
            let ty = &stmt.params()[p.number - 1];
            rewritten.push_str(&query[last..p.start]);
            // Fixed text only: the setting name and the type the server inferred.
            match param_text(&params[p.number - 1]) {
                Some(_) => rewritten.push_str(&format!(
                    "(pg_catalog.current_setting('sluice.p{}')::{}.{})",
                    p.number,
                    quote_ident(ty.schema()),
                    quote_ident(ty.name())
                )),
                None => rewritten.push_str(&format!(
                    "(NULL::{}.{})",
                    quote_ident(ty.schema()),
                    quote_ident(ty.name())
                )),
            }
            last = p.end;
        }
        rewritten.push_str(&query[last..]);
        body = rewritten;
        exact = false;
        for (i, value) in params.iter().enumerate() {
            if let Some(text) = param_text(value) {
                bound.push((format!("sluice.p{}", i + 1), Some(text)));
            }
        }
    }
    let (prefix, suffix) = match format {
        ExportFormat::Csv => ("COPY (\n", "\n) TO STDOUT (FORMAT csv, HEADER)"),
        ExportFormat::Ndjson => (
            "COPY (SELECT pg_catalog.row_to_json(sluice_row.*) FROM (\n",
            "\n) AS sluice_row) TO STDOUT (FORMAT binary)",
        ),
    };
    let offset = exact.then(|| prefix.chars().count());
    Ok((format!("{prefix}{body}{suffix}"), bound, offset))
}

/// Starts an export on `session`: a read-only transaction with `settings`, then `COPY`.
/// Errors before the first byte (a bad query, a missing table, a bad parameter) are returned
/// here, before anything is uploaded.
pub async fn export(
    session: Session,
    query: &str,
    params: &[serde_json::Value],
    format: ExportFormat,
    settings: &ExportSettings,
) -> Result<ExportStream> {
    let database = session.database.clone();
    let client = session.client.clone();
    // From here until COMMIT, giving up (an error, the caller dropping this future) cancels
    // the statement on the server.
    let guard = CancelOnDrop(session.canceller.clone());
    client
        .batch_execute("BEGIN READ ONLY")
        .await
        .map_err(|e| pg_error(&database, "begin", &e, None))?;

    let (copy_sql, bound, offset) = plan(&session, query, params, format).await?;

    let timeout = settings
        .statement_timeout
        .map(|t| format!("{}ms", t.as_millis().max(1)))
        .unwrap_or_else(|| "0".to_owned());
    let mut values: Vec<(String, Option<String>)> = vec![
        ("TimeZone".into(), Some(settings.timezone.clone())),
        ("DateStyle".into(), Some("ISO, MDY".into())),
        ("IntervalStyle".into(), Some("postgres".into())),
        ("extra_float_digits".into(), Some("1".into())),
    ];
    if settings.statement_timeout.is_some() {
        values.push(("statement_timeout".into(), Some(timeout)));
    }
    values.extend(bound);
    let sql = format!(
        "SELECT {}",
        (0..values.len())
            .map(|i| format!(
                "pg_catalog.set_config(${}, ${}, true)",
                2 * i + 1,
                2 * i + 2
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let args: Vec<TextParam> = values
        .into_iter()
        .flat_map(|(name, value)| [TextParam(Some(name)), TextParam(value)])
        .collect();
    let refs: Vec<&(dyn ToSql + Sync)> = args.iter().map(|a| a as &(dyn ToSql + Sync)).collect();
    client
        .query(&sql, &refs)
        .await
        .map_err(|e| pg_error(&database, "settings", &e, None))?;

    let copy = client
        .copy_out(&copy_sql)
        .await
        .map_err(|e| pg_error(&database, "query", &e, offset))?;
    tracing::info!(%database, format = format.name(), "postgres COPY started");

    let progress = Arc::new(Progress::default());
    Ok(ExportStream {
        copy: Box::pin(copy),
        format,
        buf: BytesMut::with_capacity(CHUNK),
        state: State::Streaming,
        header_seen: false,
        trailer_seen: false,
        progress,
        database,
        client: Some(client),
        task: Some(session.task),
        cancel: guard,
        started: std::time::Instant::now(),
        last_log: std::time::Instant::now(),
    })
}

enum State {
    Streaming,
    Closing(Pin<Box<dyn Future<Output = Result<()>> + Send>>),
    Done,
}

/// The rendered rows of an export, as CSV or NDJSON chunks of about 64 KiB.
///
/// The stream ends (`None`) only after the server's `CopyDone` and a successful `COMMIT`; every
/// failure before that is an `Err` whose [`io::Error`] carries a [`StreamFailure`] with the
/// SQLSTATE. Dropping the stream closes the connection.
pub struct ExportStream {
    copy: Pin<Box<tokio_postgres::CopyOutStream>>,
    format: ExportFormat,
    buf: BytesMut,
    state: State,
    header_seen: bool,
    trailer_seen: bool,
    progress: Arc<Progress>,
    database: String,
    client: Option<Arc<tokio_postgres::Client>>,
    task: Option<ConnectionTask>,
    cancel: CancelOnDrop,
    started: std::time::Instant,
    last_log: std::time::Instant,
}

impl fmt::Debug for ExportStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExportStream")
            .field("database", &self.database)
            .field("format", &self.format)
            .field("rows", &self.progress.rows())
            .finish()
    }
}

impl ExportStream {
    /// Rows and bytes so far; shared, so it can be read after the stream is consumed.
    pub fn progress(&self) -> Arc<Progress> {
        self.progress.clone()
    }

    /// Cancels the statement on the server if the export gives up (await it before
    /// answering: a spawned cancel might not run before Lambda freezes the process).
    pub fn canceller(&self) -> Canceller {
        self.cancel.0.clone()
    }

    fn failure(&self, stage: String, message: String, sqlstate: Option<String>) -> io::Error {
        let kind = sqlstate
            .as_deref()
            .map(sqlstate_kind)
            .unwrap_or(ErrorKind::Retryable);
        io::Error::other(StreamFailure(Box::new(Error::Postgres {
            database: self.database.clone(),
            stage,
            sqlstate,
            message,
            kind,
        })))
    }

    fn stage(&self) -> String {
        format!(
            "stream after {} rows ({} bytes)",
            self.progress.rows(),
            self.progress.bytes()
        )
    }

    /// Appends one COPY message (one row; the header row for CSV) to the buffer.
    fn absorb(&mut self, msg: Bytes) -> io::Result<()> {
        let before = self.buf.len();
        match self.format {
            ExportFormat::Csv => {
                self.buf.extend_from_slice(&msg);
                if self.header_seen {
                    self.progress.rows.fetch_add(1, Ordering::Relaxed);
                } else {
                    self.header_seen = true;
                }
            }
            ExportFormat::Ndjson => {
                let rows = self.absorb_binary(msg).map_err(|what| {
                    self.failure(
                        self.stage(),
                        format!("malformed binary COPY data: {what}"),
                        None,
                    )
                })?;
                self.progress.rows.fetch_add(rows, Ordering::Relaxed);
            }
        }
        self.progress
            .bytes
            .fetch_add((self.buf.len() - before) as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Binary COPY of one `json` column: `int16 fields, int32 length, bytes` per row, after a
    /// file header; `int16 -1` ends the data. Each row becomes one line; a raw CR or LF (only
    /// possible as insignificant whitespace inside a `json` value) becomes a space.
    fn absorb_binary(&mut self, mut msg: Bytes) -> std::result::Result<u64, &'static str> {
        if !self.header_seen {
            if msg.len() < BINARY_SIGNATURE.len() + 8 || !msg.starts_with(BINARY_SIGNATURE) {
                return Err("bad signature");
            }
            msg.advance(BINARY_SIGNATURE.len() + 4);
            let ext = msg.get_u32() as usize;
            if msg.len() < ext {
                return Err("truncated header extension");
            }
            msg.advance(ext);
            self.header_seen = true;
        }
        let mut rows = 0;
        while msg.has_remaining() {
            if self.trailer_seen {
                return Err("data after the trailer");
            }
            if msg.len() < 2 {
                return Err("truncated tuple");
            }
            match msg.get_i16() {
                -1 => self.trailer_seen = true,
                1 => {
                    if msg.len() < 4 {
                        return Err("truncated field length");
                    }
                    let len = msg.get_i32();
                    if len < 0 || msg.len() < len as usize {
                        return Err("bad field length");
                    }
                    let json = msg.split_to(len as usize);
                    if memchr::memchr2(b'\n', b'\r', &json).is_some() {
                        self.buf.extend(
                            json.iter()
                                .map(|&c| if c == b'\n' || c == b'\r' { b' ' } else { c }),
                        );
                    } else {
                        self.buf.extend_from_slice(&json);
                    }
                    self.buf.extend_from_slice(b"\n");
                    rows += 1;
                }
                _ => return Err("unexpected field count"),
            }
        }
        Ok(rows)
    }

    fn log_progress(&mut self, done: bool) {
        let now = std::time::Instant::now();
        if done || now.duration_since(self.last_log) >= PROGRESS_EVERY {
            self.last_log = now;
            let secs = now.duration_since(self.started).as_secs_f64().max(1e-9);
            tracing::info!(
                rows = self.progress.rows(),
                bytes = self.progress.bytes(),
                rows_per_s = (self.progress.rows() as f64 / secs) as u64,
                done,
                "export progress"
            );
        }
    }

    fn take_chunk(&mut self) -> Poll<Option<io::Result<Bytes>>> {
        Poll::Ready(Some(Ok(self.buf.split().freeze())))
    }
}

impl Stream for ExportStream {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            match &mut this.state {
                State::Streaming => match this.copy.as_mut().poll_next(cx) {
                    Poll::Ready(Some(Ok(msg))) => {
                        if let Err(e) = this.absorb(msg) {
                            this.state = State::Done;
                            return Poll::Ready(Some(Err(e)));
                        }
                        if this.buf.len() >= CHUNK {
                            this.log_progress(false);
                            return this.take_chunk();
                        }
                    }
                    Poll::Ready(Some(Err(e))) => {
                        this.state = State::Done;
                        let err = pg_error(&this.database, this.stage(), &e, None);
                        tracing::error!(error = %err, "postgres stream failed");
                        return Poll::Ready(Some(Err(io::Error::other(StreamFailure(Box::new(
                            err,
                        ))))));
                    }
                    Poll::Ready(None) => {
                        if this.format == ExportFormat::Ndjson && !this.trailer_seen {
                            this.state = State::Done;
                            let e = this.failure(
                                this.stage(),
                                "COPY ended without its trailer".into(),
                                None,
                            );
                            return Poll::Ready(Some(Err(e)));
                        }
                        // CopyDone: all rows were sent. COMMIT confirms the server finished
                        // the statement and the connection is sound before the stream may end.
                        let client = this.client.take();
                        let task = this.task.take();
                        let database = this.database.clone();
                        let canceller = this.cancel.0.clone();
                        this.state = State::Closing(Box::pin(async move {
                            let Some(client) = client else {
                                return Ok(());
                            };
                            client
                                .batch_execute("COMMIT")
                                .await
                                .map_err(|e| pg_error(&database, "commit", &e, None))?;
                            canceller.settle();
                            drop(client);
                            // The client is gone, so the connection says Terminate and ends.
                            if let Some(mut task) = task {
                                let _ =
                                    tokio::time::timeout(Duration::from_secs(2), &mut task.0).await;
                            }
                            Ok(())
                        }));
                        if !this.buf.is_empty() {
                            return this.take_chunk();
                        }
                    }
                    Poll::Pending => {
                        if !this.buf.is_empty() {
                            return this.take_chunk();
                        }
                        return Poll::Pending;
                    }
                },
                State::Closing(fut) => match fut.as_mut().poll(cx) {
                    Poll::Ready(Ok(())) => {
                        this.state = State::Done;
                        this.log_progress(true);
                        return Poll::Ready(None);
                    }
                    Poll::Ready(Err(e)) => {
                        this.state = State::Done;
                        return Poll::Ready(Some(Err(io::Error::other(StreamFailure(Box::new(
                            e,
                        ))))));
                    }
                    Poll::Pending => return Poll::Pending,
                },
                State::Done => return Poll::Ready(None),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numbers(sql: &str) -> Vec<usize> {
        find_placeholders(sql).iter().map(|p| p.number).collect()
    }

    #[test]
    fn placeholders_outside_strings_comments_and_identifiers() {
        assert_eq!(numbers("select $1, $2::int, $10"), vec![1, 2, 10]);
        assert_eq!(numbers("select '$1', \"$2\", $3"), vec![3]);
        assert_eq!(numbers("select 'it''s $1', $2"), vec![2]);
        assert_eq!(numbers("select E'\\' $1', $2"), vec![2]);
        assert_eq!(numbers("select $$ $1 $$, $tag$ $2 $tag$, $3"), vec![3]);
        assert_eq!(numbers("select 1 -- $1\n, $2"), vec![2]);
        assert_eq!(numbers("select /* $1 /* $2 */ $3 */ $4"), vec![4]);
        assert_eq!(numbers("select a$1, x from t where y = $1"), vec![1]);
        assert_eq!(numbers("select $1+$2"), vec![1, 2]);
        // An unterminated string hides the rest rather than finding placeholders in it.
        assert_eq!(numbers("select $1, 'open $2"), vec![1]);
        let p = find_placeholders("a = $12 and b");
        assert_eq!((p[0].start, p[0].end, p[0].number), (4, 7, 12));
    }

    fn env_ref() -> SecretRef {
        SecretRef::Env("DATABASE_URL".into())
    }

    #[test]
    fn connection_never_prints_the_password() {
        let s = Secret::new("postgres://u:hunter2@h/db");
        let settings = ConnectionSettings::from_url(&s, &env_ref()).unwrap();
        let shown = format!("{settings:?} {}", settings.database);
        assert!(!shown.contains("hunter2"), "{shown}");
        assert_eq!(settings.database, "u@h:5432/db");
    }

    #[test]
    fn url_sslmode_and_roots() {
        let parse = |u: &str| ConnectionSettings::from_secret(&Secret::new(u), &env_ref());
        let s = parse("postgres://u:p@h:6543/db").unwrap();
        assert_eq!(s.ssl_mode, SslMode::VerifyFull);
        assert_eq!(s.root_certs, RootCerts::System);
        assert_eq!(s.database, "u@h:6543/db");
        let s = parse("postgresql://u@h/db?sslmode=disable&application_name=x").unwrap();
        assert_eq!(s.ssl_mode, SslMode::Disable);
        assert_eq!(s.config.get_application_name(), Some("x"));
        let s = parse("postgres://u@h/db?sslmode=require&sslrootcert=%2Ftmp%2Fca.pem").unwrap();
        assert_eq!(s.ssl_mode, SslMode::VerifyCa);
        assert_eq!(s.root_certs, RootCerts::File("/tmp/ca.pem".into()));
        let s = parse("postgres://u@h/db?sslmode=prefer").unwrap();
        assert_eq!(s.ssl_mode, SslMode::Prefer);
        let e = parse("postgres://u:secretpw@h/db?sslmode=maybe")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("sslmode \"maybe\"") && !e.contains("secretpw"),
            "{e}"
        );
        let e = parse("postgres://u:secretpw@h/db?sslkey=/k")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("sslkey is not supported") && !e.contains("secretpw"),
            "{e}"
        );
        let e = parse("host=h user=u password=secretpw")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("secret env \"DATABASE_URL\": not a connection") && !e.contains("secretpw"),
            "{e}"
        );
        let e = parse("postgres://u:secretpw@h:notaport/db")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("secretpw"), "{e}");
    }

    #[test]
    fn secret_json_shape() {
        let s = ConnectionSettings::from_secret(
            &Secret::new(
                r#"{"username":"app","password":"pw\"x","host":"db.local","port":5433,"dbname":"lake","engine":"postgres"}"#,
            ),
            &env_ref(),
        )
        .unwrap();
        assert_eq!(s.database, "app@db.local:5433/lake");
        assert_eq!(s.ssl_mode, SslMode::VerifyFull);
        let s = ConnectionSettings::from_secret(
            &Secret::new(
                r#"{"username":"app","password":"x","host":"h","port":"5432","sslmode":"disable"}"#,
            ),
            &env_ref(),
        )
        .unwrap();
        assert_eq!(s.ssl_mode, SslMode::Disable);
        let e = ConnectionSettings::from_secret(
            &Secret::new(r#"{"user":"app","password":"topsecret"}"#),
            &env_ref(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("expected a postgres://") && !e.contains("topsecret"),
            "{e}"
        );
        let e = ConnectionSettings::from_secret(&Secret::new("topsecret"), &env_ref())
            .unwrap_err()
            .to_string();
        assert!(e.contains("not JSON") && !e.contains("topsecret"), "{e}");
    }

    #[test]
    fn sqlstate_classes() {
        assert_eq!(sqlstate_kind("57P01"), ErrorKind::Retryable);
        assert_eq!(sqlstate_kind("57014"), ErrorKind::Timeout);
        assert_eq!(sqlstate_kind("42601"), ErrorKind::InvalidInput);
        assert_eq!(sqlstate_kind("25006"), ErrorKind::InvalidInput);
        assert_eq!(sqlstate_kind("28P01"), ErrorKind::Upstream);
        assert_eq!(sqlstate_kind("08006"), ErrorKind::Retryable);
        assert_eq!(sqlstate_kind("XX000"), ErrorKind::Upstream);
    }

    #[test]
    fn params_render_as_text() {
        use serde_json::json;
        assert_eq!(param_text(&json!(null)), None);
        assert_eq!(param_text(&json!("a'b")).as_deref(), Some("a'b"));
        assert_eq!(param_text(&json!(42)).as_deref(), Some("42"));
        assert_eq!(param_text(&json!(1.5)).as_deref(), Some("1.5"));
        assert_eq!(param_text(&json!(true)).as_deref(), Some("true"));
        assert_eq!(
            param_text(&json!({"a": [1]})).as_deref(),
            Some(r#"{"a":[1]}"#)
        );
    }
}
