//! Provisioning and teardown: roles, repository, compute environments, queues and job definitions, converged to the configuration.
//!
//! Every step reads what exists first and changes only what differs, so Create, Update and
//! a retried request all converge on the same state, and a job definition gets a new
//! revision only when its registration would differ (a hash of it is kept in the tag
//! `batchline:spec`). Teardown runs in the order AWS requires — jobs stopped, queues
//! disabled then deleted, compute environments disabled then deleted, job definitions
//! deregistered, the repository (only when configured) and the roles — and treats anything
//! already gone as done.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use aws_sdk_batch::types::{
    AssignPublicIp, CeState, CeType, ComputeEnvironmentOrder, ComputeResource, ComputeResourceUpdate,
    ContainerProperties, CrType, EvaluateOnExit, FargatePlatformConfiguration, JobDefinitionType, JobStatus,
    JobTimeout, JqState, KeyValuePair, LogConfiguration, LogDriver, NetworkConfiguration, PlatformCapability,
    ResourceRequirement, ResourceType, RetryAction, RetryStrategy, RuntimePlatform, Secret,
};
use batchline::model::fargate::format_vcpu;
use batchline::model::stack::{
    ComputeEnvironment, ComputeType, JobDefinition, JobQueue, Network, Provisioned, ProvisionedRepository, Repository,
    Roles, StackConfig, EXECUTION_POLICY_ARN,
};
use batchline::store::{ConfigStore, DynamoStore};
use batchline::Error;
use tokio::time::Instant;
use tracing::info;

use crate::declaration::Declared;
use crate::Clients;

pub const SPEC_TAG: &str = "batchline:spec";
pub const STACK_TAG: &str = "batchline:stack";
const JOB_ROLE_POLICY: &str = "batchline-input-read";

const ECS_TASKS_TRUST: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"ecs-tasks.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#;

/// Creates or updates everything `declared` names, removes what `previous` had and
/// `declared` no longer has, publishes the result and returns it: the deployed
/// configuration, every resource with its ARN.
pub async fn converge(
    clients: &Clients,
    table: &str,
    declared: &Declared,
    previous: Option<&Declared>,
    deadline: Instant,
) -> Result<StackConfig, Error> {
    let names = &declared.roles;
    let execution_role_arn = ensure_role(clients, &names.execution_role_name, Some(EXECUTION_POLICY_ARN)).await?;
    let job_role_arn = ensure_role(clients, &names.job_role_name, None).await?;
    ensure_input_read_policy(clients, &names.job_role_name, names.input_bucket.as_deref()).await?;
    let roles = Roles { names: names.clone(), execution_role_arn, job_role_arn };
    let repository = ProvisionedRepository {
        spec: declared.repository.clone(),
        uri: ensure_repository(clients, &declared.repository, &declared.name_prefix).await?,
    };

    let mut compute_environments = BTreeMap::new();
    for (key, wanted) in &declared.compute_environments {
        let arn =
            ensure_compute_environment(clients, wanted, &declared.network, &declared.name_prefix, deadline).await?;
        compute_environments.insert(key.clone(), Provisioned { spec: wanted.clone(), arn });
    }
    let mut job_queues = BTreeMap::new();
    for (key, wanted) in &declared.job_queues {
        let arn = ensure_job_queue(clients, wanted, &compute_environments, &declared.name_prefix, deadline).await?;
        job_queues.insert(key.clone(), Provisioned { spec: wanted.clone(), arn });
    }
    let mut job_definitions = BTreeMap::new();
    for (key, wanted) in &declared.job_definitions {
        let arn = ensure_job_definition(clients, declared, &roles, wanted).await?;
        job_definitions.insert(key.clone(), Provisioned { spec: wanted.clone(), arn });
    }

    if let Some(previous) = previous {
        remove_dropped(clients, declared, previous, deadline).await?;
    }
    let config = StackConfig {
        name_prefix: declared.name_prefix.clone(),
        network: declared.network.clone(),
        roles,
        repository,
        compute_environments,
        job_queues,
        job_definitions,
        default_queue: declared.default_queue.clone(),
        pipelines: declared.pipelines.clone(),
        triggers: declared.triggers.clone(),
    };
    publish(clients, table, &config).await?;
    Ok(config)
}

