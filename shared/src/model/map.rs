//! Map stages, the pure part: a `Map` block checked, its `{name}` placeholders filled, its items read and cut into children, the children into array jobs, and the map's end judged against its tolerance.
//!
//! A map stage runs one child per `ItemsPerChild` items, as Batch array jobs of at most
//! [`MAX_ARRAY_CHILDREN`] children (fewer when `MaxConcurrency` is smaller: the next array
//! is submitted as one ends). A child finds its work in its array's item list, a JSON Lines
//! object whose line `i` is the work of the child with `AWS_BATCH_JOB_ARRAY_INDEX = i`:
//! [`ChildLine`], `{"index", "items"}`, `index` being the child's place in the whole map
//! (stable across any resubmission of it). The largest map accepted is
//! [`MAX_MAP_CHILDREN`] children; a larger one fails its stage saying so.
//!
//! Nothing here reads S3 or submits anything: the service that drives a map lists the
//! prefix or reads the manifest, and hands the items to these functions.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Batch's limit on the children of one array job.
pub const MAX_ARRAY_CHILDREN: usize = 10_000;
/// The largest map accepted: ten arrays of Batch's largest.
pub const MAX_MAP_CHILDREN: usize = 10 * MAX_ARRAY_CHILDREN;
/// The most array jobs one map is cut into: a run records a few facts per array, and its
/// record is one DynamoDB item (400 KB).
pub const MAX_MAP_ARRAYS: usize = 100;
/// The most arrays of resubmitted children (out of memory, one size up) a map's record
/// holds beyond its own: past them, children out of memory count as failed.
pub const MAX_RESUBMITTED_ARRAYS: usize = 100;
/// The most items a map lists (a thousand ListObjectsV2 pages): what one map worker
/// invocation holds and writes within its time.
pub const MAX_MAP_ITEMS: usize = 1_000_000;
/// The largest item list or manifest read.
pub const MAX_LIST_BYTES: u64 = 256 * 1024 * 1024;
/// The most items one child may be given.
pub const MAX_ITEMS_PER_CHILD: u32 = 1_000;
/// The largest `Items` run parameter (a JSON list); beyond it, a manifest.
pub const MAX_INLINE_ITEMS_BYTES: usize = 30 * 1024;

/// Where a map's items come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum MapSource {
    /// The objects under an S3 prefix (`s3://bucket/prefix`, placeholders allowed) whose
    /// keys end with `suffix`: each item is an object's S3 URI.
    Prefix { uri: String, suffix: String },
    /// An object (`s3://bucket/key`) holding one item per line, or a JSON list.
    Manifest { uri: String },
    /// A run parameter holding a JSON list.
    Items { parameter: String },
}

/// How many failed children a map tolerates and still succeeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Tolerance {
    Count(u32),
    /// A percentage of the map's children, rounded down.
    Percent(u32),
}

impl Tolerance {
    /// `"2"` (a count) or `"5%"` (0 to 100 per cent).
    pub fn parse(text: &str) -> Result<Tolerance, String> {
        let text = text.trim();
        let invalid = || format!("{text:?}: give a count (\"2\") or a percentage from 0% to 100% (\"5%\")");
        match text.strip_suffix('%') {
            Some(percent) => match percent.trim().parse::<u32>() {
                Ok(p) if p <= 100 => Ok(Tolerance::Percent(p)),
                _ => Err(invalid()),
            },
            None => text.parse::<u32>().map(Tolerance::Count).map_err(|_| invalid()),
        }
    }

    /// The failed children allowed in a map of `children`.
    pub fn allowed(self, children: usize) -> usize {
        match self {
            Tolerance::Count(n) => n as usize,
            Tolerance::Percent(p) => children * p as usize / 100,
        }
    }
}

/// A stage's `Map` block, checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MapSpec {
    pub source: MapSource,
    pub items_per_child: u32,
    pub tolerated_failures: Tolerance,
    /// At most this many children at once (arrays of at most this size).
    pub max_concurrency: Option<u32>,
}

