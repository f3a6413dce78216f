//! An in-memory Batch for the services' unit tests: jobs by name and queue, with scripted failures.
//!
//! Not a model of Batch's runtime (the Batch event player on the emulator is that); it
//! holds just what the port's four calls touch, so tests can interleave handlers.

use std::collections::VecDeque;
use std::sync::Mutex;

use async_trait::async_trait;
use serde_json::json;

use crate::model::batch_event::JobStateChangeEvent;
use crate::model::job_request::JobRequest;
use crate::model::stuck::QueueState;
use crate::services::ports::{BatchPort, JobListing, JobPage, QueueInspector};
use crate::Error;

/// One job Batch holds.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryJob {
    pub job_id: String,
    pub request: JobRequest,
    pub status: String,
    pub terminated_because: Option<String>,
    /// When it was created and when it stopped (epoch ms), as DescribeJobs says; set by tests.
    pub created_at: Option<i64>,
    pub stopped_at: Option<i64>,
}

/// What the next SubmitJob call does instead of succeeding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubmitFault {
    /// Refused with this AWS error code; no job made.
    Refuse(String),
    /// The job is made, but the answer is lost.
    LoseAnswer,
}

#[derive(Default)]
pub struct MemoryBatch {
    jobs: Mutex<Vec<MemoryJob>>,
    faults: Mutex<VecDeque<SubmitFault>>,
    failing_terminations: Mutex<usize>,
    queues: Mutex<Vec<QueueState>>,
}

impl MemoryBatch {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the next SubmitJob calls fail as given, in order.
    pub fn inject(&self, faults: impl IntoIterator<Item = SubmitFault>) {
        self.faults.lock().unwrap_or_else(|p| p.into_inner()).extend(faults);
    }

    /// Makes the next `times` TerminateJob calls fail (nothing terminated).
    pub fn fail_terminations(&self, times: usize) {
        *self.failing_terminations.lock().unwrap_or_else(|p| p.into_inner()) += times;
    }

    pub fn jobs(&self) -> Vec<MemoryJob> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Sets when a job was created and when it stopped, as DescribeJobs will say.
    pub fn set_times(&self, job_id: &str, created_at: Option<i64>, stopped_at: Option<i64>) {
        let mut jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(job) = jobs.iter_mut().find(|j| j.job_id == job_id) {
            (job.created_at, job.stopped_at) = (created_at, stopped_at);
        }
    }

    /// Sets a queue's state, as DescribeJobQueues will say (by its name).
    pub fn set_queue(&self, state: QueueState) {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        queues.retain(|q| q.name != state.name);
        queues.push(state);
    }

    /// Sets a job's status, as Batch's runtime would move it.
    pub fn set_status(&self, job_id: &str, status: &str) {
        let mut jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(job) = jobs.iter_mut().find(|j| j.job_id == job_id) {
            job.status = status.to_owned();
        }
    }

    fn make(&self, request: &JobRequest) -> String {
        let mut jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        let job_id = format!("job-{}", jobs.len() + 1);
        jobs.push(MemoryJob {
            job_id: job_id.clone(),
            request: request.clone(),
            status: "SUBMITTED".into(),
            terminated_because: None,
            created_at: None,
            stopped_at: None,
        });
        job_id
    }
}

fn aws(operation: &'static str, code: &str) -> Error {
    Error::Aws { operation, code: code.to_owned(), message: "injected".into() }
}

#[async_trait]
impl BatchPort for MemoryBatch {
    async fn submit_job(&self, request: &JobRequest) -> Result<String, Error> {
        let fault = self.faults.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
        match fault {
            None => Ok(self.make(request)),
            Some(SubmitFault::Refuse(code)) => Err(aws("SubmitJob", &code)),
            Some(SubmitFault::LoseAnswer) => {
                self.make(request);
                Err(aws("SubmitJob", "InternalServerError"))
            }
        }
    }

    async fn find_job(&self, queue: &str, name: &str) -> Result<Option<String>, Error> {
        let jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        Ok(jobs.iter().find(|j| j.request.queue_arn == queue && j.request.job_name == name).map(|j| j.job_id.clone()))
    }

