//! Shared set-up for integration tests: a deployed Batchline environment of the test's own.

use batchline::model::stack::StackConfig;
use batchline::store::{ConfigStore, DynamoStore};
use batchline_testkit::emulator::{default_network, sdk_config, test_settings, unique_name};
use batchline_testkit::invocation;
use batchline_testkit::player::event_id;
use batchline_testkit::response_server::ResponseServer;
use batchline_testkit::table::create_table;
use serde_json::{json, Value};

/// A table, a configuration and an environment provisioned by bootstrap from `extra`
/// properties (merged over the network and a unique prefix).
pub struct Deployed {
    pub sdk: aws_config::SdkConfig,
    pub settings: batchline::Settings,
    pub stack: StackConfig,
    /// The properties bootstrap was last given.
    pub properties: Value,
}

/// Sends `request` (RequestType and properties) to bootstrap as CloudFormation would,
/// checks it answered SUCCESS, and returns the configuration it published.
async fn bootstrap(sdk: &aws_config::SdkConfig, config: &batchline::Settings, mut request: Value) -> StackConfig {
    let server = ResponseServer::start(0).await.unwrap();
    for (key, value) in [
        ("ResponseURL", json!(server.url)),
        ("StackId", json!("arn:aws:cloudformation:us-east-1:123456789012:stack/test/1")),
        ("RequestId", json!(event_id())),
        ("ResourceType", json!("Custom::BatchlineEnvironment")),
        ("LogicalResourceId", json!("Environment")),
    ] {
        request[key] = value;
    }
    let clients = batchline_bootstrap::Clients::new(sdk);
    batchline_bootstrap::handle(invocation(request), &clients, config).await.unwrap();
    let answer = server.accepted_answers().pop().expect("bootstrap answered");
    assert_eq!(answer["Status"], "SUCCESS", "{answer}");
    DynamoStore::new(aws_sdk_dynamodb::Client::new(sdk), &config.table_name).load_config().await.unwrap().unwrap()
}

impl Deployed {
    pub async fn new(test: &str, extra: Value) -> Deployed {
        let sdk = sdk_config().await;
        let settings = test_settings(test);
        create_table(&sdk, &settings.table_name).await.unwrap();
        let network = default_network();
        let mut properties = json!({
            "ServiceToken": "arn:aws:lambda:us-east-1:123456789012:function:batchline-bootstrap",
            "NamePrefix": unique_name(&test.chars().take(12).collect::<String>()),
            "Network": {"Subnets": network.subnets, "SecurityGroups": network.security_groups},
        });
        for (key, value) in extra.as_object().expect("extra properties are an object") {
            properties[key] = value.clone();
        }
        let request = json!({"RequestType": "Create", "ResourceProperties": properties});
        let stack = bootstrap(&sdk, &settings, request).await;
        Deployed { sdk, settings, stack, properties }
    }

    /// A redeploy: bootstrap's Update with `extra` merged over the current properties.
    pub async fn update(&mut self, extra: Value) {
        let mut properties = self.properties.clone();
        for (key, value) in extra.as_object().expect("extra properties are an object") {
            properties[key] = value.clone();
        }
        let physical_id = format!("{}-environment", self.stack.name_prefix);
        let request = json!({"RequestType": "Update", "PhysicalResourceId": physical_id,
                             "ResourceProperties": properties, "OldResourceProperties": self.properties});
        self.stack = bootstrap(&self.sdk, &self.settings, request).await;
        self.properties = properties;
    }

    pub fn queue_arn(&self, key: &str) -> String {
        self.stack.job_queues[key].arn.clone()
    }

    pub fn definition_arn(&self, key: &str) -> String {
        self.stack.job_definitions[key].arn.clone()
    }

    /// Every job in a queue (any status), described.
    pub async fn jobs_in(&self, queue_key: &str) -> Vec<aws_sdk_batch::types::JobDetail> {
        let batch = aws_sdk_batch::Client::new(&self.sdk);
        let listed = batch
            .list_jobs()
            .job_queue(self.queue_arn(queue_key))
            .filters(aws_sdk_batch::types::KeyValuesPair::builder().name("AFTER_CREATED_AT").values("0").build())
            .send()
            .await
            .unwrap();
        let ids: Vec<String> = listed
            .job_summary_list()
            .iter()
            .filter_map(|j| j.job_id())
            .filter(|id| !id.contains(':'))
            .map(str::to_owned)
            .collect();
        if ids.is_empty() {
            return vec![];
        }
        let mut jobs = batch.describe_jobs().set_jobs(Some(ids)).send().await.unwrap().jobs().to_vec();
        jobs.sort_by_key(|j| j.created_at());
        jobs
    }
}

/// The invocation as job-events takes it: its payload read as the Lambda runtime reads it.
pub fn job_events_invocation(
    event: lambda_runtime::LambdaEvent<Value>,
) -> lambda_runtime::LambdaEvent<batchline_job_events::Payload> {
    let payload = batchline_job_events::Payload::from_value(event.payload).expect("every JSON value is a payload");
    lambda_runtime::LambdaEvent::new(payload, event.context)
}
