//! The run driver: starts runs, applies job state changes to them, submits what they plan and announces their end.
//!
//! A run record changes only by conditional writes on the version read (optimistic
//! concurrency), retried from a fresh read on conflict, so concurrent events for one run
//! never overwrite each other. The driver works on the record it is handed and the one
//! its own writes produce; it reads the store again only when a write lost.
//!
//! [`RunDriver::drive`] does what a record says is still to do: submit planned stage
//! attempts (exactly once each, through the [`Submitter`] with the key
//! `run:<id>:<stage>:<n>`), and for an ended run, send the "Batchline Run Completed"
//! event and the run metrics once — after settling the submission claims of attempts the
//! run gave up before a job was recorded ([`RunDriver::settle_withdrawn`]). Every path that changes a run drives it afterwards,
//! and the repair sweep ([`crate::services::sweep`]) drives every open run, so a crash
//! between a write and a submission is repaired by the next event or sweep.

use std::collections::BTreeMap;

use tracing::{info, warn};

use crate::config::PriceOverrides;
use crate::model::batch_event::JobStateChangeEvent;
use crate::model::fargate::Size;
use crate::model::job_request::{
    digest, job_name, JobRequest, RequestError, PIPELINE_TAG, RUN_TAG, STAGE_TAG, TRIGGER_TAG,
};
use crate::model::pipeline::{attempt_key, Pipeline, ON_FAILURE};
use crate::model::run::{
    Applied, Attempt, CompletionClaim, JobToStop, RedriveRefused, Redriven, Run, RunInput, RunStatus, StageStatus,
};
use crate::model::stack::StackConfig;
use crate::services::announce::{completion_detail, outcome_metrics, MetricUnit, RunAnnouncer, RunMetric};
use crate::services::batch::BatchPort;
use crate::services::clock::{retry_pause, Clock, ANSWER_MARGIN_MS};
use crate::services::config_cache::ConfigCache;
use crate::services::submitter::{abandoned, Submitter, TAKEOVER_MARGIN_MS};
use crate::store::{ClaimState, ClaimStore, Holder, RunStore, SubmissionClaim, VersionedRun};
use crate::Error;

const WRITE_ATTEMPTS: usize = 8;
/// How much of a reason TerminateJob is given (the status reason a job then shows).
const STOP_REASON_CHARS: usize = 250;

/// A run id: the pipeline's name and a hash of what started it, so a repeated trigger
/// names the same run.
pub fn run_id(pipeline: &str, idempotency_key: &str) -> String {
    format!("{pipeline}-{}", digest(idempotency_key, 16))
}

/// The job for a planned stage attempt.
pub fn stage_job(config: &StackConfig, run: &Run, stage: &str, attempt: &Attempt) -> Result<JobRequest, Error> {
    let unsubmittable =
        |reason: String| Error::Unsubmittable { run_id: run.run_id.clone(), stage: stage.to_owned(), reason };
    let declared = run.stage(stage).ok_or_else(|| unsubmittable("the run has no such stage".into()))?;
    let definition = config.job_definitions.get(&declared.job_definition).ok_or_else(|| {
        unsubmittable(format!("job definition {:?} is no longer configured", declared.job_definition))
    })?;
    let definition_arn = definition.arn.clone();
    let queue_arn = config
        .job_queues
        .get(&declared.queue)
        .map(|q| q.arn.clone())
        .ok_or_else(|| unsubmittable(format!("queue {:?} is no longer configured", declared.queue)))?;
    let mut parameters = run.input.parameters.clone();
    parameters.extend(declared.parameters.clone());
    parameters.insert("runId".into(), run.run_id.clone());
    parameters.insert("stage".into(), stage.to_owned());
    let mut environment = run.input.environment.clone();
    environment.insert("BATCHLINE_RUN_ID".into(), run.run_id.clone());
    environment.insert("BATCHLINE_STAGE".into(), stage.to_owned());
    environment.insert("BATCHLINE_ATTEMPT".into(), attempt.number.to_string());
    if let Some(folder) = config.roles.names.run_data_uri(&run.run_id) {
        environment.insert("BATCHLINE_RUN_DATA".into(), folder);
    }
    let key = attempt_key(&run.run_id, stage, attempt.number);
    Ok(JobRequest {
        job_name: attempt.job_name.clone().unwrap_or_else(|| job_name(&run.run_id, &key)),
        origin: key.clone(),
        idempotency_key: key,
        queue_arn,
        job_definition_arn: definition_arn,
        parameters,
        environment,
        command: None,
        size: (attempt.size != definition.size).then_some(attempt.size),
        array_size: None,
        depends_on: vec![],
        timeout_seconds: declared.timeout_seconds,
        retry: declared.retry.clone(),
        tags: BTreeMap::from([
            (RUN_TAG.to_owned(), run.run_id.clone()),
            (PIPELINE_TAG.to_owned(), run.pipeline.name.clone()),
            (STAGE_TAG.to_owned(), stage.to_owned()),
            (TRIGGER_TAG.to_owned(), run.trigger.clone()),
        ]),
    })
}

