//! The adapters of the services' ports to the world: Batch, EventBridge and CloudWatch through the AWS SDK, and the system clock.
//!
//! Each implements traits of [`crate::services::ports`]; nothing in [`crate::services`]
//! names them, only [`crate::wiring`] does, which builds them once per container.

pub mod announce;
pub mod batch;
pub mod clock;
