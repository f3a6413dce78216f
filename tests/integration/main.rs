//! Integration tests against the local AWS emulator.

mod emulator;
mod player;
