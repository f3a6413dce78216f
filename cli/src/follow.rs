//! What goes on after a command asked: a run watched to its end, a job waited for, a log printed or followed — and the last line when Ctrl-C ends any of them.

use std::io::IsTerminal;
use std::time::Duration;

use serde_json::{json, Value};

use crate::client::{self, Api, Failure};
use crate::render::{self, text};
use crate::{encode, exit_status, LogsArgs, Output};

/// How often `watch`, `--wait` and `--follow` poll.
const POLL: Duration = Duration::from_secs(2);

/// How to pick up again what is being watched, waited for or followed, for the last line
/// of an interrupted command (`None`: nothing is).
static RESUME: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

pub(crate) fn resume_with(command: String) {
    if let Ok(mut resume) = RESUME.lock() {
        *resume = Some(command);
    }
}

/// The last line of a command interrupted by Ctrl-C: what goes on, and how to watch it again.
pub fn interrupted() -> String {
    match RESUME.lock().ok().and_then(|r| r.clone()) {
        Some(command) => format!("interrupted: it goes on; to watch it again: {command}"),
        None => "interrupted".to_owned(),
    }
}

/// Polls the run's record until the run has ended. On a terminal (table output, unless
/// `--no-redraw`) its block is redrawn in place, with a line saying it is being watched
/// until the last frame; otherwise each changed rendering is appended, and with `--output
/// json` each changed view is one JSON line.
pub(crate) async fn watch(api: &Api, run_id: &str, output: Output, no_redraw: bool) -> Result<i32, Failure> {
    resume_with(format!("batchline runs watch {run_id}"));
    let path = format!("/runs/{}", encode(run_id));
    let redraw = output == Output::Table && !no_redraw && std::io::stdout().is_terminal();
    let mut last = String::new();
    let mut drawn = 0;
    loop {
        let view = api.get(&path).await?;
        let ended = exit_status(view["status"].as_str().unwrap_or_default());
        let shown = match output {
            Output::Json => serde_json::to_string(&view).unwrap_or_default() + "\n",
            Output::Table => render::run(&view),
        };
        if redraw {
            let footer = match ended {
                None => format!("watching every {}s (Ctrl-C stops watching, not the run)\n", POLL.as_secs()),
                Some(_) => String::new(),
            };
            let frame = format!("{shown}{footer}");
            // Back to the first line of the last frame, that frame cleared, this one drawn.
            let up = if drawn > 0 { format!("\x1b[{drawn}F\x1b[J") } else { String::new() };
            print!("{up}{frame}");
            drawn = frame.lines().count();
        } else if shown != last {
            print!("{shown}");
        }
        let _ = std::io::Write::flush(&mut std::io::stdout());
        last = shown;
        if let Some(status) = ended {
            return Ok(status);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Polls a job until it ends, saying each status it reaches (with `--output json`, the
/// job's view as one JSON line at each change).
pub(crate) async fn wait_for_job(api: &Api, job_id: &str, output: Output) -> Result<i32, Failure> {
    resume_with(format!("batchline jobs show {job_id} (or batchline logs {job_id} --follow)"));
    let path = format!("/jobs/{}", encode(job_id));
    let mut last = String::new();
    loop {
        let view = api.get(&path).await?;
        let status = render::text(&view["status"]);
        if status != last {
            match output {
                Output::Table => println!("job {job_id}: {status}"),
                Output::Json => println!("{}", serde_json::to_string(&view).unwrap_or_default()),
            }
        }
        if let Some(code) = exit_status(&status) {
            return Ok(code);
        }
        last = status;
        tokio::time::sleep(POLL).await;
    }
}

/// `batchline logs`: the job named, or the job of a run's stage (its attempt, or a map
/// child's), its log printed from CloudWatch Logs.
pub(crate) async fn logs(
    api: &Api,
    sdk: &aws_config::SdkConfig,
    args: LogsArgs,
    output: Output,
) -> Result<i32, Failure> {
    let job_id = match args.target.as_slice() {
        [job_id] => job_id.clone(),
        [run_id, stage] => stage_job(api, run_id, stage, args.attempt, args.index).await?,
        _ => return Err(Failure::new("give a job's id, or a run's id and one of its stages")),
    };
    if args.follow {
        resume_with(format!("batchline logs {job_id} --follow"));
    }
    print_logs(api, sdk, &job_id, args.follow, output).await
}

/// The job of `stage` of run `run_id`: its attempt `attempt` (default the last), or for a
/// map stage the child at `index` (`<array job id>:<index in its array>`).
async fn stage_job(
    api: &Api,
    run_id: &str,
    stage: &str,
    attempt: Option<u32>,
    index: Option<u64>,
) -> Result<String, Failure> {
    let view = api.get(&format!("/runs/{}", encode(run_id))).await?;
    let found = if stage == "on-failure" { &view["onFailure"] } else { &view["stages"][stage] };
    if found.is_null() {
        let mut names: Vec<String> = view["stages"]
            .as_object()
            .map(|s| render::dag_order(s).into_iter().map(|(n, _)| n).collect())
            .unwrap_or_default();
        if !view["onFailure"].is_null() {
            names.push("on-failure".to_owned());
        }
        return Err(Failure::new(format!("run {run_id} has no stage {stage:?}: its stages are {}", names.join(", "))));
    }
    let map = &found["map"];
    if map.is_object() && attempt.is_some() {
        return Err(Failure::new(format!(
            "{stage} is a map stage: its children's logs are read with --index N, not --attempt"
        )));
    }
    if !map.is_object() && index.is_some() {
        return Err(Failure::new(format!("{stage} is not a map stage: --index names a map's child; use --attempt N")));
    }
    if map.is_object() {
        return map_child_job(run_id, stage, map, index);
    }
    let attempts = render::items(&found["attempts"]);
    let chosen = match attempt {
        Some(n) => attempts.iter().find(|a| a["number"].as_u64() == Some(u64::from(n))),
        None => attempts.last(),
    };
    let Some(chosen) = chosen else {
        let which = attempt.map_or("any attempt".to_owned(), |n| format!("attempt {n}"));
        return Err(Failure::new(format!("{stage} of run {run_id} has no {which} yet ({} so far)", attempts.len())));
    };
    chosen["jobId"].as_str().map(str::to_owned).ok_or_else(|| {
        Failure::new(format!(
            "attempt {} of {stage} has no job yet (it is {})",
            text(&chosen["number"]),
            text(&chosen["status"])
        ))
    })
}

/// The job of child `index` of a map stage (`map`: its view): its array's job
/// (`<array job id>:<index in the array>`, or the job itself for an array of one).
fn map_child_job(run_id: &str, stage: &str, map: &Value, index: Option<u64>) -> Result<String, Failure> {
    if map["redriveOf"].is_object() {
        return Err(Failure::new(format!(
            "{stage}'s current attempt is a redrive of some of its children, numbered anew: `batchline runs show {run_id}` lists its array jobs; read one with `batchline logs JOB_ID`"
        )));
    }
    let Some(index) = index else {
        let children = text(&map["children"]);
        return Err(Failure::new(format!(
            "{stage} is a map stage of {children} children: name one with --index N (0 to {children} - 1)"
        )));
    };
    // The arrays that run the map's children in its own numbering (a resubmission's
    // children are numbered anew: `runs show` lists them).
    let arrays = render::items(&map["arrayJobs"]);
    let holding = arrays.iter().filter(|a| a["resubmission"] != true).find(|a| {
        let first = a["first"].as_u64().unwrap_or(0);
        (first..first + a["size"].as_u64().unwrap_or(0)).contains(&index)
    });
    let Some(array) = holding else {
        return Err(Failure::new(format!("{stage} has no child {index} (its children: {})", text(&map["children"]))));
    };
    let Some(parent) = array["jobId"].as_str() else {
        return Err(Failure::new(format!("child {index} of {stage} has not been submitted yet")));
    };
    let first = array["first"].as_u64().unwrap_or(0);
    // An array of one child is a plain job.
    Ok(if array["size"].as_u64() == Some(1) { parent.to_owned() } else { format!("{parent}:{}", index - first) })
}

/// Prints every attempt's log stream of the job, from CloudWatch Logs (with `--output
/// json`, each event as one JSON line: `{stream, timestamp, message}`); with `follow`, goes
/// on until the job has ended and its log is read to the end.
async fn print_logs(
    api: &Api,
    sdk: &aws_config::SdkConfig,
    job_id: &str,
    follow: bool,
    output: Output,
) -> Result<i32, Failure> {
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
                    Err(err) => return Err(Failure::new(client::logs_error(&group, stream, &err))),
                };
                for event in page.events() {
                    let message = event.message().unwrap_or_default().trim_end();
                    match output {
                        Output::Table => println!("{message}"),
                        Output::Json => println!(
                            "{}",
                            json!({"stream": stream, "timestamp": event.timestamp(), "message": message})
                        ),
                    }
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

/// The last `count` lines of the job's log (its last attempt's stream), oldest first; an
/// error says why they could not be read.
pub(crate) async fn last_log_lines(
    api: &Api,
    sdk: &aws_config::SdkConfig,
    job_id: &str,
    count: u32,
) -> Result<Vec<String>, String> {
    let view = api.get(&format!("/jobs/{}", encode(job_id))).await.map_err(|f| f.to_string())?;
    let group = render::text(&view["logGroup"]);
    let Some(stream) = render::items(&view["logStreams"]).iter().filter_map(Value::as_str).next_back() else {
        return Ok(vec![]);
    };
    let logs = aws_sdk_cloudwatchlogs::Client::new(sdk);
    let limit = i32::try_from(count).unwrap_or(i32::MAX);
    let page = logs.get_log_events().log_group_name(&group).log_stream_name(stream).start_from_head(false).limit(limit);
    match page.send().await {
        Ok(page) => Ok(page.events().iter().map(|e| e.message().unwrap_or_default().trim_end().to_owned()).collect()),
        Err(err) if is_not_found(&err) => Ok(vec![]),
        Err(err) => Err(client::logs_error(&group, stream, &err)),
    }
}

fn is_not_found<E: aws_sdk_cloudwatchlogs::error::ProvideErrorMetadata>(
    err: &aws_sdk_cloudwatchlogs::error::SdkError<E>,
) -> bool {
    err.as_service_error().and_then(|e| e.code()) == Some("ResourceNotFoundException")
}
