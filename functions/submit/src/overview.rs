//! What the stack is doing: its jobs listed (`GET /jobs`) and a summary of its queues and recent failures (`GET /status`).
//!
//! Both read Batch straight away (ListJobs, DescribeJobQueues) over the stack's queues only,
//! so they show every job there — submitted through Batchline or not — as Batch sees it
//! now. `GET /jobs` lists the jobs created in the last 24 hours (Batch's `AFTER_CREATED_AT`
//! filter, which covers every status), or with `?status=` those in one status, newest first,
//! at most [`MAX_LISTED`].

use aws_sdk_batch::types::{JobStatus, JobSummary, KeyValuesPair};
use batchline::model::stack::StackConfig;
use batchline::Error;
use serde_json::{json, Value};

use crate::api::{iso, ApiError};

/// The most jobs `GET /jobs` answers with.
pub const MAX_LISTED: usize = 100;
/// The statuses a job waits or works in, as `GET /status` counts them.
const ACTIVE: [JobStatus; 5] =
    [JobStatus::Submitted, JobStatus::Pending, JobStatus::Runnable, JobStatus::Starting, JobStatus::Running];
/// How many of the latest failures `GET /status` shows.
const RECENT_FAILURES: usize = 5;
const DAY_MS: i64 = 24 * 3600 * 1000;

/// The status a caller asked for, as Batch names it.
pub fn parse_status(text: &str) -> Result<JobStatus, ApiError> {
    let wanted = text.to_ascii_uppercase();
    JobStatus::values().iter().find(|known| **known == wanted).map(|known| JobStatus::from(*known)).ok_or_else(|| {
        ApiError::bad_request(format!(
            "status {text:?}: use SUBMITTED, PENDING, RUNNABLE, STARTING, RUNNING, SUCCEEDED or FAILED"
        ))
    })
}

/// Every job of one queue in `status`, or (without one) created since `since_ms`; all pages.
async fn jobs_of(
    batch: &aws_sdk_batch::Client,
    queue: &str,
    status: Option<&JobStatus>,
    since_ms: i64,
) -> Result<Vec<JobSummary>, Error> {
    let request = batch.list_jobs().job_queue(queue);
    // Batch takes a status or filters, not both; the filter lists every status.
    let request = match status {
        Some(status) => request.job_status(status.clone()),
        None => request.filters(KeyValuesPair::builder().name("AFTER_CREATED_AT").values(since_ms.to_string()).build()),
    };
    request.into_paginator().items().send().try_collect().await.map_err(|e| Error::aws("ListJobs", e))
}

fn line(job: &JobSummary, queue: &str) -> Value {
    json!({
        "jobId": job.job_id(),
        "jobName": job.job_name(),
        "jobQueue": queue,
        "status": job.status().map(|s| s.as_str()),
        "statusReason": job.status_reason(),
        "createdAt": iso(job.created_at()),
        "startedAt": iso(job.started_at()),
        "stoppedAt": iso(job.stopped_at()),
        "exitCode": job.container().and_then(|c| c.exit_code()),
    })
}

/// `GET /jobs`: the stack's jobs, newest first.
pub async fn list_jobs(
    batch: &aws_sdk_batch::Client,
    stack: &StackConfig,
    status: Option<&JobStatus>,
    now_ms: i64,
) -> Result<Value, Error> {
    let mut jobs: Vec<(i64, Value)> = Vec::new();
    for queue in stack.job_queues.values() {
        for job in jobs_of(batch, &queue.arn, status, now_ms - DAY_MS).await? {
            jobs.push((job.created_at().unwrap_or_default(), line(&job, &queue.name)));
        }
    }
    jobs.sort_by_key(|job| std::cmp::Reverse(job.0));
    let truncated = jobs.len() > MAX_LISTED;
    let jobs: Vec<Value> = jobs.into_iter().take(MAX_LISTED).map(|(_, job)| job).collect();
    Ok(json!({"jobs": jobs, "truncated": truncated}))
}

/// `GET /status`: per queue its state and how many jobs wait or work in each status, and
/// the latest failures across the queues.
pub async fn status(batch: &aws_sdk_batch::Client, stack: &StackConfig, open_runs: usize) -> Result<Value, Error> {
    let names: Vec<String> = stack.job_queues.values().map(|q| q.name.clone()).collect();
    let described = batch
        .describe_job_queues()
        .set_job_queues(Some(names))
        .send()
        .await
        .map_err(|e| Error::aws("DescribeJobQueues", e))?;
    let mut queues = Vec::new();
    let mut failures: Vec<(i64, Value)> = Vec::new();
    for (key, queue) in &stack.job_queues {
        let found = described.job_queues().iter().find(|q| q.job_queue_name() == Some(queue.name.as_str()));
        let mut jobs = serde_json::Map::new();
        for status in &ACTIVE {
            let count = jobs_of(batch, &queue.arn, Some(status), 0).await?.len();
            jobs.insert(status.as_str().to_owned(), json!(count));
        }
        for job in jobs_of(batch, &queue.arn, Some(&JobStatus::Failed), 0).await? {
            failures.push((job.stopped_at().or(job.created_at()).unwrap_or_default(), line(&job, &queue.name)));
        }
        queues.push(json!({
            "key": key,
            "name": queue.name,
            "default": *key == stack.default_queue,
            "state": found.and_then(|q| q.state()).map(|s| s.as_str()),
            "status": found.and_then(|q| q.status()).map(|s| s.as_str()),
            "jobs": jobs,
        }));
    }
    failures.sort_by_key(|job| std::cmp::Reverse(job.0));
    let recent: Vec<Value> = failures.into_iter().take(RECENT_FAILURES).map(|(_, job)| job).collect();
    Ok(json!({"stack": stack.name_prefix, "queues": queues, "recentFailures": recent, "openRuns": open_runs}))
}
