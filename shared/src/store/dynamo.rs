//! The store on the DynamoDB table: item codecs and the conditional writes of each kind.
//!
//! Item shapes (attribute names are part of the stored format: items written by earlier
//! releases stay readable, see the fixture tests):
//! - claim: `state` (`PENDING`/`SUBMITTED`), `idempotency_key`, `job_name`, `queue`,
//!   `input_fingerprint` (what the caller sent), `claimed_at`, `holder` and
//!   `holder_deadline` (the holding invocation and its Lambda deadline), `job_id` once
//!   submitted, `expires_at`. Claims from earlier releases carry a `fingerprint` of the
//!   resolved request instead (not compared) and no holder (their lease is 30 s from
//!   `claimed_at`);
//! - event: `state` (`IN_PROGRESS`/`DONE`), `token`, `claimed_at`, `holder_deadline`,
//!   `expires_at` (entries from earlier releases have no `holder_deadline`);
//! - run: `document` (the [`Run`] as JSON), `pipeline`, `status`, `version`, `expires_at`;
//! - index line: `run_id`, `status`, `announced` (whether its completion went out; absent
//!   on lines from earlier releases), `created_at`, `expires_at`;
//! - configuration: `document` (the [`StackConfig`] as JSON).

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, WriteRequest};

use super::keys::{self, CLAIM_SK, CONFIG_PK, CONFIG_SK, EVENT_SK, INDEX_SK_PREFIX, RUN_SK};
use super::{
    ClaimState, ClaimStore, ConfigStore, EventClaim, EventLedgerStore, EventState, Holder, RunStore, RunSummary,
    SubmissionClaim, VersionedRun, CLAIM_SECONDS, EVENT_SECONDS, RUN_RETENTION_SECONDS,
};
use crate::error::conditional_write;
use crate::model::run::Run;
use crate::model::stack::StackConfig;
use crate::Error;

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

    pub fn table(&self) -> &str {
        &self.table
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

// ----- codecs -----------------------------------------------------------------------------

/// A claim item.
pub fn claim_item(claim: &SubmissionClaim) -> Item {
    let mut item = Item::from([
        ("pk".into(), s(keys::claim_pk(&claim.idempotency_key))),
        ("sk".into(), s(CLAIM_SK)),
        ("state".into(), s(claim_state_text(claim.state))),
        ("idempotency_key".into(), s(claim.idempotency_key.clone())),
        ("job_name".into(), s(claim.job_name.clone())),
        ("queue".into(), s(claim.queue.clone())),
        ("claimed_at".into(), n(claim.claimed_at)),
        ("expires_at".into(), n(claim.claimed_at / 1000 + CLAIM_SECONDS)),
    ]);
    if let Some(fingerprint) = &claim.fingerprint {
        item.insert("input_fingerprint".into(), s(fingerprint.clone()));
    }
    if let Some(holder) = &claim.holder {
        item.insert("holder".into(), s(holder.token.clone()));
        item.insert("holder_deadline".into(), n(holder.deadline_ms));
    }
    if let Some(job_id) = &claim.job_id {
        item.insert("job_id".into(), s(job_id.clone()));
    }
    item
}

fn claim_state_text(state: ClaimState) -> &'static str {
    match state {
        ClaimState::Pending => "PENDING",
        ClaimState::Submitted => "SUBMITTED",
    }
}

/// Reads a claim item. A claim with a job id counts as submitted whatever its state says.
pub fn claim_from_item(item: &Item) -> Result<SubmissionClaim, Error> {
    let pk = text(item, "pk").unwrap_or_default();
    let job_id = text(item, "job_id");
    let state = match (text(item, "state").as_deref(), &job_id) {
        (_, Some(_)) | (Some("SUBMITTED"), _) => ClaimState::Submitted,
        (Some("PENDING"), None) => ClaimState::Pending,
        (other, _) => return Err(unreadable(pk, format!("claim state {other:?}"))),
    };
    Ok(SubmissionClaim {
        idempotency_key: text(item, "idempotency_key").unwrap_or_default(),
        job_name: text(item, "job_name").unwrap_or_default(),
        queue: text(item, "queue").unwrap_or_default(),
        fingerprint: text(item, "input_fingerprint"),
        state,
        job_id,
        claimed_at: number(item, "claimed_at").unwrap_or(0),
        holder: text(item, "holder")
            .map(|token| Holder { token, deadline_ms: number(item, "holder_deadline").unwrap_or(0) }),
    })
}

