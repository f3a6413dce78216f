//! The store: the one place that knows the table's keys and item shapes, behind narrow traits.
//!
//! Every item kind of the single table has its key functions in [`keys`] and its codec in
//! [`dynamo`]; nothing else in the workspace writes `RUN#` or `EVENT#`. Each capability is
//! a small trait, so a service asks only for what it uses:
//!
//! | trait | items | used by |
//! |---|---|---|
//! | [`ClaimStore`] | `IDEM#<hash>` / `CLAIM` | the submitter |
//! | [`EventLedgerStore`] | `EVENT#<id>` / `EVENT` | job-events' ledger |
//! | [`RunStore`] | `RUN#<id>` / `RUN`, `PIPELINE#<name>` / `RUN#<created>#<id>`, `OPEN` / `RUN#<created>#<id>`, `OPEN` / `SWEEP` | the run driver, the sweep, the API |
//! | [`WindowStore`] | `COALESCE#<trigger>` / `WINDOW#<n>` and `CHUNK#<n>#<token>`, `OBJECT#<hash>` / `<trigger>#<version>` | the map worker (coalesced triggers), the API |
//! | [`ConfigStore`] | `CONFIG` / `CURRENT` (with its owner) | bootstrap (writes), the configuration cache (reads) |
//!
//! Two implementations: [`DynamoStore`] (the table) and `MemoryStore` (tests only, the `testing` feature; for unit tests
//! that interleave handlers step by step). Both honour the same conditions, checked by
//! one contract suite (`contract`, run against each).

pub mod dynamo;
pub mod keys;
#[cfg(any(test, feature = "testing"))]
pub mod memory;

#[cfg(any(test, feature = "testing"))]
pub mod contract;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::model::coalesce::CoalescedObject;
use crate::model::run::Run;
use crate::model::stack::StackConfig;
use crate::Error;

pub use dynamo::DynamoStore;
#[cfg(any(test, feature = "testing"))]
pub use memory::{MemoryStore, StoreFault};

/// How long a submission claim (and so the protection against duplicates) lasts.
pub const CLAIM_SECONDS: i64 = 7 * 24 * 3600;
/// How long an event id is remembered: longer than SQS keeps a message (14 days at most).
pub const EVENT_SECONDS: i64 = 15 * 24 * 3600;
/// How long run records are kept.
pub const RUN_RETENTION_SECONDS: i64 = 90 * 24 * 3600;

/// Where a submission stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ClaimState {
    /// Claimed; SubmitJob is under way or was interrupted.
    Pending,
    /// The job exists; `job_id` names it.
    Submitted,
    /// Never to be submitted: the run gave up the attempt (cancelled or failed) before a
    /// job was recorded, and no job of it exists. A late holder finds the key taken.
    Withdrawn,
}

/// Who holds a claim: an invocation (its request id) and the moment it can no longer be
/// running (its Lambda deadline). Nobody takes a claim over before that moment has passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub token: String,
    pub deadline_ms: i64,
}

/// A submission claim: who may call SubmitJob for one idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubmissionClaim {
    pub idempotency_key: String,
    pub job_name: String,
    pub queue: String,
    /// What the caller sent, so a reused key with other content is caught. `None` on
    /// claims written before fingerprints stopped covering deploy-resolved ARNs: those
    /// are not compared.
    pub fingerprint: Option<String>,
    pub state: ClaimState,
    pub job_id: Option<String>,
    pub claimed_at: i64,
    /// `None` on claims written before claims named their holder.
    pub holder: Option<Holder>,
}

