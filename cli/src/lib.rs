//! `batchline`: Batchline from the command line — submit jobs, start, watch, cancel and redrive runs, read a job's logs, see what the stack is doing.
//!
//! Every command is a client of the stack's HTTP API (found from `--endpoint`, `--stack` or
//! `BATCHLINE_API_URL`), signed with SigV4 from the standard AWS credential chain; only
//! `logs` also reads CloudWatch Logs, straight from the job's log group with the caller's
//! own credentials: the logs are the caller's to read under their IAM permissions, and
//! passing them through the API would double their transfer and Lambda's 6 MB answer limit.
//!
//! Exit status: 0 when the command did what it says (a watched run or waited job
//! SUCCEEDED), 1 for an error (the API's, shown as one line with its HTTP status), 2 when a
//! watched run or waited job FAILED, 3 when a watched run was CANCELLED.

use std::io::IsTerminal;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{json, Map, Value};

pub mod client;
pub mod render;

use client::{Api, Failure};

#[derive(Debug, Parser)]
#[command(name = "batchline", version, about = "Run container batch jobs and pipelines on AWS Batch + Fargate.")]
pub struct Cli {
    /// The API's URL (else --stack, else BATCHLINE_API_URL).
    #[arg(long, global = true)]
    pub endpoint: Option<String>,
    /// The CloudFormation stack whose ApiUrl output names the API.
    #[arg(long, global = true)]
    pub stack: Option<String>,
    /// Tables for people (default) or the API's JSON for scripts.
    #[arg(long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Seconds to wait for a connection to the API (0: no limit), as the AWS CLI's option.
    #[arg(long, global = true, value_name = "SECONDS", default_value_t = 10)]
    pub cli_connect_timeout: u64,
    /// Seconds to wait for the API's answer to a request (0: no limit), as the AWS CLI's option.
    #[arg(long, global = true, value_name = "SECONDS", default_value_t = 60)]
    pub cli_read_timeout: u64,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Submit one job.
    Submit(SubmitArgs),
    /// Show, list or cancel jobs (`jobs` alone lists them).
    Jobs(JobsArgs),
    /// Start a run of a pipeline.
    Run(RunArgs),
    /// List, show, watch, cancel or redrive runs.
    #[command(subcommand)]
    Runs(RunsCommand),
    /// Print a job's log (every attempt's), optionally following it until the job ends.
    Logs {
        /// The job's id.
        job_id: String,
        /// Go on printing until the job has ended.
        #[arg(long, short)]
        follow: bool,
    },
    /// The stack's queues, what waits and works in them, and recent failures.
    Status,
}

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The job definition's key (default: `default`).
    pub job_definition: Option<String>,
    /// A parameter its command names: k=v (repeatable).
    #[arg(long = "param", value_name = "K=V")]
    pub params: Vec<String>,
    /// An environment variable: K=V (repeatable).
    #[arg(long = "env", value_name = "K=V")]
    pub env: Vec<String>,
    /// vCPUs: with --memory a valid Fargate pair; alone, the job definition's memory is kept
    /// and the size snapped up to a valid one.
    #[arg(long)]
    pub vcpu: Option<String>,
    /// Memory in MiB, paired as for --vcpu.
    #[arg(long)]
    pub memory: Option<String>,
    /// Wait until the job ends; the exit status says how.
    #[arg(long)]
    pub wait: bool,
}

/// `batchline jobs [--object S3_URI] [COMMAND]`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct JobsArgs {
    /// The jobs (and array indexes) that ran this object of a coalescing trigger
    /// (s3://bucket/key), as `jobs list --object` lists them.
    #[arg(long)]
    pub object: Option<String>,
    #[command(subcommand)]
    pub command: Option<JobsCommand>,
}

impl JobsArgs {
    /// The command meant: `jobs` alone (or with `--object`) is `jobs list`.
    pub fn command(self) -> JobsCommand {
        self.command.unwrap_or(JobsCommand::List { status: None, next: None, object: self.object })
    }
}

