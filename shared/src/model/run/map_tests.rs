//! Map attempts through the run model: expansion, arrays, fan-in on the parent, the close, and the edges (duplicates, reordering, tolerance, concurrency, cancel).

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::effect_tests::render;
use super::effects::{CancelRequested, Context, Input, JobChanged, RedriveRequested, Resume};
use super::map::{ArrayChecked, ArraySubmitted, ChildrenAt, FailedChild, MapClosed, MapExpanded, RedriveExpanded};
use super::{Run, RunInput, RunStatus, StageStatus};
use crate::model::batch_event::JobStateChangeEvent;
use crate::model::cost::{BilledSum, Pricing};
use crate::model::fargate::{Quarters, Size};
use crate::model::map::{MapSource, MapSpec, Tolerance};
use crate::model::pipeline::{OnStageFailure, Pipeline};
use crate::settings::PriceOverrides;

/// Where the tests' expansions wrote their item lists.
const LISTS: &str = "s3://in/runs/run-1/files/_batchline/a1-t0k3n/";

/// `files` (a map over a prefix, tolerating `tolerated` failures, `max_concurrency`
/// children at once) → `report`, with a failure stage.
fn mapped(tolerated: u32, max_concurrency: Option<u32>) -> Pipeline {
    let size = Size { vcpu: Quarters(1), memory_mib: 512 };
    // No resizing (MaxResizes 0): the tests that resize say so.
    let mut files = super::tests::stage(&[], size, 0);
    files.map = Some(MapSpec {
        source: MapSource::Prefix { uri: "s3://in/{inputPrefix}".into(), suffix: ".jpg".into() },
        items_per_child: 1,
        tolerated_failures: Tolerance::Count(tolerated),
        max_concurrency,
    });
    Pipeline {
        name: "thumbnails".into(),
        stages: BTreeMap::from([
            ("files".to_owned(), files),
            ("report".to_owned(), super::tests::stage(&["files"], size, 0)),
        ]),
        on_failure: Some(super::tests::stage(&[], size, 0)),
        on_stage_failure: OnStageFailure::Terminate,
        max_run_seconds: None,
        max_run_cost_usd: None,
    }
}

/// Puts an input to the run; returns whether it changed the record and its effects, rendered.
fn put<I: Input>(run: &mut Run, input: &I) -> (bool, Vec<String>) {
    let pricing = Pricing::on_demand(&PriceOverrides::default());
    let step = run.handle(input, &Context { now_ms: 5_000, pricing: &pricing });
    (step.changed, step.effects.iter().map(render).collect())
}

/// A Batch event of an array parent (or plain job), `extra` merged into its detail.
fn parent(job_id: &str, status: &str, extra: Value) -> JobStateChangeEvent {
    let mut value = json!({"id": format!("{job_id}-{status}"), "detail-type": "Batch Job State Change",
                           "source": "aws.batch", "time": "1970-01-01T00:00:04Z",
                           "detail": {"jobId": job_id, "jobName": "named-elsewhere", "status": status,
                                      "stoppedAt": 4_000}});
    for (k, v) in extra.as_object().unwrap() {
        value["detail"][k] = v.clone();
    }
    JobStateChangeEvent::from_value(value).unwrap()
}

/// An array parent's end, its children counted.
fn array_end(job_id: &str, size: usize, failed: usize) -> JobStateChangeEvent {
    let status = if failed == 0 { "SUCCEEDED" } else { "FAILED" };
    let summary = json!({"SUCCEEDED": size - failed, "FAILED": failed});
    parent(job_id, status, json!({"arrayProperties": {"size": size, "statusSummary": summary}}))
}

fn changed(run: &mut Run, job: &JobStateChangeEvent) -> (bool, Vec<String>) {
    put(run, &JobChanged { stage: "files", event: job })
}

fn started(pipeline: &Pipeline) -> Run {
    Run::start("run-1".into(), pipeline, "api", RunInput::default(), 1_000)
}

