//! EventBridge triggers: S3 "Object Created" and "Scheduled Event", matched against the configuration's rules.
//!
//! Pure: an event and the configuration in, the jobs to submit out. Every S3 rule that
//! matches an object (bucket, key prefix and suffix) starts its target once; an object no
//! rule matches starts nothing and is only logged. A schedule is an explicitly named
//! EventBridge rule; the rule name (`resources[0]`) picks the `Triggers.Schedules` entry.

use std::collections::BTreeMap;

use batchline::model::coalesce::{listable_key, CoalescedObject};
pub use batchline::model::fargate::sized_for_object;
use batchline::model::stack::{S3Trigger, StackConfig, Target};
use serde::{Deserialize, Serialize};

use crate::plan::{self, Planned, Source};

/// An S3 object from an "Object Created" event, key decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectCreated {
    pub bucket: String,
    pub key: String,
    pub size: u64,
    pub etag: Option<String>,
    pub sequencer: Option<String>,
}

/// Decodes an S3 key as EventBridge carries it: URL-encoded, spaces as `+`.
pub fn decode_key(encoded: &str) -> Result<String, String> {
    let bytes = encoded.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = encoded
                    .get(index + 1..index + 3)
                    .ok_or_else(|| format!("key {encoded:?}: a % is not followed by two hex digits"))?;
                let byte =
                    u8::from_str_radix(hex, 16).map_err(|_| format!("key {encoded:?}: %{hex} is not a hex escape"))?;
                out.push(byte);
                index += 2;
            }
            other => out.push(other),
        }
        index += 1;
    }
    String::from_utf8(out).map_err(|_| format!("key {encoded:?} does not decode to UTF-8"))
}

/// The `detail` of an S3 "Object Created" event, as EventBridge delivers it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct ObjectCreatedDetail {
    pub bucket: BucketDetail,
    pub object: ObjectDetail,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct BucketDetail {
    pub name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct ObjectDetail {
    pub key: String,
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default)]
    pub etag: Option<String>,
    #[serde(default)]
    pub sequencer: Option<String>,
}

/// The object of an "Object Created" event, its key decoded.
pub fn object_created(detail: &ObjectCreatedDetail) -> Result<ObjectCreated, String> {
    Ok(ObjectCreated {
        bucket: detail.bucket.name.clone(),
        key: decode_key(&detail.object.key)?,
        size: detail.object.size.unwrap_or(0),
        etag: detail.object.etag.clone(),
        sequencer: detail.object.sequencer.clone(),
    })
}

/// What one S3 rule made of an object: the job or run it starts, or why it refuses it.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleOutcome {
    pub rule: String,
    pub planned: Result<Planned, String>,
}

/// What each matching rule makes of an object. One rule's refusal (a size no queue can
/// run, say) leaves the others to start theirs: rules are independent, and a refusal is
/// permanent, so it is reported rather than retried.
pub fn plan_object(config: &StackConfig, object: &ObjectCreated, event_id: &str) -> Vec<RuleOutcome> {
    config
        .triggers
        .s3
        .iter()
        .filter(|(_, rule)| rule.matches(&object.bucket, &object.key))
        .map(|(key, rule)| RuleOutcome { rule: key.clone(), planned: plan_rule(config, key, rule, object, event_id) })
        .collect()
}

/// What the rule `rule_key` starts for an object it matches.
fn plan_rule(
    config: &StackConfig,
    rule_key: &str,
    rule: &S3Trigger,
    object: &ObjectCreated,
    event_id: &str,
) -> Result<Planned, String> {
    // S3's sequencer orders writes of one key: the same object version has the same one.
    let version = object.sequencer.clone().or_else(|| object.etag.clone()).unwrap_or_else(|| event_id.to_owned());
    if rule.coalesce.is_some() {
        return coalesced(config, rule_key, rule, object, version);
    }
    let idempotency_key = format!("s3:{rule_key}:{}:{}:{version}", object.bucket, object.key);
    let mut parameters = rule.parameters.clone();
    parameters.insert("inputBucket".into(), object.bucket.clone());
    parameters.insert("inputKey".into(), object.key.clone());
    parameters.insert("inputSize".into(), object.size.to_string());
    let environment = BTreeMap::from([
        ("INPUT_BUCKET".to_owned(), object.bucket.clone()),
        ("INPUT_KEY".to_owned(), object.key.clone()),
        ("INPUT_SIZE".to_owned(), object.size.to_string()),
    ]);
    let basename = object.key.rsplit('/').next().unwrap_or(&object.key);
    let source = Source {
        trigger: "s3",
        readable: format!("{}-s3-{rule_key}-{basename}", config.name_prefix),
        idempotency_key,
        parameters,
        environment,
    };
    match &rule.target {
        Target::JobDefinition(key) => {
            let definition = config
                .job_definitions
                .get(key)
                .ok_or_else(|| format!("Triggers.S3.{rule_key}: no job definition {key:?}"))?;
            let size = match rule.memory_per_input_byte {
                Some(factor) => Some(sized_for_object(definition.size, factor, object.size)?),
                None => None,
            };
            let job = plan::job(config, key, source, size)?;
            // The check the API makes: a job its queue can never run would wait RUNNABLE for ever.
            let capacity = config.queue_for(definition).and_then(|q| config.queue_capacity(q));
            match (job.size, capacity) {
                (Some(size), Some(max)) if !size.fits_vcpus(max) => Err(format!(
                    "an object of {} bytes needs {size}, more than the job queue of {key:?} can ever run ({max} vCPU)",
                    object.size
                )),
                _ => Ok(Planned::Job(job)),
            }
        }
        Target::Pipeline(pipeline) => {
            // A run's maps may cover the object's folder (`{inputPrefix}`: the key up to its last /).
            let mut source = source;
            let folder = object.key.rfind('/').map_or("", |end| &object.key[..=end]);
            source.parameters.insert("inputPrefix".into(), folder.to_owned());
            Ok(Planned::Run { pipeline: pipeline.clone(), source })
        }
    }
}

