//! The HTTP API (API Gateway HTTP API, payload format 2.0): requests parsed, routed and answered as JSON.
//!
//! Every caller mistake is a 4xx with `{"error": {"code", "message"}}` naming the problem;
//! only infrastructure failures become 5xx. Routes:
//!
//! | route | answer |
//! |---|---|
//! | `POST /jobs` | 202 `{jobId, jobName, jobQueue, status, duplicate}` |
//! | `GET /jobs/{id}` | 200 the job: status, times, reason, size, log stream and console link |
//! | `DELETE /jobs/{id}` | 202 `{jobId, status, terminated}`: a single job stopped (a stage's job: cancel its run); `status` as it was |
//! | `POST /pipelines/{name}/runs` | 202 `{runId, ...}` |
//! | `GET /jobs[?status=S]` | 200 `{jobs}`: the stack's jobs of the last 24 hours (or those in status S), newest first |
//! | `GET /status` | 200 `{queues, recentFailures, openRuns}`: what the stack is doing now |
//! | `GET /runs/{id}`, `GET /runs[?pipeline=NAME]`, `DELETE /runs/{id}` | the run(s), newest first (every pipeline's without `pipeline`); cancel |
//! | `POST /runs/{id}/redrive` | 202 `{runId, status, redrive, stages, duplicate}`: the run's next generation |

use std::collections::BTreeMap;

use aws_lambda_events::apigw::{ApiGatewayV2httpRequest, ApiGatewayV2httpResponse};
use aws_lambda_events::encodings::Body;
use aws_lambda_events::http::header::{HeaderValue, CONTENT_TYPE};
use base64::Engine;
use batchline::model::fargate::{Size, SizeError};
use batchline::model::job_request::{user_tag_problems, JobRequest, RequestError};
use batchline::model::pipeline::{Pipeline, ON_FAILURE};
use batchline::model::run::RunInput;
use batchline::model::stack::StackConfig;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::plan::{self, Source, OWN_TAGS};

/// An HTTP request as API Gateway hands it over.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpRequest {
    /// API Gateway's id of this request (empty when it gave none).
    pub request_id: String,
    pub method: String,
    pub path: String,
    /// Lowercase names.
    pub headers: BTreeMap<String, String>,
    pub query: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

/// A caller-facing error: status, stable code, message — and, for a refused request, every
/// problem found in it (the message joins them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    pub problems: Vec<String>,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), problems: vec![] }
    }

    /// A request refused for every problem listed: 413 when its size is the only one, 400
    /// otherwise.
    pub fn refused(problems: Vec<(Option<String>, RequestError)>) -> Self {
        let only_size = problems.iter().all(|(_, p)| matches!(p, RequestError::TooLarge { .. }));
        let said: Vec<String> = problems
            .iter()
            .map(|(place, problem)| match place {
                Some(place) => format!("{place}: {problem}"),
                None => problem.to_string(),
            })
            .collect();
        let (status, code) = if only_size { (413, "PayloadTooLarge") } else { (400, "BadRequest") };
        let message = match said.as_slice() {
            [one] => one.clone(),
            many => format!("{} problems: {}", many.len(), many.join("; ")),
        };
        ApiError { status, code, message, problems: said }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(400, "BadRequest", message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(404, "NotFound", message)
    }
}

impl From<Vec<RequestError>> for ApiError {
    fn from(problems: Vec<RequestError>) -> Self {
        ApiError::refused(problems.into_iter().map(|p| (None, p)).collect())
    }
}

/// An API Gateway v2 response with a JSON body.
pub fn response(status: u16, body: &Value) -> ApiGatewayV2httpResponse {
    let mut response = ApiGatewayV2httpResponse::default();
    response.status_code = i64::from(status);
    response.headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response.body = Some(Body::Text(body.to_string()));
    response
}

pub fn error_response(err: &ApiError) -> ApiGatewayV2httpResponse {
    let mut error = json!({"code": err.code, "message": err.message});
    if !err.problems.is_empty() {
        error["problems"] = json!(err.problems);
    }
    response(err.status, &json!({ "error": error }))
}

