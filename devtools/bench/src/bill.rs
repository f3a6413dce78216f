//! The orchestration bill: every AWS call, message and invocation one kind of unit of work costs, counted as the release binaries run it through the template's lanes on the emulator.
//!
//! Four kinds of unit, each at the sizes [`sizes`] names: single jobs from S3 objects (a
//! plain S3 rule, one job each), three-stage pipeline runs started through the HTTP API,
//! the children of one map stage over the objects under a prefix, and the objects of one
//! burst through a coalescing S3 rule. For each, the functions run as in the lane
//! benchmarks ([`crate::maps::ServedLanes`]): one process per lane, fed by a local event
//! source with the template's pattern, BatchSize and window, every call through a counting
//! forwarder that also reads each DynamoDB call's write and read units and each PutEvents
//! call's events. The Batch event player plays every job submitted (each succeeds), its
//! events go on the job-event lanes' bus, and a unit's work is done when every job has
//! ended and no lane holds a message. What the scenario counted ([`Counted`]) is priced by
//! [`crate::prices`] and set beside Step Functions by [`crate::bill_table`].

use std::time::{Duration, Instant};

use aws_config::SdkConfig;
use batchline_testkit::emulator::unique_name;
use batchline_testkit::lanes::{coalesce_lane, map_lane, template_lanes, trigger_lane};
use batchline_testkit::local_lambda::Outcome;
use batchline_testkit::player::{Delivery, Player};
use futures::StreamExt;
use serde_json::{json, Value};

use crate::maps::{counted, LaneToServe, ProcessCalls, ServedLanes, Spawn};

/// The kinds of unit the bill prices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum Kind {
    SingleJobs,
    PipelineRuns,
    MapChildren,
    BurstObjects,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::SingleJobs, Kind::PipelineRuns, Kind::MapChildren, Kind::BurstObjects];

    /// What one unit is, for the tables.
    pub fn unit(self) -> &'static str {
        match self {
            Kind::SingleJobs => "single job from an S3 object",
            Kind::PipelineRuns => "three-stage pipeline run (API)",
            Kind::MapChildren => "map child (one map over a prefix)",
            Kind::BurstObjects => "object of a coalesced burst",
        }
    }

    /// Its name in `BENCH_BILL_KINDS`.
    pub fn key(self) -> &'static str {
        match self {
            Kind::SingleJobs => "jobs",
            Kind::PipelineRuns => "runs",
            Kind::MapChildren => "map",
            Kind::BurstObjects => "burst",
        }
    }
}

/// The pipeline of the runs: `a` → `b` → `c`.
pub const RUNS_PIPELINE: &str = "bill-chain";
/// The plain S3 rule's prefix, and the coalescing one's.
pub const JOBS_PREFIX: &str = "bill-jobs/";
pub const BURST_PREFIX: &str = "bill-burst/";

/// The kinds measured: `BENCH_BILL_KINDS` (`jobs,runs,map,burst`), all by default.
pub fn kinds() -> Vec<Kind> {
    let wanted = std::env::var("BENCH_BILL_KINDS").unwrap_or_default();
    Kind::ALL.into_iter().filter(|k| wanted.is_empty() || wanted.split(',').any(|w| w.trim() == k.key())).collect()
}

/// The numbers of units each kind is measured at: `BENCH_BILL_SIZES`, 100 and 1,000 by
/// default; a map and a burst also at `BENCH_BILL_LARGE` (10,000; 0 for none). One kind's
/// own list, `BENCH_BILL_SIZES_<KIND>` (`..._MAP=10000`), replaces both for it.
pub fn sizes(kind: Kind) -> Vec<usize> {
    let parse = |name: &str, default: &str| -> Vec<usize> {
        let text = std::env::var(name).unwrap_or_else(|_| default.to_owned());
        text.split(',').filter_map(|n| n.trim().parse().ok()).filter(|n| *n > 0).collect()
    };
    let own = format!("BENCH_BILL_SIZES_{}", kind.key().to_uppercase());
    if std::env::var_os(&own).is_some() {
        return parse(&own, "");
    }
    let mut sizes = parse("BENCH_BILL_SIZES", "100,1000");
    if matches!(kind, Kind::MapChildren | Kind::BurstObjects) {
        sizes.extend(parse("BENCH_BILL_LARGE", "10000"));
    }
    sizes
}

