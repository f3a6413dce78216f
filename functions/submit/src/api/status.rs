//! The status resource: `GET /status`, what the stack is doing now — per queue its state and how many jobs wait or work in each status, the latest failures, the open runs.
//!
//! It reads Batch through the Batch port over the stack's queues only, in a bounded number
//! of calls however many jobs Batch keeps, so a busy stack answers within API Gateway's
//! 30 s: at most [`MAX_COUNTED`] jobs a status and queue are counted (`countsCapped` names
//! the statuses that reached it), one page of failures is read, and open runs are counted
//! up to [`MAX_OPEN_RUNS`]. Of the latest failures, those another job took over from — a
//! pipeline stage attempted again (resized or retried), a single job resized after running
//! out of memory — are listed apart as recovered, with what took over: they are not what
//! an operator has to look at.

use batchline::model::batch_event::JobStatus;
use batchline::model::job_request::{PIPELINE_TAG, RUN_TAG, STAGE_TAG};
use batchline::model::run::StageStatus;
use batchline::model::stack::StackConfig;
use batchline::services::ports::{BatchPort, JobListing};
use batchline::store::{RunStore, Store};
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

/// `GET /status`: 200 `{stack, queues, recentFailures, recovered, openRuns}`.
pub async fn get(call: &Call<'_>) -> Answer {
    let ports = &call.clients.ports;
    let open = count_open_runs(ports.store.as_ref()).await?;
    Ok(response(200, &status(&ports.batch, ports.store.as_ref(), call.stack, open).await?))
}

/// How many of the newest failures are looked at for whether another job took over.
const FAILURES_EXAMINED: usize = 50;

/// What took over from a failed job, if anything did: a later attempt of its pipeline
/// stage that has not failed (`attempt N of STAGE: STATUS`), or the job its resize
/// submitted (`resized to job ID`).
pub(super) async fn recovered_by(
    job: &batchline::model::batch_event::JobDetail,
    store: &dyn Store,
    runs: &mut std::collections::BTreeMap<String, Option<batchline::model::run::Run>>,
) -> Result<Option<String>, Error> {
    let tag = |name: &str| job.tags.as_ref().and_then(|t| t.get(name)).filter(|v| !v.is_empty()).cloned();
    // Every job carries a run tag; only a pipeline's stage jobs carry the pipeline's.
    if let (Some(run_id), Some(_), Some(stage)) = (tag(RUN_TAG), tag(PIPELINE_TAG), tag(STAGE_TAG)) {
        if !runs.contains_key(&run_id) {
            let run = store.load_run(&run_id).await?.map(|read| read.run);
            runs.insert(run_id.clone(), run);
        }
        let Some(Some(run)) = runs.get(&run_id) else { return Ok(None) };
        let Some(stage_run) = run.stage_run(&stage) else { return Ok(None) };
        let ours = stage_run.attempts.iter().position(|a| a.job_id.as_deref() == Some(job.job_id.as_str()));
        let later = ours.and_then(|at| stage_run.attempts.get(at + 1..)).and_then(|rest| rest.last());
        let took_over =
            |a: &&batchline::model::run::Attempt| !matches!(a.status, StageStatus::Failed | StageStatus::Cancelled);
        return Ok(later.filter(took_over).map(|a| {
            format!(
                "attempt {} of {stage}: {}",
                a.number,
                serde_json::to_value(a.status).unwrap_or_default().as_str().unwrap_or("?")
            )
        }));
    }
    Ok(super::jobs::resized_to(store, job).await?.map(|id| format!("resized to job {id}")))
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
pub async fn status(
    batch: &dyn BatchPort,
    store: &dyn Store,
    stack: &StackConfig,
    open_runs: usize,
) -> Result<Value, Error> {
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
    failures.truncate(FAILURES_EXAMINED);
    // Their tags say which run or resize chain they belong to: one DescribeJobs call.
    let ids: Vec<String> = failures.iter().filter_map(|(_, job)| job["jobId"].as_str().map(str::to_owned)).collect();
    let described = if ids.is_empty() { Vec::new() } else { batch.describe_jobs(&ids).await? };
    let (mut recent, mut recovered) = (Vec::new(), Vec::new());
    let mut runs = std::collections::BTreeMap::new();
    for (_, mut line) in failures {
        let detail = described.iter().map(|e| &e.detail).find(|d| Some(d.job_id.as_str()) == line["jobId"].as_str());
        let by = match detail {
            Some(detail) => recovered_by(detail, store, &mut runs).await?,
            None => None,
        };
        // Why its container ended, where Batch says (out of memory, say), beside the task's reason.
        let container = detail.and_then(|d| d.last_attempt_container().or(d.container.as_ref()));
        if let Some(reason) = container.and_then(|c| c.reason.clone()) {
            line["containerReason"] = json!(reason);
        }
        match by {
            Some(by) if recovered.len() < RECENT_FAILURES => {
                line["recoveredBy"] = json!(by);
                recovered.push(line);
            }
            Some(_) => {}
            None if recent.len() < RECENT_FAILURES => recent.push(line),
            None => {}
        }
    }
    Ok(json!({"stack": stack.name_prefix, "queues": queues, "recentFailures": recent, "recovered": recovered,
              "openRuns": open_runs}))
}
