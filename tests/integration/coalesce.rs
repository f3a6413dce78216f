//! Coalesced S3 triggers against the emulator: submit forwarding objects through the template's coalesce lane, the map worker appending them to windows and closing each into one list and one run, the map lane and the Batch player doing the rest.
//!
//! The windows here are two seconds long; the coalesce lane's queue is drained by hand into
//! the map worker's handler, several batches at once where a test says so, and the closes
//! (sent by the map worker itself, delayed by SQS) arrive when SQS makes them visible.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use batchline_testkit::emulator::{sdk_config, unique_name, Principal};
use batchline_testkit::invocation;
use batchline_testkit::lanes::{coalesce_lane, map_lane, WiredLane};
use batchline_testkit::player::{Delivery, Player, StateChange};
use serde_json::{json, Value};

use crate::common::{job_events_invocation, Deployed};

const OBJECT_CREATED: &str = include_str!("../fixtures/s3/object-created.json");
const RUNS_QUEUE_ARN: &str = "arn:aws:sqs:us-east-1:123456789012:batchline-job-events";

fn configuration(bucket: &str) -> Value {
    json!({
        "Roles": {"InputBucket": bucket},
        "JobDefinitions": {"default": {}},
        "Pipelines": {
            "batches": {"Stages": {
                "each": {"JobDefinition": "default", "Map": {"Manifest": "{objects}", "ItemsPerChild": "2"}},
                "report": {"JobDefinition": "default", "After": "each"}
            }}
        },
        "Triggers": {"S3": {
            "photos": {"Bucket": bucket, "Prefix": "incoming/", "JobDefinition": "default",
                       "Coalesce": {"WindowSeconds": "2", "MaxObjects": "200"}},
            "days": {"Bucket": bucket, "Prefix": "days/", "Pipeline": "batches",
                     "Coalesce": {"WindowSeconds": "2"}}
        }}
    })
}

