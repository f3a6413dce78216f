//! A fixed-reply AWS endpoint for benchmarks: answers every call a function makes at once, and counts them.
//!
//! Pointed at with `AWS_ENDPOINT_URL`, it lets a benchmark measure a handler's own cost
//! (parsing, deciding, serialising, signing) without the emulator's. It speaks what
//! Batchline's functions and their Python baselines call: DynamoDB (JSON: `PutItem`,
//! `GetItem` — the stack configuration, for its item — `UpdateItem`, `DeleteItem`,
//! `BatchWriteItem`), CloudWatch `PutMetricData` (Smithy RPC v2 CBOR from Rust, the JSON or
//! Query protocol from boto3) and Batch `SubmitJob` (REST JSON). Every call is counted by
//! `service:Operation`.

use std::collections::BTreeMap;
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
}

impl FixedReply {
    /// Starts the server; `GetItem` of the configuration item returns `config`, as the store writes it.
    pub async fn start(config: Option<StackConfig>) -> std::io::Result<FixedReply> {
        let config_document = config.as_ref().map(config_item_json).transpose().map_err(std::io::Error::other)?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let counts: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
        let log = counts.clone();
        let config = Arc::new(config_document);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let log = log.clone();
                let config = config.clone();
                // Connections are kept alive, as AWS's endpoints keep them.
                tokio::spawn(async move {
                    while let Some(request) = read_request(&mut stream).await {
                        let (operation, content_type, body) = answer(&request, config.as_ref().as_deref());
                        if let Ok(mut counts) = log.lock() {
                            *counts.entry(operation).or_default() += 1;
                        }
                        let headers = [
                            ("Content-Type", content_type),
                            ("x-amzn-RequestId", "fixed-reply"),
                            ("smithy-protocol", "rpc-v2-cbor"),
                        ];
                        write_response_keeping(&mut stream, 200, &headers, &body, true).await;
                    }
                });
            }
        });
        Ok(FixedReply { endpoint, counts })
    }

    /// Calls so far, by `service:Operation`.
    pub fn counts(&self) -> BTreeMap<String, u64> {
        self.counts.lock().map(|c| c.clone()).unwrap_or_default()
    }

    pub fn reset(&self) {
        if let Ok(mut counts) = self.counts.lock() {
            counts.clear();
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
