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

/// Runs the export spec carried by `event` (direct invoke or EventBridge Scheduler input).
pub async fn handle(clients: &Clients, event: LambdaEvent<Value>) -> Result<Value, FunctionError> {
    let (payload, context) = event.into_parts();
    let ctx = ExportContext {
        s3: clients.s3.clone(),
        secrets: clients.secrets.clone(),
        budget: clients.budget,
        invocation: lambda::invocation(&context),
    };
    lambda::answer_with_metrics("export-postgres", &ctx.invocation, async {
        let spec = ExportSpec::from_json(payload)?;
        ctx.invocation.name_job(spec.job_name());
        Ok(export::run(&spec, &ctx).await?)
    })
    .await
}
