//! Integration tests against the local AWS emulator.

mod bill;
mod bootstrap;
mod chaos;
mod cli;
mod coalesce;
mod common;
mod e2e;
mod emulator;
mod iam;
mod job_events;
mod local_stack;
mod maps;
mod observability;
mod pipelines;
mod player;
mod sample_events;
mod store;
mod submit;
mod template;
