//! The price list the orchestration bill uses (`devtools/bench/prices.yaml`, or the file `BENCH_PRICES` names), and what a counted scenario costs under it.
//!
//! [`Usage`] turns what a scenario counted into billable quantities per service: Lambda
//! requests and GB-seconds (each function at the template's memory size; a duration of
//! the CPU time measured per invocation plus a round trip per AWS call, rounded up to the
//! millisecond), DynamoDB write and read units, SQS requests (EventBridge's send of each
//! lane message, the event source's receives and deletes, and the functions' own calls),
//! EventBridge events (the functions' PutEvents; S3's object events; Batch's are free),
//! PutMetricData calls, CloudWatch Logs bytes, X-Ray traces, HTTP API requests and S3
//! requests. [`price`] prices them, one line per service.

use std::collections::BTreeMap;
use std::path::PathBuf;

use batchline_testkit::emulator::repo_root;

use crate::bill::Counted;
use crate::maps::ProcessCalls;

/// A price list and the date it was read.
#[derive(Debug, Clone)]
pub struct Prices {
    pub read_on: String,
    pub path: PathBuf,
    document: serde_yaml::Value,
}

impl Prices {
    /// The file `BENCH_PRICES` names, or `devtools/bench/prices.yaml`.
    pub fn load() -> Result<Prices, String> {
        let path = std::env::var_os("BENCH_PRICES")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_root().join("devtools/bench/prices.yaml"));
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        Prices::parse(&text, path)
    }

    pub fn parse(text: &str, path: PathBuf) -> Result<Prices, String> {
        let document: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| format!("{}: {e}", path.display()))?;
        let read_on = document["read_on"].as_str().ok_or_else(|| format!("{}: no read_on date", path.display()))?;
        Ok(Prices { read_on: read_on.to_owned(), path, document })
    }

    /// One figure: `section.name`, an error naming it when it is missing.
    pub fn get(&self, section: &str, name: &str) -> Result<f64, String> {
        self.document[section][name]
            .as_f64()
            .ok_or_else(|| format!("{}: no number at {section}.{name}", self.path.display()))
    }
}

/// Billable quantities of a scenario, per service.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Usage {
    pub lambda_requests: f64,
    pub lambda_gb_seconds: f64,
    pub write_units: f64,
    pub read_units: f64,
    pub sqs_requests: f64,
    pub custom_events: f64,
    pub s3_object_events: f64,
    pub put_metric_data: f64,
    pub log_gb: f64,
    pub traces: f64,
    pub api_requests: f64,
    pub s3_put_list: f64,
    pub s3_get: f64,
}

/// The template's memory size of the function a binary is, in MB.
pub fn memory_mb(template: &serde_yaml::Value, binary: &str) -> f64 {
    let logical = match binary {
        "batchline-submit" => "SubmitFunction",
        "batchline-job-events" => "JobEventsFunction",
        "batchline-map" => "MapFunction",
        _ => "BootstrapFunction",
    };
    let own = &template["Resources"][logical]["Properties"]["MemorySize"];
    own.as_f64().or_else(|| template["Globals"]["Function"]["MemorySize"].as_f64()).unwrap_or(128.0)
}

