//! The stuck-job watch: every sweep, each queue's RUNNABLE jobs — its oldest wait and its stuck jobs published, and the stuck jobs its rule names cancelled with why.
//!
//! Batch's "queue wait" is only known once a job starts, so a job that never starts is
//! invisible to the `QueueWaitTime` metric and its alarm. The watch looks at what is
//! waiting now: per queue, `OldestRunnableSeconds` (0 with nothing waiting) and
//! `StuckJobs` (jobs past the queue's `StuckAfterSeconds`), with the `JobQueue` dimension
//! and without (the largest wait and the total, which the template's alarm watches). Each
//! stuck job is logged with its diagnosis (see [`crate::model::stuck`]); the queue's
//! `CancelStuckJobs` rule decides which are terminated, with a reason saying why. A
//! cancelled pipeline stage fails its run like any failed job, with that reason.
//!
//! One queue's trouble (an API error) is logged and the watch goes on with the next; the
//! metrics of the queues it could read are published. Two sweeps at once are harmless:
//! terminating a job twice is a no-op.

use futures::StreamExt;
use tracing::warn;

use std::collections::{BTreeMap, BTreeSet};

use crate::model::batch_event::{JobDetail, JobStatus};
use crate::model::stack::{JobQueue, StackConfig};
use crate::model::stuck::{self, QueueReport, QueueState, WaitingJob};
use crate::services::ports::{BatchPort, Clock, QueueInspector, QueueMetrics};
use crate::Error;

/// DescribeJobs takes at most this many ids a call.
const DESCRIBE_CHUNK: usize = 100;
/// How many stuck jobs are cancelled at once (TerminateJob calls in flight).
const CANCEL_AT_ONCE: usize = 10;

pub struct StuckJobWatch<'a> {
    pub inspector: &'a dyn QueueInspector,
    pub batch: &'a dyn BatchPort,
    pub metrics: &'a dyn QueueMetrics,
    pub clock: &'a dyn Clock,
}

