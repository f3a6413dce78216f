//! Where a local stack's configuration comes from: the user's template (as `sam deploy` would resolve it) or a configuration file, with local stand-ins for what only AWS has.
//!
//! A local stack's configuration is what bootstrap would receive on AWS: the `Environment`
//! custom resource's properties. From a template they are resolved by the project's one
//! template resolver (`devtools/iam/policies.py`, through
//! [`batchline_testkit::emulator::template_properties`]) with the template's parameter
//! defaults, overridden as `sam deploy --parameter-overrides Key=Value` would. A
//! configuration file (`--config FILE`, YAML or JSON) holds those properties directly.
//!
//! Either way, what only AWS has gets a local stand-in, the same every time (the banner
//! says so once): the name prefix is the local stack's name; the network is the emulator's
//! default VPC; the roles' input bucket, every S3 trigger's bucket and the role boundary
//! are the local stack's; the ServiceToken names the local bootstrap.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use batchline_testkit::emulator::{default_network, template_properties, ACCOUNT_ID, REGION};

/// Where the configuration is read from.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Source {
    /// A SAM template's `Environment` resource, with parameter overrides (`Key`, `Value`).
    Template { path: PathBuf, overrides: Vec<(String, String)> },
    /// A file of the `Environment` resource's properties.
    File(PathBuf),
}

impl Source {
    /// What the banner says the configuration is.
    pub fn describe(&self) -> String {
        match self {
            Source::Template { path, overrides } if overrides.is_empty() => format!("{}", path.display()),
            Source::Template { path, overrides } => {
                let given: Vec<String> = overrides.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!("{} with {}", path.display(), given.join(" "))
            }
            Source::File(path) => format!("{} (a configuration file)", path.display()),
        }
    }
}

/// The demo's own configuration file, beside its code.
pub fn demo_file() -> PathBuf {
    batchline_testkit::emulator::repo_root().join("devtools/demo/stack.yaml")
}

/// The role boundary a local stack's roles are created under (the template's `RoleBoundary`).
pub fn boundary_arn(name: &str) -> String {
    format!("arn:aws:iam::{ACCOUNT_ID}:policy/{name}-RoleBoundary")
}

/// `--parameter-overrides` as `sam deploy` takes them: `Key=Value` arguments, or several
/// separated by spaces in one argument.
pub fn parse_overrides(arguments: &[String]) -> Result<Vec<(String, String)>, String> {
    arguments.iter().flat_map(|argument| argument.split_whitespace()).map(parse_override).collect()
}

/// A `Key=Value` of `--parameter-overrides`.
pub fn parse_override(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("--parameter-overrides takes Key=Value pairs, not {text:?}")),
    }
}

/// The configuration of the local stack `name` (input bucket `bucket`) from `source`.
pub fn resolve(source: &Source, name: &str, bucket: &str) -> Result<Value, String> {
    let properties = match source {
        Source::Template { path, overrides } => {
            let network = default_network();
            let mut parameters = json!({"SubnetIds": network.subnets, "SecurityGroupIds": network.security_groups});
            for (key, value) in overrides {
                parameters[key] = json!(value);
            }
            let stack = json!({
                "name": name,
                "parameters": parameters,
                "physical": {"InputBucket": bucket, "RoleBoundary": boundary_arn(name)},
            });
            template_properties(path, "Environment", &stack)?
        }
        Source::File(path) => read_file(path)?,
    };
    Ok(with_local_stand_ins(as_cloudformation_sends(properties), name, bucket))
}

/// Properties as CloudFormation sends them to a custom resource: every number and boolean
/// as a string (so a template's `1200` and a file's `"1200"` are the same configuration).
pub fn as_cloudformation_sends(value: Value) -> Value {
    match value {
        Value::Number(n) => Value::String(n.to_string()),
        Value::Bool(b) => Value::String(b.to_string()),
        Value::Array(items) => Value::Array(items.into_iter().map(as_cloudformation_sends).collect()),
        Value::Object(map) => Value::Object(map.into_iter().map(|(k, v)| (k, as_cloudformation_sends(v))).collect()),
        other => other,
    }
}

fn read_file(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let yaml: serde_yaml::Value = serde_yaml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let value = serde_json::to_value(yaml).map_err(|e| format!("{}: {e}", path.display()))?;
    if !value.is_object() {
        return Err(format!("{}: a configuration file is a mapping of the Environment's properties", path.display()));
    }
    Ok(value)
}

