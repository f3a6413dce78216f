//! Benchmark: job-state events per second through parse + metrics + packing (no network), and PutMetricData calls per 1,000 events.
//!
//! Run with `cargo bench -p batchline-shared --bench job_events`. Prints a table; asserts nothing.

use std::hint::black_box;
use std::time::Instant;

use batchline::model::batch_event::JobStateChangeEvent;
use batchline::model::cost::Pricing;
use batchline::model::metrics::{from_event, plan_calls};
use batchline::settings::PriceOverrides;

const TEMPLATE: &str = include_str!("../../tests/fixtures/batch/succeeded-fargate.json");

/// `n` distinct SQS-style bodies: 8 queues × 5 job definitions × 4 statuses, distinct times.
fn bodies(n: usize) -> Vec<String> {
    let template: serde_json::Value = serde_json::from_str(TEMPLATE).expect("fixture");
    let statuses = ["RUNNABLE", "STARTING", "RUNNING", "SUCCEEDED"];
    (0..n)
        .map(|i| {
            let mut event = template.clone();
            event["id"] = format!("bench-{i}").into();
            event["detail"]["status"] = statuses[i % 4].into();
            event["detail"]["jobQueue"] = format!("arn:aws:batch:us-east-1:123456789012:job-queue/q{}", i % 8).into();
            event["detail"]["jobDefinition"] =
                format!("arn:aws:batch:us-east-1:123456789012:job-definition/d{}:1", i % 5).into();
            event["detail"]["stoppedAt"] = (event["detail"]["stoppedAt"].as_i64().unwrap_or(0) + i as i64).into();
            event.to_string()
        })
        .collect()
}

fn main() {
    let now = 1_764_230_500_000;
    println!("{:>8} | {:>14} | {:>14} | {:>22}", "events", "events/s", "µs per event", "PutMetricData calls");
    for n in [10, 100, 1_000, 10_000] {
        let input = bodies(n);
        let rounds = (20_000 / n).max(3);
        let start = Instant::now();
        let mut calls = 0;
        for _ in 0..rounds {
            let metrics: Vec<_> = input
                .iter()
                .filter_map(|body| JobStateChangeEvent::from_json(body).ok())
                .map(|event| from_event(&event, &Pricing::on_demand(&PriceOverrides::default()), now))
                .collect();
            calls = black_box(plan_calls(&metrics)).len();
        }
        let seconds = start.elapsed().as_secs_f64() / rounds as f64;
        println!(
            "{:>8} | {:>14.0} | {:>14.2} | {:>10} ({:.1} per 1,000)",
            n,
            n as f64 / seconds,
            seconds * 1e6 / n as f64,
            calls,
            calls as f64 * 1000.0 / n as f64
        );
    }
}
