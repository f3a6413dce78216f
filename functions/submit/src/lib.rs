//! `batchline-submit`: turns S3 "Object Created" events, scheduled events and HTTP API calls into Batch jobs, exactly once.
//!
//! The configuration (triggers, queues, job definitions) is the one bootstrap published to
//! the table, cached per container. Each trigger becomes a [`JobRequest`] with an
//! idempotency key ([`triggers`], [`api`]); [`batchline::submitter`] claims the key and
//! submits the job once, however often the trigger is delivered.
//!
//! Errors: on the EventBridge path a malformed event, or a submission another delivery
//! has under way, is an invocation error, so Lambda's retries and dead-letter queue keep
//! it; an object or schedule no rule matches is acknowledged and logged. On the API path
//! caller mistakes are 4xx answers and only infrastructure failures are invocation errors.

pub mod api;
pub mod plan;
pub mod triggers;

use aws_config::SdkConfig;
use batchline::config_store::ConfigCache;
use batchline::job_request::JobRequest;
use batchline::pipeline::RunInput;
use batchline::runs::RunServices;
use batchline::submitter::{SubmitError, Submitted, Submitter};
use batchline::{Config, Error};
use lambda_runtime::LambdaEvent;
use serde_json::{json, Value};
use tracing::{info, warn};

use api::{ApiError, Route};
use plan::Planned;

/// The AWS clients and the configuration cache, built once per container.
pub struct Clients {
    pub batch: aws_sdk_batch::Client,
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub cloudwatch: aws_sdk_cloudwatch::Client,
    pub eventbridge: aws_sdk_eventbridge::Client,
    pub region: String,
    pub config: ConfigCache,
}

impl Clients {
    pub fn new(sdk: &SdkConfig) -> Self {
        Clients {
            batch: aws_sdk_batch::Client::new(sdk),
            dynamodb: aws_sdk_dynamodb::Client::new(sdk),
            cloudwatch: aws_sdk_cloudwatch::Client::new(sdk),
            eventbridge: aws_sdk_eventbridge::Client::new(sdk),
            region: sdk.region().map(|r| r.to_string()).unwrap_or_else(|| "us-east-1".into()),
            config: ConfigCache::default(),
        }
    }

