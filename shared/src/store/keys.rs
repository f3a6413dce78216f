//! Every key of the single table, written once: partition `pk`, sort `sk`, by item kind.
//!
//! | item | `pk` | `sk` |
//! |---|---|---|
//! | the published configuration | `CONFIG` | `CURRENT` |
//! | a submission claim | `IDEM#<40 hex of SHA-256(idempotency key)>` | `CLAIM` |
//! | a caller's idempotency key's live generation | `IDEM#<40 hex of SHA-256(the key's first generation)>` | `GENERATION` |
//! | a counted event | `EVENT#<EventBridge id>` | `EVENT` |
//! | a run | `RUN#<run id>` | `RUN` |
//! | a run's index line | `PIPELINE#<pipeline>` | `RUN#<created at, 13 digits>#<run id>` |
//! | a run not done with, on the open-run list | `OPEN` | `RUN#<created at, 13 digits>#<run id>` |
//! | the sweep's cursor | `OPEN` | `SWEEP` |
//! | a coalescing trigger's window | `COALESCE#<trigger>` | `WINDOW#<window, 10 digits>` |
//! | a chunk of a window's objects | `COALESCE#<trigger>` | `CHUNK#<window, 10 digits>#<opened at, 13 digits>#<token>` |
//! | an object's claim by a window | `OBJECT#<40 hex of SHA-256(bucket, key)>` | `<trigger>#<version>` |
//!
//! A new item kind is added here and in the book's table reference (docs/src/reference/table.md), nowhere else.

use crate::model::job_request::digest;

pub const CONFIG_PK: &str = "CONFIG";
pub const CONFIG_SK: &str = "CURRENT";
pub const CLAIM_SK: &str = "CLAIM";
pub const GENERATION_SK: &str = "GENERATION";
pub const EVENT_SK: &str = "EVENT";
pub const RUN_SK: &str = "RUN";
/// The sort key prefix of index and open-run lines, for `begins_with`.
pub const INDEX_SK_PREFIX: &str = "RUN#";
/// The one partition of the open-run list (and the sweep's cursor beside it).
pub const OPEN_PK: &str = "OPEN";
pub const SWEEP_SK: &str = "SWEEP";

pub fn claim_pk(idempotency_key: &str) -> String {
    format!("IDEM#{}", digest(idempotency_key, 40))
}

pub fn event_pk(event_id: &str) -> String {
    format!("EVENT#{event_id}")
}

pub fn run_pk(run_id: &str) -> String {
    format!("RUN#{run_id}")
}

pub fn pipeline_pk(pipeline: &str) -> String {
    format!("PIPELINE#{pipeline}")
}

/// Sorts a pipeline's runs (and the open-run list) by creation time.
pub fn index_sk(created_at: i64, run_id: &str) -> String {
    format!("{INDEX_SK_PREFIX}{created_at:013}#{run_id}")
}

/// The sort key prefix of a trigger's window heads, for `begins_with`.
pub const WINDOW_SK_PREFIX: &str = "WINDOW#";

pub fn coalesce_pk(trigger: &str) -> String {
    format!("COALESCE#{trigger}")
}

/// Sorts a trigger's windows by number.
pub fn window_sk(window: u64) -> String {
    format!("{WINDOW_SK_PREFIX}{window:010}")
}

/// The sort key prefix of a window's chunks: the window's number and the moment it opened,
/// so that a number used again (after its items expired) never reads another window's chunks.
pub fn chunks_sk_prefix(window: u64, opened_at: i64) -> String {
    format!("CHUNK#{window:010}#{opened_at:013}#")
}

pub fn chunk_sk(window: u64, opened_at: i64, token: &str) -> String {
    format!("{}{token}", chunks_sk_prefix(window, opened_at))
}

/// One partition per object key, whatever its version and trigger.
pub fn object_pk(bucket: &str, key: &str) -> String {
    format!("OBJECT#{}", digest(&format!("{bucket}\n{key}"), 40))
}

pub fn object_sk(trigger: &str, version: &str) -> String {
    format!("{trigger}#{version}")
}
