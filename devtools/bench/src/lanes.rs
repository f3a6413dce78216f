//! Stage-to-stage latency: from a stage's SUCCEEDED event to the SubmitJob of the next stage, under a steady stream of unrelated job events.
//!
//! The path is the deployed one, played locally: events are put on an EventBridge bus in
//! the emulator, rules with template.yaml's patterns route them to SQS queues, and a local
//! event source per queue (the test kit's [`EventSource`]) polls it and invokes its own job-events process
//! (the release binary) with the BatchSize and MaximumBatchingWindowInSeconds the template
//! gives that queue — so a batching window costs here what it costs on AWS. Three shapes
//! are measured side by side: one lane for every event (the previous template: 1,000 per
//! batch, 10-second window), the template's lanes, and the template's lanes with no other
//! job events (what the shared emulator adds).
//!
//! A sample is the time from just before the SUCCEEDED event of stage *k* is put on the bus
//! to the `createdAt` the emulator gives stage *k + 1*'s job at SubmitJob (both clocks are
//! this host's). What it leaves out is Batch's own scheduling, which no orchestrator
//! controls. Every AWS call of each lane's process goes through a counting forwarder, which
//! gives the calls per event of each lane.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_config::SdkConfig;
use batchline::store::{DynamoStore, RunStore};
use batchline_testkit::emulator::{repo_root, unique_name};
use batchline_testkit::event_source::EventSource;
pub use batchline_testkit::lanes::{template_lanes, Lane};
use batchline_testkit::local_lambda::{LocalLambda, Outcome};
use batchline_testkit::player::{Delivery, Player, Script};
use serde_json::{json, Value};

use crate::fixed_reply::FixedReply;

/// Stages of the pipeline each run goes through, one after the other.
pub const STAGES: usize = 5;
/// Runs per shape; each gives `STAGES - 1` samples, so 25 runs give 100 and p99 is the
/// 99th of them, not just the slowest.
pub const RUNS: usize = 25;
/// Runs of the one-lane shape: each of its transitions waits out the 10-second window,
/// and 24 samples show that as well as 100 would, in a quarter of the time.
pub const RUNS_ONE_LANE: usize = 6;
/// How long each stage's job runs: its SUCCEEDED event is put on the bus this long after
/// its RUNNABLE, STARTING and RUNNING ones. On Batch a job's start and run take far
/// longer; with no gap at all the four events arrive together and the SUCCEEDED one waits
/// behind the other three in the runs lane's batch, which Batch never produces.
pub const RUN_TIME: Duration = Duration::from_secs(1);
/// Unrelated job events per second while the runs go on. The emulator is one Python
/// process (one core); each such event costs it a PutEvents share, an SQS send, receive
/// and delete, a ledger write and a metrics share. At 30 a second it fell behind, the
/// queue grew past a thousand messages and moto's ReceiveMessage, which scans the whole
/// queue, took 3-4 s a call: the bench then measured the emulator's backlog, not the
/// lanes. At 10 a second the queue stays short.
pub const BACKGROUND_PER_SECOND: usize = 10;

/// The pipeline the runs use: `s1` → `s2` → ... → `s5`.
pub fn pipeline() -> Value {
    let stages: serde_json::Map<String, Value> = (1..=STAGES)
        .map(|k| {
            let stage = if k == 1 {
                json!({"JobDefinition": "default"})
            } else {
                json!({"JobDefinition": "default", "After": format!("s{}", k - 1)})
            };
            (format!("s{k}"), stage)
        })
        .collect();
    json!({ "Stages": stages })
}

/// The previous template's shape: every event in one lane, bare, 1,000 per batch, a 10-second window.
pub fn one_lane(queue_arns: &[String]) -> Lane {
    Lane {
        queue: "JobEventsQueue".into(),
        batch_size: 1000,
        window: Duration::from_secs(10),
        pattern: json!({"source": ["aws.batch"], "detail-type": ["Batch Job State Change"], "detail": {"jobQueue": queue_arns}}),
        input_template: None,
        bus: None,
    }
}

/// What one shape measured.
#[derive(Debug, Clone, Default)]
pub struct LaneReport {
    /// Milliseconds from a stage's SUCCEEDED event to the next stage's SubmitJob, sorted.
    pub samples_ms: Vec<f64>,
    /// Per lane (queue logical id): events delivered and AWS calls by operation.
    pub lanes: Vec<(String, usize, BTreeMap<String, u64>)>,
}

impl LaneReport {
    pub fn percentile(&self, p: f64) -> f64 {
        if self.samples_ms.is_empty() {
            return f64::NAN;
        }
        let rank = ((self.samples_ms.len() as f64 * p).ceil() as usize).clamp(1, self.samples_ms.len());
        self.samples_ms[rank - 1]
    }
}

