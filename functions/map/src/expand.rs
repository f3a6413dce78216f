//! Expanding a map: its items listed once (a snapshot of the prefix, the manifest's lines, or the run parameter's list), cut into children and arrays, and each array's item list written.
//!
//! The lists go to a folder of this expansion's own (`a<n>-<token>/` under the stage's
//! `_batchline/`): should two workers expand the same attempt at once, the run keeps the
//! first answer it records ([`batchline::model::run::map::MapExpanded`]), and the other's
//! lists are left unread rather than overwriting the ones the arrays read.
//!
//! A prefix is listed a page at a time within the invocation's time: when less than
//! [`RESERVE_MS`] is left and pages remain, the keys listed so far are written to
//! `listing.json` in this invocation's folder and the worker sends itself the same work
//! with `resume` naming that file (a "Batchline Map Work" event, through its own queue);
//! the next invocation goes on from the last key listed. Each piece keeps what it read in
//! its own folder, so a duplicated message makes two listings, of which the run keeps the
//! first to answer. Whatever the time, each invocation lists at least one page.
use std::collections::BTreeMap;

use batchline::model::map::{
    arrays, children, fill, inline_items, item_list, item_lists_folder, manifest_items, results_uri, too_large,
    ChildLine, MapSource, MapSpec, S3Location, MAX_LIST_BYTES, MAX_MAP_CHILDREN, MAX_MAP_ITEMS,
};
use batchline::model::run::Run;
use batchline::model::stack::StackConfig;
use batchline::services::ports::Clock;
use batchline::Error;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::objects::Objects;
use crate::Outcome;

/// What an expansion wrote: the number of children, and the folder of the item lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expansion {
    pub children: usize,
    pub lists: String,
}

/// How far an expansion got in this invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expanded {
    /// The items listed and the item lists written.
    Done(Expansion),
    /// Out of time with pages left: the listing so far is kept at this S3 URI, to resume.
    Unfinished { listing: String },
}

/// The time an expansion leaves itself after its last page: to write up to 100 item lists
/// (at most 256 MiB) and answer the run, which submits the arrays (up to 100 SubmitJob
/// calls, throttled at the account's ~50 a second).
pub const RESERVE_MS: i64 = 120_000;

/// When this invocation must stop listing: its deadline and clock.
pub struct Budget<'a> {
    pub deadline_ms: i64,
    pub clock: &'a dyn Clock,
}

impl Budget<'_> {
    fn running_out(&self) -> bool {
        self.deadline_ms - self.clock.now_ms() < RESERVE_MS
    }
}

/// One invocation's part of an expansion: which attempt, where its files go, and the
/// listing it goes on from (`MapWork::resume`).
pub struct Piece<'a> {
    pub stage: &'a str,
    pub attempt: u32,
    /// Tells this invocation's files apart from another's.
    pub token: &'a str,
    pub resume: Option<&'a str>,
}

/// The keys of a prefix listed so far: what `listing.json` holds.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Listing {
    /// The last key listed (matching or not): the next page starts after it.
    after: Option<String>,
    /// The keys kept so far (with the suffix, none of Batchline's own files).
    keys: Vec<String>,
}

