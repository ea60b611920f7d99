use std::io::Write as _;
use std::time::SystemTime;

use lambda_runtime::{Diagnostic, LambdaEvent};
use serde_json::Value;
use sluice::sweep::{self, SweepConfig, SweepContext};

/// Clients and settings built once per function instance.
pub struct Clients {
    pub s3: aws_sdk_s3::Client,
    /// `SWEEP_CONFIG`: the configuration used when the event carries none.
    pub env_config: Option<String>,
    /// CloudWatch namespace of the EMF metrics (`SLUICE_METRICS_NAMESPACE`, default `sluice`).
    pub namespace: String,
}

/// A failed sweep, reported with an error type callers can branch on.
#[derive(Debug)]
pub struct JobError(sluice::Error);

impl From<JobError> for Diagnostic {
    fn from(JobError(err): JobError) -> Self {
        Diagnostic {
            error_type: err.kind().as_str().to_owned(),
            error_message: err.to_string(),
        }
    }
}

/// The configuration: the event when it is one, else `SWEEP_CONFIG`. An event that is null,
/// `{}`, or an EventBridge scheduled event (it has `detail-type`) carries none.
pub fn config(event: Value, env_config: Option<&str>) -> sluice::Result<SweepConfig> {
    let carries_none = match &event {
        Value::Null => true,
        Value::Object(map) => map.is_empty() || map.contains_key("detail-type"),
        _ => false,
    };
    if !carries_none {
        return SweepConfig::from_json(event);
    }
    let Some(text) = env_config else {
        return Err(sluice::Error::InvalidSpec {
            message: "no configuration: the event has no `targets` and SWEEP_CONFIG is not set"
                .into(),
        });
    };
    let value: Value = serde_json::from_str(text).map_err(|e| sluice::Error::InvalidSpec {
        message: format!("SWEEP_CONFIG is not JSON: {e}"),
    })?;
    SweepConfig::from_json(value).map_err(|e| match e {
        sluice::Error::InvalidSpec { message } => sluice::Error::InvalidSpec {
            message: format!("SWEEP_CONFIG: {message}"),
        },
        other => other,
    })
}

/// Sweeps, prints the EMF lines to stdout, and answers with the summary — or, when listing
/// or an abort failed, with the first error (after the summary was logged and the metrics
/// printed), so the invocation counts as failed and alarms can fire.
pub async fn handle(clients: &Clients, event: LambdaEvent<Value>) -> Result<Value, JobError> {
    let (payload, context) = event.into_parts();
    let config = config(payload, clients.env_config.as_deref()).map_err(|err| {
        tracing::error!(error_type = err.kind().as_str(), error = %err, "bad sweep configuration");
        JobError(err)
    })?;
    let ctx = SweepContext {
        s3: clients.s3.clone(),
        deadline: Some(context.deadline()),
    };
    let outcome = sweep::run(&config, &ctx).await;
    {
        let mut out = std::io::stdout().lock();
        for line in sweep::emf_lines(&outcome.summary, &clients.namespace, SystemTime::now()) {
            let _ = writeln!(out, "{line}");
        }
        let _ = out.flush();
    }
    let summary = serde_json::to_value(&outcome.summary).expect("summary serializes");
    match outcome.failure {
        None => Ok(summary),
        Some(err) => {
            tracing::error!(error_type = err.kind().as_str(), error = %err, summary = %summary, "sweep failed");
            Err(JobError(err))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn event_or_environment() {
        let env = r#"{"targets": [{"bucket": "from-env", "prefix": ""}]}"#;
        let c = config(
            json!({"targets": [{"bucket": "from-event", "prefix": "p/"}]}),
            Some(env),
        )
        .unwrap();
        assert_eq!(c.targets[0].bucket, "from-event");
        for empty in [
            json!(null),
            json!({}),
            json!({"detail-type": "Scheduled Event", "source": "aws.events"}),
        ] {
            assert_eq!(
                config(empty, Some(env)).unwrap().targets[0].bucket,
                "from-env"
            );
        }
        let e = config(json!({}), None).unwrap_err().to_string();
        assert!(e.contains("SWEEP_CONFIG is not set"), "{e}");
        let e = config(json!({}), Some("{")).unwrap_err().to_string();
        assert!(e.contains("SWEEP_CONFIG is not JSON"), "{e}");
        // A typo in the event is an error, not a silent fallback to the environment.
        let e = config(json!({"target": []}), Some(env))
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `target`"), "{e}");
    }

    /// Every sample event for this function parses, so the samples never rot.
    #[test]
    fn sample_events_parse() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../events");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if !name.starts_with("sweep-uploads") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let value: Value = serde_json::from_str(&text).unwrap();
            SweepConfig::from_json(value).unwrap_or_else(|e| panic!("{name}: {e}"));
            seen += 1;
        }
        assert!(seen >= 1, "no samples found in {dir}");
    }
}
