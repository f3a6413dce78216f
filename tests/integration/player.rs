//! Tests of the Batch event player itself: event sequence and shape, outcome rules, arrays, delivery.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use aws_sdk_batch::types::{ArrayProperties, ContainerOverrides, JobDependency, ResourceType};
use batchline_testkit::batch_env::{requirement, BatchEnvironment};
use batchline_testkit::emulator::{sdk_config, unique_name};
use batchline_testkit::player::{Delivery, Player, Script, OUT_OF_MEMORY_REASON};
use serde_json::Value;

/// Submits an array job of `size` children with these parameters (and the stage tag
/// `resize`, which the parent's events keep); its id.
async fn submit_array(
    batch: &aws_sdk_batch::Client,
    env: &BatchEnvironment,
    name: &str,
    size: i32,
    parameters: &[(&str, &str)],
) -> String {
    let mut request = batch
        .submit_job()
        .job_name(name)
        .job_queue(&env.queue_arn)
        .job_definition(&env.job_definition_arn)
        .array_properties(ArrayProperties::builder().size(size).build())
        .tags("batchline:stage", "resize");
    for (key, value) in parameters {
        request = request.parameters(*key, *value);
    }
    request.send().await.expect("SubmitJob").job_id().expect("a job id").to_owned()
}

async fn submit(batch: &aws_sdk_batch::Client, env: &BatchEnvironment, name: &str) -> String {
    batch
        .submit_job()
        .job_name(name)
        .job_queue(&env.queue_arn)
        .job_definition(&env.job_definition_arn)
        .send()
        .await
        .expect("SubmitJob")
        .job_id()
        .unwrap()
        .to_owned()
}

fn statuses(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["detail"]["status"].as_str().unwrap()).collect()
}

