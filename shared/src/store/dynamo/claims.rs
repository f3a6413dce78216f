//! Submission claims, key generations and the event ledger on the table: conditional writes on a holder's deadline.

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{PutRequest, WriteRequest};

use crate::error::conditional_write;
use crate::store::keys::{self, CLAIM_SK, EVENT_SK, GENERATION_SK};
use crate::store::{
    ClaimStore, EventClaim, EventLedgerStore, Holder, KeyGeneration, SubmissionClaim, EVENT_SECONDS,
    RUN_RETENTION_SECONDS,
};
use crate::Error;

use super::items::{claim_from_item, claim_item, event_claim_from_item};
use super::{n, number, s, unreadable, DynamoStore};

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
