//! What a user asks of a run: cancel it, or redrive it once it has ended.

use std::collections::BTreeMap;

use super::{JobToStop, Redrive, RedriveRefused, Redriven, Run, RunStatus, StageStatus};
use crate::model::fargate::Size;

impl Run {
    /// Cancels a running run, and returns every job it started that is to be stopped: the
    /// current attempt of every stage the cancel stopped, by id, or — planned but not yet
    /// recorded as submitted, so its job may exist — by its deterministic name. A run
    /// already CANCELLED answers the same list again, so a retried cancel finishes what the
    /// first began (stopping a job twice is harmless). A run that ended otherwise is an
    /// error that says how it ended.
    pub fn cancel(&mut self, now_ms: i64) -> Result<Vec<JobToStop>, String> {
        match self.status {
            RunStatus::Running => {
                for stage_run in self.stages.values_mut() {
                    if matches!(stage_run.status, StageStatus::Submitted | StageStatus::Running) {
                        if let Some(attempt) = stage_run.attempts.last_mut() {
                            attempt.status = StageStatus::Cancelled;
                            attempt.reason = Some("run cancelled".into());
                        }
                        stage_run.status = StageStatus::Cancelled;
                    }
                }
                self.end(RunStatus::Cancelled, Some("cancelled by request".into()), now_ms);
            }
            RunStatus::Cancelled => {}
            _ => return Err(format!("run {} has already ended ({})", self.run_id, self.status.as_str())),
        }
        let stopped = self.stages.iter().filter_map(|(name, stage_run)| {
            let attempt = stage_run.current().filter(|a| a.status == StageStatus::Cancelled)?;
            Some(JobToStop { stage: name.clone(), job_id: attempt.job_id.clone(), job_name: attempt.job_name.clone() })
        });
        Ok(stopped.collect())
    }

    /// Starts the run's next generation (a redrive), once per request key: its failed,
    /// skipped and cancelled stages become pending again — succeeded ones are kept, their
    /// outputs not recomputed — and those whose upstream stages all succeeded are planned
    /// as new attempts (numbers go on; `sizes` gives a stage's next size). Only a FAILED or
    /// CANCELLED run whose end has been announced (every job of it ended) is redriven; the
    /// request that started the current generation gets that generation again.
    pub fn redrive(
        &mut self,
        key: &str,
        sizes: &BTreeMap<String, Size>,
        now_ms: i64,
    ) -> Result<Redriven, RedriveRefused> {
        if let Some(last) = self.redrives.last().filter(|last| last.key == key) {
            return Ok(Redriven { generation: self.redrives.len(), stages: last.stages.clone(), duplicate: true });
        }
        match self.status {
            RunStatus::Running => return Err(RedriveRefused::StillRunning(self.run_id.clone())),
            RunStatus::Succeeded => return Err(RedriveRefused::Succeeded(self.run_id.clone())),
            _ if !self.completion_sent => return Err(RedriveRefused::StillEnding(self.run_id.clone())),
            _ => {}
        }
        if let Some(stage) = sizes.keys().find(|stage| !self.stages.contains_key(*stage)) {
            return Err(RedriveRefused::NoSuchStage { run: self.run_id.clone(), stage: stage.clone() });
        }
        let mut rerun = Vec::new();
        for (name, stage_run) in self.stages.iter_mut().filter(|(_, s)| s.status != StageStatus::Succeeded) {
            stage_run.status = StageStatus::Pending;
            stage_run.generation_start = stage_run.attempts.len() as u32 + 1;
            stage_run.next_size = sizes.get(name).copied();
            rerun.push(name.clone());
        }
        self.status = RunStatus::Running;
        self.ended_at = None;
        self.reason = None;
        self.completion_sent = false;
        self.completion_claim = None;
        self.stop_open_jobs = false;
        self.redrives.push(Redrive { key: key.to_owned(), at: now_ms, stages: rerun.clone() });
        self.plan_ready_stages();
        Ok(Redriven { generation: self.redrives.len(), stages: rerun, duplicate: false })
    }
}
