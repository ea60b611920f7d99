//! `ingest-http`: stream an HTTP response body into an S3 object.
//!
//! The event is a sluice job spec (see the README); the response is the job summary.

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
    let policy = sluice::source::http::guard::NetworkPolicy::from_env();
    let clients = handler::Clients {
        s3: sluice::s3::client(&conf),
        http: sluice::source::http::client(&policy),
        http_same_host: sluice::source::http::same_host_client(&policy),
        policy,
        secrets: std::sync::Arc::new(sluice::secret::SecretResolver::new(&conf)),
        budget: sluice::MemoryBudget::from_env(),
    };
    lambda_runtime::run(service_fn(|event: LambdaEvent<Value>| {
        handler::handle(&clients, event)
    }))
    .await
}
