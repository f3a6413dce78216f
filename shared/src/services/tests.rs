//! Unit tests of the services on the in-memory store and Batch: claims, run driving with two handlers interleaved, cancel and the sweep.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde_json::{json, Value};

use super::announce::RunMetric;
use super::clock::ManualClock;
use super::config_cache::ConfigCache;
use super::memory_batch::{MemoryBatch, SubmitFault};
use super::ports::{BatchPort, Clock, QueueInspector, QueueMetrics, RunAnnouncer};
use super::runs::{CancelOutcome, RunDriver};
use super::submitter::{SubmitError, Submitter, CLAIM_LEASE_MS, TAKEOVER_MARGIN_MS};
use crate::model::batch_event::JobStateChangeEvent;
use crate::model::fargate::{Quarters, Size};
use crate::model::job_request::JobRequest;
use crate::model::pipeline::{OnStageFailure, Pipeline, Stage};
use crate::model::run::{Applied, RunInput, RunStatus, StageStatus};
use crate::model::stack::*;
use crate::store::{ClaimState, ClaimStore, ConfigStore, Holder, MemoryStore, RunStore, StoreFault, SubmissionClaim};

const SMALL: Size = Size { vcpu: Quarters(1), memory_mib: 512 };

fn stage(after: &[&str]) -> Stage {
    Stage {
        job_definition: "default".into(),
        size: SMALL,
        parameters: BTreeMap::new(),
        queue: "default".into(),
        after: after.iter().map(|s| s.to_string()).collect(),
        max_resizes: 1,
        timeout_seconds: None,
        expected_seconds: None,
        max_vcpus: None,
        retry: None,
        map: None,
    }
}

/// A deployed configuration with one queue, one job definition and the diamond a → (b, c) → d.
fn config() -> StackConfig {
    let diamond = Pipeline {
        name: "diamond".into(),
        stages: BTreeMap::from([
            ("a".to_owned(), stage(&[])),
            ("b".to_owned(), stage(&["a"])),
            ("c".to_owned(), stage(&["a"])),
            ("d".to_owned(), stage(&["b", "c"])),
        ]),
        on_failure: None,
        on_stage_failure: OnStageFailure::Terminate,
        max_run_seconds: None,
        max_run_cost_usd: None,
    };
    // first → second (a job definition of its own, "report"), with a failure stage.
    let mut report = stage(&["first"]);
    report.job_definition = "report".into();
    let fragile = Pipeline {
        name: "fragile".into(),
        stages: BTreeMap::from([("first".to_owned(), stage(&[])), ("second".to_owned(), report)]),
        on_failure: Some(stage(&[])),
        on_stage_failure: OnStageFailure::Terminate,
        max_run_seconds: None,
        max_run_cost_usd: None,
    };
    StackConfig {
        name_prefix: "unit".into(),
        network: Network {
            subnets: vec!["subnet-1".into()],
            security_groups: vec!["sg-1".into()],
            assign_public_ip: true,
        },
        roles: Roles {
            names: RoleNames {
                execution_role_name: "unit-execution".into(),
                job_role_name: "unit-job".into(),
                input_bucket: None,
                permissions_boundary: None,
                run_data_prefix: None,
            },
            execution_role_arn: "arn:role/execution".into(),
            job_role_arn: "arn:role/job".into(),
        },
        repository: ProvisionedRepository {
            spec: Repository { name: "unit-jobs".into(), scan_on_push: true, delete_on_stack_delete: false },
            uri: "uri".into(),
        },
        compute_environments: BTreeMap::from([(
            "default".to_owned(),
            Provisioned {
                spec: ComputeEnvironment {
                    name: "unit-default".into(),
                    kind: ComputeType::Fargate,
                    max_vcpus: 256,
                    ecs_cluster_arn: None,
                },
                arn: "arn:ce".into(),
            },
        )]),
        job_queues: BTreeMap::from([(
            "default".to_owned(),
            Provisioned {
                spec: JobQueue {
                    name: "unit-default".into(),
                    priority: 1,
                    compute_environments: vec!["default".into()],
                    stuck_after_seconds: DEFAULT_STUCK_AFTER_SECONDS,
                    cancel_stuck_jobs: CancelStuckJobs::Never,
                },
                arn: "arn:queue".into(),
            },
        )]),
        job_definitions: BTreeMap::from([
            ("default".to_owned(), definition("unit-default", "arn:definition:1")),
            ("report".to_owned(), definition("unit-report", "arn:report:1")),
        ]),
        default_queue: "default".into(),
        pipelines: BTreeMap::from([("diamond".to_owned(), diamond), ("fragile".to_owned(), fragile)]),
        triggers: Triggers::default(),
    }
}

/// A registered job definition of the smallest size on the default queue.
fn definition(name: &str, arn: &str) -> Provisioned<JobDefinition> {
    Provisioned {
        spec: JobDefinition {
            name: name.into(),
            image: DEFAULT_IMAGE.into(),
            size: SMALL,
            command: vec![],
            environment: BTreeMap::new(),
            secrets: BTreeMap::new(),
            architecture: "X86_64".into(),
            retry_attempts: 3,
            retry_rules: vec![],
            max_resizes: 0,
            timeout_seconds: None,
            log_group: DEFAULT_LOG_GROUP.into(),
            queue: "default".into(),
            allow_overrides: true,
        },
        arn: arn.into(),
    }
}

/// Completion events and run metrics, recorded.
#[derive(Default)]
struct Announced {
    completions: Mutex<Vec<Value>>,
    metrics: Mutex<Vec<&'static str>>,
    /// Every metric with its value, in the order published.
    values: Mutex<Vec<(&'static str, f64)>>,
    /// The map work asked for, in order.
    map_work: Mutex<Vec<crate::model::map::MapWork>>,
}

#[async_trait]
impl RunAnnouncer for Announced {
    async fn completion(&self, detail: &Value, _run_id: &str) -> Result<(), crate::Error> {
        self.completions.lock().unwrap().push(detail.clone());
        Ok(())
    }
    async fn run_metrics(&self, _pipeline: &str, metrics: &[RunMetric]) {
        self.metrics.lock().unwrap().extend(metrics.iter().map(|m| m.name));
        self.values.lock().unwrap().extend(metrics.iter().map(|m| (m.name, m.value)));
    }
    async fn map_work(&self, work: &crate::model::map::MapWork) -> Result<(), crate::Error> {
        self.map_work.lock().unwrap().push(work.clone());
        Ok(())
    }
}

const NO_PRICE_OVERRIDES: crate::settings::PriceOverrides =
    crate::settings::PriceOverrides { vcpu_hour: None, gb_hour: None, spot_vcpu_hour: None, spot_gb_hour: None };

struct World {
    store: Arc<MemoryStore>,
    batch: MemoryBatch,
    announced: Announced,
    configs: ConfigCache,
    clock: ManualClock,
    /// The invocation the world's driver and submitter work for.
    holder: Holder,
}

/// An invocation holding claims until `deadline_ms`.
fn invocation(token: &str, deadline_ms: i64) -> Holder {
    Holder { token: token.into(), deadline_ms }
}

impl World {
    async fn new() -> World {
        let store = Arc::new(MemoryStore::new());
        store.publish_config(&config(), "unit-environment").await.unwrap();
        World {
            configs: ConfigCache::new(store.clone()),
            store,
            batch: MemoryBatch::new(),
            announced: Announced::default(),
            clock: ManualClock::at(1_000),
            holder: invocation("first", 301_000),
        }
    }

    fn driver(&self) -> RunDriver<'_> {
        RunDriver {
            runs: self.store.as_ref(),
            claims: self.store.as_ref(),
            batch: &self.batch,
            announcer: &self.announced,
            configs: &self.configs,
            clock: &self.clock,
            holder: &self.holder,
            prices: &NO_PRICE_OVERRIDES,
        }
    }

    /// Publishes `deployed` as a deploy would, and drops the cached configuration.
    async fn redeploy(&mut self, deployed: &StackConfig) {
        self.store.publish_config(deployed, "unit-environment").await.unwrap();
        self.configs = ConfigCache::new(self.store.clone());
    }

    fn submitter(&self) -> Submitter<'_> {
        self.submitter_for(&self.holder)
    }

    fn submitter_for<'a>(&'a self, holder: &'a Holder) -> Submitter<'a> {
        Submitter { batch: &self.batch, claims: self.store.as_ref(), clock: &self.clock, holder }
    }

    /// The job of a stage's latest attempt.
    fn job_of(&self, stage: &str) -> String {
        let jobs = self.batch.jobs();
        let job = jobs.iter().rev().find(|j| j.request.tags.get("batchline:stage").map(String::as_str) == Some(stage));
        job.unwrap_or_else(|| panic!("no job for stage {stage}")).job_id.clone()
    }

    fn jobs_of(&self, stage: &str) -> usize {
        self.batch
            .jobs()
            .iter()
            .filter(|j| j.request.tags.get("batchline:stage").map(String::as_str) == Some(stage))
            .count()
    }

    /// The state change Batch would send for the stage's job.
    fn event(&self, stage: &str, status: &str) -> JobStateChangeEvent {
        let job_id = self.job_of(stage);
        self.batch.set_status(&job_id, status);
        JobStateChangeEvent::from_value(json!({
            "id": format!("{job_id}-{status}"), "detail-type": "Batch Job State Change", "source": "aws.batch",
            "detail": {"jobId": job_id, "status": status}
        }))
        .unwrap()
    }
}

fn request(key: &str) -> JobRequest {
    JobRequest {
        idempotency_key: key.into(),
        origin: key.into(),
        job_name: format!("job-{key}"),
        queue_arn: "arn:queue".into(),
        job_definition_arn: "arn:definition:1".into(),
        parameters: BTreeMap::new(),
        environment: BTreeMap::new(),
        command: None,
        size: None,
        array_size: None,
        depends_on: vec![],
        tags: BTreeMap::new(),
        timeout_seconds: None,
        retry: None,
    }
}

#[tokio::test]
async fn store_contract_holds_for_the_memory_store() {
    crate::store::contract::check_all(&MemoryStore::new(), "unit", &config()).await;
}

#[tokio::test]
async fn a_repeated_request_submits_one_job_and_a_reused_key_is_a_conflict() {
    let world = World::new().await;
    let first = world.submitter().submit(&request("k1")).await.unwrap();
    world.clock.set(2_000);
    let again = world.submitter_for(&invocation("second", 302_000)).submit(&request("k1")).await.unwrap();
    assert!(first.new && !again.new);
    assert_eq!(first.job_id, again.job_id);
    assert_eq!(world.batch.jobs().len(), 1);

    let mut other = request("k1");
    other.origin = "something else".into();
    assert!(matches!(world.submitter().submit(&other).await, Err(SubmitError::Conflict(_))));
}

