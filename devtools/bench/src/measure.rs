//! The benchmark: Batchline's Rust functions side by side with Python 3.11 + boto3 baselines doing the same work.
//!
//! Each function runs as a process under a local Lambda Runtime API ([`LocalLambda`]) — the
//! Rust release binaries, and the Python handlers in `devtools/bench/python` under the real Python
//! runtime interface client (`awslambdaric`) — and is measured the same way:
//! - init: process start → its first request for work, over [`COLD_STARTS`] cold starts;
//! - per event: wall time and CPU time (user + system, from `/proc`) for 3,000 job-state
//!   events in SQS batches of the template's size (read from template.yaml), and for 200
//!   S3 events to submit —
//!   once against the emulator, once against a fixed-reply endpoint ([`FixedReply`]) so the
//!   handler's own cost shows;
//! - peak resident memory (`VmHWM`) after the runs;
//! - AWS calls per 1,000 events, by operation (counted at the fixed-reply endpoint);
//! - the arm64 deployment zip (built by `cargo lambda build --arm64 --output-format zip`)
//!   against the Python handler's zip.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use batchline::store::{ConfigStore, DynamoStore};
use serde_json::{json, Value};

use crate::fixed_reply::FixedReply;
use crate::lanes::{self, LaneReport, Shape};
use crate::{bill, burst, maps};
use batchline_demo::send_to_bootstrap;
use batchline_testkit::emulator::{endpoint, repo_root, sdk_config, unique_name, REGION};
use batchline_testkit::local_lambda::{LocalLambda, Outcome};

pub const COLD_STARTS: usize = 20;
pub const JOB_EVENTS: usize = 3_000;

/// The SQS batch size template.yaml gives job-events' event source.
pub fn sqs_batch_size() -> Result<usize, String> {
    let text = std::fs::read_to_string(repo_root().join("template.yaml")).map_err(|e| e.to_string())?;
    let template: serde_yaml::Value = serde_yaml::from_str(&text).map_err(|e| e.to_string())?;
    template["Resources"]["JobEventsFunction"]["Properties"]["Events"]["JobStateChanges"]["Properties"]["BatchSize"]
        .as_u64()
        .map(|n| n as usize)
        .ok_or_else(|| "template.yaml gives job-events no SQS BatchSize".to_owned())
}
pub const SUBMIT_EVENTS: usize = 200;
/// The pipeline the stage-to-stage measurement runs.
pub const LANES_PIPELINE: &str = "chain";

/// How to start one implementation of a function.
#[derive(Debug, Clone)]
pub struct Implementation {
    pub label: &'static str,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub folder: Option<PathBuf>,
}

impl Implementation {
    pub fn rust(binary: &str) -> Implementation {
        Implementation {
            label: "Rust",
            program: repo_root().join("target/release").join(binary),
            args: vec![],
            folder: None,
        }
    }

    pub fn python(module: &str) -> Implementation {
        Implementation {
            label: "Python",
            program: repo_root().join(".venv-bench/bin/python"),
            args: vec!["-m".into(), "awslambdaric".into(), format!("{module}.handler")],
            folder: Some(repo_root().join("devtools/bench/python")),
        }
    }

    async fn start(&self, name: &str, environment: &[(String, String)]) -> Result<LocalLambda, String> {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let log = repo_root().join("target/bench").join(format!("{name}-{}.log", self.label));
        LocalLambda::start_command(
            name,
            &self.program,
            &args,
            self.folder.as_deref(),
            environment,
            Duration::from_secs(120),
            Some(&log),
        )
        .await
        .map_err(|e| format!("starting {name} ({}): {e}", self.label))
    }
}

/// Median and worst of the cold starts, in milliseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct InitTimes {
    pub median_ms: f64,
    pub p99_ms: f64,
}

/// Throughput of one run.
#[derive(Debug, Clone, Copy, Default)]
pub struct PerEvent {
    pub wall_us: f64,
    pub cpu_us: f64,
}

