//! Stuck jobs, decided: whether a job waiting in RUNNABLE is past its queue's limit, why it cannot start where that can be known, and whether the sweep cancels it.
//!
//! A job is *stuck* when it has waited in RUNNABLE longer than the queue's
//! `StuckAfterSeconds`. Batch reports no "RUNNABLE since", so the wait is counted from
//! [`runnable_since`]: a job's `createdAt` (SUBMITTED → RUNNABLE takes seconds), or, for a
//! job with `dependsOn` (which Batch keeps PENDING until its dependencies end), the latest
//! `stoppedAt` among its dependencies — a job that waited hours for its dependency is not
//! stuck the moment it becomes RUNNABLE. A stuck job is not always a broken one: a deep backlog on a
//! busy queue waits too. So a *diagnosis* names a cause that waiting cannot cure, read from
//! the queue's and its compute environments' live state, in this order:
//!
//! 1. the queue is disabled, or INVALID;
//! 2. none of its compute environments is enabled and VALID;
//! 3. the job needs more vCPU than every usable compute environment's `MaxVcpus`;
//! 4. the job needs ARM64 and every usable compute environment is Fargate Spot (x86_64 only);
//! 5. Batch itself reports the job blocked by a misconfiguration (`MISCONFIGURATION:…`
//!    in its status reason, as in Batch's "Job Queue Blocked" events).
//!
//! A capacity shortage (`CAPACITY:…`, or nothing reported) is not a diagnosis: it may pass.

use crate::model::fargate::{format_vcpu, Size};
use crate::model::stack::CancelStuckJobs;
use serde::Serialize;

/// A job waiting in RUNNABLE, as the sweep sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct WaitingJob {
    pub job_id: String,
    pub job_name: String,
    /// When it became RUNNABLE, as far as Batch lets one know ([`runnable_since`]).
    pub runnable_since_ms: i64,
    /// What it asks for, when Batch says.
    pub size: Option<Size>,
    /// `X86_64` or `ARM64`, when the job says.
    pub architecture: Option<String>,
    /// Batch's own reason, when it has one (a blocked job's cause).
    pub status_reason: Option<String>,
}

/// A job queue's live state and its compute environments', in the queue's order.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueState {
    pub name: String,
    pub enabled: bool,
    /// `VALID`, `INVALID`, `CREATING`, `UPDATING`, ...
    pub status: String,
    pub status_reason: Option<String>,
    pub environments: Vec<EnvironmentState>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EnvironmentState {
    pub name: String,
    pub enabled: bool,
    pub status: String,
    pub status_reason: Option<String>,
    /// Fargate Spot (x86_64 only) rather than Fargate.
    pub spot: bool,
    pub max_vcpus: Option<u32>,
    /// The name of its ECS cluster (the one its tasks' ARNs name).
    pub ecs_cluster: Option<String>,
}

impl EnvironmentState {
    fn usable(&self) -> bool {
        self.enabled && self.status == "VALID"
    }

    fn state_text(&self) -> String {
        match (&self.enabled, self.status.as_str(), &self.status_reason) {
            (false, _, _) => format!("{}: DISABLED", self.name),
            (true, status, Some(reason)) => format!("{}: {status} ({reason})", self.name),
            (true, status, None) => format!("{}: {status}", self.name),
        }
    }
}

/// Whole seconds a job waiting since `since_ms` has waited by `now_ms` (0 for a clock
/// behind it).
pub fn seconds_waited(since_ms: i64, now_ms: i64) -> u64 {
    u64::try_from(now_ms.saturating_sub(since_ms) / 1000).unwrap_or(0)
}

/// When a RUNNABLE job became RUNNABLE: its creation, or — with dependencies — when the
/// last of them ended (`dependency_ends`, each dependency's `stoppedAt`); its creation
/// again when an end is unknown (Batch no longer has the dependency), as for any job.
pub fn runnable_since(created_at_ms: i64, dependency_ends: &[Option<i64>]) -> i64 {
    if dependency_ends.iter().any(Option::is_none) {
        return created_at_ms;
    }
    dependency_ends.iter().flatten().copied().fold(created_at_ms, i64::max)
}

/// Whether a job that has waited this long is past the queue's limit.
pub fn is_stuck(waited_seconds: u64, limit_seconds: u32) -> bool {
    waited_seconds > u64::from(limit_seconds)
}

