//! The `Triggers` section: S3 rules and named schedules, each starting a job definition or a pipeline, kept off the folder stages write to.

use std::collections::BTreeMap;

use batchline::model::pipeline::Pipeline;
use batchline::model::stack::{JobDefinition, RoleNames, S3Trigger, ScheduleTrigger, Target, Triggers};

use super::document::TriggersDoc;
use super::values::valid_key;

fn target(
    path: &str,
    job_definition: &Option<String>,
    pipeline: &Option<String>,
    definitions: &BTreeMap<String, JobDefinition>,
    pipelines: &BTreeMap<String, Pipeline>,
    problems: &mut Vec<String>,
) -> Target {
    match (job_definition, pipeline) {
        (Some(definition), None) => {
            if !definitions.contains_key(definition) {
                problems.push(format!("{path}.JobDefinition: {definition:?} is not a key of JobDefinitions"));
            }
            Target::JobDefinition(definition.clone())
        }
        (None, Some(pipeline)) => {
            if !pipelines.contains_key(pipeline) {
                problems.push(format!("{path}.Pipeline: {pipeline:?} is not a key of Pipelines"));
            }
            Target::Pipeline(pipeline.clone())
        }
        _ => {
            problems.push(format!("{path}: give either JobDefinition or Pipeline"));
            Target::JobDefinition(String::new())
        }
    }
}

pub(super) fn resolve_triggers(
    doc: TriggersDoc,
    definitions: &BTreeMap<String, JobDefinition>,
    pipelines: &BTreeMap<String, Pipeline>,
    problems: &mut Vec<String>,
) -> Triggers {
    let mut triggers = Triggers::default();
    for (key, rule) in doc.s3 {
        let path = format!("Triggers.S3.{key}");
        if !valid_key(&key) {
            problems.push(format!("{path}: keys are 1-40 letters, digits, - or _"));
        }
        let target = target(&path, &rule.job_definition, &rule.pipeline, definitions, pipelines, problems);
        if let Some(factor) = rule.memory_per_input_byte {
            if !(1..=1000).contains(&factor) {
                problems.push(format!("{path}.MemoryPerInputByte {factor}: use 1 to 1000"));
            }
        }
        triggers.s3.insert(
            key,
            S3Trigger {
                bucket: rule.bucket.filter(|b| !b.is_empty()),
                prefix: rule.prefix.unwrap_or_default(),
                suffix: rule.suffix.unwrap_or_default(),
                target,
                memory_per_input_byte: rule.memory_per_input_byte.map(|f| f as u32),
                parameters: rule.parameters.unwrap_or_default(),
            },
        );
    }
    for (key, rule) in doc.schedules {
        let path = format!("Triggers.Schedules.{key}");
        let rule_name = rule.rule.clone().unwrap_or(key);
        if !(1..=64).contains(&rule_name.len())
            || !rule_name.chars().all(|c| c.is_ascii_alphanumeric() || ".-_".contains(c))
        {
            problems.push(format!("{path}: EventBridge rule names are 1-64 letters, digits, . - or _"));
        }
        let target = target(&path, &rule.job_definition, &rule.pipeline, definitions, pipelines, problems);
        triggers
            .schedules
            .insert(rule_name, ScheduleTrigger { target, parameters: rule.parameters.unwrap_or_default() });
    }
    triggers
}

/// Refuses S3 triggers watching the input bucket's run-data folder (or a folder inside
/// it, or around it): what stages write there would start jobs again, and stages could
/// overwrite what such a trigger watches.
pub(super) fn check_run_data_overlap(triggers: &Triggers, roles: &RoleNames, problems: &mut Vec<String>) {
    let (Some(bucket), Some(folder)) = (&roles.input_bucket, &roles.run_data_prefix) else {
        return;
    };
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
