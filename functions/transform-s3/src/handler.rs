use lambda_runtime::LambdaEvent;
use serde_json::{Value, json};
use sluice::MemoryBudget;
use sluice::checkpoint;
use sluice::job::Status;
use sluice::lambda::{self, FunctionError};
use sluice::transform::{self, Pipeline, TransformContext, event};

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
///
/// A direct event with `"continuable": true` (the transform job state machine's) may take
/// several invocations: the answer is then `{"status": "continue", "continue": {...}}`, and
/// the `continue` value as the next event goes on. An `abort` event gives such a job up.
pub async fn handle(clients: &Clients, event: LambdaEvent<Value>) -> Result<Value, FunctionError> {
    let (payload, context) = event.into_parts();
    let mut ctx = TransformContext {
        s3: clients.s3.clone(),
        budget: clients.budget,
        invocation: lambda::invocation(&context),
        http: clients.http.clone(),
        policy: clients.policy.clone(),
    };
    ctx.invocation.name_job(clients.pipeline.job_name());
    let function = "transform-s3";
    if let Some(answer) =
        lambda::answer_abort(function, &clients.s3, &ctx.invocation, &payload).await
    {
        return answer;
    }
    let continuation =
        lambda::continuation(&clients.s3, function, &mut ctx.invocation, payload).await;
    lambda::answer_with_metrics(function, &ctx.invocation, async {
        let continuation = continuation?;
        let (objects, skipped_records) = event::objects(continuation.job.clone())?;
        for s in &skipped_records {
            tracing::info!(record = %s, "record skipped");
        }
        if let [object] = objects.as_slice()
            && event::continuable(&continuation.job)
        {
            let pipeline = &clients.pipeline;
            let result = transform::run_continuing(pipeline, object, &ctx, Some(&continuation));
            let result = result.await;
            let from = continuation.from.as_ref();
            checkpoint::settle(&ctx.s3, from, &result, |s| s.status == Status::Continue).await;
            let summary = result?;
            if summary.status == Status::Continue {
                let next = summary.next.clone();
                return Ok(json!({"status": "continue", "continue": next, "objects": [summary]}));
            }
            return Ok(json!({"objects": [summary], "skipped_records": skipped_records}));
        }
        let summaries = lambda::transform_objects(&clients.pipeline, &objects, &ctx).await?;
        Ok(json!({"objects": summaries, "skipped_records": skipped_records}))
    })
    .await
}
