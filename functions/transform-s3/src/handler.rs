use lambda_runtime::LambdaEvent;
use serde_json::{Value, json};
use sluice::MemoryBudget;
use sluice::lambda::{self, FunctionError};
use sluice::transform::{Pipeline, TransformContext, event};

/// What every invocation shares: clients and the pipeline, built once per instance.
pub struct Clients {
    pub s3: aws_sdk_s3::Client,
    /// For the enrich step: the network policy applies to every address it reaches.
    pub http: reqwest::Client,
    pub policy: sluice::source::http::guard::NetworkPolicy,
    pub pipeline: Pipeline,
    pub budget: MemoryBudget,
}

/// Transforms every object of the event. The answer lists one summary per object; when any
/// object fails, the invocation fails (after the others were done) so the event is retried —
/// objects already done are then recognised as duplicates.
pub async fn handle(clients: &Clients, event: LambdaEvent<Value>) -> Result<Value, FunctionError> {
    let (payload, context) = event.into_parts();
    let ctx = TransformContext {
        s3: clients.s3.clone(),
        budget: clients.budget,
        invocation: lambda::invocation(&context),
        http: clients.http.clone(),
        policy: clients.policy.clone(),
    };
    ctx.invocation.name_job(clients.pipeline.job_name());
    lambda::answer_with_metrics("transform-s3", &ctx.invocation, async {
        let (objects, skipped_records) = event::objects(payload)?;
        for s in &skipped_records {
            tracing::info!(record = %s, "record skipped");
        }
        let summaries = lambda::transform_objects(&clients.pipeline, &objects, &ctx).await?;
        Ok(json!({"objects": summaries, "skipped_records": skipped_records}))
    })
    .await
}
