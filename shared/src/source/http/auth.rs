//! HTTP authentication of a source: the `auth` part of a job spec, its resolved form that
//! sets headers or query parameters on a request, and URL redaction for logs and errors.
//!
//! ```json
//! {"bearer": {"token": {"env": "API_TOKEN"}}}
//! {"basic": {"username": "exporter", "password": {"ssm": {"name": "/sluice/api-password"}}}}
//! {"api_key": {"header": "X-Api-Key", "value": {"secrets_manager": {"id": "prod/api", "json_key": "key"}}}}
//! {"api_key": {"query": "api_key", "value": {"env": "API_KEY"}}}
//! ```
//!
//! Secrets are [`SecretRef`]s, never literal values (see [`crate::secret`]). Header values
//! are marked sensitive. A key sent in the query string is part of the request URL, so any
//! URL that is logged or put in an error or summary must go through [`redact_url`] (or
//! [`redact_error`] for a `reqwest::Error`, whose message contains the URL).

use std::fmt;

use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;

use crate::error::{ErrorKind, Result};
use crate::secret::{REDACTED, Secret, SecretRef, SecretResolver};

/// `auth` of an HTTP source: how requests authenticate. Exactly one key.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum AuthSpec {
    /// `{"bearer": {"token": SecretRef}}`: `Authorization: Bearer <token>`.
    Bearer {
        /// The token.
        token: SecretRef,
    },
    /// `{"basic": {"username": "u", "password": SecretRef}}`: `Authorization: Basic
    /// base64(username:password)` (RFC 7617; the username may not contain `:`).
    Basic {
        /// The user name (not a secret; it appears in the spec).
        username: String,
        /// The password.
        password: SecretRef,
    },
    /// `{"api_key": {"header": "X-Api-Key", "value": SecretRef}}` or
    /// `{"api_key": {"query": "api_key", "value": SecretRef}}` (exactly one of `header` and
    /// `query`).
    ApiKey(ApiKeySpec),
}

/// `api_key` of an [`AuthSpec`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(try_from = "ApiKeyRepr")]
pub struct ApiKeySpec {
    /// Where the key goes.
    pub location: ApiKeyLocation,
    /// The key.
    pub value: SecretRef,
}

/// Where an API key is sent.
#[derive(Debug, Clone, PartialEq, Eq, schemars::JsonSchema)]
pub enum ApiKeyLocation {
    /// In this request header (replacing any value the spec's `headers` gave it).
    Header(String),
    /// As this query parameter, appended to the URL's query.
    Query(String),
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("oneOf" = [{"required": ["header"]}, {"required": ["query"]}]))]
struct ApiKeyRepr {
    #[serde(default)]
    #[schemars(description = "The request header that carries the key (give this or `query`).")]
    header: Option<String>,
    #[serde(default)]
    #[schemars(description = "The query parameter that carries the key (give this or `header`).")]
    query: Option<String>,
    #[schemars(description = "The key.")]
    value: SecretRef,
}

impl TryFrom<ApiKeyRepr> for ApiKeySpec {
    type Error = String;

    fn try_from(r: ApiKeyRepr) -> std::result::Result<Self, String> {
        let location = match (r.header, r.query) {
            (Some(_), Some(_)) => {
                return Err(
                    "auth.api_key: give exactly one of `header` or `query`, not both".to_owned(),
                );
            }
            (None, None) => {
                return Err(
                    "auth.api_key: give exactly one of `header` (a header name) or `query` (a query parameter name)"
                        .to_owned(),
                );
            }
            (Some(name), None) => {
                HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                    format!("auth.api_key.header {name:?} is not a valid header name")
                })?;
                ApiKeyLocation::Header(name)
            }
            (None, Some(name)) => {
                if name.is_empty() {
                    return Err("auth.api_key.query: the parameter name is empty".to_owned());
                }
                ApiKeyLocation::Query(name)
            }
        };
        Ok(ApiKeySpec {
            location,
            value: r.value,
        })
    }
}

impl AuthSpec {
    /// Checks what can be checked without resolving secrets (the username of `basic`;
    /// `api_key` names are checked while parsing).
    pub fn validate(&self) -> Result<()> {
        if let AuthSpec::Basic { username, .. } = self
            && username.contains(':')
        {
            return Err(crate::Error::spec(
                "auth.basic.username may not contain ':' (RFC 7617)",
            ));
        }
        if let AuthSpec::Basic { username, .. } = self
            && username.chars().any(char::is_control)
        {
            return Err(crate::Error::spec(
                "auth.basic.username contains control characters",
            ));
        }
        Ok(())
    }

