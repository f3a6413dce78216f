//! Pipelines and runs: declared DAGs of stages, validated at deploy time, and the pure state machine of a run.
//!
//! A pipeline is declared in the stack configuration under `Pipelines`:
//!
//! ```yaml
//! Pipelines:
//!   orders:
//!     MaxResizes: "2"                  # out-of-memory resubmissions per stage (default 2)
//!     Stages:
//!       extract:   {JobDefinition: default}
//!       transform: {JobDefinition: default, After: [extract], Memory: "1024"}
//!       validate:  {JobDefinition: default, After: extract}
//!       report:    {JobDefinition: report, After: [transform, validate], Parameters: {format: pdf}}
//!     OnFailure:   {JobDefinition: default, Parameters: {action: cleanup}}
//! ```
//!
//! Each stage names a job definition by key and optionally a size (`Vcpu`/`Memory`, a
//! valid Fargate pair), parameters, a queue (by key) and the stages it runs `After`
//! (at most 20). Validation refuses unknown job definitions and queues, unknown upstream
//! stages, cycles, invalid sizes and pipelines without a first stage, so a bad pipeline
//! fails `sam deploy` rather than a run.
//!
//! A [`Run`] is one execution: a snapshot of the DAG, the run's input, and each stage's
//! attempts. [`Run::apply`] takes a job state change and returns what changed and what
//! to do next; it never goes back: terminal states are final, events for an attempt other
//! than the stage's current one are ignored, and a stage is planned for submission once
//! (its next attempt is written to the record before anything is submitted, so a crash
//! leaves a record that says what is still to submit).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::batch_event::{JobStateChangeEvent, JobStatus};
use crate::fargate::{parse_memory, parse_vcpu, Size};
use crate::stack_config::JobDefinition;

pub const MAX_UPSTREAMS: usize = 20;
pub const DEFAULT_MAX_RESIZES: u32 = 2;
pub const OUT_OF_MEMORY_REASON: &str = "OutOfMemoryError: Container killed due to memory usage";

// ----- declaration -------------------------------------------------------------------------

fn de_opt_text<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    let value = Value::deserialize(deserializer)?;
    match value {
        Value::String(s) => Ok(Some(s)),
        Value::Number(n) => Ok(Some(n.to_string())),
        other => Err(serde::de::Error::custom(format!("expected a string, got {other}"))),
    }
}

