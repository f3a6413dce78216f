//! The run driver: puts each input to a run through the run model, writes the record once, and carries out the effects.
//!
//! Every path that changes a run — a job state change, a start, a cancel, a redrive, the
//! sweep's visit — is one input ([`crate::model::run::Input`]). The driver applies it to
//! the record as read and writes the record once, conditionally on the version read
//! (optimistic concurrency: on conflict it reads again and applies the input to the fresh
//! record, so concurrent events for one run never overwrite each other). It then executes
//! the step's effects in order ([`execute`]): submissions through the [`Submitter`]
//! (exactly once each, under the key `run:<id>:<stage>:<n>`), stops, claim settlements,
//! the announcement, metrics. A submission's outcome is one more input, written the same
//! way. Every input also yields what the record still owes, so a crash between a write
//! and a submission is repaired by the next event or by the repair sweep
//! ([`crate::services::sweep`]), which visits every open run.
//!
//! [`Submitter`]: crate::services::submitter::Submitter

mod execute;
mod jobs;

use std::collections::BTreeMap;

use tracing::{info, warn, Instrument};

use crate::telemetry::{run_span, stage_span};

use crate::model::batch_event::JobStateChangeEvent;
use crate::model::fargate::Size;
use crate::model::run::{
    Applied, CancelRequested, Context, Created, Input, JobChanged, RedriveRefused, RedriveRequested, Redriven, Resume,
    Run, RunInput, RunStatus, Step,
};
use crate::services::config_cache::ConfigCache;
use crate::services::ports::{BatchPort, Clock, RunAnnouncer};
use crate::settings::PriceOverrides;
use crate::store::{ClaimStore, Holder, RunStore, VersionedRun};
use crate::Error;

pub use execute::Executed;
pub use jobs::{array_job, check_run, run_id, stage_job};

const WRITE_ATTEMPTS: usize = 8;

/// What a cancel request came to.
#[derive(Debug, Clone, PartialEq)]
pub enum CancelOutcome {
    NoSuchRun,
    /// The run had ended already; says how.
    AlreadyEnded(String),
    Cancelled {
        run: Box<Run>,
        terminated: Vec<String>,
    },
}

/// What a redrive request came to.
#[derive(Debug, Clone, PartialEq)]
pub enum RedriveOutcome {
    NoSuchRun,
    Refused(RedriveRefused),
    Redriven { run: Box<Run>, redriven: Redriven },
}

/// Says how a stage attempt's job ended, with its queue wait and running time apart (the
/// saved queries "slowest stages" and "a run's lines" read these lines). Where Batch retried
/// the job, its runs are summed and the waits between them count as queue wait.
fn log_attempt_ended(attempt: &crate::model::run::Attempt) {
    let tasks = &attempt.billed;
    let first_start = tasks.first().map(|t| t.started_at).or(attempt.started_at);
    let between_runs: i64 = tasks.windows(2).map(|pair| (pair[1].started_at - pair[0].stopped_at).max(0)).sum();
    let wait_ms = attempt.submitted_at.zip(first_start).map(|(from, to)| (to - from).max(0) + between_runs);
    let run_ms = match tasks.as_slice() {
        [] => attempt.started_at.zip(attempt.stopped_at).map(|(from, to)| (to - from).max(0)),
        tasks => Some(tasks.iter().map(|t| (t.stopped_at - t.started_at).max(0)).sum()),
    };
    let (exit_code, reason, log_stream) = (attempt.exit_code, attempt.reason.as_deref(), attempt.log_stream.as_deref());
    let (status, size) = (format!("{:?}", attempt.status).to_ascii_uppercase(), attempt.size.to_string());
    info!(attempt = attempt.number, status, %size, wait_ms, run_ms, exit_code, reason, log_stream, "stage attempt ended");
}

