//! What a run announces when it ends: the "Batchline Run Completed" event's detail and the run's outcome metrics (the announcer port sends them).

use serde_json::{json, Value};

use crate::model::pipeline::ON_FAILURE;
pub use crate::model::run::{MetricUnit, RunMetric};
use crate::model::run::{Run, RunCost, RunStatus, StageRun};

pub const COMPLETED_DETAIL_TYPE: &str = "Batchline Run Completed";
pub const EVENT_SOURCE: &str = "batchline";

/// The stack's own event bus, for the work its functions hand each other (map work, coalesced
/// objects): `<NamePrefix>-lanes`, the template's `LaneBus` (the template ties `NamePrefix` to
/// the stack's name). Its policy lets only the stack's functions put events on it, so nobody
/// else in the account can forge that work, as anyone allowed `events:PutEvents` could on the
/// default bus. Completion events stay on the default bus, for users to subscribe to.
pub fn lane_bus(name_prefix: &str) -> String {
    format!("{name_prefix}-lanes")
}

/// The completion event's detail.
pub fn completion_detail(run: &Run, now_ms: i64, cost: &RunCost) -> Value {
    let stage = |name: &str, stage_run: &StageRun| {
        let usd = cost.stages.get(name).map(|c| c.usd).unwrap_or_default();
        let mut detail = json!({"status": stage_run.status, "attempts": stage_run.attempts.len(), "costUsd": usd});
        // A map stage: its children's counts, and where its failed children are all listed.
        if let Some(map) = stage_run.current().and_then(|a| a.map.as_ref()) {
            detail["map"] = json!({"children": map.children, "succeeded": map.succeeded(), "failed": map.failed(),
                                   "failedItemsUri": map.failed_items_uri});
        }
        detail
    };
    let stages: serde_json::Map<String, Value> = run
        .stages
        .iter()
        .map(|(k, s)| (k.clone(), stage(k, s)))
        .chain(run.on_failure.iter().map(|s| (ON_FAILURE.to_owned(), stage(ON_FAILURE, s))))
        .collect();
    json!({
        "runId": run.run_id,
        "pipeline": run.pipeline.name,
        "outcome": run.status.as_str(),
        "reason": run.reason,
        "durationMs": run.duration_ms(now_ms),
        // The generation this announces: 0 for the run as started, n after its nth redrive.
        "redrive": run.redrives.len(),
        "startedAt": run.started_at(),
        "endedAt": run.ended_at,
        "trigger": run.trigger,
        "stages": stages,
        // Every attempt of the run, retries and resizes included, once each.
        "costUsd": cost.usd,
        "costIsUpperBound": cost.upper_bound,
    })
}

/// The metrics of an ended run: its outcome count, its duration and its cost.
pub fn outcome_metrics(run: &Run, now_ms: i64, cost: &RunCost) -> Vec<RunMetric> {
    let outcome = match run.status {
        RunStatus::Succeeded => "RunsSucceeded",
        RunStatus::Failed => "RunsFailed",
        RunStatus::Cancelled => "RunsCancelled",
        RunStatus::Running => return vec![],
    };
    vec![
        RunMetric { name: outcome, value: 1.0, unit: MetricUnit::Count },
        RunMetric { name: "RunDuration", value: run.duration_ms(now_ms) as f64, unit: MetricUnit::Milliseconds },
        // What this generation added: a redriven run's earlier generations published theirs,
        // and the dashboard sums the metric.
        RunMetric { name: "RunCost", value: (cost.usd - run.announced_cost_usd).max(0.0), unit: MetricUnit::Usd },
    ]
}
