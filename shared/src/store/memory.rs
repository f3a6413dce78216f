//! The store in memory: the same conditions as the table, for unit tests that interleave handlers, with injectable faults.
//!
//! Every operation takes the lock once, so each is atomic as a DynamoDB conditional write
//! is; a test interleaves two handlers by running their steps in the order it chooses.
//! [`MemoryStore::inject`] makes the next calls of one operation fail before they take
//! effect, or take effect and lose their reply, as a DynamoDB call can.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;

use async_trait::async_trait;

use super::keys::index_sk;
use super::{
    relists, ClaimState, ClaimStore, ConfigStore, EventClaim, EventLedgerStore, EventState, Holder, KeyGeneration,
    OpenRun, Page, Published, RunStore, RunSummary, SubmissionClaim, SweepCursor, VersionedRun,
};
use crate::model::run::Run;
use crate::model::stack::StackConfig;
use crate::Error;

/// What an injected fault does to one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreFault {
    /// Fails before taking effect.
    Fail,
    /// Takes effect, then the reply is lost (the caller sees an error).
    LoseReply,
    /// Takes effect, the reply is lost, and the SDK sends the same request again: the
    /// caller sees the second call's answer (for a conditional write, "condition failed").
    LoseReplyRetried,
}

#[derive(Debug, Clone)]
struct EventEntry {
    state: EventState,
    token: String,
    claimed_at: i64,
    deadline_ms: Option<i64>,
}

/// A line of a pipeline's run index; `version` is `None` on lines of earlier releases.
#[derive(Debug, Clone)]
struct IndexLine {
    status: String,
    announced: bool,
    version: Option<i64>,
}

/// One pipeline's run index: (created at, run id) → line.
type PipelineIndex = BTreeMap<(i64, String), IndexLine>;

#[derive(Default)]
struct Tables {
    claims: HashMap<String, SubmissionClaim>,
    key_generations: HashMap<String, KeyGeneration>,
    events: HashMap<String, EventEntry>,
    runs: HashMap<String, VersionedRun>,
    index: HashMap<String, PipelineIndex>,
    /// The open-run list, by position.
    open: BTreeMap<String, OpenRun>,
    sweep_cursor: SweepCursor,
    config: Option<Published>,
    faults: HashMap<&'static str, VecDeque<StoreFault>>,
}

/// An in-memory store.
#[derive(Default)]
pub struct MemoryStore {
    tables: Mutex<Tables>,
}

fn injected(operation: &'static str) -> Error {
    Error::Aws { operation, code: "InternalServerError".into(), message: "injected fault".into() }
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the next `times` calls of `operation` (a trait method's name, e.g.
    /// `"mark_events_done"`) go wrong as `fault` says.
    pub fn inject(&self, operation: &'static str, fault: StoreFault, times: usize) {
        self.with(|t| t.faults.entry(operation).or_default().extend(std::iter::repeat_n(fault, times)));
    }

    /// Stores a run as an earlier release did: the record and an index line without a
    /// version, and no open-run line.
    pub fn insert_legacy_run(&self, run: &Run, version: i64) {
        self.with(|t| {
            t.runs.insert(run.run_id.clone(), VersionedRun { run: run.clone(), version });
            set_index_line(t, run, None);
        })
    }

    /// Removes a run record, as its retention running out does (its lines stay a while).
    pub fn expire_run(&self, run_id: &str) {
        self.with(|t| t.runs.remove(run_id));
    }

    /// The run ids on the open-run list, oldest first.
    pub fn open_run_ids(&self) -> Vec<String> {
        self.with(|t| t.open.values().map(|line| line.run_id.clone()).collect())
    }

    /// Every submission claim, for assertions.
    pub fn claims(&self) -> Vec<SubmissionClaim> {
        self.with(|t| t.claims.values().cloned().collect())
    }

    fn with<T>(&self, f: impl FnOnce(&mut Tables) -> T) -> T {
        // A panic while holding the lock can only come from a test's own assertion.
        let mut tables = self.tables.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut tables)
    }

    /// Runs one operation under its injected fault, if any.
    fn call<T>(&self, operation: &'static str, mut f: impl FnMut(&mut Tables) -> T) -> Result<T, Error> {
        self.with(|t| {
            let fault = t.faults.get_mut(operation).and_then(VecDeque::pop_front);
            if fault == Some(StoreFault::Fail) {
                return Err(injected(operation));
            }
            match fault {
                Some(StoreFault::LoseReply) => {
                    f(t);
                    Err(injected(operation))
                }
                Some(StoreFault::LoseReplyRetried) => {
                    f(t);
                    Ok(f(t))
                }
                _ => Ok(f(t)),
            }
        })
    }
}

