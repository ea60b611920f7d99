use std::io::Write as _;
use std::time::SystemTime;

use lambda_runtime::LambdaEvent;
use serde_json::Value;
use sluice::lambda::{self, FunctionError};
use sluice::sweep::{self, SweepConfig, SweepContext};

/// Clients and settings built once per function instance.
pub struct Clients {
    pub s3: aws_sdk_s3::Client,
    /// `SWEEP_CONFIG`: the configuration used when the event carries none.
    pub env_config: Option<String>,
    /// CloudWatch namespace of the EMF metrics (`SLUICE_METRICS_NAMESPACE`, default `sluice`).
    pub namespace: String,
}

/// Sweeps, prints its EMF lines (one per target) to stdout, and answers with the summary — or, when listing
/// or an abort failed, with the first error (after the summary was logged and the metrics
/// printed), so the invocation counts as failed and alarms can fire.
pub async fn handle(clients: &Clients, event: LambdaEvent<Value>) -> Result<Value, FunctionError> {
    let (payload, context) = event.into_parts();
    let invocation = lambda::invocation(&context);
    lambda::answer_with_metrics("sweep-uploads", &invocation, async {
        let config = SweepConfig::from_event(payload, clients.env_config.as_deref())?;
        invocation.name_job(match config.targets.as_slice() {
            [one] => sluice::telemetry::default_job_name(&one.bucket, &one.prefix),
            _ => "sweep".to_owned(),
        });
        let ctx = SweepContext {
            s3: clients.s3.clone(),
            invocation: invocation.clone(),
        };
        let outcome = sweep::run(&config, &ctx).await;
        let mut out = std::io::stdout().lock();
        for line in sweep::emf_lines(&outcome.summary, &clients.namespace, SystemTime::now()) {
            let _ = writeln!(out, "{line}");
        }
        let _ = out.flush();
        match outcome.failure {
            None => Ok(outcome.summary),
            Some(err) => {
                let summary = serde_json::to_string(&outcome.summary).unwrap_or_default();
                tracing::info!(%summary, "sweep failed; what it did");
                Err(err.into())
            }
        }
    })
    .await
}
