//! The local end-to-end run: the whole stack on one machine, served as `scripts/local-stack` serves one, and driven as a client would drive it.
//!
//! The demo makes what `template.yaml` deploys on AWS in the emulator — the table, the
//! input bucket with EventBridge notifications — and then:
//!
//! 1. bootstrap (its built binary under a local Lambda Runtime API) gets a real
//!    CloudFormation Create request (a three-stage pipeline whose middle stage needs more
//!    memory than it is given) and answers at a local ResponseURL;
//! 2. the stack is served ([`serve::ServedStack`], the one engine the local stack and the
//!    command line's tests use too): its HTTP API in front of submit, the template's rules
//!    and SQS lanes into submit and job-events, Batch played;
//! 3. from then on the demo is a client: it puts an object into the bucket (its Object
//!    Created event takes the template's route: EventBridge → the trigger queue → submit,
//!    which starts a run) and follows the run through the API, with the command line's
//!    client (`batchline_cli::client`), as its stages go by — the middle one fails out of
//!    memory and is resubmitted larger;
//! 4. it reads the jobs back from Batch and the metrics from CloudWatch;
//! 5. bootstrap gets the Delete request and the environment is checked gone.

pub mod configuration;
pub mod local_stack;
pub mod serve;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use aws_sdk_cloudwatch::types::{Dimension, Statistic};
use aws_sdk_s3::types::{EventBridgeConfiguration, NotificationConfiguration};
use serde_json::{json, Value};

use batchline_testkit::emulator::{endpoint, repo_root, sdk_config, unique_name, REGION};
use batchline_testkit::local_lambda::{LocalLambda, Outcome};
use batchline_testkit::response_server::ResponseServer;

/// The pipeline the demo runs: prepare → transform (needs 1 GiB, given 512 MiB) → report.
pub const PIPELINE: &str = "process";

/// What the run produced, for printing and for the end-to-end test.
#[derive(Debug, Clone)]
pub struct Report {
    pub prefix: String,
    pub bootstrap_create: Value,
    pub run_id: String,
    /// The run as `GET /runs/{id}` shows it.
    pub run: Value,
    pub jobs: Vec<JobLine>,
    /// Metric name → (sum, samples), for the stack's default queue.
    pub metrics: BTreeMap<String, (f64, f64)>,
    pub bootstrap_delete: Value,
    /// Queues and compute environments of the stack left after the Delete.
    pub left_after_delete: Vec<String>,
}

/// One Batch job of the run.
#[derive(Debug, Clone)]
pub struct JobLine {
    pub job_id: String,
    pub stage: String,
    pub attempt: String,
    pub size: String,
    /// As Batch reports it at the end.
    pub status: String,
    pub created_at: i64,
}

/// The environment variables the template gives the functions, with their local values.
/// Fails on a variable the local run does not know how to set, so the two cannot drift.
pub fn function_environment(template_names: &[String], table: &str) -> Result<Vec<(String, String)>, String> {
    template_names
        .iter()
        .map(|name| {
            let value = match name.as_str() {
                batchline::settings::TABLE_VAR => table.to_owned(),
                batchline::settings::METRIC_NAMESPACE_VAR => batchline::settings::DEFAULT_METRIC_NAMESPACE.to_owned(),
                // Empty: the built-in rates.
                batchline::settings::PRICE_VCPU_HOUR_VAR
                | batchline::settings::PRICE_GB_HOUR_VAR
                | batchline::settings::PRICE_SPOT_VCPU_HOUR_VAR
                | batchline::settings::PRICE_SPOT_GB_HOUR_VAR => String::new(),
                other => return Err(format!("template.yaml sets {other}, which the local run does not know")),
            };
            Ok((name.clone(), value))
        })
        .collect()
}

/// The names of the variables `template.yaml` sets for every function (Globals).
pub fn template_variable_names() -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(repo_root().join("template.yaml")).map_err(|e| e.to_string())?;
    let template: serde_yaml::Value = serde_yaml::from_str(&text).map_err(|e| e.to_string())?;
    let variables = template["Globals"]["Function"]["Environment"]["Variables"]
        .as_mapping()
        .ok_or("template.yaml has no Globals.Function.Environment.Variables")?;
    Ok(variables.keys().filter_map(|k| k.as_str().map(str::to_owned)).collect())
}

