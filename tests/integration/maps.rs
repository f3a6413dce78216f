//! Map stages against the emulator: the real functions (submit's API, job-events, the map worker), the template's map lane on the default bus, S3 and Batch arrays played child by child.
//!
//! The run's job events are handed to job-events as the runs lane would deliver them:
//! every event but the array children's (the lane's pattern leaves them out; that pattern
//! is checked in `template.rs` and `job_events.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use batchline_testkit::emulator::{sdk_config, unique_name, Principal};
use batchline_testkit::invocation;
use batchline_testkit::lanes::{map_lane, WiredLane};
use batchline_testkit::player::{Delivery, Player, Script, StateChange};
use serde_json::{json, Value};

use crate::common::{job_events_invocation, stats, Deployed};

const QUEUE_ARN: &str = "arn:aws:sqs:us-east-1:123456789012:batchline-job-events";

fn pipelines() -> Value {
    json!({
        "JobDefinitions": {"default": {}},
        "Pipelines": {
            "thumbnails": {"Stages": {
                "resize": {"JobDefinition": "default",
                           "Map": {"Prefix": "s3://{inputBucket}/{inputPrefix}", "Suffix": ".jpg"}},
                "report": {"JobDefinition": "default", "After": "resize"}
            }},
            "listed": {"Stages": {
                "each": {"JobDefinition": "default", "Map": {"Manifest": "s3://{inputBucket}/lists/{list}", "ItemsPerChild": "10"}},
                "report": {"JobDefinition": "default", "After": "each"}
            }},
            "tolerant": {"Stages": {
                "each": {"JobDefinition": "default", "Map": {"Items": "files", "ToleratedFailures": "2", "MaxConcurrency": "4"},
                         "Parameters": {"play_children": "3=exit:2,7=exit:1"}},
                "report": {"JobDefinition": "default", "After": "each"}
            }},
            "intolerant": {"Stages": {
                "each": {"JobDefinition": "default", "Map": {"Items": "files", "ToleratedFailures": "2"},
                         "Parameters": {"play_children": "1=exit:2,2=exit:2,5=exit:3"}},
                "report": {"JobDefinition": "default", "After": "each"}
            }},
            // Children 3, 17 and 42 run out of memory once (MaxResizes 1: resubmitted once).
            "resizing": {"Stages": {
                "each": {"JobDefinition": "default", "Map": {"Prefix": "s3://{inputBucket}/{inputPrefix}"}, "MaxResizes": "1",
                         "Parameters": {"play_children": "3=oom,17=oom,42=oom"}},
                "report": {"JobDefinition": "default", "After": "each"}
            }},
            // Children 0, 1 and 5 out of memory; resubmitted (array indexes 0, 1, 2), 0 and 1 again.
            "stubborn": {"Stages": {
                "each": {"JobDefinition": "default", "Map": {"Items": "files", "ToleratedFailures": "1"}, "MaxResizes": "1",
                         "Parameters": {"play_children": "0=oom,1=oom,5=oom"}},
                "report": {"JobDefinition": "default", "After": "each"}
            }},
            // A map of one child is a plain job: its failure is read with DescribeJobs.
            "lonely": {"Stages": {
                "each": {"JobDefinition": "default", "Map": {"Items": "files"}, "Parameters": {"play": "exit:4"}}
            }},
            // 12,000 children: two arrays (10,000 and 2,000); child 17 of each fails.
            "wide": {"Stages": {
                "each": {"JobDefinition": "default", "Map": {"Manifest": "s3://{inputBucket}/lists/{list}", "ToleratedFailures": "2"},
                         "Parameters": {"play_children": "17=exit:3"}},
                "report": {"JobDefinition": "default", "After": "each"}
            }},
            "chained": {"Stages": {
                "produce": {"JobDefinition": "default"},
                "each": {"JobDefinition": "default", "After": "produce", "Map": {"Prefix": "{runData}produce/"}},
                "report": {"JobDefinition": "default", "After": "each"}
            }}
        }
    })
}

/// A stack with map pipelines, its input bucket, the functions, the map lane and the player.
struct Harness {
    env: Deployed,
    bucket: String,
    s3: aws_sdk_s3::Client,
    sqs: aws_sdk_sqs::Client,
    map_lane: WiredLane,
    submit: batchline_submit::Clients,
    job_events: batchline_job_events::Clients,
    map: batchline_map::Clients,
    player: Player,
}

impl Harness {
    async fn new(test: &str) -> Harness {
        let sdk = sdk_config().await;
        let s3 = batchline_map::s3_client(&sdk);
        let bucket = unique_name(&format!("{test}-in")).to_lowercase();
        s3.create_bucket().bucket(&bucket).send().await.unwrap();
        let mut properties = pipelines();
        properties["Roles"] = json!({"InputBucket": bucket});
        let env = Deployed::new(test, properties).await;
        let sqs = aws_sdk_sqs::Client::new(&env.sdk);
        let events = aws_sdk_eventbridge::Client::new(&env.sdk);
        let map_lane =
            map_lane(&env.name).unwrap().wire(&sqs, &events, "default", &format!("{}-map", env.name)).await.unwrap();
        let map = batchline_map::Clients::new(&env.sdk_as(Principal::Map), &env.settings);
        Harness {
            submit: batchline_submit::Clients::new(&env.sdk_as(Principal::Submit), &env.settings),
            job_events: batchline_job_events::Clients::new(&env.sdk_as(Principal::JobEvents), &env.settings),
            map,
            player: Player::new(&env.sdk),
            env,
            bucket,
            s3,
            sqs,
            map_lane,
        }
    }

