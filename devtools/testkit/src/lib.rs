//! Batchline's test kit: the local AWS emulator harness, the Batch event player, the local Lambda runtime, test Batch environments, the table and SDK call interceptors.
//!
//! A library of its own (not inside the tests) so the integration tests, the local demo
//! (`devtools/demo`) and the benchmark (`devtools/bench`) use the same pieces.

pub mod batch_env;
pub mod calls;
pub mod emulator;
pub mod event_source;
pub mod faults;
pub mod http;
pub mod lanes;
pub mod local_lambda;
pub mod player;
pub mod response_server;
pub mod table;

/// One Lambda invocation of `payload`, with a fresh request id, as the runtime hands it to a handler.
pub fn invocation(payload: serde_json::Value) -> lambda_runtime::LambdaEvent<serde_json::Value> {
    let mut context = lambda_runtime::Context::default();
    context.request_id = player::event_id();
    context.deadline = (std::time::SystemTime::now() + std::time::Duration::from_secs(300))
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default();
    lambda_runtime::LambdaEvent::new(payload, context)
}