#[tokio::test]
async fn a_retry_after_a_deploy_resolved_other_arns_is_the_same_request() {
    // GIVEN a submission whose job definition ARN a deploy has since moved to a new revision
    let world = World::new().await;
    let first = world.submitter().submit(&request("k-deploy")).await.unwrap();
    let mut after_deploy = request("k-deploy");
    after_deploy.job_definition_arn = "arn:definition:2".into();
    after_deploy.queue_arn = "arn:queue-recreated".into();
    // WHEN the caller retries the same thing
    let again = world.submitter_for(&invocation("retry", 400_000)).submit(&after_deploy).await.unwrap();
    // THEN it is the same request: the first job, no conflict
    assert_eq!((again.job_id, again.new), (first.job_id, false));
}

#[tokio::test]
async fn a_claim_from_the_previous_release_without_fingerprint_or_holder_is_honoured() {
    let world = World::new().await;
    let legacy = SubmissionClaim {
        idempotency_key: "k-legacy".into(),
        job_name: "job-k-legacy".into(),
        queue: "arn:queue".into(),
        fingerprint: None,
        state: ClaimState::Pending,
        job_id: None,
        claimed_at: 1_000,
        holder: None,
    };
    world.store.create_claim(&legacy).await.unwrap();
    world.clock.set(1_000 + CLAIM_LEASE_MS - 1);
    assert!(matches!(world.submitter().submit(&request("k-legacy")).await, Err(SubmitError::InFlight(_))));
    world.clock.set(1_000 + CLAIM_LEASE_MS);
    assert!(world.submitter().submit(&request("k-legacy")).await.unwrap().new, "its 30 s lease is over");
    assert_eq!(world.batch.jobs().len(), 1);
}

#[tokio::test]
async fn a_lost_submit_answer_is_recovered_by_name_without_a_second_job() {
    let world = World::new().await;
    world.batch.inject([SubmitFault::LoseAnswer]);
    let submitted = world.submitter().submit(&request("k2")).await.unwrap();
    assert_eq!(world.batch.jobs().len(), 1, "looked up by name, not submitted again");
    assert_eq!(submitted.job_id, world.batch.jobs()[0].job_id);
    let claim = world.store.claim("k2").await.unwrap().unwrap();
    assert_eq!((claim.state, claim.job_id), (ClaimState::Submitted, Some(submitted.job_id)));
}

#[tokio::test]
async fn a_live_claim_is_not_taken_over_before_its_holders_deadline() {
    // GIVEN an invocation that claimed the key at t=1 s and may run until t=301 s, and is
    // still inside a slow SubmitJob (simulated: its claim is written, its job not yet made)
    let world = World::new().await;
    let slow = invocation("slow", 301_000);
    world.batch.inject([SubmitFault::Refuse("ClientException".into())]);
    assert!(world.submitter_for(&slow).submit(&request("k3")).await.is_err());
    assert_eq!(world.store.claim("k3").await.unwrap().unwrap().holder, Some(slow.clone()));
    // WHEN another delivery comes long after the old 30 s lease, but before the deadline
    world.clock.set(200_000);
    let other = invocation("other", 500_000);
    let early = world.submitter_for(&other).submit(&request("k3")).await;
    // THEN it is told to retry, and nothing is submitted
    assert!(matches!(early, Err(SubmitError::InFlight(_))), "{early:?}");
    world.clock.set(301_000 + TAKEOVER_MARGIN_MS);
    assert!(matches!(world.submitter_for(&other).submit(&request("k3")).await, Err(SubmitError::InFlight(_))));
    assert!(world.batch.jobs().is_empty());
    // AND once the holder cannot be running any more, the claim is taken over, once
    world.clock.set(301_000 + TAKEOVER_MARGIN_MS + 1);
    let late = world.submitter_for(&other).submit(&request("k3")).await.unwrap();
    assert!(late.new);
    assert_eq!(world.batch.jobs().len(), 1);
    let after = world.submitter_for(&invocation("third", 900_000)).submit(&request("k3")).await.unwrap();
    assert_eq!((after.job_id, after.new), (late.job_id, false));
}

#[tokio::test]
async fn a_holder_whose_claim_was_taken_over_does_not_overwrite_it() {
    // GIVEN a claim taken over from its holder (clocks disagreeing past the margin)
    let world = World::new().await;
    let first = invocation("first", 10_000);
    let claim = SubmissionClaim {
        idempotency_key: "k4".into(),
        job_name: "job-k4".into(),
        queue: "arn:queue".into(),
        fingerprint: Some(super::submitter::fingerprint(&request("k4"))),
        state: ClaimState::Pending,
        job_id: None,
        claimed_at: 1_000,
        holder: Some(first.clone()),
    };
    world.store.create_claim(&claim).await.unwrap();
    let second = invocation("second", 900_000);
    assert!(world.store.take_over_claim("k4", 1_000, &second, 500_000).await.unwrap());
    // WHEN the first holder records a job, THEN the write is refused and the claim keeps its owner
    assert!(!world.store.record_claim_job("k4", "job-of-first", Some("first")).await.unwrap());
    let now = world.store.claim("k4").await.unwrap().unwrap();
    assert_eq!((now.state, now.holder), (ClaimState::Pending, Some(second)));
}

#[tokio::test]
async fn our_own_claim_whose_reply_was_lost_is_recognised_by_its_token() {
    // GIVEN the claim's write took effect, its reply was lost and the SDK's retry found the claim
    let world = World::new().await;
    world.store.inject("create_claim", StoreFault::LoseReplyRetried, 1);
    // WHEN the same invocation goes on
    let submitted = world.submitter().submit(&request("k5")).await.unwrap();
    // THEN it knows the claim is its own and submits, once, at once
    assert!(submitted.new);
    assert_eq!(world.batch.jobs().len(), 1);
    assert_eq!(world.store.claim("k5").await.unwrap().unwrap().job_id, Some(submitted.job_id));
}

#[tokio::test]
async fn the_same_invocation_submitting_again_after_its_record_failed_finds_its_job() {
    // GIVEN an invocation whose SubmitJob succeeded but whose record of it failed
    let world = World::new().await;
    world.store.inject("record_claim_job", StoreFault::Fail, 1);
    assert!(world.submitter().submit(&request("k7")).await.is_err());
    // WHEN the same invocation submits the same request again (the next event of its batch)
    let submitted = world.submitter().submit(&request("k7")).await.unwrap();
    // THEN it finds the job it made: one job, recorded
    assert!(!submitted.new);
    assert_eq!(world.batch.jobs().len(), 1);
    assert_eq!(world.store.claim("k7").await.unwrap().unwrap().job_id, Some(submitted.job_id));
}

#[tokio::test]
async fn a_lost_reply_of_our_own_record_is_not_a_lost_claim() {
    let world = World::new().await;
    world.store.inject("record_claim_job", StoreFault::LoseReplyRetried, 1);
    let submitted = world.submitter().submit(&request("k6")).await.unwrap();
    assert!(submitted.new);
    assert_eq!(world.store.claim("k6").await.unwrap().unwrap().job_id, Some(submitted.job_id));
}

#[tokio::test]
async fn two_handlers_applying_the_same_event_from_the_same_read_submit_each_next_stage_once() {
    let world = World::new().await;
    let driver = world.driver();
    let (run, created) = driver.start("diamond", "api", "key-1", RunInput::default(), 1_000).await.unwrap();
    assert!(created);
    assert_eq!(world.jobs_of("a"), 1);
    let succeeded = world.event("a", "SUCCEEDED");
    // GIVEN two handlers that read the run at the same version
    let read_by_first = driver.load(&run.run_id).await.unwrap().unwrap();
    let read_by_second = driver.load(&run.run_id).await.unwrap().unwrap();
    assert_eq!(read_by_first.version, read_by_second.version);
    // WHEN both apply the event, one after the other, from their stale reads
    assert_eq!(driver.apply(read_by_first, "a", &succeeded, 2_000).await.unwrap(), Applied::Changed);
    assert!(matches!(driver.apply(read_by_second, "a", &succeeded, 2_001).await.unwrap(), Applied::Unchanged(_)));
    // THEN b and c were submitted once each
    assert_eq!((world.jobs_of("b"), world.jobs_of("c")), (1, 1));
    let stored = driver.load(&run.run_id).await.unwrap().unwrap().run;
    assert_eq!(stored.stages["b"].status, StageStatus::Submitted);
}

#[tokio::test]
async fn fan_in_from_two_interleaved_handlers_submits_the_joining_stage_once_and_completes_once() {
    let world = World::new().await;
    let driver = world.driver();
    let (run, _) = driver.start("diamond", "api", "key-2", RunInput::default(), 1_000).await.unwrap();
    driver.advance(&run.run_id, "a", &world.event("a", "SUCCEEDED"), 2_000).await.unwrap();
    let (b_done, c_done) = (world.event("b", "SUCCEEDED"), world.event("c", "SUCCEEDED"));
    // Two handlers, one with b's event and one with c's, both read before either writes.
    let first = driver.load(&run.run_id).await.unwrap().unwrap();
    let second = driver.load(&run.run_id).await.unwrap().unwrap();
    driver.apply(first, "b", &b_done, 3_000).await.unwrap();
    assert_eq!(world.jobs_of("d"), 0, "d waits for c");
    driver.apply(second, "c", &c_done, 3_001).await.unwrap();
    assert_eq!(world.jobs_of("d"), 1, "the loser re-read, applied c and planned d once");
    // Duplicates of every event change nothing.
    for (stage, event) in [("b", &b_done), ("c", &c_done)] {
        assert!(matches!(driver.advance(&run.run_id, stage, event, 3_500).await.unwrap(), Applied::Unchanged(_)));
    }
    assert_eq!(world.jobs_of("d"), 1);
    let d_done = world.event("d", "SUCCEEDED");
    driver.advance(&run.run_id, "d", &d_done, 4_000).await.unwrap();
    driver.advance(&run.run_id, "d", &d_done, 4_001).await.unwrap();
    let stored = driver.load(&run.run_id).await.unwrap().unwrap().run;
    assert_eq!(stored.status, RunStatus::Succeeded);
    assert!(stored.completion_sent);
    let completions = world.announced.completions.lock().unwrap().clone();
    assert_eq!(completions.len(), 1, "{completions:?}");
    assert_eq!(completions[0]["outcome"], "SUCCEEDED");
    let metrics = world.announced.metrics.lock().unwrap().clone();
    assert_eq!(metrics, ["RunsStarted", "RunsSucceeded", "RunDuration", "RunCost"]);
}