fn failed_child(index: usize) -> FailedChild {
    FailedChild { index, items: vec![json!(format!("s3://in/{index}.jpg"))], exit_code: Some(2), reason: None }
}

#[test]
fn a_map_is_expanded_submitted_as_arrays_fanned_in_on_its_parents_closed_and_then_the_next_stage_planned_once() {
    let mut run = started(&mapped(2, None));
    assert_eq!(put(&mut run, &Resume).1, ["expand files#1"], "its items are listed first");
    assert_eq!(run.stages["files"].status, StageStatus::Submitting);

    let expanded = MapExpanded { stage: "files", attempt: 1, children: Ok(12_000), lists: LISTS.into() };
    assert_eq!(
        put(&mut run, &expanded),
        (true, vec!["submit files#1 array 0".into(), "submit files#1 array 1".into()])
    );
    let map = run.stages["files"].current().unwrap().map.clone().unwrap();
    assert_eq!(map.arrays.iter().map(|a| (a.first, a.size)).collect::<Vec<_>>(), [(0, 10_000), (10_000, 2_000)]);
    let again = MapExpanded { stage: "files", attempt: 1, children: Ok(7), lists: LISTS.into() };
    assert!(!put(&mut run, &again).0, "the first expansion is the one kept");

    let first = ArraySubmitted { stage: "files", attempt: 1, array: 0, job_id: "p0" };
    assert_eq!(put(&mut run, &first), (true, vec!["submit files#1 array 1".into()]), "still owed");
    let second = ArraySubmitted { stage: "files", attempt: 1, array: 1, job_id: "p1" };
    assert_eq!(put(&mut run, &second), (true, vec![]));
    assert_eq!(run.stages["files"].status, StageStatus::Submitted);
    assert_eq!(run.open_jobs(), [("files".to_owned(), "p0".to_owned()), ("files".to_owned(), "p1".to_owned())]);
    assert_eq!(changed(&mut run, &parent("p0", "RUNNING", json!({}))), (true, vec![]));
    assert_eq!(run.stages["files"].status, StageStatus::Running);

    // A child's event is never its parent's (the runs lane leaves them out; should one come).
    let child = parent("p1:3", "FAILED", json!({"arrayProperties": {"index": 3, "size": 2_000}}));
    assert!(!changed(&mut run, &child).0);
    assert_eq!(changed(&mut run, &array_end("p0", 10_000, 0)), (true, vec![]), "p1 is still going");
    assert!(!changed(&mut run, &parent("p0", "RUNNING", json!({}))).0, "progress after an end");
    assert_eq!(changed(&mut run, &array_end("p1", 2_000, 2)), (true, vec!["close files#1".into()]));
    assert!(!changed(&mut run, &array_end("p1", 2_000, 2)).0, "a duplicated end");
    assert_eq!(put(&mut run, &Resume).1, ["close files#1"], "owed until the close is answered");

    let closed = MapClosed {
        stage: "files",
        attempt: 1,
        failed_items: vec![failed_child(10_003), failed_child(10_007)],
        failed_items_uri: None,
        billed: vec![],
    };
    assert_eq!(put(&mut run, &closed), (true, vec!["submit report#1".into()]));
    let attempt = run.stages["files"].current().unwrap().clone();
    assert_eq!(attempt.status, StageStatus::Succeeded);
    assert_eq!(attempt.reason.as_deref(), Some("2 of 12000 children failed, within ToleratedFailures"));
    let map = attempt.map.unwrap();
    assert_eq!((map.succeeded(), map.failed(), map.failed_items.len()), (11_998, 2, 2));
    assert_eq!(put(&mut run, &closed), (false, vec!["submit report#1".into()]), "closed once");
    assert_eq!(run.status, RunStatus::Running);
}