#[derive(Debug, Clone, Default)]
pub struct Measured {
    pub init: InitTimes,
    pub against_emulator: PerEvent,
    pub against_fixed_reply: PerEvent,
    pub peak_rss_kib: u64,
    pub calls_per_thousand: BTreeMap<String, f64>,
    pub zip_bytes: u64,
}

/// The functions' environment as the template gives it (through the demo, so the two
/// cannot drift), with the bench's own metric namespace and AWS endpoint.
fn environment(endpoint: &str, table: &str, namespace: &str) -> Result<Vec<(String, String)>, String> {
    let mut variables = batchline_demo::function_environment(&batchline_demo::template_variable_names()?, table)?;
    for (name, value) in variables.iter_mut() {
        if name == batchline::settings::METRIC_NAMESPACE_VAR {
            *value = namespace.to_owned();
        }
    }
    variables.extend([
        ("AWS_REGION".into(), REGION.into()),
        ("AWS_DEFAULT_REGION".into(), REGION.into()),
        ("AWS_ENDPOINT_URL".into(), endpoint.into()),
        ("AWS_ACCESS_KEY_ID".into(), "testing".into()),
        ("AWS_SECRET_ACCESS_KEY".into(), "testing".into()),
        ("AWS_LAMBDA_LOG_LEVEL".into(), "WARN".into()),
    ]);
    Ok(variables)
}

/// `(user + system CPU seconds, peak resident KiB)` of a process, from `/proc`.
pub(crate) fn process_usage(pid: u32) -> Result<(f64, u64), String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| e.to_string())?;
    let after_name = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or_default();
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name.
    let ticks: f64 =
        fields.get(11..13).ok_or("short /proc stat")?.iter().map(|f| f.parse::<f64>().unwrap_or(0.0)).sum();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| e.to_string())?;
    let peak = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    Ok((ticks / 100.0, peak))
}

async fn init_times(
    implementation: &Implementation,
    name: &str,
    environment: &[(String, String)],
) -> Result<InitTimes, String> {
    let mut times = Vec::with_capacity(COLD_STARTS);
    for _ in 0..COLD_STARTS {
        let function = implementation.start(name, environment).await?;
        times.push(function.wait_until_ready(Duration::from_secs(30)).await?.as_secs_f64() * 1000.0);
        function.stop().await;
    }
    times.sort_by(f64::total_cmp);
    let p99 = times[((times.len() as f64 * 0.99).ceil() as usize).saturating_sub(1).min(times.len() - 1)];
    Ok(InitTimes { median_ms: times[times.len() / 2], p99_ms: p99 })
}

/// Invokes every payload in turn on one warm process; returns per-event wall and CPU time
/// and the process's peak memory.
async fn run(
    implementation: &Implementation,
    name: &str,
    environment: &[(String, String)],
    warm_up: &Value,
    payloads: &[Value],
    events: usize,
) -> Result<(PerEvent, u64), String> {
    let function = implementation.start(name, environment).await?;
    function.wait_until_ready(Duration::from_secs(30)).await?;
    let pid = function.pid().ok_or("no pid")?;
    check(function.invoke(warm_up).await?, name)?;
    let (cpu_before, _) = process_usage(pid)?;
    let started = Instant::now();
    for payload in payloads {
        check(function.invoke(payload).await?, name)?;
    }
    let wall = started.elapsed().as_secs_f64();
    let (cpu_after, peak) = process_usage(pid)?;
    function.stop().await;
    Ok((PerEvent { wall_us: wall * 1e6 / events as f64, cpu_us: (cpu_after - cpu_before) * 1e6 / events as f64 }, peak))
}

fn check(outcome: Outcome, name: &str) -> Result<Value, String> {
    match outcome {
        Outcome::Response(value) => {
            if value["batchItemFailures"].as_array().is_some_and(|f| !f.is_empty()) {
                return Err(format!("{name} reported failed messages: {value}"));
            }
            Ok(value)
        }
        Outcome::Error(error) => Err(format!("{name} failed: {error}")),
    }
}

