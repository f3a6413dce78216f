//! The repair sweep: finishes what lost events left undone in runs not done with, within a time budget.
//!
//! The sweep walks the open-run list (every run, of any pipeline — removed ones included —
//! that is running or ended without its completion sent), oldest first. For each run it
//! submits what the record has planned, applies the outcome of every stage job that ended
//! in Batch without the record knowing (an event lost after all retries) as its event
//! would have, and sends a completion still owed. Its visit is one input to the run model
//! ([`SweepVisit`]): it fails a run past its `MaxRunSeconds` that no event has failed yet,
//! and terminates again the jobs a failed run stops (fail fast) in case an earlier
//! TerminateJob was lost. A run that cannot be repaired is logged
//! and counted and the sweep goes on; a stage that can never be submitted fails its run
//! (see the run driver).
//!
//! **Time budget and cursor.** The sweep stops starting runs [`SWEEP_MARGIN_MS`] before
//! its invocation's deadline and keeps its position in the table (`OPEN` / `SWEEP`); the
//! next sweep resumes after the last run it finished, and starts over once a walk reached
//! the end. Two sweeps at once (a retried schedule) are harmless: every write to a run is
//! conditional on its version, and the cursor is only a hint of where to go on.
//!
//! **Adoption.** Runs written by earlier releases are not on the open-run list. Until it
//! has adopted them, the sweep also walks the index of every configured pipeline for such
//! runs and lists them (conditional on the version it read). Adoption ends for good after
//! a whole walk that began at least [`ADOPTION_SETTLE_MS`] after this release's first
//! sweep, when no function of an earlier release can still be writing.

use tracing::{info, warn, Instrument};

use crate::model::batch_event::JobStatus;
use crate::model::run::{Applied, Effect, Run, RunStatus, SweepVisit};
use crate::services::runs::{Executed, RunDriver};
use crate::store::keys::index_sk;
use crate::store::{Adoption, OpenRun, SweepCursor, VersionedRun};
use crate::telemetry::run_span;
use crate::Error;

/// How long before its invocation's deadline the sweep stops starting runs: room for the
/// run under way to finish (a few reads, writes and Batch calls, with their retries) and
/// for the cursor to be saved.
pub const SWEEP_MARGIN_MS: i64 = 60_000;

/// How long after this release's first sweep an adoption walk must begin to be the last:
/// longer than any invocation of an earlier release can still be running (Lambda's
/// longest timeout).
pub const ADOPTION_SETTLE_MS: i64 = 15 * 60_000;

/// Open-run lines read per page.
const PAGE_SIZE: i32 = 100;

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SweepReport {
    pub runs_checked: usize,
    pub transitions_applied: usize,
    /// Runs the sweep could not repair this time (each logged with why).
    pub runs_failed: usize,
    /// Runs of earlier releases put on the open-run list.
    pub runs_adopted: usize,
    /// Whether the walk reached the end of the open-run list (false: the time ran out and
    /// the next sweep resumes from the cursor).
    pub reached_end: bool,
}