/// `properties` with what only AWS has replaced by the local stack's own (see the module docs).
pub fn with_local_stand_ins(mut properties: Value, name: &str, bucket: &str) -> Value {
    let network = default_network();
    let public_ip = properties["Network"]["AssignPublicIp"].as_str().unwrap_or("true").to_owned();
    properties["ServiceToken"] = json!(format!("arn:aws:lambda:{REGION}:{ACCOUNT_ID}:function:{name}-bootstrap"));
    if properties.get("ServiceTimeout").is_none() {
        properties["ServiceTimeout"] = json!("1200");
    }
    properties["NamePrefix"] = json!(name);
    properties["Network"] = json!({
        "Subnets": network.subnets.join(","),
        "SecurityGroups": network.security_groups.join(","),
        "AssignPublicIp": public_ip,
    });
    if !properties["Roles"].is_object() {
        properties["Roles"] = json!({});
    }
    properties["Roles"]["InputBucket"] = json!(bucket);
    properties["Roles"]["PermissionsBoundary"] = json!(boundary_arn(name));
    if let Some(triggers) = properties["Triggers"]["S3"].as_object_mut() {
        for trigger in triggers.values_mut() {
            trigger["Bucket"] = json!(bucket);
        }
    }
    properties
}

/// The sections whose entries are a stack's resources, as `sam deploy`'s change set lists them.
const SECTIONS: [(&str, &str); 6] = [
    ("/ComputeEnvironments", "compute environment"),
    ("/JobQueues", "job queue"),
    ("/JobDefinitions", "job definition"),
    ("/Pipelines", "pipeline"),
    ("/Triggers/S3", "S3 trigger"),
    ("/Triggers/Schedules", "schedule"),
];

/// What changed from `old` to `new`, one line a resource ("added pipeline nightly",
/// "changed job definition default", "removed ..."), then any other property changed.
pub fn changes(old: &Value, new: &Value) -> Vec<String> {
    let mut lines = Vec::new();
    for (pointer, kind) in SECTIONS {
        let entries = |v: &Value| v.pointer(pointer).and_then(Value::as_object).cloned().unwrap_or_default();
        let (before, after) = (entries(old), entries(new));
        let keys: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
        for key in keys {
            match (before.get(key), after.get(key)) {
                (None, Some(_)) => lines.push(format!("added {kind} {key}")),
                (Some(_), None) => lines.push(format!("removed {kind} {key}")),
                (Some(a), Some(b)) if a != b => lines.push(format!("changed {kind} {key}")),
                _ => {}
            }
        }
    }
    let sections: BTreeSet<&str> = SECTIONS.iter().map(|(p, _)| p.trim_start_matches('/')).collect();
    let others = |v: &Value| v.as_object().cloned().unwrap_or_default();
    let (before, after) = (others(old), others(new));
    let keys: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    for key in keys {
        if sections.contains(key.as_str()) || key == "Triggers" && only_known_triggers(&before, &after) {
            continue;
        }
        if before.get(key) != after.get(key) {
            lines.push(format!("changed {key}"));
        }
    }
    lines
}

/// Whether the two configurations' triggers differ only in the kinds `changes` lists.
fn only_known_triggers(before: &serde_json::Map<String, Value>, after: &serde_json::Map<String, Value>) -> bool {
    let kinds = |m: &serde_json::Map<String, Value>| -> BTreeSet<String> {
        m.get("Triggers").and_then(Value::as_object).map(|t| t.keys().cloned().collect()).unwrap_or_default()
    };
    kinds(before).union(&kinds(after)).all(|k| k == "S3" || k == "Schedules")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_name_each_resource_added_changed_or_removed_and_other_properties() {
        let old = json!({"JobDefinitions": {"default": {"Vcpu": "0.25"}, "old": {}},
                         "Pipelines": {"p": {"Stages": {"a": {}}}}, "Repository": {"DeleteOnStackDelete": "false"},
                         "Triggers": {"S3": {"input": {"Prefix": "a/"}}}});
        let new = json!({"JobDefinitions": {"default": {"Vcpu": "0.5"}, "extra": {}},
                         "Pipelines": {"p": {"Stages": {"a": {}}}, "q": {}}, "Repository": {"DeleteOnStackDelete": "true"},
                         "Triggers": {"S3": {"input": {"Prefix": "a/"}}}});
        assert_eq!(
            changes(&old, &new),
            [
                "changed job definition default",
                "added job definition extra",
                "removed job definition old",
                "added pipeline q",
                "changed Repository"
            ]
        );
        assert!(changes(&new, &new).is_empty());
    }

    #[test]
    fn numbers_and_booleans_are_sent_as_strings() {
        let sent = as_cloudformation_sends(json!({"ServiceTimeout": 1200, "A": [true, 0.25], "B": null}));
        assert_eq!(sent, json!({"ServiceTimeout": "1200", "A": ["true", "0.25"], "B": null}));
    }

    #[test]
    fn an_override_is_a_key_and_a_value() {
        assert_eq!(parse_override("InputPrefix=in/=x"), Ok(("InputPrefix".into(), "in/=x".into())));
        assert!(parse_override("=x").is_err());
        assert!(parse_override("InputPrefix").is_err());
        let given = parse_overrides(&["A=1 B=2".to_owned(), "C=3".to_owned()]).unwrap();
        assert_eq!(given, [("A".into(), "1".into()), ("B".into(), "2".into()), ("C".into(), "3".into())]);
    }
}
