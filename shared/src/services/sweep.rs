//! The repair sweep: finishes what lost events left undone in running runs.
//!
//! For every run of every configured pipeline that is not done with — running, or ended
//! but not yet announced (all of them, page by page through the run index) — it submits what the record has planned and applies the outcome of every
//! stage job that ended in Batch without the record knowing (an event lost after all
//! retries), as its event would have. A run that cannot be repaired is logged and counted
//! and the sweep goes on; a stage that can never be submitted fails its run (see the run
//! driver). Not yet: a time budget with a cursor, and runs of pipelines removed from the
//! configuration.

use tracing::{info, warn};

use crate::model::batch_event::JobStatus;
use crate::model::run::Applied;
use crate::services::runs::RunDriver;
use crate::Error;

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SweepReport {
    pub runs_checked: usize,
    pub transitions_applied: usize,
    /// Runs the sweep could not repair this time (each logged with why).
    pub runs_failed: usize,
}

impl RunDriver<'_> {
    /// Sweeps every run not done with, of every configured pipeline. One run's failure is logged
    /// and counted, never the end of the sweep: the others are still repaired.
    pub async fn sweep(&self, now_ms: i64) -> Result<SweepReport, Error> {
        let config = self.configs.get().await?;
        let mut report = SweepReport::default();
        for pipeline in config.pipelines.keys() {
            for summary in self.runs.open_runs(pipeline).await? {
                report.runs_checked += 1;
                match self.sweep_run(&summary.run_id, now_ms).await {
                    Ok(applied) => report.transitions_applied += applied,
                    Err(err) => {
                        warn!(run_id = %summary.run_id, error = %err, "the sweep could not repair this run; going on");
                        report.runs_failed += 1;
                    }
                }
            }
        }
        Ok(report)
    }

    /// Drives one run and applies the outcome of every stage job that ended in Batch
    /// without the record knowing. Returns how many transitions it applied.
    async fn sweep_run(&self, run_id: &str, now_ms: i64) -> Result<usize, Error> {
        let Some(record) = self.runs.load_run(run_id).await? else { return Ok(0) };
        let run = self.drive(record, now_ms).await?.run;
        let open = run.open_jobs();
        if open.is_empty() {
            return Ok(0);
        }
        let ids: Vec<String> = open.iter().map(|(_, job)| job.clone()).collect();
        let described = self.batch.describe_jobs(&ids).await?;
        let mut applied = 0;
        for (stage, job_id) in &open {
            let Some(event) = described.iter().find(|e| &e.detail.job_id == job_id) else { continue };
            if !matches!(event.detail.status, JobStatus::Succeeded | JobStatus::Failed) {
                continue;
            }
            if self.advance(&run.run_id, stage, event, now_ms).await? == Applied::Changed {
                let status = event.detail.status.as_str();
                info!(run_id = %run.run_id, stage, job_id, status, "sweep applied a missed transition");
                applied += 1;
            }
        }
        Ok(applied)
    }
}
