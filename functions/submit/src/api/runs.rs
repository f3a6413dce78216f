//! The runs resource: `GET /runs/{id}` (a run with its stages, attempts, sizes, logs and cost), `GET /runs[?pipeline=NAME]`, `DELETE /runs/{id}` (cancel) and `POST /runs/{id}/redrive` (its next generation).

use std::collections::BTreeMap;

use batchline::model::cost::Pricing;
use batchline::model::fargate::Size;
use batchline::model::job_request::RequestError;
use batchline::model::run::{MapProgress, RedriveRefused, StageStatus};
use batchline::model::stack::StackConfig;
use batchline::services::ports::BatchPort;
use batchline::services::runs::{CancelOutcome, RedriveOutcome};
use batchline::store::RunStore;
use serde::Deserialize;
use serde_json::{json, Value};

use super::body::{read_body, with_value_problems, Number};
use super::call::Call;
use super::http::{iso, response, Answer, ApiError, Problem};
use super::jobs::log_console_url;
use super::keys::{idempotency_key, ApiKey};
use super::sizes::{beyond_capacity, requested_size};

/// `GET /runs/{id}`: 200 the run.
pub async fn get(call: &Call<'_>) -> Answer {
    let id = &call.param;
    let read = call.clients.ports.driver(call.holder).load(id).await?;
    let run = read.ok_or_else(|| ApiError::not_found(format!("no run {id}")))?.run;
    let pricing = Pricing::of(call.stack, &call.clients.ports.prices);
    let mut view = run_view(&run, call.stack, &pricing, &call.clients.region, batchline::now_ms());
    add_live_map_counts(&mut view, &run, call).await;
    Ok(response(200, &view))
}

/// A map stage's `running` and `waiting` as Batch counts its arrays' children now (their
/// parents' `statusSummary`, one DescribeJobs call); if Batch cannot say, the view keeps
/// what the record says (an array's children all running, or all waiting).
async fn add_live_map_counts(view: &mut Value, run: &batchline::model::run::Run, call: &Call<'_>) {
    let maps = run.stages.iter().filter_map(|(name, s)| Some((name, s.current()?.map.as_ref()?)));
    let maps: Vec<(&String, &MapProgress)> = maps.collect();
    let open: Vec<String> = maps
        .iter()
        .flat_map(|(_, m)| m.arrays.iter().filter(|a| a.is_open()).filter_map(|a| a.job_id.clone()))
        .collect();
    if open.is_empty() {
        return;
    }
    let described = match call.clients.ports.batch.describe_jobs(&open).await {
        Ok(described) => described,
        Err(err) => {
            let pipeline = &run.pipeline.name;
            tracing::warn!(run_id = %run.run_id, %pipeline, error = %err, "Batch could not say how the map's children go");
            return;
        }
    };
    let live: BTreeMap<String, BTreeMap<String, i64>> = described
        .into_iter()
        .filter_map(|e| Some((e.detail.job_id.clone(), e.detail.array_properties?.status_summary?)))
        .collect();
    for (name, map) in maps {
        view["stages"][name.as_str()]["map"] = map_view(map, &live);
    }
}

/// A map stage's progress: its children, how many succeeded and failed (as recorded when
/// each array ended), how many run and wait now (from `live`, its open arrays' Batch
/// `statusSummary` by parent id, where given; children of arrays not yet submitted wait),
/// and its failed children as its close listed them.
pub fn map_view(map: &MapProgress, live: &BTreeMap<String, BTreeMap<String, i64>>) -> Value {
    let (mut running, mut waiting) = (0usize, 0usize);
    for array in map.arrays.iter().filter(|a| !a.status.is_terminal()) {
        let summary = array.job_id.as_ref().and_then(|id| live.get(id));
        match summary {
            Some(summary) => {
                let count = |statuses: &[&str]| -> usize {
                    statuses.iter().filter_map(|s| summary.get(*s)).map(|n| usize::try_from(*n).unwrap_or(0)).sum()
                };
                running += count(&["RUNNING"]);
                waiting += count(&["SUBMITTED", "PENDING", "RUNNABLE", "STARTING"]);
            }
            None if array.status == StageStatus::Running => running += array.size,
            None => waiting += array.size,
        }
    }
    let mut view = json!({
        "children": map.children,
        "arrays": map.arrays.len(),
        "succeeded": map.succeeded(),
        "failed": map.failed(),
        "resized": map.resized(),
        "running": running,
        "waiting": waiting,
        "failedItems": map.failed_items,
        "failedItemsUri": map.failed_items_uri,
        // Its array jobs (not its children): a child's job is `<jobId>:<index - first>`.
        "arrayJobs": map.arrays.iter().map(|a| json!({
            "jobId": a.job_id, "first": a.first, "size": a.size, "status": a.status,
            "succeeded": a.succeeded, "failed": a.failed,
            // Children of earlier arrays run again one size up: numbered from 0 in this array.
            "resubmission": a.resubmits.is_some(),
        })).collect::<Vec<_>>(),
    });
    if let Some(redrive) = &map.redrive {
        // A redrive's attempt runs only some of the map's children: which attempt's, of how many.
        view["redriveOf"] = json!({"attempt": redrive.of, "mapChildren": redrive.map_children});
    }
    view
}

