//! The store on DynamoDB: the contract suite on the emulator, and items written by the previous release still read.

use std::collections::{BTreeMap, HashMap};

use aws_sdk_dynamodb::types::AttributeValue;
use batchline::model::run::{RunStatus, StageStatus};
use batchline::store::dynamo::{
    claim_from_item, config_from_item, event_claim_from_item, run_from_item, summary_from_item,
};
use std::time::Duration;

use batchline::store::{contract, keys, ClaimState, DynamoStore, EventLedgerStore, EventState, RunStore, VersionedRun};
use batchline_testkit::calls::{CallLog, FailOperation, PauseOperation};
use batchline_testkit::emulator::{sdk_config, test_settings, unique_name};
use batchline_testkit::table::create_table;
use serde_json::Value;

/// An item as the fixture stores it: DynamoDB's JSON (`{"S": ..}` / `{"N": ..}`).
fn item(fixture: &str) -> HashMap<String, AttributeValue> {
    let value: Value = serde_json::from_str(fixture).unwrap();
    value
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, typed)| {
            let attribute = match (typed.get("S"), typed.get("N")) {
                (Some(s), _) => AttributeValue::S(s.as_str().unwrap().to_owned()),
                (_, Some(n)) => AttributeValue::N(n.as_str().unwrap().to_owned()),
                _ => panic!("{name}: only S and N attributes are stored"),
            };
            (name.clone(), attribute)
        })
        .collect()
}

const CONFIG: &str = include_str!("../fixtures/stored/config.json");

#[tokio::test]
async fn the_dynamodb_store_keeps_the_store_contract() {
    let sdk = sdk_config().await;
    let settings = test_settings("store-contract");
    create_table(&sdk, &settings.table_name).await.unwrap();
    let store = DynamoStore::new(aws_sdk_dynamodb::Client::new(&sdk), &settings.table_name);
    let stack = config_from_item(&item(CONFIG)).unwrap();
    contract::check_all(&store, &unique_name("contract"), &stack).await;
}

#[test]
fn items_written_by_the_previous_release_are_read() {
    // Taken from a run of the release before the store module (tests/fixtures/stored/).
    let stack = config_from_item(&item(CONFIG)).unwrap();
    assert!(stack.pipelines.contains_key("diamond"));
    assert!(stack.job_queues["default"].arn.contains(":job-queue/"));

    let claim = claim_from_item(&item(include_str!("../fixtures/stored/claim-submitted.json"))).unwrap();
    assert_eq!(claim.state, ClaimState::Submitted);
    assert!(claim.job_id.is_some() && claim.claimed_at > 0);
    // Its fingerprint covered deploy-resolved ARNs: read as absent (not compared); no holder.
    assert_eq!((claim.fingerprint, claim.holder), (None, None));

    let event = event_claim_from_item(&item(include_str!("../fixtures/stored/event-done.json"))).unwrap();
    assert_eq!(event.state, EventState::Done);
    assert!(!event.token.is_empty());

    let succeeded = run_from_item(&item(include_str!("../fixtures/stored/run-succeeded.json"))).unwrap();
    assert_eq!((succeeded.run.status, succeeded.version), (RunStatus::Succeeded, 14));
    assert!(succeeded.run.completion_sent);
    assert!(succeeded.run.stages.values().all(|s| s.status == StageStatus::Succeeded));

    let failed = run_from_item(&item(include_str!("../fixtures/stored/run-failed.json"))).unwrap();
    assert_eq!(failed.run.status, RunStatus::Failed);
    assert_eq!(failed.run.on_failure.as_ref().map(|s| s.status), Some(StageStatus::Succeeded));

    let running = run_from_item(&item(include_str!("../fixtures/stored/run-running.json"))).unwrap();
    assert_eq!(running.run.status, RunStatus::Running);
    assert!(running.run.to_submit().is_empty(), "its first stage was submitted");

    let line = summary_from_item(&item(include_str!("../fixtures/stored/index-hungry.json")));
    assert_eq!((line.run_id, line.status.as_str()), (running.run.run_id.clone(), "RUNNING"));
}

