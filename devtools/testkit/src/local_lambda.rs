//! A local Lambda: a function's real binary served through the Lambda Runtime API, called through the Invoke API.
//!
//! [`LocalLambda::start`] binds a loopback port and runs the binary with
//! `AWS_LAMBDA_RUNTIME_API` pointing at it (and the other variables Lambda sets), as the
//! Lambda service does. The same port answers the Invoke API
//! (`POST /2015-03-31/functions/NAME/invocations`): the payload is handed to the binary's
//! next `GET /runtime/invocation/next`, and its `/response` or `/error` becomes the Invoke
//! answer (an error as `X-Amz-Function-Error: Unhandled` with the error document, as
//! Lambda does). One invocation runs at a time, as in one Lambda execution environment.
//!
//! It also records when the process started and when it first asked for work, which is
//! Lambda's init time, for the benchmarks. The process is killed when the value is dropped.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio::sync::{oneshot, Notify};

use crate::http::{read_request, write_response, Request};

/// How an invocation ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Response(Value),
    /// The function reported an error (`errorType`, `errorMessage`).
    Error(Value),
}

struct Pending {
    request_id: String,
    payload: Vec<u8>,
}

#[derive(Default)]
struct Shared {
    queue: Mutex<VecDeque<Pending>>,
    arrived: Notify,
    waiting: Mutex<HashMap<String, oneshot::Sender<Outcome>>>,
    first_poll: Mutex<Option<Instant>>,
    init_error: Mutex<Option<String>>,
    timeout: Duration,
}

pub struct LocalLambda {
    pub name: String,
    pub address: String,
    shared: Arc<Shared>,
    child: Child,
    started: Instant,
    http: reqwest::Client,
}

impl LocalLambda {
    /// Starts the binary under a Runtime API of its own, with `environment` added to what
    /// Lambda sets. `timeout` is the function's timeout (its invocation deadline).
    /// The function's logs (stdout and stderr) go to `log`, or nowhere.
    pub async fn start(
        name: &str,
        binary: &Path,
        environment: &[(String, String)],
        timeout: Duration,
        log: Option<&Path>,
    ) -> std::io::Result<Self> {
        Self::start_command(name, binary, &[], None, environment, timeout, log).await
    }