/// What a shape's measurement needs from the environment the bench provisioned.
pub struct Setup<'a> {
    pub sdk: &'a SdkConfig,
    pub table: &'a str,
    /// The functions' environment against the emulator.
    pub environment: &'a [(String, String)],
    pub submit: &'a LocalLambda,
    pub queue_arn: &'a str,
    pub pipeline: &'a str,
}

/// One way of wiring the lanes, and the traffic it is measured under.
pub struct Shape {
    pub label: &'static str,
    /// Lanes with an event source that invokes job-events.
    pub lanes: Vec<Lane>,
    pub runs: usize,
    /// Unrelated job events a second while the runs go on.
    pub background_per_second: usize,
}

/// A new EventBridge bus (its name starts with `prefix`), for one measurement's lanes.
pub async fn new_bus(events: &aws_sdk_eventbridge::Client, prefix: &str) -> Result<String, String> {
    let bus = unique_name(prefix);
    events
        .create_event_bus()
        .name(&bus)
        .send()
        .await
        .map_err(|e| batchline::Error::aws("CreateEventBus", e).to_string())?;
    Ok(bus)
}

/// Measures one shape: its lanes wired on a bus of their own, the background stream
/// running, `shape.runs` runs of the pipeline played stage by stage.
pub async fn measure(setup: &Setup<'_>, shape: &Shape) -> Result<LaneReport, String> {
    let Shape { label, lanes, runs, background_per_second } = shape;
    let label = label.replace([' ', ','], "-");
    let events = aws_sdk_eventbridge::Client::new(setup.sdk);
    let sqs = aws_sdk_sqs::Client::new(setup.sdk);
    let bus = new_bus(&events, "bench-lanes").await?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut sources = Vec::new();
    let mut counters = Vec::new();
    for (index, lane) in lanes.iter().enumerate() {
        let name = format!("{bus}-{index}");
        let wired = lane.wire(&sqs, &events, &bus, &name).await?;
        let counter =
            FixedReply::forwarding(batchline_testkit::emulator::endpoint()).await.map_err(|e| e.to_string())?;
        let mut environment = setup.environment.to_vec();
        environment.retain(|(name, _)| name != "AWS_ENDPOINT_URL");
        environment.push(("AWS_ENDPOINT_URL".into(), counter.endpoint.clone()));
        if std::env::var("BENCH_DEBUG").is_ok() {
            environment.retain(|(name, _)| name != "AWS_LAMBDA_LOG_LEVEL");
            environment.push(("AWS_LAMBDA_LOG_LEVEL".into(), "INFO".into()));
        }
        let log = repo_root().join("target/bench").join(format!("lanes-{label}-{}.log", lane.queue));
        let function = LocalLambda::start(
            "batchline-job-events",
            &repo_root().join("target/release/batchline-job-events"),
            &environment,
            Duration::from_secs(300),
            Some(&log),
        )
        .await
        .map_err(|e| format!("starting job-events: {e}"))?;
        // Each lane has its own process, as each event source mapping has its own instances.
        function.wait_until_ready(Duration::from_secs(30)).await?;
        let function = Arc::new(function);
        let source = EventSource::new(sqs.clone(), wired, function.clone());
        counters.push((lane.queue.clone(), source.delivered(), counter, function));
        let stop_all = stop.clone();
        sources.push(tokio::spawn(async move {
            let outcome = source.run(&stop_all).await;
            // A lane that stops delivering would stall the runs until their two-minute
            // limit; stop everything at once and say why.
            if let Err(error) = &outcome {
                eprintln!("event source failed: {error}");
                stop_all.store(true, Ordering::Relaxed);
            }
            outcome
        }));
    }

    let background = tokio::spawn(background_stream(
        events.clone(),
        bus.clone(),
        setup.queue_arn.to_owned(),
        *background_per_second,
        stop.clone(),
    ));
    let mut samples = Vec::new();
    let store = DynamoStore::new(aws_sdk_dynamodb::Client::new(setup.sdk), setup.table);
    let mut player = Player::new(setup.sdk);
    let outcome = async {
        for _ in 0..*runs {
            samples.extend(one_run(setup, &store, &mut player, &events, &bus, &stop).await?);
        }
        Ok::<(), String>(())
    }
    .await;
    stop.store(true, Ordering::Relaxed);
    let _ = background.await;
    let mut report = LaneReport::default();
    for (source, (queue, delivered, counter, function)) in sources.into_iter().zip(counters) {
        source.await.map_err(|e| e.to_string())??;
        if let Ok(function) = Arc::try_unwrap(function) {
            function.stop().await;
        }
        report.lanes.push((queue, delivered.load(Ordering::Relaxed), counter.counts()));
    }
    outcome?;
    samples.sort_by(f64::total_cmp);
    report.samples_ms = samples;
    Ok(report)
}

