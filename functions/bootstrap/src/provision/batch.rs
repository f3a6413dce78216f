//! Batch: Fargate compute environments, job queues and job definitions, converged and torn down in the order AWS requires.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use aws_sdk_batch::types::{
    AssignPublicIp, CeState, CeType, ComputeEnvironmentOrder, ComputeResource, ComputeResourceUpdate,
    ContainerProperties, CrType, FargatePlatformConfiguration, JobDefinitionType, JobStateTimeLimitAction,
    JobStateTimeLimitActionsAction, JobStateTimeLimitActionsState, JobStatus, JobTimeout, JqState, KeyValuePair,
    LogConfiguration, LogDriver, NetworkConfiguration, PlatformCapability, ResourceRequirement, ResourceType,
    RuntimePlatform, Secret,
};
use batchline::adapters::batch::retry_strategy;
use batchline::model::fargate::format_vcpu;
use batchline::model::retry::RetryPolicy;
use batchline::model::stack::{
    CancelStuckJobs, ComputeEnvironment, ComputeType, JobDefinition, JobQueue, Network, Provisioned, Roles,
};
use batchline::Error;
use tokio::time::Instant;
use tracing::info;

use super::{SPEC_TAG, STACK_TAG};
use crate::declaration::Declared;

/// Polls `check` until it says done, or fails at the deadline.
async fn wait_until<F, Fut>(what: &str, deadline: Instant, mut check: F) -> Result<(), Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool, Error>>,
{
    let mut pause = Duration::from_millis(500);
    loop {
        if check().await? {
            return Ok(());
        }
        if Instant::now() + pause >= deadline {
            return Err(Error::Timeout(format!("{what} did not happen before the function's deadline")));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(10));
    }
}

async fn describe_compute_environment(
    batch: &aws_sdk_batch::Client,
    name: &str,
) -> Result<Option<aws_sdk_batch::types::ComputeEnvironmentDetail>, Error> {
    let found = batch
        .describe_compute_environments()
        .compute_environments(name)
        .send()
        .await
        .map_err(|e| Error::aws("DescribeComputeEnvironments", e))?;
    Ok(found
        .compute_environments()
        .iter()
        .find(|c| c.compute_environment_name() == Some(name) && c.status().map(|s| s.as_str()) != Some("DELETED"))
        .cloned())
}

async fn create_environment(
    batch: &aws_sdk_batch::Client,
    wanted: &ComputeEnvironment,
    network: &Network,
    stack: &str,
) -> Result<String, Error> {
    let kind = match wanted.kind {
        ComputeType::Fargate => CrType::Fargate,
        ComputeType::FargateSpot => CrType::FargateSpot,
    };
    let created = batch
        .create_compute_environment()
        .compute_environment_name(&wanted.name)
        .r#type(CeType::Managed)
        .state(CeState::Enabled)
        .compute_resources(
            ComputeResource::builder()
                .r#type(kind)
                .maxv_cpus(wanted.max_vcpus as i32)
                .set_subnets(Some(network.subnets.clone()))
                .set_security_group_ids(Some(network.security_groups.clone()))
                .build(),
        )
        .tags(STACK_TAG, stack)
        .send()
        .await
        .map_err(|e| Error::aws("CreateComputeEnvironment", e))?;
    info!(compute_environment = %wanted.name, "compute environment created");
    Ok(created.compute_environment_arn().unwrap_or_default().to_owned())
}

