//! Pipeline runs in AWS: the run record in DynamoDB, submitting planned stages, completion events and run metrics.
//!
//! A run is one item, `pk = RUN#<run id>`, `sk = RUN`: the [`Run`] as JSON and a `version`
//! number. Every change is a conditional write on the version read (optimistic
//! concurrency), retried from a fresh read on conflict, so concurrent events for one run
//! never overwrite each other. Runs are also listed per pipeline, newest first, under
//! `pk = PIPELINE#<name>`, `sk = RUN#<created at>#<run id>` (an index item carrying the
//! status; an addition to the design's item kinds, documented in the README).
//!
//! [`RunServices::drive`] does what a record says is still to do: submit planned stage
//! attempts (exactly once each, through [`Submitter`] with the key `run:<id>:<stage>:<n>`),
//! and for an ended run, send the "Batchline Run Completed" event and the run metrics once.
//! Every path that changes a run drives it afterwards, and the repair sweep drives every
//! running run, so a crash between a write and a submission is repaired by the next event
//! or sweep.

use std::collections::{BTreeMap, HashMap};

use aws_sdk_cloudwatch::types::{Dimension, MetricDatum, StandardUnit};
use aws_sdk_dynamodb::types::AttributeValue;
use serde_json::{json, Value};
use tracing::{info, warn};

use crate::batch_event::JobStateChangeEvent;
use crate::job_request::{digest, JobRequest, PIPELINE_TAG, RUN_TAG, STAGE_TAG, TRIGGER_TAG};
use crate::pipeline::{attempt_key, Applied, Run, RunInput, RunStatus, ON_FAILURE};
use crate::stack_config::StackConfig;
use crate::submitter::{SubmitError, Submitter};
use crate::Error;

pub const COMPLETED_DETAIL_TYPE: &str = "Batchline Run Completed";
pub const EVENT_SOURCE: &str = "batchline";
/// How long run records are kept.
pub const RUN_RETENTION_SECONDS: i64 = 90 * 24 * 3600;
const WRITE_ATTEMPTS: usize = 8;

/// The clients and names run handling needs.
pub struct RunServices<'a> {
    pub batch: &'a aws_sdk_batch::Client,
    pub dynamodb: &'a aws_sdk_dynamodb::Client,
    pub cloudwatch: &'a aws_sdk_cloudwatch::Client,
    pub eventbridge: &'a aws_sdk_eventbridge::Client,
    pub table: &'a str,
    pub namespace: &'a str,
    /// The stack configuration, read only when a stage must be submitted.
    pub configs: &'a crate::config_store::ConfigCache,
}

/// A run id: the pipeline's name and a hash of what started it, so a repeated trigger
/// names the same run.
pub fn run_id(pipeline: &str, idempotency_key: &str) -> String {
    format!("{pipeline}-{}", digest(idempotency_key, 16))
}

fn run_key(run_id: &str) -> AttributeValue {
    AttributeValue::S(format!("RUN#{run_id}"))
}

fn index_sort_key(run: &Run) -> String {
    format!("RUN#{:013}#{}", run.created_at, run.run_id)
}

/// The job for a planned stage attempt.
pub fn stage_job(
    config: &StackConfig,
    run: &Run,
    stage: &str,
    attempt: &crate::pipeline::Attempt,
) -> Result<JobRequest, String> {
    let declared = run.stage(stage).ok_or_else(|| format!("run {} has no stage {stage}", run.run_id))?;
    let definition = config.job_definitions.get(&declared.job_definition).ok_or_else(|| {
        format!("stage {stage}: job definition {:?} is no longer configured", declared.job_definition)
    })?;
    let definition_arn = definition
        .arn
        .clone()
        .ok_or_else(|| format!("job definition {:?} is not registered", declared.job_definition))?;
    let queue_arn = config
        .job_queues
        .get(&declared.queue)
        .and_then(|q| q.arn.clone())
        .ok_or_else(|| format!("stage {stage}: queue {:?} is no longer configured", declared.queue))?;
    let mut parameters = run.input.parameters.clone();
    parameters.extend(declared.parameters.clone());
    parameters.insert("runId".into(), run.run_id.clone());
    parameters.insert("stage".into(), stage.to_owned());
    let mut environment = run.input.environment.clone();
    environment.insert("BATCHLINE_RUN_ID".into(), run.run_id.clone());
    environment.insert("BATCHLINE_STAGE".into(), stage.to_owned());
    environment.insert("BATCHLINE_ATTEMPT".into(), attempt.number.to_string());
    let key = attempt_key(&run.run_id, stage, attempt.number);
    Ok(JobRequest {
        job_name: attempt.job_name.clone().unwrap_or_else(|| crate::job_request::job_name(&run.run_id, &key)),
        idempotency_key: key,
        queue_arn,
        job_definition_arn: definition_arn,
        parameters,
        environment,
        command: None,
        size: (attempt.size != definition.size).then_some(attempt.size),
        array_size: None,
        depends_on: vec![],
        tags: BTreeMap::from([
            (RUN_TAG.to_owned(), run.run_id.clone()),
            (PIPELINE_TAG.to_owned(), run.pipeline.name.clone()),
            (STAGE_TAG.to_owned(), stage.to_owned()),
            (TRIGGER_TAG.to_owned(), run.trigger.clone()),
        ]),
    })
}

