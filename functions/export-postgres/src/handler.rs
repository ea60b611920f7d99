use std::sync::Arc;

use lambda_runtime::LambdaEvent;
use serde_json::Value;
use sluice::MemoryBudget;
use sluice::export::{self, ExportContext, ExportSpec};
use sluice::lambda::{self, FunctionError};
use sluice::secret::SecretResolver;

/// Clients built once per function instance and reused by every invocation.
pub struct Clients {
    pub s3: aws_sdk_s3::Client,
    /// Resolves `DATABASE_URL` or the spec's secret; caches fetched secrets for 5 minutes.
    pub secrets: Arc<SecretResolver>,
    pub budget: MemoryBudget,
}

/// Runs the export spec carried by `event` (direct invoke, EventBridge Scheduler input or the
/// job state machine), a `continue` event that resumes a keyset export from its checkpoint,
/// or an `abort` event that gives one up.
pub async fn handle(clients: &Clients, event: LambdaEvent<Value>) -> Result<Value, FunctionError> {
    let (payload, context) = event.into_parts();
    let mut ctx = ExportContext {
        s3: clients.s3.clone(),
        secrets: clients.secrets.clone(),
        budget: clients.budget,
        invocation: lambda::invocation(&context),
    };
    let function = "export-postgres";
    if let Some(answer) =
        lambda::answer_abort(function, &clients.s3, &ctx.invocation, &payload).await
    {
        return answer;
    }
    let continuation =
        lambda::continuation(&clients.s3, function, &mut ctx.invocation, payload).await;
    lambda::answer_with_metrics(function, &ctx.invocation, async {
        let continuation = continuation?;
        let spec = ExportSpec::from_json(continuation.job.clone())?;
        ctx.invocation.name_job(spec.job_name());
        Ok(export::run_continuing(&spec, &ctx, Some(&continuation)).await?)
    })
    .await
}
