//! The repair sweep: finishes what lost events left undone in running runs.
//!
//! For every running run of every configured pipeline it submits what the record has
//! planned and applies the outcome of every stage job that ended in Batch without the
//! record knowing (an event lost after all retries), as its event would have.

use tracing::info;

use crate::model::batch_event::JobStatus;
use crate::model::run::Applied;
use crate::services::runs::RunDriver;
use crate::Error;

/// How many of a pipeline's newest runs the sweep looks at.
const RUNS_PER_PIPELINE: i32 = 200;

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SweepReport {
    pub runs_checked: usize,
    pub transitions_applied: usize,
}

impl RunDriver<'_> {
    pub async fn sweep(&self, now_ms: i64) -> Result<SweepReport, Error> {
        let config = self.configs.get().await?;
        let mut report = SweepReport::default();
        for pipeline in config.pipelines.keys() {
            let summaries = self.runs.list_runs(pipeline, RUNS_PER_PIPELINE).await?;
            for summary in summaries.into_iter().filter(|s| s.status == "RUNNING") {
                report.runs_checked += 1;
                let Some(record) = self.runs.load_run(&summary.run_id).await? else { continue };
                let run = self.drive(record, now_ms).await?.run;
                let open = run.open_jobs();
                if open.is_empty() {
                    continue;
                }
                let ids: Vec<String> = open.iter().map(|(_, job)| job.clone()).collect();
                let described = self.batch.describe_jobs(&ids).await?;
                for (stage, job_id) in &open {
                    let Some(event) = described.iter().find(|e| &e.detail.job_id == job_id) else { continue };
                    if !matches!(event.detail.status, JobStatus::Succeeded | JobStatus::Failed) {
                        continue;
                    }
                    if self.advance(&run.run_id, stage, event, now_ms).await? == Applied::Changed {
                        let status = event.detail.status.as_str();
                        info!(run_id = %run.run_id, stage, job_id, status, "sweep applied a missed transition");
                        report.transitions_applied += 1;
                    }
                }
            }
        }
        Ok(report)
    }
}