/// The map pipeline of `children` children, and the prefix its objects are under.
pub fn map_pipeline(children: usize) -> (String, String) {
    (format!("bill-map-{children}"), format!("bill-map-{children}/"))
}

/// What the bench's stack declares for the bill: the runs' pipeline, a map pipeline per
/// size, and the two S3 rules.
pub fn declare(properties: &mut Value, bucket: &str) {
    properties["Pipelines"][RUNS_PIPELINE] = json!({"Stages": {
        "a": {"JobDefinition": "default"},
        "b": {"JobDefinition": "default", "After": "a"},
        "c": {"JobDefinition": "default", "After": "b"}
    }});
    for children in sizes(Kind::MapChildren) {
        let (pipeline, prefix) = map_pipeline(children);
        properties["Pipelines"][pipeline] = json!({"Stages": {"each": {"JobDefinition": "default", "Map": {"Prefix": format!("s3://{bucket}/{prefix}")}}}});
    }
    properties["Triggers"]["S3"]["bill-jobs"] =
        json!({"Bucket": bucket, "Prefix": JOBS_PREFIX, "JobDefinition": "default"});
    properties["Triggers"]["S3"]["bill-burst"] = json!({"Bucket": bucket, "Prefix": BURST_PREFIX, "JobDefinition": "default",
        "Coalesce": {"WindowSeconds": "30", "MaxObjects": "10000"}});
}

/// Where a scenario runs: the emulator's clients, the functions' environment, the stack.
pub struct Rig<'a> {
    pub sdk: &'a SdkConfig,
    pub environment: &'a [(String, String)],
    /// The stack's `NamePrefix`, its input bucket and its default job queue.
    pub stack: &'a str,
    pub bucket: &'a str,
    pub queue_arn: &'a str,
    pub spawn: Spawn,
}

/// What one scenario counted (kept in `target/bench/bill/`, so the bill can be priced
/// again without running it: `BENCH_BILL_REPRICE=1`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Counted {
    pub kind: Kind,
    pub units: usize,
    pub processes: Vec<ProcessCalls>,
    /// Requests through the HTTP API, and S3 object events put on the bus.
    pub api_requests: usize,
    pub object_events: usize,
    /// Job state changes the player played (Batch's own events: free).
    pub job_events: usize,
    /// From the first unit started to the last lane drained, on the emulator.
    pub seconds: f64,
}

/// Runs `units` units of `kind` to their end and counts everything on the way. `player`
/// plays the queue's jobs: one player for every scenario on a queue, so each plays only its own.
pub async fn measure(rig: &Rig<'_>, player: &mut Player, kind: Kind, units: usize) -> Result<Counted, String> {
    let events = aws_sdk_eventbridge::Client::new(rig.sdk);
    let tag = unique_name("bill");
    let jobs_bus = crate::lanes::new_bus(&events, "bill-jobs").await?;
    let objects_bus = crate::lanes::new_bus(&events, "bill-objects").await?;
    let mut served = ServedLanes::start(
        rig.sdk,
        &rig.spawn,
        lanes(rig, kind, &jobs_bus, &objects_bus)?,
        &format!("bill-{}", kind.key()),
        rig.environment,
    )
    .await?;
    let api = match kind {
        Kind::PipelineRuns | Kind::MapChildren => Some(
            counted(
                &rig.spawn,
                "submit (API)",
                &format!("bill-{}-api", kind.key()),
                "batchline-submit",
                rig.environment,
            )
            .await?,
        ),
        _ => None,
    };
    let started = Instant::now();
    let (mut api_requests, mut object_events) = (0, 0);
    match kind {
        Kind::SingleJobs | Kind::BurstObjects => {
            // A window's list and its map's results go under the input bucket.
            s3_client(rig).create_bucket().bucket(rig.bucket).send().await.ok(); // there already, or made now
            let prefix = if kind == Kind::SingleJobs { JOBS_PREFIX } else { BURST_PREFIX };
            let objects = objects(units, rig.bucket, &format!("{prefix}{tag}/"));
            crate::burst::put_all(&events, &objects_bus, &objects).await?;
            object_events = units;
        }
        Kind::PipelineRuns => {
            for _ in 0..units {
                start_run(api.as_ref(), RUNS_PIPELINE).await?;
            }
            api_requests = units;
        }
        Kind::MapChildren => {
            let (pipeline, prefix) = map_pipeline(units);
            put_map_objects(rig, &prefix, units).await?;
            start_run(api.as_ref(), &pipeline).await?;
            api_requests = 1;
        }
    }
    let ends_due = if kind == Kind::PipelineRuns { 3 * units } else { units };
    let played = play_to_the_end(rig, player, &mut served, &events, &jobs_bus, ends_due).await;
    let seconds = started.elapsed().as_secs_f64();
    let mut processes = Vec::new();
    for process in served.stop().await? {
        processes.push(process.finish().await);
    }
    if let Some(api) = api {
        api.invocations.store(api_requests, std::sync::atomic::Ordering::Relaxed);
        processes.push(api.finish().await);
    }
    Ok(Counted { kind, units, processes, api_requests, object_events, job_events: played?, seconds })
}

