//! Secrets (API tokens, passwords): where a job spec says to find them, the type that carries
//! them without ever printing them, and the resolver that fetches them.
//!
//! A job spec never holds a secret itself — events are logged by Lambda, EventBridge and Step
//! Functions — only a [`SecretRef`] saying where to find it:
//!
//! ```json
//! {"env": "API_TOKEN"}
//! {"secrets_manager": {"id": "prod/api", "json_key": "token"}}
//! {"ssm": {"name": "/sluice/api-token"}}
//! ```
//!
//! A literal (`{"value": "..."}`, or a bare string where a reference is expected) is rejected
//! with an error that does not repeat it. Tests that need a fixed secret put it in an
//! environment variable of the function and use `{"env": ...}`.
//!
//! **Which environment variables an event may name** is function configuration, not job
//! input: `SLUICE_SECRET_ENV` lists them, comma-separated, an entry ending in `*` being a
//! prefix (`SLUICE_SECRET_ENV=ORDERS_API_KEY,PARTNER_*`; `*` allows every name). Unset or
//! empty, **none** may be named. Names starting with `AWS_` (any case) are refused whatever
//! the list says: they hold the function's own credentials (`AWS_SECRET_ACCESS_KEY`,
//! `AWS_SESSION_TOKEN`), which an event could otherwise send to a host of its choosing as a
//! bearer token. Variables the function reads by its own configuration (`DATABASE_URL`) are
//! not event input and need no entry ([`SecretResolver::resolve_configured`]).
//!
//! [`SecretResolver`] turns a reference into a [`Secret`], whose `Debug` and `Display` print
//! `[redacted]`; the value is reached only through [`Secret::expose`] or
//! [`Secret::header_value`] (which marks the header sensitive).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_secretsmanager::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use reqwest::header::{HeaderValue, InvalidHeaderValue};
use serde::{Deserialize, Deserializer};

use crate::error::{Error, ErrorKind, Result};

/// What `Debug` and `Display` print instead of a secret.
pub const REDACTED: &str = "[redacted]";

/// A secret value. `Debug` and `Display` print `[redacted]`; it has no `Serialize`, so it
/// cannot end up in a summary or a log line by accident. Cloning is cheap (shared).
#[derive(Clone)]
pub struct Secret(Arc<str>);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(Arc::from(value.into()))
    }

    /// The value. Use it only to hand it to the request that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The value as a header value marked sensitive (HTTP/2 never indexes it, and `Debug` of
    /// the header map prints `Sensitive`). Fails when the value holds characters a header
    /// cannot carry (control characters such as a trailing newline); the error does not
    /// contain the value.
    pub fn header_value(&self) -> std::result::Result<HeaderValue, InvalidHeaderValue> {
        let mut value = HeaderValue::from_str(self.expose())?;
        value.set_sensitive(true);
        Ok(value)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// Where a secret lives. Holds names, never the value, so it may be logged.
///
/// JSON shapes (exactly one key):
/// - `{"env": "API_TOKEN"}` — an environment variable of the function;
/// - `{"secrets_manager": {"id": "name-or-arn", "json_key": "token"}}` — the `SecretString`
///   of a Secrets Manager secret (`AWSCURRENT`); with `json_key`, the string must be a JSON
///   object and that field is used (a number or boolean field is used as its JSON text);
/// - `{"ssm": {"name": "/path/param"}}` — a Parameter Store parameter, decrypted
///   (`SecureString`).
///
/// Anything else — a bare string, `{"value": ...}`, an unknown key — is an error that names
/// the shape expected and never repeats what was given (it may be the secret itself).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SecretRef {
    /// An environment variable of the function.
    Env(String),
    /// A Secrets Manager secret.
    SecretsManager(SecretsManagerRef),
    /// A Systems Manager Parameter Store parameter.
    Ssm(SsmRef),
}

/// `{"secrets_manager": {...}}` in a [`SecretRef`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretsManagerRef {
    /// Secret name or ARN.
    #[schemars(length(min = 1))]
    pub id: String,
    /// When set, the `SecretString` is a JSON object and this field of it is the secret.
    /// Default none: the whole `SecretString`.
    #[serde(default)]
    #[schemars(length(min = 1))]
    pub json_key: Option<String>,
}

/// `{"ssm": {...}}` in a [`SecretRef`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SsmRef {
    /// Parameter name (`/path/param`) or ARN.
    #[schemars(length(min = 1))]
    pub name: String,
}

const EXPECTED_SHAPE: &str = "a secret reference must be {\"env\": \"VAR\"}, \
     {\"secrets_manager\": {\"id\": \"...\"}} or {\"ssm\": {\"name\": \"...\"}}";

