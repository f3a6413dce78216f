//! Budgets and deadlines: what a run cost, what its next submissions are estimated at, and when it has run too long.

use super::{Attempt, Context, Run, RunCost, RunStatus, StageStatus};
use crate::model::cost::{Cost, Pricing};
use crate::model::fargate::Size;
use crate::model::pipeline::ON_FAILURE;

/// Map children's estimated cost, by whether their array has ended.
#[derive(Debug, Default)]
struct ChildrenEstimate {
    ended: f64,
    running: f64,
    planned: f64,
    planned_arrays: Vec<String>,
}

impl Run {
    /// What the run's ended attempts cost (a running job is priced once it ends).
    pub fn cost(&self, pricing: &Pricing) -> RunCost {
        let mut total = RunCost::default();
        let stages =
            self.stages.iter().map(|(k, s)| (k.as_str(), s)).chain(self.on_failure.iter().map(|s| (ON_FAILURE, s)));
        for (name, stage_run) in stages {
            let mut stage = Cost::default();
            for attempt in &stage_run.attempts {
                stage.add(&attempt.cost(pricing));
            }
            total.usd += stage.usd;
            total.upper_bound |= stage.upper_bound;
            total.stages.insert(name.to_owned(), stage);
        }
        total
    }

    /// What an attempt of `stage` at `size` is expected to cost: for the stage's
    /// `ExpectedSeconds`, else its `TimeoutSeconds`, else the median of its attempts in this
    /// run that ended, else Fargate's one-minute minimum — priced on-demand.
    fn estimate(&self, stage: &str, size: Size, pricing: &Pricing) -> f64 {
        let declared = self.stage(stage).and_then(|s| s.expected_seconds.or(s.timeout_seconds));
        let seconds = declared.map(u64::from).or_else(|| {
            let stage_run = if stage == ON_FAILURE { self.on_failure.as_ref() } else { self.stages.get(stage) }?;
            let mut past: Vec<u64> = stage_run.attempts.iter().filter_map(Attempt::billed_seconds).collect();
            past.sort_unstable();
            past.get(past.len().checked_sub(1)? / 2).copied()
        });
        pricing.estimate(size, seconds.unwrap_or(0))
    }

    /// Why the submissions the run has planned may not go ahead, if they would take it past
    /// its `MaxRunCostUsd`: what it spent, plus the estimates of its jobs still running and
    /// of the planned ones. The failure stage is exempt: it never counts as planned.
    ///
    /// A map counts each child as a job of its stage at the attempt's size: all its arrays
    /// not yet submitted are planned (children × estimate: the whole map is priced once its
    /// items are listed, before its first array goes, and again before each next one), its
    /// open arrays' children are running, and its ended arrays' children are spent: at
    /// their estimate until the map is closed, then at what they cost (their tasks, summed
    /// by the close).
    pub fn over_budget(&self, pricing: &Pricing) -> Option<String> {
        let budget = self.pipeline.max_run_cost_usd?;
        if self.status != RunStatus::Running {
            return None;
        }
        let planned: Vec<(String, Attempt)> =
            self.to_submit().into_iter().filter(|(stage, _)| stage != ON_FAILURE).collect();
        if planned.is_empty() && self.arrays_to_submit().is_empty() {
            return None;
        }
        let children = self.map_children_estimate(pricing);
        let spent = self.cost(pricing).usd + children.ended;
        let running: f64 = self
            .open_jobs()
            .iter()
            .filter_map(|(stage, _)| Some((stage, self.stages.get(stage)?.current()?)))
            .filter(|(_, attempt)| attempt.map.is_none())
            .map(|(stage, attempt)| self.estimate(stage, attempt.size, pricing))
            .sum::<f64>()
            + children.running;
        let next = planned.iter().map(|(stage, attempt)| self.estimate(stage, attempt.size, pricing)).sum::<f64>()
            + children.planned;
        if spent + running + next <= budget {
            return None;
        }
        let mut what: Vec<String> =
            planned.iter().map(|(stage, a)| format!("{stage} attempt {} at {}", a.number, a.size)).collect();
        what.extend(children.planned_arrays);
        Some(format!(
            "the run would pass its MaxRunCostUsd of ${budget:.2}: spent ${spent:.4}, running jobs estimated at \
             ${running:.4}, next ({}) estimated at ${next:.4}",
            what.join(", ")
        ))
    }