/// `count` distinct job-state events as SQS batches of `batch` records, as the template's
/// event source mapping delivers them.
pub fn job_event_batches(count: usize, batch: usize, queue: &str, tag: &str) -> Vec<Value> {
    let template: Value =
        serde_json::from_str(include_str!("../../../tests/fixtures/batch/succeeded-fargate.json")).unwrap_or_default();
    let statuses = ["RUNNABLE", "STARTING", "RUNNING", "SUCCEEDED"];
    let now_ms = batchline::now_ms();
    let events: Vec<Value> = (0..count)
        .map(|i| {
            let mut event = template.clone();
            event["id"] = json!(format!("{tag}-{i}"));
            event["time"] = json!(batchline_testkit::player::iso_time(now_ms));
            let detail = &mut event["detail"];
            detail["status"] = json!(statuses[i % 4]);
            detail["jobQueue"] = json!(format!("arn:aws:batch:us-east-1:123456789012:job-queue/{queue}"));
            detail["createdAt"] = json!(now_ms - 120_000);
            detail["startedAt"] = json!(now_ms - 60_000);
            detail["stoppedAt"] = json!(now_ms - 1_000 + i as i64);
            detail["tags"] = json!({});
            event
        })
        .collect();
    batchline_testkit::player::Delivery::from_events(events)
        .sqs_batches("arn:aws:sqs:us-east-1:123456789012:bench", batch)
}

/// `count` S3 Object Created events for distinct objects under `incoming/`.
pub fn object_events(count: usize, bucket: &str, tag: &str) -> Vec<Value> {
    let template: Value =
        serde_json::from_str(include_str!("../../../tests/fixtures/s3/object-created.json")).unwrap_or_default();
    (0..count)
        .map(|i| {
            let mut event = template.clone();
            event["id"] = json!(format!("{tag}-{i}"));
            event["detail"]["bucket"]["name"] = json!(bucket);
            event["detail"]["object"]["key"] = json!(format!("incoming/{tag}/part-{i:05}.csv"));
            event["detail"]["object"]["sequencer"] = json!(format!("{i:018X}"));
            event
        })
        .collect()
}

fn zip_size(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Where the functions run: the emulator, or the fixed-reply endpoint.
pub struct Backends {
    pub emulator_env: Vec<(String, String)>,
    pub fixed: FixedReply,
    pub fixed_env: Vec<(String, String)>,
}

/// One function to measure in both implementations.
pub struct Subject<'a> {
    pub name: &'static str,
    pub implementations: [Implementation; 2],
    /// The invocations of one run, for a tag that keeps events distinct between runs.
    pub payloads: &'a dyn Fn(&str) -> Vec<Value>,
    pub events: usize,
    /// Each implementation's deployment zip.
    pub zips: [PathBuf; 2],
}

/// Measures one function in both implementations.
pub async fn measure_pair(
    subject: &Subject<'_>,
    backends: &Backends,
    say: &mut (dyn FnMut(String) + Send),
) -> Result<[Measured; 2], String> {
    let name = subject.name;
    let mut results: [Measured; 2] = Default::default();
    for (index, implementation) in subject.implementations.iter().enumerate() {
        let result = &mut results[index];
        result.init = init_times(implementation, name, &backends.emulator_env).await?;
        say(format!(
            "{name} {}: init median {:.1} ms, p99 {:.1} ms",
            implementation.label, result.init.median_ms, result.init.p99_ms
        ));
        let fresh = |tag: &str| ((subject.payloads)(tag), (subject.payloads)(&format!("{tag}-warm")).remove(0));
        let (payloads, warm) = fresh(&unique_name("bench"));
        let (emulator, peak) =
            run(implementation, name, &backends.emulator_env, &warm, &payloads, subject.events).await?;
        result.against_emulator = emulator;
        let (payloads, warm) = fresh(&unique_name("bench"));
        backends.fixed.reset();
        let (fixed_run, fixed_peak) =
            run(implementation, name, &backends.fixed_env, &warm, &payloads, subject.events).await?;
        result.against_fixed_reply = fixed_run;
        result.peak_rss_kib = peak.max(fixed_peak);
        // The warm-up invocation is in the counts too; count its events.
        let warm_events =
            (subject.payloads)("count-only").first().and_then(|p| p["Records"].as_array().map(Vec::len)).unwrap_or(1);
        let events = (subject.events + warm_events) as f64;
        result.calls_per_thousand =
            backends.fixed.counts().into_iter().map(|(op, n)| (op, n as f64 * 1000.0 / events)).collect();
        result.zip_bytes = zip_size(&subject.zips[index]);
        say(format!(
            "{name} {}: {:.0} µs/event wall, {:.1} µs/event CPU against the emulator; {:.1} µs wall, {:.1} µs CPU fixed-reply; peak {} KiB",
            implementation.label, emulator.wall_us, emulator.cpu_us, fixed_run.wall_us, fixed_run.cpu_us, result.peak_rss_kib
        ));
    }
    Ok(results)
}

