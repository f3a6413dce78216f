//! Test support for Batchline: the local AWS emulator harness, test Batch environments and the Batch event player.
//!
//! A library (not only tests) so the local end-to-end run can use the same pieces.

pub mod batch_env;
pub mod emulator;
pub mod player;
