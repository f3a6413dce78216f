//! The run of a pipeline: a pure state machine from job state changes to stage transitions and submissions to make.
//!
//! A [`Run`] is one execution: a snapshot of the DAG, the run's input, and each stage's
//! attempts. [`Run::apply`] takes a job state change and returns what changed and what
//! to do next; it never goes back: terminal states are final, events for an attempt other
//! than the stage's current one are ignored, and a stage is planned for submission once
//! (its next attempt is written to the record before anything is submitted, so a crash
//! leaves a record that says what is still to submit).
//!
//! Over 500 lines on purpose: one state machine (about 430 lines) and its tests; splitting
//! the transitions apart would scatter the rules that must be read together.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::model::batch_event::{JobStateChangeEvent, JobStatus};
use crate::model::cost::{billed_tasks, BilledTask, Cost, Pricing};
use crate::model::fargate::Size;
use crate::model::pipeline::{attempt_key, OnStageFailure, Pipeline, Stage, ON_FAILURE};

/// How AWS reports a container killed for using too much memory.
pub const OUT_OF_MEMORY_REASON: &str = "OutOfMemoryError: Container killed due to memory usage";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RunStatus {
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl RunStatus {
    pub fn is_terminal(&self) -> bool {
        *self != RunStatus::Running
    }
    pub fn as_str(&self) -> &'static str {
        match self {
            RunStatus::Running => "RUNNING",
            RunStatus::Succeeded => "SUCCEEDED",
            RunStatus::Failed => "FAILED",
            RunStatus::Cancelled => "CANCELLED",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StageStatus {
    /// Waiting for upstream stages.
    Pending,
    /// Its current attempt is planned and being submitted.
    Submitting,
    /// Submitted; waiting in the queue.
    Submitted,
    Running,
    Succeeded,
    Failed,
    /// Never ran: the run failed or was cancelled first.
    Skipped,
    Cancelled,
}

impl StageStatus {
    pub fn is_terminal(&self) -> bool {
        matches!(self, StageStatus::Succeeded | StageStatus::Failed | StageStatus::Skipped | StageStatus::Cancelled)
    }
}

/// One attempt of a stage: a job at a size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attempt {
    pub number: u32,
    pub size: Size,
    #[serde(default)]
    pub job_id: Option<String>,
    #[serde(default)]
    pub job_name: Option<String>,
    pub status: StageStatus,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub exit_code: Option<i64>,
    #[serde(default)]
    pub log_stream: Option<String>,
    #[serde(default)]
    pub submitted_at: Option<i64>,
    #[serde(default)]
    pub started_at: Option<i64>,
    #[serde(default)]
    pub stopped_at: Option<i64>,
    /// The tasks its job ran (one per Batch attempt), recorded when it ended: what it cost.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub billed: Vec<BilledTask>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
}

impl Attempt {
    /// What its job cost; nothing until it ended.
    pub fn cost(&self, pricing: &Pricing) -> Cost {
        pricing.price(self.size, self.architecture.as_deref(), &self.billed)
    }

    /// Seconds its job was billed for (all its tasks), once it ended.
    fn billed_seconds(&self) -> Option<u64> {
        (!self.billed.is_empty())
            .then(|| self.billed.iter().map(|t| crate::model::cost::billable_seconds(t.started_at, t.stopped_at)).sum())
    }
}

/// What a run cost so far: in all, and per stage (the failure stage as `on-failure`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunCost {
    pub usd: f64,
    pub upper_bound: bool,
    pub stages: BTreeMap<String, Cost>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StageRun {
    pub status: StageStatus,
    pub attempts: Vec<Attempt>,
    /// The number of the stage's first attempt in the run's current generation (a redrive
    /// starts a new one): the out-of-memory resize limit counts from there.
    #[serde(default = "first_attempt", skip_serializing_if = "is_first_attempt")]
    pub generation_start: u32,
    /// The size a redrive asked for the stage's next attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_size: Option<Size>,
}

fn first_attempt() -> u32 {
    1
}

fn is_first_attempt(number: &u32) -> bool {
    *number == 1
}

/// One redrive of a run: the request's idempotency key, when it started the run's next
/// generation, and the stages it reran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Redrive {
    pub key: String,
    pub at: i64,
    pub stages: Vec<String>,
}

/// What a redrive request came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redriven {
    /// The run's generation it started (1 for the first redrive).
    pub generation: usize,
    pub stages: Vec<String>,
    /// True when the same request had started it already.
    pub duplicate: bool,
}

