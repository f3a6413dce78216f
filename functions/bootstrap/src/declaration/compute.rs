//! The `ComputeEnvironments` and `JobQueues` sections, and what a queue's capacity lets its jobs and stages ask for.

use std::collections::BTreeMap;

use batchline::model::fargate::Size;
use batchline::model::pipeline::Pipeline;
use batchline::model::stack::{
    CancelStuckJobs, ComputeEnvironment, ComputeType, JobDefinition, JobQueue, DEFAULT_KEY, DEFAULT_STUCK_AFTER_SECONDS,
};

use super::document::{ComputeEnvironmentDoc, JobQueueDoc};
use super::physical_name;
use super::values::valid_key;

/// What a queue's `StuckAfterSeconds` may be: a minute (a Fargate task can take that to
/// start) to a week.
const STUCK_AFTER_RANGE: std::ops::RangeInclusive<u64> = 60..=604_800;

/// Validates the `ComputeEnvironments` section; without one, a single Fargate environment.
pub(super) fn resolve_compute_environments(
    docs: Option<&BTreeMap<String, ComputeEnvironmentDoc>>,
    prefix: &str,
    problems: &mut Vec<String>,
) -> BTreeMap<String, ComputeEnvironment> {
    let default = BTreeMap::from([(DEFAULT_KEY.to_owned(), ComputeEnvironmentDoc::default())]);
    let docs = docs.unwrap_or(&default);
    if docs.is_empty() {
        problems.push("ComputeEnvironments: declare at least one".into());
    }
    let mut compute_environments = BTreeMap::new();
    for (key, ce) in docs {
        let path = format!("ComputeEnvironments.{key}");
        if !valid_key(key) {
            problems.push(format!("{path}: keys are 1-40 letters, digits, - or _"));
        }
        let kind = match ce.kind.as_deref().unwrap_or("FARGATE") {
            "FARGATE" => ComputeType::Fargate,
            "FARGATE_SPOT" => ComputeType::FargateSpot,
            other => {
                problems.push(format!("{path}.Type {other:?}: use FARGATE or FARGATE_SPOT"));
                ComputeType::Fargate
            }
        };
        let max_vcpus = ce.max_vcpus.unwrap_or(256);
        if !(1..=10_000).contains(&max_vcpus) {
            problems.push(format!("{path}.MaxVcpus {max_vcpus}: use 1 to 10000"));
        }
        compute_environments.insert(
            key.clone(),
            ComputeEnvironment {
                name: physical_name(prefix, key),
                kind,
                max_vcpus: max_vcpus as u32,
                ecs_cluster_arn: None,
            },
        );
    }
    compute_environments
}

/// Validates the `JobQueues` section against the compute environments; without one, a
/// single queue on the first of them.
pub(super) fn resolve_job_queues(
    docs: Option<&BTreeMap<String, JobQueueDoc>>,
    environments: &BTreeMap<String, ComputeEnvironment>,
    prefix: &str,
    problems: &mut Vec<String>,
) -> BTreeMap<String, JobQueue> {
    let default = || {
        let first = environments.keys().next().cloned().unwrap_or_else(|| DEFAULT_KEY.to_owned());
        BTreeMap::from([(
            DEFAULT_KEY.to_owned(),
            JobQueueDoc { priority: Some(1), compute_environments: Some(vec![first]), ..JobQueueDoc::default() },
        )])
    };
    let docs = docs.cloned().unwrap_or_else(default);
    if docs.is_empty() {
        problems.push("JobQueues: declare at least one".into());
    }
    let mut job_queues = BTreeMap::new();
    for (key, queue) in &docs {
        let path = format!("JobQueues.{key}");
        if !valid_key(key) {
            problems.push(format!("{path}: keys are 1-40 letters, digits, - or _"));
        }
        job_queues
            .insert(key.clone(), resolve_job_queue(&path, physical_name(prefix, key), queue, environments, problems));
    }
    job_queues
}

