//! The `Pipelines` section of the stack configuration: parsed, validated against the job definitions and queues, resolved.
//!
//! Its keys (a pipeline's and a stage's), defaults and limits are in the stack
//! configuration reference, `docs/src/reference/stack-configuration.md`.
//!
//! Each stage names a job definition and a queue (its definition's unless it names one) by
//! key; what a stage does not declare (size, timeout, retries) is its job definition's.
//! Validation refuses unknown job definitions and queues, unknown upstream stages, cycles,
//! invalid sizes and pipelines without a first stage, so a bad pipeline fails `sam deploy`
//! rather than a run.

use std::collections::{BTreeMap, BTreeSet};

use batchline::model::fargate::Size;
use batchline::model::map::{MapBlock, MapSpec};
use batchline::model::pipeline::{OnStageFailure, Pipeline, Stage, DEFAULT_MAX_RESIZES, MAX_UPSTREAMS, ON_FAILURE};
use batchline::model::retry::RetryPolicy;
use batchline::model::stack::JobDefinition;
use serde::Deserialize;
use serde_json::Value;

use super::values::{de_opt_string_list, de_opt_text};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct PipelineDoc {
    #[serde(default)]
    pub stages: BTreeMap<String, StageDoc>,
    #[serde(default)]
    pub on_failure: Option<StageDoc>,
    #[serde(default, deserialize_with = "de_opt_text")]
    pub max_resizes: Option<String>,
    pub on_stage_failure: Option<String>,
    #[serde(default, deserialize_with = "de_opt_text")]
    pub max_run_seconds: Option<String>,
    #[serde(default, deserialize_with = "de_opt_text")]
    pub max_run_cost_usd: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct StageDoc {
    pub job_definition: Option<String>,
    #[serde(default, deserialize_with = "de_opt_text")]
    pub vcpu: Option<String>,
    #[serde(default, deserialize_with = "de_opt_text")]
    pub memory: Option<String>,
    #[serde(default)]
    pub parameters: Option<BTreeMap<String, String>>,
    pub queue: Option<String>,
    #[serde(default, deserialize_with = "de_opt_string_list")]
    pub after: Option<Vec<String>>,
    #[serde(default, deserialize_with = "de_opt_text")]
    pub max_resizes: Option<String>,
    #[serde(default, deserialize_with = "de_opt_text")]
    pub timeout_seconds: Option<String>,
    #[serde(default, deserialize_with = "de_opt_text")]
    pub expected_seconds: Option<String>,
    #[serde(default, deserialize_with = "de_opt_text")]
    pub retry_attempts: Option<String>,
    #[serde(default)]
    pub retry_on: Option<Vec<super::retries::RetryRuleDoc>>,
    #[serde(default)]
    pub map: Option<MapDoc>,
}

/// A stage's `Map` block (see `batchline::model::map`): where its items come from, and its
/// limits.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct MapDoc {
    pub prefix: Option<String>,
    pub suffix: Option<String>,
    pub manifest: Option<String>,
    pub items: Option<String>,
    #[serde(default, deserialize_with = "de_opt_text")]
    pub items_per_child: Option<String>,
    #[serde(default, deserialize_with = "de_opt_text")]
    pub tolerated_failures: Option<String>,
    #[serde(default, deserialize_with = "de_opt_text")]
    pub max_concurrency: Option<String>,
}

/// A `Map` block checked, its problems under `path.Map`.
fn resolve_map(path: &str, doc: &MapDoc, problems: &mut Vec<String>) -> Option<MapSpec> {
    let block = MapBlock {
        prefix: doc.prefix.as_deref(),
        suffix: doc.suffix.as_deref(),
        manifest: doc.manifest.as_deref(),
        items: doc.items.as_deref(),
        items_per_child: doc.items_per_child.as_deref(),
        tolerated_failures: doc.tolerated_failures.as_deref(),
        max_concurrency: doc.max_concurrency.as_deref(),
    };
    match MapSpec::from_block(&block) {
        Ok(spec) => Some(spec),
        Err(found) => {
            problems.extend(found.into_iter().map(|problem| format!("{path}.Map: {problem}")));
            None
        }
    }
}

