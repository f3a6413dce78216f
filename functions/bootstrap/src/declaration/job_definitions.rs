//! The `JobDefinitions` section: what each job runs, its size, retries and queue.

use std::collections::BTreeMap;

use batchline::model::fargate::{Quarters, Size};
use batchline::model::stack::{JobDefinition, JobQueue, DEFAULT_IMAGE, DEFAULT_KEY, DEFAULT_LOG_GROUP, DEFAULT_SCRIPT};

use super::document::JobDefinitionDoc;
use super::physical_name;
use super::pipelines::parse_resizes;
use super::retries;
use super::values::valid_key;

/// The job definition size when the document gives none: the smallest Fargate size.
const DEFAULT_SIZE: Size = Size { vcpu: Quarters(1), memory_mib: 512 };

/// Validates the `JobDefinitions` section against the queues; without one, the recipe's
/// job on the default queue.
pub(super) fn resolve_job_definitions(
    docs: Option<&BTreeMap<String, JobDefinitionDoc>>,
    queues: &BTreeMap<String, JobQueue>,
    default_queue: &str,
    prefix: &str,
    problems: &mut Vec<String>,
) -> BTreeMap<String, JobDefinition> {
    let default = BTreeMap::from([(DEFAULT_KEY.to_owned(), JobDefinitionDoc::default())]);
    let docs = docs.unwrap_or(&default);
    if docs.is_empty() {
        problems.push("JobDefinitions: declare at least one".into());
    }
    let mut job_definitions = BTreeMap::new();
    for (key, definition) in docs {
        let path = format!("JobDefinitions.{key}");
        if !valid_key(key) {
            problems.push(format!("{path}: keys are 1-40 letters, digits, - or _"));
        }
        let name = physical_name(prefix, key);
        job_definitions
            .insert(key.clone(), resolve_job_definition(&path, name, definition, queues, default_queue, problems));
    }
    job_definitions
}

fn resolve_job_definition(
    path: &str,
    name: String,
    definition: &JobDefinitionDoc,
    queues: &BTreeMap<String, JobQueue>,
    default_queue: &str,
    problems: &mut Vec<String>,
) -> JobDefinition {
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
    let queue = definition.queue.clone().unwrap_or_else(|| default_queue.to_owned());
    if !queues.contains_key(&queue) {
        problems.push(format!("{path}.Queue: {queue:?} is not a key of JobQueues"));
    }
    let image = definition.image.clone().unwrap_or_else(|| DEFAULT_IMAGE.to_owned());
    if image.trim().is_empty() {
        problems.push(format!("{path}.Image: give an image"));
    }
    check_variable_names(path, definition, problems);
    JobDefinition {
        name,
        image,
        size,
        command: command(definition),
        environment: definition.environment.clone().unwrap_or_default(),
        secrets: definition.secrets.clone().unwrap_or_default(),
        architecture,
        retry_attempts: retry_attempts as u32,
        retry_rules: retries::resolve_rules(path, definition.retry_on.as_deref().unwrap_or_default(), problems),
        max_resizes: parse_resizes(path, definition.max_resizes.as_deref(), 0, problems),
        timeout_seconds: definition.timeout_seconds.map(|t| t as u32),
        log_group: definition.log_group.clone().unwrap_or_else(|| DEFAULT_LOG_GROUP.to_owned()),
        queue,
        allow_overrides: definition.allow_overrides.unwrap_or(true),
    }
}

/// Batch sets the `AWS_BATCH*` variables itself and refuses definitions that set them.
fn check_variable_names(path: &str, definition: &JobDefinitionDoc, problems: &mut Vec<String>) {
    for name in definition
        .environment
        .iter()
        .flatten()
        .map(|(k, _)| k)
        .chain(definition.secrets.iter().flatten().map(|(k, _)| k))
    {
        if name.starts_with("AWS_BATCH") {
            problems.push(format!("{path}: environment variable {name:?}: names starting with AWS_BATCH are reserved"));
        }
    }
}

/// The command as given; without one, the recipe's script on the default image, and
/// none on an image of the document's own, which brings its own.
fn command(definition: &JobDefinitionDoc) -> Vec<String> {
    definition.command.clone().unwrap_or_else(|| {
        if definition.image.is_none() {
            vec!["python3".into(), "-c".into(), DEFAULT_SCRIPT.into()]
        } else {
            vec![]
        }
    })
}
