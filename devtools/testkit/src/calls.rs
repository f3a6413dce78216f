//! SDK interceptors for tests: count the AWS calls a client makes, make one operation fail, or hold one back.
//!
//! Attach with `aws_sdk_x::config::Builder::from(&sdk).interceptor(..)`. They act before
//! a request is serialised, so a failed call never reaches the emulator.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::{
    BeforeDeserializationInterceptorContextRef, BeforeSerializationInterceptorContextRef,
};
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;

fn operation(cfg: &ConfigBag) -> String {
    cfg.load::<Metadata>().map(|m| m.name().to_owned()).unwrap_or_default()
}

/// Counts calls by operation name (each call once, whatever its retries).
#[derive(Debug, Clone, Default)]
pub struct CallLog {
    counts: Arc<Mutex<BTreeMap<String, usize>>>,
}

impl CallLog {
    pub fn count(&self, operation: &str) -> usize {
        self.counts.lock().map(|c| c.get(operation).copied().unwrap_or_default()).unwrap_or_default()
    }
    pub fn all(&self) -> BTreeMap<String, usize> {
        self.counts.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

impl Intercept for CallLog {
    fn name(&self) -> &'static str {
        "batchline-testkit-call-log"
    }

    fn read_before_serialization(
        &self,
        _: &BeforeSerializationInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Ok(mut counts) = self.counts.lock() {
            *counts.entry(operation(cfg)).or_default() += 1;
        }
        Ok(())
    }
}

/// The next `times` calls of one operation: the shared countdown of the fault injectors.
#[derive(Debug, Clone)]
struct NextCalls {
    operation: &'static str,
    /// Calls to let through first.
    skip: Arc<AtomicUsize>,
    remaining: Arc<AtomicUsize>,
}

impl NextCalls {
    fn new(operation: &'static str, skip: usize, times: usize) -> Self {
        NextCalls { operation, skip: Arc::new(AtomicUsize::new(skip)), remaining: Arc::new(AtomicUsize::new(times)) }
    }

    /// Whether this call is one of them (and counts it).
    fn take(&self, cfg: &ConfigBag) -> bool {
        let countdown = |n: usize| n.checked_sub(1);
        operation(cfg) == self.operation
            && self.skip.fetch_update(Ordering::SeqCst, Ordering::SeqCst, countdown).is_err()
            && self.remaining.fetch_update(Ordering::SeqCst, Ordering::SeqCst, countdown).is_ok()
    }
}

/// Fails the next `times` calls of one operation before they are sent, as a lost
/// connection would.
#[derive(Debug, Clone)]
pub struct FailOperation(NextCalls);

impl FailOperation {
    pub fn new(operation: &'static str, times: usize) -> Self {
        FailOperation(NextCalls::new(operation, 0, times))
    }

    /// Fails `times` calls after letting the first `skip` through.
    pub fn after(operation: &'static str, skip: usize, times: usize) -> Self {
        FailOperation(NextCalls::new(operation, skip, times))
    }
}

impl Intercept for FailOperation {
    fn name(&self) -> &'static str {
        "batchline-testkit-fail-operation"
    }

    fn read_before_serialization(
        &self,
        _: &BeforeSerializationInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if self.0.take(cfg) {
            return Err(format!("{} failed on purpose (test)", self.0.operation).into());
        }
        Ok(())
    }
}

/// Lets the next `times` calls of one operation reach the service, then loses the answer:
/// the call fails though the service did the work (a dropped connection after the request).
#[derive(Debug, Clone)]
pub struct LoseResponse(NextCalls);

impl LoseResponse {
    pub fn new(operation: &'static str, times: usize) -> Self {
        LoseResponse(NextCalls::new(operation, 0, times))
    }
}

impl Intercept for LoseResponse {
    fn name(&self) -> &'static str {
        "batchline-testkit-lose-response"
    }

    fn read_before_deserialization(
        &self,
        _: &BeforeDeserializationInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if self.0.take(cfg) {
            return Err(format!("the answer to {} was lost (test)", self.0.operation).into());
        }
        Ok(())
    }
}

/// What a [`PauseOperation`] has seen.
#[derive(Debug, Default, PartialEq, Eq, Clone, Copy)]
enum Gate {
    #[default]
    Open,
    /// A call is held back.
    Holding,
    Released,
}

/// Holds back one call of an operation — the one after the first `skip` — until the test
/// releases it, so a test can let another writer act between two calls of one client.
/// It blocks the calling thread: use it on a multi-threaded runtime, and drive the other
/// writer from another task.
#[derive(Debug, Clone)]
pub struct PauseOperation {
    operation: &'static str,
    skip: Arc<AtomicUsize>,
    gate: Arc<(Mutex<Gate>, Condvar)>,
}

impl PauseOperation {
    pub fn new(operation: &'static str, skip: usize) -> Self {
        PauseOperation { operation, skip: Arc::new(AtomicUsize::new(skip)), gate: Arc::default() }
    }

    /// Whether a call is being held back, waiting up to `wait` for one.
    pub async fn holding(&self, wait: Duration) -> bool {
        let until = std::time::Instant::now() + wait;
        loop {
            if self.gate.0.lock().map(|g| *g == Gate::Holding).unwrap_or(false) {
                return true;
            }
            if std::time::Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Lets the held call (and every later one) go.
    pub fn release(&self) {
        if let Ok(mut gate) = self.gate.0.lock() {
            *gate = Gate::Released;
        }
        self.gate.1.notify_all();
    }
}

impl Intercept for PauseOperation {
    fn name(&self) -> &'static str {
        "batchline-testkit-pause-operation"
    }

    fn read_before_serialization(
        &self,
        _: &BeforeSerializationInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if operation(cfg) != self.operation
            || self.skip.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok()
        {
            return Ok(());
        }
        let (lock, released) = &*self.gate;
        let mut gate = lock.lock().map_err(|_| "the pause gate is poisoned")?;
        if *gate == Gate::Open {
            *gate = Gate::Holding;
        }
        while *gate == Gate::Holding {
            gate = released.wait(gate).map_err(|_| "the pause gate is poisoned")?;
        }
        Ok(())
    }
}
