//! The map worker's answers and the outcomes of a map's submissions, as inputs to the run (see the parent module for a map attempt's life).

use super::super::effects::{Effect, Input, Step};
use super::super::{Context, JobRef, Run, RunStatus, StageStatus};
use super::{ArrayRun, FailedChild};
use crate::model::cost::BilledSum;
use crate::model::fargate::Size;
use crate::model::map::{arrays, too_large, MAX_MAP_ARRAYS};

/// The map worker listed a map attempt's items and wrote its arrays' item lists under
/// `lists`: it has `children` children, or none can be had (`Err`: why, which fails the
/// stage).
pub struct MapExpanded<'a> {
    pub stage: &'a str,
    pub attempt: u32,
    pub children: Result<usize, String>,
    pub lists: String,
}

impl Input for MapExpanded<'_> {
    type Answer = bool;

    fn take(&self, run: &mut Run, ctx: &Context) -> Step<bool> {
        let groups = self.children.clone().map(|n| vec![(None, n)]);
        let changed = run.record_children(self.stage, self.attempt, groups, &self.lists, ctx.now_ms);
        Step { changed, answer: changed, effects: vec![] }
    }
}

/// An array of a map attempt was submitted as this job.
pub struct ArraySubmitted<'a> {
    pub stage: &'a str,
    pub attempt: u32,
    pub array: usize,
    pub job_id: &'a str,
}

impl Input for ArraySubmitted<'_> {
    type Answer = ();

    fn take(&self, run: &mut Run, ctx: &Context) -> Step<()> {
        let Some(given_up) = run.record_array_submitted(self.stage, self.attempt, self.array, self.job_id, ctx.now_ms)
        else {
            return Step { changed: false, answer: (), effects: vec![] };
        };
        // The run gave the array up while it was being submitted: its job is stopped, and
        // recorded, so the run waits for its end.
        let stop = given_up.then(|| Effect::Stop {
            stage: self.stage.to_owned(),
            attempt: self.attempt,
            job: JobRef::Id(self.job_id.to_owned()),
            reason: run.late_job_reason(),
        });
        Step { changed: true, answer: (), effects: stop.into_iter().collect() }
    }
}

/// An array the run gave up before recording a job turned out to have one (found by its
/// name when its claim was settled, and stopped): recorded, so the run waits for its end.
pub struct ArrayFound<'a> {
    pub stage: &'a str,
    pub attempt: u32,
    pub array: usize,
    pub job_id: &'a str,
}

impl Input for ArrayFound<'_> {
    type Answer = ();

    fn take(&self, run: &mut Run, ctx: &Context) -> Step<()> {
        let changed =
            run.record_array_submitted(self.stage, self.attempt, self.array, self.job_id, ctx.now_ms) == Some(true);
        Step { changed, answer: (), effects: vec![] }
    }
}

/// An array of a map attempt can never be submitted (its job definition or queue is gone,
/// or Batch refuses it): the stage fails, and the run with it.
pub struct ArrayUnsubmittable<'a> {
    pub stage: &'a str,
    pub attempt: u32,
    pub array: usize,
    pub reason: &'a str,
}

impl Input for ArrayUnsubmittable<'_> {
    type Answer = ();

    fn take(&self, run: &mut Run, ctx: &Context) -> Step<()> {
        let running = run.status == RunStatus::Running;
        let Some(mut at) = run.map_at(self.stage, self.attempt) else {
            return Step { changed: false, answer: (), effects: vec![] };
        };
        let planned = at.map().arrays.get(self.array).is_some_and(|a| a.status == StageStatus::Submitting);
        if !running || !planned || at.stage_run.status.is_terminal() {
            return Step { changed: false, answer: (), effects: vec![] };
        }
        at.map().arrays[self.array].status = StageStatus::Failed;
        let why = format!("could not be submitted: {}", self.reason);
        Run::end_map_attempt(&mut at, StageStatus::Failed, Some(why), ctx.now_ms);
        let reason = format!("stage {} could not be submitted: {}", self.stage, self.reason);
        run.end(RunStatus::Failed, Some(reason), ctx.now_ms);
        Step { changed: true, answer: (), effects: vec![] }
    }
}

