//! Sizes a caller asks for (`POST /jobs`, a redrive's per-stage sizes): read as Fargate sizes, snapped up, and held to what the queue can run.

use batchline::model::fargate::{Size, SizeError};
use batchline::model::job_request::RequestError;

use super::body::Number;

/// A size a caller asked for (see [`Size::parse_requested`]: one half alone keeps the other
/// from `default` and snaps up), and whether it differs from what was asked; every problem,
/// naming its field.
pub fn requested_size(
    vcpu: Option<&Number>,
    memory: Option<&Number>,
    default: Size,
) -> Result<(Size, bool), Vec<RequestError>> {
    let (vcpu, memory) = (vcpu.map(Number::text), memory.map(Number::text));
    Size::parse_requested(vcpu.as_deref(), memory.as_deref(), default).map_err(|errors| {
        let named = errors.iter().map(|err| match err {
            SizeError::BadVcpu(_) => RequestError::invalid("vcpu", format!("vcpu: {err}")),
            SizeError::BadMemory(_) => RequestError::invalid("memory", format!("memory: {err}")),
            _ => RequestError::invalid("", err.to_string()),
        });
        named.collect()
    })
}

/// The problem with `size` when `queue` (described for the caller) gives one job at most
/// `max_vcpus`, if that is known and not enough.
pub fn beyond_capacity(size: Size, max_vcpus: Option<u32>, queue: &str) -> Option<RequestError> {
    let max = max_vcpus.filter(|max| !size.fits_vcpus(*max))?;
    Some(RequestError::invalid(
        "vcpu",
        format!(
            "vcpu: {size} is more than {queue} can run: its compute environments allow at most {max} vCPU (MaxVcpus)"
        ),
    ))
}
