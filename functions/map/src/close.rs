//! Closing a map: its children's outcomes read from Batch (only the failed ones are listed), `results.jsonl` written beside the item lists, and the failed children handed to the run.
//!
//! `results.jsonl` has one line per child in index order: `{"index", "status", "items",
//! "size"}`, `status` being `SUCCEEDED`, `FAILED`, or `NOT_RUN` (its array was never submitted: the
//! map had already failed past its tolerance). A child that ran out of memory and was
//! resubmitted one size up ends as its last run did, at that size. A redriven map's results
//! are the whole map's again: its children's lines, and the earlier successes carried over
//! from the results it was redriven from. The run's record lists at most
//! [`MAX_LISTED_FAILURES`] failed children and 8 KB of them; when there are more, every
//! one is in `failed.jsonl` and the record points at it.

use std::collections::BTreeMap;

use batchline::model::fargate::Size;
use batchline::model::map::{failed_items_uri, results_uri, ChildLine, ChildResult, S3Location, MAX_LIST_BYTES};
use batchline::model::run::map::MAX_LISTED_FAILURES;
use batchline::model::run::{FailedChild, MapProgress, StageStatus};
use batchline::model::stack::StackConfig;
use batchline::Error;
use serde_json::json;

use crate::children::{failed_children, ArrayChildren, ChildEnd};
use crate::objects::Objects;
use crate::Outcome;

/// The most bytes of failed children a run's record holds.
pub const MAX_LISTED_FAILURE_BYTES: usize = 8 * 1024;

/// What a close found: the failed children the run lists, and what to write: the results
/// (URI and JSON Lines) and, when the run lists only some failed children, all of them.
#[derive(Debug, Clone, PartialEq)]
pub struct Closing {
    pub failed_items: Vec<FailedChild>,
    pub results: (String, String),
    pub every_failure: Option<(String, String)>,
}

/// Reads how `map`'s children ended and makes its results for `run_id`'s folder of
/// `stage` ([`Closing::write`] writes them); `attempt_size` is the size its children ran at
/// unless their array says otherwise. A redrive's results keep the earlier successes (the
/// results it was redriven from). `Ok(Err(why))`: its item lists are gone, so no results
/// can be made.
pub async fn close(
    objects: &dyn Objects,
    batch: &dyn ArrayChildren,
    config: &StackConfig,
    run_id: &str,
    stage: &str,
    (map, attempt_size): (&MapProgress, Size),
) -> Outcome<Closing> {
    let Some(run_data) = config.roles.names.run_data_uri(run_id) else {
        return Ok(Err("a map stage needs the configuration's InputBucket and RunDataPrefix".into()));
    };
    // By map index: a child resubmitted one size up ends as its last array says.
    let mut ended: BTreeMap<usize, (ChildResult, Option<ChildEnd>)> = BTreeMap::new();
    for (k, array) in map.arrays.iter().enumerate() {
        let list = S3Location::parse(&map.item_list(k)).map_err(Error::InvalidEvent)?;
        let lines = match read_if_there(objects, &list).await? {
            Some(text) => text,
            None => {
                return Ok(Err(format!("the item list {} is gone: the map's results cannot be written", list.uri())))
            }
        };
        let ends: BTreeMap<usize, ChildEnd> = match (&array.job_id, array.failed) {
            (Some(job), 1..) => failed_children(batch, job, array.size).await?,
            _ => BTreeMap::new(),
        };
        let never_ran = array.job_id.is_none() || array.status == StageStatus::Skipped;
        let size = Some(array.child_size(attempt_size));
        // An array's children are its list's first `size` lines.
        for (i, text) in lines.lines().filter(|l| !l.is_empty()).take(array.size).enumerate() {
            let line: ChildLine =
                serde_json::from_str(text).map_err(|e| Error::InvalidEvent(format!("{}: {e}", list.uri())))?;
            let (status, end) = match ends.get(&i) {
                _ if never_ran => ("NOT_RUN", None),
                Some(end) => ("FAILED", Some(end.clone())),
                None => ("SUCCEEDED", None),
            };
            let result = ChildResult { index: line.index, status: status.into(), items: line.items, size };
            ended.insert(line.index, (result, end));
        }
    }
    let results_at = results_uri(&run_data, stage);
    let carried = match &map.redrive {
        Some(_) => match earlier_successes(objects, &results_at, &ended).await? {
            Ok(carried) => carried,
            Err(why) => return Ok(Err(why)),
        },
        None => BTreeMap::new(),
    };
    let mut results: BTreeMap<usize, String> = carried;
    let mut failed = Vec::new();
    for (index, (result, end)) in ended {
        results.insert(index, json!(result).to_string());
        if let Some(end) = end {
            failed.push(FailedChild { index, items: result.items, exit_code: end.exit_code, reason: end.reason });
        }
    }
    let listed = listed(&failed);
    let every_failure = (listed < failed.len()).then(|| {
        let all: String = failed.iter().map(|f| format!("{}\n", json!(f))).collect();
        (failed_items_uri(&run_data, stage), all)
    });
    failed.truncate(listed);
    let results = (results_at, results.into_values().map(|line| line + "\n").collect());
    Ok(Ok(Closing { failed_items: failed, results, every_failure }))
}

