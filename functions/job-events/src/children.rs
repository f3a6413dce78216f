//! Array children in the metrics lane: counted under their parent's pipeline and stage even when their events come without its tags.
//!
//! AWS's documentation does not say whether the events of an array job's children carry the
//! tags of the job submitted (the parent), and the metrics' `Pipeline` and `Stage`
//! dimensions come from them. So a child event without Batchline's tags is given its
//! parent's, read with DescribeJobs — one call for every parent of a batch not yet known,
//! and kept per container ([`ParentTags`]), so the cost is one call per array per container,
//! not per child.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use batchline::model::batch_event::JobStateChangeEvent;
use batchline::model::job_request::RUN_TAG;
use batchline::services::ports::BatchPort;
use batchline::Error;

/// The most parents remembered; past it the memory starts again (one DescribeJobs per
/// array per container is the cost either way).
const REMEMBERED_PARENTS: usize = 1_000;

type Tags = BTreeMap<String, String>;

/// Parents' tags, by parent job id, for as long as the container lives.
#[derive(Debug, Default)]
pub struct ParentTags(Mutex<HashMap<String, Tags>>);

/// Whether the event is an array child's that came without Batchline's tags.
pub fn needs_parent_tags(event: &JobStateChangeEvent) -> bool {
    untagged_childs_parent(event).is_some()
}

/// The parent of an array child's event that came without Batchline's tags.
fn untagged_childs_parent(event: &JobStateChangeEvent) -> Option<&str> {
    let detail = &event.detail;
    let child = detail.is_array_child();
    (child && detail.tag(RUN_TAG).is_none()).then(|| detail.job_id.split(':').next()).flatten()
}

impl ParentTags {
    /// The events as the metrics should count them: an untagged child with its parent's
    /// tags (the job's own tags win where both have one).
    /// Only those children are copied; every other event is lent back as it came (the
    /// metrics lane's batches are up to 250 events, nearly all of them not children).
    pub async fn tag_children<'e>(
        &self,
        events: &[&'e JobStateChangeEvent],
        batch: &dyn BatchPort,
    ) -> Result<Vec<Cow<'e, JobStateChangeEvent>>, Error> {
        let unknown: Vec<String> = {
            let known = self.0.lock().expect("the parent tags' lock is never poisoned");
            let mut unknown: Vec<String> = events
                .iter()
                .filter_map(|e| untagged_childs_parent(e))
                .filter(|p| !known.contains_key(*p))
                .map(str::to_owned)
                .collect();
            unknown.sort();
            unknown.dedup();
            unknown
        };
        if !unknown.is_empty() {
            // A parent Batch no longer describes is remembered without tags, so it is not
            // asked for again with every batch of its children.
            let mut found: HashMap<String, Tags> = unknown.iter().map(|p| (p.clone(), Tags::new())).collect();
            for chunk in unknown.chunks(100) {
                for parent in batch.describe_jobs(chunk).await? {
                    found.insert(parent.detail.job_id.clone(), parent.detail.tags.unwrap_or_default());
                }
            }
            let mut known = self.0.lock().expect("the parent tags' lock is never poisoned");
            if known.len() + found.len() > REMEMBERED_PARENTS {
                known.clear();
            }
            known.extend(found);
        }
        let known = self.0.lock().expect("the parent tags' lock is never poisoned");
        Ok(events
            .iter()
            .map(|&event| match untagged_childs_parent(event).and_then(|p| known.get(p)) {
                Some(tags) => {
                    let mut event = event.clone();
                    let mut merged = tags.clone();
                    merged.extend(event.detail.tags.take().unwrap_or_default());
                    event.detail.tags = Some(merged);
                    Cow::Owned(event)
                }
                None => Cow::Borrowed(event),
            })
            .collect())
    }
}
