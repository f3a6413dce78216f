//! Planning what to submit: stages whose upstreams succeeded get their next attempt, recorded before anything is submitted; how a run ends.

use std::collections::BTreeSet;

use super::map::MapRedrive;
use super::{Attempt, MapProgress, Run, RunStatus, StageRun, StageStatus};
use crate::model::pipeline::{OnStageFailure, ON_FAILURE};

impl Run {
    /// Every stage (the failure stage included) whose current attempt is planned but not
    /// yet submitted: what the driver must submit.
    pub fn to_submit(&self) -> Vec<(String, Attempt)> {
        let mut out: Vec<(String, Attempt)> = self
            .stages
            .iter()
            .filter(|(_, s)| s.status == StageStatus::Submitting)
            .filter_map(|(k, s)| Some((k.clone(), s.current()?.clone())))
            .filter(|(_, attempt)| attempt.map.is_none())
            .collect();
        if let Some(failure) = self.on_failure.as_ref().filter(|s| s.status == StageStatus::Submitting) {
            out.extend(failure.current().map(|a| (ON_FAILURE.to_owned(), a.clone())));
        }
        out
    }

    /// Records that a planned attempt was submitted as `job_id`.
    pub fn record_submitted(&mut self, stage: &str, attempt: u32, job_id: &str, job_name: &str, now_ms: i64) -> bool {
        let Some(stage_run) = self.stage_run_mut(stage) else { return false };
        if stage_run.status != StageStatus::Submitting {
            return false;
        }
        let Some(current) = stage_run.attempts.last_mut().filter(|a| a.number == attempt) else { return false };
        current.job_id = Some(job_id.to_owned());
        // Its submitter recorded it on the claim before saying so.
        current.claim_unsettled = false;
        current.job_name = Some(job_name.to_owned());
        current.status = StageStatus::Submitted;
        current.submitted_at = Some(now_ms);
        stage_run.status = StageStatus::Submitted;
        true
    }

    /// Fails a planned attempt that can never be submitted (its job definition or queue is
    /// gone, or Batch refuses the job): the stage fails, and the run with it — its failure
    /// stage then planned — unless the stage is the failure stage itself. False when the
    /// attempt is no longer the planned one.
    pub fn fail_unsubmittable(&mut self, stage: &str, attempt: u32, reason: &str, now_ms: i64) -> bool {
        let Some(stage_run) = self.stage_run_mut(stage) else { return false };
        if stage_run.status != StageStatus::Submitting {
            return false;
        }
        let Some(current) = stage_run.attempts.last_mut().filter(|a| a.number == attempt) else { return false };
        current.status = StageStatus::Failed;
        current.reason = Some(format!("could not be submitted: {reason}"));
        current.stopped_at = Some(now_ms);
        stage_run.status = StageStatus::Failed;
        if stage != ON_FAILURE && !self.status.is_terminal() {
            self.end(RunStatus::Failed, Some(format!("stage {stage} could not be submitted: {reason}")), now_ms);
        }
        true
    }

    /// Plans the first attempt of every pending stage whose upstream stages all succeeded.
    pub(super) fn plan_ready_stages(&mut self) {
        if self.status != RunStatus::Running {
            return;
        }
        let succeeded: BTreeSet<String> =
            self.stages.iter().filter(|(_, s)| s.status == StageStatus::Succeeded).map(|(k, _)| k.clone()).collect();
        let ready: Vec<String> = self
            .pipeline
            .stages
            .iter()
            .filter(|(key, stage)| {
                self.stages.get(*key).is_some_and(|s| s.status == StageStatus::Pending)
                    && stage.after.iter().all(|u| succeeded.contains(u))
            })
            .map(|(key, _)| key.clone())
            .collect();
        for key in ready {
            let declared = self.pipeline.stages[&key].size;
            if let Some(stage_run) = self.stages.get_mut(&key) {
                // Attempt numbers go on across redrives, so no submission key is used twice;
                // a redriven stage starts at the size it asked for, else its last one.
                let number = stage_run.attempts.len() as u32 + 1;
                let last = stage_run.current().map(|a| a.size);
                let asked = stage_run.next_size.take();
                let size = asked.or(last).unwrap_or(declared);
                let mut attempt = Attempt::planned(&self.run_id, &key, number, size);
                if self.pipeline.stages[&key].map.is_some() {
                    // A map attempt has no job of its own: its arrays are its jobs. Redriven
                    // after a closed attempt, it runs only that one's unsuccessful children.
                    attempt.job_name = None;
                    let redrive = stage_run.current().and_then(|previous| MapRedrive::of_attempt(previous, asked));
                    attempt.map = Some(MapProgress { redrive, ..MapProgress::default() });
                }
                stage_run.attempts.push(attempt);
                stage_run.status = StageStatus::Submitting;
            }
        }
    }

    /// After a stage succeeded (at `at`): the run succeeds if every stage has, or the
    /// stages it unblocks are planned.
    pub(super) fn stage_succeeded(&mut self, at: i64) {
        if self.stages.values().all(|s| s.status == StageStatus::Succeeded) {
            self.end(RunStatus::Succeeded, None, at);
        } else {
            self.plan_ready_stages();
        }
    }

    /// Ends the run: stages that never started are skipped (cancelled, for a cancel); on
    /// failure the failure stage is planned.
    pub(super) fn end(&mut self, status: RunStatus, reason: Option<String>, now_ms: i64) {
        if status == RunStatus::Failed && self.pipeline.on_stage_failure == OnStageFailure::Terminate {
            self.stop_open_jobs = true;
        }
        self.status = status;
        self.reason = reason;
        self.ended_at = Some(now_ms);
        let unstarted = if status == RunStatus::Cancelled { StageStatus::Cancelled } else { StageStatus::Skipped };
        self.settle_maps(unstarted, now_ms);
        for stage_run in self.stages.values_mut() {
            match stage_run.status {
                StageStatus::Pending => stage_run.status = unstarted,
                // Planned but never submitted: nothing to stop.
                StageStatus::Submitting => {
                    stage_run.status = unstarted;
                    if let Some(attempt) = stage_run.attempts.last_mut() {
                        attempt.status = unstarted;
                    }
                }
                _ => {}
            }
        }
        if status == RunStatus::Failed {
            if let Some(stage) = &self.pipeline.on_failure {
                // A redriven run that fails again runs it again, as its next attempt.
                let failure = self.on_failure.get_or_insert_with(|| StageRun::new(StageStatus::Pending, vec![]));
                let number = failure.attempts.len() as u32 + 1;
                failure.attempts.push(Attempt::planned(&self.run_id, ON_FAILURE, number, stage.size));
                failure.status = StageStatus::Submitting;
            }
        }
    }
}
