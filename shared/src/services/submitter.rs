//! Submitting a job exactly once: a claim in the store before SubmitJob, and the job's deterministic name to recover.
//!
//! SubmitJob has no idempotency token, EventBridge delivers at least once, and an SDK
//! retry after a lost response could submit twice. So:
//! 1. the request's idempotency key is claimed with a conditional write (state
//!    `PENDING`, the job name and a fingerprint of the request);
//! 2. SubmitJob is called with the SDK's own retries off. Throttling is retried here with
//!    backoff (a throttled call created nothing); any other failure may have created the
//!    job, so before trying again the job is looked up by its name;
//! 3. the claim records the job id (state `SUBMITTED`).
//!
//! A second delivery finds the claim: `SUBMITTED` gives the job already made; `PENDING`
//! means a submission was interrupted or is under way — if the job exists by name it is
//! recorded and returned; if not and the claim is older than [`CLAIM_LEASE_MS`], its
//! holder died before SubmitJob and this delivery takes the claim over; otherwise the
//! delivery is told to retry later. The same key with a different request is a conflict.

use std::time::Duration;

use tracing::{info, warn};

use crate::model::job_request::{digest, JobRequest};
use crate::services::batch::BatchPort;
use crate::store::{ClaimState, ClaimStore, SubmissionClaim};
use crate::Error;

/// How long a PENDING claim may be in the middle of SubmitJob before it counts as abandoned.
pub const CLAIM_LEASE_MS: i64 = 30_000;
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
    Failed(#[from] Error),
}

impl From<SubmitError> for Error {
    fn from(err: SubmitError) -> Self {
        match err {
            SubmitError::InFlight(key) => Error::InFlight(format!("the submission of {key:?}")),
            SubmitError::Conflict(key) => Error::IdempotencyConflict(key),
            SubmitError::Failed(err) => err,
        }
    }
}

/// Submits jobs through `batch`, claiming each key in `claims` first.
pub struct Submitter<'a> {
    pub batch: &'a dyn BatchPort,
    pub claims: &'a dyn ClaimStore,
}

/// What identifies the request itself, so a reused key with other content is caught.
pub fn fingerprint(request: &JobRequest) -> String {
    digest(&serde_json::to_string(request).unwrap_or_default(), 32)
}

impl Submitter<'_> {
    pub async fn submit(&self, request: &JobRequest, now_ms: i64) -> Result<Submitted, SubmitError> {
        let claim = SubmissionClaim {
            idempotency_key: request.idempotency_key.clone(),
            job_name: request.job_name.clone(),
            queue: request.queue_arn.clone(),
            fingerprint: fingerprint(request),
            state: ClaimState::Pending,
            job_id: None,
            claimed_at: now_ms,
        };
        if !self.claims.create_claim(&claim).await? {
            let existing = self.claims.claim(&request.idempotency_key).await?;
            let existing = existing.unwrap_or_else(|| SubmissionClaim { fingerprint: String::new(), ..claim.clone() });
            if existing.fingerprint != claim.fingerprint {
                return Err(SubmitError::Conflict(request.idempotency_key.clone()));
            }
            if let Some(job_id) = existing.job_id {
                return Ok(Submitted { job_id, job_name: request.job_name.clone(), new: false });
            }
            if let Some(job_id) = self.batch.find_job(&request.queue_arn, &request.job_name).await? {
                self.claims.record_claim_job(&request.idempotency_key, &job_id).await?;
                info!(job_name = %request.job_name, job_id, "recovered a submission left unrecorded");
                return Ok(Submitted { job_id, job_name: request.job_name.clone(), new: false });
            }
            if now_ms - existing.claimed_at < CLAIM_LEASE_MS
                || !self.claims.take_over_claim(&request.idempotency_key, existing.claimed_at, now_ms).await?
            {
                return Err(SubmitError::InFlight(request.idempotency_key.clone()));
            }
            info!(job_name = %request.job_name, "took over an abandoned claim");
        }
        let job_id = self.submit_job(request).await?;
        self.claims.record_claim_job(&request.idempotency_key, &job_id).await?;
        info!(job_name = %request.job_name, job_id, "job submitted");
        Ok(Submitted { job_id, job_name: request.job_name.clone(), new: true })
    }

    async fn submit_job(&self, request: &JobRequest) -> Result<String, Error> {
        let mut last = None;
        for attempt in 0..SUBMIT_ATTEMPTS {
            if attempt > 0 {
                // Backoff with a little jitter; SubmitJob is limited to 50 TPS per account.
                let jitter = (std::process::id() as u64 + attempt as u64 * 37) % 50;
                tokio::time::sleep(Duration::from_millis(100 * 2u64.pow(attempt) + jitter)).await;
            }
            match self.batch.submit_job(request).await {
                Ok(job_id) => return Ok(job_id),
                Err(err) if err.is_throttling() => {
                    warn!(attempt, error = %err, "SubmitJob throttled; backing off")
                }
                Err(err) if err.aws_code() == Some("ClientException") => return Err(err),
                Err(err) => {
                    // The job may exist even though the answer was lost.
                    warn!(attempt, error = %err, "SubmitJob failed; checking whether the job was made");
                    if let Some(job_id) = self.batch.find_job(&request.queue_arn, &request.job_name).await? {
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
}
