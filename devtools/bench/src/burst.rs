//! What a burst of dropped S3 objects costs per 1,000 objects, with and without coalescing: SubmitJob calls, table writes and write units, through the template's lanes.
//!
//! Without coalescing, [`plain_objects`] object events (1,000 unless
//! `BENCH_BURST_PLAIN_OBJECTS` says otherwise) go through the trigger lane to submit (the
//! release binary), one job each. With coalescing, [`objects`] events (10,000 unless
//! `BENCH_BURST_OBJECTS` says otherwise) of a rule with `Coalesce` go the same way; submit
//! forwards them to the coalesce lane on the default bus, where the map worker (the release
//! binary) appends them to windows and closes each into one run, whose array the map worker
//! (on the map lane) submits. Every process's calls go through a counting forwarder, which
//! also prices its DynamoDB writes in write units. The time measured is from the last
//! object's event put on the bus to its window's array listed in Batch; the children are
//! not played (what they cost is a map's, measured in [`crate::maps`]).

use std::time::{Duration, Instant};

use batchline_testkit::emulator::unique_name;
use batchline_testkit::lanes::{coalesce_lane, map_lane, trigger_lane};
use futures::StreamExt;
use serde_json::{json, Value};

use crate::maps::{LaneToServe, ProcessCalls, ServedLanes, Spawn};
use crate::measure::object_events;

/// Where the coalescing rule's objects are, and how long its windows are.
const BURST_PREFIX: &str = "burst/";
const WINDOW_SECONDS: u32 = 30;

/// Objects of the coalesced burst.
pub fn objects() -> usize {
    std::env::var("BENCH_BURST_OBJECTS").ok().and_then(|n| n.parse().ok()).unwrap_or(10_000)
}

/// Objects sent one job each, for the comparison.
pub fn plain_objects() -> usize {
    std::env::var("BENCH_BURST_PLAIN_OBJECTS").ok().and_then(|n| n.parse().ok()).unwrap_or(1_000)
}

/// The coalescing rule the benchmark's stack declares, beside its plain `incoming/` rule.
pub fn trigger(bucket: &str) -> Value {
    json!({"Bucket": bucket, "Prefix": BURST_PREFIX, "JobDefinition": "default",
           "Coalesce": {"WindowSeconds": WINDOW_SECONDS.to_string(), "MaxObjects": "10000"}})
}

/// One way of taking a burst: its objects, and every process's calls.
#[derive(Debug, Default)]
pub struct Taken {
    pub objects: usize,
    pub processes: Vec<ProcessCalls>,
    /// From the last object's event put to its last job (or array) listed in Batch.
    pub seconds_after_last: f64,
    /// Jobs listed in Batch (array parents and plain jobs).
    pub jobs: usize,
}

#[derive(Debug, Default)]
pub struct BurstReport {
    pub without: Taken,
    pub with: Taken,
}

/// Takes both bursts through the template's lanes. `stack` is the stack's `NamePrefix`,
/// `queue_arn` its default job queue.
pub async fn measure(
    sdk: &aws_config::SdkConfig,
    environment: &[(String, String)],
    stack: &str,
    bucket: &str,
    queue_arn: &str,
) -> Result<BurstReport, String> {
    // The windows' lists go under the input bucket's run-data folder.
    let s3 = aws_sdk_s3::Client::from_conf(aws_sdk_s3::config::Builder::from(sdk).force_path_style(true).build());
    let _ = s3.create_bucket().bucket(bucket).send().await; // there already, or made now
    let without = take(sdk, environment, stack, bucket, queue_arn, false).await?;
    let with = take(sdk, environment, stack, bucket, queue_arn, true).await?;
    Ok(BurstReport { without, with })
}

