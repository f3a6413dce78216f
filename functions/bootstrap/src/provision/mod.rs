//! Provisioning and teardown: roles, repository, compute environments, queues and job definitions, converged to the configuration.
//!
//! Every step reads what exists first and changes only what differs, so Create, Update and
//! a retried request all converge on the same state, and a job definition gets a new
//! revision only when its registration would differ (a hash of it is kept in the tag
//! `batchline:spec`). Teardown runs in the order AWS requires — jobs stopped, queues
//! disabled then deleted, compute environments disabled then deleted, job definitions
//! deregistered, the repository (only when configured) and the roles — and treats anything
//! already gone as done.
//!
//! **Ownership.** The published configuration records the physical id of the environment
//! that published it. A changed `NamePrefix` is a replacement: CloudFormation creates the
//! new environment, then deletes the old physical id with the old properties (a rollback
//! does the same the other way round). So a teardown leaves alone every resource the
//! published configuration of *another* environment still uses (the two may share role or
//! repository names) and removes the configuration only if its own id published it (an
//! item of an earlier release, without an id, counts as its own when its prefix matches).

use std::collections::BTreeMap;

use batchline::model::stack::{
    ComputeEnvironment, Provisioned, ProvisionedRepository, Roles, StackConfig, EXECUTION_POLICY_ARN,
};
use batchline::store::{ConfigStore, DynamoStore, Published};
use batchline::Error;
use tokio::time::Instant;
use tracing::info;

use crate::declaration::{Declared, SecretSource};

mod batch;
mod ecr;
mod iam;

pub use batch::spec_hash;
use batch::{
    delete_compute_environment, delete_job_queue, deregister_job_definition, ensure_compute_environment,
    ensure_job_definition, ensure_job_queue,
};
use ecr::{delete_repository, ensure_repository};
use iam::{delete_role, ensure_inline_policy, ensure_role};
pub use iam::{execution_role_policy, job_role_policy};

pub use batchline::model::job_request::{SPEC_TAG, STACK_TAG};
/// The job role's inline policy (named when it only read the input; kept, so an update
/// replaces it instead of leaving the old one beside a new one).
const JOB_ROLE_POLICY: &str = "batchline-input-read";
/// The execution role's inline policy: the job definitions' secrets.
const EXECUTION_ROLE_POLICY: &str = "batchline-job-secrets";

const ECS_TASKS_TRUST: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"ecs-tasks.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#;

/// The AWS clients provisioning uses, lent by whoever holds them (the function builds
/// its own once per container), so this module depends on no caller's set of clients.
#[derive(Clone, Copy)]
pub struct Aws<'a> {
    pub batch: &'a aws_sdk_batch::Client,
    pub dynamodb: &'a aws_sdk_dynamodb::Client,
    pub ecr: &'a aws_sdk_ecr::Client,
    pub iam: &'a aws_sdk_iam::Client,
    /// The region the environment is built in (job definitions' logs go there).
    pub region: &'a str,
    /// The CloudFormation stack the environment belongs to: its roles live under
    /// [`role_path`], its repository is tagged with it — what the template's policies
    /// let bootstrap touch.
    pub stack: &'a str,
}

/// The IAM path of a stack's roles, `/batchline/<stack>/`. bootstrap's policy reaches
/// roles under it only, so no configuration can point it at a role it did not make (the
/// stack's own Lambda roles, or another stack's).
pub fn role_path(stack: &str) -> String {
    format!("/batchline/{stack}/")
}

