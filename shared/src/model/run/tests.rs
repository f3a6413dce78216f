//! The run model's scenario tests: whole runs driven event by event through its per-concern functions.

use super::*;
use crate::model::fargate::Quarters;
use serde_json::json;
use serde_json::Value;

pub(super) fn stage(after: &[&str], size: Size, max_resizes: u32) -> Stage {
    Stage {
        job_definition: "default".into(),
        size,
        parameters: BTreeMap::new(),
        queue: "default".into(),
        after: after.iter().map(|s| s.to_string()).collect(),
        max_resizes,
        timeout_seconds: None,
        expected_seconds: None,
        max_vcpus: None,
        retry: None,
        map: None,
    }
}

/// a → (b, c) → d, at most one resize per stage, with a failure stage.
fn diamond() -> Pipeline {
    let small = Size { vcpu: Quarters(1), memory_mib: 512 };
    let big = Size { vcpu: Quarters(4), memory_mib: 2048 };
    Pipeline {
        name: "d".into(),
        stages: BTreeMap::from([
            ("a".to_owned(), stage(&[], small, 1)),
            ("b".to_owned(), stage(&["a"], small, 1)),
            ("c".to_owned(), stage(&["a"], small, 1)),
            ("d".to_owned(), stage(&["b", "c"], big, 1)),
        ]),
        on_failure: Some(stage(&[], small, 0)),
        on_stage_failure: OnStageFailure::Terminate,
        max_run_seconds: None,
        max_run_cost_usd: None,
    }
}

fn event(job_id: &str, status: &str, extra: Value) -> JobStateChangeEvent {
    let mut value = json!({"id": format!("{job_id}-{status}"), "detail-type": "Batch Job State Change", "source": "aws.batch",
                           "detail": {"jobId": job_id, "jobName": format!("name-{job_id}"), "status": status}});
    for (k, v) in extra.as_object().unwrap() {
        value["detail"][k] = v.clone();
    }
    JobStateChangeEvent::from_value(value).unwrap()
}

fn submit_all(run: &mut Run) -> Vec<String> {
    let planned = run.to_submit();
    for (stage, attempt) in &planned {
        let id = format!("{stage}-{}", attempt.number);
        assert!(run.record_submitted(stage, attempt.number, &id, attempt.job_name.as_deref().unwrap(), 0));
    }
    planned.into_iter().map(|(s, a)| format!("{s}-{}", a.number)).collect()
}

#[test]
fn a_budget_plans_with_the_stages_past_attempts_and_never_stops_the_failure_stage() {
    let pricing = Pricing::on_demand(&crate::settings::PriceOverrides::default());
    let mut pipeline = diamond();
    pipeline.max_run_cost_usd = Some(0.004);
    let mut run = Run::start("r9".into(), &pipeline, "api", RunInput::default(), 0);
    // a's first attempt has no history: a minute of it fits
    assert_eq!(run.over_budget(&pricing), None);
    submit_all(&mut run);
    // it ran ten minutes, then out of memory: $0.0021 spent (0.25 vCPU, 0.5 GB)
    let ten_minutes = json!({"startedAt": 0, "stoppedAt": 600_000,
                             "container": {"exitCode": 137, "reason": OUT_OF_MEMORY_REASON}});
    let oom = json!({"container": {"exitCode": 137, "reason": OUT_OF_MEMORY_REASON}, "attempts": [ten_minutes]});
    run.apply("a", &event("a-1", "FAILED", oom.clone()), 1);
    // duplicated, its end is recorded once
    run.apply("a", &event("a-1", "FAILED", oom), 1);
    assert!((run.cost(&pricing).usd - 0.0123425 / 6.0).abs() < 1e-9, "{:?}", run.cost(&pricing));
    // the resize, estimated for the median of a's attempts (600 s) at 1 GB: $0.0024 more
    let why = run.over_budget(&pricing).unwrap();
    assert!(why.contains("spent $0.0021"), "{why}");
    assert!(why.contains("next (a attempt 2 at 0.25 vCPU / 1024 MiB) estimated at $0.0024"), "{why}");
    assert!(run.fail_over_budget(why, 2));
    assert_eq!((run.status, run.stages["a"].status), (RunStatus::Failed, StageStatus::Skipped));
    // the failure stage is planned and exempt
    assert_eq!(run.over_budget(&pricing), None);
    assert_eq!(submit_all(&mut run), ["on-failure-1"]);
}