/// The functions' processes' share of a scenario's usage.
pub fn process_usage(process: &ProcessCalls, template: &serde_yaml::Value, prices: &Prices) -> Result<Usage, String> {
    let calls = |wanted: &dyn Fn(&str) -> bool| {
        process.calls.iter().filter(|(op, _)| wanted(op)).map(|(_, n)| *n as f64).sum::<f64>()
    };
    let all_calls = calls(&|_| true);
    let invocations = process.invocations.max(1) as f64;
    let call_ms = prices.get("assumptions", "aws_call_ms")?;
    let per_invocation_ms = (process.cpu_seconds * 1000.0 + all_calls * call_ms) / invocations;
    let billed_seconds = per_invocation_ms.ceil() / 1000.0 * process.invocations as f64;
    let platform_bytes = prices.get("assumptions", "platform_log_bytes_per_invocation")? * process.invocations as f64;
    Ok(Usage {
        lambda_requests: process.invocations as f64,
        lambda_gb_seconds: billed_seconds * memory_mb(template, &process.binary) / 1024.0,
        write_units: process.write_units as f64,
        read_units: process.read_units,
        // Each message came into the lane's queue with one SendMessage (EventBridge's).
        sqs_requests: (process.messages + process.lane_sqs_calls) as f64 + calls(&|op| op.starts_with("sqs:")),
        custom_events: process.event_chunks as f64,
        put_metric_data: calls(&|op| op == "cloudwatch:PutMetricData"),
        log_gb: (process.log_bytes as f64 + platform_bytes) / 1e9,
        traces: process.invocations as f64 * prices.get("assumptions", "traced_share")?,
        s3_put_list: calls(&|op| ["s3:PutObject", "s3:ListObjectsV2", "s3:CopyObject"].contains(&op)),
        s3_get: calls(&|op| ["s3:GetObject", "s3:HeadObject"].contains(&op)),
        ..Usage::default()
    })
}

impl std::ops::AddAssign for Usage {
    fn add_assign(&mut self, other: Usage) {
        self.lambda_requests += other.lambda_requests;
        self.lambda_gb_seconds += other.lambda_gb_seconds;
        self.write_units += other.write_units;
        self.read_units += other.read_units;
        self.sqs_requests += other.sqs_requests;
        self.custom_events += other.custom_events;
        self.s3_object_events += other.s3_object_events;
        self.put_metric_data += other.put_metric_data;
        self.log_gb += other.log_gb;
        self.traces += other.traces;
        self.api_requests += other.api_requests;
        self.s3_put_list += other.s3_put_list;
        self.s3_get += other.s3_get;
    }
}

/// A scenario's whole usage: its processes', its API requests and its object events.
pub fn usage(counted: &Counted, template: &serde_yaml::Value, prices: &Prices) -> Result<Usage, String> {
    let mut total = Usage {
        api_requests: counted.api_requests as f64,
        s3_object_events: counted.object_events as f64,
        ..Usage::default()
    };
    for process in &counted.processes {
        total += process_usage(process, template, prices)?;
    }
    Ok(total)
}

/// One line of a bill: a service's quantity, its price per unit of quantity, and the cost.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub service: &'static str,
    pub quantity: f64,
    /// What the quantity counts ("requests", "GB-s", ...).
    pub unit: &'static str,
    pub unit_price: f64,
    pub cost: f64,
}

/// The bill of a usage: one line per service, in a fixed order (lines of zero included,
/// so bills line up side by side).
pub fn price(usage: &Usage, prices: &Prices) -> Result<Vec<Line>, String> {
    let per = |section: &str, name: &str, per: f64| prices.get(section, name).map(|p| p / per);
    let rows: [(&'static str, f64, &'static str, f64); 13] = [
        ("Lambda requests", usage.lambda_requests, "requests", per("lambda", "per_million_requests", 1e6)?),
        ("Lambda duration (arm64)", usage.lambda_gb_seconds, "GB-s", per("lambda", "per_gb_second_arm64", 1.0)?),
        ("DynamoDB writes", usage.write_units, "write units", per("dynamodb", "per_million_write_units", 1e6)?),
        ("DynamoDB reads", usage.read_units, "read units", per("dynamodb", "per_million_read_units", 1e6)?),
        ("SQS", usage.sqs_requests, "requests", per("sqs", "per_million_requests", 1e6)?),
        (
            "EventBridge, Batchline's events",
            usage.custom_events,
            "events",
            per("eventbridge", "per_million_custom_events", 1e6)?,
        ),
        (
            "EventBridge, S3 object events",
            usage.s3_object_events,
            "events",
            per("eventbridge", "per_million_s3_object_events", 1e6)?,
        ),
        (
            "CloudWatch PutMetricData",
            usage.put_metric_data,
            "calls",
            per("cloudwatch", "per_thousand_put_metric_data", 1e3)?,
        ),
        ("CloudWatch Logs", usage.log_gb, "GB", per("cloudwatch", "per_gb_logs_ingested", 1.0)?),
        ("X-Ray", usage.traces, "traces", per("xray", "per_million_traces", 1e6)?),
        (
            "API Gateway (HTTP API)",
            usage.api_requests,
            "requests",
            per("api_gateway", "per_million_http_api_requests", 1e6)?,
        ),
        ("S3 PUT/LIST", usage.s3_put_list, "requests", per("s3", "per_thousand_put_list", 1e3)?),
        ("S3 GET", usage.s3_get, "requests", per("s3", "per_thousand_get", 1e3)?),
    ];
    Ok(rows
        .into_iter()
        .map(|(service, quantity, unit, unit_price)| Line {
            service,
            quantity,
            unit,
            unit_price,
            cost: quantity * unit_price,
        })
        .collect())
}