/// Creates or updates everything `declared` names, removes what `previous` had and
/// `declared` no longer has, publishes the result as the environment `owner` (its
/// physical id) and returns it: the deployed configuration, every resource with its ARN.
pub async fn converge(
    aws: Aws<'_>,
    table: &str,
    declared: &Declared,
    previous: Option<&Declared>,
    owner: &str,
    deadline: Instant,
) -> Result<StackConfig, Error> {
    let names = &declared.roles;
    let boundary = names.permissions_boundary.as_deref();
    let path = role_path(aws.stack);
    let execution_role_arn =
        ensure_role(aws.iam, &names.execution_role_name, &path, Some(EXECUTION_POLICY_ARN), boundary).await?;
    let job_role_arn = ensure_role(aws.iam, &names.job_role_name, &path, None, boundary).await?;
    ensure_inline_policy(aws.iam, &names.job_role_name, JOB_ROLE_POLICY, job_role_policy(names)).await?;
    let secrets: Vec<SecretSource> = declared
        .job_definitions
        .values()
        .flat_map(|d| d.secrets.values())
        .filter_map(|s| SecretSource::parse(s))
        .collect();
    ensure_inline_policy(aws.iam, &names.execution_role_name, EXECUTION_ROLE_POLICY, execution_role_policy(&secrets))
        .await?;
    let roles = Roles { names: names.clone(), execution_role_arn, job_role_arn };
    let repository = ProvisionedRepository {
        spec: declared.repository.clone(),
        uri: ensure_repository(aws.ecr, &declared.repository, aws.stack).await?,
    };

    let mut compute_environments = BTreeMap::new();
    for (key, wanted) in &declared.compute_environments {
        let (arn, ecs_cluster_arn) =
            ensure_compute_environment(aws.batch, wanted, &declared.network, &declared.name_prefix, deadline).await?;
        let spec = ComputeEnvironment { ecs_cluster_arn, ..wanted.clone() };
        compute_environments.insert(key.clone(), Provisioned { spec, arn });
    }
    let mut job_queues = BTreeMap::new();
    for (key, wanted) in &declared.job_queues {
        let arn = ensure_job_queue(aws.batch, wanted, &compute_environments, &declared.name_prefix, deadline).await?;
        job_queues.insert(key.clone(), Provisioned { spec: wanted.clone(), arn });
    }
    let mut job_definitions = BTreeMap::new();
    for (key, wanted) in &declared.job_definitions {
        let arn = ensure_job_definition(aws.batch, aws.region, declared, &roles, wanted).await?;
        job_definitions.insert(key.clone(), Provisioned { spec: wanted.clone(), arn });
    }

    if let Some(previous) = previous {
        remove_dropped(aws, declared, previous, deadline).await?;
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
    DynamoStore::new(aws.dynamodb.clone(), table).publish_config(&config, owner).await?;
    Ok(config)
}

/// The physical names of what an environment uses, to leave alone.
#[derive(Debug, Default)]
pub struct InUse(std::collections::BTreeSet<String>);

impl InUse {
    /// Everything `declared` names (the names are the same provisioned or not).
    pub fn by_declared(declared: &Declared) -> Self {
        InUse::by_published(&declared.assume_provisioned(|_, _| String::new()))
    }

    /// Everything a published configuration names.
    pub fn by_published(config: &StackConfig) -> Self {
        let mut names = std::collections::BTreeSet::new();
        names.insert(config.roles.names.execution_role_name.clone());
        names.insert(config.roles.names.job_role_name.clone());
        names.insert(config.repository.spec.name.clone());
        names.extend(config.compute_environments.values().map(|c| c.spec.name.clone()));
        names.extend(config.job_queues.values().map(|q| q.spec.name.clone()));
        names.extend(config.job_definitions.values().map(|d| d.spec.name.clone()));
        InUse(names)
    }

    fn free(&self, name: &str) -> bool {
        !self.0.contains(name)
    }
}

/// Deletes the environment `physical_id` whose properties were `config`: everything they
/// describe that another environment's published configuration does not use, and the
/// published configuration if this environment published it. What is already gone counts
/// as done.
pub async fn teardown(
    aws: Aws<'_>,
    table: &str,
    config: &Declared,
    physical_id: &str,
    deadline: Instant,
) -> Result<(), Error> {
    let store = DynamoStore::new(aws.dynamodb.clone(), table);
    let published = store.load_published().await?;
    let ours = |published: &Published| match &published.owner {
        Some(owner) => owner == physical_id,
        None => published.config.name_prefix == config.name_prefix,
    };
    let in_use = match &published {
        Some(published) if !ours(published) => {
            info!(owner = ?published.owner, "another environment is published: leaving what it uses alone");
            InUse::by_published(&published.config)
        }
        _ => InUse::default(),
    };
    delete_resources(aws, config, &in_use, deadline).await?;
    if let Some(published) = published.filter(|p| ours(p)) {
        if !store.remove_config(published.owner.as_deref()).await? {
            info!("the configuration was republished meanwhile; left in place");
        }
    }
    info!(prefix = %config.name_prefix, physical_id, "environment torn down");
    Ok(())
}

/// Deletes what `config` describes, except what `in_use` names, in the order AWS requires.
pub async fn delete_resources(aws: Aws<'_>, config: &Declared, in_use: &InUse, deadline: Instant) -> Result<(), Error> {
    for queue in config.job_queues.values().filter(|q| in_use.free(&q.name)) {
        delete_job_queue(aws.batch, &queue.name, deadline).await?;
    }
    for environment in config.compute_environments.values().filter(|c| in_use.free(&c.name)) {
        delete_compute_environment(aws.batch, &environment.name, deadline).await?;
    }
    for definition in config.job_definitions.values().filter(|d| in_use.free(&d.name)) {
        deregister_job_definition(aws.batch, &definition.name).await?;
    }
    if config.repository.delete_on_stack_delete && in_use.free(&config.repository.name) {
        delete_repository(aws.ecr, &config.repository.name).await?;
    }
    for role in [&config.roles.job_role_name, &config.roles.execution_role_name] {
        if in_use.free(role) {
            delete_role(aws.iam, role, &role_path(aws.stack)).await?;
        }
    }
    Ok(())
}

async fn remove_dropped(aws: Aws<'_>, config: &Declared, previous: &Declared, deadline: Instant) -> Result<(), Error> {
    let kept_names = |names: Vec<&String>| names.into_iter().cloned().collect::<std::collections::BTreeSet<String>>();
    let queues = kept_names(config.job_queues.values().map(|q| &q.name).collect());
    for queue in previous.job_queues.values().filter(|q| !queues.contains(&q.name)) {
        delete_job_queue(aws.batch, &queue.name, deadline).await?;
    }
    let environments = kept_names(config.compute_environments.values().map(|c| &c.name).collect());
    for environment in previous.compute_environments.values().filter(|c| !environments.contains(&c.name)) {
        delete_compute_environment(aws.batch, &environment.name, deadline).await?;
    }
    let definitions = kept_names(config.job_definitions.values().map(|d| &d.name).collect());
    for definition in previous.job_definitions.values().filter(|d| !definitions.contains(&d.name)) {
        deregister_job_definition(aws.batch, &definition.name).await?;
    }
    Ok(())
}

fn build_error(err: impl std::fmt::Display) -> Error {
    Error::InvalidEvent(format!("building a request: {err}"))
}

/// The outputs CloudFormation gets in `Data`: the design's names, and `JobQueueArns`
/// (the template's Batch event rule matches them). Every other ARN is in the published
/// configuration; the whole answer must fit CloudFormation's 4,096 bytes (see
/// [`crate::largest_answer`]).
pub fn outputs(config: &StackConfig) -> BTreeMap<&'static str, String> {
    let arns = |items: Vec<&str>| items.join(",");
    BTreeMap::from([
        ("ExecutionRoleArn", config.roles.execution_role_arn.clone()),
        ("JobRoleArn", config.roles.job_role_arn.clone()),
        ("RepositoryUri", config.repository.uri.clone()),
        ("JobQueueArn", config.default_job_queue().map(|q| q.arn.clone()).unwrap_or_default()),
        ("JobDefinitionArns", arns(config.job_definitions.values().map(|d| d.arn.as_str()).collect())),
        ("JobQueueArns", arns(config.job_queues.values().map(|q| q.arn.as_str()).collect())),
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