/// Runs everything and returns the report as Markdown.
pub async fn run_all(say: &mut (dyn FnMut(String) + Send)) -> Result<String, String> {
    std::fs::create_dir_all(repo_root().join("target/bench")).map_err(|e| e.to_string())?;
    let sdk = sdk_config().await;
    let prefix = unique_name("bench");
    let table = format!("{prefix}-table");
    let namespace = format!("BatchlineBench/{prefix}");
    batchline_testkit::table::create_table(&sdk, &table).await.map_err(|e| e.to_string())?;
    let emulator_env = environment(endpoint(), &table, &namespace)?;

    // An environment for submit: bootstrap (the release binary) provisions it and publishes
    // the configuration; its S3 rule sends incoming/ objects of the bench bucket to a job.
    let bucket = format!("{prefix}-input");
    let bootstrap = Implementation::rust("batchline-bootstrap");
    let bootstrap_init = init_times(&bootstrap, "batchline-bootstrap", &emulator_env).await?;
    say(format!("bootstrap Rust: init median {:.1} ms, p99 {:.1} ms", bootstrap_init.median_ms, bootstrap_init.p99_ms));
    let provisioner = bootstrap.start("batchline-bootstrap", &emulator_env).await?;
    let mut properties = batchline_demo::properties(&prefix, &bucket)?;
    properties["Triggers"] = json!({"S3": {
        "input": {"Bucket": bucket, "Prefix": "incoming/", "JobDefinition": "default"},
        "burst": burst::trigger(&bucket)
    }});
    properties["Pipelines"][LANES_PIPELINE] = lanes::pipeline();
    properties["Pipelines"][maps::MAP_PIPELINE] = maps::pipeline(&bucket);
    properties["Roles"]["RunDataPrefix"] = json!("runs/");
    bill::declare(&mut properties, &bucket);
    let created = send_to_bootstrap(&provisioner, "Create", &properties, None).await?;
    if created["Status"] != "SUCCESS" {
        return Err(format!("bootstrap: {created}"));
    }
    let store = DynamoStore::new(aws_sdk_dynamodb::Client::new(&sdk), &table);
    let published = store.load_config().await.map_err(|e| e.to_string())?;
    let fixed = FixedReply::start(published.clone()).await.map_err(|e| e.to_string())?;
    let backends = Backends {
        fixed_env: environment(&fixed.endpoint, &table, &namespace)?,
        fixed,
        emulator_env: emulator_env.clone(),
    };
    let batch = sqs_batch_size()?;
    let lambda_dir = repo_root().join("target/lambda");
    let python_zip = |module: &str| repo_root().join("target/bench").join(format!("{module}.zip"));

    let job_events = Subject {
        name: "batchline-job-events",
        implementations: [Implementation::rust("batchline-job-events"), Implementation::python("job_events")],
        payloads: &|tag| job_event_batches(JOB_EVENTS, batch, "bench-queue", tag),
        events: JOB_EVENTS,
        zips: [lambda_dir.join("batchline-job-events/bootstrap.zip"), python_zip("job_events")],
    };
    // BENCH_ONLY=lanes measures the stage-to-stage latency alone, BENCH_ONLY=map a map
    // stage's calls alone, BENCH_ONLY=burst an S3 burst's with and without coalescing,
    // BENCH_ONLY=bill the orchestration bill alone, BENCH_ONLY=functions the functions
    // alone (when working on one of them).
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let runs = |part: &str| only.is_empty() || only == part;
    let skip_functions = !runs("functions");
    let skip_lanes = !runs("lanes");
    let skip_maps = !runs("map");
    let skip_burst = !runs("burst");
    let job_events =
        if skip_functions { Default::default() } else { measure_pair(&job_events, &backends, say).await? };
    let submit = Subject {
        name: "batchline-submit",
        implementations: [Implementation::rust("batchline-submit"), Implementation::python("submit")],
        payloads: &|tag| object_events(SUBMIT_EVENTS, &bucket, tag),
        events: SUBMIT_EVENTS,
        zips: [lambda_dir.join("batchline-submit/bootstrap.zip"), python_zip("submit")],
    };
    let submit = if skip_functions { Default::default() } else { measure_pair(&submit, &backends, say).await? };

    // Stage-to-stage latency: the previous single lane beside the template's lanes.
    let queue_arn = published
        .as_ref()
        .and_then(|c| c.job_queues.values().next().map(|q| q.arn.clone()))
        .ok_or("the configuration has no job queue")?;
    let submitter = Implementation::rust("batchline-submit").start("batchline-submit", &emulator_env).await?;
    submitter.wait_until_ready(Duration::from_secs(30)).await?;
    let setup = lanes::Setup {
        sdk: &sdk,
        table: &table,
        environment: &emulator_env,
        submit: &submitter,
        queue_arn: &queue_arn,
        pipeline: LANES_PIPELINE,
    };
    // The bill first: it plays every job in the queue, and the burst below leaves its
    // arrays unplayed.
    let bill_report = if runs("bill") {
        let rig = bill::Rig {
            sdk: &sdk,
            environment: &bill_environment(&emulator_env),
            stack: &prefix,
            bucket: &bucket,
            queue_arn: &queue_arn,
            spawn: maps::Spawn::release(),
        };
        Some(bill::run(&rig, &namespace, say).await?)
    } else {
        None
    };
    let map_report = if skip_maps {
        None
    } else {
        let report = maps::measure(&sdk, &table, &emulator_env, &prefix, &bucket, &queue_arn).await?;
        say(format!(
            "map of {} children: {} job events, ended in {:.0} s",
            report.children, report.job_events, report.seconds
        ));
        Some(report)
    };
    let burst_report = if skip_burst {
        None
    } else {
        let report = burst::measure(&sdk, &emulator_env, &prefix, &bucket, &queue_arn).await?;
        say(format!(
            "burst: {} objects one job each, {} coalesced into {} jobs, {:.1} s from the last object to its array",
            report.without.objects, report.with.objects, report.with.jobs, report.with.seconds_after_last
        ));
        Some(report)
    };
    let mut shapes = Vec::new();
    let template_lanes = lanes::template_lanes(std::slice::from_ref(&queue_arn))?;
    // The last shape shows what the shared emulator adds: with no other events, nothing
    // else is queued in front of the runs lane's calls in its one Python process.
    let measured = [
        Shape {
            label: "one lane (previous template)",
            lanes: vec![lanes::one_lane(std::slice::from_ref(&queue_arn))],
            runs: lanes::RUNS_ONE_LANE,
            background_per_second: lanes::BACKGROUND_PER_SECOND,
        },
        Shape {
            label: "two lanes (template.yaml)",
            lanes: template_lanes.clone(),
            runs: lanes::RUNS,
            background_per_second: lanes::BACKGROUND_PER_SECOND,
        },
        Shape {
            label: "two lanes, no other events",
            lanes: template_lanes,
            runs: lanes::RUNS,
            background_per_second: 0,
        },
    ];
    for shape in measured.into_iter().filter(|_| !skip_lanes) {
        let report = lanes::measure(&setup, &shape).await?;
        say(format!(
            "{}: stage-to-stage p50 {:.0} ms, p90 {:.0} ms, p99 {:.0} ms over {} transitions",
            shape.label,
            report.percentile(0.5),
            report.percentile(0.9),
            report.percentile(0.99),
            report.samples_ms.len()
        ));
        shapes.push(MeasuredShape { shape, report });
    }
    submitter.stop().await;
    send_to_bootstrap(&provisioner, "Delete", &properties, created["PhysicalResourceId"].as_str()).await?;
    provisioner.stop().await;
    let mut report = render(
        &job_events,
        &submit,
        bootstrap_init,
        zip_size(&lambda_dir.join("batchline-bootstrap/bootstrap.zip")),
        batch,
    );
    report.push_str(&render_lanes(&shapes));
    if let Some(bill_report) = &bill_report {
        report.push_str(bill_report);
    }
    if let Some(map_report) = &map_report {
        report.push_str(&maps::render(map_report));
    }
    if let Some(burst_report) = &burst_report {
        report.push_str(&burst::render(burst_report));
    }
    Ok(report)
}

