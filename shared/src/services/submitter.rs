//! Submitting a job exactly once: an owned claim in the store before SubmitJob, and the job's deterministic name to recover.
//!
//! SubmitJob has no idempotency token, EventBridge delivers at least once, and an SDK
//! retry after a lost response could submit twice. So:
//! 1. the request's idempotency key is claimed with a conditional write: state `PENDING`,
//!    the job name, a fingerprint of what the caller sent, the claim time (read from the
//!    clock when the claim is written) and its holder — the invocation's request id and
//!    its Lambda deadline;
//! 2. SubmitJob is called with the SDK's own retries off. Throttling is retried here with
//!    backoff (a throttled call created nothing); any other failure may have created the
//!    job, so before trying again the job is looked up by its name;
//! 3. the claim records the job id (state `SUBMITTED`), on condition that it is still
//!    PENDING and still this holder's.
//!
//! A claim that already exists is read: a withdrawn one (its run gave the attempt up, see
//! [`crate::services::runs`]) is refused; another fingerprint is a conflict; a recorded job
//! is the answer. A PENDING claim whose job exists by name (its holder's, or this
//! invocation's own earlier SubmitJob whose record failed) gets that job recorded and
//! returned. Otherwise the caller's own token means its own write took effect and only the
//! reply was lost (it carries on as the holder); anyone else's claim is taken over only
//! once its holder cannot be running any more — after the holder's deadline plus
//! [`TAKEOVER_MARGIN_MS`] (claims from earlier releases, without a holder, after
//! [`CLAIM_LEASE_MS`] from their claim time) — and until then the delivery is told to
//! retry later.

use std::time::Duration;

use tracing::{info, warn};

use crate::model::job_request::{digest, JobRequest};
use crate::services::ports::{BatchPort, Clock};
use crate::store::{ClaimState, ClaimStore, Holder, SubmissionClaim};
use crate::Error;

/// How long a PENDING claim written by an earlier release (without a holder) may be in the
/// middle of SubmitJob before it counts as abandoned.
pub const CLAIM_LEASE_MS: i64 = 30_000;
/// Time allowed, past a holder's deadline, for clocks that disagree.
pub const TAKEOVER_MARGIN_MS: i64 = 10_000;
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
    /// The run gave the attempt up before a job was recorded: it is never to be submitted.
    #[error("the submission of {0:?} was withdrawn by its run")]
    Withdrawn(String),
    #[error(transparent)]
    Failed(#[from] Error),
}

impl From<SubmitError> for Error {
    fn from(err: SubmitError) -> Self {
        match err {
            SubmitError::InFlight(key) => Error::InFlight(format!("the submission of {key:?}")),
            SubmitError::Conflict(key) => Error::IdempotencyConflict(key),
            SubmitError::Withdrawn(key) => Error::Withdrawn(key),
            SubmitError::Failed(err) => err,
        }
    }
}

/// Submits jobs through `batch`, claiming each key in `claims` first, on behalf of one
/// invocation (`holder`).
pub struct Submitter<'a> {
    pub batch: &'a dyn BatchPort,
    pub claims: &'a dyn ClaimStore,
    pub clock: &'a dyn Clock,
    pub holder: &'a Holder,
}

/// What identifies the request as its caller sent it, so a reused key with other content
/// is caught — and a retry after a deploy (which re-resolves ARNs) is not.
pub fn fingerprint(request: &JobRequest) -> String {
    digest(&request.origin, 32)
}

/// Whether a claim's holder can no longer be running at `now`.
pub fn abandoned(claim: &SubmissionClaim, now_ms: i64) -> bool {
    match &claim.holder {
        Some(holder) => now_ms > holder.deadline_ms + TAKEOVER_MARGIN_MS,
        None => now_ms - claim.claimed_at >= CLAIM_LEASE_MS,
    }
}

impl Submitter<'_> {
    pub async fn submit(&self, request: &JobRequest) -> Result<Submitted, SubmitError> {
        let key = &request.idempotency_key;
        let now = self.clock.now_ms();
        let claim = SubmissionClaim {
            idempotency_key: key.clone(),
            job_name: request.job_name.clone(),
            queue: request.queue_arn.clone(),
            fingerprint: Some(fingerprint(request)),
            state: ClaimState::Pending,
            job_id: None,
            claimed_at: now,
            holder: Some(self.holder.clone()),
        };
        if !self.claims.create_claim(&claim).await? {
            let Some(existing) = self.claims.claim(key).await? else {
                // Claimed a moment ago and gone already (expired): let a retry claim it anew.
                return Err(SubmitError::InFlight(key.clone()));
            };
            if existing.state == ClaimState::Withdrawn {
                return Err(SubmitError::Withdrawn(key.clone()));
            }
            if existing.fingerprint.as_ref().is_some_and(|theirs| Some(theirs) != claim.fingerprint.as_ref()) {
                return Err(SubmitError::Conflict(key.clone()));
            }
            if let Some(job_id) = existing.job_id {
                return Ok(Submitted { job_id, job_name: request.job_name.clone(), new: false });
            }
            // A PENDING claim's job may exist already — made by its holder, or by this very
            // invocation earlier (a SubmitJob whose record failed, then the same stage
            // driven again by the next event of the batch) — so it is looked for first.
            if let Some(job_id) = self.batch.find_job(&request.queue_arn, &request.job_name).await? {
                self.record(request, &job_id, None).await?;
                info!(job_name = %request.job_name, job_id, "recovered a submission left unrecorded");
                return Ok(Submitted { job_id, job_name: request.job_name.clone(), new: false });
            }
            let ours = existing.holder.as_ref().is_some_and(|h| h.token == self.holder.token);
            if ours {
                // Our own claim, and no job yet: the write took effect and only its reply
                // was lost, or our SubmitJob failed.
                info!(job_name = %request.job_name, "recognised our own claim");
            } else {
                let now = self.clock.now_ms();
                if !abandoned(&existing, now)
                    || !self.claims.take_over_claim(key, existing.claimed_at, self.holder, now).await?
                {
                    return Err(SubmitError::InFlight(key.clone()));
                }
                info!(job_name = %request.job_name, "took over an abandoned claim");
            }
        }
        let job_id = self.submit_job(request).await?;
        self.record(request, &job_id, Some(&self.holder.token)).await?;
        info!(job_name = %request.job_name, job_id, "job submitted");
        Ok(Submitted { job_id, job_name: request.job_name.clone(), new: true })
    }

    /// Records the job on the claim, as long as the claim is (still) ours to record.
    async fn record(&self, request: &JobRequest, job_id: &str, holder: Option<&str>) -> Result<(), Error> {
        let key = &request.idempotency_key;
        if self.claims.record_claim_job(key, job_id, holder).await? {
            return Ok(());
        }
        // Not recorded: already recorded with this job (our own earlier reply was lost),
        // or the claim is no longer ours.
        match self.claims.claim(key).await? {
            Some(claim) if claim.job_id.as_deref() == Some(job_id) => Ok(()),
            other => {
                warn!(job_name = %request.job_name, job_id, claim = ?other, "the claim was lost while submitting");
                Err(Error::ClaimLost(key.clone()))
            }
        }
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
