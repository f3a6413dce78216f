//! The document as written: the custom resource's properties, every field optional, unknown fields refused.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct Document {
    /// CloudFormation adds it to every request; read (and checked) only so that the
    /// document's unknown-field check lets it through.
    #[serde(default)]
    #[allow(dead_code)]
    pub service_token: Option<String>,
    /// Likewise, when the template sets a ServiceTimeout.
    #[serde(default, deserialize_with = "super::values::de_opt_number")]
    #[allow(dead_code)]
    pub service_timeout: Option<u64>,
    #[serde(default)]
    pub name_prefix: Option<String>,
    #[serde(default)]
    pub network: Option<NetworkDoc>,
    #[serde(default)]
    pub roles: RolesDoc,
    #[serde(default)]
    pub repository: RepositoryDoc,
    #[serde(default)]
    pub compute_environments: Option<BTreeMap<String, ComputeEnvironmentDoc>>,
    #[serde(default)]
    pub job_queues: Option<BTreeMap<String, JobQueueDoc>>,
    #[serde(default)]
    pub job_definitions: Option<BTreeMap<String, JobDefinitionDoc>>,
    #[serde(default)]
    pub pipelines: Option<Value>,
    #[serde(default)]
    pub triggers: Option<TriggersDoc>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct NetworkDoc {
    #[serde(default, deserialize_with = "super::values::de_opt_string_list")]
    pub subnets: Option<Vec<String>>,
    #[serde(default, deserialize_with = "super::values::de_opt_string_list")]
    pub security_groups: Option<Vec<String>>,
    #[serde(default, deserialize_with = "super::values::de_opt_bool")]
    pub assign_public_ip: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct RolesDoc {
    pub execution_role_name: Option<String>,
    pub job_role_name: Option<String>,
    pub input_bucket: Option<String>,
    pub permissions_boundary: Option<String>,
    pub run_data_prefix: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct RepositoryDoc {
    pub name: Option<String>,
    #[serde(default, deserialize_with = "super::values::de_opt_bool")]
    pub scan_on_push: Option<bool>,
    #[serde(default, deserialize_with = "super::values::de_opt_bool")]
    pub delete_on_stack_delete: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct ComputeEnvironmentDoc {
    #[serde(rename = "Type")]
    pub kind: Option<String>,
    #[serde(default, deserialize_with = "super::values::de_opt_number")]
    pub max_vcpus: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct JobQueueDoc {
    #[serde(default, deserialize_with = "super::values::de_opt_number")]
    pub priority: Option<u64>,
    #[serde(default, deserialize_with = "super::values::de_opt_string_list")]
    pub compute_environments: Option<Vec<String>>,
    #[serde(default, deserialize_with = "super::values::de_opt_number")]
    pub stuck_after_seconds: Option<u64>,
    pub cancel_stuck_jobs: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct JobDefinitionDoc {
    pub image: Option<String>,
    #[serde(default, deserialize_with = "super::values::de_opt_text")]
    pub vcpu: Option<String>,
    #[serde(default, deserialize_with = "super::values::de_opt_text")]
    pub memory: Option<String>,
    #[serde(default, deserialize_with = "super::values::de_opt_string_list")]
    pub command: Option<Vec<String>>,
    #[serde(default)]
    pub environment: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub secrets: Option<BTreeMap<String, String>>,
    pub architecture: Option<String>,
    #[serde(default, deserialize_with = "super::values::de_opt_number")]
    pub retry_attempts: Option<u64>,
    #[serde(default)]
    pub retry_on: Option<Vec<super::retries::RetryRuleDoc>>,
    #[serde(default, deserialize_with = "super::values::de_opt_text")]
    pub max_resizes: Option<String>,
    #[serde(default, deserialize_with = "super::values::de_opt_number")]
    pub timeout_seconds: Option<u64>,
    pub log_group: Option<String>,
    pub queue: Option<String>,
    #[serde(default, deserialize_with = "super::values::de_opt_bool")]
    pub allow_overrides: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct TriggersDoc {
    #[serde(default, rename = "S3")]
    pub s3: BTreeMap<String, S3TriggerDoc>,
    #[serde(default)]
    pub schedules: BTreeMap<String, ScheduleTriggerDoc>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct S3TriggerDoc {
    pub bucket: Option<String>,
    pub prefix: Option<String>,
    pub suffix: Option<String>,
    pub job_definition: Option<String>,
    pub pipeline: Option<String>,
    #[serde(default, deserialize_with = "super::values::de_opt_number")]
    pub memory_per_input_byte: Option<u64>,
    #[serde(default)]
    pub parameters: Option<BTreeMap<String, String>>,
    pub coalesce: Option<CoalesceDoc>,
}

/// An S3 trigger's `Coalesce` block: numbers as CloudFormation sends them, strings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct CoalesceDoc {
    #[serde(default, deserialize_with = "super::values::de_opt_text")]
    pub window_seconds: Option<String>,
    #[serde(default, deserialize_with = "super::values::de_opt_text")]
    pub max_objects: Option<String>,
    #[serde(default, deserialize_with = "super::values::de_opt_text")]
    pub items_per_child: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct ScheduleTriggerDoc {
    /// The EventBridge rule's name, when it is not the key (a template can compute it:
    /// keys must be literal).
    pub rule: Option<String>,
    pub job_definition: Option<String>,
    pub pipeline: Option<String>,
    #[serde(default)]
    pub parameters: Option<BTreeMap<String, String>>,
}