#[tokio::test]
async fn a_fargate_job_plays_runnable_starting_running_succeeded_in_aws_shape() {
    // GIVEN a job submitted with parameters and tags to a Fargate queue
    let sdk = sdk_config().await;
    let env = BatchEnvironment::create(&sdk, "play-shape").await.unwrap();
    let batch = aws_sdk_batch::Client::new(&sdk);
    let job_id = batch
        .submit_job()
        .job_name("shape-job")
        .job_queue(&env.queue_arn)
        .job_definition(&env.job_definition_arn)
        .parameters("input", "s3://bucket/key.csv")
        .tags("batchline:run", "run-7")
        .send()
        .await
        .unwrap()
        .job_id()
        .unwrap()
        .to_owned();

    // WHEN the player plays the queue with 20 s in the queue and 60 s of running
    let mut player = Player::new(&sdk);
    player.script("shape-job", Script::succeed().waiting(Duration::from_secs(20)).running(Duration::from_secs(60)));
    let changes = player.play_queue(&env.queue_name).await.unwrap();
    let events: Vec<Value> = changes.iter().map(|c| c.event.clone()).collect();

    // THEN the sequence is AWS's, in time order, and every event has the documented shape
    assert_eq!(statuses(&events), ["RUNNABLE", "STARTING", "RUNNING", "SUCCEEDED"]);
    let ids: HashSet<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 4, "every event has its own id");
    for event in &events {
        assert_eq!(event["source"], "aws.batch");
        assert_eq!(event["detail-type"], "Batch Job State Change");
        assert_eq!(event["version"], "0");
        assert_eq!(event["account"], "123456789012");
        assert_eq!(event["region"], "us-east-1");
        assert!(event["time"].as_str().unwrap().ends_with('Z'));
        let detail = &event["detail"];
        assert_eq!(event["resources"][0], detail["jobArn"]);
        assert_eq!(detail["jobId"], job_id.as_str());
        assert_eq!(detail["jobName"], "shape-job");
        assert_eq!(detail["jobQueue"], env.queue_arn.as_str());
        assert_eq!(detail["jobDefinition"], env.job_definition_arn.as_str());
        assert_eq!(detail["parameters"]["input"], "s3://bucket/key.csv");
        assert_eq!(detail["tags"]["batchline:run"], "run-7");
        assert_eq!(detail["platformCapabilities"][0], "FARGATE");
        let requirements = detail["container"]["resourceRequirements"].as_array().unwrap();
        assert!(requirements.iter().any(|r| r["type"] == "VCPU" && r["value"] == "0.25"), "{requirements:?}");
        assert!(requirements.iter().any(|r| r["type"] == "MEMORY" && r["value"] == "512"), "{requirements:?}");
        assert!(detail["createdAt"].is_i64());
    }
    let created = events[0]["detail"]["createdAt"].as_i64().unwrap();
    let running = &events[2]["detail"];
    assert_eq!(running["startedAt"].as_i64().unwrap() - created, 20_000, "queue wait");
    assert!(running["container"]["logStreamName"]
        .as_str()
        .unwrap()
        .starts_with(&format!("{}/default/", env.job_definition_name)));
    let done = &events[3]["detail"];
    assert_eq!(done["stoppedAt"].as_i64().unwrap() - done["startedAt"].as_i64().unwrap(), 60_000, "run time");
    assert_eq!(done["statusReason"], "Essential container in task exited");
    assert_eq!(done["container"]["exitCode"], 0);
    let attempts = done["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0]["container"]["exitCode"], 0);
    assert_eq!(attempts[0]["container"]["logStreamName"], running["container"]["logStreamName"]);
    assert_eq!(attempts[0]["stoppedAt"], done["stoppedAt"]);
    assert!(events.windows(2).all(|w| w[0]["time"].as_str() <= w[1]["time"].as_str()));

    // AND playing the queue again plays nothing twice
    assert!(player.play_queue(&env.queue_name).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_job_that_needs_more_memory_than_it_has_fails_out_of_memory_as_aws_reports_it() {
    // GIVEN two jobs that need 1024 MiB: one at the definition's 512, one overridden to 2048
    let sdk = sdk_config().await;
    let env = BatchEnvironment::create(&sdk, "play-oom").await.unwrap();
    let batch = aws_sdk_batch::Client::new(&sdk);
    let submit_needing = |name: &'static str, memory: Option<&'static str>| {
        let mut request = batch
            .submit_job()
            .job_name(name)
            .job_queue(&env.queue_arn)
            .job_definition(&env.job_definition_arn)
            .parameters("play_needs_memory", "1024");
        if let Some(memory) = memory {
            request = request.container_overrides(
                ContainerOverrides::builder()
                    .resource_requirements(requirement(ResourceType::Vcpu, "0.5"))
                    .resource_requirements(requirement(ResourceType::Memory, memory))
                    .build(),
            );
        }
        request.send()
    };
    submit_needing("small", None).await.unwrap();
    submit_needing("large", Some("2048")).await.unwrap();

    // WHEN played
    let changes = Player::new(&sdk).play_queue(&env.queue_arn).await.unwrap();

    // THEN the small one fails out of memory, exit 137, and the large one succeeds
    let last = |name: &str| changes.iter().rev().find(|c| c.job_name == name).unwrap().event["detail"].clone();
    let small = last("small");
    assert_eq!(small["status"], "FAILED");
    assert_eq!(small["statusReason"], "Essential container in task exited");
    assert_eq!(small["container"]["exitCode"], 137);
    assert_eq!(small["container"]["reason"], OUT_OF_MEMORY_REASON);
    assert_eq!(small["attempts"][0]["container"]["reason"], OUT_OF_MEMORY_REASON);
    assert_eq!(small["attempts"][0]["container"]["exitCode"], 137);
    let large = last("large");
    assert_eq!(large["status"], "SUCCEEDED");
    let memory = large["container"]["resourceRequirements"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "MEMORY")
        .unwrap()
        .clone();
    assert_eq!(memory["value"], "2048");
}

#[tokio::test]
async fn outcomes_follow_parameters_tags_and_scripts() {
    let sdk = sdk_config().await;
    let env = BatchEnvironment::create(&sdk, "play-rules").await.unwrap();
    let batch = aws_sdk_batch::Client::new(&sdk);
    let base = |name: &str| {
        batch.submit_job().job_name(name).job_queue(&env.queue_arn).job_definition(&env.job_definition_arn)
    };
    base("by-parameter").parameters("play", "exit:3").send().await.unwrap();
    base("by-tag").tags("play", "oom").send().await.unwrap();
    base("by-script").send().await.unwrap();
    base("slow").parameters("play_run_seconds", "600").parameters("play_wait_seconds", "90").send().await.unwrap();
    let terminated = submit(&batch, &env, "terminated").await;
    batch.terminate_job().job_id(&terminated).reason("Cancelled by Batchline").send().await.unwrap();

    let mut player = Player::new(&sdk);
    player.script("by-script", Script::exit(42));
    let changes = player.play_queue(&env.queue_arn).await.unwrap();
    let last = |name: &str| changes.iter().rev().find(|c| c.job_name == name).unwrap().event["detail"].clone();

    assert_eq!(last("by-parameter")["container"]["exitCode"], 3);
    assert_eq!(last("by-parameter")["status"], "FAILED");
    assert_eq!(last("by-tag")["container"]["reason"], OUT_OF_MEMORY_REASON);
    assert_eq!(last("by-script")["container"]["exitCode"], 42);
    let slow = last("slow");
    assert_eq!(slow["status"], "SUCCEEDED");
    assert_eq!(slow["startedAt"].as_i64().unwrap() - slow["createdAt"].as_i64().unwrap(), 90_000);
    assert_eq!(slow["stoppedAt"].as_i64().unwrap() - slow["startedAt"].as_i64().unwrap(), 600_000);
    let stopped = last("terminated");
    assert_eq!(stopped["status"], "FAILED");
    assert_eq!(stopped["statusReason"], "Cancelled by Batchline");
    assert_eq!(stopped["attempts"], serde_json::json!([]), "a terminated job never ran");

    // AND a malformed rule is an error naming the job and the setting
    base("malformed").parameters("play", "explode").send().await.unwrap();
    let err = player.play_queue(&env.queue_arn).await.unwrap_err();
    assert!(err.to_string().contains("play=\"explode\""), "{err}");
}

#[tokio::test]
async fn batch_dependencies_start_after_and_fail_with_their_upstream() {
    let sdk = sdk_config().await;
    let env = BatchEnvironment::create(&sdk, "play-deps").await.unwrap();
    let batch = aws_sdk_batch::Client::new(&sdk);
    let first = submit(&batch, &env, "first").await;
    let after = |name: &'static str, upstream: &str| {
        batch
            .submit_job()
            .job_name(name)
            .job_queue(&env.queue_arn)
            .job_definition(&env.job_definition_arn)
            .depends_on(JobDependency::builder().job_id(upstream).build())
            .send()
    };
    after("second", &first).await.unwrap();
    let broken = batch
        .submit_job()
        .job_name("broken")
        .job_queue(&env.queue_arn)
        .job_definition(&env.job_definition_arn)
        .parameters("play", "exit:1")
        .send()
        .await
        .unwrap()
        .job_id()
        .unwrap()
        .to_owned();
    after("never-runs", &broken).await.unwrap();

    let changes = Player::new(&sdk).play_queue(&env.queue_arn).await.unwrap();
    let at = |name: &str, status: &str| {
        changes.iter().find(|c| c.job_name == name && c.status == status).map(|c| c.event["detail"].clone())
    };
    let first_stopped = at("first", "SUCCEEDED").unwrap()["stoppedAt"].as_i64().unwrap();
    assert!(at("second", "RUNNING").unwrap()["startedAt"].as_i64().unwrap() >= first_stopped);
    let never = at("never-runs", "FAILED").expect("fails");
    assert_eq!(never["statusReason"], "Dependent Job failed");
    assert!(at("never-runs", "RUNNING").is_none());
}

#[tokio::test]
async fn an_array_job_plays_its_parent_and_every_child() {
    let sdk = sdk_config().await;
    let env = BatchEnvironment::create(&sdk, "play-array").await.unwrap();
    let batch = aws_sdk_batch::Client::new(&sdk);
    let parent = submit_array(&batch, &env, "fan-out", 3, &[]).await;

    let changes = Player::new(&sdk).play_queue(&env.queue_arn).await.unwrap();

    let mut by_job: HashMap<&str, Vec<&str>> = HashMap::new();
    for change in &changes {
        by_job.entry(change.job_id.as_str()).or_default().push(change.status);
    }
    assert_eq!(by_job[parent.as_str()], ["RUNNABLE", "RUNNING", "SUCCEEDED"]);
    for index in 0..3 {
        let child = format!("{parent}:{index}");
        assert_eq!(by_job[child.as_str()], ["RUNNABLE", "STARTING", "RUNNING", "SUCCEEDED"], "{child}");
        let event = changes.iter().find(|c| c.job_id == child).unwrap();
        assert_eq!(event.event["detail"]["arrayProperties"]["index"], index);
        assert!(event.event["detail"]["jobArn"].as_str().unwrap().ends_with(&format!(":{index}")));
    }
    let done = changes.iter().find(|c| c.job_id == parent && c.status == "SUCCEEDED").unwrap();
    assert_eq!(done.event["detail"]["arrayProperties"]["size"], 3);
    assert_eq!(done.event["detail"]["arrayProperties"]["statusSummary"]["SUCCEEDED"], 3);
    assert_eq!(by_job.len(), 4);
}

#[tokio::test]
async fn each_array_child_plays_its_own_outcome_and_batch_lists_the_children_as_aws_does() {
    // GIVEN an array of 250 children, child 3 exiting 2 and child 7 out of memory (set as a
    // job steered through Batchline would be: a parameter), played without tags on children
    let sdk = sdk_config().await;
    let env = BatchEnvironment::create(&sdk, "play-children").await.unwrap();
    let batch = aws_sdk_batch::Client::new(&sdk);
    let parent = submit_array(&batch, &env, "map", 250, &[("play_children", "3=exit:2, 7=oom")]).await;
    let mut player = Player::new(&sdk);
    player.untagged_children(true);
    let changes = player.play_queue(&env.queue_arn).await.unwrap();
    let end = |job: &str| changes.iter().rev().find(|c| c.job_id == job).unwrap().event["detail"].clone();

    // THEN each child ends as its index says, without the parent's tags
    for (index, status, exit, reason) in
        [(0, "SUCCEEDED", 0, None), (3, "FAILED", 2, None), (7, "FAILED", 137, Some(OUT_OF_MEMORY_REASON))]
    {
        let detail = end(&format!("{parent}:{index}"));
        assert_eq!(
            (detail["status"].as_str(), detail["container"]["exitCode"].as_i64()),
            (Some(status), Some(exit)),
            "{index}"
        );
        assert_eq!(detail["container"]["reason"].as_str(), reason, "{index}");
        assert_eq!(detail["arrayProperties"]["index"], index);
        assert!(detail["tags"].as_object().is_none_or(|t| t.is_empty()), "{detail}");
    }
    // AND the parent ends after its last child, FAILED, counting them
    let last_child = changes.iter().filter(|c| c.job_id.contains(':')).map(|c| c.at_millis).max().unwrap();
    let done = changes.iter().rev().find(|c| c.job_id == parent).unwrap();
    assert!(done.at_millis > last_child);
    assert_eq!(done.status, "FAILED");
    assert_eq!(done.event["detail"]["statusReason"], "Array Child Job failed");
    let summary = &done.event["detail"]["arrayProperties"]["statusSummary"];
    assert_eq!((summary["SUCCEEDED"].as_i64(), summary["FAILED"].as_i64()), (Some(248), Some(2)));
    assert_eq!(done.event["detail"]["tags"]["batchline:stage"], "resize", "the parent keeps its tags");

    // WHEN the ends are settled, THEN ListJobs by arrayJobId and status lists the children in
    // pages of at most maxResults, in index order, each with its index
    player.settle(&changes).await.unwrap();
    let mut listed = Vec::new();
    let mut token = None;
    loop {
        let request = batch.list_jobs().array_job_id(&parent).job_status("SUCCEEDED".into()).max_results(100);
        let page = request.set_next_token(token).send().await.unwrap();
        assert!(page.job_summary_list().len() <= 100);
        listed.extend(page.job_summary_list().iter().map(|j| j.array_properties().and_then(|a| a.index()).unwrap()));
        token = page.next_token().map(str::to_owned);
        if token.is_none() {
            break;
        }
    }
    assert_eq!(listed, (0..250).filter(|i| ![3, 7].contains(i)).collect::<Vec<i32>>());
    // (without a status, AWS lists the RUNNING children only: none here)
    let running = batch.list_jobs().array_job_id(&parent).send().await.unwrap();
    assert!(running.job_summary_list().is_empty());
    // AND by status FAILED exactly the failed children, with exit code and reason
    let failed = batch.list_jobs().array_job_id(&parent).job_status("FAILED".into()).send().await.unwrap();
    let failed: Vec<(i32, Option<i32>, Option<String>)> = failed
        .job_summary_list()
        .iter()
        .map(|j| {
            let container = j.container();
            (
                j.array_properties().and_then(|a| a.index()).unwrap(),
                container.and_then(|c| c.exit_code()),
                container.and_then(|c| c.reason()).map(str::to_owned),
            )
        })
        .collect();
    assert_eq!(failed, [(3, Some(2), None), (7, Some(137), Some(OUT_OF_MEMORY_REASON.to_owned()))]);
}

#[tokio::test]
async fn a_terminated_array_fails_every_child_and_its_parent_counts_them() {
    let sdk = sdk_config().await;
    let env = BatchEnvironment::create(&sdk, "play-stopped-array").await.unwrap();
    let batch = aws_sdk_batch::Client::new(&sdk);
    let parent = submit_array(&batch, &env, "stopped", 3, &[]).await;
    batch.terminate_job().job_id(&parent).reason("stopped by a test").send().await.unwrap();
    let changes = Player::new(&sdk).play_queue(&env.queue_arn).await.unwrap();
    for index in 0..3 {
        let child = changes.iter().rev().find(|c| c.job_id == format!("{parent}:{index}")).expect("each child plays");
        assert_eq!(child.status, "FAILED");
        assert_eq!(child.event["detail"]["arrayProperties"]["index"], index);
    }
    let done = changes.iter().rev().find(|c| c.job_id == parent).unwrap();
    assert_eq!(done.status, "FAILED");
    assert_eq!(done.event["detail"]["arrayProperties"]["statusSummary"]["FAILED"], 3);
    assert!(done.event["detail"].get("container").is_none(), "a parent reports no container of its own");
}

#[tokio::test]
async fn events_reach_sqs_through_an_eventbridge_rule_for_the_queue() {
    // GIVEN a rule on a bus that sends this queue's Batch events to an SQS queue
    let sdk = sdk_config().await;
    let env = BatchEnvironment::create(&sdk, "play-bus").await.unwrap();
    let other = BatchEnvironment::create(&sdk, "play-bus-other").await.unwrap();
    let batch = aws_sdk_batch::Client::new(&sdk);
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let events = aws_sdk_eventbridge::Client::new(&sdk);
    let bus = unique_name("bus");
    events.create_event_bus().name(&bus).send().await.unwrap();
    let queue_url =
        sqs.create_queue().queue_name(unique_name("job-events")).send().await.unwrap().queue_url().unwrap().to_owned();
    let queue_arn = queue_arn(&sqs, &queue_url).await;
    let pattern = serde_json::json!({
        "source": ["aws.batch"],
        "detail-type": ["Batch Job State Change"],
        "detail": {"jobQueue": [env.queue_arn]}
    });
    let rule = unique_name("batch-state");
    events.put_rule().name(&rule).event_bus_name(&bus).event_pattern(pattern.to_string()).send().await.unwrap();
    events
        .put_targets()
        .rule(&rule)
        .event_bus_name(&bus)
        .targets(aws_sdk_eventbridge::types::Target::builder().id("sqs").arn(&queue_arn).build().unwrap())
        .send()
        .await
        .unwrap();
    submit(&batch, &env, "routed").await;
    submit(&batch, &other, "not-routed").await;

    // WHEN the player puts both queues' events on the bus
    let mut player = Player::new(&sdk);
    let mut changes = player.play_queue(&env.queue_arn).await.unwrap();
    changes.extend(player.play_queue(&other.queue_arn).await.unwrap());
    Delivery::of(&changes).to_event_bus(&events, &bus).await.unwrap();

    // THEN exactly this queue's four events arrive, with their details and times intact
    let received = receive_all(&sqs, &queue_url, 4).await;
    assert_eq!(received.len(), 4);
    let mut got: Vec<(String, String)> = received
        .iter()
        .map(|e| (e["detail"]["status"].as_str().unwrap().to_owned(), e["time"].as_str().unwrap().to_owned()))
        .collect();
    got.sort_by(|a, b| a.1.cmp(&b.1));
    let expected: Vec<(String, String)> = changes
        .iter()
        .filter(|c| c.job_name == "routed")
        .map(|c| (c.status.to_owned(), c.event["time"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(got, expected);
    for event in &received {
        assert_eq!(event["source"], "aws.batch");
        assert_eq!(event["detail"]["jobName"], "routed");
    }
}

#[tokio::test]
async fn events_can_be_delivered_twice_and_shuffled_through_sqs_keeping_their_ids() {
    // "submit this job, make it fail out of memory, deliver its events twice in shuffled order through SQS"
    let sdk = sdk_config().await;
    let env = BatchEnvironment::create(&sdk, "play-dup").await.unwrap();
    let batch = aws_sdk_batch::Client::new(&sdk);
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let queue_url =
        sqs.create_queue().queue_name(unique_name("dup")).send().await.unwrap().queue_url().unwrap().to_owned();
    let job = submit(&batch, &env, "oom-twice").await;

    let mut player = Player::new(&sdk);
    player.script(&job, Script::out_of_memory());
    let changes = player.play_queue(&env.queue_arn).await.unwrap();
    let delivery = Delivery::of(&changes).repeated(2).shuffled(7);
    delivery.to_queue(&sqs, &queue_url).await.unwrap();

    let received = receive_all(&sqs, &queue_url, 8).await;
    assert_eq!(received.len(), 8);
    let mut counts: HashMap<String, usize> = HashMap::new();
    for event in &received {
        *counts.entry(event["id"].as_str().unwrap().to_owned()).or_default() += 1;
    }
    assert_eq!(counts.len(), 4);
    assert!(counts.values().all(|n| *n == 2));
    assert_ne!(statuses(delivery.events()), statuses(Delivery::of(&changes).repeated(2).events()), "shuffled");
    assert_eq!(
        statuses(delivery.events()),
        statuses(Delivery::of(&changes).repeated(2).shuffled(7).events()),
        "seeded"
    );
    let failed = received.iter().find(|e| e["detail"]["status"] == "FAILED").unwrap();
    assert_eq!(failed["detail"]["container"]["reason"], OUT_OF_MEMORY_REASON);

    // AND the same events as SQS batches for a handler called directly
    let batches = delivery.sqs_batches(&queue_arn(&sqs, &queue_url).await, 3);
    assert_eq!(batches.iter().map(|b| b["Records"].as_array().unwrap().len()).collect::<Vec<_>>(), [3, 3, 2]);
    let body: Value = serde_json::from_str(batches[0]["Records"][0]["body"].as_str().unwrap()).unwrap();
    assert_eq!(body, delivery.events()[0]);
}

async fn queue_arn(sqs: &aws_sdk_sqs::Client, url: &str) -> String {
    let attributes = sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap();
    attributes.attributes().unwrap()[&aws_sdk_sqs::types::QueueAttributeName::QueueArn].clone()
}

async fn receive_all(sqs: &aws_sdk_sqs::Client, url: &str, expected: usize) -> Vec<Value> {
    let mut events = Vec::new();
    for _ in 0..10 {
        let reply =
            sqs.receive_message().queue_url(url).max_number_of_messages(10).wait_time_seconds(1).send().await.unwrap();
        for message in reply.messages() {
            events.push(serde_json::from_str(message.body().unwrap()).unwrap());
            sqs.delete_message().queue_url(url).receipt_handle(message.receipt_handle().unwrap()).send().await.unwrap();
        }
        if events.len() >= expected && reply.messages().is_empty() {
            break;
        }
    }
    events
}
