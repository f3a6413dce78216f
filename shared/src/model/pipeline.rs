//! A pipeline as deployed: a named DAG of stages, each a job definition at a size, run after its upstream stages.
//!
//! Pipelines are declared in the stack configuration and validated by bootstrap (see
//! `batchline-bootstrap`'s declaration module); this is the resolved shape that bootstrap
//! publishes and every run snapshots.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::fargate::Size;

/// A stage may run after at most this many others (Batch's limit on job dependencies).
pub const MAX_UPSTREAMS: usize = 20;
/// Out-of-memory resubmissions per stage when the pipeline does not say.
pub const DEFAULT_MAX_RESIZES: u32 = 2;
/// The name of the failure stage in a run's record.
pub const ON_FAILURE: &str = "on-failure";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pipeline {
    pub name: String,
    pub stages: BTreeMap<String, Stage>,
    pub on_failure: Option<Stage>,
    /// What a stage failing for good does to the run's other jobs still going.
    #[serde(default)]
    pub on_stage_failure: OnStageFailure,
    /// The longest a run may take: past it, the run fails and its jobs are stopped.
    #[serde(default)]
    pub max_run_seconds: Option<u32>,
    /// The most a run may cost (USD): a submission that would pass it fails the run instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_run_cost_usd: Option<f64>,
}

impl Pipeline {
    /// How many stages deep `stage` is: 0 for one that runs after none, else one more than
    /// the deepest stage it runs after. Sorting by it (then by name) is the DAG order people
    /// read a pipeline in.
    pub fn depth(&self, stage: &str) -> usize {
        fn depth(pipeline: &Pipeline, stage: &str, seen: usize) -> usize {
            let Some(declared) = pipeline.stages.get(stage) else { return 0 };
            // A cycle is never deployed (bootstrap refuses it); stop at the stage count anyway.
            if seen > pipeline.stages.len() {
                return seen;
            }
            declared.after.iter().map(|up| depth(pipeline, up, seen + 1) + 1).max().unwrap_or(0)
        }
        depth(self, stage, 0)
    }
}

/// What happens to a run's other jobs when one of its stages fails for good. Either way
/// nothing new is submitted (but the failure stage) and the run is FAILED.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum OnStageFailure {
    /// Terminate them at once (fail fast): a failed run stops spending.
    #[default]
    Terminate,
    /// Let them finish (Nextflow's `finish`), e.g. independent branches worth keeping.
    Finish,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Stage {
    pub job_definition: String,
    pub size: Size,
    pub parameters: BTreeMap<String, String>,
    /// Key of the queue; the job definition's when not given.
    pub queue: String,
    pub after: Vec<String>,
    pub max_resizes: u32,
    /// Batch's attempt timeout for this stage's jobs (at least 60 s); the job definition's
    /// when not given.
    #[serde(default)]
    pub timeout_seconds: Option<u32>,
    /// The most vCPU its queue's compute environments can give one job (their largest
    /// `MaxVcpus`): out-of-memory resizing never grows the stage past it. Unknown in
    /// records of earlier releases.
    #[serde(default)]
    pub max_vcpus: Option<u32>,
    /// How long its job is expected to run: what a cost budget plans with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_seconds: Option<u32>,
    /// The stage's own retry attempts and rules, instead of its job definition's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<crate::model::retry::RetryPolicy>,
    /// A map stage's items and limits: the stage runs one child per `ItemsPerChild` items
    /// (see `model::map`) instead of one job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub map: Option<crate::model::map::MapSpec>,
}

/// The idempotency key of a stage attempt's submission.
pub fn attempt_key(run_id: &str, stage: &str, attempt: u32) -> String {
    format!("run:{run_id}:{stage}:{attempt}")
}
