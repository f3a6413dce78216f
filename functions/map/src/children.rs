//! An array's failed children as Batch lists them (ListJobs by `arrayJobId`, status FAILED), behind a narrow port.

use std::collections::BTreeMap;

use async_trait::async_trait;
use batchline::Error;

/// How a child ended, as Batch reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChildEnd {
    pub exit_code: Option<i64>,
    pub reason: Option<String>,
}

/// The children of Batch's array jobs.
#[async_trait]
pub trait ArrayChildren: Send + Sync {
    /// The failed children of the array job `parent`, by their index in it.
    async fn failed(&self, parent: &str) -> Result<BTreeMap<usize, ChildEnd>, Error>;
    /// How a plain job (a map's array of one child) ended.
    async fn plain(&self, job_id: &str) -> Result<ChildEnd, Error>;
}

/// The failed children of an array job of `size` children, by index: listed for an array,
/// read with DescribeJobs for a plain job (a map's array of one child, index 0).
pub async fn failed_children(
    batch: &dyn ArrayChildren,
    job: &str,
    size: usize,
) -> Result<BTreeMap<usize, ChildEnd>, Error> {
    if size > 1 {
        batch.failed(job).await
    } else {
        Ok(BTreeMap::from([(0, batch.plain(job).await?)]))
    }
}

/// Batch through the SDK.
pub struct SdkArrayChildren {
    client: aws_sdk_batch::Client,
}

impl SdkArrayChildren {
    pub fn new(client: aws_sdk_batch::Client) -> SdkArrayChildren {
        SdkArrayChildren { client }
    }
}

#[async_trait]
impl ArrayChildren for SdkArrayChildren {
    async fn failed(&self, parent: &str) -> Result<BTreeMap<usize, ChildEnd>, Error> {
        let mut failed = BTreeMap::new();
        let mut token = None;
        loop {
            let page = self
                .client
                .list_jobs()
                .array_job_id(parent)
                .job_status(aws_sdk_batch::types::JobStatus::Failed)
                .max_results(1000)
                .set_next_token(token)
                .send()
                .await
                .map_err(|e| Error::aws("ListJobs", e))?;
            for child in page.job_summary_list() {
                // A child without an index (or a negative one) is no child of this array.
                let index = child.array_properties().and_then(|a| a.index()).and_then(|i| usize::try_from(i).ok());
                let Some(index) = index else { continue };
                let container = child.container();
                let reason = container.and_then(|c| c.reason()).or(child.status_reason());
                let end = ChildEnd {
                    exit_code: container.and_then(|c| c.exit_code()).map(i64::from),
                    reason: reason.map(str::to_owned),
                };
                failed.insert(index, end);
            }
            token = page.next_token().map(str::to_owned);
            if token.is_none() {
                return Ok(failed);
            }
        }
    }

    async fn plain(&self, job_id: &str) -> Result<ChildEnd, Error> {
        let described =
            self.client.describe_jobs().jobs(job_id).send().await.map_err(|e| Error::aws("DescribeJobs", e))?;
        let Some(job) = described.jobs().first() else { return Ok(ChildEnd::default()) };
        let container = job.attempts().last().and_then(|a| a.container());
        let exit_code = container.and_then(|c| c.exit_code()).or(job.container().and_then(|c| c.exit_code()));
        let reason = container.and_then(|c| c.reason()).or(job.container().and_then(|c| c.reason()));
        Ok(ChildEnd { exit_code: exit_code.map(i64::from), reason: reason.or(job.status_reason()).map(str::to_owned) })
    }
}