#[test]
fn stored_items_round_trip_through_the_codecs_unchanged() {
    use batchline::store::dynamo::{claim_item, config_item, index_item, run_item};
    for fixture in
        [include_str!("../fixtures/stored/run-succeeded.json"), include_str!("../fixtures/stored/run-running.json")]
    {
        let stored = item(fixture);
        let read = run_from_item(&stored).unwrap();
        let written = run_item(&read.run, read.version).unwrap();
        assert_eq!(run_from_item(&written).unwrap(), read);
        for name in ["pk", "sk", "pipeline", "status", "version", "expires_at"] {
            assert_eq!(written.get(name), stored.get(name), "{name}");
        }
        let line = index_item(&read.run, read.version);
        assert_eq!(line["pk"], AttributeValue::S(keys::pipeline_pk(&read.run.pipeline.name)));
    }
    let stored = item(include_str!("../fixtures/stored/claim-submitted.json"));
    let written = claim_item(&claim_from_item(&stored).unwrap());
    for name in [
        "pk",
        "sk",
        "state",
        "idempotency_key",
        "job_name",
        "queue",
        // not "fingerprint": the previous release's covered deploy-resolved ARNs; it is
        // read as absent and not written again
        "claimed_at",
        "job_id",
        "expires_at",
    ] {
        assert_eq!(written.get(name), stored.get(name), "{name}");
    }
    let stored = item(CONFIG);
    assert_eq!(
        config_from_item(&config_item(&config_from_item(&stored).unwrap(), "owner").unwrap()).unwrap(),
        config_from_item(&stored).unwrap()
    );
}

#[tokio::test]
async fn an_event_claim_from_the_previous_release_is_taken_over_only_once_stale() {
    // GIVEN an IN_PROGRESS entry as the previous release wrote it: no holder deadline
    let sdk = sdk_config().await;
    let settings = test_settings("store-legacy");
    create_table(&sdk, &settings.table_name).await.unwrap();
    let client = aws_sdk_dynamodb::Client::new(&sdk);
    let id = unique_name("legacy-event");
    client
        .put_item()
        .table_name(&settings.table_name)
        .item("pk", AttributeValue::S(keys::event_pk(&id)))
        .item("sk", AttributeValue::S(keys::EVENT_SK.into()))
        .item("state", AttributeValue::S("IN_PROGRESS".into()))
        .item("token", AttributeValue::S("old-invocation".into()))
        .item("claimed_at", AttributeValue::N("1000".into()))
        .send()
        .await
        .unwrap();
    let store = DynamoStore::new(client, &settings.table_name);
    let me = batchline::store::Holder { token: "me".into(), deadline_ms: 900_000 };
    // WHEN claimed before its legacy staleness, THEN refused (whatever the deadline rule says)
    assert!(!store.claim_event(&id, &me, 600_000, i64::MAX, 1_000).await.unwrap());
    // AND once stale, taken over
    assert!(store.claim_event(&id, &me, 600_000, 0, 1_001).await.unwrap());
    assert_eq!(store.event_claim(&id).await.unwrap().map(|c| c.token), Some("me".to_owned()));
}

/// A store on a fresh table, whose client carries `interceptor`.
async fn store_with(
    test: &str,
    interceptor: impl aws_sdk_dynamodb::config::Intercept + 'static,
) -> (DynamoStore, DynamoStore) {
    let sdk = sdk_config().await;
    let settings = test_settings(test);
    create_table(&sdk, &settings.table_name).await.unwrap();
    let intercepted = aws_sdk_dynamodb::config::Builder::from(&sdk).interceptor(interceptor).build();
    (
        DynamoStore::new(aws_sdk_dynamodb::Client::from_conf(intercepted), &settings.table_name),
        DynamoStore::new(aws_sdk_dynamodb::Client::new(&sdk), &settings.table_name),
    )
}

