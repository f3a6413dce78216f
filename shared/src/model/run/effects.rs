//! Inputs and effects: the one way into a run ([`Run::handle`]) and what it asks to be done.
//!
//! An input is a type implementing [`Input`]: it changes the run and answers (a job state
//! change answers [`Applied`], a cancel whether it was accepted, a redrive the generation it
//! started). [`Run::handle`] then adds what holds whatever the input was, in this order:
//! 1. the input's own effects (a cancel's stops, a redrive's metric, ...);
//! 2. the budget: planned submissions that would pass `MaxRunCostUsd` fail the run;
//! 3. if the run failed just now, the stops its failure calls for ([`Run::failure_stops`]);
//! 4. what the record owes ([`Run::owed`]): its planned attempts submitted, or — once it
//!    ended and every job of it has — the claims it gave up settled and its end announced.
//!
//! Effects of kinds 1–3 happen once, on the transition that calls for them (a retry of
//! a stop is the sweep's, [`SweepVisit`]); those of kind 4 are read off the state, so
//! every input repeats them until they are done, and each is idempotent where it is
//! carried out (a submission's claim, the completion's claim). The driver executes them
//! in order; when it feeds a submission's outcome back, the new step's list replaces what
//! was left of the old one, which could only be kind 4, read off a state now past.

use std::collections::BTreeMap;

use super::{Applied, Attempt, RedriveRefused, Redriven, Run, RunStatus, StageStatus};
use crate::model::batch_event::JobStateChangeEvent;
use crate::model::cost::Pricing;
use crate::model::fargate::Size;

/// How much of a reason TerminateJob is given (the status reason a job then shows).
const STOP_REASON_CHARS: usize = 250;

/// What the model is told beside an input: the time, and how the stack prices jobs (what
/// budgets are judged with).
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub now_ms: i64,
    pub pricing: &'a Pricing,
}

/// A job of the run to stop: by its id, or by its attempt's deterministic name when the run
/// never recorded the id (its submitter may have died after SubmitJob).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobRef {
    Id(String),
    Name(String),
}

/// A run metric: name, value, and its unit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RunMetric {
    pub name: &'static str,
    pub value: f64,
    pub unit: MetricUnit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricUnit {
    Count,
    Milliseconds,
    /// US dollars (CloudWatch's unit `None`).
    Usd,
}

/// Something the run asks to be done: data, carried out by the run driver.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Submit this planned attempt of `stage` exactly once, under the key
    /// `run:<id>:<stage>:<n>`; its outcome comes back as [`Submitted`] or [`Unsubmittable`]
    /// (or, when the run withdrew the attempt meanwhile, as [`Resume`] on a fresh read).
    Submit { stage: String, attempt: Attempt },
    /// Stop (TerminateJob) the job of an attempt of the run, with `reason` as its status
    /// reason; once stopped, a job the run had not recorded comes back as [`JobFound`].
    Stop { stage: String, attempt: u32, job: JobRef, reason: String },
    /// Record on an attempt's submission claim the job an event named before its submitter
    /// recorded it, so no claim is left PENDING for a job that exists: once when the event
    /// names it, and again (owed) before the run is announced, for every attempt whose job
    /// was learnt from Batch — a one-off effect is lost when its call fails and the retried
    /// input finds the job already known.
    RecordJob { stage: String, attempt: u32, job_id: String },
    /// [`Effect::RecordJob`] for an array of a map attempt, under its key
    /// `run:<id>:<stage>:<n>:array:<k>`.
    RecordArrayJob { stage: String, attempt: u32, array: usize, job_id: String },
    /// Settle the submission claim of an attempt the run gave up before a job was recorded:
    /// withdraw it, or stop the job that was submitted under it (which comes back as
    /// [`JobFound`]).
    Withdraw { stage: String, attempt: Attempt },
    /// Send "Batchline Run Completed" and the run's outcome metrics, once per generation.
    Announce,
    /// Publish these run metrics.
    Publish(Vec<RunMetric>),
    /// Have the map worker list the items of a map attempt and write its arrays' item
    /// lists; it answers [`MapExpanded`](super::map::MapExpanded).
    ExpandMap { stage: String, attempt: u32 },
    /// Submit array `array` of a map attempt exactly once, under the key
    /// `run:<id>:<stage>:<n>:array:<k>`; its outcome comes back as
    /// [`ArraySubmitted`](super::map::ArraySubmitted) or
    /// [`ArrayUnsubmittable`](super::map::ArrayUnsubmittable).
    SubmitArray { stage: String, attempt: Attempt, array: usize },
    /// Settle the submission claim of an array the run gave up before a job was recorded
    /// (as [`Effect::Withdraw`] does for an attempt); a job found comes back as
    /// [`ArrayFound`](super::map::ArrayFound).
    WithdrawArray { stage: String, attempt: u32, array: usize, job_name: String },
    /// Have the map worker list a map attempt's failed children and write its results;
    /// it answers [`MapClosed`](super::map::MapClosed).
    CloseMap { stage: String, attempt: u32 },
    /// Ask the map worker which of an ended array's failed children ran out of memory, and
    /// for their item list (answered with `ArrayChecked`).
    CheckArray { stage: String, attempt: u32, array: usize },
}

