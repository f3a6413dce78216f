//! The local end-to-end run: the whole stack on one machine, driven through the real function binaries.
//!
//! What `template.yaml` deploys on AWS is set up here in the emulator — the table, the
//! input bucket with EventBridge notifications, the EventBridge rules (S3 Object Created →
//! an SQS queue for submit; this stack's Batch Job State Changes → the job-events queue),
//! and the three functions, each its built binary under a [`LocalLambda`] with the
//! environment variables the template gives it. Then:
//!
//! 1. bootstrap gets a real CloudFormation Create request (a three-stage pipeline whose
//!    middle stage needs more memory than it is given) and answers at a local ResponseURL;
//! 2. an object is put into the bucket; its Object Created event goes through EventBridge
//!    and SQS to submit, which starts a pipeline run;
//! 3. the Batch event player plays Batch: its events go onto the EventBridge bus, the rule
//!    routes them to the job-events queue, and they are delivered to job-events in SQS
//!    batches (messages it reports failed stay in the queue), which publishes metrics and
//!    submits the next stages;
//! 4. the middle stage fails out of memory and is resubmitted larger;
//! 5. the jobs, the run's stages and the metrics are read back;
//! 6. bootstrap gets the Delete request and the environment is checked gone.
//!
//! The emulator's EventBridge cannot invoke Lambda functions, so the part of Lambda that
//! polls SQS and invokes functions (an event source mapping) and EventBridge's Lambda
//! target are played by [`Pump`], through the Invoke API.

pub mod local_stack;
pub mod serve;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use aws_sdk_cloudwatch::types::{Dimension, Statistic};
use aws_sdk_s3::types::{EventBridgeConfiguration, NotificationConfiguration};
use serde_json::{json, Value};

use batchline_testkit::emulator::{default_network, endpoint, repo_root, sdk_config, unique_name, REGION};
use batchline_testkit::lanes::create_queue;
use batchline_testkit::local_lambda::{LocalLambda, Outcome};
use batchline_testkit::player::{Delivery, Player, StateChange};
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
    pub delivery_rounds: usize,
}

/// One Batch job of the run.
#[derive(Debug, Clone)]
pub struct JobLine {
    pub job_id: String,
    pub stage: String,
    pub attempt: String,
    pub size: String,
    pub states: Vec<String>,
    pub created_at: i64,
}

