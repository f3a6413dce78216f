//! `batchline-job-events`: Batch Job State Change events to CloudWatch metrics, pipeline stage transitions and resizing.
//!
//! Input is either one EventBridge event (a direct invocation) or an SQS batch of them
//! (the production path: EventBridge rule → SQS → this function). For a batch, the answer
//! is an SQS partial batch response: only the messages that could not be handled — a
//! malformed body, an event another invocation is still counting, a failed AWS call — are
//! listed in `batchItemFailures` and redelivered; the others are done. A direct event that
//! cannot be handled is an invocation error, so Lambda's retries and dead-letter queue apply.
//!
//! Each event is counted once however often it is delivered: its EventBridge `id` is
//! claimed in the table first ([`ledger`]), the metrics of all claimed events are packed
//! into as few PutMetricData calls as the API allows ([`batchline::metrics`]), and events
//! are marked done only after their call succeeded. A failed call releases its events'
//! claims and reports their messages, so their redelivery counts them exactly once.

pub mod ledger;
pub mod publish;

use std::collections::HashMap;

use aws_config::SdkConfig;
use batchline::batch_event::{JobStateChangeEvent, JobStatus};
use batchline::config_store::ConfigCache;
use batchline::job_request::{PIPELINE_TAG, RUN_TAG, STAGE_TAG};
use batchline::metrics::{self, EventMetrics};
use batchline::runs::RunServices;
use batchline::{Config, Error};
use futures::stream::{self, StreamExt};
use lambda_runtime::LambdaEvent;
use serde_json::{json, Value};
use tracing::{info, warn};

use ledger::{Claim, Ledger};

/// How many ledger claims are in flight at once (a batch may hold thousands of messages).
const CLAIM_CONCURRENCY: usize = 16;

/// The AWS clients and the configuration cache, built once per container.
pub struct Clients {
    pub cloudwatch: aws_sdk_cloudwatch::Client,
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub batch: aws_sdk_batch::Client,
    pub eventbridge: aws_sdk_eventbridge::Client,
    pub config: ConfigCache,
}

impl Clients {
    pub fn new(sdk: &SdkConfig) -> Self {
        Clients {
            cloudwatch: aws_sdk_cloudwatch::Client::new(sdk),
            dynamodb: aws_sdk_dynamodb::Client::new(sdk),
            batch: aws_sdk_batch::Client::new(sdk),
            eventbridge: aws_sdk_eventbridge::Client::new(sdk),
            config: ConfigCache::default(),
        }
    }

    /// Run handling with these clients.
    pub fn runs<'a>(&'a self, config: &'a Config) -> RunServices<'a> {
        RunServices {
            batch: &self.batch,
            dynamodb: &self.dynamodb,
            cloudwatch: &self.cloudwatch,
            eventbridge: &self.eventbridge,
            table: &config.table_name,
            namespace: &config.metric_namespace,
            configs: &self.config,
        }
    }
}

/// One message to handle: its SQS message id (or `direct`) and what its body parsed to.
struct Message {
    id: String,
    event: Result<JobStateChangeEvent, String>,
}

/// Handles one invocation: an SQS batch (answered with `batchItemFailures`) or one event.
pub async fn handle(event: LambdaEvent<Value>, clients: &Clients, config: &Config) -> Result<Value, Error> {
    let token = event.context.request_id.clone();
    let payload = event.payload;
    let now = batchline::now_ms();
    if let Some(records) = payload.get("Records") {
        let messages = sqs_messages(records)?;
        let failed = process(messages, clients, config, &token, now).await;
        let failures: Vec<Value> = failed.iter().map(|id| json!({ "itemIdentifier": id })).collect();
        return Ok(json!({ "batchItemFailures": failures }));
    }
    if payload.get("detail-type").and_then(Value::as_str) == Some("Scheduled Event") {
        let report = clients.runs(config).sweep(now).await?;
        info!(runs = report.runs_checked, repaired = report.transitions_applied, "sweep done");
        return Ok(json!({ "sweep": report }));
    }
    if payload.get("detail-type").is_some() {
        let message =
            Message { id: "direct".into(), event: JobStateChangeEvent::from_value(payload).map_err(|e| e.to_string()) };
        if let Err(why) = &message.event {
            return Err(Error::InvalidEvent(why.clone()));
        }
        let failed = process(vec![message], clients, config, &token, now).await;
        return if failed.is_empty() {
            Ok(json!({}))
        } else {
            Err(Error::Aws {
                operation: "HandleEvent",
                code: "Retry".into(),
                message: "the event was not counted; retry it".into(),
            })
        };
    }
    Err(Error::InvalidEvent(format!(
        "job-events takes a Batch Job State Change event or an SQS batch of them, not {}",
        batchline::event_kind(&payload)
    )))
}

fn sqs_messages(records: &Value) -> Result<Vec<Message>, Error> {
    let records = records.as_array().ok_or_else(|| Error::InvalidEvent("`Records` is not a list".into()))?;
    records
        .iter()
        .map(|record| {
            let id = record
                .get("messageId")
                .and_then(Value::as_str)
                .ok_or_else(|| Error::InvalidEvent("an SQS record has no messageId".into()))?;
            let event = match record.get("body").and_then(Value::as_str) {
                Some(body) => JobStateChangeEvent::from_json(body).map_err(|e| e.to_string()),
                None => Err("the SQS record has no body".to_owned()),
            };
            Ok(Message { id: id.to_owned(), event })
        })
        .collect()
}

