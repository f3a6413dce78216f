//! Map attempts: a map stage's children run as Batch array jobs, and the run records a handful of facts per array, never one per child.
//!
//! A map attempt ([`Attempt::map`]) goes through four steps, each an effect the run owes
//! until its answer comes back (so a crash anywhere is repaired by the next input):
//! 1. **Expand.** Planned, its children unknown: the run owes [`Effect::ExpandMap`]. The
//!    map worker lists the items (S3 work, outside the run driver), writes each array's
//!    item list, and answers [`MapExpanded`] with the number of children, or why there
//!    can be none. The first answer is the one kept: a second expansion of the same attempt
//!    changes nothing. A map without items succeeds there and then, with no children.
//! 2. **Submit.** Its arrays ([`crate::model::map::arrays`]) are owed as
//!    [`Effect::SubmitArray`]: all at once, or with `MaxConcurrency` one at a time, the
//!    next once the one before has ended. Each is submitted exactly once, under the key
//!    `run:<id>:<stage>:<n>:array:<k>`; the outcome comes back as [`ArraySubmitted`] or
//!    [`ArrayUnsubmittable`].
//! 3. **Fan in.** Batch reports an array's end on its parent, after its last child, with
//!    the children counted in `arrayProperties.statusSummary`: the counts are recorded on
//!    the array. Child events never reach a run (the runs lane leaves them out), so
//!    thousands of children never fight over the run's version.
//! 4. **Close.** Once no array is going and none is left to submit — or its failures have
//!    passed `ToleratedFailures`, when the rest are not submitted — the run owes
//!    [`Effect::CloseMap`]: the worker lists the failed children and writes
//!    `results.jsonl`, answering [`MapClosed`]. The map is then judged: within its
//!    tolerance the stage SUCCEEDS (with `failed > 0` perhaps) and the stages after it
//!    are planned; past it the stage fails, and the run with it.
//!
//! **Children out of memory.** An array that ends with failed children, while the stage
//! may still resize (its `MaxResizes`, counted per child, and a next size its queue runs),
//! owes [`Effect::CheckArray`]: the worker reads which children ran out of memory and
//! writes their lines to a list of their own, answering [`ArrayChecked`]; they become a
//! new array ([`Resubmission`]) one size up, submitted like the others, and the map is
//! not judged or closed until it ends. A map's cost is its children's, priced by their own
//! events in the metrics lane, not in the run's record. For `MaxRunCostUsd` a map counts its children at the stage's
//! estimate ([`Run::over_budget`]).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Applied, Attempt, Run, RunStatus, StageRun, StageStatus};
use crate::model::batch_event::{JobStateChangeEvent, JobStatus};
use crate::model::cost::BilledSum;
use crate::model::fargate::Size;
use crate::model::map::{judge, MapEnd, MapSpec};
use crate::model::pipeline::attempt_key;

/// The most failed children a run's record lists; the rest are in the map's results.
pub const MAX_LISTED_FAILURES: usize = 100;

mod inputs;
mod redrive;
mod resize;
pub use inputs::{ArrayChecked, ArrayFound, ArraySubmitted, ArrayUnsubmittable, MapClosed, MapExpanded};
pub use redrive::{ChildrenAt, MapRedrive, RedriveExpanded};
use resize::resize_of;
pub use resize::Resubmission;

/// A map attempt's progress: its children's number, and its arrays.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MapProgress {
    /// How many children the map has; unknown until its items are listed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub children: Option<usize>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub arrays: Vec<ArrayRun>,
    /// Whether its results were written and the map judged.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub closed: bool,
    /// Its failed children, at most [`MAX_LISTED_FAILURES`], as the close found them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_items: Vec<FailedChild>,
    /// Where every failed child is listed, when there are more than the record lists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_items_uri: Option<String>,
    /// The folder (an S3 URI ending in `/`) of its arrays' item lists, `array-<k>.jsonl`:
    /// the expansion's own, so a second expansion racing the first never overwrites the
    /// lists the first one's arrays read.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub lists: String,
    /// A redrive's attempt: it runs only the earlier attempt's unsuccessful children.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redrive: Option<MapRedrive>,
}

