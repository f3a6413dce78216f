//! Lambda entry point of `batchline-submit`: set up once per container, then serve invocations.

use lambda_runtime::{run, service_fn, Error, LambdaEvent};

// One thread: Lambda hands a process one event at a time, and with a single thread there
// is one allocator arena and no idle workers, which keeps memory and start-up small.
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    batchline::telemetry::init("batchline-submit");
    let settings = batchline::Settings::from_env()?;
    let clients = batchline_submit::Clients::new(&batchline::aws::load_sdk_config().await, &settings);
    run(service_fn(|event: LambdaEvent<serde_json::Value>| batchline_submit::handle(event, &clients))).await
}