/// Reads the request out of the API Gateway v2 payload (base64 bodies decoded).
pub fn parse_http(event: &ApiGatewayV2httpRequest) -> Result<HttpRequest, ApiError> {
    let method = event.request_context.http.method.as_str().to_ascii_uppercase();
    let path = event.raw_path.clone().or_else(|| event.request_context.http.path.clone()).unwrap_or_else(|| "/".into());
    // HeaderMap names are lowercase already.
    let headers = event
        .headers
        .iter()
        .filter_map(|(name, value)| Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned())))
        .collect();
    let query = event.query_string_parameters.iter().map(|(name, value)| (name.to_owned(), value.to_owned())).collect();
    let raw = event.body.as_deref().unwrap_or_default();
    let body = if event.is_base64_encoded {
        base64::engine::general_purpose::STANDARD
            .decode(raw)
            .map_err(|e| ApiError::bad_request(format!("the body is not valid base64: {e}")))?
    } else {
        raw.as_bytes().to_vec()
    };
    let request_id = event.request_context.request_id.clone().unwrap_or_default();
    Ok(HttpRequest { request_id, method, path, headers, query, body })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    SubmitJob,
    GetJob(String),
    CancelJob(String),
    StartRun(String),
    GetRun(String),
    ListRuns,
    CancelRun(String),
    RedriveRun(String),
    ListJobs,
    Status,
}

/// Every route, as the template declares it to API Gateway (a test holds the two equal).
pub const ROUTES: [(&str, &str); 10] = [
    ("POST", "/jobs"),
    ("GET", "/jobs"),
    ("GET", "/status"),
    ("GET", "/jobs/{id}"),
    ("DELETE", "/jobs/{id}"),
    ("POST", "/pipelines/{name}/runs"),
    ("GET", "/runs"),
    ("GET", "/runs/{id}"),
    ("DELETE", "/runs/{id}"),
    ("POST", "/runs/{id}/redrive"),
];

/// The longest run or job id the API looks up. Batchline's run ids are a pipeline name and
/// 16 hex digits, Batch's job ids 36 characters; a longer one names nothing, and past
/// DynamoDB's 2,048-byte key (or Batch's limits) its lookup would fail rather than find
/// nothing.
pub const MAX_ID_CHARS: usize = 256;

/// An id from a route's path, or a 404 naming the limit when it is too long to be one.
fn path_id(kind: &str, id: &str) -> Result<String, ApiError> {
    if id.chars().count() <= MAX_ID_CHARS {
        return Ok(id.to_owned());
    }
    let start: String = id.chars().take(32).collect();
    Err(ApiError::not_found(format!("no {kind} {start}…: {kind} ids are at most {MAX_ID_CHARS} characters")))
}

pub fn route(method: &str, path: &str) -> Result<Route, ApiError> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').filter(|p| !p.is_empty()).collect();
    let allowed = |methods: &str| {
        ApiError::new(405, "MethodNotAllowed", format!("{method} {path}: allowed methods are {methods}"))
    };
    match (parts.as_slice(), method) {
        (["jobs"], "POST") => Ok(Route::SubmitJob),
        (["jobs"], "GET") => Ok(Route::ListJobs),
        (["jobs"], _) => Err(allowed("GET, POST")),
        (["status"], "GET") => Ok(Route::Status),
        (["status"], _) => Err(allowed("GET")),
        (["jobs", id], "GET") => Ok(Route::GetJob(path_id("job", id)?)),
        (["jobs", id], "DELETE") => Ok(Route::CancelJob(path_id("job", id)?)),
        (["jobs", _], _) => Err(allowed("GET, DELETE")),
        (["pipelines", name, "runs"], "POST") => Ok(Route::StartRun(name.to_string())),
        (["pipelines", _, "runs"], _) => Err(allowed("POST")),
        (["runs"], "GET") => Ok(Route::ListRuns),
        (["runs"], _) => Err(allowed("GET")),
        (["runs", id], "GET") => Ok(Route::GetRun(path_id("run", id)?)),
        (["runs", id], "DELETE") => Ok(Route::CancelRun(path_id("run", id)?)),
        (["runs", _], _) => Err(allowed("GET, DELETE")),
        (["runs", id, "redrive"], "POST") => Ok(Route::RedriveRun(path_id("run", id)?)),
        (["runs", _, "redrive"], _) => Err(allowed("POST")),
        _ => Err(ApiError::not_found(format!("no route {method} {path}"))),
    }
}

