//! One local AWS emulator per test run: started on first use, gone when the test process ends.
//!
//! The emulator is moto in server mode behind the protocol adapter in
//! `devtools/emulator/server.py`, run from the repository's `.venv` (made by
//! `scripts/setup`). It is started once per test process on a free loopback port and is
//! told this process's id; it exits by itself within a second of this process ending,
//! however it ends, so no emulator outlives a test run. When `AWS_ENDPOINT_URL` is already
//! set (an emulator started by `scripts/emulator start`, or the local demo), that one is
//! used instead and left running.
//!
//! Tests share the emulator and never reset it: each isolates itself with unique names
//! ([`unique_name`]) and metric namespaces ([`unique_namespace`]).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_sqs::config::Credentials;

/// The region every test and the local run use.
pub const REGION: &str = "us-east-1";
/// moto's default account, which every ARN in the emulator carries.
pub const ACCOUNT_ID: &str = "123456789012";

static ENDPOINT: OnceLock<String> = OnceLock::new();

/// The repository's root folder, found at run time: `BATCHLINE_REPO` when set, else the
/// nearest folder above the running binary (`target/debug/...`) that holds `template.yaml`
/// and `Cargo.toml`, so a checkout copied or moved elsewhere runs its own files, binaries
/// and emulator. Only a binary outside any checkout falls back to where it was compiled.
pub fn repo_root() -> PathBuf {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let root = std::env::var_os("BATCHLINE_REPO")
            .map(PathBuf::from)
            .or_else(|| std::env::current_exe().ok().and_then(|exe| checkout_above(&exe)))
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.."));
        // Canonical, so the paths printed to people read /work/x/target, not .../testkit/../../target.
        root.canonicalize().unwrap_or(root)
    })
    .clone()
}

/// The nearest folder above `path` that is a checkout (holds `template.yaml` and `Cargo.toml`).
pub fn checkout_above(path: &std::path::Path) -> Option<PathBuf> {
    path.ancestors()
        .skip(1)
        .find(|dir| dir.join("template.yaml").is_file() && dir.join("Cargo.toml").is_file())
        .map(std::path::Path::to_path_buf)
}

/// The properties of `template`'s resource `logical_id` as CloudFormation would send them
/// for `stack` (`{"name", "parameters", "physical"}`, parameters not given at their
/// defaults), read through the project's one template resolver (`devtools/iam/policies.py`).
pub fn template_properties(
    template: &std::path::Path,
    logical_id: &str,
    stack: &serde_json::Value,
) -> Result<serde_json::Value, String> {
    let root = repo_root();
    let dir = root.join("target/resolved");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let stack_file = dir.join(format!("{}-{logical_id}.json", unique_name("stack")));
    std::fs::write(&stack_file, stack.to_string()).map_err(|e| e.to_string())?;
    let output = Command::new(root.join(".venv/bin/python"))
        .arg(root.join("devtools/iam/policies.py"))
        .args(["--properties", logical_id])
        .arg(template)
        .arg(&stack_file)
        .output()
        .map_err(|e| format!("cannot run the template resolver: {e}"))?;
    std::fs::remove_file(&stack_file).ok();
    if !output.status.success() {
        return Err(format!("the template resolver failed: {}", String::from_utf8_lossy(&output.stderr)));
    }
    serde_json::from_slice(&output.stdout).map_err(|e| format!("the template resolver's answer: {e}"))
}

/// The emulator's endpoint URL, starting the emulator on first use.
///
/// Panics (failing the test that asked) when it cannot start, saying why: a test without
/// its emulator can only fail.
pub fn endpoint() -> &'static str {
    ENDPOINT.get_or_init(|| match std::env::var("AWS_ENDPOINT_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => start().unwrap_or_else(|why| panic!("the local AWS emulator did not start: {why}")),
    })
}

fn start() -> Result<String, String> {
    let root = repo_root();
    let python = root.join(".venv/bin/python");
    if !python.exists() {
        return Err(format!("{} is missing: run scripts/setup (or scripts/test) first", python.display()));
    }
    let log_dir = root.join("target");
    std::fs::create_dir_all(&log_dir).map_err(|e| e.to_string())?;
    let log = std::fs::File::create(log_dir.join("emulator.log")).map_err(|e| e.to_string())?;
    // Every request the IAM evaluation judged, for the unused-grants report (devtools/iam/report.py,
    // run by scripts/test).
    let iam_log = log_dir.join("iam-requests.jsonl");
    std::fs::File::create(&iam_log).map_err(|e| e.to_string())?;
    let mut child = Command::new(&python)
        .env("BATCHLINE_IAM_LOG", &iam_log)
        .arg(root.join("devtools/emulator/server.py"))
        .arg("--parent-pid")
        .arg(std::process::id().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    let stdout = child.stdout.take().ok_or("no stdout from the emulator")?;
    let mut first_line = String::new();
    BufReader::new(stdout).read_line(&mut first_line).map_err(|e| format!("reading the emulator's endpoint: {e}"))?;
    let endpoint = first_line.trim().to_owned();
    if !endpoint.starts_with("http://") {
        let _ = child.kill();
        return Err(format!("it printed {endpoint:?}; see target/emulator.log"));
    }
    wait_until_listening(&endpoint, Duration::from_secs(30))?;
    // The child is deliberately not waited for: it watches this process and exits with it.
    std::mem::forget(child);
    Ok(endpoint)
}

fn wait_until_listening(endpoint: &str, timeout: Duration) -> Result<(), String> {
    let address = endpoint.trim_start_matches("http://");
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(address).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("nothing listens at {endpoint} after {timeout:?}"))
}