    /// The header this auth sets (`authorization`, or the API key's header), to let a spec
    /// refuse the same header in its own `headers`.
    pub fn header_name(&self) -> Option<&str> {
        match self {
            AuthSpec::Bearer { .. } | AuthSpec::Basic { .. } => Some(AUTHORIZATION.as_str()),
            AuthSpec::ApiKey(ApiKeySpec {
                location: ApiKeyLocation::Header(name),
                ..
            }) => Some(name),
            AuthSpec::ApiKey(_) => None,
        }
    }

    /// The query parameter this auth sets, if any.
    pub fn query_param(&self) -> Option<&str> {
        match self {
            AuthSpec::ApiKey(ApiKeySpec {
                location: ApiKeyLocation::Query(name),
                ..
            }) => Some(name),
            _ => None,
        }
    }

    /// Fetches the secrets (through the resolver's cache) and builds the header or query
    /// parameter. Errors name the secret reference, never the value; a value that cannot be
    /// a header (control characters, e.g. a trailing newline) is an `InvalidInput` error.
    pub async fn resolve(&self, secrets: &SecretResolver) -> Result<ResolvedAuth> {
        self.validate()?;
        let inner = match self {
            AuthSpec::Bearer { token } => {
                let secret = secrets.resolve(token).await?;
                Inner::Header {
                    scheme: "bearer",
                    name: AUTHORIZATION,
                    value: sensitive(token, &format!("Bearer {}", secret.expose()))?,
                }
            }
            AuthSpec::Basic { username, password } => {
                let secret = secrets.resolve(password).await?;
                let credentials =
                    aws_smithy_types::base64::encode(format!("{username}:{}", secret.expose()));
                Inner::Header {
                    scheme: "basic",
                    name: AUTHORIZATION,
                    value: sensitive(password, &format!("Basic {credentials}"))?,
                }
            }
            AuthSpec::ApiKey(ApiKeySpec { location, value }) => {
                let secret = secrets.resolve(value).await?;
                match location {
                    ApiKeyLocation::Header(name) => Inner::Header {
                        scheme: "api_key",
                        name: HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                            crate::Error::spec(format!(
                                "auth.api_key.header {name:?} is not a valid header name"
                            ))
                        })?,
                        value: sensitive(value, secret.expose())?,
                    },
                    ApiKeyLocation::Query(name) => Inner::Query {
                        name: name.clone(),
                        value: secret,
                    },
                }
            }
        };
        Ok(ResolvedAuth(inner))
    }
}

fn sensitive(r: &SecretRef, value: &str) -> Result<HeaderValue> {
    let mut value = HeaderValue::from_str(value).map_err(|_| {
        r.error(
            "not a valid header value",
            "the value contains characters a header cannot carry (control characters, \
             e.g. a trailing newline)",
            ErrorKind::InvalidInput,
        )
    })?;
    value.set_sensitive(true);
    Ok(value)
}

/// Auth with its secret resolved, ready to [`apply`](Self::apply) to requests. `Debug`
/// names the scheme and where it goes, never the value.
#[derive(Clone)]
pub struct ResolvedAuth(Inner);

#[derive(Clone)]
enum Inner {
    Header {
        scheme: &'static str,
        name: HeaderName,
        value: HeaderValue,
    },
    Query {
        name: String,
        value: Secret,
    },
}

impl ResolvedAuth {
    /// Adds the credentials to a request: the header (marked sensitive; it replaces a value
    /// the request already had under that name), or the query parameter (appended to the
    /// URL's query — which then holds the key: redact URLs before logging them).
    pub fn apply(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.0 {
            Inner::Header { name, value, .. } => {
                let mut headers = HeaderMap::with_capacity(1);
                headers.insert(name.clone(), value.clone());
                // `headers` replaces same-named values; `header` would append a second one.
                req.headers(headers)
            }
            Inner::Query { name, value } => req.query(&[(name.as_str(), value.expose())]),
        }
    }

