//! What a user asks of a run: cancel it, or redrive it once it has ended.

use std::collections::BTreeMap;

use super::{JobToStop, Redrive, RedriveRefused, Redriven, Run, RunStatus, StageStatus};
use crate::model::fargate::Size;
use crate::model::job_request::KEY_WINDOW_MS;

impl Run {
    /// Cancels a running run, and returns every job it started that is to be stopped: the
    /// job of every stage still going, by id, or — planned but not yet recorded as
    /// submitted, so its job may exist — by its deterministic name. A cancelled attempt
    /// whose job was going stays open until Batch reports its end (so its billed time is
    /// counted, and the run is announced, and may be redriven, only once every job of it
    /// has ended); its stage shows CANCELLED at once. A job found later for an attempt
    /// given up before it was recorded is recorded then ([`JobFound`](super::JobFound)),
    /// and waited for likewise. A run already CANCELLED answers the
    /// jobs still going again, so a retried cancel finishes what the first began (stopping a
    /// job twice is harmless). A FAILED run whose jobs go on (`OnStageFailure: Finish`, or
    /// its failure stage) stays FAILED and has them all stopped (a failure stage not yet
    /// submitted is skipped). A run that SUCCEEDED, or FAILED with nothing going, is an
    /// error that says how it ended; a CANCELLED one answers what is still going (perhaps
    /// nothing).
    pub fn cancel(&mut self, now_ms: i64) -> Result<Vec<JobToStop>, String> {
        match self.status {
            RunStatus::Running => {
                for stage_run in self.stages.values_mut() {
                    if matches!(stage_run.status, StageStatus::Submitted | StageStatus::Running) {
                        stage_run.status = StageStatus::Cancelled;
                    }
                }
                self.end(RunStatus::Cancelled, Some("cancelled by request".into()), now_ms);
            }
            RunStatus::Cancelled => {}
            RunStatus::Failed if !self.open_jobs().is_empty() => {
                self.stop_everything = true;
                // Its failure stage, planned but not submitted yet, is not submitted.
                if let Some(failure) = self.on_failure.as_mut().filter(|f| f.status == StageStatus::Submitting) {
                    failure.status = StageStatus::Skipped;
                    if let Some(attempt) = failure.attempts.last_mut() {
                        attempt.status = StageStatus::Skipped;
                    }
                }
            }
            _ => return Err(format!("run {} has already ended ({})", self.run_id, self.status.as_str())),
        }
        let going = self.jobs_to_stop().into_iter().map(|(stage, job_id)| JobToStop {
            attempt: self.current_attempt(&stage).map_or(0, |a| a.number),
            stage,
            job_id: Some(job_id),
            job_name: None,
        });
        let unrecorded = self.withdrawn_attempts().into_iter().filter(|(_, a)| a.status == StageStatus::Cancelled);
        let named = unrecorded.map(|(stage, attempt)| JobToStop {
            stage: stage.to_owned(),
            attempt: attempt.number,
            job_id: None,
            job_name: attempt.job_name.clone(),
        });
        // A map's arrays planned but not recorded as submitted may exist too.
        let arrays = self.withdrawn_arrays().into_iter().map(|(stage, attempt, _, job_name)| JobToStop {
            stage,
            attempt,
            job_id: None,
            job_name: Some(job_name),
        });
        let mut stopped: Vec<JobToStop> = going.chain(named).chain(arrays).collect();
        stopped.sort_by(|a, b| a.stage.cmp(&b.stage));
        Ok(stopped)
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
        self.redrive_request(key, sizes, None, now_ms)
    }

    /// [`Run::redrive`], with a fingerprint of the request as its caller wrote it (see
    /// [`Redrive::request`]).
    pub fn redrive_request(
        &mut self,
        key: &str,
        sizes: &BTreeMap<String, Size>,
        request: Option<&str>,
        now_ms: i64,
    ) -> Result<Redriven, RedriveRefused> {
        // The same key within its window is the same request: the generation it started,
        // whichever that was (a later redrive may have followed), or a conflict if the
        // request differs. An older use of the key does not count: it starts new work.
        let live = |r: &Redrive| r.key == key && now_ms - r.at < KEY_WINDOW_MS;
        if let Some((index, first)) = self.redrives.iter().enumerate().rev().find(|(_, r)| live(r)) {
            let same = match (first.request.as_deref(), request) {
                (Some(first), Some(request)) => first == request,
                _ => first.sizes == *sizes,
            };
            if !same {
                return Err(RedriveRefused::KeyReused(self.run_id.clone()));
            }
            return Ok(Redriven { generation: index + 1, stages: first.stages.clone(), duplicate: true });
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
        // In DAG order, as people read the pipeline (names sort the stages of one depth).
        rerun.sort_by_key(|name| self.pipeline.depth(name));
        self.status = RunStatus::Running;
        self.ended_at = None;
        self.reason = None;
        self.completion_sent = false;
        self.completion_claim = None;
        self.stop_open_jobs = false;
        self.stop_everything = false;
        let request = request.map(str::to_owned);
        self.redrives.push(Redrive {
            key: key.to_owned(),
            at: now_ms,
            stages: rerun.clone(),
            sizes: sizes.clone(),
            request,
        });
        self.plan_ready_stages();
        Ok(Redriven { generation: self.redrives.len(), stages: rerun, duplicate: false })
    }
}
