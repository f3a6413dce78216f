//! The one AWS SDK configuration every client of a function is built from.
//!
//! Functions load it once per container, in `main`, and build each SDK client from it
//! once; handlers borrow the clients. `aws_config`'s default chain reads
//! `AWS_ENDPOINT_URL` (and the per-service `AWS_ENDPOINT_URL_<SERVICE>`), so the same
//! binaries reach the local emulator unchanged.

use aws_config::{BehaviorVersion, SdkConfig};

/// Loads the SDK configuration from the environment: region, credentials, endpoint.
pub async fn load_sdk_config() -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest()).load().await
}
