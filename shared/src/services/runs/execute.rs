//! Carrying out a run's effects: each kind of effect is done in one place here.
//!
//! [`RunDriver::execute`] takes the effects of one step in order. An outcome that changes
//! the run — a submission made, refused for good, or withdrawn meanwhile; a job found for
//! an attempt the run gave up — goes back into the run model as one more input, written at
//! once; that step's effects join the list and replace what the older state owed (see
//! `model::run::effects`).

use std::collections::VecDeque;

use tracing::{info, warn, Instrument};

use super::jobs::{array_job, never_submittable, stage_job};
use super::RunDriver;
use crate::model::map::{MapAction, MapWork};
use crate::model::pipeline::attempt_key;
use crate::model::run::is_out_of_memory_reason;
use crate::model::run::map::{array_key, ArrayFound, ArraySubmitted, ArrayUnsubmittable};
use crate::model::run::{
    Attempt, CompletionClaim, Effect, Input, JobFound, JobRef, Resume, Run, Submitted, Unsubmittable,
};
use crate::services::announce::{completion_detail, outcome_metrics};
use crate::services::clock::{retry_pause, ANSWER_MARGIN_MS};
use crate::services::submitter::{abandoned, Submitter, TAKEOVER_MARGIN_MS};
use crate::store::{ClaimState, SubmissionClaim, VersionedRun};
use crate::telemetry::{run_span, stage_span, whole_run_span};
use crate::Error;

/// What executing effects did that a caller reports: the jobs its stops terminated, and
/// the first stop that failed.
#[derive(Debug, Default)]
pub struct Executed {
    pub stopped: Vec<String>,
    pub failed_stop: Option<Error>,
}

