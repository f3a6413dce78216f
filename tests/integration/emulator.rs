//! Proof that the local emulator is real: the Rust SDK's own calls, through the adapter, into moto.

use aws_sdk_cloudwatch::primitives::DateTime;
use aws_sdk_cloudwatch::types::{
    Dimension, DimensionFilter, Metric, MetricDataQuery, MetricDatum, MetricStat, StandardUnit, Statistic,
};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
};
use batchline_testkit::batch_env::BatchEnvironment;
use batchline_testkit::emulator::{sdk_config, unique_name, unique_namespace};
use std::time::{Duration, SystemTime};

fn now_minus(seconds: u64) -> DateTime {
    DateTime::from(SystemTime::now() - Duration::from_secs(seconds))
}

async fn sum_of(
    cloudwatch: &aws_sdk_cloudwatch::Client,
    namespace: &str,
    metric: &str,
    dimension: Option<(&str, &str)>,
) -> (f64, f64) {
    let mut request = cloudwatch
        .get_metric_statistics()
        .namespace(namespace)
        .metric_name(metric)
        .start_time(now_minus(3600))
        .end_time(DateTime::from(SystemTime::now() + Duration::from_secs(60)))
        .period(7200)
        .statistics(Statistic::Sum)
        .statistics(Statistic::SampleCount);
    if let Some((name, value)) = dimension {
        request = request.dimensions(Dimension::builder().name(name).value(value).build());
    }
    let reply = request.send().await.expect("GetMetricStatistics through the CBOR adapter");
    let datapoints = reply.datapoints();
    let sum = datapoints.iter().filter_map(|d| d.sum()).sum();
    let count = datapoints.iter().filter_map(|d| d.sample_count()).sum();
    (sum, count)
}

#[tokio::test]
async fn put_metric_data_small_and_gzipped_then_statistics_return_the_sums() {
    // GIVEN a namespace of this test's own
    let cloudwatch = aws_sdk_cloudwatch::Client::new(&sdk_config().await);
    let namespace = unique_namespace("cw-sums");
    let when = now_minus(120);

    // WHEN one small call and one over 10 KiB (which the SDK gzips) put data
    cloudwatch
        .put_metric_data()
        .namespace(&namespace)
        .metric_data(
            MetricDatum::builder().metric_name("Small").value(3.0).unit(StandardUnit::Count).timestamp(when).build(),
        )
        .send()
        .await
        .expect("small PutMetricData");
    let mut large = cloudwatch.put_metric_data().namespace(&namespace);
    for index in 0..300 {
        large = large.metric_data(
            MetricDatum::builder()
                .metric_name("Large")
                .dimensions(
                    Dimension::builder().name("Queue").value(format!("queue-with-a-long-name-{}", index % 3)).build(),
                )
                .value(2.0)
                .unit(StandardUnit::Milliseconds)
                .timestamp(when)
                .build(),
        );
    }
    large.send().await.expect("gzipped PutMetricData");

    // THEN the sums and counts read back are the ones put
    assert_eq!(sum_of(&cloudwatch, &namespace, "Small", None).await, (3.0, 1.0));
    assert_eq!(
        sum_of(&cloudwatch, &namespace, "Large", Some(("Queue", "queue-with-a-long-name-1"))).await,
        (200.0, 100.0)
    );

    // AND ListMetrics shows exact dimension sets
    let listed = cloudwatch
        .list_metrics()
        .namespace(&namespace)
        .metric_name("Large")
        .dimensions(DimensionFilter::builder().name("Queue").build())
        .send()
        .await
        .expect("ListMetrics");
    assert_eq!(listed.metrics().len(), 3);
    for metric in listed.metrics() {
        assert_eq!(metric.dimensions().len(), 1);
    }
}

