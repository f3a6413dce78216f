//! The local stack, served: the HTTP API in front of the real submit binary, Batch played continuously, its events routed by the template's rules and lanes to the real job-events binary, and each job's log in CloudWatch Logs.
//!
//! [`LocalApi`] does what API Gateway does for the stack (`sam local start-api` without
//! Docker): each HTTP request becomes an API Gateway v2 (payload 2.0) event, submit's
//! binary (under the local Lambda Runtime API) handles it, and its answer becomes the HTTP
//! response. IAM authorisation is API Gateway's: a request's SigV4 signature is not checked
//! here.
//!
//! [`LocalEvents`] does what AWS Batch, EventBridge and Lambda's event sources do after
//! SubmitJob: every [`PLAY_EVERY`] it plays the jobs new in the stack's queues with the
//! Batch event player (their events on its simulated clock, so a job "runs" in no time),
//! settles them in the emulator (so Batch reports them as ended), writes each attempt's log
//! lines to the job's log stream in the emulator's CloudWatch Logs, and puts the events on
//! the default bus, where template.yaml's rules route them to job-events' queues; S3's
//! Object Created events take the template's route to submit the same way. Jobs a test or
//! a user holds in RUNNABLE stay there.
//!
//! `scripts/local-stack` serves these for the `local` stack; the demo serves them for a
//! stack of its own and is then only a client (the API, S3, CloudWatch); the command
//! line's tests serve them for theirs.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use batchline_testkit::event_source::EventSource;
use batchline_testkit::http::{read_request, write_response};
use batchline_testkit::lanes::{coalesce_lane, map_lane, template_lanes, trigger_lane, Lane};
use batchline_testkit::local_lambda::{LocalLambda, Outcome};
use batchline_testkit::player::{event_id, Delivery, Player, StateChange};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// How often the local Batch looks for new jobs.
pub const PLAY_EVERY: Duration = Duration::from_millis(500);

/// The HTTP API, served on a loopback port until dropped.
pub struct LocalApi {
    pub url: String,
    task: JoinHandle<()>,
}

impl LocalApi {
    /// Serves the API on `address` (`127.0.0.1:0` picks a free port).
    pub async fn serve(submit: Arc<LocalLambda>, address: &str) -> Result<LocalApi, String> {
        let listener = TcpListener::bind(address).await.map_err(|e| format!("binding {address}: {e}"))?;
        let url = format!("http://{}", listener.local_addr().map_err(|e| e.to_string())?);
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let submit = submit.clone();
                tokio::spawn(async move {
                    let Some(request) = read_request(&mut stream).await else { return };
                    let (status, body) = answer(&submit, &request).await;
                    write_response(&mut stream, status, &[("content-type", "application/json")], body.as_bytes()).await;
                });
            }
        });
        Ok(LocalApi { url, task })
    }
}

impl Drop for LocalApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The API Gateway v2 event of an HTTP request.
pub fn gateway_event(request: &batchline_testkit::http::Request) -> Value {
    let (path, query) = request.path.split_once('?').unwrap_or((request.path.as_str(), ""));
    let parameters: serde_json::Map<String, Value> =
        query.split('&').filter_map(|pair| pair.split_once('=')).map(|(k, v)| (decode(k), json!(decode(v)))).collect();
    let headers: serde_json::Map<String, Value> =
        request.headers.iter().map(|(name, value)| (name.clone(), json!(value))).collect();
    json!({
        "version": "2.0", "routeKey": "$default", "rawPath": path, "rawQueryString": query,
        "headers": headers, "queryStringParameters": parameters,
        "requestContext": {"http": {"method": request.method, "path": path, "protocol": "HTTP/1.1", "sourceIp": "127.0.0.1"},
                           "requestId": event_id(), "stage": "$default"},
        "body": String::from_utf8_lossy(&request.body), "isBase64Encoded": false,
    })
}