/// Where the function binaries are (built by `cargo build --bins`).
pub fn binary(name: &str) -> Result<PathBuf, String> {
    let path = repo_root().join("target/debug").join(name);
    if path.exists() {
        Ok(path)
    } else {
        Err(format!(
            "{} is missing: run `cargo build --workspace --bins` (scripts/demo and scripts/test do)",
            path.display()
        ))
    }
}

/// The environment a function runs with locally: the template's variables with their local
/// values, the emulator's endpoint and test credentials, and INFO logs.
pub fn local_environment(table: &str) -> Result<Vec<(String, String)>, String> {
    let mut environment = function_environment(&template_variable_names()?, table)?;
    environment.extend([
        ("AWS_REGION".to_owned(), REGION.to_owned()),
        ("AWS_ENDPOINT_URL".to_owned(), endpoint().to_owned()),
        ("AWS_ACCESS_KEY_ID".to_owned(), "testing".to_owned()),
        ("AWS_SECRET_ACCESS_KEY".to_owned(), "testing".to_owned()),
        ("AWS_LAMBDA_LOG_LEVEL".to_owned(), "INFO".to_owned()),
    ]);
    Ok(environment)
}

fn ok(outcome: Outcome, what: &str) -> Result<Value, String> {
    match outcome {
        Outcome::Response(value) => Ok(value),
        Outcome::Error(error) => Err(format!("{what} failed: {error}")),
    }
}

/// An HTTP API request as API Gateway would send it to submit.
pub fn api_request(method: &str, path: &str, body: Option<&Value>) -> Value {
    json!({
        "version": "2.0", "routeKey": format!("{method} {path}"), "rawPath": path, "rawQueryString": "",
        "headers": {"content-type": "application/json"},
        "requestContext": {"http": {"method": method, "path": path, "protocol": "HTTP/1.1", "sourceIp": "127.0.0.1"},
                           "requestId": batchline_testkit::player::event_id(), "stage": "$default"},
        "body": body.map(|b| b.to_string()).unwrap_or_default(), "isBase64Encoded": false,
    })
}

/// The worked example job of the book's "Write your own job" (docs/src/guide/your-first-job.md),
/// which the demo's configuration declares as the guide does.
pub const WORDCOUNT: &str = "wordcount";

/// Registers the stack `prefix` with the emulator's IAM evaluation (devtools/iam): the
/// template's policies resolved with its table and input bucket.
pub fn register_stack(prefix: &str, table: &str, bucket: &str) -> Result<(), String> {
    let stack = batchline_testkit::emulator::iam_stack(prefix, table, None, Some(bucket));
    batchline_testkit::emulator::register_iam_stack(&stack, None, false)
}

/// The stack configuration the demo deploys (the custom resource's properties): its file
/// beside it ([`configuration::demo_file`]) with the local stand-ins for `prefix` and `bucket`.
pub fn properties(prefix: &str, bucket: &str) -> Result<Value, String> {
    configuration::resolve(&configuration::Source::File(configuration::demo_file()), prefix, bucket)
}

/// The request CloudFormation sends the `Environment` custom resource of stack `stack`
/// (`physical_id` and `old` properties for an Update or a Delete).
pub fn cloudformation_request(
    kind: &str,
    url: &str,
    stack: &str,
    properties: &Value,
    physical_id: Option<&str>,
    old: Option<&Value>,
) -> Value {
    let mut request = json!({
        "RequestType": kind, "ResponseURL": url,
        "StackId": batchline_testkit::emulator::stack_id(stack),
        "RequestId": batchline_testkit::player::event_id(), "ResourceType": "Custom::BatchlineEnvironment",
        "LogicalResourceId": "Environment", "ResourceProperties": properties,
    });
    if let Some(id) = physical_id {
        request["PhysicalResourceId"] = json!(id);
    }
    if let Some(old) = old {
        request["OldResourceProperties"] = old.clone();
    }
    request
}