    fn submitter<'a>(&'a self, config: &'a Config) -> Submitter<'a> {
        Submitter { batch: &self.batch, dynamodb: &self.dynamodb, table: &config.table_name }
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

/// Handles one invocation: an HTTP API request, an S3 Object Created or a Scheduled Event.
pub async fn handle(event: LambdaEvent<Value>, clients: &Clients, config: &Config) -> Result<Value, Error> {
    let payload = event.payload;
    if payload.get("requestContext").is_some() {
        return handle_http(&payload, clients, config).await;
    }
    let text = |name: &str| payload.get(name).and_then(Value::as_str).unwrap_or_default();
    match (text("detail-type"), text("source")) {
        ("Object Created", "aws.s3") => {
            let object = triggers::parse_object_created(&payload).map_err(Error::InvalidEvent)?;
            let stack = clients.config.get(&clients.dynamodb, &config.table_name).await?;
            let planned = triggers::plan_object(&stack, &object, text("id")).map_err(Error::InvalidEvent)?;
            if planned.is_empty() {
                info!(bucket = %object.bucket, key = %object.key, "no S3 trigger matches the object; nothing to do");
            }
            submit_all(planned, clients, config).await
        }
        ("Scheduled Event", "aws.events") => {
            let rule = triggers::schedule_rule_name(&payload).map_err(Error::InvalidEvent)?;
            let stack = clients.config.get(&clients.dynamodb, &config.table_name).await?;
            let time = payload
                .get("time")
                .and_then(Value::as_str)
                .ok_or_else(|| Error::InvalidEvent("the Scheduled Event has no time".into()))?;
            let planned = triggers::plan_schedule(&stack, &rule, time).map_err(Error::InvalidEvent)?;
            if planned.is_none() {
                info!(rule, "no schedule trigger is configured for the rule; nothing to do");
            }
            submit_all(planned.into_iter().collect(), clients, config).await
        }
        _ => Err(Error::InvalidEvent(format!(
            "submit takes S3 Object Created and Scheduled Event events from EventBridge and HTTP API requests, not {}",
            batchline::event_kind(&payload)
        ))),
    }
}

async fn submit_all(planned: Vec<Planned>, clients: &Clients, config: &Config) -> Result<Value, Error> {
    let mut started = Vec::new();
    for plan in planned {
        match plan {
            Planned::Job(request) => {
                let submitted = submit_one(&request, clients, config).await?;
                started.push(json!({"jobId": submitted.job_id, "jobName": submitted.job_name, "new": submitted.new}));
            }
            Planned::Run { pipeline, source } => {
                let input = RunInput { parameters: source.parameters, environment: source.environment };
                let (run, new) = clients
                    .runs(config)
                    .start(&pipeline, source.trigger, &source.idempotency_key, input, batchline::now_ms())
                    .await?;
                started.push(json!({"runId": run.run_id, "pipeline": pipeline, "new": new}));
            }
        }
    }
    Ok(json!({ "started": started }))
}

async fn submit_one(request: &JobRequest, clients: &Clients, config: &Config) -> Result<Submitted, Error> {
    match clients.submitter(config).submit(request, batchline::now_ms()).await {
        Ok(submitted) => Ok(submitted),
        Err(SubmitError::Aws(err)) => Err(err),
        Err(other) => Err(Error::Aws { operation: "SubmitJob", code: "Retry".into(), message: other.to_string() }),
    }
}

async fn handle_http(payload: &Value, clients: &Clients, config: &Config) -> Result<Value, Error> {
    match serve(payload, clients, config).await {
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
            Error::Config(e) => Served::Caller(ApiError::new(503, "NotReady", e.to_string())),
            other => Served::Infrastructure(other),
        }
    }
}

async fn serve(payload: &Value, clients: &Clients, config: &Config) -> Result<Value, Served> {
    let request = api::parse_http(payload)?;
    let route = api::route(&request.method, &request.path)?;
    let stack = clients.config.get(&clients.dynamodb, &config.table_name).await?;
    match route {
        Route::SubmitJob => {
            let job = api::plan_submit_job(&stack, &request)?;
            let submitted = match clients.submitter(config).submit(&job, batchline::now_ms()).await {
                Ok(submitted) => submitted,
                Err(SubmitError::InFlight(_)) => {
                    return Err(ApiError::new(
                        409,
                        "InProgress",
                        "the same request is being submitted right now; retry shortly",
                    )
                    .into())
                }
                Err(SubmitError::Conflict(_)) => {
                    return Err(ApiError::new(
                        409,
                        "IdempotencyConflict",
                        "this Idempotency-Key was used for a different request",
                    )
                    .into())
                }
                Err(SubmitError::Aws(err)) if err.aws_code() == Some("ClientException") => {
                    return Err(ApiError::bad_request(format!("AWS Batch refused the job: {err}")).into())
                }
                Err(SubmitError::Aws(err)) => return Err(err.into()),
            };
            Ok(api::response(
                202,
                &json!({"jobId": submitted.job_id, "jobName": submitted.job_name, "jobQueue": job.queue_arn, "status": "SUBMITTED", "duplicate": !submitted.new}),
            ))
        }
        Route::GetJob(id) => {
            let reply =
                clients.batch.describe_jobs().jobs(&id).send().await.map_err(|e| Error::aws("DescribeJobs", e))?;
            let ours = |queue: Option<&str>| stack.job_queues.values().any(|q| q.arn.as_deref() == queue);
            let job = reply
                .jobs()
                .iter()
                .find(|j| j.job_id() == Some(id.as_str()) && ours(j.job_queue()))
                .ok_or_else(|| ApiError::not_found(format!("no job {id}")))?;
            Ok(api::response(200, &api::job_view(job, &clients.region)))
        }
        Route::StartRun(name) => {
            if !stack.pipelines.contains_key(&name) {
                return Err(ApiError::not_found(format!("no pipeline {name:?}")).into());
            }
            let body: api::StartRunBody = api::parse_body(&request.body)?;
            let key = api::idempotency_key(&request, &format!("pipelines/{name}"))?;
            let input = RunInput { parameters: body.parameters, environment: body.environment };
            let (run, new) = clients.runs(config).start(&name, "api", &key, input, batchline::now_ms()).await?;
            Ok(api::response(
                202,
                &json!({"runId": run.run_id, "pipeline": name, "status": run.status, "duplicate": !new}),
            ))
        }
        Route::GetRun(id) => {
            let (run, _) =
                clients.runs(config).load(&id).await?.ok_or_else(|| ApiError::not_found(format!("no run {id}")))?;
            Ok(api::response(200, &api::run_view(&run, &stack, &clients.region, batchline::now_ms())))
        }
        Route::ListRuns => {
            let pipeline = request.query.get("pipeline").ok_or_else(|| ApiError::bad_request("give ?pipeline=NAME"))?;
            if !stack.pipelines.contains_key(pipeline) {
                return Err(ApiError::not_found(format!("no pipeline {pipeline:?}")).into());
            }
            let limit = match request.query.get("limit").map(|l| l.parse::<i32>()) {
                None => 20,
                Some(Ok(limit)) if (1..=100).contains(&limit) => limit,
                Some(_) => return Err(ApiError::bad_request("limit is a number from 1 to 100").into()),
            };
            let runs: Vec<Value> = clients
                .runs(config)
                .list(pipeline, limit)
                .await?
                .iter()
                .map(|r| json!({"runId": r.run_id, "status": r.status, "createdAt": api::iso(Some(r.created_at))}))
                .collect();
            Ok(api::response(200, &json!({"pipeline": pipeline, "runs": runs})))
        }
        Route::CancelRun(id) => match clients.runs(config).cancel(&id, batchline::now_ms()).await? {
            None => Err(ApiError::not_found(format!("no run {id}")).into()),
            Some(Err(why)) => Err(ApiError::new(409, "RunEnded", why).into()),
            Some(Ok((run, terminated))) => Ok(api::response(
                202,
                &json!({"runId": run.run_id, "status": run.status, "terminatedJobs": terminated}),
            )),
        },
    }
}