#[tokio::test]
async fn metric_timestamps_survive_the_round_trip_through_get_metric_data() {
    let cloudwatch = aws_sdk_cloudwatch::Client::new(&sdk_config().await);
    let namespace = unique_namespace("cw-data");
    // Whole minutes: CloudWatch reports each period's start, counted from the start time.
    let minute = |t: DateTime| DateTime::from_secs(t.secs() / 60 * 60);
    let when = minute(now_minus(300));
    cloudwatch
        .put_metric_data()
        .namespace(&namespace)
        .metric_data(
            MetricDatum::builder()
                .metric_name("RunTime")
                .value(1500.0)
                .unit(StandardUnit::Milliseconds)
                .timestamp(when)
                .build(),
        )
        .send()
        .await
        .expect("PutMetricData");

    let reply = cloudwatch
        .get_metric_data()
        .start_time(minute(now_minus(3600)))
        .end_time(DateTime::from(SystemTime::now() + Duration::from_secs(60)))
        .metric_data_queries(
            MetricDataQuery::builder()
                .id("runtime")
                .metric_stat(
                    MetricStat::builder()
                        .metric(Metric::builder().namespace(&namespace).metric_name("RunTime").build())
                        .period(60)
                        .stat("Sum")
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .expect("GetMetricData");
    let result = &reply.metric_data_results()[0];
    assert_eq!(result.values(), &[1500.0]);
    assert_eq!(result.timestamps(), &[when]);
}

#[tokio::test]
async fn cloudwatch_errors_keep_their_aws_code() {
    let cloudwatch = aws_sdk_cloudwatch::Client::new(&sdk_config().await);
    let err = cloudwatch
        .get_dashboard()
        .dashboard_name(unique_name("missing-dashboard"))
        .send()
        .await
        .expect_err("no such dashboard");
    let err = batchline::Error::aws("GetDashboard", err);
    assert_eq!(err.aws_code(), Some("ResourceNotFound"), "{err}");
}

#[tokio::test]
async fn a_fargate_environment_runs_a_tagged_job_readable_with_describe_jobs() {
    // GIVEN a FARGATE compute environment created without a service role (as on AWS), a
    // queue and a Fargate job definition
    let sdk = sdk_config().await;
    let batch = aws_sdk_batch::Client::new(&sdk);
    let env = BatchEnvironment::create(&sdk, "proof").await.expect("the Batch environment");
    let name = env.name.clone();
    let described = batch.describe_compute_environments().compute_environments(&name).send().await.unwrap();
    let described = &described.compute_environments()[0];
    assert_eq!(described.status().map(|s| s.as_str()), Some("VALID"));
    assert!(described.service_role().unwrap_or_default().contains("AWSServiceRoleFor"), "{described:?}");

    // WHEN a job is submitted with tags
    let submitted = batch
        .submit_job()
        .job_name(&name)
        .job_queue(&env.queue_arn)
        .job_definition(&env.job_definition_arn)
        .tags("batchline:run", "run-1")
        .send()
        .await
        .expect("SubmitJob");

    // THEN DescribeJobs (through the adapter's vcpus fix) returns it with its tags and size
    let jobs = batch.describe_jobs().jobs(submitted.job_id().unwrap()).send().await.expect("DescribeJobs parses");
    let job = &jobs.jobs()[0];
    assert_eq!(job.job_name(), Some(name.as_str()));
    assert_eq!(job.tags().and_then(|t| t.get("batchline:run")).map(String::as_str), Some("run-1"));
    let requirements = job.container().map(|c| c.resource_requirements()).unwrap_or_default();
    assert!(requirements.iter().any(|r| r.value() == Some("0.25")), "{requirements:?}");
}

#[tokio::test]
async fn a_role_gets_the_managed_ecs_task_execution_policy() {
    let iam = aws_sdk_iam::Client::new(&sdk_config().await);
    let name = unique_name("exec-role");
    let trust = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"ecs-tasks.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#;
    iam.create_role().role_name(&name).assume_role_policy_document(trust).send().await.expect("CreateRole");
    let policy = "arn:aws:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy";
    iam.attach_role_policy().role_name(&name).policy_arn(policy).send().await.expect("managed policies are loaded");

    let attached = iam.list_attached_role_policies().role_name(&name).send().await.unwrap();
    let arns: Vec<_> = attached.attached_policies().iter().filter_map(|p| p.policy_arn()).collect();
    assert_eq!(arns, [policy]);
}

#[tokio::test]
async fn a_conditional_put_is_refused_the_second_time() {
    let dynamodb = aws_sdk_dynamodb::Client::new(&sdk_config().await);
    let table = unique_name("claims");
    dynamodb
        .create_table()
        .table_name(&table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder().attribute_name("pk").attribute_type(ScalarAttributeType::S).build().unwrap(),
        )
        .attribute_definitions(
            AttributeDefinition::builder().attribute_name("sk").attribute_type(ScalarAttributeType::S).build().unwrap(),
        )
        .key_schema(KeySchemaElement::builder().attribute_name("pk").key_type(KeyType::Hash).build().unwrap())
        .key_schema(KeySchemaElement::builder().attribute_name("sk").key_type(KeyType::Range).build().unwrap())
        .send()
        .await
        .expect("CreateTable");

    let claim = || {
        dynamodb
            .put_item()
            .table_name(&table)
            .item("pk", AttributeValue::S(batchline::store::keys::claim_pk("key")))
            .item("sk", AttributeValue::S("CLAIM".into()))
            .condition_expression("attribute_not_exists(pk)")
            .send()
    };
    claim().await.expect("the first claim wins");
    let err = batchline::Error::aws("PutItem", claim().await.expect_err("the second claim loses"));
    assert_eq!(err.aws_code(), Some("ConditionalCheckFailedException"));
}

#[tokio::test]
async fn sqs_messages_are_sent_and_received() {
    let sqs = aws_sdk_sqs::Client::new(&sdk_config().await);
    let queue = sqs.create_queue().queue_name(unique_name("buffer")).send().await.expect("CreateQueue");
    let url = queue.queue_url().unwrap();
    sqs.send_message().queue_url(url).message_body("{\"hello\":1}").send().await.expect("SendMessage");
    let received = sqs.receive_message().queue_url(url).wait_time_seconds(1).send().await.expect("ReceiveMessage");
    let bodies: Vec<_> = received.messages().iter().filter_map(|m| m.body()).collect();
    assert_eq!(bodies, ["{\"hello\":1}"]);
}

#[tokio::test]
async fn a_fault_scope_fails_calls_before_and_loses_replies_after_they_took_effect() {
    use batchline_testkit::faults::{FaultScope, Rates};
    let sdk = sdk_config().await;
    let table = unique_name("faults");
    batchline_testkit::table::create_table(&sdk, &table).await.unwrap();
    let rules = std::collections::BTreeMap::from([
        ("dynamodb:PutItem", Rates { fail: 0.0, lose: 1.0 }),
        ("dynamodb:GetItem", Rates { fail: 1.0, lose: 0.0 }),
    ]);
    let scope = FaultScope::enable(&unique_name("scope"), 7, &rules).await.unwrap();
    let faulty = aws_sdk_dynamodb::Client::from_conf(
        aws_sdk_dynamodb::config::Builder::from(&scope.sdk_config().await)
            .retry_config(aws_sdk_dynamodb::config::retry::RetryConfig::disabled())
            .build(),
    );
    let key = |k: &str| AttributeValue::S(k.to_owned());
    // A lost reply: the caller sees an error, the item exists
    let put = faulty.put_item().table_name(&table).item("pk", key("a")).item("sk", key("b")).send().await;
    assert!(put.is_err());
    let clean = aws_sdk_dynamodb::Client::new(&sdk);
    let read = clean.get_item().table_name(&table).key("pk", key("a")).key("sk", key("b")).send().await.unwrap();
    assert!(read.item().is_some(), "the write took effect");
    // A failure before: the caller sees an error (a 5xx), nothing happened
    let err = faulty.get_item().table_name(&table).key("pk", key("a")).key("sk", key("b")).send().await.unwrap_err();
    assert!(batchline::Error::aws("GetItem", err).to_string().contains("injected fault"));
    // Other calls pass through the scope untouched, and the scope counted what it did
    faulty.describe_table().table_name(&table).send().await.unwrap();
    let counts = scope.counts().await.unwrap();
    assert_eq!((counts["dynamodb:PutItem"]["lose"], counts["dynamodb:GetItem"]["fail"]), (1, 1));
    scope.disable().await.unwrap();
    faulty.get_item().table_name(&table).key("pk", key("a")).key("sk", key("b")).send().await.unwrap();
}
