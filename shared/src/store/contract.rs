//! The store contract: what every implementation must do, conditional failures and version conflicts included.
//!
//! One suite, run against [`super::MemoryStore`] (unit tests) and [`super::DynamoStore`]
//! on the emulator (integration tests), so the in-memory store that the service tests
//! rely on behaves as the table does. Each check panics with what differed.

use std::collections::BTreeMap;

use super::{
    keys, Adoption, ClaimState, EventClaim, EventClaimFound, EventState, Holder, KeyGeneration, OpenRun, Page, Store,
    SubmissionClaim, SweepCursor, VersionedRun, EVENT_CLAIMS_AT_ONCE,
};
use crate::model::fargate::Size;
use crate::model::pipeline::{Pipeline, Stage};
use crate::model::run::{Run, RunInput, RunStatus};
use crate::model::stack::StackConfig;

/// Runs every check on a store of its own (the open-run list is one per table); `unique`
/// names the keys; `config` is any valid configuration (the suite publishes and removes it).
pub async fn check_all(store: &dyn Store, unique: &str, config: &StackConfig) {
    claims(store, unique).await;
    key_generations(store, unique).await;
    events(store, unique).await;
    runs(store, unique).await;
    configuration(store, config).await;
}

fn holder(token: &str, deadline_ms: i64) -> Holder {
    Holder { token: token.into(), deadline_ms }
}

pub async fn claims(store: &dyn Store, unique: &str) {
    let key = format!("{unique}:claim");
    let claim = SubmissionClaim {
        idempotency_key: key.clone(),
        job_name: "job-1".into(),
        queue: "arn:queue".into(),
        fingerprint: Some("f1".into()),
        state: ClaimState::Pending,
        job_id: None,
        claimed_at: 1_000,
        holder: Some(holder("a", 301_000)),
    };
    assert_eq!(store.claim(&key).await.unwrap(), None, "no claim before the first write");
    assert!(store.create_claim(&claim).await.unwrap(), "the first claim is written");
    let second = SubmissionClaim { fingerprint: Some("f2".into()), claimed_at: 2_000, ..claim.clone() };
    assert!(!store.create_claim(&second).await.unwrap(), "a second claim of the key is refused");
    assert_eq!(store.claim(&key).await.unwrap(), Some(claim.clone()), "the first claim stays as written");

    let b = holder("b", 700_000);
    assert!(!store.take_over_claim(&key, 999, &b, 500_000).await.unwrap(), "take-over names the claim time it read");
    assert!(!store.record_claim_job(&key, "job-x", Some("b")).await.unwrap(), "only the holder records");
    assert!(store.take_over_claim(&key, 1_000, &b, 500_000).await.unwrap(), "take-over of the claim as read");
    assert!(!store.take_over_claim(&key, 1_000, &holder("c", 0), 600_000).await.unwrap(), "a second take-over fails");
    let taken = store.claim(&key).await.unwrap().unwrap();
    assert_eq!((taken.claimed_at, taken.holder), (500_000, Some(b.clone())));
    assert!(!store.record_claim_job(&key, "job-a", Some("a")).await.unwrap(), "the old holder records nothing");

    assert!(store.record_claim_job(&key, "job-id-1", Some("b")).await.unwrap());
    let recorded = store.claim(&key).await.unwrap().unwrap();
    assert_eq!((recorded.state, recorded.job_id.as_deref()), (ClaimState::Submitted, Some("job-id-1")));
    assert_eq!(recorded.fingerprint.as_deref(), Some("f1"), "recording keeps the fingerprint");
    assert!(!store.record_claim_job(&key, "job-id-2", None).await.unwrap(), "a submitted claim is recorded once");
    assert!(!store.take_over_claim(&key, 500_000, &holder("d", 0), 800_000).await.unwrap(), "never taken over");

    let other = format!("{unique}:unheld");
    let legacy = SubmissionClaim { idempotency_key: other.clone(), fingerprint: None, holder: None, ..claim.clone() };
    assert!(store.create_claim(&legacy).await.unwrap());
    assert_eq!(store.claim(&other).await.unwrap(), Some(legacy), "a claim without holder or fingerprint reads back");
    assert!(store.record_claim_job(&other, "job-found", None).await.unwrap(), "anyone records a found job");
    assert!(!store.record_claim_job(&format!("{unique}:missing"), "j", None).await.unwrap(), "no claim, no record");
    assert!(!store.withdraw_claim(&other, 1_000).await.unwrap(), "a submitted claim is never withdrawn");

    let given_up = format!("{unique}:withdrawn");
    let pending = SubmissionClaim { idempotency_key: given_up.clone(), ..claim.clone() };
    assert!(store.create_claim(&pending).await.unwrap());
    assert!(!store.withdraw_claim(&given_up, 999).await.unwrap(), "withdrawal names the claim time it read");
    assert!(store.withdraw_claim(&given_up, 1_000).await.unwrap(), "a pending claim as read is withdrawn");
    assert_eq!(store.claim(&given_up).await.unwrap().map(|c| c.state), Some(ClaimState::Withdrawn));
    assert!(!store.take_over_claim(&given_up, 1_000, &b, 900_000).await.unwrap(), "a withdrawn claim is never taken");
    assert!(!store.record_claim_job(&given_up, "job-late", None).await.unwrap(), "nor recorded");
    let tombstone = SubmissionClaim {
        idempotency_key: format!("{unique}:tombstone"),
        state: ClaimState::Withdrawn,
        ..claim.clone()
    };
    assert!(store.create_claim(&tombstone).await.unwrap());
    assert_eq!(
        store.claim(&tombstone.idempotency_key).await.unwrap(),
        Some(tombstone),
        "a claim written withdrawn reads back"
    );
}

