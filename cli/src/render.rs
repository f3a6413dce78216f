//! Human output: the API's answers as aligned tables and a run as a tree of its stages in DAG order.

use std::collections::BTreeMap;

use aws_smithy_types::date_time::Format;
use aws_smithy_types::DateTime;
use serde_json::Value;

/// Columns padded to their widest cell; the header first.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| if i + 1 == cells.len() { c.clone() } else { format!("{c:<width$}", width = widths[i]) })
            .collect();
        padded.join("  ").trim_end().to_owned()
    };
    let mut out = vec![line(header.iter().map(|h| h.to_string()).collect())];
    out.extend(rows.iter().map(|row| line(row.clone())));
    out.join("\n") + "\n"
}

/// The items of a JSON list; none when it is not one.
pub fn items(value: &Value) -> &[Value] {
    value.as_array().map(Vec::as_slice).unwrap_or_default()
}

/// A JSON value as a table cell or a line shows it: a string bare, nothing as `-`.
pub fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Milliseconds since the epoch of an ISO 8601 time the API gave.
pub(crate) fn millis(iso: &Value) -> Option<i64> {
    DateTime::from_str(iso.as_str()?, Format::DateTime).ok()?.to_millis().ok()
}

/// `1h 2m`, `3m 4s`, `5s`.
pub fn duration(ms: i64) -> String {
    let seconds = ms.max(0) / 1000;
    match (seconds / 3600, seconds % 3600 / 60, seconds % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m {s}s"),
        (h, m, _) => format!("{h}h {m}m"),
    }
}

/// `$0.0123`, or `-` with no figure.
pub fn usd(value: &Value) -> String {
    value.as_f64().map(|usd| format!("${usd:.4}")).unwrap_or_else(|| "-".to_owned())
}

/// `0.25 vCPU / 512 MiB` from the API's `{vcpu, memoryMib}`, or `-`.
pub fn size(value: &Value) -> String {
    match (value["vcpu"].as_str(), value["memoryMib"].as_u64()) {
        (Some(vcpu), Some(memory)) => format!("{vcpu} vCPU / {memory} MiB"),
        _ => "-".to_owned(),
    }
}

/// `GET /jobs/{id}`.
pub fn job(view: &Value) -> String {
    let mut lines = vec![
        format!("job {} ({})", text(&view["jobId"]), text(&view["jobName"])),
        format!("  status      {}", text(&view["status"])),
    ];
    if !view["statusReason"].is_null() {
        lines.push(format!("  reason      {}", text(&view["statusReason"])));
    }
    lines.extend([
        format!("  queue       {}", text(&view["jobQueue"]).rsplit('/').next().unwrap_or_default()),
        format!("  size        {}", size(&view["size"])),
        format!("  attempts    {}", text(&view["attempts"])),
        format!("  created     {}", text(&view["createdAt"])),
        format!("  started     {}", text(&view["startedAt"])),
        format!("  stopped     {}", text(&view["stoppedAt"])),
        format!("  exit code   {}", text(&view["exitCode"])),
        format!("  cost        {}", usd(&view["cost"]["usd"])),
        format!("  logs        {} {}", text(&view["logGroup"]), text(&view["logStreamName"])),
    ]);
    for (label, key) in [("resized to", "resizedTo"), ("resized from", "resizedFrom")] {
        if !view[key].is_null() {
            lines.push(format!("  {label:<11} {}", text(&view[key])));
        }
    }
    lines.join("\n") + "\n"
}

/// `GET /jobs`.
pub fn jobs(list: &Value) -> String {
    let rows: Vec<Vec<String>> = items(&list["jobs"])
        .iter()
        .map(|j| {
            vec![
                text(&j["jobId"]),
                text(&j["jobName"]),
                text(&j["status"]),
                text(&j["jobQueue"]),
                text(&j["createdAt"]),
            ]
        })
        .collect();
    let mut out = table(&["JOB", "NAME", "STATUS", "QUEUE", "CREATED"], &rows);
    if let Some(next) = list["next"].as_str() {
        out.push_str(&format!("more: batchline jobs list --next {next}\n"));
    }
    out
}