/// Claims of idempotency keys before SubmitJob.
#[async_trait]
pub trait ClaimStore: Send + Sync {
    /// Writes a new claim; false when the key is claimed already.
    async fn create_claim(&self, claim: &SubmissionClaim) -> Result<bool, Error>;
    /// The claim of a key, read consistently.
    async fn claim(&self, idempotency_key: &str) -> Result<Option<SubmissionClaim>, Error>;
    /// Gives a still-PENDING claim, as read at `claimed_at == then`, to `holder` at `now`;
    /// false if it changed meanwhile.
    async fn take_over_claim(&self, idempotency_key: &str, then: i64, holder: &Holder, now: i64)
        -> Result<bool, Error>;
    /// Records the job the claim resulted in (state SUBMITTED), only while the claim is
    /// PENDING and, when `holder` is given, still held by that token. False when the
    /// condition failed (the caller reads the claim to see why).
    async fn record_claim_job(&self, idempotency_key: &str, job_id: &str, holder: Option<&str>) -> Result<bool, Error>;
    /// Withdraws a still-PENDING claim, as read at `claimed_at == then`, with no job (state
    /// WITHDRAWN); false if it changed meanwhile.
    async fn withdraw_claim(&self, idempotency_key: &str, then: i64) -> Result<bool, Error>;
    /// The live generation of a caller's idempotency key (`base`: its first generation's
    /// key), read consistently; `None` when none is recorded.
    async fn key_generation(&self, base: &str) -> Result<Option<KeyGeneration>, Error>;
    /// Moves a key to `next`, only if it is still at `current` (`None`: none recorded);
    /// false when another writer moved it first.
    async fn set_key_generation(
        &self,
        base: &str,
        current: Option<&KeyGeneration>,
        next: &KeyGeneration,
    ) -> Result<bool, Error>;
}

/// Which generation of a caller's idempotency key is live: a key reused after its window
/// starts new work under its next generation, and this record says which that is, so
/// the key's older items expiring (DynamoDB's TTL) never make an older generation look
/// unused. Kept [`RUN_RETENTION_SECONDS`] after its first use, longer than any item of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyGeneration {
    pub generation: u32,
    pub first_use_ms: i64,
}

/// Where counting one EventBridge event stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventState {
    InProgress,
    Done,
}

/// An event's ledger entry: how far counting it got, and by whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventClaim {
    pub state: EventState,
    pub token: String,
}

/// What claiming an event in a batch found: it is the claimer's now, or held by the entry
/// found (none if the entry went between the write and the read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventClaimFound {
    Claimed,
    Held(Option<EventClaim>),
}

/// The most events one [`EventLedgerStore::claim_events`] call takes (a batch is claimed
/// in chunks of it).
pub const EVENT_CLAIMS_AT_ONCE: usize = 100;

/// The ledger of counted events.
#[async_trait]
pub trait EventLedgerStore: Send + Sync {
    /// Claims an event for `holder`: succeeds when nobody has, or when the claim in
    /// progress belongs to an invocation that cannot be running any more — its deadline
    /// is before `expired_before`, or (claims written before claims named a deadline) it
    /// was taken before `legacy_stale_before`. False otherwise.
    async fn claim_event(
        &self,
        event_id: &str,
        holder: &Holder,
        now_ms: i64,
        expired_before: i64,
        legacy_stale_before: i64,
    ) -> Result<bool, Error>;
    /// Claims at most [`EVENT_CLAIMS_AT_ONCE`] distinct events for `holder`, each as
    /// [`Self::claim_event`] does, and says for each whether it is now `holder`'s or whose
    /// entry holds it. An error claims none of them.
    async fn claim_events(
        &self,
        event_ids: &[&str],
        holder: &Holder,
        now_ms: i64,
        expired_before: i64,
        legacy_stale_before: i64,
    ) -> Result<Vec<EventClaimFound>, Error> {
        let mut found = Vec::with_capacity(event_ids.len());
        for id in event_ids {
            found.push(if self.claim_event(id, holder, now_ms, expired_before, legacy_stale_before).await? {
                EventClaimFound::Claimed
            } else {
                EventClaimFound::Held(self.event_claim(id).await?)
            });
        }
        Ok(found)
    }
    /// How far counting the event got, and by whom, if anyone claimed it.
    async fn event_claim(&self, event_id: &str) -> Result<Option<EventClaim>, Error>;
    /// Deletes an in-progress claim held by `token`; a claim that is not (any more) ours is left alone.
    async fn release_event(&self, event_id: &str, token: &str) -> Result<(), Error>;
    /// Marks events as counted.
    async fn mark_events_done(&self, event_ids: &[&str], token: &str, now_ms: i64) -> Result<(), Error>;
}

/// A run as read, with the version its next conditional write must name.
#[derive(Debug, Clone, PartialEq)]
pub struct VersionedRun {
    pub run: Run,
    pub version: i64,
}

/// A line of the per-pipeline run index.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSummary {
    pub run_id: String,
    pub status: String,
    pub created_at: i64,
}

