//! The jobs resource: `POST /jobs` (one job, exactly once per key), `GET /jobs` (the stack's jobs, a page at a time), `GET /jobs/{id}` and `DELETE /jobs/{id}`.
//!
//! Reads go to Batch through the Batch port, over the stack's queues only: `GET /jobs`
//! shows every job there — submitted through Batchline or not — as Batch sees it now, the
//! jobs created in the last 24 hours (Batch's `AFTER_CREATED_AT` filter, which covers
//! every status) or with `?status=` those in one status, at most [`MAX_LISTED`] an answer
//! in at most [`MAX_PAGES`] ListJobs calls, so a busy stack answers within API Gateway's
//! 30 s; `next` is the cursor of the rest.

use std::collections::BTreeMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use batchline::model::batch_event::{JobDetail, JobStatus};
use batchline::model::coalesce::jobs_of_object;
use batchline::model::cost::Pricing;
use batchline::model::fargate::Size;
use batchline::model::job_request::{user_tag_problems, JobRequest, RequestError, PIPELINE_TAG, RUN_TAG, STAGE_TAG};
use batchline::model::map::S3Location;
use batchline::model::stack::StackConfig;
use batchline::services::ports::{BatchPort, JobListing};
use batchline::services::resize::{chain_position, resize_key, ORIGINAL_TAG, RESIZE_TAG};
use batchline::services::submitter::SubmitError;
use batchline::store::{ClaimStore, RunStore, Store, WindowStore};
use batchline::Error;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::body::{read_body, with_value_problems, Number};
use super::call::Call;
use super::http::{iso, response, Answer, ApiError, HttpRequest, Problem, Served};
use super::keys::{idempotency_key, request_key};
use super::sizes::{beyond_capacity, requested_size};
use crate::plan::{self, Source, OWN_TAGS};

/// The most jobs `GET /jobs` answers with.
pub const MAX_LISTED: usize = 100;
/// The most ListJobs calls one `GET /jobs` makes.
pub const MAX_PAGES: usize = 3;
const DAY_MS: i64 = 24 * 3600 * 1000;

/// The body of `POST /jobs`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SubmitJobBody {
    pub job_definition: Option<String>,
    pub name: Option<String>,
    #[serde(default)]
    pub parameters: BTreeMap<String, String>,
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
    pub command: Option<Vec<String>>,
    pub vcpu: Option<Number>,
    pub memory: Option<Number>,
    pub array_size: Option<u32>,
    #[serde(default)]
    pub depends_on: Vec<String>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Refuse a size that is not a valid Fargate size as given, instead of adjusting it.
    #[serde(default)]
    pub exact_size: bool,
}

/// `POST /jobs`: 202 `{jobId, jobName, jobQueue, status, duplicate, size}`.
pub async fn submit(call: &Call<'_>) -> Answer {
    let ports = &call.clients.ports;
    let store = ports.store.as_ref();
    let key = idempotency_key(call.request, "jobs", &call.holder.token)?;
    let key = request_key(key, store, |key| async move { Ok(store.claim(&key).await?.map(|c| c.claimed_at)) }).await?;
    let plan = plan_submit_job(call.stack, call.request, key)?;
    let job = plan.job;
    let submitted = match ports.submitter(call.holder).submit(&job).await {
        Ok(submitted) => submitted,
        Err(SubmitError::InFlight(_)) => {
            let message = "the same request is being submitted right now; retry shortly";
            return Err(ApiError::new(409, "InProgress", message).into());
        }
        // (Withdrawn: only a run's stage keys are withdrawn, never an API key.)
        Err(SubmitError::Conflict(_) | SubmitError::Withdrawn(_)) => return Err(ApiError::key_reused().into()),
        Err(SubmitError::Failed(err)) if err.aws_code() == Some("ClientException") => {
            return Err(ApiError::bad_request(format!("AWS Batch refused the job: {err}")).into())
        }
        Err(SubmitError::Failed(err)) => return Err(err.into()),
    };
    let status =
        if submitted.new { "SUBMITTED".to_owned() } else { current_status(&ports.batch, &submitted.job_id).await? };
    let mut answer = json!({"jobId": submitted.job_id, "jobName": submitted.job_name, "jobQueue": job.queue_arn,
                            "status": status, "duplicate": !submitted.new, "size": plan.size});
    if plan.size_adjusted {
        // One half of the size was given: the answer says what it became.
        answer["sizeAdjusted"] = json!(true);
    }
    Ok(response(202, &answer))
}

