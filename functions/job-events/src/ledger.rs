//! The event ledger: which EventBridge events have been counted, so a redelivered one is counted once.
//!
//! Items `pk = EVENT#<event id>`, `sk = EVENT` in the Batchline table, with a TTL. Before
//! an event is counted, its id is claimed with a conditional write (state `IN_PROGRESS`,
//! the invocation's request id as the token); after its metrics are published the item
//! becomes `DONE`; if publishing fails the claim is released so the retry can claim it
//! again. A claim older than [`STALE_CLAIM_MS`] belongs to an invocation that died
//! mid-way (Lambda runs 15 minutes at most) and may be taken over.

use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, WriteRequest};
use batchline::error::conditional_write;
use batchline::Error;

/// Older than any invocation can run: such a claim was left by a crash.
pub const STALE_CLAIM_MS: i64 = 16 * 60 * 1000;
/// How long an event id is remembered: longer than SQS keeps a message (14 days at most).
pub const REMEMBER_SECONDS: i64 = 15 * 24 * 3600;

const SK: &str = "EVENT";

/// The outcome of claiming an event id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This invocation counts the event.
    Claimed,
    /// Counted before: acknowledge without counting.
    AlreadyDone,
    /// Another invocation is counting it now: retry later.
    InFlight,
}

pub struct Ledger<'a> {
    pub dynamodb: &'a aws_sdk_dynamodb::Client,
    pub table: &'a str,
    /// The invocation's request id: who holds a claim.
    pub token: &'a str,
}

fn key(event_id: &str) -> AttributeValue {
    AttributeValue::S(format!("EVENT#{event_id}"))
}

impl Ledger<'_> {
    pub async fn claim(&self, event_id: &str, now_ms: i64) -> Result<Claim, Error> {
        let result = self
            .dynamodb
            .put_item()
            .table_name(self.table)
            .item("pk", key(event_id))
            .item("sk", AttributeValue::S(SK.into()))
            .item("state", AttributeValue::S("IN_PROGRESS".into()))
            .item("token", AttributeValue::S(self.token.into()))
            .item("claimed_at", AttributeValue::N(now_ms.to_string()))
            .item("expires_at", AttributeValue::N((now_ms / 1000 + REMEMBER_SECONDS).to_string()))
            .condition_expression("attribute_not_exists(pk) OR (#state = :in_progress AND claimed_at < :stale)")
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":in_progress", AttributeValue::S("IN_PROGRESS".into()))
            .expression_attribute_values(":stale", AttributeValue::N((now_ms - STALE_CLAIM_MS).to_string()))
            .send()
            .await;
        if conditional_write("PutItem", result)? {
            Ok(Claim::Claimed)
        } else {
            self.existing_state(event_id).await
        }
    }

    async fn existing_state(&self, event_id: &str) -> Result<Claim, Error> {
        let item = self
            .dynamodb
            .get_item()
            .table_name(self.table)
            .key("pk", key(event_id))
            .key("sk", AttributeValue::S(SK.into()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| Error::aws("GetItem", e))?;
        let state = item.item().and_then(|i| i.get("state")).and_then(|s| s.as_s().ok()).map(String::as_str);
        Ok(if state == Some("DONE") { Claim::AlreadyDone } else { Claim::InFlight })
    }

    /// Gives a claim back (publishing failed), so a retry can claim the event again.
    pub async fn release(&self, event_id: &str) -> Result<(), Error> {
        let result = self
            .dynamodb
            .delete_item()
            .table_name(self.table)
            .key("pk", key(event_id))
            .key("sk", AttributeValue::S(SK.into()))
            .condition_expression("#token = :token AND #state = :in_progress")
            .expression_attribute_names("#token", "token")
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":token", AttributeValue::S(self.token.into()))
            .expression_attribute_values(":in_progress", AttributeValue::S("IN_PROGRESS".into()))
            .send()
            .await;
        // A failed condition means it is not ours any more (taken over as stale):
        // nothing to give back.
        conditional_write("DeleteItem", result).map(|_| ())
    }

    /// Records events as counted, 25 a request, retrying what DynamoDB leaves unprocessed.
    pub async fn mark_done(&self, event_ids: &[&str], now_ms: i64) -> Result<(), Error> {
        for chunk in event_ids.chunks(25) {
            let mut requests: Vec<WriteRequest> = chunk
                .iter()
                .map(|id| {
                    let put = PutRequest::builder()
                        .item("pk", key(id))
                        .item("sk", AttributeValue::S(SK.into()))
                        .item("state", AttributeValue::S("DONE".into()))
                        .item("token", AttributeValue::S(self.token.into()))
                        .item("expires_at", AttributeValue::N((now_ms / 1000 + REMEMBER_SECONDS).to_string()))
                        .build()
                        .map_err(|e| Error::InvalidEvent(format!("building a ledger item: {e}")))?;
                    Ok(WriteRequest::builder().put_request(put).build())
                })
                .collect::<Result<_, Error>>()?;
            for attempt in 0..5 {
                let reply = self
                    .dynamodb
                    .batch_write_item()
                    .request_items(self.table, requests.clone())
                    .send()
                    .await
                    .map_err(|e| Error::aws("BatchWriteItem", e))?;
                requests = reply.unprocessed_items().and_then(|u| u.get(self.table)).cloned().unwrap_or_default();
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
