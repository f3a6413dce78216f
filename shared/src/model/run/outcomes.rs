//! Applying job outcomes: a Batch job state change moves its stage's current attempt on, resizes it after running out of memory, or ends the run.

use super::{Applied, Attempt, Run, RunStatus, StageRun, StageStatus};
use crate::model::batch_event::{JobStateChangeEvent, JobStatus};
use crate::model::cost::billed_tasks;
use crate::model::fargate::Size;
use crate::model::pipeline::ON_FAILURE;

/// Whether a failed job ran out of memory, as AWS reports it.
pub fn is_out_of_memory(event: &JobStateChangeEvent) -> bool {
    let container = event.detail.last_attempt_container().or(event.detail.container.as_ref());
    is_out_of_memory_reason(container.and_then(|c| c.reason.as_deref()))
}

/// Whether Batch's reason for a container's end says it ran out of memory.
pub fn is_out_of_memory_reason(reason: Option<&str>) -> bool {
    reason.is_some_and(|r| r.starts_with("OutOfMemoryError"))
}

/// Records how an attempt's job ended (SUCCEEDED or FAILED), as its event says.
fn record_end(attempt: &mut Attempt, event: &JobStateChangeEvent, now_ms: i64) {
    let detail = &event.detail;
    let container = detail.last_attempt_container().or(detail.container.as_ref());
    attempt.learn_job(&detail.job_id);
    attempt.stopped_at = detail.stopped_at.or(Some(now_ms));
    attempt.exit_code = container.and_then(|c| c.exit_code);
    attempt.reason = container.and_then(|c| c.reason.clone()).or_else(|| detail.status_reason.clone());
    attempt.status = if detail.status == JobStatus::Succeeded { StageStatus::Succeeded } else { StageStatus::Failed };
    attempt.billed = billed_tasks(detail);
    attempt.architecture = detail.cpu_architecture().map(str::to_owned);
}

impl Attempt {
    /// Records the job id Batch named for it, unless its submitter recorded one: a job
    /// learnt this way leaves its submission claim to be settled.
    pub(super) fn learn_job(&mut self, job_id: &str) {
        if self.job_id.is_none() {
            self.job_id = Some(job_id.to_owned());
            self.claim_unsettled = true;
        }
    }

    /// Whether a job state change is about this attempt's job: by its id, or — submitted
    /// but not yet recorded (the event outran the record) — by its deterministic name.
    fn is_job_of(&self, event: &JobStateChangeEvent) -> bool {
        match &self.job_id {
            Some(job_id) => *job_id == event.detail.job_id,
            None => self.job_name.is_some() && self.job_name == event.detail.job_name,
        }
    }

    /// Records what any event of its job says: the job's id, log stream and start.
    fn record_seen(&mut self, event: &JobStateChangeEvent) {
        let detail = &event.detail;
        self.learn_job(&detail.job_id);
        let container = detail.last_attempt_container().or(detail.container.as_ref());
        if let Some(stream) = container.and_then(|c| c.log_stream_name.clone()) {
            self.log_stream = Some(stream);
        }
        self.started_at = detail.started_at.or(self.started_at);
    }
}

/// When a run that a job's end ends has ended: when the job stopped, as Batch says (a
/// late delivery does not lengthen the run), never later than now.
fn ended_at(event: &JobStateChangeEvent, now_ms: i64) -> i64 {
    event.detail.stopped_at.map_or(now_ms, |stopped| stopped.min(now_ms))
}

/// Moves an attempt (and its stage) on to the status a progress event says, never back:
/// Batch may deliver RUNNABLE after RUNNING.
fn record_progress(stage_run: &mut StageRun, status: &JobStatus) -> Applied {
    let status = match status {
        JobStatus::Starting | JobStatus::Running => StageStatus::Running,
        _ => StageStatus::Submitted,
    };
    let Some(current) = stage_run.attempts.last_mut() else { return Applied::Unchanged("the stage has no attempt") };
    if current.status == status || (current.status == StageStatus::Running && status == StageStatus::Submitted) {
        return Applied::Unchanged("no progress");
    }
    current.status = status;
    stage_run.status = status;
    Applied::Changed
}

