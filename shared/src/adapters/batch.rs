//! Batch through the AWS SDK: the adapter of the Batch port and of the stuck-job watch's queue reads, and the conversions between Batch's types and the model's.

use async_trait::async_trait;
use aws_sdk_batch::types::{
    ArrayProperties, ContainerOverrides, EvaluateOnExit, JobDependency, JobTimeout, KeyValuePair, KeyValuesPair,
    ResourceRequirement, ResourceType, RetryStrategy,
};
use serde_json::{json, Value};

use crate::model::retry::{RetryAction, RetryPolicy};

use crate::model::batch_event::{self, JobDetail, JobStateChangeEvent};
use crate::model::fargate::format_vcpu;
use crate::model::job_request::JobRequest;
use crate::model::stuck::{EnvironmentState, QueueState};
use crate::services::ports::{BatchPort, JobListing, JobPage, QueueInspector};
use crate::Error;

/// Batch through the AWS SDK.
#[derive(Clone, Debug)]
pub struct SdkBatch {
    client: aws_sdk_batch::Client,
}

impl SdkBatch {
    pub fn new(client: aws_sdk_batch::Client) -> Self {
        SdkBatch { client }
    }
}

#[async_trait]
impl BatchPort for SdkBatch {
    async fn submit_job(&self, request: &JobRequest) -> Result<String, Error> {
        let mut overrides = ContainerOverrides::builder();
        let mut has_overrides = false;
        if !request.environment.is_empty() {
            has_overrides = true;
            overrides = overrides.set_environment(Some(
                request.environment.iter().map(|(k, v)| KeyValuePair::builder().name(k).value(v).build()).collect(),
            ));
        }
        if let Some(command) = &request.command {
            has_overrides = true;
            overrides = overrides.set_command(Some(command.clone()));
        }
        if let Some(size) = request.size {
            has_overrides = true;
            overrides = overrides
                .resource_requirements(
                    ResourceRequirement::builder().r#type(ResourceType::Vcpu).value(format_vcpu(size.vcpu)).build(),
                )
                .resource_requirements(
                    ResourceRequirement::builder()
                        .r#type(ResourceType::Memory)
                        .value(size.memory_mib.to_string())
                        .build(),
                );
        }
        let reply = self
            .client
            .submit_job()
            .job_name(&request.job_name)
            .job_queue(&request.queue_arn)
            .job_definition(&request.job_definition_arn)
            .set_parameters(Some(request.parameters.iter().map(|(k, v)| (k.clone(), v.clone())).collect()))
            .set_tags(Some(request.tags.iter().map(|(k, v)| (k.clone(), v.clone())).collect()))
            .propagate_tags(true)
            .set_depends_on(Some(
                request.depends_on.iter().map(|id| JobDependency::builder().job_id(id).build()).collect(),
            ))
            .set_array_properties(request.array_size.map(|n| ArrayProperties::builder().size(n as i32).build()))
            .set_container_overrides(has_overrides.then(|| overrides.build()))
            .set_timeout(
                request.timeout_seconds.map(|s| JobTimeout::builder().attempt_duration_seconds(s as i32).build()),
            )
            .set_retry_strategy(request.retry.as_ref().map(retry_strategy))
            .customize()
            // The submitter retries, checking by name first: an SDK retry after a lost
            // answer would submit the job twice.
            .config_override(
                aws_sdk_batch::config::Builder::default()
                    .retry_config(aws_sdk_batch::config::retry::RetryConfig::disabled()),
            )
            .send()
            .await
            .map_err(|e| Error::aws("SubmitJob", e))?;
        Ok(reply.job_id().unwrap_or_default().to_owned())
    }

    async fn find_job(&self, queue: &str, name: &str) -> Result<Option<String>, Error> {
        let reply = self
            .client
            .list_jobs()
            .job_queue(queue)
            .filters(KeyValuesPair::builder().name("JOB_NAME").values(name).build())
            .send()
            .await
            .map_err(|e| Error::aws("ListJobs", e))?;
        Ok(reply
            .job_summary_list()
            .iter()
            .find(|j| j.job_name() == Some(name))
            .and_then(|j| j.job_id())
            .map(str::to_owned))
    }

    async fn terminate_job(&self, job_id: &str, reason: &str) -> Result<(), Error> {
        self.client
            .terminate_job()
            .job_id(job_id)
            .reason(reason)
            .send()
            .await
            .map_err(|e| Error::aws("TerminateJob", e))?;
        Ok(())
    }

    async fn describe_jobs(&self, job_ids: &[String]) -> Result<Vec<JobStateChangeEvent>, Error> {
        let described = self
            .client
            .describe_jobs()
            .set_jobs(Some(job_ids.to_vec()))
            .send()
            .await
            .map_err(|e| Error::aws("DescribeJobs", e))?;
        described.jobs().iter().map(event_from_job).collect()
    }