#[derive(Debug, PartialEq, Subcommand)]
pub enum JobsCommand {
    /// The stack's jobs of the last 24 hours (or in one status), a page at a time.
    List {
        /// Only the jobs in this Batch status (RUNNING, FAILED, ...).
        #[arg(long)]
        status: Option<String>,
        /// Where to go on from: the cursor a previous page printed.
        #[arg(long)]
        next: Option<String>,
        /// Instead: the jobs (and array indexes) that ran this object of a coalescing
        /// trigger (s3://bucket/key), resubmissions included.
        #[arg(long, conflicts_with_all = ["status", "next"])]
        object: Option<String>,
    },
    /// One job: its status, size, attempts, exit code, logs and cost.
    Show {
        /// The job's id.
        job_id: String,
    },
    /// Stop one job (a pipeline stage's job is stopped by cancelling its run).
    Cancel {
        /// The job's id.
        job_id: String,
    },
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The pipeline's name.
    pub pipeline: String,
    /// A parameter of the run: k=v (repeatable).
    #[arg(long = "param", value_name = "K=V")]
    pub params: Vec<String>,
    /// An environment variable for the run's jobs: K=V (repeatable).
    #[arg(long = "env", value_name = "K=V")]
    pub env: Vec<String>,
    /// Watch the run until it ends; the exit status says how.
    #[arg(long)]
    pub watch: bool,
}

#[derive(Debug, Subcommand)]
pub enum RunsCommand {
    /// Recent runs, newest first (every pipeline's, or one's).
    List {
        /// Only this pipeline's runs.
        #[arg(long)]
        pipeline: Option<String>,
        /// At most this many runs.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// One run: its stages as a tree with status, size, attempts, duration and cost.
    Show {
        /// The run's id.
        run_id: String,
    },
    /// Redraw the run until it ends (polling its record, never Batch).
    Watch {
        /// The run's id.
        run_id: String,
    },
    /// Cancel a run: stop every job it started that is still going.
    Cancel {
        /// The run's id.
        run_id: String,
    },
    /// Rerun a FAILED or CANCELLED run's failed, skipped and cancelled stages (of a map
    /// stage, only the children that did not succeed).
    Redrive {
        /// The run's id.
        run_id: String,
        /// A stage's size for the redrive, as STAGE=VCPU/MEMORY (e.g. each=2/4096), repeatable;
        /// other stages keep their last size (a map's children, each its own).
        #[arg(long = "size", value_name = "STAGE=VCPU/MEMORY")]
        sizes: Vec<String>,
    },
}

/// How often `watch`, `--wait` and `--follow` poll.
const POLL: Duration = Duration::from_secs(2);

/// Runs the command line; returns the exit status.
pub async fn main_with(cli: Cli) -> i32 {
    match run(cli).await {
        Ok(status) => status,
        Err(failure) => {
            eprintln!("error: {failure}");
            1
        }
    }
}

async fn run(cli: Cli) -> Result<i32, Failure> {
    let timeouts = client::Timeouts::from_seconds(cli.cli_connect_timeout, cli.cli_read_timeout);
    // The same limits for the AWS calls the command line makes itself (the stack's outputs, logs).
    let mut limits = aws_config::timeout::TimeoutConfig::builder();
    if let Some(connect) = timeouts.connect {
        limits = limits.connect_timeout(connect);
    }
    if let Some(read) = timeouts.read {
        limits = limits.read_timeout(read);
    }
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest()).timeout_config(limits.build()).load().await;
    let base = client::find_api(cli.endpoint.as_deref(), cli.stack.as_deref(), &sdk).await?;
    let api = Api::new(base, sdk.clone(), timeouts)?;
    let output = cli.output;
    match cli.command {
        Command::Submit(args) => submit(&api, args, output).await,
        Command::Jobs(args) => jobs(&api, args.command(), output).await,
        Command::Run(args) => start_run(&api, args, output).await,
        Command::Runs(command) => runs(&api, command, output).await,
        Command::Logs { job_id, follow } => logs(&api, &sdk, &job_id, follow).await,
        Command::Status => {
            show(output, &api.get("/status").await?, render::status);
            Ok(0)
        }
    }
}

