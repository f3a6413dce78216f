//! Custom CloudWatch metrics from Batch job state changes: what to publish, and how to pack it into few calls.
//!
//! # What is published
//! For every state change of a job (array parents excepted: their children are the work,
//! and counting both would count it twice):
//! - a count, `Jobs<Status>` (`JobsRunnable`, `JobsStarting`, `JobsRunning`,
//!   `JobsSucceeded`, `JobsFailed`, and `JobsSubmitted`/`JobsPending` when Batch sends them);
//! - on SUCCEEDED and FAILED: `QueueWaitTime` (startedAt − createdAt), `RunTime` (stoppedAt −
//!   startedAt), `TotalTime` (stoppedAt − createdAt), all in milliseconds; `Attempts`; and
//!   `EstimatedCost` in US dollars, each attempt priced by the capacity it ran on (see
//!   [`crate::model::cost`]). A job that never
//!   started (cancelled, or its dependency failed) has no wait or run time.
//!
//! Each value goes out under bounded dimension sets — never a job id: none (stack-wide),
//! `JobQueue`, `JobQueue`+`JobDefinition` (name without revision) and, for jobs tagged
//! `batchline:pipeline` / `batchline:stage`, `Pipeline` and `Pipeline`+`Stage`.
//!
//! Timestamps are the event's `time`, truncated to the minute (CloudWatch's standard
//! resolution); a time CloudWatch would refuse (over two weeks old or two hours ahead)
//! is replaced by the time of publishing.
//!
//! # Packing
//! Values with the same metric, dimensions, unit and minute share one datum as
//! `Values`/`Counts` (at most 150 distinct values a datum). [`plan_calls`] packs the
//! datums of many events into as few PutMetricData calls as the API allows (at most 1,000
//! datums and 1 MB a call), keeping each event's data within one call, so a failed call
//! names exactly the events to retry.
//!
//! Just over 500 lines with its tests: one concept (what an event publishes, and packing
//! it into calls); the tests are half of it.

use std::collections::BTreeMap;

use crate::model::batch_event::{JobStateChangeEvent, JobStatus};
use crate::model::cost::Pricing;
use crate::model::job_request::{PIPELINE_TAG, STAGE_TAG};

/// PutMetricData's limits.
pub const MAX_DATUMS_PER_CALL: usize = 1_000;
pub const MAX_VALUES_PER_DATUM: usize = 150;
/// The API allows 1 MB a request; the estimate below is conservative and this leaves room.
pub const MAX_BYTES_PER_CALL: usize = 900_000;

const MINUTE_MS: i64 = 60_000;
const OLDEST_ACCEPTED_MS: i64 = 14 * 24 * 60 * MINUTE_MS - 10 * MINUTE_MS;
const NEWEST_ACCEPTED_MS: i64 = 2 * 60 * MINUTE_MS - 10 * MINUTE_MS;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Unit {
    Count,
    Milliseconds,
    None,
}

impl Unit {
    pub fn as_str(&self) -> &'static str {
        match self {
            Unit::Count => "Count",
            Unit::Milliseconds => "Milliseconds",
            Unit::None => "None",
        }
    }
}

pub type Dimensions = Vec<(&'static str, String)>;

/// One value of one metric, before dimension sets are applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub metric: &'static str,
    pub unit: Unit,
    pub value: f64,
}

/// The metrics of one event: its values, the dimension sets they go under, and the minute.
#[derive(Debug, Clone, PartialEq)]
pub struct EventMetrics {
    pub observations: Vec<Observation>,
    pub dimension_sets: Vec<Dimensions>,
    pub minute_ms: i64,
}

/// The metric name counting transitions into `status`, for the statuses Batch defines.
pub fn count_metric(status: &JobStatus) -> Option<&'static str> {
    Some(match status {
        JobStatus::Submitted => "JobsSubmitted",
        JobStatus::Pending => "JobsPending",
        JobStatus::Runnable => "JobsRunnable",
        JobStatus::Starting => "JobsStarting",
        JobStatus::Running => "JobsRunning",
        JobStatus::Succeeded => "JobsSucceeded",
        JobStatus::Failed => "JobsFailed",
        JobStatus::Other(_) => return None,
    })
}

