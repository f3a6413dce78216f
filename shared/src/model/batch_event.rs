//! A lenient typed model of EventBridge's "Batch Job State Change" event.
//!
//! Lenient because AWS adds fields over time and omits ones that do not apply: every
//! field but the few that identify the event is optional, unknown fields are skipped
//! rather than refused, and timestamps are epoch milliseconds as Batch sends them. Only
//! what Batchline reads is kept: a batch of 1,000 events holds a few hundred KB instead of
//! every field of every event (the image, the environment, the network interfaces...).
//!
//! The job's container may be described in two ways: `container` (container jobs, Fargate
//! included) or `ecsProperties.taskProperties[].containers[]` (ECS-properties jobs); the same
//! goes for attempts (`attempts[].container` or `attempts[].taskProperties[].containers[]`).
//! Array jobs: the parent carries `arrayProperties.size`, each child `arrayProperties.index`
//! and the id `<parent id>:<index>`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::model::fargate::{parse_memory, parse_vcpu, Size};

pub const DETAIL_TYPE: &str = "Batch Job State Change";
pub const SOURCE: &str = "aws.batch";

/// The EventBridge envelope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobStateChangeEvent {
    /// Unique per event; a redelivered event keeps it.
    pub id: String,
    #[serde(rename = "detail-type")]
    pub detail_type: String,
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Vec<String>>,
    pub detail: JobDetail,
}

/// Batch's job status. Unknown values are kept, not refused.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobStatus {
    Submitted,
    Pending,
    Runnable,
    Starting,
    Running,
    Succeeded,
    Failed,
    #[serde(untagged)]
    Other(String),
}

impl JobStatus {
    pub fn as_str(&self) -> &str {
        match self {
            JobStatus::Submitted => "SUBMITTED",
            JobStatus::Pending => "PENDING",
            JobStatus::Runnable => "RUNNABLE",
            JobStatus::Starting => "STARTING",
            JobStatus::Running => "RUNNING",
            JobStatus::Succeeded => "SUCCEEDED",
            JobStatus::Failed => "FAILED",
            JobStatus::Other(other) => other,
        }
    }

