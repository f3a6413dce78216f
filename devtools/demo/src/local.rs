//! `batchline-local [--port N]`: the local stack, served until stopped — its HTTP API on a loopback port, and Batch played continuously with its events on the template's rules and lanes (see `batchline_demo::serve`), for the `batchline` command line.

use batchline::store::ConfigStore;
use batchline_demo::local_stack::{default_dir, LocalStack, BUCKET, PREFIX};
use batchline_demo::serve::{Routing, ServedStack};
use batchline_testkit::emulator::sdk_config;

/// The port the API is served on unless `--port` says otherwise.
const DEFAULT_PORT: u16 = 4280;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let port = match args.as_slice() {
        [] => DEFAULT_PORT,
        [flag, port] if flag == "--port" => port.parse().unwrap_or_else(|_| usage()),
        _ => usage(),
    };
    if let Err(why) = serve(port).await {
        eprintln!("batchline-local: {why}");
        std::process::exit(1);
    }
}

fn usage() -> ! {
    eprintln!("usage: scripts/local-stack [--port N]   (default {DEFAULT_PORT})");
    std::process::exit(2);
}

async fn serve(port: u16) -> Result<(), String> {
    let sdk = sdk_config().await;
    let stack = LocalStack::ensure(&default_dir(), &mut |line| eprintln!("{line}")).await?;
    let store = batchline::store::DynamoStore::new(aws_sdk_dynamodb::Client::new(&sdk), &stack.table);
    let config = store.load_config().await.map_err(|e| e.to_string())?.ok_or("the local stack has no configuration")?;
    let queues: Vec<String> = config.job_queues.values().map(|q| q.arn.clone()).collect();
    let routing = Routing {
        name: PREFIX.to_owned(),
        job_queues: queues,
        trigger: Some((BUCKET.to_owned(), batchline_demo::INPUT_PREFIX.to_owned())),
    };
    let served = ServedStack::start(&sdk, &stack.launcher, routing, &format!("127.0.0.1:{port}")).await?;
    let api = &served.api;
    println!("Batchline's API (local stack {PREFIX}): {}", api.url);
    println!("  export BATCHLINE_API_URL={}", api.url);
    println!("  pipelines: {}", config.pipelines.keys().cloned().collect::<Vec<_>>().join(", "));
    println!(
        "  objects put under s3://{BUCKET}/{} start the {} pipeline",
        batchline_demo::INPUT_PREFIX,
        batchline_demo::PIPELINE
    );
    println!("  Batch is played: every job runs in no time and succeeds unless its parameters say otherwise");
    println!("  (play=exit:N, play=oom, ...; see the book's Batch event player page). Ctrl-C stops it.");
    std::future::pending::<()>().await;
    Ok(())
}
