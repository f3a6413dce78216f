//! The status resource: `GET /status`, what the stack is doing now — per queue its state and how many jobs wait or work in each status, the latest failures, the open runs.
//!
//! It reads Batch through the Batch port over the stack's queues only, in a bounded number
//! of calls however many jobs Batch keeps, so a busy stack answers within API Gateway's
//! 30 s: at most [`MAX_COUNTED`] jobs a status and queue are counted (`countsCapped` names
//! the statuses that reached it), one page of failures is read, and open runs are counted
//! up to [`MAX_OPEN_RUNS`].

use batchline::model::batch_event::JobStatus;
use batchline::model::stack::StackConfig;
use batchline::services::ports::{BatchPort, JobListing};
use batchline::store::RunStore;
use batchline::Error;
use serde_json::{json, Value};

use super::call::Call;
use super::http::{response, Answer};
use super::jobs::line;

/// The most jobs `GET /status` counts in one status of one queue (a page of 1,000 a call).
pub const MAX_COUNTED: usize = 5_000;
/// Open runs are counted up to about this many (a page of 100 at a time).
pub const MAX_OPEN_RUNS: usize = 1_000;
/// The statuses a job waits or works in, as `GET /status` counts them.
const ACTIVE: [JobStatus; 5] =
    [JobStatus::Submitted, JobStatus::Pending, JobStatus::Runnable, JobStatus::Starting, JobStatus::Running];
/// How many of the latest failures `GET /status` shows.
const RECENT_FAILURES: usize = 5;

/// `GET /status`: 200 `{stack, queues, recentFailures, openRuns}`.
pub async fn get(call: &Call<'_>) -> Answer {
    let ports = &call.clients.ports;
    let open = count_open_runs(ports.store.as_ref()).await?;
    Ok(response(200, &status(&ports.batch, call.stack, open).await?))
}

/// Runs not yet done with (the sweep's list), counted up to about [`MAX_OPEN_RUNS`].
async fn count_open_runs(store: &dyn RunStore) -> Result<usize, Error> {
    let mut open = 0;
    let mut after: Option<String> = None;
    loop {
        let page = store.open_runs(after.as_deref(), 100).await?;
        open += page.items.len();
        match page.next {
            Some(next) if open < MAX_OPEN_RUNS => after = Some(next),
            _ => return Ok(open),
        }
    }
}

/// How many jobs of a queue are in `status`, counting at most [`MAX_COUNTED`]; true when
/// it stopped there (there may be more).
async fn count_jobs(batch: &dyn BatchPort, queue: &str, status: &JobStatus) -> Result<(usize, bool), Error> {
    let listing = JobListing::InStatus(status.clone());
    let (mut count, mut token) = (0, None);
    loop {
        let page = batch.list_jobs(queue, &listing, token, 1000).await?;
        count += page.jobs.len();
        match page.next {
            Some(next) if count < MAX_COUNTED => token = Some(next),
            Some(_) => return Ok((count, true)),
            None => return Ok((count, false)),
        }
    }
}

/// Per queue its state and how many jobs wait or work in each status, and the latest
/// failures across the queues.
pub async fn status(batch: &dyn BatchPort, stack: &StackConfig, open_runs: usize) -> Result<Value, Error> {
    let names: Vec<String> = stack.job_queues.values().map(|q| q.name.clone()).collect();
    let described = batch.job_queues(&names).await?;
    let mut queues = Vec::new();
    let mut failures: Vec<(i64, Value)> = Vec::new();
    for (key, queue) in &stack.job_queues {
        let found = described.iter().find(|q| q.name == queue.name);
        let mut jobs = serde_json::Map::new();
        let mut capped = Vec::new();
        for status in &ACTIVE {
            let (count, more) = count_jobs(batch, &queue.arn, status).await?;
            jobs.insert(status.as_str().to_owned(), json!(count));
            if more {
                capped.push(status.as_str());
            }
        }
        // The latest failures are on Batch's first page (newest first): one call, however
        // many failed jobs Batch keeps.
        let failed = batch.list_jobs(&queue.arn, &JobListing::InStatus(JobStatus::Failed), None, 100).await?;
        for job in failed.jobs {
            failures.push((job.stopped_at.or(job.created_at).unwrap_or_default(), line(&job, &queue.name)));
        }
        queues.push(json!({
            "key": key,
            "name": queue.name,
            "default": *key == stack.default_queue,
            "state": found.map(|q| if q.enabled { "ENABLED" } else { "DISABLED" }),
            "status": found.map(|q| q.status.clone()),
            "jobs": jobs,
            // Statuses whose count stopped at the cap: at least that many.
            "countsCapped": capped,
        }));
    }
    failures.sort_by_key(|job| std::cmp::Reverse(job.0));
    let recent: Vec<Value> = failures.into_iter().take(RECENT_FAILURES).map(|(_, job)| job).collect();
    Ok(json!({"stack": stack.name_prefix, "queues": queues, "recentFailures": recent, "openRuns": open_runs}))
}