#[tokio::test]
async fn cancel_terminates_the_running_jobs_and_a_second_cancel_only_stops_them_again() {
    let world = World::new().await;
    let driver = world.driver();
    let (run, _) = driver.start("diamond", "api", "key-3", RunInput::default(), 1_000).await.unwrap();
    driver.advance(&run.run_id, "a", &world.event("a", "SUCCEEDED"), 2_000).await.unwrap();
    let CancelOutcome::Cancelled { run: cancelled, terminated } = driver.cancel(&run.run_id, 3_000).await.unwrap()
    else {
        panic!("the run was running")
    };
    assert_eq!(cancelled.status, RunStatus::Cancelled);
    let mut expected = vec![world.job_of("b"), world.job_of("c")];
    expected.sort();
    let mut terminated = terminated;
    terminated.sort();
    assert_eq!(terminated, expected);
    assert!(world
        .batch
        .jobs()
        .iter()
        .filter(|j| terminated.contains(&j.job_id))
        .all(|j| j.terminated_because.is_some()));
    let CancelOutcome::Cancelled { terminated: again, .. } = driver.cancel(&run.run_id, 4_000).await.unwrap() else {
        panic!("a cancelled run answers a cancel again")
    };
    let mut again = again;
    again.sort();
    assert_eq!(again, expected);
    assert_eq!(driver.cancel("no-such-run", 4_000).await.unwrap(), CancelOutcome::NoSuchRun);
    // The run is announced once its jobs have ended, not while they are stopping
    assert!(world.announced.completions.lock().unwrap().is_empty(), "its jobs are still stopping");
    driver.advance(&run.run_id, "b", &world.event("b", "FAILED"), 5_000).await.unwrap();
    assert!(world.announced.completions.lock().unwrap().is_empty(), "c is still stopping");
    driver.advance(&run.run_id, "c", &world.event("c", "FAILED"), 5_001).await.unwrap();
    let completions = world.announced.completions.lock().unwrap().clone();
    assert_eq!(completions.len(), 1, "announced once");
    assert_eq!(completions[0]["outcome"], "CANCELLED");
    assert_eq!(completions[0]["stages"]["b"]["status"], "CANCELLED");
}

#[tokio::test]
async fn the_sweep_applies_an_ended_job_whose_event_was_lost() {
    let world = World::new().await;
    let driver = world.driver();
    let (run, _) = driver.start("diamond", "api", "key-4", RunInput::default(), 1_000).await.unwrap();
    // a's job succeeds in Batch, but its event never arrives
    world.batch.set_status(&world.job_of("a"), "SUCCEEDED");
    let report = driver.sweep().await.unwrap();
    assert_eq!((report.runs_checked, report.transitions_applied, report.reached_end), (1, 1, true));
    assert_eq!((world.jobs_of("b"), world.jobs_of("c")), (1, 1));
    // A second sweep finds nothing more to do.
    let again = driver.sweep().await.unwrap();
    assert_eq!((again.runs_checked, again.transitions_applied), (1, 0));
    assert_eq!(
        driver.load(&run.run_id).await.unwrap().unwrap().version,
        5,
        "start, a submitted, a succeeded, b and c submitted: no write by the second sweep"
    );
}

#[tokio::test]
async fn an_event_that_names_a_stage_job_its_submitter_never_recorded_records_the_claim() {
    // GIVEN a stage whose job was submitted but whose submitter failed to record it
    let world = World::new().await;
    world.store.inject("record_claim_job", StoreFault::Fail, 1);
    let driver = world.driver();
    assert!(driver.start("diamond", "api", "key-5", RunInput::default(), 1_000).await.is_err());
    let run_id = super::runs::run_id("diamond", "key-5");
    let key = crate::model::pipeline::attempt_key(&run_id, "a", 1);
    assert_eq!(world.store.claim(&key).await.unwrap().unwrap().state, ClaimState::Pending);
    // WHEN the job's first event arrives (it names the job by its planned name)
    let job = world.batch.jobs().remove(0);
    let event = JobStateChangeEvent::from_value(json!({
        "id": "early", "detail-type": "Batch Job State Change", "source": "aws.batch",
        "detail": {"jobId": job.job_id, "jobName": job.request.job_name, "status": "RUNNABLE"}
    }))
    .unwrap();
    assert_eq!(driver.advance(&run_id, "a", &event, 2_000).await.unwrap(), Applied::Changed);
    // THEN the claim is recorded with that job: nothing is left PENDING for it
    let claim = world.store.claim(&key).await.unwrap().unwrap();
    assert_eq!((claim.state, claim.job_id), (ClaimState::Submitted, Some(job.job_id)));
    assert_eq!(world.batch.jobs().len(), 1);
}

#[tokio::test]
async fn a_stage_whose_job_definition_a_deploy_removed_fails_the_run_with_the_reason_and_on_failure_runs() {
    // GIVEN a run whose second stage's job definition a deploy has since removed
    let mut world = World::new().await;
    let (run, _) = world.driver().start("fragile", "api", "key-6", RunInput::default(), 1_000).await.unwrap();
    let mut deployed = config();
    deployed.job_definitions.remove("report");
    world.redeploy(&deployed).await;
    // WHEN the first stage succeeds
    let driver = world.driver();
    let outcome = driver.advance(&run.run_id, "first", &world.event("first", "SUCCEEDED"), 2_000).await;
    // THEN the run fails, saying why, its failure stage is submitted, and the event is done
    assert_eq!(outcome.unwrap(), Applied::Changed);
    let stored = driver.load(&run.run_id).await.unwrap().unwrap().run;
    assert_eq!(stored.status, RunStatus::Failed);
    let reason = stored.reason.clone().unwrap_or_default();
    assert!(reason.contains("stage second could not be submitted") && reason.contains("\"report\""), "{reason}");
    assert_eq!(stored.stages["second"].status, StageStatus::Failed);
    assert_eq!(stored.on_failure.as_ref().map(|s| s.status), Some(StageStatus::Submitted));
    assert_eq!(world.jobs_of("on-failure"), 1);
}

#[tokio::test]
async fn a_stage_batch_refuses_fails_the_run_instead_of_retrying_forever() {
    let world = World::new().await;
    let driver = world.driver();
    let (run, _) = driver.start("fragile", "api", "key-7", RunInput::default(), 1_000).await.unwrap();
    world.batch.inject([SubmitFault::Refuse("ClientException".into())]);
    driver.advance(&run.run_id, "first", &world.event("first", "SUCCEEDED"), 2_000).await.unwrap();
    let stored = driver.load(&run.run_id).await.unwrap().unwrap().run;
    assert_eq!(stored.status, RunStatus::Failed, "{stored:?}");
    assert!(stored.reason.unwrap_or_default().contains("ClientException"));
    assert_eq!(world.jobs_of("on-failure"), 1);
}

#[tokio::test]
async fn one_run_the_sweep_cannot_repair_does_not_stop_it_repairing_the_others() {
    // GIVEN two running runs, each with a job that ended in Batch without its event
    let world = World::new().await;
    let driver = world.driver();
    let (older, _) = driver.start("diamond", "api", "key-8", RunInput::default(), 1_000).await.unwrap();
    let (newer, _) = driver.start("diamond", "api", "key-9", RunInput::default(), 2_000).await.unwrap();
    for job in world.batch.jobs() {
        world.batch.set_status(&job.job_id, "SUCCEEDED");
    }
    // WHEN the sweep's read of the first run it visits (the oldest) fails
    world.store.inject("load_run", StoreFault::Fail, 1);
    let report = driver.sweep().await.unwrap();
    // THEN it goes on and repairs the other, and says what it could not do
    assert_eq!((report.runs_checked, report.transitions_applied, report.runs_failed), (2, 1, 1));
    let older = driver.load(&older.run_id).await.unwrap().unwrap().run;
    let newer = driver.load(&newer.run_id).await.unwrap().unwrap().run;
    assert_eq!((older.stages["a"].status, newer.stages["a"].status), (StageStatus::Submitted, StageStatus::Succeeded));
    // AND the next sweep repairs the one it missed
    assert_eq!(driver.sweep().await.unwrap().transitions_applied, 1);
}

#[tokio::test]
async fn cancel_stops_a_stage_job_that_was_submitted_but_never_recorded() {
    // GIVEN a stage whose job exists but whose submission was never recorded on the run
    let world = World::new().await;
    world.store.inject("record_claim_job", StoreFault::Fail, 1);
    let driver = world.driver();
    assert!(driver.start("diamond", "api", "key-10", RunInput::default(), 1_000).await.is_err());
    let run_id = super::runs::run_id("diamond", "key-10");
    let job = world.batch.jobs().remove(0);
    // WHEN the run is cancelled
    let CancelOutcome::Cancelled { terminated, .. } = driver.cancel(&run_id, 2_000).await.unwrap() else {
        panic!("the run was running")
    };
    // THEN that job is found by its name and terminated
    assert_eq!(terminated, std::slice::from_ref(&job.job_id));
    assert!(world.batch.jobs()[0].terminated_because.is_some());
}

#[tokio::test]
async fn a_retried_cancel_finishes_what_a_failed_terminate_left() {
    let world = World::new().await;
    let driver = world.driver();
    let (run, _) = driver.start("diamond", "api", "key-11", RunInput::default(), 1_000).await.unwrap();
    driver.advance(&run.run_id, "a", &world.event("a", "SUCCEEDED"), 2_000).await.unwrap();
    // GIVEN a cancel whose first TerminateJob fails: the run is CANCELLED, b and c still run
    world.batch.fail_terminations(1);
    assert!(driver.cancel(&run.run_id, 3_000).await.is_err());
    assert_eq!(driver.load(&run.run_id).await.unwrap().unwrap().run.status, RunStatus::Cancelled);
    // AND the stop that failed did not keep the other from being tried
    let stopped = world.batch.jobs().iter().filter(|j| j.terminated_because.is_some()).count();
    assert_eq!(stopped, 1, "the other job was stopped already");
    // WHEN the cancel is retried, THEN it terminates both
    let CancelOutcome::Cancelled { terminated, .. } = driver.cancel(&run.run_id, 4_000).await.unwrap() else {
        panic!("a cancelled run is cancelled again")
    };
    assert_eq!(terminated.len(), 2);
    let stopped = world.batch.jobs().iter().filter(|j| j.terminated_because.is_some()).count();
    assert_eq!(stopped, 2);
}

