//! A fixed-reply AWS endpoint for benchmarks: answers every call a function makes at once, and counts them.
//!
//! Pointed at with `AWS_ENDPOINT_URL`, it lets a benchmark measure a handler's own cost
//! (parsing, deciding, serialising, signing) without the emulator's. It speaks what
//! Batchline's functions and their Python baselines call: DynamoDB (JSON: `PutItem`,
//! `GetItem` — the stack configuration, for its item — `UpdateItem`, `DeleteItem`,
//! `BatchWriteItem`), CloudWatch `PutMetricData` (Smithy RPC v2 CBOR from Rust, the JSON or
//! Query protocol from boto3) and Batch `SubmitJob` (REST JSON). Every call is counted by
//! `service:Operation`.
//!
//! [`FixedReply::forwarding`] is the same counter in front of the emulator: every call is
//! passed on and its real answer returned, so a benchmark can count the calls of work that
//! needs real state (advancing a pipeline run).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::TcpListener;

use batchline::model::stack::StackConfig;
use batchline::store::dynamo::config_item;
use batchline::store::keys::CONFIG_PK;
use batchline_testkit::http::{read_request, write_response_keeping, Request};

#[derive(Clone)]
pub struct FixedReply {
    pub endpoint: String,
    counts: Arc<Mutex<BTreeMap<String, u64>>>,
    /// DynamoDB write units of the calls so far, from their items ([`crate::write_units`]).
    write_units: Arc<AtomicU64>,
    /// DynamoDB read units (in halves) of the forwarded calls so far, from their answers ([`crate::read_units`]).
    read_half_units: Arc<AtomicU64>,
    /// EventBridge events put so far, each 64 KB chunk of an entry one ([`chunks_of_put_events`]).
    event_chunks: Arc<AtomicU64>,
}

impl FixedReply {
    /// Starts the server; `GetItem` of the configuration item returns `config`, as the store writes it.
    pub async fn start(config: Option<StackConfig>) -> std::io::Result<FixedReply> {
        let config_document = config.as_ref().map(config_item_json).transpose().map_err(std::io::Error::other)?;
        FixedReply::serve(Arc::new(config_document), None).await
    }

    /// Starts a counter that passes every call on to `upstream` and returns its answer.
    pub async fn forwarding(upstream: &str) -> std::io::Result<FixedReply> {
        let upstream = Upstream { client: reqwest::Client::new(), url: upstream.trim_end_matches('/').to_owned() };
        FixedReply::serve(Arc::new(None), Some(Arc::new(upstream))).await
    }

