//! Submitting a job exactly once: a DynamoDB claim before SubmitJob, and the job's deterministic name to recover.
//!
//! SubmitJob has no idempotency token, EventBridge delivers at least once, and an SDK
//! retry after a lost response could submit twice. So:
//! 1. the request's idempotency key is claimed with a conditional write
//!    (`pk = IDEM#<hash of the key>`, `sk = CLAIM`, state `PENDING`, the job name and a
//!    fingerprint of the request);
//! 2. SubmitJob is called with the SDK's own retries off. Throttling is retried here with
//!    backoff (a throttled call created nothing); any other failure may have created the
//!    job, so before trying again the job is looked up by its name (ListJobs `JOB_NAME`);
//! 3. the claim records the job id (state `SUBMITTED`).
//!
//! A second delivery finds the claim: `SUBMITTED` gives the job already made; `PENDING`
//! means a submission was interrupted or is under way — if the job exists by name it is
//! recorded and returned; if not and the claim is older than [`CLAIM_LEASE_MS`], its
//! holder died before SubmitJob and this delivery takes the claim over; otherwise the
//! delivery is told to retry later. The same key with a different request is a conflict.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_batch::types::{
    ArrayProperties, ContainerOverrides, JobDependency, KeyValuePair, KeyValuesPair, ResourceRequirement, ResourceType,
};
use aws_sdk_dynamodb::types::AttributeValue;
use tracing::{info, warn};

use crate::error::conditional_write;
use crate::fargate::format_vcpu;
use crate::job_request::{digest, JobRequest};
use crate::Error;

/// How long a PENDING claim may be in the middle of SubmitJob before it counts as abandoned.
pub const CLAIM_LEASE_MS: i64 = 30_000;
/// How long a claim (and so the protection against duplicates) lasts.
pub const CLAIM_SECONDS: i64 = 7 * 24 * 3600;
const SUBMIT_ATTEMPTS: u32 = 6;

/// The job a request resulted in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitted {
    pub job_id: String,
    pub job_name: String,
    /// False when an earlier delivery of the same request had already made it.
    pub new: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("another submission of {0:?} is under way; retry later")]
    InFlight(String),
    #[error("idempotency key {0:?} was used before for a different request")]
    Conflict(String),
    #[error(transparent)]
    Aws(#[from] Error),
}

pub struct Submitter<'a> {
    pub batch: &'a aws_sdk_batch::Client,
    pub dynamodb: &'a aws_sdk_dynamodb::Client,
    pub table: &'a str,
}

fn claim_key(request: &JobRequest) -> AttributeValue {
    AttributeValue::S(format!("IDEM#{}", digest(&request.idempotency_key, 40)))
}

/// What identifies the request itself, so a reused key with other content is caught.
fn fingerprint(request: &JobRequest) -> String {
    digest(&serde_json::to_string(request).unwrap_or_default(), 32)
}