    /// SUCCEEDED and FAILED are final: Batch sends nothing after them.
    pub fn is_terminal(&self) -> bool {
        matches!(self, JobStatus::Succeeded | JobStatus::Failed)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobDetail {
    pub job_id: String,
    pub status: JobStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_arn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_queue: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_definition: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<Vec<Attempt>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<Container>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ecs_properties: Option<EcsProperties>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub array_properties: Option<ArrayProperties>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform_capabilities: Option<Vec<String>>,
    /// The jobs it waits for (Batch's `dependsOn`); it becomes RUNNABLE once they end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depends_on: Option<Vec<JobDependency>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobDependency {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_requirements: Option<Vec<ResourceRequirement>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_stream_name: Option<String>,
    /// The ECS task it ran as: `arn:…:task/<cluster name>/<task id>` (the cluster says
    /// which compute environment ran it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_arn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_platform: Option<RuntimePlatform>,
    /// What the container ran with (what a resubmission of the job repeats).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<Vec<NameValue>>,
    /// Where its logs go (the `awslogs-group` option names the log group).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_configuration: Option<LogConfiguration>,
}

/// A container's log configuration as Batch reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogConfiguration {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_driver: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<BTreeMap<String, String>>,
}

/// An environment variable as Batch reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NameValue {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub value: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimePlatform {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_architecture: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResourceRequirement {
    #[serde(rename = "type")]
    pub kind: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EcsProperties {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_properties: Option<Vec<TaskProperties>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskProperties {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub containers: Option<Vec<Container>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_platform: Option<RuntimePlatform>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attempt {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<Container>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_properties: Option<Vec<TaskProperties>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArrayProperties {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<i64>,
    /// An array parent's children by status (`SUCCEEDED`, `FAILED`, `RUNNING`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_summary: Option<std::collections::BTreeMap<String, i64>>,
}

/// Why a payload is not a Batch Job State Change event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("not JSON: {0}")]
    NotJson(String),
    #[error("not a Batch Job State Change event: {0}")]
    WrongKind(String),
    #[error("malformed Batch Job State Change event: {0}")]
    Malformed(String),
}

impl JobStateChangeEvent {
    /// Parses an event from JSON text (an SQS message body).
    pub fn from_json(text: &str) -> Result<Self, EventError> {
        // The common case is parsed once, straight into the typed event; the JSON tree is
        // built only to say what a refused payload was.
        if let Ok(event) = serde_json::from_str::<Self>(text) {
            if event.detail_type == DETAIL_TYPE && event.source == SOURCE {
                return Ok(event);
            }
        }
        let value: Value = serde_json::from_str(text).map_err(|e| EventError::NotJson(e.to_string()))?;
        Self::from_value(value)
    }

    /// Parses an event, checking first that it is one (so the error says what arrived).
    pub fn from_value(value: Value) -> Result<Self, EventError> {
        let detail_type = value.get("detail-type").and_then(Value::as_str);
        let source = value.get("source").and_then(Value::as_str);
        if detail_type != Some(DETAIL_TYPE) || source != Some(SOURCE) {
            return Err(EventError::WrongKind(format!("detail-type {detail_type:?}, source {source:?}")));
        }
        serde_json::from_value(value).map_err(|e| EventError::Malformed(e.to_string()))
    }

    /// The event's time in epoch milliseconds, if `time` is present and readable.
    pub fn time_millis(&self) -> Option<i64> {
        let time = self.time.as_deref()?;
        let parsed = aws_smithy_types::DateTime::from_str(time, aws_smithy_types::date_time::Format::DateTime).ok()?;
        parsed.to_millis().ok()
    }
}

impl JobDetail {
    /// The queue's name (the last part of its ARN).
    pub fn queue_name(&self) -> Option<&str> {
        self.job_queue.as_deref().map(|arn| arn.rsplit('/').next().unwrap_or(arn))
    }

    /// The job definition's name without its revision.
    pub fn job_definition_name(&self) -> Option<&str> {
        let definition = self.job_definition.as_deref()?;
        let name = definition.rsplit('/').next().unwrap_or(definition);
        Some(name.split(':').next().unwrap_or(name))
    }

    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags.as_ref()?.get(key).map(String::as_str)
    }

    pub fn attempts(&self) -> &[Attempt] {
        self.attempts.as_deref().unwrap_or_default()
    }

    /// An array job's parent (it has a size, and no index).
    pub fn is_array_parent(&self) -> bool {
        self.array_properties.as_ref().is_some_and(|a| a.size.is_some() && a.index.is_none())
    }

    /// Whether the job is a child of an array job (its event names its index).
    pub fn is_array_child(&self) -> bool {
        self.array_properties.as_ref().is_some_and(|a| a.index.is_some())
    }

    /// Every container the job describes, whichever form the event uses.
    pub fn containers(&self) -> Vec<&Container> {
        let mut containers: Vec<&Container> = self.container.iter().collect();
        if let Some(tasks) = self.ecs_properties.as_ref().and_then(|e| e.task_properties.as_ref()) {
            containers.extend(tasks.iter().flat_map(|t| t.containers.iter().flatten()));
        }
        containers
    }

    /// The task's size: the sum of its containers' vCPU and memory requirements. `None`
    /// when the event carries no readable requirements.
    pub fn size(&self) -> Option<Size> {
        let mut quarters = 0;
        let mut memory = 0;
        for requirement in self.containers().into_iter().flat_map(|c| c.resource_requirements.iter().flatten()) {
            match requirement.kind.as_str() {
                "VCPU" => quarters += parse_vcpu(&requirement.value).ok()?.0,
                "MEMORY" => memory += parse_memory(&requirement.value).ok()?,
                _ => {}
            }
        }
        (quarters > 0 && memory > 0)
            .then_some(Size { vcpu: crate::model::fargate::Quarters(quarters), memory_mib: memory })
    }

    /// `X86_64` or `ARM64`, when the job says.
    pub fn cpu_architecture(&self) -> Option<&str> {
        let from_container = self.container.as_ref().and_then(|c| c.runtime_platform.as_ref());
        let from_task = self
            .ecs_properties
            .as_ref()
            .and_then(|e| e.task_properties.as_ref())
            .and_then(|t| t.first())
            .and_then(|t| t.runtime_platform.as_ref());
        from_container.or(from_task).and_then(|p| p.cpu_architecture.as_deref())
    }

    /// The last attempt's container: exit code and reason of the final run.
    pub fn last_attempt_container(&self) -> Option<&Container> {
        let attempt = self.attempts().last()?;
        attempt
            .container
            .as_ref()
            .or_else(|| attempt.task_properties.as_ref()?.iter().flat_map(|t| t.containers.iter().flatten()).next())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal(status: &str) -> Value {
        serde_json::json!({
            "id": "e1", "detail-type": DETAIL_TYPE, "source": SOURCE,
            "detail": {"jobId": "j1", "status": status}
        })
    }

    #[test]
    fn only_the_identifying_fields_are_required() {
        let event = JobStateChangeEvent::from_value(minimal("RUNNABLE")).unwrap();
        assert_eq!(event.detail.status, JobStatus::Runnable);
        assert_eq!(event.detail.attempts(), &[]);
        assert_eq!(event.detail.size(), None);
        assert_eq!(serde_json::to_value(&event).unwrap(), minimal("RUNNABLE"));
    }

    #[test]
    fn unknown_statuses_are_kept_and_unknown_fields_skipped() {
        let mut value = minimal("PAUSED");
        value["detail"]["someNewField"] = serde_json::json!({"x": 1});
        let event = JobStateChangeEvent::from_value(value.clone()).unwrap();
        assert_eq!(event.detail.status, JobStatus::Other("PAUSED".into()));
        assert_eq!(serde_json::to_value(&event).unwrap(), minimal("PAUSED"));
    }

    #[test]
    fn other_events_and_broken_ones_say_what_they_are() {
        let err = JobStateChangeEvent::from_json(r#"{"detail-type":"Object Created","source":"aws.s3"}"#).unwrap_err();
        assert!(matches!(err, EventError::WrongKind(_)), "{err}");
        let err = JobStateChangeEvent::from_json("{not json").unwrap_err();
        assert!(matches!(err, EventError::NotJson(_)), "{err}");
        let mut value = minimal("RUNNING");
        value["detail"]["createdAt"] = serde_json::json!("yesterday");
        let err = JobStateChangeEvent::from_value(value).unwrap_err();
        assert!(err.to_string().contains("createdAt") || err.to_string().contains("i64"), "{err}");
    }

    #[test]
    fn names_come_from_arns() {
        let mut value = minimal("RUNNING");
        value["detail"]["jobQueue"] = "arn:aws:batch:us-east-1:123456789012:job-queue/etl".into();
        value["detail"]["jobDefinition"] = "arn:aws:batch:us-east-1:123456789012:job-definition/extract:7".into();
        let event = JobStateChangeEvent::from_value(value).unwrap();
        assert_eq!(event.detail.queue_name(), Some("etl"));
        assert_eq!(event.detail.job_definition_name(), Some("extract"));
    }
}
