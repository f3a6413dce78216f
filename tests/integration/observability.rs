//! Following one run across everything: every function's JSON log lines (cold and warm, with the run's fields), the template's saved Logs Insights queries run against those lines, and the run report loaded in headless Chromium.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use batchline_testkit::emulator::{repo_root, sdk_config, unique_name};
use batchline_testkit::local_lambda::Outcome;
use batchline_testkit::player::event_id;
use batchline_testkit::response_server::ResponseServer;
use serde_json::{json, Value};

use crate::common::Served;

fn properties() -> Value {
    json!({
        "JobQueues": {"default": {}},
        // Batch retries an exit 3 of this one once, by its retry strategy.
        "JobDefinitions": {"default": {}, "flaky": {"RetryAttempts": "2", "RetryOn": [{"ExitCode": "3", "Action": "Retry"}]}},
        "Pipelines": {
            // The middle stage needs 1 GiB: its first attempt (0.25 vCPU / 512 MiB) runs out
            // of memory and is resized.
            "nightly": {"Stages": {"extract": {"JobDefinition": "default"},
                                   "transform": {"JobDefinition": "default", "After": "extract", "MaxResizes": "2",
                                                 "Parameters": {"play_needs_memory": "1024"}},
                                   "load": {"JobDefinition": "default", "After": "transform"}}},
            "broken": {"Stages": {"extract": {"JobDefinition": "default"},
                                  "load": {"JobDefinition": "flaky", "After": "extract", "Parameters": {"play": "exit:3"}}}},
            "mapped": {"Stages": {"each": {"JobDefinition": "default", "Map": {"Items": "files", "ToleratedFailures": "1"},
                                           "Parameters": {"play_children": "1=exit:2"}},
                                  "report": {"JobDefinition": "default", "After": "each"}}}
        }
    })
}

