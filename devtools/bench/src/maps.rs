//! What a map stage costs per 1,000 children: each function's AWS calls, by operation, for one map run from its start to its end through the template's lanes.
//!
//! A run of a pipeline whose one stage maps over a manifest of [`CHILDREN`] lines (one
//! array job) is started through submit's API (the release binary). The map worker (the
//! release binary) takes its work from the template's map lane on the default bus;
//! job-events (one release process per lane, as in [`crate::lanes`]) takes the played job
//! events, every child's included, from the template's two job-event lanes on a bus of
//! their own. Each process's calls go through a counting forwarder. What grows with a map
//! is its children's events (the player plays four or five per child), which only the
//! metrics lane receives; the rest is per array or per run, and shows here divided by the
//! map's size.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_config::SdkConfig;
use batchline::store::{DynamoStore, RunStore};
use batchline_testkit::emulator::{endpoint, repo_root, unique_name};
use batchline_testkit::event_source::EventSource;
use batchline_testkit::lanes::{map_lane, template_lanes};
use batchline_testkit::local_lambda::{LocalLambda, Outcome};
use batchline_testkit::player::{Delivery, Player};
use serde_json::{json, Value};

use crate::fixed_reply::FixedReply;

/// Children of the measured map (one array). Every child's events go through the
/// emulator's bus and the metrics lane, which take it a few dozen events a second: 2,000
/// children took over twenty minutes. What is paid per run or per array (the expansion,
/// the SubmitJob, the close) shows here divided by 250, four times its share at 1,000.
pub const CHILDREN: usize = 250;
/// The pipeline the benchmark's stack declares for it.
pub const MAP_PIPELINE: &str = "bench-map";
/// Where the manifest is, under the stack's input bucket.
const MANIFEST_KEY: &str = "bench-map/items.txt";

/// The pipeline: one map stage over the manifest.
pub fn pipeline(bucket: &str) -> Value {
    json!({"Stages": {"each": {"JobDefinition": "default", "Map": {"Manifest": format!("s3://{bucket}/{MANIFEST_KEY}")}}}})
}

/// The calls of one map's run, per process.
#[derive(Debug, Default)]
pub struct MapReport {
    pub children: usize,
    /// Job events played (parents' and children's).
    pub job_events: usize,
    /// Per process (function and lane), messages delivered and calls by operation.
    pub processes: Vec<(String, usize, BTreeMap<String, u64>)>,
    pub seconds: f64,
}

/// A process of a function whose calls are counted.
struct Counted {
    label: String,
    counter: FixedReply,
    function: Arc<LocalLambda>,
    delivered: Arc<AtomicUsize>,
}

async fn counted(label: &str, binary: &str, environment: &[(String, String)]) -> Result<Counted, String> {
    let counter = FixedReply::forwarding(endpoint()).await.map_err(|e| e.to_string())?;
    let mut environment = environment.to_vec();
    environment.retain(|(name, _)| name != "AWS_ENDPOINT_URL");
    environment.push(("AWS_ENDPOINT_URL".into(), counter.endpoint.clone()));
    let log = repo_root().join("target/bench").join(format!("maps-{label}.log"));
    let program = repo_root().join("target/release").join(binary);
    let function = LocalLambda::start(binary, &program, &environment, Duration::from_secs(900), Some(&log))
        .await
        .map_err(|e| format!("starting {binary}: {e}"))?;
    function.wait_until_ready(Duration::from_secs(30)).await?;
    Ok(Counted { label: label.to_owned(), counter, function: Arc::new(function), delivered: Arc::default() })
}

