//! job-events against the emulator: metrics read back from CloudWatch, aggregation, duplicates, partial failures.

use std::collections::{BTreeMap, BTreeSet};

use batchline::model::batch_event::JobStateChangeEvent;
use batchline::Settings;
use batchline_job_events::{handle, Clients};
use batchline_testkit::batch_env::BatchEnvironment;
use batchline_testkit::calls::{CallLog, FailOperation, LoseResponse};
use batchline_testkit::emulator::{sdk_config, signing_as, test_settings, unique_name, Principal};
use batchline_testkit::player::{sqs_record, Delivery, Player, Script};
use batchline_testkit::table::create_table;
use serde_json::{json, Value};

use crate::common::stats;

/// An invocation of job-events, its payload read as the runtime reads it.
fn invocation(payload: Value) -> lambda_runtime::LambdaEvent<batchline_job_events::Payload> {
    crate::common::job_events_invocation(batchline_testkit::invocation(payload))
}

const QUEUE_ARN: &str = "arn:aws:sqs:us-east-1:123456789012:batchline-job-events";

const FIXTURES: [(&str, &str); 11] = [
    ("submitted", include_str!("../fixtures/batch/submitted.json")),
    ("pending", include_str!("../fixtures/batch/pending.json")),
    ("runnable", include_str!("../fixtures/batch/runnable.json")),
    ("starting", include_str!("../fixtures/batch/starting.json")),
    ("running", include_str!("../fixtures/batch/running.json")),
    ("succeeded-fargate", include_str!("../fixtures/batch/succeeded-fargate.json")),
    ("failed-exit-code", include_str!("../fixtures/batch/failed-exit-code.json")),
    ("failed-out-of-memory", include_str!("../fixtures/batch/failed-out-of-memory.json")),
    ("succeeded-task-properties", include_str!("../fixtures/batch/succeeded-task-properties.json")),
    ("array-parent-succeeded", include_str!("../fixtures/batch/array-parent-succeeded.json")),
    ("array-child-succeeded", include_str!("../fixtures/batch/array-child-succeeded.json")),
];

/// A config of the test's own (table, namespace), its table created, job-events' clients
/// (signing as its role, evaluated against the template's policies), the test's own SDK
/// configuration and the one job-events signs with.
async fn setup(test: &str) -> (Settings, Clients, aws_config::SdkConfig, aws_config::SdkConfig) {
    let sdk = sdk_config().await;
    let settings = test_settings(test);
    create_table(&sdk, &settings.table_name).await.unwrap();
    // A stack of the test's own, its calls evaluated against job-events' policies.
    let name = unique_name(&test.chars().take(12).collect::<String>());
    crate::common::register(&name, &settings, &serde_json::json!({}), None);
    let signed = signing_as(&sdk, Principal::JobEvents, &name);
    let clients = Clients::new(&signed, &settings);
    (settings, clients, sdk, signed)
}

fn sqs_batch(events: &[Value]) -> Value {
    let records: Vec<Value> = events
        .iter()
        .enumerate()
        .map(|(i, event)| sqs_record(&format!("m{i}"), &event.to_string(), QUEUE_ARN))
        .collect();
    json!({ "Records": records })
}

