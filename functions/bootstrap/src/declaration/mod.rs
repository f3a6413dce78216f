//! The stack configuration document: the bootstrap custom resource's properties, parsed, validated and resolved.
//!
//! Its keys, defaults and limits are documented once, in the stack configuration reference,
//! `docs/src/reference/stack-configuration.md`, whose example uses every key and which
//! `tests/reference.rs` holds to [`declare`]: it fails when the reference names a key
//! bootstrap refuses or leaves out one it accepts. A new key is documented there.
//!
//! CloudFormation sends every property value as a string (numbers and booleans too) and
//! always adds `ServiceToken` (and `ServiceTimeout` when set), so numbers and booleans are
//! read from strings or native JSON alike, and lists from JSON lists or comma-separated
//! strings. Unknown properties are refused with their path, so a typo fails `sam deploy`
//! instead of being silently ignored. Each section has its module, which fills in its
//! defaults and returns every problem it finds with its path; entries are named by their
//! keys, by which stages and triggers name queues and job definitions.

use std::collections::BTreeMap;

use batchline::model::pipeline::Pipeline;
use batchline::model::stack::{
    ComputeEnvironment, JobDefinition, JobQueue, Network, Provisioned, ProvisionedRepository, Repository, RoleNames,
    Roles, StackConfig, Triggers,
};
use serde_json::Value;

mod compute;
mod document;
mod job_definitions;
pub mod maps;
mod network;
mod pipelines;
mod repository;
mod retries;
mod roles;
mod stack_scope;
mod triggers;
mod values;

use compute::{check_capacity, default_queue, resolve_compute_environments, resolve_job_queues};
use document::Document;
use job_definitions::resolve_job_definitions;
use network::resolve_network;
use pipelines::resolve_pipelines;
use repository::resolve_repository;
use roles::resolve_roles;
pub use roles::DEFAULT_RUN_DATA_PREFIX;
pub use stack_scope::{check_in_stack, SecretSource, StackPlace};
use triggers::{check_coalesce, check_parameters, check_run_data_overlap, resolve_triggers};

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