/// Validates the `Pipelines` section against the job definitions and queues.
pub fn resolve_pipelines(
    doc: &Value,
    definitions: &BTreeMap<String, JobDefinition>,
    queues: &BTreeSet<String>,
    problems: &mut Vec<String>,
) -> BTreeMap<String, Pipeline> {
    let mut pipelines = BTreeMap::new();
    if doc.is_null() {
        return pipelines;
    }
    let docs: BTreeMap<String, PipelineDoc> = match serde_path_to_error::deserialize(doc) {
        Ok(docs) => docs,
        Err(err) => {
            problems.push(format!("Pipelines.{}: {}", err.path(), err.inner()));
            return pipelines;
        }
    };
    for (name, pipeline) in docs {
        pipelines.insert(name.clone(), resolve_pipeline(name, &pipeline, definitions, queues, problems));
    }
    pipelines
}

fn resolve_pipeline(
    name: String,
    pipeline: &PipelineDoc,
    definitions: &BTreeMap<String, JobDefinition>,
    queues: &BTreeSet<String>,
    problems: &mut Vec<String>,
) -> Pipeline {
    let path = format!("Pipelines.{name}");
    if !(1..=40).contains(&name.len()) || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        problems.push(format!("{path}: pipeline names are 1-40 letters, digits, - or _"));
    }
    let stages = resolve_stages(&path, pipeline, definitions, queues, problems);
    let on_failure = pipeline.on_failure.as_ref().and_then(|stage| {
        if stage.after.as_ref().is_some_and(|a| !a.is_empty()) {
            problems
                .push(format!("{path}.OnFailure.After: the failure stage runs when the run fails, after nothing else"));
        }
        if stage.map.is_some() {
            problems.push(format!("{path}.OnFailure.Map: the failure stage is one job, never a map"));
        }
        resolve_stage(&format!("{path}.OnFailure"), stage, 0, definitions, queues, problems)
    });
    let on_stage_failure = match pipeline.on_stage_failure.as_deref() {
        None | Some("Terminate") => OnStageFailure::Terminate,
        Some("Finish") => OnStageFailure::Finish,
        Some(other) => {
            problems.push(format!("{path}.OnStageFailure {other:?}: use Terminate (the default) or Finish"));
            OnStageFailure::Terminate
        }
    };
    let max_run_seconds =
        parse_seconds(&format!("{path}.MaxRunSeconds"), pipeline.max_run_seconds.as_deref(), problems);
    let max_run_cost_usd =
        parse_budget(&format!("{path}.MaxRunCostUsd"), pipeline.max_run_cost_usd.as_deref(), problems);
    Pipeline { name, stages, on_failure, on_stage_failure, max_run_seconds, max_run_cost_usd }
}

/// The pipeline's stages, and what keeps them from forming a graph a run can walk:
/// unknown upstreams, cycles, no stage to start with.
fn resolve_stages(
    path: &str,
    pipeline: &PipelineDoc,
    definitions: &BTreeMap<String, JobDefinition>,
    queues: &BTreeSet<String>,
    problems: &mut Vec<String>,
) -> BTreeMap<String, Stage> {
    let default_resizes = parse_resizes(path, pipeline.max_resizes.as_deref(), DEFAULT_MAX_RESIZES, problems);
    if pipeline.stages.is_empty() {
        problems.push(format!("{path}.Stages: declare at least one stage"));
    }
    let mut stages = BTreeMap::new();
    for (key, stage) in &pipeline.stages {
        let stage_path = format!("{path}.Stages.{key}");
        if key == ON_FAILURE
            || !(1..=40).contains(&key.len())
            || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            problems.push(format!("{stage_path}: stage names are 1-40 letters, digits, - or _ (and not {ON_FAILURE})"));
        }
        if let Some(resolved) = resolve_stage(&stage_path, stage, default_resizes, definitions, queues, problems) {
            stages.insert(key.clone(), resolved);
        }
    }
    for (key, stage) in &stages {
        if stage.after.len() > MAX_UPSTREAMS {
            problems.push(format!("{path}.Stages.{key}.After: {} stages; at most {MAX_UPSTREAMS}", stage.after.len()));
        }
        for upstream in &stage.after {
            if !pipeline.stages.contains_key(upstream) {
                problems.push(format!("{path}.Stages.{key}.After: there is no stage {upstream:?}"));
            }
            if upstream == key {
                problems.push(format!("{path}.Stages.{key}.After: a stage cannot run after itself"));
            }
        }
    }
    if let Some(cycle) = find_cycle(&stages) {
        problems.push(format!("{path}: the stages form a cycle: {}", cycle.join(" -> ")));
    }
    if !stages.is_empty() && stages.values().all(|s| !s.after.is_empty()) {
        problems.push(format!("{path}: no stage can start first (every stage runs after another)"));
    }
    stages
}

