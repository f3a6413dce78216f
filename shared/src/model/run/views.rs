//! Views of a run: its open jobs, what its failure stops or withdraws, whether it is ready to announce, and its timing.

use super::{Attempt, JobToStop, Run, RunStatus, StageStatus};
use crate::model::pipeline::ON_FAILURE;

impl Run {
    /// The current attempt of a stage (the failure stage included).
    pub fn current_attempt(&self, stage: &str) -> Option<&Attempt> {
        let stage_run = if stage == ON_FAILURE { self.on_failure.as_ref() } else { self.stages.get(stage) }?;
        stage_run.current()
    }

    /// The attempt of `stage` whose job is `job_id`.
    pub fn attempt_of_job(&self, stage: &str, job_id: &str) -> Option<&Attempt> {
        self.stages.get(stage)?.attempts.iter().find(|a| a.job_id.as_deref() == Some(job_id))
    }

    /// Whether the run gave `attempt` of `stage` up (cancelled it, or skipped it when it
    /// failed) before a job was recorded for it.
    pub fn gave_up(&self, stage: &str, attempt: u32) -> bool {
        self.current_attempt(stage).is_some_and(|current| {
            current.number == attempt
                && current.map.is_none()
                && matches!(current.status, StageStatus::Cancelled | StageStatus::Skipped)
                && current.job_id.is_none()
        })
    }

    /// The jobs the run stops, as `(stage, job id)`, while they go on: a CANCELLED run's, all
    /// of them; a FAILED run's, its stages' jobs when its failure stops them (fail fast, or
    /// its deadline passed), and its failure stage's too once a user stopped the run or the
    /// failure stage's own deadline passed.
    pub fn jobs_to_stop(&self) -> Vec<(String, String)> {
        let open = self.open_jobs().into_iter();
        match self.status {
            RunStatus::Cancelled => open.collect(),
            RunStatus::Failed if self.stop_everything => open.collect(),
            RunStatus::Failed if self.stop_open_jobs => open.filter(|(stage, _)| stage != ON_FAILURE).collect(),
            _ => vec![],
        }
    }

    /// Attempts the run's failure skipped while they were being submitted: a job may exist
    /// for each (a submission under way, or one whose submitter died after SubmitJob), to
    /// be found by its deterministic name and stopped.
    pub fn skipped_submissions(&self) -> Vec<JobToStop> {
        let given_up = self.withdrawn_attempts().into_iter();
        let skipped = given_up.filter(|(_, attempt)| attempt.status == StageStatus::Skipped);
        let named = skipped.filter_map(|(stage, attempt)| {
            let job_name = Some(attempt.job_name.clone()?);
            Some(JobToStop { stage: stage.to_owned(), attempt: attempt.number, job_id: None, job_name })
        });
        named.collect()
    }

    /// Attempts the run gave up (cancelled, or skipped by its failure or a user's stop)
    /// before a job was recorded for them: their submission claims are to be settled (the
    /// driver's `Withdraw` effect), each as `(stage, attempt)`.
    pub fn withdrawn_attempts(&self) -> Vec<(&str, &Attempt)> {
        let stages = self.stages.iter().map(|(name, stage_run)| (name.as_str(), stage_run));
        let stages = stages.chain(self.on_failure.iter().map(|stage_run| (ON_FAILURE, stage_run)));
        let given_up = stages.filter_map(|(name, stage_run)| {
            let attempt = stage_run.current()?;
            // A map attempt has no job of its own: its arrays are withdrawn one by one.
            let withdrawn = matches!(attempt.status, StageStatus::Cancelled | StageStatus::Skipped);
            (withdrawn && attempt.job_id.is_none() && attempt.map.is_none()).then_some((name, attempt))
        });
        given_up.collect()
    }

    /// Whether the run's outcome is final and every job it started has ended (its failure
    /// stage included): the moment to announce it, once.
    pub fn ready_to_announce(&self) -> bool {
        self.status.is_terminal()
            && !self.completion_sent
            && self.to_submit().is_empty()
            && self.open_jobs().is_empty()
            && self.maps_to_close().is_empty()
    }

    /// Whether nothing is left to do for the run: it ended and its completion went out.
    /// Until then it is on the open-run list the sweep visits.
    pub fn is_done_with(&self) -> bool {
        self.status.is_terminal() && self.completion_sent
    }

    /// When the run's current generation started: its creation, or its last redrive.
    pub fn started_at(&self) -> i64 {
        self.redrives.last().map_or(self.created_at, |redrive| redrive.at)
    }

    /// The current generation's duration so far, or in all if it ended.
    pub fn duration_ms(&self, now_ms: i64) -> i64 {
        self.ended_at.unwrap_or(now_ms) - self.started_at()
    }

    /// Stages whose current attempt has a job that has not ended (a map attempt, each of
    /// its arrays submitted and not ended): what a repair sweep checks.
    pub fn open_jobs(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let stages =
            self.stages.iter().map(|(k, s)| (k.as_str(), s)).chain(self.on_failure.iter().map(|s| (ON_FAILURE, s)));
        for (name, stage_run) in stages {
            if let Some(job) = stage_run.current().filter(|a| !a.status.is_terminal()).and_then(|a| a.job_id.clone()) {
                out.push((name.to_owned(), job));
            }
        }
        out.extend(self.open_arrays());
        out
    }
}