impl RunDriver<'_> {
    /// Sweeps the open-run list from where the last sweep stopped, until the end or until
    /// its time is up. One run's failure is logged and counted, never the end of the sweep.
    pub async fn sweep(&self) -> Result<SweepReport, Error> {
        let stop_at = self.holder.deadline_ms - SWEEP_MARGIN_MS;
        let mut cursor = match self.runs.sweep_cursor().await {
            Ok(cursor) => cursor,
            Err(err @ Error::Stored { .. }) => {
                warn!(error = %err, "the sweep's cursor is unreadable; starting from the beginning");
                SweepCursor::default()
            }
            Err(err) => return Err(err),
        };
        let mut report = SweepReport::default();
        if !cursor.adoption.done {
            report.runs_adopted = self.adopt(&mut cursor.adoption, stop_at).await?;
            self.runs.save_sweep_cursor(&cursor).await?;
        }
        loop {
            let page = self.runs.open_runs(cursor.after.as_deref(), PAGE_SIZE).await?;
            for line in &page.items {
                if self.clock.now_ms() >= stop_at {
                    self.runs.save_sweep_cursor(&cursor).await?;
                    return Ok(report);
                }
                report.runs_checked += 1;
                match self.sweep_run(line).await {
                    Ok(applied) => report.transitions_applied += applied,
                    Err(err) => {
                        warn!(run_id = %line.run_id, error = %err, "the sweep could not repair this run; going on");
                        report.runs_failed += 1;
                    }
                }
                cursor.after = Some(line.position.clone());
            }
            if page.next.is_none() {
                cursor.after = None;
                report.reached_end = true;
                self.runs.save_sweep_cursor(&cursor).await?;
                return Ok(report);
            }
            self.runs.save_sweep_cursor(&cursor).await?;
        }
    }

    /// Repairs one listed run: first applies the end of every stage job that ended in Batch
    /// without the record knowing (with Batch's times, so the deadline is judged by when
    /// jobs ended, not by when the sweep found out), then visits it ([`SweepVisit`]: its
    /// deadline, stops to repeat, what it owes). Takes the line off the list if the run is
    /// done with or gone. Returns how many transitions it applied.
    async fn sweep_run(&self, line: &OpenRun) -> Result<usize, Error> {
        let Some(record) = self.runs.load_run(&line.run_id).await? else {
            self.runs.reconcile_open_line(line, None).await?;
            return Ok(0);
        };
        if record.run.is_done_with() {
            self.runs.reconcile_open_line(line, Some(&record)).await?;
            return Ok(0);
        }
        // Every line of the visit names the run and its pipeline.
        let span = run_span(&record.run.run_id, &record.run.pipeline.name);
        self.visit(line, record).instrument(span).await
    }

    /// [`SweepRun::sweep_run`]'s repairs and visit of a run it read, still open.
    async fn visit(&self, line: &OpenRun, record: VersionedRun) -> Result<usize, Error> {
        let applied = self.apply_missed_ends(&record.run).await?;
        let record = match applied {
            0 => record,
            _ => match self.runs.load_run(&line.run_id).await? {
                Some(fresh) => fresh,
                None => return Ok(applied),
            },
        };
        let now = self.clock.now_ms();
        let was_running = record.run.status == RunStatus::Running;
        let Some((record, step)) = self.write(record, &SweepVisit, now).await? else { return Ok(applied) };
        if was_running && record.run.status == RunStatus::Failed {
            // A run nothing happened in since its deadline passed is failed here, so the
            // deadline's precision is the sweep's interval (its budget can fail it too).
            let reason = record.run.reason.as_deref().unwrap_or_default();
            info!(run_id = %line.run_id, reason, "the sweep's visit failed the run");
        }
        let stopping = step.effects.iter().any(|effect| matches!(effect, Effect::Stop { .. }));
        let run = self.execute(record, step.effects, now, &mut Executed::default()).await?.run;
        // A job the visit stopped may have ended already: its end is applied now rather
        // than at the next sweep, should its event never come.
        Ok(applied + if stopping { self.apply_missed_ends(&run).await? } else { 0 })
    }

    /// Applies the end of every open job of the run that Batch reports ended (its event
    /// was lost after all retries), as its event would have. Returns how many changed it.
    async fn apply_missed_ends(&self, run: &Run) -> Result<usize, Error> {
        let open = run.open_jobs();
        if open.is_empty() {
            return Ok(0);
        }
        let ids: Vec<String> = open.iter().map(|(_, job)| job.clone()).collect();
        let described = self.batch.describe_jobs(&ids).await?;
        let mut applied = 0;
        for (stage, job_id) in &open {
            let Some(event) = described.iter().find(|e| &e.detail.job_id == job_id) else { continue };
            if !matches!(event.detail.status, JobStatus::Succeeded | JobStatus::Failed) {
                continue;
            }
            if self.advance(&run.run_id, stage, event, self.clock.now_ms()).await? == Applied::Changed {
                let status = event.detail.status.as_str();
                info!(run_id = %run.run_id, stage, job_id, status, "sweep applied a missed transition");
                applied += 1;
            }
        }
        Ok(applied)
    }

    /// Walks the index of every configured pipeline for open runs of earlier releases and
    /// lists them, resuming where the last sweep stopped. Returns how many it listed.
    async fn adopt(&self, adoption: &mut Adoption, stop_at: i64) -> Result<usize, Error> {
        let now = self.clock.now_ms();
        let since = *adoption.since_ms.get_or_insert(now);
        let started = *adoption.walk_started_ms.get_or_insert(now);
        let config = self.configs.get().await?;
        // Pipelines in name order; a walk resumes at the one it was in (or the next, if
        // that one was removed meanwhile).
        let resume_at = adoption.pipeline.clone().unwrap_or_default();
        let mut adopted = 0;
        for pipeline in config.pipelines.keys().filter(|name| **name >= resume_at) {
            if adoption.pipeline.as_ref() != Some(pipeline) {
                adoption.pipeline = Some(pipeline.clone());
                adoption.after = None;
            }
            loop {
                let page = self.runs.legacy_open_runs(pipeline, adoption.after.as_deref()).await?;
                for summary in &page.items {
                    if self.clock.now_ms() >= stop_at {
                        return Ok(adopted);
                    }
                    let position = index_sk(summary.created_at, &summary.run_id);
                    if let Some(read) = self.runs.load_run(&summary.run_id).await? {
                        let line = OpenRun {
                            run_id: summary.run_id.clone(),
                            created_at: summary.created_at,
                            position: position.clone(),
                        };
                        if !read.run.is_done_with() && self.runs.reconcile_open_line(&line, Some(&read)).await? {
                            let pipeline = &read.run.pipeline.name;
                            info!(run_id = %summary.run_id, %pipeline, "the sweep adopted a run of an earlier release");
                            adopted += 1;
                        }
                    }
                    adoption.after = Some(position);
                }
                match page.next {
                    Some(next) => adoption.after = Some(next),
                    None => break,
                }
            }
        }
        if started >= since + ADOPTION_SETTLE_MS {
            adoption.done = true;
        }
        adoption.walk_started_ms = None;
        adoption.pipeline = None;
        adoption.after = None;
        Ok(adopted)
    }
}
