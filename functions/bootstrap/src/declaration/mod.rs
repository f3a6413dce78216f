//! The stack configuration document: the bootstrap custom resource's properties, parsed, validated and resolved.
//!
//! CloudFormation sends every property value as a string (numbers and booleans too) and
//! always adds `ServiceToken` (and `ServiceTimeout` when set), so numbers and booleans are
//! read from strings or native JSON alike, and lists from JSON lists or comma-separated
//! strings. Unknown properties are refused with their path, so a typo fails `sam deploy`
//! instead of being silently ignored. The schema, with defaults:
//!
//! ```yaml
//! NamePrefix: batchline            # physical names are <NamePrefix>-<key>
//! Network:                         # required
//!   Subnets: [subnet-1, subnet-2]
//!   SecurityGroups: [sg-1]
//!   AssignPublicIp: "true"         # Fargate tasks in public subnets need it to pull images
//! Roles:
//!   ExecutionRoleName: <prefix>-execution
//!   JobRoleName: <prefix>-job
//!   InputBucket: ""                # the job role may read this bucket (s3:GetObject, s3:ListBucket)
//!   RunDataPrefix: runs/           # with a bucket: stages may write under it (s3:PutObject), each
//!                                  # told its run's folder (BATCHLINE_RUN_DATA); "" for none. No S3
//!                                  # trigger on the bucket may overlap it (its writes would trigger).
//! Repository:
//!   Name: <prefix>-jobs
//!   ScanOnPush: "true"
//!   DeleteOnStackDelete: "false"   # kept by default: it holds your images
//! ComputeEnvironments:             # default: {default: {Type: FARGATE, MaxVcpus: 256}}
//!   default: {Type: FARGATE, MaxVcpus: "256"}
//!   spot: {Type: FARGATE_SPOT, MaxVcpus: "256"}
//! JobQueues:                       # default: {default: {Priority: 1, ComputeEnvironments: [default]}}
//!   default:
//!     Priority: "1"
//!     ComputeEnvironments: [default]
//!     StuckAfterSeconds: "1800"    # a job RUNNABLE longer is stuck: counted in StuckJobs (60 to 604800)
//!     CancelStuckJobs: Never       # or Diagnosed (those that cannot start, see model::stuck) or Always
//! JobDefinitions:                  # default: {default: the recipe's job}
//!   default:
//!     Image: public.ecr.aws/docker/library/python:3.12-alpine
//!     Vcpu: "0.25"
//!     Memory: "512"
//!     Command: [python3, -c, "..."]
//!     Environment: {NAME: value}
//!     Secrets: {NAME: arn-of-secret-or-parameter}
//!     Architecture: X86_64         # or ARM64
//!     RetryAttempts: "3"           # Batch retries Spot interruption, host loss and image pulls
//!     RetryOn: [{ExitCode: "3", Action: Retry}]   # or these exits instead (see the retries module)
//!     MaxResizes: "0"              # single jobs killed for lack of memory: resubmissions one size up
//!     TimeoutSeconds: "3600"
//!     LogGroup: /aws/batch/job
//!     Queue: default
//! Pipelines: {...}                 # see the pipeline module
//! Triggers:
//!   S3:
//!     <rule>: {Bucket: name, Prefix: "in/", Suffix: ".csv", JobDefinition: default | Pipeline: name,
//!              MemoryPerInputByte: "4", Parameters: {..}}
//!   Schedules:
//!     <rule name>: {JobDefinition: default | Pipeline: name, Parameters: {..}}
//!     <label>: {Rule: <rule name>, JobDefinition: default}   # when the name is computed
//! ```
//!
//! Keys (`default`, `spot`, ...) are 1–40 letters, digits, `-` or `_`; stages and triggers
//! name queues and job definitions by key.

use std::collections::BTreeMap;

use batchline::model::fargate::{Quarters, Size};
use batchline::model::pipeline::Pipeline;
use batchline::model::stack::*;
use serde_json::Value;

mod document;
mod pipelines;
mod retries;
mod triggers;
mod values;

use document::{Document, JobDefinitionDoc, JobQueueDoc};
use pipelines::{parse_resizes, resolve_pipelines};
use triggers::resolve_triggers;

/// The job definition size when the document gives none: the smallest Fargate size.
const DEFAULT_SIZE: Size = Size { vcpu: Quarters(1), memory_mib: 512 };
/// What a queue's `StuckAfterSeconds` may be: a minute (a Fargate task can take that to
/// start) to a week.
const STUCK_AFTER_RANGE: std::ops::RangeInclusive<u64> = 60..=604_800;

// ----- validation -------------------------------------------------------------------------