/// A `Map` block as the configuration gives it: strings, each optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MapBlock<'a> {
    pub prefix: Option<&'a str>,
    pub suffix: Option<&'a str>,
    pub manifest: Option<&'a str>,
    pub items: Option<&'a str>,
    pub items_per_child: Option<&'a str>,
    pub tolerated_failures: Option<&'a str>,
    pub max_concurrency: Option<&'a str>,
}

impl MapSpec {
    /// Checks a `Map` block: exactly one source, S3 URIs where they are due (their
    /// placeholders well formed), and the numbers in range. Every problem, by key.
    pub fn from_block(block: &MapBlock) -> Result<MapSpec, Vec<String>> {
        let mut problems = Vec::new();
        let source = match (block.prefix, block.manifest, block.items) {
            (Some(uri), None, None) => Some(MapSource::Prefix {
                uri: checked_uri("Prefix", uri, &mut problems),
                suffix: block.suffix.unwrap_or_default().to_owned(),
            }),
            (None, Some(uri), None) => Some(MapSource::Manifest { uri: checked_uri("Manifest", uri, &mut problems) }),
            (None, None, Some(parameter)) if !parameter.trim().is_empty() => {
                Some(MapSource::Items { parameter: parameter.trim().to_owned() })
            }
            _ => {
                problems.push("give exactly one of Prefix, Manifest or Items (a run parameter's name)".to_owned());
                None
            }
        };
        if block.suffix.is_some() && block.prefix.is_none() {
            problems.push("Suffix goes with Prefix only".to_owned());
        }
        let items_per_child = match block.items_per_child.map(|n| n.trim().parse::<u32>()) {
            None => 1,
            Some(Ok(n)) if (1..=MAX_ITEMS_PER_CHILD).contains(&n) => n,
            Some(_) => {
                problems.push(format!("ItemsPerChild: give a whole number from 1 to {MAX_ITEMS_PER_CHILD}"));
                1
            }
        };
        let tolerated_failures = match block.tolerated_failures.map(Tolerance::parse) {
            None => Tolerance::Count(0),
            Some(Ok(tolerance)) => tolerance,
            Some(Err(why)) => {
                problems.push(format!("ToleratedFailures {why}"));
                Tolerance::Count(0)
            }
        };
        let max_concurrency = match block.max_concurrency.map(|n| n.trim().parse::<u32>()) {
            None => None,
            Some(Ok(n)) if (1..=MAX_ARRAY_CHILDREN as u32).contains(&n) => Some(n),
            Some(_) => {
                problems.push(format!("MaxConcurrency: give a whole number from 1 to {MAX_ARRAY_CHILDREN}"));
                None
            }
        };
        match source {
            Some(source) if problems.is_empty() => {
                Ok(MapSpec { source, items_per_child, tolerated_failures, max_concurrency })
            }
            _ => Err(problems),
        }
    }

    /// The placeholder names the map's source uses (for a `Prefix` or `Manifest`; an
    /// `Items` map names its parameter).
    pub fn placeholders(&self) -> Vec<String> {
        match &self.source {
            MapSource::Prefix { uri, .. } | MapSource::Manifest { uri } => placeholders(uri).unwrap_or_default(),
            MapSource::Items { parameter } => vec![parameter.clone()],
        }
    }

    /// The literal bucket of the source's URI, when it names one without a placeholder.
    pub fn literal_bucket(&self) -> Option<&str> {
        match &self.source {
            MapSource::Prefix { uri, .. } | MapSource::Manifest { uri } => {
                let bucket = uri.strip_prefix("s3://")?.split('/').next()?;
                (!bucket.contains('{')).then_some(bucket)
            }
            MapSource::Items { .. } => None,
        }
    }
}