#[test]
fn failures_past_the_tolerance_fail_the_stage_and_the_run_at_the_close() {
    let mut run = started(&mapped(2, None));
    put(&mut run, &MapExpanded { stage: "files", attempt: 1, children: Ok(250), lists: LISTS.into() });
    put(&mut run, &ArraySubmitted { stage: "files", attempt: 1, array: 0, job_id: "p0" });
    assert_eq!(changed(&mut run, &array_end("p0", 250, 3)).1, ["close files#1"]);
    let failed_items = (0..3).map(failed_child).collect();
    let (_, effects) =
        put(&mut run, &MapClosed { stage: "files", attempt: 1, failed_items, failed_items_uri: None, billed: vec![] });
    assert_eq!(effects, ["submit on-failure#1"]);
    assert_eq!(run.status, RunStatus::Failed);
    assert_eq!(run.reason.as_deref(), Some("stage files: 3 of 250 children failed; ToleratedFailures allows 2"));
    assert_eq!(run.stages["report"].status, StageStatus::Skipped);
}

#[test]
fn a_map_without_items_succeeds_at_once_and_says_so() {
    let mut run = started(&mapped(0, None));
    let (changed, effects) =
        put(&mut run, &MapExpanded { stage: "files", attempt: 1, children: Ok(0), lists: LISTS.into() });
    assert_eq!((changed, effects), (true, vec!["submit report#1".to_owned()]));
    let attempt = run.stages["files"].current().unwrap();
    assert_eq!(attempt.status, StageStatus::Succeeded);
    assert_eq!(attempt.reason.as_deref(), Some("the map had no items: no children ran"));
}

#[test]
fn a_map_whose_items_cannot_be_listed_fails_the_run_saying_why() {
    let mut run = started(&mapped(0, None));
    let why = "{inputPrefix} names no run parameter (there are: runId)".to_owned();
    put(&mut run, &MapExpanded { stage: "files", attempt: 1, children: Err(why.clone()), lists: LISTS.into() });
    assert_eq!(run.status, RunStatus::Failed);
    assert_eq!(run.reason, Some(format!("stage files: {why}")));
    let too_many = MapExpanded { stage: "files", attempt: 1, children: Ok(100_001), lists: LISTS.into() };
    let mut run = started(&mapped(0, None));
    put(&mut run, &too_many);
    assert!(run.reason.unwrap().contains("more than the 100000 a map may have"));
}

#[test]
fn max_concurrency_submits_one_array_at_a_time_and_none_once_the_failures_passed_the_tolerance() {
    let mut run = started(&mapped(1, Some(500)));
    let (_, effects) =
        put(&mut run, &MapExpanded { stage: "files", attempt: 1, children: Ok(1_200), lists: LISTS.into() });
    assert_eq!(effects, ["submit files#1 array 0"], "the next array waits for this one's end");
    put(&mut run, &ArraySubmitted { stage: "files", attempt: 1, array: 0, job_id: "p0" });
    assert_eq!(put(&mut run, &Resume).1, Vec::<String>::new());
    assert_eq!(changed(&mut run, &array_end("p0", 500, 1)).1, ["submit files#1 array 1"]);
    put(&mut run, &ArraySubmitted { stage: "files", attempt: 1, array: 1, job_id: "p1" });
    // One more failure passes the tolerance of one: the last array is never submitted.
    assert_eq!(changed(&mut run, &array_end("p1", 500, 1)).1, ["close files#1"]);
    put(
        &mut run,
        &MapClosed { stage: "files", attempt: 1, failed_items: vec![], failed_items_uri: None, billed: vec![] },
    );
    assert_eq!(run.status, RunStatus::Failed);
    assert_eq!(
        run.reason.as_deref(),
        Some("stage files: 202 of 1200 children failed (200 never ran); ToleratedFailures allows 1")
    );
    let last = &run.stages["files"].current().unwrap().map.as_ref().unwrap().arrays[2];
    assert_eq!((last.status, last.job_id.as_deref()), (StageStatus::Skipped, None));
}

