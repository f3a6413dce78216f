//! `batchline-job-events`: Batch Job State Change events to CloudWatch metrics, dependent stages and resizing.

use aws_config::SdkConfig;
use batchline::{Config, Error};
use lambda_runtime::LambdaEvent;
use serde_json::Value;

/// The AWS clients this function uses, built once per container.
pub struct Clients {
    pub cloudwatch: aws_sdk_cloudwatch::Client,
    pub dynamodb: aws_sdk_dynamodb::Client,
}

impl Clients {
    pub fn new(sdk: &SdkConfig) -> Self {
        Clients {
            cloudwatch: aws_sdk_cloudwatch::Client::new(sdk),
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
        "job-events does not handle events yet (received {})",
        batchline::event_kind(&event.payload)
    )))
}
