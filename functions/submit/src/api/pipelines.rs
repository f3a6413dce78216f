//! The pipelines resource: `POST /pipelines/{name}/runs` starts a run of a configured pipeline, once per key.

use std::collections::BTreeMap;

use batchline::model::pipeline::{Pipeline, ON_FAILURE};
use batchline::model::run::RunInput;
use batchline::model::stack::StackConfig;
use batchline::services::runs::{check_run, run_id};
use batchline::store::RunStore;
use serde::Deserialize;
use serde_json::json;

use super::body::{read_body, with_value_problems};
use super::call::Call;
use super::http::{only_size, response, Answer, ApiError, Problem};
use super::jobs::overrides_refused;
use super::keys::{idempotency_key, request_key};

/// The body of `POST /pipelines/{name}/runs`: what the run passes to every stage.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StartRunBody {
    #[serde(default)]
    pub parameters: BTreeMap<String, String>,
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
}

/// `POST /pipelines/{name}/runs`: 202 `{runId, pipeline, status, duplicate}`.
pub async fn start_run(call: &Call<'_>) -> Answer {
    let (name, stack) = (call.param.as_str(), call.stack);
    let Some(pipeline) = stack.pipelines.get(name) else {
        return Err(ApiError::not_found(format!("no pipeline {name:?}")).into());
    };
    let body_problems = read_body::<StartRunBody>(&call.request.body)?;
    let store = call.clients.ports.store.as_ref();
    let key = idempotency_key(call.request, &format!("pipelines/{name}"), &call.holder.token)?;
    let key = request_key(key, store, |key| async move {
        Ok(store.load_run(&run_id(name, &key)).await?.map(|r| r.run.created_at))
    })
    .await?;
    let input = run_input(stack, pipeline, &run_id(name, &key), body_problems)?;
    let driver = call.clients.ports.driver(call.holder);
    let (run, new) = driver.start(name, "api", &key, input.clone(), batchline::now_ms()).await?;
    if !new && run.input != input {
        // The key's first request started the run: a different body under it is another
        // request, refused as for `POST /jobs`.
        return Err(ApiError::key_reused().into());
    }
    Ok(response(202, &json!({"runId": run.run_id, "pipeline": name, "status": run.status, "duplicate": !new})))
}

/// The run a body asks for, or every problem of it: the body's own (read by
/// [`read_body`]) and what each stage's job would be refused for, said per stage (the
/// path is the body's). A body with none that brings an environment a stage takes no
/// overrides for is a 403.
pub fn run_input(
    stack: &StackConfig,
    pipeline: &Pipeline,
    run_id: &str,
    (body, problems): (StartRunBody, Vec<Problem>),
) -> Result<RunInput, ApiError> {
    let input = RunInput { parameters: body.parameters, environment: body.environment };
    if problems.is_empty() {
        check_run_overrides(stack, pipeline, &input)?;
    }
    let found = check_run(stack, pipeline, run_id, &input).err().unwrap_or_default();
    let unfilled = map_placeholder_problems(pipeline, &input);
    let too_large =
        problems.is_empty() && unfilled.is_empty() && only_size(&found.iter().map(|(_, p)| p).collect::<Vec<_>>());
    let values = found.iter().map(|(stage, p)| Problem::from_request(Some(&format!("stage {stage}")), None, p));
    let values = values.chain(unfilled);
    let problems = with_value_problems(problems, values);
    if problems.is_empty() {
        Ok(input)
    } else {
        Err(ApiError::refused(problems, too_large))
    }
}

/// The `{name}`s of the pipeline's maps that the run would have no value for (its
/// parameters, `runId` and `runData` are what a run started here has), one problem each.
fn map_placeholder_problems(pipeline: &Pipeline, input: &RunInput) -> Vec<Problem> {
    let known = |name: &str| input.parameters.contains_key(name) || ["runId", "runData"].contains(&name);
    let maps = pipeline.stages.iter().filter_map(|(stage, s)| Some((stage, s.map.as_ref()?)));
    let unknown = maps.flat_map(|(stage, map)| {
        map.placeholders().into_iter().filter(|name| !known(name)).map(move |name| (stage.clone(), name))
    });
    unknown
        .map(|(stage, name)| {
            Problem::new(
                format!("parameters.{name}"),
                format!("stage {stage} maps over {{{name}}}: give the run a parameter {name:?}"),
            )
        })
        .collect()
}

/// An environment reaches every stage, so a run that brings one is refused when any
/// stage's job definition takes no overrides.
pub fn check_run_overrides(config: &StackConfig, pipeline: &Pipeline, input: &RunInput) -> Result<(), ApiError> {
    if input.environment.is_empty() {
        return Ok(());
    }
    let stages = pipeline.stages.iter().map(|(k, s)| (k.as_str(), s));
    let closed: Vec<String> = stages
        .chain(pipeline.on_failure.iter().map(|s| (ON_FAILURE, s)))
        .filter(|(_, stage)| config.job_definitions.get(&stage.job_definition).is_some_and(|d| !d.allow_overrides))
        .map(|(stage, _)| format!("stage {stage}"))
        .collect();
    if closed.is_empty() {
        Ok(())
    } else {
        Err(overrides_refused(&closed.join(", "), &["environment"]))
    }
}
