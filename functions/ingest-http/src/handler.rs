use lambda_runtime::{Diagnostic, LambdaEvent};
use serde_json::Value;
use sluice::ingest::{self, JobContext};
use std::sync::Arc;

use sluice::secret::SecretResolver;
use sluice::source::guard::NetworkPolicy;
use sluice::{JobSpec, MemoryBudget};

/// Clients built once per function instance and reused by every invocation.
pub struct Clients {
    pub s3: aws_sdk_s3::Client,
    pub http: reqwest::Client,
    pub http_same_host: reqwest::Client,
    pub policy: NetworkPolicy,
    pub secrets: Arc<SecretResolver>,
    pub budget: MemoryBudget,
}

/// A failed job, reported to Lambda with an error type callers can branch on:
/// `InvalidInput`, `Upstream`, `Retryable` or `Timeout`.
#[derive(Debug)]
pub enum JobError {
    /// The job (or the batch as a whole) failed.
    Job(sluice::Error),
    /// Some sources of a batch failed; the message lists every source.
    Partial {
        kind: sluice::ErrorKind,
        message: String,
    },
}

impl From<JobError> for Diagnostic {
    fn from(err: JobError) -> Self {
        match err {
            JobError::Job(err) => Diagnostic {
                error_type: err.kind().as_str().to_owned(),
                error_message: err.to_string(),
            },
            JobError::Partial { kind, message } => Diagnostic {
                error_type: kind.as_str().to_owned(),
                error_message: message,
            },
        }
    }
}

/// Runs a batch (`sources`): the answer lists every source; if any failed, the invocation
/// fails with the first failure's type and a message holding the whole list, so the outputs
/// that were written are named either way.
async fn handle_batch(payload: Value, ctx: &JobContext) -> Result<Value, JobError> {
    let summary = sluice::batch::run(payload, ctx).await.map_err(|e| {
        tracing::error!(error_type = e.kind().as_str(), error = %e, "batch rejected");
        JobError::Job(e)
    })?;
    let answer = serde_json::to_value(&summary).expect("summary serializes");
    match summary.failure_kind() {
        None => Ok(answer),
        Some(kind) => Err(JobError::Partial {
            kind,
            message: format!(
                "{} of {} sources failed: {answer}",
                summary.failed,
                summary.sources.len()
            ),
        }),
    }
}

/// Runs the job spec carried by `event` (direct invoke or EventBridge Scheduler input).
pub async fn handle(clients: &Clients, event: LambdaEvent<Value>) -> Result<Value, JobError> {
    let (payload, context) = event.into_parts();
    let ctx = JobContext {
        s3: clients.s3.clone(),
        http: clients.http.clone(),
        http_same_host: clients.http_same_host.clone(),
        policy: clients.policy.clone(),
        secrets: clients.secrets.clone(),
        budget: clients.budget,
        limiter: None,
        run_id: context.request_id.clone(),
        started: chrono::Utc::now(),
        deadline: Some(context.deadline()),
    };
    if sluice::batch::is_batch(&payload) {
        return handle_batch(payload, &ctx).await;
    }
    let result = async {
        let spec = JobSpec::from_json(payload)?;
        ingest::run(&spec, &ctx).await
    }
    .await;
    match result {
        Ok(summary) => Ok(serde_json::to_value(summary).expect("summary serializes")),
        Err(err) => {
            tracing::error!(error_type = err.kind().as_str(), error = %err, "job failed");
            Err(JobError::Job(err))
        }
    }
}

#[cfg(test)]
mod tests {
    use sluice::JobSpec;

    /// Every sample event for this function parses, so the samples never rot.
    #[test]
    fn sample_events_parse() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../events");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if !name.starts_with("ingest-http") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let value: serde_json::Value = serde_json::from_str(&text).unwrap();
            if sluice::batch::is_batch(&value) {
                sluice::batch::expand(value).unwrap_or_else(|e| panic!("{name}: {e}"));
            } else {
                JobSpec::from_json(value).unwrap_or_else(|e| panic!("{name}: {e}"));
            }
            seen += 1;
        }
        assert!(seen >= 2, "no samples found in {dir}");
    }
}