#[test]
fn a_diamond_fans_out_and_in_and_succeeds() {
    let mut run = Run::start("r1".into(), &diamond(), "api", RunInput::default(), 0);
    assert_eq!(submit_all(&mut run), ["a-1"]);
    assert_eq!(run.apply("a", &event("a-1", "RUNNING", json!({})), 1), Applied::Changed);
    assert_eq!(run.apply("a", &event("a-1", "SUCCEEDED", json!({})), 2), Applied::Changed);
    assert_eq!(submit_all(&mut run), ["b-1", "c-1"]);
    run.apply("c", &event("c-1", "SUCCEEDED", json!({})), 3);
    assert!(run.to_submit().is_empty(), "d waits for b");
    // duplicates and late events change nothing
    assert!(matches!(run.apply("c", &event("c-1", "SUCCEEDED", json!({})), 4), Applied::Unchanged(_)));
    assert!(matches!(run.apply("c", &event("c-1", "RUNNING", json!({})), 4), Applied::Unchanged(_)));
    run.apply("b", &event("b-1", "SUCCEEDED", json!({})), 5);
    assert_eq!(submit_all(&mut run), ["d-1"]);
    assert_eq!(run.stages["d"].attempts[0].size.to_string(), "1 vCPU / 2048 MiB");
    run.apply("d", &event("d-1", "SUCCEEDED", json!({})), 6);
    assert_eq!(run.status, RunStatus::Succeeded);
    assert_eq!(run.ended_at, Some(6));
    assert!(run.to_submit().is_empty());
}

#[test]
fn out_of_memory_resizes_up_to_the_limit_then_fails_and_runs_on_failure() {
    let oom = json!({"container": {"exitCode": 137, "reason": OUT_OF_MEMORY_REASON}});
    let mut run = Run::start("r2".into(), &diamond(), "api", RunInput::default(), 0);
    submit_all(&mut run);
    run.apply("a", &event("a-1", "FAILED", oom.clone()), 1);
    assert_eq!(submit_all(&mut run), ["a-2"]);
    assert_eq!(run.stages["a"].attempts[1].size, Size { vcpu: Quarters(1), memory_mib: 1024 });
    // MaxResizes 1: the second OOM fails the stage and the run
    run.apply("a", &event("a-2", "FAILED", oom), 2);
    assert_eq!(run.status, RunStatus::Failed);
    assert!(run.reason.as_deref().unwrap().contains("ran out of memory 2 time(s)"));
    assert_eq!(run.stages["b"].status, StageStatus::Skipped);
    assert_eq!(submit_all(&mut run), ["on-failure-1"]);
    run.apply(ON_FAILURE, &event("on-failure-1", "SUCCEEDED", json!({})), 3);
    assert_eq!(run.on_failure.as_ref().unwrap().status, StageStatus::Succeeded);
    assert_eq!(run.status, RunStatus::Failed, "the failure stage does not change the outcome");
}

#[test]
fn out_of_memory_resizing_stops_at_what_the_stages_queue_can_run() {
    let mut pipeline = diamond();
    let a = pipeline.stages.get_mut("a").unwrap();
    (a.size, a.max_vcpus, a.max_resizes) = (Size { vcpu: Quarters(4), memory_mib: 8192 }, Some(1), 3);
    let mut run = Run::start("r7".into(), &pipeline, "api", RunInput::default(), 0);
    submit_all(&mut run);
    let oom = json!({"container": {"exitCode": 137, "reason": OUT_OF_MEMORY_REASON}});
    run.apply("a", &event("a-1", "FAILED", oom), 1);
    assert!(run.to_submit().iter().all(|(stage, _)| stage != "a"), "no 2 vCPU attempt on a 1 vCPU queue");
    assert_eq!(run.status, RunStatus::Failed);
    let reason = run.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("its next size (2 vCPU / 16384 MiB) is more than its queue can run (1 vCPU at most)"),
        "{reason}"
    );
}

