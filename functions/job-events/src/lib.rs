//! `batchline-job-events`: Batch Job State Change events to CloudWatch metrics, pipeline stage transitions and resizing.
//!
//! Input is either one EventBridge event (a direct invocation) or an SQS batch of them
//! (the production path: EventBridge rule → SQS → this function). A batch is read in one
//! pass, each record's body straight into the typed event ([`payload`]): 1,000 events are
//! never held as a JSON tree. For a batch, the answer
//! is an SQS partial batch response: only the messages that could not be handled — a
//! malformed body, an event another invocation is still counting, a failed AWS call — are
//! listed in `batchItemFailures` and redelivered; the others are done. A direct event that
//! cannot be handled is an invocation error, so Lambda's retries and dead-letter queue apply.
//!
//! Two lanes feed it ([`payload::Lane`]): from the metrics lane it only counts, from the
//! runs lane it only advances runs; a bare event gets both.
//!
//! Each event is counted once however often it is delivered: its EventBridge `id` is
//! claimed in the table first ([`ledger`]), the metrics of all claimed events are packed
//! into as few PutMetricData calls as the API allows ([`batchline::model::metrics`]), and events
//! are marked done only after their call succeeded. A failed call releases its events'
//! claims and reports their messages, so their redelivery counts them exactly once.

pub mod children;
pub mod ledger;
pub mod payload;
pub mod publish;

use std::collections::HashMap;

use aws_config::SdkConfig;
use aws_lambda_events::eventbridge::EventBridgeEvent;
use aws_lambda_events::sqs::{BatchItemFailure, SqsBatchResponse};
use batchline::model::batch_event::{JobStateChangeEvent, JobStatus};
use batchline::model::cost::Pricing;
use batchline::model::job_request::{PIPELINE_TAG, RUN_TAG, STAGE_TAG};
use batchline::model::metrics::{self, EventMetrics};
use batchline::model::run::is_out_of_memory;
use batchline::services::clock::ANSWER_MARGIN_MS;
use batchline::services::resize::resize_single_job;
use batchline::store::{Holder, EVENT_CLAIMS_AT_ONCE};
use batchline::telemetry::{run_span, stage_span};
use batchline::wiring::{invocation_holder, AwsPorts};
use batchline::{Error, Settings};
use futures::stream::{self, StreamExt};
use lambda_runtime::LambdaEvent;
use serde_json::{json, Value};
use tracing::{info, warn, Instrument};

use ledger::{Claim, Ledger};
pub use payload::Payload;
use payload::{LaneEvent, QueuedEvent};

/// How many ledger claim calls (each of up to a hundred events) are in flight at once.
const CLAIM_CONCURRENCY: usize = 4;
/// No run event is started with less than this left before the deadline: advancing a run
/// may submit stages, and a submission with throttling backoff takes seconds. What is
/// left is reported as batch item failures and redelivered.
pub const RUN_WORK_MARGIN_MS: i64 = 30_000;
/// The stuck-job watch gets at most 1/this of a sweep invocation's time; the sweep keeps the rest.
pub const STUCK_WATCH_SHARE: i64 = 4;

/// The AWS adapters and clients, built once per container.
pub struct Clients {
    pub ports: AwsPorts,
    /// For the job metrics (run metrics go through the announcer port).
    pub cloudwatch: aws_sdk_cloudwatch::Client,
    /// Array parents' tags, for children whose events come without them.
    pub parent_tags: children::ParentTags,
}

impl Clients {
    pub fn new(sdk: &SdkConfig, settings: &Settings) -> Self {
        Clients {
            ports: AwsPorts::new(sdk, settings),
            cloudwatch: aws_sdk_cloudwatch::Client::new(sdk),
            parent_tags: children::ParentTags::default(),
        }
    }
}

/// One message to handle: its SQS message id (or `direct`) and what its body parsed to.
struct Message {
    id: String,
    event: Result<LaneEvent, String>,
}