fn failures(answer: &Value) -> Vec<String> {
    answer["batchItemFailures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["itemIdentifier"].as_str().unwrap().to_owned())
        .collect()
}

type Dims = Vec<(String, String)>;

/// `cloudwatch` as the test itself reads with: job-events' own role may publish metrics,
/// not read them.
fn reader(cloudwatch: &aws_sdk_cloudwatch::Client) -> aws_sdk_cloudwatch::Client {
    let credentials = aws_sdk_cloudwatch::config::Credentials::new("testing", "testing", None, None, "test");
    aws_sdk_cloudwatch::Client::from_conf(cloudwatch.config().to_builder().credentials_provider(credentials).build())
}

/// Every (metric, exact dimension set) in the namespace, from ListMetrics.
async fn listed(cloudwatch: &aws_sdk_cloudwatch::Client, namespace: &str) -> BTreeSet<(String, Dims)> {
    let reply = reader(cloudwatch).list_metrics().namespace(namespace).send().await.unwrap();
    reply
        .metrics()
        .iter()
        .map(|m| {
            let mut dims: Dims =
                m.dimensions().iter().map(|d| (d.name().unwrap().to_owned(), d.value().unwrap().to_owned())).collect();
            dims.sort();
            (m.metric_name().unwrap().to_owned(), dims)
        })
        .collect()
}

#[test]
fn every_fixture_parses_and_what_is_read_round_trips() {
    for (name, text) in FIXTURES {
        let event = JobStateChangeEvent::from_json(text).unwrap_or_else(|e| panic!("{name}: {e}"));
        let again = JobStateChangeEvent::from_value(serde_json::to_value(&event).unwrap()).unwrap();
        assert_eq!(again, event, "{name} round-trips");
    }
}

#[test]
fn fixtures_expose_sizes_exit_codes_and_array_roles() {
    let event =
        |name: &str| JobStateChangeEvent::from_json(FIXTURES.iter().find(|(n, _)| *n == name).unwrap().1).unwrap();
    let oom = event("failed-out-of-memory");
    assert_eq!(oom.detail.last_attempt_container().unwrap().exit_code, Some(137));
    assert_eq!(oom.detail.status_reason.as_deref(), Some("Essential container in task exited"));
    let tasks = event("succeeded-task-properties");
    assert_eq!(tasks.detail.size().unwrap().to_string(), "2 vCPU / 4096 MiB");
    assert_eq!(tasks.detail.cpu_architecture(), Some("ARM64"));
    assert_eq!(
        tasks
            .detail
            .last_attempt_container()
            .unwrap()
            .log_stream_name
            .as_deref()
            .map(|s| s.starts_with("batchline-multi/main/")),
        Some(true)
    );
    assert!(event("array-parent-succeeded").detail.is_array_parent());
    assert!(!event("array-child-succeeded").detail.is_array_parent());
}

/// The dimension sets a fixture's metrics go under.
fn dimension_sets(tagged: bool, definition: &str) -> Vec<Dims> {
    let d = |pairs: &[(&str, &str)]| -> Dims {
        let mut v: Dims = pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
        v.sort();
        v
    };
    let mut sets = vec![
        d(&[]),
        d(&[("JobQueue", "batchline-default")]),
        d(&[("JobQueue", "batchline-default"), ("JobDefinition", definition)]),
    ];
    if tagged {
        sets.push(d(&[("Pipeline", "orders")]));
        sets.push(d(&[("Pipeline", "orders"), ("Stage", "extract")]));
    }
    sets
}

#[tokio::test]
async fn each_fixture_publishes_the_expected_metrics_with_exact_dimensions_and_values() {
    // Expected (metric → sum) for each fixture; every value is one sample per dimension set.
    let fargate_cost = (1.0 * 0.04048 + 2.0 * 0.004445) * 96.0 / 3600.0;
    let arm_cost = (2.0 * 0.03238 + 4.0 * 0.00356) * 96.0 / 3600.0;
    let terminal = |count: &str, cost: f64| {
        vec![
            (count.to_owned(), 1.0),
            ("QueueWaitTime".into(), 42_000.0),
            ("RunTime".into(), 95_500.0),
            ("TotalTime".into(), 137_500.0),
            ("Attempts".into(), 1.0),
            ("EstimatedCost".into(), cost),
        ]
    };
    // (fixture, tagged with a pipeline and stage, job definition name, expected sums)
    type Case<'a> = (&'a str, bool, &'a str, Vec<(String, f64)>);
    let cases: Vec<Case> = vec![
        ("submitted", true, "batchline-process", vec![("JobsSubmitted".into(), 1.0)]),
        ("pending", true, "batchline-process", vec![("JobsPending".into(), 1.0)]),
        ("runnable", true, "batchline-process", vec![("JobsRunnable".into(), 1.0)]),
        ("starting", true, "batchline-process", vec![("JobsStarting".into(), 1.0)]),
        ("running", true, "batchline-process", vec![("JobsRunning".into(), 1.0)]),
        ("succeeded-fargate", true, "batchline-process", terminal("JobsSucceeded", fargate_cost)),
        ("failed-exit-code", false, "batchline-process", terminal("JobsFailed", fargate_cost)),
        ("failed-out-of-memory", true, "batchline-process", terminal("JobsFailed", fargate_cost)),
        ("succeeded-task-properties", false, "batchline-multi", terminal("JobsSucceeded", arm_cost)),
        ("array-parent-succeeded", false, "batchline-process", vec![]),
        ("array-child-succeeded", false, "batchline-process", terminal("JobsSucceeded", fargate_cost)),
    ];
    for (name, tagged, definition, expected) in cases {
        // GIVEN a namespace and table of this case's own
        let (config, clients, _, _) = setup(&format!("fixture-{name}")).await;
        let text = FIXTURES.iter().find(|(n, _)| *n == name).unwrap().1;

        // WHEN the fixture arrives as a direct EventBridge invocation
        let answer = handle(invocation(serde_json::from_str(text).unwrap()), &clients, &config).await;
        assert!(answer.is_ok(), "{name}: {answer:?}");

        // THEN ListMetrics shows exactly these metrics under exactly these dimension sets
        let sets = dimension_sets(tagged, definition);
        let want: BTreeSet<(String, Dims)> = expected
            .iter()
            .flat_map(|(metric, _)| sets.iter().map(move |dims| (metric.clone(), dims.clone())))
            .collect();
        assert_eq!(listed(&clients.cloudwatch, &config.metric_namespace).await, want, "{name}");

        // AND each has the expected sum and one sample, under every set
        for (metric, sum) in &expected {
            for dims in &sets {
                let dims: Vec<(&str, &str)> = dims.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
                let (got_sum, count) = stats(&clients.cloudwatch, &config.metric_namespace, metric, &dims).await;
                assert!((got_sum - sum).abs() < 1e-9, "{name} {metric} {dims:?}: sum {got_sum}, expected {sum}");
                assert_eq!(count, 1.0, "{name} {metric} {dims:?}");
            }
        }
    }
}

#[tokio::test]
async fn a_batch_of_500_events_is_one_put_metric_data_call() {
    // GIVEN 500 distinct events (different ids, times and run lengths) in SQS batches
    let (config, _, _, signed) = setup("aggregate").await;
    let log = CallLog::default();
    let cloudwatch = aws_sdk_cloudwatch::Client::from_conf(
        aws_sdk_cloudwatch::config::Builder::from(&signed).interceptor(log.clone()).build(),
    );
    let mut clients = Clients::new(&signed, &config);
    clients.cloudwatch = cloudwatch;
    let template: Value = serde_json::from_str(FIXTURES[5].1).unwrap();
    let events: Vec<Value> = (0..500)
        .map(|i| {
            let mut event = template.clone();
            event["id"] = json!(format!("agg-{i}"));
            event["detail"]["stoppedAt"] = json!(template["detail"]["stoppedAt"].as_i64().unwrap() + i);
            event
        })
        .collect();

    // WHEN they arrive as one SQS batch
    let answer = handle(invocation(sqs_batch(&events)), &clients, &config).await.unwrap();

    // THEN every message is done, with one PutMetricData call for them all
    assert_eq!(failures(&answer), Vec::<String>::new());
    assert_eq!(log.count("PutMetricData"), 1, "{:?}", log.all());
    assert_eq!(stats(&clients.cloudwatch, &config.metric_namespace, "JobsSucceeded", &[]).await, (500.0, 500.0));
    let (run_time_sum, samples) =
        stats(&clients.cloudwatch, &config.metric_namespace, "RunTime", &[("JobQueue", "batchline-default")]).await;
    assert_eq!(samples, 500.0);
    assert_eq!(run_time_sum, (0..500).map(|i| 95_500.0 + i as f64).sum::<f64>());
}

#[tokio::test]
async fn the_same_event_in_two_invocations_is_counted_once() {
    let (config, clients, _, _) = setup("dupe").await;
    let event: Value = serde_json::from_str(FIXTURES[5].1).unwrap();

    handle(invocation(event.clone()), &clients, &config).await.unwrap();
    let answer = handle(invocation(sqs_batch(&[event.clone(), event])), &clients, &config).await.unwrap();

    assert_eq!(failures(&answer), Vec::<String>::new(), "duplicates are acknowledged");
    assert_eq!(stats(&clients.cloudwatch, &config.metric_namespace, "JobsSucceeded", &[]).await, (1.0, 1.0));
}

#[tokio::test]
async fn only_the_malformed_message_of_a_batch_is_reported_failed() {
    let (config, clients, _, _) = setup("malformed").await;
    let good: Value = serde_json::from_str(FIXTURES[2].1).unwrap();
    let mut batch = sqs_batch(&[good]);
    let records = batch["Records"].as_array_mut().unwrap();
    records.push(json!({"messageId": "broken-json", "body": "{not json"}));
    records.push(json!({"messageId": "wrong-kind", "body": json!({"id": "x", "detail-type": "Object Created", "source": "aws.s3", "detail": {}}).to_string()}));
    records.push(json!({"messageId": "no-job-id", "body": json!({"id": "y", "detail-type": "Batch Job State Change", "source": "aws.batch", "detail": {"status": "RUNNING"}}).to_string()}));

    let answer = handle(invocation(batch), &clients, &config).await.unwrap();

    assert_eq!(failures(&answer), ["broken-json", "wrong-kind", "no-job-id"]);
    assert_eq!(stats(&clients.cloudwatch, &config.metric_namespace, "JobsRunnable", &[]).await, (1.0, 1.0));
}

#[tokio::test]
async fn a_failed_put_metric_data_leaves_the_messages_retryable_and_the_retry_counts_once() {
    // GIVEN a CloudWatch client whose first PutMetricData fails
    let (config, _, _, signed) = setup("retry").await;
    let failing = aws_sdk_cloudwatch::Client::from_conf(
        aws_sdk_cloudwatch::config::Builder::from(&signed).interceptor(FailOperation::new("PutMetricData", 1)).build(),
    );
    let mut clients = Clients::new(&signed, &config);
    clients.cloudwatch = failing;
    let events: Vec<Value> = FIXTURES[2..6].iter().map(|(_, text)| serde_json::from_str(text).unwrap()).collect();
    let batch = sqs_batch(&events);

    // WHEN the batch is handled, fails, and is redelivered
    let first = handle(invocation(batch.clone()), &clients, &config).await.unwrap();
    assert_eq!(failures(&first), ["m0", "m1", "m2", "m3"]);
    assert_eq!(stats(&clients.cloudwatch, &config.metric_namespace, "JobsRunnable", &[]).await, (0.0, 0.0));
    let second = handle(invocation(batch.clone()), &clients, &config).await.unwrap();
    let third = handle(invocation(batch), &clients, &config).await.unwrap();

    // THEN the retry succeeds and every transition is counted exactly once
    assert_eq!(failures(&second), Vec::<String>::new());
    assert_eq!(failures(&third), Vec::<String>::new());
    for metric in ["JobsRunnable", "JobsStarting", "JobsRunning", "JobsSucceeded"] {
        assert_eq!(stats(&clients.cloudwatch, &config.metric_namespace, metric, &[]).await, (1.0, 1.0), "{metric}");
    }
}

#[tokio::test]
async fn a_direct_event_that_cannot_be_handled_is_an_invocation_error() {
    let (config, clients, _, _) = setup("direct-errors").await;
    let err = handle(
        invocation(json!({"detail-type": "Object Created", "source": "aws.s3", "id": "1", "detail": {}})),
        &clients,
        &config,
    )
    .await
    .unwrap_err();
    assert_eq!(err.error_type(), "Batchline.InvalidEvent");
    let err = handle(invocation(json!({"hello": "world"})), &clients, &config).await.unwrap_err();
    assert!(err.to_string().contains("unknown shape"), "{err}");
    let err = handle(invocation(json!({"Records": "nope"})), &clients, &config).await.unwrap_err();
    assert!(err.to_string().contains("Records"), "{err}");
}

#[tokio::test]
async fn played_jobs_delivered_twice_and_shuffled_through_sqs_batches_count_once_each() {
    // GIVEN three jobs played by the event player: two succeed, one runs out of memory
    let (config, clients, sdk, _) = setup("played").await;
    let env = BatchEnvironment::create(&sdk, "je-played").await.unwrap();
    let batch = aws_sdk_batch::Client::new(&sdk);
    for name in ["a", "b", "c"] {
        batch
            .submit_job()
            .job_name(name)
            .job_queue(&env.queue_arn)
            .job_definition(&env.job_definition_arn)
            .send()
            .await
            .unwrap();
    }
    let mut player = Player::new(&sdk);
    player.script("c", Script::out_of_memory());
    let changes = player.play_queue(&env.queue_arn).await.unwrap();

    // WHEN every event arrives twice, shuffled, in SQS batches of 10
    for payload in Delivery::of(&changes).repeated(2).shuffled(11).sqs_batches(QUEUE_ARN, 10) {
        let answer = handle(invocation(payload), &clients, &config).await.unwrap();
        assert_eq!(failures(&answer), Vec::<String>::new());
    }

    // THEN each transition counts once, per queue and job definition
    let dims = [("JobQueue", env.queue_name.as_str()), ("JobDefinition", env.job_definition_name.as_str())];
    let mut got = BTreeMap::new();
    for metric in ["JobsRunnable", "JobsStarting", "JobsRunning", "JobsSucceeded", "JobsFailed"] {
        got.insert(metric, stats(&clients.cloudwatch, &config.metric_namespace, metric, &dims).await.0);
    }
    assert_eq!(
        got,
        BTreeMap::from([
            ("JobsFailed", 1.0),
            ("JobsRunnable", 3.0),
            ("JobsRunning", 3.0),
            ("JobsStarting", 3.0),
            ("JobsSucceeded", 2.0)
        ])
    );
    // The player's default script: 10 s in the queue, 30 s running, for all three.
    assert_eq!(stats(&clients.cloudwatch, &config.metric_namespace, "QueueWaitTime", &dims).await, (30_000.0, 3.0));
    assert_eq!(stats(&clients.cloudwatch, &config.metric_namespace, "RunTime", &dims).await, (90_000.0, 3.0));
}

#[tokio::test]
async fn a_lost_put_metric_data_reply_counts_its_events_one_extra_time_and_no_more() {
    // GIVEN a CloudWatch client whose first PutMetricData takes effect but loses its reply
    let (config, _, _, signed) = setup("lost-put").await;
    let log = CallLog::default();
    let losing = aws_sdk_cloudwatch::Client::from_conf(
        aws_sdk_cloudwatch::config::Builder::from(&signed)
            .interceptor(LoseResponse::new("PutMetricData", 1))
            .interceptor(log.clone())
            .build(),
    );
    let mut clients = Clients::new(&signed, &config);
    clients.cloudwatch = losing;
    let events: Vec<Value> = FIXTURES[2..3].iter().map(|(_, text)| serde_json::from_str(text).unwrap()).collect();
    let batch = sqs_batch(&events);

    // WHEN the batch is handled: the call is sent once (no SDK retry), so the message is
    // not acknowledged while its count is uncertain, and it is redelivered
    let first = handle(invocation(batch.clone()), &clients, &config).await.unwrap();
    assert_eq!(failures(&first), ["m0"]);
    assert_eq!(log.count("PutMetricData"), 1, "the SDK does not resend it");
    let second = handle(invocation(batch.clone()), &clients, &config).await.unwrap();
    let third = handle(invocation(batch), &clients, &config).await.unwrap();

    // THEN the one lost reply counted the event one extra time, and nothing else did
    assert_eq!((failures(&second), failures(&third)), (vec![], vec![]));
    assert_eq!(log.count("PutMetricData"), 2);
    assert_eq!(stats(&clients.cloudwatch, &config.metric_namespace, "JobsRunnable", &[]).await, (2.0, 2.0));
}

#[tokio::test]
async fn run_work_stops_before_the_deadline_and_what_is_left_is_redelivered() {
    // GIVEN a run event delivered to an invocation with less time left than run work needs
    let (config, clients, _, _) = setup("budget").await;
    let mut event: Value = serde_json::from_str(FIXTURES[5].1).unwrap();
    event["detail"]["tags"] = json!({"batchline:run": "some-run", "batchline:pipeline": "p", "batchline:stage": "s"});
    let batch = sqs_batch(&[event]);
    let mut late = invocation(batch.clone());
    let deadline = batchline::now_ms() + batchline_job_events::RUN_WORK_MARGIN_MS - 1_000;
    late.context.deadline = deadline as u64;

    // WHEN it is handled, THEN the run work is left to the redelivery, the message failed
    let answer = handle(late, &clients, &config).await.unwrap();
    assert_eq!(failures(&answer), ["m0"]);

    // AND with time enough, the same message goes through (its metrics counted once)
    let answer = handle(invocation(batch), &clients, &config).await.unwrap();
    assert_eq!(failures(&answer), Vec::<String>::new());
    assert_eq!(stats(&clients.cloudwatch, &config.metric_namespace, "JobsSucceeded", &[]).await, (1.0, 1.0));
}

/// Every message waiting in a queue (the emulator's delivery is synchronous).
async fn drain(sqs: &aws_sdk_sqs::Client, url: &str) -> Vec<aws_sdk_sqs::types::Message> {
    let mut messages = Vec::new();
    loop {
        let reply = sqs.receive_message().queue_url(url).max_number_of_messages(10).send().await.unwrap();
        if reply.messages().is_empty() {
            return messages;
        }
        messages.extend(reply.messages().iter().cloned());
    }
}

#[tokio::test]
async fn the_runs_lane_takes_only_the_states_a_run_or_a_single_job_acts_on() {
    // GIVEN the template's lanes wired on a bus of the test's own
    let sdk = sdk_config().await;
    let base: Value = serde_json::from_str(FIXTURES[5].1).unwrap();
    let job_queue = base["detail"]["jobQueue"].as_str().unwrap().to_owned();
    let events = aws_sdk_eventbridge::Client::new(&sdk);
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let bus = unique_name("run-states");
    events.create_event_bus().name(&bus).send().await.unwrap();
    let mut wired = BTreeMap::new();
    for (index, lane) in batchline_testkit::lanes::template_lanes(&[job_queue]).unwrap().into_iter().enumerate() {
        let queue = lane.wire(&sqs, &events, &bus, &format!("{bus}-{index}")).await.unwrap();
        wired.insert(lane.queue.clone(), queue);
    }

    // WHEN a pipeline stage's job and a single job each go through every state Batch announces
    let statuses = ["SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING", "SUCCEEDED", "FAILED"];
    let tags = [
        ("stage", json!({"batchline:run": "r-1", "batchline:pipeline": "p", "batchline:stage": "s"})),
        // (a single job carries an empty pipeline tag)
        ("single", json!({"batchline:run": "job-abc", "batchline:pipeline": "", "batchline:stage": "default"})),
    ];
    let mut sent = Vec::new();
    for (kind, tags) in &tags {
        for status in statuses {
            let mut event = base.clone();
            event["detail"]["jobId"] = json!(format!("{kind}-{status}"));
            event["detail"]["status"] = json!(status);
            event["detail"]["tags"] = tags.clone();
            sent.push(event);
        }
    }
    Delivery::from_events(sent).to_event_bus(&events, &bus).await.unwrap();

    // THEN the metrics lane counts every state, and the runs lane gets a stage's RUNNING (a
    // stage shows as running) and its end, and a single job's failure (it may be resized):
    // nothing else a run or a single job acts on, so nothing else is paid for there
    let mut job_ids = BTreeMap::new();
    for (queue, lane) in &wired {
        let messages = drain(&sqs, &lane.queue_url).await;
        let ids: BTreeSet<String> = messages
            .iter()
            .map(|m| {
                let body: Value = serde_json::from_str(m.body().unwrap()).unwrap();
                body["event"]["detail"]["jobId"].as_str().unwrap().to_owned()
            })
            .collect();
        job_ids.insert(queue.clone(), ids);
    }
    assert_eq!(job_ids["JobEventsQueue"].len(), 14);
    let expected = ["stage-RUNNING", "stage-SUCCEEDED", "stage-FAILED", "single-FAILED"];
    assert_eq!(job_ids["RunEventsQueue"], expected.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>());
}

#[tokio::test]
async fn an_array_childs_metrics_count_under_its_parents_pipeline_and_stage_with_or_without_tags_on_its_events() {
    // GIVEN two arrays of three children of a pipeline's stages; the first's children's events
    // carry the parent's tags, the second's come without them
    let (config, clients, sdk, _) = setup("children").await;
    let env = BatchEnvironment::create(&sdk, "je-children").await.unwrap();
    let batch = aws_sdk_batch::Client::new(&sdk);
    let mut player = Player::new(&sdk);
    for (stage, untagged) in [("resize", false), ("crop", true)] {
        batch
            .submit_job()
            .job_name(stage)
            .job_queue(&env.queue_arn)
            .job_definition(&env.job_definition_arn)
            .array_properties(aws_sdk_batch::types::ArrayProperties::builder().size(3).build())
            .tags("batchline:run", "thumbnails-r1")
            .tags("batchline:pipeline", "thumbnails")
            .tags("batchline:stage", stage)
            .send()
            .await
            .unwrap();
        player.untagged_children(untagged);
        let changes = player.play_queue(&env.queue_arn).await.unwrap();
        // WHEN the metrics lane gets every event, twice
        let lane = |change: &batchline_testkit::player::StateChange| json!({"lane": "metrics", "event": change.event});
        let events: Vec<Value> = changes.iter().map(lane).collect();
        for payload in Delivery::from_events(events).repeated(2).sqs_batches(QUEUE_ARN, 10) {
            let answer = handle(invocation(payload), &clients, &config).await.unwrap();
            assert_eq!(failures(&answer), Vec::<String>::new());
        }
    }
    // THEN each stage counts its three children (not the parent), once each, whether or not
    // their events carried its tags
    for stage in ["resize", "crop"] {
        let dims = [("Pipeline", "thumbnails"), ("Stage", stage)];
        let succeeded = stats(&clients.cloudwatch, &config.metric_namespace, "JobsSucceeded", &dims).await;
        assert_eq!(succeeded.0, 3.0, "{stage}");
    }
}

#[tokio::test]
async fn when_batch_cannot_name_a_childs_parent_only_the_untagged_children_wait_for_another_try() {
    // GIVEN an array whose children's events come without tags, a plain job beside it, and a
    // Batch client whose first DescribeJobs fails
    let (config, mut clients, sdk, signed) = setup("children-retry").await;
    let env = BatchEnvironment::create(&sdk, "je-children-retry").await.unwrap();
    let batch = aws_sdk_batch::Client::new(&sdk);
    let submit = |name: &'static str, size: Option<i32>| {
        let request = batch
            .submit_job()
            .job_name(name)
            .job_queue(&env.queue_arn)
            .job_definition(&env.job_definition_arn)
            .set_array_properties(size.map(|n| aws_sdk_batch::types::ArrayProperties::builder().size(n).build()))
            .tags("batchline:run", "blur-r1")
            .tags("batchline:pipeline", "thumbnails")
            .tags("batchline:stage", name);
        async move { request.send().await.unwrap() }
    };
    submit("blur", Some(2)).await;
    submit("plain", None).await;
    let mut player = Player::new(&sdk);
    player.untagged_children(true);
    let changes = player.play_queue(&env.queue_arn).await.unwrap();
    let failing = aws_sdk_batch::Client::from_conf(
        aws_sdk_batch::config::Builder::from(&signed).interceptor(FailOperation::new("DescribeJobs", 1)).build(),
    );
    clients.ports.batch = batchline::adapters::batch::SdkBatch::new(failing);
    let events: Vec<Value> = changes.iter().map(|c| json!({"lane": "metrics", "event": c.event})).collect();
    // WHEN the batch is handled: THEN only the children's messages come back
    let first = handle(invocation(sqs_batch(&events)), &clients, &config).await.unwrap();
    let children: Vec<String> = (0..events.len())
        .filter(|&i| events[i]["event"]["detail"]["arrayProperties"]["index"].is_number())
        .map(|i| format!("m{i}"))
        .collect();
    assert_eq!(failures(&first), children);
    let plain = [("Pipeline", "thumbnails"), ("Stage", "plain")];
    assert_eq!(stats(&clients.cloudwatch, &config.metric_namespace, "JobsSucceeded", &plain).await.0, 1.0);
    // AND redelivered, they count under their parent's stage, each once
    let again = handle(invocation(sqs_batch(&events)), &clients, &config).await.unwrap();
    assert_eq!(failures(&again), Vec::<String>::new());
    let blur = [("Pipeline", "thumbnails"), ("Stage", "blur")];
    assert_eq!(stats(&clients.cloudwatch, &config.metric_namespace, "JobsSucceeded", &blur).await.0, 2.0);
    assert_eq!(stats(&clients.cloudwatch, &config.metric_namespace, "JobsSucceeded", &plain).await.0, 1.0);
}

