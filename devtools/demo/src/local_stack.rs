//! A local stack that outlives one command: the user's stack configuration bootstrapped in the emulator under fixed names, and one function invoked with one event.
//!
//! `scripts/local-stack` serves it and `scripts/invoke FUNCTION EVENT.json` tries one
//! function on it the way `sam local invoke` would, but against the emulator instead of AWS.
//! Its configuration is the `Environment` resource of the checkout's `template.yaml` (or
//! another template, or a configuration file: see [`crate::configuration`]). The first
//! call makes the stack (the table, the input bucket `<name>-input` with EventBridge
//! notifications, and everything bootstrap provisions for the prefix `<name>`, by default
//! `local`, e.g. the job queue `local-default`); later calls reuse it for as long as the
//! emulator runs. A call whose configuration differs from the one last applied sends
//! bootstrap an Update with the old and the new properties, as `sam deploy` would, and
//! says what changed; an unchanged one says the stack is reused. (Straight to bootstrap
//! rather than through the emulator's CloudFormation: this way the functions sign as their
//! roles, so the emulator holds their calls to the template's policies.)
//!
//! What was last applied is kept in the stack's folder (`applied.json`: the physical id
//! and the properties). The functions' environment is written to `env` there (one
//! `NAME=value` a line), which is what `cargo lambda watch --env-file .local-stack/env`
//! needs to serve a function against the same stack. A function served by `cargo lambda
//! watch` from that file signs as `testing`, unevaluated.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use batchline_testkit::emulator::{endpoint, repo_root, sdk_config};
use batchline_testkit::local_lambda::{LocalLambda, Outcome};

use crate::configuration::{changes, resolve, Source};
use crate::serve::Launcher;

/// The local stack's name unless told otherwise: every resource's name starts with it.
pub const PREFIX: &str = "local";
/// The input bucket of the local stack `local`, which the sample S3 events name.
pub const BUCKET: &str = "local-input";

/// The local stack's names, and how its functions are started (their environment, where they log).
#[derive(Debug, Clone)]
pub struct LocalStack {
    pub name: String,
    pub bucket: String,
    pub table: String,
    pub launcher: Launcher,
    /// The configuration applied (the `Environment`'s properties, local stand-ins in).
    pub properties: Value,
}

/// The directory the local stack keeps its files in.
pub fn default_dir() -> PathBuf {
    repo_root().join(".local-stack")
}

/// The checkout's own template, the local stack's configuration unless told otherwise.
pub fn default_source() -> Source {
    Source::Template { path: repo_root().join("template.yaml"), overrides: Vec::new() }
}

/// The input bucket of the local stack `name`.
pub fn bucket_of(name: &str) -> String {
    format!("{name}-input")
}

impl LocalStack {
    /// The local stack `local` as it was last started (`scripts/local-stack` may have been
    /// given another template or a configuration file), else from the checkout's template
    /// (see [`LocalStack::ensure_from`]).
    pub async fn ensure(dir: &Path, say: &mut dyn FnMut(String)) -> Result<LocalStack, String> {
        let applied: Option<Value> =
            std::fs::read_to_string(dir.join("applied.json")).ok().and_then(|text| serde_json::from_str(&text).ok());
        let last = applied.and_then(|a| serde_json::from_value::<Source>(a["source"].clone()).ok());
        Self::ensure_from(dir, PREFIX, &last.unwrap_or_else(default_source), say).await
    }

    /// The local stack `name` in the emulator at `AWS_ENDPOINT_URL`, configured from
    /// `source`: made unless its table already holds a bootstrapped configuration, updated
    /// when the configuration differs from the one last applied. `say` hears what is done.
    pub async fn ensure_from(
        dir: &Path,
        name: &str,
        source: &Source,
        say: &mut dyn FnMut(String),
    ) -> Result<LocalStack, String> {
        let sdk = sdk_config().await;
        let table = format!("{name}-table");
        let bucket = bucket_of(name);
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let properties = resolve(source, name, &bucket)?;
        // Its functions sign as their roles: the emulator evaluates their calls against
        // the template's policies, as AWS would (the registration is the emulator's, so it
        // is made again whenever the stack is used).
        crate::register_stack(name, &table, &bucket)?;
        let launcher = Launcher::new(&table, &dir.join("logs"))?.signing_as_roles_of(name);
        let stack = LocalStack { name: name.to_owned(), bucket, launcher, table, properties };
        let store = batchline::store::DynamoStore::new(aws_sdk_dynamodb::Client::new(&sdk), &stack.table);
        let bootstrapped = batchline::store::ConfigStore::load_config(&store).await.ok().flatten().is_some();
        let applied_file = dir.join("applied.json");
        let applied: Option<Value> =
            std::fs::read_to_string(&applied_file).ok().and_then(|text| serde_json::from_str(&text).ok());
        if !bootstrapped {
            say(format!("making the local stack {name} in the emulator at {} from {}", endpoint(), source.describe()));
            let id = stack.make(&sdk).await?;
            write_applied(&applied_file, &id, source, &stack.properties)?;
        } else {
            // A stack made before its bucket sent events to EventBridge gets them now.
            crate::create_input_bucket(&sdk, &stack.bucket).await?;
            let (id, old) = match applied {
                Some(applied) => {
                    (applied["physicalId"].as_str().unwrap_or_default().to_owned(), applied["properties"].clone())
                }
                // Made by a version that kept no record: the published configuration is
                // what it applied, but not as properties, so the Update re-applies them all.
                None => (format!("{name}-environment"), Value::Null),
            };
            let changed = changes(&old, &stack.properties);
            if old == stack.properties {
                say(format!(
                    "the local stack {name} is reused: its configuration ({}) is unchanged",
                    source.describe()
                ));
                write_applied(&applied_file, &id, source, &stack.properties)?;
            } else {
                say(format!("updating the local stack {name} from {}:", source.describe()));
                for line in &changed {
                    say(format!("  {line}"));
                }
                let id = stack.update(&id, &old).await?;
                write_applied(&applied_file, &id, source, &stack.properties)?;
                say(format!("updated the local stack {name} (bootstrap answered SUCCESS to the Update)"));
            }
        }
        let lines: Vec<String> =
            stack.launcher.environment.iter().map(|(name, value)| format!("{name}={value}")).collect();
        std::fs::write(dir.join("env"), lines.join("\n") + "\n").map_err(|e| e.to_string())?;
        Ok(stack)
    }

