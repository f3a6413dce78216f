//! What a map stage costs per 1,000 children: each function's AWS calls, by operation, for one map run from its start to its end through the template's lanes.
//!
//! A run of a pipeline whose one stage maps over the [`children`] objects under a prefix
//! (10,000 unless `BENCH_MAP_CHILDREN` says otherwise: one array job) is started through
//! submit's API (the release binary). The map worker (the release binary) takes its work
//! from the template's map lane on the default bus; job-events (one release process per
//! lane, as in [`crate::lanes`]) takes the played job events, every child's included, from
//! the template's two job-event lanes on a bus of their own. Each process's calls go
//! through a counting forwarder, which also prices its DynamoDB writes in write units
//! ([`crate::write_units`]). What grows with a map is its children's events (the player
//! plays four or five per child), which only the metrics lane receives; the rest is per
//! array or per run, and shows here divided by the map's size. The time from the API's
//! answer to the array listed in Batch is the expansion's: the listing of the objects, the
//! item list written, the array submitted.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_config::SdkConfig;
use batchline::store::{DynamoStore, RunStore};
use batchline_testkit::emulator::{endpoint, repo_root, unique_name};
use batchline_testkit::event_source::EventSource;
use batchline_testkit::lanes::{map_lane, template_lanes, Lane};
use batchline_testkit::local_lambda::{LocalLambda, Outcome};
use batchline_testkit::player::{Delivery, Player};
use futures::StreamExt;
use serde_json::{json, Value};

use crate::fixed_reply::FixedReply;

/// Children of the measured map unless `BENCH_MAP_CHILDREN` says otherwise: one array.
pub const CHILDREN: usize = 10_000;
/// The pipeline the benchmark's stack declares for it.
pub const MAP_PIPELINE: &str = "bench-map";
/// Where the map's objects are, under the stack's input bucket.
const ITEMS_PREFIX: &str = "bench-map/items/";

/// How many children the measured map has.
pub fn children() -> usize {
    std::env::var("BENCH_MAP_CHILDREN").ok().and_then(|n| n.parse().ok()).unwrap_or(CHILDREN)
}

/// The pipeline: one map stage over the objects under the prefix.
pub fn pipeline(bucket: &str) -> Value {
    json!({"Stages": {"each": {"JobDefinition": "default", "Map": {"Prefix": format!("s3://{bucket}/{ITEMS_PREFIX}")}}}})
}

/// One process's share of a map's run.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct ProcessCalls {
    /// The function and its lane.
    pub label: String,
    /// Its release binary (`batchline-submit`, ...).
    pub binary: String,
    /// Messages it handled, and invocations (batches) it took.
    pub messages: usize,
    pub invocations: usize,
    /// Calls by `service:Operation`.
    pub calls: BTreeMap<String, u64>,
    /// DynamoDB write units of its writes, and read units of its reads.
    pub write_units: u64,
    pub read_units: f64,
    /// EventBridge events it put (64 KB chunks).
    pub event_chunks: u64,
    /// Its lane's SQS calls that moved messages (receives that brought some, deletes).
    pub lane_sqs_calls: usize,
    /// CPU seconds (user + system) it spent, start-up included.
    pub cpu_seconds: f64,
    /// Bytes of log lines it wrote.
    pub log_bytes: u64,
}

/// The calls of one map's run, per process.
#[derive(Debug, Default)]
pub struct MapReport {
    pub children: usize,
    /// Job events played (parents' and children's).
    pub job_events: usize,
    pub processes: Vec<ProcessCalls>,
    /// From the run's start to its end (every event through the metrics lane).
    pub seconds: f64,
    /// From the run's start to its array listed in Batch: the expansion.
    pub expansion_seconds: f64,
}

/// Where counted processes come from and where their calls go: the binaries' folder, and
/// the endpoint each process's counting forwarder passes its calls on to.
#[derive(Debug, Clone)]
pub struct Spawn {
    pub binaries: std::path::PathBuf,
    pub upstream: String,
}