/// Counts the messages' events once each; returns the ids of messages to redeliver.
async fn process(messages: Vec<Message>, clients: &Clients, config: &Config, token: &str, now: i64) -> Vec<String> {
    let mut failed = Vec::new();
    // Messages by event id: a duplicate within the batch shares its first copy's fate.
    let mut by_event: HashMap<String, Vec<String>> = HashMap::new();
    let mut events: Vec<JobStateChangeEvent> = Vec::new();
    for message in messages {
        match message.event {
            Err(why) => {
                warn!(message_id = %message.id, error = %why, "unusable message");
                failed.push(message.id);
            }
            Ok(event) => {
                let copies = by_event.entry(event.id.clone()).or_default();
                if copies.is_empty() {
                    events.push(event);
                }
                copies.push(message.id);
            }
        }
    }

    failed.extend(advance_runs(&events, &by_event, clients, config, now).await);

    let ledger = Ledger { dynamodb: &clients.dynamodb, table: &config.table_name, token };
    let claims: Vec<Result<Claim, Error>> =
        stream::iter(events.iter().map(|e| ledger.claim(&e.id, now))).buffered(CLAIM_CONCURRENCY).collect().await;
    let mut claimed = Vec::new();
    for (event, claim) in events.iter().zip(claims) {
        match claim {
            Ok(Claim::Claimed) => claimed.push(event),
            Ok(Claim::AlreadyDone) => info!(event_id = %event.id, "already counted; acknowledged"),
            Ok(Claim::InFlight) => {
                info!(event_id = %event.id, "being counted by another invocation; will retry");
                failed.extend(by_event[&event.id].iter().cloned());
            }
            Err(err) => {
                warn!(event_id = %event.id, error = %err, "could not claim the event");
                failed.extend(by_event[&event.id].iter().cloned());
            }
        }
    }

    let event_metrics: Vec<EventMetrics> =
        claimed.iter().map(|event| metrics::from_event(event, &config.price_overrides, now)).collect();
    let calls = metrics::plan_calls(&event_metrics);
    let mut unpublished = vec![false; claimed.len()];
    for call in &calls {
        if let Err(err) = publish::put_metric_data(&clients.cloudwatch, &config.metric_namespace, &call.datums).await {
            warn!(error = %err, events = call.events.len(), "PutMetricData failed; the events will be retried");
            for &index in &call.events {
                unpublished[index] = true;
            }
        }
    }
    info!(events = claimed.len(), calls = calls.len(), "metrics published");

    let mut done = Vec::new();
    for (event, unpublished) in claimed.iter().zip(unpublished) {
        if unpublished {
            if let Err(err) = ledger.release(&event.id).await {
                warn!(event_id = %event.id, error = %err, "could not release the claim; the retry waits for it to go stale");
            }
            failed.extend(by_event[&event.id].iter().cloned());
        } else {
            done.push(event.id.as_str());
        }
    }
    if let Err(err) = ledger.mark_done(&done, now).await {
        // The metrics are out; what is lost is only the protection against a later
        // redelivery of these events, which takes a crash-like coincidence to matter.
        warn!(error = %err, "could not record events as counted");
    }
    failed
}

/// The run and stage a job belongs to, from its tags.
fn run_of(event: &JobStateChangeEvent) -> Option<(&str, &str)> {
    let detail = &event.detail;
    let run = detail.tag(RUN_TAG).filter(|r| !r.is_empty())?;
    detail.tag(PIPELINE_TAG).filter(|p| !p.is_empty())?;
    Some((run, detail.tag(STAGE_TAG)?))
}

fn status_rank(status: &JobStatus) -> u8 {
    match status {
        JobStatus::Submitted | JobStatus::Pending | JobStatus::Runnable => 0,
        JobStatus::Starting | JobStatus::Running => 1,
        _ => 2,
    }
}

/// Applies the events of pipeline jobs to their runs, in the order they happened; returns
/// the messages whose transition failed.
async fn advance_runs(
    events: &[JobStateChangeEvent],
    by_event: &HashMap<String, Vec<String>>,
    clients: &Clients,
    config: &Config,
    now: i64,
) -> Vec<String> {
    let mut run_events: Vec<&JobStateChangeEvent> = events.iter().filter(|e| run_of(e).is_some()).collect();
    if run_events.is_empty() {
        return vec![];
    }
    run_events.sort_by_key(|e| (e.time_millis().unwrap_or_default(), status_rank(&e.detail.status)));
    let runs = clients.runs(config);
    let mut failed = Vec::new();
    for event in run_events {
        let Some((run_id, stage)) = run_of(event) else { continue };
        if let Err(err) = runs.advance(run_id, stage, event, now).await {
            warn!(run_id, stage, event_id = %event.id, error = %err, "run transition failed; the message will be retried");
            failed.extend(by_event[&event.id].iter().cloned());
        }
    }
    failed
}
