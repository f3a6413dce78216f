//! Integration tests against the local AWS emulator.

mod bootstrap;
mod emulator;
mod job_events;
mod player;