/// Handles one invocation: an SQS batch (answered with `batchItemFailures`), one event,
/// or the scheduled repair sweep.
pub async fn handle(event: LambdaEvent<Payload>, clients: &Clients, settings: &Settings) -> Result<Value, Error> {
    let holder = invocation_holder(&event.context);
    let now = batchline::now_ms();
    let payload = match event.payload {
        Payload::Batch(records) => {
            let records = records.map_err(|why| Error::InvalidEvent(format!("an SQS batch it cannot read: {why}")))?;
            let messages = sqs_messages(records)?;
            let failed = process(messages, clients, settings, &holder, now).await;
            let mut response = SqsBatchResponse::default();
            response.batch_item_failures = failed
                .into_iter()
                .map(|id| {
                    let mut failure = BatchItemFailure::default();
                    failure.item_identifier = id;
                    failure
                })
                .collect();
            return serde_json::to_value(response)
                .map_err(|e| Error::InvalidEvent(format!("the answer cannot be written: {e}")));
        }
        Payload::Other(payload) => payload,
    };
    if payload.get("detail-type").and_then(Value::as_str) == Some("Scheduled Event") {
        let _schedule: EventBridgeEvent<Value> = batchline::typed_payload(payload, "a Scheduled Event it cannot read")?;
        // Queues first, within a quarter of the invocation's time: the sweep of the runs
        // (which repairs what events lost) keeps the rest.
        let now = batchline::now_ms();
        let watch_until = now + (holder.deadline_ms - now).max(0) / STUCK_WATCH_SHARE;
        let queues = match clients.ports.configs.get().await {
            Ok(stack) => clients.ports.stuck_watch().watch(&stack, watch_until).await,
            Err(err) => {
                warn!(error = %err, "no configuration to watch queues by");
                vec![]
            }
        };
        let report = clients.ports.driver(&holder).sweep().await?;
        info!(
            runs = report.runs_checked,
            repaired = report.transitions_applied,
            failed = report.runs_failed,
            adopted = report.runs_adopted,
            reached_end = report.reached_end,
            "sweep done"
        );
        return Ok(json!({ "sweep": report, "queues": queues }));
    }
    if payload.get("detail-type").is_some() {
        let event = JobStateChangeEvent::from_value(payload).map_err(|e| Error::InvalidEvent(e.to_string()))?;
        let failed = process(
            vec![Message { id: "direct".into(), event: Ok(LaneEvent { lane: None, event }) }],
            clients,
            settings,
            &holder,
            now,
        )
        .await;
        return if failed.is_empty() { Ok(json!({})) } else { Err(Error::InFlight("counting the event".into())) };
    }
    Err(Error::InvalidEvent(format!(
        "job-events takes a Batch Job State Change event or an SQS batch of them, not {}",
        batchline::event_kind(&payload)
    )))
}

fn sqs_messages(records: Vec<QueuedEvent>) -> Result<Vec<Message>, Error> {
    records
        .into_iter()
        .map(|record| {
            let id = record.message_id.ok_or_else(|| Error::InvalidEvent("an SQS record has no messageId".into()))?;
            Ok(Message { id, event: record.event })
        })
        .collect()
}

/// Messages by event id: a duplicate within the batch shares its first copy's fate.
type Copies = HashMap<String, Vec<String>>;

/// Advances runs by the messages' events and counts their metrics once each; returns the
/// ids of messages to redeliver.
async fn process(
    messages: Vec<Message>,
    clients: &Clients,
    settings: &Settings,
    holder: &Holder,
    now: i64,
) -> Vec<String> {
    let (events, by_event, mut failed) = distinct_events(messages);
    let (for_runs, for_metrics): (Vec<_>, Vec<_>) = (
        events.iter().filter(|e| e.advances_runs()).map(|e| &e.event).collect(),
        events.iter().filter(|e| e.counts_metrics()).map(|e| &e.event).collect(),
    );
    failed.extend(advance_runs(&for_runs, &by_event, clients, holder, now).await);
    failed.extend(count_metrics(for_metrics, &by_event, clients, settings, holder, now).await);
    failed
}

/// The distinct events of the messages, each's copies, and the unusable messages.
fn distinct_events(messages: Vec<Message>) -> (Vec<LaneEvent>, Copies, Vec<String>) {
    let (mut events, mut by_event, mut unusable) = (Vec::new(), Copies::new(), Vec::new());
    for message in messages {
        match message.event {
            Err(why) => {
                warn!(message_id = %message.id, error = %why, "unusable message");
                unusable.push(message.id);
            }
            Ok(event) => {
                let copies: &mut Vec<String> = by_event.entry(event.event.id.clone()).or_default();
                if copies.is_empty() {
                    events.push(event);
                }
                copies.push(message.id);
            }
        }
    }
    (events, by_event, unusable)
}