/// A number written as a JSON number or a string.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Number {
    Number(serde_json::Number),
    Text(String),
}

impl Number {
    fn text(&self) -> String {
        match self {
            Number::Number(n) => n.to_string(),
            Number::Text(t) => t.clone(),
        }
    }
}

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
}

/// The body of `POST /pipelines/{name}/runs`: what the run passes to every stage.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StartRunBody {
    #[serde(default)]
    pub parameters: BTreeMap<String, String>,
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
}

/// `GET /runs/{id}`: the run, each stage with its attempts, sizes and log links.
pub fn run_view(
    run: &batchline::model::run::Run,
    config: &StackConfig,
    pricing: &batchline::model::cost::Pricing,
    region: &str,
    now_ms: i64,
) -> Value {
    let cost = run.cost(pricing);
    let stage_view = |name: &str, stage_run: &batchline::model::run::StageRun| {
        let declared = run.stage(name);
        let log_group = declared
            .and_then(|s| config.job_definitions.get(&s.job_definition))
            .map(|d| d.log_group.clone())
            .unwrap_or_else(|| batchline::model::stack::DEFAULT_LOG_GROUP.to_owned());
        let attempts: Vec<Value> = stage_run
            .attempts
            .iter()
            .map(|a| {
                json!({
                    "number": a.number,
                    "jobId": a.job_id,
                    "jobName": a.job_name,
                    "size": a.size,
                    "status": a.status,
                    "reason": a.reason,
                    "exitCode": a.exit_code,
                    "startedAt": iso(a.started_at),
                    "stoppedAt": iso(a.stopped_at),
                    "logStreamName": a.log_stream,
                    "logUrl": a.log_stream.as_deref().map(|s| log_console_url(region, &log_group, s)),
                    // Once its job ended: each task (Batch attempt) priced by its capacity.
                    "cost": (!a.billed.is_empty()).then(|| a.cost(pricing)),
                })
            })
            .collect();
        json!({
            "status": stage_run.status,
            "jobDefinition": declared.map(|s| s.job_definition.clone()),
            "after": declared.map(|s| s.after.clone()).unwrap_or_default(),
            "attempts": attempts,
            "costUsd": cost.stages.get(name).map(|c| c.usd).unwrap_or_default(),
        })
    };
    let stages: serde_json::Map<String, Value> =
        run.stages.iter().map(|(name, s)| (name.clone(), stage_view(name, s))).collect();
    json!({
        "runId": run.run_id,
        "pipeline": run.pipeline.name,
        "status": run.status,
        "reason": run.reason,
        "trigger": run.trigger,
        "createdAt": iso(Some(run.created_at)),
        "endedAt": iso(run.ended_at),
        "durationMs": run.duration_ms(now_ms),
        "input": run.input,
        // Where its stages share data (BATCHLINE_RUN_DATA), when the stack has a folder for it.
        "runData": config.roles.names.run_data_uri(&run.run_id),
        // Its redrives: each started a generation; a stage's attempts go on across them.
        "redrives": run.redrives.iter().enumerate().map(|(i, r)| json!({
            "redrive": i + 1, "at": iso(Some(r.at)), "stages": r.stages
        })).collect::<Vec<_>>(),
        "stages": stages,
        "onFailure": run.on_failure.as_ref().map(|s| stage_view(batchline::model::pipeline::ON_FAILURE, s)),
        // What its ended attempts cost, retries and resizes included (the completion
        // event and the RunCost metric carry the same figure).
        "costUsd": cost.usd,
        "costIsUpperBound": cost.upper_bound,
        "maxRunCostUsd": run.pipeline.max_run_cost_usd,
    })
}