impl Spawn {
    /// The release binaries, their calls passed on to the emulator.
    pub fn release() -> Spawn {
        Spawn { binaries: repo_root().join("target/release"), upstream: endpoint().to_owned() }
    }
}

/// A process of a function whose calls are counted.
pub(crate) struct Counted {
    pub(crate) label: String,
    pub(crate) binary: String,
    pub(crate) counter: FixedReply,
    pub(crate) function: Arc<LocalLambda>,
    pub(crate) delivered: Arc<AtomicUsize>,
    pub(crate) invocations: Arc<AtomicUsize>,
    pub(crate) sqs_calls: Arc<AtomicUsize>,
    pub(crate) log: std::path::PathBuf,
}

impl Counted {
    /// What the process did, its function stopped.
    pub(crate) async fn finish(self) -> ProcessCalls {
        let cpu_seconds =
            self.function.pid().and_then(|pid| crate::measure::process_usage(pid).ok()).map_or(0.0, |u| u.0);
        let mut calls = ProcessCalls {
            label: self.label,
            binary: self.binary,
            messages: self.delivered.load(Ordering::Relaxed),
            invocations: self.invocations.load(Ordering::Relaxed),
            calls: self.counter.counts(),
            write_units: self.counter.write_units(),
            read_units: self.counter.read_units(),
            event_chunks: self.counter.event_chunks(),
            lane_sqs_calls: self.sqs_calls.load(Ordering::Relaxed),
            cpu_seconds,
            log_bytes: 0,
        };
        if let Ok(function) = Arc::try_unwrap(self.function) {
            function.stop().await;
        }
        calls.log_bytes = std::fs::metadata(&self.log).map_or(0, |m| m.len());
        calls
    }
}

/// A binary started as a local function, its calls through a counting forwarder, its
/// output in `target/bench/<log>.log`.
pub(crate) async fn counted(
    spawn: &Spawn,
    label: &str,
    log: &str,
    binary: &str,
    environment: &[(String, String)],
) -> Result<Counted, String> {
    let counter = FixedReply::forwarding(&spawn.upstream).await.map_err(|e| e.to_string())?;
    let mut environment = environment.to_vec();
    environment.retain(|(name, _)| name != "AWS_ENDPOINT_URL");
    environment.push(("AWS_ENDPOINT_URL".into(), counter.endpoint.clone()));
    let folder = repo_root().join("target/bench");
    std::fs::create_dir_all(&folder).map_err(|e| format!("{}: {e}", folder.display()))?;
    let log = folder.join(format!("{log}.log"));
    let _ = std::fs::remove_file(&log); // its size is what this process wrote
    let program = spawn.binaries.join(binary);
    let function = LocalLambda::start(binary, &program, &environment, Duration::from_secs(900), Some(&log))
        .await
        .map_err(|e| format!("starting {binary}: {e}"))?;
    function.wait_until_ready(Duration::from_secs(30)).await?;
    Ok(Counted {
        label: label.to_owned(),
        binary: binary.to_owned(),
        counter,
        function: Arc::new(function),
        delivered: Arc::default(),
        invocations: Arc::default(),
        sqs_calls: Arc::default(),
        log,
    })
}

/// One lane a benchmark serves: the function (its label and release binary), the template's
/// lane, the bus its rule goes on, and its queue's name.
pub(crate) struct LaneToServe {
    pub(crate) label: &'static str,
    pub(crate) binary: &'static str,
    pub(crate) lane: Lane,
    pub(crate) bus: String,
    pub(crate) queue: String,
}

/// A counted process per lane, each fed by an event source of its own, until stopped.
pub(crate) struct ServedLanes {
    pub(crate) processes: Vec<Counted>,
    /// Each lane's queue URL.
    pub(crate) queue_urls: Vec<String>,
    sources: Vec<tokio::task::JoinHandle<Result<(), String>>>,
    stop: Arc<AtomicBool>,
}

