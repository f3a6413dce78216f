//! The stack configuration as deployed: what bootstrap provisioned and published, read by every function.
//!
//! Bootstrap declares the resources from the custom resource's properties (its
//! `declaration` module parses and validates the CloudFormation document into the
//! declared types here: [`ComputeEnvironment`], [`JobQueue`], [`JobDefinition`],
//! [`RoleNames`], [`Repository`]), provisions each, and publishes the [`StackConfig`]:
//! every resource [`Provisioned`], with its ARN, so no reader has to ask "has bootstrap
//! run?". Submit and job-events read it from the table, cached per container.
//!
//! The JSON shape is the stored format: a provisioned resource is its declaration's
//! fields plus `arn` (`uri` for the repository; `executionRoleArn` and `jobRoleArn` for
//! the roles), as earlier releases wrote it.

use std::collections::BTreeMap;
use std::ops::Deref;

use serde::{Deserialize, Serialize};

use crate::model::fargate::Size;
use crate::model::pipeline::Pipeline;

pub const DEFAULT_KEY: &str = "default";
pub const DEFAULT_IMAGE: &str = "public.ecr.aws/docker/library/python:3.12-alpine";
pub const DEFAULT_LOG_GROUP: &str = "/aws/batch/job";
pub const EXECUTION_POLICY_ARN: &str = "arn:aws:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy";

/// The recipe's processing job: plain Python, so a fresh stack runs a job before any image is pushed.
pub const DEFAULT_SCRIPT: &str = r#"import json, os, time
job = os.environ.get("AWS_BATCH_JOB_ID", "local")
print(f"batchline job {job} started")
source = os.environ.get("INPUT_BUCKET"), os.environ.get("INPUT_KEY")
if all(source):
    print(f"input: s3://{source[0]}/{source[1]} ({os.environ.get('INPUT_SIZE', '?')} bytes)")
for step in range(1, 6):
    print(f"processing step {step}/5")
    time.sleep(1)
print(json.dumps({"status": "success", "job": job}))
"#;

/// The deployed configuration: every default filled in, physical names chosen, every
/// resource provisioned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StackConfig {
    pub name_prefix: String,
    pub network: Network,
    pub roles: Roles,
    pub repository: ProvisionedRepository,
    pub compute_environments: BTreeMap<String, Provisioned<ComputeEnvironment>>,
    pub job_queues: BTreeMap<String, Provisioned<JobQueue>>,
    pub job_definitions: BTreeMap<String, Provisioned<JobDefinition>>,
    /// The key of the queue jobs go to unless told otherwise.
    pub default_queue: String,
    #[serde(default)]
    pub pipelines: BTreeMap<String, Pipeline>,
    pub triggers: Triggers,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Network {
    pub subnets: Vec<String>,
    pub security_groups: Vec<String>,
    pub assign_public_ip: bool,
}

/// A declared resource that exists: the declaration and the ARN bootstrap got for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Provisioned<T> {
    #[serde(flatten)]
    pub spec: T,
    pub arn: String,
}

impl<T> Deref for Provisioned<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.spec
    }
}

/// The repository as provisioned: the declaration and the URI images are pushed to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProvisionedRepository {
    #[serde(flatten)]
    pub spec: Repository,
    pub uri: String,
}

impl Deref for ProvisionedRepository {
    type Target = Repository;
    fn deref(&self) -> &Repository {
        &self.spec
    }
}

/// The roles as declared: their names, and the bucket the job role may read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoleNames {
    pub execution_role_name: String,
    pub job_role_name: String,
    pub input_bucket: Option<String>,
    /// The managed policy that caps both roles (the template's `RoleBoundary`): whatever
    /// bootstrap puts on them, they can do no more than it allows.
    #[serde(default)]
    pub permissions_boundary: Option<String>,
    /// Where in the input bucket a run's stages may write (`runs/`): the job role may put
    /// objects under it, and every stage is told its run's folder there.
    #[serde(default)]
    pub run_data_prefix: Option<String>,
}

impl RoleNames {
    /// The S3 folder of a run's data, `s3://<input bucket>/<run data prefix><run id>/`,
    /// when the stack has both.
    pub fn run_data_uri(&self, run_id: &str) -> Option<String> {
        let (bucket, prefix) = (self.input_bucket.as_ref()?, self.run_data_prefix.as_ref()?);
        Some(format!("s3://{bucket}/{prefix}{run_id}/"))
    }
}

