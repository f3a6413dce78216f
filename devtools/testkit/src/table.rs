//! The Batchline DynamoDB table, as the template declares it, created in the emulator for a test.

use aws_config::SdkConfig;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType, TimeToLiveSpecification,
};
use batchline::Error;

/// Creates the table: `pk` (S) and `sk` (S), pay per request, TTL on `expires_at`.
pub async fn create_table(sdk: &SdkConfig, name: &str) -> Result<(), Error> {
    let dynamodb = aws_sdk_dynamodb::Client::new(sdk);
    let attribute = |name: &str| {
        AttributeDefinition::builder()
            .attribute_name(name)
            .attribute_type(ScalarAttributeType::S)
            .build()
            .map_err(build_error)
    };
    let key =
        |name: &str, kind| KeySchemaElement::builder().attribute_name(name).key_type(kind).build().map_err(build_error);
    dynamodb
        .create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(attribute("pk")?)
        .attribute_definitions(attribute("sk")?)
        .key_schema(key("pk", KeyType::Hash)?)
        .key_schema(key("sk", KeyType::Range)?)
        .send()
        .await
        .map_err(|e| Error::aws("CreateTable", e))?;
    dynamodb
        .update_time_to_live()
        .table_name(name)
        .time_to_live_specification(
            TimeToLiveSpecification::builder()
                .attribute_name("expires_at")
                .enabled(true)
                .build()
                .map_err(build_error)?,
        )
        .send()
        .await
        .map_err(|e| Error::aws("UpdateTimeToLive", e))?;
    Ok(())
}

fn build_error(err: impl std::fmt::Display) -> Error {
    Error::InvalidEvent(format!("building a table request: {err}"))
}