#[test]
fn an_array_reported_before_its_submission_was_recorded_is_found_by_its_name_and_recorded_once() {
    let mut run = started(&mapped(0, None));
    put(&mut run, &MapExpanded { stage: "files", attempt: 1, children: Ok(3), lists: LISTS.into() });
    let name = run.stages["files"].current().unwrap().map.as_ref().unwrap().arrays[0].job_name.clone();
    let early = parent("p0", "RUNNING", json!({"jobName": name}));
    assert!(changed(&mut run, &early).0);
    assert_eq!(run.open_jobs(), [("files".to_owned(), "p0".to_owned())]);
    let late = ArraySubmitted { stage: "files", attempt: 1, array: 0, job_id: "p0" };
    assert!(!put(&mut run, &late).0, "the submission's outcome arrives after its event");
    assert_eq!(changed(&mut run, &array_end("p0", 3, 0)).1, ["close files#1"]);
    // Its claim (which its submitter may never have recorded) is settled before the run is announced.
    let unsettled: Vec<String> = run.unsettled_claims().iter().map(render).collect();
    assert_eq!(unsettled, ["record files#1 array 0 p0"]);
}

#[test]
fn a_cancelled_map_stops_its_open_arrays_and_ends_cancelled_with_the_last_of_them() {
    let mut run = started(&mapped(0, Some(2)));
    put(&mut run, &MapExpanded { stage: "files", attempt: 1, children: Ok(5), lists: LISTS.into() });
    put(&mut run, &ArraySubmitted { stage: "files", attempt: 1, array: 0, job_id: "p0" });
    let (_, effects) = put(&mut run, &CancelRequested);
    assert_eq!(
        effects,
        ["stop p0 (cancelled)", "stop files by name (cancelled)"],
        "the open array by id; by name the one the run may have asked to submit (the next waited for it)"
    );
    assert_eq!(run.status, RunStatus::Cancelled);
    assert_eq!(run.stages["files"].status, StageStatus::Cancelled);
    assert!(put(&mut run, &Resume).1.is_empty(), "not announced while p0 goes on");
    let (_, effects) = changed(&mut run, &array_end("p0", 2, 2));
    assert_eq!(
        effects,
        ["withdraw files#1 array 1", "announce"],
        "the array the run may have asked to submit has its claim settled, then the run is announced"
    );
    let attempt = run.stages["files"].current().unwrap();
    assert_eq!(attempt.status, StageStatus::Cancelled);
}

#[test]
fn a_map_whose_run_failed_elsewhere_is_closed_once_its_arrays_end_and_only_then_announced() {
    let mut pipeline = mapped(0, None);
    pipeline.on_failure = None;
    pipeline.on_stage_failure = OnStageFailure::Finish;
    pipeline.stages.insert("other".into(), super::tests::stage(&[], Size { vcpu: Quarters(1), memory_mib: 512 }, 0));
    let mut run = started(&pipeline);
    put(&mut run, &MapExpanded { stage: "files", attempt: 1, children: Ok(3), lists: LISTS.into() });
    put(&mut run, &ArraySubmitted { stage: "files", attempt: 1, array: 0, job_id: "p0" });
    let other = run.to_submit().into_iter().find(|(s, _)| s == "other").unwrap().1;
    run.record_submitted("other", other.number, "o1", other.job_name.as_deref().unwrap(), 1_000);
    put(&mut run, &JobChanged { stage: "other", event: &parent("o1", "FAILED", json!({})) });
    assert_eq!(run.status, RunStatus::Failed);
    assert!(put(&mut run, &Resume).1.is_empty(), "the map goes on (Finish): nothing announced yet");
    // Its array ends: it is closed (results written), then judged, then the run announced.
    assert_eq!(changed(&mut run, &array_end("p0", 3, 0)).1, ["close files#1"]);
    let closed = MapClosed { stage: "files", attempt: 1, failed_items: vec![], failed_items_uri: None, billed: vec![] };
    assert_eq!(put(&mut run, &closed), (true, vec!["announce".to_owned()]));
    assert_eq!(run.stages["files"].status, StageStatus::Succeeded);
    assert_eq!(run.stages["report"].status, StageStatus::Skipped, "nothing planned after the run ended");
}