/// Creates or updates the compute environment and waits until Batch calls it VALID; its
/// ARN and its ECS cluster's.
pub(super) async fn ensure_compute_environment(
    batch: &aws_sdk_batch::Client,
    wanted: &ComputeEnvironment,
    network: &Network,
    stack: &str,
    deadline: Instant,
) -> Result<(String, Option<String>), Error> {
    let arn = match describe_compute_environment(batch, &wanted.name).await? {
        None => create_environment(batch, wanted, network, stack).await?,
        Some(existing) => {
            let resources = existing.compute_resources();
            let same = existing.state().map(|s| s.as_str()) == Some("ENABLED")
                && resources.and_then(|r| r.maxv_cpus()) == Some(wanted.max_vcpus as i32)
                && resources.map(|r| r.subnets().to_vec()) == Some(network.subnets.clone())
                && resources.map(|r| r.security_group_ids().to_vec()) == Some(network.security_groups.clone());
            if !same {
                batch
                    .update_compute_environment()
                    .compute_environment(&wanted.name)
                    .state(CeState::Enabled)
                    .compute_resources(
                        ComputeResourceUpdate::builder()
                            .maxv_cpus(wanted.max_vcpus as i32)
                            .set_subnets(Some(network.subnets.clone()))
                            .set_security_group_ids(Some(network.security_groups.clone()))
                            .build(),
                    )
                    .send()
                    .await
                    .map_err(|e| Error::aws("UpdateComputeEnvironment", e))?;
                info!(compute_environment = %wanted.name, "compute environment updated");
            }
            existing.compute_environment_arn().unwrap_or_default().to_owned()
        }
    };
    wait_until(&format!("compute environment {} becoming VALID", wanted.name), deadline, || async {
        let found = describe_compute_environment(batch, &wanted.name).await?;
        match found.as_ref().and_then(|c| c.status()).map(|s| s.as_str()) {
            Some("VALID") => Ok(true),
            Some("INVALID") => Err(Error::Aws {
                operation: "CreateComputeEnvironment",
                code: "INVALID".into(),
                message: found.and_then(|c| c.status_reason().map(str::to_owned)).unwrap_or_default(),
            }),
            _ => Ok(false),
        }
    })
    .await?;
    // Its ECS cluster names the compute environment in its tasks' ARNs (cost by capacity).
    let cluster =
        describe_compute_environment(batch, &wanted.name).await?.and_then(|c| c.ecs_cluster_arn().map(str::to_owned));
    Ok((arn, cluster))
}

pub(super) async fn delete_compute_environment(
    batch: &aws_sdk_batch::Client,
    name: &str,
    deadline: Instant,
) -> Result<(), Error> {
    let Some(existing) = describe_compute_environment(batch, name).await? else {
        return Ok(());
    };
    if existing.state().map(|s| s.as_str()) != Some("DISABLED") {
        batch
            .update_compute_environment()
            .compute_environment(name)
            .state(CeState::Disabled)
            .send()
            .await
            .map_err(|e| Error::aws("UpdateComputeEnvironment", e))?;
    }
    wait_until(&format!("compute environment {name} becoming DISABLED"), deadline, || async {
        let found = describe_compute_environment(batch, name).await?;
        Ok(found.is_none_or(|c| {
            c.state().map(|s| s.as_str()) == Some("DISABLED") && c.status().map(|s| s.as_str()) != Some("UPDATING")
        }))
    })
    .await?;
    batch
        .delete_compute_environment()
        .compute_environment(name)
        .send()
        .await
        .map_err(|e| Error::aws("DeleteComputeEnvironment", e))?;
    wait_until(&format!("compute environment {name} being deleted"), deadline, || async {
        Ok(describe_compute_environment(batch, name).await?.is_none())
    })
    .await?;
    info!(compute_environment = name, "compute environment deleted");
    Ok(())
}

async fn describe_job_queue(
    batch: &aws_sdk_batch::Client,
    name: &str,
) -> Result<Option<aws_sdk_batch::types::JobQueueDetail>, Error> {
    let found =
        batch.describe_job_queues().job_queues(name).send().await.map_err(|e| Error::aws("DescribeJobQueues", e))?;
    Ok(found
        .job_queues()
        .iter()
        .find(|q| q.job_queue_name() == Some(name) && q.status().map(|s| s.as_str()) != Some("DELETED"))
        .cloned())
}

/// Batch's own limit on a blocked job at the head of the queue, for a queue that cancels
/// stuck jobs: the misconfigurations Batch names (and, for `Always`, a lack of capacity)
/// cancel such a job after the queue's `StuckAfterSeconds`. Batch takes 600 to 86,400 s;
/// outside that the sweep's watch acts alone (see the book, docs/src/operations/stuck-jobs.md).
pub(crate) fn time_limit_actions(queue: &JobQueue) -> Vec<JobStateTimeLimitAction> {
    if !(600..=86_400).contains(&queue.stuck_after_seconds) {
        return vec![];
    }
    let mut reasons = match queue.cancel_stuck_jobs {
        CancelStuckJobs::Never => return vec![],
        CancelStuckJobs::Diagnosed | CancelStuckJobs::Always => vec![
            "MISCONFIGURATION:COMPUTE_ENVIRONMENT_MAX_RESOURCE",
            "MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT",
            "MISCONFIGURATION:SERVICE_ROLE_PERMISSIONS",
        ],
    };
    if queue.cancel_stuck_jobs == CancelStuckJobs::Always {
        reasons.push("CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY");
    }
    reasons
        .into_iter()
        .map(|reason| {
            JobStateTimeLimitAction::builder()
                .reason(reason)
                .state(JobStateTimeLimitActionsState::Runnable)
                .max_time_seconds(queue.stuck_after_seconds as i32)
                .action(JobStateTimeLimitActionsAction::Cancel)
                .build()
        })
        .collect()
}

