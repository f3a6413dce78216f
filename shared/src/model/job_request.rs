//! A job to submit, decided before any AWS call: deterministic name, tags, size and the SubmitJob payload limit.
//!
//! Every trigger (S3, schedule, API, a pipeline stage) turns into a [`JobRequest`] with an
//! idempotency key. The job name is derived from that key, so a submission left unfinished
//! by a crash can be found by name, and the same trigger always names the same job.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::model::fargate::Size;

/// Batch's limits on job names and tags.
pub const MAX_JOB_NAME: usize = 128;
pub const MAX_TAGS: usize = 50;
pub const MAX_TAG_KEY: usize = 128;
pub const MAX_TAG_VALUE: usize = 256;
/// SubmitJob's request payload limit (30 KiB).
pub const MAX_SUBMIT_BYTES: usize = 30 * 1024;
/// Array jobs have 2 to 10,000 children.
pub const ARRAY_SIZES: std::ops::RangeInclusive<u32> = 2..=10_000;
/// How long an idempotency key is honoured (for every mutating API route): a retry within
/// it gets the first answer back; after it, the same key starts new work.
pub const KEY_WINDOW_MS: i64 = 24 * 3600 * 1000;
/// A job may depend on at most 20 others.
pub const MAX_DEPENDENCIES: usize = 20;

pub const RUN_TAG: &str = "batchline:run";
pub const PIPELINE_TAG: &str = "batchline:pipeline";
pub const STAGE_TAG: &str = "batchline:stage";
pub const TRIGGER_TAG: &str = "batchline:trigger";
/// The tags of every job definition bootstrap registers: a hash of its spec and the stack.
pub const SPEC_TAG: &str = "batchline:spec";
pub const STACK_TAG: &str = "batchline:stack";
/// Tags a job gets beside its own: its job definition's (bootstrap registers every one with
/// `propagateTags`, so Batch copies them to each job and counts them in its 50).
pub const DEFINITION_TAGS: [&str; 2] = [SPEC_TAG, STACK_TAG];
/// The tag Batch adds to a job's state-change events: the job's own ARN. Not a tag to copy.
pub const RESOURCE_ARN_TAG: &str = "resourceArn";
/// Tags under this prefix are Batchline's; callers may not set them.
pub const RESERVED_TAG_PREFIX: &str = "batchline:";

/// Everything SubmitJob needs, plus the idempotency key it is claimed under.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobRequest {
    pub idempotency_key: String,
    /// What the caller sent, as it identifies the request whatever a deploy resolves it
    /// to (the S3 object, the schedule tick, the stage attempt, the API body): a reused
    /// idempotency key with another origin is a conflict.
    #[serde(default)]
    pub origin: String,
    pub job_name: String,
    pub queue_arn: String,
    pub job_definition_arn: String,
    pub parameters: BTreeMap<String, String>,
    pub environment: BTreeMap<String, String>,
    pub command: Option<Vec<String>>,
    /// A size other than the job definition's.
    pub size: Option<Size>,
    pub array_size: Option<u32>,
    pub depends_on: Vec<String>,
    pub tags: BTreeMap<String, String>,
    /// Batch's attempt timeout, when not the job definition's.
    #[serde(default)]
    pub timeout_seconds: Option<u32>,
    /// Batch's retry strategy, when not the job definition's.
    #[serde(default)]
    pub retry: Option<crate::model::retry::RetryPolicy>,
}

/// A SHA-256 of `text`, hex, cut to `chars` characters.
pub fn digest(text: &str, chars: usize) -> String {
    let hash = Sha256::digest(text.as_bytes());
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    hex[..chars.min(hex.len())].to_owned()
}

/// A valid, deterministic Batch job name: `[A-Za-z0-9_-]`, starting with a letter or
/// digit, at most 128 characters, ending in a hash of the idempotency key so different
/// keys never share a name however the readable part is cut.
pub fn job_name(readable: &str, idempotency_key: &str) -> String {
    let suffix = digest(idempotency_key, 12);
    let mut clean: String =
        readable.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '-' }).collect();
    // Collapse runs of '-' left by replaced characters, for readability.
    while clean.contains("--") {
        clean = clean.replace("--", "-");
    }
    let clean = clean.trim_matches(|c| c == '-' || c == '_');
    let room = MAX_JOB_NAME - suffix.len() - 1;
    let mut readable: String = clean.chars().take(room).collect();
    readable = readable.trim_end_matches(['-', '_']).to_owned();
    if readable.is_empty() {
        format!("job-{suffix}")
    } else {
        format!("{readable}-{suffix}")
    }
}