    /// `bearer`, `basic` or `api_key`.
    pub fn scheme(&self) -> &'static str {
        match &self.0 {
            Inner::Header { scheme, .. } => scheme,
            Inner::Query { .. } => "api_key",
        }
    }

    /// The header set, if the credentials go in a header.
    pub fn header_name(&self) -> Option<&HeaderName> {
        match &self.0 {
            Inner::Header { name, .. } => Some(name),
            Inner::Query { .. } => None,
        }
    }

    /// The query parameter set, if the credentials go in the query.
    pub fn query_param(&self) -> Option<&str> {
        match &self.0 {
            Inner::Query { name, .. } => Some(name),
            Inner::Header { .. } => None,
        }
    }
}

impl fmt::Debug for ResolvedAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("ResolvedAuth");
        d.field("scheme", &self.scheme());
        match &self.0 {
            Inner::Header { name, .. } => d.field("header", &name.as_str()),
            Inner::Query { name, .. } => d.field("query", name),
        };
        d.field("value", &format_args!("{REDACTED}")).finish()
    }
}

/// Query and fragment parameters redacted whatever the auth (compared case-insensitively):
/// credentials people put in URLs by hand, and those of presigned S3 / GCS URLs.
const SENSITIVE_PARAMS: &[&str] = &[
    "access_token",
    "refresh_token",
    "id_token",
    "token",
    "api_key",
    "apikey",
    "api-key",
    "key",
    "client_secret",
    "secret",
    "password",
    "passwd",
    "sig",
    "signature",
    "x-amz-signature",
    "x-amz-security-token",
    "x-amz-credential",
    "x-goog-signature",
    "x-goog-credential",
];

/// `url` for logs, errors and summaries: the value of the API-key query parameter of `auth`,
/// of well-known credential parameters (`token`, `api_key`, `sig`, `X-Amz-Signature`,
/// `X-Amz-Security-Token`, ...; case-insensitive) and any userinfo password replaced by
/// `[redacted]`. Everything else is kept as written. An unparseable URL is redacted on a
/// best-effort textual basis.
pub fn redact_url(url: &str, auth: Option<&ResolvedAuth>) -> String {
    let key = auth.and_then(ResolvedAuth::query_param);
    match reqwest::Url::parse(url) {
        Ok(parsed) => redact_parsed(&parsed, key),
        Err(_) => redact_text(url, key),
    }
}

/// `err` with the URL it carries (and prints) redacted as by [`redact_url`].
pub fn redact_error(mut err: reqwest::Error, auth: Option<&ResolvedAuth>) -> reqwest::Error {
    if let Some(url) = err.url_mut() {
        let redacted = redact_url(url.as_str(), auth);
        match reqwest::Url::parse(&redacted) {
            Ok(r) => *url = r,
            Err(_) => return err.without_url(),
        }
    }
    err
}

fn redact_parsed(u: &reqwest::Url, key: Option<&str>) -> String {
    let s = u.as_str();
    let query_len = u.query().map_or(0, |q| q.len() + 1);
    let fragment_len = u.fragment().map_or(0, |f| f.len() + 1);
    let base = &s[..s.len() - query_len - fragment_len];
    let mut out = String::with_capacity(s.len());
    match (u.password(), base.find("://"), base.find('@')) {
        // In the serialization `@` and `:` inside userinfo are percent-encoded, so the first
        // `@` ends it.
        (Some(_), Some(scheme_end), Some(at)) => {
            out.push_str(&base[..scheme_end + 3]);
            out.push_str(u.username());
            out.push(':');
            out.push_str(REDACTED);
            out.push_str(&base[at..]);
        }
        _ => out.push_str(base),
    }
    if let Some(q) = u.query() {
        out.push('?');
        out.push_str(&redact_pairs(q, key));
    }
    if let Some(f) = u.fragment() {
        out.push('#');
        out.push_str(&redact_pairs(f, key));
    }
    out
}

