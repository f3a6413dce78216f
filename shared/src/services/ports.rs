//! The services' ports: every trait through which they reach the world outside the table — Batch, the announcer of runs and metrics, the clock.
//!
//! The AWS adapters are in [`crate::adapters`], the in-memory Batch for tests in
//! `services::memory_batch` (the `testing` feature), the wiring of the real ones
//! in [`crate::wiring`]. The table's ports are the store's traits ([`crate::store`]).

use async_trait::async_trait;
use serde_json::Value;

use crate::model::batch_event::{JobDetail, JobStateChangeEvent, JobStatus};
use crate::model::job_request::JobRequest;
use crate::model::run::RunMetric;
use crate::model::stuck::{QueueReport, QueueState};
use crate::Error;

/// What the services read of time (a claim's time, a deadline), so tests can set it.
pub trait Clock: Send + Sync {
    /// Now, in epoch milliseconds.
    fn now_ms(&self) -> i64;
}

#[async_trait]
pub trait BatchPort: Send + Sync {
    /// One SubmitJob call, never retried by the SDK (a retry after a lost answer would
    /// submit twice): the job id, or the error as AWS gave it.
    async fn submit_job(&self, request: &JobRequest) -> Result<String, Error>;
    /// The job named `name` in `queue`, if Batch has one.
    async fn find_job(&self, queue: &str, name: &str) -> Result<Option<String>, Error>;
    async fn terminate_job(&self, job_id: &str, reason: &str) -> Result<(), Error>;
    /// The jobs as state-change events (what an event for their current state would say);
    /// unknown ids are left out.
    async fn describe_jobs(&self, job_ids: &[String]) -> Result<Vec<JobStateChangeEvent>, Error>;
    /// One page of a queue's jobs (ListJobs): at most `max` (1 to 1,000), newest first as
    /// Batch lists them, and the token of the next page. Summaries: ids, names, status and
    /// its reason, times and the exit code.
    async fn list_jobs(
        &self,
        queue: &str,
        listing: &JobListing,
        token: Option<String>,
        max: usize,
    ) -> Result<JobPage, Error>;
    /// The queues (names) Batch has, each's state and status alone — one DescribeJobQueues
    /// call, its compute environments left out (the stuck-job watch's
    /// [`QueueInspector::queue_state`] reads them too).
    async fn job_queues(&self, names: &[String]) -> Result<Vec<QueueState>, Error>;
}

/// Which of a queue's jobs ListJobs lists: Batch takes a status or a filter, not both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobListing {
    /// The jobs in one status.
    InStatus(JobStatus),
    /// The jobs created since this time (epoch ms), in every status.
    CreatedSince(i64),
}

/// A page of ListJobs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobPage {
    pub jobs: Vec<JobDetail>,
    pub next: Option<String>,
}

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

/// Where a trigger's refusals are counted.
#[async_trait]
pub trait TriggerMetrics: Send + Sync {
    /// Counts one refused object for each S3 rule named (`TriggersRefused`, per `Trigger`
    /// and overall); a failure is logged, not returned.
    async fn triggers_refused(&self, rules: &[String]);
    /// Counts a coalescing trigger's closed window (`WindowsClosed`), the objects it ran
    /// (`ObjectsCoalesced`) and the array jobs it submits (`CoalescedArrays`), per `Trigger`
    /// and overall; a failure is logged, not returned.
    async fn window_closed(&self, trigger: &str, objects: usize, arrays: usize);
}

/// Where submit sends the objects a coalescing trigger matched (the coalesce lane).
#[async_trait]
pub trait CoalesceLane: Send + Sync {
    /// Sends every object, ten to a call; an error means some may not have been sent (the
    /// caller's message comes again, and a window takes an object once).
    async fn forward(&self, objects: &[crate::model::coalesce::CoalescedObject]) -> Result<(), Error>;
}

#[async_trait]
pub trait RunAnnouncer: Send + Sync {
    /// Sends the completion event of an ended run.
    async fn completion(&self, detail: &Value, run_id: &str) -> Result<(), Error>;
    /// Publishes run metrics per pipeline and overall; a failure is logged, not returned:
    /// the run's state matters more than its metrics.
    async fn run_metrics(&self, pipeline: &str, metrics: &[RunMetric]);
    /// Asks the map worker for a map attempt's S3 work ("Batchline Map Work"); the worker
    /// answers the run itself. Asked again until answered: the worker does it once.
    async fn map_work(&self, work: &crate::model::map::MapWork) -> Result<(), Error>;
}