/// A key's live generation moves only from the generation its writer read.
pub async fn key_generations(store: &dyn Store, unique: &str) {
    let base = format!("{unique}:key");
    let first = KeyGeneration { generation: 1, first_use_ms: 1_000 };
    let second = KeyGeneration { generation: 2, first_use_ms: 90_000_000 };
    assert_eq!(store.key_generation(&base).await.unwrap(), None);
    assert!(store.set_key_generation(&base, None, &first).await.unwrap());
    assert!(!store.set_key_generation(&base, None, &second).await.unwrap(), "it has one already");
    assert_eq!(store.key_generation(&base).await.unwrap(), Some(first));
    assert!(store.set_key_generation(&base, Some(&first), &second).await.unwrap());
    assert!(!store.set_key_generation(&base, Some(&first), &second).await.unwrap(), "moved on already");
    assert_eq!(store.key_generation(&base).await.unwrap(), Some(second));
}

pub async fn events(store: &dyn Store, unique: &str) {
    let id = format!("{unique}-event");
    let state = |claim: Option<EventClaim>| claim.map(|c| (c.state, c.token));
    let (a, b, c) = (holder("a", 10_000), holder("b", 20_000), holder("c", 90_000));
    assert_eq!(store.event_claim(&id).await.unwrap(), None);
    assert!(store.claim_event(&id, &a, 1_000, 0, 0).await.unwrap(), "the first claim wins");
    assert!(!store.claim_event(&id, &b, 2_000, 9_999, 0).await.unwrap(), "not before the holder's deadline");
    assert_eq!(state(store.event_claim(&id).await.unwrap()), Some((EventState::InProgress, "a".into())));

    store.release_event(&id, "b").await.unwrap();
    assert_eq!(state(store.event_claim(&id).await.unwrap()), Some((EventState::InProgress, "a".into())));
    store.release_event(&id, "a").await.unwrap();
    assert_eq!(store.event_claim(&id).await.unwrap(), None, "the holder's release frees the event");

    assert!(store.claim_event(&id, &b, 3_000, 0, 0).await.unwrap(), "a released event is claimed again");
    assert!(store.claim_event(&id, &c, 30_000, 20_001, 0).await.unwrap(), "taken over after the holder's deadline");
    store.release_event(&id, "b").await.unwrap();
    assert_eq!(state(store.event_claim(&id).await.unwrap()), Some((EventState::InProgress, "c".into())));

    store.mark_events_done(&[id.as_str()], "c", 40_000).await.unwrap();
    assert_eq!(store.event_claim(&id).await.unwrap().map(|c| c.state), Some(EventState::Done));
    let late = holder("d", i64::MAX);
    assert!(!store.claim_event(&id, &late, 99_000_000, i64::MAX, i64::MAX).await.unwrap(), "done is never claimed");
    store.release_event(&id, "c").await.unwrap();
    assert_eq!(store.event_claim(&id).await.unwrap().map(|c| c.state), Some(EventState::Done), "nor released");

    let many: Vec<String> = (0..30).map(|i| format!("{unique}-many-{i}")).collect();
    let refs: Vec<&str> = many.iter().map(String::as_str).collect();
    store.mark_events_done(&refs, "c", 10_000).await.unwrap();
    assert_eq!(store.event_claim(&many[29]).await.unwrap().map(|c| c.state), Some(EventState::Done), "more than 25");
    batch_claims(store, unique).await;
}