fn redact_text(url: &str, key: Option<&str>) -> String {
    let (base, rest) = match url.find(['?', '#']) {
        Some(i) => url.split_at(i),
        None => (url, ""),
    };
    let mut out = String::with_capacity(url.len());
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let authority_end = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| authority_start + i);
    match base[authority_start..authority_end].rfind('@') {
        Some(at) => {
            let userinfo = &base[authority_start..authority_start + at];
            out.push_str(&base[..authority_start]);
            match userinfo.split_once(':') {
                Some((user, _)) => {
                    out.push_str(user);
                    out.push(':');
                    out.push_str(REDACTED);
                }
                None => out.push_str(userinfo),
            }
            out.push_str(&base[authority_start + at..]);
        }
        None => out.push_str(base),
    }
    // `?query#fragment`, each part redacted pair by pair.
    let mut rest = rest;
    while let Some(sep) = rest.chars().next() {
        let body = &rest[1..];
        let end = if sep == '?' {
            body.find('#').unwrap_or(body.len())
        } else {
            body.len()
        };
        out.push(sep);
        out.push_str(&redact_pairs(&body[..end], key));
        rest = &body[end..];
    }
    out
}

/// `a=1&b=2` with the values of sensitive names replaced. Pairs are kept as written.
fn redact_pairs(pairs: &str, key: Option<&str>) -> String {
    pairs
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, value)) if !value.is_empty() && is_sensitive(name, key) => {
                format!("{name}={REDACTED}")
            }
            _ => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

fn is_sensitive(raw_name: &str, key: Option<&str>) -> bool {
    let name = form_decode(raw_name);
    key == Some(name.as_str())
        || SENSITIVE_PARAMS
            .iter()
            .any(|p| p.eq_ignore_ascii_case(&name))
}

