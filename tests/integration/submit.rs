//! submit against the emulator: S3, schedule and API triggers become exactly one job each, with the right size, names and tags.

use std::collections::HashMap;

use aws_sdk_batch::operation::submit_job::SubmitJobOutput;
use aws_sdk_dynamodb::types::AttributeValue;
use aws_smithy_mocks::{mock, mock_client, RuleMode};
use base64::Engine;
use batchline::adapters::batch::SdkBatch;
use batchline::adapters::clock::SystemClock;
use batchline::model::job_request::digest;
use batchline::services::submitter::Submitter;
use batchline::store::{keys, DynamoStore, Holder};
use batchline_submit::{handle, Clients};
use batchline_testkit::calls::{CallLog, LoseResponse};
use batchline_testkit::emulator::Principal;
use batchline_testkit::invocation;
use serde_json::{json, Value};

use crate::common::Deployed;

const OBJECT_CREATED: &str = include_str!("../fixtures/s3/object-created.json");
const SCHEDULED: &str = include_str!("../fixtures/schedule/scheduled-event.json");
const POST_JOBS: &str = include_str!("../fixtures/api/post-jobs.json");

fn triggers() -> Value {
    json!({
        "JobDefinitions": {"default": {}, "report": {"Vcpu": "0.5", "Memory": "1024"}},
        "Triggers": {
            "S3": {"incoming": {"Bucket": "batchline-input", "Prefix": "incoming/", "Suffix": ".csv",
                                "JobDefinition": "default", "MemoryPerInputByte": "4", "Parameters": {"mode": "full"}}},
            "Schedules": {"batchline-nightly": {"JobDefinition": "report", "Parameters": {"window": "1d"}}}
        }
    })
}

fn object_event(key: &str, sequencer: &str) -> Value {
    let mut event: Value = serde_json::from_str(OBJECT_CREATED).unwrap();
    event["detail"]["object"]["key"] = json!(key);
    event["detail"]["object"]["sequencer"] = json!(sequencer);
    event
}

fn http(method: &str, path: &str, body: &str, headers: &[(&str, &str)]) -> Value {
    let mut event: Value = serde_json::from_str(POST_JOBS).unwrap();
    event["requestContext"]["http"]["method"] = json!(method);
    event["requestContext"]["http"]["path"] = json!(path);
    event["rawPath"] = json!(path);
    event["routeKey"] = json!(format!("{method} {path}"));
    event["body"] = json!(body);
    // API Gateway gives every request an id of its own.
    event["requestContext"]["requestId"] = json!(batchline_testkit::player::event_id());
    for (name, value) in headers {
        event["headers"][*name] = json!(value);
    }
    event
}

/// The job submit plans for an object event (the first matching rule's).
fn job_for(stack: &batchline::model::stack::StackConfig, event: &Value) -> batchline::model::job_request::JobRequest {
    let event: aws_lambda_events::eventbridge::EventBridgeEvent<batchline_submit::triggers::ObjectCreatedDetail> =
        serde_json::from_value(event.clone()).unwrap();
    let object = batchline_submit::triggers::object_created(&event.detail).unwrap();
    match batchline_submit::triggers::plan_object(stack, &object, "x").remove(0).planned {
        Ok(batchline_submit::plan::Planned::Job(request)) => request,
        other => panic!("expected a job, got {other:?}"),
    }
}

fn answer_body(answer: &Value) -> Value {
    serde_json::from_str(answer["body"].as_str().unwrap()).unwrap()
}

fn env_of(job: &aws_sdk_batch::types::JobDetail) -> HashMap<String, String> {
    job.container()
        .unwrap()
        .environment()
        .iter()
        .map(|e| (e.name().unwrap().to_owned(), e.value().unwrap().to_owned()))
        .collect()
}