    /// Accepts connections and answers each request, fixed or forwarded, counting it.
    async fn serve(config: Arc<Option<String>>, upstream: Option<Arc<Upstream>>) -> std::io::Result<FixedReply> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let counts: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
        let (write_units, read_half_units, event_chunks): (Arc<AtomicU64>, Arc<AtomicU64>, Arc<AtomicU64>) =
            Default::default();
        let (log, units, reads, chunks) =
            (counts.clone(), write_units.clone(), read_half_units.clone(), event_chunks.clone());
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (log, units, reads, chunks) = (log.clone(), units.clone(), reads.clone(), chunks.clone());
                let config = config.clone();
                let upstream = upstream.clone();
                // Connections are kept alive, as AWS's endpoints keep them.
                tokio::spawn(async move {
                    while let Some(request) = read_request(&mut stream).await {
                        let (operation, content_type, body) = answer(&request, config.as_ref().as_deref());
                        if let Some(dynamodb) = operation.strip_prefix("dynamodb:") {
                            units.fetch_add(crate::write_units::of_call(dynamodb, &request.body), Ordering::Relaxed);
                        }
                        if operation == "events:PutEvents" {
                            chunks.fetch_add(chunks_of_put_events(&request.body), Ordering::Relaxed);
                        }
                        if let Ok(mut counts) = log.lock() {
                            *counts.entry(operation.clone()).or_default() += 1;
                        }
                        match upstream.as_deref() {
                            Some(upstream) => {
                                let (status, headers, body) = upstream.forward(&request).await;
                                if let Some(dynamodb) = operation.strip_prefix("dynamodb:") {
                                    let half = crate::read_units::half_units_of_call(dynamodb, &request.body, &body);
                                    reads.fetch_add(half, Ordering::Relaxed);
                                }
                                let headers: Vec<(&str, &str)> =
                                    headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
                                write_response_keeping(&mut stream, status, &headers, &body, true).await;
                            }
                            None => {
                                let headers = [
                                    ("Content-Type", content_type),
                                    ("x-amzn-RequestId", "fixed-reply"),
                                    ("smithy-protocol", "rpc-v2-cbor"),
                                ];
                                write_response_keeping(&mut stream, 200, &headers, &body, true).await;
                            }
                        }
                    }
                });
            }
        });
        Ok(FixedReply { endpoint, counts, write_units, read_half_units, event_chunks })
    }

    /// Calls so far, by `service:Operation`.
    pub fn counts(&self) -> BTreeMap<String, u64> {
        self.counts.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// DynamoDB write units so far.
    pub fn write_units(&self) -> u64 {
        self.write_units.load(Ordering::Relaxed)
    }

    /// DynamoDB read units so far (forwarded calls only: a fixed reply reads nothing).
    pub fn read_units(&self) -> f64 {
        self.read_half_units.load(Ordering::Relaxed) as f64 / 2.0
    }

    /// EventBridge events put so far, as PutEvents bills them.
    pub fn event_chunks(&self) -> u64 {
        self.event_chunks.load(Ordering::Relaxed)
    }

    pub fn reset(&self) {
        if let Ok(mut counts) = self.counts.lock() {
            counts.clear();
        }
        for counter in [&self.write_units, &self.read_half_units, &self.event_chunks] {
            counter.store(0, Ordering::Relaxed);
        }
    }
}

/// The events a PutEvents request puts, as EventBridge bills them: each entry one event
/// per started 64 KB (its `Detail`, `DetailType`, `Source` and `Resources`; a request
/// that cannot be read, none).
fn chunks_of_put_events(body: &[u8]) -> u64 {
    let Ok(request) = serde_json::from_slice::<serde_json::Value>(body) else { return 0 };
    let entries = request["Entries"].as_array().into_iter().flatten();
    entries
        .map(|entry| {
            let text = |name: &str| entry[name].as_str().map_or(0, str::len);
            let resources: usize =
                entry["Resources"].as_array().into_iter().flatten().filter_map(|r| r.as_str()).map(str::len).sum();
            let bytes = text("Detail") + text("DetailType") + text("Source") + resources;
            bytes.div_ceil(64 * 1024).max(1) as u64
        })
        .sum()
}

/// Where forwarded calls go.
struct Upstream {
    client: reqwest::Client,
    url: String,
}

impl Upstream {
    /// Passes a request on; the answer's status, headers (less the framing ones, which the
    /// answer sets itself) and body.
    async fn forward(&self, request: &Request) -> (u16, Vec<(String, String)>, Vec<u8>) {
        let method = reqwest::Method::from_bytes(request.method.as_bytes()).unwrap_or(reqwest::Method::POST);
        let mut call = self.client.request(method, format!("{}{}", self.url, request.path)).body(request.body.clone());
        for (name, value) in &request.headers {
            if !["host", "content-length", "connection"].contains(&name.as_str()) {
                call = call.header(name, value);
            }
        }
        match call.send().await {
            Ok(reply) => {
                let status = reply.status().as_u16();
                let headers = reply
                    .headers()
                    .iter()
                    .filter(|(name, _)| !["content-length", "connection", "transfer-encoding"].contains(&name.as_str()))
                    .map(|(name, value)| (name.to_string(), value.to_str().unwrap_or_default().to_owned()))
                    .collect();
                (status, headers, reply.bytes().await.map(|b| b.to_vec()).unwrap_or_default())
            }
            Err(err) => (500, vec![], format!("forwarding failed: {err}").into_bytes()),
        }
    }
}