impl Effect {
    /// The stage attempt the effect is about (its log lines say so); none for the run's own.
    pub fn subject(&self) -> Option<(&str, u32)> {
        match self {
            Effect::Submit { stage, attempt } | Effect::Withdraw { stage, attempt } => Some((stage, attempt.number)),
            Effect::SubmitArray { stage, attempt, .. } => Some((stage, attempt.number)),
            Effect::Stop { stage, attempt, .. }
            | Effect::RecordJob { stage, attempt, .. }
            | Effect::RecordArrayJob { stage, attempt, .. }
            | Effect::ExpandMap { stage, attempt }
            | Effect::WithdrawArray { stage, attempt, .. }
            | Effect::CloseMap { stage, attempt }
            | Effect::CheckArray { stage, attempt, .. } => Some((stage, *attempt)),
            Effect::Announce | Effect::Publish(_) => None,
        }
    }

    /// Whether the effect is read off the run's state ([`Run::owed`]) rather than caused
    /// by one transition: such effects are worked out again from every newer state, so a
    /// step's list replaces the ones of an older step that were not carried out yet.
    pub fn is_owed(&self) -> bool {
        matches!(
            self,
            Effect::Submit { .. }
                | Effect::RecordJob { .. }
                | Effect::RecordArrayJob { .. }
                | Effect::Withdraw { .. }
                | Effect::Announce
                | Effect::ExpandMap { .. }
                | Effect::SubmitArray { .. }
                | Effect::WithdrawArray { .. }
                | Effect::CloseMap { .. }
                | Effect::CheckArray { .. }
        )
    }
}

/// What an input did: whether the record changed (and must be written), the input's
/// answer, and the effects to carry out, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Step<A> {
    pub changed: bool,
    pub answer: A,
    pub effects: Vec<Effect>,
}

impl<A> Step<A> {
    fn new(changed: bool, answer: A, effects: Vec<Effect>) -> Step<A> {
        Step { changed, answer, effects }
    }
}

/// Something that happens to a run. [`Input::take`] applies it alone; [`Run::handle`] is how
/// it is applied with the rules that hold for every input.
pub trait Input {
    type Answer;
    fn take(&self, run: &mut Run, ctx: &Context) -> Step<Self::Answer>;
}

impl Run {
    /// Applies an input: the new state is `self`, the rest is the returned [`Step`] (see
    /// the module docs for the order of its effects).
    pub fn handle<I: Input>(&mut self, input: &I, ctx: &Context) -> Step<I::Answer> {
        let was_running = self.status == RunStatus::Running;
        let mut step = input.take(self, ctx);
        step.changed |= self.enforce_budget(ctx);
        if was_running && self.status == RunStatus::Failed {
            step.effects.extend(self.failure_stops());
        }
        step.effects.extend(self.owed());
        step
    }