#[tokio::test]
async fn a_submission_that_finishes_after_the_run_was_cancelled_is_stopped() {
    // GIVEN a handler that read the run while a was still to be submitted
    let world = World::new().await;
    let driver = world.driver();
    let run = crate::model::run::Run::start(
        super::runs::run_id("diamond", "key-12"),
        &config().pipelines["diamond"],
        "api",
        RunInput::default(),
        1_000,
    );
    world.store.save_run(&run, None).await.unwrap();
    let stale = driver.load(&run.run_id).await.unwrap().unwrap();
    // AND had claimed a's key
    let request = super::runs::stage_job(&config(), &run, "a", &run.stages["a"].attempts[0]).unwrap();
    let claim = SubmissionClaim {
        idempotency_key: request.idempotency_key.clone(),
        job_name: request.job_name.clone(),
        queue: request.queue_arn.clone(),
        fingerprint: Some(super::submitter::fingerprint(&request)),
        state: ClaimState::Pending,
        job_id: None,
        claimed_at: 1_000,
        holder: Some(world.holder.clone()),
    };
    world.store.create_claim(&claim).await.unwrap();
    // WHEN the run is cancelled before that handler submits, and then it submits
    let other = invocation("canceller", 400_000);
    RunDriver { holder: &other, ..world.driver() }.cancel(&run.run_id, 2_000).await.unwrap();
    assert!(world.announced.completions.lock().unwrap().is_empty(), "a's holder may still submit");
    driver.drive(stale, 3_000).await.unwrap();
    // THEN the job it made is terminated at once, and recorded: the run waits for its end
    let jobs = world.batch.jobs();
    assert_eq!(jobs.len(), 1);
    assert!(jobs[0].terminated_because.as_deref().unwrap_or_default().contains("ended before the job was recorded"));
    let stored = driver.load(&run.run_id).await.unwrap().unwrap().run;
    assert_eq!(stored.stages["a"].attempts[0].job_id.as_deref(), Some(jobs[0].job_id.as_str()));
    assert!(world.announced.completions.lock().unwrap().is_empty(), "its job is still stopping");
    // AND once Batch reports that job's end, the run is announced, once
    driver.advance(&run.run_id, "a", &world.event("a", "FAILED"), 4_000).await.unwrap();
    assert_eq!(world.announced.completions.lock().unwrap().len(), 1);
}

/// A run of `pipeline` stored already CANCELLED (nothing started), its completion not sent.
async fn ended_run(world: &World, key: &str) -> crate::store::VersionedRun {
    let mut run = crate::model::run::Run::start(
        super::runs::run_id("diamond", key),
        &config().pipelines["diamond"],
        "api",
        RunInput::default(),
        1_000,
    );
    run.cancel(1_500).unwrap();
    world.store.save_run(&run, None).await.unwrap();
    world.driver().load(&run.run_id).await.unwrap().unwrap()
}

#[tokio::test]
async fn two_drivers_of_an_ended_run_announce_it_once() {
    // GIVEN two handlers that both read the run ended and not yet announced
    let world = World::new().await;
    let read = ended_run(&world, "key-13").await;
    let other = invocation("other", 301_000);
    // WHEN both drive it, one after the other, from their reads
    world.driver().drive(read.clone(), 2_000).await.unwrap();
    let second = RunDriver { holder: &other, ..world.driver() };
    second.drive(read, 2_001).await.unwrap();
    // THEN the completion went out once
    assert_eq!(world.announced.completions.lock().unwrap().len(), 1);
    let metrics = world.announced.metrics.lock().unwrap().clone();
    assert_eq!(metrics.iter().filter(|m| **m == "RunsCancelled").count(), 1);
}

#[tokio::test]
async fn an_announcement_claimed_by_a_holder_that_died_is_sent_after_its_deadline() {
    let world = World::new().await;
    let mut read = ended_run(&world, "key-14").await;
    // GIVEN a holder that claimed the announcement and died before sending it
    let mut claimed = read.run.clone();
    claimed.completion_claim = Some(crate::model::run::CompletionClaim { token: "dead".into(), deadline_ms: 5_000 });
    read.version = world.store.save_run(&claimed, Some(&read)).await.unwrap().unwrap();
    read.run = claimed;
    // WHEN another drives it before that deadline, THEN nothing is sent, and it is told to
    // come back (so its event is redelivered until the announcement is done)
    let early = world.driver().drive(read.clone(), 2_000).await;
    assert!(matches!(early, Err(crate::Error::InFlight(_))), "{early:?}");
    assert!(world.announced.completions.lock().unwrap().is_empty());
    // AND after the deadline (and the margin), it is sent, once
    world.clock.set(5_000 + TAKEOVER_MARGIN_MS + 1);
    let read = world.driver().load(&read.run.run_id).await.unwrap().unwrap();
    let after = world.driver().drive(read, 20_000).await.unwrap();
    assert_eq!(world.announced.completions.lock().unwrap().len(), 1);
    assert!(after.run.completion_sent && after.run.completion_claim.is_none());
}

#[tokio::test]
async fn a_failed_run_is_announced_when_its_failure_stage_has_ended_with_the_final_state() {
    let world = World::new().await;
    let driver = world.driver();
    let (run, _) = driver.start("fragile", "api", "key-15", RunInput::default(), 1_000).await.unwrap();
    driver.advance(&run.run_id, "first", &world.event("first", "FAILED"), 2_000).await.unwrap();
    assert!(world.announced.completions.lock().unwrap().is_empty(), "the failure stage is still to run");
    driver.advance(&run.run_id, "on-failure", &world.event("on-failure", "SUCCEEDED"), 3_000).await.unwrap();
    let completions = world.announced.completions.lock().unwrap().clone();
    assert_eq!(completions.len(), 1);
    assert_eq!(completions[0]["outcome"], "FAILED");
    assert_eq!(completions[0]["stages"]["on-failure"]["status"], "SUCCEEDED");
}

/// Three running runs of the diamond, each with its first stage's job ended in Batch
/// without its event.
async fn runs_with_lost_events(world: &World, keys: &[&str]) -> Vec<String> {
    let driver = world.driver();
    let mut ids = Vec::new();
    for (n, key) in keys.iter().enumerate() {
        let (run, _) = driver.start("diamond", "api", key, RunInput::default(), 1_000 + n as i64).await.unwrap();
        ids.push(run.run_id);
    }
    for job in world.batch.jobs() {
        world.batch.set_status(&job.job_id, "SUCCEEDED");
    }
    ids
}

#[tokio::test]
async fn a_sweep_out_of_time_keeps_its_place_and_the_next_goes_on_from_there() {
    // GIVEN three runs to repair, and a sweep whose time runs out after the first (every
    // reading of the clock moves it 10 s on; it stops 60 s before a deadline 75 s away)
    let mut world = World::new().await;
    runs_with_lost_events(&world, &["key-s1", "key-s2", "key-s3"]).await;
    world.holder = invocation("short", 1_000 + super::sweep::SWEEP_MARGIN_MS + 15_000);
    world.clock.set(1_000);
    world.clock.step_per_reading(10_000);
    // WHEN it sweeps
    let first = world.driver().sweep().await.unwrap();
    // THEN it stopped part-way, saying so, and kept its place
    assert!(!first.reached_end, "{first:?}");
    assert!((1..3).contains(&first.runs_checked), "{first:?}");
    assert!(world.store.sweep_cursor().await.unwrap().after.is_some());
    // WHEN the next sweep has all the time it needs
    world.clock.step_per_reading(0);
    world.holder = invocation("next", world.clock.now_ms() + 300_000);
    let second = world.driver().sweep().await.unwrap();
    // THEN it repaired the rest, each run once, and starts over next time
    assert!(second.reached_end);
    assert_eq!(first.runs_checked + second.runs_checked, 3, "{first:?} {second:?}");
    assert_eq!(first.transitions_applied + second.transitions_applied, 3);
    assert_eq!((world.jobs_of("b"), world.jobs_of("c")), (3, 3));
    assert_eq!(world.store.sweep_cursor().await.unwrap().after, None);
    assert_eq!(world.driver().sweep().await.unwrap().runs_checked, 3, "a new walk from the start");
}

#[tokio::test]
async fn the_sweep_repairs_a_run_of_a_pipeline_removed_from_the_configuration() {
    // GIVEN a running run of a pipeline a deploy has since removed (its job definitions stay)
    let mut world = World::new().await;
    let (run, _) = world.driver().start("fragile", "api", "key-r1", RunInput::default(), 1_000).await.unwrap();
    let mut deployed = config();
    deployed.pipelines.remove("fragile");
    world.redeploy(&deployed).await;
    // AND its first stage ended without its event
    world.batch.set_status(&world.job_of("first"), "SUCCEEDED");
    // WHEN the sweep runs
    let report = world.driver().sweep().await.unwrap();
    // THEN it found the run and submitted the next stage
    assert_eq!((report.runs_checked, report.transitions_applied), (1, 1));
    let stored = world.driver().load(&run.run_id).await.unwrap().unwrap().run;
    assert_eq!(stored.stages["second"].status, StageStatus::Submitted);
}

#[tokio::test]
async fn open_runs_of_an_earlier_release_are_adopted_until_no_earlier_function_can_write() {
    // GIVEN a running run and an ended, unannounced one, as an earlier release stored them
    let mut world = World::new().await;
    let pipeline = config().pipelines["diamond"].clone();
    let running = crate::model::run::Run::start("diamond-old1".into(), &pipeline, "api", RunInput::default(), 500);
    let mut ended = crate::model::run::Run::start("diamond-old2".into(), &pipeline, "api", RunInput::default(), 600);
    ended.cancel(700).unwrap();
    world.store.insert_legacy_run(&running, 1);
    world.store.insert_legacy_run(&ended, 2);
    assert!(world.store.open_run_ids().is_empty());
    // WHEN this release's first sweep runs
    let report = world.driver().sweep().await.unwrap();
    // THEN it adopts both and finishes them: the first stage submitted, the end announced
    assert_eq!((report.runs_adopted, report.runs_checked), (2, 2), "{report:?}");
    assert_eq!(world.jobs_of("a"), 1);
    assert_eq!(world.announced.completions.lock().unwrap().len(), 1);
    assert_eq!(world.store.open_run_ids(), ["diamond-old1"], "the announced run is done with");
    let cursor = world.store.sweep_cursor().await.unwrap();
    assert!(!cursor.adoption.done, "an earlier release may still be writing");
    // WHEN a sweep begins after the settling time
    world.clock.set(1_000 + super::sweep::ADOPTION_SETTLE_MS);
    world.holder = invocation("later", 1_000 + super::sweep::ADOPTION_SETTLE_MS + 300_000);
    let report = world.driver().sweep().await.unwrap();
    // THEN it adopts nothing twice, and adoption is over for good
    assert_eq!((report.runs_adopted, report.runs_checked), (0, 1), "{report:?}");
    assert!(world.store.sweep_cursor().await.unwrap().adoption.done);
}

