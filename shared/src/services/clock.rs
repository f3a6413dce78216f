//! Time the services keep back from an invocation's deadline, the pauses between retries of a write that must not be left undone, and (for tests) a clock that says what it is told.

use std::time::Duration;

/// Time an invocation keeps back from its deadline when it retries a write that must not
/// be left undone (marking events counted, recording a run's completion sent).
pub const ANSWER_MARGIN_MS: i64 = 5_000;

/// The pause before retry number `attempt` of such a write: 50 ms doubling, at most 2 s.
pub fn retry_pause(attempt: u32) -> Duration {
    Duration::from_millis((50u64 << attempt.min(5)).min(2_000))
}

#[cfg(any(test, feature = "testing"))]
pub use manual::ManualClock;

#[cfg(any(test, feature = "testing"))]
mod manual {
    use std::sync::atomic::{AtomicI64, Ordering};

    use crate::services::ports::Clock;

    /// A clock that says what it is told, for tests; it can also move on by a step at every
    /// reading, so work that watches the time sees it pass.
    #[derive(Debug, Default)]
    pub struct ManualClock {
        now: AtomicI64,
        step: AtomicI64,
    }

    impl ManualClock {
        pub fn at(now_ms: i64) -> Self {
            ManualClock { now: AtomicI64::new(now_ms), step: AtomicI64::new(0) }
        }

        pub fn set(&self, now_ms: i64) {
            self.now.store(now_ms, Ordering::SeqCst);
        }

        /// Makes every reading move the clock on by `step_ms` (0: stands still).
        pub fn step_per_reading(&self, step_ms: i64) {
            self.step.store(step_ms, Ordering::SeqCst);
        }
    }

    impl Clock for ManualClock {
        fn now_ms(&self) -> i64 {
            self.now.fetch_add(self.step.load(Ordering::SeqCst), Ordering::SeqCst)
        }
    }
}
