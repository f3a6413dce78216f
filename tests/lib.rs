//! Batchline's integration tests live in `integration/` (one test binary); this crate has no library code.