#[tokio::test]
async fn the_sweep_takes_lines_of_runs_done_with_or_gone_off_the_list() {
    let world = World::new().await;
    let ids = runs_with_lost_events(&world, &["key-g1", "key-g2"]).await;
    world.store.expire_run(&ids[0]);
    let report = world.driver().sweep().await.unwrap();
    assert_eq!(report.runs_failed, 0);
    assert_eq!(world.store.open_run_ids(), [ids[1].clone()]);
}

#[tokio::test]
async fn a_failed_run_is_announced_once_its_other_branch_has_ended_and_not_before() {
    // GIVEN the diamond with b and c running, and b failing
    let world = World::new().await;
    let driver = world.driver();
    let (run, _) = driver.start("diamond", "api", "key-f1", RunInput::default(), 1_000).await.unwrap();
    driver.advance(&run.run_id, "a", &world.event("a", "SUCCEEDED"), 2_000).await.unwrap();
    driver.advance(&run.run_id, "c", &world.event("c", "RUNNING"), 2_500).await.unwrap();
    driver.advance(&run.run_id, "b", &world.event("b", "FAILED"), 3_000).await.unwrap();
    let stored = driver.load(&run.run_id).await.unwrap().unwrap().run;
    assert_eq!(stored.status, RunStatus::Failed);
    assert!(world.announced.completions.lock().unwrap().is_empty(), "c is still running");
    // WHEN c ends
    let applied = driver.advance(&run.run_id, "c", &world.event("c", "SUCCEEDED"), 4_000).await.unwrap();
    // THEN its end is recorded and the run announced, once, as FAILED
    assert_eq!(applied, Applied::Changed);
    let stored = driver.load(&run.run_id).await.unwrap().unwrap().run;
    assert_eq!((stored.status, stored.stages["c"].status), (RunStatus::Failed, StageStatus::Succeeded));
    assert_eq!(stored.stages["d"].status, StageStatus::Skipped);
    let completions = world.announced.completions.lock().unwrap().clone();
    assert_eq!(completions.len(), 1);
    assert_eq!(completions[0]["outcome"], "FAILED");
}

#[tokio::test]
async fn a_stage_whose_submission_was_never_recorded_has_its_job_stopped_when_the_run_fails() {
    // GIVEN the diamond after a: b submitted, and c's job made but its submitter dead
    // before recording it on the run
    let world = World::new().await;
    let driver = world.driver();
    let (run, _) = driver.start("diamond", "api", "key-f2", RunInput::default(), 1_000).await.unwrap();
    driver.advance(&run.run_id, "a", &world.event("a", "SUCCEEDED"), 2_000).await.unwrap();
    let c_job = world.job_of("c");
    let read = driver.load(&run.run_id).await.unwrap().unwrap();
    let mut unrecorded = read.run.clone();
    let c = unrecorded.stages.get_mut("c").unwrap();
    c.status = StageStatus::Submitting;
    c.attempts[0].status = StageStatus::Submitting;
    c.attempts[0].job_id = None;
    world.store.save_run(&unrecorded, Some(&read)).await.unwrap().unwrap();
    // WHEN b fails and so the run
    driver.advance(&run.run_id, "b", &world.event("b", "FAILED"), 3_000).await.unwrap();
    // THEN c was skipped and its job, found by name, stopped: no orphan runs on
    let stored = driver.load(&run.run_id).await.unwrap().unwrap().run;
    assert_eq!((stored.status, stored.stages["c"].status), (RunStatus::Failed, StageStatus::Skipped));
    let stopped = world.batch.jobs().into_iter().find(|j| j.job_id == c_job).unwrap();
    assert!(stopped.terminated_because.is_some(), "{stopped:?}");
}

#[tokio::test]
async fn a_claim_whose_holder_died_before_submitting_is_withdrawn_once_its_cancelled_run_can_end() {
    // GIVEN a run whose first stage was claimed by a holder that died before SubmitJob (the
    // claim took effect, its reply was lost)
    let world = World::new().await;
    world.store.inject("create_claim", StoreFault::LoseReply, 1);
    assert!(world.driver().start("diamond", "api", "key-w1", RunInput::default(), 1_000).await.is_err());
    let run_id = super::runs::run_id("diamond", "key-w1");
    let key = crate::model::pipeline::attempt_key(&run_id, "a", 1);
    // WHEN another invocation cancels the run while that holder could still be running
    let other = invocation("canceller", 400_000);
    let canceller = RunDriver { holder: &other, ..world.driver() };
    canceller.cancel(&run_id, 2_000).await.unwrap();
    // THEN the claim is left alone and the run not yet announced: its holder may still submit
    assert_eq!(world.store.claim(&key).await.unwrap().unwrap().state, ClaimState::Pending);
    assert!(world.announced.completions.lock().unwrap().is_empty());
    // AND once the holder's deadline has passed, the next drive (the sweep) withdraws the
    // claim, so no key is left PENDING, and announces the run
    world.clock.set(world.holder.deadline_ms + TAKEOVER_MARGIN_MS + 1);
    canceller.sweep().await.unwrap();
    assert_eq!(world.store.claim(&key).await.unwrap().unwrap().state, ClaimState::Withdrawn);
    assert_eq!(world.announced.completions.lock().unwrap().len(), 1);
    assert!(world.batch.jobs().is_empty());
    // AND a holder still driving from a read taken before the cancel submits nothing
    let stale = crate::model::run::Run::start(
        run_id.clone(),
        &config().pipelines["diamond"],
        "api",
        RunInput::default(),
        1_000,
    );
    let late = invocation("late", 900_000);
    let refused = world
        .submitter_for(&late)
        .submit(&super::runs::stage_job(&config(), &stale, "a", &stale.stages["a"].attempts[0]).unwrap())
        .await;
    assert!(matches!(refused, Err(SubmitError::Withdrawn(_))), "{refused:?}");
    assert!(world.batch.jobs().is_empty());
}

#[tokio::test]
async fn an_attempt_withdrawn_before_anyone_claimed_it_can_never_be_submitted() {
    // GIVEN a handler that read the run while a was still to be submitted, and a cancel
    // that went through before it claimed a
    let world = World::new().await;
    let run = crate::model::run::Run::start(
        super::runs::run_id("diamond", "key-w2"),
        &config().pipelines["diamond"],
        "api",
        RunInput::default(),
        1_000,
    );
    world.store.save_run(&run, None).await.unwrap();
    let stale = world.driver().load(&run.run_id).await.unwrap().unwrap();
    let other = invocation("canceller", 400_000);
    RunDriver { holder: &other, ..world.driver() }.cancel(&run.run_id, 2_000).await.unwrap();
    // THEN the run is announced at once (nobody held a claim), and a's key is withdrawn
    assert_eq!(world.announced.completions.lock().unwrap().len(), 1);
    let key = crate::model::pipeline::attempt_key(&run.run_id, "a", 1);
    assert_eq!(world.store.claim(&key).await.unwrap().unwrap().state, ClaimState::Withdrawn);
    // WHEN the stale handler drives, THEN it submits nothing
    world.driver().drive(stale, 3_000).await.unwrap();
    assert!(world.batch.jobs().is_empty());
}

#[test]
fn every_stage_is_told_its_runs_data_folder_when_the_stack_has_one() {
    let mut stack = config();
    let run = crate::model::run::Run::start(
        "diamond-1a2b".into(),
        &stack.pipelines["diamond"],
        "api",
        RunInput::default(),
        1_000,
    );
    let attempt = &run.stages["a"].attempts[0];
    let folder = |stack: &StackConfig| {
        super::runs::stage_job(stack, &run, "a", attempt).unwrap().environment.get("BATCHLINE_RUN_DATA").cloned()
    };
    assert_eq!(folder(&stack), None, "no bucket, no folder");
    stack.roles.names.input_bucket = Some("my-input".into());
    stack.roles.names.run_data_prefix = Some("runs/".into());
    assert_eq!(folder(&stack).as_deref(), Some("s3://my-input/runs/diamond-1a2b/"));
}

/// The configuration with the diamond changed by `change`.
fn with_diamond(change: impl FnOnce(&mut Pipeline)) -> StackConfig {
    let mut deployed = config();
    change(deployed.pipelines.get_mut("diamond").unwrap());
    deployed
}

#[tokio::test]
async fn a_stage_failing_for_good_stops_the_runs_other_jobs_unless_the_pipeline_lets_them_finish() {
    for policy in [OnStageFailure::Terminate, OnStageFailure::Finish] {
        // GIVEN the diamond after a, with c running
        let mut world = World::new().await;
        world.redeploy(&with_diamond(|p| p.on_stage_failure = policy)).await;
        let driver = world.driver();
        let (run, _) = driver.start("diamond", "api", "key-ff", RunInput::default(), 1_000).await.unwrap();
        driver.advance(&run.run_id, "a", &world.event("a", "SUCCEEDED"), 2_000).await.unwrap();
        driver.advance(&run.run_id, "c", &world.event("c", "RUNNING"), 2_500).await.unwrap();
        // WHEN b fails for good
        driver.advance(&run.run_id, "b", &world.event("b", "FAILED"), 3_000).await.unwrap();
        // THEN c's job is terminated, saying why — or, when the pipeline says Finish, left to end
        let c = world.batch.jobs().into_iter().find(|j| j.job_id == world.job_of("c")).unwrap();
        match policy {
            OnStageFailure::Terminate => {
                let reason = c.terminated_because.unwrap_or_default();
                assert!(reason.contains("stage b failed") && reason.contains("stopping its other jobs"), "{reason}");
            }
            OnStageFailure::Finish => assert_eq!(c.terminated_because, None),
        }
        // AND either way the run is announced once c has ended, not before
        assert!(world.announced.completions.lock().unwrap().is_empty(), "{policy:?}: c has not ended");
        let end = if policy == OnStageFailure::Terminate { "FAILED" } else { "SUCCEEDED" };
        driver.advance(&run.run_id, "c", &world.event("c", end), 4_000).await.unwrap();
        assert_eq!(world.announced.completions.lock().unwrap().len(), 1, "{policy:?}");
        assert_eq!(world.jobs_of("d"), 0, "{policy:?}: nothing new after the failure");
    }
}