/// What one event contributes (see the module docs); `now_ms` stands in for a missing or
/// unacceptable time.
pub fn from_event(event: &JobStateChangeEvent, pricing: &Pricing, now_ms: i64) -> EventMetrics {
    let detail = &event.detail;
    let mut observations = Vec::new();
    if !detail.is_array_parent() {
        if let Some(metric) = count_metric(&detail.status) {
            observations.push(Observation { metric, unit: Unit::Count, value: 1.0 });
        }
        if detail.status.is_terminal() {
            observations.extend(terminal_observations(event, pricing));
        }
    }
    let time = event.time_millis().or(detail.stopped_at).or(detail.started_at).or(detail.created_at).unwrap_or(now_ms);
    let time = if time < now_ms - OLDEST_ACCEPTED_MS || time > now_ms + NEWEST_ACCEPTED_MS { now_ms } else { time };
    EventMetrics { observations, dimension_sets: dimension_sets(event), minute_ms: time - time.rem_euclid(MINUTE_MS) }
}

fn terminal_observations(event: &JobStateChangeEvent, pricing: &Pricing) -> Vec<Observation> {
    let detail = &event.detail;
    let mut out = Vec::new();
    let millis = |metric, from: Option<i64>, to: Option<i64>| match (from, to) {
        (Some(from), Some(to)) if to >= from => {
            Some(Observation { metric, unit: Unit::Milliseconds, value: (to - from) as f64 })
        }
        _ => None,
    };
    out.extend(millis("QueueWaitTime", detail.created_at, detail.started_at));
    out.extend(millis("RunTime", detail.started_at, detail.stopped_at));
    out.extend(millis("TotalTime", detail.created_at, detail.stopped_at));
    out.push(Observation { metric: "Attempts", unit: Unit::Count, value: detail.attempts().len() as f64 });
    if let Some(cost) = pricing.price_job(detail) {
        out.push(Observation { metric: "EstimatedCost", unit: Unit::None, value: cost.usd });
    }
    out
}

fn dimension_sets(event: &JobStateChangeEvent) -> Vec<Dimensions> {
    let detail = &event.detail;
    let mut sets = vec![Vec::new()];
    // CloudWatch refuses a whole call for one dimension value that is not 1-1024 ASCII
    // characters without control characters; such a value (a tag set outside Batchline)
    // drops its dimension set, never the call.
    let valid = |value: &&str| {
        !value.is_empty() && value.len() <= 1024 && value.chars().all(|c| c.is_ascii() && !c.is_ascii_control())
    };
    if let Some(queue) = detail.queue_name().filter(valid) {
        sets.push(vec![("JobQueue", queue.to_owned())]);
        if let Some(definition) = detail.job_definition_name().filter(valid) {
            sets.push(vec![("JobQueue", queue.to_owned()), ("JobDefinition", definition.to_owned())]);
        }
    }
    if let Some(pipeline) = detail.tag(PIPELINE_TAG).filter(valid) {
        sets.push(vec![("Pipeline", pipeline.to_owned())]);
        if let Some(stage) = detail.tag(STAGE_TAG).filter(valid) {
            sets.push(vec![("Pipeline", pipeline.to_owned()), ("Stage", stage.to_owned())]);
        }
    }
    sets
}

/// A datum as PutMetricData takes it: distinct values with how often each occurred.
#[derive(Debug, Clone, PartialEq)]
pub struct Datum {
    pub metric: &'static str,
    pub dimensions: Dimensions,
    pub unit: Unit,
    pub timestamp_ms: i64,
    pub values: Vec<f64>,
    pub counts: Vec<f64>,
}