/// A line of the open-run list: a run not done with (running, or ended and not yet
/// announced), whatever its pipeline. `position` orders the list (oldest first) and is
/// what a sweep's cursor names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenRun {
    pub run_id: String,
    pub created_at: i64,
    pub position: String,
}

/// One page of a list, and where the next one starts (`None`: this was the last).
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<String>,
}

/// How far the sweep got, kept between its invocations so a sweep that ran out of time
/// resumes where it stopped.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SweepCursor {
    /// The open-run list's position after which the next sweep goes on; `None`: from the start.
    #[serde(default)]
    pub after: Option<String>,
    /// Adopting the open runs of earlier releases, which are not on the open-run list.
    #[serde(default)]
    pub adoption: Adoption,
}

/// Where adopting open runs written by earlier releases stands. Those runs have an index
/// line without a `version` and no open-run line; the sweep walks the index of every
/// configured pipeline and lists them, until a whole walk began late enough that no
/// function of an earlier release could still have been writing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Adoption {
    /// When a sweep of this release first ran; `None` before that.
    #[serde(default)]
    pub since_ms: Option<i64>,
    /// When the walk under way began.
    #[serde(default)]
    pub walk_started_ms: Option<i64>,
    /// The pipeline the walk is in and the index position after which it goes on.
    #[serde(default)]
    pub pipeline: Option<String>,
    #[serde(default)]
    pub after: Option<String>,
    /// Set once adoption has finished for good.
    #[serde(default)]
    pub done: bool,
}

/// Whether writing `run` over `previous` changes what its index line and open-run line
/// show: its status, or whether its completion went out (which takes it off the open-run
/// list). Only such writes touch the lines.
pub fn relists(previous: &Run, run: &Run) -> bool {
    (previous.status, previous.completion_sent) != (run.status, run.completion_sent)
}

/// Run records, the per-pipeline index and the open-run list.
#[async_trait]
pub trait RunStore: Send + Sync {
    /// The run, read consistently.
    async fn load_run(&self, run_id: &str) -> Result<Option<VersionedRun>, Error>;
    /// Writes the run if it is still as `previous` read it (`None`: only if it does not
    /// exist yet), together with its index line and its open-run line (listed while the run
    /// is not done with, deleted once it is) when what they show changes ([`relists`]) — all
    /// or nothing. Returns the new version, or `None` when someone else wrote first.
    async fn save_run(&self, run: &Run, previous: Option<&VersionedRun>) -> Result<Option<i64>, Error>;
    /// Recent runs of a pipeline, newest first.
    async fn list_runs(&self, pipeline: &str, limit: i32) -> Result<Vec<RunSummary>, Error>;
    /// The open-run list, oldest first, from after `after`, at most `limit` lines.
    async fn open_runs(&self, after: Option<&str>, limit: i32) -> Result<Page<OpenRun>, Error>;
    /// Makes a run's lines match it if the run is still at the version read: its open-run
    /// line (listed while not done with) and its index line (written at that version, so it
    /// is no longer taken for an earlier release's). `None`: removes the open-run line of a
    /// run that no longer exists. False when the run changed meanwhile (its own writes keep
    /// its lines right).
    async fn reconcile_open_line(&self, line: &OpenRun, run: Option<&VersionedRun>) -> Result<bool, Error>;
    /// Index lines of `pipeline` written by earlier releases (no version) whose run is not
    /// done with: a page of them, from after `after`.
    async fn legacy_open_runs(&self, pipeline: &str, after: Option<&str>) -> Result<Page<RunSummary>, Error>;
    /// The sweep's cursor.
    async fn sweep_cursor(&self) -> Result<SweepCursor, Error>;
    async fn save_sweep_cursor(&self, cursor: &SweepCursor) -> Result<(), Error>;
}

/// A coalescing trigger's window as its head item says (see `model::coalesce`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowHead {
    pub trigger: String,
    /// Numbered from 1 per trigger, each after the last.
    pub window: u64,
    /// Open to appends until sealed.
    pub open: bool,
    pub opened_at: i64,
    /// When the window stops taking objects (`opened_at` + `WindowSeconds`).
    pub close_at: i64,
    /// Objects appended (deliveries, duplicates included).
    pub count: u32,
    /// The run the window started, once closed and started.
    pub run_id: Option<String>,
}

