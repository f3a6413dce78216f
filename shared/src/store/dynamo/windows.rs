//! Coalescing windows on the table: a window's head, its chunks of object lines (appended in one transaction with the head's count), and each object's claim by one window.
//!
//! Item shapes:
//! - head (`COALESCE#<trigger>` / `WINDOW#<n>`): `status` (`OPEN`/`SEALED`), `opened_at`,
//!   `close_at`, `count`, `run_id` once started, `expires_at`;
//! - chunk (`COALESCE#<trigger>` / `CHUNK#<n>#<opened at>#<token>`): `entries`, JSON Lines of
//!   `[bucket, key, version, size]`, `expires_at`;
//! - object claim (`OBJECT#<hash>` / `<trigger>#<version>`): `trigger`, `version`, `window`,
//!   `run_id` (which names the window once and for all: a number can come again after its
//!   items expired), `position` (written once by the first claim, moved only by
//!   `place_object`, so two closers of one window never undo each other), `expires_at`.
//!
//! An append is one transaction of two writes whatever the number of objects in the chunk
//! (a chunk is at most [`CHUNK_BYTES`]): the head's count, conditional on the window still
//! open, before its close and as read, and the chunk, conditional on its name being new.

use async_trait::async_trait;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{Put, TransactWriteItem, Update};

use crate::error::conditional_write;
use crate::model::coalesce::CoalescedObject;
use crate::services::clock::retry_pause;
use crate::store::keys::{self, WINDOW_SK_PREFIX};
use crate::store::{Appended, ObjectClaim, WindowHead, WindowStore};
use crate::Error;

use super::{n, number, s, text, unreadable, DynamoStore, Item};

/// How often a seal is tried again while it conflicts with an append in flight.
const SEAL_TRIES: u32 = 8;

/// The most a chunk's entries may take: well under DynamoDB's 400 KB an item.
pub const CHUNK_BYTES: usize = 350 * 1024;

/// A chunk's entry of one object.
pub fn chunk_entry(object: &CoalescedObject) -> String {
    serde_json::json!([object.bucket, object.key, object.version, object.size]).to_string()
}

fn head_from_item(trigger: &str, item: &Item) -> Result<WindowHead, Error> {
    let sk = text(item, "sk").unwrap_or_default();
    let window = sk
        .strip_prefix(WINDOW_SK_PREFIX)
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| unreadable(keys::coalesce_pk(trigger), format!("{sk:?} is not a window's sort key")))?;
    Ok(WindowHead {
        trigger: trigger.to_owned(),
        window,
        open: text(item, "status").as_deref() == Some("OPEN"),
        opened_at: number(item, "opened_at").unwrap_or_default(),
        close_at: number(item, "close_at").unwrap_or_default(),
        count: number(item, "count").and_then(|c| u32::try_from(c).ok()).unwrap_or_default(),
        run_id: text(item, "run_id"),
    })
}

fn chunk_objects(trigger: &str, item: &Item) -> Result<Vec<CoalescedObject>, Error> {
    let entries = text(item, "entries").unwrap_or_default();
    entries
        .lines()
        .map(|line| {
            let (bucket, key, version, size): (String, String, String, u64) = serde_json::from_str(line)
                .map_err(|e| unreadable(keys::coalesce_pk(trigger), format!("a chunk's entry: {e}")))?;
            Ok(CoalescedObject { stack: String::new(), trigger: trigger.to_owned(), bucket, key, version, size })
        })
        .collect()
}

fn chunk_item(head: &WindowHead, chunk: &str, objects: &[CoalescedObject], expires_at: i64) -> Item {
    let entries: Vec<String> = objects.iter().map(chunk_entry).collect();
    Item::from([
        ("pk".to_owned(), s(keys::coalesce_pk(&head.trigger))),
        ("sk".to_owned(), s(keys::chunk_sk(head.window, head.opened_at, chunk))),
        ("entries".to_owned(), s(entries.join("\n"))),
        ("expires_at".to_owned(), n(expires_at)),
    ])
}

fn transaction_part<T>(built: Result<T, aws_sdk_dynamodb::error::BuildError>) -> Result<T, Error> {
    built.map_err(|e| Error::Stored { item: "a window's transaction".into(), reason: e.to_string() })
}

