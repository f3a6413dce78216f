//! A local stack that outlives one command: the demo's configuration bootstrapped in the emulator under fixed names, and one function invoked with one event.
//!
//! `scripts/invoke FUNCTION EVENT.json` uses it to try a function the way `sam local
//! invoke` would, but against the emulator instead of AWS: the first call makes the stack
//! (the table, the input bucket `local-input` with EventBridge notifications, and everything bootstrap provisions for the
//! prefix `local`, e.g. the job queue `local-default`), later calls reuse it for as long as
//! the emulator runs. The sample events in `events/` name these resources. The functions'
//! environment is also written to `.local-stack/env` (one `NAME=value` a line), which is
//! what `cargo lambda watch --env-file .local-stack/env` needs to serve a function against
//! the same stack. The functions the local stack starts sign as their roles of the stack
//! `local`, so the emulator holds their calls to the template's policies; a function served
//! by `cargo lambda watch` from that file signs as `testing`, unevaluated.

use std::path::{Path, PathBuf};

use serde_json::Value;

use batchline_testkit::emulator::{endpoint, repo_root, sdk_config};
use batchline_testkit::local_lambda::{LocalLambda, Outcome};

use crate::serve::Launcher;

/// The names every local-stack resource starts with.
pub const PREFIX: &str = "local";
/// The input bucket the sample S3 events name.
pub const BUCKET: &str = "local-input";

/// The local stack's names, and how its functions are started (their environment, where they log).
#[derive(Debug, Clone)]
pub struct LocalStack {
    pub table: String,
    pub launcher: Launcher,
}

/// The directory the local stack keeps its files in.
pub fn default_dir() -> PathBuf {
    repo_root().join(".local-stack")
}

impl LocalStack {
    /// The local stack in the emulator at `AWS_ENDPOINT_URL`: made unless its table already
    /// holds a bootstrapped configuration. `say` hears what is being made.
    pub async fn ensure(dir: &Path, say: &mut dyn FnMut(String)) -> Result<LocalStack, String> {
        let sdk = sdk_config().await;
        let table = format!("{PREFIX}-table");
        // Its functions sign as their roles: the emulator evaluates their calls against
        // the template's policies, as AWS would (the registration is the emulator's, so it
        // is made again whenever the stack is used).
        crate::register_stack(PREFIX, &table, BUCKET)?;
        let launcher = Launcher::new(&table, &dir.join("logs"))?.signing_as_roles_of(PREFIX);
        let stack = LocalStack { launcher, table };
        let store = batchline::store::DynamoStore::new(aws_sdk_dynamodb::Client::new(&sdk), &stack.table);
        let bootstrapped = batchline::store::ConfigStore::load_config(&store).await.ok().flatten().is_some();
        if !bootstrapped {
            say(format!("making the local stack (prefix {PREFIX}) in the emulator at {}", endpoint()));
            stack.make(&sdk).await?;
        } else {
            // A stack made before its bucket sent events to EventBridge gets them now.
            crate::create_input_bucket(&sdk, BUCKET).await?;
        }
        let lines: Vec<String> =
            stack.launcher.environment.iter().map(|(name, value)| format!("{name}={value}")).collect();
        std::fs::write(dir.join("env"), lines.join("\n") + "\n").map_err(|e| e.to_string())?;
        Ok(stack)
    }

    /// Creates the table and bucket when missing, and has bootstrap provision the demo's configuration.
    async fn make(&self, sdk: &aws_config::SdkConfig) -> Result<(), String> {
        let dynamodb = aws_sdk_dynamodb::Client::new(sdk);
        if dynamodb.describe_table().table_name(&self.table).send().await.is_err() {
            match batchline_testkit::table::create_table(sdk, &self.table).await {
                // Another command made it meanwhile: the same table.
                Err(e) if e.to_string().contains("ResourceInUseException") => {}
                other => other.map_err(|e| e.to_string())?,
            }
        }
        crate::create_input_bucket(sdk, BUCKET).await?;
        let bootstrap = self.start("batchline-bootstrap").await?;
        let answer = crate::send_to_bootstrap(&bootstrap, "Create", &crate::properties(PREFIX, BUCKET), None).await;
        bootstrap.stop().await;
        let answer = answer?;
        if answer["Status"] != "SUCCESS" {
            return Err(format!("bootstrap could not make the local stack: {}", answer["Reason"]));
        }
        Ok(())
    }

    /// Starts a function's built binary (`target/debug`) with the stack's environment.
    pub async fn start(&self, function: &str) -> Result<LocalLambda, String> {
        self.launcher.start(function, function).await
    }

    /// Invokes `function` (`submit`, `job-events` or `bootstrap`, with or without the
    /// `batchline-` in front) once with `event`.
    pub async fn invoke(&self, function: &str, event: &Value) -> Result<Outcome, String> {
        let name = binary_name(function)?;
        let lambda = self.start(&name).await?;
        let outcome = lambda.invoke(event).await;
        lambda.stop().await;
        outcome
    }
}

/// The binary of a function named as the user would name it.
pub fn binary_name(function: &str) -> Result<String, String> {
    let short = function.strip_prefix("batchline-").unwrap_or(function);
    match short {
        "submit" | "job-events" | "bootstrap" => Ok(format!("batchline-{short}")),
        other => Err(format!("no function {other:?}: the functions are submit, job-events and bootstrap")),
    }
}