/// The body of `POST /runs/{id}/redrive` (all optional).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RedriveBody {
    /// A size for a stage's next attempt: `{"stage": {"vcpu": "1", "memory": "4096"}}`.
    #[serde(default)]
    pub sizes: BTreeMap<String, SizeBody>,
}

impl RedriveBody {
    /// What the caller asked for, as written (before any size is filled in or snapped up):
    /// the same key with another request is a conflict, and a retry of the same is not,
    /// whatever the run's sizes have become since.
    pub fn fingerprint(&self) -> String {
        let half = |n: &Option<Number>| n.as_ref().map(Number::text).unwrap_or_default();
        let sizes: Vec<String> = self
            .sizes
            .iter()
            .map(|(stage, size)| format!("{stage}={}/{}", half(&size.vcpu), half(&size.memory)))
            .collect();
        batchline::model::job_request::digest(&sizes.join(";"), 16)
    }
}

/// A size asked for: both halves, or one (the other kept, snapped up to a valid pair).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SizeBody {
    pub vcpu: Option<Number>,
    pub memory: Option<Number>,
}

/// A size a caller asked for (see [`Size::parse_requested`]: one half alone keeps the other
/// from `default` and snaps up), and whether it differs from what was asked; every problem,
/// naming its field.
fn requested_size(
    vcpu: Option<&Number>,
    memory: Option<&Number>,
    default: Size,
) -> Result<(Size, bool), Vec<RequestError>> {
    let (vcpu, memory) = (vcpu.map(Number::text), memory.map(Number::text));
    Size::parse_requested(vcpu.as_deref(), memory.as_deref(), default).map_err(|errors| {
        let named = errors.iter().map(|err| match err {
            SizeError::BadVcpu(_) => format!("vcpu: {err}"),
            SizeError::BadMemory(_) => format!("memory: {err}"),
            _ => err.to_string(),
        });
        named.map(RequestError::Invalid).collect()
    })
}

/// The problem with `size` when `queue` (described for the caller) gives one job at most
/// `max_vcpus`, if that is known and not enough.
fn beyond_capacity(size: Size, max_vcpus: Option<u32>, queue: &str) -> Option<RequestError> {
    let max = max_vcpus.filter(|max| !size.fits_vcpus(*max))?;
    Some(RequestError::Invalid(format!(
        "vcpu: {size} is more than {queue} can run: its compute environments allow at most {max} vCPU (MaxVcpus)"
    )))
}

/// The sizes a redrive asks for, each read as `POST /jobs` reads a size, with the stage's
/// latest size as the half not given. Every problem at once.
pub fn redrive_sizes(run: &batchline::model::run::Run, body: &RedriveBody) -> Result<BTreeMap<String, Size>, ApiError> {
    let mut sizes = BTreeMap::new();
    let mut problems = Vec::new();
    for (stage, asked) in &body.sizes {
        let place = Some(format!("sizes.{stage}"));
        let (Some(stage_run), Some(declared)) = (run.stages.get(stage), run.stage(stage)) else {
            problems.push((place, RequestError::Invalid(format!("run {} has no stage {stage:?}", run.run_id))));
            continue;
        };
        let latest = stage_run.current().map_or(declared.size, |a| a.size);
        if asked.vcpu.is_none() && asked.memory.is_none() {
            problems.push((place, RequestError::Invalid("give vcpu, memory or both".into())));
            continue;
        }
        match requested_size(asked.vcpu.as_ref(), asked.memory.as_ref(), latest) {
            Ok((size, _)) => match beyond_capacity(size, declared.max_vcpus, "the stage's job queue") {
                Some(too_large) => problems.push((place, too_large)),
                None => {
                    sizes.insert(stage.clone(), size);
                }
            },
            Err(errors) => problems.extend(errors.into_iter().map(|problem| (place.clone(), problem))),
        }
    }
    if problems.is_empty() {
        Ok(sizes)
    } else {
        Err(ApiError::refused(problems))
    }
}

/// Parses a JSON body into `T`, naming the field at fault.
pub fn parse_body<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ApiError> {
    let text = if body.iter().all(u8::is_ascii_whitespace) { b"{}".as_slice() } else { body };
    let mut deserializer = serde_json::Deserializer::from_slice(text);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::bad_request(format!("the body is not valid JSON: {inner}"))
        } else if path == "." {
            ApiError::bad_request(format!("invalid body: {inner}"))
        } else {
            ApiError::bad_request(format!("{path}: {inner}"))
        }
    })
}

