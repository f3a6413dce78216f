//! Submission claims and key generations on the table: conditional writes on a holder's deadline.

use crate::error::conditional_write;
use crate::store::keys::{self, CLAIM_SK, GENERATION_SK};
use crate::store::{ClaimStore, Holder, KeyGeneration, SubmissionClaim, RUN_RETENTION_SECONDS};
use crate::Error;
use async_trait::async_trait;

use super::items::{claim_from_item, claim_item};
use super::{n, number, s, DynamoStore};

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