/// Everything run handling needs, as ports.
pub struct RunDriver<'a> {
    pub runs: &'a dyn RunStore,
    pub claims: &'a dyn ClaimStore,
    pub batch: &'a dyn BatchPort,
    pub announcer: &'a dyn RunAnnouncer,
    /// The stack configuration: how jobs are built and priced.
    pub configs: &'a ConfigCache,
    pub clock: &'a dyn Clock,
    /// The invocation this driver works for: it holds the claims of what it submits.
    pub holder: &'a Holder,
    /// The stack's price overrides (what runs' costs and budgets are priced with).
    pub prices: &'a PriceOverrides,
}

impl RunDriver<'_> {
    /// The run, as stored now.
    pub async fn load(&self, run_id: &str) -> Result<Option<VersionedRun>, Error> {
        self.runs.load_run(run_id).await
    }

    /// Changes the record with `change` and writes it if it says it changed, starting from
    /// `current` and reading again only when another writer got there first. Returns the
    /// record as it stands and what the last application of `change` returned; `None`
    /// when the run has vanished (its retention ran out).
    pub(crate) async fn update<A>(
        &self,
        mut current: VersionedRun,
        mut change: impl FnMut(&mut Run) -> (bool, A),
    ) -> Result<Option<(VersionedRun, A)>, Error> {
        for _ in 0..WRITE_ATTEMPTS {
            let mut run = current.run.clone();
            let (changed, answer) = change(&mut run);
            if !changed {
                return Ok(Some((current, answer)));
            }
            if let Some(version) = self.runs.save_run(&run, Some(&current)).await? {
                return Ok(Some((VersionedRun { run, version }, answer)));
            }
            match self.runs.load_run(&current.run.run_id).await? {
                Some(fresh) => current = fresh,
                None => return Ok(None),
            }
        }
        Err(Error::Contention(format!("run {}", current.run.run_id)))
    }

    /// Puts `input` to the run as read and writes the record if it changed (see
    /// [`RunDriver::update`]). Returns the record as it stands and the step to carry out.
    pub(crate) async fn write<I: Input>(
        &self,
        current: VersionedRun,
        input: &I,
        now_ms: i64,
    ) -> Result<Option<(VersionedRun, Step<I::Answer>)>, Error> {
        let span = run_span(&current.run.run_id, &current.run.pipeline.name);
        async move {
        let pricing = self.configs.pricing(self.prices).await;
        let ctx = Context { now_ms, pricing: &pricing };
        let was_running = current.run.status == RunStatus::Running;
        let written = self
            .update(current, |run| {
                let step = run.handle(input, &ctx);
                (step.changed, step)
            })
            .await?;
        if let Some((record, _)) = written.as_ref().filter(|(r, _)| was_running && r.run.status == RunStatus::Failed) {
            warn!(run_id = %record.run.run_id, reason = record.run.reason.as_deref().unwrap_or_default(), "the run failed");
        }
        Ok(written)
        }
        .instrument(span)
        .await
    }

    /// Starts a run of `pipeline` (once per idempotency key) and submits its first stages.
    /// Returns the run and whether this call created it.
    pub async fn start(
        &self,
        pipeline: &str,
        trigger: &str,
        idempotency_key: &str,
        input: RunInput,
        now_ms: i64,
    ) -> Result<(Run, bool), Error> {
        let config = self.configs.get().await?;
        let declared = config
            .pipelines
            .get(pipeline)
            .ok_or_else(|| Error::InvalidEvent(format!("there is no pipeline {pipeline:?}")))?;
        self.start_pipeline(declared, trigger, idempotency_key, input, now_ms).await
    }

    /// Starts a run of `declared` (once per idempotency key) and submits its first stages:
    /// [`RunDriver::start`] for a pipeline the caller has in hand rather than by name (a
    /// coalescing trigger's window pipeline, which the configuration does not list).
    pub async fn start_pipeline(
        &self,
        declared: &crate::model::pipeline::Pipeline,
        trigger: &str,
        idempotency_key: &str,
        input: RunInput,
        now_ms: i64,
    ) -> Result<(Run, bool), Error> {
        let pipeline = declared.name.as_str();
        let run = Run::start(run_id(pipeline, idempotency_key), declared, trigger, input, now_ms);
        let span = run_span(&run.run_id, pipeline);
        async move {
            let (record, created) = match self.runs.save_run(&run, None).await? {
                Some(version) => (VersionedRun { run, version }, true),
                None => match self.runs.load_run(&run.run_id).await? {
                    Some(existing) => (existing, false),
                    None => return Err(Error::Contention(format!("run {}", run.run_id))),
                },
            };
            let record = if created {
                info!(run_id = %record.run.run_id, pipeline, "run started");
                self.drive_or_current(record, &Created, now_ms).await?
            } else {
                self.drive_or_current(record, &Resume, now_ms).await?
            };
            Ok((record.run, created))
        }
        .instrument(span)
        .await
    }

    /// Applies a job state change to its run, then carries out what it calls for.
    pub async fn advance(
        &self,
        run_id: &str,
        stage: &str,
        event: &JobStateChangeEvent,
        now_ms: i64,
    ) -> Result<Applied, Error> {
        let Some(current) = self.runs.load_run(run_id).await? else { return Ok(Applied::Unchanged("no such run")) };
        self.apply(current, stage, event, now_ms).await
    }

    /// Applies a job state change to the run as read, then carries out what it calls for.
    pub async fn apply(
        &self,
        current: VersionedRun,
        stage: &str,
        event: &JobStateChangeEvent,
        now_ms: i64,
    ) -> Result<Applied, Error> {
        let run_id = current.run.run_id.clone();
        let span = run_span(&run_id, &current.run.pipeline.name);
        let job_id = event.detail.job_id.as_str();
        let attempt = current.run.attempt_of_job(stage, job_id).map(|a| a.number);
        async move {
            let Some((record, step)) = self.write(current, &JobChanged { stage, event }, now_ms).await? else {
                return Ok(Applied::Unchanged("no such run"));
            };
            if let Applied::Unchanged(why) = &step.answer {
                let status = event.detail.status.as_str();
                info!(run_id, stage, job_id, status, why, "event changes nothing in the run");
            } else if event.detail.status.is_terminal() {
                record.run.attempt_of_job(stage, job_id).into_iter().for_each(log_attempt_ended);
            }
            self.execute(record, step.effects, now_ms, &mut Executed::default()).await?;
            Ok(step.answer)
        }
        .instrument(stage_span(&span, stage, attempt, Some(job_id)))
        .await
    }

    /// Puts the map worker's answer (a map expanded or closed) to the run, then carries out
    /// what it calls for (the arrays submitted, the stages after the map planned and
    /// submitted). Returns whether the answer was the one the run awaited: `false` for a
    /// repeated answer, or one for an attempt the run gave up.
    pub async fn answer_map_work<I: Input<Answer = bool>>(
        &self,
        run_id: &str,
        answer: &I,
        now_ms: i64,
    ) -> Result<bool, Error> {
        let Some(current) = self.runs.load_run(run_id).await? else { return Ok(false) };
        let Some((record, step)) = self.write(current, answer, now_ms).await? else { return Ok(false) };
        self.execute(record, step.effects, now_ms, &mut Executed::default()).await?;
        Ok(step.answer)
    }

    /// Carries out what the record owes (submissions planned, an announcement due),
    /// without any new input. Returns the record as it stands afterwards.
    pub async fn drive(&self, record: VersionedRun, now_ms: i64) -> Result<VersionedRun, Error> {
        let (record, effects) = self.put(record, &Resume, now_ms).await?;
        self.execute(record, effects, now_ms, &mut Executed::default()).await
    }

    /// Writes an input with nothing to answer; an error when the run has vanished.
    async fn put<I: Input<Answer = ()>>(
        &self,
        record: VersionedRun,
        input: &I,
        now_ms: i64,
    ) -> Result<(VersionedRun, Vec<crate::model::run::Effect>), Error> {
        let run_id = record.run.run_id.clone();
        let written = self.write(record, input, now_ms).await?;
        let (record, step) = written.ok_or_else(|| Error::Contention(format!("run {run_id} vanished")))?;
        Ok((record, step.effects))
    }

    /// Puts an input with nothing to answer to the run and carries out its effects, for a
    /// caller who only needs the run's state (the API): another invocation announcing it
    /// is no error here, the run as stored is the answer.
    async fn drive_or_current<I: Input<Answer = ()>>(
        &self,
        record: VersionedRun,
        input: &I,
        now_ms: i64,
    ) -> Result<VersionedRun, Error> {
        let (record, effects) = self.put(record, input, now_ms).await?;
        self.execute_or_current(record, effects, now_ms, &mut Executed::default()).await
    }

    /// Executes effects; if another invocation is announcing the run ([`Error::InFlight`]),
    /// answers the run as stored.
    async fn execute_or_current(
        &self,
        record: VersionedRun,
        effects: Vec<crate::model::run::Effect>,
        now_ms: i64,
        done: &mut Executed,
    ) -> Result<VersionedRun, Error> {
        let run_id = record.run.run_id.clone();
        match self.execute(record.clone(), effects, now_ms, done).await {
            Err(Error::InFlight(_)) => Ok(self.runs.load_run(&run_id).await?.unwrap_or(record)),
            other => other,
        }
    }

    /// Cancels a run (see [`Run::cancel`]): a running one is marked CANCELLED, then every
    /// job of it still going is terminated — those recorded, and those planned but never
    /// recorded (found by their deterministic name); a FAILED one stays FAILED and its jobs
    /// still going are terminated. A cancel of a CANCELLED run terminates what is still
    /// going again, so a retry after a failed TerminateJob finishes what the first began.
    pub async fn cancel(&self, run_id: &str, now_ms: i64) -> Result<CancelOutcome, Error> {
        let Some(current) = self.runs.load_run(run_id).await? else { return Ok(CancelOutcome::NoSuchRun) };
        let Some((record, step)) = self.write(current, &CancelRequested, now_ms).await? else {
            return Ok(CancelOutcome::NoSuchRun);
        };
        if let Err(why) = step.answer {
            return Ok(CancelOutcome::AlreadyEnded(why));
        }
        let mut done = Executed::default();
        let run = self.execute_or_current(record, step.effects, now_ms, &mut done).await?.run;
        Ok(CancelOutcome::Cancelled { run: Box::new(run), terminated: done.stopped })
    }

    /// Redrives an ended run, as read (see [`Run::redrive`]): its next generation reruns the
    /// stages that did not succeed, as new attempts, and is driven at once. The request's
    /// key makes it idempotent: the same key gets the generation it started.
    pub async fn redrive(
        &self,
        current: VersionedRun,
        key: &str,
        sizes: &BTreeMap<String, Size>,
        now_ms: i64,
    ) -> Result<RedriveOutcome, Error> {
        self.redrive_request(current, key, sizes, None, now_ms).await
    }

    /// [`RunDriver::redrive`], with a fingerprint of the request as its caller wrote it (see
    /// [`crate::model::run::Redrive::request`]).
    pub async fn redrive_request(
        &self,
        current: VersionedRun,
        key: &str,
        sizes: &BTreeMap<String, Size>,
        request: Option<&str>,
        now_ms: i64,
    ) -> Result<RedriveOutcome, Error> {
        let run_id = current.run.run_id.clone();
        let span = run_span(&run_id, &current.run.pipeline.name);
        async move {
            let input = RedriveRequested { key, sizes, request };
            let Some((record, step)) = self.write(current, &input, now_ms).await? else {
                return Ok(RedriveOutcome::NoSuchRun);
            };
            let redriven = match step.answer {
                Ok(redriven) => redriven,
                Err(refused) => return Ok(RedriveOutcome::Refused(refused)),
            };
            if !redriven.duplicate {
                info!(run_id, generation = redriven.generation, stages = ?redriven.stages, "run redriven");
            }
            let run = self.execute_or_current(record, step.effects, now_ms, &mut Executed::default()).await?.run;
            Ok(RedriveOutcome::Redriven { run: Box::new(run), redriven })
        }
        .instrument(span)
        .await
    }
}
