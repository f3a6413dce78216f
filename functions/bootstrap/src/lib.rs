//! `batchline-bootstrap`: the CloudFormation custom resource that provisions and tears down the Batch environment.
//!
//! Status: the foundation only. Provisioning is issue #4; until then every payload is
//! classified and refused with an error that says what was received.

use aws_config::SdkConfig;
use batchline::{Config, Error};
use lambda_runtime::LambdaEvent;
use serde_json::Value;

/// The AWS clients this function uses, built once per container.
pub struct Clients {
    pub batch: aws_sdk_batch::Client,
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub ecr: aws_sdk_ecr::Client,
    pub iam: aws_sdk_iam::Client,
}

impl Clients {
    pub fn new(sdk: &SdkConfig) -> Self {
        Clients {
            batch: aws_sdk_batch::Client::new(sdk),
            dynamodb: aws_sdk_dynamodb::Client::new(sdk),
            ecr: aws_sdk_ecr::Client::new(sdk),
            iam: aws_sdk_iam::Client::new(sdk),
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
        "bootstrap does not handle requests yet (received {})",
        batchline::event_kind(&event.payload)
    )))
}