#[tokio::test]
async fn a_run_is_written_with_its_index_and_open_lines_or_not_at_all() {
    // GIVEN a client whose every write after its first one fails
    for (operation, skip) in [("PutItem", 1), ("TransactWriteItems", 0)] {
        let (faulty, store) = store_with("store-atomic", FailOperation::after(operation, skip, 10)).await;
        let run = contract::sample_run(&unique_name("atomic"), "atomic", 1_000);
        // WHEN a run is started through it
        let written = faulty.save_run(&run, None).await;
        // THEN either nothing was written, or the run is indexed and on the open-run list
        let stored = store.load_run(&run.run_id).await.unwrap();
        let listed = store.list_runs("atomic", 10).await.unwrap().iter().any(|l| l.run_id == run.run_id);
        let open = store.open_runs(None, 10).await.unwrap().items.iter().any(|l| l.run_id == run.run_id);
        assert_eq!(written.is_ok(), stored.is_some(), "{operation}: {written:?}");
        assert_eq!(
            (stored.is_some(), stored.is_some()),
            (listed, open),
            "{operation}: the run and its lines go together"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_finishing_out_of_order_leave_the_index_as_the_record() {
    // GIVEN a running run, and a writer A held back before its write of a stage change
    // (a record-only PutItem: the run's status does not change)
    let pause = PauseOperation::new("PutItem", 0);
    let (a, b) = store_with("store-order", pause.clone()).await;
    let run = contract::sample_run(&unique_name("order"), "order", 1_000);
    b.save_run(&run, None).await.unwrap();
    let mut progressed = run.clone();
    progressed.stages.get_mut("only").unwrap().status = StageStatus::Running;
    let first = b.load_run(&run.run_id).await.unwrap().unwrap();
    let writer_a = tokio::spawn(async move { a.save_run(&progressed, Some(&first)).await });
    let held = pause.holding(Duration::from_secs(2)).await;
    assert!(held, "writer A was held back");
    // WHEN writer B ends the run meanwhile
    let read = b.load_run(&run.run_id).await.unwrap().unwrap();
    let mut ended = read.run.clone();
    ended.status = RunStatus::Succeeded;
    let b_wrote = b.save_run(&ended, Some(&read)).await.unwrap();
    pause.release();
    let a_wrote = writer_a.await.unwrap().unwrap();
    // THEN the index line says what the record says
    let record = b.load_run(&run.run_id).await.unwrap().unwrap();
    let line = b.list_runs("order", 10).await.unwrap().into_iter().find(|l| l.run_id == run.run_id).unwrap();
    assert_eq!(line.status, record.run.status.as_str(), "A: {a_wrote:?}, B: {b_wrote:?}");
    assert_eq!(record.run.status, RunStatus::Succeeded);
    assert_eq!(a_wrote, None, "A's write named a version B had replaced");
}

#[tokio::test]
async fn a_run_change_that_keeps_its_status_is_one_record_write_and_lines_change_with_the_status() {
    let calls = CallLog::default();
    let (counted, store) = store_with("store-calls", calls.clone()).await;
    let run = contract::sample_run(&unique_name("calls"), "calls", 1_000);
    store.save_run(&run, None).await.unwrap();
    let read = store.load_run(&run.run_id).await.unwrap().unwrap();
    // WHEN a stage starts (the run stays RUNNING)
    let mut progressed = read.run.clone();
    progressed.stages.get_mut("only").unwrap().status = StageStatus::Running;
    let version = counted.save_run(&progressed, Some(&read)).await.unwrap().unwrap();
    // THEN the record alone is written, with one PutItem
    assert_eq!(calls.all(), BTreeMap::from([("PutItem".to_owned(), 1)]), "a stage change");
    assert_eq!(store.load_run(&run.run_id).await.unwrap().unwrap().run, progressed);
    // WHEN the run ends, THEN record and lines go together in one transaction
    let read = VersionedRun { run: progressed.clone(), version };
    let mut ended = progressed;
    ended.status = RunStatus::Succeeded;
    counted.save_run(&ended, Some(&read)).await.unwrap().unwrap();
    assert_eq!(calls.count("TransactWriteItems"), 1, "the status change: {:?}", calls.all());
    let line = store.list_runs("calls", 10).await.unwrap().into_iter().find(|l| l.run_id == run.run_id).unwrap();
    assert_eq!(line.status, "SUCCEEDED");
}

/// DynamoDB refusing a write as a conflict with another transaction in flight (mocked: the
/// emulator serialises its transactions, so two never collide).
mod window_conflicts {
    use aws_smithy_mocks::{mock, mock_client, RuleMode};
    use batchline::model::coalesce::CoalescedObject;
    use batchline::store::{Appended, DynamoStore, WindowHead, WindowStore};

    fn cancelled(codes: [&str; 2]) -> String {
        let reasons: Vec<serde_json::Value> = codes.iter().map(|c| serde_json::json!({"Code": c})).collect();
        serde_json::json!({
            "__type": "com.amazonaws.dynamodb.v20120810#TransactionCanceledException",
            "Message": "Transaction cancelled",
            "CancellationReasons": reasons
        })
        .to_string()
    }

    fn head() -> WindowHead {
        WindowHead {
            trigger: "photos".into(),
            window: 3,
            open: true,
            opened_at: 1_000,
            close_at: i64::MAX,
            count: 5,
            run_id: None,
        }
    }

    fn object() -> CoalescedObject {
        CoalescedObject {
            stack: "s".into(),
            trigger: "photos".into(),
            bucket: "b".into(),
            key: "k".into(),
            version: "v".into(),
            size: 1,
        }
    }

    async fn append_cancelled_as(codes: [&str; 2]) -> Result<Appended, batchline::Error> {
        let rule = mock!(aws_sdk_dynamodb::Client::transact_write_items)
            .sequence()
            .http_status(400, Some(cancelled(codes)))
            .build();
        let client = mock_client!(aws_sdk_dynamodb, RuleMode::MatchAny, [&rule]);
        DynamoStore::new(client, "t").append_to_window(&head(), "c1", &[object()], 2_000, 100, 0).await
    }

    #[tokio::test]
    async fn an_append_colliding_with_another_on_its_head_reads_the_head_again_instead_of_failing() {
        // another append or the seal holds the head: read it again (NotAsRead), not an error
        // that would send the batch back after the queue's 900 s visibility timeout
        assert!(matches!(append_cancelled_as(["TransactionConflict", "None"]).await, Ok(Appended::NotAsRead)));
        assert!(matches!(append_cancelled_as(["None", "TransactionConflict"]).await, Ok(Appended::NotAsRead)));
        // the head moved on: read it again; the chunk is there already (a lost reply): done
        assert!(matches!(append_cancelled_as(["ConditionalCheckFailed", "None"]).await, Ok(Appended::NotAsRead)));
        assert!(matches!(append_cancelled_as(["None", "ConditionalCheckFailed"]).await, Ok(Appended::Appended)));
        // anything else is an error
        assert!(append_cancelled_as(["ThrottlingError", "None"]).await.is_err());
    }

    #[tokio::test]
    async fn a_seal_colliding_with_an_append_is_tried_again_until_it_goes_through() {
        let conflict =
            r#"{"__type":"com.amazonaws.dynamodb.v20120810#TransactionConflictException","Message":"conflict"}"#;
        let rule = mock!(aws_sdk_dynamodb::Client::update_item)
            .sequence()
            .http_status(400, Some(conflict.to_owned()))
            .times(2)
            .output(|| aws_sdk_dynamodb::operation::update_item::UpdateItemOutput::builder().build())
            .build();
        let client = mock_client!(aws_sdk_dynamodb, RuleMode::Sequential, [&rule]);
        DynamoStore::new(client, "t").seal_window("photos", 3).await.unwrap();
        assert_eq!(rule.num_calls(), 3, "two conflicts, then sealed");
    }
}