fn de_opt_list<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<Vec<String>>, D::Error> {
    let value = Value::deserialize(deserializer)?;
    match value {
        Value::String(s) => {
            Ok(Some(s.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()))
        }
        Value::Array(items) => items
            .into_iter()
            .map(|item| {
                item.as_str().map(str::to_owned).ok_or_else(|| serde::de::Error::custom("expected stage names"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        other => Err(serde::de::Error::custom(format!("expected a list of stage names, got {other}"))),
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct PipelineDoc {
    #[serde(default)]
    pub stages: BTreeMap<String, StageDoc>,
    #[serde(default)]
    pub on_failure: Option<StageDoc>,
    #[serde(default, deserialize_with = "de_opt_text")]
    pub max_resizes: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct StageDoc {
    pub job_definition: Option<String>,
    #[serde(default, deserialize_with = "de_opt_text")]
    pub vcpu: Option<String>,
    #[serde(default, deserialize_with = "de_opt_text")]
    pub memory: Option<String>,
    #[serde(default)]
    pub parameters: Option<BTreeMap<String, String>>,
    pub queue: Option<String>,
    #[serde(default, deserialize_with = "de_opt_list")]
    pub after: Option<Vec<String>>,
    #[serde(default, deserialize_with = "de_opt_text")]
    pub max_resizes: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pipeline {
    pub name: String,
    pub stages: BTreeMap<String, Stage>,
    pub on_failure: Option<Stage>,
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
}

/// The name of the failure stage in a run's record.
pub const ON_FAILURE: &str = "on-failure";

/// Validates the `Pipelines` section against the job definitions and queues.
pub fn resolve_pipelines(
    doc: &Value,
    definitions: &BTreeMap<String, JobDefinition>,
    queues: &BTreeSet<String>,
    problems: &mut Vec<String>,
) -> BTreeMap<String, Pipeline> {
    let mut pipelines = BTreeMap::new();
    if doc.is_null() {
        return pipelines;
    }
    let docs: BTreeMap<String, PipelineDoc> = match serde_path_to_error::deserialize(doc) {
        Ok(docs) => docs,
        Err(err) => {
            problems.push(format!("Pipelines.{}: {}", err.path(), err.inner()));
            return pipelines;
        }
    };
    for (name, pipeline) in docs {
        let path = format!("Pipelines.{name}");
        if !(1..=40).contains(&name.len()) || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            problems.push(format!("{path}: pipeline names are 1-40 letters, digits, - or _"));
        }
        let default_resizes = parse_resizes(&path, pipeline.max_resizes.as_deref(), DEFAULT_MAX_RESIZES, problems);
        if pipeline.stages.is_empty() {
            problems.push(format!("{path}.Stages: declare at least one stage"));
        }
        let mut stages = BTreeMap::new();
        for (key, stage) in &pipeline.stages {
            let stage_path = format!("{path}.Stages.{key}");
            if key == ON_FAILURE
                || !(1..=40).contains(&key.len())
                || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                problems
                    .push(format!("{stage_path}: stage names are 1-40 letters, digits, - or _ (and not {ON_FAILURE})"));
            }
            if let Some(resolved) = resolve_stage(&stage_path, stage, default_resizes, definitions, queues, problems) {
                stages.insert(key.clone(), resolved);
            }
        }
        for (key, stage) in &stages {
            if stage.after.len() > MAX_UPSTREAMS {
                problems
                    .push(format!("{path}.Stages.{key}.After: {} stages; at most {MAX_UPSTREAMS}", stage.after.len()));
            }
            for upstream in &stage.after {
                if !pipeline.stages.contains_key(upstream) {
                    problems.push(format!("{path}.Stages.{key}.After: there is no stage {upstream:?}"));
                }
                if upstream == key {
                    problems.push(format!("{path}.Stages.{key}.After: a stage cannot run after itself"));
                }
            }
        }
        if let Some(cycle) = find_cycle(&stages) {
            problems.push(format!("{path}: the stages form a cycle: {}", cycle.join(" -> ")));
        }
        if !stages.is_empty() && stages.values().all(|s| !s.after.is_empty()) {
            problems.push(format!("{path}: no stage can start first (every stage runs after another)"));
        }
        let on_failure = pipeline.on_failure.as_ref().and_then(|stage| {
            if stage.after.as_ref().is_some_and(|a| !a.is_empty()) {
                problems.push(format!(
                    "{path}.OnFailure.After: the failure stage runs when the run fails, after nothing else"
                ));
            }
            resolve_stage(&format!("{path}.OnFailure"), stage, 0, definitions, queues, problems)
        });
        pipelines.insert(name.clone(), Pipeline { name, stages, on_failure });
    }
    pipelines
}

fn parse_resizes(path: &str, text: Option<&str>, default: u32, problems: &mut Vec<String>) -> u32 {
    match text.map(|t| t.trim().parse::<u32>()) {
        None => default,
        Some(Ok(n)) if n <= 10 => n,
        Some(_) => {
            problems.push(format!("{path}.MaxResizes {:?}: use 0 to 10", text.unwrap_or_default()));
            default
        }
    }
}

fn resolve_stage(
    path: &str,
    doc: &StageDoc,
    default_resizes: u32,
    definitions: &BTreeMap<String, JobDefinition>,
    queues: &BTreeSet<String>,
    problems: &mut Vec<String>,
) -> Option<Stage> {
    let Some(key) = &doc.job_definition else {
        problems.push(format!("{path}.JobDefinition: every stage names a job definition"));
        return None;
    };
    let Some(definition) = definitions.get(key) else {
        problems.push(format!("{path}.JobDefinition: {key:?} is not a key of JobDefinitions"));
        return None;
    };
    let vcpu = doc.vcpu.as_deref().map(parse_vcpu).transpose();
    let memory = doc.memory.as_deref().map(parse_memory).transpose();
    let size = match (vcpu, memory) {
        (Ok(vcpu), Ok(memory)) => {
            let (vcpu, memory) = (vcpu.unwrap_or(definition.size.vcpu), memory.unwrap_or(definition.size.memory_mib));
            match Size::exact(vcpu, memory) {
                Ok(size) => size,
                Err(err) => {
                    problems.push(format!("{path}: {err}"));
                    definition.size
                }
            }
        }
        (vcpu, memory) => {
            for err in [vcpu.err(), memory.err()].into_iter().flatten() {
                problems.push(format!("{path}: {err}"));
            }
            definition.size
        }
    };
    let queue = doc.queue.clone().unwrap_or_else(|| definition.queue.clone());
    if !queues.contains(&queue) {
        problems.push(format!("{path}.Queue: {queue:?} is not a key of JobQueues"));
    }
    Some(Stage {
        job_definition: key.clone(),
        size,
        parameters: doc.parameters.clone().unwrap_or_default(),
        queue,
        after: doc.after.clone().unwrap_or_default(),
        max_resizes: parse_resizes(path, doc.max_resizes.as_deref(), default_resizes, problems),
    })
}

/// A cycle among the stages, as the path that closes it, if there is one.
fn find_cycle(stages: &BTreeMap<String, Stage>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Visiting,
        Done,
    }
    fn visit(
        stage: &str,
        stages: &BTreeMap<String, Stage>,
        marks: &mut BTreeMap<String, Mark>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match marks.get(stage) {
            Some(Mark::Done) => return None,
            Some(Mark::Visiting) => {
                let start = path.iter().position(|s| s == stage).unwrap_or(0);
                let mut cycle = path[start..].to_vec();
                cycle.push(stage.to_owned());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(stage.to_owned(), Mark::Visiting);
        path.push(stage.to_owned());
        for upstream in stages.get(stage).map(|s| s.after.as_slice()).unwrap_or_default() {
            if stages.contains_key(upstream) && upstream != stage {
                if let Some(cycle) = visit(upstream, stages, marks, path) {
                    return Some(cycle);
                }
            }
        }
        path.pop();
        marks.insert(stage.to_owned(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for stage in stages.keys() {
        if let Some(mut cycle) = visit(stage, stages, &mut marks, &mut Vec::new()) {
            // Written in the order the stages run.
            cycle.reverse();
            return Some(cycle);
        }
    }
    None
}

// ----- runs ----------------------------------------------------------------------------------

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
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StageRun {
    pub status: StageStatus,
    pub attempts: Vec<Attempt>,
}

impl StageRun {
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

impl Run {
    /// A new run: its first stages planned for submission.
    pub fn start(run_id: String, pipeline: &Pipeline, trigger: &str, input: RunInput, now_ms: i64) -> Run {
        let stages = pipeline
            .stages
            .keys()
            .map(|key| (key.clone(), StageRun { status: StageStatus::Pending, attempts: vec![] }))
            .collect();
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
            let attempt = Attempt::planned(&self.run_id, &key, 1, self.pipeline.stages[&key].size);
            if let Some(stage_run) = self.stages.get_mut(&key) {
                stage_run.status = StageStatus::Submitting;
                stage_run.attempts.push(attempt);
            }
        }
    }

    /// Applies a job state change of one of this run's stages.
    pub fn apply(&mut self, stage_name: &str, event: &JobStateChangeEvent, now_ms: i64) -> Applied {
        let detail = &event.detail;
        if self.status.is_terminal() && stage_name != ON_FAILURE {
            return Applied::Unchanged("the run has ended");
        }
        let Some(max_resizes) = self.stage(stage_name).map(|s| s.max_resizes) else {
            return Applied::Unchanged("no such stage in this run");
        };
        let run_id = self.run_id.clone();
        let Some(stage_run) = self.stage_run_mut(stage_name) else {
            return Applied::Unchanged("the stage has not started");
        };
        let attempts = stage_run.attempts.len() as u32;
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
        current.stopped_at = detail.stopped_at.or(Some(now_ms));
        current.exit_code = container.and_then(|c| c.exit_code);
        current.reason = container.and_then(|c| c.reason.clone()).or_else(|| detail.status_reason.clone());
        let succeeded = detail.status == JobStatus::Succeeded;
        current.status = if succeeded { StageStatus::Succeeded } else { StageStatus::Failed };
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
        // Failed: out of memory gets a larger size while the stage's limit allows.
        let out_of_memory = is_out_of_memory(event);
        if out_of_memory && attempts <= max_resizes {
            if let Some(next) = size.next_for_memory() {
                stage_run.status = StageStatus::Submitting;
                stage_run.attempts.push(Attempt::planned(&run_id, stage_name, attempts + 1, next));
                return Applied::Changed;
            }
        }
        stage_run.status = StageStatus::Failed;
        let why = if out_of_memory {
            format!("stage {stage_name} ran out of memory {attempts} time(s); its resize limit is {max_resizes}")
        } else {
            format!("stage {stage_name} failed: {}", reason.unwrap_or_else(|| "no reason given".into()))
        };
        self.end(RunStatus::Failed, Some(why), now_ms);
        Applied::Changed
    }

    /// Ends the run: stages that never started are skipped (cancelled, for a cancel); on
    /// failure the failure stage is planned.
    fn end(&mut self, status: RunStatus, reason: Option<String>, now_ms: i64) {
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
                let attempt = Attempt::planned(&self.run_id, ON_FAILURE, 1, stage.size);
                self.on_failure = Some(StageRun { status: StageStatus::Submitting, attempts: vec![attempt] });
            }
        }
    }

    /// Cancels a running run. Returns the job ids to terminate (submitted, not ended).
    pub fn cancel(&mut self, now_ms: i64) -> Result<Vec<String>, String> {
        if self.status.is_terminal() {
            return Err(format!("run {} has already ended ({})", self.run_id, self.status.as_str()));
        }
        let mut to_terminate = Vec::new();
        for stage_run in self.stages.values_mut() {
            if matches!(stage_run.status, StageStatus::Submitted | StageStatus::Running) {
                if let Some(attempt) = stage_run.attempts.last_mut() {
                    to_terminate.extend(attempt.job_id.clone());
                    attempt.status = StageStatus::Cancelled;
                    attempt.reason = Some("run cancelled".into());
                }
                stage_run.status = StageStatus::Cancelled;
            }
        }
        self.end(RunStatus::Cancelled, Some("cancelled by request".into()), now_ms);
        Ok(to_terminate)
    }

    /// The run's duration so far, or in all if it ended.
    pub fn duration_ms(&self, now_ms: i64) -> i64 {
        self.ended_at.unwrap_or(now_ms) - self.created_at
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

/// The idempotency key of a stage attempt's submission.
pub fn attempt_key(run_id: &str, stage: &str, attempt: u32) -> String {
    format!("run:{run_id}:{stage}:{attempt}")
}

impl Attempt {
    /// An attempt to submit, named deterministically (so its job can be found by name).
    fn planned(run_id: &str, stage: &str, number: u32, size: Size) -> Attempt {
        let job_name =
            crate::job_request::job_name(&format!("{run_id}-{stage}-a{number}"), &attempt_key(run_id, stage, number));
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
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fargate::Quarters;
    use serde_json::json;

    fn definitions() -> BTreeMap<String, JobDefinition> {
        let config = crate::stack_config::StackConfig::from_properties(&json!({
            "Network": {"Subnets": ["subnet-1"], "SecurityGroups": ["sg-1"]},
            "JobDefinitions": {"default": {}, "big": {"Vcpu": "1", "Memory": "2048"}}
        }))
        .unwrap();
        config.job_definitions
    }

    fn resolve(doc: Value) -> Result<BTreeMap<String, Pipeline>, Vec<String>> {
        let mut problems = Vec::new();
        let queues = BTreeSet::from(["default".to_owned()]);
        let pipelines = resolve_pipelines(&doc, &definitions(), &queues, &mut problems);
        if problems.is_empty() {
            Ok(pipelines)
        } else {
            Err(problems)
        }
    }

    fn diamond() -> Pipeline {
        resolve(json!({"d": {"MaxResizes": "1", "Stages": {
            "a": {"JobDefinition": "default"},
            "b": {"JobDefinition": "default", "After": ["a"]},
            "c": {"JobDefinition": "default", "After": "a"},
            "d": {"JobDefinition": "big", "After": ["b", "c"]}
        }, "OnFailure": {"JobDefinition": "default"}}}))
        .unwrap()
        .remove("d")
        .unwrap()
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
    fn invalid_declarations_say_what_is_wrong() {
        let check = |doc: Value, expected: &str| {
            let problems = resolve(doc).unwrap_err().join("; ");
            assert!(problems.contains(expected), "{expected:?} in {problems}");
        };
        check(json!({"p": {"Stages": {"a": {"JobDefinition": "nope"}}}}), "\"nope\" is not a key of JobDefinitions");
        check(
            json!({"p": {"Stages": {"a": {"JobDefinition": "default", "After": ["b"]}, "b": {"JobDefinition": "default", "After": ["a"]}}}}),
            "cycle: a -> b -> a",
        );
        check(
            json!({"p": {"Stages": {"a": {"JobDefinition": "default"}, "b": {"JobDefinition": "default", "After": ["ghost"]}}}}),
            "there is no stage \"ghost\"",
        );
        check(
            json!({"p": {"Stages": {"a": {"JobDefinition": "default", "Vcpu": "2", "Memory": "512"}}}}),
            "2 vCPU with 512 MiB is not a valid Fargate size",
        );
        let many: serde_json::Map<String, Value> =
            (0..22).map(|i| (format!("s{i}"), json!({"JobDefinition": "default"}))).collect();
        let mut stages = many.clone();
        stages.insert("last".into(), json!({"JobDefinition": "default", "After": many.keys().collect::<Vec<_>>()}));
        check(json!({"p": {"Stages": stages}}), "22 stages; at most 20");
        check(json!({"p": {"Stages": {}}}), "declare at least one stage");
        check(
            json!({"p": {"Stages": {"a": {"JobDefinition": "default", "Queue": "missing"}}}}),
            "\"missing\" is not a key of JobQueues",
        );
        check(json!({"p": {"Stages": {"a": {"Job": "default"}}}}), "unknown field `Job`");
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
        assert_eq!(run.cancel(2).unwrap(), ["b-1", "c-1"]);
        assert_eq!(run.status, RunStatus::Cancelled);
        assert_eq!(run.stages["d"].status, StageStatus::Cancelled);
        assert!(run.on_failure.is_none(), "a cancel is not a failure");
        assert!(matches!(run.apply("b", &event("b-1", "SUCCEEDED", json!({})), 3), Applied::Unchanged(_)));
        assert!(run.cancel(4).is_err());
    }
}
