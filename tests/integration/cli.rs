//! The `batchline` command line, run as a process against a served local stack: the API in front of the real submit binary, Batch played into the real job-events binary.

use std::time::Duration;

use batchline_testkit::emulator::{repo_root, unique_name, REGION};
use serde_json::{json, Value};

use crate::common::{batchline_command, Served};

fn properties() -> Value {
    json!({
        "JobQueues": {"default": {}, "side": {}},
        "JobDefinitions": {"default": {}, "elsewhere": {"Queue": "side"},
                           "daily": {"Command": ["echo", "Ref::day", "Ref::region"]}},
        "Pipelines": {
            "orders": {"Stages": {"extract": {"JobDefinition": "default"},
                                  "load": {"JobDefinition": "default", "After": "extract"}}},
            "broken": {"Stages": {"extract": {"JobDefinition": "default", "Parameters": {"play": "exit:3"}}}},
            "diamond": {"Stages": {"a": {"JobDefinition": "default"},
                                   "b": {"JobDefinition": "default", "After": "a"},
                                   "c": {"JobDefinition": "default", "After": "a"},
                                   "d": {"JobDefinition": "default", "After": "b,c"}}},
            // Its queue is not played here: its run stays RUNNING until cancelled.
            "parked": {"Stages": {"only": {"JobDefinition": "elsewhere"}}}
        }
    })
}