    async fn terminate_job(&self, job_id: &str, reason: &str) -> Result<(), Error> {
        {
            let mut failing = self.failing_terminations.lock().unwrap_or_else(|p| p.into_inner());
            if *failing > 0 {
                *failing -= 1;
                return Err(aws("TerminateJob", "InternalServerError"));
            }
        }
        let mut jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        let job = jobs.iter_mut().find(|j| j.job_id == job_id).ok_or_else(|| aws("TerminateJob", "ClientException"))?;
        if !matches!(job.status.as_str(), "SUCCEEDED" | "FAILED") {
            job.status = "FAILED".into();
        }
        job.terminated_because = Some(reason.to_owned());
        Ok(())
    }

    async fn describe_jobs(&self, job_ids: &[String]) -> Result<Vec<JobStateChangeEvent>, Error> {
        let jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        jobs.iter()
            .filter(|j| job_ids.contains(&j.job_id))
            .map(|j| {
                let event = json!({
                    "id": format!("describe-{}-{}", j.job_id, j.status), "detail-type": "Batch Job State Change",
                    "source": "aws.batch",
                    "detail": {"jobId": j.job_id, "jobName": j.request.job_name, "status": j.status,
                               "jobQueue": j.request.queue_arn, "jobDefinition": j.request.job_definition_arn,
                               "tags": j.request.tags, "parameters": j.request.parameters,
                               "createdAt": j.created_at, "stoppedAt": j.stopped_at,
                               "arrayProperties": j.request.array_size.map(|size| json!({"size": size})),
                               "dependsOn": j.request.depends_on.iter().map(|id| json!({"jobId": id})).collect::<Vec<_>>()},
                });
                JobStateChangeEvent::from_value(event).map_err(|e| Error::InvalidEvent(e.to_string()))
            })
            .collect()
    }

    /// Newest first (by `createdAt`, then the latest made); the token is the place of the
    /// next page's first job.
    async fn list_jobs(
        &self,
        queue: &str,
        listing: &JobListing,
        token: Option<String>,
        max: usize,
    ) -> Result<JobPage, Error> {
        let mut jobs: Vec<(usize, MemoryJob)> = self.jobs().into_iter().enumerate().collect();
        jobs.retain(|(_, j)| {
            in_queue(j, queue)
                && match listing {
                    JobListing::InStatus(status) => j.status == status.as_str(),
                    JobListing::CreatedSince(since) => j.created_at.unwrap_or_default() >= *since,
                }
        });
        jobs.sort_by_key(|(made, j)| std::cmp::Reverse((j.created_at, *made)));
        let start: usize =
            token.map(|t| t.parse().map_err(|_| aws("ListJobs", "ClientException"))).transpose()?.unwrap_or(0);
        let end = (start + max.clamp(1, 1000)).min(jobs.len());
        let page = jobs.get(start..end).unwrap_or_default();
        let details = page
            .iter()
            .map(|(_, j)| {
                serde_json::from_value(json!({"jobId": j.job_id, "jobName": j.request.job_name, "status": j.status,
                                              "statusReason": j.terminated_because, "createdAt": j.created_at,
                                              "stoppedAt": j.stopped_at}))
                .map_err(|e| Error::InvalidEvent(e.to_string()))
            })
            .collect::<Result<_, _>>()?;
        Ok(JobPage { jobs: details, next: (end < jobs.len()).then(|| end.to_string()) })
    }

    async fn job_queues(&self, names: &[String]) -> Result<Vec<QueueState>, Error> {
        let queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        let named = queues.iter().filter(|q| names.contains(&q.name));
        Ok(named.map(|q| QueueState { environments: vec![], ..q.clone() }).collect())
    }
}

/// A queue is named by its name or ARN; a job's queue is the ARN it was submitted to.
fn in_queue(job: &MemoryJob, queue: &str) -> bool {
    job.request.queue_arn == queue || job.request.queue_arn.ends_with(&format!("/{queue}"))
}

#[async_trait]
impl QueueInspector for MemoryBatch {
    async fn runnable_jobs(&self, queue: &str) -> Result<Vec<(String, i64)>, Error> {
        let jobs = self.jobs();
        let runnable = jobs.iter().filter(|j| in_queue(j, queue) && j.status == "RUNNABLE");
        Ok(runnable.map(|j| (j.job_id.clone(), j.created_at.unwrap_or_default())).collect())
    }

    async fn queue_state(&self, queue: &str) -> Result<Option<QueueState>, Error> {
        let queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        Ok(queues.iter().find(|q| q.name == queue || queue.ends_with(&format!("/{}", q.name))).cloned())
    }
}