/// The functions' environment for the bill: Lambda's default log level under the
/// template's JSON format (INFO), not the WARN the speed measurements run at, so the logs billed are the
/// lines a deployed stack writes.
fn bill_environment(environment: &[(String, String)]) -> Vec<(String, String)> {
    let mut environment: Vec<(String, String)> =
        environment.iter().filter(|(name, _)| name != "AWS_LAMBDA_LOG_LEVEL").cloned().collect();
    environment.push(("AWS_LAMBDA_LOG_FORMAT".into(), "JSON".into()));
    environment.push(("AWS_LAMBDA_LOG_LEVEL".into(), "INFO".into()));
    environment
}

fn ratio(python: f64, rust: f64) -> String {
    if rust > 0.0 {
        format!("{:.1}×", python / rust)
    } else {
        "–".into()
    }
}

fn render(
    job_events: &[Measured; 2],
    submit: &[Measured; 2],
    bootstrap_init: InitTimes,
    bootstrap_zip: u64,
    batch: usize,
) -> String {
    let mut out = String::new();
    out.push_str("| measure | Rust | Python 3.11 + boto3 | Python ÷ Rust | goal |\n|---|---|---|---|---|\n");
    let mut row = |measure: String, rust: f64, python: f64, unit: &str, goal: &str| {
        out.push_str(&format!(
            "| {measure} | {rust:.1} {unit} | {python:.1} {unit} | {} | {goal} |\n",
            ratio(python, rust)
        ));
    };
    for (name, pair) in [("job-events", job_events), ("submit", submit)] {
        let [rust, python] = pair;
        row(format!("{name} init, median of {COLD_STARTS}"), rust.init.median_ms, python.init.median_ms, "ms", "≥ 5×");
        row(format!("{name} init, p99"), rust.init.p99_ms, python.init.p99_ms, "ms", "");
        row(
            format!("{name} CPU per event, fixed-reply AWS"),
            rust.against_fixed_reply.cpu_us,
            python.against_fixed_reply.cpu_us,
            "µs",
            "≥ 10×",
        );
        row(
            format!("{name} wall per event, fixed-reply AWS"),
            rust.against_fixed_reply.wall_us,
            python.against_fixed_reply.wall_us,
            "µs",
            "",
        );
        row(
            format!("{name} CPU per event, emulator"),
            rust.against_emulator.cpu_us,
            python.against_emulator.cpu_us,
            "µs",
            "",
        );
        row(
            format!("{name} wall per event, emulator"),
            rust.against_emulator.wall_us,
            python.against_emulator.wall_us,
            "µs",
            "",
        );
        row(
            format!("{name} peak resident memory"),
            rust.peak_rss_kib as f64 / 1024.0,
            python.peak_rss_kib as f64 / 1024.0,
            "MiB",
            "≥ 3×",
        );
        row(
            format!("{name} deployment zip"),
            rust.zip_bytes as f64 / 1024.0,
            python.zip_bytes as f64 / 1024.0,
            "KiB",
            "",
        );
    }
    out.push_str(&format!(
        "| bootstrap init, median / p99 | {:.1} / {:.1} ms | – | – | |\n| bootstrap deployment zip | {:.1} KiB | – | – | |\n",
        bootstrap_init.median_ms,
        bootstrap_init.p99_ms,
        bootstrap_zip as f64 / 1024.0
    ));
    out.push_str("\nAWS calls per 1,000 events (counted at the fixed-reply endpoint):\n\n| function | operation | Rust | Python |\n|---|---|---|---|\n");
    for (name, pair) in [("job-events", job_events), ("submit", submit)] {
        let operations: std::collections::BTreeSet<&String> =
            pair.iter().flat_map(|m| m.calls_per_thousand.keys()).collect();
        for operation in operations {
            let get = |m: &Measured| m.calls_per_thousand.get(operation).copied().unwrap_or(0.0);
            out.push_str(&format!("| {name} | {operation} | {:.1} | {:.1} |\n", get(&pair[0]), get(&pair[1])));
        }
    }
    out.push_str(&format!(
        "\n{JOB_EVENTS} job-state events in SQS batches of {batch} (the template's BatchSize), {SUBMIT_EVENTS} S3 events to submit; host: {} cores. \
         Rust: release x86_64 binaries of this host; zips: arm64 as deployed.\n",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    ));
    out
}

