//! The run of a pipeline: a pure state machine that takes inputs and returns effects as data.
//!
//! A [`Run`] is one execution: a snapshot of the DAG, the run's input, and each stage's
//! attempts. **How an input becomes effects**: every input — a Batch job state change, the
//! sweep's visit, a cancel, a redrive, the outcome of a submission — goes through
//! [`Run::handle`] ([`effects`]), which changes the run and returns a [`Step`]: whether the
//! record changed, the input's answer, and the [`Effect`]s to carry out (submit this
//! attempt, stop that job, withdraw this claim, announce the completion, publish these
//! metrics). The model decides everything and performs nothing; the run driver
//! (`services::runs`) writes the record once, conditionally on the version it read,
//! executes the effects in order, and feeds an effect's outcome that can change the run (a
//! submission made, or refused) back in as one more input.
//!
//! The rules never go back: terminal states are final (only a redrive starts a run's next
//! generation), events for an attempt other than the stage's current one are ignored, and a stage is planned for submission once (its
//! next attempt is written to the record before anything is submitted, so a crash leaves a
//! record that says what is still to submit).
//!
//! By concern: [`outcomes`] (applying a job's state change), [`plan`] (what to submit,
//! how a run ends), [`budget`] (costs, budgets, deadlines), [`control`] (cancel, redrive),
//! [`views`] (open jobs, what to stop or withdraw, timing), [`effects`] (inputs, effects
//! and the one entry point). This file holds the run's stored shape.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[cfg(test)]
use crate::model::batch_event::JobStateChangeEvent;
use crate::model::cost::{BilledTask, Cost, Pricing};
use crate::model::fargate::Size;
#[cfg(test)]
use crate::model::pipeline::OnStageFailure;
use crate::model::pipeline::{attempt_key, Pipeline, Stage, ON_FAILURE};

pub mod budget;
pub mod completion;
pub mod control;
pub mod effects;
pub mod map;
pub mod outcomes;
pub mod plan;
pub mod views;

pub use effects::{
    CancelRequested, Context, Created, Effect, Input, JobChanged, JobFound, JobRef, MetricUnit, RedriveRequested,
    Resume, RunMetric, Step, Submitted, SweepVisit, Unsubmittable,
};
pub use map::{ArrayRun, FailedChild, MapProgress};
pub use outcomes::{is_out_of_memory, is_out_of_memory_reason};

#[cfg(test)]
mod effect_tests;
#[cfg(test)]
mod map_tests;
#[cfg(test)]
mod tests;

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
    /// A map stage's attempt: its children's arrays, instead of one job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub map: Option<MapProgress>,
    /// Its job id came from Batch (an event, or a job found by its name), not from its
    /// submitter: the submission claim may still be PENDING, and is settled before the run
    /// is announced ([`Effect::RecordJob`](effects::Effect::RecordJob)).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub claim_unsettled: bool,
}

impl Attempt {
    /// What its job cost — a map attempt's, its children's, summed per array when the map
    /// was closed; nothing until it ended.
    pub fn cost(&self, pricing: &Pricing) -> Cost {
        let mut cost = pricing.price(self.size, self.architecture.as_deref(), &self.billed);
        for array in self.map.iter().flat_map(|map| &map.arrays) {
            cost.add(&pricing.price_sums(array.child_size(self.size), &array.billed));
        }
        cost
    }

    /// Whether it has a cost to show: its job ended, or its map was closed with its
    /// children's tasks.
    pub fn is_billed(&self) -> bool {
        !self.billed.is_empty() || self.map.iter().flat_map(|map| &map.arrays).any(|a| !a.billed.is_empty())
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

fn is_zero(usd: &f64) -> bool {
    *usd == 0.0
}

/// One redrive of a run: the request's idempotency key, when it started the run's next
/// generation, and the stages it reran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Redrive {
    pub key: String,
    pub at: i64,
    pub stages: Vec<String>,
    /// The sizes it gave: the same key with other sizes is another request.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sizes: BTreeMap<String, Size>,
    /// A fingerprint of the request as its caller wrote it, when the caller gave one (the
    /// API does): compared instead of the sizes, which a request that gives half a size
    /// resolves against a run that may have changed since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
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
    #[error("run {0} is still running; redrive it once it has ended (batchline runs watch {0} waits for that)")]
    StillRunning(String),
    #[error("run {0} succeeded: there is nothing to redrive (start a new one: batchline run PIPELINE)")]
    Succeeded(String),
    #[error(
        "run {0} has ended but its jobs are still stopping; redrive it once they have (in a moment: batchline runs show {0} lists them)"
    )]
    StillEnding(String),
    #[error("run {run} has no stage {stage:?}")]
    NoSuchStage { run: String, stage: String },
    #[error(
        "run {0} was redriven under this idempotency key with other sizes: this key was used for a different request"
    )]
    KeyReused(String),
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
    /// Whether every job of the failed run is stopped, its failure stage's included: a user
    /// asked to stop it, or the failure stage passed its own deadline.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stop_everything: bool,
    /// What the announcements of its earlier generations published as their `RunCost`, in
    /// all: each generation publishes only what it added.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub announced_cost_usd: f64,
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
    /// The attempt whose job it is.
    pub attempt: u32,
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
            stop_everything: false,
            announced_cost_usd: 0.0,
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

    /// How a stage of this run went (the failure stage included).
    pub fn stage_run(&self, name: &str) -> Option<&StageRun> {
        if name == ON_FAILURE {
            self.on_failure.as_ref()
        } else {
            self.stages.get(name)
        }
    }

    fn stage_run_mut(&mut self, name: &str) -> Option<&mut StageRun> {
        if name == ON_FAILURE {
            self.on_failure.as_mut()
        } else {
            self.stages.get_mut(name)
        }
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
            map: None,
            claim_unsettled: false,
        }
    }
}