impl StuckJobWatch<'_> {
    /// Watches every queue of the stack and publishes what it found, starting no queue
    /// (and no page of stuck jobs) at or after `stop_at_ms`: the watch runs before the
    /// repair sweep in the same invocation, and must leave it its time.
    pub async fn watch(&self, config: &StackConfig, stop_at_ms: i64) -> Vec<QueueReport> {
        let mut reports = Vec::new();
        for queue in config.job_queues.values() {
            if self.clock.now_ms() >= stop_at_ms {
                warn!(job_queue = %queue.name, "the stuck-job watch's share of the invocation is spent; the next sweep watches the rest");
                break;
            }
            match self.watch_queue(queue, stop_at_ms).await {
                Ok(report) => reports.push(report),
                Err(err) => warn!(job_queue = %queue.name, error = %err, "could not watch this queue for stuck jobs"),
            }
        }
        self.metrics.queue_metrics(&reports).await;
        reports
    }

    async fn watch_queue(&self, queue: &JobQueue, stop_at_ms: i64) -> Result<QueueReport, Error> {
        let now = self.clock.now_ms();
        let runnable = self.inspector.runnable_jobs(&queue.name).await?;
        let wait = |since: i64| stuck::seconds_waited(since, now);
        // Past the limit counted from creation: the candidates, described to know more
        // (a job with dependencies may have become RUNNABLE much later).
        let (candidates, younger): (Vec<_>, Vec<_>) =
            runnable.iter().partition(|(_, created)| stuck::is_stuck(wait(*created), queue.stuck_after_seconds));
        let mut report = QueueReport {
            queue: queue.name.clone(),
            runnable: runnable.len(),
            oldest_runnable_seconds: younger.iter().map(|(_, created)| wait(*created)).max().unwrap_or(0),
            ..QueueReport::default()
        };
        if candidates.is_empty() {
            return Ok(report);
        }
        let state = self.inspector.queue_state(&queue.name).await?;
        let ids: Vec<String> = candidates.iter().map(|(id, _)| id.clone()).collect();
        for chunk in ids.chunks(DESCRIBE_CHUNK) {
            if self.clock.now_ms() >= stop_at_ms {
                warn!(job_queue = %queue.name, "the stuck-job watch's share of the invocation is spent; the next sweep goes on");
                break;
            }
            let mut to_cancel = Vec::new();
            for job in self.waiting_jobs(chunk, now).await? {
                let waited = wait(job.runnable_since_ms);
                report.oldest_runnable_seconds = report.oldest_runnable_seconds.max(waited);
                if stuck::is_stuck(waited, queue.stuck_after_seconds) {
                    to_cancel.extend(self.stuck_job(queue, state.as_ref(), job, waited, &mut report));
                }
            }
            report.cancelled += self.cancel_all(to_cancel).await;
        }
        Ok(report)
    }

    /// The jobs of `ids` still RUNNABLE, each with when it became so: for a job with
    /// dependencies, its dependencies are described for their ends.
    async fn waiting_jobs(&self, ids: &[String], now: i64) -> Result<Vec<WaitingJob>, Error> {
        let described = self.batch.describe_jobs(ids).await?;
        let runnable: Vec<_> =
            described.iter().map(|e| &e.detail).filter(|d| d.status == JobStatus::Runnable).collect();
        let dependencies: BTreeSet<String> = runnable
            .iter()
            .flat_map(|d| d.depends_on.iter().flatten().filter_map(|dependency| dependency.job_id.clone()))
            .collect();
        let mut ends: BTreeMap<String, Option<i64>> = BTreeMap::new();
        let dependencies: Vec<String> = dependencies.into_iter().collect();
        for chunk in dependencies.chunks(DESCRIBE_CHUNK) {
            ends.extend(
                self.batch.describe_jobs(chunk).await?.into_iter().map(|e| (e.detail.job_id, e.detail.stopped_at)),
            );
        }
        let since = |detail: &JobDetail| {
            let depends_on = detail.depends_on.iter().flatten().filter_map(|dependency| dependency.job_id.as_ref());
            let dependency_ends: Vec<Option<i64>> = depends_on.map(|id| ends.get(id).copied().flatten()).collect();
            stuck::runnable_since(detail.created_at.unwrap_or(now), &dependency_ends)
        };
        let jobs = runnable.into_iter().map(|detail| WaitingJob {
            job_id: detail.job_id.clone(),
            job_name: detail.job_name.clone().unwrap_or_default(),
            runnable_since_ms: since(detail),
            size: detail.size(),
            architecture: detail.cpu_architecture().map(str::to_owned),
            status_reason: detail.status_reason.clone(),
        });
        Ok(jobs.collect())
    }

    /// Counts and logs a stuck job; returns it with the reason to cancel it with, if the
    /// queue's rule says so.
    fn stuck_job(
        &self,
        queue: &JobQueue,
        state: Option<&QueueState>,
        job: WaitingJob,
        waited: u64,
        report: &mut QueueReport,
    ) -> Option<(WaitingJob, String)> {
        let diagnosis = state.and_then(|state| stuck::diagnose(&job, state));
        report.stuck += 1;
        report.diagnosed += usize::from(diagnosis.is_some());
        warn!(
            job_id = %job.job_id, job_name = %job.job_name, job_queue = %queue.name, waited_seconds = waited,
            limit_seconds = queue.stuck_after_seconds, diagnosis = diagnosis.as_deref().unwrap_or("none"),
            "a job is stuck in RUNNABLE"
        );
        if !stuck::should_cancel(queue.cancel_stuck_jobs, diagnosis.as_deref()) {
            return None;
        }
        let reason = stuck::cancel_reason(&job, waited, &queue.name, queue.stuck_after_seconds, diagnosis.as_deref());
        Some((job, reason))
    }

    /// Cancels stuck jobs, [`CANCEL_AT_ONCE`] at a time rather than one after another;
    /// returns how many were cancelled. One that fails is logged; the next sweep tries it
    /// again.
    async fn cancel_all(&self, jobs: Vec<(WaitingJob, String)>) -> usize {
        let cancels = jobs.into_iter().map(|(job, reason)| async move {
            let result = self.batch.terminate_job(&job.job_id, &reason).await;
            if let Err(err) = &result {
                warn!(job_id = %job.job_id, error = %err, "could not cancel a stuck job; the next sweep tries again");
            }
            result.is_ok()
        });
        let done: Vec<bool> = futures::stream::iter(cancels).buffer_unordered(CANCEL_AT_ONCE).collect().await;
        done.into_iter().filter(|cancelled| *cancelled).count()
    }
}