impl ServedLanes {
    /// Wires each lane and starts its process (its log `target/bench/<log>-<label>.log`) and
    /// event source.
    pub(crate) async fn start(
        sdk: &SdkConfig,
        spawn: &Spawn,
        lanes: Vec<LaneToServe>,
        log: &str,
        environment: &[(String, String)],
    ) -> Result<ServedLanes, String> {
        let sqs = aws_sdk_sqs::Client::new(sdk);
        let events = aws_sdk_eventbridge::Client::new(sdk);
        let stop = Arc::new(AtomicBool::new(false));
        let (mut processes, mut sources, mut queue_urls) = (Vec::new(), Vec::new(), Vec::new());
        for LaneToServe { label, binary, lane, bus, queue } in lanes {
            let label = format!("{label} ({})", lane.queue);
            let lane = lane.wire(&sqs, &events, &bus, &queue).await?;
            queue_urls.push(lane.queue_url.clone());
            let process = counted(spawn, &label, &format!("{log}-{label}"), binary, environment).await?;
            let source = EventSource::new(sqs.clone(), lane, process.function.clone());
            let (delivered, invocations, sqs_calls) = (source.delivered(), source.invocations(), source.sqs_calls());
            let stop = stop.clone();
            sources.push(tokio::spawn(async move { source.run(&stop).await }));
            processes.push(Counted { delivered, invocations, sqs_calls, ..process });
        }
        Ok(ServedLanes { processes, queue_urls, sources, stop })
    }