/// What `POST /jobs` will submit, and the size it chose.
#[derive(Debug, Clone, PartialEq)]
pub struct SubmitPlan {
    pub job: JobRequest,
    /// The size the job runs at: asked for, snapped up, or the definition's.
    pub size: Size,
    /// Whether `size` differs from what the caller asked (one half given, snapped up).
    pub size_adjusted: bool,
}

/// `POST /jobs`: the job the body asks for under `idempotency_key`, validated. Every
/// problem of the body is gathered (wrong types, unknown fields and wrong values alike),
/// so the caller fixes them in one go; a body with none that asks for overrides a job
/// definition does not take is a 403.
pub fn plan_submit_job(
    config: &StackConfig,
    request: &HttpRequest,
    idempotency_key: String,
) -> Result<SubmitPlan, ApiError> {
    let (body, mut read_problems) = read_body::<SubmitJobBody>(&request.body)?;
    let key = body.job_definition.clone().unwrap_or_else(|| "default".into());
    let Some(definition) = config.job_definitions.get(&key) else {
        let known: Vec<&str> = config.job_definitions.keys().map(String::as_str).collect();
        let message = format!("jobDefinition {key:?} is not configured; configured: {}", known.join(", "));
        read_problems.push(Problem::new("jobDefinition", message));
        return Err(ApiError::refused(read_problems, false));
    };
    let overridden = overridden_fields(&body);
    if read_problems.is_empty() && !definition.allow_overrides && !overridden.is_empty() {
        return Err(overrides_refused(&format!("jobDefinition {key:?}"), &overridden));
    }
    let mut problems: Vec<RequestError> = Vec::new();
    let (size, size_adjusted) = body_size(&body, definition.size, &mut problems);
    problems.extend(user_tag_problems(&body.tags, OWN_TAGS));
    for (index, id) in body.depends_on.iter().enumerate() {
        if id.is_empty() || id.len() > 128 {
            problems.push(RequestError::invalid(
                format!("dependsOn[{index}]"),
                format!("dependsOn: {id:?} is not a job id"),
            ));
        }
    }
    let readable = format!("{}-api-{}", config.name_prefix, body.name.as_deref().unwrap_or(&key));
    let source = Source {
        trigger: "api",
        readable,
        idempotency_key,
        parameters: body.parameters,
        environment: body.environment,
    };
    let mut job = plan::job(config, &key, source, size).map_err(|e| ApiError::new(409, "NotReady", e))?;
    job.origin =
        format!("api:jobs:{}", batchline::model::job_request::digest(&String::from_utf8_lossy(&request.body), 40));
    job.command = body.command;
    job.array_size = body.array_size;
    job.depends_on = body.depends_on;
    job.tags.extend(body.tags);
    if let Err(found) = job.validate() {
        problems.extend(found);
    }
    problems.extend(missing_parameters(&job, &key, &definition.command));
    // A size no compute environment of the queue can give would wait in RUNNABLE for ever.
    if let (Some(size), Some(queue)) = (size, config.queue_for(definition)) {
        let capacity = config.queue_capacity(queue);
        problems.extend(beyond_capacity(size, capacity, &format!("job queue {:?}", definition.queue)));
    }
    if !read_problems.is_empty() {
        let values = problems.iter().map(|p| Problem::from_request(None, None, p));
        return Err(ApiError::refused(with_value_problems(read_problems, values), false));
    }
    if !problems.is_empty() {
        return Err(problems.into());
    }
    let size = job.size.unwrap_or(definition.size);
    Ok(SubmitPlan { job, size, size_adjusted })
}