pub(super) async fn ensure_job_queue(
    batch: &aws_sdk_batch::Client,
    wanted: &JobQueue,
    compute_environments: &BTreeMap<String, Provisioned<ComputeEnvironment>>,
    stack: &str,
    deadline: Instant,
) -> Result<String, Error> {
    let order: Vec<ComputeEnvironmentOrder> = wanted
        .compute_environments
        .iter()
        .enumerate()
        .map(|(index, ce)| {
            // Declaration checked every key; a missing one would be refused by Batch.
            let arn = compute_environments.get(ce).map(|c| c.arn.clone()).unwrap_or_default();
            ComputeEnvironmentOrder::builder().order(index as i32 + 1).compute_environment(arn).build()
        })
        .collect();
    let limits = time_limit_actions(wanted);
    let arn = match describe_job_queue(batch, &wanted.name).await? {
        None => {
            let created = batch
                .create_job_queue()
                .job_queue_name(&wanted.name)
                .state(JqState::Enabled)
                .priority(wanted.priority as i32)
                .set_compute_environment_order(Some(order))
                .set_job_state_time_limit_actions(Some(limits))
                .tags(STACK_TAG, stack)
                .send()
                .await
                .map_err(|e| Error::aws("CreateJobQueue", e))?;
            info!(job_queue = %wanted.name, "job queue created");
            created.job_queue_arn().unwrap_or_default().to_owned()
        }
        Some(existing) => {
            let existing_order: Vec<(Option<i32>, Option<&str>)> =
                existing.compute_environment_order().iter().map(|o| (o.order(), o.compute_environment())).collect();
            let wanted_order: Vec<(Option<i32>, Option<&str>)> =
                order.iter().map(|o| (o.order(), o.compute_environment())).collect();
            let same = existing.state().map(|s| s.as_str()) == Some("ENABLED")
                && existing.priority() == Some(wanted.priority as i32)
                && existing_order == wanted_order
                && existing.job_state_time_limit_actions() == limits.as_slice();
            if !same {
                batch
                    .update_job_queue()
                    .job_queue(&wanted.name)
                    .state(JqState::Enabled)
                    .priority(wanted.priority as i32)
                    .set_compute_environment_order(Some(order))
                    .set_job_state_time_limit_actions(Some(limits))
                    .send()
                    .await
                    .map_err(|e| Error::aws("UpdateJobQueue", e))?;
                info!(job_queue = %wanted.name, "job queue updated");
            }
            existing.job_queue_arn().unwrap_or_default().to_owned()
        }
    };
    wait_until(&format!("job queue {} becoming VALID", wanted.name), deadline, || async {
        let found = describe_job_queue(batch, &wanted.name).await?;
        Ok(found.and_then(|q| q.status().map(|s| s.as_str().to_owned())).as_deref() == Some("VALID"))
    })
    .await?;
    Ok(arn)
}

/// Stops the queue's unfinished jobs, disables the queue, then deletes it.
pub(super) async fn delete_job_queue(
    batch: &aws_sdk_batch::Client,
    name: &str,
    deadline: Instant,
) -> Result<(), Error> {
    let Some(existing) = describe_job_queue(batch, name).await? else {
        return Ok(());
    };
    for status in
        [JobStatus::Submitted, JobStatus::Pending, JobStatus::Runnable, JobStatus::Starting, JobStatus::Running]
    {
        let request = batch.list_jobs().job_queue(name).job_status(status);
        let jobs =
            request.into_paginator().items().send().try_collect().await.map_err(|e| Error::aws("ListJobs", e))?;
        for job in jobs.iter().filter_map(|j| j.job_id()) {
            batch
                .terminate_job()
                .job_id(job)
                .reason("Batchline environment deleted")
                .send()
                .await
                .map_err(|e| Error::aws("TerminateJob", e))?;
        }
    }
    if existing.state().map(|s| s.as_str()) != Some("DISABLED") {
        batch
            .update_job_queue()
            .job_queue(name)
            .state(JqState::Disabled)
            .send()
            .await
            .map_err(|e| Error::aws("UpdateJobQueue", e))?;
    }
    wait_until(&format!("job queue {name} becoming DISABLED"), deadline, || async {
        let found = describe_job_queue(batch, name).await?;
        Ok(found.is_none_or(|q| {
            q.state().map(|s| s.as_str()) == Some("DISABLED") && q.status().map(|s| s.as_str()) != Some("UPDATING")
        }))
    })
    .await?;
    batch.delete_job_queue().job_queue(name).send().await.map_err(|e| Error::aws("DeleteJobQueue", e))?;
    wait_until(&format!("job queue {name} being deleted"), deadline, || async {
        Ok(describe_job_queue(batch, name).await?.is_none())
    })
    .await?;
    info!(job_queue = name, "job queue deleted");
    Ok(())
}

