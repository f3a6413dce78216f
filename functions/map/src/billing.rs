//! A closed map's cost: its children's tasks (every attempt of each) read with DescribeJobs, 100 children a call, and summed per array by cluster and architecture.
//!
//! A child's job id is its parent's with `:<index>`, so no listing is needed: an array of
//! 10,000 children is 100 DescribeJobs calls, once, when the map closes. A plain job (a
//! map's array of one child) is its own child. The run records the sums, a handful of
//! facts per array, and prices them as it prices a job ([`batchline::model::cost::Pricing::price_sums`]).

use batchline::model::cost::{add_billed, billed_tasks, BilledSum};
use batchline::model::run::MapProgress;
use batchline::services::ports::BatchPort;
use batchline::Error;

/// The most jobs one DescribeJobs call takes.
pub const DESCRIBE_AT_ONCE: usize = 100;

/// Each of `map`'s arrays' children's tasks, summed, in the order of its arrays (an array
/// never submitted: none). A child Batch no longer knows is left out.
pub async fn children_billed(batch: &dyn BatchPort, map: &MapProgress) -> Result<Vec<Vec<BilledSum>>, Error> {
    let mut out = Vec::with_capacity(map.arrays.len());
    for array in &map.arrays {
        let mut sums = Vec::new();
        if let Some(job) = &array.job_id {
            let ids: Vec<String> = match array.size {
                1 => vec![job.clone()],
                size => (0..size).map(|index| format!("{job}:{index}")).collect(),
            };
            for chunk in ids.chunks(DESCRIBE_AT_ONCE) {
                for event in batch.describe_jobs(chunk).await? {
                    add_billed(&mut sums, event.detail.cpu_architecture(), &billed_tasks(&event.detail));
                }
            }
        }
        out.push(sums);
    }
    Ok(out)
}