#[async_trait]
impl ClaimStore for MemoryStore {
    async fn key_generation(&self, base: &str) -> Result<Option<KeyGeneration>, Error> {
        self.call("key_generation", |t| t.key_generations.get(base).copied())
    }

    async fn set_key_generation(
        &self,
        base: &str,
        current: Option<&KeyGeneration>,
        next: &KeyGeneration,
    ) -> Result<bool, Error> {
        self.call("set_key_generation", |t| {
            if t.key_generations.get(base) != current {
                return false;
            }
            t.key_generations.insert(base.to_owned(), *next);
            true
        })
    }

    async fn create_claim(&self, claim: &SubmissionClaim) -> Result<bool, Error> {
        self.call("create_claim", |t| {
            if t.claims.contains_key(&claim.idempotency_key) {
                return false;
            }
            t.claims.insert(claim.idempotency_key.clone(), claim.clone());
            true
        })
    }

    async fn claim(&self, idempotency_key: &str) -> Result<Option<SubmissionClaim>, Error> {
        self.call("claim", |t| t.claims.get(idempotency_key).cloned())
    }

    async fn take_over_claim(
        &self,
        idempotency_key: &str,
        then: i64,
        holder: &Holder,
        now: i64,
    ) -> Result<bool, Error> {
        self.call("take_over_claim", |t| match t.claims.get_mut(idempotency_key) {
            Some(claim) if claim.claimed_at == then && claim.state == ClaimState::Pending => {
                claim.claimed_at = now;
                claim.holder = Some(holder.clone());
                true
            }
            _ => false,
        })
    }

    async fn record_claim_job(&self, idempotency_key: &str, job_id: &str, holder: Option<&str>) -> Result<bool, Error> {
        self.call("record_claim_job", |t| match t.claims.get_mut(idempotency_key) {
            Some(claim)
                if claim.state == ClaimState::Pending
                    && holder.is_none_or(|token| claim.holder.as_ref().is_some_and(|h| h.token == token)) =>
            {
                claim.state = ClaimState::Submitted;
                claim.job_id = Some(job_id.to_owned());
                true
            }
            _ => false,
        })
    }

    async fn withdraw_claim(&self, idempotency_key: &str, then: i64) -> Result<bool, Error> {
        self.call("withdraw_claim", |t| match t.claims.get_mut(idempotency_key) {
            Some(claim) if claim.claimed_at == then && claim.state == ClaimState::Pending => {
                claim.state = ClaimState::Withdrawn;
                true
            }
            _ => false,
        })
    }
}

#[async_trait]
impl EventLedgerStore for MemoryStore {
    async fn claim_event(
        &self,
        event_id: &str,
        holder: &Holder,
        now_ms: i64,
        expired_before: i64,
        legacy_stale_before: i64,
    ) -> Result<bool, Error> {
        self.call("claim_event", |t| {
            let free = match t.events.get(event_id) {
                None => true,
                Some(entry) if entry.state == EventState::InProgress => match entry.deadline_ms {
                    Some(deadline) => deadline < expired_before,
                    None => entry.claimed_at < legacy_stale_before,
                },
                Some(_) => false,
            };
            if free {
                let entry = EventEntry {
                    state: EventState::InProgress,
                    token: holder.token.clone(),
                    claimed_at: now_ms,
                    deadline_ms: Some(holder.deadline_ms),
                };
                t.events.insert(event_id.to_owned(), entry);
            }
            free
        })
    }

    async fn event_claim(&self, event_id: &str) -> Result<Option<EventClaim>, Error> {
        self.call("event_claim", |t| {
            t.events.get(event_id).map(|e| EventClaim { state: e.state, token: e.token.clone() })
        })
    }

    async fn release_event(&self, event_id: &str, token: &str) -> Result<(), Error> {
        self.call("release_event", |t| {
            if t.events.get(event_id).is_some_and(|e| e.token == token && e.state == EventState::InProgress) {
                t.events.remove(event_id);
            }
        })
    }

    async fn mark_events_done(&self, event_ids: &[&str], token: &str, now_ms: i64) -> Result<(), Error> {
        self.call("mark_events_done", |t| {
            for id in event_ids {
                let entry = EventEntry {
                    state: EventState::Done,
                    token: token.to_owned(),
                    claimed_at: now_ms,
                    deadline_ms: None,
                };
                t.events.insert((*id).to_owned(), entry);
            }
        })
    }
}

#[async_trait]
impl RunStore for MemoryStore {
    async fn load_run(&self, run_id: &str) -> Result<Option<VersionedRun>, Error> {
        self.call("load_run", |t| t.runs.get(run_id).cloned())
    }

