//! The stack configuration reference (`docs/src/reference/stack-configuration.md`) held to
//! bootstrap: its first YAML block is a configuration `declare` accepts as is, and it uses
//! every key `declare` accepts. The keys are not listed here: bootstrap is asked for them,
//! by adding an unknown key to each object of the block and reading its refusal.

use std::collections::{BTreeMap, BTreeSet};

use batchline_bootstrap::declaration::declare;
use serde_json::{Map, Value};

const REFERENCE: &str = include_str!("../../../docs/src/reference/stack-configuration.md");
const REFERENCE_PATH: &str = "docs/src/reference/stack-configuration.md";
/// The key added to every object of the block: no level of the configuration has it.
const PROBE: &str = "ZzProbe";

/// The reference's first ```yaml block, read as CloudFormation would send it (as JSON).
fn example() -> Value {
    let fence = "```yaml\n";
    let start = REFERENCE.find(fence).unwrap_or_else(|| panic!("{REFERENCE_PATH} has no ```yaml block")) + fence.len();
    let end = start
        + REFERENCE[start..].find("\n```").unwrap_or_else(|| panic!("{REFERENCE_PATH}: the yaml block never ends"))
        + 1;
    serde_yaml::from_str(&REFERENCE[start..end])
        .unwrap_or_else(|err| panic!("{REFERENCE_PATH}: the first yaml block is not a YAML mapping: {err}"))
}

/// Every object of `value`: its JSON pointer and its path as bootstrap writes it
/// (`Pipelines.orders.Stages.transform.RetryOn[0]`).
fn objects(value: &Value, pointer: String, path: String, found: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                let escaped = key.replace('~', "~0").replace('/', "~1");
                let child_path = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                objects(child, format!("{pointer}/{escaped}"), child_path, found);
            }
            found.push((pointer, path));
        }
        Value::Array(items) => {
            for (index, child) in items.iter().enumerate() {
                objects(child, format!("{pointer}/{index}"), format!("{path}[{index}]"), found);
            }
        }
        _ => {}
    }
}

/// The keys bootstrap accepts in the object at `pointer`, if it reads it as a struct: the
/// document with an unknown key added there is refused with "unknown field `ZzProbe`,
/// expected one of `A`, `B`, ..." (serde's words). `None` for a map of the user's own keys
/// (`JobDefinitions`, `Stages`, `Parameters`, ...), where the key is a new entry instead.
fn accepted_keys(document: &Value, pointer: &str) -> Option<BTreeSet<String>> {
    let mut probed = document.clone();
    let object = probed.pointer_mut(pointer).and_then(Value::as_object_mut).expect("an object of the block");
    object.insert(PROBE.to_owned(), Value::Object(Map::new()));
    let problems = declare(&probed).err()?.problems;
    let marker = format!("unknown field `{PROBE}`");
    let refusal = problems.iter().find_map(|problem| problem.split_once(&marker).map(|(_, rest)| rest))?;
    // ", expected `A`", ", expected `A` or `B`", ", expected one of `A`, `B`, ...", or
    // ", there are no fields": the names are between backticks.
    Some(refusal.split('`').skip(1).step_by(2).map(str::to_owned).collect())
}

#[test]
fn the_references_example_is_a_configuration_bootstrap_accepts() {
    if let Err(err) = declare(&example()) {
        panic!(
            "bootstrap refuses the first yaml block of {REFERENCE_PATH} (a key it does not take, or a value it refuses):\n  {}",
            err.problems.join("\n  ")
        );
    }
}

#[test]
fn the_references_example_uses_every_key_bootstrap_accepts() {
    let document = example();
    assert!(declare(&document).is_ok(), "bootstrap refuses the reference's example: see the test above");
    let mut found = Vec::new();
    objects(&document, String::new(), String::new(), &mut found);

    // The objects bootstrap reads as one struct (found by the keys it accepts), where the
    // block shows them and which keys it uses there: alternatives (a trigger's
    // JobDefinition or Pipeline, a retry rule's ExitCode, StatusReason or Reason) may each
    // be shown in a different entry.
    let mut levels: BTreeMap<BTreeSet<String>, (Vec<String>, BTreeSet<String>)> = BTreeMap::new();
    let mut failures = Vec::new();
    for (pointer, path) in &found {
        let object = document.pointer(pointer).and_then(Value::as_object).expect("an object of the block");
        let shown = if path.is_empty() { "the top level".to_owned() } else { path.clone() };
        match accepted_keys(&document, pointer) {
            Some(accepted) => {
                let level = levels.entry(accepted).or_default();
                level.0.push(shown);
                level.1.extend(object.keys().cloned());
            }
            // A map of the user's keys: its entries are probed in turn, so it must have one.
            None if object.is_empty() => failures
                .push(format!("{shown}: an empty map shows none of the keys its entries take; give it an entry")),
            None => {}
        }
    }
    let top_level = levels.values().any(|(paths, _)| paths.iter().any(|p| p == "the top level"));
    assert!(top_level, "bootstrap no longer refuses an unknown top-level key with \"unknown field `{PROBE}`\": the probe needs its new words");
    for (accepted, (paths, used)) in &levels {
        for key in accepted.difference(used) {
            failures.push(format!("{}: bootstrap accepts `{key}`, which the reference never shows", paths.join(", ")));
        }
    }
    assert!(
        failures.is_empty(),
        "the first yaml block of {REFERENCE_PATH} is not the whole stack configuration:\n  {}",
        failures.join("\n  ")
    );
}
