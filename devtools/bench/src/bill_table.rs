//! The orchestration bill's tables: each kind of unit priced per 1,000 units beside Step Functions Standard and EventBridge → Batch alone, the services behind each total, the calls counted, and the stack's fixed monthly line.
//!
//! Step Functions is not run here (there is no emulator of its billing): its column counts
//! the state transitions AWS bills for the same work, at the price list's rate. AWS counts
//! "a state transition each time a step of your workflow is executed", retries included;
//! a `.sync` Batch task is one step however long its job runs; a Distributed Map is
//! charged "one state transition for each child workflow execution" it starts, and a
//! Standard child's own steps on top (docs.aws.amazon.com/step-functions, "State
//! transitions"; aws.amazon.com/step-functions/pricing). Express workflows cannot wait for
//! a Batch job (".sync: Standard" only), so they are no column. The start of an execution
//! is not counted, which if anything flatters Step Functions. What the units' triggers
//! cost (S3's object events, HTTP API requests) is the same whichever orchestrator starts
//! the jobs, so the side-by-side leaves it out of every column and the service lines show it.

use crate::bill::{Counted, Kind};
use crate::maps::ProcessCalls;
use crate::prices::{price, usage, Line, Prices, Usage};

/// Step Functions Standard transitions for `units` units of `kind`: an execution per job
/// with one `.sync` task; one per stage of a run; per map child, the Distributed Map's
/// charge for the child execution and the child's one `.sync` task; a burst's objects
/// each their own execution (Step Functions has no coalescing).
pub fn step_functions_transitions(kind: Kind, units: usize) -> f64 {
    let per_unit = match kind {
        Kind::SingleJobs | Kind::BurstObjects => 1.0,
        Kind::PipelineRuns => 3.0,
        Kind::MapChildren => 2.0,
    };
    per_unit * units as f64
}

/// Step Functions' other way to map: one `.sync` task submitting one array job (a
/// transition for the whole map, children's items handed over by index only).
pub fn step_functions_array_transitions(kind: Kind) -> Option<f64> {
    (kind == Kind::MapChildren).then_some(1.0)
}

/// What the units' triggers cost: the same for every orchestrator.
fn trigger_cost(lines: &[Line]) -> f64 {
    lines
        .iter()
        .filter(|l| l.service.starts_with("EventBridge, S3") || l.service.starts_with("API Gateway"))
        .map(|l| l.cost)
        .sum()
}

/// One scenario priced.
pub struct Priced<'a> {
    pub counted: &'a Counted,
    pub usage: Usage,
    pub lines: Vec<Line>,
}

impl Priced<'_> {
    fn per_thousand(&self, value: f64) -> f64 {
        value * 1_000.0 / self.counted.units.max(1) as f64
    }
    fn total(&self) -> f64 {
        self.lines.iter().map(|l| l.cost).sum()
    }
    /// Batchline's own share: the total less the triggers'.
    fn orchestration(&self) -> f64 {
        self.total() - trigger_cost(&self.lines)
    }
}

/// Prices every scenario.
pub fn price_all<'a>(
    scenarios: &'a [Counted],
    template: &serde_yaml::Value,
    prices: &Prices,
) -> Result<Vec<Priced<'a>>, String> {
    scenarios
        .iter()
        .map(|counted| {
            let usage = usage(counted, template, prices)?;
            let lines = price(&usage, prices)?;
            Ok(Priced { counted, usage, lines })
        })
        .collect()
}