/// Deletes everything the configuration describes; what is already gone counts as done.
pub async fn teardown(clients: &Clients, table: &str, config: &Declared, deadline: Instant) -> Result<(), Error> {
    for queue in config.job_queues.values() {
        delete_job_queue(clients, &queue.name, deadline).await?;
    }
    for environment in config.compute_environments.values() {
        delete_compute_environment(clients, &environment.name, deadline).await?;
    }
    for definition in config.job_definitions.values() {
        deregister_job_definition(clients, &definition.name).await?;
    }
    if config.repository.delete_on_stack_delete {
        delete_repository(clients, &config.repository.name).await?;
    }
    delete_role(clients, &config.roles.job_role_name).await?;
    delete_role(clients, &config.roles.execution_role_name).await?;
    DynamoStore::new(clients.dynamodb.clone(), table).remove_config().await?;
    info!(prefix = %config.name_prefix, "environment torn down");
    Ok(())
}

async fn remove_dropped(
    clients: &Clients,
    config: &Declared,
    previous: &Declared,
    deadline: Instant,
) -> Result<(), Error> {
    let kept_names = |names: Vec<&String>| names.into_iter().cloned().collect::<std::collections::BTreeSet<String>>();
    let queues = kept_names(config.job_queues.values().map(|q| &q.name).collect());
    for queue in previous.job_queues.values().filter(|q| !queues.contains(&q.name)) {
        delete_job_queue(clients, &queue.name, deadline).await?;
    }
    let environments = kept_names(config.compute_environments.values().map(|c| &c.name).collect());
    for environment in previous.compute_environments.values().filter(|c| !environments.contains(&c.name)) {
        delete_compute_environment(clients, &environment.name, deadline).await?;
    }
    let definitions = kept_names(config.job_definitions.values().map(|d| &d.name).collect());
    for definition in previous.job_definitions.values().filter(|d| !definitions.contains(&d.name)) {
        deregister_job_definition(clients, &definition.name).await?;
    }
    Ok(())
}

async fn publish(clients: &Clients, table: &str, config: &StackConfig) -> Result<(), Error> {
    DynamoStore::new(clients.dynamodb.clone(), table).publish_config(config).await
}

// ----- IAM -------------------------------------------------------------------------------

async fn ensure_role(clients: &Clients, name: &str, managed_policy: Option<&str>) -> Result<String, Error> {
    let arn = match clients.iam.get_role().role_name(name).send().await {
        Ok(found) => {
            clients
                .iam
                .update_assume_role_policy()
                .role_name(name)
                .policy_document(ECS_TASKS_TRUST)
                .send()
                .await
                .map_err(|e| Error::aws("UpdateAssumeRolePolicy", e))?;
            found.role().map(|r| r.arn().to_owned()).unwrap_or_default()
        }
        Err(err) => {
            let err = Error::aws("GetRole", err);
            if err.aws_code() != Some("NoSuchEntity") {
                return Err(err);
            }
            let created = clients
                .iam
                .create_role()
                .role_name(name)
                .assume_role_policy_document(ECS_TASKS_TRUST)
                .description("Batchline: assumed by ECS tasks of AWS Batch jobs")
                .send()
                .await
                .map_err(|e| Error::aws("CreateRole", e))?;
            info!(role = name, "role created");
            created.role().map(|r| r.arn().to_owned()).unwrap_or_default()
        }
    };
    if let Some(policy) = managed_policy {
        clients
            .iam
            .attach_role_policy()
            .role_name(name)
            .policy_arn(policy)
            .send()
            .await
            .map_err(|e| Error::aws("AttachRolePolicy", e))?;
    }
    Ok(arn)
}

