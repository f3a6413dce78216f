//! Coalesced S3 triggers: the objects one trigger matches within a window go to one run of one array job, each object on exactly one line of one list.
//!
//! A trigger with `Coalesce` does not start a job per object. submit forwards each object
//! it matches to the coalesce lane (a "Batchline Coalesce Object" event, which a rule puts
//! on the template's `CoalesceQueue`); the map worker appends the objects to the trigger's
//! open window (a head item and chunks of object lines in the table) and closes the window
//! when `WindowSeconds` have passed since it opened (a message it sent itself, delayed by
//! SQS) or when it holds `MaxObjects`. Closing claims every object once (an `OBJECT#` item
//! per object: a duplicate already in another window is dropped there), writes the
//! window's list (one `s3://bucket/key` a line, [`list_text`]) and starts one run: of the
//! trigger's pipeline, with the run parameter `objects` naming the list, or — for a job
//! definition — of the one-stage map pipeline [`window_pipeline`] builds, whose children
//! follow the map stages' contract. Everything after that start is a map's: the array,
//! resizing the children that ran out of memory, the fan-in, redrive, the view.
//!
//! This module holds the pure parts: the settings, the messages, the positions of the
//! objects in the list once duplicates are dropped, the pipeline of a job definition's window.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::model::map::{MapSource, MapSpec, Tolerance};
use crate::model::pipeline::{Pipeline, Stage};
pub use crate::model::stack::Coalesce;
use crate::model::stack::{StackConfig, Target};

/// The detail type of the events submit puts for the coalesce lane.
pub const COALESCE_DETAIL_TYPE: &str = "Batchline Coalesce Object";
/// The run parameter holding the S3 URI of a window's list.
pub const OBJECTS_PARAMETER: &str = "objects";
/// The one stage of a job definition's window pipeline.
pub const WINDOW_STAGE: &str = "objects";
/// `WindowSeconds`: at most SQS's longest delay, which closes a window nobody adds to.
pub const WINDOW_SECONDS: std::ops::RangeInclusive<u32> = 1..=900;
/// `MaxObjects`: at most what one array job can run (Batch's array size limit).
pub const MAX_OBJECTS: std::ops::RangeInclusive<u32> = 2..=10_000;

/// One object on its way to a window: the detail of a "Batchline Coalesce Object" event.
/// Its identity is bucket, key and version (S3's sequencer): a re-upload is a new object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CoalescedObject {
    /// The stack whose trigger matched it (its `NamePrefix`): the stack's rule takes only its own.
    pub stack: String,
    pub trigger: String,
    pub bucket: String,
    pub key: String,
    pub version: String,
    pub size: u64,
}

impl CoalescedObject {
    /// `s3://bucket/key`: the object's line in the window's list.
    pub fn uri(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.key)
    }

    /// What tells two objects apart (two deliveries of one object are the same).
    pub fn identity(&self) -> (&str, &str, &str) {
        (&self.bucket, &self.key, &self.version)
    }
}

/// The message that closes a window nobody adds to: sent, delayed by `WindowSeconds`, by
/// the worker that opens the window, before it opens it (so no window is left without one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CloseWindow {
    pub trigger: String,
    pub window: u64,
    /// The opener's Lambda deadline (ms): a close for a window never opened is dropped only
    /// once the opener cannot be running any more.
    pub opener_deadline_ms: i64,
}

/// What a message on the coalesce lane carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoalesceMessage {
    /// An object a coalescing trigger matched (the body is the EventBridge event).
    Object(CoalescedObject),
    /// A window's close (the body is `{"closeWindow": {...}}`).
    Close(CloseWindow),
}

impl CoalesceMessage {
    /// Reads a message body: an EventBridge event of [`COALESCE_DETAIL_TYPE`], or a close.
    pub fn parse(body: &str) -> Result<CoalesceMessage, String> {
        let value: serde_json::Value = serde_json::from_str(body).map_err(|e| format!("not JSON: {e}"))?;
        if let Some(close) = value.get("closeWindow") {
            return serde_json::from_value(close.clone())
                .map(CoalesceMessage::Close)
                .map_err(|e| format!("not a window's close: {e}"));
        }
        if value.get("detail-type").and_then(|d| d.as_str()) != Some(COALESCE_DETAIL_TYPE) {
            return Err(format!("neither a {COALESCE_DETAIL_TYPE:?} event nor a window's close"));
        }
        serde_json::from_value(value["detail"].clone())
            .map(CoalesceMessage::Object)
            .map_err(|e| format!("not a {COALESCE_DETAIL_TYPE:?} event: {e}"))
    }

    /// The body of a close message.
    pub fn close_body(close: &CloseWindow) -> String {
        serde_json::json!({ "closeWindow": close }).to_string()
    }
}

/// The name of the pipeline a job definition trigger's windows run: `s3.<trigger>` (a `.`
/// is never in a declared pipeline's key, so the two cannot clash).
pub fn window_pipeline_name(trigger: &str) -> String {
    format!("s3.{trigger}")
}