/// The validated document: every default filled in and physical names chosen, nothing
/// provisioned yet. Provisioning it gives the deployed [`StackConfig`].
#[derive(Debug, Clone, PartialEq)]
pub struct Declared {
    pub name_prefix: String,
    pub network: Network,
    pub roles: RoleNames,
    pub repository: Repository,
    pub compute_environments: BTreeMap<String, ComputeEnvironment>,
    pub job_queues: BTreeMap<String, JobQueue>,
    pub job_definitions: BTreeMap<String, JobDefinition>,
    /// The key of the queue jobs go to unless told otherwise.
    pub default_queue: String,
    pub pipelines: BTreeMap<String, Pipeline>,
    pub triggers: Triggers,
}

impl Declared {
    /// The deployed configuration as if every resource existed, with the ARNs `arn`
    /// gives (`arn(kind, physical name)`, kind being `role`, `repository`,
    /// `compute-environment`, `job-queue` or `job-definition`). For benchmarks and
    /// tests that need a configuration without provisioning one.
    pub fn assume_provisioned(&self, arn: impl Fn(&str, &str) -> String) -> StackConfig {
        StackConfig {
            name_prefix: self.name_prefix.clone(),
            network: self.network.clone(),
            roles: Roles {
                names: self.roles.clone(),
                execution_role_arn: arn("role", &self.roles.execution_role_name),
                job_role_arn: arn("role", &self.roles.job_role_name),
            },
            repository: ProvisionedRepository {
                spec: self.repository.clone(),
                uri: arn("repository", &self.repository.name),
            },
            compute_environments: self
                .compute_environments
                .iter()
                .map(|(k, c)| (k.clone(), Provisioned { spec: c.clone(), arn: arn("compute-environment", &c.name) }))
                .collect(),
            job_queues: self
                .job_queues
                .iter()
                .map(|(k, q)| (k.clone(), Provisioned { spec: q.clone(), arn: arn("job-queue", &q.name) }))
                .collect(),
            job_definitions: self
                .job_definitions
                .iter()
                .map(|(k, d)| (k.clone(), Provisioned { spec: d.clone(), arn: arn("job-definition", &d.name) }))
                .collect(),
            default_queue: self.default_queue.clone(),
            pipelines: self.pipelines.clone(),
            triggers: self.triggers.clone(),
        }
    }
}

/// Everything wrong with a document, each problem with its path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid stack configuration: {}", .problems.join("; "))]
pub struct ConfigProblems {
    pub problems: Vec<String>,
}

/// Parses and validates the custom resource's properties.
pub fn declare(properties: &Value) -> Result<Declared, ConfigProblems> {
    let document: Document = serde_path_to_error::deserialize(properties).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner().to_string();
        ConfigProblems { problems: vec![if path == "." { inner } else { format!("{path}: {inner}") }] }
    })?;
    resolve(document)
}

fn valid_key(key: &str) -> bool {
    (1..=40).contains(&key.len()) && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Batch names: letters, digits, `-`, `_`, at most 128.
fn valid_batch_name(name: &str) -> bool {
    (1..=128).contains(&name.len()) && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// IAM role names: letters, digits and `+=,.@_-`, at most 64.
fn valid_role_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.chars().all(|c| c.is_ascii_alphanumeric() || "+=,.@_-".contains(c))
}

/// S3 bucket names: 3-63 lowercase letters, digits, `.` and `-` (no wildcard).
fn valid_bucket_name(name: &str) -> bool {
    (3..=63).contains(&name.len())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || ".-".contains(c))
}

/// Where stages write when the document names a bucket but no `RunDataPrefix`.
pub const DEFAULT_RUN_DATA_PREFIX: &str = "runs/";

/// A run-data folder: S3's safe key characters (no `*`, which IAM would read as a
/// wildcard) in non-empty segments, each ending in `/`, at most 200 in all.
fn valid_run_data_prefix(prefix: &str) -> bool {
    (2..=200).contains(&prefix.len())
        && prefix.ends_with('/')
        && prefix.split_terminator('/').all(|segment| {
            !segment.is_empty() && segment.chars().all(|c| c.is_ascii_alphanumeric() || "!-_.'()".contains(c))
        })
}