/// `GET /jobs?object=`: the jobs that ran an object, resubmissions marked.
pub fn object_jobs(list: &Value) -> String {
    let rows: Vec<Vec<String>> = items(&list["jobs"])
        .iter()
        .map(|j| {
            let index = match (&j["arrayIndex"], j["resubmission"].as_bool()) {
                (Value::Number(n), _) => n.to_string(),
                (_, Some(true)) => "resubmitted".to_owned(),
                _ => "-".to_owned(),
            };
            vec![
                text(&j["jobId"]),
                index,
                text(&j["status"]),
                text(&j["runId"]),
                text(&j["trigger"]),
                text(&j["window"]),
            ]
        })
        .collect();
    table(&["JOB", "INDEX", "STATUS", "RUN", "TRIGGER", "WINDOW"], &rows)
}

/// `GET /runs`.
pub fn runs(list: &Value) -> String {
    let rows: Vec<Vec<String>> = items(&list["runs"])
        .iter()
        .map(|r| vec![text(&r["runId"]), text(&r["pipeline"]), text(&r["status"]), text(&r["createdAt"])])
        .collect();
    table(&["RUN", "PIPELINE", "STATUS", "CREATED"], &rows)
}

/// The stages of a run in DAG order: by depth (a stage comes after every stage it runs
/// after), then by name; with their depth.
pub fn dag_order(stages: &serde_json::Map<String, Value>) -> Vec<(String, usize)> {
    fn depth(name: &str, stages: &serde_json::Map<String, Value>, seen: &mut BTreeMap<String, usize>) -> usize {
        if let Some(depth) = seen.get(name) {
            return *depth;
        }
        seen.insert(name.to_owned(), 0); // a cycle (never deployed) ends here
        let upstream = stages.get(name).and_then(|s| s["after"].as_array()).cloned().unwrap_or_default();
        let depth = upstream.iter().filter_map(Value::as_str).map(|u| depth(u, stages, seen) + 1).max().unwrap_or(0);
        seen.insert(name.to_owned(), depth);
        depth
    }
    let mut seen = BTreeMap::new();
    let mut order: Vec<(String, usize)> =
        stages.keys().map(|name| (name.clone(), depth(name, stages, &mut seen))).collect();
    order.sort_by(|a, b| a.1.cmp(&b.1).then(a.0.cmp(&b.0)));
    order
}

/// The stages of a run as a tree, in display order: `(name, label)`, the label drawn with
/// its branch. Stages are placed in DAG order, each as the last child of whichever of the
/// stages it runs after is shown last so far; so every stage is shown after all it runs
/// after (a new child lands after its parent's subtree and never moves what is shown). One
/// that runs after several (a fan-in) says which. Siblings are `├ ` but the last, `└ `.
pub fn stage_tree(stages: &serde_json::Map<String, Value>) -> Vec<(String, String)> {
    let order: Vec<String> = dag_order(stages).into_iter().map(|(name, _)| name).collect();
    let after = |name: &str| -> Vec<String> {
        let listed = stages.get(name).and_then(|s| s["after"].as_array()).cloned().unwrap_or_default();
        listed.iter().filter_map(Value::as_str).map(str::to_owned).collect()
    };
    let mut children: BTreeMap<Option<String>, Vec<String>> = BTreeMap::new();
    for name in &order {
        let shown = depth_first(&children);
        let position = |up: &String| shown.iter().position(|s| s == up);
        let parent = after(name).into_iter().filter(|up| position(up).is_some()).max_by_key(|up| position(up));
        children.entry(parent).or_default().push(name.clone());
    }
    fn depth_first(children: &BTreeMap<Option<String>, Vec<String>>) -> Vec<String> {
        fn visit(node: Option<&String>, children: &BTreeMap<Option<String>, Vec<String>>, out: &mut Vec<String>) {
            for kid in children.get(&node.cloned()).into_iter().flatten() {
                out.push(kid.clone());
                visit(Some(kid), children, out);
            }
        }
        let mut out = Vec::new();
        visit(None, children, &mut out);
        out
    }
    fn walk(
        parent: Option<String>,
        indent: &str,
        children: &BTreeMap<Option<String>, Vec<String>>,
        after: &dyn Fn(&str) -> Vec<String>,
        out: &mut Vec<(String, String)>,
    ) {
        let Some(kids) = children.get(&parent) else { return };
        for (i, name) in kids.iter().enumerate() {
            let last = i + 1 == kids.len();
            let (branch, below) = match (&parent, last) {
                (None, _) => ("", ""),
                (Some(_), false) => ("├ ", "│ "),
                (Some(_), true) => ("└ ", "  "),
            };
            let upstream = after(name);
            let fan_in = if upstream.len() > 1 { format!(" (after {})", upstream.join(", ")) } else { String::new() };
            out.push((name.clone(), format!("{indent}{branch}{name}{fan_in}")));
            walk(Some(name.clone()), &format!("{indent}{below}"), children, after, out);
        }
    }
    let mut out = Vec::new();
    walk(None, "", &children, &after, &mut out);
    out
}

