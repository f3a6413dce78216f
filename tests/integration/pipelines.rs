//! Pipelines against the emulator, with the Batch event player: DAG runs, duplicates, failures, resizing, cancel, completion, repair.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use crate::common::job_events_invocation;
use aws_sdk_cloudwatch::primitives::DateTime;
use aws_sdk_cloudwatch::types::{Dimension, Statistic};
use batchline_testkit::emulator::{default_network, sdk_config, stack_id, test_settings, unique_name, Principal};
use batchline_testkit::invocation;
use batchline_testkit::player::{event_id, Delivery, Player, StateChange};
use batchline_testkit::response_server::ResponseServer;
use batchline_testkit::table::create_table;
use serde_json::{json, Value};

use crate::common::Deployed;

const QUEUE_ARN: &str = "arn:aws:sqs:us-east-1:123456789012:batchline-job-events";

fn pipelines() -> Value {
    json!({
        "JobDefinitions": {"default": {}, "report": {"Vcpu": "0.5", "Memory": "1024"},
                           // Batch retries exit code 3 (one more attempt), nothing else.
                           "retrying": {"RetryAttempts": "2", "RetryOn": [{"ExitCode": "3", "Action": "Retry"}]},
                           // Single jobs of it that run out of memory are resubmitted once, one size up.
                           "growing": {"MaxResizes": "1"}},
        "Pipelines": {
            "diamond": {"Stages": {
                "a": {"JobDefinition": "default"},
                "b": {"JobDefinition": "default", "After": ["a"]},
                "c": {"JobDefinition": "default", "After": ["a"]},
                "d": {"JobDefinition": "report", "After": ["b", "c"], "Parameters": {"format": "pdf"}}
            }},
            "hungry": {"MaxResizes": "2", "Stages": {
                "load": {"JobDefinition": "default", "Parameters": {"play_needs_memory": "1024"}},
                "summarise": {"JobDefinition": "default", "After": "load"}
            }},
            "greedy": {"MaxResizes": "1", "Stages": {
                "load": {"JobDefinition": "default", "Parameters": {"play": "oom"}}
            }},
            "fragile": {"Stages": {
                "first": {"JobDefinition": "default", "Parameters": {"play": "exit:3"}},
                "second": {"JobDefinition": "default", "After": ["first"]}
            }, "OnFailure": {"JobDefinition": "default", "Parameters": {"action": "cleanup"}}},
            // Run control: b fails for good while c runs; c's stage has a timeout.
            "branches": {"Stages": {
                "a": {"JobDefinition": "default"},
                "b": {"JobDefinition": "default", "After": ["a"], "Parameters": {"play": "exit:3"}},
                "c": {"JobDefinition": "default", "After": ["a"], "TimeoutSeconds": "900"}
            }, "OnFailure": {"JobDefinition": "default"}},
            "finishing": {"OnStageFailure": "Finish", "Stages": {
                "a": {"JobDefinition": "default"},
                "b": {"JobDefinition": "default", "After": ["a"], "Parameters": {"play": "exit:3"}},
                "c": {"JobDefinition": "default", "After": ["a"]}
            }},
            "limited": {"MaxRunSeconds": "60", "Stages": {"only": {"JobDefinition": "default"}}},
            // The same rule, declared on the stage (so sent with SubmitJob).
            "retried": {"Stages": {
                "three": {"JobDefinition": "default", "RetryAttempts": "2", "RetryOn": [{"ExitCode": "3", "Action": "Retry"}],
                          "Parameters": {"play": "exit:3"}},
                "four": {"JobDefinition": "default", "RetryAttempts": "2", "RetryOn": [{"ExitCode": "3", "Action": "Retry"}],
                         "Parameters": {"play": "exit:4"}}
            }, "OnStageFailure": "Finish"},
            // Its second stage needs 1 GiB and may not resize: it fails until redriven larger.
            "flaky": {"MaxResizes": "0", "Stages": {
                "first": {"JobDefinition": "default"},
                "second": {"JobDefinition": "default", "After": "first", "Parameters": {"play_needs_memory": "1024"}},
                "third": {"JobDefinition": "default", "After": "second"}
            }}
        },
        "Triggers": {"S3": {"drops": {"Prefix": "drops/", "Pipeline": "diamond"}}}
    })
}

/// A deployed environment with both functions and the event player.
struct Harness {
    env: Deployed,
    submit: batchline_submit::Clients,
    job_events: batchline_job_events::Clients,
    player: Player,
}

impl Harness {
    async fn new(test: &str) -> Harness {
        Harness::with(test, pipelines()).await
    }

    /// A harness over a stack of these properties.
    async fn with(test: &str, properties: Value) -> Harness {
        Harness::with_template(test, properties, None).await
    }

    /// A harness whose functions are held to `template`'s policies (a fixture).
    async fn with_template(test: &str, properties: Value, template: Option<&std::path::Path>) -> Harness {
        let env = Deployed::with_template(test, properties, template).await;
        Harness {
            submit: batchline_submit::Clients::new(&env.sdk_as(Principal::Submit), &env.settings),
            job_events: batchline_job_events::Clients::new(&env.sdk_as(Principal::JobEvents), &env.settings),
            player: Player::new(&env.sdk),
            env,
        }
    }

    async fn api(&self, method: &str, path: &str, body: Value) -> (u16, Value) {
        self.api_keyed(method, path, body, None).await
    }

    /// `POST /jobs` with `body`, which must be accepted: the job's id.
    async fn post_job(&self, body: Value) -> String {
        let (status, answer) = self.api("POST", "/jobs", body).await;
        assert_eq!(status, 202, "{answer}");
        answer["jobId"].as_str().unwrap().to_owned()
    }

    /// An API call, with an `Idempotency-Key` when `key` is given.
    async fn api_keyed(&self, method: &str, path: &str, body: Value, key: Option<&str>) -> (u16, Value) {
        let (path, query) = path.split_once('?').unwrap_or((path, ""));
        let query: serde_json::Map<String, Value> =
            query.split('&').filter_map(|p| p.split_once('=')).map(|(k, v)| (k.to_owned(), json!(v))).collect();
        let request = json!({
            "version": "2.0", "rawPath": path,
            "headers": if let Some(key) = key { json!({"content-type": "application/json", "idempotency-key": key}) }
                       else { json!({"content-type": "application/json"}) },
            "queryStringParameters": query,
            "requestContext": {"http": {"method": method, "path": path}},
            "body": if body.is_null() { String::new() } else { body.to_string() }, "isBase64Encoded": false
        });
        let answer = batchline_submit::handle(invocation(request), &self.submit).await.unwrap();
        (answer["statusCode"].as_u64().unwrap() as u16, serde_json::from_str(answer["body"].as_str().unwrap()).unwrap())
    }

    async fn start(&self, pipeline: &str) -> String {
        self.start_keyed(pipeline, None).await
    }

    async fn start_keyed(&self, pipeline: &str, key: Option<&str>) -> String {
        let body = json!({"parameters": {"day": "2025-11-26"}});
        let (status, body) = self.api_keyed("POST", &format!("/pipelines/{pipeline}/runs"), body, key).await;
        assert_eq!(status, 202, "{body}");
        body["runId"].as_str().unwrap().to_owned()
    }