/// A percent-encoded query part, decoded (`+` is a space).
fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%' && i + 3 <= bytes.len())
            .then(|| std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|hex| u8::from_str_radix(hex, 16).ok()))
            .flatten();
        match (escaped, bytes[i]) {
            (Some(byte), _) => {
                out.push(byte);
                i += 3;
                continue;
            }
            (None, b'+') => out.push(b' '),
            (None, other) => out.push(other),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn answer(submit: &LocalLambda, request: &batchline_testkit::http::Request) -> (u16, String) {
    match submit.invoke(&gateway_event(request)).await {
        Ok(Outcome::Response(response)) => {
            let status = response["statusCode"].as_u64().unwrap_or(500) as u16;
            (status, response["body"].as_str().unwrap_or_default().to_owned())
        }
        Ok(Outcome::Error(error)) => {
            (500, json!({"error": {"code": "InternalError", "message": error.to_string()}}).to_string())
        }
        Err(err) => (502, json!({"error": {"code": "BadGateway", "message": err}}).to_string()),
    }
}

/// A stack served: its API and its events, until dropped.
pub struct ServedStack {
    pub api: LocalApi,
    _events: LocalEvents,
}

impl ServedStack {
    /// Serves the API on `address` (`127.0.0.1:0` picks a free port) in front of a submit
    /// process of its own, and plays the stack's events as `routing` says.
    pub async fn start(
        sdk: &aws_config::SdkConfig,
        launcher: &Launcher,
        routing: Routing,
        address: &str,
    ) -> Result<ServedStack, String> {
        let submit = Arc::new(launcher.start("batchline-submit", "batchline-submit-api").await?);
        let api = LocalApi::serve(submit, address).await?;
        let events = LocalEvents::start(sdk, launcher, routing).await?;
        Ok(ServedStack { api, _events: events })
    }
}

/// Starts the functions' built binaries (`target/debug`) with one stack's environment,
/// each logging to a file of its own.
#[derive(Debug, Clone)]
pub struct Launcher {
    /// `NAME=value` pairs: the template's variables, and the emulator's endpoint and credentials.
    pub environment: Vec<(String, String)>,
    pub log_dir: PathBuf,
    /// The stack registered with the emulator's IAM evaluation, when the functions are to
    /// sign as their own roles of it (each its own access key id) rather than as `testing`.
    pub iam_stack: Option<String>,
}

impl Launcher {
    /// The launcher of the stack whose table is `table`, logging under `log_dir`.
    pub fn new(table: &str, log_dir: &Path) -> Result<Launcher, String> {
        std::fs::create_dir_all(log_dir).map_err(|e| format!("{}: {e}", log_dir.display()))?;
        Ok(Launcher { environment: crate::local_environment(table)?, log_dir: log_dir.to_owned(), iam_stack: None })
    }

    /// The same, each function signing as its role of `stack` (registered with the
    /// emulator's IAM evaluation): what it may do is what the template's policies allow.
    pub fn signing_as_roles_of(mut self, stack: &str) -> Launcher {
        self.iam_stack = Some(stack.to_owned());
        self
    }

    /// Starts `binary` (its log: `<label>.log`) and waits until it asks for work.
    pub async fn start(&self, binary: &str, label: &str) -> Result<LocalLambda, String> {
        let log = self.log_dir.join(format!("{label}.log"));
        let mut environment = self.environment.clone();
        if let Some(stack) = &self.iam_stack {
            let principal = binary.trim_start_matches("batchline-");
            environment.retain(|(name, _)| name != "AWS_ACCESS_KEY_ID");
            environment.push(("AWS_ACCESS_KEY_ID".to_owned(), format!("iam.{principal}.{stack}")));
        }
        let lambda = LocalLambda::start(binary, &crate::binary(binary)?, &environment, timeout_of(binary), Some(&log))
            .await
            .map_err(|e| format!("starting {binary}: {e}"))?;
        lambda.wait_until_ready(Duration::from_secs(30)).await?;
        Ok(lambda)
    }
}

/// The function's timeout in template.yaml (the deadline its invocations get).
fn timeout_of(binary: &str) -> Duration {
    Duration::from_secs(match binary {
        "batchline-bootstrap" => 900,
        "batchline-job-events" => 300,
        "batchline-map" => 900,
        _ => 60,
    })
}

/// What [`LocalEvents`] plays for a stack.
#[derive(Debug, Clone)]
pub struct Routing {
    /// Names the lanes' queues and rules: `<name>-<the queue's logical id>`.
    pub name: String,
    /// The job queues (ARNs) whose jobs Batch plays; job-events' lanes take their events.
    pub job_queues: Vec<String>,
    /// The input bucket and prefix whose Object Created events reach submit, if any.
    pub trigger: Option<(String, String)>,
}

/// Batch, EventBridge and Lambda's SQS event sources, played for a stack until dropped.
///
/// The lanes are template.yaml's (see `batchline_testkit::lanes`): its rules on the
/// default bus route the Batch events the player puts there to job-events' two queues, and
/// S3's Object Created events (which the emulator's S3 puts there itself) to submit's
/// trigger queue; each queue has its own event source and function process, reading it
/// with the template's BatchSize and batching window. A function that fails a whole batch
/// leaves it in the queue for redelivery, as Lambda does.
pub struct LocalEvents {
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
}

impl LocalEvents {
    /// Wires the lanes, starts a function process per lane, and plays the queues every [`PLAY_EVERY`].
    pub async fn start(
        sdk: &aws_config::SdkConfig,
        launcher: &Launcher,
        routing: Routing,
    ) -> Result<LocalEvents, String> {
        let sqs = aws_sdk_sqs::Client::new(sdk);
        let events = aws_sdk_eventbridge::Client::new(sdk);
        let mut lanes: Vec<(Lane, &str)> =
            template_lanes(&routing.job_queues)?.into_iter().map(|lane| (lane, "batchline-job-events")).collect();
        if let Some((bucket, prefix)) = &routing.trigger {
            lanes.push((trigger_lane(bucket, prefix)?, "batchline-submit"));
        }
        // Map stages' S3 work, which the run driver asks for, and the objects of coalescing
        // rules, which submit forwards: both on the stack's own bus.
        lanes.push((map_lane(&routing.name)?, "batchline-map"));
        lanes.push((coalesce_lane(&routing.name)?, "batchline-map"));
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for (lane, binary) in lanes {
            let name = format!("{}-{}", routing.name, lane.queue);
            let wired = lane.wire(&sqs, &events, "default", &name).await?;
            let function = Arc::new(launcher.start(binary, &format!("{binary}-{}", lane.queue)).await?);
            let source = EventSource::new(sqs.clone(), wired, function);
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if let Err(err) = source.run(&stop).await {
                        // What Lambda does with a failed batch: it comes back later.
                        eprintln!("local events: {name}: {err}");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }));
        }
        let (sdk, queues, stop_playing) = (sdk.clone(), routing.job_queues, stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut player = Player::new(&sdk);
            // New jobs wait until played, as on AWS, instead of moto's instant SUCCEEDED.
            if let Err(err) = player.leave_unplayed(&queues).await {
                eprintln!("local batch: {err}");
            }
            let logs = aws_sdk_cloudwatchlogs::Client::new(&sdk);
            let batch = aws_sdk_batch::Client::new(&sdk);
            let events = aws_sdk_eventbridge::Client::new(&sdk);
            while !stop_playing.load(Ordering::Relaxed) {
                for queue in &queues {
                    if let Err(err) = play_once(&mut player, &batch, &logs, &events, queue).await {
                        eprintln!("local batch: {queue}: {err}");
                    }
                }
                tokio::time::sleep(PLAY_EVERY).await;
            }
        }));
        Ok(LocalEvents { stop, tasks })
    }
}

