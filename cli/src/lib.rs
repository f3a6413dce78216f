//! `batchline`: Batchline from the command line — submit jobs, start, watch, cancel and redrive runs, read a job's logs, see what the stack is doing.
//!
//! Every command is a client of the stack's HTTP API (found from `--endpoint-url`, `--stack`
//! or `BATCHLINE_API_URL`), signed with SigV4 from the standard AWS credential chain
//! (`--profile`, `--region` as the AWS CLI takes them); only `logs` also reads CloudWatch
//! Logs, straight from the job's log group with the caller's own credentials: the logs are
//! the caller's to read under their IAM permissions, and passing them through the API would
//! double their transfer and Lambda's 6 MB answer limit.
//!
//! Exit status ([`EXIT_STATUS_HELP`], also in `--help`): 0 success, 1 an error, 2 a usage
//! error, 3 a watched run or waited job ended FAILED, 4 CANCELLED, 130 interrupted.

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{json, Map, Value};

pub mod client;
pub mod follow;
pub mod render;
pub mod report;

use client::{Api, Failure};
pub use follow::interrupted;
use follow::{logs, wait_for_job, watch};

/// What the exit status says, as `--help` and the reference list it.
pub const EXIT_STATUS_HELP: &str = "\
Exit status:
  0    the command did what it says (a watched run or waited job SUCCEEDED)
  1    an error: the network, the credentials, or the API refused (one line on stderr)
  2    a usage error (an unknown command or option, a missing argument, a value written
       wrong such as --param without =)
  3    the watched run or waited job ended FAILED
  4    the watched run or waited job ended CANCELLED
  130  interrupted (Ctrl-C) while watching, waiting or following; the run or job goes on,
       and the last line says how to watch it again

Environment:
  BATCHLINE_API_URL      the API's URL when neither --endpoint-url nor --stack is given
  AWS_PROFILE            the profile to take credentials and region from (--profile)
  AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN
                         credentials, as for the AWS CLI (else the profile, SSO, a role)
  AWS_REGION, AWS_DEFAULT_REGION
                         the region (--region; else the profile's)
  AWS_ENDPOINT_URL       where the AWS calls the command line makes itself go (logs,
                         --stack): the local emulator's URL when trying Batchline locally";

/// The exit status of a command interrupted while it watched, waited or followed (Ctrl-C).
pub const EXIT_INTERRUPTED: i32 = 130;

#[derive(Debug, Parser)]
#[command(
    name = "batchline",
    version,
    about = "Run container batch jobs and pipelines on AWS Batch + Fargate.",
    after_help = EXIT_STATUS_HELP
)]
pub struct Cli {
    /// The API's URL (else --stack, else BATCHLINE_API_URL); `--endpoint` is the old name.
    #[arg(long = "endpoint-url", visible_alias = "endpoint", global = true, value_name = "URL")]
    pub endpoint_url: Option<String>,
    /// The CloudFormation stack whose ApiUrl output names the API.
    #[arg(long, global = true)]
    pub stack: Option<String>,
    /// The AWS profile to use, as the AWS CLI's option (else AWS_PROFILE, else the default).
    #[arg(long, global = true)]
    pub profile: Option<String>,
    /// The AWS region to sign for and call, as the AWS CLI's option (else AWS_REGION, else the
    /// profile's).
    #[arg(long, global = true)]
    pub region: Option<String>,
    /// Tables for people (default) or the API's JSON for scripts, one document a line (JSON
    /// Lines: a watch or a wait writes one line at each change).
    #[arg(long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Watching appends each change as plain lines even on a terminal, instead of redrawing
    /// the run's block in place.
    #[arg(long, global = true)]
    pub no_redraw: bool,
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
    /// Print a job's log (every attempt's), or a run stage's (`logs RUN STAGE`), optionally
    /// following it until the job ends.
    Logs(LogsArgs),
    /// Print a completion script for a shell: `batchline completions bash > /etc/bash_completion.d/batchline`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// The stack's queues, what waits and works in them, and recent failures.
    Status,
}