/// An object for a coalescing rule's window, refused as a job of its own would be: an
/// object whose size needs more than the queue can run (with `MemoryPerInputByte`) would
/// make its whole window's array unrunnable. A key with a line break cannot be a line of
/// the window's list.
fn coalesced(
    config: &StackConfig,
    rule_key: &str,
    rule: &S3Trigger,
    object: &ObjectCreated,
    version: String,
) -> Result<Planned, String> {
    if !listable_key(&object.key) {
        return Err("a key with a line break cannot be a line of a window's list".to_owned());
    }
    if let (Target::JobDefinition(key), Some(factor)) = (&rule.target, rule.memory_per_input_byte) {
        let definition = config
            .job_definitions
            .get(key)
            .ok_or_else(|| format!("Triggers.S3.{rule_key}: no job definition {key:?}"))?;
        let size = sized_for_object(definition.size, factor, object.size)?;
        let capacity = config.queue_for(definition).and_then(|q| config.queue_capacity(q));
        if capacity.is_some_and(|max| !size.fits_vcpus(max)) {
            return Err(format!(
                "an object of {} bytes needs {size}, more than the job queue of {key:?} can ever run",
                object.size
            ));
        }
    }
    Ok(Planned::Coalesce(CoalescedObject {
        stack: config.name_prefix.clone(),
        trigger: rule_key.to_owned(),
        bucket: object.bucket.clone(),
        key: object.key.clone(),
        version,
        size: object.size,
    }))
}

/// The rule name of a "Scheduled Event": the last part of `resources[0]`
/// (`arn:aws:events:REGION:ACCOUNT:rule/[BUS/]NAME`).
pub fn schedule_rule_name(resources: &[String]) -> Result<String, String> {
    let arn = resources.first().ok_or("a Scheduled Event names its rule in resources[0]; it is missing")?;
    let (_, path) =
        arn.split_once(":rule/").ok_or_else(|| format!("resources[0] {arn:?} is not an EventBridge rule ARN"))?;
    Ok(path.rsplit('/').next().unwrap_or(path).to_owned())
}

/// What a scheduled event starts, if its rule is configured.
pub fn plan_schedule(config: &StackConfig, rule_name: &str, time: &str) -> Result<Option<Planned>, String> {
    let Some(rule) = config.triggers.schedules.get(rule_name) else {
        return Ok(None);
    };
    let mut parameters = rule.parameters.clone();
    parameters.insert("scheduledTime".into(), time.to_owned());
    let source = Source {
        trigger: "schedule",
        readable: format!("{}-schedule-{rule_name}", config.name_prefix),
        idempotency_key: format!("schedule:{rule_name}:{time}"),
        parameters,
        environment: BTreeMap::from([("SCHEDULED_TIME".to_owned(), time.to_owned())]),
    };
    Ok(Some(match &rule.target {
        Target::JobDefinition(key) => Planned::Job(plan::job(config, key, source, None)?),
        Target::Pipeline(pipeline) => {
            // A run's maps may name the day (`{scheduledDate}`, UTC YYYY-MM-DD).
            let mut source = source;
            if let Some(date) = time.get(..10).filter(|d| d.as_bytes().get(4) == Some(&b'-')) {
                source.parameters.insert("scheduledDate".into(), date.to_owned());
            }
            Planned::Run { pipeline: pipeline.clone(), source }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_decoded_as_aws_encodes_them() {
        assert_eq!(decode_key("incoming/my+file.csv").unwrap(), "incoming/my file.csv");
        assert_eq!(decode_key("a%2Bb%20c%3D%26.txt").unwrap(), "a+b c=&.txt");
        assert_eq!(decode_key("r%C3%A9sum%C3%A9+%E2%9C%93.pdf").unwrap(), "résumé ✓.pdf");
        assert!(decode_key("bad%zz").unwrap_err().contains("not a hex escape"));
        assert!(decode_key("cut%4").unwrap_err().contains("two hex digits"));
        assert!(decode_key("%ff%fe").unwrap_err().contains("UTF-8"));
    }

    #[test]
    fn object_size_snaps_memory_up() {
        let base = batchline::model::fargate::Size { vcpu: batchline::model::fargate::Quarters(1), memory_mib: 512 };
        assert_eq!(sized_for_object(base, 4, 10).unwrap(), base, "never below the definition");
        assert_eq!(sized_for_object(base, 4, 300 * 1024 * 1024).unwrap().to_string(), "0.25 vCPU / 2048 MiB");
        assert_eq!(sized_for_object(base, 4, 1024 * 1024 * 1024).unwrap().to_string(), "0.5 vCPU / 4096 MiB");
        assert!(sized_for_object(base, 4, 200 * 1024 * 1024 * 1024).is_err());
    }

    #[test]
    fn schedule_rules_are_named_by_their_arn() {
        let rule = |arn: &str| schedule_rule_name(&[arn.to_owned()]);
        assert_eq!(rule("arn:aws:events:us-east-1:123456789012:rule/batchline-nightly").unwrap(), "batchline-nightly");
        assert_eq!(rule("arn:aws:events:us-east-1:123456789012:rule/my-bus/nightly").unwrap(), "nightly");
        assert!(schedule_rule_name(&[]).is_err());
    }
}
