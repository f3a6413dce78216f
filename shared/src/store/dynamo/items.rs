//! The item codecs: each kind of item the table holds, written and read.

use aws_sdk_dynamodb::types::AttributeValue;

use crate::model::run::Run;
use crate::model::stack::StackConfig;
use crate::store::keys::{self, CLAIM_SK, CONFIG_PK, CONFIG_SK, OPEN_PK, RUN_SK};
use crate::store::{
    ClaimState, EventClaim, EventState, Holder, OpenRun, RunSummary, SubmissionClaim, VersionedRun, CLAIM_SECONDS,
    RUN_RETENTION_SECONDS,
};
use crate::Error;

use super::{n, number, s, text, unreadable, Item};

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
