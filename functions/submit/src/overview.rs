//! What the stack is doing: its jobs listed (`GET /jobs`) and a summary of its queues and recent failures (`GET /status`).
//!
//! Both read Batch straight away (ListJobs, DescribeJobQueues) over the stack's queues only,
//! so they show every job there — submitted through Batchline or not — as Batch sees it
//! now. `GET /jobs` lists the jobs created in the last 24 hours (Batch's `AFTER_CREATED_AT`
//! filter, which covers every status), or with `?status=` those in one status, a page at a
//! time with a cursor ([`list_jobs`]). Both make a bounded number of calls however many
//! jobs Batch keeps, so a busy stack answers within API Gateway's 30 s: `GET /status`
//! counts at most [`MAX_COUNTED`] jobs a status and queue, and reads one page of failures.

use aws_sdk_batch::types::{JobStatus, JobSummary, KeyValuesPair};
use batchline::model::stack::StackConfig;
use batchline::Error;
use serde_json::{json, Value};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::api::{iso, ApiError};

/// The most jobs `GET /jobs` answers with.
pub const MAX_LISTED: usize = 100;
/// The most ListJobs calls one `GET /jobs` makes.
pub const MAX_PAGES: usize = 3;
/// The most jobs `GET /status` counts in one status of one queue (a page of 1,000 a call).
pub const MAX_COUNTED: usize = 5_000;
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

/// `GET /jobs`: the stack's jobs, a page at a time: queue by queue (in key order), each
/// page newest first, at most [`MAX_LISTED`] jobs and [`MAX_PAGES`] ListJobs calls an
/// answer; `next` is the cursor of the rest (`?next=`), absent at the end.
pub async fn list_jobs(
    batch: &aws_sdk_batch::Client,
    stack: &StackConfig,
    status: Option<&JobStatus>,
    from: Position,
    now_ms: i64,
) -> Result<Value, Error> {
    let queues: Vec<(&String, &str, &str)> =
        stack.job_queues.iter().map(|(key, queue)| (key, queue.name.as_str(), queue.arn.as_str())).collect();
    let (mut index, mut token) = (from.queue, from.token);
    let mut jobs: Vec<(i64, Value)> = Vec::new();
    let mut calls = 0;
    while index < queues.len() && jobs.len() < MAX_LISTED && calls < MAX_PAGES {
        let (_, name, arn) = queues[index];
        let wanted = MAX_LISTED - jobs.len();
        let (page, next) = jobs_page(batch, arn, status, now_ms - DAY_MS, token.take(), wanted).await?;
        calls += 1;
        jobs.extend(page.iter().map(|job| (job.created_at().unwrap_or_default(), line(job, name))));
        match next {
            Some(next) => token = Some(next),
            None => index += 1,
        }
    }
    jobs.sort_by_key(|job| std::cmp::Reverse(job.0));
    let next = queues.get(index).map(|(key, _, _)| write_cursor(key, token.as_deref()));
    let jobs: Vec<Value> = jobs.into_iter().map(|(_, job)| job).collect();
    Ok(json!({"jobs": jobs, "truncated": next.is_some(), "next": next}))
}

/// Where a `GET /jobs` page starts: the queue (its place in key order) and Batch's token
/// within it; the default is the beginning.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Position {
    pub queue: usize,
    pub token: Option<String>,
}

/// A `GET /jobs` cursor as the caller holds it: the queue's key and Batch's token.
#[derive(Serialize, Deserialize)]
struct Cursor {
    queue: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    token: Option<String>,
}

fn write_cursor(queue: &str, token: Option<&str>) -> String {
    let cursor = Cursor { queue: queue.to_owned(), token: token.map(str::to_owned) };
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(&cursor).unwrap_or_default())
}

/// The position a `next` cursor names; 400 for one this API did not give (or whose queue
/// a deploy removed).
pub fn read_cursor(text: &str, stack: &StackConfig) -> Result<Position, ApiError> {
    let refused = || ApiError::bad_request("next: not a cursor a GET /jobs answer gave");
    let bytes = URL_SAFE_NO_PAD.decode(text).map_err(|_| refused())?;
    let cursor: Cursor = serde_json::from_slice(&bytes).map_err(|_| refused())?;
    let queue = stack.job_queues.keys().position(|key| *key == cursor.queue).ok_or_else(refused)?;
    Ok(Position { queue, token: cursor.token })
}

/// One page of a queue's jobs in `status`, or (without one) created since `since_ms`:
/// at most `wanted`, and Batch's token for the rest.
async fn jobs_page(
    batch: &aws_sdk_batch::Client,
    queue: &str,
    status: Option<&JobStatus>,
    since_ms: i64,
    token: Option<String>,
    wanted: usize,
) -> Result<(Vec<JobSummary>, Option<String>), Error> {
    let request = batch.list_jobs().job_queue(queue).max_results(wanted.clamp(1, 1000) as i32).set_next_token(token);
    // Batch takes a status or filters, not both; the filter lists every status.
    let request = match status {
        Some(status) => request.job_status(status.clone()),
        None => request.filters(KeyValuesPair::builder().name("AFTER_CREATED_AT").values(since_ms.to_string()).build()),
    };
    let page = request.send().await.map_err(|e| Error::aws("ListJobs", e))?;
    Ok((page.job_summary_list().to_vec(), page.next_token().map(str::to_owned)))
}

/// How many jobs of a queue are in `status`, counting at most [`MAX_COUNTED`]; true when
/// it stopped there (there may be more).
async fn count_jobs(batch: &aws_sdk_batch::Client, queue: &str, status: &JobStatus) -> Result<(usize, bool), Error> {
    let (mut count, mut token) = (0, None);
    loop {
        let (page, next) = jobs_page(batch, queue, Some(status), 0, token, 1000).await?;
        count += page.len();
        match next {
            Some(next) if count < MAX_COUNTED => token = Some(next),
            Some(_) => return Ok((count, true)),
            None => return Ok((count, false)),
        }
    }
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
        let (failed, _) = jobs_page(batch, &queue.arn, Some(&JobStatus::Failed), 0, None, 100).await?;
        for job in failed {
            failures.push((job.stopped_at().or(job.created_at()).unwrap_or_default(), line(&job, &queue.name)));
        }
        queues.push(json!({
            "key": key,
            "name": queue.name,
            "default": *key == stack.default_queue,
            "state": found.and_then(|q| q.state()).map(|s| s.as_str()),
            "status": found.and_then(|q| q.status()).map(|s| s.as_str()),
            "jobs": jobs,
            // Statuses whose count stopped at the cap: at least that many.
            "countsCapped": capped,
        }));
    }
    failures.sort_by_key(|job| std::cmp::Reverse(job.0));
    let recent: Vec<Value> = failures.into_iter().take(RECENT_FAILURES).map(|(_, job)| job).collect();
    Ok(json!({"stack": stack.name_prefix, "queues": queues, "recentFailures": recent, "openRuns": open_runs}))
}
