//! Runs on the table: a run's record with its index and open-run lines in one transaction, conditional on its version; listings and the sweep's cursor.

use async_trait::async_trait;
use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{AttributeValue, ConditionCheck, Delete, Put, TransactWriteItem};

use crate::error::conditional_write;
use crate::model::run::Run;
use crate::store::keys::{self, INDEX_SK_PREFIX, OPEN_PK, RUN_SK, SWEEP_SK};
use crate::store::{relists, OpenRun, Page, RunStore, RunSummary, SweepCursor, VersionedRun};
use crate::Error;

use super::items::{index_item, open_item, open_run_from_item, run_from_item, run_item, summary_from_item};
use super::{n, s, text, unreadable, DynamoStore, Item};

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