fn requirement(job: &aws_sdk_batch::types::JobDetail, kind: &str) -> Option<String> {
    job.container()?
        .resource_requirements()
        .iter()
        .find(|r| r.r#type().map(|t| t.as_str()) == Some(kind))?
        .value()
        .map(str::to_owned)
}

#[tokio::test]
async fn an_s3_object_becomes_exactly_one_job_even_when_delivered_three_times_and_concurrently() {
    // GIVEN an environment whose S3 rule sends incoming/*.csv to the default job definition
    let env = Deployed::new("submit-s3", triggers()).await;
    let clients = Clients::new(&env.sdk_as(Principal::Submit), &env.settings);
    let event: Value = serde_json::from_str(OBJECT_CREATED).unwrap();

    // WHEN the event arrives three times in a row, then three times at once
    for _ in 0..3 {
        handle(invocation(event.clone()), &clients).await.unwrap();
    }
    let concurrent = futures::future::join_all((0..3).map(|_| handle(invocation(event.clone()), &clients))).await;
    assert!(concurrent.iter().all(|r| r.is_ok()), "{concurrent:?}");

    // THEN there is exactly one job, with the object as parameters and environment
    let jobs = env.jobs_in("default").await;
    assert_eq!(jobs.len(), 1, "{:?}", jobs.iter().map(|j| j.job_name()).collect::<Vec<_>>());
    let job = &jobs[0];
    let key = "incoming/Q3 report été.csv";
    let parameters = job.parameters().unwrap();
    assert_eq!(parameters["inputBucket"], "batchline-input");
    assert_eq!(parameters["inputKey"], key, "the URL-encoded key is decoded");
    assert_eq!(parameters["inputSize"], "5242880");
    assert_eq!(parameters["mode"], "full");
    let environment = env_of(job);
    assert_eq!(environment["INPUT_BUCKET"], "batchline-input");
    assert_eq!(environment["INPUT_KEY"], key);
    assert_eq!(environment["INPUT_SIZE"], "5242880");
    // AND the name is sanitised and deterministic, and the tags tie it to its trigger
    let name = job.job_name().unwrap();
    assert!(name.starts_with(&format!("{}-s3-incoming-Q3-report-", env.stack.name_prefix)), "{name}");
    assert!(name.len() <= 128 && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'), "{name}");
    let tags = job.tags().unwrap();
    assert_eq!(tags["batchline:trigger"], "s3");
    assert_eq!(tags["batchline:stage"], "default");
    assert_eq!(tags["batchline:pipeline"], "");
    assert!(tags["batchline:run"].starts_with("job-"));
    // AND 5 MiB × 4 = 20 MiB fits the definition's 512 MiB, so the size is the definition's
    assert_eq!(requirement(job, "MEMORY").as_deref(), Some("512"));
}

#[tokio::test]
async fn a_large_object_gets_memory_snapped_up_and_unmatched_objects_start_nothing() {
    let env = Deployed::new("submit-size", triggers()).await;
    let clients = Clients::new(&env.sdk_as(Principal::Submit), &env.settings);
    let mut event = object_event("incoming/big.csv", "0001");
    event["detail"]["object"]["size"] = json!(700u64 * 1024 * 1024);
    handle(invocation(event), &clients).await.unwrap();

    // 700 MiB × 4 = 2800 MiB: more than 0.25 vCPU allows, so 0.5 vCPU / 3072 MiB
    let jobs = env.jobs_in("default").await;
    assert_eq!(jobs.len(), 1);
    assert_eq!(requirement(&jobs[0], "VCPU").as_deref(), Some("0.5"));
    assert_eq!(requirement(&jobs[0], "MEMORY").as_deref(), Some("3072"));

    for (key, bucket) in [
        ("incoming/notes.txt", "batchline-input"),
        ("elsewhere/a.csv", "batchline-input"),
        ("incoming/a.csv", "other-bucket"),
    ] {
        let mut event = object_event(key, "0002");
        event["detail"]["bucket"]["name"] = json!(bucket);
        let answer = handle(invocation(event), &clients).await.unwrap();
        assert_eq!(answer["started"], json!([]), "{key} in {bucket} matches no rule and is acknowledged");
    }
    assert_eq!(env.jobs_in("default").await.len(), 1);
}

#[tokio::test]
async fn a_scheduled_event_runs_the_configured_job_once() {
    let env = Deployed::new("submit-sched", triggers()).await;
    let clients = Clients::new(&env.sdk_as(Principal::Submit), &env.settings);
    let event: Value = serde_json::from_str(SCHEDULED).unwrap();
    handle(invocation(event.clone()), &clients).await.unwrap();
    handle(invocation(event), &clients).await.unwrap();

    let jobs = env.jobs_in("default").await;
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].job_definition(), Some(env.definition_arn("report").as_str()));
    assert_eq!(jobs[0].parameters().unwrap()["scheduledTime"], "2025-11-27T02:00:00Z");
    assert_eq!(jobs[0].parameters().unwrap()["window"], "1d");
    assert_eq!(jobs[0].tags().unwrap()["batchline:trigger"], "schedule");

    let mut other: Value = serde_json::from_str(SCHEDULED).unwrap();
    other["resources"] = json!(["arn:aws:events:us-east-1:123456789012:rule/not-configured"]);
    assert_eq!(handle(invocation(other), &clients).await.unwrap()["started"], json!([]));
}

#[tokio::test]
async fn the_api_submits_a_job_returns_it_and_honours_the_idempotency_key() {
    let env = Deployed::new("submit-api", triggers()).await;
    let clients = Clients::new(&env.sdk_as(Principal::Submit), &env.settings);
    let body = json!({"jobDefinition": "default", "name": "nightly export", "parameters": {"day": "2025-11-26"},
                      "environment": {"MODE": "fast"}, "command": ["python3", "-c", "print(1)"], "vcpu": "1", "memory": 4096,
                      "tags": {"team": "data"}})
    .to_string();

    // WHEN a job is posted with an Idempotency-Key
    let answer =
        handle(invocation(http("POST", "/jobs", &body, &[("idempotency-key", "order-42")])), &clients).await.unwrap();
    assert_eq!(answer["statusCode"], 202, "{answer}");
    let accepted = answer_body(&answer);
    let job_id = accepted["jobId"].as_str().unwrap().to_owned();
    assert_eq!(accepted["duplicate"], false);

    // THEN it exists with the asked size, environment, command and tags
    let jobs = env.jobs_in("default").await;
    assert_eq!(jobs.len(), 1);
    let job = &jobs[0];
    assert_eq!(job.job_id(), Some(job_id.as_str()));
    assert_eq!((requirement(job, "VCPU").as_deref(), requirement(job, "MEMORY").as_deref()), (Some("1"), Some("4096")));
    assert_eq!(env_of(job)["MODE"], "fast");
    assert_eq!(job.tags().unwrap()["team"], "data");
    assert_eq!(job.tags().unwrap()["batchline:trigger"], "api");
    assert!(job.job_name().unwrap().contains("-api-nightly-export-"));

    // AND the same key again gives the same job; a different request under it is a conflict
    let again =
        handle(invocation(http("POST", "/jobs", &body, &[("idempotency-key", "order-42")])), &clients).await.unwrap();
    assert_eq!(again["statusCode"], 202);
    assert_eq!(answer_body(&again)["jobId"], job_id.as_str());
    assert_eq!(answer_body(&again)["duplicate"], true);
    let other = json!({"jobDefinition": "default"}).to_string();
    let conflict =
        handle(invocation(http("POST", "/jobs", &other, &[("idempotency-key", "order-42")])), &clients).await.unwrap();
    assert_eq!(conflict["statusCode"], 409);
    assert_eq!(answer_body(&conflict)["error"]["code"], "IdempotencyConflict");
    assert_eq!(env.jobs_in("default").await.len(), 1);

    // AND GET returns it with its state, size and log link
    let got = handle(invocation(http("GET", &format!("/jobs/{job_id}"), "", &[])), &clients).await.unwrap();
    assert_eq!(got["statusCode"], 200, "{got}");
    let view = answer_body(&got);
    assert_eq!(view["jobId"], job_id.as_str());
    assert_eq!(view["status"], "SUCCEEDED", "moto finishes jobs at once");
    assert_eq!(view["size"], json!({"vcpu": "1", "memoryMib": 4096}));
    assert!(view["createdAt"].as_str().unwrap().ends_with('Z'));
    assert_eq!(view["logGroup"], "/aws/batch/job");
}