/// Runs one map of [`CHILDREN`] children to its end and counts every call on the way.
/// `stack` is the stack's `NamePrefix`, `queue_arn` its default job queue.
pub async fn measure(
    sdk: &SdkConfig,
    table: &str,
    environment: &[(String, String)],
    stack: &str,
    bucket: &str,
    queue_arn: &str,
) -> Result<MapReport, String> {
    let s3 = aws_sdk_s3::Client::from_conf(aws_sdk_s3::config::Builder::from(sdk).force_path_style(true).build());
    let _ = s3.create_bucket().bucket(bucket).send().await; // there already, or made now
    let manifest: Vec<String> = (0..CHILDREN).map(|i| format!("item-{i}")).collect();
    let body = aws_sdk_s3::primitives::ByteStream::from(manifest.join("\n").into_bytes());
    s3.put_object()
        .bucket(bucket)
        .key(MANIFEST_KEY)
        .body(body)
        .send()
        .await
        .map_err(|e| batchline::Error::aws("PutObject", e).to_string())?;

    let sqs = aws_sdk_sqs::Client::new(sdk);
    let events = aws_sdk_eventbridge::Client::new(sdk);
    let bus = crate::lanes::new_bus(&events, "bench-maps").await?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut processes = Vec::new();
    let mut sources = Vec::new();
    let mut wired = vec![("map-worker", "batchline-map", map_lane(stack)?, "default".to_owned())];
    for lane in template_lanes(&[queue_arn.to_owned()])? {
        wired.push(("job-events", "batchline-job-events", lane, bus.clone()));
    }
    for (label, binary, lane, on_bus) in wired {
        let label = format!("{label} ({})", lane.queue);
        let lane = lane.wire(&sqs, &events, &on_bus, &unique_name("bench-maps-lane")).await?;
        let process = counted(&label, binary, environment).await?;
        let source = EventSource::new(sqs.clone(), lane, process.function.clone());
        let delivered = source.delivered();
        let stop = stop.clone();
        sources.push(tokio::spawn(async move { source.run(&stop).await }));
        processes.push(Counted { delivered, ..process });
    }
    let submit = counted("submit (API)", "batchline-submit", environment).await?;

    let started = Instant::now();
    let request = batchline_demo::api_request("POST", &format!("/pipelines/{MAP_PIPELINE}/runs"), Some(&json!({})));
    let answer = match submit.function.invoke(&request).await? {
        Outcome::Response(answer) => answer,
        Outcome::Error(error) => return Err(format!("starting the map's run: {error}")),
    };
    let body: Value = serde_json::from_str(answer["body"].as_str().unwrap_or_default()).unwrap_or_default();
    let run_id = body["runId"].as_str().ok_or_else(|| format!("no run started: {answer}"))?.to_owned();

    // Play what is submitted, put its events on the lanes' bus, until the run has ended.
    let store = DynamoStore::new(aws_sdk_dynamodb::Client::new(sdk), table);
    let mut player = Player::new(sdk);
    let mut job_events = 0;
    let outcome = loop {
        if started.elapsed() > Duration::from_secs(900) {
            break Err("the map's run did not end in 15 minutes".to_owned());
        }
        let changes = player.play_queue(queue_arn).await.map_err(|e| e.to_string())?;
        if !changes.is_empty() {
            player.settle(&changes).await.map_err(|e| e.to_string())?;
            Delivery::of(&changes).to_event_bus(&events, &bus).await.map_err(|e| e.to_string())?;
            job_events += changes.len();
        }
        let run = store.load_run(&run_id).await.map_err(|e| e.to_string())?;
        if let Some(run) = run.filter(|r| r.run.status.is_terminal() && r.run.is_done_with()) {
            break match run.run.status {
                batchline::model::run::RunStatus::Succeeded => Ok(()),
                other => Err(format!("the map's run ended {other:?}")),
            };
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    // The run ends once its parents' events pass the runs lane; the metrics lane, which
    // takes every event, may still be behind: wait until it has delivered them all.
    let metrics_lane = processes.iter().find(|p| p.label.contains("JobEventsQueue")).map(|p| p.delivered.clone());
    let waiting_since = Instant::now();
    while metrics_lane.as_ref().is_some_and(|d| d.load(Ordering::Relaxed) < job_events)
        && waiting_since.elapsed() < Duration::from_secs(900)
    {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for source in sources {
        source.await.map_err(|e| e.to_string())??;
    }
    outcome?;
    let mut report = MapReport { children: CHILDREN, job_events, seconds, ..MapReport::default() };
    processes.push(submit);
    for process in processes {
        let delivered = process.delivered.load(Ordering::Relaxed);
        report.processes.push((process.label, delivered, process.counter.counts()));
        if let Ok(function) = Arc::try_unwrap(process.function) {
            function.stop().await;
        }
    }
    Ok(report)
}

/// The report's section: calls per 1,000 children, by process and operation.
pub fn render(report: &MapReport) -> String {
    let per_thousand = |n: f64| n * 1_000.0 / report.children.max(1) as f64;
    let mut out = format!(
        "\nA map stage, per 1,000 children (one run over a manifest of {} lines, one array; {} job events played, \
         {:.1} per child; {:.0} s on the emulator):\n\n| process | messages | operation | calls per 1,000 children |\n|---|---|---|---|\n",
        report.children,
        report.job_events,
        report.job_events as f64 / report.children.max(1) as f64,
        report.seconds
    );
    let mut total = 0.0;
    for (label, delivered, counts) in &report.processes {
        for (k, (operation, calls)) in counts.iter().enumerate() {
            let messages = if k == 0 { format!("{:.1}", per_thousand(*delivered as f64)) } else { String::new() };
            out.push_str(&format!("| {label} | {messages} | {operation} | {:.1} |\n", per_thousand(*calls as f64)));
            total += per_thousand(*calls as f64);
        }
    }
    out.push_str(&format!("| all | | every call | {total:.1} |\n"));
    out
}