/// The map worker wrote a map attempt's results: its failed children (the first
/// [`MAX_LISTED_FAILURES`] of them), and where they are all listed.
pub struct MapClosed<'a> {
    pub stage: &'a str,
    pub attempt: u32,
    pub failed_items: Vec<FailedChild>,
    pub failed_items_uri: Option<String>,
    /// Each array's children's tasks, summed, in the order of the map's arrays.
    pub billed: Vec<Vec<BilledSum>>,
}

impl Input for MapClosed<'_> {
    type Answer = bool;

    fn take(&self, run: &mut Run, ctx: &Context) -> Step<bool> {
        let changed = run.record_close(self, ctx.now_ms);
        Step { changed, answer: changed, effects: vec![] }
    }
}

/// The map worker read which of an ended array's failed children ran out of memory:
/// `out_of_memory` of them, whose lines (each keeping its map index) it wrote to `list`.
/// They are resubmitted there as one array (one child: a plain job) one size up.
pub struct ArrayChecked<'a> {
    pub stage: &'a str,
    pub attempt: u32,
    pub array: usize,
    pub out_of_memory: usize,
    pub list: String,
}

impl Input for ArrayChecked<'_> {
    type Answer = bool;

    fn take(&self, run: &mut Run, ctx: &Context) -> Step<bool> {
        let changed = run.record_check(self, ctx.now_ms);
        Step { changed, answer: changed, effects: vec![] }
    }
}

impl Run {
    /// Records the children a map attempt's expansion found (see [`MapExpanded`],
    /// [`RedriveExpanded`]): runs of children, each at its own size or the attempt's
    /// (`None`), or why there can be none. False when the attempt is not the one awaiting
    /// expansion (expanded already, or given up).
    pub(super) fn record_children(
        &mut self,
        stage: &str,
        attempt: u32,
        groups: Result<Vec<(Option<Size>, usize)>, String>,
        lists: &str,
        now_ms: i64,
    ) -> bool {
        let run_id = self.run_id.clone();
        let running = self.status == RunStatus::Running;
        let Some(mut at) = self.map_at(stage, attempt) else { return false };
        if !running || at.stage_run.status != StageStatus::Submitting || at.map().children.is_some() {
            return false;
        }
        let max_concurrency = at.spec.max_concurrency;
        let n: usize = groups.as_ref().map_or(0, |groups| groups.iter().map(|(_, n)| n).sum());
        // Each run of children at one size is cut into arrays of its own.
        let mut planned: Vec<(Option<Size>, usize)> = Vec::new();
        for (size, children) in groups.as_ref().map_or(&[][..], Vec::as_slice) {
            planned.extend(arrays(*children, max_concurrency).into_iter().map(|r| (*size, r.len())));
        }
        let failure = match &groups {
            Err(why) => Some(why.clone()),
            Ok(_) => too_large(n, max_concurrency).or_else(|| {
                (planned.len() > MAX_MAP_ARRAYS).then(|| {
                    format!("its {n} children at their sizes make {} arrays, more than a map may have", planned.len())
                })
            }),
        };
        if let Some(why) = failure {
            Self::end_map_attempt(&mut at, StageStatus::Failed, Some(why.clone()), now_ms);
            self.end(RunStatus::Failed, Some(format!("stage {stage}: {why}")), now_ms);
            return true;
        }
        let map = at.map();
        map.children = Some(n);
        map.lists = lists.to_owned();
        let mut first = 0;
        for (k, (size, len)) in planned.into_iter().enumerate() {
            let mut array = ArrayRun::planned(&run_id, stage, attempt, k, first..first + len);
            array.runs_at = size;
            map.arrays.push(array);
            first += len;
        }
        if n == 0 {
            map.closed = true;
            let reason = match map.redrive {
                Some(_) => "every child of the map had succeeded: none ran again",
                None => "the map had no items: no children ran",
            };
            let reason = Some(reason.to_owned());
            Self::end_map_attempt(&mut at, StageStatus::Succeeded, reason, now_ms);
            self.stage_succeeded(now_ms);
        }
        true
    }
}
