//! `sweep-uploads`: on a schedule, abort multipart uploads older than `max_age` under the
//! configured bucket/prefix pairs, and report them as a summary and CloudWatch EMF metrics.
//!
//! The configuration is the event (EventBridge Scheduler input), or, when the event carries
//! none (an EventBridge rule's scheduled event, `{}`), the `SWEEP_CONFIG` environment
//! variable.

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
    let clients = handler::Clients {
        s3: sluice::s3::client(&conf),
        env_config: std::env::var("SWEEP_CONFIG").ok(),
        namespace: sluice::telemetry::emf::namespace(),
    };
    lambda_runtime::run(service_fn(|event: LambdaEvent<Value>| {
        handler::handle(&clients, event)
    }))
    .await
}
