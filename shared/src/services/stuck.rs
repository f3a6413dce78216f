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

use async_trait::async_trait;
use serde::Serialize;
use tracing::warn;

use crate::model::batch_event::JobStatus;
use crate::model::stack::{JobQueue, StackConfig};
use crate::model::stuck::{self, QueueState, WaitingJob};
use crate::services::batch::BatchPort;
use crate::services::clock::Clock;
use crate::Error;

/// DescribeJobs takes at most this many ids a call.
const DESCRIBE_CHUNK: usize = 100;

/// What the watch reads of a queue beyond the Batch port's calls.
#[async_trait]
pub trait QueueInspector: Send + Sync {
    /// Every job waiting in RUNNABLE in the queue (its name): id and `createdAt` (ms).
    async fn runnable_jobs(&self, queue: &str) -> Result<Vec<(String, i64)>, Error>;
    /// The queue's (name or ARN) live state and its compute environments'; `None` when Batch has no such queue.
    async fn queue_state(&self, queue: &str) -> Result<Option<QueueState>, Error>;
}

/// Where the watch's figures go.
#[async_trait]
pub trait QueueMetrics: Send + Sync {
    /// Publishes the queues' figures; a failure is logged, not returned.
    async fn queue_metrics(&self, queues: &[QueueReport]);
}

/// What the watch found in one queue.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueReport {
    /// The queue's physical name.
    pub queue: String,
    pub runnable: usize,
    pub oldest_runnable_seconds: u64,
    pub stuck: usize,
    /// Stuck jobs with a cause waiting cannot cure.
    pub diagnosed: usize,
    pub cancelled: usize,
}

pub struct StuckJobWatch<'a> {
    pub inspector: &'a dyn QueueInspector,
    pub batch: &'a dyn BatchPort,
    pub metrics: &'a dyn QueueMetrics,
    pub clock: &'a dyn Clock,
}

impl StuckJobWatch<'_> {
    /// Watches every queue of the stack and publishes what it found.
    pub async fn watch(&self, config: &StackConfig) -> Vec<QueueReport> {
        let mut reports = Vec::new();
        for queue in config.job_queues.values() {
            match self.watch_queue(queue).await {
                Ok(report) => reports.push(report),
                Err(err) => warn!(job_queue = %queue.name, error = %err, "could not watch this queue for stuck jobs"),
            }
        }
        self.metrics.queue_metrics(&reports).await;
        reports
    }

    async fn watch_queue(&self, queue: &JobQueue) -> Result<QueueReport, Error> {
        let now = self.clock.now_ms();
        let runnable = self.inspector.runnable_jobs(&queue.name).await?;
        let wait = |created_at: i64| stuck::seconds_waited(created_at, now);
        let mut report = QueueReport {
            queue: queue.name.clone(),
            runnable: runnable.len(),
            oldest_runnable_seconds: runnable.iter().map(|(_, created)| wait(*created)).max().unwrap_or(0),
            ..QueueReport::default()
        };
        let stuck_ids: Vec<String> = runnable
            .iter()
            .filter(|(_, created)| stuck::is_stuck(wait(*created), queue.stuck_after_seconds))
            .map(|(id, _)| id.clone())
            .collect();
        if stuck_ids.is_empty() {
            return Ok(report);
        }
        let state = self.inspector.queue_state(&queue.name).await?;
        for chunk in stuck_ids.chunks(DESCRIBE_CHUNK) {
            for event in self.batch.describe_jobs(chunk).await? {
                let detail = &event.detail;
                if detail.status != JobStatus::Runnable {
                    continue; // it moved on since the listing
                }
                let job = WaitingJob {
                    job_id: detail.job_id.clone(),
                    job_name: detail.job_name.clone().unwrap_or_default(),
                    created_at_ms: detail.created_at.unwrap_or(now),
                    size: detail.size(),
                    architecture: detail.cpu_architecture().map(str::to_owned),
                    status_reason: detail.status_reason.clone(),
                };
                let waited = wait(job.created_at_ms);
                let diagnosis = state.as_ref().and_then(|state| stuck::diagnose(&job, state));
                report.stuck += 1;
                report.diagnosed += usize::from(diagnosis.is_some());
                warn!(
                    job_id = %job.job_id, job_name = %job.job_name, job_queue = %queue.name, waited_seconds = waited,
                    limit_seconds = queue.stuck_after_seconds, diagnosis = diagnosis.as_deref().unwrap_or("none"),
                    "a job is stuck in RUNNABLE"
                );
                if !stuck::should_cancel(queue.cancel_stuck_jobs, diagnosis.as_deref()) {
                    continue;
                }
                let reason =
                    stuck::cancel_reason(&job, waited, &queue.name, queue.stuck_after_seconds, diagnosis.as_deref());
                match self.batch.terminate_job(&job.job_id, &reason).await {
                    Ok(()) => report.cancelled += 1,
                    Err(err) => {
                        warn!(job_id = %job.job_id, error = %err, "could not cancel a stuck job; the next sweep tries again")
                    }
                }
            }
        }
        Ok(report)
    }
}
