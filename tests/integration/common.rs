//! Shared set-up for integration tests: a deployed Batchline environment of the test's own.

use std::time::Duration;

use batchline::model::stack::StackConfig;
use batchline::store::{ConfigStore, DynamoStore};
use batchline_demo::serve::{Launcher, Routing, ServedStack};
use batchline_testkit::emulator::{
    default_network, iam_stack, register_iam_stack, repo_root, sdk_config, signing_as, stack_id, test_settings,
    unique_name, Principal,
};
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
    /// The stack's name (its `NamePrefix`, as the template sets it): the emulator evaluates
    /// the functions' calls against the template's policies for it.
    pub name: String,
}

/// Sends `request` (RequestType and properties) to bootstrap as CloudFormation would,
/// checks it answered SUCCESS, and returns the configuration it published.
async fn bootstrap(sdk: &aws_config::SdkConfig, config: &batchline::Settings, request: Value) -> StackConfig {
    let answer = bootstrap_answer(sdk, config, request).await;
    assert_eq!(answer["Status"], "SUCCESS", "{answer}");
    DynamoStore::new(aws_sdk_dynamodb::Client::new(sdk), &config.table_name).load_config().await.unwrap().unwrap()
}

/// Sends `request` (RequestType, properties, a physical id) to bootstrap as CloudFormation
/// would, its clients signing with `sdk`, and returns its answer.
pub async fn bootstrap_answer(sdk: &aws_config::SdkConfig, config: &batchline::Settings, mut request: Value) -> Value {
    let server = ResponseServer::start(0).await.unwrap();
    for (key, value) in [
        ("ResponseURL", json!(server.url)),
        // The stack is named as its prefix, as the template sets NamePrefix.
        ("StackId", json!(stack_id(request["ResourceProperties"]["NamePrefix"].as_str().unwrap_or("test")))),
        ("RequestId", json!(event_id())),
        ("ResourceType", json!("Custom::BatchlineEnvironment")),
        ("LogicalResourceId", json!("Environment")),
    ] {
        request[key] = value;
    }
    let clients = batchline_bootstrap::Clients::new(sdk);
    batchline_bootstrap::handle(invocation(request), &clients, config).await.unwrap();
    server.accepted_answers().pop().expect("bootstrap answered")
}

impl Deployed {
    pub async fn new(test: &str, extra: Value) -> Deployed {
        Deployed::with_template(test, extra, None).await
    }

    /// [`Deployed::new`], its functions held to the policies of `template` (a fixture)
    /// rather than `template.yaml`'s.
    pub async fn with_template(test: &str, extra: Value, template: Option<&std::path::Path>) -> Deployed {
        let sdk = sdk_config().await;
        let settings = test_settings(test);
        create_table(&sdk, &settings.table_name).await.unwrap();
        let network = default_network();
        let name = unique_name(&test.chars().take(12).collect::<String>());
        let mut properties = json!({
            "ServiceToken": "arn:aws:lambda:us-east-1:123456789012:function:batchline-bootstrap",
            "NamePrefix": name,
            "Network": {"Subnets": network.subnets, "SecurityGroups": network.security_groups},
        });
        for (key, value) in extra.as_object().expect("extra properties are an object") {
            properties[key] = value.clone();
        }
        // As the template gives it: bootstrap's roles are created under the stack's RoleBoundary.
        let boundary = format!("arn:aws:iam::123456789012:policy/{name}-RoleBoundary");
        if properties["Roles"].get("PermissionsBoundary").is_none() {
            properties["Roles"]["PermissionsBoundary"] = json!(boundary);
        }
        register(&name, &settings, &properties, template);
        // The stack's own bus, which its template makes (the functions hand each other work on it).
        let lane_bus = batchline::services::announce::lane_bus(&name);
        batchline_testkit::lanes::ensure_bus(&aws_sdk_eventbridge::Client::new(&sdk), &lane_bus).await.unwrap();
        let request = json!({"RequestType": "Create", "ResourceProperties": properties});
        let stack = bootstrap(&signing_as(&sdk, Principal::Bootstrap, &name), &settings, request).await;
        Deployed { sdk, settings, stack, properties, name }
    }

    /// The SDK configuration `principal` of this stack signs with: what it may do is what
    /// the template's policies allow it.
    pub fn sdk_as(&self, principal: Principal) -> aws_config::SdkConfig {
        signing_as(&self.sdk, principal, &self.name)
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
        self.stack = bootstrap(&self.sdk_as(Principal::Bootstrap), &self.settings, request).await;
        self.properties = properties;
    }

