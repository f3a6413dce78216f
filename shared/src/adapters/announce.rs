//! EventBridge and CloudWatch through the AWS SDK: the adapter of the run announcer (completion events, run metrics), of the stuck-job watch's queue metrics, of the triggers' refusals and closed windows, and of the coalesce lane.

use async_trait::async_trait;
use aws_sdk_cloudwatch::types::{Dimension, MetricDatum, StandardUnit};
use serde_json::Value;
use tracing::warn;

use crate::model::coalesce::{CoalescedObject, COALESCE_DETAIL_TYPE};
use crate::model::map::{MapWork, MAP_WORK_DETAIL_TYPE};
use crate::model::run::{MetricUnit, RunMetric};
use crate::model::stuck::QueueReport;
use crate::services::announce::{lane_bus, COMPLETED_DETAIL_TYPE, EVENT_SOURCE};
use crate::services::ports::{CoalesceLane, QueueMetrics, RunAnnouncer, TriggerMetrics};
use crate::Error;

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

impl AwsAnnouncer {
    /// Puts one Batchline event on `bus` (the default bus when `None`), about `resource`.
    async fn put_event(
        &self,
        bus: Option<String>,
        detail_type: &str,
        detail: String,
        resource: String,
    ) -> Result<(), Error> {
        let entry = aws_sdk_eventbridge::types::PutEventsRequestEntry::builder()
            .set_event_bus_name(bus)
            .source(EVENT_SOURCE)
            .detail_type(detail_type)
            .detail(detail)
            .resources(resource)
            .build();
        let reply =
            self.eventbridge.put_events().entries(entry).send().await.map_err(|e| Error::aws("PutEvents", e))?;
        if reply.failed_entry_count() > 0 {
            let why = reply.entries().first().and_then(|e| e.error_message()).unwrap_or("unknown").to_owned();
            return Err(Error::Aws { operation: "PutEvents", code: "FailedEntry".into(), message: why });
        }
        Ok(())
    }
}

#[async_trait]
impl RunAnnouncer for AwsAnnouncer {
    async fn completion(&self, detail: &Value, run_id: &str) -> Result<(), Error> {
        self.put_event(None, COMPLETED_DETAIL_TYPE, detail.to_string(), format!("batchline:run/{run_id}")).await
    }

    async fn map_work(&self, work: &MapWork) -> Result<(), Error> {
        let detail = serde_json::to_string(work).map_err(|e| Error::InvalidEvent(e.to_string()))?;
        let bus = Some(lane_bus(&work.stack));
        self.put_event(bus, MAP_WORK_DETAIL_TYPE, detail, format!("batchline:run/{}", work.run_id)).await
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

#[async_trait]
impl TriggerMetrics for AwsAnnouncer {
    async fn triggers_refused(&self, rules: &[String]) {
        let datum = |dimensions: Vec<Dimension>| {
            MetricDatum::builder()
                .metric_name("TriggersRefused")
                .value(1.0)
                .unit(StandardUnit::Count)
                .set_dimensions(Some(dimensions))
                .build()
        };
        let mut data: Vec<MetricDatum> =
            rules.iter().map(|rule| datum(vec![Dimension::builder().name("Trigger").value(rule).build()])).collect();
        data.extend(rules.iter().map(|_| datum(vec![])));
        if let Err(err) =
            self.cloudwatch.put_metric_data().namespace(&self.namespace).set_metric_data(Some(data)).send().await
        {
            warn!(error = %Error::aws("PutMetricData", err), "refused triggers not counted");
        }
    }

    async fn window_closed(&self, trigger: &str, objects: usize, arrays: usize) {
        let mut data = Vec::new();
        for dimensions in [vec![], vec![Dimension::builder().name("Trigger").value(trigger).build()]] {
            for (name, value) in [("WindowsClosed", 1), ("ObjectsCoalesced", objects), ("CoalescedArrays", arrays)] {
                data.push(
                    MetricDatum::builder()
                        .metric_name(name)
                        .value(value as f64)
                        .unit(StandardUnit::Count)
                        .set_dimensions(Some(dimensions.clone()))
                        .build(),
                );
            }
        }
        if let Err(err) =
            self.cloudwatch.put_metric_data().namespace(&self.namespace).set_metric_data(Some(data)).send().await
        {
            warn!(error = %Error::aws("PutMetricData", err), trigger, "a closed window not counted");
        }
    }
}

#[async_trait]
impl CoalesceLane for AwsAnnouncer {
    async fn forward(&self, objects: &[CoalescedObject]) -> Result<(), Error> {
        // PutEvents takes ten entries a call.
        for ten in objects.chunks(10) {
            let mut entries = Vec::with_capacity(ten.len());
            for object in ten {
                let detail = serde_json::to_string(object).map_err(|e| Error::InvalidEvent(e.to_string()))?;
                entries.push(
                    aws_sdk_eventbridge::types::PutEventsRequestEntry::builder()
                        .event_bus_name(lane_bus(&object.stack))
                        .source(EVENT_SOURCE)
                        .detail_type(COALESCE_DETAIL_TYPE)
                        .detail(detail)
                        .resources(format!("arn:aws:s3:::{}/{}", object.bucket, object.key))
                        .build(),
                );
            }
            let reply = self
                .eventbridge
                .put_events()
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| Error::aws("PutEvents", e))?;
            if reply.failed_entry_count() > 0 {
                let failed = reply.entries().iter().find_map(|e| e.error_message()).unwrap_or("unknown").to_owned();
                return Err(Error::Aws { operation: "PutEvents", code: "FailedEntry".into(), message: failed });
            }
        }
        Ok(())
    }
}