/// The idempotency key of a window's run: one run per window, however often it is closed.
/// The moment it opened is part of it: a window number used again after its items expired
/// (90 days) is another window, with another run.
pub fn window_run_key(trigger: &str, window: u64, opened_at: i64) -> String {
    format!("coalesce:{trigger}:{window}:{opened_at}")
}

/// The pipeline a window of trigger `key` runs: the trigger's own pipeline, or — for a job
/// definition — one map stage of it over the window's list (`Map: {Manifest: "{objects}"}`)
/// at the definition's size, queue, resizes and timeout, no failure tolerated.
pub fn window_pipeline(config: &StackConfig, key: &str) -> Result<Pipeline, String> {
    let trigger = config.triggers.s3.get(key).ok_or_else(|| format!("there is no S3 trigger {key:?}"))?;
    let coalesce = trigger.coalesce.ok_or_else(|| format!("the S3 trigger {key:?} does not coalesce"))?;
    match &trigger.target {
        Target::Pipeline(name) => {
            config.pipelines.get(name).cloned().ok_or_else(|| format!("there is no pipeline {name:?}"))
        }
        Target::JobDefinition(definition_key) => {
            let definition = config
                .job_definitions
                .get(definition_key)
                .ok_or_else(|| format!("there is no job definition {definition_key:?}"))?;
            let capacity = config.queue_for(definition).and_then(|q| config.queue_capacity(q));
            let stage = Stage {
                job_definition: definition_key.clone(),
                size: definition.size,
                parameters: BTreeMap::new(),
                queue: definition.queue.clone(),
                after: vec![],
                max_resizes: definition.max_resizes,
                timeout_seconds: definition.timeout_seconds,
                max_vcpus: capacity,
                expected_seconds: None,
                retry: None,
                map: Some(MapSpec {
                    source: MapSource::Manifest { uri: format!("{{{OBJECTS_PARAMETER}}}") },
                    items_per_child: coalesce.items_per_child,
                    tolerated_failures: Tolerance::Count(0),
                    max_concurrency: None,
                }),
            };
            Ok(Pipeline {
                name: window_pipeline_name(key),
                stages: BTreeMap::from([(WINDOW_STAGE.to_owned(), stage)]),
                on_failure: None,
                on_stage_failure: Default::default(),
                max_run_seconds: None,
                max_run_cost_usd: None,
            })
        }
    }
}

/// A window's objects, each once, in the order their claims are tried: by bucket, key and
/// version (deliveries of one object collapse to the first).
pub fn candidates(objects: impl IntoIterator<Item = CoalescedObject>) -> Vec<CoalescedObject> {
    let mut seen = BTreeSet::new();
    let mut all: Vec<CoalescedObject> = objects.into_iter().collect();
    all.sort_by(|a, b| a.identity().cmp(&b.identity()));
    all.retain(|o| seen.insert((o.bucket.clone(), o.key.clone(), o.version.clone())));
    all
}

/// Where each kept candidate goes in the list once the `dropped` ones (claimed by another
/// window) are left out: `(rank in candidates, position in the list)`, by position. The
/// list is the candidates in order, each dropped one's place taken by the last kept ones
/// (the places past the list's end): a claim written at the candidate's rank before any
/// drop was known stays right, but for the few moved.
pub fn positions(candidates: usize, dropped: &BTreeSet<usize>) -> Vec<(usize, usize)> {
    let kept = candidates - dropped.iter().filter(|r| **r < candidates).count();
    let mut movers = (kept..candidates).filter(|r| !dropped.contains(r));
    let mut placed = Vec::with_capacity(kept);
    for position in 0..kept {
        let rank = if dropped.contains(&position) { movers.next() } else { Some(position) };
        if let Some(rank) = rank {
            placed.push((rank, position));
        }
    }
    placed
}

/// A window's list: one `s3://bucket/key` a line, in position order.
pub fn list_text<'a>(objects: impl IntoIterator<Item = &'a CoalescedObject>) -> String {
    let mut text = String::new();
    for object in objects {
        text.push_str(&object.uri());
        text.push('\n');
    }
    text
}

/// Where a window's list is written: Batchline's own folder of the run's data (the job role
/// may read it, never write it).
pub fn list_uri(run_data: &str) -> String {
    format!("{run_data}_batchline/objects.txt")
}

/// Whether an object's key can be a line of a list (a key is any UTF-8; a line break in it
/// would make two lines).
pub fn listable_key(key: &str) -> bool {
    !key.contains(['\n', '\r'])
}

/// A job that ran (or runs) an object of a window: an array's child, a plain job, or a
/// resubmission of its child — which may or may not have run it: only the children that ran
/// out of memory are resubmitted, and the run's record does not keep which ones, nor their
/// index in the resubmission's own list (`array_index` is `None` there).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectJob {
    pub run_id: String,
    pub stage: String,
    pub attempt: u32,
    /// The child's map index: line `map_index` of the run's item lists.
    pub map_index: usize,
    pub job_id: Option<String>,
    pub array_index: Option<usize>,
    pub status: String,
    pub resubmission: bool,
}

