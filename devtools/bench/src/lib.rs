//! The benchmark's measurements, as a library: the `batchline-bench` binary runs them all, and the integration tests check the bill's call counting against the emulator's own.

pub mod bill;
pub mod bill_table;
pub mod burst;
pub mod fixed_reply;
pub mod lanes;
pub mod maps;
pub mod measure;
pub mod prices;
pub mod read_units;
pub mod write_units;