/// What a cancelled append came to: the head's condition failed (`NotAsRead`), or the
/// chunk was there already (a lost reply: `Appended`); anything else is an error, a
/// conflict with another transaction in flight included (worth another try).
fn cancelled_append(
    err: aws_sdk_dynamodb::error::SdkError<TransactWriteItemsError, aws_sdk_dynamodb::config::http::HttpResponse>,
) -> Result<Appended, Error> {
    let Some(TransactWriteItemsError::TransactionCanceledException(cancelled)) = err.as_service_error() else {
        return Err(Error::aws("TransactWriteItems", err));
    };
    let codes: Vec<Option<&str>> = cancelled.cancellation_reasons().iter().map(|r| r.code()).collect();
    match codes.as_slice() {
        [_, Some("ConditionalCheckFailed")] => Ok(Appended::Appended),
        [Some("ConditionalCheckFailed"), _] => Ok(Appended::NotAsRead),
        // Another append, or the seal, on the same head at the same moment: read it again.
        [Some("TransactionConflict"), _] | [_, Some("TransactionConflict")] => Ok(Appended::NotAsRead),
        _ => Err(Error::aws("TransactWriteItems", err)),
    }
}

impl DynamoStore {
    /// Writes a chunk with its window head's write (the head opened, or its count raised),
    /// in one transaction: the head first, as [`cancelled_append`] reads the reasons.
    async fn append_chunk(
        &self,
        head_write: TransactWriteItem,
        chunk_put: aws_sdk_dynamodb::types::builders::PutBuilder,
    ) -> Result<Appended, Error> {
        let result = self
            .client
            .transact_write_items()
            .transact_items(head_write)
            .transact_items(TransactWriteItem::builder().put(transaction_part(chunk_put.build())?).build())
            .send()
            .await;
        match result {
            Ok(_) => Ok(Appended::Appended),
            Err(err) => cancelled_append(err),
        }
    }
}