#[test]
fn a_map_failed_by_an_array_batch_refused_stays_failed_when_its_other_arrays_end() {
    let mut pipeline = mapped(0, None);
    pipeline.on_failure = None;
    pipeline.on_stage_failure = OnStageFailure::Finish;
    let mut run = started(&pipeline);
    put(&mut run, &MapExpanded { stage: "files", attempt: 1, children: Ok(12_000), lists: LISTS.into() });
    put(&mut run, &ArraySubmitted { stage: "files", attempt: 1, array: 0, job_id: "p0" });
    let refused = super::map::ArrayUnsubmittable { stage: "files", attempt: 1, array: 1, reason: "ClientException" };
    put(&mut run, &refused);
    assert_eq!(run.status, RunStatus::Failed);
    changed(&mut run, &array_end("p0", 10_000, 0));
    let attempt = run.stages["files"].current().unwrap();
    assert_eq!((run.stages["files"].status, attempt.status), (StageStatus::Failed, StageStatus::Failed));
    assert!(attempt.reason.as_deref().unwrap().contains("ClientException"), "{:?}", attempt.reason);
    assert!(run.maps_to_close().is_empty(), "a failed stage is not closed");
}

#[test]
fn a_map_cut_into_more_arrays_than_a_run_records_fails_saying_what_max_concurrency_would_do() {
    let mut run = started(&mapped(0, Some(10)));
    put(&mut run, &MapExpanded { stage: "files", attempt: 1, children: Ok(1_500), lists: LISTS.into() });
    assert_eq!(run.status, RunStatus::Failed);
    let why = run.reason.unwrap();
    assert!(why.contains("make 150 arrays") && why.contains("give MaxConcurrency 15 or more"), "{why}");
}

#[test]
fn a_map_is_priced_as_its_children_before_any_array_is_submitted() {
    // 0.25 vCPU and 512 MiB for 600 s: about $0.00206 a child, on demand.
    let mut pipeline = mapped(0, Some(400));
    pipeline.stages.get_mut("files").unwrap().expected_seconds = Some(600);
    pipeline.max_run_cost_usd = Some(1.5);

    // 1,000 children (about $2.06) pass $1.50: the run fails before submitting an array.
    let mut run = started(&pipeline);
    put(&mut run, &Resume);
    let expanded = MapExpanded { stage: "files", attempt: 1, children: Ok(1_000), lists: LISTS.into() };
    let (_, effects) = put(&mut run, &expanded);
    assert_eq!(run.status, RunStatus::Failed);
    assert_eq!(effects, ["submit on-failure#1"], "no array, no close: the map never ran");
    assert_eq!(run.stages["files"].status, StageStatus::Skipped);
    let reason = run.reason.clone().unwrap();
    assert!(reason.contains("MaxRunCostUsd of $1.50") && reason.contains("files array 2 of 200 children"), "{reason}");

    // 600 children, 400 at once (about $1.24 in all): the first array goes, and the second
    // once the first has ended (its 400 children spent at their estimate).
    let mut run = started(&pipeline);
    put(&mut run, &Resume);
    let expanded = MapExpanded { stage: "files", attempt: 1, children: Ok(600), lists: LISTS.into() };
    assert_eq!(put(&mut run, &expanded).1, ["submit files#1 array 0"]);
    put(&mut run, &ArraySubmitted { stage: "files", attempt: 1, array: 0, job_id: "p0" });
    assert_eq!(changed(&mut run, &array_end("p0", 400, 0)).1, ["submit files#1 array 1"]);
    assert_eq!(run.status, RunStatus::Running);

    // With $1.00 the whole map would pass it: the run fails before its first array.
    pipeline.max_run_cost_usd = Some(1.0);
    let mut run = started(&pipeline);
    put(&mut run, &Resume);
    let (_, effects) = put(&mut run, &expanded);
    assert_eq!(run.status, RunStatus::Failed, "{effects:?}");
    assert!(effects.iter().all(|e| !e.contains("array")), "{effects:?}");
    assert!(run.reason.as_deref().unwrap().contains("files array 1 of 200 children"));
}