/// `GET /runs[?pipeline=NAME][&limit=N]`: 200 `{runs}`, newest first — one pipeline's, or
/// every pipeline's merged (the newest `limit` in all).
pub async fn list(call: &Call<'_>) -> Answer {
    let (query, stack) = (&call.request.query, call.stack);
    let limit = match query.get("limit").map(|l| l.parse::<i32>()) {
        None => 20,
        Some(Ok(limit)) if (1..=100).contains(&limit) => limit,
        Some(_) => return Err(ApiError::bad_request("limit is a number from 1 to 100").into()),
    };
    let pipelines: Vec<&String> = match query.get("pipeline") {
        Some(pipeline) if !stack.pipelines.contains_key(pipeline) => {
            return Err(ApiError::not_found(format!("no pipeline {pipeline:?}")).into())
        }
        Some(pipeline) => vec![pipeline],
        None => stack.pipelines.keys().collect(),
    };
    let mut runs = Vec::new();
    for pipeline in &pipelines {
        for run in call.clients.ports.store.list_runs(pipeline, limit).await? {
            let line = json!({"runId": run.run_id, "pipeline": pipeline, "status": run.status,
                              "createdAt": iso(Some(run.created_at))});
            runs.push((run.created_at, line));
        }
    }
    runs.sort_by_key(|run| std::cmp::Reverse(run.0));
    let runs: Vec<Value> = runs.into_iter().take(limit as usize).map(|(_, run)| run).collect();
    let mut answer = json!({"runs": runs});
    if let [pipeline] = pipelines.as_slice() {
        answer["pipeline"] = json!(pipeline);
    }
    Ok(response(200, &answer))
}

/// `DELETE /runs/{id}`: 202 `{runId, status, terminatedJobs}`.
pub async fn cancel(call: &Call<'_>) -> Answer {
    let id = &call.param;
    match call.clients.ports.driver(call.holder).cancel(id, batchline::now_ms()).await? {
        CancelOutcome::NoSuchRun => Err(ApiError::not_found(format!("no run {id}")).into()),
        CancelOutcome::AlreadyEnded(why) => {
            Err(ApiError::new(409, "RunEnded", format!("{why} (to run it again: batchline runs redrive {id})")).into())
        }
        CancelOutcome::Cancelled { run, terminated } => {
            Ok(response(202, &json!({"runId": run.run_id, "status": run.status, "terminatedJobs": terminated})))
        }
    }
}

/// `POST /runs/{id}/redrive`: 202 `{runId, status, redrive, stages, duplicate}`. The key
/// is the run's own concern: a redrive is one request for 24 hours under its key, and the
/// same key with another body is a conflict (the run's record keeps both).
pub async fn redrive(call: &Call<'_>) -> Answer {
    let id = &call.param;
    let body_problems = read_body::<RedriveBody>(&call.request.body)?;
    let Some(read) = call.clients.ports.store.load_run(id).await? else {
        return Err(ApiError::not_found(format!("no run {id}")).into());
    };
    let (body, sizes) = redrive_of(&read.run, body_problems)?;
    check_redrive_overrides(call.stack, &read.run, &sizes)?;
    let key = match idempotency_key(call.request, &format!("runs/{id}/redrive"), &call.holder.token)? {
        ApiKey::Request(key) | ApiKey::Caller(key) => key,
    };
    let driver = call.clients.ports.driver(call.holder);
    let fingerprint = body.fingerprint();
    match driver.redrive_request(read, &key, &sizes, Some(&fingerprint), batchline::now_ms()).await? {
        RedriveOutcome::NoSuchRun => Err(ApiError::not_found(format!("no run {id}")).into()),
        RedriveOutcome::Refused(refused @ RedriveRefused::Succeeded(_)) => {
            Err(ApiError::new(409, "RunSucceeded", refused.to_string()).into())
        }
        RedriveOutcome::Refused(refused @ RedriveRefused::KeyReused(_)) => {
            Err(ApiError::new(409, "IdempotencyConflict", refused.to_string()).into())
        }
        RedriveOutcome::Refused(refused) => Err(ApiError::new(409, "RunNotEnded", refused.to_string()).into()),
        RedriveOutcome::Redriven { run, redriven } => Ok(response(
            202,
            &json!({"runId": run.run_id, "status": run.status, "redrive": redriven.generation,
                    "stages": redriven.stages, "duplicate": redriven.duplicate}),
        )),
    }
}