/// `batchline logs JOB_ID | RUN_ID STAGE [--attempt N] [--index N] [--follow]`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// A job's id; or a run's id followed by one of its stages.
    #[arg(required = true, num_args = 1..=2, value_names = ["JOB_ID | RUN_ID", "STAGE"])]
    pub target: Vec<String>,
    /// Of a run's stage: this attempt (1, 2, ...; default the last).
    #[arg(long)]
    pub attempt: Option<u32>,
    /// Of a map stage: this child (its index in the map), instead of the stage's first array.
    #[arg(long)]
    pub index: Option<u64>,
    /// Go on printing until the job has ended.
    #[arg(long, short)]
    pub follow: bool,
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
    /// Refuse a size that is not a valid Fargate size as given, instead of having the API
    /// adjust it to the nearest one (and saying so).
    #[arg(long)]
    pub exact_size: bool,
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
    /// Write one self-contained HTML page of the run to stdout (`> run.html`): its stages as
    /// a DAG, every attempt on a time axis (queue wait and run time apart, out-of-memory
    /// resizes and retries marked), sizes, costs, map stages' counts and failed items, and
    /// for a failed run the failing attempt's reason, exit code and last log lines.
    Report {
        /// The run's id.
        run_id: String,
        /// How many of the failing attempt's last log lines the page shows (0: none, and
        /// CloudWatch Logs is not read).
        #[arg(long, default_value_t = 20)]
        log_lines: u32,
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
        /// Watch the redriven run until it ends; the exit status says how.
        #[arg(long)]
        watch: bool,
    },
}

/// Runs the command line; returns the exit status.
pub async fn main_with(cli: Cli) -> i32 {
    match run(cli).await {
        Ok(status) => status,
        Err(failure) => {
            eprintln!("error: {failure}");
            failure.exit
        }
    }
}

async fn run(cli: Cli) -> Result<i32, Failure> {
    if let Command::Completions { shell } = &cli.command {
        use clap::CommandFactory;
        clap_complete::generate(*shell, &mut Cli::command(), "batchline", &mut std::io::stdout());
        return Ok(0);
    }
    let timeouts = client::Timeouts::from_seconds(cli.cli_connect_timeout, cli.cli_read_timeout);
    // The same limits for the AWS calls the command line makes itself (the stack's outputs, logs).
    let mut limits = aws_config::timeout::TimeoutConfig::builder();
    if let Some(connect) = timeouts.connect {
        limits = limits.connect_timeout(connect);
    }
    if let Some(read) = timeouts.read {
        limits = limits.read_timeout(read);
    }
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest()).timeout_config(limits.build());
    if let Some(profile) = &cli.profile {
        loader = loader.profile_name(profile);
    }
    if let Some(region) = &cli.region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    let sdk = loader.load().await;
    let base = client::find_api(cli.endpoint_url.as_deref(), cli.stack.as_deref(), &sdk).await?;
    let mut api = Api::new(base, sdk.clone(), timeouts)?;
    api.profile = cli.profile.clone();
    let output = cli.output;
    let no_redraw = cli.no_redraw;
    match cli.command {
        Command::Submit(args) => submit(&api, args, output).await,
        Command::Jobs(args) => jobs(&api, args.command(), output).await,
        Command::Run(args) => start_run(&api, args, output, no_redraw).await,
        Command::Runs(RunsCommand::Report { run_id, log_lines }) => report(&api, &sdk, &run_id, log_lines).await,
        Command::Runs(command) => runs(&api, command, output, no_redraw).await,
        Command::Logs(args) => logs(&api, &sdk, args, output).await,
        Command::Completions { .. } => Ok(0), // printed above, before any API is looked for
        Command::Status => {
            show(output, &api.get("/status").await?, render::status);
            Ok(0)
        }
    }
}