    /// Creates the table and bucket when missing, and has bootstrap provision the
    /// configuration (a Create); its physical id.
    async fn make(&self, sdk: &aws_config::SdkConfig) -> Result<String, String> {
        let dynamodb = aws_sdk_dynamodb::Client::new(sdk);
        if dynamodb.describe_table().table_name(&self.table).send().await.is_err() {
            match batchline_testkit::table::create_table(sdk, &self.table).await {
                // Another command made it meanwhile: the same table.
                Err(e) if e.to_string().contains("ResourceInUseException") => {}
                other => other.map_err(|e| e.to_string())?,
            }
        }
        crate::create_input_bucket(sdk, &self.bucket).await?;
        let answer = self.send_to_bootstrap("Create", None, None).await?;
        if answer["Status"] != "SUCCESS" {
            return Err(format!("bootstrap could not make the local stack: {}", answer["Reason"]));
        }
        Ok(answer["PhysicalResourceId"].as_str().unwrap_or_default().to_owned())
    }

    /// Has bootstrap apply the configuration over `old` (an Update of `physical_id`); the
    /// physical id it answers. A refused Update leaves the stack as it was, as
    /// CloudFormation's rollback would.
    async fn update(&self, physical_id: &str, old: &Value) -> Result<String, String> {
        let old = if old.is_null() { &self.properties } else { old };
        let answer = self.send_to_bootstrap("Update", Some(physical_id), Some(old)).await?;
        if answer["Status"] != "SUCCESS" {
            // CloudFormation's rollback: an Update back to the old properties (the new as old).
            let back = LocalStack { properties: old.clone(), ..self.clone() };
            let undone = back.send_to_bootstrap("Update", Some(physical_id), Some(&self.properties)).await?;
            let kept = if undone["Status"] == "SUCCESS" {
                "the stack keeps the one it had"
            } else {
                "and rolling back failed too"
            };
            return Err(format!(
                "bootstrap refused the changed configuration ({kept}): {}",
                answer["Reason"].as_str().unwrap_or_default()
            ));
        }
        let id = answer["PhysicalResourceId"].as_str().unwrap_or(physical_id).to_owned();
        if id != physical_id {
            // A replacement: CloudFormation deletes the old one once the update is done.
            let deleted = self.send_to_bootstrap("Delete", Some(physical_id), Some(old)).await?;
            if deleted["Status"] != "SUCCESS" {
                return Err(format!("bootstrap could not delete the replaced {physical_id}: {}", deleted["Reason"]));
            }
        }
        Ok(id)
    }

    async fn send_to_bootstrap(
        &self,
        kind: &str,
        physical_id: Option<&str>,
        old: Option<&Value>,
    ) -> Result<Value, String> {
        let bootstrap = self.start("batchline-bootstrap").await?;
        let properties = if kind == "Delete" { old.unwrap_or(&self.properties) } else { &self.properties };
        let old = if kind == "Update" { old } else { None };
        let answer = crate::send_to_bootstrap_with_old(&bootstrap, kind, properties, physical_id, old).await;
        bootstrap.stop().await;
        answer
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

/// Records what was applied to the stack and where it was read from, for the next start to
/// compare with (and `scripts/invoke` to read it from again).
fn write_applied(file: &Path, physical_id: &str, source: &Source, properties: &Value) -> Result<(), String> {
    let record = json!({"physicalId": physical_id, "source": source, "properties": properties});
    std::fs::write(file, serde_json::to_string_pretty(&record).unwrap_or_default())
        .map_err(|e| format!("{}: {e}", file.display()))
}

/// The binary of a function named as the user would name it.
pub fn binary_name(function: &str) -> Result<String, String> {
    let short = function.strip_prefix("batchline-").unwrap_or(function);
    match short {
        "submit" | "job-events" | "bootstrap" => Ok(format!("batchline-{short}")),
        other => Err(format!("no function {other:?}: the functions are submit, job-events and bootstrap")),
    }
}