/// `GET /runs/{id}`: the run, each stage with its attempts, sizes and log links.
pub fn run_view(
    run: &batchline::model::run::Run,
    config: &StackConfig,
    pricing: &batchline::model::cost::Pricing,
    region: &str,
    now_ms: i64,
) -> Value {
    let cost = run.cost(pricing);
    let stage_view = |name: &str, stage_run: &batchline::model::run::StageRun| {
        let declared = run.stage(name);
        let log_group = declared
            .and_then(|s| config.job_definitions.get(&s.job_definition))
            .map(|d| d.log_group.clone())
            .unwrap_or_else(|| batchline::model::stack::DEFAULT_LOG_GROUP.to_owned());
        let attempts: Vec<Value> = stage_run
            .attempts
            .iter()
            .map(|a| {
                json!({
                    "number": a.number,
                    "jobId": a.job_id,
                    "jobName": a.job_name,
                    "size": a.size,
                    "status": a.status,
                    "reason": a.reason,
                    "exitCode": a.exit_code,
                    "submittedAt": iso(a.submitted_at),
                    "startedAt": iso(a.started_at),
                    "stoppedAt": iso(a.stopped_at),
                    // Batch's own attempts of the job (its retry strategy's), once it ended.
                    "tasks": a.billed.iter().map(|t| json!({"startedAt": iso(Some(t.started_at)), "stoppedAt": iso(Some(t.stopped_at))})).collect::<Vec<_>>(),
                    "logStreamName": a.log_stream,
                    "logUrl": a.log_stream.as_deref().map(|s| log_console_url(region, &log_group, s)),
                    // Once its job ended: each task (Batch attempt) priced by its capacity; a
                    // map's children summed per array and capacity, once the map was closed.
                    "cost": a.is_billed().then(|| a.cost(pricing)),
                })
            })
            .collect();
        json!({
            "status": stage_run.status,
            "jobDefinition": declared.map(|s| s.job_definition.clone()),
            "after": declared.map(|s| s.after.clone()).unwrap_or_default(),
            "attempts": attempts,
            "costUsd": cost.stages.get(name).map(|c| c.usd).unwrap_or_default(),
            "map": stage_run.current().and_then(|a| a.map.as_ref()).map(|m| map_view(m, &BTreeMap::new())),
        })
    };
    let stages: serde_json::Map<String, Value> =
        run.stages.iter().map(|(name, s)| (name.clone(), stage_view(name, s))).collect();
    json!({
        "runId": run.run_id,
        "pipeline": run.pipeline.name,
        "status": run.status,
        "reason": run.reason,
        "trigger": run.trigger,
        "createdAt": iso(Some(run.created_at)),
        "endedAt": iso(run.ended_at),
        "durationMs": run.duration_ms(now_ms),
        // Parameters as given; of the environment only the names: its values may be secrets
        // (secrets belong in a job definition's `Secrets`), and read routes are not write routes.
        "input": {"parameters": run.input.parameters, "environment": run.input.environment.keys().collect::<Vec<_>>()},
        // Where its stages share data (BATCHLINE_RUN_DATA), when the stack has a folder for it.
        "runData": config.roles.names.run_data_uri(&run.run_id),
        // Its redrives: each started a generation; a stage's attempts go on across them.
        "redrives": run.redrives.iter().enumerate().map(|(i, r)| json!({
            "redrive": i + 1, "at": iso(Some(r.at)), "stages": r.stages
        })).collect::<Vec<_>>(),
        "stages": stages,
        "onFailure": run.on_failure.as_ref().map(|s| stage_view(batchline::model::pipeline::ON_FAILURE, s)),
        // What its ended attempts cost, retries and resizes included (the completion
        // event and the RunCost metric carry the same figure).
        "costUsd": cost.usd,
        "costIsUpperBound": cost.upper_bound,
        "maxRunCostUsd": run.pipeline.max_run_cost_usd,
    })
}

/// The body of `POST /runs/{id}/redrive` (all optional).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RedriveBody {
    /// A size for a stage's next attempt: `{"stage": {"vcpu": "1", "memory": "4096"}}`.
    #[serde(default)]
    pub sizes: BTreeMap<String, SizeBody>,
}

impl RedriveBody {
    /// What the caller asked for, as written (before any size is filled in or snapped up):
    /// the same key with another request is a conflict, and a retry of the same is not,
    /// whatever the run's sizes have become since.
    pub fn fingerprint(&self) -> String {
        let half = |n: &Option<Number>| n.as_ref().map(Number::text).unwrap_or_default();
        let sizes: Vec<String> = self
            .sizes
            .iter()
            .map(|(stage, size)| format!("{stage}={}/{}", half(&size.vcpu), half(&size.memory)))
            .collect();
        batchline::model::job_request::digest(&sizes.join(";"), 16)
    }
}

