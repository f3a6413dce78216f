//! `batchline runs report`: one self-contained HTML page of a run — its DAG, every attempt on a time axis, sizes, costs, maps and, for a failed run, why.
//!
//! The page is written from the run's view (`GET /runs/{id}`) and, for a failed run, the
//! last lines of the failing attempt's log; nothing is fetched when it is viewed (no
//! script, no font, no image by URL: the timeline is an inline SVG drawn by plotters, the
//! page is written with maud, which escapes every value). Elements carry `data-*` hooks
//! (`data-stage`, `data-attempt`, `data-oom`) that the browser test reads.

use maud::{html, Markup, PreEscaped, DOCTYPE};
use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use serde_json::Value;

use crate::render::{dag_order, duration, items, millis, size, text, usd};

/// The last lines of the failing attempt's log, or why they could not be read.
pub type LogTail = Result<Vec<String>, String>;

/// One attempt as the page shows it: times in milliseconds since the epoch.
#[derive(Debug, Clone)]
struct Row {
    stage: String,
    number: u64,
    job_id: String,
    size: String,
    status: String,
    reason: Option<String>,
    exit_code: Option<i64>,
    submitted: Option<i64>,
    started: Option<i64>,
    stopped: Option<i64>,
    cost: Option<f64>,
    out_of_memory: bool,
    /// Batch's own attempts of the job (its retry strategy's): when each ran.
    tasks: Vec<(i64, i64)>,
}

impl Row {
    fn label(&self) -> String {
        format!("{} #{}", self.stage, self.number)
    }
    /// When it first started: its first task's start (the record's `startedAt` is the last's).
    fn first_started(&self) -> Option<i64> {
        self.tasks.first().map(|t| t.0).or(self.started)
    }
    /// Its time in the queue: before it first started, and between Batch's retries.
    fn wait_ms(&self) -> Option<i64> {
        self.first_started()?;
        Some(self.waited(0).iter().map(|(from, to)| to - from).sum())
    }
    /// Its running time: every run of its job, summed.
    fn run_ms(&self) -> Option<i64> {
        match self.tasks.as_slice() {
            [] => Some(self.stopped? - self.started?),
            tasks => Some(tasks.iter().map(|(from, to)| to - from).sum()),
        }
    }
    /// When it waited in the queue, to `end` while it still does: before it first started,
    /// and between each of Batch's retries.
    fn waited(&self, end: i64) -> Vec<(i64, i64)> {
        let until = match (self.first_started(), self.stopped) {
            (Some(started), _) => started,
            (None, None) => end,
            (None, Some(_)) => return vec![],
        };
        let first = self.submitted.map(|submitted| (submitted, until));
        let between = self.tasks.windows(2).map(|pair| (pair[0].1, pair[1].0));
        first.into_iter().chain(between).collect()
    }
    /// When it ran, to `end` while it still does: each of Batch's attempts of its job when
    /// Batch retried it. A map stage's attempt has no job of its own (its arrays ran the
    /// children): from its submission to its end it ran.
    fn ran(&self, end: i64) -> Vec<(i64, i64)> {
        if self.tasks.len() > 1 {
            return self.tasks.clone();
        }
        let from = self.started.or(self.stopped.and(self.submitted));
        from.map(|from| (from, self.stopped.unwrap_or(end))).into_iter().collect()
    }
    fn color(&self) -> RGBColor {
        match self.status.as_str() {
            "SUCCEEDED" => SUCCEEDED,
            "FAILED" => FAILED,
            _ => OTHER,
        }
    }
}