/// One array job of a map: a run of consecutive children, and how it went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArrayRun {
    /// The map index of its first child.
    pub first: usize,
    pub size: usize,
    pub job_name: String,
    #[serde(default)]
    pub job_id: Option<String>,
    pub status: StageStatus,
    #[serde(default)]
    pub succeeded: usize,
    #[serde(default)]
    pub failed: usize,
    #[serde(default)]
    pub submitted_at: Option<i64>,
    #[serde(default)]
    pub started_at: Option<i64>,
    #[serde(default)]
    pub stopped_at: Option<i64>,
    /// A resubmission: children of an earlier array that ran out of memory, one size up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resubmits: Option<Resubmission>,
    /// Ended with failed children the stage may resize: which of them ran out of memory is
    /// being read ([`Effect::CheckArray`](super::effects::Effect::CheckArray)).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub awaiting_check: bool,
    /// How many of its failed children ran out of memory and were resubmitted.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub resized: usize,
    /// The size its children run at when not the attempt's: a redrive's, at their last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runs_at: Option<Size>,
    /// Its job id came from an event, not from its submitter: its claim is settled before
    /// the run is announced (see [`Attempt::claim_unsettled`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub claim_unsettled: bool,
    /// Its children's tasks (every attempt of each), summed when the map was closed: what
    /// they cost.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub billed: Vec<BilledSum>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// A child that failed: its place in the map, its items, and how it ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FailedChild {
    pub index: usize,
    pub items: Vec<Value>,
    #[serde(default)]
    pub exit_code: Option<i64>,
    #[serde(default)]
    pub reason: Option<String>,
}

/// The idempotency key of an array's submission.
pub fn array_key(run_id: &str, stage: &str, attempt: u32, array: usize) -> String {
    format!("{}:array:{array}", attempt_key(run_id, stage, attempt))
}

impl ArrayRun {
    fn planned(run_id: &str, stage: &str, attempt: u32, array: usize, children: std::ops::Range<usize>) -> ArrayRun {
        let key = array_key(run_id, stage, attempt, array);
        ArrayRun {
            first: children.start,
            size: children.len(),
            job_name: crate::model::job_request::job_name(&format!("{run_id}-{stage}-a{attempt}-{array}"), &key),
            job_id: None,
            status: StageStatus::Submitting,
            succeeded: 0,
            failed: 0,
            submitted_at: None,
            started_at: None,
            stopped_at: None,
            resubmits: None,
            awaiting_check: false,
            resized: 0,
            runs_at: None,
            claim_unsettled: false,
            billed: Vec::new(),
        }
    }

    /// The size its children run at, in an attempt at `attempt_size`.
    pub fn child_size(&self, attempt_size: Size) -> Size {
        self.resubmits.as_ref().map(|r| r.size).or(self.runs_at).unwrap_or(attempt_size)
    }

    /// Whether an event is about this array's parent (or plain job): by its id, or —
    /// submitted but not yet recorded — by its name. A child's event is never its (the
    /// children carry the parent's name).
    fn is_job_of(&self, event: &JobStateChangeEvent) -> bool {
        let detail = &event.detail;
        if detail.is_array_child() {
            return false;
        }
        match &self.job_id {
            Some(job_id) => *job_id == detail.job_id,
            None => detail.job_name.as_deref() == Some(self.job_name.as_str()),
        }
    }

    /// Its failed children that were not resubmitted one size up.
    fn failed_for_good(&self) -> usize {
        self.failed - self.resized.min(self.failed)
    }

    /// Submitted and not ended.
    pub fn is_open(&self) -> bool {
        self.job_id.is_some() && !self.status.is_terminal()
    }

    /// Records how the array ended: its children counted from the parent's `statusSummary`.
    /// A SUCCEEDED parent's children all succeeded; of a FAILED one's, those not counted
    /// SUCCEEDED failed (a stopped array's children that never ran included). A plain job
    /// (an array of one) counts as its own child.
    fn record_end(&mut self, event: &JobStateChangeEvent, now_ms: i64) {
        let detail = &event.detail;
        let succeeded = if detail.status == JobStatus::Succeeded {
            self.size
        } else {
            let summary = detail.array_properties.as_ref().and_then(|a| a.status_summary.as_ref());
            let counted = summary.and_then(|s| s.get("SUCCEEDED")).copied().unwrap_or(0);
            usize::try_from(counted).unwrap_or(0).min(self.size)
        };
        self.succeeded = succeeded;
        self.failed = self.size - succeeded;
        self.status = if detail.status == JobStatus::Succeeded { StageStatus::Succeeded } else { StageStatus::Failed };
        self.stopped_at = detail.stopped_at.or(Some(now_ms));
    }
}