/// `GET /runs/{id}`: the run, then its stages as a tree.
pub fn run(view: &Value) -> String {
    let mut out = format!(
        "run {} ({}): {}  {}  {}\n",
        text(&view["runId"]),
        text(&view["pipeline"]),
        text(&view["status"]),
        view["durationMs"].as_i64().map(duration).unwrap_or_default(),
        usd(&view["costUsd"]),
    );
    if !view["reason"].is_null() {
        out.push_str(&format!("  reason: {}\n", text(&view["reason"])));
    }
    let empty = serde_json::Map::new();
    let stages = view["stages"].as_object().unwrap_or(&empty);
    let mut rows = Vec::new();
    let mut stage_row = |label: String, stage: &Value| {
        let attempts = items(&stage["attempts"]);
        let last = attempts.last().cloned().unwrap_or(Value::Null);
        let took = match (millis(&last["startedAt"]), millis(&last["stoppedAt"])) {
            (Some(start), Some(stop)) => duration(stop - start),
            _ => "-".to_owned(),
        };
        rows.push(vec![
            label,
            text(&stage["status"]),
            size(&last["size"]),
            attempts.len().to_string(),
            took,
            usd(&stage["costUsd"]),
        ]);
    };
    for (name, label) in stage_tree(stages) {
        stage_row(label, &stages[&name]);
    }
    if !view["onFailure"].is_null() {
        stage_row("on-failure".to_owned(), &view["onFailure"]);
    }
    out += &table(&["STAGE", "STATUS", "SIZE", "ATTEMPTS", "DURATION", "COST"], &rows);
    for (name, _) in dag_order(stages) {
        out.push_str(&map_line(&name, &stages[&name]["map"]));
    }
    out
}

/// `runs show`: the run as [`run`] draws it, then every stage's attempts in DAG order — job
/// id, size, status, exit code and reason — and a map stage's array jobs with their counts
/// (its children's logs: `batchline logs RUN STAGE --index N`).
pub fn run_in_full(view: &Value) -> String {
    let mut out = run(view);
    let empty = serde_json::Map::new();
    let stages = view["stages"].as_object().unwrap_or(&empty);
    let mut named: Vec<(String, &Value)> =
        dag_order(stages).into_iter().map(|(n, _)| (n.clone(), &stages[&n])).collect();
    if !view["onFailure"].is_null() {
        named.push(("on-failure".to_owned(), &view["onFailure"]));
    }
    let mut rows = Vec::new();
    for (name, stage) in &named {
        for attempt in items(&stage["attempts"]) {
            let job = match attempt["jobId"].as_str() {
                Some(id) => id.to_owned(),
                None if stage["map"].is_object() => "(map: its arrays below)".to_owned(),
                None => "-".to_owned(),
            };
            rows.push(vec![
                name.clone(),
                text(&attempt["number"]),
                job,
                size(&attempt["size"]),
                text(&attempt["status"]),
                attempt["exitCode"].as_i64().map_or("-".to_owned(), |c| c.to_string()),
                attempt["reason"].as_str().unwrap_or("-").to_owned(),
            ]);
        }
    }
    out.push('\n');
    out += &table(&["STAGE", "ATTEMPT", "JOB", "SIZE", "STATUS", "EXIT", "REASON"], &rows);
    for (name, stage) in &named {
        let arrays = items(&stage["map"]["arrayJobs"]);
        if arrays.is_empty() {
            continue;
        }
        out.push_str(&format!("map {name}: {} array job(s)\n", arrays.len()));
        for array in arrays {
            let first = array["first"].as_u64().unwrap_or(0);
            let size = array["size"].as_u64().unwrap_or(1);
            let children = match array["resubmission"] == true {
                true => format!("{size} resubmitted one size up"),
                false => format!("children {first}-{}", first + size.saturating_sub(1)),
            };
            out.push_str(&format!(
                "  {children}: {} {} ({} succeeded, {} failed)\n",
                array["jobId"].as_str().unwrap_or("(not submitted)"),
                text(&array["status"]),
                text(&array["succeeded"]),
                text(&array["failed"]),
            ));
        }
    }
    out
}

