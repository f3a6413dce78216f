//! `batchline-invoke FUNCTION EVENT.json`: one function, one event, against the local stack in the emulator (see `batchline_demo::local_stack`).

use batchline_demo::local_stack::{default_dir, LocalStack};
use batchline_testkit::local_lambda::Outcome;

const USAGE: &str =
    "usage: scripts/invoke FUNCTION EVENT.json   (FUNCTION: submit, job-events or bootstrap; samples in events/)";

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [function, event_file] = args.as_slice() else {
        eprintln!("{USAGE}");
        std::process::exit(2);
    };
    match invoke(function, event_file).await {
        Ok(Outcome::Response(answer)) => {
            println!("{}", serde_json::to_string_pretty(&answer).unwrap_or_else(|_| answer.to_string()));
        }
        Ok(Outcome::Error(error)) => {
            eprintln!("{function} answered with an invocation error:");
            eprintln!("{}", serde_json::to_string_pretty(&error).unwrap_or_else(|_| error.to_string()));
            std::process::exit(1);
        }
        Err(why) => {
            eprintln!("invoke: {why}");
            std::process::exit(1);
        }
    }
}

async fn invoke(function: &str, event_file: &str) -> Result<Outcome, String> {
    let text = std::fs::read_to_string(event_file).map_err(|e| format!("{event_file}: {e}"))?;
    let event: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("{event_file} is not JSON: {e}"))?;
    let dir = default_dir();
    let stack = LocalStack::ensure(&dir, &mut |line| eprintln!("{line}")).await?;
    eprintln!("invoking {function} with {event_file} (logs: {})", stack.launcher.log_dir.display());
    stack.invoke(function, &event).await
}