#[tokio::test]
async fn an_idempotency_key_is_its_callers_alone_and_means_exactly_what_was_sent() {
    let env = Deployed::new("submit-keyscope", triggers()).await;
    let clients = Clients::new(&env.sdk_as(Principal::Submit), &env.settings);
    let body = json!({"jobDefinition": "default"}).to_string();
    let post = |caller: &str, key: &str| {
        let mut event = http("POST", "/jobs", &body, &[("idempotency-key", key)]);
        event["requestContext"]["authorizer"]["iam"]["userArn"] = json!(caller);
        let clients = &clients;
        async move { handle(invocation(event), clients).await.unwrap() }
    };
    let job_of = |answer: &Value| answer_body(answer)["jobId"].as_str().unwrap().to_owned();
    // GIVEN a job posted by a role's session under a key
    let alice = "arn:aws:sts::123456789012:assumed-role/ops/alice";
    let first = post(alice, "nightly-2026-12-06").await;
    assert_eq!(first["statusCode"], 202, "{first}");
    // WHEN the same role retries with refreshed credentials (a new session name), THEN it is the same job
    let retried =
        post("arn:aws:sts::123456789012:assumed-role/ops/botocore-session-1765000000", "nightly-2026-12-06").await;
    assert_eq!((job_of(&retried), answer_body(&retried)["duplicate"].clone()), (job_of(&first), json!(true)));
    // WHEN another principal uses the same key, THEN it is its own request: a job of its own
    let other = post("arn:aws:iam::123456789012:user/mallory", "nightly-2026-12-06").await;
    assert_eq!((other["statusCode"].clone(), answer_body(&other)["duplicate"].clone()), (json!(202), json!(false)));
    assert_ne!(job_of(&other), job_of(&first));
    // WHEN a literal key reads like a later window of another ("#2"), THEN it is a key of its own
    let literal = post(alice, "nightly-2026-12-06#2").await;
    assert_eq!(answer_body(&literal)["duplicate"], false, "{literal}");
    assert_ne!(job_of(&literal), job_of(&first));
    assert_eq!(env.jobs_in("default").await.len(), 3);
    // AND a key that is not visible ASCII is refused, not dropped (which would make a retry new work)
    let refused = post(alice, "naïve-key").await;
    assert_eq!(refused["statusCode"], 400, "{refused}");
    assert!(answer_body(&refused)["error"]["message"].as_str().unwrap().contains("visible ASCII"), "{refused}");
    assert_eq!(env.jobs_in("default").await.len(), 3);
}

#[tokio::test]
async fn a_base64_body_without_a_key_is_idempotent_by_its_content() {
    let env = Deployed::new("submit-b64", triggers()).await;
    let clients = Clients::new(&env.sdk_as(Principal::Submit), &env.settings);
    let body = json!({"jobDefinition": "report", "arraySize": 3}).to_string();
    let mut request = http("POST", "/jobs", &base64::engine::general_purpose::STANDARD.encode(&body), &[]);
    request["isBase64Encoded"] = json!(true);
    let first = handle(invocation(request.clone()), &clients).await.unwrap();
    let second = handle(invocation(request), &clients).await.unwrap();
    assert_eq!(first["statusCode"], 202, "{first}");
    assert_eq!(answer_body(&first)["jobId"], answer_body(&second)["jobId"]);
    let jobs = env.jobs_in("default").await;
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].array_properties().and_then(|a| a.size()), Some(3));
}

#[tokio::test]
async fn every_caller_mistake_is_a_4xx_naming_the_problem() {
    let env = Deployed::new("submit-bad", triggers()).await;
    let clients = Clients::new(&env.sdk_as(Principal::Submit), &env.settings);
    let big = json!({"parameters": {"blob": "x".repeat(40 * 1024)}}).to_string();
    let cases: Vec<(&str, &str, String, u16, &str)> = vec![
        ("POST", "/jobs", "{not json".into(), 400, "not valid JSON"),
        ("POST", "/jobs", json!({"jobDefinition": "default", "memroy": 1}).to_string(), 400, "memroy"),
        (
            "POST",
            "/jobs",
            json!({"vcpu": "1", "memory": "1024"}).to_string(),
            400,
            "1 vCPU: 2048-8192 MiB in steps of 1024",
        ),
        (
            "POST",
            "/jobs",
            json!({"vcpu": "3", "memory": "512"}).to_string(),
            400,
            "3 vCPU with 512 MiB is not a valid Fargate size",
        ),
        ("POST", "/jobs", json!({"vcpu": "lots"}).to_string(), 400, "vcpu: vCPU \"lots\" is not a number"),
        ("POST", "/jobs", json!({"jobDefinition": "nope"}).to_string(), 400, "\"nope\" is not configured"),
        ("POST", "/jobs", json!({"arraySize": 1}).to_string(), 400, "2 to 10000"),
        ("POST", "/jobs", json!({"tags": {"batchline:run": "x"}}).to_string(), 400, "Batchline's own"),
        ("POST", "/jobs", json!({"environment": {"AWS_BATCH_JOB_ID": "x"}}).to_string(), 400, "reserved"),
        ("POST", "/jobs", big, 413, "at most 30720"),
        ("GET", "/jobs/does-not-exist", String::new(), 404, "no job does-not-exist"),
        ("PUT", "/jobs", String::new(), 405, "allowed methods are GET, POST"),
        ("GET", "/nowhere", String::new(), 404, "no route GET /nowhere"),
    ];
    for (method, path, body, status, message) in cases {
        let answer = handle(invocation(http(method, path, &body, &[])), &clients).await.unwrap();
        assert_eq!(answer["statusCode"], status, "{method} {path} {body:.80}: {answer}");
        let error = &answer_body(&answer)["error"];
        assert!(error["message"].as_str().unwrap().contains(message), "{message:?} in {error}");
        assert!(error["code"].is_string());
    }
    assert!(env.jobs_in("default").await.is_empty(), "no mistake made a job");
}

