//! The run model at its seam: GIVEN a run brought to a state by inputs, WHEN one more input, THEN these effects.
//!
//! A new rule is one more row of [`CASES`]. Inputs are written as [`Act`]s; effects are
//! rendered as short lines (`submit b#1`, `stop c-1 (failed)`, `stop b by name
//! (cancelled)`, `record a#1 job-x`, `withdraw c#1`, `announce`, `publish RunsStarted`).
//! Every kind of effect has rows with a duplicated and with a reordered input.

use std::collections::BTreeMap;

use serde_json::json;

use super::effects::{self, Context, Effect, JobRef};
use super::{Run, RunInput, OUT_OF_MEMORY_REASON};
use crate::model::batch_event::JobStateChangeEvent;
use crate::model::cost::Pricing;
use crate::model::fargate::{Quarters, Size};
use crate::model::pipeline::{OnStageFailure, Pipeline, Stage, ON_FAILURE};
use crate::settings::PriceOverrides;

/// The time every GIVEN input happens at; a case's WHEN input happens at its `now`.
const GIVEN_AT: i64 = 1_000;

/// An input, as a row writes it.
#[derive(Debug, Clone, Copy)]
enum Act {
    /// Every planned attempt submitted, as job `<stage>-<n>`.
    SubmitAll,
    /// A job state change: stage, job id, status.
    Event(&'static str, &'static str, &'static str),
    /// The job ran out of memory: stage, job id.
    OutOfMemory(&'static str, &'static str),
    /// An event that names the stage's planned attempt by its job name only (job id `job-x`).
    ByName(&'static str, &'static str),
    Cancel,
    Redrive(&'static str),
    Sweep,
    Resume,
    Created,
    /// The outcome of submitting a stage's attempt: made as job `<stage>-<n>`.
    Submitted(&'static str, u32),
    /// The outcome of submitting a stage's attempt: refused for good.
    Unsubmittable(&'static str, u32),
    /// The completion went out (the announce effect was carried out).
    Announced,
    /// A job ended as Batch says, at this time (ms): stage, job id, status, `stoppedAt`.
    EndedAt(&'static str, &'static str, &'static str, i64),
    /// A job's progress as Batch says, at this time (ms, the event's `time`): stage, job id, status.
    ProgressAt(&'static str, &'static str, &'static str, i64),
    /// The driver found a job (`<stage>-<n>`) for an attempt the run gave up.
    Found(&'static str, u32),
}

struct Case {
    name: &'static str,
    pipeline: fn() -> Pipeline,
    given: &'static [Act],
    when: Act,
    now: i64,
    then: &'static [&'static str],
}

/// A stage of the small size, resized at most once.
fn stage(after: &[&str]) -> Stage {
    super::tests::stage(after, Size { vcpu: Quarters(1), memory_mib: 512 }, 1)
}

/// a → (b, c) → d, fail fast, with a failure stage.
fn diamond() -> Pipeline {
    Pipeline {
        name: "d".into(),
        stages: BTreeMap::from([
            ("a".to_owned(), stage(&[])),
            ("b".to_owned(), stage(&["a"])),
            ("c".to_owned(), stage(&["a"])),
            ("d".to_owned(), stage(&["b", "c"])),
        ]),
        on_failure: Some(stage(&[])),
        on_stage_failure: OnStageFailure::Terminate,
        max_run_seconds: None,
        max_run_cost_usd: None,
    }
}

/// The diamond with a 60-second `MaxRunSeconds`.
fn with_deadline() -> Pipeline {
    Pipeline { max_run_seconds: Some(60), ..diamond() }
}

/// The diamond with a 60-second `MaxRunSeconds` that lets its jobs finish after a failure.
fn finishing_with_deadline() -> Pipeline {
    Pipeline { on_stage_failure: OnStageFailure::Finish, ..with_deadline() }
}

/// The diamond with a budget below one minute of its first stage.
fn with_tiny_budget() -> Pipeline {
    Pipeline { max_run_cost_usd: Some(0.0001), ..diamond() }
}

fn event(job_id: &str, job_name: Option<String>, status: &str, extra: serde_json::Value) -> JobStateChangeEvent {
    let mut detail =
        json!({"jobId": job_id, "jobName": job_name.unwrap_or_else(|| format!("name-{job_id}")), "status": status});
    for (k, v) in extra.as_object().into_iter().flatten() {
        detail[k] = v.clone();
    }
    let value = json!({"id": format!("{job_id}-{status}"), "detail-type": "Batch Job State Change", "source": "aws.batch", "detail": detail});
    JobStateChangeEvent::from_value(value).expect("a test event")
}

/// Puts one act to the run and returns its effects.
fn act(run: &mut Run, act: Act, now_ms: i64) -> Vec<Effect> {
    let pricing = Pricing::on_demand(&PriceOverrides::default());
    let ctx = Context { now_ms, pricing: &pricing };
    let sizes = BTreeMap::new();
    let changed = |run: &mut Run, stage: &str, event: JobStateChangeEvent| {
        run.handle(&effects::JobChanged { stage, event: &event }, &ctx).effects
    };
    match act {
        Act::SubmitAll => {
            let planned = run.to_submit();
            let mut effects = vec![];
            for (stage, attempt) in planned {
                let (job_id, job_name) =
                    (format!("{stage}-{}", attempt.number), attempt.job_name.clone().unwrap_or_default());
                let input =
                    effects::Submitted { stage: &stage, attempt: attempt.number, job_id: &job_id, job_name: &job_name };
                effects = run.handle(&input, &ctx).effects;
            }
            effects
        }
        Act::Event(stage, job_id, status) => changed(run, stage, event(job_id, None, status, json!({}))),
        Act::OutOfMemory(stage, job_id) => {
            let oom = json!({"container": {"exitCode": 137, "reason": OUT_OF_MEMORY_REASON}});
            changed(run, stage, event(job_id, None, "FAILED", oom))
        }
        Act::ByName(stage, status) => {
            let name = run.current_attempt(stage).and_then(|a| a.job_name.clone());
            changed(run, stage, event("job-x", name, status, json!({})))
        }
        Act::Cancel => run.handle(&effects::CancelRequested, &ctx).effects,
        Act::Redrive(key) => run.handle(&effects::RedriveRequested { key, sizes: &sizes, request: None }, &ctx).effects,
        Act::Sweep => run.handle(&effects::SweepVisit, &ctx).effects,
        Act::Resume => run.handle(&effects::Resume, &ctx).effects,
        Act::Created => run.handle(&effects::Created, &ctx).effects,
        Act::Submitted(stage, attempt) => {
            let job_id = format!("{stage}-{attempt}");
            let job_name = run.current_attempt(stage).and_then(|a| a.job_name.clone()).unwrap_or_default();
            run.handle(&effects::Submitted { stage, attempt, job_id: &job_id, job_name: &job_name }, &ctx).effects
        }
        Act::Unsubmittable(stage, attempt) => {
            run.handle(&effects::Unsubmittable { stage, attempt, reason: "the queue is gone" }, &ctx).effects
        }
        Act::Announced => {
            run.completion_sent = true;
            vec![]
        }
        Act::EndedAt(stage, job_id, status, stopped_at) => {
            changed(run, stage, event(job_id, None, status, json!({"startedAt": 0, "stoppedAt": stopped_at})))
        }
        Act::ProgressAt(stage, job_id, status, at) => {
            let mut event = event(job_id, None, status, json!({}));
            event.time =
                aws_smithy_types::DateTime::from_millis(at).fmt(aws_smithy_types::date_time::Format::DateTime).ok();
            changed(run, stage, event)
        }
        Act::Found(stage, attempt) => {
            let job_id = format!("{stage}-{attempt}");
            run.handle(&effects::JobFound { stage, attempt, job_id: &job_id }, &ctx).effects
        }
    }
}

/// An effect as a short line.
pub(super) fn render(effect: &Effect) -> String {
    let cause = |reason: &str| {
        if reason.ends_with("cancelled") {
            "cancelled"
        } else if reason.ends_with("before the job was recorded") {
            "unrecorded"
        } else if reason.ends_with("stopping its other jobs") {
            "failed"
        } else {
            "other"
        }
    };
    match effect {
        Effect::Submit { stage, attempt } => format!("submit {stage}#{}", attempt.number),
        Effect::Stop { job: JobRef::Id(id), reason, .. } => format!("stop {id} ({})", cause(reason)),
        Effect::Stop { stage, job: JobRef::Name(_), reason, .. } => format!("stop {stage} by name ({})", cause(reason)),
        Effect::RecordJob { stage, attempt, job_id } => format!("record {stage}#{attempt} {job_id}"),
        Effect::RecordArrayJob { stage, attempt, array, job_id } => {
            format!("record {stage}#{attempt} array {array} {job_id}")
        }
        Effect::Withdraw { stage, attempt } => format!("withdraw {stage}#{}", attempt.number),
        Effect::Announce => "announce".to_owned(),
        Effect::Publish(metrics) => {
            format!("publish {}", metrics.iter().map(|m| m.name).collect::<Vec<_>>().join(", "))
        }
        Effect::ExpandMap { stage, attempt } => format!("expand {stage}#{attempt}"),
        Effect::SubmitArray { stage, attempt, array } => format!("submit {stage}#{} array {array}", attempt.number),
        Effect::WithdrawArray { stage, attempt, array, .. } => format!("withdraw {stage}#{attempt} array {array}"),
        Effect::CloseMap { stage, attempt } => format!("close {stage}#{attempt}"),
        Effect::CheckArray { stage, attempt, array } => format!("check {stage}#{attempt} array {array}"),
    }
}

use Act::*;

/// a succeeded; b and c were submitted.
const FANNED_OUT: &[Act] = &[SubmitAll, Event("a", "a-1", "SUCCEEDED"), SubmitAll];
/// b failed while c ran on; c was stopped, then ended; the failure stage succeeded; announced.
const FAILED_AND_ANNOUNCED: &[Act] = &[
    SubmitAll,
    Event("a", "a-1", "SUCCEEDED"),
    SubmitAll,
    Event("b", "b-1", "FAILED"),
    SubmitAll,
    Event("c", "c-1", "FAILED"),
    Event(ON_FAILURE, "on-failure-1", "SUCCEEDED"),
    Announced,
];
const REDRIVEN: &[Act] = &[
    SubmitAll,
    Event("a", "a-1", "SUCCEEDED"),
    SubmitAll,
    Event("b", "b-1", "FAILED"),
    SubmitAll,
    Event("c", "c-1", "FAILED"),
    Event(ON_FAILURE, "on-failure-1", "SUCCEEDED"),
    Announced,
    Redrive("k1"),
];
/// Every stage succeeded but d, which was submitted.
const AT_THE_LAST_STAGE: &[Act] = &[
    SubmitAll,
    Event("a", "a-1", "SUCCEEDED"),
    SubmitAll,
    Event("b", "b-1", "SUCCEEDED"),
    Event("c", "c-1", "SUCCEEDED"),
    SubmitAll,
];
/// b could never be submitted while c was being submitted: the run failed, its failure stage ran.
const UNSUBMITTABLE: &[Act] = &[SubmitAll, Event("a", "a-1", "SUCCEEDED"), Unsubmittable("b", 1), SubmitAll];

#[rustfmt::skip]
const CASES: &[Case] = &[
    // Submit
    Case { name: "a new run submits its first stage", pipeline: diamond, given: &[], when: Resume, now: GIVEN_AT, then: &["submit a#1"] },
    Case { name: "a created run counts as started and submits its first stage", pipeline: diamond, given: &[], when: Created, now: GIVEN_AT, then: &["publish RunsStarted", "submit a#1"] },
    Case { name: "a success submits the stages it unblocks", pipeline: diamond, given: &[SubmitAll], when: Event("a", "a-1", "SUCCEEDED"), now: GIVEN_AT, then: &["submit b#1", "submit c#1"] },
    Case { name: "a duplicated success asks for the same attempts again, not new ones", pipeline: diamond, given: &[SubmitAll, Event("a", "a-1", "SUCCEEDED")], when: Event("a", "a-1", "SUCCEEDED"), now: GIVEN_AT, then: &["submit b#1", "submit c#1"] },
    Case { name: "a duplicated success after its dependents were submitted asks for nothing", pipeline: diamond, given: FANNED_OUT, when: Event("a", "a-1", "SUCCEEDED"), now: GIVEN_AT, then: &[] },
    Case { name: "a RUNNING delivered after its job's end asks for nothing", pipeline: diamond, given: FANNED_OUT, when: Event("a", "a-1", "RUNNING"), now: GIVEN_AT, then: &[] },
    Case { name: "out of memory submits the next size as the next attempt", pipeline: diamond, given: &[SubmitAll], when: OutOfMemory("a", "a-1"), now: GIVEN_AT, then: &["submit a#2"] },
    Case { name: "a duplicated out-of-memory end after the resize asks for nothing", pipeline: diamond, given: &[SubmitAll, OutOfMemory("a", "a-1"), SubmitAll], when: OutOfMemory("a", "a-1"), now: GIVEN_AT, then: &[] },
    Case { name: "a planned stage the budget cannot hold fails the run; only its failure stage is submitted", pipeline: with_tiny_budget, given: &[], when: Resume, now: GIVEN_AT, then: &["stop a by name (unrecorded)", "submit on-failure#1"] },
    // Stop
    Case { name: "a failure stops the run's other jobs and submits its failure stage", pipeline: diamond, given: FANNED_OUT, when: Event("b", "b-1", "FAILED"), now: GIVEN_AT, then: &["stop c-1 (failed)", "submit on-failure#1"] },
    Case { name: "a duplicated failure stops nothing again", pipeline: diamond, given: &[SubmitAll, Event("a", "a-1", "SUCCEEDED"), SubmitAll, Event("b", "b-1", "FAILED"), SubmitAll], when: Event("b", "b-1", "FAILED"), now: GIVEN_AT, then: &[] },
    Case { name: "a failure delivered after its sibling's end has nothing left to stop", pipeline: diamond, given: &[SubmitAll, Event("a", "a-1", "SUCCEEDED"), SubmitAll, Event("c", "c-1", "SUCCEEDED")], when: Event("b", "b-1", "FAILED"), now: GIVEN_AT, then: &["submit on-failure#1"] },
    Case { name: "the sweep stops a failed run's jobs again", pipeline: diamond, given: &[SubmitAll, Event("a", "a-1", "SUCCEEDED"), SubmitAll, Event("b", "b-1", "FAILED"), SubmitAll], when: Sweep, now: GIVEN_AT, then: &["stop c-1 (failed)"] },
    Case { name: "the sweep fails a run past its deadline and stops its jobs", pipeline: with_deadline, given: &[SubmitAll], when: Sweep, now: GIVEN_AT + 61_000, then: &["stop a-1 (failed)", "submit on-failure#1"] },
    Case { name: "an event past the deadline fails the run first, whatever it says", pipeline: with_deadline, given: FANNED_OUT, when: Event("b", "b-1", "SUCCEEDED"), now: GIVEN_AT + 61_000, then: &["stop c-1 (failed)", "submit on-failure#1"] },
    Case { name: "a cancel stops the running jobs", pipeline: diamond, given: FANNED_OUT, when: Cancel, now: GIVEN_AT, then: &["stop b-1 (cancelled)", "stop c-1 (cancelled)"] },
    Case { name: "a duplicated cancel stops the same jobs again", pipeline: diamond, given: &[SubmitAll, Event("a", "a-1", "SUCCEEDED"), SubmitAll, Cancel], when: Cancel, now: GIVEN_AT, then: &["stop b-1 (cancelled)", "stop c-1 (cancelled)"] },
    Case { name: "a cancelled run is announced once the last job it stopped has ended", pipeline: diamond, given: &[SubmitAll, Event("a", "a-1", "SUCCEEDED"), SubmitAll, Cancel, Event("b", "b-1", "FAILED")], when: Event("c", "c-1", "FAILED"), now: GIVEN_AT, then: &["announce"] },
    Case { name: "a cancel stops by name the jobs being submitted", pipeline: diamond, given: &[SubmitAll, Event("a", "a-1", "SUCCEEDED")], when: Cancel, now: GIVEN_AT, then: &["stop b by name (cancelled)", "stop c by name (cancelled)", "withdraw b#1", "withdraw c#1", "announce"] },
    Case { name: "a submission that finishes after the cancel stops its own job", pipeline: diamond, given: &[SubmitAll, Event("a", "a-1", "SUCCEEDED"), Cancel], when: Submitted("b", 1), now: GIVEN_AT, then: &["stop b-1 (unrecorded)", "withdraw b#1", "withdraw c#1", "announce"] },
    Case { name: "a stage that cannot be submitted fails the run; the sibling being submitted is stopped by name", pipeline: diamond, given: &[SubmitAll, Event("a", "a-1", "SUCCEEDED")], when: Unsubmittable("b", 1), now: GIVEN_AT, then: &["stop c by name (unrecorded)", "submit on-failure#1"] },
    Case { name: "a user's stop of a failed run stops what goes on and skips its failure stage", pipeline: diamond, given: &[SubmitAll, Event("a", "a-1", "SUCCEEDED"), SubmitAll, Event("b", "b-1", "FAILED")], when: Cancel, now: GIVEN_AT, then: &["stop c-1 (failed)"] },
    Case { name: "once what a user stopped has ended, the skipped failure stage's claim is settled and the run announced", pipeline: diamond, given: &[SubmitAll, Event("a", "a-1", "SUCCEEDED"), SubmitAll, Event("b", "b-1", "FAILED"), Cancel], when: Event("c", "c-1", "FAILED"), now: GIVEN_AT, then: &["withdraw on-failure#1", "announce"] },
    Case { name: "the sweep stops a cancelled run's jobs again", pipeline: diamond, given: &[SubmitAll, Event("a", "a-1", "SUCCEEDED"), SubmitAll, Cancel], when: Sweep, now: GIVEN_AT, then: &["stop b-1 (cancelled)", "stop c-1 (cancelled)"] },
    Case { name: "a failed run's job still going past the deadline is stopped; its failure stage gets its own time", pipeline: finishing_with_deadline, given: &[SubmitAll, Event("a", "a-1", "SUCCEEDED"), SubmitAll, Event("b", "b-1", "FAILED"), SubmitAll], when: Sweep, now: 60_500, then: &["stop c-1 (failed)"] },
    Case { name: "a failed run's failure stage past its own deadline is stopped too", pipeline: finishing_with_deadline, given: &[SubmitAll, Event("a", "a-1", "SUCCEEDED"), SubmitAll, Event("b", "b-1", "FAILED"), SubmitAll], when: Sweep, now: 61_500, then: &["stop c-1 (failed)", "stop on-failure-1 (failed)"] },
    Case { name: "a last job that ended in time, delivered late, ends the run well", pipeline: with_deadline, given: AT_THE_LAST_STAGE, when: EndedAt("d", "d-1", "SUCCEEDED", 30_000), now: 90_000, then: &["announce"] },
    Case { name: "a last job that ended past the deadline fails the run", pipeline: with_deadline, given: AT_THE_LAST_STAGE, when: EndedAt("d", "d-1", "SUCCEEDED", 70_000), now: 90_000, then: &["submit on-failure#1"] },
    Case { name: "a progress event delivered past the deadline, of a change in time, fails nothing", pipeline: with_deadline, given: FANNED_OUT, when: ProgressAt("c", "c-1", "RUNNING", 30_000), now: 90_000, then: &[] },
    Case { name: "a progress event of a change past the deadline fails the run", pipeline: with_deadline, given: FANNED_OUT, when: ProgressAt("c", "c-1", "RUNNING", 70_000), now: 90_000, then: &["stop b-1 (failed)", "stop c-1 (failed)", "submit on-failure#1"] },
    Case { name: "a job found for a cancelled attempt is waited for before the run is announced", pipeline: diamond, given: &[SubmitAll, Event("a", "a-1", "SUCCEEDED"), Cancel], when: Found("b", 1), now: GIVEN_AT, then: &[] },
    Case { name: "a job found twice is recorded once", pipeline: diamond, given: &[SubmitAll, Event("a", "a-1", "SUCCEEDED"), Cancel, Found("b", 1)], when: Found("b", 1), now: GIVEN_AT, then: &[] },
    // RecordJob
    Case { name: "an event that names the job before its submission was recorded records it on the claim", pipeline: diamond, given: &[], when: ByName("a", "RUNNING"), now: GIVEN_AT, then: &["record a#1 job-x"] },
    Case { name: "a duplicated early event records nothing again", pipeline: diamond, given: &[ByName("a", "RUNNING")], when: ByName("a", "RUNNING"), now: GIVEN_AT, then: &[] },
    Case { name: "an early end that overtakes RUNNING records the job and submits what it unblocks", pipeline: diamond, given: &[], when: ByName("a", "SUCCEEDED"), now: GIVEN_AT, then: &["record a#1 job-x", "submit b#1", "submit c#1"] },
    Case { name: "a job learnt from an event is recorded on its claim again before the run is announced", pipeline: diamond, given: &[ByName("a", "SUCCEEDED"), SubmitAll, Event("b", "b-1", "SUCCEEDED"), Event("c", "c-1", "SUCCEEDED"), SubmitAll], when: Event("d", "d-1", "SUCCEEDED"), now: GIVEN_AT, then: &["record a#1 job-x", "announce"] },
    Case { name: "a job found and stopped for a cancelled attempt is recorded on its claim before the run is announced", pipeline: diamond, given: &[SubmitAll, Event("a", "a-1", "SUCCEEDED"), Cancel, Found("b", 1)], when: Event("b", "b-1", "FAILED"), now: GIVEN_AT, then: &["record b#1 b-1", "withdraw c#1", "announce"] },
    // Withdraw and Announce
    Case { name: "an ended run settles the attempts it gave up, then announces", pipeline: diamond, given: UNSUBMITTABLE, when: Event(ON_FAILURE, "on-failure-1", "SUCCEEDED"), now: GIVEN_AT, then: &["withdraw c#1", "announce"] },
    Case { name: "a duplicated last event repeats what is still owed", pipeline: diamond, given: &[SubmitAll, Event("a", "a-1", "SUCCEEDED"), Unsubmittable("b", 1), SubmitAll, Event(ON_FAILURE, "on-failure-1", "SUCCEEDED")], when: Event(ON_FAILURE, "on-failure-1", "SUCCEEDED"), now: GIVEN_AT, then: &["withdraw c#1", "announce"] },
    Case { name: "the last success announces the run", pipeline: diamond, given: AT_THE_LAST_STAGE, when: Event("d", "d-1", "SUCCEEDED"), now: GIVEN_AT, then: &["announce"] },
    Case { name: "a duplicated last success after the announcement asks for nothing", pipeline: diamond, given: &[SubmitAll, Event("a", "a-1", "SUCCEEDED"), SubmitAll, Event("b", "b-1", "SUCCEEDED"), Event("c", "c-1", "SUCCEEDED"), SubmitAll, Event("d", "d-1", "SUCCEEDED"), Announced], when: Event("d", "d-1", "SUCCEEDED"), now: GIVEN_AT, then: &[] },
    Case { name: "a RUNNING delivered after the run was announced asks for nothing", pipeline: diamond, given: &[SubmitAll, Event("a", "a-1", "SUCCEEDED"), SubmitAll, Event("b", "b-1", "SUCCEEDED"), Event("c", "c-1", "SUCCEEDED"), SubmitAll, Event("d", "d-1", "SUCCEEDED"), Announced], when: Event("d", "d-1", "RUNNING"), now: GIVEN_AT, then: &[] },
    // Publish
    Case { name: "a redrive counts and submits what did not succeed", pipeline: diamond, given: FAILED_AND_ANNOUNCED, when: Redrive("k1"), now: GIVEN_AT, then: &["publish RunsRedriven", "submit b#2", "submit c#2"] },
    Case { name: "a duplicated redrive is not counted again", pipeline: diamond, given: REDRIVEN, when: Redrive("k1"), now: GIVEN_AT, then: &["submit b#2", "submit c#2"] },
    Case { name: "an older redrive delivered after a newer one is refused and not counted", pipeline: diamond, given: REDRIVEN, when: Redrive("k0"), now: GIVEN_AT, then: &["submit b#2", "submit c#2"] },
];

#[test]
fn every_input_yields_the_effects_its_row_says() {
    let mut failures = Vec::new();
    for case in CASES {
        let mut run = Run::start("r".into(), &(case.pipeline)(), "api", RunInput::default(), 0);
        for given in case.given {
            act(&mut run, *given, GIVEN_AT);
        }
        let effects: Vec<String> = act(&mut run, case.when, case.now).iter().map(render).collect();
        if effects != case.then {
            failures.push(format!("{}:\n  expected {:?}\n  got      {:?}", case.name, case.then, effects));
        }
    }
    assert!(failures.is_empty(), "{} of {} rows:\n{}", failures.len(), CASES.len(), failures.join("\n"));
}

#[test]
fn every_kind_of_effect_has_a_row() {
    let all: Vec<String> = CASES.iter().flat_map(|case| case.then.iter().map(|line| line.to_string())).collect();
    for kind in ["submit ", "stop ", "record ", "withdraw ", "announce", "publish "] {
        assert!(all.iter().any(|line| line.starts_with(kind)), "no row expects a {kind:?} effect");
    }
}