    async fn put(&self, key: &str, body: &str) {
        self.s3.put_object().bucket(&self.bucket).key(key).body(body.as_bytes().to_vec().into()).send().await.unwrap();
    }

    async fn read(&self, uri: &str) -> String {
        let (bucket, key) = uri.strip_prefix("s3://").unwrap().split_once('/').unwrap();
        let object = self.s3.get_object().bucket(bucket).key(key).send().await.unwrap();
        String::from_utf8(object.body.collect().await.unwrap().to_vec()).unwrap()
    }

    async fn api(&self, method: &str, path: &str, body: Value) -> (u16, Value) {
        let request = json!({
            "version": "2.0", "rawPath": path, "headers": {"content-type": "application/json"},
            "requestContext": {"http": {"method": method, "path": path}},
            "body": if body.is_null() { String::new() } else { body.to_string() }, "isBase64Encoded": false
        });
        let answer = batchline_submit::handle(invocation(request), &self.submit).await.unwrap();
        (answer["statusCode"].as_u64().unwrap() as u16, serde_json::from_str(answer["body"].as_str().unwrap()).unwrap())
    }

    async fn start(&self, pipeline: &str, parameters: Value) -> String {
        let (status, body) =
            self.api("POST", &format!("/pipelines/{pipeline}/runs"), json!({"parameters": parameters})).await;
        assert_eq!(status, 202, "{body}");
        body["runId"].as_str().unwrap().to_owned()
    }