/// Publishes the events' metrics, each event once (the ledger's claim); returns the ids
/// of messages to redeliver: events another invocation is counting, or whose metrics or
/// claim failed.
async fn count_metrics(
    events: Vec<&JobStateChangeEvent>,
    by_event: &Copies,
    clients: &Clients,
    settings: &Settings,
    holder: &Holder,
    now: i64,
) -> Vec<String> {
    // Untagged array children get their parent's tags before anything is claimed: if Batch
    // cannot be asked, the events come again rather than being counted without them.
    let (tagged, mut failed) = match clients.parent_tags.tag_children(&events, &clients.ports.batch).await {
        Ok(tagged) => (tagged, Vec::new()),
        Err(err) => {
            // Only the children that needed their parent's tags wait for another try.
            warn!(error = %err, "array parents' tags could not be read; those children's events will be retried");
            let (waiting, rest): (Vec<&JobStateChangeEvent>, Vec<&JobStateChangeEvent>) =
                events.iter().copied().partition(|e| children::needs_parent_tags(e));
            let failed = waiting.iter().flat_map(|e| by_event[&e.id].iter().cloned()).collect();
            (rest.into_iter().map(std::borrow::Cow::Borrowed).collect(), failed)
        }
    };
    let ledger = Ledger { store: clients.ports.store.as_ref(), clock: &clients.ports.clock, holder };
    let (claimed, claim_failed) = claim_events(&ledger, tagged.iter().map(AsRef::as_ref).collect(), by_event).await;
    failed.extend(claim_failed);
    // Costs need the stack's clusters (which capacity each task ran on): read once per
    // container, and only when an event has ended.
    let pricing = if claimed.iter().any(|event| event.detail.status.is_terminal()) {
        clients.ports.configs.pricing(&settings.price_overrides).await
    } else {
        Pricing::on_demand(&settings.price_overrides)
    };
    let event_metrics: Vec<EventMetrics> =
        claimed.iter().map(|event| metrics::from_event(event, &pricing, now)).collect();
    let calls = metrics::plan_calls(&event_metrics);
    let mut unpublished = vec![false; claimed.len()];
    for call in &calls {
        if let Err(err) = publish::put_metric_data(&clients.cloudwatch, &settings.metric_namespace, &call.datums).await
        {
            warn!(error = %err, events = call.events.len(), "PutMetricData failed; the events will be retried");
            for &index in &call.events {
                unpublished[index] = true;
            }
        }
    }
    info!(events = claimed.len(), calls = calls.len(), "metrics published");
    claimed.iter().filter(|event| event.detail.status == JobStatus::Failed).for_each(|event| log_failed_job(event));

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
    if let Err(err) = ledger.mark_done(&done, holder.deadline_ms - ANSWER_MARGIN_MS).await {
        // The metrics are out; what is lost is only the protection against a later
        // redelivery of these events, which takes a crash-like coincidence to matter.
        warn!(error = %err, "could not record events as counted");
    }
    failed
}

/// Claims each event in the ledger: the claimed ones, and the messages to redeliver (of
/// events another invocation is counting, or whose claim failed).
async fn claim_events<'e>(
    ledger: &Ledger<'_>,
    events: Vec<&'e JobStateChangeEvent>,
    by_event: &Copies,
) -> (Vec<&'e JobStateChangeEvent>, Vec<String>) {
    let chunks: Vec<&[&JobStateChangeEvent]> = events.chunks(EVENT_CLAIMS_AT_ONCE).collect();
    let claims: Vec<Result<Vec<Claim>, Error>> = stream::iter(chunks.iter().map(|chunk| {
        let ids: Vec<&str> = chunk.iter().map(|e| e.id.as_str()).collect();
        async move { ledger.claim_all(&ids).await }
    }))
    .buffered(CLAIM_CONCURRENCY)
    .collect()
    .await;
    let (mut claimed, mut failed) = (Vec::new(), Vec::new());
    for (chunk, claims) in chunks.into_iter().zip(claims) {
        let claims = match claims {
            Ok(claims) => claims,
            Err(err) => {
                warn!(events = chunk.len(), error = %err, "could not claim the events; they will be retried");
                failed.extend(chunk.iter().flat_map(|e| by_event[&e.id].iter().cloned()));
                continue;
            }
        };
        for (&event, claim) in chunk.iter().zip(claims) {
            match claim {
                Claim::Claimed => claimed.push(event),
                Claim::AlreadyDone => {
                    info!(event_id = %event.id, job_id = %event.detail.job_id, "already counted; acknowledged")
                }
                Claim::InFlight => {
                    let (event_id, job_id) = (&event.id, &event.detail.job_id);
                    info!(%event_id, %job_id, "being counted by another invocation; will retry");
                    failed.extend(by_event[&event.id].iter().cloned());
                }
            }
        }
    }
    (claimed, failed)
}

