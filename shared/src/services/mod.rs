//! Services: the submitter and the run driver, over the model and the store, talking to AWS through narrow ports.
//!
//! `batch` (the Batch port) and `announce` (completion events and run metrics) are the
//! ports with their AWS adapters; `config_cache` reads the published configuration;
//! `submitter` submits one job exactly once; `runs` drives pipeline runs and `sweep`
//! repairs them; `stuck` watches queues for jobs that cannot start; `resize` resubmits single jobs that ran out of memory; `ports` builds the AWS adapters of them all once per container.
//! Each takes its ports as trait objects, so tests swap in the in-memory
//! store and Batch.

pub mod announce;
pub mod batch;
pub mod clock;
pub mod config_cache;
pub mod ports;
pub mod resize;
pub mod runs;
pub mod stuck;
pub mod submitter;
pub mod sweep;

#[cfg(any(test, feature = "testing"))]
pub mod memory_batch;

#[cfg(test)]
mod tests;