/// Why Batch would refuse a job request (or Batchline refuses it first).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// A field's value: `path` is the field's JSON path in the request (`vcpu`, `tags.k`,
    /// `dependsOn`), `message` says what is wrong, naming the field as a reader meets it.
    #[error("{message}")]
    Invalid { path: String, message: String },
    #[error("the job request is {size} bytes; SubmitJob takes at most {MAX_SUBMIT_BYTES} (parameters, environment, command and tags together)")]
    TooLarge { size: usize },
}

/// Every problem with caller-supplied tags: not Batchline's own, within Batch's limits
/// with ours added.
pub fn user_tag_problems(tags: &BTreeMap<String, String>, ours: usize) -> Vec<RequestError> {
    let mut problems = Vec::new();
    for (key, value) in tags {
        let problem = if key.starts_with(RESERVED_TAG_PREFIX) {
            format!("tag {key:?}: tags starting with {RESERVED_TAG_PREFIX} are Batchline's own")
        } else if key.is_empty() || key.len() > MAX_TAG_KEY {
            format!("tag {key:?}: keys have 1 to {MAX_TAG_KEY} characters")
        } else if value.len() > MAX_TAG_VALUE {
            format!("tag {key:?}: values have at most {MAX_TAG_VALUE} characters")
        } else if key.starts_with("aws:") {
            format!("tag {key:?}: the aws: prefix is reserved by AWS")
        } else {
            continue;
        };
        problems.push(RequestError::invalid(format!("tags.{key}"), problem));
    }
    let besides = ours + DEFINITION_TAGS.len();
    if tags.len() + besides > MAX_TAGS {
        let (count, definition) = (tags.len(), DEFINITION_TAGS.len());
        problems.push(RequestError::invalid("tags", format!(
            "{count} tags: at most {} besides Batchline's {ours} and its job definition's {definition} (Batch fails a job with more than {MAX_TAGS})",
            MAX_TAGS.saturating_sub(besides)
        )));
    }
    problems
}

impl RequestError {
    pub fn invalid(path: impl Into<String>, message: impl Into<String>) -> Self {
        RequestError::Invalid { path: path.into(), message: message.into() }
    }

    /// The JSON path of the field at fault; empty for the request as a whole.
    pub fn path(&self) -> &str {
        match self {
            RequestError::Invalid { path, .. } => path,
            RequestError::TooLarge { .. } => "",
        }
    }
}

/// The parameter names a command asks Batch for (`Ref::name`, anywhere in an argument):
/// a job of it needs each of them, or Batch leaves the placeholder in the command.
pub fn referenced_parameters(command: &[String]) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    for argument in command {
        for (at, _) in argument.match_indices("Ref::") {
            let rest = &argument[at + "Ref::".len()..];
            let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            if !name.is_empty() {
                names.insert(name);
            }
        }
    }
    names
}

/// The names of `wanted` that `given` lacks, as `Ref::a, Ref::b`, or `None` when none is missing.
pub fn missing_parameters<'a>(
    wanted: &std::collections::BTreeSet<String>,
    given: impl IntoIterator<Item = &'a String>,
) -> Option<String> {
    let given: std::collections::BTreeSet<&String> = given.into_iter().collect();
    let missing: Vec<String> = wanted.iter().filter(|n| !given.contains(n)).map(|n| format!("Ref::{n}")).collect();
    (!missing.is_empty()).then(|| missing.join(", "))
}