/// Calls by `service:Operation` over a scenario's processes.
pub fn calls(counted: &Counted) -> BTreeMap<String, u64> {
    let mut all = BTreeMap::new();
    for (operation, n) in counted.processes.iter().flat_map(|p| p.calls.iter()) {
        *all.entry(operation.clone()).or_default() += n;
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prices(dynamodb_write: f64) -> Prices {
        let text = std::fs::read_to_string(repo_root().join("devtools/bench/prices.yaml")).unwrap();
        let text =
            text.replace("per_million_write_units: 0.625", &format!("per_million_write_units: {dynamodb_write}"));
        Prices::parse(&text, PathBuf::from("prices.yaml")).unwrap()
    }

    #[test]
    fn the_price_list_prices_every_line_and_a_changed_price_changes_the_total() {
        let usage = Usage {
            write_units: 3_000_000.0,
            lambda_requests: 1_000_000.0,
            sqs_requests: 2_000_000.0,
            ..Usage::default()
        };
        let total = |p: &Prices| price(&usage, p).unwrap().iter().map(|l| l.cost).sum::<f64>();
        let listed = prices(0.625);
        assert_eq!(listed.read_on, "2026-12-07");
        // 3 M write units at $0.625/M, 1 M requests at $0.20/M, 2 M SQS requests at $0.40/M.
        assert!((total(&listed) - (1.875 + 0.2 + 0.8)).abs() < 1e-9, "{}", total(&listed));
        assert!((total(&prices(1.25)) - (3.75 + 0.2 + 0.8)).abs() < 1e-9);
    }

    #[test]
    fn a_missing_price_is_an_error_that_names_it() {
        let broken = Prices::parse("read_on: \"2026-12-07\"\nlambda: {}\n", PathBuf::from("p.yaml")).unwrap();
        let error = price(&Usage::default(), &broken).unwrap_err();
        assert!(error.contains("lambda.per_million_requests"), "{error}");
        assert!(Prices::parse("lambda: {}\n", PathBuf::from("p.yaml")).unwrap_err().contains("read_on"));
    }

    #[test]
    fn a_process_is_billed_its_invocations_duration_lane_messages_and_units() {
        let template: serde_yaml::Value = serde_yaml::from_str(
            "Globals: {Function: {MemorySize: 256}}\nResources: {MapFunction: {Properties: {MemorySize: 512}}}",
        )
        .unwrap();
        let process = ProcessCalls {
            binary: "batchline-map".into(),
            messages: 10,
            invocations: 2,
            lane_sqs_calls: 3,
            calls: [("dynamodb:PutItem".to_owned(), 4), ("sqs:SendMessage".to_owned(), 1)].into(),
            cpu_seconds: 0.010,
            write_units: 8,
            ..ProcessCalls::default()
        };
        let usage = process_usage(&process, &template, &prices(0.625)).unwrap();
        assert_eq!(usage.sqs_requests, 14.0);
        assert_eq!(usage.write_units, 8.0);
        // (10 ms CPU + 5 calls × 8 ms) / 2 invocations = 25 ms each, at 0.5 GB.
        assert!((usage.lambda_gb_seconds - 0.025 * 2.0 * 0.5).abs() < 1e-12, "{}", usage.lambda_gb_seconds);
        assert_eq!(memory_mb(&template, "batchline-submit"), 256.0);
    }
}
