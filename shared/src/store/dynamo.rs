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
//! - run: `document` (the [`Run`] as JSON), `pipeline`, `status`, `version`, `expires_at`;
//! - index line: `run_id`, `status`, `announced` (whether its completion went out; absent
//!   on lines from earlier releases), `version` (of the run when the line last changed;
//!   absent on lines from earlier releases), `created_at`, `expires_at`;
//! - open-run line: `run_id`, `pipeline`, `created_at`, `expires_at`;
//! - the sweep's cursor: `document` (the [`SweepCursor`] as JSON);
//! - configuration: `document` (the [`StackConfig`] as JSON), `owner` (the physical id of
//!   the environment that published it; absent on items from earlier releases).
//!
//! A run, its index line and its open-run line are written in one transaction, conditional
//! on the run's version, whenever what the lines show changes (its creation, its status,
//! its announcement): the index can never show an older state than the record, and a run
//! is never written without being listed. Any other change of a run (a stage started, an
//! attempt recorded) is one conditional PutItem of the record alone.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeValue, ConditionCheck, Delete, Put, PutRequest, TransactWriteItem, WriteRequest,
};

use super::keys::{
    self, CLAIM_SK, CONFIG_PK, CONFIG_SK, EVENT_SK, GENERATION_SK, INDEX_SK_PREFIX, OPEN_PK, RUN_SK, SWEEP_SK,
};
use super::{
    relists, ClaimState, ClaimStore, ConfigStore, EventClaim, EventLedgerStore, EventState, Holder, KeyGeneration,
    OpenRun, Page, Published, RunStore, RunSummary, SubmissionClaim, SweepCursor, VersionedRun, CLAIM_SECONDS,
    EVENT_SECONDS, RUN_RETENTION_SECONDS,
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
        ClaimState::Withdrawn => "WITHDRAWN",
    }
}

/// Reads a claim item. A claim with a job id counts as submitted whatever its state says.
pub fn claim_from_item(item: &Item) -> Result<SubmissionClaim, Error> {
    let pk = text(item, "pk").unwrap_or_default();
    let job_id = text(item, "job_id");
    let state = match (text(item, "state").as_deref(), &job_id) {
        (_, Some(_)) | (Some("SUBMITTED"), _) => ClaimState::Submitted,
        (Some("PENDING"), None) => ClaimState::Pending,
        (Some("WITHDRAWN"), None) => ClaimState::Withdrawn,
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
        ("expires_at".into(), n(run.started_at() / 1000 + RUN_RETENTION_SECONDS)),
    ]))
}

/// Reads a run item.
pub fn run_from_item(item: &Item) -> Result<VersionedRun, Error> {
    let pk = text(item, "pk").unwrap_or_default();
    let document = text(item, "document").ok_or_else(|| unreadable(&pk, "no document"))?;
    let run = serde_json::from_str(&document).map_err(|e| unreadable(&pk, e.to_string()))?;
    Ok(VersionedRun { run, version: number(item, "version").unwrap_or(0) })
}

/// The index line of a run at `version`.
pub fn index_item(run: &Run, version: i64) -> Item {
    Item::from([
        ("pk".into(), s(keys::pipeline_pk(&run.pipeline.name))),
        ("sk".into(), s(keys::index_sk(run.created_at, &run.run_id))),
        ("run_id".into(), s(run.run_id.clone())),
        ("status".into(), s(run.status.as_str())),
        ("announced".into(), AttributeValue::Bool(run.completion_sent)),
        ("version".into(), n(version)),
        ("created_at".into(), n(run.created_at)),
        ("expires_at".into(), n(run.started_at() / 1000 + RUN_RETENTION_SECONDS)),
    ])
}