impl Run {
    /// Applies a job state change of one of this run's stages: progress moves its current
    /// attempt on, an end is recorded and decides what comes next. Events for another
    /// attempt, or for one that has ended, change nothing; so do duplicates.
    pub fn apply(&mut self, stage_name: &str, event: &JobStateChangeEvent, now_ms: i64) -> Applied {
        let ended = self.status.is_terminal() && stage_name != ON_FAILURE;
        if self.stage(stage_name).is_none() {
            return Applied::Unchanged("no such stage in this run");
        }
        let Some(stage_run) = self.stage_run_mut(stage_name) else {
            return Applied::Unchanged("the stage has not started");
        };
        let Some(current) = stage_run.attempts.last_mut() else {
            return Applied::Unchanged("the stage has no attempt");
        };
        if current.map.is_some() {
            return self.apply_to_map(stage_name, event, now_ms);
        }
        if !current.is_job_of(event) {
            return Applied::Unchanged("the event is for another attempt");
        }
        if current.status.is_terminal() {
            return Applied::Unchanged("the attempt has already ended");
        }
        let is_end = matches!(event.detail.status, JobStatus::Succeeded | JobStatus::Failed);
        if ended {
            // The run failed while this stage's job went on (another branch failed): its
            // end is recorded, so the run is announced once every job has ended, and
            // nothing more is planned.
            if !is_end {
                return Applied::Unchanged("the run has ended");
            }
            record_end(current, event, now_ms);
            if stage_run.status == StageStatus::Cancelled && current.status == StageStatus::Failed {
                // Stopped by the run's cancel: the attempt ends CANCELLED, billed as Batch says.
                current.status = StageStatus::Cancelled;
            }
            stage_run.status = current.status;
            return Applied::Changed;
        }
        current.record_seen(event);
        if !is_end {
            return record_progress(stage_run, &event.detail.status);
        }
        record_end(current, event, now_ms);
        self.after_end(stage_name, event, now_ms)
    }

    /// What an attempt's end means for its stage and the run: the failure stage just ends;
    /// a success plans the stages it unblocks (or ends the run); a failure resizes or fails.
    fn after_end(&mut self, stage_name: &str, event: &JobStateChangeEvent, now_ms: i64) -> Applied {
        let Some(stage_run) = self.stage_run_mut(stage_name) else { return Applied::Unchanged("no such stage") };
        let succeeded = stage_run.current().is_some_and(|a| a.status == StageStatus::Succeeded);
        if stage_name == ON_FAILURE {
            stage_run.status = if succeeded { StageStatus::Succeeded } else { StageStatus::Failed };
            return Applied::Changed;
        }
        if succeeded {
            stage_run.status = StageStatus::Succeeded;
            self.stage_succeeded(ended_at(event, now_ms));
            return Applied::Changed;
        }
        self.resize_or_fail(stage_name, event, now_ms);
        Applied::Changed
    }

    /// After a failed attempt: out of memory gets a larger size while the stage's limit
    /// allows and its queue can run it; anything else fails the stage and the run.
    fn resize_or_fail(&mut self, stage_name: &str, event: &JobStateChangeEvent, now_ms: i64) {
        let Some((max_resizes, max_vcpus)) = self.stage(stage_name).map(|s| (s.max_resizes, s.max_vcpus)) else {
            return;
        };
        let run_id = self.run_id.clone();
        let Some(stage_run) = self.stage_run_mut(stage_name) else { return };
        let Some((size, reason)) = stage_run.current().map(|a| (a.size, a.reason.clone())) else { return };
        let attempts = stage_run.attempts.len() as u32;
        // Attempts of this generation: a redrive gives a stage its resizes again.
        let attempts_now = attempts + 1 - stage_run.generation_start.max(1);
        let out_of_memory = is_out_of_memory(event);
        let may_resize = out_of_memory && attempts_now <= max_resizes;
        let next = size.next_for_memory();
        let fits = |next: &Size| max_vcpus.is_none_or(|max| next.fits_vcpus(max));
        if let Some(next) = next.filter(|next| may_resize && fits(next)) {
            stage_run.status = StageStatus::Submitting;
            stage_run.attempts.push(Attempt::planned(&run_id, stage_name, attempts + 1, next));
            return;
        }
        stage_run.status = StageStatus::Failed;
        let why = if let Some(next) = next.filter(|_| may_resize) {
            // Only a size the queue cannot run stops a resize that was allowed.
            format!(
                "stage {stage_name} ran out of memory; its next size ({next}) is more than its queue can run ({} vCPU at most)",
                max_vcpus.unwrap_or_default()
            )
        } else if out_of_memory {
            format!("stage {stage_name} ran out of memory {attempts_now} time(s); its resize limit is {max_resizes}")
        } else {
            format!("stage {stage_name} failed: {}", reason.unwrap_or_else(|| "no reason given".into()))
        };
        self.end(RunStatus::Failed, Some(why), ended_at(event, now_ms));
    }
}
