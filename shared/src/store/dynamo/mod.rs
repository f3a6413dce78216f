//! The store on the DynamoDB table: item codecs and the conditional writes of each kind.
//!
//! Item shapes (attribute names are part of the stored format: items written by earlier
//! releases stay readable, see the fixture tests):
//! - claim: `state` (`PENDING`/`SUBMITTED`/`WITHDRAWN`), `idempotency_key`, `job_name`, `queue`,
//!   `input_fingerprint` (what the caller sent), `claimed_at`, `holder` and
//!   `holder_deadline` (the holding invocation and its Lambda deadline), `job_id` once
//!   submitted, `expires_at`. Claims from earlier releases carry a `fingerprint` of the
//!   resolved request instead (not compared) and no holder (their lease is 30 s from
//!   `claimed_at`);
//! - a key's live generation: `generation`, `first_use`, `expires_at`;
//! - event: `state` (`IN_PROGRESS`/`DONE`), `token`, `claimed_at`, `holder_deadline`,
//!   `expires_at` (entries from earlier releases have no `holder_deadline`);
//! - run: `document` (the `Run` as JSON), `pipeline`, `status`, `version`, `expires_at`;
//! - index line: `run_id`, `status`, `announced` (whether its completion went out; absent
//!   on lines from earlier releases), `version` (of the run when the line last changed;
//!   absent on lines from earlier releases), `created_at`, `expires_at`;
//! - open-run line: `run_id`, `pipeline`, `created_at`, `expires_at`;
//! - the sweep's cursor: `document` (the `SweepCursor` as JSON);
//! - coalescing windows and object claims: see the `windows` module;
//! - configuration: `document` (the `StackConfig` as JSON), `owner` (the physical id of
//!   the environment that published it; absent on items from earlier releases).
//!
//! A run, its index line and its open-run line are written in one transaction, conditional
//! on the run's version, whenever what the lines show changes (its creation, its status,
//! its announcement): the index can never show an older state than the record, and a run
//! is never written without being listed. Any other change of a run (a stage started, an
//! attempt recorded) is one conditional PutItem of the record alone.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;

use super::keys::{self, CLAIM_SK, CONFIG_PK, CONFIG_SK};
use super::{ConfigStore, Published};
use crate::error::conditional_write;
use crate::model::stack::StackConfig;
use crate::Error;

mod claims;
mod items;
mod ledger;
mod runs;
mod windows;

pub use items::{
    claim_from_item, claim_item, config_from_item, config_item, event_claim_from_item, index_item, open_item,
    open_run_from_item, run_from_item, run_item, summary_from_item,
};
pub use windows::{chunk_entry, CHUNK_BYTES};

type Item = HashMap<String, AttributeValue>;

/// The Batchline table.
#[derive(Clone, Debug)]
pub struct DynamoStore {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

impl DynamoStore {
    pub fn new(client: aws_sdk_dynamodb::Client, table: impl Into<String>) -> Self {
        DynamoStore { client, table: table.into() }
    }

    /// An UpdateItem of a claim item, `#state` naming its state.
    fn claim_update(
        &self,
        idempotency_key: &str,
    ) -> aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder {
        self.client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(keys::claim_pk(idempotency_key)))
            .key("sk", s(CLAIM_SK))
            .expression_attribute_names("#state", "state")
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// An UpdateItem of the item `pk`/`sk` of the table, for the caller to say what it sets.
    fn update(
        &self,
        pk: String,
        sk: &str,
    ) -> aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder {
        self.client.update_item().table_name(&self.table).key("pk", s(pk)).key("sk", s(sk))
    }

    async fn get(&self, pk: String, sk: &str) -> Result<Option<Item>, Error> {
        let reply = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .key("sk", s(sk))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| Error::aws("GetItem", e))?;
        Ok(reply.item)
    }
}

fn s(text: impl Into<String>) -> AttributeValue {
    AttributeValue::S(text.into())
}

fn n(number: i64) -> AttributeValue {
    AttributeValue::N(number.to_string())
}

fn text(item: &Item, name: &str) -> Option<String> {
    item.get(name).and_then(|v| v.as_s().ok()).cloned()
}

fn number(item: &Item, name: &str) -> Option<i64> {
    item.get(name).and_then(|v| v.as_n().ok()).and_then(|n| n.parse().ok())
}

fn unreadable(item: impl Into<String>, reason: impl Into<String>) -> Error {
    Error::Stored { item: item.into(), reason: reason.into() }
}

#[async_trait]
impl ConfigStore for DynamoStore {
    async fn load_config(&self) -> Result<Option<StackConfig>, Error> {
        self.get(CONFIG_PK.into(), CONFIG_SK).await?.as_ref().map(config_from_item).transpose()
    }

    async fn load_published(&self) -> Result<Option<Published>, Error> {
        let Some(item) = self.get(CONFIG_PK.into(), CONFIG_SK).await? else { return Ok(None) };
        Ok(Some(Published { config: config_from_item(&item)?, owner: text(&item, "owner") }))
    }

    async fn publish_config(&self, config: &StackConfig, owner: &str) -> Result<(), Error> {
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(config_item(config, owner)?))
            .send()
            .await
            .map_err(|e| Error::aws("PutItem", e))?;
        Ok(())
    }

    async fn remove_config(&self, owner: Option<&str>) -> Result<bool, Error> {
        let request = self.client.delete_item().table_name(&self.table).key("pk", s(CONFIG_PK)).key("sk", s(CONFIG_SK));
        let request = match owner {
            Some(owner) => request
                .condition_expression("attribute_not_exists(pk) OR #owner = :owner")
                .expression_attribute_values(":owner", s(owner)),
            None => request.condition_expression("attribute_not_exists(#owner)"),
        };
        conditional_write("DeleteItem", request.expression_attribute_names("#owner", "owner").send().await)
    }
}