#[tokio::test]
async fn the_template_lanes_count_every_event_in_one_lane_and_advance_runs_in_the_other() {
    // GIVEN the template's lanes wired on a bus of the test's own, and job-events whose
    // table and CloudWatch calls are counted
    let (config, mut clients, sdk, signed) = setup("lanes").await;
    let calls = CallLog::default();
    let dynamo = aws_sdk_dynamodb::Client::from_conf(
        aws_sdk_dynamodb::config::Builder::from(&signed).interceptor(calls.clone()).build(),
    );
    clients.ports.store = std::sync::Arc::new(batchline::store::DynamoStore::new(dynamo, &config.table_name));
    clients.cloudwatch = aws_sdk_cloudwatch::Client::from_conf(
        aws_sdk_cloudwatch::config::Builder::from(&signed).interceptor(calls.clone()).build(),
    );
    let mut plain: Value = serde_json::from_str(FIXTURES[5].1).unwrap();
    plain["detail"]["tags"] = json!({"team": "data"});
    let mut staged = plain.clone();
    staged["detail"]["jobId"] = json!("a-stage-job");
    staged["detail"]["tags"] = json!({"batchline:run": "lanes-run", "batchline:pipeline": "p", "batchline:stage": "s"});
    let mut child = staged.clone();
    child["detail"]["jobId"] = json!("an-array:3");
    child["detail"]["arrayProperties"] = json!({"index": 3});
    let mut parent = staged.clone();
    parent["detail"]["jobId"] = json!("an-array");
    parent["detail"]["arrayProperties"] = json!({"size": 4, "statusSummary": {"SUCCEEDED": 4}});
    let job_queue = plain["detail"]["jobQueue"].as_str().unwrap().to_owned();
    let events = aws_sdk_eventbridge::Client::new(&sdk);
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let bus = batchline_testkit::emulator::unique_name("lanes");
    events.create_event_bus().name(&bus).send().await.unwrap();
    let mut wired = BTreeMap::new();
    for (index, lane) in batchline_testkit::lanes::template_lanes(&[job_queue]).unwrap().into_iter().enumerate() {
        let queue = lane.wire(&sqs, &events, &bus, &format!("{bus}-{index}")).await.unwrap();
        wired.insert(lane.queue.clone(), queue);
    }

    // WHEN a job outside any run and a stage job of a run change state, as Batch announces it
    // (and an array of the run: a child and the parent)
    let sent = vec![plain.clone(), staged.clone(), child.clone(), parent.clone()];
    Delivery::from_events(sent).to_event_bus(&events, &bus).await.unwrap();

    // THEN the metrics lane holds every event, the runs lane the stage job's and the array
    // parent's — never a child's — each in its envelope
    let mut received = BTreeMap::new();
    for (queue, lane) in &wired {
        let messages = drain(&sqs, &lane.queue_url).await;
        let bodies: BTreeSet<(String, String)> = messages
            .iter()
            .map(|m| {
                let body: Value = serde_json::from_str(m.body().unwrap()).unwrap();
                (
                    body["lane"].as_str().unwrap().to_owned(),
                    body["event"]["detail"]["jobId"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        received.insert(queue.clone(), (bodies, messages));
    }
    let pair = |lane: &str, job: &Value| (lane.to_owned(), job["detail"]["jobId"].as_str().unwrap().to_owned());
    let everything = [&plain, &staged, &child, &parent].map(|e| pair("metrics", e));
    assert_eq!(received["JobEventsQueue"].0, BTreeSet::from(everything));
    assert_eq!(received["RunEventsQueue"].0, BTreeSet::from([pair("runs", &staged), pair("runs", &parent)]));

    // WHEN job-events handles the runs lane's batch, THEN it reads the run and counts nothing
    let batch_of = |messages: &[aws_sdk_sqs::types::Message], queue_arn: &str| {
        let records: Vec<Value> =
            messages.iter().map(|m| sqs_record(m.message_id().unwrap(), m.body().unwrap(), queue_arn)).collect();
        json!({ "Records": records })
    };
    let runs = batch_of(&received["RunEventsQueue"].1, &wired["RunEventsQueue"].queue_arn);
    assert_eq!(failures(&handle(invocation(runs), &clients, &config).await.unwrap()), Vec::<String>::new());
    let read = BTreeMap::from([("GetItem".to_owned(), 2)]);
    assert_eq!(calls.all(), read, "the run is read for each of its two events; no claim, no metrics");

    // WHEN it handles the metrics lane's batch, THEN it counts each event once and reads no run
    let metrics = batch_of(&received["JobEventsQueue"].1, &wired["JobEventsQueue"].queue_arn);
    assert_eq!(failures(&handle(invocation(metrics), &clients, &config).await.unwrap()), Vec::<String>::new());
    assert_eq!((calls.count("GetItem"), calls.count("PutMetricData")), (2, 1), "no more reads: {:?}", calls.all());
    // (the parent is not a job of its own: its children are counted)
    assert_eq!(stats(&clients.cloudwatch, &config.metric_namespace, "JobsSucceeded", &[]).await, (3.0, 3.0));
}