    /// Like [`LocalLambda::start`], for a runtime started with arguments in a folder (a
    /// Python handler under `python -m awslambdaric module.handler`).
    pub async fn start_command(
        name: &str,
        program: &Path,
        args: &[&str],
        folder: Option<&Path>,
        environment: &[(String, String)],
        timeout: Duration,
        log: Option<&Path>,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?.to_string();
        let shared = Arc::new(Shared { timeout, ..Shared::default() });
        let server = shared.clone();
        let function = name.to_owned();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let server = server.clone();
                let function = function.clone();
                tokio::spawn(async move {
                    if let Some(request) = read_request(&mut stream).await {
                        let (status, headers, body) = serve(&server, &function, request).await;
                        let headers: Vec<(&str, &str)> =
                            headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                        write_response(&mut stream, status, &headers, &body).await;
                    }
                });
            }
        });
        let started = Instant::now();
        let mut command = Command::new(program);
        command.args(args);
        if let Some(folder) = folder {
            command.current_dir(folder);
        }
        let child = command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("AWS_LAMBDA_RUNTIME_API", &address)
            .env("AWS_LAMBDA_FUNCTION_NAME", name)
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_LAMBDA_LOG_GROUP_NAME", format!("/aws/lambda/{name}"))
            .env("AWS_LAMBDA_LOG_STREAM_NAME", "local")
            .env("AWS_LAMBDA_LOG_FORMAT", "JSON")
            .envs(environment.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log_to(log)?)
            .stderr(log_to(log)?)
            .kill_on_drop(true)
            .spawn()?;
        Ok(LocalLambda { name: name.to_owned(), address, shared, child, started, http: reqwest::Client::new() })
    }

    /// The function's Invoke API URL.
    pub fn invoke_url(&self) -> String {
        format!("http://{}/2015-03-31/functions/{}/invocations", self.address, self.name)
    }

    /// Invokes the function through the Invoke API and waits for its answer.
    pub async fn invoke(&self, payload: &Value) -> Result<Outcome, String> {
        let reply = self
            .http
            .post(self.invoke_url())
            .body(payload.to_string())
            .timeout(self.shared.timeout + Duration::from_secs(30))
            .send()
            .await
            .map_err(|e| format!("invoking {}: {e}", self.name))?;
        let failed = reply.headers().contains_key("x-amz-function-error");
        let status = reply.status();
        let body = reply.text().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("invoking {}: HTTP {status}: {body}", self.name));
        }
        let value: Value = serde_json::from_str(&body).map_err(|e| format!("{} answered {body:?}: {e}", self.name))?;
        Ok(if failed { Outcome::Error(value) } else { Outcome::Response(value) })
    }

    /// Process start to its first request for work: Lambda's init duration.
    pub async fn wait_until_ready(&self, limit: Duration) -> Result<Duration, String> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(at) = *self.shared.first_poll.lock().map_err(|e| e.to_string())? {
                return Ok(at - self.started);
            }
            if let Some(error) = self.shared.init_error.lock().map_err(|e| e.to_string())?.clone() {
                return Err(format!("{} failed to start: {error}", self.name));
            }
            if Instant::now() > deadline {
                return Err(format!("{} did not ask for work within {limit:?}", self.name));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// The process id (for reading its resource use).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Stops the function's process.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// `Root=1-<epoch seconds, hex>-<24 hex digits>;Sampled=1`, its digits from the request id.
fn trace_id(request_id: &str) -> String {
    let seconds = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
    let digits: String =
        request_id.chars().filter(char::is_ascii_hexdigit).chain(std::iter::repeat('0')).take(24).collect();
    format!("Root=1-{seconds:08x}-{};Sampled=1", digits.to_ascii_lowercase())
}

fn log_to(log: Option<&Path>) -> std::io::Result<Stdio> {
    match log {
        Some(path) => Ok(Stdio::from(std::fs::OpenOptions::new().create(true).append(true).open(path)?)),
        None => Ok(Stdio::null()),
    }
}

async fn serve(shared: &Shared, function: &str, request: Request) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let path = request.path.split('?').next().unwrap_or_default().to_owned();
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (request.method.as_str(), parts.as_slice()) {
        ("GET", ["2018-06-01", "runtime", "invocation", "next"]) => {
            if let Ok(mut first) = shared.first_poll.lock() {
                first.get_or_insert_with(Instant::now);
            }
            loop {
                let next = shared.queue.lock().ok().and_then(|mut q| q.pop_front());
                if let Some(pending) = next {
                    let deadline = SystemTime::now() + shared.timeout;
                    let deadline_ms = deadline.duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or_default();
                    let trace = trace_id(&pending.request_id);
                    let headers = vec![
                        ("Lambda-Runtime-Aws-Request-Id".to_owned(), pending.request_id),
                        ("Lambda-Runtime-Deadline-Ms".to_owned(), deadline_ms.to_string()),
                        (
                            "Lambda-Runtime-Invoked-Function-Arn".to_owned(),
                            format!("arn:aws:lambda:us-east-1:123456789012:function:{function}"),
                        ),
                        // A trace id of X-Ray's form, one per invocation, as Lambda gives
                        // a function with active tracing.
                        ("Lambda-Runtime-Trace-Id".to_owned(), trace),
                        ("Content-Type".to_owned(), "application/json".to_owned()),
                    ];
                    return (200, headers, pending.payload);
                }
                shared.arrived.notified().await;
            }
        }
        ("POST", ["2018-06-01", "runtime", "invocation", id, kind @ ("response" | "error")]) => {
            let body: Value = serde_json::from_slice(&request.body)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&request.body).to_string()));
            let outcome = if *kind == "response" { Outcome::Response(body) } else { Outcome::Error(body) };
            if let Some(waiter) = shared.waiting.lock().ok().and_then(|mut w| w.remove(*id)) {
                let _ = waiter.send(outcome);
            }
            (202, vec![], br#"{"status":"OK"}"#.to_vec())
        }
        ("POST", ["2018-06-01", "runtime", "init", "error"]) => {
            if let Ok(mut error) = shared.init_error.lock() {
                *error = Some(String::from_utf8_lossy(&request.body).to_string());
            }
            (202, vec![], br#"{"status":"OK"}"#.to_vec())
        }
        ("POST", ["2015-03-31", "functions", name, "invocations"]) if *name == function => {
            let request_id = crate::player::event_id();
            let (sender, receiver) = oneshot::channel();
            if let Ok(mut waiting) = shared.waiting.lock() {
                waiting.insert(request_id.clone(), sender);
            }
            if let Ok(mut queue) = shared.queue.lock() {
                queue.push_back(Pending { request_id, payload: request.body });
            }
            shared.arrived.notify_waiters();
            shared.arrived.notify_one();
            match tokio::time::timeout(shared.timeout, receiver).await {
                Ok(Ok(Outcome::Response(value))) => (200, vec![], value.to_string().into_bytes()),
                Ok(Ok(Outcome::Error(value))) => (
                    200,
                    vec![("X-Amz-Function-Error".to_owned(), "Unhandled".to_owned())],
                    value.to_string().into_bytes(),
                ),
                _ => {
                    let error = serde_json::json!({"errorType": "Sandbox.Timedout", "errorMessage": "Task timed out"});
                    (
                        200,
                        vec![("X-Amz-Function-Error".to_owned(), "Unhandled".to_owned())],
                        error.to_string().into_bytes(),
                    )
                }
            }
        }
        _ => (404, vec![], format!("no route {} {}", request.method, request.path).into_bytes()),
    }
}