/// The size a body asks for (`None`: the definition's), and whether it was adjusted to a
/// valid Fargate size; with `exactSize`, an adjustment is a problem instead.
fn body_size(body: &SubmitJobBody, definition: Size, problems: &mut Vec<RequestError>) -> (Option<Size>, bool) {
    if body.vcpu.is_none() && body.memory.is_none() {
        return (None, false);
    }
    match requested_size(body.vcpu.as_ref(), body.memory.as_ref(), definition) {
        Ok((size, true)) if body.exact_size => {
            problems.push(RequestError::invalid(
                "vcpu",
                format!(
                    "the size asked for is not a valid Fargate size as given; the nearest is {size} (exactSize refuses instead of adjusting)"
                ),
            ));
            (None, false)
        }
        Ok((size, adjusted)) => (Some(size), adjusted),
        Err(errors) => {
            problems.extend(errors);
            (None, false)
        }
    }
}

/// A `Ref::name` of the job's command (its own, else the definition's) that nobody gives:
/// Batch would run it with the placeholder in place, so it is refused, naming each.
fn missing_parameters(job: &JobRequest, key: &str, definition_command: &[String]) -> Option<RequestError> {
    let command = job.command.as_deref().unwrap_or(definition_command);
    let wanted = batchline::model::job_request::referenced_parameters(command);
    let missing = batchline::model::job_request::missing_parameters(&wanted, job.parameters.keys())?;
    Some(RequestError::invalid(
        "parameters",
        format!(
            "the command of jobDefinition {key:?} names {missing}, which neither the request's parameters nor the job definition give: add them to \"parameters\""
        ),
    ))
}

/// What a body sets that a locked job definition (`AllowOverrides: "false"`) decides
/// itself: what runs (command, environment), how large (vcpu, memory), how wide (arraySize)
/// and after what (dependsOn).
fn overridden_fields(body: &SubmitJobBody) -> Vec<&'static str> {
    let set = [
        ("command", body.command.is_some()),
        ("environment", !body.environment.is_empty()),
        ("vcpu", body.vcpu.is_some()),
        ("memory", body.memory.is_some()),
        ("arraySize", body.array_size.is_some()),
        ("dependsOn", !body.depends_on.is_empty()),
    ];
    set.into_iter().filter(|(_, given)| *given).map(|(field, _)| field).collect()
}

/// What callers set for job definitions that take nothing from them (`AllowOverrides:
/// "false"`): what the job runs, its size and its fan-out are the operator's, not the
/// caller's; `fields` names what was given.
pub fn overrides_refused(what: &str, fields: &[&str]) -> ApiError {
    ApiError::new(
        403,
        "OverridesNotAllowed",
        format!(
            "{what} takes no {} from callers (AllowOverrides is false): its command, environment, size, array size and \
             dependencies are the job definition's; pass the parameters its command names instead",
            fields.join(", ")
        ),
    )
}

/// `GET /jobs/{id}`: the job as Batch describes it, with its cost and the jobs a resize
/// links it to.
pub async fn get(call: &Call<'_>) -> Answer {
    let ports = &call.clients.ports;
    let id = &call.param;
    let job = our_job(&ports.batch, call.stack, id).await?;
    let mut view = job_view(&job, &call.clients.region);
    // What it cost, each Batch attempt priced by the capacity it ran on.
    let pricing = Pricing::of(call.stack, &ports.prices);
    view["cost"] = json!(pricing.price_job(&job));
    if job.is_array_parent() {
        view["costNote"] =
            json!("an array job's cost is its children's: each child (GET /jobs/{id}:{index}) shows its own");
    }
    // A single job resized after running out of memory names the job that followed
    // it (and a resized one the job it began as).
    if let Some(original) = job.tags.as_ref().and_then(|t| t.get(ORIGINAL_TAG)) {
        view["resizedFrom"] = json!(original);
    }
    if let Some(next) = resized_to(ports.store.as_ref(), &job).await? {
        view["resizedTo"] = json!(next);
    }
    Ok(response(200, &view))
}

