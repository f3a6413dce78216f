//! The run announcer port: "Batchline Run Completed" on the default event bus and the run metrics, with the AWS adapter (which also publishes the stuck-job watch's queue metrics).

use async_trait::async_trait;
use aws_sdk_cloudwatch::types::{Dimension, MetricDatum, StandardUnit};
use serde_json::{json, Value};
use tracing::warn;

use crate::model::pipeline::ON_FAILURE;
pub use crate::model::run::{MetricUnit, RunMetric};
use crate::model::run::{Run, RunCost, RunStatus};
use crate::services::stuck::{QueueMetrics, QueueReport};
use crate::Error;

pub const COMPLETED_DETAIL_TYPE: &str = "Batchline Run Completed";
pub const EVENT_SOURCE: &str = "batchline";

#[async_trait]
pub trait RunAnnouncer: Send + Sync {
    /// Sends the completion event of an ended run.
    async fn completion(&self, detail: &Value, run_id: &str) -> Result<(), Error>;
    /// Publishes run metrics per pipeline and overall; a failure is logged, not returned:
    /// the run's state matters more than its metrics.
    async fn run_metrics(&self, pipeline: &str, metrics: &[RunMetric]);
}

/// The completion event's detail.
pub fn completion_detail(run: &Run, now_ms: i64, cost: &RunCost) -> Value {
    let stage = |name: &str, status, attempts: usize| {
        let usd = cost.stages.get(name).map(|c| c.usd).unwrap_or_default();
        json!({"status": status, "attempts": attempts, "costUsd": usd})
    };
    let stages: serde_json::Map<String, Value> = run
        .stages
        .iter()
        .map(|(k, s)| (k.clone(), stage(k, s.status, s.attempts.len())))
        .chain(run.on_failure.iter().map(|s| (ON_FAILURE.to_owned(), stage(ON_FAILURE, s.status, s.attempts.len()))))
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

/// EventBridge and CloudWatch through the AWS SDK.
pub struct AwsAnnouncer {
    eventbridge: aws_sdk_eventbridge::Client,
    cloudwatch: aws_sdk_cloudwatch::Client,
    namespace: String,
}

impl AwsAnnouncer {
    pub fn new(
        eventbridge: aws_sdk_eventbridge::Client,
        cloudwatch: aws_sdk_cloudwatch::Client,
        namespace: impl Into<String>,
    ) -> Self {
        AwsAnnouncer { eventbridge, cloudwatch, namespace: namespace.into() }
    }
}

#[async_trait]
impl RunAnnouncer for AwsAnnouncer {
    async fn completion(&self, detail: &Value, run_id: &str) -> Result<(), Error> {
        let entry = aws_sdk_eventbridge::types::PutEventsRequestEntry::builder()
            .source(EVENT_SOURCE)
            .detail_type(COMPLETED_DETAIL_TYPE)
            .detail(detail.to_string())
            .resources(format!("batchline:run/{run_id}"))
            .build();
        let reply =
            self.eventbridge.put_events().entries(entry).send().await.map_err(|e| Error::aws("PutEvents", e))?;
        if reply.failed_entry_count() > 0 {
            let why = reply.entries().first().and_then(|e| e.error_message()).unwrap_or("unknown").to_owned();
            return Err(Error::Aws { operation: "PutEvents", code: "FailedEntry".into(), message: why });
        }
        Ok(())
    }

    async fn run_metrics(&self, pipeline: &str, metrics: &[RunMetric]) {
        let mut data = Vec::new();
        for metric in metrics {
            let unit = match metric.unit {
                MetricUnit::Count => StandardUnit::Count,
                MetricUnit::Milliseconds => StandardUnit::Milliseconds,
                MetricUnit::Usd => StandardUnit::None,
            };
            for dimensions in [vec![], vec![Dimension::builder().name("Pipeline").value(pipeline).build()]] {
                data.push(
                    MetricDatum::builder()
                        .metric_name(metric.name)
                        .value(metric.value)
                        .unit(unit.clone())
                        .set_dimensions(Some(dimensions))
                        .build(),
                );
            }
        }
        if let Err(err) =
            self.cloudwatch.put_metric_data().namespace(&self.namespace).set_metric_data(Some(data)).send().await
        {
            warn!(error = %Error::aws("PutMetricData", err), "run metrics not published");
        }
    }
}

#[async_trait]
impl QueueMetrics for AwsAnnouncer {
    async fn queue_metrics(&self, queues: &[QueueReport]) {
        if queues.is_empty() {
            return;
        }
        let datum = |name: &str, value: f64, unit: StandardUnit, queue: Option<&str>| {
            MetricDatum::builder()
                .metric_name(name)
                .value(value)
                .unit(unit)
                .set_dimensions(Some(
                    queue.map(|q| Dimension::builder().name("JobQueue").value(q).build()).into_iter().collect(),
                ))
                .build()
        };
        let mut data = Vec::new();
        for queue in queues {
            let name = Some(queue.queue.as_str());
            data.push(datum(
                "OldestRunnableSeconds",
                queue.oldest_runnable_seconds as f64,
                StandardUnit::Seconds,
                name,
            ));
            data.push(datum("StuckJobs", queue.stuck as f64, StandardUnit::Count, name));
        }
        // The stack's figures: the longest wait and all stuck jobs (what the alarm watches).
        let oldest = queues.iter().map(|q| q.oldest_runnable_seconds).max().unwrap_or(0);
        data.push(datum("OldestRunnableSeconds", oldest as f64, StandardUnit::Seconds, None));
        data.push(datum("StuckJobs", queues.iter().map(|q| q.stuck).sum::<usize>() as f64, StandardUnit::Count, None));
        if let Err(err) =
            self.cloudwatch.put_metric_data().namespace(&self.namespace).set_metric_data(Some(data)).send().await
        {
            warn!(error = %Error::aws("PutMetricData", err), "queue metrics not published");
        }
    }
}