/// Prints an answer as the output format asks: the document, or the human rendering.
fn show(output: Output, document: &Value, human: fn(&Value) -> String) {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(document).unwrap_or_default()),
        Output::Table => print!("{}", human(document)),
    }
}

/// `batchline submit`: one job, and with `--wait` its end.
async fn submit(api: &Api, args: SubmitArgs, output: Output) -> Result<i32, Failure> {
    let mut body = json!({
        "jobDefinition": args.job_definition.as_deref().unwrap_or("default"),
        "parameters": pairs(&args.params)?,
        "environment": pairs(&args.env)?,
    });
    if let Some(vcpu) = &args.vcpu {
        body["vcpu"] = json!(vcpu);
    }
    if let Some(memory) = &args.memory {
        body["memory"] = json!(memory);
    }
    let submitted = api.change("POST", "/jobs", Some(&body)).await?;
    show(output, &submitted, |s| {
        let again = if s["duplicate"] == true { " (already submitted: the same job)" } else { "" };
        format!("submitted job {} ({}){again}\n", render::text(&s["jobId"]), render::text(&s["jobName"]))
    });
    if !args.wait {
        return Ok(0);
    }
    let job_id = render::text(&submitted["jobId"]);
    wait_for_job(api, &job_id, output).await
}

/// `batchline jobs list|show|cancel`.
async fn jobs(api: &Api, command: JobsCommand, output: Output) -> Result<i32, Failure> {
    match command {
        JobsCommand::List { object: Some(object), .. } => {
            show(output, &api.get(&format!("/jobs?object={}", encode(&object))).await?, render::object_jobs);
        }
        JobsCommand::List { status, next, object: None } => {
            let query: Vec<String> = [("status", status), ("next", next)]
                .into_iter()
                .filter_map(|(name, value)| Some(format!("{name}={}", encode(&value?))))
                .collect();
            let path = if query.is_empty() { "/jobs".to_owned() } else { format!("/jobs?{}", query.join("&")) };
            show(output, &api.get(&path).await?, render::jobs);
        }
        JobsCommand::Show { job_id } => {
            show(output, &api.get(&format!("/jobs/{}", encode(&job_id))).await?, render::job);
        }
        JobsCommand::Cancel { job_id } => {
            let answer = api.change("DELETE", &format!("/jobs/{}", encode(&job_id)), None).await?;
            show(output, &answer, |a| {
                format!("job {} was {}; termination asked\n", render::text(&a["jobId"]), render::text(&a["status"]))
            });
        }
    }
    Ok(0)
}

/// `batchline run`: a pipeline's run, and with `--watch` its progress to the end.
async fn start_run(api: &Api, args: RunArgs, output: Output) -> Result<i32, Failure> {
    let body = json!({"parameters": pairs(&args.params)?, "environment": pairs(&args.env)?});
    let started = api.change("POST", &format!("/pipelines/{}/runs", encode(&args.pipeline)), Some(&body)).await?;
    show(output, &started, |s| {
        format!("started run {} of {}\n", render::text(&s["runId"]), render::text(&s["pipeline"]))
    });
    if !args.watch {
        return Ok(0);
    }
    watch(api, &render::text(&started["runId"]), output).await
}

