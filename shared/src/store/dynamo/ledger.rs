//! The event ledger on the table: an event's claim is a conditional write on its holder's deadline, one PutItem an event.
//!
//! Each event is claimed with a conditional PutItem: one write unit (its item is well
//! under 1 KB), where a transactional put costs two. One call's claims (a chunk of up to
//! 100 of a batch) are written [`CLAIMS_IN_FLIGHT`] at a time, and job-events claims a
//! batch's chunks at once, so a metrics-lane batch of 250 is a few round trips deep, not 250. A put whose condition fails answers with the entry that holds the event
//! (`ReturnValuesOnConditionCheckFailure`), so it is not read back. Until 2026-12-07 a
//! batch's claims went 100 to a TransactWriteItems call: three calls for 250 events, at
//! three write units an event with its mark instead of two (the orchestration bill,
//! "Benchmarks" in the book, has both).

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, ReturnValuesOnConditionCheckFailure, WriteRequest};
use futures::StreamExt;
use tracing::warn;

use crate::error::conditional_write;
use crate::store::keys::{self, EVENT_SK};
use crate::store::{EventClaim, EventClaimFound, EventLedgerStore, Holder, EVENT_SECONDS};
use crate::Error;

use super::items::event_claim_from_item;
use super::{n, s, unreadable, DynamoStore, Item};

/// When an event may be claimed: nobody has, or its holder cannot be running any more
/// (past its deadline; a claim from before claims named a deadline, once stale).
const CLAIMABLE: &str = "attribute_not_exists(pk) OR (#state = :in_progress AND holder_deadline < :expired) \
     OR (#state = :in_progress AND attribute_not_exists(holder_deadline) AND claimed_at < :stale)";

/// How many of a batch's claims are written at once.
const CLAIMS_IN_FLIGHT: usize = 25;

/// An event's claim: the item, and the values [`CLAIMABLE`] names.
fn claim_write(
    event_id: &str,
    holder: &Holder,
    now_ms: i64,
    expired_before: i64,
    legacy_stale_before: i64,
) -> (Item, HashMap<String, AttributeValue>) {
    let item = Item::from([
        ("pk".to_owned(), s(keys::event_pk(event_id))),
        ("sk".to_owned(), s(EVENT_SK)),
        ("state".to_owned(), s("IN_PROGRESS")),
        ("token".to_owned(), s(holder.token.clone())),
        ("claimed_at".to_owned(), n(now_ms)),
        ("holder_deadline".to_owned(), n(holder.deadline_ms)),
        ("expires_at".to_owned(), n(now_ms / 1000 + EVENT_SECONDS)),
    ]);
    let values = HashMap::from([
        (":in_progress".to_owned(), s("IN_PROGRESS")),
        (":expired".to_owned(), n(expired_before)),
        (":stale".to_owned(), n(legacy_stale_before)),
    ]);
    (item, values)
}

impl DynamoStore {
    /// One event's claim, as a conditional PutItem: claimed, or the entry that holds it
    /// (returned with the failed condition, not read back).
    async fn put_claim(
        &self,
        event_id: &str,
        holder: &Holder,
        now_ms: i64,
        expired_before: i64,
        legacy_stale_before: i64,
    ) -> Result<EventClaimFound, Error> {
        let (item, values) = claim_write(event_id, holder, now_ms, expired_before, legacy_stale_before);
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression(CLAIMABLE)
            .expression_attribute_names("#state", "state")
            .set_expression_attribute_values(Some(values))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(_) => Ok(EventClaimFound::Claimed),
            Err(err) => match err.as_service_error() {
                Some(PutItemError::ConditionalCheckFailedException(failed)) => {
                    Ok(EventClaimFound::Held(failed.item().map(event_claim_from_item).transpose()?))
                }
                _ => Err(Error::aws("PutItem", err)),
            },
        }
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
        let found = self.put_claim(event_id, holder, now_ms, expired_before, legacy_stale_before).await?;
        Ok(found == EventClaimFound::Claimed)
    }

    async fn claim_events(
        &self,
        event_ids: &[&str],
        holder: &Holder,
        now_ms: i64,
        expired_before: i64,
        legacy_stale_before: i64,
    ) -> Result<Vec<EventClaimFound>, Error> {
        // Boxed in a loop rather than mapped: a closure here is not general enough for
        // async_trait's Send future.
        let mut puts = Vec::with_capacity(event_ids.len());
        for id in event_ids {
            puts.push(Box::pin(self.put_claim(id, holder, now_ms, expired_before, legacy_stale_before)));
        }
        let outcomes: Vec<Result<EventClaimFound, Error>> =
            futures::stream::iter(puts).buffered(CLAIMS_IN_FLIGHT).collect().await;
        if !outcomes.iter().any(Result::is_err) {
            return Ok(outcomes.into_iter().flatten().collect());
        }
        // An error claims none of them: give back what this call did claim. A give-back
        // that fails leaves its claim to be taken over after the holder's deadline.
        let mut first_error = None;
        for (id, outcome) in event_ids.iter().zip(outcomes) {
            match outcome {
                Ok(EventClaimFound::Claimed) => {
                    if let Err(error) = self.release_event(id, &holder.token).await {
                        warn!(event_id = id, %error, "could not give back a claim; it expires with its holder");
                    }
                }
                Ok(EventClaimFound::Held(_)) => {}
                Err(error) => first_error = first_error.or(Some(error)),
            }
        }
        Err(first_error.unwrap_or_else(|| Error::Contention("a claim failed".to_owned())))
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