/// A cause waiting cannot cure, in words, when one is knowable (see the module docs).
pub fn diagnose(job: &WaitingJob, queue: &QueueState) -> Option<String> {
    let name = &queue.name;
    if !queue.enabled {
        return Some(format!("its job queue {name} is DISABLED"));
    }
    if queue.status == "INVALID" {
        let why = queue.status_reason.as_deref().unwrap_or("no reason given");
        return Some(format!("its job queue {name} is INVALID ({why})"));
    }
    let usable: Vec<&EnvironmentState> = queue.environments.iter().filter(|e| e.usable()).collect();
    if usable.is_empty() {
        let states: Vec<String> = queue.environments.iter().map(EnvironmentState::state_text).collect();
        return Some(format!("no compute environment of job queue {name} can run jobs ({})", states.join("; ")));
    }
    if let Some(size) = job.size {
        let max = usable.iter().filter_map(|e| e.max_vcpus).max();
        if let Some(max) = max.filter(|max| !size.fits_vcpus(*max)) {
            return Some(format!(
                "it needs {} vCPU and the compute environments of job queue {name} allow at most {max} (MaxVcpus)",
                format_vcpu(size.vcpu)
            ));
        }
    }
    let arm = job.architecture.as_deref().is_some_and(|a| a.eq_ignore_ascii_case("ARM64"));
    if arm && usable.iter().all(|e| e.spot) {
        return Some(format!(
            "it needs ARM64 and the compute environments of job queue {name} are Fargate Spot, which runs X86_64 only"
        ));
    }
    job.status_reason
        .as_deref()
        .filter(|reason| reason.starts_with("MISCONFIGURATION:"))
        .map(|reason| format!("Batch reports it blocked: {reason}"))
}

/// Whether the queue's rule cancels a stuck job with this diagnosis.
pub fn should_cancel(rule: CancelStuckJobs, diagnosis: Option<&str>) -> bool {
    match rule {
        CancelStuckJobs::Never => false,
        CancelStuckJobs::Diagnosed => diagnosis.is_some(),
        CancelStuckJobs::Always => true,
    }
}

