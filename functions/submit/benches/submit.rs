//! Benchmark: submit's per-event handler work without the network — parse the S3 event,
//! decode the key, match the rules, size and name the job, build and check the request.
//!
//! Run with `cargo bench -p batchline-submit --bench submit`. Prints numbers; asserts nothing.

use std::hint::black_box;
use std::time::Instant;

use aws_lambda_events::eventbridge::EventBridgeEvent;
use batchline::model::stack::StackConfig;
use batchline_submit::plan::Planned;
use batchline_submit::triggers::{object_created, plan_object, ObjectCreatedDetail};

fn config() -> StackConfig {
    let properties = serde_json::json!({
        "Network": {"Subnets": ["subnet-1"], "SecurityGroups": ["sg-1"]},
        "JobDefinitions": {"default": {}, "report": {"Vcpu": "1", "Memory": "2048"}},
        "Triggers": {"S3": {
            "csv": {"Prefix": "incoming/", "Suffix": ".csv", "JobDefinition": "default", "MemoryPerInputByte": "4"},
            "json": {"Prefix": "incoming/", "Suffix": ".json", "JobDefinition": "report"},
            "other": {"Prefix": "archive/", "JobDefinition": "default"}
        }}
    });
    let declared = batchline_bootstrap::declaration::declare(&properties).expect("valid configuration");
    declared.assume_provisioned(|kind, name| format!("arn:aws:batch:us-east-1:123456789012:{kind}/{name}"))
}

fn main() {
    let config = config();
    let template: serde_json::Value =
        serde_json::from_str(include_str!("../../../tests/fixtures/s3/object-created.json")).expect("fixture");
    let events: Vec<String> = (0..1_000)
        .map(|i| {
            let mut event = template.clone();
            event["detail"]["object"]["key"] = format!("incoming/Q{} report+%C3%A9t%C3%A9+{i}.csv", i % 4).into();
            event["detail"]["object"]["sequencer"] = format!("{i:018X}").into();
            event["detail"]["object"]["size"] = (i as u64 * 1_048_576).into();
            event.to_string()
        })
        .collect();
    let rounds = 20;
    let started = Instant::now();
    let mut jobs = 0;
    for _ in 0..rounds {
        for body in &events {
            let event: EventBridgeEvent<ObjectCreatedDetail> = serde_json::from_str(body).expect("an S3 event");
            let object = object_created(&event.detail).expect("a key that decodes");
            for outcome in plan_object(&config, &object, "id") {
                if let Planned::Job(request) = outcome.planned.expect("planned") {
                    request.validate().expect("valid");
                    jobs += black_box(request).job_name.len().min(1);
                }
            }
        }
    }
    let per_event = started.elapsed().as_secs_f64() / (rounds * events.len()) as f64;
    println!("{:>10} | {:>14} | {:>12}", "events", "events/s", "µs per event");
    println!("{:>10} | {:>14.0} | {:>12.2}", rounds * events.len(), 1.0 / per_event, per_event * 1e6);
    println!("({jobs} job requests built: parse, decode, match, size, name, tag, validate)");
}