    async fn save_run(&self, run: &Run, previous: Option<&VersionedRun>) -> Result<Option<i64>, Error> {
        self.call("save_run", |t| {
            let current = t.runs.get(&run.run_id).map(|r| r.version);
            if current != previous.map(|read| read.version) {
                return None;
            }
            let version = current.unwrap_or(0) + 1;
            t.runs.insert(run.run_id.clone(), VersionedRun { run: run.clone(), version });
            if previous.is_none_or(|read| relists(&read.run, run)) {
                set_index_line(t, run, Some(version));
                set_open_line(t, run);
            }
            Some(version)
        })
    }

    async fn list_runs(&self, pipeline: &str, limit: i32) -> Result<Vec<RunSummary>, Error> {
        self.call("list_runs", |t| {
            t.index
                .get(pipeline)
                .into_iter()
                .flat_map(|lines| lines.iter().rev())
                .take(limit.max(0) as usize)
                .map(|((created_at, run_id), line)| RunSummary {
                    run_id: run_id.clone(),
                    status: line.status.clone(),
                    created_at: *created_at,
                })
                .collect()
        })
    }

    async fn open_runs(&self, after: Option<&str>, limit: i32) -> Result<Page<OpenRun>, Error> {
        self.call("open_runs", |t| {
            let from = after.unwrap_or_default().to_owned();
            let mut lines = t.open.range(from..).filter(|(position, _)| Some(position.as_str()) != after);
            let items: Vec<OpenRun> =
                lines.by_ref().take(limit.max(1) as usize).map(|(_, line)| line.clone()).collect();
            let next = items.last().map(|line| line.position.clone()).filter(|_| lines.next().is_some());
            Page { items, next }
        })
    }

    async fn reconcile_open_line(&self, line: &OpenRun, run: Option<&VersionedRun>) -> Result<bool, Error> {
        self.call("reconcile_open_line", |t| {
            let current = t.runs.get(&line.run_id).map(|r| r.version);
            if current != run.map(|r| r.version) {
                return false;
            }
            match run {
                Some(read) => {
                    set_open_line(t, &read.run);
                    set_index_line(t, &read.run, Some(read.version));
                }
                None => {
                    t.open.remove(&line.position);
                }
            }
            true
        })
    }

    async fn legacy_open_runs(&self, pipeline: &str, after: Option<&str>) -> Result<Page<RunSummary>, Error> {
        self.call("legacy_open_runs", |t| {
            let items = t
                .index
                .get(pipeline)
                .into_iter()
                .flat_map(|lines| lines.iter())
                .filter(|((created_at, run_id), _)| {
                    after.is_none_or(|after| index_sk(*created_at, run_id).as_str() > after)
                })
                .filter(|(_, line)| line.version.is_none() && (line.status == "RUNNING" || !line.announced))
                .map(|((created_at, run_id), line)| RunSummary {
                    run_id: run_id.clone(),
                    status: line.status.clone(),
                    created_at: *created_at,
                })
                .collect();
            Page { items, next: None }
        })
    }

    async fn sweep_cursor(&self) -> Result<SweepCursor, Error> {
        self.call("sweep_cursor", |t| t.sweep_cursor.clone())
    }

    async fn save_sweep_cursor(&self, cursor: &SweepCursor) -> Result<(), Error> {
        self.call("save_sweep_cursor", |t| t.sweep_cursor = cursor.clone())
    }
}

/// Writes a run's index line as of `version` (`None`: as an earlier release wrote it).
fn set_index_line(t: &mut Tables, run: &Run, version: Option<i64>) {
    let line = IndexLine { status: run.status.as_str().to_owned(), announced: run.completion_sent, version };
    t.index.entry(run.pipeline.name.clone()).or_default().insert((run.created_at, run.run_id.clone()), line);
}

/// Lists a run on the open-run list while it is not done with, and takes it off after.
fn set_open_line(t: &mut Tables, run: &Run) {
    let position = index_sk(run.created_at, &run.run_id);
    if run.is_done_with() {
        t.open.remove(&position);
    } else {
        let line = OpenRun { run_id: run.run_id.clone(), created_at: run.created_at, position: position.clone() };
        t.open.insert(position, line);
    }
}

#[async_trait]
impl ConfigStore for MemoryStore {
    async fn load_config(&self) -> Result<Option<StackConfig>, Error> {
        self.call("load_config", |t| t.config.as_ref().map(|p| p.config.clone()))
    }

    async fn load_published(&self) -> Result<Option<Published>, Error> {
        self.call("load_published", |t| t.config.clone())
    }

    async fn publish_config(&self, config: &StackConfig, owner: &str) -> Result<(), Error> {
        self.call("publish_config", |t| {
            t.config = Some(Published { config: config.clone(), owner: Some(owner.to_owned()) })
        })
    }

    async fn remove_config(&self, owner: Option<&str>) -> Result<bool, Error> {
        self.call("remove_config", |t| {
            let ours = t.config.as_ref().is_none_or(|published| published.owner.as_deref() == owner);
            if ours {
                t.config = None;
            }
            ours
        })
    }
}