#[test]
fn children_out_of_memory_are_resubmitted_one_size_up_as_often_as_the_stage_allows_and_then_count_as_failed() {
    let mut pipeline = mapped(1, None);
    pipeline.stages.get_mut("files").unwrap().max_resizes = 2;
    let mut run = started(&pipeline);
    let size = run.stages["files"].current().unwrap().size;
    put(&mut run, &Resume);
    put(&mut run, &MapExpanded { stage: "files", attempt: 1, children: Ok(250), lists: LISTS.into() });
    put(&mut run, &ArraySubmitted { stage: "files", attempt: 1, array: 0, job_id: "p0" });

    // THEN an array with failed children is checked before anything is judged or closed
    assert_eq!(changed(&mut run, &array_end("p0", 250, 3)).1, ["check files#1 array 0"]);
    assert_eq!(put(&mut run, &Resume).1, ["check files#1 array 0"], "owed until answered");
    let list = |k: usize| format!("{LISTS}resize-of-{k}.jsonl");
    let checked = ArrayChecked { stage: "files", attempt: 1, array: 0, out_of_memory: 3, list: list(0) };
    assert_eq!(put(&mut run, &checked), (true, vec!["submit files#1 array 1".into()]));
    assert!(!put(&mut run, &checked).0, "an array is checked once");
    let map = run.stages["files"].current().unwrap().map.clone().unwrap();
    let resubmission = map.arrays[1].resubmits.clone().unwrap();
    assert_eq!((map.arrays[1].size, resubmission.of, resubmission.step), (3, 0, 1));
    assert_eq!(resubmission.size, size.next_for_memory().unwrap());
    assert_eq!((map.succeeded(), map.failed(), map.resized()), (247, 0, 3));
    assert_eq!(map.item_list(1), list(0));

    // Two of the three out of memory again: resized once more (MaxResizes 2), then no more.
    put(&mut run, &ArraySubmitted { stage: "files", attempt: 1, array: 1, job_id: "p1" });
    assert_eq!(changed(&mut run, &array_end("p1", 3, 2)).1, ["check files#1 array 1"]);
    let again = ArrayChecked { stage: "files", attempt: 1, array: 1, out_of_memory: 2, list: list(1) };
    assert_eq!(put(&mut run, &again).1, ["submit files#1 array 2"]);
    put(&mut run, &ArraySubmitted { stage: "files", attempt: 1, array: 2, job_id: "p2" });
    assert_eq!(changed(&mut run, &array_end("p2", 2, 2)).1, ["close files#1"], "at the limit: failed for good");
    let map = run.stages["files"].current().unwrap().map.clone().unwrap();
    assert_eq!((map.succeeded(), map.failed(), map.resized()), (248, 2, 5));

    // Judged at the close: two failures, one tolerated.
    let closed = MapClosed {
        stage: "files",
        attempt: 1,
        failed_items: vec![failed_child(3), failed_child(17)],
        failed_items_uri: None,
        billed: vec![],
    };
    put(&mut run, &closed);
    assert_eq!(run.status, RunStatus::Failed);
    assert_eq!(run.reason.as_deref(), Some("stage files: 2 of 250 children failed; ToleratedFailures allows 1"));
}

#[test]
fn failed_children_none_of_them_out_of_memory_are_judged_as_before() {
    let mut pipeline = mapped(2, None);
    pipeline.stages.get_mut("files").unwrap().max_resizes = 1;
    let mut run = started(&pipeline);
    put(&mut run, &Resume);
    put(&mut run, &MapExpanded { stage: "files", attempt: 1, children: Ok(10), lists: LISTS.into() });
    put(&mut run, &ArraySubmitted { stage: "files", attempt: 1, array: 0, job_id: "p0" });
    assert_eq!(changed(&mut run, &array_end("p0", 10, 2)).1, ["check files#1 array 0"]);
    let checked = ArrayChecked { stage: "files", attempt: 1, array: 0, out_of_memory: 0, list: String::new() };
    assert_eq!(put(&mut run, &checked).1, ["close files#1"]);
    let map = run.stages["files"].current().unwrap().map.clone().unwrap();
    assert_eq!((map.arrays.len(), map.failed(), map.resized()), (1, 2, 0));
}