    /// What the run owes whatever happens: its planned attempts submitted, its maps
    /// expanded, their arrays submitted, ended arrays' failures checked for children out of
    /// memory, and their ends closed; once it has ended and every
    /// job of it has, the claims of the attempts and arrays it gave up settled, then its
    /// end announced.
    pub fn owed(&self) -> Vec<Effect> {
        let submit = self.to_submit().into_iter().map(|(stage, attempt)| Effect::Submit { stage, attempt });
        let expand = self.maps_to_expand().into_iter().map(|(stage, attempt)| Effect::ExpandMap { stage, attempt });
        let arrays = self.arrays_to_submit().into_iter();
        let arrays = arrays.map(|(stage, attempt, array)| Effect::SubmitArray { stage, attempt, array });
        let close = self.maps_to_close().into_iter().map(|(stage, attempt)| Effect::CloseMap { stage, attempt });
        let check = self.arrays_to_check().into_iter();
        let check = check.map(|(stage, attempt, array)| Effect::CheckArray { stage, attempt, array });
        let work: Vec<Effect> = submit.chain(expand).chain(arrays).chain(check).chain(close).collect();
        if !work.is_empty() || !self.ready_to_announce() {
            return work;
        }
        let mut effects = self.unsettled_claims();
        let withdraw = self.withdrawn_attempts().into_iter();
        effects.extend(
            withdraw.map(|(stage, attempt)| Effect::Withdraw { stage: stage.to_owned(), attempt: attempt.clone() }),
        );
        let arrays = self.withdrawn_arrays().into_iter();
        effects.extend(arrays.map(|(stage, attempt, array, job_name)| Effect::WithdrawArray {
            stage,
            attempt,
            array,
            job_name,
        }));
        effects.push(Effect::Announce);
        effects
    }

    /// The claims of the jobs the run learnt from Batch rather than from their submitters
    /// (every attempt, and every array of a map attempt): recorded before the run is
    /// announced, so none is left PENDING. A claim already recorded is left as it is.
    pub fn unsettled_claims(&self) -> Vec<Effect> {
        let stages = self.stages.iter().map(|(name, stage_run)| (name.as_str(), stage_run));
        let failure = self.on_failure.iter().map(|stage_run| (crate::model::pipeline::ON_FAILURE, stage_run));
        let stages = stages.chain(failure);
        let mut effects = Vec::new();
        for (stage, stage_run) in stages {
            for attempt in &stage_run.attempts {
                if let (true, Some(job_id)) = (attempt.claim_unsettled, &attempt.job_id) {
                    let (stage, job_id) = (stage.to_owned(), job_id.clone());
                    effects.push(Effect::RecordJob { stage, attempt: attempt.number, job_id });
                }
                let arrays = attempt.map.iter().flat_map(|map| map.arrays.iter().enumerate());
                for (array, run) in arrays.filter(|(_, run)| run.claim_unsettled) {
                    let Some(job_id) = run.job_id.clone() else { continue };
                    effects.push(Effect::RecordArrayJob {
                        stage: stage.to_owned(),
                        attempt: attempt.number,
                        array,
                        job_id,
                    });
                }
            }
        }
        effects
    }

    /// What a run that has just failed stops: the jobs of stages its failure skipped while
    /// they were being submitted (by name: a submitter still running stops its own job when
    /// it sees the run moved on; this catches one that died after SubmitJob), then, when its
    /// failure stops the others (fail fast, or its deadline passed), every job of it still
    /// going.
    pub fn failure_stops(&self) -> Vec<Effect> {
        let reason = format!("Batchline run {} failed before the job was recorded", self.run_id);
        let skipped = self.skipped_submissions().into_iter().filter_map(|job| {
            let job_ref = JobRef::Name(job.job_name?);
            Some(Effect::Stop { stage: job.stage, attempt: job.attempt, job: job_ref, reason: reason.clone() })
        });
        skipped.chain(self.open_job_stops()).collect()
    }

    /// The stops of every job the run stops that is still going ([`Run::jobs_to_stop`]),
    /// saying why.
    pub fn open_job_stops(&self) -> Vec<Effect> {
        let reason = self.stop_reason();
        let jobs = self.jobs_to_stop().into_iter();
        let stop = |(stage, job_id): (String, String)| {
            let attempt = self.current_attempt(&stage).map_or(0, |a| a.number);
            Effect::Stop { stage, attempt, job: JobRef::Id(job_id), reason: reason.clone() }
        };
        jobs.map(stop).collect()
    }

    /// Why the run stops a job submitted for an attempt it had given up, as the job's
    /// status reason will say.
    pub fn late_job_reason(&self) -> String {
        format!("Batchline run {} ended before the job was recorded", self.run_id)
    }

    /// Why the run stops its jobs, as their status reason will say.
    fn stop_reason(&self) -> String {
        let reason = match self.status {
            RunStatus::Cancelled => format!("Batchline run {} cancelled", self.run_id),
            _ => {
                let why = self.reason.as_deref().unwrap_or("a stage failed");
                format!("Batchline run {} failed ({why}); stopping its other jobs", self.run_id)
            }
        };
        reason.chars().take(STOP_REASON_CHARS).collect()
    }
}

