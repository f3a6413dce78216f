//! The orchestration bill's counting, checked against the emulator's own: one unit of work run by the bill's machinery, its calls counted by the bench's forwarders and by the emulator itself.
//!
//! The bench's forwarders pass every call on to a fault scope of the emulator with no
//! faults in it, and the emulator counts each call it receives there by operation (its
//! own reading of the request, in Python, apart from the forwarder's): the two counts must
//! be the same, operation by operation. The unit is one three-stage pipeline run, started
//! through the API and played through the template's lanes by the functions' binaries.

use std::collections::BTreeMap;

use batchline_bench::bill::{self, Kind, Rig};
use batchline_bench::maps::Spawn;
use batchline_testkit::emulator::{endpoint, repo_root, sdk_config, unique_name};
use batchline_testkit::faults::FaultScope;
use serde_json::json;

use crate::common::Deployed;

#[tokio::test]
async fn the_bills_call_counter_agrees_with_the_emulators_own_count_for_one_pipeline_run() {
    let sdk = sdk_config().await;
    let bucket = unique_name("bill-in").to_lowercase();
    let s3 = aws_sdk_s3::Client::from_conf(aws_sdk_s3::config::Builder::from(&sdk).force_path_style(true).build());
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let mut extra = json!({"Roles": {"InputBucket": bucket}, "JobDefinitions": {"default": {}}});
    bill::declare(&mut extra, &bucket);
    let env = Deployed::new("bill-count", extra).await;
    let scope_name = unique_name("bill-count");
    let scope = FaultScope::enable(&scope_name, 0, &BTreeMap::new()).await.unwrap();
    let environment = batchline_demo::local_environment(&env.settings.table_name).unwrap();
    let queue_arn = env.stack.job_queues.values().next().expect("a job queue").arn.clone();
    let rig = Rig {
        sdk: &env.sdk,
        environment: &environment,
        stack: &env.name,
        bucket: &bucket,
        queue_arn: &queue_arn,
        spawn: Spawn {
            binaries: repo_root().join("target/debug"),
            upstream: format!("{}/_faults/{scope_name}", endpoint()),
        },
    };

    let mut player = batchline_testkit::player::Player::new(&env.sdk);
    let counted = bill::measure(&rig, &mut player, Kind::PipelineRuns, 1).await.unwrap();
    let ours: BTreeMap<String, u64> =
        batchline_bench::prices::calls(&counted).into_iter().map(|(op, n)| (op.to_lowercase(), n)).collect();
    let theirs: BTreeMap<String, u64> =
        scope.counts().await.unwrap().into_iter().map(|(op, counts)| (op.to_lowercase(), counts["calls"])).collect();
    scope.disable().await.unwrap();
    assert_eq!(ours, theirs, "the bench's forwarders and the emulator disagree");
    // What was counted is the run's work: three stages submitted, the run read and
    // written, its end announced; every lane invoked, the API once.
    assert_eq!(ours.get("batch:submitjob"), Some(&3), "{ours:?}");
    assert!(ours.get("dynamodb:getitem").is_some_and(|n| *n >= 3), "{ours:?}");
    assert_eq!(ours.get("events:putevents"), Some(&1), "one Run Completed event: {ours:?}");
    assert!(counted.job_events >= 12, "four or more events a job: {}", counted.job_events);
    assert_eq!(counted.api_requests, 1);
    for process in &counted.processes {
        assert!(process.invocations > 0, "{} was never invoked", process.label);
        assert!(process.cpu_seconds > 0.0, "{} has no CPU time", process.label);
    }
    let metrics_lane = counted.processes.iter().find(|p| p.label.contains("JobEventsQueue")).unwrap();
    assert_eq!(metrics_lane.messages, counted.job_events, "the metrics lane takes every job event");
    assert!(metrics_lane.write_units > 0 && counted.processes.iter().any(|p| p.read_units > 0.0));
}