    /// The estimated cost of the children of the current map attempts: of ended arrays,
    /// of arrays still going, and of the arrays still to be submitted (of a stage still
    /// going), all of them, so a map is priced whole before its first array goes.
    fn map_children_estimate(&self, pricing: &Pricing) -> ChildrenEstimate {
        let mut out = ChildrenEstimate::default();
        for (stage, stage_run) in self.stage_runs() {
            let Some(attempt) = stage_run.current() else { continue };
            let Some(map) = attempt.map.as_ref() else { continue };
            for (k, array) in map.arrays.iter().enumerate() {
                // Resubmitted children run at their own, larger size.
                let size = array.child_size(attempt.size);
                let each = self.estimate(stage, size, pricing);
                if array.is_open() {
                    out.running += array.size as f64 * each;
                } else if array.status.is_terminal() && array.job_id.is_some() && array.billed.is_empty() {
                    // Ended, not yet closed: once closed, its children's real cost is spent.
                    out.ended += (array.succeeded + array.failed) as f64 * each;
                } else if array.status == StageStatus::Submitting && !stage_run.status.is_terminal() {
                    out.planned += array.size as f64 * each;
                    out.planned_arrays.push(format!("{stage} array {k} of {} children at {size}", array.size));
                }
            }
        }
        out
    }

    /// Fails a running run whose planned submissions would pass its budget: nothing more is
    /// submitted but its failure stage. False if it is not running.
    pub fn fail_over_budget(&mut self, reason: String, now_ms: i64) -> bool {
        if self.status != RunStatus::Running {
            return false;
        }
        self.end(RunStatus::Failed, Some(reason), now_ms);
        true
    }

    /// Fails the run if what it has planned would pass its budget; true if it did.
    pub(super) fn enforce_budget(&mut self, ctx: &Context) -> bool {
        match self.over_budget(ctx.pricing) {
            Some(reason) => self.fail_over_budget(reason, ctx.now_ms),
            None => false,
        }
    }

    /// Whether the run is still running past its pipeline's `MaxRunSeconds` at `now_ms`.
    pub fn past_deadline(&self, now_ms: i64) -> bool {
        let limit = self.pipeline.max_run_seconds.map(|seconds| seconds as i64 * 1000);
        self.status == RunStatus::Running && limit.is_some_and(|limit| now_ms - self.started_at() > limit)
    }

    /// Judges the run's `MaxRunSeconds` at `now_ms`; true if it changed the run.
    /// - A RUNNING run past it fails: its jobs are to be stopped whatever the pipeline's
    ///   `OnStageFailure`, and its failure stage runs.
    /// - A FAILED run is held to it too, so every run can end: its stages' jobs still going
    ///   past it are stopped (under `OnStageFailure: Finish` they were left to finish), and
    ///   its failure stage's job gets `MaxRunSeconds` again, counted from the run's failure.
    pub fn fail_past_deadline(&mut self, now_ms: i64) -> bool {
        if self.past_deadline(now_ms) {
            let limit = self.pipeline.max_run_seconds.unwrap_or_default();
            let reason = format!("the run took longer than its MaxRunSeconds ({limit} s)");
            self.end(RunStatus::Failed, Some(reason), now_ms);
            self.stop_open_jobs = true;
            return true;
        }
        let Some(limit) = self.pipeline.max_run_seconds.map(|seconds| seconds as i64 * 1000) else { return false };
        if self.status != RunStatus::Failed {
            return false;
        }
        let open = self.open_jobs();
        let mut changed = false;
        if !self.stop_open_jobs && now_ms - self.started_at() > limit && open.iter().any(|(s, _)| s != ON_FAILURE) {
            self.stop_open_jobs = true;
            changed = true;
        }
        let failure_overdue = self.ended_at.is_some_and(|ended| now_ms - ended > limit);
        if !self.stop_everything && failure_overdue && open.iter().any(|(s, _)| s == ON_FAILURE) {
            self.stop_everything = true;
            changed = true;
        }
        changed
    }
}