/// A hash of everything a registration of the definition carries, so an unchanged
/// definition is recognised by its latest revision's tag (FNV-1a, 64 bits).
pub fn spec_hash(
    definition: &JobDefinition,
    execution_role_arn: &str,
    job_role_arn: &str,
    assign_public_ip: bool,
    region: &str,
) -> String {
    // `"arn": null` as earlier releases hashed it (the declaration then carried an unset
    // ARN), so an unchanged definition keeps its revision across the upgrade.
    let mut unregistered = serde_json::to_value(definition).unwrap_or_default();
    if let Some(fields) = unregistered.as_object_mut() {
        fields.insert("arn".into(), serde_json::Value::Null);
        // Batchline's own rule, not part of the registration: changing it registers nothing.
        fields.remove("allowOverrides");
    }
    let hashed = serde_json::json!([unregistered, execution_role_arn, job_role_arn, assign_public_ip, region]);
    // Keys sorted: serde_json keeps insertion order when any crate in the build turns on
    // its `preserve_order` feature, and the hash must not depend on what else is built.
    let text = sorted_keys(hashed).to_string();
    let mut hash: u64 = 0xcbf29ce484222325;
    for byte in text.bytes() {
        hash = (hash ^ byte as u64).wrapping_mul(0x100000001b3);
    }
    format!("{hash:016x}")
}

/// The value with every object's keys in sorted order.
fn sorted_keys(value: serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(fields) => {
            let sorted: BTreeMap<String, serde_json::Value> =
                fields.into_iter().map(|(k, v)| (k, sorted_keys(v))).collect();
            serde_json::Value::Object(sorted.into_iter().collect())
        }
        serde_json::Value::Array(items) => serde_json::Value::Array(items.into_iter().map(sorted_keys).collect()),
        other => other,
    }
}

async fn active_revisions(
    batch: &aws_sdk_batch::Client,
    name: &str,
) -> Result<Vec<aws_sdk_batch::types::JobDefinition>, Error> {
    let mut revisions = Vec::new();
    let mut token = None;
    loop {
        let page = batch
            .describe_job_definitions()
            .job_definition_name(name)
            .status("ACTIVE")
            .set_next_token(token)
            .send()
            .await
            .map_err(|e| Error::aws("DescribeJobDefinitions", e))?;
        revisions.extend(
            page.job_definitions()
                .iter()
                .filter(|d| d.job_definition_name() == Some(name) && d.status() == Some("ACTIVE"))
                .cloned(),
        );
        token = page.next_token().map(str::to_owned);
        if token.is_none() {
            return Ok(revisions);
        }
    }
}