/// Claiming a hundred events at once: each as claiming it alone would, whatever holds the others.
async fn batch_claims(store: &dyn Store, unique: &str) {
    let ids: Vec<String> = (0..EVENT_CLAIMS_AT_ONCE).map(|i| format!("{unique}-batch-{i}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let (a, b, c) = (holder("a", 10_000), holder("b", 20_000), holder("c", 90_000));
    // Event 0 counted, 1 held by `a` (running until 10,000), 2 held by `b` (running until 20,000).
    store.mark_events_done(&refs[..1], "x", 1_000).await.unwrap();
    assert!(store.claim_event(refs[1], &a, 1_000, 0, 0).await.unwrap());
    assert!(store.claim_event(refs[2], &b, 1_000, 0, 0).await.unwrap());

    // `c` at 15,000 (only `a`'s deadline has passed): everything but 0 and 2 is its own.
    let found = store.claim_events(&refs, &c, 15_000, 15_000, 0).await.unwrap();
    assert_eq!(found.len(), EVENT_CLAIMS_AT_ONCE);
    assert_eq!(found[0], EventClaimFound::Held(Some(EventClaim { state: EventState::Done, token: "x".into() })));
    assert_eq!(found[1], EventClaimFound::Claimed, "taken over after its holder's deadline");
    assert_eq!(found[2], EventClaimFound::Held(Some(EventClaim { state: EventState::InProgress, token: "b".into() })));
    assert!(found[3..].iter().all(|f| *f == EventClaimFound::Claimed), "{found:?}");
    for id in [refs[1], refs[3], refs[99]] {
        assert_eq!(store.event_claim(id).await.unwrap().map(|c| c.token), Some("c".into()), "{id}");
    }
    assert_eq!(store.event_claim(refs[2]).await.unwrap().map(|c| c.token), Some("b".into()));

    // Claimed again by `c` (a reply it lost): found held by its own entry, nothing overwritten.
    let again = store.claim_events(&refs[3..5], &c, 16_000, 15_000, 0).await.unwrap();
    let own = EventClaimFound::Held(Some(EventClaim { state: EventState::InProgress, token: "c".into() }));
    assert_eq!(again, [own.clone(), own]);
}

/// A one-stage run of `pipeline`, created at `created_at`.
pub fn sample_run(run_id: &str, pipeline: &str, created_at: i64) -> Run {
    let stage = Stage {
        job_definition: "default".into(),
        queue: "default".into(),
        size: Size::exact(crate::model::fargate::Quarters(1), 512).expect("a valid size"),
        parameters: BTreeMap::new(),
        after: vec![],
        max_resizes: 2,
        timeout_seconds: None,
        expected_seconds: None,
        max_vcpus: None,
        retry: None,
        map: None,
    };
    let pipeline = Pipeline {
        name: pipeline.into(),
        stages: BTreeMap::from([("only".to_owned(), stage)]),
        on_failure: None,
        on_stage_failure: Default::default(),
        max_run_seconds: None,
        max_run_cost_usd: None,
    };
    Run::start(run_id.into(), &pipeline, "test", RunInput::default(), created_at)
}

pub async fn runs(store: &dyn Store, unique: &str) {
    let pipeline = format!("{unique}-pipeline");
    let first = sample_run(&format!("{unique}-r1"), &pipeline, 1_000);
    assert_eq!(store.load_run(&first.run_id).await.unwrap(), None);
    assert_eq!(store.save_run(&first, None).await.unwrap(), Some(1), "a new run is version 1");
    assert_eq!(store.save_run(&first, None).await.unwrap(), None, "a run is created once");
    let loaded = store.load_run(&first.run_id).await.unwrap().unwrap();
    assert_eq!((loaded.run.clone(), loaded.version), (first.clone(), 1));

    let mut ended = first.clone();
    ended.status = RunStatus::Succeeded;
    assert_eq!(store.save_run(&ended, Some(&loaded)).await.unwrap(), Some(2), "a write at the version read wins");
    assert_eq!(store.save_run(&first, Some(&loaded)).await.unwrap(), None, "a write at an old version loses");
    assert_eq!(store.load_run(&first.run_id).await.unwrap().unwrap().run.status, RunStatus::Succeeded);

    let second = sample_run(&format!("{unique}-r2"), &pipeline, 2_000);
    let third = sample_run(&format!("{unique}-r3"), &pipeline, 3_000);
    store.save_run(&third, None).await.unwrap();
    store.save_run(&second, None).await.unwrap();
    let listed = store.list_runs(&pipeline, 2).await.unwrap();
    let ids: Vec<&str> = listed.iter().map(|s| s.run_id.as_str()).collect();
    assert_eq!(ids, [third.run_id.as_str(), second.run_id.as_str()], "newest first, limited");
    let all = store.list_runs(&pipeline, 10).await.unwrap();
    let oldest = all.last().unwrap();
    assert_eq!(
        (oldest.run_id.as_str(), oldest.status.as_str(), oldest.created_at),
        (first.run_id.as_str(), "SUCCEEDED", 1_000)
    );
    assert!(store.list_runs(&format!("{unique}-other"), 10).await.unwrap().is_empty());
    let open_ids = |page: Page<OpenRun>| page.items.into_iter().map(|r| r.run_id).collect::<Vec<_>>();
    let open = open_ids(store.open_runs(None, 10).await.unwrap());
    assert_eq!(open, [first.run_id.clone(), second.run_id.clone(), third.run_id.clone()], "ended, not announced");
    let mut announced = ended.clone();
    announced.completion_sent = true;
    let read = VersionedRun { run: ended.clone(), version: 2 };
    assert_eq!(store.save_run(&announced, Some(&read)).await.unwrap(), Some(3));
    let open = open_ids(store.open_runs(None, 10).await.unwrap());
    assert_eq!(open, [second.run_id.clone(), third.run_id.clone()], "done with: off the list; oldest first");
    let page = store.open_runs(None, 1).await.unwrap();
    assert_eq!(page.items.len(), 1, "limited");
    let rest = store.open_runs(page.next.as_deref(), 10).await.unwrap();
    assert_eq!((open_ids(rest.clone()), rest.next), (vec![third.run_id.clone()], None), "the next page");
    assert!(store.legacy_open_runs(&pipeline, None).await.unwrap().items.is_empty(), "every line has a version");

    // reconciling a line: only at the version read; a run gone takes its line with it
    let line = store.open_runs(None, 1).await.unwrap().items.remove(0);
    let read = store.load_run(&second.run_id).await.unwrap().unwrap();
    let stale = VersionedRun { run: read.run.clone(), version: read.version + 1 };
    assert!(!store.reconcile_open_line(&line, Some(&stale)).await.unwrap(), "not at the version read");
    assert!(!store.reconcile_open_line(&line, None).await.unwrap(), "the run still exists");
    assert!(store.reconcile_open_line(&line, Some(&read)).await.unwrap());
    assert_eq!(open_ids(store.open_runs(None, 10).await.unwrap()).len(), 2, "an open run stays listed");
    let gone = OpenRun {
        run_id: format!("{unique}-gone"),
        created_at: 5,
        position: keys::index_sk(5, &format!("{unique}-gone")),
    };
    assert!(store.reconcile_open_line(&gone, None).await.unwrap(), "a line of a run that is gone is removed");

    // the sweep's cursor
    assert_eq!(store.sweep_cursor().await.unwrap(), SweepCursor::default(), "none yet");
    let cursor = SweepCursor {
        after: Some(line.position.clone()),
        adoption: Adoption { since_ms: Some(7), done: true, ..Adoption::default() },
    };
    store.save_sweep_cursor(&cursor).await.unwrap();
    assert_eq!(store.sweep_cursor().await.unwrap(), cursor);
    assert_eq!(open_ids(store.open_runs(None, 10).await.unwrap()).len(), 2, "the cursor is not an open run");
}

pub async fn configuration(store: &dyn Store, config: &StackConfig) {
    store.remove_config(Some("mine")).await.unwrap();
    assert_eq!(store.load_config().await.unwrap(), None);
    store.publish_config(config, "mine").await.unwrap();
    assert_eq!(store.load_config().await.unwrap().as_ref(), Some(config));
    let published = store.load_published().await.unwrap().unwrap();
    assert_eq!((&published.config, published.owner.as_deref()), (config, Some("mine")));
    assert!(!store.remove_config(Some("theirs")).await.unwrap(), "another environment's delete leaves it");
    assert!(!store.remove_config(None).await.unwrap(), "it has an owner");
    assert!(store.load_config().await.unwrap().is_some());
    assert!(store.remove_config(Some("mine")).await.unwrap());
    assert_eq!(store.load_config().await.unwrap(), None, "removed");
    assert!(store.remove_config(Some("mine")).await.unwrap(), "gone is gone");
}