    /// Waits until no lane's queue holds a message, visible or in flight, twice in a row a
    /// second apart (`limit` at most).
    pub(crate) async fn drained(&mut self, sqs: &aws_sdk_sqs::Client, limit: Duration) -> Result<(), String> {
        use aws_sdk_sqs::types::QueueAttributeName::{
            ApproximateNumberOfMessages, ApproximateNumberOfMessagesNotVisible,
        };
        let started = Instant::now();
        let mut empty_in_a_row = 0;
        while empty_in_a_row < 2 {
            self.check_sources().await?;
            if started.elapsed() > limit {
                return Err(format!("the lanes still held messages after {} s", limit.as_secs()));
            }
            let mut held = 0;
            for url in &self.queue_urls {
                let attributes = sqs
                    .get_queue_attributes()
                    .queue_url(url)
                    .attribute_names(ApproximateNumberOfMessages)
                    .attribute_names(ApproximateNumberOfMessagesNotVisible)
                    .send()
                    .await
                    .map_err(|e| batchline::Error::aws("GetQueueAttributes", e).to_string())?;
                let count =
                    |name| attributes.attributes().and_then(|a| a.get(&name)).and_then(|n| n.parse::<u64>().ok());
                held += count(ApproximateNumberOfMessages).unwrap_or(0)
                    + count(ApproximateNumberOfMessagesNotVisible).unwrap_or(0);
            }
            empty_in_a_row = if held == 0 { empty_in_a_row + 1 } else { 0 };
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        Ok(())
    }

    /// An event source that has stopped on its own (an error), as the error it stopped with.
    pub(crate) async fn check_sources(&mut self) -> Result<(), String> {
        if let Some(k) = self.sources.iter().position(|s| s.is_finished()) {
            let outcome = self.sources.remove(k).await.map_err(|e| e.to_string())?;
            return Err(format!("an event source stopped: {}", outcome.err().unwrap_or_default()));
        }
        Ok(())
    }

    /// Stops the event sources (each ends its batch in hand); the processes, still to be
    /// finished.
    pub(crate) async fn stop(self) -> Result<Vec<Counted>, String> {
        self.stop.store(true, Ordering::Relaxed);
        for source in self.sources {
            source.await.map_err(|e| e.to_string())??;
        }
        Ok(self.processes)
    }
}

/// Runs one map of [`children`] children to its end and counts every call on the way.
/// `stack` is the stack's `NamePrefix`, `queue_arn` its default job queue.
pub async fn measure(
    sdk: &SdkConfig,
    table: &str,
    environment: &[(String, String)],
    stack: &str,
    bucket: &str,
    queue_arn: &str,
) -> Result<MapReport, String> {
    let children = children();
    let s3 = aws_sdk_s3::Client::from_conf(aws_sdk_s3::config::Builder::from(sdk).force_path_style(true).build());
    let _ = s3.create_bucket().bucket(bucket).send().await; // there already, or made now
    let puts = (0..children).map(|i| {
        let s3 = s3.clone();
        async move {
            let body = aws_sdk_s3::primitives::ByteStream::from(format!("item {i}").into_bytes());
            let key = format!("{ITEMS_PREFIX}item-{i:05}.txt");
            s3.put_object().bucket(bucket).key(key).body(body).send().await.map(|_| ())
        }
    });
    let put: Vec<_> = futures::stream::iter(puts).buffer_unordered(16).collect().await;
    if let Some(Err(err)) = put.into_iter().find(Result::is_err) {
        return Err(batchline::Error::aws("PutObject", err).to_string());
    }

    let events = aws_sdk_eventbridge::Client::new(sdk);
    let bus = crate::lanes::new_bus(&events, "bench-maps").await?;
    let queue = || unique_name("bench-maps-lane");
    let mut lanes = vec![LaneToServe {
        label: "map-worker",
        binary: "batchline-map",
        lane: map_lane(stack)?,
        bus: "default".to_owned(),
        queue: queue(),
    }];
    for lane in template_lanes(&[queue_arn.to_owned()])? {
        lanes.push(LaneToServe {
            label: "job-events",
            binary: "batchline-job-events",
            lane,
            bus: bus.clone(),
            queue: queue(),
        });
    }
    let spawn = Spawn::release();
    let served = ServedLanes::start(sdk, &spawn, lanes, "maps", environment).await?;
    let submit = counted(&spawn, "submit (API)", "maps-submit (API)", "batchline-submit", environment).await?;

    let batch = aws_sdk_batch::Client::new(sdk);
    let jobs_before = parent_jobs(&batch, queue_arn).await?;
    let started = Instant::now();
    let request = batchline_demo::api_request("POST", &format!("/pipelines/{MAP_PIPELINE}/runs"), Some(&json!({})));
    let answer = match submit.function.invoke(&request).await? {
        Outcome::Response(answer) => answer,
        Outcome::Error(error) => return Err(format!("starting the map's run: {error}")),
    };
    let body: Value = serde_json::from_str(answer["body"].as_str().unwrap_or_default()).unwrap_or_default();
    let run_id = body["runId"].as_str().ok_or_else(|| format!("no run started: {answer}"))?.to_owned();

    // The expansion: until the array is listed in Batch (one more job than before the start).
    let expansion_seconds = loop {
        if started.elapsed() > Duration::from_secs(300) {
            return Err("the map's array was not submitted in 5 minutes".to_owned());
        }
        if parent_jobs(&batch, queue_arn).await? > jobs_before {
            break started.elapsed().as_secs_f64();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // Play what is submitted, put its events on the lanes' bus, until the run has ended.
    let store = DynamoStore::new(aws_sdk_dynamodb::Client::new(sdk), table);
    let mut player = Player::new(sdk);
    let mut job_events = 0;
    let outcome = loop {
        if started.elapsed() > Duration::from_secs(3_600) {
            break Err("the map's run did not end in an hour".to_owned());
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
    let metrics_lane =
        served.processes.iter().find(|p| p.label.contains("JobEventsQueue")).map(|p| p.delivered.clone());
    let waiting_since = Instant::now();
    while metrics_lane.as_ref().is_some_and(|d| d.load(Ordering::Relaxed) < job_events)
        && waiting_since.elapsed() < Duration::from_secs(3_600)
    {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let mut processes = served.stop().await?;
    outcome?;
    let mut report = MapReport { children, job_events, seconds, expansion_seconds, ..MapReport::default() };
    processes.push(submit);
    for process in processes {
        report.processes.push(process.finish().await);
    }
    Ok(report)
}

/// Jobs in the queue, children of arrays left out.
async fn parent_jobs(batch: &aws_sdk_batch::Client, queue_arn: &str) -> Result<usize, String> {
    let listed = batch
        .list_jobs()
        .job_queue(queue_arn)
        .filters(aws_sdk_batch::types::KeyValuesPair::builder().name("AFTER_CREATED_AT").values("0").build())
        .send()
        .await
        .map_err(|e| batchline::Error::aws("ListJobs", e).to_string())?;
    Ok(listed.job_summary_list().iter().filter(|j| j.job_id().is_some_and(|id| !id.contains(':'))).count())
}

/// The report's section: the goals' figures per 1,000 children, then every call by process and operation.
pub fn render(report: &MapReport) -> String {
    let per_thousand = |n: f64| n * 1_000.0 / report.children.max(1) as f64;
    let calls = |operations: &[&str]| -> f64 {
        let all = report.processes.iter().flat_map(|p| p.calls.iter());
        per_thousand(all.filter(|(op, _)| operations.contains(&op.as_str())).map(|(_, n)| *n as f64).sum())
    };
    let lane = |queue: &str| -> f64 {
        per_thousand(report.processes.iter().filter(|p| p.label.contains(queue)).map(|p| p.invocations as f64).sum())
    };
    let write_units = per_thousand(report.processes.iter().map(|p| p.write_units as f64).sum());
    let mut out = format!(
        "\nA map stage, per 1,000 children (one run over {} objects under a prefix, one array; {} job events \
         played, {:.1} per child; {:.0} s on the emulator; start to array submitted {:.1} s):\n\n\
         | per 1,000 children | |\n|---|---|\n",
        report.children,
        report.job_events,
        report.job_events as f64 / report.children.max(1) as f64,
        report.seconds,
        report.expansion_seconds,
    );
    let rows = [
        ("SubmitJob calls", calls(&["batch:SubmitJob", "batch:submitjob"])),
        ("table reads (GetItem, Query)", calls(&["dynamodb:GetItem", "dynamodb:Query", "dynamodb:BatchGetItem"])),
        (
            "table writes (calls)",
            calls(&[
                "dynamodb:PutItem",
                "dynamodb:UpdateItem",
                "dynamodb:DeleteItem",
                "dynamodb:BatchWriteItem",
                "dynamodb:TransactWriteItems",
            ]),
        ),
        ("table write units", write_units),
        ("runs-lane invocations", lane("RunEventsQueue")),
        ("metrics-lane invocations", lane("JobEventsQueue")),
        ("PutMetricData calls", calls(&["cloudwatch:PutMetricData"])),
    ];
    for (name, value) in rows {
        out.push_str(&format!("| {name} | {value:.1} |\n"));
    }
    out.push_str(
        "\n| process | messages | invocations | operation | calls per 1,000 children |\n|---|---|---|---|---|\n",
    );
    let mut total = 0.0;
    for process in &report.processes {
        for (k, (operation, calls)) in process.calls.iter().enumerate() {
            let (messages, invocations) = if k == 0 {
                (
                    format!("{:.1}", per_thousand(process.messages as f64)),
                    format!("{:.1}", per_thousand(process.invocations as f64)),
                )
            } else {
                Default::default()
            };
            out.push_str(&format!(
                "| {} | {messages} | {invocations} | {operation} | {:.1} |\n",
                process.label,
                per_thousand(*calls as f64)
            ));
            total += per_thousand(*calls as f64);
        }
    }
    out.push_str(&format!("| all | | | every call | {total:.1} |\n"));
    out
}