/// Sends bootstrap a CloudFormation request and returns the one answer it PUT to a local ResponseURL.
pub async fn send_to_bootstrap(
    bootstrap: &LocalLambda,
    kind: &str,
    properties: &Value,
    physical_id: Option<&str>,
) -> Result<Value, String> {
    send_to_bootstrap_with_old(bootstrap, kind, properties, physical_id, None).await
}

/// [`send_to_bootstrap`], with an Update's old properties.
pub async fn send_to_bootstrap_with_old(
    bootstrap: &LocalLambda,
    kind: &str,
    properties: &Value,
    physical_id: Option<&str>,
    old: Option<&Value>,
) -> Result<Value, String> {
    let server = ResponseServer::start(0).await.map_err(|e| e.to_string())?;
    // The stack is named as its prefix, as the template sets NamePrefix.
    let stack = properties["NamePrefix"].as_str().unwrap_or_default();
    let request = cloudformation_request(kind, &server.url, stack, properties, physical_id, old);
    ok(bootstrap.invoke(&request).await?, "bootstrap")?;
    let mut answers = server.accepted_answers();
    if answers.len() != 1 {
        return Err(format!("bootstrap answered CloudFormation {} times", answers.len()));
    }
    Ok(answers.remove(0))
}

/// Runs the whole flow; `say` gets a line of progress at every step.
pub async fn run(say: &mut (dyn FnMut(String) + Send)) -> Result<Report, String> {
    run_with(say, Options::default()).await
}

/// How the demo runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Leave the stack up at the end (no bootstrap Delete), to look at it afterwards.
    pub keep: bool,
}

