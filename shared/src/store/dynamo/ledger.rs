//! The event ledger on the table: an event's claim is a conditional write on its holder's deadline; a batch's claims go in transactions of 100.
//!
//! One event is claimed with a conditional PutItem (one write unit). A batch of events is
//! claimed 100 to a TransactWriteItems call, each put under the same condition, so that a
//! metrics-lane batch of 250 events costs three calls, not 250 (the price: a transactional
//! write is two write units). A put whose condition fails cancels the transaction; its
//! reason carries the entry that holds the event (`ReturnValuesOnConditionCheckFailure`),
//! so the other events are tried again without it and without reading it back.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeValue, Put, PutRequest, ReturnValuesOnConditionCheckFailure, TransactWriteItem, WriteRequest,
};

use crate::error::conditional_write;
use crate::services::clock::retry_pause;
use crate::store::keys::{self, EVENT_SK};
use crate::store::{EventClaim, EventClaimFound, EventLedgerStore, Holder, EVENT_SECONDS};
use crate::Error;

use super::items::event_claim_from_item;
use super::{n, s, unreadable, DynamoStore, Item};

/// When an event may be claimed: nobody has, or its holder cannot be running any more
/// (past its deadline; a claim from before claims named a deadline, once stale).
const CLAIMABLE: &str = "attribute_not_exists(pk) OR (#state = :in_progress AND holder_deadline < :expired) \
     OR (#state = :in_progress AND attribute_not_exists(holder_deadline) AND claimed_at < :stale)";

/// How often a batch's transaction is tried again while it conflicts with another one in
/// flight on the same events (a duplicate being claimed elsewhere).
const CONFLICT_RETRIES: u32 = 4;

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
        let (item, values) = claim_write(event_id, holder, now_ms, expired_before, legacy_stale_before);
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression(CLAIMABLE)
            .expression_attribute_names("#state", "state")
            .set_expression_attribute_values(Some(values))
            .send()
            .await;
        conditional_write("PutItem", result)
    }

    async fn claim_events(
        &self,
        event_ids: &[&str],
        holder: &Holder,
        now_ms: i64,
        expired_before: i64,
        legacy_stale_before: i64,
    ) -> Result<Vec<EventClaimFound>, Error> {
        // Claimed unless its put's condition is found to fail.
        let mut found = vec![EventClaimFound::Claimed; event_ids.len()];
        let mut pending: Vec<usize> = (0..event_ids.len()).collect();
        let mut conflicts = 0;
        while !pending.is_empty() {
            let puts = pending
                .iter()
                .map(|&i| {
                    let (item, values) = claim_write(event_ids[i], holder, now_ms, expired_before, legacy_stale_before);
                    let put = Put::builder()
                        .table_name(&self.table)
                        .set_item(Some(item))
                        .condition_expression(CLAIMABLE)
                        .expression_attribute_names("#state", "state")
                        .set_expression_attribute_values(Some(values))
                        .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
                        .build()
                        .map_err(|e| unreadable(keys::event_pk(event_ids[i]), e.to_string()))?;
                    Ok(TransactWriteItem::builder().put(put).build())
                })
                .collect::<Result<Vec<_>, Error>>()?;
            let err = match self.client.transact_write_items().set_transact_items(Some(puts)).send().await {
                Ok(_) => break,
                Err(err) => err,
            };
            let Some(TransactWriteItemsError::TransactionCanceledException(cancelled)) = err.as_service_error() else {
                return Err(Error::aws("TransactWriteItems", err));
            };
            let reasons = cancelled.cancellation_reasons();
            if reasons.len() != pending.len() {
                return Err(Error::aws("TransactWriteItems", err));
            }
            let (mut retry, mut conflicted) = (Vec::new(), false);
            for (&i, reason) in pending.iter().zip(reasons) {
                match reason.code() {
                    Some("ConditionalCheckFailed") => {
                        let entry: Option<EventClaim> = reason.item().map(event_claim_from_item).transpose()?;
                        found[i] = EventClaimFound::Held(entry);
                    }
                    // Cancelled only because another put's condition failed.
                    None | Some("None") => retry.push(i),
                    Some("TransactionConflict") => {
                        conflicted = true;
                        retry.push(i);
                    }
                    Some(_) => return Err(Error::aws("TransactWriteItems", err)),
                }
            }
            if conflicted {
                if conflicts == CONFLICT_RETRIES {
                    return Err(Error::aws("TransactWriteItems", err));
                }
                tokio::time::sleep(retry_pause(conflicts)).await;
                conflicts += 1;
            }
            pending = retry;
        }
        Ok(found)
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