/// Reads an event item.
pub fn event_claim_from_item(item: &Item) -> Result<EventClaim, Error> {
    let state = match text(item, "state").as_deref() {
        Some("DONE") => EventState::Done,
        Some("IN_PROGRESS") => EventState::InProgress,
        other => return Err(unreadable(text(item, "pk").unwrap_or_default(), format!("event state {other:?}"))),
    };
    Ok(EventClaim { state, token: text(item, "token").unwrap_or_default() })
}

/// A run item at `version`.
pub fn run_item(run: &Run, version: i64) -> Result<Item, Error> {
    let document = serde_json::to_string(run).map_err(|e| unreadable(keys::run_pk(&run.run_id), e.to_string()))?;
    Ok(Item::from([
        ("pk".into(), s(keys::run_pk(&run.run_id))),
        ("sk".into(), s(RUN_SK)),
        ("document".into(), s(document)),
        ("pipeline".into(), s(run.pipeline.name.clone())),
        ("status".into(), s(run.status.as_str())),
        ("version".into(), n(version)),
        ("expires_at".into(), n(run.created_at / 1000 + RUN_RETENTION_SECONDS)),
    ]))
}

/// Reads a run item.
pub fn run_from_item(item: &Item) -> Result<VersionedRun, Error> {
    let pk = text(item, "pk").unwrap_or_default();
    let document = text(item, "document").ok_or_else(|| unreadable(&pk, "no document"))?;
    let run = serde_json::from_str(&document).map_err(|e| unreadable(&pk, e.to_string()))?;
    Ok(VersionedRun { run, version: number(item, "version").unwrap_or(0) })
}

/// The index line of a run.
pub fn index_item(run: &Run) -> Item {
    Item::from([
        ("pk".into(), s(keys::pipeline_pk(&run.pipeline.name))),
        ("sk".into(), s(keys::index_sk(run.created_at, &run.run_id))),
        ("run_id".into(), s(run.run_id.clone())),
        ("status".into(), s(run.status.as_str())),
        ("announced".into(), AttributeValue::Bool(run.completion_sent)),
        ("created_at".into(), n(run.created_at)),
        ("expires_at".into(), n(run.created_at / 1000 + RUN_RETENTION_SECONDS)),
    ])
}

/// Reads an index line.
pub fn summary_from_item(item: &Item) -> RunSummary {
    RunSummary {
        run_id: text(item, "run_id").unwrap_or_default(),
        status: text(item, "status").unwrap_or_default(),
        created_at: number(item, "created_at").unwrap_or(0),
    }
}

/// The configuration item.
pub fn config_item(config: &StackConfig) -> Result<Item, Error> {
    let document = serde_json::to_string(config).map_err(|e| unreadable(CONFIG_PK, e.to_string()))?;
    Ok(Item::from([("pk".into(), s(CONFIG_PK)), ("sk".into(), s(CONFIG_SK)), ("document".into(), s(document))]))
}

/// Reads the configuration item.
pub fn config_from_item(item: &Item) -> Result<StackConfig, Error> {
    let document = text(item, "document").ok_or_else(|| unreadable(CONFIG_PK, "no document"))?;
    serde_json::from_str(&document)
        .map_err(|e| unreadable(CONFIG_PK, format!("the stack configuration is unreadable: {e}")))
}

// ----- capabilities -------------------------------------------------------------------------