/// One stage-to-stage shape and what it measured.
struct MeasuredShape {
    shape: Shape,
    report: LaneReport,
}

/// The stage-to-stage table: each shape's latency, and each lane's calls per event.
fn render_lanes(shapes: &[MeasuredShape]) -> String {
    let mut out = format!(
        "\nStage to stage: a stage's SUCCEEDED event put on the bus → the next stage's SubmitJob (runs of a {}-stage \
         pipeline, {} transitions each; local event sources with each lane's BatchSize and window):\n\n\
         | shape | lanes (BatchSize, window) | other job events a second | p50 | p90 | p99 | transitions | PutMetricData per 1,000 job events |\n|---|---|---|---|---|---|---|---|\n",
        lanes::STAGES,
        lanes::STAGES - 1,
    );
    for MeasuredShape { shape: Shape { label, lanes, background_per_second, .. }, report } in shapes {
        let described: Vec<String> =
            lanes.iter().map(|l| format!("{} ({}, {} s)", l.queue, l.batch_size, l.window.as_secs())).collect();
        // Every job event reaches one lane that counts it (the only lane, or the metrics
        // lane, which gets them all); pipeline events reach the runs lane a second time.
        let events: usize = report.lanes.iter().map(|(_, events, _)| *events).max().unwrap_or(0);
        let metric_calls: u64 = report
            .lanes
            .iter()
            .map(|(_, _, counts)| counts.get("cloudwatch:PutMetricData").copied().unwrap_or(0))
            .sum();
        out.push_str(&format!(
            "| {label} | {} | {background_per_second} | {:.0} ms | {:.0} ms | {:.0} ms | {} | {:.1} |\n",
            described.join(" + "),
            report.percentile(0.5),
            report.percentile(0.9),
            report.percentile(0.99),
            report.samples_ms.len(),
            metric_calls as f64 * 1000.0 / events.max(1) as f64
        ));
    }
    out.push_str("\nAWS calls per event delivered, by lane (counted by a forwarder in front of the emulator):\n\n| shape | lane | events | operation | calls per event |\n|---|---|---|---|---|\n");
    for MeasuredShape { shape: Shape { label, .. }, report } in shapes {
        for (queue, events, counts) in &report.lanes {
            for (operation, calls) in counts {
                let per_event = if *events > 0 { *calls as f64 / *events as f64 } else { f64::NAN };
                out.push_str(&format!("| {label} | {queue} | {events} | {operation} | {per_event:.3} |\n"));
            }
        }
    }
    out
}