fn rows(view: &Value) -> Vec<Row> {
    let stages = view["stages"].as_object().cloned().unwrap_or_default();
    let mut order: Vec<(String, Value)> =
        dag_order(&stages).into_iter().map(|(name, _)| (name.clone(), stages[&name].clone())).collect();
    if view["onFailure"].is_object() {
        order.push(("on-failure".to_owned(), view["onFailure"].clone()));
    }
    let mut rows = Vec::new();
    for (stage, found) in order {
        for attempt in items(&found["attempts"]) {
            let reason = attempt["reason"].as_str().map(str::to_owned);
            rows.push(Row {
                stage: stage.clone(),
                number: attempt["number"].as_u64().unwrap_or_default(),
                job_id: text(&attempt["jobId"]),
                size: size(&attempt["size"]),
                status: text(&attempt["status"]),
                out_of_memory: reason.as_deref().is_some_and(|r| r.starts_with("OutOfMemoryError")),
                reason,
                exit_code: attempt["exitCode"].as_i64(),
                submitted: millis(&attempt["submittedAt"]),
                started: millis(&attempt["startedAt"]),
                stopped: millis(&attempt["stoppedAt"]),
                cost: attempt["cost"]["usd"].as_f64(),
                tasks: items(&attempt["tasks"])
                    .iter()
                    .filter_map(|t| Some((millis(&t["startedAt"])?, millis(&t["stoppedAt"])?)))
                    .collect(),
            });
        }
    }
    rows
}

/// The attempt a failed run failed on: of the failed stages' last attempts, the one that
/// stopped first (a stage failing later may only have followed it).
fn failing(view: &Value) -> Option<(String, Value)> {
    let stages = view["stages"].as_object()?;
    let failed = stages.iter().filter(|(_, stage)| stage["status"] == "FAILED");
    let last = failed.filter_map(|(name, stage)| items(&stage["attempts"]).last().map(|a| (name.clone(), a.clone())));
    last.min_by_key(|(name, attempt)| (millis(&attempt["stoppedAt"]).unwrap_or(i64::MAX), name.clone()))
}

/// The job id whose log a failed run's page shows the end of, if any.
pub fn failing_job(view: &Value) -> Option<String> {
    let (_, attempt) = failing(view)?;
    attempt["jobId"].as_str().map(str::to_owned)
}

/// The whole page.
pub fn page(view: &Value, log_tail: Option<&LogTail>) -> String {
    let rows = rows(view);
    let run_id = text(&view["runId"]);
    let status = text(&view["status"]);
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                // Nothing may be fetched or run, whatever a value in the page says.
                meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'";
                title { "Batchline run " (run_id) " — " (status) }
                style { (PreEscaped(STYLE)) }
            }
            body {
                (header(view, &run_id, &status))
                @if status == "FAILED" { (failure(view, log_tail)) }
                (dag(view))
                section #timeline {
                    h2 { "Timeline" }
                    p.note { "Each attempt from its submission: waiting in the queue (light), then running (dark). "
                             "Out-of-memory ends are marked OOM; the next attempt of the stage is its resize or retry. "
                             "Where Batch itself retried a job (its retry strategy), each of its runs is drawn, the later ones marked retry." }
                    (PreEscaped(timeline_svg(&rows)))
                }
                (attempts_table(&rows))
                (maps(view))
                footer { "Written by " code { "batchline runs report" } " from the run's record; it changes no more once written." }
            }
        }
    };
    markup.into_string()
}

fn header(view: &Value, run_id: &str, status: &str) -> Markup {
    let upper_bound = if view["costIsUpperBound"] == true { " (at most: some tasks were not billed yet)" } else { "" };
    html! {
        header {
            h1 { "Run " code { (run_id) } " " span.status data-status=(status) { (status) } }
            dl.facts {
                dt { "Pipeline" } dd { (text(&view["pipeline"])) }
                dt { "Trigger" } dd { (text(&view["trigger"])) }
                dt { "Started" } dd { (text(&view["createdAt"])) }
                dt { "Ended" } dd { (text(&view["endedAt"])) }
                dt { "Duration" } dd { (view["durationMs"].as_i64().map(duration).unwrap_or_else(|| "-".into())) }
                dt { "Cost" } dd #total-cost { (usd(&view["costUsd"])) (upper_bound) }
                @if let Some(reason) = view["reason"].as_str() { dt { "Reason" } dd { (reason) } }
            }
        }
    }
}