#[async_trait]
impl ClaimStore for DynamoStore {
    async fn create_claim(&self, claim: &SubmissionClaim) -> Result<bool, Error> {
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(claim_item(claim)))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await;
        conditional_write("PutItem", result)
    }

    async fn claim(&self, idempotency_key: &str) -> Result<Option<SubmissionClaim>, Error> {
        self.get(keys::claim_pk(idempotency_key), CLAIM_SK).await?.as_ref().map(claim_from_item).transpose()
    }

    async fn take_over_claim(
        &self,
        idempotency_key: &str,
        then: i64,
        holder: &Holder,
        now: i64,
    ) -> Result<bool, Error> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(keys::claim_pk(idempotency_key)))
            .key("sk", s(CLAIM_SK))
            .update_expression("SET claimed_at = :now, holder = :holder, holder_deadline = :deadline")
            .condition_expression("claimed_at = :then AND #state = :pending")
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":then", n(then))
            .expression_attribute_values(":holder", s(holder.token.clone()))
            .expression_attribute_values(":deadline", n(holder.deadline_ms))
            .expression_attribute_values(":pending", s("PENDING"))
            .send()
            .await;
        conditional_write("UpdateItem", result)
    }

    async fn record_claim_job(&self, idempotency_key: &str, job_id: &str, holder: Option<&str>) -> Result<bool, Error> {
        let request = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(keys::claim_pk(idempotency_key)))
            .key("sk", s(CLAIM_SK))
            .update_expression("SET #state = :submitted, job_id = :job")
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":submitted", s("SUBMITTED"))
            .expression_attribute_values(":pending", s("PENDING"))
            .expression_attribute_values(":job", s(job_id));
        let request = match holder {
            Some(token) => request
                .condition_expression("#state = :pending AND holder = :holder")
                .expression_attribute_values(":holder", s(token)),
            None => request.condition_expression("#state = :pending"),
        };
        conditional_write("UpdateItem", request.send().await)
    }
}

#[async_trait]
impl EventLedgerStore for DynamoStore {
    async fn claim_event(
        &self,
        event_id: &str,
        holder: &Holder,
        now_ms: i64,
        expired_before: i64,
        legacy_stale_before: i64,
    ) -> Result<bool, Error> {
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(keys::event_pk(event_id)))
            .item("sk", s(EVENT_SK))
            .item("state", s("IN_PROGRESS"))
            .item("token", s(holder.token.clone()))
            .item("claimed_at", n(now_ms))
            .item("holder_deadline", n(holder.deadline_ms))
            .item("expires_at", n(now_ms / 1000 + EVENT_SECONDS))
            .condition_expression(
                "attribute_not_exists(pk) OR (#state = :in_progress AND holder_deadline < :expired) \
                 OR (#state = :in_progress AND attribute_not_exists(holder_deadline) AND claimed_at < :stale)",
            )
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":in_progress", s("IN_PROGRESS"))
            .expression_attribute_values(":expired", n(expired_before))
            .expression_attribute_values(":stale", n(legacy_stale_before))
            .send()
            .await;
        conditional_write("PutItem", result)
    }

    async fn event_claim(&self, event_id: &str) -> Result<Option<EventClaim>, Error> {
        self.get(keys::event_pk(event_id), EVENT_SK).await?.as_ref().map(event_claim_from_item).transpose()
    }

    async fn release_event(&self, event_id: &str, token: &str) -> Result<(), Error> {
        let result = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key("pk", s(keys::event_pk(event_id)))
            .key("sk", s(EVENT_SK))
            .condition_expression("#token = :token AND #state = :in_progress")
            .expression_attribute_names("#token", "token")
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":token", s(token))
            .expression_attribute_values(":in_progress", s("IN_PROGRESS"))
            .send()
            .await;
        // A failed condition means it is not ours any more (taken over as stale):
        // nothing to give back.
        conditional_write("DeleteItem", result).map(|_| ())
    }

    async fn mark_events_done(&self, event_ids: &[&str], token: &str, now_ms: i64) -> Result<(), Error> {
        for chunk in event_ids.chunks(25) {
            let mut requests: Vec<WriteRequest> = chunk
                .iter()
                .map(|id| {
                    let put = PutRequest::builder()
                        .item("pk", s(keys::event_pk(id)))
                        .item("sk", s(EVENT_SK))
                        .item("state", s("DONE"))
                        .item("token", s(token))
                        .item("expires_at", n(now_ms / 1000 + EVENT_SECONDS))
                        .build()
                        .map_err(|e| unreadable(keys::event_pk(id), e.to_string()))?;
                    Ok(WriteRequest::builder().put_request(put).build())
                })
                .collect::<Result<_, Error>>()?;
            for attempt in 0..5 {
                let reply = self
                    .client
                    .batch_write_item()
                    .request_items(&self.table, requests.clone())
                    .send()
                    .await
                    .map_err(|e| Error::aws("BatchWriteItem", e))?;
                requests = reply.unprocessed_items().and_then(|u| u.get(&self.table)).cloned().unwrap_or_default();
                if requests.is_empty() {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50 << attempt)).await;
            }
            if !requests.is_empty() {
                return Err(Error::Aws {
                    operation: "BatchWriteItem",
                    code: "UnprocessedItems".into(),
                    message: format!("{} ledger items left unprocessed", requests.len()),
                });
            }
        }
        Ok(())
    }
}