fn resolve_job_queue(
    path: &str,
    name: String,
    queue: &JobQueueDoc,
    environments: &BTreeMap<String, ComputeEnvironment>,
    problems: &mut Vec<String>,
) -> JobQueue {
    let order = queue.compute_environments.clone().unwrap_or_else(|| environments.keys().take(1).cloned().collect());
    if order.is_empty() || order.len() > 3 {
        problems.push(format!("{path}.ComputeEnvironments: name 1 to 3 compute environments"));
    }
    for ce in &order {
        if !environments.contains_key(ce) {
            problems.push(format!("{path}.ComputeEnvironments: {ce:?} is not a key of ComputeEnvironments"));
        }
    }
    let priority = queue.priority.unwrap_or(1);
    if priority > 1000 {
        problems.push(format!("{path}.Priority {priority}: use 0 to 1000"));
    }
    let stuck_after = queue.stuck_after_seconds.unwrap_or(u64::from(DEFAULT_STUCK_AFTER_SECONDS));
    if !STUCK_AFTER_RANGE.contains(&stuck_after) {
        problems.push(format!("{path}.StuckAfterSeconds {stuck_after}: use 60 to 604800 (a week)"));
    }
    let cancel_stuck_jobs = match queue.cancel_stuck_jobs.as_deref() {
        None | Some("Never") => CancelStuckJobs::Never,
        Some("Diagnosed") => CancelStuckJobs::Diagnosed,
        Some("Always") => CancelStuckJobs::Always,
        Some(other) => {
            problems.push(format!("{path}.CancelStuckJobs {other:?}: use Never (the default), Diagnosed or Always"));
            CancelStuckJobs::Never
        }
    };
    JobQueue {
        name,
        priority: priority as u32,
        compute_environments: order,
        stuck_after_seconds: stuck_after.min(u64::from(u32::MAX)) as u32,
        cancel_stuck_jobs,
    }
}

/// The key of the queue jobs go to unless told otherwise: `default`, or else the highest
/// priority queue (ties: the first key).
pub(super) fn default_queue(queues: &BTreeMap<String, JobQueue>) -> String {
    if queues.contains_key(DEFAULT_KEY) {
        return DEFAULT_KEY.to_owned();
    }
    queues
        .iter()
        .max_by(|a, b| a.1.priority.cmp(&b.1.priority).then(b.0.cmp(a.0)))
        .map(|(k, _)| k.clone())
        .unwrap_or_default()
}

/// What a queue's compute environments can run: the most vCPU one job may have (their
/// largest `MaxVcpus`), and whether any of them runs ARM64 (Fargate Spot is x86_64 only).
struct Capacity {
    max_vcpus: u32,
    arm64: bool,
}

fn capacity(queue: &JobQueue, environments: &BTreeMap<String, ComputeEnvironment>) -> Capacity {
    let mut members = queue.compute_environments.iter().filter_map(|key| environments.get(key));
    Capacity {
        max_vcpus: queue.max_vcpus(|key| environments.get(key)),
        arm64: members.any(|ce| ce.kind == ComputeType::Fargate),
    }
}

/// Refuses, at deploy time, job definitions and stages their queue can never run — a size
/// above every one of its compute environments' `MaxVcpus`, or ARM64 on a queue of Fargate
/// Spot only — since Batch would leave such a job RUNNABLE for ever; and tells every stage
/// the most vCPU its queue can give, so out-of-memory resizing stops there.
pub(super) fn check_capacity(
    environments: &BTreeMap<String, ComputeEnvironment>,
    queues: &BTreeMap<String, JobQueue>,
    definitions: &BTreeMap<String, JobDefinition>,
    pipelines: &mut BTreeMap<String, Pipeline>,
    problems: &mut Vec<String>,
) {
    let mut check = |path: &str, size: Size, architecture: &str, queue_key: &str| -> Option<u32> {
        let queue = queues.get(queue_key)?;
        let can = capacity(queue, environments);
        if !size.fits_vcpus(can.max_vcpus) {
            problems.push(format!(
                "{path}: {size} is more than queue {queue_key:?} can ever run (its compute environments' largest MaxVcpus is {})",
                can.max_vcpus
            ));
        }
        if architecture == "ARM64" && !can.arm64 {
            problems.push(format!(
                "{path}: ARM64 jobs cannot run on queue {queue_key:?}: its compute environments are all FARGATE_SPOT, which runs x86_64 only"
            ));
        }
        Some(can.max_vcpus)
    };
    for (key, definition) in definitions {
        check(&format!("JobDefinitions.{key}"), definition.size, &definition.architecture, &definition.queue);
    }
    for (name, pipeline) in pipelines.iter_mut() {
        let stages = pipeline.stages.iter_mut().map(|(key, stage)| (format!("Pipelines.{name}.Stages.{key}"), stage));
        for (path, stage) in
            stages.chain(pipeline.on_failure.iter_mut().map(|s| (format!("Pipelines.{name}.OnFailure"), s)))
        {
            let architecture = definitions.get(&stage.job_definition).map_or("X86_64", |d| d.architecture.as_str());
            stage.max_vcpus = check(&path, stage.size, architecture, &stage.queue);
        }
    }
}
