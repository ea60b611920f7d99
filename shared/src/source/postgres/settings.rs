//! Connection settings: a `postgres://` URL or the RDS secret JSON, resolved into driver
//! settings, a TLS policy and a printable name without secrets.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use tokio_postgres::config::Host;

use crate::error::{Error, ErrorKind, Result};
use crate::secret::{Secret, SecretRef, SecretResolver};

/// Connect timeout when the URL sets none.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

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
    pub(super) config: tokio_postgres::Config,
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
        match secret {
            Some(r) => {
                let value = resolver.resolve(r).await?;
                Self::from_secret(&value, r)
            }
            // The function's own configuration, not event input: no allow-list entry needed.
            None => {
                let r = SecretRef::Env("DATABASE_URL".to_owned());
                let value = resolver.resolve_configured(&r).await?;
                Self::from_secret(&value, &r)
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