/// Lists the items of a map attempt and writes its arrays' item lists, or as much of the
/// listing as time allows. `Ok(Err(why))`: no items can be had (a placeholder without a
/// value, a bucket not the stack's, a missing manifest, too many items): the stage fails
/// saying why. `Err`: a failure worth another try.
pub async fn expand(
    objects: &dyn Objects,
    config: &StackConfig,
    run: &Run,
    piece: &Piece<'_>,
    budget: &Budget<'_>,
) -> Outcome<Expanded> {
    let (stage, attempt) = (piece.stage, piece.attempt);
    let Some(spec) = run.stage(stage).and_then(|s| s.map.clone()) else {
        return Ok(Err(format!("stage {stage} is not a map stage")));
    };
    let Some(run_data) = config.roles.names.run_data_uri(&run.run_id) else {
        return Ok(Err("a map stage needs the configuration's InputBucket and RunDataPrefix".into()));
    };
    let lists = item_lists_folder(&run_data, stage, attempt, piece.token);
    // A listing to resume is one this attempt's expansion kept in its own folder; any other
    // file (a message not of the worker's) is not read: the listing starts anew.
    let own = item_lists_folder(&run_data, stage, attempt, "").trim_end_matches('/').to_owned();
    let resume = piece.resume.filter(|uri| {
        let kept = uri.starts_with(&own) && uri.ends_with("/listing.json");
        if !kept {
            tracing::warn!(resume = uri, "a listing to resume that is not this attempt's own: listed anew");
        }
        kept
    });
    let source = Source { objects, config, values: placeholder_values(run, &run_data), lists: &lists };
    let items = match source.items(&spec, resume, budget).await? {
        Ok(Items::All(items)) => items,
        Ok(Items::Unfinished { listing }) => return Ok(Ok(Expanded::Unfinished { listing })),
        Err(why) => return Ok(Err(why)),
    };
    let lines = children(items, spec.items_per_child);
    if let Some(why) = too_large(lines.len(), spec.max_concurrency) {
        return Ok(Err(why));
    }
    if lines.is_empty() {
        // No children: the map has ended, and its (empty) results are what a next stage reads.
        let results = S3Location::parse(&results_uri(&run_data, stage)).map_err(Error::InvalidEvent)?;
        objects.write(&results, String::new()).await?;
    }
    write_item_lists(objects, &lists, [lines.as_slice()], spec.max_concurrency).await?;
    Ok(Ok(Expanded::Done(Expansion { children: lines.len(), lists })))
}

/// Writes the item lists of runs of children under `lists`: each run cut into arrays of its
/// own (`max_concurrency` children at most, else Batch's largest), numbered
/// `array-<k>.jsonl` across the runs in order — as the run plans the arrays.
pub async fn write_item_lists<'a>(
    objects: &dyn Objects,
    lists: &str,
    runs: impl IntoIterator<Item = &'a [ChildLine]>,
    max_concurrency: Option<u32>,
) -> Result<(), Error> {
    let mut k = 0;
    for children in runs {
        for range in arrays(children.len(), max_concurrency) {
            let at = S3Location::parse(&format!("{lists}array-{k}.jsonl")).map_err(Error::InvalidEvent)?;
            objects.write(&at, item_list(&children[range])).await?;
            k += 1;
        }
    }
    Ok(())
}

/// What a map's `{name}` placeholders take: the run's parameters, `runId` and `runData`.
pub fn placeholder_values(run: &Run, run_data: &str) -> BTreeMap<String, String> {
    let mut values = run.input.parameters.clone();
    values.insert("runId".into(), run.run_id.clone());
    values.insert("runData".into(), run_data.to_owned());
    values
}

/// A map's items, or how far their listing got.
enum Items {
    All(Vec<Value>),
    Unfinished { listing: String },
}

/// Where a map's items come from, for one expansion.
struct Source<'a> {
    objects: &'a dyn Objects,
    config: &'a StackConfig,
    values: BTreeMap<String, String>,
    /// This invocation's folder.
    lists: &'a str,
}

