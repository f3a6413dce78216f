//! Turning a trigger into a job request for a configured job definition (pure).

use std::collections::BTreeMap;

use batchline::model::fargate::Size;
use batchline::model::job_request::{digest, job_name, JobRequest, PIPELINE_TAG, RUN_TAG, STAGE_TAG, TRIGGER_TAG};
use batchline::model::stack::StackConfig;

/// Where a submission comes from: what names it, what makes it unique, what it passes on.
#[derive(Debug, Clone, PartialEq)]
pub struct Source {
    /// `s3`, `schedule` or `api`.
    pub trigger: &'static str,
    /// The readable part of the job name.
    pub readable: String,
    pub idempotency_key: String,
    pub parameters: BTreeMap<String, String>,
    pub environment: BTreeMap<String, String>,
}

/// What a trigger starts.
#[derive(Debug, Clone, PartialEq)]
pub enum Planned {
    Job(JobRequest),
    Run {
        pipeline: String,
        source: Source,
    },
    /// An object for a coalescing trigger's window: sent to the coalesce lane.
    Coalesce(batchline::model::coalesce::CoalescedObject),
}

/// The tags Batchline puts on every job it submits (run, pipeline, stage, trigger): what
/// is left of Batch's 50 for the caller's own.
pub const OWN_TAGS: usize = 4;

/// A job of the job definition `key`, on that definition's queue.
pub fn job(config: &StackConfig, key: &str, source: Source, size: Option<Size>) -> Result<JobRequest, String> {
    let definition = config.job_definitions.get(key).ok_or_else(|| format!("there is no job definition {key:?}"))?;
    let queue = config.queue_for(definition).ok_or_else(|| format!("job definition {key:?} names no known queue"))?;
    let (definition_arn, queue_arn) = (definition.arn.clone(), queue.arn.clone());
    // A single job carries the same four tags as a stage's job, so every Batchline job can
    // be told apart and counted alike: its own `job-<hash>` in place of a run id, and an
    // empty pipeline, which job-events reads as "not part of a run".
    let tags = BTreeMap::from([
        (RUN_TAG.to_owned(), format!("job-{}", digest(&source.idempotency_key, 12))),
        (PIPELINE_TAG.to_owned(), String::new()),
        (STAGE_TAG.to_owned(), key.to_owned()),
        (TRIGGER_TAG.to_owned(), source.trigger.to_owned()),
    ]);
    Ok(JobRequest {
        job_name: job_name(&source.readable, &source.idempotency_key),
        // S3, schedule and stage keys are made of their input; the API sets its own.
        origin: source.idempotency_key.clone(),
        idempotency_key: source.idempotency_key,
        queue_arn,
        job_definition_arn: definition_arn,
        parameters: source.parameters,
        environment: source.environment,
        command: None,
        size: size.filter(|s| *s != definition.size),
        array_size: None,
        depends_on: vec![],
        tags,
        timeout_seconds: None,
        retry: None,
    })
}