/// Prints an answer as the output format asks: the document, or the human rendering.
fn show(output: Output, document: &Value, human: fn(&Value) -> String) {
    match output {
        // One line: a command's documents are JSON Lines, also where it goes on (--wait, --watch).
        Output::Json => println!("{}", serde_json::to_string(document).unwrap_or_default()),
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
    if args.exact_size {
        body["exactSize"] = json!(true);
    }
    let submitted = api.change("POST", "/jobs", Some(&body)).await?;
    show(output, &submitted, |s| {
        let again = if s["duplicate"] == true { " (already submitted: the same job)" } else { "" };
        let mut said =
            format!("submitted job {} ({}){again}\n", render::text(&s["jobId"]), render::text(&s["jobName"]));
        if s["sizeAdjusted"] == true {
            said.push_str(&format!(
                "size adjusted to {}, the nearest valid Fargate size (--exact-size refuses instead)\n",
                render::size(&s["size"])
            ));
        }
        said
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
async fn start_run(api: &Api, args: RunArgs, output: Output, no_redraw: bool) -> Result<i32, Failure> {
    let body = json!({"parameters": pairs(&args.params)?, "environment": pairs(&args.env)?});
    let started = api.change("POST", &format!("/pipelines/{}/runs", encode(&args.pipeline)), Some(&body)).await?;
    show(output, &started, |s| {
        format!("started run {} of {}\n", render::text(&s["runId"]), render::text(&s["pipeline"]))
    });
    if !args.watch {
        return Ok(0);
    }
    watch(api, &render::text(&started["runId"]), output, no_redraw).await
}

/// `batchline runs report`: the page on stdout. A failing attempt's log that cannot be read
/// does not stop the report: the page says why instead.
async fn report(api: &Api, sdk: &aws_config::SdkConfig, run_id: &str, log_lines: u32) -> Result<i32, Failure> {
    let view = api.get(&format!("/runs/{}", encode(run_id))).await?;
    let tail = match report::failing_job(&view).filter(|_| log_lines > 0 && view["status"] == "FAILED") {
        Some(job_id) => Some(follow::last_log_lines(api, sdk, &job_id, log_lines).await),
        None => None,
    };
    print!("{}", report::page(&view, tail.as_ref()));
    Ok(0)
}

/// `batchline runs list|show|watch|cancel|redrive`.
async fn runs(api: &Api, command: RunsCommand, output: Output, no_redraw: bool) -> Result<i32, Failure> {
    match command {
        RunsCommand::List { pipeline, limit } => {
            let mut path = format!("/runs?limit={limit}");
            if let Some(pipeline) = pipeline {
                path.push_str(&format!("&pipeline={}", encode(&pipeline)));
            }
            show(output, &api.get(&path).await?, render::runs);
        }
        RunsCommand::Show { run_id } => {
            show(output, &api.get(&format!("/runs/{}", encode(&run_id))).await?, render::run_in_full);
        }
        RunsCommand::Watch { run_id } => return watch(api, &run_id, output, no_redraw).await,
        RunsCommand::Report { .. } => unreachable!("answered by report(), which reads logs too"),
        RunsCommand::Cancel { run_id } => {
            let answer = api.change("DELETE", &format!("/runs/{}", encode(&run_id)), None).await?;
            show(output, &answer, |a| {
                let stopped = a["terminatedJobs"].as_array().map(Vec::len).unwrap_or_default();
                format!("run {} {}; {stopped} job(s) stopped\n", render::text(&a["runId"]), render::text(&a["status"]))
            });
        }
        RunsCommand::Redrive { run_id, sizes, watch: and_watch } => {
            let body = (!sizes.is_empty()).then(|| stage_sizes(&sizes)).transpose()?.map(|s| json!({"sizes": s}));
            let answer = api.change("POST", &format!("/runs/{}/redrive", encode(&run_id)), body.as_ref()).await?;
            show(output, &answer, |a| {
                let stages: Vec<String> = render::items(&a["stages"]).iter().map(render::text).collect();
                let (run, generation) = (render::text(&a["runId"]), render::text(&a["redrive"]));
                format!("run {run} redriven (generation {generation}): {}\n", stages.join(", "))
            });
            if and_watch {
                return watch(api, &run_id, output, no_redraw).await;
            }
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
            _ => Err(Failure::usage(format!("{item:?}: write KEY=VALUE"))),
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
                _ => Err(Failure::usage(format!("--size {item:?}: write STAGE=VCPU/MEMORY, e.g. each=2/4096"))),
            }
        })
        .collect()
}

/// A path segment or query value, percent-encoded.
pub(crate) fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// The exit status for how a run or job ended (see [`EXIT_STATUS_HELP`]).
pub fn exit_status(status: &str) -> Option<i32> {
    match status {
        "SUCCEEDED" => Some(0),
        "FAILED" => Some(3),
        "CANCELLED" => Some(4),
        _ => None,
    }
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
        assert_eq!(["SUCCEEDED", "FAILED", "CANCELLED", "RUNNING"].map(exit_status), [Some(0), Some(3), Some(4), None]);
        assert_eq!(encode("a b/c"), "a%20b%2Fc");
    }
}