/// The lines of the map's results (before this redrive's close) of the children it did
/// not run again, by index: what the redriven attempt started from.
async fn earlier_successes(
    objects: &dyn Objects,
    results_at: &str,
    ran: &BTreeMap<usize, (ChildResult, Option<ChildEnd>)>,
) -> Outcome<BTreeMap<usize, String>> {
    let at = S3Location::parse(results_at).map_err(Error::InvalidEvent)?;
    let Some(text) = read_if_there(objects, &at).await? else {
        return Ok(Err(format!("{results_at} is gone: the redriven map's results cannot be written whole")));
    };
    let mut carried = BTreeMap::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        let result: ChildResult =
            serde_json::from_str(line).map_err(|e| Error::InvalidEvent(format!("{results_at}: {e}")))?;
        if !ran.contains_key(&result.index) {
            carried.insert(result.index, line.to_owned());
        }
    }
    Ok(Ok(carried))
}

/// An S3 object's text, or `None` when there is no such key.
pub(crate) async fn read_if_there(objects: &dyn Objects, at: &S3Location) -> Result<Option<String>, Error> {
    match objects.read(at, MAX_LIST_BYTES).await {
        Ok(text) => Ok(Some(text)),
        Err(Error::Aws { code, .. }) if code == "NoSuchKey" => Ok(None),
        Err(err) => Err(err),
    }
}

impl Closing {
    /// Writes the results (and every failed child, when the run lists only some), and
    /// returns where every failed child is listed, if it was written.
    pub async fn write(&self, objects: &dyn Objects) -> Result<Option<String>, Error> {
        let at = |uri: &str| S3Location::parse(uri).map_err(Error::InvalidEvent);
        objects.write(&at(&self.results.0)?, self.results.1.clone()).await?;
        match &self.every_failure {
            Some((uri, all)) => {
                objects.write(&at(uri)?, all.clone()).await?;
                Ok(Some(uri.clone()))
            }
            None => Ok(None),
        }
    }
}

/// How many of the failed children the run's record lists: at most
/// [`MAX_LISTED_FAILURES`], within [`MAX_LISTED_FAILURE_BYTES`].
fn listed(failed: &[FailedChild]) -> usize {
    let mut bytes = 0;
    let within = failed.iter().take(MAX_LISTED_FAILURES).take_while(|f| {
        bytes += json!(f).to_string().len();
        bytes <= MAX_LISTED_FAILURE_BYTES
    });
    within.count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_lists_at_most_a_hundred_failed_children_and_eight_kilobytes_of_them() {
        let child =
            |index, item: &str| FailedChild { index, items: vec![json!(item)], exit_code: Some(1), reason: None };
        let small: Vec<FailedChild> = (0..150).map(|i| child(i, "s3://b/k")).collect();
        assert_eq!(listed(&small), MAX_LISTED_FAILURES);
        let large: Vec<FailedChild> = (0..50).map(|i| child(i, &"x".repeat(500))).collect();
        assert_eq!(listed(&large), 14, "8 KB of ~560-byte lines");
        assert_eq!(listed(&small[..3]), 3);
    }
}
