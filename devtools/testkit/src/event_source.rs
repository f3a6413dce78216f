//! Lambda's SQS event source, played locally: polls one lane's queue and invokes a local function with what it gets.
//!
//! As an event source mapping does: a batch goes out when it holds the lane's BatchSize of
//! messages or the batching window since its first message has passed (at once, with no
//! window); the messages the function handled are deleted, ten to a call, and those it
//! reports in `batchItemFailures` stay in the queue and come back after their visibility
//! timeout. One batch is in flight at a time per source (Lambda may poll with several).
//! The local stack, the demo and the benchmark deliver through it, so a batching window
//! costs there what it costs on AWS.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::lanes::WiredLane;
use crate::local_lambda::{LocalLambda, Outcome};

/// One lane's event source, invoking one function.
pub struct EventSource {
    sqs: aws_sdk_sqs::Client,
    lane: WiredLane,
    function: Arc<LocalLambda>,
    delivered: Arc<AtomicUsize>,
    invocations: Arc<AtomicUsize>,
    /// ReceiveMessage calls that brought messages, and DeleteMessageBatch calls.
    sqs_calls: Arc<AtomicUsize>,
}

impl EventSource {
    pub fn new(sqs: aws_sdk_sqs::Client, lane: WiredLane, function: Arc<LocalLambda>) -> EventSource {
        EventSource {
            sqs,
            lane,
            function,
            delivered: Arc::default(),
            invocations: Arc::default(),
            sqs_calls: Arc::default(),
        }
    }

    /// How many times the function has been invoked so far (one batch each).
    pub fn invocations(&self) -> Arc<AtomicUsize> {
        self.invocations.clone()
    }

    /// SQS calls that moved messages so far: each ReceiveMessage that brought some and each
    /// DeleteMessageBatch. (Its empty long polls are left out: on AWS they are the idle
    /// polling every event source mapping pays whatever the traffic.)
    pub fn sqs_calls(&self) -> Arc<AtomicUsize> {
        self.sqs_calls.clone()
    }

    /// How many messages the function has handled so far (its failures left out).
    pub fn delivered(&self) -> Arc<AtomicUsize> {
        self.delivered.clone()
    }

    /// Polls and delivers until `stop`; the first error ends it (a function that failed
    /// the whole invocation, whose batch stays in the queue, or an SQS call refused three
    /// times).
    pub async fn run(&self, stop: &AtomicBool) -> Result<(), String> {
        let (batch_size, window) = (self.lane.lane.batch_size, self.lane.lane.window);
        while !stop.load(Ordering::Relaxed) {
            let mut batch: Vec<aws_sdk_sqs::types::Message> = Vec::new();
            let mut first_at: Option<Instant> = None;
            loop {
                let left = first_at.map(|at| window.saturating_sub(at.elapsed()));
                if batch.len() >= batch_size || left == Some(Duration::ZERO) {
                    break;
                }
                if stop.load(Ordering::Relaxed) && batch.is_empty() {
                    break;
                }
                // Long polling while nothing is waiting; within a window, only what is left of it.
                let wait = left.map_or(1, |left| left.as_secs().min(1)) as i32;
                let want = (batch_size - batch.len()).min(10) as i32;
                let reply = with_retries(|| async {
                    self.sqs
                        .receive_message()
                        .queue_url(&self.lane.queue_url)
                        .max_number_of_messages(want)
                        .wait_time_seconds(wait)
                        .send()
                        .await
                        .map_err(|e| batchline::Error::aws("ReceiveMessage", e).to_string())
                })
                .await?;
                if reply.messages().is_empty() && wait == 0 {
                    // The window's last second: poll briefly instead of long-polling past it.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                if !reply.messages().is_empty() {
                    self.sqs_calls.fetch_add(1, Ordering::Relaxed);
                }
                if !reply.messages().is_empty() && first_at.is_none() {
                    first_at = Some(Instant::now());
                }
                batch.extend(reply.messages().iter().cloned());
            }
            if !batch.is_empty() {
                self.deliver(&batch).await?;
            }
        }
        Ok(())
    }

    async fn deliver(&self, batch: &[aws_sdk_sqs::types::Message]) -> Result<(), String> {
        let records: Vec<Value> = batch
            .iter()
            .map(|m| {
                crate::player::sqs_record(
                    m.message_id().unwrap_or_default(),
                    m.body().unwrap_or_default(),
                    &self.lane.queue_arn,
                )
            })
            .collect();
        self.invocations.fetch_add(1, Ordering::Relaxed);
        let answer = match self.function.invoke(&json!({ "Records": records })).await? {
            Outcome::Response(answer) => answer,
            Outcome::Error(error) => return Err(format!("{} failed: {error}", self.lane.lane.queue)),
        };
        let failed: Vec<&str> = answer["batchItemFailures"]
            .as_array()
            .map(|f| f.iter().filter_map(|i| i["itemIdentifier"].as_str()).collect())
            .unwrap_or_default();
        let handled: Vec<&aws_sdk_sqs::types::Message> =
            batch.iter().filter(|m| !failed.contains(&m.message_id().unwrap_or_default())).collect();
        for chunk in handled.chunks(10) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(index, message)| {
                    aws_sdk_sqs::types::DeleteMessageBatchRequestEntry::builder()
                        .id(index.to_string())
                        .receipt_handle(message.receipt_handle().unwrap_or_default())
                        .build()
                        .map_err(|e| e.to_string())
                })
                .collect::<Result<Vec<_>, _>>()?;
            with_retries(|| async {
                self.sqs
                    .delete_message_batch()
                    .queue_url(&self.lane.queue_url)
                    .set_entries(Some(entries.clone()))
                    .send()
                    .await
                    .map_err(|e| batchline::Error::aws("DeleteMessageBatch", e).to_string())
            })
            .await?;
            self.sqs_calls.fetch_add(1, Ordering::Relaxed);
        }
        self.delivered.fetch_add(handled.len(), Ordering::Relaxed);
        Ok(())
    }
}

/// An SQS call made up to three times, a second apart, as Lambda's pollers make theirs
/// again: an emulator under a benchmark's load may fail one now and then.
async fn with_retries<T, F, Fut>(mut call: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let mut attempt = 1;
    loop {
        match call().await {
            Ok(value) => return Ok(value),
            Err(error) if attempt == 3 => return Err(error),
            Err(_) => {
                attempt += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}
