//! `export-postgres`: stream a Postgres query into an S3 object as CSV or NDJSON.
//!
//! The event is an export spec (see the README); the response is the export summary. The
//! connection comes from `DATABASE_URL` or from the secret the spec names.

mod handler;

use std::sync::Arc;

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
        secrets: Arc::new(sluice::secret::SecretResolver::new(&conf)),
        budget: sluice::MemoryBudget::from_env(),
    };
    lambda_runtime::run(service_fn(|event: LambdaEvent<Value>| {
        handler::handle(&clients, event)
    }))
    .await
}
