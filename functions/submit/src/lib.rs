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
//! Errors: on the EventBridge path a malformed event, or a submission another delivery
//! has under way, is an invocation error, so Lambda's retries and dead-letter queue keep
//! it; an object or schedule no rule matches is acknowledged and logged. On the API path
//! caller mistakes are 4xx answers and only infrastructure failures are invocation errors.

pub mod api;
pub mod overview;
pub mod plan;
pub mod triggers;

use aws_config::SdkConfig;
use aws_lambda_events::apigw::ApiGatewayV2httpRequest;
use aws_lambda_events::eventbridge::EventBridgeEvent;
use aws_lambda_events::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use batchline::model::cost::Pricing;
use batchline::model::job_request::{PIPELINE_TAG, RUN_TAG, STAGE_TAG};
use batchline::model::run::RedriveRefused;
use batchline::model::run::RunInput;
use batchline::services::batch::BatchPort;
use batchline::services::ports::{invocation_holder, AwsPorts};
use batchline::services::resize::{chain_position, resize_key, ORIGINAL_TAG, RESIZE_TAG};
use batchline::services::runs::{check_run, run_id, CancelOutcome, RedriveOutcome};
use batchline::services::submitter::SubmitError;
use batchline::store::{ClaimStore, Holder, KeyGeneration, RunStore};
use batchline::{Config, Error};
use lambda_runtime::LambdaEvent;
use serde_json::{json, Value};
use tracing::{info, warn};

use api::{ApiError, ApiKey, Route};
use plan::Planned;
use triggers::ObjectCreatedDetail;

/// The AWS adapters and clients, built once per container.
pub struct Clients {
    pub ports: AwsPorts,
    /// For `GET /jobs/{id}`, which shows the job as Batch describes it.
    pub batch: aws_sdk_batch::Client,
    pub region: String,
}

