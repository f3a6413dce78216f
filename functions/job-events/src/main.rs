//! Lambda entry point of `batchline-job-events`: set up once per container, then serve invocations.

use lambda_runtime::{run, service_fn, Error, LambdaEvent};

#[tokio::main]
async fn main() -> Result<(), Error> {
    batchline::telemetry::init();
    let config = batchline::Config::from_env()?;
    let clients = batchline_job_events::Clients::new(&batchline::aws::load_sdk_config().await);
    run(service_fn(|event: LambdaEvent<serde_json::Value>| batchline_job_events::handle(event, &clients, &config)))
        .await
}