/// A map stage's children: `map NAME: a succeeded / b failed / c running / d waiting of N`,
/// then its failed children as listed (nothing for a stage that is no map).
fn map_line(name: &str, map: &Value) -> String {
    if !map.is_object() {
        return String::new();
    }
    let children = map["children"].as_u64().map_or("?".to_owned(), |n| n.to_string());
    // Resized children ran out of memory and were run again one size up (counted once more).
    let resized = match map["resized"].as_u64() {
        Some(n) if n > 0 => format!(" ({n} resized)"),
        _ => String::new(),
    };
    let mut line = format!(
        "map {name}: {} succeeded / {} failed / {} running / {} waiting of {children}{resized}\n",
        text(&map["succeeded"]),
        text(&map["failed"]),
        text(&map["running"]),
        text(&map["waiting"]),
    );
    for failed in items(&map["failedItems"]) {
        let why = failed["reason"].as_str().map(|r| format!(": {r}")).unwrap_or_default();
        line.push_str(&format!(
            "  child {} failed (exit {}){why}: {}\n",
            text(&failed["index"]),
            text(&failed["exitCode"]),
            failed["items"]
        ));
    }
    if let Some(uri) = map["failedItemsUri"].as_str() {
        line.push_str(&format!("  every failed child: {uri}\n"));
    }
    line
}

/// Why a failed job ended: its container's reason where Batch gives one (out of memory,
/// say), else the task's.
fn reason(job: &Value) -> String {
    job["containerReason"].as_str().map_or_else(|| text(&job["statusReason"]), str::to_owned)
}