impl MapProgress {
    /// The S3 URI of array `array`'s item list.
    pub fn item_list(&self, array: usize) -> String {
        match self.arrays.get(array).and_then(|a| a.resubmits.as_ref()) {
            Some(resubmission) => resubmission.list.clone(),
            None => format!("{}array-{array}.jsonl", self.lists),
        }
    }

    /// How many children the map has in all: a redrive's attempt runs only some of them.
    pub fn map_children(&self) -> usize {
        self.redrive.as_ref().map_or(self.children.unwrap_or(0), |r| r.map_children)
    }

    pub fn succeeded(&self) -> usize {
        self.arrays.iter().map(|a| a.succeeded).sum()
    }

    /// Children that failed for good: not those resubmitted one size up.
    pub fn failed(&self) -> usize {
        self.arrays.iter().map(ArrayRun::failed_for_good).sum()
    }

    /// Children that ran out of memory and were resubmitted one size up (once per time).
    pub fn resized(&self) -> usize {
        self.arrays.iter().map(|a| a.resized).sum()
    }

    /// Whether any array is submitted and has not ended, or has ended and awaits the
    /// check of its failed children.
    pub fn is_open(&self) -> bool {
        self.arrays.iter().any(|a| a.is_open() || a.awaiting_check)
    }

    /// Whether its failures already pass what `spec` tolerates (an array awaiting its
    /// check counts none yet: some may be resized).
    fn past_tolerance(&self, spec: &MapSpec) -> bool {
        let children = self.map_children();
        let settled = self.arrays.iter().filter(|a| !a.awaiting_check);
        let failed: usize = settled.map(ArrayRun::failed_for_good).sum();
        failed > spec.tolerated_failures.allowed(children)
    }

    /// The arrays to submit now: every planned one, or with `MaxConcurrency` the first
    /// planned one once no other is going. None once its failures passed the tolerance.
    fn to_submit(&self, spec: &MapSpec) -> Vec<usize> {
        if self.closed || self.past_tolerance(spec) {
            return vec![];
        }
        let planned = self.arrays.iter().enumerate().filter(|(_, a)| a.status == StageStatus::Submitting);
        let planned = planned.map(|(k, _)| k);
        match spec.max_concurrency {
            Some(_) if self.is_open() => vec![],
            Some(_) => planned.take(1).collect(),
            None => planned.collect(),
        }
    }

    /// Whether every child has run (or the rest will not), so the map can be closed.
    fn is_ready_to_close(&self, spec: &MapSpec) -> bool {
        let waiting = self.arrays.iter().any(|a| a.status == StageStatus::Submitting);
        self.children.is_some_and(|n| n > 0)
            && !self.closed
            && !self.is_open()
            && (!waiting || self.past_tolerance(spec))
    }

    /// The planned arrays never submitted become `status` (the run gave them up).
    fn give_up_planned(&mut self, status: StageStatus) {
        for array in self.arrays.iter_mut().filter(|a| a.status == StageStatus::Submitting) {
            array.status = status;
        }
    }

    /// When its last array stopped.
    fn stopped_at(&self) -> Option<i64> {
        self.arrays.iter().filter_map(|a| a.stopped_at).max()
    }
}

/// A map stage's current attempt, its map and its spec, found by stage name and number.
pub(super) struct MapAt<'r> {
    pub(super) stage_run: &'r mut StageRun,
    pub(super) spec: MapSpec,
}

impl MapAt<'_> {
    pub(super) fn attempt(&mut self) -> &mut Attempt {
        self.stage_run.attempts.last_mut().expect("a map stage found has an attempt")
    }

    pub(super) fn map(&mut self) -> &mut MapProgress {
        self.attempt().map.as_mut().expect("a map attempt has a map")
    }
}