type DatumKey = (&'static str, Dimensions, Unit, i64);

/// Datums being packed into one call.
#[derive(Debug, Default)]
struct Pack {
    /// Per datum key: value (as bits, so it orders and compares exactly) → count.
    datums: BTreeMap<DatumKey, BTreeMap<u64, u64>>,
    datum_count: usize,
    bytes: usize,
}

const VALUE_BYTES: usize = 24;
const DATUM_OVERHEAD_BYTES: usize = 96;

fn key_bytes(key: &DatumKey) -> usize {
    DATUM_OVERHEAD_BYTES + key.0.len() + key.1.iter().map(|(n, v)| n.len() + v.len() + 16).sum::<usize>()
}

/// The request size these datums are counted as against [`MAX_BYTES_PER_CALL`]: more
/// than their CBOR encoding takes (about 18 bytes a value and count).
pub fn estimated_bytes(datums: &[Datum]) -> usize {
    datums
        .iter()
        .map(|d| key_bytes(&(d.metric, d.dimensions.clone(), d.unit, d.timestamp_ms)) + d.values.len() * VALUE_BYTES)
        .sum()
}

impl Pack {
    /// The datums and bytes adding these metrics would cost at most (a conservative
    /// estimate: it assumes every value is new).
    fn cost_of(&self, metrics: &EventMetrics) -> (usize, usize) {
        let mut datums = 0;
        let mut bytes = 0;
        for dimensions in &metrics.dimension_sets {
            for observation in &metrics.observations {
                let key = (observation.metric, dimensions.clone(), observation.unit, metrics.minute_ms);
                match self.datums.get(&key) {
                    None => {
                        datums += 1;
                        bytes += key_bytes(&key) + VALUE_BYTES;
                    }
                    Some(values) => {
                        if !values.contains_key(&observation.value.to_bits()) {
                            if values.len() % MAX_VALUES_PER_DATUM == 0 {
                                datums += 1;
                                bytes += key_bytes(&key);
                            }
                            bytes += VALUE_BYTES;
                        }
                    }
                }
            }
        }
        (datums, bytes)
    }

    fn add(&mut self, metrics: &EventMetrics) {
        for dimensions in &metrics.dimension_sets {
            for observation in &metrics.observations {
                let key = (observation.metric, dimensions.clone(), observation.unit, metrics.minute_ms);
                let key_size = key_bytes(&key);
                let values = self.datums.entry(key).or_default();
                let bits = observation.value.to_bits();
                if !values.contains_key(&bits) {
                    if values.len() % MAX_VALUES_PER_DATUM == 0 {
                        self.datum_count += 1;
                        self.bytes += key_size;
                    }
                    self.bytes += VALUE_BYTES;
                }
                *values.entry(bits).or_default() += 1;
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.datums.is_empty()
    }

    fn into_datums(self) -> Vec<Datum> {
        let mut out = Vec::with_capacity(self.datum_count);
        for ((metric, dimensions, unit, timestamp_ms), values) in self.datums {
            let values: Vec<(f64, f64)> =
                values.into_iter().map(|(bits, count)| (f64::from_bits(bits), count as f64)).collect();
            for chunk in values.chunks(MAX_VALUES_PER_DATUM) {
                out.push(Datum {
                    metric,
                    dimensions: dimensions.clone(),
                    unit,
                    timestamp_ms,
                    values: chunk.iter().map(|(v, _)| *v).collect(),
                    counts: chunk.iter().map(|(_, c)| *c).collect(),
                });
            }
        }
        out
    }
}

/// One PutMetricData call: its datums and the events (by index) whose data it carries.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedCall {
    pub events: Vec<usize>,
    pub datums: Vec<Datum>,
}

/// Packs the metrics of many events (indexed by position) into as few calls as the limits
/// allow, each event's data in exactly one call. Events without observations need no call.
pub fn plan_calls(events: &[EventMetrics]) -> Vec<PlannedCall> {
    let mut calls = Vec::new();
    let mut pack = Pack::default();
    let mut members = Vec::new();
    for (index, metrics) in events.iter().enumerate() {
        if metrics.observations.is_empty() {
            continue;
        }
        let (datums, bytes) = pack.cost_of(metrics);
        if !pack.is_empty()
            && (pack.datum_count + datums > MAX_DATUMS_PER_CALL || pack.bytes + bytes > MAX_BYTES_PER_CALL)
        {
            calls.push(PlannedCall {
                events: std::mem::take(&mut members),
                datums: std::mem::take(&mut pack).into_datums(),
            });
        }
        pack.add(metrics);
        members.push(index);
    }
    if !pack.is_empty() {
        calls.push(PlannedCall { events: members, datums: pack.into_datums() });
    }
    calls
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::cost::{Clusters, Rates};
    use crate::settings::PriceOverrides;
    use serde_json::json;

    /// The built-in rates, no cluster known (so on-demand).
    fn pricing() -> Pricing {
        Pricing { clusters: Clusters::default(), rates: Rates::with(&PriceOverrides::default()) }
    }

    const QUEUE: &str = "arn:aws:batch:us-east-1:123456789012:job-queue/etl";
    const DEFINITION: &str = "arn:aws:batch:us-east-1:123456789012:job-definition/extract:3";
    const NOW: i64 = 1_800_000_000_000;

    fn event(status: &str, extra: serde_json::Value) -> JobStateChangeEvent {
        let mut value = json!({
            "id": "e", "detail-type": "Batch Job State Change", "source": "aws.batch",
            "time": "2026-01-01T00:00:30Z",
            "detail": {"jobId": "j", "status": status, "jobQueue": QUEUE, "jobDefinition": DEFINITION,
                       "createdAt": 1_800_000_000_000i64}
        });
        for (key, field) in extra.as_object().unwrap() {
            value["detail"][key] = field.clone();
        }
        JobStateChangeEvent::from_value(value).unwrap()
    }

    fn succeeded() -> JobStateChangeEvent {
        event(
            "SUCCEEDED",
            json!({
                "startedAt": 1_800_000_020_000i64, "stoppedAt": 1_800_000_050_000i64,
                "container": {"resourceRequirements": [{"type": "VCPU", "value": "1"}, {"type": "MEMORY", "value": "2048"}]},
                "attempts": [{"startedAt": 1_800_000_020_000i64, "stoppedAt": 1_800_000_050_000i64, "container": {"exitCode": 0}}],
                "tags": {"batchline:pipeline": "nightly", "batchline:stage": "extract"}
            }),
        )
    }

    fn value_of(metrics: &EventMetrics, name: &str) -> Option<f64> {
        metrics.observations.iter().find(|o| o.metric == name).map(|o| o.value)
    }

    #[test]
    fn a_transition_counts_once_under_every_bounded_dimension_set() {
        let metrics = from_event(&event("RUNNING", json!({})), &pricing(), NOW);
        assert_eq!(metrics.observations, vec![Observation { metric: "JobsRunning", unit: Unit::Count, value: 1.0 }]);
        assert_eq!(
            metrics.dimension_sets,
            vec![
                vec![],
                vec![("JobQueue", "etl".to_owned())],
                vec![("JobQueue", "etl".to_owned()), ("JobDefinition", "extract".to_owned())],
            ]
        );
    }

    #[test]
    fn a_terminal_state_adds_times_attempts_and_cost() {
        let metrics = from_event(&succeeded(), &pricing(), NOW);
        assert_eq!(value_of(&metrics, "JobsSucceeded"), Some(1.0));
        assert_eq!(value_of(&metrics, "QueueWaitTime"), Some(20_000.0));
        assert_eq!(value_of(&metrics, "RunTime"), Some(30_000.0));
        assert_eq!(value_of(&metrics, "TotalTime"), Some(50_000.0));
        assert_eq!(value_of(&metrics, "Attempts"), Some(1.0));
        // 30 s bills as the one-minute minimum: (1 vCPU × 0.04048 + 2 GB × 0.004445) / 60
        let cost = value_of(&metrics, "EstimatedCost").unwrap();
        assert!((cost - (0.04048 + 2.0 * 0.004445) / 60.0).abs() < 1e-12, "{cost}");
        assert!(metrics
            .dimension_sets
            .contains(&vec![("Pipeline", "nightly".to_owned()), ("Stage", "extract".to_owned())]));
        assert_eq!(metrics.dimension_sets.len(), 5);
    }

    #[test]
    fn a_dimension_value_cloudwatch_would_refuse_drops_its_dimension_set_not_the_call() {
        for bad in ["café", "tab\there", "\u{7f}"] {
            let event = event("SUCCEEDED", json!({"tags": {"batchline:pipeline": bad, "batchline:stage": "extract"}}));
            let sets = dimension_sets(&event);
            assert!(sets.iter().all(|set| set.iter().all(|(name, _)| *name != "Pipeline")), "{bad:?}: {sets:?}");
            assert!(sets.iter().any(|set| set.iter().any(|(name, _)| *name == "JobQueue")), "the rest stays");
        }
    }

    #[test]
    fn cost_follows_architecture_and_overrides() {
        let mut arm = succeeded();
        arm.detail.container.as_mut().unwrap().runtime_platform =
            Some(crate::model::batch_event::RuntimePlatform { cpu_architecture: Some("ARM64".into()) });
        let cost = value_of(&from_event(&arm, &pricing(), NOW), "EstimatedCost").unwrap();
        assert!((cost - (0.03238 + 2.0 * 0.00356) / 60.0).abs() < 1e-12);
        let overrides = PriceOverrides { vcpu_hour: Some(1.0), gb_hour: Some(0.0), ..PriceOverrides::default() };
        let priced = Pricing { clusters: Clusters::default(), rates: Rates::with(&overrides) };
        assert!((value_of(&from_event(&arm, &priced, NOW), "EstimatedCost").unwrap() - 1.0 / 60.0).abs() < 1e-12);
    }

    #[test]
    fn a_job_that_never_ran_has_no_run_time_and_array_parents_are_not_counted() {
        let never = from_event(&event("FAILED", json!({"stoppedAt": 1_800_000_005_000i64})), &pricing(), NOW);
        assert_eq!(value_of(&never, "RunTime"), None);
        assert_eq!(value_of(&never, "QueueWaitTime"), None);
        assert_eq!(value_of(&never, "TotalTime"), Some(5_000.0));
        assert_eq!(value_of(&never, "Attempts"), Some(0.0));
        let parent = from_event(&event("SUCCEEDED", json!({"arrayProperties": {"size": 3}})), &pricing(), NOW);
        assert!(parent.observations.is_empty());
        let child = from_event(&event("RUNNING", json!({"arrayProperties": {"index": 1}})), &pricing(), NOW);
        assert_eq!(value_of(&child, "JobsRunning"), Some(1.0));
    }

    #[test]
    fn times_are_minutes_and_unacceptable_times_become_now() {
        let metrics = from_event(&event("RUNNING", json!({})), &pricing(), NOW);
        let event_time =
            aws_smithy_types::DateTime::from_str("2026-01-01T00:00:30Z", aws_smithy_types::date_time::Format::DateTime)
                .unwrap()
                .to_millis()
                .unwrap();
        // The fixture's time is far from NOW, so NOW (truncated) is used.
        assert_ne!(metrics.minute_ms, event_time - event_time % MINUTE_MS);
        assert_eq!(metrics.minute_ms, NOW - NOW % MINUTE_MS);
        let near = from_event(&event("RUNNING", json!({})), &pricing(), event_time + 5_000);
        assert_eq!(near.minute_ms, event_time - 30_000);
    }

    #[test]
    fn many_events_pack_into_one_call_with_values_and_counts() {
        let events: Vec<EventMetrics> =
            (0..500).map(|_| from_event(&succeeded(), &pricing(), 1_800_000_030_000)).collect();
        let calls = plan_calls(&events);
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].events.len(), 500);
        let succeeded_overall =
            calls[0].datums.iter().find(|d| d.metric == "JobsSucceeded" && d.dimensions.is_empty()).unwrap();
        assert_eq!((succeeded_overall.values.clone(), succeeded_overall.counts.clone()), (vec![1.0], vec![500.0]));
        // 6 metrics × 5 dimension sets
        assert_eq!(calls[0].datums.len(), 30);
    }

    #[test]
    fn more_than_150_distinct_values_split_into_more_datums_and_calls_respect_the_limits() {
        let events: Vec<EventMetrics> = (0..20_000)
            .map(|i| {
                let mut e = succeeded();
                e.detail.stopped_at = Some(1_800_000_050_000 + i);
                e.detail.job_queue = Some(format!("arn:aws:batch:us-east-1:1:job-queue/q{}", i % 40));
                from_event(&e, &pricing(), 1_800_000_030_000)
            })
            .collect();
        let calls = plan_calls(&events);
        let mut seen = 0;
        for call in &calls {
            assert!(call.datums.len() <= MAX_DATUMS_PER_CALL);
            assert!(call
                .datums
                .iter()
                .all(|d| d.values.len() <= MAX_VALUES_PER_DATUM && d.values.len() == d.counts.len()));
            seen += call.events.len();
            let total: f64 = call
                .datums
                .iter()
                .filter(|d| d.metric == "JobsSucceeded" && d.dimensions.is_empty())
                .flat_map(|d| d.counts.clone())
                .sum();
            assert_eq!(total, call.events.len() as f64, "each event's data stays within its call");
        }
        assert_eq!(seen, 20_000);
        // Far fewer calls than events, and none wasted: every call but the last is close to
        // full, by datums or by bytes (datums of 150 values make bytes the limit here).
        assert!(calls.len() > 1 && calls.len() < 20, "{} calls", calls.len());
        for call in &calls[..calls.len() - 1] {
            let full_by_datums = call.datums.len() > MAX_DATUMS_PER_CALL - 40;
            let full_by_bytes = estimated_bytes(&call.datums) > MAX_BYTES_PER_CALL * 9 / 10;
            assert!(
                full_by_datums || full_by_bytes,
                "{} datums, {} bytes",
                call.datums.len(),
                estimated_bytes(&call.datums)
            );
        }
    }
}