pub use batchline::model::job_request::KEY_WINDOW_MS;

/// The idempotency key of an API request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiKey {
    /// The caller's `Idempotency-Key`: retries within [`KEY_WINDOW_MS`] are one request.
    Caller(String),
    /// No key given: this request alone (every POST without a key is new work).
    Request(String),
}

impl ApiKey {
    /// The key of the `generation`th use of a caller's key (a new one each window).
    pub fn generation(base: &str, generation: u32) -> String {
        if generation <= 1 {
            base.to_owned()
        } else {
            format!("{base}#{generation}")
        }
    }
}

/// The idempotency key of an API request: the `Idempotency-Key` header, or else this
/// request's own id (`fallback_id` when API Gateway gave none).
pub fn idempotency_key(request: &HttpRequest, route: &str, fallback_id: &str) -> Result<ApiKey, ApiError> {
    match request.headers.get("idempotency-key") {
        Some(key) if key.is_empty() || key.len() > 255 => {
            Err(ApiError::bad_request("Idempotency-Key has 1 to 255 characters"))
        }
        Some(key) => Ok(ApiKey::Caller(format!("api:{route}:key:{key}"))),
        None => {
            let id = if request.request_id.is_empty() { fallback_id } else { &request.request_id };
            Ok(ApiKey::Request(format!("api:{route}:request:{id}")))
        }
    }
}

/// A caller's command or environment for job definitions that take none (`AllowOverrides:
/// "false"`): what the job runs is the operator's, not the caller's.
pub fn overrides_refused(what: &str) -> ApiError {
    ApiError::new(
        403,
        "OverridesNotAllowed",
        format!("{what} takes no command or environment from callers (AllowOverrides is false); pass the parameters its command names instead"),
    )
}

