//! `SecretResolver` against moto's Secrets Manager and Parameter Store: plain and JSON
//! secrets, SecureString parameters, the cache, and errors that name the reference but never
//! the value.

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_s3::config::{Credentials, SharedCredentialsProvider};
use aws_sdk_s3::primitives::Blob;
use serde_json::json;
use sluice::ErrorKind;
use sluice::secret::{EnvAllowList, SecretRef, SecretResolver};
use sluice::source::http::auth::AuthSpec;
use sluice_tests::S3Server;

const PLAIN: &str = "plain-CANARY-7f3a9c";
const TOKEN: &str = "json-CANARY-token-51be";
const PARAM: &str = "ssm-CANARY-0d44e1";

/// An `SdkConfig` for moto: its endpoint, static credentials, us-east-1.
fn moto_config() -> SdkConfig {
    let moto = S3Server::moto();
    SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(&moto.endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
            &moto.access_key_id,
            &moto.secret_access_key,
            None,
            None,
            "sluice-tests",
        )))
        .build()
}

fn secret_ref(v: serde_json::Value) -> SecretRef {
    serde_json::from_value(v).unwrap()
}

/// A name prefix no other test run uses.
fn prefix() -> String {
    format!(
        "sluice-test-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// Asserts the error names `reference` and `class`, has `kind`, and shows no canary value.
fn assert_secret_error(e: &sluice::Error, reference: &str, class: &str, kind: ErrorKind) {
    let shown = format!("{e} {e:?}");
    assert!(
        e.to_string()
            .starts_with(&format!("secret {reference}: {class}: ")),
        "{e}"
    );
    assert_eq!(e.kind(), kind, "{e}");
    for canary in [PLAIN, TOKEN, PARAM] {
        assert!(!shown.contains(canary), "{shown}");
    }
}

#[tokio::test]
async fn resolves_secrets_manager_and_ssm_values() -> anyhow::Result<()> {
    let resolver = SecretResolver::new(&moto_config());
    let p = prefix();
    let sm = resolver.secrets_manager_client();
    sm.create_secret()
        .name(format!("{p}/plain"))
        .secret_string(PLAIN)
        .send()
        .await?;
    sm.create_secret()
        .name(format!("{p}/json"))
        .secret_string(json!({"token": TOKEN, "user": "exporter", "port": 5432}).to_string())
        .send()
        .await?;
    resolver
        .ssm_client()
        .put_parameter()
        .name(format!("/{p}/token"))
        .value(PARAM)
        .r#type("SecureString".into())
        .send()
        .await?;

    let plain = resolver
        .resolve(&secret_ref(
            json!({"secrets_manager": {"id": format!("{p}/plain")}}),
        ))
        .await?;
    assert_eq!(plain.expose(), PLAIN);
    assert_eq!(format!("{plain} {plain:?}"), "[redacted] [redacted]");

    let token = resolver
        .resolve(&secret_ref(
            json!({"secrets_manager": {"id": format!("{p}/json"), "json_key": "token"}}),
        ))
        .await?;
    assert_eq!(token.expose(), TOKEN);
    let port = resolver
        .resolve(&secret_ref(
            json!({"secrets_manager": {"id": format!("{p}/json"), "json_key": "port"}}),
        ))
        .await?;
    assert_eq!(port.expose(), "5432");
    // The whole document when no json_key is given.
    let whole = resolver
        .resolve(&secret_ref(
            json!({"secrets_manager": {"id": format!("{p}/json")}}),
        ))
        .await?;
    assert!(whole.expose().contains(TOKEN));

    let param = resolver
        .resolve(&secret_ref(json!({"ssm": {"name": format!("/{p}/token")}})))
        .await?;
    assert_eq!(param.expose(), PARAM);

    // End to end through AuthSpec: a bearer token from Parameter Store on a request.
    let auth: AuthSpec = serde_json::from_value(
        json!({"bearer": {"token": {"ssm": {"name": format!("/{p}/token")}}}}),
    )?;
    let resolved = auth.resolve(&resolver).await?;
    let req = resolved
        .apply(reqwest::Client::new().get("https://api.example.com/x"))
        .build()?;
    let value = &req.headers()["authorization"];
    assert_eq!(value, &format!("Bearer {PARAM}"));
    assert!(value.is_sensitive());
    assert!(!format!("{resolved:?} {req:?}").contains(PARAM));
    Ok(())
}

#[tokio::test]
async fn missing_references_are_named_without_values() -> anyhow::Result<()> {
    let resolver = SecretResolver::new(&moto_config());
    let p = prefix();
    let sm = resolver.secrets_manager_client();
    sm.create_secret()
        .name(format!("{p}/json"))
        .secret_string(json!({"token": TOKEN}).to_string())
        .send()
        .await?;
    sm.create_secret()
        .name(format!("{p}/plain"))
        .secret_string(PLAIN)
        .send()
        .await?;
    sm.create_secret()
        .name(format!("{p}/binary"))
        .secret_binary(Blob::new(PLAIN.as_bytes()))
        .send()
        .await?;

    let e = resolver
        .resolve(&secret_ref(
            json!({"secrets_manager": {"id": format!("{p}/nope")}}),
        ))
        .await
        .unwrap_err();
    assert_secret_error(
        &e,
        &format!("secrets_manager \"{p}/nope\""),
        "not found",
        ErrorKind::InvalidInput,
    );
    assert!(e.to_string().contains("ResourceNotFoundException"), "{e}");

    let e = resolver
        .resolve(&secret_ref(json!({"ssm": {"name": format!("/{p}/nope")}})))
        .await
        .unwrap_err();
    assert_secret_error(
        &e,
        &format!("ssm \"/{p}/nope\""),
        "not found",
        ErrorKind::InvalidInput,
    );
    assert!(e.to_string().contains("ParameterNotFound"), "{e}");

    let e = resolver
        .resolve(&secret_ref(
            json!({"secrets_manager": {"id": format!("{p}/json"), "json_key": "password"}}),
        ))
        .await
        .unwrap_err();
    assert_secret_error(
        &e,
        &format!("secrets_manager \"{p}/json\" json_key \"password\""),
        "json_key not found",
        ErrorKind::InvalidInput,
    );

    let e = resolver
        .resolve(&secret_ref(
            json!({"secrets_manager": {"id": format!("{p}/plain"), "json_key": "token"}}),
        ))
        .await
        .unwrap_err();
    assert_secret_error(
        &e,
        &format!("secrets_manager \"{p}/plain\" json_key \"token\""),
        "not JSON",
        ErrorKind::InvalidInput,
    );

    let e = resolver
        .resolve(&secret_ref(
            json!({"secrets_manager": {"id": format!("{p}/binary")}}),
        ))
        .await
        .unwrap_err();
    assert_secret_error(
        &e,
        &format!("secrets_manager \"{p}/binary\""),
        "not a string",
        ErrorKind::InvalidInput,
    );

    // Through AuthSpec the error is the same: the reference, not the value.
    let auth: AuthSpec = serde_json::from_value(
        json!({"api_key": {"query": "k", "value": {"ssm": {"name": format!("/{p}/nope")}}}}),
    )?;
    let e = auth.resolve(&resolver).await.unwrap_err();
    assert_secret_error(
        &e,
        &format!("ssm \"/{p}/nope\""),
        "not found",
        ErrorKind::InvalidInput,
    );
    Ok(())
}

#[tokio::test]
async fn cached_values_are_reused_until_forgotten() -> anyhow::Result<()> {
    let conf = moto_config();
    let resolver = SecretResolver::new(&conf);
    let uncached = SecretResolver::new(&conf).with_ttl(std::time::Duration::ZERO);
    let p = prefix();
    let id = format!("{p}/rotating");
    let r = secret_ref(json!({"secrets_manager": {"id": id}}));
    let sm = resolver.secrets_manager_client();
    sm.create_secret()
        .name(&id)
        .secret_string("first")
        .send()
        .await?;
    assert_eq!(resolver.resolve(&r).await?.expose(), "first");

    sm.put_secret_value()
        .secret_id(&id)
        .secret_string("second")
        .send()
        .await?;
    // Within the TTL the warm resolver answers from its cache; a resolver without a cache
    // sees the rotation at once.
    assert_eq!(resolver.resolve(&r).await?.expose(), "first");
    assert_eq!(uncached.resolve(&r).await?.expose(), "second");
    resolver.forget(&r);
    assert_eq!(resolver.resolve(&r).await?.expose(), "second");
    Ok(())
}

/// Regression: an event could name the function's own credentials as an `env` secret and have
/// them sent as a bearer token. `AWS_*` is refused whatever `SLUICE_SECRET_ENV` allows, before
/// any request, and other names need an entry; the error says how, never the value.
#[tokio::test]
async fn events_cannot_name_the_functions_own_credentials() {
    let everything = SecretResolver::new(&moto_config()).with_env_allowed(EnvAllowList::parse("*"));
    for name in ["AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"] {
        let auth: AuthSpec =
            serde_json::from_value(json!({"bearer": {"token": {"env": name}}})).unwrap();
        let e = auth.resolve(&everything).await.unwrap_err();
        assert_secret_error(
            &e,
            &format!("env {name:?}"),
            "not allowed",
            ErrorKind::InvalidInput,
        );
        assert!(e.to_string().contains("never given out"), "{e}");
    }
    // Nothing allowed (the default): a name is refused with the way to allow it.
    let none = SecretResolver::new(&moto_config()).with_env_allowed(EnvAllowList::default());
    let e = none
        .resolve(&secret_ref(json!({"env": "PATH"})))
        .await
        .unwrap_err();
    assert_secret_error(&e, "env \"PATH\"", "not allowed", ErrorKind::InvalidInput);
    assert!(e.to_string().contains("SLUICE_SECRET_ENV"), "{e}");
}
