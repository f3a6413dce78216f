//! The jobs of a run: its id, the SubmitJob request of a stage attempt, and the check that every stage's job can be submitted before the run starts.

use std::collections::BTreeMap;

use crate::model::job_request::{
    digest, job_name, JobRequest, RequestError, PIPELINE_TAG, RUN_TAG, STAGE_TAG, TRIGGER_TAG,
};
use crate::model::pipeline::{attempt_key, Pipeline, ON_FAILURE};
use crate::model::run::map::array_key;
use crate::model::run::{Attempt, Run, RunInput};
use crate::model::stack::StackConfig;
use crate::Error;

/// A run id: the pipeline's name and a hash of what started it, so a repeated trigger
/// names the same run.
pub fn run_id(pipeline: &str, idempotency_key: &str) -> String {
    format!("{pipeline}-{}", digest(idempotency_key, 16))
}

/// The job for a planned stage attempt.
pub fn stage_job(config: &StackConfig, run: &Run, stage: &str, attempt: &Attempt) -> Result<JobRequest, Error> {
    let unsubmittable =
        |reason: String| Error::Unsubmittable { run_id: run.run_id.clone(), stage: stage.to_owned(), reason };
    let declared = run.stage(stage).ok_or_else(|| unsubmittable("the run has no such stage".into()))?;
    let definition = config.job_definitions.get(&declared.job_definition).ok_or_else(|| {
        unsubmittable(format!("job definition {:?} is no longer configured", declared.job_definition))
    })?;
    let definition_arn = definition.arn.clone();
    let queue_arn = config
        .job_queues
        .get(&declared.queue)
        .map(|q| q.arn.clone())
        .ok_or_else(|| unsubmittable(format!("queue {:?} is no longer configured", declared.queue)))?;
    let mut parameters = run.input.parameters.clone();
    parameters.extend(declared.parameters.clone());
    parameters.insert("runId".into(), run.run_id.clone());
    parameters.insert("stage".into(), stage.to_owned());
    let mut environment = run.input.environment.clone();
    environment.insert("BATCHLINE_RUN_ID".into(), run.run_id.clone());
    environment.insert("BATCHLINE_STAGE".into(), stage.to_owned());
    environment.insert("BATCHLINE_ATTEMPT".into(), attempt.number.to_string());
    if let Some(folder) = config.roles.names.run_data_uri(&run.run_id) {
        environment.insert("BATCHLINE_RUN_DATA".into(), folder);
    }
    let key = attempt_key(&run.run_id, stage, attempt.number);
    Ok(JobRequest {
        job_name: attempt.job_name.clone().unwrap_or_else(|| job_name(&run.run_id, &key)),
        origin: key.clone(),
        idempotency_key: key,
        queue_arn,
        job_definition_arn: definition_arn,
        parameters,
        environment,
        command: None,
        size: (attempt.size != definition.size).then_some(attempt.size),
        array_size: None,
        depends_on: vec![],
        timeout_seconds: declared.timeout_seconds,
        retry: declared.retry.clone(),
        tags: BTreeMap::from([
            (RUN_TAG.to_owned(), run.run_id.clone()),
            (PIPELINE_TAG.to_owned(), run.pipeline.name.clone()),
            (STAGE_TAG.to_owned(), stage.to_owned()),
            (TRIGGER_TAG.to_owned(), run.trigger.clone()),
        ]),
    })
}

/// The job for array `array` of a planned map attempt: the stage's job, as an array of
/// the array's children (a plain job for one), told where its item list is
/// (`BATCHLINE_ITEMS`) and how many children the whole map has (`BATCHLINE_MAP_SIZE`),
/// submitted under the array's own key and name.
pub fn array_job(
    config: &StackConfig,
    run: &Run,
    stage: &str,
    attempt: &Attempt,
    array: usize,
) -> Result<JobRequest, Error> {
    let unsubmittable =
        |reason: String| Error::Unsubmittable { run_id: run.run_id.clone(), stage: stage.to_owned(), reason };
    let map = attempt.map.as_ref().ok_or_else(|| unsubmittable("the attempt is not a map's".into()))?;
    let slot = map.arrays.get(array).ok_or_else(|| unsubmittable(format!("the map has no array {array}")))?;
    if map.lists.is_empty() {
        return Err(unsubmittable("the map's item lists were never written".into()));
    }
    let mut request = stage_job(config, run, stage, attempt)?;
    let key = array_key(&run.run_id, stage, attempt.number, array);
    request.job_name = slot.job_name.clone();
    request.origin = key.clone();
    request.idempotency_key = key;
    request.array_size = (slot.size > 1).then_some(slot.size as u32);
    // Children resubmitted one size up, or redriven at their last: that size, whatever the attempt's.
    request.size = Some(slot.child_size(attempt.size));
    request.environment.insert("BATCHLINE_ITEMS".into(), map.item_list(array));
    request.environment.insert("BATCHLINE_MAP_SIZE".into(), map.map_children().to_string());
    Ok(request)
}

/// Whether a submission failed for good: the stage's job cannot be built from the
/// configuration any more, or Batch refuses it (a deregistered job definition, a queue
/// gone). Anything else may work when tried again.
pub(super) fn never_submittable(err: &Error) -> bool {
    match err {
        Error::Unsubmittable { .. } => true,
        Error::Aws { operation: "SubmitJob", code, .. } => code == "ClientException",
        _ => false,
    }
}

/// Checks a run before it starts with the validator `POST /jobs` uses: every stage job the
/// run would submit (its failure stage included), with the run's input, must be a valid
/// SubmitJob request (no reserved `AWS_BATCH*` environment names, within SubmitJob's 30
/// KiB). Otherwise such a run could never submit that stage. Every problem, with its stage.
pub fn check_run(
    config: &StackConfig,
    pipeline: &Pipeline,
    run_id: &str,
    input: &RunInput,
) -> Result<(), Vec<(String, RequestError)>> {
    let run = Run::start(run_id.to_owned(), pipeline, "api", input.clone(), 0);
    let stages = pipeline.stages.iter().map(|(name, stage)| (name.as_str(), stage));
    let mut problems = Vec::new();
    for (name, stage) in stages.chain(pipeline.on_failure.iter().map(|stage| (ON_FAILURE, stage))) {
        let attempt = Attempt::planned(run_id, name, 1, stage.size);
        // A stage whose job cannot be built is not configured: refused at deploy time
        // already, not the caller's to fix.
        if let Ok(Err(found)) = stage_job(config, &run, name, &attempt).map(|request| request.validate()) {
            problems.extend(found.into_iter().map(|problem| (name.to_owned(), problem)));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}