impl Source<'_> {
    /// The map's items, in order: `Ok(Err(why))` when none can be had.
    async fn items(&self, spec: &MapSpec, resume: Option<&str>, budget: &Budget<'_>) -> Outcome<Items> {
        let limit = (MAX_MAP_CHILDREN * spec.items_per_child as usize).min(MAX_MAP_ITEMS);
        match &spec.source {
            MapSource::Prefix { uri, suffix } => {
                let at = match self.located(uri) {
                    Ok(at) => at,
                    Err(why) => return Ok(Err(why)),
                };
                match self.list(&at, suffix, limit, resume, budget).await {
                    Ok(listed) => Ok(Ok(listed)),
                    Err(err) => permanent_or_retry(err),
                }
            }
            MapSource::Manifest { uri } => {
                let at = match self.located(uri) {
                    Ok(at) => at,
                    Err(why) => return Ok(Err(why)),
                };
                let text = match self.objects.read(&at, MAX_LIST_BYTES).await {
                    Ok(text) => text,
                    Err(err) => return permanent_or_retry(err),
                };
                match manifest_items(&text) {
                    Ok(items) if items.len() > limit => Ok(Err(format!(
                        "the manifest {} lists {} items, more than the {limit} a map may have",
                        at.uri(),
                        items.len()
                    ))),
                    Ok(items) => Ok(Ok(Items::All(items))),
                    Err(why) => Ok(Err(format!("{}: {why}", at.uri()))),
                }
            }
            MapSource::Items { parameter } => match self.values.get(parameter) {
                None => Ok(Err(format!("the run has no parameter {parameter:?} for the map's Items"))),
                Some(value) => Ok(inline_items(parameter, value).map(Items::All)),
            },
        }
    }

    /// A map's S3 URI with its placeholders filled, refused outside the stack's InputBucket.
    fn located(&self, uri: &str) -> Result<S3Location, String> {
        let location = S3Location::parse(&fill(uri, &self.values)?)?;
        match self.config.roles.names.input_bucket.as_deref() {
            Some(bucket) if bucket == location.bucket => Ok(location),
            stack => Err(format!(
                "{} is not in the stack's InputBucket ({}): a map reads only that bucket",
                location.uri(),
                stack.unwrap_or("none is configured")
            )),
        }
    }

    /// The objects under a prefix whose keys end with `suffix` (as S3 URIs), page by page from
    /// where `resume` left off, until the last page or the budget runs out.
    async fn list(
        &self,
        at: &S3Location,
        suffix: &str,
        limit: usize,
        resume: Option<&str>,
        budget: &Budget<'_>,
    ) -> Result<Items, Error> {
        let mut listing = match resume {
            Some(uri) => {
                let text =
                    self.objects.read(&S3Location::parse(uri).map_err(Error::InvalidEvent)?, MAX_LIST_BYTES).await?;
                serde_json::from_str::<Listing>(&text)
                    .map_err(|e| Error::InvalidEvent(format!("{uri} is not a listing to resume: {e}")))?
            }
            None => Listing::default(),
        };
        loop {
            let page = self.objects.keys_page(&at.bucket, &at.key, listing.after.as_deref()).await?;
            listing.after = page.keys.last().cloned().or(listing.after);
            // Batchline's own files (a map over an earlier stage's output) are not items.
            let theirs = page.keys.into_iter().filter(|key| key.ends_with(suffix) && !key.contains("/_batchline/"));
            listing.keys.extend(theirs);
            if listing.keys.len() > limit {
                return Err(Error::InvalidEvent(format!(
                    "{} holds more than {limit} items, more than a map may have",
                    at.uri()
                )));
            }
            if !page.more {
                let uri = |key: String| Value::from(format!("s3://{}/{key}", at.bucket));
                return Ok(Items::All(listing.keys.into_iter().map(uri).collect()));
            }
            if budget.running_out() {
                let kept = S3Location::parse(&format!("{}listing.json", self.lists)).map_err(Error::InvalidEvent)?;
                let text = serde_json::to_string(&listing).map_err(|e| Error::InvalidEvent(e.to_string()))?;
                self.objects.write(&kept, text).await?;
                return Ok(Items::Unfinished { listing: kept.uri() });
            }
        }
    }
}

/// An S3 failure that another try cannot mend (no such object or bucket, access denied, a
/// limit passed) fails the stage; any other is tried again.
fn permanent_or_retry<T>(err: Error) -> Outcome<T> {
    let permanent = match &err {
        Error::InvalidEvent(why) => Some(why.clone()),
        Error::Aws { code, message, .. }
            if matches!(code.as_str(), "NoSuchKey" | "NoSuchBucket" | "AccessDenied" | "InvalidObjectState") =>
        {
            Some(format!("{code}: {message}"))
        }
        _ => None,
    };
    match permanent {
        Some(why) => Ok(Err(why)),
        None => Err(err),
    }
}