impl SecretRef {
    /// Parses a reference from JSON. Errors never contain the given values (they might be a
    /// secret pasted where a reference belongs), only keys and the expected shape.
    pub fn from_json(value: serde_json::Value) -> std::result::Result<Self, String> {
        use serde_json::Value;
        let map = match value {
            Value::Object(map) => map,
            other => {
                return Err(format!(
                    "{EXPECTED_SHAPE}; got a {} (not shown: literal secrets are not accepted)",
                    json_type(&other)
                ));
            }
        };
        if map.len() != 1 {
            let keys: Vec<&str> = map.keys().map(String::as_str).collect();
            return Err(format!(
                "{EXPECTED_SHAPE}: exactly one key, got {}: {keys:?}",
                keys.len()
            ));
        }
        let Some((source, inner)) = map.into_iter().next() else {
            return Err(format!("{EXPECTED_SHAPE}: got an empty object"));
        };
        match source.as_str() {
            "env" => match inner {
                Value::String(name) if !name.is_empty() => Ok(SecretRef::Env(name)),
                Value::String(_) => {
                    Err("secret reference `env`: the variable name is empty".into())
                }
                other => Err(format!(
                    "secret reference `env` must be the name of an environment variable (a string), got a {}",
                    json_type(&other)
                )),
            },
            "secrets_manager" => {
                if !inner.is_object() {
                    return Err(format!(
                        "secret reference `secrets_manager` must be {{\"id\": \"...\", \"json_key\": \"...\"}}, got a {}",
                        json_type(&inner)
                    ));
                }
                let r: SecretsManagerRef = serde_json::from_value(inner)
                    .map_err(|e| format!("secret reference `secrets_manager`: {e}"))?;
                if r.id.is_empty() {
                    return Err("secret reference `secrets_manager.id` is empty".into());
                }
                if r.json_key.as_deref() == Some("") {
                    return Err("secret reference `secrets_manager.json_key` is empty".into());
                }
                Ok(SecretRef::SecretsManager(r))
            }
            "ssm" => {
                if !inner.is_object() {
                    return Err(format!(
                        "secret reference `ssm` must be {{\"name\": \"/path/param\"}}, got a {}",
                        json_type(&inner)
                    ));
                }
                let r: SsmRef = serde_json::from_value(inner)
                    .map_err(|e| format!("secret reference `ssm`: {e}"))?;
                if r.name.is_empty() {
                    return Err("secret reference `ssm.name` is empty".into());
                }
                Ok(SecretRef::Ssm(r))
            }
            "value" | "literal" | "plain" => Err(format!(
                "secret reference `{source}`: literal secret values are not accepted in a job spec \
                 (events are logged); put the value in an environment variable (`env`), Secrets \
                 Manager (`secrets_manager`) or Parameter Store (`ssm`)"
            )),
            other => Err(format!(
                "unknown secret source `{other}`, expected one of `env`, `secrets_manager`, `ssm`"
            )),
        }
    }

    fn cache_key(&self) -> Option<CacheKey> {
        match self {
            SecretRef::Env(_) => None,
            SecretRef::SecretsManager(r) => Some(CacheKey::SecretsManager(r.id.clone())),
            SecretRef::Ssm(r) => Some(CacheKey::Ssm(r.name.clone())),
        }
    }

    /// An error about this reference.
    pub(crate) fn error(
        &self,
        class: &'static str,
        message: impl Into<String>,
        kind: ErrorKind,
    ) -> Error {
        Error::Secret {
            reference: self.to_string(),
            class,
            message: message.into(),
            kind,
        }
    }
}

fn json_type(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "boolean",
        serde_json::Value::Number(_) => "number",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Array(_) => "array",
        serde_json::Value::Object(_) => "object",
    }
}

impl<'de> Deserialize<'de> for SecretRef {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        // Through a JSON value rather than a derived enum: serde's own messages repeat the
        // offending value ("unknown variant `sk-live-...`"), and a literal token pasted where a
        // reference belongs would then be logged with the spec error.
        let value = serde_json::Value::deserialize(deserializer)?;
        SecretRef::from_json(value).map_err(serde::de::Error::custom)
    }
}

/// `env "API_TOKEN"`, `secrets_manager "prod/api" json_key "token"`, `ssm "/p"`: how errors
/// and logs name a reference.
impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretRef::Env(name) => write!(f, "env {name:?}"),
            SecretRef::SecretsManager(r) => {
                write!(f, "secrets_manager {:?}", r.id)?;
                if let Some(key) = &r.json_key {
                    write!(f, " json_key {key:?}")?;
                }
                Ok(())
            }
            SecretRef::Ssm(r) => write!(f, "ssm {:?}", r.name),
        }
    }
}