/// `path.MaxResizes`: out-of-memory resubmissions, 0 to 10 (`default` when not given).
pub(super) fn parse_resizes(path: &str, text: Option<&str>, default: u32, problems: &mut Vec<String>) -> u32 {
    match text.map(|t| t.trim().parse::<u32>()) {
        None => default,
        Some(Ok(n)) if n <= 10 => n,
        Some(_) => {
            problems.push(format!("{path}.MaxResizes {:?}: use 0 to 10", text.unwrap_or_default()));
            default
        }
    }
}

/// A stage's own retry policy, when it declares `RetryAttempts` or `RetryOn` (what it does
/// not declare is its job definition's).
fn stage_retry(
    path: &str,
    doc: &StageDoc,
    definition: &JobDefinition,
    problems: &mut Vec<String>,
) -> Option<RetryPolicy> {
    if doc.retry_attempts.is_none() && doc.retry_on.is_none() {
        return None;
    }
    let attempts = match doc.retry_attempts.as_deref().map(|t| t.trim().parse::<u32>()) {
        None => definition.retry_attempts,
        Some(Ok(n)) if (1..=10).contains(&n) => n,
        Some(_) => {
            problems.push(format!(
                "{path}.RetryAttempts {:?}: Batch allows 1 to 10",
                doc.retry_attempts.as_deref().unwrap_or_default()
            ));
            definition.retry_attempts
        }
    };
    let rules = match &doc.retry_on {
        Some(rules) => super::retries::resolve_rules(path, rules, problems),
        None => definition.retry_rules.clone(),
    };
    Some(RetryPolicy { attempts, rules })
}

/// A duration in whole seconds, from 60 (Batch's shortest attempt timeout) to 30 days.
fn parse_seconds(path: &str, text: Option<&str>, problems: &mut Vec<String>) -> Option<u32> {
    let text = text?;
    match text.trim().parse::<u32>() {
        Ok(seconds) if (60..=MAX_SECONDS).contains(&seconds) => Some(seconds),
        _ => {
            problems.push(format!("{path} {text:?}: give whole seconds from 60 to {MAX_SECONDS} (30 days)"));
            None
        }
    }
}

const MAX_SECONDS: u32 = 30 * 24 * 3600;

/// `path.ExpectedSeconds`: 1 s to 30 days.
fn parse_expected(path: &str, text: Option<&str>, problems: &mut Vec<String>) -> Option<u32> {
    let text = text?;
    match text.trim().parse::<u32>() {
        Ok(seconds) if (1..=MAX_SECONDS).contains(&seconds) => Some(seconds),
        _ => {
            problems.push(format!("{path} {text:?}: give whole seconds from 1 to {MAX_SECONDS} (30 days)"));
            None
        }
    }
}

/// `path.MaxRunCostUsd`: US dollars, more than 0 and at most a million.
fn parse_budget(path: &str, text: Option<&str>, problems: &mut Vec<String>) -> Option<f64> {
    let text = text?;
    match text.trim().parse::<f64>() {
        Ok(usd) if usd.is_finite() && usd > 0.0 && usd <= 1_000_000.0 => Some(usd),
        _ => {
            problems.push(format!("{path} {text:?}: give US dollars, more than 0 and at most 1000000"));
            None
        }
    }
}

