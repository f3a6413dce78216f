//! The functions' SQS event lanes as template.yaml declares them, wired on an EventBridge bus in the emulator.
//!
//! Each SQS event source of a function is a lane: the rule that fills its queue (pattern
//! and input transformer) and the BatchSize and batching window Lambda reads it with.
//! job-events has two (every job state change; the changes of jobs in runs), submit one
//! (objects created under the input prefix), the map worker two (its stack's map work, and
//! its coalesced objects). Tests wire the lanes to see which events
//! reach which queue in which envelope; the local stack and the benchmark also play
//! Lambda's event sources on them ([`crate::event_source`]). All read them from the
//! template, so what they check and play is what gets deployed.

use std::time::Duration;

use serde_json::{json, Value};

use crate::emulator::repo_root;

/// One SQS event source of job-events.
#[derive(Debug, Clone)]
pub struct Lane {
    /// The queue's logical id.
    pub queue: String,
    pub batch_size: usize,
    pub window: Duration,
    /// The EventBridge pattern of the rule that fills the queue.
    pub pattern: Value,
    /// The target's `InputTransformer.InputTemplate`, if it has one.
    pub input_template: Option<String>,
    /// The bus of the stack's own the rule is on (`<stack>-lanes`, the template's `LaneBus`),
    /// or `None` for a rule on the bus AWS's events come to (the caller names it).
    pub bus: Option<String>,
}

/// The lanes template.yaml gives job-events, their rules matching `queue_arns`.
pub fn template_lanes(queue_arns: &[String]) -> Result<Vec<Lane>, String> {
    function_lanes("JobEventsFunction", None, &|pattern| pattern["detail"]["jobQueue"] = json!(queue_arns))
}

/// The lane template.yaml gives submit for objects created in `bucket` under `prefix`.
pub fn trigger_lane(bucket: &str, prefix: &str) -> Result<Lane, String> {
    let lanes = function_lanes("SubmitFunction", None, &|pattern| {
        pattern["detail"]["bucket"]["name"] = json!([bucket]);
        pattern["detail"]["object"]["key"] = json!([{ "prefix": prefix }]);
    })?;
    match <[Lane; 1]>::try_from(lanes) {
        Ok([lane]) => Ok(lane),
        Err(lanes) => Err(format!("submit has {} SQS event sources in template.yaml, not one", lanes.len())),
    }
}

/// The lane template.yaml gives the map worker for the map work of the stack `stack`
/// (its configuration's `NamePrefix`).
pub fn map_lane(stack: &str) -> Result<Lane, String> {
    map_worker_lane("MapWorkQueue", stack)
}

/// The lane template.yaml gives the map worker for the coalesced objects of the stack
/// `stack` (and the windows' closes, which the map worker sends to its queue itself).
pub fn coalesce_lane(stack: &str) -> Result<Lane, String> {
    map_worker_lane("CoalesceQueue", stack)
}

fn map_worker_lane(queue: &str, stack: &str) -> Result<Lane, String> {
    let lanes = function_lanes("MapFunction", Some(stack), &|pattern| pattern["detail"]["stack"] = json!([stack]))?;
    lanes
        .into_iter()
        .find(|lane| lane.queue == queue)
        .ok_or_else(|| format!("the map worker has no SQS event source on {queue} in template.yaml"))
}

/// The SQS lanes of the function whose logical id is `function`, each rule's pattern given the stack's own
/// values by `fill` (the template's `!Ref`s have none here), a rule on the stack's own bus
/// put on `stack`'s.
fn function_lanes(function: &str, stack: Option<&str>, fill: &dyn Fn(&mut Value)) -> Result<Vec<Lane>, String> {
    let text = std::fs::read_to_string(repo_root().join("template.yaml")).map_err(|e| e.to_string())?;
    let template: serde_yaml::Value = serde_yaml::from_str(&text).map_err(|e| e.to_string())?;
    let resources = template["Resources"].as_mapping().ok_or("template.yaml has no Resources")?;
    let events = template["Resources"][function]["Properties"]["Events"]
        .as_mapping()
        .ok_or_else(|| format!("{function} has no Events"))?;
    let mut lanes = Vec::new();
    for event in events.values().filter(|e| e["Type"].as_str() == Some("SQS")) {
        let properties = &event["Properties"];
        let queue = logical_id(&properties["Queue"]).ok_or("an SQS event without a queue")?;
        let (rule, target) = resources
            .values()
            .filter(|r| r["Type"].as_str() == Some("AWS::Events::Rule"))
            .find_map(|r| {
                let targets = r["Properties"]["Targets"].as_sequence()?;
                let target = targets.iter().find(|t| logical_id(&t["Arn"]).as_deref() == Some(&queue))?;
                Some((r, target))
            })
            .ok_or_else(|| format!("no rule fills {queue}"))?;
        let mut pattern: Value = serde_json::to_value(untagged(&rule["Properties"]["EventPattern"]))
            .map_err(|e| format!("{queue}'s rule pattern: {e}"))?;
        fill(&mut pattern);
        let bus = match (sub_text(&rule["Properties"]["EventBusName"]), stack) {
            (None, _) => None,
            (Some(name), Some(stack)) => {
                // The template names the stack's bus; the functions derive the same name.
                let named = name.replace("${AWS::StackName}", stack);
                if named != batchline::services::announce::lane_bus(stack) {
                    return Err(format!("{queue}'s rule is on {name}, not the bus the functions put work on"));
                }
                Some(named)
            }
            (Some(name), None) => return Err(format!("{queue}'s rule is on {name}, a bus the lanes do not know")),
        };
        lanes.push(Lane {
            bus,
            queue,
            batch_size: properties["BatchSize"].as_u64().unwrap_or(10) as usize,
            window: Duration::from_secs(properties["MaximumBatchingWindowInSeconds"].as_u64().unwrap_or(0)),
            pattern,
            input_template: target["InputTransformer"]["InputTemplate"].as_str().map(str::to_owned),
        });
    }
    Ok(lanes)
}