fn checked_uri(key: &str, uri: &str, problems: &mut Vec<String>) -> String {
    if let Err(why) = placeholders(uri) {
        problems.push(format!("{key}: {why}"));
    } else if uri.starts_with("{runData}") {
        // The run's data folder is an S3 URI already (what an earlier stage wrote).
    } else if placeholders(uri).is_ok_and(|names| names.len() == 1 && uri == format!("{{{}}}", names[0])) {
        // A parameter holding a whole S3 URI (a coalescing trigger's `{objects}`): checked
        // when the map is expanded, as every filled URI is.
    } else if !uri.starts_with("s3://") || uri["s3://".len()..].split('/').next().is_none_or(str::is_empty) {
        problems.push(format!("{key} {uri:?}: give an S3 URI, s3://bucket/key (or one under {{runData}})"));
    }
    uri.to_owned()
}

/// The names of a template's `{name}` placeholders, in order (`{{` and `}}` are literal
/// braces). A brace that opens no name or is never closed is an error.
pub fn placeholders(template: &str) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    walk(template, |name| {
        names.push(name.to_owned());
        Ok(String::new())
    })?;
    Ok(names)
}

/// The template with every `{name}` replaced by its value; a name without one is an error
/// naming it and the names there are.
pub fn fill(template: &str, values: &BTreeMap<String, String>) -> Result<String, String> {
    walk(template, |name| {
        values.get(name).cloned().ok_or_else(|| {
            let known: Vec<&str> = values.keys().map(String::as_str).collect();
            format!("{{{name}}} names no run parameter (there are: {})", known.join(", "))
        })
    })
}

fn walk(template: &str, mut on_name: impl FnMut(&str) -> Result<String, String>) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(at) = rest.find(['{', '}']) {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix("{{").or_else(|| tail.strip_prefix("}}")) {
            out.push_str(&tail[..1]);
            rest = after;
        } else if let Some(open) = tail.strip_prefix('{') {
            let end = open.find('}').ok_or_else(|| format!("{template:?}: a {{ is never closed"))?;
            let name = &open[..end];
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("{template:?}: {{{name}}} is not a parameter name (letters, digits, _)"));
            }
            out.push_str(&on_name(name)?);
            rest = &open[end + 1..];
        } else {
            return Err(format!("{template:?}: a }} closes nothing (write }}}} for a brace)"));
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// An S3 location, `s3://bucket/key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    pub bucket: String,
    pub key: String,
}

impl S3Location {
    pub fn parse(uri: &str) -> Result<S3Location, String> {
        let rest = uri.strip_prefix("s3://").ok_or_else(|| format!("{uri:?} is not an s3:// URI"))?;
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(format!("{uri:?} names no bucket"));
        }
        Ok(S3Location { bucket: bucket.to_owned(), key: key.to_owned() })
    }

    pub fn uri(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.key)
    }
}

/// A manifest's items: a JSON list (its values), or else one item per non-empty line (its
/// text, a trailing `\r` dropped).
pub fn manifest_items(text: &str) -> Result<Vec<Value>, String> {
    if text.trim_start().starts_with('[') {
        return match serde_json::from_str::<Value>(text) {
            Ok(Value::Array(items)) => Ok(items),
            _ => Err("the manifest starts with [ but is not a JSON list".to_owned()),
        };
    }
    Ok(text.lines().map(|l| l.trim_end_matches('\r')).filter(|l| !l.is_empty()).map(Value::from).collect())
}

/// An `Items` map's items: the run parameter's JSON list.
pub fn inline_items(parameter: &str, value: &str) -> Result<Vec<Value>, String> {
    if value.len() > MAX_INLINE_ITEMS_BYTES {
        return Err(format!(
            "run parameter {parameter:?} holds {} bytes, over the {MAX_INLINE_ITEMS_BYTES} an Items map takes: use a Manifest",
            value.len()
        ));
    }
    match serde_json::from_str::<Value>(value) {
        Ok(Value::Array(items)) => Ok(items),
        _ => Err(format!("run parameter {parameter:?} is not a JSON list")),
    }
}