    async fn run(&self, run_id: &str) -> Value {
        let (status, body) = self.api("GET", &format!("/runs/{run_id}"), Value::Null).await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Hands the map lane's messages to the map worker until the queue is empty; how many
    /// pieces of work it did.
    async fn work_maps(&self) -> usize {
        self.work_maps_with(Duration::from_secs(300), 1).await
    }

    /// [`Self::work_maps`], each invocation given `time` before its deadline, and each
    /// message handed over `copies` times (as SQS may deliver it).
    async fn work_maps_with(&self, time: Duration, copies: usize) -> usize {
        let mut done = 0;
        loop {
            let received = self
                .sqs
                .receive_message()
                .queue_url(&self.map_lane.queue_url)
                .max_number_of_messages(10)
                .send()
                .await
                .unwrap();
            let messages = received.messages();
            if messages.is_empty() {
                return done;
            }
            for message in messages {
                let record = batchline_testkit::player::sqs_record(
                    message.message_id().unwrap(),
                    message.body().unwrap(),
                    &self.map_lane.queue_arn,
                );
                for _ in 0..copies {
                    let event: aws_lambda_events::sqs::SqsEvent =
                        serde_json::from_value(json!({"Records": [record.clone()]})).unwrap();
                    let mut context = invocation(json!({})).context;
                    context.deadline =
                        (SystemTime::now() + time).duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
                    let answer = batchline_map::handle(
                        lambda_runtime::LambdaEvent::new(event, context),
                        &self.map,
                        &self.env.settings,
                    )
                    .await
                    .unwrap();
                    assert!(answer.batch_item_failures.is_empty(), "the map worker failed its work");
                }
                self.sqs
                    .delete_message()
                    .queue_url(&self.map_lane.queue_url)
                    .receipt_handle(message.receipt_handle().unwrap())
                    .send()
                    .await
                    .unwrap();
                done += 1;
            }
        }
    }

    /// Hands the run's job events to job-events as the runs lane would (children left
    /// out), each `times` times, shuffled.
    async fn deliver(&self, changes: &[StateChange], times: usize) {
        let parents: Vec<StateChange> =
            changes.iter().filter(|c| c.event["detail"]["arrayProperties"]["index"].is_null()).cloned().collect();
        let delivery = Delivery::of(&parents).repeated(times).shuffled(7);
        for batch in delivery.sqs_batches(QUEUE_ARN, 10) {
            let answer = batchline_job_events::handle(
                job_events_invocation(invocation(batch)),
                &self.job_events,
                &self.env.settings,
            )
            .await
            .unwrap();
            assert_eq!(answer["batchItemFailures"], json!([]), "{answer}");
        }
    }

    /// Hands a delivery of job events to job-events as `lane` (`runs` or `metrics`) would, in
    /// its envelope — on the runs lane array children included as if its rule let them
    /// through — `per_call` to an invocation.
    async fn deliver_to_lane(&self, lane: &str, delivery: &Delivery, per_call: usize) {
        for chunk in delivery.events().chunks(per_call) {
            let records: Vec<Value> = chunk
                .iter()
                .map(|event| {
                    let body = json!({"lane": lane, "event": event}).to_string();
                    batchline_testkit::player::sqs_record(&batchline_testkit::player::event_id(), &body, QUEUE_ARN)
                })
                .collect();
            let answer = batchline_job_events::handle(
                job_events_invocation(invocation(json!({ "Records": records }))),
                &self.job_events,
                &self.env.settings,
            )
            .await
            .unwrap();
            assert_eq!(answer["batchItemFailures"], json!([]), "{answer}");
        }
    }

    /// The run as the table holds it, with its version (how often it was written).
    async fn stored(&self, run_id: &str) -> batchline::store::VersionedRun {
        let store = batchline::store::DynamoStore::new(
            aws_sdk_dynamodb::Client::new(&self.env.sdk),
            &self.env.settings.table_name,
        );
        batchline::store::RunStore::load_run(&store, run_id).await.unwrap().unwrap()
    }

    /// Works the maps and plays the queue until nothing new happens: every job played,
    /// settled in the emulator, and its events delivered (`times` times each).
    async fn play_to_the_end(&mut self, times: usize) -> Vec<StateChange> {
        let mut all = Vec::new();
        for _ in 0..20 {
            let worked = self.work_maps().await;
            let changes = self.player.play_queue(&self.env.queue_arn("default")).await.unwrap();
            if worked == 0 && changes.is_empty() {
                return all;
            }
            self.player.settle(&changes).await.unwrap();
            self.deliver(&changes, times).await;
            all.extend(changes);
        }
        panic!("the run did not settle in 20 rounds");
    }

    /// The run's jobs in Batch (parents and plain jobs), oldest first.
    async fn jobs(&self) -> Vec<aws_sdk_batch::types::JobDetail> {
        self.env.jobs_in("default").await
    }
}

/// The items of child `index` as a child finds them: line `AWS_BATCH_JOB_ARRAY_INDEX` of the
/// list its job's `BATCHLINE_ITEMS` names (line 0 for a plain job) — the book's example job,
/// step by step.
async fn items_of_child(h: &Harness, job: &aws_sdk_batch::types::JobDetail, array_index: usize) -> (usize, Vec<Value>) {
    let environment = job.container().unwrap().environment();
    let items_uri = environment.iter().find(|v| v.name() == Some("BATCHLINE_ITEMS")).unwrap().value().unwrap();
    let list = h.read(items_uri).await;
    let line: Value = serde_json::from_str(list.lines().nth(array_index).unwrap()).unwrap();
    (line["index"].as_u64().unwrap() as usize, line["items"].as_array().unwrap().clone())
}

/// The MiB of memory a job was submitted with.
fn memory(job: &aws_sdk_batch::types::JobDetail) -> u64 {
    let requirements = job.container().unwrap().resource_requirements();
    let memory = requirements.iter().find(|r| r.r#type().map(|t| t.as_str()) == Some("MEMORY"));
    memory.and_then(|r| r.value()).map(str::parse::<u64>).unwrap().unwrap()
}

fn environment_of(job: &aws_sdk_batch::types::JobDetail, name: &str) -> Option<String> {
    let environment = job.container()?.environment();
    environment.iter().find(|v| v.name() == Some(name)).and_then(|v| v.value()).map(str::to_owned)
}

#[tokio::test]
async fn a_map_over_250_objects_gives_every_object_to_exactly_one_child_and_runs_the_next_stage_once() {
    let mut h = Harness::new("map-prefix").await;
    for i in 0..250 {
        h.put(&format!("photos/2026-12-06/img-{i:03}.jpg"), "jpeg").await;
    }
    // Not items: another suffix, the marker, another folder.
    h.put("photos/2026-12-06/notes.txt", "x").await;
    h.put("photos/2026-12-06/_SUCCESS", "").await;
    h.put("photos/2026-12-07/img-000.jpg", "jpeg").await;
    let run_id = h.start("thumbnails", json!({"inputBucket": h.bucket, "inputPrefix": "photos/2026-12-06/"})).await;
    assert!(h.jobs().await.is_empty(), "nothing is submitted before the items are listed");

    // The map worker lists the prefix once and the array is submitted, once.
    assert_eq!(h.work_maps().await, 1);
    assert_eq!(h.work_maps().await, 0);
    let jobs = h.jobs().await;
    assert_eq!(jobs.len(), 1, "one array job");
    let array = &jobs[0];
    assert_eq!(array.array_properties().and_then(|a| a.size()), Some(250));
    assert_eq!(environment_of(array, "BATCHLINE_MAP_SIZE").as_deref(), Some("250"));
    let mut seen = BTreeSet::new();
    for child in 0..250 {
        let (index, items) = items_of_child(&h, array, child).await;
        assert_eq!(index, child, "one array: its children's map indexes are their array indexes");
        assert_eq!(items.len(), 1);
        assert!(seen.insert(items[0].as_str().unwrap().to_owned()), "an object given twice");
    }
    let expected: BTreeSet<String> =
        (0..250).map(|i| format!("s3://{}/photos/2026-12-06/img-{i:03}.jpg", h.bucket)).collect();
    assert_eq!(seen, expected, "exactly the objects the prefix holds with the suffix");

    // Played to the end, each parent event delivered twice, shuffled.
    let changes = h.play_to_the_end(2).await;
    assert!(changes.iter().filter(|c| !c.event["detail"]["arrayProperties"]["index"].is_null()).count() >= 250);
    let run = h.run(&run_id).await;
    assert_eq!(run["status"], "SUCCEEDED", "{run}");
    let map = &run["stages"]["resize"]["map"];
    assert_eq!(
        (map["children"].clone(), map["succeeded"].clone(), map["failed"].clone()),
        (json!(250), json!(250), json!(0))
    );
    let reports: Vec<_> =
        h.jobs().await.into_iter().filter(|j| j.tags().unwrap()["batchline:stage"] == "report").collect();
    assert_eq!(reports.len(), 1, "the stage after the map ran once");
    // The run's cost counts every child's task (30 s each, billed at Fargate's one-minute minimum).
    let cost = &run["stages"]["resize"]["attempts"][0]["cost"];
    let billed: Vec<(Value, Value)> = cost["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["billableSeconds"].clone(), t["capacity"].clone()))
        .collect();
    assert_eq!(billed, [(json!(250 * 60), json!("FARGATE"))], "{cost}");
    let stage_cost = run["stages"]["resize"]["costUsd"].as_f64().unwrap();
    assert!(stage_cost > 0.0 && (stage_cost - cost["usd"].as_f64().unwrap()).abs() < 1e-9, "{run}");
    let results = h.read(&format!("{}resize/_batchline/results.jsonl", run["runData"].as_str().unwrap())).await;
    assert_eq!(results.lines().count(), 250);
    assert!(results.lines().all(|l| serde_json::from_str::<Value>(l).unwrap()["status"] == "SUCCEEDED"));
}

#[tokio::test]
async fn a_listing_out_of_time_goes_on_in_the_next_invocation_from_where_it_stopped() {
    let mut h = Harness::new("map-resume").await;
    for i in 0..250 {
        h.put(&format!("photos/day/img-{i:03}.jpg"), "jpeg").await;
    }
    // Pages of 100 keys, and each invocation within its reserve after the first page: every
    // invocation lists one page, keeps what it has and sends itself the rest. Each message
    // is handed over twice (SQS's at-least-once), so two listings go on side by side.
    let objects = batchline_map::objects::S3Objects::new(batchline_map::s3_client(&h.env.sdk_as(Principal::Map)));
    h.map.objects = Box::new(objects.with_page_size(100));
    let run_id = h.start("thumbnails", json!({"inputBucket": h.bucket, "inputPrefix": "photos/day/"})).await;
    let reserve = Duration::from_millis(batchline_map::expand::RESERVE_MS as u64);
    let worked = h.work_maps_with(reserve, 2).await;
    assert_eq!(worked, 1 + 2 + 4, "one message, then each copy's continuation: two, then four");

    let jobs = h.jobs().await;
    assert_eq!(jobs.len(), 1, "the arrays are submitted once, by the first listing to answer");
    let array = &jobs[0];
    assert_eq!(array.array_properties().and_then(|a| a.size()), Some(250));
    let mut seen = BTreeSet::new();
    for child in 0..250 {
        let (_, items) = items_of_child(&h, array, child).await;
        seen.insert(items[0].as_str().unwrap().to_owned());
    }
    let expected: BTreeSet<String> = (0..250).map(|i| format!("s3://{}/photos/day/img-{i:03}.jpg", h.bucket)).collect();
    assert_eq!(seen, expected, "every object once, across the three pieces of the listing");
    h.play_to_the_end(1).await;
    assert_eq!(h.run(&run_id).await["status"], "SUCCEEDED");
}

#[tokio::test]
async fn a_listing_to_resume_that_is_not_the_attempts_own_is_not_read_and_the_prefix_is_listed_anew() {
    let mut h = Harness::new("map-forged-resume").await;
    for i in 0..5 {
        h.put(&format!("photos/day/img-{i}.jpg"), "jpeg").await;
    }
    // GIVEN a listing somewhere else in the bucket that names an object of its own choosing
    // and says the listing is past every real key
    h.put("elsewhere/listing.json", r#"{"after": "photos/day/zzz", "keys": ["photos/day/planted.jpg"]}"#).await;
    let run_id = h.start("thumbnails", json!({"inputBucket": h.bucket, "inputPrefix": "photos/day/"})).await;
    // WHEN the map work comes to the worker naming that file as the listing to resume
    let received =
        h.sqs.receive_message().queue_url(&h.map_lane.queue_url).max_number_of_messages(10).send().await.unwrap();
    let [message] = received.messages() else { panic!("one map work message: {received:?}") };
    let mut forged: Value = serde_json::from_str(message.body().unwrap()).unwrap();
    forged["detail"]["resume"] = json!(format!("s3://{}/elsewhere/listing.json", h.bucket));
    let queue = &h.map_lane.queue_url;
    h.sqs.send_message().queue_url(queue).message_body(forged.to_string()).send().await.unwrap();
    h.sqs.delete_message().queue_url(queue).receipt_handle(message.receipt_handle().unwrap()).send().await.unwrap();
    h.work_maps().await;
    // THEN the prefix was listed anew: the five objects, not the planted one
    let jobs = h.jobs().await;
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].array_properties().and_then(|a| a.size()), Some(5));
    let mut seen = BTreeSet::new();
    for child in 0..5 {
        let (_, items) = items_of_child(&h, &jobs[0], child).await;
        seen.insert(items[0].as_str().unwrap().to_owned());
    }
    assert!(!seen.iter().any(|s| s.contains("planted")), "{seen:?}");
    h.play_to_the_end(1).await;
    assert_eq!(h.run(&run_id).await["status"], "SUCCEEDED");
}

#[tokio::test]
async fn failures_within_the_tolerance_succeed_listing_each_and_past_it_fail_the_run() {
    let mut h = Harness::new("map-tolerance").await;
    let files: Vec<String> = (0..10).map(|i| format!("file-{i}")).collect();
    let files = serde_json::to_string(&files).unwrap();

    // Two children fail, two are tolerated; MaxConcurrency 4: arrays of 4, 4 and 2, one at a time.
    let run_id = h.start("tolerant", json!({"files": files})).await;
    h.work_maps().await;
    assert_eq!(h.jobs().await.len(), 1, "MaxConcurrency 4: one array of four, the next once it has ended");
    let changes = h.play_to_the_end(2).await;
    let run = h.run(&run_id).await;
    assert_eq!(run["status"], "SUCCEEDED", "{run}");
    let map = &run["stages"]["each"]["map"];
    assert_eq!(
        (map["children"].clone(), map["arrays"].clone(), map["failed"].clone()),
        (json!(10), json!(3), json!(2))
    );
    let failed: BTreeMap<u64, (Value, Value)> = map["failedItems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["index"].as_u64().unwrap(), (f["items"].clone(), f["exitCode"].clone())))
        .collect();
    assert_eq!(
        failed,
        BTreeMap::from([(3, (json!(["file-3"]), json!(2))), (7, (json!(["file-7"]), json!(2)))]),
        "each failed child with its items and exit code (the player's play_children go by array index: \
         child 3 of the first two arrays of four, map indexes 3 and 7, exit 2)"
    );
    let parents: Vec<_> =
        h.jobs().await.into_iter().filter(|j| j.tags().unwrap()["batchline:stage"] == "each").collect();
    assert_eq!(
        parents.iter().map(|j| j.array_properties().and_then(|a| a.size())).collect::<Vec<_>>(),
        [Some(4), Some(4), Some(2)]
    );
    let reports = h.jobs().await.into_iter().filter(|j| j.tags().unwrap()["batchline:stage"] == "report").count();
    assert_eq!(reports, 1);
    let results = h.read(&format!("{}each/_batchline/results.jsonl", run["runData"].as_str().unwrap())).await;
    let statuses: Vec<(u64, String)> = results
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|l| (l["index"].as_u64().unwrap(), l["status"].as_str().unwrap().to_owned()))
        .collect();
    let expected: Vec<(u64, String)> =
        (0..10).map(|i| (i, if i == 3 || i == 7 { "FAILED" } else { "SUCCEEDED" }.to_owned())).collect();
    assert_eq!(statuses, expected);
    assert!(!changes.is_empty());

    // Three failures, two tolerated: the run fails, and the stage after never runs.
    let failing = h.start("intolerant", json!({"files": files})).await;
    h.play_to_the_end(1).await;
    let run = h.run(&failing).await;
    assert_eq!(run["status"], "FAILED", "{run}");
    assert_eq!(run["reason"], "stage each: 3 of 10 children failed; ToleratedFailures allows 2");
    assert_eq!(run["stages"]["report"]["status"], "SKIPPED");

    // One item: a plain job, not an array; its failure listed as a child's.
    let single = h.start("lonely", json!({"files": "[\"only\"]"})).await;
    h.play_to_the_end(1).await;
    let run = h.run(&single).await;
    assert_eq!(run["status"], "FAILED", "{run}");
    let job = h.jobs().await.into_iter().find(|j| j.tags().unwrap()["batchline:run"] == single).unwrap();
    assert_eq!(job.array_properties().and_then(|a| a.size()), None, "a plain job");
    let failed = &run["stages"]["each"]["map"]["failedItems"];
    assert_eq!(
        (failed[0]["index"].clone(), failed[0]["items"].clone(), failed[0]["exitCode"].clone()),
        (json!(0), json!(["only"]), json!(4))
    );
}

#[tokio::test]
async fn a_cancelled_map_leaves_no_child_running_and_submits_no_further_array() {
    let mut h = Harness::new("map-cancel").await;
    let files: Vec<String> = (0..10).map(|i| format!("file-{i}")).collect();
    // MaxConcurrency 4: one array of four runs, two more wait their turn.
    let run_id = h.start("tolerant", json!({"files": serde_json::to_string(&files).unwrap()})).await;
    h.work_maps().await;
    let arrays = h.jobs().await;
    assert_eq!(arrays.len(), 1);
    let (status, body) = h.api("DELETE", &format!("/runs/{run_id}"), Value::Null).await;
    assert_eq!(status, 202, "{body}");

    // What Batch then reports: the parent and each child stopped.
    let changes = h.play_to_the_end(2).await;
    let run = h.run(&run_id).await;
    assert_eq!(run["status"], "CANCELLED", "{run}");
    let parent = arrays[0].job_id().unwrap();
    let children: Vec<&StateChange> = changes
        .iter()
        .filter(|c| c.event["detail"]["jobId"].as_str().is_some_and(|id| id.starts_with(&format!("{parent}:"))))
        .collect();
    let ends: BTreeMap<u64, &str> = children
        .iter()
        .filter(|c| matches!(c.status, "SUCCEEDED" | "FAILED"))
        .map(|c| (c.event["detail"]["arrayProperties"]["index"].as_u64().unwrap(), c.status))
        .collect();
    assert_eq!(ends, (0..4).map(|i| (i, "FAILED")).collect(), "every child stopped");
    assert!(children.iter().all(|c| c.status != "RUNNING"), "no child ran");
    use aws_sdk_batch::types::JobStatus;
    let batch = aws_sdk_batch::Client::new(&h.env.sdk);
    for status in
        [JobStatus::Submitted, JobStatus::Pending, JobStatus::Runnable, JobStatus::Starting, JobStatus::Running]
    {
        let listed = batch.list_jobs().array_job_id(parent).job_status(status.clone()).send().await.unwrap();
        assert!(listed.job_summary_list().is_empty(), "Batch lists a child still {status:?}");
    }
    let failed = batch.list_jobs().array_job_id(parent).job_status(JobStatus::Failed).send().await.unwrap();
    assert_eq!(failed.job_summary_list().len(), 4);
    assert_eq!(h.jobs().await.len(), 1, "no further array was submitted");
}

#[tokio::test]
async fn children_out_of_memory_run_again_one_size_up_as_one_array_of_just_them_and_a_redrive_runs_only_the_failed() {
    let mut h = Harness::new("map-resize").await;
    for i in 0..250 {
        h.put(&format!("in/img-{i:03}.jpg"), "jpeg").await;
    }
    let run_id = h.start("resizing", json!({"inputBucket": h.bucket, "inputPrefix": "in/"})).await;
    h.play_to_the_end(2).await;
    let run = h.run(&run_id).await;
    assert_eq!(run["status"], "SUCCEEDED", "{run}");
    let map = &run["stages"]["each"]["map"];
    assert_eq!(
        (map["succeeded"].clone(), map["failed"].clone(), map["resized"].clone(), map["arrays"].clone()),
        (json!(250), json!(0), json!(3), json!(2))
    );
    let arrays: Vec<_> =
        h.jobs().await.into_iter().filter(|j| j.tags().unwrap()["batchline:stage"] == "each").collect();
    assert_eq!(arrays.len(), 2, "the map's array and one resubmission");
    let again = &arrays[1];
    assert_eq!(again.array_properties().and_then(|a| a.size()), Some(3), "exactly the three");
    assert!(memory(again) > memory(&arrays[0]), "one size up: {} MiB after {}", memory(again), memory(&arrays[0]));
    let mut indexes = Vec::new();
    for child in 0..3 {
        let (index, items) = items_of_child(&h, again, child).await;
        assert_eq!(items, [json!(format!("s3://{}/in/img-{index:03}.jpg", h.bucket))]);
        indexes.push(index);
    }
    assert_eq!(indexes, [3, 17, 42], "each line keeps its child's map index");
    let reports = h.jobs().await.into_iter().filter(|j| j.tags().unwrap()["batchline:stage"] == "report").count();
    assert_eq!(reports, 1, "the fan-in waited for the resubmission, and ran once");
    let results = h.read(&format!("{}each/_batchline/results.jsonl", run["runData"].as_str().unwrap())).await;
    assert_eq!(results.lines().count(), 250);
    assert!(results.lines().all(|l| serde_json::from_str::<Value>(l).unwrap()["status"] == "SUCCEEDED"));

    // Still out of memory at the stage's limit: failed for good, judged against the tolerance.
    let files: Vec<String> = (0..10).map(|i| format!("file-{i}")).collect();
    let stubborn = h.start("stubborn", json!({"files": serde_json::to_string(&files).unwrap()})).await;
    h.play_to_the_end(1).await;
    let run = h.run(&stubborn).await;
    assert_eq!(run["status"], "FAILED", "{run}");
    assert_eq!(run["reason"], "stage each: 2 of 10 children failed; ToleratedFailures allows 1");
    let map = &run["stages"]["each"]["map"];
    let failed: Vec<(Value, Value)> =
        map["failedItems"].as_array().unwrap().iter().map(|f| (f["index"].clone(), f["items"].clone())).collect();
    assert_eq!(failed, [(json!(0), json!(["file-0"])), (json!(1), json!(["file-1"]))]);
    assert_eq!((map["resized"].clone(), map["succeeded"].clone()), (json!(3), json!(8)));

    // Redriven: exactly the two failed children run again, as one array at the size they
    // last ran at, their lines keeping indexes 0 and 1; this time they succeed.
    let before = h.jobs().await.len();
    let (status, body) = h.api("POST", &format!("/runs/{stubborn}/redrive"), json!({})).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(h.work_maps().await, 1, "the redrive's expansion");
    let jobs = h.jobs().await;
    let again: Vec<_> = jobs[before..].iter().collect();
    assert_eq!(again.len(), 1, "one array for the two failed children");
    assert_eq!(again[0].array_properties().and_then(|a| a.size()), Some(2));
    let resized_earlier = jobs[..before].iter().rfind(|j| j.array_properties().and_then(|a| a.size()) == Some(3));
    assert_eq!(memory(again[0]), memory(resized_earlier.unwrap()), "at the size they last ran at");
    let mut lines = Vec::new();
    for child in 0..2 {
        lines.push(items_of_child(&h, again[0], child).await);
    }
    assert_eq!(lines, [(0, vec![json!("file-0")]), (1, vec![json!("file-1")])]);
    assert_eq!(environment_of(again[0], "BATCHLINE_MAP_SIZE").as_deref(), Some("10"), "the whole map's size");
    h.player.script(again[0].job_id().unwrap(), Script::default());
    h.play_to_the_end(2).await;
    let run = h.run(&stubborn).await;
    assert_eq!(run["status"], "SUCCEEDED", "{run}");
    let map = &run["stages"]["each"]["map"];
    assert_eq!(
        (map["children"].clone(), map["succeeded"].clone(), map["failed"].clone()),
        (json!(2), json!(2), json!(0))
    );
    assert_eq!(map["redriveOf"], json!({"attempt": 1, "mapChildren": 10}));
    let results = h.read(&format!("{}each/_batchline/results.jsonl", run["runData"].as_str().unwrap())).await;
    let statuses: Vec<(u64, String)> = results
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|l| (l["index"].as_u64().unwrap(), l["status"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(statuses, (0..10).map(|i| (i, "SUCCEEDED".to_owned())).collect::<Vec<_>>(), "the whole map's results");
}

#[tokio::test]
async fn a_manifest_gives_ten_items_a_child_and_an_empty_one_no_children() {
    let mut h = Harness::new("map-manifest").await;
    let lines: Vec<String> = (0..25).map(|i| format!("row-{i}")).collect();
    h.put("lists/today.txt", &lines.join("\n")).await;
    h.put("lists/empty.txt", "").await;

    let run_id = h.start("listed", json!({"inputBucket": h.bucket, "list": "today.txt"})).await;
    h.work_maps().await;
    let array = h.jobs().await.remove(0);
    assert_eq!(array.array_properties().and_then(|a| a.size()), Some(3), "25 items, 10 a child");
    assert_eq!(items_of_child(&h, &array, 2).await, (2, (20..25).map(|i| json!(format!("row-{i}"))).collect()));
    h.play_to_the_end(1).await;
    assert_eq!(h.run(&run_id).await["status"], "SUCCEEDED");

    // No items: the stage succeeds at once, saying so, and the next one runs.
    let empty = h.start("listed", json!({"inputBucket": h.bucket, "list": "empty.txt"})).await;
    h.play_to_the_end(1).await;
    let run = h.run(&empty).await;
    assert_eq!(run["status"], "SUCCEEDED", "{run}");
    assert_eq!(run["stages"]["each"]["map"]["children"], 0);
    assert_eq!(run["stages"]["each"]["attempts"][0]["reason"], "the map had no items: no children ran");

    // A manifest that is not there fails the stage, naming it.
    let missing = h.start("listed", json!({"inputBucket": h.bucket, "list": "nope.txt"})).await;
    h.play_to_the_end(1).await;
    let run = h.run(&missing).await;
    assert_eq!(run["status"], "FAILED");
    assert!(run["reason"].as_str().unwrap().contains("NoSuchKey"), "{run}");
    // A placeholder the run has no parameter for is refused when the run is started.
    let (status, body) =
        h.api("POST", "/pipelines/listed/runs", json!({"parameters": {"inputBucket": h.bucket}})).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("stage each maps over {list}"), "{body}");
}

#[tokio::test]
async fn a_map_covers_what_an_earlier_stage_wrote_to_the_runs_data_folder() {
    let mut h = Harness::new("map-rundata").await;
    let run_id = h.start("chained", json!({})).await;
    let run_data = h.run(&run_id).await["runData"].as_str().unwrap().to_owned();
    // produce writes three outputs, as a stage writes under $BATCHLINE_RUN_DATA<stage>/.
    let folder = run_data.strip_prefix(&format!("s3://{}/", h.bucket)).unwrap().to_owned();
    for part in ["a", "b", "c"] {
        h.put(&format!("{folder}produce/{part}.csv"), part).await;
    }
    h.play_to_the_end(1).await;
    let run = h.run(&run_id).await;
    assert_eq!(run["status"], "SUCCEEDED", "{run}");
    assert_eq!(run["stages"]["each"]["map"]["children"], 3);
    let array = h.jobs().await.into_iter().find(|j| j.tags().unwrap()["batchline:stage"] == "each").unwrap();
    let (_, items) = items_of_child(&h, &array, 1).await;
    assert_eq!(items, [json!(format!("{run_data}produce/b.csv"))]);
}

#[tokio::test]
async fn a_map_of_12000_items_is_two_arrays_and_its_children_never_write_the_run() {
    let mut h = Harness::new("map-wide").await;
    let lines: Vec<String> = (0..12_000).map(|i| format!("row-{i}")).collect();
    h.put("lists/wide.txt", &lines.join("\n")).await;
    let run_id = h.start("wide", json!({"inputBucket": h.bucket, "list": "wide.txt"})).await;

    // Checked at SubmitJob: one expansion, two arrays, every child told the whole map's size.
    assert_eq!(h.work_maps().await, 1);
    let arrays = h.jobs().await;
    let sizes: Vec<Option<i32>> = arrays.iter().map(|j| j.array_properties().and_then(|a| a.size())).collect();
    assert_eq!(sizes, [Some(10_000), Some(2_000)]);
    for array in &arrays {
        assert_eq!(environment_of(array, "BATCHLINE_MAP_SIZE").as_deref(), Some("12000"));
    }
    assert_eq!(items_of_child(&h, &arrays[0], 9_999).await, (9_999, vec![json!("row-9999")]));
    assert_eq!(items_of_child(&h, &arrays[1], 0).await, (10_000, vec![json!("row-10000")]));
    assert_eq!(items_of_child(&h, &arrays[1], 1_999).await, (11_999, vec![json!("row-11999")]));
    let written = h.stored(&run_id).await.version;

    // The children's ends fed to the runs lane's handler directly, twice and shuffled, as if
    // the lane's rule let them through: none is applied to the run. (Their earlier events
    // would be 36,000 more of the same.)
    let changes = h.player.play_queue(&h.env.queue_arn("default")).await.unwrap();
    h.player.settle(&changes).await.unwrap();
    let (children, parents): (Vec<StateChange>, Vec<StateChange>) =
        changes.into_iter().partition(|c| !c.event["detail"]["arrayProperties"]["index"].is_null());
    let ends: Vec<StateChange> =
        children.iter().filter(|c| matches!(c.status, "SUCCEEDED" | "FAILED")).cloned().collect();
    assert_eq!(ends.len(), 12_000);
    h.deliver_to_lane("runs", &Delivery::of(&ends).repeated(2).shuffled(12), 1_000).await;
    assert_eq!(h.stored(&run_id).await.version, written, "no child event wrote the run");

    // Every child's every event through the metrics lane's handler, 250 to an invocation
    // (the template's batch), a tenth of them delivered twice, shuffled: each counted once.
    let twice = [children.clone(), children[..children.len() / 10].to_vec()].concat();
    let started = std::time::Instant::now();
    h.deliver_to_lane("metrics", &Delivery::of(&twice).shuffled(13), 250).await;
    eprintln!("{} child events through the metrics lane in {:?}", twice.len(), started.elapsed());
    let stage = [("Pipeline", "wide"), ("Stage", "each")];
    for status in ["RUNNABLE", "STARTING", "RUNNING", "SUCCEEDED", "FAILED"] {
        let played = children.iter().filter(|c| c.status == status).count() as f64;
        let metric = format!("Jobs{}{}", &status[..1], status[1..].to_lowercase());
        let (sum, _) = stats(&h.job_events.cloudwatch, &h.env.settings.metric_namespace, &metric, &stage).await;
        assert_eq!(sum, played, "{metric}");
    }
    let succeeded = stats(&h.job_events.cloudwatch, &h.env.settings.metric_namespace, "JobsSucceeded", &stage).await;
    let failed = stats(&h.job_events.cloudwatch, &h.env.settings.metric_namespace, "JobsFailed", &stage).await;
    assert_eq!((succeeded.0, failed.0), (11_998.0, 2.0));
    assert_eq!(h.stored(&run_id).await.version, written, "nor did the metrics lane");

    // The parents' ends fan in: closed by the map worker, within the tolerance, the next stage once.
    h.deliver(&parents, 2).await;
    h.play_to_the_end(1).await;
    let run = h.run(&run_id).await;
    assert_eq!(run["status"], "SUCCEEDED", "{run}");
    let map = &run["stages"]["each"]["map"];
    assert_eq!(
        (map["children"].clone(), map["succeeded"].clone(), map["failed"].clone()),
        (json!(12_000), json!(11_998), json!(2))
    );
    let failed: Vec<u64> =
        map["failedItems"].as_array().unwrap().iter().map(|f| f["index"].as_u64().unwrap()).collect();
    assert_eq!(failed, [17, 10_017]);
    // Every child's task is in the run's cost, read 100 children a DescribeJobs call at the close.
    let billed: u64 = run["stages"]["each"]["attempts"][0]["cost"]["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["billableSeconds"].as_u64().unwrap())
        .sum();
    assert_eq!(billed, 12_000 * 60, "{}", run["stages"]["each"]["attempts"][0]["cost"]);
    let reports = h.jobs().await.into_iter().filter(|j| j.tags().unwrap()["batchline:stage"] == "report").count();
    assert_eq!(reports, 1);
    let stored = h.stored(&run_id).await;
    assert!(stored.version - written < 50, "the run is written per array and stage, not per child");
    let item = serde_json::to_string(&stored.run).unwrap().len();
    assert!(item < 40_000, "the run's record stays small: {item} bytes");
    eprintln!("the run's record after a map of 12,000 children: {item} bytes, {} writes", stored.version - written);
}