/// Says a job failed, with its reason, exit code and log stream (the saved query "failed
/// jobs" reads these lines), once per event: the metrics lane's ledger counts each once. An
/// array's children are left out: their parent's line and the map's results name them.
fn log_failed_job(event: &JobStateChangeEvent) {
    let detail = &event.detail;
    if detail.is_array_child() {
        return;
    }
    let container = detail.last_attempt_container();
    let exit_code = container.and_then(|c| c.exit_code);
    let reason = container.and_then(|c| c.reason.as_deref()).or(detail.status_reason.as_deref());
    let log_stream = container.and_then(|c| c.log_stream_name.as_deref());
    let job_name = detail.job_name.as_deref();
    let (run_id, stage) = run_of(event).unzip();
    let pipeline = run_id.and(detail.tag(PIPELINE_TAG));
    warn!(job_id = %detail.job_id, job_name, run_id, pipeline, stage, exit_code, reason, log_stream, "job failed");
}

/// The run and stage of a stage job's event, from its tags. An array's child is none (whichever way its
/// event came: the runs lane's rule leaves children out, a bare event does not): a run
/// follows an array by its parent's events.
fn run_of(event: &JobStateChangeEvent) -> Option<(&str, &str)> {
    let detail = &event.detail;
    if detail.is_array_child() {
        return None;
    }
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

/// Resubmits, one size up, the single jobs (not pipeline stages) that ran out of memory
/// when their job definition allows (see `batchline::services::resize`); returns the
/// messages whose resubmission failed.
async fn resize_single_jobs(
    events: &[&JobStateChangeEvent],
    by_event: &HashMap<String, Vec<String>>,
    clients: &Clients,
    holder: &Holder,
) -> Vec<String> {
    let mut failed = Vec::new();
    // Only jobs Batchline submitted (tagged with their run) are its to resize.
    let ours = |e: &&&JobStateChangeEvent| e.detail.tag(RUN_TAG).is_some() && run_of(e).is_none();
    let killed = events.iter().filter(ours).filter(|e| is_out_of_memory(e));
    for event in killed {
        let resized = match clients.ports.configs.get().await {
            Ok(config) => resize_single_job(&clients.ports.submitter(holder), &config, event).await,
            Err(err) => Err(err),
        };
        if let Err(err) = resized {
            warn!(job_id = %event.detail.job_id, event_id = %event.id, error = %err, "resizing the job failed; the message will be retried");
            failed.extend(by_event[&event.id].iter().cloned());
        }
    }
    failed
}

/// Applies the events of pipeline jobs to their runs, in the order they happened; returns
/// the messages whose transition failed.
async fn advance_runs(
    events: &[&JobStateChangeEvent],
    by_event: &HashMap<String, Vec<String>>,
    clients: &Clients,
    holder: &Holder,
    now: i64,
) -> Vec<String> {
    let mut failed = resize_single_jobs(events, by_event, clients, holder).await;
    let mut run_events: Vec<&JobStateChangeEvent> = events.iter().copied().filter(|e| run_of(e).is_some()).collect();
    if run_events.is_empty() {
        return failed;
    }
    run_events.sort_by_key(|e| (e.time_millis().unwrap_or_default(), status_rank(&e.detail.status)));
    let runs = clients.ports.driver(holder);
    let stop_at = holder.deadline_ms - RUN_WORK_MARGIN_MS;
    for event in run_events {
        let Some((run_id, stage)) = run_of(event) else { continue };
        // Every line about the event carries its run, stage and job (the driver adds the attempt).
        let pipeline = event.detail.tag(PIPELINE_TAG).unwrap_or_default();
        let applied = async {
            if batchline::now_ms() >= stop_at {
                // Too little time left to submit stages safely: leave it to the redelivery.
                info!(event_id = %event.id, "out of time for run work; the message will be redelivered");
                return false;
            }
            match runs.advance(run_id, stage, event, now).await {
                Ok(_) => true,
                Err(err) => {
                    warn!(event_id = %event.id, error = %err, "run transition failed; the message will be retried");
                    false
                }
            }
        }
        .instrument(stage_span(&run_span(run_id, pipeline), stage, None, Some(&event.detail.job_id)))
        .await;
        if !applied {
            failed.extend(by_event[&event.id].iter().cloned());
        }
    }
    failed
}
