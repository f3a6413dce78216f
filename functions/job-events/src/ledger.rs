//! The event ledger: which EventBridge events have been counted, so a redelivered one is counted once.
//!
//! Before an event is counted, its id is claimed in the store (state `IN_PROGRESS`, the
//! invocation's request id as the token); after its metrics are published it becomes
//! `DONE`; if publishing fails the claim is released so the retry can claim it again. A
//! claim older than [`STALE_CLAIM_MS`] belongs to an invocation that died mid-way (Lambda
//! runs 15 minutes at most) and may be taken over.

use batchline::store::{EventLedgerStore, EventState};
use batchline::Error;

/// Older than any invocation can run: such a claim was left by a crash.
pub const STALE_CLAIM_MS: i64 = 16 * 60 * 1000;

/// The outcome of claiming an event id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This invocation counts the event.
    Claimed,
    /// Counted before: acknowledge without counting.
    AlreadyDone,
    /// Another invocation is counting it now: retry later.
    InFlight,
}

pub struct Ledger<'a> {
    pub store: &'a dyn EventLedgerStore,
    /// The invocation's request id: who holds a claim.
    pub token: &'a str,
}

impl Ledger<'_> {
    pub async fn claim(&self, event_id: &str, now_ms: i64) -> Result<Claim, Error> {
        if self.store.claim_event(event_id, self.token, now_ms, now_ms - STALE_CLAIM_MS).await? {
            return Ok(Claim::Claimed);
        }
        Ok(match self.store.event_state(event_id).await? {
            Some(EventState::Done) => Claim::AlreadyDone,
            _ => Claim::InFlight,
        })
    }

    /// Gives a claim back (publishing failed), so a retry can claim the event again.
    pub async fn release(&self, event_id: &str) -> Result<(), Error> {
        self.store.release_event(event_id, self.token).await
    }

    /// Records events as counted.
    pub async fn mark_done(&self, event_ids: &[&str], now_ms: i64) -> Result<(), Error> {
        self.store.mark_events_done(event_ids, self.token, now_ms).await
    }
}