/// The function's environment variable that lists the variables an event may name as
/// `{"env": ...}` secrets (see the module docs).
pub const SECRET_ENV_ALLOW: &str = "SLUICE_SECRET_ENV";

/// Which environment variables an event may name ([`SECRET_ENV_ALLOW`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvAllowList {
    names: Vec<String>,
    prefixes: Vec<String>,
}

impl EnvAllowList {
    /// From the text of `SLUICE_SECRET_ENV`: comma-separated names, `PREFIX_*` for a prefix,
    /// `*` for every name; blanks ignored.
    pub fn parse(text: &str) -> Self {
        let mut list = EnvAllowList::default();
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            match entry.strip_suffix('*') {
                Some(prefix) => list.prefixes.push(prefix.to_owned()),
                None => list.names.push(entry.to_owned()),
            }
        }
        list
    }

    /// From this process's `SLUICE_SECRET_ENV` (unset: none allowed).
    pub fn from_env() -> Self {
        Self::parse(&std::env::var(SECRET_ENV_ALLOW).unwrap_or_default())
    }

    /// Whether an event may name `name`. `AWS_*` never.
    pub fn allows(&self, name: &str) -> bool {
        !is_aws(name)
            && (self.names.iter().any(|n| n == name)
                || self.prefixes.iter().any(|p| name.starts_with(p.as_str())))
    }
}

/// `AWS_*`, in any case: the function's own credentials and configuration.
fn is_aws(name: &str) -> bool {
    name.get(..4)
        .is_some_and(|head| head.eq_ignore_ascii_case("AWS_"))
}

/// Default time a fetched secret is reused: 5 minutes.
pub const DEFAULT_TTL: Duration = Duration::from_secs(300);

/// Most secrets kept at once; past it the oldest entry goes.
const CACHE_CAPACITY: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum CacheKey {
    SecretsManager(String),
    Ssm(String),
}

/// Fetched values by what was fetched (the whole `SecretString`, so two references to
/// different `json_key`s of one secret share one call).
struct Cache {
    ttl: Duration,
    entries: Mutex<HashMap<CacheKey, (Instant, Secret)>>,
}

impl Cache {
    fn new(ttl: Duration) -> Self {
        Cache {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn get(&self, key: &CacheKey, now: Instant) -> Option<Secret> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(key)
            .filter(|(fetched, _)| now.saturating_duration_since(*fetched) < self.ttl)
            .map(|(_, secret)| secret.clone())
    }

    fn insert(&self, key: CacheKey, secret: Secret, now: Instant) {
        if self.ttl.is_zero() {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|_, (fetched, _)| now.saturating_duration_since(*fetched) < self.ttl);
        if entries.len() >= CACHE_CAPACITY
            && let Some(oldest) = entries
                .iter()
                .min_by_key(|(_, (fetched, _))| *fetched)
                .map(|(k, _)| k.clone())
        {
            entries.remove(&oldest);
        }
        entries.insert(key, (now, secret));
    }

    fn remove(&self, key: &CacheKey) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.remove(key);
    }
}

/// Resolves [`SecretRef`]s: environment variables, Secrets Manager, Parameter Store.
///
/// Build it once per function (like the S3 client) so warm invocations reuse fetched values:
/// a value is kept for the TTL (default 5 minutes, [`DEFAULT_TTL`]); a rotated secret is
/// picked up within that time, or at once after [`SecretResolver::forget`]. Environment
/// variables are read on every call. Failures are not cached.
///
/// Calls use the SDK's standard retries (3 attempts) and time out after 10 s per attempt,
/// 30 s in all, so a hanging endpoint cannot eat the invocation.
pub struct SecretResolver {
    secrets_manager: aws_sdk_secretsmanager::Client,
    ssm: aws_sdk_ssm::Client,
    cache: Cache,
    env_allowed: EnvAllowList,
}

impl fmt::Debug for SecretResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretResolver")
            .field("ttl", &self.cache.ttl)
            .finish_non_exhaustive()
    }
}