#[tokio::test]
async fn a_run_past_its_max_run_seconds_fails_on_its_next_event_and_its_jobs_are_stopped() {
    // GIVEN a diamond run limited to a minute, whose branches would otherwise finish
    let mut world = World::new().await;
    world
        .redeploy(&with_diamond(|p| {
            p.max_run_seconds = Some(60);
            p.on_stage_failure = OnStageFailure::Finish;
        }))
        .await;
    let driver = world.driver();
    let (run, _) = driver.start("diamond", "api", "key-dl1", RunInput::default(), 1_000).await.unwrap();
    driver.advance(&run.run_id, "a", &world.event("a", "RUNNING"), 30_000).await.unwrap();
    assert_eq!(driver.load(&run.run_id).await.unwrap().unwrap().run.status, RunStatus::Running);
    // WHEN an event of the run — one that changes nothing else — arrives after the minute
    driver.advance(&run.run_id, "a", &world.event("a", "RUNNING"), 61_001 + 1).await.unwrap();
    // THEN the run failed saying why, and a's job is terminated
    let stored = driver.load(&run.run_id).await.unwrap().unwrap().run;
    assert_eq!(stored.status, RunStatus::Failed);
    assert_eq!(stored.reason.as_deref(), Some("the run took longer than its MaxRunSeconds (60 s)"));
    let a = world.batch.jobs().into_iter().find(|j| j.job_id == world.job_of("a")).unwrap();
    assert!(a.terminated_because.unwrap_or_default().contains("MaxRunSeconds"));
}

#[tokio::test]
async fn the_sweep_fails_a_run_past_its_deadline_when_no_event_comes_and_stops_its_job() {
    let mut world = World::new().await;
    world.redeploy(&with_diamond(|p| p.max_run_seconds = Some(60))).await;
    let (run, _) = world.driver().start("diamond", "api", "key-dl2", RunInput::default(), 1_000).await.unwrap();
    // WHEN the sweep runs after the deadline, nothing having happened
    world.clock.set(70_000);
    world.driver().sweep().await.unwrap();
    // THEN the run failed and a's job is terminated; the same sweep finds a ended in Batch
    // (its event may never come) and announces the run, once
    let stored = world.driver().load(&run.run_id).await.unwrap().unwrap().run;
    assert_eq!(stored.status, RunStatus::Failed, "{stored:?}");
    assert_eq!(stored.stages["a"].status, StageStatus::Failed, "{stored:?}");
    let a = world.batch.jobs().into_iter().find(|j| j.job_id == world.job_of("a")).unwrap();
    assert!(a.terminated_because.is_some());
    assert_eq!(world.announced.completions.lock().unwrap().len(), 1);
    world.driver().advance(&run.run_id, "a", &world.event("a", "FAILED"), 71_000).await.unwrap();
    assert_eq!(world.announced.completions.lock().unwrap().len(), 1, "the late event changes nothing");
}

#[tokio::test]
async fn a_stages_timeout_is_its_jobs_attempt_timeout() {
    let mut world = World::new().await;
    world.redeploy(&with_diamond(|p| p.stages.get_mut("a").unwrap().timeout_seconds = Some(600))).await;
    world.driver().start("diamond", "api", "key-to", RunInput::default(), 1_000).await.unwrap();
    assert_eq!(world.batch.jobs()[0].request.timeout_seconds, Some(600));
}

#[test]
fn a_single_job_out_of_memory_is_planned_one_size_up_with_what_it_ran_until_its_definitions_limit() {
    use super::resize::{plan_resize, Resize};
    let mut stack = config();
    stack.job_definitions.get_mut("default").unwrap().spec.max_resizes = 1;
    let event = |tags: Value| {
        JobStateChangeEvent::from_value(json!({
            "id": "e1", "detail-type": "Batch Job State Change", "source": "aws.batch",
            "detail": {"jobId": "job-1", "jobName": "nightly", "status": "FAILED", "jobQueue": "arn:queue",
                       "jobDefinition": "arn:aws:batch:us-east-1:123456789012:job-definition/unit-default:1",
                       "parameters": {"day": "monday"}, "tags": tags,
                       "container": {"exitCode": 137, "reason": crate::model::run::OUT_OF_MEMORY_REASON,
                                     "command": ["run", "Ref::day"],
                                     "environment": [{"name": "MODE", "value": "full"}, {"name": "AWS_BATCH_JOB_ID", "value": "job-1"}],
                                     "resourceRequirements": [{"type": "VCPU", "value": "0.25"}, {"type": "MEMORY", "value": "512"}]}}
        }))
        .unwrap()
    };
    let Resize::Submit(job) =
        plan_resize(&stack, &event(json!({"batchline:run": "job-1a2b", "batchline:pipeline": ""})))
    else {
        panic!("resized")
    };
    assert_eq!(job.idempotency_key, "resize:job-1:1");
    assert_eq!(job.size, Some(Size { vcpu: Quarters(1), memory_mib: 1024 }));
    assert_eq!(
        job.environment,
        BTreeMap::from([("MODE".to_owned(), "full".to_owned())]),
        "Batch's own variables left out"
    );
    assert_eq!(job.command.as_deref(), Some(&["run".to_owned(), "Ref::day".to_owned()][..]));
    assert_eq!((job.tags["batchline:original"].as_str(), job.tags["batchline:resize"].as_str()), ("job-1", "1"));
    assert!(job.validate().is_ok());
    // At the definition's limit: refused, saying why; a pipeline stage's job: not this path's
    let resized_once =
        event(json!({"batchline:run": "job-1a2b", "batchline:original": "job-0", "batchline:resize": "1"}));
    assert!(matches!(plan_resize(&stack, &resized_once), Resize::Refused(why) if why.contains("allows 1 resize(s)")));
    // A queue that is not the stack's (an event could name any): refused
    let mut elsewhere = event(json!({"batchline:run": "job-1a2b"}));
    elsewhere.detail.job_queue = Some("arn:aws:batch:us-east-1:123456789012:job-queue/someone-elses".into());
    assert!(matches!(plan_resize(&stack, &elsewhere), Resize::Refused(why) if why.contains("is not this stack's")));
    // An array's child is no single job: resubmitted alone it would lose its index
    let mut child = event(json!({"batchline:run": "job-1a2b"}));
    child.detail.array_properties =
        Some(crate::model::batch_event::ArrayProperties { size: None, index: Some(4), status_summary: None });
    assert_eq!(plan_resize(&stack, &child), Resize::NotApplicable);
    let stage = event(json!({"batchline:pipeline": "diamond", "batchline:run": "r"}));
    assert_eq!(plan_resize(&stack, &stage), Resize::NotApplicable);
    assert_eq!(plan_resize(&stack, &event(json!({}))), Resize::NotApplicable, "not a job Batchline submitted");
    // The tags Batch adds (the event's resourceArn, the definition's propagated ones) are not
    // copied; too many of the job's own are refused here, saying why, not by SubmitJob
    let mut tagged = json!({"batchline:run": "job-1a2b", "resourceArn": "arn:aws:batch:job/job-1",
                            "batchline:spec": "abc", "batchline:stack": "unit"});
    let Resize::Submit(job) = plan_resize(&stack, &event(tagged.clone())) else { panic!("resized") };
    let copied: Vec<&str> = job.tags.keys().map(String::as_str).collect();
    assert_eq!(copied, ["batchline:original", "batchline:resize", "batchline:run"]);
    for i in 0..46 {
        tagged[format!("t{i}")] = json!("v");
    }
    let refused = plan_resize(&stack, &event(tagged));
    assert!(matches!(&refused, Resize::Refused(why) if why.contains("tags")), "{refused:?}");
}

#[tokio::test]
async fn a_fail_fast_stop_that_failed_is_done_by_the_next_sweep() {
    // GIVEN the diamond after a, c running, and the TerminateJob of fail fast failing once
    let world = World::new().await;
    let driver = world.driver();
    let (run, _) = driver.start("diamond", "api", "key-ffs", RunInput::default(), 1_000).await.unwrap();
    driver.advance(&run.run_id, "a", &world.event("a", "SUCCEEDED"), 2_000).await.unwrap();
    driver.advance(&run.run_id, "c", &world.event("c", "RUNNING"), 2_500).await.unwrap();
    world.batch.fail_terminations(1);
    // WHEN b fails for good: the run is FAILED, but c's stop failed (the event is retried)
    assert!(driver.advance(&run.run_id, "b", &world.event("b", "FAILED"), 3_000).await.is_err());
    assert_eq!(driver.load(&run.run_id).await.unwrap().unwrap().run.status, RunStatus::Failed);
    let c = world.job_of("c");
    assert!(world.batch.jobs().iter().all(|j| j.terminated_because.is_none()), "nothing was stopped yet");
    // THEN the sweep stops c
    driver.sweep().await.unwrap();
    let stopped = world.batch.jobs().into_iter().find(|j| j.job_id == c).unwrap();
    assert!(stopped.terminated_because.unwrap_or_default().contains("stopping its other jobs"));
}

#[tokio::test]
async fn two_redrives_from_the_same_read_start_one_generation() {
    // GIVEN two handlers that both read the same ended and announced run
    let world = World::new().await;
    let ended = ended_run(&world, "key-rd1").await;
    let run_id = ended.run.run_id.clone();
    world.driver().drive(ended, 1_600).await.unwrap();
    let read = world.driver().load(&run_id).await.unwrap().unwrap();
    assert!(read.run.completion_sent);
    let other = invocation("other", 301_000);
    let second = RunDriver { holder: &other, ..world.driver() };
    let no_sizes = BTreeMap::new();
    // WHEN both redrive it with the same key, the second from its stale read
    let first = world.driver().redrive(read.clone(), "redrive-1", &no_sizes, 2_000).await.unwrap();
    let again = second.redrive(read.clone(), "redrive-1", &no_sizes, 2_001).await.unwrap();
    // THEN both answer the same generation, started once: one RunsRedriven, one job for a
    let generation = |outcome: &super::runs::RedriveOutcome| match outcome {
        super::runs::RedriveOutcome::Redriven { redriven, .. } => (redriven.generation, redriven.duplicate),
        super::runs::RedriveOutcome::Refused(why) => panic!("refused: {why}"),
        super::runs::RedriveOutcome::NoSuchRun => panic!("no such run"),
    };
    assert_eq!(generation(&first), (1, false));
    assert_eq!(generation(&again), (1, true));
    assert_eq!(world.jobs_of("a"), 1);
    let metrics = world.announced.metrics.lock().unwrap().clone();
    assert_eq!(metrics.iter().filter(|m| **m == "RunsRedriven").count(), 1);
    // AND a redrive with another key from that stale read finds the run running again
    let refused = second.redrive(read, "redrive-2", &no_sizes, 2_002).await.unwrap();
    assert!(
        matches!(refused, super::runs::RedriveOutcome::Refused(crate::model::run::RedriveRefused::StillRunning(_))),
        "a second generation before the first ended"
    );
    assert_eq!(world.jobs_of("a"), 1);
}