fn answer(request: &Request, config: Option<&str>) -> (String, &'static str, Vec<u8>) {
    let target = request.header("x-amz-target").unwrap_or_default();
    if let Some(operation) = target.strip_prefix("DynamoDB_20120810.") {
        let body = match operation {
            "GetItem" if String::from_utf8_lossy(&request.body).contains(&format!("\"{CONFIG_PK}\"")) => match config {
                Some(item) => format!(r#"{{"Item": {item}}}"#),
                None => "{}".to_owned(),
            },
            "BatchWriteItem" => r#"{"UnprocessedItems":{}}"#.to_owned(),
            _ => "{}".to_owned(),
        };
        return (format!("dynamodb:{operation}"), "application/x-amz-json-1.0", body.into_bytes());
    }
    if let Some(operation) = target.strip_prefix("GraniteServiceVersion20100801.") {
        return (format!("cloudwatch:{operation}"), "application/x-amz-json-1.0", b"{}".to_vec());
    }
    if let Some(operation) = request.path.strip_prefix("/service/GraniteServiceVersion20100801/operation/") {
        // An empty CBOR map.
        return (format!("cloudwatch:{operation}"), "application/cbor", vec![0xa0]);
    }
    if request.path.starts_with("/v1/submitjob") {
        let body = r#"{"jobArn":"arn:aws:batch:us-east-1:123456789012:job/fixed-reply","jobName":"fixed-reply","jobId":"fixed-reply"}"#;
        return ("batch:SubmitJob".to_owned(), "application/json", body.as_bytes().to_vec());
    }
    let form = String::from_utf8_lossy(&request.body);
    if let Some(action) = form.split('&').find_map(|p| p.strip_prefix("Action=")) {
        let body = format!(
            r#"<{action}Response xmlns="http://monitoring.amazonaws.com/doc/2010-08-01/"><ResponseMetadata><RequestId>fixed-reply</RequestId></ResponseMetadata></{action}Response>"#
        );
        return (format!("cloudwatch:{action}"), "text/xml", body.into_bytes());
    }
    if let Some((service, operation)) = target.split_once('.') {
        // Other JSON-protocol services (EventBridge's `AWSEvents.PutEvents`, SQS's
        // `AmazonSQS.SendMessage`), named by their IAM prefix.
        let service = match service {
            "AWSEvents" => "events".to_owned(),
            "AmazonSQS" => "sqs".to_owned(),
            other => other.to_lowercase(),
        };
        return (format!("{service}:{operation}"), "application/json", b"{}".to_vec());
    }
    if let Some(operation) = request.path.strip_prefix("/v1/") {
        // Batch's REST paths name the operation in lower case.
        let operation = operation.split('?').next().unwrap_or_default();
        return (format!("batch:{operation}"), "application/json", b"{}".to_vec());
    }
    if let Some(operation) = request.path.split("x-id=").nth(1) {
        // S3's REST calls name the operation in the query (`?x-id=GetObject`).
        let operation = operation.split('&').next().unwrap_or_default();
        return (format!("s3:{operation}"), "application/xml", vec![]);
    }
    if request.path.contains("list-type=2") {
        return ("s3:ListObjectsV2".to_owned(), "application/xml", vec![]);
    }
    (format!("unknown:{} {}", request.method, request.path), "application/json", b"{}".to_vec())
}

/// The configuration item in DynamoDB's JSON, made by the store's own codec.
fn config_item_json(config: &StackConfig) -> Result<String, String> {
    let item = config_item(config, "bench-environment").map_err(|e| e.to_string())?;
    let typed: serde_json::Map<String, serde_json::Value> = item
        .iter()
        .map(|(name, value)| match value.as_s() {
            Ok(text) => Ok((name.clone(), serde_json::json!({ "S": text }))),
            Err(_) => Err(format!("{name}: the configuration item holds only strings")),
        })
        .collect::<Result<_, _>>()?;
    Ok(serde_json::Value::Object(typed).to_string())
}