/// The lanes a kind of unit goes through: always job-events' two, on the bus the played
/// job events go to; submit's trigger lane for objects; the map worker's for maps and bursts.
fn lanes(rig: &Rig<'_>, kind: Kind, jobs_bus: &str, objects_bus: &str) -> Result<Vec<LaneToServe>, String> {
    let queue = || unique_name("bill-lane");
    let mut lanes: Vec<LaneToServe> = template_lanes(&[rig.queue_arn.to_owned()])?
        .into_iter()
        .map(|lane| LaneToServe {
            label: "job-events",
            binary: "batchline-job-events",
            lane,
            bus: jobs_bus.to_owned(),
            queue: queue(),
        })
        .collect();
    let prefix = match kind {
        Kind::SingleJobs => Some(JOBS_PREFIX),
        Kind::BurstObjects => Some(BURST_PREFIX),
        _ => None,
    };
    if let Some(prefix) = prefix {
        let lane = trigger_lane(rig.bucket, prefix)?;
        lanes.push(LaneToServe {
            label: "submit",
            binary: "batchline-submit",
            lane,
            bus: objects_bus.to_owned(),
            queue: queue(),
        });
    }
    if kind == Kind::BurstObjects {
        // The coalesce lane's queue goes by the name the stack's configuration gives it.
        let lane = coalesce_lane(rig.stack)?;
        let (bus, named) = ("default".to_owned(), format!("{}-CoalesceQueue", rig.stack));
        lanes.push(LaneToServe { label: "map-worker", binary: "batchline-map", lane, bus, queue: named });
    }
    if matches!(kind, Kind::MapChildren | Kind::BurstObjects) {
        let lane = map_lane(rig.stack)?;
        lanes.push(LaneToServe {
            label: "map-worker",
            binary: "batchline-map",
            lane,
            bus: "default".to_owned(),
            queue: queue(),
        });
    }
    Ok(lanes)
}

/// `count` Object Created events for distinct objects under `prefix`.
fn objects(count: usize, bucket: &str, prefix: &str) -> Vec<Value> {
    let mut objects = crate::measure::object_events(count, bucket, "bill");
    for (i, event) in objects.iter_mut().enumerate() {
        event["detail"]["object"]["key"] = json!(format!("{prefix}part-{i:05}.csv"));
    }
    objects
}

/// Starts a run of `pipeline` through the API.
async fn start_run(api: Option<&crate::maps::Counted>, pipeline: &str) -> Result<(), String> {
    let api = api.ok_or("no API process")?;
    let request = batchline_demo::api_request("POST", &format!("/pipelines/{pipeline}/runs"), Some(&json!({})));
    match api.function.invoke(&request).await? {
        Outcome::Response(answer) if answer["statusCode"].as_u64().is_some_and(|s| s < 300) => Ok(()),
        Outcome::Response(answer) => Err(format!("starting a run of {pipeline}: {answer}")),
        Outcome::Error(error) => Err(format!("starting a run of {pipeline}: {error}")),
    }
}