/// One child's work: its place in the whole map and its items.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChildLine {
    pub index: usize,
    pub items: Vec<Value>,
}

/// One child's line in a map's results (`results.jsonl`): its place, how it ended
/// (`SUCCEEDED`, `FAILED`, or `NOT_RUN`), its items, and the size it last ran at (or
/// would have: results written before sizes were kept have none).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChildResult {
    pub index: usize,
    pub status: String,
    pub items: Vec<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<crate::model::fargate::Size>,
}

/// How many children `items` make, `per_child` each (the last may have fewer).
pub fn child_count(items: usize, per_child: u32) -> usize {
    items.div_ceil(per_child.max(1) as usize)
}

/// The map's children: `per_child` items each, in the items' order, indexed from 0.
pub fn children(items: Vec<Value>, per_child: u32) -> Vec<ChildLine> {
    let per_child = per_child.max(1) as usize;
    let mut out = Vec::with_capacity(child_count(items.len(), per_child as u32));
    let mut items = items.into_iter().peekable();
    while items.peek().is_some() {
        let chunk: Vec<Value> = items.by_ref().take(per_child).collect();
        out.push(ChildLine { index: out.len(), items: chunk });
    }
    out
}

/// An array job's item list: its children's lines, JSON Lines.
pub fn item_list(children: &[ChildLine]) -> String {
    let mut out = String::new();
    for child in children {
        out.push_str(&serde_json::to_string(child).expect("a child line is JSON"));
        out.push('\n');
    }
    out
}

/// How a map of `children` is split into array jobs: consecutive runs of children, each at
/// most Batch's limit and `max_concurrency`. Batch's arrays have 2 to 10,000 children, so a
/// run of one child (a map of one, the last of an uneven split, or every run with
/// `MaxConcurrency: 1`) is submitted as a plain job: its item list holds that child's line
/// alone, the line 0 a plain job reads.
pub fn arrays(children: usize, max_concurrency: Option<u32>) -> Vec<std::ops::Range<usize>> {
    let size = max_concurrency.map_or(MAX_ARRAY_CHILDREN, |n| (n as usize).clamp(1, MAX_ARRAY_CHILDREN));
    (0..children).step_by(size).map(|start| start..(start + size).min(children)).collect()
}

/// Why a map of `children` children (cut by `max_concurrency`) is too large to run, if it is.
pub fn too_large(children: usize, max_concurrency: Option<u32>) -> Option<String> {
    let arrays = arrays(children, max_concurrency).len();
    if children > MAX_MAP_CHILDREN {
        Some(format!("the map has {children} children, more than the {MAX_MAP_CHILDREN} a map may have"))
    } else if arrays > MAX_MAP_ARRAYS {
        let at_least = children.div_ceil(MAX_MAP_ARRAYS);
        Some(format!(
            "the map's {children} children make {arrays} arrays with MaxConcurrency {}, more than the {MAX_MAP_ARRAYS} a map may have: give MaxConcurrency {at_least} or more",
            max_concurrency.unwrap_or_default()
        ))
    } else {
        None
    }
}

/// How a map ended, judged when every child did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapEnd {
    /// Every child succeeded, or the failures are within the tolerance.
    Succeeded { failed: usize },
    /// More children failed than the tolerance allows.
    Failed { failed: usize, allowed: usize },
}

/// Judges a map of `children` of which `failed` failed.
pub fn judge(children: usize, failed: usize, tolerance: Tolerance) -> MapEnd {
    let allowed = tolerance.allowed(children);
    if failed <= allowed {
        MapEnd::Succeeded { failed }
    } else {
        MapEnd::Failed { failed, allowed }
    }
}

/// The detail type of the events that ask the map worker for a map's S3 work.
pub const MAP_WORK_DETAIL_TYPE: &str = "Batchline Map Work";

/// What the map worker is asked to do for a map attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum MapAction {
    /// List the items, write every array's item list, answer how many children there are.
    Expand,
    /// List the failed children, write `results.jsonl`, answer the failures.
    Close,
    /// Read which of an ended array's failed children ran out of memory, write their item
    /// list, answer how many.
    Check,
}