/// Batch says a job of the run changed state. The run's deadline is judged at the moment
/// the event reports, not at its delivery: an end at the job's `stoppedAt`, any other
/// change at the event's `time` (at delivery only for an event that carries neither).
pub struct JobChanged<'a> {
    pub stage: &'a str,
    pub event: &'a JobStateChangeEvent,
}

impl JobChanged<'_> {
    /// When the change happened, as Batch reports it; never later than `now_ms`.
    fn reported_at(&self, now_ms: i64) -> i64 {
        let detail = &self.event.detail;
        let ended_at = detail.stopped_at.filter(|_| detail.status.is_terminal());
        ended_at.or_else(|| self.event.time_millis()).map_or(now_ms, |at| at.min(now_ms))
    }
}

impl Input for JobChanged<'_> {
    type Answer = Applied;

    fn take(&self, run: &mut Run, ctx: &Context) -> Step<Applied> {
        let was_failed = run.status == RunStatus::Failed;
        let unrecorded = run.current_attempt(self.stage).filter(|a| a.job_id.is_none()).map(|a| a.number);
        // Judged by what Batch says happened and when: at a job's end before the end is
        // applied (a job that ended past the deadline does not end the run well; an end of
        // unknown time is given the benefit of the doubt), and after any change for what is
        // left to run. Not at delivery: a late-delivered event of a run whose jobs all
        // ended in time does not fail it (its last end may still be in flight); a run
        // really past its deadline is failed by an event that says so or by the sweep,
        // which asks Batch first.
        let detail = &self.event.detail;
        let ended_at = detail.stopped_at.filter(|_| detail.status.is_terminal());
        let late_at_end = ended_at.is_some_and(|at| run.fail_past_deadline(at.min(ctx.now_ms)));
        let applied = run.apply(self.stage, self.event, ctx.now_ms);
        let late = run.fail_past_deadline(self.reported_at(ctx.now_ms)) || late_at_end;
        let mut effects = Vec::new();
        if let (Some(number), Some(now)) = (unrecorded, run.current_attempt(self.stage)) {
            // The event named the job before its submitter recorded it (the submitter
            // failed after SubmitJob).
            if let (true, Some(job_id)) = (now.number == number && applied == Applied::Changed, &now.job_id) {
                effects.push(Effect::RecordJob {
                    stage: self.stage.to_owned(),
                    attempt: number,
                    job_id: job_id.clone(),
                });
            }
        }
        if late && was_failed {
            // A failed run's deadline stops what is left of it.
            effects.extend(run.open_job_stops());
        }
        Step::new(late || applied == Applied::Changed, applied, effects)
    }
}

/// The repair sweep's visit: the deadline is judged by the clock (a run nothing happened
/// in since it passed), and the jobs a failed run stops are stopped again, in case an
/// earlier stop was lost.
pub struct SweepVisit;

impl Input for SweepVisit {
    type Answer = ();

    fn take(&self, run: &mut Run, ctx: &Context) -> Step<()> {
        let was_running = run.status == RunStatus::Running;
        let late = run.fail_past_deadline(ctx.now_ms);
        // Failed just now: `handle` adds the failure's stops.
        let again = if late && was_running { vec![] } else { run.open_job_stops() };
        Step::new(late, (), again)
    }
}

/// Nothing new: only what the record owes (after a read of the record, say).
pub struct Resume;

impl Input for Resume {
    type Answer = ();

    fn take(&self, _run: &mut Run, _ctx: &Context) -> Step<()> {
        Step::new(false, (), vec![])
    }
}

/// The run's record was just created: it counts as started.
pub struct Created;

impl Input for Created {
    type Answer = ();

    fn take(&self, _run: &mut Run, _ctx: &Context) -> Step<()> {
        let started = RunMetric { name: "RunsStarted", value: 1.0, unit: MetricUnit::Count };
        Step::new(false, (), vec![Effect::Publish(vec![started])])
    }
}

/// A user cancels the run. Answers why not, for a run that ended otherwise.
pub struct CancelRequested;

impl Input for CancelRequested {
    type Answer = Result<(), String>;