fn failure(view: &Value, log_tail: Option<&LogTail>) -> Markup {
    let Some((stage, attempt)) = failing(view) else {
        return html! { section #failure { h2 { "Why it failed" } p { (text(&view["reason"])) } } };
    };
    let exit_code = text(&attempt["exitCode"]);
    html! {
        section #failure data-stage=(stage) data-exit-code=(exit_code) {
            h2 { "Why it failed" }
            p { "Stage " strong { (stage) } ", attempt " (text(&attempt["number"])) " (job " code { (text(&attempt["jobId"])) } ")"
                " exited with code " strong.exit-code { (exit_code) } ": " span.reason { (text(&attempt["reason"])) } }
            @match log_tail {
                Some(Ok(lines)) if !lines.is_empty() => {
                    h3 { "The last lines of its log" }
                    pre.log { @for line in lines { (line) "\n" } }
                }
                Some(Ok(_)) => p.note { "Its log has no lines." },
                Some(Err(why)) => p.note { "Its log could not be read: " (why) },
                None => p.note { "Its log was not read." },
            }
        }
    }
}

/// The DAG as columns by depth: a stage stands right of every stage it runs after.
fn dag(view: &Value) -> Markup {
    let stages = view["stages"].as_object().cloned().unwrap_or_default();
    let order = dag_order(&stages);
    let depth = order.iter().map(|(_, d)| *d).max().unwrap_or(0);
    html! {
        section #dag {
            h2 { "Stages" }
            div.dag {
                @for column in 0..=depth {
                    div.column {
                        @for (name, _) in order.iter().filter(|(_, d)| *d == column) {
                            @let stage = &stages[name];
                            @let after: Vec<String> = items(&stage["after"]).iter().map(text).collect();
                            @let attempts = items(&stage["attempts"]);
                            div.stage data-stage=(name) data-status=(text(&stage["status"])) {
                                div.name { (name) }
                                div.status data-status=(text(&stage["status"])) { (text(&stage["status"])) }
                                div { (attempts.last().map(|a| size(&a["size"])).unwrap_or_else(|| "-".into())) }
                                div { (attempts.len()) " attempt(s) · " (usd(&stage["costUsd"])) }
                                @if stage["map"].is_object() { div.map { "map of " (text(&stage["map"]["children"])) } }
                                @if !after.is_empty() { div.after { "after " (after.join(", ")) } }
                            }
                        }
                    }
                }
                @if view["onFailure"].is_object() {
                    div.column {
                        div.stage data-stage="on-failure" data-status=(text(&view["onFailure"]["status"])) {
                            div.name { "on-failure" }
                            div.status data-status=(text(&view["onFailure"]["status"])) { (text(&view["onFailure"]["status"])) }
                            div.after { "when the run fails" }
                        }
                    }
                }
            }
        }
    }
}

fn attempts_table(rows: &[Row]) -> Markup {
    let ms = |v: Option<i64>| v.map(duration).unwrap_or_else(|| "-".into());
    html! {
        section #attempts {
            h2 { "Attempts" }
            table {
                thead { tr { th { "Stage" } th { "#" } th { "Job" } th { "Size" } th { "Status" } th { "Exit" }
                             th { "Queue wait" } th { "Run time" } th { "Cost" } th { "Reason" } } }
                tbody {
                    @for row in rows {
                        tr data-attempt=(row.label()) data-oom=(row.out_of_memory.to_string()) data-batch-attempts=(row.tasks.len().max(1)) {
                            td { (row.stage) } td { (row.number) } td { code { (row.job_id) } } td { (row.size) }
                            td { (row.status) } td { (row.exit_code.map(|c| c.to_string()).unwrap_or_else(|| "-".into())) }
                            td { (ms(row.wait_ms())) } td { (ms(row.run_ms())) }
                            td { (row.cost.map(|c| format!("${c:.4}")).unwrap_or_else(|| "-".into())) }
                            td {
                                @if row.out_of_memory { span.oom { "OOM" } " " }
                                @if row.tasks.len() > 1 { span.retried { "Batch ran it " (row.tasks.len()) " times" } " " }
                                (row.reason.clone().unwrap_or_default())
                            }
                        }
                    }
                }
            }
        }
    }
}