/// The side-by-side: per kind and size, dollars per 1,000 units.
pub fn render_summary(priced: &[Priced<'_>], prices: &Prices) -> Result<String, String> {
    let transition = prices.get("step_functions", "per_thousand_standard_transitions")? / 1_000.0;
    let mut out = format!(
        "\nThe orchestration bill, US dollars per 1,000 units (prices of {}, us-east-1, on-demand, free tiers left out; \
         triggers left out of every column):\n\n\
         | unit | units run | Batchline | Step Functions Standard | EventBridge → Batch alone | Batchline ÷ Step Functions | goal |\n\
         |---|---|---|---|---|---|---|\n",
        prices.read_on
    );
    for p in priced {
        let kind = p.counted.kind;
        let ours = p.per_thousand(p.orchestration());
        let theirs = p.per_thousand(step_functions_transitions(kind, p.counted.units) * transition);
        let (goal, bound) = match kind {
            Kind::PipelineRuns => ("≤ 1/5 per stage", 0.2),
            Kind::MapChildren => ("≤ 1/10 per child", 0.1),
            _ => ("", f64::INFINITY),
        };
        let verdict = if bound.is_finite() {
            if ours <= bound * theirs {
                format!("{goal}: met")
            } else {
                format!("{goal}: not met, ${:.4} over", ours - bound * theirs)
            }
        } else {
            String::new()
        };
        let alone = match kind {
            Kind::SingleJobs | Kind::BurstObjects => "$0.0000 (a rule submits one job an object)".to_owned(),
            Kind::PipelineRuns => "– (a rule submits one job: no stages)".to_owned(),
            Kind::MapChildren => "– (an array of a fixed size, no items)".to_owned(),
        };
        out.push_str(&format!(
            "| {} | {} | ${ours:.4} | ${theirs:.4} | {alone} | {:.2} | {verdict} |\n",
            kind.unit(),
            p.counted.units,
            ours / theirs
        ));
        if let Some(array) = step_functions_array_transitions(kind) {
            out.push_str(&format!(
                "| … the same map as one `.sync` array job | {} | | ${:.6} | | | |\n",
                p.counted.units,
                p.per_thousand(array * transition)
            ));
        }
        if kind == Kind::PipelineRuns {
            out.push_str(&format!(
                "| … per pipeline stage (a run ÷ 3) | {} | ${:.4} | ${:.4} | | {:.2} | |\n",
                p.counted.units,
                ours / 3.0,
                theirs / 3.0,
                ours / theirs
            ));
        }
    }
    Ok(out)
}

/// Each kind at its largest size: every service line per 1,000 units.
pub fn render_lines(priced: &[Priced<'_>]) -> String {
    let largest: Vec<&Priced<'_>> = Kind::ALL
        .iter()
        .filter_map(|kind| priced.iter().filter(|p| p.counted.kind == *kind).max_by_key(|p| p.counted.units))
        .collect();
    let mut out = String::from(
        "\nWhere each total comes from, per 1,000 units (each kind at its largest size):\n\n| service | unit price |",
    );
    for p in &largest {
        out.push_str(&format!(" {} ({}) |", p.counted.kind.unit(), p.counted.units));
    }
    out.push_str(&format!("\n|---|---|{}\n", "---|".repeat(largest.len())));
    let Some(first) = largest.first() else { return out };
    for (k, line) in first.lines.iter().enumerate() {
        out.push_str(&format!("| {} | ${} per {} |", line.service, trim(line.unit_price), singular(line.unit)));
        for p in &largest {
            let line = &p.lines[k];
            out.push_str(&format!(
                " {} → ${:.4} |",
                quantity(p.per_thousand(line.quantity)),
                p.per_thousand(line.cost)
            ));
        }
        out.push('\n');
    }
    out.push_str("| **total** | |");
    for p in &largest {
        out.push_str(&format!(" **${:.4}** |", p.per_thousand(p.total())));
    }
    out.push('\n');
    out
}

/// Each kind at its largest size: invocations, messages and calls by process and operation, per 1,000 units.
pub fn render_calls(priced: &[Priced<'_>]) -> String {
    let mut out = String::from(
        "\nCounted, per 1,000 units (each kind at its largest size; messages are the lane's, each one SQS send by EventBridge):\n\n\
         | unit | process | invocations | messages | lane receives + deletes | CPU ms | operation | calls |\n|---|---|---|---|---|---|---|---|\n",
    );
    for kind in Kind::ALL {
        let Some(p) = priced.iter().filter(|p| p.counted.kind == kind).max_by_key(|p| p.counted.units) else {
            continue;
        };
        for process in &p.counted.processes {
            out.push_str(&process_rows(p, process));
        }
    }
    out
}

fn process_rows(p: &Priced<'_>, process: &ProcessCalls) -> String {
    let mut out = String::new();
    let per = |n: f64| quantity(p.per_thousand(n));
    let head = format!(
        "| {} | {} | {} | {} | {} | {} |",
        p.counted.kind.unit(),
        process.label,
        per(process.invocations as f64),
        per(process.messages as f64),
        per(process.lane_sqs_calls as f64),
        per(process.cpu_seconds * 1000.0)
    );
    if process.calls.is_empty() {
        return format!("{head} – | 0 |\n");
    }
    for (k, (operation, n)) in process.calls.iter().enumerate() {
        let lead = if k == 0 { head.clone() } else { "| | | | | | |".to_owned() };
        out.push_str(&format!("{lead} {operation} | {} |\n", per(*n as f64)));
    }
    out
}

/// What the stack costs a month whatever its traffic.
pub struct Fixed {
    pub metrics: usize,
    pub alarms: usize,
    pub dashboards: usize,
    pub keys: usize,
    pub event_sources: usize,
    /// One sweep's usage (it runs every 15 minutes).
    pub sweep: Usage,
}

/// Counts the template's alarms, dashboards, keys and SQS event sources.
pub fn fixed_from_template(template: &serde_yaml::Value, metrics: usize, sweep: Usage) -> Fixed {
    let resources: Vec<&serde_yaml::Value> =
        template["Resources"].as_mapping().into_iter().flatten().map(|(_, r)| r).collect();
    let of_type = |kind: &str| resources.iter().filter(|r| r["Type"].as_str() == Some(kind)).count();
    let event_sources = resources
        .iter()
        .flat_map(|r| r["Properties"]["Events"].as_mapping().into_iter().flatten().map(|(_, e)| e))
        .filter(|e| e["Type"].as_str() == Some("SQS"))
        .count();
    Fixed {
        metrics,
        alarms: of_type("AWS::CloudWatch::Alarm"),
        dashboards: of_type("AWS::CloudWatch::Dashboard"),
        keys: of_type("AWS::KMS::Key"),
        event_sources,
        sweep,
    }
}

/// The fixed monthly line, priced.
pub fn render_fixed(fixed: &Fixed, prices: &Prices) -> Result<String, String> {
    const MONTH_SECONDS: f64 = 30.0 * 24.0 * 3600.0;
    let sweeps = MONTH_SECONDS / 900.0;
    let mut sweep = Usage::default();
    for _ in 0..sweeps as usize {
        sweep += fixed.sweep.clone();
    }
    let sweep_cost: f64 = price(&sweep, prices)?.iter().map(|l| l.cost).sum();
    let polls =
        fixed.event_sources as f64 * prices.get("assumptions", "idle_pollers_per_event_source")? * MONTH_SECONDS
            / prices.get("assumptions", "idle_poll_seconds")?;
    let rows = [
        (
            format!(
                "custom metrics ({} published by the bench's stack: its metric names × dimension values)",
                fixed.metrics
            ),
            fixed.metrics as f64 * prices.get("cloudwatch", "per_metric_month")?,
        ),
        (format!("alarms ({})", fixed.alarms), fixed.alarms as f64 * prices.get("cloudwatch", "per_alarm_month")?),
        (
            format!("dashboards ({})", fixed.dashboards),
            fixed.dashboards as f64 * prices.get("cloudwatch", "per_dashboard_month")?,
        ),
        (format!("KMS keys ({})", fixed.keys), fixed.keys as f64 * prices.get("kms", "per_key_month")?),
        (format!("the sweep ({sweeps:.0} invocations of the one counted)"), sweep_cost),
        (
            format!("idle polling ({} SQS event sources, {polls:.0} empty receives)", fixed.event_sources),
            polls * prices.get("sqs", "per_million_requests")? / 1e6,
        ),
    ];
    let mut out =
        String::from("\nThe fixed monthly line (whatever the traffic):\n\n| item | US dollars a month |\n|---|---|\n");
    let mut total = 0.0;
    for (item, cost) in rows {
        out.push_str(&format!("| {item} | ${cost:.2} |\n"));
        total += cost;
    }
    out.push_str(&format!("| **total** | **${total:.2}** |\n"));
    Ok(out)
}

/// The price list the tables used.
pub fn render_prices(prices: &Prices) -> String {
    format!(
        "\nPriced with {} (read on {}); change a figure there, or point `BENCH_PRICES` at another file, and the totals follow.\n",
        prices.path.strip_prefix(batchline_testkit::emulator::repo_root()).unwrap_or(&prices.path).display(),
        prices.read_on
    )
}

fn trim(price: f64) -> String {
    let text = format!("{price:.12}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

fn singular(unit: &str) -> &str {
    unit.strip_suffix('s').filter(|_| unit != "GB-s").unwrap_or(unit)
}

fn quantity(value: f64) -> String {
    if value >= 100.0 || value == value.trunc() {
        format!("{value:.0}")
    } else if value >= 1.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.4}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prices() -> Prices {
        let text = std::fs::read_to_string(batchline_testkit::emulator::repo_root().join("devtools/bench/prices.yaml"))
            .unwrap();
        Prices::parse(&text, "prices.yaml".into()).unwrap()
    }

    #[test]
    fn step_functions_pays_a_transition_per_task_and_a_distributed_map_two_per_child() {
        assert_eq!(step_functions_transitions(Kind::SingleJobs, 1_000), 1_000.0);
        assert_eq!(step_functions_transitions(Kind::PipelineRuns, 1_000), 3_000.0);
        assert_eq!(step_functions_transitions(Kind::MapChildren, 1_000), 2_000.0);
        assert_eq!(step_functions_array_transitions(Kind::MapChildren), Some(1.0));
        assert_eq!(step_functions_array_transitions(Kind::PipelineRuns), None);
    }

    #[test]
    fn the_fixed_line_prices_metrics_alarms_and_idle_polling_from_the_template() {
        let template: serde_yaml::Value = serde_yaml::from_str(
            "Resources:\n  A: {Type: AWS::CloudWatch::Alarm}\n  B: {Type: AWS::CloudWatch::Alarm}\n  \
             F: {Type: AWS::Serverless::Function, Properties: {Events: {Q: {Type: SQS}, S: {Type: Schedule}}}}\n",
        )
        .unwrap();
        let fixed = fixed_from_template(&template, 10, Usage::default());
        assert_eq!((fixed.alarms, fixed.dashboards, fixed.event_sources), (2, 0, 1));
        let table = render_fixed(&fixed, &prices()).unwrap();
        // 10 metrics at $0.30, 2 alarms at $0.10; one event source: 5 pollers, a receive every 20 s.
        assert!(table.contains("| custom metrics (10 published"), "{table}");
        assert!(table.contains("$3.00 |") && table.contains("$0.20 |"), "{table}");
        assert!(table.contains("648000 empty receives) | $0.26 |"), "{table}");
        assert!(table.contains("**$3.46**"), "{table}");
    }
}