/// A lane wired in the emulator: its queue and the rule that fills it.
#[derive(Debug, Clone)]
pub struct WiredLane {
    pub lane: Lane,
    pub queue_url: String,
    pub queue_arn: String,
}

impl Lane {
    /// Creates the lane's queue (named `name`) and its rule on `bus` (on the stack's own bus,
    /// made if missing, for a rule the template puts there), target transformer included.
    pub async fn wire(
        &self,
        sqs: &aws_sdk_sqs::Client,
        events: &aws_sdk_eventbridge::Client,
        bus: &str,
        name: &str,
    ) -> Result<WiredLane, String> {
        use aws_sdk_eventbridge::types::{InputTransformer, Target};
        let bus = match &self.bus {
            Some(own) => {
                ensure_bus(events, own).await?;
                own.as_str()
            }
            None => bus,
        };
        let (queue_url, queue_arn) = create_queue(sqs, name, None).await?;
        events
            .put_rule()
            .name(name)
            .event_bus_name(bus)
            .event_pattern(self.pattern.to_string())
            .send()
            .await
            .map_err(|e| batchline::Error::aws("PutRule", e).to_string())?;
        let mut target = Target::builder().id("queue").arn(&queue_arn);
        if let Some(template) = &self.input_template {
            target = target.input_transformer(
                InputTransformer::builder().input_template(template).build().map_err(|e| e.to_string())?,
            );
        }
        events
            .put_targets()
            .rule(name)
            .event_bus_name(bus)
            .targets(target.build().map_err(|e| e.to_string())?)
            .send()
            .await
            .map_err(|e| batchline::Error::aws("PutTargets", e).to_string())?;
        Ok(WiredLane { lane: self.clone(), queue_url, queue_arn })
    }
}

/// Makes the event bus `name` unless it is there (the stack's own bus, which the template
/// makes: the tests' stacks have no CloudFormation to make it).
pub async fn ensure_bus(events: &aws_sdk_eventbridge::Client, name: &str) -> Result<(), String> {
    if events.describe_event_bus().name(name).send().await.is_ok() {
        return Ok(());
    }
    match events.create_event_bus().name(name).send().await {
        Ok(_) => Ok(()),
        Err(err) => {
            let err = batchline::Error::aws("CreateEventBus", err);
            // Made by another test at the same moment.
            if err.aws_code() == Some("ResourceAlreadyExistsException") {
                Ok(())
            } else {
                Err(err.to_string())
            }
        }
    }
}

/// Creates an SQS queue (with this visibility timeout in seconds, if given); its URL and ARN.
pub async fn create_queue(
    sqs: &aws_sdk_sqs::Client,
    name: &str,
    visibility_seconds: Option<u32>,
) -> Result<(String, String), String> {
    let mut request = sqs.create_queue().queue_name(name);
    if let Some(seconds) = visibility_seconds {
        request = request.attributes(aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout, seconds.to_string());
    }
    let url = request
        .send()
        .await
        .map_err(|e| batchline::Error::aws("CreateQueue", e).to_string())?
        .queue_url()
        .unwrap_or_default()
        .to_owned();
    let arn = sqs
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .map_err(|e| batchline::Error::aws("GetQueueAttributes", e).to_string())?
        .attributes()
        .and_then(|a| a.get(&aws_sdk_sqs::types::QueueAttributeName::QueueArn).cloned())
        .ok_or_else(|| format!("the queue {name} has no ARN"))?;
    Ok((url, arn))
}

/// The text of a `!Sub "..."` (or a plain string), unresolved.
fn sub_text(value: &serde_yaml::Value) -> Option<String> {
    match value {
        serde_yaml::Value::Tagged(tagged) if tagged.tag == "!Sub" => tagged.value.as_str().map(str::to_owned),
        serde_yaml::Value::String(text) => Some(text.clone()),
        _ => None,
    }
}

/// The logical id `!GetAtt X.Arn` names.
fn logical_id(value: &serde_yaml::Value) -> Option<String> {
    match value {
        serde_yaml::Value::Tagged(tagged) => tagged.value.as_str()?.split('.').next().map(str::to_owned),
        _ => None,
    }
}

/// The value with its tags (`!Split ...`) dropped to their content, as JSON takes it.
fn untagged(value: &serde_yaml::Value) -> serde_yaml::Value {
    match value {
        serde_yaml::Value::Tagged(tagged) => untagged(&tagged.value),
        serde_yaml::Value::Mapping(map) => {
            serde_yaml::Value::Mapping(map.iter().map(|(k, v)| (k.clone(), untagged(v))).collect())
        }
        serde_yaml::Value::Sequence(items) => serde_yaml::Value::Sequence(items.iter().map(untagged).collect()),
        other => other.clone(),
    }
}
