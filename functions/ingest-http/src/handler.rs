use std::sync::Arc;

use lambda_runtime::LambdaEvent;
use serde_json::Value;
use sluice::ingest::{self, JobContext};
use sluice::lambda::{self, FunctionError};
use sluice::secret::SecretResolver;
use sluice::source::http::guard::NetworkPolicy;
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

/// Runs the job spec carried by `event` (direct invoke or EventBridge Scheduler input), or a
/// batch of them (`sources`).
pub async fn handle(clients: &Clients, event: LambdaEvent<Value>) -> Result<Value, FunctionError> {
    let (payload, context) = event.into_parts();
    let ctx = JobContext {
        s3: clients.s3.clone(),
        http: clients.http.clone(),
        http_same_host: clients.http_same_host.clone(),
        policy: clients.policy.clone(),
        secrets: clients.secrets.clone(),
        budget: clients.budget,
        limiter: None,
        invocation: lambda::invocation(&context),
    };
    let invocation = &ctx.invocation;
    if sluice::ingest::batch::is_batch(&payload) {
        invocation.name_job(batch_job_name(&payload));
        return lambda::answer_with_metrics(
            "ingest-http",
            invocation,
            lambda::run_batch(payload, &ctx),
        )
        .await;
    }
    let function = "ingest-http";
    if let Some(answer) = lambda::answer_abort(function, &clients.s3, invocation, &payload).await {
        return answer;
    }
    let mut ctx = ctx;
    let continuation =
        lambda::continuation(&clients.s3, function, &mut ctx.invocation, payload).await;
    let invocation = &ctx.invocation;
    lambda::answer_with_metrics(function, invocation, async {
        let continuation = continuation?;
        let spec = JobSpec::from_json(continuation.job.clone())?;
        invocation.name_job(spec.job_name());
        Ok(ingest::run_continuing(&spec, &ctx, Some(&continuation)).await?)
    })
    .await
}

/// The job name of a batch: its shared `job_name` when valid, else the default of its shared
/// destination (the key up to `{source}` or another placeholder).
fn batch_job_name(payload: &Value) -> String {
    let given = payload.get("job_name").and_then(Value::as_str);
    if let Some(name) = given.filter(|n| sluice::telemetry::validate_job_name("", n).is_ok()) {
        return name.to_owned();
    }
    let field = |f: &str| {
        payload
            .get("destination")
            .and_then(|d| d.get(f))
            .and_then(Value::as_str)
            .unwrap_or_default()
    };
    sluice::telemetry::default_job_name(field("bucket"), field("key"))
}