/// The open-run line of a run.
pub fn open_item(run: &Run) -> Item {
    Item::from([
        ("pk".into(), s(OPEN_PK)),
        ("sk".into(), s(keys::index_sk(run.created_at, &run.run_id))),
        ("run_id".into(), s(run.run_id.clone())),
        ("pipeline".into(), s(run.pipeline.name.clone())),
        ("created_at".into(), n(run.created_at)),
        ("expires_at".into(), n(run.started_at() / 1000 + RUN_RETENTION_SECONDS)),
    ])
}

/// Reads an open-run line.
pub fn open_run_from_item(item: &Item) -> OpenRun {
    OpenRun {
        run_id: text(item, "run_id").unwrap_or_default(),
        created_at: number(item, "created_at").unwrap_or(0),
        position: text(item, "sk").unwrap_or_default(),
    }
}

/// Reads an index line.
pub fn summary_from_item(item: &Item) -> RunSummary {
    RunSummary {
        run_id: text(item, "run_id").unwrap_or_default(),
        status: text(item, "status").unwrap_or_default(),
        created_at: number(item, "created_at").unwrap_or(0),
    }
}

/// The configuration item, published by the environment `owner`.
pub fn config_item(config: &StackConfig, owner: &str) -> Result<Item, Error> {
    let document = serde_json::to_string(config).map_err(|e| unreadable(CONFIG_PK, e.to_string()))?;
    Ok(Item::from([
        ("pk".into(), s(CONFIG_PK)),
        ("sk".into(), s(CONFIG_SK)),
        ("document".into(), s(document)),
        ("owner".into(), s(owner)),
    ]))
}

/// Reads the configuration item.
pub fn config_from_item(item: &Item) -> Result<StackConfig, Error> {
    let document = text(item, "document").ok_or_else(|| unreadable(CONFIG_PK, "no document"))?;
    serde_json::from_str(&document)
        .map_err(|e| unreadable(CONFIG_PK, format!("the stack configuration is unreadable: {e}")))
}

/// The outcome of a transaction: `Ok(true)` written, `Ok(false)` one of its conditions did
/// not hold (someone else wrote first), `Err` anything else — a transaction in conflict
/// with another one in flight included, which is worth retrying.
fn transaction_written<T>(result: Result<T, SdkError<TransactWriteItemsError, HttpResponse>>) -> Result<bool, Error> {
    match result {
        Ok(_) => Ok(true),
        Err(err) => {
            let condition_failed = matches!(
                err.as_service_error(),
                Some(TransactWriteItemsError::TransactionCanceledException(cancelled))
                    if cancelled.cancellation_reasons().iter().any(|r| r.code() == Some("ConditionalCheckFailed"))
            );
            if condition_failed {
                Ok(false)
            } else {
                Err(Error::aws("TransactWriteItems", err))
            }
        }
    }
}

/// The write of a run's index line at `version`, for a transaction.
fn index_write(
    table: &str,
    run: &Run,
    version: i64,
) -> Result<aws_sdk_dynamodb::types::builders::TransactWriteItemBuilder, Error> {
    let put = Put::builder().table_name(table).set_item(Some(index_item(run, version)));
    Ok(TransactWriteItem::builder().put(built(put.build())?))
}

/// The write that keeps a run's open-run line as the run is: put while the run is not done
/// with, deleted once it is.
fn open_line_write(
    table: &str,
    run: &Run,
) -> Result<aws_sdk_dynamodb::types::builders::TransactWriteItemBuilder, Error> {
    if run.is_done_with() {
        let key = Delete::builder()
            .table_name(table)
            .key("pk", s(OPEN_PK))
            .key("sk", s(keys::index_sk(run.created_at, &run.run_id)));
        Ok(TransactWriteItem::builder().delete(built(key.build())?))
    } else {
        let line = Put::builder().table_name(table).set_item(Some(open_item(run)));
        Ok(TransactWriteItem::builder().put(built(line.build())?))
    }
}

fn built<T>(built: Result<T, aws_sdk_dynamodb::error::BuildError>) -> Result<T, Error> {
    built.map_err(|e| Error::Stored { item: "a transaction".into(), reason: e.to_string() })
}