/// A size asked for: both halves, or one (the other kept, snapped up to a valid pair).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SizeBody {
    pub vcpu: Option<Number>,
    pub memory: Option<Number>,
}

/// A redrive may not size a stage whose job definition takes nothing from callers
/// (`AllowOverrides: "false"`): its size is the definition's (and its own resizes).
pub fn check_redrive_overrides(
    stack: &StackConfig,
    run: &batchline::model::run::Run,
    sizes: &BTreeMap<String, Size>,
) -> Result<(), ApiError> {
    let locked: Vec<String> = sizes
        .keys()
        .filter(|stage| {
            let definition = run.stage(stage).and_then(|s| stack.job_definitions.get(&s.job_definition));
            definition.is_some_and(|d| !d.allow_overrides)
        })
        .map(|stage| format!("stage {stage}"))
        .collect();
    if locked.is_empty() {
        Ok(())
    } else {
        Err(super::jobs::overrides_refused(&locked.join(", "), &["vcpu", "memory"]))
    }
}

/// What a redrive body asks of `run` (the body and its sizes), or every problem of it:
/// the body's own (read by [`read_body`]) and its sizes'.
pub fn redrive_of(
    run: &batchline::model::run::Run,
    (body, problems): (RedriveBody, Vec<Problem>),
) -> Result<(RedriveBody, BTreeMap<String, Size>), ApiError> {
    match redrive_sizes(run, &body) {
        Ok(sizes) if problems.is_empty() => Ok((body, sizes)),
        Ok(_) => Err(ApiError::refused(problems, false)),
        Err(err) => Err(ApiError::refused(with_value_problems(problems, err.problems), false)),
    }
}

/// The sizes a redrive asks for, each read as `POST /jobs` reads a size, with the stage's
/// latest size as the half not given. Every problem at once.
pub fn redrive_sizes(run: &batchline::model::run::Run, body: &RedriveBody) -> Result<BTreeMap<String, Size>, ApiError> {
    let mut sizes = BTreeMap::new();
    let mut problems = Vec::new();
    for (stage, asked) in &body.sizes {
        let place = format!("sizes.{stage}");
        let mut refuse =
            |problem: RequestError| problems.push(Problem::from_request(Some(&place), Some(&place), &problem));
        let (Some(stage_run), Some(declared)) = (run.stages.get(stage), run.stage(stage)) else {
            refuse(RequestError::invalid("", format!("run {} has no stage {stage:?}", run.run_id)));
            continue;
        };
        let latest = stage_run.current().map_or(declared.size, |a| a.size);
        if asked.vcpu.is_none() && asked.memory.is_none() {
            refuse(RequestError::invalid("", "give vcpu, memory or both"));
            continue;
        }
        match requested_size(asked.vcpu.as_ref(), asked.memory.as_ref(), latest) {
            Ok((size, _)) => match beyond_capacity(size, declared.max_vcpus, "the stage's job queue") {
                Some(too_large) => refuse(too_large),
                None => {
                    sizes.insert(stage.clone(), size);
                }
            },
            Err(errors) => errors.into_iter().for_each(refuse),
        }
    }
    if problems.is_empty() {
        Ok(sizes)
    } else {
        Err(ApiError::refused(problems, false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redrive_size_the_stages_queue_can_never_run_is_refused() {
        let pipeline: batchline::model::pipeline::Pipeline = serde_json::from_value(json!({
            "name": "p", "onFailure": null,
            "stages": {"only": {"jobDefinition": "default", "size": {"vcpu": "0.25", "memoryMib": 512}, "parameters": {},
                                "queue": "default", "after": [], "maxResizes": 0, "maxVcpus": 2}}
        }))
        .unwrap();
        let run = batchline::model::run::Run::start("p-1".into(), &pipeline, "api", Default::default(), 0);
        let body = |vcpu: &str, memory: &str| -> RedriveBody {
            serde_json::from_value(json!({"sizes": {"only": {"vcpu": vcpu, "memory": memory}}})).unwrap()
        };
        let refused = redrive_sizes(&run, &body("4", "8192")).unwrap_err();
        assert_eq!(refused.status, 400);
        assert_eq!(
            refused.message,
            "sizes.only: vcpu: 4 vCPU / 8192 MiB is more than the stage's job queue can run: its compute environments \
             allow at most 2 vCPU (MaxVcpus)"
        );
        assert_eq!(redrive_sizes(&run, &body("2", "4096")).unwrap()["only"].to_string(), "2 vCPU / 4096 MiB");
    }
}
