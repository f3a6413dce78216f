//! Out-of-memory resizing of single jobs: a job whose definition allows it (`MaxResizes`) is submitted again one size up, once per resize.
//!
//! Pipeline stages resize through their run (see [`crate::model::run`]); a single job has no
//! record of its own, so everything the resubmission needs comes from the failed job as
//! Batch describes it — never from the event that reported it, which anyone allowed to
//! send to the queue could have written: its status and reason, queue, job definition,
//! parameters, command, environment (without the `AWS_BATCH_*` variables Batch adds), tags
//! and size. Its queue and job definition must be the stack's. The new job carries
//! `batchline:original` (the first job's id) and `batchline:resize` (how many resizes it
//! is), so a resize of a resize counts towards the same limit, and its submission key is
//! `resize:<original id>:<n>` — claimed like every submission, so duplicated and
//! redelivered events make one job. `GET /jobs/{id}` names the next job through that key.

use std::collections::BTreeMap;

use tracing::info;

use crate::model::batch_event::{JobStateChangeEvent, JobStatus};
use crate::model::job_request::{job_name, JobRequest, DEFINITION_TAGS, PIPELINE_TAG, RESOURCE_ARN_TAG, RUN_TAG};
use crate::model::run::is_out_of_memory;
use crate::model::stack::StackConfig;
use crate::services::submitter::{Submitted, Submitter};
use crate::Error;

/// The id of the first job of a chain of resizes.
pub const ORIGINAL_TAG: &str = "batchline:original";
/// How many times the job's original was resized to make it.
pub const RESIZE_TAG: &str = "batchline:resize";

/// The submission key of the `n`th resize of the job `original`.
pub fn resize_key(original: &str, n: u32) -> String {
    format!("resize:{original}:{n}")
}

/// Where a job stands in its chain of resizes, from its id and its two tags: the first
/// job's id, and how many resizes made this one.
pub fn chain_position(job_id: &str, original: Option<&str>, resizes: Option<&str>) -> (String, u32) {
    (original.unwrap_or(job_id).to_owned(), resizes.and_then(|n| n.parse().ok()).unwrap_or(0))
}

/// What a single job's failure calls for.
#[derive(Debug, Clone, PartialEq)]
pub enum Resize {
    /// Not a single job killed for lack of memory.
    NotApplicable,
    /// Killed for lack of memory, and not to be resized: says why.
    Refused(String),
    /// The job to submit.
    Submit(Box<JobRequest>),
}