/// An SDK configuration pointed at the emulator, with test credentials.
///
/// Build one per test: SDK clients hold connection pools tied to the Tokio runtime that
/// first used them, and every `#[tokio::test]` has a runtime of its own.
pub async fn sdk_config() -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(endpoint())
        .region(Region::new(REGION))
        .credentials_provider(Credentials::new("testing", "testing", None, None, "batchline-testkit"))
        .load()
        .await
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A principal of the template whose calls the emulator evaluates against its IAM
/// policies (devtools/iam): a function's execution role, or the job role of a stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Principal {
    Submit,
    JobEvents,
    /// The map worker (`batchline-map`).
    Map,
    Bootstrap,
    JobRole,
    /// The task execution role bootstrap makes: ECS pulls the image, writes the logs and
    /// reads the job definition's secrets with it.
    ExecutionRole,
}

impl Principal {
    pub fn name(self) -> &'static str {
        match self {
            Principal::Submit => "submit",
            Principal::JobEvents => "job-events",
            Principal::Map => "map",
            Principal::Bootstrap => "bootstrap",
            Principal::JobRole => "job-role",
            Principal::ExecutionRole => "execution-role",
        }
    }
}

/// `sdk` signing as `principal` of the stack `stack` (registered with
/// [`register_iam_stack`]): the emulator then allows only what the template's policies
/// for that stack allow, and answers anything else AccessDenied, as AWS would.
pub fn signing_as(sdk: &SdkConfig, principal: Principal, stack: &str) -> SdkConfig {
    let key = format!("iam.{}.{stack}", principal.name());
    sdk.to_builder()
        .credentials_provider(aws_sdk_sqs::config::SharedCredentialsProvider::new(Credentials::new(
            key,
            "testing",
            None,
            None,
            "batchline-iam",
        )))
        .build()
}

/// Registers a stack with the emulator's IAM evaluation: its name, parameter values and
/// physical names (see devtools/iam/policies.py, `Stack`), and the template its policies
/// come from (`template.yaml` when `None`). A stack that is to be denied (a fixture
/// template, a mistaken deploy) says so (`expect_denials`): the run's check of unexpected
/// denials leaves its out.
pub fn register_iam_stack(
    stack: &serde_json::Value,
    template: Option<&std::path::Path>,
    expect_denials: bool,
) -> Result<(), String> {
    let name = stack["name"].as_str().ok_or("a stack has a name")?;
    let mut body = serde_json::json!({ "stack": stack, "expectDenials": expect_denials || template.is_some() });
    if let Some(template) = template {
        body["template"] = serde_json::json!(template);
    }
    http_call(endpoint(), "POST", &format!("/_batchline/iam/stacks/{name}"), &body.to_string()).map(|_| ())
}

/// What the emulator's IAM evaluation says of a request that is not made (a stage's
/// container's, say): `{"allowed", "by", "why"}`.
pub fn iam_check(stack: &str, principal: Principal, action: &str, resource: &str) -> serde_json::Value {
    iam_check_with(stack, principal, action, resource, serde_json::json!({}))
}

/// [`iam_check`], with the condition keys AWS would supply with the request (`context`).
pub fn iam_check_with(
    stack: &str,
    principal: Principal,
    action: &str,
    resource: &str,
    context: serde_json::Value,
) -> serde_json::Value {
    ask_iam(&serde_json::json!({"stack": stack, "principal": principal.name(), "action": action,
                                "resource": resource, "context": context}))
}

/// What the emulator's IAM evaluation says of `action` on `resource` by another
/// principal of the account (`principal`, an IAM role name, or a service such as
/// `events.amazonaws.com`) holding the identity policies `identity`, with the request's
/// condition keys `context`: the resource's own policy (a queue's) from the stack's template
/// counts too. `{"allowed", "by", "why"}`.
pub fn iam_check_other(
    stack: &str,
    principal: &str,
    identity: serde_json::Value,
    action: &str,
    resource: &str,
    context: serde_json::Value,
) -> serde_json::Value {
    ask_iam(&serde_json::json!({"stack": stack, "principal": principal, "identity": identity, "action": action,
                                "resource": resource, "context": context}))
}