impl Run {
    /// Every stage with its run, the failure stage last.
    pub(super) fn stage_runs(&self) -> impl Iterator<Item = (&str, &StageRun)> {
        let stages = self.stages.iter().map(|(name, stage_run)| (name.as_str(), stage_run));
        stages.chain(self.on_failure.iter().map(|stage_run| (crate::model::pipeline::ON_FAILURE, stage_run)))
    }

    /// The current map attempts of stages still going, with their specs.
    fn going_maps(&self) -> impl Iterator<Item = (&str, &Attempt, &MapProgress, &MapSpec)> {
        let running = self.status == RunStatus::Running;
        self.stage_runs().filter(move |(_, s)| running && !s.status.is_terminal()).filter_map(|(name, stage_run)| {
            let attempt = stage_run.current()?;
            Some((name, attempt, attempt.map.as_ref()?, self.stage(name)?.map.as_ref()?))
        })
    }

    /// Map attempts whose items are still to be listed: `(stage, attempt number)`.
    pub fn maps_to_expand(&self) -> Vec<(String, u32)> {
        let unexpanded =
            self.going_maps().filter(|(_, a, map, _)| a.status == StageStatus::Submitting && map.children.is_none());
        unexpanded.map(|(stage, attempt, _, _)| (stage.to_owned(), attempt.number)).collect()
    }

    /// The arrays to submit now: `(stage, attempt, array)`.
    pub fn arrays_to_submit(&self) -> Vec<(String, Attempt, usize)> {
        let mut out = Vec::new();
        for (stage, attempt, map, spec) in self.going_maps() {
            out.extend(map.to_submit(spec).into_iter().map(|k| (stage.to_owned(), attempt.clone(), k)));
        }
        out
    }

    /// Map attempts to close (every child ran, or the rest will not): `(stage, attempt number)`.
    ///
    /// A run that ended meanwhile (another stage failed, and its map went on) still closes
    /// a map whose children ran, so its results are written and its stage says how it went;
    /// a cancelled map stage is not closed.
    pub fn maps_to_close(&self) -> Vec<(String, u32)> {
        let awaiting = self.stage_runs().filter(|(_, s)| !s.status.is_terminal()).filter_map(|(name, stage_run)| {
            let attempt = stage_run.current()?;
            Some((name, attempt, attempt.map.as_ref()?, self.stage(name)?.map.as_ref()?))
        });
        let ready = awaiting.filter(|(_, _, map, spec)| map.is_ready_to_close(spec));
        ready.map(|(stage, attempt, _, _)| (stage.to_owned(), attempt.number)).collect()
    }

    /// Arrays the run gave up before a job was recorded for them, whose submission claims
    /// are to be settled: `(stage, attempt number, array, job name)`.
    pub fn withdrawn_arrays(&self) -> Vec<(String, u32, usize, String)> {
        let mut out = Vec::new();
        for (stage, stage_run) in self.stage_runs() {
            let Some((attempt, map)) = stage_run.current().and_then(|a| Some((a, a.map.as_ref()?))) else { continue };
            let given_up = map.arrays.iter().enumerate().filter(|(_, a)| {
                matches!(a.status, StageStatus::Cancelled | StageStatus::Skipped) && a.job_id.is_none()
            });
            // Only an array the run ever asked to submit may have a job: with MaxConcurrency,
            // the first one given up (the rest waited for it); without, any of them.
            let one_at_a_time =
                self.stage(stage).and_then(|s| s.map.as_ref()).is_some_and(|m| m.max_concurrency.is_some());
            let asked = given_up.take(if one_at_a_time { 1 } else { usize::MAX });
            out.extend(asked.map(|(k, a)| (stage.to_owned(), attempt.number, k, a.job_name.clone())));
        }
        out
    }

    /// The open arrays of every map attempt: `(stage, job id)`.
    pub(super) fn open_arrays(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (stage, stage_run) in self.stage_runs() {
            let Some(map) = stage_run.current().and_then(|a| a.map.as_ref()) else { continue };
            let open = map.arrays.iter().filter(|a| a.is_open()).filter_map(|a| a.job_id.clone());
            out.extend(open.map(|job_id| (stage.to_owned(), job_id)));
        }
        out
    }