impl Clients {
    pub fn new(sdk: &SdkConfig, config: &Config) -> Self {
        Clients {
            ports: AwsPorts::new(sdk, config),
            batch: aws_sdk_batch::Client::new(sdk),
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
    handle_one(event.payload, clients, &holder).await
}

/// An SQS batch of EventBridge events: each record handled alone; the failed ones reported.
async fn handle_queued(payload: Value, clients: &Clients, holder: &Holder) -> Result<Value, Error> {
    let batch: SqsEvent = batchline::typed_payload(payload, "an SQS batch it cannot read")?;
    let mut response = SqsBatchResponse::default();
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
        if let Err(err) = outcome {
            warn!(message_id = %id, error = %err, "queued trigger failed; it will come again");
            let mut failure = BatchItemFailure::default();
            failure.item_identifier = id;
            response.batch_item_failures.push(failure);
        }
    }
    serde_json::to_value(response).map_err(|e| Error::InvalidEvent(format!("the answer cannot be written: {e}")))
}

async fn handle_one(payload: Value, clients: &Clients, holder: &Holder) -> Result<Value, Error> {
    let answer = match classify(payload)? {
        Err(refused) => api::error_response(&refused),
        Ok(Incoming::Http(request)) => handle_http(&request, clients, holder).await?,
        Ok(Incoming::ObjectCreated(event)) => {
            let object = triggers::object_created(&event.detail).map_err(Error::InvalidEvent)?;
            let stack = clients.ports.configs.get().await?;
            let event_id = event.id.as_deref().unwrap_or_default();
            let planned = triggers::plan_object(&stack, &object, event_id).map_err(Error::InvalidEvent)?;
            if planned.is_empty() {
                info!(bucket = %object.bucket, key = %object.key, "no S3 trigger matches the object; nothing to do");
            }
            return submit_all(planned, clients, holder).await;
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
    serde_json::to_value(answer).map_err(|e| Error::InvalidEvent(format!("the answer cannot be written: {e}")))
}

async fn submit_all(planned: Vec<Planned>, clients: &Clients, holder: &Holder) -> Result<Value, Error> {
    let mut started = Vec::new();
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
        }
    }
    Ok(json!({ "started": started }))
}

async fn handle_http(
    request: &ApiGatewayV2httpRequest,
    clients: &Clients,
    holder: &Holder,
) -> Result<aws_lambda_events::apigw::ApiGatewayV2httpResponse, Error> {
    match serve(request, clients, holder).await {
        Ok(answer) => Ok(answer),
        Err(Served::Caller(err)) => {
            info!(status = err.status, code = err.code, message = %err.message, "request refused");
            Ok(api::error_response(&err))
        }
        Err(Served::Infrastructure(err)) => {
            warn!(error = %err, "request failed");
            Err(err)
        }
    }
}

/// Why a request was not served: the caller's mistake, or ours.
enum Served {
    Caller(ApiError),
    Infrastructure(Error),
}

impl From<ApiError> for Served {
    fn from(err: ApiError) -> Self {
        Served::Caller(err)
    }
}

impl From<Error> for Served {
    fn from(err: Error) -> Self {
        match err {
            // The table has no configuration yet: the stack is still being deployed.
            Error::NotDeployed => Served::Caller(ApiError::new(503, "NotReady", Error::NotDeployed.to_string())),
            other => Served::Infrastructure(other),
        }
    }
}

async fn serve(
    request: &ApiGatewayV2httpRequest,
    clients: &Clients,
    holder: &Holder,
) -> Result<aws_lambda_events::apigw::ApiGatewayV2httpResponse, Served> {
    let request = api::parse_http(request)?;
    let route = api::route(&request.method, &request.path)?;
    let stack = clients.ports.configs.get().await?;
    match route {
        Route::SubmitJob => {
            let key = match api::idempotency_key(&request, "jobs", &holder.token)? {
                ApiKey::Request(key) => key,
                ApiKey::Caller(base) => {
                    let store = clients.ports.store.as_ref();
                    live_key(store, &base, |key| async move { Ok(store.claim(&key).await?.map(|c| c.claimed_at)) })
                        .await?
                }
            };
            let plan = api::plan_submit_job(&stack, &request, key)?;
            let job = plan.job;
            let submitted = match clients.ports.submitter(holder).submit(&job).await {
                Ok(submitted) => submitted,
                Err(SubmitError::InFlight(_)) => {
                    return Err(ApiError::new(
                        409,
                        "InProgress",
                        "the same request is being submitted right now; retry shortly",
                    )
                    .into())
                }
                // (Withdrawn: only a run's stage keys are withdrawn, never an API key.)
                Err(SubmitError::Conflict(_) | SubmitError::Withdrawn(_)) => {
                    return Err(ApiError::new(
                        409,
                        "IdempotencyConflict",
                        "this Idempotency-Key was used for a different request",
                    )
                    .into())
                }
                Err(SubmitError::Failed(err)) if err.aws_code() == Some("ClientException") => {
                    return Err(ApiError::bad_request(format!("AWS Batch refused the job: {err}")).into())
                }
                Err(SubmitError::Failed(err)) => return Err(err.into()),
            };
            let status =
                if submitted.new { "SUBMITTED".to_owned() } else { current_status(clients, &submitted.job_id).await? };
            let mut answer = json!({"jobId": submitted.job_id, "jobName": submitted.job_name, "jobQueue": job.queue_arn,
                                    "status": status, "duplicate": !submitted.new, "size": plan.size});
            if plan.size_adjusted {
                // One half of the size was given: the answer says what it became.
                answer["sizeAdjusted"] = json!(true);
            }
            Ok(api::response(202, &answer))
        }
        Route::GetJob(id) => {
            let job = our_job(clients, &stack, &id).await?;
            let mut view = api::job_view(&job, &clients.region);
            // What it cost, each Batch attempt priced by the capacity it ran on.
            let pricing = Pricing::of(&stack, &clients.ports.prices);
            let detail = batchline::services::batch::event_from_job(&job)?.detail;
            view["cost"] = json!(pricing.price_job(&detail));
            if detail.is_array_parent() {
                view["costNote"] =
                    json!("an array job's cost is its children's: each child (GET /jobs/{id}:{index}) shows its own");
            }
            // A single job resized after running out of memory names the job that followed
            // it (and a resized one the job it began as).
            let tag = |name: &str| job.tags().and_then(|t| t.get(name)).cloned();
            if let Some(original) = tag(ORIGINAL_TAG) {
                view["resizedFrom"] = json!(original);
            }
            let (original, resizes) = chain_position(&id, tag(ORIGINAL_TAG).as_deref(), tag(RESIZE_TAG).as_deref());
            let key = resize_key(&original, resizes + 1);
            if let Some(next) = clients.ports.store.claim(&key).await?.and_then(|claim| claim.job_id) {
                view["resizedTo"] = json!(next);
            }
            Ok(api::response(200, &view))
        }
        Route::CancelJob(id) => {
            let job = our_job(clients, &stack, &id).await?;
            let tag = |name: &str| job.tags().and_then(|t| t.get(name)).filter(|v| !v.is_empty()).cloned();
            if let (Some(run), Some(_)) = (tag(RUN_TAG), tag(PIPELINE_TAG)) {
                let stage = tag(STAGE_TAG).unwrap_or_default();
                let message =
                    format!("job {id} is stage {stage} of run {run}: cancel the run instead (DELETE /runs/{run})");
                return Err(ApiError::new(409, "PipelineJob", message).into());
            }
            // TerminateJob stops a job in any state before it ends and changes nothing after
            // (a retried DELETE); the answer says the status it had.
            let status = job.status().map(|s| s.as_str().to_owned()).unwrap_or_default();
            clients.ports.batch.terminate_job(&id, "cancelled through the Batchline API").await?;
            Ok(api::response(202, &json!({"jobId": id, "status": status, "terminated": true})))
        }
        Route::StartRun(name) => {
            if !stack.pipelines.contains_key(&name) {
                return Err(ApiError::not_found(format!("no pipeline {name:?}")).into());
            }
            let body: api::StartRunBody = api::parse_body(&request.body)?;
            let key = match api::idempotency_key(&request, &format!("pipelines/{name}"), &holder.token)? {
                ApiKey::Request(key) => key,
                ApiKey::Caller(base) => {
                    let store = clients.ports.store.as_ref();
                    let name = name.as_str();
                    live_key(store, &base, |key| async move {
                        Ok(store.load_run(&run_id(name, &key)).await?.map(|r| r.run.created_at))
                    })
                    .await?
                }
            };
            let input = RunInput { parameters: body.parameters, environment: body.environment };
            api::check_run_overrides(&stack, &stack.pipelines[&name], &input)?;
            check_run(&stack, &stack.pipelines[&name], &run_id(&name, &key), &input).map_err(|problems| {
                ApiError::refused(
                    problems.into_iter().map(|(stage, problem)| (Some(format!("stage {stage}")), problem)).collect(),
                )
            })?;
            let (run, new) =
                clients.ports.driver(holder).start(&name, "api", &key, input.clone(), batchline::now_ms()).await?;
            if !new && run.input != input {
                // The key's first request started the run: a different body under it is
                // another request, refused as for `POST /jobs`.
                return Err(ApiError::new(
                    409,
                    "IdempotencyConflict",
                    "this Idempotency-Key was used for a different request",
                )
                .into());
            }
            Ok(api::response(
                202,
                &json!({"runId": run.run_id, "pipeline": name, "status": run.status, "duplicate": !new}),
            ))
        }
        Route::GetRun(id) => {
            let run = clients
                .ports
                .driver(holder)
                .load(&id)
                .await?
                .ok_or_else(|| ApiError::not_found(format!("no run {id}")))?
                .run;
            let pricing = Pricing::of(&stack, &clients.ports.prices);
            Ok(api::response(200, &api::run_view(&run, &stack, &pricing, &clients.region, batchline::now_ms())))
        }
        Route::ListRuns => {
            let limit = match request.query.get("limit").map(|l| l.parse::<i32>()) {
                None => 20,
                Some(Ok(limit)) if (1..=100).contains(&limit) => limit,
                Some(_) => return Err(ApiError::bad_request("limit is a number from 1 to 100").into()),
            };
            // One pipeline's runs, or every pipeline's merged: the newest `limit` in all.
            let pipelines: Vec<&String> = match request.query.get("pipeline") {
                Some(pipeline) if !stack.pipelines.contains_key(pipeline) => {
                    return Err(ApiError::not_found(format!("no pipeline {pipeline:?}")).into())
                }
                Some(pipeline) => vec![pipeline],
                None => stack.pipelines.keys().collect(),
            };
            let mut runs = Vec::new();
            for pipeline in &pipelines {
                for run in clients.ports.store.list_runs(pipeline, limit).await? {
                    runs.push((
                        run.created_at,
                        json!({"runId": run.run_id, "pipeline": pipeline, "status": run.status,
                                                       "createdAt": api::iso(Some(run.created_at))}),
                    ));
                }
            }
            runs.sort_by_key(|run| std::cmp::Reverse(run.0));
            let runs: Vec<Value> = runs.into_iter().take(limit as usize).map(|(_, run)| run).collect();
            let mut answer = json!({"runs": runs});
            if let [pipeline] = pipelines.as_slice() {
                answer["pipeline"] = json!(pipeline);
            }
            Ok(api::response(200, &answer))
        }
        Route::ListJobs => {
            let status = request.query.get("status").map(|s| overview::parse_status(s)).transpose()?;
            let from = request.query.get("next").map(|next| overview::read_cursor(next, &stack)).transpose()?;
            let from = from.unwrap_or_default();
            let jobs = overview::list_jobs(&clients.batch, &stack, status.as_ref(), from, batchline::now_ms()).await?;
            Ok(api::response(200, &jobs))
        }
        Route::Status => {
            // Runs not yet done with (the sweep's list), counted up to a thousand.
            let mut open = 0;
            let mut after: Option<String> = None;
            loop {
                let page = clients.ports.store.open_runs(after.as_deref(), 100).await?;
                open += page.items.len();
                match page.next {
                    Some(next) if open < 1000 => after = Some(next),
                    _ => break,
                }
            }
            Ok(api::response(200, &overview::status(&clients.batch, &stack, open).await?))
        }
        Route::CancelRun(id) => match clients.ports.driver(holder).cancel(&id, batchline::now_ms()).await? {
            CancelOutcome::NoSuchRun => Err(ApiError::not_found(format!("no run {id}")).into()),
            CancelOutcome::AlreadyEnded(why) => Err(ApiError::new(409, "RunEnded", why).into()),
            CancelOutcome::Cancelled { run, terminated } => Ok(api::response(
                202,
                &json!({"runId": run.run_id, "status": run.status, "terminatedJobs": terminated}),
            )),
        },
        Route::RedriveRun(id) => {
            let body: api::RedriveBody = api::parse_body(&request.body)?;
            let Some(read) = clients.ports.store.load_run(&id).await? else {
                return Err(ApiError::not_found(format!("no run {id}")).into());
            };
            let sizes = api::redrive_sizes(&read.run, &body)?;
            let key = match api::idempotency_key(&request, &format!("runs/{id}/redrive"), &holder.token)? {
                ApiKey::Request(key) | ApiKey::Caller(key) => key,
            };
            let driver = clients.ports.driver(holder);
            let fingerprint = body.fingerprint();
            match driver.redrive_request(read, &key, &sizes, Some(&fingerprint), batchline::now_ms()).await? {
                RedriveOutcome::NoSuchRun => Err(ApiError::not_found(format!("no run {id}")).into()),
                RedriveOutcome::Refused(refused @ RedriveRefused::Succeeded(_)) => {
                    Err(ApiError::new(409, "RunSucceeded", refused.to_string()).into())
                }
                RedriveOutcome::Refused(refused @ RedriveRefused::KeyReused(_)) => {
                    Err(ApiError::new(409, "IdempotencyConflict", refused.to_string()).into())
                }
                RedriveOutcome::Refused(refused) => Err(ApiError::new(409, "RunNotEnded", refused.to_string()).into()),
                RedriveOutcome::Redriven { run, redriven } => Ok(api::response(
                    202,
                    &json!({"runId": run.run_id, "status": run.status, "redrive": redriven.generation,
                            "stages": redriven.stages, "duplicate": redriven.duplicate}),
                )),
            }
        }
    }
}

/// A job in one of the stack's queues, as DescribeJobs has it; 404 for any other.
async fn our_job(
    clients: &Clients,
    stack: &batchline::model::stack::StackConfig,
    id: &str,
) -> Result<aws_sdk_batch::types::JobDetail, Served> {
    let reply = clients.batch.describe_jobs().jobs(id).send().await.map_err(|e| Error::aws("DescribeJobs", e))?;
    let ours = |queue: Option<&str>| stack.job_queues.values().any(|q| Some(q.arn.as_str()) == queue);
    let job = reply.jobs().iter().find(|j| j.job_id() == Some(id) && ours(j.job_queue()));
    Ok(job.cloned().ok_or_else(|| ApiError::not_found(format!("no job {id}")))?)
}

/// The generation of a caller's idempotency key that is live now. The key's generation
/// record says which ([`KeyGeneration`]): within its window, that one; past it, the next,
/// recorded conditionally so that two requests at once agree. A key without a record (its
/// first use, or last used before this release) is walked from its first generation: the
/// first whose first use (`first_use`, epoch ms, `None` if never used) is within the
/// window, or unused. The record outlives the key's claims and runs, so an older
/// generation whose items DynamoDB's TTL removed never looks unused again.
async fn live_key<F, Fut>(store: &dyn ClaimStore, base: &str, first_use: F) -> Result<String, Error>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<Option<i64>, Error>>,
{
    let now = batchline::now_ms();
    for _ in 0..KEY_GENERATION_WRITES {
        let current = store.key_generation(base).await?;
        let next = match current {
            Some(live) if now - live.first_use_ms < api::KEY_WINDOW_MS => {
                return Ok(ApiKey::generation(base, live.generation))
            }
            Some(live) => KeyGeneration { generation: live.generation + 1, first_use_ms: now },
            None => first_live_generation(base, &first_use, now).await?,
        };
        if store.set_key_generation(base, current.as_ref(), &next).await? {
            return Ok(ApiKey::generation(base, next.generation));
        }
    }
    Err(Error::Contention(format!("the generation of idempotency key {base:?}")))
}

/// How often a key's generation record is read again after another request moved it.
const KEY_GENERATION_WRITES: usize = 8;

/// A key's live generation found from its items alone (see [`live_key`]).
async fn first_live_generation<F, Fut>(base: &str, first_use: &F, now: i64) -> Result<KeyGeneration, Error>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<Option<i64>, Error>>,
{
    let mut generation = 1;
    loop {
        match first_use(ApiKey::generation(base, generation)).await? {
            Some(at) if now - at >= api::KEY_WINDOW_MS => generation += 1,
            at => return Ok(KeyGeneration { generation, first_use_ms: at.unwrap_or(now) }),
        }
    }
}

/// A job's status as Batch has it now (a duplicate request is answered with it).
async fn current_status(clients: &Clients, job_id: &str) -> Result<String, Error> {
    let reply = clients.batch.describe_jobs().jobs(job_id).send().await.map_err(|e| Error::aws("DescribeJobs", e))?;
    Ok(reply
        .jobs()
        .first()
        .and_then(|j| j.status())
        .map(|s| s.as_str().to_owned())
        .unwrap_or_else(|| "SUBMITTED".into()))
}