/// Like [`run`], with options.
pub async fn run_with(say: &mut (dyn FnMut(String) + Send), options: Options) -> Result<Report, String> {
    let sdk = sdk_config().await;
    let prefix = unique_name("demo");
    say("Batch is simulated here: no container runs. The Batch event player plays each job's state changes \
         (and its out-of-memory failure) as Batch would announce them."
        .to_owned());
    let table = format!("{prefix}-table");
    let bucket = format!("{prefix}-input");
    say(format!("local AWS at {} (moto + adapter); stack prefix {prefix}", endpoint()));

    // What template.yaml would create, in the emulator.
    batchline_testkit::table::create_table(&sdk, &table).await.map_err(|e| e.to_string())?;
    create_input_bucket(&sdk, &bucket).await?;
    say(format!("created table {table} and bucket {bucket} (EventBridge notifications)"));

    // One folder of logs per demo run; earlier runs' are removed so they do not pile up.
    let logs = repo_root().join("target/demo-logs");
    let _ = std::fs::remove_dir_all(&logs);
    // The functions sign as their roles of this stack: the emulator holds them to the
    // template's IAM policies.
    register_stack(&prefix, &table, &bucket)?;
    let launcher = serve::Launcher::new(&table, &logs.join(&prefix))?.signing_as_roles_of(&prefix);

    // 1. Provision through bootstrap, as CloudFormation would.
    let bootstrap = launcher.start("batchline-bootstrap", "batchline-bootstrap").await?;
    let properties = properties(&prefix, &bucket)?;
    let created = send_to_bootstrap(&bootstrap, "Create", &properties, None).await?;
    say(format!(
        "[1] bootstrap Create → {} ({}); queue {}",
        created["Status"].as_str().unwrap_or("?"),
        created["PhysicalResourceId"].as_str().unwrap_or("?"),
        created["Data"]["JobQueueArn"].as_str().unwrap_or("?")
    ));
    if created["Status"] != "SUCCESS" {
        bootstrap.stop().await;
        return Err(format!("bootstrap failed: {}", created["Reason"]));
    }
    let job_queues: Vec<String> =
        created["Data"]["JobQueueArns"].as_str().unwrap_or_default().split(',').map(str::to_owned).collect();
    let default_queue = created["Data"]["JobQueueArn"].as_str().unwrap_or_default().to_owned();

    // The stack served, as `scripts/local-stack` serves one; from here on the demo is its client.
    let routing =
        serve::Routing { name: prefix.clone(), job_queues, trigger: Some((bucket.clone(), INPUT_PREFIX.to_owned())) };
    let served = serve::ServedStack::start(&sdk, &launcher, routing, "127.0.0.1:0").await?;
    say(format!(
        "served: the API at {} (submit's binary), the template's rules and SQS lanes into submit and job-events, \
         Batch played (logs in {})",
        served.api.url,
        launcher.log_dir.display()
    ));
    // The command line's default limits (--cli-connect-timeout 10, --cli-read-timeout 60).
    let timeouts = batchline_cli::client::Timeouts::from_seconds(10, 60);
    let api =
        batchline_cli::client::Api::new(served.api.url.clone(), sdk.clone(), timeouts).map_err(|e| e.to_string())?;

    // 2. An object arrives.
    let key = format!("{INPUT_PREFIX}orders-2025-11-27.csv");
    let s3 = s3_client(&sdk);
    s3.put_object()
        .bucket(&bucket)
        .key(&key)
        .body(aws_sdk_s3::primitives::ByteStream::from(b"order,amount\n1,20.00\n2,13.50\n".to_vec()))
        .send()
        .await
        .map_err(|e| batchline::Error::aws("PutObject", e).to_string())?;
    say(format!("[2] put s3://{bucket}/{key}"));

    // 3-4. Watch the run through the API until it ends.
    let outcome = watch_run(&api, say).await;
    let (run_id, run) = match outcome {
        Ok(found) => found,
        Err(why) => {
            drop(served);
            bootstrap.stop().await;
            return Err(why);
        }
    };
    let run_status = run["status"].as_str().unwrap_or("?").to_owned();
    say(format!("[4] run {run_id} ended {run_status}"));

    // 5. What happened.
    say("[5] reading back the jobs from Batch and the metrics from CloudWatch (the metrics lane batches up to 10 s)"
        .to_owned());
    let jobs = job_lines(&sdk, &default_queue).await?;
    let ended_attempts = run["stages"]
        .as_object()
        .map(|stages| stages.values().flat_map(|s| s["attempts"].as_array().cloned().unwrap_or_default()).count())
        .unwrap_or_default();
    let metrics = counted_metrics(&sdk, &default_queue, ended_attempts as f64).await?;
    drop(served);

    // 6. Tear down, as CloudFormation would on stack delete.
    let (deleted, left_after_delete) = if options.keep {
        say(format!("[6] kept: the stack {prefix} stays in the emulator at {} (table {table})", endpoint()));
        (Value::Null, Vec::new())
    } else {
        let deleted =
            send_to_bootstrap(&bootstrap, "Delete", &properties, created["PhysicalResourceId"].as_str()).await?;
        let left_after_delete = leftovers(&sdk, &prefix).await?;
        say(format!(
            "[6] bootstrap Delete → {}; left behind: {}",
            deleted["Status"].as_str().unwrap_or("?"),
            if left_after_delete.is_empty() { "nothing".to_owned() } else { left_after_delete.join(", ") }
        ));
        (deleted, left_after_delete)
    };
    bootstrap.stop().await;

    Ok(Report {
        prefix,
        bootstrap_create: created,
        run_id,
        run,
        jobs,
        metrics,
        bootstrap_delete: deleted,
        left_after_delete,
    })
}

/// Where the demo's object goes: its S3 trigger's prefix.
pub const INPUT_PREFIX: &str = "incoming/";

/// An S3 client for the emulator (path-style addressing).
fn s3_client(sdk: &aws_config::SdkConfig) -> aws_sdk_s3::Client {
    aws_sdk_s3::Client::from_conf(aws_sdk_s3::config::Builder::from(sdk).force_path_style(true).build())
}

