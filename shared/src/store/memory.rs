//! The store in memory: the same conditions as the table, for unit tests that interleave handlers.
//!
//! Every operation takes the lock once, so each is atomic as a DynamoDB conditional write
//! is; a test interleaves two handlers by running their steps in the order it chooses.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;

use super::{
    ClaimState, ClaimStore, ConfigStore, EventLedgerStore, EventState, RunStore, RunSummary, SubmissionClaim,
    VersionedRun,
};
use crate::model::run::Run;
use crate::model::stack::StackConfig;
use crate::Error;

#[derive(Debug, Clone)]
struct EventClaim {
    state: EventState,
    token: String,
    claimed_at: i64,
}

#[derive(Default)]
struct Tables {
    claims: HashMap<String, SubmissionClaim>,
    events: HashMap<String, EventClaim>,
    runs: HashMap<String, VersionedRun>,
    /// Per pipeline: (created at, run id) → status.
    index: HashMap<String, BTreeMap<(i64, String), String>>,
    config: Option<StackConfig>,
}

/// An in-memory store.
#[derive(Default)]
pub struct MemoryStore {
    tables: Mutex<Tables>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut Tables) -> T) -> T {
        // A panic while holding the lock can only come from a test's own assertion.
        let mut tables = self.tables.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut tables)
    }

    /// Every submission claim, for assertions.
    pub fn claims(&self) -> Vec<SubmissionClaim> {
        self.with(|t| t.claims.values().cloned().collect())
    }
}

#[async_trait]
impl ClaimStore for MemoryStore {
    async fn create_claim(&self, claim: &SubmissionClaim) -> Result<bool, Error> {
        Ok(self.with(|t| {
            if t.claims.contains_key(&claim.idempotency_key) {
                return false;
            }
            t.claims.insert(claim.idempotency_key.clone(), claim.clone());
            true
        }))
    }

    async fn claim(&self, idempotency_key: &str) -> Result<Option<SubmissionClaim>, Error> {
        Ok(self.with(|t| t.claims.get(idempotency_key).cloned()))
    }

    async fn take_over_claim(&self, idempotency_key: &str, then: i64, now: i64) -> Result<bool, Error> {
        Ok(self.with(|t| match t.claims.get_mut(idempotency_key) {
            Some(claim) if claim.claimed_at == then && claim.state == ClaimState::Pending => {
                claim.claimed_at = now;
                true
            }
            _ => false,
        }))
    }

    async fn record_claim_job(&self, idempotency_key: &str, job_id: &str) -> Result<(), Error> {
        // As DynamoDB's UpdateItem, this writes the item even when it is missing.
        self.with(|t| {
            let claim = t.claims.entry(idempotency_key.to_owned()).or_insert_with(|| SubmissionClaim {
                idempotency_key: idempotency_key.to_owned(),
                job_name: String::new(),
                queue: String::new(),
                fingerprint: String::new(),
                state: ClaimState::Pending,
                job_id: None,
                claimed_at: 0,
            });
            claim.state = ClaimState::Submitted;
            claim.job_id = Some(job_id.to_owned());
        });
        Ok(())
    }
}

#[async_trait]
impl EventLedgerStore for MemoryStore {
    async fn claim_event(&self, event_id: &str, token: &str, now_ms: i64, stale_before: i64) -> Result<bool, Error> {
        Ok(self.with(|t| {
            let free = match t.events.get(event_id) {
                None => true,
                Some(claim) => claim.state == EventState::InProgress && claim.claimed_at < stale_before,
            };
            if free {
                let claim = EventClaim { state: EventState::InProgress, token: token.to_owned(), claimed_at: now_ms };
                t.events.insert(event_id.to_owned(), claim);
            }
            free
        }))
    }

    async fn event_state(&self, event_id: &str) -> Result<Option<EventState>, Error> {
        Ok(self.with(|t| t.events.get(event_id).map(|c| c.state)))
    }

    async fn release_event(&self, event_id: &str, token: &str) -> Result<(), Error> {
        self.with(|t| {
            if t.events.get(event_id).is_some_and(|c| c.token == token && c.state == EventState::InProgress) {
                t.events.remove(event_id);
            }
        });
        Ok(())
    }

    async fn mark_events_done(&self, event_ids: &[&str], token: &str, now_ms: i64) -> Result<(), Error> {
        self.with(|t| {
            for id in event_ids {
                let claim = EventClaim { state: EventState::Done, token: token.to_owned(), claimed_at: now_ms };
                t.events.insert((*id).to_owned(), claim);
            }
        });
        Ok(())
    }
}

#[async_trait]
impl RunStore for MemoryStore {
    async fn load_run(&self, run_id: &str) -> Result<Option<VersionedRun>, Error> {
        Ok(self.with(|t| t.runs.get(run_id).cloned()))
    }

    async fn save_run(&self, run: &Run, expected: Option<i64>) -> Result<Option<i64>, Error> {
        Ok(self.with(|t| {
            let current = t.runs.get(&run.run_id).map(|r| r.version);
            let holds = match expected {
                None => current.is_none(),
                Some(expected) => current == Some(expected),
            };
            if !holds {
                return None;
            }
            let version = expected.unwrap_or(0) + 1;
            t.runs.insert(run.run_id.clone(), VersionedRun { run: run.clone(), version });
            t.index
                .entry(run.pipeline.name.clone())
                .or_default()
                .insert((run.created_at, run.run_id.clone()), run.status.as_str().to_owned());
            Some(version)
        }))
    }

    async fn list_runs(&self, pipeline: &str, limit: i32) -> Result<Vec<RunSummary>, Error> {
        Ok(self.with(|t| {
            t.index
                .get(pipeline)
                .into_iter()
                .flat_map(|lines| lines.iter().rev())
                .take(limit.max(0) as usize)
                .map(|((created_at, run_id), status)| RunSummary {
                    run_id: run_id.clone(),
                    status: status.clone(),
                    created_at: *created_at,
                })
                .collect()
        }))
    }
}

#[async_trait]
impl ConfigStore for MemoryStore {
    async fn load_config(&self) -> Result<Option<StackConfig>, Error> {
        Ok(self.with(|t| t.config.clone()))
    }

    async fn publish_config(&self, config: &StackConfig) -> Result<(), Error> {
        self.with(|t| t.config = Some(config.clone()));
        Ok(())
    }

    async fn remove_config(&self) -> Result<(), Error> {
        self.with(|t| t.config = None);
        Ok(())
    }
}