impl SecretResolver {
    /// Clients for Secrets Manager and SSM from `conf`. The endpoint is the config's:
    /// `aws_config::load_defaults` takes it from `AWS_ENDPOINT_URL_SECRETS_MANAGER` /
    /// `AWS_ENDPOINT_URL_SSM`, else `AWS_ENDPOINT_URL` (a local moto), else AWS's.
    pub fn new(conf: &aws_config::SdkConfig) -> Self {
        use aws_sdk_secretsmanager::config::retry::RetryConfig;
        use aws_sdk_secretsmanager::config::timeout::TimeoutConfig;
        let retry = RetryConfig::standard().with_max_attempts(3);
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(3))
            .operation_attempt_timeout(Duration::from_secs(10))
            .operation_timeout(Duration::from_secs(30))
            .build();
        let sm = aws_sdk_secretsmanager::config::Builder::from(conf)
            .retry_config(retry.clone())
            .timeout_config(timeouts.clone())
            .build();
        let ssm = aws_sdk_ssm::config::Builder::from(conf)
            .retry_config(retry)
            .timeout_config(timeouts)
            .build();
        SecretResolver {
            secrets_manager: aws_sdk_secretsmanager::Client::from_conf(sm),
            ssm: aws_sdk_ssm::Client::from_conf(ssm),
            cache: Cache::new(DEFAULT_TTL),
            env_allowed: EnvAllowList::from_env(),
        }
    }

    /// Which environment variables events may name. Default: from `SLUICE_SECRET_ENV` when
    /// the resolver was built ([`EnvAllowList::from_env`]).
    pub fn with_env_allowed(mut self, allowed: EnvAllowList) -> Self {
        self.env_allowed = allowed;
        self
    }

    /// How long a fetched value is reused. Default [`DEFAULT_TTL`] (5 minutes); zero turns
    /// the cache off.
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.cache = Cache::new(ttl);
        self
    }

    /// Puts `value` in the cache for `r` (unit tests of code that resolves secrets).
    #[cfg(test)]
    pub(crate) fn with_cached(self, r: &SecretRef, value: &str) -> Self {
        let key = r.cache_key().expect("a fetched reference");
        self.cache.insert(key, Secret::new(value), Instant::now());
        self
    }

    /// A resolver whose endpoint never answers (unit tests).
    #[cfg(test)]
    pub(crate) fn unreachable_for_tests() -> Self {
        // Port 9 (discard) on loopback: nothing answers, so any fetch fails fast.
        let conf = aws_config::SdkConfig::builder()
            .endpoint_url("http://127.0.0.1:9")
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(
                aws_sdk_secretsmanager::config::SharedCredentialsProvider::new(
                    aws_sdk_secretsmanager::config::Credentials::new("a", "b", None, None, "t"),
                ),
            )
            .behavior_version(aws_config::BehaviorVersion::latest())
            .build();
        SecretResolver::new(&conf)
    }

    /// The Secrets Manager client (for setup in tests and tools).
    pub fn secrets_manager_client(&self) -> &aws_sdk_secretsmanager::Client {
        &self.secrets_manager
    }

    /// The SSM client (for setup in tests and tools).
    pub fn ssm_client(&self) -> &aws_sdk_ssm::Client {
        &self.ssm
    }

    /// Drops the cached value behind `r`, e.g. after the API answered 401 with it, so the
    /// next [`resolve`](Self::resolve) fetches a possibly rotated one.
    pub fn forget(&self, r: &SecretRef) {
        if let Some(key) = r.cache_key() {
            self.cache.remove(&key);
        }
    }

    /// The secret `r` points at.
    ///
    /// Errors ([`Error::Secret`]) name the reference and the class, never the value:
    /// `not set` / `not found` / `json_key not found` / `not JSON` / `not a string` / `empty`
    /// are `InvalidInput`; `access denied`, `decryption failed` and other refusals are
    /// `Upstream`; throttling, 5xx and network failures (after the SDK's retries) are
    /// `Retryable`.
    ///
    /// `r` comes from an event: an `{"env": NAME}` reference must be allowed by
    /// `SLUICE_SECRET_ENV`, and is never an `AWS_*` variable (class `not allowed`,
    /// `InvalidInput`, checked before the variable is read).
    pub async fn resolve(&self, r: &SecretRef) -> Result<Secret> {
        if let SecretRef::Env(name) = r {
            if is_aws(name) {
                return Err(r.error(
                    "not allowed",
                    "AWS_* variables hold the function's own credentials and configuration and are never given out as secrets, whatever SLUICE_SECRET_ENV says; put the value in Secrets Manager or Parameter Store, or in a variable of another name",
                    ErrorKind::InvalidInput,
                ));
            }
            if !self.env_allowed.allows(name) {
                return Err(r.error(
                    "not allowed",
                    format!(
                        "an event may name only the environment variables the function's configuration allows; add {name} (or a prefix such as {}*) to the function's SLUICE_SECRET_ENV (comma-separated)",
                        name.split_inclusive('_').next().unwrap_or(name)
                    ),
                    ErrorKind::InvalidInput,
                ));
            }
        }
        self.resolve_configured(r).await
    }

    /// The secret `r` points at, where `r` was chosen by the function's own configuration
    /// (the `DATABASE_URL` default of an export), not by an event: no allow-list check.
    pub async fn resolve_configured(&self, r: &SecretRef) -> Result<Secret> {
        let raw = match r {
            SecretRef::Env(name) => match std::env::var(name) {
                Ok(v) => Secret::new(v),
                Err(std::env::VarError::NotPresent) => {
                    return Err(r.error(
                        "not set",
                        "the function has no such environment variable",
                        ErrorKind::InvalidInput,
                    ));
                }
                Err(std::env::VarError::NotUnicode(_)) => {
                    return Err(r.error(
                        "not UTF-8",
                        "the environment variable is not valid UTF-8",
                        ErrorKind::InvalidInput,
                    ));
                }
            },
            SecretRef::SecretsManager(_) | SecretRef::Ssm(_) => self.fetch_cached(r).await?,
        };
        let secret = match r {
            SecretRef::SecretsManager(SecretsManagerRef {
                json_key: Some(key),
                ..
            }) => json_field(r, &raw, key)?,
            _ => raw,
        };
        if secret.expose().is_empty() {
            return Err(r.error("empty", "the value is empty", ErrorKind::InvalidInput));
        }
        Ok(secret)
    }

    async fn fetch_cached(&self, r: &SecretRef) -> Result<Secret> {
        let Some(key) = r.cache_key() else {
            unreachable!("only Secrets Manager and SSM references are fetched")
        };
        if let Some(secret) = self.cache.get(&key, Instant::now()) {
            tracing::debug!(secret = %r, "secret from cache");
            return Ok(secret);
        }
        let secret = match r {
            SecretRef::SecretsManager(sm) => {
                let out = self
                    .secrets_manager
                    .get_secret_value()
                    .secret_id(&sm.id)
                    .send()
                    .await
                    .map_err(|e| sdk_error(r, "GetSecretValue", &e))?;
                match out.secret_string() {
                    Some(s) => Secret::new(s),
                    None => {
                        return Err(r.error(
                            "not a string",
                            "the secret has no SecretString (binary secrets are not supported)",
                            ErrorKind::InvalidInput,
                        ));
                    }
                }
            }
            SecretRef::Ssm(p) => {
                let out = self
                    .ssm
                    .get_parameter()
                    .name(&p.name)
                    .with_decryption(true)
                    .send()
                    .await
                    .map_err(|e| sdk_error(r, "GetParameter", &e))?;
                match out.parameter().and_then(|p| p.value()) {
                    Some(v) => Secret::new(v),
                    None => {
                        return Err(r.error(
                            "not a string",
                            "GetParameter answered without a value",
                            ErrorKind::Upstream,
                        ));
                    }
                }
            }
            SecretRef::Env(_) => unreachable!("environment variables are not fetched"),
        };
        tracing::debug!(secret = %r, "secret fetched");
        self.cache.insert(key, secret.clone(), Instant::now());
        Ok(secret)
    }
}