    async fn list_jobs(
        &self,
        queue: &str,
        listing: &JobListing,
        token: Option<String>,
        max: usize,
    ) -> Result<JobPage, Error> {
        let request =
            self.client.list_jobs().job_queue(queue).max_results(max.clamp(1, 1000) as i32).set_next_token(token);
        let request = match listing {
            JobListing::InStatus(status) => request.job_status(aws_sdk_batch::types::JobStatus::from(status.as_str())),
            JobListing::CreatedSince(since_ms) => {
                request.filters(KeyValuesPair::builder().name("AFTER_CREATED_AT").values(since_ms.to_string()).build())
            }
        };
        let page = request.send().await.map_err(|e| Error::aws("ListJobs", e))?;
        let jobs = page.job_summary_list().iter().map(summary_detail).collect::<Result<_, _>>()?;
        Ok(JobPage { jobs, next: page.next_token().map(str::to_owned) })
    }

    async fn job_queues(&self, names: &[String]) -> Result<Vec<QueueState>, Error> {
        let described = self
            .client
            .describe_job_queues()
            .set_job_queues(Some(names.to_vec()))
            .send()
            .await
            .map_err(|e| Error::aws("DescribeJobQueues", e))?;
        Ok(described.job_queues().iter().map(|q| queue_alone(q, "")).collect())
    }
}

/// A described queue's state and status, its compute environments left out.
fn queue_alone(found: &aws_sdk_batch::types::JobQueueDetail, asked: &str) -> QueueState {
    QueueState {
        name: found.job_queue_name().unwrap_or(asked).to_owned(),
        enabled: found.state().map(|s| s.as_str()) != Some("DISABLED"),
        status: found.status().map(|s| s.as_str().to_owned()).unwrap_or_default(),
        status_reason: found.status_reason().map(str::to_owned),
        environments: vec![],
    }
}

/// A ListJobs summary as the model's job detail (what a summary has of it).
fn summary_detail(job: &aws_sdk_batch::types::JobSummary) -> Result<JobDetail, Error> {
    let mut detail = json!({
        "jobId": job.job_id(),
        "jobName": job.job_name(),
        "jobArn": job.job_arn(),
        // (Batch always says; a summary without one is kept, its status unknown.)
        "status": job.status().map_or("UNKNOWN", |s| s.as_str()),
        "statusReason": job.status_reason(),
        "createdAt": job.created_at(),
        "startedAt": job.started_at(),
        "stoppedAt": job.stopped_at(),
        "container": {"exitCode": job.container().and_then(|c| c.exit_code()), "reason": job.container().and_then(|c| c.reason())},
        "arrayProperties": job.array_properties().map(|a| json!({"size": a.size(), "index": a.index(),
                                                                  "statusSummary": a.status_summary()})),
    });
    strip_nulls(&mut detail);
    serde_json::from_value(detail)
        .map_err(|e| Error::InvalidEvent(format!("ListJobs gave a job that is not a job: {e}")))
}

#[async_trait]
impl QueueInspector for SdkBatch {
    async fn runnable_jobs(&self, queue: &str) -> Result<Vec<(String, i64)>, Error> {
        let request = self.client.list_jobs().job_queue(queue).job_status(aws_sdk_batch::types::JobStatus::Runnable);
        let jobs =
            request.into_paginator().items().send().try_collect().await.map_err(|e| Error::aws("ListJobs", e))?;
        Ok(jobs
            .iter()
            .filter_map(|job| Some((job.job_id()?.to_owned(), job.created_at().unwrap_or_default())))
            .collect())
    }