/// A summary line of a run, from the per-pipeline index.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSummary {
    pub run_id: String,
    pub status: String,
    pub created_at: i64,
}

impl RunServices<'_> {
    /// The run and the version it was read at.
    pub async fn load(&self, run_id: &str) -> Result<Option<(Run, i64)>, Error> {
        let reply = self
            .dynamodb
            .get_item()
            .table_name(self.table)
            .key("pk", run_key(run_id))
            .key("sk", AttributeValue::S("RUN".into()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| Error::aws("GetItem", e))?;
        let Some(item) = reply.item() else { return Ok(None) };
        let document = item
            .get("document")
            .and_then(|d| d.as_s().ok())
            .ok_or_else(|| Error::InvalidEvent(format!("run {run_id} has no document")))?;
        let version = item.get("version").and_then(|v| v.as_n().ok()).and_then(|n| n.parse().ok()).unwrap_or(0);
        let run = serde_json::from_str(document)
            .map_err(|e| Error::InvalidEvent(format!("run {run_id} is unreadable: {e}")))?;
        Ok(Some((run, version)))
    }

    /// Writes the run if it is still at `version`; false if someone else wrote first.
    /// `None` creates it, if it does not exist.
    async fn write(&self, run: &Run, version: Option<i64>) -> Result<bool, Error> {
        let document = serde_json::to_string(run).map_err(|e| Error::InvalidEvent(format!("serialising run: {e}")))?;
        let mut request = self
            .dynamodb
            .put_item()
            .table_name(self.table)
            .item("pk", run_key(&run.run_id))
            .item("sk", AttributeValue::S("RUN".into()))
            .item("document", AttributeValue::S(document))
            .item("pipeline", AttributeValue::S(run.pipeline.name.clone()))
            .item("status", AttributeValue::S(run.status.as_str().into()))
            .item("version", AttributeValue::N((version.unwrap_or(0) + 1).to_string()))
            .item("expires_at", AttributeValue::N((run.created_at / 1000 + RUN_RETENTION_SECONDS).to_string()));
        request = match version {
            None => request.condition_expression("attribute_not_exists(pk)"),
            Some(version) => request
                .condition_expression("version = :version")
                .expression_attribute_values(":version", AttributeValue::N(version.to_string())),
        };
        let written = crate::error::conditional_write("PutItem", request.send().await)?;
        if written {
            self.write_index(run).await?;
        }
        Ok(written)
    }

    async fn write_index(&self, run: &Run) -> Result<(), Error> {
        self.dynamodb
            .put_item()
            .table_name(self.table)
            .item("pk", AttributeValue::S(format!("PIPELINE#{}", run.pipeline.name)))
            .item("sk", AttributeValue::S(index_sort_key(run)))
            .item("run_id", AttributeValue::S(run.run_id.clone()))
            .item("status", AttributeValue::S(run.status.as_str().into()))
            .item("created_at", AttributeValue::N(run.created_at.to_string()))
            .item("expires_at", AttributeValue::N((run.created_at / 1000 + RUN_RETENTION_SECONDS).to_string()))
            .send()
            .await
            .map_err(|e| Error::aws("PutItem", e))?;
        Ok(())
    }

    /// Reads, changes and writes a run until the write wins. `change` returns false to
    /// write nothing.
    async fn update<F>(&self, run_id: &str, mut change: F) -> Result<Option<Run>, Error>
    where
        F: FnMut(&mut Run) -> bool,
    {
        for _ in 0..WRITE_ATTEMPTS {
            let Some((mut run, version)) = self.load(run_id).await? else { return Ok(None) };
            if !change(&mut run) {
                return Ok(Some(run));
            }
            if self.write(&run, Some(version)).await? {
                return Ok(Some(run));
            }
        }
        Err(Error::Aws {
            operation: "PutItem",
            code: "Contention".into(),
            message: format!("run {run_id} kept changing under us"),
        })
    }

    /// Starts a run of `pipeline` (once per idempotency key) and submits its first stages.
    /// Returns the run and whether this call created it.
    pub async fn start(
        &self,
        pipeline: &str,
        trigger: &str,
        idempotency_key: &str,
        input: RunInput,
        now_ms: i64,
    ) -> Result<(Run, bool), Error> {
        let config = self.configs.get(self.dynamodb, self.table).await?;
        let declared = config
            .pipelines
            .get(pipeline)
            .ok_or_else(|| Error::InvalidEvent(format!("there is no pipeline {pipeline:?}")))?;
        let run = Run::start(run_id(pipeline, idempotency_key), declared, trigger, input, now_ms);
        let created = self.write(&run, None).await?;
        if created {
            info!(run_id = %run.run_id, pipeline, "run started");
            self.put_run_metrics(&run.pipeline.name, &[("RunsStarted", 1.0, StandardUnit::Count)]).await;
        }
        let run = self.drive(&run.run_id, now_ms).await?.unwrap_or(run);
        Ok((run, created))
    }

    /// Applies a job state change to its run, then drives the run.
    pub async fn advance(
        &self,
        run_id: &str,
        stage: &str,
        event: &JobStateChangeEvent,
        now_ms: i64,
    ) -> Result<Applied, Error> {
        let mut outcome = Applied::Unchanged("no such run");
        let run = self
            .update(run_id, |run| {
                outcome = run.apply(stage, event, now_ms);
                outcome == Applied::Changed
            })
            .await?;
        if let Applied::Unchanged(why) = &outcome {
            info!(run_id, stage, job_id = %event.detail.job_id, status = event.detail.status.as_str(), why, "event changes nothing in the run");
        }
        if run.is_some() {
            self.drive(run_id, now_ms).await?;
        }
        Ok(outcome)
    }

    /// Submits what the run has planned and announces its end, each once.
    pub async fn drive(&self, run_id: &str, now_ms: i64) -> Result<Option<Run>, Error> {
        let Some((mut run, _)) = self.load(run_id).await? else { return Ok(None) };
        let submitter = Submitter { batch: self.batch, dynamodb: self.dynamodb, table: self.table };
        for (stage, attempt) in run.to_submit() {
            let config = self.configs.get(self.dynamodb, self.table).await?;
            let request = stage_job(&config, &run, &stage, &attempt).map_err(Error::InvalidEvent)?;
            let submitted = match submitter.submit(&request, now_ms).await {
                Ok(submitted) => submitted,
                Err(SubmitError::Aws(err)) => return Err(err),
                Err(other) => {
                    return Err(Error::Aws { operation: "SubmitJob", code: "Retry".into(), message: other.to_string() })
                }
            };
            info!(run_id, stage, attempt = attempt.number, job_id = %submitted.job_id, size = %attempt.size, "stage submitted");
            let recorded = self
                .update(run_id, |run| {
                    run.record_submitted(&stage, attempt.number, &submitted.job_id, &submitted.job_name, now_ms)
                })
                .await?;
            if let Some(recorded) = recorded {
                run = recorded;
            }
        }
        if run.status.is_terminal() && !run.completion_sent {
            self.announce(&run, now_ms).await?;
            if let Some(updated) = self.update(run_id, |run| !std::mem::replace(&mut run.completion_sent, true)).await?
            {
                run = updated;
            }
        }
        Ok(Some(run))
    }

    /// Sends "Batchline Run Completed" to the default bus, and the run's metrics.
    async fn announce(&self, run: &Run, now_ms: i64) -> Result<(), Error> {
        let duration = run.duration_ms(now_ms);
        let stages: serde_json::Map<String, Value> = run
            .stages
            .iter()
            .map(|(k, s)| (k.clone(), json!({"status": s.status, "attempts": s.attempts.len()})))
            .chain(
                run.on_failure
                    .iter()
                    .map(|s| (ON_FAILURE.to_owned(), json!({"status": s.status, "attempts": s.attempts.len()}))),
            )
            .collect();
        let detail = json!({
            "runId": run.run_id,
            "pipeline": run.pipeline.name,
            "outcome": run.status.as_str(),
            "reason": run.reason,
            "durationMs": duration,
            "startedAt": run.created_at,
            "endedAt": run.ended_at,
            "trigger": run.trigger,
            "stages": stages,
        });
        let entry = aws_sdk_eventbridge::types::PutEventsRequestEntry::builder()
            .source(EVENT_SOURCE)
            .detail_type(COMPLETED_DETAIL_TYPE)
            .detail(detail.to_string())
            .resources(format!("batchline:run/{}", run.run_id))
            .build();
        let reply =
            self.eventbridge.put_events().entries(entry).send().await.map_err(|e| Error::aws("PutEvents", e))?;
        if reply.failed_entry_count() > 0 {
            let why = reply.entries().first().and_then(|e| e.error_message()).unwrap_or("unknown").to_owned();
            return Err(Error::Aws { operation: "PutEvents", code: "FailedEntry".into(), message: why });
        }
        info!(run_id = %run.run_id, outcome = run.status.as_str(), duration_ms = duration, "run completed");
        let outcome = match run.status {
            RunStatus::Succeeded => "RunsSucceeded",
            RunStatus::Failed => "RunsFailed",
            RunStatus::Cancelled => "RunsCancelled",
            RunStatus::Running => return Ok(()),
        };
        self.put_run_metrics(
            &run.pipeline.name,
            &[(outcome, 1.0, StandardUnit::Count), ("RunDuration", duration as f64, StandardUnit::Milliseconds)],
        )
        .await;
        Ok(())
    }

    /// Run metrics per pipeline and overall. A failure is logged, not fatal: the run's
    /// state matters more than its metrics.
    async fn put_run_metrics(&self, pipeline: &str, values: &[(&str, f64, StandardUnit)]) {
        let mut data = Vec::new();
        for (name, value, unit) in values {
            for dimensions in [vec![], vec![Dimension::builder().name("Pipeline").value(pipeline).build()]] {
                data.push(
                    MetricDatum::builder()
                        .metric_name(*name)
                        .value(*value)
                        .unit(unit.clone())
                        .set_dimensions(Some(dimensions))
                        .build(),
                );
            }
        }
        if let Err(err) =
            self.cloudwatch.put_metric_data().namespace(self.namespace).set_metric_data(Some(data)).send().await
        {
            warn!(error = %Error::aws("PutMetricData", err), "run metrics not published");
        }
    }

    /// Cancels a run: marks it CANCELLED, then terminates its jobs. `Err(reason)` inside
    /// when the run has already ended.
    pub async fn cancel(&self, run_id: &str, now_ms: i64) -> Result<Option<Result<(Run, Vec<String>), String>>, Error> {
        let mut outcome: Result<Vec<String>, String> = Ok(vec![]);
        let run = self
            .update(run_id, |run| {
                outcome = run.cancel(now_ms);
                outcome.is_ok()
            })
            .await?;
        let Some(_) = run else { return Ok(None) };
        let jobs = match outcome {
            Ok(jobs) => jobs,
            Err(why) => return Ok(Some(Err(why))),
        };
        for job in &jobs {
            self.batch
                .terminate_job()
                .job_id(job)
                .reason(format!("Batchline run {run_id} cancelled"))
                .send()
                .await
                .map_err(|e| Error::aws("TerminateJob", e))?;
        }
        let run =
            self.drive(run_id, now_ms).await?.ok_or_else(|| Error::InvalidEvent(format!("run {run_id} vanished")))?;
        Ok(Some(Ok((run, jobs))))
    }

    /// Recent runs of a pipeline, newest first.
    pub async fn list(&self, pipeline: &str, limit: i32) -> Result<Vec<RunSummary>, Error> {
        let reply = self
            .dynamodb
            .query()
            .table_name(self.table)
            .key_condition_expression("pk = :pk AND begins_with(sk, :runs)")
            .expression_attribute_values(":pk", AttributeValue::S(format!("PIPELINE#{pipeline}")))
            .expression_attribute_values(":runs", AttributeValue::S("RUN#".into()))
            .scan_index_forward(false)
            .limit(limit)
            .send()
            .await
            .map_err(|e| Error::aws("Query", e))?;
        Ok(reply
            .items()
            .iter()
            .map(|item| {
                let text = |name: &str| item.get(name).and_then(|v| v.as_s().ok()).cloned().unwrap_or_default();
                RunSummary {
                    run_id: text("run_id"),
                    status: text("status"),
                    created_at: item
                        .get("created_at")
                        .and_then(|v| v.as_n().ok())
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(0),
                }
            })
            .collect())
    }

    /// The repair sweep: for every running run of every pipeline, submit what is planned
    /// and apply the outcome of every stage job that ended in Batch without the record
    /// knowing (an event lost after all retries), as its event would have.
    pub async fn sweep(&self, now_ms: i64) -> Result<SweepReport, Error> {
        let config = self.configs.get(self.dynamodb, self.table).await?;
        let mut report = SweepReport::default();
        for pipeline in config.pipelines.keys() {
            for summary in self.list(pipeline, 200).await?.into_iter().filter(|s| s.status == "RUNNING") {
                report.runs_checked += 1;
                let Some(run) = self.drive(&summary.run_id, now_ms).await? else { continue };
                let open = run.open_jobs();
                if open.is_empty() {
                    continue;
                }
                let ids: Vec<String> = open.iter().map(|(_, job)| job.clone()).collect();
                let described = self
                    .batch
                    .describe_jobs()
                    .set_jobs(Some(ids))
                    .send()
                    .await
                    .map_err(|e| Error::aws("DescribeJobs", e))?;
                let by_id: HashMap<&str, &aws_sdk_batch::types::JobDetail> =
                    described.jobs().iter().filter_map(|j| Some((j.job_id()?, j))).collect();
                for (stage, job_id) in &open {
                    let Some(job) = by_id.get(job_id.as_str()) else { continue };
                    let status = job.status().map(|s| s.as_str()).unwrap_or_default();
                    if status != "SUCCEEDED" && status != "FAILED" {
                        continue;
                    }
                    let event = event_from_job(job).map_err(Error::InvalidEvent)?;
                    if self.advance(&run.run_id, stage, &event, now_ms).await? == Applied::Changed {
                        info!(run_id = %run.run_id, stage, job_id, status, "sweep applied a missed transition");
                        report.transitions_applied += 1;
                    }
                }
            }
        }
        Ok(report)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SweepReport {
    pub runs_checked: usize,
    pub transitions_applied: usize,
}

/// A job state change event made from DescribeJobs, for the sweep.
pub fn event_from_job(job: &aws_sdk_batch::types::JobDetail) -> Result<JobStateChangeEvent, String> {
    let container = job.container();
    let attempts: Vec<Value> = job
        .attempts()
        .iter()
        .map(|a| {
            json!({
                "container": {"exitCode": a.container().and_then(|c| c.exit_code()), "reason": a.container().and_then(|c| c.reason()),
                              "logStreamName": a.container().and_then(|c| c.log_stream_name())},
                "startedAt": a.started_at(), "stoppedAt": a.stopped_at(), "statusReason": a.status_reason(),
            })
        })
        .collect();
    let mut detail = json!({
        "jobId": job.job_id(),
        "jobName": job.job_name(),
        "jobArn": job.job_arn(),
        "jobQueue": job.job_queue(),
        "jobDefinition": job.job_definition(),
        "status": job.status().map(|s| s.as_str()),
        "statusReason": job.status_reason(),
        "createdAt": job.created_at(),
        "startedAt": job.started_at(),
        "stoppedAt": job.stopped_at(),
        "attempts": attempts,
        "tags": job.tags(),
        "container": {"exitCode": container.and_then(|c| c.exit_code()), "reason": container.and_then(|c| c.reason()),
                      "logStreamName": container.and_then(|c| c.log_stream_name())},
    });
    strip_nulls(&mut detail);
    let event = json!({
        "version": "0",
        "id": format!("sweep-{}-{}", job.job_id().unwrap_or_default(), job.status().map(|s| s.as_str()).unwrap_or_default()),
        "detail-type": crate::batch_event::DETAIL_TYPE,
        "source": crate::batch_event::SOURCE,
        "detail": detail,
    });
    JobStateChangeEvent::from_value(event).map_err(|e| e.to_string())
}

fn strip_nulls(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(strip_nulls);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}
