//! The API's unit tests: bodies with every problem reported, and the read routes on the in-memory Batch.

use std::collections::{BTreeMap, BTreeSet};

use batchline::model::stack::StackConfig;
use batchline::model::stuck::QueueState;
use batchline::services::memory_batch::MemoryBatch;
use batchline::services::ports::BatchPort;
use serde_json::{json, Value};

use super::body::parse_body;
use super::http::{error_response, ApiError, HttpRequest};
use super::jobs::{self, job_view, list_jobs, log_console_url, plan_submit_job, read_cursor, Position, SubmitJobBody};
use super::{pipelines, runs};

/// A stack with two job definitions on the default queue and a two-stage pipeline.
fn stack() -> StackConfig {
    stack_with_report(json!({"Vcpu": "1", "Memory": "2048"}))
}

/// [`stack`], its `report` job definition declared as given.
fn stack_with_report(report: Value) -> StackConfig {
    let properties = json!({
        "Network": {"Subnets": ["subnet-1"], "SecurityGroups": ["sg-1"]},
        "JobDefinitions": {"default": {}, "report": report},
        "Pipelines": {"two": {"Stages": {"first": {"JobDefinition": "default"},
                                          "second": {"JobDefinition": "report", "After": ["first"]}}}}
    });
    let declared = batchline_bootstrap::declaration::declare(&properties).expect("a valid configuration");
    declared.assume_provisioned(|kind, name| format!("arn:aws:batch:us-east-1:123456789012:{kind}/{name}"))
}

fn post(body: &Value) -> HttpRequest {
    HttpRequest {
        request_id: "r-1".into(),
        method: "POST".into(),
        path: "/jobs".into(),
        headers: BTreeMap::new(),
        query: BTreeMap::new(),
        body: body.to_string().into_bytes(),
        caller: None,
    }
}

/// The paths of a refusal's details, and that the answer carries them.
fn paths(refused: &ApiError) -> BTreeSet<String> {
    assert_eq!(refused.status, 400, "{refused:?}");
    let answer = error_response(refused);
    let Some(aws_lambda_events::encodings::Body::Text(text)) = answer.body else { panic!("a JSON answer") };
    let answer: Value = serde_json::from_str(&text).unwrap();
    let details = answer["error"]["details"].as_array().expect("details").clone();
    assert_eq!(answer["error"]["problems"].as_array().map(Vec::len), Some(details.len()), "{answer}");
    details.iter().map(|d| d["path"].as_str().unwrap().to_owned()).collect()
}

fn set(paths: &[&str]) -> BTreeSet<String> {
    paths.iter().map(|p| p.to_string()).collect()
}

