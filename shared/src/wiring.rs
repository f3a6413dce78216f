//! The wiring: the AWS adapters of every port, built once per container, and the services over them — what submit and job-events share.

use std::sync::Arc;

use aws_config::SdkConfig;

use crate::adapters::announce::AwsAnnouncer;
use crate::adapters::batch::SdkBatch;
use crate::adapters::clock::SystemClock;
use crate::services::config_cache::ConfigCache;
use crate::services::runs::RunDriver;
use crate::services::stuck::StuckJobWatch;
use crate::services::submitter::Submitter;
use crate::store::{DynamoStore, Holder};
use crate::Settings;

pub struct AwsPorts {
    pub store: Arc<DynamoStore>,
    pub batch: SdkBatch,
    pub announcer: AwsAnnouncer,
    pub configs: ConfigCache,
    pub clock: SystemClock,
    pub prices: crate::settings::PriceOverrides,
}

/// Who an invocation is, as a claim holder: its request id, and its deadline (after which
/// it cannot be running).
pub fn invocation_holder(context: &lambda_runtime::Context) -> Holder {
    Holder { token: context.request_id.clone(), deadline_ms: i64::try_from(context.deadline).unwrap_or(i64::MAX) }
}

impl AwsPorts {
    pub fn new(sdk: &SdkConfig, settings: &Settings) -> Self {
        let store = Arc::new(DynamoStore::new(aws_sdk_dynamodb::Client::new(sdk), &settings.table_name));
        AwsPorts {
            configs: ConfigCache::new(store.clone()),
            store,
            batch: SdkBatch::new(aws_sdk_batch::Client::new(sdk)),
            announcer: AwsAnnouncer::new(
                aws_sdk_eventbridge::Client::new(sdk),
                aws_sdk_cloudwatch::Client::new(sdk),
                &settings.metric_namespace,
            ),
            clock: SystemClock,
            prices: settings.price_overrides,
        }
    }

    /// The run driver, working for the invocation `holder`.
    pub fn driver<'a>(&'a self, holder: &'a Holder) -> RunDriver<'a> {
        RunDriver {
            runs: self.store.as_ref(),
            claims: self.store.as_ref(),
            batch: &self.batch,
            announcer: &self.announcer,
            configs: &self.configs,
            clock: &self.clock,
            holder,
            prices: &self.prices,
        }
    }

    /// The stuck-job watch.
    pub fn stuck_watch(&self) -> StuckJobWatch<'_> {
        StuckJobWatch { inspector: &self.batch, batch: &self.batch, metrics: &self.announcer, clock: &self.clock }
    }

    /// The submitter, working for the invocation `holder`.
    pub fn submitter<'a>(&'a self, holder: &'a Holder) -> Submitter<'a> {
        Submitter { batch: &self.batch, claims: self.store.as_ref(), clock: &self.clock, holder }
    }
}