/// Whether a submission failed for good: the stage's job cannot be built from the
/// configuration any more, or Batch refuses it (a deregistered job definition, a queue
/// gone). Anything else may work when tried again.
fn never_submittable(err: &Error) -> bool {
    match err {
        Error::Unsubmittable { .. } => true,
        Error::Aws { operation: "SubmitJob", code, .. } => code == "ClientException",
        _ => false,
    }
}

/// The current attempt of a stage (the failure stage included).
fn current_attempt<'r>(run: &'r Run, stage: &str) -> Option<&'r Attempt> {
    let stage_run = if stage == ON_FAILURE { run.on_failure.as_ref() } else { run.stages.get(stage) }?;
    stage_run.current()
}

/// The current attempt of a stage: its number and job.
fn current_job(run: &Run, stage: &str) -> Option<(u32, Option<String>)> {
    current_attempt(run, stage).map(|attempt| (attempt.number, attempt.job_id.clone()))
}

/// Checks a run before it starts with the validator `POST /jobs` uses: every stage job the
/// run would submit (its failure stage included), with the run's input, must be a valid
/// SubmitJob request (no reserved `AWS_BATCH*` environment names, within SubmitJob's 30
/// KiB). Otherwise such a run could never submit that stage. Every problem, with its stage.
pub fn check_run(
    config: &StackConfig,
    pipeline: &Pipeline,
    run_id: &str,
    input: &RunInput,
) -> Result<(), Vec<(String, RequestError)>> {
    let run = Run::start(run_id.to_owned(), pipeline, "api", input.clone(), 0);
    let stages = pipeline.stages.iter().map(|(name, stage)| (name.as_str(), stage));
    let mut problems = Vec::new();
    for (name, stage) in stages.chain(pipeline.on_failure.iter().map(|stage| (ON_FAILURE, stage))) {
        let attempt = Attempt::planned(run_id, name, 1, stage.size);
        // A stage whose job cannot be built is not configured: refused at deploy time
        // already, not the caller's to fix.
        if let Ok(Err(found)) = stage_job(config, &run, name, &attempt).map(|request| request.validate()) {
            problems.extend(found.into_iter().map(|problem| (name.to_owned(), problem)));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

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

/// Everything run handling needs, as ports.
pub struct RunDriver<'a> {
    pub runs: &'a dyn RunStore,
    pub claims: &'a dyn ClaimStore,
    pub batch: &'a dyn BatchPort,
    pub announcer: &'a dyn RunAnnouncer,
    /// The stack configuration, read only when a stage must be submitted.
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

    /// Changes the record with `change` and writes it, starting from `current` and reading
    /// again only when another writer got there first. `change` returns false to write
    /// nothing. `None` when the run has vanished (its retention ran out).
    pub(crate) async fn update<F>(
        &self,
        mut current: VersionedRun,
        mut change: F,
    ) -> Result<Option<VersionedRun>, Error>
    where
        F: FnMut(&mut Run) -> bool,
    {
        for _ in 0..WRITE_ATTEMPTS {
            let mut run = current.run.clone();
            if !change(&mut run) {
                return Ok(Some(current));
            }
            if let Some(version) = self.runs.save_run(&run, Some(&current)).await? {
                return Ok(Some(VersionedRun { run, version }));
            }
            match self.runs.load_run(&current.run.run_id).await? {
                Some(fresh) => current = fresh,
                None => return Ok(None),
            }
        }
        Err(Error::Contention(format!("run {}", current.run.run_id)))
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
        let run = Run::start(run_id(pipeline, idempotency_key), declared, trigger, input, now_ms);
        let (record, created) = match self.runs.save_run(&run, None).await? {
            Some(version) => (VersionedRun { run, version }, true),
            None => match self.runs.load_run(&run.run_id).await? {
                Some(existing) => (existing, false),
                None => return Err(Error::Contention(format!("run {}", run.run_id))),
            },
        };
        if created {
            info!(run_id = %record.run.run_id, pipeline, "run started");
            let started = RunMetric { name: "RunsStarted", value: 1.0, unit: MetricUnit::Count };
            self.announcer.run_metrics(&record.run.pipeline.name, &[started]).await;
        }
        let driven = self.drive_or_current(record, now_ms).await?;
        Ok((driven.run, created))
    }

    /// Applies a job state change to its run, then drives the run.
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

    /// Applies a job state change to the run as read, then drives it.
    pub async fn apply(
        &self,
        current: VersionedRun,
        stage: &str,
        event: &JobStateChangeEvent,
        now_ms: i64,
    ) -> Result<Applied, Error> {
        let run_id = current.run.run_id.clone();
        let before = current_job(&current.run, stage);
        let mut outcome = Applied::Unchanged("no such run");
        let mut failed_now = false;
        let updated = self
            .update(current, |run| {
                let was_running = run.status == RunStatus::Running;
                // Every event of a run checks its deadline first.
                let late = run.fail_past_deadline(now_ms);
                outcome = run.apply(stage, event, now_ms);
                failed_now = was_running && run.status == RunStatus::Failed;
                late || outcome == Applied::Changed
            })
            .await?;
        if let Applied::Unchanged(why) = &outcome {
            info!(run_id, stage, job_id = %event.detail.job_id, status = event.detail.status.as_str(), why, "event changes nothing in the run");
        }
        if let Some(updated) = updated {
            if let (Some((number, None)), Some((after, Some(job_id)))) = (before, current_job(&updated.run, stage)) {
                if number == after {
                    // The event named the job before its submitter recorded it (the
                    // submitter failed after SubmitJob): record it on the claim too, so
                    // no claim is left PENDING for a job that exists.
                    self.claims.record_claim_job(&attempt_key(&run_id, stage, number), &job_id, None).await?;
                }
            }
            if failed_now {
                self.stop_after_failure(&updated.run).await?;
            }
            self.drive(updated, now_ms).await?;
        }
        Ok(outcome)
    }

    /// Submits what the run has planned and announces its end, each once. Returns the
    /// record as it stands afterwards.
    pub async fn drive(&self, mut record: VersionedRun, now_ms: i64) -> Result<VersionedRun, Error> {
        let submitter = Submitter { batch: self.batch, claims: self.claims, clock: self.clock, holder: self.holder };
        // A stage that can never be submitted fails the run and plans its failure stage:
        // one more round submits that (and a failure stage that cannot be submitted either
        // just fails).
        // Rounds: a budget or a stage that can never be submitted may fail the run, and the
        // next round submits its failure stage.
        for _ in 0..3 {
            let planned = record.run.to_submit();
            if planned.is_empty() {
                break;
            }
            let pricing = self.configs.pricing(self.prices).await;
            if let Some(reason) = record.run.over_budget(&pricing) {
                warn!(run_id = %record.run.run_id, reason, "the run's budget stops its next submissions; the run fails");
                let updated = self
                    .update(record.clone(), |run| match run.over_budget(&pricing) {
                        Some(reason) => run.fail_over_budget(reason, now_ms),
                        None => false,
                    })
                    .await?;
                if let Some(updated) = updated {
                    record = updated;
                    self.stop_after_failure(&record.run).await?;
                }
                continue;
            }
            for (stage, attempt) in planned {
                let config = self.configs.get().await?;
                let submitted = match stage_job(&config, &record.run, &stage, &attempt) {
                    Ok(request) => submitter.submit(&request).await.map_err(Error::from),
                    Err(err) => Err(err),
                };
                if let Err(Error::Withdrawn(key)) = &submitted {
                    // Our read is stale: the run gave this attempt up meanwhile. Go on from
                    // the run as it is now.
                    info!(run_id = %record.run.run_id, key, "the run withdrew the attempt; reading it again");
                    match self.runs.load_run(&record.run.run_id).await? {
                        Some(fresh) => record = fresh,
                        None => return Err(Error::Contention("a vanished run".into())),
                    }
                    break;
                }
                let outcome = match submitted {
                    Ok(submitted) => {
                        info!(run_id = %record.run.run_id, stage, attempt = attempt.number, job_id = %submitted.job_id, size = %attempt.size, "stage submitted");
                        Ok(submitted)
                    }
                    Err(err) if never_submittable(&err) => {
                        warn!(run_id = %record.run.run_id, stage, attempt = attempt.number, error = %err, "stage can never be submitted; the run fails");
                        Err(err.to_string())
                    }
                    Err(err) => return Err(err),
                };
                let mut failed_now = false;
                let updated = self
                    .update(record.clone(), |run| match &outcome {
                        Ok(s) => run.record_submitted(&stage, attempt.number, &s.job_id, &s.job_name, now_ms),
                        Err(why) => {
                            let was_running = run.status == RunStatus::Running;
                            let changed = run.fail_unsubmittable(&stage, attempt.number, why, now_ms);
                            failed_now = was_running && run.status == RunStatus::Failed;
                            changed
                        }
                    })
                    .await?;
                if let Some(updated) = updated {
                    record = updated;
                }
                if failed_now {
                    self.stop_after_failure(&record.run).await?;
                }
                if let Ok(submitted) = &outcome {
                    self.stop_if_run_moved_on(&record.run, &stage, attempt.number, &submitted.job_id).await?;
                }
            }
        }
        if record.run.ready_to_announce() {
            self.settle_withdrawn(&record.run).await?;
            record = self.announce_once(record, now_ms).await?;
        }
        Ok(record)
    }

    /// Settles the submission claims of the attempts an ended run gave up before a job was
    /// recorded, before it is announced: afterwards no claim of the run is left PENDING and
    /// no late holder (a handler still driving from a read taken before the run ended) can
    /// submit one. For each attempt's key:
    /// - nobody claimed it: the claim is written WITHDRAWN, so nobody ever will;
    /// - its job exists (recorded on the claim, or found by its name): the job is recorded
    ///   and stopped (again, if its submitter stopped it already — harmless);
    /// - PENDING without a job: withdrawn once its holder cannot be running any more; until
    ///   then the run waits ([`Error::InFlight`]) and the retry of this work (the event's
    ///   redelivery, the sweep) settles it. Nobody takes over a live holder's claim.
    async fn settle_withdrawn(&self, run: &Run) -> Result<(), Error> {
        let reason = format!("Batchline run {} ended before the job was recorded", run.run_id);
        for (stage, attempt) in run.withdrawn_attempts() {
            let key = attempt_key(&run.run_id, stage, attempt.number);
            let Some(job_name) = attempt.job_name.clone() else { continue };
            let queue = self.stage_queue(run, stage).await?;
            let tombstone = SubmissionClaim {
                idempotency_key: key.clone(),
                job_name: job_name.clone(),
                queue: queue.clone().unwrap_or_default(),
                fingerprint: None,
                state: ClaimState::Withdrawn,
                job_id: None,
                claimed_at: self.clock.now_ms(),
                holder: Some(self.holder.clone()),
            };
            if self.claims.create_claim(&tombstone).await? {
                continue;
            }
            let Some(claim) = self.claims.claim(&key).await? else { continue };
            let job_id = match (claim.state, claim.job_id.clone()) {
                (ClaimState::Withdrawn, _) => continue,
                (_, Some(job_id)) => job_id,
                (_, None) => {
                    let found = match &queue {
                        Some(queue) => self.batch.find_job(queue, &job_name).await?,
                        None => None,
                    };
                    match found {
                        Some(job_id) => {
                            self.claims.record_claim_job(&key, &job_id, None).await?;
                            job_id
                        }
                        None if abandoned(&claim, self.clock.now_ms())
                            && self.claims.withdraw_claim(&key, claim.claimed_at).await? =>
                        {
                            info!(run_id = %run.run_id, stage, key, "withdrew the claim of an attempt the run gave up");
                            continue;
                        }
                        None => return Err(Error::InFlight(format!("the submission of {key:?}"))),
                    }
                }
            };
            info!(run_id = %run.run_id, stage, job_id, "stopping the job of an attempt the run gave up");
            self.batch.terminate_job(&job_id, &reason).await?;
        }
        Ok(())
    }

    /// The ARN of the queue a stage of the run submits to, if it is still configured.
    async fn stage_queue(&self, run: &Run, stage: &str) -> Result<Option<String>, Error> {
        let Some(declared) = run.stage(stage) else { return Ok(None) };
        let config = self.configs.get().await?;
        Ok(config.job_queues.get(&declared.queue).map(|queue| queue.arn.clone()))
    }

    /// Drives the run for a caller who only needs its state (the API): another
    /// invocation announcing it is no error here — the run as stored is the answer.
    async fn drive_or_current(&self, record: VersionedRun, now_ms: i64) -> Result<VersionedRun, Error> {
        let run_id = record.run.run_id.clone();
        match self.drive(record.clone(), now_ms).await {
            Err(Error::InFlight(_)) => Ok(self.runs.load_run(&run_id).await?.unwrap_or(record)),
            other => other,
        }
    }

    /// Sends the run's completion (event and metrics) if this invocation wins the claim
    /// on it: the claim is written first, conditionally on the version read, so two
    /// drivers never both send it; a claim whose holder has passed its deadline (plus the
    /// take-over margin) may be taken, so a crash before sending loses nothing. Only a
    /// crash, or a lost reply, between sending and recording it sent can send it twice.
    async fn announce_once(&self, record: VersionedRun, now_ms: i64) -> Result<VersionedRun, Error> {
        let me = CompletionClaim { token: self.holder.token.clone(), deadline_ms: self.holder.deadline_ms };
        let now = self.clock.now_ms();
        let Some(record) = self
            .update(record, |run| {
                let free = match &run.completion_claim {
                    None => true,
                    Some(claim) if claim.token == me.token => false,
                    Some(claim) => now > claim.deadline_ms + TAKEOVER_MARGIN_MS,
                };
                if !run.ready_to_announce() || !free {
                    return false;
                }
                run.completion_claim = Some(me.clone());
                true
            })
            .await?
        else {
            return Err(Error::Contention("a vanished run".into()));
        };
        if record.run.completion_sent {
            return Ok(record);
        }
        if record.run.completion_claim.as_ref().is_some_and(|claim| claim.token != me.token) {
            // Another invocation is announcing it; if it fails, the retry of this work
            // (the event's redelivery, the sweep) takes over once its deadline has passed.
            return Err(Error::InFlight(format!("the announcement of run {}", record.run.run_id)));
        }
        if let Err(err) = self.announce(&record.run, now_ms).await {
            // Give the claim back, so the retry need not wait out this invocation's deadline.
            let _ = self.update(record, |run| run.completion_claim.take_if(|c| c.token == me.token).is_some()).await;
            return Err(err);
        }
        // It went out: record that, trying again while there is time — an unrecorded
        // announcement is sent again once this claim expires.
        let mut attempt: u32 = 0;
        loop {
            let marked = self
                .update(record.clone(), |run| {
                    run.completion_claim = None;
                    !std::mem::replace(&mut run.completion_sent, true)
                })
                .await;
            match marked {
                Ok(sent) => return Ok(sent.unwrap_or(record)),
                Err(err) if self.clock.now_ms() < self.holder.deadline_ms - ANSWER_MARGIN_MS => {
                    warn!(run_id = %record.run.run_id, error = %err, attempt, "recording the completion as sent failed; trying again");
                    tokio::time::sleep(retry_pause(attempt)).await;
                    attempt += 1;
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// A job submitted for an attempt the run no longer wants — it was cancelled or ended
    /// while the submission was under way — is terminated, so it is no orphan.
    async fn stop_if_run_moved_on(&self, run: &Run, stage: &str, attempt: u32, job_id: &str) -> Result<(), Error> {
        let Some(current) = current_attempt(run, stage) else { return Ok(()) };
        let unwanted = current.number == attempt
            && matches!(current.status, StageStatus::Cancelled | StageStatus::Skipped)
            && current.job_id.is_none();
        if unwanted {
            info!(run_id = %run.run_id, stage, job_id, "the run ended while the stage was being submitted; stopping its job");
            let reason = format!("Batchline run {} ended before the job was recorded", run.run_id);
            self.batch.terminate_job(job_id, &reason).await?;
        }
        Ok(())
    }

    /// What a run that has just failed stops: the jobs of stages its failure skipped while
    /// they were being submitted (found by name — a submitter still running stops its own
    /// job when it sees the run moved on; this catches one that died after SubmitJob), and,
    /// when its failure stops the others ([`Run::jobs_to_stop`]: fail fast, or its deadline
    /// passed), every job of it still going. A stop that fails here is tried again by the
    /// sweep, which stops a failed run's jobs again until their ends are recorded.
    pub(crate) async fn stop_after_failure(&self, run: &Run) -> Result<(), Error> {
        let reason = format!("Batchline run {} failed before the job was recorded", run.run_id);
        for job in run.skipped_submissions() {
            if let Some(job_id) = self.find_stopped_job(run, &job).await? {
                info!(run_id = %run.run_id, stage = job.stage, job_id, "the run failed while the stage was being submitted; stopping its job");
                self.batch.terminate_job(&job_id, &reason).await?;
            }
        }
        self.stop_open_jobs(run).await
    }

    /// Terminates the jobs a failed run stops ([`Run::jobs_to_stop`]), saying why.
    pub(crate) async fn stop_open_jobs(&self, run: &Run) -> Result<(), Error> {
        let why = run.reason.as_deref().unwrap_or("a stage failed");
        let reason: String = format!("Batchline run {} failed ({why}); stopping its other jobs", run.run_id)
            .chars()
            .take(STOP_REASON_CHARS)
            .collect();
        for (stage, job_id) in run.jobs_to_stop() {
            info!(run_id = %run.run_id, stage, job_id, "the run failed; stopping a job of it still going");
            self.batch.terminate_job(&job_id, &reason).await?;
        }
        Ok(())
    }

    /// Sends "Batchline Run Completed" and the run's metrics.
    async fn announce(&self, run: &Run, now_ms: i64) -> Result<(), Error> {
        let cost = run.cost(&self.configs.pricing(self.prices).await);
        self.announcer.completion(&completion_detail(run, now_ms, &cost), &run.run_id).await?;
        info!(run_id = %run.run_id, outcome = run.status.as_str(), duration_ms = run.duration_ms(now_ms), cost_usd = cost.usd, "run completed");
        self.announcer.run_metrics(&run.pipeline.name, &outcome_metrics(run, now_ms, &cost)).await;
        Ok(())
    }

    /// Cancels a run: marks it CANCELLED, then terminates every job it started — those
    /// recorded, and those planned but never recorded (found by their deterministic
    /// name). A cancel of a CANCELLED run terminates them again, so a retry after a
    /// failed TerminateJob finishes what the first began.
    pub async fn cancel(&self, run_id: &str, now_ms: i64) -> Result<CancelOutcome, Error> {
        let Some(current) = self.runs.load_run(run_id).await? else { return Ok(CancelOutcome::NoSuchRun) };
        let mut outcome: Result<Vec<JobToStop>, String> = Ok(vec![]);
        let updated = self
            .update(current, |run| {
                let was_running = run.status == RunStatus::Running;
                outcome = run.cancel(now_ms);
                outcome.is_ok() && was_running
            })
            .await?;
        let Some(updated) = updated else { return Ok(CancelOutcome::NoSuchRun) };
        let to_stop = match outcome {
            Ok(jobs) => jobs,
            Err(why) => return Ok(CancelOutcome::AlreadyEnded(why)),
        };
        let reason = format!("Batchline run {run_id} cancelled");
        let mut terminated = Vec::new();
        for job in &to_stop {
            if let Some(job_id) = self.find_stopped_job(&updated.run, job).await? {
                self.batch.terminate_job(&job_id, &reason).await?;
                terminated.push(job_id);
            }
        }
        let run = self.drive_or_current(updated, now_ms).await?.run;
        Ok(CancelOutcome::Cancelled { run: Box::new(run), terminated })
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
        let run_id = current.run.run_id.clone();
        let mut outcome = None;
        let updated = self
            .update(current, |run| {
                let answer = run.redrive(key, sizes, now_ms);
                let changed = matches!(&answer, Ok(redriven) if !redriven.duplicate);
                outcome = Some(answer);
                changed
            })
            .await?;
        let (Some(updated), Some(outcome)) = (updated, outcome) else { return Ok(RedriveOutcome::NoSuchRun) };
        let redriven = match outcome {
            Ok(redriven) => redriven,
            Err(refused) => return Ok(RedriveOutcome::Refused(refused)),
        };
        if !redriven.duplicate {
            info!(run_id, generation = redriven.generation, stages = ?redriven.stages, "run redriven");
            let metric = RunMetric { name: "RunsRedriven", value: 1.0, unit: MetricUnit::Count };
            self.announcer.run_metrics(&updated.run.pipeline.name, &[metric]).await;
        }
        let run = self.drive_or_current(updated, now_ms).await?.run;
        Ok(RedriveOutcome::Redriven { run: Box::new(run), redriven })
    }

    /// The id of a job a cancel stops: recorded, or looked up by its name in its queue.
    async fn find_stopped_job(&self, run: &Run, job: &JobToStop) -> Result<Option<String>, Error> {
        if let Some(job_id) = &job.job_id {
            return Ok(Some(job_id.clone()));
        }
        let Some(name) = &job.job_name else { return Ok(None) };
        let Some(queue) = self.stage_queue(run, &job.stage).await? else { return Ok(None) };
        self.batch.find_job(&queue, name).await
    }
}