#[test]
fn children_out_of_memory_are_not_resubmitted_when_the_other_failures_already_fail_the_map() {
    let mut pipeline = mapped(1, None);
    pipeline.stages.get_mut("files").unwrap().max_resizes = 2;
    let mut run = started(&pipeline);
    put(&mut run, &Resume);
    put(&mut run, &MapExpanded { stage: "files", attempt: 1, children: Ok(10), lists: LISTS.into() });
    put(&mut run, &ArraySubmitted { stage: "files", attempt: 1, array: 0, job_id: "p0" });
    assert_eq!(changed(&mut run, &array_end("p0", 10, 3)).1, ["check files#1 array 0"]);
    // One of the three ran out of memory; the other two already pass a tolerance of one.
    let checked = ArrayChecked { stage: "files", attempt: 1, array: 0, out_of_memory: 1, list: "s3://x".into() };
    assert_eq!(put(&mut run, &checked).1, ["close files#1"]);
    let map = run.stages["files"].current().unwrap().map.clone().unwrap();
    assert_eq!((map.arrays.len(), map.failed(), map.resized()), (1, 3, 0));
}

#[test]
fn a_redriven_map_runs_only_its_unsuccessful_children_each_at_its_size_and_is_judged_whole() {
    let mut pipeline = mapped(1, None);
    pipeline.on_failure = None;
    let mut run = started(&pipeline);
    put(&mut run, &Resume);
    put(&mut run, &MapExpanded { stage: "files", attempt: 1, children: Ok(10), lists: LISTS.into() });
    put(&mut run, &ArraySubmitted { stage: "files", attempt: 1, array: 0, job_id: "p0" });
    changed(&mut run, &array_end("p0", 10, 3));
    let failed_items = vec![failed_child(3), failed_child(5), failed_child(7)];
    assert_eq!(
        put(&mut run, &MapClosed { stage: "files", attempt: 1, failed_items, failed_items_uri: None, billed: vec![] })
            .1,
        ["announce"]
    );
    assert_eq!(run.status, RunStatus::Failed);
    run.completion_sent = true;

    let (_, effects) = put(&mut run, &RedriveRequested { key: "k1", sizes: &BTreeMap::new(), request: None });
    assert_eq!(effects, ["publish RunsRedriven", "expand files#2"]);
    let attempt = run.stages["files"].current().unwrap();
    let redrive = attempt.map.as_ref().unwrap().redrive.clone().unwrap();
    assert_eq!((redrive.of, redrive.map_children, redrive.size), (1, 10, None));

    // The worker found two of them at the attempt's size and one at a larger (resized) one.
    let (small, large) = (attempt.size, Size { vcpu: Quarters(2), memory_mib: 4096 });
    let groups = Ok(vec![ChildrenAt { size: small, children: 2 }, ChildrenAt { size: large, children: 1 }]);
    let expanded = RedriveExpanded { stage: "files", attempt: 2, groups, lists: LISTS.into() };
    assert_eq!(put(&mut run, &expanded).1, ["submit files#2 array 0", "submit files#2 array 1"]);
    let map = run.stages["files"].current().unwrap().map.clone().unwrap();
    let arrays: Vec<_> = map.arrays.iter().map(|a| (a.size, a.child_size(small))).collect();
    assert_eq!(arrays, [(2, small), (1, large)]);
    assert_eq!((map.children, map.map_children()), (Some(3), 10));

    put(&mut run, &ArraySubmitted { stage: "files", attempt: 2, array: 0, job_id: "q0" });
    put(&mut run, &ArraySubmitted { stage: "files", attempt: 2, array: 1, job_id: "q1" });
    changed(&mut run, &array_end("q0", 2, 0));
    // One still fails: one failure of ten is within the tolerance of one, judged on the whole map.
    assert_eq!(changed(&mut run, &array_end("q1", 1, 1)).1, ["close files#2"]);
    let closed = MapClosed {
        stage: "files",
        attempt: 2,
        failed_items: vec![failed_child(7)],
        failed_items_uri: None,
        billed: vec![],
    };
    assert_eq!(put(&mut run, &closed).1, ["submit report#1"]);
    assert_eq!(run.stages["files"].status, StageStatus::Succeeded);
    let reason = run.stages["files"].current().unwrap().reason.clone();
    assert_eq!(reason.as_deref(), Some("1 of 10 children failed, within ToleratedFailures"));
}