/// The reason a cancelled stuck job carries (Batch shows it as the job's status reason).
pub fn cancel_reason(
    job: &WaitingJob,
    waited_seconds: u64,
    queue: &str,
    limit: u32,
    diagnosis: Option<&str>,
) -> String {
    let cause = match (diagnosis, job.status_reason.as_deref()) {
        (Some(diagnosis), _) => format!("it cannot start: {diagnosis}"),
        (None, Some(batch)) => format!("no cause Batchline can see; Batch says: {batch}"),
        (None, None) => "no cause Batchline can see (capacity or quotas, most likely)".to_owned(),
    };
    format!("Batchline: RUNNABLE for {waited_seconds} s, past job queue {queue}'s limit of {limit} s; {cause}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fargate::Quarters;

    #[test]
    fn a_dependent_job_waits_from_when_its_last_dependency_ended() {
        assert_eq!(runnable_since(1_000, &[]), 1_000, "no dependencies: its creation");
        assert_eq!(runnable_since(1_000, &[Some(7_200_000), Some(5_000)]), 7_200_000, "the last end");
        assert_eq!(runnable_since(1_000, &[Some(7_200_000), None]), 1_000, "an end unknown: its creation");
        assert_eq!(runnable_since(9_000, &[Some(5_000)]), 9_000, "never before its creation");
    }

    fn job(vcpu_quarters: u32, architecture: Option<&str>) -> WaitingJob {
        WaitingJob {
            job_id: "j1".into(),
            job_name: "stuck".into(),
            runnable_since_ms: 0,
            size: Some(Size { vcpu: Quarters(vcpu_quarters), memory_mib: 2048 * vcpu_quarters / 4 }),
            architecture: architecture.map(str::to_owned),
            status_reason: None,
        }
    }

    fn environment(name: &str, spot: bool, max_vcpus: u32) -> EnvironmentState {
        EnvironmentState {
            name: name.into(),
            enabled: true,
            status: "VALID".into(),
            status_reason: None,
            spot,
            max_vcpus: Some(max_vcpus),
            ecs_cluster: None,
        }
    }

    fn queue(environments: Vec<EnvironmentState>) -> QueueState {
        QueueState { name: "q".into(), enabled: true, status: "VALID".into(), status_reason: None, environments }
    }

    #[test]
    fn a_job_is_stuck_only_past_the_limit() {
        assert_eq!(seconds_waited(10_000, 1_810_999), 1800);
        assert!(!is_stuck(1800, 1800));
        assert!(is_stuck(1801, 1800));
        assert_eq!(seconds_waited(10_000, 0), 0, "a clock behind createdAt waits nothing");
    }

    #[test]
    fn a_job_that_fits_a_healthy_queue_has_no_diagnosis() {
        let healthy = queue(vec![environment("spot", true, 4), environment("main", false, 16)]);
        assert_eq!(diagnose(&job(16 * 4, Some("ARM64")), &healthy), None, "16 vCPU ARM64 fits main");
    }

    #[test]
    fn a_size_above_every_usable_environment_is_diagnosed() {
        let mut small = queue(vec![environment("main", false, 4), environment("big", false, 64)]);
        small.environments[1].enabled = false;
        let why = diagnose(&job(8 * 4, None), &small).unwrap();
        assert_eq!(why, "it needs 8 vCPU and the compute environments of job queue q allow at most 4 (MaxVcpus)");
    }

    #[test]
    fn arm64_on_spot_only_is_diagnosed() {
        let why = diagnose(&job(4, Some("ARM64")), &queue(vec![environment("spot", true, 256)])).unwrap();
        assert!(why.contains("Fargate Spot, which runs X86_64 only"), "{why}");
        assert_eq!(diagnose(&job(4, Some("X86_64")), &queue(vec![environment("spot", true, 256)])), None);
    }

    #[test]
    fn disabled_and_invalid_queues_and_environments_are_diagnosed_first() {
        let mut disabled = queue(vec![environment("main", false, 256)]);
        disabled.enabled = false;
        assert_eq!(diagnose(&job(4, None), &disabled).unwrap(), "its job queue q is DISABLED");
        let mut invalid = queue(vec![environment("main", false, 256)]);
        invalid.status = "INVALID".into();
        invalid.status_reason = Some("CLIENT_ERROR".into());
        assert_eq!(diagnose(&job(4, None), &invalid).unwrap(), "its job queue q is INVALID (CLIENT_ERROR)");
        let mut environments = queue(vec![environment("a", false, 256), environment("b", false, 256)]);
        environments.environments[0].enabled = false;
        environments.environments[1].status = "INVALID".into();
        environments.environments[1].status_reason = Some("subnet gone".into());
        assert_eq!(
            diagnose(&job(4, None), &environments).unwrap(),
            "no compute environment of job queue q can run jobs (a: DISABLED; b: INVALID (subnet gone))"
        );
    }

    #[test]
    fn batch_misconfiguration_reasons_diagnose_and_capacity_ones_do_not() {
        let healthy = queue(vec![environment("main", false, 256)]);
        let mut blocked = job(4, None);
        blocked.status_reason = Some("MISCONFIGURATION:SERVICE_ROLE_PERMISSIONS - no access".into());
        assert!(diagnose(&blocked, &healthy).unwrap().starts_with("Batch reports it blocked: MISCONFIGURATION:"));
        blocked.status_reason = Some("CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY - later".into());
        assert_eq!(diagnose(&blocked, &healthy), None);
        let reason = cancel_reason(&blocked, 2000, "q", 1800, None);
        assert!(reason.ends_with("Batch says: CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY - later"), "{reason}");
    }

    #[test]
    fn the_rule_decides_which_stuck_jobs_are_cancelled() {
        assert!(!should_cancel(CancelStuckJobs::Never, Some("x")));
        assert!(should_cancel(CancelStuckJobs::Diagnosed, Some("x")));
        assert!(!should_cancel(CancelStuckJobs::Diagnosed, None));
        assert!(should_cancel(CancelStuckJobs::Always, None));
        let reason = cancel_reason(&job(4, None), 2000, "q", 1800, Some("its job queue q is DISABLED"));
        assert_eq!(
            reason,
            "Batchline: RUNNABLE for 2000 s, past job queue q's limit of 1800 s; it cannot start: its job queue q is DISABLED"
        );
    }
}

/// What the watch found in one queue.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueReport {
    /// The queue's physical name.
    pub queue: String,
    pub runnable: usize,
    pub oldest_runnable_seconds: u64,
    pub stuck: usize,
    /// Stuck jobs with a cause waiting cannot cure.
    pub diagnosed: usize,
    pub cancelled: usize,
}