fn maps(view: &Value) -> Markup {
    let stages = view["stages"].as_object().cloned().unwrap_or_default();
    let mapped: Vec<(String, Value)> = dag_order(&stages)
        .into_iter()
        .filter(|(n, _)| stages[n]["map"].is_object())
        .map(|(n, _)| (n.clone(), stages[&n]["map"].clone()))
        .collect();
    html! {
        @if !mapped.is_empty() {
            section #maps {
                h2 { "Map stages" }
                @for (name, map) in &mapped {
                    div.map-stage data-stage=(name) {
                        h3 { (name) }
                        p.counts { (text(&map["children"])) " children: " (text(&map["succeeded"])) " succeeded, "
                                   (text(&map["failed"])) " failed, " (text(&map["resized"])) " resized, "
                                   (text(&map["running"])) " running, " (text(&map["waiting"])) " waiting" }
                        @if !items(&map["failedItems"]).is_empty() {
                            table.failed-items {
                                thead { tr { th { "Child" } th { "Exit" } th { "Reason" } th { "Items" } } }
                                tbody { @for failed in items(&map["failedItems"]) {
                                    tr { td { (text(&failed["index"])) } td { (text(&failed["exitCode"])) }
                                         td { (text(&failed["reason"])) } td { code { (failed["items"].to_string()) } } }
                                } }
                            }
                        }
                        @if let Some(uri) = map["failedItemsUri"].as_str() { p { "Every failed child: " code { (uri) } } }
                    }
                }
            }
        }
    }
}

const QUEUED: RGBColor = RGBColor(180, 200, 230);
const SUCCEEDED: RGBColor = RGBColor(40, 130, 70);
const FAILED: RGBColor = RGBColor(190, 50, 40);
const OTHER: RGBColor = RGBColor(90, 100, 120);

/// Every attempt on one time axis (seconds since the first submission), drawn by plotters
/// into an SVG: a light bar for its queue wait, a dark one for its run, OOM at the end of a
/// run that ran out of memory. An attempt not yet started or ended is drawn to the latest
/// time the run's record knows.
fn timeline_svg(rows: &[Row]) -> String {
    let origin = rows.iter().filter_map(|r| r.submitted.or(r.started)).min();
    let Some(origin) = origin else { return "<p class=\"note\">No attempt was submitted.</p>".to_owned() };
    let end = rows.iter().filter_map(|r| r.stopped.or(r.started).or(r.submitted)).max().unwrap_or(origin);
    let mut svg = String::new();
    match draw_timeline(&mut svg, rows, origin, end).map_err(|e| e.to_string()) {
        Ok(()) => svg,
        Err(why) => html! { p.note { "The timeline could not be drawn: " (why) } }.into_string(),
    }
}