/// `POST /pipelines/{name}/runs`: an environment reaches every stage, so a run that brings
/// one is refused when any stage's job definition takes no overrides.
pub fn check_run_overrides(config: &StackConfig, pipeline: &Pipeline, input: &RunInput) -> Result<(), ApiError> {
    if input.environment.is_empty() {
        return Ok(());
    }
    let stages = pipeline.stages.iter().map(|(k, s)| (k.as_str(), s));
    let closed: Vec<String> = stages
        .chain(pipeline.on_failure.iter().map(|s| (ON_FAILURE, s)))
        .filter(|(_, stage)| config.job_definitions.get(&stage.job_definition).is_some_and(|d| !d.allow_overrides))
        .map(|(stage, _)| format!("stage {stage}"))
        .collect();
    if closed.is_empty() {
        Ok(())
    } else {
        Err(overrides_refused(&closed.join(", ")))
    }
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

/// `POST /jobs`: the job the body asks for under `idempotency_key`, validated.
pub fn plan_submit_job(
    config: &StackConfig,
    request: &HttpRequest,
    idempotency_key: String,
) -> Result<SubmitPlan, ApiError> {
    let body: SubmitJobBody = parse_body(&request.body)?;
    let key = body.job_definition.clone().unwrap_or_else(|| "default".into());
    let definition = config.job_definitions.get(&key).ok_or_else(|| {
        let known: Vec<&str> = config.job_definitions.keys().map(String::as_str).collect();
        ApiError::bad_request(format!("jobDefinition {key:?} is not configured; configured: {}", known.join(", ")))
    })?;
    if !definition.allow_overrides && (body.command.is_some() || !body.environment.is_empty()) {
        return Err(overrides_refused(&format!("jobDefinition {key:?}")));
    }
    // Every problem of the request is gathered, so the caller fixes them in one go.
    let mut problems: Vec<RequestError> = Vec::new();
    let mut size_adjusted = false;
    let size = if body.vcpu.is_some() || body.memory.is_some() {
        match requested_size(body.vcpu.as_ref(), body.memory.as_ref(), definition.size) {
            Ok((size, adjusted)) => {
                size_adjusted = adjusted;
                Some(size)
            }
            Err(errors) => {
                problems.extend(errors);
                None
            }
        }
    } else {
        None
    };
    problems.extend(user_tag_problems(&body.tags, OWN_TAGS));
    for id in &body.depends_on {
        if id.is_empty() || id.len() > 128 {
            problems.push(RequestError::Invalid(format!("dependsOn: {id:?} is not a job id")));
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
    // A size no compute environment of the queue can give would wait in RUNNABLE for ever.
    if let (Some(size), Some(queue)) = (size, config.queue_for(definition)) {
        let capacity = config.queue_capacity(queue);
        problems.extend(beyond_capacity(size, capacity, &format!("job queue {:?}", definition.queue)));
    }
    if problems.is_empty() {
        let size = job.size.unwrap_or(definition.size);
        Ok(SubmitPlan { job, size, size_adjusted })
    } else {
        Err(problems.into())
    }
}

/// Epoch milliseconds as ISO 8601, for answers.
pub fn iso(millis: Option<i64>) -> Value {
    match millis {
        Some(ms) => aws_smithy_types::DateTime::from_millis(ms)
            .fmt(aws_smithy_types::date_time::Format::DateTime)
            .map(Value::String)
            .unwrap_or(Value::Null),
        None => Value::Null,
    }
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

/// `GET /jobs/{id}`: a job as the API shows it.
pub fn job_view(job: &aws_sdk_batch::types::JobDetail, region: &str) -> Value {
    let container = job.container();
    let requirement = |kind: &str| {
        container
            .map(|c| c.resource_requirements())
            .unwrap_or_default()
            .iter()
            .find(|r| r.r#type().map(|t| t.as_str()) == Some(kind))
            .and_then(|r| r.value())
            .map(str::to_owned)
    };
    let log_stream = container.and_then(|c| c.log_stream_name()).map(str::to_owned);
    let log_group = container
        .and_then(|c| c.log_configuration())
        .and_then(|l| l.options())
        .and_then(|o| o.get("awslogs-group"))
        .cloned()
        .unwrap_or_else(|| batchline::model::stack::DEFAULT_LOG_GROUP.to_owned());
    json!({
        "jobId": job.job_id(),
        "jobName": job.job_name(),
        "status": job.status().map(|s| s.as_str()),
        "statusReason": job.status_reason(),
        "jobQueue": job.job_queue(),
        "jobDefinition": job.job_definition(),
        "createdAt": iso(job.created_at()),
        "startedAt": iso(job.started_at()),
        "stoppedAt": iso(job.stopped_at()),
        "size": {"vcpu": requirement("VCPU"), "memoryMib": requirement("MEMORY").and_then(|m| m.parse::<u64>().ok())},
        "attempts": job.attempts().len(),
        "exitCode": container.and_then(|c| c.exit_code()),
        "parameters": job.parameters(),
        "tags": job.tags(),
        "arraySize": job.array_properties().and_then(|a| a.size()),
        "logStreamName": log_stream,
        // Every attempt's stream (a retried job wrote one per attempt), oldest first.
        "logStreams": log_streams(job),
        "logGroup": log_group,
        "logUrl": log_stream.as_deref().map(|s| log_console_url(region, &log_group, s)),
    })
}

/// The log streams of a job's attempts, then its current one if it is not among them.
fn log_streams(job: &aws_sdk_batch::types::JobDetail) -> Vec<String> {
    let mut streams: Vec<String> = job
        .attempts()
        .iter()
        .filter_map(|a| a.container().and_then(|c| c.log_stream_name()).map(str::to_owned))
        .collect();
    if let Some(current) = job.container().and_then(|c| c.log_stream_name()) {
        if !streams.iter().any(|s| s == current) {
            streams.push(current.to_owned());
        }
    }
    streams
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_their_errors() {
        assert_eq!(route("POST", "/jobs"), Ok(Route::SubmitJob));
        assert_eq!(route("GET", "/jobs/abc"), Ok(Route::GetJob("abc".into())));
        assert_eq!(route("DELETE", "/jobs/abc"), Ok(Route::CancelJob("abc".into())));
        assert_eq!(route("POST", "/pipelines/nightly/runs"), Ok(Route::StartRun("nightly".into())));
        assert_eq!(route("GET", "/runs"), Ok(Route::ListRuns));
        assert_eq!(route("DELETE", "/runs/r1"), Ok(Route::CancelRun("r1".into())));
        assert_eq!(route("POST", "/runs/r1/redrive"), Ok(Route::RedriveRun("r1".into())));
        assert_eq!(route("GET", "/runs/r1/redrive").unwrap_err().status, 405);
        assert_eq!(route("GET", "/jobs"), Ok(Route::ListJobs));
        assert_eq!(route("GET", "/status"), Ok(Route::Status));
        // an id longer than any run or job id is a 404 naming the limit, before any lookup
        let long = "r".repeat(3_000);
        for (method, path) in [
            ("GET", format!("/runs/{long}")),
            ("DELETE", format!("/runs/{long}")),
            ("POST", format!("/runs/{long}/redrive")),
            ("GET", format!("/jobs/{long}")),
            ("DELETE", format!("/jobs/{long}")),
        ] {
            let refused = route(method, &path).unwrap_err();
            assert_eq!(refused.status, 404, "{method} {path}");
            assert!(refused.message.contains("ids are at most 256 characters"), "{}", refused.message);
            assert!(refused.message.len() < 200, "the id is not echoed whole");
        }
        assert_eq!(route("GET", &format!("/runs/{}", "r".repeat(256))), Ok(Route::GetRun("r".repeat(256))));
        assert_eq!(route("PUT", "/jobs").unwrap_err().status, 405);
        assert_eq!(route("GET", "/nothing").unwrap_err().status, 404);
    }

    #[test]
    fn bodies_name_the_field_at_fault() {
        let err = parse_body::<SubmitJobBody>(br#"{"jobDefinition": "x", "memroy": 1}"#).unwrap_err();
        assert!(err.message.contains("memroy"), "{err:?}");
        let err = parse_body::<SubmitJobBody>(b"{not json").unwrap_err();
        assert!(err.message.contains("not valid JSON"), "{err:?}");
        let err = parse_body::<SubmitJobBody>(br#"{"arraySize": "many"}"#).unwrap_err();
        assert!(err.message.starts_with("arraySize"), "{err:?}");
        assert!(parse_body::<SubmitJobBody>(b"").is_ok(), "an empty body is an empty object");
    }

    #[test]
    fn console_links_escape_like_the_console() {
        let url = log_console_url("us-east-1", "/aws/batch/job", "default/default/abc");
        assert!(url.ends_with("log-group/$252Faws$252Fbatch$252Fjob/log-events/default$252Fdefault$252Fabc"), "{url}");
    }

    #[test]
    fn a_redrive_size_the_stages_queue_can_never_run_is_refused() {
        let pipeline: batchline::model::pipeline::Pipeline = serde_json::from_value(json!({
            "name": "p", "onFailure": null,
            "stages": {"only": {"jobDefinition": "default", "size": {"vcpu": "0.25", "memoryMib": 512}, "parameters": {},
                                "queue": "default", "after": [], "maxResizes": 0, "maxVcpus": 2}}
        }))
        .unwrap();
        let run = batchline::model::run::Run::start("p-1".into(), &pipeline, "api", Default::default(), 0);
        let body = |vcpu: &str, memory: &str| -> RedriveBody {
            serde_json::from_value(json!({"sizes": {"only": {"vcpu": vcpu, "memory": memory}}})).unwrap()
        };
        let refused = redrive_sizes(&run, &body("4", "8192")).unwrap_err();
        assert_eq!(refused.status, 400);
        assert_eq!(
            refused.message,
            "sizes.only: vcpu: 4 vCPU / 8192 MiB is more than the stage's job queue can run: its compute environments \
             allow at most 2 vCPU (MaxVcpus)"
        );
        assert_eq!(redrive_sizes(&run, &body("2", "4096")).unwrap()["only"].to_string(), "2 vCPU / 4096 MiB");
    }
}