#[test]
fn a_redrive_asking_a_size_runs_every_child_at_it_and_a_map_never_closed_is_run_whole() {
    let mut pipeline = mapped(0, None);
    pipeline.on_failure = None;
    let mut run = started(&pipeline);
    put(&mut run, &Resume);
    put(&mut run, &MapExpanded { stage: "files", attempt: 1, children: Ok(4), lists: LISTS.into() });
    put(&mut run, &ArraySubmitted { stage: "files", attempt: 1, array: 0, job_id: "p0" });
    changed(&mut run, &array_end("p0", 4, 1));
    put(
        &mut run,
        &MapClosed {
            stage: "files",
            attempt: 1,
            failed_items: vec![failed_child(0)],
            failed_items_uri: None,
            billed: vec![],
        },
    );
    run.completion_sent = true;
    let asked = Size { vcpu: Quarters(4), memory_mib: 8192 };
    let sizes = BTreeMap::from([("files".to_owned(), asked)]);
    put(&mut run, &RedriveRequested { key: "k1", sizes: &sizes, request: None });
    let attempt = run.stages["files"].current().unwrap();
    assert_eq!(attempt.size, asked);
    assert_eq!(attempt.map.as_ref().unwrap().redrive.as_ref().map(|r| r.size), Some(Some(asked)));

    // Cancelled before its children ran: nothing was closed, so a redrive lists the map again.
    let mut run = started(&pipeline);
    put(&mut run, &Resume);
    put(&mut run, &CancelRequested);
    run.completion_sent = true;
    assert_eq!(
        put(&mut run, &RedriveRequested { key: "k1", sizes: &BTreeMap::new(), request: None }).1.last().unwrap(),
        "expand files#2"
    );
    assert_eq!(run.stages["files"].current().unwrap().map.as_ref().unwrap().redrive, None);
}

#[test]
fn a_closed_maps_children_count_in_the_runs_cost_at_the_size_they_ran_at() {
    let mut run = started(&mapped(0, None));
    put(&mut run, &Resume);
    put(&mut run, &MapExpanded { stage: "files", attempt: 1, children: Ok(3), lists: LISTS.into() });
    put(&mut run, &ArraySubmitted { stage: "files", attempt: 1, array: 0, job_id: "p0" });
    changed(&mut run, &array_end("p0", 3, 0));
    let pricing = Pricing::on_demand(&PriceOverrides::default());
    assert_eq!(run.cost(&pricing).usd, 0.0, "nothing is known of the children before the close");
    // Three children, one retried: four tasks of a minute each.
    let billed = vec![vec![BilledSum { cluster: None, architecture: None, tasks: 4, seconds: 240 }]];
    let closed = MapClosed { stage: "files", attempt: 1, failed_items: vec![], failed_items_uri: None, billed };
    put(&mut run, &closed);
    let size = run.stages["files"].current().unwrap().size;
    let one_minute = pricing.estimate(size, 60);
    let cost = run.cost(&pricing);
    assert!((cost.usd - 4.0 * one_minute).abs() < 1e-12, "{} against {}", cost.usd, 4.0 * one_minute);
    assert_eq!(cost.stages["files"].tasks.iter().map(|t| t.billable_seconds).sum::<u64>(), 240);
}