/// Creates the input bucket with EventBridge notifications, as template.yaml's bucket has
/// them (unless it exists already).
pub async fn create_input_bucket(sdk: &aws_config::SdkConfig, bucket: &str) -> Result<(), String> {
    let s3 = s3_client(sdk);
    if s3.head_bucket().bucket(bucket).send().await.is_err() {
        s3.create_bucket()
            .bucket(bucket)
            .send()
            .await
            .map_err(|e| batchline::Error::aws("CreateBucket", e).to_string())?;
    }
    s3.put_bucket_notification_configuration()
        .bucket(bucket)
        .notification_configuration(
            NotificationConfiguration::builder()
                .event_bridge_configuration(EventBridgeConfiguration::builder().build())
                .build(),
        )
        .send()
        .await
        .map_err(|e| batchline::Error::aws("PutBucketNotificationConfiguration", e).to_string())?;
    Ok(())
}

/// Waits (as a client: `GET /runs`) for the object's run to start, then follows it
/// (`GET /runs/{id}`) until it ends, telling `say` each attempt's changes. The run's id and
/// its last view.
async fn watch_run(
    api: &batchline_cli::client::Api,
    say: &mut (dyn FnMut(String) + Send),
) -> Result<(String, Value), String> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let run_id = loop {
        let listed = api.get(&format!("/runs?pipeline={PIPELINE}")).await.map_err(|e| e.to_string())?;
        if let Some(id) = listed["runs"].as_array().and_then(|runs| runs.first()).and_then(|r| r["runId"].as_str()) {
            break id.to_owned();
        }
        if Instant::now() > deadline {
            return Err("the object never started a run (is the S3 → EventBridge → SQS → submit path working?)".into());
        }
        tokio::time::sleep(WATCH_EVERY).await;
    };
    say(format!("    submit: the object's event (EventBridge → SQS) started pipeline {PIPELINE} run {run_id}"));
    let mut seen: BTreeMap<(String, u64), String> = BTreeMap::new();
    loop {
        let run = api.get(&format!("/runs/{run_id}")).await.map_err(|e| e.to_string())?;
        let mut changed = Vec::new();
        for (stage, view) in run["stages"].as_object().cloned().unwrap_or_default() {
            for attempt in view["attempts"].as_array().cloned().unwrap_or_default() {
                let number = attempt["number"].as_u64().unwrap_or_default();
                let status = attempt["status"].as_str().unwrap_or("?").to_owned();
                if seen.get(&(stage.clone(), number)) != Some(&status) {
                    seen.insert((stage.clone(), number), status.clone());
                    changed.push((stage.clone(), number, status, attempt));
                }
            }
        }
        // What ended first, then what it started (the stages come alphabetically).
        changed.sort_by_key(|(_, _, status, _)| !matches!(status.as_str(), "SUCCEEDED" | "FAILED"));
        for (stage, number, status, attempt) in changed {
            let reason = match (status.as_str(), attempt["reason"].as_str()) {
                ("FAILED", Some(reason)) => format!(" ({reason})"),
                _ => String::new(),
            };
            say(format!(
                "[3] {stage:<10} attempt {number} at {} vCPU / {} MiB: {status}{reason}",
                attempt["size"]["vcpu"].as_str().unwrap_or("?"),
                attempt["size"]["memoryMib"]
            ));
        }
        if run["status"] != "RUNNING" {
            return Ok((run_id, run));
        }
        if Instant::now() > deadline {
            return Err(format!("run {run_id} still RUNNING after two minutes: {run}"));
        }
        tokio::time::sleep(WATCH_EVERY).await;
    }
}

/// How often the demo asks the API how its run is doing.
const WATCH_EVERY: Duration = Duration::from_millis(500);