/// The field `key` of the JSON object in `raw`. Messages never quote the document (serde's
/// type errors would).
fn json_field(r: &SecretRef, raw: &Secret, key: &str) -> Result<Secret> {
    let Ok(serde_json::Value::Object(mut map)) =
        serde_json::from_str::<serde_json::Value>(raw.expose())
    else {
        return Err(r.error(
            "not JSON",
            "json_key is set but the SecretString is not a JSON object",
            ErrorKind::InvalidInput,
        ));
    };
    match map.remove(key) {
        Some(serde_json::Value::String(s)) => Ok(Secret::new(s)),
        Some(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => {
            Ok(Secret::new(v.to_string()))
        }
        Some(other) => Err(r.error(
            "not a string",
            format!(
                "field {key:?} of the SecretString is a {}, not a string",
                json_type(&other)
            ),
            ErrorKind::InvalidInput,
        )),
        None => Err(r.error(
            "json_key not found",
            format!("the SecretString's JSON object has no field {key:?}"),
            ErrorKind::InvalidInput,
        )),
    }
}

/// Classifies an SDK failure. Error responses of these APIs never carry the secret value.
fn sdk_error<E>(r: &SecretRef, operation: &str, e: &SdkError<E>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let message = format!("{operation}: {}", DisplayErrorContext(e));
    let status = e.raw_response().map(|resp| resp.status().as_u16());
    let (class, kind) = match e {
        SdkError::ServiceError(_) => match e.code().unwrap_or_default() {
            "ResourceNotFoundException" | "ParameterNotFound" | "ParameterVersionNotFound" => {
                ("not found", ErrorKind::InvalidInput)
            }
            "AccessDeniedException"
            | "AccessDenied"
            | "UnrecognizedClientException"
            | "InvalidSignatureException"
            | "ExpiredTokenException" => ("access denied", ErrorKind::Upstream),
            "DecryptionFailure" | "InvalidKeyId" => ("decryption failed", ErrorKind::Upstream),
            "ThrottlingException" | "InternalServiceError" | "InternalServerError" => {
                ("request failed", ErrorKind::Retryable)
            }
            _ if status.is_some_and(|s| s >= 500 || s == 429) => {
                ("request failed", ErrorKind::Retryable)
            }
            _ if status == Some(403) => ("access denied", ErrorKind::Upstream),
            _ => ("refused", ErrorKind::Upstream),
        },
        SdkError::ConstructionFailure(_) => ("invalid request", ErrorKind::InvalidInput),
        // Timeouts, connection failures, unreadable responses.
        _ => ("request failed", ErrorKind::Retryable),
    };
    r.error(class, message, kind)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const CANARY: &str = "sk-live-CANARY-0123456789";

    fn parse(v: serde_json::Value) -> std::result::Result<SecretRef, String> {
        serde_json::from_value::<SecretRef>(v).map_err(|e| e.to_string())
    }

    #[test]
    fn parses_every_shape() {
        assert_eq!(
            parse(json!({"env": "API_TOKEN"})).unwrap(),
            SecretRef::Env("API_TOKEN".into())
        );
        assert_eq!(
            parse(json!({"secrets_manager": {"id": "prod/api"}})).unwrap(),
            SecretRef::SecretsManager(SecretsManagerRef {
                id: "prod/api".into(),
                json_key: None
            })
        );
        assert_eq!(
            parse(json!({"secrets_manager": {"id": "arn:aws:secretsmanager:us-east-1:1:secret:x", "json_key": "token"}}))
                .unwrap(),
            SecretRef::SecretsManager(SecretsManagerRef {
                id: "arn:aws:secretsmanager:us-east-1:1:secret:x".into(),
                json_key: Some("token".into())
            })
        );
        assert_eq!(
            parse(json!({"ssm": {"name": "/sluice/token"}})).unwrap(),
            SecretRef::Ssm(SsmRef {
                name: "/sluice/token".into()
            })
        );
    }

    #[test]
    fn literal_secrets_are_rejected_without_echo() {
        for bad in [
            json!(CANARY),
            json!({"value": CANARY}),
            json!({"literal": CANARY}),
            json!({"env": {"x": CANARY}}),
            json!({"secrets_manager": CANARY}),
            json!({"ssm": CANARY}),
            json!([CANARY]),
        ] {
            let e = parse(bad.clone()).unwrap_err();
            assert!(!e.contains(CANARY), "{bad}: {e}");
            assert!(e.contains("secret"), "{bad}: {e}");
        }
        let e = parse(json!({"value": CANARY})).unwrap_err();
        assert!(e.contains("literal secret values are not accepted"), "{e}");
        let e = parse(json!(CANARY)).unwrap_err();
        assert!(e.contains("got a string"), "{e}");
    }

    #[test]
    fn bad_references_are_named() {
        let e = parse(json!({"vault": {"path": "x"}})).unwrap_err();
        assert!(e.contains("unknown secret source `vault`"), "{e}");
        let e = parse(json!({"env": "A", "ssm": {"name": "/b"}})).unwrap_err();
        assert!(e.contains("exactly one key, got 2"), "{e}");
        let e = parse(json!({})).unwrap_err();
        assert!(e.contains("exactly one key, got 0"), "{e}");
        let e = parse(json!({"secrets_manager": {"id": "x", "jsonkey": "t"}})).unwrap_err();
        assert!(e.contains("unknown field `jsonkey`"), "{e}");
        let e = parse(json!({"secrets_manager": {"json_key": "t"}})).unwrap_err();
        assert!(e.contains("missing field `id`"), "{e}");
        let e = parse(json!({"ssm": {"name": "/a", "decrypt": false}})).unwrap_err();
        assert!(e.contains("unknown field `decrypt`"), "{e}");
        let e = parse(json!({"env": ""})).unwrap_err();
        assert!(e.contains("empty"), "{e}");
        let e = parse(json!({"secrets_manager": {"id": ""}})).unwrap_err();
        assert!(e.contains("secrets_manager.id` is empty"), "{e}");
    }

    #[test]
    fn references_display_their_names() {
        let r = parse(json!({"secrets_manager": {"id": "prod/api", "json_key": "token"}})).unwrap();
        assert_eq!(
            r.to_string(),
            r#"secrets_manager "prod/api" json_key "token""#
        );
        assert_eq!(SecretRef::Env("T".into()).to_string(), r#"env "T""#);
    }

    #[test]
    fn secret_never_prints_its_value() {
        let s = Secret::new(CANARY);
        assert_eq!(format!("{s}"), REDACTED);
        assert_eq!(format!("{s:?}"), REDACTED);
        assert_eq!(format!("{:?}", Some(s.clone())), "Some([redacted])");
        assert_eq!(s.expose(), CANARY);
        let h = s.header_value().unwrap();
        assert!(h.is_sensitive());
        assert!(!format!("{h:?}").contains(CANARY));
        let e = Secret::new(format!("{CANARY}\n"))
            .header_value()
            .unwrap_err();
        assert!(!format!("{e} {e:?}").contains(CANARY));
    }

    fn resolver_nowhere(ttl: Duration) -> SecretResolver {
        SecretResolver::unreachable_for_tests().with_ttl(ttl)
    }

    #[tokio::test]
    async fn env_secrets_and_their_errors() {
        let resolver = resolver_nowhere(DEFAULT_TTL)
            .with_env_allowed(EnvAllowList::parse("PATH, SLUICE_TEST_SECRET_*"));
        // PATH is set in every test process; setting a variable here would race other tests.
        let path = std::env::var("PATH").unwrap();
        let s = resolver
            .resolve(&SecretRef::Env("PATH".into()))
            .await
            .unwrap();
        assert_eq!(s.expose(), path);
        let e = resolver
            .resolve(&SecretRef::Env("SLUICE_TEST_SECRET_MISSING".into()))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(
            e.to_string()
                .starts_with(r#"secret env "SLUICE_TEST_SECRET_MISSING": not set"#),
            "{e}"
        );
    }

    /// Regression: `{"env": NAME}` could name any variable of the function, so an event could
    /// send the function's own `AWS_SECRET_ACCESS_KEY` or `AWS_SESSION_TOKEN` as a bearer
    /// token to a host of its choosing.
    #[tokio::test]
    async fn events_may_name_only_allowed_variables_and_never_aws_ones() {
        // PATH and HOME are set in every test process; the value must never show.
        let path = std::env::var("PATH").unwrap();
        let refused = |e: Error, name: &str| {
            assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
            let text = e.to_string();
            assert!(
                text.starts_with(&format!("secret env {name:?}: not allowed: ")),
                "{text}"
            );
            assert!(!text.contains(&path), "{text}");
            text
        };
        // Default (no SLUICE_SECRET_ENV): nothing may be named.
        let closed = resolver_nowhere(DEFAULT_TTL).with_env_allowed(EnvAllowList::default());
        let e = closed
            .resolve(&SecretRef::Env("PATH".into()))
            .await
            .unwrap_err();
        let text = refused(e, "PATH");
        assert!(
            text.contains("add PATH") && text.contains("SLUICE_SECRET_ENV"),
            "{text}"
        );
        // Allowed by name and by prefix; others still refused.
        let open = resolver_nowhere(DEFAULT_TTL)
            .with_env_allowed(EnvAllowList::parse("PATH,SLUICE_TEST_*,*AWS"));
        assert_eq!(
            open.resolve(&SecretRef::Env("PATH".into()))
                .await
                .unwrap()
                .expose(),
            path
        );
        let e = open
            .resolve(&SecretRef::Env("HOME".into()))
            .await
            .unwrap_err();
        refused(e, "HOME");
        // AWS_* never, even when the list allows every name or names it.
        let all = resolver_nowhere(DEFAULT_TTL)
            .with_env_allowed(EnvAllowList::parse("*,AWS_SECRET_ACCESS_KEY,AWS_*"));
        for name in [
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_ACCESS_KEY_ID",
            "aws_secret_access_key",
        ] {
            let e = all.resolve(&SecretRef::Env(name.into())).await.unwrap_err();
            let text = refused(e, name);
            assert!(text.contains("never given out"), "{text}");
        }
        assert!(all.resolve(&SecretRef::Env("PATH".into())).await.is_ok());
        // A variable chosen by the function's configuration needs no entry.
        assert!(
            closed
                .resolve_configured(&SecretRef::Env("PATH".into()))
                .await
                .is_ok()
        );
    }

    #[test]
    fn allow_list_syntax() {
        let l = EnvAllowList::parse(" API_TOKEN , PARTNER_*,, ");
        assert!(l.allows("API_TOKEN") && l.allows("PARTNER_X") && l.allows("PARTNER_"));
        assert!(!l.allows("API_TOKEN_2") && !l.allows("PARTNE") && !l.allows("api_token"));
        assert!(!EnvAllowList::parse("").allows("X"));
        assert!(EnvAllowList::parse("*").allows("ANYTHING"));
        assert!(!EnvAllowList::parse("*").allows("AWS_REGION"));
    }

    #[tokio::test]
    async fn empty_values_are_refused() {
        let resolver = resolver_nowhere(DEFAULT_TTL);
        let r = SecretRef::Ssm(SsmRef { name: "/p".into() });
        resolver
            .cache
            .insert(r.cache_key().unwrap(), Secret::new(""), Instant::now());
        let e = resolver.resolve(&r).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"secret ssm "/p": empty: the value is empty"#
        );
    }

    #[tokio::test]
    async fn cached_values_are_reused_until_the_ttl() {
        let resolver = resolver_nowhere(DEFAULT_TTL);
        let r = SecretRef::SecretsManager(SecretsManagerRef {
            id: "prod/api".into(),
            json_key: Some("token".into()),
        });
        let key = r.cache_key().unwrap();
        let doc = format!(r#"{{"token": "{CANARY}", "port": 5432, "nested": {{}}}}"#);
        resolver
            .cache
            .insert(key.clone(), Secret::new(doc), Instant::now());
        // Served from the cache: the endpoint is never asked.
        assert_eq!(resolver.resolve(&r).await.unwrap().expose(), CANARY);
        // Another field of the same cached secret.
        let port = SecretRef::SecretsManager(SecretsManagerRef {
            id: "prod/api".into(),
            json_key: Some("port".into()),
        });
        assert_eq!(resolver.resolve(&port).await.unwrap().expose(), "5432");
        for (json_key, class) in [("nested", "not a string"), ("user", "json_key not found")] {
            let bad = SecretRef::SecretsManager(SecretsManagerRef {
                id: "prod/api".into(),
                json_key: Some(json_key.into()),
            });
            let e = resolver.resolve(&bad).await.unwrap_err().to_string();
            assert!(e.contains(class), "{e}");
            assert!(e.contains("prod/api"), "{e}");
            assert!(!e.contains(CANARY), "{e}");
        }
        // Expired entries are not served.
        let now = Instant::now();
        assert!(resolver.cache.get(&key, now).is_some());
        assert!(resolver.cache.get(&key, now + DEFAULT_TTL).is_none());
        // After forget, the value is fetched again, and the (unreachable) endpoint fails.
        resolver.forget(&r);
        let e = resolver.resolve(&r).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Retryable, "{e}");
        assert!(
            e.to_string()
                .starts_with(r#"secret secrets_manager "prod/api" json_key "token": request failed: GetSecretValue"#),
            "{e}"
        );
    }

    #[test]
    fn cache_is_bounded_and_can_be_off() {
        let cache = Cache::new(DEFAULT_TTL);
        let t0 = Instant::now();
        for i in 0..(CACHE_CAPACITY + 10) {
            cache.insert(
                CacheKey::Ssm(format!("/p/{i}")),
                Secret::new("v"),
                t0 + Duration::from_millis(i as u64),
            );
        }
        let entries = cache.entries.lock().unwrap();
        assert_eq!(entries.len(), CACHE_CAPACITY);
        assert!(!entries.contains_key(&CacheKey::Ssm("/p/0".into())));
        drop(entries);
        let off = Cache::new(Duration::ZERO);
        off.insert(CacheKey::Ssm("/p".into()), Secret::new("v"), t0);
        assert!(off.get(&CacheKey::Ssm("/p".into()), t0).is_none());
    }

    #[test]
    fn non_json_secret_with_json_key_does_not_echo() {
        let r = SecretRef::SecretsManager(SecretsManagerRef {
            id: "x".into(),
            json_key: Some("k".into()),
        });
        for doc in [
            CANARY.to_owned(),
            format!("\"{CANARY}\""),
            format!("[\"{CANARY}\"]"),
        ] {
            let e = json_field(&r, &Secret::new(doc), "k")
                .unwrap_err()
                .to_string();
            assert!(e.contains("not JSON"), "{e}");
            assert!(!e.contains(CANARY), "{e}");
        }
    }
}