/// Why a run cannot be redriven now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedriveRefused {
    #[error("run {0} is still running; redrive it once it has ended")]
    StillRunning(String),
    #[error("run {0} succeeded: there is nothing to redrive")]
    Succeeded(String),
    #[error("run {0} has ended but its jobs are still stopping; redrive it once they have")]
    StillEnding(String),
    #[error("run {run} has no stage {stage:?}")]
    NoSuchStage { run: String, stage: String },
}

impl StageRun {
    fn new(status: StageStatus, attempts: Vec<Attempt>) -> StageRun {
        StageRun { status, attempts, generation_start: 1, next_size: None }
    }

    pub fn current(&self) -> Option<&Attempt> {
        self.attempts.last()
    }
}

/// What the run passes to every stage.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunInput {
    pub parameters: BTreeMap<String, String>,
    pub environment: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Run {
    pub run_id: String,
    pub pipeline: Pipeline,
    pub status: RunStatus,
    pub trigger: String,
    pub input: RunInput,
    pub created_at: i64,
    #[serde(default)]
    pub ended_at: Option<i64>,
    #[serde(default)]
    pub reason: Option<String>,
    pub stages: BTreeMap<String, StageRun>,
    #[serde(default)]
    pub on_failure: Option<StageRun>,
    /// Whether the "Batchline Run Completed" event went out.
    #[serde(default)]
    pub completion_sent: bool,
    /// Who is sending it: the invocation that claimed the announcement, until its deadline.
    #[serde(default)]
    pub completion_claim: Option<CompletionClaim>,
    /// Whether the run's failure stops its other jobs (fail fast, or its deadline passed)
    /// rather than letting them finish.
    #[serde(default)]
    pub stop_open_jobs: bool,
    /// Its redrives, oldest first: each started a generation of the run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redrives: Vec<Redrive>,
}

/// The claim of a run's announcement: one invocation sends it, and nobody else until that
/// invocation's deadline has passed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompletionClaim {
    pub token: String,
    pub deadline_ms: i64,
}

/// A job a cancel stops: by its id, or by its name when the run never recorded the id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobToStop {
    pub stage: String,
    pub job_id: Option<String>,
    pub job_name: Option<String>,
}

/// What applying an event did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Nothing: a duplicate, late, or foreign event.
    Unchanged(&'static str),
    /// The record changed (and may have planned submissions or ended the run).
    Changed,
}

/// Whether a failed job ran out of memory, as AWS reports it.
pub fn is_out_of_memory(event: &JobStateChangeEvent) -> bool {
    let container = event.detail.last_attempt_container().or(event.detail.container.as_ref());
    container.and_then(|c| c.reason.as_deref()).is_some_and(|r| r.starts_with("OutOfMemoryError"))
}

/// Records how an attempt's job ended (SUCCEEDED or FAILED), as its event says.
fn record_end(attempt: &mut Attempt, event: &JobStateChangeEvent, now_ms: i64) {
    let detail = &event.detail;
    let container = detail.last_attempt_container().or(detail.container.as_ref());
    attempt.job_id.get_or_insert_with(|| detail.job_id.clone());
    attempt.stopped_at = detail.stopped_at.or(Some(now_ms));
    attempt.exit_code = container.and_then(|c| c.exit_code);
    attempt.reason = container.and_then(|c| c.reason.clone()).or_else(|| detail.status_reason.clone());
    attempt.status = if detail.status == JobStatus::Succeeded { StageStatus::Succeeded } else { StageStatus::Failed };
    attempt.billed = billed_tasks(detail);
    attempt.architecture = detail.cpu_architecture().map(str::to_owned);
}

impl Run {
    /// A new run: its first stages planned for submission.
    pub fn start(run_id: String, pipeline: &Pipeline, trigger: &str, input: RunInput, now_ms: i64) -> Run {
        let stages =
            pipeline.stages.keys().map(|key| (key.clone(), StageRun::new(StageStatus::Pending, vec![]))).collect();
        let mut run = Run {
            run_id,
            pipeline: pipeline.clone(),
            status: RunStatus::Running,
            trigger: trigger.to_owned(),
            input,
            created_at: now_ms,
            ended_at: None,
            reason: None,
            stages,
            on_failure: None,
            completion_sent: false,
            completion_claim: None,
            stop_open_jobs: false,
            redrives: vec![],
        };
        run.plan_ready_stages();
        run
    }