fn resolve_stage(
    path: &str,
    doc: &StageDoc,
    default_resizes: u32,
    definitions: &BTreeMap<String, JobDefinition>,
    queues: &BTreeSet<String>,
    problems: &mut Vec<String>,
) -> Option<Stage> {
    let Some(key) = &doc.job_definition else {
        problems.push(format!("{path}.JobDefinition: every stage names a job definition"));
        return None;
    };
    let Some(definition) = definitions.get(key) else {
        problems.push(format!("{path}.JobDefinition: {key:?} is not a key of JobDefinitions"));
        return None;
    };
    let size =
        Size::parse_stated(doc.vcpu.as_deref(), doc.memory.as_deref(), definition.size).unwrap_or_else(|errors| {
            problems.extend(errors.iter().map(|err| format!("{path}: {err}")));
            definition.size
        });
    let queue = doc.queue.clone().unwrap_or_else(|| definition.queue.clone());
    if !queues.contains(&queue) {
        problems.push(format!("{path}.Queue: {queue:?} is not a key of JobQueues"));
    }
    Some(Stage {
        job_definition: key.clone(),
        size,
        parameters: doc.parameters.clone().unwrap_or_default(),
        queue,
        after: doc.after.clone().unwrap_or_default(),
        max_resizes: parse_resizes(path, doc.max_resizes.as_deref(), default_resizes, problems),
        timeout_seconds: parse_seconds(&format!("{path}.TimeoutSeconds"), doc.timeout_seconds.as_deref(), problems),
        expected_seconds: parse_expected(&format!("{path}.ExpectedSeconds"), doc.expected_seconds.as_deref(), problems),
        // Known once the queues are: see `check_capacity`.
        max_vcpus: None,
        retry: stage_retry(path, doc, definition, problems),
        map: doc.map.as_ref().and_then(|map| resolve_map(path, map, problems)),
    })
}