/// The end Batch reports for a stage's job, with the times it ran (epoch ms).
fn ended(world: &World, stage: &str, status: &str, started_at: i64, stopped_at: i64) -> JobStateChangeEvent {
    let mut event = world.event(stage, status);
    event.detail.started_at = Some(started_at);
    event.detail.stopped_at = Some(stopped_at);
    event
}

#[tokio::test]
async fn a_cancelled_run_is_announced_and_redriven_only_once_its_jobs_ended_and_their_time_counts() {
    // GIVEN a run whose b and c run an hour before a cancel stops them
    let world = World::new().await;
    let driver = world.driver();
    let (run, _) = driver.start("diamond", "api", "key-cr1", RunInput::default(), 1_000).await.unwrap();
    driver.advance(&run.run_id, "a", &world.event("a", "SUCCEEDED"), 2_000).await.unwrap();
    driver.cancel(&run.run_id, 3_600_000).await.unwrap();
    // WHEN it is redriven while its jobs are still stopping, THEN that is refused
    let read = driver.load(&run.run_id).await.unwrap().unwrap();
    let early = driver.redrive(read, "redrive-1", &BTreeMap::new(), 3_600_001).await.unwrap();
    assert!(
        matches!(early, super::runs::RedriveOutcome::Refused(crate::model::run::RedriveRefused::StillEnding(_))),
        "{early:?}"
    );
    // WHEN Batch reports both stopped jobs' ends
    for stage in ["b", "c"] {
        driver.advance(&run.run_id, stage, &ended(&world, stage, "FAILED", 2_000, 3_602_000), 3_603_000).await.unwrap();
    }
    // THEN the run is announced with the hour both ran, and can be redriven
    let completions = world.announced.completions.lock().unwrap().clone();
    assert_eq!(completions.len(), 1);
    assert!(completions[0]["costUsd"].as_f64().unwrap_or_default() > 0.01, "{}", completions[0]);
    assert!(completions[0]["stages"]["c"]["costUsd"].as_f64().unwrap_or_default() > 0.0);
    let read = driver.load(&run.run_id).await.unwrap().unwrap();
    let redriven = driver.redrive(read, "redrive-1", &BTreeMap::new(), 3_604_000).await.unwrap();
    assert!(matches!(redriven, super::runs::RedriveOutcome::Redriven { .. }), "{redriven:?}");
}

#[tokio::test]
async fn a_stage_that_can_never_be_submitted_keeps_its_sibling_from_being_submitted() {
    // GIVEN a run whose a succeeded, and Batch refusing the next job for good
    let world = World::new().await;
    let driver = world.driver();
    let (run, _) = driver.start("diamond", "api", "key-sib", RunInput::default(), 1_000).await.unwrap();
    world.batch.inject([SubmitFault::Refuse("ClientException".into())]);
    // WHEN a's end plans b and c, and b is refused
    driver.advance(&run.run_id, "a", &world.event("a", "SUCCEEDED"), 2_000).await.unwrap();
    // THEN the run failed and c was never submitted: nothing new after a run failed
    let stored = driver.load(&run.run_id).await.unwrap().unwrap().run;
    assert_eq!(stored.status, RunStatus::Failed, "{stored:?}");
    assert_eq!((world.jobs_of("b"), world.jobs_of("c")), (0, 0));
    assert_eq!(stored.stages["c"].status, StageStatus::Skipped);
}

#[tokio::test]
async fn a_last_end_delivered_after_the_deadline_is_judged_by_when_the_job_ended() {
    // GIVEN a one-hour run whose last stage ended at 50 minutes
    let mut world = World::new().await;
    world.redeploy(&with_diamond(|p| p.max_run_seconds = Some(3_600))).await;
    let driver = world.driver();
    let (run, _) = driver.start("diamond", "api", "key-late", RunInput::default(), 0).await.unwrap();
    driver.advance(&run.run_id, "a", &world.event("a", "SUCCEEDED"), 1_000).await.unwrap();
    driver.advance(&run.run_id, "b", &world.event("b", "SUCCEEDED"), 2_000).await.unwrap();
    driver.advance(&run.run_id, "c", &world.event("c", "SUCCEEDED"), 3_000).await.unwrap();
    // WHEN its event is delivered at 90 minutes (a redelivery after the visibility timeout)
    let late = ended(&world, "d", "SUCCEEDED", 4_000, 3_000_000);
    driver.advance(&run.run_id, "d", &late, 5_400_000).await.unwrap();
    // THEN the run succeeded, ending when its job did
    let stored = driver.load(&run.run_id).await.unwrap().unwrap().run;
    assert_eq!((stored.status, stored.ended_at), (RunStatus::Succeeded, Some(3_000_000)), "{stored:?}");
}

#[tokio::test]
async fn a_last_end_the_sweep_finds_after_the_deadline_is_judged_by_when_the_job_ended() {
    // GIVEN a one-hour run whose last stage ended in Batch at 50 minutes, its event lost
    let mut world = World::new().await;
    world.redeploy(&with_diamond(|p| p.max_run_seconds = Some(3_600))).await;
    let driver = world.driver();
    let (run, _) = driver.start("diamond", "api", "key-late2", RunInput::default(), 0).await.unwrap();
    driver.advance(&run.run_id, "a", &world.event("a", "SUCCEEDED"), 1_000).await.unwrap();
    driver.advance(&run.run_id, "b", &world.event("b", "SUCCEEDED"), 2_000).await.unwrap();
    driver.advance(&run.run_id, "c", &world.event("c", "SUCCEEDED"), 3_000).await.unwrap();
    world.batch.set_status(&world.job_of("d"), "SUCCEEDED");
    // WHEN the sweep finds it at 90 minutes
    world.clock.set(5_400_000);
    let sweeper = invocation("sweeper", 6_000_000);
    RunDriver { holder: &sweeper, ..world.driver() }.sweep().await.unwrap();
    // THEN the run succeeded
    let stored = driver.load(&run.run_id).await.unwrap().unwrap().run;
    assert_eq!(stored.status, RunStatus::Succeeded, "{stored:?}");
}

#[tokio::test]
async fn a_failed_run_whose_jobs_go_on_is_stopped_by_its_deadline_or_by_a_user() {
    for by_user in [false, true] {
        // GIVEN a run that lets its jobs finish after a failure; b failed while c goes on
        let mut world = World::new().await;
        world
            .redeploy(&with_diamond(|p| {
                p.on_stage_failure = OnStageFailure::Finish;
                p.max_run_seconds = Some(3_600);
            }))
            .await;
        let driver = world.driver();
        let key = format!("key-end-{by_user}");
        let (run, _) = driver.start("diamond", "api", &key, RunInput::default(), 0).await.unwrap();
        driver.advance(&run.run_id, "a", &world.event("a", "SUCCEEDED"), 1_000).await.unwrap();
        driver.advance(&run.run_id, "b", &world.event("b", "FAILED"), 2_000).await.unwrap();
        let c = world.job_of("c");
        assert!(world.batch.jobs().iter().all(|j| j.terminated_because.is_none()), "c is left to finish");
        if by_user {
            // WHEN a user stops the failed run, THEN c is stopped and the run stays FAILED
            let outcome = driver.cancel(&run.run_id, 10_000).await.unwrap();
            let CancelOutcome::Cancelled { run: stopped, terminated } = outcome else { panic!("{outcome:?}") };
            assert_eq!((stopped.status, terminated), (RunStatus::Failed, vec![c.clone()]));
        } else {
            // WHEN c is still going past the deadline, THEN the sweep stops it
            world.clock.set(3_700_000);
            let sweeper = invocation("sweeper", 4_000_000);
            RunDriver { holder: &sweeper, ..world.driver() }.sweep().await.unwrap();
        }
        let job = world.batch.jobs().into_iter().find(|j| j.job_id == c).unwrap();
        assert!(job.terminated_because.is_some(), "by user: {by_user}");
        // AND once c's end is reported the run is announced
        driver.advance(&run.run_id, "c", &world.event("c", "FAILED"), 3_800_000).await.unwrap();
        assert_eq!(world.announced.completions.lock().unwrap().len(), 1, "by user: {by_user}");
    }
}

#[tokio::test]
async fn each_generation_of_a_redriven_run_publishes_the_cost_it_added() {
    // GIVEN a run whose b failed after an hour (c and d never ran)
    let world = World::new().await;
    let driver = world.driver();
    let (run, _) = driver.start("diamond", "api", "key-cost", RunInput::default(), 0).await.unwrap();
    driver.advance(&run.run_id, "a", &ended(&world, "a", "SUCCEEDED", 0, 60_000), 60_000).await.unwrap();
    driver.advance(&run.run_id, "c", &ended(&world, "c", "SUCCEEDED", 60_000, 120_000), 120_000).await.unwrap();
    driver.advance(&run.run_id, "b", &ended(&world, "b", "FAILED", 60_000, 3_660_000), 3_660_000).await.unwrap();
    let first = driver.load(&run.run_id).await.unwrap().unwrap();
    // WHEN it is redriven and its second generation succeeds
    driver.redrive(first, "redrive-1", &BTreeMap::new(), 3_700_000).await.unwrap();
    driver.advance(&run.run_id, "b", &ended(&world, "b", "SUCCEEDED", 3_700_000, 3_760_000), 3_760_000).await.unwrap();
    driver.advance(&run.run_id, "d", &ended(&world, "d", "SUCCEEDED", 3_760_000, 3_820_000), 3_820_000).await.unwrap();
    // THEN each generation's RunCost is what it added: together, the run's cost, once
    let costs: Vec<f64> =
        world.announced.values.lock().unwrap().iter().filter(|(name, _)| *name == "RunCost").map(|(_, v)| *v).collect();
    let completions = world.announced.completions.lock().unwrap().clone();
    let total = completions.last().unwrap()["costUsd"].as_f64().unwrap();
    assert_eq!(costs.len(), 2, "{costs:?}");
    assert!((costs[0] - completions[0]["costUsd"].as_f64().unwrap()).abs() < 1e-12, "{costs:?}");
    assert!((costs[0] + costs[1] - total).abs() < 1e-12, "{costs:?} vs {total}");
    assert!(costs[1] < costs[0], "the second generation ran two minutes, the first an hour and more: {costs:?}");
}

/// The queue's RUNNABLE jobs as the watch lists them (from the in-memory Batch), and a
/// queue whose state is not known (no diagnosis).
struct ListedRunnable<'a>(&'a MemoryBatch);