    /// The current attempt of `stage` when it is the map attempt numbered `attempt`.
    pub(super) fn map_at(&mut self, stage: &str, attempt: u32) -> Option<MapAt<'_>> {
        let spec = self.stage(stage)?.map.clone()?;
        let stage_run = self.stage_run_mut(stage)?;
        let current = stage_run.current()?;
        (current.number == attempt && current.map.is_some()).then_some(MapAt { stage_run, spec })
    }

    /// Ends a map attempt: the attempt and its stage become `status`, saying `reason`.
    pub(super) fn end_map_attempt(at: &mut MapAt, status: StageStatus, reason: Option<String>, now_ms: i64) {
        let stopped_at = at.map().stopped_at().unwrap_or(now_ms);
        let attempt = at.attempt();
        attempt.status = status;
        attempt.reason = reason;
        attempt.stopped_at = Some(stopped_at);
        at.stage_run.status = status;
    }

    /// Records an array's submission; false when it is not the planned array of the
    /// current attempt any more. An array the run gave up meanwhile is recorded too (so the
    /// run waits for its end), and its job is to be stopped: `Some(true)` says so.
    pub(super) fn record_array_submitted(
        &mut self,
        stage: &str,
        attempt: u32,
        array: usize,
        job_id: &str,
        now_ms: i64,
    ) -> Option<bool> {
        let mut at = self.map_at(stage, attempt)?;
        let planned_stage = at.stage_run.status == StageStatus::Submitting;
        let slot = at.map().arrays.get_mut(array)?;
        if slot.job_id.is_some() {
            return None;
        }
        let given_up = matches!(slot.status, StageStatus::Cancelled | StageStatus::Skipped);
        if slot.status != StageStatus::Submitting && !given_up {
            return None;
        }
        slot.job_id = Some(job_id.to_owned());
        slot.submitted_at = Some(now_ms);
        slot.status = StageStatus::Submitted;
        if !given_up {
            let attempt = at.attempt();
            attempt.submitted_at.get_or_insert(now_ms);
            if planned_stage {
                attempt.status = StageStatus::Submitted;
                at.stage_run.status = StageStatus::Submitted;
            }
        }
        Some(given_up)
    }

    /// Applies a Batch state change of one of a map attempt's arrays: progress moves the
    /// stage on, an end records the array's counts. What the map then owes (the next
    /// array, its close) is read off the state ([`Run::owed`](super::Run::owed)). Once the
    /// run has ended, the map's stage ends with its last array.
    pub(super) fn apply_to_map(&mut self, stage: &str, event: &JobStateChangeEvent, now_ms: i64) -> Applied {
        let run_ended = self.status.is_terminal() && stage != crate::model::pipeline::ON_FAILURE;
        let Some(number) = self.current_attempt(stage).map(|a| a.number) else {
            return Applied::Unchanged("the stage has no attempt");
        };
        let rule = self.resize_rule(stage);
        let Some(mut at) = self.map_at(stage, number) else { return Applied::Unchanged("the stage is not a map") };
        let Some(k) = at.map().arrays.iter().position(|a| a.is_job_of(event)) else {
            return Applied::Unchanged("the event is for another attempt");
        };
        let stage_status = at.stage_run.status;
        let array = &mut at.map().arrays[k];
        if array.status.is_terminal() {
            return Applied::Unchanged("the array has already ended");
        }
        let detail = &event.detail;
        if array.job_id.is_none() {
            array.job_id = Some(detail.job_id.clone());
            array.claim_unsettled = true;
        }
        array.started_at = detail.started_at.or(array.started_at);
        if !detail.status.is_terminal() {
            let status = match detail.status {
                JobStatus::Starting | JobStatus::Running => StageStatus::Running,
                _ => StageStatus::Submitted,
            };
            if run_ended || array.status == status || array.status == StageStatus::Running {
                return Applied::Unchanged("no progress");
            }
            array.status = status;
            let starts_stage = matches!(stage_status, StageStatus::Submitting | StageStatus::Submitted);
            if status == StageStatus::Running && starts_stage {
                at.attempt().status = StageStatus::Running;
                at.stage_run.status = StageStatus::Running;
            }
            return Applied::Changed;
        }
        array.record_end(event, now_ms);
        let (failed, step) = (array.failed, array.resubmits.as_ref().map_or(0, |r| r.step));
        let attempt_size = at.attempt().size;
        let size = at.map().arrays[k].child_size(attempt_size);
        if failed > 0 && !run_ended && resize_of(rule, step, size).is_some() {
            at.map().arrays[k].awaiting_check = true;
        }
        if run_ended && !at.map().is_open() && stage_status.is_terminal() {
            // The run ended and gave the stage its status (cancelled, or failed by an array
            // that could not be submitted): the attempt ends with its last array, as its stage.
            let reason = at.attempt().reason.clone();
            Self::end_map_attempt(&mut at, stage_status, reason, now_ms);
        }
        // Otherwise a map whose children ran is closed, run ended or not (`maps_to_close`).
        Applied::Changed
    }

    /// Records a map's close (see [`MapClosed`]) and judges it against its tolerance: the
    /// stage succeeds and the stages after it are planned, or it fails the run. False when
    /// the attempt is not the one awaiting its close.
    pub(super) fn record_close(&mut self, closed: &MapClosed, now_ms: i64) -> bool {
        let stage = closed.stage;
        let running = self.status == RunStatus::Running;
        let Some(mut at) = self.map_at(stage, closed.attempt) else { return false };
        let spec = at.spec.clone();
        if at.stage_run.status.is_terminal() || !at.map().is_ready_to_close(&spec) {
            return false;
        }
        let map = at.map();
        map.closed = true;
        map.failed_items = closed.failed_items.iter().take(MAX_LISTED_FAILURES).cloned().collect();
        map.failed_items_uri = closed.failed_items_uri.clone();
        for (array, billed) in map.arrays.iter_mut().zip(&closed.billed) {
            array.billed = billed.clone();
        }
        map.give_up_planned(StageStatus::Skipped);
        let children = map.map_children();
        let never_ran = |a: &&ArrayRun| matches!(a.status, StageStatus::Skipped | StageStatus::Cancelled);
        let not_run: usize = map.arrays.iter().filter(never_ran).map(|a| a.size).sum();
        match judge(children, map.failed() + not_run, spec.tolerated_failures) {
            MapEnd::Succeeded { failed } => {
                let reason =
                    (failed > 0).then(|| format!("{failed} of {children} children failed, within ToleratedFailures"));
                Self::end_map_attempt(&mut at, StageStatus::Succeeded, reason, now_ms);
                if running {
                    self.stage_succeeded(now_ms);
                }
            }
            MapEnd::Failed { failed, allowed } => {
                let skipped = if not_run > 0 { format!(" ({not_run} never ran)") } else { String::new() };
                let why =
                    format!("{failed} of {children} children failed{skipped}; ToleratedFailures allows {allowed}");
                Self::end_map_attempt(&mut at, StageStatus::Failed, Some(why.clone()), now_ms);
                if running {
                    self.end(RunStatus::Failed, Some(format!("stage {stage}: {why}")), now_ms);
                }
            }
        }
        true
    }

    /// When the run ends: every map attempt's arrays not yet submitted become `unstarted`,
    /// and a map with nothing going ends with its stage.
    pub(super) fn settle_maps(&mut self, unstarted: StageStatus, now_ms: i64) {
        let names: Vec<String> = self.stage_runs().map(|(name, _)| name.to_owned()).collect();
        for stage in names {
            let Some(number) = self.current_attempt(&stage).filter(|a| a.map.is_some()).map(|a| a.number) else {
                continue;
            };
            let Some(mut at) = self.map_at(&stage, number) else { continue };
            at.map().give_up_planned(unstarted);
            // Nothing is resubmitted for a run that ended: its failed children stay failed.
            for array in &mut at.map().arrays {
                array.awaiting_check = false;
            }
            let stage_status = at.stage_run.status;
            let map = at.map();
            // A map none of whose children ever ran ends here; one whose children ran, once
            // nothing of it is going, is closed (`maps_to_close`), unless it was cancelled.
            let never_ran = map.children.is_none() || map.arrays.iter().all(|a| a.job_id.is_none());
            let done = !map.is_open() && (never_ran || stage_status.is_terminal());
            if done && !at.attempt().status.is_terminal() {
                let status = if stage_status.is_terminal() { stage_status } else { unstarted };
                Self::end_map_attempt(&mut at, status, None, now_ms);
            }
        }
    }
}