/// Starts a run through the command line and watches it to its end; its id and exit status.
async fn run(served: &Served, pipeline: &str, params: &[&str]) -> (String, i32) {
    let mut args = vec!["run", pipeline];
    for param in params {
        args.extend(["--param", param]);
    }
    let started = served.json(&args).await;
    let run_id = started["runId"].as_str().unwrap().to_owned();
    let (status, _, stderr) = served.cli(&["--no-redraw", "runs", "watch", &run_id]).await;
    assert!(status == 0 || status == 3, "{pipeline}: {stderr}");
    (run_id, status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_run_is_followed_by_its_log_fields_the_saved_queries_and_its_report_in_a_browser() {
    let test = "observability";
    let _ = std::fs::remove_dir_all(Served::log_dir(test));
    // (A map stage's item lists and results go to the input bucket.)
    let bucket = unique_name("observability-in").to_lowercase();
    batchline_map::s3_client(&sdk_config().await).create_bucket().bucket(&bucket).send().await.unwrap();
    let mut properties = properties();
    properties["Roles"] = json!({"InputBucket": bucket});
    let served = Served::new(test, properties).await;
    // GIVEN a three-stage run with an out-of-memory resize, a failed run and a map with a failed child
    let (nightly, status) = run(&served, "nightly", &[]).await;
    assert_eq!(status, 0, "nightly succeeds after its resize");
    let (broken, status) = run(&served, "broken", &[]).await;
    assert_eq!(status, 3, "broken fails");
    let (mapped, _) = run(&served, "mapped", &[r#"files=["a","b","c"]"#]).await;
    // AND bootstrap, which the served stack does not run, invoked cold and warm
    bootstrap_twice(&served, test).await;

    // THEN each run's report loads in Chromium with no console error and no request, showing what it must
    let nightly_page = report_in_browser(&served, "nightly", &nightly).await;
    let rows = nightly_page["elements"]["tr[data-attempt]"].as_array().unwrap().clone();
    let row = |label: &str| rows.iter().find(|r| r["attributes"]["data-attempt"] == label).cloned();
    assert_eq!(rows.len(), 4, "{rows:?}");
    let oom = row("transform #1").expect("transform's first attempt");
    assert_eq!(oom["attributes"]["data-oom"], "true");
    assert!(oom["text"].as_str().unwrap().contains("OOM"), "{oom}");
    assert_eq!(row("transform #2").unwrap()["attributes"]["data-oom"], "false");
    let stages = nightly_page["elements"]["#dag .stage"].as_array().unwrap();
    assert_eq!(stages.len(), 3);
    assert!(stages.iter().all(|s| s["attributes"]["data-status"] == "SUCCEEDED" && s["height"].as_f64() > Some(20.0)));
    let chart = &nightly_page["elements"]["#timeline svg"][0];
    assert!(chart["height"].as_f64() > Some(150.0) && chart["width"].as_f64() > Some(500.0), "{chart}");
    let labels = texts(&nightly_page, "#timeline svg text");
    assert!(labels.iter().any(|l| l.starts_with("transform #2")) && labels.contains(&"OOM"), "{labels:?}");
    assert!(nightly_page["elements"]["#total-cost"][0]["text"].as_str().unwrap().starts_with('$'));
    assert!(nightly_page["title"].as_str().unwrap().contains(&nightly));

    let broken_page = report_in_browser(&served, "broken", &broken).await;
    let failure = &broken_page["elements"]["#failure"][0]["attributes"];
    assert_eq!((failure["data-stage"].as_str(), failure["data-exit-code"].as_str()), (Some("load"), Some("3")));
    let log = broken_page["elements"]["#failure pre.log"][0]["text"].as_str().unwrap_or_default();
    assert!(log.contains("exited with code 3"), "the failing attempt's last log lines: {log:?}");
    assert_eq!(broken_page["elements"]["h1 .status"][0]["attributes"]["data-status"], "FAILED");
    // AND Batch's own retry of the failing job is drawn and marked
    let load = &broken_page["elements"]["tr[data-attempt]"][1];
    assert_eq!(
        (load["attributes"]["data-attempt"].as_str(), load["attributes"]["data-batch-attempts"].as_str()),
        (Some("load #1"), Some("2")),
        "{load}"
    );
    let marks = texts(&broken_page, "#timeline svg text");
    assert!(marks.contains(&"retry"), "{marks:?}");

    let mapped_page = report_in_browser(&served, "mapped", &mapped).await;
    let failed_items = mapped_page["elements"]["#maps .failed-items tbody tr"].as_array().unwrap();
    assert_eq!(failed_items.len(), 1, "{failed_items:?}");
    assert!(failed_items[0]["text"].as_str().unwrap().contains("\"b\""), "{failed_items:?}");
    drop(served);

    // THEN every line of every function is one JSON object with Powertools' keys
    let lines = log_lines(&Served::log_dir(test));
    for service in ["batchline-submit", "batchline-job-events", "batchline-map", "batchline-bootstrap"] {
        let of: Vec<&Value> = lines.iter().filter(|l| l["service"] == service).collect();
        assert!(of.iter().any(|l| l["cold_start"] == true), "{service}: a cold line");
        assert!(of.iter().any(|l| l["cold_start"] == false), "{service}: a warm line");
        for line in of.iter().filter(|l| l.get("function_request_id").is_some()) {
            let trace = line["xray_trace_id"].as_str().unwrap_or_default();
            assert!(trace.starts_with("1-") && !trace.contains(';'), "{service}: the trace id on {line}");
        }
    }
    for line in &lines {
        let stamp = line["timestamp"].as_str().unwrap_or_default();
        assert!(stamp.len() == 24 && stamp.ends_with('Z') && stamp.as_bytes()[19] == b'.', "{line}");
        assert!(["INFO", "WARN", "ERROR", "DEBUG", "TRACE"].contains(&line["level"].as_str().unwrap_or_default()));
        assert!(line["message"].is_string() && line["cold_start"].is_boolean(), "{line}");
        // AND a line about a run names its pipeline; one about a stage, its run and attempt
        if line.get("run_id").is_some() {
            assert!(line["pipeline"].is_string(), "a run's line without its pipeline: {line}");
        }
        if line.get("stage").is_some() {
            assert!(line["run_id"].is_string(), "a stage's line without its run: {line}");
        }
    }
    let of_run = |run_id: &str, message: &str| -> Vec<&Value> {
        lines.iter().filter(|l| l["run_id"] == run_id && l["message"] == message).collect()
    };
    let submitted = of_run(&nightly, "stage submitted");
    assert_eq!(submitted.len(), 4, "extract, transform twice, load");
    for line in &submitted {
        for field in ["run_id", "pipeline", "stage", "attempt", "job_id", "function_request_id"] {
            assert!(line.get(field).is_some(), "{field} on {line}");
        }
    }
    let ended = of_run(&nightly, "stage attempt ended");
    assert_eq!(ended.len(), 4, "{ended:?}");
    assert!(ended.iter().all(|l| l["job_id"].is_string() && l["attempt"].is_u64() && l["run_ms"].is_u64()));
    let resized = of_run(&nightly, "stage resized after running out of memory");
    assert_eq!(resized.len(), 1);
    assert_eq!((resized[0]["stage"].as_str(), resized[0]["attempt"].as_u64()), (Some("transform"), Some(2)));
    assert!(of_run(&mapped, "map expanded").len() == 1, "the map worker's lines carry the run");

    // AND every saved query of the template finds these lines, and the fields it shows are on them
    for (name, (query, services)) in saved_queries() {
        let query = query.replace("RUN_ID", &nightly);
        // (Only the lines of the functions whose log groups the query reads.)
        let read: Vec<Value> =
            lines.iter().filter(|l| services.iter().any(|s| l["service"] == s.as_str())).cloned().collect();
        let found = logs_insights::matching(&query, &read);
        assert!(!found.is_empty(), "{name}: no line matches\n{query}");
        for field in logs_insights::shown_fields(&query) {
            assert!(found.iter().any(|l| l.get(&field).is_some()), "{name}: no matching line has {field}");
        }
        for field in logs_insights::grouped_fields(&query) {
            assert!(found.iter().all(|l| l.get(&field).is_some()), "{name}: a matching line lacks {field}");
        }
    }
}

/// Every function log line the served stack and bootstrap wrote, as JSON; a line that is
/// not a JSON object fails the test.
fn log_lines(dir: &Path) -> Vec<Value> {
    let mut lines = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        for line in std::fs::read_to_string(&path).unwrap().lines().filter(|l| !l.trim().is_empty()) {
            let value: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{}: {e}: {line}", path.display()));
            assert!(value.is_object(), "{}: {line}", path.display());
            lines.push(value);
        }
    }
    lines
}

/// Invokes bootstrap's binary twice (a Delete of a resource it never made: answered
/// SUCCESS, changing nothing), logging beside the served functions.
async fn bootstrap_twice(served: &Served, test: &str) {
    let launcher =
        batchline_demo::serve::Launcher::new(&served.env.settings.table_name, &Served::log_dir(test)).unwrap();
    let bootstrap = launcher.start("batchline-bootstrap", "batchline-bootstrap").await.unwrap();
    let server = ResponseServer::start(0).await.unwrap();
    for _ in 0..2 {
        let request = json!({
            "RequestType": "Delete", "ResponseURL": server.url, "StackId": "arn:aws:cloudformation:us-east-1:123456789012:stack/none/1",
            "RequestId": event_id(), "ResourceType": "Custom::BatchlineEnvironment", "LogicalResourceId": "Environment",
            "PhysicalResourceId": "batchline-never-made", "ResourceProperties": {"NamePrefix": "never-made"}
        });
        let answer = tokio::time::timeout(Duration::from_secs(120), bootstrap.invoke(&request)).await.unwrap().unwrap();
        assert!(matches!(answer, Outcome::Response(_)), "{answer:?}");
    }
}

/// The template's saved queries: by logical id, the query string and the services (the
/// functions' binaries) whose log groups it reads.
fn saved_queries() -> BTreeMap<String, (String, Vec<String>)> {
    let template: serde_yaml::Value = serde_yaml::from_str(include_str!("../../template.yaml")).unwrap();
    let resources = &template["Resources"];
    // `!Sub /aws/lambda/${SubmitFunction}` reads the log group of the function's binary.
    let service = |group: &serde_yaml::Value| -> String {
        let serde_yaml::Value::Tagged(sub) = group else { panic!("{group:?}") };
        let text = sub.value.as_str().unwrap();
        let function = text.strip_prefix("/aws/lambda/${").and_then(|t| t.strip_suffix('}')).unwrap();
        resources[function]["Metadata"]["BuildProperties"]["Binary"].as_str().unwrap().to_owned()
    };
    let queries: BTreeMap<String, (String, Vec<String>)> = resources
        .as_mapping()
        .unwrap()
        .iter()
        .filter(|(_, r)| r["Type"] == "AWS::Logs::QueryDefinition")
        .map(|(k, r)| {
            let properties = &r["Properties"];
            let services = properties["LogGroupNames"].as_sequence().unwrap().iter().map(service).collect();
            (k.as_str().unwrap().to_owned(), (properties["QueryString"].as_str().unwrap().to_owned(), services))
        })
        .collect();
    assert_eq!(queries.len(), 4, "one run, failed jobs, slowest stages, out-of-memory resizes");
    queries
}

/// Where the reports and their screenshots are kept (CI keeps `target/artifacts`).
pub fn artifacts() -> PathBuf {
    repo_root().join("target/artifacts/report")
}

/// The elements the browser test reads.
const SELECTORS: [&str; 9] = [
    "tr[data-attempt]",
    "#dag .stage",
    "#timeline svg",
    "#timeline svg text",
    "#total-cost",
    "#failure",
    "#failure pre.log",
    "h1 .status",
    "#maps .failed-items tbody tr",
];

/// The texts of the elements `selector` found on a page the browser saw, trimmed.
fn texts<'a>(seen: &'a Value, selector: &str) -> Vec<&'a str> {
    let found = seen["elements"][selector].as_array().map(Vec::as_slice).unwrap_or_default();
    found.iter().filter_map(|t| t["text"].as_str().map(str::trim)).collect()
}

/// Writes the run's report with `batchline runs report`, loads it in headless Chromium
/// (devtools/report/in_browser.py) and returns what the browser saw; no console error and
/// no network request are allowed. The page and its screenshot stay under [`artifacts`].
async fn report_in_browser(served: &Served, name: &str, run_id: &str) -> Value {
    let (status, page, stderr) = served.cli(&["runs", "report", run_id]).await;
    assert_eq!(status, 0, "{stderr}");
    let dir = artifacts();
    std::fs::create_dir_all(&dir).unwrap();
    let html = dir.join(format!("{name}.html"));
    std::fs::write(&html, &page).unwrap();
    let root = repo_root();
    let output = tokio::process::Command::new(root.join(".venv/bin/python"))
        .arg(root.join("devtools/report/in_browser.py"))
        .arg(&html)
        .arg(dir.join(format!("{name}.png")))
        .args(SELECTORS)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(120), output).await.expect("the browser ends").unwrap();
    assert!(output.status.success(), "in_browser.py: {}", String::from_utf8_lossy(&output.stderr));
    let seen: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(seen["problems"], json!([]), "{name}: console errors or failed loads");
    assert_eq!(seen["requests"], json!([]), "{name}: the page fetched something");
    seen
}

