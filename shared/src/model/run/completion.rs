//! Who announces a run's end: the completion claim, taken, given back, and the mark that it went out.
//!
//! One invocation sends the "Batchline Run Completed" event of a generation: it writes its
//! claim first, conditionally on the version it read, and nobody else takes the claim until
//! that invocation's deadline (plus the take-over margin) has passed.

use super::{CompletionClaim, Run};

impl Run {
    /// Takes the announcement's claim for `me` if the run is ready to announce and the
    /// claim is free (none, or its holder's deadline plus `takeover_margin_ms` is past at
    /// `now_ms`). True if the record changed.
    pub fn claim_completion(&mut self, me: &CompletionClaim, now_ms: i64, takeover_margin_ms: i64) -> bool {
        let free = match &self.completion_claim {
            None => true,
            Some(claim) if claim.token == me.token => false,
            Some(claim) => now_ms > claim.deadline_ms + takeover_margin_ms,
        };
        if !self.ready_to_announce() || !free {
            return false;
        }
        self.completion_claim = Some(me.clone());
        true
    }

    /// Gives the claim back (sending failed), so a retry need not wait out its deadline.
    pub fn release_completion(&mut self, token: &str) -> bool {
        self.completion_claim.take_if(|claim| claim.token == token).is_some()
    }

    /// Records that the completion went out, having published the run's cost as
    /// `cost_usd` in all; true if it was not recorded yet.
    pub fn mark_completion_sent(&mut self, cost_usd: f64) -> bool {
        self.completion_claim = None;
        if self.completion_sent {
            return false;
        }
        self.completion_sent = true;
        self.announced_cost_usd = cost_usd;
        true
    }
}
