//! The AWS adapters of every port, built once per container: what submit and job-events share.

use std::sync::Arc;

use aws_config::SdkConfig;

use crate::services::announce::AwsAnnouncer;
use crate::services::batch::SdkBatch;
use crate::services::config_cache::ConfigCache;
use crate::services::runs::RunDriver;
use crate::services::submitter::Submitter;
use crate::store::DynamoStore;
use crate::Config;

pub struct AwsPorts {
    pub store: Arc<DynamoStore>,
    pub batch: SdkBatch,
    pub announcer: AwsAnnouncer,
    pub configs: ConfigCache,
}

impl AwsPorts {
    pub fn new(sdk: &SdkConfig, config: &Config) -> Self {
        let store = Arc::new(DynamoStore::new(aws_sdk_dynamodb::Client::new(sdk), &config.table_name));
        AwsPorts {
            configs: ConfigCache::new(store.clone()),
            store,
            batch: SdkBatch::new(aws_sdk_batch::Client::new(sdk)),
            announcer: AwsAnnouncer::new(
                aws_sdk_eventbridge::Client::new(sdk),
                aws_sdk_cloudwatch::Client::new(sdk),
                &config.metric_namespace,
            ),
        }
    }

    pub fn driver(&self) -> RunDriver<'_> {
        RunDriver {
            runs: self.store.as_ref(),
            claims: self.store.as_ref(),
            batch: &self.batch,
            announcer: &self.announcer,
            configs: &self.configs,
        }
    }

    pub fn submitter(&self) -> Submitter<'_> {
        Submitter { batch: &self.batch, claims: self.store.as_ref() }
    }
}