/// The job a single job's out-of-memory resize submitted after it, if any: the job on the
/// claim of the next key in its chain of resizes.
pub(super) async fn resized_to(store: &dyn Store, job: &JobDetail) -> Result<Option<String>, Error> {
    let tag = |name: &str| job.tags.as_ref().and_then(|t| t.get(name)).map(String::as_str);
    let (original, resizes) = chain_position(&job.job_id, tag(ORIGINAL_TAG), tag(RESIZE_TAG));
    Ok(store.claim(&resize_key(&original, resizes + 1)).await?.and_then(|claim| claim.job_id))
}

/// `DELETE /jobs/{id}`: 202 `{jobId, status, terminated}`, a single job stopped (a
/// stage's job: cancel its run instead); `status` as it was. TerminateJob stops a job in
/// any state before it ends and changes nothing after (a retried DELETE).
pub async fn cancel(call: &Call<'_>) -> Answer {
    let id = &call.param;
    let job = our_job(&call.clients.ports.batch, call.stack, id).await?;
    let tag = |name: &str| job.tags.as_ref().and_then(|t| t.get(name)).filter(|v| !v.is_empty()).cloned();
    if let (Some(run), Some(_)) = (tag(RUN_TAG), tag(PIPELINE_TAG)) {
        let stage = tag(STAGE_TAG).unwrap_or_default();
        let message = format!(
            "job {id} is stage {stage} of run {run}: cancel the run instead: batchline runs cancel {run} (DELETE /runs/{run})"
        );
        return Err(ApiError::new(409, "PipelineJob", message).into());
    }
    call.clients.ports.batch.terminate_job(id, "cancelled through the Batchline API").await?;
    Ok(response(202, &json!({"jobId": id, "status": job.status.as_str(), "terminated": true})))
}

/// A job in one of the stack's queues, as DescribeJobs has it; 404 for any other.
pub(super) async fn our_job(batch: &dyn BatchPort, stack: &StackConfig, id: &str) -> Result<JobDetail, Served> {
    let ours = |queue: Option<&str>| stack.job_queues.values().any(|q| Some(q.arn.as_str()) == queue);
    let described = batch.describe_jobs(&[id.to_owned()]).await?;
    let job = described.into_iter().map(|event| event.detail).find(|j| j.job_id == id && ours(j.job_queue.as_deref()));
    Ok(job.ok_or_else(|| ApiError::not_found(format!("no job {id}")))?)
}

/// A job's status as Batch has it now (a duplicate request is answered with it).
async fn current_status(batch: &dyn BatchPort, job_id: &str) -> Result<String, Error> {
    let described = batch.describe_jobs(&[job_id.to_owned()]).await?;
    Ok(described.first().map(|e| e.detail.status.as_str().to_owned()).unwrap_or_else(|| "SUBMITTED".into()))
}

/// `GET /jobs/{id}`: a job as the API shows it.
pub fn job_view(job: &JobDetail, region: &str) -> Value {
    let container = job.container.as_ref();
    let requirement = |kind: &str| {
        let requirements = container.and_then(|c| c.resource_requirements.as_deref()).unwrap_or_default();
        requirements.iter().find(|r| r.kind == kind).map(|r| r.value.clone())
    };
    let log_stream = container.and_then(|c| c.log_stream_name.clone());
    let log_group = container
        .and_then(|c| c.log_configuration.as_ref())
        .and_then(|l| l.options.as_ref())
        .and_then(|o| o.get("awslogs-group"))
        .cloned()
        .unwrap_or_else(|| batchline::model::stack::DEFAULT_LOG_GROUP.to_owned());
    json!({
        "jobId": job.job_id,
        "jobName": job.job_name,
        "status": job.status.as_str(),
        "statusReason": job.status_reason,
        "jobQueue": job.job_queue,
        "jobDefinition": job.job_definition,
        "createdAt": iso(job.created_at),
        "startedAt": iso(job.started_at),
        "stoppedAt": iso(job.stopped_at),
        "size": {"vcpu": requirement("VCPU"), "memoryMib": requirement("MEMORY").and_then(|m| m.parse::<u64>().ok())},
        "attempts": job.attempts.as_ref().map_or(0, Vec::len),
        "exitCode": container.and_then(|c| c.exit_code),
        "parameters": job.parameters,
        "tags": job.tags,
        "arraySize": job.array_properties.as_ref().and_then(|a| a.size),
        "logStreamName": log_stream,
        // Every attempt's stream (a retried job wrote one per attempt), oldest first.
        "logStreams": log_streams(job),
        "logGroup": log_group,
        "logUrl": log_stream.as_deref().map(|s| log_console_url(region, &log_group, s)),
    })
}