// ----- capabilities -------------------------------------------------------------------------

#[async_trait]
impl ClaimStore for DynamoStore {
    async fn key_generation(&self, base: &str) -> Result<Option<KeyGeneration>, Error> {
        let Some(item) = self.get(keys::claim_pk(base), GENERATION_SK).await? else { return Ok(None) };
        let field = |name: &str| {
            number(&item, name)
                .ok_or_else(|| Error::Stored { item: format!("generation of {base:?}"), reason: format!("no {name}") })
        };
        Ok(Some(KeyGeneration {
            generation: u32::try_from(field("generation")?).unwrap_or(1),
            first_use_ms: field("first_use")?,
        }))
    }

    async fn set_key_generation(
        &self,
        base: &str,
        current: Option<&KeyGeneration>,
        next: &KeyGeneration,
    ) -> Result<bool, Error> {
        let request = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(keys::claim_pk(base)))
            .item("sk", s(GENERATION_SK))
            .item("generation", n(i64::from(next.generation)))
            .item("first_use", n(next.first_use_ms))
            .item("expires_at", n(next.first_use_ms / 1000 + RUN_RETENTION_SECONDS));
        let request = match current {
            None => request.condition_expression("attribute_not_exists(pk)"),
            Some(current) => request
                .condition_expression("generation = :generation AND first_use = :first_use")
                .expression_attribute_values(":generation", n(i64::from(current.generation)))
                .expression_attribute_values(":first_use", n(current.first_use_ms)),
        };
        conditional_write("PutItem", request.send().await)
    }

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
            .claim_update(idempotency_key)
            .update_expression("SET claimed_at = :now, holder = :holder, holder_deadline = :deadline")
            .condition_expression("claimed_at = :then AND #state = :pending")
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
            .claim_update(idempotency_key)
            .update_expression("SET #state = :submitted, job_id = :job")
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

    async fn withdraw_claim(&self, idempotency_key: &str, then: i64) -> Result<bool, Error> {
        let result = self
            .claim_update(idempotency_key)
            .update_expression("SET #state = :withdrawn")
            .condition_expression("claimed_at = :then AND #state = :pending AND attribute_not_exists(job_id)")
            .expression_attribute_values(":then", n(then))
            .expression_attribute_values(":pending", s("PENDING"))
            .expression_attribute_values(":withdrawn", s("WITHDRAWN"))
            .send()
            .await;
        conditional_write("UpdateItem", result)
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

    async fn save_run(&self, run: &Run, previous: Option<&VersionedRun>) -> Result<Option<i64>, Error> {
        let version = previous.map_or(0, |read| read.version) + 1;
        if let Some(read) = previous.filter(|read| !relists(&read.run, run)) {
            // The lines show nothing this write changes: the record alone, one conditional
            // PutItem (a transaction would write three items at twice the price each).
            let result = self
                .client
                .put_item()
                .table_name(&self.table)
                .set_item(Some(run_item(run, version)?))
                .condition_expression("version = :version")
                .expression_attribute_values(":version", n(read.version))
                .send()
                .await;
            return Ok(conditional_write("PutItem", result)?.then_some(version));
        }
        let record = Put::builder().table_name(&self.table).set_item(Some(run_item(run, version)?));
        let record = match previous {
            None => record.condition_expression("attribute_not_exists(pk)"),
            Some(read) => record
                .condition_expression("version = :version")
                .expression_attribute_values(":version", n(read.version)),
        };
        let result = self
            .client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().put(built(record.build())?).build())
            .transact_items(index_write(&self.table, run, version)?.build())
            .transact_items(open_line_write(&self.table, run)?.build())
            .send()
            .await;
        Ok(transaction_written(result)?.then_some(version))
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

    async fn open_runs(&self, after: Option<&str>, limit: i32) -> Result<Page<OpenRun>, Error> {
        let start = after.map(|position| Item::from([("pk".into(), s(OPEN_PK)), ("sk".into(), s(position))]));
        let reply = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND begins_with(sk, :runs)")
            .expression_attribute_values(":pk", s(OPEN_PK))
            .expression_attribute_values(":runs", s(INDEX_SK_PREFIX))
            .consistent_read(true)
            .set_exclusive_start_key(start)
            .limit(limit)
            .send()
            .await
            .map_err(|e| Error::aws("Query", e))?;
        let next = reply.last_evaluated_key().and_then(|key| text(key, "sk"));
        Ok(Page { items: reply.items().iter().map(open_run_from_item).collect(), next })
    }

    async fn reconcile_open_line(&self, line: &OpenRun, run: Option<&VersionedRun>) -> Result<bool, Error> {
        let record_key = |check: aws_sdk_dynamodb::types::builders::ConditionCheckBuilder| {
            check.table_name(&self.table).key("pk", s(keys::run_pk(&line.run_id))).key("sk", s(RUN_SK))
        };
        let (check, changes) = match run {
            Some(read) => {
                let check = record_key(ConditionCheck::builder())
                    .condition_expression("version = :version")
                    .expression_attribute_values(":version", n(read.version));
                let changes =
                    vec![open_line_write(&self.table, &read.run)?, index_write(&self.table, &read.run, read.version)?];
                (check, changes)
            }
            None => {
                let check = record_key(ConditionCheck::builder()).condition_expression("attribute_not_exists(pk)");
                let key = Delete::builder().table_name(&self.table).key("pk", s(OPEN_PK)).key("sk", s(&line.position));
                (check, vec![TransactWriteItem::builder().delete(built(key.build())?)])
            }
        };
        let check = TransactWriteItem::builder().condition_check(built(check.build())?).build();
        let items = std::iter::once(check).chain(changes.into_iter().map(|change| change.build()));
        let result = self.client.transact_write_items().set_transact_items(Some(items.collect())).send().await;
        transaction_written(result)
    }

    async fn legacy_open_runs(&self, pipeline: &str, after: Option<&str>) -> Result<Page<RunSummary>, Error> {
        let pk = keys::pipeline_pk(pipeline);
        let start = after.map(|position| Item::from([("pk".into(), s(pk.clone())), ("sk".into(), s(position))]));
        let reply = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND begins_with(sk, :runs)")
            // Lines of the oldest releases have no `announced` either: they announced
            // before recording it, so an ended one is done with.
            .filter_expression("attribute_not_exists(version) AND (#status = :running OR announced = :false)")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":false", AttributeValue::Bool(false))
            .expression_attribute_values(":pk", s(pk))
            .expression_attribute_values(":runs", s(INDEX_SK_PREFIX))
            .expression_attribute_values(":running", s("RUNNING"))
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(|e| Error::aws("Query", e))?;
        let next = reply.last_evaluated_key().and_then(|key| text(key, "sk"));
        Ok(Page { items: reply.items().iter().map(summary_from_item).collect(), next })
    }

    async fn sweep_cursor(&self) -> Result<SweepCursor, Error> {
        let Some(item) = self.get(OPEN_PK.into(), SWEEP_SK).await? else { return Ok(SweepCursor::default()) };
        let document = text(&item, "document").ok_or_else(|| unreadable("OPEN/SWEEP", "no document"))?;
        serde_json::from_str(&document).map_err(|e| unreadable("OPEN/SWEEP", e.to_string()))
    }

    async fn save_sweep_cursor(&self, cursor: &SweepCursor) -> Result<(), Error> {
        let document = serde_json::to_string(cursor).map_err(|e| unreadable("OPEN/SWEEP", e.to_string()))?;
        self.client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(OPEN_PK))
            .item("sk", s(SWEEP_SK))
            .item("document", s(document))
            .send()
            .await
            .map_err(|e| Error::aws("PutItem", e))?;
        Ok(())
    }
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
