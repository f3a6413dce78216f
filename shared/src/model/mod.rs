//! The model: Batchline's decisions as pure functions and data, with no AWS calls.
//!
//! `fargate` (sizes) ← `job_request` (names, tags, limits) ← `batch_event` (job state
//! changes) ← `cost` (what a job's tasks cost) ← `metrics` (what an event publishes); `retry` (Batch's retry rules) ←
//! `pipeline` (the deployed DAG) ← `run`
//! (the state machine of one run) and `stack` (the deployed configuration) ← `stuck` (jobs
//! waiting past their queue's limit, diagnosed); `map` (map stages' items, children and
//! arrays) uses nothing else. Arrows point
//! at what a module uses; nothing here imports `store` or `services`.

pub mod batch_event;
pub mod coalesce;
pub mod cost;
pub mod fargate;
pub mod job_request;
pub mod map;
pub mod metrics;
pub mod pipeline;
pub mod retry;
pub mod run;
pub mod stack;
pub mod stuck;
