//! `transform-s3`: when an object lands in S3, stream a typed, validated, filtered copy into
//! another prefix, with the rows that fail kept aside in a quarantine object.
//!
//! The pipeline comes from `PIPELINE` (JSON) or the S3 object `PIPELINE_URI`
//! (`s3://bucket/key`), read and validated once at init: a bad pipeline is reported to the
//! Runtime API's init-error endpoint and the process exits, so no event is ever served with it.
//! Events: S3 `ObjectCreated` notifications, or a direct invoke `{"bucket", "key"}` (also the
//! `{"Bucket", "Key", "Etag", ...}` items of a Step Functions Distributed Map).

mod handler;

use lambda_runtime::{LambdaEvent, service_fn};
use serde_json::Value;

fn main() -> Result<(), lambda_runtime::Error> {
    // The allocator is set up before the runtime's threads start.
    sluice::budget::runtime()?.block_on(run())
}

async fn run() -> Result<(), lambda_runtime::Error> {
    sluice::telemetry::init();
    let conf = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let s3 = sluice::s3::client(&conf);
    let pipeline = match sluice::transform::Pipeline::from_env(&s3).await {
        Ok(p) => p,
        Err(err) => {
            tracing::error!(error = %err, "pipeline rejected at init");
            sluice::lambda::report_init_error(&err).await;
            return Err(err.into());
        }
    };
    let policy = sluice::source::http::guard::NetworkPolicy::from_env();
    let clients = handler::Clients {
        s3,
        http: sluice::source::http::client(&policy),
        policy,
        pipeline,
        budget: sluice::MemoryBudget::from_env(),
    };
    lambda_runtime::run(service_fn(|event: LambdaEvent<Value>| {
        handler::handle(&clients, event)
    }))
    .await
}
