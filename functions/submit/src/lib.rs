//! `batchline-submit`: turns S3 "Object Created" events, scheduled events and HTTP API calls into Batch jobs.
//!
//! Status: the foundation only. The triggers themselves are issue #5; until then every
//! payload is classified and refused with an error that says what was received.

use aws_config::SdkConfig;
use batchline::{Config, Error};
use lambda_runtime::LambdaEvent;
use serde_json::Value;

/// The AWS clients this function uses, built once per container.
pub struct Clients {
    pub batch: aws_sdk_batch::Client,
    pub dynamodb: aws_sdk_dynamodb::Client,
}

impl Clients {
    pub fn new(sdk: &SdkConfig) -> Self {
        Clients {
            batch: aws_sdk_batch::Client::new(sdk),
            dynamodb: aws_sdk_dynamodb::Client::new(sdk),
        }
    }
}

/// Handles one invocation.
pub async fn handle(
    event: LambdaEvent<Value>,
    _clients: &Clients,
    _config: &Config,
) -> Result<Value, Error> {
    Err(Error::InvalidEvent(format!(
        "submit does not handle events yet (received {})",
        batchline::event_kind(&event.payload)
    )))
}