/// A request for a map attempt's S3 work: the detail of a "Batchline Map Work" event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MapWork {
    /// The stack whose run it is (its `NamePrefix`): the stack's rule takes only its own.
    pub stack: String,
    pub action: MapAction,
    pub run_id: String,
    pub stage: String,
    pub attempt: u32,
    /// An expansion the worker could not finish in one invocation: where its listing so far
    /// is kept (an S3 URI), to go on from. Absent in the work the run engine asks for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume: Option<String>,
    /// The array a `check` is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub array: Option<usize>,
}

/// Where Batchline keeps a map stage's own files: `<runData><stage>/_batchline/`, which
/// the job role may read and never write.
pub fn batchline_folder(run_data: &str, stage: &str) -> String {
    format!("{run_data}{stage}/_batchline/")
}

/// The folder of one expansion's item lists (`array-<k>.jsonl`, JSON Lines of
/// [`ChildLine`]) for attempt `attempt`: `token` tells expansions apart, so one racing
/// another never overwrites the lists the run kept.
pub fn item_lists_folder(run_data: &str, stage: &str, attempt: u32, token: &str) -> String {
    format!("{}a{attempt}-{token}/", batchline_folder(run_data, stage))
}

/// A map's results, written when it ends: one [`ChildResult`] line per child, in index order.
pub fn results_uri(run_data: &str, stage: &str) -> String {
    format!("{}results.jsonl", batchline_folder(run_data, stage))
}