impl Submitter<'_> {
    pub async fn submit(&self, request: &JobRequest, now_ms: i64) -> Result<Submitted, SubmitError> {
        if !self.claim(request, now_ms).await? {
            let claim = self.read_claim(request).await?;
            let attribute = |name: &str| claim.get(name).and_then(|v| v.as_s().ok()).cloned();
            if attribute("fingerprint").as_deref() != Some(fingerprint(request).as_str()) {
                return Err(SubmitError::Conflict(request.idempotency_key.clone()));
            }
            if let Some(job_id) = attribute("job_id") {
                return Ok(Submitted { job_id, job_name: request.job_name.clone(), new: false });
            }
            if let Some(job_id) = self.find_by_name(request).await? {
                self.record(request, &job_id).await?;
                info!(job_name = %request.job_name, job_id, "recovered a submission left unrecorded");
                return Ok(Submitted { job_id, job_name: request.job_name.clone(), new: false });
            }
            let claimed_at =
                claim.get("claimed_at").and_then(|v| v.as_n().ok()).and_then(|n| n.parse::<i64>().ok()).unwrap_or(0);
            if now_ms - claimed_at < CLAIM_LEASE_MS || !self.take_over(request, claimed_at, now_ms).await? {
                return Err(SubmitError::InFlight(request.idempotency_key.clone()));
            }
            info!(job_name = %request.job_name, "took over an abandoned claim");
        }
        let job_id = self.submit_job(request).await?;
        self.record(request, &job_id).await?;
        info!(job_name = %request.job_name, job_id, "job submitted");
        Ok(Submitted { job_id, job_name: request.job_name.clone(), new: true })
    }

    /// Claims the key; false when a claim exists.
    async fn claim(&self, request: &JobRequest, now_ms: i64) -> Result<bool, Error> {
        let result = self
            .dynamodb
            .put_item()
            .table_name(self.table)
            .item("pk", claim_key(request))
            .item("sk", AttributeValue::S("CLAIM".into()))
            .item("state", AttributeValue::S("PENDING".into()))
            .item("idempotency_key", AttributeValue::S(request.idempotency_key.clone()))
            .item("job_name", AttributeValue::S(request.job_name.clone()))
            .item("queue", AttributeValue::S(request.queue_arn.clone()))
            .item("fingerprint", AttributeValue::S(fingerprint(request)))
            .item("claimed_at", AttributeValue::N(now_ms.to_string()))
            .item("expires_at", AttributeValue::N((now_ms / 1000 + CLAIM_SECONDS).to_string()))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await;
        conditional_write("PutItem", result)
    }

    async fn read_claim(&self, request: &JobRequest) -> Result<HashMap<String, AttributeValue>, Error> {
        let reply = self
            .dynamodb
            .get_item()
            .table_name(self.table)
            .key("pk", claim_key(request))
            .key("sk", AttributeValue::S("CLAIM".into()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| Error::aws("GetItem", e))?;
        Ok(reply.item().cloned().unwrap_or_default())
    }

    /// Takes over a claim whose holder died; false if someone else just did.
    async fn take_over(&self, request: &JobRequest, claimed_at: i64, now_ms: i64) -> Result<bool, Error> {
        let result = self
            .dynamodb
            .update_item()
            .table_name(self.table)
            .key("pk", claim_key(request))
            .key("sk", AttributeValue::S("CLAIM".into()))
            .update_expression("SET claimed_at = :now")
            .condition_expression("claimed_at = :then AND #state = :pending")
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":now", AttributeValue::N(now_ms.to_string()))
            .expression_attribute_values(":then", AttributeValue::N(claimed_at.to_string()))
            .expression_attribute_values(":pending", AttributeValue::S("PENDING".into()))
            .send()
            .await;
        conditional_write("UpdateItem", result)
    }

    async fn record(&self, request: &JobRequest, job_id: &str) -> Result<(), Error> {
        self.dynamodb
            .update_item()
            .table_name(self.table)
            .key("pk", claim_key(request))
            .key("sk", AttributeValue::S("CLAIM".into()))
            .update_expression("SET #state = :submitted, job_id = :job")
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":submitted", AttributeValue::S("SUBMITTED".into()))
            .expression_attribute_values(":job", AttributeValue::S(job_id.to_owned()))
            .send()
            .await
            .map_err(|e| Error::aws("UpdateItem", e))?;
        Ok(())
    }

    /// The job with the request's name in its queue, if Batch has one.
    pub async fn find_by_name(&self, request: &JobRequest) -> Result<Option<String>, Error> {
        let reply = self
            .batch
            .list_jobs()
            .job_queue(&request.queue_arn)
            .filters(KeyValuesPair::builder().name("JOB_NAME").values(&request.job_name).build())
            .send()
            .await
            .map_err(|e| Error::aws("ListJobs", e))?;
        Ok(reply
            .job_summary_list()
            .iter()
            .find(|j| j.job_name() == Some(request.job_name.as_str()))
            .and_then(|j| j.job_id())
            .map(str::to_owned))
    }

    async fn submit_job(&self, request: &JobRequest) -> Result<String, Error> {
        let mut last = None;
        for attempt in 0..SUBMIT_ATTEMPTS {
            if attempt > 0 {
                // Backoff with a little jitter; SubmitJob is limited to 50 TPS per account.
                let jitter = (std::process::id() as u64 + attempt as u64 * 37) % 50;
                tokio::time::sleep(Duration::from_millis(100 * 2u64.pow(attempt) + jitter)).await;
            }
            match self.submit_once(request).await {
                Ok(job_id) => return Ok(job_id),
                Err(err) if err.is_throttling() => {
                    warn!(attempt, error = %err, "SubmitJob throttled; backing off")
                }
                Err(err) if err.aws_code() == Some("ClientException") => return Err(err),
                Err(err) => {
                    // The job may exist even though the answer was lost.
                    warn!(attempt, error = %err, "SubmitJob failed; checking whether the job was made");
                    if let Some(job_id) = self.find_by_name(request).await? {
                        return Ok(job_id);
                    }
                    last = Some(err);
                    continue;
                }
            }
            last = Some(Error::Aws {
                operation: "SubmitJob",
                code: "Throttled".into(),
                message: "still throttled after retries".into(),
            });
        }
        Err(last.unwrap_or_else(|| Error::Timeout("SubmitJob".into())))
    }

    async fn submit_once(&self, request: &JobRequest) -> Result<String, Error> {
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
            .batch
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
            .customize()
            // Our own loop retries, checking by name first: an SDK retry after a lost answer
            // would submit the job twice.
            .config_override(
                aws_sdk_batch::config::Builder::default()
                    .retry_config(aws_sdk_batch::config::retry::RetryConfig::disabled()),
            )
            .send()
            .await
            .map_err(|e| Error::aws("SubmitJob", e))?;
        Ok(reply.job_id().unwrap_or_default().to_owned())
    }
}