#[test]
fn a_redrive_reruns_what_did_not_succeed_as_new_attempts_with_their_resizes_again() {
    let oom = json!({"container": {"exitCode": 137, "reason": OUT_OF_MEMORY_REASON}});
    let mut run = Run::start("r6".into(), &diamond(), "api", RunInput::default(), 0);
    submit_all(&mut run);
    run.apply("a", &event("a-1", "SUCCEEDED", json!({})), 1);
    submit_all(&mut run);
    run.apply("c", &event("c-1", "SUCCEEDED", json!({})), 2);
    run.apply("b", &event("b-1", "FAILED", oom.clone()), 3);
    submit_all(&mut run);
    run.apply("b", &event("b-2", "FAILED", oom.clone()), 4);
    submit_all(&mut run);
    run.apply(ON_FAILURE, &event("on-failure-1", "SUCCEEDED", json!({})), 5);
    // Refused until its end was announced, then redriven once per key
    assert!(matches!(run.redrive("k1", &BTreeMap::new(), 6), Err(RedriveRefused::StillEnding(_))));
    run.completion_sent = true;
    let redriven = run.redrive("k1", &BTreeMap::new(), 7).unwrap();
    assert_eq!((redriven.generation, redriven.stages.clone()), (1, vec!["b".to_owned(), "d".to_owned()]));
    assert!(run.redrive("k1", &BTreeMap::new(), 8).unwrap().duplicate);
    assert!(matches!(run.redrive("k2", &BTreeMap::new(), 8), Err(RedriveRefused::StillRunning(_))));
    // b goes on from its last size as attempt 3, with its resize allowance again
    assert_eq!(submit_all(&mut run), ["b-3"]);
    assert_eq!(run.stages["b"].attempts[2].size.memory_mib, 1024);
    assert_eq!(run.duration_ms(9), 2, "the generation's duration");
    run.apply("b", &event("b-3", "FAILED", oom), 10);
    assert_eq!(submit_all(&mut run), ["b-4"], "resized again");
    run.apply("b", &event("b-4", "FAILED", json!({"container": {"exitCode": 1}})), 11);
    // failing again runs the failure stage again, as its next attempt
    assert_eq!(submit_all(&mut run), ["on-failure-2"]);
    run.apply(ON_FAILURE, &event("on-failure-2", "SUCCEEDED", json!({})), 12);
    run.completion_sent = true;
    let sizes = BTreeMap::from([("b".to_owned(), Size { vcpu: Quarters(4), memory_mib: 8192 })]);
    run.redrive("k3", &sizes, 13).unwrap();
    assert_eq!(submit_all(&mut run), ["b-5"]);
    assert_eq!(run.stages["b"].attempts[4].size.to_string(), "1 vCPU / 8192 MiB");
    run.apply("b", &event("b-5", "SUCCEEDED", json!({})), 14);
    assert_eq!(submit_all(&mut run), ["d-1"]);
    run.apply("d", &event("d-1", "SUCCEEDED", json!({})), 15);
    assert_eq!((run.status, run.stages["a"].attempts.len()), (RunStatus::Succeeded, 1));
    run.completion_sent = true;
    assert!(matches!(run.redrive("k4", &BTreeMap::new(), 16), Err(RedriveRefused::Succeeded(_))));
}

#[test]
fn an_event_that_outruns_the_submission_record_is_matched_by_the_planned_name() {
    let mut run = Run::start("r5".into(), &diamond(), "api", RunInput::default(), 0);
    let (_, planned) = run.to_submit().remove(0);
    let name = planned.job_name.clone().unwrap();
    let mut early = event("job-x", "RUNNING", json!({}));
    early.detail.job_name = Some(name);
    assert_eq!(run.apply("a", &early, 1), Applied::Changed);
    assert_eq!(run.stages["a"].attempts[0].job_id.as_deref(), Some("job-x"));
    assert!(matches!(run.apply("a", &event("someone-else", "SUCCEEDED", json!({})), 2), Applied::Unchanged(_)));
}