    fn take(&self, run: &mut Run, ctx: &Context) -> Step<Result<(), String>> {
        let before = (run.status, run.stop_everything);
        let jobs = match run.cancel(ctx.now_ms) {
            Ok(jobs) => jobs,
            Err(why) => return Step::new(false, Err(why), vec![]),
        };
        let reason = run.stop_reason();
        let stops = jobs.into_iter().filter_map(|job| {
            let job_ref = job.job_id.map(JobRef::Id).or(job.job_name.map(JobRef::Name))?;
            Some(Effect::Stop { stage: job.stage, attempt: job.attempt, job: job_ref, reason: reason.clone() })
        });
        Step::new(before != (run.status, run.stop_everything), Ok(()), stops.collect())
    }
}

/// A user redrives the run (see [`Run::redrive`]) with the request's idempotency key and
/// the sizes it asks for.
pub struct RedriveRequested<'a> {
    pub key: &'a str,
    pub sizes: &'a BTreeMap<String, Size>,
    /// A fingerprint of the request as written, when the caller has one.
    pub request: Option<&'a str>,
}

impl Input for RedriveRequested<'_> {
    type Answer = Result<Redriven, RedriveRefused>;

    fn take(&self, run: &mut Run, ctx: &Context) -> Step<Self::Answer> {
        match run.redrive_request(self.key, self.sizes, self.request, ctx.now_ms) {
            Ok(redriven) if redriven.duplicate => Step::new(false, Ok(redriven), vec![]),
            Ok(redriven) => {
                let metric = RunMetric { name: "RunsRedriven", value: 1.0, unit: MetricUnit::Count };
                Step::new(true, Ok(redriven), vec![Effect::Publish(vec![metric])])
            }
            Err(refused) => Step::new(false, Err(refused), vec![]),
        }
    }
}

/// A planned attempt was submitted as this job.
pub struct Submitted<'a> {
    pub stage: &'a str,
    pub attempt: u32,
    pub job_id: &'a str,
    pub job_name: &'a str,
}

impl Input for Submitted<'_> {
    type Answer = ();

    fn take(&self, run: &mut Run, ctx: &Context) -> Step<()> {
        if run.record_submitted(self.stage, self.attempt, self.job_id, self.job_name, ctx.now_ms) {
            return Step::new(true, (), vec![]);
        }
        // The run gave the attempt up (cancelled, or failed) while it was being submitted:
        // its job is stopped, so it is no orphan, and once stopped recorded ([`JobFound`]),
        // so the run waits for its end. Should the stop fail, the attempt's claim still
        // names the job, and settling it before the announcement stops it again.
        let given_up = run.gave_up(self.stage, self.attempt);
        let reason = run.late_job_reason();
        let (stage, attempt, job) = (self.stage.to_owned(), self.attempt, JobRef::Id(self.job_id.to_owned()));
        Step::new(false, (), if given_up { vec![Effect::Stop { stage, attempt, job, reason }] } else { vec![] })
    }
}

/// A job exists for an attempt the run gave up before recording one (a submission that
/// finished after the run ended; or one found by its name, or on its claim, when the
/// driver stopped it): it is recorded, and the attempt is open again until Batch reports
/// the job's end — so its time is counted and the run is announced, and may be redriven,
/// only once it has ended.
pub struct JobFound<'a> {
    pub stage: &'a str,
    pub attempt: u32,
    pub job_id: &'a str,
}

impl Input for JobFound<'_> {
    type Answer = ();

    fn take(&self, run: &mut Run, _ctx: &Context) -> Step<()> {
        if !run.gave_up(self.stage, self.attempt) {
            return Step::new(false, (), vec![]);
        }
        let current = run.stage_run_mut(self.stage).and_then(|stage_run| stage_run.attempts.last_mut());
        let Some(current) = current else { return Step::new(false, (), vec![]) };
        current.job_id = Some(self.job_id.to_owned());
        current.claim_unsettled = true;
        current.status = StageStatus::Submitted;
        Step::new(true, (), vec![])
    }
}

/// A planned attempt can never be submitted (its job definition or queue is gone, or Batch
/// refuses the job): the stage fails, and the run with it (see [`Run::fail_unsubmittable`]).
pub struct Unsubmittable<'a> {
    pub stage: &'a str,
    pub attempt: u32,
    pub reason: &'a str,
}

impl Input for Unsubmittable<'_> {
    type Answer = ();

    fn take(&self, run: &mut Run, ctx: &Context) -> Step<()> {
        Step::new(run.fail_unsubmittable(self.stage, self.attempt, self.reason, ctx.now_ms), (), vec![])
    }
}