    /// The definition of a stage of this run (the failure stage included).
    pub fn stage(&self, name: &str) -> Option<&Stage> {
        if name == ON_FAILURE {
            self.pipeline.on_failure.as_ref()
        } else {
            self.pipeline.stages.get(name)
        }
    }

    fn stage_run_mut(&mut self, name: &str) -> Option<&mut StageRun> {
        if name == ON_FAILURE {
            self.on_failure.as_mut()
        } else {
            self.stages.get_mut(name)
        }
    }

    /// Every stage (the failure stage included) whose current attempt is planned but not
    /// yet submitted: what the driver must submit.
    pub fn to_submit(&self) -> Vec<(String, Attempt)> {
        let mut out: Vec<(String, Attempt)> = self
            .stages
            .iter()
            .filter(|(_, s)| s.status == StageStatus::Submitting)
            .filter_map(|(k, s)| Some((k.clone(), s.current()?.clone())))
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
    fn plan_ready_stages(&mut self) {
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
                let size = stage_run.next_size.take().or(last).unwrap_or(declared);
                stage_run.attempts.push(Attempt::planned(&self.run_id, &key, number, size));
                stage_run.status = StageStatus::Submitting;
            }
        }
    }

    /// Applies a job state change of one of this run's stages.
    pub fn apply(&mut self, stage_name: &str, event: &JobStateChangeEvent, now_ms: i64) -> Applied {
        let detail = &event.detail;
        let ended = self.status.is_terminal() && stage_name != ON_FAILURE;
        let Some((max_resizes, max_vcpus)) = self.stage(stage_name).map(|s| (s.max_resizes, s.max_vcpus)) else {
            return Applied::Unchanged("no such stage in this run");
        };
        let run_id = self.run_id.clone();
        let Some(stage_run) = self.stage_run_mut(stage_name) else {
            return Applied::Unchanged("the stage has not started");
        };
        let attempts = stage_run.attempts.len() as u32;
        // Attempts of this generation: a redrive gives a stage its resizes again.
        let attempts_now = attempts + 1 - stage_run.generation_start.max(1);
        let Some(current) = stage_run.attempts.last_mut() else {
            return Applied::Unchanged("the stage has no attempt");
        };
        let same_job = match &current.job_id {
            Some(job_id) => *job_id == detail.job_id,
            // Submitted but not yet recorded (the event outran the record): the job's
            // deterministic name says whether it is this attempt.
            None => current.job_name.is_some() && current.job_name == detail.job_name,
        };
        if !same_job {
            return Applied::Unchanged("the event is for another attempt");
        }
        if current.status.is_terminal() {
            return Applied::Unchanged("the attempt has already ended");
        }
        if ended {
            // The run failed while this stage's job went on (another branch failed): its
            // end is recorded, so the run is announced once every job has ended, and
            // nothing more is planned.
            if !matches!(detail.status, JobStatus::Succeeded | JobStatus::Failed) {
                return Applied::Unchanged("the run has ended");
            }
            record_end(current, event, now_ms);
            stage_run.status = current.status;
            return Applied::Changed;
        }
        current.job_id.get_or_insert_with(|| detail.job_id.clone());
        let container = detail.last_attempt_container().or(detail.container.as_ref());
        if let Some(stream) = container.and_then(|c| c.log_stream_name.clone()) {
            current.log_stream = Some(stream);
        }
        current.started_at = detail.started_at.or(current.started_at);
        let progress = match &detail.status {
            JobStatus::Succeeded | JobStatus::Failed => None,
            JobStatus::Starting | JobStatus::Running => Some(StageStatus::Running),
            _ => Some(StageStatus::Submitted),
        };
        if let Some(status) = progress {
            // Batch may deliver RUNNABLE after RUNNING: never step back.
            if current.status == status || (current.status == StageStatus::Running && status == StageStatus::Submitted)
            {
                return Applied::Unchanged("no progress");
            }
            current.status = status;
            stage_run.status = status;
            return Applied::Changed;
        }
        record_end(current, event, now_ms);
        let succeeded = current.status == StageStatus::Succeeded;
        let size = current.size;
        let reason = current.reason.clone();
        if stage_name == ON_FAILURE {
            stage_run.status = if succeeded { StageStatus::Succeeded } else { StageStatus::Failed };
            return Applied::Changed;
        }
        if succeeded {
            stage_run.status = StageStatus::Succeeded;
            if self.stages.values().all(|s| s.status == StageStatus::Succeeded) {
                self.end(RunStatus::Succeeded, None, now_ms);
            } else {
                self.plan_ready_stages();
            }
            return Applied::Changed;
        }
        // Failed: out of memory gets a larger size while the stage's limit allows and its
        // queue can run it.
        let out_of_memory = is_out_of_memory(event);
        let may_resize = out_of_memory && attempts_now <= max_resizes;
        let next = size.next_for_memory();
        let fits = |next: &Size| max_vcpus.is_none_or(|max| next.fits_vcpus(max));
        if let Some(next) = next.filter(|next| may_resize && fits(next)) {
            stage_run.status = StageStatus::Submitting;
            stage_run.attempts.push(Attempt::planned(&run_id, stage_name, attempts + 1, next));
            return Applied::Changed;
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
        self.end(RunStatus::Failed, Some(why), now_ms);
        Applied::Changed
    }

    /// Ends the run: stages that never started are skipped (cancelled, for a cancel); on
    /// failure the failure stage is planned.
    fn end(&mut self, status: RunStatus, reason: Option<String>, now_ms: i64) {
        if status == RunStatus::Failed && self.pipeline.on_stage_failure == OnStageFailure::Terminate {
            self.stop_open_jobs = true;
        }
        self.status = status;
        self.reason = reason;
        self.ended_at = Some(now_ms);
        let unstarted = if status == RunStatus::Cancelled { StageStatus::Cancelled } else { StageStatus::Skipped };
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
    pub fn over_budget(&self, pricing: &Pricing) -> Option<String> {
        let budget = self.pipeline.max_run_cost_usd?;
        if self.status != RunStatus::Running {
            return None;
        }
        let planned: Vec<(String, Attempt)> =
            self.to_submit().into_iter().filter(|(stage, _)| stage != ON_FAILURE).collect();
        if planned.is_empty() {
            return None;
        }
        let spent = self.cost(pricing).usd;
        let running: f64 = self
            .open_jobs()
            .iter()
            .filter_map(|(stage, _)| Some((stage, self.stages.get(stage)?.current()?)))
            .map(|(stage, attempt)| self.estimate(stage, attempt.size, pricing))
            .sum();
        let next: f64 = planned.iter().map(|(stage, attempt)| self.estimate(stage, attempt.size, pricing)).sum();
        if spent + running + next <= budget {
            return None;
        }
        let what: Vec<String> =
            planned.iter().map(|(stage, a)| format!("{stage} attempt {} at {}", a.number, a.size)).collect();
        Some(format!(
            "the run would pass its MaxRunCostUsd of ${budget:.2}: spent ${spent:.4}, running jobs estimated at \
             ${running:.4}, next ({}) estimated at ${next:.4}",
            what.join(", ")
        ))
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

    /// Whether the run is still running past its pipeline's `MaxRunSeconds` at `now_ms`.
    pub fn past_deadline(&self, now_ms: i64) -> bool {
        let limit = self.pipeline.max_run_seconds.map(|seconds| seconds as i64 * 1000);
        self.status == RunStatus::Running && limit.is_some_and(|limit| now_ms - self.started_at() > limit)
    }

    /// Fails a run that is past its deadline: its jobs are to be stopped whatever the
    /// pipeline's `OnStageFailure`, and its failure stage runs. False if it is not past it.
    pub fn fail_past_deadline(&mut self, now_ms: i64) -> bool {
        if !self.past_deadline(now_ms) {
            return false;
        }
        let limit = self.pipeline.max_run_seconds.unwrap_or_default();
        self.end(RunStatus::Failed, Some(format!("the run took longer than its MaxRunSeconds ({limit} s)")), now_ms);
        self.stop_open_jobs = true;
        true
    }

    /// The jobs a failed run stops, as `(stage, job id)`: every job of its stages still
    /// going (not its failure stage's), when its failure stops them.
    pub fn jobs_to_stop(&self) -> Vec<(String, String)> {
        if self.status != RunStatus::Failed || !self.stop_open_jobs {
            return vec![];
        }
        self.open_jobs().into_iter().filter(|(stage, _)| stage != ON_FAILURE).collect()
    }

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

    /// Attempts the run's failure skipped while they were being submitted: a job may exist
    /// for each (a submission under way, or one whose submitter died after SubmitJob), to
    /// be found by its deterministic name and stopped.
    pub fn skipped_submissions(&self) -> Vec<JobToStop> {
        let given_up = self.withdrawn_attempts().into_iter();
        let skipped = given_up.filter(|(_, attempt)| attempt.status == StageStatus::Skipped);
        let named = skipped.filter_map(|(stage, attempt)| {
            Some(JobToStop { stage: stage.to_owned(), job_id: None, job_name: Some(attempt.job_name.clone()?) })
        });
        named.collect()
    }

    /// Attempts the run gave up (cancelled, or skipped by its failure) before a job was
    /// recorded for them: their submission claims are to be settled (see
    /// `RunDriver::settle_withdrawn`), each as `(stage, attempt)`.
    pub fn withdrawn_attempts(&self) -> Vec<(&str, &Attempt)> {
        let stages = self.stages.iter().map(|(name, stage_run)| (name.as_str(), stage_run));
        let given_up = stages.filter_map(|(name, stage_run)| {
            let attempt = stage_run.current()?;
            let withdrawn = matches!(attempt.status, StageStatus::Cancelled | StageStatus::Skipped);
            (withdrawn && attempt.job_id.is_none()).then_some((name, attempt))
        });
        given_up.collect()
    }

    /// Whether the run's outcome is final and every job it started has ended (its failure
    /// stage included): the moment to announce it, once.
    pub fn ready_to_announce(&self) -> bool {
        self.status.is_terminal() && !self.completion_sent && self.to_submit().is_empty() && self.open_jobs().is_empty()
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

    /// Stages whose current attempt has a job that has not ended: what a repair sweep checks.
    pub fn open_jobs(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let stages =
            self.stages.iter().map(|(k, s)| (k.as_str(), s)).chain(self.on_failure.iter().map(|s| (ON_FAILURE, s)));
        for (name, stage_run) in stages {
            if let Some(job) = stage_run.current().filter(|a| !a.status.is_terminal()).and_then(|a| a.job_id.clone()) {
                out.push((name.to_owned(), job));
            }
        }
        out
    }
}

impl Attempt {
    /// An attempt to submit, named deterministically (so its job can be found by name).
    pub fn planned(run_id: &str, stage: &str, number: u32, size: Size) -> Attempt {
        let job_name = crate::model::job_request::job_name(
            &format!("{run_id}-{stage}-a{number}"),
            &attempt_key(run_id, stage, number),
        );
        Attempt {
            number,
            size,
            job_id: None,
            job_name: Some(job_name),
            status: StageStatus::Submitting,
            reason: None,
            exit_code: None,
            log_stream: None,
            submitted_at: None,
            started_at: None,
            stopped_at: None,
            billed: vec![],
            architecture: None,
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fargate::Quarters;
    use serde_json::json;
    use serde_json::Value;

    fn stage(after: &[&str], size: Size, max_resizes: u32) -> Stage {
        Stage {
            job_definition: "default".into(),
            size,
            parameters: BTreeMap::new(),
            queue: "default".into(),
            after: after.iter().map(|s| s.to_string()).collect(),
            max_resizes,
            timeout_seconds: None,
            expected_seconds: None,
            max_vcpus: None,
            retry: None,
        }
    }

    /// a → (b, c) → d, at most one resize per stage, with a failure stage.
    fn diamond() -> Pipeline {
        let small = Size { vcpu: Quarters(1), memory_mib: 512 };
        let big = Size { vcpu: Quarters(4), memory_mib: 2048 };
        Pipeline {
            name: "d".into(),
            stages: BTreeMap::from([
                ("a".to_owned(), stage(&[], small, 1)),
                ("b".to_owned(), stage(&["a"], small, 1)),
                ("c".to_owned(), stage(&["a"], small, 1)),
                ("d".to_owned(), stage(&["b", "c"], big, 1)),
            ]),
            on_failure: Some(stage(&[], small, 0)),
            on_stage_failure: OnStageFailure::Terminate,
            max_run_seconds: None,
            max_run_cost_usd: None,
        }
    }

    fn event(job_id: &str, status: &str, extra: Value) -> JobStateChangeEvent {
        let mut value = json!({"id": format!("{job_id}-{status}"), "detail-type": "Batch Job State Change", "source": "aws.batch",
                               "detail": {"jobId": job_id, "jobName": format!("name-{job_id}"), "status": status}});
        for (k, v) in extra.as_object().unwrap() {
            value["detail"][k] = v.clone();
        }
        JobStateChangeEvent::from_value(value).unwrap()
    }

    fn submit_all(run: &mut Run) -> Vec<String> {
        let planned = run.to_submit();
        for (stage, attempt) in &planned {
            let id = format!("{stage}-{}", attempt.number);
            assert!(run.record_submitted(stage, attempt.number, &id, attempt.job_name.as_deref().unwrap(), 0));
        }
        planned.into_iter().map(|(s, a)| format!("{s}-{}", a.number)).collect()
    }

    #[test]
    fn a_budget_plans_with_the_stages_past_attempts_and_never_stops_the_failure_stage() {
        let pricing = Pricing::on_demand(&crate::config::PriceOverrides::default());
        let mut pipeline = diamond();
        pipeline.max_run_cost_usd = Some(0.004);
        let mut run = Run::start("r9".into(), &pipeline, "api", RunInput::default(), 0);
        // a's first attempt has no history: a minute of it fits
        assert_eq!(run.over_budget(&pricing), None);
        submit_all(&mut run);
        // it ran ten minutes, then out of memory: $0.0021 spent (0.25 vCPU, 0.5 GB)
        let ten_minutes = json!({"startedAt": 0, "stoppedAt": 600_000,
                                 "container": {"exitCode": 137, "reason": OUT_OF_MEMORY_REASON}});
        let oom = json!({"container": {"exitCode": 137, "reason": OUT_OF_MEMORY_REASON}, "attempts": [ten_minutes]});
        run.apply("a", &event("a-1", "FAILED", oom.clone()), 1);
        // duplicated, its end is recorded once
        run.apply("a", &event("a-1", "FAILED", oom), 1);
        assert!((run.cost(&pricing).usd - 0.0123425 / 6.0).abs() < 1e-9, "{:?}", run.cost(&pricing));
        // the resize, estimated for the median of a's attempts (600 s) at 1 GB: $0.0024 more
        let why = run.over_budget(&pricing).unwrap();
        assert!(why.contains("spent $0.0021"), "{why}");
        assert!(why.contains("next (a attempt 2 at 0.25 vCPU / 1024 MiB) estimated at $0.0024"), "{why}");
        assert!(run.fail_over_budget(why, 2));
        assert_eq!((run.status, run.stages["a"].status), (RunStatus::Failed, StageStatus::Skipped));
        // the failure stage is planned and exempt
        assert_eq!(run.over_budget(&pricing), None);
        assert_eq!(submit_all(&mut run), ["on-failure-1"]);
    }

    #[test]
    fn a_diamond_fans_out_and_in_and_succeeds() {
        let mut run = Run::start("r1".into(), &diamond(), "api", RunInput::default(), 0);
        assert_eq!(submit_all(&mut run), ["a-1"]);
        assert_eq!(run.apply("a", &event("a-1", "RUNNING", json!({})), 1), Applied::Changed);
        assert_eq!(run.apply("a", &event("a-1", "SUCCEEDED", json!({})), 2), Applied::Changed);
        assert_eq!(submit_all(&mut run), ["b-1", "c-1"]);
        run.apply("c", &event("c-1", "SUCCEEDED", json!({})), 3);
        assert!(run.to_submit().is_empty(), "d waits for b");
        // duplicates and late events change nothing
        assert!(matches!(run.apply("c", &event("c-1", "SUCCEEDED", json!({})), 4), Applied::Unchanged(_)));
        assert!(matches!(run.apply("c", &event("c-1", "RUNNING", json!({})), 4), Applied::Unchanged(_)));
        run.apply("b", &event("b-1", "SUCCEEDED", json!({})), 5);
        assert_eq!(submit_all(&mut run), ["d-1"]);
        assert_eq!(run.stages["d"].attempts[0].size.to_string(), "1 vCPU / 2048 MiB");
        run.apply("d", &event("d-1", "SUCCEEDED", json!({})), 6);
        assert_eq!(run.status, RunStatus::Succeeded);
        assert_eq!(run.ended_at, Some(6));
        assert!(run.to_submit().is_empty());
    }

    #[test]
    fn out_of_memory_resizes_up_to_the_limit_then_fails_and_runs_on_failure() {
        let oom = json!({"container": {"exitCode": 137, "reason": OUT_OF_MEMORY_REASON}});
        let mut run = Run::start("r2".into(), &diamond(), "api", RunInput::default(), 0);
        submit_all(&mut run);
        run.apply("a", &event("a-1", "FAILED", oom.clone()), 1);
        assert_eq!(submit_all(&mut run), ["a-2"]);
        assert_eq!(run.stages["a"].attempts[1].size, Size { vcpu: Quarters(1), memory_mib: 1024 });
        // MaxResizes 1: the second OOM fails the stage and the run
        run.apply("a", &event("a-2", "FAILED", oom), 2);
        assert_eq!(run.status, RunStatus::Failed);
        assert!(run.reason.as_deref().unwrap().contains("ran out of memory 2 time(s)"));
        assert_eq!(run.stages["b"].status, StageStatus::Skipped);
        assert_eq!(submit_all(&mut run), ["on-failure-1"]);
        run.apply(ON_FAILURE, &event("on-failure-1", "SUCCEEDED", json!({})), 3);
        assert_eq!(run.on_failure.as_ref().unwrap().status, StageStatus::Succeeded);
        assert_eq!(run.status, RunStatus::Failed, "the failure stage does not change the outcome");
    }

    #[test]
    fn out_of_memory_resizing_stops_at_what_the_stages_queue_can_run() {
        let mut pipeline = diamond();
        let a = pipeline.stages.get_mut("a").unwrap();
        (a.size, a.max_vcpus, a.max_resizes) = (Size { vcpu: Quarters(4), memory_mib: 8192 }, Some(1), 3);
        let mut run = Run::start("r7".into(), &pipeline, "api", RunInput::default(), 0);
        submit_all(&mut run);
        let oom = json!({"container": {"exitCode": 137, "reason": OUT_OF_MEMORY_REASON}});
        run.apply("a", &event("a-1", "FAILED", oom), 1);
        assert!(run.to_submit().iter().all(|(stage, _)| stage != "a"), "no 2 vCPU attempt on a 1 vCPU queue");
        assert_eq!(run.status, RunStatus::Failed);
        let reason = run.reason.clone().unwrap_or_default();
        assert!(
            reason.contains("its next size (2 vCPU / 16384 MiB) is more than its queue can run (1 vCPU at most)"),
            "{reason}"
        );
    }

    #[test]
    fn a_redrive_reruns_what_did_not_succeed_as_new_attempts_with_their_resizes_again() {
        let oom = json!({"container": {"exitCode": 137, "reason": OUT_OF_MEMORY_REASON}});
        let mut run = Run::start("r6".into(), &diamond(), "api", RunInput::default(), 0);
        submit_all(&mut run);
        run.apply("a", &event("a-1", "SUCCEEDED", json!({})), 1);
        submit_all(&mut run);
        run.apply("c", &event("c-1", "SUCCEEDED", json!({})), 2);
        run.apply("b", &event("b-1", "FAILED", oom.clone()), 3);
        submit_all(&mut run);
        run.apply("b", &event("b-2", "FAILED", oom.clone()), 4);
        submit_all(&mut run);
        run.apply(ON_FAILURE, &event("on-failure-1", "SUCCEEDED", json!({})), 5);
        // Refused until its end was announced, then redriven once per key
        assert!(matches!(run.redrive("k1", &BTreeMap::new(), 6), Err(RedriveRefused::StillEnding(_))));
        run.completion_sent = true;
        let redriven = run.redrive("k1", &BTreeMap::new(), 7).unwrap();
        assert_eq!((redriven.generation, redriven.stages.clone()), (1, vec!["b".to_owned(), "d".to_owned()]));
        assert!(run.redrive("k1", &BTreeMap::new(), 8).unwrap().duplicate);
        assert!(matches!(run.redrive("k2", &BTreeMap::new(), 8), Err(RedriveRefused::StillRunning(_))));
        // b goes on from its last size as attempt 3, with its resize allowance again
        assert_eq!(submit_all(&mut run), ["b-3"]);
        assert_eq!(run.stages["b"].attempts[2].size.memory_mib, 1024);
        assert_eq!(run.duration_ms(9), 2, "the generation's duration");
        run.apply("b", &event("b-3", "FAILED", oom), 10);
        assert_eq!(submit_all(&mut run), ["b-4"], "resized again");
        run.apply("b", &event("b-4", "FAILED", json!({"container": {"exitCode": 1}})), 11);
        // failing again runs the failure stage again, as its next attempt
        assert_eq!(submit_all(&mut run), ["on-failure-2"]);
        run.apply(ON_FAILURE, &event("on-failure-2", "SUCCEEDED", json!({})), 12);
        run.completion_sent = true;
        let sizes = BTreeMap::from([("b".to_owned(), Size { vcpu: Quarters(4), memory_mib: 8192 })]);
        run.redrive("k3", &sizes, 13).unwrap();
        assert_eq!(submit_all(&mut run), ["b-5"]);
        assert_eq!(run.stages["b"].attempts[4].size.to_string(), "1 vCPU / 8192 MiB");
        run.apply("b", &event("b-5", "SUCCEEDED", json!({})), 14);
        assert_eq!(submit_all(&mut run), ["d-1"]);
        run.apply("d", &event("d-1", "SUCCEEDED", json!({})), 15);
        assert_eq!((run.status, run.stages["a"].attempts.len()), (RunStatus::Succeeded, 1));
        run.completion_sent = true;
        assert!(matches!(run.redrive("k4", &BTreeMap::new(), 16), Err(RedriveRefused::Succeeded(_))));
    }

    #[test]
    fn an_event_that_outruns_the_submission_record_is_matched_by_the_planned_name() {
        let mut run = Run::start("r5".into(), &diamond(), "api", RunInput::default(), 0);
        let (_, planned) = run.to_submit().remove(0);
        let name = planned.job_name.clone().unwrap();
        let mut early = event("job-x", "RUNNING", json!({}));
        early.detail.job_name = Some(name);
        assert_eq!(run.apply("a", &early, 1), Applied::Changed);
        assert_eq!(run.stages["a"].attempts[0].job_id.as_deref(), Some("job-x"));
        assert!(matches!(run.apply("a", &event("someone-else", "SUCCEEDED", json!({})), 2), Applied::Unchanged(_)));
    }

    #[test]
    fn another_failure_fails_the_run_at_once_and_cancel_stops_what_runs() {
        let mut run = Run::start("r3".into(), &diamond(), "api", RunInput::default(), 0);
        submit_all(&mut run);
        run.apply(
            "a",
            &event(
                "a-1",
                "FAILED",
                json!({"statusReason": "Essential container in task exited", "container": {"exitCode": 2}}),
            ),
            1,
        );
        assert_eq!(run.status, RunStatus::Failed);
        assert_eq!(run.stages["a"].attempts.len(), 1, "no resize for an ordinary failure");
        assert!(run.reason.as_deref().unwrap().contains("stage a failed"));

        let mut run = Run::start("r4".into(), &diamond(), "api", RunInput::default(), 0);
        submit_all(&mut run);
        run.apply("a", &event("a-1", "SUCCEEDED", json!({})), 1);
        submit_all(&mut run);
        let stopped: Vec<Option<String>> = run.cancel(2).unwrap().into_iter().map(|j| j.job_id).collect();
        assert_eq!(stopped, [Some("b-1".to_owned()), Some("c-1".to_owned())]);
        assert_eq!(run.status, RunStatus::Cancelled);
        assert_eq!(run.stages["d"].status, StageStatus::Cancelled);
        assert!(run.on_failure.is_none(), "a cancel is not a failure");
        assert!(matches!(run.apply("b", &event("b-1", "SUCCEEDED", json!({})), 3), Applied::Unchanged(_)));
        assert_eq!(run.cancel(4).unwrap().len(), 2, "a retried cancel stops the same jobs again");
        let mut ended = Run::start("r6".into(), &diamond(), "api", RunInput::default(), 0);
        submit_all(&mut ended);
        ended.apply("a", &event("a-1", "FAILED", json!({"container": {"exitCode": 2}})), 1);
        assert!(ended.cancel(2).is_err(), "a failed run is not cancelled");
    }
}