/// An object's claim by a window: what makes it one line of one list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectClaim {
    pub trigger: String,
    pub version: String,
    pub window: u64,
    pub run_id: String,
    /// Its line in the window's list (its map index, with one item per child).
    pub position: usize,
}

/// What an append found: done, or why not (the caller reads the head again and decides).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    Appended,
    /// Sealed, full, past its close, or appended to by someone else since it was read.
    NotAsRead,
}

/// Coalescing windows: heads, chunks of object lines, and the objects' claims.
#[async_trait]
pub trait WindowStore: Send + Sync {
    /// The trigger's newest window, read consistently.
    async fn latest_window(&self, trigger: &str) -> Result<Option<WindowHead>, Error>;
    /// One window's head, read consistently.
    async fn window(&self, trigger: &str, window: u64) -> Result<Option<WindowHead>, Error>;
    /// Opens `head` (which must not exist yet) with `objects` as its first chunk, named
    /// `chunk`; `NotAsRead` when someone opened it first.
    async fn open_window(
        &self,
        head: &WindowHead,
        chunk: &str,
        objects: &[CoalescedObject],
        expires_at: i64,
    ) -> Result<Appended, Error>;
    /// Appends `objects` as chunk `chunk` to the window as `read`: only while it is open,
    /// before its close, its count still as read and the objects fit under `max_objects`.
    /// A chunk of that name already there (a reply lost, the write done) is `Appended`.
    async fn append_to_window(
        &self,
        read: &WindowHead,
        chunk: &str,
        objects: &[CoalescedObject],
        now_ms: i64,
        max_objects: u32,
        expires_at: i64,
    ) -> Result<Appended, Error>;
    /// Seals a window: no append succeeds after it. Sealing a sealed window is no change.
    async fn seal_window(&self, trigger: &str, window: u64) -> Result<(), Error>;
    /// Every object appended to a window (deliveries as appended, duplicates included).
    async fn window_objects(&self, head: &WindowHead) -> Result<Vec<CoalescedObject>, Error>;
    /// Claims an object for a window's run (`run_id` names the window once and for all),
    /// at `rank` unless the claim already has a place: false when another window has it.
    /// Claiming it again for the same run (a redone close, another closer) succeeds and
    /// leaves its place alone.
    async fn claim_object(
        &self,
        object: &CoalescedObject,
        window: u64,
        run_id: &str,
        rank: usize,
        expires_at: i64,
    ) -> Result<bool, Error>;
    /// Moves a claimed object to its line `position` in the run's list (an object before
    /// it was claimed by another window). False when the claim is not the run's.
    async fn place_object(&self, object: &CoalescedObject, run_id: &str, position: usize) -> Result<bool, Error>;
    /// Records the run a closed window started.
    async fn record_window_run(&self, trigger: &str, window: u64, run_id: &str) -> Result<(), Error>;
    /// Every claim of the object at `bucket`/`key` (any trigger, any version).
    async fn object_claims(&self, bucket: &str, key: &str) -> Result<Vec<ObjectClaim>, Error>;
}

/// The published configuration and the environment that published it: the custom
/// resource's physical id (`None` on an item written by an earlier release).
#[derive(Debug, Clone, PartialEq)]
pub struct Published {
    pub config: StackConfig,
    pub owner: Option<String>,
}

/// The stack configuration bootstrap publishes.
#[async_trait]
pub trait ConfigStore: Send + Sync {
    /// The published configuration, if bootstrap has published one.
    async fn load_config(&self) -> Result<Option<StackConfig>, Error>;
    /// The published configuration with its owner.
    async fn load_published(&self) -> Result<Option<Published>, Error>;
    /// Publishes the configuration of the environment `owner` (a physical id).
    async fn publish_config(&self, config: &StackConfig, owner: &str) -> Result<(), Error>;
    /// Removes the configuration only if `owner` published it (`None`: only if no owner is
    /// recorded — an earlier release's item); true when it is gone. An environment being
    /// deleted after a replacement never removes its successor's configuration.
    async fn remove_config(&self, owner: Option<&str>) -> Result<bool, Error>;
}

/// Everything the table holds.
pub trait Store: ClaimStore + EventLedgerStore + RunStore + ConfigStore {}
impl<T: ClaimStore + EventLedgerStore + RunStore + ConfigStore> Store for T {}