#[async_trait]
impl WindowStore for DynamoStore {
    async fn latest_window(&self, trigger: &str) -> Result<Option<WindowHead>, Error> {
        let reply = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND begins_with(sk, :heads)")
            .expression_attribute_values(":pk", s(keys::coalesce_pk(trigger)))
            .expression_attribute_values(":heads", s(WINDOW_SK_PREFIX))
            .scan_index_forward(false)
            .limit(1)
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| Error::aws("Query", e))?;
        reply.items().first().map(|item| head_from_item(trigger, item)).transpose()
    }

    async fn window(&self, trigger: &str, window: u64) -> Result<Option<WindowHead>, Error> {
        let item = self.get(keys::coalesce_pk(trigger), &keys::window_sk(window)).await?;
        item.as_ref().map(|item| head_from_item(trigger, item)).transpose()
    }

    async fn open_window(
        &self,
        head: &WindowHead,
        chunk: &str,
        objects: &[CoalescedObject],
        expires_at: i64,
    ) -> Result<Appended, Error> {
        let head_item = Item::from([
            ("pk".to_owned(), s(keys::coalesce_pk(&head.trigger))),
            ("sk".to_owned(), s(keys::window_sk(head.window))),
            ("status".to_owned(), s("OPEN")),
            ("opened_at".to_owned(), n(head.opened_at)),
            ("close_at".to_owned(), n(head.close_at)),
            ("count".to_owned(), n(objects.len() as i64)),
            ("expires_at".to_owned(), n(expires_at)),
        ]);
        let new = "attribute_not_exists(pk)";
        let head_put = Put::builder().table_name(&self.table).set_item(Some(head_item)).condition_expression(new);
        let chunk_item = chunk_item(head, chunk, objects, expires_at);
        let chunk_put = Put::builder().table_name(&self.table).set_item(Some(chunk_item)).condition_expression(new);
        let head_write = TransactWriteItem::builder().put(transaction_part(head_put.build())?).build();
        self.append_chunk(head_write, chunk_put).await
    }

    async fn append_to_window(
        &self,
        read: &WindowHead,
        chunk: &str,
        objects: &[CoalescedObject],
        now_ms: i64,
        max_objects: u32,
        expires_at: i64,
    ) -> Result<Appended, Error> {
        if !read.open || read.close_at <= now_ms || read.count as usize + objects.len() > max_objects as usize {
            return Ok(Appended::NotAsRead);
        }
        let head = Update::builder()
            .table_name(&self.table)
            .key("pk", s(keys::coalesce_pk(&read.trigger)))
            .key("sk", s(keys::window_sk(read.window)))
            .update_expression("SET #count = #count + :added")
            .condition_expression("#status = :open AND #count = :seen AND close_at > :now")
            .expression_attribute_names("#count", "count")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":added", n(objects.len() as i64))
            .expression_attribute_values(":open", s("OPEN"))
            .expression_attribute_values(":seen", n(read.count as i64))
            .expression_attribute_values(":now", n(now_ms));
        let chunk_item = chunk_item(read, chunk, objects, expires_at);
        let chunk_put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(chunk_item))
            .condition_expression("attribute_not_exists(pk)");
        let head_write = TransactWriteItem::builder().update(transaction_part(head.build())?).build();
        self.append_chunk(head_write, chunk_put).await
    }

    async fn seal_window(&self, trigger: &str, window: u64) -> Result<(), Error> {
        // A seal racing an append's transaction on the head is refused as a conflict: again.
        for tries in 0.. {
            let result = self
                .update(keys::coalesce_pk(trigger), &keys::window_sk(window))
                .update_expression("SET #status = :sealed")
                .condition_expression("attribute_exists(pk)")
                .expression_attribute_names("#status", "status")
                .expression_attribute_values(":sealed", s("SEALED"))
                .send()
                .await;
            match conditional_write("UpdateItem", result) {
                Ok(true) => return Ok(()),
                Ok(false) => {
                    return Err(unreadable(keys::coalesce_pk(trigger), format!("window {window} was never opened")))
                }
                Err(err) if err.aws_code() == Some("TransactionConflictException") && tries < SEAL_TRIES => {
                    tokio::time::sleep(retry_pause(tries)).await;
                }
                Err(err) => return Err(err),
            }
        }
        unreachable!("the loop returns")
    }

    async fn window_objects(&self, head: &WindowHead) -> Result<Vec<CoalescedObject>, Error> {
        let trigger = head.trigger.as_str();
        let mut objects = Vec::new();
        let mut start = None;
        loop {
            let reply = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk AND begins_with(sk, :chunks)")
                .expression_attribute_values(":pk", s(keys::coalesce_pk(trigger)))
                .expression_attribute_values(":chunks", s(keys::chunks_sk_prefix(head.window, head.opened_at)))
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| Error::aws("Query", e))?;
            for item in reply.items() {
                objects.extend(chunk_objects(trigger, item)?);
            }
            start = reply.last_evaluated_key;
            if start.is_none() {
                return Ok(objects);
            }
        }
    }

    async fn claim_object(
        &self,
        object: &CoalescedObject,
        window: u64,
        run_id: &str,
        rank: usize,
        expires_at: i64,
    ) -> Result<bool, Error> {
        let result = self
            .update(keys::object_pk(&object.bucket, &object.key), &keys::object_sk(&object.trigger, &object.version))
            .update_expression(
                "SET #trigger = :trigger, #version = :version, #window = :window, #run = :run, \
                 #expires = :expires, #position = if_not_exists(#position, :rank)",
            )
            .condition_expression("attribute_not_exists(pk) OR #run = :run")
            .expression_attribute_names("#trigger", "trigger")
            .expression_attribute_names("#version", "version")
            .expression_attribute_names("#window", "window")
            .expression_attribute_names("#run", "run_id")
            .expression_attribute_names("#expires", "expires_at")
            .expression_attribute_names("#position", "position")
            .expression_attribute_values(":trigger", s(object.trigger.clone()))
            .expression_attribute_values(":version", s(object.version.clone()))
            .expression_attribute_values(":window", n(window as i64))
            .expression_attribute_values(":run", s(run_id))
            .expression_attribute_values(":expires", n(expires_at))
            .expression_attribute_values(":rank", n(rank as i64))
            .send()
            .await;
        conditional_write("UpdateItem", result)
    }

    async fn place_object(&self, object: &CoalescedObject, run_id: &str, position: usize) -> Result<bool, Error> {
        let result = self
            .update(keys::object_pk(&object.bucket, &object.key), &keys::object_sk(&object.trigger, &object.version))
            .update_expression("SET #position = :position")
            .condition_expression("#run = :run")
            .expression_attribute_names("#position", "position")
            .expression_attribute_names("#run", "run_id")
            .expression_attribute_values(":position", n(position as i64))
            .expression_attribute_values(":run", s(run_id))
            .send()
            .await;
        conditional_write("UpdateItem", result)
    }

    async fn record_window_run(&self, trigger: &str, window: u64, run_id: &str) -> Result<(), Error> {
        self.update(keys::coalesce_pk(trigger), &keys::window_sk(window))
            .update_expression("SET run_id = :run")
            .expression_attribute_values(":run", s(run_id))
            .send()
            .await
            .map_err(|e| Error::aws("UpdateItem", e))?;
        Ok(())
    }

    async fn object_claims(&self, bucket: &str, key: &str) -> Result<Vec<ObjectClaim>, Error> {
        let reply = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", s(keys::object_pk(bucket, key)))
            .send()
            .await
            .map_err(|e| Error::aws("Query", e))?;
        let claim = |item: &Item| -> Option<ObjectClaim> {
            Some(ObjectClaim {
                trigger: text(item, "trigger")?,
                version: text(item, "version")?,
                window: u64::try_from(number(item, "window")?).ok()?,
                run_id: text(item, "run_id")?,
                position: usize::try_from(number(item, "position")?).ok()?,
            })
        };
        Ok(reply.items().iter().filter_map(claim).collect())
    }
}
