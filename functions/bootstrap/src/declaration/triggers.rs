//! The `Triggers` section: S3 rules and named schedules, each starting a job definition or a pipeline, kept off the folder stages write to.

use std::collections::BTreeMap;

use batchline::model::coalesce::{Coalesce, MAX_OBJECTS, WINDOW_SECONDS};
use batchline::model::map::MAX_ITEMS_PER_CHILD;
use batchline::model::pipeline::Pipeline;
use batchline::model::stack::{JobDefinition, RoleNames, S3Trigger, ScheduleTrigger, Target, Triggers};

use super::document::{CoalesceDoc, TriggersDoc};
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
                coalesce: rule.coalesce.as_ref().map(|doc| resolve_coalesce(&path, doc, problems)),
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

/// A `Coalesce` block: `WindowSeconds` (1-900) is required; `MaxObjects` (2-10000) is
/// 10000 and `ItemsPerChild` 1 unless given.
fn resolve_coalesce(path: &str, doc: &CoalesceDoc, problems: &mut Vec<String>) -> Coalesce {
    let mut number = |name: &str, text: Option<&str>, range: std::ops::RangeInclusive<u32>, default: Option<u32>| match (
        text.map(|t| t.trim().parse::<u32>()),
        default,
    ) {
        (Some(Ok(n)), _) if range.contains(&n) => n,
        (None, Some(default)) => default,
        _ => {
            let (low, high) = (range.start(), range.end());
            let required = if default.is_none() { " (required)" } else { "" };
            problems.push(format!("{path}.Coalesce.{name}: give a whole number from {low} to {high}{required}"));
            *low
        }
    };
    Coalesce {
        window_seconds: number("WindowSeconds", doc.window_seconds.as_deref(), WINDOW_SECONDS, None),
        max_objects: number("MaxObjects", doc.max_objects.as_deref(), MAX_OBJECTS, Some(*MAX_OBJECTS.end())),
        items_per_child: number("ItemsPerChild", doc.items_per_child.as_deref(), 1..=MAX_ITEMS_PER_CHILD, Some(1)),
    }
}

/// Refuses a trigger of a job definition whose command names a parameter (`Ref::name`) its
/// events never supply: an S3 rule gives `inputBucket`, `inputKey` and `inputSize`, a
/// schedule `scheduledTime`, each its own `Parameters` (a coalesced rule is checked by
/// [`check_coalesce`]). Its jobs would otherwise run with the placeholder in their command.
pub(super) fn check_parameters(
    triggers: &Triggers,
    definitions: &BTreeMap<String, JobDefinition>,
    problems: &mut Vec<String>,
) {
    use batchline::model::job_request::{missing_parameters, referenced_parameters};
    let s3 = triggers.s3.iter().filter(|(_, rule)| rule.coalesce.is_none()).map(|(key, rule)| {
        let given: Vec<String> = ["inputBucket", "inputKey", "inputSize"].map(str::to_owned).to_vec();
        (format!("Triggers.S3.{key}"), &rule.target, &rule.parameters, given)
    });
    let schedules = triggers.schedules.iter().map(|(rule_name, rule)| {
        (format!("Triggers.Schedules.{rule_name}"), &rule.target, &rule.parameters, vec!["scheduledTime".to_owned()])
    });
    for (path, target, parameters, supplied) in s3.chain(schedules) {
        let Target::JobDefinition(key) = target else { continue };
        let Some(definition) = definitions.get(key) else { continue };
        let wanted = referenced_parameters(&definition.command);
        if let Some(missing) = missing_parameters(&wanted, parameters.keys().chain(supplied.iter())) {
            problems.push(format!(
                "{path}: the command of job definition {key:?} names {missing}, which this trigger's events never supply (it gives {}): add them to its Parameters or change the command",
                parameters.keys().chain(supplied.iter()).cloned().collect::<Vec<_>>().join(", ")
            ));
        }
    }
}

/// Refuses coalescing where a window's run could not work: without the input bucket and
/// run-data folder (the window's list is written there), or for a job definition whose
/// command takes the object from `Ref::input*` parameters (a coalesced child has none: its
/// items say which objects are its own).
pub(super) fn check_coalesce(
    triggers: &Triggers,
    definitions: &BTreeMap<String, JobDefinition>,
    roles: &RoleNames,
    problems: &mut Vec<String>,
) {
    for (key, rule) in triggers.s3.iter().filter(|(_, rule)| rule.coalesce.is_some()) {
        let path = format!("Triggers.S3.{key}.Coalesce");
        if roles.input_bucket.is_none() || roles.run_data_prefix.is_none() {
            problems.push(format!(
                "{path}: coalescing needs Roles.InputBucket and Roles.RunDataPrefix (each window's list is written there)"
            ));
        }
        if let Target::JobDefinition(definition) = &rule.target {
            let named = definitions.get(definition).map(|d| d.command.iter().any(|arg| arg.contains("Ref::input")));
            if named == Some(true) {
                problems.push(format!(
                    "{path}: the command of job definition {definition:?} names Ref::input*, which a coalesced child does not have: read the objects from BATCHLINE_ITEMS instead"
                ));
            }
        }
    }
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