/// The roles as provisioned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Roles {
    #[serde(flatten)]
    pub names: RoleNames,
    pub execution_role_arn: String,
    pub job_role_arn: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Repository {
    pub name: String,
    pub scan_on_push: bool,
    pub delete_on_stack_delete: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ComputeType {
    Fargate,
    FargateSpot,
}

impl ComputeType {
    pub fn as_str(&self) -> &'static str {
        match self {
            ComputeType::Fargate => "FARGATE",
            ComputeType::FargateSpot => "FARGATE_SPOT",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ComputeEnvironment {
    pub name: String,
    pub kind: ComputeType,
    pub max_vcpus: u32,
    /// The ECS cluster Batch made for it (its tasks' ARNs name it): known once
    /// provisioned; configurations of earlier releases lack it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ecs_cluster_arn: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobQueue {
    pub name: String,
    pub priority: u32,
    /// Keys of compute environments, in order of preference.
    pub compute_environments: Vec<String>,
    /// How long a job may wait in RUNNABLE before the sweep calls it stuck.
    #[serde(default = "default_stuck_after")]
    pub stuck_after_seconds: u32,
    /// Which stuck jobs the sweep cancels.
    #[serde(default)]
    pub cancel_stuck_jobs: CancelStuckJobs,
}

/// The limit a queue has unless it declares one: half an hour, well past a Fargate
/// task's usual start (under a minute) and a modest backlog's drain.
pub const DEFAULT_STUCK_AFTER_SECONDS: u32 = 1800;

fn default_stuck_after() -> u32 {
    DEFAULT_STUCK_AFTER_SECONDS
}

/// Which jobs waiting in RUNNABLE past their queue's limit the sweep cancels (all of them
/// are counted in the `StuckJobs` metric either way).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CancelStuckJobs {
    /// None: they are reported only.
    #[default]
    Never,
    /// Those with a cause that waiting cannot cure: a size above every compute
    /// environment's `MaxVcpus`, an architecture none offers, a disabled or invalid queue
    /// or compute environment (see `model::stuck`).
    Diagnosed,
    /// All of them, a backlog waiting for capacity too.
    Always,
}

impl JobQueue {
    /// The most vCPU one job of this queue can be given: the largest `MaxVcpus` of its
    /// compute environments (`environment` finds one by key); 0 with none.
    pub fn max_vcpus<'a>(&self, environment: impl Fn(&str) -> Option<&'a ComputeEnvironment>) -> u32 {
        self.compute_environments.iter().filter_map(|key| environment(key)).map(|ce| ce.max_vcpus).max().unwrap_or(0)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobDefinition {
    pub name: String,
    pub image: String,
    pub size: Size,
    pub command: Vec<String>,
    pub environment: BTreeMap<String, String>,
    pub secrets: BTreeMap<String, String>,
    pub architecture: String,
    pub retry_attempts: u32,
    /// Which exits Batch retries (the default when empty): see [`crate::model::retry`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retry_rules: Vec<crate::model::retry::RetryRule>,
    /// How often a single job of this definition killed for lack of memory is submitted
    /// again one size up (0: never). Pipeline stages resize by their pipeline's rule.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max_resizes: u32,
    pub timeout_seconds: Option<u32>,
    pub log_group: String,
    /// Key of the queue its jobs go to.
    pub queue: String,
    /// Whether API callers may override its command and environment. Off, a caller can
    /// only fill the parameters the definition's command names (`Ref::name`).
    #[serde(default = "allowed")]
    pub allow_overrides: bool,
}

fn allowed() -> bool {
    true
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Triggers {
    pub s3: BTreeMap<String, S3Trigger>,
    pub schedules: BTreeMap<String, ScheduleTrigger>,
}

/// What a trigger starts: one job, or a pipeline run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Target {
    JobDefinition(String),
    Pipeline(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct S3Trigger {
    pub bucket: Option<String>,
    pub prefix: String,
    pub suffix: String,
    pub target: Target,
    /// Memory of at least this many times the object's size (snapped up to a valid size).
    pub memory_per_input_byte: Option<u32>,
    pub parameters: BTreeMap<String, String>,
    /// Objects matched within a window go together: one run (one array) per window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coalesce: Option<Coalesce>,
}

impl S3Trigger {
    /// Whether the rule takes an object of `bucket` at `key` (its bucket, if it names one, its
    /// key prefix and suffix).
    pub fn matches(&self, bucket: &str, key: &str) -> bool {
        self.bucket.as_deref().is_none_or(|b| b == bucket)
            && key.starts_with(&self.prefix)
            && key.ends_with(&self.suffix)
    }
}

/// An S3 trigger's `Coalesce` block, resolved (see `model::coalesce`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Coalesce {
    pub window_seconds: u32,
    pub max_objects: u32,
    /// Objects per child of the window's array (1 unless the trigger says).
    pub items_per_child: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleTrigger {
    pub target: Target,
    pub parameters: BTreeMap<String, String>,
}

impl StackConfig {
    /// The queue a job definition's jobs go to.
    pub fn queue_for(&self, job_definition: &JobDefinition) -> Option<&Provisioned<JobQueue>> {
        self.job_queues.get(&job_definition.queue)
    }

    /// The default queue.
    pub fn default_job_queue(&self) -> Option<&Provisioned<JobQueue>> {
        self.job_queues.get(&self.default_queue)
    }

    /// The most vCPU one job of `queue` can be given (see [`JobQueue::max_vcpus`]); `None`
    /// when none of its compute environments is known here.
    pub fn queue_capacity(&self, queue: &Provisioned<JobQueue>) -> Option<u32> {
        Some(queue.spec.max_vcpus(|key| self.compute_environments.get(key).map(|ce| &ce.spec))).filter(|max| *max > 0)
    }
}