impl Drop for LocalEvents {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Plays what is new in `queue`: the jobs settled as Batch reports them, each ended
/// attempt's log written, the events put on the default bus (the template's rules take
/// them from there).
async fn play_once(
    player: &mut Player,
    batch: &aws_sdk_batch::Client,
    logs: &aws_sdk_cloudwatchlogs::Client,
    events: &aws_sdk_eventbridge::Client,
    queue: &str,
) -> Result<(), String> {
    let changes = player.play_queue(queue).await.map_err(|e| e.to_string())?;
    if changes.is_empty() {
        return Ok(());
    }
    // A job's log is written before Batch reports its end, as a container's is: a reader who
    // sees the job ended (`batchline logs --follow`) then finds the whole log.
    for change in changes.iter().filter(|c| matches!(c.status, "SUCCEEDED" | "FAILED")) {
        write_log(batch, logs, change).await?;
    }
    player.settle(&changes).await.map_err(|e| e.to_string())?;
    Delivery::of(&changes).to_event_bus(events, "default").await.map_err(|e| e.to_string())
}

/// Writes what the player played of each attempt of an ended job to its log stream: the
/// lines a real container would have written are not known, so the log says what ran.
async fn write_log(
    batch: &aws_sdk_batch::Client,
    logs: &aws_sdk_cloudwatchlogs::Client,
    change: &StateChange,
) -> Result<(), String> {
    let detail = &change.event["detail"];
    let described = batch.describe_jobs().jobs(&change.job_id).send().await.map_err(|e| e.to_string())?;
    let group = described
        .jobs()
        .first()
        .and_then(|j| j.container())
        .and_then(|c| c.log_configuration())
        .and_then(|l| l.options())
        .and_then(|o| o.get("awslogs-group"))
        .cloned()
        .unwrap_or_else(|| batchline::model::stack::DEFAULT_LOG_GROUP.to_owned());
    let _ = logs.create_log_group().log_group_name(&group).send().await;
    for (number, attempt) in detail["attempts"].as_array().map(Vec::as_slice).unwrap_or_default().iter().enumerate() {
        let Some(stream) = attempt["container"]["logStreamName"].as_str() else { continue };
        let _ = logs.create_log_stream().log_group_name(&group).log_stream_name(stream).send().await;
        let started = attempt["startedAt"].as_i64().unwrap_or_default();
        let stopped = attempt["stoppedAt"].as_i64().unwrap_or(started);
        let exit = &attempt["container"]["exitCode"];
        let reason = attempt["container"]["reason"].as_str().unwrap_or("");
        let lines = [
            (started, format!("batchline job {} ({}) attempt {} started", change.job_id, change.job_name, number + 1)),
            (stopped, format!("attempt {} exited with code {exit} {reason}", number + 1).trim_end().to_owned()),
        ];
        let events: Vec<aws_sdk_cloudwatchlogs::types::InputLogEvent> = lines
            .into_iter()
            .filter_map(|(at, message)| {
                aws_sdk_cloudwatchlogs::types::InputLogEvent::builder().timestamp(at).message(message).build().ok()
            })
            .collect();
        logs.put_log_events()
            .log_group_name(&group)
            .log_stream_name(stream)
            .set_log_events(Some(events))
            .send()
            .await
            .map_err(|e| batchline::Error::aws("PutLogEvents", e).to_string())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_becomes_the_gateway_event_submit_reads() {
        let request = batchline_testkit::http::Request {
            method: "GET".into(),
            path: "/runs?pipeline=orders&limit=5".into(),
            headers: vec![("idempotency-key".into(), "k1".into())],
            body: vec![],
        };
        let event = gateway_event(&request);
        assert_eq!(event["rawPath"], "/runs");
        assert_eq!(event["queryStringParameters"], json!({"pipeline": "orders", "limit": "5"}));
        assert_eq!(event["requestContext"]["http"]["method"], "GET");
        assert_eq!(event["headers"]["idempotency-key"], "k1");
        assert_eq!(decode("a%20b%2Fc+d"), "a b/c d");
    }
}