#[tokio::test]
async fn every_problem_of_a_job_request_is_reported_at_once() {
    let env = Deployed::new("submit-all", triggers()).await;
    let clients = Clients::new(&env.sdk_as(Principal::Submit), &env.settings);
    let body = json!({
        "vcpu": "lots", "memory": "much", "arraySize": 1,
        "tags": {"batchline:run": "x"}, "environment": {"AWS_BATCH_JOB_ID": "x"}
    });
    let answer = handle(invocation(http("POST", "/jobs", &body.to_string(), &[])), &clients).await.unwrap();
    assert_eq!(answer["statusCode"], 400, "{answer}");
    let error = &answer_body(&answer)["error"];
    let problems: Vec<&str> = error["problems"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
    for expected in ["vcpu: ", "memory: ", "Batchline's own", "2 to 10000", "AWS_BATCH"] {
        assert!(problems.iter().any(|p| p.contains(expected)), "{expected:?} in {problems:?}");
    }
    assert_eq!(problems.len(), 5, "{problems:?}");
    assert!(error["message"].as_str().unwrap().starts_with("5 problems: "), "{error}");
    assert!(env.jobs_in("default").await.is_empty());
}

#[tokio::test]
async fn broken_event_shapes_are_clear_errors_not_panics() {
    let env = Deployed::new("submit-shapes", triggers()).await;
    let clients = Clients::new(&env.sdk_as(Principal::Submit), &env.settings);
    let object = || -> Value { serde_json::from_str(OBJECT_CREATED).unwrap() };
    let mut cases: Vec<(Value, &str)> = vec![
        (json!(null), "not a JSON object"),
        (json!([1, 2]), "not a JSON object"),
        (json!({"detail-type": "Object Created", "source": "aws.s3"}), "missing field `detail`"),
        (
            json!({"detail-type": "Scheduled Event", "source": "aws.events", "detail": {}, "resources": []}),
            "resources[0]",
        ),
        (
            json!({"detail-type": "Scheduled Event", "source": "aws.events", "detail": {}, "resources": ["arn:aws:sns:x"]}),
            "not an EventBridge rule ARN",
        ),
        (json!({"detail-type": "Batch Job State Change", "source": "aws.batch"}), "Batch Job State Change"),
        (json!({"requestContext": {}}), ""),
    ];
    let mut no_key = object();
    no_key["detail"]["object"].as_object_mut().unwrap().remove("key");
    cases.push((no_key, "detail.object: missing field `key`"));
    let mut bad_size = object();
    bad_size["detail"]["object"]["size"] = json!("big");
    cases.push((bad_size, "detail.object.size: invalid type"));
    let mut bad_escape = object();
    bad_escape["detail"]["object"]["key"] = json!("incoming/%zz.csv");
    cases.push((bad_escape, "not a hex escape"));
    for (event, message) in cases {
        match handle(invocation(event.clone()), &clients).await {
            Err(err) => assert!(err.to_string().contains(message), "{message:?} in {err}"),
            // An HTTP request without a method is answered 400, not an error.
            Ok(answer) => assert_eq!(answer["statusCode"], 400, "{event}: {answer}"),
        }
    }
    assert!(env.jobs_in("default").await.is_empty());
}

#[tokio::test]
async fn a_crash_between_claim_and_submit_then_redelivery_makes_exactly_one_job() {
    let env = Deployed::new("submit-crash", triggers()).await;
    let clients = Clients::new(&env.sdk_as(Principal::Submit), &env.settings);
    let event = object_event("incoming/crash.csv", "00AA");
    // GIVEN the claim a crashed invocation left: PENDING, no job, claimed a while ago
    let stack = &env.stack;
    let request = &job_for(stack, &event);
    let dynamodb = aws_sdk_dynamodb::Client::new(&env.sdk);
    let claim = |claimed_at: i64| {
        dynamodb
            .put_item()
            .table_name(&env.settings.table_name)
            .item("pk", AttributeValue::S(keys::claim_pk(&request.idempotency_key)))
            .item("sk", AttributeValue::S("CLAIM".into()))
            .item("state", AttributeValue::S("PENDING".into()))
            .item("job_name", AttributeValue::S(request.job_name.clone()))
            .item("fingerprint", AttributeValue::S(digest(&serde_json::to_string(request).unwrap(), 32)))
            .item("claimed_at", AttributeValue::N(claimed_at.to_string()))
            .send()
    };
    claim(batchline::now_ms()).await.unwrap();

    // WHEN the event is redelivered while the claim is fresh, it is told to retry later
    let err = handle(invocation(event.clone()), &clients).await.unwrap_err();
    assert!(err.to_string().contains("under way"), "{err}");
    assert!(env.jobs_in("default").await.is_empty());

    // AND once the claim is stale, a redelivery takes it over and submits once
    claim(batchline::now_ms() - 5 * 60_000).await.unwrap();
    handle(invocation(event.clone()), &clients).await.unwrap();
    handle(invocation(event), &clients).await.unwrap();
    assert_eq!(env.jobs_in("default").await.len(), 1);
}

#[tokio::test]
async fn a_crash_after_submit_before_recording_is_recovered_by_name() {
    let env = Deployed::new("submit-unrec", triggers()).await;
    let clients = Clients::new(&env.sdk_as(Principal::Submit), &env.settings);
    let event = object_event("incoming/unrecorded.csv", "00BB");
    handle(invocation(event.clone()), &clients).await.unwrap();
    // GIVEN the claim went back to PENDING (the job was made, the record never written)
    let stack = &env.stack;
    let request = &job_for(stack, &event);
    aws_sdk_dynamodb::Client::new(&env.sdk)
        .update_item()
        .table_name(&env.settings.table_name)
        .key("pk", AttributeValue::S(keys::claim_pk(&request.idempotency_key)))
        .key("sk", AttributeValue::S("CLAIM".into()))
        .update_expression("SET #s = :p REMOVE job_id")
        .expression_attribute_names("#s", "state")
        .expression_attribute_values(":p", AttributeValue::S("PENDING".into()))
        .send()
        .await
        .unwrap();
    // WHEN it is redelivered, the job is found by its name and not submitted again
    let answer = handle(invocation(event), &clients).await.unwrap();
    assert_eq!(answer["started"][0]["new"], false);
    assert_eq!(env.jobs_in("default").await.len(), 1);
}

#[tokio::test]
async fn a_lost_submit_job_answer_still_makes_one_job() {
    // GIVEN a Batch client whose first SubmitJob reaches Batch but loses the answer
    let env = Deployed::new("submit-lost", triggers()).await;
    let log = CallLog::default();
    let batch = aws_sdk_batch::Client::from_conf(
        aws_sdk_batch::config::Builder::from(&env.sdk)
            .interceptor(LoseResponse::new("SubmitJob", 1))
            .interceptor(log.clone())
            .build(),
    );
    let mut clients = Clients::new(&env.sdk_as(Principal::Submit), &env.settings);
    clients.ports.batch = SdkBatch::new(batch);

    // WHEN an object arrives
    let answer = handle(invocation(object_event("incoming/lost.csv", "00CC")), &clients).await.unwrap();

    // THEN the job made by the lost call is found by name, not submitted again
    assert_eq!(env.jobs_in("default").await.len(), 1);
    assert_eq!(log.count("SubmitJob"), 1, "{:?}", log.all());
    assert_eq!(log.count("ListJobs"), 1);
    assert_eq!(answer["started"][0]["new"], true);
}

#[tokio::test]
async fn throttled_submit_job_is_retried_with_backoff() {
    // GIVEN Batch answering SubmitJob with 429 twice (mocked: the emulator never throttles)
    let env = Deployed::new("submit-throttle", triggers()).await;
    let submit_rule = mock!(aws_sdk_batch::Client::submit_job)
        .sequence()
        .http_status(429, Some(r#"{"__type":"TooManyRequestsException","message":"Too Many Requests"}"#.into()))
        .times(2)
        .output(|| SubmitJobOutput::builder().job_id("job-after-throttling").job_name("n").job_arn("arn").build())
        .build();
    let list_rule = mock!(aws_sdk_batch::Client::list_jobs)
        .then_output(|| aws_sdk_batch::operation::list_jobs::ListJobsOutput::builder().build());
    let batch = mock_client!(aws_sdk_batch, RuleMode::MatchAny, [&submit_rule, &list_rule]);
    let store = DynamoStore::new(aws_sdk_dynamodb::Client::new(&env.sdk), &env.settings.table_name);
    let batch = SdkBatch::new(batch);
    let holder = Holder { token: "throttled".into(), deadline_ms: batchline::now_ms() + 300_000 };
    let submitter = Submitter { batch: &batch, claims: &store, clock: &SystemClock, holder: &holder };
    let request = &job_for(&env.stack, &object_event("incoming/t.csv", "1"));

    // WHEN submitted
    let submitted = submitter.submit(request).await.unwrap();

    // THEN the third attempt made it, and throttling never needed a look-up by name
    assert_eq!(submitted.job_id, "job-after-throttling");
    assert_eq!(submit_rule.num_calls(), 3);
    assert_eq!(list_rule.num_calls(), 0);
}

#[tokio::test]
async fn an_idempotency_key_retried_after_a_redeploy_returns_the_first_job() {
    // GIVEN a job posted with an Idempotency-Key
    let mut env = Deployed::new("submit-redeploy", triggers()).await;
    let body = json!({"jobDefinition": "default", "parameters": {"day": "2025-11-27"}}).to_string();
    let request = || invocation(http("POST", "/jobs", &body, &[("idempotency-key", "order-77")]));
    let clients = Clients::new(&env.sdk_as(Principal::Submit), &env.settings);
    let first = handle(request(), &clients).await.unwrap();
    assert_eq!(first["statusCode"], 202, "{first}");
    let before = env.stack.job_definitions["default"].arn.clone();

    // WHEN a deploy registers a new revision of its job definition, and the caller retries
    let mut properties = triggers();
    properties["JobDefinitions"]["default"]["Environment"] = json!({"DEPLOYED": "2"});
    env.update(properties).await;
    assert_ne!(env.stack.job_definitions["default"].arn, before, "a new revision");
    let clients = Clients::new(&env.sdk_as(Principal::Submit), &env.settings);
    let again = handle(request(), &clients).await.unwrap();

    // THEN the retry is the same request: the first job, not a conflict
    assert_eq!(again["statusCode"], 202, "{again}");
    assert_eq!(answer_body(&again)["jobId"], answer_body(&first)["jobId"]);
    assert_eq!(answer_body(&again)["duplicate"], true);
    assert_eq!(env.jobs_in("default").await.len(), 1);
}

#[tokio::test]
async fn a_post_without_a_key_is_new_work_and_a_keyed_retry_gets_the_current_status() {
    let env = Deployed::new("submit-newwork", triggers()).await;
    let clients = Clients::new(&env.sdk_as(Principal::Submit), &env.settings);
    let body = json!({"jobDefinition": "default", "parameters": {"day": "2025-11-28"}}).to_string();

    // WHEN the same body is posted twice without an Idempotency-Key, THEN two jobs
    let first = handle(invocation(http("POST", "/jobs", &body, &[])), &clients).await.unwrap();
    let second = handle(invocation(http("POST", "/jobs", &body, &[])), &clients).await.unwrap();
    assert_ne!(answer_body(&first)["jobId"], answer_body(&second)["jobId"]);
    assert_eq!(answer_body(&second)["duplicate"], false);
    assert_eq!(env.jobs_in("default").await.len(), 2);

    // AND a keyed retry gets the first answer with the job's current status (the emulator
    // finishes jobs at once), not the status it had when first answered
    let keyed = || invocation(http("POST", "/jobs", &body, &[("idempotency-key", "k-current")]));
    let answer = handle(keyed(), &clients).await.unwrap();
    assert_eq!(answer_body(&answer)["status"], "SUBMITTED");
    let again = handle(keyed(), &clients).await.unwrap();
    assert_eq!(answer_body(&again)["jobId"], answer_body(&answer)["jobId"]);
    assert_eq!(
        (answer_body(&again)["duplicate"].as_bool(), answer_body(&again)["status"].as_str()),
        (Some(true), Some("SUCCEEDED"))
    );
}

#[tokio::test]
async fn an_idempotency_key_reused_after_its_24_hour_window_starts_new_work() {
    let env = Deployed::new("submit-window", triggers()).await;
    let clients = Clients::new(&env.sdk_as(Principal::Submit), &env.settings);
    let body = json!({"jobDefinition": "default"}).to_string();
    let keyed = || invocation(http("POST", "/jobs", &body, &[("idempotency-key", "k-window")]));
    let first = handle(keyed(), &clients).await.unwrap();
    // GIVEN the key's first use was 25 hours ago
    backdate_first_use(&env, "api:jobs:caller:arn:aws:iam::123456789012:user/ops:key:k-window", 25).await;
    // WHEN it is used again, THEN it is new work; and a retry of that is the same new job
    let second = handle(keyed(), &clients).await.unwrap();
    assert_ne!(answer_body(&second)["jobId"], answer_body(&first)["jobId"]);
    assert_eq!(answer_body(&second)["duplicate"], false);
    let third = handle(keyed(), &clients).await.unwrap();
    assert_eq!(answer_body(&third)["jobId"], answer_body(&second)["jobId"]);
    assert_eq!(env.jobs_in("default").await.len(), 2);
    // AND once DynamoDB's TTL has removed the first generation's claim (7 days), a retry
    // within the second's window is still that job, not new work
    aws_sdk_dynamodb::Client::new(&env.sdk)
        .delete_item()
        .table_name(&env.settings.table_name)
        .key("pk", AttributeValue::S(keys::claim_pk("api:jobs:caller:arn:aws:iam::123456789012:user/ops:key:k-window")))
        .key("sk", AttributeValue::S(keys::CLAIM_SK.into()))
        .send()
        .await
        .unwrap();
    let fourth = handle(keyed(), &clients).await.unwrap();
    assert_eq!(answer_body(&fourth)["jobId"], answer_body(&second)["jobId"]);
    assert_eq!(env.jobs_in("default").await.len(), 2);
}

/// Moves the first use of a caller's key `hours` into the past: its first generation's claim
/// and the key's generation record.
async fn backdate_first_use(env: &Deployed, base: &str, hours: i64) {
    let dynamodb = aws_sdk_dynamodb::Client::new(&env.sdk);
    let then = AttributeValue::N((batchline::now_ms() - hours * 3_600_000).to_string());
    for (sk, field) in [(keys::CLAIM_SK, "claimed_at"), (keys::GENERATION_SK, "first_use")] {
        dynamodb
            .update_item()
            .table_name(&env.settings.table_name)
            .key("pk", AttributeValue::S(keys::claim_pk(base)))
            .key("sk", AttributeValue::S(sk.into()))
            .update_expression("SET #field = :then")
            .expression_attribute_names("#field", field)
            .expression_attribute_values(":then", then.clone())
            .send()
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_job_definition_closed_to_overrides_refuses_a_callers_command_and_environment() {
    let configuration = json!({
        "JobDefinitions": {"default": {}, "locked": {"AllowOverrides": "false", "Command": "echo,Ref::day"}},
        "Pipelines": {"nightly": {"Stages": {"a": {"JobDefinition": "default"}, "b": {"JobDefinition": "locked", "After": "a"}}}}
    });
    let env = Deployed::new("submit-locked", configuration).await;
    let clients = Clients::new(&env.sdk_as(Principal::Submit), &env.settings);
    let post = |path: &'static str, body: Value| {
        let clients = &clients;
        async move { handle(invocation(http("POST", path, &body.to_string(), &[])), clients).await.unwrap() }
    };
    for body in [
        json!({"jobDefinition": "locked", "command": ["sh", "-c", "anything"]}),
        json!({"jobDefinition": "locked", "environment": {"PATH": "/tmp"}}),
    ] {
        let answer = post("/jobs", body.clone()).await;
        assert_eq!(answer["statusCode"], 403, "{body}: {answer}");
        assert_eq!(answer_body(&answer)["error"]["code"], "OverridesNotAllowed");
    }
    let answer = post("/pipelines/nightly/runs", json!({"environment": {"A": "1"}})).await;
    assert_eq!(answer["statusCode"], 403, "{answer}");
    assert!(answer_body(&answer)["error"]["message"].as_str().unwrap().starts_with("stage b "), "{answer}");
    assert!(env.jobs_in("default").await.is_empty(), "nothing was submitted");
    // Parameters still reach it, and other job definitions keep taking overrides
    assert_eq!(
        post("/jobs", json!({"jobDefinition": "locked", "parameters": {"day": "monday"}})).await["statusCode"],
        202
    );
    assert_eq!(post("/jobs", json!({"environment": {"A": "1"}})).await["statusCode"], 202);
    assert_eq!(post("/pipelines/nightly/runs", json!({"parameters": {"day": "monday"}})).await["statusCode"], 202);
}

#[tokio::test]
async fn s3_events_queued_in_sqs_are_handled_each_alone_and_only_the_failed_come_again() {
    let env = Deployed::new("submit-queued", triggers()).await;
    let clients = Clients::new(&env.sdk_as(Principal::Submit), &env.settings);
    let queue = "arn:aws:sqs:us-east-1:123456789012:batchline-triggers";
    let first = object_event("incoming/a.csv", "0001").to_string();
    let second = object_event("incoming/b.csv", "0002").to_string();
    let batch = json!({"Records": [
        batchline_testkit::player::sqs_record("m1", &first, queue),
        batchline_testkit::player::sqs_record("m2", "{not json", queue),
        batchline_testkit::player::sqs_record("m3", &second, queue),
    ]});
    // WHEN the batch is handled
    let answer = handle(invocation(batch.clone()), &clients).await.unwrap();
    // THEN the good records made their jobs and only the broken one is reported
    assert_eq!(answer["batchItemFailures"], json!([{"itemIdentifier": "m2"}]), "{answer}");
    assert_eq!(env.jobs_in("default").await.len(), 2);
    // AND the whole batch delivered again makes no second job
    let again = handle(invocation(batch), &clients).await.unwrap();
    assert_eq!(again["batchItemFailures"], json!([{"itemIdentifier": "m2"}]));
    assert_eq!(env.jobs_in("default").await.len(), 2);
}

#[tokio::test]
async fn one_half_of_a_size_keeps_the_other_and_snaps_up_saying_so() {
    let env = Deployed::new("submit-snap", triggers()).await;
    let clients = Clients::new(&env.sdk_as(Principal::Submit), &env.settings);
    // (asked, the size it became, whether that differs from what was asked)
    let cases = [
        (json!({"memory": "3000"}), json!({"vcpu": "0.5", "memoryMib": 3072}), true),
        (json!({"vcpu": "2"}), json!({"vcpu": "2", "memoryMib": 4096}), true),
        (json!({"memory": "1024"}), json!({"vcpu": "0.25", "memoryMib": 1024}), false),
        (json!({}), json!({"vcpu": "0.25", "memoryMib": 512}), false),
    ];
    for (asked, chosen, adjusted) in cases {
        let answer = handle(invocation(http("POST", "/jobs", &asked.to_string(), &[])), &clients).await.unwrap();
        assert_eq!(answer["statusCode"], 202, "{asked}: {answer}");
        let body = answer_body(&answer);
        assert_eq!(body["size"], chosen, "{asked}: {body}");
        assert_eq!(body["sizeAdjusted"].as_bool().unwrap_or(false), adjusted, "{asked}: {body}");
    }
}

#[tokio::test]
async fn before_bootstrap_has_run_the_api_says_the_stack_is_not_deployed_yet() {
    // GIVEN a table without a published configuration (bootstrap has not run yet)
    let sdk = batchline_testkit::emulator::sdk_config().await;
    let settings = batchline_testkit::emulator::test_settings("not-deployed");
    batchline_testkit::table::create_table(&sdk, &settings.table_name).await.unwrap();
    let stack = batchline_testkit::emulator::unique_name("not-deployed");
    crate::common::register(&stack, &settings, &json!({}), None);
    let clients = Clients::new(&batchline_testkit::emulator::signing_as(&sdk, Principal::Submit, &stack), &settings);

    // WHEN a caller submits a job, THEN the answer says so in the caller's words: retry later
    let body = json!({"jobDefinition": "default"}).to_string();
    let answer = handle(invocation(http("POST", "/jobs", &body, &[])), &clients).await.unwrap();
    assert_eq!(answer["statusCode"], 503, "{answer}");
    let error = &answer_body(&answer)["error"];
    assert_eq!(error["code"], "NotReady", "{error}");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("not deployed yet"), "{message}");
    for internal in ["BATCHLINE_", "CONFIG", "pk", "table_name"] {
        assert!(!message.contains(internal), "{internal:?} in {message:?}");
    }
}

#[tokio::test]
async fn a_size_its_queue_can_never_run_is_refused_before_anything_is_submitted() {
    // GIVEN a queue whose compute environment gives one job at most 2 vCPU
    let properties = json!({
        "ComputeEnvironments": {"default": {"MaxVcpus": "2"}},
        "JobDefinitions": {"default": {}}
    });
    let env = Deployed::new("submit-capacity", properties).await;
    let clients = Clients::new(&env.sdk_as(Principal::Submit), &env.settings);
    let post = |body: Value| {
        let clients = &clients;
        async move { handle(invocation(http("POST", "/jobs", &body.to_string(), &[])), clients).await.unwrap() }
    };
    // WHEN a caller asks for 4 vCPU, THEN the answer says why at once and no job waits for ever
    let answer = post(json!({"vcpu": "4", "memory": "8192"})).await;
    assert_eq!(answer["statusCode"], 400, "{answer}");
    let message = answer_body(&answer)["error"]["message"].as_str().unwrap().to_owned();
    assert!(
        message.contains(
            "vcpu: 4 vCPU / 8192 MiB is more than job queue \"default\" can run: its compute environments allow at most 2 vCPU (MaxVcpus)"
        ),
        "{message}"
    );
    assert!(env.jobs_in("default").await.is_empty(), "nothing was submitted");
    // AND the most the queue can run is taken
    assert_eq!(post(json!({"vcpu": "2", "memory": "4096"})).await["statusCode"], 202);
    assert_eq!(env.jobs_in("default").await.len(), 1);
}

#[tokio::test]
async fn one_s3_rule_refusing_an_object_leaves_the_others_to_start_and_is_counted_not_retried() {
    // GIVEN two rules for the same objects, on a queue that gives a job at most 1 vCPU: one
    // sizes the job by the object, the other does not
    let properties = json!({
        "ComputeEnvironments": {"default": {"MaxVcpus": "1"}},
        "JobDefinitions": {"default": {}},
        "Triggers": {"S3": {
            "sized": {"Bucket": "batchline-input", "Prefix": "incoming/", "JobDefinition": "default", "MemoryPerInputByte": "4"},
            "plain": {"Bucket": "batchline-input", "Prefix": "incoming/", "JobDefinition": "default"}
        }}
    });
    let env = Deployed::new("submit-rules", properties).await;
    let clients = Clients::new(&env.sdk_as(Principal::Submit), &env.settings);
    // WHEN an object arrives that would need 12 GiB (3 GiB × 4): 2 vCPU at least, more than the queue runs
    let mut event = object_event("incoming/huge.csv", "0001");
    event["detail"]["object"]["size"] = json!(3u64 * 1024 * 1024 * 1024);
    let answer = handle(invocation(event), &clients).await.unwrap();
    // THEN the other rule's job starts and the event is handled (a refusal is not retried)
    assert_eq!(answer["started"].as_array().map(Vec::len), Some(1), "{answer}");
    let jobs = env.jobs_in("default").await;
    assert_eq!(jobs.len(), 1, "no job that could never start");
    assert_eq!(jobs[0].tags().unwrap()["batchline:stage"], "default");
    assert_eq!(requirement(&jobs[0], "MEMORY").as_deref(), Some("512"), "the plain rule's job");
    // AND the refusal is counted, per rule and for the stack
    let cloudwatch = aws_sdk_cloudwatch::Client::new(&env.sdk);
    let namespace = &env.settings.metric_namespace;
    let refused = crate::common::stats(&cloudwatch, namespace, "TriggersRefused", &[("Trigger", "sized")]).await;
    assert_eq!(refused.0, 1.0);
    assert_eq!(crate::common::stats(&cloudwatch, namespace, "TriggersRefused", &[]).await.0, 1.0);
}

#[tokio::test]
async fn listing_jobs_reads_a_bounded_number_of_pages_and_goes_on_from_its_cursor() {
    // GIVEN a queue Batch lists 10 jobs a page for, with 50 pages (mocked: the emulator
    // answers ListJobs in one page)
    let env = Deployed::new("submit-pages", triggers()).await;
    let summary = |i: usize| {
        aws_sdk_batch::types::JobSummary::builder()
            .job_id(format!("job-{i}"))
            .job_name(format!("n-{i}"))
            .created_at(i as i64)
            .build()
    };
    let page = move |n: usize| {
        let output = aws_sdk_batch::operation::list_jobs::ListJobsOutput::builder()
            .set_job_summary_list(Some((n * 10..n * 10 + 10).map(summary).collect()));
        if n < 49 {
            output.next_token(format!("page-{}", n + 1)).build()
        } else {
            output.build()
        }
    };
    let mut pages = mock!(aws_sdk_batch::Client::list_jobs).sequence();
    for n in 0..50 {
        pages = pages.output(move || page(n));
    }
    let rule = pages.build();
    let batch = SdkBatch::new(mock_client!(aws_sdk_batch, RuleMode::Sequential, [&rule]));
    let mut stack = env.stack.clone();
    stack.job_queues.retain(|key, _| key == "default");
    // WHEN the jobs are listed
    let from = batchline_submit::api::jobs::Position::default();
    let first = batchline_submit::api::jobs::list_jobs(&batch, &stack, None, from, 0).await.unwrap();
    // THEN three pages were read, not fifty, and the answer says where to go on
    assert_eq!(rule.num_calls(), 3);
    assert_eq!(first["jobs"].as_array().unwrap().len(), 30);
    assert_eq!(first["jobs"][0]["jobId"], "job-29", "newest first");
    let next = first["next"].as_str().expect("a cursor");
    // AND the cursor goes on from the fourth page
    let from = batchline_submit::api::jobs::read_cursor(next, &stack).unwrap();
    assert_eq!(from.token.as_deref(), Some("page-3"));
    let second = batchline_submit::api::jobs::list_jobs(&batch, &stack, None, from, 0).await.unwrap();
    assert_eq!(second["jobs"][0]["jobId"], "job-59");
    assert!(batchline_submit::api::jobs::read_cursor("not-a-cursor", &stack).is_err());
}
