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

fn millis(iso: &Value) -> Option<i64> {
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

fn size(value: &Value) -> String {
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
    let mut stage_row = |name: String, depth: usize, stage: &Value| {
        let attempts = items(&stage["attempts"]);
        let last = attempts.last().cloned().unwrap_or(Value::Null);
        let took = match (millis(&last["startedAt"]), millis(&last["stoppedAt"])) {
            (Some(start), Some(stop)) => duration(stop - start),
            _ => "-".to_owned(),
        };
        let branch = if depth == 0 { String::new() } else { format!("{}└ ", "  ".repeat(depth - 1)) };
        rows.push(vec![
            format!("{branch}{name}"),
            text(&stage["status"]),
            size(&last["size"]),
            attempts.len().to_string(),
            took,
            usd(&stage["costUsd"]),
        ]);
    };
    for (name, depth) in dag_order(stages) {
        stage_row(name.clone(), depth, &stages[&name]);
    }
    if !view["onFailure"].is_null() {
        stage_row("on-failure".to_owned(), 0, &view["onFailure"]);
    }
    out += &table(&["STAGE", "STATUS", "SIZE", "ATTEMPTS", "DURATION", "COST"], &rows);
    for (name, _) in dag_order(stages) {
        out.push_str(&map_line(&name, &stages[&name]["map"]));
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
            .map(|j| vec![text(&j["jobId"]), text(&j["jobName"]), text(&j["stoppedAt"]), text(&j["statusReason"])])
            .collect();
        out += &table(&["JOB", "NAME", "STOPPED", "REASON"], &rows);
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