/// Draws [`timeline_svg`]'s chart into `svg`: times in milliseconds since the epoch,
/// `origin` at the axis' 0.
fn draw_timeline<'a>(
    svg: &'a mut String,
    rows: &[Row],
    origin: i64,
    end: i64,
) -> Result<(), Box<dyn std::error::Error + 'a>> {
    let seconds = |ms: i64| (ms - origin) as f64 / 1000.0;
    // Room on the right for the legend, clear of the bars.
    let span = seconds(end).max(1.0) * 1.3;
    // One band per attempt, the first on top; at least two (plotters labels no band of a
    // range of one), the spare one empty at the bottom.
    let bands = rows.len().max(2);
    let height = 70 + 30 * bands as u32;
    let root = SVGBackend::with_string(svg, (960, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let labels: Vec<String> = rows.iter().map(|r| format!("{} · {}", r.label(), r.size)).collect();
    let mut chart = ChartBuilder::on(&root)
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(230)
        // (The range is inclusive.)
        .build_cartesian_2d(0f64..span, (0..bands - 1).into_segmented())?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(bands)
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(band) => labels.get(bands - 1 - band).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .x_desc("seconds since the first submission")
        // Fixed sizes: plotters' defaults scale with the chart's height.
        .label_style(("sans-serif", 12))
        .axis_desc_style(("sans-serif", 12))
        .draw()?;
    let band_of = |i: usize| bands - 1 - i;
    let band = |i: usize, from: f64, to: f64, color: RGBColor| {
        let (bottom, band) = (SegmentValue::Exact(band_of(i)), band_of(i) + 1);
        let top = if band == bands { SegmentValue::Last } else { SegmentValue::Exact(band) };
        let mut bar = Rectangle::new([(from, bottom), (to, top)], color.filled());
        bar.set_margin(5, 5, 0, 0);
        bar
    };
    let waits = rows.iter().enumerate().flat_map(|(i, r)| {
        r.waited(end).into_iter().map(move |(from, to)| band(i, seconds(from), seconds(to), QUEUED))
    });
    chart
        .draw_series(waits)?
        .label("queue wait")
        .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], QUEUED.filled()));
    let runs = rows.iter().enumerate().flat_map(|(i, r)| {
        let ran = r.ran(end);
        let last = ran.len().saturating_sub(1);
        // Each of Batch's attempts but the last failed: that is why it was retried.
        let color = move |k: usize| if k < last { FAILED } else { r.color() };
        ran.into_iter().enumerate().map(move |(k, (from, to))| band(i, seconds(from), seconds(to), color(k)))
    });
    chart
        .draw_series(runs)?
        .label("running")
        .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], SUCCEEDED.filled()));
    chart.draw_series(marks(rows, |ms| seconds(ms) + span * 0.004, band_of))?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font(("sans-serif", 12))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// Marks on the bars, at `x` of a time and in band `band_of` of a row: `OOM` where an attempt
/// ran out of memory, `retry` where each of Batch's later runs of a job started.
fn marks(
    rows: &[Row],
    x: impl Fn(i64) -> f64,
    band_of: impl Fn(usize) -> usize,
) -> Vec<Text<'static, (f64, SegmentValue<usize>), &'static str>> {
    let mut marks = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let at = |ms: i64| (x(ms), SegmentValue::CenterOf(band_of(i)));
        if let Some(stopped) = row.stopped.filter(|_| row.out_of_memory) {
            marks.push(Text::new("OOM", at(stopped), ("sans-serif", 13).into_font().color(&FAILED)));
        }
        for (started, _) in row.tasks.iter().skip(1) {
            marks.push(Text::new("retry", at(*started), ("sans-serif", 12).into_font().color(&WHITE)));
        }
    }
    marks
}

