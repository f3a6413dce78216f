//! Services: the submitter, the run driver, the sweep, the stuck-job watch and single-job resizing, over the model and the store, reaching the rest of AWS through the ports.
//!
//! [`ports`] holds every trait through which the services reach Batch, the announcer and
//! the clock (the table's are the store's traits); `config_cache` reads the published
//! stack configuration; `submitter` submits one job exactly once; `runs` drives pipeline
//! runs and `sweep` repairs them; `stuck` watches queues for jobs that cannot start;
//! `resize` resubmits single jobs that ran out of memory; `announce` says what an ended run
//! announces. Each takes its ports as trait objects, so tests swap in the in-memory store
//! and Batch (the `testing` feature); the AWS adapters are in [`crate::adapters`].

pub mod announce;
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
