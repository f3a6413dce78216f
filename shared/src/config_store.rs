//! Reading the stack configuration bootstrap published, cached per container.
//!
//! The resolved configuration lives in the table (`pk = CONFIG`, `sk = CURRENT`). A
//! container reads it on first use and again after [`REFRESH_AFTER`], so a `sam deploy`
//! that changes pipelines or triggers reaches running functions within a minute without
//! reading the table on every event.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use tokio::sync::RwLock;

use crate::stack_config::StackConfig;
use crate::Error;

pub const REFRESH_AFTER: Duration = Duration::from_secs(60);

#[derive(Default)]
pub struct ConfigCache {
    cached: RwLock<Option<(Instant, Arc<StackConfig>)>>,
}

impl ConfigCache {
    /// The configuration, from the cache when fresh.
    pub async fn get(&self, dynamodb: &aws_sdk_dynamodb::Client, table: &str) -> Result<Arc<StackConfig>, Error> {
        if let Some((read_at, config)) = self.cached.read().await.as_ref() {
            if read_at.elapsed() < REFRESH_AFTER {
                return Ok(config.clone());
            }
        }
        let config = Arc::new(load(dynamodb, table).await?);
        *self.cached.write().await = Some((Instant::now(), config.clone()));
        Ok(config)
    }
}

/// Reads the configuration from the table.
pub async fn load(dynamodb: &aws_sdk_dynamodb::Client, table: &str) -> Result<StackConfig, Error> {
    let reply = dynamodb
        .get_item()
        .table_name(table)
        .key("pk", AttributeValue::S("CONFIG".into()))
        .key("sk", AttributeValue::S("CURRENT".into()))
        .send()
        .await
        .map_err(|e| Error::aws("GetItem", e))?;
    let document = reply.item().and_then(|item| item.get("document")).and_then(|d| d.as_s().ok()).ok_or_else(|| {
        Error::Config(crate::ConfigError::Malformed {
            name: crate::config::TABLE_VAR,
            value: table.to_owned(),
            reason: "the table holds no stack configuration yet: has bootstrap run (sam deploy)?".into(),
        })
    })?;
    serde_json::from_str(document)
        .map_err(|e| Error::InvalidEvent(format!("the stored stack configuration is unreadable: {e}")))
}