/// `batchline runs list|show|watch|cancel|redrive`.
async fn runs(api: &Api, command: RunsCommand, output: Output) -> Result<i32, Failure> {
    match command {
        RunsCommand::List { pipeline, limit } => {
            let mut path = format!("/runs?limit={limit}");
            if let Some(pipeline) = pipeline {
                path.push_str(&format!("&pipeline={}", encode(&pipeline)));
            }
            show(output, &api.get(&path).await?, render::runs);
        }
        RunsCommand::Show { run_id } => {
            show(output, &api.get(&format!("/runs/{}", encode(&run_id))).await?, render::run);
        }
        RunsCommand::Watch { run_id } => return watch(api, &run_id, output).await,
        RunsCommand::Cancel { run_id } => {
            let answer = api.change("DELETE", &format!("/runs/{}", encode(&run_id)), None).await?;
            show(output, &answer, |a| {
                let stopped = a["terminatedJobs"].as_array().map(Vec::len).unwrap_or_default();
                format!("run {} {}; {stopped} job(s) stopped\n", render::text(&a["runId"]), render::text(&a["status"]))
            });
        }
        RunsCommand::Redrive { run_id, sizes } => {
            let body = (!sizes.is_empty()).then(|| stage_sizes(&sizes)).transpose()?.map(|s| json!({"sizes": s}));
            let answer = api.change("POST", &format!("/runs/{}/redrive", encode(&run_id)), body.as_ref()).await?;
            show(output, &answer, |a| {
                let stages: Vec<String> = render::items(&a["stages"]).iter().map(render::text).collect();
                let (run, generation) = (render::text(&a["runId"]), render::text(&a["redrive"]));
                format!("run {run} redriven (generation {generation}): {}\n", stages.join(", "))
            });
        }
    }
    Ok(0)
}

/// `k=v` pairs as a JSON object.
fn pairs(items: &[String]) -> Result<Map<String, Value>, Failure> {
    items
        .iter()
        .map(|item| match item.split_once('=') {
            Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), json!(value))),
            _ => Err(Failure::new(format!("{item:?}: write KEY=VALUE"))),
        })
        .collect()
}

/// `STAGE=VCPU/MEMORY` pairs as the redrive's `sizes`: `{"STAGE": {"vcpu", "memory"}}`.
fn stage_sizes(items: &[String]) -> Result<Map<String, Value>, Failure> {
    items
        .iter()
        .map(|item| {
            let parsed = item.split_once('=').and_then(|(stage, size)| Some((stage, size.split_once('/')?)));
            match parsed {
                Some((stage, (vcpu, memory))) if !stage.is_empty() && !vcpu.is_empty() && !memory.is_empty() => {
                    Ok((stage.to_owned(), json!({"vcpu": vcpu, "memory": memory})))
                }
                _ => Err(Failure::new(format!("--size {item:?}: write STAGE=VCPU/MEMORY, e.g. each=2/4096"))),
            }
        })
        .collect()
}

/// A path segment or query value, percent-encoded.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// The exit status for how a run or job ended.
pub fn exit_status(status: &str) -> Option<i32> {
    match status {
        "SUCCEEDED" => Some(0),
        "FAILED" => Some(2),
        "CANCELLED" => Some(3),
        _ => None,
    }
}