/// Every failed child of a map, when there are more than a run's record lists.
pub fn failed_items_uri(run_data: &str, stage: &str) -> String {
    format!("{}failed.jsonl", batchline_folder(run_data, stage))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn block() -> MapBlock<'static> {
        MapBlock::default()
    }

    #[test]
    fn a_map_block_names_exactly_one_source_and_numbers_in_range_or_every_problem() {
        let prefix = MapBlock { prefix: Some("s3://{inputBucket}/{inputPrefix}"), suffix: Some(".jpg"), ..block() };
        let spec = MapSpec::from_block(&prefix).unwrap();
        assert_eq!(
            spec.source,
            MapSource::Prefix { uri: "s3://{inputBucket}/{inputPrefix}".into(), suffix: ".jpg".into() }
        );
        assert_eq!(
            (spec.items_per_child, spec.tolerated_failures, spec.max_concurrency),
            (1, Tolerance::Count(0), None)
        );
        assert_eq!(spec.placeholders(), ["inputBucket", "inputPrefix"]);
        assert_eq!(spec.literal_bucket(), None);
        let manifest = MapBlock { manifest: Some("s3://input/lists/today.txt"), ..block() };
        assert_eq!(MapSpec::from_block(&manifest).unwrap().literal_bucket(), Some("input"));

        let both = MapBlock { prefix: Some("s3://a/b"), items: Some("files"), ..block() };
        assert!(MapSpec::from_block(&both).unwrap_err()[0].contains("exactly one of Prefix, Manifest or Items"));
        assert!(MapSpec::from_block(&block()).is_err(), "no source");
        let wrong = MapBlock {
            manifest: Some("https://example.com/list"),
            suffix: Some(".csv"),
            items_per_child: Some("0"),
            tolerated_failures: Some("120%"),
            max_concurrency: Some("20000"),
            ..block()
        };
        let problems = MapSpec::from_block(&wrong).unwrap_err();
        for named in ["Manifest", "Suffix goes with Prefix", "ItemsPerChild", "ToleratedFailures", "MaxConcurrency"] {
            assert!(problems.iter().any(|p| p.contains(named)), "{named} in {problems:?}");
        }
        let unclosed = MapBlock { prefix: Some("s3://{inputBucket/x"), ..block() };
        assert!(MapSpec::from_block(&unclosed).unwrap_err()[0].contains("never closed"));
    }

    #[test]
    fn placeholders_take_run_parameters_and_double_braces_are_literal() {
        let values = BTreeMap::from([
            ("inputBucket".to_owned(), "photos".to_owned()),
            ("day".to_owned(), "2026-12-06".to_owned()),
        ]);
        assert_eq!(fill("s3://{inputBucket}/in/{day}/", &values).unwrap(), "s3://photos/in/2026-12-06/");
        assert_eq!(fill("s3://b/{{literal}}/{day}", &values).unwrap(), "s3://b/{literal}/2026-12-06");
        let unknown = fill("s3://{inputBucket}/{nope}", &values).unwrap_err();
        assert!(unknown.contains("{nope}") && unknown.contains("day, inputBucket"), "{unknown}");
        assert!(placeholders("s3://b/}").unwrap_err().contains("closes nothing"));
        assert!(placeholders("s3://b/{a b}").unwrap_err().contains("not a parameter name"));
    }

    #[test]
    fn tolerances_are_counts_or_percentages_rounded_down() {
        assert_eq!(Tolerance::parse("2"), Ok(Tolerance::Count(2)));
        assert_eq!(Tolerance::parse("5%").unwrap().allowed(250), 12);
        assert_eq!(Tolerance::parse("5%").unwrap().allowed(19), 0);
        assert!(Tolerance::parse("-1").is_err() && Tolerance::parse("101%").is_err() && Tolerance::parse("x").is_err());
        assert_eq!(judge(250, 2, Tolerance::Count(2)), MapEnd::Succeeded { failed: 2 });
        assert_eq!(judge(250, 3, Tolerance::Count(2)), MapEnd::Failed { failed: 3, allowed: 2 });
    }

    #[test]
    fn items_become_children_of_so_many_items_and_children_arrays_within_the_limits() {
        let items: Vec<Value> = (0..25).map(|i| json!(format!("s3://b/k{i}"))).collect();
        let lines = children(items, 10);
        assert_eq!(lines.iter().map(|c| (c.index, c.items.len())).collect::<Vec<_>>(), [(0, 10), (1, 10), (2, 5)]);
        let list = item_list(&lines[2..]);
        let first: ChildLine = serde_json::from_str(list.lines().next().unwrap()).unwrap();
        assert_eq!(
            (first.index, first.items[0].clone()),
            (2, json!("s3://b/k20")),
            "the index is the child's place in the whole map"
        );
        assert!(children(vec![], 1).is_empty());
        assert_eq!(child_count(12_001, 1), 12_001);
        assert_eq!(arrays(12_000, None), [0..10_000, 10_000..12_000]);
        assert_eq!(arrays(1_200, Some(500)), [0..500, 500..1_000, 1_000..1_200]);
        assert_eq!(arrays(0, None), Vec::<std::ops::Range<usize>>::new());
    }

    #[test]
    fn manifests_are_lines_or_a_json_list_and_inline_items_a_bounded_json_list() {
        assert_eq!(
            manifest_items("a.csv\r\nb.csv\n\nc.csv").unwrap(),
            [json!("a.csv"), json!("b.csv"), json!("c.csv")]
        );
        assert_eq!(manifest_items(r#"[{"day": 1}, "x"]"#).unwrap(), [json!({"day": 1}), json!("x")]);
        assert!(manifest_items("[not json").is_err());
        assert_eq!(inline_items("files", r#"["a", "b"]"#).unwrap().len(), 2);
        assert!(inline_items("files", "{}").unwrap_err().contains("not a JSON list"));
        let large = format!("[{}]", vec!["\"x\""; 20_000].join(","));
        assert!(inline_items("files", &large).unwrap_err().contains("use a Manifest"));
        assert_eq!(
            S3Location::parse("s3://b/runs/r1/").unwrap(),
            S3Location { bucket: "b".into(), key: "runs/r1/".into() }
        );
        assert!(S3Location::parse("s3:///x").is_err() && S3Location::parse("b/x").is_err());
    }
}