#[test]
fn another_failure_fails_the_run_at_once_and_cancel_stops_what_runs() {
    let mut run = Run::start("r3".into(), &diamond(), "api", RunInput::default(), 0);
    submit_all(&mut run);
    run.apply(
        "a",
        &event(
            "a-1",
            "FAILED",
            json!({"statusReason": "Essential container in task exited", "container": {"exitCode": 2}}),
        ),
        1,
    );
    assert_eq!(run.status, RunStatus::Failed);
    assert_eq!(run.stages["a"].attempts.len(), 1, "no resize for an ordinary failure");
    assert!(run.reason.as_deref().unwrap().contains("stage a failed"));

    let mut run = Run::start("r4".into(), &diamond(), "api", RunInput::default(), 0);
    submit_all(&mut run);
    run.apply("a", &event("a-1", "SUCCEEDED", json!({})), 1);
    submit_all(&mut run);
    let stopped: Vec<Option<String>> = run.cancel(2).unwrap().into_iter().map(|j| j.job_id).collect();
    assert_eq!(stopped, [Some("b-1".to_owned()), Some("c-1".to_owned())]);
    assert_eq!(run.status, RunStatus::Cancelled);
    assert_eq!(run.stages["d"].status, StageStatus::Cancelled);
    assert!(run.on_failure.is_none(), "a cancel is not a failure");
    // a cancelled job stays open until Batch reports its end, which is recorded
    assert!(!run.ready_to_announce(), "its jobs are still stopping");
    assert_eq!(run.apply("b", &event("b-1", "SUCCEEDED", json!({})), 3), Applied::Changed);
    assert_eq!(run.stages["b"].status, StageStatus::Succeeded, "it ended before the stop reached it");
    assert_eq!(run.cancel(4).unwrap().len(), 1, "a retried cancel stops the job still going again");
    let stopped = json!({"statusReason": "Batchline run r4 cancelled", "startedAt": 0, "stoppedAt": 120_000});
    assert_eq!(run.apply("c", &event("c-1", "FAILED", stopped), 5), Applied::Changed);
    assert_eq!(
        (run.stages["c"].status, run.stages["c"].attempts[0].status),
        (StageStatus::Cancelled, StageStatus::Cancelled)
    );
    let pricing = Pricing::on_demand(&crate::settings::PriceOverrides::default());
    assert!(run.cost(&pricing).stages["c"].usd > 0.0, "the cancelled job's billed time is counted");
    assert!(run.ready_to_announce());
    let mut ended = Run::start("r6".into(), &diamond(), "api", RunInput::default(), 0);
    submit_all(&mut ended);
    ended.apply("a", &event("a-1", "FAILED", json!({"container": {"exitCode": 2}})), 1);
    assert!(ended.cancel(2).is_err(), "a failed run with nothing going has nothing to stop");
}

#[test]
fn a_redrive_key_is_one_request_within_its_window_and_new_work_after_it() {
    let fail_and_announce = |run: &mut Run, stage: &str, job: &str, at: i64| {
        run.apply(stage, &event(job, "FAILED", json!({"container": {"exitCode": 2}})), at);
        submit_all(run);
        let failure = run.on_failure.as_ref().unwrap().current().unwrap().number;
        run.apply(ON_FAILURE, &event(&format!("on-failure-{failure}"), "SUCCEEDED", json!({})), at);
        run.completion_sent = true;
    };
    let mut run = Run::start("r8".into(), &diamond(), "api", RunInput::default(), 0);
    submit_all(&mut run);
    fail_and_announce(&mut run, "a", "a-1", 1);
    let bigger = BTreeMap::from([("a".to_owned(), Size { vcpu: Quarters(4), memory_mib: 8192 })]);
    assert_eq!(run.redrive("k1", &bigger, 1_000).unwrap().generation, 1);
    // the same key with other sizes is another request
    assert_eq!(run.redrive("k1", &BTreeMap::new(), 2_000), Err(RedriveRefused::KeyReused("r8".into())));
    submit_all(&mut run);
    fail_and_announce(&mut run, "a", "a-2", 3_000);
    assert_eq!(run.redrive("k2", &BTreeMap::new(), 4_000).unwrap().generation, 2);
    // a retry of the first request after a second one gets the first's generation back
    let again = run.redrive("k1", &bigger, 5_000).unwrap();
    assert_eq!((again.generation, again.duplicate), (1, true));
    submit_all(&mut run);
    fail_and_announce(&mut run, "a", "a-3", 6_000);
    // past the key's window, the same key starts new work
    let day_later = 1_000 + crate::model::job_request::KEY_WINDOW_MS;
    let later = run.redrive("k1", &bigger, day_later).unwrap();
    assert_eq!((later.generation, later.duplicate), (3, false));
}

#[test]
fn a_redrive_names_its_stages_in_dag_order_not_by_name() {
    // z runs first and fails; a (after z) and m (after a) are skipped
    let small = Size { vcpu: Quarters(1), memory_mib: 512 };
    let pipeline = Pipeline {
        name: "p".into(),
        stages: BTreeMap::from([
            ("z".to_owned(), stage(&[], small, 0)),
            ("a".to_owned(), stage(&["z"], small, 0)),
            ("m".to_owned(), stage(&["a"], small, 0)),
        ]),
        on_failure: None,
        on_stage_failure: OnStageFailure::Terminate,
        max_run_seconds: None,
        max_run_cost_usd: None,
    };
    assert_eq!(["z", "a", "m"].map(|s| pipeline.depth(s)), [0, 1, 2]);
    let mut run = Run::start("r9".into(), &pipeline, "api", RunInput::default(), 0);
    submit_all(&mut run);
    run.apply("z", &event("z-1", "FAILED", json!({"container": {"exitCode": 1}})), 1);
    run.completion_sent = true;
    let redriven = run.redrive("k1", &BTreeMap::new(), 2).unwrap();
    assert_eq!(redriven.stages, ["z", "a", "m"]);
}