/// ECR repository names: lowercase letters, digits, `._-/` between them, 2–256.
fn valid_repository_name(name: &str) -> bool {
    (2..=256).contains(&name.len())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-/".contains(c))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
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
fn check_capacity(
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

fn resolve(doc: Document) -> Result<Declared, ConfigProblems> {
    let mut problems = Vec::new();
    let prefix = doc.name_prefix.clone().unwrap_or_else(|| "batchline".to_owned());
    if !valid_batch_name(&prefix) || prefix.len() > 40 {
        problems.push(format!("NamePrefix {prefix:?}: use 1-40 letters, digits, - or _"));
    }
    let name = |key: &str| format!("{prefix}-{key}");

    let network = match &doc.network {
        None => {
            problems.push(
                "Network is required: give Subnets and SecurityGroups (the README shows how to find the default VPC's)"
                    .into(),
            );
            Network { subnets: vec![], security_groups: vec![], assign_public_ip: true }
        }
        Some(n) => {
            let subnets = n.subnets.clone().unwrap_or_default();
            let security_groups = n.security_groups.clone().unwrap_or_default();
            if subnets.is_empty() {
                problems.push("Network.Subnets: give at least one subnet id".into());
            }
            if security_groups.is_empty() {
                problems.push("Network.SecurityGroups: give at least one security group id".into());
            }
            for id in &subnets {
                if !id.starts_with("subnet-") {
                    problems.push(format!("Network.Subnets: {id:?} is not a subnet id (subnet-...)"));
                }
            }
            for id in &security_groups {
                if !id.starts_with("sg-") {
                    problems.push(format!("Network.SecurityGroups: {id:?} is not a security group id (sg-...)"));
                }
            }
            Network { subnets, security_groups, assign_public_ip: n.assign_public_ip.unwrap_or(true) }
        }
    };

    let roles = RoleNames {
        execution_role_name: doc.roles.execution_role_name.clone().unwrap_or_else(|| name("execution")),
        job_role_name: doc.roles.job_role_name.clone().unwrap_or_else(|| name("job")),
        input_bucket: doc.roles.input_bucket.clone().filter(|b| !b.is_empty()),
        permissions_boundary: doc.roles.permissions_boundary.clone().filter(|b| !b.is_empty()),
        run_data_prefix: match doc.roles.run_data_prefix.as_deref() {
            None if doc.roles.input_bucket.as_deref().is_some_and(|b| !b.is_empty()) => {
                Some(DEFAULT_RUN_DATA_PREFIX.to_owned())
            }
            None | Some("") => None,
            Some(prefix) => Some(prefix.to_owned()),
        },
    };
    if let Some(prefix) = &roles.run_data_prefix {
        if roles.input_bucket.is_none() {
            problems.push(format!("Roles.RunDataPrefix {prefix:?}: name the bucket too (Roles.InputBucket)"));
        }
        if !valid_run_data_prefix(prefix) {
            problems.push(format!(
                "Roles.RunDataPrefix {prefix:?}: give a folder like \"runs/\": letters, digits or !-_.'() in folders separated by single /, ending in /, at most 200"
            ));
        }
    }
    for (field, role) in [("ExecutionRoleName", &roles.execution_role_name), ("JobRoleName", &roles.job_role_name)] {
        if !valid_role_name(role) {
            problems.push(format!("Roles.{field} {role:?}: IAM role names are 1-64 letters, digits or +=,.@_-"));
        }
    }
    if let Some(bucket) = roles.input_bucket.as_deref().filter(|b| !valid_bucket_name(b)) {
        problems.push(format!(
            "Roles.InputBucket {bucket:?}: name one S3 bucket (3-63 lowercase letters, digits, . or -); the job role may read that bucket only"
        ));
    }
    if let Some(boundary) =
        roles.permissions_boundary.as_deref().filter(|b| !(b.starts_with("arn:") && b.contains(":policy/")))
    {
        problems.push(format!("Roles.PermissionsBoundary {boundary:?}: give the ARN of a managed policy"));
    }
    let repository = Repository {
        name: doc.repository.name.clone().unwrap_or_else(|| name("jobs").to_ascii_lowercase()),
        scan_on_push: doc.repository.scan_on_push.unwrap_or(true),
        delete_on_stack_delete: doc.repository.delete_on_stack_delete.unwrap_or(false),
    };
    if !valid_repository_name(&repository.name) {
        problems.push(format!(
            "Repository.Name {:?}: ECR names are 2-256 lowercase letters, digits and ._-/ (starting and ending with a letter or digit)",
            repository.name
        ));
    }
    // Held to the stack's prefix, as bootstrap's permissions are: it may change and delete
    // only repositories it created for this stack.
    let own_prefix = format!("{}-", prefix.to_ascii_lowercase());
    if !repository.name.starts_with(&own_prefix) {
        problems
            .push(format!("Repository.Name {:?}: must start with {own_prefix:?} (the NamePrefix)", repository.name));
    }

    let mut compute_environments = BTreeMap::new();
    let ce_docs = doc
        .compute_environments
        .clone()
        .unwrap_or_else(|| BTreeMap::from([(DEFAULT_KEY.to_owned(), Default::default())]));
    if ce_docs.is_empty() {
        problems.push("ComputeEnvironments: declare at least one".into());
    }
    for (key, ce) in &ce_docs {
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
            ComputeEnvironment { name: name(key), kind, max_vcpus: max_vcpus as u32, ecs_cluster_arn: None },
        );
    }

    let mut job_queues = BTreeMap::new();
    let queue_docs = doc.job_queues.clone().unwrap_or_else(|| {
        let first = ce_docs.keys().next().cloned().unwrap_or_else(|| DEFAULT_KEY.to_owned());
        BTreeMap::from([(
            DEFAULT_KEY.to_owned(),
            JobQueueDoc { priority: Some(1), compute_environments: Some(vec![first]), ..JobQueueDoc::default() },
        )])
    });
    if queue_docs.is_empty() {
        problems.push("JobQueues: declare at least one".into());
    }
    for (key, queue) in &queue_docs {
        let path = format!("JobQueues.{key}");
        if !valid_key(key) {
            problems.push(format!("{path}: keys are 1-40 letters, digits, - or _"));
        }
        let order = queue.compute_environments.clone().unwrap_or_else(|| ce_docs.keys().take(1).cloned().collect());
        if order.is_empty() || order.len() > 3 {
            problems.push(format!("{path}.ComputeEnvironments: name 1 to 3 compute environments"));
        }
        for ce in &order {
            if !ce_docs.contains_key(ce) {
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
                problems
                    .push(format!("{path}.CancelStuckJobs {other:?}: use Never (the default), Diagnosed or Always"));
                CancelStuckJobs::Never
            }
        };
        job_queues.insert(
            key.clone(),
            JobQueue {
                name: name(key),
                priority: priority as u32,
                compute_environments: order,
                stuck_after_seconds: stuck_after.min(u64::from(u32::MAX)) as u32,
                cancel_stuck_jobs,
            },
        );
    }
    let default_queue = if job_queues.contains_key(DEFAULT_KEY) {
        DEFAULT_KEY.to_owned()
    } else {
        // The highest priority queue (ties: the first key).
        job_queues
            .iter()
            .max_by(|a, b| a.1.priority.cmp(&b.1.priority).then(b.0.cmp(a.0)))
            .map(|(k, _)| k.clone())
            .unwrap_or_default()
    };

    let mut job_definitions = BTreeMap::new();
    let definition_docs = doc
        .job_definitions
        .clone()
        .unwrap_or_else(|| BTreeMap::from([(DEFAULT_KEY.to_owned(), JobDefinitionDoc::default())]));
    if definition_docs.is_empty() {
        problems.push("JobDefinitions: declare at least one".into());
    }
    for (key, definition) in &definition_docs {
        let path = format!("JobDefinitions.{key}");
        if !valid_key(key) {
            problems.push(format!("{path}: keys are 1-40 letters, digits, - or _"));
        }
        let stated = Size::parse_stated(definition.vcpu.as_deref(), definition.memory.as_deref(), DEFAULT_SIZE);
        let size = stated.unwrap_or_else(|errors| {
            problems.extend(errors.iter().map(|err| format!("{path}: {err}")));
            DEFAULT_SIZE
        });
        let architecture = definition.architecture.clone().unwrap_or_else(|| "X86_64".into()).to_ascii_uppercase();
        if architecture != "X86_64" && architecture != "ARM64" {
            problems.push(format!("{path}.Architecture {architecture:?}: use X86_64 or ARM64"));
        }
        let retry_attempts = definition.retry_attempts.unwrap_or(3);
        if !(1..=10).contains(&retry_attempts) {
            problems.push(format!("{path}.RetryAttempts {retry_attempts}: Batch allows 1 to 10"));
        }
        if let Some(timeout) = definition.timeout_seconds {
            if timeout < 60 {
                problems.push(format!("{path}.TimeoutSeconds {timeout}: Batch requires at least 60"));
            }
        }
        let queue = definition.queue.clone().unwrap_or_else(|| default_queue.clone());
        if !job_queues.contains_key(&queue) {
            problems.push(format!("{path}.Queue: {queue:?} is not a key of JobQueues"));
        }
        let image = definition.image.clone().unwrap_or_else(|| DEFAULT_IMAGE.to_owned());
        if image.trim().is_empty() {
            problems.push(format!("{path}.Image: give an image"));
        }
        for name in definition
            .environment
            .iter()
            .flatten()
            .map(|(k, _)| k)
            .chain(definition.secrets.iter().flatten().map(|(k, _)| k))
        {
            if name.starts_with("AWS_BATCH") {
                problems
                    .push(format!("{path}: environment variable {name:?}: names starting with AWS_BATCH are reserved"));
            }
        }
        let command = definition.command.clone().unwrap_or_else(|| {
            if definition.image.is_none() {
                vec!["python3".into(), "-c".into(), DEFAULT_SCRIPT.into()]
            } else {
                vec![]
            }
        });
        job_definitions.insert(
            key.clone(),
            JobDefinition {
                name: name(key),
                image,
                size,
                command,
                environment: definition.environment.clone().unwrap_or_default(),
                secrets: definition.secrets.clone().unwrap_or_default(),
                architecture,
                retry_attempts: retry_attempts as u32,
                retry_rules: retries::resolve_rules(
                    &path,
                    definition.retry_on.as_deref().unwrap_or_default(),
                    &mut problems,
                ),
                max_resizes: parse_resizes(&path, definition.max_resizes.as_deref(), 0, &mut problems),
                timeout_seconds: definition.timeout_seconds.map(|t| t as u32),
                log_group: definition.log_group.clone().unwrap_or_else(|| DEFAULT_LOG_GROUP.to_owned()),
                queue,
                allow_overrides: definition.allow_overrides.unwrap_or(true),
            },
        );
    }

    let queue_keys = job_queues.keys().cloned().collect();
    let mut pipelines =
        resolve_pipelines(&doc.pipelines.unwrap_or(Value::Null), &job_definitions, &queue_keys, &mut problems);
    check_capacity(&compute_environments, &job_queues, &job_definitions, &mut pipelines, &mut problems);
    let triggers = resolve_triggers(doc.triggers.unwrap_or_default(), &job_definitions, &pipelines, &mut problems);
    if let (Some(bucket), Some(folder)) = (&roles.input_bucket, &roles.run_data_prefix) {
        for (key, rule) in &triggers.s3 {
            let same_bucket = rule.bucket.as_ref().is_none_or(|b| b == bucket);
            if same_bucket && (folder.starts_with(&rule.prefix) || rule.prefix.starts_with(folder.as_str())) {
                problems.push(format!(
                    "Triggers.S3.{key}: prefix {:?} overlaps Roles.RunDataPrefix {folder:?}: what stages write there would start jobs again; give the trigger a prefix of its own (e.g. \"incoming/\")",
                    rule.prefix
                ));
            }
        }
    }

    if problems.is_empty() {
        Ok(Declared {
            name_prefix: prefix,
            network,
            roles,
            repository,
            compute_environments,
            job_queues,
            job_definitions,
            default_queue,
            pipelines,
            triggers,
        })
    } else {
        Err(ConfigProblems { problems })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn network_only() -> Value {
        json!({"ServiceToken": "arn:aws:lambda:us-east-1:123456789012:function:bootstrap",
               "Network": {"Subnets": ["subnet-1", "subnet-2"], "SecurityGroups": ["sg-1"]}})
    }

    #[test]
    fn only_the_network_gives_the_recipe() {
        let config = declare(&network_only()).unwrap();
        assert_eq!(
            config.compute_environments["default"],
            ComputeEnvironment {
                name: "batchline-default".into(),
                kind: ComputeType::Fargate,
                max_vcpus: 256,
                ecs_cluster_arn: None
            }
        );
        assert_eq!(config.job_queues["default"].priority, 1);
        assert_eq!(config.job_queues["default"].compute_environments, ["default"]);
        let definition = &config.job_definitions["default"];
        assert_eq!(definition.size.to_string(), "0.25 vCPU / 512 MiB");
        assert_eq!(definition.log_group, "/aws/batch/job");
        assert_eq!(definition.image, DEFAULT_IMAGE);
        assert_eq!(definition.command[0], "python3");
        assert!(config.network.assign_public_ip);
        assert!(config.repository.scan_on_push);
        assert!(!config.repository.delete_on_stack_delete);
        assert_eq!(config.roles.execution_role_name, "batchline-execution");
        assert_eq!(config.default_queue, "default");
    }

    #[test]
    fn values_are_read_from_cloudformation_strings() {
        let properties = json!({
            "ServiceToken": "x", "ServiceTimeout": "600", "NamePrefix": "demo",
            "Network": {"Subnets": "subnet-1, subnet-2", "SecurityGroups": "sg-1", "AssignPublicIp": "false"},
            "Repository": {"DeleteOnStackDelete": "true", "ScanOnPush": "false"},
            "ComputeEnvironments": {"main": {"Type": "FARGATE", "MaxVcpus": "64"}, "spot": {"Type": "FARGATE_SPOT", "MaxVcpus": 32}},
            "JobQueues": {"fast": {"Priority": "10", "ComputeEnvironments": ["main"]}, "cheap": {"Priority": "1", "ComputeEnvironments": "spot,main"}},
            "JobDefinitions": {"big": {"Image": "repo/image:1", "Vcpu": "2", "Memory": "8192", "RetryAttempts": "2", "TimeoutSeconds": "900", "Queue": "cheap"}}
        });
        let config = declare(&properties).unwrap();
        assert_eq!(config.network.subnets, ["subnet-1", "subnet-2"]);
        assert!(!config.network.assign_public_ip);
        assert!(config.repository.delete_on_stack_delete && !config.repository.scan_on_push);
        assert_eq!(config.compute_environments["spot"].max_vcpus, 32);
        assert_eq!(config.job_queues["cheap"].compute_environments, ["spot", "main"]);
        assert_eq!(config.default_queue, "fast", "highest priority when no queue is called default");
        let big = &config.job_definitions["big"];
        assert_eq!(
            (big.size.to_string().as_str(), big.retry_attempts, big.timeout_seconds),
            ("2 vCPU / 8192 MiB", 2, Some(900))
        );
        assert_eq!(big.name, "demo-big");
        assert!(big.command.is_empty(), "an image brings its own command");
    }

    #[test]
    fn queues_say_when_a_job_is_stuck_and_which_stuck_jobs_are_cancelled() {
        let mut properties = network_only();
        properties["JobQueues"] = json!({
            "default": {},
            "strict": {"StuckAfterSeconds": "600", "CancelStuckJobs": "Diagnosed"}
        });
        let config = declare(&properties).unwrap();
        let default = &config.job_queues["default"];
        assert_eq!((default.stuck_after_seconds, default.cancel_stuck_jobs), (1800, CancelStuckJobs::Never));
        let strict = &config.job_queues["strict"];
        assert_eq!((strict.stuck_after_seconds, strict.cancel_stuck_jobs), (600, CancelStuckJobs::Diagnosed));
        for (queue, expected) in [
            (json!({"StuckAfterSeconds": "30"}), "JobQueues.default.StuckAfterSeconds 30: use 60 to 604800"),
            (json!({"CancelStuckJobs": "Sometimes"}), "JobQueues.default.CancelStuckJobs \"Sometimes\": use Never"),
        ] {
            properties["JobQueues"] = json!({"default": queue});
            let err = declare(&properties).unwrap_err().to_string();
            assert!(err.contains(expected), "expected {expected:?} in {err}");
        }
    }

    #[test]
    fn the_deployed_config_round_trips_through_json() {
        let config = declare(&network_only()).unwrap().assume_provisioned(|kind, name| format!("arn:{kind}/{name}"));
        assert_eq!(config.job_queues["default"].arn, "arn:job-queue/batchline-default");
        let text = serde_json::to_string(&config).unwrap();
        assert_eq!(serde_json::from_str::<StackConfig>(&text).unwrap(), config);
    }

    #[test]
    fn problems_are_named_with_their_path() {
        let check = |properties: Value, expected: &str| {
            let err = declare(&properties).unwrap_err().to_string();
            assert!(err.contains(expected), "expected {expected:?} in {err}");
        };
        check(json!({"ServiceToken": "x"}), "Network is required");
        let mut unknown = network_only();
        unknown["JobDefinitions"] = json!({"default": {"Memroy": "1024"}});
        check(unknown, "JobDefinitions.default.Memroy: unknown field `Memroy`, expected one of `Image`");
        let mut bad_size = network_only();
        bad_size["JobDefinitions"] = json!({"default": {"Vcpu": "1", "Memory": "1024"}});
        check(bad_size, "JobDefinitions.default: 1 vCPU with 1024 MiB is not a valid Fargate size");
        let mut bad_key = network_only();
        bad_key["ComputeEnvironments"] = json!({"no spaces": {}});
        check(bad_key, "ComputeEnvironments.no spaces: keys are");
        let mut bad_queue = network_only();
        bad_queue["JobQueues"] = json!({"default": {"ComputeEnvironments": ["missing"]}});
        check(bad_queue, "\"missing\" is not a key of ComputeEnvironments");
        let mut bad_number = network_only();
        bad_number["ComputeEnvironments"] = json!({"default": {"MaxVcpus": "lots"}});
        check(bad_number, "ComputeEnvironments.default.MaxVcpus: \"lots\" is not a whole number");
        check(json!({"Network": {"Subnets": ["vpc-1"], "SecurityGroups": ["sg-1"]}}), "\"vpc-1\" is not a subnet id");
        let mut bad_trigger = network_only();
        bad_trigger["Triggers"] = json!({"S3": {"orders": {"Prefix": "in/", "JobDefinition": "nope"}}});
        check(bad_trigger, "Triggers.S3.orders.JobDefinition: \"nope\" is not a key of JobDefinitions");
        let mut bad_repo = network_only();
        bad_repo["Repository"] = json!({"Name": "Has_Upper"});
        check(bad_repo, "Repository.Name");
    }

    #[test]
    fn what_the_roles_and_repository_may_reach_is_held_to_the_stack() {
        let check = |properties: Value, expected: &str| {
            let problems = declare(&properties).unwrap_err().problems.join("; ");
            assert!(problems.contains(expected), "{expected:?} in {problems:?}");
        };
        let mut any_bucket = network_only();
        any_bucket["Roles"] = json!({"InputBucket": "*"});
        check(any_bucket, "Roles.InputBucket \"*\": name one S3 bucket");
        let mut foreign_repository = network_only();
        foreign_repository["Repository"] = json!({"Name": "someone-elses"});
        check(foreign_repository, "must start with \"batchline-\"");
        let mut not_a_policy = network_only();
        not_a_policy["Roles"] = json!({"PermissionsBoundary": "AdministratorAccess"});
        check(not_a_policy, "Roles.PermissionsBoundary");
        let mut fine = network_only();
        fine["Roles"] = json!({"InputBucket": "my-input", "PermissionsBoundary": "arn:aws:iam::123456789012:policy/b"});
        fine["Repository"] = json!({"Name": "batchline-images/app"});
        let declared = declare(&fine).unwrap();
        assert_eq!(declared.roles.permissions_boundary.as_deref(), Some("arn:aws:iam::123456789012:policy/b"));
    }

    #[test]
    fn retry_rules_that_batch_would_refuse_or_could_not_fit_are_refused_at_deploy() {
        let rule = json!({"ExitCode": "3", "Action": "Retry"});
        let mut properties = network_only();
        properties["JobDefinitions"] = json!({
            "many": {"RetryOn": [rule, rule, rule, rule]},
            "odd": {"RetryOn": [{"ExitCode": "3x", "Action": "Again"}, {"Action": "Exit"}, {"Reason": "semi;colon", "Action": "Exit"}]},
            "fine": {"RetryAttempts": "2", "RetryOn": [rule, {"StatusReason": "Task failed to start*", "Action": "Retry"}]}
        });
        properties["Pipelines"] = json!({"p": {"Stages": {"a": {"JobDefinition": "fine", "RetryAttempts": "11"}}}});
        let problems = declare(&properties).unwrap_err().problems.join("\n");
        for expected in [
            "JobDefinitions.many.RetryOn: 4 rules; at most 3",
            "JobDefinitions.odd.RetryOn[0].Action \"Again\": use Retry or Exit",
            "JobDefinitions.odd.RetryOn[1]: name ExitCode, StatusReason or Reason",
            "JobDefinitions.odd.RetryOn[2].Reason \"semi;colon\"",
            "Pipelines.p.Stages.a.RetryAttempts \"11\": Batch allows 1 to 10",
        ] {
            assert!(problems.contains(expected), "{expected:?} in\n{problems}");
        }
        assert!(!problems.contains("JobDefinitions.fine"), "{problems}");
        // A stage's own rules, with its definition's attempts
        properties["JobDefinitions"] = json!({"fine": {"RetryAttempts": "2", "RetryOn": [rule]}});
        properties["Pipelines"] = json!({"p": {"Stages": {
            "a": {"JobDefinition": "fine", "RetryOn": [{"ExitCode": "1*", "Action": "Retry"}]},
            "b": {"JobDefinition": "fine", "After": "a"}
        }}});
        let declared = declare(&properties).unwrap();
        let own = declared.pipelines["p"].stages["a"].retry.clone().unwrap();
        assert_eq!((own.attempts, own.rules[0].on_exit_code.as_deref()), (2, Some("1*")));
        assert_eq!(declared.pipelines["p"].stages["b"].retry, None, "the definition's, registered with it");
        assert_eq!(declared.job_definitions["fine"].retry_rules[0].on_exit_code.as_deref(), Some("3"));
    }

    #[test]
    fn what_a_queue_can_never_run_is_refused_at_deploy_and_stages_know_their_queues_limit() {
        let mut properties = network_only();
        properties["ComputeEnvironments"] = json!({"small": {"MaxVcpus": "2"}, "spot": {"Type": "FARGATE_SPOT"}});
        properties["JobQueues"] =
            json!({"default": {"ComputeEnvironments": ["small"]}, "spot": {"ComputeEnvironments": ["spot"]}});
        properties["JobDefinitions"] = json!({
            "huge": {"Vcpu": "4", "Memory": "8192"},
            "graviton": {"Architecture": "ARM64", "Queue": "spot"},
            "fine": {"Vcpu": "2", "Memory": "4096"},
            "arm": {"Architecture": "ARM64"}
        });
        properties["Pipelines"] = json!({"p": {"Stages": {
            "a": {"JobDefinition": "fine"},
            "b": {"JobDefinition": "arm", "Queue": "spot", "After": "a"},
            "c": {"JobDefinition": "fine", "Vcpu": "4", "Memory": "8192", "After": "a"}
        }}});
        let problems = declare(&properties).unwrap_err().problems.join("\n");
        for expected in [
            "JobDefinitions.huge: 4 vCPU / 8192 MiB is more than queue \"default\" can ever run (its compute environments' largest MaxVcpus is 2)",
            "JobDefinitions.graviton: ARM64 jobs cannot run on queue \"spot\"",
            "Pipelines.p.Stages.b: ARM64 jobs cannot run on queue \"spot\"",
            "Pipelines.p.Stages.c: 4 vCPU / 8192 MiB is more than queue \"default\"",
        ] {
            assert!(problems.contains(expected), "{expected:?} in\n{problems}");
        }
        assert!(!problems.contains("JobDefinitions.fine") && !problems.contains("JobDefinitions.arm"), "{problems}");
        // A fit configuration: each stage knows its queue's limit.
        properties["JobDefinitions"] = json!({"fine": {"Vcpu": "2", "Memory": "4096"}});
        properties["Pipelines"] = json!({"p": {"Stages": {"a": {"JobDefinition": "fine"}}, "OnFailure": {"JobDefinition": "fine", "Queue": "spot"}}});
        let pipelines = declare(&properties).unwrap().pipelines;
        assert_eq!(pipelines["p"].stages["a"].max_vcpus, Some(2));
        assert_eq!(pipelines["p"].on_failure.as_ref().unwrap().max_vcpus, Some(256));
    }

    #[test]
    fn stages_may_write_under_the_run_data_folder_of_the_input_bucket_and_no_trigger_may_watch_it() {
        let declared = |roles: Value, triggers: Value| {
            let mut properties = network_only();
            properties["Roles"] = roles;
            properties["Triggers"] = triggers;
            declare(&properties)
        };
        let in_folder =
            json!({"S3": {"in": {"Bucket": "my-input", "Prefix": "incoming/", "JobDefinition": "default"}}});
        // A bucket alone: stages write under runs/, and each is told its run's folder.
        let roles = declared(json!({"InputBucket": "my-input"}), in_folder.clone()).unwrap().roles;
        assert_eq!(roles.run_data_prefix.as_deref(), Some("runs/"));
        assert_eq!(roles.run_data_uri("orders-1a2b").as_deref(), Some("s3://my-input/runs/orders-1a2b/"));
        let policy = crate::provision::job_role_policy(&roles).unwrap();
        let write = json!({"Effect": "Allow", "Action": "s3:PutObject", "Resource": "arn:aws:s3:::my-input/runs/*"});
        assert!(policy["Statement"].as_array().unwrap().contains(&write), "{policy}");
        // Another folder, or none ("" turns writing off); no bucket, nothing to write to.
        let roles = declared(json!({"InputBucket": "my-input", "RunDataPrefix": "work/data/"}), in_folder.clone());
        assert_eq!(roles.unwrap().roles.run_data_prefix.as_deref(), Some("work/data/"));
        let roles = declared(json!({"InputBucket": "my-input", "RunDataPrefix": ""}), in_folder.clone()).unwrap().roles;
        assert_eq!(roles.run_data_prefix, None);
        assert!(!crate::provision::job_role_policy(&roles).unwrap().to_string().contains("PutObject"));
        assert_eq!(declared(json!({}), json!({})).unwrap().roles.run_data_uri("r"), None);
        // Refused: a folder without a bucket, a malformed folder, a trigger that would fire on
        // what stages write (or whose objects stages could overwrite).
        let problems = |roles: Value, triggers: Value| declared(roles, triggers).unwrap_err().problems.join("; ");
        assert!(problems(json!({"RunDataPrefix": "runs/"}), json!({})).contains("name the bucket too"));
        for bad in ["runs", "/runs/", "runs//x/", "run*/", "ru ns/"] {
            let found = problems(json!({"InputBucket": "my-input", "RunDataPrefix": bad}), json!({}));
            assert!(found.contains("Roles.RunDataPrefix"), "{bad:?}: {found}");
        }
        for (bucket, prefix) in [(json!("my-input"), ""), (json!(null), "runs/"), (json!("my-input"), "runs/orders/")] {
            let watching = json!({"S3": {"loop": {"Bucket": bucket, "Prefix": prefix, "JobDefinition": "default"}}});
            let found = problems(json!({"InputBucket": "my-input"}), watching);
            assert!(
                found.contains("Triggers.S3.loop: prefix") && found.contains("overlaps Roles.RunDataPrefix"),
                "{found}"
            );
        }
        let elsewhere = json!({"S3": {"other": {"Bucket": "other-bucket", "Prefix": "", "JobDefinition": "default"}}});
        assert!(declared(json!({"InputBucket": "my-input"}), elsewhere).is_ok(), "another bucket's trigger is fine");
    }
}