/// The IAM evaluation's verdict on a request nobody makes (`/_batchline/iam/check`).
fn ask_iam(asked: &serde_json::Value) -> serde_json::Value {
    let answer = http_call(endpoint(), "POST", "/_batchline/iam/check", &asked.to_string())
        .unwrap_or_else(|why| panic!("the IAM evaluation did not answer: {why}"));
    serde_json::from_str(&answer).unwrap_or_else(|why| panic!("IAM evaluation answer {answer:?}: {why}"))
}

/// A stack as the IAM evaluation is told of it (devtools/iam/policies.py, `Stack`): its
/// name, the emulator's network, its metric namespace (the template's default when
/// `None`), and the physical names of its table and input bucket.
pub fn iam_stack(
    name: &str,
    table: &str,
    metric_namespace: Option<&str>,
    input_bucket: Option<&str>,
) -> serde_json::Value {
    let network = default_network();
    let mut stack = serde_json::json!({
        "name": name,
        "parameters": {"SubnetIds": network.subnets, "SecurityGroupIds": network.security_groups},
        "physical": {"Table": table, "Table.Arn": format!("arn:aws:dynamodb:{REGION}:123456789012:table/{table}")},
    });
    if let Some(namespace) = metric_namespace {
        stack["parameters"]["MetricNamespace"] = serde_json::json!(namespace);
    }
    if let Some(bucket) = input_bucket {
        stack["physical"]["InputBucket"] = serde_json::json!(bucket);
    }
    stack
}

/// The StackId CloudFormation sends for the stack `name`; bootstrap builds under the
/// stack's name (its roles' IAM path, its repository's tag), as its policy requires.
pub fn stack_id(name: &str) -> String {
    format!("arn:aws:cloudformation:{REGION}:123456789012:stack/{name}/6f1e4c10-0000-0000-0000-000000000000")
}

/// Every request the emulator's IAM evaluation denied in this run.
pub fn iam_denials() -> Vec<serde_json::Value> {
    let body = http_get(endpoint(), "/_batchline/iam/denials").unwrap_or_else(|why| panic!("IAM denials: {why}"));
    serde_json::from_str(&body).unwrap_or_default()
}

/// A name no other test in this run, or in an earlier run against the same emulator,
/// uses: `prefix`, then this process, a counter and a random part. Letters, digits and
/// `-` only, so it is valid for every AWS resource the tests create.
pub fn unique_name(prefix: &str) -> String {
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{:x}-{count}-{:04x}", std::process::id(), fastrand::u16(..))
}

/// A CloudWatch namespace of the test's own, so metric sums are not shared between tests.
pub fn unique_namespace(test: &str) -> String {
    format!("BatchlineTest/{}", unique_name(test))
}

/// A function configuration for tests: its own table name and metric namespace.
pub fn test_settings(test: &str) -> batchline::Settings {
    batchline::Settings {
        table_name: unique_name(&format!("{test}-table")),
        metric_namespace: unique_namespace(test),
        price_overrides: Default::default(),
    }
}

/// The emulator's default VPC: what the recipe finds with `aws ec2 describe-*`.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct DefaultNetwork {
    pub vpc: String,
    pub subnets: Vec<String>,
    #[serde(rename = "securityGroups")]
    pub security_groups: Vec<String>,
}

/// Reads the default VPC's subnets and security group from the emulator adapter's
/// `/_batchline/default-network` (moto checks that they exist; their ids are random).
pub fn default_network() -> DefaultNetwork {
    static NETWORK: OnceLock<DefaultNetwork> = OnceLock::new();
    NETWORK
        .get_or_init(|| {
            let body = http_get(endpoint(), "/_batchline/default-network")
                .unwrap_or_else(|why| panic!("reading the emulator's default network: {why}"));
            serde_json::from_str(&body).unwrap_or_else(|why| panic!("default network {body:?}: {why}"))
        })
        .clone()
}

/// A plain HTTP/1.0 GET on loopback; enough for the adapter's own JSON endpoints.
fn http_get(endpoint: &str, path: &str) -> Result<String, String> {
    http_call(endpoint, "GET", path, "")
}

/// A plain HTTP/1.0 request with a JSON body on loopback, for the adapter's endpoints.
pub fn http_call(endpoint: &str, method: &str, path: &str, body: &str) -> Result<String, String> {
    use std::io::{Read, Write};
    let address = endpoint.trim_start_matches("http://").trim_end_matches('/');
    let mut stream = std::net::TcpStream::connect(address).map_err(|e| e.to_string())?;
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(|e| e.to_string())?;
    let (head, body) = response.split_once("\r\n\r\n").ok_or("no HTTP body")?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        return Err(head.lines().next().unwrap_or_default().to_owned());
    }
    Ok(body.to_owned())
}