    /// bootstrap's Delete, as CloudFormation sends it when the stack is deleted; its answer.
    pub async fn delete(&self) -> Value {
        let physical_id = format!("{}-environment", self.stack.name_prefix);
        let request = json!({"RequestType": "Delete", "PhysicalResourceId": physical_id,
                             "ResourceProperties": self.properties});
        bootstrap_answer(&self.sdk_as(Principal::Bootstrap), &self.settings, request).await
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

/// Registers the stack `name` with the emulator's IAM evaluation: the template's policies
/// (`template.yaml`'s, or a fixture's), resolved with this test's table, metric namespace,
/// input bucket and network.
pub fn register(name: &str, settings: &batchline::Settings, properties: &Value, template: Option<&std::path::Path>) {
    register_expecting(name, settings, properties, template, false)
}

/// [`register`], for a stack whose calls are meant to be denied.
pub fn register_expecting(
    name: &str,
    settings: &batchline::Settings,
    properties: &Value,
    template: Option<&std::path::Path>,
    expect_denials: bool,
) {
    let bucket = properties["Roles"]["InputBucket"].as_str().filter(|b| !b.is_empty());
    let mut stack = iam_stack(name, &settings.table_name, Some(&settings.metric_namespace), bucket);
    if let Some(role) = properties["Roles"]["JobRoleName"].as_str() {
        stack["physical"]["JobRoleName"] = json!(role);
    }
    register_iam_stack(&stack, template, expect_denials)
        .unwrap_or_else(|why| panic!("registering {name} for IAM evaluation: {why}"));
}

/// `template.yaml` with `from` replaced by `to` (which must occur once), written under
/// `target/iam-fixtures/`: a template with one mistake in its policies, to show the IAM
/// evaluation refuses what it no longer allows.
pub fn fixture_template(name: &str, from: &str, to: &str) -> std::path::PathBuf {
    let root = batchline_testkit::emulator::repo_root();
    let template = std::fs::read_to_string(root.join("template.yaml")).unwrap();
    assert_eq!(template.matches(from).count(), 1, "{from:?} occurs once in template.yaml");
    let dir = root.join("target/iam-fixtures");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, template.replace(from, to)).unwrap();
    path
}

/// The requests the emulator's IAM evaluation denied to the stack `name`.
pub fn denials_of(name: &str) -> Vec<Value> {
    batchline_testkit::emulator::iam_denials().into_iter().filter(|d| d["stack"] == name).collect()
}

/// (sum, sample count) of a metric with exactly these dimensions, around now.
pub async fn stats(
    cloudwatch: &aws_sdk_cloudwatch::Client,
    namespace: &str,
    metric: &str,
    dims: &[(&str, &str)],
) -> (f64, f64) {
    use aws_sdk_cloudwatch::primitives::DateTime;
    use aws_sdk_cloudwatch::types::{Dimension, Statistic};
    use std::time::{Duration, SystemTime};
    // Read as the test, not as the function the client signs for.
    let credentials = aws_sdk_cloudwatch::config::Credentials::new("testing", "testing", None, None, "test");
    let reader = aws_sdk_cloudwatch::Client::from_conf(
        cloudwatch.config().to_builder().credentials_provider(credentials).build(),
    );
    let now = SystemTime::now();
    let reply = reader
        .get_metric_statistics()
        .namespace(namespace)
        .metric_name(metric)
        .set_dimensions(Some(dims.iter().map(|(n, v)| Dimension::builder().name(*n).value(*v).build()).collect()))
        .start_time(DateTime::from(now - Duration::from_secs(3 * 3600)))
        .end_time(DateTime::from(now + Duration::from_secs(3 * 3600)))
        .period(86_400)
        .statistics(Statistic::Sum)
        .statistics(Statistic::SampleCount)
        .send()
        .await
        .unwrap();
    let sum = reply.datapoints().iter().filter_map(|d| d.sum()).sum();
    let count = reply.datapoints().iter().filter_map(|d| d.sample_count()).sum();
    (sum, count)
}

/// The built `batchline` command, told where the API is (`BATCHLINE_API_URL`: `url`, else
/// unset) and pointed at the emulator with test credentials, as a user of the local stack
/// runs it.
pub fn batchline_command(url: Option<&str>) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(batchline_demo::binary("batchline").unwrap());
    match url {
        Some(url) => command.env("BATCHLINE_API_URL", url),
        None => command.env_remove("BATCHLINE_API_URL"),
    };
    command
        .env("AWS_ENDPOINT_URL", batchline_testkit::emulator::endpoint())
        .env("AWS_REGION", batchline_testkit::emulator::REGION)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing");
    command
}

/// A deployed stack served as the local stack serves one: the API, the played default
/// queue and its events through the template's lanes.
pub struct Served {
    pub env: Deployed,
    pub stack: ServedStack,
}

impl Served {
    pub async fn new(test: &str, properties: Value) -> Served {
        let env = Deployed::new(test, properties).await;
        let logs = Served::log_dir(test);
        let mut launcher = Launcher::new(&env.settings.table_name, &logs).unwrap().signing_as_roles_of(&env.name);
        // The stack's namespace, as its registration with the IAM evaluation says.
        for (name, value) in launcher.environment.iter_mut() {
            if name == batchline::settings::METRIC_NAMESPACE_VAR {
                *value = env.settings.metric_namespace.clone();
            }
        }
        let routing =
            Routing { name: env.stack.name_prefix.clone(), job_queues: vec![env.queue_arn("default")], trigger: None };
        let stack = ServedStack::start(&env.sdk, &launcher, routing, "127.0.0.1:0").await.unwrap();
        Served { env, stack }
    }

    /// Where the served functions of `test` log: one file per function process.
    pub fn log_dir(test: &str) -> std::path::PathBuf {
        repo_root().join("target/cli-test-logs").join(test)
    }

    /// Runs `batchline ARGS` told where the API is: its exit status, stdout and stderr.
    pub async fn cli(&self, args: &[&str]) -> (i32, String, String) {
        self.cli_told(args, Some(&self.stack.api.url)).await
    }

    /// Runs `batchline ARGS`, with `BATCHLINE_API_URL` set to `url` (else not set).
    pub async fn cli_told(&self, args: &[&str], url: Option<&str>) -> (i32, String, String) {
        let output = batchline_command(url).args(args).output();
        let output = tokio::time::timeout(Duration::from_secs(60), output).await.expect("the CLI ends").unwrap();
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        (output.status.code().unwrap_or(-1), text(&output.stdout), text(&output.stderr))
    }

    pub async fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--output", "json"];
        all.extend_from_slice(args);
        let (status, stdout, stderr) = self.cli(&all).await;
        assert_eq!(status, 0, "{args:?}: {stderr}");
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{args:?}: {e}: {stdout}"))
    }
}
