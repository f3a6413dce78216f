//! `batchline-local`: the local stack, served until stopped — your stack's configuration bootstrapped in the emulator, its HTTP API on a loopback port, and Batch played continuously with its events on the template's rules and lanes (see `batchline_demo::serve`), for the `batchline` command line.

use std::path::PathBuf;

use clap::Parser;

use batchline::model::stack::Target;
use batchline::store::ConfigStore;
use batchline_demo::configuration::{parse_overrides, Source};
use batchline_demo::local_stack::{default_dir, LocalStack, PREFIX};
use batchline_demo::serve::{Routing, ServedStack};
use batchline_testkit::emulator::{endpoint, repo_root, sdk_config, REGION};

/// The port the API is served on unless `--port` says otherwise.
const DEFAULT_PORT: u16 = 4280;

/// Serves your stack locally until Ctrl-C: its configuration (the `Environment` resource of
/// template.yaml, or the file given) bootstrapped in the local AWS emulator, its HTTP API on
/// a loopback port in front of the real submit binary, and Batch played continuously into
/// the real job-events binary. Started again with a changed configuration, it sends
/// bootstrap an Update and prints what changed; unchanged, it reuses the stack.
#[derive(Parser, Debug)]
#[command(name = "scripts/local-stack", bin_name = "scripts/local-stack", version)]
struct Args {
    /// The port the HTTP API is served on (0 picks a free one).
    #[arg(long, default_value_t = DEFAULT_PORT)]
    port: u16,
    /// The SAM template whose `Environment` resource is the configuration.
    #[arg(long, value_name = "FILE", conflicts_with = "config")]
    template: Option<PathBuf>,
    /// Template parameters, as `sam deploy --parameter-overrides` takes them (Key=Value ...,
    /// or all in one quoted argument separated by spaces).
    #[arg(long, value_name = "KEY=VALUE", num_args = 1.., conflicts_with = "config")]
    parameter_overrides: Vec<String>,
    /// A file (YAML or JSON) of the `Environment` resource's properties, instead of a template
    /// (the demo's is devtools/demo/stack.yaml).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The local stack's name: every resource's name starts with it; its files are kept in
    /// .local-stack/ (another name: .local-stack/NAME/).
    #[arg(long, default_value = PREFIX)]
    stack_name: String,
    /// Where the local stack keeps its files (what was applied, the functions' environment
    /// and logs), instead of .local-stack/.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if let Err(why) = serve(args).await {
        eprintln!("batchline-local: {why}");
        std::process::exit(1);
    }
}

async fn serve(args: Args) -> Result<(), String> {
    // Paths as absolute ones: `scripts/invoke` reads the stack's source again from elsewhere.
    let absolute = |path: &PathBuf| std::fs::canonicalize(path).map_err(|e| format!("{}: {e}", path.display()));
    let source = match (&args.config, &args.template) {
        (Some(file), _) => Source::File(absolute(file)?),
        (None, template) => Source::Template {
            path: absolute(&template.clone().unwrap_or_else(|| repo_root().join("template.yaml")))?,
            overrides: parse_overrides(&args.parameter_overrides)?,
        },
    };
    let dir = match &args.state_dir {
        Some(dir) => dir.clone(),
        None if args.stack_name == PREFIX => default_dir(),
        None => default_dir().join(&args.stack_name),
    };
    let sdk = sdk_config().await;
    let stack = LocalStack::ensure_from(&dir, &args.stack_name, &source, &mut |line| println!("{line}")).await?;
    let store = batchline::store::DynamoStore::new(aws_sdk_dynamodb::Client::new(&sdk), &stack.table);
    let config = store.load_config().await.map_err(|e| e.to_string())?.ok_or("the local stack has no configuration")?;
    let queues: Vec<String> = config.job_queues.values().map(|q| q.arn.clone()).collect();
    // The served trigger lane: the S3 trigger of the configuration, on the local bucket.
    let trigger = config.triggers.s3.values().find(|t| t.coalesce.is_none());
    let routing = Routing {
        name: stack.name.clone(),
        job_queues: queues,
        trigger: trigger.map(|t| (stack.bucket.clone(), t.prefix.clone())),
    };
    let served = ServedStack::start(&sdk, &stack.launcher, routing, &format!("127.0.0.1:{}", args.port)).await?;
    let api = &served.api;
    println!("Batchline's API (local stack {}): {}", stack.name, api.url);
    println!("  for the command line and the AWS CLI, in another shell:");
    println!("  export BATCHLINE_API_URL={}", api.url);
    println!("  export AWS_ENDPOINT_URL={} AWS_REGION={REGION}", endpoint());
    println!("  export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing");
    println!("  configuration: {}", source.describe());
    println!("  pipelines: {}", config.pipelines.keys().cloned().collect::<Vec<_>>().join(", "));
    println!("  job definitions: {}", config.job_definitions.keys().cloned().collect::<Vec<_>>().join(", "));
    for (key, trigger) in &config.triggers.s3 {
        let target = match &trigger.target {
            Target::Pipeline(pipeline) => format!("a run of {pipeline}"),
            Target::JobDefinition(definition) => format!("a {definition} job"),
        };
        println!("  objects put under s3://{}/{} start {target} (trigger {key})", stack.bucket, trigger.prefix);
    }
    println!(
        "  local stand-ins for what only AWS has: the emulator's default VPC for the network, the bucket {} \
         for the input bucket, {} for the role boundary; schedules do not fire locally",
        stack.bucket,
        batchline_demo::configuration::boundary_arn(&stack.name)
    );
    println!("  Batch is played: every job runs in no time and succeeds unless its parameters say otherwise");
    println!("  (play=exit:N, play=oom, ...; see the book's Batch event player page). Ctrl-C stops it.");
    std::future::pending::<()>().await;
    Ok(())
}
