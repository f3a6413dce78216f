//! Expanding a map: its items listed once (a snapshot of the prefix, the manifest's lines, or the run parameter's list), cut into children and arrays, and each array's item list written.
//!
//! The lists go to a folder of this expansion's own (`a<n>-<token>/` under the stage's
//! `_batchline/`): should two workers expand the same attempt at once, the run keeps the
//! first answer it records ([`batchline::model::run::map::MapExpanded`]), and the other's
//! lists are left unread rather than overwriting the ones the arrays read.

use std::collections::BTreeMap;

use batchline::model::map::{
    arrays, children, fill, inline_items, item_list, item_lists_folder, manifest_items, results_uri, too_large,
    MapSource, MapSpec, S3Location, MAX_LIST_BYTES, MAX_MAP_CHILDREN, MAX_MAP_ITEMS,
};
use batchline::model::run::Run;
use batchline::model::stack::StackConfig;
use batchline::Error;
use serde_json::Value;

use crate::objects::Objects;
use crate::Outcome;

/// What an expansion wrote: the number of children, and the folder of the item lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expansion {
    pub children: usize,
    pub lists: String,
}

/// Lists the items of `stage`'s map attempt `attempt` and writes its arrays' item lists.
/// `Ok(Err(why))`: no items can be had (a placeholder without a value, a bucket not the
/// stack's, a missing manifest, too many items): the stage fails saying why. `Err`: a
/// failure worth another try.
pub async fn expand(
    objects: &dyn Objects,
    config: &StackConfig,
    run: &Run,
    stage: &str,
    attempt: u32,
    token: &str,
) -> Outcome<Expansion> {
    let Some(spec) = run.stage(stage).and_then(|s| s.map.clone()) else {
        return Ok(Err(format!("stage {stage} is not a map stage")));
    };
    let Some(run_data) = config.roles.names.run_data_uri(&run.run_id) else {
        return Ok(Err("a map stage needs the configuration's InputBucket and RunDataPrefix".into()));
    };
    let items = match items(objects, config, &spec, &placeholder_values(run, &run_data)).await? {
        Ok(items) => items,
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
    let lists = item_lists_folder(&run_data, stage, attempt, token);
    for (k, range) in arrays(lines.len(), spec.max_concurrency).into_iter().enumerate() {
        let at = S3Location::parse(&format!("{lists}array-{k}.jsonl")).map_err(Error::InvalidEvent)?;
        objects.write(&at, item_list(&lines[range])).await?;
    }
    Ok(Ok(Expansion { children: lines.len(), lists }))
}

/// What a map's `{name}` placeholders take: the run's parameters, `runId` and `runData`.
pub fn placeholder_values(run: &Run, run_data: &str) -> BTreeMap<String, String> {
    let mut values = run.input.parameters.clone();
    values.insert("runId".into(), run.run_id.clone());
    values.insert("runData".into(), run_data.to_owned());
    values
}

/// The map's items, in order: `Ok(Err(why))` when none can be had.
async fn items(
    objects: &dyn Objects,
    config: &StackConfig,
    spec: &MapSpec,
    values: &BTreeMap<String, String>,
) -> Outcome<Vec<Value>> {
    let limit = (MAX_MAP_CHILDREN * spec.items_per_child as usize).min(MAX_MAP_ITEMS);
    let located = |uri: &str| -> Result<S3Location, String> {
        let location = S3Location::parse(&fill(uri, values)?)?;
        match config.roles.names.input_bucket.as_deref() {
            Some(bucket) if bucket == location.bucket => Ok(location),
            stack => Err(format!(
                "{} is not in the stack's InputBucket ({}): a map reads only that bucket",
                location.uri(),
                stack.unwrap_or("none is configured")
            )),
        }
    };
    match &spec.source {
        MapSource::Prefix { uri, suffix } => {
            let at = match located(uri) {
                Ok(at) => at,
                Err(why) => return Ok(Err(why)),
            };
            let keys = match objects.keys(&at.bucket, &at.key, suffix, limit).await {
                Ok(keys) => keys,
                Err(err) => return permanent_or_retry(err),
            };
            // Batchline's own files (a map over an earlier stage's output) are not items.
            let theirs = keys.into_iter().filter(|key| !key.contains("/_batchline/"));
            Ok(Ok(theirs.map(|key| Value::from(format!("s3://{}/{key}", at.bucket))).collect()))
        }
        MapSource::Manifest { uri } => {
            let at = match located(uri) {
                Ok(at) => at,
                Err(why) => return Ok(Err(why)),
            };
            let text = match objects.read(&at, MAX_LIST_BYTES).await {
                Ok(text) => text,
                Err(err) => return permanent_or_retry(err),
            };
            match manifest_items(&text) {
                Ok(items) if items.len() > limit => Ok(Err(format!(
                    "the manifest {} lists {} items, more than the {limit} a map may have",
                    at.uri(),
                    items.len()
                ))),
                Ok(items) => Ok(Ok(items)),
                Err(why) => Ok(Err(format!("{}: {why}", at.uri()))),
            }
        }
        MapSource::Items { parameter } => match values.get(parameter) {
            None => Ok(Err(format!("the run has no parameter {parameter:?} for the map's Items"))),
            Some(value) => Ok(inline_items(parameter, value)),
        },
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
