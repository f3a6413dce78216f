//! The event ledger: which EventBridge events have been counted, so a redelivered one is counted once.
//!
//! Before an event is counted, its id is claimed in the store (state `IN_PROGRESS`, held by
//! the invocation: its request id and its Lambda deadline); after its metrics are
//! published it becomes `DONE`; if publishing fails the claim is released so the retry can
//! claim it again. A claim is taken over only when its holder cannot be running any more
//! (past its deadline plus a margin; entries from earlier releases, without a deadline,
//! after [`STALE_CLAIM_MS`]). A claim whose write took effect but whose reply was lost is
//! recognised as the invocation's own by its token. A batch's events are claimed together,
//! a hundred to a call ([`Ledger::claim_all`]), each with its own conditional write under
//! the same rule.
//!
//! Marking events done is retried until it succeeds or the invocation's time runs out:
//! an event whose metrics are out but whose claim is still IN_PROGRESS would be counted
//! again by a later duplicate once the claim expires.

use batchline::services::clock::retry_pause;
use batchline::services::ports::Clock;
use batchline::services::submitter::TAKEOVER_MARGIN_MS;
use batchline::store::{EventClaim, EventClaimFound, EventLedgerStore, EventState, Holder};
use batchline::Error;
use tracing::warn;

/// Claims from earlier releases carry no deadline: older than any invocation can run, such
/// a claim was left by a crash.
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
    pub clock: &'a dyn Clock,
    /// The invocation: who holds the claims, and until when.
    pub holder: &'a Holder,
}

impl Ledger<'_> {
    pub async fn claim(&self, event_id: &str) -> Result<Claim, Error> {
        let now = self.clock.now_ms();
        let expired_before = now - TAKEOVER_MARGIN_MS;
        if self.store.claim_event(event_id, self.holder, now, expired_before, now - STALE_CLAIM_MS).await? {
            return Ok(Claim::Claimed);
        }
        Ok(self.held_by(self.store.event_claim(event_id).await?))
    }

    /// Claims distinct events, at most [`batchline::store::EVENT_CLAIMS_AT_ONCE`], each with
    /// one conditional write (one write unit; the store writes several at once). An error
    /// claims none of them.
    pub async fn claim_all(&self, event_ids: &[&str]) -> Result<Vec<Claim>, Error> {
        if let [event_id] = event_ids {
            return Ok(vec![self.claim(event_id).await?]);
        }
        let now = self.clock.now_ms();
        let found = self
            .store
            .claim_events(event_ids, self.holder, now, now - TAKEOVER_MARGIN_MS, now - STALE_CLAIM_MS)
            .await?;
        Ok(found
            .into_iter()
            .map(|found| match found {
                EventClaimFound::Claimed => Claim::Claimed,
                EventClaimFound::Held(entry) => self.held_by(entry),
            })
            .collect())
    }

    /// What an event whose claim did not go through is to this invocation, by its entry.
    fn held_by(&self, entry: Option<EventClaim>) -> Claim {
        match entry {
            Some(entry) if entry.state == EventState::Done => Claim::AlreadyDone,
            // Our own write took effect; only its reply was lost.
            Some(entry) if entry.token == self.holder.token => Claim::Claimed,
            _ => Claim::InFlight,
        }
    }

    /// Gives a claim back (publishing failed), so a retry can claim the event again.
    pub async fn release(&self, event_id: &str) -> Result<(), Error> {
        self.store.release_event(event_id, &self.holder.token).await
    }

    /// Records events as counted, trying again until it works or `give_up_at` (epoch ms).
    pub async fn mark_done(&self, event_ids: &[&str], give_up_at: i64) -> Result<(), Error> {
        let mut attempt: u32 = 0;
        loop {
            match self.store.mark_events_done(event_ids, &self.holder.token, self.clock.now_ms()).await {
                Ok(()) => return Ok(()),
                Err(err) if self.clock.now_ms() < give_up_at => {
                    warn!(error = %err, attempt, "marking events counted failed; trying again");
                    tokio::time::sleep(retry_pause(attempt)).await;
                    attempt += 1;
                }
                Err(err) => return Err(err),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use batchline::services::clock::ManualClock;
    use batchline::store::{MemoryStore, StoreFault};

    fn holder(token: &str, deadline_ms: i64) -> Holder {
        Holder { token: token.into(), deadline_ms }
    }

    #[tokio::test]
    async fn our_own_claim_whose_reply_was_lost_is_ours() {
        let store = MemoryStore::new();
        let clock = ManualClock::at(1_000);
        let me = holder("me", 300_000);
        store.inject("claim_event", StoreFault::LoseReplyRetried, 1);
        let ledger = Ledger { store: &store, clock: &clock, holder: &me };
        assert_eq!(ledger.claim("e1").await.unwrap(), Claim::Claimed);
        let other = holder("other", 600_000);
        let theirs = Ledger { store: &store, clock: &clock, holder: &other };
        assert_eq!(theirs.claim("e1").await.unwrap(), Claim::InFlight);
    }

    #[tokio::test]
    async fn a_claim_is_taken_over_only_after_its_holders_deadline() {
        let store = MemoryStore::new();
        let clock = ManualClock::at(1_000);
        let (first, second) = (holder("first", 300_000), holder("second", 900_000));
        assert_eq!(Ledger { store: &store, clock: &clock, holder: &first }.claim("e2").await.unwrap(), Claim::Claimed);
        let ledger = Ledger { store: &store, clock: &clock, holder: &second };
        clock.set(300_000 + TAKEOVER_MARGIN_MS);
        assert_eq!(ledger.claim("e2").await.unwrap(), Claim::InFlight, "the first may still be running");
        clock.set(300_000 + TAKEOVER_MARGIN_MS + 1);
        assert_eq!(ledger.claim("e2").await.unwrap(), Claim::Claimed);
    }

    #[tokio::test]
    async fn a_failed_mark_done_is_retried_so_a_later_duplicate_is_not_counted_again() {
        // GIVEN an event counted by an invocation whose first two "mark done" writes fail
        let store = MemoryStore::new();
        let clock = ManualClock::at(1_000);
        let first = holder("first", 300_000);
        let ledger = Ledger { store: &store, clock: &clock, holder: &first };
        assert_eq!(ledger.claim("e3").await.unwrap(), Claim::Claimed);
        store.inject("mark_events_done", StoreFault::Fail, 2);
        ledger.mark_done(&["e3"], 270_000).await.unwrap();
        // WHEN a duplicate arrives long after the first invocation ended
        clock.set(10_000_000);
        let later = holder("later", 10_300_000);
        let duplicate = Ledger { store: &store, clock: &clock, holder: &later };
        // THEN it is acknowledged as counted, not counted again
        assert_eq!(duplicate.claim("e3").await.unwrap(), Claim::AlreadyDone);
    }

    #[tokio::test]
    async fn marking_done_gives_up_when_the_time_is_up() {
        let store = MemoryStore::new();
        let clock = ManualClock::at(1_000);
        let me = holder("me", 300_000);
        store.inject("mark_events_done", StoreFault::Fail, 1);
        let ledger = Ledger { store: &store, clock: &clock, holder: &me };
        assert!(ledger.mark_done(&["e4"], 1_000).await.is_err(), "no time left: the error is reported");
    }
}