/// `GET /status`.
pub fn status(view: &Value) -> String {
    let rows: Vec<Vec<String>> = items(&view["queues"])
        .iter()
        .map(|q| {
            let default = if q["default"].as_bool() == Some(true) { " (default)" } else { "" };
            let count = |status: &str| text(&q["jobs"][status]);
            vec![
                format!("{}{default}", text(&q["name"])),
                text(&q["state"]),
                count("SUBMITTED"),
                count("PENDING"),
                count("RUNNABLE"),
                count("STARTING"),
                count("RUNNING"),
            ]
        })
        .collect();
    let mut out = format!("stack {}: {} open run(s)\n", text(&view["stack"]), text(&view["openRuns"]));
    out += &table(&["QUEUE", "STATE", "SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING"], &rows);
    let failures = items(&view["recentFailures"]);
    if failures.is_empty() {
        out.push_str("no recent failures\n");
    } else {
        out.push_str("recent failures:\n");
        let rows: Vec<Vec<String>> = failures
            .iter()
            .map(|j| vec![text(&j["jobId"]), text(&j["jobName"]), text(&j["stoppedAt"]), reason(j)])
            .collect();
        out += &table(&["JOB", "NAME", "STOPPED", "REASON"], &rows);
    }
    let recovered = items(&view["recovered"]);
    if !recovered.is_empty() {
        out.push_str("failed, then recovered (resized or attempted again):\n");
        let rows: Vec<Vec<String>> = recovered
            .iter()
            .map(|j| vec![text(&j["jobId"]), text(&j["jobName"]), reason(j), text(&j["recoveredBy"])])
            .collect();
        out += &table(&["JOB", "NAME", "REASON", "TAKEN OVER BY"], &rows);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn stages_come_in_dag_order_with_their_depth() {
        let stages = json!({
            "report": {"after": ["transform", "validate"]},
            "validate": {"after": ["extract"]},
            "extract": {"after": []},
            "transform": {"after": ["extract"]}
        });
        let order = dag_order(stages.as_object().unwrap());
        assert_eq!(
            order,
            [("extract".into(), 0), ("transform".into(), 1), ("validate".into(), 1), ("report".into(), 2)]
        );
    }

    #[test]
    fn fan_out_draws_siblings_and_fan_in_hangs_under_its_last_upstream_naming_all() {
        let stages = json!({
            "a": {"after": []}, "b": {"after": ["a"]}, "c": {"after": ["a"]},
            "d": {"after": ["b", "c"]}, "e": {"after": ["d"]}, "f": {"after": ["b"]}
        });
        let labels: Vec<String> = stage_tree(stages.as_object().unwrap()).into_iter().map(|(_, label)| label).collect();
        assert_eq!(labels, ["a", "├ b", "│ └ f", "└ c", "  └ d (after b, c)", "    └ e"]);
        // A fan-in across two roots, and one whose upstream is deep in an earlier branch:
        // each is shown after everything it runs after.
        let stages = json!({
            "a": {"after": []}, "b": {"after": ["a"]}, "x": {"after": []}, "d": {"after": ["b", "x"]},
            "e": {"after": ["b"]}, "f": {"after": ["a"]}, "g": {"after": ["e", "f"]}
        });
        let order: Vec<String> = stage_tree(stages.as_object().unwrap()).into_iter().map(|(n, _)| n).collect();
        for (name, stage) in stages.as_object().unwrap() {
            let at = order.iter().position(|n| n == name).unwrap();
            for up in stage["after"].as_array().unwrap().iter().filter_map(Value::as_str) {
                assert!(order.iter().position(|n| n == up).unwrap() < at, "{up} before {name}: {order:?}");
            }
        }
    }

    #[test]
    fn a_run_in_full_lists_every_attempt_and_a_maps_arrays() {
        let view = json!({
            "runId": "r", "pipeline": "p", "status": "FAILED", "stages": {
                "load": {"status": "FAILED", "after": [], "attempts": [
                    {"number": 1, "jobId": "j-1", "size": {"vcpu": "0.25", "memoryMib": 512}, "status": "FAILED",
                     "exitCode": 137, "reason": "OutOfMemoryError: Container killed"},
                    {"number": 2, "jobId": "j-2", "size": {"vcpu": "0.25", "memoryMib": 1024}, "status": "FAILED",
                     "exitCode": 3, "reason": null}]},
                "each": {"status": "SKIPPED", "after": ["load"], "attempts": [], "map": {"children": 3,
                    "arrayJobs": [{"jobId": "arr-1", "first": 0, "size": 3, "status": "SUCCEEDED", "succeeded": 3, "failed": 0}]}}
            }
        });
        let shown = run_in_full(&view);
        assert!(
            shown.contains(
                "load   1        j-1  0.25 vCPU / 512 MiB   FAILED  137   OutOfMemoryError: Container killed"
            ),
            "{shown}"
        );
        assert!(shown.contains("load   2        j-2  0.25 vCPU / 1024 MiB  FAILED  3     -"), "{shown}");
        assert!(
            shown.contains("map each: 1 array job(s)\n  children 0-2: arr-1 SUCCEEDED (3 succeeded, 0 failed)"),
            "{shown}"
        );
    }

    #[test]
    fn a_run_shows_as_a_tree_with_sizes_attempts_durations_and_cost() {
        let view = json!({
            "runId": "orders-1", "pipeline": "orders", "status": "SUCCEEDED", "durationMs": 75_000, "costUsd": 0.0012,
            "stages": {
                "extract": {"status": "SUCCEEDED", "after": [], "costUsd": 0.0002, "attempts": [
                    {"size": {"vcpu": "0.25", "memoryMib": 512}, "startedAt": "2026-11-30T10:00:00Z", "stoppedAt": "2026-11-30T10:00:30Z"}]},
                "load": {"status": "SUCCEEDED", "after": ["extract"], "costUsd": 0.001, "attempts": [
                    {"size": {"vcpu": "0.25", "memoryMib": 512}}, {"size": {"vcpu": "0.25", "memoryMib": 1024},
                     "startedAt": "2026-11-30T10:01:00Z", "stoppedAt": "2026-11-30T10:02:05Z"}]}
            }
        });
        let shown = run(&view);
        assert_eq!(
            shown,
            "run orders-1 (orders): SUCCEEDED  1m 15s  $0.0012\n\
             STAGE    STATUS     SIZE                  ATTEMPTS  DURATION  COST\n\
             extract  SUCCEEDED  0.25 vCPU / 512 MiB   1         30s       $0.0002\n\
             └ load   SUCCEEDED  0.25 vCPU / 1024 MiB  2         1m 5s     $0.0010\n"
        );
    }

    #[test]
    fn a_map_stage_shows_its_children_by_state_and_its_failed_ones() {
        let map = json!({"children": 250, "succeeded": 240, "failed": 2, "running": 5, "waiting": 3,
                         "failedItems": [{"index": 17, "items": ["s3://b/17.jpg"], "exitCode": 2, "reason": null}],
                         "failedItemsUri": null});
        assert_eq!(
            map_line("resize", &map),
            "map resize: 240 succeeded / 2 failed / 5 running / 3 waiting of 250\n  \
             child 17 failed (exit 2): [\"s3://b/17.jpg\"]\n"
        );
        assert_eq!(map_line("plain", &Value::Null), "");
        let resized = json!({"children": 4, "succeeded": 4, "failed": 0, "resized": 2, "running": 0, "waiting": 0});
        assert_eq!(map_line("r", &resized), "map r: 4 succeeded / 0 failed / 0 running / 0 waiting of 4 (2 resized)\n");
    }
}