    async fn run(&self, run_id: &str) -> Value {
        let (status, body) = self.api("GET", &format!("/runs/{run_id}"), Value::Null).await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Hands events to job-events as SQS batches of 10; every message must succeed.
    async fn deliver(&self, events: &[Value]) {
        for batch in Delivery::from_events(events.to_vec()).sqs_batches(QUEUE_ARN, 10) {
            let answer = batchline_job_events::handle(
                job_events_invocation(invocation(batch)),
                &self.job_events,
                &self.env.settings,
            )
            .await
            .unwrap();
            assert_eq!(answer["batchItemFailures"], json!([]), "{answer}");
        }
    }

    /// Hands events to job-events as SQS batches of 10, whatever it answers.
    async fn deliver_allowing_failures(&self, events: &[Value]) {
        for batch in Delivery::from_events(events.to_vec()).sqs_batches(QUEUE_ARN, 10) {
            let invocation = job_events_invocation(invocation(batch));
            let _ = batchline_job_events::handle(invocation, &self.job_events, &self.env.settings).await;
        }
    }

    /// Plays the default queue and delivers what it produced (each event `times` times,
    /// shuffled by `seed`), until no new job appears. Returns every change played.
    async fn play_to_the_end(&mut self, times: usize, seed: u64) -> Vec<StateChange> {
        let mut all = Vec::new();
        for round in 0..20 {
            let changes = self.player.play_queue(&self.env.queue_arn("default")).await.unwrap();
            if changes.is_empty() {
                return all;
            }
            let delivery = Delivery::of(&changes).repeated(times).shuffled(seed + round);
            self.deliver(delivery.events()).await;
            all.extend(changes);
        }
        panic!("the pipeline did not settle in 20 rounds");
    }

    /// Plays the default queue until it settles, delivering every event but those
    /// `withhold` picks; returns those, not yet handled.
    async fn play_withholding(&mut self, withhold: impl Fn(&StateChange) -> bool) -> Vec<Value> {
        let mut withheld = Vec::new();
        for _ in 0..10 {
            let changes = self.player.play_queue(&self.env.queue_arn("default")).await.unwrap();
            if changes.is_empty() {
                break;
            }
            self.deliver(&events_of(&changes, |c| !withhold(c))).await;
            withheld.extend(events_of(&changes, &withhold));
        }
        withheld
    }

    async fn job_names(&self) -> Vec<String> {
        self.env.jobs_in("default").await.iter().filter_map(|j| j.job_name().map(str::to_owned)).collect()
    }
}

/// A metric's figures over the last and next hour, with exactly these dimensions:
/// (sum, sample count, maximum; NaN without data).
async fn statistics(env: &Deployed, metric: &str, dimensions: &[(&str, &str)]) -> (f64, f64, f64) {
    let cloudwatch = aws_sdk_cloudwatch::Client::new(&env.sdk);
    let now = SystemTime::now();
    let reply = cloudwatch
        .get_metric_statistics()
        .namespace(&env.settings.metric_namespace)
        .metric_name(metric)
        .set_dimensions(Some(dimensions.iter().map(|(n, v)| Dimension::builder().name(*n).value(*v).build()).collect()))
        .start_time(DateTime::from(now - Duration::from_secs(3600)))
        .end_time(DateTime::from(now + Duration::from_secs(3600)))
        .period(7200)
        .statistics(Statistic::Sum)
        .statistics(Statistic::SampleCount)
        .statistics(Statistic::Maximum)
        .send()
        .await
        .unwrap();
    let points = reply.datapoints();
    (
        points.iter().filter_map(|d| d.sum()).sum(),
        points.iter().filter_map(|d| d.sample_count()).sum(),
        points.iter().filter_map(|d| d.maximum()).fold(f64::NAN, f64::max),
    )
}

fn events_of(changes: &[StateChange], filter: impl Fn(&StateChange) -> bool) -> Vec<Value> {
    changes.iter().filter(|c| filter(c)).map(|c| c.event.clone()).collect()
}

fn stage_of(change: &StateChange) -> String {
    change.event["detail"]["tags"]["batchline:stage"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn a_diamond_runs_d_only_after_both_b_and_c_succeeded_and_completes() {
    let mut h = Harness::new("pl-diamond").await;
    let run_id = h.start("diamond").await;

    // a runs and succeeds → b and c are submitted
    let a = h.player.play_queue(&h.env.queue_arn("default")).await.unwrap();
    assert_eq!(a.iter().map(stage_of).collect::<BTreeSet<_>>(), BTreeSet::from(["a".to_owned()]));
    h.deliver(&events_of(&a, |_| true)).await;
    let bc = h.player.play_queue(&h.env.queue_arn("default")).await.unwrap();
    assert_eq!(bc.iter().map(stage_of).collect::<BTreeSet<_>>(), BTreeSet::from(["b".to_owned(), "c".to_owned()]));

    // During the run, GET shows a done, b and c under way, d pending
    h.deliver(&events_of(&bc, |c| c.status != "SUCCEEDED")).await;
    let during = h.run(&run_id).await;
    assert_eq!(during["status"], "RUNNING");
    assert_eq!(during["stages"]["a"]["status"], "SUCCEEDED");
    assert_eq!(during["stages"]["b"]["status"], "RUNNING");
    assert_eq!(during["stages"]["d"]["status"], "PENDING");
    assert!(during["stages"]["a"]["attempts"][0]["logUrl"]
        .as_str()
        .unwrap()
        .contains("log-group/$252Faws$252Fbatch$252Fjob"));

    // c succeeds first: d still waits for b
    h.deliver(&events_of(&bc, |c| c.status == "SUCCEEDED" && stage_of(c) == "c")).await;
    assert_eq!(h.job_names().await.len(), 3, "d waits for b");
    h.deliver(&events_of(&bc, |c| c.status == "SUCCEEDED" && stage_of(c) == "b")).await;
    let names = h.job_names().await;
    assert_eq!(names.len(), 4, "{names:?}");

    // d runs at its job definition's size and the run ends SUCCEEDED
    let d = h.play_to_the_end(1, 0).await;
    assert_eq!(d.iter().map(stage_of).collect::<BTreeSet<_>>(), BTreeSet::from(["d".to_owned()]));
    let after = h.run(&run_id).await;
    assert_eq!(after["status"], "SUCCEEDED", "{after}");
    assert_eq!(after["stages"]["d"]["attempts"][0]["size"], json!({"vcpu": "0.5", "memoryMib": 1024}));
    assert!(after["endedAt"].is_string());
    let jobs = h.env.jobs_in("default").await;
    let d_job = jobs.iter().find(|j| j.tags().unwrap()["batchline:stage"] == "d").unwrap();
    assert_eq!(d_job.parameters().unwrap()["format"], "pdf");
    assert_eq!(d_job.parameters().unwrap()["day"], "2025-11-26", "the run's input reaches every stage");
    assert_eq!(d_job.tags().unwrap()["batchline:run"], run_id.as_str());
    assert_eq!(d_job.tags().unwrap()["batchline:pipeline"], "diamond");

    // and the run is listed
    let (status, listed) = h.api("GET", "/runs?pipeline=diamond", Value::Null).await;
    assert_eq!(status, 200);
    assert_eq!(listed["runs"][0]["runId"], run_id.as_str());
    assert_eq!(listed["runs"][0]["status"], "SUCCEEDED");
}

#[tokio::test]
async fn every_event_three_times_shuffled_makes_the_same_four_jobs() {
    let mut h = Harness::new("pl-dupes").await;
    let run_id = h.start_keyed("diamond", Some("nightly-2025-11-26")).await;
    // The same start request again, with the same Idempotency-Key, is the same run
    assert_eq!(h.start_keyed("diamond", Some("nightly-2025-11-26")).await, run_id);
    h.play_to_the_end(3, 42).await;
    assert_eq!(h.job_names().await.len(), 4);
    assert_eq!(h.run(&run_id).await["status"], "SUCCEEDED");
}

#[tokio::test]
async fn an_s3_object_starts_a_pipeline_run_once() {
    let mut h = Harness::new("pl-s3").await;
    let mut event: Value = serde_json::from_str(include_str!("../fixtures/s3/object-created.json")).unwrap();
    event["detail"]["object"]["key"] = json!("drops/day-1.json");
    let first = batchline_submit::handle(invocation(event.clone()), &h.submit).await.unwrap();
    let again = batchline_submit::handle(invocation(event), &h.submit).await.unwrap();
    assert_eq!(first["started"][0]["runId"], again["started"][0]["runId"]);
    assert_eq!(again["started"][0]["new"], false);
    h.play_to_the_end(1, 0).await;
    let run = h.run(first["started"][0]["runId"].as_str().unwrap()).await;
    assert_eq!(run["status"], "SUCCEEDED");
    assert_eq!(run["input"]["parameters"]["inputKey"], "drops/day-1.json");
    assert_eq!(run["trigger"], "s3");
    assert_eq!(h.job_names().await.len(), 4);
}

#[tokio::test]
async fn out_of_memory_is_resubmitted_one_size_up_and_the_run_completes() {
    let mut h = Harness::new("pl-oom").await;
    let run_id = h.start("hungry").await;
    h.play_to_the_end(2, 5).await;
    let run = h.run(&run_id).await;
    assert_eq!(run["status"], "SUCCEEDED", "{run}");
    let attempts = run["stages"]["load"]["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert_eq!(attempts[0]["size"], json!({"vcpu": "0.25", "memoryMib": 512}));
    assert_eq!(attempts[0]["status"], "FAILED");
    assert_eq!(attempts[0]["exitCode"], 137);
    assert!(attempts[0]["reason"].as_str().unwrap().starts_with("OutOfMemoryError"));
    assert_eq!(attempts[1]["size"], json!({"vcpu": "0.25", "memoryMib": 1024}));
    assert_eq!(attempts[1]["status"], "SUCCEEDED");
    // The resubmitted job really is larger in Batch
    let jobs = h.env.jobs_in("default").await;
    assert_eq!(jobs.len(), 3, "load twice, summarise once");
    let memory: Vec<String> = jobs
        .iter()
        .filter(|j| j.tags().unwrap()["batchline:stage"] == "load")
        .map(|j| {
            j.container()
                .unwrap()
                .resource_requirements()
                .iter()
                .find(|r| r.r#type().unwrap().as_str() == "MEMORY")
                .unwrap()
                .value()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(memory, ["512", "1024"]);
}

#[tokio::test]
async fn repeated_out_of_memory_stops_at_the_resize_limit_and_fails_the_run() {
    let mut h = Harness::new("pl-greedy").await;
    let run_id = h.start("greedy").await;
    h.play_to_the_end(2, 9).await;
    let run = h.run(&run_id).await;
    assert_eq!(run["status"], "FAILED");
    assert!(run["reason"].as_str().unwrap().contains("ran out of memory 2 time(s); its resize limit is 1"), "{run}");
    assert_eq!(
        run["stages"]["load"]["attempts"].as_array().unwrap().len(),
        2,
        "MaxResizes 1: two attempts, never more"
    );
    assert_eq!(h.job_names().await.len(), 2);
}

#[tokio::test]
async fn another_failure_fails_the_run_runs_on_failure_and_never_submits_downstream() {
    let mut h = Harness::new("pl-fragile").await;
    let run_id = h.start("fragile").await;
    let changes = h.play_to_the_end(2, 3).await;
    let run = h.run(&run_id).await;
    assert_eq!(run["status"], "FAILED");
    assert!(run["reason"].as_str().unwrap().contains("stage first failed"), "{run}");
    assert_eq!(run["stages"]["first"]["attempts"].as_array().unwrap().len(), 1, "no resize for exit code 3");
    assert_eq!(run["stages"]["second"]["status"], "SKIPPED");
    assert_eq!(run["onFailure"]["status"], "SUCCEEDED");
    let stages: BTreeSet<String> = changes.iter().map(stage_of).collect();
    assert_eq!(stages, BTreeSet::from(["first".to_owned(), "on-failure".to_owned()]), "second was never submitted");
    let jobs = h.env.jobs_in("default").await;
    let cleanup = jobs.iter().find(|j| j.tags().unwrap()["batchline:stage"] == "on-failure").unwrap();
    assert_eq!(cleanup.parameters().unwrap()["action"], "cleanup");
}

#[tokio::test]
async fn cancel_terminates_the_jobs_and_late_events_change_nothing() {
    let h = Harness::new("pl-cancel").await;
    let run_id = h.start("diamond").await;
    let mut player = Player::new(&h.env.sdk);
    let a = player.play_queue(&h.env.queue_arn("default")).await.unwrap();
    h.deliver(&events_of(&a, |c| c.status != "SUCCEEDED")).await;

    let (status, body) = h.api("DELETE", &format!("/runs/{run_id}"), Value::Null).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "CANCELLED");
    let a_job = a[0].job_id.clone();
    assert_eq!(body["terminatedJobs"], json!([a_job]));
    let batch = aws_sdk_batch::Client::new(&h.env.sdk);
    let described = batch.describe_jobs().jobs(&a_job).send().await.unwrap();
    assert_eq!(described.jobs()[0].status().unwrap().as_str(), "FAILED", "terminated in Batch");

    // a's SUCCEEDED arrives late: a ended before its stop reached it, which is recorded (and
    // its time counted); nothing is submitted and the run stays CANCELLED
    h.deliver(&events_of(&a, |c| c.status == "SUCCEEDED")).await;
    let run = h.run(&run_id).await;
    assert_eq!(run["status"], "CANCELLED");
    assert_eq!(run["stages"]["a"]["status"], "SUCCEEDED");
    assert_eq!(run["stages"]["b"]["status"], "CANCELLED");
    assert_eq!(h.job_names().await.len(), 1);
    // a retried cancel finishes what the first began: here every job has ended already
    let (status, body) = h.api("DELETE", &format!("/runs/{run_id}"), Value::Null).await;
    assert_eq!((status, body["status"].as_str()), (202, Some("CANCELLED")), "{body}");
    assert_eq!(body["terminatedJobs"], json!([]));
    assert!(run["onFailure"].is_null(), "a cancel is not a failure");
}

/// A queue that receives the "Batchline Run Completed" events of one run from the default bus.
async fn completion_queue(sdk: &aws_config::SdkConfig, run_id: &str) -> String {
    let sqs = aws_sdk_sqs::Client::new(sdk);
    let events = aws_sdk_eventbridge::Client::new(sdk);
    let (queue_url, queue_arn) =
        batchline_testkit::lanes::create_queue(&sqs, &unique_name("completed"), None).await.unwrap();
    let rule = unique_name("run-completed");
    let pattern =
        json!({"source": ["batchline"], "detail-type": ["Batchline Run Completed"], "detail": {"runId": [run_id]}});
    events.put_rule().name(&rule).event_pattern(pattern.to_string()).send().await.unwrap();
    events
        .put_targets()
        .rule(&rule)
        .targets(aws_sdk_eventbridge::types::Target::builder().id("q").arn(queue_arn).build().unwrap())
        .send()
        .await
        .unwrap();
    queue_url
}

/// Every completion event the queue holds.
async fn completions(sdk: &aws_config::SdkConfig, queue_url: &str) -> Vec<Value> {
    let sqs = aws_sdk_sqs::Client::new(sdk);
    let received = sqs
        .receive_message()
        .queue_url(queue_url)
        .wait_time_seconds(2)
        .max_number_of_messages(10)
        .send()
        .await
        .unwrap();
    received.messages().iter().map(|m| serde_json::from_str(m.body().unwrap()).unwrap()).collect()
}

fn sweep_event() -> Value {
    json!({"version": "0", "id": event_id(), "detail-type": "Scheduled Event", "source": "aws.events",
           "time": "2025-11-27T08:15:00Z", "resources": ["arn:aws:events:us-east-1:123456789012:rule/batchline-sweep"], "detail": {}})
}

#[tokio::test]
async fn the_completion_event_reaches_a_queue_subscribed_on_the_default_bus() {
    let mut h = Harness::new("pl-done").await;
    let run_id = h.start("diamond").await;
    let queue_url = completion_queue(&h.env.sdk, &run_id).await;

    h.play_to_the_end(1, 0).await;

    let received = completions(&h.env.sdk, &queue_url).await;
    assert_eq!(received.len(), 1, "exactly one completion event");
    let event = &received[0];
    assert_eq!(event["detail-type"], "Batchline Run Completed");
    assert_eq!(event["detail"]["runId"], run_id.as_str());
    assert_eq!(event["detail"]["pipeline"], "diamond");
    assert_eq!(event["detail"]["outcome"], "SUCCEEDED");
    assert!(event["detail"]["durationMs"].as_i64().unwrap() >= 0);
    assert_eq!(event["detail"]["stages"]["d"]["status"], "SUCCEEDED");
}

#[tokio::test]
async fn the_final_event_handled_twice_at_once_and_a_sweep_beside_them_announce_the_run_once() {
    // GIVEN a run whose last job has ended, its event not yet handled
    let mut h = Harness::new("pl-once").await;
    let run_id = h.start("hungry").await;
    let queue_url = completion_queue(&h.env.sdk, &run_id).await;
    let withheld = h.play_withholding(|c| stage_of(c) == "summarise" && c.status == "SUCCEEDED").await;
    assert_eq!(withheld.len(), 1);
    // WHEN two invocations handle it at the same time (a duplicate delivery) and the
    // sweep runs beside them
    // (each delivery its own SQS message)
    let batch = || Delivery::from_events(withheld.clone()).sqs_batches(QUEUE_ARN, 10).remove(0);
    let (one, two, sweep) = tokio::join!(
        batchline_job_events::handle(job_events_invocation(invocation(batch())), &h.job_events, &h.env.settings),
        batchline_job_events::handle(job_events_invocation(invocation(batch())), &h.job_events, &h.env.settings),
        batchline_job_events::handle(job_events_invocation(invocation(sweep_event())), &h.job_events, &h.env.settings),
    );
    // THEN whichever failed is retried, as SQS and the schedule would
    for outcome in [one, two] {
        if outcome.as_ref().map(|a| a["batchItemFailures"] != json!([])).unwrap_or(true) {
            h.deliver(&withheld).await;
        }
    }
    if sweep.is_err() {
        batchline_job_events::handle(job_events_invocation(invocation(sweep_event())), &h.job_events, &h.env.settings)
            .await
            .unwrap();
    }
    // AND the run was announced exactly once, as SUCCEEDED
    assert_eq!(h.run(&run_id).await["status"], "SUCCEEDED");
    let received = completions(&h.env.sdk, &queue_url).await;
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(received[0]["detail"]["outcome"], "SUCCEEDED");
}

#[tokio::test]
async fn a_running_run_stored_by_the_previous_release_is_adopted_by_the_sweep() {
    // GIVEN a running run and its index line, as the release before the open-run list stored them
    let h = Harness::new("pl-adopt").await;
    let dynamo = aws_sdk_dynamodb::Client::new(&h.env.sdk);
    for fixture in
        [include_str!("../fixtures/stored/run-running.json"), include_str!("../fixtures/stored/index-hungry.json")]
    {
        dynamo
            .put_item()
            .table_name(&h.env.settings.table_name)
            .set_item(Some(stored_item(fixture)))
            .send()
            .await
            .unwrap();
    }
    // WHEN the sweep runs
    let report =
        batchline_job_events::handle(job_events_invocation(invocation(sweep_event())), &h.job_events, &h.env.settings)
            .await
            .unwrap();
    // THEN it adopted the run and visited it
    assert_eq!(report["sweep"]["runsAdopted"], 1, "{report}");
    assert_eq!(report["sweep"]["runsChecked"], 1, "{report}");
    let listed = dynamo
        .get_item()
        .table_name(&h.env.settings.table_name)
        .key("pk", aws_sdk_dynamodb::types::AttributeValue::S("OPEN".into()))
        .key("sk", aws_sdk_dynamodb::types::AttributeValue::S("RUN#1795854851853#hungry-f3407abfe8f3b3bc".into()))
        .send()
        .await
        .unwrap();
    assert!(listed.item().is_some(), "on the open-run list");
    // AND a second sweep visits it from the list, adopting nothing more
    let report =
        batchline_job_events::handle(job_events_invocation(invocation(sweep_event())), &h.job_events, &h.env.settings)
            .await
            .unwrap();
    assert_eq!((report["sweep"]["runsAdopted"].as_u64(), report["sweep"]["runsChecked"].as_u64()), (Some(0), Some(1)));
}

/// An item as a fixture stores it: DynamoDB's JSON (`{"S": ..}` / `{"N": ..}`).
fn stored_item(fixture: &str) -> std::collections::HashMap<String, aws_sdk_dynamodb::types::AttributeValue> {
    use aws_sdk_dynamodb::types::AttributeValue;
    let value: Value = serde_json::from_str(fixture).unwrap();
    let typed = |v: &Value| match (v.get("S"), v.get("N")) {
        (Some(s), _) => AttributeValue::S(s.as_str().unwrap().to_owned()),
        (_, Some(n)) => AttributeValue::N(n.as_str().unwrap().to_owned()),
        _ => panic!("only S and N attributes are stored"),
    };
    value.as_object().unwrap().iter().map(|(name, v)| (name.clone(), typed(v))).collect()
}

#[tokio::test]
async fn the_sweep_completes_a_run_whose_last_event_was_lost_and_run_metrics_read_back() {
    let mut h = Harness::new("pl-sweep").await;
    let run_id = h.start("hungry").await;
    // Play everything, but withhold the last SUCCEEDED (summarise's)
    let mut last_round = Vec::new();
    for _ in 0..10 {
        let changes = h.player.play_queue(&h.env.queue_arn("default")).await.unwrap();
        if changes.is_empty() {
            break;
        }
        let summarise = changes.iter().any(|c| stage_of(c) == "summarise");
        h.deliver(&events_of(&changes, |c| !(summarise && c.status == "SUCCEEDED"))).await;
        last_round = changes;
    }
    assert!(last_round.iter().any(|c| stage_of(c) == "summarise"));
    assert_eq!(h.run(&run_id).await["status"], "RUNNING", "the lost event left the run open");

    // The scheduled sweep finds summarise's job terminal in Batch and applies it
    let sweep = sweep_event();
    let report =
        batchline_job_events::handle(job_events_invocation(invocation(sweep.clone())), &h.job_events, &h.env.settings)
            .await
            .unwrap();
    assert_eq!(report["sweep"]["transitionsApplied"], 1, "{report}");
    let run = h.run(&run_id).await;
    assert_eq!(run["status"], "SUCCEEDED");
    // A second sweep finds nothing to do
    let report = batchline_job_events::handle(job_events_invocation(invocation(sweep)), &h.job_events, &h.env.settings)
        .await
        .unwrap();
    assert_eq!(report["sweep"]["transitionsApplied"], 0);

    // Run metrics: one started, one succeeded, its duration, per pipeline
    let stat = |metric: &'static str| {
        let env = &h.env;
        async move {
            let (sum, count, _) = statistics(env, metric, &[("Pipeline", "hungry")]).await;
            (sum, count)
        }
    };
    assert_eq!(stat("RunsStarted").await, (1.0, 1.0));
    assert_eq!(stat("RunsSucceeded").await, (1.0, 1.0));
    assert_eq!(stat("RunsFailed").await, (0.0, 0.0));
    let (duration, samples) = stat("RunDuration").await;
    assert_eq!(samples, 1.0);
    assert!(duration >= 0.0);
}

#[tokio::test]
async fn invalid_pipelines_fail_the_deployment_with_the_reason() {
    let sdk = sdk_config().await;
    let settings = test_settings("pl-invalid");
    create_table(&sdk, &settings.table_name).await.unwrap();
    // Signed as the bootstrap of a stack of its own, whose environments are named under it.
    let stack = unique_name("pli");
    crate::common::register(&stack, &settings, &json!({}), None);
    let clients =
        batchline_bootstrap::Clients::new(&batchline_testkit::emulator::signing_as(&sdk, Principal::Bootstrap, &stack));
    let network = default_network();
    let many: serde_json::Map<String, Value> =
        (0..21).map(|i| (format!("s{i}"), json!({"JobDefinition": "default"}))).collect();
    let mut wide = many.clone();
    wide.insert("last".into(), json!({"JobDefinition": "default", "After": many.keys().collect::<Vec<_>>()}));
    let cases = [
        (json!({"p": {"Stages": {"a": {"JobDefinition": "missing"}}}}), "\"missing\" is not a key of JobDefinitions"),
        (
            json!({"p": {"Stages": {"a": {"JobDefinition": "default", "After": "b"}, "b": {"JobDefinition": "default", "After": "a"}}}}),
            "cycle",
        ),
        (
            json!({"p": {"Stages": {"a": {"JobDefinition": "default", "After": "ghost"}}}}),
            "there is no stage \"ghost\"",
        ),
        (
            json!({"p": {"Stages": {"a": {"JobDefinition": "default", "Vcpu": "4", "Memory": "2048"}}}}),
            "4 vCPU with 2048 MiB is not a valid Fargate size",
        ),
        (json!({"p": {"Stages": wide}}), "21 stages; at most 20"),
    ];
    for (pipelines, reason) in cases {
        let server = ResponseServer::start(0).await.unwrap();
        let properties = json!({"ServiceToken": "x", "NamePrefix": format!("{stack}-p"),
                                "Network": {"Subnets": network.subnets, "SecurityGroups": network.security_groups},
                                "Pipelines": pipelines});
        let request = json!({"RequestType": "Create", "ResponseURL": server.url, "StackId": stack_id(&stack), "RequestId": event_id(),
                             "LogicalResourceId": "Environment", "ResourceProperties": properties});
        batchline_bootstrap::handle(invocation(request), &clients, &settings).await.unwrap();
        let answer = server.accepted_answers().pop().unwrap();
        assert_eq!(answer["Status"], "FAILED");
        assert!(answer["Reason"].as_str().unwrap().contains(reason), "{reason:?} in {answer}");
    }
    // A stage larger than its queue can ever run: refused, and nothing is provisioned.
    let server = ResponseServer::start(0).await.unwrap();
    let prefix = format!("{stack}-c");
    let properties = json!({"ServiceToken": "x", "NamePrefix": prefix,
                            "Network": {"Subnets": network.subnets, "SecurityGroups": network.security_groups},
                            "ComputeEnvironments": {"default": {"MaxVcpus": "1"}},
                            "Pipelines": {"p": {"Stages": {"a": {"JobDefinition": "default", "Vcpu": "2", "Memory": "4096"}}}}});
    let request = json!({"RequestType": "Create", "ResponseURL": server.url, "StackId": stack_id(&stack), "RequestId": event_id(),
                         "LogicalResourceId": "Environment", "ResourceProperties": properties});
    batchline_bootstrap::handle(invocation(request), &clients, &settings).await.unwrap();
    let answer = server.accepted_answers().pop().unwrap();
    assert_eq!(answer["Status"], "FAILED");
    let reason = answer["Reason"].as_str().unwrap();
    assert!(
        reason.contains("Pipelines.p.Stages.a: 2 vCPU / 4096 MiB is more than queue \"default\" can ever run"),
        "{reason}"
    );
    let batch = aws_sdk_batch::Client::new(&sdk);
    let environments = batch.describe_compute_environments().compute_environments(format!("{prefix}-default")).send();
    assert!(environments.await.unwrap().compute_environments().is_empty(), "nothing was provisioned");
}

#[tokio::test]
async fn without_an_idempotency_key_every_start_is_a_new_run_even_after_a_cancel() {
    let h = Harness::new("pl-nokey").await;
    let first = h.start("diamond").await;
    let second = h.start("diamond").await;
    assert_ne!(first, second, "the same body without a key is new work");
    let (status, _) = h.api("DELETE", &format!("/runs/{first}"), Value::Null).await;
    assert_eq!(status, 202);
    let third = h.start("diamond").await;
    assert_ne!(third, first, "not the cancelled run again");
    assert_eq!(h.run(&third).await["status"], "RUNNING");
    // and with a key, a retry gets the run back with its current status
    let keyed = h.start_keyed("diamond", Some("k-1")).await;
    let (status, _) = h.api("DELETE", &format!("/runs/{keyed}"), Value::Null).await;
    assert_eq!(status, 202);
    let body = json!({"parameters": {"day": "2025-11-26"}});
    let (status, again) = h.api_keyed("POST", "/pipelines/diamond/runs", body, Some("k-1")).await;
    assert_eq!(
        (status, again["runId"].as_str(), again["status"].as_str()),
        (202, Some(keyed.as_str()), Some("CANCELLED"))
    );
    assert_eq!(again["duplicate"], true);
    // the same key with another body is another request: refused, as for POST /jobs
    let other = json!({"parameters": {"day": "2025-11-27"}});
    let (status, refused) = h.api_keyed("POST", "/pipelines/diamond/runs", other, Some("k-1")).await;
    assert_eq!((status, refused["error"]["code"].as_str()), (409, Some("IdempotencyConflict")), "{refused}");
}

#[tokio::test]
async fn a_run_whose_stage_jobs_batch_would_refuse_is_refused_before_it_starts() {
    let h = Harness::new("pl-check").await;
    // Reserved environment names reach every stage: refused, naming the stage and the name
    let body = json!({"environment": {"AWS_BATCH_JOB_ID": "mine"}});
    let (status, answer) = h.api("POST", "/pipelines/diamond/runs", body).await;
    assert_eq!(status, 400, "{answer}");
    let problems = answer["error"]["problems"].as_array().unwrap();
    let stages: Vec<&str> = problems.iter().map(|p| p.as_str().unwrap().split(':').next().unwrap()).collect();
    assert_eq!(stages, ["stage a", "stage b", "stage c", "stage d"], "every stage's problem at once: {answer}");
    assert!(problems.iter().all(|p| p.as_str().unwrap().contains("AWS_BATCH")), "{answer}");
    // Parameters beyond SubmitJob's 30 KiB: 413
    let body = json!({"parameters": {"blob": "x".repeat(31 * 1024)}});
    let (status, answer) = h.api("POST", "/pipelines/diamond/runs", body).await;
    assert_eq!((status, answer["error"]["code"].as_str()), (413, Some("PayloadTooLarge")), "{answer}");
    // And nothing was started
    let (_, listed) = h.api("GET", "/runs?pipeline=diamond", Value::Null).await;
    assert_eq!(listed["runs"], json!([]));
    assert!(h.job_names().await.is_empty());
}

impl Harness {
    /// The job of a stage's first attempt, as `GET /runs/{id}` shows it.
    async fn stage_job(&self, run_id: &str, stage: &str) -> String {
        let run = self.run(run_id).await;
        run["stages"][stage]["attempts"][0]["jobId"].as_str().unwrap_or_else(|| panic!("{stage}: {run}")).to_owned()
    }

    async fn describe(&self, job_id: &str) -> aws_sdk_batch::types::JobDetail {
        let batch = aws_sdk_batch::Client::new(&self.env.sdk);
        batch.describe_jobs().jobs(job_id).send().await.unwrap().jobs()[0].clone()
    }

    /// Starts `pipeline`, plays its first stage a to success, then b (which fails): returns
    /// the run and c's job, submitted after a and not played.
    async fn fail_b_while_c_runs(&mut self, pipeline: &str) -> (String, String) {
        let run_id = self.start(pipeline).await;
        let a = self.player.play_queue(&self.env.queue_arn("default")).await.unwrap();
        self.deliver(&events_of(&a, |_| true)).await;
        let (b, c) = (self.stage_job(&run_id, "b").await, self.stage_job(&run_id, "c").await);
        let b = self.player.play_jobs(&[b]).await.unwrap();
        self.deliver(&events_of(&b, |_| true)).await;
        (run_id, c)
    }
}

#[tokio::test]
async fn a_stage_failing_for_good_terminates_the_other_branch_and_on_failure_runs_once() {
    // GIVEN a run whose b fails for good while c is under way (c with a stage timeout)
    let mut h = Harness::new("pl-failfast").await;
    let (run_id, c) = h.fail_b_while_c_runs("branches").await;
    let described = h.describe(&c).await;
    assert_eq!(described.timeout().and_then(|t| t.attempt_duration_seconds()), Some(900), "the stage's timeout");
    // THEN c was terminated in Batch, saying why
    assert_eq!(described.status().map(|s| s.as_str()), Some("FAILED"), "{described:?}");
    let reason = described.status_reason().unwrap_or_default();
    assert!(reason.contains("stage b failed") && reason.contains("stopping its other jobs"), "{reason}");
    // AND once c's end arrives, the run is FAILED for b, c failed with that reason, and the
    // failure stage ran once
    let rest = h.play_to_the_end(2, 11).await;
    let run = h.run(&run_id).await;
    assert_eq!(run["status"], "FAILED", "{run}");
    assert!(run["reason"].as_str().unwrap().contains("stage b failed"), "{run}");
    assert_eq!(run["stages"]["c"]["status"], "FAILED", "{run}");
    assert!(run["stages"]["c"]["attempts"][0]["reason"].as_str().unwrap().contains("stopping its other jobs"), "{run}");
    assert_eq!(run["onFailure"]["status"], "SUCCEEDED", "{run}");
    let failure_stages = rest.iter().filter(|c| stage_of(c) == "on-failure" && c.status == "SUCCEEDED").count();
    assert_eq!(failure_stages, 1);
}

#[tokio::test]
async fn a_pipeline_that_says_finish_lets_the_other_branch_end_on_its_own() {
    let mut h = Harness::new("pl-finish").await;
    let (run_id, c) = h.fail_b_while_c_runs("finishing").await;
    assert_eq!(h.describe(&c).await.status_reason(), None, "c was left alone");
    h.play_to_the_end(1, 12).await;
    let run = h.run(&run_id).await;
    assert_eq!((run["status"].as_str(), run["stages"]["c"]["status"].as_str()), (Some("FAILED"), Some("SUCCEEDED")));
}

#[tokio::test]
async fn a_run_past_its_max_run_seconds_fails_at_its_next_event_and_its_job_is_terminated() {
    // GIVEN a run of a pipeline limited to 60 s, started (as its record says) two minutes ago
    let mut h = Harness::new("pl-deadline").await;
    let run_id = h.start("limited").await;
    let store =
        batchline::store::DynamoStore::new(aws_sdk_dynamodb::Client::new(&h.env.sdk), &h.env.settings.table_name);
    let read = batchline::store::RunStore::load_run(&store, &run_id).await.unwrap().unwrap();
    let mut old = read.run.clone();
    old.created_at -= 120_000;
    batchline::store::RunStore::save_run(&store, &old, Some(&read)).await.unwrap().unwrap();
    // WHEN the first event of its job arrives
    let changes = h.player.play_queue(&h.env.queue_arn("default")).await.unwrap();
    h.deliver(&[changes[0].event.clone()]).await;
    // THEN the run failed saying why, and the job is terminated in Batch
    let run = h.run(&run_id).await;
    assert_eq!(run["status"], "FAILED", "{run}");
    assert_eq!(run["reason"], "the run took longer than its MaxRunSeconds (60 s)", "{run}");
    let job = h.describe(&changes[0].job_id).await;
    assert!(job.status_reason().unwrap_or_default().contains("MaxRunSeconds"), "{job:?}");
}

#[tokio::test]
async fn a_run_failed_in_its_second_stage_is_redriven_larger_to_success_without_rerunning_the_first() {
    // GIVEN a three-stage run that failed in its second stage (out of memory, no resizes)
    let mut h = Harness::new("pl-redrive").await;
    let run_id = h.start("flaky").await;
    let queue_url = completion_queue(&h.env.sdk, &run_id).await;
    h.play_to_the_end(1, 21).await;
    let run = h.run(&run_id).await;
    assert_eq!((run["status"].as_str(), run["stages"]["third"]["status"].as_str()), (Some("FAILED"), Some("SKIPPED")));

    // WHEN it is redriven with a larger size for that stage (and the request retried)
    let path = format!("/runs/{run_id}/redrive");
    let body = json!({"sizes": {"second": {"memory": "2048"}}});
    let (status, first) = h.api_keyed("POST", &path, body.clone(), Some("redrive-1")).await;
    assert_eq!(status, 202, "{first}");
    assert_eq!((first["redrive"].as_u64(), first["duplicate"].as_bool()), (Some(1), Some(false)), "{first}");
    assert_eq!(first["stages"], json!(["second", "third"]));
    let (status, again) = h.api_keyed("POST", &path, body.clone(), Some("redrive-1")).await;
    assert_eq!((status, again["redrive"].as_u64(), again["duplicate"].as_bool()), (202, Some(1), Some(true)));
    // AND another redrive while it runs is refused
    let (status, refused) = h.api_keyed("POST", &path, Value::Null, Some("redrive-2")).await;
    assert_eq!((status, refused["error"]["code"].as_str()), (409, Some("RunNotEnded")), "{refused}");
    h.play_to_the_end(1, 22).await;

    // THEN it succeeded: the second stage's new attempt (number 2) ran at 2 GiB, the first
    // stage was not submitted again
    let run = h.run(&run_id).await;
    assert_eq!(run["status"], "SUCCEEDED", "{run}");
    let attempts = run["stages"]["second"]["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{run}");
    assert_eq!((attempts[1]["number"].as_u64(), attempts[1]["size"]["memoryMib"].as_u64()), (Some(2), Some(2048)));
    assert_eq!(run["stages"]["first"]["attempts"].as_array().unwrap().len(), 1);
    let jobs = h.env.jobs_in("default").await;
    let stage_jobs = |stage: &str| jobs.iter().filter(|j| j.tags().unwrap()["batchline:stage"] == stage).count();
    assert_eq!((stage_jobs("first"), stage_jobs("second"), stage_jobs("third")), (1, 2, 1));
    // AND each generation was announced once, the redrive saying which it was
    let announced = completions(&h.env.sdk, &queue_url).await;
    let outcomes: Vec<(&str, u64)> = announced
        .iter()
        .map(|e| (e["detail"]["outcome"].as_str().unwrap(), e["detail"]["redrive"].as_u64().unwrap()))
        .collect();
    assert_eq!(outcomes.len(), 2, "{announced:?}");
    assert!(outcomes.contains(&("FAILED", 0)) && outcomes.contains(&("SUCCEEDED", 1)), "{outcomes:?}");
    // AND a succeeded run is not redriven
    let (status, refused) = h.api_keyed("POST", &path, Value::Null, Some("redrive-3")).await;
    assert_eq!((status, refused["error"]["code"].as_str()), (409, Some("RunSucceeded")), "{refused}");
}

#[tokio::test]
async fn a_single_job_is_cancelled_through_the_api_and_a_stages_job_names_its_run() {
    let h = Harness::new("pl-canceljob").await;
    // GIVEN a single job submitted through the API
    let (status, submitted) = h.api("POST", "/jobs", json!({"jobDefinition": "default"})).await;
    assert_eq!(status, 202, "{submitted}");
    let job_id = submitted["jobId"].as_str().unwrap().to_owned();
    // WHEN it is cancelled, THEN Batch stops it, saying so; a retried cancel is answered alike
    for _ in 0..2 {
        let (status, answer) = h.api("DELETE", &format!("/jobs/{job_id}"), Value::Null).await;
        assert_eq!((status, answer["terminated"].as_bool()), (202, Some(true)), "{answer}");
    }
    let stopped = h.describe(&job_id).await;
    assert_eq!(stopped.status().map(|s| s.as_str()), Some("FAILED"));
    assert_eq!(stopped.status_reason(), Some("cancelled through the Batchline API"));
    // AND a job that is not the stack's is not found
    let (status, _) = h.api("DELETE", "/jobs/00000000-0000-0000-0000-000000000000", Value::Null).await;
    assert_eq!(status, 404);
    // AND a pipeline stage's job is refused, naming its run
    let run_id = h.start("diamond").await;
    let a = h.stage_job(&run_id, "a").await;
    let (status, refused) = h.api("DELETE", &format!("/jobs/{a}"), Value::Null).await;
    assert_eq!((status, refused["error"]["code"].as_str()), (409, Some("PipelineJob")), "{refused}");
    assert!(refused["error"]["message"].as_str().unwrap().contains(&format!("DELETE /runs/{run_id}")), "{refused}");
    assert_ne!(h.describe(&a).await.status_reason(), Some("cancelled through the Batchline API"), "left alone");
}

/// How many attempts Batch made of the job whose final event is in `changes`.
fn batch_attempts(changes: &[StateChange], job_id: &str) -> usize {
    let last = changes.iter().rfind(|c| c.job_id == job_id && matches!(c.status, "SUCCEEDED" | "FAILED")).unwrap();
    last.event["detail"]["attempts"].as_array().unwrap().len()
}

#[tokio::test]
async fn batch_retries_the_exits_a_job_definition_names_and_no_other() {
    let mut h = Harness::new("pl-retry").await;
    let submit = |exit: u32| json!({"jobDefinition": "retrying", "parameters": {"play": format!("exit:{exit}")}});
    let (_, three) = h.api("POST", "/jobs", submit(3)).await;
    let (_, four) = h.api("POST", "/jobs", submit(4)).await;
    let (three, four) = (three["jobId"].as_str().unwrap().to_owned(), four["jobId"].as_str().unwrap().to_owned());
    let retry = h.describe(&three).await.retry_strategy().cloned().unwrap();
    let rules: Vec<(Option<&str>, Option<&str>)> =
        retry.evaluate_on_exit().iter().map(|r| (r.on_exit_code(), r.on_reason())).collect();
    assert_eq!(rules, [(None, Some("OutOfMemoryError*")), (Some("3"), None), (None, Some("*"))], "{retry:?}");
    let changes = h.player.play_jobs(&[three.clone(), four.clone()]).await.unwrap();
    assert_eq!((batch_attempts(&changes, &three), batch_attempts(&changes, &four)), (2, 1));
    h.deliver(&events_of(&changes, |_| true)).await;
}

#[tokio::test]
async fn a_stages_own_retry_rules_are_sent_with_its_jobs() {
    let mut h = Harness::new("pl-retry-stage").await;
    let run_id = h.start("retried").await;
    let (three, four) = (h.stage_job(&run_id, "three").await, h.stage_job(&run_id, "four").await);
    let changes = h.player.play_queue(&h.env.queue_arn("default")).await.unwrap();
    assert_eq!((batch_attempts(&changes, &three), batch_attempts(&changes, &four)), (2, 1));
    h.deliver(&events_of(&changes, |_| true)).await;
    let run = h.run(&run_id).await;
    assert_eq!(run["status"], "FAILED", "{run}");
    assert_eq!(run["stages"]["three"]["attempts"][0]["exitCode"], 3, "{run}");
}

#[tokio::test]
async fn a_single_job_that_ran_out_of_memory_is_resubmitted_one_size_up_once_and_named_by_the_first() {
    // GIVEN a single job of a definition that allows one resize, which needs 1 GiB
    let mut h = Harness::new("pl-resize").await;
    let body = json!({"jobDefinition": "growing", "parameters": {"play_needs_memory": "1024"}, "environment": {"MODE": "full"}});
    let (status, first) = h.api("POST", "/jobs", body).await;
    assert_eq!(status, 202, "{first}");
    let first = first["jobId"].as_str().unwrap().to_owned();
    let changes = h.player.play_jobs(std::slice::from_ref(&first)).await.unwrap();
    assert_eq!(changes.last().map(|c| c.status), Some("FAILED"));
    h.player.settle(&changes).await.unwrap(); // as Batch then describes it
                                              // WHEN its events arrive, twice
    h.deliver(&events_of(&changes, |_| true)).await;
    h.deliver(&events_of(&changes, |_| true)).await;
    // THEN one job follows it, one size up, with its parameters and environment
    let jobs = h.env.jobs_in("default").await;
    let followers: Vec<_> =
        jobs.iter().filter(|j| j.tags().and_then(|t| t.get("batchline:original")) == Some(&first)).collect();
    assert_eq!(followers.len(), 1, "{jobs:?}");
    let next = followers[0];
    let next_id = next.job_id().unwrap().to_owned();
    let view = |status: u16, body: Value| {
        assert_eq!(status, 200, "{body}");
        body
    };
    let (status, shown) = h.api("GET", &format!("/jobs/{next_id}"), Value::Null).await;
    let shown = view(status, shown);
    assert_eq!(shown["size"]["memoryMib"], 1024, "{shown}");
    assert_eq!(shown["resizedFrom"], first.as_str(), "{shown}");
    assert_eq!(next.parameters().unwrap()["play_needs_memory"], "1024");
    let environment = next.container().unwrap().environment();
    assert!(environment.iter().any(|v| v.name() == Some("MODE") && v.value() == Some("full")), "{environment:?}");
    assert_eq!(next.tags().unwrap()["batchline:resize"], "1");
    // AND the first names it
    let (status, shown) = h.api("GET", &format!("/jobs/{first}"), Value::Null).await;
    assert_eq!(view(status, shown)["resizedTo"], next_id.as_str());
    // AND played, it succeeds
    let played = h.player.play_jobs(std::slice::from_ref(&next_id)).await.unwrap();
    assert_eq!(played.last().map(|c| c.status), Some("SUCCEEDED"));
    h.deliver(&events_of(&played, |_| true)).await;

    // AND a job of a definition that allows no resize is left failed
    let (_, plain) = h.api("POST", "/jobs", json!({"jobDefinition": "default", "parameters": {"play": "oom"}})).await;
    let plain = plain["jobId"].as_str().unwrap().to_owned();
    let changes = h.player.play_jobs(std::slice::from_ref(&plain)).await.unwrap();
    h.deliver(&events_of(&changes, |_| true)).await;
    let jobs = h.env.jobs_in("default").await;
    assert!(!jobs.iter().any(|j| j.tags().and_then(|t| t.get("batchline:original")) == Some(&plain)), "{jobs:?}");
}

#[tokio::test]
async fn a_forged_out_of_memory_event_resubmits_the_job_as_batch_describes_it_or_nothing() {
    // GIVEN a single job that really ran out of memory, and one that succeeded
    let mut h = Harness::new("pl-forged").await;
    let killed = h.post_job(json!({"jobDefinition": "growing", "parameters": {"play_needs_memory": "1024"}, "environment": {"MODE": "full"}})).await;
    let fine = h.post_job(json!({"jobDefinition": "growing", "environment": {"MODE": "full"}})).await;
    let changes = h.player.play_jobs(&[killed.clone(), fine.clone()]).await.unwrap();
    h.player.settle(&changes).await.unwrap(); // as Batch then describes them
    let failed = changes.iter().find(|c| c.status == "FAILED").expect("the first ran out of memory").event.clone();
    // WHEN forged events arrive — anyone allowed to send to the queue could write them: the
    // killed job's with another command, environment and queue, and an out-of-memory
    // failure of the job that succeeded
    let forge = |mut event: Value, job_id: &str| {
        event["id"] = json!(batchline_testkit::player::event_id());
        event["detail"]["jobId"] = json!(job_id);
        event["detail"]["jobQueue"] = json!("arn:aws:batch:us-east-1:123456789012:job-queue/someone-elses");
        event["detail"]["container"]["command"] = json!(["sh", "-c", "aws s3 cp s3://secrets/ . --recursive"]);
        event["detail"]["container"]["environment"] = json!([{"name": "MODE", "value": "exfiltrate"}]);
        event
    };
    h.deliver(&[forge(failed.clone(), &killed), forge(failed, &fine)]).await;
    // THEN the killed job is resubmitted as Batch describes it: its queue, command and environment
    let jobs = h.env.jobs_in("default").await;
    let following = |first: &str| -> Vec<aws_sdk_batch::types::JobDetail> {
        jobs.iter()
            .filter(|j| j.tags().and_then(|t| t.get("batchline:original")).map(String::as_str) == Some(first))
            .cloned()
            .collect()
    };
    let next = following(&killed);
    assert_eq!(next.len(), 1, "{jobs:?}");
    let original = jobs.iter().find(|j| j.job_id() == Some(killed.as_str())).unwrap();
    assert_eq!(next[0].job_queue(), Some(h.env.queue_arn("default").as_str()));
    assert_eq!(next[0].container().unwrap().command(), original.container().unwrap().command());
    let environment = next[0].container().unwrap().environment();
    assert!(environment.iter().any(|v| v.name() == Some("MODE") && v.value() == Some("full")), "{environment:?}");
    // AND the job that succeeded is not resubmitted at all
    assert!(following(&fine).is_empty(), "{jobs:?}");
}

/// A sweep's answer.
async fn sweep(h: &Harness) -> Value {
    batchline_job_events::handle(job_events_invocation(invocation(sweep_event())), &h.job_events, &h.env.settings)
        .await
        .unwrap()
}

#[tokio::test]
async fn jobs_held_runnable_past_their_queues_limit_are_published_and_cancelled_with_why_they_cannot_start() {
    // GIVEN a queue whose compute environment gives at most 4 vCPU, cancelling only stuck
    // jobs with a known cause after 600 s, and one that cancels every stuck job after 60 s
    let mut h = Harness::with(
        "pl-stuck",
        json!({
            "ComputeEnvironments": {"small": {"Type": "FARGATE", "MaxVcpus": "4"}, "side": {"Type": "FARGATE"}},
            "JobQueues": {
                "default": {"ComputeEnvironments": "small", "StuckAfterSeconds": "600", "CancelStuckJobs": "Diagnosed"},
                "side": {"ComputeEnvironments": "side", "StuckAfterSeconds": "60", "CancelStuckJobs": "Always"}
            },
            "JobDefinitions": {"default": {}, "elsewhere": {"Queue": "side"}},
            "Pipelines": {"stalled": {"Stages": {"only": {"JobDefinition": "elsewhere"}}}}
        }),
    )
    .await;
    // a job larger than its queue can ever run (the API refuses such a size, so it comes
    // straight from Batch's API, as from a tool beside Batchline or from before the compute
    // environment shrank), a backlog job and a fresh one, all held
    let batch = aws_sdk_batch::Client::new(&h.env.sdk);
    let requirement = |kind: aws_sdk_batch::types::ResourceType, value: &str| {
        aws_sdk_batch::types::ResourceRequirement::builder().r#type(kind).value(value).build()
    };
    let huge = batch
        .submit_job()
        .job_name("huge")
        .job_queue(h.env.queue_arn("default"))
        .job_definition(h.env.definition_arn("default"))
        .container_overrides(
            aws_sdk_batch::types::ContainerOverrides::builder()
                .resource_requirements(requirement(aws_sdk_batch::types::ResourceType::Vcpu, "8"))
                .resource_requirements(requirement(aws_sdk_batch::types::ResourceType::Memory, "16384"))
                .build(),
        )
        .send()
        .await
        .unwrap()
        .job_id()
        .unwrap()
        .to_owned();
    let backlog = h.post_job(json!({"jobDefinition": "default"})).await;
    let fresh = h.post_job(json!({"jobDefinition": "default"})).await;
    for (job, waited) in [(&huge, 700), (&backlog, 700), (&fresh, 100)] {
        h.player.hold(job, Duration::from_secs(waited)).await.unwrap();
    }
    // and a run whose stage waits on a queue whose only compute environment is disabled
    let run_id = h.start("stalled").await;
    let stage_job = h.stage_job(&run_id, "only").await;
    h.player.hold(&stage_job, Duration::from_secs(120)).await.unwrap();
    let side = h.env.stack.compute_environments["side"].name.clone();
    batch
        .update_compute_environment()
        .compute_environment(&side)
        .state(aws_sdk_batch::types::CeState::Disabled)
        .send()
        .await
        .unwrap();
    let runnable = h.player.play_queue(&h.env.queue_arn("default")).await.unwrap();
    assert_eq!(runnable.iter().map(|c| c.status).collect::<Vec<_>>(), ["RUNNABLE"; 3], "held jobs only wait");

    // WHEN the sweep runs
    let report = sweep(&h).await;

    // THEN each queue's wait and stuck jobs are reported: two stuck in the default queue,
    // of which only the diagnosed one is cancelled; the stage's job is cancelled too
    let queues = report["queues"].as_array().unwrap();
    let of = |key: &str| {
        let name = &h.env.stack.job_queues[key].name;
        queues.iter().find(|q| q["queue"] == json!(name)).unwrap_or_else(|| panic!("{report}")).clone()
    };
    let default = of("default");
    assert_eq!((default["runnable"].as_u64(), default["stuck"].as_u64()), (Some(3), Some(2)), "{default}");
    assert_eq!((default["diagnosed"].as_u64(), default["cancelled"].as_u64()), (Some(1), Some(1)), "{default}");
    assert!(default["oldestRunnableSeconds"].as_u64().unwrap() >= 700, "{default}");
    let side_queue = of("side");
    assert_eq!((side_queue["stuck"].as_u64(), side_queue["cancelled"].as_u64()), (Some(1), Some(1)), "{side_queue}");

    // AND Batch stopped the huge job, saying why it cannot start; the others still wait
    let stopped = h.describe(&huge).await;
    assert_eq!(stopped.status().map(|s| s.as_str()), Some("FAILED"));
    let reason = stopped.status_reason().unwrap_or_default();
    assert!(reason.starts_with("Batchline: RUNNABLE for 70"), "{reason}");
    assert!(reason.contains("it needs 8 vCPU and the compute environments of job queue"), "{reason}");
    assert!(reason.ends_with("allow at most 4 (MaxVcpus)"), "{reason}");
    for waiting in [&backlog, &fresh] {
        assert_eq!(h.describe(waiting).await.status().map(|s| s.as_str()), Some("RUNNABLE"));
    }
    let played = h.player.play_queue(&h.env.queue_arn("default")).await.unwrap();
    assert!(played.iter().all(|c| c.job_id == huge), "only the cancelled job moves on");
    assert_eq!(played.last().map(|c| c.status), Some("FAILED"));

    // AND the stage's cancelled job fails its run with that reason
    let changes = h.player.play_queue(&h.env.queue_arn("side")).await.unwrap();
    h.deliver(&events_of(&changes, |_| true)).await;
    let run = h.run(&run_id).await;
    assert_eq!(run["status"], "FAILED", "{run}");
    let why = run["reason"].as_str().unwrap_or_default();
    assert!(
        why.contains(&format!("no compute environment of job queue {}", h.env.stack.job_queues["side"].name)),
        "{why}"
    );
    assert!(why.contains(&format!("{side}: DISABLED")), "{why}");

    // AND the metrics say it: per queue, and for the stack (what the alarm watches)
    let default_name = h.env.stack.job_queues["default"].name.clone();
    let per_queue = [("JobQueue", default_name.as_str())];
    assert_eq!(statistics(&h.env, "StuckJobs", &per_queue).await.2, 2.0);
    assert!(statistics(&h.env, "OldestRunnableSeconds", &per_queue).await.2 >= 700.0);
    assert_eq!(statistics(&h.env, "StuckJobs", &[]).await.2, 3.0, "the stack's total");
}

/// A stack whose default queue runs on Fargate first and Fargate Spot second.
fn priced() -> Value {
    json!({
        "ComputeEnvironments": {"main": {"Type": "FARGATE"}, "spot": {"Type": "FARGATE_SPOT"}},
        "JobQueues": {"default": {"ComputeEnvironments": "main,spot"}},
        "JobDefinitions": {"default": {}},
        "Pipelines": {
            // load runs out of memory once (on Fargate); summarise runs on Spot.
            "hungry": {"MaxResizes": "2", "Stages": {
                "load": {"JobDefinition": "default", "Parameters": {"play_needs_memory": "1024"}},
                "summarise": {"JobDefinition": "default", "After": "load", "Parameters": {"play_on": "FARGATE_SPOT"}}
            }},
            // Two branches whose second stages fit the budget one at a time, not both.
            "forked": {"MaxRunCostUsd": "0.02", "Stages": {
                "a": {"JobDefinition": "default", "ExpectedSeconds": "60"},
                "b": {"JobDefinition": "default", "After": "a", "ExpectedSeconds": "60"},
                "c": {"JobDefinition": "default", "After": "a", "ExpectedSeconds": "60"},
                "d": {"JobDefinition": "default", "After": "b", "ExpectedSeconds": "3600"},
                "e": {"JobDefinition": "default", "After": "c", "ExpectedSeconds": "3600"}
            }},
            // An hour of load fits the budget at 512 MiB, not at 1024 MiB.
            "capped": {"MaxResizes": "2", "MaxRunCostUsd": "0.013", "Stages": {
                "load": {"JobDefinition": "default", "ExpectedSeconds": "3600", "Parameters": {"play_needs_memory": "1024"}}
            }, "OnFailure": {"JobDefinition": "default"}}
        }
    })
}

/// USD for `seconds` of a task of `vcpu` and `gb` at these hourly rates.
fn usd(vcpu: f64, gb: f64, rates: (f64, f64), seconds: f64) -> f64 {
    (vcpu * rates.0 + gb * rates.1) * seconds / 3600.0
}
const ON_DEMAND: (f64, f64) = (0.04048, 0.004445);
const SPOT: (f64, f64) = (0.012648, 0.001389);

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[tokio::test]
async fn a_spot_task_is_priced_at_spot_rates_and_an_on_demand_one_at_on_demand_rates() {
    // GIVEN two single jobs, one played on the queue's Fargate Spot compute environment
    let mut h = Harness::with("pl-spot", priced()).await;
    let (_, plain) = h.api("POST", "/jobs", json!({"jobDefinition": "default"})).await;
    let body = json!({"jobDefinition": "default", "parameters": {"play_on": "FARGATE_SPOT"}});
    let (_, spot) = h.api("POST", "/jobs", body).await;
    let changes = h.player.play_queue(&h.env.queue_arn("default")).await.unwrap();
    h.player.settle(&changes).await.unwrap();
    h.deliver(&events_of(&changes, |_| true)).await;
    // WHEN each is read, THEN its one task (30 s, billed a minute) is priced by its capacity
    let cost_of = |answer: &Value| {
        let id = answer["jobId"].as_str().unwrap().to_owned();
        let h = &h;
        async move {
            let (status, view) = h.api("GET", &format!("/jobs/{id}"), Value::Null).await;
            assert_eq!(status, 200, "{view}");
            view["cost"].clone()
        }
    };
    let (plain, spot) = (cost_of(&plain).await, cost_of(&spot).await);
    assert_eq!(plain["tasks"][0]["capacity"], "FARGATE", "{plain}");
    assert_eq!(spot["tasks"][0]["capacity"], "FARGATE_SPOT", "{spot}");
    assert_eq!((plain["upperBound"].as_bool(), spot["tasks"][0]["billableSeconds"].as_u64()), (Some(false), Some(60)));
    assert!(close(plain["usd"].as_f64().unwrap(), usd(0.25, 0.5, ON_DEMAND, 60.0)), "{plain}");
    assert!(close(spot["usd"].as_f64().unwrap(), usd(0.25, 0.5, SPOT, 60.0)), "{spot}");
}

#[tokio::test]
async fn a_runs_cost_sums_every_attempt_once_and_is_the_same_in_the_api_the_event_and_the_metric() {
    // GIVEN a run whose first stage runs out of memory once, every event delivered twice, shuffled
    let mut h = Harness::with("pl-runcost", priced()).await;
    let run_id = h.start("hungry").await;
    let completed = completion_queue(&h.env.sdk, &run_id).await;
    let played = h.play_to_the_end(2, 17).await;
    // AND once more, all of it, later (a redelivery)
    h.deliver(&events_of(&played, |_| true)).await;
    // THEN the run's cost is both load attempts (512 then 1024 MiB, on Fargate) plus summarise (Spot)
    let run = h.run(&run_id).await;
    assert_eq!(run["status"], "SUCCEEDED", "{run}");
    let load = usd(0.25, 0.5, ON_DEMAND, 60.0) + usd(0.25, 1.0, ON_DEMAND, 60.0);
    let summarise = usd(0.25, 0.5, SPOT, 60.0);
    let stage_cost = |stage: &str| run["stages"][stage]["costUsd"].as_f64().unwrap();
    assert!(close(stage_cost("load"), load), "{run}");
    assert!(close(stage_cost("summarise"), summarise), "{run}");
    let total = run["costUsd"].as_f64().unwrap();
    assert!(close(total, load + summarise), "{run}");
    assert_eq!(run["costIsUpperBound"], false);
    let attempts = run["stages"]["load"]["attempts"].as_array().unwrap();
    assert!(close(attempts[0]["cost"]["usd"].as_f64().unwrap(), usd(0.25, 0.5, ON_DEMAND, 60.0)), "{attempts:?}");
    // AND the completion event, sent once, carries the same figure
    let announced = completions(&h.env.sdk, &completed).await;
    assert_eq!(announced.len(), 1, "{announced:?}");
    assert_eq!(announced[0]["detail"]["costUsd"].as_f64(), Some(total));
    assert_eq!(announced[0]["detail"]["stages"]["load"]["costUsd"].as_f64(), Some(stage_cost("load")));
    // AND so does the RunCost metric of the pipeline
    let (sum, count, _) = statistics(&h.env, "RunCost", &[("Pipeline", "hungry")]).await;
    assert_eq!(count, 1.0);
    assert!(close(sum, total), "{sum} vs {total}");
}

#[tokio::test]
async fn a_resize_that_would_pass_the_runs_budget_is_not_submitted_and_the_run_fails_saying_so() {
    // GIVEN a run whose stage fits its budget at 512 MiB and runs out of memory
    let mut h = Harness::with("pl-budget", priced()).await;
    let run_id = h.start("capped").await;
    h.play_to_the_end(1, 3).await;
    // THEN the resize was not submitted: the run failed, naming the budget, the spend and the estimate
    let run = h.run(&run_id).await;
    assert_eq!(run["status"], "FAILED", "{run}");
    let reason = run["reason"].as_str().unwrap();
    assert!(reason.starts_with("the run would pass its MaxRunCostUsd of $0.01: spent $0.0002"), "{reason}");
    assert!(reason.contains("next (load attempt 2 at 0.25 vCPU / 1024 MiB) estimated at $0.0146"), "{reason}");
    let attempts = run["stages"]["load"]["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert_eq!(attempts[1]["jobId"], Value::Null, "never submitted");
    assert_eq!(attempts[1]["status"], "SKIPPED");
    // AND OnFailure ran regardless (it is exempt), and nothing else was submitted
    assert_eq!(run["onFailure"]["status"], "SUCCEEDED", "{run}");
    assert_eq!(h.job_names().await.len(), 2, "load once and on-failure");
    assert!(close(run["costUsd"].as_f64().unwrap(), 2.0 * usd(0.25, 0.5, ON_DEMAND, 60.0)), "{run}");
}

#[tokio::test]
async fn two_branches_ending_at_once_cannot_both_spend_a_budget_that_holds_one_of_them() {
    // GIVEN a run whose stages b and c have both ended, their events not yet handled: after
    // b comes d, after c comes e, an hour each; the budget ($0.02) holds one hour, not two
    let mut h = Harness::with("pl-budget-race", priced()).await;
    let run_id = h.start("forked").await;
    let withheld = h.play_withholding(|c| matches!(stage_of(c).as_str(), "b" | "c") && c.status == "SUCCEEDED").await;
    assert_eq!(withheld.len(), 2, "b's and c's ends");
    // WHEN two invocations handle the two ends at the same time, each from the same run record
    let batch = |event: &Value| Delivery::from_events(vec![event.clone()]).sqs_batches(QUEUE_ARN, 10).remove(0);
    let (one, two) = tokio::join!(
        batchline_job_events::handle(
            job_events_invocation(invocation(batch(&withheld[0]))),
            &h.job_events,
            &h.env.settings
        ),
        batchline_job_events::handle(
            job_events_invocation(invocation(batch(&withheld[1]))),
            &h.job_events,
            &h.env.settings
        ),
    );
    // (whichever lost a race is delivered again, as SQS would)
    for (outcome, event) in [(one, &withheld[0]), (two, &withheld[1])] {
        if outcome.as_ref().map(|a| a["batchItemFailures"] != json!([])).unwrap_or(true) {
            h.deliver(std::slice::from_ref(event)).await;
        }
    }
    h.play_to_the_end(1, 41).await;
    // THEN d and e were not both submitted (one of them, or neither when one invocation saw
    // both branches end and planned the two at once), and the run failed naming its budget
    let run = h.run(&run_id).await;
    assert_eq!(run["status"], "FAILED", "{run}");
    assert!(run["reason"].as_str().unwrap().starts_with("the run would pass its MaxRunCostUsd of $0.02"), "{run}");
    // AND a job submitted by the invocation that lost the race was stopped by Batchline as a
    // late job (and is on the record as that, its time counted), so no more than the budget
    // holds runs: d and e were not both submitted for the run (one of them, or neither when
    // one invocation saw both branches end and planned the two at once)
    let jobs = h.env.jobs_in("default").await;
    let branch_jobs: Vec<_> =
        jobs.iter().filter(|j| matches!(j.tags().unwrap()["batchline:stage"].as_str(), "d" | "e")).collect();
    let late = |j: &&&aws_sdk_batch::types::JobDetail| {
        j.status_reason().is_some_and(|r| r.ends_with("before the job was recorded"))
    };
    let left: Vec<&str> = branch_jobs.iter().filter(|j| !late(j)).filter_map(|j| j.job_id()).collect();
    assert!(left.len() <= 1, "{branch_jobs:?}");
    let recorded = |stage: &str| -> Vec<String> {
        let attempts = run["stages"][stage]["attempts"].as_array().cloned().unwrap_or_default();
        attempts.iter().filter_map(|a| a["jobId"].as_str().map(str::to_owned)).collect()
    };
    for job in &left {
        assert!(["d", "e"].iter().any(|stage| recorded(stage).iter().any(|id| id == job)), "{job} not on {run}");
    }
}

#[tokio::test]
async fn the_api_lists_jobs_and_runs_across_the_stack_and_summarises_it() {
    // GIVEN two single jobs (one waiting, one cancelled) and runs of two pipelines
    let mut h = Harness::new("pl-overview").await;
    let (_, waiting) = h.api("POST", "/jobs", json!({"jobDefinition": "default"})).await;
    let (_, cancelled) = h.api("POST", "/jobs", json!({"jobDefinition": "default"})).await;
    let waiting = waiting["jobId"].as_str().unwrap().to_owned();
    let cancelled = cancelled["jobId"].as_str().unwrap().to_owned();
    h.player.hold(&waiting, Duration::from_secs(30)).await.unwrap();
    h.api("DELETE", &format!("/jobs/{cancelled}"), Value::Null).await;
    let first = h.start("diamond").await;
    let second = h.start("fragile").await;

    // WHEN the jobs are listed, THEN every job of the stack's queues is there, newest first
    let (status, listed) = h.api("GET", "/jobs", Value::Null).await;
    assert_eq!(status, 200, "{listed}");
    let ids: Vec<&str> = listed["jobs"].as_array().unwrap().iter().map(|j| j["jobId"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 4, "two single jobs and two first stages: {listed}");
    assert_eq!(ids[3], waiting, "oldest last");
    // AND by status, and a status Batch does not know is refused
    let (_, runnable) = h.api("GET", "/jobs?status=runnable", Value::Null).await;
    assert_eq!(runnable["jobs"].as_array().unwrap().len(), 1, "{runnable}");
    assert_eq!(runnable["jobs"][0]["jobId"], json!(waiting));
    let (status, refused) = h.api("GET", "/jobs?status=DONE", Value::Null).await;
    assert_eq!(status, 400, "{refused}");

    // WHEN runs are listed without a pipeline, THEN both pipelines' runs come, newest first
    let (_, runs) = h.api("GET", "/runs", Value::Null).await;
    let listed: Vec<(&str, &str)> = runs["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["runId"].as_str().unwrap(), r["pipeline"].as_str().unwrap()))
        .collect();
    assert_eq!(listed, [(second.as_str(), "fragile"), (first.as_str(), "diamond")], "{runs}");

    // WHEN the stack is summarised, THEN each queue counts what waits and works, and the
    // cancelled job is a recent failure
    let (status, summary) = h.api("GET", "/status", Value::Null).await;
    assert_eq!(status, 200, "{summary}");
    let default = summary["queues"].as_array().unwrap().iter().find(|q| q["key"] == "default").unwrap().clone();
    assert_eq!((default["state"].as_str(), default["default"].as_bool()), (Some("ENABLED"), Some(true)), "{default}");
    assert_eq!(default["jobs"]["RUNNABLE"], 1, "{default}");
    assert_eq!(summary["recentFailures"][0]["jobId"], json!(cancelled), "{summary}");
    assert_eq!(summary["recentFailures"][0]["statusReason"], "cancelled through the Batchline API");
    assert_eq!(summary["openRuns"], 2, "{summary}");
}

#[tokio::test]
async fn under_a_template_whose_job_events_may_not_terminate_jobs_the_fail_fast_stop_is_denied_naming_it() {
    // GIVEN job-events held to a template whose StopJobs statement lost batch:TerminateJob
    let fixture = crate::common::fixture_template(
        "no-terminate",
        "            - Sid: StopJobs\n              Effect: Allow\n              Action: batch:TerminateJob\n",
        "            - Sid: StopJobs\n              Effect: Allow\n              Action: batch:DescribeJobs\n",
    );
    let mut h = Harness::with_template("iam-noterm", pipelines(), Some(&fixture)).await;
    // WHEN b fails for good while c runs (the fail-fast test's scenario)
    let run_id = h.start("branches").await;
    let a = h.player.play_queue(&h.env.queue_arn("default")).await.unwrap();
    h.deliver(&events_of(&a, |_| true)).await;
    let (b, c) = (h.stage_job(&run_id, "b").await, h.stage_job(&run_id, "c").await);
    let b = h.player.play_jobs(&[b]).await.unwrap();
    h.deliver_allowing_failures(&events_of(&b, |_| true)).await;
    // THEN c is not terminated — the fail-fast test's promise is broken...
    let reason = h.describe(&c).await.status_reason().unwrap_or_default().to_owned();
    assert!(!reason.contains("stopping its other jobs"), "{reason}");
    // AND the evaluation names the principal, the action and the job it was denied on
    let denials = crate::common::denials_of(&h.env.name);
    assert!(
        denials.iter().any(|d| d["principal"] == "job-events"
            && d["action"] == "batch:TerminateJob"
            && d["resource"].as_str().is_some_and(|r| r.ends_with(&format!("job/{c}")))),
        "{denials:?}"
    );
}

#[tokio::test]
async fn under_a_template_narrowing_job_events_table_keys_runs_cannot_advance_and_the_denial_names_the_key() {
    // GIVEN job-events' table access narrowed to the event ledger's items (EVENT#...)
    let items = "              Action: [dynamodb:GetItem, dynamodb:PutItem, dynamodb:UpdateItem, dynamodb:DeleteItem, \
                 dynamodb:ConditionCheckItem, dynamodb:Query, dynamodb:BatchWriteItem]\n              \
                 Resource: !GetAtt Table.Arn\n";
    let narrowed = format!(
        "{items}              Condition:\n                \
                            ForAllValues:StringLike: {{dynamodb:LeadingKeys: [\"EVENT#*\"]}}\n"
    );
    let fixture = crate::common::fixture_template("ledger-keys-only", items, &narrowed);
    let h = Harness::with_template("iam-keys", pipelines(), Some(&fixture)).await;
    let run_id = h.start("diamond").await;
    // WHEN its first stage's job ends and job-events is told
    let mut player = Player::new(&h.env.sdk);
    let a = player.play_queue(&h.env.queue_arn("default")).await.unwrap();
    h.deliver_allowing_failures(&events_of(&a, |_| true)).await;
    // THEN the run did not advance: nothing after a was submitted
    let run = h.run(&run_id).await;
    assert!(run["stages"]["b"]["attempts"].as_array().is_none_or(Vec::is_empty), "{run}");
    // AND the evaluation names job-events, the table and the run's key it may not touch
    let denials = crate::common::denials_of(&h.env.name);
    assert!(
        denials.iter().any(|d| d["principal"] == "job-events"
            && d["action"].as_str().is_some_and(|a| a.starts_with("dynamodb:"))
            && d["context"]["dynamodb:LeadingKeys"].to_string().contains(&format!("RUN#{run_id}"))),
        "{denials:?}"
    );
}