/// Unrelated job events (no run), `per_second` a second, until `stop`.
async fn background_stream(
    events: aws_sdk_eventbridge::Client,
    bus: String,
    queue_arn: String,
    per_second: usize,
    stop: Arc<AtomicBool>,
) {
    let fixture: Value =
        serde_json::from_str(include_str!("../../../tests/fixtures/batch/succeeded-fargate.json")).unwrap_or_default();
    let mut sent = 0usize;
    let started = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let due = (started.elapsed().as_secs_f64() * per_second as f64) as usize;
        let events_now: Vec<Value> = (sent..due.max(sent))
            .map(|i| {
                let mut event = fixture.clone();
                event["detail"]["jobQueue"] = json!(queue_arn);
                event["detail"]["jobId"] = json!(format!("background-{i}"));
                event["detail"]["tags"] = json!({});
                event
            })
            .collect();
        sent = due.max(sent);
        if !events_now.is_empty() {
            let _ = Delivery::from_events(events_now).to_event_bus(&events, &bus).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts a run through submit and plays its stages one after the other; the latency of
/// each transition.
async fn one_run(
    setup: &Setup<'_>,
    store: &DynamoStore,
    player: &mut Player,
    events: &aws_sdk_eventbridge::Client,
    bus: &str,
    stop: &AtomicBool,
) -> Result<Vec<f64>, String> {
    let request = batchline_demo::api_request("POST", &format!("/pipelines/{}/runs", setup.pipeline), Some(&json!({})));
    let answer = match setup.submit.invoke(&request).await? {
        Outcome::Response(answer) => answer,
        Outcome::Error(error) => return Err(format!("starting a run: {error}")),
    };
    let body: Value = serde_json::from_str(answer["body"].as_str().unwrap_or_default()).unwrap_or_default();
    let run_id = body["runId"].as_str().ok_or_else(|| format!("no run started: {answer}"))?.to_owned();
    let batch = aws_sdk_batch::Client::new(setup.sdk);
    let mut samples = Vec::new();
    let mut ended_at: Option<i64> = None;
    for k in 1..=STAGES {
        let stage = format!("s{k}");
        let job_id = wait_for_job(store, &run_id, &stage, stop).await?;
        if let Some(ended_at) = ended_at {
            let described = batch
                .describe_jobs()
                .jobs(&job_id)
                .send()
                .await
                .map_err(|e| batchline::Error::aws("DescribeJobs", e).to_string())?;
            let created = described.jobs().first().and_then(|j| j.created_at()).ok_or("a job without createdAt")?;
            samples.push((created - ended_at) as f64);
        }
        player.script(job_id.clone(), Script::succeed().waiting(Duration::ZERO).running(Duration::ZERO));
        let changes = player.play_jobs(std::slice::from_ref(&job_id)).await.map_err(|e| e.to_string())?;
        if std::env::var("BENCH_DEBUG").is_ok() {
            eprintln!(
                "{stage} {job_id}: {:?} on {}",
                changes.iter().map(|c| c.status).collect::<Vec<_>>(),
                changes.first().map(|c| c.event["detail"]["jobQueue"].to_string()).unwrap_or_default()
            );
        }
        let (end, before): (Vec<_>, Vec<_>) = changes.into_iter().partition(|c| c.status == "SUCCEEDED");
        Delivery::of(&before).to_event_bus(events, bus).await.map_err(|e| e.to_string())?;
        tokio::time::sleep(RUN_TIME).await;
        ended_at = Some(batchline::now_ms());
        Delivery::of(&end).to_event_bus(events, bus).await.map_err(|e| e.to_string())?;
    }
    Ok(samples)
}

/// The job id of the stage's first attempt once the run records it (two minutes at most).
async fn wait_for_job(store: &DynamoStore, run_id: &str, stage: &str, stop: &AtomicBool) -> Result<String, String> {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(120) && !stop.load(Ordering::Relaxed) {
        let run = store.load_run(run_id).await.map_err(|e| e.to_string())?;
        let job = run.and_then(|r| r.run.stages.get(stage).and_then(|s| s.current()).and_then(|a| a.job_id.clone()));
        if let Some(job) = job {
            return Ok(job);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let run = store.load_run(run_id).await.map_err(|e| e.to_string())?;
    let stages =
        run.map(|r| format!("{:?}", r.run.stages.iter().map(|(n, s)| (n.clone(), s.status)).collect::<Vec<_>>()));
    Err(format!("run {run_id}: stage {stage} was not submitted within two minutes; stages: {stages:?}"))
}