/// A stack with coalescing triggers, submit, the map worker on its two lanes, the player.
struct Harness {
    env: Deployed,
    bucket: String,
    s3: aws_sdk_s3::Client,
    sqs: aws_sdk_sqs::Client,
    coalesce_lane: WiredLane,
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
        let env = Deployed::new(test, configuration(&bucket)).await;
        let sqs = aws_sdk_sqs::Client::new(&env.sdk);
        let events = aws_sdk_eventbridge::Client::new(&env.sdk);
        // Named as CloudFormation names the stack's queue: the IAM evaluation reads the
        // map worker's grant to send its closes there.
        let coalesce = format!("{}-CoalesceQueue", env.name);
        let coalesce_lane = coalesce_lane(&env.name).unwrap().wire(&sqs, &events, "default", &coalesce).await.unwrap();
        let map_lane =
            map_lane(&env.name).unwrap().wire(&sqs, &events, "default", &format!("{}-map", env.name)).await.unwrap();
        Harness {
            submit: batchline_submit::Clients::new(&env.sdk_as(Principal::Submit), &env.settings),
            job_events: batchline_job_events::Clients::new(&env.sdk_as(Principal::JobEvents), &env.settings),
            map: batchline_map::Clients::new(&env.sdk_as(Principal::Map), &env.settings),
            player: Player::new(&env.sdk),
            env,
            bucket,
            s3,
            sqs,
            coalesce_lane,
            map_lane,
        }
    }

    /// An S3 "Object Created" event of this stack's bucket.
    fn object_event(&self, key: &str, sequencer: &str) -> Value {
        let mut event: Value = serde_json::from_str(OBJECT_CREATED).unwrap();
        event["id"] = json!(batchline_testkit::player::event_id());
        event["detail"]["bucket"]["name"] = json!(self.bucket);
        event["detail"]["object"]["key"] = json!(key);
        event["detail"]["object"]["size"] = json!(1024);
        event["detail"]["object"]["sequencer"] = json!(sequencer);
        event
    }

    /// Hands object events to submit as the trigger lane would, ten to a batch.
    async fn trigger(&self, events: &[Value]) {
        let queue = "arn:aws:sqs:us-east-1:123456789012:batchline-triggers";
        for ten in events.chunks(10) {
            let records: Vec<Value> = ten
                .iter()
                .map(|e| {
                    batchline_testkit::player::sqs_record(&batchline_testkit::player::event_id(), &e.to_string(), queue)
                })
                .collect();
            let answer =
                batchline_submit::handle(invocation(json!({ "Records": records })), &self.submit).await.unwrap();
            assert_eq!(answer["batchItemFailures"], json!([]), "{answer}");
        }
    }

    /// Takes what the coalesce lane holds now, up to `max` messages.
    async fn receive(&self, max: usize) -> Vec<aws_sdk_sqs::types::Message> {
        let mut taken = Vec::new();
        while taken.len() < max {
            let received = self
                .sqs
                .receive_message()
                .queue_url(&self.coalesce_lane.queue_url)
                .max_number_of_messages(10)
                .send()
                .await
                .unwrap();
            if received.messages().is_empty() {
                break;
            }
            taken.extend(received.messages().iter().cloned());
        }
        taken
    }

    /// Hands messages to the map worker as one batch of the coalesce lane; deletes those it
    /// did not report failed.
    async fn work(&self, messages: &[aws_sdk_sqs::types::Message]) {
        let records: Vec<Value> = messages
            .iter()
            .map(|m| {
                batchline_testkit::player::sqs_record(
                    m.message_id().unwrap(),
                    m.body().unwrap(),
                    &self.coalesce_lane.queue_arn,
                )
            })
            .collect();
        let event: aws_lambda_events::sqs::SqsEvent = serde_json::from_value(json!({ "Records": records })).unwrap();
        let mut context = invocation(json!({})).context;
        context.deadline = (batchline::now_ms() + 300_000) as u64;
        let answer =
            batchline_map::handle(lambda_runtime::LambdaEvent::new(event, context), &self.map, &self.env.settings)
                .await
                .unwrap();
        assert!(answer.batch_item_failures.is_empty(), "the map worker failed coalesce-lane work");
        for message in messages {
            self.sqs
                .delete_message()
                .queue_url(&self.coalesce_lane.queue_url)
                .receipt_handle(message.receipt_handle().unwrap())
                .send()
                .await
                .unwrap();
        }
    }

    /// Drains the coalesce lane into the map worker until there are windows and every one
    /// is closed (the closes come when SQS lets them), `parallel` batches at a time.
    async fn coalesce_until_all_closed(&self, parallel: usize) -> Vec<batchline::store::WindowHead> {
        self.coalesce_until_closed(parallel, 1, Duration::from_secs(120)).await
    }

    /// [`Harness::coalesce_until_all_closed`], until there are at least `windows` windows,
    /// every one closed, within `limit`.
    async fn coalesce_until_closed(
        &self,
        parallel: usize,
        windows: usize,
        limit: Duration,
    ) -> Vec<batchline::store::WindowHead> {
        let started = Instant::now();
        loop {
            let heads = self.windows().await;
            if heads.len() >= windows && heads.iter().all(|h| h.run_id.is_some()) {
                return heads;
            }
            assert!(started.elapsed() < limit, "windows still open after {limit:?}: {heads:?}");
            let messages = self.receive(1000).await;
            if messages.is_empty() {
                tokio::time::sleep(Duration::from_millis(300)).await;
                continue;
            }
            let share = messages.len().div_ceil(parallel);
            let batches: Vec<_> = messages.chunks(share).map(|batch| self.work(batch)).collect();
            futures::future::join_all(batches).await;
        }
    }

    /// Every window of both triggers, as the table holds them.
    async fn windows(&self) -> Vec<batchline::store::WindowHead> {
        use batchline::store::WindowStore;
        let store = self.store();
        let mut heads = Vec::new();
        for trigger in ["photos", "days"] {
            let Some(latest) = store.latest_window(trigger).await.unwrap() else { continue };
            for n in 1..=latest.window {
                heads.extend(store.window(trigger, n).await.unwrap());
            }
        }
        heads
    }

    fn store(&self) -> batchline::store::DynamoStore {
        batchline::store::DynamoStore::new(aws_sdk_dynamodb::Client::new(&self.env.sdk), &self.env.settings.table_name)
    }

    /// Hands the map lane's messages to the map worker until it is empty.
    async fn work_maps(&self) -> usize {
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
            if received.messages().is_empty() {
                return done;
            }
            for message in received.messages() {
                let record = batchline_testkit::player::sqs_record(
                    message.message_id().unwrap(),
                    message.body().unwrap(),
                    &self.map_lane.queue_arn,
                );
                let event: aws_lambda_events::sqs::SqsEvent =
                    serde_json::from_value(json!({ "Records": [record] })).unwrap();
                let mut context = invocation(json!({})).context;
                context.deadline = (batchline::now_ms() + 300_000) as u64;
                let answer = batchline_map::handle(
                    lambda_runtime::LambdaEvent::new(event, context),
                    &self.map,
                    &self.env.settings,
                )
                .await
                .unwrap();
                assert!(answer.batch_item_failures.is_empty(), "the map worker failed its map work");
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

    /// Hands the parents' job events to job-events as the runs lane would.
    async fn deliver(&self, changes: &[StateChange]) {
        let parents: Vec<StateChange> =
            changes.iter().filter(|c| c.event["detail"]["arrayProperties"]["index"].is_null()).cloned().collect();
        for batch in Delivery::of(&parents).sqs_batches(RUNS_QUEUE_ARN, 10) {
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

    /// Works the maps and plays the queue until nothing new happens.
    async fn play_to_the_end(&mut self) {
        for _ in 0..20 {
            let worked = self.work_maps().await;
            let changes = self.player.play_queue(&self.env.queue_arn("default")).await.unwrap();
            if worked == 0 && changes.is_empty() {
                return;
            }
            self.player.settle(&changes).await.unwrap();
            self.deliver(&changes).await;
        }
        panic!("the runs did not settle in 20 rounds");
    }

    async fn api(&self, method: &str, target: &str) -> (u16, Value) {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let parameters: BTreeMap<&str, &str> = query.split('&').filter_map(|pair| pair.split_once('=')).collect();
        let request = json!({
            "version": "2.0", "rawPath": path, "rawQueryString": query, "queryStringParameters": parameters,
            "headers": {}, "requestContext": {"http": {"method": method, "path": path}}, "isBase64Encoded": false
        });
        let answer = batchline_submit::handle(invocation(request), &self.submit).await.unwrap();
        (answer["statusCode"].as_u64().unwrap() as u16, serde_json::from_str(answer["body"].as_str().unwrap()).unwrap())
    }

    async fn read(&self, uri: &str) -> String {
        let (bucket, key) = uri.strip_prefix("s3://").unwrap().split_once('/').unwrap();
        let object = self.s3.get_object().bucket(bucket).key(key).send().await.unwrap();
        String::from_utf8(object.body.collect().await.unwrap().to_vec()).unwrap()
    }

    /// The array jobs (and plain jobs) in the default queue.
    async fn jobs(&self) -> Vec<aws_sdk_batch::types::JobDetail> {
        self.env.jobs_in("default").await
    }

    /// The objects a job's children are given: every line of the list `BATCHLINE_ITEMS` names.
    async fn items_of(&self, job: &aws_sdk_batch::types::JobDetail) -> Vec<(usize, Vec<String>)> {
        let environment = job.container().unwrap().environment();
        let uri = environment.iter().find(|v| v.name() == Some("BATCHLINE_ITEMS")).unwrap().value().unwrap();
        self.read(uri)
            .await
            .lines()
            .map(|line| {
                let line: Value = serde_json::from_str(line).unwrap();
                let items = line["items"].as_array().unwrap().iter().map(|i| i.as_str().unwrap().to_owned()).collect();
                (line["index"].as_u64().unwrap() as usize, items)
            })
            .collect()
    }
}

fn environment_of(job: &aws_sdk_batch::types::JobDetail, name: &str) -> Option<String> {
    let environment = job.container()?.environment();
    environment.iter().find(|v| v.name() == Some(name)).and_then(|v| v.value()).map(str::to_owned)
}

#[tokio::test]
async fn five_hundred_objects_delivered_with_duplicates_in_concurrent_batches_are_each_on_exactly_one_line() {
    let h = Harness::new("coalesce-burst").await;
    // GIVEN 500 objects, 50 of them delivered twice, shuffled, through the trigger lane
    let mut events: Vec<Value> =
        (0..500).map(|i| h.object_event(&format!("incoming/img-{i:03}.jpg"), &format!("{i:016X}"))).collect();
    let repeats: Vec<Value> = (0..50)
        .map(|i| h.object_event(&format!("incoming/img-{:03}.jpg", i * 7), &format!("{:016X}", i * 7)))
        .collect();
    events.extend(repeats);
    let mut order: Vec<usize> = (0..events.len()).collect();
    order.sort_by_key(|i| (i * 7919) % events.len());
    let shuffled: Vec<Value> = order.into_iter().map(|i| events[i].clone()).collect();
    h.trigger(&shuffled).await;
    assert!(h.jobs().await.is_empty(), "a coalescing trigger submits nothing per object");

    // WHEN the coalesce lane is worked two batches at a time until every window is closed
    // (MaxObjects 200: a full window closes at once, the last one when its close comes)
    let heads = h.coalesce_until_all_closed(2).await;
    let mut h = h;
    h.play_to_the_end().await;

    // THEN the windows' arrays hold 500 children, every object on exactly one line
    let jobs = h.jobs().await;
    let runs: BTreeSet<&str> = heads.iter().filter_map(|h| h.run_id.as_deref()).filter(|r| !r.is_empty()).collect();
    assert_eq!(jobs.len(), runs.len(), "one array job per window: {heads:?}");
    assert!(jobs.len() >= 3, "200 + 200 + the rest: at least three windows ({})", jobs.len());
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut children = 0;
    for job in &jobs {
        let size = job.array_properties().and_then(|a| a.size()).unwrap_or(1) as usize;
        children += size;
        let lines = h.items_of(job).await;
        assert_eq!(lines.len(), size, "a line per child");
        assert_eq!(environment_of(job, "BATCHLINE_MAP_SIZE"), Some(size.to_string()));
        for (index, (line_index, items)) in lines.into_iter().enumerate() {
            assert_eq!(index, line_index, "one array: the line's index is the child's");
            for item in items {
                *seen.entry(item).or_default() += 1;
            }
        }
    }
    assert_eq!(children, 500, "the arrays' sizes sum to the objects");
    let expected: BTreeSet<String> = (0..500).map(|i| format!("s3://{}/incoming/img-{i:03}.jpg", h.bucket)).collect();
    assert_eq!(seen.keys().cloned().collect::<BTreeSet<_>>(), expected);
    assert!(seen.values().all(|n| *n == 1), "an object on two lines");

    // AND the API says which job and index ran an object
    let object = format!("s3://{}/incoming/img-042.jpg", h.bucket);
    let (status, answer) = h.api("GET", &format!("/jobs?object={object}")).await;
    assert_eq!(status, 200, "{answer}");
    let listed = answer["jobs"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "{answer}");
    let job = jobs.iter().find(|j| j.job_id() == listed[0]["jobId"].as_str()).expect("a job of the stack");
    let index = listed[0]["arrayIndex"].as_u64().unwrap() as usize;
    let lines = h.items_of(job).await;
    assert_eq!(lines[index].1, vec![object.clone()], "the index the API names runs the object");
    assert_eq!(listed[0]["trigger"], "photos");
}

#[tokio::test]
async fn an_object_alone_is_a_plain_job_when_its_window_closes_and_a_redelivery_after_it_adds_nothing() {
    let mut h = Harness::new("coalesce-alone").await;
    // GIVEN one object
    let event = h.object_event("incoming/only.jpg", "00AA");
    h.trigger(std::slice::from_ref(&event)).await;
    let appended_at = Instant::now();
    // WHEN its window's close comes (WindowSeconds 2)
    let heads = h.coalesce_until_all_closed(1).await;
    let waited = appended_at.elapsed();
    assert_eq!(heads.len(), 1);
    assert!(waited >= Duration::from_secs(1), "closed before its window ended ({waited:?})");
    h.play_to_the_end().await;
    // THEN it ran as a plain job reading line 0 of its list
    let jobs = h.jobs().await;
    assert_eq!(jobs.len(), 1);
    assert!(jobs[0].array_properties().and_then(|a| a.size()).is_none(), "one object: a plain job");
    assert_eq!(environment_of(&jobs[0], "BATCHLINE_MAP_SIZE").as_deref(), Some("1"));
    assert_eq!(h.items_of(&jobs[0]).await, vec![(0, vec![format!("s3://{}/incoming/only.jpg", h.bucket)])]);

    // AND the same object delivered again (a late duplicate) lands in a new window, whose
    // close finds it claimed by the first and starts nothing
    h.trigger(std::slice::from_ref(&event)).await;
    let heads = h.coalesce_until_closed(1, 2, Duration::from_secs(60)).await;
    assert_eq!(heads.len(), 2, "{heads:?}");
    assert_eq!(heads[1].run_id.as_deref(), Some(""), "the second window started no run");
    h.play_to_the_end().await;
    assert_eq!(h.jobs().await.len(), 1, "still one job");
}

#[tokio::test]
async fn a_pipeline_trigger_starts_one_run_per_window_whose_map_covers_the_window() {
    let mut h = Harness::new("coalesce-run").await;
    // GIVEN 9 objects for the pipeline trigger (ItemsPerChild 2: five children)
    let events: Vec<Value> = (0..9).map(|i| h.object_event(&format!("days/d{i}.csv"), &format!("{i:04}"))).collect();
    h.trigger(&events).await;
    // WHEN the window closes and the run plays to its end
    let heads = h.coalesce_until_all_closed(1).await;
    h.play_to_the_end().await;
    // THEN one run, its objects list naming the window's objects, its map over them, and
    // the stage after it run once
    let run_id = heads[0].run_id.clone().unwrap();
    let (status, run) = h.api("GET", &format!("/runs/{run_id}")).await;
    assert_eq!(status, 200, "{run}");
    assert_eq!(run["status"], "SUCCEEDED", "{run}");
    assert_eq!(run["pipeline"], "batches");
    let list = run["input"]["parameters"]["objects"].as_str().expect("the objects parameter").to_owned();
    let listed: BTreeSet<String> = h.read(&list).await.lines().map(str::to_owned).collect();
    let expected: BTreeSet<String> = (0..9).map(|i| format!("s3://{}/days/d{i}.csv", h.bucket)).collect();
    assert_eq!(listed, expected);
    let jobs = h.jobs().await;
    assert_eq!(jobs.len(), 2, "the map's array and the report");
    let array = jobs.iter().find(|j| j.array_properties().and_then(|a| a.size()) == Some(5)).expect("five children");
    let covered: BTreeSet<String> = h.items_of(array).await.into_iter().flat_map(|(_, items)| items).collect();
    assert_eq!(covered, expected);
}

/// S3 that fails the first write of a window's list, as a worker that crashed after
/// claiming the window's objects and before starting its run would leave it.
struct CrashBeforeTheList {
    inner: batchline_map::objects::S3Objects,
    crashed: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl batchline_map::objects::Objects for CrashBeforeTheList {
    async fn keys_page(
        &self,
        bucket: &str,
        prefix: &str,
        after: Option<&str>,
    ) -> Result<batchline_map::objects::KeysPage, batchline::Error> {
        self.inner.keys_page(bucket, prefix, after).await
    }

    async fn read(&self, at: &batchline::model::map::S3Location, max_bytes: u64) -> Result<String, batchline::Error> {
        self.inner.read(at, max_bytes).await
    }

    async fn write(&self, at: &batchline::model::map::S3Location, body: String) -> Result<(), batchline::Error> {
        if at.key.ends_with("objects.txt") && !self.crashed.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return Err(batchline::Error::InvalidEvent("the worker crashed".into()));
        }
        self.inner.write(at, body).await
    }
}

#[tokio::test]
async fn a_close_that_crashed_after_claiming_its_objects_is_redone_into_the_same_list_and_one_run() {
    let mut h = Harness::new("coalesce-crash").await;
    // GIVEN 30 objects in a window, and a map worker that crashes writing the window's list
    let events: Vec<Value> =
        (0..30).map(|i| h.object_event(&format!("incoming/c-{i:02}.jpg"), &format!("{i:04}"))).collect();
    h.trigger(&events).await;
    let appended = h.receive(100).await;
    assert_eq!(appended.len(), 30);
    h.work(&appended).await;
    let crashing = batchline_map::Clients {
        objects: Box::new(CrashBeforeTheList {
            inner: batchline_map::objects::S3Objects::new(batchline_map::s3_client(&h.env.sdk_as(Principal::Map))),
            crashed: Default::default(),
        }),
        ..batchline_map::Clients::new(&h.env.sdk_as(Principal::Map), &h.env.settings)
    };
    // WHEN its close comes to the crashing worker, then again (redelivered) to a sound one,
    // then once more
    let close = loop {
        let messages = h.receive(10).await;
        if let Some(close) = messages.into_iter().find(|m| m.body().unwrap_or_default().contains("closeWindow")) {
            break close;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let record = batchline_testkit::player::sqs_record(
        close.message_id().unwrap(),
        close.body().unwrap(),
        &h.coalesce_lane.queue_arn,
    );
    async fn hand(
        clients: &batchline_map::Clients,
        record: &Value,
        settings: &batchline::Settings,
    ) -> aws_lambda_events::sqs::SqsBatchResponse {
        let event: aws_lambda_events::sqs::SqsEvent =
            serde_json::from_value(json!({ "Records": [record.clone()] })).unwrap();
        let mut context = invocation(json!({})).context;
        context.deadline = (batchline::now_ms() + 300_000) as u64;
        batchline_map::handle(lambda_runtime::LambdaEvent::new(event, context), clients, settings).await.unwrap()
    }
    let crashed = hand(&crashing, &record, &h.env.settings).await;
    assert_eq!(crashed.batch_item_failures.len(), 1, "the crashed close is reported, to come again");
    let claims =
        batchline::store::WindowStore::object_claims(&h.store(), &h.bucket, "incoming/c-07.jpg").await.unwrap();
    assert_eq!(claims.len(), 1, "the objects were claimed before the crash");
    assert!(hand(&h.map, &record, &h.env.settings).await.batch_item_failures.is_empty());
    assert!(hand(&h.map, &record, &h.env.settings).await.batch_item_failures.is_empty());
    h.play_to_the_end().await;
    // THEN one run, one array of 30, every object once
    let heads = h.windows().await;
    assert_eq!(heads.len(), 1);
    let jobs = h.jobs().await;
    assert_eq!(jobs.len(), 1, "one array job");
    assert_eq!(jobs[0].array_properties().and_then(|a| a.size()), Some(30));
    let items: BTreeSet<String> = h.items_of(&jobs[0]).await.into_iter().flat_map(|(_, items)| items).collect();
    assert_eq!(items.len(), 30);
    let (_, run) = h.api("GET", &format!("/runs/{}", heads[0].run_id.as_deref().unwrap())).await;
    assert_eq!(run["status"], "SUCCEEDED", "{run}");
}

#[tokio::test]
async fn a_duplicate_in_a_later_window_gives_its_line_to_another_object_and_the_api_follows_it() {
    let mut h = Harness::new("coalesce-moved").await;
    // GIVEN an object run in a first window
    let first = h.object_event("incoming/a-first.jpg", "0001");
    h.trigger(std::slice::from_ref(&first)).await;
    h.coalesce_until_all_closed(1).await;
    // WHEN it is delivered again beside three new objects, in a second window (sorted first
    // there, so its line 0 goes to the last of the others)
    let mut second: Vec<Value> =
        ["incoming/b.jpg", "incoming/c.jpg", "incoming/d.jpg"].iter().map(|k| h.object_event(k, "0002")).collect();
    second.push(first);
    h.trigger(&second).await;
    let heads = h.coalesce_until_closed(1, 2, Duration::from_secs(60)).await;
    assert_eq!(heads.len(), 2, "{heads:?}");
    h.play_to_the_end().await;
    // THEN the second window's array runs the three new objects, d on line 0
    let run = heads[1].run_id.clone().unwrap();
    let jobs = h.jobs().await;
    let array = jobs.iter().find(|j| environment_of(j, "BATCHLINE_RUN_ID").as_deref() == Some(run.as_str())).unwrap();
    let lines = h.items_of(array).await;
    let uri = |key: &str| format!("s3://{}/{key}", h.bucket);
    assert_eq!(
        lines,
        vec![(0, vec![uri("incoming/d.jpg")]), (1, vec![uri("incoming/b.jpg")]), (2, vec![uri("incoming/c.jpg")])]
    );
    // AND the API names the index that ran the moved object, and the first window's job for the duplicate
    let (_, answer) = h.api("GET", &format!("/jobs?object={}", uri("incoming/d.jpg"))).await;
    assert_eq!(answer["jobs"][0]["arrayIndex"], 0, "{answer}");
    let (_, answer) = h.api("GET", &format!("/jobs?object={}", uri("incoming/a-first.jpg"))).await;
    assert_eq!(answer["jobs"].as_array().unwrap().len(), 1, "{answer}");
    assert_eq!(answer["jobs"][0]["window"], 1, "{answer}");
}

#[tokio::test]
async fn a_batchs_objects_go_ten_to_a_put_events_call_and_a_failed_call_fails_only_the_records_it_carried() {
    let mut h = Harness::new("coalesce-forward").await;
    // GIVEN a trigger-lane batch of nine objects of the coalescing rule and one no rule takes
    let mut events: Vec<Value> =
        (0..9).map(|i| h.object_event(&format!("incoming/f-{i}.jpg"), &format!("{i:04}"))).collect();
    events.push(h.object_event("elsewhere/nobody.txt", "0100"));
    let queue = "arn:aws:sqs:us-east-1:123456789012:batchline-triggers";
    let ids: Vec<String> = (0..events.len()).map(|i| format!("message-{i}")).collect();
    let batch = json!({ "Records": events.iter().zip(&ids).map(|(e, id)| {
        batchline_testkit::player::sqs_record(id, &e.to_string(), queue)
    }).collect::<Vec<_>>() });
    async fn through(name: &str, fail: f64) -> batchline_testkit::faults::FaultScope {
        let rules = BTreeMap::from([("events:PutEvents", batchline_testkit::faults::Rates { fail, lose: 0.0 })]);
        batchline_testkit::faults::FaultScope::enable(&unique_name(name), 7, &rules).await.unwrap()
    }

    // WHEN EventBridge refuses every PutEvents call
    let refusing = through("forward-refused", 1.0).await;
    let clients = batchline_submit::Clients::new(
        &batchline_testkit::emulator::signing_as(&refusing.sdk_config().await, Principal::Submit, &h.env.name),
        &h.env.settings,
    );
    let answer = batchline_submit::handle(invocation(batch.clone()), &clients).await.unwrap();
    // THEN one call carried the nine objects, and only their nine records come again
    let failed: BTreeSet<&str> =
        answer["batchItemFailures"].as_array().unwrap().iter().filter_map(|f| f["itemIdentifier"].as_str()).collect();
    assert_eq!(failed, ids[..9].iter().map(String::as_str).collect::<BTreeSet<_>>(), "{answer}");
    // (the SDK's standard retries try the one call three times)
    assert_eq!(refusing.counts().await.unwrap()["events:PutEvents"]["calls"], 3);
    refusing.disable().await.unwrap();

    // WHEN the batch comes again and EventBridge takes it
    let taking = through("forward-taken", 0.0).await;
    let clients = batchline_submit::Clients::new(
        &batchline_testkit::emulator::signing_as(&taking.sdk_config().await, Principal::Submit, &h.env.name),
        &h.env.settings,
    );
    let answer = batchline_submit::handle(invocation(batch), &clients).await.unwrap();
    assert_eq!(answer["batchItemFailures"], json!([]), "{answer}");
    assert_eq!(taking.counts().await.unwrap()["events:PutEvents"]["calls"], 1, "nine objects, one call");
    taking.disable().await.unwrap();
    // THEN the window runs the nine objects in one array
    h.coalesce_until_all_closed(1).await;
    h.play_to_the_end().await;
    let jobs = h.jobs().await;
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].array_properties().and_then(|a| a.size()), Some(9));
}

#[tokio::test]
async fn an_object_its_rule_does_not_take_stays_out_of_its_window_and_comes_again_and_another_stacks_is_dropped() {
    let mut h = Harness::new("coalesce-foreign").await;
    // GIVEN an object forwarded by submit, and beside it on the lane messages of the same
    // shape that submit would never send: a key outside the rule's prefix, another bucket,
    // another stack's object
    h.trigger(&[h.object_event("incoming/ok.jpg", "0001")]).await;
    let forwarded = h.receive(10).await;
    assert_eq!(forwarded.len(), 1);
    let body: Value = serde_json::from_str(forwarded[0].body().unwrap()).unwrap();
    for (field, value) in
        [("key", "secret/payroll.csv"), ("bucket", "someone-elses-bucket"), ("stack", "another-stack")]
    {
        let mut forged = body.clone();
        forged["detail"][field] = json!(value);
        h.sqs
            .send_message()
            .queue_url(&h.coalesce_lane.queue_url)
            .message_body(forged.to_string())
            .send()
            .await
            .unwrap();
    }
    let mut batch = forwarded;
    batch.extend(h.receive(10).await);
    assert_eq!(batch.len(), 4);
    // WHEN the map worker takes them in one batch
    let records: Vec<Value> = batch
        .iter()
        .map(|m| {
            let (id, body) = (m.message_id().unwrap(), m.body().unwrap());
            batchline_testkit::player::sqs_record(id, body, &h.coalesce_lane.queue_arn)
        })
        .collect();
    let event: aws_lambda_events::sqs::SqsEvent = serde_json::from_value(json!({ "Records": records })).unwrap();
    let mut context = invocation(json!({})).context;
    context.deadline = (batchline::now_ms() + 300_000) as u64;
    let answer =
        batchline_map::handle(lambda_runtime::LambdaEvent::new(event, context), &h.map, &h.env.settings).await.unwrap();
    // THEN this stack's two objects its rule does not take come again (after five tries, the
    // dead-letter queue); the other stack's is dropped; the rule's own is appended
    let failed: BTreeSet<&str> = answer.batch_item_failures.iter().map(|f| f.item_identifier.as_str()).collect();
    let not_taken: BTreeSet<&str> = batch
        .iter()
        .filter(|m| ["secret/payroll.csv", "someone-elses-bucket"].iter().any(|f| m.body().unwrap().contains(f)))
        .map(|m| m.message_id().unwrap())
        .collect();
    assert_eq!(not_taken.len(), 2);
    assert_eq!(failed, not_taken);
    for message in &batch {
        let receipt = message.receipt_handle().unwrap();
        h.sqs.delete_message().queue_url(&h.coalesce_lane.queue_url).receipt_handle(receipt).send().await.unwrap();
    }
    // AND the window runs the one object its rule takes
    h.coalesce_until_all_closed(1).await;
    h.play_to_the_end().await;
    let jobs = h.jobs().await;
    assert_eq!(jobs.len(), 1);
    assert_eq!(h.items_of(&jobs[0]).await, vec![(0, vec![format!("s3://{}/incoming/ok.jpg", h.bucket)])]);
}

#[tokio::test]
async fn objects_dropped_in_the_bucket_reach_one_array_through_the_binaries_on_the_templates_lanes_in_time() {
    // GIVEN a stack with a coalescing rule (WindowSeconds 2), served as the local stack serves
    // one: S3's events on the default bus, the submit and map worker binaries on the
    // template's trigger, coalesce and map lanes, Batch played into the job-events binary
    let sdk = sdk_config().await;
    let bucket = unique_name("coalesce-bin-in").to_lowercase();
    batchline_demo::create_input_bucket(&sdk, &bucket).await.unwrap();
    let env = Deployed::new("coalesce-bin", configuration(&bucket)).await;
    let logs = batchline_testkit::emulator::repo_root().join("target/coalesce-test-logs");
    let mut launcher =
        batchline_demo::serve::Launcher::new(&env.settings.table_name, &logs).unwrap().signing_as_roles_of(&env.name);
    for (name, value) in launcher.environment.iter_mut() {
        if name == batchline::settings::METRIC_NAMESPACE_VAR {
            *value = env.settings.metric_namespace.clone();
        }
    }
    let routing = batchline_demo::serve::Routing {
        name: env.name.clone(),
        job_queues: vec![env.queue_arn("default")],
        trigger: Some((bucket.clone(), "incoming/".to_owned())),
    };
    let events = batchline_demo::serve::LocalEvents::start(&env.sdk, &launcher, routing).await.unwrap();

    // WHEN 30 objects are put in the bucket
    let s3 = batchline_map::s3_client(&sdk);
    for i in 0..30 {
        let key = format!("incoming/bin-{i:02}.jpg");
        s3.put_object().bucket(&bucket).key(&key).body(b"jpeg".to_vec().into()).send().await.unwrap();
    }

    // THEN one window took them, and its run ran one array of 30, each object on one line
    let store = batchline::store::DynamoStore::new(aws_sdk_dynamodb::Client::new(&sdk), &env.settings.table_name);
    let started = Instant::now();
    let (head, run) = loop {
        use batchline::store::WindowStore;
        assert!(started.elapsed() < Duration::from_secs(180), "no run ended within 3 minutes");
        let head = store.latest_window("photos").await.unwrap();
        if let Some(run_id) = head.as_ref().and_then(|h| h.run_id.clone()) {
            let read = batchline::store::RunStore::load_run(&store, &run_id).await.unwrap().unwrap();
            if read.run.status.is_terminal() {
                break (head.unwrap(), read.run);
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    drop(events);
    assert_eq!(run.status, batchline::model::run::RunStatus::Succeeded, "{run:?}");
    assert_eq!((head.window, head.count), (1, 30), "{head:?}");
    let batch = aws_sdk_batch::Client::new(&sdk);
    let map = run.stages["objects"].attempts[0].map.as_ref().expect("a map attempt");
    let job_id = map.arrays[0].job_id.clone().expect("the array's job");
    let described = batch.describe_jobs().jobs(&job_id).send().await.unwrap();
    let array = &described.jobs()[0];
    assert_eq!(array.array_properties().and_then(|a| a.size()), Some(30));
    let list = environment_of(array, "BATCHLINE_ITEMS").unwrap();
    let (list_bucket, key) = list.strip_prefix("s3://").unwrap().split_once('/').unwrap();
    let text = s3.get_object().bucket(list_bucket).key(key).send().await.unwrap().body.collect().await.unwrap();
    let items: Vec<String> = String::from_utf8(text.to_vec())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["items"][0].as_str().unwrap().to_owned())
        .collect();
    let expected: BTreeSet<String> = (0..30).map(|i| format!("s3://{bucket}/incoming/bin-{i:02}.jpg")).collect();
    assert_eq!(items.len(), 30);
    assert_eq!(items.into_iter().collect::<BTreeSet<_>>(), expected);
    // AND the array was submitted after the window's end, and within the lateness the book
    // gives (the lanes' batching, the close, the expansion) plus the emulator's slack
    let submitted_after_open = array.created_at().unwrap() - head.opened_at;
    eprintln!("the window's array was submitted {submitted_after_open} ms after its first object arrived");
    assert!(submitted_after_open >= 2_000, "submitted {submitted_after_open} ms after the window opened");
    assert!(submitted_after_open <= 2_000 + 30_000, "submitted {submitted_after_open} ms after the window opened");
}