/// The log streams of a job's attempts, then its current one if it is not among them.
fn log_streams(job: &JobDetail) -> Vec<String> {
    let attempts = job.attempts.as_deref().unwrap_or_default();
    let mut streams: Vec<String> =
        attempts.iter().filter_map(|a| a.container.as_ref().and_then(|c| c.log_stream_name.clone())).collect();
    if let Some(current) = job.container.as_ref().and_then(|c| c.log_stream_name.as_ref()) {
        if !streams.contains(current) {
            streams.push(current.clone());
        }
    }
    streams
}

/// The CloudWatch Logs console page of a log stream. The console escapes `%` in its
/// fragment as `$25`, so each part is URL-encoded and then that.
pub fn log_console_url(region: &str, group: &str, stream: &str) -> String {
    let encode = |text: &str| -> String {
        text.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-_.".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("$25{b:02X}")
                }
            })
            .collect()
    };
    format!(
        "https://{region}.console.aws.amazon.com/cloudwatch/home?region={region}#logsV2:log-groups/log-group/{}/log-events/{}",
        encode(group),
        encode(stream)
    )
}

/// `GET /jobs[?status=S][&next=C]`: 200 `{jobs, truncated, next}`; `GET
/// /jobs?object=s3://bucket/key`: the jobs that ran an object of a coalescing trigger.
pub async fn list(call: &Call<'_>) -> Answer {
    let query = &call.request.query;
    if let Some(object) = query.get("object") {
        return object_jobs(call, object).await;
    }
    let status = query.get("status").map(|s| parse_status(s)).transpose()?;
    let from = query.get("next").map(|next| read_cursor(next, call.stack)).transpose()?.unwrap_or_default();
    let jobs = list_jobs(&call.clients.ports.batch, call.stack, status.as_ref(), from, batchline::now_ms()).await?;
    Ok(response(200, &jobs))
}

/// `GET /jobs?object=s3://bucket/key`: 200 `{object, jobs: [...]}`, every job (and array
/// index) of every window that took the object — each version of it, for each coalescing
/// trigger — resubmissions included. An object of a trigger that does not coalesce is not
/// recorded here (its job carries it in its `inputKey` parameter): the list is empty.
async fn object_jobs(call: &Call<'_>, object: &str) -> Answer {
    let at = S3Location::parse(object).map_err(|why| ApiError::bad_request(format!("object: {why}")))?;
    let store = call.clients.ports.store.as_ref();
    let mut jobs = Vec::new();
    for claim in store.object_claims(&at.bucket, &at.key).await? {
        let Some(record) = store.load_run(&claim.run_id).await? else { continue };
        for job in jobs_of_object(&record.run, claim.position) {
            let mut line = serde_json::to_value(&job).unwrap_or_default();
            line["trigger"] = json!(claim.trigger);
            line["version"] = json!(claim.version);
            line["window"] = json!(claim.window);
            jobs.push(line);
        }
    }
    Ok(response(200, &json!({"object": object, "jobs": jobs})))
}

