//! Checking an ended array's failed children: which ran out of memory (Batch's reason), and their item list for the array that resubmits them one size up.
//!
//! The list (`resize-of-<k>-<token>.jsonl` beside the map's other lists) holds the
//! children's lines as they were, each keeping its map `index`; line `i` is the work of the
//! new array's child `i`. Two workers checking the same array write a list each, and the
//! run keeps the first answer, with its list.

use batchline::model::map::{S3Location, MAX_LIST_BYTES};
use batchline::model::run::{is_out_of_memory_reason, MapProgress};
use batchline::Error;

use tracing::warn;

use crate::children::{failed_children, ArrayChildren};
use crate::objects::Objects;

/// What the check found: how many children ran out of memory, and where their list is
/// (empty when none did).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    pub out_of_memory: usize,
    pub list: String,
}

/// Checks array `array` of `map`; `token` tells this invocation's list apart from another's.
/// What cannot be read for good (no such array or job, its item list gone) is answered as
/// no child out of memory, so the map goes on to its close rather than waiting for ever;
/// the children then count as failed.
pub async fn check(
    objects: &dyn Objects,
    batch: &dyn ArrayChildren,
    map: &MapProgress,
    array: usize,
    token: &str,
) -> Result<Checked, Error> {
    match read_and_write(objects, batch, map, array, token).await {
        Err(Error::InvalidEvent(why)) => {
            warn!(array, why, "the array cannot be checked; its failed children count as failed");
            Ok(Checked { out_of_memory: 0, list: String::new() })
        }
        Err(Error::Aws { code, message, .. }) if code == "NoSuchKey" => {
            warn!(array, message, "the array's item list is gone; its failed children count as failed");
            Ok(Checked { out_of_memory: 0, list: String::new() })
        }
        other => other,
    }
}

async fn read_and_write(
    objects: &dyn Objects,
    batch: &dyn ArrayChildren,
    map: &MapProgress,
    array: usize,
    token: &str,
) -> Result<Checked, Error> {
    let slot = map.arrays.get(array).ok_or_else(|| Error::InvalidEvent(format!("the map has no array {array}")))?;
    let job = slot.job_id.as_deref().ok_or_else(|| Error::InvalidEvent(format!("array {array} has no job")))?;
    let ends = failed_children(batch, job, slot.size).await?;
    let indexes: Vec<usize> =
        ends.iter().filter(|(_, end)| is_out_of_memory_reason(end.reason.as_deref())).map(|(i, _)| *i).collect();
    if indexes.is_empty() {
        return Ok(Checked { out_of_memory: 0, list: String::new() });
    }
    let at = |uri: &str| S3Location::parse(uri).map_err(Error::InvalidEvent);
    let text = objects.read(&at(&map.item_list(array))?, MAX_LIST_BYTES).await?;
    let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).take(slot.size).collect();
    let picked: String = indexes.iter().filter_map(|i| lines.get(*i)).map(|line| format!("{line}\n")).collect();
    // This invocation's own list: a second check racing this one never overwrites it.
    let list = format!("{}resize-of-{array}-{token}.jsonl", map.lists);
    objects.write(&at(&list)?, picked.clone()).await?;
    Ok(Checked { out_of_memory: picked.lines().count(), list })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_batchs_out_of_memory_reason_counts() {
        assert!(is_out_of_memory_reason(Some("OutOfMemoryError: Container killed due to memory usage")));
        assert!(!is_out_of_memory_reason(Some("Essential container in task exited")));
        assert!(!is_out_of_memory_reason(None));
    }
}