/// The queue's metrics once they count `ended` jobs (succeeded or failed) and as many
/// RUNNABLE transitions, or after 30 s: the metrics lane delivers in batches up to its
/// 10-second window after the run's lane, and a batch whose metrics failed comes again
/// later (so a job's RUNNABLE may be counted after its end).
async fn counted_metrics(
    sdk: &aws_config::SdkConfig,
    queue_arn: &str,
    ended: f64,
) -> Result<BTreeMap<String, (f64, f64)>, String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = read_metrics(sdk, queue_arn).await?;
        let counted = ["JobsSucceeded", "JobsFailed"].iter().map(|m| metrics.get(*m).map_or(0.0, |v| v.0)).sum::<f64>();
        let runnable = metrics.get("JobsRunnable").map_or(0.0, |v| v.0);
        if (counted >= ended && runnable >= ended) || Instant::now() > deadline {
            return Ok(metrics);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn job_lines(sdk: &aws_config::SdkConfig, queue: &str) -> Result<Vec<JobLine>, String> {
    let batch = aws_sdk_batch::Client::new(sdk);
    let listed = batch
        .list_jobs()
        .job_queue(queue)
        .filters(aws_sdk_batch::types::KeyValuesPair::builder().name("AFTER_CREATED_AT").values("0").build())
        .send()
        .await
        .map_err(|e| batchline::Error::aws("ListJobs", e).to_string())?;
    let ids: Vec<String> = listed.job_summary_list().iter().filter_map(|j| j.job_id().map(str::to_owned)).collect();
    if ids.is_empty() {
        return Ok(vec![]);
    }
    let described = batch
        .describe_jobs()
        .set_jobs(Some(ids))
        .send()
        .await
        .map_err(|e| batchline::Error::aws("DescribeJobs", e).to_string())?;
    let mut lines: Vec<JobLine> = described
        .jobs()
        .iter()
        .map(|job| {
            let id = job.job_id().unwrap_or_default().to_owned();
            let requirement = |kind: &str| {
                job.container()
                    .map(|c| c.resource_requirements())
                    .unwrap_or_default()
                    .iter()
                    .find(|r| r.r#type().map(|t| t.as_str()) == Some(kind))
                    .and_then(|r| r.value())
                    .unwrap_or("?")
                    .to_owned()
            };
            JobLine {
                stage: job.tags().and_then(|t| t.get("batchline:stage")).cloned().unwrap_or_default(),
                attempt: job
                    .container()
                    .map(|c| c.environment())
                    .unwrap_or_default()
                    .iter()
                    .find(|e| e.name() == Some("BATCHLINE_ATTEMPT"))
                    .and_then(|e| e.value())
                    .unwrap_or("1")
                    .to_owned(),
                size: format!("{} vCPU / {} MiB", requirement("VCPU"), requirement("MEMORY")),
                status: job.status().map(|s| s.as_str().to_owned()).unwrap_or_default(),
                created_at: job.created_at().unwrap_or_default(),
                job_id: id,
            }
        })
        .collect();
    lines.sort_by_key(|l| l.created_at);
    Ok(lines)
}

async fn read_metrics(sdk: &aws_config::SdkConfig, queue_arn: &str) -> Result<BTreeMap<String, (f64, f64)>, String> {
    let cloudwatch = aws_sdk_cloudwatch::Client::new(sdk);
    let queue = queue_arn.rsplit('/').next().unwrap_or_default();
    let now = SystemTime::now();
    let mut metrics = BTreeMap::new();
    for name in
        ["JobsRunnable", "JobsRunning", "JobsSucceeded", "JobsFailed", "QueueWaitTime", "RunTime", "EstimatedCost"]
    {
        let reply = cloudwatch
            .get_metric_statistics()
            .namespace(batchline::settings::DEFAULT_METRIC_NAMESPACE)
            .metric_name(name)
            .dimensions(Dimension::builder().name("JobQueue").value(queue).build())
            .start_time(aws_sdk_cloudwatch::primitives::DateTime::from(now - Duration::from_secs(3 * 3600)))
            .end_time(aws_sdk_cloudwatch::primitives::DateTime::from(now + Duration::from_secs(3 * 3600)))
            .period(6 * 3600)
            .statistics(Statistic::Sum)
            .statistics(Statistic::SampleCount)
            .send()
            .await
            .map_err(|e| batchline::Error::aws("GetMetricStatistics", e).to_string())?;
        let sum = reply.datapoints().iter().filter_map(|d| d.sum()).sum();
        let count = reply.datapoints().iter().filter_map(|d| d.sample_count()).sum();
        metrics.insert(name.to_owned(), (sum, count));
    }
    Ok(metrics)
}

/// The stack's queues and compute environments still there (after a Delete: none).
pub async fn leftovers(sdk: &aws_config::SdkConfig, prefix: &str) -> Result<Vec<String>, String> {
    let batch = aws_sdk_batch::Client::new(sdk);
    let mut left = Vec::new();
    let queues = batch
        .describe_job_queues()
        .send()
        .await
        .map_err(|e| batchline::Error::aws("DescribeJobQueues", e).to_string())?;
    left.extend(
        queues
            .job_queues()
            .iter()
            .filter_map(|q| q.job_queue_name())
            .filter(|n| n.starts_with(prefix))
            .map(|n| format!("queue {n}")),
    );
    let environments = batch
        .describe_compute_environments()
        .send()
        .await
        .map_err(|e| batchline::Error::aws("DescribeComputeEnvironments", e).to_string())?;
    left.extend(
        environments
            .compute_environments()
            .iter()
            .filter_map(|c| c.compute_environment_name())
            .filter(|n| n.starts_with(prefix))
            .map(|n| format!("compute environment {n}")),
    );
    Ok(left)
}

/// The report as a person reads it.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "\nRun {} of pipeline {}: {}\n",
        report.run_id,
        PIPELINE,
        report.run["status"].as_str().unwrap_or("?")
    ));
    if let Some(reason) = report.run["reason"].as_str() {
        out.push_str(&format!("  reason: {reason}\n"));
    }
    out.push_str("\nStages (in order):\n");
    for stage in ["prepare", "transform", "report"] {
        let view = &report.run["stages"][stage];
        let after = view["after"]
            .as_array()
            .map(|a| a.iter().filter_map(|s| s.as_str()).collect::<Vec<_>>().join(", "))
            .unwrap_or_default();
        out.push_str(&format!(
            "  {stage:<10} {:<10} after: {}\n",
            view["status"].as_str().unwrap_or("?"),
            if after.is_empty() { "-".to_owned() } else { after }
        ));
        for attempt in view["attempts"].as_array().cloned().unwrap_or_default() {
            out.push_str(&format!(
                "      attempt {} {} vCPU / {} MiB → {}{}\n",
                attempt["number"],
                attempt["size"]["vcpu"].as_str().unwrap_or("?"),
                attempt["size"]["memoryMib"],
                attempt["status"].as_str().unwrap_or("?"),
                attempt["reason"]
                    .as_str()
                    .filter(|r| r.starts_with("OutOfMemory"))
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            ));
        }
    }
    out.push_str("\nBatch jobs:\n");
    for job in &report.jobs {
        out.push_str(&format!("  {:<10} {:<22} {}\n", job.stage, job.size, job.status));
    }
    out.push_str("\nCloudWatch metrics (namespace Batchline, this stack's queue):\n");
    for (name, (sum, samples)) in &report.metrics {
        let line = match name.as_str() {
            // Times: what one job waited or ran, on average.
            "QueueWaitTime" | "RunTime" => {
                format!("average {:.1} s over {samples} jobs", sum / samples.max(1.0) / 1000.0)
            }
            "EstimatedCost" => format!("${sum:.6} in all, ${:.6} a job on average", sum / samples.max(1.0)),
            _ => format!("{sum}"),
        };
        out.push_str(&format!("  {name:<14} {line}\n"));
    }
    if report.bootstrap_delete.is_null() {
        out.push_str("\nTeardown: skipped (--keep); `scripts/emulator stop` ends the emulator and everything in it\n");
        return out;
    }
    out.push_str(&format!(
        "\nTeardown: bootstrap Delete {}; {}\n",
        report.bootstrap_delete["Status"].as_str().unwrap_or("?"),
        if report.left_after_delete.is_empty() {
            "no queue or compute environment left".to_owned()
        } else {
            report.left_after_delete.join(", ")
        }
    ));
    out
}