/// The status a caller asked for, as Batch names it.
pub fn parse_status(text: &str) -> Result<JobStatus, ApiError> {
    const KNOWN: [&str; 7] = ["SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING", "SUCCEEDED", "FAILED"];
    let wanted = text.to_ascii_uppercase();
    let known =
        KNOWN.iter().find(|known| **known == wanted).and_then(|known| serde_json::from_value(json!(known)).ok());
    known.ok_or_else(|| {
        ApiError::bad_request(format!(
            "status {text:?}: use SUBMITTED, PENDING, RUNNABLE, STARTING, RUNNING, SUCCEEDED or FAILED"
        ))
    })
}

/// A listed job as `GET /jobs` and `GET /status` show it.
pub fn line(job: &JobDetail, queue: &str) -> Value {
    json!({
        "jobId": job.job_id,
        "jobName": job.job_name,
        "jobQueue": queue,
        "status": job.status.as_str(),
        "statusReason": job.status_reason,
        "createdAt": iso(job.created_at),
        "startedAt": iso(job.started_at),
        "stoppedAt": iso(job.stopped_at),
        "exitCode": job.container.as_ref().and_then(|c| c.exit_code),
    })
}

/// The stack's jobs, a page at a time: queue by queue (in key order), each page newest
/// first, at most [`MAX_LISTED`] jobs and [`MAX_PAGES`] ListJobs calls an answer; `next`
/// is the cursor of the rest (`?next=`), absent at the end.
pub async fn list_jobs(
    batch: &dyn BatchPort,
    stack: &StackConfig,
    status: Option<&JobStatus>,
    from: Position,
    now_ms: i64,
) -> Result<Value, Error> {
    let queues: Vec<(&String, &str, &str)> =
        stack.job_queues.iter().map(|(key, queue)| (key, queue.name.as_str(), queue.arn.as_str())).collect();
    let listing = match status {
        Some(status) => JobListing::InStatus(status.clone()),
        None => JobListing::CreatedSince(now_ms - DAY_MS),
    };
    let (mut index, mut token) = (from.queue, from.token);
    let mut jobs: Vec<(i64, Value)> = Vec::new();
    let mut calls = 0;
    while index < queues.len() && jobs.len() < MAX_LISTED && calls < MAX_PAGES {
        let (_, name, arn) = queues[index];
        let page = batch.list_jobs(arn, &listing, token.take(), MAX_LISTED - jobs.len()).await?;
        calls += 1;
        jobs.extend(page.jobs.iter().map(|job| (job.created_at.unwrap_or_default(), line(job, name))));
        match page.next {
            Some(next) => token = Some(next),
            None => index += 1,
        }
    }
    jobs.sort_by_key(|job| std::cmp::Reverse(job.0));
    let next = queues.get(index).map(|(key, _, _)| write_cursor(key, token.as_deref()));
    let jobs: Vec<Value> = jobs.into_iter().map(|(_, job)| job).collect();
    Ok(json!({"jobs": jobs, "truncated": next.is_some(), "next": next}))
}

/// Where a `GET /jobs` page starts: the queue (its place in key order) and Batch's token
/// within it; the default is the beginning.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Position {
    pub queue: usize,
    pub token: Option<String>,
}

/// A `GET /jobs` cursor as the caller holds it: the queue's key and Batch's token.
#[derive(Serialize, Deserialize)]
struct Cursor {
    queue: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    token: Option<String>,
}

fn write_cursor(queue: &str, token: Option<&str>) -> String {
    let cursor = Cursor { queue: queue.to_owned(), token: token.map(str::to_owned) };
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(&cursor).unwrap_or_default())
}

/// The position a `next` cursor names; 400 for one this API did not give (or whose queue
/// a deploy removed).
pub fn read_cursor(text: &str, stack: &StackConfig) -> Result<Position, ApiError> {
    let refused = || ApiError::bad_request("next: not a cursor a GET /jobs answer gave");
    let bytes = URL_SAFE_NO_PAD.decode(text).map_err(|_| refused())?;
    let cursor: Cursor = serde_json::from_slice(&bytes).map_err(|_| refused())?;
    let queue = stack.job_queues.keys().position(|key| *key == cursor.queue).ok_or_else(refused)?;
    Ok(Position { queue, token: cursor.token })
}
