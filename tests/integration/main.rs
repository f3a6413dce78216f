//! Integration tests against the local AWS emulator.

mod emulator;
mod job_events;
mod player;