/// Batch names: letters, digits, `-`, `_`, at most 128.
fn valid_batch_name(name: &str) -> bool {
    (1..=128).contains(&name.len()) && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// The physical name of the entry `key`: `<NamePrefix>-<key>`, so that stacks with
/// different prefixes can share an account.
fn physical_name(prefix: &str, key: &str) -> String {
    format!("{prefix}-{key}")
}

/// Resolves the sections in the order their problems are reported; each later section is
/// checked against those it names (queues against compute environments, job definitions
/// against queues, and so on).
fn resolve(doc: Document) -> Result<Declared, ConfigProblems> {
    let mut problems = Vec::new();
    let prefix = doc.name_prefix.clone().unwrap_or_else(|| "batchline".to_owned());
    if !valid_batch_name(&prefix) || prefix.len() > 40 {
        problems.push(format!("NamePrefix {prefix:?}: use 1-40 letters, digits, - or _"));
    }
    let network = resolve_network(doc.network.as_ref(), &mut problems);
    let roles = resolve_roles(&doc.roles, &prefix, &mut problems);
    let repository = resolve_repository(&doc.repository, &prefix, &mut problems);
    let compute_environments = resolve_compute_environments(doc.compute_environments.as_ref(), &prefix, &mut problems);
    let job_queues = resolve_job_queues(doc.job_queues.as_ref(), &compute_environments, &prefix, &mut problems);
    let default_queue = default_queue(&job_queues);
    let job_definitions =
        resolve_job_definitions(doc.job_definitions.as_ref(), &job_queues, &default_queue, &prefix, &mut problems);
    let queue_keys = job_queues.keys().cloned().collect();
    let mut pipelines =
        resolve_pipelines(&doc.pipelines.unwrap_or(Value::Null), &job_definitions, &queue_keys, &mut problems);
    check_capacity(&compute_environments, &job_queues, &job_definitions, &mut pipelines, &mut problems);
    let triggers = resolve_triggers(doc.triggers.unwrap_or_default(), &job_definitions, &pipelines, &mut problems);
    check_run_data_overlap(&triggers, &roles, &mut problems);
    check_coalesce(&triggers, &job_definitions, &roles, &mut problems);
    check_parameters(&triggers, &job_definitions, &mut problems);
    maps::check_maps(&pipelines, &roles, &triggers, &mut problems);

    if !problems.is_empty() {
        return Err(ConfigProblems { problems });
    }
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use batchline::model::stack::{CancelStuckJobs, ComputeType, DEFAULT_IMAGE};
    use serde_json::json;

    fn network_only() -> Value {
        json!({"ServiceToken": "arn:aws:lambda:us-east-1:123456789012:function:bootstrap",
               "Network": {"Subnets": ["subnet-1", "subnet-2"], "SecurityGroups": ["sg-1"]}})
    }

    /// The network, an input bucket, and `pipelines` started by `triggers`.
    fn with_maps(pipelines: Value, triggers: Value) -> Value {
        let mut properties = network_only();
        properties["Roles"] = json!({"InputBucket": "input"});
        properties["Pipelines"] = pipelines;
        properties["Triggers"] = triggers;
        properties
    }

    #[test]
    fn a_map_stage_is_declared_with_its_block_and_refused_where_it_could_never_run() {
        let pipelines = json!({"thumbnails": {"Stages": {
            "resize": {"JobDefinition": "default", "Map": {"Prefix": "s3://{inputBucket}/{inputPrefix}", "Suffix": ".jpg",
                                                       "ToleratedFailures": "5%", "MaxConcurrency": 500}},
            "report": {"JobDefinition": "default", "After": "resize"}}}});
        let triggers =
            json!({"S3": {"photos": {"Prefix": "incoming/", "Suffix": "_SUCCESS", "Pipeline": "thumbnails"}}});
        let config = declare(&with_maps(pipelines, triggers)).unwrap();
        let map = config.pipelines["thumbnails"].stages["resize"].map.clone().unwrap();
        assert_eq!((map.max_concurrency, map.items_per_child), (Some(500), 1));

        let refused = |pipelines: Value, triggers: Value, roles: Value| {
            let mut properties = with_maps(pipelines, triggers);
            properties["Roles"] = roles;
            declare(&properties).unwrap_err().problems.join("\n")
        };
        let in_bucket = json!({"InputBucket": "input"});
        let other_bucket = json!({"p": {"Stages": {"m": {"JobDefinition": "default", "Map": {"Manifest": "s3://elsewhere/list.txt"}}}}});
        assert!(refused(other_bucket, json!({}), in_bucket.clone())
            .contains("\"elsewhere\" is not Roles.InputBucket (input)"));
        let no_bucket = json!({"p": {"Stages": {"m": {"JobDefinition": "default", "Map": {"Items": "files"}}}}});
        assert!(refused(no_bucket, json!({}), json!({})).contains("needs Roles.InputBucket and Roles.RunDataPrefix"));
        let unknown =
            json!({"p": {"Stages": {"m": {"JobDefinition": "default", "Map": {"Prefix": "s3://input/{day}/"}}}}});
        let scheduled = json!({"Schedules": {"nightly": {"Rule": "r", "Pipeline": "p"}}});
        let why = refused(unknown, scheduled, in_bucket.clone());
        assert!(why.contains("runs started by Triggers.Schedules.r have no {day}"), "{why}");
        assert!(why.contains("runData, runId, scheduledDate, scheduledTime"), "{why}");
        let wrong = json!({"p": {"Stages": {"m": {"JobDefinition": "default", "Map": {"Prefix": "s3://input/x", "Items": "files", "Colour": "red"}}}}});
        assert!(refused(wrong, json!({}), in_bucket.clone()).contains("Colour"), "unknown keys are named");
        let failure_map = json!({"p": {"Stages": {"m": {"JobDefinition": "default"}},
                                       "OnFailure": {"JobDefinition": "default", "Map": {"Items": "files"}}}});
        assert!(refused(failure_map, json!({}), in_bucket).contains("the failure stage is one job, never a map"));
    }

    #[test]
    fn a_coalescing_trigger_is_declared_with_its_window_and_refused_where_its_windows_could_not_run() {
        let pipelines =
            json!({"batches": {"Stages": {"each": {"JobDefinition": "default", "Map": {"Manifest": "{objects}"}}}}});
        let triggers = json!({"S3": {
            "photos": {"Prefix": "photos/", "JobDefinition": "default", "Coalesce": {"WindowSeconds": "60"}},
            "days": {"Prefix": "days/", "Pipeline": "batches", "Coalesce": {"WindowSeconds": 900, "MaxObjects": "2", "ItemsPerChild": "10"}}}});
        let config = declare(&with_maps(pipelines.clone(), triggers)).unwrap();
        let photos = config.triggers.s3["photos"].coalesce.unwrap();
        assert_eq!((photos.window_seconds, photos.max_objects, photos.items_per_child), (60, 10_000, 1));
        let days = config.triggers.s3["days"].coalesce.unwrap();
        assert_eq!((days.window_seconds, days.max_objects, days.items_per_child), (900, 2, 10));

        let refused = |triggers: Value, roles: Value| {
            let mut properties = with_maps(pipelines.clone(), triggers);
            properties["Roles"] = roles;
            properties["JobDefinitions"] = json!({"default": {}, "legacy": {"Command": ["convert", "Ref::inputKey"]}});
            declare(&properties).unwrap_err().problems.join("\n")
        };
        let in_bucket = json!({"InputBucket": "input"});
        let coalescing =
            |coalesce: Value| json!({"S3": {"t": {"Prefix": "in/", "JobDefinition": "default", "Coalesce": coalesce}}});
        for (coalesce, named) in [
            (json!({}), "Coalesce.WindowSeconds: give a whole number from 1 to 900 (required)"),
            (json!({"WindowSeconds": "901"}), "WindowSeconds"),
            (json!({"WindowSeconds": "5", "MaxObjects": "1"}), "MaxObjects: give a whole number from 2 to 10000"),
            (json!({"WindowSeconds": "5", "MaxObjects": "10001"}), "MaxObjects"),
            (json!({"WindowSeconds": "5", "ItemsPerChild": "0"}), "ItemsPerChild"),
            (json!({"WindowSeconds": "5", "Window": "5"}), "Window"),
        ] {
            let why = refused(coalescing(coalesce), in_bucket.clone());
            assert!(why.contains(named), "{named}: {why}");
        }
        let why = refused(coalescing(json!({"WindowSeconds": "5"})), json!({}));
        assert!(why.contains("coalescing needs Roles.InputBucket and Roles.RunDataPrefix"), "{why}");
        let input_ref =
            json!({"S3": {"t": {"Prefix": "in/", "JobDefinition": "legacy", "Coalesce": {"WindowSeconds": "5"}}}});
        let why = refused(input_ref, in_bucket.clone());
        assert!(why.contains("names Ref::input*, which a coalesced child does not have"), "{why}");
        // A pipeline's runs started by a coalescing trigger have {objects}, not {inputKey}.
        let by_key = json!({"batches": {"Stages": {"each": {"JobDefinition": "default", "Map": {"Prefix": "s3://input/{inputPrefix}"}}}}});
        let mut properties = with_maps(
            by_key,
            json!({"S3": {"t": {"Prefix": "in/", "Pipeline": "batches", "Coalesce": {"WindowSeconds": "5"}}}}),
        );
        properties["Roles"] = in_bucket;
        let why = declare(&properties).unwrap_err().problems.join("\n");
        assert!(
            why.contains("runs started by Triggers.S3.t have no {inputPrefix}") && why.contains("objects"),
            "{why}"
        );
    }

    #[test]
    fn a_trigger_whose_events_never_supply_a_parameter_its_jobs_command_names_is_refused() {
        let mut properties = network_only();
        properties["JobDefinitions"] =
            json!({"default": {}, "convert": {"Command": ["convert", "Ref::inputKey", "--width=Ref::width"]}});
        properties["Triggers"] = json!({
            "S3": {"in": {"Prefix": "in/", "JobDefinition": "convert", "Parameters": {"width": "100"}}},
            "Schedules": {"nightly": {"JobDefinition": "convert", "Parameters": {"width": "100"}}}
        });
        let why = declare(&properties).unwrap_err().problems;
        assert_eq!(why.len(), 1, "{why:?}");
        assert!(
            why[0].starts_with(
                "Triggers.Schedules.nightly: the command of job definition \"convert\" names Ref::inputKey,"
            ),
            "{why:?}"
        );
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