const STYLE: &str = r#"
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1000px; color: #1d232b; }
h1 { font-size: 22px; } h2 { font-size: 17px; margin-top: 28px; border-bottom: 1px solid #d8dde4; }
code { font-family: ui-monospace, monospace; font-size: 12.5px; }
.status { padding: 2px 8px; border-radius: 4px; color: #fff; background: #5a6478; font-size: 14px; }
[data-status="SUCCEEDED"].status { background: #288246; } [data-status="FAILED"].status { background: #be3228; }
[data-status="CANCELLED"].status { background: #8a6d1f; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; }
dl.facts dt { color: #5a6478; } dl.facts dd { margin: 0; }
.dag { display: flex; gap: 28px; align-items: center; overflow-x: auto; }
.column { display: flex; flex-direction: column; gap: 12px; }
.stage { border: 2px solid #5a6478; border-radius: 6px; padding: 6px 10px; min-width: 150px; background: #f6f8fa; }
.stage[data-status="SUCCEEDED"] { border-color: #288246; } .stage[data-status="FAILED"] { border-color: #be3228; }
.stage .name { font-weight: 600; } .stage .after, .note { color: #5a6478; font-size: 12.5px; }
table { border-collapse: collapse; width: 100%; } th, td { text-align: left; padding: 3px 8px; border-bottom: 1px solid #e6e9ee; vertical-align: top; }
.oom { color: #fff; background: #be3228; border-radius: 3px; padding: 0 4px; font-size: 11px; }
.retried { color: #fff; background: #8a6d1f; border-radius: 3px; padding: 0 4px; font-size: 11px; }
#failure { border-left: 4px solid #be3228; padding-left: 12px; }
pre.log { background: #1d232b; color: #e6e9ee; padding: 10px; overflow-x: auto; font-size: 12.5px; }
footer { margin-top: 32px; color: #5a6478; font-size: 12px; }
"#;

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn view() -> Value {
        let attempt = |n: u64, status: &str, from: &str, start: &str, stop: &str, reason: Option<&str>, exit: i64| {
            json!({"number": n, "jobId": format!("job-{n}"), "size": {"vcpu": "1", "memoryMib": 2048 * n},
                   "status": status, "reason": reason, "exitCode": exit, "submittedAt": from, "startedAt": start,
                   "stoppedAt": stop, "cost": 0.001})
        };
        json!({"runId": "orders-1", "pipeline": "orders", "status": "FAILED", "reason": "stage load failed: <boom>",
               "createdAt": "2026-12-07T10:00:00Z", "durationMs": 90000, "costUsd": 0.003,
               "stages": {
                 "extract": {"status": "SUCCEEDED", "after": [], "costUsd": 0.001,
                   "attempts": [attempt(1, "SUCCEEDED", "2026-12-07T10:00:00Z", "2026-12-07T10:00:10Z", "2026-12-07T10:00:40Z", None, 0)]},
                 "load": {"status": "FAILED", "after": ["extract"], "costUsd": 0.002,
                   "attempts": [attempt(1, "FAILED", "2026-12-07T10:00:41Z", "2026-12-07T10:00:50Z", "2026-12-07T10:01:00Z",
                                        Some("OutOfMemoryError: Container killed due to memory usage"), 137),
                                attempt(2, "FAILED", "2026-12-07T10:01:01Z", "2026-12-07T10:01:05Z", "2026-12-07T10:01:30Z", Some("<exit 3>"), 3)]}}})
    }

    #[test]
    fn a_run_of_one_attempt_draws_one_band_and_a_run_with_none_says_so() {
        let mut one = view();
        one["stages"].as_object_mut().unwrap().remove("load");
        let page = page(&one, None);
        assert!(page.contains("extract #1 · 1 vCPU / 2048 MiB") && page.contains("<svg"), "{page}");
        assert!(!page.contains("could not be drawn"));
        let mut none = view();
        none["stages"] = json!({"only": {"status": "PENDING", "after": [], "attempts": []}});
        assert!(super::page(&none, None).contains("No attempt was submitted."));
    }

    #[test]
    fn the_page_shows_every_attempt_the_dag_the_failure_and_its_log_and_escapes_what_it_is_given() {
        let tail: LogTail = Ok(vec!["loading <orders>".into(), "boom".into()]);
        let mut view = view();
        // Batch ran load's second attempt twice (its retry strategy).
        view["stages"]["load"]["attempts"][1]["tasks"] = json!([
            {"startedAt": "2026-12-07T10:01:05Z", "stoppedAt": "2026-12-07T10:01:15Z"},
            {"startedAt": "2026-12-07T10:01:20Z", "stoppedAt": "2026-12-07T10:01:30Z"}]);
        let page = page(&view, Some(&tail));
        assert!(page.starts_with("<!DOCTYPE html>"));
        for expected in [
            r#"data-attempt="extract #1""#,
            r#"data-attempt="load #1" data-oom="true""#,
            r#"data-attempt="load #2" data-oom="false" data-batch-attempts="2""#,
            "Batch ran it 2 times",
            "<td>9s</td><td>20s</td>",
            "retry\n</text>",
            "OOM\n</text>",
            r#"id="failure" data-stage="load" data-exit-code="3""#,
            "loading &lt;orders&gt;",
            "stage load failed: &lt;boom&gt;",
            "<svg",
            ">OOM<",
        ] {
            assert!(page.contains(expected), "{expected} in the page");
        }
        assert!(!page.contains("<boom>") && !page.contains("<script"), "values are escaped and nothing runs");
        for fetched in ["src=", "href=", "url(", "@import"] {
            assert!(!page.contains(fetched), "{fetched}: nothing is fetched when the page is viewed");
        }
        assert_eq!(failing_job(&view).as_deref(), Some("job-2"));
    }
}
