//! Batchline's shared library: the model, the store and the services every function is a thin adapter over.
//!
//! Layers, each using only those above it:
//!
//! | module | what | talks to AWS |
//! |---|---|---|
//! | [`settings`], [`error`], [`telemetry`], [`aws`] | environment, errors by cause, logging, the SDK configuration | no |
//! | [`model`] | sizes, job requests, Batch events, metric planning, pipelines, the run state machine, the deployed configuration | no |
//! | [`store`] | every table key and item codec, behind narrow traits (DynamoDB and in-memory) | DynamoDB |
//! | [`services`] | the submitter, the run driver, the sweep and the stuck-job watch, over the store and the ports ([`services::ports`]: Batch, the announcer, the clock) | through ports |
//! | [`adapters`] | the ports' AWS adapters (Batch, EventBridge and CloudWatch) and the system clock | yes |
//! | [`wiring`] | the adapters and services built once per container, what submit and job-events share | builds clients |
//!
//! In-memory doubles of the store and of Batch (`store::memory`, `services::memory_batch`)
//! and the store's contract suite are compiled only for tests (the `testing` feature), never
//! into a function.
//!
//! The functions (`functions/*`) turn typed Lambda events into calls on [`services`] and
//! answers; bootstrap also owns the parsing and validation of the CloudFormation document.

pub mod adapters;
pub mod aws;
pub mod error;
pub mod model;
pub mod services;
pub mod settings;
pub mod store;
pub mod telemetry;
pub mod wiring;

pub use error::Error;
pub use settings::{Settings, SettingsError};

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

/// Reads a payload as the typed event `T` (usually one of `aws_lambda_events`'), or says
/// which field is wrong: `"<what>: <path>: <problem>"`.
pub fn typed_payload<T: serde::de::DeserializeOwned>(payload: serde_json::Value, what: &str) -> Result<T, Error> {
    serde_path_to_error::deserialize(payload).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        Error::InvalidEvent(if path == "." { format!("{what}: {inner}") } else { format!("{what}: {path}: {inner}") })
    })
}

/// The current time in epoch milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or_default()
}
