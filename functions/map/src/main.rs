//! Lambda entry point of `batchline-map`: set up once per container, then serve invocations.

use lambda_runtime::{run, service_fn, Error, LambdaEvent};

// One thread, as the other functions: one message at a time, small memory and start-up.
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    batchline::telemetry::init("batchline-map");
    let settings = batchline::Settings::from_env()?;
    let clients = batchline_map::Clients::new(&batchline::aws::load_sdk_config().await, &settings);
    run(service_fn(|event: LambdaEvent<aws_lambda_events::sqs::SqsEvent>| {
        batchline_map::handle(event, &clients, &settings)
    }))
    .await
}