/// Puts the map's objects under `prefix` (once: a later measurement of the same size
/// finds them there).
async fn put_map_objects(rig: &Rig<'_>, prefix: &str, count: usize) -> Result<(), String> {
    let s3 = s3_client(rig);
    let _ = s3.create_bucket().bucket(rig.bucket).send().await; // there already, or made now
    let puts = (0..count).map(|i| {
        let s3 = s3.clone();
        async move {
            let body = aws_sdk_s3::primitives::ByteStream::from(format!("item {i}").into_bytes());
            s3.put_object()
                .bucket(rig.bucket)
                .key(format!("{prefix}item-{i:05}.txt"))
                .body(body)
                .send()
                .await
                .map(|_| ())
        }
    });
    let put: Vec<_> = futures::stream::iter(puts).buffer_unordered(16).collect().await;
    match put.into_iter().find_map(Result::err) {
        Some(err) => Err(batchline::Error::aws("PutObject", err).to_string()),
        None => Ok(()),
    }
}

fn s3_client(rig: &Rig<'_>) -> aws_sdk_s3::Client {
    aws_sdk_s3::Client::from_conf(aws_sdk_s3::config::Builder::from(rig.sdk).force_path_style(true).build())
}

/// Plays every job the units submit (each succeeds) and puts their events on the job-event
/// lanes' bus, until `ends_due` jobs (array children and plain jobs; an array's parent not
/// counted) have ended and no lane holds a message. Returns the events played.
async fn play_to_the_end(
    rig: &Rig<'_>,
    player: &mut Player,
    served: &mut ServedLanes,
    events: &aws_sdk_eventbridge::Client,
    bus: &str,
    ends_due: usize,
) -> Result<usize, String> {
    let sqs = aws_sdk_sqs::Client::new(rig.sdk);
    let (mut played, mut ended) = (0, 0);
    let started = Instant::now();
    loop {
        if started.elapsed() > Duration::from_secs(3_600) {
            return Err(format!("{ended} of {ends_due} jobs ended in an hour"));
        }
        served.check_sources().await?;
        let changes = player.play_queue(rig.queue_arn).await.map_err(|e| e.to_string())?;
        if !changes.is_empty() {
            player.settle(&changes).await.map_err(|e| e.to_string())?;
            Delivery::of(&changes).to_event_bus(events, bus).await.map_err(|e| e.to_string())?;
            played += changes.len();
            ended += changes.iter().filter(|c| is_end_of_a_unit_job(&c.event)).count();
            continue;
        }
        if ended >= ends_due {
            // Nothing left to play: once the lanes are empty, nothing more will be submitted.
            served.drained(&sqs, Duration::from_secs(1_800)).await?;
            let late = player.play_queue(rig.queue_arn).await.map_err(|e| e.to_string())?;
            if late.is_empty() {
                return Ok(played);
            }
            let late: std::collections::BTreeSet<&str> = late.iter().map(|c| c.job_name.as_str()).collect();
            return Err(format!(
                "{} jobs were submitted after every unit had ended, {:?} among them",
                late.len(),
                late.first()
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Whether a played event ends a job that does a unit's work: a plain job or an array's
/// child, not an array's parent.
fn is_end_of_a_unit_job(event: &Value) -> bool {
    let detail = &event["detail"];
    matches!(detail["status"].as_str(), Some("SUCCEEDED" | "FAILED")) && detail["arrayProperties"]["size"].is_null()
}

/// What one sweep of the stack costs: one scheduled invocation of job-events, counted.
pub async fn sweep_once(rig: &Rig<'_>) -> Result<ProcessCalls, String> {
    let sweep =
        counted(&rig.spawn, "job-events (sweep)", "bill-sweep", "batchline-job-events", rig.environment).await?;
    let event: Value = serde_json::from_str(include_str!("../../../tests/fixtures/schedule/scheduled-event.json"))
        .map_err(|e| e.to_string())?;
    match sweep.function.invoke(&event).await? {
        Outcome::Response(_) => {}
        Outcome::Error(error) => return Err(format!("the sweep failed: {error}")),
    }
    sweep.invocations.store(1, std::sync::atomic::Ordering::Relaxed);
    Ok(sweep.finish().await)
}

/// Every kind at every size, the sweep once, the metrics the stack published: the bill's
/// tables. `namespace` is the stack's metric namespace.
pub async fn run(rig: &Rig<'_>, namespace: &str, say: &mut (dyn FnMut(String) + Send)) -> Result<String, String> {
    let prices = crate::prices::Prices::load()?;
    let text = std::fs::read_to_string(batchline_testkit::emulator::repo_root().join("template.yaml"))
        .map_err(|e| e.to_string())?;
    let template: serde_yaml::Value = serde_yaml::from_str(&text).map_err(|e| e.to_string())?;
    let kept = batchline_testkit::emulator::repo_root().join("target/bench/bill");
    if std::env::var_os("BENCH_BILL_REPRICE").is_some() {
        return reprice(&kept, &template, &prices);
    }
    std::fs::create_dir_all(&kept).map_err(|e| e.to_string())?;
    let mut scenarios = Vec::new();
    let mut player = Player::new(rig.sdk);
    for kind in kinds() {
        for units in sizes(kind) {
            let counted = measure(rig, &mut player, kind, units).await?;
            say(format!(
                "bill: {units} × {}: {} job events played, {:.0} s on the emulator",
                kind.unit(),
                counted.job_events,
                counted.seconds
            ));
            keep(&kept, &format!("{}-{units}", kind.key()), &counted)?;
            scenarios.push(counted);
        }
    }
    let sweep = sweep_once(rig).await?;
    keep(&kept, "sweep", &sweep)?;
    let metrics = published_metrics(namespace).await?;
    keep(&kept, "metrics", &metrics)?;
    render(&scenarios, &sweep, metrics, &template, &prices)
}

/// The bill's tables from what was counted.
fn render(
    scenarios: &[Counted],
    sweep: &ProcessCalls,
    metrics: usize,
    template: &serde_yaml::Value,
    prices: &crate::prices::Prices,
) -> Result<String, String> {
    let sweep = crate::prices::process_usage(sweep, template, prices)?;
    let priced = crate::bill_table::price_all(scenarios, template, prices)?;
    let fixed = crate::bill_table::fixed_from_template(template, metrics, sweep);
    let mut out = crate::bill_table::render_summary(&priced, prices)?;
    out.push_str(&crate::bill_table::render_lines(&priced));
    out.push_str(&crate::bill_table::render_fixed(&fixed, prices)?);
    out.push_str(&crate::bill_table::render_calls(&priced));
    out.push_str(&crate::bill_table::render_prices(prices));
    Ok(out)
}

/// The bill priced again from what the last run kept in `kept` (with today's price list).
fn reprice(
    kept: &std::path::Path,
    template: &serde_yaml::Value,
    prices: &crate::prices::Prices,
) -> Result<String, String> {
    let read = |name: &str| -> Result<String, String> {
        let path = kept.join(format!("{name}.json"));
        std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))
    };
    let mut scenarios = Vec::new();
    for kind in kinds() {
        for units in sizes(kind) {
            let text = read(&format!("{}-{units}", kind.key()))?;
            scenarios.push(serde_json::from_str::<Counted>(&text).map_err(|e| e.to_string())?);
        }
    }
    let sweep: ProcessCalls = serde_json::from_str(&read("sweep")?).map_err(|e| e.to_string())?;
    let metrics: usize = serde_json::from_str(&read("metrics")?).map_err(|e| e.to_string())?;
    render(&scenarios, &sweep, metrics, template, prices)
}

/// Writes what was counted to `<kept>/<name>.json`.
fn keep<T: serde::Serialize>(kept: &std::path::Path, name: &str, value: &T) -> Result<(), String> {
    let path = kept.join(format!("{name}.json"));
    let text = serde_json::to_string_pretty(value).map_err(|e| e.to_string())?;
    std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))
}

/// How many metrics (name and dimension values) the stack has published to `namespace`,
/// as the emulator counts them (its ListMetrics takes minutes after a bill's datums).
async fn published_metrics(namespace: &str) -> Result<usize, String> {
    let path = format!("/_batchline/cloudwatch/metrics?namespace={}", urlencode(namespace));
    let endpoint = batchline_testkit::emulator::endpoint().to_owned();
    let answer =
        tokio::task::spawn_blocking(move || batchline_testkit::emulator::http_call(&endpoint, "GET", &path, ""))
            .await
            .map_err(|e| e.to_string())??;
    let answer: Value = serde_json::from_str(&answer).map_err(|e| format!("{e}: {answer}"))?;
    answer["metrics"].as_u64().map(|n| n as usize).ok_or_else(|| format!("no metric count in {answer}"))
}

/// A query value with everything but letters, digits and `-_.~` percent-encoded.
fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