/// The part of CloudWatch Logs Insights' query language the saved queries use, over JSON
/// lines (Logs Insights itself is not emulated): `fields`, `filter` (`=` against a string
/// or number, `ispresent(f)`, `and` binding tighter than `or`), `stats … by …`, `sort`,
/// `limit`. A query using anything else fails the test, so the queries stay checkable.
pub mod logs_insights {
    use serde_json::Value;

    fn commands(query: &str) -> Vec<(String, String)> {
        query
            .split('|')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(|c| {
                let (verb, rest) = c.split_once(char::is_whitespace).unwrap_or((c, ""));
                (verb.to_owned(), rest.trim().to_owned())
            })
            .collect()
    }

    fn matches(condition: &str, line: &Value) -> bool {
        condition.split(" or ").any(|all| {
            all.split(" and ").all(|term| {
                let term = term.trim();
                if let Some(field) = term.strip_prefix("ispresent(").and_then(|t| t.strip_suffix(')')) {
                    return line.get(field.trim()).is_some();
                }
                let (field, literal) =
                    term.split_once('=').unwrap_or_else(|| panic!("unsupported filter term {term:?}"));
                let literal = literal.trim();
                let value = &line[field.trim()];
                match literal.strip_prefix('"').and_then(|l| l.strip_suffix('"')) {
                    Some(text) => value.as_str() == Some(text),
                    None => value.as_f64() == literal.parse::<f64>().ok(),
                }
            })
        })
    }