/// The job role may read the input bucket, when one is configured, and nothing else.
async fn ensure_input_read_policy(clients: &Clients, role: &str, bucket: Option<&str>) -> Result<(), Error> {
    match bucket {
        Some(bucket) => {
            let policy = serde_json::json!({
                "Version": "2012-10-17",
                "Statement": [
                    {"Effect": "Allow", "Action": "s3:GetObject", "Resource": format!("arn:aws:s3:::{bucket}/*")},
                    {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": format!("arn:aws:s3:::{bucket}")}
                ]
            });
            clients
                .iam
                .put_role_policy()
                .role_name(role)
                .policy_name(JOB_ROLE_POLICY)
                .policy_document(policy.to_string())
                .send()
                .await
                .map_err(|e| Error::aws("PutRolePolicy", e))?;
        }
        None => {
            if let Err(err) = clients.iam.delete_role_policy().role_name(role).policy_name(JOB_ROLE_POLICY).send().await
            {
                let err = Error::aws("DeleteRolePolicy", err);
                if err.aws_code() != Some("NoSuchEntity") {
                    return Err(err);
                }
            }
        }
    }
    Ok(())
}

async fn delete_role(clients: &Clients, name: &str) -> Result<(), Error> {
    let not_found = |err: &Error| err.aws_code() == Some("NoSuchEntity");
    let attached = match clients.iam.list_attached_role_policies().role_name(name).send().await {
        Ok(attached) => attached,
        Err(err) => {
            let err = Error::aws("ListAttachedRolePolicies", err);
            return if not_found(&err) { Ok(()) } else { Err(err) };
        }
    };
    for policy in attached.attached_policies().iter().filter_map(|p| p.policy_arn()) {
        clients
            .iam
            .detach_role_policy()
            .role_name(name)
            .policy_arn(policy)
            .send()
            .await
            .map_err(|e| Error::aws("DetachRolePolicy", e))?;
    }
    let inline =
        clients.iam.list_role_policies().role_name(name).send().await.map_err(|e| Error::aws("ListRolePolicies", e))?;
    for policy in inline.policy_names() {
        clients
            .iam
            .delete_role_policy()
            .role_name(name)
            .policy_name(policy)
            .send()
            .await
            .map_err(|e| Error::aws("DeleteRolePolicy", e))?;
    }
    match clients.iam.delete_role().role_name(name).send().await {
        Ok(_) => Ok(()),
        Err(err) => {
            let err = Error::aws("DeleteRole", err);
            if not_found(&err) {
                Ok(())
            } else {
                Err(err)
            }
        }
    }
}

// ----- ECR -------------------------------------------------------------------------------

async fn ensure_repository(clients: &Clients, repository: &Repository, stack: &str) -> Result<String, Error> {
    match clients.ecr.describe_repositories().repository_names(&repository.name).send().await {
        Ok(found) => {
            let existing = found.repositories().first();
            let scanning = existing.and_then(|r| r.image_scanning_configuration()).map(|c| c.scan_on_push());
            if scanning != Some(repository.scan_on_push) {
                clients
                    .ecr
                    .put_image_scanning_configuration()
                    .repository_name(&repository.name)
                    .image_scanning_configuration(
                        aws_sdk_ecr::types::ImageScanningConfiguration::builder()
                            .scan_on_push(repository.scan_on_push)
                            .build(),
                    )
                    .send()
                    .await
                    .map_err(|e| Error::aws("PutImageScanningConfiguration", e))?;
            }
            Ok(existing.and_then(|r| r.repository_uri()).unwrap_or_default().to_owned())
        }
        Err(err) => {
            let err = Error::aws("DescribeRepositories", err);
            if err.aws_code() != Some("RepositoryNotFoundException") {
                return Err(err);
            }
            let created = clients
                .ecr
                .create_repository()
                .repository_name(&repository.name)
                .image_scanning_configuration(
                    aws_sdk_ecr::types::ImageScanningConfiguration::builder()
                        .scan_on_push(repository.scan_on_push)
                        .build(),
                )
                .tags(aws_sdk_ecr::types::Tag::builder().key(STACK_TAG).value(stack).build().map_err(build_error)?)
                .send()
                .await
                .map_err(|e| Error::aws("CreateRepository", e))?;
            info!(repository = %repository.name, "repository created");
            Ok(created.repository().and_then(|r| r.repository_uri()).unwrap_or_default().to_owned())
        }
    }
}

async fn delete_repository(clients: &Clients, name: &str) -> Result<(), Error> {
    match clients.ecr.delete_repository().repository_name(name).force(true).send().await {
        Ok(_) => Ok(()),
        Err(err) => {
            let err = Error::aws("DeleteRepository", err);
            if err.aws_code() == Some("RepositoryNotFoundException") {
                Ok(())
            } else {
                Err(err)
            }
        }
    }
}

// ----- Batch -----------------------------------------------------------------------------

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
    clients: &Clients,
    name: &str,
) -> Result<Option<aws_sdk_batch::types::ComputeEnvironmentDetail>, Error> {
    let found = clients
        .batch
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

async fn ensure_compute_environment(
    clients: &Clients,
    wanted: &ComputeEnvironment,
    network: &Network,
    stack: &str,
    deadline: Instant,
) -> Result<String, Error> {
    let arn = match describe_compute_environment(clients, &wanted.name).await? {
        None => {
            let kind = match wanted.kind {
                ComputeType::Fargate => CrType::Fargate,
                ComputeType::FargateSpot => CrType::FargateSpot,
            };
            let created = clients
                .batch
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
            created.compute_environment_arn().unwrap_or_default().to_owned()
        }
        Some(existing) => {
            let resources = existing.compute_resources();
            let same = existing.state().map(|s| s.as_str()) == Some("ENABLED")
                && resources.and_then(|r| r.maxv_cpus()) == Some(wanted.max_vcpus as i32)
                && resources.map(|r| r.subnets().to_vec()) == Some(network.subnets.clone())
                && resources.map(|r| r.security_group_ids().to_vec()) == Some(network.security_groups.clone());
            if !same {
                clients
                    .batch
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
        let found = describe_compute_environment(clients, &wanted.name).await?;
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
    Ok(arn)
}

async fn delete_compute_environment(clients: &Clients, name: &str, deadline: Instant) -> Result<(), Error> {
    let Some(existing) = describe_compute_environment(clients, name).await? else {
        return Ok(());
    };
    if existing.state().map(|s| s.as_str()) != Some("DISABLED") {
        clients
            .batch
            .update_compute_environment()
            .compute_environment(name)
            .state(CeState::Disabled)
            .send()
            .await
            .map_err(|e| Error::aws("UpdateComputeEnvironment", e))?;
    }
    wait_until(&format!("compute environment {name} becoming DISABLED"), deadline, || async {
        let found = describe_compute_environment(clients, name).await?;
        Ok(found.is_none_or(|c| {
            c.state().map(|s| s.as_str()) == Some("DISABLED") && c.status().map(|s| s.as_str()) != Some("UPDATING")
        }))
    })
    .await?;
    clients
        .batch
        .delete_compute_environment()
        .compute_environment(name)
        .send()
        .await
        .map_err(|e| Error::aws("DeleteComputeEnvironment", e))?;
    wait_until(&format!("compute environment {name} being deleted"), deadline, || async {
        Ok(describe_compute_environment(clients, name).await?.is_none())
    })
    .await?;
    info!(compute_environment = name, "compute environment deleted");
    Ok(())
}

async fn describe_job_queue(
    clients: &Clients,
    name: &str,
) -> Result<Option<aws_sdk_batch::types::JobQueueDetail>, Error> {
    let found = clients
        .batch
        .describe_job_queues()
        .job_queues(name)
        .send()
        .await
        .map_err(|e| Error::aws("DescribeJobQueues", e))?;
    Ok(found
        .job_queues()
        .iter()
        .find(|q| q.job_queue_name() == Some(name) && q.status().map(|s| s.as_str()) != Some("DELETED"))
        .cloned())
}

async fn ensure_job_queue(
    clients: &Clients,
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
    let arn = match describe_job_queue(clients, &wanted.name).await? {
        None => {
            let created = clients
                .batch
                .create_job_queue()
                .job_queue_name(&wanted.name)
                .state(JqState::Enabled)
                .priority(wanted.priority as i32)
                .set_compute_environment_order(Some(order))
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
                && existing_order == wanted_order;
            if !same {
                clients
                    .batch
                    .update_job_queue()
                    .job_queue(&wanted.name)
                    .state(JqState::Enabled)
                    .priority(wanted.priority as i32)
                    .set_compute_environment_order(Some(order))
                    .send()
                    .await
                    .map_err(|e| Error::aws("UpdateJobQueue", e))?;
                info!(job_queue = %wanted.name, "job queue updated");
            }
            existing.job_queue_arn().unwrap_or_default().to_owned()
        }
    };
    wait_until(&format!("job queue {} becoming VALID", wanted.name), deadline, || async {
        let found = describe_job_queue(clients, &wanted.name).await?;
        Ok(found.and_then(|q| q.status().map(|s| s.as_str().to_owned())).as_deref() == Some("VALID"))
    })
    .await?;
    Ok(arn)
}

/// Stops the queue's unfinished jobs, disables the queue, then deletes it.
async fn delete_job_queue(clients: &Clients, name: &str, deadline: Instant) -> Result<(), Error> {
    let Some(existing) = describe_job_queue(clients, name).await? else {
        return Ok(());
    };
    for status in
        [JobStatus::Submitted, JobStatus::Pending, JobStatus::Runnable, JobStatus::Starting, JobStatus::Running]
    {
        let mut token = None;
        loop {
            let page = clients
                .batch
                .list_jobs()
                .job_queue(name)
                .job_status(status.clone())
                .set_next_token(token)
                .send()
                .await
                .map_err(|e| Error::aws("ListJobs", e))?;
            for job in page.job_summary_list().iter().filter_map(|j| j.job_id()) {
                clients
                    .batch
                    .terminate_job()
                    .job_id(job)
                    .reason("Batchline environment deleted")
                    .send()
                    .await
                    .map_err(|e| Error::aws("TerminateJob", e))?;
            }
            token = page.next_token().map(str::to_owned);
            if token.is_none() {
                break;
            }
        }
    }
    if existing.state().map(|s| s.as_str()) != Some("DISABLED") {
        clients
            .batch
            .update_job_queue()
            .job_queue(name)
            .state(JqState::Disabled)
            .send()
            .await
            .map_err(|e| Error::aws("UpdateJobQueue", e))?;
    }
    wait_until(&format!("job queue {name} becoming DISABLED"), deadline, || async {
        let found = describe_job_queue(clients, name).await?;
        Ok(found.is_none_or(|q| {
            q.state().map(|s| s.as_str()) == Some("DISABLED") && q.status().map(|s| s.as_str()) != Some("UPDATING")
        }))
    })
    .await?;
    clients.batch.delete_job_queue().job_queue(name).send().await.map_err(|e| Error::aws("DeleteJobQueue", e))?;
    wait_until(&format!("job queue {name} being deleted"), deadline, || async {
        Ok(describe_job_queue(clients, name).await?.is_none())
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

async fn active_revisions(clients: &Clients, name: &str) -> Result<Vec<aws_sdk_batch::types::JobDefinition>, Error> {
    let mut revisions = Vec::new();
    let mut token = None;
    loop {
        let page = clients
            .batch
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

async fn ensure_job_definition(
    clients: &Clients,
    config: &Declared,
    roles: &Roles,
    definition: &JobDefinition,
) -> Result<String, Error> {
    let (execution_role, job_role) = (&roles.execution_role_arn, &roles.job_role_arn);
    let hash = spec_hash(definition, execution_role, job_role, config.network.assign_public_ip, &clients.region);
    let revisions = active_revisions(clients, &definition.name).await?;
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
        .options("awslogs-region", &clients.region)
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
    let registered = clients
        .batch
        .register_job_definition()
        .job_definition_name(&definition.name)
        .r#type(JobDefinitionType::Container)
        .platform_capabilities(PlatformCapability::Fargate)
        .container_properties(container)
        .retry_strategy(retry_strategy(definition.retry_attempts))
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

/// Batch retries what is transient — a Spot task reclaimed, the host lost, an image pull
/// failed — and nothing else: an out-of-memory kill or a non-zero exit goes to
/// job-events, which resizes or fails the stage.
pub fn retry_strategy(attempts: u32) -> RetryStrategy {
    let rule = |status_reason: Option<&str>, reason: Option<&str>, action| {
        EvaluateOnExit::builder()
            .set_on_status_reason(status_reason.map(str::to_owned))
            .set_on_reason(reason.map(str::to_owned))
            .action(action)
            .build()
    };
    RetryStrategy::builder()
        .attempts(attempts as i32)
        .set_evaluate_on_exit(Some(
            [
                rule(Some("Your Spot Task was interrupted*"), None, RetryAction::Retry),
                rule(Some("Host EC2*"), None, RetryAction::Retry),
                rule(None, Some("CannotPullContainerError*"), RetryAction::Retry),
                rule(None, Some("*"), RetryAction::Exit),
            ]
            .into_iter()
            .collect(),
        ))
        .build()
}

async fn deregister_job_definition(clients: &Clients, name: &str) -> Result<(), Error> {
    for revision in active_revisions(clients, name).await? {
        clients
            .batch
            .deregister_job_definition()
            .job_definition(revision.job_definition_arn().unwrap_or_default())
            .send()
            .await
            .map_err(|e| Error::aws("DeregisterJobDefinition", e))?;
    }
    Ok(())
}

fn build_error(err: impl std::fmt::Display) -> Error {
    Error::InvalidEvent(format!("building a request: {err}"))
}

/// The outputs CloudFormation gets in `Data` (names fixed by the design, plus a few more).
pub fn outputs(config: &StackConfig) -> BTreeMap<&'static str, String> {
    let arns = |items: Vec<&str>| items.join(",");
    BTreeMap::from([
        ("ExecutionRoleArn", config.roles.execution_role_arn.clone()),
        ("JobRoleArn", config.roles.job_role_arn.clone()),
        ("RepositoryUri", config.repository.uri.clone()),
        ("JobQueueArn", config.default_job_queue().map(|q| q.arn.clone()).unwrap_or_default()),
        ("JobDefinitionArns", arns(config.job_definitions.values().map(|d| d.arn.as_str()).collect())),
        ("JobQueueArns", arns(config.job_queues.values().map(|q| q.arn.as_str()).collect())),
        ("ComputeEnvironmentArns", arns(config.compute_environments.values().map(|c| c.arn.as_str()).collect())),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unchanged_job_definition_hashes_as_the_previous_release_did() {
        // Values the release before the deployed/declared split printed for the same inputs
        // in the function's own build (serde_json without `preserve_order`); now the same
        // whatever the build's features.
        let properties = serde_json::json!({"Network": {"Subnets": ["subnet-1"], "SecurityGroups": ["sg-1"]},
            "JobDefinitions": {"default": {}, "big": {"Image": "repo/x:1", "Vcpu": "1", "Memory": "2048", "Environment": {"A": "1"}, "TimeoutSeconds": "600"}}});
        let declared = crate::declaration::declare(&properties).unwrap();
        let hash = |key: &str| spec_hash(&declared.job_definitions[key], "arn:exec", "arn:job", true, "us-east-1");
        assert_eq!(hash("big"), "84dcf0b09ef318af");
        assert_eq!(hash("default"), "cdc96cd299c74b9d");
    }
}