/// A cycle among the stages, as the path that closes it, if there is one.
fn find_cycle(stages: &BTreeMap<String, Stage>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Visiting,
        Done,
    }
    fn visit(
        stage: &str,
        stages: &BTreeMap<String, Stage>,
        marks: &mut BTreeMap<String, Mark>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match marks.get(stage) {
            Some(Mark::Done) => return None,
            Some(Mark::Visiting) => {
                let start = path.iter().position(|s| s == stage).unwrap_or(0);
                let mut cycle = path[start..].to_vec();
                cycle.push(stage.to_owned());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(stage.to_owned(), Mark::Visiting);
        path.push(stage.to_owned());
        for upstream in stages.get(stage).map(|s| s.after.as_slice()).unwrap_or_default() {
            if stages.contains_key(upstream) && upstream != stage {
                if let Some(cycle) = visit(upstream, stages, marks, path) {
                    return Some(cycle);
                }
            }
        }
        path.pop();
        marks.insert(stage.to_owned(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for stage in stages.keys() {
        if let Some(mut cycle) = visit(stage, stages, &mut marks, &mut Vec::new()) {
            // Written in the order the stages run.
            cycle.reverse();
            return Some(cycle);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn definitions() -> BTreeMap<String, JobDefinition> {
        let config = super::super::declare(&json!({
            "Network": {"Subnets": ["subnet-1"], "SecurityGroups": ["sg-1"]},
            "JobDefinitions": {"default": {}, "big": {"Vcpu": "1", "Memory": "2048"}}
        }))
        .unwrap();
        config.job_definitions
    }

    fn resolve(doc: Value) -> Result<BTreeMap<String, Pipeline>, Vec<String>> {
        let mut problems = Vec::new();
        let queues = BTreeSet::from(["default".to_owned()]);
        let pipelines = resolve_pipelines(&doc, &definitions(), &queues, &mut problems);
        if problems.is_empty() {
            Ok(pipelines)
        } else {
            Err(problems)
        }
    }

    #[test]
    fn invalid_declarations_say_what_is_wrong() {
        let check = |doc: Value, expected: &str| {
            let problems = resolve(doc).unwrap_err().join("; ");
            assert!(problems.contains(expected), "{expected:?} in {problems}");
        };
        check(json!({"p": {"Stages": {"a": {"JobDefinition": "nope"}}}}), "\"nope\" is not a key of JobDefinitions");
        check(
            json!({"p": {"Stages": {"a": {"JobDefinition": "default", "After": ["b"]}, "b": {"JobDefinition": "default", "After": ["a"]}}}}),
            "cycle: a -> b -> a",
        );
        check(
            json!({"p": {"Stages": {"a": {"JobDefinition": "default"}, "b": {"JobDefinition": "default", "After": ["ghost"]}}}}),
            "there is no stage \"ghost\"",
        );
        check(
            json!({"p": {"Stages": {"a": {"JobDefinition": "default", "Vcpu": "2", "Memory": "512"}}}}),
            "2 vCPU with 512 MiB is not a valid Fargate size",
        );
        let many: serde_json::Map<String, Value> =
            (0..22).map(|i| (format!("s{i}"), json!({"JobDefinition": "default"}))).collect();
        let mut stages = many.clone();
        stages.insert("last".into(), json!({"JobDefinition": "default", "After": many.keys().collect::<Vec<_>>()}));
        check(json!({"p": {"Stages": stages}}), "22 stages; at most 20");
        check(json!({"p": {"Stages": {}}}), "declare at least one stage");
        check(
            json!({"p": {"Stages": {"a": {"JobDefinition": "default", "Queue": "missing"}}}}),
            "\"missing\" is not a key of JobQueues",
        );
        check(json!({"p": {"Stages": {"a": {"Job": "default"}}}}), "unknown field `Job`");
        check(
            json!({"p": {"OnStageFailure": "Continue", "Stages": {"a": {"JobDefinition": "default"}}}}),
            "Pipelines.p.OnStageFailure \"Continue\": use Terminate (the default) or Finish",
        );
        check(
            json!({"p": {"MaxRunSeconds": "59", "Stages": {"a": {"JobDefinition": "default"}}}}),
            "Pipelines.p.MaxRunSeconds \"59\": give whole seconds from 60",
        );
        check(
            json!({"p": {"Stages": {"a": {"JobDefinition": "default", "TimeoutSeconds": "soon"}}}}),
            "Pipelines.p.Stages.a.TimeoutSeconds \"soon\"",
        );
    }

    #[test]
    fn run_control_is_declared_per_pipeline_and_stage() {
        let pipelines = resolve(json!({
            "strict": {"MaxRunSeconds": "3600", "Stages": {"a": {"JobDefinition": "default", "TimeoutSeconds": 600}}},
            "lenient": {"OnStageFailure": "Finish", "Stages": {"a": {"JobDefinition": "default"}}}
        }))
        .unwrap();
        let strict = &pipelines["strict"];
        assert_eq!((strict.on_stage_failure, strict.max_run_seconds), (OnStageFailure::Terminate, Some(3600)));
        assert_eq!(strict.stages["a"].timeout_seconds, Some(600));
        let lenient = &pipelines["lenient"];
        assert_eq!((lenient.on_stage_failure, lenient.max_run_seconds), (OnStageFailure::Finish, None));
        assert_eq!(lenient.stages["a"].timeout_seconds, None);
    }

    #[test]
    fn a_budget_and_expected_seconds_are_declared_and_checked() {
        let pipelines = resolve(json!({
            "capped": {"MaxRunCostUsd": "2.5", "Stages": {"a": {"JobDefinition": "default", "ExpectedSeconds": "30"}}}
        }))
        .unwrap();
        assert_eq!(pipelines["capped"].max_run_cost_usd, Some(2.5));
        assert_eq!(pipelines["capped"].stages["a"].expected_seconds, Some(30));
        for (pipeline, expected) in [
            (
                json!({"MaxRunCostUsd": "0", "Stages": {"a": {"JobDefinition": "default"}}}),
                "Pipelines.p.MaxRunCostUsd \"0\"",
            ),
            (json!({"MaxRunCostUsd": "lots", "Stages": {"a": {"JobDefinition": "default"}}}), "more than 0"),
            (
                json!({"Stages": {"a": {"JobDefinition": "default", "ExpectedSeconds": "0"}}}),
                "Pipelines.p.Stages.a.ExpectedSeconds",
            ),
        ] {
            let err = resolve(json!({"p": pipeline})).unwrap_err().join("; ");
            assert!(err.contains(expected), "expected {expected:?} in {err}");
        }
    }
}
