//! `batchline-submit`: turns S3 "Object Created" events, scheduled events and HTTP API calls into Batch jobs, exactly once.
//!
//! The configuration (triggers, queues, job definitions) is the one bootstrap published to
//! the table, cached per container. Each trigger becomes a `JobRequest` with an
//! idempotency key ([`triggers`], [`api`]); [`batchline::services::submitter`] claims the key and
//! submits the job once, however often the trigger is delivered.
//!
//! S3 events arrive through an SQS queue (the template's `TriggerQueue`, at most two
//! batches at once, so an S3 burst never takes the concurrency API callers need); each
//! record's body is the EventBridge event, handled as if it came alone, and a record that
//! fails is reported in `batchItemFailures` so only it comes again (and after five
//! receives, the dead-letter queue keeps it). Events can also come directly from
//! EventBridge (the schedule does).
//!
//! An object a coalescing trigger matches (`Coalesce`) starts nothing here: it is sent on to
//! the coalesce lane (a "Batchline Coalesce Object" event), where the map worker puts it in
//! its trigger's window (see `batchline::model::coalesce`). A queued batch's objects are
//! forwarded together at its end, ten to a PutEvents call.
//!
//! Errors: on the EventBridge path a malformed event, or a submission another delivery
//! has under way, is an invocation error, so Lambda's retries and dead-letter queue keep
//! it; an object or schedule no rule matches is acknowledged and logged. On the API path
//! caller mistakes are 4xx answers and only infrastructure failures are invocation errors.

pub mod api;
pub mod plan;
pub mod triggers;

use aws_config::SdkConfig;
use aws_lambda_events::apigw::ApiGatewayV2httpRequest;
use aws_lambda_events::eventbridge::EventBridgeEvent;
use aws_lambda_events::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use batchline::model::coalesce::CoalescedObject;
use batchline::model::run::RunInput;
use batchline::services::ports::{CoalesceLane, TriggerMetrics};
use batchline::store::Holder;
use batchline::wiring::{invocation_holder, AwsPorts};
use batchline::{Error, Settings};
use lambda_runtime::LambdaEvent;
use serde_json::{json, Value};
use tracing::{error, info, warn};

use api::ApiError;
use plan::Planned;
use triggers::ObjectCreatedDetail;

/// The AWS adapters and clients, built once per container.
pub struct Clients {
    pub ports: AwsPorts,
    /// For the console links of answers.
    pub region: String,
}

impl Clients {
    pub fn new(sdk: &SdkConfig, settings: &Settings) -> Self {
        Clients {
            ports: AwsPorts::new(sdk, settings),
            region: sdk.region().map(|r| r.to_string()).unwrap_or_else(|| "us-east-1".into()),
        }
    }
}

/// What an invocation brings, classified by the fields each source always sets.
enum Incoming {
    Http(Box<ApiGatewayV2httpRequest>),
    ObjectCreated(EventBridgeEvent<ObjectCreatedDetail>),
    Scheduled(EventBridgeEvent<Value>),
}

fn classify(payload: Value) -> Result<Result<Incoming, ApiError>, Error> {
    if payload.get("requestContext").is_some() {
        return Ok(serde_json::from_value(payload)
            .map(|r| Incoming::Http(Box::new(r)))
            .map_err(|e| ApiError::bad_request(format!("not an HTTP API request: {e}"))));
    }
    let text = |name: &str| payload.get(name).and_then(Value::as_str).unwrap_or_default().to_owned();
    match (text("detail-type").as_str(), text("source").as_str()) {
        ("Object Created", "aws.s3") => Ok(Ok(Incoming::ObjectCreated(batchline::typed_payload(
            payload,
            "an S3 Object Created event it cannot read",
        )?))),
        ("Scheduled Event", "aws.events") => {
            Ok(Ok(Incoming::Scheduled(batchline::typed_payload(payload, "a Scheduled Event it cannot read")?)))
        }
        _ => Err(Error::InvalidEvent(format!(
            "submit takes S3 Object Created and Scheduled Event events from EventBridge and HTTP API requests, not {}",
            batchline::event_kind(&payload)
        ))),
    }
}

/// Handles one invocation: an HTTP API request, an S3 Object Created or a Scheduled Event.
pub async fn handle(event: LambdaEvent<Value>, clients: &Clients) -> Result<Value, Error> {
    let holder = invocation_holder(&event.context);
    if event.payload.get("Records").is_some() {
        return handle_queued(event.payload, clients, &holder).await;
    }
    let handled = handle_one(event.payload, clients, &holder).await?;
    if !handled.coalesced.is_empty() {
        clients.ports.announcer.forward(&handled.coalesced).await?;
    }
    handled.done(clients).await;
    Ok(handled.answer)
}

/// What handling one event came to: its answer, the objects it leaves to the coalesce lane
/// (forwarded by the caller, a batch's together), and the rules that refused its object
/// (counted once the event is done with: a retried one would count them again).
#[derive(Default)]
struct Handled {
    answer: Value,
    coalesced: Vec<CoalescedObject>,
    refused: Vec<String>,
}

impl Handled {
    fn answer(answer: Value) -> Handled {
        Handled { answer, ..Handled::default() }
    }

    async fn done(&self, clients: &Clients) {
        if !self.refused.is_empty() {
            clients.ports.announcer.triggers_refused(&self.refused).await;
        }
    }
}