    /// The lines every `filter` of the query lets through.
    pub fn matching<'a>(query: &str, lines: &'a [Value]) -> Vec<&'a Value> {
        let filters: Vec<String> = commands(query).into_iter().filter(|(v, _)| v == "filter").map(|(_, c)| c).collect();
        for (verb, _) in commands(query) {
            assert!(
                ["fields", "filter", "stats", "sort", "limit"].contains(&verb.as_str()),
                "unsupported command {verb}"
            );
        }
        lines.iter().filter(|line| filters.iter().all(|f| matches(f, line))).collect()
    }

    /// The fields a `fields` command shows (not Logs Insights' own `@…`).
    pub fn shown_fields(query: &str) -> Vec<String> {
        commands(query)
            .into_iter()
            .filter(|(v, _)| v == "fields")
            .flat_map(|(_, list)| list.split(',').map(|f| f.trim().to_owned()).collect::<Vec<_>>())
            .filter(|f| !f.starts_with('@'))
            .collect()
    }

    /// The fields `stats` reads: its functions' arguments and its `by` list.
    pub fn grouped_fields(query: &str) -> Vec<String> {
        let mut fields = Vec::new();
        for (_, stats) in commands(query).into_iter().filter(|(v, _)| v == "stats") {
            let (aggregates, by) = stats.split_once(" by ").unwrap_or((&stats, ""));
            for aggregate in aggregates.split(',') {
                let argument =
                    aggregate.split_once('(').and_then(|(_, rest)| rest.split_once(')')).map(|(a, _)| a.trim());
                fields.extend(argument.filter(|a| *a != "*").map(str::to_owned));
            }
            fields.extend(by.split(',').map(|f| f.trim().to_owned()).filter(|f| !f.is_empty()));
        }
        fields
    }
}