/// The environment variables the template gives the functions, with their local values.
/// Fails on a variable the local run does not know how to set, so the two cannot drift.
pub fn function_environment(template_names: &[String], table: &str) -> Result<Vec<(String, String)>, String> {
    template_names
        .iter()
        .map(|name| {
            let value = match name.as_str() {
                batchline::config::TABLE_VAR => table.to_owned(),
                batchline::config::METRIC_NAMESPACE_VAR => batchline::config::DEFAULT_METRIC_NAMESPACE.to_owned(),
                // Empty: the built-in rates.
                batchline::config::PRICE_VCPU_HOUR_VAR
                | batchline::config::PRICE_GB_HOUR_VAR
                | batchline::config::PRICE_SPOT_VCPU_HOUR_VAR
                | batchline::config::PRICE_SPOT_GB_HOUR_VAR => String::new(),
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

/// The three functions, running.
pub struct Functions {
    pub bootstrap: LocalLambda,
    pub submit: LocalLambda,
    pub job_events: LocalLambda,
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

impl Functions {
    pub async fn start(table: &str, log_dir: &Path) -> Result<Functions, String> {
        let environment = local_environment(table)?;
        std::fs::create_dir_all(log_dir).map_err(|e| e.to_string())?;
        let start = |name: &'static str, timeout: u64| {
            let environment = environment.clone();
            async move {
                let log = log_dir.join(format!("{name}.log"));
                LocalLambda::start(name, &binary(name)?, &environment, Duration::from_secs(timeout), Some(&log))
                    .await
                    .map_err(|e| format!("starting {name}: {e}"))
            }
        };
        let functions = Functions {
            bootstrap: start("batchline-bootstrap", 900).await?,
            submit: start("batchline-submit", 60).await?,
            job_events: start("batchline-job-events", 60).await?,
        };
        for function in [&functions.bootstrap, &functions.submit, &functions.job_events] {
            function.wait_until_ready(Duration::from_secs(30)).await?;
        }
        Ok(functions)
    }

    pub async fn stop(self) {
        self.bootstrap.stop().await;
        self.submit.stop().await;
        self.job_events.stop().await;
    }
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

/// Plays the parts of Lambda and EventBridge the emulator cannot: polls the queues the
/// rules deliver to and invokes the functions, as event source mappings and EventBridge's
/// Lambda targets do.
struct Pump<'a> {
    sqs: aws_sdk_sqs::Client,
    functions: &'a Functions,
    s3_events_url: String,
    job_events_url: String,
    job_events_arn: String,
}

impl Pump<'_> {
    /// Invokes submit with every S3 event waiting; returns submit's answers.
    async fn s3_events(&self) -> Result<Vec<Value>, String> {
        let mut answers = Vec::new();
        let messages = self.receive(&self.s3_events_url).await?;
        for message in messages {
            let event: Value = serde_json::from_str(message.body().unwrap_or_default()).map_err(|e| e.to_string())?;
            answers.push(ok(self.functions.submit.invoke(&event).await?, "submit")?);
            self.delete(&self.s3_events_url, &message).await?;
        }
        Ok(answers)
    }

    /// Delivers waiting job state changes to job-events in one SQS batch; messages it
    /// reports failed stay in the queue for redelivery. Returns how many were delivered.
    async fn job_events(&self) -> Result<usize, String> {
        let messages = self.receive(&self.job_events_url).await?;
        if messages.is_empty() {
            return Ok(0);
        }
        let records: Vec<Value> = messages
            .iter()
            .map(|m| {
                json!({"messageId": m.message_id(), "receiptHandle": m.receipt_handle(), "body": m.body(),
                       "attributes": {"ApproximateReceiveCount": "1"}, "messageAttributes": {}, "md5OfBody": m.md5_of_body(),
                       "eventSource": "aws:sqs", "eventSourceARN": self.job_events_arn, "awsRegion": REGION})
            })
            .collect();
        let answer = ok(self.functions.job_events.invoke(&json!({"Records": records})).await?, "job-events")?;
        let failed: Vec<&str> = answer["batchItemFailures"]
            .as_array()
            .map(|f| f.iter().filter_map(|i| i["itemIdentifier"].as_str()).collect())
            .unwrap_or_default();
        for message in &messages {
            if !failed.contains(&message.message_id().unwrap_or_default()) {
                self.delete(&self.job_events_url, message).await?;
            }
        }
        Ok(messages.len())
    }

    async fn receive(&self, url: &str) -> Result<Vec<aws_sdk_sqs::types::Message>, String> {
        let reply = self
            .sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .wait_time_seconds(0)
            .send()
            .await
            .map_err(|e| batchline::Error::aws("ReceiveMessage", e).to_string())?;
        Ok(reply.messages().to_vec())
    }

    async fn delete(&self, url: &str, message: &aws_sdk_sqs::types::Message) -> Result<(), String> {
        self.sqs
            .delete_message()
            .queue_url(url)
            .receipt_handle(message.receipt_handle().unwrap_or_default())
            .send()
            .await
            .map_err(|e| batchline::Error::aws("DeleteMessage", e).to_string())?;
        Ok(())
    }
}

async fn rule(
    events: &aws_sdk_eventbridge::Client,
    name: &str,
    pattern: Value,
    target_arn: &str,
) -> Result<(), String> {
    events
        .put_rule()
        .name(name)
        .event_pattern(pattern.to_string())
        .send()
        .await
        .map_err(|e| batchline::Error::aws("PutRule", e).to_string())?;
    let target =
        aws_sdk_eventbridge::types::Target::builder().id("queue").arn(target_arn).build().map_err(|e| e.to_string())?;
    events
        .put_targets()
        .rule(name)
        .targets(target)
        .send()
        .await
        .map_err(|e| batchline::Error::aws("PutTargets", e).to_string())?;
    Ok(())
}

/// The worked example job of README's "Write your own job".
pub const WORDCOUNT: &str = "wordcount";

/// The example job's definition, exactly as the README's guide gives it: the object to
/// read arrives as the Batch parameters `inputBucket` and `inputKey`, which Batch puts in
/// place of `Ref::inputBucket` and `Ref::inputKey` in the command.
pub fn wordcount_definition() -> Value {
    json!({
        "Image": "public.ecr.aws/docker/library/python:3.12-alpine",
        "Vcpu": "0.25",
        "Memory": "512",
        "Command": ["python3", "-c", WORDCOUNT_SCRIPT, "Ref::inputBucket", "Ref::inputKey"]
    })
}

/// The example's script (Python, standard library only): it says what it was given. A
/// real job would read the object with boto3 from an image of its own.
pub const WORDCOUNT_SCRIPT: &str = "import os, sys; bucket, key = sys.argv[1:3]; \
print(f'counting words in s3://{bucket}/{key}; run {os.environ.get(\"BATCHLINE_RUN_ID\", \"-\")}')";

/// The stack configuration the demo deploys (the custom resource's properties).
pub fn properties(prefix: &str, bucket: &str) -> Value {
    let network = default_network();
    json!({
        "ServiceToken": "arn:aws:lambda:us-east-1:123456789012:function:batchline-bootstrap",
        "ServiceTimeout": "1200",
        "NamePrefix": prefix,
        "Network": {"Subnets": network.subnets.join(","), "SecurityGroups": network.security_groups.join(","), "AssignPublicIp": "true"},
        "Roles": {"InputBucket": bucket},
        "Repository": {"DeleteOnStackDelete": "true"},
        "JobDefinitions": {
            "default": {"Vcpu": "0.25", "Memory": "512"},
            // README, "Write your own job": its worked example, as the guide declares it.
            WORDCOUNT: wordcount_definition()
        },
        "Pipelines": {PIPELINE: {"MaxResizes": "2", "Stages": {
            "prepare": {"JobDefinition": "default", "Parameters": {"play_run_seconds": "20"}},
            "transform": {"JobDefinition": "default", "After": "prepare", "Parameters": {"play_needs_memory": "1024", "play_run_seconds": "45"}},
            "report": {"JobDefinition": "default", "After": "transform", "Parameters": {"play_run_seconds": "10"}}
        }}},
        "Triggers": {"S3": {"input": {"Bucket": bucket, "Prefix": "incoming/", "Pipeline": PIPELINE}}}
    })
}

fn cloudformation_request(kind: &str, url: &str, properties: &Value, physical_id: Option<&str>) -> Value {
    let mut request = json!({
        "RequestType": kind, "ResponseURL": url,
        "StackId": "arn:aws:cloudformation:us-east-1:123456789012:stack/batchline-local/00000000-0000-0000-0000-000000000000",
        "RequestId": batchline_testkit::player::event_id(), "ResourceType": "Custom::BatchlineEnvironment",
        "LogicalResourceId": "Environment", "ResourceProperties": properties,
    });
    if let Some(id) = physical_id {
        request["PhysicalResourceId"] = json!(id);
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
    let server = ResponseServer::start(0).await.map_err(|e| e.to_string())?;
    ok(bootstrap.invoke(&cloudformation_request(kind, &server.url, properties, physical_id)).await?, "bootstrap")?;
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
    let s3 = aws_sdk_s3::Client::from_conf(aws_sdk_s3::config::Builder::from(&sdk).force_path_style(true).build());
    s3.create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .map_err(|e| batchline::Error::aws("CreateBucket", e).to_string())?;
    s3.put_bucket_notification_configuration()
        .bucket(&bucket)
        .notification_configuration(
            NotificationConfiguration::builder()
                .event_bridge_configuration(EventBridgeConfiguration::builder().build())
                .build(),
        )
        .send()
        .await
        .map_err(|e| batchline::Error::aws("PutBucketNotificationConfiguration", e).to_string())?;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let events = aws_sdk_eventbridge::Client::new(&sdk);
    let (s3_events_url, s3_events_arn) = create_queue(&sqs, &format!("{prefix}-s3-events"), Some(30)).await?;
    let (job_events_url, job_events_arn) = create_queue(&sqs, &format!("{prefix}-job-events"), Some(2)).await?;
    rule(
        &events,
        &format!("{prefix}-object-created"),
        json!({"source": ["aws.s3"], "detail-type": ["Object Created"],
               "detail": {"bucket": {"name": [bucket]}, "object": {"key": [{"prefix": "incoming/"}]}}}),
        &s3_events_arn,
    )
    .await?;
    say(format!("created table {table}, bucket {bucket} (EventBridge notifications), queues and rules"));

    // One folder of logs per demo run; earlier runs' are removed so they do not pile up.
    let logs = repo_root().join("target/demo-logs");
    let _ = std::fs::remove_dir_all(&logs);
    let log_dir = logs.join(&prefix);
    let functions = Functions::start(&table, &log_dir).await?;
    say(format!(
        "functions running as built binaries under a local Lambda Runtime API (logs in {})",
        log_dir.display()
    ));

    // 1. Provision through bootstrap, as CloudFormation would.
    let properties = properties(&prefix, &bucket);
    let created = send_to_bootstrap(&functions.bootstrap, "Create", &properties, None).await?;
    say(format!(
        "[1] bootstrap Create → {} ({}); queue {}",
        created["Status"].as_str().unwrap_or("?"),
        created["PhysicalResourceId"].as_str().unwrap_or("?"),
        created["Data"]["JobQueueArn"].as_str().unwrap_or("?")
    ));
    if created["Status"] != "SUCCESS" {
        functions.stop().await;
        return Err(format!("bootstrap failed: {}", created["Reason"]));
    }
    let queue_arns: Vec<String> =
        created["Data"]["JobQueueArns"].as_str().unwrap_or_default().split(',').map(str::to_owned).collect();
    let default_queue = created["Data"]["JobQueueArn"].as_str().unwrap_or_default().to_owned();
    rule(
        &events,
        &format!("{prefix}-batch-state"),
        json!({"source": ["aws.batch"], "detail-type": ["Batch Job State Change"], "detail": {"jobQueue": queue_arns}}),
        &job_events_arn,
    )
    .await?;

    // 2. An object arrives.
    let key = "incoming/orders-2025-11-27.csv";
    s3.put_object()
        .bucket(&bucket)
        .key(key)
        .body(aws_sdk_s3::primitives::ByteStream::from(b"order,amount\n1,20.00\n2,13.50\n".to_vec()))
        .send()
        .await
        .map_err(|e| batchline::Error::aws("PutObject", e).to_string())?;
    say(format!("[2] put s3://{bucket}/{key}"));

    // 3-4. Play Batch until the run ends.
    let pump = Pump { sqs: sqs.clone(), functions: &functions, s3_events_url, job_events_url, job_events_arn };
    let mut player = Player::new(&sdk);
    let mut run_id = String::new();
    let mut played: Vec<StateChange> = Vec::new();
    let mut rounds = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut run_status = String::new();
    while Instant::now() < deadline {
        rounds += 1;
        for answer in pump.s3_events().await? {
            for started in answer["started"].as_array().cloned().unwrap_or_default() {
                run_id = started["runId"].as_str().unwrap_or_default().to_owned();
                say(format!(
                    "    submit: object event → pipeline {} run {run_id}",
                    started["pipeline"].as_str().unwrap_or("?")
                ));
            }
        }
        let changes = player.play_queue(&default_queue).await.map_err(|e| e.to_string())?;
        for change in &changes {
            if change.status == "RUNNABLE" || change.status == "SUCCEEDED" || change.status == "FAILED" {
                let detail = &change.event["detail"];
                let memory = detail["container"]["resourceRequirements"]
                    .as_array()
                    .and_then(|r| r.iter().find(|r| r["type"] == "MEMORY"))
                    .and_then(|r| r["value"].as_str())
                    .unwrap_or("?");
                let reason = detail["container"]["reason"].as_str().map(|r| format!(" ({r})")).unwrap_or_default();
                say(format!(
                    "[3] batch: {:<10} {:<9} {} MiB{reason}",
                    detail["tags"]["batchline:stage"].as_str().unwrap_or("?"),
                    change.status,
                    memory
                ));
            }
        }
        if !changes.is_empty() {
            Delivery::of(&changes).to_event_bus(&events, "default").await.map_err(|e| e.to_string())?;
            played.extend(changes);
        }
        let mut delivered = 0;
        loop {
            let count = pump.job_events().await?;
            delivered += count;
            if count == 0 {
                break;
            }
        }
        if delivered > 0 {
            say(format!("    job-events: {delivered} state changes delivered from SQS"));
        }
        if !run_id.is_empty() {
            let view =
                ok(functions.submit.invoke(&api_request("GET", &format!("/runs/{run_id}"), None)).await?, "GET /runs")?;
            let run: Value = serde_json::from_str(view["body"].as_str().unwrap_or("{}")).unwrap_or_default();
            run_status = run["status"].as_str().unwrap_or_default().to_owned();
            if run_status != "RUNNING" && delivered == 0 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if run_id.is_empty() {
        functions.stop().await;
        return Err("the object never started a run (is the S3 → EventBridge → SQS path working?)".into());
    }
    say(format!("[4] run {run_id} ended {run_status} after {rounds} delivery rounds"));

    // 5. What happened.
    say("[5] reading back the jobs from Batch, the run from the API, the metrics from CloudWatch".to_owned());
    let view = ok(functions.submit.invoke(&api_request("GET", &format!("/runs/{run_id}"), None)).await?, "GET /runs")?;
    let run: Value = serde_json::from_str(view["body"].as_str().unwrap_or("{}")).map_err(|e| e.to_string())?;
    let jobs = job_lines(&sdk, &default_queue, &played).await?;
    let metrics = read_metrics(&sdk, &default_queue).await?;

    // 6. Tear down through bootstrap, unless the stack is to stay up.
    let (deleted, left_after_delete) = if options.keep {
        say(format!("[6] kept: the stack {prefix} stays in the emulator at {} (table {table})", endpoint()));
        (Value::Null, Vec::new())
    } else {
        let deleted =
            send_to_bootstrap(&functions.bootstrap, "Delete", &properties, created["PhysicalResourceId"].as_str())
                .await?;
        let left_after_delete = leftovers(&sdk, &prefix).await?;
        say(format!(
            "[6] bootstrap Delete → {}; left behind: {}",
            deleted["Status"].as_str().unwrap_or("?"),
            if left_after_delete.is_empty() { "nothing".to_owned() } else { left_after_delete.join(", ") }
        ));
        (deleted, left_after_delete)
    };
    functions.stop().await;

    Ok(Report {
        prefix,
        bootstrap_create: created,
        run_id,
        run,
        jobs,
        metrics,
        bootstrap_delete: deleted,
        left_after_delete,
        delivery_rounds: rounds,
    })
}

async fn job_lines(sdk: &aws_config::SdkConfig, queue: &str, played: &[StateChange]) -> Result<Vec<JobLine>, String> {
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
                states: played.iter().filter(|c| c.job_id == id).map(|c| c.status.to_owned()).collect(),
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
            .namespace(batchline::config::DEFAULT_METRIC_NAMESPACE)
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
        out.push_str(&format!("  {:<10} {:<22} {}\n", job.stage, job.size, job.states.join(" → ")));
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