/// `application/x-www-form-urlencoded` decoding of a name: `+` is a space, `%XX` a byte.
fn form_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 3;
                }
                _ => {
                    out.push(b'%');
                    i += 1;
                }
            },
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::{SecretsManagerRef, SsmRef};
    use serde_json::json;

    const CANARY: &str = "sk-live-CANARY-0123456789";

    fn parse(v: serde_json::Value) -> std::result::Result<AuthSpec, String> {
        serde_json::from_value::<AuthSpec>(v).map_err(|e| e.to_string())
    }

    fn ssm(name: &str) -> SecretRef {
        SecretRef::Ssm(SsmRef { name: name.into() })
    }

    #[test]
    fn parses_every_shape() {
        assert_eq!(
            parse(json!({"bearer": {"token": {"env": "API_TOKEN"}}})).unwrap(),
            AuthSpec::Bearer {
                token: SecretRef::Env("API_TOKEN".into())
            }
        );
        assert_eq!(
            parse(json!({"basic": {"username": "u", "password": {"ssm": {"name": "/p"}}}}))
                .unwrap(),
            AuthSpec::Basic {
                username: "u".into(),
                password: ssm("/p")
            }
        );
        let header = parse(json!({"api_key": {"header": "X-Api-Key",
            "value": {"secrets_manager": {"id": "prod/api", "json_key": "key"}}}}))
        .unwrap();
        assert_eq!(
            header,
            AuthSpec::ApiKey(ApiKeySpec {
                location: ApiKeyLocation::Header("X-Api-Key".into()),
                value: SecretRef::SecretsManager(SecretsManagerRef {
                    id: "prod/api".into(),
                    json_key: Some("key".into())
                })
            })
        );
        assert_eq!(header.header_name(), Some("X-Api-Key"));
        let query = parse(json!({"api_key": {"query": "api_key", "value": {"env": "K"}}})).unwrap();
        assert_eq!(query.query_param(), Some("api_key"));
        assert_eq!(query.header_name(), None);
    }

    #[test]
    fn bad_shapes_have_clear_errors() {
        let cases = [
            (
                json!({"api_key": {"header": "X-K", "query": "k", "value": {"env": "K"}}}),
                "exactly one of `header` or `query`, not both",
            ),
            (
                json!({"api_key": {"value": {"env": "K"}}}),
                "exactly one of `header`",
            ),
            (
                json!({"api_key": {"header": "X K", "value": {"env": "K"}}}),
                "auth.api_key.header \"X K\" is not a valid header name",
            ),
            (
                json!({"api_key": {"query": "", "value": {"env": "K"}}}),
                "parameter name is empty",
            ),
            (
                json!({"api_key": {"header": "X-K", "value": {"env": "K"}, "prefix": "Key "}}),
                "unknown field `prefix`",
            ),
            (
                json!({"bearer": {"token": {"env": "T"}, "scheme": "Token"}}),
                "unknown field `scheme`",
            ),
            (
                json!({"basic": {"user": "u", "password": {"env": "P"}}}),
                "unknown field `user`",
            ),
            (
                json!({"basic": {"username": "u"}}),
                "missing field `password`",
            ),
            (
                json!({"digest": {"username": "u"}}),
                "unknown variant `digest`, expected one of `bearer`, `basic`, `api_key`",
            ),
            (
                json!({"bearer": {"token": CANARY}}),
                "literal secrets are not accepted",
            ),
            (
                json!({"bearer": {"token": {"value": CANARY}}}),
                "literal secret values are not accepted",
            ),
        ];
        for (spec, expected) in cases {
            let e = parse(spec.clone()).unwrap_err();
            assert!(e.contains(expected), "{spec}: {e}");
            assert!(!e.contains(CANARY), "{spec}: {e}");
        }
        let colon = AuthSpec::Basic {
            username: "a:b".into(),
            password: ssm("/p"),
        };
        let e = colon.validate().unwrap_err().to_string();
        assert!(e.contains("may not contain ':'"), "{e}");
    }

    async fn resolved(spec: serde_json::Value, secret: &str) -> ResolvedAuth {
        let spec: AuthSpec = serde_json::from_value(spec).unwrap();
        let resolver = SecretResolver::unreachable_for_tests().with_cached(&ssm("/s"), secret);
        spec.resolve(&resolver).await.unwrap()
    }

    fn request(auth: &ResolvedAuth, url: &str) -> reqwest::Request {
        let req = reqwest::Client::new()
            .get(url)
            .header("Authorization", "from-spec")
            .header("X-Other", "kept");
        auth.apply(req).build().unwrap()
    }

    #[tokio::test]
    async fn bearer_and_basic_set_a_sensitive_authorization_header() {
        let auth = resolved(
            json!({"bearer": {"token": {"ssm": {"name": "/s"}}}}),
            CANARY,
        )
        .await;
        let req = request(&auth, "https://api.example.com/x");
        let values: Vec<_> = req.headers().get_all(AUTHORIZATION).iter().collect();
        assert_eq!(values.len(), 1, "replaces, never appends");
        assert_eq!(values[0], &format!("Bearer {CANARY}"));
        assert!(values[0].is_sensitive());
        assert_eq!(req.headers()["x-other"], "kept");
        assert!(!format!("{req:?}").contains(CANARY));

        let auth = resolved(
            json!({"basic": {"username": "Aladdin", "password": {"ssm": {"name": "/s"}}}}),
            "open sesame",
        )
        .await;
        let req = request(&auth, "https://api.example.com/x");
        // RFC 7617's example.
        assert_eq!(
            req.headers()[AUTHORIZATION],
            "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
        assert!(req.headers()[AUTHORIZATION].is_sensitive());
        assert_eq!(auth.scheme(), "basic");
    }

    #[tokio::test]
    async fn api_keys_go_in_a_header_or_the_query() {
        let auth = resolved(
            json!({"api_key": {"header": "X-Api-Key", "value": {"ssm": {"name": "/s"}}}}),
            CANARY,
        )
        .await;
        let req = request(&auth, "https://api.example.com/x");
        assert_eq!(req.headers()["x-api-key"], CANARY);
        assert!(req.headers()["x-api-key"].is_sensitive());
        assert_eq!(req.headers()[AUTHORIZATION], "from-spec");

        let auth = resolved(
            json!({"api_key": {"query": "api key", "value": {"ssm": {"name": "/s"}}}}),
            "a&b=c",
        )
        .await;
        let req = request(&auth, "https://api.example.com/x?page=2");
        assert_eq!(
            req.url().as_str(),
            "https://api.example.com/x?page=2&api+key=a%26b%3Dc"
        );
        assert_eq!(
            redact_url(req.url().as_str(), Some(&auth)),
            "https://api.example.com/x?page=2&api+key=[redacted]"
        );
    }

    #[tokio::test]
    async fn a_value_that_cannot_be_a_header_is_named_not_shown() {
        let spec: AuthSpec =
            serde_json::from_value(json!({"bearer": {"token": {"ssm": {"name": "/s"}}}})).unwrap();
        let resolver =
            SecretResolver::unreachable_for_tests().with_cached(&ssm("/s"), &format!("{CANARY}\n"));
        let e = spec.resolve(&resolver).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        let msg = e.to_string();
        assert!(
            msg.starts_with(r#"secret ssm "/s": not a valid header value"#),
            "{msg}"
        );
        assert!(!msg.contains(CANARY) && !format!("{e:?}").contains(CANARY));
    }

    #[tokio::test]
    async fn debug_never_shows_the_value() {
        for spec in [
            json!({"bearer": {"token": {"ssm": {"name": "/s"}}}}),
            json!({"basic": {"username": "u", "password": {"ssm": {"name": "/s"}}}}),
            json!({"api_key": {"header": "X-K", "value": {"ssm": {"name": "/s"}}}}),
            json!({"api_key": {"query": "k", "value": {"ssm": {"name": "/s"}}}}),
        ] {
            let auth = resolved(spec, CANARY).await;
            let debug = format!("{auth:?} {auth:#?}");
            assert!(!debug.contains(CANARY), "{debug}");
            assert!(debug.contains("[redacted]"), "{debug}");
        }
        let auth = resolved(
            json!({"bearer": {"token": {"ssm": {"name": "/s"}}}}),
            CANARY,
        )
        .await;
        assert_eq!(
            format!("{auth:?}"),
            r#"ResolvedAuth { scheme: "bearer", header: "authorization", value: [redacted] }"#
        );
    }

    #[tokio::test]
    async fn redact_url_hides_keys_passwords_and_signatures() {
        let auth = resolved(
            json!({"api_key": {"query": "auth_k", "value": {"ssm": {"name": "/s"}}}}),
            CANARY,
        )
        .await;
        let cases = [
            (
                "https://h.example/a/b?auth_k=SECRET&page=3",
                Some(&auth),
                "https://h.example/a/b?auth_k=[redacted]&page=3",
            ),
            // Without the auth, a custom name is kept; well-known ones never are.
            (
                "https://h.example/a?auth_k=v&token=t&Api_Key=k&q=x",
                None,
                "https://h.example/a?auth_k=v&token=[redacted]&Api_Key=[redacted]&q=x",
            ),
            (
                "https://user:pa%40ss@h.example:8443/x?ok=1",
                None,
                "https://user:[redacted]@h.example:8443/x?ok=1",
            ),
            ("https://user@h.example/x", None, "https://user@h.example/x"),
            (
                "https://b.s3.amazonaws.com/k?X-Amz-Credential=AKIA%2F1&X-Amz-Signature=abc&X-Amz-Security-Token=tok&X-Amz-Expires=60",
                None,
                "https://b.s3.amazonaws.com/k?X-Amz-Credential=[redacted]&X-Amz-Signature=[redacted]&X-Amz-Security-Token=[redacted]&X-Amz-Expires=60",
            ),
            // Encoded names, repeated names, empty values, fragments.
            (
                "https://h.example/?api%5Fkey=1&auth_k=2&auth%5Fk=3&auth_k=&x#access_token=z&state=s",
                Some(&auth),
                "https://h.example/?api%5Fkey=[redacted]&auth_k=[redacted]&auth%5Fk=[redacted]&auth_k=&x#access_token=[redacted]&state=s",
            ),
            ("http://h.example/plain", None, "http://h.example/plain"),
            // Not a URL: best effort on the text.
            (
                "h.example/x?token=t&a=1",
                None,
                "h.example/x?token=[redacted]&a=1",
            ),
            (
                "ftp://u:p@w@[bad/x?auth_k=k#sig=s",
                Some(&auth),
                "ftp://u:[redacted]@[bad/x?auth_k=[redacted]#sig=[redacted]",
            ),
        ];
        for (url, auth, expected) in cases {
            assert_eq!(redact_url(url, auth), expected, "{url}");
        }
    }

    #[tokio::test]
    async fn redact_error_rewrites_the_url_in_reqwest_errors() {
        let auth = resolved(
            json!({"api_key": {"query": "k", "value": {"ssm": {"name": "/s"}}}}),
            CANARY,
        )
        .await;
        // Nothing listens on the discard port: the request fails with the URL in its message.
        let req = auth.apply(reqwest::Client::new().get("http://127.0.0.1:9/x"));
        let err = req.send().await.unwrap_err();
        assert!(err.to_string().contains(CANARY), "the premise: {err}");
        let err = redact_error(err, Some(&auth));
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains(CANARY), "{shown}");
        assert!(shown.contains("k=[redacted]"), "{shown}");
    }
}