#[async_trait]
impl QueueInspector for ListedRunnable<'_> {
    async fn runnable_jobs(&self, _queue: &str) -> Result<Vec<(String, i64)>, crate::Error> {
        let jobs = self.0.jobs().into_iter().filter(|j| j.status == "RUNNABLE");
        Ok(jobs.map(|j| (j.job_id, j.created_at.unwrap_or_default())).collect())
    }
    async fn queue_state(&self, _queue: &str) -> Result<Option<crate::model::stuck::QueueState>, crate::Error> {
        Ok(None)
    }
}

struct NoQueueMetrics;

#[async_trait]
impl QueueMetrics for NoQueueMetrics {
    async fn queue_metrics(&self, _queues: &[crate::model::stuck::QueueReport]) {}
}

#[tokio::test]
async fn a_job_that_waited_for_its_dependency_is_stuck_only_counting_from_when_that_ended() {
    // GIVEN a queue that cancels every job RUNNABLE over 10 minutes, and two jobs created two
    // hours ago: one that depends on a job that ended a minute ago, one with no dependency
    let world = World::new().await;
    let mut stack = config();
    let queue = &mut stack.job_queues.get_mut("default").unwrap().spec;
    (queue.stuck_after_seconds, queue.cancel_stuck_jobs) = (600, CancelStuckJobs::Always);
    let hours_ago = 0;
    let now = 2 * 3_600_000;
    let dependency = world.batch.submit_job(&request("dep")).await.unwrap();
    world.batch.set_status(&dependency, "SUCCEEDED");
    world.batch.set_times(&dependency, Some(hours_ago), Some(now - 60_000));
    let dependent =
        world.batch.submit_job(&JobRequest { depends_on: vec![dependency.clone()], ..request("after") }).await.unwrap();
    let alone = world.batch.submit_job(&request("alone")).await.unwrap();
    for job in [&dependent, &alone] {
        world.batch.set_status(job, "RUNNABLE");
        world.batch.set_times(job, Some(hours_ago), None);
    }
    // WHEN the watch runs
    world.clock.set(now);
    let watch = super::stuck::StuckJobWatch {
        inspector: &ListedRunnable(&world.batch),
        batch: &world.batch,
        metrics: &NoQueueMetrics,
        clock: &world.clock,
    };
    let reports = watch.watch(&stack, now + 60_000).await;
    // THEN only the job that has waited two hours in RUNNABLE is stuck and cancelled
    assert_eq!((reports[0].runnable, reports[0].stuck, reports[0].cancelled), (2, 1, 1), "{reports:?}");
    assert_eq!(reports[0].oldest_runnable_seconds, 7_200);
    let cancelled: Vec<String> =
        world.batch.jobs().into_iter().filter(|j| j.terminated_because.is_some()).map(|j| j.job_id).collect();
    assert_eq!(cancelled, [alone]);
}

#[tokio::test]
async fn the_stuck_job_watch_starts_nothing_once_its_share_of_the_invocation_is_spent() {
    // GIVEN a queue with a job stuck two hours, and a watch whose time is up
    let world = World::new().await;
    let mut stack = config();
    stack.job_queues.get_mut("default").unwrap().spec.cancel_stuck_jobs = CancelStuckJobs::Always;
    let stuck = world.batch.submit_job(&request("stuck")).await.unwrap();
    world.batch.set_status(&stuck, "RUNNABLE");
    world.batch.set_times(&stuck, Some(0), None);
    world.clock.set(7_200_000);
    let watch = super::stuck::StuckJobWatch {
        inspector: &ListedRunnable(&world.batch),
        batch: &world.batch,
        metrics: &NoQueueMetrics,
        clock: &world.clock,
    };
    // WHEN it is asked to stop at once, THEN it watches nothing (the sweep gets the time)
    assert!(watch.watch(&stack, 7_200_000).await.is_empty());
    assert!(world.batch.jobs()[0].terminated_because.is_none());
    // AND with time left it cancels the stuck job
    assert_eq!(watch.watch(&stack, 7_260_000).await[0].cancelled, 1);
}

/// The configuration with the pipeline `mapped`: `files`, a map over a prefix tolerating
/// one failed child, then `report`; with an input bucket and a run-data folder.
fn with_map() -> StackConfig {
    use crate::model::map::{MapSource, MapSpec, Tolerance};
    let mut deployed = config();
    deployed.roles.names.input_bucket = Some("in".into());
    deployed.roles.names.run_data_prefix = Some("runs/".into());
    let mut files = stage(&[]);
    files.map = Some(MapSpec {
        source: MapSource::Prefix { uri: "s3://in/photos/".into(), suffix: String::new() },
        items_per_child: 1,
        tolerated_failures: Tolerance::Count(1),
        max_concurrency: None,
    });
    let mapped = Pipeline {
        name: "mapped".into(),
        stages: BTreeMap::from([("files".to_owned(), files), ("report".to_owned(), stage(&["files"]))]),
        on_failure: None,
        on_stage_failure: OnStageFailure::Terminate,
        max_run_seconds: None,
        max_run_cost_usd: None,
    };
    deployed.pipelines.insert("mapped".into(), mapped);
    deployed
}

/// The end of an array parent, its children counted as Batch counts them.
fn array_ended(job_id: &str, size: usize, failed: usize) -> JobStateChangeEvent {
    let status = if failed == 0 { "SUCCEEDED" } else { "FAILED" };
    JobStateChangeEvent::from_value(json!({
        "id": format!("{job_id}-{status}"), "detail-type": "Batch Job State Change", "source": "aws.batch",
        "detail": {"jobId": job_id, "status": status, "stoppedAt": 3_000,
                   "arrayProperties": {"size": size, "statusSummary": {"SUCCEEDED": size - failed, "FAILED": failed}}}
    }))
    .unwrap()
}

#[tokio::test]
async fn a_map_stage_asks_for_its_items_submits_each_array_once_and_plans_the_next_stage_after_its_close() {
    use crate::model::map::{MapAction, MapWork};
    use crate::model::run::map::{ArrayChecked, FailedChild, MapClosed, MapExpanded};
    let mut world = World::new().await;
    world.redeploy(&with_map()).await;
    let driver = world.driver();
    let (run, _) = driver.start("mapped", "api", "key-map", RunInput::default(), 1_000).await.unwrap();
    let work = |action| MapWork {
        stack: "unit".into(),
        action,
        run_id: run.run_id.clone(),
        stage: "files".into(),
        attempt: 1,
        resume: None,
        array: None,
    };
    // THEN the map worker is asked for its items, and nothing is submitted yet
    assert_eq!(*world.announced.map_work.lock().unwrap(), [work(MapAction::Expand)]);
    assert!(world.batch.jobs().is_empty());

    // WHEN the worker answers 12,000 children, and its answer is delivered twice
    let folder = format!("s3://in/runs/{}/files/_batchline/a1-t0k3n/", run.run_id);
    let expanded = MapExpanded { stage: "files", attempt: 1, children: Ok(12_000), lists: folder.clone() };
    assert!(driver.answer_map_work(&run.run_id, &expanded, 2_000).await.unwrap());
    assert!(!driver.answer_map_work(&run.run_id, &expanded, 2_000).await.unwrap(), "answered once");
    // THEN two arrays are submitted, once each, each told its item list and the map's size
    let jobs = world.batch.jobs();
    let shape: Vec<(Option<u32>, &str, &str, &str)> = jobs
        .iter()
        .map(|j| {
            let env = &j.request.environment;
            (
                j.request.array_size,
                j.request.idempotency_key.as_str(),
                env["BATCHLINE_ITEMS"].as_str(),
                env["BATCHLINE_MAP_SIZE"].as_str(),
            )
        })
        .collect();
    let folder = folder.trim_end_matches('/');
    assert_eq!(
        shape,
        [
            (
                Some(10_000),
                format!("run:{}:files:1:array:0", run.run_id).as_str(),
                format!("{folder}/array-0.jsonl").as_str(),
                "12000"
            ),
            (
                Some(2_000),
                format!("run:{}:files:1:array:1", run.run_id).as_str(),
                format!("{folder}/array-1.jsonl").as_str(),
                "12000"
            ),
        ]
    );

    // WHEN both parents end, the second with one failed child (a duplicate of its end too)
    let (first, second) = (jobs[0].job_id.clone(), jobs[1].job_id.clone());
    driver.advance(&run.run_id, "files", &array_ended(&first, 10_000, 0), 3_000).await.unwrap();
    assert_eq!(world.announced.map_work.lock().unwrap().len(), 1, "not closed while an array goes on");
    for _ in 0..2 {
        driver.advance(&run.run_id, "files", &array_ended(&second, 2_000, 1), 3_500).await.unwrap();
    }
    // THEN the worker is asked which failed child ran out of memory (the stage may resize)
    let check = MapWork { array: Some(1), ..work(MapAction::Check) };
    assert_eq!(world.announced.map_work.lock().unwrap().last(), Some(&check));
    // WHEN none did, THEN it is asked to close the map (again on a duplicate: it closes once)
    let checked = ArrayChecked { stage: "files", attempt: 1, array: 1, out_of_memory: 0, list: String::new() };
    assert!(driver.answer_map_work(&run.run_id, &checked, 3_600).await.unwrap());
    assert!(!driver.answer_map_work(&run.run_id, &checked, 3_600).await.unwrap());
    assert_eq!(world.announced.map_work.lock().unwrap().last(), Some(&work(MapAction::Close)));
    assert_eq!(world.jobs_of("report"), 0, "the stage after waits for the close");

    // WHEN it answers, twice
    let failed =
        FailedChild { index: 10_500, items: vec![json!("s3://in/photos/x.jpg")], exit_code: Some(1), reason: None };
    let closed =
        MapClosed { stage: "files", attempt: 1, failed_items: vec![failed], failed_items_uri: None, billed: vec![] };
    assert!(driver.answer_map_work(&run.run_id, &closed, 4_000).await.unwrap());
    assert!(!driver.answer_map_work(&run.run_id, &closed, 4_000).await.unwrap());
    // THEN the stage after it is submitted once: one failure is within the tolerance
    assert_eq!(world.jobs_of("report"), 1);
    let stored = world.store.load_run(&run.run_id).await.unwrap().unwrap().run;
    assert_eq!(stored.stages["files"].status, crate::model::run::StageStatus::Succeeded);

    // AND once the run ends, its completion event carries the map's counts
    driver.advance(&run.run_id, "report", &world.event("report", "SUCCEEDED"), 5_000).await.unwrap();
    let completions = world.announced.completions.lock().unwrap().clone();
    assert_eq!(completions.len(), 1);
    assert_eq!(
        completions[0]["stages"]["files"]["map"],
        json!({"children": 12_000, "succeeded": 11_999, "failed": 1, "failedItemsUri": null})
    );
}