#[test]
fn bodies_name_the_field_at_fault() {
    let err = parse_body::<SubmitJobBody>(br#"{"jobDefinition": "x", "memroy": 1}"#).unwrap_err();
    assert!(err.message.contains("memroy"), "{err:?}");
    let err = parse_body::<SubmitJobBody>(b"{not json").unwrap_err();
    assert!(err.message.contains("not valid JSON"), "{err:?}");
    let err = parse_body::<SubmitJobBody>(br#"{"arraySize": "many"}"#).unwrap_err();
    assert!(err.message.starts_with("arraySize"), "{err:?}");
    assert!(parse_body::<SubmitJobBody>(b"").is_ok(), "an empty body is an empty object");
}

#[test]
fn a_job_body_with_four_wrong_fields_is_refused_once_naming_all_four() {
    // a wrong type, an unknown field, an invalid size, a bad array size
    let body = json!({"name": 5, "colour": "red", "vcpu": "0.3", "arraySize": 1});
    let refused = plan_submit_job(&stack(), &post(&body), "k".into()).unwrap_err();
    assert_eq!(paths(&refused), set(&["name", "colour", "vcpu", "arraySize"]), "{refused:?}");
    assert!(refused.message.starts_with("4 problems: "), "{}", refused.message);
    // and wrong types deeper in: a tag's value, a command's word
    let body = json!({"tags": {"team": 7}, "command": ["echo", false], "dependsOn": "job-1"});
    let refused = plan_submit_job(&stack(), &post(&body), "k".into()).unwrap_err();
    assert_eq!(paths(&refused), set(&["tags.team", "command[1]", "dependsOn"]), "{refused:?}");
}

#[test]
fn a_job_whose_command_names_a_parameter_nobody_gives_is_refused_naming_each() {
    let stack = stack_with_report(json!({"Command": ["report", "Ref::day", "Ref::region"]}));
    let body = json!({"jobDefinition": "report", "parameters": {"day": "2026-12-07"}});
    let refused = plan_submit_job(&stack, &post(&body), "k".into()).unwrap_err();
    assert_eq!(paths(&refused), set(&["parameters"]), "{refused:?}");
    assert!(refused.message.contains("names Ref::region, which neither"), "{}", refused.message);
    let given = json!({"jobDefinition": "report", "parameters": {"day": "2026-12-07", "region": "eu"}});
    assert!(plan_submit_job(&stack, &post(&given), "k".into()).is_ok());
    // A command of the request's own is judged instead of the definition's.
    let own = json!({"jobDefinition": "report", "command": ["echo", "Ref::who"]});
    assert!(plan_submit_job(&stack, &post(&own), "k".into()).unwrap_err().message.contains("Ref::who"));
}

#[test]
fn an_exact_size_is_refused_rather_than_adjusted() {
    // 3 vCPU alone would become 4 vCPU
    let adjusted = plan_submit_job(&stack(), &post(&json!({"vcpu": 3})), "k".into()).unwrap();
    assert!(adjusted.size_adjusted);
    let refused = plan_submit_job(&stack(), &post(&json!({"vcpu": 3, "exactSize": true})), "k".into()).unwrap_err();
    assert_eq!(paths(&refused), set(&["vcpu"]), "{refused:?}");
    assert!(refused.message.contains("not a valid Fargate size as given"), "{}", refused.message);
}

#[test]
fn a_run_body_with_four_wrong_fields_is_refused_once_naming_all_four() {
    let stack = stack();
    let body = json!({"parameters": {"day": 3}, "colour": "red",
                      "environment": {"AWS_BATCH_X": "1", "MODE": true}});
    let read = super::body::read_body(body.to_string().as_bytes()).unwrap();
    let refused = pipelines::run_input(&stack, &stack.pipelines["two"], "two-1", read).unwrap_err();
    let want = set(&["parameters.day", "colour", "environment.MODE", "environment.AWS_BATCH_X"]);
    assert_eq!(paths(&refused), want, "{refused:?}");
}

#[test]
fn a_redrive_body_with_four_wrong_fields_is_refused_once_naming_all_four() {
    let stack = stack();
    let run = batchline::model::run::Run::start("two-1".into(), &stack.pipelines["two"], "api", Default::default(), 0);
    let body = json!({"sizes": {"first": {"vcpu": true}, "second": {"vcpu": "0.3"}, "third": {"vcpu": "1"}},
                      "colour": "red"});
    let read = super::body::read_body(body.to_string().as_bytes()).unwrap();
    let refused = runs::redrive_of(&run, read).unwrap_err();
    let want = set(&["sizes.first.vcpu", "colour", "sizes.second.vcpu", "sizes.third"]);
    assert_eq!(paths(&refused), want, "{refused:?}");
}

#[test]
fn console_links_escape_like_the_console() {
    let url = log_console_url("us-east-1", "/aws/batch/job", "default/default/abc");
    assert!(url.ends_with("log-group/$252Faws$252Fbatch$252Fjob/log-events/default$252Fdefault$252Fabc"), "{url}");
}

/// `count` jobs of the default job definition in Batch, created a second apart (the last newest).
async fn submitted(batch: &MemoryBatch, stack: &StackConfig, count: usize, now: i64) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..count {
        let plan = plan_submit_job(stack, &post(&json!({"name": format!("j{i}")})), format!("k{i}")).unwrap();
        let id = batch.submit_job(&plan.job).await.unwrap();
        batch.set_times(&id, Some(now - 3_600_000 + i as i64 * 1000), None);
        ids.push(id);
    }
    ids
}

#[tokio::test]
async fn jobs_are_listed_a_page_at_a_time_newest_first_with_a_cursor() {
    // GIVEN 150 jobs in the stack's queue, created in the last hour, and one two days old
    let (batch, stack, now) = (MemoryBatch::new(), stack(), 10_000_000_000);
    let ids = submitted(&batch, &stack, 151, now).await;
    batch.set_times(&ids[0], Some(now - 48 * 3_600_000), None);
    // WHEN they are listed
    let first = list_jobs(&batch, &stack, None, Position::default(), now).await.unwrap();
    // THEN the newest hundred come first, and a cursor to the rest
    let listed = first["jobs"].as_array().unwrap();
    assert_eq!((listed.len(), listed[0]["jobId"].as_str()), (100, Some(ids[150].as_str())));
    assert_eq!(first["truncated"], true);
    let from = read_cursor(first["next"].as_str().unwrap(), &stack).unwrap();
    let second = list_jobs(&batch, &stack, None, from, now).await.unwrap();
    // AND the rest of the last day's follow (not the two-day-old one), with no cursor
    assert_eq!(second["jobs"].as_array().unwrap().len(), 50);
    assert_eq!((second["truncated"].clone(), second["next"].clone()), (json!(false), Value::Null));
    // AND in one status: only those
    batch.set_status(&ids[7], "FAILED");
    let failed = jobs::parse_status("failed").unwrap();
    let listed = list_jobs(&batch, &stack, Some(&failed), Position::default(), now).await.unwrap();
    assert_eq!(listed["jobs"].as_array().unwrap().len(), 1);
    assert_eq!(listed["jobs"][0]["jobId"], ids[7].as_str());
    assert!(jobs::parse_status("sleeping").is_err());
}

#[tokio::test]
async fn the_status_counts_each_queues_jobs_and_shows_the_latest_failures() {
    // GIVEN a queue with jobs in several statuses, its state known to Batch
    let (batch, stack, now) = (MemoryBatch::new(), stack(), 10_000_000_000);
    let ids = submitted(&batch, &stack, 9, now).await;
    for (id, status) in ids.iter().zip(["RUNNABLE", "RUNNABLE", "RUNNING", "FAILED", "FAILED", "SUCCEEDED"]) {
        batch.set_status(id, status);
    }
    let queue = &stack.job_queues[&stack.default_queue];
    batch.set_queue(QueueState {
        name: queue.name.clone(),
        enabled: true,
        status: "VALID".into(),
        status_reason: None,
        environments: vec![],
    });
    // WHEN the status is read
    let store = batchline::store::memory::MemoryStore::default();
    let status = super::status::status(&batch, &store, &stack, 2).await.unwrap();
    // THEN each status is counted, the queue's state shown, the failures listed
    let shown = &status["queues"][0];
    assert_eq!(shown["jobs"], json!({"SUBMITTED": 3, "PENDING": 0, "RUNNABLE": 2, "STARTING": 0, "RUNNING": 1}));
    assert_eq!((shown["state"].as_str(), shown["status"].as_str()), (Some("ENABLED"), Some("VALID")));
    assert_eq!(shown["countsCapped"], json!([]));
    let failures: BTreeSet<&str> =
        status["recentFailures"].as_array().unwrap().iter().filter_map(|f| f["jobId"].as_str()).collect();
    assert_eq!(failures, BTreeSet::from([ids[3].as_str(), ids[4].as_str()]));
    assert_eq!(status["openRuns"], 2);
}

#[tokio::test]
async fn a_job_is_shown_as_batch_describes_it_and_only_from_the_stacks_queues() {
    let (batch, stack) = (MemoryBatch::new(), stack());
    let plan = plan_submit_job(
        &stack,
        &post(&json!({"jobDefinition": "report", "parameters": {"day": "1"},
                                                       "tags": {"team": "data"}, "arraySize": 3})),
        "k".into(),
    )
    .unwrap();
    let id = batch.submit_job(&plan.job).await.unwrap();
    let detail = batch.describe_jobs(std::slice::from_ref(&id)).await.unwrap().remove(0).detail;
    let view = job_view(&detail, "us-east-1");
    assert_eq!(view["jobId"], id.as_str());
    assert_eq!(view["jobDefinition"], plan.job.job_definition_arn.as_str());
    assert_eq!((view["parameters"]["day"].as_str(), view["tags"]["team"].as_str()), (Some("1"), Some("data")));
    assert_eq!(view["arraySize"], 3);
    // a job in another queue is none of the stack's
    let mut elsewhere = plan.job.clone();
    elsewhere.queue_arn = "arn:aws:batch:us-east-1:123456789012:job-queue/someone-else".into();
    let other = batch.submit_job(&elsewhere).await.unwrap();
    assert!(jobs::our_job(&batch, &stack, &id).await.is_ok());
    assert!(jobs::our_job(&batch, &stack, &other).await.is_err(), "another queue's job is a 404");
}

#[test]
fn a_locked_job_definition_takes_no_size_array_size_or_dependency_from_callers() {
    // GIVEN a job definition that takes nothing from callers
    let stack = stack_with_report(json!({"Vcpu": "1", "Memory": "2048", "AllowOverrides": "false"}));
    // WHEN a caller asks it for a size, an array or a dependency (each alone)
    for body in [
        json!({"jobDefinition": "report", "arraySize": 10000}),
        json!({"jobDefinition": "report", "vcpu": "4"}),
        json!({"jobDefinition": "report", "memory": "8192"}),
        json!({"jobDefinition": "report", "dependsOn": ["job-1"]}),
    ] {
        // THEN it is refused, naming what was given
        let refused = plan_submit_job(&stack, &post(&body), "k".into()).unwrap_err();
        assert_eq!((refused.status, refused.code), (403, "OverridesNotAllowed"), "{body}");
        let field = body.as_object().unwrap().keys().find(|k| *k != "jobDefinition").unwrap().clone();
        assert!(refused.message.contains(&format!("takes no {field}")), "{}", refused.message);
    }
    // AND its parameters still pass
    assert!(plan_submit_job(
        &stack,
        &post(&json!({"jobDefinition": "report", "parameters": {"day": "1"}})),
        "k".into()
    )
    .is_ok());
    // AND a redrive may not size a stage of it
    let run = batchline::model::run::Run::start("two-1".into(), &stack.pipelines["two"], "api", Default::default(), 0);
    let read = super::body::read_body(json!({"sizes": {"second": {"vcpu": "2"}}}).to_string().as_bytes()).unwrap();
    let (_, sizes) = runs::redrive_of(&run, read).unwrap();
    let refused = runs::check_redrive_overrides(&stack, &run, &sizes).unwrap_err();
    assert_eq!(refused.status, 403, "{refused:?}");
    let read = super::body::read_body(json!({"sizes": {"first": {"vcpu": "2"}}}).to_string().as_bytes()).unwrap();
    let (_, sizes) = runs::redrive_of(&run, read).unwrap();
    assert!(runs::check_redrive_overrides(&stack, &run, &sizes).is_ok(), "default takes overrides");
}

#[test]
fn a_runs_view_shows_its_environments_names_never_their_values() {
    let stack = stack();
    let input = batchline::model::run::RunInput {
        parameters: BTreeMap::from([("day".to_owned(), "1".to_owned())]),
        environment: BTreeMap::from([("DB_PASSWORD".to_owned(), "s3cr3t".to_owned())]),
    };
    let run = batchline::model::run::Run::start("two-1".into(), &stack.pipelines["two"], "api", input, 0);
    let pricing = batchline::model::cost::Pricing::on_demand(&Default::default());
    let view = runs::run_view(&run, &stack, &pricing, "us-east-1", 0);
    assert_eq!(view["input"], json!({"parameters": {"day": "1"}, "environment": ["DB_PASSWORD"]}));
    assert!(!view.to_string().contains("s3cr3t"), "{view}");
}

#[test]
fn a_callers_key_is_scoped_to_the_principal_and_never_reads_as_another_keys_generation() {
    use super::keys::{caller_key, ApiKey};
    let ops = Some("arn:aws:iam::123456789012:user/ops");
    assert_eq!(caller_key("jobs", None, "order-42"), "api:jobs:key:order-42", "no authorizer: as before");
    assert_ne!(
        caller_key("jobs", ops, "order-42"),
        caller_key("jobs", Some("arn:aws:iam::123456789012:user/x"), "order-42")
    );
    // The second window of "foo" and the literal key "foo#2" are two keys
    assert_ne!(ApiKey::generation(&caller_key("jobs", ops, "foo"), 2), caller_key("jobs", ops, "foo#2"));
    assert_ne!(caller_key("jobs", ops, "a%23"), caller_key("jobs", ops, "a#"), "the escape is escaped too");
}

#[test]
fn the_caller_is_the_authorizers_principal_and_a_roles_sessions_are_one() {
    use super::http::caller_of;
    let with = |authorizer: Value| {
        let mut event: Value =
            serde_json::from_str(include_str!("../../../../tests/fixtures/api/post-jobs.json")).unwrap();
        event["requestContext"]["authorizer"] = authorizer;
        caller_of(&serde_json::from_value(event).unwrap())
    };
    let role = |session: &str| {
        with(json!({"iam": {"userArn": format!("arn:aws:sts::123456789012:assumed-role/ops/{session}")}}))
    };
    assert_eq!(role("alice"), Some("arn:aws:sts::123456789012:assumed-role/ops".to_owned()));
    assert_eq!(role("alice"), role("botocore-session-1"));
    assert_eq!(
        with(json!({"iam": {"userArn": "arn:aws:iam::123456789012:user/ops"}})).as_deref(),
        Some("arn:aws:iam::123456789012:user/ops")
    );
    let jwt = with(json!({"jwt": {"claims": {"iss": "https://idp.example", "sub": "u-1"}, "scopes": null}}));
    assert_eq!(jwt.as_deref(), Some("jwt:https://idp.example:u-1"));
    assert_eq!(with(Value::Null), None);
}

#[tokio::test]
async fn a_failure_another_job_took_over_from_is_told_apart_from_one_nothing_did() {
    use batchline::model::job_request::{PIPELINE_TAG, RUN_TAG, STAGE_TAG};
    use batchline::services::resize::{resize_key, ORIGINAL_TAG, RESIZE_TAG};
    use batchline::store::memory::MemoryStore;
    use batchline::store::{ClaimState, ClaimStore, RunStore, SubmissionClaim};
    let store = MemoryStore::default();
    let failed = |id: &str, tags: Value| {
        let event = json!({"id": "e", "detail-type": "Batch Job State Change", "source": "aws.batch",
                           "detail": {"jobId": id, "jobName": id, "status": "FAILED", "tags": tags}});
        batchline::model::batch_event::JobStateChangeEvent::from_value(event).unwrap().detail
    };
    let mut runs = BTreeMap::new();
    // A single job (every job has a run tag; only a stage's has a pipeline's): recovered
    // once its resize's claim names the job that followed it.
    let single = failed("j-1", json!({RUN_TAG: "job-abc", STAGE_TAG: "default"}));
    assert_eq!(super::status::recovered_by(&single, &store, &mut runs).await.unwrap(), None);
    let claim = SubmissionClaim {
        idempotency_key: resize_key("j-1", 1),
        job_name: "j-2".into(),
        queue: "q".into(),
        fingerprint: None,
        state: ClaimState::Submitted,
        job_id: Some("j-2".into()),
        claimed_at: 0,
        holder: None,
    };
    assert!(store.create_claim(&claim).await.unwrap());
    let found = super::status::recovered_by(&single, &store, &mut runs).await.unwrap();
    assert_eq!(found.as_deref(), Some("resized to job j-2"));
    let resized =
        failed("j-2", json!({RUN_TAG: "job-abc", STAGE_TAG: "default", ORIGINAL_TAG: "j-1", RESIZE_TAG: "1"}));
    assert_eq!(super::status::recovered_by(&resized, &store, &mut runs).await.unwrap(), None, "the last of the chain");

    // A stage's job: recovered while a later attempt of its stage has not failed.
    let stack = stack();
    let mut run =
        batchline::model::run::Run::start("two-1".into(), &stack.pipelines["two"], "api", Default::default(), 0);
    let planned = run.to_submit();
    let (stage, attempt) = &planned[0];
    assert!(run.record_submitted(stage, attempt.number, "s-1", attempt.job_name.as_deref().unwrap(), 0));
    store.save_run(&run, None).await.unwrap();
    let stage_job = failed("s-1", json!({RUN_TAG: "two-1", PIPELINE_TAG: "two", STAGE_TAG: stage}));
    assert_eq!(super::status::recovered_by(&stage_job, &store, &mut BTreeMap::new()).await.unwrap(), None);
    // It runs out of memory and its next attempt is submitted one size up: taken over.
    let oom = json!({"id": "e2", "detail-type": "Batch Job State Change", "source": "aws.batch",
                     "detail": {"jobId": "s-1", "jobName": attempt.job_name, "status": "FAILED",
                                "container": {"exitCode": 137, "reason": batchline::model::run::OUT_OF_MEMORY_REASON}}});
    let event = batchline::model::batch_event::JobStateChangeEvent::from_value(oom).unwrap();
    let pricing = batchline::model::cost::Pricing::on_demand(&Default::default());
    let context = batchline::model::run::Context { now_ms: 1, pricing: &pricing };
    run.handle(&batchline::model::run::JobChanged { stage, event: &event }, &context);
    let next = run.to_submit();
    let (_, second) = next.iter().find(|(s, _)| s == stage).expect("a resized attempt");
    assert!(run.record_submitted(stage, second.number, "s-2", second.job_name.as_deref().unwrap(), 2));
    let previous = store.load_run("two-1").await.unwrap();
    store.save_run(&run, previous.as_ref()).await.unwrap();
    let found = super::status::recovered_by(&stage_job, &store, &mut BTreeMap::new()).await.unwrap();
    assert_eq!(found, Some(format!("attempt 2 of {stage}: SUBMITTED")));
}