/// Polls the run's record until the run has ended, redrawing it on a terminal and printing
/// each change otherwise.
async fn watch(api: &Api, run_id: &str, output: Output) -> Result<i32, Failure> {
    let path = format!("/runs/{}", encode(run_id));
    let redraw = output == Output::Table && std::io::stdout().is_terminal();
    let mut last = String::new();
    loop {
        let view = api.get(&path).await?;
        let ended = exit_status(view["status"].as_str().unwrap_or_default());
        let shown = render::run(&view);
        if redraw {
            println!("\x1b[2J\x1b[H{shown}watching every {}s (Ctrl-C stops watching, not the run)", POLL.as_secs());
        } else if output == Output::Table && shown != last {
            print!("{shown}");
        }
        last = shown;
        if let Some(status) = ended {
            if output == Output::Json {
                println!("{}", serde_json::to_string_pretty(&view).unwrap_or_default());
            }
            return Ok(status);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Polls a job until it ends, saying each status it reaches.
async fn wait_for_job(api: &Api, job_id: &str, output: Output) -> Result<i32, Failure> {
    let path = format!("/jobs/{}", encode(job_id));
    let mut last = String::new();
    loop {
        let view = api.get(&path).await?;
        let status = render::text(&view["status"]);
        if status != last && output == Output::Table {
            println!("job {job_id}: {status}");
        }
        if let Some(code) = exit_status(&status) {
            if output == Output::Json {
                println!("{}", serde_json::to_string_pretty(&view).unwrap_or_default());
            }
            return Ok(code);
        }
        last = status;
        tokio::time::sleep(POLL).await;
    }
}

/// Prints every attempt's log stream of the job, from CloudWatch Logs; with `follow`, goes
/// on until the job has ended and its log is read to the end.
async fn logs(api: &Api, sdk: &aws_config::SdkConfig, job_id: &str, follow: bool) -> Result<i32, Failure> {
    let logs = aws_sdk_cloudwatchlogs::Client::new(sdk);
    let path = format!("/jobs/{}", encode(job_id));
    // Per stream, the token to go on from.
    let mut positions: Vec<(String, Option<String>)> = Vec::new();
    loop {
        let view = api.get(&path).await?;
        let group = render::text(&view["logGroup"]);
        for stream in render::items(&view["logStreams"]).iter().filter_map(Value::as_str) {
            if !positions.iter().any(|(s, _)| s == stream) {
                positions.push((stream.to_owned(), None));
            }
        }
        let ended = exit_status(view["status"].as_str().unwrap_or_default()).is_some();
        for (stream, token) in positions.iter_mut() {
            loop {
                let page = logs
                    .get_log_events()
                    .log_group_name(&group)
                    .log_stream_name(stream.as_str())
                    .start_from_head(true)
                    .set_next_token(token.clone())
                    .send()
                    .await;
                let page = match page {
                    Ok(page) => page,
                    // A stream appears once the task has started writing to it.
                    Err(err) if is_not_found(&err) => break,
                    Err(err) => {
                        return Err(Failure::new(format!(
                            "reading {group} {stream}: {}",
                            aws_sdk_cloudwatchlogs::error::DisplayErrorContext(err)
                        )))
                    }
                };
                for event in page.events() {
                    println!("{}", event.message().unwrap_or_default().trim_end());
                }
                let next = page.next_forward_token().map(str::to_owned);
                let done = next == *token;
                *token = next;
                if done || page.events().is_empty() {
                    break;
                }
            }
        }
        if !follow || ended {
            return Ok(0);
        }
        tokio::time::sleep(POLL).await;
    }
}

fn is_not_found<E: aws_sdk_cloudwatchlogs::error::ProvideErrorMetadata>(
    err: &aws_sdk_cloudwatchlogs::error::SdkError<E>,
) -> bool {
    err.as_service_error().and_then(|e| e.code()) == Some("ResourceNotFoundException")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_key_equals_value_and_anything_else_is_refused() {
        let parsed = pairs(&["day=2026-11-30".into(), "empty=".into(), "eq=a=b".into()]).unwrap();
        assert_eq!(Value::Object(parsed), json!({"day": "2026-11-30", "empty": "", "eq": "a=b"}));
        assert_eq!(pairs(&["novalue".into()]).unwrap_err().message, "\"novalue\": write KEY=VALUE");
        assert!(pairs(&["=v".into()]).is_err());
    }

    #[test]
    fn jobs_alone_or_with_an_object_is_jobs_list() {
        use clap::Parser;
        let meant = |args: &[&str]| match Cli::try_parse_from(args).unwrap().command {
            Command::Jobs(jobs) => jobs.command(),
            other => panic!("{other:?}"),
        };
        let object = Some("s3://in/a.csv".to_owned());
        let listed = JobsCommand::List { status: None, next: None, object: object.clone() };
        assert_eq!(meant(&["batchline", "jobs", "--object", "s3://in/a.csv"]), listed);
        assert_eq!(meant(&["batchline", "jobs", "list", "--object", "s3://in/a.csv"]), listed);
        assert_eq!(meant(&["batchline", "jobs"]), JobsCommand::List { status: None, next: None, object: None });
        assert!(Cli::try_parse_from(["batchline", "jobs", "--object", "x", "show", "id"]).is_err());
    }

    #[test]
    fn how_a_run_ended_is_the_exit_status() {
        assert_eq!(["SUCCEEDED", "FAILED", "CANCELLED", "RUNNING"].map(exit_status), [Some(0), Some(2), Some(3), None]);
        assert_eq!(encode("a b/c"), "a%20b%2Fc");
    }
}