impl JobRequest {
    /// Every reason Batch would refuse this request, so the caller hears them all at once
    /// as a 4xx (the one validator of `POST /jobs` and of a run's stages).
    pub fn validate(&self) -> Result<(), Vec<RequestError>> {
        let mut problems = Vec::new();
        if let Some(size) = self.array_size {
            if !ARRAY_SIZES.contains(&size) {
                problems.push(RequestError::invalid(
                    "arraySize",
                    format!("arraySize {size}: array jobs have 2 to 10000 children"),
                ));
            }
        }
        if self.tags.len() + DEFINITION_TAGS.len() > MAX_TAGS {
            let count = self.tags.len();
            let why = format!(
                "{count} tags: with its job definition's {} a job has more than {MAX_TAGS}",
                DEFINITION_TAGS.len()
            );
            problems.push(RequestError::invalid("tags", why));
        }
        if self.depends_on.len() > MAX_DEPENDENCIES {
            problems.push(RequestError::invalid("dependsOn", format!("dependsOn: at most {MAX_DEPENDENCIES} jobs")));
        }
        for name in self.environment.keys() {
            if name.is_empty() || name.starts_with("AWS_BATCH") {
                let why = format!("environment {name:?}: names starting with AWS_BATCH are reserved");
                problems.push(RequestError::invalid(format!("environment.{name}"), why));
            }
        }
        let size = self.payload_size();
        if size > MAX_SUBMIT_BYTES {
            problems.push(RequestError::TooLarge { size });
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// The size of the SubmitJob request this becomes, as JSON on the wire.
    pub fn payload_size(&self) -> usize {
        let overrides = serde_json::json!({
            "jobName": self.job_name, "jobQueue": self.queue_arn, "jobDefinition": self.job_definition_arn,
            "parameters": self.parameters, "tags": self.tags, "dependsOn": self.depends_on,
            "containerOverrides": {"environment": self.environment, "command": self.command},
        });
        overrides.to_string().len()
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_parameters_a_command_names_are_read_from_every_ref() {
        let command: Vec<String> =
            ["convert", "Ref::inputKey", "--out=s3://Ref::bucket/Ref::key.png", "Ref::"].map(str::to_owned).to_vec();
        let wanted = referenced_parameters(&command);
        assert_eq!(wanted.iter().map(String::as_str).collect::<Vec<_>>(), ["bucket", "inputKey", "key"]);
        let given = ["inputKey".to_owned()];
        assert_eq!(missing_parameters(&wanted, &given).as_deref(), Some("Ref::bucket, Ref::key"));
        assert_eq!(missing_parameters(&referenced_parameters(&[]), &given), None);
    }
    use super::*;

    #[test]
    fn job_names_are_sanitised_bounded_and_deterministic() {
        let name = job_name("s3 orders/incoming/Q3 report (final).csv", "s3:bucket:key:seq");
        assert!(name.starts_with("s3-orders-incoming-Q3-report-final-csv-"), "{name}");
        assert_eq!(name, job_name("s3 orders/incoming/Q3 report (final).csv", "s3:bucket:key:seq"));
        assert_ne!(name, job_name("s3 orders/incoming/Q3 report (final).csv", "s3:bucket:key:other"));

        let long = job_name(&"x".repeat(500), "k");
        assert_eq!(long.len(), 128);
        assert!(long.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));

        let odd = job_name("--__ünïcødé__--", "k");
        assert!(odd.starts_with(|c: char| c.is_ascii_alphanumeric()), "{odd}");
        assert_eq!(job_name("///", "k"), format!("job-{}", digest("k", 12)));
    }

    #[test]
    fn user_tags_may_not_be_batchlines_or_too_many() {
        let tags = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        assert!(user_tag_problems(&tags(&[("team", "data")]), 4).is_empty());
        let problems = user_tag_problems(&tags(&[("batchline:run", "x"), ("aws:x", "y"), ("k", &"v".repeat(257))]), 4);
        let said: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(said.len(), 3, "every problem at once: {said:?}");
        assert!(said[1].contains("Batchline's own"), "{said:?}");
        // Batch counts the job definition's propagated tags too: 4 + 2 of 50 are taken
        let many: BTreeMap<String, String> = (0..45).map(|i| (format!("t{i}"), String::new())).collect();
        assert!(user_tag_problems(&many, 4)[0].to_string().contains("at most 44"));
        let fitting: BTreeMap<String, String> = (0..44).map(|i| (format!("t{i}"), String::new())).collect();
        assert!(user_tag_problems(&fitting, 4).is_empty());
    }

    #[test]
    fn oversized_requests_are_refused_before_batch_sees_them() {
        let mut request = JobRequest {
            idempotency_key: "k".into(),
            origin: "k".into(),
            job_name: "j".into(),
            queue_arn: "q".into(),
            job_definition_arn: "d".into(),
            parameters: BTreeMap::new(),
            environment: BTreeMap::new(),
            command: None,
            size: None,
            array_size: None,
            depends_on: vec![],
            tags: BTreeMap::new(),
            timeout_seconds: None,
            retry: None,
        };
        assert!(request.validate().is_ok());
        request.parameters.insert("blob".into(), "x".repeat(31 * 1024));
        assert!(matches!(request.validate().unwrap_err()[..], [RequestError::TooLarge { .. }]));
        request.parameters.clear();
        request.array_size = Some(1);
        request.environment.insert("AWS_BATCH_X".into(), "1".into());
        let problems = request.validate().unwrap_err();
        assert_eq!(problems.len(), 2, "every problem at once: {problems:?}");
        assert!(problems[0].to_string().contains("2 to 10000"));
        assert!(problems[1].to_string().contains("AWS_BATCH"));
    }
}
