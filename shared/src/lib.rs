//! Batchline's shared library: configuration, errors, AWS set-up and the domain every function uses.
//!
//! Domain decisions live here as pure functions with no AWS calls; the functions'
//! handlers are thin layers that parse an event, call into this crate and hand the
//! result to a small AWS adapter.

pub mod aws;
pub mod batch_event;
pub mod config;
pub mod config_store;
pub mod error;
pub mod fargate;
pub mod job_request;
pub mod metrics;
pub mod pipeline;
pub mod runs;
pub mod stack_config;
pub mod submitter;
pub mod telemetry;

pub use config::{Config, ConfigError};
pub use error::Error;

/// Names the shape of an incoming payload for error messages, without echoing its content.
///
/// Classifies by the fields each AWS source always sets: `requestContext` (API Gateway),
/// `Records` (SQS), `detail-type` (EventBridge) and `RequestType` (CloudFormation).
pub fn event_kind(payload: &serde_json::Value) -> String {
    let field = |name: &str| payload.get(name).and_then(serde_json::Value::as_str);
    if payload.get("requestContext").is_some() {
        "an API Gateway request".to_owned()
    } else if payload.get("Records").is_some() {
        "an SQS batch".to_owned()
    } else if let Some(detail_type) = field("detail-type") {
        format!("an EventBridge event of type {detail_type:?}")
    } else if let Some(request_type) = field("RequestType") {
        format!("a CloudFormation {request_type} request")
    } else if payload.is_object() {
        "an object of unknown shape".to_owned()
    } else {
        "a payload that is not a JSON object".to_owned()
    }
}

/// The current time in epoch milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or_default()
}