async fn take(
    sdk: &aws_config::SdkConfig,
    environment: &[(String, String)],
    stack: &str,
    bucket: &str,
    queue_arn: &str,
    coalesced: bool,
) -> Result<Taken, String> {
    let (count, prefix, tag) =
        if coalesced { (objects(), BURST_PREFIX, "coalesced") } else { (plain_objects(), "incoming/", "plain") };
    let events = aws_sdk_eventbridge::Client::new(sdk);
    let bus = crate::lanes::new_bus(&events, &format!("bench-burst-{tag}")).await?;
    let queue = || unique_name("bench-burst-lane");
    let mut lanes = vec![LaneToServe {
        label: "submit",
        binary: "batchline-submit",
        lane: trigger_lane(bucket, prefix)?,
        bus: bus.clone(),
        queue: queue(),
    }];
    if coalesced {
        // The coalesce lane's queue goes by the name the IAM evaluation gives the stack's.
        let coalesce = coalesce_lane(stack)?;
        let (default, named) = ("default".to_owned(), format!("{stack}-CoalesceQueue"));
        lanes.push(LaneToServe {
            label: "map-worker",
            binary: "batchline-map",
            lane: coalesce,
            bus: default.clone(),
            queue: named,
        });
        lanes.push(LaneToServe {
            label: "map-worker",
            binary: "batchline-map",
            lane: map_lane(stack)?,
            bus: default,
            queue: queue(),
        });
    }
    let served = ServedLanes::start(sdk, &Spawn::release(), lanes, &format!("burst-{tag}"), environment).await?;

    let batch = aws_sdk_batch::Client::new(sdk);
    let (jobs_before, children_before) = listed(&batch, queue_arn).await?;
    let mut objects = object_events(count, bucket, tag);
    for event in &mut objects {
        let key = event["detail"]["object"]["key"].as_str().unwrap_or_default().replacen("incoming/", prefix, 1);
        event["detail"]["object"]["key"] = json!(key);
    }
    put_all(&events, &bus, &objects).await?;
    let last_put = Instant::now();
    // Until every object runs in a listed job: as many children (a plain job is one) as objects.
    let outcome = loop {
        let (jobs, children) = listed(&batch, queue_arn).await?;
        if children - children_before >= count {
            break Ok(jobs - jobs_before);
        }
        if last_put.elapsed() > Duration::from_secs(1_800) {
            break Err(format!("{tag}: {} of {count} objects in jobs after 30 minutes", children - children_before));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let seconds_after_last = last_put.elapsed().as_secs_f64();
    let processes = served.stop().await?;
    let jobs = outcome?;
    let mut taken = Taken { objects: count, seconds_after_last, jobs, ..Taken::default() };
    for process in processes {
        taken.processes.push(process.finish().await);
    }
    Ok(taken)
}

/// Jobs in the queue (array children left out), and the children they run (a plain job runs one).
pub(crate) async fn listed(batch: &aws_sdk_batch::Client, queue_arn: &str) -> Result<(usize, usize), String> {
    let (mut jobs, mut children, mut token) = (0, 0, None);
    loop {
        let page = batch
            .list_jobs()
            .job_queue(queue_arn)
            .filters(aws_sdk_batch::types::KeyValuesPair::builder().name("AFTER_CREATED_AT").values("0").build())
            .set_next_token(token)
            .send()
            .await
            .map_err(|e| batchline::Error::aws("ListJobs", e).to_string())?;
        // AWS gives an array's size in its summary; the emulator lists its children instead.
        let summaries = page.job_summary_list();
        let with_children: std::collections::BTreeSet<&str> =
            summaries.iter().filter_map(|j| j.job_id()?.split_once(':').map(|(parent, _)| parent)).collect();
        let listed_children = summaries.iter().filter(|j| j.job_id().is_some_and(|id| id.contains(':'))).count();
        for job in summaries.iter().filter(|j| j.job_id().is_some_and(|id| !id.contains(':'))) {
            jobs += 1;
            children += match job.array_properties().and_then(|a| a.size()) {
                Some(size) => size as usize,
                None if with_children.contains(job.job_id().unwrap_or_default()) => 0,
                None => 1,
            };
        }
        children += listed_children;
        token = page.next_token().map(str::to_owned);
        if token.is_none() {
            return Ok((jobs, children));
        }
    }
}

/// Puts the object events on `bus`, ten to a PutEvents call, eight calls at a time.
pub(crate) async fn put_all(events: &aws_sdk_eventbridge::Client, bus: &str, objects: &[Value]) -> Result<(), String> {
    let calls = objects.chunks(10).map(|ten| {
        let entries: Vec<_> = ten
            .iter()
            .map(|event| {
                aws_sdk_eventbridge::types::PutEventsRequestEntry::builder()
                    .event_bus_name(bus)
                    .source("aws.s3")
                    .detail_type("Object Created")
                    .detail(event["detail"].to_string())
                    .build()
            })
            .collect();
        let events = events.clone();
        async move { events.put_events().set_entries(Some(entries)).send().await }
    });
    let sent: Vec<_> = futures::stream::iter(calls).buffer_unordered(8).collect().await;
    for reply in sent {
        let reply = reply.map_err(|e| batchline::Error::aws("PutEvents", e).to_string())?;
        if reply.failed_entry_count() > 0 {
            return Err(format!("{} object events not put", reply.failed_entry_count()));
        }
    }
    Ok(())
}

/// The report's section: per 1,000 objects, with and without coalescing, side by side.
pub fn render(report: &BurstReport) -> String {
    let per_thousand = |taken: &Taken, n: f64| n * 1_000.0 / taken.objects.max(1) as f64;
    let calls = |taken: &Taken, operations: &[&str]| -> f64 {
        let all = taken.processes.iter().flat_map(|p| p.calls.iter());
        per_thousand(taken, all.filter(|(op, _)| operations.contains(&op.as_str())).map(|(_, n)| *n as f64).sum())
    };
    let writes = [
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
        "dynamodb:DeleteItem",
        "dynamodb:BatchWriteItem",
        "dynamodb:TransactWriteItems",
    ];
    let units = |taken: &Taken| per_thousand(taken, taken.processes.iter().map(|p| p.write_units as f64).sum());
    let all =
        |taken: &Taken| per_thousand(taken, taken.processes.iter().flat_map(|p| p.calls.values()).sum::<u64>() as f64);
    let (without, with) = (&report.without, &report.with);
    let at_aws = |jobs: usize| jobs as f64 / 50.0;
    let mut out = format!(
        "\nA burst of S3 objects, per 1,000 objects ({} one job each; {} through a coalescing rule, \
         WindowSeconds {WINDOW_SECONDS}, MaxObjects 10000):\n\n\
         | per 1,000 objects | one job each | coalesced |\n|---|---|---|\n",
        without.objects, with.objects
    );
    let rows = [
        ("SubmitJob calls", calls(without, &["batch:SubmitJob"]), calls(with, &["batch:SubmitJob"])),
        ("table writes (calls)", calls(without, &writes), calls(with, &writes)),
        ("table write units", units(without), units(with)),
        ("every AWS call", all(without), all(with)),
    ];
    for (name, a, b) in rows {
        out.push_str(&format!("| {name} | {a:.1} | {b:.1} |\n"));
    }
    out.push_str(&format!(
        "| last object to its job listed (emulator) | {:.1} s | {:.1} s |\n\
         | the whole burst's SubmitJob calls at 50 a second (AWS) | {:.1} s for {} objects | {:.2} s for {} objects |\n",
        without.seconds_after_last,
        with.seconds_after_last,
        at_aws(without.objects),
        without.objects,
        at_aws(with.jobs),
        with.objects,
    ));
    out.push_str("\n| burst | process | messages | invocations | operation | calls per 1,000 objects |\n|---|---|---|---|---|---|\n");
    for (name, taken) in [("one job each", without), ("coalesced", with)] {
        for process in &taken.processes {
            for (k, (operation, n)) in process.calls.iter().enumerate() {
                let (messages, invocations) = if k == 0 {
                    (process.messages.to_string(), process.invocations.to_string())
                } else {
                    Default::default()
                };
                out.push_str(&format!(
                    "| {name} | {} | {messages} | {invocations} | {operation} | {:.1} |\n",
                    process.label,
                    per_thousand(taken, *n as f64)
                ));
            }
        }
    }
    out
}