/// The jobs of `run` that ran the object on line `position` of the window's list: in every
/// stage mapping over the list (`Map: {Manifest: "{objects}"}`), every attempt's array
/// holding its child, and that array's resubmissions.
pub fn jobs_of_object(run: &crate::model::run::Run, position: usize) -> Vec<ObjectJob> {
    let over_the_list = format!("{{{OBJECTS_PARAMETER}}}");
    let mut jobs = Vec::new();
    for (name, stage) in &run.pipeline.stages {
        let Some(map) = stage.map.as_ref() else { continue };
        if !matches!(&map.source, MapSource::Manifest { uri } if *uri == over_the_list) {
            continue;
        }
        let child = position / map.items_per_child.max(1) as usize;
        let Some(stage_run) = run.stages.get(name) else { continue };
        for attempt in &stage_run.attempts {
            let Some(progress) = attempt.map.as_ref() else { continue };
            let holding = progress
                .arrays
                .iter()
                .enumerate()
                .find(|(_, a)| a.resubmits.is_none() && a.first <= child && child < a.first + a.size);
            let Some((k, array)) = holding else { continue };
            let line = |array: &crate::model::run::map::ArrayRun, index: Option<usize>, resubmission: bool| ObjectJob {
                run_id: run.run_id.clone(),
                stage: name.clone(),
                attempt: attempt.number,
                map_index: child,
                job_id: array.job_id.clone(),
                array_index: index,
                status: serde_json::to_value(array.status)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                resubmission,
            };
            jobs.push(line(array, (array.size > 1).then_some(child - array.first), false));
            // Its resubmissions, and theirs (a child resized twice), in the order submitted.
            let mut chain = BTreeSet::from([k]);
            for (j, resubmitted) in progress.arrays.iter().enumerate() {
                if resubmitted.resubmits.as_ref().is_some_and(|r| chain.contains(&r.of)) {
                    chain.insert(j);
                    jobs.push(line(resubmitted, None, true));
                }
            }
        }
    }
    jobs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(key: &str, version: &str) -> CoalescedObject {
        CoalescedObject {
            stack: "s".into(),
            trigger: "t".into(),
            bucket: "b".into(),
            key: key.into(),
            version: version.into(),
            size: 1,
        }
    }

    #[test]
    fn candidates_are_sorted_and_each_object_once() {
        let got = candidates(vec![object("c", "1"), object("a", "1"), object("c", "1"), object("a", "2")]);
        let keys: Vec<_> = got.iter().map(|o| (o.key.as_str(), o.version.as_str())).collect();
        assert_eq!(keys, [("a", "1"), ("a", "2"), ("c", "1")]);
    }

    #[test]
    fn positions_fill_dropped_places_from_the_end() {
        assert_eq!(positions(4, &BTreeSet::new()), [(0, 0), (1, 1), (2, 2), (3, 3)]);
        // 1 dropped: the last candidate takes its place.
        assert_eq!(positions(4, &BTreeSet::from([1])), [(0, 0), (3, 1), (2, 2)]);
        // A dropped one past the list's end moves nobody into its place.
        assert_eq!(positions(4, &BTreeSet::from([0, 3])), [(2, 0), (1, 1)]);
        assert_eq!(positions(2, &BTreeSet::from([0, 1])), []);
    }

    #[test]
    fn positions_are_a_permutation_of_the_kept() {
        for dropped in [vec![], vec![0], vec![5, 6, 9], vec![0, 1, 2, 3, 4, 5, 6, 7, 8, 9], vec![2, 7]] {
            let dropped: BTreeSet<usize> = dropped.into_iter().collect();
            let placed = positions(10, &dropped);
            let ranks: BTreeSet<usize> = placed.iter().map(|(r, _)| *r).collect();
            let expected: BTreeSet<usize> = (0..10).filter(|r| !dropped.contains(r)).collect();
            assert_eq!(ranks, expected);
            let places: Vec<usize> = placed.iter().map(|(_, p)| *p).collect();
            assert_eq!(places, (0..expected.len()).collect::<Vec<_>>());
        }
    }

    #[test]
    fn messages_read_back() {
        let close = CloseWindow { trigger: "t".into(), window: 7, opener_deadline_ms: 5 };
        assert_eq!(CoalesceMessage::parse(&CoalesceMessage::close_body(&close)), Ok(CoalesceMessage::Close(close)));
        let event = serde_json::json!({"detail-type": COALESCE_DETAIL_TYPE, "detail": object("k", "v")});
        assert_eq!(CoalesceMessage::parse(&event.to_string()), Ok(CoalesceMessage::Object(object("k", "v"))));
        assert!(CoalesceMessage::parse("{}").is_err());
        assert!(CoalesceMessage::parse("not json").is_err());
    }

    #[test]
    fn list_is_one_uri_a_line() {
        assert_eq!(list_text(&[object("a/1", "v"), object("b", "v")]), "s3://b/a/1\ns3://b/b\n");
        assert!(!listable_key("a\nb"));
    }
}
