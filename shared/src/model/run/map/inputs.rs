//! The map worker's answers and the outcomes of a map's submissions, as inputs to the run (see the parent module for a map attempt's life).

use super::super::effects::{Effect, Input, Step};
use super::super::{Context, JobRef, Run, RunStatus, StageStatus};
use super::FailedChild;

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
        let changed = run.record_expansion(self, ctx.now_ms);
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
