//! Test support for Batchline: the local AWS emulator harness, test Batch environments, the table, SDK call interceptors and the Batch event player.
//!
//! A library (not only tests) so the local end-to-end run can use the same pieces.

pub mod batch_env;
pub mod bench;
pub mod calls;
pub mod demo;
pub mod emulator;
pub mod fixed_reply;
pub mod http;
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