/// Registers a revision of `definition` unless its latest already carries this spec hash.
/// `region` is where its logs go (and is hashed, so a move to another region registers anew).
pub(super) async fn ensure_job_definition(
    batch: &aws_sdk_batch::Client,
    region: &str,
    config: &Declared,
    roles: &Roles,
    definition: &JobDefinition,
) -> Result<String, Error> {
    let (execution_role, job_role) = (&roles.execution_role_arn, &roles.job_role_arn);
    let hash = spec_hash(definition, execution_role, job_role, config.network.assign_public_ip, region);
    let revisions = active_revisions(batch, &definition.name).await?;
    if let Some(latest) = revisions.iter().max_by_key(|d| d.revision()) {
        if latest.tags().and_then(|t| t.get(SPEC_TAG)) == Some(&hash) {
            return Ok(latest.job_definition_arn().unwrap_or_default().to_owned());
        }
    }

    let requirement = |kind, value: String| ResourceRequirement::builder().r#type(kind).value(value).build();
    let public_ip = if config.network.assign_public_ip { AssignPublicIp::Enabled } else { AssignPublicIp::Disabled };
    let log_configuration = LogConfiguration::builder()
        .log_driver(LogDriver::Awslogs)
        .options("awslogs-group", &definition.log_group)
        .options("awslogs-region", region)
        .options("awslogs-stream-prefix", &config.name_prefix)
        .build();
    let container = ContainerProperties::builder()
        .image(&definition.image)
        .set_command((!definition.command.is_empty()).then(|| definition.command.clone()))
        .execution_role_arn(execution_role)
        .job_role_arn(job_role)
        .resource_requirements(requirement(ResourceType::Vcpu, format_vcpu(definition.size.vcpu)))
        .resource_requirements(requirement(ResourceType::Memory, definition.size.memory_mib.to_string()))
        .set_environment(Some(
            definition.environment.iter().map(|(k, v)| KeyValuePair::builder().name(k).value(v).build()).collect(),
        ))
        .set_secrets(Some(
            definition.secrets.iter().map(|(k, v)| Secret::builder().name(k).value_from(v).build()).collect(),
        ))
        .network_configuration(NetworkConfiguration::builder().assign_public_ip(public_ip).build())
        .fargate_platform_configuration(FargatePlatformConfiguration::builder().platform_version("LATEST").build())
        .runtime_platform(
            RuntimePlatform::builder()
                .cpu_architecture(&definition.architecture)
                .operating_system_family("LINUX")
                .build(),
        )
        .log_configuration(log_configuration)
        .build();
    let registered = batch
        .register_job_definition()
        .job_definition_name(&definition.name)
        .r#type(JobDefinitionType::Container)
        .platform_capabilities(PlatformCapability::Fargate)
        .container_properties(container)
        .retry_strategy(retry_strategy(&RetryPolicy {
            attempts: definition.retry_attempts,
            rules: definition.retry_rules.clone(),
        }))
        .set_timeout(
            definition.timeout_seconds.map(|t| JobTimeout::builder().attempt_duration_seconds(t as i32).build()),
        )
        .propagate_tags(true)
        .tags(SPEC_TAG, &hash)
        .tags(STACK_TAG, &config.name_prefix)
        .send()
        .await
        .map_err(|e| Error::aws("RegisterJobDefinition", e))?;
    info!(job_definition = %definition.name, revision = registered.revision(), "job definition registered");
    Ok(registered.job_definition_arn().unwrap_or_default().to_owned())
}

pub(super) async fn deregister_job_definition(batch: &aws_sdk_batch::Client, name: &str) -> Result<(), Error> {
    for revision in active_revisions(batch, name).await? {
        batch
            .deregister_job_definition()
            .job_definition(revision.job_definition_arn().unwrap_or_default())
            .send()
            .await
            .map_err(|e| Error::aws("DeregisterJobDefinition", e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(stuck_after_seconds: u32, cancel_stuck_jobs: CancelStuckJobs) -> JobQueue {
        JobQueue { name: "q".into(), priority: 1, compute_environments: vec![], stuck_after_seconds, cancel_stuck_jobs }
    }

    #[test]
    fn batch_cancels_blocked_jobs_only_for_queues_that_cancel_and_within_its_range() {
        let reasons = |queue: &JobQueue| -> Vec<String> {
            time_limit_actions(queue).iter().map(|a| a.reason().unwrap_or_default().to_owned()).collect()
        };
        assert!(reasons(&queue(1800, CancelStuckJobs::Never)).is_empty());
        let diagnosed = time_limit_actions(&queue(1800, CancelStuckJobs::Diagnosed));
        assert_eq!(diagnosed.len(), 3);
        assert!(diagnosed.iter().all(|a| a.max_time_seconds() == Some(1800)
            && a.action() == Some(&JobStateTimeLimitActionsAction::Cancel)
            && a.state() == Some(&JobStateTimeLimitActionsState::Runnable)));
        assert!(reasons(&queue(1800, CancelStuckJobs::Diagnosed)).iter().all(|r| r.starts_with("MISCONFIGURATION:")));
        assert!(
            reasons(&queue(1800, CancelStuckJobs::Always)).contains(&"CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY".into())
        );
        // Batch takes 600 to 86,400 s; outside, the sweep acts alone
        assert!(reasons(&queue(300, CancelStuckJobs::Always)).is_empty());
        assert!(reasons(&queue(100_000, CancelStuckJobs::Always)).is_empty());
    }
}