#[async_trait]
impl RunStore for DynamoStore {
    async fn load_run(&self, run_id: &str) -> Result<Option<VersionedRun>, Error> {
        self.get(keys::run_pk(run_id), RUN_SK).await?.as_ref().map(run_from_item).transpose()
    }

    async fn save_run(&self, run: &Run, expected: Option<i64>) -> Result<Option<i64>, Error> {
        let version = expected.unwrap_or(0) + 1;
        let request = self.client.put_item().table_name(&self.table).set_item(Some(run_item(run, version)?));
        let request = match expected {
            None => request.condition_expression("attribute_not_exists(pk)"),
            Some(expected) => {
                request.condition_expression("version = :version").expression_attribute_values(":version", n(expected))
            }
        };
        if !conditional_write("PutItem", request.send().await)? {
            return Ok(None);
        }
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(index_item(run)))
            .send()
            .await
            .map_err(|e| Error::aws("PutItem", e))?;
        Ok(Some(version))
    }

    async fn list_runs(&self, pipeline: &str, limit: i32) -> Result<Vec<RunSummary>, Error> {
        let reply = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND begins_with(sk, :runs)")
            .expression_attribute_values(":pk", s(keys::pipeline_pk(pipeline)))
            .expression_attribute_values(":runs", s(INDEX_SK_PREFIX))
            .scan_index_forward(false)
            .limit(limit)
            .send()
            .await
            .map_err(|e| Error::aws("Query", e))?;
        Ok(reply.items().iter().map(summary_from_item).collect())
    }

    async fn open_runs(&self, pipeline: &str) -> Result<Vec<RunSummary>, Error> {
        let mut runs = Vec::new();
        let mut start = None;
        loop {
            let reply = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk AND begins_with(sk, :runs)")
                // Index lines from earlier releases have no `announced`: they announced
                // before recording it, so an ended one is done with.
                .filter_expression("#status = :running OR announced = :false")
                .expression_attribute_names("#status", "status")
                .expression_attribute_values(":false", AttributeValue::Bool(false))
                .expression_attribute_values(":pk", s(keys::pipeline_pk(pipeline)))
                .expression_attribute_values(":runs", s(INDEX_SK_PREFIX))
                .expression_attribute_values(":running", s("RUNNING"))
                .scan_index_forward(false)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| Error::aws("Query", e))?;
            runs.extend(reply.items().iter().map(summary_from_item));
            start = reply.last_evaluated_key().cloned();
            if start.is_none() {
                return Ok(runs);
            }
        }
    }
}

#[async_trait]
impl ConfigStore for DynamoStore {
    async fn load_config(&self) -> Result<Option<StackConfig>, Error> {
        self.get(CONFIG_PK.into(), CONFIG_SK).await?.as_ref().map(config_from_item).transpose()
    }

    async fn publish_config(&self, config: &StackConfig) -> Result<(), Error> {
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(config_item(config)?))
            .send()
            .await
            .map_err(|e| Error::aws("PutItem", e))?;
        Ok(())
    }

    async fn remove_config(&self) -> Result<(), Error> {
        self.client
            .delete_item()
            .table_name(&self.table)
            .key("pk", s(CONFIG_PK))
            .key("sk", s(CONFIG_SK))
            .send()
            .await
            .map_err(|e| Error::aws("DeleteItem", e))?;
        Ok(())
    }
}
