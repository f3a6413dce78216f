//! Map stages checked against the rest of the configuration: the bucket they read, the run-data folder they write, and the placeholders their triggers fill.
//!
//! A pipeline with a map stage needs `Roles.InputBucket` and a `Roles.RunDataPrefix` (the
//! item lists and results go there); a map's literal bucket must be the input bucket (a
//! bucket from a placeholder is checked when the map is expanded); and where a trigger
//! starts the pipeline, every `{name}` its maps use must be one that trigger gives a run.
//! A run started through the API is checked when it is started (a 400).

use std::collections::{BTreeMap, BTreeSet};

use batchline::model::pipeline::Pipeline;
use batchline::model::stack::{RoleNames, Target, Triggers};

/// The names every run has, beside its parameters.
pub const RUN_NAMES: [&str; 2] = ["runId", "runData"];
/// The parameters an S3 trigger gives a run, beside its own.
pub const S3_NAMES: [&str; 4] = ["inputBucket", "inputKey", "inputSize", "inputPrefix"];
/// The parameters a coalescing S3 trigger gives a window's run, beside its own.
pub const COALESCE_NAMES: [&str; 1] = [batchline::model::coalesce::OBJECTS_PARAMETER];
/// The parameters a schedule gives a run, beside its own.
pub const SCHEDULE_NAMES: [&str; 2] = ["scheduledTime", "scheduledDate"];

pub(super) fn check_maps(
    pipelines: &BTreeMap<String, Pipeline>,
    roles: &RoleNames,
    triggers: &Triggers,
    problems: &mut Vec<String>,
) {
    for (name, pipeline) in pipelines {
        let maps = pipeline.stages.iter().filter_map(|(stage, s)| Some((stage, s.map.as_ref()?)));
        for (stage, map) in maps {
            let path = format!("Pipelines.{name}.Stages.{stage}.Map");
            if roles.input_bucket.is_none() || roles.run_data_prefix.is_none() {
                problems.push(format!(
                    "{path}: a map stage needs Roles.InputBucket and Roles.RunDataPrefix (its item lists and results are written there)"
                ));
            }
            if let Some(bucket) = map.literal_bucket() {
                if roles.input_bucket.as_deref() != Some(bucket) {
                    problems.push(format!(
                        "{path}: bucket {bucket:?} is not Roles.InputBucket ({}): a map reads only the input bucket",
                        roles.input_bucket.as_deref().unwrap_or("none is given")
                    ));
                }
            }
            for (trigger, given) in starters(name, triggers) {
                let unknown: Vec<String> =
                    map.placeholders().into_iter().filter(|p| !given.contains(p.as_str())).collect();
                if !unknown.is_empty() {
                    let mut known: Vec<&str> = given.iter().map(String::as_str).collect();
                    known.sort_unstable();
                    problems.push(format!(
                        "{path}: runs started by {trigger} have no {}: it gives {}",
                        unknown.iter().map(|n| format!("{{{n}}}")).collect::<Vec<_>>().join(", "),
                        known.join(", ")
                    ));
                }
            }
        }
    }
}

/// The triggers that start `pipeline`, each with the names its runs have.
fn starters(pipeline: &str, triggers: &Triggers) -> Vec<(String, BTreeSet<String>)> {
    let starts = |target: &Target| matches!(target, Target::Pipeline(p) if p == pipeline);
    let names = |own: &BTreeMap<String, String>, given: &[&str]| -> BTreeSet<String> {
        own.keys().cloned().chain(given.iter().chain(RUN_NAMES.iter()).map(|n| (*n).to_owned())).collect()
    };
    let s3 = triggers.s3.iter().filter(|(_, t)| starts(&t.target));
    let s3 = s3.map(|(key, t)| {
        let given: &[&str] = if t.coalesce.is_some() { &COALESCE_NAMES } else { &S3_NAMES };
        (format!("Triggers.S3.{key}"), names(&t.parameters, given))
    });
    let schedules = triggers.schedules.iter().filter(|(_, t)| starts(&t.target));
    let schedules =
        schedules.map(|(key, t)| (format!("Triggers.Schedules.{key}"), names(&t.parameters, &SCHEDULE_NAMES)));
    s3.chain(schedules).collect()
}