/// What to do with a single job's state change (pure).
pub fn plan_resize(config: &StackConfig, event: &JobStateChangeEvent) -> Resize {
    let detail = &event.detail;
    // Batchline's own single jobs: tagged with their run, in no pipeline.
    let single = detail.tag(RUN_TAG).is_some() && detail.tag(PIPELINE_TAG).is_none_or(str::is_empty);
    // An array's parent or child is not a single job: a child resubmitted alone would lose
    // its index (per-child resizing belongs to map stages).
    let in_array = detail.array_properties.as_ref().is_some_and(|a| a.index.is_some() || a.size.is_some());
    if !single || detail.status != JobStatus::Failed || !is_out_of_memory(event) || in_array {
        return Resize::NotApplicable;
    }
    let name = detail.job_definition_name().unwrap_or_default();
    let Some(definition) = config.job_definitions.values().find(|d| d.spec.name == name) else {
        return Resize::Refused(format!("its job definition {name:?} is not this stack's"));
    };
    let (original, done) = chain_position(&detail.job_id, detail.tag(ORIGINAL_TAG), detail.tag(RESIZE_TAG));
    let limit = definition.spec.max_resizes;
    if done >= limit {
        return Resize::Refused(format!("its job definition allows {limit} resize(s) and it has had {done}"));
    }
    let Some(size) = detail.size() else { return Resize::Refused("its event names no size".into()) };
    let Some(next) = size.next_for_memory() else { return Resize::Refused(format!("{size} is the largest size")) };
    let queue_arn = detail.job_queue.clone().unwrap_or_default();
    let Some(queue) = config.job_queues.values().find(|q| q.arn == queue_arn) else {
        return Resize::Refused(format!("its queue {queue_arn:?} is not this stack's"));
    };
    let capacity = config.queue_capacity(queue);
    if capacity.is_some_and(|max| !next.fits_vcpus(max)) {
        return Resize::Refused(format!("its next size ({next}) is more than its queue can run"));
    }
    let key = resize_key(&original, done + 1);
    let container = detail.container.as_ref();
    let environment: BTreeMap<String, String> = container
        .and_then(|c| c.environment.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|v| Some((v.name.clone()?, v.value.clone().unwrap_or_default())))
        .filter(|(name, _)| !name.starts_with("AWS_BATCH"))
        .collect();
    // The job's own tags only: not AWS's, not the one Batch adds to events, not those its
    // job definition propagates (the new job gets those again from it).
    let mut tags = detail.tags.clone().unwrap_or_default();
    tags.retain(|k, _| !k.starts_with("aws:") && k != RESOURCE_ARN_TAG && !DEFINITION_TAGS.contains(&k.as_str()));
    tags.insert(ORIGINAL_TAG.into(), original.clone());
    tags.insert(RESIZE_TAG.into(), (done + 1).to_string());
    let readable = format!("{}-r{}", detail.job_name.as_deref().unwrap_or("job"), done + 1);
    let request = JobRequest {
        job_name: job_name(&readable, &key),
        origin: key.clone(),
        idempotency_key: key,
        queue_arn,
        job_definition_arn: definition.arn.clone(),
        parameters: detail.parameters.clone().unwrap_or_default(),
        environment,
        command: container.and_then(|c| c.command.clone()).filter(|c| !c.is_empty()),
        size: Some(next),
        array_size: None,
        depends_on: vec![],
        tags,
        timeout_seconds: None,
        retry: None,
    };
    // Refused here, with why, rather than by SubmitJob on every redelivery until the
    // message dead-letters.
    match request.validate() {
        Ok(()) => Resize::Submit(Box::new(request)),
        Err(problems) => {
            let problems: Vec<String> = problems.iter().map(ToString::to_string).collect();
            Resize::Refused(format!("its resized job would be refused: {}", problems.join("; ")))
        }
    }
}

/// Resubmits a single job killed for lack of memory one size up, when its definition allows
/// (exactly once per resize). `None` when nothing was to be done. The event only says which
/// job to look at: what is resubmitted is the job as Batch describes it.
pub async fn resize_single_job(
    submitter: &Submitter<'_>,
    config: &StackConfig,
    event: &JobStateChangeEvent,
) -> Result<Option<Submitted>, Error> {
    if plan_resize(config, event) == Resize::NotApplicable {
        return Ok(None);
    }
    let described = submitter.batch.describe_jobs(std::slice::from_ref(&event.detail.job_id)).await?;
    let Some(job) = described.into_iter().find(|j| j.detail.job_id == event.detail.job_id) else {
        info!(job_id = %event.detail.job_id, "out of memory, says an event, of a job Batch does not know: not resized");
        return Ok(None);
    };
    if !job.detail.status.is_terminal() {
        // Batch's description has not caught up with its own event: the message comes again.
        return Err(Error::Aws {
            operation: "DescribeJobs",
            code: "NotYetEnded".into(),
            message: format!("job {} is {:?} in Batch, ended in its event", job.detail.job_id, job.detail.status),
        });
    }
    let planned = plan_resize(config, &job);
    if planned == Resize::NotApplicable {
        info!(job_id = %event.detail.job_id, status = ?job.detail.status, "out of memory, says an event; not as Batch describes the job: not resized");
    }
    match planned {
        Resize::NotApplicable => Ok(None),
        Resize::Refused(why) => {
            info!(job_id = %event.detail.job_id, why, "the job ran out of memory and is not resized");
            Ok(None)
        }
        Resize::Submit(request) => {
            let submitted = submitter.submit(&request).await?;
            // The saved query "out-of-memory resizes" reads these lines.
            let (from_size, size) = (event.detail.size().map(|s| s.to_string()), request.size.map(|s| s.to_string()));
            let resized = &submitted.job_id;
            info!(job_id = %event.detail.job_id, %resized, from_size, size, "out of memory: resubmitted one size up");
            Ok(Some(submitted))
        }
    }
}