    async fn queue_state(&self, queue: &str) -> Result<Option<QueueState>, Error> {
        let queues = self
            .client
            .describe_job_queues()
            .job_queues(queue)
            .send()
            .await
            .map_err(|e| Error::aws("DescribeJobQueues", e))?;
        // By name or ARN, as DescribeJobQueues takes it.
        let named = |q: &&aws_sdk_batch::types::JobQueueDetail| {
            q.job_queue_name() == Some(queue) || q.job_queue_arn() == Some(queue)
        };
        let Some(found) = queues.job_queues().iter().find(named) else {
            return Ok(None);
        };
        let mut order: Vec<_> = found.compute_environment_order().to_vec();
        order.sort_by_key(|o| o.order());
        let arns: Vec<String> = order.iter().filter_map(|o| o.compute_environment().map(str::to_owned)).collect();
        let described = self
            .client
            .describe_compute_environments()
            .set_compute_environments(Some(arns.clone()))
            .send()
            .await
            .map_err(|e| Error::aws("DescribeComputeEnvironments", e))?;
        let environments = arns
            .iter()
            .filter_map(|arn| {
                let ce =
                    described.compute_environments().iter().find(|ce| ce.compute_environment_arn() == Some(arn))?;
                let resources = ce.compute_resources();
                Some(EnvironmentState {
                    name: ce.compute_environment_name().unwrap_or(arn).to_owned(),
                    enabled: ce.state().map(|s| s.as_str()) != Some("DISABLED"),
                    status: ce.status().map(|s| s.as_str().to_owned()).unwrap_or_default(),
                    status_reason: ce.status_reason().map(str::to_owned),
                    spot: resources.and_then(|r| r.r#type()).map(|t| t.as_str()) == Some("FARGATE_SPOT"),
                    max_vcpus: resources.and_then(|r| r.maxv_cpus()).and_then(|v| u32::try_from(v).ok()),
                    ecs_cluster: ce
                        .ecs_cluster_arn()
                        .and_then(|a| a.rsplit_once("cluster/"))
                        .map(|(_, n)| n.to_owned()),
                })
            })
            .collect();
        Ok(Some(QueueState { environments, ..queue_alone(found, queue) }))
    }
}

/// A job state change event made from DescribeJobs, for the sweep.
pub fn event_from_job(job: &aws_sdk_batch::types::JobDetail) -> Result<JobStateChangeEvent, Error> {
    let container = job.container();
    let attempts: Vec<Value> = job
        .attempts()
        .iter()
        .map(|a| {
            json!({
                "container": {"exitCode": a.container().and_then(|c| c.exit_code()), "reason": a.container().and_then(|c| c.reason()),
                              "logStreamName": a.container().and_then(|c| c.log_stream_name()),
                              "taskArn": a.container().and_then(|c| c.task_arn())},
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
        "dependsOn": job.depends_on().iter()
            .map(|d| json!({"jobId": d.job_id(), "type": d.r#type().map(|t| t.as_str())}))
            .collect::<Vec<Value>>(),
        "container": {"exitCode": container.and_then(|c| c.exit_code()), "reason": container.and_then(|c| c.reason()),
                      "logStreamName": container.and_then(|c| c.log_stream_name()),
                      "taskArn": container.and_then(|c| c.task_arn()),
                      // What the job ran with, for a resize that resubmits it as Batch knows it.
                      "command": container.map(|c| c.command()),
                      "environment": container.map(|c| c.environment().iter()
                          .map(|v| json!({"name": v.name(), "value": v.value()})).collect::<Vec<_>>()),
                      "resourceRequirements": container.map(|c| c.resource_requirements().iter()
                          .map(|r| json!({"type": r.r#type().map(|t| t.as_str()), "value": r.value()})).collect::<Vec<_>>()),
                      "runtimePlatform": container.and_then(|c| c.runtime_platform())
                          .map(|p| json!({"cpuArchitecture": p.cpu_architecture()})),
                      "logConfiguration": container.and_then(|c| c.log_configuration())
                          .map(|l| json!({"logDriver": l.log_driver().map(|d| d.as_str()), "options": l.options()}))},
        "parameters": job.parameters(),
        "arrayProperties": job.array_properties().map(|a| json!({"size": a.size(), "index": a.index(),
                                                                  "statusSummary": a.status_summary()})),
    });
    strip_nulls(&mut detail);
    let event = json!({
        "version": "0",
        "id": format!("sweep-{}-{}", job.job_id().unwrap_or_default(), job.status().map(|s| s.as_str()).unwrap_or_default()),
        "detail-type": batch_event::DETAIL_TYPE,
        "source": batch_event::SOURCE,
        "detail": detail,
    });
    JobStateChangeEvent::from_value(event)
        .map_err(|e| Error::InvalidEvent(format!("DescribeJobs gave a job that is not a job: {e}")))
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

/// Batch's `retryStrategy` for a policy: its attempts, and the rules as
/// [`RetryPolicy::evaluate_on_exit`] orders them.
pub fn retry_strategy(policy: &RetryPolicy) -> RetryStrategy {
    let rules = policy.evaluate_on_exit().into_iter().map(|rule| {
        EvaluateOnExit::builder()
            .set_on_exit_code(rule.on_exit_code)
            .set_on_status_reason(rule.on_status_reason)
            .set_on_reason(rule.on_reason)
            .action(match rule.action {
                RetryAction::Retry => aws_sdk_batch::types::RetryAction::Retry,
                RetryAction::Exit => aws_sdk_batch::types::RetryAction::Exit,
            })
            .build()
    });
    RetryStrategy::builder().attempts(policy.attempts as i32).set_evaluate_on_exit(Some(rules.collect())).build()
}