impl RunDriver<'_> {
    /// Carries out `effects` in order, starting from `record`; returns the record as it
    /// stands afterwards. An effect whose outcome changes the run (a submission made or
    /// refused, a job found for an attempt given up) is put to the model as one more input
    /// and written; that step's effects join the list, replacing those read off the older
    /// state ([`Effect::is_owed`]). A stop that fails does not keep the rest from being
    /// done: its error is returned at the end, before any other (the sweep, or a retried
    /// cancel, stops that job again). Any other error ends the list: what was owed is owed
    /// again at the next input (the event's redelivery, the sweep).
    pub(crate) async fn execute(
        &self,
        record: VersionedRun,
        effects: Vec<Effect>,
        now_ms: i64,
        done: &mut Executed,
    ) -> Result<VersionedRun, Error> {
        let span = run_span(&record.run.run_id, &record.run.pipeline.name);
        let result = self.carry_out(record, VecDeque::from(effects), now_ms, done).instrument(span).await;
        match done.failed_stop.take() {
            Some(err) => Err(err),
            None => result,
        }
    }

    /// Carries out the queue's effects, each kind in one place.
    async fn carry_out(
        &self,
        mut record: VersionedRun,
        mut queue: VecDeque<Effect>,
        now_ms: i64,
        done: &mut Executed,
    ) -> Result<VersionedRun, Error> {
        while let Some(effect) = queue.pop_front() {
            // The lines of an effect about a stage carry its stage and attempt.
            let span = match effect.subject() {
                Some((stage, attempt)) => stage_span(&tracing::Span::current(), stage, Some(attempt), None),
                None => whole_run_span(),
            };
            let fed_back = self.carry_out_one(&mut record, effect, now_ms, done).instrument(span).await?;
            if let Some((after, effects)) = fed_back {
                record = after;
                queue.retain(|effect| !effect.is_owed());
                queue.extend(effects);
            }
        }
        Ok(record)
    }

    /// Carries out one effect; returns what it fed back into the run (the record written
    /// and the step's effects), if anything.
    async fn carry_out_one(
        &self,
        record: &mut VersionedRun,
        effect: Effect,
        now_ms: i64,
        done: &mut Executed,
    ) -> Result<Option<(VersionedRun, Vec<Effect>)>, Error> {
        let fed_back = match effect {
            Effect::Submit { stage, attempt } => self.submit(record.clone(), &stage, &attempt, now_ms).await?,
            Effect::Stop { stage, attempt, job, reason } => {
                self.stop_and_record(record, (&stage, attempt), &job, &reason, now_ms, done).await?
            }
            Effect::RecordJob { stage, attempt, job_id } => {
                self.record_found(&attempt_key(&record.run.run_id, &stage, attempt), &job_id).await?
            }
            Effect::RecordArrayJob { stage, attempt, array, job_id } => {
                self.record_found(&array_key(&record.run.run_id, &stage, attempt, array), &job_id).await?
            }
            Effect::Withdraw { stage, attempt } => match self.withdraw(&record.run, &stage, &attempt).await? {
                Some(job_id) => self.found(record, &stage, attempt.number, &job_id, now_ms).await?,
                None => None,
            },
            Effect::Announce => {
                *record = self.announce_once(record.clone(), now_ms).await?;
                None
            }
            Effect::Publish(metrics) => {
                self.announcer.run_metrics(&record.run.pipeline.name, &metrics).await;
                None
            }
            Effect::ExpandMap { stage, attempt } => {
                self.ask_map_worker(&record.run, MapAction::Expand, stage, attempt, None).await?;
                None
            }
            Effect::CloseMap { stage, attempt } => {
                self.ask_map_worker(&record.run, MapAction::Close, stage, attempt, None).await?;
                None
            }
            Effect::CheckArray { stage, attempt, array } => {
                self.ask_map_worker(&record.run, MapAction::Check, stage, attempt, Some(array)).await?;
                None
            }
            Effect::SubmitArray { stage, attempt, array } => {
                self.submit_array(record.clone(), &stage, &attempt, array, now_ms).await?
            }
            Effect::WithdrawArray { stage, attempt, array, job_name } => {
                let key = array_key(&record.run.run_id, &stage, attempt, array);
                match self.withdraw_claim(&record.run, &stage, &key, &job_name).await? {
                    Some(job_id) => {
                        let found = ArrayFound { stage: &stage, attempt, array, job_id: &job_id };
                        self.feed(record.clone(), &found, now_ms).await?
                    }
                    None => None,
                }
            }
        };
        Ok(fed_back)
    }

    /// Puts an input to the run and returns the record after its write and the step's
    /// effects; `None` when the run has vanished.
    async fn feed<I: Input<Answer = ()>>(
        &self,
        record: VersionedRun,
        input: &I,
        now_ms: i64,
    ) -> Result<Option<(VersionedRun, Vec<Effect>)>, Error> {
        Ok(self.write(record, input, now_ms).await?.map(|(after, step)| (after, step.effects)))
    }

    /// Records a job found for an attempt the run gave up (see [`JobFound`]).
    async fn found(
        &self,
        record: &VersionedRun,
        stage: &str,
        attempt: u32,
        job_id: &str,
        now_ms: i64,
    ) -> Result<Option<(VersionedRun, Vec<Effect>)>, Error> {
        self.feed(record.clone(), &JobFound { stage, attempt, job_id }, now_ms).await
    }

    /// Carries out [`Effect::Stop`]: a job stopped of an attempt the run gave up is recorded
    /// on the run ([`JobFound`]); a failed stop is remembered and the others go on.
    async fn stop_and_record(
        &self,
        record: &VersionedRun,
        (stage, attempt): (&str, u32),
        job: &JobRef,
        reason: &str,
        now_ms: i64,
        done: &mut Executed,
    ) -> Result<Option<(VersionedRun, Vec<Effect>)>, Error> {
        match self.stop(&record.run, stage, job, reason).await {
            Ok(Some(job_id)) => {
                done.stopped.push(job_id.clone());
                if record.run.gave_up(stage, attempt) {
                    return self.found(record, stage, attempt, &job_id, now_ms).await;
                }
                Ok(None)
            }
            Ok(None) => Ok(None),
            Err(err) => {
                warn!(run_id = %record.run.run_id, stage, error = %err, "stopping a job of the run failed; going on with the others");
                done.failed_stop.get_or_insert(err);
                Ok(None)
            }
        }
    }

    /// Records on the submission claim `key` a job the run learnt from Batch (a claim
    /// already recorded, or withdrawn, is left as it is); nothing to feed back.
    async fn record_found(&self, key: &str, job_id: &str) -> Result<Option<(VersionedRun, Vec<Effect>)>, Error> {
        self.claims.record_claim_job(key, job_id, None).await?;
        Ok(None)
    }

    /// Submits a planned attempt (exactly once, by its key) and puts the outcome to the run:
    /// returns the record after that write and the effects of its step (`None`: the run
    /// has vanished).
    async fn submit(
        &self,
        record: VersionedRun,
        stage: &str,
        attempt: &Attempt,
        now_ms: i64,
    ) -> Result<Option<(VersionedRun, Vec<Effect>)>, Error> {
        let submitter = Submitter { batch: self.batch, claims: self.claims, clock: self.clock, holder: self.holder };
        let config = self.configs.get().await?;
        let submitted = match stage_job(&config, &record.run, stage, attempt) {
            Ok(request) => submitter.submit(&request).await.map_err(Error::from),
            Err(err) => Err(err),
        };
        let run_id = record.run.run_id.clone();
        let (number, size) = (attempt.number, attempt.size);
        match submitted {
            Ok(job) => {
                info!(run_id, stage, attempt = number, job_id = %job.job_id, %size, "stage submitted");
                let stage_run = record.run.stages.get(stage);
                let before = stage_run.and_then(|s| s.attempts.iter().find(|a| a.number + 1 == number));
                if let Some(before) = before.filter(|b| is_out_of_memory_reason(b.reason.as_deref()) && b.size != size)
                {
                    // The saved query "out-of-memory resizes" reads these lines.
                    let from_size = before.size.to_string();
                    info!(job_id = %job.job_id, from_size, %size, "stage resized after running out of memory");
                }
                let input = Submitted { stage, attempt: number, job_id: &job.job_id, job_name: &job.job_name };
                self.feed(record, &input, now_ms).await
            }
            Err(Error::Withdrawn(key)) => {
                // Our read is stale: the run gave this attempt up meanwhile. Go on from the
                // run as it is now.
                info!(run_id, key, "the run withdrew the attempt; reading it again");
                let fresh = self.runs.load_run(&run_id).await?.ok_or(Error::Contention("a vanished run".into()))?;
                self.feed(fresh, &Resume, now_ms).await
            }
            Err(err) if never_submittable(&err) => {
                warn!(run_id, stage, attempt = number, error = %err, "stage can never be submitted; the run fails");
                let reason = err.to_string();
                self.feed(record, &Unsubmittable { stage, attempt: number, reason: &reason }, now_ms).await
            }
            Err(err) => Err(err),
        }
    }

    /// Asks the map worker for a map attempt's S3 work.
    async fn ask_map_worker(
        &self,
        run: &Run,
        action: MapAction,
        stage: String,
        attempt: u32,
        array: Option<usize>,
    ) -> Result<(), Error> {
        info!(run_id = %run.run_id, stage, attempt, ?array, ?action, "asking the map worker");
        let stack = self.configs.get().await?.name_prefix.clone();
        let work = MapWork { stack, action, run_id: run.run_id.clone(), stage, attempt, resume: None, array };
        self.announcer.map_work(&work).await
    }

    /// Submits array `array` of a planned map attempt (exactly once, by its key) and puts
    /// the outcome to the run, as [`RunDriver::submit`] does for an attempt.
    async fn submit_array(
        &self,
        record: VersionedRun,
        stage: &str,
        attempt: &Attempt,
        array: usize,
        now_ms: i64,
    ) -> Result<Option<(VersionedRun, Vec<Effect>)>, Error> {
        let submitter = Submitter { batch: self.batch, claims: self.claims, clock: self.clock, holder: self.holder };
        let config = self.configs.get().await?;
        let submitted = match array_job(&config, &record.run, stage, attempt, array) {
            Ok(request) => submitter.submit(&request).await.map_err(Error::from),
            Err(err) => Err(err),
        };
        let run_id = record.run.run_id.clone();
        let number = attempt.number;
        match submitted {
            Ok(job) => {
                info!(run_id, stage, attempt = number, array, job_id = %job.job_id, "map array submitted");
                self.feed(record, &ArraySubmitted { stage, attempt: number, array, job_id: &job.job_id }, now_ms).await
            }
            Err(Error::Withdrawn(key)) => {
                info!(run_id, key, "the run withdrew the array; reading it again");
                let fresh = self.runs.load_run(&run_id).await?.ok_or(Error::Contention("a vanished run".into()))?;
                self.feed(fresh, &Resume, now_ms).await
            }
            Err(err) if never_submittable(&err) => {
                warn!(run_id, stage, attempt = number, array, error = %err, "a map array can never be submitted; the run fails");
                let reason = err.to_string();
                let input = ArrayUnsubmittable { stage, attempt: number, array, reason: &reason };
                self.feed(record, &input, now_ms).await
            }
            Err(err) => Err(err),
        }
    }

    /// Terminates a job of the run (found by its name in its stage's queue when the run
    /// never recorded its id); returns its id, or `None` when no such job exists.
    async fn stop(&self, run: &Run, stage: &str, job: &JobRef, reason: &str) -> Result<Option<String>, Error> {
        let job_id = match job {
            JobRef::Id(job_id) => job_id.clone(),
            JobRef::Name(name) => {
                let Some(queue) = self.stage_queue(run, stage).await? else { return Ok(None) };
                let Some(job_id) = self.batch.find_job(&queue, name).await? else { return Ok(None) };
                job_id
            }
        };
        info!(run_id = %run.run_id, stage, job_id, reason, "stopping a job of the run");
        self.batch.terminate_job(&job_id, reason).await?;
        Ok(Some(job_id))
    }

    /// Settles the submission claim of an attempt the ended run gave up before a job was
    /// recorded, before it is announced: afterwards no claim of the run is left PENDING and
    /// no late holder (a handler still driving from a read taken before the run ended) can
    /// submit one.
    /// - nobody claimed it: the claim is written WITHDRAWN, so nobody ever will;
    /// - its job exists (recorded on the claim, or found by its name): the job is recorded
    ///   on the claim and stopped (again, if its submitter stopped it already — harmless),
    ///   and returned, to be recorded on the run ([`JobFound`]), which then waits for its end;
    /// - PENDING without a job: withdrawn once its holder cannot be running any more; until
    ///   then the run waits ([`Error::InFlight`]) and the retry of this work (the event's
    ///   redelivery, the sweep) settles it. Nobody takes over a live holder's claim.
    async fn withdraw(&self, run: &Run, stage: &str, attempt: &Attempt) -> Result<Option<String>, Error> {
        let key = attempt_key(&run.run_id, stage, attempt.number);
        let Some(job_name) = attempt.job_name.as_deref() else { return Ok(None) };
        self.withdraw_claim(run, stage, &key, job_name).await
    }

    /// Settles the submission claim `key` of a job named `job_name` that the run gave up
    /// (see [`RunDriver::withdraw`]).
    async fn withdraw_claim(&self, run: &Run, stage: &str, key: &str, job_name: &str) -> Result<Option<String>, Error> {
        let (key, job_name) = (key.to_owned(), job_name.to_owned());
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
            return Ok(None);
        }
        let Some(claim) = self.claims.claim(&key).await? else { return Ok(None) };
        let job_id = match (claim.state, claim.job_id.clone()) {
            (ClaimState::Withdrawn, _) => return Ok(None),
            (_, Some(job_id)) => job_id,
            (_, None) => {
                let found = match &queue {
                    Some(queue) => self.batch.find_job(queue, &job_name).await?,
                    None => None,
                };
                let Some(job_id) = found else {
                    if abandoned(&claim, self.clock.now_ms())
                        && self.claims.withdraw_claim(&key, claim.claimed_at).await?
                    {
                        info!(run_id = %run.run_id, stage, key, "withdrew the claim of an attempt the run gave up");
                        return Ok(None);
                    }
                    return Err(Error::InFlight(format!("the submission of {key:?}")));
                };
                self.claims.record_claim_job(&key, &job_id, None).await?;
                job_id
            }
        };
        info!(run_id = %run.run_id, stage, job_id, "stopping the job of an attempt the run gave up");
        self.batch.terminate_job(&job_id, &run.late_job_reason()).await?;
        Ok(Some(job_id))
    }

    /// The ARN of the queue a stage of the run submits to, if it is still configured.
    async fn stage_queue(&self, run: &Run, stage: &str) -> Result<Option<String>, Error> {
        let Some(declared) = run.stage(stage) else { return Ok(None) };
        let config = self.configs.get().await?;
        Ok(config.job_queues.get(&declared.queue).map(|queue| queue.arn.clone()))
    }

    /// Sends the run's completion (event and metrics) if this invocation wins the claim
    /// on it ([`Run::claim_completion`]): the claim is written first, conditionally on the
    /// version read, so two drivers never both send it; a claim whose holder has passed its
    /// deadline (plus the take-over margin) may be taken, so a crash before sending loses
    /// nothing. Only a crash, or a lost reply, between sending and recording it sent can
    /// send it twice.
    async fn announce_once(&self, record: VersionedRun, now_ms: i64) -> Result<VersionedRun, Error> {
        let me = CompletionClaim { token: self.holder.token.clone(), deadline_ms: self.holder.deadline_ms };
        let now = self.clock.now_ms();
        let claimed = self.update(record, |run| (run.claim_completion(&me, now, TAKEOVER_MARGIN_MS), ())).await?;
        let Some((record, ())) = claimed else { return Err(Error::Contention("a vanished run".into())) };
        if record.run.completion_sent {
            return Ok(record);
        }
        if record.run.completion_claim.as_ref().is_some_and(|claim| claim.token != me.token) {
            // Another invocation is announcing it; if it fails, the retry of this work
            // (the event's redelivery, the sweep) takes over once its deadline has passed.
            return Err(Error::InFlight(format!("the announcement of run {}", record.run.run_id)));
        }
        let cost_usd = match self.announce(&record.run, now_ms).await {
            Ok(cost_usd) => cost_usd,
            Err(err) => {
                // Give the claim back, so the retry need not wait out this invocation's deadline.
                let _ = self.update(record, |run| (run.release_completion(&me.token), ())).await;
                return Err(err);
            }
        };
        self.record_announced(record, cost_usd).await
    }

    /// Records that the completion went out, trying again while there is time: an
    /// unrecorded announcement is sent again once this invocation's claim expires.
    async fn record_announced(&self, record: VersionedRun, cost_usd: f64) -> Result<VersionedRun, Error> {
        let mut attempt: u32 = 0;
        loop {
            match self.update(record.clone(), |run| (run.mark_completion_sent(cost_usd), ())).await {
                Ok(sent) => return Ok(sent.map_or(record, |(sent, ())| sent)),
                Err(err) if self.clock.now_ms() < self.holder.deadline_ms - ANSWER_MARGIN_MS => {
                    warn!(run_id = %record.run.run_id, error = %err, attempt, "recording the completion as sent failed; trying again");
                    tokio::time::sleep(retry_pause(attempt)).await;
                    attempt += 1;
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// Sends "Batchline Run Completed" and the run's metrics; returns the run's cost in all.
    async fn announce(&self, run: &Run, now_ms: i64) -> Result<f64, Error> {
        let cost = run.cost(&self.configs.pricing(self.prices).await);
        self.announcer.completion(&completion_detail(run, now_ms, &cost), &run.run_id).await?;
        info!(run_id = %run.run_id, outcome = run.status.as_str(), duration_ms = run.duration_ms(now_ms), cost_usd = cost.usd, "run completed");
        self.announcer.run_metrics(&run.pipeline.name, &outcome_metrics(run, now_ms, &cost)).await;
        Ok(cost.usd)
    }
}