#[tokio::test]
async fn the_command_line_submits_waits_for_shows_and_reads_the_log_of_a_job() {
    let served = Served::new("cli-jobs", properties()).await;
    // WHEN a job is submitted and waited for, THEN the wait shows it go by and ends 0
    let (status, stdout, stderr) = served.cli(&["submit", "default", "--param", "day=2026-11-30", "--wait"]).await;
    assert_eq!(status, 0, "{stdout}{stderr}");
    let job_id = stdout.split_whitespace().nth(2).unwrap().to_owned();
    assert!(stdout.starts_with(&format!("submitted job {job_id} (")), "{stdout}");
    assert!(stdout.contains(&format!("job {job_id}: SUCCEEDED")), "{stdout}");
    // AND it shows with its cost, in a table and as JSON
    let (_, shown, _) = served.cli(&["jobs", "show", &job_id]).await;
    assert!(shown.contains("status      SUCCEEDED") && shown.contains("cost        $0.0002"), "{shown}");
    let view = served.json(&["jobs", "show", &job_id]).await;
    assert_eq!((view["status"].as_str(), view["parameters"]["day"].as_str()), (Some("SUCCEEDED"), Some("2026-11-30")));
    // AND its log reads from CloudWatch Logs
    let (status, log, stderr) = served.cli(&["logs", &job_id]).await;
    assert_eq!(status, 0, "{stderr}");
    assert!(log.contains(&format!("batchline job {job_id}")) && log.contains("attempt 1 exited with code 0"), "{log}");
    // AND a job that fails ends its wait non-zero
    let (status, stdout, _) = served.cli(&["submit", "--param", "play=exit:3", "--wait"]).await;
    assert_eq!(status, 3, "{stdout}");
    assert!(stdout.contains(": FAILED"), "{stdout}");
    // AND jobs list shows both, newest first
    let listed = served.json(&["jobs", "list"]).await;
    assert_eq!(listed["jobs"].as_array().unwrap().len(), 2, "{listed}");
    assert_eq!(listed["jobs"][1]["jobId"], json!(job_id));
    // AND a bad request is one clear line and a non-zero exit
    let (status, stdout, stderr) = served.cli(&["submit", "--vcpu", "3", "--memory", "1"]).await;
    assert_eq!(status, 1, "{stdout}");
    assert!(stderr.starts_with("error: HTTP 400 BadRequest: "), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    let (status, _, stderr) = served.cli(&["jobs", "show", "no-such-job"]).await;
    assert_eq!((status, stderr.trim()), (1, "error: HTTP 404 NotFound: no job no-such-job"));
}

#[tokio::test]
async fn the_command_line_starts_watches_lists_cancels_and_summarises_runs() {
    let served = Served::new("cli-runs", properties()).await;
    // WHEN a run is started and watched, THEN it ends SUCCEEDED with exit 0, stages in DAG order
    let (status, stdout, stderr) = served.cli(&["run", "orders", "--param", "day=2026-11-30", "--watch"]).await;
    assert_eq!(status, 0, "{stdout}{stderr}");
    let run_id = stdout.split_whitespace().nth(2).unwrap().to_owned();
    let last = stdout.rsplit("run ").next().unwrap();
    assert!(last.starts_with(&format!("{run_id} (orders): SUCCEEDED")), "{stdout}");
    let extract = last.find("\nextract ").expect("extract first");
    let load = last.find("\n└ load ").expect("load under it");
    assert!(extract < load, "{last}");
    // AND one that fails ends its watch with 3
    let (status, stdout, _) = served.cli(&["run", "broken", "--watch"]).await;
    assert_eq!(status, 3, "{stdout}");
    let broken = stdout.split_whitespace().nth(2).unwrap().to_owned();
    // AND a run still running is cancelled
    let started = served.json(&["run", "parked"]).await;
    let parked = started["runId"].as_str().unwrap().to_owned();
    let (status, stdout, stderr) = served.cli(&["runs", "cancel", &parked]).await;
    assert_eq!(status, 0, "{stderr}");
    assert_eq!(stdout.trim(), format!("run {parked} CANCELLED; 1 job(s) stopped"));
    let (status, _, _) = served.cli(&["runs", "watch", &parked]).await;
    assert_eq!(status, 4, "a cancelled run's watch ends with 4");
    // AND runs list shows all three, newest first; one pipeline's on asking
    let listed = served.json(&["runs", "list"]).await;
    let ids: Vec<&str> = listed["runs"].as_array().unwrap().iter().map(|r| r["runId"].as_str().unwrap()).collect();
    assert_eq!(ids, [parked.as_str(), broken.as_str(), run_id.as_str()], "{listed}");
    let (_, table, _) = served.cli(&["runs", "list", "--pipeline", "orders"]).await;
    assert_eq!(table.lines().count(), 2, "{table}");
    assert!(table.starts_with("RUN ") && table.contains(&run_id), "{table}");
    // AND a failed run is redriven at the size asked for its stage (it fails again: its
    // stage's exit is its parameters'); a size written wrong is refused before any request
    let (status, _, stderr) = served.cli(&["runs", "redrive", &broken, "--size", "extract=1"]).await;
    assert_eq!((status, stderr.trim()), (2, "error: --size \"extract=1\": write STAGE=VCPU/MEMORY, e.g. each=2/4096"));
    let (status, stdout, stderr) = served.cli(&["runs", "redrive", &broken, "--size", "extract=1/4096"]).await;
    assert_eq!(status, 0, "{stderr}");
    assert_eq!(stdout.trim(), format!("run {broken} redriven (generation 1): extract"));
    let shown = served.json(&["runs", "show", &broken]).await;
    assert_eq!(shown["stages"]["extract"]["attempts"][1]["size"], json!({"vcpu": "1", "memoryMib": 4096}), "{shown}");
    // AND status summarises the stack's queues and its latest failures
    let summary = served.json(&["status"]).await;
    assert_eq!(summary["stack"], json!(served.env.stack.name_prefix));
    assert_eq!(summary["queues"].as_array().unwrap().len(), 2, "{summary}");
    let (_, shown, _) = served.cli(&["status"]).await;
    assert!(shown.contains("recent failures:"), "{shown}");
}

#[tokio::test]
async fn the_command_line_finds_the_api_from_its_stack_and_follows_a_log_until_the_job_ends() {
    let served = Served::new("cli-follow", properties()).await;
    // GIVEN a CloudFormation stack whose ApiUrl output names the API (as Batchline's template's does)
    let cloudformation = aws_sdk_cloudformation::Client::new(&served.env.sdk);
    let stack = unique_name("cli-stack");
    let template = json!({
        "Resources": {"Queue": {"Type": "AWS::SQS::Queue", "Properties": {"QueueName": format!("{stack}-q")}}},
        "Outputs": {"ApiUrl": {"Value": served.stack.api.url}}
    });
    cloudformation.create_stack().stack_name(&stack).template_body(template.to_string()).send().await.unwrap();
    // WHEN a job is submitted with only --stack to find the API
    let (status, stdout, stderr) = served.cli_told(&["--stack", &stack, "submit"], None).await;
    assert_eq!(status, 0, "{stdout}{stderr}");
    let job_id = stdout.split_whitespace().nth(2).unwrap().to_owned();
    // AND its log is followed at once, while it still waits to run
    let (status, log, stderr) = served.cli(&["logs", "--follow", &job_id]).await;
    // THEN the follow lasts until the job ended and prints its whole log
    assert_eq!(status, 0, "{stderr}");
    assert!(log.contains("attempt 1 started") && log.contains("attempt 1 exited with code 0"), "{log}");
    // AND without any way to find the API, it says how to give one
    let (status, _, stderr) = served.cli_told(&["status"], None).await;
    assert_eq!(status, 1);
    assert!(stderr.contains("give --endpoint-url URL, --stack NAME or set BATCHLINE_API_URL"), "{stderr}");
    let (status, _, stderr) = served.cli_told(&["--stack", "no-such-stack", "status"], None).await;
    assert_eq!(status, 1);
    assert!(stderr.starts_with("error: stack no-such-stack: "), "{stderr}");
}

#[tokio::test]
async fn the_command_line_says_an_adjusted_size_refuses_it_when_exact_and_names_a_missing_parameter() {
    let served = Served::new("cli-sizes", properties()).await;
    // WHEN 3 vCPU alone is asked for, THEN the job runs at the nearest valid size, and says so
    let (status, stdout, stderr) = served.cli(&["submit", "--vcpu", "3"]).await;
    assert_eq!(status, 0, "{stderr}");
    assert!(stdout.contains("size adjusted to 4 vCPU / 8192 MiB, the nearest valid Fargate size"), "{stdout}");
    // AND with --exact-size it is refused, exit 1, one line naming the nearest
    let (status, _, stderr) = served.cli(&["submit", "--vcpu", "3", "--exact-size"]).await;
    assert_eq!(status, 1, "{stderr}");
    assert!(stderr.contains("not a valid Fargate size as given; the nearest is 4 vCPU / 8192 MiB"), "{stderr}");
    // AND a job whose command names a parameter nobody gives is refused naming it
    let (status, _, stderr) = served.cli(&["submit", "daily", "--param", "day=2026-12-07"]).await;
    assert_eq!(status, 1, "{stderr}");
    assert!(stderr.contains("names Ref::region, which neither"), "{stderr}");
    let (status, _, stderr) =
        served.cli(&["submit", "daily", "--param", "day=2026-12-07", "--param", "region=eu"]).await;
    assert_eq!(status, 0, "{stderr}");
}

#[tokio::test]
async fn a_failed_run_shows_its_attempts_and_its_stage_log_and_a_watch_streams_json_lines() {
    let served = Served::new("cli-cause", properties()).await;
    // GIVEN a run that failed
    let (status, stdout, _) = served.cli(&["run", "broken", "--watch", "--no-redraw"]).await;
    assert_eq!(status, 3, "{stdout}");
    let run_id = stdout.split_whitespace().nth(2).unwrap().to_owned();
    // WHEN it is shown, THEN each attempt is listed with its job, exit code and reason
    let (_, shown, _) = served.cli(&["runs", "show", &run_id]).await;
    let view = served.json(&["runs", "show", &run_id]).await;
    let job_id = view["stages"]["extract"]["attempts"][0]["jobId"].as_str().unwrap().to_owned();
    let row =
        shown.lines().find(|l| l.starts_with("extract") && l.contains(&job_id)).unwrap_or_else(|| panic!("{shown}"));
    assert!(row.contains("FAILED") && row.contains(" 3 "), "{row}");
    // AND its log is read by run and stage
    let (status, log, stderr) = served.cli(&["logs", &run_id, "extract"]).await;
    assert_eq!(status, 0, "{stderr}");
    assert!(log.contains(&format!("batchline job {job_id}")) && log.contains("exited with code 3"), "{log}");
    let (status, _, stderr) = served.cli(&["logs", &run_id, "nope"]).await;
    assert_eq!(status, 1);
    assert!(stderr.contains("has no stage \"nope\": its stages are extract"), "{stderr}");
    // AND --output json of a watch is JSON Lines: every line parses, the last says the end
    let (status, stdout, _) = served.cli(&["--output", "json", "run", "diamond", "--watch"]).await;
    assert_eq!(status, 0, "{stdout}");
    let lines: Vec<Value> =
        stdout.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
    assert!(lines.len() >= 2, "the start, then the run's views: {stdout}");
    assert!(lines[0]["runId"].is_string());
    assert_eq!(lines.last().unwrap()["status"], "SUCCEEDED", "{stdout}");
    // AND redriving names the stages in DAG order
    let redriven = served.json(&["runs", "redrive", &run_id]).await;
    assert_eq!(redriven["stages"], json!(["extract"]));
}

/// Runs `batchline ARGS` in a tmux pane (a terminal of 120 × 40), waiting for it to end:
/// the pane's text as shown at the end, and every byte written to it.
fn in_a_terminal(served: &Served, args: &[&str]) -> (String, String) {
    let session = unique_name("cli-tty");
    let binary = batchline_demo::binary("batchline").unwrap();
    let raw = repo_root().join("target").join(format!("{session}.raw"));
    let command = format!(
        // A second to let the pane's output be piped to a file before anything is written.
        "sleep 1; BATCHLINE_API_URL={} AWS_REGION={REGION} AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing {} {}; echo EXIT=$?; sleep 30",
        served.stack.api.url,
        binary.display(),
        args.join(" ")
    );
    let tmux = |tmux_args: &[&str]| std::process::Command::new("tmux").args(tmux_args).output().expect("tmux runs");
    let started = tmux(&["new-session", "-d", "-s", &session, "-x", "120", "-y", "40", &command]);
    assert!(started.status.success(), "{}", String::from_utf8_lossy(&started.stderr));
    tmux(&["pipe-pane", "-t", &session, "-o", &format!("cat >> {}", raw.display())]);
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let pane = tmux(&["capture-pane", "-p", "-t", &session]);
        let text = String::from_utf8_lossy(&pane.stdout).into_owned();
        if text.contains("EXIT=") || std::time::Instant::now() > deadline {
            tmux(&["kill-session", "-t", &session]);
            let written = std::fs::read(&raw).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
            return (text, written);
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_on_a_terminal_redraws_its_block_in_place_with_a_fan_in_tree() {
    let served = Served::new("cli-tty", properties()).await;
    // WHEN the diamond a → (b, c) → d is watched in a terminal
    let (pane, written) = tokio::task::block_in_place(|| in_a_terminal(&served, &["run", "diamond", "--watch"]));
    // THEN frames were drawn over the last one in place (cursor up to its first line, cleared
    // below), and the pane shows one block: the final frame
    assert!(pane.contains("EXIT=0"), "{pane}");
    // ESC [ n F (to the start of the line n lines up), then ESC [ J (clear to the end).
    let redrawn = written.match_indices("F\x1b[J").any(|(at, _)| {
        let before = &written[..at];
        let digits = before.len() - before.trim_end_matches(|c: char| c.is_ascii_digit()).len();
        digits > 0 && before[..before.len() - digits].ends_with("\x1b[")
    });
    assert!(redrawn && written.contains("watching every"), "{written:?}");
    assert_eq!(pane.matches("STAGE ").count(), 1, "one frame left on the screen: {pane}");
    assert!(!pane.contains("watching every"), "the final frame has no watching line: {pane}");
    // AND the tree draws the fan-out as siblings and the fan-in under its last upstream
    let rows: Vec<&str> = pane.lines().filter_map(|l| l.split_whitespace().next().map(|_| l)).collect();
    let label = |start: &str| rows.iter().find(|l| l.trim_start().starts_with(start)).map(|l| l.to_owned());
    assert!(label("├ b").is_some() && label("└ c").is_some(), "{pane}");
    assert!(pane.contains("  └ d (after b, c)"), "{pane}");
}

#[tokio::test]
async fn ctrl_c_ends_a_watch_with_130_and_says_how_to_watch_again() {
    let served = Served::new("cli-interrupt", properties()).await;
    // GIVEN a run that stays RUNNING (its queue is not played), watched
    let started = served.json(&["run", "parked"]).await;
    let run_id = started["runId"].as_str().unwrap().to_owned();
    let watching = batchline_command(Some(&served.stack.api.url))
        .args(["runs", "watch", &run_id])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    // WHEN it is interrupted (Ctrl-C: SIGINT)
    let pid = watching.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    let output = tokio::time::timeout(Duration::from_secs(20), watching.wait_with_output()).await.unwrap().unwrap();
    // THEN it ends 130, its last line saying the run goes on and how to watch it again
    assert_eq!(output.status.code(), Some(130), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        stderr.trim().lines().last(),
        Some(format!("interrupted: it goes on; to watch it again: batchline runs watch {run_id}").as_str()),
        "{stderr}"
    );
    let (status, _, _) = served.cli(&["runs", "cancel", &run_id]).await;
    assert_eq!(status, 0);
}