/// An SQS batch of EventBridge events: each record handled alone; the failed ones reported.
/// The batch's objects for the coalesce lane go together, ten to a PutEvents call, so a
/// burst costs a tenth of a call per object; a call that fails fails only the records whose
/// objects it carried (forwarding again is harmless: a window keeps an object once).
async fn handle_queued(payload: Value, clients: &Clients, holder: &Holder) -> Result<Value, Error> {
    let batch: SqsEvent = batchline::typed_payload(payload, "an SQS batch it cannot read")?;
    let mut failed: Vec<String> = Vec::new();
    let mut handled_ok: Vec<(String, Handled)> = Vec::new();
    for record in batch.records {
        let id = record.message_id.unwrap_or_default();
        let event =
            record.body.as_deref().ok_or_else(|| Error::InvalidEvent("the SQS record has no body".into())).and_then(
                |body| {
                    serde_json::from_str(body).map_err(|e| Error::InvalidEvent(format!("the body is not JSON: {e}")))
                },
            );
        let outcome = match event {
            Ok(event) => handle_one(event, clients, holder).await,
            Err(err) => Err(err),
        };
        match outcome {
            Ok(handled) => handled_ok.push((id, handled)),
            Err(err) => {
                warn!(message_id = %id, error = %err, "queued trigger failed; it will come again");
                failed.push(id);
            }
        }
    }
    let owned: Vec<(&str, &CoalescedObject)> =
        handled_ok.iter().flat_map(|(id, h)| h.coalesced.iter().map(move |o| (id.as_str(), o))).collect();
    let mut not_forwarded: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    for ten in owned.chunks(10) {
        let objects: Vec<CoalescedObject> = ten.iter().map(|(_, o)| (*o).clone()).collect();
        if let Err(err) = clients.ports.announcer.forward(&objects).await {
            warn!(error = %err, objects = objects.len(), "objects not forwarded to the coalesce lane; they will come again");
            not_forwarded.extend(ten.iter().map(|(id, _)| (*id).to_owned()));
        }
    }
    for (id, handled) in &handled_ok {
        if not_forwarded.contains(id) {
            failed.push(id.clone());
        } else {
            handled.done(clients).await;
        }
    }
    let mut response = SqsBatchResponse::default();
    for id in failed {
        let mut failure = BatchItemFailure::default();
        failure.item_identifier = id;
        response.batch_item_failures.push(failure);
    }
    serde_json::to_value(response).map_err(|e| Error::InvalidEvent(format!("the answer cannot be written: {e}")))
}

async fn handle_one(payload: Value, clients: &Clients, holder: &Holder) -> Result<Handled, Error> {
    let answer = match classify(payload)? {
        Err(refused) => api::error_response(&refused),
        Ok(Incoming::Http(request)) => api::serve(&request, clients, holder).await?,
        Ok(Incoming::ObjectCreated(event)) => {
            let object = triggers::object_created(&event.detail).map_err(Error::InvalidEvent)?;
            let stack = clients.ports.configs.get().await?;
            let event_id = event.id.as_deref().unwrap_or_default();
            let outcomes = triggers::plan_object(&stack, &object, event_id);
            if outcomes.is_empty() {
                info!(bucket = %object.bucket, key = %object.key, "no S3 trigger matches the object; nothing to do");
            }
            let (mut planned, mut refused) = (Vec::new(), Vec::new());
            for outcome in outcomes {
                match outcome.planned {
                    Ok(plan) => planned.push(plan),
                    Err(why) => {
                        error!(rule = %outcome.rule, bucket = %object.bucket, key = %object.key, why, "the S3 trigger refused the object");
                        refused.push(outcome.rule);
                    }
                }
            }
            let mut handled = submit_all(planned, clients, holder).await?;
            handled.refused = refused;
            return Ok(handled);
        }
        Ok(Incoming::Scheduled(event)) => {
            let rule = triggers::schedule_rule_name(event.resources.as_deref().unwrap_or_default())
                .map_err(Error::InvalidEvent)?;
            let stack = clients.ports.configs.get().await?;
            let time = event
                .time
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
                .ok_or_else(|| Error::InvalidEvent("the Scheduled Event has no time".into()))?;
            let planned = triggers::plan_schedule(&stack, &rule, &time).map_err(Error::InvalidEvent)?;
            if planned.is_none() {
                info!(rule, "no schedule trigger is configured for the rule; nothing to do");
            }
            return submit_all(planned.into_iter().collect(), clients, holder).await;
        }
    };
    serde_json::to_value(answer)
        .map(Handled::answer)
        .map_err(|e| Error::InvalidEvent(format!("the answer cannot be written: {e}")))
}

/// Submits the planned jobs and runs; objects for the coalesce lane are left to the caller.
async fn submit_all(planned: Vec<Planned>, clients: &Clients, holder: &Holder) -> Result<Handled, Error> {
    let mut started = Vec::new();
    let mut coalesced = Vec::new();
    for plan in planned {
        match plan {
            Planned::Job(request) => {
                let submitted = clients.ports.submitter(holder).submit(&request).await.map_err(Error::from)?;
                started.push(json!({"jobId": submitted.job_id, "jobName": submitted.job_name, "new": submitted.new}));
            }
            Planned::Run { pipeline, source } => {
                let input = RunInput { parameters: source.parameters, environment: source.environment };
                let (run, new) = clients
                    .ports
                    .driver(holder)
                    .start(&pipeline, source.trigger, &source.idempotency_key, input, batchline::now_ms())
                    .await?;
                started.push(json!({"runId": run.run_id, "pipeline": pipeline, "new": new}));
            }
            Planned::Coalesce(object) => {
                started.push(json!({"coalesce": object.trigger}));
                coalesced.push(object);
            }
        }
    }
    Ok(Handled { answer: json!({ "started": started }), coalesced, refused: Vec::new() })
}
